/*
 * npy.c: a strict .npy reader and writer (see npy.h).
 *
 * The file: the magic "\x93NUMPY", a major and minor version byte, the header length
 * (uint16 LE for 1.0, uint32 LE for 2.0 and 3.0), then an ASCII Python dict such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 8, 17, 64), }
 * padded with spaces and ended by '\n', then the raw data. We check every field and that the
 * data is exactly as long as the shape says.
 */
#include "npy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fileio.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c reads little-endian data in place: a little-endian host is assumed"
#endif

static const char NPY_MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* ---- header dict parsing ---------------------------------------------------------------- */

typedef struct {
    const char *p, *end, *path;
} Cursor;

static void skip_space(Cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int expect_char(Cursor *c, char ch)
{
    skip_space(c);
    if (c->p >= c->end || *c->p != ch)
        return error_set("%s: malformed .npy header: expected '%c'", c->path, ch);
    c->p++;
    return 0;
}

/* A quoted Python string ('...' or "..."), copied into out. */
static int parse_string(Cursor *c, char *out, size_t len)
{
    skip_space(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return error_set("%s: malformed .npy header: expected a quoted string", c->path);
    char quote = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != quote) {
        if (n + 1 >= len)
            return error_set("%s: malformed .npy header: string too long", c->path);
        out[n++] = *c->p++;
    }
    if (c->p >= c->end)
        return error_set("%s: malformed .npy header: unterminated string", c->path);
    c->p++;
    out[n] = '\0';
    return 0;
}

static int parse_bool(Cursor *c, int *out)
{
    skip_space(c);
    if (c->end - c->p >= 4 && memcmp(c->p, "True", 4) == 0) {
        c->p += 4;
        *out = 1;
        return 0;
    }
    if (c->end - c->p >= 5 && memcmp(c->p, "False", 5) == 0) {
        c->p += 5;
        *out = 0;
        return 0;
    }
    return error_set("%s: malformed .npy header: fortran_order must be True or False", c->path);
}

/* A shape tuple: (), (5,), (2, 3) or (2, 3,). */
static int parse_shape(Cursor *c, int *ndim, size_t *shape)
{
    if (expect_char(c, '(') != 0)
        return -1;
    *ndim = 0;
    for (;;) {
        skip_space(c);
        if (c->p < c->end && *c->p == ')') {
            c->p++;
            return 0;
        }
        if (c->p < c->end && *c->p == '-')
            return error_set("%s: .npy shape has a negative dimension", c->path);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9')
            return error_set("%s: malformed .npy header: bad shape tuple", c->path);
        size_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            size_t digit = (size_t)(*c->p - '0');
            if (v > (SIZE_MAX - digit) / 10)
                return error_set("%s: .npy shape dimension is too large", c->path);
            v = v * 10 + digit;
            c->p++;
        }
        if (*ndim == NPY_MAX_DIMS)
            return error_set("%s: .npy rank above %d is not supported", c->path, NPY_MAX_DIMS);
        shape[(*ndim)++] = v;
        skip_space(c);
        if (c->p < c->end && *c->p == ',')
            c->p++;
        else if (c->p < c->end && *c->p == ')')
            continue;
        else
            return error_set("%s: malformed .npy header: bad shape tuple", c->path);
    }
}

static int parse_dtype(const char *path, const char *descr, NpyDtype *out)
{
    if (strcmp(descr, "<f4") == 0) {
        *out = NPY_F32;
        return 0;
    }
    if (strcmp(descr, "<i4") == 0) {
        *out = NPY_I32;
        return 0;
    }
    if (descr[0] == '>')
        return error_set("%s: big-endian dtype '%s' is not supported (expected '<f4' or '<i4')", path, descr);
    return error_set("%s: dtype '%s' is not supported (expected float32 '<f4' or int32 '<i4')", path, descr);
}

