/* test_tensor.c: dtypes, the 16-bit conversions (exhaustively, against an
 * independent formula), tensor objects and the error spine. */
#include "testutil.h"
#include "internal.h"

#include <math.h>

/* Independent decode of an IEEE binary16 pattern by its definition:
 * (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * (m/1024). */
static double f16_formula(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -24);
    else
        v = ldexp(1.0 + m / 1024.0, e - 15);
    return s ? -v : v;
}

/* bfloat16: 8 exponent bits (bias 127), 7 mantissa bits. */
static double bf16_formula(uint16_t h)
{
    int s = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -133);
    else
        v = ldexp(1.0 + m / 128.0, e - 127);
    return s ? -v : v;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static void test_tensor__f16_decodes_all_patterns_by_formula(void **state)
{
    (void)state;
    static uint16_t src[65536];
    static float dst[65536];
    for (int i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    actl_f16_to_f32(src, dst, 65536);
    for (int i = 0; i < 65536; i++) {
        double want = f16_formula((uint16_t)i);
        if (isnan(want)) {
            if (!isnan(dst[i]) || !!signbit(dst[i]) != (i >> 15))
                fail_msg("f16 %04x: want NaN with sign %d, got %a", i, i >> 15, dst[i]);
        } else if ((double)dst[i] != want || !!signbit(dst[i]) != !!signbit(want)) {
            fail_msg("f16 %04x: want %a, got %a", i, want, dst[i]);
        }
    }
}

static void test_tensor__bf16_decodes_all_patterns_by_formula(void **state)
{
    (void)state;
    static uint16_t src[65536];
    static float dst[65536];
    for (int i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    actl_bf16_to_f32(src, dst, 65536);
    for (int i = 0; i < 65536; i++) {
        double want = bf16_formula((uint16_t)i);
        if (isnan(want)) {
            if (!isnan(dst[i]) || !!signbit(dst[i]) != (i >> 15))
                fail_msg("bf16 %04x: want NaN, got %a", i, dst[i]);
        } else if ((double)dst[i] != want || !!signbit(dst[i]) != !!signbit(want)) {
            fail_msg("bf16 %04x: want %a, got %a", i, want, dst[i]);
        }
    }
}

typedef double (*decode_fn)(uint16_t);
typedef void (*narrow_fn)(const float *, uint16_t *, size_t);

/* For every finite non-negative pattern p with successor q = p + 1 (both
 * finite), encoding must round-trip p, map the exact midpoint to whichever of
 * p, q has an even mantissa, and map values just off the midpoint to the
 * nearer one. Beyond the largest finite value, the midpoint to the next
 * power of two and above goes to Inf. Mirrored for negative values. */
static void check_narrowing(decode_fn decode, narrow_fn narrow, uint16_t inf, const char *what)
{
    for (uint32_t p = 0; p < inf; p++) {
        for (int neg = 0; neg < 2; neg++) {
            uint16_t sign = neg ? 0x8000 : 0;
            double vp = decode((uint16_t)p), vq;
            if (p + 1 < inf)
                vq = decode((uint16_t)(p + 1));
            else /* the next step above the largest finite value */
                vq = vp + (vp - decode((uint16_t)(p - 1)));
            double mid = (vp + vq) / 2; /* exact in double, and in float */
            float in[4] = {(float)vp, (float)mid, nextafterf((float)mid, -INFINITY),
                           nextafterf((float)mid, INFINITY)};
            uint16_t out[4];
            if (neg)
                for (int k = 0; k < 4; k++)
                    in[k] = -in[k];
            narrow(in, out, 4);
            uint16_t even = (p & 1) ? (uint16_t)(p + 1) : (uint16_t)p;
            uint16_t want[4] = {(uint16_t)p, even, (uint16_t)p, (uint16_t)(p + 1)};
            /* Between 0 and the first step, nextafter(mid, -inf) may be exactly p's value
             * when mid is tiny; it still rounds to p, which is what want says. */
            for (int k = 0; k < 4; k++) {
                uint16_t w = (uint16_t)(want[k] | sign);
                if ((double)mid == vp && k > 0)
                    continue; /* no representable midpoint (cannot happen, kept safe) */
                if (out[k] != w)
                    fail_msg("%s: %a (case %d near pattern %04x) gave %04x, want %04x", what,
                             (double)in[k], k, (unsigned)p, out[k], w);
            }
        }
    }
}

static void test_tensor__f16_narrowing_rounds_to_nearest_even_exhaustively(void **state)
{
    (void)state;
    check_narrowing(f16_formula, actl_f32_to_f16, 0x7c00, "f16");
}

static void test_tensor__bf16_narrowing_rounds_to_nearest_even_exhaustively(void **state)
{
    (void)state;
    check_narrowing(bf16_formula, actl_f32_to_bf16, 0x7f80, "bf16");
}

static void test_tensor__narrowing_keeps_inf_and_nan(void **state)
{
    (void)state;
    float in[6] = {INFINITY, -INFINITY, NAN, -NAN, 1e10f, -1e10f};
    uint16_t h[6], b[6];
    actl_f32_to_f16(in, h, 6);
    actl_f32_to_bf16(in, b, 6);
    assert_int_equal(h[0], 0x7c00);
    assert_int_equal(h[1], 0xfc00);
    assert_true((h[2] & 0x7c00) == 0x7c00 && (h[2] & 0x3ff) != 0 && !(h[2] & 0x8000));
    assert_true((h[3] & 0x7c00) == 0x7c00 && (h[3] & 0x3ff) != 0 && (h[3] & 0x8000));
    assert_int_equal(h[4], 0x7c00); /* beyond 65504: Inf */
    assert_int_equal(h[5], 0xfc00);
    assert_int_equal(b[0], 0x7f80);
    assert_int_equal(b[1], 0xff80);
    assert_true((b[2] & 0x7f80) == 0x7f80 && (b[2] & 0x7f) != 0);
    assert_true((b[3] & 0x7f80) == 0x7f80 && (b[3] & 0x7f) != 0 && (b[3] & 0x8000));
    /* A signalling NaN whose payload lives only in the low 16 bits must not
     * turn into Inf when narrowed to bfloat16. */
    uint32_t snan = 0x7f800001u;
    float f;
    memcpy(&f, &snan, 4);
    actl_f32_to_bf16(&f, b, 1);
    assert_true((b[0] & 0x7f80) == 0x7f80 && (b[0] & 0x7f) != 0);
    actl_f32_to_f16(&f, h, 1);
    assert_true((h[0] & 0x7c00) == 0x7c00 && (h[0] & 0x3ff) != 0);
    /* FLT_MAX rounds to bf16 Inf (it is above the last midpoint). */
    float big = 3.4028235e38f;
    actl_f32_to_bf16(&big, b, 1);
    assert_int_equal(b[0], 0x7f80);
}

static void test_tensor__widening_then_narrowing_is_identity(void **state)
{
    (void)state;
    static uint16_t src[65536], back[65536];
    static float mid[65536];
    for (int i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    actl_f16_to_f32(src, mid, 65536);
    actl_f32_to_f16(mid, back, 65536);
    for (int i = 0; i < 65536; i++)
        if ((i & 0x7c00) != 0x7c00 || (i & 0x3ff) == 0)
            assert_int_equal(back[i], i);
        else
            assert_int_equal(back[i], i | 0x200); /* NaN made quiet */
    actl_bf16_to_f32(src, mid, 65536);
    actl_f32_to_bf16(mid, back, 65536);
    for (int i = 0; i < 65536; i++)
        if ((i & 0x7f80) != 0x7f80 || (i & 0x7f) == 0)
            assert_int_equal(back[i], i);
        else
            assert_int_equal(back[i], i | 0x40);
    (void)bits_of;
}

static void test_tensor__dtype_names_parse_and_refuse_by_name(void **state)
{
    (void)state;
    const char *names[] = {"F32", "F16", "BF16", "I32", "I64", "U8", "BOOL", "F64"};
    size_t sizes[] = {4, 2, 2, 4, 8, 1, 1, 8};
    for (int i = 0; i < 8; i++) {
        actl_dtype dt;
        assert_ok(actl_dtype_parse(names[i], &dt));
        assert_int_equal(dt, i);
        assert_string_equal(actl_dtype_name(dt), names[i]);
        assert_int_equal(actl_dtype_size(dt), sizes[i]);
    }
    actl_dtype dt;
    assert_err(actl_dtype_parse("F8_E4M3", &dt), ACTL_EUNSUPPORTED, "'F8_E4M3' is not supported");
    assert_err(actl_dtype_parse("I16", &dt), ACTL_EUNSUPPORTED, "'I16'");
    assert_err(actl_dtype_parse("f32", &dt), ACTL_EFORMAT, "unknown dtype 'f32'");
    assert_err(actl_dtype_parse(NULL, &dt), ACTL_EINVAL, "NULL");
    assert_null(actl_dtype_name((actl_dtype)99));
    assert_int_equal(actl_dtype_size((actl_dtype)-1), 0);
}

static void test_tensor__new_copies_and_reports_shape(void **state)
{
    (void)state;
    float data[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    actl_tensor *t = NULL, *c = NULL;
    assert_ok(actl_tensor_new("w", ACTL_F32, 2, shape, data, &t));
    data[0] = 99;
    assert_string_equal(actl_tensor_name(t), "w");
    assert_int_equal(actl_tensor_ndim(t), 2);
    assert_int_equal(actl_tensor_shape(t)[1], 3);
    assert_int_equal(actl_tensor_numel(t), 6);
    assert_int_equal(actl_tensor_nbytes(t), 24);
    assert_true(((const float *)actl_tensor_data(t))[0] == 1.0f);
    assert_ok(actl_tensor_copy(t, "w2", &c));
    assert_string_equal(actl_tensor_name(c), "w2");
    assert_memory_equal(actl_tensor_data(c), actl_tensor_data(t), 24);
    char buf[64];
    assert_string_equal(actl__shape_str(t, buf, sizeof buf), "[2, 3]");
    actl_tensor_free(t);
    actl_tensor_free(c);
    actl_tensor_free(NULL);

    /* Scalars and empty tensors are valid; data NULL gives zeros. */
    assert_ok(actl_tensor_new("s", ACTL_I64, 0, NULL, NULL, &t));
    assert_int_equal(actl_tensor_numel(t), 1);
    assert_int_equal(*(const int64_t *)actl_tensor_data(t), 0);
    actl_tensor_free(t);
    int64_t zero[2] = {0, 5};
    assert_ok(actl_tensor_new("e", ACTL_BF16, 2, zero, NULL, &t));
    assert_int_equal(actl_tensor_nbytes(t), 0);
    actl_tensor_free(t);
}

static void test_tensor__new_rejects_bad_shapes(void **state)
{
    (void)state;
    actl_tensor *t = NULL;
    int64_t neg[1] = {-1}, huge[3] = {INT64_MAX / 2, 4, 1}, nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    assert_err(actl_tensor_new("n", ACTL_F32, 1, neg, NULL, &t), ACTL_EINVAL, "tensor 'n': negative");
    assert_err(actl_tensor_new("h", ACTL_F32, 3, huge, NULL, &t), ACTL_ELIMIT, "tensor 'h'");
    assert_err(actl_tensor_new("d", ACTL_F32, 9, nine, NULL, &t), ACTL_EINVAL, "9 dimensions");
    assert_err(actl_tensor_new("x", (actl_dtype)42, 1, nine, NULL, &t), ACTL_EINVAL, "invalid dtype");
    assert_null(t);
}

static void test_tensor__to_f32_widens_every_float_dtype(void **state)
{
    (void)state;
    int64_t shape[1] = {3};
    uint16_t h[3] = {0x3c00, 0xc000, 0x0001};     /* 1, -2, 2^-24 */
    uint16_t b[3] = {0x3f80, 0xc000, 0x0001};     /* 1, -2, 2^-133 */
    double d[3] = {1.5, -0.25, 1e300};
    int32_t i[3] = {1, 2, 3};
    float out[3];
    actl_tensor *t;
    assert_ok(actl_tensor_new("h", ACTL_F16, 1, shape, h, &t));
    assert_ok(actl_tensor_to_f32(t, out));
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == ldexpf(1, -24));
    actl_tensor_free(t);
    assert_ok(actl_tensor_new("b", ACTL_BF16, 1, shape, b, &t));
    assert_ok(actl_tensor_to_f32(t, out));
    assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == ldexpf(1, -133));
    actl_tensor_free(t);
    assert_ok(actl_tensor_new("d", ACTL_F64, 1, shape, d, &t));
    assert_ok(actl_tensor_to_f32(t, out));
    assert_true(out[0] == 1.5f && out[1] == -0.25f && isinf(out[2]));
    actl_tensor_free(t);
    assert_ok(actl_tensor_new("i", ACTL_I32, 1, shape, i, &t));
    assert_err(actl_tensor_to_f32(t, out), ACTL_EUNSUPPORTED, "tensor 'i': I32 is not a floating-point");
    actl_tensor_free(t);
}

static void test_error__codes_have_fixed_texts(void **state)
{
    (void)state;
    for (int c = ACTL_OK; c <= ACTL_ECORRUPT; c++)
        assert_string_not_equal(actl_strerror(c), "unknown error");
    assert_string_equal(actl_strerror(1000), "unknown error");
    assert_string_equal(actl_version(), ACTL_VERSION_STRING);
}

static void test_error__wrap_prefixes_and_never_overflows(void **state)
{
    (void)state;
    actl__err(ACTL_EIO, "inner %d", 7);
    assert_int_equal(actl__err_wrap(ACTL_EIO, "outer '%s'", "f"), ACTL_EIO);
    assert_string_equal(actl_errmsg(), "outer 'f': inner 7");
    char big[3000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    actl__err(ACTL_EIO, "%s", big);
    actl__err_wrap(ACTL_EIO, "%s", big);
    assert_true(strlen(actl_errmsg()) < 2048);
    actl__err_clear();
    assert_string_equal(actl_errmsg(), "");
}

static void check_dump(const char *json, int indent, const char *want)
{
    json_t *v = NULL;
    assert_ok(actl__json_parse(json, strlen(json), "test", &v));
    char *got = actl__json_dump(v, indent);
    assert_non_null(got);
    if (strcmp(got, want) != 0)
        fail_msg("dump of %s:\n got: %s\nwant: %s", json, got, want);
    free(got);
    json_decref(v);
}

/* Expected strings are what Python 3 prints for
 * json.dumps(json.loads(s), indent=2, sort_keys=True). */
static void test_json__dump_matches_python_json_dumps(void **state)
{
    (void)state;
    check_dump("{\"r\": 8, \"a\": [1, 2.5, \"x\"], \"e\": {}, \"l\": [], \"n\": null, \"t\": true}", 2,
               "{\n  \"a\": [\n    1,\n    2.5,\n    \"x\"\n  ],\n  \"e\": {},\n  \"l\": [],\n"
               "  \"n\": null,\n  \"r\": 8,\n  \"t\": true\n}");
    check_dump("[0.05, 1e-05, 16.0, 0.0001, 1e16, 1e+22, 123456789012345680.0, -0.5, 1.5e-07, 0.1]", -1,
               "[0.05,1e-05,16.0,0.0001,1e+16,1e+22,1.2345678901234568e+17,-0.5,1.5e-07,0.1]");
    check_dump("{\"s\": \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\n\\t\\u0001\\u007f\"}", -1,
               "{\"s\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\n\\t\\u0001\\u007f\"}");
    check_dump("{\"b\": 1, \"a\": {\"d\": false, \"c\": 2}}", -1, "{\"a\":{\"c\":2,\"d\":false},\"b\":1}");
}

static void test_json__dump_keep_preserves_order_under_named_keys(void **state)
{
    (void)state;
    const char *text = "{\"z\": {\"b\": 1, \"a\": 2}, \"p\": {\"b\": 1, \"a\": 2}}";
    json_t *v = NULL;
    assert_ok(actl__json_parse(text, strlen(text), "test", &v));
    const char *const keep[] = {"p", NULL};
    char *got = actl__json_dump_keep(v, -1, keep);
    assert_string_equal(got, "{\"p\":{\"b\":1,\"a\":2},\"z\":{\"a\":2,\"b\":1}}");
    free(got);
    json_decref(v);
}

static void test_json__parse_rejects_duplicates_depth_and_garbage(void **state)
{
    (void)state;
    json_t *v = NULL;
    assert_err(actl__json_parse("{\"a\":1,\"a\":2}", 13, "cfg.json", &v), ACTL_EFORMAT,
               "cfg.json: invalid JSON");
    assert_err(actl__json_parse("{\"a\":", 5, "cfg.json", &v), ACTL_EFORMAT, "line 1");
    assert_err(actl__json_parse("\"\xff\"", 3, "cfg.json", &v), ACTL_EFORMAT, "cfg.json");
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    assert_err(actl__json_parse(deep, 200, "deep.json", &v), ACTL_ELIMIT, "deeper than 64");
    assert_null(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor__f16_decodes_all_patterns_by_formula),
        cmocka_unit_test(test_tensor__bf16_decodes_all_patterns_by_formula),
        cmocka_unit_test(test_tensor__f16_narrowing_rounds_to_nearest_even_exhaustively),
        cmocka_unit_test(test_tensor__bf16_narrowing_rounds_to_nearest_even_exhaustively),
        cmocka_unit_test(test_tensor__narrowing_keeps_inf_and_nan),
        cmocka_unit_test(test_tensor__widening_then_narrowing_is_identity),
        cmocka_unit_test(test_tensor__dtype_names_parse_and_refuse_by_name),
        cmocka_unit_test(test_tensor__new_copies_and_reports_shape),
        cmocka_unit_test(test_tensor__new_rejects_bad_shapes),
        cmocka_unit_test(test_tensor__to_f32_widens_every_float_dtype),
        cmocka_unit_test(test_error__codes_have_fixed_texts),
        cmocka_unit_test(test_error__wrap_prefixes_and_never_overflows),
        cmocka_unit_test(test_json__dump_matches_python_json_dumps),
        cmocka_unit_test(test_json__dump_keep_preserves_order_under_named_keys),
        cmocka_unit_test(test_json__parse_rejects_duplicates_depth_and_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
