/*
 * mallard.collector.arrow._native_spans: OTLP ExportTraceServiceRequest bytes -> spans RecordBatch.
 *
 * A native twin of `mallard.collector.arrow.spans.spans_to_arrow_python`, which stays its test oracle:
 * for every input both give the same RecordBatch, the same rejections, or both raise PermanentError.
 *
 * Two passes over the protobuf wire format:
 *   1. `validate` walks the whole request as upb (the protobuf runtime) does and fails exactly where
 *      upb's FromString fails: truncated varints, lengths past the end, tags over 5 bytes or 32 bits,
 *      field number 0, wire types 6/7, unbalanced groups, nesting deeper than 100, invalid UTF-8 in
 *      string fields. Unknown fields and known fields with an unexpected wire type are skipped.
 *   2. `convert_resource_spans` / `convert_span` render the rows straight into Arrow buffers
 *      (offsets, data, validity bitmaps) that become arrays through `pa.Array.from_buffers`; no value
 *      goes through a Python object except array/kvlist values (and other oddities such as a value
 *      field given twice), which are rendered by calling the Python `render_other`, so their JSON
 *      text is the oracle's by construction. Rejections follow the oracle's order and wording.
 *
 * When a request needs a behaviour the oracle gets from Python itself (a time past int64, which pyarrow
 * refuses; offsets past 2 GiB), `convert` returns None and the caller runs the oracle.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 100            /* upb's default recursion limit, as the Python runtime uses it */
#define NO_GROUP UINT32_MAX
#define MAX_REASONS 3
#define MAX_OFFSET INT32_MAX

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define NOINLINE
#endif

/* ------------------------------------------------------------------------------------------------ */
/* Module state, filled on the first call from the Python modules that own each fact.                */

typedef struct {
    const char *key;
    Py_ssize_t len;
} Key;

typedef struct {
    PyObject *name;      /* column name (str) */
    int is_int;          /* int64 column, else string */
    int nkeys;
    int slots[8];        /* indexes into promoted_keys, in the order they are tried */
} PromotedSpec;

typedef struct {
    int ready;
    int usable;          /* 0: the schema is not what this module can build; always defer */
    PyObject *from_buffers, *py_buffer, *map_from_arrays, *struct_from_arrays, *list_from_arrays;
    PyObject *batch_from_arrays;
    PyObject *t_string, *t_int64, *t_int32, *t_timestamp, *t_attributes;
    PyObject *event_fields, *link_fields, *schema, *names;
    PyObject *permanent_error, *kv_from_string, *render_other, *text_of;
    PyObject *s_value, *s_which_oneof, *s_string_value;
    PyObject *kinds, *status_codes;      /* tuples of str */
    PyObject *computed, *nulls;          /* SPAN_COMPUTED (name -> type), left NULL; pyarrow.nulls */
    PromotedSpec *promoted;
    int npromoted;
    Key *promoted_keys;
    int npromoted_keys;
    PyObject *promoted_key_objs;          /* keeps the key strings alive */
} State;

static State g;

static const char MALFORMED[] =
    "malformed protobuf ExportTraceServiceRequest: Error parsing message with type "
    "'opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest'";

/* ------------------------------------------------------------------------------------------------ */
/* Growable buffers and Arrow-shaped columns.                                                        */

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

static NOINLINE int buf_grow(Buf *b, size_t extra) {
    size_t need = b->len + extra;
    if (need < b->len) {
        PyErr_NoMemory();
        return -1;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(Buf *b, size_t extra) {
    if (LIKELY(b->cap - b->len >= extra)) return 0;
    return buf_grow(b, extra);
}

static inline int buf_put(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int buf_i32(Buf *b, int32_t v) { return buf_put(b, &v, 4); }
static inline int buf_i64(Buf *b, int64_t v) { return buf_put(b, &v, 8); }
static void buf_free(Buf *b) {
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Validity bitmap: bit i set when row i is valid; bits are written explicitly on every append. */
static inline int bit_set(Buf *bits, Py_ssize_t i, int valid) {
    size_t byte = (size_t)i / 8;
    if (UNLIKELY(byte >= bits->len)) {
        size_t grow = byte + 1 - bits->len;
        if (buf_reserve(bits, grow) < 0) return -1;
        memset(bits->data + bits->len, 0, grow);
        bits->len += grow;
    }
    uint8_t mask = (uint8_t)(1u << (i % 8));
    if (valid)
        bits->data[byte] |= mask;
    else
        bits->data[byte] &= (uint8_t)~mask;
    return 0;
}

static Py_ssize_t null_count(const Buf *bits, Py_ssize_t rows) {
    Py_ssize_t valid = 0;
    for (Py_ssize_t i = 0; i < rows; i++) valid += (bits->data[i / 8] >> (i % 8)) & 1;
    return rows - valid;
}

typedef struct {
    Buf offsets;    /* int32, rows + 1 */
    Buf data;
    Buf valid;
    Py_ssize_t rows;
    int nullable;
} StrCol;

typedef struct {
    Buf data;       /* int64 */
    Buf valid;
    Py_ssize_t rows;
    int nullable;
} I64Col;

typedef struct {
    Buf offsets;    /* int32 entry offsets, rows + 1 */
    StrCol keys, values;
    Py_ssize_t rows;
} MapCol;

typedef struct {
    MapCol values, types;   /* `attributes` and its `attribute_types` sibling */
} AttrCols;

typedef struct Ctx Ctx;

static void str_free(StrCol *c) {
    buf_free(&c->offsets);
    buf_free(&c->data);
    buf_free(&c->valid);
}

static void i64_free(I64Col *c) {
    buf_free(&c->data);
    buf_free(&c->valid);
}

static void map_free(MapCol *m) {
    buf_free(&m->offsets);
    str_free(&m->keys);
    str_free(&m->values);
}

static void attrs_free(AttrCols *a) {
    map_free(&a->values);
    map_free(&a->types);
}

/* ------------------------------------------------------------------------------------------------ */
/* Conversion context.                                                                               */

enum { V_ABSENT = 0, V_STRING, V_BOOL, V_INT, V_DOUBLE, V_BYTES, V_EMPTY, V_OBJECT };

typedef struct {
    int kind;
    const uint8_t *ptr;   /* V_STRING, V_BYTES */
    size_t len;
    int64_t i;            /* V_INT, V_BOOL */
    double d;             /* V_DOUBLE */
    PyObject *obj;        /* V_OBJECT: the Python value `render_other` returned (owned) */
} Value;

typedef struct {
    const uint8_t *ptr;
    size_t len;
} Slice;

#define EMPTY {(const uint8_t *)"", 0}  /* an absent string or bytes field */

typedef struct {
    Slice *items;
    size_t len, cap;
} Slices;

typedef struct {
    int is_int;
    StrCol s;
    I64Col i;
} PromCol;

struct Ctx {
    /* spans */
    StrCol trace_id, span_id, parent_span_id, trace_state, name, kind, service_name;
    StrCol status_code, status_message, scope_name, scope_version;
    I64Col flags, start_time, end_time, start_ns, end_ns, duration;
    I64Col dropped_attrs, dropped_events, dropped_links;
    PromCol *promoted;
    AttrCols attrs, resource, scope;
    Buf event_offsets, link_offsets;
    Py_ssize_t spans;
    /* events */
    I64Col ev_time, ev_ns, ev_dropped;
    StrCol ev_name;
    AttrCols ev_attrs;
    Py_ssize_t events;
    /* links */
    StrCol ln_trace_id, ln_span_id, ln_trace_state;
    I64Col ln_flags, ln_dropped;
    AttrCols ln_attrs;
    Py_ssize_t links;
    /* the current resource and scope, rendered once and copied into each of their spans */
    AttrCols stage, scope_stage;
    Buf service;
    Value service_found;
    Value *found;          /* per promoted key: its last value in the current span */
    /* scratch */
    Slices kvs, evs, lns;
    /* outcome */
    Py_ssize_t rejected;
    PyObject *reasons[MAX_REASONS];
    int nreasons;
    PyObject *reason;      /* why the current item is rejected (str) */
    int defer;             /* the oracle must do this request */
    long long max_attributes;
    PyObject *max_depth;
};

static inline int check_offset(Ctx *cx, size_t end) {
    if (end > MAX_OFFSET) {
        cx->defer = 1;
        return -1;
    }
    return 0;
}

static inline int str_push(Ctx *cx, StrCol *c, const void *p, size_t n) {
    if (check_offset(cx, c->data.len + n) < 0) return -1;
    if (buf_put(&c->data, p, n) < 0) return -1;
    if (buf_i32(&c->offsets, (int32_t)c->data.len) < 0) return -1;
    if (c->nullable && bit_set(&c->valid, c->rows, 1) < 0) return -1;
    c->rows++;
    return 0;
}

/* Reserves `n` bytes at the end of the column's data for the caller to fill, then `str_commit`. */
static inline char *str_room(Ctx *cx, StrCol *c, size_t n) {
    if (check_offset(cx, c->data.len + n) < 0) return NULL;
    if (buf_reserve(&c->data, n ? n : 1) < 0) return NULL;  /* never NULL for an empty value */
    return c->data.data + c->data.len;
}

static inline int str_commit(StrCol *c, size_t n) {
    c->data.len += n;
    if (buf_i32(&c->offsets, (int32_t)c->data.len) < 0) return -1;
    if (c->nullable && bit_set(&c->valid, c->rows, 1) < 0) return -1;
    c->rows++;
    return 0;
}

static inline int str_null(StrCol *c) {
    if (buf_i32(&c->offsets, (int32_t)c->data.len) < 0) return -1;
    if (bit_set(&c->valid, c->rows, 0) < 0) return -1;
    c->rows++;
    return 0;
}

static void str_truncate(StrCol *c, Py_ssize_t rows) {
    int32_t end;
    memcpy(&end, c->offsets.data + rows * 4, 4);
    c->rows = rows;
    c->offsets.len = (size_t)(rows + 1) * 4;
    c->data.len = (size_t)end;
}

static inline int i64_push(I64Col *c, int64_t v) {
    if (buf_i64(&c->data, v) < 0) return -1;
    if (c->nullable && bit_set(&c->valid, c->rows, 1) < 0) return -1;
    c->rows++;
    return 0;
}

static inline int i64_null(I64Col *c) {
    if (buf_i64(&c->data, 0) < 0) return -1;
    if (bit_set(&c->valid, c->rows, 0) < 0) return -1;
    c->rows++;
    return 0;
}

static void i64_truncate(I64Col *c, Py_ssize_t rows) {
    c->rows = rows;
    c->data.len = (size_t)rows * 8;
}

static inline int map_end_row(Ctx *cx, MapCol *m) {
    if (check_offset(cx, (size_t)m->keys.rows) < 0) return -1;
    if (buf_i32(&m->offsets, (int32_t)m->keys.rows) < 0) return -1;
    m->rows++;
    return 0;
}

/* Drops the entries appended after the first `rows` complete rows (an item being undone). */
static void map_truncate(MapCol *m, Py_ssize_t rows) {
    int32_t end;
    memcpy(&end, m->offsets.data + rows * 4, 4);
    m->rows = rows;
    m->offsets.len = (size_t)(rows + 1) * 4;
    str_truncate(&m->keys, end);
    str_truncate(&m->values, end);
}

static void attrs_truncate(AttrCols *a, Py_ssize_t rows) {
    map_truncate(&a->values, rows);
    map_truncate(&a->types, rows);
}

/* Appends the entries of `src`'s row 0 as a new row of `dst` (a resource repeated per span). */
static int map_copy_row(Ctx *cx, MapCol *dst, const MapCol *src) {
    Py_ssize_t n = src->keys.rows;
    const StrCol *from[2] = {&src->keys, &src->values};
    StrCol *to[2] = {&dst->keys, &dst->values};
    for (int k = 0; k < 2; k++) {
        const StrCol *s = from[k];
        StrCol *d = to[k];
        int32_t base = (int32_t)d->data.len;
        if (check_offset(cx, d->data.len + s->data.len) < 0) return -1;
        if (buf_put(&d->data, s->data.data, s->data.len) < 0) return -1;
        if (buf_reserve(&d->offsets, (size_t)n * 4) < 0) return -1;
        const int32_t *so = (const int32_t *)s->offsets.data;
        int32_t *dofs = (int32_t *)(d->offsets.data + d->offsets.len);
        for (Py_ssize_t j = 0; j < n; j++) dofs[j] = base + so[j + 1];
        d->offsets.len += (size_t)n * 4;
        if (d->nullable) {
            for (Py_ssize_t j = 0; j < n; j++) {
                int valid = s->nullable ? (s->valid.data[j / 8] >> (j % 8)) & 1 : 1;
                if (bit_set(&d->valid, d->rows + j, valid) < 0) return -1;
            }
        }
        d->rows += n;
    }
    return map_end_row(cx, dst);
}

static int slices_push(Slices *v, const uint8_t *p, size_t n) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        Slice *items = PyMem_Realloc(v->items, cap * sizeof(Slice));
        if (!items) {
            PyErr_NoMemory();
            return -1;
        }
        v->items = items;
        v->cap = cap;
    }
    v->items[v->len].ptr = p;
    v->items[v->len].len = n;
    v->len++;
    return 0;
}

static void value_clear(Value *v) {
    Py_CLEAR(v->obj);
    v->kind = V_ABSENT;
}

/* ------------------------------------------------------------------------------------------------ */
/* Wire format.                                                                                      */

typedef struct {
    uint32_t fn, wt;
    uint64_t v;           /* varint, fixed64, fixed32 */
    const uint8_t *ptr;   /* length-delimited payload */
    size_t len;
} Field;

enum { R_BAD = -1, R_END = 0, R_FIELD = 1, R_END_GROUP = 2 };

static NOINLINE const uint8_t *read_long_varint(const uint8_t *p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end) return NULL;
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);  /* a 10th byte keeps its lowest bit, as in upb */
        if (!(b & 0x80)) {
            *out = v;
            return p;
        }
    }
    return NULL;
}

