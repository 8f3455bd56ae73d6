/* test_sample.c: the sampler (lib/sample.c) against llama2.c's generator
 * values computed outside (python3, 64-bit arithmetic) and distributions
 * worked out by hand in the test. */
#include <math.h>

#include "testutil.h"
#include "internal.h"

/* A second, plain xorshift* written from the published algorithm, to draw
 * the coins the sampler is expected to see. */
static float coin_of(uint64_t state)
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    uint32_t u = (uint32_t)((state * 0x2545F4914F6CDD1DULL) >> 32);
    return (float)(u >> 8) / 16777216.0f;
}

static void test_rng__matches_llama2c_sequence(void **state)
{
    (void)state;
    /* python3: s ^= s>>12; s ^= (s<<25) & M; s ^= s>>27; ((s*0x2545F4914F6CDD1D) & M) >> 32 */
    static const uint32_t want[6] = {3033531262u, 2674377904u, 2312864567u,
                                     2287415643u, 1408443089u, 3731947629u};
    uint64_t s = 133742;
    for (int i = 0; i < 6; i++)
        assert_int_equal(actl__rng_u32(&s), want[i]);
    s = 1;
    assert_float_equal(actl__rng_f32(&s), 0.28083503246307373, 0);
    assert_float_equal(actl__rng_f32(&s), 0.6711372137069702, 0);
    assert_float_equal(actl__rng_f32(&s), 0.7258461117744446, 0);
}

static void test_sample__greedy_takes_first_largest(void **state)
{
    (void)state;
    const float l[6] = {-1.0f, 3.0f, 2.0f, 3.0f, 3.0f, -7.0f};
    void *scratch = malloc(actl__sample_scratch_size(6));
    uint64_t s = 5;
    assert_int_equal(actl__sample(l, 6, 0.0f, 0, 1.0f, &s, scratch), 1);
    /* greedy ignores top-k/top-p and draws nothing */
    assert_int_equal(actl__sample(l, 6, 0.0f, 2, 0.5f, &s, scratch), 1);
    assert_int_equal(s, 5);
    const float m[3] = {9.0f, 9.0f, 9.0f};
    assert_int_equal(actl__sample(m, 3, 0.0f, 0, 1.0f, &s, scratch), 0);
    free(scratch);
}

/* Draws with many seeds; want(coin) gives the expected index, or -1 where
 * the coin sits within float round-off of a boundary. counts[] tallies. */
static void check_draws(const float *logits, size_t n, float t, int k, float p,
                        int (*want)(double coin), int *counts)
{
    void *scratch = malloc(actl__sample_scratch_size(n));
    for (uint64_t seed = 1; seed <= 2000; seed++) {
        uint64_t s = seed * 0x9E3779B97F4A7C15ULL;
        double coin = coin_of(s);
        int32_t got = actl__sample(logits, n, t, k, p, &s, scratch);
        int w = want(coin);
        if (w >= 0 && got != w)
            fail_msg("seed %llu coin %.9f: got %d, want %d", (unsigned long long)seed, coin,
                     got, w);
        assert_true(got >= 0 && (size_t)got < n);
        counts[got]++;
    }
    free(scratch);
}

static int near(double a, double b) { return fabs(a - b) < 1e-5; }

/* p = {0.1, 0.2, 0.3, 0.4}: the cdf in index order */
static int want_mult(double c)
{
    if (near(c, 0.1) || near(c, 0.3) || near(c, 0.6))
        return -1;
    return c < 0.1 ? 0 : c < 0.3 ? 1 : c < 0.6 ? 2 : 3;
}

static void test_sample__multinomial_follows_the_cdf(void **state)
{
    (void)state;
    float l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    int counts[4] = {0};
    check_draws(l, 4, 1.0f, 0, 1.0f, want_mult, counts);
    for (int i = 0; i < 4; i++)
        assert_true(counts[i] > 0);
    /* top_p 0 means off as well */
    int c2[4] = {0};
    check_draws(l, 4, 1.0f, 0, 0.0f, want_mult, c2);
}

/* T = 0.5 squares the odds: p ∝ {1, 4, 9, 16} / 30 */
static int want_temp(double c)
{
    double a = 1.0 / 30, b = a + 4.0 / 30, d = b + 9.0 / 30;
    if (near(c, a) || near(c, b) || near(c, d))
        return -1;
    return c < a ? 0 : c < b ? 1 : c < d ? 2 : 3;
}

