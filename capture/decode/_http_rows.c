/* The http rows of one hand-over to the writer, appended straight to Arrow column buffers.
 *
 * capture/decode/http_rows.py's HttpRows is the reference (FLOWTAPE_HTTP_ROWS=python selects it):
 * it keeps exchange tuples and side tuples and builds the Arrow arrays at to_arrow. HttpColumns
 * appends each row's values to its columns as it is made (validity bitmap, fixed-width data or
 * int32 offsets + UTF-8 bytes), so handing the rows over is copying the buffers once; no row
 * dict, no conform pass.
 *
 * take_plain does what capture/live/l7.py's _expand_plain does for a plain HTTP exchange (the
 * endpoints alive at its request, their conn_id from the decoder's cache, IoTurns.turn's tid and
 * goroutine) without a Python call per row, and appends one row per endpoint.
 *
 * The columns are described by Python (http_rows.column_spec: one (kind, source, index) per column
 * of the http schema in its order), so this file does not repeat the schema.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { K_STR = 0, K_I64 = 1, K_I32 = 2, K_U16 = 3, K_U32 = 4, K_U64 = 5, K_BOOL = 6 };
enum { S_EXCHANGE = 0, S_BASE = 1, S_SIDE = 2, S_NONE = 3 };
enum { SIDE_CID = 0, SIDE_PID, SIDE_COMM, SIDE_SIDE, SIDE_TID, SIDE_GOROUTINE, SIDE_N };

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

typedef struct {
    int kind, source, index;
    Buf valid;  /* one bit per row */
    Buf data;   /* fixed width values, or the strings' bytes (bits for K_BOOL) */
    Buf offsets;  /* K_STR: int32 per row + 1 */
    Py_ssize_t nulls;
} Column;

typedef struct {
    PyObject_HEAD
    Column *cols;
    int ncols;
    Py_ssize_t n;  /* rows */
    PyObject *error;  /* the first value that did not fit: (column index, message), else NULL */
} HttpColumns;

static int buf_grow(Buf *b, size_t need) {
    if (b->len + need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + need)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, size_t len) {
    if (buf_grow(b, len) < 0)
        return -1;
    if (len)
        memcpy(b->p + b->len, src, len);
    b->len += len;
    return 0;
}

/* bit `i` of a bitmap buffer: the bytes up to it are there (zeroed) */
static int bit_set(Buf *b, Py_ssize_t i, int value) {
    size_t byte = (size_t)i >> 3;
    if (byte >= b->len) {
        if (buf_grow(b, byte + 1 - b->len) < 0)
            return -1;
        memset(b->p + b->len, 0, byte + 1 - b->len);
        b->len = byte + 1;
    }
    if (value)
        b->p[byte] |= (char)(1 << (i & 7));
    return 0;
}

static const size_t WIDTH[] = {0, 8, 4, 2, 4, 8, 0};

static void note_error(HttpColumns *self, int col, const char *msg) {
    if (self->error)
        return;
    self->error = Py_BuildValue("(is)", col, msg);
    if (!self->error)
        PyErr_Clear();
}

/* Append `v` (None: null) to column `ci` at row self->n. A value of the wrong type or range is
 * noted (to_arrow's caller raises it, naming the column) and written as null, so every column
 * keeps the same length. Returns -1 only on memory errors. */
