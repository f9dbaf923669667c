/* The pcap importer's per-packet loop (capture/importers/packet_loop.py), compiled.
 *
 * Why: `flowtape import pcap` must read captures at least twice as fast as `tshark -z conv,tcp`,
 * which costs about 12 µs per packet here; the Python loop costs 8-15 µs (framing, header parsing,
 * the flow and connection dicts: it is bytecode and small objects per packet). This file is the
 * same loop, step for step: pcap record framing and pcapng Enhanced Packet Blocks, packets.parse,
 * the flow counters, tcp_conns.ConnTable / Conn / Direction, and bpf/l7.c's choice of bytes for the
 * L7 decoders. It makes the same calls on the same sink (capture/importers/pcap.py's PcapSink) with
 * the same arguments; connection state is handed over as tcp_conns.STATE_FIELDS. The Python loop
 * stays the reference: tests/test_import_pcap.py imports real and generated captures with both and
 * requires equal tapes. Keep them in step: a change to one is a change to both.
 *
 * Input is untrusted (any capture): every read is checked against the frame's or buffer's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HOUSEKEEP_NS 1000000000LL
#define CLOSE_GRACE_NS 2000000000LL
#define SYN_EXPIRE_NS 30000000000LL
#define MAX_BLOCK (1 << 24)
#define HELLO_CAP 2048
#define NONE INT64_MIN /* a Python None among int64 fields */
#define HALF 0x80000000u
#define DUP_WINDOW_NS 2000000LL
#define DUP_RECENT 1024
#define DUP_BYTES 128

/* PacketLoop.recent: the latest packets of a capture of several interfaces */
typedef struct {
    int64_t ts, iface; /* iface NONE: Linux cooked v1, no interface named */
    uint64_t hash;
    int len;
    uint8_t bytes[DUP_BYTES];
} Recent;

enum { K_NONE = 0, K_HTTP = 1, K_DNS = 2, K_TLS = 3 };
enum { D_NONE = 0, D_INGRESS = 1, D_EGRESS = 2 };
enum { FIN = 0x01, SYN = 0x02, RST = 0x04, ACK = 0x10 };
/* problem kinds of packets.parse */
enum { P_OK = 0, P_CUT, P_NOT_IP, P_UNKNOWN_LINK };

static PyObject *s_ingress, *s_egress, *s_http, *s_dns, *s_tls;

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t be32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }
static inline uint32_t le32(const uint8_t *p) { return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0]; }
static inline uint32_t rd32(const uint8_t *p, int big) { return big ? be32(p) : le32(p); }
static inline uint16_t rd16(const uint8_t *p, int big) { return big ? be16(p) : (uint16_t)(p[0] | (p[1] << 8)); }

