# cython: language_level=3, cdivision=True, initializedcheck=False, autotestdict=False
"""The compiled engine: ``struct vhost_iotlb`` as a B+tree in C memory.

Same names, signatures and answers as the pure-Python twin ``iotlb._pyengine`` (the
executable specification); only the layout differs.

Layout (compare ``drivers/vhost/iotlb.c``):

* The interval tree is a B+tree keyed by ``(start, seq)``; ``seq`` is a per-tree
  insertion counter, so equal starts iterate in insertion order, as the kernel's
  interval-tree insert walks right on ties.  Leaves hold up to ``LCAP`` entries as
  struct-of-arrays ``start[] last[] addr[] meta[]`` with
  ``meta = seq << 9 | has_ctx << 8 | perm``, plus ``pmax[]``, the running maximum of
  ``last`` (40 bytes per slot).
* Inner nodes keep, for each child, its minimum key, the maximum ``last`` in its
  subtree (the kernel's ``__subtree_last`` augmentation, exact), the running maximum
  of those (``pmax``) and the maximum span ``last - start`` in its subtree (exact).
  ``first(s, l)`` is one descent: the answer is the first entry, in key order, whose
  ``last >= s`` -- if it starts after ``l`` nothing overlaps -- and at every node that
  is under the first ``pmax >= s`` (ascending, so found without backtracking).  A walk
  that resumes after a key (``overlapping()``) uses the span instead: no overlapping
  entry starts below ``s - span``.
* ``ctx`` objects are the only per-entry Python references; they live in a side dict
  ``seq -> ctx`` and only entries with the ``has_ctx`` bit consult it.
* The kernel's insertion-order ``list`` matters only for retirement; with
  ``limit`` and ``retire`` a FIFO of ``(start, seq)`` keys stands in for it, with lazy
  deletion (a key whose entry is gone is skipped when popped and dropped when the queue
  is compacted).

All C memory comes from ``PyMem_Malloc`` so ``tracemalloc`` sees it; ``sys.getsizeof``
reports it.  No tree pointer is held across a Python allocation or call (a garbage
collection can run a finalizer that changes the tree): every Python object is built
from values copied out of the tree first, a ``ctx`` is released only after the tree is
consistent again, and an iterator's cursor is used only while the tree's version
counter is the one it saw.

>>> t = IOTLB()
>>> t.map(0x1000, 0x1fff, 0x8000)
>>> t.translate(0x1800, 16)
[(34816, 16)]
"""
cimport cython
from cpython cimport array as carray
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memmove, memset

import array as _array
import errno as _errno
import gc as _gc
import itertools as _itertools

from ._map import HALF, U64_MAX, IOTLBBase, Map, Perm
from ._map import perm8 as _py_perm8
from ._map import u64 as _py_u64
from ._pyengine import _is_scalar, _restore, _u64_buffer
from ._wrap import translate_wrapped
from .errors import IOTLBError

__all__ = ["IOTLB"]

cdef extern from *:
    """
    /* A Map (a tuple subclass) without the Python-level tuple.__new__ round trip.

       A Map without ctx may also come from two spare slots: a Map this function made
       before, whose only reference left is the slot's, gets the new values in place
       instead of being freed and a new one allocated (CPython's zip() and
       enumerate() reuse their result tuples the same way).  Nobody else holds it, so
       nobody can tell; its items are ints and None, so keeping it alive keeps nothing
       else alive (a Map with a ctx is never kept: a ctx's lifetime is the user's).
       Only on CPython (another runtime counts references its own way), not where a
       tuple caches its hash (3.14) or references are not counted under one lock
       (free-threaded builds). */
    #if CYTHON_COMPILING_IN_CPYTHON && PY_VERSION_HEX < 0x030E0000 \
        && !defined(Py_GIL_DISABLED)
    #define IOTLB_MAP_SPARES 2
    static PyObject *iotlb_map_spare[IOTLB_MAP_SPARES];
    static int iotlb_map_next;
    #endif

    /* The same for the spare Map's ints: one that nobody but the spare holds (its
       only reference is the Map's, and nobody holds the Map) takes the new value in
       place, when it has as many digits as the value needs, instead of being freed
       and a new one allocated -- three of a Map's four ints on a lookup loop, 40 % of
       a lookup's instructions at N = 10**3.  Only where an int is ob_size digits of
       PyLong_SHIFT bits (CPython before 3.12; 3.12 changed the layout), and never
       for a value CPython keeps as a shared small int (0..256). */
    #if defined(IOTLB_MAP_SPARES) && PY_VERSION_HEX < 0x030C0000
    #define IOTLB_INT_REWRITE 1
    static inline int iotlb_int_digits(unsigned long long x)    /* x > 0 */
    {
    #if defined(__GNUC__) || defined(__clang__)
        return (64 - __builtin_clzll(x) + PyLong_SHIFT - 1) / PyLong_SHIFT;
    #else
        int n = 0;
        for (; x; x >>= PyLong_SHIFT) n++;
        return n;
    #endif
    }
    static inline int iotlb_int_rewritable(PyObject *it, unsigned long long x)
    {
        return x > 256 && Py_REFCNT(it) == 1 && PyLong_CheckExact(it)
               && Py_SIZE(it) == iotlb_int_digits(x);
    }
    static inline void iotlb_int_rewrite(PyObject *it, unsigned long long x)
    {
        digit *d = ((PyLongObject *)it)->ob_digit;
        Py_ssize_t k, n = Py_SIZE(it);
        for (k = 0; k < n; k++, x >>= PyLong_SHIFT)
            d[k] = (digit)(x & PyLong_MASK);
    }
    #endif

    #ifdef IOTLB_MAP_SPARES
    /* The spare o (only the spare slot holds it) refilled with x = start, last,
       addr, perm (its ctx is None already): a new reference, or NULL with o
       unchanged. */
    static PyObject *iotlb_map_refill(PyObject *o, const unsigned long long x[4])
    {
        PyObject *v[4], *old[4];
        int k;
        for (k = 0; k < 4; k++) {               /* first what can fail */
            v[k] = NULL;
    #ifdef IOTLB_INT_REWRITE
            if (iotlb_int_rewritable(PyTuple_GET_ITEM(o, k), x[k])) continue;
    #endif
            v[k] = PyLong_FromUnsignedLongLong(x[k]);
            if (v[k] == NULL) {
                while (k--) Py_XDECREF(v[k]);
                return NULL;
            }
        }
        for (k = 0; k < 4; k++) {
            old[k] = NULL;
            if (v[k] == NULL) {
    #ifdef IOTLB_INT_REWRITE
                iotlb_int_rewrite(PyTuple_GET_ITEM(o, k), x[k]);
    #endif
                continue;
            }
            old[k] = PyTuple_GET_ITEM(o, k);
            PyTuple_SET_ITEM(o, k, v[k]);
        }
        Py_INCREF(o);
        /* o is whole again: freeing an old int runs no user code */
        for (k = 0; k < 4; k++) Py_XDECREF(old[k]);
        return o;
    }
    #endif

    static PyObject *iotlb_make_map(PyObject *type, unsigned long long s,
                                    unsigned long long l, unsigned long long a,
                                    unsigned long long p, PyObject *ctx)
    {
        PyTypeObject *t = (PyTypeObject *)type;
        PyObject *v[4], *o;
        int k;
    #ifdef IOTLB_MAP_SPARES
        if (ctx == Py_None) {
            for (k = 0; k < IOTLB_MAP_SPARES; k++) {
                o = iotlb_map_spare[k];
                if (o != NULL && Py_REFCNT(o) == 1 && Py_TYPE(o) == t) {
                    const unsigned long long x[4] = {s, l, a, p};
                    return iotlb_map_refill(o, x);
                }
            }
        }
    #endif
        v[0] = PyLong_FromUnsignedLongLong(s);
        v[1] = PyLong_FromUnsignedLongLong(l);
        v[2] = PyLong_FromUnsignedLongLong(a);
        v[3] = PyLong_FromUnsignedLongLong(p);
        if (v[0] == NULL || v[1] == NULL || v[2] == NULL || v[3] == NULL) goto fail;
        o = t->tp_alloc(t, 5);
        if (o == NULL) goto fail;
        for (k = 0; k < 4; k++) PyTuple_SET_ITEM(o, k, v[k]);
        Py_INCREF(ctx);
        PyTuple_SET_ITEM(o, 4, ctx);
    #ifdef IOTLB_MAP_SPARES
        if (ctx == Py_None) {
            PyObject *prev = iotlb_map_spare[iotlb_map_next];
            Py_INCREF(o);
            iotlb_map_spare[iotlb_map_next] = o;
            iotlb_map_next = (iotlb_map_next + 1) % IOTLB_MAP_SPARES;
            Py_XDECREF(prev);   /* a Map the user still holds, or one of ours: no ctx */
        }
    #endif
        return o;
    fail:
        for (k = 0; k < 4; k++) Py_XDECREF(v[k]);
        return NULL;
    }

    /* Touch every cache line of [p, p + n) at once (the line of its last byte too,
       when p is not on a line boundary), so a search over a node's keys waits for
       one memory round trip instead of one per probe. */
    #if defined(__GNUC__) || defined(__clang__)
    #define IOTLB_PF(p) __builtin_prefetch((const void *)(p))
    #else
    #define IOTLB_PF(p) ((void)0)
    #endif
    static inline void iotlb_prefetch(const void *p, size_t n)
    {
        const char *c = (const char *)p;
        size_t k;
        if (n == 0) return;
        for (k = 0; k < n; k += 64) IOTLB_PF(c + k);
        IOTLB_PF(c + n - 1);
    }

    /* The first k in [0, n) with a[k] >= s, a ascending (a prefix-max array), or n.
       No branch depends on the data, and only two steps depend on each other: count
       the blocks of 8 whose last element is below s, then the elements below s in
       the next block.  (A binary search mispredicts about half of its 6 probes in a
       node of 64 on random queries, or, made branch-free, waits on 6 loads in a row.) */
    static inline int iotlb_lower(const uint64_t *a, int n, uint64_t s)
    {
        int b = 0, k, hi;
        for (k = 7; k < n; k += 8) b += a[k] < s;
        b *= 8;
        hi = b + 8 < n ? b + 8 : n;
        for (k = b; k < hi; k++) b += a[k] < s;
        return b;
    }
    """
    void iotlb_prefetch(const void *p, size_t n) noexcept nogil
    void IOTLB_PF(const void *p) noexcept nogil
    int iotlb_lower(const uint64_t *a, int n, uint64_t s) noexcept nogil
    object iotlb_make_map(object type, uint64_t s, uint64_t l, uint64_t a, uint64_t p,
                          object ctx)
    # No automatic error check: callers test for (unsigned long)-1 + PyErr_Occurred().
    unsigned long _as_ulong "PyLong_AsUnsignedLong"(object v)
    bint PyLong_Check(object v)


# ----------------------------------------------------------------------------- layout
# LCAP, ICAP, MAXH, the spare counts, HASCTX and the node/path/tree structs are in
# _engine.pxd (the device core cimports them); the balancing thresholds are here.
cdef enum:
    LMIN = LCAP * 7 // 16   # a leaf off the right spine holds at least this (after a
                            # delete): random deletes leave ~58 bytes per entry
    IMIN = ICAP // 3        # likewise for inner nodes (ICAP >= 6 keeps it >= 2)
    LMERGE = LCAP - LCAP // 16  # under-full siblings merge when their total fits this,
    IMERGE = ICAP - ICAP // 8   # else even out (headroom: no split on the next insert)

cdef enum:
    PREFETCH_LEAVES = 256   # t_first prefetches whole nodes above this many leaves
                            # (640 KiB of leaves: more than a core's L2)

cdef uint64_t UMAX = 0xFFFFFFFFFFFFFFFF
cdef uint64_t HALF_C = 0x8000000000000000
cdef uint64_t SEQ_END = (<uint64_t>1) << 55   # meta = seq << 9 | ... must not lose bits


# ----------------------------------------------------------------------------- nodes
# Copy-on-write: a node may be referenced by several trees (IOTLB.copy(), add_all into
# an empty tree share the root in O(1)).  rc counts the references to a node (inner
# nodes' child slots and tree roots).  A node with rc > 1 is never written: a change
# first makes every node on its path exclusive (own_leaf/own_inner copy a shared node
# into a spare, and a copied inner node adds a reference to each child), so a change
# costs O(height) node copies at most and the other trees never see it.  There is no
# leaf chain (a shared leaf cannot have one successor per tree): leaf walks go through
# a Path (leaf_first/leaf_next).  Every copy is made from spares reserved before the
# change, so a change never fails half-done.
ctypedef struct Hdr:         # the common head of Leaf and Inner
    int n
    int rc


