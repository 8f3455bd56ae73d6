/* test_safetensors.c: the strict safetensors reader against hand-made broken
 * files (fixtures/broken, made by fixtures/gen_broken.c), the writer, a real
 * Hugging Face checkpoint from ../shared/data, and sharded checkpoints. */
#include "testutil.h"
#include "internal.h"

#include <dirent.h>
#include <math.h>
#include <stdbool.h>
#include <sys/stat.h>

#include <jansson.h>

#define BROKEN FIXTURES "/broken/"
#define LLAMA SHARED_DATA "/hf-tiny-random-llama-2"

/* ---- helpers ------------------------------------------------------------ */

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Names in dir other than "." and "..", sorted, joined by ' '. */
static void list_dir(const char *dir, char *out, size_t n)
{
    struct dirent **ents;
    int k = scandir(dir, &ents, NULL, alphasort);
    assert_true(k >= 0);
    out[0] = '\0';
    for (int i = 0; i < k; i++) {
        if (strcmp(ents[i]->d_name, ".") && strcmp(ents[i]->d_name, "..")) {
            if (out[0])
                strncat(out, " ", n - strlen(out) - 1);
            strncat(out, ents[i]->d_name, n - strlen(out) - 1);
        }
        free(ents[i]);
    }
    free(ents);
}

static actl_tensor *mk(const char *name, actl_dtype dt, int ndim, const int64_t *shape)
{
    actl_tensor *t;
    assert_ok(actl_tensor_new(name, dt, ndim, shape, NULL, &t));
    /* A pattern that differs per tensor and per byte. */
    unsigned char *d = (unsigned char *)actl_tensor_data(t);
    for (size_t i = 0; i < actl_tensor_nbytes(t); i++)
        d[i] = (unsigned char)(i * 31 + strlen(name) * 7 + (size_t)dt);
    return t;
}

/* ---- broken files: one test per rule ------------------------------------ */

/* Opens fixtures/broken/<file>.safetensors and expects `code` with a
 * message naming the file and containing `needle`. */
static void expect_broken(const char *file, int code, const char *needle)
{
    char path[512];
    snprintf(path, sizeof path, BROKEN "%s.safetensors", file);
    actl_st *st = (actl_st *)(uintptr_t)1;
    assert_err(actl_st_open(path, &st), code, needle);
    if (!strstr(actl_errmsg(), path))
        fail_msg("message does not name '%s': %s", path, actl_errmsg());
    assert_ptr_equal(st, (actl_st *)(uintptr_t)1); /* out untouched on failure */
}

#define BROKEN_TEST(fn, file, code, needle)                                          \
    static void test_safetensors__##fn(void **state)                                 \
    {                                                                                \
        (void)state;                                                                 \
        expect_broken(file, code, needle);                                           \
    }

BROKEN_TEST(rejects_truncated_file, "truncated", ACTL_EFORMAT,
            "file is 5 bytes, shorter than the 8-byte header length")
BROKEN_TEST(rejects_header_past_end, "header_past_end", ACTL_EFORMAT,
            "header length 64 runs past the end of the file (size 63)")
BROKEN_TEST(rejects_header_over_limit, "header_over_limit", ACTL_ELIMIT,
            "header length 100000001 is over the limit of 100000000")
BROKEN_TEST(rejects_nul_padding, "nul_padding", ACTL_EFORMAT, "holds a NUL byte at offset 53")
BROKEN_TEST(rejects_bad_json, "bad_json", ACTL_EFORMAT, "header: invalid JSON at line 1")
BROKEN_TEST(rejects_header_that_is_not_an_object, "not_object", ACTL_EFORMAT,
            "header is not a JSON object")
BROKEN_TEST(rejects_bad_utf8, "bad_utf8", ACTL_EFORMAT,
            "header is not valid UTF-8 (byte 0xff at offset 3)")
BROKEN_TEST(rejects_duplicate_key, "duplicate_key", ACTL_EFORMAT, "duplicate object key")
BROKEN_TEST(rejects_leading_whitespace, "leading_space", ACTL_EFORMAT,
            "header must begin with '{'")
BROKEN_TEST(rejects_empty_tensor_name, "empty_name", ACTL_EFORMAT, "a tensor has an empty name")
BROKEN_TEST(rejects_entry_that_is_not_an_object, "entry_not_object", ACTL_EFORMAT,
            "tensor 'a': entry is not a JSON object")
BROKEN_TEST(rejects_missing_field, "missing_field", ACTL_EFORMAT,
            "tensor 'a': missing field 'data_offsets'")
BROKEN_TEST(rejects_extra_field, "extra_field", ACTL_EFORMAT,
            "tensor 'a': unexpected field 'offsets'")
BROKEN_TEST(rejects_dtype_that_is_not_a_string, "dtype_not_string", ACTL_EFORMAT,
            "tensor 'a': field 'dtype' is not a string")
BROKEN_TEST(rejects_unknown_dtype, "unknown_dtype", ACTL_EFORMAT,
            "tensor 'a': unknown dtype 'F33'")
BROKEN_TEST(rejects_unsupported_dtype, "unsupported_dtype", ACTL_EUNSUPPORTED,
            "tensor 'a': dtype 'F8_E4M3' is not supported")
BROKEN_TEST(rejects_negative_shape, "negative_shape", ACTL_EFORMAT,
            "tensor 'a': shape[1] is negative (-1)")
BROKEN_TEST(rejects_too_many_dims, "too_many_dims", ACTL_ELIMIT,
            "tensor 'a': shape has 9 dimensions (at most 8)")
BROKEN_TEST(rejects_shape_overflow, "shape_overflow", ACTL_ELIMIT,
            "tensor 'a': shape product overflows")
