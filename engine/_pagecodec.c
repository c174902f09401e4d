/* Whole chunks of 4 KiB pages through zlib-ng with the GIL released once per chunk.
 *
 * python-zlib-ng offers one call per page, and every call is a GIL hand-over: with two
 * compress threads and a migration thread on two cores those hand-overs, not deflate, set
 * the pace. Here a worker takes the GIL once per chunk of pages. The zlib-ng used is the
 * one inside python-zlib-ng (its extension exports the zng_* API), bound at run time by
 * bind(), so the pages are compressed by exactly the library the rest of the engine uses.
 *
 * Page format (same bytes as zlib-ng's compressobj(level, DEFLATED, -15) fed one page and a
 * full flush): a raw-deflate segment from a reset stream, ended by a sync flush. Each
 * segment inflates alone into exactly one page.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>

#define PAGE 4096 /* the guest page: exported as PAGE_SIZE, which engine/guest.py reads */
#define ZLIBNG_MAJOR "2." /* zng_stream below is zlib-ng 2.x's layout */
#define CAPACITY (2 * PAGE) /* per compressed page: a stored page plus its framing fits */
/* Fewer pages than this are scanned holding the GIL: the work (~1 us a page) is less than
 * taking the GIL back from a busy thread (up to a switch interval), which postcopy's
 * one-page requests would otherwise wait for at each call. */
#define GIL_FREE_PAGES 16

/* zlib-ng's native stream (zlib-ng.h, 2.x). */
typedef struct {
    const uint8_t *next_in;
    uint32_t avail_in;
    size_t total_in;
    uint8_t *next_out;
    uint32_t avail_out;
    size_t total_out;
    const char *msg;
    void *state;
    void *zalloc;
    void *zfree;
    void *opaque;
    int data_type;
    uint32_t adler;
    unsigned long reserved;
} zng_stream;

enum { Z_OK = 0, Z_STREAM_END = 1, Z_BUF_ERROR = -5, Z_SYNC_FLUSH = 2, Z_DEFLATED = 8 };

static int32_t (*deflate_init2)(zng_stream *, int32_t, int32_t, int32_t, int32_t, int32_t);
static int32_t (*deflate_reset)(zng_stream *);
static int32_t (*deflate_run)(zng_stream *, int32_t);
static int32_t (*deflate_end)(zng_stream *);
static int32_t (*inflate_init2)(zng_stream *, int32_t);
static int32_t (*inflate_reset)(zng_stream *);
static int32_t (*inflate_run)(zng_stream *, int32_t);
static int32_t (*inflate_end)(zng_stream *);
static uint32_t (*crc32_run)(uint32_t, const uint8_t *, uint32_t);

static PyObject *
bind_zlib(PyObject *module, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL); /* kept open for the process's life */
    if (lib == NULL) {
        PyErr_Format(PyExc_ImportError, "cannot open zlib-ng: %s", dlerror());
        return NULL;
    }
    /* The stream layout below is zlib-ng 2.x's: any other release would be misread. */
    const char *(*version)(void) = (const char *(*)(void))dlsym(lib, "zlibng_version");
    if (version == NULL) {
        PyErr_Format(PyExc_ImportError, "%s is not zlib-ng (no zlibng_version)", path);
        return NULL;
    }
    if (strncmp(version(), ZLIBNG_MAJOR, strlen(ZLIBNG_MAJOR)) != 0) {
        PyErr_Format(PyExc_ImportError, "zlib-ng %s found, the page codec needs %sx",
                     version(), ZLIBNG_MAJOR);
        return NULL;
    }
    struct { void **slot; const char *name; } symbols[] = {
        {(void **)&deflate_init2, "zng_deflateInit2"},
        {(void **)&deflate_reset, "zng_deflateReset"},
        {(void **)&deflate_run, "zng_deflate"},
        {(void **)&deflate_end, "zng_deflateEnd"},
        {(void **)&inflate_init2, "zng_inflateInit2"},
        {(void **)&inflate_reset, "zng_inflateReset"},
        {(void **)&inflate_run, "zng_inflate"},
        {(void **)&inflate_end, "zng_inflateEnd"},
        {(void **)&crc32_run, "zng_crc32"},
    };
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        *symbols[i].slot = dlsym(lib, symbols[i].name);
        if (*symbols[i].slot == NULL) {
            PyErr_Format(PyExc_ImportError, "zlib-ng lacks %s", symbols[i].name);
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static int
bound(void)
{
    if (crc32_run == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pagecodec.bind() was not called");
        return 0;
    }
    return 1;
}

/* One stream serves one call at a time; a second thread gets an error, not a corrupt stream. */
static int
take(int ready, int *busy)
{
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "stream not initialised");
        return 0;
    }
    if (*busy) {
        PyErr_SetString(PyExc_RuntimeError, "stream in use by another thread");
        return 0;
    }
    *busy = 1;
    return 1;
}

/* The page numbers of a list, each checked against the guest buffer's size. */
static Py_ssize_t *
page_numbers(PyObject *pages, Py_ssize_t n, Py_ssize_t size)
{
    Py_ssize_t *out = PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
    if (out == NULL)
        return (Py_ssize_t *)PyErr_NoMemory();
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t page = PyLong_AsSsize_t(PyList_GET_ITEM(pages, k));
        if (page == -1 && PyErr_Occurred()) {
            PyMem_Free(out);
            return NULL;
        }
        if (page < 0 || page >= size / PAGE) {
            PyErr_Format(PyExc_IndexError, "page %zd is outside the buffer", page);
            PyMem_Free(out);
            return NULL;
        }
        out[k] = page;
    }
    return out;
}

/* A list of n unsigned 32-bit values (sizes, CRCs); NULL with an exception set. */
static PyObject *
uint32_list(const uint32_t *values, Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    for (Py_ssize_t k = 0; list != NULL && k < n; k++) {
        PyObject *value = PyLong_FromUnsignedLong(values[k]);
        if (value == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, k, value);
    }
    return list;
}

/* (payload, sizes, crcs) from n compressed segments, CAPACITY apart in out, packed back to
 * back; NULL with an exception set. */
static PyObject *
segments(const uint8_t *out, const uint32_t *sizes, const uint32_t *crcs, Py_ssize_t n)
{
    PyObject *result = NULL;
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        total += sizes[k];
    PyObject *payload = PyBytes_FromStringAndSize(NULL, total);
    PyObject *lengths = uint32_list(sizes, n), *checks = uint32_list(crcs, n);
    if (payload != NULL && lengths != NULL && checks != NULL) {
        char *at = PyBytes_AS_STRING(payload);
        for (Py_ssize_t k = 0; k < n; k++) {
            memcpy(at, out + k * CAPACITY, sizes[k]);
            at += sizes[k];
        }
        result = PyTuple_Pack(3, payload, lengths, checks);
    }
    Py_XDECREF(payload);
    Py_XDECREF(lengths);
    Py_XDECREF(checks);
    return result;
}

/* One segment back into its page; 0 when it does not decode to exactly one page. */
typedef int (*page_decoder)(void *ctx, const uint8_t *in, Py_ssize_t len, uint8_t *page);

/* What each codec's decompress_into checks and says. */
typedef struct {
    page_decoder decode;
    int (*bound)(void); /* for the module-level calls: the library is bound */
    Py_ssize_t least, most; /* a segment's size */
    const char *bad_size, *bad_page; /* bad_page may name the page (%zd) */
} Decoding;

/* A decompress_into call's arguments (ram, pages, payload, sizes) and what it allocates. */
typedef struct {
    Py_buffer ram, payload;
    PyObject *pages, *lengths;
    Py_ssize_t n, *index, *size;
    uint32_t *crcs;
} Decode;

/* 0 with an exception set, and nothing held, when the arguments do not parse. */
static int
decode_parse(PyObject *args, Decode *d)
{
    memset(d, 0, sizeof(*d));
    if (!PyArg_ParseTuple(args, "w*O!y*O!", &d->ram, &PyList_Type, &d->pages, &d->payload,
                          &PyList_Type, &d->lengths))
        return 0;
    d->n = PyList_GET_SIZE(d->pages);
    return 1;
}

static void
decode_release(Decode *d)
{
    PyMem_Free(d->crcs);
    PyMem_Free(d->size);
    PyMem_Free(d->index);
    PyBuffer_Release(&d->payload);
    PyBuffer_Release(&d->ram);
}

/* -> crcs: every size checked first (nothing written on a bad one), then each segment, back
 * to back in payload, decoded into its page and its CRC taken, without the GIL; ValueError on
 * the first that fails. */
static PyObject *
decode_into(Decode *d, const Decoding *how, void *ctx)
{
    Py_ssize_t n = d->n, failed = -1, used = 0;
    if (PyList_GET_SIZE(d->lengths) != n) {
        PyErr_SetString(PyExc_ValueError, "one size per page");
        return NULL;
    }
    Py_ssize_t *index = d->index = page_numbers(d->pages, n, d->ram.len);
    Py_ssize_t *size = d->size = PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
    uint32_t *crcs = d->crcs = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t));
    if (index == NULL || size == NULL || crcs == NULL) {
        if (index != NULL)
            PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        size[k] = PyLong_AsSsize_t(PyList_GET_ITEM(d->lengths, k));
        if (size[k] < how->least || size[k] > how->most || size[k] > d->payload.len - used) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, how->bad_size);
            return NULL;
        }
        used += size[k];
    }
    page_decoder decode = how->decode;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *at = d->payload.buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint8_t *page = (uint8_t *)d->ram.buf + index[k] * PAGE;
        if (!decode(ctx, at, size[k], page)) {
            failed = k;
            break;
        }
        at += size[k];
        crcs[k] = crc32_run(0, page, PAGE);
    }
    Py_END_ALLOW_THREADS
    if (failed >= 0) {
        PyErr_Format(PyExc_ValueError, how->bad_page, index[failed]);
        return NULL;
    }
    return uint32_list(crcs, n);
}

