/* safetensors.c: a strict reader over mmap and an atomic writer (DESIGN.md 4.2).
 *
 * File layout: an 8-byte little-endian header length N, N bytes of UTF-8
 * JSON, then the data section. Each tensor entry of the JSON gives dtype,
 * shape and data_offsets [begin, end) relative to the start of the data.
 * The reader accepts a file only when the ranges tile the data section
 * exactly, so every byte of the file is accounted for. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header of 100 MB holds far fewer than this many entries of any real
 * model; the cap bounds the memory a hostile header can make us allocate. */
#define ST_MAX_TENSORS 1000000u

struct actl_st {
    char *path;
    void *map;
    size_t map_len;
    actl_tensor **tensors; /* n, in data-offset order */
    actl_tensor **by_name; /* the same n, sorted by name, for bsearch */
    size_t n;
    char **meta_keys; /* nmeta, sorted by key */
    char **meta_vals;
    size_t nmeta;
};

/* One header entry while validating. */
typedef struct {
    const char *name; /* lent by the parsed JSON */
    actl_dtype dtype;
    int ndim;
    int64_t shape[ACTL_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

/* ---- reading ------------------------------------------------------------ */

/* Returns the offset of the first byte that is not part of well-formed UTF-8
 * (no overlong forms, no surrogates, nothing above U+10FFFF), or len. jansson
 * would refuse such bytes too; checking first gives a message with the
 * offending byte and its position in the header. */
static size_t utf8_bad_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t extra;
        unsigned cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1, cp = c & 0x1fu, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2, cp = c & 0x0fu, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3, cp = c & 0x07u, min = 0x10000;
        } else {
            return i;
        }
        if (len - i <= extra)
            return i;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0u) != 0x80u)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += extra + 1;
    }
    return len;
}

static int cmp_offsets(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_tensor_names(const void *a, const void *b)
{
    const actl_tensor *x = *(const actl_tensor *const *)a;
    const actl_tensor *y = *(const actl_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_str_ptrs(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A non-negative JSON integer, or -1 when v is not one. */
static int64_t json_uint(const json_t *v)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

/* Validates one tensor entry of the header into e. */
static int parse_entry(const char *path, const char *name, json_t *v, st_entry *e)
{
    if (!*name)
        return actl__err(ACTL_EFORMAT, "'%s': a tensor has an empty name", path);
    if (!json_is_object(v))
        return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': entry is not a JSON object", path,
                         name);
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': unexpected field '%s'", path,
                             name, k);
    }
    static const char *const fields[] = {"dtype", "shape", "data_offsets"};
    for (int i = 0; i < 3; i++)
        if (!json_object_get(v, fields[i]))
            return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': missing field '%s'", path,
                             name, fields[i]);

    e->name = name;
    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': field 'dtype' is not a string",
                         path, name);
    int rc = actl_dtype_parse(json_string_value(dt), &e->dtype);
    if (rc)
        return actl__err_wrap(rc, "'%s': tensor '%s'", path, name);

    json_t *shape = json_object_get(v, "shape");
    if (!json_is_array(shape))
        return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': field 'shape' is not an array",
                         path, name);
    size_t nd = json_array_size(shape);
    if (nd > ACTL_MAX_DIMS)
        return actl__err(ACTL_ELIMIT, "'%s': tensor '%s': shape has %zu dimensions (at most %d)",
                         path, name, nd, ACTL_MAX_DIMS);
    e->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d))
            return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': shape[%zu] is not an integer",
                             path, name, i);
        if (json_integer_value(d) < 0)
            return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': shape[%zu] is negative (%lld)",
                             path, name, i, (long long)json_integer_value(d));
        e->shape[i] = (int64_t)json_integer_value(d);
    }
    int64_t numel;
    size_t nbytes;
    if ((rc = actl__shape_size(e->dtype, e->ndim, e->shape, &numel, &nbytes)))
        return actl__err_wrap(rc, "'%s': tensor '%s'", path, name);

    json_t *off = json_object_get(v, "data_offsets");
    int64_t b = -1, en = -1;
    if (json_is_array(off) && json_array_size(off) == 2) {
        b = json_uint(json_array_get(off, 0));
        en = json_uint(json_array_get(off, 1));
    }
    if (b < 0 || en < 0)
        return actl__err(ACTL_EFORMAT,
                         "'%s': tensor '%s': field 'data_offsets' is not an array of 2 "
                         "non-negative integers",
                         path, name);
    if (b > en)
        return actl__err(ACTL_EFORMAT,
                         "'%s': tensor '%s': data_offsets [%lld, %lld] are reversed (begin > end)",
                         path, name, (long long)b, (long long)en);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->end - e->begin != (uint64_t)nbytes) {
        /* Build the shape text by hand: there is no tensor object yet. */
        char sh[256];
        size_t used = (size_t)snprintf(sh, sizeof sh, "[");
        for (int i = 0; i < e->ndim && used < sizeof sh; i++)
            used += (size_t)snprintf(sh + used, sizeof sh - used, "%s%lld", i ? ", " : "",
                                     (long long)e->shape[i]);
        if (used < sizeof sh)
            snprintf(sh + used, sizeof sh - used, "]");
        return actl__err(ACTL_EFORMAT,
                         "'%s': tensor '%s': data_offsets [%llu, %llu] give %llu bytes, but "
                         "%s %s needs %zu",
                         path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                         (unsigned long long)(e->end - e->begin), actl_dtype_name(e->dtype), sh,
                         nbytes);
    }
    return ACTL_OK;
}

