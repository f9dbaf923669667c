/* capture/decode/dns_fast.py's fast_parse, compiled: the DNS message parser of the recorder's hot path.
 *
 * Why: a node running CoreDNS sees tens of thousands of DNS messages per second, and the issue's
 * budget is <= 5 µs per message; the Python fast path costs about 9 µs (its time is in slicing,
 * str building and method calls). This file is that function, step for step: the same checks in
 * the same places, the same name cache (it decides when the compression jump limit is reached),
 * the same text for every rdata type, and None (decline: dnslib then answers) exactly where the
 * Python returns None. dns_fast.py stays the reference: tests/test_dns_compiled.py feeds both the
 * real capture, generated messages of every handled type, mutations, cuts, pointer loops and random
 * bytes and requires identical results. Keep the two in step: a change to either is a change to both.
 *
 * Input is untrusted (any process's packets, read as root): every read is checked against the
 * message length, and the name buffers grow on the heap (a name of 32 chained pointers may be long).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAX_JUMPS 32
enum { T_A = 1, T_NS = 2, T_CNAME = 5, T_PTR = 12, T_MX = 15, T_TXT = 16, T_AAAA = 28, T_OPT = 41 };

static PyObject *s_A, *s_AAAA, *s_NS, *s_CNAME, *s_PTR, *s_MX, *s_TXT, *s_OPT, *s_empty;

/* --- a growable byte buffer ------------------------------------------------------------------ */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char stack[512];
} Buf;

static void buf_init(Buf *b) { b->p = b->stack; b->len = 0; b->cap = sizeof(b->stack); }
static void buf_free(Buf *b) { if (b->p != b->stack) PyMem_Free(b->p); }

static int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap;
        while (cap < b->len + n) cap *= 2;
        char *np = PyMem_Malloc((size_t)cap);
        if (np == NULL) { PyErr_NoMemory(); return -1; }
        memcpy(np, b->p, (size_t)b->len);
        buf_free(b);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

/* --- the name cache: start position -> the name read from there (an arena slice) -------------- */
/* dns_fast._name's `cache` dict. Small open-addressing table keyed by position; grows by doubling. */

typedef struct { int32_t key; int32_t off, len; } Slot;

typedef struct {
    Slot *slots;
    int32_t mask, used;
    Slot stack[64];
    Buf arena; /* the cached texts, back to back */
} Cache;

static void cache_init(Cache *c) {
    c->slots = c->stack;
    c->mask = 63;
    c->used = 0;
    for (int i = 0; i < 64; i++) c->stack[i].key = -1;
    buf_init(&c->arena);
}

static void cache_free(Cache *c) {
    if (c->slots != c->stack) PyMem_Free(c->slots);
    buf_free(&c->arena);
}

static Slot *cache_get(Cache *c, int32_t key) {
    for (uint32_t i = ((uint32_t)key * 2654435761u) & (uint32_t)c->mask;; i = (i + 1) & (uint32_t)c->mask) {
        if (c->slots[i].key == key) return &c->slots[i];
        if (c->slots[i].key < 0) return NULL;
    }
}

static int cache_put(Cache *c, int32_t key, const char *text, Py_ssize_t len) {
    if ((c->used + 1) * 2 > c->mask + 1) { /* keep it at most half full */
        int32_t cap = (c->mask + 1) * 2;
        Slot *ns = PyMem_Malloc(sizeof(Slot) * (size_t)cap);
        if (ns == NULL) { PyErr_NoMemory(); return -1; }
        for (int32_t i = 0; i < cap; i++) ns[i].key = -1;
        Slot *old = c->slots;
        int32_t old_n = c->mask + 1;
        c->slots = ns;
        c->mask = cap - 1;
        for (int32_t i = 0; i < old_n; i++) {
            if (old[i].key < 0) continue;
            uint32_t j = ((uint32_t)old[i].key * 2654435761u) & (uint32_t)c->mask;
            while (ns[j].key >= 0) j = (j + 1) & (uint32_t)c->mask;
            ns[j] = old[i];
        }
        if (old != c->stack) PyMem_Free(old);
    }
    Slot *s = cache_get(c, key);
    if (s == NULL) {
        uint32_t j = ((uint32_t)key * 2654435761u) & (uint32_t)c->mask;
        while (c->slots[j].key >= 0) j = (j + 1) & (uint32_t)c->mask;
        s = &c->slots[j];
        s->key = key;
        c->used++;
    }
    Py_ssize_t off = c->arena.len; /* text is a read_name output buffer, never the arena */
    if (buf_put(&c->arena, text, len) < 0) return -1;
    s->off = (int32_t)off;
    s->len = (int32_t)len;
    return 0;
}

/* --- names ------------------------------------------------------------------------------------ */

/* dns_fast._name: the name at pos (case kept, '.' for the root) into out, and the position after it.
 * Returns 1 on success, 0 for decline (the Python's None), -1 on a Python error. */
static int read_name(const unsigned char *d, Py_ssize_t n, Py_ssize_t pos, Cache *cache, Buf *out, Py_ssize_t *after) {
    out->len = 0;
    if (pos + 1 < n && d[pos] >= 0xC0) { /* a pointer to a name read before */
        int32_t ptr = ((d[pos] & 0x3F) << 8) | d[pos + 1];
        Slot *hit = cache_get(cache, ptr);
        if (hit != NULL && ptr < pos) {
            if (buf_put(out, cache->arena.p + hit->off, hit->len) < 0) return -1;
            *after = pos + 2;
            return 1;
        }
    }
    Py_ssize_t end = -1, start = pos;
    int jumps = 0, labels = 0;
    for (;;) {
        if (pos >= n) return 0;
        unsigned ln = d[pos];
        if (ln == 0) { pos += 1; break; }
        if (ln >= 0xC0) {
            if (pos + 1 >= n) return 0;
            int32_t ptr = ((ln & 0x3F) << 8) | d[pos + 1];
            if (ptr >= pos) return 0; /* dnslib refuses pointers that do not point backwards */
            if (end < 0) end = pos + 2;
            if (++jumps > MAX_JUMPS) return 0;
            Slot *hit = cache_get(cache, ptr);
            if (hit != NULL) {
                const char *t = cache->arena.p + hit->off;
                if (!(hit->len == 1 && t[0] == '.')) {
                    if (labels++ && buf_put(out, ".", 1) < 0) return -1;
                    if (buf_put(out, t, hit->len) < 0) return -1;
                }
                pos = -1;
                break;
            }
            pos = ptr;
            continue;
        }
        if (ln >= 64) return 0;
        if (pos + 1 + (Py_ssize_t)ln > n) return 0;
        for (unsigned i = 0; i < ln; i++) {
            unsigned char c = d[pos + 1 + i];
            if (c < 33 || c > 126) return 0; /* dnslib escapes any other byte as \DDD */
        }
        if (labels++ && buf_put(out, ".", 1) < 0) return -1;
        if (buf_put(out, (const char *)d + pos + 1, ln) < 0) return -1;
        pos += 1 + ln;
    }
    if (labels == 0 && buf_put(out, ".", 1) < 0) return -1;
    if (cache_put(cache, (int32_t)start, out->p, out->len) < 0) return -1;
    *after = end >= 0 ? end : pos;
    return 1;
}