/* A module-level decompress_into: the library bound, then decode_into. */
static PyObject *
decode_call(PyObject *args, const Decoding *how)
{
    Decode d;
    if (!decode_parse(args, &d))
        return NULL;
    PyObject *result = how->bound() ? decode_into(&d, how, NULL) : NULL;
    decode_release(&d);
    return result;
}

/* -- Deflater ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    zng_stream stream;
    int ready;
    int busy; /* set, with the GIL held, while a call runs without it */
    uint8_t *scratch; /* the last chunk's segments and sizes; kept, so no chunk pays for it */
    Py_ssize_t scratch_pages;
} Deflater;

static int
deflater_init(Deflater *self, PyObject *args, PyObject *kwds)
{
    int level;
    if (!PyArg_ParseTuple(args, "i", &level) || !bound())
        return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Deflater already initialised");
        return -1;
    }
    memset(&self->stream, 0, sizeof(self->stream));
    if (deflate_init2(&self->stream, level, Z_DEFLATED, -15, 8, 0) != Z_OK) {
        PyErr_Format(PyExc_ValueError, "bad compression level %d", level);
        return -1;
    }
    self->ready = 1;
    return 0;
}

static void
deflater_dealloc(Deflater *self)
{
    if (self->ready)
        deflate_end(&self->stream);
    PyMem_Free(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* compress(ram, pages) -> (payload, sizes, crcs): the pages' segments back to back, each
 * segment's size and each page's CRC-32. */
static PyObject *
deflater_compress(Deflater *self, PyObject *args)
{
    Py_buffer ram;
    PyObject *pages, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*O!", &ram, &PyList_Type, &pages))
        return NULL;
    if (!take(self->ready, &self->busy)) {
        PyBuffer_Release(&ram);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(pages), failed = -1;
    Py_ssize_t *index = page_numbers(pages, n, ram.len);
    uint32_t *sizes, *crcs;
    zng_stream *s = &self->stream;
    if (index == NULL)
        goto done;
    if (n > self->scratch_pages) {
        uint8_t *grown = PyMem_Realloc(self->scratch, n * (CAPACITY + sizeof(uint32_t) * 2));
        if (grown == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        self->scratch = grown;
        self->scratch_pages = n;
    }
    uint8_t *out = self->scratch;
    sizes = (uint32_t *)(out + n * CAPACITY);
    crcs = sizes + n;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        const uint8_t *page = (const uint8_t *)ram.buf + index[k] * PAGE;
        deflate_reset(s);
        s->next_in = page;
        s->avail_in = PAGE;
        s->next_out = out + k * CAPACITY;
        s->avail_out = CAPACITY;
        if (deflate_run(s, Z_SYNC_FLUSH) != Z_OK || s->avail_in || !s->avail_out) {
            failed = k;
            break;
        }
        sizes[k] = CAPACITY - s->avail_out;
        crcs[k] = crc32_run(0, page, PAGE);
    }
    Py_END_ALLOW_THREADS
    if (failed >= 0)
        PyErr_Format(PyExc_RuntimeError, "deflate failed on page %zd", index[failed]);
    else
        result = segments(out, sizes, crcs, n);
done:
    self->busy = 0;
    PyMem_Free(index);
    PyBuffer_Release(&ram);
    return result;
}

static PyMethodDef deflater_methods[] = {
    {"compress", (PyCFunction)deflater_compress, METH_VARARGS,
     "compress(ram, pages) -> (payload, sizes, crcs) for those 4 KiB pages of ram."},
    {NULL},
};

static PyTypeObject DeflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._pagecodec.Deflater",
    .tp_doc = "Deflater(level): one zlib-ng stream; one thread at a time.",
    .tp_basicsize = sizeof(Deflater),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)deflater_init,
    .tp_dealloc = (destructor)deflater_dealloc,
    .tp_methods = deflater_methods,
};

/* -- Inflater ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    zng_stream stream;
    int ready;
    int busy; /* set, with the GIL held, while a call runs without it */
} Inflater;

static int
inflater_init(Inflater *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, "") || !bound())
        return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "Inflater already initialised");
        return -1;
    }
    memset(&self->stream, 0, sizeof(self->stream));
    if (inflate_init2(&self->stream, -15) != Z_OK) {
        PyErr_NoMemory();
        return -1;
    }
    self->ready = 1;
    return 0;
}

static void
inflater_dealloc(Inflater *self)
{
    if (self->ready)
        inflate_end(&self->stream);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One segment into one page: all of it consumed, exactly a page out, ended by a sync
 * flush's empty stored block. Anything else is what a corrupt or hostile stream sends. */
static int
inflate_page(void *stream, const uint8_t *in, Py_ssize_t len, uint8_t *page)
{
    static const uint8_t sync[4] = {0x00, 0x00, 0xff, 0xff};
    zng_stream *s = stream;
    if (len < 4 || len > CAPACITY || memcmp(in + len - 4, sync, 4) != 0)
        return 0;
    inflate_reset(s);
    s->next_in = in;
    s->avail_in = (uint32_t)len;
    s->next_out = page;
    s->avail_out = PAGE;
    int32_t rc = inflate_run(s, Z_SYNC_FLUSH);
    return (rc == Z_OK || rc == Z_BUF_ERROR) && !s->avail_in && !s->avail_out;
}

static const Decoding INFLATING = {
    inflate_page, NULL, 0, PY_SSIZE_T_MAX, "decompress data failed", "decompress data failed",
};

/* decompress_into(ram, pages, payload, sizes) -> crcs: the segments back to back in payload,
 * each inflated into its page. */
static PyObject *
inflater_decompress_into(Inflater *self, PyObject *args)
{
    Decode d;
    PyObject *result = NULL;
    if (!decode_parse(args, &d))
        return NULL;
    if (take(self->ready, &self->busy)) {
        result = decode_into(&d, &INFLATING, &self->stream);
        self->busy = 0;
    }
    decode_release(&d);
    return result;
}

static PyMethodDef inflater_methods[] = {
    {"decompress_into", (PyCFunction)inflater_decompress_into, METH_VARARGS,
     "decompress_into(ram, pages, payload, sizes) -> crcs; ValueError on a bad segment."},
    {NULL},
};

static PyTypeObject InflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._pagecodec.Inflater",
    .tp_doc = "Inflater(): one zlib-ng stream; one thread at a time.",
    .tp_basicsize = sizeof(Inflater),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)inflater_init,
    .tp_dealloc = (destructor)inflater_dealloc,
    .tp_methods = inflater_methods,
};

/* -- XBZRLE --------------------------------------------------------------------------- */
/* QEMU's XBZRLE format (docs/xbzrle.txt): the XOR of the cached and the current page as
 * alternating runs, zero-run length then non-zero-run length, each a ULEB128 of at most two
 * bytes, the non-zero run followed by the current page's bytes. A trailing zero run is not
 * written, so an unchanged page encodes to nothing; a delta longer than the page overflows.
 *
 * The page cache follows QEMU's page_cache.c: direct-mapped (slot = page & (slots - 1)); a hit
 * refreshes the entry's age to the current dirty-sync count; an insertion does not evict
 * another page's entry younger than CACHE_LIFETIME syncs. */

#define CACHE_LIFETIME 2
#define NO_PAGE 0 /* addr holds page + 1: a calloc'd table starts empty, untouched */

enum { XBZ_MISS = -2, XBZ_OVERFLOW = -1 }; /* else: the delta's length (0: unchanged) */

static Py_ssize_t
uleb_put(uint8_t *out, uint32_t v)
{
    if (v < 0x80) {
        out[0] = (uint8_t)v;
        return 1;
    }
    out[0] = (uint8_t)(v | 0x80);
    out[1] = (uint8_t)(v >> 7);
    return 2;
}

static Py_ssize_t
uleb_len(Py_ssize_t v)
{
    return v < 0x80 ? 1 : 2;
}

/* The end of the run from i on of bytes where old and new are equal (eq) or differ. */
static Py_ssize_t
run_end(const uint8_t *old, const uint8_t *new, Py_ssize_t i, int eq)
{
    if (eq) { /* word at a time over equal bytes: the common case of a sparse change */
        while (i + 8 <= PAGE) {
            uint64_t a, b;
            memcpy(&a, old + i, 8);
            memcpy(&b, new + i, 8);
            if (a != b)
                break;
            i += 8;
        }
    }
    while (i < PAGE && (old[i] == new[i]) == eq)
        i++;
    return i;
}

/* Encode new against old into out (at most PAGE bytes): its length, or XBZ_OVERFLOW. */
static Py_ssize_t
xbzrle_encode_page(const uint8_t *old, const uint8_t *new, uint8_t *out)
{
    Py_ssize_t i = 0, d = 0;
    while (i < PAGE) {
        Py_ssize_t z = run_end(old, new, i, 1);
        if (z == PAGE)
            break; /* the rest is unchanged: not written */
        Py_ssize_t nz = run_end(old, new, z, 0);
        if (d + uleb_len(z - i) + uleb_len(nz - z) + (nz - z) > PAGE)
            return XBZ_OVERFLOW;
        d += uleb_put(out + d, (uint32_t)(z - i));
        d += uleb_put(out + d, (uint32_t)(nz - z));
        memcpy(out + d, new + z, nz - z);
        d += nz - z;
        i = nz;
    }
    return d;
}