static int col_append(HttpColumns *self, int ci, PyObject *v) {
    Column *c = &self->cols[ci];
    Py_ssize_t row = self->n;
    int valid = v != NULL && v != Py_None;
    if (c->kind == K_STR) {
        Py_ssize_t len = 0;
        const char *s = NULL;
        if (valid) {
            if (!PyUnicode_Check(v)) {
                note_error(self, ci, "a string column holds a value that is not a string");
                valid = 0;
            } else if (!(s = PyUnicode_AsUTF8AndSize(v, &len))) {
                PyErr_Clear();
                note_error(self, ci, "a string that is not valid UTF-8");
                valid = 0;
            }
        }
        if (row == 0) {
            int32_t zero = 0;
            if (buf_put(&c->offsets, &zero, 4) < 0)
                return -1;
        }
        if (valid) {
            if ((size_t)len + c->data.len > INT32_MAX) {
                note_error(self, ci, "more than 2 GiB of text in one hand-over");
                valid = 0;
            } else if (buf_put(&c->data, s, (size_t)len) < 0) {
                return -1;
            }
        }
        int32_t end = (int32_t)c->data.len;
        if (buf_put(&c->offsets, &end, 4) < 0)
            return -1;
    } else if (c->kind == K_BOOL) {
        if (valid && v != Py_True && v != Py_False) {
            note_error(self, ci, "a bool column holds a value that is not a bool");
            valid = 0;
        }
        if (bit_set(&c->data, row, valid && v == Py_True) < 0)
            return -1;
    } else {
        unsigned char raw[8] = {0};
        if (valid && (!PyLong_Check(v) || PyBool_Check(v))) {
            note_error(self, ci, "an integer column holds a value that is not an integer");
            valid = 0;
        }
        if (valid) {
            int overflow = 0;
            if (c->kind == K_U64) {
                unsigned long long u = PyLong_AsUnsignedLongLong(v);
                if (u == (unsigned long long)-1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    overflow = 1;
                } else {
                    memcpy(raw, &u, 8);
                }
            } else {
                long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
                if (!overflow && x == -1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    overflow = 1;
                }
                if (!overflow) {
                    switch (c->kind) {
                    case K_I64: memcpy(raw, &x, 8); break;
                    case K_I32:
                        if (x < INT32_MIN || x > INT32_MAX) overflow = 1;
                        else { int32_t y = (int32_t)x; memcpy(raw, &y, 4); }
                        break;
                    case K_U16:
                        if (x < 0 || x > UINT16_MAX) overflow = 1;
                        else { uint16_t y = (uint16_t)x; memcpy(raw, &y, 2); }
                        break;
                    case K_U32:
                        if (x < 0 || x > UINT32_MAX) overflow = 1;
                        else { uint32_t y = (uint32_t)x; memcpy(raw, &y, 4); }
                        break;
                    }
                }
            }
            if (overflow) {
                note_error(self, ci, "an integer out of the column's range");
                valid = 0;
                memset(raw, 0, sizeof raw);
            }
        }
        if (buf_put(&c->data, raw, WIDTH[c->kind]) < 0)
            return -1;
    }
    if (bit_set(&c->valid, row, valid) < 0)
        return -1;
    if (!valid)
        c->nulls++;
    return 0;
}

/* One row: the exchange tuple `x` (missing trailing fields are null), the connection tuple `base`,
 * and the side values side[SIDE_N] (NULL: null). */
static int append_row(HttpColumns *self, PyObject *x, PyObject *base, PyObject **side) {
    Py_ssize_t nx = PyTuple_GET_SIZE(x), nb = PyTuple_GET_SIZE(base);
    for (int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        PyObject *v = NULL;
        switch (c->source) {
        case S_EXCHANGE: v = c->index < nx ? PyTuple_GET_ITEM(x, c->index) : NULL; break;
        case S_BASE: v = c->index < nb ? PyTuple_GET_ITEM(base, c->index) : NULL; break;
        case S_SIDE: v = side[c->index]; break;
        }
        if (col_append(self, i, v) < 0)
            return -1;
    }
    self->n++;
    return 0;
}

static int HttpColumns_init(HttpColumns *self, PyObject *args, PyObject *kwds) {
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &spec))
        return -1;
    if (self->cols) {
        PyErr_SetString(PyExc_RuntimeError, "HttpColumns is set up once");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(spec);
    self->cols = PyMem_Calloc(n ? n : 1, sizeof(Column));
    if (!self->cols) {
        PyErr_NoMemory();
        return -1;
    }
    self->ncols = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Column *c = &self->cols[i];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(spec, i), "iii", &c->kind, &c->source, &c->index))
            return -1;
        if (c->kind < K_STR || c->kind > K_BOOL || c->source < S_EXCHANGE || c->source > S_NONE || c->index < 0 ||
            (c->source == S_SIDE && c->index >= SIDE_N)) {
            PyErr_Format(PyExc_ValueError, "column %zd: bad spec", i);
            return -1;
        }
    }
    return 0;
}