BROKEN_TEST(rejects_non_integer_offsets, "bad_offsets", ACTL_EFORMAT,
            "field 'data_offsets' is not an array of 2 non-negative integers")
BROKEN_TEST(rejects_reversed_offsets, "reversed_offsets", ACTL_EFORMAT,
            "data_offsets [4, 0] are reversed (begin > end)")
BROKEN_TEST(rejects_length_mismatch, "length_mismatch", ACTL_EFORMAT,
            "tensor 'a': data_offsets [0, 12] give 12 bytes, but F32 [2, 4] needs 32")
BROKEN_TEST(rejects_overlapping_ranges, "overlap", ACTL_EFORMAT,
            "tensor 'b' [4, 12] overlaps tensor 'a' [0, 8]")
BROKEN_TEST(rejects_hole_between_ranges, "hole", ACTL_EFORMAT,
            "data bytes [4, 6] before tensor 'b' belong to no tensor")
BROKEN_TEST(rejects_trailing_bytes, "trailing_bytes", ACTL_EFORMAT,
            "2 trailing bytes: the tensors end at 4 but the data section has 6 bytes")
BROKEN_TEST(rejects_missing_bytes, "missing_bytes", ACTL_EFORMAT,
            "data_offsets [4, 8] end past the data section (6 bytes): 2 bytes missing")
BROKEN_TEST(rejects_non_string_metadata, "non_string_metadata", ACTL_EFORMAT,
            "__metadata__ key 'step' has a non-string value")
BROKEN_TEST(rejects_metadata_that_is_not_an_object, "metadata_not_object", ACTL_EFORMAT,
            "__metadata__ is not a JSON object")

/* The control: proves the broken files fail for their one fault. */
static void test_safetensors__reads_valid_control_file(void **state)
{
    (void)state;
    const char *path = BROKEN "valid.safetensors";
    size_t len;
    unsigned char *file = test_slurp(path, &len);
    const unsigned char *data = file + 8 + le64(file);
    actl_st *st;
    assert_ok(actl_st_open(path, &st));

    /* Listed b, a, e in the header; offset order is a [0,8), b [8,11), e [11,11). */
    assert_int_equal(actl_st_count(st), 3);
    const actl_tensor *a = actl_st_tensor(st, 0), *b = actl_st_tensor(st, 1),
                      *e = actl_st_tensor(st, 2);
    assert_string_equal(actl_tensor_name(a), "a");
    assert_string_equal(actl_tensor_name(b), "b");
    assert_string_equal(actl_tensor_name(e), "e");
    assert_null(actl_st_tensor(st, 3));

    float f[2];
    assert_int_equal(actl_tensor_dtype(a), ACTL_F32);
    assert_ok(actl_tensor_to_f32(a, f));
    assert_true(f[0] == 1.0f && f[1] == -2.5f);
    assert_int_equal(actl_tensor_dtype(b), ACTL_U8);
    assert_memory_equal(actl_tensor_data(b), "\x01\x02\x03", 3);
    assert_memory_equal(actl_tensor_data(a), data, 8);

    assert_int_equal(actl_tensor_dtype(e), ACTL_F16);
    assert_int_equal(actl_tensor_ndim(e), 2);
    assert_int_equal(actl_tensor_shape(e)[0], 0);
    assert_int_equal(actl_tensor_shape(e)[1], 4);
    assert_int_equal(actl_tensor_numel(e), 0);
    assert_int_equal(actl_tensor_nbytes(e), 0);

    assert_ptr_equal(actl_st_find(st, "b"), b);
    assert_ptr_equal(actl_st_find(st, "e"), e);
    assert_null(actl_st_find(st, "c"));
    assert_null(actl_st_find(st, "__metadata__"));

    assert_int_equal(actl_st_metadata_count(st), 1);
    assert_string_equal(actl_st_metadata(st, "format"), "pt");
    assert_null(actl_st_metadata(st, "step"));
    const char *k, *v;
    actl_st_metadata_at(st, 0, &k, &v);
    assert_string_equal(k, "format");
    assert_string_equal(v, "pt");
    actl_st_metadata_at(st, 1, &k, &v);
    assert_null(k);
    assert_null(v);
    actl_st_close(st);
    free(file);
}

static void test_safetensors__missing_file_is_not_found(void **state)
{
    (void)state;
    actl_st *st;
    assert_err(actl_st_open(BROKEN "no_such_file.safetensors", &st), ACTL_ENOTFOUND,
               "cannot open 'fixtures/broken/no_such_file.safetensors'");
    assert_err(actl_st_open(BROKEN, &st), ACTL_EFORMAT, "is not a regular file");
    actl_st_close(NULL);
}

/* ---- writer ------------------------------------------------------------- */

