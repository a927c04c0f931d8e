#!/usr/bin/env python3
"""Generate the conformance corpus: traces for ``iotlb conform`` (real kernel vs model).

Run from the repository root::

    python tests/corpus/make_corpus.py            # rewrites tests/corpus/*.jsonl,
                                                  # tests/corpus/scenarios/*.jsonl and
                                                  # tests/corpus/README.md
    python tests/corpus/make_corpus.py --out DIR  # the same, somewhere else
    python tests/corpus/make_corpus.py --check    # only validate, write nothing

Deterministic: the same sources give byte-identical files (no clock, no randomness
other than the scenario library's own seeded generator).

Every trace is run by the conformance tool in the four ``vdpa_sim_net`` module
configurations (``batch_mapping`` 0/1 x ``use_va`` 0/1) on Debian 6.12.118 and 7.2.13,
and through the model in the same four configurations.  A trace therefore does not say
what the kernel answers (expectations are recorded from the real kernel later); its
first line, a ``meta`` op, names the rules of ``docs/kernel-semantics.md`` (section
numbers) and of the ERRATA block of ``/work/shared/docs/kernel-semantics.md`` that it
checks, and its comments say what each configuration should answer according to the
kernel sources (``drivers/vhost/{vdpa,vhost,iotlb}.c``,
``drivers/vdpa/vdpa_sim/vdpa_sim.c`` of both versions).

Constraints the runner imposes (checked here, see :func:`validate`):

* user addresses only in ``[0x100000000000, 0x200000000000)``;
* at most 64 MiB of user memory per trace; at most 8 MiB pinned unless a ``memlock``
  op raised the limit first (then at most 64 MiB);
* at most 2,500 ops per trace, about 15,000 in the corpus;
* a trace starts with ``meta``, then ``open``, ``set_owner`` and the backend-feature
  setup (except traces about what happens without them) and ends with ``release``.

Hand-written traces declare their memory with ``mmap`` ops (so ``iotlb conform
--record`` can write each mapping's physical placement, and the model splits a PA-mode
UPDATE into the same physically contiguous runs).  The scenario recordings under
``scenarios/`` have no ``mmap`` op: the runner maps their memory implicitly.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import sys
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from iotlb import trace as T  # noqa: E402

U64 = (1 << 64) - 1
H = 1 << 63
PG = 0x1000
KiB, MiB = 1 << 10, 1 << 20

#: the user-address window every trace must stay in
WIN_LO, WIN_HI = 0x1000_0000_0000, 0x2000_0000_0000
#: where hand-written traces put their memory
U = 0x1000_0000_0000

MAX_OPS_PER_TRACE = 2500
MAX_MAPPED = 64 * MiB
DEFAULT_MEMLOCK_PAGES = 2048          # the guest's RLIMIT_MEMLOCK: 8 MiB
RAISED_PIN_LIMIT_PAGES = 64 * MiB // PG

# backend-feature sets (names from iotlb/trace.py FEATURE_NAMES)
QEMU = ["IOTLB_MSG_V2", "IOTLB_BATCH", "IOTLB_ASID", "SUSPEND"]
ASIDF = ["IOTLB_MSG_V2", "IOTLB_BATCH", "IOTLB_ASID"]
NOASID = ["IOTLB_MSG_V2", "IOTLB_BATCH"]
PERSIST = ASIDF + ["IOTLB_PERSIST"]
#: what vdpa_sim offers (vhost-vdpa: MSG_V2|BATCH|ASID, SUSPEND, RESUME, PERSIST
#: because of reset_map; the parent's get_backend_features: ENABLE_AFTER_DRIVER_OK)
OFFERED = 0x17E

ACK_DRIVER = ["ACKNOWLEDGE", "DRIVER"]
FEAT_OK = ["ACKNOWLEDGE", "DRIVER", "FEATURES_OK"]
DRIVER_OK = ["ACKNOWLEDGE", "DRIVER", "FEATURES_OK", "DRIVER_OK"]

# ============================================================================ rules
# Every rule a trace can name.  Keys are short ids used below; values are the text
# written into the meta line (section numbers of docs/kernel-semantics.md; "ERRATA"
# = the block at the top of /work/shared/docs/kernel-semantics.md).
RULES: Dict[str, str] = {
    # open / owner
    "open-ebusy": "§4.3 vhost_vdpa_open: EBUSY while the device is already open (single opener)",
    "owner-twice": "vhost_dev_set_owner: a second VHOST_SET_OWNER -> EBUSY",
    "msg-no-owner": "§3.3 step 1: an IOTLB message before VHOST_SET_OWNER -> handler EPERM, write() EFAULT",
    "ioctl-no-owner": "vhost_dev_ioctl: vring ioctls (GET_VRING_GROUP, SET_GROUP_ASID) need the owner (EPERM); "
                      "vhost-vdpa's own ioctls (features, status, GET_*, SUSPEND/RESUME) do not",
    "release-reopen": "§4.3 release: every AS removed, pins dropped, owner and acked features gone; reopen starts clean",
    # backend features
    "feat-get": "§3.2 GET_BACKEND_FEATURES: vdpa_sim offers MSG_V2|BATCH|ASID|SUSPEND|RESUME|"
                "ENABLE_AFTER_DRIVER_OK|IOTLB_PERSIST (0x17e), whatever was acked",
    "feat-unknown": "§3.2 check 1: a bit outside the known set (bit 0, bits >= 9) -> EOPNOTSUPP",
    "feat-desc-asid": "§3.2 check 3: DESC_ASID without IOTLB_ASID -> EINVAL; DESC_ASID without "
                      "get_vq_desc_group (vdpa_sim) -> EOPNOTSUPP",
    "feat-order": "§3.2: the checks run in order (unknown bits, SUSPEND/RESUME ops, DESC_ASID, PERSIST)",
    "feat-replace": "§3.2 step 5: SET_BACKEND_FEATURES replaces the acked set at any time; a refused call keeps "
                    "the previous one",
    "feat-zeroed": "§3.2: acked backend features are zeroed at open and release",
    "feat-any": "§3.2: ENABLE_AFTER_DRIVER_OK, SUSPEND, RESUME, IOTLB_PERSIST accepted when offered; 0 accepted",
    # wire format
    "wire-short": "§2.6 steps 1/3: a write shorter than the type, the v2 asid or the 32-byte body -> EINVAL "
                  "(handler not reached)",
    "wire-ret72": "§2.6 step 7: success returns 72 even for a 40-byte write; bytes past 40 are never read",
    "wire-outer": "§2.6 step 2: outer type other than VHOST_IOTLB_MSG(1)/MSG_V2(2) -> EINVAL",
    "wire-v1v2": "§2.6 step 2: v1 and v2 messages accepted whether or not IOTLB_MSG_V2 is acked",
    "wire-asid": "§2.6 step 2: the v2 asid is ignored (AS 0) unless IOTLB_ASID is acked; a v1 message is "
                 "always AS 0 (its bytes 4..7 are a hole)",
    "wire-inner": "§3.3 step 4: inner type MISS(1), ACCESS_FAIL(4), 0 or > 6 -> handler EINVAL (after the AS "
                  "lookup)",
    "wire-efault": "§2.6 step 6: every handler error becomes EFAULT at write()",
    # size 0
    "size0-update": "§2.6 step 4: a size-0 UPDATE -> EINVAL at write() (handler not reached, no AS created)",
    "size0-inv-0": "ERRATA §2.6 rule 4 (v6.6+): a size-0 INVALIDATE reaches the handler; at iova 0 it unmaps "
                   "[0, 2^64-1], the whole AS",
    "size0-inv-gt0": "ERRATA §2.6 rule 4 (v6.6+): a size-0 INVALIDATE at iova > 0 queries the wrapped [iova, "
                     "iova-1]: only an entry containing both iova-1 and iova is removed",
    "size0-batch": "§2.6 step 4: BATCH_BEGIN/END carry size 0 and are accepted",
    # iova range / wrap
    "range-get": "§3.1 / §3.4 steps 1,4: GET_IOVA_RANGE; vdpa_sim's range is [0, 2^64-1]",
    "range-wrap": "§3.4 step 3: iova + size - 1 must not pass 2^64-1 (iova 1 + size 2^64-1 passes, iova 2 fails) "
                  "-> EINVAL",
    "range-top": "§3.4: the last page [2^64-4096, 2^64-1] and the last byte are mappable",
    "pa-npages0": "§3.4/§5.1 PA: size > ULONG_MAX - iova page offset, or PFN_UP(...) == 0 -> EINVAL; VA walks "
                  "every VMA above uaddr and fails with EINVAL when none is left",
    "inv-wrap": "§3.5: INVALIDATE has no range or overflow check; a wrapped [start > last] query matches only "
                "entries spanning both bounds",
    # overlap / entries
    "eexist": "§3.4 step 5: an UPDATE overlapping an entry by one byte -> EEXIST, tested on the caller's "
              "unaligned [iova, iova+size-1]",
    "page-expand": "§3.4 / §5.1: PA entries cover whole pages (byte-disjoint UPDATEs sharing a page conflict); "
                   "VA entries keep the caller's exact bytes",
    "uaddr-offset": "§3.4: PA pins PFN_UP(size + (iova & ~PAGE_MASK)) pages from uaddr & PAGE_MASK (the page "
                    "offset of iova counts, not of uaddr)",
    "inv-whole": "§1.4 / §3.5: INVALIDATE removes every entry overlapping [iova, iova+size-1] whole, never "
                 "split; a range over a gap is a no-op",
    "inv-multi": "§1.3 / §3.5: one INVALIDATE query overlapping several entries removes them all",
    "full-space": "§1.2 step 2 / §6.2: [0, 2^64-1] cannot be one UPDATE (size is a u64): size 2^64-1 from 0 "
                  "stops at 2^64-2; QEMU sends the full space as two halves of 2^63",
    "perm": "§3.4 step 6: perm is not validated (0, 4, 0xff accepted and kept); PA pins with FOLL_WRITE iff "
            "perm & WO",
    # pins
    "pin-count": "§5.1 / §5.4: PA mode charges pinned_vm (VmPin) the pages of every entry",
    "pin-twice": "§5.4: the same user page mapped at two iovas or in two ASes is pinned (and counted) twice",
    "pin-unpin-inv": "§5.2: INVALIDATE unpins exactly the removed entries (all their pages)",
    "pin-release": "§5.4: release unpins everything: VmPin back to its value before the first UPDATE",
    "pin-runs": "§5.1 step 5: PA: one entry (one dma_map) per physically contiguous run of pinned pages",
    "memlock": "§5.1 step 4: RLIMIT_MEMLOCK: npages + pinned_vm > limit -> ENOMEM before pinning (PA only; "
               "mm-wide, across ASes; no CAP_IPC_LOCK exemption)",
    "va-nopin": "§5.3: VA mode pins nothing (VmPin stays 0; RLIMIT_MEMLOCK irrelevant)",
    "va-anon": "§5.3: VA mode silently skips non-shared-file VMAs (anonymous): the UPDATE succeeds, no entry",
    "va-vma": "§5.3: VA mode makes one entry per shared-file VMA piece; find_vma absorbs a hole before the next "
              "VMA into that piece",
    "pa-unmapped": "§5.1 step 5: PA: pin_user_pages of unmapped memory -> the gup error (EFAULT) on the first "
                   "page, ENOMEM after a partial pin; nothing stays pinned",
    "munmap": "§5.1/§5.3: munmap of mapped user memory drops neither the pins (PA) nor the entries",
    "unpin-failed": "§5.1 step 7: a failed UPDATE leaves no entry and no pin",
    # entry limit
    "limit-2048": "ERRATA §1.2/§3.1: per-AS limit max_iotlb_entries = 2048 without RETIRE: the 2049th entry -> "
                  "ENOSPC (write EFAULT); freeing one entry makes room again",
    "limit-per-as": "ERRATA §1.2/§3.1: the 2048-entry limit is per address space",
    # batching
    "batch": "§3.6: BATCH_BEGIN/BATCH_END; set_map parents are programmed once at BATCH_END, dma_map parents "
             "per chunk",
    "batch-nested": "§3.3 step 4: BATCH_BEGIN again on the same asid while open: no-op; nesting not counted",
    "batch-end-alone": "§3.3 step 4: BATCH_END with no open batch: accepted if the AS exists (no set_map), "
                       "EINVAL if it does not",
    "batch-asid": "§3.3 step 3 / §3.6: while a batch is open any message for another asid -> EINVAL (after "
                  "find_alloc_as created that AS)",
    "batch-reset": "§3.6: in_batch survives SET_STATUS(0); only open/release clear it",
    "batch-v1": "§2.6: v1 BATCH_BEGIN/END (asid 0) work like v2",
    # ASIDs
    "as-lazy": "§3.7: no AS after open; UPDATE and BATCH_BEGIN create one (even when the UPDATE then fails)",
    "as-missing": "§3.7: INVALIDATE / BATCH_END / other types on an AS that does not exist -> EINVAL",
    "as-nas": "§3.3 step 2 / §3.7: asid >= nas (vdpa_sim_net: 2) -> EINVAL",
    "as-independent": "§3.7: ASes are independent of SET_GROUP_ASID and are only removed at release",
    # groups
    "group-bounds": "ERRATA SET_GROUP_ASID (6.12.75+): index >= nvqs -> ENOBUFS, then group >= ngroups or "
                    "asid >= nas -> EINVAL",
    "group-busy": "ERRATA SET_GROUP_ASID: DRIVER_OK set -> EBUSY on 7.2 (after the bound checks); accepted on "
                  "6.12",
    "vring-group": "§3.7 GET_VRING_GROUP: vq >= nvqs -> ENOBUFS; vdpa_sim_net: vq 0,1 group 0, CVQ vq 2 group 1",
    "get-nums": "GET_AS_NUM / GET_GROUP_NUM / GET_VQS_COUNT (vdpa_sim_net: 2 / 2 / 3)",
    # status / reset
    "status": "§4.3 SET_STATUS: a nonzero status that clears bits -> EINVAL; GET_STATUS returns the parent's",
    "reset-keeps-vhost": "§4.3 / §4.5: SET_STATUS(0) never touches the vhost IOTLB or the pins: a re-UPDATE at "
                         "the same iova -> EEXIST, VmPin unchanged",
    "reset-flags": "§4.3: SET_STATUS(0) -> compat_reset(CLEAN_MAP) unless IOTLB_PERSIST is acked (then reset)",
    "reset-device": "§4.4 / §4.5: after a CLEAN_MAP reset vdpa_sim's AS is identity (pt); its first dma_unmap "
                    "empties it; set_map parents get set_map on INVALIDATE",
    "release-reset": "§4.3 release: reset (CLEAN_MAP unless PERSIST) then remove_as (+ reset_map) for every AS",
    # suspend / resume
    "suspend-noop": "ERRATA (v6.7+): SUSPEND/RESUME with DRIVER_OK clear return 0 without calling the parent",
    "suspend-call": "SUSPEND/RESUME with DRIVER_OK set call the parent; the SUSPEND/RESUME backend features "
                    "need not be acked",
    "suspend-maps": "SUSPEND does not stop IOTLB messages",
    # QEMU
    "qemu": "§6 / ERRATA: QEMU-like sequences (10.2 registers its listener at SET_OWNER, never acks "
            "IOTLB_PERSIST, probes CVQ isolation ending in SET_STATUS(0))",
}


# ============================================================================ builder
def hx(v: int) -> str:
    return hex(v)


def raw_msg(itype: int, iova: int = 0, size: int = 0, uaddr: int = 0, perm: int = 0, *,
            outer: int = 2, hole: int = 0, length: int = 72) -> str:
    """Hex of a raw write: ``<u32 outer type><u32 asid-or-hole><iova><size><uaddr><perm><type>``,
    zero padded / truncated to ``length`` bytes."""
    data = struct.pack("<IIQQQBB", outer, hole, iova, size, uaddr, perm, itype)
    data = data + bytes(max(0, length - len(data)))
    return data[:length].hex()


class Trace:
    def __init__(self, name: str, rules: List[str], comment: str) -> None:
        for r in rules:
            if r not in RULES:
                raise KeyError(f"{name}: unknown rule {r!r}")
        self.name = name
        self.rule_ids = list(rules)
        self.ops: List[dict] = [{"op": "meta", "rules": [RULES[r] for r in rules],
                                 "comment": comment}]

    # ---- generic
    def add(self, op: str, c: Optional[str] = None, **fields) -> "Trace":
        d = {"op": op}
        for k, v in fields.items():
            if v is None:
                continue
            if k in ("iova", "size", "uaddr") and isinstance(v, int):
                v = hx(v)
            d[k] = v
        if c:
            d["comment"] = c
        self.ops.append(d)
        return self

    # ---- device node / ioctls
    def open(self, c=None):
        return self.add("open", c)

    def release(self, c=None):
        return self.add("release", c)

    def finish(self) -> "Trace":
        """A trace that changed RLIMIT_MEMLOCK puts the guest default (2048 pages) back
        right before its final release."""
        if any(op["op"] == "memlock" for op in self.ops):
            last = self.ops[-1]
            if last["op"] == "release" and not (
                    self.ops[-2]["op"] == "memlock" and self.ops[-2].get("pages") == DEFAULT_MEMLOCK_PAGES):
                self.ops.insert(len(self.ops) - 1, {
                    "op": "memlock", "pages": DEFAULT_MEMLOCK_PAGES,
                    "comment": "back to the guest default (8 MiB)"})
        return self

    def owner(self, c=None):
        return self.add("set_owner", c)

    def get_features(self, c=None):
        return self.add("get_backend_features", c)

    def features(self, feats, c=None):
        return self.add("set_backend_features", c, features=feats)

    def setup(self, feats=ASIDF, mem=(), c=None):
        """open, SET_OWNER, GET/SET_BACKEND_FEATURES, then the declared memory."""
        self.open(c).owner().get_features()
        if feats is not None:
            self.features(feats)
        for m in mem:
            self.mmap(*m)
        return self

    def status(self, st, c=None):
        return self.add("set_status", c, status=st)

    def get_status(self, c=None):
        return self.add("get_status", c)

    def group_asid(self, group, asid, c=None):
        return self.add("set_group_asid", c, group=group, asid=asid)

    def vring_group(self, vq, c=None):
        return self.add("get_vring_group", c, vq=vq)

    def suspend(self, c=None):
        return self.add("suspend", c)

    def resume(self, c=None):
        return self.add("resume", c)

    def gets(self, c=None):
        self.add("get_iova_range", c).add("get_as_num").add("get_group_num").add("get_vqs_count")
        return self

    # ---- messages
    def update(self, iova, size, uaddr, perm=None, asid=None, version=None, c=None):
        return self.add("update", c, iova=iova, size=size, uaddr=uaddr,
                        perm=perm, asid=asid, version=version)

    def inv(self, iova, size, asid=None, version=None, c=None):
        return self.add("invalidate", c, iova=iova, size=size, asid=asid, version=version)

    def begin(self, asid=None, version=None, c=None):
        return self.add("batch_begin", c, asid=asid, version=version)

    def end(self, asid=None, version=None, c=None):
        return self.add("batch_end", c, asid=asid, version=version)

    def write(self, hexdata: str, c=None):
        return self.add("write", c, hex=hexdata)

    # ---- memory
    def mmap(self, uaddr, size, kind="memfd", c=None):
        return self.add("mmap", c, uaddr=uaddr, size=size, kind=kind)

    def munmap(self, uaddr, size, c=None):
        return self.add("munmap", c, uaddr=uaddr, size=size)

    def memlock(self, pages, c=None):
        return self.add("memlock", c, pages=pages)


TRACES: List[Callable[[], Trace]] = []


def trace(fn: Callable[[], Trace]) -> Callable[[], Trace]:
    TRACES.append(fn)
    return fn


# ============================================================================ traces
# ---------------------------------------------------------------- open / owner
@trace
def t_open_ebusy():
    t = Trace("open_ebusy", ["open-ebusy", "release-reopen"],
              "A second open while the fd is open -> EBUSY (the first fd stays usable); after "
              "release the node opens again.")
    t.open().open(c="second open while open: EBUSY")
    t.owner(c="the first fd is still fine").get_features().features(ASIDF)
    t.mmap(U, PG)
    t.update(0x1000, PG, U, c="ok")
    t.release()
    t.open(c="reopen after release: ok").owner().open(c="EBUSY again").release()
    t.open(c="open + release without SET_OWNER").release()
    return t


@trace
def t_owner_twice():
    t = Trace("owner_twice", ["owner-twice", "ioctl-no-owner"],
              "VHOST_SET_OWNER twice on the same fd -> EBUSY; the owner stays and messages keep working.")
    t.open().owner().owner(c="EBUSY").get_features().features(ASIDF).mmap(U, PG)
    t.update(0x1000, PG, U, c="ok: still the owner")
    t.owner(c="EBUSY again")
    t.release().open().owner(c="ok after reopen: release dropped the owner").release()
    return t


@trace
def t_msgs_before_owner():
    t = Trace("msgs_before_owner", ["msg-no-owner", "size0-update", "wire-short", "wire-efault",
                                    "as-lazy"],
              "Every IOTLB message before SET_OWNER fails in the handler with EPERM (write EFAULT); "
              "write-level checks (size-0 UPDATE, short writes) still answer EINVAL first. No AS is "
              "created by the refused UPDATE/BATCH_BEGIN (check_owner runs before find_alloc_as).")
    t.open().get_features(c="works without an owner").features(ASIDF, c="works without an owner")
    t.mmap(U, 2 * PG)
    t.update(0x1000, PG, U, c="EFAULT (handler EPERM)")
    t.update(0x1000, PG, U, asid=1, c="EFAULT (handler EPERM)")
    t.inv(0x1000, PG, c="EFAULT (handler EPERM)")
    t.begin(c="EFAULT (handler EPERM)")
    t.end(c="EFAULT (handler EPERM)")
    t.update(0x1000, 0, U, c="size 0: EINVAL from vhost_chr_write_iter, handler not reached")
    t.write(raw_msg(2, 0x1000, PG, U, 3, length=39), c="39 bytes: EINVAL before the handler")
    t.write(raw_msg(1, 0x1000, PG, U, 3), c="inner MISS: EFAULT (handler EPERM, first check)")
    t.inv(0, 0, c="size-0 INVALIDATE reaches the handler since v6.6: EFAULT (EPERM)")
    t.owner()
    t.inv(0x1000, PG, c="EFAULT (EINVAL): no AS 0 yet -- the refused UPDATE created none")
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL): no AS 1 either")
    t.update(0x1000, PG, U, c="ok now")
    t.update(0x3000, PG, U + PG, asid=1, c="ok now, AS 1")
    t.release()
    return t


@trace
def t_ioctls_before_owner():
    t = Trace("ioctls_before_owner", ["ioctl-no-owner", "get-nums", "range-get", "feat-get", "status",
                                      "suspend-noop", "vring-group", "group-bounds"],
              "Which ioctls need the owner: vhost-vdpa's own ones (GET/SET_BACKEND_FEATURES, "
              "GET/SET_STATUS, GET_IOVA_RANGE, GET_AS_NUM, GET_GROUP_NUM, GET_VQS_COUNT, SUSPEND, "
              "RESUME) work without one; the vring ioctls (GET_VRING_GROUP, SET_GROUP_ASID) go "
              "through vhost_dev_ioctl first and answer EPERM -- even for out-of-range arguments.")
    t.open()
    t.get_features(c="0x17e")
    t.features(ASIDF, c="ok without owner")
    t.gets(c="[0, 2^64-1]; then 2, 2, 3")
    t.get_status(c="0")
    t.status(ACK_DRIVER, c="ok without owner")
    t.get_status(c="3")
    t.suspend(c="0: DRIVER_OK clear, parent not called")
    t.resume(c="0: DRIVER_OK clear, parent not called")
    t.vring_group(2, c="EPERM: no owner")
    t.vring_group(7, c="EPERM (owner checked before the vq index)")
    t.group_asid(1, 1, c="EPERM: no owner")
    t.group_asid(9, 9, c="EPERM (owner checked before the bounds)")
    t.owner()
    t.vring_group(2, c="1")
    t.group_asid(1, 1, c="0")
    t.status(0)
    t.release()
    return t


# ---------------------------------------------------------------- backend features
@trace
def t_features_offered():
    t = Trace("features_offered", ["feat-get", "feat-any", "feat-replace", "get-nums", "range-get"],
              "GET_BACKEND_FEATURES returns what vdpa_sim offers (0x17e), never what was acked; every "
              "offered combination (and 0) is accepted.")
    t.open().owner()
    t.get_features(c="0x17e")
    t.features(0, c="ok")
    t.get_features(c="still 0x17e")
    t.features(OFFERED, c="every offered bit: ok")
    t.get_features(c="0x17e")
    t.features(["ENABLE_AFTER_DRIVER_OK"], c="ok (accepted without a parent check)")
    t.features(["SUSPEND", "RESUME"], c="ok")
    t.features(["IOTLB_PERSIST"], c="ok: vdpa_sim has reset_map")
    t.features(["IOTLB_MSG_V2"], c="ok")
    t.features(["IOTLB_ASID"], c="ok (no dependency on MSG_V2)")
    t.features(["IOTLB_BATCH"], c="ok")
    t.gets(c="[0, 2^64-1], 2, 2, 3")
    t.status(DRIVER_OK)
    t.get_features(c="0x17e after DRIVER_OK")
    t.features(QEMU, c="ok after DRIVER_OK too")
    t.status(0)
    t.release()
    t.open().get_features(c="0x17e on a fresh fd, before SET_OWNER").release()
    return t


@trace
def t_features_unknown():
    t = Trace("features_unknown", ["feat-unknown", "feat-replace", "as-missing", "wire-asid"],
              "Unknown backend-feature bits are refused with EOPNOTSUPP and the previous acked set "
              "stays: IOTLB_ASID acked before the refused calls still routes asid 1 to AS 1.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.features(0x1, c="bit 0 (unused): EOPNOTSUPP")
    t.features(0x200, c="bit 9: EOPNOTSUPP")
    t.features(1 << 63, c="bit 63: EOPNOTSUPP")
    t.features(U64, c="all bits: EOPNOTSUPP")
    t.features(["IOTLB_MSG_V2", 0x400], c="a good bit plus bit 10: EOPNOTSUPP")
    t.features(0x80000000, c="bit 31: EOPNOTSUPP")
    t.update(0x1000, PG, U, asid=1, c="IOTLB_ASID still acked: creates AS 1")
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL): AS 0 does not exist, the UPDATE went to AS 1")
    t.inv(0x1000, PG, asid=1, c="ok")
    t.release()
    return t


@trace
def t_features_desc_asid():
    t = Trace("features_desc_asid", ["feat-desc-asid", "feat-order", "feat-unknown", "feat-replace",
                                     "wire-asid"],
              "DESC_ASID: without IOTLB_ASID in the same request -> EINVAL; with it -> EOPNOTSUPP "
              "(vdpa_sim has no get_vq_desc_group). Unknown bits are checked first. A refused call "
              "keeps the previous set (here: without IOTLB_ASID, so asid 1 means AS 0).")
    t.setup(NOASID, mem=[(U, PG)])
    t.features(["DESC_ASID"], c="EINVAL")
    t.features(["DESC_ASID", "IOTLB_MSG_V2", "IOTLB_BATCH"], c="EINVAL")
    t.features(["DESC_ASID", "IOTLB_ASID"], c="EOPNOTSUPP (no get_vq_desc_group)")
    t.features(["DESC_ASID", 0x200], c="EOPNOTSUPP: the unknown-bit check runs before the DESC_ASID one")
    t.features(["DESC_ASID", "IOTLB_ASID", "IOTLB_PERSIST"], c="EOPNOTSUPP")
    t.update(0x1000, PG, U, asid=1, c="previous set (no ASID) kept: goes to AS 0")
    t.update(0x1000, PG, U, asid=0, c="EFAULT (EEXIST): same AS 0")
    t.inv(0x1000, PG, asid=1, c="ok: AS 0")
    t.release()
    return t


@trace
def t_features_replace_routing():
    t = Trace("features_replace_routing", ["feat-replace", "wire-asid", "as-independent"],
              "Re-acking backend features at any time changes how the v2 asid is read: with IOTLB_ASID "
              "asid 1 is AS 1, without it AS 0. Both ASes stay until release.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x10000, PG, U, asid=1, c="AS 1")
    t.update(0x10000, PG, U + PG, asid=0, c="AS 0: no conflict")
    t.features(NOASID, c="drop IOTLB_ASID")
    t.update(0x20000, PG, U + 2 * PG, asid=1, c="goes to AS 0")
    t.update(0x10000, PG, U + 3 * PG, asid=1, c="EFAULT (EEXIST): AS 0 has 0x10000")
    t.inv(0x10000, PG, asid=1, c="removes AS 0's 0x10000 (not AS 1's)")
    t.features(ASIDF, c="IOTLB_ASID again")
    t.update(0x10000, PG, U + 3 * PG, asid=1, c="EFAULT (EEXIST): AS 1 still holds 0x10000")
    t.update(0x20000, PG, U + 3 * PG, asid=1, c="ok: AS 1 has no 0x20000 (that went to AS 0)")
    t.update(0x20000, PG, U + 3 * PG, asid=0, c="EFAULT (EEXIST)")
    t.release(c="both ASes removed, VmPin 0")
    return t


@trace
def t_features_zeroed_on_release():
    t = Trace("features_zeroed_on_release", ["feat-zeroed", "wire-asid", "release-reopen"],
              "Acked backend features do not survive release: after reopen (no SET_BACKEND_FEATURES) the "
              "v2 asid is ignored again.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.update(0x1000, PG, U, asid=1, c="AS 1")
    t.release()
    t.open().owner()
    t.update(0x1000, PG, U, asid=1, c="features were zeroed: AS 0")
    t.update(0x1000, PG, U + PG, asid=0, c="EFAULT (EEXIST): same AS 0")
    t.inv(0x1000, PG, asid=1, c="ok (AS 0)")
    t.features(ASIDF)
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL): AS 1 does not exist on this fd")
    t.release()
    return t


# ---------------------------------------------------------------- wire format
@trace
def t_wire_short_writes():
    t = Trace("wire_short_writes", ["wire-short", "wire-ret72", "as-lazy"],
              "Write lengths: 0..39 bytes -> EINVAL (vhost_chr_write_iter, handler not reached); exactly "
              "40 bytes -> accepted, returns 72; 100 bytes -> returns 72 (the rest is never read). With "
              "IOTLB_ASID acked a v2 write needs 4 more bytes for the asid, still 40 in total.")
    t.setup(NOASID, mem=[(U, 8 * PG)])
    t.write("", c="0 bytes: EINVAL")
    t.write("02", c="1 byte: EINVAL")
    t.write("020000", c="3 bytes: EINVAL (no full type)")
    t.write("02000000", c="4 bytes (type only): EINVAL")
    t.write(raw_msg(2, 0x1000, PG, U, 3, length=8), c="8: EINVAL")
    t.write(raw_msg(2, 0x1000, PG, U, 3, length=39), c="39: EINVAL (body short by one)")
    t.write(raw_msg(1, 0x1000, PG, U, 3, outer=1, length=39), c="v1, 39: EINVAL")
    t.inv(0x1000, PG, c="EFAULT (EINVAL): no AS 0 -- none of the short writes reached the handler")
    t.write(raw_msg(2, 0x1000, PG, U, 3, length=40), c="40 bytes v2 UPDATE: returns 72")
    t.write(raw_msg(2, 0x3000, PG, U + PG, 3, outer=1, length=40), c="40 bytes v1 UPDATE: 72")
    t.write(raw_msg(2, 0x5000, PG, U + 2 * PG, 3, length=100), c="100 bytes: 72")
    t.write(raw_msg(2, 0x7000, PG, U + 3 * PG, 3) + "ff" * 28, c="72 + 28 bytes of 0xff: 72, tail ignored")
    t.update(0x1000, PG, U, c="EFAULT (EEXIST): the 40-byte write mapped it")
    t.features(ASIDF, c="now the v2 asid is read")
    t.write("0200000001", c="5 bytes: EINVAL (asid short)")
    t.write(raw_msg(2, 0x9000, PG, U + 4 * PG, 3, hole=1, length=8), c="type + asid only: EINVAL")
    t.write(raw_msg(2, 0x9000, PG, U + 4 * PG, 3, hole=1, length=39), c="39: EINVAL")
    t.write(raw_msg(2, 0x9000, PG, U + 4 * PG, 3, hole=1, length=40), c="40: 72, AS 1")
    t.inv(0x9000, PG, asid=1, c="ok: AS 1 exists")
    t.release()
    return t


@trace
def t_wire_outer_type():
    t = Trace("wire_outer_type", ["wire-outer", "as-lazy"],
              "The leading u32 must be VHOST_IOTLB_MSG (1) or VHOST_IOTLB_MSG_V2 (2); anything else -> "
              "EINVAL at write(), before the handler (no AS created).")
    t.setup(ASIDF, mem=[(U, PG)])
    for outer in (0, 3, 0x100, 0x80000000, 0xFFFFFFFF):
        t.write(raw_msg(2, 0x1000, PG, U, 3, outer=outer), c=f"outer type {outer:#x}: EINVAL")
    t.write(raw_msg(5, outer=0), c="outer 0 BATCH_BEGIN: EINVAL")
    t.inv(0x1000, PG, c="EFAULT (EINVAL): no AS 0 was created")
    t.write(raw_msg(2, 0x1000, PG, U, 3, outer=1), c="outer 1: ok")
    t.write(raw_msg(3, 0x1000, PG, outer=2), c="outer 2 INVALIDATE: ok")
    t.release()
    return t


@trace
def t_wire_inner_types():
    t = Trace("wire_inner_types", ["wire-inner", "as-missing", "wire-efault", "batch-asid"],
              "Inner types other than UPDATE/INVALIDATE/BATCH_BEGIN/BATCH_END: on a missing AS -> "
              "EINVAL (no iotlb); on an existing AS -> EINVAL (default case). Both EFAULT at write(). "
              "MISS/ACCESS_FAIL never create an AS. Size 0 is fine for them.")
    t.setup(ASIDF, mem=[(U, PG)])
    for it in (1, 4, 0, 7, 0xFF):
        t.write(raw_msg(it, 0x1000, PG, U, 3), c=f"inner type {it} on missing AS 0: EFAULT (EINVAL)")
    t.inv(0x1000, PG, c="EFAULT (EINVAL): still no AS 0")
    t.update(0x1000, PG, U, c="creates AS 0")
    for it in (1, 4, 0, 7, 0xFF):
        t.write(raw_msg(it, 0x1000, PG, U, 3), c=f"inner type {it}: EFAULT (EINVAL)")
    t.write(raw_msg(1, 0, 0, 0, 0), c="MISS with size 0: EFAULT (EINVAL), size check is UPDATE-only")
    t.write(raw_msg(4, 0, 0, 0, 0, hole=1), c="ACCESS_FAIL asid 1 (missing): EFAULT (EINVAL)")
    t.write(raw_msg(4, 0, 0, 0, 0, outer=1), c="v1 ACCESS_FAIL: EFAULT (EINVAL)")
    t.begin(1, c="batch on AS 1")
    t.write(raw_msg(1, 0x1000, PG, U, 3, hole=0), c="MISS asid 0 during an asid-1 batch: EFAULT (EINVAL)")
    t.end(1)
    t.update(0x1000, PG, U, c="EFAULT (EEXIST): the mapping was never touched")
    t.release()
    return t


@trace
def t_wire_v1_v2():
    t = Trace("wire_v1_v2", ["wire-v1v2", "wire-asid", "batch-v1", "wire-ret72"],
              "v1 (struct vhost_msg) and v2 messages are both accepted with no backend feature acked at "
              "all (IOTLB_MSG_V2 only selects the format of MISS messages vhost-vdpa never emits). v1 "
              "has no asid: AS 0.")
    t.setup([], mem=[(U, 8 * PG)])
    t.update(0x1000, PG, U, version=1, c="v1 UPDATE, nothing acked: 72")
    t.update(0x2000, PG, U + PG, c="v2 UPDATE, nothing acked: 72")
    t.update(0x1000, PG, U + 2 * PG, c="v2: EFAULT (EEXIST), same AS 0")
    t.update(0x2000, PG, U + 2 * PG, version=1, c="v1: EFAULT (EEXIST)")
    t.begin(version=1, c="v1 BATCH_BEGIN: 72")
    t.update(0x3000, PG, U + 2 * PG, version=1)
    t.update(0x4000, PG, U + 3 * PG)
    t.end(version=1, c="v1 BATCH_END: 72")
    t.inv(0x1000, PG, version=1, c="v1 INVALIDATE: 72")
    t.inv(0x2000, 0x3000, c="v2 INVALIDATE")
    t.update(0x1000, 4 * PG, U + 4 * PG, version=1, c="all free again: ok")
    t.features(["IOTLB_MSG_V2"])
    t.inv(0x1000, 4 * PG, version=1, c="v1 still accepted with MSG_V2 acked")
    t.release()
    return t


@trace
def t_wire_asid_not_acked():
    t = Trace("wire_asid_not_acked", ["wire-asid", "as-nas"],
              "Without IOTLB_ASID acked the v2 asid field is skipped: asid 1, 2 and 0xffffffff all mean "
              "AS 0 (no EINVAL for asid >= nas).")
    t.setup(NOASID, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U, asid=1, c="AS 0")
    t.update(0x1000, PG, U + PG, asid=0, c="EFAULT (EEXIST)")
    t.update(0x2000, PG, U + PG, asid=2, c="asid 2 >= nas but ignored: ok in AS 0")
    t.update(0x3000, PG, U + 2 * PG, asid=0xFFFFFFFF, c="ok in AS 0")
    t.begin(7, c="BATCH_BEGIN asid 7 -> AS 0")
    t.update(0x4000, PG, U + 3 * PG, asid=1, c="in the batch (all AS 0)")
    t.end(9, c="BATCH_END asid 9 -> AS 0: ok")
    t.inv(0x1000, 4 * PG, asid=5, c="removes all four from AS 0")
    t.update(0x1000, PG, U, c="ok again")
    t.release()
    return t


@trace
def t_wire_asid_acked():
    t = Trace("wire_asid_acked", ["wire-asid", "as-nas", "as-lazy", "pin-twice"],
              "With IOTLB_ASID acked the v2 asid selects the AS: the same iova in AS 0 and AS 1 does "
              "not conflict; asid >= 2 -> EINVAL; a v1 message (even with nonzero bytes 4..7, its hole) "
              "is AS 0.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U, asid=1, c="AS 1")
    t.update(0x1000, PG, U, asid=0, c="AS 0, same iova and page: ok (page pinned twice in PA)")
    t.update(0x2000, PG, U + PG, asid=2, c="EFAULT (EINVAL): asid 2 >= nas")
    t.update(0x2000, PG, U + PG, asid=0xFFFFFFFF, c="EFAULT (EINVAL)")
    t.write(raw_msg(2, 0x1000, PG, U + PG, 3, outer=1, hole=1), c="v1 with 1 in the hole: AS 0 -> EFAULT (EEXIST)")
    t.write(raw_msg(2, 0x2000, PG, U + PG, 3, outer=1, hole=1), c="v1 with 1 in the hole: ok in AS 0")
    t.inv(0x2000, PG, asid=1, c="AS 1 has nothing there: ok, no-op")
    t.update(0x2000, PG, U + 2 * PG, asid=0, c="EFAULT (EEXIST): the v1 write went to AS 0")
    t.inv(0x1000, 2 * PG, asid=0)
    t.update(0x1000, PG, U + 3 * PG, asid=1, c="EFAULT (EEXIST): AS 1 untouched")
    t.release()
    return t


# ---------------------------------------------------------------- size 0
@trace
def t_size0_update():
    t = Trace("size0_update", ["size0-update", "as-lazy", "size0-batch"],
              "A size-0 UPDATE is refused by vhost_chr_write_iter with EINVAL (handler EPERM/EINVAL "
              "never runs): v1 and v2, iova 0 and > 0, before and after SET_OWNER, inside a batch. It "
              "creates no AS.")
    t.open()
    t.update(0, 0, U, c="before SET_OWNER: EINVAL (not EFAULT)")
    t.owner().get_features().features(ASIDF).mmap(U, PG)
    t.update(0, 0, U, c="EINVAL")
    t.update(0x1000, 0, U, c="EINVAL")
    t.update(0x1000, 0, U, version=1, c="v1: EINVAL")
    t.update(0x1000, 0, U, asid=1, c="EINVAL, AS 1 not created")
    t.update(0x1000, 0, U, asid=5, c="EINVAL even for asid >= nas (never reaches the handler)")
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL): AS 1 does not exist")
    t.begin(0, c="BATCH_BEGIN (size 0 by nature): ok, creates AS 0")
    t.update(0x2000, 0, U, c="EINVAL inside the batch")
    t.update(0x2000, PG, U, c="ok")
    t.end(0)
    t.update(0x3000, 0, U, perm=0, c="EINVAL")
    t.release()
    return t


@trace
def t_size0_invalidate_iova0():
    t = Trace("size0_invalidate_iova0", ["size0-inv-0", "pin-unpin-inv", "range-top", "as-missing"],
              "Since v6.6 a size-0 INVALIDATE is accepted (returns 72) and at iova 0 unmaps [0, 2^64-1]: "
              "every entry of the AS, including the last page, is removed and unpinned; other ASes "
              "are untouched. On a missing AS it is EFAULT (EINVAL).")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.inv(0, 0, c="AS 0 missing: EFAULT (EINVAL)")
    t.update(0, PG, U, c="page 0")
    t.update(0x10000, 2 * PG, U + PG)
    t.update(H, PG, U + 3 * PG, c="at 2^63")
    t.update(U64 - 0xFFF, PG, U + 4 * PG, c="the last page")
    t.update(0x10000, PG, U + 5 * PG, asid=1, c="AS 1")
    t.inv(0, 0, c="size 0 at iova 0: 72; AS 0 emptied (VmPin -5 in PA)")
    t.update(0, PG, U, c="ok: gone")
    t.update(0x10000, 2 * PG, U + PG, c="ok: gone")
    t.update(H, PG, U + 3 * PG, c="ok: gone")
    t.update(U64 - 0xFFF, PG, U + 4 * PG, c="ok: gone")
    t.update(0x10000, PG, U + 6 * PG, asid=1, c="EFAULT (EEXIST): AS 1 untouched")
    t.inv(0, 0, asid=1, c="AS 1 emptied")
    t.inv(0, 0, version=1, c="v1 size-0 INVALIDATE at 0: AS 0 emptied")
    t.update(0x10000, PG, U + 6 * PG, asid=1, c="ok")
    t.update(0, PG, U, c="ok")
    t.release()
    return t


@trace
def t_size0_invalidate_gt0():
    t = Trace("size0_invalidate_gt0", ["size0-inv-gt0", "inv-wrap", "page-expand"],
              "A size-0 INVALIDATE at iova > 0 queries [iova, iova-1] (start > last): the interval tree "
              "returns only entries with start <= iova-1 and last >= iova, i.e. an entry containing "
              "both iova-1 and iova. An entry starting at iova, or ending at iova-1, stays. One-page "
              "entries only (a PA entry is one run).")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.update(0x10000, PG, U, c="A = [0x10000, 0x10fff]")
    t.update(0x20000, PG, U + PG, c="B = [0x20000, 0x20fff]")
    t.update(0x30000, PG, U + 2 * PG, c="C = [0x30000, 0x30fff]")
    t.inv(0x10000, 0, c="iova = A.start: A does not contain 0xffff -> nothing removed")
    t.update(0x10000, PG, U + 3 * PG, c="EFAULT (EEXIST): A still there")
    t.inv(0x21000, 0, c="iova = B.last + 1: B does not contain 0x21000 -> nothing removed")
    t.update(0x20000, PG, U + 3 * PG, c="EFAULT (EEXIST): B still there")
    t.inv(0x20800, 0, c="iova inside B: B contains 0x207ff and 0x20800 -> B removed")
    t.update(0x20000, PG, U + 3 * PG, c="ok: B was removed")
    t.inv(0x30001, 0, c="iova = C.start + 1: C removed")
    t.update(0x30000, PG, U + 4 * PG, c="ok")
    t.inv(0x50000, 0, c="nothing there: no-op, 72")
    t.inv(0x10000, 0, asid=1, c="AS 1 missing: EFAULT (EINVAL)")
    t.inv(U64, 0, c="iova 2^64-1, size 0: [2^64-1, 2^64-2] -> nothing spans it")
    t.update(0x10000, PG, U + 5 * PG, c="EFAULT (EEXIST): A survived everything")
    t.release()
    return t


@trace
def t_size0_invalidate_subpage_va():
    t = Trace("size0_invalidate_subpage", ["size0-inv-gt0", "page-expand"],
              "Sub-page entries and a size-0 INVALIDATE between them: UPDATE [0x1000, +0x800) and "
              "[0x1800, +0x800). PA: both become page [0x1000, 0x1fff] -> the second is EEXIST; VA: two "
              "exact entries. INVALIDATE(0x1800, 0) then: PA removes the page entry (it contains 0x17ff "
              "and 0x1800); VA removes nothing (no entry contains both).")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.update(0x1000, 0x800, U, c="PA: page entry; VA: [0x1000, 0x17ff]")
    t.update(0x1800, 0x800, U + 0x800, c="PA: EFAULT (EEXIST); VA: ok [0x1800, 0x1fff]")
    t.inv(0x1800, 0, c="PA: removes the page entry; VA: nothing")
    t.update(0x1000, 0x800, U, c="PA: ok; VA: EFAULT (EEXIST)")
    t.update(0x1800, 0x800, U + 0x800, c="PA: EFAULT (EEXIST); VA: EFAULT (EEXIST)")
    t.inv(0x1000, 0x1000)
    t.update(0x1000, PG, U, c="ok in both")
    t.release()
    return t


@trace
def t_size0_invalidate_batch():
    t = Trace("size0_invalidate_batch", ["size0-inv-0", "batch", "size0-batch"],
              "Size-0 INVALIDATE inside a batch: the entries go at once (dma_map parents: dma_unmap per "
              "entry); set_map parents see one set_map at BATCH_END.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.begin()
    t.update(0x1000, PG, U)
    t.update(0x3000, PG, U + PG)
    t.end()
    t.begin()
    t.inv(0, 0, c="whole AS, in a batch")
    t.update(0x1000, PG, U + 2 * PG, c="ok: already gone inside the batch")
    t.end(c="set_map parents: one set_map with the single new entry")
    t.update(0x3000, PG, U + 3 * PG, c="ok")
    t.release()
    return t


# ---------------------------------------------------------------- ranges and wrap
@trace
def t_range_top_and_wrap():
    t = Trace("range_top_and_wrap", ["range-get", "range-top", "range-wrap", "eexist", "inv-wrap"],
              "vdpa_sim's range is [0, 2^64-1]: the last page and the last byte are mappable; an UPDATE "
              "whose iova + size - 1 passes 2^64-1 -> EINVAL. iova 1 + size 2^64-1 and iova 0 + size "
              "2^64-1 pass the overflow check (EEXIST here, because the last page is mapped, so the map "
              "path is not reached). A wrapping INVALIDATE removes nothing unless an entry spans the "
              "wrapped bounds.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.add("get_iova_range", c="[0, 0xffffffffffffffff]")
    t.update(U64 - 0xFFF, PG, U, c="last page: ok")
    t.update(U64, 1, U + 0xFFF, c="last byte: EFAULT (EEXIST)")
    t.update(U64, 2, U + 0xFFF, c="iova 2^64-1 size 2: EFAULT (EINVAL) wrap")
    t.update(U64 - 0x1FFF, 0x3000, U + PG, c="3 pages from 2^64-0x2000: EFAULT (EINVAL) wrap")
    t.update(2, U64, U, c="iova 2 size 2^64-1: EFAULT (EINVAL) wrap")
    t.update(U64, U64, U, c="EFAULT (EINVAL) wrap")
    t.update(1, U64, U, c="iova 1 size 2^64-1: no wrap; overlaps the last page -> EFAULT (EEXIST)")
    t.update(0, U64, U, c="iova 0 size 2^64-1 = [0, 2^64-2]: overlaps -> EFAULT (EEXIST)")
    t.update(U64 - 0x1FFF, PG, U + PG, c="the page below the last: ok")
    t.inv(U64 - 0xFFF, 0x2000, c="wraps: [2^64-0x1000, 0xfff] -> removes nothing")
    t.update(U64 - 0xFFF, PG, U + 2 * PG, c="EFAULT (EEXIST): still mapped")
    t.inv(U64 - 0x1FFF, U64, c="[2^64-0x2000, 2^64-0x2002] wraps: both top pages span it? no -> nothing")
    t.update(U64 - 0x1FFF, PG, U + 2 * PG, c="EFAULT (EEXIST)")
    t.inv(U64, 1, c="the last byte: removes the last page")
    t.update(U64 - 0xFFF, PG, U + 2 * PG, c="ok")
    t.inv(U64 - 0x1FFF, 0x2000, c="[2^64-0x2000, 2^64-1], no wrap: both removed")
    t.update(U64 - 0x1FFF, 0x2000, U + 2 * PG, c="ok")
    t.release()
    return t


@trace
def t_range_wrap_straddle():
    t = Trace("range_wrap_straddle", ["inv-wrap", "inv-whole"],
              "A wrapped INVALIDATE query [start > last] matches an entry that contains both last and "
              "start (start <= last_q and last >= start_q): with A = [0x1000, 0x1fff] and B = [0x10000, "
              "0x10fff], INVALIDATE(0x1800, 2^64-0x7ff) = [0x1800, 0xfff] matches nothing, "
              "INVALIDATE(0x1800, 2^64-0x7fe) = [0x1800, 0x1000] removes A, INVALIDATE(0x10800, "
              "2^64-0x7fe) = [0x10800, 0x10000] removes B.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U, c="A")
    t.update(0x10000, PG, U + PG, c="B")
    t.inv(0x1800, U64 - 0x7FF, c="[0x1800, 0xfff]: A.start 0x1000 <= 0xfff? no -> nothing")
    t.update(0x1000, PG, U + 2 * PG, c="EFAULT (EEXIST)")
    t.inv(0x1800, U64 - 0x7FE, c="[0x1800, 0x1000]: A contains 0x1000..0x1800 -> A removed")
    t.update(0x1000, PG, U + 2 * PG, c="ok")
    t.inv(0x20000, U64 - 0x1FFF, c="[0x20000, 0x1dfff]: no entry spans it -> nothing")
    t.update(0x10000, PG, U + 3 * PG, c="EFAULT (EEXIST)")
    t.inv(0x10800, U64 - 0x7FE, c="[0x10800, 0x10000]: B removed")
    t.update(0x10000, PG, U + 3 * PG, c="ok")
    t.update(0x1000, PG, U + 2 * PG, c="EFAULT (EEXIST): A (re-mapped above) untouched")
    t.release()
    return t


@trace
def t_range_huge_update():
    t = Trace("range_huge_update", ["pa-npages0", "range-wrap", "full-space", "va-vma", "unpin-failed",
                                    "as-lazy"],
              "UPDATEs of size 2^64-1 on an empty AS pass the overflow check and reach the map path. "
              "PA: iova 0 -> PFN_UP(2^64-1) = 0 pages -> EINVAL; iova 1 -> size > ULONG_MAX - 1 -> "
              "EINVAL. VA: vhost_vdpa_va_map walks every VMA from uaddr up (mapping the declared memfd "
              "page, skipping the rest of the process's non-shared-file VMAs) until find_vma finds "
              "nothing above the stack -> EINVAL, and unmaps what it mapped. Either way no entry and "
              "no pin remain. Memory is strict (declared), so the runner maps nothing implicit.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.update(0, U64, U, c="PA: EFAULT (EINVAL: 0 pages); VA: EFAULT (EINVAL: ran out of VMAs)")
    t.update(1, U64, U, c="PA: EFAULT (EINVAL: size > ULONG_MAX - 1); VA: EFAULT (EINVAL)")
    t.update(0, H, U, c="[0, 2^63): PA: EFAULT (ENOMEM, 2^51 pages > RLIMIT_MEMLOCK); VA: EFAULT (EINVAL)")
    t.update(0x1000, PG, U, c="ok: nothing was left behind at 0x1000 (AS 0 exists since the first try)")
    t.inv(0, U64)
    t.update(0, U64, U, asid=1, c="creates AS 1 then fails")
    t.inv(0, U64, asid=1, c="ok: AS 1 exists")
    t.release()
    return t


@trace
def t_full_space_halves():
    t = Trace("full_space_halves", ["full-space", "inv-whole", "inv-multi", "range-top"],
              "The full space as QEMU removes it: two INVALIDATEs of 2^63 ([0, 2^63-1] and [2^63, "
              "2^64-1]); each removes exactly the entries of its half, and an entry straddling 2^63 "
              "goes with the first. INVALIDATE(0, 2^64-1) covers [0, 2^64-2], which overlaps the last "
              "page, so it empties the AS too.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.update(0, PG, U, c="first page")
    t.update(H - 0x1000, PG, U + PG, c="last page of the lower half")
    t.update(H, PG, U + 2 * PG, c="first page of the upper half")
    t.update(U64 - 0xFFF, PG, U + 3 * PG, c="last page")
    t.inv(0, H, c="lower half: removes 0 and 2^63-0x1000")
    t.update(H - 0x1000, PG, U + 4 * PG, c="ok: gone")
    t.update(H, PG, U + 4 * PG, c="EFAULT (EEXIST): upper half kept")
    t.inv(H, H, c="upper half: removes 2^63 and the last page")
    t.update(U64 - 0xFFF, PG, U + 4 * PG, c="ok: gone")
    t.update(H, PG, U + 5 * PG, c="ok: gone")
    t.update(H - 0x1000, 0x2000, U + 6 * PG, c="EFAULT (EEXIST): 2^63-0x1000 and 2^63 are mapped")
    t.inv(0, U64, c="[0, 2^64-2]: removes everything incl. the last page")
    t.update(H - 0x1000, 0x2000, U + 6 * PG, c="straddles 2^63: ok (VA: one entry; PA: one entry iff "
                                                "the two pages are physically contiguous)")
    t.inv(0, H, c="the straddling entry goes whole with the lower half")
    t.update(H, PG, U + 7 * PG, c="VA: ok, its upper page went too; PA: ok iff one run, else EFAULT (EEXIST)")
    t.release()
    return t


# ---------------------------------------------------------------- overlap / page expansion
@trace
def t_eexist_edges():
    t = Trace("eexist_edges", ["eexist", "inv-whole"],
              "EEXIST on a one-byte overlap at either end; adjacent UPDATEs are fine. Page-aligned "
              "one-page entries, so PA and VA agree.")
    t.setup(ASIDF, mem=[(U, 16 * PG)])
    t.update(0x10000, PG, U, c="X = [0x10000, 0x10fff]")
    t.update(0x10000, PG, U + PG, c="identical: EFAULT (EEXIST)")
    t.update(0x10FFF, 1, U + 0xFFF, c="last byte of X: EFAULT (EEXIST)")
    t.update(0xF000, 0x1001, U + PG, c="ends on X's first byte: EFAULT (EEXIST)")
    t.update(0x8000, 0x10000, U + PG, c="covers X: EFAULT (EEXIST)")
    t.update(0x10800, 0x100, U + PG, c="inside X: EFAULT (EEXIST)")
    t.update(0xF000, PG, U + PG, c="adjacent below: ok")
    t.update(0x11000, PG, U + 2 * PG, c="adjacent above: ok")
    t.update(0xF000, 0x3000, U + 3 * PG, c="covers all three: EFAULT (EEXIST)")
    t.update(0x10000, PG, U + 4 * PG, asid=1, c="another AS: ok")
    t.inv(0x10FFF, 1, c="one byte of X: X removed whole, neighbours stay")
    t.update(0x10000, PG, U + 5 * PG, c="ok")
    t.update(0xF000, PG, U + 6 * PG, c="EFAULT (EEXIST)")
    t.update(0x11000, PG, U + 6 * PG, c="EFAULT (EEXIST)")
    t.release()
    return t


@trace
def t_subpage_updates():
    t = Trace("subpage_updates", ["page-expand", "eexist", "uaddr-offset", "pin-count"],
              "Sub-page UPDATEs: PA entries are whole pages (EEXIST tested on the caller's bytes against "
              "page-expanded entries), VA entries are the exact bytes. PA pins PFN_UP(size + (iova & "
              "0xfff)) pages from uaddr & ~0xfff. Explicit memory, so the extra page PA pins exists.")
    t.setup(ASIDF, mem=[(U, 16 * PG)])
    t.update(0x1800, 0x800, U + 0x800, c="PA: [0x1000, 0x1fff] 1 page; VA: [0x1800, 0x1fff]")
    t.update(0x1000, 0x100, U, c="byte-disjoint, same page: PA EFAULT (EEXIST); VA ok [0x1000, 0x10ff]")
    t.update(0x1100, 0x700, U + 0x100, c="PA: EFAULT (EEXIST); VA: ok [0x1100, 0x17ff]")
    t.update(0x1FFF, 2, U + 0xFFF, c="both: EFAULT (EEXIST) (0x1fff is mapped)")
    t.update(0x3800, 0x1000, U + 2 * PG, c="iova offset 0x800, 4 KiB: PA pins 2 pages from U+0x2000 -> "
                                             "[0x3000, 0x4fff]; VA [0x3800, 0x47ff]")
    t.update(0x4800, 0x800, U + 4 * PG + 0x800, c="PA: EFAULT (EEXIST) (page 0x4000 taken); VA: ok")
    t.update(0x6000, 0x1000, U + 6 * PG + 0x800, c="uaddr offset only: PA pins 1 page (from U+0x6000); "
                                                  "VA [0x6000, 0x6fff] -> U+0x6800")
    t.update(0x8000, 1, U + 8 * PG, c="1 byte: PA pins 1 page")
    t.update(0x8001, 1, U + 8 * PG + 1, c="PA: EFAULT (EEXIST); VA: ok")
    t.update(0x9FFF, 2, U + 9 * PG + 0xFFF, c="2 bytes across a page boundary: PA pins 2 pages")
    t.inv(0x1000, 0x10000, c="everything below 0x11000 in one INVALIDATE")
    t.update(0x1000, 0x9000, U, c="ok in both")
    t.release()
    return t


@trace
def t_invalidate_semantics():
    t = Trace("invalidate_semantics", ["inv-whole", "inv-multi", "pin-unpin-inv", "as-missing"],
              "INVALIDATE removes every overlapping entry whole; ranges in gaps are no-ops; one range "
              "can remove several entries; INVALIDATE of nothing still succeeds on an existing AS. "
              "One-page entries at non-adjacent iovas so PA and VA agree.")
    t.setup(ASIDF, mem=[(U, 16 * PG)])
    t.inv(0x1000, PG, c="no AS yet: EFAULT (EINVAL)")
    for i in range(8):
        t.update(0x10000 + i * 0x2000, PG, U + i * PG, c=f"E{i} = [{0x10000 + i * 0x2000:#x}, +0x1000)")
    t.inv(0x11000, PG, c="the gap between E0 and E1: no-op")
    t.inv(0x10800, 0x1000, c="half of E0 + the gap: E0 removed")
    t.inv(0x12FFF, 0x2002, c="[0x12fff, 0x15000]: last byte of E1 .. all of E2: both removed")
    t.inv(0x17000, 0x1000, c="gap: no-op")
    t.inv(0x18000, 0x6001, c="[0x18000, 0x1e000] = E4..E6 and the first byte of E7: all four removed")
    t.update(0x10000, PG, U + 8 * PG, c="ok")
    t.update(0x12000, 0x3000, U + 9 * PG, c="ok: E1, E2 gone")
    t.update(0x16000, PG, U + 12 * PG, c="EFAULT (EEXIST): E3 stays")
    t.update(0x1E000, PG, U + 13 * PG, c="ok: E7 gone")
    t.inv(0x100000, PG, c="far away: no-op")
    t.inv(0, U64, c="everything")
    t.update(0x16000, PG, U + 12 * PG, c="ok")
    t.release()
    return t


@trace
def t_invalidate_multipage_entry():
    t = Trace("invalidate_multipage_entry", ["inv-whole", "pin-runs", "pin-unpin-inv", "va-vma"],
              "A 16-page UPDATE and an INVALIDATE of one byte in its middle. VA: one entry (one memfd "
              "VMA) -> all 16 pages go. PA: one entry per physically contiguous run -> only the run "
              "holding that byte goes (VmPin drops by its length); the runner records the placement.")
    t.setup(ASIDF, mem=[(U, 16 * PG)])
    t.update(0x100000, 16 * PG, U, c="PA: k entries tiling [0x100000, 0x10ffff], VmPin 16")
    t.inv(0x108000, 1, c="one byte at page 8: its run (PA) / the whole entry (VA)")
    t.update(0x108000, PG, U + 8 * PG, c="ok in both: page 8 is free")
    t.update(0x100000, PG, U, c="VA: ok; PA: ok iff page 0 was in page 8's run, else EFAULT (EEXIST)")
    t.inv(0x100000, 16 * PG, c="everything left")
    t.release()
    return t


@trace
def t_perms():
    t = Trace("perms", ["perm", "pin-count"],
              "perm is not validated: RO, WO, RW, 0, 4, 0xff are all accepted and passed to the parent "
              "(dma_map perm) verbatim. PA pins writable (FOLL_WRITE) iff perm & 2.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    for i, p in enumerate(("RO", "WO", "RW", 0, 4, 0xFF, 0xFE, 5)):
        t.update(0x10000 + i * 0x2000, PG, U + i * PG, perm=p, c=f"perm {p}: ok")
    t.update(0x30000, PG, U, perm="RO", version=1, c="v1 RO: ok (same page as perm RO, pinned twice in PA)")
    t.inv(0x10000, 0x12000, c="all of them")
    t.update(0x10000, PG, U, perm=0, asid=1, c="perm 0 in AS 1: ok")
    t.release()
    return t


# ---------------------------------------------------------------- pinning
@trace
def t_pin_basic():
    t = Trace("pin_basic", ["pin-count", "pin-unpin-inv", "pin-release", "va-nopin"],
              "VmPin follows the entries in PA mode (0 throughout in VA mode): +4 for a 4-page UPDATE, "
              "+1 per one-page UPDATE, - the removed entries on INVALIDATE, 0 after release.")
    t.setup(ASIDF, mem=[(U, 16 * PG)])
    t.update(0x10000, 4 * PG, U, c="VmPin 4 (PA)")
    t.update(0x20000, PG, U + 4 * PG, c="5")
    t.update(0x30000, 8 * PG, U + 8 * PG, c="13")
    t.inv(0x20000, PG, c="8")
    t.update(0x20000, 3 * PG, U + 5 * PG, c="11")
    t.inv(0x10000, 0x20000, c="[0x10000, 0x2ffff]: 8 left")
    t.update(0x50000, 4 * PG, U, asid=1, c="AS 1: 12")
    t.release(c="0")
    t.open().owner().get_status(c="VmPin still 0 on the new fd").release()
    return t


@trace
def t_pin_same_page_twice():
    t = Trace("pin_same_page_twice", ["pin-twice", "pin-unpin-inv", "pin-release"],
              "The same user page mapped at several iovas and in both ASes is pinned once per entry: "
              "VmPin counts 4 for one page; each INVALIDATE drops one.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.update(0x1000, PG, U, c="1")
    t.update(0x3000, PG, U, c="2: same page, another iova")
    t.update(0x1000, PG, U, asid=1, c="3: same page, AS 1")
    t.update(0x5000, 0x800, U, perm="RO", asid=1, c="4: sub-page, read-only")
    t.inv(0x3000, PG, c="3")
    t.inv(0x1000, PG, asid=1, c="2")
    t.release(c="0")
    return t


@trace
def t_pin_release_unpins():
    t = Trace("pin_release_unpins", ["pin-release", "release-reopen", "as-missing", "release-reset"],
              "release drops every pin of every AS (VmPin back to 0) and every AS: after reopen an "
              "INVALIDATE of a missing AS fails and the same UPDATEs succeed again.")
    t.setup(ASIDF, mem=[(U, 64 * PG)])
    t.begin()
    t.update(0x100000, 32 * PG, U)
    t.update(0x200000, 16 * PG, U + 32 * PG, perm="RO")
    t.end()
    t.update(0x100000, 16 * PG, U + 48 * PG, asid=1, c="VmPin 64 (PA)")
    t.status(DRIVER_OK)
    t.release(c="VmPin 0")
    t.open().owner().get_features().features(ASIDF)
    t.inv(0x100000, 32 * PG, c="EFAULT (EINVAL): AS 0 is gone")
    t.inv(0x100000, PG, asid=1, c="EFAULT (EINVAL): AS 1 is gone")
    t.update(0x100000, 32 * PG, U, c="ok")
    t.update(0x100000, 16 * PG, U + 48 * PG, asid=1, c="ok")
    t.release()
    return t


@trace
def t_pin_runs_big_update():
    t = Trace("pin_runs_big_update", ["pin-runs", "pin-count", "memlock"],
              "One 8 MiB UPDATE = 2048 pages = exactly the default RLIMIT_MEMLOCK (8 MiB): accepted "
              "(npages + pinned_vm > limit is false). In PA mode it becomes one entry (one dma_map) "
              "per physically contiguous run; one more page -> ENOMEM.")
    t.setup(ASIDF, mem=[(U, 8 * MiB + PG)])
    t.update(0x40000000, 8 * MiB, U, c="PA: 2048 pages, VmPin 2048; k runs")
    t.update(0x50000000, PG, U + 8 * MiB, c="PA: EFAULT (ENOMEM): 2049 > 2048; VA: ok")
    t.inv(0x40000000, PG, c="PA: removes the first run")
    t.update(0x50000000, PG, U + 8 * MiB, c="PA: ok now (VA: EFAULT (EEXIST))")
    t.inv(0, U64)
    t.release()
    return t


@trace
def t_memlock_enomem():
    t = Trace("memlock_enomem", ["memlock", "unpin-failed", "va-nopin", "pin-twice", "as-lazy"],
              "RLIMIT_MEMLOCK in pages: npages + pinned_vm > limit -> ENOMEM before anything is pinned "
              "(PA only; VA never pins). The limit counts pins of both ASes. Changing the rlimit "
              "takes effect at the next UPDATE.")
    t.setup(ASIDF, mem=[(U, 32 * PG)])
    t.memlock(16, c="16 pages")
    t.update(0x10000, 11 * PG, U, c="11: ok")
    t.update(0x1C000, PG, U + 11 * PG, c="12")
    t.update(0x20000, 4 * PG, U + 12 * PG, asid=1, c="16 = limit: ok")
    t.update(0x30000, PG, U + 16 * PG, c="17 > 16: PA EFAULT (ENOMEM); VA ok")
    t.update(0x30000, 0x800, U + 16 * PG, asid=1, c="sub-page is still a page: PA EFAULT (ENOMEM); VA ok")
    t.inv(0x1C000, PG, c="PA: 15 pinned")
    t.update(0x40000, PG, U + 17 * PG, c="PA: 16, ok")
    t.update(0x40800, PG, U + 18 * PG + 0x800, c="PA: EFAULT (EEXIST) -- the overlap check runs first")
    t.memlock(0, c="limit 0")
    t.update(0x50000, PG, U + 19 * PG, c="PA: EFAULT (ENOMEM)")
    t.memlock("unlimited")
    t.update(0x50000, 8 * PG, U + 19 * PG, c="PA: ok; VA: EFAULT (EEXIST), 0x50000 was mapped above")
    t.memlock(1, c="below what is pinned: nothing happens to the pins")
    t.inv(0x50000, 8 * PG, c="unpinning is never refused")
    t.update(0x60000, PG, U + 20 * PG, c="PA: EFAULT (ENOMEM): 16 pinned > 1; VA: ok")
    t.update(0x60000, PG, U + 20 * PG, asid=1, c="PA: EFAULT (ENOMEM)")
    t.inv(0x60000, PG, asid=1, c="AS 1 exists: ok, nothing there")
    t.release(c="VmPin 0")
    return t


@trace
def t_memlock_failed_update_creates_as():
    t = Trace("memlock_failed_update_creates_as", ["as-lazy", "memlock", "unpin-failed", "range-wrap"],
              "find_alloc_as runs before every UPDATE check: a failing UPDATE in a new AS (wrap EINVAL; "
              "ENOMEM in PA mode) still creates that AS, so a later INVALIDATE on it succeeds. A size-0 "
              "UPDATE (refused before the handler) creates nothing.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.update(0x1000, 0, U, asid=1, c="EINVAL at write(): AS 1 not created")
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL)")
    t.update(U64, 2, U, asid=1, c="EFAULT (EINVAL, wrap) -- but AS 1 now exists")
    t.inv(0x1000, PG, asid=1, c="ok")
    t.memlock(0)
    t.update(0x1000, PG, U, asid=0, c="PA: EFAULT (ENOMEM), AS 0 created anyway; VA: ok")
    t.inv(0x1000, PG, asid=0, c="ok in both")
    t.memlock("unlimited")
    t.release()
    return t


# ---------------------------------------------------------------- user memory
@trace
def t_va_anon_skipped():
    t = Trace("va_anon_skipped", ["va-anon", "pin-count", "va-nopin"],
              "Private anonymous memory: PA pins it like any memory (entry, VmPin); VA skips the VMA "
              "silently -- the UPDATE returns 72 but creates no entry, so the same UPDATE succeeds "
              "again and INVALIDATE finds nothing.")
    t.setup(ASIDF, mem=[(U, 4 * PG, "anon"), (U + 0x100000, 4 * PG, "memfd")])
    t.update(0x10000, 4 * PG, U, c="PA: ok, VmPin 4; VA: ok, no entry")
    t.update(0x10000, 4 * PG, U, c="PA: EFAULT (EEXIST); VA: ok again, still no entry")
    t.update(0x20000, 4 * PG, U + 0x100000, c="memfd: an entry in both modes")
    t.update(0x20000, PG, U, c="EFAULT (EEXIST) in both")
    t.update(0x12000, PG, U + 0x100000, c="PA: EFAULT (EEXIST); VA: ok (0x12000 is not mapped)")
    t.inv(0x10000, 0x20000)
    t.release()
    return t


@trace
def t_va_two_vmas():
    t = Trace("va_two_vmas", ["va-vma", "inv-whole", "pin-runs"],
              "One UPDATE across two adjacent memfd mappings (two files, two VMAs). VA: two entries, "
              "one per VMA piece; INVALIDATE of the first page removes only the first VMA's entry. "
              "PA: one entry per physically contiguous run (placement recorded by the runner).")
    t.setup(ASIDF, mem=[(U, 2 * PG), (U + 2 * PG, 2 * PG)])
    t.update(0x10000, 4 * PG, U, c="VA: [0x10000, 0x11fff] + [0x12000, 0x13fff]")
    t.inv(0x10000, 1, c="VA: first entry only")
    t.update(0x12000, 2 * PG, U + 2 * PG, c="VA: EFAULT (EEXIST); PA: depends on the runs")
    t.update(0x10000, 2 * PG, U, c="VA: ok")
    t.inv(0x10000, 4 * PG)
    t.update(0x10000, 0x3000, U + PG, c="starts in the first VMA: VA 2 entries of 1 and 2 pages")
    t.inv(0x12800, 1, c="VA: removes the second piece [0x11000, 0x12fff]")
    t.update(0x11000, PG, U + 2 * PG, c="VA: ok; PA: depends on the runs")
    t.release()
    return t


@trace
def t_unmapped_user_memory():
    t = Trace("unmapped_user_memory", ["pa-unmapped", "va-vma", "va-anon", "unpin-failed"],
              "UPDATEs of user addresses with nothing mapped (strict memory: a memfd page at U+0x10000, "
              "an anonymous guard at U+0x100000). PA: pin_user_pages fails -> EFAULT on the first page, "
              "ENOMEM after a partial pin; nothing stays pinned. VA: find_vma returns the next VMA "
              "*above* the hole, and the piece [uaddr, vma end) is mapped if that VMA is a shared file "
              "(hole included!) or skipped if it is anonymous -- the UPDATE succeeds.")
    t.setup(ASIDF, mem=[(U + 0x10000, PG, "memfd"), (U + 0x100000, PG, "anon")])
    t.update(0x1000, PG, U, c="hole below the memfd: PA EFAULT (EFAULT); VA ok, entry "
                              "[0x1000, 0x1fff] (next VMA is the memfd)")
    t.update(0x1000, PG, U + 0x10000, c="PA: ok; VA: EFAULT (EEXIST)")
    t.update(0x3000, 2 * PG, U + 0x10000, c="memfd page + hole: PA EFAULT (ENOMEM, partial pin); VA: "
                                             "ok, 1 entry (the hole piece is skipped: next VMA is anon)")
    t.update(0x3000, PG, U + 0x10000, c="PA: ok (nothing left behind); VA: EFAULT (EEXIST)")
    t.update(0x6000, PG, U + 0x20000, c="hole below the anon guard: PA EFAULT (EFAULT); VA ok, no entry")
    t.update(0x6000, PG, U + 0x20000, c="same again: PA EFAULT (EFAULT); VA ok")
    t.update(0x8000, 0xF1000, U + 0x10000, c="memfd + hole up to the guard: PA EFAULT (ENOMEM); VA ok "
                                              "(one entry for the memfd page)")
    t.inv(0, U64)
    t.release()
    return t


@trace
def t_munmap_keeps_pins():
    t = Trace("munmap_keeps_pins", ["munmap", "pin-unpin-inv", "pa-unmapped", "va-vma"],
              "munmap of memory that is mapped in the IOTLB changes nothing for vhost: PA pins stay "
              "(VmPin) until INVALIDATE; VA entries keep their file reference. A new UPDATE of the "
              "unmapped range then behaves as for unmapped memory (PA EFAULT; VA: the next VMA above, "
              "here an anonymous guard, is skipped -> ok, no entry).")
    t.setup(ASIDF, mem=[(U, 4 * PG, "memfd"), (U + 0x100000, PG, "anon")])
    t.update(0x10000, 4 * PG, U, c="PA: VmPin 4")
    t.munmap(U, 4 * PG, c="VmPin still 4")
    t.update(0x10000, PG, U, c="EFAULT (EEXIST): the entry is still there")
    t.update(0x20000, PG, U, c="PA: EFAULT (EFAULT); VA: ok, no entry")
    t.inv(0x10000, 4 * PG, c="VmPin 0")
    t.mmap(U, 4 * PG, c="map again (a new memfd)")
    t.update(0x10000, 4 * PG, U, c="ok")
    t.release()
    return t


# ---------------------------------------------------------------- entry limit
def _limit_trace(name, rules, comment, *, asid, extra_as=False, batch=False):
    t = Trace(name, rules, comment)
    t.setup(ASIDF, mem=[(U, 2050 * PG)])
    t.memlock(4096, c="2049+ pinned pages in PA mode: raise RLIMIT_MEMLOCK above the default 2048")
    if batch:
        t.begin(asid)
    for i in range(2048):
        t.update(0x1000000 + i * 0x2000, PG, U + i * PG, asid=asid,
                 c="the 2048th entry: ok" if i == 2047 else None)
    t.update(0x1000000 + 2048 * 0x2000, PG, U + 2048 * PG, asid=asid,
             c="2049th entry: EFAULT (ENOSPC from vhost_iotlb_add_range_ctx), nothing pinned")
    t.update(0x1000000 + 2048 * 0x2000, PG, U + 2048 * PG, asid=asid,
             c="again: EFAULT (ENOSPC)")
    if batch:
        t.end(asid, c="set_map parents: set_map with 2048 entries (the device IOTLB also holds 2048)")
    if extra_as:
        t.update(0x1000000, PG, U + 2049 * PG, asid=1 - asid, c="the other AS has its own 2048: ok")
        t.update(0x1002000, PG, U + 2049 * PG, asid=1 - asid, c="ok")
    t.inv(0x1000000 + 5 * 0x2000, PG, asid=asid, c="frees one entry")
    t.update(0x1000000 + 2048 * 0x2000, PG, U + 2048 * PG, asid=asid, c="ok: 2048 again")
    t.update(0x1000000 + 5 * 0x2000, PG, U + 5 * PG, asid=asid, c="EFAULT (ENOSPC)")
    t.inv(0, U64, asid=asid, c="[0, 2^64-2]: all 2048 go (VmPin drops by 2048 in PA)")
    t.update(0x1000000 + 5 * 0x2000, PG, U + 5 * PG, asid=asid, c="ok")
    t.release()
    return t


@trace
def t_limit_2048_as0():
    return _limit_trace(
        "limit_2048_as0", ["limit-2048", "inv-multi", "memlock"],
        "2048 one-page UPDATEs at non-adjacent iovas (one entry each in every config) fill AS 0; the "
        "2049th fails with ENOSPC (EFAULT at write) and pins nothing; removing one entry makes room "
        "for exactly one more.", asid=0)


@trace
def t_limit_2048_per_as():
    return _limit_trace(
        "limit_2048_per_as", ["limit-2048", "limit-per-as", "memlock"],
        "The 2048-entry limit is per AS: AS 1 full (2049th -> ENOSPC) while AS 0 still takes "
        "entries.", asid=1, extra_as=True)


@trace
def t_limit_2048_batch():
    return _limit_trace(
        "limit_2048_batch", ["limit-2048", "batch", "memlock"],
        "The 2048-entry limit inside one batch: the 2049th UPDATE fails with ENOSPC at once (the "
        "vhost IOTLB is the one that is full); BATCH_END hands 2048 entries to set_map parents.",
        asid=0, batch=True)


# ---------------------------------------------------------------- batching
@trace
def t_batch_basic():
    t = Trace("batch_basic", ["batch", "pin-count"],
              "A batch of UPDATEs and INVALIDATEs: set_map parents (batch_mapping=1) see no set_map "
              "until BATCH_END, then one; dma_map parents (batch_mapping=0) see a dma_map / dma_unmap per "
              "entry immediately. Outside a batch set_map parents get a set_map per message.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.begin()
    t.update(0x1000, PG, U)
    t.update(0x3000, PG, U + PG)
    t.update(0x5000, PG, U + 2 * PG)
    t.inv(0x3000, PG)
    t.end(c="one set_map (set_map parents)")
    t.update(0x7000, PG, U + 3 * PG, c="unbatched: set_map per UPDATE")
    t.inv(0x9000, PG, c="unbatched INVALIDATE of nothing: set_map anyway (set_map parents)")
    t.begin()
    t.end(c="empty batch: one set_map")
    t.update(0x3000, PG, U + PG, c="ok")
    t.release()
    return t


@trace
def t_batch_nested_begin():
    t = Trace("batch_nested_begin", ["batch-nested", "batch-end-alone", "batch"],
              "BATCH_BEGIN twice on the same asid: the second is a no-op (no nesting count): the first "
              "BATCH_END closes the batch, a second BATCH_END is a harmless no-op on the existing AS.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.begin().begin(c="ok, no-op")
    t.update(0x1000, PG, U)
    t.end(c="closes the batch: set_map (set_map parents)")
    t.update(0x3000, PG, U + PG, c="not in a batch any more: set_map per UPDATE")
    t.end(c="no batch open, AS exists: ok, no set_map")
    t.update(0x3000, PG, U + 2 * PG, asid=1, c="AS 1 accepted: no batch is bound to AS 0")
    t.release()
    return t


@trace
def t_batch_end_without_begin():
    t = Trace("batch_end_without_begin", ["batch-end-alone", "as-missing", "as-lazy"],
              "BATCH_END on a fresh fd: AS 0 does not exist -> EINVAL (EFAULT). After an UPDATE created "
              "AS 0, BATCH_END without BEGIN is accepted and calls nothing.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.end(c="EFAULT (EINVAL): no AS 0")
    t.end(1, c="EFAULT (EINVAL): no AS 1")
    t.end(2, c="EFAULT (EINVAL): asid >= nas")
    t.update(0x1000, PG, U)
    t.end(c="ok, no set_map")
    t.end(1, c="EFAULT (EINVAL): still no AS 1")
    t.release()
    return t


@trace
def t_batch_asid_mismatch():
    t = Trace("batch_asid_mismatch", ["batch-asid", "as-lazy", "as-nas", "batch-end-alone"],
              "A batch is bound to its asid: while BATCH_BEGIN(0) is open, messages for asid 1 fail "
              "with EINVAL -- but an UPDATE/BATCH_BEGIN for asid 1 has already created AS 1 by then "
              "(find_alloc_as runs first), so after BATCH_END(0) INVALIDATE on AS 1 works.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.begin(0)
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL): AS 1 missing (and mismatch)")
    t.update(0x1000, PG, U, asid=1, c="EFAULT (EINVAL): mismatch -- AS 1 created anyway")
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL): mismatch")
    t.end(1, c="EFAULT (EINVAL): mismatch, batch stays open")
    t.begin(1, c="EFAULT (EINVAL): mismatch")
    t.update(0x1000, PG, U, asid=2, c="EFAULT (EINVAL): asid >= nas")
    t.update(0x1000, PG, U, asid=0, c="ok")
    t.end(0, c="closes")
    t.inv(0x1000, PG, asid=1, c="ok: AS 1 exists (created by the refused UPDATE)")
    t.update(0x1000, PG, U + PG, asid=1, c="ok")
    t.begin(1)
    t.update(0x3000, PG, U + 2 * PG, asid=0, c="EFAULT (EINVAL): batch bound to 1")
    t.end(0, c="EFAULT (EINVAL)")
    t.end(1)
    t.release()
    return t


@trace
def t_batch_begin_creates_as():
    t = Trace("batch_begin_creates_as", ["as-lazy", "batch-end-alone", "as-nas", "batch"],
              "BATCH_BEGIN creates the AS (like UPDATE); asid >= nas -> EINVAL and no batch opened.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.begin(2, c="EFAULT (EINVAL): asid >= nas; no batch")
    t.update(0x1000, PG, U, asid=1, c="ok: no batch is open")
    t.inv(0x1000, PG, asid=1)
    t.begin(0, c="creates AS 0")
    t.end(0, c="set_map with an empty IOTLB (set_map parents)")
    t.inv(0x1000, PG, asid=0, c="ok: AS 0 exists")
    t.release()
    return t


@trace
def t_batch_survives_reset():
    t = Trace("batch_survives_reset", ["batch-reset", "batch-asid", "reset-keeps-vhost", "release-reopen"],
              "SET_STATUS(0) does not clear in_batch: after BATCH_BEGIN(0) and a reset, an asid-1 "
              "message still fails (mismatch). release clears it: on the next open asid 1 works.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.status(DRIVER_OK)
    t.begin(0)
    t.update(0x1000, PG, U)
    t.status(0, c="reset: in_batch untouched")
    t.update(0x3000, PG, U + PG, asid=1, c="EFAULT (EINVAL): still in the asid-0 batch")
    t.update(0x1000, PG, U, c="EFAULT (EEXIST): the entry survived the reset")
    t.end(0)
    t.update(0x3000, PG, U + PG, asid=1, c="ok")
    t.begin(0)
    t.release(c="release clears in_batch")
    t.open().owner().get_features().features(ASIDF)
    t.update(0x3000, PG, U + PG, asid=1, c="ok: no batch after reopen")
    t.release()
    return t


@trace
def t_batch_raw_fields():
    t = Trace("batch_raw_fields", ["size0-batch", "batch", "batch-v1", "wire-ret72"],
              "BATCH_BEGIN/END ignore iova, size, uaddr and perm (raw writes with garbage there); v1 "
              "BATCH messages work; a 40-byte BATCH_END is enough.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.write(raw_msg(5, 0x1234, 0x5678, 0x9ABC, 0xFF), c="BATCH_BEGIN with junk fields: 72")
    t.update(0x1000, PG, U)
    t.write(raw_msg(6, U64, U64, U64, 7, length=40), c="40-byte BATCH_END with junk: 72")
    t.write(raw_msg(5, 1, 1, 1, 1, outer=1), c="v1 BATCH_BEGIN")
    t.update(0x3000, PG, U + PG)
    t.write(raw_msg(6, outer=1, hole=1), c="v1 BATCH_END, hole 1 (asid 0): 72")
    t.update(0x5000, PG, U + PG, asid=1, c="ok: batch closed")
    t.release()
    return t


# ---------------------------------------------------------------- ASIDs
@trace
def t_asid_lazy():
    t = Trace("asid_lazy", ["as-lazy", "as-missing", "as-nas"],
              "No AS after open: INVALIDATE / BATCH_END on AS 0 or 1 -> EINVAL; UPDATE creates the AS; "
              "asid >= 2 is EINVAL for every type.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL)")
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL)")
    t.update(0x1000, PG, U, asid=1, c="AS 1 created")
    t.inv(0x1000, PG, asid=1, c="ok")
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL): AS 0 still missing")
    t.end(0, c="EFAULT (EINVAL)")
    for a in (2, 3, 16, 0xFFFFFFFF):
        t.update(0x1000, PG, U, asid=a, c=f"asid {a}: EFAULT (EINVAL)")
    t.inv(0x1000, PG, asid=2, c="EFAULT (EINVAL)")
    t.begin(2, c="EFAULT (EINVAL)")
    t.end(2, c="EFAULT (EINVAL)")
    t.update(0x1000, PG, U + PG, asid=0, c="AS 0 created")
    t.release()
    return t


@trace
def t_asid_vs_group_asid():
    t = Trace("asid_vs_group_asid", ["as-independent", "group-bounds", "vring-group", "pin-twice"],
              "The vhost ASes have nothing to do with SET_GROUP_ASID: messages for AS 1 work before "
              "any SET_GROUP_ASID, binding a group to AS 1 neither creates nor touches it, and moving "
              "groups back to AS 0 removes nothing.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U, asid=1, c="AS 1 before any SET_GROUP_ASID: ok")
    t.vring_group(2, c="1 (the CVQ group)")
    t.group_asid(1, 1, c="0")
    t.update(0x3000, PG, U + PG, asid=1, c="ok")
    t.group_asid(0, 1, c="data group to AS 1 too: 0")
    t.group_asid(0, 0)
    t.group_asid(1, 0)
    t.update(0x1000, PG, U, asid=1, c="EFAULT (EEXIST): AS 1 kept its entries")
    t.update(0x1000, PG, U, asid=0, c="ok: AS 0 is separate")
    t.inv(0x1000, 0x3000, asid=1)
    t.release()
    return t


@trace
def t_asid_survives_reset():
    t = Trace("asid_survives_reset", ["as-independent", "reset-keeps-vhost", "pin-count"],
              "SET_STATUS(0) removes no AS and no entry of AS 0 or AS 1 (PERSIST not acked: the "
              "device is CLEAN_MAP-reset, vhost is not).")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U, asid=1)
    t.update(0x1000, PG, U + PG, asid=0)
    t.status(DRIVER_OK)
    t.status(0, c="VmPin unchanged (2 in PA)")
    t.update(0x1000, PG, U, asid=1, c="EFAULT (EEXIST)")
    t.update(0x1000, PG, U + PG, asid=0, c="EFAULT (EEXIST)")
    t.inv(0x1000, PG, asid=1, c="ok")
    t.inv(0x1000, PG, asid=0, c="ok")
    t.release()
    return t


# ---------------------------------------------------------------- groups
@trace
def t_group_asid_bounds():
    t = Trace("group_asid_bounds", ["group-bounds", "get-nums"],
              "SET_GROUP_ASID(index=group, num=asid): index >= nvqs (3) -> ENOBUFS (vring ioctl index "
              "check first); then group >= ngroups (2) or asid >= nas (2) -> EINVAL (6.12.75+ and 7.2); "
              "else vdpasim_set_group_asid -> 0.")
    t.setup(ASIDF)
    t.add("get_group_num", c="2").add("get_as_num", c="2").add("get_vqs_count", c="3")
    for g, a, what in ((0, 0, "0"), (1, 1, "0"), (0, 1, "0"), (1, 0, "0"),
                       (2, 0, "EINVAL: group 2 >= ngroups (but < nvqs)"),
                       (2, 1, "EINVAL"),
                       (3, 0, "ENOBUFS: index 3 >= nvqs"),
                       (0xFFFFFFFF, 0, "ENOBUFS"),
                       (0, 2, "EINVAL: asid 2 >= nas"),
                       (1, 0xFFFFFFFF, "EINVAL"),
                       (2, 2, "EINVAL"),
                       (3, 2, "ENOBUFS: the index check comes first"),
                       (1, 1, "0")):
        t.group_asid(g, a, c=what)
    t.release()
    return t


@trace
def t_vring_group_bounds():
    t = Trace("vring_group_bounds", ["vring-group", "get-nums"],
              "GET_VRING_GROUP: vq 0 and 1 (rx/tx) -> group 0, vq 2 (CVQ) -> group 1, vq >= 3 -> "
              "ENOBUFS. SET_GROUP_ASID does not change the groups.")
    t.setup(ASIDF)
    for vq, what in ((0, "0"), (1, "0"), (2, "1"), (3, "ENOBUFS"), (4, "ENOBUFS"),
                     (0xFFFF, "ENOBUFS"), (0xFFFFFFFF, "ENOBUFS")):
        t.vring_group(vq, c=what)
    t.group_asid(1, 1)
    t.vring_group(2, c="still 1")
    t.status(DRIVER_OK)
    t.vring_group(2, c="1 after DRIVER_OK")
    t.status(0)
    t.vring_group(0, c="0 after reset")
    t.release()
    return t


@trace
def t_group_asid_driver_ok():
    t = Trace("group_asid_driver_ok", ["group-busy", "group-bounds", "status"],
              "SET_GROUP_ASID with DRIVER_OK set: 7.2 -> EBUSY (after the bound checks, which still "
              "answer ENOBUFS/EINVAL); 6.12.118 -> 0. Before DRIVER_OK (FEATURES_OK) and after "
              "SET_STATUS(0) it is accepted on both.")
    t.setup(ASIDF)
    t.status(ACK_DRIVER).status(FEAT_OK)
    t.group_asid(1, 1, c="0 (FEATURES_OK only)")
    t.status(DRIVER_OK)
    t.group_asid(1, 1, c="7.2: EBUSY; 6.12: 0")
    t.group_asid(1, 0, c="7.2: EBUSY; 6.12: 0")
    t.group_asid(2, 0, c="EINVAL on both (bounds first)")
    t.group_asid(0, 2, c="EINVAL on both")
    t.group_asid(3, 0, c="ENOBUFS on both")
    t.suspend(c="0 (parent suspend)")
    t.group_asid(1, 1, c="7.2: EBUSY even when suspended (DRIVER_OK still set)")
    t.status(0)
    t.group_asid(1, 1, c="0 after reset")
    t.status(["ACKNOWLEDGE", "DRIVER", "DRIVER_OK"], c="DRIVER_OK without FEATURES_OK")
    t.group_asid(0, 1, c="7.2: EBUSY; 6.12: 0")
    t.status(0)
    t.release()
    return t


# ---------------------------------------------------------------- status / reset
@trace
def t_status_sequence():
    t = Trace("status_sequence", ["status"],
              "SET_STATUS / GET_STATUS: bits can only be added; a nonzero status that clears a bit -> "
              "EINVAL (status unchanged); 0 resets; any u8 goes to the parent.")
    t.setup(ASIDF)
    t.get_status(c="0")
    t.status(["ACKNOWLEDGE"]).get_status(c="1")
    t.status(ACK_DRIVER).get_status(c="3")
    t.status(["ACKNOWLEDGE"], c="EINVAL: clears DRIVER")
    t.get_status(c="3")
    t.status(ACK_DRIVER, c="same value: ok")
    t.status(FEAT_OK).status(DRIVER_OK).get_status(c="15")
    t.status(FEAT_OK, c="EINVAL: clears DRIVER_OK")
    t.status(["DRIVER_OK"], c="EINVAL: clears ACK|DRIVER|FEATURES_OK")
    t.status(DRIVER_OK + ["NEEDS_RESET"]).get_status(c="0x4f")
    t.status(0).get_status(c="0")
    t.status(0, c="reset again: ok")
    t.status(["FAILED"]).get_status(c="0x80")
    t.status(["NEEDS_RESET"], c="EINVAL: clears FAILED")
    t.status(0xFF).get_status(c="0xff")
    t.status(0x7F, c="EINVAL")
    t.status(0)
    t.status(0x10, c="an undefined bit: ok")
    t.get_status(c="0x10")
    t.status(0)
    t.release()
    return t


def _reset_trace(name, feats, rules, comment):
    t = Trace(name, rules, comment)
    t.setup(feats, mem=[(U, 8 * PG)])
    t.status(ACK_DRIVER).status(FEAT_OK)
    t.begin()
    t.update(0x10000, 4 * PG, U)
    t.update(0x20000, PG, U + 4 * PG, perm="RO")
    t.end()
    t.update(0x1000, PG, U + 5 * PG, asid=1)
    t.status(DRIVER_OK)
    t.status(0, c="reset; VmPin unchanged")
    t.get_status(c="0")
    t.update(0x10000, 4 * PG, U, c="EFAULT (EEXIST): vhost kept the entry")
    t.update(0x20000, PG, U + 4 * PG, perm="RO", c="EFAULT (EEXIST)")
    t.update(0x1000, PG, U + 5 * PG, asid=1, c="EFAULT (EEXIST)")
    t.update(0x30000, PG, U + 6 * PG, c="new iova: ok; dma_map parents: the first dma_map after a "
                                         "CLEAN_MAP reset drops the identity map first")
    t.inv(0x20000, PG, c="dma_map parents: dma_unmap; set_map parents: set_map")
    t.inv(0x1000, PG, asid=1)
    t.update(0x20000, PG, U + 4 * PG, perm="RO", c="ok")
    t.status(0, c="reset again")
    t.release(c="reset (per PERSIST), remove_as(0) + reset_map(0); VmPin 0")
    return t


@trace
def t_reset_not_acked():
    return _reset_trace(
        "reset_persist_not_acked", ASIDF, ["reset-keeps-vhost", "reset-flags", "reset-device",
                                           "release-reset", "pin-count"],
        "IOTLB_PERSIST not acked (as QEMU): SET_STATUS(0) is compat_reset(CLEAN_MAP) -- the device "
        "goes back to identity, the vhost IOTLB and the pins stay (re-UPDATE -> EEXIST). "
        "Observable: EEXIST, VmPin, the parent calls after the reset.")


@trace
def t_reset_acked():
    return _reset_trace(
        "reset_persist_acked", PERSIST, ["reset-keeps-vhost", "reset-flags", "release-reset",
                                         "pin-count"],
        "IOTLB_PERSIST acked: SET_STATUS(0) is a plain reset (maps kept by the device too); the "
        "vhost side is the same as without PERSIST (re-UPDATE -> EEXIST, pins kept).")


@trace
def t_reset_persist_toggle():
    t = Trace("reset_persist_toggle", ["reset-flags", "feat-replace", "reset-device", "reset-keeps-vhost"],
              "The reset flavour follows the acked set at the time of SET_STATUS(0): with PERSIST -> "
              "reset; re-acked without -> compat_reset(CLEAN_MAP); with again -> reset. The vhost "
              "IOTLB never changes.")
    t.setup(PERSIST, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U)
    t.status(DRIVER_OK)
    t.status(0, c="reset()")
    t.features(ASIDF, c="PERSIST dropped")
    t.status(DRIVER_OK)
    t.status(0, c="compat_reset(CLEAN_MAP)")
    t.inv(0x1000, PG, c="dma_map parent: dma_unmap on a pt AS (emptied); set_map parent: set_map")
    t.update(0x1000, PG, U, c="ok")
    t.features(PERSIST)
    t.status(0, c="reset()")
    t.update(0x1000, PG, U + PG, c="EFAULT (EEXIST)")
    t.release(c="reset() (PERSIST acked), remove_as, reset_map")
    return t


@trace
def t_reset_then_update_dma():
    t = Trace("reset_then_update", ["reset-device", "reset-flags", "reset-keeps-vhost", "batch"],
              "After a CLEAN_MAP reset (PERSIST not acked) the device ASes are identity with pt set: "
              "for dma_map parents the next dma_map or dma_unmap of an AS empties it first; for set_map "
              "parents the next set_map (unbatched UPDATE/INVALIDATE or BATCH_END) replaces it. Both "
              "ASes, in and out of batches.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.update(0x1000, PG, U)
    t.update(0x1000, PG, U + PG, asid=1)
    t.status(DRIVER_OK)
    t.status(0, c="CLEAN_MAP")
    t.begin(1)
    t.update(0x3000, PG, U + 2 * PG, asid=1, c="dma_map parent: AS 1 pt -> emptied, then 0x3000")
    t.end(1, c="set_map parent: set_map(1) with both AS-1 entries")
    t.inv(0x5000, PG, c="nothing in AS 0 there: dma_map parent: no call; set_map parent: set_map(0)")
    t.status(0, c="CLEAN_MAP again")
    t.inv(0x1000, PG, c="dma_map parent: dma_unmap on a pt AS")
    t.update(0x1000, PG, U + 3 * PG, c="ok")
    t.release()
    return t


@trace
def t_release_variants():
    t = Trace("release_variants", ["release-reset", "release-reopen", "pin-release", "batch-reset",
                                   "feat-zeroed"],
              "release in various states: with an open batch, after DRIVER_OK, after SET_STATUS(0), "
              "with PERSIST acked, without owner. Every reopen starts with no AS, no pins, no batch, no "
              "acked features.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.begin(1)
    t.update(0x1000, PG, U, asid=1)
    t.release(c="in a batch on AS 1")
    t.open().owner().get_features().features(PERSIST)
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL): AS 1 gone")
    t.update(0x1000, PG, U, asid=1, c="ok: no batch bound to 1")
    t.update(0x1000, PG, U + PG, asid=0)
    t.status(DRIVER_OK)
    t.release(c="PERSIST acked, DRIVER_OK: reset(), then remove_as 0 and 1 (+ reset_map)")
    t.open().owner().get_features().features(ASIDF)
    t.update(0x1000, PG, U, asid=1, c="ok")
    t.status(DRIVER_OK)
    t.status(0)
    t.release(c="after SET_STATUS(0): compat_reset(CLEAN_MAP) again, then remove_as")
    t.open().get_status(c="0").release(c="no owner, nothing mapped")
    t.open().owner()
    t.update(0x1000, PG, U, asid=1, c="no features acked: AS 0")
    t.release()
    return t


# ---------------------------------------------------------------- suspend / resume
@trace
def t_suspend_resume():
    t = Trace("suspend_resume", ["suspend-noop", "suspend-call", "suspend-maps", "status"],
              "SUSPEND/RESUME: with DRIVER_OK clear both return 0 and do not call the parent; with "
              "DRIVER_OK set they call vdpasim_suspend/resume (0). Neither needs the SUSPEND/RESUME "
              "backend features acked. IOTLB messages work while suspended.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.suspend(c="0, no parent call (status 0)")
    t.resume(c="0, no parent call")
    t.status(FEAT_OK)
    t.suspend(c="0, no parent call (FEATURES_OK only)")
    t.status(DRIVER_OK)
    t.suspend(c="0, parent suspend (SUSPEND not acked: no check)")
    t.suspend(c="0, parent suspend again")
    t.update(0x1000, PG, U, c="ok while suspended")
    t.inv(0x1000, PG, c="ok")
    t.resume(c="0, parent resume")
    t.resume(c="0, parent resume again")
    t.features(QEMU + ["RESUME"])
    t.suspend(c="0, parent suspend")
    t.status(0, c="reset")
    t.resume(c="0, no parent call (DRIVER_OK clear)")
    t.get_status(c="0")
    t.release()
    return t


# ---------------------------------------------------------------- QEMU-like
@trace
def t_qemu_10_2_init():
    t = Trace("qemu_10_2_init", ["qemu", "as-lazy", "batch", "reset-keeps-vhost", "vring-group",
                                 "group-bounds", "reset-flags"],
              "A QEMU 10.2-like start: features acked (MSG_V2|BATCH|ASID|SUSPEND, never PERSIST), the "
              "memory listener registered at SET_OWNER (guest RAM mapped in AS 0 in one batch), the "
              "CVQ-isolation probe (vring groups, SET_GROUP_ASID, SET_STATUS(0)), then the device start "
              "with the CVQ in AS 1 and DRIVER_OK, then a stop. The mappings made before the probe's "
              "reset survive it in vhost (the device was CLEAN_MAP-reset).")
    ram = U
    t.open().get_features().features(QEMU).owner()
    t.mmap(ram, 2 * MiB).mmap(ram + 0x1000000, 16 * PG)
    t.begin(c="listener registered at SET_OWNER")
    t.update(0, 0xA0000, ram, c="ram-low")
    t.update(0x100000, 0x100000, ram + 0x100000, c="ram-below-4g")
    t.end()
    t.status(ACK_DRIVER)
    t.add("get_iova_range")
    t.vring_group(0, c="probe: data vq group 0").vring_group(2, c="probe: CVQ group 1")
    t.add("get_as_num")
    t.group_asid(1, 1, c="probe: isolate the CVQ group")
    t.status(0, c="probe ends with a reset: CLEAN_MAP (PERSIST never acked)")
    t.status(ACK_DRIVER).status(FEAT_OK)
    t.group_asid(1, 1, c="start: CVQ group to AS 1")
    t.update(0x1000, PG, ram + 0x1000000, perm="RO", asid=1, c="shadow CVQ rings, unbatched")
    t.update(0x2000, PG, ram + 0x1001000, asid=1)
    t.update(0, 0xA0000, ram, c="re-sent without INVALIDATE: EFAULT (EEXIST)")
    t.status(DRIVER_OK)
    t.suspend(c="stop: SUSPEND (parent suspend)")
    t.status(0)
    t.status(ACK_DRIVER)
    t.begin()
    t.inv(0, 0xA0000)
    t.inv(0x100000, 0x100000)
    t.end()
    t.inv(0x1000, PG, asid=1).inv(0x2000, PG, asid=1)
    t.release()
    return t


# ---------------------------------------------------------------- more: open / owner / features
@trace
def t_open_release_cycles():
    t = Trace("open_release_cycles", ["release-reopen", "pin-release", "open-ebusy", "as-lazy"],
              "Eight open / map / release cycles on the same node: every cycle starts with no AS "
              "(INVALIDATE -> EINVAL), maps the same iovas without EEXIST, and ends with VmPin 0.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.release()
    for i in range(8):
        t.open().owner().features(ASIDF if i % 2 else PERSIST)
        t.inv(0x1000, PG, c="EFAULT (EINVAL): fresh fd, no AS")
        t.update(0x1000, 2 * PG, U + (i % 4) * PG, asid=i % 2)
        t.update(0x8000, PG, U + 7 * PG)
        if i % 3 == 0:
            t.status(DRIVER_OK)
        t.open(c="EBUSY")
        t.release(c="VmPin 0")
    t.open().release()
    return t


@trace
def t_msgs_before_owner_v1():
    t = Trace("msgs_before_owner_v1", ["msg-no-owner", "wire-v1v2", "wire-efault"],
              "v1 messages before SET_OWNER fail in the handler with EPERM like v2 ones; nothing acked.")
    t.open().mmap(U, PG)
    t.update(0x1000, PG, U, version=1, c="EFAULT (EPERM)")
    t.inv(0x1000, PG, version=1, c="EFAULT (EPERM)")
    t.begin(version=1, c="EFAULT (EPERM)")
    t.end(version=1, c="EFAULT (EPERM)")
    t.owner()
    t.update(0x1000, PG, U, version=1, c="ok")
    t.release()
    return t


@trace
def t_features_before_owner():
    t = Trace("features_before_owner", ["feat-replace", "ioctl-no-owner", "wire-asid"],
              "Backend features acked before SET_OWNER stay acked after it (SET_OWNER does not reset "
              "them): asid 1 is AS 1.")
    t.open().get_features().features(ASIDF, c="before the owner").owner().mmap(U, PG)
    t.update(0x1000, PG, U, asid=1, c="AS 1")
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL): no AS 0")
    t.get_features(c="0x17e")
    t.release()
    return t


@trace
def t_features_asid_dropped_in_batch():
    t = Trace("features_asid_dropped_in_batch", ["feat-replace", "batch-asid", "wire-asid"],
              "A batch opened on AS 1; IOTLB_ASID then un-acked: every v2 message now reads as asid 0 "
              "and mismatches the open batch (EINVAL), BATCH_END included, until IOTLB_ASID is acked "
              "again.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.begin(1)
    t.update(0x1000, PG, U, asid=1, c="ok")
    t.features(NOASID)
    t.update(0x3000, PG, U + PG, asid=1, c="read as asid 0: EFAULT (EINVAL) mismatch")
    t.end(1, c="read as asid 0: EFAULT (EINVAL) mismatch")
    t.end(0, version=1, c="v1 (asid 0): EFAULT (EINVAL)")
    t.features(ASIDF)
    t.end(1, c="ok now")
    t.update(0x3000, PG, U + PG, asid=0, c="ok")
    t.release()
    return t


@trace
def t_features_persist_only():
    t = Trace("features_persist_only", ["feat-any", "reset-flags", "wire-asid", "reset-keeps-vhost"],
              "IOTLB_PERSIST acked alone (no MSG_V2/BATCH/ASID): v2 messages and batches still work, "
              "the asid is ignored, SET_STATUS(0) is a plain reset.")
    t.setup(["IOTLB_PERSIST"], mem=[(U, 2 * PG)])
    t.begin(1, c="asid ignored: AS 0")
    t.update(0x1000, PG, U, asid=1)
    t.end(0)
    t.status(DRIVER_OK)
    t.status(0, c="reset() (PERSIST)")
    t.update(0x1000, PG, U + PG, c="EFAULT (EEXIST)")
    t.release()
    return t


@trace
def t_features_get_after_refused():
    t = Trace("features_get_after_refused", ["feat-get", "feat-unknown", "feat-desc-asid"],
              "GET_BACKEND_FEATURES keeps answering the offered set (0x17e) after refused and accepted "
              "SET_BACKEND_FEATURES calls and after release.")
    t.open().owner().get_features()
    t.features(0x1FF, c="all nine low bits incl. DESC_ASID: EOPNOTSUPP (bit 0 unknown)")
    t.get_features(c="0x17e")
    t.features(0x1FE, c="DESC_ASID|ASID...: EOPNOTSUPP (no get_vq_desc_group)")
    t.features(0x17E)
    t.get_features(c="0x17e")
    t.features(0x1000000000000, c="bit 48: EOPNOTSUPP")
    t.release()
    t.open().get_features().release()
    return t


# ---------------------------------------------------------------- more: wire
@trace
def t_wire_padding_ignored():
    t = Trace("wire_padding_ignored", ["wire-ret72", "wire-asid", "wire-v1v2"],
              "Bytes 34..71 of a 72-byte message (union padding) are never read: garbage there changes "
              "nothing; v1 hole bytes are skipped.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    base = raw_msg(2, 0x1000, PG, U, 3)
    t.write(base[:68] + "ab" * 38, c="UPDATE with 0xab padding: 72")
    t.write(raw_msg(2, 0x3000, PG, U + PG, 3, outer=1, hole=0xFFFFFFFF)[:68] + "ff" * 38,
            c="v1 UPDATE, hole and padding 0xff: AS 0, 72")
    t.write(raw_msg(3, 0x1000, PG, hole=0)[:68] + "01" * 38, c="INVALIDATE with padding: 72")
    t.update(0x1000, PG, U, c="ok: it was removed")
    t.update(0x3000, PG, U, c="EFAULT (EEXIST): the v1 UPDATE landed in AS 0")
    t.release()
    return t


@trace
def t_wire_zero_message():
    t = Trace("wire_zero_message", ["wire-outer", "wire-inner", "as-missing"],
              "72 zero bytes: outer type 0 -> EINVAL at write(). A v2 message of all zeros but the "
              "type: inner type 0 -> the handler (AS 0 missing -> EINVAL; existing -> EINVAL).")
    t.setup(ASIDF, mem=[(U, PG)])
    t.write("00" * 72, c="EINVAL")
    t.write("02000000" + "00" * 68, c="EFAULT (EINVAL): no AS 0")
    t.update(0x1000, PG, U)
    t.write("02000000" + "00" * 68, c="EFAULT (EINVAL): type 0")
    t.write("01000000" + "00" * 68, c="v1 type 0: EFAULT (EINVAL)")
    t.release()
    return t


@trace
def t_wire_batch_raw_asid():
    t = Trace("wire_batch_raw_asid", ["wire-asid", "batch-asid", "batch"],
              "Raw v2 BATCH messages with the asid in bytes 4..7: with IOTLB_ASID acked asid 1 opens an "
              "AS-1 batch; the same bytes with IOTLB_ASID not acked are asid 0.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.write(raw_msg(5, hole=1), c="BATCH_BEGIN asid 1")
    t.update(0x1000, PG, U, asid=0, c="EFAULT (EINVAL): mismatch")
    t.write(raw_msg(2, 0x1000, PG, U, 3, hole=1), c="UPDATE asid 1: ok")
    t.write(raw_msg(6, hole=1), c="BATCH_END asid 1")
    t.features(NOASID)
    t.write(raw_msg(5, hole=1), c="BATCH_BEGIN, asid bytes ignored: AS 0")
    t.update(0x1000, PG, U + PG, asid=0, c="ok in AS 0")
    t.write(raw_msg(6, hole=1), c="BATCH_END AS 0")
    t.release()
    return t


# ---------------------------------------------------------------- more: size 0 / wrap
@trace
def t_size0_invalidate_multipage():
    t = Trace("size0_invalidate_multipage", ["size0-inv-gt0", "pin-runs", "va-vma", "inv-whole"],
              "Size-0 INVALIDATE inside a 4-page UPDATE: VA: one entry (one memfd VMA) containing "
              "iova-1 and iova -> removed whole. PA: removed iff the run holding page 1 also holds page "
              "2 (physical placement recorded by the runner).")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x10000, 4 * PG, U)
    t.inv(0x12000, 0, c="VA: the entry goes; PA: the run spanning 0x11fff..0x12000, if any")
    t.update(0x10000, PG, U, c="VA: ok; PA: ok iff pages 0..2 are one run")
    t.inv(0x10000, 4 * PG)
    t.release()
    return t


@trace
def t_size0_invalidate_empty_as():
    t = Trace("size0_invalidate_empty_as", ["size0-inv-0", "as-lazy", "as-missing"],
              "Size-0 INVALIDATE at iova 0 on an AS that exists but is empty (created by BATCH_BEGIN): "
              "accepted no-op; on AS 1 never created: EINVAL.")
    t.setup(ASIDF)
    t.begin(0).end(0)
    t.inv(0, 0, c="ok, nothing to remove")
    t.inv(0, 0, asid=1, c="EFAULT (EINVAL)")
    t.inv(0x1000, 0, c="ok")
    t.release()
    return t


@trace
def t_inv_wrap_from_one():
    t = Trace("inv_wrap_from_one", ["inv-wrap", "range-wrap", "page-expand"],
              "INVALIDATE(1, 2^64-1) = [1, 2^64-1] does not wrap (removes all but page 0... and page 0 "
              "too, it holds byte 1). INVALIDATE(2, 2^64-1) is the wrapped query [2, 0]: it removes only "
              "an entry holding both 0 and 2 (page 0). INVALIDATE(0, 2^64-1) = [0, 2^64-2] removes all.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0, PG, U, c="page 0")
    t.update(0x10000, PG, U + PG)
    t.update(U64 - 0xFFF, PG, U + 2 * PG, c="last page")
    t.inv(2, U64, c="[2, 0] wrapped: page 0 removed only")
    t.update(0, PG, U + 3 * PG, c="ok")
    t.update(0x10000, PG, U + 3 * PG, c="EFAULT (EEXIST)")
    t.update(U64 - 0xFFF, PG, U + 3 * PG, c="EFAULT (EEXIST)")
    t.inv(3, U64, c="[3, 1]: page 0 holds 1..3 -> removed")
    t.update(0, 0x800, U + 3 * PG, c="ok: PA page 0; VA [0, 0x7ff]")
    t.inv(0x800, U64, c="[0x800, 0x7fe]: PA page 0 holds both -> removed; VA [0, 0x7ff] does not hold "
                       "0x800 -> kept")
    t.update(0, PG, U + 3 * PG, c="PA: ok; VA: EFAULT (EEXIST)")
    t.inv(1, U64, c="[1, 2^64-1], no wrap: everything")
    t.update(0x10000, PG, U + 3 * PG, c="ok")
    t.update(U64 - 0xFFF, PG, U + 3 * PG, c="ok")
    t.inv(0, U64, c="[0, 2^64-2]: everything (the last page overlaps)")
    t.release()
    return t


@trace
def t_range_first_page():
    t = Trace("range_first_page", ["range-get", "range-top", "eexist"],
              "iova 0 is mappable (range.first = 0): page 0, byte 0; the first and last pages coexist.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0, 1, U, c="byte 0: PA page 0; VA [0, 0]")
    t.update(1, 1, U + 1, c="PA: EFAULT (EEXIST); VA: ok")
    t.update(U64 - 0xFFF, PG, U + PG)
    t.update(0, PG, U + 2 * PG, c="EFAULT (EEXIST) in both")
    t.add("get_iova_range", c="[0, 2^64-1]")
    t.inv(0, U64, c="all")
    t.update(0, PG, U + 2 * PG, c="ok")
    t.release()
    return t


# ---------------------------------------------------------------- more: overlap / batch
@trace
def t_eexist_in_batch():
    t = Trace("eexist_in_batch", ["eexist", "batch", "unpin-failed"],
              "Inside a batch the overlap check is immediate: EEXIST on the second UPDATE; the batch "
              "stays open and BATCH_END hands set_map parents the entries that did go in.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.begin()
    t.update(0x1000, 2 * PG, U)
    t.update(0x2000, PG, U + 2 * PG, c="EFAULT (EEXIST), nothing pinned")
    t.update(0x3000, PG, U + 3 * PG, c="ok: still in the batch")
    t.end(c="one set_map (set_map parents)")
    t.update(0x3000, PG, U + 3 * PG, c="EFAULT (EEXIST)")
    t.release()
    return t


@trace
def t_batch_on_as1():
    t = Trace("batch_on_as1", ["batch", "as-lazy", "batch-asid"],
              "A batch on AS 1 only: BATCH_BEGIN(1) creates AS 1; BATCH_END(1) -> set_map(1) (set_map "
              "parents); AS 0 is never created.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.begin(1)
    t.update(0x1000, PG, U, asid=1)
    t.update(0x3000, 2 * PG, U + PG, asid=1)
    t.inv(0x1000, PG, asid=1)
    t.end(1)
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL): AS 0 never created")
    t.inv(0x3000, 2 * PG, asid=1)
    t.release()
    return t


@trace
def t_batch_v1_mismatch():
    t = Trace("batch_v1_mismatch", ["batch-v1", "batch-asid", "wire-asid"],
              "A v1 message is asid 0: while an AS-1 batch is open, v1 UPDATE/BATCH_BEGIN/BATCH_END "
              "fail with EINVAL (mismatch).")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.begin(1)
    t.update(0x1000, PG, U, version=1, c="EFAULT (EINVAL)")
    t.begin(version=1, c="EFAULT (EINVAL)")
    t.end(version=1, c="EFAULT (EINVAL)")
    t.end(1)
    t.update(0x1000, PG, U, version=1, c="ok")
    t.release()
    return t


@trace
def t_batch_memlock_in_batch():
    t = Trace("batch_memlock_in_batch", ["memlock", "batch", "unpin-failed"],
              "ENOMEM (PA) inside a batch: the failing UPDATE leaves nothing, the batch goes on.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.memlock(4)
    t.begin()
    t.update(0x1000, 3 * PG, U)
    t.update(0x8000, 2 * PG, U + 3 * PG, c="PA: EFAULT (ENOMEM); VA: ok")
    t.update(0xA000, PG, U + 5 * PG, c="PA: 4 pinned, ok")
    t.end()
    t.memlock("unlimited")
    t.update(0x8000, 2 * PG, U + 3 * PG, c="PA: ok; VA: EFAULT (EEXIST)")
    t.release()
    return t


@trace
def t_batch_many_small():
    t = Trace("batch_many_small", ["batch", "pin-count", "inv-multi"],
              "A QEMU-like transaction of 64 one-page UPDATEs in one batch, then 64 INVALIDATEs in "
              "another: set_map parents get one set_map per BATCH_END; VmPin 64 then 0.")
    t.setup(ASIDF, mem=[(U, 64 * PG)])
    t.begin()
    for i in range(64):
        t.update(0x100000 + i * 0x2000, PG, U + i * PG, perm="RO" if i % 3 == 0 else "RW")
    t.end()
    t.begin()
    for i in range(64):
        t.inv(0x100000 + i * 0x2000, PG)
    t.end()
    t.release()
    return t


# ---------------------------------------------------------------- more: pins / memory
@trace
def t_pin_overlapping_uaddr():
    t = Trace("pin_overlapping_uaddr", ["pin-twice", "pin-unpin-inv", "pin-count"],
              "Two UPDATEs whose user ranges overlap by two pages: those pages are pinned twice "
              "(VmPin 4 + 4 = 8), and unpinned once per entry.")
    t.setup(ASIDF, mem=[(U, 6 * PG)])
    t.update(0x10000, 4 * PG, U, c="8 in total after the next")
    t.update(0x20000, 4 * PG, U + 2 * PG, c="VmPin 8 (PA)")
    t.inv(0x10000, 4 * PG, c="4")
    t.update(0x10000, 2 * PG, U + 4 * PG, asid=1, c="6")
    t.release(c="0")
    return t


@trace
def t_memlock_subpage_boundary():
    t = Trace("memlock_subpage_boundary", ["memlock", "uaddr-offset", "page-expand"],
              "The memlock check counts PFN_UP(size + (iova & 0xfff)): a 4 KiB UPDATE at iova offset "
              "0x800 is 2 pages. Limit 2: it fits exactly, one more page does not.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.memlock(2)
    t.update(0x1800, PG, U, c="2 pages: ok")
    t.update(0x8000, 1, U + 2 * PG, c="PA: EFAULT (ENOMEM); VA: ok")
    t.memlock(1)
    t.inv(0x1800, PG, c="[0x1800, 0x27ff]: both pages (whatever the runs)")
    t.update(0x1800, 0x800, U + 0x800, c="1 page: PA ok")
    t.memlock("unlimited")
    t.release()
    return t


@trace
def t_memlock_release_frees():
    t = Trace("memlock_release_frees", ["memlock", "pin-release", "release-reopen"],
              "pinned_vm is the mm's: pins of a released fd no longer count against RLIMIT_MEMLOCK.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    t.memlock(8)
    t.update(0x1000, 8 * PG, U, c="8: limit reached (PA)")
    t.update(0x20000, PG, U, c="PA: EFAULT (ENOMEM)")
    t.release(c="VmPin 0")
    t.open().owner().features(ASIDF)
    t.update(0x20000, 8 * PG, U, c="ok: the old pins are gone")
    t.memlock("unlimited")
    t.release()
    return t


@trace
def t_va_memfd_then_anon():
    t = Trace("va_memfd_then_anon", ["va-vma", "va-anon", "pin-count"],
              "One UPDATE over a memfd mapping followed by an adjacent anonymous one: VA maps only the "
              "memfd piece (one entry for the first 2 pages); PA pins all 4 pages.")
    t.setup(ASIDF, mem=[(U, 2 * PG, "memfd"), (U + 2 * PG, 2 * PG, "anon")])
    t.update(0x10000, 4 * PG, U, c="VA: entry [0x10000, 0x11fff]; PA: 4 pages")
    t.update(0x12000, 2 * PG, U, c="VA: ok; PA: EFAULT (EEXIST)")
    t.update(0x11000, PG, U, c="EFAULT (EEXIST) in both")
    t.inv(0x10000, 4 * PG)
    t.update(0x20000, 4 * PG, U + 0x0, asid=1, c="same in AS 1")
    t.release()
    return t


@trace
def t_va_anon_then_memfd():
    t = Trace("va_anon_then_memfd", ["va-vma", "va-anon"],
              "Anonymous memory first, memfd after: VA maps the memfd piece at its iova offset "
              "(iova + 2 pages) and leaves the first 2 pages of iova unmapped.")
    t.setup(ASIDF, mem=[(U, 2 * PG, "anon"), (U + 2 * PG, 2 * PG, "memfd")])
    t.update(0x10000, 4 * PG, U, c="VA: entry [0x12000, 0x13fff] only")
    t.update(0x10000, 2 * PG, U + 2 * PG, c="VA: ok; PA: EFAULT (EEXIST)")
    t.update(0x12000, PG, U + 2 * PG, c="EFAULT (EEXIST) in both")
    t.inv(0x10000, 4 * PG)
    t.release()
    return t


@trace
def t_va_hole_between_memfds():
    t = Trace("va_hole_between_memfds", ["va-vma", "pa-unmapped", "unpin-failed"],
              "memfd | hole | memfd in one UPDATE. VA: entry 1 = the first memfd; find_vma(hole) returns "
              "the second memfd, so entry 2 covers the hole and the second memfd. PA: the pin stops at "
              "the hole -> ENOMEM (partial pin), nothing left.")
    t.setup(ASIDF, mem=[(U, 2 * PG, "memfd"), (U + 4 * PG, 2 * PG, "memfd")])
    t.update(0x10000, 6 * PG, U, c="PA: EFAULT (ENOMEM); VA: 2 entries")
    t.update(0x12000, PG, U + 4 * PG, c="PA: ok; VA: EFAULT (EEXIST) (the hole piece is mapped)")
    t.update(0x10000, PG, U, c="PA: ok; VA: EFAULT (EEXIST)")
    t.inv(0, U64)
    t.release()
    return t


@trace
def t_munmap_partial():
    t = Trace("munmap_partial", ["munmap", "va-vma", "pa-unmapped", "va-anon"],
              "munmap of the middle of a memfd mapping splits the VMA: an UPDATE over the whole old "
              "range then gives VA two entries (the hole is absorbed by the piece of the upper VMA) "
              "and PA an ENOMEM (partial pin).")
    t.setup(ASIDF, mem=[(U, 4 * PG, "memfd"), (U + 0x100000, PG, "anon")])
    t.munmap(U + PG, PG)
    t.update(0x10000, 4 * PG, U, c="PA: EFAULT (ENOMEM); VA: entries [0x10000, 0x10fff] and "
                                   "[0x11000, 0x13fff]")
    t.update(0x13000, PG, U + 3 * PG, c="PA: ok; VA: EFAULT (EEXIST)")
    t.inv(0, U64)
    t.munmap(U, 4 * PG)
    t.update(0x10000, PG, U, c="PA: EFAULT (EFAULT); VA: ok, no entry (next VMA is anon)")
    t.release()
    return t


@trace
def t_munmap_remap_anon():
    t = Trace("munmap_remap_anon", ["munmap", "va-anon", "va-vma", "pin-count"],
              "The same user range first memfd, then (after munmap) anonymous: VA maps it the first "
              "time and skips it the second; PA pins both times.")
    t.setup(ASIDF, mem=[(U, 2 * PG, "memfd")])
    t.update(0x10000, 2 * PG, U)
    t.inv(0x10000, 2 * PG)
    t.munmap(U, 2 * PG)
    t.mmap(U, 2 * PG, "anon")
    t.update(0x10000, 2 * PG, U, c="PA: ok (VmPin 2); VA: ok, no entry")
    t.update(0x10000, 2 * PG, U, c="PA: EFAULT (EEXIST); VA: ok")
    t.release()
    return t


@trace
def t_pin_churn():
    t = Trace("pin_churn", ["pin-count", "pin-unpin-inv", "eexist"],
              "40 UPDATE / INVALIDATE cycles at the same iova with alternating perms and uaddrs: VmPin "
              "goes 0 -> 2 -> 0 every time; no EEXIST.")
    t.setup(ASIDF, mem=[(U, 8 * PG)])
    for i in range(40):
        t.update(0x40000, 2 * PG, U + (i % 4) * 2 * PG, perm=("RO", "RW", "WO", 0)[i % 4])
        t.inv(0x40000 + (i % 2) * PG, 1, c="the run holding this page (PA) / the entry (VA)")
        t.inv(0x40000, 2 * PG, c="the rest, if the runs were split")
    t.release()
    return t


# ---------------------------------------------------------------- more: perms
@trace
def t_perm_subpage_and_as1():
    t = Trace("perm_subpage_and_as1", ["perm", "pin-twice", "page-expand"],
              "The same page with different perms in AS 0 (WO) and AS 1 (RO); a sub-page UPDATE with "
              "perm 0xff; all accepted.")
    t.setup(ASIDF, mem=[(U, 2 * PG)])
    t.update(0x1000, PG, U, perm="WO")
    t.update(0x1000, PG, U, perm="RO", asid=1)
    t.update(0x3400, 0x100, U + PG + 0x400, perm=0xFF)
    t.update(0x3000, 0x100, U + PG, perm=0x80, c="PA: EFAULT (EEXIST); VA: ok")
    t.release()
    return t


# ---------------------------------------------------------------- more: ASIDs / groups
@trace
def t_asid_created_by_begin_only():
    t = Trace("asid_created_by_begin_only", ["as-lazy", "batch-end-alone", "as-missing"],
              "An AS created by BATCH_BEGIN alone (no UPDATE) exists: INVALIDATE and BATCH_END on it "
              "succeed afterwards; INVALIDATE does not create one.")
    t.setup(ASIDF)
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL)")
    t.begin(1)
    t.end(1)
    t.inv(0x1000, PG, asid=1, c="ok")
    t.end(1, c="ok, no batch")
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL)")
    t.release()
    return t


@trace
def t_group_asid_then_release():
    t = Trace("group_asid_then_release", ["group-bounds", "vring-group", "release-reopen", "as-independent"],
              "SET_GROUP_ASID state does not leak into a new fd's vhost ASes: after release and reopen "
              "AS 1 does not exist even though the CVQ group was bound to it; the groups themselves are "
              "fixed (GET_VRING_GROUP unchanged).")
    t.setup(ASIDF, mem=[(U, PG)])
    t.group_asid(1, 1)
    t.update(0x1000, PG, U, asid=1)
    t.release()
    t.open().owner().features(ASIDF)
    t.vring_group(2, c="1")
    t.inv(0x1000, PG, asid=1, c="EFAULT (EINVAL)")
    t.group_asid(1, 1, c="0")
    t.group_asid(1, 1, c="0 again (idempotent)")
    t.release()
    return t


@trace
def t_group_asid_all_combinations():
    t = Trace("group_asid_all_combinations", ["group-bounds", "group-busy", "status"],
              "Every (group, asid) in [0, 4) x [0, 3) before and after DRIVER_OK: before, ENOBUFS for "
              "group 3, EINVAL for group 2 or asid 2, else 0; after DRIVER_OK the same on 6.12, and "
              "EBUSY instead of 0 on 7.2.")
    t.setup(ASIDF)
    for phase in ("before", "after"):
        if phase == "after":
            t.status(DRIVER_OK)
        for g in range(4):
            for a in range(3):
                t.group_asid(g, a)
    t.status(0)
    t.release()
    return t


# ---------------------------------------------------------------- more: status / reset
@trace
def t_status_reopen():
    t = Trace("status_reopen", ["status", "release-reset", "release-reopen"],
              "The status is reset at release/open: DRIVER_OK on one fd, 0 on the next. SET_STATUS "
              "DRIVER_OK straight from 0 is accepted (only clearing bits is refused).")
    t.setup(ASIDF)
    t.status(DRIVER_OK, c="0 -> 0xf directly: ok")
    t.get_status(c="0xf")
    t.release()
    t.open().get_status(c="0").owner().status(["DRIVER_OK"], c="0x4 alone: ok").get_status(c="4")
    t.status(["ACKNOWLEDGE", "DRIVER_OK"]).get_status(c="5")
    t.release()
    return t


@trace
def t_reset_twice_and_zero():
    t = Trace("reset_twice_and_zero", ["reset-flags", "reset-keeps-vhost", "status"],
              "SET_STATUS(0) on a device already at status 0 still resets it (compat_reset(CLEAN_MAP) "
              "without PERSIST) -- twice in a row; the vhost IOTLB never changes.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.update(0x1000, PG, U)
    t.status(0, c="compat_reset(1)")
    t.status(0, c="compat_reset(1) again")
    t.get_status(c="0")
    t.update(0x1000, PG, U, c="EFAULT (EEXIST)")
    t.release()
    return t


@trace
def t_reset_persist_invalidate():
    t = Trace("reset_persist_invalidate", ["reset-flags", "reset-device", "batch"],
              "PERSIST acked: SET_STATUS(0) keeps the device maps (no pt), so an INVALIDATE afterwards "
              "is a plain dma_unmap of that entry (dma_map parents) / set_map (set_map parents), in and "
              "out of a batch.")
    t.setup(PERSIST, mem=[(U, 4 * PG)])
    t.update(0x1000, PG, U)
    t.update(0x3000, PG, U + PG)
    t.update(0x1000, PG, U + 2 * PG, asid=1)
    t.status(DRIVER_OK)
    t.status(0)
    t.inv(0x1000, PG)
    t.begin(1)
    t.inv(0x1000, PG, asid=1)
    t.end(1)
    t.update(0x1000, PG, U + 3 * PG, c="ok")
    t.release()
    return t


@trace
def t_reset_in_batch_persist():
    t = Trace("reset_in_batch_persist", ["batch-reset", "reset-flags", "batch"],
              "With PERSIST acked and a batch open on AS 1, SET_STATUS(0) leaves the batch open: a "
              "message for AS 0 still fails; BATCH_END(1) then set_maps AS 1.")
    t.setup(PERSIST, mem=[(U, 2 * PG)])
    t.begin(1)
    t.update(0x1000, PG, U, asid=1)
    t.status(DRIVER_OK)
    t.status(0)
    t.update(0x1000, PG, U + PG, asid=0, c="EFAULT (EINVAL): batch still bound to AS 1")
    t.end(1)
    t.update(0x1000, PG, U + PG, asid=0, c="ok")
    t.release()
    return t


# ---------------------------------------------------------------- more: suspend
@trace
def t_suspend_without_ack_and_resume_alone():
    t = Trace("suspend_resume_unacked", ["suspend-call", "suspend-noop", "feat-any"],
              "Nothing acked at all: SUSPEND/RESUME still call the parent once DRIVER_OK is set; "
              "RESUME without a prior SUSPEND also calls it.")
    t.setup(None)
    t.status(DRIVER_OK)
    t.resume(c="0, parent resume (never suspended)")
    t.suspend(c="0, parent suspend")
    t.status(DRIVER_OK + ["NEEDS_RESET"])
    t.suspend(c="0, parent suspend")
    t.status(0)
    t.suspend(c="0, no parent call")
    t.release()
    return t


@trace
def t_suspend_then_reset_and_release():
    t = Trace("suspend_then_release", ["suspend-call", "suspend-maps", "release-reset", "pin-release"],
              "Suspended with mappings in both ASes, then released: release resets (clearing "
              "suspended) and removes both ASes, VmPin 0.")
    t.setup(QEMU, mem=[(U, 4 * PG)])
    t.update(0x1000, 2 * PG, U)
    t.update(0x1000, 2 * PG, U + 2 * PG, asid=1)
    t.status(DRIVER_OK)
    t.suspend()
    t.update(0x10000, PG, U, c="ok while suspended")
    t.release()
    return t


# ---------------------------------------------------------------- more: GET ioctls
@trace
def t_get_ioctls_states():
    t = Trace("get_ioctls_states", ["get-nums", "range-get", "feat-get", "status"],
              "GET_IOVA_RANGE, GET_AS_NUM, GET_GROUP_NUM, GET_VQS_COUNT, GET_BACKEND_FEATURES do not "
              "change with the state: before owner, after features, at DRIVER_OK, after reset, after "
              "reopen.")
    t.open().gets(c="before owner").get_features()
    t.owner().features(PERSIST).gets()
    t.status(DRIVER_OK).gets().get_features()
    t.status(0).gets()
    t.release()
    t.open().owner().gets().get_features()
    t.release()
    return t


# ---------------------------------------------------------------- more: QEMU-like
@trace
def t_qemu_persist_skip():
    t = Trace("qemu_persist_skip", ["qemu", "reset-flags", "reset-keeps-vhost", "pin-count", "suspend-call"],
              "What IOTLB_PERSIST would let a VMM do (§6.4): stop (SUSPEND, SET_STATUS(0)) and start "
              "again without the INVALIDATE-all / UPDATE-all cycle: the vhost entries and the pins "
              "stay throughout; with PERSIST the device kept its maps too (plain reset).")
    t.setup(QEMU + ["IOTLB_PERSIST"], mem=[(U, 2 * MiB)])
    t.status(ACK_DRIVER).status(FEAT_OK)
    t.begin()
    t.update(0, 0xA0000, U)
    t.update(0x100000, 0x100000, U + 0x100000)
    t.end()
    t.status(DRIVER_OK)
    t.suspend()
    t.status(0, c="reset() -- PERSIST")
    t.status(ACK_DRIVER).status(FEAT_OK).status(DRIVER_OK, c="start without re-mapping")
    t.update(0, 0xA0000, U, c="EFAULT (EEXIST): still mapped")
    t.release()
    return t


@trace
def t_qemu_no_batch():
    t = Trace("qemu_no_batch", ["qemu", "batch", "wire-v1v2"],
              "An old VMM that acks only IOTLB_MSG_V2 (no BATCH): every listener UPDATE / INVALIDATE "
              "is sent unbatched (set_map parents get a set_map per message).")
    t.setup(["IOTLB_MSG_V2"], mem=[(U, 2 * MiB), (U + 0x1000000, 0x40000)])
    t.status(ACK_DRIVER).status(FEAT_OK)
    t.update(0, 0xA0000, U)
    t.update(0xC0000, 0x20000, U + 0x1000000, perm="RO")
    t.update(0x100000, 0x100000, U + 0x100000)
    t.update(0xFFFC0000, 0x40000, U + 0x1000000, perm="RO", c="same ROM pages at a second iova")
    t.status(DRIVER_OK)
    t.status(0)
    t.status(ACK_DRIVER)
    t.inv(0, 0xA0000)
    t.inv(0xC0000, 0x20000)
    t.inv(0x100000, 0x100000)
    t.inv(0xFFFC0000, 0x40000)
    t.release()
    return t


@trace
def t_qemu_viommu_small():
    t = Trace("qemu_viommu_small", ["qemu", "inv-whole", "eexist", "perm"],
              "A guest vIOMMU: unbatched UPDATE / INVALIDATE per guest map/unmap at IOVAs unrelated to "
              "the guest-physical layout, RO and RW, with a re-map of a still-mapped IOVA (EEXIST) and "
              "an unmap of an unmapped one (no-op).")
    t.setup(QEMU, mem=[(U, 64 * PG)])
    t.status(ACK_DRIVER).status(FEAT_OK).status(DRIVER_OK)
    iova = 0x10000000
    for i in range(12):
        t.update(iova + i * 0x10000, (1 + i % 3) * PG, U + (i * 5 % 60) * PG,
                 perm="RO" if i % 2 else "RW")
    t.update(iova + 0x10000, PG, U, c="EFAULT (EEXIST)")
    for i in range(0, 12, 2):
        t.inv(iova + i * 0x10000, (1 + i % 3) * PG)
    t.inv(iova + 0x200000, PG, c="nothing there: ok")
    for i in range(0, 12, 2):
        t.update(iova + i * 0x10000, PG, U + i * PG)
    t.inv(iova, 0x200000)
    t.release()
    return t


@trace
def t_qemu_shadow_data():
    t = Trace("qemu_shadow_data", ["qemu", "as-independent", "group-bounds", "batch"],
              "Shadow data virtqueues: guest RAM mapped at IOVAs allocated first-fit from 0x1000 (not "
              "at GPAs), SVQ rings in the same AS, the CVQ in AS 1; then a stop that unmaps all.")
    t.setup(QEMU, mem=[(U, 2 * MiB), (U + 0x1000000, 8 * PG)])
    t.status(ACK_DRIVER).status(FEAT_OK)
    t.vring_group(2).group_asid(1, 1)
    t.begin()
    t.update(0x1000, 0xA0000, U, c="ram-low at IOVA 0x1000")
    t.update(0xA1000, 0x100000, U + 0x100000, c="ram-below-4g next")
    t.end()
    t.update(0x1A1000, PG, U + 0x1000000, perm="RO", c="SVQ rx ring")
    t.update(0x1A2000, PG, U + 0x1001000, c="SVQ rx used")
    t.update(0x1000, PG, U + 0x1002000, perm="RO", asid=1)
    t.update(0x2000, PG, U + 0x1003000, asid=1)
    t.status(DRIVER_OK)
    t.suspend()
    t.status(0)
    t.inv(0x1A1000, 2 * PG)
    t.inv(0x1000, 2 * PG, asid=1)
    t.begin()
    t.inv(0x1000, 0xA0000)
    t.inv(0xA1000, 0x100000)
    t.end()
    t.release()
    return t


@trace
def t_qemu_hot_resize():
    t = Trace("qemu_hot_resize", ["qemu", "batch", "inv-whole", "pin-count"],
              "A memory transaction that replaces a section by a bigger one (old deleted before new "
              "added, §6.3) and one that adds a DIMM, all in batches.")
    t.setup(QEMU, mem=[(U, 4 * MiB)])
    t.begin()
    t.update(0x100000, 0x100000, U + 0x100000)
    t.end()
    t.status(DRIVER_OK)
    t.begin()
    t.inv(0x100000, 0x100000)
    t.update(0x100000, 0x200000, U + 0x100000, c="resized")
    t.end()
    t.begin()
    t.update(0x100000000, 0x100000, U + 0x300000, c="DIMM")
    t.end()
    t.begin()
    t.inv(0x100000000, 0x100000)
    t.end()
    t.release()
    return t


@trace
def t_rust_vmm_style():
    t = Trace("rust_vmm_style", ["wire-v1v2", "wire-asid", "qemu"],
              "rust-vmm vhost style: v1 messages when IOTLB_MSG_V2 is not acked, asid always 0, no "
              "batching, one UPDATE / INVALIDATE per dma_map/dma_unmap.")
    t.setup([], mem=[(U, 16 * PG)])
    t.add("get_iova_range").add("get_as_num").add("get_group_num")
    for i in range(6):
        t.update(0x100000 + i * 0x4000, 2 * PG, U + i * 2 * PG, perm="RO" if i == 3 else "RW", version=1)
    for i in range(6):
        t.inv(0x100000 + i * 0x4000, 2 * PG, version=1)
    t.release()
    return t


@trace
def t_invalidate_twice():
    t = Trace("invalidate_twice", ["inv-whole", "batch", "size0-inv-0"],
              "The same INVALIDATE twice: the second removes nothing and still succeeds; set_map "
              "parents get a set_map for each (unbatched), dma_map parents a dma_unmap only the first "
              "time.")
    t.setup(ASIDF, mem=[(U, PG)])
    t.update(0x1000, PG, U)
    t.inv(0x1000, PG)
    t.inv(0x1000, PG, c="no-op, 72; set_map parents: set_map again")
    t.inv(0, 0, c="no-op")
    t.release()
    return t


@trace
def t_eexist_caller_range():
    t = Trace("eexist_caller_range", ["eexist", "page-expand"],
              "The overlap test uses the caller's unaligned [iova, iova+size-1] against page-expanded "
              "(PA) or exact (VA) entries: after UPDATE(0x1800, 0x800) PA holds [0x1000, 0x1fff], VA "
              "[0x1800, 0x1fff]; UPDATE(0x800, 0x800) = [0x800, 0xfff] touches neither (PA maps page 0), "
              "UPDATE(0, 0x800) then conflicts in PA only, UPDATE(0xfff, 2) in both.")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0x1800, 0x800, U + PG + 0x800)
    t.update(0x800, 0x800, U + 0x800, c="ok in both (PA: page 0 = [0, 0xfff])")
    t.update(0, 0x800, U, c="PA: EFAULT (EEXIST); VA: ok")
    t.update(0xFFF, 2, U + 0xFFF, c="EFAULT (EEXIST) in both")
    t.update(0x2000, 0x10, U + 2 * PG, c="ok in both")
    t.update(0x1FFF, 1, U + PG + 0xFFF, c="EFAULT (EEXIST) in both")
    t.release()
    return t


@trace
def t_inv_huge_sizes():
    t = Trace("inv_huge_sizes", ["inv-wrap", "inv-whole", "full-space"],
              "INVALIDATEs with huge sizes: (0x1000, 2^64-0x1000) = [0x1000, 2^64-1] (no wrap) removes "
              "all but page 0; (2^63, 2^63+1) wraps to [2^63, 0] and removes only an entry holding both "
              "0 and 2^63 (none).")
    t.setup(ASIDF, mem=[(U, 4 * PG)])
    t.update(0, PG, U)
    t.update(H, PG, U + PG)
    t.update(U64 - 0xFFF, PG, U + 2 * PG)
    t.inv(H, H + 1, c="[2^63, 0] wrapped: nothing")
    t.update(H, PG, U + 3 * PG, c="EFAULT (EEXIST)")
    t.inv(0x1000, U64 - 0xFFF, c="[0x1000, 2^64-1]: 2^63 and the last page")
    t.update(H, PG, U + 3 * PG, c="ok")
    t.update(0, PG, U + 3 * PG, c="EFAULT (EEXIST): page 0 stays")
    t.inv(0, 1, c="page 0")
    t.inv(H - 0x1000, 0x1001, c="[2^63-0x1000, 2^63]: the page at 2^63")
    t.update(0, 2 * PG, U, c="ok")
    t.release()
    return t


@trace
def t_batch_without_ack():
    t = Trace("batch_without_ack", ["batch", "feat-any", "batch-asid"],
              "vhost-vdpa never checks IOTLB_BATCH: with no backend feature acked, BATCH_BEGIN/END "
              "still defer set_map to BATCH_END and bind the batch to AS 0.")
    t.setup([], mem=[(U, 4 * PG)])
    t.begin()
    t.update(0x1000, PG, U)
    t.update(0x3000, PG, U + PG)
    t.end(c="one set_map (set_map parents)")
    t.begin()
    t.inv(0x1000, 0x3000)
    t.end()
    t.release()
    return t


@trace
def t_asid_only_ack():
    t = Trace("asid_only_ack", ["wire-asid", "feat-any", "as-nas"],
              "IOTLB_ASID acked alone (no IOTLB_MSG_V2): the v2 asid is read all the same.")
    t.setup(["IOTLB_ASID"], mem=[(U, 2 * PG)])
    t.update(0x1000, PG, U, asid=1, c="AS 1")
    t.inv(0x1000, PG, asid=0, c="EFAULT (EINVAL): no AS 0")
    t.update(0x1000, PG, U + PG, asid=2, c="EFAULT (EINVAL)")
    t.release()
    return t


# ============================================================================ scenarios
SCENARIO_GUEST = "4M"


def _scenario_traces() -> List[Tuple[str, List[dict]]]:
    """Record every scenario x backend variant x PERSIST cell of the scenario library
    (what ``iotlb matrix --record DIR --guest-size 4M`` writes), move their user
    addresses into the window, and merge identical recordings."""
    from iotlb.scenarios import GuestLayout, default_specs, run_matrix

    guest = GuestLayout(SCENARIO_GUEST)
    # the backends the corpus was recorded from, named: an installed plugin (or a new
    # built-in) must not change the committed traces
    cells = run_matrix(default_specs(["platform_iommu", "vdpa_sim", "mlx5"]), None,
                       guest=guest)
    recorded = []
    for c in cells:
        for n, r in c.results.items():
            if r.status != "ok":
                continue
            recorded.append((c.backend, c.persist, n, [dict(op) for op in r.ops]))
    # user-address blocks (1 TiB each) -> consecutive 1 TiB blocks from the window base
    blocks = sorted({op["uaddr"] >> 40 for _, _, _, ops in recorded for op in ops if "uaddr" in op})
    offsets = {b: (WIN_LO + i * (1 << 40)) - (b << 40) for i, b in enumerate(blocks)}
    if WIN_LO + len(blocks) * (1 << 40) > WIN_HI:
        raise ValueError("too many user-address blocks for the window")
    groups: Dict[tuple, dict] = {}
    order: List[tuple] = []
    for backend, persist, name, ops in recorded:
        for op in ops:
            if "uaddr" in op:
                op["uaddr"] += offsets[op["uaddr"] >> 40]
        key = tuple(json.dumps({k: v for k, v in T.parse_op(json.loads(T.to_json(op))).items()
                                if k != "comment"}, sort_keys=True, default=str) for op in ops)
        if key not in groups:
            groups[key] = {"name": name, "ops": ops, "cells": []}
            order.append(key)
        groups[key]["cells"].append(f"{backend} / PERSIST {persist}")
    moves = ", ".join(f"{b << 40:#x} -> {(b << 40) + offsets[b]:#x} (+{offsets[b]:#x})"
                      if offsets[b] >= 0 else
                      f"{b << 40:#x} -> {(b << 40) + offsets[b]:#x} (-{-offsets[b]:#x})"
                      for b in blocks)
    out: List[Tuple[str, List[dict]]] = []
    per_name: Dict[str, int] = collections.Counter()
    for key in order:
        g = groups[key]
        per_name[g["name"]] += 1
    seen: Dict[str, int] = collections.Counter()
    for key in order:
        g = groups[key]
        name = g["name"]
        seen[name] += 1
        acked = next((op["features"] for op in g["ops"] if op["op"] == "set_backend_features"), 0)
        fname = (f"{name}.{'persist' if acked & 0x100 else 'nopersist'}"
                 + ("" if acked & 0x10 else ".nosuspend"))
        ops = g["ops"]
        added = ""
        if ops[-1]["op"] != "release":
            ops = ops + [{"op": "release", "comment": "added by make_corpus.py: leave the device "
                                                       "released"}]
            added = " A final release was appended."
        meta = {"op": "meta",
                "rules": [f"§6 scenario library: {name}", RULES["qemu"]],
                "comment": (f"Recorded from the scenario library (iotlb.scenarios.run_matrix, guest "
                            f"{SCENARIO_GUEST}) for the cells: " + "; ".join(g["cells"]) +
                            f". Backend features acked: {acked:#x}. User addresses moved into the "
                            f"trace window by one constant offset per 1 TiB host block: {moves}. "
                            "No mmap op: the runner maps memfd memory for every UPDATE implicitly."
                            + added)}
        out.append((fname, [meta] + ops))
    # a file name must be unique
    names = [n for n, _ in out]
    assert len(names) == len(set(names)), names
    return out


# ============================================================================ checks
def _page_range(uaddr: int, size: int) -> Tuple[int, int]:
    lo = uaddr & ~(PG - 1)
    hi = (uaddr + size + PG - 1) & ~(PG - 1)
    return lo, hi


def _union_len(ranges: List[Tuple[int, int]]) -> int:
    total, cur_lo, cur_hi = 0, None, None
    for lo, hi in sorted(ranges):
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None:
        total += cur_hi - cur_lo
    return total


def replay_model(ops: List[dict], *, use_va: bool, batch_mapping: bool):
    """Run parsed ``ops`` through the model on vdpa_sim; return (device, max pinned_vm,
    max memlock pages raised before a pin, results)."""
    from iotlb import IOTLBError
    from iotlb.backend import load_backend
    from iotlb.vdpa import VhostVdpa

    dev = VhostVdpa(load_backend("vdpa_sim", use_va=use_va, batch_mapping=batch_mapping),
                    memlock_pages=DEFAULT_MEMLOCK_PAGES)
    max_pinned = 0
    results = []
    for op in ops:
        try:
            r = T.apply(dev, op)
            results.append(("ok", r))
        except IOTLBError as exc:
            results.append(("err", exc.errno))
        max_pinned = max(max_pinned, dev.usermem.pinned_vm)
    return dev, max_pinned, results


def validate(name: str, lines: List[dict], *, scenario: bool = False) -> dict:
    """Parse and check one trace against the runner's constraints; return stats."""
    ops = [T.parse_op(json.loads(json.dumps(d))) for d in lines]
    if ops[0]["op"] != "meta" or not ops[0].get("rules"):
        raise ValueError(f"{name}: the first line must be a meta op with rules")
    if len(ops) > MAX_OPS_PER_TRACE:
        raise ValueError(f"{name}: {len(ops)} ops > {MAX_OPS_PER_TRACE}")
    if ops[1]["op"] != "open":
        raise ValueError(f"{name}: the second op must be open")
    if ops[-1]["op"] != "release":
        raise ValueError(f"{name}: the last op must be release")
    strict = any(op["op"] == "mmap" for op in ops)
    mapped = 0
    ranges = []
    for op in ops:
        if op["op"] in ("mmap", "munmap"):
            if not (WIN_LO <= op["uaddr"] and op["uaddr"] + op["size"] <= WIN_HI):
                raise ValueError(f"{name}: {op['op']} outside the window: {op['uaddr']:#x}")
            if op["uaddr"] % PG or op["size"] % PG:
                raise ValueError(f"{name}: unaligned {op['op']}")
            if op["op"] == "mmap":
                mapped += op["size"]
        if op["op"] == "update":
            if not WIN_LO <= op["uaddr"] < WIN_HI:
                raise ValueError(f"{name}: UPDATE uaddr outside the window: {op['uaddr']:#x}")
            if not strict:
                ranges.append(_page_range(op["uaddr"], op["size"]))
    if not strict:
        mapped = _union_len(ranges)
    if mapped > MAX_MAPPED:
        raise ValueError(f"{name}: maps {mapped} bytes > 64 MiB")
    raised = any(op["op"] == "memlock" for op in ops)
    pin_cap = RAISED_PIN_LIMIT_PAGES if raised else DEFAULT_MEMLOCK_PAGES
    device_ops = [op for op in ops]
    outcomes = {}
    for use_va in (False, True):
        for bm in (False, True):
            dev, max_pinned, results = replay_model(device_ops, use_va=use_va, batch_mapping=bm)
            if max_pinned > pin_cap:
                raise ValueError(f"{name}: pins {max_pinned} pages > {pin_cap} (use_va={use_va}, "
                                 f"batch_mapping={bm})")
            if dev.is_open:
                raise ValueError(f"{name}: the device is left open")
            dev.check_invariants()
            outcomes[(use_va, bm)] = results
    return {"ops": len(ops), "mapped": mapped, "strict": strict, "memlock": raised}


