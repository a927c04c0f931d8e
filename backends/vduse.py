"""``vduse``: vDPA Device in Userspace (drivers/vdpa/vdpa_user/{vduse_dev.c,iova_domain.c}).

A VDUSE device is created by a userspace daemon (``/dev/vduse/control``:
``VDUSE_SET_API_VERSION``, ``VDUSE_CREATE_DEV``) and added to the vDPA bus with
``vdpa dev add name NAME mgmtdev vduse``; bound to vhost-vdpa it is a ``set_map``
parent in VA mode (``vdpa_alloc_device(..., use_va = true)``).

What the kernel does, per address space (one ``struct vduse_iova_domain`` each,
created by ``vdpa_dev_add``):

* ``set_map`` (``vduse_vdpa_set_map`` → ``vduse_domain_set_map``) wipes the domain's
  IOTLB ``[0, ~0]`` and copies every entry of the vhost IOTLB into it (a vhost_iotlb
  of ``max_iotlb_entries`` entries, module parameter of ``vduse``, default 2048,
  flags 0: the 2,049th entry is ENOSPC and the domain is wiped again).  Then it
  sends ``VDUSE_UPDATE_IOTLB [0, ~0]`` to the daemon; a daemon answering FAILED makes
  it ``vduse_domain_clear_map`` and return -EIO (the model's daemon always answers OK,
  as the project's test daemon does).
* ``reset`` (``vduse_vdpa_reset``) sends ``SET_STATUS(0)`` to the daemon and calls
  ``vduse_dev_reset``, which drops only the *bounce* maps
  (``vduse_domain_reset_bounce_map``, and only when ``domain->bounce_map`` is set --
  by the kernel DMA path of virtio-vdpa, never while vhost-vdpa is bound): the user
  map survives SET_STATUS(0).
* There is no ``reset_map`` and no ``compat_reset``, so IOTLB_PERSIST is not offered,
  and at release ``vhost_vdpa_remove_as`` unmaps the vhost IOTLB without calling
  ``set_map``: **the last map stays in the domain** until the next ``set_map``.
* No ``get_iova_range``: vhost-vdpa uses ``[0, ULLONG_MAX]``.  No ``suspend``,
  ``resume``, ``get_vq_desc_group``.

Where the rules come from: the set_map/VA-mode parent, its domain and its reset are
VDUSE as introduced in v5.15 ("vduse: Introduce VDUSE - vDPA Device in Userspace",
"vdpa: Support transferring virtual addressing during DMA mapping"), unchanged in
what vhost-vdpa can see through 6.12.118 and 7.2.13; the per-AS domains and vq groups
are 7.2's (below).  Commit subjects recalled from upstream history: Debian's
changelogs list none of them.

Kernel versions (option ``kernel``):

* ``"6.12"``: one domain (``dev->domain``), ``nas = ngroups = 1``, no
  ``get_vq_group`` (GET_VRING_GROUP is EOPNOTSUPP) and no ``set_group_asid``
  (SET_GROUP_ASID is EOPNOTSUPP).  VDUSE API version 0 only.
* ``"7.2"`` (default): VDUSE API v1 (``VDUSE_API_VERSION_1``, upstream series
  "vduse: add vq group support" / "vduse: add vq group asid support"; not in
  Debian's changelog, read from the 7.2.13 sources): ``ngroups`` and ``nas`` come
  from ``VDUSE_CREATE_DEV`` (1..0xffff each), one domain per AS, ``get_vq_group``
  answers the group the daemon gave each vq (``VDUSE_VQ_SETUP``), and
  ``set_group_asid`` sends ``VDUSE_SET_VQ_GROUP_ASID`` and rebinds the group.  With
  API v0 on 7.2, ``get_vq_group`` answers 0 and ``set_group_asid`` is EINVAL.  A
  reset does **not** rebind groups to AS 0 (``vduse_dev_reset`` leaves
  ``dev->groups[].as`` alone).

>>> import iotlb
>>> from iotlb.backend import has_persistent_map, mapping_style
>>> d = Vduse()
>>> mapping_style(d), d.use_va, has_persistent_map(d)
('set_map', True, False)
>>> src = iotlb.IOTLB(); src.map(0x1000, 0x1fff, 0x7f0000000000)
>>> d.set_map(0, src); src.unmap()
1
>>> d.reset(); len(d.device_iotlb(0))          # SET_STATUS(0) keeps the user map
1
"""
from __future__ import annotations

import collections
import errno

import iotlb
from iotlb import U64_MAX, IOTLBError
from iotlb.backend import Backend

