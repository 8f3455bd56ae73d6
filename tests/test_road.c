/* test_road.c: RoAd pair arithmetic (lib/road.c) against hand-written
 * indices, dense matrices built in the test, and identities. */
#include <math.h>

#include "testutil.h"
#include "internal.h"

#define MOD "model.layers.0.self_attn.q_proj"

/* A one-module RoAd adapter with `len` theta/alpha values. */
static actl_adapter *road(const char *variant, int group, int64_t len, const double *theta,
                          const double *alpha)
{
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"ROAD\", \"variant\": \"%s\", \"group_size\": %d, "
             "\"target_modules\": [\"q_proj\"]}", variant, group);
    float *th = malloc((size_t)len * sizeof *th), *al = malloc((size_t)len * sizeof *al);
    for (int64_t i = 0; i < len; i++) {
        th[i] = (float)theta[i];
        al[i] = (float)alpha[i];
    }
    actl_tensor *t[2];
    assert_ok(actl_tensor_new("base_model.model." MOD ".road_alpha", ACTL_F32, 1, &len, al, &t[0]));
    assert_ok(actl_tensor_new("base_model.model." MOD ".road_theta", ACTL_F32, 1, &len, th, &t[1]));
    actl_adapter *a = NULL;
    assert_ok(actl_adapter_new(cfg, (const actl_tensor *const *)t, 2, "road-test", &a));
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    free(th);
    free(al);
    return a;
}

static const actl__module *only_module(const actl_adapter *a)
{
    const actl__module *m = actl__adapter_module_find(a, MOD);
    assert_non_null(m);
    return m;
}

/* Parameters as float rounds them, so expectations use the stored values. */
static double f(double v) { return (double)(float)v; }

static void test_coeffs__road_1_shares_one_parameter_per_pair(void **state)
{
    (void)state;
    /* g = 4, out = 8: groups {0..3}, {4..7}; pairs (0,2) (1,3) (4,6) (5,7);
     * road_1 parameter index t per output, by hand: */
    static const int t[8] = {0, 1, 0, 1, 2, 3, 2, 3};
    const double th[4] = {0.1, -0.7, 1.3, 2.9}, al[4] = {1.0, 0.5, 1.5, 2.0};
    actl_adapter *a = road("road_1", 4, 4, th, al);
    const actl__module *m = only_module(a);
    assert_int_equal(actl__road_out(a, m), 8);
    double c[8], s[8];
    assert_ok(actl__road_coeffs(a, m, 1.0, c, s));
    for (int p = 0; p < 8; p++) {
        assert_float_equal(c[p], f(al[t[p]]) * cos(f(th[t[p]])), 1e-15);
        assert_float_equal(s[p], f(al[t[p]]) * sin(f(th[t[p]])), 1e-15);
    }
    actl_adapter_free(a);
}

static void test_coeffs__road_4_separate_cosine_and_sine_parameters(void **state)
{
    (void)state;
    /* g = 4, out = 8, 16 parameters: per group k the cosine part uses 8k + o,
     * the sine part 8k + 4 + o (o = p mod 4), written out by hand: */
    static const int ic[8] = {0, 1, 2, 3, 8, 9, 10, 11};
    static const int is[8] = {4, 5, 6, 7, 12, 13, 14, 15};
    double th[16], al[16];
    for (int i = 0; i < 16; i++) {
        th[i] = 0.37 * i - 2.0;
        al[i] = 0.8 + 0.05 * i;
    }
    actl_adapter *a = road("road_4", 4, 16, th, al);
    const actl__module *m = only_module(a);
    assert_int_equal(actl__road_out(a, m), 8);
    double c[8], s[8];
    assert_ok(actl__road_coeffs(a, m, 1.0, c, s));
    for (int p = 0; p < 8; p++) {
        assert_float_equal(c[p], f(al[ic[p]]) * cos(f(th[ic[p]])), 1e-15);
        assert_float_equal(s[p], f(al[is[p]]) * sin(f(th[is[p]])), 1e-15);
    }
    actl_adapter_free(a);
}