# ============================================================================ output
def _dump(lines: List[dict]) -> str:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lines)


def _scenario_line(op: dict) -> dict:
    """A recorded op as written by ``iotlb matrix --record`` (hex addresses, perm names)."""
    return json.loads(T.to_json(op))


def build(out_dir: str, *, write: bool = True) -> dict:
    hand = []
    for fn in TRACES:
        t = fn().finish()
        hand.append(t)
    names = [t.name for t in hand]
    if len(names) != len(set(names)):
        dup = [n for n, c in collections.Counter(names).items() if c > 1]
        raise ValueError(f"duplicate trace names: {dup}")
    stats = {}
    for t in hand:
        stats[t.name] = validate(t.name, t.ops)
    scen = _scenario_traces()
    scen_lines = []
    for fname, ops in scen:
        lines = [ops[0]] + [_scenario_line(op) for op in ops[1:]]
        scen_lines.append((fname, lines))
        stats["scenarios/" + fname] = validate(fname, lines, scenario=True)
    total = sum(s["ops"] for s in stats.values())
    if write:
        os.makedirs(os.path.join(out_dir, "scenarios"), exist_ok=True)
        # remove stale generated files
        for d in (out_dir, os.path.join(out_dir, "scenarios")):
            for f in os.listdir(d):
                if f.endswith(".jsonl"):
                    os.remove(os.path.join(d, f))
        for t in hand:
            with open(os.path.join(out_dir, t.name + ".jsonl"), "w", encoding="utf-8") as fp:
                fp.write(_dump(t.ops))
        for fname, lines in scen_lines:
            with open(os.path.join(out_dir, "scenarios", fname + ".jsonl"), "w", encoding="utf-8") as fp:
                fp.write(_dump(lines))
        with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as fp:
            fp.write(readme(hand, scen_lines, stats))
    return {"hand": len(hand), "scenarios": len(scen_lines), "ops": total, "stats": stats}