# Node memory passes through a small module-wide cache of freed nodes.  With shared
# nodes the trees that allocate and the trees that free are different ones: a set_map
# parent's device copy shares the vhost tree's nodes, every change copies a path into
# the vhost tree, and the device's next wipe frees the old path -- a malloc and a free
# of a 2.5 KiB node per level and message, which the per-tree spares never see.  Not
# on free-threaded builds (the cache would need a lock); bounded (~35 KiB at most).
cdef extern from *:
    """
    #if defined(Py_GIL_DISABLED)
    #define IOTLB_NODE_CACHE 0
    #else
    #define IOTLB_NODE_CACHE 1
    #endif
    """
    bint NODE_CACHE "IOTLB_NODE_CACHE"

cdef enum:
    NODE_CACHE_L = 4        # cached leaves at most
    NODE_CACHE_I = 8        # cached inner nodes at most

cdef void *node_cache_leaf[NODE_CACHE_L]
cdef void *node_cache_inner[NODE_CACHE_I]
cdef int node_cache_nleaf = 0
cdef int node_cache_ninner = 0


cdef inline void *node_alloc(bint leaf) noexcept:
    # memory for a leaf (or an inner node): a cached freed one, else PyMem_Malloc
    # (NULL when out of memory)
    global node_cache_nleaf, node_cache_ninner
    if leaf:
        if node_cache_nleaf > 0:
            node_cache_nleaf -= 1
            return node_cache_leaf[node_cache_nleaf]
        return PyMem_Malloc(sizeof(Leaf))
    if node_cache_ninner > 0:
        node_cache_ninner -= 1
        return node_cache_inner[node_cache_ninner]
    return PyMem_Malloc(sizeof(Inner))


cdef inline void node_release(void *node, bint leaf) noexcept:
    # give back a node no tree holds: kept in the cache while it has room, else freed
    global node_cache_nleaf, node_cache_ninner
    if not NODE_CACHE:
        pass
    elif leaf:
        if node_cache_nleaf < NODE_CACHE_L:
            node_cache_leaf[node_cache_nleaf] = node
            node_cache_nleaf += 1
            return
    elif node_cache_ninner < NODE_CACHE_I:
        node_cache_inner[node_cache_ninner] = node
        node_cache_ninner += 1
        return
    PyMem_Free(node)


cdef int t_spares(Tree *t, int nl, int ni) except -1:
    # at least nl spare leaves and ni spare inner nodes; MemoryError leaves t's
    # content as it was
    cdef void *m
    if nl > NSPARE_L or ni > NSPARE_I or t.height + 1 >= MAXH:
        raise MemoryError("IOTLB: tree too tall")
    while t.nspare_leaf < nl:
        m = node_alloc(True)
        if m == NULL:
            raise MemoryError()
        t.spare_leaf[t.nspare_leaf] = <Leaf *>m
        t.nspare_leaf += 1
    while t.nspare_inner < ni:
        m = node_alloc(False)
        if m == NULL:
            raise MemoryError()
        push_inner(t, <Inner *>m)
    return 0


cdef int t_reserve(Tree *t, bint retiring=False) except -1:
    # spares for one insert (a leaf, and an inner node per level plus a new root
    # unless the root is a leaf with room), with shared nodes also a copy of the
    # path, and with `retiring` room for a t_delete first (t_reserve_del)
    cdef int h = t.height, nl = 1, ni = h + 1
    if t.root == NULL or (h == 0 and (<Leaf *>t.root).n < LCAP):
        ni = 0
    if t.cow:
        nl += 1
        ni += h
        if retiring:
            nl += 2
            ni += 2 * h
    return t_spares(t, nl, ni)


cdef inline int t_reserve_del(Tree *t) except -1:
    # spares for one t_delete: with shared nodes, a copy of the path and of one
    # sibling per level; nothing otherwise
    if not t.cow:
        return 0
    return t_spares(t, 2, 2 * t.height)


cdef inline void push_inner(Tree *t, Inner *x) noexcept:
    # x becomes the top spare inner node (the spares are a stack linked through
    # child[0]; a spare's other fields mean nothing)
    x.child[0] = <void *>t.spare_inner
    t.spare_inner = x
    t.nspare_inner += 1


cdef inline Inner *pop_inner(Tree *t) noexcept:
    # the top spare inner node, off the stack (the caller knows there is one)
    cdef Inner *x = t.spare_inner
    t.spare_inner = <Inner *>x.child[0]
    t.nspare_inner -= 1
    return x


cdef inline Leaf *take_leaf(Tree *t) noexcept:
    # a reserved spare leaf, now counted as live (t_reserve() guaranteed one)
    cdef Leaf *f
    t.nspare_leaf -= 1
    t.nleaf += 1
    f = t.spare_leaf[t.nspare_leaf]
    f.rc = 1
    return f


cdef inline Inner *take_inner(Tree *t) noexcept:
    # a reserved spare inner node, now counted as live (t_reserve() guaranteed one)
    cdef Inner *x = pop_inner(t)
    t.ninner += 1
    x.rc = 1
    return x


cdef inline Leaf *own_leaf(Tree *t, Leaf *f) noexcept:
    # f, or when shared an exclusive copy of it (from a reserved spare) that replaces
    # it in the caller's parent slot (already exclusive) or root
    cdef Leaf *g
    cdef int n
    if f.rc == 1:
        return f
    t.nspare_leaf -= 1
    g = t.spare_leaf[t.nspare_leaf]
    n = f.n
    g.n = n
    g.rc = 1
    memcpy(g.pmax, f.pmax, n * sizeof(uint64_t))
    memcpy(g.start, f.start, n * sizeof(uint64_t))
    memcpy(g.last, f.last, n * sizeof(uint64_t))
    memcpy(g.addr, f.addr, n * sizeof(uint64_t))
    memcpy(g.meta, f.meta, n * sizeof(uint64_t))
    f.rc -= 1
    return g


cdef inline Inner *own_inner(Tree *t, Inner *x) noexcept:
    # as own_leaf for an inner node: the copy shares x's children (one more
    # reference each)
    cdef Inner *y
    cdef int n, j
    if x.rc == 1:
        return x
    y = pop_inner(t)
    n = x.n
    y.n = n
    y.rc = 1
    memcpy(y.pmax, x.pmax, n * sizeof(uint64_t))
    memcpy(y.child, x.child, n * sizeof(void *))
    memcpy(y.kstart, x.kstart, n * sizeof(uint64_t))
    memcpy(y.kseq, x.kseq, n * sizeof(uint64_t))
    memcpy(y.maxlast, x.maxlast, n * sizeof(uint64_t))
    memcpy(y.span, x.span, n * sizeof(uint64_t))
    for j in range(n):
        (<Hdr *>y.child[j]).rc += 1
    x.rc -= 1
    return y


cdef void t_own_path(Tree *t, Path *p) noexcept:
    # make every node on p (filled by a search of t just before) exclusive to t,
    # updating p; t_reserve_del() must have succeeded just before
    cdef int level = t.height, j
    cdef Inner *x
    if level == 0:
        p.leaf = own_leaf(t, <Leaf *>t.root)
        t.root = p.leaf
        return
    x = own_inner(t, <Inner *>t.root)
    t.root = x
    while level > 0:
        p.node[level] = x
        j = p.idx[level]
        if level == 1:
            p.leaf = own_leaf(t, <Leaf *>x.child[j])
            x.child[j] = p.leaf
        else:
            x.child[j] = own_inner(t, <Inner *>x.child[j])
            x = <Inner *>x.child[j]
        level -= 1


cdef void t_share(Tree *d, Tree *s) noexcept:
    # the empty d holds s's entries by sharing s's root: O(1)
    if s.root == NULL:
        return
    (<Hdr *>s.root).rc += 1
    d.root = s.root
    d.height = s.height
    d.maxlast = s.maxlast
    d.span = s.span
    d.count = s.count
    d.nleaf = s.nleaf
    d.ninner = s.ninner
    if s.seq > d.seq:
        d.seq = s.seq
    d.cow = s.cow = True


cdef inline Leaf *leaf_first(Tree *t, Path *p) noexcept:
    # the leftmost leaf (NULL when empty); p records the way down for leaf_next
    cdef void *node = t.root
    cdef int level = t.height
    if node == NULL:
        return NULL
    while level > 0:
        p.node[level] = <Inner *>node
        p.idx[level] = 0
        node = (<Inner *>node).child[0]
        level -= 1
    p.leaf = <Leaf *>node
    return p.leaf


cdef inline Leaf *leaf_next(Tree *t, Path *p) noexcept:
    # the leaf after p.leaf (NULL after the last); p from leaf_first/leaf_next or a
    # search, with t unchanged since
    cdef int level = 1
    cdef void *node
    while level <= t.height and p.idx[level] + 1 >= p.node[level].n:
        level += 1
    if level > t.height:
        return NULL
    p.idx[level] += 1
    node = p.node[level].child[p.idx[level]]
    level -= 1
    while level > 0:
        p.node[level] = <Inner *>node
        p.idx[level] = 0
        node = (<Inner *>node).child[0]
        level -= 1
    p.leaf = <Leaf *>node
    return p.leaf


cdef inline void give_leaf(Tree *t, Leaf *f) noexcept:
    # f leaves the tree: kept as a spare or freed
    t.nleaf -= 1
    if t.nspare_leaf < NSPARE_L:
        t.spare_leaf[t.nspare_leaf] = f
        t.nspare_leaf += 1
    else:
        node_release(f, True)


cdef inline void give_inner(Tree *t, Inner *x) noexcept:
    # x leaves the tree: kept as a spare or freed
    t.ninner -= 1
    if t.nspare_inner < t.height + 2 and t.nspare_inner < NSPARE_I:
        push_inner(t, x)
    else:
        node_release(x, False)


cdef void free_sub(void *node, int level) noexcept:
    # drop one reference to node; at the last one free it and drop its children's
    # (no rebalancing, no bookkeeping)
    cdef Inner *x
    cdef Hdr *h
    cdef int j
    (<Hdr *>node).rc -= 1
    if (<Hdr *>node).rc > 0:
        return
    if level == 1:
        # the leaves written out: a set_map parent's copy drops an inner node whose
        # leaves are all still shared, one reference each, on every message
        x = <Inner *>node
        for j in range(x.n):
            h = <Hdr *>x.child[j]
            h.rc -= 1
            if h.rc == 0:
                node_release(h, True)
    elif level > 1:
        x = <Inner *>node
        for j in range(x.n):
            free_sub(x.child[j], level - 1)
    node_release(node, level == 0)


cdef void t_clear(Tree *t) noexcept:
    # drop every entry in O(n) (reset); spares and queue capacity are kept
    if t.root != NULL:
        free_sub(t.root, t.height)
    t.root = NULL
    t.height = 0
    t.maxlast = 0
    t.span = 0
    t.count = 0
    t.nleaf = 0
    t.ninner = 0
    t.qhead = 0
    t.qtail = 0
    t.ctx_floor = 0
    t.cow = False


cdef void t_free(Tree *t) noexcept:
    # release all C memory of t (dealloc)
    cdef int k
    t_clear(t)
    for k in range(t.nspare_leaf):
        node_release(t.spare_leaf[k], True)
    while t.nspare_inner > 0:
        node_release(pop_inner(t), False)
    t.nspare_leaf = 0
    PyMem_Free(t.q)
    t.q = NULL
    t.qcap = 0


cdef inline int node_n(void *node, int level) noexcept:
    # number of entries (leaf) or children (inner) of node
    if level == 0:
        return (<Leaf *>node).n
    return (<Inner *>node).n


cdef inline void leaf_agg(Leaf *f, uint64_t *ml, uint64_t *sp) noexcept:
    # max last and max (last - start) over f's n >= 1 entries
    cdef uint64_t m = 0, s = 0, d
    cdef int i
    for i in range(f.n):
        if f.last[i] > m:
            m = f.last[i]
        d = f.last[i] - f.start[i]
        if d > s:
            s = d
    ml[0] = m
    sp[0] = s


cdef inline void inner_agg(Inner *x, uint64_t *ml, uint64_t *sp) noexcept:
    # max of x's child records (max last, max span); x.n >= 1
    cdef uint64_t m = 0, s = 0
    cdef int j
    for j in range(x.n):
        if x.maxlast[j] > m:
            m = x.maxlast[j]
        if x.span[j] > s:
            s = x.span[j]
    ml[0] = m
    sp[0] = s


