"""The built-in parent-driver backends, installed as the import package
``iotlb_backends`` and registered under the entry-point group ``iotlb.backends``:

- ``platform_iommu`` -- :class:`iotlb_backends.platform_iommu.PlatformIommu`
- ``vdpa_sim`` -- :class:`iotlb_backends.vdpa_sim.VdpaSim`
- ``mlx5`` -- :class:`iotlb_backends.mlx5.Mlx5`
- ``vduse`` -- :class:`iotlb_backends.vduse.Vduse`
- ``vp_vdpa`` -- :class:`iotlb_backends.vp_vdpa.VpVdpa` (platform IOMMU, no vq groups)
- ``snet`` -- :class:`iotlb_backends.vp_vdpa.Snet` (platform IOMMU with suspend/resume)

They import only the public API of :mod:`iotlb`, exactly what a third-party plugin can.

>>> import iotlb
>>> builtin = {"mlx5", "platform_iommu", "vdpa_sim", "vduse", "vp_vdpa", "snet"}
>>> sorted(n for n in iotlb.available_backends() if n in builtin)
['mlx5', 'platform_iommu', 'snet', 'vdpa_sim', 'vduse', 'vp_vdpa']
"""