static void test_safetensors__round_trips_every_dtype_scalars_and_empty_tensors(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "all.safetensors");
    enum { N = ACTL_DTYPE_COUNT + 4 };
    actl_tensor *t[N];
    int k = 0;
    static const int64_t shapes[ACTL_DTYPE_COUNT][3] = {
        {2, 3, 1}, {5, 1, 1}, {3, 3, 1}, {7, 1, 1}, {2, 2, 2}, {9, 1, 1}, {3, 1, 1}, {1, 4, 1},
    };
    char name[64];
    for (int d = 0; d < ACTL_DTYPE_COUNT; d++) {
        snprintf(name, sizeof name, "layer.%s.weight", actl_dtype_name((actl_dtype)d));
        t[k++] = mk(name, (actl_dtype)d, 1 + d % 3, shapes[d]);
    }
    static const int64_t zero[] = {0}, three_by_zero[] = {3, 0};
    t[k++] = mk("scalar.f32", ACTL_F32, 0, NULL);
    t[k++] = mk("scalar.u8", ACTL_U8, 0, NULL);
    t[k++] = mk("empty.bf16", ACTL_BF16, 1, zero);
    t[k++] = mk("empty.i64", ACTL_I64, 2, three_by_zero);
    const char *meta[] = {"format", "pt", "note", "caf\xc3\xa9 \"quoted\"", "", "empty key", NULL};
    assert_ok(actl_st_write(path, (const actl_tensor *const *)t, N, meta));

    actl_st *st;
    assert_ok(actl_st_open(path, &st));
    assert_int_equal(actl_st_count(st), N);
    for (int i = 0; i < N; i++) {
        const actl_tensor *r = actl_st_find(st, actl_tensor_name(t[i]));
        assert_non_null(r);
        assert_int_equal(actl_tensor_dtype(r), actl_tensor_dtype(t[i]));
        assert_int_equal(actl_tensor_ndim(r), actl_tensor_ndim(t[i]));
        for (int d = 0; d < actl_tensor_ndim(r); d++)
            assert_int_equal(actl_tensor_shape(r)[d], actl_tensor_shape(t[i])[d]);
        assert_int_equal(actl_tensor_nbytes(r), actl_tensor_nbytes(t[i]));
        assert_memory_equal(actl_tensor_data(r), actl_tensor_data(t[i]),
                            actl_tensor_nbytes(t[i]));
    }
    /* Scalars hold one element. */
    assert_int_equal(actl_tensor_numel(actl_st_find(st, "scalar.f32")), 1);
    assert_int_equal(actl_tensor_nbytes(actl_st_find(st, "scalar.u8")), 1);
    /* Laid out by element size, largest first, then by name; so each tensor
     * is aligned to its element size (the mapping is page-aligned and the
     * header padded to 8). */
    for (size_t j = 0; j < actl_st_count(st); j++) {
        const actl_tensor *r = actl_st_tensor(st, j);
        size_t esz = actl_dtype_size(actl_tensor_dtype(r));
        assert_int_equal((uintptr_t)actl_tensor_data(r) % esz, 0);
        if (j == 0 || actl_tensor_nbytes(r) == 0)
            continue;
        const actl_tensor *p = actl_st_tensor(st, j - 1);
        size_t psz = actl_dtype_size(actl_tensor_dtype(p));
        if (actl_tensor_nbytes(p) > 0)
            assert_true(psz > esz || (psz == esz && strcmp(actl_tensor_name(p),
                                                          actl_tensor_name(r)) < 0));
    }
    assert_int_equal(actl_st_metadata_count(st), 3);
    assert_string_equal(actl_st_metadata(st, "format"), "pt");
    assert_string_equal(actl_st_metadata(st, "note"), "caf\xc3\xa9 \"quoted\"");
    assert_string_equal(actl_st_metadata(st, ""), "empty key");
    actl_st_close(st);

    for (int i = 0; i < N; i++)
        actl_tensor_free(t[i]);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_safetensors__writes_and_reads_file_with_no_tensors(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "none.safetensors");
    actl_st *st;
    assert_ok(actl_st_write(path, NULL, 0, NULL));
    size_t len;
    unsigned char *file = test_slurp(path, &len);
    /* No metadata given, so none written: "{}" and six spaces. */
    assert_int_equal(len, 16);
    assert_int_equal(le64(file), 8);
    assert_memory_equal(file + 8, "{}      ", 8);
    free(file);
    assert_ok(actl_st_open(path, &st));
    assert_int_equal(actl_st_count(st), 0);
    assert_int_equal(actl_st_metadata_count(st), 0);
    assert_null(actl_st_find(st, "x"));
    actl_st_close(st);
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* Checks on the bytes on disk, without the reader: for name lengths that
 * give every remainder mod 8, 8 + N is a multiple of 8, the JSON ends with
 * '}' and is followed only by fewer than 8 spaces, and the data follows. */