static inline const uint8_t *read_varint(const uint8_t *p, const uint8_t *end, uint64_t *out) {
    if (LIKELY(p < end && *p < 0x80)) {
        *out = *p;
        return p + 1;
    }
    return read_long_varint(p, end, out);
}

static const uint8_t *validate(int msg, const uint8_t *p, const uint8_t *end, int depth, uint32_t group);

enum { M_GROUP = 0, M_REQUEST, M_RESOURCE_SPANS, M_RESOURCE, M_KEY_VALUE, M_ANY_VALUE, M_ARRAY_VALUE,
       M_KV_LIST, M_ENTITY_REF, M_SCOPE_SPANS, M_SCOPE, M_SPAN, M_EVENT, M_LINK, M_STATUS };

/* Skips an unknown group (its start tag read); NULL where upb fails on it. */
static NOINLINE const uint8_t *skip_group(const uint8_t *p, const uint8_t *end, uint32_t fn, int depth) {
    if (fn == 0 || p >= end || depth - 1 < 0) return NULL;
    return validate(M_GROUP, p, end, depth - 1, fn);
}

/* Reads one field of the message ending at `end`. Unknown groups are skipped whole (they count
 * against `depth` like upb's); an end-group tag is reported for the caller to match. */
static inline int read_field(const uint8_t **pp, const uint8_t *end, Field *f, int depth) {
    const uint8_t *p = *pp, *start = p;
    uint64_t tag;
    if (p >= end) return R_END;
    if (LIKELY(*p < 0x80)) {
        tag = *p++;
    } else {
        p = read_long_varint(p, end, &tag);
        if (!p || p - start > 5 || tag > UINT32_MAX) return R_BAD;
    }
    f->fn = (uint32_t)(tag >> 3);
    f->wt = (uint32_t)(tag & 7);
    switch (f->wt) {
        case 2: {
            uint64_t n;
            p = read_varint(p, end, &n);
            if (UNLIKELY(!p || n >= INT32_MAX || n > (uint64_t)(end - p))) return R_BAD;
            f->ptr = p;
            f->len = (size_t)n;
            p += n;
            break;
        }
        case 0:
            p = read_varint(p, end, &f->v);
            if (UNLIKELY(!p)) return R_BAD;
            break;
        case 1:
            if (UNLIKELY(end - p < 8)) return R_BAD;
            memcpy(&f->v, p, 8);  /* little-endian hosts only (checked at import) */
            p += 8;
            break;
        case 5: {
            uint32_t v;
            if (UNLIKELY(end - p < 4)) return R_BAD;
            memcpy(&v, p, 4);
            f->v = v;
            p += 4;
            break;
        }
        case 3:
            p = skip_group(p, end, f->fn, depth);
            if (!p) return R_BAD;
            break;
        case 4:
            *pp = p;
            return R_END_GROUP;
        default:
            return R_BAD;
    }
    if (UNLIKELY(f->fn == 0)) return R_BAD;
    *pp = p;
    return R_FIELD;
}

static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xC2 && c <= 0xDF) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (n - i < 3 || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && s[i + 1] < 0xA0) return 0;  /* overlong */
            if (c == 0xED && s[i + 1] > 0x9F) return 0;  /* surrogate */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (n - i < 4 || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && s[i + 1] < 0x90) return 0;  /* overlong */
            if (c == 0xF4 && s[i + 1] > 0x8F) return 0;  /* past U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

enum { K_OTHER = 0, K_STRING, K_MESSAGE };

/* What a length-delimited field of `msg` is: a string (UTF-8 checked), a message (`*sub`), or
 * anything else (bytes, unknown). Mirrors trace.proto, common.proto and resource.proto. */
static int field_kind(int msg, uint32_t fn, int *sub) {
    switch (msg) {
        case M_REQUEST:
            if (fn == 1) return *sub = M_RESOURCE_SPANS, K_MESSAGE;
            break;
        case M_RESOURCE_SPANS:
            if (fn == 1) return *sub = M_RESOURCE, K_MESSAGE;
            if (fn == 2) return *sub = M_SCOPE_SPANS, K_MESSAGE;
            if (fn == 3) return K_STRING;
            break;
        case M_RESOURCE:
            if (fn == 1) return *sub = M_KEY_VALUE, K_MESSAGE;
            if (fn == 3) return *sub = M_ENTITY_REF, K_MESSAGE;
            break;
        case M_KEY_VALUE:
            if (fn == 1) return K_STRING;
            if (fn == 2) return *sub = M_ANY_VALUE, K_MESSAGE;
            break;
        case M_ANY_VALUE:
            if (fn == 1) return K_STRING;
            if (fn == 5) return *sub = M_ARRAY_VALUE, K_MESSAGE;
            if (fn == 6) return *sub = M_KV_LIST, K_MESSAGE;
            break;
        case M_ARRAY_VALUE:
            if (fn == 1) return *sub = M_ANY_VALUE, K_MESSAGE;
            break;
        case M_KV_LIST:
            if (fn == 1) return *sub = M_KEY_VALUE, K_MESSAGE;
            break;
        case M_ENTITY_REF:
            if (fn >= 1 && fn <= 4) return K_STRING;
            break;
        case M_SCOPE_SPANS:
            if (fn == 1) return *sub = M_SCOPE, K_MESSAGE;
            if (fn == 2) return *sub = M_SPAN, K_MESSAGE;
            if (fn == 3) return K_STRING;
            break;
        case M_SCOPE:
            if (fn == 1 || fn == 2) return K_STRING;
            if (fn == 3) return *sub = M_KEY_VALUE, K_MESSAGE;
            break;
        case M_SPAN:
            if (fn == 3 || fn == 5) return K_STRING;
            if (fn == 9) return *sub = M_KEY_VALUE, K_MESSAGE;
            if (fn == 11) return *sub = M_EVENT, K_MESSAGE;
            if (fn == 13) return *sub = M_LINK, K_MESSAGE;
            if (fn == 15) return *sub = M_STATUS, K_MESSAGE;
            break;
        case M_EVENT:
            if (fn == 2) return K_STRING;
            if (fn == 3) return *sub = M_KEY_VALUE, K_MESSAGE;
            break;
        case M_LINK:
            if (fn == 3) return K_STRING;
            if (fn == 4) return *sub = M_KEY_VALUE, K_MESSAGE;
            break;
        case M_STATUS:
            if (fn == 2) return K_STRING;
            break;
    }
    return K_OTHER;
}