cdef inline void run_max(uint64_t *pm, const uint64_t *v, int i, int n,
                         bint settle) noexcept:
    # pm[k] = max(v[0..k]) for k in i..n-1 (pm[:i] must be right).  With settle, v[i]
    # changed in place or was removed and pm[i:] is right for the old values in the
    # same slots: stop at the first prefix max that comes out as it was, since every
    # later one is then unchanged too.  (Inlined with a constant settle: no branch.)
    cdef uint64_t m = pm[i - 1] if i > 0 else 0
    cdef int k
    for k in range(i, n):
        if v[k] > m:
            m = v[k]
        if settle and pm[k] == m:
            return
        pm[k] = m


cdef inline void run_max_raise(uint64_t *pm, int i, int n, uint64_t l) noexcept:
    # pm after a value l entered at or before slot i (pm[i:] right without it): every
    # prefix max from i becomes max(old, l), up to the first one already >= l
    cdef int k
    for k in range(i, n):
        if pm[k] >= l:
            return
        pm[k] = l


cdef inline void leaf_fix(Leaf *f, int i) noexcept:
    # recompute f.pmax[i:] from last[i:]: after entries were moved into f at slot i
    # or later
    run_max(f.pmax, f.last, i, f.n, False)


cdef inline void inner_fix(Inner *x, int j) noexcept:
    # recompute x.pmax[j:] from maxlast[j:]: after records were moved into x at j or
    # later
    run_max(x.pmax, x.maxlast, j, x.n, False)


cdef inline void inner_settle(Inner *x, int j) noexcept:
    # x.pmax after maxlast[j] changed in place (no record moved)
    run_max(x.pmax, x.maxlast, j, x.n, True)


cdef inline void refresh(Inner *x, int j, int clevel) noexcept:
    # child j's record recomputed in place (no record moved): the record, then pmax
    rec(x, j, clevel)
    inner_settle(x, j)


cdef inline uint64_t node_maxlast(void *node, int level) noexcept:
    # the max last of node's subtree (n >= 1): its last prefix max
    if level == 0:
        return (<Leaf *>node).pmax[(<Leaf *>node).n - 1]
    return (<Inner *>node).pmax[(<Inner *>node).n - 1]


cdef inline uint64_t span_after_loss(void *node, int level, uint64_t old,
                                     uint64_t lost) noexcept:
    # the max span of node's subtree (n >= 1), which was old before the subtree lost
    # one entry of span lost: unchanged unless that was the widest, and then unchanged
    # if another as wide is left (found early in a churn of equal sizes)
    cdef Leaf *f
    cdef Inner *y
    cdef uint64_t m = 0, d
    cdef int k
    if old != lost:
        return old
    if level == 0:
        f = <Leaf *>node
        for k in range(f.n):
            d = f.last[k] - f.start[k]
            if d == lost:
                return lost
            if d > m:
                m = d
        return m
    y = <Inner *>node
    for k in range(y.n):
        if y.span[k] == lost:
            return lost
        if y.span[k] > m:
            m = y.span[k]
    return m


cdef inline void rec_after_loss(Inner *x, int j, int clevel, uint64_t lost) noexcept:
    # as refresh, for a child (n >= 1) that lost one entry of span lost and nothing
    # else: the key and max last in O(1), the span by span_after_loss, then pmax
    cdef void *c = x.child[j]
    if clevel == 0:
        x.kstart[j] = (<Leaf *>c).start[0]
        x.kseq[j] = (<Leaf *>c).meta[0] >> 9
    else:
        x.kstart[j] = (<Inner *>c).kstart[0]
        x.kseq[j] = (<Inner *>c).kseq[0]
    x.maxlast[j] = node_maxlast(c, clevel)
    x.span[j] = span_after_loss(c, clevel, x.span[j], lost)
    inner_settle(x, j)


cdef inline void rec(Inner *x, int j, int clevel) noexcept:
    # recompute x's record of child j (min key, max last, span) from the child (n >= 1);
    # pmax is the caller's (refresh, or inner_fix after moving records)
    cdef Leaf *f
    cdef Inner *y
    if clevel == 0:
        f = <Leaf *>x.child[j]
        x.kstart[j] = f.start[0]
        x.kseq[j] = f.meta[0] >> 9
        leaf_agg(f, &x.maxlast[j], &x.span[j])
    else:
        y = <Inner *>x.child[j]
        x.kstart[j] = y.kstart[0]
        x.kseq[j] = y.kseq[0]
        inner_agg(y, &x.maxlast[j], &x.span[j])


cdef inline void leaf_move(Leaf *d, int dp, Leaf *s, int sp, int cnt) noexcept:
    # copy cnt slots s[sp:] to d[dp:] (overlap allowed); counts untouched; pmax is
    # copied verbatim: right only where d and s are the same leaf and nothing else
    # changed (leaf_put, t_delete), else the caller runs leaf_fix
    if cnt <= 0:
        return
    memmove(&d.pmax[dp], &s.pmax[sp], cnt * sizeof(uint64_t))
    memmove(&d.start[dp], &s.start[sp], cnt * sizeof(uint64_t))
    memmove(&d.last[dp], &s.last[sp], cnt * sizeof(uint64_t))
    memmove(&d.addr[dp], &s.addr[sp], cnt * sizeof(uint64_t))
    memmove(&d.meta[dp], &s.meta[sp], cnt * sizeof(uint64_t))


cdef inline void inner_move(Inner *d, int dp, Inner *s, int sp, int cnt) noexcept:
    # copy cnt child records s[sp:] to d[dp:] (overlap allowed); counts untouched;
    # pmax copied verbatim, the caller runs inner_fix
    if cnt <= 0:
        return
    memmove(&d.pmax[dp], &s.pmax[sp], cnt * sizeof(uint64_t))
    memmove(&d.child[dp], &s.child[sp], cnt * sizeof(void *))
    memmove(&d.kstart[dp], &s.kstart[sp], cnt * sizeof(uint64_t))
    memmove(&d.kseq[dp], &s.kseq[sp], cnt * sizeof(uint64_t))
    memmove(&d.maxlast[dp], &s.maxlast[sp], cnt * sizeof(uint64_t))
    memmove(&d.span[dp], &s.span[sp], cnt * sizeof(uint64_t))


cdef inline void leaf_put(Leaf *f, int pos, uint64_t s, uint64_t l, uint64_t a,
                          uint64_t meta) noexcept:
    # open slot pos in f (n < LCAP) and store the entry there; f.pmax must be right
    # before: the prefix maxima after pos become max(old, l)
    cdef uint64_t m = f.pmax[pos - 1] if pos > 0 else 0
    leaf_move(f, pos + 1, f, pos, f.n - pos)
    f.start[pos] = s
    f.last[pos] = l
    f.addr[pos] = a
    f.meta[pos] = meta
    f.n += 1
    f.pmax[pos] = l if l > m else m
    run_max_raise(f.pmax, pos + 1, f.n, l)


cdef inline void inner_put(Inner *x, int pos, void *c, int clevel) noexcept:
    # open record pos in x (n < ICAP) for child c and fill it from c
    inner_move(x, pos + 1, x, pos, x.n - pos)
    x.child[pos] = c
    x.n += 1
    rec(x, pos, clevel)
    inner_fix(x, pos)


cdef inline int inner_route(Inner *x, uint64_t ks, uint64_t kq) noexcept:
    # index of the last child whose min key <= (ks, kq), or 0 if there is none
    cdef int lo = 0, hi = x.n, mid
    iotlb_prefetch(x.kstart, hi * sizeof(uint64_t))
    while lo < hi:
        mid = (lo + hi) >> 1
        if x.kstart[mid] < ks or (x.kstart[mid] == ks and x.kseq[mid] <= kq):
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo > 0 else 0


cdef inline int leaf_lower(Leaf *f, uint64_t ks, uint64_t kq) noexcept:
    # first slot of f whose key >= (ks, kq), or f.n
    cdef int lo = 0, hi = f.n, mid
    # the whole leaf at once: the slot found is read next, and one round trip to
    # memory for every line beats one per binary-search probe plus one per array
    iotlb_prefetch(f.start, hi * sizeof(uint64_t))
    iotlb_prefetch(f.last, hi * sizeof(uint64_t))
    iotlb_prefetch(f.addr, hi * sizeof(uint64_t))
    iotlb_prefetch(f.meta, hi * sizeof(uint64_t))
    while lo < hi:
        mid = (lo + hi) >> 1
        if f.start[mid] < ks or (f.start[mid] == ks and (f.meta[mid] >> 9) < kq):
            lo = mid + 1
        else:
            hi = mid
    return lo


# ----------------------------------------------------------------------------- search
cdef int find_rec(void *node, int level, uint64_t span, uint64_t s, uint64_t l,
                  uint64_t ls, uint64_t lq, Path *p) noexcept:
    # first entry of this subtree with key >= (ls, lq), last >= s and start <= l:
    # 1 found (p filled), 0 none here, -1 none here nor anywhere to the right
    cdef uint64_t ks = s - span if s > span else 0   # nothing overlapping starts below
    cdef uint64_t kq = 0
    cdef Leaf *f
    cdef Inner *x
    cdef int i, j, r
    if ls > ks or (ls == ks and lq > 0):
        ks = ls
        kq = lq
    if level == 0:
        f = <Leaf *>node
        i = leaf_lower(f, ks, kq)
        while i < f.n:
            if f.start[i] > l:
                return -1
            if f.last[i] >= s:
                p.leaf = f
                p.slot = i
                return 1
            i += 1
        return 0
    x = <Inner *>node
    j = inner_route(x, ks, kq)
    while j < x.n:
        if x.kstart[j] > l:
            return -1
        if x.maxlast[j] >= s:
            p.node[level] = x
            p.idx[level] = j
            r = find_rec(x.child[j], level - 1, x.span[j], s, l, ls, lq, p)
            if r != 0:
                return r
        j += 1
    return 0


cdef inline void leaf_prefetch(Leaf *f) noexcept:
    # start loading every line of f's first f.n slots: the prefix maxima first (the
    # search reads a line of each block of 8), then start, last, addr and meta block
    # by block, so that the four lines of the slot the search picks arrive close
    # together instead of meta's a whole leaf after start's; the last slot's lines
    # too, which a leaf not aligned to a cache line puts one line past the blocks'.
    # first() at N = 10^6, 8 rounds in shuffled order, two builds of this form:
    # 0.885x and 0.89x the time of array by array; the same lines from one loop that
    # clamps its index to the last slot measured 1.10x (performance.md)
    cdef int i
    iotlb_prefetch(f.pmax, f.n * sizeof(uint64_t))
    for i in range(0, f.n, 8):
        IOTLB_PF(&f.start[i])
        IOTLB_PF(&f.last[i])
        IOTLB_PF(&f.addr[i])
        IOTLB_PF(&f.meta[i])
    i = f.n - 1
    IOTLB_PF(&f.start[i])
    IOTLB_PF(&f.last[i])
    IOTLB_PF(&f.addr[i])
    IOTLB_PF(&f.meta[i])


cdef inline bint t_first(Tree *t, uint64_t s, uint64_t l, Path *p) noexcept:
    # vhost_iotlb_itree_first: the first entry in key order with last >= s, if it
    # starts at or below l (every later one starts no lower): one descent along the
    # prefix maxima, no backtracking; fills p with its path
    cdef void *node = t.root
    cdef int level = t.height, j, i
    cdef Inner *x
    cdef Leaf *f
    # a node out of cache costs one round trip to memory for all of its lines at once
    # instead of two (the prefix maxima, then the slot they point at); in cache the
    # prefetches are 40 wasted instructions a leaf
    cdef bint big = t.nleaf > PREFETCH_LEAVES
    if node == NULL or t.maxlast < s:
        return False
    while level > 0:
        x = <Inner *>node
        if big:
            iotlb_prefetch(x.pmax, x.n * sizeof(uint64_t))
            iotlb_prefetch(x.child, x.n * sizeof(void *))
        j = iotlb_lower(x.pmax, x.n, s)   # child j holds it: the max before j is < s
        if j >= x.n:                      # (only if the records were wrong)
            return False
        p.node[level] = x
        p.idx[level] = j
        node = x.child[j]
        level -= 1
    f = <Leaf *>node
    if big:
        leaf_prefetch(f)
    i = iotlb_lower(f.pmax, f.n, s)
    if i >= f.n or f.start[i] > l:
        return False
    p.leaf = f
    p.slot = i
    return True