static void test_safetensors__pads_header_with_spaces_to_multiple_of_8(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "pad.safetensors");
    bool seen[8] = {false};
    for (int extra = 0; extra < 8; extra++) {
        char name[32];
        snprintf(name, sizeof name, "w%.*s", extra, "xxxxxxxx");
        static const int64_t shape[] = {3};
        actl_tensor *t = mk(name, ACTL_U8, 1, shape);
        assert_ok(actl_st_write(path, (const actl_tensor *const *)&t, 1, NULL));
        size_t len;
        unsigned char *file = test_slurp(path, &len);
        uint64_t n = le64(file);
        assert_int_equal((8 + n) % 8, 0);
        assert_int_equal(len, 8 + n + 3);
        size_t last = 8 + (size_t)n - 1;
        while (file[last] == ' ')
            last--;
        assert_int_equal(file[last], '}');
        size_t pad = 8 + (size_t)n - 1 - last;
        assert_true(pad < 8);
        seen[pad] = true;
        json_error_t e;
        json_t *h = json_loadb((const char *)file + 8, (size_t)n, 0, &e);
        assert_non_null(h);
        assert_non_null(json_object_get(h, name));
        json_decref(h);
        assert_memory_equal(file + 8 + n, actl_tensor_data(t), 3);
        free(file);
        actl_tensor_free(t);
    }
    /* The name lengths covered both no padding and some. */
    assert_true(seen[0]);
    int kinds = 0;
    for (int i = 0; i < 8; i++)
        kinds += seen[i];
    assert_int_equal(kinds, 8);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_safetensors__writer_rejects_duplicate_and_reserved_names(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "dup.safetensors");
    static const int64_t shape[] = {2};
    actl_tensor *t[3] = {mk("a", ACTL_F32, 1, shape), mk("b", ACTL_F32, 1, shape),
                         mk("a", ACTL_F16, 1, shape)};
    assert_err(actl_st_write(path, (const actl_tensor *const *)t, 3, NULL), ACTL_EINVAL,
               "tensor name 'a' appears twice");
    actl_tensor *meta = mk("__metadata__", ACTL_U8, 1, shape);
    assert_err(actl_st_write(path, (const actl_tensor *const *)&meta, 1, NULL), ACTL_EINVAL,
               "'__metadata__' cannot name a tensor");
    const char *dupmeta[] = {"k", "1", "k", "2", NULL};
    assert_err(actl_st_write(path, (const actl_tensor *const *)t, 2, dupmeta), ACTL_EINVAL,
               "metadata key 'k' appears twice");
    const char *oddmeta[] = {"k", NULL};
    assert_err(actl_st_write(path, (const actl_tensor *const *)t, 2, oddmeta), ACTL_EINVAL,
               "metadata key 'k' has no value");
    /* Nothing was written, not even a temporary file. */
    char names[256];
    list_dir(dir, names, sizeof names);
    assert_string_equal(names, "");
    for (int i = 0; i < 3; i++)
        actl_tensor_free(t[i]);
    actl_tensor_free(meta);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_safetensors__write_replaces_file_whole_and_leaves_no_temporaries(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "model.safetensors");
    static const int64_t big[] = {1000}, small[] = {2};
    actl_tensor *old = mk("old", ACTL_F32, 1, big), *new_ = mk("new", ACTL_F16, 1, small);

    assert_ok(actl_st_write(path, (const actl_tensor *const *)&old, 1, NULL));
    size_t old_len;
    free(test_slurp(path, &old_len));
    assert_true(old_len > 4000);

    assert_ok(actl_st_write(path, (const actl_tensor *const *)&new_, 1, NULL));
    size_t len;
    unsigned char *file = test_slurp(path, &len);
    /* The new file alone: no bytes of the longer old one left behind. */
    assert_int_equal(len, 8 + le64(file) + 4);
    assert_memory_equal(file + len - 4, actl_tensor_data(new_), 4);
    free(file);
    actl_st *st;
    assert_ok(actl_st_open(path, &st));
    assert_int_equal(actl_st_count(st), 1);
    assert_non_null(actl_st_find(st, "new"));
    assert_null(actl_st_find(st, "old"));
    actl_st_close(st);

    /* A failed write leaves the file as it was. */
    const actl_tensor *dup[2] = {new_, new_};
    assert_err(actl_st_write(path, dup, 2, NULL), ACTL_EINVAL, "appears twice");
    size_t len2;
    free(test_slurp(path, &len2));
    assert_int_equal(len2, len);

    char names[256];
    list_dir(dir, names, sizeof names);
    assert_string_equal(names, "model.safetensors");
    actl_tensor_free(old);
    actl_tensor_free(new_);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_safetensors__finds_each_of_10000_tensors_by_name(void **state)
{
    (void)state;
    enum { N = 10000 };
    char *dir = test_tmpdir(), *path = test_join(dir, "many.safetensors");
    actl_tensor **t = malloc(N * sizeof *t);
    assert_non_null(t);
    static const int64_t shape[] = {1};
    for (int i = 0; i < N; i++) {
        char name[64];
        /* Given in an order that is neither sorted nor reverse-sorted. */
        snprintf(name, sizeof name, "model.layers.%d.w", (i * 7919) % N);
        assert_ok(actl_tensor_new(name, ACTL_I32, 1, shape, &i, &t[i]));
    }
    assert_ok(actl_st_write(path, (const actl_tensor *const *)t, N, NULL));
    actl_st *st;
    assert_ok(actl_st_open(path, &st));
    assert_int_equal(actl_st_count(st), N);
    for (int i = 0; i < N; i++) {
        const actl_tensor *r = actl_st_find(st, actl_tensor_name(t[i]));
        assert_non_null(r);
        int32_t v;
        memcpy(&v, actl_tensor_data(r), 4);
        assert_int_equal(v, i);
    }
    assert_null(actl_st_find(st, "model.layers.10000.w"));
    /* One dtype: offset order is name order, whatever order they were given in. */
    for (size_t j = 1; j < N; j++)
        assert_true(strcmp(actl_tensor_name(actl_st_tensor(st, j - 1)),
                           actl_tensor_name(actl_st_tensor(st, j))) < 0);
    actl_st_close(st);
    for (int i = 0; i < N; i++)
        actl_tensor_free(t[i]);
    free(t);
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* A header of 1,000,001 entries is refused before any entry is examined. */
static void test_safetensors__rejects_more_than_a_million_tensors(void **state)
{
    (void)state;
    enum { N = 1000001 };
    char *dir = test_tmpdir(), *path = test_join(dir, "huge.safetensors");
    size_t cap = (size_t)N * 16 + 16, n = 0;
    char *h = malloc(cap);
    assert_non_null(h);
    h[n++] = '{';
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(h + n, cap - n, "%s\"%x\":0", i ? "," : "", i);
    h[n++] = '}';
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)n >> (8 * i));
    assert_int_equal(fwrite(len8, 1, 8, f), 8);
    assert_int_equal(fwrite(h, 1, n, f), n);
    fclose(f);
    actl_st *st;
    assert_err(actl_st_open(path, &st), ACTL_ELIMIT, "header lists 1000001 tensors (at most");
    free(h);
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* ---- a real checkpoint -------------------------------------------------- */

/* bfloat16 by its definition: sign, 8 exponent bits (bias 127), 7 mantissa
 * bits; exponent 0 is subnormal, 255 is Inf/NaN. */
