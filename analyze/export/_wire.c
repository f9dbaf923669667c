/* Row-wise concatenation of Arrow binary columns: wire.py's `join` compiled; and a batch's JSON
 * line (wire.json_line), the spans grouped by resource.
 *
 * Arrow's binary_join_element_wise costs about 1-2 us per row whatever the parts (measured on
 * 8192-row batches); spans have ~25 parts each, so it was the columnar encoder's largest cost.
 * This is the same operation as a loop of memcpy: the Python in wire.py (`join` without this
 * module) is the reference, and tests/test_export_wire.py holds the two to each other.
 *
 * concat_rows(n, parts) -> (offsets: bytes of n+1 int32, data: bytes)
 *   parts: each either bytes (the same for every row) or a tuple
 *   (offsets buffer of int32, data buffer, array offset, validity buffer or None): an Arrow
 *   binary array's buffers; a null slot contributes nothing (as null_handling="replace").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int constant;
    const char *cdata;
    Py_ssize_t clen;
    Py_buffer off, data, valid;
    int has_valid;
    Py_ssize_t aoff;
} Part;

static void release(Part *p, Py_ssize_t k) {
    for (Py_ssize_t i = 0; i < k; i++) {
        if (p[i].constant)
            continue;
        PyBuffer_Release(&p[i].off);
        PyBuffer_Release(&p[i].data);
        if (p[i].has_valid)
            PyBuffer_Release(&p[i].valid);
    }
}

static inline int is_valid(const Part *p, Py_ssize_t row) {
    if (!p->has_valid)
        return 1;
    Py_ssize_t bit = p->aoff + row;
    return (((const uint8_t *)p->valid.buf)[bit >> 3] >> (bit & 7)) & 1;
}

static PyObject *concat_rows(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "nO!", &n, &PyList_Type, &list))
        return NULL;
    Py_ssize_t k = PyList_GET_SIZE(list);
    Part *parts = PyMem_Calloc(k ? k : 1, sizeof(Part));
    if (!parts)
        return PyErr_NoMemory();
    Py_ssize_t got = 0;
    for (; got < k; got++) {
        PyObject *o = PyList_GET_ITEM(list, got);
        Part *p = &parts[got];
        if (PyBytes_Check(o)) {
            p->constant = 1;
            p->cdata = PyBytes_AS_STRING(o);
            p->clen = PyBytes_GET_SIZE(o);
            continue;
        }
        PyObject *ob, *db, *vb;
        if (!PyTuple_Check(o) || !PyArg_ParseTuple(o, "OOnO", &ob, &db, &p->aoff, &vb)) {
            PyErr_SetString(PyExc_TypeError, "a part is bytes or (offsets, data, offset, validity)");
            goto fail;
        }
        if (PyObject_GetBuffer(ob, &p->off, PyBUF_SIMPLE) < 0)
            goto fail;
        if (PyObject_GetBuffer(db, &p->data, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&p->off);
            goto fail;
        }
        if (vb != Py_None) {
            if (PyObject_GetBuffer(vb, &p->valid, PyBUF_SIMPLE) < 0) {
                PyBuffer_Release(&p->off);
                PyBuffer_Release(&p->data);
                goto fail;
            }
            p->has_valid = 1;
        }
        if ((p->aoff + n + 1) * (Py_ssize_t)sizeof(int32_t) > p->off.len || (p->has_valid && (p->aoff + n + 7) / 8 > p->valid.len)) {
            PyErr_SetString(PyExc_ValueError, "a part is shorter than n rows");
            got++;
            goto fail;
        }
    }
    /* sizes first: one allocation for all the rows */
    PyObject *offs = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(int32_t));
    if (!offs)
        goto fail;
    int32_t *out_off = (int32_t *)PyBytes_AS_STRING(offs);
    int64_t total = 0;
    out_off[0] = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        for (Py_ssize_t j = 0; j < k; j++) {
            const Part *p = &parts[j];
            if (p->constant) {
                total += p->clen;
            } else if (is_valid(p, r)) {
                const int32_t *o = (const int32_t *)p->off.buf + p->aoff;
                if (o[r + 1] < o[r] || o[r + 1] > p->data.len) {
                    Py_DECREF(offs);
                    PyErr_SetString(PyExc_ValueError, "offsets out of the data buffer");
                    goto fail;
                }
                total += o[r + 1] - o[r];
            }
        }
        if (total > INT32_MAX) {
            Py_DECREF(offs);
            PyErr_SetString(PyExc_OverflowError, "more than 2 GiB in one batch");
            goto fail;
        }
        out_off[r + 1] = (int32_t)total;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!data) {
        Py_DECREF(offs);
        goto fail;
    }
    char *w = PyBytes_AS_STRING(data);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < n; r++) {
        for (Py_ssize_t j = 0; j < k; j++) {
            const Part *p = &parts[j];
            if (p->constant) {
                memcpy(w, p->cdata, p->clen);
                w += p->clen;
            } else if (is_valid(p, r)) {
                const int32_t *o = (const int32_t *)p->off.buf + p->aoff;
                int32_t len = o[r + 1] - o[r];
                memcpy(w, (const char *)p->data.buf + o[r], len);
                w += len;
            }
        }
    }
    Py_END_ALLOW_THREADS
    release(parts, k);
    PyMem_Free(parts);
    return Py_BuildValue("(NN)", offs, data);