cdef inline bint t_find(Tree *t, uint64_t s, uint64_t l, uint64_t ls, uint64_t lq,
                        Path *p) noexcept:
    # vhost_iotlb_itree_first / _next: the first entry with key >= (ls, lq) overlapping
    # [s, l] (closed: start <= l and last >= s); fills p with its path
    if ls == 0 and lq == 0:
        return t_first(t, s, l, p)
    if t.root == NULL or t.maxlast < s:
        return False
    return find_rec(t.root, t.height, t.span, s, l, ls, lq, p) == 1


cdef bint t_find_key(Tree *t, uint64_t s, uint64_t q, Path *p) noexcept:
    # the entry with key exactly (s, q), if present; fills p with its path
    cdef void *node = t.root
    cdef int level = t.height, j, i
    cdef Inner *x
    cdef Leaf *f
    if node == NULL:
        return False
    while level > 0:
        x = <Inner *>node
        j = inner_route(x, s, q)
        p.node[level] = x
        p.idx[level] = j
        node = x.child[j]
        level -= 1
    f = <Leaf *>node
    i = leaf_lower(f, s, q)
    if i < f.n and f.start[i] == s and (f.meta[i] >> 9) == q:
        p.leaf = f
        p.slot = i
        return True
    return False


# ----------------------------------------------------------------------------- insert
cdef void t_insert(Tree *t, uint64_t s, uint64_t l, uint64_t a, uint64_t meta) noexcept:
    # insert an entry whose seq (meta >> 9) exceeds every seq in t, after the entries
    # of equal start; t_reserve() must have succeeded just before
    cdef uint64_t sp = l - s
    cdef Path p
    cdef bint xrm[MAXH]      # xrm[level]: node[level] is the rightmost at its level
    cdef bint rm = True, changed
    cdef void *node
    cdef void *newc = NULL
    cdef Inner *x
    cdef Inner *y
    cdef Inner *z
    cdef Leaf *f
    cdef Leaf *r
    cdef int level, j, pos, h
    if t.root == NULL:
        f = take_leaf(t)
        f.n = 0
        leaf_put(f, 0, s, l, a, meta)
        t.root = f
        t.height = 0
        t.maxlast = l
        t.span = sp
        t.count = 1
        return
    t.count += 1
    level = t.height
    if level == 0:
        node = own_leaf(t, <Leaf *>t.root)
    else:
        node = own_inner(t, <Inner *>t.root)
    t.root = node
    while level > 0:
        x = <Inner *>node
        j = inner_route(x, s, UMAX)
        p.node[level] = x
        p.idx[level] = j
        xrm[level] = rm
        rm = rm and j == x.n - 1
        if level == 1:
            node = own_leaf(t, <Leaf *>x.child[j])
        else:
            node = own_inner(t, <Inner *>x.child[j])
        x.child[j] = node
        level -= 1
    f = <Leaf *>node
    pos = leaf_lower(f, s, UMAX)
    if f.n < LCAP:
        leaf_put(f, pos, s, l, a, meta)
    else:
        r = take_leaf(t)
        r.n = 0
        if rm and pos == LCAP:
            # appending at the right end: keep f full so ascending builds pack leaves
            leaf_put(r, 0, s, l, a, meta)
        else:
            h = LCAP // 2
            leaf_move(r, 0, f, h, LCAP - h)
            r.n = LCAP - h
            f.n = h
            leaf_fix(r, 0)
            if pos <= h:
                leaf_put(f, pos, s, l, a, meta)
            else:
                leaf_put(r, pos - h, s, l, a, meta)
        newc = r
    level = 1
    while level <= t.height:
        x = p.node[level]
        j = p.idx[level]
        if newc == NULL:
            # child j gained just this entry: bump its record; unchanged means above too
            changed = False
            if l > x.maxlast[j]:
                x.maxlast[j] = l
                run_max_raise(x.pmax, j, x.n, l)
                changed = True
            if sp > x.span[j]:
                x.span[j] = sp
                changed = True
            if s < x.kstart[j]:
                x.kstart[j] = s
                x.kseq[j] = meta >> 9
                changed = True
            if not changed:
                return
        else:
            refresh(x, j, level - 1)
            if x.n < ICAP:
                inner_put(x, j + 1, newc, level - 1)
                newc = NULL
            else:
                y = take_inner(t)
                if xrm[level] and j + 1 == ICAP:
                    # right end: x keeps ICAP - 1, y takes x's last child and newc
                    y.n = 0
                    inner_move(y, 0, x, ICAP - 1, 1)
                    y.n = 1
                    x.n = ICAP - 1
                    inner_fix(y, 0)
                    inner_put(y, 1, newc, level - 1)
                else:
                    h = ICAP // 2
                    inner_move(y, 0, x, h, ICAP - h)
                    y.n = ICAP - h
                    x.n = h
                    inner_fix(y, 0)
                    if j + 1 <= h:
                        inner_put(x, j + 1, newc, level - 1)
                    else:
                        inner_put(y, j + 1 - h, newc, level - 1)
                newc = y
        level += 1
    if newc != NULL:
        z = take_inner(t)
        z.n = 2
        z.child[0] = t.root
        z.child[1] = newc
        rec(z, 0, t.height)
        rec(z, 1, t.height)
        inner_fix(z, 0)
        t.root = z
        t.height += 1
    if l > t.maxlast:
        t.maxlast = l
    if sp > t.span:
        t.span = sp


# ----------------------------------------------------------------------------- delete
cdef void rebalance(Tree *t, Inner *x, int j, int clevel) noexcept:
    # child j of x (x.n >= 2) is under its minimum: merge it with a neighbour when the
    # two fit in *MERGE, else share their entries evenly; x's records stay exact
    cdef int a = j - 1 if j > 0 else j
    cdef int b = a + 1, tot, k, mv
    cdef Leaf *fa
    cdef Leaf *fb
    cdef Inner *ya
    cdef Inner *yb
    if clevel == 0:
        fa = own_leaf(t, <Leaf *>x.child[a])   # one of the two is on the path (owned)
        x.child[a] = fa
        fb = own_leaf(t, <Leaf *>x.child[b])
        x.child[b] = fb
        tot = fa.n + fb.n
        if tot <= LMERGE:
            leaf_move(fa, fa.n, fb, 0, fb.n)
            k = fa.n
            fa.n = tot
            leaf_fix(fa, k)
            give_leaf(t, fb)
            inner_move(x, b, x, b + 1, x.n - b - 1)
            x.n -= 1
            rec(x, a, 0)
            inner_fix(x, a)
            return
        k = tot // 2
        if fa.n > k:            # fa's tail moves to fb's front
            mv = fa.n - k
            leaf_move(fb, mv, fb, 0, fb.n)
            leaf_move(fb, 0, fa, k, mv)
        else:                   # fb's front moves to fa's tail
            mv = k - fa.n
            leaf_move(fa, fa.n, fb, 0, mv)
            leaf_move(fb, 0, fb, mv, fb.n - mv)
        fa.n = k
        fb.n = tot - k
        leaf_fix(fa, 0)
        leaf_fix(fb, 0)
    else:
        ya = own_inner(t, <Inner *>x.child[a])
        x.child[a] = ya
        yb = own_inner(t, <Inner *>x.child[b])
        x.child[b] = yb
        tot = ya.n + yb.n
        if tot <= IMERGE:
            inner_move(ya, ya.n, yb, 0, yb.n)
            k = ya.n
            ya.n = tot
            inner_fix(ya, k)
            give_inner(t, yb)
            inner_move(x, b, x, b + 1, x.n - b - 1)
            x.n -= 1
            rec(x, a, clevel)
            inner_fix(x, a)
            return
        k = tot // 2
        if ya.n > k:
            mv = ya.n - k
            inner_move(yb, mv, yb, 0, yb.n)
            inner_move(yb, 0, ya, k, mv)
        else:
            mv = k - ya.n
            inner_move(ya, ya.n, yb, 0, mv)
            inner_move(yb, 0, yb, mv, yb.n - mv)
        ya.n = k
        yb.n = tot - k
        inner_fix(ya, 0)
        inner_fix(yb, 0)
    rec(x, a, clevel)
    rec(x, b, clevel)
    inner_fix(x, a)


cdef bint t_delete(Tree *t, Path *p) noexcept:
    # vhost_iotlb_map_free on the tree: remove the entry at p (filled by a search just
    # before, then t_own_path), rebalance bottom-up, keep every record and the root aggregates exact;
    # true when no node was rebalanced or freed at any level: p then still holds the
    # path, and p.slot the entry that followed the removed one (if p.slot < leaf.n)
    cdef Leaf *f = p.leaf
    cdef int i = p.slot, level, j, cn
    cdef uint64_t s = f.start[i], l = f.last[i], sp, q = f.meta[i] >> 9
    cdef uint64_t oks, okq, oml, osp
    cdef bint dirty = True    # x's record of the child below may be stale
    cdef bint intact = True
    cdef Inner *x
    sp = l - s
    leaf_move(f, i, f, i + 1, f.n - i - 1)
    f.n -= 1
    run_max(f.pmax, f.last, i, f.n, True)    # the prefix maxima from i lose l
    t.count -= 1
    level = 1
    while level <= t.height:
        x = p.node[level]
        j = p.idx[level]
        cn = node_n(x.child[j], level - 1)
        if dirty:
            dirty = False
            # the child's subtree lost exactly (s, q, l): only a record it defined moves
            if cn > 0 and (x.maxlast[j] == l or x.span[j] == sp
                           or (x.kstart[j] == s and x.kseq[j] == q)):
                oks = x.kstart[j]
                okq = x.kseq[j]
                oml = x.maxlast[j]
                osp = x.span[j]
                rec_after_loss(x, j, level - 1, sp)
                dirty = (oks != x.kstart[j] or okq != x.kseq[j] or oml != x.maxlast[j]
                         or osp != x.span[j])
        if cn < (LMIN if level == 1 else IMIN):
            rebalance(t, x, j, level - 1)
            dirty = True      # x may have lost a child: check it one level up
            intact = False    # a rebalance at any level may free or move p's nodes
        elif not dirty:
            return intact     # records, counts and aggregates above are all unchanged
        level += 1
    if t.height == 0:
        if f.n == 0:
            give_leaf(t, f)
            t.root = NULL
            t.maxlast = 0
            t.span = 0
            return False
        if t.maxlast == l or t.span == sp:
            t.maxlast = node_maxlast(f, 0)
            t.span = span_after_loss(f, 0, t.span, sp)
        return True
    x = <Inner *>t.root
    while t.height > 0 and x.n == 1:
        t.root = x.child[0]
        give_inner(t, x)
        t.height -= 1
        intact = False        # p's levels no longer match the tree
        x = <Inner *>t.root
    if t.maxlast == l or t.span == sp:
        t.maxlast = node_maxlast(t.root, t.height)
        t.span = span_after_loss(t.root, t.height, t.span, sp)
    return intact


# ----------------------------------------------------------------------------- queue
cdef int q_ready(Tree *t) except -1:
    # room for one more key at the queue's tail: prune stale keys when they outnumber the
    # live ones, slide or grow the array; MemoryError leaves the queue's content as it was
    cdef Py_ssize_t i, w, live, ncap
    cdef Path p
    cdef QKey *nq
    if t.qtail - t.qhead > 2 * t.count + 16:
        w = t.qhead
        for i in range(t.qhead, t.qtail):
            if t_find_key(t, t.q[i].start, t.q[i].seq, &p):
                t.q[w] = t.q[i]
                w += 1
        t.qtail = w
    if t.qtail < t.qcap:
        return 0
    live = t.qtail - t.qhead
    if t.qhead > 0 and live * 2 <= t.qcap:
        memmove(t.q, &t.q[t.qhead], live * sizeof(QKey))
        t.qhead = 0
        t.qtail = live
        return 0
    ncap = t.qcap * 2 if t.qcap else 16
    nq = <QKey *>PyMem_Realloc(t.q, ncap * sizeof(QKey))
    if nq == NULL:
        raise MemoryError()
    t.q = nq
    t.qcap = ncap
    return 0


# ----------------------------------------------------------------------------- sort
cdef int ent_cmp(const void *a, const void *b) noexcept nogil:
    # qsort order of Ent by seq
    cdef uint64_t x = (<const Ent *>a).seq, y = (<const Ent *>b).seq
    return (x > y) - (x < y)