static float bf16_decode(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -126 - 7);
    else
        v = ldexp((double)(128 + m), e - 127 - 7);
    return (float)(sign ? -v : v);
}

typedef struct {
    char name[96];
    int64_t rows, cols; /* cols 0: 1-D */
} expect_t;

/* The 21 tensors a LLaMA config implies, from config.json alone. */
static size_t llama_expected(expect_t *ex)
{
    size_t len;
    unsigned char *text = test_slurp(LLAMA "/config.json", &len);
    json_error_t e;
    json_t *cfg = json_loadb((const char *)text, len, 0, &e);
    assert_non_null(cfg);
    free(text);
    int64_t hidden = json_integer_value(json_object_get(cfg, "hidden_size"));
    int64_t inter = json_integer_value(json_object_get(cfg, "intermediate_size"));
    int64_t vocab = json_integer_value(json_object_get(cfg, "vocab_size"));
    int64_t layers = json_integer_value(json_object_get(cfg, "num_hidden_layers"));
    int64_t heads = json_integer_value(json_object_get(cfg, "num_attention_heads"));
    int64_t kv = json_integer_value(json_object_get(cfg, "num_key_value_heads"));
    json_decref(cfg);
    assert_int_equal(hidden, 16);
    assert_int_equal(inter, 64);
    assert_int_equal(vocab, 3000);
    assert_int_equal(layers, 2);
    assert_int_equal(heads, 4);
    int64_t head_dim = hidden / heads;
    size_t n = 0;
#define EX(r, c, ...) (snprintf(ex[n].name, sizeof ex[n].name, __VA_ARGS__), ex[n].rows = (r), \
                       ex[n].cols = (c), n++)
    EX(vocab, hidden, "model.embed_tokens.weight");
    EX(vocab, hidden, "lm_head.weight");
    EX(hidden, 0, "model.norm.weight");
    for (int64_t l = 0; l < layers; l++) {
        EX(heads * head_dim, hidden, "model.layers.%lld.self_attn.q_proj.weight", (long long)l);
        EX(kv * head_dim, hidden, "model.layers.%lld.self_attn.k_proj.weight", (long long)l);
        EX(kv * head_dim, hidden, "model.layers.%lld.self_attn.v_proj.weight", (long long)l);
        EX(hidden, heads * head_dim, "model.layers.%lld.self_attn.o_proj.weight", (long long)l);
        EX(inter, hidden, "model.layers.%lld.mlp.gate_proj.weight", (long long)l);
        EX(inter, hidden, "model.layers.%lld.mlp.up_proj.weight", (long long)l);
        EX(hidden, inter, "model.layers.%lld.mlp.down_proj.weight", (long long)l);
        EX(hidden, 0, "model.layers.%lld.input_layernorm.weight", (long long)l);
        EX(hidden, 0, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
    }
#undef EX
    return n;
}

static void test_safetensors__reads_hf_tiny_llama_shapes_and_bf16_values(void **state)
{
    (void)state;
    const char *path = LLAMA "/model.safetensors";
    REQUIRE_SHARED(path);
    REQUIRE_SHARED(LLAMA "/config.json");
    expect_t ex[32];
    size_t nex = llama_expected(ex);
    assert_int_equal(nex, 21);

    /* The header as the test reads it, for the offsets. */
    size_t flen;
    unsigned char *file = test_slurp(path, &flen);
    uint64_t hn = le64(file);
    json_error_t je;
    json_t *hdr = json_loadb((const char *)file + 8, (size_t)hn, 0, &je);
    assert_non_null(hdr);

    actl_st *st;
    assert_ok(actl_st_open(path, &st));
    assert_int_equal(actl_st_count(st), 21);
    assert_string_equal(actl_st_metadata(st, "format"), "pt");
    for (size_t i = 0; i < nex; i++) {
        const actl_tensor *t = actl_st_find(st, ex[i].name);
        if (!t)
            fail_msg("tensor '%s' not found", ex[i].name);
        assert_int_equal(actl_tensor_dtype(t), ACTL_BF16);
        assert_int_equal(actl_tensor_ndim(t), ex[i].cols ? 2 : 1);
        assert_int_equal(actl_tensor_shape(t)[0], ex[i].rows);
        if (ex[i].cols)
            assert_int_equal(actl_tensor_shape(t)[1], ex[i].cols);

        /* Raw bytes: the same as the file's at 8 + N + begin, read apart
         * from the mapping. */
        json_t *offs = json_object_get(json_object_get(hdr, ex[i].name), "data_offsets");
        uint64_t begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
        size_t nb = actl_tensor_nbytes(t);
        assert_int_equal((uint64_t)json_integer_value(json_array_get(offs, 1)) - begin, nb);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        unsigned char *raw = malloc(nb);
        assert_non_null(raw);
        assert_int_equal(fseek(f, (long)(8 + hn + begin), SEEK_SET), 0);
        assert_int_equal(fread(raw, 1, nb, f), nb);
        fclose(f);
        assert_memory_equal(actl_tensor_data(t), raw, nb);

        /* Values: the library's widening against the definition of BF16,
         * bit for bit, and not all zero (the model is random). */
        size_t n = (size_t)actl_tensor_numel(t);
        float *got = malloc(n * sizeof *got);
        assert_non_null(got);
        assert_ok(actl_tensor_to_f32(t, got));
        size_t nonzero = 0;
        for (size_t j = 0; j < n; j++) {
            uint16_t h = (uint16_t)(raw[2 * j] | raw[2 * j + 1] << 8);
            float want = bf16_decode(h);
            uint32_t wb, gb;
            memcpy(&wb, &want, 4);
            memcpy(&gb, &got[j], 4);
            if (isnan(want) ? !isnan(got[j]) : wb != gb)
                fail_msg("'%s'[%zu]: bf16 0x%04x decodes to %a, library gave %a", ex[i].name,
                         j, h, (double)want, (double)got[j]);
            nonzero += got[j] != 0.0f;
        }
        if (strstr(ex[i].name, "proj") || strstr(ex[i].name, "embed"))
            assert_true(nonzero > n / 2);
        free(got);
        free(raw);
    }
    /* Offset order, as the reader promises. */
    for (size_t i = 1; i < actl_st_count(st); i++)
        assert_true((const char *)actl_tensor_data(actl_st_tensor(st, i - 1)) <
                    (const char *)actl_tensor_data(actl_st_tensor(st, i)));
    actl_st_close(st);
    json_decref(hdr);
    free(file);
}