static PyObject *int_or_none(int64_t v) {
    if (v == NONE) Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

/* --- the parsed packet (packets.parse's tuple) ---------------------------------------------- */

typedef struct {
    int family;             /* 4 or 6 */
    const uint8_t *src, *dst;
    int proto;
    int64_t ip_len;
    Py_ssize_t l4off, l3_end, poff;
    int has_ports;
    uint16_t sport, dport;
    uint32_t seq;
    int has_flags;
    uint8_t flags;
    int64_t paylen;
    const uint8_t *macs;    /* NULL: none */
    int direction;          /* D_* from a cooked header */
    int64_t ifindex;        /* NONE when unknown */
    int l4_cut;
} Pkt;

static int is_vlan(int t) { return t == 0x8100 || t == 0x88A8 || t == 0x9100; }

/* packets.link_header + packets.parse */
static int parse(int link, const uint8_t *f, Py_ssize_t n, int64_t orig_len, Pkt *p) {
    Py_ssize_t off;
    int etype;
    p->macs = NULL;
    p->direction = D_NONE;
    p->ifindex = NONE;
    if (link == 1) {
        if (n < 14) return P_CUT;
        off = 14;
        etype = be16(f + 12);
        while (is_vlan(etype)) {
            if (off + 4 > n) return P_CUT;
            etype = be16(f + off + 2);
            off += 4;
        }
        p->macs = f;
    } else if (link == 276 || link == 113) {
        if (link == 276) {
            if (n < 20) return P_CUT;
            etype = be16(f);
            p->ifindex = (int32_t)be32(f + 4);
            p->direction = f[10] == 4 ? D_EGRESS : D_INGRESS;
            off = 20;
        } else {
            if (n < 16) return P_CUT;
            p->direction = be16(f) == 4 ? D_EGRESS : D_INGRESS;
            etype = be16(f + 14);
            off = 16;
        }
        while (is_vlan(etype)) {
            if (off + 4 > n) return P_CUT;
            etype = be16(f + off + 2);
            off += 4;
        }
    } else if (link == 101 || link == 12 || link == 14 || link == 228 || link == 229) {
        if (n < 1) return P_CUT;
        int v = f[0] >> 4;
        etype = v == 4 ? 0x0800 : v == 6 ? 0x86DD : 0;
        off = 0;
    } else if (link == 0 || link == 108) {
        if (n < 4) return P_CUT;
        uint32_t fam = (link == 0 && f[0]) ? le32(f) : be32(f);
        etype = fam == 2 ? 0x0800 : (fam == 10 || fam == 24 || fam == 28 || fam == 30) ? 0x86DD : 0;
        off = 4;
    } else {
        return P_UNKNOWN_LINK;
    }
    int64_t wire = orig_len < n ? n : orig_len;
    int first = 1;
    Py_ssize_t l4off;
    p->has_ports = 0;
    p->has_flags = 0;
    p->l4_cut = 0;
    p->paylen = 0;
    p->poff = -1;
    if (etype == 0x0800) {
        if (off + 20 > n) return P_CUT;
        int vihl = f[off];
        int64_t ip_len = be16(f + off + 2);
        int frag = be16(f + off + 6);
        int hlen = (vihl & 15) * 4;
        if (vihl >> 4 != 4 || hlen < 20) return P_CUT;
        if (ip_len == 0) ip_len = wire - off;
        p->proto = f[off + 9];
        p->src = f + off + 12;
        p->dst = f + off + 16;
        p->family = 4;
        p->ip_len = ip_len;
        first = (frag & 0x1FFF) == 0;
        l4off = off + hlen;
    } else if (etype == 0x86DD) {
        if (off + 40 > n) return P_CUT;
        int64_t plen = be16(f + off + 4);
        int proto = f[off + 6];
        if (f[off] >> 4 != 6) return P_CUT;
        p->src = f + off + 8;
        p->dst = f + off + 24;
        p->family = 6;
        p->ip_len = plen ? 40 + plen : wire - off;
        l4off = off + 40;
        while (proto == 0 || proto == 43 || proto == 44 || proto == 51 || proto == 60) {
            if (l4off + 8 > n) {
                p->proto = proto;
                p->l4off = -1;
                p->l3_end = off + p->ip_len;
                p->l4_cut = 1;
                return P_OK;
            }
            int nxt = f[l4off];
            if (proto == 44) {
                first = (be16(f + l4off + 2) >> 3) == 0;
                l4off += 8;
            } else if (proto == 51) {
                l4off += (f[l4off + 1] + 2) * 4;
            } else {
                l4off += (f[l4off + 1] + 1) * 8;
            }
            proto = nxt;
            if (!first) break;
        }
        p->proto = proto;
    } else {
        return P_NOT_IP;
    }
    p->l3_end = off + p->ip_len;
    if (!first) {
        p->l4off = -1;
        return P_OK;
    }
    p->l4off = l4off;
    if (p->proto == 6) {
        if (l4off + 14 > n) {
            p->l4_cut = 1;
            return P_OK;
        }
        p->has_ports = 1;
        p->sport = be16(f + l4off);
        p->dport = be16(f + l4off + 2);
        p->seq = be32(f + l4off + 4);
        p->poff = l4off + (f[l4off + 12] >> 4) * 4;
        p->has_flags = 1;
        p->flags = f[l4off + 13];
        int64_t pl = p->l3_end - p->poff;
        p->paylen = pl > 0 ? pl : 0;
    } else if (p->proto == 17 || p->proto == 132) {
        if (l4off + 4 > n) {
            p->l4_cut = 1;
            return P_OK;
        }
        p->has_ports = 1;
        p->sport = be16(f + l4off);
        p->dport = be16(f + l4off + 2);
        p->poff = l4off + (p->proto == 17 ? 8 : 12);
        int64_t pl = p->l3_end - p->poff;
        p->paylen = pl > 0 ? pl : 0;
    }
    return P_OK;
}

/* packets.tcp_mss */
static int tcp_mss(const uint8_t *f, Py_ssize_t n, Py_ssize_t l4off, Py_ssize_t poff) {
    Py_ssize_t p = l4off + 20, end = poff < n ? poff : n;
    while (p < end) {
        int kind = f[p];
        if (kind == 0) break;
        if (kind == 1) {
            p++;
            continue;
        }
        if (p + 1 >= end) break;
        int length = f[p + 1];
        if (length < 2) break;
        if (kind == 2 && length == 4 && p + 4 <= end) return be16(f + p + 2);
        p += length;
    }
    return 0;
}

/* --- hash tables ---------------------------------------------------------------------------- */

static uint64_t hash_bytes(const void *data, size_t n) {
    const uint8_t *p = data;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

/* A directional TCP key: family, ports, addresses (zero padded). */
typedef struct {
    uint8_t family, pad0;
    uint16_t sport, dport, pad1;
    uint8_t src[16], dst[16];
} ConnKey;

typedef struct {
    uint64_t hash;
    int32_t conn; /* -1 empty, -2 deleted */
    uint8_t is_client;
    ConnKey key;
} ConnSlot;

typedef struct {
    int has_base;
    uint32_t base;
    int64_t high, segs, retrans;
    int fin;
    int mss; /* 0: none */
} Dir;

typedef struct {
    int used;
    int64_t id;
    uint8_t family;
    uint8_t caddr[16], saddr[16];
    uint16_t cport, sport;
    Dir c2s, s2c;
    int64_t ts_first, ts_syn, ts_prev_syn, ts_synack, ts_est, ts_last;
    int has_isn;
    uint32_t isn;
    int rst, closed, from_syn;
    int closing, unanswered;
    int l7, l7_dir, l7_fins;
    PyObject *flow, *flow_key; /* the sink's tcp_streams.TcpFlow of an HTTP connection and its key (owned), or NULL */
    int64_t l7_budget;
    int has_skip[2];
    uint32_t skip[2];
} Conn;

/* A flow key: PacketLoop.packet's tuple. */
typedef struct {
    int32_t file_no, ifc;
    int64_t ifindex;
    uint8_t direction, has_macs, family, proto, has_ports, pad0;
    uint16_t sport, dport;
    uint8_t macs[12];
    uint8_t src[16], dst[16];
} FlowKey;

typedef struct {
    uint64_t hash;
    int used;
    FlowKey key;
    int64_t packets, bytes, first, last;
    int flags;
    int64_t seq; /* insertion order */
} FlowSlot;

typedef struct {
    PyObject_HEAD
    PyObject *sink;
    PyObject *m_l7_open, *m_l7_data, *m_l7_fin, *m_hello, *m_dns_udp, *m_conn_end, *m_flows, *m_housekeeping;
    PyObject *m_on_http, *live_flows; /* the sink's _on_http and its TcpStreams.flows (for the in-order HTTP path) */
    int64_t skip_body_min;
    int64_t interval_ns;
    int dns_ports[32];
    int n_dns;
    int file_no;
    int *links;
    Py_ssize_t n_links;
    int have_first;
    int64_t first_ns, last_ns, bucket_end, next_house;
    int64_t file_first, file_last; /* the current file's earliest and latest packet (NONE: none yet) */
    int64_t c_packets, c_bytes_ip, c_snaplen_cut, c_l4_cut, c_not_ip, c_ip_cut, c_unknown_link, c_gso, c_started_before;
    Conn *conns;
    Py_ssize_t n_conns, cap_conns;
    int32_t *free_conns;
    Py_ssize_t n_free;
    ConnSlot *ctab;
    Py_ssize_t ctab_cap, ctab_used, ctab_tomb;
    int64_t next_id;
    FlowSlot *ftab;
    Py_ssize_t ftab_cap, ftab_used;
    int64_t flow_seq;
    Conn *current; /* the connection whose segment is being handed to the sink (skip() looks here first) */
    int dedupe;
    Recent *recent; /* a ring of DUP_RECENT; recent_n used, recent_head the next to write */
    int recent_n, recent_head;
    int64_t c_duplicates;
} Loop;

/* PacketLoop._duplicate */
static int duplicate(Loop *L, int64_t ts, int64_t iface, const uint8_t *f, Py_ssize_t n, Py_ssize_t ipoff, Py_ssize_t l3_end, int family) {
    Py_ssize_t end = n < l3_end ? n : l3_end;
    if (end > ipoff + DUP_BYTES) end = ipoff + DUP_BYTES;
    int len = end > ipoff ? (int)(end - ipoff) : 0;
    uint8_t fp[DUP_BYTES];
    memcpy(fp, f + ipoff, (size_t)len);
    if (family == 4) {
        if (len > 8) fp[8] = 0;
        if (len >= 12) fp[10] = fp[11] = 0;
    } else if (len > 7) {
        fp[7] = 0;
    }
    uint64_t h = hash_bytes(fp, (size_t)len);
    for (int k = 0; k < L->recent_n; k++) {
        Recent *e = &L->recent[(L->recent_head - 1 - k + DUP_RECENT) % DUP_RECENT];
        if (ts - e->ts > DUP_WINDOW_NS) break;
        int64_t d = ts - e->ts;
        if (d < 0) d = -d;
        if (e->hash == h && e->len == len && memcmp(e->bytes, fp, (size_t)len) == 0 && d <= DUP_WINDOW_NS &&
            (iface == NONE || e->iface != iface))
            return 1;
    }
    Recent *e = &L->recent[L->recent_head];
    e->ts = ts;
    e->iface = iface;
    e->hash = h;
    e->len = len;
    memcpy(e->bytes, fp, (size_t)len);
    L->recent_head = (L->recent_head + 1) % DUP_RECENT;
    if (L->recent_n < DUP_RECENT) L->recent_n++;
    return 0;
}

static int is_dns_port(Loop *L, int port) {
    for (int i = 0; i < L->n_dns; i++)
        if (L->dns_ports[i] == port) return 1;
    return 0;
}

static void conn_key(ConnKey *k, int family, const uint8_t *src, uint16_t sport, const uint8_t *dst, uint16_t dport) {
    memset(k, 0, sizeof(*k));
    k->family = (uint8_t)family;
    k->sport = sport;
    k->dport = dport;
    int alen = family == 4 ? 4 : 16;
    memcpy(k->src, src, alen);
    memcpy(k->dst, dst, alen);
}

static int ctab_grow(Loop *L) {
    Py_ssize_t cap = L->ctab_cap ? L->ctab_cap * 2 : 1024;
    if (L->ctab_used * 4 < L->ctab_cap) cap = L->ctab_cap; /* mostly tombstones: rehash in place */
    ConnSlot *t = PyMem_Calloc((size_t)cap, sizeof(ConnSlot));
    if (t == NULL) return -1;
    for (Py_ssize_t i = 0; i < cap; i++) t[i].conn = -1;
    for (Py_ssize_t i = 0; i < L->ctab_cap; i++) {
        ConnSlot *s = &L->ctab[i];
        if (s->conn < 0) continue;
        Py_ssize_t j = (Py_ssize_t)(s->hash & (uint64_t)(cap - 1));
        while (t[j].conn != -1) j = (j + 1) & (cap - 1);
        t[j] = *s;
    }
    PyMem_Free(L->ctab);
    L->ctab = t;
    L->ctab_cap = cap;
    L->ctab_tomb = 0;
    return 0;
}

static ConnSlot *ctab_find(Loop *L, const ConnKey *k, uint64_t h) {
    if (L->ctab_cap == 0) return NULL;
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)(L->ctab_cap - 1));
    for (;;) {
        ConnSlot *s = &L->ctab[j];
        if (s->conn == -1) return NULL;
        if (s->conn >= 0 && s->hash == h && memcmp(&s->key, k, sizeof(*k)) == 0) return s;
        j = (j + 1) & (L->ctab_cap - 1);
    }
}