cdef int ent_radix(Ent *e, Py_ssize_t m) except -1:
    # stable sort of e by start (entries come in seq order, so ties stay by seq):
    # LSD radix, 8 bits a pass, passes where every key has the same byte skipped
    cdef Py_ssize_t cnt[8][256]
    cdef Py_ssize_t i, sum_, c
    cdef int b, d
    cdef Ent *tmp
    cdef Ent *src = e
    cdef Ent *dst
    cdef Ent *sw
    memset(cnt, 0, sizeof(cnt))
    for i in range(m):
        for b in range(8):
            cnt[b][(e[i].start >> (8 * b)) & 0xff] += 1
    tmp = <Ent *>PyMem_Malloc(m * sizeof(Ent))
    if tmp == NULL:
        raise MemoryError()
    dst = tmp
    for b in range(8):
        if cnt[b][(e[0].start >> (8 * b)) & 0xff] == m:
            continue                      # one value of this byte: nothing moves
        sum_ = 0
        for d in range(256):
            c = cnt[b][d]
            cnt[b][d] = sum_
            sum_ += c
        for i in range(m):
            d = (src[i].start >> (8 * b)) & 0xff
            dst[cnt[b][d]] = src[i]
            cnt[b][d] += 1
        sw = src
        src = dst
        dst = sw
    if src != e:
        memcpy(e, src, m * sizeof(Ent))
    PyMem_Free(tmp)
    return 0


# ----------------------------------------------------------------------------- bulk
cdef int t_bulk(Tree *t, Ent *e, Py_ssize_t m) except -1:
    # make the empty t hold the m >= 1 entries e, sorted by (start, seq), in packed
    # nodes; every node is allocated first, so MemoryError leaves t empty
    cdef Py_ssize_t sizes[MAXH + 1]
    cdef Py_ssize_t off[MAXH + 1]
    cdef Py_ssize_t total = 0, k, q, lo, hi, c, cnt, i
    cdef int h = 0, lev, j
    cdef void **allp
    cdef Leaf *f
    cdef Inner *x
    sizes[0] = (m + LCAP - 1) // LCAP
    while sizes[h] > 1:
        if h + 1 >= MAXH:
            raise MemoryError("IOTLB: tree too tall")
        sizes[h + 1] = (sizes[h] + ICAP - 1) // ICAP
        h += 1
    for lev in range(h + 1):
        off[lev] = total
        total += sizes[lev]
    allp = <void **>PyMem_Malloc(total * sizeof(void *))
    if allp == NULL:
        raise MemoryError()
    for k in range(total):
        allp[k] = PyMem_Malloc(sizeof(Leaf) if k < sizes[0] else sizeof(Inner))
        if allp[k] == NULL:
            for i in range(k):
                PyMem_Free(allp[i])
            PyMem_Free(allp)
            raise MemoryError()
    for k in range(sizes[0]):            # leaves: full, the last one takes the rest
        f = <Leaf *>allp[k]
        cnt = m - k * LCAP if k == sizes[0] - 1 else LCAP
        f.n = <int>cnt
        f.rc = 1
        for i in range(cnt):
            f.start[i] = e[k * LCAP + i].start
            f.last[i] = e[k * LCAP + i].last
            f.addr[i] = e[k * LCAP + i].addr
            f.meta[i] = e[k * LCAP + i].meta
        leaf_fix(f, 0)
    for lev in range(1, h + 1):          # inner levels: full, the last node has >= 2
        c = sizes[lev - 1]
        for q in range(sizes[lev]):
            lo = q * ICAP
            hi = lo + ICAP if lo + ICAP < c else c
            if q == sizes[lev] - 1 and hi - lo == 1 and q > 0:
                lo -= 1
            if q == sizes[lev] - 2 and c - (q + 1) * ICAP == 1:
                hi -= 1
            x = <Inner *>allp[off[lev] + q]
            x.n = <int>(hi - lo)
            x.rc = 1
            for j in range(x.n):
                x.child[j] = allp[off[lev - 1] + lo + j]
                rec(x, j, lev - 1)
            inner_fix(x, 0)
    t.root = allp[total - 1]
    t.height = h
    t.count = m
    t.nleaf = sizes[0]
    t.ninner = total - sizes[0]
    if h == 0:
        leaf_agg(<Leaf *>t.root, &t.maxlast, &t.span)
    else:
        inner_agg(<Inner *>t.root, &t.maxlast, &t.span)
    PyMem_Free(allp)
    return 0


# ----------------------------------------------------------------------------- args
cdef inline int _u64(object v, object name, uint64_t *out) except -1:
    # *out = v as a u64; non-ints and out-of-range values raise exactly as _map.u64
    cdef unsigned long r
    if PyLong_Check(v):
        r = _as_ulong(v)
        if r != <unsigned long>-1 or PyErr_Occurred() == NULL:
            out[0] = r
            return 0
        PyErr_Clear()
    out[0] = _as_ulong(_py_u64(v, name))
    return 0


cdef int _perm8(object v, object name, uint64_t *out) except -1:
    # *out = v as a perm (0..255); otherwise raises exactly as _map.perm8
    cdef unsigned long r
    if PyLong_Check(v):
        r = _as_ulong(v)
        if r <= 255:
            out[0] = r
            return 0
        if r == <unsigned long>-1 and PyErr_Occurred() != NULL:
            PyErr_Clear()
    out[0] = _as_ulong(_py_perm8(v, name))
    return 0


cdef object _Map = Map
cdef object _PERM_RW = Perm.RW
cdef object _PERM_RO = Perm.RO
cdef object _EFAULT = _errno.EFAULT
cdef object _EPERM = _errno.EPERM
cdef object _EINVAL = _errno.EINVAL
cdef object _ENOSPC = _errno.ENOSPC
cdef carray.array _QTEMPLATE = _array.array("Q")


def _fail(rc, addr, s, l, perm, access):
    """(internal) the translate exception for a failure code of the C loop."""
    if rc == 1:
        return IOTLBError(_EFAULT, f"translate: no mapping at iova {addr:#x}", iova=addr)
    if rc == 2:
        return IOTLBError(_EPERM,
                          f"translate: entry [{s:#x}, {l:#x}] has perm {perm}, access "
                          f"{access} needed at iova {addr:#x}", iova=addr)
    return OverflowError(f"translate: host address of iova {addr:#x} runs past 2**64-1")