static void test_ckpt__opens_hf_tiny_llama_directory(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA "/model.safetensors");
    actl_ckpt *ck;
    assert_ok(actl_ckpt_open(LLAMA, &ck));
    assert_int_equal(actl_ckpt_count(ck), 21);
    assert_int_equal(actl_ckpt_shard_count(ck), 1);
    for (size_t i = 0; i < actl_ckpt_count(ck); i++) {
        assert_string_equal(actl_ckpt_shard_of(ck, i), "model.safetensors");
        if (i)
            assert_true(strcmp(actl_tensor_name(actl_ckpt_tensor(ck, i - 1)),
                               actl_tensor_name(actl_ckpt_tensor(ck, i))) < 0);
    }
    assert_string_equal(actl_tensor_name(actl_ckpt_tensor(ck, 0)), "lm_head.weight");
    assert_non_null(actl_ckpt_find(ck, "model.norm.weight"));
    actl_ckpt_close(ck);
}

/* ---- checkpoints -------------------------------------------------------- */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

/* Shard 1 holds a.weight and c.weight, shard 2 b.weight (plus `extra` when
 * given); the index is `index` (NULL: none). */
static char *make_sharded(const char *index, const char *extra)
{
    char *dir = test_tmpdir();
    static const int64_t s2[] = {2, 3}, s1[] = {4};
    actl_tensor *a = mk("a.weight", ACTL_F32, 2, s2), *b = mk("b.weight", ACTL_BF16, 1, s1),
                *c = mk("c.weight", ACTL_F16, 1, s1);
    actl_tensor *x = extra ? mk(extra, ACTL_U8, 1, s1) : NULL;
    char *p1 = test_join(dir, SHARD1), *p2 = test_join(dir, SHARD2);
    const actl_tensor *one[] = {c, a}, *two[] = {b, x};
    assert_ok(actl_st_write(p1, one, 2, NULL));
    assert_ok(actl_st_write(p2, two, x ? 2 : 1, NULL));
    if (index) {
        char *pi = test_join(dir, "model.safetensors.index.json");
        test_write_text(pi, index);
        free(pi);
    }
    actl_tensor_free(a);
    actl_tensor_free(b);
    actl_tensor_free(c);
    actl_tensor_free(x);
    free(p1);
    free(p2);
    return dir;
}

static const char good_index[] =
    "{\"metadata\": {\"total_size\": 48},\n"
    " \"weight_map\": {\"a.weight\": \"" SHARD1 "\", \"b.weight\": \"" SHARD2 "\",\n"
    "                \"c.weight\": \"" SHARD1 "\"}}\n";

static void test_ckpt__opens_sharded_checkpoint_by_dir_and_by_index(void **state)
{
    (void)state;
    char *dir = make_sharded(good_index, NULL);
    char *index = test_join(dir, "model.safetensors.index.json");
    const char *paths[] = {dir, index};
    for (int k = 0; k < 2; k++) {
        actl_ckpt *ck;
        assert_ok(actl_ckpt_open(paths[k], &ck));
        assert_int_equal(actl_ckpt_count(ck), 3);
        assert_int_equal(actl_ckpt_shard_count(ck), 2);
        static const char *const names[] = {"a.weight", "b.weight", "c.weight"};
        static const char *const shards[] = {SHARD1, SHARD2, SHARD1};
        for (size_t i = 0; i < 3; i++) {
            assert_string_equal(actl_tensor_name(actl_ckpt_tensor(ck, i)), names[i]);
            assert_string_equal(actl_ckpt_shard_of(ck, i), shards[i]);
            assert_ptr_equal(actl_ckpt_find(ck, names[i]), actl_ckpt_tensor(ck, i));
        }
        assert_null(actl_ckpt_tensor(ck, 3));
        assert_null(actl_ckpt_shard_of(ck, 3));
        assert_null(actl_ckpt_find(ck, "d.weight"));
        const actl_tensor *b = actl_ckpt_find(ck, "b.weight");
        assert_int_equal(actl_tensor_dtype(b), ACTL_BF16);
        /* mk's pattern for "b.weight" (8 chars, BF16 = 2): byte i is i*31 + 58. */
        for (size_t i = 0; i < actl_tensor_nbytes(b); i++)
            assert_int_equal(((const unsigned char *)actl_tensor_data(b))[i],
                             (unsigned char)(i * 31 + 58));
        actl_ckpt_close(ck);
    }
    actl_ckpt_close(NULL);
    test_rmtree(dir);
    free(index);
    free(dir);
}

