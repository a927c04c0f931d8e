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



def _editable_wheel_for_type_checkers():
    """``pip install -e .`` makes iotlb importable through an import hook (setuptools'
    finder: ``iotlb_backends`` lives in ``backends/``), which mypy cannot follow.
    This adds a plain ``.pth`` path entry to a directory holding only two symlinks,
    ``iotlb -> iotlb/`` and ``iotlb_backends -> backends/``: Python and mypy then find
    the same live sources, and nothing else of the checkout becomes importable.
    Without symlink support (or with a setuptools lacking the hook) the install is
    the plain one."""
    try:
        from setuptools.command.editable_wheel import editable_wheel
    except ImportError:  # pragma: no cover
        return {}
    if not hasattr(editable_wheel, "_select_strategy"):  # pragma: no cover
        return {}
    here = os.path.dirname(os.path.abspath(__file__))
    links = {"iotlb": "iotlb", "iotlb_backends": "backends"}

    class _WithPathEntry:
        def __init__(self, inner, name):
            self.inner, self.name = inner, name

        def __call__(self, wheel, files, mapping):
            self.inner(wheel, files, mapping)
            tree = os.path.join(here, "build", "__editable_typing__")
            try:
                os.makedirs(tree, exist_ok=True)
                for link, target in links.items():
                    path = os.path.join(tree, link)
                    if os.path.islink(path) or os.path.exists(path):
                        os.remove(path)
                    os.symlink(os.path.join(here, target), path)
            except OSError:  # pragma: no cover - no symlinks: the plain install
                return
            wheel.writestr(f"__editable__.{self.name}.typing.pth", f"{tree}\n")

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    class EditableWheel(editable_wheel):
        def _select_strategy(self, name, tag, build_lib):
            return _WithPathEntry(super()._select_strategy(name, tag, build_lib), name)

    return {"editable_wheel": EditableWheel}


setup(ext_modules=ext_modules, cmdclass=_editable_wheel_for_type_checkers())