/* Checks the message [p, end) of type `msg` the way upb parses it; returns the position after it
 * (after the end-group tag for a group), NULL where upb's parse fails. */
static const uint8_t *validate(int msg, const uint8_t *p, const uint8_t *end, int depth, uint32_t group) {
    Field f;
    for (;;) {
        int r = read_field(&p, end, &f, depth);
        if (r == R_END) return group == NO_GROUP ? p : NULL;
        if (r == R_BAD) return NULL;
        if (r == R_END_GROUP) return (group != NO_GROUP && f.fn == group) ? p : NULL;
        if (f.wt != 2) continue;
        int sub = 0;
        int kind = field_kind(msg, f.fn, &sub);
        if (kind == K_STRING && !utf8_valid(f.ptr, f.len)) return NULL;
        if (kind == K_MESSAGE) {
            if (depth - 1 < 0) return NULL;
            if (validate(sub, f.ptr, f.ptr + f.len, depth - 1, NO_GROUP) != f.ptr + f.len) return NULL;
        }
    }
}

/* Iterates the fields of an already validated message (so nothing but its end stops it). */
static inline int next_field(const uint8_t **pp, const uint8_t *end, Field *f) {
    return read_field(pp, end, f, MAX_DEPTH) == R_FIELD;
}

/* ------------------------------------------------------------------------------------------------ */
/* Rendering values.                                                                                 */

static const char HEX[] = "0123456789abcdef";
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int push_hex(Ctx *cx, StrCol *c, const uint8_t *p, size_t n) {
    char *out = str_room(cx, c, n * 2);
    if (!out) return -1;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[p[i] >> 4];
        out[2 * i + 1] = HEX[p[i] & 15];
    }
    return str_commit(c, n * 2);
}

static int push_base64(Ctx *cx, StrCol *c, const uint8_t *p, size_t n) {
    size_t size = (n + 2) / 3 * 4;
    char *out = str_room(cx, c, size);
    if (!out) return -1;
    size_t i = 0, o = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = B64[v >> 18];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = '=';
    }
    return str_commit(c, size);
}

static int push_int(Ctx *cx, StrCol *c, int64_t v) {
    char tmp[24];
    char *end = tmp + sizeof(tmp), *q = end;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--q = '-';
    return str_push(cx, c, q, (size_t)(end - q));
}

static int push_double(Ctx *cx, StrCol *c, double d) {
    /* exactly what float.__repr__ does */
    char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!text) return -1;
    int r = str_push(cx, c, text, strlen(text));
    PyMem_Free(text);
    return r;
}

static int push_unicode(Ctx *cx, StrCol *c, PyObject *text) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    if (!utf8) return -1;
    return str_push(cx, c, utf8, (size_t)n);
}

static int push_cstr(Ctx *cx, StrCol *c, const char *s) { return str_push(cx, c, s, strlen(s)); }

/* Appends `str(obj)` (None as null when `none_is_null`) to a string column. */
static int push_str_of(Ctx *cx, StrCol *c, PyObject *obj, int none_is_null) {
    if (obj == Py_None && none_is_null) return str_null(c);
    if (PyUnicode_Check(obj)) return push_unicode(cx, c, obj);
    PyObject *text = PyObject_CallFunctionObjArgs(g.text_of, obj, NULL);  /* as the maps show it */
    if (!text) return -1;
    int r = push_unicode(cx, c, text);
    Py_DECREF(text);
    return r;
}

/* The Python value the oracle's `render_other` would give for a scalar (a new reference). */
static PyObject *value_object(const Value *v) {
    switch (v->kind) {
        case V_STRING:
            return PyUnicode_DecodeUTF8((const char *)v->ptr, (Py_ssize_t)v->len, "strict");
        case V_BOOL:
            return PyBool_FromLong((long)v->i);
        case V_INT:
            return PyLong_FromLongLong(v->i);
        case V_DOUBLE:
            return PyFloat_FromDouble(v->d);
        case V_BYTES:
            return PyBytes_FromStringAndSize((const char *)v->ptr, (Py_ssize_t)v->len);
        case V_OBJECT:
            Py_INCREF(v->obj);
            return v->obj;
        default:
            Py_RETURN_NONE;
    }
}