static PyObject *ascii_str(const char *s, Py_ssize_t n, int lower) {
    PyObject *o = PyUnicode_New(n, 127);
    if (o == NULL) return NULL;
    Py_UCS1 *w = PyUnicode_1BYTE_DATA(o);
    if (lower) {
        for (Py_ssize_t i = 0; i < n; i++) {
            char c = s[i];
            w[i] = (Py_UCS1)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        }
    } else {
        memcpy(w, s, (size_t)n);
    }
    return o;
}

/* dns._format_ipv6 (dnslib's text): the first run of two or more zero groups becomes '::'. */
static PyObject *ipv6_text(const unsigned char *a) {
    unsigned g[8];
    for (int i = 0; i < 8; i++) g[i] = ((unsigned)a[2 * i] << 8) | a[2 * i + 1];
    char left[64] = "", right[64] = "";
    int nl = 0, nr = 0, cl = 0, cr = 0, compressing = 0;
    for (int i = 0; i < 8; i++) {
        if (!compressing) {
            if (g[i] == 0 && i < 7) {
                if (g[i + 1] == 0) compressing = 1;
                else { cl += sprintf(left + cl, "%s0", nl ? ":" : ""); nl++; }
            } else {
                cl += sprintf(left + cl, "%s%x", nl ? ":" : "", g[i]); nl++;
            }
        } else if (g[i] == 0 && nr == 0) {
            /* still inside the zero run */
        } else {
            cr += sprintf(right + cr, "%s%x", nr ? ":" : "", g[i]); nr++;
        }
    }
    if (nl < 8) return PyUnicode_FromFormat("%s::%s", left, right);
    return PyUnicode_FromStringAndSize(left, cl);
}

/* --- messages --------------------------------------------------------------------------------- */

/* cls(*items): tuple.__new__ directly for a NamedTuple (its Python __new__ costs a frame), else a call. */
static PyObject *make(PyObject *cls, PyObject *items) {
    PyObject *out;
    if (PyType_Check(cls) && PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
        PyObject *args = PyTuple_Pack(1, items);
        if (args == NULL) return NULL;
        out = PyTuple_Type.tp_new((PyTypeObject *)cls, args, NULL);
        Py_DECREF(args);
    } else {
        out = PyObject_CallObject(cls, items);
    }
    return out;
}

static PyObject *answer(PyObject *cls, PyObject *name, PyObject *type, uint32_t ttl, PyObject *data) {
    if (name == NULL || data == NULL) { Py_XDECREF(name); Py_XDECREF(data); return NULL; }
    PyObject *t = PyLong_FromUnsignedLong(ttl);
    if (t == NULL) { Py_DECREF(name); Py_DECREF(data); return NULL; }
    Py_INCREF(type);
    PyObject *items = PyTuple_New(4);
    if (items == NULL) { Py_DECREF(name); Py_DECREF(data); Py_DECREF(t); Py_DECREF(type); return NULL; }
    PyTuple_SET_ITEM(items, 0, name);
    PyTuple_SET_ITEM(items, 1, type);
    PyTuple_SET_ITEM(items, 2, t);
    PyTuple_SET_ITEM(items, 3, data);
    PyObject *out = make(cls, items);
    Py_DECREF(items);
    return out;
}

#define U16(p) (((unsigned)d[p] << 8) | d[(p) + 1])

/* --- one parsed message in C (shared by fast_parse and the Pairer) ---------------------------- */

/* Answers are kept back to back in `ans`: u32 name_len, name, u8 type_len, type, u32 ttl, u32 data_len, data. */
typedef struct {
    unsigned txid, qr, has_q, qtype, rcode, n_ans;
    int from_py; /* read by the fallback (decode_dns): qtname and rcname are its texts */
    Buf qname; /* lower-case */
    Buf ans;
    Buf qtname, rcname; /* set only for messages taken from Python (the fallback) */
} Msg;

static void msg_init(Msg *m) { buf_init(&m->qname); buf_init(&m->ans); buf_init(&m->qtname); buf_init(&m->rcname); }
static void msg_free(Msg *m) { buf_free(&m->qname); buf_free(&m->ans); buf_free(&m->qtname); buf_free(&m->rcname); }

static int put_u32(Buf *b, uint32_t v) { return buf_put(b, (const char *)&v, 4); }

static int put_lower(Buf *b, const char *s, Py_ssize_t n) {
    Py_ssize_t at = b->len;
    if (buf_put(b, s, n) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = b->p[at + i];
        if (c >= 'A' && c <= 'Z') b->p[at + i] = (char)(c + 32);
    }
    return 0;
}

/* One answer record: name lower-cased, type, ttl, data (data_lower: lower-case the data too). */
static int put_answer(Msg *m, const Buf *name, const char *type, uint32_t ttl, const char *data, Py_ssize_t dlen, int data_lower) {
    unsigned char tl = (unsigned char)strlen(type);
    if (put_u32(&m->ans, (uint32_t)name->len) < 0 || put_lower(&m->ans, name->p, name->len) < 0 ||
        buf_put(&m->ans, (const char *)&tl, 1) < 0 || buf_put(&m->ans, type, tl) < 0 || put_u32(&m->ans, ttl) < 0 ||
        put_u32(&m->ans, (uint32_t)dlen) < 0)
        return -1;
    if ((data_lower ? put_lower(&m->ans, data, dlen) : buf_put(&m->ans, data, dlen)) < 0) return -1;
    m->n_ans++;
    return 0;
}

static int ipv6_chars(const unsigned char *a, char *out) {
    PyObject *o = ipv6_text(a);
    if (o == NULL) return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (s == NULL || n > 63) { Py_DECREF(o); return -1; }
    memcpy(out, s, (size_t)n);
    Py_DECREF(o);
    return (int)n;
}