static void test_ckpt__rejects_index_naming_tensor_missing_from_shard(void **state)
{
    (void)state;
    char *dir = make_sharded("{\"weight_map\": {\"a.weight\": \"" SHARD1 "\", \"b.weight\": \""
                             SHARD2 "\", \"c.weight\": \"" SHARD1 "\", \"d.weight\": \"" SHARD2
                             "\"}}",
                             NULL);
    actl_ckpt *ck;
    assert_err(actl_ckpt_open(dir, &ck), ACTL_ENOTFOUND,
               "tensor 'd.weight' is not in shard '" SHARD2 "', where the index puts it");
    assert_true(strstr(actl_errmsg(), "model.safetensors.index.json") != NULL);
    test_rmtree(dir);
    free(dir);
}

static void test_ckpt__rejects_shard_path_outside_directory(void **state)
{
    (void)state;
    static const char *const bad[] = {"../" SHARD1, "/tmp/" SHARD1, "sub/" SHARD1, "..", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char index[512];
        snprintf(index, sizeof index,
                 "{\"weight_map\": {\"a.weight\": \"%s\", \"b.weight\": \"" SHARD2
                 "\", \"c.weight\": \"" SHARD1 "\"}}",
                 bad[i]);
        char *dir = make_sharded(index, NULL);
        char want[256];
        snprintf(want, sizeof want, "tensor 'a.weight': shard '%s' is not a plain file name",
                 bad[i]);
        actl_ckpt *ck;
        assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT, want);
        assert_true(strstr(actl_errmsg(), "model.safetensors.index.json") != NULL);
        test_rmtree(dir);
        free(dir);
    }
}

static void test_ckpt__rejects_shard_tensor_missing_from_index(void **state)
{
    (void)state;
    char *dir = make_sharded(good_index, "stray.weight");
    actl_ckpt *ck;
    assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT,
               "shard '" SHARD2 "' holds tensor 'stray.weight', which the index does not list");
    test_rmtree(dir);
    free(dir);
}

static void test_ckpt__rejects_tensor_in_two_shards(void **state)
{
    (void)state;
    char *dir = make_sharded(good_index, "a.weight");
    actl_ckpt *ck;
    assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT,
               "tensor 'a.weight' is in shard '" SHARD2 "' as well as in shard '" SHARD1 "'");
    test_rmtree(dir);
    free(dir);
}

static void test_ckpt__rejects_directory_without_weights(void **state)
{
    (void)state;
    char *dir = make_sharded(NULL, NULL);
    actl_ckpt *ck;
    assert_err(actl_ckpt_open(dir, &ck), ACTL_ENOTFOUND,
               "neither model.safetensors nor model.safetensors.index.json");
    assert_true(strstr(actl_errmsg(), dir) != NULL);
    test_rmtree(dir);
    free(dir);
}

static void test_ckpt__rejects_missing_shard_and_bad_index(void **state)
{
    (void)state;
    char *dir = make_sharded(good_index, NULL);
    char *p2 = test_join(dir, SHARD2), *pi = test_join(dir, "model.safetensors.index.json");
    assert_int_equal(unlink(p2), 0);
    actl_ckpt *ck;
    assert_err(actl_ckpt_open(dir, &ck), ACTL_ENOTFOUND, "shard '" SHARD2 "': cannot open");

    test_write_text(pi, "{\"weight_map\": [\"a.weight\"]}");
    assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT, "no \"weight_map\" object");
    test_write_text(pi, "{\"weight_map\": {\"a.weight\": 1}}");
    assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT, "weight_map entry 'a.weight' is not a string");
    test_write_text(pi, "{\"weight_map\": {\"a.weight\": \"x\", \"a.weight\": \"y\"}}");
    assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT, "duplicate object key");
    test_write_text(pi, "{\"weight_map\": {}}");
    assert_err(actl_ckpt_open(dir, &ck), ACTL_EFORMAT, "\"weight_map\" is empty");
    /* A broken shard is reported as the reader reports it, under the index. */
    test_write_text(pi, "{\"weight_map\": {\"a\": \"trailing_bytes.safetensors\"}}");
    char *copy = test_join(dir, "trailing_bytes.safetensors");
    size_t len;
    unsigned char *bytes = test_slurp(BROKEN "trailing_bytes.safetensors", &len);
    FILE *f = fopen(copy, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    fclose(f);
    assert_err(actl_ckpt_open(pi, &ck), ACTL_EFORMAT, "trailing bytes");
    assert_true(strstr(actl_errmsg(), "shard 'trailing_bytes.safetensors'") != NULL);
    free(bytes);
    free(copy);
    test_rmtree(dir);
    free(p2);
    free(pi);
    free(dir);
}

static void test_ckpt__opens_single_file_by_dir_and_by_path(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *single = test_join(dir, "model.safetensors"), *other = test_join(dir, "weights.safetensors");
    static const int64_t s[] = {3};
    actl_tensor *t[2] = {mk("z.weight", ACTL_F32, 1, s), mk("y.weight", ACTL_F32, 1, s)};
    assert_ok(actl_st_write(single, (const actl_tensor *const *)t, 2, NULL));
    assert_ok(actl_st_write(other, (const actl_tensor *const *)t, 1, NULL));
    const char *paths[] = {dir, single};
    for (int k = 0; k < 2; k++) {
        actl_ckpt *ck;
        assert_ok(actl_ckpt_open(paths[k], &ck));
        assert_int_equal(actl_ckpt_count(ck), 2);
        assert_int_equal(actl_ckpt_shard_count(ck), 1);
        /* Sorted by name, not by offset. */
        assert_string_equal(actl_tensor_name(actl_ckpt_tensor(ck, 0)), "y.weight");
        assert_string_equal(actl_tensor_name(actl_ckpt_tensor(ck, 1)), "z.weight");
        assert_string_equal(actl_ckpt_shard_of(ck, 1), "model.safetensors");
        actl_ckpt_close(ck);
    }
    actl_ckpt *ck;
    assert_ok(actl_ckpt_open(other, &ck));
    assert_int_equal(actl_ckpt_count(ck), 1);
    assert_string_equal(actl_ckpt_shard_of(ck, 0), "weights.safetensors");
    actl_ckpt_close(ck);
    char *missing = test_join(dir, "nope.safetensors");
    assert_err(actl_ckpt_open(missing, &ck), ACTL_ENOTFOUND, "nope.safetensors");
    free(missing);
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    test_rmtree(dir);
    free(single);
    free(other);
    free(dir);
}