/* `_as_int` of spans.py on a Python value, then appended to an int64 column. */
static int push_as_int(Ctx *cx, I64Col *c, PyObject *obj) {
    if (PyBool_Check(obj)) return i64_null(c);
    PyObject *number = NULL;
    if (PyLong_Check(obj)) {
        Py_INCREF(obj);
        number = obj;
    } else if (PyFloat_Check(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        /* integral and within int64, else null, as `_as_int` */
        if (!isfinite(d) || floor(d) != d || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
            return i64_null(c);
        return i64_push(c, (int64_t)d);
    } else if (PyUnicode_Check(obj)) {
        number = PyLong_FromUnicodeObject(obj, 10);
        if (!number) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
            PyErr_Clear();
            return i64_null(c);
        }
    } else {
        return i64_null(c);
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(number, &overflow);
    Py_DECREF(number);
    if (overflow) return i64_null(c); /* outside int64: null, as `_as_int` */
    if (v == -1 && PyErr_Occurred()) return -1;
    return i64_push(c, v);
}

static int push_promoted(Ctx *cx, PromCol *col, const Value *v) {
    if (!v || v->kind == V_EMPTY) return col->is_int ? i64_null(&col->i) : str_null(&col->s);
    if (col->is_int && v->kind == V_INT) return i64_push(&col->i, v->i);
    if (!col->is_int && v->kind == V_STRING) return str_push(cx, &col->s, v->ptr, v->len);
    if (!col->is_int && v->kind == V_INT) return push_int(cx, &col->s, v->i);
    PyObject *obj = value_object(v);
    if (!obj) return -1;
    int r = col->is_int ? push_as_int(cx, &col->i, obj) : push_str_of(cx, &col->s, obj, 1);
    Py_DECREF(obj);
    return r;
}

/* ------------------------------------------------------------------------------------------------ */
/* Attributes.                                                                                       */

static int reject_with(Ctx *cx, PyObject *reason) {
    Py_XSETREF(cx->reason, reason);
    return reason ? 1 : -1;
}

/* Renders a value the C side does not (array, kvlist, a value field given twice) by decoding the
 * KeyValue with the protobuf runtime and calling the oracle's `render_other`. Returns a new
 * (text or None, type name or None for strings, raw value) tuple, or NULL with `*rejected` set
 * when the oracle raises PermanentError (nested deeper than the limit). */
static PyObject *render_in_python(Ctx *cx, const uint8_t *p, size_t n, int *rejected) {
    *rejected = 0;
    PyObject *result = NULL, *value = NULL, *kind = NULL;
    PyObject *kv = PyObject_CallFunction(g.kv_from_string, "y#", (const char *)p, (Py_ssize_t)n);
    if (!kv) return NULL;
    value = PyObject_GetAttr(kv, g.s_value);
    if (!value) goto done;
    kind = PyObject_CallMethodOneArg(value, g.s_which_oneof, g.s_value);
    if (!kind) goto done;
    if (kind != Py_None && PyUnicode_Check(kind) && PyUnicode_Compare(kind, g.s_string_value) == 0) {
        PyObject *text = PyObject_GetAttr(value, g.s_string_value);
        if (text) result = PyTuple_Pack(3, text, Py_None, text);
        Py_XDECREF(text);
        goto done;
    }
    result = PyObject_CallFunctionObjArgs(g.render_other, value, kind, cx->max_depth, NULL);
    if (!result) {
        if (PyErr_ExceptionMatches(g.permanent_error)) {
            PyObject *type, *exc, *tb;
            PyErr_Fetch(&type, &exc, &tb);
            PyErr_NormalizeException(&type, &exc, &tb);
            *rejected = 1;
            reject_with(cx, exc ? PyObject_Str(exc) : PyUnicode_FromString(""));
            Py_XDECREF(type);
            Py_XDECREF(exc);
            Py_XDECREF(tb);
            if (!cx->reason) *rejected = 0;
        }
        goto done;
    }
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 3) {
        PyErr_SetString(PyExc_TypeError, "render_other returned something other than a 3-tuple");
        Py_CLEAR(result);
    }
done:
    Py_XDECREF(kind);
    Py_XDECREF(value);
    Py_DECREF(kv);
    return result;
}

/* Renders one KeyValue into `cols`' open row; remembers the value when its key is wanted. */
static int render_kv(Ctx *cx, const uint8_t *kv, size_t kvlen, AttrCols *cols, const Key *wanted,
                     int nwanted, Value *found) {
    const uint8_t *p = kv, *end = kv + kvlen, *key = (const uint8_t *)"";
    size_t keylen = 0;
    Slice value = {NULL, 0};
    int nvalues = 0;
    Field f;
    while (next_field(&p, end, &f)) {
        if (f.wt != 2) continue;
        if (f.fn == 1) {
            key = f.ptr;
            keylen = f.len;
        } else if (f.fn == 2) {
            value.ptr = f.ptr;
            value.len = f.len;
            nvalues++;
        }
    }
    Value v = {V_EMPTY, NULL, 0, 0, 0.0, NULL};
    int complex = nvalues > 1;
    if (nvalues == 1) {
        const uint8_t *q = value.ptr, *vend = value.ptr + value.len;
        while (next_field(&q, vend, &f)) {
            switch (f.fn) {
                case 1:
                    if (f.wt == 2) v.kind = V_STRING, v.ptr = f.ptr, v.len = f.len;
                    break;
                case 2:
                    if (f.wt == 0) v.kind = V_BOOL, v.i = f.v != 0;
                    break;
                case 3:
                    if (f.wt == 0) v.kind = V_INT, v.i = (int64_t)f.v;
                    break;
                case 4:
                    if (f.wt == 1) v.kind = V_DOUBLE, memcpy(&v.d, &f.v, 8);
                    break;
                case 5:
                case 6:
                    if (f.wt == 2) v.kind = V_OBJECT;
                    break;
                case 7:
                    if (f.wt == 2) v.kind = V_BYTES, v.ptr = f.ptr, v.len = f.len;
                    break;
                case 8:  /* string_value_strindex: the oracle renders it as an empty value */
                    if (f.wt == 0) v.kind = V_EMPTY;
                    break;
            }
        }
        complex = v.kind == V_OBJECT;
    }

    MapCol *vals = &cols->values, *types = &cols->types;
    const char *type_name = NULL;
    if (complex) {
        int rejected;
        PyObject *res = render_in_python(cx, kv, kvlen, &rejected);
        if (!res) return rejected ? 1 : -1;
        PyObject *text = PyTuple_GET_ITEM(res, 0), *type = PyTuple_GET_ITEM(res, 1);
        int r = str_push(cx, &vals->keys, key, keylen);
        if (r == 0) r = text == Py_None ? str_null(&vals->values) : push_str_of(cx, &vals->values, text, 0);
        if (r == 0 && type != Py_None) {
            r = str_push(cx, &types->keys, key, keylen);
            if (r == 0) r = push_str_of(cx, &types->values, type, 0);
        }
        if (r < 0) {
            Py_DECREF(res);
            return -1;
        }
        v.kind = V_OBJECT;
        v.obj = PyTuple_GET_ITEM(res, 2);
        Py_INCREF(v.obj);
        Py_DECREF(res);
    } else {
        if (str_push(cx, &vals->keys, key, keylen) < 0) return -1;
        int r;
        switch (v.kind) {
            case V_STRING:
                r = str_push(cx, &vals->values, v.ptr, v.len);
                break;
            case V_BOOL:
                r = v.i ? push_cstr(cx, &vals->values, "true") : push_cstr(cx, &vals->values, "false");
                type_name = "bool";
                break;
            case V_INT:
                r = push_int(cx, &vals->values, v.i);
                type_name = "int";
                break;
            case V_DOUBLE:
                r = push_double(cx, &vals->values, v.d);
                type_name = "double";
                break;
            case V_BYTES:
                r = push_base64(cx, &vals->values, v.ptr, v.len);
                type_name = "bytes";
                break;
            default:
                r = str_null(&vals->values);
                type_name = "empty";
                break;
        }
        if (r < 0) return -1;
        if (type_name) {
            if (str_push(cx, &types->keys, key, keylen) < 0) return -1;
            if (push_cstr(cx, &types->values, type_name) < 0) return -1;
        }
    }
    for (int k = 0; k < nwanted; k++) {
        if (wanted[k].len == (Py_ssize_t)keylen && memcmp(wanted[k].key, key, keylen) == 0) {
            value_clear(&found[k]);
            found[k] = v;
            return 0;
        }
    }
    Py_XDECREF(v.obj);
    return 0;
}

/* Renders the KeyValues `kvs` as one row of `cols` (`render_into` of attributes.py): 0 done,
 * 1 rejected (`cx->reason` says why, `cols` as it was), -1 error. */
static int render_attrs(Ctx *cx, const Slices *kvs, AttrCols *cols, const Key *wanted, int nwanted,
                        Value *found) {
    if ((long long)kvs->len > cx->max_attributes)
        return reject_with(cx, PyUnicode_FromFormat("%zd attributes, more than the limit of %lld",
                                                    (Py_ssize_t)kvs->len, cx->max_attributes));
    Py_ssize_t rows = cols->values.rows;
    for (size_t i = 0; i < kvs->len; i++) {
        int r = render_kv(cx, kvs->items[i].ptr, kvs->items[i].len, cols, wanted, nwanted, found);
        if (r != 0) {
            attrs_truncate(cols, rows);
            return r;
        }
    }
    if (map_end_row(cx, &cols->values) < 0) return -1;
    return map_end_row(cx, &cols->types);
}

/* ------------------------------------------------------------------------------------------------ */
/* Spans.                                                                                            */

static int add_rejection(Ctx *cx, PyObject *where) {
    /* `where` is a new reference or NULL; cx->reason is the reason */
    if (!where) return -1;
    cx->rejected++;
    int r = 0;
    if (cx->nreasons < MAX_REASONS) {
        PyObject *text = PyUnicode_FromFormat("%U: %U", where, cx->reason);
        if (text)
            cx->reasons[cx->nreasons++] = text;
        else
            r = -1;
    }
    Py_DECREF(where);
    return r;
}

/* `hex_id` of outcome.py: 0 = fine (`*zero` when the optional id is absent or all zero),
 * 1 = malformed (cx->reason set) */
static int check_id(Ctx *cx, const uint8_t *p, size_t n, size_t size, int optional, int *zero) {
    *zero = 0;
    if (n == 0) {
        if (optional) return *zero = 1, 0;
        return reject_with(cx, PyUnicode_FromString("id missing"));
    }
    if (n != size)
        return reject_with(cx, PyUnicode_FromFormat("id %zd bytes, expected %zd", (Py_ssize_t)n,
                                                    (Py_ssize_t)size));
    int all_zero = 1;
    for (size_t i = 0; i < n; i++) all_zero &= p[i] == 0;
    if (all_zero) {
        if (optional) return *zero = 1, 0;
        return reject_with(cx, PyUnicode_FromString("id all zero"));
    }
    return 0;
}

static int push_enum_name(Ctx *cx, StrCol *c, PyObject *names, int32_t v) {
    if (v >= 0 && v < PyTuple_GET_SIZE(names)) return push_unicode(cx, c, PyTuple_GET_ITEM(names, v));
    return push_int(cx, c, v);
}

typedef struct {
    const uint8_t *name, *version;
    size_t name_len, version_len;
} Scope;

/* Renders the events of a span; 1 = rejected. */
static int render_events(Ctx *cx, int *big_time) {
    for (size_t e = 0; e < cx->evs.len; e++) {
        const uint8_t *p = cx->evs.items[e].ptr, *end = p + cx->evs.items[e].len;
        const uint8_t *name = (const uint8_t *)"";
        size_t name_len = 0;
        uint64_t time = 0, dropped = 0;
        Field f;
        cx->kvs.len = 0;
        while (next_field(&p, end, &f)) {
            if (f.fn == 1 && f.wt == 1) time = f.v;
            else if (f.fn == 2 && f.wt == 2) name = f.ptr, name_len = f.len;
            else if (f.fn == 3 && f.wt == 2) {
                if (slices_push(&cx->kvs, f.ptr, f.len) < 0) return -1;
            } else if (f.fn == 4 && f.wt == 0) dropped = (uint32_t)f.v;
        }
        int r = render_attrs(cx, &cx->kvs, &cx->ev_attrs, NULL, 0, NULL);
        if (r != 0) return r;
        if (time > INT64_MAX) *big_time = 1;
        if (i64_push(&cx->ev_time, (int64_t)(time / 1000)) < 0 || i64_push(&cx->ev_ns, (int64_t)time) < 0 ||
            str_push(cx, &cx->ev_name, name, name_len) < 0 || i64_push(&cx->ev_dropped, (int64_t)dropped) < 0)
            return -1;
        cx->events++;
    }
    return 0;
}

static int render_links(Ctx *cx) {
    for (size_t l = 0; l < cx->lns.len; l++) {
        const uint8_t *p = cx->lns.items[l].ptr, *end = p + cx->lns.items[l].len;
        Slice trace = EMPTY, span = EMPTY, state = EMPTY;
        uint64_t flags = 0, dropped = 0;
        Field f;
        cx->kvs.len = 0;
        while (next_field(&p, end, &f)) {
            if (f.wt == 2) {
                if (f.fn == 1) trace.ptr = f.ptr, trace.len = f.len;
                else if (f.fn == 2) span.ptr = f.ptr, span.len = f.len;
                else if (f.fn == 3) state.ptr = f.ptr, state.len = f.len;
                else if (f.fn == 4 && slices_push(&cx->kvs, f.ptr, f.len) < 0) return -1;
            } else if (f.fn == 5 && f.wt == 0) {
                dropped = (uint32_t)f.v;
            } else if (f.fn == 6 && f.wt == 5) {
                flags = f.v;
            }
        }
        int zero, r;
        if ((r = check_id(cx, trace.ptr, trace.len, 16, 0, &zero)) != 0) return r;
        if ((r = check_id(cx, span.ptr, span.len, 8, 0, &zero)) != 0) return r;
        if ((r = render_attrs(cx, &cx->kvs, &cx->ln_attrs, NULL, 0, NULL)) != 0) return r;
        if (push_hex(cx, &cx->ln_trace_id, trace.ptr, trace.len) < 0 ||
            push_hex(cx, &cx->ln_span_id, span.ptr, span.len) < 0 ||
            str_push(cx, &cx->ln_trace_state, state.ptr, state.len) < 0 ||
            i64_push(&cx->ln_flags, (int64_t)flags) < 0 || i64_push(&cx->ln_dropped, (int64_t)dropped) < 0)
            return -1;
        cx->links++;
    }
    return 0;
}

static void clear_found(Ctx *cx) {
    for (int k = 0; k < g.npromoted_keys; k++) value_clear(&cx->found[k]);
}

/* One span: 0 = kept or rejected (counted), -1 = error or deferred. */
static int convert_span(Ctx *cx, const uint8_t *p, const uint8_t *end, const Scope *scope, Py_ssize_t ri,
                        Py_ssize_t si, Py_ssize_t pi) {
    Slice trace = EMPTY, span = EMPTY, parent = EMPTY, state = EMPTY, name = EMPTY, message = EMPTY;
    uint64_t start = 0, stop = 0, flags = 0, dropped_attrs = 0, dropped_events = 0, dropped_links = 0;
    int32_t kind = 0, code = 0;
    Field f;
    cx->kvs.len = cx->evs.len = cx->lns.len = 0;
    while (next_field(&p, end, &f)) {
        switch (f.wt) {
            case 2:
                switch (f.fn) {
                    case 1: trace.ptr = f.ptr, trace.len = f.len; break;
                    case 2: span.ptr = f.ptr, span.len = f.len; break;
                    case 3: state.ptr = f.ptr, state.len = f.len; break;
                    case 4: parent.ptr = f.ptr, parent.len = f.len; break;
                    case 5: name.ptr = f.ptr, name.len = f.len; break;
                    case 9: if (slices_push(&cx->kvs, f.ptr, f.len) < 0) return -1; break;
                    case 11: if (slices_push(&cx->evs, f.ptr, f.len) < 0) return -1; break;
                    case 13: if (slices_push(&cx->lns, f.ptr, f.len) < 0) return -1; break;
                    case 15: {  /* Status, merged over repeats */
                        const uint8_t *q = f.ptr, *qend = f.ptr + f.len;
                        Field s;
                        while (next_field(&q, qend, &s)) {
                            if (s.fn == 2 && s.wt == 2) message.ptr = s.ptr, message.len = s.len;
                            else if (s.fn == 3 && s.wt == 0) code = (int32_t)(uint32_t)s.v;
                        }
                        break;
                    }
                }
                break;
            case 0:
                switch (f.fn) {
                    case 6: kind = (int32_t)(uint32_t)f.v; break;
                    case 10: dropped_attrs = (uint32_t)f.v; break;
                    case 12: dropped_events = (uint32_t)f.v; break;
                    case 14: dropped_links = (uint32_t)f.v; break;
                }
                break;
            case 1:
                if (f.fn == 7) start = f.v;
                else if (f.fn == 8) stop = f.v;
                break;
            case 5:
                if (f.fn == 16) flags = f.v;
                break;
        }
    }

    Py_ssize_t events_mark = cx->events, links_mark = cx->links;
    int parent_zero, zero, big_time = 0, r;
    clear_found(cx);
    if ((r = check_id(cx, trace.ptr, trace.len, 16, 0, &zero)) == 0 &&
        (r = check_id(cx, span.ptr, span.len, 8, 0, &zero)) == 0 &&
        (r = check_id(cx, parent.ptr, parent.len, 8, 1, &parent_zero)) == 0 &&
        (r = render_attrs(cx, &cx->kvs, &cx->attrs, g.promoted_keys, g.npromoted_keys, cx->found)) == 0 &&
        (r = render_events(cx, &big_time)) == 0)
        r = render_links(cx);
    if (r != 0) {
        /* undo what the span appended (`_SpanColumns.undo_span`) */
        attrs_truncate(&cx->attrs, cx->spans);
        cx->events = events_mark;
        i64_truncate(&cx->ev_time, events_mark);
        i64_truncate(&cx->ev_ns, events_mark);
        i64_truncate(&cx->ev_dropped, events_mark);
        str_truncate(&cx->ev_name, events_mark);
        attrs_truncate(&cx->ev_attrs, events_mark);
        cx->links = links_mark;
        str_truncate(&cx->ln_trace_id, links_mark);
        str_truncate(&cx->ln_span_id, links_mark);
        str_truncate(&cx->ln_trace_state, links_mark);
        i64_truncate(&cx->ln_flags, links_mark);
        i64_truncate(&cx->ln_dropped, links_mark);
        attrs_truncate(&cx->ln_attrs, links_mark);
        if (r < 0) return -1;
        return add_rejection(
            cx, PyUnicode_FromFormat("resource_spans[%zd].scope_spans[%zd].spans[%zd]", ri, si, pi));
    }
    if (big_time || start > INT64_MAX || stop > INT64_MAX) {
        cx->defer = 1;  /* pyarrow raises on it in the oracle */
        return -1;
    }
    if (check_offset(cx, (size_t)cx->events) < 0 || check_offset(cx, (size_t)cx->links) < 0 ||
        buf_i32(&cx->event_offsets, (int32_t)cx->events) < 0 ||
        buf_i32(&cx->link_offsets, (int32_t)cx->links) < 0)
        return -1;
    int parent_pushed = parent_zero ? str_push(cx, &cx->parent_span_id, "", 0)
                                    : push_hex(cx, &cx->parent_span_id, parent.ptr, parent.len);
    if (parent_pushed < 0 || push_hex(cx, &cx->trace_id, trace.ptr, trace.len) < 0 ||
        push_hex(cx, &cx->span_id, span.ptr, span.len) < 0 ||
        str_push(cx, &cx->trace_state, state.ptr, state.len) < 0 ||
        i64_push(&cx->flags, (int64_t)flags) < 0 || str_push(cx, &cx->name, name.ptr, name.len) < 0 ||
        push_enum_name(cx, &cx->kind, g.kinds, kind) < 0 ||
        str_push(cx, &cx->service_name, cx->service.data, cx->service.len) < 0 ||
        i64_push(&cx->start_time, (int64_t)(start / 1000)) < 0 ||
        i64_push(&cx->end_time, (int64_t)(stop / 1000)) < 0 || i64_push(&cx->start_ns, (int64_t)start) < 0 ||
        i64_push(&cx->end_ns, (int64_t)stop) < 0 ||
        i64_push(&cx->duration, (int64_t)stop - (int64_t)start) < 0 ||
        push_enum_name(cx, &cx->status_code, g.status_codes, code) < 0 ||
        str_push(cx, &cx->status_message, message.ptr, message.len) < 0)
        return -1;
    for (int c = 0; c < g.npromoted; c++) {
        const Value *v = NULL;
        for (int k = 0; k < g.promoted[c].nkeys; k++) {
            const Value *candidate = &cx->found[g.promoted[c].slots[k]];
            if (candidate->kind != V_ABSENT) {
                v = candidate;
                break;
            }
        }
        if (push_promoted(cx, &cx->promoted[c], v) < 0) return -1;
    }
    if (map_copy_row(cx, &cx->resource.values, &cx->stage.values) < 0 ||
        map_copy_row(cx, &cx->resource.types, &cx->stage.types) < 0 ||
        str_push(cx, &cx->scope_name, scope->name, scope->name_len) < 0 ||
        str_push(cx, &cx->scope_version, scope->version, scope->version_len) < 0 ||
        map_copy_row(cx, &cx->scope.values, &cx->scope_stage.values) < 0 ||
        map_copy_row(cx, &cx->scope.types, &cx->scope_stage.types) < 0 ||
        i64_push(&cx->dropped_attrs, (int64_t)dropped_attrs) < 0 ||
        i64_push(&cx->dropped_events, (int64_t)dropped_events) < 0 ||
        i64_push(&cx->dropped_links, (int64_t)dropped_links) < 0)
        return -1;
    cx->spans++;
    return 0;
}

static const Key SERVICE_KEY[] = {{"service.name", 12}};

/* The service name among the resource's attributes (`service_name_of`). */
static int set_service(Ctx *cx) {
    cx->service.len = 0;
    const Value *v = &cx->service_found;
    if (v->kind == V_ABSENT) return 0;
    if (v->kind == V_STRING) return buf_put(&cx->service, v->ptr, v->len);
    PyObject *obj = value_object(v);
    if (!obj) return -1;
    PyObject *text = PyObject_CallFunctionObjArgs(g.text_of, obj, NULL);  /* as the maps show it */
    Py_DECREF(obj);
    if (!text) return -1;
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    int r = utf8 ? buf_put(&cx->service, utf8, (size_t)n) : -1;
    Py_DECREF(text);
    return r;
}

/* The scope of a ScopeSpans [p, end), merged over repeats like the resource: its name and version
 * (the last given win), its attributes concatenated and rendered into `cx->scope_stage`.
 * 0 = done, 1 = attributes rejected (`cx->reason` says why), -1 = error. */
static int render_scope(Ctx *cx, const uint8_t *p, const uint8_t *end, Scope *scope) {
    Field f, n;
    cx->kvs.len = 0;
    while (next_field(&p, end, &f)) {
        if (f.fn != 1 || f.wt != 2) continue;
        const uint8_t *u = f.ptr, *uend = f.ptr + f.len;
        while (next_field(&u, uend, &n)) {
            if (n.wt != 2) continue;
            if (n.fn == 1) scope->name = n.ptr, scope->name_len = n.len;
            else if (n.fn == 2) scope->version = n.ptr, scope->version_len = n.len;
            else if (n.fn == 3 && slices_push(&cx->kvs, n.ptr, n.len) < 0) return -1;
        }
    }
    attrs_truncate(&cx->scope_stage, 0);
    return render_attrs(cx, &cx->kvs, &cx->scope_stage, NULL, 0, NULL);
}

static int convert_resource_spans(Ctx *cx, const uint8_t *p, const uint8_t *end, Py_ssize_t ri) {
    Field f, s;
    /* the resource, merged over repeats: its attributes concatenated */
    cx->kvs.len = 0;
    const uint8_t *q = p;
    while (next_field(&q, end, &f)) {
        if (f.fn != 1 || f.wt != 2) continue;
        const uint8_t *r = f.ptr, *rend = f.ptr + f.len;
        while (next_field(&r, rend, &s))
            if (s.fn == 1 && s.wt == 2 && slices_push(&cx->kvs, s.ptr, s.len) < 0) return -1;
    }
    attrs_truncate(&cx->stage, 0);
    value_clear(&cx->service_found);
    int rejected = render_attrs(cx, &cx->kvs, &cx->stage, SERVICE_KEY, 1, &cx->service_found);
    if (rejected < 0) return -1;
    if (!rejected && set_service(cx) < 0) return -1;

    Py_ssize_t si = 0;
    q = p;
    while (next_field(&q, end, &f)) {
        if (f.fn != 2 || f.wt != 2) continue;
        const uint8_t *ss = f.ptr, *ssend = f.ptr + f.len, *t;
        Scope scope = {(const uint8_t *)"", (const uint8_t *)"", 0, 0};
        /* a resource over the limits rejects its spans before its scopes are looked at */
        int scope_rejected = rejected ? 0 : render_scope(cx, ss, ssend, &scope);
        if (scope_rejected < 0) return -1;
        Py_ssize_t pi = 0;
        for (t = ss; next_field(&t, ssend, &s);) {
            if (s.fn != 2 || s.wt != 2) continue;
            if (rejected) {
                PyObject *where = PyUnicode_FromFormat("resource_spans[%zd].resource", ri);
                if (add_rejection(cx, where) < 0) return -1;
            } else if (scope_rejected) {
                PyObject *where = PyUnicode_FromFormat("resource_spans[%zd].scope_spans[%zd].scope", ri, si);
                if (add_rejection(cx, where) < 0) return -1;
            } else if (convert_span(cx, s.ptr, s.ptr + s.len, &scope, ri, si, pi) < 0) {
                return -1;
            }
            pi++;
        }
        si++;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Arrow arrays from the buffers.                                                                    */

static PyObject *py_buffer(const Buf *b) {
    PyObject *bytes = PyBytes_FromStringAndSize(b->data ? b->data : "", (Py_ssize_t)b->len);
    if (!bytes) return NULL;
    PyObject *buffer = PyObject_CallOneArg(g.py_buffer, bytes);
    Py_DECREF(bytes);
    return buffer;
}

static PyObject *from_buffers(PyObject *type, Py_ssize_t rows, PyObject *buffers, Py_ssize_t nulls) {
    if (!buffers) return NULL;
    PyObject *array = PyObject_CallFunction(g.from_buffers, "OnOn", type, rows, buffers, nulls);
    Py_DECREF(buffers);
    return array;
}

static PyObject *validity(const Buf *bits, Py_ssize_t rows, int nullable, Py_ssize_t *nulls) {
    *nulls = nullable ? null_count(bits, rows) : 0;
    if (*nulls == 0) Py_RETURN_NONE;
    return py_buffer(bits);
}

static PyObject *str_array(const StrCol *c) {
    Py_ssize_t nulls;
    PyObject *valid = validity(&c->valid, c->rows, c->nullable, &nulls);
    if (!valid) return NULL;
    PyObject *offsets = py_buffer(&c->offsets), *data = offsets ? py_buffer(&c->data) : NULL;
    PyObject *buffers = data ? PyList_New(3) : NULL;
    if (!buffers) {
        Py_DECREF(valid);
        Py_XDECREF(offsets);
        Py_XDECREF(data);
        return NULL;
    }
    PyList_SET_ITEM(buffers, 0, valid);
    PyList_SET_ITEM(buffers, 1, offsets);
    PyList_SET_ITEM(buffers, 2, data);
    return from_buffers(g.t_string, c->rows, buffers, nulls);
}

static PyObject *i64_array(const I64Col *c, PyObject *type) {
    Py_ssize_t nulls;
    PyObject *valid = validity(&c->valid, c->rows, c->nullable, &nulls);
    if (!valid) return NULL;
    PyObject *data = py_buffer(&c->data);
    if (!data) {
        Py_DECREF(valid);
        return NULL;
    }
    return from_buffers(type, c->rows, Py_BuildValue("[NN]", valid, data), nulls);
}

static PyObject *offsets_array(const Buf *offsets, Py_ssize_t rows) {
    PyObject *data = py_buffer(offsets);
    if (!data) return NULL;
    return from_buffers(g.t_int32, rows + 1, Py_BuildValue("[ON]", Py_None, data), 0);
}

static PyObject *map_array(const MapCol *m) {
    PyObject *offsets = offsets_array(&m->offsets, m->rows);
    PyObject *keys = offsets ? str_array(&m->keys) : NULL;
    PyObject *values = keys ? str_array(&m->values) : NULL;
    PyObject *result = NULL;
    if (values) {
        PyObject *args = PyTuple_Pack(3, offsets, keys, values);
        PyObject *kwargs = args ? Py_BuildValue("{sO}", "type", g.t_attributes) : NULL;
        if (kwargs) result = PyObject_Call(g.map_from_arrays, args, kwargs);
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
    }
    Py_XDECREF(offsets);
    Py_XDECREF(keys);
    Py_XDECREF(values);
    return result;
}

static int put(PyObject *columns, const char *name, PyObject *array) {
    if (!array) return -1;
    int r = PyDict_SetItemString(columns, name, array);
    Py_DECREF(array);
    return r;
}

/* list<struct<fields>> from the offsets and the struct's children (a dict by field name). */
static PyObject *list_of_structs(const Buf *offsets, Py_ssize_t rows, PyObject *children, PyObject *fields) {
    PyObject *list = PyList_New(0), *result = NULL, *structs = NULL, *offs = NULL;
    if (!list) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(fields);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyObject_GetAttrString(PyList_GET_ITEM(fields, i), "name");
        if (!name) goto done;
        PyObject *child = PyDict_GetItemWithError(children, name);
        Py_DECREF(name);
        if (!child) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "struct field without a column");
            goto done;
        }
        if (PyList_Append(list, child) < 0) goto done;
    }
    {
        PyObject *args = PyTuple_Pack(1, list);
        PyObject *kwargs = args ? Py_BuildValue("{sO}", "fields", fields) : NULL;
        if (kwargs) structs = PyObject_Call(g.struct_from_arrays, args, kwargs);
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
    }
    if (!structs) goto done;
    offs = offsets_array(offsets, rows);
    if (!offs) goto done;
    result = PyObject_CallFunctionObjArgs(g.list_from_arrays, offs, structs, NULL);
done:
    Py_DECREF(list);
    Py_XDECREF(structs);
    Py_XDECREF(offs);
    return result;
}