/* fast_parse's reading, into m. Returns 1 on success, 0 for decline (the Python's None), -1 on error. */
static int parse_core(const unsigned char *d, Py_ssize_t n, Msg *m) {
    Cache cache;
    Buf name, target;
    cache_init(&cache);
    buf_init(&name);
    buf_init(&target);
    int r, result = 0;
    Py_ssize_t after;
    m->qname.len = m->ans.len = 0;
    m->n_ans = 0;
    m->has_q = 0;
    m->from_py = 0;
    m->qtype = 0;

    if (n < 12) goto decline;
    unsigned txid = U16(0), flags = U16(2), qd = U16(4), an = U16(6);
    Py_ssize_t pos = 12;
    if (qd) {
        if (qd != 1) goto decline;
        if ((r = read_name(d, n, pos, &cache, &name, &after)) < 0) goto error;
        if (r == 0 || after + 4 > n) goto decline;
        pos = after;
        if (put_lower(&m->qname, name.p, name.len) < 0) goto error;
        m->has_q = 1;
        m->qtype = U16(pos);
        pos += 4;
    }
    unsigned qr = flags >> 15;
    if (qr) {
        for (unsigned i = 0; i < an; i++) {
            if ((r = read_name(d, n, pos, &cache, &name, &after)) < 0) goto error;
            if (r == 0 || after + 10 > n) goto decline;
            pos = after;
            unsigned rtype = U16(pos), rdlen = U16(pos + 8);
            uint32_t ttl = ((uint32_t)d[pos + 4] << 24) | ((uint32_t)d[pos + 5] << 16) | ((uint32_t)d[pos + 6] << 8) | d[pos + 7];
            pos += 10;
            Py_ssize_t end = pos + rdlen;
            if (end > n) goto decline;
            if (rtype == T_A) {
                if (rdlen != 4) goto decline;
                char t[16];
                int tn = snprintf(t, sizeof t, "%u.%u.%u.%u", d[pos], d[pos + 1], d[pos + 2], d[pos + 3]);
                if (put_answer(m, &name, "A", ttl, t, tn, 0) < 0) goto error;
            } else if (rtype == T_AAAA) {
                if (rdlen != 16) goto decline;
                char t[64];
                int tn = ipv6_chars(d + pos, t);
                if (tn < 0 || put_answer(m, &name, "AAAA", ttl, t, tn, 0) < 0) goto error;
            } else if (rtype == T_NS || rtype == T_CNAME || rtype == T_PTR) {
                if ((r = read_name(d, n, pos, &cache, &target, &after)) < 0) goto error;
                if (r == 0 || after != end) goto decline;
                if (put_answer(m, &name, rtype == T_NS ? "NS" : rtype == T_CNAME ? "CNAME" : "PTR", ttl, target.p, target.len, 1) < 0) goto error;
            } else if (rtype == T_MX) {
                if (rdlen < 3) goto decline;
                if ((r = read_name(d, n, pos + 2, &cache, &target, &after)) < 0) goto error;
                if (r == 0 || after != end) goto decline;
                int root = target.len == 1 && target.p[0] == '.';
                /* dnslib prints the exchange as it came, with the trailing dot */
                char pref[8];
                int np = snprintf(pref, sizeof pref, "%u ", U16(pos));
                Buf mx;
                buf_init(&mx);
                if (buf_put(&mx, pref, np) < 0 || buf_put(&mx, target.p, target.len) < 0 || (!root && buf_put(&mx, ".", 1) < 0) ||
                    put_answer(m, &name, "MX", ttl, mx.p, mx.len, 0) < 0) {
                    buf_free(&mx);
                    goto error;
                }
                buf_free(&mx);
            } else if (rtype == T_TXT) {
                /* dnslib's own reading: a string is taken while the lengths so far stay under rdlen */
                Py_ssize_t p = pos;
                unsigned total = 0;
                target.len = 0;
                int first = 1;
                while (p < end) {
                    unsigned tl = d[p];
                    if (total + tl >= rdlen) goto decline;
                    total += tl;
                    if (p + 1 + (Py_ssize_t)tl > n) goto decline;
                    for (unsigned k = 0; k < tl; k++) {
                        unsigned char c = d[p + 1 + k];
                        if (c < 32 || c > 126) goto decline;
                    }
                    if ((!first && buf_put(&target, ",", 1) < 0) || buf_put(&target, "\"", 1) < 0 ||
                        buf_put(&target, (const char *)d + p + 1, tl) < 0 || buf_put(&target, "\"", 1) < 0)
                        goto error;
                    first = 0;
                    p += 1 + tl;
                }
                if (p != end) goto decline;
                if (put_answer(m, &name, "TXT", ttl, target.p, target.len, 0) < 0) goto error;
            } else if (rtype == T_OPT) {
                if (put_answer(m, &name, "OPT", ttl, "", 0, 0) < 0) goto error;
            } else {
                goto decline;
            }
            pos = end;
        }
    }
    m->txid = txid;
    m->qr = qr;
    m->rcode = flags & 0xF;
    result = 1;
    goto done;
decline:
    result = 0;
    goto done;
error:
    result = -1;
done:
    cache_free(&cache);
    buf_free(&name);
    buf_free(&target);
    return result;
}

static uint32_t get_u32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static PyObject *type_str(const char *t, unsigned n) {
    PyObject *known[] = {s_A, s_AAAA, s_NS, s_CNAME, s_PTR, s_MX, s_TXT, s_OPT};
    for (int i = 0; i < 8; i++) {
        Py_ssize_t kn;
        const char *k = PyUnicode_AsUTF8AndSize(known[i], &kn);
        if (k != NULL && kn == (Py_ssize_t)n && memcmp(k, t, n) == 0) return Py_NewRef(known[i]);
    }
    return PyUnicode_FromStringAndSize(t, n);
}

/* fast_parse(data, make_message, make_answer, qtype_name, rcode_name) -> message or None */
static PyObject *fast_parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fast_parse(data, make_message, make_answer, qtype_name, rcode_name)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len;
    PyObject *make_message = args[1], *make_answer = args[2], *qtype_name = args[3], *rcode_name = args[4];
    PyObject *result = NULL, *answers = NULL, *qname = NULL, *qtype = NULL, *qtname = NULL;
    Msg m;
    msg_init(&m);
    int r = parse_core(d, n, &m);
    if (r < 0) goto error;
    if (r == 0) goto decline;
    if (m.has_q) {
        if ((qname = ascii_str(m.qname.p, m.qname.len, 0)) == NULL) goto error;
        if ((qtype = PyLong_FromUnsignedLong(m.qtype)) == NULL) goto error;
    }
    if ((answers = PyTuple_New(m.n_ans)) == NULL) goto error;
    {
        const char *p = m.ans.p;
        for (unsigned i = 0; i < m.n_ans; i++) {
            uint32_t nl = get_u32(p);
            const char *nm = p + 4;
            p += 4 + nl;
            unsigned tl = (unsigned char)*p;
            const char *ty = p + 1;
            p += 1 + tl;
            uint32_t ttl = get_u32(p), dl = get_u32(p + 4);
            const char *da = p + 8;
            p += 8 + dl;
            PyObject *type = type_str(ty, tl);
            if (type == NULL) goto error;
            PyObject *a = answer(make_answer, ascii_str(nm, nl, 0), type, ttl, ascii_str(da, dl, 0));
            Py_DECREF(type);
            if (a == NULL) goto error;
            PyTuple_SET_ITEM(answers, i, a);
        }
    }
    if (qtype != NULL && (qtname = PyObject_CallOneArg(qtype_name, qtype)) == NULL) goto error;
    {
        PyObject *rc = PyLong_FromUnsignedLong(m.rcode);
        if (rc == NULL) goto error;
        PyObject *rcname = PyObject_CallOneArg(rcode_name, rc);
        if (rcname == NULL) { Py_DECREF(rc); goto error; }
        PyObject *items = PyTuple_New(9);
        if (items == NULL) { Py_DECREF(rc); Py_DECREF(rcname); goto error; }
#define NEW_OR_NONE(o) ((o) != NULL ? Py_NewRef(o) : Py_NewRef(Py_None))
        PyTuple_SET_ITEM(items, 0, PyLong_FromUnsignedLong(m.txid));
        PyTuple_SET_ITEM(items, 1, PyBool_FromLong(m.qr));
        PyTuple_SET_ITEM(items, 2, NEW_OR_NONE(qname));
        PyTuple_SET_ITEM(items, 3, NEW_OR_NONE(qtype));
        PyTuple_SET_ITEM(items, 4, NEW_OR_NONE(qtname));
        PyTuple_SET_ITEM(items, 5, rc);
        PyTuple_SET_ITEM(items, 6, rcname);
        PyTuple_SET_ITEM(items, 7, Py_NewRef(answers));
        PyTuple_SET_ITEM(items, 8, Py_NewRef(Py_False));
        if (PyTuple_GET_ITEM(items, 0) == NULL) { Py_DECREF(items); goto error; }
        result = make(make_message, items);
        Py_DECREF(items);
    }
    goto done;
