// The native floor for benchmarks/peers.py: the same workload, driven in a C++ loop.
//
// Two structures:
//   stdmap -- std::map<start, {last, addr, perm}>, the classic ordered-map interval
//             lookup: predecessor by start, hit if it reaches the address.  Exact only
//             for disjoint entries (the workload is disjoint); no augmentation.
//   btree  -- a B+tree with 64-entry leaves and inner nodes that keep, per child, the
//             lowest start and the highest last (the interval-tree augmentation), so
//             first/overlap/unmap have vhost_iotlb semantics: closed ranges, overlaps
//             kept, first = lowest start, ties by insertion order, whole-entry unmap.
//
// Usage: floor WORKLOAD_FILE time CHECK_M [CHUNK [MIN_NS [cpu|wall]]] -> JSON, ns/op
//        per sample (default clock: CLOCK_THREAD_CPUTIME_ID)
//        (with CHUNK: one repeat of every op, churning with chunk CHUNK; peers.py runs
//        one such process per repeat, interleaved with the Python contenders)
//        floor WORKLOAD_FILE mem stdmap|btree -> JSON with bytes per entry
// The workload file is written by benchmarks/peers.py (all little-endian u64):
//   magic "IOTLBWK1", n, k_lookup, k_overlap, k_churn, chunks, repeats,
//   starts[n] lasts[n] addrs[n] lookups[k_lookup] ov_s[k_overlap] ov_l[k_overlap]
//   churn_us ul ms ml ma [k_churn*chunks each]
//        floor selftest                       -> checks the B+tree against a brute force
// Build: g++ -O2 -std=c++17 floor.cpp -o floor   (peers.py does this in a temp dir)
#include <algorithm>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <malloc.h>
#include <string>
#include <unistd.h>
#include <vector>

typedef uint64_t u64;
static const u64 U64_MAX = ~(u64)0;

struct Work {
    u64 n, kl, ko, kc, chunks, repeats;
    std::vector<u64> starts, lasts, addrs, lookups, ov_s, ov_l, us, ul, ms, ml, ma;
};

static void die(const char *msg) {
    fprintf(stderr, "floor: %s\n", msg);
    exit(2);
}

static Work load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open workload file");
    Work w;
    u64 hdr[7];
    if (fread(hdr, 8, 7, f) != 7 || memcmp(&hdr[0], "IOTLBWK1", 8) != 0) die("bad header");
    w.n = hdr[1]; w.kl = hdr[2]; w.ko = hdr[3]; w.kc = hdr[4]; w.chunks = hdr[5];
    w.repeats = hdr[6];
    auto rd = [&](std::vector<u64> &v, u64 k) {
        v.resize(k);
        if (k && fread(v.data(), 8, k, f) != k) die("short workload file");
    };
    rd(w.starts, w.n); rd(w.lasts, w.n); rd(w.addrs, w.n);
    rd(w.lookups, w.kl); rd(w.ov_s, w.ko); rd(w.ov_l, w.ko);
    u64 c = w.kc * w.chunks;
    rd(w.us, c); rd(w.ul, c); rd(w.ms, c); rd(w.ml, c); rd(w.ma, c);
    fclose(f);
    return w;
}

struct Hit { u64 start, last, addr; };

// ------------------------------------------------------------------ std::map
struct Val { u64 last, addr; uint8_t perm; };

struct StdMap {
    std::map<u64, Val> m;
    void map(u64 s, u64 l, u64 a) { m[s] = Val{l, a, 3}; }
    std::map<u64, Val>::iterator lo(u64 s) {  // first entry that may overlap [s, ..]
        auto it = m.upper_bound(s);
        if (it != m.begin()) {
            auto p = std::prev(it);
            if (p->second.last >= s) return p;
        }
        return it;
    }
    bool first(u64 s, u64 l, Hit &h) {
        auto it = lo(s);
        if (it == m.end() || it->first > l) return false;
        h = Hit{it->first, it->second.last, it->second.addr};
        return true;
    }
    void overlap(u64 s, u64 l, std::vector<Hit> &out) {
        out.clear();
        for (auto it = lo(s); it != m.end() && it->first <= l; ++it)
            out.push_back(Hit{it->first, it->second.last, it->second.addr});
    }
    size_t unmap(u64 s, u64 l) {
        auto a = lo(s), b = a;
        size_t k = 0;
        while (b != m.end() && b->first <= l) { ++b; ++k; }
        m.erase(a, b);
        return k;
    }
    u64 iterate() {
        u64 x = 0;
        for (auto &kv : m) x += kv.second.addr;
        return x;
    }
    size_t size() const { return m.size(); }
};

