"""What-if policies: named, hypothetical variants of a real kernel profile
(``"<kernel>+<policy>"``, :data:`iotlb.kernels.POLICIES`), and which sequences of
the scenario library each one changes, and how.

The expected changes below are derived from the kernel sources, not recorded from
the model: both policies only touch the ``reset_map`` call in
``vhost_vdpa_remove_as`` (release), so only a scenario that releases the device can
change, only on a parent that has ``reset_map`` (vdpa_sim, mlx5 -- not the platform
parent), and only where ``reset_map`` would have changed the parent's state.
"""
from __future__ import annotations

import pytest

import iotlb
from iotlb.kernels import KERNELS, POLICIES, kernel_profile, kernel_profile_for_release
from iotlb.scenarios import (SCENARIOS, BackendSpec, GuestLayout, default_specs, parse_size,
                             run_scenario)
from iotlb.vdpa import VhostVdpa
from iotlb.wire import BackendFeature as F
from iotlb_backends.vdpa_sim import VdpaSim

PAGE = 4096


# ===================================================================== the API
def test_policies_are_named_and_hypothetical():
    assert set(POLICIES) == {"persist-gated-reset-map", "no-release-reset-map"}
    assert all(isinstance(v, str) and v for v in POLICIES.values())
    assert KERNELS == iotlb.KERNELS == ("6.1", "6.12", "7.2")      # real kernels only
    for policy in POLICIES:
        for kernel in ("6.12", "7.2"):
            p = kernel_profile(f"{kernel}+{policy}")
            assert p.hypothetical and p.policy == policy and p.base == kernel
            assert p.release == kernel_profile(kernel).release
            assert "hypothetical" in str(p) and "HYPOTHETICAL" in p.description
            assert POLICIES[policy] in p.description
        assert not kernel_profile("7.2").hypothetical


@pytest.mark.parametrize("name", ["7.2+nope", "7.2+", "5.4+no-release-reset-map",
                                  "7.2+no-release-reset-map+persist-gated-reset-map"])
def test_unknown_policy_or_kernel_is_an_error(name):
    with pytest.raises(ValueError, match="known profiles"):
        kernel_profile(name)


def test_policy_needs_a_kernel_that_calls_reset_map():
    """6.1's vhost_vdpa_remove_as never calls reset_map: both policies change nothing
    there, so asking for one is an error rather than a silent copy of 6.1."""
    for policy in POLICIES:
        with pytest.raises(ValueError, match="never calls reset_map"):
            kernel_profile(f"6.1+{policy}")


def test_release_mapping_never_picks_a_policy():
    assert kernel_profile_for_release("7.2.13+deb14-amd64") == "7.2"


# ============================================== the rule, on the device directly
class Parent:
    nas, ngroups, nvqs, use_va = 1, 1, 2, False

    def __init__(self):
        self.calls = []
        self.status = 0

    def reset(self):
        self.calls.append("reset")

    def compat_reset(self, flags):
        self.calls.append(f"compat_reset({flags})")

    def reset_map(self, asid):
        self.calls.append(f"reset_map({asid})")

    def get_status(self):
        return self.status

    def set_status(self, s):
        self.status = s

    def set_map(self, asid, tlb):
        self.calls.append(f"set_map({asid})")


def release_calls(kernel, persist):
    parent = Parent()
    dev = VhostVdpa(parent, kernel=kernel)
    dev.open()
    dev.set_owner()
    if persist:
        dev.set_backend_features(int(F.IOTLB_PERSIST))
    dev.update(0x1000, PAGE, 0x1000)
    del parent.calls[:]
    dev.release()
    return parent.calls


@pytest.mark.parametrize("kernel,persist,calls", [
    ("7.2", False, ["compat_reset(1)", "reset_map(0)"]),
    ("7.2", True, ["reset", "reset_map(0)"]),
    ("7.2+persist-gated-reset-map", False, ["compat_reset(1)"]),
    ("7.2+persist-gated-reset-map", True, ["reset", "reset_map(0)"]),
    ("7.2+no-release-reset-map", False, ["compat_reset(1)"]),
    ("7.2+no-release-reset-map", True, ["reset"]),
    ("6.12+persist-gated-reset-map", False, ["compat_reset(1)"]),
])
def test_reset_map_at_release(kernel, persist, calls):
    """vhost_vdpa_release → vhost_vdpa_reset (_compat_vdpa_reset: CLEAN_MAP unless
    PERSIST is acked) → vhost_vdpa_cleanup → vhost_vdpa_remove_as → reset_map: kept,
    gated on the PERSIST ack (acked features are zeroed only after remove_as), or
    gone."""
    assert release_calls(kernel, persist) == calls


def test_policies_leave_set_status_0_alone():
    """SET_STATUS(0) never calls reset_map, in any kernel or policy."""
    for policy in POLICIES:
        parent = Parent()
        dev = VhostVdpa(parent, kernel=f"7.2+{policy}")
        dev.open()
        dev.set_owner()
        dev.update(0x1000, PAGE, 0x1000)
        del parent.calls[:]
        dev.set_status(0)
        assert parent.calls == ["compat_reset(1)"]