decline:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(answers);
    Py_XDECREF(qname);
    Py_XDECREF(qtype);
    Py_XDECREF(qtname);
    msg_free(&m);
    PyBuffer_Release(&view);
    return result;
}

/* --- the Pairer: capture/decode/dns_pairing.py's DnsPairer for UDP, on ring records, into columns --
 *
 * Why: at 20k DNS queries/s the live recorder spent most of its DNS time on per-message Python
 * objects (a DnsMessage, address strings, a row dict, then Arrow from the dicts). This type takes a
 * run of DNS_UDP ring records (struct l7_event, read at the offsets capture/live/l7.py's
 * HeaderDecoder found), parses each with parse_core (fast_parse's reading), pairs it as
 * DnsPairer.observe does and appends finished rows to column buffers that take() hands to
 * capture/decode/dns_columns.py as the buffers of Arrow arrays. DnsPairer stays the reference:
 * tests/test_dns_columns.py holds the rows, their order and the counters equal.
 *
 * DnsPairer's semantics kept here: the key (client, server, txid, qname, qtype; transport is always
 * udp), a repeated query counted as dns_duplicate_queries (latency from the first), an answer
 * without a question paired on the txid alone with the oldest matching query, an unmatched answer
 * counted, expiry in query order stopping at the first young query, and `_due` (when observe calls
 * expire) kept step for step. A message the fast reading declines (or one without a question) goes
 * to `fallback` (dns.decode_dns with the decoder's stats), as DnsPairer.feed_udp does. */

#define NEVER INT64_MAX

typedef struct {
    int64_t ts;
    uint8_t caddr[17], saddr[17]; /* [0]: 1 for IPv6; then the address (IPv4: 4 bytes, rest zero) */
    uint16_t cport, sport, txid, qtype;
    uint64_t hash;
    int32_t prev, next, hnext; /* order list (next also links the free list), hash chain */
    char *qname;               /* qname, then qtype_name */
    int32_t qname_len, qtname_len;
} Query;

typedef struct { Buf off, data; } StrCol; /* offsets: int32, starting with 0 */

typedef struct {
    PyObject_HEAD
    int64_t timeout, due;
    Py_ssize_t o_kind, o_ts, o_cap, o_family, o_saddr, o_daddr, o_sport, o_dport, o_data;
    int s_cap, s_family;
    unsigned kind_dns_udp;
    PyObject *fallback, *ip_text, *qtype_name, *rcode_name;
    Query *pool;
    int32_t pool_cap, free_head, head, tail, count;
    int32_t *buckets;
    uint32_t bmask;
    long long duplicates, unmatched;
    Msg msg;
    /* ip text cache */
    uint8_t (*ipkey)[17];
    int32_t *ipoff, *iplen;
    int32_t ipmask, ipused;
    Buf iparena;
    char *qtnames[65536]; /* qtype_name(qtype), lazily; each: u8 length then text */
    char *rcnames[16];
    /* columns */
    Py_ssize_t rows, unanswered, answers;
    Buf ts_query, ts_answer, latency, answered, cport_c, sport_c, txid_c, qtype_c, rcode_c, ttl_c;
    StrCol cip, sip, qname_c, qtname_c, rcname_c, aname, atype, adata, transport;
    Buf ans_off;
} Pairer;

static int strcol_init(StrCol *c) {
    buf_init(&c->off);
    buf_init(&c->data);
    int32_t z = 0;
    return buf_put(&c->off, (const char *)&z, 4);
}
static int strcol_put(StrCol *c, const char *s, Py_ssize_t n) {
    if (buf_put(&c->data, s, n) < 0) return -1;
    int32_t o = (int32_t)c->data.len;
    return buf_put(&c->off, (const char *)&o, 4);
}
static void strcol_free(StrCol *c) { buf_free(&c->off); buf_free(&c->data); }

static Buf *p_bufs(Pairer *p, int i) {
    Buf *b[] = {&p->ts_query, &p->ts_answer, &p->latency, &p->answered, &p->cport_c, &p->sport_c, &p->txid_c, &p->qtype_c, &p->rcode_c, &p->ttl_c, &p->ans_off};
    return i < 11 ? b[i] : NULL;
}
static StrCol *p_strs(Pairer *p, int i) {
    StrCol *c[] = {&p->cip, &p->sip, &p->qname_c, &p->qtname_c, &p->rcname_c, &p->aname, &p->atype, &p->adata, &p->transport};
    return i < 9 ? c[i] : NULL;
}

static int cols_init(Pairer *p) {
    p->rows = p->unanswered = p->answers = 0;
    for (int i = 0; p_bufs(p, i); i++) buf_init(p_bufs(p, i));
    for (int i = 0; p_strs(p, i); i++)
        if (strcol_init(p_strs(p, i)) < 0) return -1;
    int32_t z = 0;
    return buf_put(&p->ans_off, (const char *)&z, 4);
}
static void cols_free(Pairer *p) {
    for (int i = 0; p_bufs(p, i); i++) buf_free(p_bufs(p, i));
    for (int i = 0; p_strs(p, i); i++) strcol_free(p_strs(p, i));
}

/* --- addresses ---- */

static void norm_addr(uint8_t out[17], unsigned family, const unsigned char *raw) {
    memset(out, 0, 17);
    if (family == 4 || family == 2) memcpy(out + 1, raw, 4); /* ebpf.ip_text: v4 from the first 4 bytes */
    else { out[0] = 1; memcpy(out + 1, raw, 16); }
}

