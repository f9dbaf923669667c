/* capture/decode/tls.py's ClientHello reader, compiled, for a hello in one TLS record, whole or cut
 * short by the capture prefix (nearly every hello the recorder sees): SNI, ALPN, the offered version.
 *
 * Why: the target is a ClientHello no slower than dpkt's parse of it; the Python fast path
 * (tls._fast_client_hello) costs 2-3x dpkt, and a hello cut by the recorder's prefix (a browser's hello
 * is 512-1800 bytes) fell through to the bounds-checked reference at about 60 µs. This file is the
 * reference (parse_client_hello_reference and _walk) step for step, restricted to one record: the
 * same reads in the same order, each ending the walk as a cut (the bytes end inside the declared
 * lengths: what was read so far, truncated=True) or as malformed (lengths contradict each other). It
 * returns None (decline) where the reference raises Malformed, and where the handshake continues in a
 * second record: the reference then answers, so the caller's result is the reference's everywhere.
 * tests/test_dns_tls_compiled.py holds the two equal on real hellos at every cut, generated ones,
 * mutations and random bytes, and requires an answer wherever the Python fast path answers. Keep the
 * two in step: a change to either is a change to both.
 *
 * Input is untrusted: a read is checked against both the enclosing declared length and the bytes
 * present before it happens.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define CONTENT_HANDSHAKE 22
#define HANDSHAKE_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
#define EXT_SUPPORTED_VERSIONS 43
#define MAX_HELLO (1 << 16) /* tls.MAX_HELLO */

static PyObject *s_tls13;

/* bytes.decode("ascii", "backslashreplace"), then optionally .lower(): bytes >= 0x80 become \xhh */
static PyObject *ascii_text(const unsigned char *s, Py_ssize_t n, int lower, int rstrip_dot) {
    Py_ssize_t len = 0;
    for (Py_ssize_t i = 0; i < n; i++) len += s[i] < 0x80 ? 1 : 4;
    PyObject *o = PyUnicode_New(len, 127);
    if (o == NULL) return NULL;
    Py_UCS1 *w = PyUnicode_1BYTE_DATA(o);
    Py_ssize_t k = 0;
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c < 0x80) {
            w[k++] = (Py_UCS1)((lower && c >= 'A' && c <= 'Z') ? c + 32 : c);
        } else {
            w[k++] = '\\'; w[k++] = 'x'; w[k++] = (Py_UCS1)hex[c >> 4]; w[k++] = (Py_UCS1)hex[c & 15];
        }
    }
    if (rstrip_dot) {
        Py_ssize_t m = len;
        while (m > 0 && w[m - 1] == '.') m--;
        if (m != len) {
            PyObject *cut = PyUnicode_Substring(o, 0, m);
            Py_DECREF(o);
            return cut;
        }
    }
    return o;
}

enum { OK = 0, CUT = 1, MAL = 2 };

/* tls._Reader over the handshake bytes hs[0:have): reads inside [pos, end); end may lie past `have`. */
typedef struct {
    const unsigned char *hs;
    Py_ssize_t have, pos, end;
} Reader;

/* _Reader.take: k bytes at pos, or CUT (they are not all here) / MAL (they overrun `end`) */
static int take(Reader *r, Py_ssize_t k, const unsigned char **out) {
    Py_ssize_t lim = r->end < r->have ? r->end : r->have;
    if (r->pos + k > lim) return r->pos + k > r->end ? MAL : CUT;
    *out = r->hs + r->pos;
    r->pos += k;
    return OK;
}

static int u8(Reader *r, unsigned *v) {
    const unsigned char *p;
    int st = take(r, 1, &p);
    if (st == OK) *v = p[0];
    return st;
}

static int u16(Reader *r, unsigned *v) {
    const unsigned char *p;
    int st = take(r, 2, &p);
    if (st == OK) *v = ((unsigned)p[0] << 8) | p[1];
    return st;
}

/* _Reader.skip: step over k bytes without reading them */
static int skip(Reader *r, Py_ssize_t k) {
    if (r->pos + k > r->end) return MAL;
    r->pos += k;
    return OK;
}

/* _Reader.sub: a reader over the next k bytes (maybe only partly present) */
static int sub(Reader *r, Py_ssize_t k, Reader *child) {
    if (r->pos + k > r->end) return MAL;
    *child = (Reader){r->hs, r->have, r->pos, r->pos + k};
    r->pos += k;
    return OK;
}

typedef struct {
    PyObject *sni, *alpn; /* alpn: a list, or NULL before any ALPN extension */
    int tls13;
} Fields;

#define TRY(x) do { int st_ = (x); if (st_ != OK) return st_; } while (0)