static void test_coeffs__weight_scales_theta_and_powers_alpha(void **state)
{
    (void)state;
    const double th[8] = {0.1, 0.2, 0.3, 0.4, -0.5, -0.6, 0.7, 0.8};
    const double al[8] = {1.1, 0.9, 1.2, 0.8, 1.3, 0.7, 1.4, 0.6};
    actl_adapter *a = road("road_2", 4, 8, th, al);
    const actl__module *m = only_module(a);
    double c[8], s[8];
    assert_ok(actl__road_coeffs(a, m, 0.25, c, s));
    for (int p = 0; p < 8; p++) {
        assert_float_equal(c[p], pow(f(al[p]), 0.25) * cos(0.25 * f(th[p])), 1e-14);
        assert_float_equal(s[p], pow(f(al[p]), 0.25) * sin(0.25 * f(th[p])), 1e-14);
    }
    /* weight 0: the identity */
    assert_ok(actl__road_coeffs(a, m, 0.0, c, s));
    for (int p = 0; p < 8; p++) {
        assert_float_equal(c[p], 1.0, 0);
        assert_float_equal(s[p], 0.0, 0);
    }
    actl_adapter_free(a);
}

static void test_coeffs__negative_alpha_only_at_full_weight(void **state)
{
    (void)state;
    const double th[4] = {0.1, 0.2, 0.3, 0.4}, al[4] = {1.0, -0.5, 1.0, 1.0};
    actl_adapter *a = road("road_1", 4, 4, th, al);
    const actl__module *m = only_module(a);
    double c[8], s[8];
    assert_ok(actl__road_coeffs(a, m, 1.0, c, s));
    assert_float_equal(c[1], -0.5 * cos(f(0.2)), 1e-15);
    assert_err(actl__road_coeffs(a, m, 0.5, c, s), ACTL_EINVAL, "no real power");
    actl_adapter_free(a);
}

static void test_coeffs__group_that_does_not_divide_is_refused(void **state)
{
    (void)state;
    const double th[4] = {0}, al[4] = {1, 1, 1, 1};
    actl_adapter *a = road("road_2", 4, 4, th, al);
    actl__module *m = (actl__module *)only_module(a);
    double c[4], s[4];
    a->info.group_size = 6; /* as a config that passed no base check would say */
    assert_err(actl__road_coeffs(a, m, 1.0, c, s), ACTL_ESHAPE, "does not divide");
    a->info.group_size = 3; /* odd: no halves */
    assert_err(actl__road_coeffs(a, m, 1.0, c, s), ACTL_ESHAPE, "group size 3");
    actl_adapter_free(a);
}

/* The dense [out, out] matrix of coefficients, pairs listed by hand for g = 4, out = 8. */
static void dense(const double *c, const double *s, double R[8][8])
{
    static const int pairs[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};
    memset(R, 0, 64 * sizeof(double));
    for (int i = 0; i < 4; i++) {
        int p = pairs[i][0], q = pairs[i][1];
        R[p][p] = c[p];
        R[p][q] = -s[p];
        R[q][p] = s[q];
        R[q][q] = c[q];
    }
}

static void fill(double *c, double *s, double seed)
{
    for (int p = 0; p < 8; p++) {
        c[p] = cos(seed + 0.3 * p) * (1.0 + 0.1 * p);
        s[p] = sin(seed - 0.2 * p) * (0.9 + 0.05 * p);
    }
}

static void test_rotate__equals_dense_product(void **state)
{
    (void)state;
    double c[8], s[8], R[8][8];
    fill(c, s, 0.4);
    dense(c, s, R);
    enum { COLS = 5 };
    float x[8 * COLS];
    for (int i = 0; i < 8 * COLS; i++)
        x[i] = (float)(0.25 * i - 3.0);
    float y[8 * COLS];
    memcpy(y, x, sizeof x);
    actl__road_rotate_rows(c, s, 8, 4, y, COLS);
    for (int r = 0; r < 8; r++)
        for (int j = 0; j < COLS; j++) {
            double want = 0;
            for (int k = 0; k < 8; k++)
                want += R[r][k] * x[k * COLS + j];
            assert_float_equal(y[r * COLS + j], want, 1e-6 * (1 + fabs(want)));
        }
}