static PyObject *build_batch(Ctx *cx) {
    PyObject *cols = PyDict_New(), *ev = PyDict_New(), *ln = PyDict_New(), *result = NULL, *arrays = NULL;
    if (!cols || !ev || !ln) goto done;
    struct { const char *name; StrCol *col; } strs[] = {
        {"trace_id", &cx->trace_id}, {"span_id", &cx->span_id}, {"parent_span_id", &cx->parent_span_id},
        {"trace_state", &cx->trace_state}, {"name", &cx->name}, {"kind", &cx->kind},
        {"service_name", &cx->service_name}, {"status_code", &cx->status_code},
        {"status_message", &cx->status_message}, {"scope_name", &cx->scope_name},
        {"scope_version", &cx->scope_version},
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        if (put(cols, strs[i].name, str_array(strs[i].col)) < 0) goto done;
    struct { const char *name; I64Col *col; PyObject *type; } ints[] = {
        {"flags", &cx->flags, g.t_int64}, {"start_time", &cx->start_time, g.t_timestamp},
        {"end_time", &cx->end_time, g.t_timestamp}, {"start_time_unix_nano", &cx->start_ns, g.t_int64},
        {"end_time_unix_nano", &cx->end_ns, g.t_int64}, {"duration", &cx->duration, g.t_int64},
        {"dropped_attributes_count", &cx->dropped_attrs, g.t_int64},
        {"dropped_events_count", &cx->dropped_events, g.t_int64},
        {"dropped_links_count", &cx->dropped_links, g.t_int64},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (put(cols, ints[i].name, i64_array(ints[i].col, ints[i].type)) < 0) goto done;
    for (int c = 0; c < g.npromoted; c++) {
        PromCol *col = &cx->promoted[c];
        PyObject *array = col->is_int ? i64_array(&col->i, g.t_int64) : str_array(&col->s);
        if (!array || PyDict_SetItem(cols, g.promoted[c].name, array) < 0) {
            Py_XDECREF(array);
            goto done;
        }
        Py_DECREF(array);
    }
    {   /* computed after conversion (mallard.collector.pricing): NULL here, as in the Python converter */
        PyObject *name, *type;
        Py_ssize_t pos = 0;
        while (PyDict_Next(g.computed, &pos, &name, &type)) {
            PyObject *array = PyObject_CallFunction(g.nulls, "nO", cx->spans, type);
            if (!array || PyDict_SetItem(cols, name, array) < 0) {
                Py_XDECREF(array);
                goto done;
            }
            Py_DECREF(array);
        }
    }
    if (put(cols, "attributes", map_array(&cx->attrs.values)) < 0 ||
        put(cols, "attribute_types", map_array(&cx->attrs.types)) < 0 ||
        put(cols, "resource_attributes", map_array(&cx->resource.values)) < 0 ||
        put(cols, "resource_attribute_types", map_array(&cx->resource.types)) < 0 ||
        put(cols, "scope_attributes", map_array(&cx->scope.values)) < 0 ||
        put(cols, "scope_attribute_types", map_array(&cx->scope.types)) < 0)
        goto done;
    if (put(ev, "time", i64_array(&cx->ev_time, g.t_timestamp)) < 0 ||
        put(ev, "time_unix_nano", i64_array(&cx->ev_ns, g.t_int64)) < 0 ||
        put(ev, "name", str_array(&cx->ev_name)) < 0 ||
        put(ev, "attributes", map_array(&cx->ev_attrs.values)) < 0 ||
        put(ev, "attribute_types", map_array(&cx->ev_attrs.types)) < 0 ||
        put(ev, "dropped_attributes_count", i64_array(&cx->ev_dropped, g.t_int64)) < 0)
        goto done;
    if (put(ln, "trace_id", str_array(&cx->ln_trace_id)) < 0 ||
        put(ln, "span_id", str_array(&cx->ln_span_id)) < 0 ||
        put(ln, "trace_state", str_array(&cx->ln_trace_state)) < 0 ||
        put(ln, "flags", i64_array(&cx->ln_flags, g.t_int64)) < 0 ||
        put(ln, "attributes", map_array(&cx->ln_attrs.values)) < 0 ||
        put(ln, "attribute_types", map_array(&cx->ln_attrs.types)) < 0 ||
        put(ln, "dropped_attributes_count", i64_array(&cx->ln_dropped, g.t_int64)) < 0)
        goto done;
    if (put(cols, "events", list_of_structs(&cx->event_offsets, cx->spans, ev, g.event_fields)) < 0 ||
        put(cols, "links", list_of_structs(&cx->link_offsets, cx->spans, ln, g.link_fields)) < 0)
        goto done;
    Py_ssize_t n = PyList_GET_SIZE(g.names);
    arrays = PyList_New(n);
    if (!arrays) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *array = PyDict_GetItemWithError(cols, PyList_GET_ITEM(g.names, i));
        if (!array) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_KeyError, "no column %R", PyList_GET_ITEM(g.names, i));
            goto done;
        }
        Py_INCREF(array);
        PyList_SET_ITEM(arrays, i, array);
    }
    {
        PyObject *args = PyTuple_Pack(1, arrays);
        PyObject *kwargs = args ? Py_BuildValue("{sO}", "schema", g.schema) : NULL;
        if (kwargs) result = PyObject_Call(g.batch_from_arrays, args, kwargs);
        Py_XDECREF(args);
        Py_XDECREF(kwargs);
    }