# ----------------------------------------------------------------------------- engine
@cython.no_gc_clear   # a ctx finalizer must never see _ctx already set to None
cdef class IOTLB:
    """An IOTLB: overlapping-allowed interval map of inclusive u64 ranges.

    ``limit`` is ``struct vhost_iotlb``'s ``limit``; ``None`` (the default) is a tree
    with no limit at all, which no kernel has had since "vhost_iotlb: bound map
    allocation in add_range".  With a limit, ``vhost_iotlb_add_range_ctx``'s rules
    hold (see :meth:`map`): ``retire=True`` (``VHOST_IOTLB_FLAG_RETIRE``) evicts the
    oldest insertion when full, without it a full tree refuses with ENOSPC, and a
    limit of 0 refuses every add with EINVAL.

    >>> t = IOTLB()
    >>> t.map(0x1000, 0x1fff, 0x8000)
    >>> t.translate(0x1800, 16)
    [(34816, 16)]
    >>> len(t), t.unmap(), len(t)
    (1, 1, 0)
    """

    # attributes: see _engine.pxd

    def __cinit__(self, *args, **kwargs):
        self._ctx = {}

    def __init__(self, limit=None, *, retire=False):
        cdef uint64_t lim = 0
        cdef bint bounded = limit is not None
        if bounded:
            _u64(limit, "limit", &lim)
        if not isinstance(retire, (bool, int)):
            raise TypeError(f"retire must be a bool, got {type(retire).__name__}")
        old = self._ctx
        t_clear(&self.t)
        if old:                   # a re-init; a new object keeps __cinit__'s empty
            self._ctx = {}        # dict (a second dict per IOTLB() cost ~300 instr.)
        self.t.seq = 0
        self._limit = lim
        self._bounded = bounded
        self._retire = bool(retire)
        self._version += 1

    def __dealloc__(self):
        t_free(&self.t)

    # ----------------------------------------------------------------- properties
    @property
    def limit(self):
        """The entry limit, or None for a tree without one.

        >>> IOTLB(8, retire=True).limit, IOTLB().limit
        (8, None)
        """
        return self._limit if self._bounded else None

    @property
    def retire(self):
        """Whether ``VHOST_IOTLB_FLAG_RETIRE`` is set.

        >>> IOTLB(8, retire=True).retire
        True
        """
        return self._retire

    # ----------------------------------------------------------------- core (C level)
    cdef object _delete_path(self, Path *p, bint *intact=NULL):
        # drop the entry at p; returns its ctx, which the caller releases only after
        # the tree is consistent (a finalizer may call back into the tree); *intact as
        # t_delete's result
        cdef uint64_t meta = p.leaf.meta[p.slot]
        cdef bint kept
        t_reserve_del(&self.t)       # MemoryError here: nothing changed
        ctx = None
        if meta & HASCTX:
            ctx = self._ctx.pop(meta >> 9, None)
        t_own_path(&self.t, p)
        kept = t_delete(&self.t, p)
        if intact != NULL:
            intact[0] = kept
        self._version += 1
        return ctx

    cdef Py_ssize_t _add_range_ctx_limit(self, Py_ssize_t nmaps, bint full,
                                         Py_ssize_t index) except -1:
        # vhost_iotlb_add_range_ctx's limit checks, for one add of [start, last]
        # (last >= start; `full`: exactly [0, ~0], stored as two entries) into a tree
        # holding `nmaps` entries.  Raises what the kernel returns before changing
        # anything; else returns nmaps after the add.  `index` >= 0 tags the error
        # (map_many).  Since "vhost_iotlb: bound map allocation in add_range" (v7.2;
        # stable 6.12.114, 6.1.191):
        #   !limit -> -EINVAL;
        #   [0, ~0]: limit < 2 -> -ENOSPC (RETIRE or not); without RETIRE
        #            nmaps > limit - 2 -> -ENOSPC (both halves checked up front);
        #   nmaps >= limit: RETIRE reuses the oldest entry, else -ENOSPC.
        # Before it, a limit without RETIRE was not enforced and 0 meant unlimited.
        cdef uint64_t lim = self._limit
        cdef Py_ssize_t k = 2 if full else 1
        if not self._bounded:
            return nmaps + k
        if lim == 0:
            raise IOTLBError(_EINVAL, "vhost_iotlb_add_range_ctx: limit 0",
                             index=None if index < 0 else index)
        if full and lim < 2:
            raise IOTLBError(_ENOSPC, f"vhost_iotlb_add_range_ctx: [0, ~0] needs two "
                             f"entries, limit {lim}", index=None if index < 0 else index)
        if self._retire:
            return nmaps + k if <uint64_t>(nmaps + k) <= lim else <Py_ssize_t>lim
        if <uint64_t>(nmaps + k) > lim:
            raise IOTLBError(_ENOSPC, f"vhost_iotlb_add_range_ctx: {nmaps} entries, "
                             f"limit {lim}", index=None if index < 0 else index)
        return nmaps + k

    cdef bint _add_range_ctx_fits(self) noexcept:
        # whether one add of a range other than [0, ~0] passes _add_range_ctx_limit
        # without an error and without retiring anything (the device core's fast
        # path declines otherwise, so the rule itself stays in _add_range_ctx_limit)
        return not self._bounded or <uint64_t>self.t.count < self._limit

    cdef int _add(self, uint64_t s, uint64_t l, uint64_t a, uint64_t perm,
                  object ctx) except -1:
        # the core of add_range_ctx once _add_range_ctx_limit has passed: retire the
        # oldest if full, then insert (s <= l); allocations happen before any change,
        # so MemoryError leaves the tree intact
        cdef bint fifo = self._bounded and self._retire
        cdef uint64_t q, meta
        cdef Path p
        cdef Tree *t = &self.t
        old = None
        t_reserve(t, fifo)
        if fifo:
            q_ready(t)
        q = t.seq
        if q >= SEQ_END:
            raise OverflowError("IOTLB: insertion counter exhausted")
        if fifo and <uint64_t>t.count >= self._limit:
            while t.qhead < t.qtail:
                t.qhead += 1
                if t_find_key(t, t.q[t.qhead - 1].start, t.q[t.qhead - 1].seq, &p):
                    old = self._delete_path(&p)
                    break
        meta = (q << 9) | perm
        if ctx is not None:
            self._ctx[q] = ctx
            meta |= HASCTX
        t.seq = q + 1
        t_insert(t, s, l, a, meta)
        if fifo:
            t.q[t.qtail].start = s
            t.q[t.qtail].seq = q
            t.qtail += 1
        self._version += 1
        return 0

    @cython.boundscheck(False)   # i < n == length of every view (map_many checked)
    @cython.wraparound(False)    # indices are never negative
    cdef int _bulk(self, const uint64_t[::1] vs, const uint64_t[::1] vl,
                   const uint64_t[::1] va, const uint64_t[::1] vp, uint64_t p,
                   bint scalar) except -1:
        # map_many into an empty tree: the validated items, full-space ones split, as
        # packed sorted nodes; with retire only the last `limit` survive, exactly as
        # one map() after another would leave them (no ctx, so nothing is released)
        cdef Py_ssize_t n = vs.shape[0], m = 0, i, keep, k
        cdef Tree *t = &self.t
        cdef bint fifo = self._bounded and self._retire
        cdef bint ordered = True
        cdef uint64_t s, l, a, seq = t.seq
        cdef Ent *e
        cdef Ent *kept
        cdef QKey *nq
        for i in range(n):
            m += 2 if vs[i] == 0 and vl[i] == UMAX else 1
        if seq + <uint64_t>m >= SEQ_END:
            raise OverflowError("IOTLB: insertion counter exhausted")
        e = <Ent *>PyMem_Malloc(m * sizeof(Ent))
        if e == NULL:
            raise MemoryError()
        try:
            k = 0
            for i in range(n):
                s = vs[i]
                l = vl[i]
                a = va[i]
                if not scalar:
                    p = vp[i]
                if s == 0 and l == UMAX:
                    e[k].start = 0
                    e[k].last = HALF_C - 1
                    e[k].addr = a
                    e[k].seq = seq
                    e[k].meta = (seq << 9) | p
                    k += 1
                    seq += 1
                    s = HALF_C
                    a += HALF_C
                e[k].start = s
                e[k].last = l
                e[k].addr = a
                e[k].seq = seq
                e[k].meta = (seq << 9) | p
                k += 1
                seq += 1
            keep = m
            if fifo and <uint64_t>m > self._limit:
                keep = <Py_ssize_t>self._limit
            kept = e + (m - keep)           # the survivors, oldest first
            if fifo:
                if t.qcap < keep:
                    nq = <QKey *>PyMem_Realloc(t.q, keep * sizeof(QKey))
                    if nq == NULL:
                        raise MemoryError()
                    t.q = nq
                    t.qcap = keep
                for k in range(keep):
                    t.q[k].start = kept[k].start
                    t.q[k].seq = kept[k].seq
            for k in range(1, keep):
                if kept[k].start < kept[k - 1].start:
                    ordered = False
                    break
            if not ordered:
                ent_radix(kept, keep)
            t_bulk(t, kept, keep)
            if fifo:
                t.qhead = 0
                t.qtail = keep
            t.seq = seq
            self._version += 1
        finally:
            PyMem_Free(e)
        return 0

    cdef object _mk(self, Leaf *f, int i):
        # the Map of slot i of f (values copied out before any allocation)
        cdef uint64_t s = f.start[i], l = f.last[i], a = f.addr[i], meta = f.meta[i]
        if meta & HASCTX:
            return iotlb_make_map(_Map, s, l, a, meta & 0xff, self._ctx.get(meta >> 9))
        return iotlb_make_map(_Map, s, l, a, meta & 0xff, None)

    cdef int _xlate(self, uint64_t iova, uint64_t last, uint64_t access, list out,
                    uint64_t *host0, XFail *fail) except -1:
        # translate [iova, last]: 0 ok (host0 = first segment's host; segments appended
        # to out unless None), 1 hole (EFAULT), 2 perm (EPERM), 3 host overflow
        cdef Path p
        cdef Leaf *f
        cdef uint64_t addr = iova, es, el, ea, perm, host, end
        cdef bint first = True
        fail.addr = fail.start = fail.last = fail.perm = 0   # callers read every field
        while True:
            if not t_find(&self.t, addr, last, 0, 0, &p) or p.leaf.start[p.slot] > addr:
                fail.addr = addr
                return 1
            f = p.leaf
            es = f.start[p.slot]
            el = f.last[p.slot]
            ea = f.addr[p.slot]
            perm = f.meta[p.slot] & 0xff
            if perm & access != access:
                fail.addr = addr
                fail.start = es
                fail.last = el
                fail.perm = perm
                return 2
            end = last if last < el else el
            if addr - es > UMAX - ea or ea + (addr - es) > UMAX - (end - addr):
                fail.addr = addr
                return 3
            host = ea + (addr - es)
            if first:
                host0[0] = host
                first = False
            if out is not None:
                out.append((host, end - addr + 1))
            if end == last:
                return 0
            addr = end + 1

    # ----------------------------------------------------------------- device layer
    cdef bint _find_first(self, uint64_t s, uint64_t l, Path *p) noexcept:
        # first(s, l) without a Map: fills p (valid until the next change, i.e. while
        # _version stays the same) and returns whether an entry overlaps [s, l]
        return t_find(&self.t, s, l, 0, 0, p)

    cdef bint _is_sole(self, Path *p, uint64_t l) noexcept:
        # p is the first entry overlapping [s, l] (from _find_first): whether it is the
        # only one, i.e. the next entry in key order starts after l (every later one
        # starts no earlier than that)
        cdef Leaf *f = p.leaf
        cdef int level = 1
        if p.slot + 1 < f.n:
            return f.start[p.slot + 1] > l
        while level <= self.t.height:   # the next leaf's first start: its parent record
            if p.idx[level] + 1 < p.node[level].n:
                return p.node[level].kstart[p.idx[level] + 1] > l
            level += 1
        return True

    # ----------------------------------------------------------------- mutation
    def map(self, start, last, addr, perm=_PERM_RW, ctx=None):
        """Add ``[start, last] -> addr`` (``vhost_iotlb_add_range_ctx``).

        Overlaps are kept.  ``last < start`` is EFAULT.  Exactly ``[0, 2**64-1]`` is
        stored as two halves ``[0, 2**63-1] -> addr`` and ``[2**63, ~0] -> addr+2**63``.

        >>> t = IOTLB()
        >>> t.map(0, 2**64 - 1, 0)
        >>> [(hex(m.start), hex(m.last), hex(m.addr)) for m in t]
        [('0x0', '0x7fffffffffffffff', '0x0'), ('0x8000000000000000', '0xffffffffffffffff', '0x8000000000000000')]
        """
        cdef uint64_t s, l, a, p
        _u64(start, "start", &s)
        _u64(last, "last", &l)
        _u64(addr, "addr", &a)
        if perm is _PERM_RW:
            p = 3
        else:
            _perm8(perm, "perm", &p)
        if l < s:
            raise IOTLBError(_EFAULT, f"map: last {l:#x} < start {s:#x}")
        self._add_range_ctx(s, l, a, p, ctx, "map")

    cdef int _add_range_ctx(self, uint64_t s, uint64_t l, uint64_t a, uint64_t p,
                            object ctx, str who) except -1:
        # vhost_iotlb_add_range_ctx once last >= start: exactly [0, ~0] is split in
        # two halves, the limit checks run before anything changes, then the insert(s)
        cdef bint full = s == 0 and l == UMAX
        if full and a > UMAX - HALF_C:
            raise OverflowError(f"{who}: full-space mapping needs addr + 2**63 to fit "
                                f"in 64 bits, got addr {a:#x}")
        self._add_range_ctx_limit(self.t.count, full, -1)
        if full:
            self._add(0, HALF_C - 1, a, p, ctx)
            s = HALF_C
            a += HALF_C
        self._add(s, l, a, p, ctx)
        return 0

    def add_all(self, IOTLB src not None):
        """``map(m.start, m.last, m.addr, m.perm)`` for every entry ``m`` of ``src``,
        ascending, ctx not copied: the copy loop of a parent's ``set_map``
        (``vdpasim_set_map``: ``vhost_iotlb_add_range`` per entry of the given IOTLB).

        As in the kernel the loop stops at the first failing add and raises its error,
        keeping what was added before it (the caller decides whether to wipe).
        Returns the number of entries added.

        Into an empty tree without RETIRE, when every entry fits the limit (and none
        is exactly ``[0, ~0]``, which the loop would split), this is O(1): the two
        trees share their nodes, copy-on-write (see ``copy``), and the entries'
        ctx bits are voided by a floor on their insertion numbers, not rewritten;
        the result is the loop's, insertion order included (ascending).  Otherwise
        the loop runs in C, O(n log n), no per-entry objects.

        >>> src = IOTLB(); src.map(0x3000, 0x3fff, 7, ctx="f"); src.map(0, 0xfff, 5)
        >>> dst = IOTLB(1); dst.add_all(src)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [ENOSPC] vhost_iotlb_add_range_ctx: 1 entries, limit 1
        >>> [(m.start, m.addr, m.ctx) for m in dst]
        [(0, 5, None)]
        """
        if src is self:
            raise ValueError("add_all: source and destination are the same IOTLB")
        return self._add_all(src)

    cdef Py_ssize_t _add_all(self, IOTLB src) except -1:
        # add_all()'s body (src is not self): the number of entries added
        cdef Path w
        cdef Leaf *f
        cdef Py_ssize_t n = 0, v
        cdef int i
        cdef Tree *t = &self.t
        if (t.count == 0 and not (self._bounded and self._retire) and src.t.count > 0
                and src.t.span != UMAX
                and (not self._bounded or <uint64_t>src.t.count <= self._limit)):
            # every add succeeds and none splits: share (vhost_iotlb_add_range per
            # entry in ascending order gives the same entries, in the same order,
            # with insertion order = key order: ctx_floor says so)
            self._ctx.clear()      # no entry, so no ctx: only gives back a grown
            t_clear(t)             # table; spares and queue capacity stay
            t_share(t, &src.t)
            if t.seq >= SEQ_END:
                t_clear(t)
                raise OverflowError("IOTLB: insertion counter exhausted")
            t.ctx_floor = t.seq
            self._version += 1
            return src.t.count
        v = src._version
        f = leaf_first(&src.t, &w)
        while f != NULL:
            for i in range(f.n):
                self._add_range_ctx(f.start[i], f.last[i], f.addr[i], f.meta[i] & 0xff,
                                    None, "add_all")
                n += 1
                if src._version != v:    # a retired entry's finalizer changed src
                    raise RuntimeError("add_all: the source IOTLB changed during the copy")
            f = leaf_next(&src.t, &w)
        return n

    def assign(self, src):
        """Make this IOTLB the copy a ``set_map`` parent keeps of the IOTLB it is given
        (``vdpasim_set_map``, VDUSE's ``vduse_domain_set_map``): wipe it
        (``vhost_iotlb_reset``), then add every entry of ``src`` in ascending order
        (:meth:`add_all`: ``vhost_iotlb_add_range``, ctx not kept); if an add fails
        (ENOSPC past the limit) wipe it again and raise.  ``src`` may also be any
        iterable of Map (each added with ``map(m.start, m.last, m.addr, m.perm)``).
        ``src`` being this IOTLB is a ValueError that changes nothing.

        >>> src = IOTLB(); src.map(0, 0xfff, 0x5000); src.map(0x1000, 0x1fff, 0x6000)
        >>> small = IOTLB(1); small.map(0x9000, 0x9fff, 0)
        >>> small.assign(src)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [ENOSPC] vhost_iotlb_add_range_ctx: 1 entries, limit 1
        >>> len(small)
        0
        >>> small.assign(list(src)[1:]); [hex(m.addr) for m in small]
        ['0x6000']
        """
        if src is self:
            raise ValueError("assign: source and destination are the same IOTLB")
        self._reset()
        try:
            if isinstance(src, IOTLB):
                self._add_all(<IOTLB>src)
            else:
                for m in src:
                    self.map(m.start, m.last, m.addr, m.perm)
        except BaseException:
            self._reset()
            raise

    def unmap(self, start=0, last=U64_MAX):
        """Remove every entry overlapping ``[start, last]`` whole; return how many.

        Entries are never split (``vhost_iotlb_del_range``).  With no arguments
        everything goes, in O(n).

        >>> t = IOTLB()
        >>> t.map(0, 0xfff, 0); t.map(0x1000, 0x1fff, 0x1000)
        >>> t.unmap(0xfff, 0xfff), [m.start for m in t]
        (1, [4096])
        """
        cdef uint64_t s, l
        cdef Py_ssize_t n = 0, v
        cdef Path p
        cdef Leaf *f
        cdef int i
        cdef bint found, intact = False
        _u64(start, "start", &s)
        _u64(last, "last", &l)
        if s == 0 and l == UMAX:
            n = self.t.count
            self._reset()
            return n
        found = t_find(&self.t, s, l, 0, 0, &p)
        while found:
            ctx = self._delete_path(&p, &intact)
            n += 1
            v = self._version
            ctx = None            # released now: its finalizer may change the tree,
            if not intact or self._version != v:   # and then p is stale
                found = t_find(&self.t, s, l, 0, 0, &p)
                continue
            # the next overlap comes after the removed entry: mostly the leaf answers
            f = p.leaf
            i = p.slot
            while i < f.n and f.start[i] <= l and f.last[i] < s:
                i += 1
            if i < f.n:
                if f.start[i] > l:
                    break
                p.slot = i
            else:
                found = t_find(&self.t, s, l, 0, 0, &p)
        return n

    def reset(self):
        """Remove everything; ``limit`` and ``retire`` stay (``vhost_iotlb_reset``).

        >>> t = IOTLB(4, retire=True); t.map(0, 1, 2); t.reset()
        >>> len(t), t.limit, t.retire
        (0, 4, True)
        """
        self._reset()

    cdef int _reset(self) except -1:
        # reset()'s body (also unmap() of everything: set_map parents wipe per message)
        if self._ctx:
            old = self._ctx        # released after the tree is empty
            self._ctx = {}
        else:                      # nothing to release (set_map parents wipe an empty
            self._ctx.clear()      # one per message); gives back a grown table
        t_clear(&self.t)
        self._version += 1
        return 0

    # ----------------------------------------------------------------- lookup
    def first(self, start, last):
        """The overlapping entry with the lowest start, ties by insertion
        (``vhost_iotlb_itree_first``), or None.

        >>> t = IOTLB(); t.map(0x2000, 0x2fff, 0); t.map(0x1000, 0x2fff, 7)
        >>> t.first(0x2800, 0x2800).addr
        7
        >>> t.first(0x3000, 0x4000) is None
        True
        """
        cdef uint64_t s, l
        cdef Path p
        _u64(start, "start", &s)
        _u64(last, "last", &l)
        if t_find(&self.t, s, l, 0, 0, &p):
            return self._mk(p.leaf, p.slot)
        return None

    def overlapping(self, start, last):
        """All entries overlapping ``[start, last]``, ascending start, ties in
        insertion order (``vhost_iotlb_itree_first`` + ``_next``).

        Mutating the tree while iterating raises RuntimeError.

        >>> t = IOTLB(); t.map(0, 9, 0); t.map(5, 20, 0); t.map(30, 40, 0)
        >>> [m.start for m in t.overlapping(8, 30)]
        [0, 5, 30]
        """
        cdef uint64_t s, l
        _u64(start, "start", &s)
        _u64(last, "last", &l)
        return _iter_new(self, s, l)

    def translate(self, iova, size, access=_PERM_RO):
        """Translate ``[iova, iova+size-1]`` into ``(host_addr, length)`` segments,
        one per entry crossed (vhost.c ``translate_desc``, vringh ``iotlb_translate``).

        A hole anywhere raises IOTLBError EFAULT with ``.iova`` = first missing
        address; an entry whose perm lacks any bit of ``access`` raises EPERM.  There
        is never a partial result.

        >>> t = IOTLB(); t.map(0, 0xfff, 0x10000); t.map(0x1000, 0x1fff, 0x30000, Perm.RO)
        >>> [(hex(a), n) for a, n in t.translate(0xff0, 0x20)]
        [('0x10ff0', 16), ('0x30000', 16)]
        >>> t.translate(0x1000, 1, Perm.WO)
        Traceback (most recent call last):
        ...
        iotlb.errors.IOTLBError: [EPERM] translate: entry [0x1000, 0x1fff] has perm 1, access 2 needed at iova 0x1000
        """
        cdef uint64_t i, sz, acc, host
        cdef XFail fl
        cdef list out
        cdef int rc
        _u64(iova, "iova", &i)
        _u64(size, "size", &sz)
        if access is _PERM_RO:
            acc = 1
        else:
            _perm8(access, "access", &acc)
        if sz == 0:
            raise ValueError("translate: size must be > 0")
        if sz - 1 > UMAX - i:                 # the kernel's u64 wraps: the rule
            return translate_wrapped(self, i, sz, acc)
        out = []
        rc = self._xlate(i, i + (sz - 1), acc, out, &host, &fl)
        if rc == 0:
            return out
        if rc == 3:                           # a host address wraps: the rule
            return translate_wrapped(self, i, sz, acc)
        raise _fail(rc, fl.addr, fl.start, fl.last, fl.perm, acc)

    # ----------------------------------------------------------------- batch forms
    @cython.boundscheck(False)   # every index is < n, the common length checked above
    @cython.wraparound(False)    # indices are never negative
    def map_many(self, starts, lasts, addrs, perms=_PERM_RW):
        """``map`` for every i, in order, from uint64 buffers; all-or-nothing.

        ``perms`` is one int for all or a uint64 buffer.  Every item is checked before
        anything is inserted; a bad item raises with ``.index`` (IOTLBError) or names
        its index (TypeError/OverflowError).  Returns the number of items.

        >>> from array import array
        >>> t = IOTLB()
        >>> t.map_many(array('Q', [0, 0x1000]), array('Q', [0xfff, 0x1fff]), array('Q', [0, 0]))
        2
        """
        cdef const uint64_t[::1] vs = _u64_buffer(starts, "starts")
        cdef const uint64_t[::1] vl = _u64_buffer(lasts, "lasts")
        cdef const uint64_t[::1] va = _u64_buffer(addrs, "addrs")
        cdef const uint64_t[::1] vp
        cdef Py_ssize_t n = vs.shape[0], i, nmaps = self.t.count
        cdef uint64_t p = 3, s, l, a
        cdef bint scalar = True
        if vl.shape[0] != n or va.shape[0] != n:
            raise ValueError(f"map_many: buffers differ in length ({n}, {vl.shape[0]}, "
                             f"{va.shape[0]})")
        if _is_scalar(perms):
            _perm8(perms, "perm", &p)
        else:
            vp = _u64_buffer(perms, "perms")
            scalar = False
            if vp.shape[0] != n:
                raise ValueError(f"map_many: perms has {vp.shape[0]} items, expected {n}")
        for i in range(n):
            s = vs[i]
            l = vl[i]
            if not scalar and vp[i] > 255:
                raise OverflowError(f"map_many: perms[{i}] must be in 0..255, got "
                                    f"{vp[i]}")
            if l < s:
                raise IOTLBError(_EFAULT, f"map_many: item {i}: last {l:#x} < "
                                 f"start {s:#x}", index=i)
            if s == 0 and l == UMAX and va[i] > UMAX - HALF_C:
                raise OverflowError(f"map_many: item {i}: full-space mapping needs "
                                    f"addr + 2**63 to fit in 64 bits")
            nmaps = self._add_range_ctx_limit(nmaps, s == 0 and l == UMAX, i)
        if self.t.count == 0 and n >= 64:
            self._bulk(vs, vl, va, vp, p, scalar)
            return n
        for i in range(n):
            s = vs[i]
            l = vl[i]
            a = va[i]
            if not scalar:
                p = vp[i]
            if s == 0 and l == UMAX:
                self._add(0, HALF_C - 1, a, p, None)
                s = HALF_C
                a += HALF_C
            self._add(s, l, a, p, None)
        return n

    @cython.boundscheck(False)   # every index is < n, the common length checked above
    @cython.wraparound(False)    # indices are never negative
    def translate_many(self, iovas, sizes=1, access=_PERM_RO, *, default=None):
        """For every i, the host address of ``iovas[i]`` when all of
        ``[iovas[i], iovas[i]+sizes[i]-1]`` translates with ``access``.

        ``sizes`` is one int or a uint64 buffer.  A failing item raises its
        IOTLBError with ``.index`` set, or, when ``default`` is given, yields
        ``default`` instead.  Returns ``array('Q')``.

        >>> from array import array
        >>> t = IOTLB(); t.map(0x1000, 0x1fff, 0x9000)
        >>> list(t.translate_many(array('Q', [0x1000, 0x1ff0, 0x5000]), 16, default=0))
        [36864, 40944, 0]
        """
        cdef const uint64_t[::1] vi = _u64_buffer(iovas, "iovas")
        cdef const uint64_t[::1] vsz
        cdef Py_ssize_t n = vi.shape[0], i
        cdef uint64_t size = 0, dflt = 0, acc = 1, iova, sz, host = 0
        cdef bint scalar = True, has_default = default is not None
        cdef carray.array out
        cdef uint64_t *o
        cdef XFail fl
        cdef int rc
        if _is_scalar(sizes):
            _u64(sizes, "sizes", &size)
        else:
            vsz = _u64_buffer(sizes, "sizes")
            scalar = False
            if vsz.shape[0] != n:
                raise ValueError(f"translate_many: sizes has {vsz.shape[0]} items, "
                                 f"expected {n}")
        if has_default:
            _u64(default, "default", &dflt)
        out = carray.clone(_QTEMPLATE, n, False)
        o = <uint64_t *>out.data.as_ulonglongs
        if n and access is not _PERM_RO:
            try:
                _perm8(access, "access", &acc)
            except (ValueError, OverflowError) as e:
                raise type(e)(f"translate_many: item 0: {e}") from None
        for i in range(n):
            iova = vi[i]
            sz = size if scalar else vsz[i]
            if sz == 0:
                raise ValueError(f"translate_many: item {i}: translate: size must be > 0")
            rc = 3 if sz - 1 > UMAX - iova else \
                self._xlate(iova, iova + (sz - 1), acc, None, &host, &fl)
            if rc == 0:
                o[i] = host
            elif rc == 3:                     # the kernel's u64 wraps: the rule
                try:
                    o[i] = translate_wrapped(self, iova, sz, acc)[0][0]
                except IOTLBError as e:
                    if not has_default:
                        e.index = i
                        raise
                    o[i] = dflt
            elif has_default:
                o[i] = dflt
            else:
                e = _fail(rc, fl.addr, fl.start, fl.last, fl.perm, acc)
                e.index = i
                raise e
        return out

    # ----------------------------------------------------------------- container
    def __len__(self):
        return self.t.count

    def __bool__(self):
        return self.t.count != 0

    def __iter__(self):
        return _iter_new(self, 0, UMAX)

    def __eq__(self, other):
        cdef Leaf *f
        cdef Leaf *g
        cdef Path pf, pg
        cdef int i = 0, k = 0
        if isinstance(other, IOTLB):
            if self.t.count != (<IOTLB>other).t.count:
                return False
            if self.t.root == (<IOTLB>other).t.root:
                return True       # shared (or both empty)
            f = leaf_first(&self.t, &pf)
            g = leaf_first(&(<IOTLB>other).t, &pg)
            while f != NULL and g != NULL:
                if i == f.n:
                    f = leaf_next(&self.t, &pf)
                    i = 0
                    continue
                if k == g.n:
                    g = leaf_next(&(<IOTLB>other).t, &pg)
                    k = 0
                    continue
                if (f.start[i] != g.start[k] or f.last[i] != g.last[k]
                        or f.addr[i] != g.addr[k]
                        or (f.meta[i] & 0xff) != (g.meta[k] & 0xff)):
                    return False
                i += 1
                k += 1
            return True
        if not isinstance(other, IOTLBBase):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(a[:4] == b[:4] for a, b in zip(self, other))

    def __ne__(self, other):
        r = self.__eq__(other)
        if r is NotImplemented:
            return r
        return not r

    __hash__ = None  # mutable

    def __repr__(self):
        shown = [repr(m) for m in _itertools.islice(self, 8)]
        if len(self) > 8:
            shown.append(f"... {len(self) - 8} more")
        return (f"IOTLB([{', '.join(shown)}], limit={self.limit}, "
                f"retire={bool(self._retire)})")

    def _insertion_order(self):
        """Every entry as ``(start, last, addr, perm, ctx)``, oldest first.

        Entries shared by ``add_all`` (seq below ``ctx_floor``) were inserted in
        ascending key order before any other, as the kernel's copy loop does.

        >>> t = IOTLB(); t.map(5, 6, 0); t.map(1, 2, 0, ctx="c")
        >>> t._insertion_order()
        [(5, 6, 0, 3, None), (1, 2, 0, 3, 'c')]
        >>> u = IOTLB(); u.add_all(t); u.map(0, 0, 9); u._insertion_order()
        2
        [(1, 2, 0, 3, None), (5, 6, 0, 3, None), (0, 0, 9, 3, None)]
        """
        cdef Py_ssize_t n = self.t.count, k = 0, i
        cdef Ent *e
        cdef Path w
        cdef Leaf *f = leaf_first(&self.t, &w)
        cdef uint64_t floor = self.t.ctx_floor, q
        cdef list res
        if n == 0:
            return []
        e = <Ent *>PyMem_Malloc(n * sizeof(Ent))
        if e == NULL:
            raise MemoryError()
        try:
            while f != NULL:
                for i in range(f.n):
                    q = f.meta[i] >> 9
                    # sort key: below the floor by position (key order), then by seq
                    e[k].seq = <uint64_t>k if q < floor else q - floor + <uint64_t>n
                    e[k].start = f.start[i]
                    e[k].last = f.last[i]
                    e[k].addr = f.addr[i]
                    e[k].meta = f.meta[i]
                    k += 1
                f = leaf_next(&self.t, &w)
            qsort(e, n, sizeof(Ent), ent_cmp)
            ctxs = self._ctx
            res = [None] * n
            for i in range(n):
                res[i] = (e[i].start, e[i].last, e[i].addr, e[i].meta & 0xff,
                          ctxs.get(e[i].meta >> 9) if e[i].meta & HASCTX else None)
            return res
        finally:
            PyMem_Free(e)

    def _load(self, entries):
        """Append stored entries (already split halves) in the given order.

        >>> t = IOTLB(); t._load([(1, 2, 3, 1, None)]); list(t)
        [Map(start=0x1, last=0x2, addr=0x3, perm=1)]
        """
        cdef uint64_t s, l, a, p
        for start, last, addr, perm, ctx in entries:
            _u64(start, "start", &s)
            _u64(last, "last", &l)
            _u64(addr, "addr", &a)
            _perm8(perm, "perm", &p)
            if l < s:
                raise ValueError(f"_load: last {l:#x} < start {s:#x}")
            if self._bounded and not self._retire and <uint64_t>self.t.count >= self._limit:
                raise ValueError(f"_load: more entries than limit {self._limit}")
            self._add(s, l, a, p, ctx)

    def copy(self):
        """A new tree with the same limit, retire flag, entries, ctx and insertion
        order.

        O(1) for the entries: the two trees share their nodes until either changes,
        and a change copies only the nodes on its path (copy-on-write); the ctx table
        and a RETIRE queue are copied, O(their size).

        >>> t = IOTLB(); t.map(1, 2, 3, ctx="x"); c = t.copy()
        >>> c == t, next(iter(c)).ctx
        (True, 'x')
        >>> c.map(5, 6, 7); len(t), len(c)
        (1, 2)
        """
        cdef IOTLB new = type(self)(self.limit, retire=self._retire)
        cdef Tree *d = &new.t
        cdef Tree *t = &self.t
        cdef Py_ssize_t live
        if d.root != NULL or t.root == NULL:   # a subclass filled it: stay generic
            new._load(self._insertion_order())
            return new
        live = t.qtail - t.qhead
        if live:
            d.q = <QKey *>PyMem_Malloc(live * sizeof(QKey))
            if d.q == NULL:
                raise MemoryError()
            memcpy(d.q, &t.q[t.qhead], live * sizeof(QKey))
            d.qcap = d.qtail = live
            d.qhead = 0
        ctxs = dict(self._ctx)
        t_share(d, t)
        d.seq = t.seq
        d.ctx_floor = t.ctx_floor
        new._ctx = ctxs
        return new

    def __copy__(self):
        """``copy.copy(t)`` is ``t.copy()``.

        >>> import copy; t = IOTLB(); t.map(1, 2, 3); copy.copy(t) == t
        True
        """
        return self.copy()

    def __reduce__(self):
        """Pickle as ``_pyengine._restore(cls, limit, retire, entries)``, the format
        both engines share (entries in insertion order, with their ctx).

        >>> import pickle; t = IOTLB(2, retire=True); t.map(1, 2, 3, ctx="c")
        >>> u = pickle.loads(pickle.dumps(t)); u == t, u.limit, u._insertion_order()
        (True, 2, [(1, 2, 3, 3, 'c')])
        """
        return (_restore, (type(self), self.limit, bool(self._retire),
                           self._insertion_order()))

    def __sizeof__(self):
        """The object plus every byte of C memory it holds (nodes, spares, queue);
        nodes shared with another tree (``copy``, ``add_all``) count in each.

        >>> t = IOTLB(); n = t.__sizeof__()
        >>> for i in range(1000): t.map(i * 16, i * 16 + 15, 0)
        >>> 32_000 < t.__sizeof__() - n < 64_000
        True
        """
        cdef Tree *t = &self.t
        return (object.__sizeof__(self)
                + (t.nleaf + t.nspare_leaf) * sizeof(Leaf)
                + (t.ninner + t.nspare_inner) * sizeof(Inner)
                + t.qcap * sizeof(QKey))

    # ----------------------------------------------------------------- invariants
    def _check(self):
        """Assert every structural invariant (sortedcontainers' ``_check`` idiom).

        >>> t = IOTLB(2, retire=True); t.map(0, 9, 0); t.map(5, 6, 1, ctx=1); t._check()
        """
        was_enabled = _gc.isenabled()
        _gc.disable()     # no finalizer may change the tree while it is walked
        try:
            self._check_walk()
        finally:
            if was_enabled:
                _gc.enable()

    cdef _check_walk(self):
        # _check's body (runs with the garbage collector off)
        cdef Tree *t = &self.t
        cdef _Chk st = _Chk()
        cdef uint64_t ml = 0, sp = 0, ks = 0, kq = 0
        cdef Path p
        cdef Inner *x
        cdef int k
        cdef Py_ssize_t i
        if t.root == NULL:
            _req(t.count == 0 and t.height == 0, "empty tree state")
            _req(t.nleaf == 0 and t.ninner == 0, "empty tree node counts")
        else:
            st.seq_end = t.seq
            st.cow = t.cow
            st.floor = t.ctx_floor
            _chk_node(st, t.root, t.height, True, True, &ml, &sp, &ks, &kq)
            _req(st.count == t.count, f"count {t.count} != entries {st.count}")
            _req(st.nleaf == t.nleaf and st.ninner == t.ninner, "node counts")
            _req(ml == t.maxlast, "root max last")
            _req(sp == t.span, "root span")
        _req(t.height < MAXH, "height")
        _req(0 <= t.nspare_leaf <= NSPARE_L and 0 <= t.nspare_inner <= NSPARE_I, "spares")
        x = t.spare_inner                 # the spare stack holds exactly nspare_inner
        for k in range(t.nspare_inner):
            _req(x != NULL, "spare inner stack shorter than nspare_inner")
            x = <Inner *>x.child[0]
        _req(x == NULL, "spare inner stack longer than nspare_inner")
        _req(t.ctx_floor <= t.seq, "ctx floor above the counter")
        _req(set(self._ctx) == st.ctx_seqs, "ctx table != has_ctx bits (above the floor)")
        _req(all(c is not None for c in self._ctx.values()), "None stored as ctx")
        if self._bounded:
            _req(<uint64_t>t.count <= self._limit, "more entries than limit")
        if self._bounded and self._retire:
            _req(0 <= t.qhead <= t.qtail <= t.qcap, "queue bounds")
            live = []
            for i in range(t.qhead, t.qtail):
                _req(i == t.qhead or t.q[i].seq > t.q[i - 1].seq,
                     "queue not in insertion order")
                if t_find_key(t, t.q[i].start, t.q[i].seq, &p):
                    live.append((t.q[i].start, t.q[i].seq))
            order = sorted(st.keys, key=lambda k: k[1])
            _req(live == order, "retire queue does not list every entry in insertion order")
        else:
            _req(t.qhead == t.qtail == 0, "queue used without retire")