static void HttpColumns_dealloc(HttpColumns *self) {
    for (int i = 0; i < self->ncols; i++) {
        PyMem_Free(self->cols[i].valid.p);
        PyMem_Free(self->cols[i].data.p);
        PyMem_Free(self->cols[i].offsets.p);
    }
    PyMem_Free(self->cols);
    Py_XDECREF(self->error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *HttpColumns_add_row(HttpColumns *self, PyObject *args) {
    PyObject *x, *base, *side[SIDE_N] = {NULL};
    PyObject *g = Py_None, *tid = Py_None;
    if (!PyArg_ParseTuple(args, "O!O!OOOO|OO", &PyTuple_Type, &x, &PyTuple_Type, &base, &side[SIDE_CID], &side[SIDE_PID],
                          &side[SIDE_COMM], &side[SIDE_SIDE], &tid, &g))
        return NULL;
    side[SIDE_TID] = tid;
    side[SIDE_GOROUTINE] = g;
    if (append_row(self, x, base, side) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *s_ts_start, *s_ts_end, *s_skaddr, *s_role, *s_pid, *s_comm, *s_cookie;

/* the int64 value of a Python int (timestamps); -1 with an error set when it is not one */
static int as_i64(PyObject *v, long long *out) {
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

/* IoTurns.turn for one endpoint: tid and goroutine (new references, Py_None when not known) */
static int turn_of(PyObject *by_sk, PyObject *skaddr, int server, long long bound, long long since, PyObject **tid, PyObject **g) {
    *tid = Py_NewRef(Py_None);
    *g = Py_NewRef(Py_None);
    int sk_true = PyObject_IsTrue(skaddr);
    if (sk_true <= 0)
        return sk_true;
    PyObject *entry = PyDict_GetItemWithError(by_sk, skaddr);  /* borrowed */
    if (!entry)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 4) {
        PyErr_SetString(PyExc_TypeError, "IoTurns entry: a 4-tuple of lists");
        return -1;
    }
    PyObject *tss = PyTuple_GET_ITEM(entry, 0), *tids = PyTuple_GET_ITEM(entry, 1), *rx = PyTuple_GET_ITEM(entry, 2),
             *gs = PyTuple_GET_ITEM(entry, 3);
    if (!PyList_Check(tss) || !PyList_Check(tids) || !PyList_Check(rx) || !PyList_Check(gs)) {
        PyErr_SetString(PyExc_TypeError, "IoTurns entry: a 4-tuple of lists");
        return -1;
    }
    /* bisect_right(tss, bound) - 1 */
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(tss);
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        long long t;
        if (as_i64(PyList_GET_ITEM(tss, mid), &t) < 0)
            return -1;
        if (bound < t)
            hi = mid;
        else
            lo = mid + 1;
    }
    Py_ssize_t j = lo - 1;
    if (j < 0 || j >= PyList_GET_SIZE(tids) || j >= PyList_GET_SIZE(rx) || j >= PyList_GET_SIZE(gs))
        return 0;
    long long tj;
    if (as_i64(PyList_GET_ITEM(tss, j), &tj) < 0)
        return -1;
    if (tj < since)
        return 0;
    int received = PyObject_IsTrue(PyList_GET_ITEM(rx, j));
    if (received < 0)
        return -1;
    if (received != server)
        return 0;
    Py_SETREF(*tid, Py_NewRef(PyList_GET_ITEM(tids, j)));
    PyObject *gj = PyList_GET_ITEM(gs, j);
    int g_true = PyObject_IsTrue(gj);
    if (g_true < 0)
        return -1;
    if (g_true)
        Py_SETREF(*g, Py_NewRef(gj));
    return 0;
}

/* The conn_id of endpoint c: the decoder's cache (id(c) -> (c, cookie, (conn_id, base))) when it is
 * current, else conn_id(c) (which fills it). New reference. */
static PyObject *conn_id_of(PyObject *c, PyObject *cache, PyObject *conn_id) {
    PyObject *key = PyLong_FromVoidPtr(c);
    if (!key)
        return NULL;
    PyObject *hit = PyDict_GetItemWithError(cache, key);  /* borrowed */
    Py_DECREF(key);
    if (!hit && PyErr_Occurred())
        return NULL;
    if (hit && PyTuple_Check(hit) && PyTuple_GET_SIZE(hit) >= 3 && PyTuple_GET_ITEM(hit, 0) == c) {
        Py_INCREF(hit);
        PyObject *cookie = PyObject_GetAttr(c, s_cookie);
        int same = cookie ? PyObject_RichCompareBool(PyTuple_GET_ITEM(hit, 1), cookie, Py_EQ) : -1;
        Py_XDECREF(cookie);
        if (same < 0) {
            Py_DECREF(hit);
            return NULL;
        }
        PyObject *cols = PyTuple_GET_ITEM(hit, 2);
        if (same && PyTuple_Check(cols) && PyTuple_GET_SIZE(cols) >= 1) {
            PyObject *cid = Py_NewRef(PyTuple_GET_ITEM(cols, 0));
            Py_DECREF(hit);
            return cid;
        }
        Py_DECREF(hit);
    }
    return PyObject_CallOneArg(conn_id, c);
}

/* take_plain(join, row, conns, offset, no_response_ns, by_sk, cache, conn_id) -> rows appended:
 * L7Decoder._expand_plain's join (0: no endpoint alive at the request; the caller waits or gives up). */
static Py_ssize_t plain_join(HttpColumns *self, PyObject *join, PyObject *row, PyObject *conns, long long offset, long long no_response,
                             PyObject *by_sk, PyObject *cache, PyObject *conn_id);

static PyObject *HttpColumns_take_plain(HttpColumns *self, PyObject *args) {
    PyObject *join, *row, *conns, *by_sk, *cache, *conn_id;
    long long offset, no_response;
    if (!PyArg_ParseTuple(args, "O!O!OLLO!O!O", &PyTuple_Type, &join, &PyTuple_Type, &row, &conns, &offset, &no_response,
                          &PyDict_Type, &by_sk, &PyDict_Type, &cache, &conn_id))
        return NULL;
    Py_ssize_t n = plain_join(self, join, row, conns, offset, no_response, by_sk, cache, conn_id);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

/* the rows of one plain exchange (take_plain): how many, or -1 with an error set */
static Py_ssize_t plain_join(HttpColumns *self, PyObject *join, PyObject *row, PyObject *conns, long long offset, long long no_response,
                             PyObject *by_sk, PyObject *cache, PyObject *conn_id) {
    if (conns == Py_None || (PyList_Check(conns) && PyList_GET_SIZE(conns) == 0))
        return 0;
    if (!PyList_Check(conns)) {
        PyErr_SetString(PyExc_TypeError, "take_plain: conns must be a list or None");
        return -1;
    }
    if (PyTuple_GET_SIZE(row) < 2) {
        PyErr_SetString(PyExc_ValueError, "take_plain: an exchange tuple has ts_request and ts_response");
        return -1;
    }
    long long ts_req;
    if (as_i64(PyTuple_GET_ITEM(row, 0), &ts_req) < 0)
        return -1;
    long long mono = ts_req - offset;
    /* the endpoints alive at the request, first (as _expand_plain: before any row is added) */
    PyObject *alive = PyList_New(0);
    if (!alive)
        return -1;
    Py_ssize_t nconns = PyList_GET_SIZE(conns);
    for (Py_ssize_t i = 0; i < nconns; i++) {
        PyObject *c = PyList_GET_ITEM(conns, i);
        PyObject *start = PyObject_GetAttr(c, s_ts_start);
        if (!start)
            goto fail;
        long long s;
        int bad = as_i64(start, &s);
        Py_DECREF(start);
        if (bad < 0)
            goto fail;
        if (s > mono)
            continue;
        PyObject *end = PyObject_GetAttr(c, s_ts_end);
        if (!end)
            goto fail;
        int ok = 1;
        if (end != Py_None) {
            long long e;
            bad = as_i64(end, &e);
            if (bad < 0) {
                Py_DECREF(end);
                goto fail;
            }
            ok = mono <= e;
        }
        Py_DECREF(end);
        if (ok && PyList_Append(alive, c) < 0)
            goto fail;
    }
    Py_ssize_t nalive = PyList_GET_SIZE(alive);
    if (nalive == 0) {
        Py_DECREF(alive);
        return 0;
    }
    PyObject *base = NULL;
    {
        Py_ssize_t nj = PyTuple_GET_SIZE(join);
        base = PyTuple_New(nj + 1);
        if (!base)
            goto fail;
        for (Py_ssize_t k = 0; k < nj; k++)
            PyTuple_SET_ITEM(base, k, Py_NewRef(PyTuple_GET_ITEM(join, k)));
        PyTuple_SET_ITEM(base, nj, Py_NewRef(Py_False));
    }
    PyObject *resp = PyTuple_GET_ITEM(row, 1);
    long long bound;
    if (resp == Py_None) {
        bound = mono + no_response;
    } else {
        long long r;
        if (as_i64(resp, &r) < 0)
            goto fail_base;
        bound = r - offset;
    }
    for (Py_ssize_t i = 0; i < nalive; i++) {
        PyObject *c = PyList_GET_ITEM(alive, i);
        PyObject *side[SIDE_N] = {NULL};
        PyObject *skaddr = NULL, *start = NULL;
        long long since;
        int rc = -1;
        side[SIDE_CID] = conn_id_of(c, cache, conn_id);
        if (!side[SIDE_CID])
            goto row_done;
        if (!(side[SIDE_SIDE] = PyObject_GetAttr(c, s_role)) || !(side[SIDE_PID] = PyObject_GetAttr(c, s_pid)) ||
            !(side[SIDE_COMM] = PyObject_GetAttr(c, s_comm)) || !(skaddr = PyObject_GetAttr(c, s_skaddr)) ||
            !(start = PyObject_GetAttr(c, s_ts_start)) || as_i64(start, &since) < 0)
            goto row_done;
        int server = PyUnicode_Check(side[SIDE_SIDE]) && PyUnicode_CompareWithASCIIString(side[SIDE_SIDE], "server") == 0;
        if (turn_of(by_sk, skaddr, server, bound, since, &side[SIDE_TID], &side[SIDE_GOROUTINE]) < 0)
            goto row_done;
        rc = append_row(self, row, base, side);
    row_done:
        for (int k = 0; k < SIDE_N; k++)
            Py_XDECREF(side[k]);
        Py_XDECREF(skaddr);
        Py_XDECREF(start);
        if (rc < 0)
            goto fail_base;
    }
    Py_DECREF(base);
    Py_DECREF(alive);
    return nalive;
fail_base:
    Py_XDECREF(base);
fail:
    Py_DECREF(alive);
    return -1;
}

/* take_pending(pending, now, final, sure, live_read, endpoints, offset, no_response_ns, turns_by_sk, endpoint_cols, conn_id,
 * expand, waiting) -> plain exchanges given up (no endpoint): L7Decoder.take_rows' loop over its ready rows. A plain
 * HTTP item (kind "http", joined by a tuple) is take_plain'd here; any other goes to expand(kind, join, row, give_up).
 * An item not written yet is appended to `waiting`. */
static PyObject *HttpColumns_take_pending(HttpColumns *self, PyObject *args) {
    PyObject *pending, *endpoints, *by_sk, *cache, *conn_id, *expand, *waiting;
    long long now, live_read, offset, no_response;
    int final, sure;
    if (!PyArg_ParseTuple(args, "OLppLO!LLO!O!OOO!", &pending, &now, &final, &sure, &live_read, &PyDict_Type, &endpoints, &offset,
                          &no_response, &PyDict_Type, &by_sk, &PyDict_Type, &cache, &conn_id, &expand, &PyList_Type, &waiting))
        return NULL;
    PyObject *popleft = PyObject_GetAttrString(pending, "popleft");
    if (!popleft)
        return NULL;
    Py_ssize_t lost = 0;
    for (;;) {
        Py_ssize_t left = PyObject_Length(pending);
        if (left < 0)
            goto fail;
        if (left == 0)
            break;
        PyObject *first = PySequence_GetItem(pending, 0);
        if (!first)
            goto fail;
        long long ready;
        int shape = PyTuple_Check(first) && PyTuple_GET_SIZE(first) == 4;
        if (!shape || as_i64(PyTuple_GET_ITEM(first, 0), &ready) < 0) {
            if (!shape)
                PyErr_SetString(PyExc_TypeError, "take_pending: items are (ready, kind, join, row)");
            Py_DECREF(first);
            goto fail;
        }
        Py_DECREF(first);
        if (!final && ready > now)
            break;
        PyObject *item = PyObject_CallNoArgs(popleft);
        if (!item)
            goto fail;
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
            PyErr_SetString(PyExc_TypeError, "take_pending: items are (ready, kind, join, row)");
            Py_DECREF(item);
            goto fail;
        }
        PyObject *kind = PyTuple_GET_ITEM(item, 1), *join = PyTuple_GET_ITEM(item, 2), *row = PyTuple_GET_ITEM(item, 3);
        int give_up = sure || live_read >= ready;
        int written;
        if (PyUnicode_Check(kind) && PyUnicode_CompareWithASCIIString(kind, "http") == 0 && PyTuple_CheckExact(join) && PyTuple_Check(row)) {
            PyObject *conns = PyDict_GetItemWithError(endpoints, join);  /* borrowed */
            if (!conns && PyErr_Occurred()) {
                Py_DECREF(item);
                goto fail;
            }
            Py_XINCREF(conns);
            Py_ssize_t n = plain_join(self, join, row, conns ? conns : Py_None, offset, no_response, by_sk, cache, conn_id);
            Py_XDECREF(conns);
            if (n < 0) {
                Py_DECREF(item);
                goto fail;
            }
            written = n > 0 || give_up;
            if (n == 0 && give_up)
                lost++;
        } else {
            PyObject *r = PyObject_CallFunctionObjArgs(expand, kind, join, row, give_up ? Py_True : Py_False, NULL);
            written = r ? PyObject_IsTrue(r) : -1;
            Py_XDECREF(r);
            if (written < 0) {
                Py_DECREF(item);
                goto fail;
            }
        }
        if (!written && PyList_Append(waiting, item) < 0) {
            Py_DECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    Py_DECREF(popleft);
    return PyLong_FromSsize_t(lost);
fail:
    Py_DECREF(popleft);
    return NULL;
}

static PyObject *bytes_of(Buf *b) {
    return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len);
}

/* finish() -> (rows, error, [(validity or None, data, offsets or None, null count) per column]):
 * the buffers copied once, for pa.Array.from_buffers. error: (column index, message) or None. */
static PyObject *HttpColumns_finish(HttpColumns *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *cols = PyList_New(self->ncols);
    if (!cols)
        return NULL;
    for (int i = 0; i < self->ncols; i++) {
        Column *c = &self->cols[i];
        if (c->kind == K_BOOL && self->n)
            if (bit_set(&c->data, self->n - 1, 0) < 0)  /* every row's byte is there */
                goto fail;
        PyObject *valid = c->nulls ? bytes_of(&c->valid) : Py_NewRef(Py_None);
        PyObject *data = bytes_of(&c->data);
        PyObject *offs;
        if (c->kind != K_STR) {
            offs = Py_NewRef(Py_None);
        } else if (self->n) {
            offs = bytes_of(&c->offsets);
        } else {
            int32_t zero = 0;
            offs = PyBytes_FromStringAndSize((const char *)&zero, 4);
        }
        PyObject *item = valid && data && offs ? Py_BuildValue("(OOOn)", valid, data, offs, c->nulls) : NULL;
        Py_XDECREF(valid);
        Py_XDECREF(data);
        Py_XDECREF(offs);
        if (!item)
            goto fail;
        PyList_SET_ITEM(cols, i, item);
    }
    return Py_BuildValue("(nON)", self->n, self->error ? self->error : Py_None, cols);
fail:
    Py_DECREF(cols);
    return NULL;
}

static Py_ssize_t HttpColumns_len(HttpColumns *self) {
    return self->n;
}

static PyMethodDef HttpColumns_methods[] = {
    {"add_row", (PyCFunction)HttpColumns_add_row, METH_VARARGS,
     "add_row(exchange, base, conn_id, pid, comm, side, tid=None, goroutine=None): one row"},
    {"take_plain", (PyCFunction)HttpColumns_take_plain, METH_VARARGS,
     "take_plain(join, row, conns, offset, no_response_ns, turns_by_sk, endpoint_cols, conn_id) -> rows added"},
    {"take_pending", (PyCFunction)HttpColumns_take_pending, METH_VARARGS,
     "take_pending(pending, now, final, sure, live_read, endpoints, offset, no_response_ns, turns_by_sk, endpoint_cols, conn_id, expand, waiting)"
     " -> plain exchanges given up"},
    {"finish", (PyCFunction)HttpColumns_finish, METH_NOARGS, "finish() -> (rows, error, column buffers)"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods HttpColumns_seq = {
    .sq_length = (lenfunc)HttpColumns_len,
};

static PyTypeObject HttpColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_http_rows.HttpColumns",
    .tp_basicsize = sizeof(HttpColumns),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "http rows appended to Arrow column buffers (capture/decode/_http_rows.c)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HttpColumns_init,
    .tp_dealloc = (destructor)HttpColumns_dealloc,
    .tp_methods = HttpColumns_methods,
    .tp_as_sequence = &HttpColumns_seq,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_http_rows", "http rows as Arrow column buffers", -1, NULL};

PyMODINIT_FUNC PyInit__http_rows(void) {
    if (PyType_Ready(&HttpColumnsType) < 0)
        return NULL;
    if (!(s_ts_start = PyUnicode_InternFromString("ts_start")) || !(s_ts_end = PyUnicode_InternFromString("ts_end")) ||
        !(s_skaddr = PyUnicode_InternFromString("skaddr")) || !(s_role = PyUnicode_InternFromString("role")) ||
        !(s_pid = PyUnicode_InternFromString("pid")) || !(s_comm = PyUnicode_InternFromString("comm")) ||
        !(s_cookie = PyUnicode_InternFromString("cookie")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&HttpColumnsType);
    if (PyModule_AddObject(m, "HttpColumns", (PyObject *)&HttpColumnsType) < 0) {
        Py_DECREF(&HttpColumnsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
