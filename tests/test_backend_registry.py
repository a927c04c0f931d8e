"""The backend contract and registry (iotlb.backend): discovery from installed
metadata, register/unregister, duplicates, unknown and broken plugins."""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
import textwrap

import pytest

import iotlb
from iotlb import U64_MAX
from iotlb import backend as B
from iotlb_backends.mlx5 import Mlx5
from iotlb_backends.platform_iommu import PlatformIommu
from iotlb_backends.vdpa_sim import VdpaSim, VdpaSimDmaMap, VdpaSimSetMap

BUILTINS = {"platform_iommu": PlatformIommu, "vdpa_sim": VdpaSim, "mlx5": Mlx5}


@pytest.fixture
def clean_registry():
    """Leave the registry as found: drop names registered by the test, rescan."""
    before = set(B._registered)
    yield
    for name in set(B._registered) - before:
        B.unregister(name)
    B.refresh()


# --------------------------------------------------------------------------- discovery
def test_builtins_declared_in_installed_metadata():
    eps = B._entry_points()  # the selectable API is 3.10+; the helper covers 3.9
    declared = {ep.name: ep.value for ep in eps}
    assert declared["platform_iommu"] == "iotlb_backends.platform_iommu:PlatformIommu"
    assert declared["vdpa_sim"] == "iotlb_backends.vdpa_sim:VdpaSim"
    assert declared["mlx5"] == "iotlb_backends.mlx5:Mlx5"


def test_available_backends_discovers_builtins():
    table = iotlb.available_backends()
    for name, cls in BUILTINS.items():
        assert table[name] is cls
    assert list(table) == sorted(table)
    assert iotlb.available_backends is B.available_backends
    assert iotlb.load_backend is B.load_backend


def test_available_backends_is_cached_and_a_copy():
    a = B.available_backends()
    a["junk"] = object
    assert "junk" not in B.available_backends()
    assert B._discovered is not None


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_load_backend_is_class_call(name):
    backend = iotlb.load_backend(name, nvqs=5, iova_range=(0x1000, 0xFFFF_FFFF))
    assert isinstance(backend, BUILTINS[name])
    assert backend.nvqs == 5 and backend.get_iova_range() == (0x1000, 0xFFFF_FFFF)
    B.validate_backend(backend)


def test_load_backend_passes_options_verbatim(clean_registry):
    seen = {}

    class Recorder(PlatformIommu):
        def __init__(self, **options):
            seen.update(options)
            super().__init__()

    B.register("recorder", Recorder)
    backend = B.load_backend("recorder", nas=1, custom=7)
    assert isinstance(backend, Recorder) and seen == {"nas": 1, "custom": 7}


def test_builtin_option_errors_are_the_classes():
    with pytest.raises(TypeError):
        iotlb.load_backend("mlx5", no_such_option=1)


# --------------------------------------------------------------------------- unknown
def test_unknown_name_lists_known_names():
    with pytest.raises(B.UnknownBackendError) as info:
        iotlb.load_backend("nope")
    assert isinstance(info.value, LookupError)
    message = str(info.value)
    assert "'nope'" in message
    for name in BUILTINS:
        assert name in message


def test_name_must_be_str():
    with pytest.raises(TypeError):
        iotlb.load_backend(3)


# --------------------------------------------------------------------------- register
def test_register_and_unregister(clean_registry):
    class Mine(VdpaSimDmaMap):
        pass

    B.register("mine", Mine)
    assert B.available_backends()["mine"] is Mine
    assert isinstance(B.load_backend("mine"), Mine)
    B.unregister("mine")
    assert "mine" not in B.available_backends()
    with pytest.raises(B.UnknownBackendError):
        B.load_backend("mine")


def test_register_survives_refresh(clean_registry):
    class Mine(VdpaSimSetMap):
        pass

    B.register("mine2", Mine)
    assert B.refresh()["mine2"] is Mine


def test_register_duplicate_is_refused(clean_registry):
    class Mine(VdpaSimSetMap):
        pass

    B.register("dup", Mine)
    with pytest.raises(ValueError, match="already taken"):
        B.register("dup", Mine)
    with pytest.raises(ValueError, match="already taken by iotlb_backends.mlx5.Mlx5"):
        B.register("mlx5", Mine)


def test_register_rejects_non_backends(clean_registry):
    with pytest.raises(TypeError, match="not a subclass"):
        B.register("obj", object)
    with pytest.raises(TypeError, match="not a subclass"):
        B.register("inst", VdpaSim())

    class Abstract(B.Backend):
        def reset(self):
            pass

    with pytest.raises(TypeError, match="device_iotlb"):
        B.register("abstract", Abstract)
    with pytest.raises(TypeError):
        B.register("", VdpaSim)
    assert "obj" not in B.available_backends()


def test_unregister_errors():
    with pytest.raises(ValueError, match="installed entry point"):
        B.unregister("vdpa_sim")
    with pytest.raises(B.UnknownBackendError):
        B.unregister("never-registered")