def _req(ok, what):
    """(internal) raise AssertionError(what) unless ok (works under python -O too)."""
    if not ok:
        raise AssertionError(f"IOTLB invariant: {what}")


@cython.final
cdef class _Chk:
    # walk state of IOTLB._check
    cdef Py_ssize_t count, nleaf, ninner
    cdef uint64_t ps, pq, seq_end, floor
    cdef bint started, cow
    cdef set ctx_seqs
    cdef list keys

    def __cinit__(self):
        self.ctx_seqs = set()
        self.keys = []


cdef int _chk_node(_Chk st, void *node, int level, bint rs, bint root, uint64_t *ml,
                   uint64_t *sp, uint64_t *ks, uint64_t *kq) except -1:
    # check node's subtree; return its exact max last, max span and min key
    cdef Leaf *f
    cdef Inner *x
    cdef int i, j, n = node_n(node, level)
    cdef uint64_t m = 0, s = 0, cml, csp, cks, ckq, q
    _req(1 <= n, "empty node")
    _req((<Hdr *>node).rc >= 1, "node without a reference")
    _req(st.cow or (<Hdr *>node).rc == 1, "shared node in a tree that never shared")
    if level == 0:
        f = <Leaf *>node
        _req(n <= LCAP, "leaf overfull")
        _req(root or rs or n >= LMIN, f"leaf under-full ({n}) off the right spine")
        st.nleaf += 1
        for i in range(n):
            q = f.meta[i] >> 9
            _req(f.start[i] <= f.last[i], "entry with last < start")
            _req(q < st.seq_end, "seq not below the counter")
            _req(not st.started or st.ps < f.start[i]
                 or (st.ps == f.start[i] and st.pq < q), "keys not strictly ascending")
            _req((f.meta[i] >> 8) & 1 == ((f.meta[i] & HASCTX) != 0), "meta bits")
            st.started = True
            st.ps = f.start[i]
            st.pq = q
            st.keys.append((f.start[i], q))
            if f.meta[i] & HASCTX and q >= st.floor:
                st.ctx_seqs.add(q)
            if f.last[i] > m:
                m = f.last[i]
            _req(f.pmax[i] == m, "leaf prefix max")
            if f.last[i] - f.start[i] > s:
                s = f.last[i] - f.start[i]
        st.count += n
        ml[0] = m
        sp[0] = s
        ks[0] = f.start[0]
        kq[0] = f.meta[0] >> 9
        return 0
    x = <Inner *>node
    st.ninner += 1
    _req(n <= ICAP, "inner node overfull")
    _req(n >= 2, "inner node with one child")
    _req(root or rs or n >= IMIN, f"inner node under-full ({n}) off the right spine")
    for j in range(n):
        _chk_node(st, x.child[j], level - 1, rs and j == n - 1, False,
                  &cml, &csp, &cks, &ckq)
        _req(x.kstart[j] == cks and x.kseq[j] == ckq, "child min key record")
        _req(x.maxlast[j] == cml, "child max last record")
        _req(x.span[j] >= csp, "child span bound below the true span")
        _req(x.span[j] == csp, "child span record not exact")
        if cml > m:
            m = cml
        _req(x.pmax[j] == m, "inner prefix max")
        if csp > s:
            s = csp
    ml[0] = m
    sp[0] = s
    ks[0] = x.kstart[0]
    kq[0] = x.kseq[0]
    return 0