static Py_ssize_t
uleb_get(const uint8_t *in, Py_ssize_t left, uint32_t *v)
{
    if (left < 1)
        return -1;
    if (in[0] < 0x80) {
        *v = in[0];
        return 1;
    }
    if (left < 2 || in[1] >= 0x80)
        return -1;
    *v = (in[0] & 0x7f) | ((uint32_t)in[1] << 7);
    return 2;
}

/* Walk a delta; with page set, apply it. 0 when the delta is malformed or reaches past the
 * page; every length is checked before anything is written. */
static int
xbzrle_walk(const uint8_t *in, Py_ssize_t len, uint8_t *page)
{
    Py_ssize_t i = 0, d = 0;
    while (i < len) {
        uint32_t z, nz;
        Py_ssize_t k = uleb_get(in + i, len - i, &z);
        if (k < 0 || (i && !z))
            return 0; /* only the first zero run may be empty */
        i += k;
        k = uleb_get(in + i, len - i, &nz);
        if (k < 0 || !nz)
            return 0;
        i += k;
        if (z > PAGE - d || nz > PAGE - d - z || (Py_ssize_t)nz > len - i)
            return 0;
        d += z;
        if (page != NULL)
            memcpy(page + d, in + i, nz);
        d += nz;
        i += nz;
    }
    return 1;
}

/* A writable buffer of n elements of size bytes: cache arrays the caller keeps. */
static int
sized(Py_buffer *b, Py_ssize_t n, Py_ssize_t size, const char *what)
{
    if (b->len != n * size) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", what, b->len, n * size);
        return 0;
    }
    return 1;
}

/* cache_insert: 1 when page now owns its slot, with data copied in. */
static int
cache_insert(uint8_t *data, int64_t *addr, int64_t *age, Py_ssize_t slot, int64_t page,
             int64_t now, const uint8_t *from)
{
    if (addr[slot] != NO_PAGE && addr[slot] != page + 1 && age[slot] + CACHE_LIFETIME > now)
        return 0; /* another page's entry, still fresh */
    memcpy(data + slot * PAGE, from, PAGE);
    addr[slot] = page + 1;
    age[slot] = now;
    return 1;
}

/* xbzrle_encode(ram, pages, cache, addr, age, now, last) -> (status, raw, deltas, crcs):
 * per page XBZ_MISS or XBZ_OVERFLOW (its bytes in raw, sent as a normal page) or the length
 * of its delta in deltas (0: unchanged, nothing to send), and the CRC-32 of the bytes the
 * destination will hold. In the last stage (vCPUs stopped) the cache is read, not changed. */
static PyObject *
xbzrle_encode(PyObject *module, PyObject *args)
{
    Py_buffer ram, cache, addrs, ages;
    PyObject *pages, *result = NULL, *status = NULL, *raw = NULL, *deltas = NULL, *checks = NULL;
    long long now;
    int last;
    if (!PyArg_ParseTuple(args, "y*O!w*w*w*Lp", &ram, &PyList_Type, &pages, &cache, &addrs,
                          &ages, &now, &last))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(pages), slots = cache.len / PAGE;
    Py_ssize_t *index = NULL;
    uint8_t *buf = NULL, *cur = NULL;
    int32_t *state = NULL;
    uint32_t *crcs = NULL;
    Py_ssize_t nraw = 0, ndelta = 0;
    if (!bound() || slots < 1 || (slots & (slots - 1)) || cache.len % PAGE ||
        !sized(&addrs, slots, 8, "addr") || !sized(&ages, slots, 8, "age")) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "cache is not a power of two of pages");
        goto done;
    }
    index = page_numbers(pages, n, ram.len);
    buf = PyMem_Malloc((n ? n : 1) * PAGE * 2 + PAGE);
    state = PyMem_Malloc((n ? n : 1) * sizeof(int32_t));
    crcs = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t));
    if (index == NULL || buf == NULL || state == NULL || crcs == NULL) {
        if (index != NULL)
            PyErr_NoMemory();
        goto done;
    }
    uint8_t *rawbuf = buf, *deltabuf = buf + n * PAGE;
    cur = buf + 2 * n * PAGE; /* the page as read once: what is encoded, cached and sent */
    uint8_t *data = cache.buf;
    int64_t *addr = addrs.buf, *age = ages.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        int64_t page = index[k];
        Py_ssize_t slot = page & (slots - 1);
        memcpy(cur, (const uint8_t *)ram.buf + page * PAGE, PAGE);
        crcs[k] = crc32_run(0, cur, PAGE);
        if (addr[slot] != page + 1) {
            if (!last)
                cache_insert(data, addr, age, slot, page, now, cur);
            state[k] = XBZ_MISS;
        } else {
            age[slot] = now;
            uint8_t *old = data + slot * PAGE;
            Py_ssize_t len = xbzrle_encode_page(old, cur, deltabuf + ndelta);
            state[k] = (int32_t)len;
            if (len > 0)
                ndelta += len;
            if (len != 0 && !last)
                memcpy(old, cur, PAGE);
        }
        if (state[k] < 0) {
            memcpy(rawbuf + nraw * PAGE, cur, PAGE);
            nraw++;
        }
    }
    Py_END_ALLOW_THREADS
    status = PyList_New(n);
    raw = PyBytes_FromStringAndSize((const char *)rawbuf, nraw * PAGE);
    deltas = PyBytes_FromStringAndSize((const char *)deltabuf, ndelta);
    checks = uint32_list(crcs, n);
    if (status == NULL || raw == NULL || deltas == NULL || checks == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyLong_FromLong(state[k]);
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(status, k, v);
    }
    result = PyTuple_Pack(4, status, raw, deltas, checks);
done:
    Py_XDECREF(status);
    Py_XDECREF(raw);
    Py_XDECREF(deltas);
    Py_XDECREF(checks);
    PyMem_Free(crcs);
    PyMem_Free(state);
    PyMem_Free(buf);
    PyMem_Free(index);
    PyBuffer_Release(&ages);
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&cache);
    PyBuffer_Release(&ram);
    return result;
}

/* xbzrle_cache_zero(pages, cache, addr, age, now): zero pages sent enter the cache as zeros,
 * so no stale copy of a page now zero stays there (QEMU's xbzrle_cache_zero_page). */
static PyObject *
xbzrle_cache_zero(PyObject *module, PyObject *args)
{
    static const uint8_t zero[PAGE];
    Py_buffer cache, addrs, ages;
    PyObject *pages, *result = NULL;
    long long now;
    if (!PyArg_ParseTuple(args, "O!w*w*w*L", &PyList_Type, &pages, &cache, &addrs, &ages, &now))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(pages), slots = cache.len / PAGE;
    if (slots < 1 || (slots & (slots - 1)) || !sized(&addrs, slots, 8, "addr") ||
        !sized(&ages, slots, 8, "age")) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "cache is not a power of two of pages");
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t page = PyLong_AsSsize_t(PyList_GET_ITEM(pages, k));
        if (page < 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_IndexError, "page %zd", page);
            goto done;
        }
        cache_insert(cache.buf, addrs.buf, ages.buf, page & (slots - 1), page, now, zero);
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&ages);
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&cache);
    return result;
}

/* A delta checked whole, then applied to its page. */
static int
xbzrle_apply(void *unused, const uint8_t *in, Py_ssize_t len, uint8_t *page)
{
    if (!xbzrle_walk(in, len, NULL))
        return 0;
    xbzrle_walk(in, len, page);
    return 1;
}

static const Decoding XBZRLE_DELTAS = {
    xbzrle_apply, bound, 0, PAGE, "XBZRLE delta length out of bounds",
    "bad XBZRLE delta for page %zd",
};

/* xbzrle_decode_into(ram, pages, payload, sizes) -> crcs: each delta, back to back in
 * payload, checked whole and then applied to its page; ValueError (nothing of that delta
 * written) on the first malformed one. */
static PyObject *
xbzrle_decode_into(PyObject *module, PyObject *args)
{
    return decode_call(args, &XBZRLE_DELTAS);
}

/* -- plain pages ------------------------------------------------------------------------ */

/* The page numbers of an intp array buffer, their count, each checked against the guest
 * buffer; NULL with an exception set. */
static const Py_ssize_t *
page_array(Py_buffer *pages, Py_ssize_t size, Py_ssize_t *n)
{
    if (pages->len % sizeof(Py_ssize_t)) {
        PyErr_SetString(PyExc_TypeError, "pages must be a contiguous array of intp");
        return NULL;
    }
    const Py_ssize_t *index = pages->buf;
    *n = pages->len / (Py_ssize_t)sizeof(Py_ssize_t);
    for (Py_ssize_t k = 0; k < *n; k++)
        if (index[k] < 0 || index[k] >= size / PAGE) {
            PyErr_Format(PyExc_IndexError, "page %zd is outside the buffer", index[k]);
            return NULL;
        }
    return index;
}

static int
is_zero(const uint8_t *page)
{
    /* Most data pages differ from zero in their first bytes: look there first. */
    uint64_t head;
    memcpy(&head, page, sizeof(head));
    if (head)
        return 0;
    uint64_t acc = 0;
    for (size_t at = 0; at < PAGE; at += 64) { /* a cache line per step: the compiler unrolls */
        uint64_t line[8];
        memcpy(line, page + at, sizeof(line));
        for (int w = 0; w < 8; w++)
            acc |= line[w];
        if (acc)
            return 0;
    }
    return 1;
}