/* Checks that the ranges, sorted by begin, tile [0, data_len) exactly. */
static int check_cover(const char *path, const st_entry *e, size_t n, uint64_t data_len)
{
    for (size_t i = 0; i < n; i++)
        if (e[i].end > data_len)
            return actl__err(ACTL_EFORMAT,
                             "'%s': tensor '%s': data_offsets [%llu, %llu] end past the data "
                             "section (%llu bytes): %llu bytes missing",
                             path, e[i].name, (unsigned long long)e[i].begin,
                             (unsigned long long)e[i].end, (unsigned long long)data_len,
                             (unsigned long long)(e[i].end - data_len));
    uint64_t at = 0;
    const char *prev = NULL;
    uint64_t prev_begin = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].begin < at)
            return actl__err(ACTL_EFORMAT,
                             "'%s': tensor '%s' [%llu, %llu] overlaps tensor '%s' [%llu, %llu]",
                             path, e[i].name, (unsigned long long)e[i].begin,
                             (unsigned long long)e[i].end, prev, (unsigned long long)prev_begin,
                             (unsigned long long)at);
        if (e[i].begin > at)
            return actl__err(ACTL_EFORMAT,
                             "'%s': data bytes [%llu, %llu] before tensor '%s' belong to no "
                             "tensor (a hole)",
                             path, (unsigned long long)at, (unsigned long long)e[i].begin,
                             e[i].name);
        /* An empty tensor sits at `at` and must not hide the previous
         * range from the overlap message. */
        if (e[i].end > e[i].begin || !prev) {
            prev = e[i].name;
            prev_begin = e[i].begin;
        }
        at = e[i].end;
    }
    if (at < data_len)
        return actl__err(ACTL_EFORMAT,
                         "'%s': %llu trailing bytes: the tensors end at %llu but the data "
                         "section has %llu bytes",
                         path, (unsigned long long)(data_len - at), (unsigned long long)at,
                         (unsigned long long)data_len);
    return ACTL_OK;
}