# --------------------------------------------------------------------------- broken plugins
@pytest.fixture
def fake_distribution(tmp_path):
    """A distribution on sys.path declaring broken and conflicting entry points."""
    dist = tmp_path / "iotlb_fake_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iotlb-fake-plugins\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [iotlb.backends]
        fake_import_error = iotlb_fake_missing_module:Parent
        fake_not_backend = iotlb_fake_plugins_mod:NotABackend
        fake_abstract = iotlb_fake_plugins_mod:Abstract
        fake_good = iotlb_fake_plugins_mod:Good
        vdpa_sim = iotlb_fake_plugins_mod:Good
        """))
    (tmp_path / "iotlb_fake_plugins_mod.py").write_text(textwrap.dedent("""\
        from iotlb.backend import Backend
        from iotlb_backends.platform_iommu import PlatformIommu

        class NotABackend:
            pass

        class Abstract(Backend):
            def reset(self):
                pass

        class Good(PlatformIommu):
            pass
        """))
    sys.path.append(str(tmp_path))
    importlib.invalidate_caches()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("iotlb_fake_plugins_mod", None)
        B.refresh()


def test_broken_plugins_are_reported_not_fatal(fake_distribution, caplog):
    with caplog.at_level(logging.WARNING, logger="iotlb.backend"):
        table = B.refresh()
    for name, cls in BUILTINS.items():
        assert table[name] is cls           # the first declaration of vdpa_sim wins
    assert table["fake_good"].__name__ == "Good"
    broken = B.broken_backends()
    assert set(broken) == {"fake_import_error", "fake_not_backend", "fake_abstract"}
    assert isinstance(broken["fake_import_error"], ImportError)
    assert isinstance(broken["fake_not_backend"], TypeError)
    assert "device_iotlb" in str(broken["fake_abstract"])
    logged = caplog.text
    for name in ("fake_import_error", "fake_not_backend", "fake_abstract"):
        assert name in logged
    assert "declared twice" in logged


def test_loading_a_broken_plugin_explains(fake_distribution):
    B.refresh()
    with pytest.raises(B.UnknownBackendError, match="installed but broken") as info:
        B.load_backend("fake_import_error")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(ValueError, match="already taken"):
        B.register("fake_not_backend", VdpaSim)


def test_broken_plugins_gone_after_removal(fake_distribution):
    B.refresh()
    assert B.broken_backends()
    sys.path.remove(str(fake_distribution))
    try:
        B.refresh()
        assert B.broken_backends() == {}
        assert "fake_good" not in B.available_backends()
    finally:
        sys.path.append(str(fake_distribution))


# --------------------------------------------------------------------------- contract helpers
def test_base_class_defines_no_optional_op():
    for op in B.OPTIONAL_OPS:
        assert not hasattr(B.Backend, op), op


def test_constants():
    assert B.VDPA_RESET_F_CLEAN_MAP == 1
    assert B.ENTRY_POINT_GROUP == "iotlb.backends"
    assert B.BACKEND_F_ENABLE_AFTER_DRIVER_OK == 1 << 6
    assert B.BACKEND_F_IOTLB_PERSIST == 1 << 8


def test_identity_helpers():
    t = B.identity_iotlb()
    assert [tuple(m)[:3] for m in t] == [(0, (1 << 63) - 1, 0),
                                         (1 << 63, U64_MAX, 1 << 63)]
    assert B.is_identity(t) and not B.is_identity(iotlb.IOTLB())


@pytest.mark.parametrize("factory, style, persistent, ops", [
    (PlatformIommu, "platform", True, set(B.PLATFORM_OPS)),
    (VdpaSim, "set_map", True, {"set_map", "compat_reset", "reset_map", "set_group_asid",
                                "suspend", "resume"}),
    (lambda: VdpaSim(batch_mapping=False), "dma_map", True,
     {"dma_map", "dma_unmap", "compat_reset", "reset_map", "set_group_asid", "suspend",
      "resume"}),
    (Mlx5, "set_map", True, {"set_map", "compat_reset", "reset_map", "set_group_asid",
                             "get_vq_desc_group", "suspend", "resume"}),
    (lambda: Mlx5(desc_group=False, resume=False), "set_map", True,
     {"set_map", "compat_reset", "reset_map", "set_group_asid", "suspend"}),
])
def test_op_tables(factory, style, persistent, ops):
    backend = factory()
    assert B.mapping_style(backend) == style
    assert B.has_persistent_map(backend) is persistent
    assert B.present_ops(backend) == ops
    for op in set(B.OPTIONAL_OPS) - ops:
        assert getattr(backend, op, None) is None, op


def test_has_persistent_map_rules():
    class NoReset(VdpaSimSetMap):
        reset_map = None

    assert not B.has_persistent_map(NoReset())

    class Offers(NoReset):
        def get_backend_features(self):
            return B.BACKEND_F_IOTLB_PERSIST

    assert B.has_persistent_map(Offers())


def test_validate_backend_catches_shape_errors():
    with pytest.raises(TypeError, match="not an iotlb.backend.Backend"):
        B.validate_backend(object())

    class HalfDma(VdpaSimDmaMap):
        dma_unmap = None

    with pytest.raises(TypeError, match="together"):
        B.validate_backend(HalfDma())

    class NotCallable(VdpaSimSetMap):
        suspend = 5

    with pytest.raises(TypeError, match="suspend"):
        B.validate_backend(NotCallable())

    class Bare(B.Backend):
        def reset(self):
            pass

        def device_iotlb(self, asid):
            return iotlb.IOTLB()

    with pytest.raises(TypeError, match="platform-IOMMU parent and needs"):
        B.validate_backend(Bare())


def test_base_init_validation():
    with pytest.raises(ValueError):
        PlatformIommu(nvqs=0)
    with pytest.raises(TypeError):
        VdpaSim(nas="2")
    with pytest.raises(ValueError):
        VdpaSim(iova_range=(5, 4))
    with pytest.raises(OverflowError):
        VdpaSim(iova_range=(0, 1 << 64))
    with pytest.raises(TypeError):
        VdpaSim(iova_range=7)


def test_status_ops():
    b = VdpaSim()
    b.set_status(0x7)
    assert b.get_status() == 7
    with pytest.raises(ValueError):
        b.set_status(256)
    b.reset()
    assert b.get_status() == 0