done:
    Py_XDECREF(cols);
    Py_XDECREF(ev);
    Py_XDECREF(ln);
    Py_XDECREF(arrays);
    return result;
}

static PyObject *rejection_message(Ctx *cx) {
    if (!cx->rejected) return PyUnicode_FromString("");
    PyObject *sep = PyUnicode_FromString("; "), *list = PyList_New(cx->nreasons), *joined = NULL;
    PyObject *result = NULL;
    if (!sep || !list) goto done;
    for (int i = 0; i < cx->nreasons; i++) {
        Py_INCREF(cx->reasons[i]);
        PyList_SET_ITEM(list, i, cx->reasons[i]);
    }
    joined = PyUnicode_Join(sep, list);
    if (!joined) goto done;
    Py_ssize_t more = cx->rejected - cx->nreasons;
    if (more > 0)
        result = PyUnicode_FromFormat("rejected %zd: %U (and %zd more)", cx->rejected, joined, more);
    else
        result = PyUnicode_FromFormat("rejected %zd: %U", cx->rejected, joined);
done:
    Py_XDECREF(sep);
    Py_XDECREF(list);
    Py_XDECREF(joined);
    return result;
}

/* ------------------------------------------------------------------------------------------------ */
/* Context lifetime. One context is kept between calls, its buffers emptied, not freed: a request
 * then costs no allocation growth (and no fresh page faults) once one of its size has been seen. */

