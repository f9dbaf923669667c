/* The HTTP/2 + HPACK connection decoder of capture/decode/http2.py (H2Connection), compiled.
 *
 * Why: the recorder's budget is 10 µs of CPU per request, and the Python decoder alone costs
 * about 30 µs per HTTP/2 stream (benchmarks/bench_h2.py). This file is the same state machine,
 * state for state: framing, the partly-known HPACK dynamic table, streams, resets and their
 * linger, the bounds, and the same row tuples (EXCHANGE_FIELDS + H2_FIELDS) and DecodeStats
 * counts. The Python stays the reference: tests/test_http2_differential.py feeds both the same
 * connections (the real capture whole, cut, split, joined mid-way, with gaps, mutated, random
 * bytes and the bombs of the fuzz tests) and requires identical rows and counts, and runs them
 * under AddressSanitizer. A change to either is a change to both.
 *
 * Kept from Python on purpose: the Huffman state table and the static table are read from the
 * `hpack` package at import (the reference uses the same ones), and grpc-message is unquoted
 * by urllib.parse.unquote (rare: only rows that carry one).
 *
 * Input is untrusted: every read is checked against its buffer's length; buffers are bounded
 * by MAX_HEADER_BLOCK, the table by MAX_TABLE, streams by MAX_STREAMS, as in the Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEADER_BLOCK (64 * 1024)
#define MAX_HEADER_LIST (64 * 1024)
#define MAX_TABLE (64 * 1024)
#define MAX_STREAMS 1024
#define RESET_LINGER_NS 1000000000LL
#define MAX_PLAUSIBLE_FRAME (1 << 20)
#define RESYNC_SCAN 64
#define DEFAULT_TABLE 4096
#define VARINT_MAX_LENGTH 5 /* hpack.hpack.VARINT_MAX_LENGTH */
#define SLOTS 4096          /* ring of table entries: at most MAX_TABLE / 33 + 1 live at once */
#define N_STATIC 61

enum { DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION };
#define END_STREAM 0x1
#define END_HEADERS 0x4
#define PADDED 0x8
#define PRIORITY_FLAG 0x20

/* http2._WANTED: the fields whose values are decoded (W_SCHEME only for that: rows do not use it) */
enum { W_METHOD, W_PATH, W_AUTHORITY, W_SCHEME, W_STATUS, W_HOST, W_CTYPE, W_UA, W_TRACEPARENT, W_GRPC_STATUS, W_GRPC_MESSAGE, W_TRACESTATE, N_WANTED };
static const char *WANTED[N_WANTED] = {":method", ":path", ":authority", ":scheme", ":status", "host", "content-type",
                                       "user-agent", "traceparent", "grpc-status", "grpc-message", "tracestate"};
/* allow bits (http2.allow_mask) */
enum { A_HOST = 1, A_TRACE = 2, A_AGENT = 4, A_CTYPE = 8, A_MESSAGE = 16, A_STATE = 32 }; /* http2.ALLOW_HEADERS order */

static const char *ERROR_CODES[] = {"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
                                    "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
                                    "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"};
#define N_ERRORS 14

/* --- module state ----------------------------------------------------------------------------- */

static uint8_t huff_next[4096], huff_flags[4096], huff_sym[4096]; /* hpack.huffman_table.HUFFMAN_TABLE */
#define HUFFMAN_COMPLETE 1
#define HUFFMAN_EMIT_SYMBOL 2
#define HUFFMAN_FAIL 4

typedef struct Entry {
    int name_known, wid;   /* wid: index into WANTED or -1 */
    Py_ssize_t nlen, vlen; /* name, value: latin-1 bytes in data[] */
    int64_t size;
    PyObject *value_obj; /* the value as str, made on first use */
    char data[];
} Entry;

static Entry *static_entries[N_STATIC];
static PyObject *error_str[N_ERRORS];
static PyObject *s_http2, *s_add, *s_unquote_kw, *unquote_fn;
static PyObject *c_malformed, *c_desync, *c_too_large, *c_orphan, *c_evicted, *c_connections, *c_mid, *c_partial;

static int wanted_id(const char *p, Py_ssize_t n) {
    for (int i = 0; i < N_WANTED; i++)
        if ((Py_ssize_t)strlen(WANTED[i]) == n && memcmp(WANTED[i], p, n) == 0) return i;
    return -1;
}

static PyObject *entry_value(Entry *e) {
    if (e->value_obj == NULL) e->value_obj = PyUnicode_DecodeLatin1(e->data + e->nlen, e->vlen, NULL);
    return e->value_obj; /* borrowed (NULL on error) */
}

static Entry *entry_new(int name_known, const char *name, Py_ssize_t nlen, const char *value, Py_ssize_t vlen, int wid) {
    Entry *e = PyMem_Malloc(sizeof(Entry) + nlen + vlen + 1);
    if (e == NULL) return NULL;
    e->name_known = name_known;
    e->wid = wid;
    e->nlen = name_known ? nlen : 0;
    e->vlen = vlen;
    /* RFC 7541 4.1, as http2.HpackReader._insert counts: len(name or " ") + len(value) + 32 */
    e->size = (name_known && nlen > 0 ? nlen : 1) + vlen + 32;
    e->value_obj = NULL;
    if (e->nlen) memcpy(e->data, name, e->nlen);
    if (vlen) memcpy(e->data + e->nlen, value, vlen);
    return e;
}

static void entry_free(Entry *e) {
    Py_XDECREF(e->value_obj);
    PyMem_Free(e);
}

/* --- growable byte buffers -------------------------------------------------------------------- */