/* A FIFO planted where a file should be is refused at once, not waited on. */
static void test_safetensors__refuses_a_fifo_without_blocking(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "model.safetensors");
    assert_int_equal(mkfifo(path, 0600), 0);
    actl_st *st = NULL;
    assert_err(actl_st_open(path, &st), ACTL_EFORMAT, "is not a regular file");
    assert_null(st);
    char *data = NULL;
    size_t len;
    assert_err(actl__read_file(path, 100, &data, &len), ACTL_EFORMAT, "is not a regular file");
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* Written files get 0666 less the umask, like any file a program creates. */
static void test_safetensors__written_file_mode_follows_the_umask(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *path = test_join(dir, "m.safetensors");
    mode_t masks[2] = {022, 077}, want[2] = {0644, 0600};
    for (int i = 0; i < 2; i++) {
        mode_t old = umask(masks[i]);
        assert_ok(actl_st_write(path, NULL, 0, NULL));
        umask(old);
        struct stat sb;
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, want[i]);
    }
    test_rmtree(dir);
    free(path);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors__rejects_truncated_file),
        cmocka_unit_test(test_safetensors__rejects_header_past_end),
        cmocka_unit_test(test_safetensors__rejects_header_over_limit),
        cmocka_unit_test(test_safetensors__rejects_nul_padding),
        cmocka_unit_test(test_safetensors__rejects_bad_json),
        cmocka_unit_test(test_safetensors__rejects_header_that_is_not_an_object),
        cmocka_unit_test(test_safetensors__rejects_bad_utf8),
        cmocka_unit_test(test_safetensors__rejects_duplicate_key),
        cmocka_unit_test(test_safetensors__rejects_leading_whitespace),
        cmocka_unit_test(test_safetensors__rejects_empty_tensor_name),
        cmocka_unit_test(test_safetensors__rejects_entry_that_is_not_an_object),
        cmocka_unit_test(test_safetensors__rejects_missing_field),
        cmocka_unit_test(test_safetensors__rejects_extra_field),
        cmocka_unit_test(test_safetensors__rejects_dtype_that_is_not_a_string),
        cmocka_unit_test(test_safetensors__rejects_unknown_dtype),
        cmocka_unit_test(test_safetensors__rejects_unsupported_dtype),
        cmocka_unit_test(test_safetensors__rejects_negative_shape),
        cmocka_unit_test(test_safetensors__rejects_too_many_dims),
        cmocka_unit_test(test_safetensors__rejects_shape_overflow),
        cmocka_unit_test(test_safetensors__rejects_non_integer_offsets),
        cmocka_unit_test(test_safetensors__rejects_reversed_offsets),
        cmocka_unit_test(test_safetensors__rejects_length_mismatch),
        cmocka_unit_test(test_safetensors__rejects_overlapping_ranges),
        cmocka_unit_test(test_safetensors__rejects_hole_between_ranges),
        cmocka_unit_test(test_safetensors__rejects_trailing_bytes),
        cmocka_unit_test(test_safetensors__rejects_missing_bytes),
        cmocka_unit_test(test_safetensors__rejects_non_string_metadata),
        cmocka_unit_test(test_safetensors__rejects_metadata_that_is_not_an_object),
        cmocka_unit_test(test_safetensors__reads_valid_control_file),
        cmocka_unit_test(test_safetensors__missing_file_is_not_found),
        cmocka_unit_test(test_safetensors__round_trips_every_dtype_scalars_and_empty_tensors),
        cmocka_unit_test(test_safetensors__writes_and_reads_file_with_no_tensors),
        cmocka_unit_test(test_safetensors__pads_header_with_spaces_to_multiple_of_8),
        cmocka_unit_test(test_safetensors__writer_rejects_duplicate_and_reserved_names),
        cmocka_unit_test(test_safetensors__write_replaces_file_whole_and_leaves_no_temporaries),
        cmocka_unit_test(test_safetensors__finds_each_of_10000_tensors_by_name),
        cmocka_unit_test(test_safetensors__refuses_a_fifo_without_blocking),
        cmocka_unit_test(test_safetensors__written_file_mode_follows_the_umask),
        cmocka_unit_test(test_safetensors__rejects_more_than_a_million_tensors),
        cmocka_unit_test(test_safetensors__reads_hf_tiny_llama_shapes_and_bf16_values),
        cmocka_unit_test(test_ckpt__opens_hf_tiny_llama_directory),
        cmocka_unit_test(test_ckpt__opens_sharded_checkpoint_by_dir_and_by_index),
        cmocka_unit_test(test_ckpt__rejects_index_naming_tensor_missing_from_shard),
        cmocka_unit_test(test_ckpt__rejects_shard_path_outside_directory),
        cmocka_unit_test(test_ckpt__rejects_shard_tensor_missing_from_index),
        cmocka_unit_test(test_ckpt__rejects_tensor_in_two_shards),
        cmocka_unit_test(test_ckpt__rejects_directory_without_weights),
        cmocka_unit_test(test_ckpt__rejects_missing_shard_and_bad_index),
        cmocka_unit_test(test_ckpt__opens_single_file_by_dir_and_by_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
