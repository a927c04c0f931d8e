"""Every docstring example in the library runs (sortedcontainers style)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import iotlb
import iotlb_backends


def _modules():
    names = []
    for pkg in (iotlb, iotlb_backends):
        names.append(pkg.__name__)
        names += [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    return sorted(set(names) - {"iotlb.__main__"})


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # the extension is absent only in a pure-only build
        pytest.skip(f"{name}: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_readme_examples():
    """The README's tour is run as written."""
    import pathlib

    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    result = doctest.testfile(str(readme), module_relative=False,
                              optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