static int parse_header(const char *path, const char *text, size_t len, NpyArray *out)
{
    Cursor c = {.p = text, .end = text + len, .path = path};
    int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;
    char key[32], descr[32];

    if (len == 0 || text[len - 1] != '\n')
        return error_set("%s: malformed .npy header: it must end with a newline", path);
    if (expect_char(&c, '{') != 0)
        return -1;
    for (;;) {
        skip_space(&c);
        if (c.p < c.end && *c.p == '}') {
            c.p++;
            break;
        }
        if (parse_string(&c, key, sizeof key) != 0 || expect_char(&c, ':') != 0)
            return -1;
        if (strcmp(key, "descr") == 0) {
            if (parse_string(&c, descr, sizeof descr) != 0)
                return -1;
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (parse_bool(&c, &fortran) != 0)
                return -1;
            have_order = 1;
        } else if (strcmp(key, "shape") == 0) {
            if (parse_shape(&c, &out->ndim, out->shape) != 0)
                return -1;
            have_shape = 1;
        } else {
            return error_set("%s: malformed .npy header: unknown key '%s'", path, key);
        }
        skip_space(&c);
        if (c.p < c.end && *c.p == ',')
            c.p++;
    }
    skip_space(&c);
    if (c.p != c.end)
        return error_set("%s: malformed .npy header: text after the dict", path);
    if (!have_descr || !have_order || !have_shape)
        return error_set("%s: malformed .npy header: missing '%s'", path,
                         !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    if (fortran)
        return error_set("%s: Fortran-order arrays are not supported (save with C order)", path);
    return parse_dtype(path, descr, &out->dtype);
}

/* ---- reading ---------------------------------------------------------------------------- */

static int read_exact(FILE *f, void *buf, size_t n) { return fread(buf, 1, n, f) == n ? 0 : -1; }

int npy_read(const char *path, NpyArray *out)
{
    memset(out, 0, sizeof *out);
    size_t file_size;
    FILE *f = file_open_input_size(path, &file_size); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
    unsigned char pre[12];
    int rc = -1;
    char *header = NULL;

    if (file_size < 10 || read_exact(f, pre, 8) != 0 || memcmp(pre, NPY_MAGIC, 6) != 0) {
        error_set("%s: not a .npy file (the magic string \\x93NUMPY is missing)", path);
        goto done;
    }
    int major = pre[6];
    size_t header_len, prelude;
    if (major == 1) {
        if (read_exact(f, pre + 8, 2) != 0)
            goto truncated;
        header_len = (size_t)pre[8] | (size_t)pre[9] << 8;
        prelude = 10;
    } else if (major == 2 || major == 3) {
        if (read_exact(f, pre + 8, 4) != 0)
            goto truncated;
        header_len = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
        prelude = 12;
    } else {
        error_set("%s: .npy format version %d.%d is not supported (expected 1.0)", path, major, pre[7]);
        goto done;
    }
    if (header_len > file_size - prelude)
        goto truncated;
    header = malloc(header_len + 1);
    if (!header || read_exact(f, header, header_len) != 0) {
        error_set("%s: cannot read the .npy header", path);
        goto done;
    }
    header[header_len] = '\0';
    if (parse_header(path, header, header_len, out) != 0)
        goto done;

    size_t numel = 1, bytes;
    for (int i = 0; i < out->ndim; i++)
        if (size_mul(&numel, numel, out->shape[i]) != 0) {
            error_set("%s: the .npy shape's element count overflows", path);
            goto done;
        }
    if (size_mul(&bytes, numel, 4) != 0) {
        error_set("%s: the .npy shape's byte count overflows", path);
        goto done;
    }
    size_t have = file_size - prelude - header_len;
    if (have < bytes) {
        error_set("%s: truncated: the header promises %zu values (%zu bytes) but the file holds %zu bytes of data",
                  path, numel, bytes, have);
        goto done;
    }
    if (have > bytes) {
        error_set("%s: %zu unexpected bytes after the %zu values the header promises", path, have - bytes, numel);
        goto done;
    }
    out->numel = numel;
    out->data = mem_alloc(bytes ? bytes : 1, path);
    if (!out->data)
        goto done;
    if (read_exact(f, out->data, bytes) != 0) {
        error_set("%s: cannot read the data", path);
        goto done;
    }
    rc = 0;
    goto done;

truncated:
    error_set("%s: truncated .npy header", path);
done:
    free(header);
    fclose(f);
    if (rc != 0) {
        mem_free(out->data);
        out->data = NULL;
    }
    return rc;
}

void npy_free(NpyArray *a)
{
    mem_free(a->data);
    a->data = NULL;
}

int npy_read_tensor(const char *path, int ndim, Tensor *out)
{
    NpyArray a;
    if (ndim > TENSOR_MAX_DIMS)
        return error_set("%s: rank %d tensors are not supported", path, ndim);
    if (npy_read(path, &a) != 0)
        return -1;
    if (a.dtype != NPY_F32) {
        npy_free(&a);
        return error_set("%s: dtype int32 ('<i4'), expected float32 ('<f4')", path);
    }
    if (a.ndim != ndim) {
        npy_free(&a);
        return error_set("%s: has %d dimensions, expected %d", path, a.ndim, ndim);
    }
    out->data = a.data;
    out->ndim = ndim;
    out->numel = a.numel;
    for (int i = 0; i < TENSOR_MAX_DIMS; i++)
        out->shape[i] = i < ndim ? a.shape[i] : 1;
    return 0;
}

/* ---- writing ---------------------------------------------------------------------------- */

int npy_write(const char *path, NpyDtype dtype, int ndim, const size_t *shape, const void *data)
{
    char dict[512];
    size_t numel = 1;
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return error_set("%s: rank %d is not supported", path, ndim);
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype == NPY_F32 ? "<f4" : "<i4");
    for (int i = 0; i < ndim; i++) {
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%zu", i ? ", " : "", shape[i]);
        if (size_mul(&numel, numel, shape[i]) != 0)
            return error_set("%s: the element count overflows", path);
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    /* pad with spaces so that magic + version + length + header is a multiple of 64 bytes */
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t header_len = padded - 10;

    /* into a temporary file renamed over path at the end: a failed write keeps the old file */
    OutFile o;
    if (out_open(&o, path) != 0)
        return -1;
    unsigned char pre[10];
    memcpy(pre, NPY_MAGIC, 6);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (unsigned char)(header_len & 0xff);
    pre[9] = (unsigned char)(header_len >> 8);
    memset(dict + n, ' ', header_len - 1 - (size_t)n); /* the padding, then '\n' */
    dict[header_len - 1] = '\n';
    out_write(&o, pre, 10);
    out_write(&o, dict, header_len);
    out_write(&o, data, numel * 4); /* numel * 4 cannot overflow: the data is in memory */
    return out_commit(&o);
}

int npy_write_tensor(const char *path, const Tensor *t)
{
    return npy_write(path, NPY_F32, t->ndim, t->shape, t->data);
}
