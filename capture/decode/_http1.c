/* The HTTP/1.x connection decoder of capture/http_pairing.py + capture/decode_http.py, compiled.
 *
 * Why: the recorder's per-request budget is 10 µs of CPU, and the Python decoder alone costs
 * about 10 µs per exchange (its time is spent in C-API calls — bytes.find, a regex, dicts — so
 * Cython gains nothing). This file is the same state machine, state for state, producing the
 * same row tuples (http_pairing.EXCHANGE_FIELDS) and the same DecodeStats counts. The Python
 * classes stay the reference: tests/test_http1_differential.py feeds both the same streams
 * (real captures, cuts, mutations, random bytes) and requires identical output, and runs the
 * same corpus under AddressSanitizer. Keep the two in step: a change to either is a change
 * to both.
 *
 * Input is untrusted (any process's traffic, read as root): every index is checked against
 * the length of the buffer it reads, buffers grow only to MAX_HEAD (+ one segment), and
 * numbers are parsed with explicit digit limits.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEAD (64 * 1024)
#define MAX_LINE 4096
#define MAX_PENDING 256
#define MAX_DIGITS 18 /* longer Content-Length values are malformed (both implementations) */
#define MAX_HEX 15    /* likewise chunk sizes */

enum { HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILERS, UNTIL_CLOSE, TUNNEL, DESYNC };
enum { H_HOST, H_TRACEPARENT, H_USER_AGENT, H_CONTENT_TYPE, H_TRACESTATE, N_OUT_HEADERS }; /* row columns (http_pairing._HEADER_COLUMNS order) */
#define N_ROW 16 /* len(http_pairing.EXCHANGE_FIELDS) */
enum { M_OTHER, M_HEAD, M_CONNECT };

/* --- module state: interned strings --------------------------------------------------------- */

static const char *KNOWN_METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                                      "PATCH", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK"};
#define N_METHODS (sizeof(KNOWN_METHODS) / sizeof(KNOWN_METHODS[0]))
static PyObject *method_str[N_METHODS];
static PyObject *http11, *http10, *empty_str, *comma_sp;
static PyObject *s_add, *s_malformed, *s_desync, *s_truncated, *s_orphan, *s_http2;

/* --- byte helpers --------------------------------------------------------------------------- */

static int is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* bytes.strip(): ASCII whitespace */
static int ascii_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* str.isspace() of a Latin-1 character (the decoded header values are stripped with str.strip) */
static int latin1_space(unsigned char c) {
    return ascii_space(c) || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xa0;
}

static int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static const char *find(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t m) {
    if (n < m) return NULL;
    return memmem(hay, (size_t)n, needle, (size_t)m);
}

static int known_method(const char *p, Py_ssize_t n) {
    for (size_t i = 0; i < N_METHODS; i++)
        if ((Py_ssize_t)strlen(KNOWN_METHODS[i]) == n && memcmp(KNOWN_METHODS[i], p, n) == 0) return (int)i;
    return -1;
}

static int looks_like_request(const char *d, Py_ssize_t n) {
    Py_ssize_t lim = n < 12 ? n : 12;
    const char *sp = memchr(d, ' ', lim);
    return sp != NULL && sp > d && known_method(d, sp - d) >= 0;
}

static int looks_like_response(const char *d, Py_ssize_t n) { return n >= 7 && memcmp(d, "HTTP/1.", 7) == 0; }

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; /* 24 bytes */

static int is_http2(const unsigned char *d, Py_ssize_t n, int from_client) {
    if (from_client) {
        Py_ssize_t m = n < 24 ? n : 24;
        return m >= 4 && memcmp(d, H2_PREFACE, m) == 0;
    }
    return n >= 9 && d[3] == 4 && (d[4] & 0xFE) == 0 && d[5] == 0 && d[6] == 0 && d[7] == 0 && d[8] == 0;
}

/* --- messages ------------------------------------------------------------------------------- */

typedef struct {
    int refs;
    char is_request, done, method_kind;
    int64_t ts;
    int64_t at; /* the head's first byte: its offset in the direction's stream (Parser.fed) */
    PyObject *method, *path, *version; /* path: the request target, redacted if asked */
    int status;                        /* -1: none */
    PyObject *hdr[N_OUT_HEADERS];      /* str or NULL */
    char te_chunked, cl_present; /* te_chunked: Transfer-Encoding present and ending in "chunked" */
    int64_t cl;         /* -1: malformed */
    int64_t head_bytes; /* -1: unknown (None) */
    int64_t body_bytes; /* -1: unknown (None) */
} Msg;

