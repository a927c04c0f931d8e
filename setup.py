"""Build the Cython extensions (the engine and the device core); everything else about the package is in pyproject.toml.

``IOTLB_PUREPYTHON=1`` at build time skips the extension (the pure twin is then the
only engine and must be selected with ``IOTLB_PUREPYTHON=1`` at run time too).
"""
import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("IOTLB_PUREPYTHON") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("iotlb._engine", ["iotlb/_engine.pyx"], extra_compile_args=["-O3"]),
         Extension("iotlb._device", ["iotlb/_device.pyx"], extra_compile_args=["-O3"])],
        language_level=3,
        annotate=os.environ.get("IOTLB_ANNOTATE") == "1",
    )

setup(ext_modules=ext_modules)
