"""``mlx5``: the Mellanox/NVIDIA ConnectX vDPA net parent
(drivers/vdpa/mlx5/net/mlx5_vnet.c, drivers/vdpa/mlx5/core/mr.c).

Ops: ``set_map`` + ``reset_map`` + ``compat_reset`` (no ``dma_map``),
``set_group_asid``, ``get_vq_desc_group`` (when the device has
``desc_group_mkey_supported``), ``suspend``/``resume``.  ``MLX5_VDPA_NUM_AS = 2``;
groups: data vqs 0, CVQ 1, data-vq descriptors 2 (``MLX5_VDPA_NUMVQ_GROUPS = 3``).
vhost-vdpa uses its PA path (``use_va`` is false): every mapping is pinned.

Device state, per ASID: ``mres.mr[asid]`` -- ``None`` (no access), a *DMA MR* (the
physical identity mkey) or a *user MR* built from an entire IOTLB (it keeps a copy of
that IOTLB, ``mr->iotlb``); ``group2asid[]``; and ``cvq.iotlb``, the private copy the
software control queue translates through (:attr:`Mlx5.cvq_iotlb`).

>>> import iotlb
>>> from iotlb.backend import VDPA_RESET_F_CLEAN_MAP, is_identity
>>> dev = Mlx5()                       # umem_uid_0: AS 0 starts with the DMA MR
>>> dev.mr_kind(0), dev.mr_kind(1), is_identity(dev.cvq_iotlb)
('dma', None, True)
>>> t = iotlb.IOTLB(); t.map(0x1000, 0x1fff, 0x40000)
>>> dev.set_map(0, t); dev.mr_kind(0), len(dev.cvq_iotlb)
('user', 1)
>>> dev.set_map(0, iotlb.IOTLB()); dev.mr_kind(0)   # empty IOTLB: no MR, not the DMA MR
>>> dev.compat_reset(VDPA_RESET_F_CLEAN_MAP); dev.mr_kind(0)
'dma'

The driver of each kernel (:attr:`~iotlb.backend.Backend.kernel`): on 6.1 (Debian's
6.1.192, read from its source, not checked on hardware) there is no ``reset_map``,
``compat_reset``, ``resume`` or ``get_vq_desc_group``, two vq groups, and the plain
``reset`` drops every MR and the CVQ iotlb and re-creates the DMA MR
(``umem_uid_0``), i.e. what a CLEAN_MAP reset does on newer kernels.  6.1 keeps
*one* data-vq MR (``mvdev->mr``, built for the AS the data group is bound to)
instead of one per AS (:data:`PER_ASID_MR`): ``set_map`` of another AS leaves it
alone, ``device_iotlb(asid)`` is that MR when the data group is bound to ``asid``
(else empty), ``set_group_asid`` only records the binding, and the CVQ iotlb is
appended to without a prune while no data MR exists.
"""
from __future__ import annotations

from typing import Optional

import iotlb
from iotlb import U64_MAX, Perm
from iotlb.backend import VDPA_RESET_F_CLEAN_MAP, Backend, identity_iotlb
from iotlb.kernels import Since

_IOTLB = iotlb.IOTLB

__all__ = ["Mlx5", "MLX5_VDPA_NUM_AS", "DATAVQ_GROUP", "CVQ_GROUP", "DATAVQ_DESC_GROUP"]

MLX5_VDPA_NUM_AS = 2
DATAVQ_GROUP = 0
CVQ_GROUP = 1
DATAVQ_DESC_GROUP = 2
MLX5_VDPA_NUMVQ_GROUPS = 3

# --- mlx5's rules by kernel (absent before the version; see Mlx5._apply_kernel)
#: ``reset_map``, ``compat_reset`` and a plain reset that keeps the MRs
RESET_MAP = Since((6, 7), "vdpa/mlx5: implement .reset_map driver op")
#: the data-vq descriptor group (``get_vq_desc_group``, ``MLX5_VDPA_NUMVQ_GROUPS``
#: 3); bracketed: absent in 6.1.192, present in 6.12.118
DESC_GROUP = Since((6, 7), "(unverified) vdpa/mlx5: descriptor group mkey",
                   verified=False)