/* Copies __metadata__ into st, sorted by key. */
static int take_metadata(actl_st *st, json_t *meta)
{
    if (!json_is_object(meta))
        return actl__err(ACTL_EFORMAT, "'%s': __metadata__ is not a JSON object", st->path);
    size_t n = json_object_size(meta);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return actl__err(ACTL_EFORMAT,
                             "'%s': __metadata__ key '%s' has a non-string value", st->path, k);
    }
    if (n == 0)
        return ACTL_OK;
    const char **keys = malloc(n * sizeof *keys);
    st->meta_keys = calloc(n, sizeof *st->meta_keys);
    st->meta_vals = calloc(n, sizeof *st->meta_vals);
    int rc = ACTL_OK;
    if (!keys || !st->meta_keys || !st->meta_vals) {
        rc = actl__oom();
        goto out;
    }
    size_t i = 0;
    json_object_foreach(meta, k, v) keys[i++] = k;
    qsort(keys, n, sizeof *keys, cmp_str_ptrs);
    for (i = 0; i < n; i++) {
        st->meta_keys[i] = strdup(keys[i]);
        st->meta_vals[i] = strdup(json_string_value(json_object_get(meta, keys[i])));
        st->nmeta = i + 1; /* so close frees what was made, even on failure */
        if (!st->meta_keys[i] || !st->meta_vals[i]) {
            rc = actl__oom();
            goto out;
        }
    }
out:
    free(keys);
    return rc;
}