__all__ = ["Vduse", "Vduse612", "Vduse72", "MAX_IOTLB_ENTRIES", "VDUSE_DEV_MAX_GROUPS",
           "VDUSE_DEV_MAX_AS", "KERNELS"]

#: ``max_iotlb_entries`` module parameter of ``vduse`` (iova_domain.c, default 2048):
#: the limit of each domain's vhost_iotlb, allocated with flags 0, so enforced
#: (ENOSPC) on kernels with "vhost_iotlb: bound map allocation in add_range".
MAX_IOTLB_ENTRIES = 2048
#: vduse_dev.c (7.2): the bounds ``vduse_validate_config`` puts on ``ngroups``/``nas``.
VDUSE_DEV_MAX_GROUPS = 0xFFFF
VDUSE_DEV_MAX_AS = 0xFFFF
#: The kernel versions whose VDUSE is modelled (the project's profiles).
KERNELS = ("6.12", "7.2")


class Vduse(Backend):
    """A VDUSE device bound to vhost-vdpa.  ``Vduse(kernel="7.2")`` (default) returns a
    :class:`Vduse72`, ``Vduse(kernel="6.12")`` a :class:`Vduse612` -- the op tables
    differ (6.12 has no ``get_vq_group``/``set_group_asid``), so the absent ops are
    truly absent.

    Options: ``kernel`` (``"6.12"``/``"7.2"``), ``api_version`` (7.2: 0 or 1, default
    1; 6.12: 0), ``nas=1``, ``ngroups=1`` (API v1 only, as given to
    ``VDUSE_CREATE_DEV``), ``nvqs=2`` (``vq_num``), ``vq_groups`` (API v1: the group
    of each vq, as given to ``VDUSE_VQ_SETUP``; default all 0),
    ``max_iotlb_entries=2048`` (module parameter).  ``use_va`` is always True.

    >>> Vduse(kernel="6.12").nas, type(Vduse(kernel="6.12")).__name__
    (1, 'Vduse612')
    >>> Vduse(api_version=0, nas=2)
    Traceback (most recent call last):
    ...
    ValueError: VDUSE API v0 has one address space and one vq group (vduse_validate_config refuses ngroups/nas), got nas=2, ngroups=1
    """

    def __new__(cls, *args, kernel=None, **options):
        base = _table_kernel(kernel)
        if cls is Vduse:
            cls = _TABLES[base]
        elif base != cls.table_kernel:
            raise ValueError(f"{cls.__name__} models kernel {cls.table_kernel}, not "
                             f"{base!r}")
        return object.__new__(cls)

    #: the kernel this op table is read from
    table_kernel = ""

    kernel_findings = {
        "after release": "VDUSE has no reset_map, so nothing restores its domain at "
        "release: it keeps the last map set_map gave it (seen on Debian's 6.12.118 "
        "and 7.2.13 by tests/kernel/vduse_run.py --domain-check)"}

    def __init__(self, *, kernel=None, api_version=None, nas: int = 1,
                 ngroups: int = 1, nvqs: int = 2, vq_groups=None,
                 max_iotlb_entries: int = MAX_IOTLB_ENTRIES) -> None:
        super().__init__(nas=nas, ngroups=ngroups, nvqs=nvqs, iova_range=(0, U64_MAX),
                         use_va=True, kernel=kernel)
        self._api_default = api_version is None
        if api_version is None:
            api_version = self._api_versions[-1]
        if api_version not in self._api_versions:
            raise ValueError(f"VDUSE API version {api_version!r} does not exist on "
                             f"{self.table_kernel} (it has {self._api_versions})")
        self.api_version = api_version
        if api_version == 0 and (self.nas != 1 or self.ngroups != 1):
            raise ValueError(f"VDUSE API v0 has one address space and one vq group "
                             f"(vduse_validate_config refuses ngroups/nas), got "
                             f"nas={self.nas}, ngroups={self.ngroups}")
        if self.nas > VDUSE_DEV_MAX_AS or self.ngroups > VDUSE_DEV_MAX_GROUPS:
            raise ValueError(f"vduse_validate_config: nas and ngroups must be <= 0xffff")
        if self.nvqs > 0xFFFF:
            raise ValueError(f"vduse_validate_config: vq_num must be <= 0xffff, got {self.nvqs}")
        if vq_groups is None:
            vq_groups = (0,) * self.nvqs
        vq_groups = tuple(vq_groups)
        if len(vq_groups) != self.nvqs or any(
                type(g) is not int or not 0 <= g < self.ngroups for g in vq_groups):
            raise ValueError(f"vq_groups must give each of the {self.nvqs} vqs a group "
                             f"< ngroups {self.ngroups} (VDUSE_VQ_SETUP), got {vq_groups!r}")
        self._vq_groups = vq_groups
        if type(max_iotlb_entries) is not int or not 1 <= max_iotlb_entries < 2**31:
            # <= 0 makes vduse_domain_create fail, so vdpa dev add is ENOMEM
            raise ValueError(f"max_iotlb_entries must be an int in 1..2**31-1, got "
                             f"{max_iotlb_entries!r}")
        self.max_iotlb_entries = max_iotlb_entries
        # vdpa_dev_add: one domain per AS, empty; every group bound to AS 0
        self._domain = [iotlb.IOTLB(max_iotlb_entries) for _ in range(self.nas)]
        self._group_as = [0] * self.ngroups
        #: config generation, bumped by every reset (``dev->generation++``)
        self.generation = 0
        #: the last :attr:`MESSAGES_KEPT` messages the daemon answered, ``(type, ...)``
        #: tuples, oldest first: a ``collections.deque`` (a list until 2026-12; a
        #: replay sends one per message, so the log is bounded)
        self.messages = collections.deque(maxlen=self.MESSAGES_KEPT)
        #: how many messages the daemon answered in all
        self.messages_sent = 0

    #: How many of the daemon's messages :attr:`messages` keeps (the newest).
    MESSAGES_KEPT = 4096

    _api_versions = (0, 1)

    def _apply_kernel(self) -> None:
        """Bound to another kernel before use (:meth:`Backend.bind_kernel`): the op
        table of that kernel's VDUSE (6.12 or 7.2; VDUSE of 6.1 is not modelled, a
        ValueError), and the API version that kernel defaults to when none was
        given."""
        base = _table_kernel(self.kernel.base)
        table = _TABLES[base]
        if type(self) is table or type(self) not in _TABLES.values():
            return                      # same table, or a user subclass: keep it
        api = table._api_versions[-1] if self._api_default else self.api_version
        if api not in table._api_versions or (api == 0 and (self.nas != 1 or
                                                            self.ngroups != 1)):
            raise ValueError(f"VDUSE of {base} cannot serve this device (API v"
                             f"{self.api_version}, nas={self.nas}, ngroups={self.ngroups})")
        self.__class__ = table
        self.api_version = api

    # ------------------------------------------------------------------ daemon
    def _msg_sync(self, *request) -> None:
        """``vduse_dev_msg_sync``: the daemon gets the request and answers OK.

        >>> d = Vduse(); d.MESSAGES_KEPT
        4096
        >>> for s in range(5000): d.set_status(s & 0xF)
        >>> d.messages_sent, len(d.messages), d.messages[0]
        (5000, 4096, ('SET_STATUS', 8))
        """
        self.messages.append(request)
        self.messages_sent += 1

    # ------------------------------------------------------------------ ops
    def set_status(self, status: int) -> None:
        """``vduse_vdpa_set_status``: ``VDUSE_SET_STATUS`` to the daemon, then the
        status is stored.

        >>> d = Vduse(); d.set_status(0xF); d.get_status(), d.messages[-1]
        (15, ('SET_STATUS', 15))
        """
        super().set_status(status)
        self._msg_sync("SET_STATUS", status)

    def reset(self) -> None:
        """``vduse_vdpa_reset``: ``SET_STATUS(0)`` to the daemon, then
        ``vduse_dev_reset``: bounce maps dropped (there are none while vhost-vdpa is
        bound), status 0, generation bumped, vq state cleared.  The user map and the
        group → AS bindings stay.

        >>> import iotlb
        >>> d = Vduse(nas=2, ngroups=2); d.set_group_asid(1, 1)
        >>> t = iotlb.IOTLB(); t.map(0, 0xfff, 0x5000); d.set_map(1, t)
        >>> d.reset(); len(d.device_iotlb(1)), d.group_asid(1), d.generation
        (1, 1, 1)
        """
        self._msg_sync("SET_STATUS", 0)
        self._status = 0
        self.generation += 1

    def set_map(self, asid: int, iotlb_) -> None:
        """``vduse_vdpa_set_map`` → ``vduse_domain_set_map``: wipe the domain of
        ``asid``, copy every entry of ``iotlb_``; a copy error (ENOSPC past
        ``max_iotlb_entries``) wipes the domain again and is raised.  Then
        ``VDUSE_UPDATE_IOTLB [0, ~0]`` to the daemon.  ``asid`` is not checked here:
        vhost-vdpa only passes ``asid < nas``.

        >>> import iotlb
        >>> d = Vduse(max_iotlb_entries=1); t = iotlb.IOTLB()
        >>> t.map(0, 0xfff, 0x5000); t.map(0x1000, 0x1fff, 0x9000)
        >>> d.set_map(0, t)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [ENOSPC] vhost_iotlb_add_range_ctx: 1 entries, limit 1
        >>> len(d.device_iotlb(0))
        0
        """
        if type(asid) is not int or not 0 <= asid < self.nas:
            raise ValueError(f"set_map: asid must be in 0..{self.nas - 1}, got {asid!r} "
                             "(vhost-vdpa never passes another)")
        self._domain[asid].assign(iotlb_)     # wipe, copy; wiped again on an error
        self._msg_sync("UPDATE_IOTLB", asid, 0, U64_MAX)

    # ------------------------------------------------------------------ observation
    def device_iotlb(self, asid: int) -> iotlb.IOTLB:
        """The domain's IOTLB of ``asid`` (what the daemon reads with
        ``VDUSE_IOTLB_GET_FD``/``GET_FD2``).

        >>> len(Vduse().device_iotlb(0))
        0
        """
        self._check_asid(asid)
        return self._domain[asid].copy()

    def group_asid(self, group: int) -> int:
        """The AS vq group ``group`` is bound to (``dev->groups[group].as``).

        >>> Vduse(nas=2, ngroups=2).group_asid(1)
        0
        """
        self._check_group(group)
        return self._group_as[group]