#: the ``resume`` op; bracketed: absent in 6.1.192, present in 6.12.118
RESUME = Since((6, 2), "(unverified) vdpa/mlx5: resume op", verified=False)
#: one MR per address space (``mres.mr[asid]``, ``mlx5_vdpa_update_mr``,
#: ``update_cvq_iotlb``); before it one data-vq MR (``mvdev->mr``) and
#: ``mlx5_vdpa_handle_set_map``/``change_map``.  Bracketed: 6.1.192 has the single
#: MR, 6.12.118 the per-AS MRs.
PER_ASID_MR = Since((6, 7), "(unverified) vdpa/mlx5: MRs per address space",
                    verified=False)


#: A memory region (``struct mlx5_vdpa_mr``) is the plain tuple ``(kind, iotlb)``:
#: ``kind`` is ``"dma"`` or ``"user"``, ``iotlb`` is ``mr->iotlb`` (identity for the
#: DMA MR), never changed once the MR is made.  A plain tuple because ``set_map``
#: makes one per message: building an instance of a tuple subclass with named
#: fields cost ~1,000 instructions a message more (callgrind).
_KIND, _TLB = 0, 1

#: What ``dup_iotlb`` copies for a NULL source: the identity ``[0, ULLONG_MAX]`` RW,
#: stored by ``vhost_iotlb_add_range`` as two entries (:func:`identity_iotlb`).
#: Every copy here is ``dst.add_all(src)`` (``dup_iotlb``'s loop: each entry added in
#: ascending order, the opaque not copied; O(1) into an empty tree), with this
#: IOTLB for NULL.  Only ever a source: nothing may change it.
_DUP_NULL = identity_iotlb(Perm.RW)


def _as_iotlb(src) -> "iotlb.IOTLB":
    """``src`` itself when it is an :class:`iotlb.IOTLB`; otherwise (a plugin test's
    iterable of Map, or the other engine's IOTLB) a new IOTLB holding its entries,
    each added in order (:meth:`iotlb.IOTLB.assign`).

    >>> [(m.start, m.addr) for m in _as_iotlb([iotlb.Map(0x1000, 0x1fff, 0x8000, 3)])]
    [(4096, 32768)]
    """
    if isinstance(src, _IOTLB):
        return src
    tlb = _IOTLB()
    tlb.assign(src)
    return tlb