static int ctab_put(Loop *L, const ConnKey *k, int32_t conn, int is_client) {
    if ((L->ctab_used + L->ctab_tomb + 1) * 10 >= L->ctab_cap * 7 && ctab_grow(L) < 0) return -1;
    uint64_t h = hash_bytes(k, sizeof(*k));
    ConnSlot *hit = ctab_find(L, k, h);
    if (hit != NULL) {
        hit->conn = conn;
        hit->is_client = (uint8_t)is_client;
        return 0;
    }
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)(L->ctab_cap - 1));
    while (L->ctab[j].conn >= 0) j = (j + 1) & (L->ctab_cap - 1);
    if (L->ctab[j].conn == -2) L->ctab_tomb--;
    L->ctab[j].conn = conn;
    L->ctab[j].hash = h;
    L->ctab[j].is_client = (uint8_t)is_client;
    L->ctab[j].key = *k;
    L->ctab_used++;
    return 0;
}

static void ctab_del_if(Loop *L, const ConnKey *k, int32_t conn) {
    ConnSlot *s = ctab_find(L, k, hash_bytes(k, sizeof(*k)));
    if (s != NULL && s->conn == conn) {
        s->conn = -2;
        L->ctab_used--;
        L->ctab_tomb++;
    }
}

static int ftab_grow(Loop *L) {
    Py_ssize_t cap = L->ftab_cap ? L->ftab_cap * 2 : 1024;
    FlowSlot *t = PyMem_Calloc((size_t)cap, sizeof(FlowSlot));
    if (t == NULL) return -1;
    for (Py_ssize_t i = 0; i < L->ftab_cap; i++) {
        FlowSlot *s = &L->ftab[i];
        if (!s->used) continue;
        Py_ssize_t j = (Py_ssize_t)(s->hash & (uint64_t)(cap - 1));
        while (t[j].used) j = (j + 1) & (cap - 1);
        t[j] = *s;
    }
    PyMem_Free(L->ftab);
    L->ftab = t;
    L->ftab_cap = cap;
    return 0;
}

/* --- the sink's calls ----------------------------------------------------------------------- */

static PyObject *addr_bytes(int family, const uint8_t *a) { return PyBytes_FromStringAndSize((const char *)a, family == 4 ? 4 : 16); }

static PyObject *state_tuple(Conn *c) {
    return Py_BuildValue("(LNiNiNNNNNNOOONLLONLLO)", (long long)c->id, addr_bytes(c->family, c->caddr), (int)c->cport,
                         addr_bytes(c->family, c->saddr), (int)c->sport, int_or_none(c->ts_first), int_or_none(c->ts_syn),
                         int_or_none(c->ts_prev_syn), int_or_none(c->ts_synack), int_or_none(c->ts_est), int_or_none(c->ts_last),
                         c->closed ? Py_True : Py_False, c->rst ? Py_True : Py_False, c->from_syn ? Py_True : Py_False,
                         PyLong_FromLongLong(c->c2s.high), (long long)c->c2s.segs, (long long)c->c2s.retrans, c->c2s.fin ? Py_True : Py_False,
                         PyLong_FromLongLong(c->s2c.high), (long long)c->s2c.segs, (long long)c->s2c.retrans, c->s2c.fin ? Py_True : Py_False);
}