// ------------------------------------------------------------------ B+tree
static const int B = 64;

struct Node { bool leaf; int n; };
struct Leaf : Node { u64 start[B], last[B], addr[B]; uint8_t perm[B]; };
struct Inner : Node { u64 minstart[B], maxlast[B]; Node *child[B]; };

static u64 node_min(Node *nd) {
    return nd->leaf ? ((Leaf *)nd)->start[0] : ((Inner *)nd)->minstart[0];
}
static u64 node_max(Node *nd) {
    u64 m = 0;
    if (nd->leaf) {
        Leaf *L = (Leaf *)nd;
        for (int i = 0; i < L->n; i++) m = std::max(m, L->last[i]);
    } else {
        Inner *I = (Inner *)nd;
        for (int i = 0; i < I->n; i++) m = std::max(m, I->maxlast[i]);
    }
    return m;
}

struct BTree {
    Node *root;
    size_t count = 0;
    BTree() { root = new_leaf(); }
    ~BTree() { free_node(root); }
    static Leaf *new_leaf() { Leaf *L = (Leaf *)malloc(sizeof(Leaf)); L->leaf = true; L->n = 0; return L; }
    static Inner *new_inner() { Inner *I = (Inner *)malloc(sizeof(Inner)); I->leaf = false; I->n = 0; return I; }
    static void free_node(Node *nd) {
        if (!nd->leaf) {
            Inner *I = (Inner *)nd;
            for (int i = 0; i < I->n; i++) free_node(I->child[i]);
        }
        free(nd);
    }