/* scan_pages(ram, pages, zero, crcs): for each page, zero[k] = 1 if it is all zero, else 0
 * and crcs[k] = its CRC-32; one pass, the GIL released (crcs may be None: zero pages only). */
static PyObject *
scan_pages(PyObject *module, PyObject *args)
{
    Py_buffer ram, pages, zero, crcs = {0};
    PyObject *crc_arg, *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*O", &ram, &pages, &zero, &crc_arg))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !bound())
        goto done;
    if (crc_arg != Py_None && PyObject_GetBuffer(crc_arg, &crcs, PyBUF_WRITABLE) < 0)
        goto done;
    if (zero.len != n || (crcs.buf != NULL && crcs.len != n * (Py_ssize_t)sizeof(uint32_t))) {
        PyErr_SetString(PyExc_ValueError, "one zero flag (u8) and one CRC (u32) per page");
        goto done;
    }
    PyThreadState *released = n >= GIL_FREE_PAGES ? PyEval_SaveThread() : NULL;
    uint8_t *flags = zero.buf;
    uint32_t *out = crcs.buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        const uint8_t *page = (const uint8_t *)ram.buf + index[k] * PAGE;
        flags[k] = (uint8_t)is_zero(page);
        if (out != NULL)
            out[k] = flags[k] ? 0 : crc32_run(0, page, PAGE);
    }
    if (released != NULL)
        PyEval_RestoreThread(released);
    result = Py_NewRef(Py_None);
done:
    if (crcs.buf != NULL)
        PyBuffer_Release(&crcs);
    PyBuffer_Release(&zero);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return result;
}

/* crc_pages(ram, pages, crcs): crcs[k] = the CRC-32 of page pages[k], the GIL released. */
static PyObject *
crc_pages(PyObject *module, PyObject *args)
{
    Py_buffer ram, pages, crcs;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*", &ram, &pages, &crcs))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !bound())
        goto done;
    if (crcs.len != n * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError, "one CRC (u32) per page");
        goto done;
    }
    PyThreadState *released = n >= GIL_FREE_PAGES ? PyEval_SaveThread() : NULL;
    uint32_t *out = crcs.buf;
    for (Py_ssize_t k = 0; k < n; k++)
        out[k] = crc32_run(0, (const uint8_t *)ram.buf + index[k] * PAGE, PAGE);
    if (released != NULL)
        PyEval_RestoreThread(released);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return result;
}

/* -- LZ4 ---------------------------------------------------------------------------------
 *
 * One LZ4 block per page (x-compress-method lz4, an extension): each decompresses alone into
 * exactly one page. Level 0 or 1 is LZ4's fast mode, 2 to 9 its HC mode at that level. The
 * library is the one inside python-lz4 (its extension exports the LZ4_* API), bound by
 * bind_lz4() as bind() binds zlib-ng. */

static int (*lz4_fast)(void *, const char *, char *, int, int, int);
static int (*lz4_hc)(void *, const char *, char *, int, int, int);
static int (*lz4_state_size)(void);
static int (*lz4_hc_state_size)(void);
static int (*lz4_decompress)(const char *, char *, int, int);

static PyObject *
bind_lz4(PyObject *module, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL); /* kept open for the process's life */
    if (lib == NULL) {
        PyErr_Format(PyExc_ImportError, "cannot open lz4: %s", dlerror());
        return NULL;
    }
    int (*version)(void) = (int (*)(void))dlsym(lib, "LZ4_versionNumber");
    if (version == NULL || version() < 10900) { /* 1.9: the extState and HC calls below */
        PyErr_Format(PyExc_ImportError, "%s is not LZ4 1.9 or later", path);
        return NULL;
    }
    struct { void **slot; const char *name; } symbols[] = {
        {(void **)&lz4_fast, "LZ4_compress_fast_extState"},
        {(void **)&lz4_hc, "LZ4_compress_HC_extStateHC"},
        {(void **)&lz4_state_size, "LZ4_sizeofState"},
        {(void **)&lz4_hc_state_size, "LZ4_sizeofStateHC"},
        {(void **)&lz4_decompress, "LZ4_decompress_safe"},
    };
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        *symbols[i].slot = dlsym(lib, symbols[i].name);
        if (*symbols[i].slot == NULL) {
            PyErr_Format(PyExc_ImportError, "lz4 lacks %s", symbols[i].name);
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static int
lz4_bound(void)
{
    if (lz4_decompress == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pagecodec.bind_lz4() was not called");
        return 0;
    }
    return bound();
}

/* lz4_compress(ram, pages, level) -> (payload, sizes, crcs), as Deflater.compress. */
static PyObject *
lz4_compress(PyObject *module, PyObject *args)
{
    Py_buffer ram;
    PyObject *pages, *result = NULL;
    int level;
    if (!PyArg_ParseTuple(args, "y*O!i", &ram, &PyList_Type, &pages, &level))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(pages), failed = -1;
    Py_ssize_t *index = NULL;
    uint8_t *out = NULL;
    void *state = NULL;
    if (!lz4_bound() || (index = page_numbers(pages, n, ram.len)) == NULL)
        goto done;
    int hc = level >= 2;
    out = PyMem_Malloc((n ? n : 1) * (CAPACITY + 2 * sizeof(uint32_t)));
    state = PyMem_Malloc(hc ? lz4_hc_state_size() : lz4_state_size());
    if (out == NULL || state == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t *sizes = (uint32_t *)(out + n * CAPACITY), *crcs = sizes + n;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *page = (const char *)ram.buf + index[k] * PAGE;
        char *dst = (char *)out + k * CAPACITY;
        int size = hc ? lz4_hc(state, page, dst, PAGE, CAPACITY, level)
                      : lz4_fast(state, page, dst, PAGE, CAPACITY, 1);
        if (size <= 0) {
            failed = k;
            break;
        }
        sizes[k] = (uint32_t)size;
        crcs[k] = crc32_run(0, (const uint8_t *)page, PAGE);
    }
    Py_END_ALLOW_THREADS
    if (failed >= 0)
        PyErr_Format(PyExc_RuntimeError, "lz4 failed on page %zd", index[failed]);
    else
        result = segments(out, sizes, crcs, n);
done:
    PyMem_Free(state);
    PyMem_Free(out);
    PyMem_Free(index);
    PyBuffer_Release(&ram);
    return result;
}

static int
lz4_page(void *unused, const uint8_t *in, Py_ssize_t len, uint8_t *page)
{
    return lz4_decompress((const char *)in, (char *)page, (int)len, PAGE) == PAGE;
}

static const Decoding LZ4_BLOCKS = {
    lz4_page, lz4_bound, 1, CAPACITY, "decompress data failed", "decompress data failed",
};

/* lz4_decompress_into(ram, pages, payload, sizes) -> crcs: each block must decode to exactly
 * one page (LZ4_decompress_safe never writes past it); ValueError on the first that does not. */
static PyObject *
lz4_decompress_into(PyObject *module, PyObject *args)
{
    return decode_call(args, &LZ4_BLOCKS);
}

/* lz4_pack(ram, pages, crcs, scratch, level) -> payload: the pages gathered into scratch (a
 * consistent copy, whose CRC-32s go into crcs) and compressed as one LZ4 block: a multifd
 * packet of x-lz4 (fast mode at level 0-1, HC above). The GIL is released for the whole. */
static PyObject *
lz4_pack(PyObject *module, PyObject *args)
{
    Py_buffer ram, pages, crcs, scratch;
    int level;
    PyObject *out = NULL;
    void *state = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*w*i", &ram, &pages, &crcs, &scratch, &level))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !lz4_bound() || !sized(&crcs, n, 4, "crcs"))
        goto done;
    if (n < 1 || scratch.len < n * PAGE || n * PAGE > 0x7E000000) {
        PyErr_SetString(PyExc_ValueError, "lz4_pack: no pages, or scratch short of them");
        goto done;
    }
    int hc = level >= 2, raw = (int)(n * PAGE), cap = raw + raw / 255 + 16; /* LZ4's bound */
    state = PyMem_Malloc(hc ? lz4_hc_state_size() : lz4_state_size());
    out = PyBytes_FromStringAndSize(NULL, cap);
    if (state == NULL || out == NULL) {
        Py_CLEAR(out);
        PyErr_NoMemory();
        goto done;
    }
    int size;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *gather = scratch.buf;
    uint32_t *crc = crcs.buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        memcpy(gather + k * PAGE, (const uint8_t *)ram.buf + index[k] * PAGE, PAGE);
        crc[k] = crc32_run(0, gather + k * PAGE, PAGE);
    }
    char *dst = PyBytes_AS_STRING(out);
    size = hc ? lz4_hc(state, (const char *)gather, dst, raw, cap, level)
              : lz4_fast(state, (const char *)gather, dst, raw, cap, 1);
    Py_END_ALLOW_THREADS
    if (size <= 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "lz4 failed on a packet");
    } else if (_PyBytes_Resize(&out, size) < 0) {
        out = NULL;
    }
done:
    PyMem_Free(state);
    PyBuffer_Release(&scratch);
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return out;
}

/* lz4_unpack_into(ram, pages, payload, crcs, scratch): one LZ4 block that must decode to
 * exactly the pages (into scratch: LZ4_decompress_safe never writes past it), then into them,
 * with their CRC-32s; ValueError, and no page written, when it does not. */