typedef struct {
    unsigned char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t n) {
    if (n <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < n) cap *= 2;
    unsigned char *d = PyMem_Realloc(b->data, cap);
    if (d == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static int buf_add(Buf *b, const unsigned char *p, Py_ssize_t n) {
    if (n <= 0) return 0;
    if (buf_reserve(b, b->len + n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_reset(Buf *b) {
    b->len = 0;
    if (b->cap > 16 * 1024) { /* a large block passed: give its memory back */
        PyMem_Free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

/* --- HPACK (http2.HpackReader) ---------------------------------------------------------------- */

typedef struct {
    Entry *slot[SLOTS]; /* entries[j] = slot[(head + j) % SLOTS], newest first */
    int head, count;
    int64_t size, max_size, limit; /* limit < 0: unknown (None) */
    int complete;
} Hpack;

static void hp_init(Hpack *h, int complete) {
    h->head = h->count = 0;
    h->size = 0;
    h->max_size = DEFAULT_TABLE;
    h->limit = complete ? DEFAULT_TABLE : -1;
    h->complete = complete;
}

static void hp_clear(Hpack *h) {
    for (int j = 0; j < h->count; j++) entry_free(h->slot[(h->head + j) % SLOTS]);
    h->head = h->count = 0;
    h->size = 0;
}

static void hp_lose(Hpack *h) {
    hp_clear(h);
    h->complete = 0;
}

static void hp_evict(Hpack *h) {
    int64_t cap = h->max_size < MAX_TABLE ? h->max_size : MAX_TABLE;
    while (h->size > cap && h->count) {
        Entry *e = h->slot[(h->head + h->count - 1) % SLOTS];
        h->size -= e->size;
        h->count--;
        entry_free(e);
    }
    if (h->max_size > MAX_TABLE && h->count && h->size + 32 > MAX_TABLE) h->complete = 0;
    if (!h->complete && h->size + 32 > h->max_size && h->max_size <= MAX_TABLE) h->complete = 1;
}

static int hp_insert(Hpack *h, Entry *e) {
    h->head = (h->head + SLOTS - 1) % SLOTS;
    h->slot[h->head] = e;
    h->count++;
    h->size += e->size;
    hp_evict(h);
    return 0;
}

/* 0: *out is the entry (NULL: an entry this reader never saw); 1: HPACK error */
static int hp_lookup(Hpack *h, int64_t index, Entry **out) {
    if (index == 0) return 1;
    if (index <= N_STATIC) {
        *out = static_entries[index - 1];
        return 0;
    }
    int64_t j = index - N_STATIC - 1;
    if (j < h->count) {
        *out = h->slot[(h->head + j) % SLOTS];
        return 0;
    }
    if (h->complete) return 1;
    *out = NULL;
    return 0;
}

/* hpack.hpack.decode_integer: 0 and *value, *used; 1: an error */
static int dec_int(const unsigned char *p, Py_ssize_t avail, int prefix_bits, int64_t *value, Py_ssize_t *used) {
    if (avail < 1) return 1;
    int64_t max = (1 << prefix_bits) - 1;
    int64_t number = p[0] & max;
    Py_ssize_t index = 1;
    int shift = 0;
    if (number == max) {
        for (;;) {
            if (index >= avail) return 1;
            int64_t next = p[index++];
            if (next >= 128) {
                number += (next - 128) << shift;
            } else {
                number += next << shift;
                break;
            }
            shift += 7;
            if (index > VARINT_MAX_LENGTH) return 1;
        }
    }
    *value = number;
    *used = index;
    return 0;
}

/* hpack.huffman_table.decode_huffman: the decoded length, -1 for an invalid string */
static Py_ssize_t huff_decode(const unsigned char *s, Py_ssize_t n, unsigned char *out) {
    if (n == 0) return 0;
    unsigned state = 0, flags = 0;
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned idx = state * 16 + (s[i] >> 4);
        state = huff_next[idx];
        flags = huff_flags[idx];
        if (flags & HUFFMAN_FAIL) return -1;
        if (flags & HUFFMAN_EMIT_SYMBOL) out[o++] = huff_sym[idx];
        idx = state * 16 + (s[i] & 0x0F);
        state = huff_next[idx];
        flags = huff_flags[idx];
        if (flags & HUFFMAN_FAIL) return -1;
        if (flags & HUFFMAN_EMIT_SYMBOL) out[o++] = huff_sym[idx];
    }
    return (flags & HUFFMAN_COMPLETE) ? o : -1;
}

/* HpackReader._string: 0 (with *ptr, *len; *len = 0 when !want); 1: an HPACK error */
static int hp_string(const unsigned char *blk, Py_ssize_t n, Py_ssize_t *pos, int want, unsigned char *scratch,
                     const unsigned char **ptr, Py_ssize_t *len) {
    Py_ssize_t p = *pos;
    if (p >= n) return 1;
    unsigned char b = blk[p];
    int64_t length = b & 0x7F;
    if (length < 0x7F) {
        p += 1;
    } else {
        Py_ssize_t used;
        if (dec_int(blk + p, n - p, 7, &length, &used)) return 1;
        p += used;
    }
    if (length > n - p) return 1;
    Py_ssize_t end = p + (Py_ssize_t)length;
    *pos = end;
    if (!want) {
        *ptr = blk;
        *len = 0;
        return 0;
    }
    if (!(b & 0x80)) {
        *ptr = blk + p;
        *len = end - p;
        return 0;
    }
    Py_ssize_t o = huff_decode(blk + p, end - p, scratch);
    if (o < 0) return 1;
    *ptr = scratch;
    *len = o;
    return 0;
}

typedef struct {
    PyObject *v[N_WANTED]; /* the last value of each wanted field kept (new references) or NULL */
} Got;

static void got_clear(Got *g) {
    for (int i = 0; i < N_WANTED; i++) Py_CLEAR(g->v[i]);
}

/* HpackReader.decode(block) reduced to what rows use: the wanted fields (the last of each name,
 * within MAX_HEADER_LIST) and whether a field was unknown. 0: decoded; 1: an HPACK error;
 * -1: a Python error. */
static int hp_decode(Hpack *h, const unsigned char *blk, Py_ssize_t n, Buf *scratch, Got *got, int *unknown) {
    Py_ssize_t pos = 0;
    int64_t kept = 0;
    *unknown = 0;
    /* Huffman output is at most 8/5 of its input: room for a name and a value of this block */
    if (buf_reserve(scratch, 4 * n + 64) < 0) return -1;
    unsigned char *name_buf = scratch->data, *value_buf = scratch->data + 2 * n + 32;
    while (pos < n) {
        unsigned char b = blk[pos];
        int wid;
        Py_ssize_t nlen, vlen;
        PyObject *value_obj = NULL; /* borrowed */
        const unsigned char *vptr = NULL;
        if (b & 0x80) { /* indexed field */
            int64_t index = b & 0x7F;
            if (index < 0x7F) {
                pos += 1;
            } else {
                Py_ssize_t used;
                if (dec_int(blk + pos, n - pos, 7, &index, &used)) return 1;
                pos += used;
            }
            Entry *e;
            if (hp_lookup(h, index, &e)) return 1;
            if (e == NULL || !e->name_known) {
                *unknown = 1;
                continue;
            }
            nlen = e->nlen;
            vlen = e->vlen;
            wid = e->wid;
            if (wid >= 0 && kept + nlen + vlen <= MAX_HEADER_LIST && (value_obj = entry_value(e)) == NULL) return -1;
        } else if ((b & 0xE0) == 0x20) { /* dynamic table size update */
            int64_t size;
            Py_ssize_t used;
            if (dec_int(blk + pos, n - pos, 5, &size, &used)) return 1;
            pos += used;
            if (h->limit >= 0 && size > h->limit) return 1;
            h->max_size = size;
            if (size == 0) {
                hp_clear(h);
                h->complete = 1;
            }
            hp_evict(h);
            continue;
        } else {
            int indexing = (b & 0xC0) == 0x40;
            int64_t mask = indexing ? 0x3F : 0x0F;
            int64_t index = b & mask;
            if (index < mask) {
                pos += 1;
            } else {
                Py_ssize_t used;
                if (dec_int(blk + pos, n - pos, indexing ? 6 : 4, &index, &used)) return 1;
                pos += used;
            }
            int name_known;
            const unsigned char *nptr;
            if (index) {
                Entry *e;
                if (hp_lookup(h, index, &e)) return 1;
                name_known = e != NULL && e->name_known;
                nptr = name_known ? (const unsigned char *)e->data : NULL;
                nlen = name_known ? e->nlen : 0;
                wid = name_known ? e->wid : -1;
            } else {
                if (hp_string(blk, n, &pos, 1, name_buf, &nptr, &nlen)) return 1;
                name_known = 1;
                wid = wanted_id((const char *)nptr, nlen);
            }
            int want = indexing || !name_known || wid >= 0;
            if (hp_string(blk, n, &pos, want, value_buf, &vptr, &vlen)) return 1;
            if (indexing) {
                /* the name is copied before eviction can free the entry it came from */
                Entry *e = entry_new(name_known, (const char *)nptr, nlen, (const char *)vptr, vlen, wid);
                if (e == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
                hp_insert(h, e);
            }
            if (!name_known) {
                *unknown = 1;
                continue;
            }
        }
        kept += nlen + vlen;
        if (kept <= MAX_HEADER_LIST && wid >= 0) {
            PyObject *v = value_obj ? Py_NewRef(value_obj) : PyUnicode_DecodeLatin1((const char *)vptr, vlen, NULL);
            if (v == NULL) return -1;
            Py_XSETREF(got->v[wid], v);
        }
    }
    return 0;
}

/* --- streams ---------------------------------------------------------------------------------- */

enum { R_METHOD, R_PATH, R_AUTHORITY, R_HOST, R_CTYPE, R_UA, R_TRACEPARENT, R_TRACESTATE, N_REQ };
static const int REQ_WANTED[N_REQ] = {W_METHOD, W_PATH, W_AUTHORITY, W_HOST, W_CTYPE, W_UA, W_TRACEPARENT, W_TRACESTATE};

typedef struct Stream {
    struct Stream *prev, *next;   /* open streams, in the order they opened */
    struct Stream *lprev, *lnext; /* lingering streams (reset by one side), in the order of their resets */
    int lingering;
    int64_t sid, ts_request, ts_response; /* ts_response < 0 with !has_response */
    int has_response;
    PyObject *req[N_REQ]; /* the request's first header block (str or NULL) */
    PyObject *resp_ctype;
    int64_t status;
    int has_status;
    int64_t req_bytes, resp_bytes; /* -1: unknown */
    int req_end, resp_end, partial;
    PyObject *error; /* str or NULL */
    int64_t grpc_status;
    int has_grpc_status;
    PyObject *grpc_message;
    int req_seen, resp_seen;
    int64_t reset_ts;
    int has_reset;
} Stream;

static void stream_free(Stream *st) {
    for (int i = 0; i < N_REQ; i++) Py_XDECREF(st->req[i]);
    Py_XDECREF(st->resp_ctype);
    Py_XDECREF(st->error);
    Py_XDECREF(st->grpc_message);
    PyMem_Free(st);
}

/* --- a direction and the connection ----------------------------------------------------------- */

typedef struct {
    int from_client;
    Hpack hp;
    unsigned char hdr[24]; /* the preface, or a frame header split across segments */
    int hdr_len;
    int ftype, flags; /* ftype -1: between frames */
    int64_t sid, remaining, flen, frame_ts;
    int keep, lost_payload;
    Buf payload;
    int has_block, block_lost, block_flags;
    Buf block;
    int64_t block_sid, block_ts;
    int preface, synced;
} Dir;

typedef struct {
    PyObject_HEAD
    Dir dirs[2];
    Stream *first, *last, *lfirst, *llast;
    int nstreams, nlingering;
    int64_t max_sid;
    int closed, redact, allow, err;
    PyObject *stats, *done;
    Buf scratch;
} H2;

static const unsigned char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; /* 24 bytes */

static void count(H2 *c, PyObject *name) {
    if (c->err || c->stats == Py_None) return;
    PyObject *r = PyObject_CallMethodOneArg(c->stats, s_add, name);
    if (r == NULL) c->err = 1;
    Py_XDECREF(r);
}

static Stream *find(H2 *c, int64_t sid) {
    for (Stream *st = c->last; st; st = st->prev)
        if (st->sid == sid) return st;
    return NULL;
}

static PyObject *int_or_none(int known, int64_t v) { return known ? PyLong_FromLongLong(v) : Py_NewRef(Py_None); }
static PyObject *obj_or_none(PyObject *o) { return Py_NewRef(o ? o : Py_None); }

static const char *latin1(PyObject *s, Py_ssize_t *n) { /* every str here was made from latin-1 bytes */
    *n = PyUnicode_GET_LENGTH(s);
    return PyUnicode_KIND(s) == PyUnicode_1BYTE_KIND ? (const char *)PyUnicode_1BYTE_DATA(s) : NULL;
}

static PyObject *redacted(PyObject *path, int redact) { /* http_pairing.redact_query */
    Py_ssize_t n;
    const char *t = latin1(path, &n);
    const char *q = (redact && t) ? memchr(t, '?', n) : NULL;
    if (q == NULL) return Py_NewRef(path);
    char *out = PyMem_Malloc(n + 1);
    if (out == NULL) return PyErr_NoMemory();
    Py_ssize_t o = q - t + 1;
    memcpy(out, t, o);
    int in_value = 0;
    for (Py_ssize_t i = o; i < n; i++) {
        char ch = t[i];
        if (ch == '&') in_value = 0;
        else if (in_value) continue;
        else if (ch == '=') in_value = 1;
        out[o++] = ch;
    }
    PyObject *r = PyUnicode_DecodeLatin1(out, o, NULL);
    PyMem_Free(out);
    return r;
}

/* H2Connection._row */
static PyObject *make_row(H2 *c, Stream *st) {
    static const char grpc_prefix[] = "application/grpc";
    PyObject *path = st->req[R_PATH], *ctype_req = st->req[R_CTYPE], *ctype = st->resp_ctype;
    PyObject *service = NULL, *method = NULL, *message = NULL, *rpath = NULL, *host = NULL, *error = NULL;
    int grpc = 0;
    PyObject *sides[2] = {ctype_req, ctype};
    for (int i = 0; i < 2; i++) {
        Py_ssize_t n;
        const char *t = sides[i] ? latin1(sides[i], &n) : NULL;
        if (t && n >= 16 && memcmp(t, grpc_prefix, 16) == 0) grpc = 1;
    }
    if (grpc && path) {
        Py_ssize_t n;
        const char *t = latin1(path, &n);
        if (t && n > 0 && t[0] == '/') {
            Py_ssize_t slashes = 0, second = -1;
            for (Py_ssize_t i = 0; i < n; i++)
                if (t[i] == '/' && ++slashes == 2) second = i;
            if (slashes == 2) {
                service = PyUnicode_DecodeLatin1(t + 1, second - 1, NULL);
                method = PyUnicode_DecodeLatin1(t + second + 1, n - second - 1, NULL);
                if (service == NULL || method == NULL) goto fail;
            }
        }
    }
    if (st->partial) count(c, c_partial);
    if (c->err) goto fail;
    if (st->grpc_message && grpc && (c->allow & A_MESSAGE)) { /* gRPC percent-encodes it */
        PyObject *args[2] = {st->grpc_message, PyUnicode_FromString("replace")};
        if (args[1] == NULL) goto fail;
        message = PyObject_Vectorcall(unquote_fn, args, 1, s_unquote_kw);
        Py_DECREF(args[1]);
        if (message == NULL) goto fail;
    }
    if (path && (rpath = redacted(path, c->redact)) == NULL) goto fail;
    if (c->allow & A_HOST) {
        PyObject *a = st->req[R_AUTHORITY];
        host = (a && PyUnicode_GET_LENGTH(a)) ? a : st->req[R_HOST];
    }
    error = st->error;
    PyObject *row = PyTuple_New(23);
    if (row == NULL) goto fail;
    int64_t lat = st->ts_response - st->ts_request;
    PyObject *items[23] = { /* http_pairing.EXCHANGE_FIELDS + http_rows.H2_FIELDS */
        PyLong_FromLongLong(st->ts_request),
        int_or_none(st->has_response, st->ts_response),
        int_or_none(st->has_response, lat),
        Py_NewRef(s_http2),
        obj_or_none(st->req[R_METHOD]),
        obj_or_none(rpath),
        int_or_none(st->has_status, st->status),
        int_or_none((st->req_end || error) && st->req_bytes >= 0, st->req_bytes),
        int_or_none((st->resp_end || error) && st->resp_bytes >= 0, st->resp_bytes),
        obj_or_none(host),
        obj_or_none((c->allow & A_TRACE) ? st->req[R_TRACEPARENT] : NULL),
        obj_or_none((c->allow & A_AGENT) ? st->req[R_UA] : NULL),
        obj_or_none((c->allow & A_CTYPE) ? ctype : NULL),
        obj_or_none((c->allow & A_STATE) ? st->req[R_TRACESTATE] : NULL),
        Py_NewRef(Py_None), /* request_seq, response_seq: not derived for HTTP/2 */
        Py_NewRef(Py_None),
        PyLong_FromLongLong(st->sid),
        obj_or_none(service),
        obj_or_none(method),
        int_or_none(grpc && st->has_grpc_status, st->grpc_status),
        obj_or_none(message),
        obj_or_none(error),
        PyBool_FromLong(st->partial),
    };
    int bad = 0;
    for (int i = 0; i < 23; i++) {
        if (items[i] == NULL) bad = 1;
        PyTuple_SET_ITEM(row, i, items[i] ? items[i] : Py_NewRef(Py_None));
    }
    Py_XDECREF(service);
    Py_XDECREF(method);
    Py_XDECREF(message);
    Py_XDECREF(rpath);
    if (bad) {
        Py_DECREF(row);
        return NULL;
    }
    return row;
fail:
    Py_XDECREF(service);
    Py_XDECREF(method);
    Py_XDECREF(message);
    Py_XDECREF(rpath);
    return NULL;
}

static void linger_unlink(H2 *c, Stream *st) {
    if (!st->lingering) return;
    if (st->lprev) st->lprev->lnext = st->lnext;
    else c->lfirst = st->lnext;
    if (st->lnext) st->lnext->lprev = st->lprev;
    else c->llast = st->lprev;
    st->lingering = 0;
    c->nlingering--;
}

/* H2Connection._finish: the stream's row into done, the stream freed */
static void finish(H2 *c, Stream *st) {
    linger_unlink(c, st);
    if (st->prev) st->prev->next = st->next;
    else c->first = st->next;
    if (st->next) st->next->prev = st->prev;
    else c->last = st->prev;
    c->nstreams--;
    if (!c->err) {
        PyObject *row = make_row(c, st);
        if (row == NULL || PyList_Append(c->done, row) < 0) c->err = 1;
        Py_XDECREF(row);
    }
    stream_free(st);
}

static Stream *open_stream(H2 *c, int64_t sid, int64_t ts) {
    Stream *st = PyMem_Calloc(1, sizeof(Stream));
    if (st == NULL) {
        PyErr_NoMemory();
        c->err = 1;
        return NULL;
    }
    st->sid = sid;
    st->ts_request = ts;
    st->prev = c->last;
    if (c->last) c->last->next = st;
    else c->first = st;
    c->last = st;
    c->nstreams++;
    if (sid > c->max_sid) c->max_sid = sid;
    if (c->nstreams > MAX_STREAMS) {
        count(c, c_evicted);
        finish(c, c->first);
    }
    return st;
}

static void count_bytes(Stream *st, int from_client, int64_t size) {
    int64_t *b = from_client ? &st->req_bytes : &st->resp_bytes;
    if (*b >= 0) *b += size;
}

static void end(H2 *c, Stream *st, int from_client) {
    if (from_client) st->req_end = 1;
    else st->resp_end = 1;
    if (st->req_end && st->resp_end) finish(c, st);
}

static void desync(H2 *c, Dir *d) {
    count(c, c_desync);
    d->synced = 0;
    d->preface = 0;
    d->hdr_len = 0;
    d->ftype = -1;
    d->has_block = 0;
    buf_reset(&d->block);
    hp_lose(&d->hp);
    for (Stream *st = c->first; st; st = st->next) {
        if (d->from_client) st->req_bytes = -1;
        else st->resp_bytes = -1;
    }
}

static int plausible(int ftype, uint32_t sid, int64_t length) {
    if (ftype == DATA || ftype == HEADERS || ftype == PRIORITY || ftype == RST_STREAM || ftype == CONTINUATION || ftype == PUSH_PROMISE) {
        if (sid == 0) return 0;
    } else if (sid != 0 && (ftype == SETTINGS || ftype == PING || ftype == GOAWAY)) {
        return 0;
    }
    int64_t fixed = ftype == PRIORITY ? 5 : ftype == RST_STREAM ? 4 : ftype == PING ? 8 : ftype == WINDOW_UPDATE ? 4 : -1;
    if (fixed >= 0 && length != fixed) return 0;
    return !(ftype == SETTINGS && length % 6);
}

/* H2Connection._resync: an offset or -1 */
static Py_ssize_t resync(const unsigned char *d, Py_ssize_t n) {
    Py_ssize_t lim = n - 8 > 0 ? n - 8 : 0;
    if (lim > RESYNC_SCAN) lim = RESYNC_SCAN;
    for (Py_ssize_t start = 0; start < lim; start++) {
        Py_ssize_t pos = start;
        int frames = 0, broke = 0;
        while (pos + 9 <= n) {
            int64_t length = (int64_t)d[pos] << 16 | d[pos + 1] << 8 | d[pos + 2];
            int ftype = d[pos + 3];
            uint32_t sid = (uint32_t)d[pos + 5] << 24 | (uint32_t)d[pos + 6] << 16 | (uint32_t)d[pos + 7] << 8 | d[pos + 8];
            if (ftype > CONTINUATION || (sid & 0x80000000u) || length > MAX_PLAUSIBLE_FRAME || !plausible(ftype, sid, length)) {
                broke = 1;
                break;
            }
            frames++;
            pos += 9 + (Py_ssize_t)length;
        }
        if (!broke && frames) return start;
    }
    return -1;
}

/* H2Connection._block_done */
static void block_done(H2 *c, Dir *d) {
    d->has_block = 0;
    int64_t sid = d->block_sid, ts = d->block_ts;
    int hflags = d->block_flags;
    Got got = {{NULL}};
    int partial = 0;
    if (d->block_lost) {
        hp_lose(&d->hp);
        partial = 1;
    } else {
        int r = hp_decode(&d->hp, d->block.data, d->block.len, &c->scratch, &got, &partial);
        buf_reset(&c->scratch);
        if (r < 0) {
            c->err = 1;
            got_clear(&got);
            return;
        }
        if (r > 0) {
            count(c, c_malformed);
            hp_lose(&d->hp);
            got_clear(&got);
            partial = 1;
        }
    }
    buf_reset(&d->block);
    if (hflags < 0) goto out; /* PUSH_PROMISE: decoded for the table's sake only */
    Stream *st = find(c, sid);
    if (st == NULL) {
        if (!d->from_client && (sid & 1) && sid > c->max_sid) count(c, c_orphan);
        goto out;
    }
    st->partial = st->partial || partial;
    if (d->from_client) {
        if (!st->req_seen) {
            st->req_seen = 1;
            for (int i = 0; i < N_REQ; i++) {
                Py_XSETREF(st->req[i], got.v[REQ_WANTED[i]]);
                got.v[REQ_WANTED[i]] = NULL;
            }
        }
    } else {
        PyObject *status = got.v[W_STATUS];
        int has_code = 0;
        int64_t code = 0;
        if (status) { /* http2._number: 1 to 18 ASCII digits */
            Py_ssize_t n;
            const char *t = latin1(status, &n);
            if (t && n > 0 && n <= 18) {
                has_code = 1;
                for (Py_ssize_t i = 0; i < n; i++) {
                    if (t[i] < '0' || t[i] > '9') {
                        has_code = 0;
                        break;
                    }
                    code = code * 10 + (t[i] - '0');
                }
            }
        }
        if (!st->resp_seen || (st->has_status && st->status >= 100 && st->status < 200 && has_code)) {
            st->resp_seen = 1;
            Py_XSETREF(st->resp_ctype, got.v[W_CTYPE]);
            got.v[W_CTYPE] = NULL;
            st->has_status = has_code;
            st->status = code;
            if (!has_code || code >= 200) {
                st->has_response = 1;
                st->ts_response = ts;
            }
        }
        PyObject *gs = got.v[W_GRPC_STATUS];
        if (gs) { /* trailers, or a Trailers-Only response */
            Py_ssize_t n;
            const char *t = latin1(gs, &n);
            int ok = t && n > 0 && n <= 18;
            int64_t v = 0;
            for (Py_ssize_t i = 0; ok && i < n; i++) {
                if (t[i] < '0' || t[i] > '9') ok = 0;
                else v = v * 10 + (t[i] - '0');
            }
            if (ok) {
                st->has_grpc_status = 1;
                st->grpc_status = v;
            } else {
                count(c, c_malformed);
            }
            Py_XSETREF(st->grpc_message, got.v[W_GRPC_MESSAGE]);
            got.v[W_GRPC_MESSAGE] = NULL;
        }
    }
    got_clear(&got);
    if (hflags & END_STREAM) end(c, st, d->from_client);
    return;
out:
    got_clear(&got);
}

static void frame_bytes(H2 *c, Dir *d, int64_t sid, int ftype) {
    Stream *st = find(c, sid);
    if (st == NULL && d->from_client && ftype == HEADERS) st = open_stream(c, sid, d->block_ts);
    if (st != NULL && ftype != PUSH_PROMISE) count_bytes(st, d->from_client, 9 + d->flen);
}

/* H2Connection._frame: a frame's payload has passed (collected when d->keep) */
static void frame(H2 *c, Dir *d) {
    int ftype = d->ftype, flags = d->flags;
    int64_t sid = d->sid;
    d->ftype = -1;
    int have = d->keep && !d->lost_payload; /* the payload is known */
    Py_ssize_t length = d->payload.len;
    const unsigned char *p = d->payload.data;
    if (ftype == DATA) {
        Stream *st = find(c, sid);
        if (st != NULL) {
            count_bytes(st, d->from_client, 9 + d->flen);
            if (flags & END_STREAM) end(c, st, d->from_client);
        }
        return;
    }
    if (ftype == HEADERS || ftype == PUSH_PROMISE) {
        if (d->has_block) {
            count(c, c_malformed); /* a new block before the last one ended */
            hp_lose(&d->hp);
        }
        int ok = have;
        const unsigned char *body = p;
        Py_ssize_t blen = length;
        if (ok) {
            int64_t pad = 0;
            int bad = 0;
            if (flags & PADDED) {
                if (blen == 0) bad = 1;
                else {
                    pad = body[0];
                    body++;
                    blen--;
                }
            }
            if (!bad) {
                Py_ssize_t skip = ftype == PUSH_PROMISE ? 4 : (flags & PRIORITY_FLAG) ? 5 : 0;
                if (skip > blen) skip = blen;
                body += skip;
                blen -= skip;
                if (pad > blen) bad = 1;
                else blen -= pad;
            }
            if (bad) {
                count(c, c_malformed);
                ok = 0;
            }
        }
        d->block.len = 0;
        if (ok && buf_add(&d->block, body, blen) < 0) c->err = 1;
        d->has_block = 1;
        d->block_lost = !ok;
        d->block_sid = sid;
        d->block_ts = d->frame_ts;
        d->block_flags = ftype == HEADERS ? flags : -1;
        frame_bytes(c, d, sid, ftype);
        if (flags & END_HEADERS) block_done(c, d);
        return;
    }
    if (ftype == CONTINUATION) {
        if (!d->has_block || sid != d->block_sid) {
            count(c, c_malformed);
            return;
        }
        frame_bytes(c, d, sid, ftype);
        if (!have) {
            d->block_lost = 1;
        } else if (!d->block_lost) {
            if (d->block.len + length > MAX_HEADER_BLOCK) {
                count(c, c_too_large);
                d->block_lost = 1;
                d->block.len = 0;
            } else if (buf_add(&d->block, p, length) < 0) {
                c->err = 1;
            }
        }
        if (flags & END_HEADERS) block_done(c, d);
        return;
    }
    if (ftype == RST_STREAM) {
        Stream *st = find(c, sid);
        if (st != NULL && have && length == 4) {
            uint32_t code = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
            if (st->error == NULL) {
                st->error = code < N_ERRORS ? Py_NewRef(error_str[code]) : PyUnicode_FromFormat("0x%x", (unsigned)code);
                if (st->error == NULL) c->err = 1;
            }
            /* the peer often still sends its last frames (gRPC: trailers after a client's cancel) */
            if (!st->has_reset && !(d->from_client ? st->resp_end : st->req_end)) {
                st->has_reset = 1;
                st->reset_ts = d->frame_ts;
                st->lingering = 1;
                st->lnext = NULL;
                st->lprev = c->llast;
                if (c->llast) c->llast->lnext = st;
                else c->lfirst = st;
                c->llast = st;
                c->nlingering++;
            }
            end(c, st, d->from_client);
        } else if (have && length != 4) {
            count(c, c_malformed);
        }
        return;
    }
    if (ftype == SETTINGS && have && !(flags & 1)) {
        if (length % 6) {
            count(c, c_malformed);
            return;
        }
        for (Py_ssize_t i = 0; i < length; i += 6) {
            unsigned ident = (unsigned)p[i] << 8 | p[i + 1];
            uint32_t value = (uint32_t)p[i + 2] << 24 | (uint32_t)p[i + 3] << 16 | (uint32_t)p[i + 4] << 8 | p[i + 5];
            if (ident == 1) c->dirs[!d->from_client].hp.limit = value; /* SETTINGS_HEADER_TABLE_SIZE */
        }
    }
}

static void start_frame(H2 *c, Dir *d, const unsigned char *h, int64_t ts) {
    int64_t length = (int64_t)h[0] << 16 | h[1] << 8 | h[2];
    int ftype = h[3];
    d->ftype = ftype;
    d->flags = h[4];
    d->sid = ((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8]) & 0x7FFFFFFFu;
    d->remaining = d->flen = length;
    d->frame_ts = ts;
    int block_type = ftype == HEADERS || ftype == CONTINUATION || ftype == PUSH_PROMISE;
    d->keep = (block_type || ftype == RST_STREAM || ftype == SETTINGS) && length <= MAX_HEADER_BLOCK;
    buf_reset(&d->payload);
    d->lost_payload = length > MAX_HEADER_BLOCK && block_type;
    if (d->lost_payload) count(c, c_too_large);
    if (length == 0) frame(c, d);
}

/* H2Connection._bytes */
static void feed_bytes(H2 *c, Dir *d, int64_t ts, const unsigned char *data, Py_ssize_t n) {
    Py_ssize_t pos = 0;
    if (d->preface) {
        Py_ssize_t need = 24 - d->hdr_len, got = n < need ? n : need;
        memcpy(d->hdr + d->hdr_len, data, got);
        d->hdr_len += (int)got;
        pos = got;
        if (d->hdr_len < 24 && memcmp(PREFACE, d->hdr, d->hdr_len) == 0) return;
        d->preface = 0;
        if (d->hdr_len != 24 || memcmp(PREFACE, d->hdr, 24) != 0) {
            count(c, c_malformed);
            desync(c, d);
            return;
        }
        d->hdr_len = 0;
    }
    while (pos < n && !c->err) {
        if (d->ftype >= 0) {
            Py_ssize_t take = d->remaining < n - pos ? (Py_ssize_t)d->remaining : n - pos;
            if (d->keep && buf_add(&d->payload, data + pos, take) < 0) {
                c->err = 1;
                return;
            }
            pos += take;
            d->remaining -= take;
            if (d->remaining == 0) frame(c, d);
            continue;
        }
        if (d->hdr_len || n - pos < 9) {
            Py_ssize_t need = 9 - d->hdr_len, got = n - pos < need ? n - pos : need;
            memcpy(d->hdr + d->hdr_len, data + pos, got);
            d->hdr_len += (int)got;
            pos += got;
            if (d->hdr_len < 9) return;
            d->hdr_len = 0;
            start_frame(c, d, d->hdr, ts);
        } else {
            start_frame(c, d, data + pos, ts);
            pos += 9;
        }
    }
}

/* H2Connection._gap */
static void gap(H2 *c, Dir *d, int64_t g) {
    if (d->preface || !d->synced) {
        desync(c, d);
        return;
    }
    while (g > 0 && !c->err) {
        if (d->ftype < 0) {
            desync(c, d);
            return;
        }
        int64_t take = d->remaining < g ? d->remaining : g;
        g -= take;
        d->remaining -= take;
        if (d->keep) d->lost_payload = 1;
        if (d->remaining == 0) frame(c, d);
    }
}

static PyObject *take(H2 *c) {
    if (c->err) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "_http2: an earlier error left this connection unusable");
        return NULL;
    }
    if (PyList_GET_SIZE(c->done) == 0) return PyList_New(0);
    PyObject *rows = c->done;
    c->done = PyList_New(0);
    if (c->done == NULL) {
        c->done = rows;
        c->err = 1;
        return NULL;
    }
    return rows;
}

/* feed_tuples(ts_ns, data, from_client, length=None) -> list of row tuples */
static PyObject *H2_feed(H2 *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "feed_tuples(ts_ns, data, from_client, length=None)");
        return NULL;
    }
    if (c->err) return take(c);
    int64_t ts = PyLong_AsLongLong(args[0]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    int from_client = PyObject_IsTrue(args[2]);
    if (from_client < 0) return NULL;
    int has_length = nargs == 4 && args[3] != Py_None;
    int64_t length = 0;
    if (has_length && (length = PyLong_AsLongLong(args[3])) == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *data = view.buf;
    Py_ssize_t n = view.len;
    Dir *d = &c->dirs[from_client];
    if (!d->synced) {
        Py_ssize_t start = resync(data, n);
        if (start < 0) {
            PyBuffer_Release(&view);
            return take(c);
        }
        d->synced = 1;
        data += start;
        n -= start;
        length -= start;
    }
    feed_bytes(c, d, ts, data, n);
    PyBuffer_Release(&view);
    if (c->lfirst && !c->err) {
        Stream *next;
        for (Stream *st = c->lfirst; st && !c->err; st = next) {
            next = st->lnext;
            if (ts - st->reset_ts > RESET_LINGER_NS) finish(c, st);
        }
    }
    if (has_length && length - n > 0 && !c->err) gap(c, d, length - n);
    return take(c);
}

/* close_tuples(ts_ns) -> every stream still open as a row */
static PyObject *H2_close(H2 *c, PyObject *arg) {
    if (c->closed) return PyList_New(0);
    c->closed = 1;
    while (c->first && !c->err) finish(c, c->first);
    return take(c);
}

static PyObject *H2_body_remaining(H2 *c, PyObject *arg) { return PyLong_FromLong(0); }

/* _state() -> (open streams, lingering, ((table bytes, entries, payload, block) per direction)): for the bound tests */
static PyObject *H2_state(H2 *c, PyObject *unused) {
    return Py_BuildValue("(ii((Linn)(Linn)))", c->nstreams, c->nlingering, (long long)c->dirs[0].hp.size, c->dirs[0].hp.count,
                         c->dirs[0].payload.len, c->dirs[0].block.len, (long long)c->dirs[1].hp.size, c->dirs[1].hp.count,
                         c->dirs[1].payload.len, c->dirs[1].block.len);
}

static PyMethodDef H2_methods[] = {
    {"feed_tuples", (PyCFunction)(void (*)(void))H2_feed, METH_FASTCALL, "One segment of one direction, in stream order."},
    {"close_tuples", (PyCFunction)H2_close, METH_O, "The connection ended: every stream still open becomes a row."},
    {"body_remaining", (PyCFunction)H2_body_remaining, METH_O, "Always 0: DATA frames are passed by length."},
    {"_state", (PyCFunction)H2_state, METH_NOARGS, "Sizes of the bounded state (tests)."},
    {NULL},
};

static void dir_init(Dir *d, int from_client, int at_start) {
    memset(d, 0, sizeof(*d));
    d->from_client = from_client;
    hp_init(&d->hp, at_start);
    d->ftype = -1;
    d->preface = from_client && at_start;
    d->synced = 1;
}

static int H2_init(H2 *c, PyObject *args, PyObject *kw) {
    static char *names[] = {"stats", "redact", "allow", "at_start", NULL};
    PyObject *stats = Py_None;
    int redact = 1, allow = 63, at_start = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Opip", names, &stats, &redact, &allow, &at_start)) return -1;
    Py_XSETREF(c->stats, Py_NewRef(stats));
    c->redact = redact;
    c->allow = allow;
    for (int i = 0; i < 2; i++) {
        hp_clear(&c->dirs[i].hp);
        PyMem_Free(c->dirs[i].payload.data);
        PyMem_Free(c->dirs[i].block.data);
        dir_init(&c->dirs[i], i, at_start);
    }
    count(c, c_connections);
    if (!at_start) count(c, c_mid);
    if (c->err) return -1;
    return 0;
}

static void H2_dealloc(H2 *c) {
    while (c->first) {
        Stream *st = c->first;
        c->first = st->next;
        stream_free(st);
    }
    for (int i = 0; i < 2; i++) {
        hp_clear(&c->dirs[i].hp);
        PyMem_Free(c->dirs[i].payload.data);
        PyMem_Free(c->dirs[i].block.data);
    }
    PyMem_Free(c->scratch.data);
    Py_XDECREF(c->stats);
    Py_XDECREF(c->done);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *H2_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    H2 *c = (H2 *)type->tp_alloc(type, 0); /* zeroed */
    if (c == NULL) return NULL;
    c->stats = Py_NewRef(Py_None);
    c->done = PyList_New(0);
    if (c->done == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    c->redact = 1;
    c->allow = 63;
    dir_init(&c->dirs[0], 0, 1);
    dir_init(&c->dirs[1], 1, 1);
    return (PyObject *)c;
}

static PyTypeObject H2Type = {
    .ob_base = PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowtape.capture.decode._http2.H2Connection",
    .tp_basicsize = sizeof(H2),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Both directions of one HTTP/2 connection (compiled twin of http2.H2Connection).\n"
              "H2Connection(stats, redact=True, allow=63, at_start=True); allow: http2.allow_mask(redaction).",
    .tp_new = H2_new,
    .tp_init = (initproc)H2_init,
    .tp_dealloc = (destructor)H2_dealloc,
    .tp_methods = H2_methods,
};

/* --- module ----------------------------------------------------------------------------------- */

/* The Huffman state machine and the static table, from the hpack package the reference uses. */
static int load_hpack(void) {
    PyObject *mod = PyImport_ImportModule("hpack.huffman_table");
    if (mod == NULL) return -1;
    PyObject *table = PyObject_GetAttrString(mod, "HUFFMAN_TABLE");
    Py_DECREF(mod);
    if (table == NULL) return -1;
    int ok = PyList_Check(table) && PyList_GET_SIZE(table) == 4096;
    for (Py_ssize_t i = 0; ok && i < 4096; i++) {
        long v[3];
        PyObject *t = PyList_GET_ITEM(table, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            ok = 0;
            break;
        }
        for (int k = 0; k < 3; k++) v[k] = PyLong_AsLong(PyTuple_GET_ITEM(t, k));
        if (PyErr_Occurred() || v[0] < 0 || v[0] > 255 || v[1] < 0 || v[1] > 7 || v[2] < 0 || v[2] > 255) ok = 0;
        huff_next[i] = (uint8_t)v[0];
        huff_flags[i] = (uint8_t)v[1];
        huff_sym[i] = (uint8_t)v[2];
    }
    Py_DECREF(table);
    if (!ok) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ImportError, "hpack.huffman_table.HUFFMAN_TABLE is not the table _http2 reads");
        return -1;
    }
    if ((mod = PyImport_ImportModule("hpack.table")) == NULL) return -1;
    PyObject *cls = PyObject_GetAttrString(mod, "HeaderTable");
    Py_DECREF(mod);
    if (cls == NULL) return -1;
    PyObject *st = PyObject_GetAttrString(cls, "STATIC_TABLE");
    Py_DECREF(cls);
    if (st == NULL) return -1;
    ok = PyTuple_Check(st) && PyTuple_GET_SIZE(st) == N_STATIC;
    for (Py_ssize_t i = 0; ok && i < N_STATIC; i++) {
        PyObject *t = PyTuple_GET_ITEM(st, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(t, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(t, 1))) {
            ok = 0;
            break;
        }
        PyObject *nm = PyTuple_GET_ITEM(t, 0), *val = PyTuple_GET_ITEM(t, 1);
        const char *name = PyBytes_AS_STRING(nm);
        Py_ssize_t nlen = PyBytes_GET_SIZE(nm);
        static_entries[i] = entry_new(1, name, nlen, PyBytes_AS_STRING(val), PyBytes_GET_SIZE(val), wanted_id(name, nlen));
        if (static_entries[i] == NULL || entry_value(static_entries[i]) == NULL) {
            Py_DECREF(st);
            if (!PyErr_Occurred()) PyErr_NoMemory();
            return -1;
        }
    }
    Py_DECREF(st);
    if (!ok) {
        PyErr_SetString(PyExc_ImportError, "hpack.table.HeaderTable.STATIC_TABLE is not the 61 (name, value) pairs _http2 reads");
        return -1;
    }
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_http2", "Compiled HTTP/2 + HPACK connection decoder.", -1, NULL};

static PyObject *intern(const char *s) { return PyUnicode_InternFromString(s); }

PyMODINIT_FUNC PyInit__http2(void) {
    if (PyType_Ready(&H2Type) < 0 || load_hpack() < 0) return NULL;
    for (int i = 0; i < N_ERRORS; i++)
        if ((error_str[i] = intern(ERROR_CODES[i])) == NULL) return NULL;
    if (!(s_http2 = intern("HTTP/2")) || !(s_add = intern("add")) || !(c_malformed = intern("http2_malformed")) ||
        !(c_desync = intern("http2_desync")) || !(c_too_large = intern("http2_header_block_too_large")) ||
        !(c_orphan = intern("http2_orphan_streams")) || !(c_evicted = intern("http2_streams_evicted")) ||
        !(c_connections = intern("http2_connections")) || !(c_mid = intern("http2_mid_connection")) ||
        !(c_partial = intern("http2_headers_partial")) || !(s_unquote_kw = Py_BuildValue("(s)", "errors")))
        return NULL;
    PyObject *parse = PyImport_ImportModule("urllib.parse");
    if (parse == NULL) return NULL;
    unquote_fn = PyObject_GetAttrString(parse, "unquote");
    Py_DECREF(parse);
    if (unquote_fn == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "H2Connection", (PyObject *)&H2Type) < 0 || PyModule_AddIntConstant(m, "MAX_STREAMS", MAX_STREAMS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_TABLE", MAX_TABLE) < 0 || PyModule_AddIntConstant(m, "MAX_HEADER_BLOCK", MAX_HEADER_BLOCK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
