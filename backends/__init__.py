"""The built-in parent-driver backends, installed as the import package
``iotlb_backends`` and registered under the entry-point group ``iotlb.backends``:

- ``platform_iommu`` -- :class:`iotlb_backends.platform_iommu.PlatformIommu`
- ``vdpa_sim`` -- :class:`iotlb_backends.vdpa_sim.VdpaSim`
- ``mlx5`` -- :class:`iotlb_backends.mlx5.Mlx5`

They import only the public API of :mod:`iotlb`, exactly what a third-party plugin can.

>>> import iotlb
>>> sorted(n for n in iotlb.available_backends() if n in {"mlx5", "platform_iommu", "vdpa_sim"})
['mlx5', 'platform_iommu', 'vdpa_sim']
"""