static PyObject *
lz4_unpack_into(PyObject *module, PyObject *args)
{
    Py_buffer ram, pages, payload, crcs, scratch;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "w*y*y*w*w*", &ram, &pages, &payload, &crcs, &scratch))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !lz4_bound() || !sized(&crcs, n, 4, "crcs"))
        goto done;
    if (n < 1 || scratch.len < n * PAGE || n * PAGE > 0x7E000000 || payload.len > 0x7E000000) {
        PyErr_SetString(PyExc_ValueError, "lz4_unpack_into: no pages, or scratch short of them");
        goto done;
    }
    int got;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *flat = scratch.buf;
    got = lz4_decompress(payload.buf, (char *)flat, (int)payload.len, (int)(n * PAGE));
    if (got == n * PAGE) {
        uint32_t *crc = crcs.buf;
        for (Py_ssize_t k = 0; k < n; k++) {
            memcpy((uint8_t *)ram.buf + index[k] * PAGE, flat + k * PAGE, PAGE);
            crc[k] = crc32_run(0, flat + k * PAGE, PAGE);
        }
    }
    Py_END_ALLOW_THREADS
    if (got != n * PAGE)
        PyErr_SetString(PyExc_ValueError, "decompress data failed");
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&scratch);
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&payload);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return result;
}

/* -- module --------------------------------------------------------------------------- */

/* populate_pages(ram, pages): fault in those sorted pages, one MADV_POPULATE_WRITE per run,
 * the GIL released (a channel thread faulting pages in must not stop the others); a kernel
 * without it (EINVAL) leaves the faults to the first writes. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static PyObject *
populate_pages(PyObject *module, PyObject *args)
{
    Py_buffer ram, pages;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "w*y*", &ram, &pages))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL)
        goto done;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n && !err;) {
        Py_ssize_t end = k + 1;
        while (end < n && index[end] == index[end - 1] + 1)
            end++;
        if (madvise((uint8_t *)ram.buf + index[k] * PAGE, (size_t)(end - k) * PAGE,
                    MADV_POPULATE_WRITE) != 0 && errno != EINVAL)
            err = errno;
        k = end;
    }
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return result;
}

/* -- duplicate pages (engine/dedupe.py) ------------------------------------------------------
 * A 128-bit fingerprint per page, four independent multiply-rotate lanes over 32 bytes a step
 * (the lanes keep the multipliers busy), each folded with a finaliser. It only proposes a
 * match: the source's CRC of the page itself goes in the digest, which the destination's copy
 * must meet, so a collision fails the migration instead of corrupting the guest. */
static inline uint64_t
rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t
fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    return k ^ (k >> 33);
}

static void
page_fingerprint(const uint8_t *page, uint64_t *h1, uint64_t *h2)
{
    uint64_t a = 0x9e3779b97f4a7c15ULL, b = 0xbf58476d1ce4e5b9ULL;
    uint64_t c = 0x94d049bb133111ebULL, d = 0x2545f4914f6cdd1dULL;
    for (size_t at = 0; at < PAGE; at += 32) {
        uint64_t w[4];
        memcpy(w, page + at, sizeof(w));
        a = rotl64(a ^ w[0], 29) * 0x87c37b91114253d5ULL;
        b = rotl64(b ^ w[1], 31) * 0x4cf5ad432745937fULL;
        c = rotl64(c ^ w[2], 27) * 0x52dce729da3ed7b5ULL;
        d = rotl64(d ^ w[3], 33) * 0x38495ab5a3c5d1e9ULL;
    }
    *h1 = fmix64(a ^ rotl64(c, 17)) ^ fmix64(b + d);
    *h2 = fmix64(b ^ rotl64(d, 23)) ^ fmix64(a + c);
}

/* fingerprints(ram, pages, prints, crcs): each page's fingerprint (prints[2k], prints[2k + 1])
 * and CRC-32 in one pass, the GIL released. */
static PyObject *
fingerprints(PyObject *module, PyObject *args)
{
    Py_buffer ram, pages, prints, crcs;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*w*", &ram, &pages, &prints, &crcs))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !bound() || !sized(&prints, 2 * n, 8, "prints") ||
        !sized(&crcs, n, 4, "crcs"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    uint64_t *print = prints.buf;
    uint32_t *crc = crcs.buf;
    for (Py_ssize_t k = 0; k < n; k++) {
        const uint8_t *page = (const uint8_t *)ram.buf + index[k] * PAGE;
        page_fingerprint(page, &print[2 * k], &print[2 * k + 1]);
        crc[k] = crc32_run(0, page, PAGE); /* while the page is in the cache */
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&prints);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return result;
}

/* dedupe(pages, prints, keys, owners, sent_key, sent_gen, pending_gen, bitmap, gen, source)
 * -> count: for each page (of fingerprint prints[2k], prints[2k + 1]), source[k] = a page the
 * destination holds with the same contents, or -1. The table is direct-mapped: owners[slot]
 * (-1: empty) with its fingerprint in keys[2 slot], keys[2 slot + 1]. A page y is a valid
 * source while:
 *  - sent_key[y] is the entry's fingerprint and sent_gen[y] < gen: a channel sent it with
 *    those contents before an EOS the destination passed (sent_gen is set once its channel
 *    confirmed the CRC it sent; a copy is sent at gen, its contents known);
 *  - pending_gen[y] != gen and bitmap[y] is clear: it is not sent again before the next EOS
 *    (bitmap syncs come only right after an EOS), so no newer copy of it can land on the
 *    destination while it applies the COPY.
 * Every page of the call is pending at gen; a duplicate's sent_gen becomes gen, another
 * page's stays unset (NEVER) until its channel confirms it. No guest RAM is read. */
#define NEVER_SENT INT32_MAX
static PyObject *
dedupe(PyObject *module, PyObject *args)
{
    Py_buffer pages, prints, keys, owners, sent_key, sent_gen, pending_gen, bitmap, source;
    int gen;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*w*w*w*w*y*iw*", &pages, &prints, &keys, &owners,
                          &sent_key, &sent_gen, &pending_gen, &bitmap, &gen, &source))
        return NULL;
    Py_ssize_t n = 0, slots = owners.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t frames = bitmap.len;
    const Py_ssize_t *index = page_array(&pages, frames * PAGE, &n);
    if (index == NULL)
        goto done;
    if (slots == 0 || (slots & (slots - 1)) || !sized(&prints, 2 * n, 8, "prints") ||
        !sized(&keys, 2 * slots, 8, "keys") || !sized(&sent_key, frames, 8, "sent_key") ||
        !sized(&sent_gen, frames, 4, "sent_gen") ||
        !sized(&pending_gen, frames, 4, "pending_gen") ||
        !sized(&source, n, sizeof(Py_ssize_t), "source"))
        goto done;
    Py_ssize_t found = 0;
    Py_BEGIN_ALLOW_THREADS
    const uint64_t *print = prints.buf;
    uint64_t *key = keys.buf, *sent = sent_key.buf;
    int64_t *owner = owners.buf;
    int32_t *when = sent_gen.buf, *pending = pending_gen.buf;
    const uint8_t *dirty = bitmap.buf;
    Py_ssize_t *from = source.buf;
    for (Py_ssize_t k = 0; k < n; k++) /* first: a page of this call is no source for another */
        pending[index[k]] = gen;
    for (Py_ssize_t k = 0; k < n; k++) {
        uint64_t h1 = print[2 * k], h2 = print[2 * k + 1];
        Py_ssize_t slot = (Py_ssize_t)(h1 & (uint64_t)(slots - 1));
        int64_t y = owner[slot];
        int holds = y >= 0 && y < frames && key[2 * slot] == h1 && key[2 * slot + 1] == h2 &&
                    sent[y] == h1; /* the owner still holds these contents, as last scanned */
        from[k] = -1;
        if (holds && when[y] < gen && pending[y] != gen && !dirty[y]) {
            from[k] = (Py_ssize_t)y;
            when[index[k]] = gen;
            found++;
        } else {
            /* An owner that still holds these contents stays: it may be a source later (a
             * newer page with them could be sent again before it is one). */
            if (!holds) {
                owner[slot] = index[k];
                key[2 * slot] = h1;
                key[2 * slot + 1] = h2;
            }
            when[index[k]] = NEVER_SENT;
        }
        sent[index[k]] = h1;
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(found);
done:
    PyBuffer_Release(&source);
    PyBuffer_Release(&bitmap);
    PyBuffer_Release(&pending_gen);
    PyBuffer_Release(&sent_gen);
    PyBuffer_Release(&sent_key);
    PyBuffer_Release(&owners);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&prints);
    PyBuffer_Release(&pages);
    return result;
}

/* -- zstd streams for multifd (engine/multifd.py) ----------------------------------------------
 * One stream per channel, as QEMU's multifd-zstd keeps: the context and its window last across
 * packets, each packet is the stream flushed after its last page, so the destination decodes a
 * packet whole once it has it, with the earlier packets as history. Pages go from guest RAM
 * into the compressor and from the decompressor into guest RAM, each with its CRC-32 taken as
 * it passes, the GIL released once per packet. The zstd is the one inside python-zstandard
 * (its cffi backend exports the ZSTD_* API), bound at run time by bind_zstd(). */