static uint64_t fnv(uint64_t h, const void *s, size_t n) {
    const unsigned char *c = s;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static int ip_reset(Pairer *p, int32_t cap) {
    PyMem_Free(p->ipkey); PyMem_Free(p->ipoff); PyMem_Free(p->iplen);
    p->ipkey = PyMem_Malloc(17 * (size_t)cap);
    p->ipoff = PyMem_Malloc(4 * (size_t)cap);
    p->iplen = PyMem_Malloc(4 * (size_t)cap);
    if (!p->ipkey || !p->ipoff || !p->iplen) { PyErr_NoMemory(); return -1; }
    for (int32_t i = 0; i < cap; i++) p->iplen[i] = -1;
    p->ipmask = cap - 1;
    p->ipused = 0;
    p->iparena.len = 0;
    return 0;
}

/* The address's text (ebpf.ip_text's, asked once per address; the cache is bounded like IpText's). */
static int ip_lookup(Pairer *p, const uint8_t key[17], const char **text, Py_ssize_t *len) {
    uint32_t i = (uint32_t)fnv(14695981039346656037ull, key, 17) & (uint32_t)p->ipmask;
    for (;; i = (i + 1) & (uint32_t)p->ipmask) {
        if (p->iplen[i] < 0) break;
        if (memcmp(p->ipkey[i], key, 17) == 0) { *text = p->iparena.p + p->ipoff[i]; *len = p->iplen[i]; return 0; }
    }
    if (p->ipused * 2 >= p->ipmask) { /* full: start again (as IpText clears its cache) */
        if (ip_reset(p, p->ipmask + 1) < 0) return -1;
        return ip_lookup(p, key, text, len);
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)key + 1, 16);
    if (raw == NULL) return -1;
    PyObject *t = PyObject_CallFunction(p->ip_text, "iO", key[0] ? 10 : 4, raw);
    Py_DECREF(raw);
    if (t == NULL) return -1;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(t, &n);
    if (s == NULL) { Py_DECREF(t); return -1; }
    int32_t off = (int32_t)p->iparena.len;
    if (buf_put(&p->iparena, s, n) < 0) { Py_DECREF(t); return -1; }
    Py_DECREF(t);
    memcpy(p->ipkey[i], key, 17);
    p->ipoff[i] = off;
    p->iplen[i] = (int32_t)n;
    p->ipused++;
    *text = p->iparena.p + off;
    *len = n;
    return 0;
}

/* A cached name from a Python function of an int (qtype_name, rcode_name): u8 length, then text. */
static const char *cached_name(char **slot, PyObject *fn, unsigned code) {
    if (*slot != NULL) return *slot;
    PyObject *t = PyObject_CallFunction(fn, "I", code);
    if (t == NULL) return NULL;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(t, &n);
    if (s == NULL || n > 255) { Py_DECREF(t); if (s != NULL) PyErr_SetString(PyExc_ValueError, "type name too long"); return NULL; }
    char *c = PyMem_Malloc((size_t)n + 1);
    if (c == NULL) { Py_DECREF(t); PyErr_NoMemory(); return NULL; }
    c[0] = (char)n;
    memcpy(c + 1, s, (size_t)n);
    Py_DECREF(t);
    return *slot = c;
}

/* --- rows ---- */

static int put_i64(Buf *b, int64_t v) { return buf_put(b, (const char *)&v, 8); }
static int put_u16(Buf *b, unsigned v) { uint16_t x = (uint16_t)v; return buf_put(b, (const char *)&x, 2); }

static int put_bit(Buf *b, Py_ssize_t i, int v) {
    if ((i & 7) == 0) {
        char z = 0;
        if (buf_put(b, &z, 1) < 0) return -1;
    }
    if (v) b->p[i >> 3] |= (char)(1 << (i & 7));
    return 0;
}

/* The row of query q, answered by m at ts_answer (m NULL: unanswered). */
static int emit(Pairer *p, const Query *q, const Msg *m, int64_t ts_answer, const char *rcname, Py_ssize_t rcname_len) {
    const char *t;
    Py_ssize_t tn;
    if (put_i64(&p->ts_query, q->ts) < 0 || put_i64(&p->ts_answer, m ? ts_answer : 0) < 0 ||
        put_i64(&p->latency, m ? ts_answer - q->ts : 0) < 0 || put_bit(&p->answered, p->rows, m != NULL) < 0)
        return -1;
    if (ip_lookup(p, q->caddr, &t, &tn) < 0 || strcol_put(&p->cip, t, tn) < 0) return -1;
    if (ip_lookup(p, q->saddr, &t, &tn) < 0 || strcol_put(&p->sip, t, tn) < 0) return -1;
    if (put_u16(&p->cport_c, q->cport) < 0 || put_u16(&p->sport_c, q->sport) < 0 || put_u16(&p->txid_c, q->txid) < 0 ||
        put_u16(&p->qtype_c, q->qtype) < 0 || strcol_put(&p->transport, "udp", 3) < 0 || strcol_put(&p->qname_c, q->qname, q->qname_len) < 0 ||
        strcol_put(&p->qtname_c, q->qname + q->qname_len, q->qtname_len) < 0)
        return -1;
    if (m != NULL) {
        unsigned char rc = (unsigned char)m->rcode;
        if (buf_put(&p->rcode_c, (const char *)&rc, 1) < 0 || strcol_put(&p->rcname_c, rcname, rcname_len) < 0) return -1;
        const char *a = m->ans.p;
        for (unsigned i = 0; i < m->n_ans; i++) {
            uint32_t nl = get_u32(a);
            if (strcol_put(&p->aname, a + 4, nl) < 0) return -1;
            a += 4 + nl;
            unsigned tl = (unsigned char)*a;
            if (strcol_put(&p->atype, a + 1, tl) < 0) return -1;
            a += 1 + tl;
            uint32_t ttl = get_u32(a), dl = get_u32(a + 4);
            if (put_u32(&p->ttl_c, ttl) < 0 || strcol_put(&p->adata, a + 8, dl) < 0) return -1;
            a += 8 + dl;
        }
        p->answers += m->n_ans;
    } else {
        unsigned char rc = 0;
        if (buf_put(&p->rcode_c, (const char *)&rc, 1) < 0 || strcol_put(&p->rcname_c, "", 0) < 0) return -1;
        p->unanswered++;
    }
    int32_t ao = (int32_t)p->answers;
    if (buf_put(&p->ans_off, (const char *)&ao, 4) < 0) return -1;
    p->rows++;
    return 0;
}

/* --- pending queries ---- */

static uint64_t query_hash(const uint8_t *c, unsigned cport, const uint8_t *s, unsigned sport, unsigned txid, const char *qn, Py_ssize_t qnl, unsigned qtype) {
    uint64_t h = 14695981039346656037ull;
    uint16_t w[4] = {(uint16_t)cport, (uint16_t)sport, (uint16_t)txid, (uint16_t)qtype};
    h = fnv(h, c, 17);
    h = fnv(h, s, 17);
    h = fnv(h, w, sizeof w);
    return fnv(h, qn, (size_t)qnl);
}