#define SPARE_MAX_BYTES ((size_t)64 << 20)  /* a context holding more is freed, not kept */

static Ctx *spare;

#define N_STRS 15
#define N_INTS 14
#define N_ATTRS 7

static void ctx_columns(Ctx *cx, StrCol **strs, I64Col **ints, AttrCols **attrs) {
    StrCol *s[N_STRS] = {&cx->trace_id, &cx->span_id, &cx->parent_span_id, &cx->trace_state, &cx->name,
                         &cx->kind, &cx->service_name, &cx->status_code, &cx->status_message,
                         &cx->scope_name, &cx->scope_version, &cx->ev_name, &cx->ln_trace_id,
                         &cx->ln_span_id, &cx->ln_trace_state};
    I64Col *i[N_INTS] = {&cx->flags, &cx->start_time, &cx->end_time, &cx->start_ns, &cx->end_ns,
                         &cx->duration, &cx->dropped_attrs, &cx->dropped_events, &cx->dropped_links,
                         &cx->ev_time, &cx->ev_ns, &cx->ev_dropped, &cx->ln_flags, &cx->ln_dropped};
    AttrCols *a[N_ATTRS] = {&cx->attrs, &cx->resource, &cx->scope, &cx->ev_attrs, &cx->ln_attrs, &cx->stage,
                            &cx->scope_stage};
    memcpy(strs, s, sizeof(s));
    memcpy(ints, i, sizeof(i));
    memcpy(attrs, a, sizeof(a));
}

static Ctx *ctx_new(void) {
    Ctx *cx = PyMem_Calloc(1, sizeof(Ctx));
    if (!cx) {
        PyErr_NoMemory();
        return NULL;
    }
    cx->promoted = PyMem_Calloc((size_t)g.npromoted + 1, sizeof(PromCol));
    cx->found = PyMem_Calloc((size_t)g.npromoted_keys + 1, sizeof(Value));
    if (!cx->promoted || !cx->found) {
        PyMem_Free(cx->promoted);
        PyMem_Free(cx->found);
        PyMem_Free(cx);
        PyErr_NoMemory();
        return NULL;
    }
    for (int c = 0; c < g.npromoted; c++) {
        cx->promoted[c].is_int = g.promoted[c].is_int;
        cx->promoted[c].i.nullable = 1;
        cx->promoted[c].s.nullable = 1;
    }
    return cx;
}

static void str_reset(StrCol *c) {
    c->offsets.len = c->data.len = c->valid.len = 0;
    c->rows = 0;
}

static void map_reset(MapCol *m) {
    m->offsets.len = 0;
    m->rows = 0;
    str_reset(&m->keys);
    str_reset(&m->values);
}

/* Empties every column (keeping its memory) and readies it for a request. */
static int ctx_reset(Ctx *cx) {
    StrCol *strs[N_STRS];
    I64Col *ints[N_INTS];
    AttrCols *attrs[N_ATTRS];
    ctx_columns(cx, strs, ints, attrs);
    for (int i = 0; i < N_STRS; i++) str_reset(strs[i]);
    for (int i = 0; i < N_INTS; i++) ints[i]->data.len = ints[i]->valid.len = 0, ints[i]->rows = 0;
    for (int i = 0; i < N_ATTRS; i++) map_reset(&attrs[i]->values), map_reset(&attrs[i]->types);
    for (int c = 0; c < g.npromoted; c++) {
        str_reset(&cx->promoted[c].s);
        cx->promoted[c].i.data.len = cx->promoted[c].i.valid.len = 0;
        cx->promoted[c].i.rows = 0;
    }
    for (int i = 0; i < N_STRS; i++)
        if (buf_i32(&strs[i]->offsets, 0) < 0) return -1;
    for (int i = 0; i < N_ATTRS; i++) {
        MapCol *maps[2] = {&attrs[i]->values, &attrs[i]->types};
        for (int k = 0; k < 2; k++) {
            maps[k]->values.nullable = 1;
            if (buf_i32(&maps[k]->offsets, 0) < 0 || buf_i32(&maps[k]->keys.offsets, 0) < 0 ||
                buf_i32(&maps[k]->values.offsets, 0) < 0)
                return -1;
        }
    }
    for (int c = 0; c < g.npromoted; c++)
        if (buf_i32(&cx->promoted[c].s.offsets, 0) < 0) return -1;
    cx->event_offsets.len = cx->link_offsets.len = cx->service.len = 0;
    if (buf_i32(&cx->event_offsets, 0) < 0 || buf_i32(&cx->link_offsets, 0) < 0) return -1;
    cx->spans = cx->events = cx->links = cx->rejected = 0;
    cx->kvs.len = cx->evs.len = cx->lns.len = 0;
    cx->defer = 0;
    return 0;
}

/* Drops the context's references to Python objects (values, reasons). */
static void ctx_release(Ctx *cx) {
    for (int k = 0; k < g.npromoted_keys; k++) value_clear(&cx->found[k]);
    value_clear(&cx->service_found);
    for (int i = 0; i < cx->nreasons; i++) Py_CLEAR(cx->reasons[i]);
    cx->nreasons = 0;
    Py_CLEAR(cx->reason);
}

static size_t ctx_bytes(Ctx *cx) {
    StrCol *strs[N_STRS];
    I64Col *ints[N_INTS];
    AttrCols *attrs[N_ATTRS];
    ctx_columns(cx, strs, ints, attrs);
    size_t total = 0;
    for (int i = 0; i < N_STRS; i++) total += strs[i]->data.cap + strs[i]->offsets.cap;
    for (int i = 0; i < N_INTS; i++) total += ints[i]->data.cap;
    for (int i = 0; i < N_ATTRS; i++)
        total += attrs[i]->values.keys.data.cap + attrs[i]->values.values.data.cap +
                 attrs[i]->values.keys.offsets.cap + attrs[i]->values.values.offsets.cap;
    return total;
}

static void ctx_free(Ctx *cx) {
    StrCol *strs[N_STRS];
    I64Col *ints[N_INTS];
    AttrCols *attrs[N_ATTRS];
    ctx_columns(cx, strs, ints, attrs);
    ctx_release(cx);
    for (int i = 0; i < N_STRS; i++) str_free(strs[i]);
    for (int i = 0; i < N_INTS; i++) i64_free(ints[i]);
    for (int i = 0; i < N_ATTRS; i++) attrs_free(attrs[i]);
    buf_free(&cx->event_offsets);
    buf_free(&cx->link_offsets);
    buf_free(&cx->service);
    for (int c = 0; c < g.npromoted; c++) {
        str_free(&cx->promoted[c].s);
        i64_free(&cx->promoted[c].i);
    }
    PyMem_Free(cx->promoted);
    PyMem_Free(cx->found);
    PyMem_Free(cx->kvs.items);
    PyMem_Free(cx->evs.items);
    PyMem_Free(cx->lns.items);
    PyMem_Free(cx);
}

/* A context for one call: the kept one if no other call holds it, else a new one. */
static Ctx *ctx_take(void) {
    Ctx *cx = spare;
    spare = NULL;
    if (!cx && !(cx = ctx_new())) return NULL;
    if (ctx_reset(cx) < 0) {
        ctx_free(cx);
        return NULL;
    }
    return cx;
}

static void ctx_give_back(Ctx *cx) {
    ctx_release(cx);
    if (!spare && ctx_bytes(cx) <= SPARE_MAX_BYTES) {
        spare = cx;
        return;
    }
    ctx_free(cx);
}

/* ------------------------------------------------------------------------------------------------ */
/* First-use setup: every fact comes from the Python module that owns it. It is built in a local
 * State and published in one step, so threads racing through a first call never see half of it. */

static PyObject *import_attr(const char *module, const char *name) {
    PyObject *mod = PyImport_ImportModule(module);
    if (!mod) return NULL;
    PyObject *attr = PyObject_GetAttrString(mod, name);
    Py_DECREF(mod);
    return attr;
}

static void state_free(State *s) {
    PyObject **objs[] = {&s->from_buffers, &s->py_buffer, &s->map_from_arrays, &s->struct_from_arrays,
                         &s->list_from_arrays, &s->batch_from_arrays, &s->t_string, &s->t_int64,
                         &s->t_int32, &s->t_timestamp, &s->t_attributes, &s->event_fields,
                         &s->link_fields, &s->schema, &s->names, &s->permanent_error,
                         &s->kv_from_string, &s->render_other, &s->text_of, &s->s_value, &s->s_which_oneof,
                         &s->s_string_value, &s->kinds, &s->status_codes, &s->promoted_key_objs,
                         &s->computed, &s->nulls};
    for (size_t i = 0; i < sizeof(objs) / sizeof(objs[0]); i++) Py_CLEAR(*objs[i]);
    if (s->promoted) {
        for (int c = 0; c < s->npromoted; c++) Py_XDECREF(s->promoted[c].name);
        PyMem_Free(s->promoted);
    }
    PyMem_Free(s->promoted_keys);
    memset(s, 0, sizeof(*s));
}