# ============================================== the scenario library, cell by cell
#: (policy, backend variant, PERSIST acked) -> what changes at the "after release"
#: check point of ``release_reopen`` (the only scenario that releases), and why.
EXPECTED = {
    # persist-gated: only cells without PERSIST lose reset_map
    ("persist-gated-reset-map", "vdpa_sim (dma_map)", False):
        # CLEAN_MAP reset → identity, pt; remove_as's first dma_unmap sees pt and
        # empties AS 0; reset_map would have restored the identity
        {"asid0": ("identity", "empty")},
    ("persist-gated-reset-map", "mlx5 (no umem_uid_0)", False):
        # CLEAN_MAP reset prunes the CVQ iotlb and creates no DMA MR; reset_map(0)
        # → update_cvq_iotlb(NULL, 0) would have made the CVQ (on AS 0) identity
        {"cvq": ("identity", "empty")},
    # no-release-reset-map: every cell where reset_map changed something
    ("no-release-reset-map", "vdpa_sim (dma_map)", False): {"asid0": ("identity", "empty")},
    ("no-release-reset-map", "vdpa_sim (dma_map)", True):
        # flags 0: maps kept, each dma_unmap removes its entry: AS 0 empty
        {"asid0": ("identity", "empty")},
    ("no-release-reset-map", "vdpa_sim (set_map)", True):
        # flags 0: maps kept; remove_as calls nothing on a set_map parent: the
        # guest's mappings stay in the device after release (stale)
        {"asid0": ("identity", "5 entries")},
    ("no-release-reset-map", "mlx5 (umem_uid_0)", True):
        # the user MR survives the flags-0 reset; reset_map(0) would have put the
        # DMA MR back; the CVQ iotlb keeps the guest map too
        {"asid0": ("identity (DMA MR)", "5 entries"), "cvq": ("identity", "5 entries")},
    ("no-release-reset-map", "mlx5 (no umem_uid_0)", False): {"cvq": ("identity", "empty")},
    ("no-release-reset-map", "mlx5 (no umem_uid_0)", True):
        {"asid0": ("empty", "5 entries"), "cvq": ("identity", "5 entries")},
}


def _view(result):
    cp = result.checkpoint("after release")
    d = cp.as_dict()
    return {"asid0": d["asids"]["0"]["device"], "cvq": d.get("cvq")}


@pytest.fixture(scope="module")
def changed():
    """Run every scenario on every backend variant, PERSIST acked and not, on 7.2 and
    on each 7.2 policy; the cells whose outcome (steps, check points, final state)
    differ."""
    guest = GuestLayout(parse_size("4M"))
    out = {}
    for policy in POLICIES:
        for spec in default_specs(["platform_iommu", "vdpa_sim", "mlx5"]):
            for persist in (False, True):
                for name in SCENARIOS:
                    runs = [run_scenario(name, BackendSpec(spec.name, dict(
                        spec.options, kernel=k), spec.label), persist=persist, guest=guest)
                        for k in ("7.2", f"7.2+{policy}")]
                    if runs[0].as_dict(steps=True) != runs[1].as_dict(steps=True):
                        out[(policy, spec.label, persist, name)] = runs
    return out


def test_policies_change_only_release_in_the_expected_cells(changed):
    assert {k[3] for k in changed} == {"release_reopen"}
    assert {k[:3] for k in changed} == set(EXPECTED)


@pytest.mark.parametrize("cell", sorted(EXPECTED), ids=lambda c: f"{c[0]}|{c[1]}|{c[2]}")
def test_how_each_policy_changes_release(changed, cell):
    """At "after release": what the device is left with on 7.2 vs the policy; and
    whether the scenario still passes (a device left with the guest's stale maps
    does not)."""
    base, what_if = changed[cell + ("release_reopen",)]
    before, after = _view(base), _view(what_if)
    for key, (was, now) in EXPECTED[cell].items():
        assert (before[key], after[key]) == (was, now), key
    for key in set(before) - set(EXPECTED[cell]):
        assert before[key] == after[key], key
    stale = any("entries" in now for _was, now in EXPECTED[cell].values())
    assert base.passed and what_if.passed != stale
    # after the reopen and the boot the device is programmed again either way
    assert base.checkpoint("DRIVER_OK after reopen").translates
    assert what_if.checkpoint("DRIVER_OK after reopen").translates


def test_policy_variants_bind_the_parent_of_their_kernel():
    sim = VdpaSim(kernel="7.2+persist-gated-reset-map")
    assert sim.kernel.base == "7.2" and VhostVdpa(sim).kernel.policy == "persist-gated-reset-map"
    VhostVdpa(sim, kernel="7.2")       # the same parent driver: allowed