def readme(hand: List[Trace], scen, stats) -> str:
    by_rule: Dict[str, List[str]] = collections.OrderedDict((r, []) for r in RULES)
    for t in hand:
        for r in t.rule_ids:
            by_rule[r].append(t.name)
    hand_ops = sum(stats[t.name]["ops"] for t in hand)
    scen_ops = sum(stats["scenarios/" + n]["ops"] for n, _ in scen)
    out = []
    out.append("# Conformance corpus\n")
    out.append("Generated by `python tests/corpus/make_corpus.py` (deterministic; do not edit the "
               ".jsonl files or this README by hand).\n")
    out.append(f"* {len(hand)} hand-written traces ({hand_ops} ops) in this directory, one per "
               "behaviour, each with a `meta` first line naming its rules and a comment per op "
               "saying what the kernel sources predict for the four `vdpa_sim` configurations "
               "(`batch_mapping` 0/1 x `use_va` 0/1; *PA* = `use_va=0`, *VA* = `use_va=1`, "
               "*set_map parents* = `batch_mapping=1`, *dma_map parents* = `batch_mapping=0`).")
    out.append(f"* {len(scen)} scenario recordings ({scen_ops} ops) in `scenarios/`: every "
               "scenario x backend variant x PERSIST cell of `iotlb.scenarios` "
               f"(`iotlb matrix --record DIR --guest-size {SCENARIO_GUEST}`), identical recordings "
               "merged (the meta comment lists every cell a file stands for), user addresses moved "
               "into the window.")
    out.append(f"* {len(hand) + len(scen)} traces, {hand_ops + scen_ops} ops in total.\n")
    out.append("Runner constraints (checked by the generator): user addresses in "
               "`[0x100000000000, 0x200000000000)`; at most 64 MiB of user memory per trace; at "
               "most 8 MiB pinned unless a `memlock` op raised the limit (then 64 MiB); at most "
               "2,500 ops per trace; every trace starts with `meta`, `open` and ends with `release`. "
               "Hand-written traces declare their memory with `mmap` (strict memory); the "
               "scenario recordings rely on the runner's implicit memfd mappings.\n")
    out.append("Expected answers are *not* in the traces: they are recorded from the real kernels "
               "(Debian 6.12.118 and 7.2.13) by `iotlb conform`. Where the two kernels differ "
               "(SET_GROUP_ASID after DRIVER_OK) the comments say so.\n")
    out.append("## Rules -> traces\n")
    out.append("| rule | text | traces |")
    out.append("|---|---|---|")
    for r, names in by_rule.items():
        text = RULES[r].replace("|", "\\|")
        out.append(f"| `{r}` | {text} | {', '.join(f'`{n}`' for n in names) or '**none**'} |")
    out.append("")
    out.append("The scenario recordings additionally cover the QEMU-like sequences "
               "(`§6 scenario library: <name>` in their meta lines).\n")
    out.append("## Traces\n")
    out.append("| trace | what it does | ops | user memory | memlock op |")
    out.append("|---|---|---:|---:|---|")
    for t in hand:
        s = stats[t.name]
        out.append(f"| `{t.name}` | {_first_sentence(t.ops[0]['comment'])} | {s['ops']} | "
                   f"{s['mapped'] // KiB} KiB | {'yes' if s['memlock'] else ''} |")
    for n, lines in scen:
        s = stats["scenarios/" + n]
        cells = lines[0]["comment"].split("for the cells: ", 1)[1].split(". Backend", 1)[0]
        out.append(f"| `scenarios/{n}` | recorded from: {cells} | {s['ops']} | "
                   f"{s['mapped'] // KiB} KiB (implicit) | |")
    out.append("")
    out.append("## What the traces cannot express\n")
    for item in NOT_EXPRESSIBLE:
        out.append(f"* {item}")
    out.append("")
    return "\n".join(out)


