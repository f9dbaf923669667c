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
    Cache cache;
    Buf name, target;
    cache_init(&cache);
    buf_init(&name);
    buf_init(&target);
    int r;
    Py_ssize_t after;

    if (n < 12) goto decline;
    unsigned txid = U16(0), flags = U16(2), qd = U16(4), an = U16(6);
    Py_ssize_t pos = 12;
    if (qd) {
        if (qd != 1) goto decline;
        if ((r = read_name(d, n, pos, &cache, &name, &after)) < 0) goto error;
        if (r == 0 || after + 4 > n) goto decline;
        pos = after;
        if ((qname = ascii_str(name.p, name.len, 1)) == NULL) goto error;
        if ((qtype = PyLong_FromUnsignedLong(U16(pos))) == NULL) goto error;
        pos += 4;
    }
    unsigned qr = flags >> 15;
    if ((answers = PyList_New(0)) == NULL) goto error;
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
            PyObject *a = NULL;
            if (rtype == T_A) {
                if (rdlen != 4) goto decline;
                a = answer(make_answer, ascii_str(name.p, name.len, 1), s_A, ttl,
                           PyUnicode_FromFormat("%u.%u.%u.%u", d[pos], d[pos + 1], d[pos + 2], d[pos + 3]));
            } else if (rtype == T_AAAA) {
                if (rdlen != 16) goto decline;
                a = answer(make_answer, ascii_str(name.p, name.len, 1), s_AAAA, ttl, ipv6_text(d + pos));
            } else if (rtype == T_NS || rtype == T_CNAME || rtype == T_PTR) {
                if ((r = read_name(d, n, pos, &cache, &target, &after)) < 0) goto error;
                if (r == 0 || after != end) goto decline;
                a = answer(make_answer, ascii_str(name.p, name.len, 1), rtype == T_NS ? s_NS : rtype == T_CNAME ? s_CNAME : s_PTR,
                           ttl, ascii_str(target.p, target.len, 1));
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
                if (buf_put(&mx, pref, np) < 0 || buf_put(&mx, target.p, target.len) < 0 || (!root && buf_put(&mx, ".", 1) < 0)) {
                    buf_free(&mx);
                    goto error;
                }
                a = answer(make_answer, ascii_str(name.p, name.len, 1), s_MX, ttl, ascii_str(mx.p, mx.len, 0));
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
                a = answer(make_answer, ascii_str(name.p, name.len, 1), s_TXT, ttl, ascii_str(target.p, target.len, 0));
            } else if (rtype == T_OPT) {
                Py_INCREF(s_empty);
                a = answer(make_answer, ascii_str(name.p, name.len, 1), s_OPT, ttl, s_empty);
            } else {
                goto decline;
            }
            if (a == NULL) goto error;
            r = PyList_Append(answers, a);
            Py_DECREF(a);
            if (r < 0) goto error;
            pos = end;
        }
    }
    unsigned rcode = flags & 0xF;
    if (qtype != NULL && (qtname = PyObject_CallOneArg(qtype_name, qtype)) == NULL) goto error;
    {
        PyObject *rc = PyLong_FromUnsignedLong(rcode);
        if (rc == NULL) goto error;
        PyObject *rcname = PyObject_CallOneArg(rcode_name, rc);
        if (rcname == NULL) { Py_DECREF(rc); goto error; }
        PyObject *ans = PyList_AsTuple(answers);
        if (ans == NULL) { Py_DECREF(rc); Py_DECREF(rcname); goto error; }
        PyObject *items = PyTuple_New(9);
        if (items == NULL) { Py_DECREF(rc); Py_DECREF(rcname); Py_DECREF(ans); goto error; }
#define NEW_OR_NONE(o) ((o) != NULL ? Py_NewRef(o) : Py_NewRef(Py_None))
        PyTuple_SET_ITEM(items, 0, PyLong_FromUnsignedLong(txid));
        PyTuple_SET_ITEM(items, 1, PyBool_FromLong(qr));
        PyTuple_SET_ITEM(items, 2, NEW_OR_NONE(qname));
        PyTuple_SET_ITEM(items, 3, NEW_OR_NONE(qtype));
        PyTuple_SET_ITEM(items, 4, NEW_OR_NONE(qtname));
        PyTuple_SET_ITEM(items, 5, rc);
        PyTuple_SET_ITEM(items, 6, rcname);
        PyTuple_SET_ITEM(items, 7, ans);
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
    cache_free(&cache);
    buf_free(&name);
    buf_free(&target);
    PyBuffer_Release(&view);
    return result;
}

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
    return PyModule_Create(&module);
}