class Mlx5(Backend):
    """The mlx5 vDPA net parent.

    Options: ``nas=2``, ``ngroups=3``, ``nvqs=3`` (one queue pair + CVQ; the CVQ is
    the last vq when ``nvqs`` is odd, i.e. ``is_ctrl_vq_idx`` with CTRL_VQ
    negotiated), ``iova_range=(0, U64_MAX)``, ``umem_uid_0=True`` (the device
    capability that makes the driver create a DMA MR for AS 0 at creation and after
    a CLEAN_MAP reset or ``reset_map(0)``), ``desc_group=True``
    (``desc_group_mkey_supported``: ``get_vq_desc_group`` present, so DESC_ASID is
    offered), ``resume=True`` (``freeze_to_rdy_supported``: ``resume`` present),
    ``kernel`` (see :class:`~iotlb.backend.Backend`).  ``desc_group``, ``resume``
    and ``ngroups`` default (None) to what the kernel's driver has; asking a kernel
    for an op its driver lacks is a ValueError.

    >>> Mlx5(umem_uid_0=False).mr_kind(0) is None
    True
    >>> getattr(Mlx5(desc_group=False), "get_vq_desc_group", None) is None
    True
    """

    def __init__(self, *, nas: int = MLX5_VDPA_NUM_AS, ngroups=None,
                 nvqs: int = 3, iova_range=(0, U64_MAX), umem_uid_0: bool = True,
                 desc_group=None, resume=None, kernel=None) -> None:
        self._options = (ngroups, desc_group, resume)
        super().__init__(nas=nas, ngroups=1 if ngroups is None else ngroups, nvqs=nvqs,
                         iova_range=iova_range, use_va=False, kernel=kernel)
        self.umem_uid_0 = bool(umem_uid_0)
        self._apply_kernel()

    def _apply_kernel(self) -> None:
        """The driver of :attr:`kernel`: groups, op table, and the state
        ``mlx5_vdpa_dev_add`` leaves (a DMA MR for AS 0 with ``umem_uid_0``)."""
        kernel = self.kernel
        ngroups, desc_group, resume = self._options
        has_desc, has_resume = kernel in DESC_GROUP, kernel in RESUME
        for name, asked, has in (("desc_group", desc_group, has_desc),
                                 ("resume", resume, has_resume)):
            if asked and not has:
                raise ValueError(f"mlx5 on kernel {kernel.base} has no {name} op")
        desc_group = has_desc if desc_group is None else bool(desc_group)
        resume = has_resume if resume is None else bool(resume)
        if ngroups is None:
            ngroups = MLX5_VDPA_NUMVQ_GROUPS if has_desc else CVQ_GROUP + 1
        if type(ngroups) is not int or not 1 <= ngroups <= 0xFFFFFFFF:
            raise ValueError(f"ngroups must be an int in 1..2**32-1, got {ngroups!r}")
        if desc_group and ngroups <= DATAVQ_DESC_GROUP:
            raise ValueError(f"desc_group=True needs ngroups >= 3 (data-vq descriptor "
                             f"group is {DATAVQ_DESC_GROUP}), got ngroups={ngroups}")
        if ngroups <= CVQ_GROUP and self.cvq_index is not None:
            raise ValueError(f"a CVQ needs ngroups >= 2, got ngroups={ngroups}")
        self.ngroups = ngroups                  # checked: from here nothing refuses
        #: ``kernel in PER_ASID_MR``: one MR per address space (else 6.1's one data
        #: MR).  An attribute, not a question per ``set_map``: it depends on the
        #: kernel's release only, and :meth:`bind_kernel` re-runs this method
        #: whenever the release changes.
        self._per_asid = kernel in PER_ASID_MR
        # Ops the hardware lacks are NULLed in the op table, as mlx5_vdpa_dev_add does
        # with mgtdev->vdpa_ops (get_vq_desc_group without desc_group_mkey_supported,
        # resume without freeze_to_rdy_supported): here, an instance attribute None;
        # so are the ops the kernel's driver does not have.
        hidden = []
        if not desc_group:
            hidden.append("get_vq_desc_group")
        if not resume:
            hidden.append("resume")
        if kernel not in RESET_MAP:
            hidden += ["reset_map", "compat_reset"]
        self._hide_ops(hidden)
        self._mr: list = [None] * self.nas
        self._group2asid = [0] * self.ngroups
        self._cvq = iotlb.IOTLB()
        #: True between ``suspend()`` and ``resume()``/reset (``mvdev->suspended``).
        self.suspended = False
        self.generation = 0
        # mlx5_vdpa_dev_add: a DMA MR for AS 0 when the device has umem_uid_0.
        if self.umem_uid_0:
            self._create_dma_mr()

    # ------------------------------------------------------------------ MR helpers
    @property
    def cvq_index(self) -> Optional[int]:
        """Index of the control vq, or None (even ``nvqs``: no CVQ).

        >>> Mlx5().cvq_index
        2
        """
        return self.nvqs - 1 if self.nvqs % 2 == 1 else None

    def _update_mr(self, mr: Optional[tuple], asid: int) -> None:
        """``mlx5_vdpa_update_mr``: install ``mr`` for ``asid``, dropping the old.
        Before :data:`PER_ASID_MR` the one data-vq MR is created / destroyed only
        for the AS the data group is bound to (``_mlx5_vdpa_create_dvq_mr``,
        ``_mlx5_vdpa_destroy_dvq_mr``)."""
        if self._per_asid:
            self._mr[asid] = mr
        elif self._group2asid[DATAVQ_GROUP] == asid:
            self._mr[DATAVQ_GROUP] = mr

    def _mr_of(self, asid: int) -> Optional[tuple]:
        """The MR of ``asid`` (6.1: the data-vq MR when the data group is bound to
        ``asid``)."""
        if self._per_asid:
            return self._mr[asid]
        if self._group2asid[DATAVQ_GROUP] == asid:
            return self._mr[DATAVQ_GROUP]
        return None

    def _update_cvq_iotlb(self, src, asid: int) -> None:
        """``mlx5_vdpa_update_cvq_iotlb``: only when the CVQ group is bound to
        ``asid``: prune ``cvq.iotlb`` and ``dup_iotlb(src)`` into it (an IOTLB;
        :data:`_DUP_NULL` for NULL)."""
        if self._group2asid[CVQ_GROUP] != asid:
            return
        cvq = self._cvq
        cvq.unmap()
        cvq.add_all(src)

    def _create_dma_mr(self) -> None:
        """``mlx5_vdpa_create_dma_mr``: AS 0 gets the DMA (identity) MR, and the CVQ
        iotlb becomes identity if the CVQ group is bound to AS 0."""
        tlb = _IOTLB()
        tlb.add_all(_DUP_NULL)
        self._update_mr(("dma", tlb), 0)
        self._update_cvq_iotlb(_DUP_NULL, 0)

    def _clean_mrs(self) -> None:
        """``mlx5_vdpa_clean_mrs``: drop the MR of every AS, prune ``cvq.iotlb``."""
        for asid in range(self.nas):
            self._update_mr(None, asid)
        self._cvq.unmap()

    # ------------------------------------------------------------------ mapping
    def set_map(self, asid: int, iotlb_) -> None:
        """``mlx5_vdpa_set_map`` → ``set_map_data``: ``asid >= 2`` is EINVAL; a
        non-empty IOTLB becomes a new user MR built from the *entire* IOTLB (its
        copy kept as ``mr->iotlb``); an empty one installs no MR (access cleared, no
        fallback to the DMA MR).  Then ``update_cvq_iotlb(iotlb, asid)``.

        >>> import iotlb
        >>> dev = Mlx5(); src = iotlb.IOTLB(); src.map(0, 0xfff, 0x3000)
        >>> dev.set_map(1, src); src.unmap(); dev.mr_kind(1), len(dev.device_iotlb(1))
        1
        ('user', 1)
        """
        if type(asid) is not int or not 0 <= asid < self.nas:
            self._check_op_asid("set_map", asid)          # raises: asid >= nas EINVAL
        if not self._per_asid:
            self._set_map_single_mr(asid, iotlb_)
            return
        if type(iotlb_) is not _IOTLB:
            iotlb_ = _as_iotlb(iotlb_)
        if len(iotlb_) != 0:                  # vhost_iotlb_itree_first(iotlb, 0, ~0)
            tlb = _IOTLB()
            tlb.add_all(iotlb_)               # create_user_mr + dup_iotlb(mr->iotlb)
            new_mr = ("user", tlb)
        else:
            new_mr = None
        # update_mr (no old MR) or change_map (suspend vqs, swap, resume): same state.
        # This is the per-AS branch of _update_mr, written out: a call costs a Python
        # frame (~550 instructions) on every message.
        self._mr[asid] = new_mr
        self._update_cvq_iotlb(iotlb_, asid)

    def _set_map_single_mr(self, asid: int, src) -> None:
        """``mlx5_vdpa_set_map`` before :data:`PER_ASID_MR` (6.1):
        ``mlx5_vdpa_handle_set_map`` -- with a data MR (``mr->initialized``)
        ``mlx5_vdpa_change_map``: ``mlx5_vdpa_destroy_mr_asid(asid)`` (the data MR if
        the data group is on ``asid``; the CVQ iotlb pruned if the CVQ group is) then
        ``mlx5_vdpa_create_mr(iotlb, asid)``; without one, ``create_mr`` alone:
        ``_mlx5_vdpa_create_dvq_mr`` (a user MR from the whole IOTLB if the data
        group is on ``asid`` and no MR exists) and ``_mlx5_vdpa_create_cvq_mr``
        (``dup_iotlb`` into the CVQ iotlb -- appended, not pruned first -- if the
        CVQ group is on ``asid``).  An empty IOTLB makes a user MR that translates
        nothing (``create_user_mr`` with no entry: what the firmware does with it is
        not in the source).

        >>> import iotlb
        >>> old = Mlx5(kernel="6.1"); t = iotlb.IOTLB(); t.map(0, 0xfff, 0x3000)
        >>> old.set_map(1, t); old.mr_kind(0), old.mr_kind(1), len(old.cvq_iotlb)
        ('dma', None, 2)
        """
        g2a = self._group2asid
        src = _as_iotlb(src)
        if self._mr[DATAVQ_GROUP] is not None:            # change_map
            if g2a[DATAVQ_GROUP] == asid:
                self._mr[DATAVQ_GROUP] = None
            if g2a[CVQ_GROUP] == asid:
                self._cvq.unmap()                           # prune_iotlb
        if g2a[DATAVQ_GROUP] == asid and self._mr[DATAVQ_GROUP] is None:
            tlb = _IOTLB()
            tlb.add_all(src)                                # create_user_mr
            self._mr[DATAVQ_GROUP] = ("user", tlb)
        if g2a[CVQ_GROUP] == asid:
            self._cvq.add_all(src)                          # dup_iotlb, no prune

    def reset_map(self, asid: int) -> None:
        """``mlx5_vdpa_reset_map`` → ``mlx5_vdpa_reset_mr``: ``asid >= 2`` is EINVAL;
        drop ``mr[asid]``; for AS 0 with ``umem_uid_0`` create the DMA MR (+ CVQ
        identity if the CVQ is on AS 0), otherwise ``update_cvq_iotlb(NULL, asid)``
        (CVQ identity if the CVQ is on ``asid``).

        >>> import iotlb
        >>> dev = Mlx5(); t = iotlb.IOTLB(); t.map(0, 0xfff, 0)
        >>> dev.set_map(1, t); dev.reset_map(1); dev.mr_kind(1) is None
        True
        """
        self._check_op_asid("reset_map", asid)
        self._update_mr(None, asid)
        if asid == 0 and self.umem_uid_0:
            self._create_dma_mr()
        else:
            self._update_cvq_iotlb(_DUP_NULL, asid)

    # ------------------------------------------------------------------ reset
    def compat_reset(self, flags: int) -> None:
        """``mlx5_vdpa_compat_reset(flags)``: tear down vqs; with CLEAN_MAP drop every
        MR and prune the CVQ iotlb; clear status; every group back to AS 0; with
        CLEAN_MAP and ``umem_uid_0`` create the DMA MR for AS 0 (CVQ iotlb identity).

        >>> import iotlb
        >>> dev = Mlx5(umem_uid_0=False); t = iotlb.IOTLB(); t.map(0, 0xfff, 0)
        >>> dev.set_map(0, t); dev.compat_reset(1); dev.mr_kind(0), len(dev.cvq_iotlb)
        (None, 0)
        """
        if flags & VDPA_RESET_F_CLEAN_MAP:
            self._clean_mrs()
        self._status = 0
        self.suspended = False
        self._group2asid = [0] * self.ngroups      # init_group_to_asid_map
        self.generation += 1
        if flags & VDPA_RESET_F_CLEAN_MAP and self.umem_uid_0:
            self._create_dma_mr()

    def reset(self) -> None:
        """``mlx5_vdpa_reset`` = ``compat_reset(0)``: MRs and CVQ iotlb kept,
        group2asid reset.  Before :data:`RESET_MAP` (6.1) the reset always drops the
        MRs and the CVQ iotlb and re-creates the DMA MR (``mlx5_vdpa_destroy_mr``,
        ``mlx5_vdpa_create_mr(mvdev, NULL, 0)``): a CLEAN_MAP reset.

        >>> dev = Mlx5(); dev.set_group_asid(1, 1); dev.reset(); dev.group_asid(1)
        0
        >>> import iotlb
        >>> old = Mlx5(kernel="6.1"); t = iotlb.IOTLB(); t.map(0, 0xfff, 0)
        >>> old.set_map(0, t); old.reset(); old.mr_kind(0)
        'dma'
        """
        if self.kernel not in RESET_MAP:
            Mlx5.compat_reset(self, VDPA_RESET_F_CLEAN_MAP)
        else:
            self.compat_reset(0)

    # ------------------------------------------------------------------ groups
    def _is_ctrl_vq(self, vq: int) -> bool:
        return vq == self.cvq_index

    def get_vq_group(self, vq: int) -> int:
        """``mlx5_vdpa_get_vq_group``: the CVQ is group 1, data vqs group 0.

        >>> [Mlx5().get_vq_group(vq) for vq in range(3)]
        [0, 0, 1]
        """
        self._check_vq(vq)
        return CVQ_GROUP if self._is_ctrl_vq(vq) else DATAVQ_GROUP

    def get_vq_desc_group(self, vq: int) -> int:
        """``mlx5_vdpa_get_vq_desc_group``: CVQ → group 1, data vqs → group 2.

        >>> [Mlx5().get_vq_desc_group(vq) for vq in range(3)]
        [2, 2, 1]
        """
        self._check_vq(vq)
        return CVQ_GROUP if self._is_ctrl_vq(vq) else DATAVQ_DESC_GROUP

    def set_group_asid(self, group: int, asid: int) -> None:
        """``mlx5_set_group_asid``: record ``group2asid[group] = asid``; for the CVQ
        group, if ``mr[asid]`` exists, copy its IOTLB into the CVQ iotlb.  The driver
        checks neither bound (it lost its checks with "vhost: move vdpa group bound
        check to vhost_vdpa", v7.0, stable 6.12.75 and 6.1.191): vhost-vdpa refuses
        ``group >= ngroups`` or ``asid >= nas`` with EINVAL before calling, so a direct
        call outside them is a ValueError here (an out-of-bounds write there).

        >>> import iotlb
        >>> dev = Mlx5(); t = iotlb.IOTLB(); t.map(0, 0xfff, 0x2000)
        >>> dev.set_map(1, t); dev.set_group_asid(1, 1); [hex(m.addr) for m in dev.cvq_iotlb]
        ['0x2000']
        """
        if type(group) is not int or group < 0:
            raise TypeError(f"set_group_asid: group must be a non-negative int, got {group!r}")
        if group >= self.ngroups or type(asid) is not int or not 0 <= asid < self.nas:
            raise ValueError(f"set_group_asid: group {group!r} / asid {asid!r} outside "
                             f"ngroups {self.ngroups} / nas {self.nas} (vhost-vdpa never "
                             "passes them)")
        self._group2asid[group] = asid
        if not self._per_asid:
            return                      # 6.1: mlx5_set_group_asid records it, no more
        mr = self._mr[asid]
        if group == CVQ_GROUP and mr is not None:
            self._update_cvq_iotlb(mr[_TLB], asid)

    def group_asid(self, group: int) -> int:
        """``group2asid[group]``.

        >>> Mlx5().group_asid(2)
        0
        """
        self._check_group(group)
        return self._group2asid[group]

    # ------------------------------------------------------------------ misc ops
    def suspend(self) -> None:
        """``mlx5_vdpa_suspend``: suspend every vq (``suspended = True``).

        >>> dev = Mlx5(); dev.suspend(); dev.suspended
        True
        """
        self.suspended = True

    def resume(self) -> None:
        """``mlx5_vdpa_resume``: ``suspended = False``.

        >>> dev = Mlx5(); dev.suspend(); dev.resume(); dev.suspended
        False
        """
        self.suspended = False

    # ------------------------------------------------------------------ observation
    def device_iotlb(self, asid: int) -> iotlb.IOTLB:
        """What ``mr[asid]`` translates: empty (no MR), identity (DMA MR) or the user
        MR's copy of the IOTLB it was built from.  On 6.1 (one data MR) an AS that
        only the CVQ group is bound to translates through ``cvq.iotlb``.

        >>> len(Mlx5().device_iotlb(0)), len(Mlx5().device_iotlb(1))
        (2, 0)
        """
        self._check_asid(asid)
        mr = self._mr_of(asid)
        if mr is None and not self._per_asid \
                and self._group2asid[DATAVQ_GROUP] != asid \
                and self._group2asid[CVQ_GROUP] == asid:
            # 6.1: no MR per AS; an AS only the CVQ group is bound to is translated by
            # the software CVQ through cvq.iotlb (mlx5_vdpa_kick_vq -> vringh)
            return self._cvq.copy()
        return iotlb.IOTLB() if mr is None else mr[_TLB].copy()

    def mr_kind(self, asid: int) -> Optional[str]:
        """``None`` (no MR), ``"dma"`` or ``"user"``.

        >>> Mlx5().mr_kind(0)
        'dma'
        """
        self._check_asid(asid)
        mr = self._mr_of(asid)
        return None if mr is None else mr[_KIND]

    @property
    def cvq_iotlb(self) -> iotlb.IOTLB:
        """A snapshot of ``cvq.iotlb``, what the software CVQ translates through.

        >>> len(Mlx5(umem_uid_0=False).cvq_iotlb)
        0
        """
        return self._cvq.copy()