static int grow(Pairer *p) {
    int32_t cap = p->pool_cap ? p->pool_cap * 2 : 1024;
    Query *np = PyMem_Realloc(p->pool, sizeof(Query) * (size_t)cap);
    if (np == NULL) { PyErr_NoMemory(); return -1; }
    p->pool = np;
    for (int32_t i = cap - 1; i >= p->pool_cap; i--) { p->pool[i].next = p->free_head; p->pool[i].qname = NULL; p->free_head = i; }
    p->pool_cap = cap;
    int32_t *nb = PyMem_Malloc(sizeof(int32_t) * (size_t)cap);
    if (nb == NULL) { PyErr_NoMemory(); return -1; }
    for (int32_t i = 0; i < cap; i++) nb[i] = -1;
    PyMem_Free(p->buckets);
    p->buckets = nb;
    p->bmask = (uint32_t)cap - 1;
    for (int32_t i = p->head; i >= 0; i = p->pool[i].next) { /* rehash the pending ones */
        uint32_t b = (uint32_t)p->pool[i].hash & p->bmask;
        p->pool[i].hnext = nb[b];
        nb[b] = i;
    }
    return 0;
}

static void unlink_query(Pairer *p, int32_t i) {
    Query *q = &p->pool[i];
    int32_t *link = &p->buckets[(uint32_t)q->hash & p->bmask];
    while (*link != i) link = &p->pool[*link].hnext;
    *link = q->hnext;
    if (q->prev >= 0) p->pool[q->prev].next = q->next; else p->head = q->next;
    if (q->next >= 0) p->pool[q->next].prev = q->prev; else p->tail = q->prev;
    PyMem_Free(q->qname);
    q->qname = NULL;
    q->next = p->free_head;
    p->free_head = i;
    p->count--;
}

/* DnsPairer.expire: rows for queries older than the timeout, in query order. */
static int expire(Pairer *p, int64_t now) {
    while (p->head >= 0 && !(now - p->pool[p->head].ts < p->timeout)) {
        int32_t i = p->head;
        if (emit(p, &p->pool[i], NULL, 0, NULL, 0) < 0) return -1;
        unlink_query(p, i);
    }
    p->due = p->head >= 0 ? p->pool[p->head].ts + p->timeout : NEVER;
    return 0;
}

static int flush(Pairer *p) {
    while (p->head >= 0) {
        int32_t i = p->head;
        if (emit(p, &p->pool[i], NULL, 0, NULL, 0) < 0) return -1;
        unlink_query(p, i);
    }
    return 0;
}

/* DnsPairer.observe for a UDP message m sent from (src, sport) to (dst, dport). */
static int observe(Pairer *p, int64_t ts, const Msg *m, const uint8_t *src, unsigned sport, const uint8_t *dst, unsigned dport) {
    if (ts >= p->due && expire(p, ts) < 0) return -1;
    const char *qtn;
    Py_ssize_t qtnl;
    if (!m->qr) {
        uint64_t h = query_hash(src, sport, dst, dport, m->txid, m->qname.p, m->qname.len, m->qtype);
        for (int32_t i = p->pool_cap ? p->buckets[(uint32_t)h & p->bmask] : -1; i >= 0; i = p->pool[i].hnext) {
            Query *q = &p->pool[i];
            if (q->hash == h && q->cport == sport && q->sport == dport && q->txid == m->txid && q->qtype == m->qtype &&
                q->qname_len == m->qname.len && memcmp(q->caddr, src, 17) == 0 && memcmp(q->saddr, dst, 17) == 0 &&
                memcmp(q->qname, m->qname.p, (size_t)m->qname.len) == 0) {
                p->duplicates++; /* a retransmission: latency counts from the first */
                return 0;
            }
        }
        if (m->from_py) { qtn = m->qtname.p; qtnl = m->qtname.len; }
        else {
            const char *c = cached_name(&p->qtnames[m->qtype & 0xFFFF], p->qtype_name, m->qtype);
            if (c == NULL) return -1;
            qtn = c + 1;
            qtnl = (unsigned char)c[0];
        }
        if (p->free_head < 0 && grow(p) < 0) return -1;
        if (p->count == 0) p->due = ts + p->timeout;
        int32_t i = p->free_head;
        Query *q = &p->pool[i];
        char *text = PyMem_Malloc((size_t)(m->qname.len + qtnl) + 1);
        if (text == NULL) { PyErr_NoMemory(); return -1; }
        p->free_head = q->next;
        memcpy(text, m->qname.p, (size_t)m->qname.len);
        memcpy(text + m->qname.len, qtn, (size_t)qtnl);
        q->qname = text;
        q->qname_len = (int32_t)m->qname.len;
        q->qtname_len = (int32_t)qtnl;
        q->ts = ts;
        memcpy(q->caddr, src, 17);
        memcpy(q->saddr, dst, 17);
        q->cport = (uint16_t)sport;
        q->sport = (uint16_t)dport;
        q->txid = (uint16_t)m->txid;
        q->qtype = (uint16_t)m->qtype;
        q->hash = h;
        uint32_t b = (uint32_t)h & p->bmask;
        q->hnext = p->buckets[b];
        p->buckets[b] = i;
        q->next = -1;
        q->prev = p->tail;
        if (p->tail >= 0) p->pool[p->tail].next = i; else p->head = i;
        p->tail = i;
        p->count++;
        return 0;
    }
    /* an answer: to the query sent the other way */
    int32_t found = -1;
    if (m->has_q) {
        uint64_t h = query_hash(dst, dport, src, sport, m->txid, m->qname.p, m->qname.len, m->qtype);
        for (int32_t i = p->pool_cap ? p->buckets[(uint32_t)h & p->bmask] : -1; i >= 0; i = p->pool[i].hnext) {
            Query *q = &p->pool[i];
            if (q->hash == h && q->cport == dport && q->sport == sport && q->txid == m->txid && q->qtype == m->qtype &&
                q->qname_len == m->qname.len && memcmp(q->caddr, dst, 17) == 0 && memcmp(q->saddr, src, 17) == 0 &&
                memcmp(q->qname, m->qname.p, (size_t)m->qname.len) == 0) {
                found = i;
                break;
            }
        }
    } else { /* some error answers (FORMERR, NOTIMP) carry no question: pair on the txid alone */
        for (int32_t i = p->head; i >= 0; i = p->pool[i].next) {
            Query *q = &p->pool[i];
            if (q->cport == dport && q->sport == sport && q->txid == m->txid && memcmp(q->caddr, dst, 17) == 0 && memcmp(q->saddr, src, 17) == 0) {
                found = i;
                break;
            }
        }
    }
    if (found < 0) { p->unmatched++; return 0; }
    const char *rcn;
    Py_ssize_t rcnl;
    if (m->from_py) {
        rcn = m->rcname.p;
        rcnl = m->rcname.len;
    } else {
        const char *c = cached_name(&p->rcnames[m->rcode & 0xF], p->rcode_name, m->rcode & 0xF);
        if (c == NULL) return -1;
        rcn = c + 1;
        rcnl = (unsigned char)c[0];
    }
    if (emit(p, &p->pool[found], m, ts, rcn, rcnl) < 0) return -1;
    unlink_query(p, found);
    return 0;
}