def _first_sentence(text: str) -> str:
    cut = text.find(". ")
    out = text if cut < 0 else text[:cut + 1]
    return out.replace("|", "\\|")


NOT_EXPRESSIBLE = [
    "The module parameter `max_iotlb_entries` (<= 0: no AS can be allocated; limit 0 -> "
    "EINVAL in `vhost_iotlb_add_range_ctx`): the guest loads the modules with the default 2048.",
    "The full-space split `[0, 2^64-1]` -> `[0, 2^63-1]` + `[2^63, 2^64-1]` happens only inside "
    "the kernel (vdpa_sim's identity map at create / CLEAN_MAP reset / reset_map); userspace cannot "
    "send a 2^64-byte UPDATE. It shows only indirectly, in the parent calls (`dma_unmap` on a pt AS).",
    "`find_vma` returning NULL for a *small* VA-mode UPDATE: the process always has VMAs above the "
    "trace window (the Python binary, heap, libraries, stack), so an UPDATE of unmapped memory in "
    "the window always finds a VMA above; only a walk past the stack (size ~2^63+) ends in EINVAL "
    "(`range_huge_update`). Traces that need a deterministic answer declare an anonymous guard VMA "
    "above the hole.",
    "Read-only user memory (to make a PA-mode FOLL_WRITE pin fail), VM_IO/VM_PFNMAP mappings and "
    "private file mappings: `mmap` only knows memfd and anon.",
    "Several processes (another owner -> EPERM; pinned_vm shared by several fds of one mm): the "
    "runner drives one fd from one process.",
    "Page dirtying on unpin (`set_page_dirty_lock` for WO/RW entries) and the device's translation "
    "state (identity / pt / copied IOTLB) are not observable through the fd; only the parent calls "
    "seen by the kprobes hint at them.",
    "ENABLE_AFTER_DRIVER_OK, DESC_ASID with a parent that has `get_vq_desc_group`, and platform-"
    "IOMMU / mlx5 behaviour: the oracle is vdpa_sim_net only (mlx5/platform scenario recordings "
    "are replayed on vdpa_sim).",
    "kmalloc/GFP_ATOMIC failures (ENOMEM from the allocators), and the PA error path that leaves a "
    "run pinned when `vhost_vdpa_map` fails for a later run (needs a failing parent).",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=HERE, help="output directory (default: tests/corpus)")
    p.add_argument("--check", action="store_true", help="validate only, write nothing")
    args = p.parse_args(argv)
    res = build(args.out, write=not args.check)
    print(f"{res['hand']} hand-written + {res['scenarios']} scenario traces, {res['ops']} ops"
          + ("" if args.check else f" -> {args.out}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
