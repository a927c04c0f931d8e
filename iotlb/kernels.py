"""Kernel profiles: which kernel's vhost-vdpa a :class:`iotlb.vdpa.VhostVdpa` models.

Real kernels disagree on a few observable rules.  Each such rule is one flag of
:class:`KernelProfile`, named after what it gates, documented with the kernel version
and the upstream commit subject that introduced it; the device model asks the flag,
never a version number.  The profiles are the exact Debian kernels the project
checks against (``docs/kernel-semantics.md`` cites their sources):

* ``"6.1"`` -- Debian bookworm's 6.1.192 (``uname -r``: ``6.1.0-57-amd64``);
* ``"6.12"`` -- Debian trixie's 6.12.118;
* ``"7.2"`` -- Debian's 7.2.13 (the newest, and the default).

:data:`KERNELS` lists the names, oldest first.  ``VhostVdpa(backend, kernel="6.12")``
selects one; :func:`kernel_profile_for_release` maps a ``uname -r`` string to the
nearest profile at or below it.

**What-if policies** (:data:`POLICIES`) are named, *hypothetical* variants of a real
profile -- kernel behaviours that were argued about but that no real kernel has --
selected as ``"<kernel>+<policy>"``: ``kernel_profile("7.2+no-release-reset-map")``.
They exist to show what userspace would see; :data:`KERNELS` never lists them and
:func:`kernel_profile_for_release` never picks one.

Rules of a parent driver (vdpa_sim, mlx5) live in that driver's backend, as
:class:`Since` markers read against :attr:`KernelProfile.release`.

>>> KERNELS
('6.1', '6.12', '7.2')
>>> kernel_profile("7.2").set_group_asid_busy_after_driver_ok
True
>>> kernel_profile_for_release("6.12.118+deb13-amd64"), kernel_profile_for_release("6.1.0-57-amd64")
('6.12', '6.1')
>>> p = kernel_profile("7.2+no-release-reset-map")
>>> p.hypothetical, p.base, p.reset_map_at_release
(True, '7.2', False)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from .wire import KNOWN_BACKEND_FEATURES, BackendFeature

__all__ = ["KernelProfile", "KERNELS", "DEFAULT_KERNEL", "POLICIES", "Since",
           "kernel_profile", "kernel_profile_for_release"]


@dataclass(frozen=True)
class Since:
    """A parent driver's rule: present from kernel ``version`` (``(major, minor)`` or
    ``(major, minor, patch)``) on, introduced by the upstream commit ``subject``.
    ``profile`` in ``Since`` is true when the profile's release is at or past it.
    ``verified`` is False where the version was bracketed (absent in one Debian
    kernel, present in the next) rather than read from a changelog.

    >>> r = Since((6, 7), "vdpa_sim: implement .reset_map support")
    >>> kernel_profile("6.1") in r, kernel_profile("6.12") in r
    (False, True)
    """

    version: Tuple[int, ...]
    subject: str
    verified: bool = True

    def __contains__(self, profile) -> bool:
        return kernel_profile(profile).release >= tuple(self.version)


@dataclass(frozen=True)
class KernelProfile:
    """The rules of vhost-vdpa that differ between the kernels the model knows.

    Rules every profile shares (the size-0 INVALIDATE, the entry limit, the
    SET_GROUP_ASID bound check in vhost-vdpa) are flags too, so a profile for an
    older kernel only has to turn them off.  A flag is named after what it gates and
    documented with the kernel version and the upstream commit subject that
    introduced it; :class:`iotlb.vdpa.VhostVdpa` asks the flag, never a version.
    """

    #: the profile's name: an entry of :data:`KERNELS`, or ``"<kernel>+<policy>"``
    name: str
    #: the kernel release the profile was read from (``major.minor.patch``)
    release: Tuple[int, int, int]

    #: ``vhost_chr_write_iter`` refuses only UPDATE with size 0; a size-0
    #: INVALIDATE reaches the handler (v6.6, "vhost: Allow null msg.size on
    #: VHOST_IOTLB_INVALIDATE"; stable 6.5.10, 6.1.61).
    invalidate_size_zero: bool = True

    #: ``vhost_vdpa_alloc_as`` gives every AS the limit ``max_iotlb_entries`` (flags
    #: 0), which ``vhost_iotlb_add_range_ctx`` enforces with -ENOSPC (v7.2,
    #: "vhost_iotlb: bound map allocation in add_range"; stable 6.12.114, 6.1.191).
    iotlb_entry_limit: bool = True

    #: ``VHOST_VDPA_SET_GROUP_ASID``: vhost-vdpa checks ``group >= ngroups ||
    #: asid >= nas`` → -EINVAL before the parent, and the parents lost their own
    #: checks (v7.0, "vhost: move vdpa group bound check to vhost_vdpa"; stable
    #: 6.12.75, 6.1.191).
    group_asid_bound_check: bool = True

    #: ``VHOST_VDPA_SET_GROUP_ASID`` with DRIVER_OK set → -EBUSY, after the bound
    #: check and before the op check (v7.0, "vhost: forbid change vq groups ASID if
    #: DRIVER_OK is set"; not in 6.12.118 nor 6.1.192).
    set_group_asid_busy_after_driver_ok: bool = False

    #: ``VHOST_VDPA_SUSPEND``/``RESUME`` return 0 without calling the parent (or
    #: checking that the op exists) while DRIVER_OK is clear (v6.9, "vdpa: skip
    #: suspend/resume ops if not DRIVER_OK").  Without it (6.1) SUSPEND calls the
    #: parent whatever the status.
    suspend_resume_need_driver_ok: bool = True

    #: ``vhost_vdpa_pa_map``'s error path unpins the failed run whenever a page was
    #: processed (``if (last_pfn)``), so a failed UPDATE never leaks pins (6.12.118,
    #: "vhost-vdpa: fix pinned page leak in vhost_vdpa_pa_map() error path").
    #: Without it (``if (nchunks)``, 7.2.13 and 6.1) the failed run stays pinned
    #: when a run was mapped earlier in the same pin batch.
    pa_map_unpins_failed_run: bool = False

    #: ``VHOST_VDPA_RESUME`` is an ioctl and ``VHOST_BACKEND_F_RESUME`` a known bit,
    #: offered when the parent has ``resume`` (v6.3, "vhost-vdpa: uAPI to resume the
    #: device" and "vhost-vdpa: Introduce RESUME backend feature bit").  Without it
    #: (6.1) the RESUME number is no vhost-vdpa ioctl: ``vhost_dev_ioctl`` checks the
    #: owner (EPERM) and answers ENOIOCTLCMD, then ``vhost_vdpa_vring_ioctl`` reads the
    #: vring index from the NULL argument (``get_user``: EFAULT); the bit is unknown.
    resume_ioctl: bool = True

    #: ``vhost_vdpa_get_backend_features``: GET_BACKEND_FEATURES ORs in the parent's
    #: ``get_backend_features`` op, and ``VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK`` is a
    #: known bit (v6.6, "vdpa: add get_backend_features vdpa operation" and "vdpa:
    #: accept VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK backend feature").  Without it
    #: the op is never called and the bit is unknown (EOPNOTSUPP).
    parent_backend_features: bool = True

    #: ``VHOST_BACKEND_F_DESC_ASID`` is a known bit, offered when the parent has
    #: ``get_vq_desc_group`` (v6.7, "vhost-vdpa: introduce descriptor group backend
    #: feature").  Without it the bit is unknown, so the unknown-bit EOPNOTSUPP comes
    #: before DESC_ASID's own EINVAL (DESC_ASID without IOTLB_ASID).
    desc_asid: bool = True

    #: ``VHOST_BACKEND_F_IOTLB_PERSIST`` is a known bit, offered when
    #: ``vhost_vdpa_has_persistent_map`` (v6.7, "vhost-vdpa: introduce IOTLB_PERSIST
    #: backend feature bit").  Without it the bit is unknown (EOPNOTSUPP).
    iotlb_persist: bool = True

    #: ``_compat_vdpa_reset``: SET_STATUS(0) and release pass
    #: ``VDPA_RESET_F_CLEAN_MAP`` to ``vdpa_reset`` unless IOTLB_PERSIST is acked, and
    #: ``vdpa_reset`` calls the parent's ``compat_reset(flags)`` when it has one and
    #: the flags are non-zero (v6.7, "vhost-vdpa: clean iotlb map during reset for
    #: older userspace" and "vdpa: introduce .compat_reset operation callback").
    #: Without it (6.1) ``vdpa_reset`` always calls the plain ``reset()``.
    compat_reset: bool = True

    #: ``vhost_vdpa_remove_as`` (release) calls the parent's ``reset_map(asid)``
    #: after unmapping the AS (v6.7, "vhost-vdpa: reset vendor specific mapping to
    #: initial state in .release").  Off in 6.1 and in the what-if policy
    #: ``no-release-reset-map``.
    reset_map_at_release: bool = True

    #: HYPOTHETICAL (policy ``persist-gated-reset-map``, no real kernel): vhost-vdpa
    #: calls ``reset_map`` only when IOTLB_PERSIST is acked.  Its only caller is
    #: ``vhost_vdpa_remove_as`` at release (SET_STATUS(0) never calls it), so
    #: without PERSIST the release leaves each AS as the CLEAN_MAP reset and the
    #: unmapping left it.
    reset_map_needs_persist: bool = False

    #: the what-if policy this profile applies (None for a real kernel)
    policy: Optional[str] = None

    @property
    def known_backend_features(self) -> int:
        """The mask ``VHOST_SET_BACKEND_FEATURES`` accepts (any other bit is
        EOPNOTSUPP, checked first): MSG_V2, BATCH, ASID and SUSPEND on every
        profile, plus the bits the flags above bring.

        >>> hex(kernel_profile("6.1").known_backend_features), hex(kernel_profile("7.2").known_backend_features)
        ('0x1e', '0x1fe')
        """
        known = KNOWN_BACKEND_FEATURES
        for flag, bit in ((self.resume_ioctl, BackendFeature.RESUME),
                          (self.parent_backend_features,
                           BackendFeature.ENABLE_AFTER_DRIVER_OK),
                          (self.desc_asid, BackendFeature.DESC_ASID),
                          (self.iotlb_persist, BackendFeature.IOTLB_PERSIST)):
            if not flag:
                known &= ~int(bit)
        return known

    @property
    def base(self) -> str:
        """The real kernel the profile is (or is a variant of): an entry of
        :data:`KERNELS`.

        >>> kernel_profile("7.2+persist-gated-reset-map").base
        '7.2'
        """
        return self.name.split("+", 1)[0]

    @property
    def hypothetical(self) -> bool:
        """True for a what-if policy: no real kernel behaves like this profile."""
        return self.policy is not None

    @property
    def description(self) -> str:
        """One line saying what the profile models.

        >>> kernel_profile("6.1").description
        "Debian's 6.1.192 (real kernel)"
        >>> kernel_profile("7.2+no-release-reset-map").description.split(":")[0]
        "HYPOTHETICAL what-if policy on Debian's 7.2.13"
        """
        real = f"Debian's {'.'.join(map(str, self.release))}"
        if self.policy is None:
            return f"{real} (real kernel)"
        return f"HYPOTHETICAL what-if policy on {real}: {POLICIES[self.policy]}"

    def __str__(self) -> str:
        """The name; a policy variant says it is hypothetical.

        >>> str(kernel_profile("6.12")), str(kernel_profile("7.2+no-release-reset-map"))
        ('6.12', '7.2+no-release-reset-map (hypothetical)')
        """
        return self.name if self.policy is None else f"{self.name} (hypothetical)"


_PROFILES = {
    # Debian bookworm's 6.1.192: vhost-vdpa before RESUME (v6.3), the parent
    # get_backend_features op (v6.6), DESC_ASID / IOTLB_PERSIST / compat_reset /
    # reset_map (v6.7) and the DRIVER_OK test of SUSPEND (v6.8); with the stable
    # backports of the size-0 INVALIDATE (6.1.61), the entry limit and the group
    # bound check (6.1.191).
    "6.1": KernelProfile("6.1", (6, 1, 192), suspend_resume_need_driver_ok=False,
                         resume_ioctl=False, parent_backend_features=False,
                         desc_asid=False, iotlb_persist=False, compat_reset=False,
                         reset_map_at_release=False),
    "6.12": KernelProfile("6.12", (6, 12, 118), pa_map_unpins_failed_run=True),
    "7.2": KernelProfile("7.2", (7, 2, 13), set_group_asid_busy_after_driver_ok=True),
}

#: The profile names of real kernels, oldest first.
KERNELS: Tuple[str, ...] = tuple(sorted(_PROFILES, key=lambda n: _PROFILES[n].release))
#: The profile ``VhostVdpa`` uses when none is named: the newest.
DEFAULT_KERNEL: str = KERNELS[-1]

#: The what-if policies: name -> one line saying which kernel behaviour it changes.
#: ``kernel_profile("<kernel>+<policy>")`` applies one to a real profile.
POLICIES: Dict[str, str] = {
    "persist-gated-reset-map":
        "vhost-vdpa calls the parent's reset_map only when IOTLB_PERSIST is acked "
        "(the review's proposal); its one caller is remove_as at release, so without "
        "PERSIST an address space is left as the CLEAN_MAP reset and the unmapping "
        "left it",
    "no-release-reset-map":
        "vhost-vdpa never calls the parent's reset_map at release (the kernel before "
        "'vhost-vdpa: reset vendor specific mapping to initial state in .release')",
}

#: policy -> the flag overrides it applies to a real profile
_POLICY_FLAGS: Dict[str, Dict[str, bool]] = {
    "persist-gated-reset-map": {"reset_map_needs_persist": True},
    "no-release-reset-map": {"reset_map_at_release": False},
}
_variants: Dict[str, KernelProfile] = {}


def _variant(base: KernelProfile, policy: str) -> KernelProfile:
    name = f"{base.name}+{policy}"
    profile = _variants.get(name)
    if profile is None:
        if not base.reset_map_at_release:
            # both policies change the reset_map call at release: a kernel without
            # it has nothing for them to change
            raise ValueError(f"policy {policy!r} does not apply to kernel "
                             f"{base.name!r}: vhost-vdpa there never calls reset_map")
        profile = replace(base, name=name, policy=policy, **_POLICY_FLAGS[policy])
        _variants[name] = profile
    return profile


def kernel_profile(name=None) -> KernelProfile:
    """The :class:`KernelProfile` called ``name`` (None: :data:`DEFAULT_KERNEL`); a
    profile passes through.  ``"<kernel>+<policy>"`` is the real profile ``kernel``
    with the what-if policy ``policy`` (:data:`POLICIES`) applied.  An unknown name
    is a ValueError listing the known ones.

    >>> kernel_profile().name
    '7.2'
    >>> kernel_profile("5.4")
    Traceback (most recent call last):
    ...
    ValueError: unknown kernel profile '5.4'; known profiles: '6.1', '6.12', '7.2' (and '<kernel>+<policy>' with a policy of 'persist-gated-reset-map', 'no-release-reset-map')
    >>> kernel_profile("7.2+persist-gated-reset-map") is kernel_profile("7.2+persist-gated-reset-map")
    True
    """
    if name is None:
        name = DEFAULT_KERNEL
    if isinstance(name, KernelProfile):
        return name
    if isinstance(name, str) and "+" in name:
        kernel, _, policy = name.partition("+")
        base = _PROFILES.get(kernel)
        if base is not None and policy in POLICIES:
            return _variant(base, policy)
        profile = None
    else:
        profile = _PROFILES.get(name) if isinstance(name, str) else None
    if profile is None:
        known = ", ".join(repr(k) for k in KERNELS)
        policies = ", ".join(repr(p) for p in POLICIES)
        raise ValueError(f"unknown kernel profile {name!r}; known profiles: {known} "
                         f"(and '<kernel>+<policy>' with a policy of {policies})")
    return profile


_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)")


def kernel_profile_for_release(release: str) -> str:
    """The profile for a ``uname -r`` string: the newest profile whose ``major.minor``
    series is at or below the string's leading ``X.Y`` (anything after it -- the
    patch level, ``-rc3``, ``+deb13-amd64`` -- is ignored).  A release older than
    every profile's series, or a string without a leading ``X.Y``, is a ValueError.

    So ``6.12.118+deb13-amd64`` is "6.12", ``7.3.1`` is "7.2" (the nearest series
    below) and ``6.13`` is "6.12".  Debian's 6.1 kernels call themselves
    ``6.1.0-NN-amd64`` (the ABI number, not the patch level: 6.1.192 is
    ``6.1.0-57-amd64``), which is series 6.1: "6.1".  The match is by series: a
    profile models its own release (:attr:`KernelProfile.release`), so an older
    patch level of the same series is modelled with that series' newest backports
    (e.g. 6.12.100 gets the 6.12.114 entry limit it does not have yet).  A what-if
    policy is never picked.

    >>> kernel_profile_for_release("7.2.13-amd64"), kernel_profile_for_release("8.0")
    ('7.2', '7.2')
    >>> kernel_profile_for_release("6.1.0-41-amd64"), kernel_profile_for_release("6.6.30")
    ('6.1', '6.1')
    >>> kernel_profile_for_release("5.10.0-30-amd64")
    Traceback (most recent call last):
    ...
    ValueError: kernel release '5.10.0-30-amd64' is older than every profile (the oldest is '6.1')
    """
    m = _RELEASE.match(release) if isinstance(release, str) else None
    if m is None:
        raise ValueError(f"not a kernel release: {release!r}")
    series = (int(m.group(1)), int(m.group(2)))
    best = None
    for name in KERNELS:
        if _PROFILES[name].release[:2] <= series:
            best = name
    if best is None:
        raise ValueError(f"kernel release {release!r} is older than every profile "
                         f"(the oldest is {KERNELS[0]!r})")
    return best