int actl_st_open(const char *path, actl_st **out)
{
    int rc = ACTL_OK;
    int fd = -1;
    actl_st *st = NULL;
    json_t *root = NULL;
    st_entry *ents = NULL;
    char *what = NULL;

    if (!path || !out)
        return actl__err(ACTL_EINVAL, "safetensors open: NULL argument");
    if (!(st = calloc(1, sizeof *st)) || !(st->path = strdup(path))) {
        rc = actl__oom();
        goto out;
    }
    uint64_t fsize;
    if ((rc = actl__open_regular(path, &fd, &fsize)))
        goto out;
    if (fsize < 8) {
        rc = actl__err(ACTL_EFORMAT,
                       "'%s': file is %lld bytes, shorter than the 8-byte header length "
                       "(truncated)",
                       path, (long long)fsize);
        goto out;
    }
    if (fsize > SIZE_MAX) {
        rc = actl__err(ACTL_ELIMIT, "'%s': file is %lld bytes, too large to map", path,
                       (long long)fsize);
        goto out;
    }
    /* The whole file is mapped, header included, so the length is never 0
     * even when the data section is empty. MAP_PRIVATE: a file rewritten in
     * place by someone else cannot change what we validated through our
     * pages once touched (truncation can still fault; writers here rename). */
    st->map_len = (size_t)fsize;
    st->map = mmap(NULL, st->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (st->map == MAP_FAILED) {
        st->map = NULL;
        rc = actl__err(ACTL_EIO, "cannot map '%s': %s", path, strerror(errno));
        goto out;
    }
    const unsigned char *base = st->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | base[i];
    if (hlen > ACTL_ST_MAX_HEADER) {
        rc = actl__err(ACTL_ELIMIT, "'%s': header length %llu is over the limit of %u bytes",
                       path, (unsigned long long)hlen, ACTL_ST_MAX_HEADER);
        goto out;
    }
    if (hlen > st->map_len - 8) {
        rc = actl__err(ACTL_EFORMAT,
                       "'%s': header length %llu runs past the end of the file (size %zu)", path,
                       (unsigned long long)hlen, st->map_len);
        goto out;
    }
    const unsigned char *hdr = base + 8;
    size_t hn = (size_t)hlen;
    size_t bad = utf8_bad_at(hdr, hn);
    if (bad < hn) {
        rc = actl__err(ACTL_EFORMAT, "'%s': header is not valid UTF-8 (byte 0x%02x at offset %zu)",
                       path, hdr[bad], bad);
        goto out;
    }
    /* JSON text never holds a raw NUL; a header padded with NULs instead of
     * spaces is the likely cause, so say so rather than pass on the
     * parser's words. */
    const unsigned char *nul = memchr(hdr, 0, hn);
    if (nul) {
        rc = actl__err(ACTL_EFORMAT,
                       "'%s': header holds a NUL byte at offset %zu (padding must be spaces)",
                       path, (size_t)(nul - hdr));
        goto out;
    }
    if (!(what = actl__strdup_printf("'%s': header", path))) {
        rc = actl__oom();
        goto out;
    }
    /* jansson allows only JSON whitespace after the value, which covers the
     * space padding writers add to align the data. */
    if ((rc = actl__json_parse((const char *)hdr, hn, what, &root)))
        goto out;
    if (!json_is_object(root)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': header is not a JSON object", path);
        goto out;
    }
    if (hdr[0] != '{') {
        rc = actl__err(ACTL_EFORMAT, "'%s': header must begin with '{', not whitespace", path);
        goto out;
    }

    json_t *meta = json_object_get(root, "__metadata__");
    size_t nt = json_object_size(root) - (meta ? 1 : 0);
    if (nt > ST_MAX_TENSORS) {
        rc = actl__err(ACTL_ELIMIT, "'%s': header lists %zu tensors (at most %u)", path, nt,
                       ST_MAX_TENSORS);
        goto out;
    }
    if (meta && (rc = take_metadata(st, meta)))
        goto out;
    if (!(ents = calloc(nt ? nt : 1, sizeof *ents))) {
        rc = actl__oom();
        goto out;
    }
    size_t k = 0;
    const char *name;
    json_t *v;
    json_object_foreach(root, name, v) {
        if (v == meta)
            continue;
        if ((rc = parse_entry(path, name, v, &ents[k++])))
            goto out;
    }
    qsort(ents, nt, sizeof *ents, cmp_offsets);
    const unsigned char *data = hdr + hn;
    if ((rc = check_cover(path, ents, nt, (uint64_t)(st->map_len - 8 - hn))))
        goto out;

    st->tensors = calloc(nt ? nt : 1, sizeof *st->tensors);
    st->by_name = calloc(nt ? nt : 1, sizeof *st->by_name);
    if (!st->tensors || !st->by_name) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < nt; i++) {
        if ((rc = actl__tensor_view(ents[i].name, ents[i].dtype, ents[i].ndim, ents[i].shape,
                                    data + ents[i].begin, &st->tensors[i])))
            goto out;
        st->n = i + 1;
    }
    memcpy(st->by_name, st->tensors, nt * sizeof *st->by_name);
    qsort(st->by_name, nt, sizeof *st->by_name, cmp_tensor_names);
    *out = st;
    st = NULL;
out:
    if (fd >= 0)
        close(fd);
    json_decref(root);
    free(ents);
    free(what);
    actl_st_close(st);
    return rc;
}

void actl_st_close(actl_st *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        actl_tensor_free(st->tensors[i]);
    free(st->tensors);
    free(st->by_name);
    for (size_t i = 0; i < st->nmeta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_vals[i]);
    }
    free(st->meta_keys);
    free(st->meta_vals);
    if (st->map)
        munmap(st->map, st->map_len);
    free(st->path);
    free(st);
}

size_t actl_st_count(const actl_st *st) { return st ? st->n : 0; }

const actl_tensor *actl_st_tensor(const actl_st *st, size_t i)
{
    return st && i < st->n ? st->tensors[i] : NULL;
}

static int cmp_name_tensor(const void *key, const void *elem)
{
    return strcmp(key, (*(const actl_tensor *const *)elem)->name);
}

const actl_tensor *actl_st_find(const actl_st *st, const char *name)
{
    if (!st || !name || !st->n)
        return NULL;
    actl_tensor **hit = bsearch(name, st->by_name, st->n, sizeof *st->by_name, cmp_name_tensor);
    return hit ? *hit : NULL;
}