fail:
    release(parts, got);
    PyMem_Free(parts);
    return NULL;
}

/* json_line(res, offsets, data, aoff, resources, scope_open) -> bytes
 *   A TracesData JSON line of n spans (wire.json_line_reference's text): `res` the int64 resource
 *   index of each span (a buffer of n), the spans an Arrow binary array's buffers (offsets of
 *   int32, data, array offset; no nulls), each span's JSON followed by a comma; `resources` the
 *   JSON of each resource (a list of bytes). The spans are grouped by resource, groups in the
 *   order their first span comes, spans in their order within a group: one ResourceSpans each.
 *   In Python this was a take of every span, a copy of the batch and a slice per group (a third
 *   of the main thread's time). */
static PyObject *json_line(PyObject *self, PyObject *args) {
    Py_buffer rb = {0}, ob = {0}, db = {0};
    Py_ssize_t aoff;
    PyObject *resources, *out = NULL;
    const char *scope;
    Py_ssize_t scope_len;
    Py_ssize_t *rank = NULL, *count = NULL, *start = NULL, *order = NULL;
    if (!PyArg_ParseTuple(args, "y*y*y*nO!y#", &rb, &ob, &db, &aoff, &PyList_Type, &resources, &scope, &scope_len))
        return NULL;
    Py_ssize_t n = rb.len / (Py_ssize_t)sizeof(int64_t), nres = PyList_GET_SIZE(resources);
    const int64_t *res = (const int64_t *)rb.buf;
    const int32_t *off = (const int32_t *)ob.buf;
    if (rb.len % (Py_ssize_t)sizeof(int64_t) || aoff < 0 || (aoff + n + 1) * (Py_ssize_t)sizeof(int32_t) > ob.len) {
        PyErr_SetString(PyExc_ValueError, "the spans' offsets are shorter than the resource indices");
        goto done;
    }
    off += aoff;
    for (Py_ssize_t j = 0; j < nres; j++)
        if (!PyBytes_Check(PyList_GET_ITEM(resources, j))) {
            PyErr_SetString(PyExc_TypeError, "a resource's JSON is bytes");
            goto done;
        }
    rank = PyMem_Malloc((nres ? nres : 1) * sizeof(Py_ssize_t));
    count = PyMem_Calloc(nres + 1, sizeof(Py_ssize_t));
    start = PyMem_Calloc(nres + 1, sizeof(Py_ssize_t));
    order = PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
    if (!rank || !count || !start || !order) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < nres; j++)
        rank[j] = -1;
    /* groups by first appearance; their sizes */
    Py_ssize_t groups = 0, total = 18 + 2; /* {"resourceSpans":[ ... ]} */
    Py_ssize_t *first_res = start; /* reused below: group rank -> resource index, then start */
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t r = res[i];
        if (r < 0 || r >= nres) {
            PyErr_SetString(PyExc_ValueError, "a resource index out of range");
            goto done;
        }
        if (off[i] < 0 || off[i + 1] > db.len) {
            PyErr_SetString(PyExc_ValueError, "offsets out of the data buffer");
            goto done;
        }
        if (off[i + 1] <= off[i]) { /* a span is its JSON and a comma: never empty (the size below counts on it) */
            PyErr_SetString(PyExc_ValueError, "an empty span");
            goto done;
        }
        if (rank[r] < 0) {
            rank[r] = groups;
            first_res[groups++] = (Py_ssize_t)r;
            total += 12 + PyBytes_GET_SIZE(PyList_GET_ITEM(resources, r)) + scope_len + 4 + 1; /* {"resource": res scope ]}]} , */
        }
        count[rank[r]]++;
        total += off[i + 1] - off[i];
    }
    if (groups)
        total -= 1 + groups; /* no comma after the last group; each group's last span loses its comma */
    out = PyBytes_FromStringAndSize(NULL, total);
    if (!out)
        goto done;
    /* group g's resource was first_res[g]; keep it in rank's slots (rank no longer needed by r) */
    for (Py_ssize_t g = 0; g < groups; g++)
        rank[g] = first_res[g];
    /* stable counting sort of the spans by group */
    Py_ssize_t acc = 0;
    for (Py_ssize_t g = 0; g < groups; g++) {
        start[g] = acc;
        acc += count[g];
    }
    /* rank[] now maps group -> resource; a span's group needs resource -> group: rebuild in count[] */
    for (Py_ssize_t j = 0; j < nres; j++)
        count[j] = -1;
    for (Py_ssize_t g = 0; g < groups; g++)
        count[rank[g]] = g;
    for (Py_ssize_t i = 0; i < n; i++)
        order[start[count[res[i]]]++] = i;
    char *w = PyBytes_AS_STRING(out);
    const char *data = (const char *)db.buf;
    memcpy(w, "{\"resourceSpans\":[", 18);
    w += 18;
    Py_ssize_t k = 0;
    for (Py_ssize_t g = 0; g < groups; g++) {
        PyObject *js = PyList_GET_ITEM(resources, rank[g]);
        if (g) *w++ = ',';
        memcpy(w, "{\"resource\":", 12);
        w += 12;
        memcpy(w, PyBytes_AS_STRING(js), PyBytes_GET_SIZE(js));
        w += PyBytes_GET_SIZE(js);
        memcpy(w, scope, scope_len);
        w += scope_len;
        Py_ssize_t end = start[g]; /* after the sort: one past the group's last span */
        for (; k < end; k++) {
            Py_ssize_t i = order[k];
            memcpy(w, data + off[i], off[i + 1] - off[i]);
            w += off[i + 1] - off[i];
        }
        w--; /* the group's last comma (the reference's data[:-1]); a group has a non-empty span */
        memcpy(w, "]}]}", 4);
        w += 4;
    }
    memcpy(w, "]}", 2);
    w += 2;
    if (w - PyBytes_AS_STRING(out) != PyBytes_GET_SIZE(out)) { /* never: the sizes above are the copies' */
        Py_CLEAR(out);
        PyErr_SetString(PyExc_AssertionError, "json_line: size mismatch");
    }
done:
    PyMem_Free(rank);
    PyMem_Free(count);
    PyMem_Free(start);
    PyMem_Free(order);
    PyBuffer_Release(&rb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&db);
    return out;
}

static PyMethodDef methods[] = {
    {"concat_rows", concat_rows, METH_VARARGS, "Row-wise concatenation of Arrow binary columns and constants."},
    {"json_line", json_line, METH_VARARGS, "A TracesData JSON line of spans grouped by resource."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wire", "wire.py's row concatenation, compiled.", -1, methods};

PyMODINIT_FUNC PyInit__wire(void) { return PyModule_Create(&module); }
