# The engine's C layout and the IOTLB type, for modules that cimport it (the device
# core, iotlb/_device.pyx).  Definitions and the rules they keep: _engine.pyx.
from libc.stdint cimport uint64_t

cdef enum:
    LCAP = 64     # entries per leaf
    ICAP = 64     # children per inner node
    MAXH = 40     # inner levels at most (IMIN ** 39 is far beyond any memory)
    NSPARE_L = 4  # spare leaves: a split, and with shared nodes a copy of the path's
                  # leaf and of a sibling (twice when a retirement precedes an insert)
    NSPARE_I = 4 * MAXH + 2  # spare inner nodes: a split per level plus a new root,
                  # and with shared nodes copies of the path and of siblings
    HASCTX = 0x100  # meta bit: the entry's ctx is in IOTLB._ctx under its seq

ctypedef struct Leaf:
    int n
    int rc                   # references (parents or tree roots); > 1: shared, read-only
    uint64_t pmax[LCAP]      # pmax[i] = max(last[0..i]): ascending, so the first entry
                             # with last >= s is one binary search (leaf_fix keeps it)
    uint64_t start[LCAP]
    uint64_t last[LCAP]
    uint64_t addr[LCAP]
    uint64_t meta[LCAP]

ctypedef struct Inner:
    int n
    int rc                   # as Leaf.rc (n and rc lead both structs: see Hdr)
    uint64_t pmax[ICAP]      # pmax[j] = max(maxlast[0..j]) (inner_fix keeps it)
    void *child[ICAP]
    uint64_t kstart[ICAP]    # min key of child j: (kstart[j], kseq[j])
    uint64_t kseq[ICAP]
    uint64_t maxlast[ICAP]   # max last in child j's subtree (exact)
    uint64_t span[ICAP]      # max last - start in child j's subtree (exact)

ctypedef struct Path:
    Inner *node[MAXH]        # node[level] for level in 1..height
    int idx[MAXH]            # child index taken at node[level]
    Leaf *leaf
    int slot

ctypedef struct QKey:
    uint64_t start
    uint64_t seq

ctypedef struct Tree:
    void *root               # NULL when empty
    int height               # inner levels above the leaves (0: root is a leaf)
    uint64_t maxlast         # aggregates of the whole tree (valid when root != NULL)
    uint64_t span
    Py_ssize_t count
    Py_ssize_t nleaf
    Py_ssize_t ninner
    uint64_t seq             # next insertion number
    uint64_t ctx_floor       # HASCTX bits of entries with seq < ctx_floor are void
                             # (shared from a tree whose ctx were not copied)
    bint cow                 # nodes may be shared with another tree (copy-on-write)
    Leaf *spare_leaf[NSPARE_L]
    int nspare_leaf
    Inner *spare_inner       # spare inner nodes, a stack linked through child[0]
    int nspare_inner         # (not an array of NSPARE_I: that made an IOTLB 1.5 KB,
                             # too big for CPython's small-object allocator)
    QKey *q                  # retire FIFO: q[qhead:qtail], oldest first, lazily pruned
    Py_ssize_t qhead
    Py_ssize_t qtail
    Py_ssize_t qcap

ctypedef struct Ent:
    uint64_t seq
    uint64_t start
    uint64_t last
    uint64_t addr
    uint64_t meta

ctypedef struct XFail:
    uint64_t addr
    uint64_t start
    uint64_t last
    uint64_t perm


cdef class IOTLB:
    cdef Tree t
    cdef uint64_t _limit
    cdef bint _bounded        # False: limit=None, no kernel limit at all (model only)
    cdef bint _retire
    cdef dict _ctx            # seq -> ctx, for entries whose meta has HASCTX
    cdef Py_ssize_t _version  # bumped by every change (iterators compare it)
    cdef object __weakref__

    cdef object _delete_path(self, Path *p, bint *intact=*)
    cdef int _reset(self) except -1
    cdef Py_ssize_t _add_all(self, IOTLB src) except -1
    cdef Py_ssize_t _add_range_ctx_limit(self, Py_ssize_t nmaps, bint full,
                                         Py_ssize_t index) except -1
    cdef bint _add_range_ctx_fits(self) noexcept
    cdef int _add_range_ctx(self, uint64_t s, uint64_t l, uint64_t a, uint64_t p,
                            object ctx, str who) except -1
    cdef int _add(self, uint64_t s, uint64_t l, uint64_t a, uint64_t perm,
                  object ctx) except -1
    cdef int _bulk(self, const uint64_t[::1] vs, const uint64_t[::1] vl,
                   const uint64_t[::1] va, const uint64_t[::1] vp, uint64_t p,
                   bint scalar) except -1
    cdef object _mk(self, Leaf *f, int i)
    cdef int _xlate(self, uint64_t iova, uint64_t last, uint64_t access, list out,
                    uint64_t *host0, XFail *fail) except -1
    cdef _check_walk(self)
    # the device layer's entry points (no Map objects, no argument parsing)
    cdef bint _find_first(self, uint64_t s, uint64_t l, Path *p) noexcept
    cdef bint _is_sole(self, Path *p, uint64_t l) noexcept