typedef struct { const void *src; size_t size, pos; } zstd_in;
typedef struct { void *dst; size_t size, pos; } zstd_out;
enum { ZSTD_E_CONTINUE = 0, ZSTD_E_FLUSH = 1 };
enum { ZSTD_C_LEVEL = 100, ZSTD_C_WINDOWLOG = 101, ZSTD_D_WINDOWLOGMAX = 100 };

static void *(*zstd_create_cctx)(void);
static size_t (*zstd_free_cctx)(void *);
static size_t (*zstd_cctx_set)(void *, int, int);
static size_t (*zstd_compress_stream)(void *, zstd_out *, zstd_in *, int);
static void *(*zstd_create_dctx)(void);
static size_t (*zstd_free_dctx)(void *);
static size_t (*zstd_dctx_set)(void *, int, int);
static size_t (*zstd_decompress_stream)(void *, zstd_out *, zstd_in *);
static unsigned (*zstd_is_error)(size_t);
static const char *(*zstd_error_name)(size_t);

static PyObject *
bind_zstd(PyObject *module, PyObject *arg)
{
    const char *path = PyUnicode_AsUTF8(arg);
    if (path == NULL)
        return NULL;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL); /* kept open for the process's life */
    if (lib == NULL) {
        PyErr_Format(PyExc_ImportError, "cannot open zstd: %s", dlerror());
        return NULL;
    }
    unsigned (*version)(void) = (unsigned (*)(void))dlsym(lib, "ZSTD_versionNumber");
    if (version == NULL || version() < 10400) { /* 1.4: the stable streaming API below */
        PyErr_Format(PyExc_ImportError, "%s is not zstd 1.4 or later", path);
        return NULL;
    }
    struct { void **slot; const char *name; } symbols[] = {
        {(void **)&zstd_create_cctx, "ZSTD_createCCtx"},
        {(void **)&zstd_free_cctx, "ZSTD_freeCCtx"},
        {(void **)&zstd_cctx_set, "ZSTD_CCtx_setParameter"},
        {(void **)&zstd_compress_stream, "ZSTD_compressStream2"},
        {(void **)&zstd_create_dctx, "ZSTD_createDCtx"},
        {(void **)&zstd_free_dctx, "ZSTD_freeDCtx"},
        {(void **)&zstd_dctx_set, "ZSTD_DCtx_setParameter"},
        {(void **)&zstd_decompress_stream, "ZSTD_decompressStream"},
        {(void **)&zstd_is_error, "ZSTD_isError"},
        {(void **)&zstd_error_name, "ZSTD_getErrorName"},
    };
    enum { N = sizeof(symbols) / sizeof(symbols[0]) };
    void *found[N]; /* all or none: a refused library leaves the bound one in place */
    for (size_t i = 0; i < N; i++) {
        found[i] = dlsym(lib, symbols[i].name);
        if (found[i] == NULL) {
            PyErr_Format(PyExc_ImportError, "zstd lacks %s", symbols[i].name);
            return NULL;
        }
    }
    for (size_t i = 0; i < N; i++)
        *symbols[i].slot = found[i];
    Py_RETURN_NONE;
}

static int
zstd_bound(void)
{
    if (zstd_error_name == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_pagecodec.bind_zstd() was not called");
        return 0;
    }
    return bound();
}

typedef struct {
    PyObject_HEAD
    void *ctx;
    int busy; /* set, with the GIL held, while a call runs without it */
} ZstdStream;

static void
zstd_stream_dealloc(ZstdStream *self)
{
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ZstdPacker(level, window_log): the destination's window bound is the caller's to keep. */
static int
zstd_packer_init(ZstdStream *self, PyObject *args, PyObject *kwds)
{
    int level, window_log;
    if (!PyArg_ParseTuple(args, "ii", &level, &window_log) || !zstd_bound())
        return -1;
    if (self->ctx != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ZstdPacker already initialised");
        return -1;
    }
    self->ctx = zstd_create_cctx();
    if (self->ctx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t err = zstd_cctx_set(self->ctx, ZSTD_C_LEVEL, level);
    if (!zstd_is_error(err))
        err = zstd_cctx_set(self->ctx, ZSTD_C_WINDOWLOG, window_log);
    if (zstd_is_error(err)) {
        PyErr_Format(PyExc_ValueError, "zstd: %s", zstd_error_name(err));
        return -1;
    }
    return 0;
}

static void
zstd_packer_dealloc(ZstdStream *self)
{
    if (self->ctx != NULL)
        zstd_free_cctx(self->ctx);
    zstd_stream_dealloc(self);
}

/* pack(ram, pages, crcs) -> payload: the pages into the stream, flushed after the last. */
static PyObject *
zstd_pack(ZstdStream *self, PyObject *args)
{
    Py_buffer ram, pages, crcs;
    PyObject *out = NULL;
    if (!PyArg_ParseTuple(args, "y*y*w*", &ram, &pages, &crcs))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !sized(&crcs, n, 4, "crcs") || !take(self->ctx != NULL, &self->busy))
        goto done;
    /* zstd's bound (ZSTD_COMPRESSBOUND) for the packet, and room for the frame's header. */
    Py_ssize_t cap = n * PAGE + ((n * PAGE) >> 8) + 1024;
    out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL) {
        self->busy = 0;
        goto done;
    }
    zstd_out o = {PyBytes_AS_STRING(out), (size_t)cap, 0};
    size_t err = 0;
    Py_BEGIN_ALLOW_THREADS
    uint32_t *crc = crcs.buf;
    for (Py_ssize_t k = 0; k < n && !zstd_is_error(err); k++) {
        const uint8_t *page = (const uint8_t *)ram.buf + index[k] * PAGE;
        crc[k] = crc32_run(0, page, PAGE);
        zstd_in in = {page, PAGE, 0};
        int mode = k == n - 1 ? ZSTD_E_FLUSH : ZSTD_E_CONTINUE;
        do { /* a flush is over when nothing is left to write; room is never short */
            err = zstd_compress_stream(self->ctx, &o, &in, mode);
        } while (!zstd_is_error(err) && o.pos < o.size &&
                 (in.pos < in.size || (mode == ZSTD_E_FLUSH && err != 0)));
    }
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (zstd_is_error(err) || o.pos == o.size) {
        PyErr_Format(PyExc_RuntimeError, "zstd: %s",
                     zstd_is_error(err) ? zstd_error_name(err) : "packet beyond its bound");
        Py_CLEAR(out);
    } else if (_PyBytes_Resize(&out, (Py_ssize_t)o.pos) < 0) {
        out = NULL;
    }
done:
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return out;
}

/* ZstdUnpacker(window_log_max): a frame asking for a larger window is refused, so a peer
 * cannot make this side allocate more than that. */
static int
zstd_unpacker_init(ZstdStream *self, PyObject *args, PyObject *kwds)
{
    int window_log_max;
    if (!PyArg_ParseTuple(args, "i", &window_log_max) || !zstd_bound())
        return -1;
    if (self->ctx != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ZstdUnpacker already initialised");
        return -1;
    }
    self->ctx = zstd_create_dctx();
    if (self->ctx == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t err = zstd_dctx_set(self->ctx, ZSTD_D_WINDOWLOGMAX, window_log_max);
    if (zstd_is_error(err)) {
        PyErr_Format(PyExc_ValueError, "zstd: %s", zstd_error_name(err));
        return -1;
    }
    return 0;
}

static void
zstd_unpacker_dealloc(ZstdStream *self)
{
    if (self->ctx != NULL)
        zstd_free_dctx(self->ctx);
    zstd_stream_dealloc(self);
}

/* unpack_into(ram, pages, payload, crcs): the packet decoded straight into those pages, which
 * it must fill exactly: ValueError on a decoding error, on output short of the pages or
 * beyond them, or on input left over. Nothing is written past the packet's pages. */
static PyObject *
zstd_unpack_into(ZstdStream *self, PyObject *args)
{
    Py_buffer ram, pages, payload, crcs;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "w*y*y*w*", &ram, &pages, &payload, &crcs))
        return NULL;
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, ram.len, &n);
    if (index == NULL || !sized(&crcs, n, 4, "crcs") || !take(self->ctx != NULL, &self->busy))
        goto done;
    const char *bad = NULL;
    Py_BEGIN_ALLOW_THREADS
    uint32_t *crc = crcs.buf;
    zstd_in in = {payload.buf, (size_t)payload.len, 0};
    for (Py_ssize_t k = 0; k < n && bad == NULL; k++) {
        uint8_t *page = (uint8_t *)ram.buf + index[k] * PAGE;
        zstd_out o = {page, PAGE, 0};
        while (o.pos < o.size && bad == NULL) {
            size_t read = in.pos, written = o.pos;
            size_t err = zstd_decompress_stream(self->ctx, &o, &in);
            if (zstd_is_error(err))
                bad = zstd_error_name(err);
            else if (in.pos == read && o.pos == written) /* no progress: the input is spent */
                bad = "output short of the packet's pages";
        }
        if (bad == NULL)
            crc[k] = crc32_run(0, page, PAGE);
    }
    uint8_t spare;
    zstd_out more = {&spare, 1, 0};
    if (bad == NULL && in.pos < in.size)
        bad = "input left over after the packet's pages";
    else if (bad == NULL && (zstd_is_error(zstd_decompress_stream(self->ctx, &more, &in)) ||
                             more.pos))
        bad = "output beyond the packet's pages";
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (bad != NULL)
        PyErr_Format(PyExc_ValueError, "zstd: %s", bad);
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&crcs);
    PyBuffer_Release(&payload);
    PyBuffer_Release(&pages);
    PyBuffer_Release(&ram);
    return result;
}

