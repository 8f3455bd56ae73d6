/*
 * sample.c: choosing the next token from logits, as llama2.c (run.c) does,
 * plus top-k, and the log-probability of a token.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* llama2.c's xorshift* generator (Marsaglia xorshift, then a multiply);
 * kept bit for bit so that a seed reproduces the reference's samples. */
uint32_t actl__rng_u32(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}

float actl__rng_f32(uint64_t *state)
{
    /* 24 random bits: every value exactly representable, strictly below 1 */
    return (float)(actl__rng_u32(state) >> 8) / 16777216.0f;
}

typedef struct prob_index {
    float prob;
    int32_t index;
} prob_index;

size_t actl__sample_scratch_size(size_t n)
{
    size_t floats = (n * sizeof(float) + sizeof(prob_index) - 1) / sizeof(prob_index);
    return (floats + n) * sizeof(prob_index);
}

/* llama2.c's order: larger probability first; equal ones left to qsort, as
 * there (glibc's qsort is a merge sort, so this is what the reference does). */
static int cmp_desc(const void *a, const void *b)
{
    const prob_index *x = a, *y = b;
    if (x->prob > y->prob)
        return -1;
    if (x->prob < y->prob)
        return 1;
    return 0;
}

/* Fully ordered for top-k: probability descending, then index ascending, so
 * that the k kept never depend on the selection's path. */
static bool before(const prob_index *x, const prob_index *y)
{
    return x->prob > y->prob || (x->prob == y->prob && x->index < y->index);
}

static int cmp_total(const void *a, const void *b)
{
    const prob_index *x = a, *y = b;
    return before(x, y) ? -1 : before(y, x) ? 1 : 0;
}

/* Min-heap on `before` (the root is the entry every other one comes before). */
static void heap_down(prob_index *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(&h[m], &h[l]))
            m = l;
        if (r < n && before(&h[m], &h[r]))
            m = r;
        if (m == i)
            return;
        prob_index t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* The k most probable of p[n] into pi[0..k), in order (O(n log k)). */
static size_t top_k(const float *p, size_t n, size_t k, prob_index *pi)
{
    if (k > n)
        k = n;
    for (size_t i = 0; i < k; i++)
        pi[i] = (prob_index){p[i], (int32_t)i};
    for (size_t i = k / 2; i-- > 0;)
        heap_down(pi, k, i);
    for (size_t i = k; i < n; i++) {
        prob_index c = {p[i], (int32_t)i};
        if (before(&c, &pi[0])) {
            pi[0] = c;
            heap_down(pi, k, 0);
        }
    }
    qsort(pi, k, sizeof *pi, cmp_total);
    return k;
}

/* Draws from the sorted candidates pi[0..n) (probabilities summing to
 * about `total`): llama2.c's sample_topp from its truncation on; with
 * topp off, the whole list. */
static int32_t draw_sorted(const prob_index *pi, size_t n, float topp, bool use_topp, float coin)
{
    float cumulative = 0.0f;
    size_t last = n - 1;
    for (size_t i = 0; i < n; i++) {
        cumulative += pi[i].prob;
        if (use_topp && cumulative > topp) {
            last = i;
            break;
        }
    }
    float r = coin * cumulative;
    float cdf = 0.0f;
    for (size_t i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf)
            return pi[i].index;
    }
    return pi[last].index;
}

int32_t actl__sample(const float *logits, size_t n, float temperature, int top_k_n, float top_p,
                     uint64_t *rng, void *scratch)
{
    if (n == 0)
        return 0;
    if (!(temperature > 0.0f)) {
        /* argmax: the first largest, as sample_argmax */
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (logits[i] > logits[best])
                best = i;
        return (int32_t)best;
    }
    float *p = scratch;
    size_t floats = (n * sizeof(float) + sizeof(prob_index) - 1) / sizeof(prob_index);
    prob_index *pi = (prob_index *)scratch + floats;

    /* softmax(logits / T) in float, in llama2.c's order of operations */
    for (size_t i = 0; i < n; i++)
        p[i] = logits[i] / temperature;
    float max = p[0];
    for (size_t i = 1; i < n; i++)
        if (p[i] > max)
            max = p[i];
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        p[i] = expf(p[i] - max);
        sum += p[i];
    }
    for (size_t i = 0; i < n; i++)
        p[i] /= sum;

    float coin = actl__rng_f32(rng);
    bool use_topp = top_p > 0.0f && top_p < 1.0f;

    if (top_k_n > 0 && (size_t)top_k_n < n) {
        size_t k = top_k(p, n, (size_t)top_k_n, pi);
        float kept = 0.0f;
        for (size_t i = 0; i < k; i++)
            kept += pi[i].prob;
        for (size_t i = 0; i < k; i++)
            pi[i].prob /= kept;
        return draw_sorted(pi, k, top_p, use_topp, coin);
    }
    if (!use_topp) {
        /* sample_mult: the cdf in index order */
        float cdf = 0.0f;
        for (size_t i = 0; i < n; i++) {
            cdf += p[i];
            if (coin < cdf)
                return (int32_t)i;
        }
        return (int32_t)(n - 1);
    }
    /* sample_topp: tokens below the cutoff cannot be in the nucleus (if
     * one were, the others would sum to more than top_p), so only the rest
     * are sorted */
    float cutoff = n > 1 ? (1.0f - top_p) / (float)(n - 1) : 0.0f;
    size_t n0 = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] >= cutoff)
            pi[n0++] = (prob_index){p[i], (int32_t)i};
    if (n0 == 0)
        return 0;
    qsort(pi, n0, sizeof *pi, cmp_desc);
    return draw_sorted(pi, n0, top_p, true, coin);
}

float actl__logprob(const float *logits, size_t n, int32_t i)
{
    if (n == 0 || i < 0 || (size_t)i >= n)
        return -INFINITY;
    double max = logits[0];
    for (size_t j = 1; j < n; j++)
        if (logits[j] > max)
            max = logits[j];
    /* expf per term (each within an ulp of float), summed in double: the
     * sum over a large vocabulary is where precision would be lost */
    double sum = 0.0;
    float fmax_ = (float)max;
    for (size_t j = 0; j < n; j++)
        sum += (double)expf(logits[j] - fmax_);
    return (float)((double)logits[i] - max - log(sum));
}