static void test_invert__undoes_the_rotation(void **state)
{
    (void)state;
    double c[8], s[8], R[8][8], Ri[8][8];
    fill(c, s, 1.1);
    dense(c, s, R);
    assert_ok(actl__road_invert(c, s, 8, 4, "'x' module 'q'"));
    dense(c, s, Ri);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) {
            double v = 0;
            for (int k = 0; k < 8; k++)
                v += Ri[i][k] * R[k][j];
            assert_float_equal(v, i == j ? 1.0 : 0.0, 1e-12);
        }
}

static void test_invert__near_singular_pair_is_refused_untouched(void **state)
{
    (void)state;
    double c[8], s[8];
    fill(c, s, 0.2);
    /* pair (5, 7): c5 c7 + s5 s7 = 0 */
    c[5] = 1.0;
    s[5] = 1.0;
    c[7] = 1.0;
    s[7] = -1.0;
    double c0[8], s0[8];
    memcpy(c0, c, sizeof c);
    memcpy(s0, s, sizeof s);
    assert_err(actl__road_invert(c, s, 8, 4, "'lora@1'"), ACTL_EINVAL,
               "'lora@1': the rotation of outputs 5 and 7 is near-singular");
    assert_memory_equal(c, c0, sizeof c);
    assert_memory_equal(s, s0, sizeof s);
}

static void test_compose__is_b_times_a(void **state)
{
    (void)state;
    double cA[8], sA[8], cB[8], sB[8], c[8], s[8];
    double RA[8][8], RB[8][8], R[8][8];
    fill(cA, sA, 0.3);
    fill(cB, sB, -1.7);
    dense(cA, sA, RA);
    dense(cB, sB, RB);
    actl__road_compose(cA, sA, cB, sB, 8, 4, c, s);
    dense(c, s, R);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) {
            double v = 0;
            for (int k = 0; k < 8; k++)
                v += RB[i][k] * RA[k][j];
            assert_float_equal(R[i][j], v, 1e-12);
        }
    /* in place over A gives the same */
    actl__road_compose(cA, sA, cB, sB, 8, 4, cA, sA);
    assert_memory_equal(cA, c, sizeof c);
    assert_memory_equal(sA, s, sizeof s);
}

static void test_compose__road_1_half_weight_twice_is_full_weight(void **state)
{
    (void)state;
    const double th[4] = {0.3, -1.2, 2.2, 0.05}, al[4] = {1.3, 0.6, 1.0, 2.5};
    actl_adapter *a = road("road_1", 4, 4, th, al);
    const actl__module *m = only_module(a);
    double ch[8], sh[8], c1[8], s1[8], c[8], s[8];
    assert_ok(actl__road_coeffs(a, m, 0.5, ch, sh));
    assert_ok(actl__road_coeffs(a, m, 1.0, c1, s1));
    actl__road_compose(ch, sh, ch, sh, 8, 4, c, s);
    for (int p = 0; p < 8; p++) {
        assert_float_equal(c[p], c1[p], 1e-12);
        assert_float_equal(s[p], s1[p], 1e-12);
    }
    actl_adapter_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coeffs__road_1_shares_one_parameter_per_pair),
        cmocka_unit_test(test_coeffs__road_4_separate_cosine_and_sine_parameters),
        cmocka_unit_test(test_coeffs__weight_scales_theta_and_powers_alpha),
        cmocka_unit_test(test_coeffs__negative_alpha_only_at_full_weight),
        cmocka_unit_test(test_coeffs__group_that_does_not_divide_is_refused),
        cmocka_unit_test(test_rotate__equals_dense_product),
        cmocka_unit_test(test_invert__undoes_the_rotation),
        cmocka_unit_test(test_invert__near_singular_pair_is_refused_untouched),
        cmocka_unit_test(test_compose__is_b_times_a),
        cmocka_unit_test(test_compose__road_1_half_weight_twice_is_full_weight),
    };
    return cmocka_run_group_tests_name("road", tests, NULL, NULL);
}