static Msg *msg_new(int is_request, int64_t ts) {
    Msg *m = PyMem_Calloc(1, sizeof(Msg));
    if (m == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    m->refs = 1;
    m->is_request = (char)is_request;
    m->ts = ts;
    m->status = -1;
    return m;
}

static void msg_unref(Msg *m) {
    if (m == NULL || --m->refs > 0) return;
    Py_XDECREF(m->method);
    Py_XDECREF(m->path);
    Py_XDECREF(m->version);
    for (int i = 0; i < N_OUT_HEADERS; i++) Py_XDECREF(m->hdr[i]);
    PyMem_Free(m);
}

static int msg_interim(const Msg *m) { return m->status >= 100 && m->status < 200; }

static int64_t msg_size(const Msg *m) {
    return (m->head_bytes < 0 || m->body_bytes < 0) ? -1 : m->head_bytes + m->body_bytes;
}

/* --- parser (one direction) ----------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_add(Buf *b, const char *p, Py_ssize_t n) {
    if (n <= 0) return 0;
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        char *d = PyMem_Realloc(b->data, cap);
        if (d == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_clear(Buf *b) {
    b->len = 0;
    if (b->cap > 4 * MAX_LINE) { /* a long head passed: give its memory back */
        PyMem_Free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

struct Conn;

typedef struct {
    char is_request;
    int state;
    Buf buf;
    int64_t buf_ts, remaining;
    int64_t fed, base, buf_at; /* bytes fed so far (seen or not); offset of the segment being fed; of buf's first byte */
    Msg *msg; /* owned reference: the message whose body is being passed */
    struct Conn *conn;
} Parser;

typedef struct {
    Msg *request, *response; /* owned */
    int64_t interim_bytes;   /* -1: unknown */
} Exchange;

typedef struct Conn {
    PyObject_HEAD
    Parser req, resp;
    Exchange *xs;
    Py_ssize_t x0, xn, xcap; /* live exchanges are xs[x0 .. x0+xn) */
    char closed, fresh, redact;
    int allow; /* bit i: output header i is on the allow-list */
    int64_t seq_base[2]; /* TCP sequence number of the first byte fed, [0] server->client, [1] client->server; -1 unknown */
    PyObject *stats;
} Conn;

static int count(Conn *c, PyObject *name) {
    if (c->stats == Py_None) return 0;
    PyObject *r = PyObject_CallMethodOneArg(c->stats, s_add, name);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

static void set_msg(Parser *p, Msg *m) { /* p->msg = m, taking a new reference */
    if (m) m->refs++;
    msg_unref(p->msg);
    p->msg = m;
}

static void p_end(Parser *p) {
    if (p->msg != NULL && !p->msg->done) p->msg->done = 1;
    set_msg(p, NULL);
    p->state = HEAD;
}

/* The direction lost its place: the message in progress ends with an unknown size, and bytes
 * are ignored until a segment starts with a head (HttpParser._desync / _malformed). */
static int p_lose(Parser *p, PyObject *counter) {
    if (p->msg != NULL && !p->msg->done) {
        p->msg->body_bytes = -1;
        p_end(p);
    }
    buf_clear(&p->buf);
    set_msg(p, NULL);
    p->state = DESYNC;
    return count(p->conn, counter);
}

static int p_desync(Parser *p) { return p_lose(p, s_desync); }

static int p_malformed(Parser *p) { return p_lose(p, s_malformed); }

static void p_enter_tunnel(Parser *p) {
    p->state = TUNNEL;
    buf_clear(&p->buf);
}

/* A header value as Python has it: bytes.strip(), then decoded as Latin-1. */
static PyObject *header_value(const char *v, Py_ssize_t n) {
    while (n > 0 && ascii_space((unsigned char)v[0])) v++, n--;
    while (n > 0 && ascii_space((unsigned char)v[n - 1])) n--;
    return PyUnicode_DecodeLatin1(v, n, NULL);
}

/* Content-Length: every comma-separated part of every occurrence, str.strip()ped, must be the
 * same string of ASCII digits (repeated identical values are allowed, RFC 9110 8.6). */
static void content_length(Msg *m, const char *v, Py_ssize_t n, const char **first, Py_ssize_t *first_n) {
    Py_ssize_t i = 0;
    for (;;) {
        Py_ssize_t j = i;
        while (j < n && v[j] != ',') j++;
        const char *a = v + i;
        Py_ssize_t len = j - i;
        while (len > 0 && latin1_space((unsigned char)a[0])) a++, len--;
        while (len > 0 && latin1_space((unsigned char)a[len - 1])) len--;
        if (*first == NULL) {
            *first = a;
            *first_n = len;
        } else if (len != *first_n || memcmp(a, *first, len) != 0) {
            m->cl = -1;
        }
        if (j >= n) break;
        i = j + 1;
    }
}

/* The value as bytes.strip()/decode/str.rstrip().lower() would leave it: does it end with "chunked"? */
static int ends_chunked(const char *v, Py_ssize_t n) {
    while (n > 0 && latin1_space((unsigned char)v[n - 1])) n--;
    if (n < 7) return 0;
    for (int i = 0; i < 7; i++)
        if (lower((unsigned char)v[n - 7 + i]) != "chunked"[i]) return 0;
    return 1;
}

static const struct {
    const char *name;
    int len, out; /* out: row column, or -1 (framing), -2 content-length, -3 transfer-encoding */
} WANTED[] = {
    {"content-length", 14, -2}, {"transfer-encoding", 17, -3}, {"host", 4, H_HOST},
    {"user-agent", 10, H_USER_AGENT}, {"content-type", 12, H_CONTENT_TYPE}, {"traceparent", 11, H_TRACEPARENT},
    {"tracestate", 10, H_TRACESTATE},
};

static int wanted_at(const char *p, Py_ssize_t n, Py_ssize_t *name_len) {
    for (size_t w = 0; w < sizeof(WANTED) / sizeof(WANTED[0]); w++) {
        int len = WANTED[w].len;
        if (n < len + 1 || p[len] != ':') continue;
        int i = 0;
        while (i < len && lower((unsigned char)p[i]) == WANTED[w].name[i]) i++;
        if (i == len) {
            *name_len = len;
            return (int)w;
        }
    }
    return -1;
}

static PyObject *redacted_path(const char *t, Py_ssize_t n, int redact) {
    const char *q = redact ? memchr(t, '?', n) : NULL;
    if (q == NULL) return PyUnicode_DecodeLatin1(t, n, NULL);
    char small[512];
    char *out = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc(n);
    if (out == NULL) return PyErr_NoMemory();
    Py_ssize_t o = q - t + 1;
    memcpy(out, t, o);
    int in_value = 0;
    for (Py_ssize_t i = o; i < n; i++) {
        char c = t[i];
        if (c == '&') in_value = 0;
        else if (in_value) continue;
        else if (c == '=') in_value = 1;
        out[o++] = c;
    }
    PyObject *r = PyUnicode_DecodeLatin1(out, o, NULL);
    if (out != small) PyMem_Free(out);
    return r;
}

/* The HTTP-version token: 1 set, 0 not "HTTP/...", -1 error. */
static int set_version(Msg *m, const char *v, Py_ssize_t n) {
    if (n == 8 && memcmp(v, "HTTP/1.1", 8) == 0) m->version = Py_NewRef(http11);
    else if (n == 8 && memcmp(v, "HTTP/1.0", 8) == 0) m->version = Py_NewRef(http10);
    else if (n >= 5 && memcmp(v, "HTTP/", 5) == 0) return (m->version = PyUnicode_DecodeLatin1(v, n, NULL)) == NULL ? -1 : 1;
    else return 0;
    return 1;
}

/* Start line and wanted headers of head[0:n]; *out = NULL when the start line is not HTTP.
 * complete=0: the head was cut; only lines ending before the cut are read. Returns -1 on error. */
static int parse_head(Parser *p, int64_t ts, const char *head, Py_ssize_t n, int complete, Msg **out) {
    *out = NULL;
    const char *eolp = find(head, n, "\r\n", 2);
    if (eolp == NULL) return 0;
    Py_ssize_t eol = eolp - head;
    /* head[:eol].split(b" ", 2) */
    const char *part[3];
    Py_ssize_t plen[3];
    int parts = 0;
    Py_ssize_t i = 0;
    while (parts < 2) {
        const char *sp = memchr(head + i, ' ', eol - i);
        if (sp == NULL) break;
        part[parts] = head + i;
        plen[parts++] = sp - (head + i);
        i = sp - head + 1;
    }
    part[parts] = head + i;
    plen[parts++] = eol - i;

    Msg *m = msg_new(p->is_request, ts);
    if (m == NULL) return -1;
    if (p->is_request) {
        if (parts != 3) goto not_http;
        int k = known_method(part[0], plen[0]);
        if (k >= 0) {
            m->method = Py_NewRef(method_str[k]);
            m->method_kind = (k == 1) ? M_HEAD : (k == 5) ? M_CONNECT : M_OTHER;
        } else {
            if (plen[0] == 0) goto not_http;
            for (Py_ssize_t j = 0; j < plen[0]; j++)
                if (!is_tchar((unsigned char)part[0][j])) goto not_http;
            m->method = PyUnicode_DecodeASCII(part[0], plen[0], NULL);
            if (m->method == NULL) goto fail;
        }
        int ok = set_version(m, part[2], plen[2]);
        if (ok < 0) goto fail;
        if (ok == 0) goto not_http;
        if ((m->path = redacted_path(part[1], plen[1], p->conn->redact)) == NULL) goto fail;
    } else {
        if (parts < 2) goto not_http;
        int ok = set_version(m, part[0], plen[0]);
        if (ok < 0) goto fail;
        if (ok == 0 || plen[1] != 3) goto not_http;
        int status = 0;
        for (int j = 0; j < 3; j++) {
            unsigned char c = (unsigned char)part[1][j];
            if (c < '0' || c > '9') goto not_http;
            status = status * 10 + (c - '0');
        }
        m->status = status;
    }
    Py_ssize_t end = n;
    if (!complete) {
        const char *last = NULL;
        for (const char *s = head; (s = find(s, n - (s - head), "\r\n", 2)) != NULL; s += 2) last = s;
        end = last - head + 2;
    }
    /* Every "\r\n<wanted name>:<value>" in head[eol:end], left to right without overlap, as
     * re.findall does. */
    const char *cl_first = NULL;
    Py_ssize_t cl_first_n = 0;
    Py_ssize_t at = eol;
    while (at + 1 < end) {
        const char *crlf = find(head + at, end - at, "\r\n", 2);
        if (crlf == NULL) break;
        Py_ssize_t name = crlf - head + 2, name_len;
        int w = wanted_at(head + name, end - name, &name_len);
        if (w < 0) {
            at = crlf - head + 1;
            continue;
        }
        Py_ssize_t vs = name + name_len + 1, ve = vs;
        while (ve < end && head[ve] != '\r' && head[ve] != '\n') ve++;
        at = ve;
        int o = WANTED[w].out;
        if (o == -2) {
            m->cl_present = 1;
            content_length(m, head + vs, ve - vs, &cl_first, &cl_first_n);
        } else if (o == -3) {
            /* the joined value ends with the last one (an empty last one leaves ", ": not chunked) */
            m->te_chunked = (char)ends_chunked(head + vs, ve - vs);
        } else {
            PyObject *val = header_value(head + vs, ve - vs);
            if (val == NULL) goto fail;
            if (m->hdr[o] == NULL) m->hdr[o] = val;
            else { /* repeats joined with ", ", as RFC 9110 5.3 allows */
                PyObject *a = PyUnicode_Concat(m->hdr[o], comma_sp);
                PyObject *b = a ? PyUnicode_Concat(a, val) : NULL;
                Py_XDECREF(a);
                Py_DECREF(val);
                if (b == NULL) goto fail;
                Py_SETREF(m->hdr[o], b);
            }
        }
    }
    if (m->cl_present && m->cl >= 0) {
        if (cl_first_n == 0 || cl_first_n > MAX_DIGITS) m->cl = -1;
        else {
            int64_t v = 0;
            for (Py_ssize_t j = 0; j < cl_first_n; j++) {
                unsigned char c = (unsigned char)cl_first[j];
                if (c < '0' || c > '9') {
                    v = -1;
                    break;
                }
                v = v * 10 + (c - '0');
            }
            m->cl = v;
        }
    }
    *out = m;
    return 0;
not_http:
    msg_unref(m);
    return 0;
fail:
    msg_unref(m);
    return -1;
}

static int on_request(Conn *c, Msg *m);
static int on_response(Conn *c, Msg *m, int *method_kind);

/* HttpParser.on_head: *method_kind is the method of the request a response answers */
static int p_on_head(Parser *p, Msg *m, int *method_kind) {
    *method_kind = M_OTHER;
    if (p->is_request) return on_request(p->conn, m);
    return on_response(p->conn, m, method_kind);
}

/* RFC 9112 6.3: how this message's body ends. */
static int p_frame(Parser *p, Msg *m, int method_kind) {
    if (!m->is_request) {
        int status = m->status < 0 ? 0 : m->status;
        if (status == 101 || (method_kind == M_CONNECT && status >= 200 && status < 300)) {
            p_end(p);
            p->state = TUNNEL;
            return 0;
        }
        if (method_kind == M_HEAD || status < 200 || status == 204 || status == 304) {
            p_end(p);
            return 0;
        }
    }
    if (m->te_chunked) {
        p->state = CHUNK_SIZE;
        return 0;
    }
    if (m->cl_present) {
        if (m->cl < 0) {
            m->body_bytes = -1;
            p_end(p);
            return p_malformed(p);
        }
        if (m->cl == 0) {
            p_end(p);
            return 0;
        }
        p->remaining = m->cl;
        p->state = BODY;
        return 0;
    }
    if (m->is_request) {
        p_end(p);
        return 0;
    }
    p->state = UNTIL_CLOSE;
    return 0;
}

static int p_start(Parser *p, int64_t ts, int64_t at, const char *head, Py_ssize_t n) {
    Msg *m;
    if (parse_head(p, ts, head, n, 1, &m) < 0) return -1;
    if (m == NULL) return p_malformed(p);
    m->at = at;
    m->head_bytes = n;
    set_msg(p, m);
    int kind, r = p_on_head(p, m, &kind);
    if (r == 0) r = p_frame(p, m, kind);
    msg_unref(m);
    return r;
}

/* HEAD state; returns the new position or -1 on error. */
static Py_ssize_t p_head(Parser *p, int64_t ts, const char *d, Py_ssize_t pos, Py_ssize_t end) {
    if (p->buf.len == 0) {
        while (pos + 1 < end && d[pos] == '\r' && d[pos + 1] == '\n') pos += 2; /* RFC 9112 2.2 */
        if (pos >= end) return end;
        const char *i = find(d + pos, end - pos, "\r\n\r\n", 4);
        if (i != NULL) {
            Py_ssize_t stop = i - d + 4;
            if (p_start(p, ts, p->base + pos, d + pos, stop - pos) < 0) return -1;
            return stop;
        }
        p->buf_ts = ts;
        p->buf_at = p->base + pos;
        if (buf_add(&p->buf, d + pos, end - pos) < 0) return -1;
        if (p->buf.len > MAX_HEAD && p_malformed(p) < 0) return -1;
        return end;
    }
    Py_ssize_t old = p->buf.len;
    if (buf_add(&p->buf, d + pos, end - pos) < 0) return -1;
    Py_ssize_t from = old > 3 ? old - 3 : 0;
    const char *i = find(p->buf.data + from, p->buf.len - from, "\r\n\r\n", 4);
    if (i == NULL) {
        if (p->buf.len > MAX_HEAD && p_malformed(p) < 0) return -1;
        return end;
    }
    Py_ssize_t hl = i - p->buf.data + 4;
    /* the head leaves buf before it is parsed (parsing may clear buf) */
    char *head = PyMem_Malloc(hl);
    if (head == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(head, p->buf.data, hl);
    buf_clear(&p->buf);
    int r = p_start(p, p->buf_ts, p->buf_at, head, hl);
    PyMem_Free(head);
    if (r < 0) return -1;
    return pos + (hl - old);
}

static int p_pass(Parser *p, int64_t n) {
    p->remaining -= n;
    p->msg->body_bytes += n;
    if (p->remaining == 0) {
        if (p->state == BODY) p_end(p);
        else p->state = CHUNK_SIZE;
    }
    return 0;
}

/* strict chunk-size: 1*HEXDIG (RFC 9112 7.1), at most MAX_HEX digits */
static int64_t parse_hex(const char *s, Py_ssize_t n) {
    if (n == 0 || n > MAX_HEX) return -1;
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int c = lower((unsigned char)s[i]), d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* CHUNK_SIZE / TRAILERS: gather one line, then act on it. */
static Py_ssize_t p_line(Parser *p, const char *d, Py_ssize_t pos, Py_ssize_t end) {
    const char *nl = memchr(d + pos, '\n', end - pos);
    if (nl == NULL) {
        if (buf_add(&p->buf, d + pos, end - pos) < 0) return -1;
        p->msg->body_bytes += end - pos;
        if (p->buf.len > MAX_LINE && p_desync(p) < 0) return -1;
        return end;
    }
    Py_ssize_t i = nl - d;
    if (buf_add(&p->buf, d + pos, i + 1 - pos) < 0) return -1;
    p->msg->body_bytes += i + 1 - pos;
    const char *s = p->buf.data;
    Py_ssize_t n = p->buf.len;
    while (n > 0 && ascii_space((unsigned char)s[0])) s++, n--;
    while (n > 0 && ascii_space((unsigned char)s[n - 1])) n--;
    if (p->state == TRAILERS) {
        buf_clear(&p->buf);
        if (n == 0) p_end(p);
        return i + 1;
    }
    const char *semi = memchr(s, ';', n); /* chunk extensions follow ';' */
    if (semi != NULL) n = semi - s;
    while (n > 0 && ascii_space((unsigned char)s[0])) s++, n--;
    while (n > 0 && ascii_space((unsigned char)s[n - 1])) n--;
    int64_t size = parse_hex(s, n);
    buf_clear(&p->buf);
    if (size < 0) {
        if (p_malformed(p) < 0) return -1;
        return end;
    }
    if (size == 0) p->state = TRAILERS;
    else {
        p->remaining = size + 2; /* the chunk's data and its CRLF */
        p->state = CHUNK_DATA;
    }
    return i + 1;
}

static int p_cut_head(Parser *p) {
    Msg *m;
    Py_ssize_t n = p->buf.len;
    char *head = PyMem_Malloc(n ? n : 1);
    if (head == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(head, p->buf.data, n);
    int r = parse_head(p, p->buf_ts, head, n, 0, &m);
    PyMem_Free(head);
    if (r < 0) return -1;
    buf_clear(&p->buf);
    if (m == NULL) return p_desync(p);
    if (count(p->conn, s_truncated) < 0) {
        msg_unref(m);
        return -1;
    }
    m->at = p->buf_at;
    m->head_bytes = -1;
    m->body_bytes = -1;
    set_msg(p, m);
    int kind;
    r = p_on_head(p, m, &kind);
    int no_body = !p->is_request && (msg_interim(m) || m->status == 204 || m->status == 304 || kind == M_HEAD);
    msg_unref(m);
    if (r < 0) return -1;
    if (no_body) { /* the next head follows the cut one in stream order */
        p_end(p);
        p->state = DESYNC;
        return 0;
    }
    return p_desync(p);
}

/* n bytes passed that we did not see */
static int p_skip(Parser *p, int64_t n) {
    while (n > 0) {
        int s = p->state;
        if (s == BODY || s == CHUNK_DATA) {
            int64_t take = p->remaining < n ? p->remaining : n;
            p_pass(p, take);
            n -= take;
        } else if (s == UNTIL_CLOSE) {
            p->msg->body_bytes += n;
            return 0;
        } else if (s == TUNNEL || s == DESYNC) {
            return 0;
        } else if (s == HEAD && p->buf.len) {
            return p_cut_head(p);
        } else {
            return p_desync(p);
        }
    }
    return 0;
}

static int p_feed(Parser *p, int64_t ts, const char *d, Py_ssize_t end, int64_t length) {
    p->base = p->fed;
    p->fed += length > end ? length : end;
    if (p->state == DESYNC) {
        int ok = p->is_request ? looks_like_request(d, end) : looks_like_response(d, end);
        if (end && ok) p->state = HEAD;
        else return 0;
    }
    Py_ssize_t pos = 0;
    while (pos < end) {
        int s = p->state;
        if (s == HEAD) pos = p_head(p, ts, d, pos, end);
        else if (s == BODY || s == CHUNK_DATA) {
            int64_t take = p->remaining < end - pos ? p->remaining : end - pos;
            p_pass(p, take);
            pos += take;
        } else if (s == CHUNK_SIZE || s == TRAILERS) pos = p_line(p, d, pos, end);
        else if (s == UNTIL_CLOSE) {
            p->msg->body_bytes += end - pos;
            pos = end;
        } else break;
        if (pos < 0) return -1;
    }
    if (length > end) return p_skip(p, length - end);
    return 0;
}

static int p_close(Parser *p) {
    int r = 0;
    if (p->state == UNTIL_CLOSE && p->msg != NULL) p_end(p);
    else if (p->msg != NULL && !p->msg->done) {
        p->msg->body_bytes = -1;
        p_end(p);
    } else if (p->state == HEAD) {
        Py_ssize_t i = 0;
        while (i < p->buf.len && ascii_space((unsigned char)p->buf.data[i])) i++;
        if (i < p->buf.len) r = p_cut_head(p);
    }
    p->state = TUNNEL;
    return r;
}

/* --- pairing -------------------------------------------------------------------------------- */

static int on_request(Conn *c, Msg *m) {
    if (c->x0 + c->xn == c->xcap) {
        if (c->x0 > 0) { /* slide the live exchanges to the front */
            memmove(c->xs, c->xs + c->x0, c->xn * sizeof(Exchange));
            c->x0 = 0;
        }
        if (c->xn == c->xcap) {
            Py_ssize_t cap = c->xcap ? c->xcap * 2 : 4;
            Exchange *xs = PyMem_Realloc(c->xs, cap * sizeof(Exchange));
            if (xs == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            c->xs = xs;
            c->xcap = cap;
        }
    }
    Exchange *x = &c->xs[c->x0 + c->xn++];
    x->request = m;
    m->refs++;
    x->response = NULL;
    x->interim_bytes = 0;
    return 0;
}

static int on_response(Conn *c, Msg *m, int *method_kind) {
    Exchange *x = NULL;
    for (Py_ssize_t i = 0; i < c->xn; i++)
        if (c->xs[c->x0 + i].response == NULL) {
            x = &c->xs[c->x0 + i];
            break;
        }
    if (x == NULL) return count(c, s_orphan); /* recording started mid-connection, or a lost request */
    *method_kind = x->request->method_kind;
    if (msg_interim(m) && m->status != 101) { /* 101 is final: the tunnel follows */
        x->interim_bytes = (x->interim_bytes < 0 || m->head_bytes < 0) ? -1 : x->interim_bytes + m->head_bytes;
        return 0;
    }
    x->response = m;
    m->refs++;
    if (m->status == 101 || (*method_kind == M_CONNECT && m->status >= 200 && m->status < 300))
        p_enter_tunnel(&c->req);
    return 0;
}

static PyObject *int_or_none(int64_t v) { return v < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(v); }

static PyObject *obj_or_none(PyObject *o) { return Py_NewRef(o ? o : Py_None); }

/* One row tuple in http_pairing.EXCHANGE_FIELDS order. */
static PyObject *row(Conn *c, Exchange *x) {
    Msg *q = x->request, *r = x->response;
    PyObject *t = PyTuple_New(N_ROW);
    if (t == NULL) return NULL;
    int64_t size = (r == NULL || !r->done) ? -1 : msg_size(r);
    int64_t resp_bytes = (size < 0 || x->interim_bytes < 0) ? -1 : size + x->interim_bytes;
    PyObject *v[N_ROW];
    v[0] = PyLong_FromLongLong(q->ts);
    v[1] = r ? PyLong_FromLongLong(r->ts) : Py_NewRef(Py_None);
    v[2] = r ? PyLong_FromLongLong(r->ts - q->ts) : Py_NewRef(Py_None);
    v[3] = obj_or_none(q->version);
    v[4] = obj_or_none(q->method);
    v[5] = obj_or_none(q->path ? q->path : empty_str);
    v[6] = (r && r->status >= 0) ? PyLong_FromLong(r->status) : Py_NewRef(Py_None);
    v[7] = q->done ? int_or_none(msg_size(q)) : Py_NewRef(Py_None);
    v[8] = int_or_none(resp_bytes);
    v[9] = obj_or_none((c->allow & (1 << H_HOST)) ? q->hdr[H_HOST] : NULL);
    v[10] = obj_or_none((c->allow & (1 << H_TRACEPARENT)) ? q->hdr[H_TRACEPARENT] : NULL);
    v[11] = obj_or_none((c->allow & (1 << H_USER_AGENT)) ? q->hdr[H_USER_AGENT] : NULL);
    v[12] = obj_or_none((r && (c->allow & (1 << H_CONTENT_TYPE))) ? r->hdr[H_CONTENT_TYPE] : NULL);
    v[13] = obj_or_none((c->allow & (1 << H_TRACESTATE)) ? q->hdr[H_TRACESTATE] : NULL);
    v[14] = c->seq_base[1] < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong((c->seq_base[1] + q->at) & 0xffffffffLL);
    v[15] = (c->seq_base[0] < 0 || r == NULL) ? Py_NewRef(Py_None) : PyLong_FromLongLong((c->seq_base[0] + r->at) & 0xffffffffLL);
    int bad = 0;
    for (int i = 0; i < N_ROW; i++) {
        if (v[i] == NULL) bad = 1;
        PyTuple_SET_ITEM(t, i, v[i] ? v[i] : Py_NewRef(Py_None));
    }
    if (bad) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static void drop_front(Conn *c) {
    Exchange *x = &c->xs[c->x0];
    msg_unref(x->request);
    msg_unref(x->response);
    c->x0++;
    c->xn--;
    if (c->xn == 0) c->x0 = 0;
}

static int ready(Conn *c, PyObject *rows) {
    while (c->xn) {
        Exchange *x = &c->xs[c->x0];
        if (!(x->request->done && x->response != NULL && x->response->done) && c->xn <= MAX_PENDING) break;
        PyObject *t = row(c, x);
        if (t == NULL) return -1;
        int r = PyList_Append(rows, t);
        Py_DECREF(t);
        if (r < 0) return -1;
        drop_front(c);
    }
    return 0;
}

/* --- the Python type ------------------------------------------------------------------------ */

static int Conn_init(Conn *c, PyObject *args, PyObject *kw) {
    static char *names[] = {"stats", "redact", "allow", NULL};
    PyObject *stats = Py_None;
    int redact = 1, allow = (1 << N_OUT_HEADERS) - 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Opi", names, &stats, &redact, &allow)) return -1;
    Py_XSETREF(c->stats, Py_NewRef(stats));
    c->redact = (char)redact;
    c->allow = allow;
    return 0;
}

static void Conn_dealloc(Conn *c) {
    for (Py_ssize_t i = 0; i < c->xn; i++) {
        msg_unref(c->xs[c->x0 + i].request);
        msg_unref(c->xs[c->x0 + i].response);
    }
    PyMem_Free(c->xs);
    Parser *ps[2] = {&c->req, &c->resp};
    for (int i = 0; i < 2; i++) {
        msg_unref(ps[i]->msg);
        PyMem_Free(ps[i]->buf.data);
    }
    Py_XDECREF(c->stats);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* One segment of one direction; the exchanges it ended are appended to rows. */
static int conn_feed(Conn *c, int64_t ts, const unsigned char *d, Py_ssize_t n, int from_client, int64_t length, PyObject *rows) {
    if (c->fresh && n) {
        c->fresh = 0;
        if (is_http2(d, n, from_client)) { /* ALPN h2 or prior knowledge: a note, not a loss */
            p_enter_tunnel(&c->req);
            p_enter_tunnel(&c->resp);
            return count(c, s_http2);
        }
    }
    if (p_feed(from_client ? &c->req : &c->resp, ts, (const char *)d, n, length) < 0) return -1;
    return ready(c, rows);
}

/* feed_tuples(ts_ns, data, from_client, length=None) -> list of row tuples */
static PyObject *Conn_feed(Conn *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "feed_tuples(ts_ns, data, from_client, length=None)");
        return NULL;
    }
    int64_t ts = PyLong_AsLongLong(args[0]);
    if (ts == -1 && PyErr_Occurred()) return NULL;
    int from_client = PyObject_IsTrue(args[2]);
    if (from_client < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    int64_t length = view.len;
    if (nargs == 4 && args[3] != Py_None) {
        length = PyLong_AsLongLong(args[3]);
        if (length == -1 && PyErr_Occurred()) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    PyObject *rows = PyList_New(0);
    if (rows != NULL && conn_feed(c, ts, view.buf, view.len, from_client, length, rows) < 0) Py_CLEAR(rows);
    PyBuffer_Release(&view);
    return rows;
}

/* close_tuples(ts_ns) -> every pending exchange as a row tuple */
static PyObject *Conn_close(Conn *c, PyObject *arg) {
    PyObject *rows = PyList_New(0);
    if (rows == NULL || c->closed) return rows;
    c->closed = 1;
    if (p_close(&c->req) < 0 || p_close(&c->resp) < 0) goto fail;
    while (c->xn) {
        PyObject *t = row(c, &c->xs[c->x0]);
        if (t == NULL || PyList_Append(rows, t) < 0) {
            Py_XDECREF(t);
            goto fail;
        }
        Py_DECREF(t);
        drop_front(c);
    }
    return rows;
fail:
    Py_DECREF(rows);
    return NULL;
}

/* set_seq_base(from_client, seq): the TCP sequence number of the first byte this direction is fed */
static PyObject *Conn_set_seq_base(Conn *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_seq_base(from_client, seq)");
        return NULL;
    }
    int from_client = PyObject_IsTrue(args[0]);
    if (from_client < 0) return NULL;
    unsigned long long seq = PyLong_AsUnsignedLongLongMask(args[1]);
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    c->seq_base[from_client ? 1 : 0] = (int64_t)(seq & 0xffffffffULL);
    Py_RETURN_NONE;
}

/* body_remaining(from_client) -> bytes of a Content-Length body still to pass, else 0 */
static PyObject *Conn_body_remaining(Conn *c, PyObject *arg) {
    int from_client = PyObject_IsTrue(arg);
    if (from_client < 0) return NULL;
    Parser *p = from_client ? &c->req : &c->resp;
    return PyLong_FromLongLong(p->state == BODY ? p->remaining : 0);
}

static PyMethodDef Conn_methods[] = {
    {"feed_tuples", (PyCFunction)(void (*)(void))Conn_feed, METH_FASTCALL, "One segment of one direction, in stream order."},
    {"close_tuples", (PyCFunction)Conn_close, METH_O, "The connection ended: every pending exchange."},
    {"body_remaining", (PyCFunction)Conn_body_remaining, METH_O, "Bytes of a Content-Length body still to pass."},
    {"set_seq_base", (PyCFunction)(void (*)(void))Conn_set_seq_base, METH_FASTCALL, "TCP sequence number of a direction's first byte."},
    {NULL},
};

static PyObject *Conn_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Conn *c = (Conn *)type->tp_alloc(type, 0); /* zeroed: a usable connection even before __init__ */
    if (c == NULL) return NULL;
    c->stats = Py_NewRef(Py_None);
    c->redact = 1;
    c->allow = (1 << N_OUT_HEADERS) - 1;
    c->fresh = 1;
    c->seq_base[0] = c->seq_base[1] = -1;
    c->req.is_request = 1;
    c->req.conn = c->resp.conn = c;
    return (PyObject *)c;
}

static PyTypeObject ConnType = {
    .ob_base = PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "flowtape.capture._http1.Http1Connection",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Both directions of one HTTP/1.x connection (compiled twin of http_pairing.HttpConnection).",
    .tp_new = Conn_new,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_methods = Conn_methods,
};

/* --- the recorder's loop over ring-buffer records (capture/l7.py L7Decoder.feed_batch) -------- */

static PyObject *a_dns, *a_dirs, *a_next, *a_held, *a_skip_to, *a_http, *a_key, *a_last_ts, *s_http_table;

#define SEQ_MASK 0xFFFFFFFFull

/* Offsets of struct l7_event's fields (capture/l7.py HeaderDecoder.layout) and its kinds. */
typedef struct {
    Py_ssize_t kind, ts, length, seq, cap, saddr, daddr, sport, dport, from_client, data, skaddr, ssl, pid;
    int http_kind, ssl_write_kind, ssl_read_kind;
} Layout;

#define LAYOUT_LEN 17

static int read_layout(PyObject *t, Layout *l) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != LAYOUT_LEN) {
        PyErr_SetString(PyExc_TypeError, "layout: a tuple of 17 ints");
        return -1;
    }
    Py_ssize_t v[LAYOUT_LEN];
    for (int i = 0; i < LAYOUT_LEN; i++) {
        v[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, i));
        if (v[i] < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "layout: negative offset");
            return -1;
        }
    }
    *l = (Layout){v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13],
                  (int)v[14], (int)v[15], (int)v[16]};
    /* every header field lies before data[]: records are checked to be at least that long */
    const Py_ssize_t ends[] = {l->kind + 1, l->ts + 8, l->length + 4, l->seq + 4, l->cap + 2, l->saddr + 16, l->daddr + 16,
                               l->sport + 2, l->dport + 2, l->from_client + 1, l->skaddr + 8, l->ssl + 8, l->pid + 4};
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++)
        if (ends[i] > l->data) {
            PyErr_SetString(PyExc_ValueError, "layout: a header field ends past the data offset");
            return -1;
        }
    return 0;
}