/* ConnTable.end: forget the connection and hand over its state */
static int conn_end(Loop *L, Conn *c, int64_t capture_end) {
    ConnKey k;
    conn_key(&k, c->family, c->caddr, c->cport, c->saddr, c->sport);
    int32_t idx = (int32_t)(c - L->conns);
    ctab_del_if(L, &k, idx);
    conn_key(&k, c->family, c->saddr, c->sport, c->caddr, c->cport);
    ctab_del_if(L, &k, idx);
    c->closing = c->unanswered = 0;
    Py_CLEAR(c->flow);
    Py_CLEAR(c->flow_key);
    PyObject *st = state_tuple(c);
    c->used = 0;
    L->free_conns[L->n_free++] = idx;
    if (st == NULL) return -1;
    PyObject *end = int_or_none(capture_end);
    if (end == NULL) {
        Py_DECREF(st);
        return -1;
    }
    PyObject *r = PyObject_CallFunctionObjArgs(L->m_conn_end, st, end, NULL);
    Py_DECREF(st);
    Py_DECREF(end);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static Conn *conn_new(Loop *L) {
    int32_t idx;
    if (L->n_free) {
        idx = L->free_conns[--L->n_free];
    } else {
        if (L->n_conns == L->cap_conns) {
            Py_ssize_t cap = L->cap_conns ? L->cap_conns * 2 : 1024;
            Conn *nc = PyMem_Realloc(L->conns, (size_t)cap * sizeof(Conn));
            int32_t *nf = PyMem_Realloc(L->free_conns, (size_t)cap * sizeof(int32_t));
            if (nc == NULL || nf == NULL) {
                if (nc) L->conns = nc;
                if (nf) L->free_conns = nf;
                PyErr_NoMemory();
                return NULL;
            }
            L->conns = nc;
            L->free_conns = nf;
            L->cap_conns = cap;
        }
        idx = (int32_t)L->n_conns++;
    }
    Conn *c = &L->conns[idx];
    memset(c, 0, sizeof(*c));
    c->used = 1;
    c->ts_syn = c->ts_prev_syn = c->ts_synack = c->ts_est = NONE;
    c->l7_dir = 1;
    return c;
}

/* ConnTable.housekeeping. The order connections end in here (slot order) may differ from the
 * Python loop's (the order they closed or came): only the order of rows differs, never a row. */
static int conns_housekeeping(Loop *L, int64_t now) {
    for (Py_ssize_t i = 0; i < L->n_conns; i++) {
        Conn *c = &L->conns[i];
        if (c->used && c->closing && now - c->ts_last > CLOSE_GRACE_NS && conn_end(L, c, now) < 0) return -1;
    }
    for (Py_ssize_t i = 0; i < L->n_conns; i++) {
        Conn *c = &L->conns[i];
        if (!c->used || !c->unanswered) continue;
        if (c->ts_synack != NONE) c->unanswered = 0;
        else if (!c->closed && now - c->ts_last > SYN_EXPIRE_NS && conn_end(L, c, NONE) < 0) return -1;
    }
    return 0;
}

static PyObject *dir_str(int d) {
    PyObject *s = d == D_INGRESS ? s_ingress : d == D_EGRESS ? s_egress : Py_None;
    Py_INCREF(s);
    return s;
}

/* PacketLoop.flush_flows: columns in insertion order */
static int flush_flows(Loop *L) {
    if (L->ftab_used == 0) return 0;
    Py_ssize_t n = L->ftab_used;
    FlowSlot **order = PyMem_Malloc((size_t)n * sizeof(FlowSlot *));
    if (order == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < L->ftab_cap; i++)
        if (L->ftab[i].used) order[k++] = &L->ftab[i];
    /* insertion order: a counting placement by seq (seq is dense from the interval's start) */
    int64_t base = INT64_MAX;
    for (Py_ssize_t i = 0; i < n; i++)
        if (order[i]->seq < base) base = order[i]->seq;
    FlowSlot **sorted = PyMem_Calloc((size_t)n, sizeof(FlowSlot *));
    if (sorted == NULL) {
        PyMem_Free(order);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) sorted[order[i]->seq - base] = order[i];
    PyMem_Free(order);
    PyObject *cols[15];
    int ok = 1;
    for (int c = 0; c < 15; c++) {
        cols[c] = PyList_New(n);
        if (cols[c] == NULL) ok = 0;
    }
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        FlowSlot *s = sorted[i];
        FlowKey *fk = &s->key;
        PyObject *v[15];
        v[0] = PyLong_FromLongLong(s->first);
        v[1] = PyLong_FromLongLong(s->last);
        v[2] = PyLong_FromLong(fk->file_no);
        v[3] = PyLong_FromLong(fk->ifc);
        v[4] = int_or_none(fk->ifindex);
        v[5] = dir_str(fk->direction);
        if (fk->has_macs) {
            v[6] = PyBytes_FromStringAndSize((const char *)fk->macs, 12);
        } else {
            Py_INCREF(Py_None);
            v[6] = Py_None;
        }
        v[7] = addr_bytes(fk->family, fk->src);
        v[8] = addr_bytes(fk->family, fk->dst);
        v[9] = PyLong_FromLong(fk->proto);
        v[10] = fk->has_ports ? PyLong_FromLong(fk->sport) : (Py_INCREF(Py_None), Py_None);
        v[11] = fk->has_ports ? PyLong_FromLong(fk->dport) : (Py_INCREF(Py_None), Py_None);
        v[12] = PyLong_FromLongLong(s->packets);
        v[13] = PyLong_FromLongLong(s->bytes);
        v[14] = fk->proto == 6 ? PyLong_FromLong(s->flags) : (Py_INCREF(Py_None), Py_None);
        for (int c = 0; c < 15; c++) {
            if (v[c] == NULL) ok = 0;
            PyList_SET_ITEM(cols[c], i, v[c] ? v[c] : (Py_INCREF(Py_None), Py_None));
        }
    }
    PyMem_Free(sorted);
    memset(L->ftab, 0, (size_t)L->ftab_cap * sizeof(FlowSlot));
    L->ftab_used = 0;
    L->flow_seq = 0;
    PyObject *r = NULL;
    if (ok) {
        PyObject *args = PyTuple_New(15);
        if (args != NULL) {
            for (int c = 0; c < 15; c++) {
                PyTuple_SET_ITEM(args, c, cols[c]);
                cols[c] = NULL;
            }
            r = PyObject_Call(L->m_flows, args, NULL);
            Py_DECREF(args);
        }
    }
    for (int c = 0; c < 15; c++) Py_XDECREF(cols[c]);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* --- the per-packet loop -------------------------------------------------------------------- */

static const char *METHODS4[] = {"GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN", "TRAC", "PRI "};  /* PRI: h2c */

/* tcp_streams.follows: the kind, or K_NONE; *sender_is_client */
static int follows(Loop *L, const uint8_t *d, Py_ssize_t n, int sport, int dport, int *sender_is_client) {
    if (is_dns_port(L, sport) || is_dns_port(L, dport)) {
        *sender_is_client = is_dns_port(L, dport);
        return K_DNS;
    }
    *sender_is_client = 1;
    if (n >= 6 && d[0] == 0x16 && d[1] == 3 && d[5] == 1) return K_TLS;
    if (n >= 4)
        for (size_t i = 0; i < sizeof(METHODS4) / sizeof(METHODS4[0]); i++)
            if (memcmp(d, METHODS4[i], 4) == 0) return K_HTTP;
    return K_NONE;
}

static PyObject *slice(const uint8_t *f, Py_ssize_t n, Py_ssize_t a, Py_ssize_t b) {
    if (b > n) b = n;
    if (a > b) a = b;
    return PyBytes_FromStringAndSize((const char *)f + a, b - a);
}

static PyObject *kind_str(int k) { return k == K_HTTP ? s_http : k == K_DNS ? s_dns : s_tls; }

static void l7_reset(Conn *c) {
    c->l7 = K_NONE;
    Py_CLEAR(c->flow);
    Py_CLEAR(c->flow_key);
}

static PyObject *a_dirs, *a_next, *a_held, *a_skip_to, *a_http, *a_last_ts, *a_feed_tuples, *a_body_remaining;

/* TcpStreams.push + segments + PcapSink._after_http for the common case, without a Python call
 * per segment (as capture/decode/_http1.c's feed_http does for the recorder): the segment continues
 * its direction in order, nothing is held, no body is being skipped. Returns 1 when it took the
 * segment, 0 when PcapSink.l7_data must (the other cases), -1 on error. */
static int http_in_order(Loop *L, Conn *c, int l7c, int64_t ts, const Pkt *p, const uint8_t *f, Py_ssize_t n) {
    if (c->flow == NULL || L->live_flows == NULL) return 0;
    PyObject *live = PyDict_GetItemWithError(L->live_flows, c->flow_key);
    if (live != c->flow) return PyErr_Occurred() ? -1 : 0;
    int took = 0;
    PyObject *dirs = NULL, *next = NULL, *held = NULL, *skip_to = NULL, *http = NULL, *rows = NULL, *data = NULL, *v = NULL;
    if ((dirs = PyObject_GetAttr(c->flow, a_dirs)) == NULL || !PyTuple_Check(dirs) || PyTuple_GET_SIZE(dirs) != 2) goto done;
    PyObject *dirn = PyTuple_GET_ITEM(dirs, l7c ? 1 : 0);
    if ((next = PyObject_GetAttr(dirn, a_next)) == NULL || (held = PyObject_GetAttr(dirn, a_held)) == NULL ||
        (skip_to = PyObject_GetAttr(dirn, a_skip_to)) == NULL)
        goto done;
    if (!PyLong_Check(next) || PyLong_AsUnsignedLongMask(next) != p->seq || PyObject_IsTrue(held) || skip_to != Py_None) goto done;
    uint32_t nxt = (uint32_t)(p->seq + (uint64_t)p->paylen);
    if ((v = PyLong_FromUnsignedLong(nxt)) == NULL || PyObject_SetAttr(dirn, a_next, v) < 0) goto error;
    Py_CLEAR(v);
    if ((v = PyLong_FromLongLong(ts)) == NULL || PyObject_SetAttr(c->flow, a_last_ts, v) < 0) goto error;
    Py_CLEAR(v);
    if ((http = PyObject_GetAttr(c->flow, a_http)) == NULL || (data = slice(f, n, p->poff, p->l3_end)) == NULL) goto error;
    {
        PyObject *t = PyLong_FromLongLong(ts), *len = PyLong_FromLongLong(p->paylen);
        if (t != NULL && len != NULL) rows = PyObject_CallMethodObjArgs(http, a_feed_tuples, t, data, l7c ? Py_True : Py_False, len, NULL);
        Py_XDECREF(t);
        Py_XDECREF(len);
    }
    if (rows == NULL) goto error;
    PyObject *seq = PySequence_Fast(rows, "feed_tuples returns rows");
    if (seq == NULL) goto error;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *r = PyObject_CallFunctionObjArgs(L->m_on_http, c->flow_key, PySequence_Fast_GET_ITEM(seq, i), NULL);
        if (r == NULL) {
            Py_DECREF(seq);
            goto error;
        }
        Py_DECREF(r);
    }
    Py_DECREF(seq);
    /* PcapSink._after_http: a long Content-Length body follows: skip it */
    PyObject *rem = PyObject_CallMethodObjArgs(http, a_body_remaining, l7c ? Py_True : Py_False, NULL);
    if (rem == NULL) goto error;
    long long remaining = PyLong_AsLongLong(rem);
    Py_DECREF(rem);
    if (remaining == -1 && PyErr_Occurred()) goto error;
    if (remaining > L->skip_body_min) {
        uint32_t end = (uint32_t)(nxt + (uint64_t)remaining);
        if ((v = PyLong_FromUnsignedLong(end)) == NULL || PyObject_SetAttr(dirn, a_skip_to, v) < 0) goto error;
        c->has_skip[l7c] = 1;
        c->skip[l7c] = end;
    }
    took = 1;
    goto done;
error:
    took = -1;
done:
    if (took == 0 && PyErr_Occurred()) took = -1;
    Py_XDECREF(dirs);
    Py_XDECREF(next);
    Py_XDECREF(held);
    Py_XDECREF(skip_to);
    Py_XDECREF(http);
    Py_XDECREF(rows);
    Py_XDECREF(data);
    Py_XDECREF(v);
    return took;
}