static int cmp_name_str(const void *key, const void *elem)
{
    return strcmp(key, *(const char *const *)elem);
}

const char *actl_st_metadata(const actl_st *st, const char *key)
{
    if (!st || !key || !st->nmeta)
        return NULL;
    char **hit = bsearch(key, st->meta_keys, st->nmeta, sizeof *st->meta_keys, cmp_name_str);
    return hit ? st->meta_vals[hit - st->meta_keys] : NULL;
}

size_t actl_st_metadata_count(const actl_st *st) { return st ? st->nmeta : 0; }

void actl_st_metadata_at(const actl_st *st, size_t i, const char **key, const char **value)
{
    bool ok = st && i < st->nmeta;
    if (key)
        *key = ok ? st->meta_keys[i] : NULL;
    if (value)
        *value = ok ? st->meta_vals[i] : NULL;
}

/* ---- writing ------------------------------------------------------------ */

typedef struct {
    const actl_tensor *const *tensors;
    size_t n;
    const char *header; /* compact JSON */
    size_t header_len;
    size_t pad; /* spaces after the JSON */
} st_writer;

static int write_body(FILE *f, const char *tmp, void *ctx)
{
    const st_writer *w = ctx;
    uint64_t hlen = (uint64_t)(w->header_len + w->pad);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hlen >> (8 * i));
    static const char spaces[8] = "       ";
    int rc;
    if ((rc = actl__fwrite_all(f, len8, 8, tmp)) ||
        (rc = actl__fwrite_all(f, w->header, w->header_len, tmp)) ||
        (rc = actl__fwrite_all(f, spaces, w->pad, tmp)))
        return rc;
    for (size_t i = 0; i < w->n; i++)
        if ((rc = actl__fwrite_all(f, w->tensors[i]->data, w->tensors[i]->nbytes, tmp)))
            return rc;
    return ACTL_OK;
}

/* Checks the caller's names: what the reader would refuse, the writer
 * refuses first, so that a file we write always reads back. */
static int check_names(const char *path, const actl_tensor *const *tensors, size_t n,
                       const char *const *metadata)
{
    int rc = ACTL_OK;
    const char **names = NULL;
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = tensors[i];
        if (!t || !t->name)
            return actl__err(ACTL_EINVAL, "'%s': tensor %zu is NULL", path, i);
        if (!*t->name)
            return actl__err(ACTL_EINVAL, "'%s': tensor %zu has an empty name", path, i);
        if (!strcmp(t->name, "__metadata__"))
            return actl__err(ACTL_EINVAL, "'%s': '__metadata__' cannot name a tensor", path);
        size_t len = strlen(t->name);
        if (utf8_bad_at((const unsigned char *)t->name, len) < len)
            return actl__err(ACTL_EINVAL, "'%s': tensor %zu: name is not valid UTF-8", path, i);
        if (!actl_dtype_name(t->dtype))
            return actl__err(ACTL_EINVAL, "'%s': tensor '%s': invalid dtype %d", path, t->name,
                             (int)t->dtype);
    }
    if (n > 1) {
        if (!(names = malloc(n * sizeof *names)))
            return actl__oom();
        for (size_t i = 0; i < n; i++)
            names[i] = tensors[i]->name;
        qsort(names, n, sizeof *names, cmp_str_ptrs);
        for (size_t i = 1; i < n; i++)
            if (!strcmp(names[i - 1], names[i])) {
                rc = actl__err(ACTL_EINVAL, "'%s': tensor name '%s' appears twice", path,
                               names[i]);
                goto out;
            }
    }
    for (size_t i = 0; metadata && metadata[i]; i += 2) {
        const char *k = metadata[i], *v = metadata[i + 1];
        if (!v) {
            rc = actl__err(ACTL_EINVAL, "'%s': metadata key '%s' has no value", path, k);
            goto out;
        }
        if (utf8_bad_at((const unsigned char *)k, strlen(k)) < strlen(k) ||
            utf8_bad_at((const unsigned char *)v, strlen(v)) < strlen(v)) {
            rc = actl__err(ACTL_EINVAL, "'%s': metadata key '%s': not valid UTF-8", path, k);
            goto out;
        }
        for (size_t j = 0; j < i; j += 2)
            if (!strcmp(metadata[j], k)) {
                rc = actl__err(ACTL_EINVAL, "'%s': metadata key '%s' appears twice", path, k);
                goto out;
            }
    }