static void test_sample__temperature_divides_logits(void **state)
{
    (void)state;
    float l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    int counts[4] = {0};
    check_draws(l, 4, 0.5f, 0, 1.0f, want_temp, counts);
}

/* p = {0.05, 0.5, 0.15, 0.3}, top_p 0.7: sorted 0.5 (1), 0.3 (3): the sum
 * 0.8 passes 0.7, so the nucleus is {1, 3}, drawn with coin * 0.8 */
static int want_topp(double c)
{
    double r = c * 0.8;
    if (near(r, 0.5))
        return -1;
    return r < 0.5 ? 1 : 3;
}

static void test_sample__top_p_keeps_the_nucleus(void **state)
{
    (void)state;
    float l[4] = {logf(0.05f), logf(0.5f), logf(0.15f), logf(0.3f)};
    int counts[4] = {0};
    check_draws(l, 4, 1.0f, 0, 0.7f, want_topp, counts);
    assert_int_equal(counts[0], 0);
    assert_int_equal(counts[2], 0);
    assert_true(counts[1] > 0 && counts[3] > 0);
}

/* top-k 2 over {0.1, 0.2, 0.3, 0.4}: {3: 4/7, 2: 3/7} in that order */
static int want_topk(double c)
{
    if (near(c, 4.0 / 7))
        return -1;
    return c < 4.0 / 7 ? 3 : 2;
}

static void test_sample__top_k_renormalizes_the_k_largest(void **state)
{
    (void)state;
    float l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    int counts[4] = {0};
    check_draws(l, 4, 1.0f, 2, 1.0f, want_topk, counts);
    assert_int_equal(counts[0] + counts[1], 0);
    /* k >= n is no truncation */
    int c2[4] = {0};
    check_draws(l, 4, 1.0f, 4, 1.0f, want_mult, c2);
}

/* top-k 3 then top-p 0.7: {0.4, 0.3, 0.2} / 0.9; cumulative 4/9, 7/9 > 0.7:
 * nucleus {3, 2}, drawn with coin * 7/9 against 4/9 */
static int want_topk_topp(double c)
{
    double r = c * 7.0 / 9;
    if (near(r, 4.0 / 9))
        return -1;
    return r < 4.0 / 9 ? 3 : 2;
}

static void test_sample__top_k_then_top_p(void **state)
{
    (void)state;
    float l[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};
    int counts[4] = {0};
    check_draws(l, 4, 1.0f, 3, 0.7f, want_topk_topp, counts);
    assert_int_equal(counts[0] + counts[1], 0);
    assert_true(counts[2] > 0 && counts[3] > 0);
}

static void test_sample__top_k_ties_keep_lower_ids(void **state)
{
    (void)state;
    /* five equal logits: k = 2 keeps ids 0 and 1 */
    float l[5] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    void *scratch = malloc(actl__sample_scratch_size(5));
    for (uint64_t seed = 1; seed < 200; seed++) {
        uint64_t s = seed;
        int32_t got = actl__sample(l, 5, 1.0f, 2, 1.0f, &s, scratch);
        assert_true(got == 0 || got == 1);
    }
    free(scratch);
}

static void test_logprob__is_a_stable_log_softmax(void **state)
{
    (void)state;
    const float l[4] = {1000.0f, 999.0f, 997.5f, -3.0f};
    double mx = 1000.0, z = 0;
    for (int i = 0; i < 4; i++)
        z += exp((double)l[i] - mx);
    for (int i = 0; i < 4; i++)
        assert_float_equal(actl__logprob(l, 4, i), (double)l[i] - mx - log(z), 1e-6);
    /* the probabilities sum to one */
    double s = 0;
    for (int i = 0; i < 4; i++)
        s += exp(actl__logprob(l, 4, i));
    assert_float_equal(s, 1.0, 1e-6);
    assert_true(isinf(actl__logprob(l, 4, 4)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng__matches_llama2c_sequence),
        cmocka_unit_test(test_sample__greedy_takes_first_largest),
        cmocka_unit_test(test_sample__multinomial_follows_the_cdf),
        cmocka_unit_test(test_sample__temperature_divides_logits),
        cmocka_unit_test(test_sample__top_p_keeps_the_nucleus),
        cmocka_unit_test(test_sample__top_k_renormalizes_the_k_largest),
        cmocka_unit_test(test_sample__top_k_then_top_p),
        cmocka_unit_test(test_sample__top_k_ties_keep_lower_ids),
        cmocka_unit_test(test_logprob__is_a_stable_log_softmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