/* PacketLoop._l7 */
static int l7(Loop *L, Conn *c, int from_client, int64_t ts, const Pkt *p, const uint8_t *f, Py_ssize_t n) {
    int kind = c->l7;
    PyObject *r;
    if (kind == K_NONE) {
        if (!p->paylen) return 0;
        Py_ssize_t a = p->poff, b = p->l3_end < n ? p->l3_end : n;
        if (a > b) a = b;
        int sender_is_client;
        kind = follows(L, f + a, b - a, p->sport, p->dport, &sender_is_client);
        if (kind == K_NONE) return 0;
        l7_reset(c);
        c->l7 = kind;
        c->l7_dir = from_client == sender_is_client;
        c->l7_budget = 0;
        if (kind == K_TLS) {
            int64_t need = 5 + ((f[a + 3] << 8) | f[a + 4]);
            c->l7_budget = need < HELLO_CAP ? need : HELLO_CAP;
        }
        c->l7_fins = 0;
        c->has_skip[0] = c->has_skip[1] = 0;
        const uint8_t *ca = c->l7_dir ? c->caddr : c->saddr, *sa = c->l7_dir ? c->saddr : c->caddr;
        int cp = c->l7_dir ? c->cport : c->sport, sp = c->l7_dir ? c->sport : c->cport;
        r = PyObject_CallFunction(L->m_l7_open, "LONiNiN", (long long)c->id, kind_str(kind), addr_bytes(c->family, ca), cp,
                                  addr_bytes(c->family, sa), sp, PyBytes_FromStringAndSize((const char *)f + a, b - a));
        if (r == NULL) return -1;
        /* PcapSink.l7_open hands back (flow, key) for HTTP: the in-order path below uses them */
        if (kind == K_HTTP && PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
            c->flow = PyTuple_GET_ITEM(r, 0);
            c->flow_key = PyTuple_GET_ITEM(r, 1);
            Py_INCREF(c->flow);
            Py_INCREF(c->flow_key);
        }
        Py_DECREF(r);
    }
    int l7c = c->l7_dir == from_client;
    int end = p->flags & (FIN | RST);
    if (kind == K_TLS) {
        if (l7c && p->paylen) {
            int64_t budget = c->l7_budget;
            Py_ssize_t stop = p->l3_end < p->poff + budget ? p->l3_end : p->poff + budget;
            r = PyObject_CallFunction(L->m_hello, "LLNL", (long long)c->id, (long long)ts, slice(f, n, p->poff, stop), (long long)p->paylen);
            if (r == NULL) return -1;
            Py_DECREF(r);
            c->l7_budget = budget - p->paylen;
            if (c->l7_budget <= 0 || end) l7_reset(c);
        } else if (l7c && end) {
            l7_reset(c);
        }
        return 0;
    }
    if (p->paylen) {
        uint32_t ahead = c->skip[l7c] - p->seq;
        if (end || !c->has_skip[l7c] || !((uint64_t)p->paylen < ahead && ahead < HALF)) {
            c->has_skip[l7c] = 0;
            if (!end && kind == K_HTTP) {
                int took = http_in_order(L, c, l7c, ts, p, f, n);
                if (took < 0) return -1;
                if (took) return 0;
            }
            L->current = c;
            r = PyObject_CallFunction(L->m_l7_data, "LOLkNL", (long long)c->id, l7c ? Py_True : Py_False, (long long)ts,
                                      (unsigned long)p->seq, slice(f, n, p->poff, p->l3_end), (long long)p->paylen);
            L->current = NULL;
            if (r == NULL) return -1;
            int alive = PyObject_IsTrue(r);
            Py_DECREF(r);
            if (alive < 0) return -1;
            if (!alive) {
                l7_reset(c);
                return 0;
            }
        }
    }
    if (end) {
        c->l7_fins |= (p->flags & RST) ? 4 : (l7c ? 2 : 1);
        r = PyObject_CallFunction(L->m_l7_fin, "LOOL", (long long)c->id, l7c ? Py_True : Py_False, (p->flags & RST) ? Py_True : Py_False,
                                  (long long)ts);
        if (r == NULL) return -1;
        Py_DECREF(r);
        if ((c->l7_fins & 4) || c->l7_fins == 3) l7_reset(c);
    }
    return 0;
}

/* Direction.data */
static void dir_data(Dir *d, uint32_t seq, int64_t paylen) {
    if (!d->has_base) {
        d->has_base = 1;
        d->base = seq;
    }
    int64_t high = d->high;
    uint32_t delta = seq - d->base - (uint32_t)high;
    int64_t start = delta < HALF ? high + delta : high - (int64_t)(0x100000000LL - delta);
    int64_t end = start + paylen;
    if (end > high) {
        if (start < high) d->retrans++;
        d->high = end;
        return;
    }
    if (!(paylen <= 1 && start == high - 1)) d->retrans++;
}

/* Conn.packet */
static void conn_packet(Conn *c, int64_t ts, int from_client, uint32_t seq, int flags, int64_t paylen) {
    Dir *d = from_client ? &c->c2s : &c->s2c;
    d->segs++;
    int64_t r0 = d->retrans;
    c->ts_last = ts;
    if (flags & SYN) {
        if (flags & ACK) {
            if (c->ts_synack == NONE) {
                c->ts_synack = ts;
                d->has_base = 1;
                d->base = seq + 1;
            } else {
                d->retrans++;
            }
        } else {
            if (c->ts_syn != NONE) d->retrans++;
            c->ts_prev_syn = c->ts_syn;
            c->ts_syn = ts;
            if (!d->has_base) {
                d->has_base = 1;
                d->base = seq + 1;
                c->has_isn = 1;
                c->isn = seq;
            }
        }
    } else if (from_client && c->ts_est == NONE && c->ts_synack != NONE && (flags & ACK)) {
        c->ts_est = ts;
    }
    if (paylen) {
        dir_data(d, (flags & SYN) ? seq + 1 : seq, paylen);
    } else if (flags & FIN) {
        if (d->fin && d->has_base && (int64_t)(uint32_t)(seq - d->base) <= d->high) d->retrans++;
    }
    if (d->retrans > r0 + 1) d->retrans = r0 + 1; /* a segment is retransmitted once, whatever it carries again */
    if (flags & FIN) d->fin = 1;
    if (flags & RST) c->rst = 1;
    if (!c->closed && (c->rst || (c->c2s.fin && c->s2c.fin))) c->closed = 1;
}

/* ConnTable.lookup: the connection (and whether the segment is from its client), NULL when none;
 * *err on a failed sink call */