out:
    free(names);
    return rc;
}

/* Larger elements first, then by name: every size before a tensor is then a
 * multiple of its element size, so each tensor is aligned to it. This is the
 * order the reference writer uses too. */
static int cmp_layout(const void *a, const void *b)
{
    const actl_tensor *x = *(const actl_tensor *const *)a;
    const actl_tensor *y = *(const actl_tensor *const *)b;
    size_t sx = actl_dtype_size(x->dtype), sy = actl_dtype_size(y->dtype);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

int actl_st_write(const char *path, const actl_tensor *const *given, size_t n,
                  const char *const *metadata)
{
    int rc = ACTL_OK;
    json_t *root = NULL;
    char *header = NULL;
    const actl_tensor **tensors = NULL;

    if (!path || (n && !given))
        return actl__err(ACTL_EINVAL, "safetensors write: NULL argument");
    if ((rc = check_names(path, given, n, metadata)))
        return rc;
    if (!(tensors = malloc((n ? n : 1) * sizeof *tensors)) || !(root = json_object())) {
        rc = actl__oom();
        goto out;
    }
    if (n)
        memcpy(tensors, given, n * sizeof *tensors);
    qsort(tensors, n, sizeof *tensors, cmp_layout);
    if (metadata) {
        json_t *meta = json_object();
        if (!meta || json_object_set_new(root, "__metadata__", meta)) {
            rc = actl__oom();
            goto out;
        }
        for (size_t i = 0; metadata[i]; i += 2)
            if (json_object_set_new(meta, metadata[i], json_string(metadata[i + 1]))) {
                rc = actl__oom();
                goto out;
            }
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = tensors[i];
        if ((uint64_t)t->nbytes > (uint64_t)INT64_MAX - off) {
            rc = actl__err(ACTL_ELIMIT, "'%s': tensor '%s': data section passes 2^63 bytes", path,
                           t->name);
            goto out;
        }
        /* Each value joins the tree as soon as it is made: set_new and
         * append_new take the reference even when they fail, so the one
         * json_decref(root) below frees everything on every path. */
        json_t *entry = json_object(), *shape = NULL, *offs = NULL;
        int bad = json_object_set_new(root, t->name, entry) ||
                  json_object_set_new(entry, "dtype", json_string(actl_dtype_name(t->dtype))) ||
                  json_object_set_new(entry, "shape", shape = json_array()) ||
                  json_object_set_new(entry, "data_offsets", offs = json_array());
        for (int d = 0; !bad && d < t->ndim; d++)
            bad = json_array_append_new(shape, json_integer(t->shape[d]));
        bad = bad || json_array_append_new(offs, json_integer((json_int_t)off)) ||
              json_array_append_new(offs, json_integer((json_int_t)(off + t->nbytes)));
        if (bad) {
            rc = actl__oom();
            goto out;
        }
        off += t->nbytes;
    }
    if (!(header = actl__json_dump(root, -1))) {
        rc = actl__oom();
        goto out;
    }
    st_writer w = {tensors, n, header, strlen(header), 0};
    /* Pad so the data section starts 8-byte aligned in the file. */
    w.pad = (8 - (8 + w.header_len) % 8) % 8;
    rc = actl__write_atomic(path, write_body, &w);
out:
    json_decref(root);
    free(header);
    free(tensors);
    return rc;
}