/* A DnsMessage (NamedTuple) from the fallback into p->msg. */
static int utf8_into(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *c = PyUnicode_AsUTF8AndSize(s, &n);
    return c == NULL ? -1 : buf_put(b, c, n);
}

static int msg_from_python(Msg *m, PyObject *o) {
    m->qname.len = m->ans.len = m->qtname.len = m->rcname.len = 0;
    m->n_ans = 0;
    m->from_py = 1;
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) < 8) { PyErr_SetString(PyExc_TypeError, "fallback must return a DnsMessage"); return -1; }
    PyObject *qname = PyTuple_GET_ITEM(o, 2), *answers = PyTuple_GET_ITEM(o, 7);
    m->txid = (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(o, 0));
    m->qr = (unsigned)PyObject_IsTrue(PyTuple_GET_ITEM(o, 1));
    m->has_q = qname != Py_None;
    m->qtype = m->has_q ? (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(o, 3)) : 0;
    m->rcode = (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(o, 5));
    if (PyErr_Occurred()) return -1;
    if (m->has_q && (utf8_into(&m->qname, qname) < 0 || utf8_into(&m->qtname, PyTuple_GET_ITEM(o, 4)) < 0)) return -1;
    if (utf8_into(&m->rcname, PyTuple_GET_ITEM(o, 6)) < 0) return -1;
    PyObject *seq = PySequence_Fast(answers, "answers must be a sequence");
    if (seq == NULL) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *a = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(a) || PyTuple_GET_SIZE(a) < 4) { Py_DECREF(seq); PyErr_SetString(PyExc_TypeError, "answers must be DnsAnswers"); return -1; }
        Py_ssize_t nl, tl, dl;
        const char *nm = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(a, 0), &nl);
        const char *ty = nm ? PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(a, 1), &tl) : NULL;
        const char *da = ty ? PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(a, 3), &dl) : NULL;
        unsigned long ttl = da ? PyLong_AsUnsignedLong(PyTuple_GET_ITEM(a, 2)) : 0;
        if (da == NULL || PyErr_Occurred() || tl > 255) { Py_DECREF(seq); if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "answer type too long"); return -1; }
        unsigned char t8 = (unsigned char)tl;
        if (put_u32(&m->ans, (uint32_t)nl) < 0 || buf_put(&m->ans, nm, nl) < 0 || buf_put(&m->ans, (const char *)&t8, 1) < 0 ||
            buf_put(&m->ans, ty, tl) < 0 || put_u32(&m->ans, (uint32_t)ttl) < 0 || put_u32(&m->ans, (uint32_t)dl) < 0 || buf_put(&m->ans, da, dl) < 0) {
            Py_DECREF(seq);
            return -1;
        }
        m->n_ans++;
    }
    Py_DECREF(seq);
    return 0;
}

static uint64_t read_uint(const unsigned char *r, int size) {
    switch (size) {
    case 1: return r[0];
    case 2: { uint16_t v; memcpy(&v, r, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, r, 4); return v; }
    default: { uint64_t v; memcpy(&v, r, 8); return v; }
    }
}

/* feed_ring(records, start, stop, offset_ns, last_ts) -> (end, last_ts): records[start:stop] up to the
 * first that is not DNS_UDP (its index is end), so the caller's loop does not look at each kind. */