# ----------------------------------------------------------------------------- iterator
@cython.final
cdef class _Iter:
    # overlapping()/__iter__ cursor: (leaf, slot) valid only while the tree's version
    # is the one seen at the first next(); a change raises RuntimeError
    cdef IOTLB tree
    cdef Leaf *leaf
    cdef int slot
    cdef int state           # 0 not started, 1 running, 2 finished
    cdef uint64_t s, l
    cdef Py_ssize_t version

    def __iter__(self):
        return self

    def __next__(self):
        cdef Path p
        cdef Tree *t = &self.tree.t
        cdef Leaf *f
        cdef int i
        if self.state == 2:
            raise StopIteration
        if self.state == 0:
            self.state = 1
            self.version = self.tree._version
            if not t_find(t, self.s, self.l, 0, 0, &p):
                self.state = 2
                raise StopIteration
            f = p.leaf
            i = p.slot
        else:
            if self.tree._version != self.version:
                self.state = 2
                raise RuntimeError("IOTLB changed size during iteration")
            f = self.leaf
            i = self.slot + 1
            while True:
                if i < f.n:
                    if f.start[i] > self.l:
                        self.state = 2
                        raise StopIteration
                    if f.last[i] >= self.s:
                        break
                    i += 1
                else:
                    if not t_find(t, self.s, self.l, self.leaf.start[self.slot],
                                  (self.leaf.meta[self.slot] >> 9) + 1, &p):
                        self.state = 2
                        raise StopIteration
                    f = p.leaf
                    i = p.slot
                    break
        self.leaf = f
        self.slot = i
        return self.tree._mk(f, i)


cdef _Iter _iter_new(IOTLB tree, uint64_t s, uint64_t l):
    # a lazy cursor over the entries of tree overlapping [s, l]
    cdef _Iter it = _Iter.__new__(_Iter)
    it.tree = tree
    it.s = s
    it.l = l
    return it


IOTLBBase.register(IOTLB)