/* SPAN_PROMOTED: per column, its type and the attribute keys tried in order. */
static int load_promoted(State *s) {
    PyObject *spec = import_attr("mallard.storage.schema", "SPAN_PROMOTED");
    if (!spec) return -1;
    int r = -1;
    PyObject *items = PyMapping_Items(spec);
    PyObject *keys = PyList_New(0);
    if (!items || !keys) goto done;
    Py_ssize_t n = PyList_GET_SIZE(items);
    s->promoted = PyMem_Calloc((size_t)n + 1, sizeof(PromotedSpec));
    if (!s->promoted) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *type, *tried;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "U(OO)", &name, &type, &tried)) goto done;
        PromotedSpec *p = &s->promoted[s->npromoted++];
        Py_INCREF(name);
        p->name = name;
        int is_int = PyObject_RichCompareBool(type, s->t_int64, Py_EQ);
        int is_str = PyObject_RichCompareBool(type, s->t_string, Py_EQ);
        if (is_int < 0 || is_str < 0) goto done;
        if (!is_int && !is_str) s->usable = 0;  /* a column type this module cannot build */
        p->is_int = is_int;
        PyObject *seq = PySequence_Fast(tried, "SPAN_PROMOTED keys must be a sequence");
        if (!seq) goto done;
        for (Py_ssize_t k = 0; k < PySequence_Fast_GET_SIZE(seq); k++) {
            PyObject *key = PySequence_Fast_GET_ITEM(seq, k);
            if (!PyUnicode_Check(key)) {
                PyErr_SetString(PyExc_TypeError, "SPAN_PROMOTED keys must be str");
                Py_DECREF(seq);
                goto done;
            }
            Py_ssize_t slot = PySequence_Index(keys, key);
            if (slot < 0) {
                PyErr_Clear();
                if (PyList_Append(keys, key) < 0) {
                    Py_DECREF(seq);
                    goto done;
                }
                slot = PyList_GET_SIZE(keys) - 1;
            }
            if (p->nkeys == (int)(sizeof(p->slots) / sizeof(p->slots[0]))) {
                s->usable = 0;
                break;
            }
            p->slots[p->nkeys++] = (int)slot;
        }
        Py_DECREF(seq);
    }
    s->npromoted_keys = (int)PyList_GET_SIZE(keys);
    s->promoted_keys = PyMem_Calloc((size_t)s->npromoted_keys + 1, sizeof(Key));
    if (!s->promoted_keys) {
        PyErr_NoMemory();
        goto done;
    }
    for (int k = 0; k < s->npromoted_keys; k++) {
        s->promoted_keys[k].key = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(keys, k), &s->promoted_keys[k].len);
        if (!s->promoted_keys[k].key) goto done;
    }
    s->promoted_key_objs = keys;
    keys = NULL;
    r = 0;
done:
    Py_DECREF(spec);
    Py_XDECREF(items);
    Py_XDECREF(keys);
    return r;
}

static int load_state(State *s) {
    memset(s, 0, sizeof(*s));
    s->usable = 1;
    PyObject *pa = NULL, *array_cls = NULL, *map_cls = NULL, *struct_cls = NULL, *list_cls = NULL;
    PyObject *batch_cls = NULL, *event = NULL, *link = NULL, *spans_mod = NULL, *kv_cls = NULL;
    int r = -1;
#define GET(target, expr) \
    if (!((target) = (expr))) goto done
    GET(pa, PyImport_ImportModule("pyarrow"));
    GET(array_cls, PyObject_GetAttrString(pa, "Array"));
    GET(map_cls, PyObject_GetAttrString(pa, "MapArray"));
    GET(struct_cls, PyObject_GetAttrString(pa, "StructArray"));
    GET(list_cls, PyObject_GetAttrString(pa, "ListArray"));
    GET(batch_cls, PyObject_GetAttrString(pa, "RecordBatch"));
    GET(s->from_buffers, PyObject_GetAttrString(array_cls, "from_buffers"));
    GET(s->py_buffer, PyObject_GetAttrString(pa, "py_buffer"));
    GET(s->map_from_arrays, PyObject_GetAttrString(map_cls, "from_arrays"));
    GET(s->struct_from_arrays, PyObject_GetAttrString(struct_cls, "from_arrays"));
    GET(s->list_from_arrays, PyObject_GetAttrString(list_cls, "from_arrays"));
    GET(s->batch_from_arrays, PyObject_GetAttrString(batch_cls, "from_arrays"));
    GET(s->t_string, PyObject_CallMethod(pa, "string", NULL));
    GET(s->t_int64, PyObject_CallMethod(pa, "int64", NULL));
    GET(s->t_int32, PyObject_CallMethod(pa, "int32", NULL));
    GET(s->nulls, PyObject_GetAttrString(pa, "nulls"));
    GET(s->computed, import_attr("mallard.storage.schema", "SPAN_COMPUTED"));
    GET(s->t_timestamp, import_attr("mallard.storage.schema", "TIMESTAMP"));
    GET(s->t_attributes, import_attr("mallard.storage.schema", "ATTRIBUTES"));
    GET(event, import_attr("mallard.storage.schema", "EVENT"));
    GET(link, import_attr("mallard.storage.schema", "LINK"));
    GET(s->event_fields, PySequence_List(event));
    GET(s->link_fields, PySequence_List(link));
    GET(s->schema, import_attr("mallard.storage.schema", "SPANS"));
    GET(s->names, PyObject_GetAttrString(s->schema, "names"));
    GET(s->permanent_error, import_attr("mallard.collector.errors", "PermanentError"));
    GET(s->render_other, import_attr("mallard.collector.arrow.attributes", "render_other"));
    GET(s->text_of, import_attr("mallard.collector.arrow.attributes", "text_of"));
    GET(kv_cls, import_attr("opentelemetry.proto.common.v1.common_pb2", "KeyValue"));
    GET(s->kv_from_string, PyObject_GetAttrString(kv_cls, "FromString"));
    GET(spans_mod, PyImport_ImportModule("mallard.collector.arrow.spans"));
    GET(s->kinds, PyObject_GetAttrString(spans_mod, "KINDS"));
    GET(s->status_codes, PyObject_GetAttrString(spans_mod, "STATUS_CODES"));
    GET(s->s_value, PyUnicode_InternFromString("value"));
    GET(s->s_which_oneof, PyUnicode_InternFromString("WhichOneof"));
    GET(s->s_string_value, PyUnicode_InternFromString("string_value"));
#undef GET
    if (!PyList_Check(s->names) || !PyTuple_Check(s->kinds) || !PyTuple_Check(s->status_codes) ||
        !PyDict_Check(s->computed)) {
        PyErr_SetString(PyExc_TypeError,
                        "SPANS.names must be a list, KINDS and STATUS_CODES tuples, SPAN_COMPUTED a dict");
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(s->kinds); i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(s->kinds, i))) s->usable = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(s->status_codes); i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(s->status_codes, i))) s->usable = 0;
    if (load_promoted(s) < 0) goto done;
    r = 0;
done:
    Py_XDECREF(pa);
    Py_XDECREF(array_cls);
    Py_XDECREF(map_cls);
    Py_XDECREF(struct_cls);
    Py_XDECREF(list_cls);
    Py_XDECREF(batch_cls);
    Py_XDECREF(event);
    Py_XDECREF(link);
    Py_XDECREF(spans_mod);
    Py_XDECREF(kv_cls);
    if (r < 0) state_free(s);
    return r;
}

static int ensure_ready(void) {
    if (g.ready) return 0;
    State s;
    if (load_state(&s) < 0) return -1;
    if (g.ready) {  /* another thread got there while this one was importing */
        state_free(&s);
        return 0;
    }
    s.ready = 1;
    g = s;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Entry point.                                                                                      */

static PyObject *convert(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    PyObject *max_attributes, *max_depth;
    if (!PyArg_ParseTuple(args, "y*OO:convert", &view, &max_attributes, &max_depth)) return NULL;
    PyObject *result = NULL;
    Ctx *cx = NULL;
    if (ensure_ready() < 0) goto done;
    if (!g.usable || !PyLong_Check(max_attributes)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    int overflow = 0;
    long long max_attrs = PyLong_AsLongLongAndOverflow(max_attributes, &overflow);
    if (overflow) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (max_attrs == -1 && PyErr_Occurred()) goto done;

    const uint8_t *data = view.buf, *end = data + view.len;
    if (validate(M_REQUEST, data, end, MAX_DEPTH, NO_GROUP) != end) {
        PyErr_SetString(g.permanent_error, MALFORMED);
        goto done;
    }
    if (!(cx = ctx_take())) goto done;
    cx->max_attributes = max_attrs;
    cx->max_depth = max_depth;
    Field f;
    Py_ssize_t ri = 0;
    const uint8_t *p = data;
    int failed = 0;
    while (next_field(&p, end, &f)) {
        if (f.fn != 1 || f.wt != 2) continue;
        if (convert_resource_spans(cx, f.ptr, f.ptr + f.len, ri++) < 0) {
            failed = 1;
            break;
        }
    }
    if (failed) {
        if (cx->defer) {
            PyErr_Clear();
            result = Py_NewRef(Py_None);
        }
        goto done;
    }
    PyObject *batch = build_batch(cx);
    if (!batch) goto done;
    PyObject *message = rejection_message(cx);
    if (!message) {
        Py_DECREF(batch);
        goto done;
    }
    result = Py_BuildValue("(NnN)", batch, cx->rejected, message);
done:
    if (cx) ctx_give_back(cx);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"convert", convert, METH_VARARGS,
     "convert(payload, max_attributes, max_depth) -> (batch, rejected, message) | None\n\n"
     "The spans RecordBatch of an OTLP ExportTraceServiceRequest, as spans_to_arrow_python makes it.\n"
     "None when the request needs the Python converter; malformed protobuf raises PermanentError."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_spans",
    "Native OTLP trace request to spans RecordBatch converter (see spans.py; the Python one is its oracle).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native_spans(void) {
    const uint16_t probe = 1;
    if (*(const uint8_t *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "_native_spans supports little-endian hosts only");
        return NULL;
    }
    return PyModule_Create(&module);
}