class Vduse612(Vduse):
    """VDUSE of 6.12 (``vduse_vdpa_config_ops`` without ``get_vq_group`` and
    ``set_group_asid``; API version 0 only; one domain).

    >>> d = Vduse(kernel="6.12"); d.get_vq_group is None, d.set_group_asid is None
    (True, True)
    """

    table_kernel = "6.12"
    _api_versions = (0,)
    # 6.12's vduse_vdpa_config_ops has neither: NULL op pointers.
    get_vq_group = None
    set_group_asid = None


class Vduse72(Vduse):
    """VDUSE of 7.2 (API v1: vq groups and address spaces).

    >>> d = Vduse(nas=2, ngroups=2, nvqs=3, vq_groups=(0, 0, 1))
    >>> [d.get_vq_group(vq) for vq in range(3)]
    [0, 0, 1]
    """

    table_kernel = "7.2"
    kernel_findings = {
        **Vduse.kernel_findings,
        "reset rebinds groups": "vduse_dev_reset (7.2) leaves dev->groups[].as alone: "
        "a reset does not rebind the vq groups to AS 0"}

    def get_vq_group(self, vq: int) -> int:
        """``vduse_get_vq_group``: 0 under API v0, else the group the daemon gave the
        vq in ``VDUSE_VQ_SETUP``.

        >>> Vduse(api_version=0).get_vq_group(1)
        0
        """
        self._check_vq(vq)
        return 0 if self.api_version < 1 else self._vq_groups[vq]

    def set_group_asid(self, group: int, asid: int) -> None:
        """``vduse_set_group_asid``: EINVAL under API v0; else
        ``VDUSE_SET_VQ_GROUP_ASID`` to the daemon and the group is rebound.  The
        bounds are vhost-vdpa's ("vhost: move vdpa group bound check to
        vhost_vdpa"); the model refuses out-of-range values with ``ValueError``.

        >>> Vduse(api_version=0).set_group_asid(0, 0)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EINVAL] vduse_set_group_asid: VDUSE API v0 has no vq group ASIDs
        """
        if self.api_version < 1:
            raise IOTLBError(errno.EINVAL, "vduse_set_group_asid: VDUSE API v0 has no vq "
                             "group ASIDs")
        self._check_group(group)
        self._check_asid(asid)
        self._msg_sync("SET_VQ_GROUP_ASID", group, asid)
        self._group_as[group] = asid


_TABLES = {"6.12": Vduse612, "7.2": Vduse72}


def _table_kernel(kernel) -> str:
    """The VDUSE op table for a kernel profile (name or profile; None: the default
    profile): 6.12 or 7.2.  VDUSE of 6.1 is not modelled (a ValueError)."""
    from iotlb.kernels import kernel_profile

    base = kernel_profile(kernel).base
    if base not in KERNELS:
        raise ValueError(f"VDUSE is modelled on kernels {', '.join(KERNELS)}, not {base}")
    return base