static PyObject *pairer_feed_ring(Pairer *p, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "feed_ring(records, start, stop, offset_ns, last_ts)"); return NULL; }
    Py_ssize_t i;
    PyObject *seq = PySequence_Fast(args[0], "records must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), stop = PyLong_AsSsize_t(args[2]);
    long long offset = PyLong_AsLongLong(args[3]);
    unsigned long long last = PyLong_AsUnsignedLongLong(args[4]);
    if (PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (stop > n) stop = n;
    Py_ssize_t min_len = p->o_data;
    Py_ssize_t ends[] = {p->o_ts + 8, p->o_cap + p->s_cap, p->o_family + p->s_family, p->o_saddr + 16, p->o_daddr + 16, p->o_sport + 2, p->o_dport + 2};
    for (int k = 0; k < 7; k++) if (ends[k] > min_len) min_len = ends[k];
    if (start < 0) start = 0;
    for (i = start; i < stop; i++) {
        PyObject *rec = PySequence_Fast_GET_ITEM(seq, i);
        Py_buffer v;
        if (PyObject_GetBuffer(rec, &v, PyBUF_SIMPLE) < 0) goto error;
        const unsigned char *r = v.buf;
        if (v.len < min_len) { PyBuffer_Release(&v); PyErr_SetString(PyExc_ValueError, "ring record shorter than struct l7_event's header"); goto error; }
        if (r[p->o_kind] != p->kind_dns_udp) { PyBuffer_Release(&v); break; }
        uint64_t ts = read_uint(r + p->o_ts, 8);
        Py_ssize_t cap = (Py_ssize_t)read_uint(r + p->o_cap, p->s_cap);
        unsigned family = (unsigned)read_uint(r + p->o_family, p->s_family);
        unsigned sport = (unsigned)read_uint(r + p->o_sport, 2), dport = (unsigned)read_uint(r + p->o_dport, 2);
        if (ts > last) last = ts;
        if (cap > v.len - p->o_data) cap = v.len - p->o_data; /* raw[off:off + cap] */
        const unsigned char *d = r + p->o_data;
        uint8_t src[17], dst[17];
        norm_addr(src, family, r + p->o_saddr);
        norm_addr(dst, family, r + p->o_daddr);
        Msg *m = &p->msg;
        int got = parse_core(d, cap, m);
        if (got < 0) { PyBuffer_Release(&v); goto error; }
        if (got == 0 || !m->has_q) { /* DnsPairer.feed_udp: anything else goes through decode_dns */
            PyObject *o = PyObject_CallFunction(p->fallback, "y#", (const char *)d, cap);
            if (o == NULL) { PyBuffer_Release(&v); goto error; }
            if (o == Py_None) { Py_DECREF(o); PyBuffer_Release(&v); continue; }
            int bad = msg_from_python(m, o);
            Py_DECREF(o);
            if (bad < 0) { PyBuffer_Release(&v); goto error; }
        }
        PyBuffer_Release(&v);
        if (observe(p, (int64_t)ts + offset, m, src, sport, dst, dport) < 0) goto error;
    }
    Py_DECREF(seq);
    return Py_BuildValue("nK", i, last);
error:
    Py_DECREF(seq);
    return NULL;
}

static PyObject *take_buf(Buf *b) {
    PyObject *o = PyBytes_FromStringAndSize(b->p, b->len);
    b->len = 0;
    return o;
}

/* take(now_ns, final) -> (rows, unanswered, answers, buffers...): expire (or flush), then the
 * columns so far as bytes, the buffers emptied. */
static PyObject *pairer_take(Pairer *p, PyObject *args) {
    long long now;
    int final;
    if (!PyArg_ParseTuple(args, "Lp", &now, &final)) return NULL;
    if ((final ? flush(p) : expire(p, now)) < 0) return NULL;
    PyObject *out = PyTuple_New(3 + 11 + 18);
    if (out == NULL) return NULL;
    PyTuple_SET_ITEM(out, 0, PyLong_FromSsize_t(p->rows));
    PyTuple_SET_ITEM(out, 1, PyLong_FromSsize_t(p->unanswered));
    PyTuple_SET_ITEM(out, 2, PyLong_FromSsize_t(p->answers));
    int k = 3;
    for (int i = 0; p_bufs(p, i); i++) PyTuple_SET_ITEM(out, k++, take_buf(p_bufs(p, i)));
    for (int i = 0; p_strs(p, i); i++) {
        PyTuple_SET_ITEM(out, k++, take_buf(&p_strs(p, i)->off));
        PyTuple_SET_ITEM(out, k++, take_buf(&p_strs(p, i)->data));
    }
    for (k = 0; k < PyTuple_GET_SIZE(out); k++)
        if (PyTuple_GET_ITEM(out, k) == NULL) { Py_DECREF(out); return NULL; }
    cols_free(p);
    if (cols_init(p) < 0) { Py_DECREF(out); return NULL; }
    return out;
}

static PyObject *pairer_counters(Pairer *p, PyObject *unused) {
    return Py_BuildValue("{sLsLsn}", "dns_duplicate_queries", p->duplicates, "dns_unmatched_answers", p->unmatched, "pending", (Py_ssize_t)p->count);
}

static int pairer_init(Pairer *p, PyObject *args, PyObject *kw) {
    long long timeout;
    PyObject *layout, *fallback, *ip_text, *qtype_name, *rcode_name;
    if (!PyArg_ParseTuple(args, "LOOOOO", &timeout, &layout, &fallback, &ip_text, &qtype_name, &rcode_name)) return -1;
    Py_ssize_t o[12];
    PyObject *lay = PySequence_Fast(layout, "layout must be a sequence");
    if (lay == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(lay) != 12) { Py_DECREF(lay); PyErr_SetString(PyExc_ValueError, "layout: (kind, ts, cap, family, saddr, daddr, sport, dport, data offsets, cap size, family size, DNS_UDP)"); return -1; }
    for (int i = 0; i < 12; i++) o[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(lay, i));
    Py_DECREF(lay);
    if (PyErr_Occurred()) return -1;
    for (int i = 0; i < 9; i++) if (o[i] < 0) { PyErr_SetString(PyExc_ValueError, "layout: negative offset"); return -1; }
    if ((o[9] != 1 && o[9] != 2 && o[9] != 4) || (o[10] != 1 && o[10] != 2 && o[10] != 4)) { PyErr_SetString(PyExc_ValueError, "layout: field sizes 1, 2 or 4"); return -1; }
    p->o_kind = o[0]; p->o_ts = o[1]; p->o_cap = o[2]; p->o_family = o[3]; p->o_saddr = o[4]; p->o_daddr = o[5];
    p->o_sport = o[6]; p->o_dport = o[7]; p->o_data = o[8]; p->s_cap = (int)o[9]; p->s_family = (int)o[10];
    p->kind_dns_udp = (unsigned)o[11];
    p->timeout = timeout;
    p->due = NEVER;
    Py_XSETREF(p->fallback, Py_NewRef(fallback));
    Py_XSETREF(p->ip_text, Py_NewRef(ip_text));
    Py_XSETREF(p->qtype_name, Py_NewRef(qtype_name));
    Py_XSETREF(p->rcode_name, Py_NewRef(rcode_name));
    p->head = p->tail = p->free_head = -1;
    msg_init(&p->msg);
    buf_init(&p->iparena);
    if (ip_reset(p, 4096) < 0) return -1;
    return cols_init(p);
}

static void pairer_dealloc(Pairer *p) {
    if (p->pool != NULL) for (int32_t i = 0; i < p->pool_cap; i++) PyMem_Free(p->pool[i].qname);
    PyMem_Free(p->pool);
    PyMem_Free(p->buckets);
    PyMem_Free(p->ipkey); PyMem_Free(p->ipoff); PyMem_Free(p->iplen);
    buf_free(&p->iparena);
    if (p->ipmask) { msg_free(&p->msg); cols_free(p); }
    for (int i = 0; i < 65536; i++) PyMem_Free(p->qtnames[i]);
    for (int i = 0; i < 16; i++) PyMem_Free(p->rcnames[i]);
    Py_XDECREF(p->fallback); Py_XDECREF(p->ip_text); Py_XDECREF(p->qtype_name); Py_XDECREF(p->rcode_name);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMethodDef pairer_methods[] = {
    {"feed_ring", (PyCFunction)(void (*)(void))pairer_feed_ring, METH_FASTCALL, "feed_ring(records, start, stop, offset_ns, last_ts) -> (end, last_ts): up to the first record that is not DNS_UDP"},
    {"take", (PyCFunction)pairer_take, METH_VARARGS, "take(now_ns, final) -> (rows, unanswered, answers, buffers...)"},
    {"counters", (PyCFunction)pairer_counters, METH_NOARGS, "{'dns_duplicate_queries', 'dns_unmatched_answers', 'pending'}"},
    {NULL},
};

static PyTypeObject PairerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_dns.Pairer",
    .tp_basicsize = sizeof(Pairer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pairer(timeout_ns, layout, fallback, ip_text, qtype_name, rcode_name): DnsPairer for UDP ring records, into columns.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)pairer_init,
    .tp_dealloc = (destructor)pairer_dealloc,
    .tp_methods = pairer_methods,
};


static PyMethodDef module_methods[] = {
    {"fast_parse", (PyCFunction)(void (*)(void))fast_parse, METH_FASTCALL,
     "fast_parse(data, make_message, make_answer, qtype_name, rcode_name): capture.decode.dns_fast.fast_parse, compiled."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dns", "Compiled DNS message fast path (dns_fast.py is the reference).", -1, module_methods};

PyMODINIT_FUNC PyInit__dns(void) {
    if (!(s_A = PyUnicode_InternFromString("A")) || !(s_AAAA = PyUnicode_InternFromString("AAAA")) ||
        !(s_NS = PyUnicode_InternFromString("NS")) || !(s_CNAME = PyUnicode_InternFromString("CNAME")) ||
        !(s_PTR = PyUnicode_InternFromString("PTR")) || !(s_MX = PyUnicode_InternFromString("MX")) ||
        !(s_TXT = PyUnicode_InternFromString("TXT")) || !(s_OPT = PyUnicode_InternFromString("OPT")) ||
        !(s_empty = PyUnicode_InternFromString("")))
        return NULL;
    if (PyType_Ready(&PairerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Pairer", (PyObject *)&PairerType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