static PyMethodDef zstd_packer_methods[] = {
    {"pack", (PyCFunction)zstd_pack, METH_VARARGS,
     "pack(ram, pages, crcs) -> payload: those pages into the stream, flushed; their CRCs."},
    {NULL},
};

static PyTypeObject ZstdPackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._pagecodec.ZstdPacker",
    .tp_doc = "ZstdPacker(level, window_log): one zstd stream; one thread at a time.",
    .tp_basicsize = sizeof(ZstdStream),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)zstd_packer_init,
    .tp_dealloc = (destructor)zstd_packer_dealloc,
    .tp_methods = zstd_packer_methods,
};

static PyMethodDef zstd_unpacker_methods[] = {
    {"unpack_into", (PyCFunction)zstd_unpack_into, METH_VARARGS,
     "unpack_into(ram, pages, payload, crcs): decode exactly those pages; ValueError if not."},
    {NULL},
};

static PyTypeObject ZstdUnpackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._pagecodec.ZstdUnpacker",
    .tp_doc = "ZstdUnpacker(window_log_max): one zstd stream; one thread at a time.",
    .tp_basicsize = sizeof(ZstdStream),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)zstd_unpacker_init,
    .tp_dealloc = (destructor)zstd_unpacker_dealloc,
    .tp_methods = zstd_unpacker_methods,
};

/* -- postcopy's page table (engine/postcopy.py) ------------------------------------------
 * The destination's present bits after the switch, with a pthread mutex and condition in
 * place of a Python lock: a vCPU waits for its page, the preempt channel's reader places
 * requested pages and the main stream's loader background ones, and none of them needs the
 * GIL to do it. With a Python lock, each hand-over of a fault (page placed, vCPU woken) waited
 * for the GIL behind the busy background threads: a few ms at the tail. The arrays (present,
 * written, crc: one u8, u8, u32 per page) and guest RAM are the caller's, passed per call. */

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t placed;
    Py_ssize_t missing;
    uint32_t zero_crc;
    int ready;
} PageTable;

typedef struct { /* the buffers of one call */
    Py_buffer ram, present, written, crc;
    Py_ssize_t pages;
} TableArgs;

static void
table_args_release(TableArgs *a)
{
    PyBuffer_Release(&a->crc);
    PyBuffer_Release(&a->written);
    PyBuffer_Release(&a->present);
    PyBuffer_Release(&a->ram);
}

/* The four buffers agree on the page count; 0 with an exception set (and all released). */
static int
table_args_check(TableArgs *a)
{
    a->pages = a->ram.len / PAGE;
    if (a->ram.len % PAGE || a->present.len != a->pages || a->written.len != a->pages ||
        a->crc.len != 4 * a->pages) {
        PyErr_SetString(PyExc_ValueError, "page table arrays do not match guest RAM");
        table_args_release(a);
        return 0;
    }
    return 1;
}

static int
page_table_init(PageTable *self, PyObject *args, PyObject *kwds)
{
    Py_ssize_t missing;
    unsigned int zero_crc;
    if (!PyArg_ParseTuple(args, "nI", &missing, &zero_crc))
        return -1;
    if (self->ready) {
        PyErr_SetString(PyExc_RuntimeError, "PageTable already initialised");
        return -1;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->placed, &attr);
    pthread_condattr_destroy(&attr);
    self->missing = missing;
    self->zero_crc = zero_crc;
    self->ready = 1;
    return 0;
}

static void
page_table_dealloc(PageTable *self)
{
    if (self->ready) {
        pthread_cond_destroy(&self->placed);
        pthread_mutex_destroy(&self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Place n pages (data: their contents back to back, or NULL: zero pages) that are not present
 * yet, chunk pages per hold of the lock, and wake the waiters after each chunk. Without the
 * GIL; the indices were checked. Returns how many were placed. */
static Py_ssize_t
table_place(PageTable *self, TableArgs *a, const Py_ssize_t *index, Py_ssize_t n,
            const uint8_t *data, Py_ssize_t chunk)
{
    uint8_t *ram = a->ram.buf, *present = a->present.buf, *written = a->written.buf;
    uint32_t *crc = a->crc.buf;
    Py_ssize_t placed = 0;
    for (Py_ssize_t start = 0; start < n; start += chunk) {
        Py_ssize_t end = start + chunk < n ? start + chunk : n, now = 0;
        pthread_mutex_lock(&self->lock);
        for (Py_ssize_t k = start; k < end; k++) {
            Py_ssize_t i = index[k];
            if (present[i])
                continue; /* it came first by the other channel; the guest may have written it */
            uint8_t *page = ram + i * PAGE;
            if (data != NULL) {
                memcpy(page, data + k * PAGE, PAGE);
                crc[i] = crc32_run(0, page, PAGE);
                written[i] = 1;
            } else {
                if (written[i])
                    memset(page, 0, PAGE);
                crc[i] = self->zero_crc;
            }
            present[i] = 1;
            now++;
        }
        self->missing -= now;
        placed += now;
        if (now)
            pthread_cond_broadcast(&self->placed);
        pthread_mutex_unlock(&self->lock);
    }
    return placed;
}

/* place(ram, present, written, crc, pages, data, chunk) -> placed. */
static PyObject *
page_table_place(PageTable *self, PyObject *args)
{
    TableArgs a;
    Py_buffer pages, data = {0};
    PyObject *data_obj;
    Py_ssize_t chunk;
    if (!PyArg_ParseTuple(args, "w*w*w*w*y*On", &a.ram, &a.present, &a.written, &a.crc, &pages,
                          &data_obj, &chunk))
        return NULL;
    PyObject *result = NULL;
    if (!table_args_check(&a)) {
        PyBuffer_Release(&pages);
        return NULL;
    }
    Py_ssize_t n = 0;
    const Py_ssize_t *index = page_array(&pages, a.ram.len, &n);
    if (index == NULL || !bound() || chunk < 1)
        goto done;
    if (data_obj != Py_None) {
        if (PyObject_GetBuffer(data_obj, &data, PyBUF_SIMPLE) < 0)
            goto done;
        if (data.len != n * PAGE) {
            PyErr_SetString(PyExc_ValueError, "page data does not match the pages");
            goto done;
        }
    }
    Py_ssize_t placed;
    Py_BEGIN_ALLOW_THREADS
    placed = table_place(self, &a, index, n, data_obj != Py_None ? data.buf : NULL, chunk);
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(placed);
done:
    if (data.obj != NULL)
        PyBuffer_Release(&data);
    PyBuffer_Release(&pages);
    table_args_release(&a);
    return result;
}

static void
deadline_after(struct timespec *at, double seconds)
{
    clock_gettime(CLOCK_MONOTONIC, at);
    long long ns = at->tv_nsec + (long long)(seconds * 1e9);
    at->tv_sec += ns / 1000000000LL;
    at->tv_nsec = ns % 1000000000LL;
}

/* wait(present, page, timeout) -> whether the page is present, waiting at most timeout s. */
static PyObject *
page_table_wait(PageTable *self, PyObject *args)
{
    Py_buffer present;
    Py_ssize_t page;
    double timeout;
    if (!PyArg_ParseTuple(args, "y*nd", &present, &page, &timeout))
        return NULL;
    if (page < 0 || page >= present.len) {
        PyBuffer_Release(&present);
        PyErr_Format(PyExc_IndexError, "page %zd is outside the table", page);
        return NULL;
    }
    const volatile uint8_t *bits = present.buf;
    int here;
    Py_BEGIN_ALLOW_THREADS
    struct timespec at;
    deadline_after(&at, timeout);
    pthread_mutex_lock(&self->lock);
    while (!bits[page] && pthread_cond_timedwait(&self->placed, &self->lock, &at) != ETIMEDOUT)
        ;
    here = bits[page];
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&present);
    return PyBool_FromLong(here);
}

/* wait_complete(timeout) -> whether every page is present, waiting at most timeout s. */
static PyObject *
page_table_wait_complete(PageTable *self, PyObject *args)
{
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout))
        return NULL;
    int done;
    Py_BEGIN_ALLOW_THREADS
    struct timespec at;
    deadline_after(&at, timeout);
    pthread_mutex_lock(&self->lock);
    while (self->missing && pthread_cond_timedwait(&self->placed, &self->lock, &at) != ETIMEDOUT)
        ;
    done = !self->missing;
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(done);
}

static PyObject *
page_table_missing(PageTable *self, void *unused)
{
    pthread_mutex_lock(&self->lock); /* held only without the GIL for a chunk: short */
    Py_ssize_t missing = self->missing;
    pthread_mutex_unlock(&self->lock);
    return PyLong_FromSsize_t(missing);
}

/* n bytes from fd (blocking, or non-blocking: then polled); 0 at a clean end before the first
 * byte, -1 with errno (0: the stream ended inside). */
static int
read_full(int fd, uint8_t *into, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, into + got, n - got, MSG_WAITALL);
        if (r > 0) {
            got += (size_t)r;
        } else if (r == 0) {
            errno = 0;
            return got ? -1 : 0;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR)
                return -1;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 1;
}

static uint32_t
be32(const uint8_t *at)
{
    return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 | at[3];
}

/* serve(fd, ram, present, written, crc, batch, zero, raw, known, max_batch, max_record, chunk,
 *       other)
 *   -> None at a clean end of the stream, or (type, length) of the first record that is not
 * a BATCH (its head read, its body not) when other is true; OSError when the socket fails,
 * ValueError naming the fault of a bad record (and of any record but a BATCH without other).
 * After postcopy's switch: BATCH records of zero and raw pages, each validated whole (as
 * engine/wire.py's read_batch_head does) before a page is placed, chunk pages per hold of the
 * lock (as place), all without the GIL. */