static Conn *conn_lookup(Loop *L, const Pkt *p, int64_t ts, int *from_client, int *err) {
    ConnKey key, rev;
    conn_key(&key, p->family, p->src, p->sport, p->dst, p->dport);
    conn_key(&rev, p->family, p->dst, p->dport, p->src, p->sport);
    int flags = p->flags;
    *err = 0;
    ConnSlot *hit = ctab_find(L, &key, hash_bytes(&key, sizeof(key)));
    if (hit != NULL) {
        Conn *c = &L->conns[hit->conn];
        int is_client = hit->is_client;
        int gone = 0;
        if ((flags & SYN) && !(flags & ACK) && is_client && c->has_isn && p->seq != c->isn) {
            if (c->closed || c->ts_synack == NONE || c->ts_est != NONE) {
                c->closed = c->closed || c->ts_synack != NONE;
                gone = 1;
            }
        } else if (c->closed && (flags & SYN) && !(flags & ACK)) {
            gone = 1;
        }
        if (gone) {
            if (conn_end(L, c, NONE) < 0) {
                *err = 1;
                return NULL;
            }
        } else {
            *from_client = is_client;
            return c;
        }
    }
    if ((flags & (RST | FIN)) && !(flags & SYN)) return NULL;
    int fc, mid;
    if (flags & SYN) {
        fc = !(flags & ACK);
        mid = 0;
    } else {
        fc = p->sport >= p->dport;
        mid = 1;
        L->c_started_before++;
    }
    Conn *c = conn_new(L);
    if (c == NULL) {
        *err = 1;
        return NULL;
    }
    int32_t idx = (int32_t)(c - L->conns);
    c->id = L->next_id++;
    c->family = (uint8_t)p->family;
    int alen = p->family == 4 ? 4 : 16;
    memcpy(c->caddr, fc ? p->src : p->dst, alen);
    memcpy(c->saddr, fc ? p->dst : p->src, alen);
    c->cport = fc ? p->sport : p->dport;
    c->sport = fc ? p->dport : p->sport;
    c->ts_first = c->ts_last = ts;
    c->from_syn = !mid && fc;
    if (ctab_put(L, fc ? &key : &rev, idx, 1) < 0 || ctab_put(L, fc ? &rev : &key, idx, 0) < 0) {
        PyErr_NoMemory();
        *err = 1;
        return NULL;
    }
    if (!mid && fc) c->unanswered = 1;
    *from_client = fc;
    return c;
}

/* PacketLoop._tcp: (packets, bytes) for flows in *n_pk, *n_b */
static int tcp(Loop *L, int64_t ts, const Pkt *p, const uint8_t *f, Py_ssize_t n, int64_t *n_pk, int64_t *n_b) {
    int from_client, err;
    *n_pk = 1;
    *n_b = p->ip_len;
    Conn *c = conn_lookup(L, p, ts, &from_client, &err);
    if (err) return -1;
    if (c == NULL) return 0;
    Py_ssize_t idx = c - L->conns;
    Dir *d = from_client ? &c->c2s : &c->s2c, *other = from_client ? &c->s2c : &c->c2s;
    if (p->flags & SYN) {
        int mss = tcp_mss(f, n, p->l4off, p->poff);
        if (mss) d->mss = mss;
    }
    conn_packet(c, ts, from_client, p->seq, p->flags, p->paylen);
    if (p->paylen && other->mss) {
        int64_t seg = other->mss - (p->poff - p->l4off - 20);
        if (0 < seg && seg < p->paylen) {
            *n_pk = (p->paylen + seg - 1) / seg;
            *n_b = p->ip_len + (*n_pk - 1) * (p->poff - (p->l3_end - p->ip_len));
            L->c_gso++;
        }
    }
    if (p->paylen || (p->flags & (FIN | RST))) {
        if (l7(L, c, from_client, ts, p, f, n) < 0) return -1;
        c = &L->conns[idx]; /* (the slab does not move during sink calls, but be safe) */
    }
    /* ConnTable.after */
    if (c->used) {
        if (c->ts_synack != NONE) c->unanswered = 0;
        if (c->closed) c->closing = 1;
    }
    return 0;
}

