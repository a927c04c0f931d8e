"""Kernel profiles: which kernel's vhost-vdpa a :class:`iotlb.vdpa.VhostVdpa` models.

Real kernels disagree on a few observable rules.  Each such rule is one flag of
:class:`KernelProfile`, named after what it gates, documented with the kernel version
and the upstream commit subject that introduced it; the device model asks the flag,
never a version number.  The profiles are the exact Debian kernels the project
checks against (``docs/kernel-semantics.md`` cites their sources):

* ``"6.12"`` -- Debian trixie's 6.12.118;
* ``"7.2"`` -- Debian's 7.2.13 (the newest, and the default).

:data:`KERNELS` lists the names, oldest first.  ``VhostVdpa(backend, kernel="6.12")``
selects one; :func:`kernel_profile_for_release` maps a ``uname -r`` string to the
nearest profile at or below it.

>>> KERNELS
('6.12', '7.2')
>>> kernel_profile("7.2").set_group_asid_busy_after_driver_ok
True
>>> kernel_profile_for_release("6.12.118+deb13-amd64")
'6.12'
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

__all__ = ["KernelProfile", "KERNELS", "DEFAULT_KERNEL", "kernel_profile",
           "kernel_profile_for_release"]


@dataclass(frozen=True)
class KernelProfile:
    """The rules that differ between the kernels the model knows.

    Rules every profile shares (the size-0 INVALIDATE, the entry limit, the
    SET_GROUP_ASID bound check in vhost-vdpa, SUSPEND/RESUME without DRIVER_OK) are
    flags too, so a profile for an older kernel only has to turn them off.
    """

    #: the profile's name, an entry of :data:`KERNELS`
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
    #: checks ("vhost: move vdpa group bound check to vhost_vdpa"; stable 6.12.75,
    #: 6.1.191).
    group_asid_bound_check: bool = True

    #: ``VHOST_VDPA_SET_GROUP_ASID`` with DRIVER_OK set → -EBUSY, after the bound
    #: check and before the op check (v7.2; the commit is not in Debian's
    #: changelogs, so its subject is unverified).
    set_group_asid_busy_after_driver_ok: bool = False

    #: ``VHOST_VDPA_SUSPEND``/``RESUME`` return 0 without calling the parent (or
    #: checking that the op exists) while DRIVER_OK is clear (v6.8, "vdpa: skip
    #: suspend/resume ops if not DRIVER_OK").
    suspend_resume_need_driver_ok: bool = True

    #: ``vhost_vdpa_pa_map``'s error path unpins the failed run whenever a page was
    #: processed (``if (last_pfn)``), so a failed UPDATE never leaks pins (6.12.118,
    #: "vhost-vdpa: fix pinned page leak in vhost_vdpa_pa_map() error path").
    #: Without it (``if (nchunks)``, 7.2.13 and 6.1) the failed run stays pinned
    #: when a run was mapped earlier in the same pin batch.
    pa_map_unpins_failed_run: bool = False

    def __str__(self) -> str:
        return self.name


_PROFILES = {
    "6.12": KernelProfile("6.12", (6, 12, 118), pa_map_unpins_failed_run=True),
    "7.2": KernelProfile("7.2", (7, 2, 13), set_group_asid_busy_after_driver_ok=True),
}

#: The profile names, oldest first.
KERNELS: Tuple[str, ...] = tuple(sorted(_PROFILES, key=lambda n: _PROFILES[n].release))
#: The profile ``VhostVdpa`` uses when none is named: the newest.
DEFAULT_KERNEL: str = KERNELS[-1]


def kernel_profile(name=None) -> KernelProfile:
    """The :class:`KernelProfile` called ``name`` (None: :data:`DEFAULT_KERNEL`); a
    profile passes through.  An unknown name is a ValueError listing the known ones.

    >>> kernel_profile().name
    '7.2'
    >>> kernel_profile("5.4")
    Traceback (most recent call last):
    ...
    ValueError: unknown kernel profile '5.4'; known profiles: '6.12', '7.2'
    """
    if name is None:
        name = DEFAULT_KERNEL
    if isinstance(name, KernelProfile):
        return name
    profile = _PROFILES.get(name) if isinstance(name, str) else None
    if profile is None:
        known = ", ".join(repr(k) for k in KERNELS)
        raise ValueError(f"unknown kernel profile {name!r}; known profiles: {known}")
    return profile


_RELEASE = re.compile(r"^\s*(\d+)\.(\d+)")


def kernel_profile_for_release(release: str) -> str:
    """The profile for a ``uname -r`` string: the newest profile whose ``major.minor``
    series is at or below the string's leading ``X.Y`` (anything after it -- the
    patch level, ``-rc3``, ``+deb13-amd64`` -- is ignored).  A release older than
    every profile's series, or a string without a leading ``X.Y``, is a ValueError.

    So ``6.12.118+deb13-amd64`` is "6.12", ``7.3.1`` is "7.2" (the nearest series
    below) and ``6.13`` is "6.12".  The match is by series: a profile models its
    own release (:attr:`KernelProfile.release`), so an older patch level of the
    same series is modelled with that series' newest backports (e.g. 6.12.100 gets
    the 6.12.114 entry limit it does not have yet).

    >>> kernel_profile_for_release("7.2.13-amd64"), kernel_profile_for_release("8.0")
    ('7.2', '7.2')
    >>> kernel_profile_for_release("5.10.0-30-amd64")
    Traceback (most recent call last):
    ...
    ValueError: kernel release '5.10.0-30-amd64' is older than every profile (the oldest is '6.12')
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