    // insert; returns a new right sibling when nd split
    Node *ins(Node *nd, u64 s, u64 l, u64 a, uint8_t p) {
        if (nd->leaf) {
            Leaf *L = (Leaf *)nd, *R = nullptr;
            if (L->n == B) {  // split 32/32 first
                R = new_leaf();
                int h = B / 2;
                memcpy(R->start, L->start + h, 8 * h); memcpy(R->last, L->last + h, 8 * h);
                memcpy(R->addr, L->addr + h, 8 * h); memcpy(R->perm, L->perm + h, h);
                R->n = h; L->n = h;
                if (s >= R->start[0]) L = R;
            }
            int i = std::upper_bound(L->start, L->start + L->n, s) - L->start;
            int k = L->n - i;
            memmove(L->start + i + 1, L->start + i, 8 * k); memmove(L->last + i + 1, L->last + i, 8 * k);
            memmove(L->addr + i + 1, L->addr + i, 8 * k); memmove(L->perm + i + 1, L->perm + i, k);
            L->start[i] = s; L->last[i] = l; L->addr[i] = a; L->perm[i] = p; L->n++;
            return R;
        }
        Inner *I = (Inner *)nd;
        int i = std::upper_bound(I->minstart, I->minstart + I->n, s) - I->minstart - 1;
        if (i < 0) i = 0;
        Node *sib = ins(I->child[i], s, l, a, p);
        if (!sib) {
            if (s < I->minstart[i]) I->minstart[i] = s;
            if (l > I->maxlast[i]) I->maxlast[i] = l;
            return nullptr;
        }
        I->minstart[i] = node_min(I->child[i]);
        I->maxlast[i] = node_max(I->child[i]);
        Inner *T = I, *R = nullptr;
        int at = i + 1;
        if (I->n == B) {
            R = new_inner();
            int h = B / 2;
            memcpy(R->minstart, I->minstart + h, 8 * h); memcpy(R->maxlast, I->maxlast + h, 8 * h);
            memcpy(R->child, I->child + h, sizeof(Node *) * h);
            R->n = h; I->n = h;
            if (at > h) { T = R; at -= h; }
        }
        int k = T->n - at;
        memmove(T->minstart + at + 1, T->minstart + at, 8 * k);
        memmove(T->maxlast + at + 1, T->maxlast + at, 8 * k);
        memmove(T->child + at + 1, T->child + at, sizeof(Node *) * k);
        T->minstart[at] = node_min(sib); T->maxlast[at] = node_max(sib); T->child[at] = sib;
        T->n++;
        return R;
    }
    void map(u64 s, u64 l, u64 a) {
        Node *sib = ins(root, s, l, a, 3);
        count++;
        if (sib) {
            Inner *I = new_inner();
            I->n = 2;
            I->child[0] = root; I->minstart[0] = node_min(root); I->maxlast[0] = node_max(root);
            I->child[1] = sib; I->minstart[1] = node_min(sib); I->maxlast[1] = node_max(sib);
            root = I;
        }
    }
    static bool first_in(Node *nd, u64 s, u64 l, Hit &h) {
        if (nd->leaf) {
            Leaf *L = (Leaf *)nd;
            for (int i = 0; i < L->n && L->start[i] <= l; i++)
                if (L->last[i] >= s) { h = Hit{L->start[i], L->last[i], L->addr[i]}; return true; }
            return false;
        }
        Inner *I = (Inner *)nd;
        for (int i = 0; i < I->n && I->minstart[i] <= l; i++)
            if (I->maxlast[i] >= s && first_in(I->child[i], s, l, h)) return true;
        return false;
    }
    bool first(u64 s, u64 l, Hit &h) { return count && first_in(root, s, l, h); }
    static void overlap_in(Node *nd, u64 s, u64 l, std::vector<Hit> &out) {
        if (nd->leaf) {
            Leaf *L = (Leaf *)nd;
            for (int i = 0; i < L->n && L->start[i] <= l; i++)
                if (L->last[i] >= s) out.push_back(Hit{L->start[i], L->last[i], L->addr[i]});
            return;
        }
        Inner *I = (Inner *)nd;
        for (int i = 0; i < I->n && I->minstart[i] <= l; i++)
            if (I->maxlast[i] >= s) overlap_in(I->child[i], s, l, out);
    }
    void overlap(u64 s, u64 l, std::vector<Hit> &out) {
        out.clear();
        if (count) overlap_in(root, s, l, out);
    }
    // remove the first overlapping entry; empty nodes are unlinked (no merging)
    static bool remove_in(Node *nd, u64 s, u64 l) {
        if (nd->leaf) {
            Leaf *L = (Leaf *)nd;
            for (int i = 0; i < L->n && L->start[i] <= l; i++)
                if (L->last[i] >= s) {
                    int k = L->n - i - 1;
                    memmove(L->start + i, L->start + i + 1, 8 * k); memmove(L->last + i, L->last + i + 1, 8 * k);
                    memmove(L->addr + i, L->addr + i + 1, 8 * k); memmove(L->perm + i, L->perm + i + 1, k);
                    L->n--;
                    return true;
                }
            return false;
        }
        Inner *I = (Inner *)nd;
        for (int i = 0; i < I->n && I->minstart[i] <= l; i++) {
            if (I->maxlast[i] < s || !remove_in(I->child[i], s, l)) continue;
            Node *c = I->child[i];
            if (c->n == 0) {
                free(c);
                int k = I->n - i - 1;
                memmove(I->minstart + i, I->minstart + i + 1, 8 * k);
                memmove(I->maxlast + i, I->maxlast + i + 1, 8 * k);
                memmove(I->child + i, I->child + i + 1, sizeof(Node *) * k);
                I->n--;
            } else {
                I->minstart[i] = node_min(c);
                I->maxlast[i] = node_max(c);
            }
            return true;
        }
        return false;
    }
    size_t unmap(u64 s, u64 l) {
        if (s == 0 && l == U64_MAX) {  // range-unmap 0..~0: free every node, O(n)
            size_t k = count;
            free_node(root);
            root = new_leaf();
            count = 0;
            return k;
        }
        size_t k = 0;
        while (count && remove_in(root, s, l)) { k++; count--; }
        while (!root->leaf && root->n <= 1) {
            Inner *I = (Inner *)root;
            if (I->n == 1) { root = I->child[0]; free(I); }
            else { free(I); root = new_leaf(); }
        }
        return k;
    }
    static u64 iterate_in(Node *nd) {
        u64 x = 0;
        if (nd->leaf) {
            Leaf *L = (Leaf *)nd;
            for (int i = 0; i < L->n; i++) x += L->addr[i];
        } else {
            Inner *I = (Inner *)nd;
            for (int i = 0; i < I->n; i++) x += iterate_in(I->child[i]);
        }
        return x;
    }
    u64 iterate() { return iterate_in(root); }
    size_t size() const { return count; }
};