/* PacketLoop.packet */
static int packet(Loop *L, int64_t ts, Py_ssize_t ifc, const uint8_t *f, Py_ssize_t n, int64_t orig_len, int epb_dir) {
    if (ifc >= L->n_links || ifc < 0) {
        L->c_unknown_link++;
        return 0;
    }
    Pkt p;
    int st = parse(L->links[ifc], f, n, orig_len, &p);
    if (st != P_OK) {
        if (st == P_CUT) L->c_ip_cut++;
        else if (st == P_NOT_IP) L->c_not_ip++;
        else L->c_unknown_link++;
        return 0;
    }
    if (L->dedupe) {
        int link = L->links[ifc];
        int64_t iface = link == 276 ? p.ifindex : link == 113 ? NONE : (int64_t)ifc;
        if (duplicate(L, ts, iface, f, n, p.l3_end - p.ip_len, p.l3_end, p.family)) {
            L->c_duplicates++;
            return 0;
        }
    }
    L->c_packets++;
    L->c_bytes_ip += p.ip_len;
    if (L->file_first == NONE || ts < L->file_first) L->file_first = ts;
    if (L->file_last == NONE || ts > L->file_last) L->file_last = ts;
    if (!L->have_first) {
        L->have_first = 1;
        L->first_ns = L->last_ns = ts;
        L->bucket_end = ts + L->interval_ns;
        L->next_house = ts + HOUSEKEEP_NS;
    } else if (ts > L->last_ns) {
        L->last_ns = ts;
    } else if (ts < L->first_ns) {
        L->first_ns = ts;
    }
    if (ts >= L->bucket_end) {
        if (flush_flows(L) < 0) return -1;
        int64_t end = L->bucket_end + L->interval_ns;
        L->bucket_end = ts >= end ? ts + L->interval_ns : end;
    }
    if (ts >= L->next_house) {
        if (conns_housekeeping(L, ts) < 0) return -1;
        PyObject *r = PyObject_CallFunction(L->m_housekeeping, "L", (long long)ts);
        if (r == NULL) return -1;
        Py_DECREF(r);
        L->next_house = ts + HOUSEKEEP_NS;
    }
    if (n < p.l3_end) L->c_snaplen_cut++;
    if (p.l4_cut) L->c_l4_cut++;
    int64_t n_pk = 1, n_b = p.ip_len;
    if (p.proto == 6 && p.has_ports) {
        if (tcp(L, ts, &p, f, n, &n_pk, &n_b) < 0) return -1;
    } else if (p.proto == 17 && p.paylen && p.has_ports && (is_dns_port(L, p.sport) || is_dns_port(L, p.dport))) {
        PyObject *r = PyObject_CallFunction(L->m_dns_udp, "LNiNiN", (long long)ts, addr_bytes(p.family, p.src), (int)p.sport,
                                            addr_bytes(p.family, p.dst), (int)p.dport, slice(f, n, p.poff, p.l3_end));
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    /* the flow */
    FlowKey k;
    memset(&k, 0, sizeof(k));
    k.file_no = L->file_no;
    k.ifc = (int32_t)ifc;
    k.ifindex = p.ifindex;
    k.direction = (uint8_t)(epb_dir == 1 ? D_INGRESS : epb_dir == 2 ? D_EGRESS : p.direction);
    if (p.macs != NULL) {
        k.has_macs = 1;
        memcpy(k.macs, p.macs, 12);
    }
    k.family = (uint8_t)p.family;
    k.proto = (uint8_t)p.proto;
    int alen = p.family == 4 ? 4 : 16;
    memcpy(k.src, p.src, alen);
    memcpy(k.dst, p.dst, alen);
    if ((p.proto == 6 || p.proto == 17 || p.proto == 132) && p.has_ports) {
        k.has_ports = 1;
        k.sport = p.sport;
        k.dport = p.dport;
    }
    if ((L->ftab_used + 1) * 10 >= L->ftab_cap * 7 && ftab_grow(L) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t h = hash_bytes(&k, sizeof(k));
    Py_ssize_t j = (Py_ssize_t)(h & (uint64_t)(L->ftab_cap - 1));
    for (;;) {
        FlowSlot *s = &L->ftab[j];
        if (!s->used) {
            s->used = 1;
            s->hash = h;
            s->key = k;
            s->packets = n_pk;
            s->bytes = n_b;
            s->first = s->last = ts;
            s->flags = p.has_flags ? p.flags : 0;
            s->seq = L->flow_seq++;
            L->ftab_used++;
            break;
        }
        if (s->hash == h && memcmp(&s->key, &k, sizeof(k)) == 0) {
            s->packets += n_pk;
            s->bytes += n_b;
            if (ts < s->first) s->first = ts;
            if (ts > s->last) s->last = ts;
            if (p.has_flags && p.flags) s->flags |= p.flags;
            break;
        }
        j = (j + 1) & (L->ftab_cap - 1);
    }
    return 0;
}

/* --- the type ------------------------------------------------------------------------------- */

static int Loop_init(Loop *L, PyObject *args, PyObject *kw) {
    PyObject *sink, *ports;
    long long interval;
    if (!PyArg_ParseTuple(args, "OLO!", &sink, &interval, &PyTuple_Type, &ports)) return -1;
    Py_INCREF(sink);
    Py_XSETREF(L->sink, sink);
    const char *names[] = {"l7_open", "l7_data", "l7_fin", "hello", "dns_udp", "conn_end", "flows", "housekeeping"};
    PyObject **slots[] = {&L->m_l7_open, &L->m_l7_data, &L->m_l7_fin, &L->m_hello, &L->m_dns_udp, &L->m_conn_end, &L->m_flows, &L->m_housekeeping};
    for (int i = 0; i < 8; i++) {
        PyObject *m = PyObject_GetAttrString(sink, names[i]);
        if (m == NULL) return -1;
        Py_XSETREF(*slots[i], m);
    }
    Py_CLEAR(L->m_on_http);
    Py_CLEAR(L->live_flows);
    PyObject *onh = PyObject_GetAttrString(sink, "_on_http"), *streams = PyObject_GetAttrString(sink, "streams");
    PyObject *flows = streams ? PyObject_GetAttrString(streams, "flows") : NULL;
    PyObject *smin = PyObject_GetAttrString(sink, "skip_body_min");
    if (onh && flows && smin && PyDict_Check(flows)) {
        L->m_on_http = onh;
        L->live_flows = flows;
        L->skip_body_min = PyLong_AsLongLong(smin);
        onh = flows = NULL;
    }
    Py_XDECREF(onh);
    Py_XDECREF(flows);
    Py_XDECREF(streams);
    Py_XDECREF(smin);
    PyErr_Clear(); /* a sink without them (a test's recorder): every segment goes to l7_data */
    L->interval_ns = interval;
    L->n_dns = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(ports) && i < 32; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(ports, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        L->dns_ports[L->n_dns++] = (int)v;
    }
    L->next_id = 1;
    L->file_no = -1;
    L->file_first = L->file_last = NONE;
    return 0;
}

static void Loop_dealloc(Loop *L) {
    Py_XDECREF(L->sink);
    Py_XDECREF(L->m_l7_open);
    Py_XDECREF(L->m_l7_data);
    Py_XDECREF(L->m_l7_fin);
    Py_XDECREF(L->m_hello);
    Py_XDECREF(L->m_dns_udp);
    Py_XDECREF(L->m_conn_end);
    Py_XDECREF(L->m_flows);
    Py_XDECREF(L->m_housekeeping);
    Py_XDECREF(L->m_on_http);
    Py_XDECREF(L->live_flows);
    for (Py_ssize_t i = 0; i < L->n_conns; i++) {
        Py_CLEAR(L->conns[i].flow);
        Py_CLEAR(L->conns[i].flow_key);
    }
    PyMem_Free(L->links);
    PyMem_Free(L->conns);
    PyMem_Free(L->free_conns);
    PyMem_Free(L->ctab);
    PyMem_Free(L->ftab);
    PyMem_Free(L->recent);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static PyObject *Loop_start_file(Loop *L, PyObject *arg) {
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred()) return NULL;
    L->file_no = (int)v;
    L->n_links = 0;
    L->file_first = L->file_last = NONE;
    Py_RETURN_NONE;
}

static PyObject *Loop_set_links(Loop *L, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "links must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *links = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int));
    if (links == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(links);
            Py_DECREF(seq);
            return NULL;
        }
        links[i] = (int)v;
    }
    Py_DECREF(seq);
    PyMem_Free(L->links);
    L->links = links;
    L->n_links = n;
    L->dedupe = n > 1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (links[i] == 113 || links[i] == 276) L->dedupe = 1;
    if (L->dedupe && L->recent == NULL) {
        L->recent = PyMem_Calloc(DUP_RECENT, sizeof(Recent));
        if (L->recent == NULL) return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

static PyObject *Loop_skip(Loop *L, PyObject *args) {
    long long cid;
    int from_client;
    unsigned long seq_end;
    if (!PyArg_ParseTuple(args, "Lpk", &cid, &from_client, &seq_end)) return NULL;
    Conn *c = (L->current != NULL && L->current->used && L->current->id == cid) ? L->current : NULL;
    for (Py_ssize_t i = 0; c == NULL && i < L->n_conns; i++)
        if (L->conns[i].used && L->conns[i].id == cid) c = &L->conns[i];
    if (c != NULL) {
        c->has_skip[from_client ? 1 : 0] = 1;
        c->skip[from_client ? 1 : 0] = (uint32_t)seq_end;
    }
    Py_RETURN_NONE;
}

static PyObject *Loop_packet(Loop *L, PyObject *args) {
    long long ts, orig;
    Py_ssize_t ifc;
    Py_buffer frame;
    int dir;
    if (!PyArg_ParseTuple(args, "Lny*Li", &ts, &ifc, &frame, &orig, &dir)) return NULL;
    int r = packet(L, ts, ifc, frame.buf, frame.len, orig, dir);
    PyBuffer_Release(&frame);
    if (r < 0) return NULL;
    Py_RETURN_NONE;
}

/* RecordLoop.run_pcap */
static PyObject *Loop_run_pcap(Loop *L, PyObject *args) {
    Py_buffer b;
    Py_ssize_t pos, hlen;
    int big, nano;
    long long limit, lo, hi;
    if (!PyArg_ParseTuple(args, "y*nppnLLL", &b, &pos, &big, &nano, &hlen, &limit, &lo, &hi)) return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t blen = b.len;
    int64_t frac_max = nano ? 1000000000LL : 1000000LL, mul = nano ? 1 : 1000;
    long long count = 0;
    while (pos >= 0 && pos + hlen <= blen) {
        int64_t sec = rd32(buf + pos, big), frac = rd32(buf + pos + 4, big), caplen = rd32(buf + pos + 8, big), origlen = rd32(buf + pos + 12, big);
        Py_ssize_t end = pos + hlen + (Py_ssize_t)caplen;
        if (end > blen || caplen > limit || frac >= frac_max || origlen < caplen || sec < lo || sec > hi) break;
        if (packet(L, sec * 1000000000LL + frac * mul, 0, buf + pos + hlen, (Py_ssize_t)caplen, origlen, 0) < 0) {
            PyBuffer_Release(&b);
            return NULL;
        }
        lo = sec - 86400;
        hi = sec + 366LL * 86400;
        pos = end;
        count++;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("nLLL", pos, lo, hi, count);
}

static int epb_flags(const uint8_t *buf, Py_ssize_t pos, Py_ssize_t end, int big) {
    while (pos + 4 <= end) {
        int code = rd16(buf + pos, big), length = rd16(buf + pos + 2, big);
        if (code == 0) break;
        if (code == 2 && length == 4 && pos + 8 <= end) return (int)(rd32(buf + pos + 4, big) & 3);
        pos += 4 + ((length + 3) & ~3);
    }
    return 0;
}

/* RecordLoop.run_pcapng */
static PyObject *Loop_run_pcapng(Loop *L, PyObject *args) {
    Py_buffer b;
    Py_ssize_t pos, base;
    int big;
    PyObject *ifaces;
    if (!PyArg_ParseTuple(args, "y*npnO!", &b, &pos, &big, &base, &PyTuple_Type, &ifaces)) return NULL;
    const uint8_t *buf = b.buf;
    Py_ssize_t blen = b.len, nif = PyTuple_GET_SIZE(ifaces);
    long long count = 0;
    PyObject *last_ts = PyLong_FromLong(0);
    if (last_ts == NULL) goto error;
    while (pos + 32 <= blen) {
        uint32_t btype = rd32(buf + pos, big), bl = rd32(buf + pos + 4, big);
        Py_ssize_t end = pos + (Py_ssize_t)bl;
        if (btype != 6 || bl < 32 || bl % 4 || bl > MAX_BLOCK || end > blen || rd32(buf + end - 4, big) != bl) break;
        uint32_t ifc = rd32(buf + pos + 8, big), thi = rd32(buf + pos + 12, big), tlo = rd32(buf + pos + 16, big);
        int64_t caplen = rd32(buf + pos + 20, big), origlen = rd32(buf + pos + 24, big);
        Py_ssize_t i = base + (Py_ssize_t)ifc;
        if (i >= nif) break;
        if (caplen > (int64_t)bl - 32) caplen = (int64_t)bl - 32;
        PyObject *it = PyTuple_GET_ITEM(ifaces, i);
        long long mul, div, off;
        int link;
        if (!PyArg_ParseTuple(it, "iLLL", &link, &mul, &div, &off)) goto error;
        Py_ssize_t opt_at = pos + 28 + (Py_ssize_t)((caplen + 3) & ~3LL);
        int flags = opt_at + 4 < end - 4 ? epb_flags(buf, opt_at, end - 4, big) : 0;
        /* pcap_reader.pcapng_ts: floor division (the same as C's for these non-negative values), clamped */
        __int128 t = (__int128)((((uint64_t)thi) << 32) | tlo) * mul / (div > 0 ? div : 1) + off;
        int64_t ts = t < 0 ? 0 : t > ((__int128)1 << 62) ? ((int64_t)1 << 62) : (int64_t)t;
        if (packet(L, ts, i, buf + pos + 28, (Py_ssize_t)caplen, origlen, flags) < 0) goto error;
        Py_SETREF(last_ts, PyLong_FromLongLong(ts));
        if (last_ts == NULL) goto error;
        pos = end;
        count++;
    }
    PyBuffer_Release(&b);
    return Py_BuildValue("nLN", pos, count, last_ts);
error:
    Py_XDECREF(last_ts);
    PyBuffer_Release(&b);
    return NULL;
}

static PyObject *Loop_flush_flows(Loop *L, PyObject *unused) {
    if (flush_flows(L) < 0) return NULL;
    Py_RETURN_NONE;
}

/* PacketLoop.finish */
static PyObject *Loop_finish(Loop *L, PyObject *unused) {
    if (flush_flows(L) < 0) return NULL;
    int64_t end = L->have_first ? L->last_ns : 0;
    /* ConnTable.finish: every connection (in slot order: see conns_housekeeping) */
    for (Py_ssize_t i = 0; i < L->n_conns; i++)
        if (L->conns[i].used && conn_end(L, &L->conns[i], end) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Loop_counters(Loop *L, PyObject *unused) {
    return Py_BuildValue("{sLsLsLsLsLsLsLsLsLsLsNsN}", "duplicate_sightings", (long long)L->c_duplicates, "packets", (long long)L->c_packets, "bytes_ip", (long long)L->c_bytes_ip,
                         "snaplen_cut", (long long)L->c_snaplen_cut, "transport_header_cut", (long long)L->c_l4_cut,
                         "not_ip", (long long)L->c_not_ip, "ip_header_cut", (long long)L->c_ip_cut,
                         "unknown_link_type", (long long)L->c_unknown_link, "gso_packets_split", (long long)L->c_gso,
                         "connections_started_before_capture", (long long)L->c_started_before,
                         "file_first_ns", int_or_none(L->file_first), "file_last_ns", int_or_none(L->file_last));
}

static PyObject *Loop_get_first(Loop *L, void *unused) { return L->have_first ? PyLong_FromLongLong(L->first_ns) : (Py_INCREF(Py_None), Py_None); }
static PyObject *Loop_get_last(Loop *L, void *unused) { return L->have_first ? PyLong_FromLongLong(L->last_ns) : (Py_INCREF(Py_None), Py_None); }

static PyGetSetDef Loop_getset[] = {
    {"first_ns", (getter)Loop_get_first, NULL, "Time of the earliest packet, or None.", NULL},
    {"last_ns", (getter)Loop_get_last, NULL, "Time of the latest packet, or None.", NULL},
    {NULL},
};

static PyMethodDef Loop_methods[] = {
    {"start_file", (PyCFunction)Loop_start_file, METH_O, "Records that follow are of file N."},
    {"set_links", (PyCFunction)Loop_set_links, METH_O, "The link type of each interface of the current file."},
    {"skip", (PyCFunction)Loop_skip, METH_VARARGS, "skip(cid, l7_from_client, seq_end): a body the sink does not need."},
    {"packet", (PyCFunction)Loop_packet, METH_VARARGS, "packet(ts, ifc, frame, orig_len, direction)."},
    {"run_pcap", (PyCFunction)Loop_run_pcap, METH_VARARGS, "RecordLoop.run_pcap."},
    {"run_pcapng", (PyCFunction)Loop_run_pcapng, METH_VARARGS, "RecordLoop.run_pcapng."},
    {"flush_flows", (PyCFunction)Loop_flush_flows, METH_NOARGS, "Hand the interval's flows to the sink."},
    {"finish", (PyCFunction)Loop_finish, METH_NOARGS, "The end: flows and every connection to the sink."},
    {"counters", (PyCFunction)Loop_counters, METH_NOARGS, "packet_loop.COUNTERS as a dict."},
    {NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowtape.capture.importers._pcap.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The importer's packet loop (compiled twin of packet_loop.PacketLoop).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_getset = Loop_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pcap", "The pcap importer's packet loop, compiled.", -1, NULL};

PyMODINIT_FUNC PyInit__pcap(void) {
    if (PyType_Ready(&LoopType) < 0) return NULL;
    if (!(s_ingress = PyUnicode_InternFromString("ingress")) || !(s_egress = PyUnicode_InternFromString("egress")) ||
        !(s_http = PyUnicode_InternFromString("http")) || !(s_dns = PyUnicode_InternFromString("dns")) ||
        !(s_tls = PyUnicode_InternFromString("tls")) || !(a_dirs = PyUnicode_InternFromString("dirs")) ||
        !(a_next = PyUnicode_InternFromString("next")) || !(a_held = PyUnicode_InternFromString("held")) ||
        !(a_skip_to = PyUnicode_InternFromString("skip_to")) || !(a_http = PyUnicode_InternFromString("http")) ||
        !(a_last_ts = PyUnicode_InternFromString("last_ts")) || !(a_feed_tuples = PyUnicode_InternFromString("feed_tuples")) ||
        !(a_body_remaining = PyUnicode_InternFromString("body_remaining")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0) {
        Py_DECREF(&LoopType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
