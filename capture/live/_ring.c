/* Consumer side of a BPF ring buffer map, compiled: capture/ringbuf.py RingReader.read's loop.
 *
 * Why: reading a record in Python (a numpy scalar load for its header, a memoryview slice,
 * tobytes) costs ~0.7 µs; a plain HTTP request is three records, so the read alone was a fifth
 * of the L7 recorder's 10 µs budget. Here it is one bytes object per record, ~0.2 µs
 * (benchmarks/bench_ring.py).
 *
 * The layout (Documentation/bpf/ringbuf.rst) is described in capture/ringbuf.py. Positions
 * and record headers are read with acquire loads and the consumer position is published with
 * a release store, which is what the kernel's smp_store_release/smp_load_acquire pairs expect
 * on any architecture.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BUSY_BIT (1u << 31)
#define DISCARD_BIT (1u << 30)
#define HEADER 8

/* read(data_map, cons_map, size, page) -> list of bytes: every committed record, oldest first;
 * stops at the first record still being written, then advances the consumer position once.
 * data_map: the read-only mapping of the producer page and the data area (once: a sample that wraps
 * past the area's end is copied in two pieces; a header never wraps); cons_map: the
 * writable consumer page; size: the data area's bytes (a power of two); page: the page size. */
static PyObject *ring_read(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "read(data_map, cons_map, size, page)");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[2]), page = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (size <= 0 || (size & (size - 1)) || page < 16) {
        PyErr_SetString(PyExc_ValueError, "read: size must be a power of two and page at least 16");
        return NULL;
    }
    Py_buffer data, cons;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &cons, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    PyObject *out = NULL;
    if (data.len < page + size || cons.len < 8 || ((uintptr_t)data.buf & 7) || ((uintptr_t)cons.buf & 7)) {
        PyErr_SetString(PyExc_ValueError, "read: mappings smaller than the ring or not 8-byte aligned");
        goto done;
    }
    const char *base = (const char *)data.buf + page;
    uint64_t *cons_pos = (uint64_t *)cons.buf;
    uint64_t mask = (uint64_t)size - 1;
    uint64_t c = __atomic_load_n(cons_pos, __ATOMIC_RELAXED); /* only we write it */
    uint64_t start = c;
    uint64_t prod = __atomic_load_n((const uint64_t *)data.buf, __ATOMIC_ACQUIRE);
    if ((out = PyList_New(0)) == NULL) goto done;
    while (c < prod) {
        const char *rec = base + (c & mask);
        uint32_t len = __atomic_load_n((const uint32_t *)rec, __ATOMIC_ACQUIRE);
        if (len & BUSY_BIT) break;
        uint32_t n = len & ~(BUSY_BIT | DISCARD_BIT);
        if ((uint64_t)n + HEADER > (uint64_t)size) {
            Py_CLEAR(out);
            PyErr_Format(PyExc_ValueError, "ring buffer record of %u bytes in a ring of %zd: the ring is corrupt", n, size);
            break;
        }
        if (!(len & DISCARD_BIT)) {
            uint64_t start = (c + HEADER) & mask; /* the header never wraps; the sample may */
            uint64_t first = (uint64_t)size - start < n ? (uint64_t)size - start : n;
            PyObject *b;
            if (first == n) {
                b = PyBytes_FromStringAndSize(base + start, n);
            } else if ((b = PyBytes_FromStringAndSize(NULL, n)) != NULL) {
                memcpy(PyBytes_AS_STRING(b), base + start, first);
                memcpy(PyBytes_AS_STRING(b) + first, base, n - first);
            }
            if (b == NULL || PyList_Append(out, b) < 0) {
                Py_XDECREF(b);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(b);
        }
        c += ((uint64_t)n + HEADER + 7) & ~(uint64_t)7;
    }
    if (out != NULL && c != start) __atomic_store_n(cons_pos, c, __ATOMIC_RELEASE);
done:
    PyBuffer_Release(&cons);
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef methods[] = {
    {"read", (PyCFunction)(void (*)(void))ring_read, METH_FASTCALL, "Every committed record of a BPF ring buffer, oldest first."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ring", "BPF ring buffer consumer (compiled).", -1, methods};

PyMODINIT_FUNC PyInit__ring(void) { return PyModule_Create(&module); }