// ------------------------------------------------------------------ driver
static bool cpu_clock = true;  // this thread's CPU time, like peers.py's default
static inline u64 now_ns() {
    struct timespec ts;
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return u64(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}
static volatile u64 sink;

static void emit(const char *op, const std::vector<double> &v, bool comma = true) {
    printf("\"%s\": [", op);
    for (size_t i = 0; i < v.size(); i++) printf("%s%.3f", i ? ", " : "", v[i]);
    printf("]%s", comma ? ", " : "");
}

// time f() until min_ns has passed (at least once, at most 100 samples); ns per op
template <class F>
static void sample(std::vector<double> &v, u64 count, u64 min_ns, F f) {
    u64 stop = now_ns() + min_ns;
    for (int k = 0; k < 100; k++) {
        u64 t0 = now_ns();
        f();
        u64 t1 = now_ns();
        v.push_back(double(t1 - t0) / count);
        if (t1 >= stop) break;
    }
}

// `reps` repeats of every op; repeat r churns with chunk `chunk0 + r`.  Like peers.py:
// each build first range-unmaps 0..~0 the one before (timed), the last build serves
// the queries, churn runs on it, and a final unmap 0..~0 of the churned tree is timed.
template <class T>
static void run(const char *name, const Work &w, u64 m, u64 reps, u64 chunk0, u64 min_ns) {
    std::vector<double> build, unmap_all, lookup, lookup_dep, overlap, iterate, churn;
    std::vector<Hit> out;
    out.reserve(1024);
    T *t = nullptr;
    for (u64 r = 0; r < reps; r++) {
        u64 stop = now_ns() + min_ns;
        for (int k = 0; k < 100; k++) {
            if (t) {
                u64 t0 = now_ns();
                sink = t->unmap(0, U64_MAX);
                unmap_all.push_back(double(now_ns() - t0) / w.n);
                delete t;
            }
            t = new T();
            u64 t0 = now_ns();
            for (u64 i = 0; i < w.n; i++) t->map(w.starts[i], w.lasts[i], w.addrs[i]);
            u64 t1 = now_ns();
            build.push_back(double(t1 - t0) / w.n);
            if (t1 >= stop) break;
        }
    }
    u64 hits = 0, ovres = 0;
    Hit h;
    for (u64 i = 0; i < std::min(m, w.kl); i++) hits += t->first(w.lookups[i], w.lookups[i], h);
    for (u64 i = 0; i < std::min(m, w.ko); i++) { t->overlap(w.ov_s[i], w.ov_l[i], out); ovres += out.size(); }
    for (u64 r = 0; r < reps; r++) {
        u64 x = 0;
        sample(lookup, w.kl, min_ns, [&] {
            for (u64 i = 0; i < w.kl; i++) if (t->first(w.lookups[i], w.lookups[i], h)) x += h.addr;
        });
        // the same lookups, each query's address made to depend on the previous
        // result (d is always 0: x, a sum of < 2^48 addresses, never reaches bit 63),
        // so the CPU cannot start one lookup's memory loads before the previous one
        // has finished -- as a call from Python cannot: not a table column, the
        // analysis in performance.md ("Why 10^6 misses")
        sample(lookup_dep, w.kl, min_ns, [&] {
            u64 d = 0;
            for (u64 i = 0; i < w.kl; i++) {
                u64 q = w.lookups[i] | d;
                if (t->first(q, q, h)) x += h.addr;
                d = x >> 63;
            }
        });
        sample(overlap, w.ko, min_ns, [&] {
            for (u64 i = 0; i < w.ko; i++) { t->overlap(w.ov_s[i], w.ov_l[i], out); x += out.size(); }
        });
        sample(iterate, w.n, min_ns, [&] { x += t->iterate(); });
        sink = x;
    }
    // chunk r starts from the state chunks 0..r-1 leave: replay them untimed
    for (u64 i = 0; i < chunk0 * w.kc && i < w.us.size(); i++) {
        t->unmap(w.us[i], w.ul[i]);
        t->map(w.ms[i], w.ml[i], w.ma[i]);
    }
    for (u64 r = chunk0; r < chunk0 + reps && r < w.chunks; r++) {
        u64 t0 = now_ns(), b = r * w.kc;
        for (u64 i = b; i < b + w.kc; i++) { t->unmap(w.us[i], w.ul[i]); t->map(w.ms[i], w.ml[i], w.ma[i]); }
        churn.push_back(double(now_ns() - t0) / w.kc);
    }
    size_t live = t->size();
    u64 t0 = now_ns();
    sink = t->unmap(0, U64_MAX);
    unmap_all.push_back(double(now_ns() - t0) / live);
    delete t;
    printf("\"%s\": {", name);
    emit("build", build); emit("unmap_all", unmap_all); emit("lookup", lookup); emit("lookup_dep", lookup_dep);
    emit("overlap", overlap); emit("iterate", iterate); emit("churn", churn);
    printf("\"checks\": {\"lookup_hits\": %llu, \"overlap_results\": %llu, \"len_after_churn\": %zu}}",
           (unsigned long long)hits, (unsigned long long)ovres, live);
}

static long rss_bytes() {
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) { if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0; fclose(f); }
    return res * sysconf(_SC_PAGESIZE);
}