static PyObject *
page_table_serve(PageTable *self, PyObject *args)
{
    TableArgs a;
    int fd, batch_kind, zero_kind, raw_kind, other;
    Py_buffer known;
    Py_ssize_t max_batch, max_record, chunk;
    if (!PyArg_ParseTuple(args, "iw*w*w*w*iiiy*nnnp", &fd, &a.ram, &a.present, &a.written,
                          &a.crc, &batch_kind, &zero_kind, &raw_kind, &known, &max_batch,
                          &max_record, &chunk, &other))
        return NULL;
    if (!table_args_check(&a)) {
        PyBuffer_Release(&known);
        return NULL;
    }
    if (!bound() || known.len != 256 || chunk < 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "known kinds: one flag per kind byte; chunk >= 1");
        PyBuffer_Release(&known);
        table_args_release(&a);
        return NULL;
    }
    char why[160] = "";
    int os_error = 0, next_kind = -1;
    uint32_t next_length = 0;
    uint8_t *body = malloc((size_t)max_record);
    Py_ssize_t *index = malloc(sizeof(Py_ssize_t) * 2 * (size_t)max_batch);
    if (body == NULL || index == NULL) {
        free(body);
        free(index);
        PyBuffer_Release(&known);
        table_args_release(&a);
        return PyErr_NoMemory();
    }
    const uint8_t *is_known = known.buf;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        uint8_t head[5];
        int r = read_full(fd, head, sizeof(head));
        if (r == 0)
            break;
        uint32_t length = r > 0 ? be32(head + 1) : 0;
        if (r > 0 && length > (uint64_t)max_record) {
            snprintf(why, sizeof(why), "record of %u bytes exceeds the limit of %zd", length,
                     max_record);
            break;
        }
        if (r > 0 && head[0] != batch_kind) {
            if (other) {
                next_kind = head[0];
                next_length = length;
            } else {
                snprintf(why, sizeof(why), "unknown record type 0x%02x", head[0]);
            }
            break;
        }
        if (r < 0 || (length && read_full(fd, body, length) <= 0)) {
            os_error = errno; /* 0: the stream ended inside the record */
            if (!os_error)
                snprintf(why, sizeof(why), "truncated stream");
            break;
        }
        if (length < 4) {
            snprintf(why, sizeof(why), "truncated page batch");
            break;
        }
        uint32_t n = be32(body);
        if (n == 0 || n > max_batch) {
            snprintf(why, sizeof(why), "page batch of %u pages (limit %zd)", n, max_batch);
            break;
        }
        if (length < 4 + 5 * (uint64_t)n) {
            snprintf(why, sizeof(why), "truncated stream");
            break;
        }
        const uint8_t *kinds = body + 4 + 4 * (size_t)n;
        Py_ssize_t *zeros = index, *raws = index + max_batch, nzero = 0, nraw = 0, top = 0;
        for (uint32_t k = 0; k < n && !why[0]; k++) {
            Py_ssize_t page = be32(body + 4 + 4 * (size_t)k);
            top = page > top ? page : top;
            if (!is_known[kinds[k]])
                snprintf(why, sizeof(why), "unknown page kind 0x%02x", kinds[k]);
            else if (kinds[k] == zero_kind)
                zeros[nzero++] = page;
            else if (kinds[k] == raw_kind)
                raws[nraw++] = page;
            else
                snprintf(why, sizeof(why), "postcopy: a compressed or XBZRLE page after the switch");
        }
        if (!why[0] && top >= a.pages)
            snprintf(why, sizeof(why), "page %zd is outside guest RAM (%zd pages)", top, a.pages);
        uint64_t expected = 4 + 5 * (uint64_t)n + (uint64_t)nraw * PAGE;
        if (!why[0] && length != expected)
            snprintf(why, sizeof(why), "page batch length %u does not match its contents (%llu)",
                     length, (unsigned long long)expected);
        if (why[0])
            break;
        table_place(self, &a, zeros, nzero, NULL, chunk);
        table_place(self, &a, raws, nraw, kinds + n, chunk);
    }
    Py_END_ALLOW_THREADS
    free(index);
    free(body);
    PyBuffer_Release(&known);
    table_args_release(&a);
    if (os_error) {
        errno = os_error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (why[0]) {
        PyErr_SetString(PyExc_ValueError, why);
        return NULL;
    }
    return next_kind < 0 ? Py_NewRef(Py_None) : Py_BuildValue("(iI)", next_kind, next_length);
}

static PyMethodDef page_table_methods[] = {
    {"place", (PyCFunction)page_table_place, METH_VARARGS,
     "place(ram, present, written, crc, pages, data, chunk) -> pages placed."},
    {"wait", (PyCFunction)page_table_wait, METH_VARARGS,
     "wait(present, page, timeout) -> whether the page is present."},
    {"wait_complete", (PyCFunction)page_table_wait_complete, METH_VARARGS,
     "wait_complete(timeout) -> whether every page is present."},
    {"serve", (PyCFunction)page_table_serve, METH_VARARGS,
     "serve(fd, ram, present, written, crc, batch, zero, raw, known, max_batch, max_record,\n"
     "chunk, other) -> None at a clean end, or the (type, length) of the next other record."},
    {NULL},
};

static PyGetSetDef page_table_getset[] = {
    {"missing", (getter)page_table_missing, NULL, "pages not present yet", NULL},
    {NULL},
};

static PyTypeObject PageTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "engine._pagecodec.PageTable",
    .tp_doc = "PageTable(missing, zero_crc): postcopy's present bits' lock and waits.",
    .tp_basicsize = sizeof(PageTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)page_table_init,
    .tp_dealloc = (destructor)page_table_dealloc,
    .tp_methods = page_table_methods,
    .tp_getset = page_table_getset,
};

static PyMethodDef module_methods[] = {
    {"bind", bind_zlib, METH_O, "bind(path): take the zng_* functions from that shared object."},
    {"xbzrle_encode", xbzrle_encode, METH_VARARGS,
     "xbzrle_encode(ram, pages, cache, addr, age, now, last) -> (status, raw, deltas, crcs)."},
    {"xbzrle_cache_zero", xbzrle_cache_zero, METH_VARARGS,
     "xbzrle_cache_zero(pages, cache, addr, age, now): cache those pages as zero pages."},
    {"xbzrle_decode_into", xbzrle_decode_into, METH_VARARGS,
     "xbzrle_decode_into(ram, pages, payload, sizes) -> crcs; ValueError on a bad delta."},
    {"scan_pages", scan_pages, METH_VARARGS,
     "scan_pages(ram, pages, zero, crcs): zero flags and (crcs not None) CRCs of the others."},
    {"crc_pages", crc_pages, METH_VARARGS, "crc_pages(ram, pages, crcs): each page's CRC-32."},
    {"bind_lz4", bind_lz4, METH_O, "bind_lz4(path): take the LZ4_* functions from that object."},
    {"lz4_compress", lz4_compress, METH_VARARGS,
     "lz4_compress(ram, pages, level) -> (payload, sizes, crcs): one LZ4 block per page."},
    {"lz4_decompress_into", lz4_decompress_into, METH_VARARGS,
     "lz4_decompress_into(ram, pages, payload, sizes) -> crcs; ValueError on a bad block."},
    {"lz4_pack", lz4_pack, METH_VARARGS,
     "lz4_pack(ram, pages, crcs, scratch, level) -> payload: the pages as one LZ4 block."},
    {"lz4_unpack_into", lz4_unpack_into, METH_VARARGS,
     "lz4_unpack_into(ram, pages, payload, crcs, scratch): one block into exactly the pages."},
    {"fingerprints", fingerprints, METH_VARARGS,
     "fingerprints(ram, pages, prints, crcs): each page's 128-bit fingerprint and CRC-32."},
    {"dedupe", dedupe, METH_VARARGS,
     "dedupe(pages, prints, keys, owners, sent_key, sent_gen, pending_gen, bitmap, gen,\n"
     "source) -> the number of duplicates."},
    {"bind_zstd", bind_zstd, METH_O, "bind_zstd(path): take the ZSTD_* functions from that object."},
    {"populate_pages", populate_pages, METH_VARARGS,
     "populate_pages(ram, pages): fault those sorted pages in, a run per call, without the GIL."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "engine._pagecodec",
    .m_doc = "Chunks of pages through zlib-ng, and XBZRLE deltas.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__pagecodec(void)
{
    if (PyType_Ready(&DeflaterType) < 0 || PyType_Ready(&InflaterType) < 0 ||
        PyType_Ready(&ZstdPackerType) < 0 || PyType_Ready(&ZstdUnpackerType) < 0 ||
        PyType_Ready(&PageTableType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "PAGE_SIZE", PAGE) < 0 ||
        PyModule_AddObjectRef(m, "Deflater", (PyObject *)&DeflaterType) < 0 ||
        PyModule_AddObjectRef(m, "Inflater", (PyObject *)&InflaterType) < 0 ||
        PyModule_AddObjectRef(m, "ZstdPacker", (PyObject *)&ZstdPackerType) < 0 ||
        PyModule_AddObjectRef(m, "ZstdUnpacker", (PyObject *)&ZstdUnpackerType) < 0 ||
        PyModule_AddObjectRef(m, "PageTable", (PyObject *)&PageTableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