static uint64_t rd64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* pending_append((ready, "http", join, row)) for each row, as L7Decoder._pend does */
static int pend_rows(PyObject *rows, int64_t ready_ns, PyObject *join, PyObject *append) {
    if (PyList_GET_SIZE(rows) == 0) return 0;
    PyObject *when = PyLong_FromLongLong(ready_ns);
    if (when == NULL) return -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rows); i++) {
        PyObject *item = PyTuple_Pack(4, when, s_http_table, join, PyList_GET_ITEM(rows, i));
        PyObject *res = item ? PyObject_CallOneArg(append, item) : NULL;
        Py_XDECREF(item);
        if (res == NULL) {
            Py_DECREF(when);
            return -1;
        }
        Py_DECREF(res);
    }
    Py_DECREF(when);
    return 0;
}

/* 1: fast path taken; 0: not for us (Python's _feed_one takes the record); -1: error.
 * *skip_flow is set (new ref) when a long Content-Length body now follows in this direction. */
static PyObject *a_feed_tuples;

/* h2 (capture/decode/_http2.c's H2Connection) takes a segment by its feed_tuples method: one C call,
 * no Python frame. Its rows go to *rows (a new list). */
static int h2_feed(PyObject *h2, int64_t ts, const char *d, Py_ssize_t n, int from_client, int64_t length, PyObject **rows) {
    PyObject *args[5] = {h2, PyLong_FromLongLong(ts), PyBytes_FromStringAndSize(d, n), from_client ? Py_True : Py_False,
                         PyLong_FromLongLong(length)};
    *rows = NULL;
    if (args[1] && args[2] && args[4])
        *rows = PyObject_VectorcallMethod(a_feed_tuples, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(args[1]);
    Py_XDECREF(args[2]);
    Py_XDECREF(args[4]);
    if (*rows != NULL && !PyList_Check(*rows)) {
        PyErr_SetString(PyExc_TypeError, "feed_http: the HTTP/2 decoder's feed_tuples did not return a list");
        Py_CLEAR(*rows);
    }
    return *rows == NULL ? -1 : 0;
}

static int fast_record(PyObject *raw, const Layout *l, PyObject *flows, int64_t offset, int64_t *last_ts,
                       PyObject *append, int64_t grace, int64_t skip_min, PyObject **skip_flow, int *skip_dir, PyObject *h2_type) {
    const char *b = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    int64_t ts = (int64_t)rd64(b + l->ts);
    uint32_t length = rd32(b + l->length), seq = rd32(b + l->seq);
    Py_ssize_t cap = rd16(b + l->cap);
    unsigned char side = (unsigned char)b[l->from_client];
    int from_client = side == 1;
    if (cap > n - l->data || side > 1) return 0; /* not as the kernel writes them: the Python path decides */
    uint16_t sport = rd16(b + l->sport), dport = rd16(b + l->dport);
    PyObject *src = PyBytes_FromStringAndSize(b + l->saddr, 16), *dst = PyBytes_FromStringAndSize(b + l->daddr, 16);
    PyObject *sp = PyLong_FromLong(sport), *dp = PyLong_FromLong(dport);
    PyObject *key = (src && dst && sp && dp) ? (from_client ? PyTuple_Pack(4, src, sp, dst, dp) : PyTuple_Pack(4, dst, dp, src, sp)) : NULL;
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_XDECREF(sp);
    Py_XDECREF(dp);
    if (key == NULL) return -1;
    PyObject *flow = PyDict_GetItemWithError(flows, key); /* borrowed */
    Py_DECREF(key);
    if (flow == NULL) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(flow);
    int r = 0;
    PyObject *dns = NULL, *dirs = NULL, *dirn = NULL, *next = NULL, *held = NULL, *skip_to = NULL, *http = NULL, *fkey = NULL, *rows = NULL;
    if ((dns = PyObject_GetAttr(flow, a_dns)) == NULL) goto error;
    if (dns != Py_False) goto out; /* a DNS-over-TCP flow */
    if ((dirs = PyObject_GetAttr(flow, a_dirs)) == NULL) goto error;
    if (!PyTuple_Check(dirs) || PyTuple_GET_SIZE(dirs) != 2) goto out;
    dirn = Py_NewRef(PyTuple_GET_ITEM(dirs, from_client));
    if ((next = PyObject_GetAttr(dirn, a_next)) == NULL) goto error;
    if (!PyLong_Check(next) || PyLong_AsUnsignedLongLongMask(next) != seq) goto out;
    if ((held = PyObject_GetAttr(dirn, a_held)) == NULL) goto error;
    if (!PyDict_Check(held) || PyDict_GET_SIZE(held) != 0) goto out;
    if ((skip_to = PyObject_GetAttr(dirn, a_skip_to)) == NULL) goto error;
    if (skip_to != Py_None) goto out;
    if ((http = PyObject_GetAttr(flow, a_http)) == NULL) goto error;
    int is_h2 = h2_type != NULL && Py_IS_TYPE(http, (PyTypeObject *)h2_type);
    if (!is_h2 && !PyObject_TypeCheck(http, &ConnType)) goto out; /* a Python decoder: the Python path */
    /* the in-order case of SegmentOrder.push (capture/decode/tcp_order.py) */
    if (ts > *last_ts) *last_ts = ts;
    PyObject *v = PyLong_FromLongLong(ts);
    if (v == NULL || PyObject_SetAttr(flow, a_last_ts, v) < 0) {
        Py_XDECREF(v);
        goto error;
    }
    Py_DECREF(v);
    v = PyLong_FromUnsignedLongLong(((uint64_t)seq + length) & SEQ_MASK);
    if (v == NULL || PyObject_SetAttr(dirn, a_next, v) < 0) {
        Py_XDECREF(v);
        goto error;
    }
    Py_DECREF(v);
    r = 1;
    if (is_h2) { /* (its body_remaining is always 0: no body to skip) */
        if (h2_feed(http, ts + offset, b + l->data, cap, from_client, length, &rows) < 0) goto error;
        if (PyList_GET_SIZE(rows)) {
            if ((fkey = PyObject_GetAttr(flow, a_key)) == NULL || pend_rows(rows, *last_ts + grace, fkey, append) < 0) goto error;
        }
        goto out;
    }
    Conn *c = (Conn *)http;
    if ((rows = PyList_New(0)) == NULL) goto error;
    if (conn_feed(c, ts + offset, (const unsigned char *)b + l->data, cap, from_client, length, rows) < 0) goto error;
    if (PyList_GET_SIZE(rows)) {
        if ((fkey = PyObject_GetAttr(flow, a_key)) == NULL || pend_rows(rows, *last_ts + grace, fkey, append) < 0) goto error;
    }
    Parser *p = from_client ? &c->req : &c->resp;
    if (skip_min >= 0 && p->state == BODY && p->remaining > skip_min) {
        *skip_flow = Py_NewRef(flow);
        *skip_dir = from_client;
    }
    goto out;
error:
    r = -1;
out:
    Py_XDECREF(dns);
    Py_XDECREF(dirs);
    Py_XDECREF(dirn);
    Py_XDECREF(next);
    Py_XDECREF(held);
    Py_XDECREF(skip_to);
    Py_XDECREF(http);
    Py_XDECREF(fkey);
    Py_XDECREF(rows);
    Py_DECREF(flow);
    return r;
}

static PyObject *a_skaddr, *a_side, *s_client;

/* An SSL_read/SSL_write record of a stream already followed: L7Decoder._ssl for a known
 * stream whose SSL* was not reused. 1: taken; 0: Python's; -1: error. */
static int fast_ssl(PyObject *raw, const Layout *l, PyObject *streams, int64_t offset, int64_t *last_ts,
                    PyObject *append, int64_t grace, PyObject *h2_type) {
    const char *b = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    int kind = (unsigned char)b[l->kind];
    int64_t ts = (int64_t)rd64(b + l->ts);
    uint64_t skaddr = rd64(b + l->skaddr), ssl = rd64(b + l->ssl);
    uint32_t length = rd32(b + l->length), pid = rd32(b + l->pid);
    Py_ssize_t cap = rd16(b + l->cap);
    if (cap > n - l->data) return 0;
    PyObject *k1 = PyLong_FromUnsignedLong(pid), *k2 = PyLong_FromUnsignedLongLong(ssl);
    PyObject *key = (k1 && k2) ? PyTuple_Pack(2, k1, k2) : NULL;
    Py_XDECREF(k1);
    Py_XDECREF(k2);
    if (key == NULL) return -1;
    PyObject *st = PyDict_GetItemWithError(streams, key); /* borrowed */
    Py_DECREF(key);
    if (st == NULL) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(st);
    int r = 0;
    PyObject *sk = NULL, *http = NULL, *side = NULL, *rows = NULL, *v = NULL;
    if ((sk = PyObject_GetAttr(st, a_skaddr)) == NULL) goto error;
    if (!PyLong_Check(sk)) goto out;
    uint64_t st_sk = PyLong_AsUnsignedLongLongMask(sk);
    if (skaddr && st_sk && skaddr != st_sk) goto out; /* the SSL* was freed and reused */
    if ((http = PyObject_GetAttr(st, a_http)) == NULL) goto error;
    int is_h2 = h2_type != NULL && Py_IS_TYPE(http, (PyTypeObject *)h2_type);
    if (!is_h2 && !PyObject_TypeCheck(http, &ConnType)) goto out;
    if ((side = PyObject_GetAttr(st, a_side)) == NULL) goto error;
    int client = PyUnicode_Check(side) && PyUnicode_Compare(side, s_client) == 0;
    if (PyErr_Occurred()) goto error;
    if (ts > *last_ts) *last_ts = ts;
    if (skaddr && !st_sk) {
        if ((v = PyLong_FromUnsignedLongLong(skaddr)) == NULL || PyObject_SetAttr(st, a_skaddr, v) < 0) goto error;
        Py_CLEAR(v);
    }
    if ((v = PyLong_FromLongLong(ts)) == NULL || PyObject_SetAttr(st, a_last_ts, v) < 0) goto error;
    Py_CLEAR(v);
    r = 1;
    int from_client = (kind == l->ssl_write_kind) == client;
    if (is_h2) {
        if (h2_feed(http, ts + offset, b + l->data, cap, from_client, length, &rows) < 0) goto error;
    } else {
        if ((rows = PyList_New(0)) == NULL) goto error;
        if (conn_feed((Conn *)http, ts + offset, (const unsigned char *)b + l->data, cap, from_client, length, rows) < 0) goto error;
    }
    if (pend_rows(rows, *last_ts + grace, st, append) < 0) goto error;
    goto out;
error:
    r = -1;
out:
    Py_XDECREF(v);
    Py_XDECREF(sk);
    Py_XDECREF(http);
    Py_XDECREF(side);
    Py_XDECREF(rows);
    Py_DECREF(st);
    return r;
}

/* feed_http(raws, start, layout, flows, ssl_streams, offset_ns, last_ts, pending_append, grace_ns, skip_min[, h2_type])
 *   -> (index, last_ts, skip_flow, skip_from_client)
 * h2_type: capture/decode/_http2.c's H2Connection (or None): flows and streams decoded by one are
 * taken too (their feed_tuples is called directly).
 * Takes raws[start:] while they are HTTP segments continuing, in order with nothing held, a
 * flow of `flows` whose decoder is an Http1Connection, or SSL_read/SSL_write plaintext of a
 * stream of `ssl_streams` (same SSL*, same socket): exactly what L7Decoder._feed_one does for
 * them, without a Python call per record. Stops at the first other record (index: it is
 * the caller's), or after a record that starts a long body (skip_flow: the caller asks the
 * kernel to skip it, then calls again from index). skip_min < 0: no body skipping. */
static PyObject *feed_http(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 && nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "feed_http takes 10 or 11 arguments");
        return NULL;
    }
    PyObject *h2_type = nargs == 11 && args[10] != Py_None ? args[10] : NULL;
    if (h2_type != NULL && !PyType_Check(h2_type)) {
        PyErr_SetString(PyExc_TypeError, "feed_http: h2_type must be a type or None");
        return NULL;
    }
    PyObject *raws = args[0], *flows = args[3], *streams = args[4], *append = args[7];
    if (!PyList_Check(raws) && !PyTuple_Check(raws)) {
        PyErr_SetString(PyExc_TypeError, "feed_http: raws must be a list or tuple");
        return NULL;
    }
    if (!PyDict_Check(flows) || !PyDict_Check(streams)) {
        PyErr_SetString(PyExc_TypeError, "feed_http: flows and ssl_streams must be dicts");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    Layout l;
    if (read_layout(args[2], &l) < 0) return NULL;
    int64_t offset = PyLong_AsLongLong(args[5]), last_ts = PyLong_AsLongLong(args[6]);
    int64_t grace = PyLong_AsLongLong(args[8]), skip_min = PyLong_AsLongLong(args[9]);
    if (PyErr_Occurred()) return NULL;
    PyObject *seq = PySequence_Fast(raws, "raws");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *skip_flow = NULL;
    int skip_dir = 0;
    for (; i < n; i++) {
        PyObject *raw = PySequence_Fast_GET_ITEM(seq, i);
        int r = 0;
        if (PyBytes_CheckExact(raw) && PyBytes_GET_SIZE(raw) >= l.data) {
            Py_INCREF(raw); /* its bytes are read while Python code may run */
            int kind = (unsigned char)PyBytes_AS_STRING(raw)[l.kind];
            if (kind == l.http_kind)
                r = fast_record(raw, &l, flows, offset, &last_ts, append, grace, skip_min, &skip_flow, &skip_dir, h2_type);
            else if (kind == l.ssl_write_kind || kind == l.ssl_read_kind)
                r = fast_ssl(raw, &l, streams, offset, &last_ts, append, grace, h2_type);
            Py_DECREF(raw);
        }
        if (r < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        if (r == 0) break;
        if (skip_flow != NULL) {
            i++;
            break;
        }
    }
    Py_DECREF(seq);
    PyObject *out = Py_BuildValue("(nLOO)", i, (long long)last_ts, skip_flow ? skip_flow : Py_None, skip_dir ? Py_True : Py_False);
    Py_XDECREF(skip_flow);
    return out;
}

static PyMethodDef module_methods[] = {
    {"feed_http", (PyCFunction)(void (*)(void))feed_http, METH_FASTCALL, "L7Decoder.feed_batch's loop over in-order HTTP segments."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_http1", "Compiled HTTP/1.x connection decoder.", -1, module_methods};

static PyObject *intern(const char *s) { return PyUnicode_InternFromString(s); }

PyMODINIT_FUNC PyInit__http1(void) {
    if (PyType_Ready(&ConnType) < 0) return NULL;
    for (size_t i = 0; i < N_METHODS; i++)
        if ((method_str[i] = intern(KNOWN_METHODS[i])) == NULL) return NULL;
    if (!(http11 = intern("HTTP/1.1")) || !(http10 = intern("HTTP/1.0")) || !(empty_str = intern("")) ||
        !(comma_sp = intern(", ")) || !(s_add = intern("add")) || !(s_malformed = intern("http_malformed")) ||
        !(s_desync = intern("http_desync")) || !(s_truncated = intern("http_truncated_heads")) ||
        !(s_orphan = intern("http_orphan_responses")) || !(s_http2 = intern("http2_connections")) ||
        !(a_dns = intern("dns")) || !(a_dirs = intern("dirs")) || !(a_next = intern("next")) || !(a_held = intern("held")) ||
        !(a_skip_to = intern("skip_to")) || !(a_http = intern("http")) || !(a_key = intern("key")) ||
        !(a_last_ts = intern("last_ts")) || !(s_http_table = intern("http")) || !(a_skaddr = intern("skaddr")) ||
        !(a_side = intern("side")) || !(s_client = intern("client")) || !(a_feed_tuples = intern("feed_tuples")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Http1Connection", (PyObject *)&ConnType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PENDING", MAX_PENDING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