template <class T>
static void mem(const char *name, const Work &w) {
    struct mallinfo2 a = mallinfo2();
    long r0 = rss_bytes();
    T *t = new T();
    for (u64 i = 0; i < w.n; i++) t->map(w.starts[i], w.lasts[i], w.addrs[i]);
    struct mallinfo2 b = mallinfo2();
    long r1 = rss_bytes();
    printf("{\"%s\": {\"malloc_bytes_per_entry\": %.2f, \"rss_bytes_per_entry\": %.2f, \"n\": %llu}}\n",
           name, double(b.uordblks + b.hblkhd - a.uordblks - a.hblkhd) / w.n,
           double(r1 - r0) / w.n, (unsigned long long)w.n);
    sink = t->size();
    delete t;
}

// B+tree against a brute-force list with kernel semantics (overlaps, equal starts)
static int selftest() {
    struct E { u64 s, l, a, seq; };
    std::vector<E> ref;
    BTree t;
    u64 seq = 0, x = 12345;
    auto rnd = [&](u64 k) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x % k; };
    std::vector<Hit> out;
    size_t peak = 0;
    for (int step = 0; step < 40000; step++) {
        u64 op = rnd(10), s = rnd(400000), l = s + rnd(rnd(4) ? 20 : 3000);
        if (step % 1000 == 0) s = rnd(3) * 1000;  // equal starts
        peak = std::max(peak, ref.size());
        if (op < 6) {
            t.map(s, l, step);
            ref.push_back(E{s, l, (u64)step, seq++});
            std::stable_sort(ref.begin(), ref.end(), [](const E &a, const E &b) {
                return a.s != b.s ? a.s < b.s : a.seq < b.seq; });
        } else if (op < 7) {
            if (rnd(3)) l = s;
            size_t k = 0;
            for (size_t i = 0; i < ref.size();)
                if (ref[i].s <= l && ref[i].l >= s) { ref.erase(ref.begin() + i); k++; } else i++;
            if (t.unmap(s, l) != k || t.size() != ref.size()) { fprintf(stderr, "unmap @%d\n", step); return 1; }
        } else {
            t.overlap(s, l, out);
            size_t j = 0;
            for (auto &e : ref)
                if (e.s <= l && e.l >= s) {
                    if (j >= out.size() || out[j].start != e.s || out[j].addr != e.a) { fprintf(stderr, "overlap @%d\n", step); return 1; }
                    j++;
                }
            Hit h;
            bool f = t.first(s, l, h);
            if (j != out.size() || f != (j > 0) || (f && h.addr != out[0].addr)) { fprintf(stderr, "first @%d\n", step); return 1; }
        }
        if (step == 30000) { t.unmap(0, U64_MAX); ref.clear(); }
    }
    printf("selftest ok (%zu live, peak %zu)\n", ref.size(), peak);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && std::string(argv[1]) == "selftest") return selftest();
    if (argc < 3) die("usage: floor WORKLOAD time CHECK_M | floor WORKLOAD mem stdmap|btree");
    Work w = load(argv[1]);
    std::string mode = argv[2];
    if (mode == "time") {
        u64 m = argc > 3 ? strtoull(argv[3], nullptr, 10) : 2000;
        u64 reps = w.repeats, chunk0 = 0;
        if (argc > 4) { chunk0 = strtoull(argv[4], nullptr, 10); reps = 1; }
        u64 min_ns = argc > 5 ? strtoull(argv[5], nullptr, 10) : 20000000;
        if (argc > 6) cpu_clock = std::string(argv[6]) != "wall";
        printf("{");
        run<StdMap>("stdmap", w, m, reps, chunk0, min_ns);
        printf(", ");
        run<BTree>("btree", w, m, reps, chunk0, min_ns);
        printf("}\n");
    } else if (mode == "mem" && argc > 3) {
        std::string which = argv[3];
        if (which == "stdmap") mem<StdMap>("stdmap", w);
        else if (which == "btree") mem<BTree>("btree", w);
        else die("mem: stdmap or btree");
    } else {
        die("bad mode");
    }
    return 0;
}