/* tls._walk: OK (the hello is complete), CUT, MAL, or -1 with a Python error set */
static int walk(Reader *body, Fields *f) {
    unsigned v;
    TRY(skip(body, 32)); /* random */
    TRY(u8(body, &v)); TRY(skip(body, v)); /* session id */
    TRY(u16(body, &v)); TRY(skip(body, v)); /* cipher suites */
    TRY(u8(body, &v)); TRY(skip(body, v)); /* compression methods */
    if (body->end - body->pos == 0) return OK; /* no extensions (SSL 3.0 style hello): complete */
    Reader exts, ext, inner;
    TRY(u16(body, &v)); TRY(sub(body, v, &exts));
    while (exts.end - exts.pos > 0) {
        unsigned type, len;
        TRY(u16(&exts, &type));
        TRY(u16(&exts, &len)); TRY(sub(&exts, len, &ext));
        if (type == EXT_SERVER_NAME) {
            TRY(u16(&ext, &v)); TRY(sub(&ext, v, &inner));
            while (inner.end - inner.pos > 0) {
                unsigned kind, n;
                const unsigned char *name;
                TRY(u8(&inner, &kind));
                TRY(u16(&inner, &n)); TRY(take(&inner, n, &name));
                if (kind == 0 && f->sni == NULL && (f->sni = ascii_text(name, n, 1, 1)) == NULL) return -1;
            }
        } else if (type == EXT_ALPN) {
            TRY(u16(&ext, &v)); TRY(sub(&ext, v, &inner));
            Py_CLEAR(f->alpn); /* a later ALPN extension replaces an earlier one */
            if ((f->alpn = PyList_New(0)) == NULL) return -1;
            while (inner.end - inner.pos > 0) {
                unsigned n;
                const unsigned char *proto;
                TRY(u8(&inner, &n)); TRY(take(&inner, n, &proto));
                PyObject *text = ascii_text(proto, n, 0, 0);
                if (text == NULL) return -1;
                int r = PyList_Append(f->alpn, text);
                Py_DECREF(text);
                if (r < 0) return -1;
            }
        } else if (type == EXT_SUPPORTED_VERSIONS) {
            TRY(u8(&ext, &v)); TRY(sub(&ext, v, &inner));
            while (inner.end - inner.pos > 0) {
                TRY(u16(&inner, &v));
                if (v == 0x0304) f->tls13 = 1; /* 0x0304 is not a GREASE value */
            }
        }
        /* other extensions: sub() already stepped over them */
    }
    return OK;
}

/* fast_client_hello(data, ClientHello, version_name) -> ClientHello or None (decline) */
static PyObject *fast_client_hello(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "fast_client_hello(data, ClientHello, version_name)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = view.len;
    PyObject *result = NULL, *version = NULL;
    Fields f = {NULL, NULL, 0};

    /* tls.handshake_bytes, for one record: a second handshake record right after it is the reference's */
    if (n < 5 || d[0] != CONTENT_HANDSHAKE || d[1] != 3) goto decline;
    Py_ssize_t rec = ((Py_ssize_t)d[3] << 8) | d[4];
    if (rec == 0 || rec > (1 << 14) + 2048) goto decline; /* Malformed("bad record length") */
    if (5 + rec + 5 <= n && d[5 + rec] == CONTENT_HANDSHAKE) goto decline;
    Reader r = {d + 5, (n < 5 + rec ? n : 5 + rec) - 5, 0, MAX_HELLO + 4};
    if (r.have < 6 || r.hs[0] != HANDSHAKE_CLIENT_HELLO) goto decline; /* the reference: None */
    Reader body;
    Py_ssize_t body_len = ((Py_ssize_t)r.hs[1] << 16) | ((Py_ssize_t)r.hs[2] << 8) | r.hs[3];
    r.pos = 4;
    if (sub(&r, body_len, &body) != OK) goto decline;
    unsigned legacy;
    if (u16(&body, &legacy) != OK) goto decline; /* 6 bytes are here: only MAL can stop it, raised by the reference */
    int st = walk(&body, &f);
    if (st < 0) goto error;
    if (st == MAL) goto decline;
    int truncated = st == CUT || body.end > r.have;
    if (f.tls13) {
        version = Py_NewRef(s_tls13);
    } else {
        PyObject *code = PyLong_FromUnsignedLong(legacy);
        if (code == NULL) goto error;
        version = PyObject_CallOneArg(args[2], code);
        Py_DECREF(code);
        if (version == NULL) goto error;
    }
    {
        PyObject *items = PyTuple_New(4);
        if (items == NULL) goto error;
        PyTuple_SET_ITEM(items, 0, Py_NewRef(version));
        PyTuple_SET_ITEM(items, 1, Py_NewRef(f.sni != NULL ? f.sni : Py_None));
        PyTuple_SET_ITEM(items, 2, f.alpn != NULL ? PyList_AsTuple(f.alpn) : Py_NewRef(Py_None));
        PyTuple_SET_ITEM(items, 3, PyBool_FromLong(truncated));
        if (PyTuple_GET_ITEM(items, 2) == NULL) { Py_DECREF(items); goto error; }
        PyObject *cls = args[1];
        if (PyType_Check(cls) && PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type)) {
            /* tuple.__new__ directly: a NamedTuple's Python __new__ costs a frame */
            PyObject *targs = PyTuple_Pack(1, items);
            result = targs == NULL ? NULL : PyTuple_Type.tp_new((PyTypeObject *)cls, targs, NULL);
            Py_XDECREF(targs);
        } else {
            result = PyObject_CallObject(cls, items);
        }
        Py_DECREF(items);
    }
    goto done;
decline:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(f.sni);
    Py_XDECREF(f.alpn);
    Py_XDECREF(version);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef module_methods[] = {
    {"fast_client_hello", (PyCFunction)(void (*)(void))fast_client_hello, METH_FASTCALL,
     "fast_client_hello(data, ClientHello, version_name): tls.parse_client_hello_reference for one record, compiled; None: ask the reference."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tls", "Compiled ClientHello fast path (tls.py is the reference).", -1, module_methods};

PyMODINIT_FUNC PyInit__tls(void) {
    if (!(s_tls13 = PyUnicode_InternFromString("TLS 1.3"))) return NULL;
    return PyModule_Create(&module);
}
