/* test_mixed.c: a mixed-adapter batch equals each sequence run alone
 * (issue 6, acceptance 4; DESIGN.md 10).
 *
 * One batch on fixtures/base-tiny holds a sequence per adapter - LoRA (rank
 * and alpha patterns on all seven projections), DoRA, RoAd 1/2/4, bottleneck
 * series and parallel, MoS, a stack (RoAd over LoRA), none - plus two more
 * sequences sharing the LoRA's handle, each with its own prompt, generating
 * greedily for several steps. The independent computation: every sequence
 * alone in a batch of its own on the model with its adapter merged
 * (actl_merge into a temporary directory, actl_model_load of the result);
 * bottleneck adapters cannot merge, so they run alone on the base, unmerged.
 * At every step the logits must agree within 1e-4 and the tokens exactly;
 * and each adapter must change its sequence's logits (vs the same prompt on
 * the base) by more than 1e-3. */
#include "testutil.h"

#include <math.h>
#include <stdbool.h>

#define TINY FIXTURES "/base-tiny"
#define AD FIXTURES "/adapters/base-tiny/"
#define VOCAB 64
#define STEPS 6
#define MAXP 8

typedef struct spec {
    const char *label;
    const char *dirs[2]; /* members, innermost first */
    double w[2];
    int n;               /* 0: no adapter */
    bool mergeable;
} spec;

static const spec specs[] = {
    {"lora-patterns", {"lora-patterns"}, {1.0}, 1, true},
    {"lora-dora", {"lora-dora"}, {0.8}, 1, true},
    {"road-1", {"road-1"}, {1.0}, 1, true},
    {"road-2", {"road-2"}, {0.7}, 1, true},
    {"road-4", {"road-4"}, {1.0}, 1, true},
    {"bottleneck-series", {"bottleneck-series"}, {1.0}, 1, false},
    {"bottleneck-parallel", {"bottleneck-parallel"}, {1.0}, 1, false},
    {"mos", {"mos"}, {1.0}, 1, true},
    {"road-1 over lora", {"lora", "road-1"}, {1.0, 1.0}, 2, true},
    {"none", {NULL}, {0}, 0, false},
};
#define NSPEC (sizeof specs / sizeof specs[0])

/* One sequence of the batch: which spec, its prompt, and what it produced. */
typedef struct run {
    int spec;
    int32_t prompt[MAXP];
    size_t n_prompt;
    int32_t toks[STEPS];
    float logits[STEPS][VOCAB];
    size_t n;
} run;

/* Steps b until nothing runs, recording each sequence's logits and token
 * every time it produces one. */
static void drive(actl_batch *b, const int *seq, run *r, size_t n)
{
    int running = 1;
    for (int guard = 0; running && guard < 4 * STEPS; guard++) {
        assert_ok(actl_batch_step(b, &running));
        for (size_t i = 0; i < n; i++) {
            const int32_t *ids;
            const float *lp;
            size_t k = actl_batch_tokens(b, seq[i], &ids, &lp);
            if (k == r[i].n)
                continue;
            assert_int_equal(k, r[i].n + 1);
            assert_true(k <= STEPS);
            const float *lg = actl_batch_logits(b, seq[i]);
            assert_non_null(lg);
            memcpy(r[i].logits[k - 1], lg, sizeof r[i].logits[0]);
            r[i].toks[k - 1] = ids[k - 1];
            r[i].n = k;
        }
    }
    assert_int_equal(running, 0);
}

static actl_request request_of(const run *r, int handle)
{
    actl_request q = actl_request_default();
    q.prompt = r->prompt;
    q.n_prompt = r->n_prompt;
    q.adapter = handle;
    q.max_tokens = STEPS;
    return q;
}

/* r alone in a batch of its own on m, with in[0..n) as its adapter (n 0: none). */
static void run_alone(const actl_model *m, const actl_input *in, size_t n, run *r)
{
    actl_batch *b = NULL;
    actl_batch_opts o = actl_batch_default_opts();
    o.max_seqs = 1;
    o.max_ctx = 32;
    assert_ok(actl_batch_new(m, &o, &b));
    int h = 0, seq;
    if (n)
        assert_ok(actl_batch_adapter(b, in, n, &h));
    actl_request q = request_of(r, h);
    assert_ok(actl_batch_add(b, &q, &seq));
    r->n = 0;
    drive(b, &seq, r, 1);
    actl_batch_free(b);
}

static uint64_t lcg_state = 0x2545f4914f6cdd1dull;
static int32_t rand_id(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((lcg_state >> 33) % VOCAB);
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void test_mixed__batch_equals_each_sequence_alone_on_its_merged_model(void **state)
{
    (void)state;
    actl_model *base = NULL;
    assert_ok(actl_model_load(TINY, 0, &base));
    /* the adapters, loaded once; inputs per spec */
    actl_adapter *ad[NSPEC][2] = {{NULL}};
    actl_input in[NSPEC][2];
    memset(in, 0, sizeof in);
    for (size_t s = 0; s < NSPEC; s++)
        for (int k = 0; k < specs[s].n; k++) {
            char dir[256];
            snprintf(dir, sizeof dir, AD "%s", specs[s].dirs[k]);
            assert_ok(actl_adapter_load(dir, &ad[s][k]));
            in[s][k] = (actl_input){.adapter = ad[s][k], .weight = specs[s].w[k],
                                    .ref = specs[s].dirs[k]};
        }

    /* the mixed batch: one sequence per spec, then two more on spec 0's
     * handle; added in an order that is not the handles' */
    enum { NRUN = NSPEC + 2 };
    run runs[NRUN];
    memset(runs, 0, sizeof runs);
    for (size_t i = 0; i < NRUN; i++) {
        runs[i].spec = i < NSPEC ? (int)(NSPEC - 1 - i) : 0;
        runs[i].n_prompt = 1 + (i * 3) % MAXP;
        for (size_t k = 0; k < runs[i].n_prompt; k++)
            runs[i].prompt[k] = rand_id();
    }
    actl_batch *b = NULL;
    actl_batch_opts o = actl_batch_default_opts();
    o.max_seqs = NRUN;
    o.max_ctx = 32;
    o.threads = 2;
    assert_ok(actl_batch_new(base, &o, &b));
    int handle[NSPEC] = {0};
    for (size_t s = 0; s < NSPEC; s++)
        if (specs[s].n)
            assert_ok(actl_batch_adapter(b, in[s], (size_t)specs[s].n, &handle[s]));
    int seq[NRUN];
    for (size_t i = 0; i < NRUN; i++) {
        actl_request q = request_of(&runs[i], handle[runs[i].spec]);
        assert_ok(actl_batch_add(b, &q, &seq[i]));
    }
    drive(b, seq, runs, NRUN);
    actl_batch_free(b);

    char *tmp = test_tmpdir();
    double worst = 0, least = INFINITY;
    for (size_t i = 0; i < NRUN; i++) {
        const spec *sp = &specs[runs[i].spec];
        run alone = runs[i], plain = runs[i];
        if (sp->mergeable) {
            char out[4200];
            snprintf(out, sizeof out, "%s/merged-%zu", tmp, i);
            actl_merge_opts mo = actl_merge_default_opts();
            mo.threads = 1;
            assert_ok(actl_merge(TINY, out, in[runs[i].spec], (size_t)sp->n, &mo, NULL));
            actl_model *merged = NULL;
            assert_ok(actl_model_load(out, 0, &merged));
            run_alone(merged, NULL, 0, &alone);
            actl_model_free(merged);
        } else {
            run_alone(base, in[runs[i].spec], (size_t)sp->n, &alone);
        }
        run_alone(base, NULL, 0, &plain);
        assert_int_equal(runs[i].n, STEPS);
        assert_int_equal(alone.n, STEPS);
        for (size_t k = 0; k < STEPS; k++) {
            double d = max_diff(runs[i].logits[k], alone.logits[k], VOCAB);
            worst = fmax(worst, d);
            if (!(d <= 1e-4))
                fail_msg("sequence %zu (%s), step %zu: logits differ from it alone by %g", i,
                         sp->label, k, d);
            if (runs[i].toks[k] != alone.toks[k])
                fail_msg("sequence %zu (%s), step %zu: token %d, alone %d", i, sp->label, k,
                         runs[i].toks[k], alone.toks[k]);
        }
        /* the first step sees the same ids with and without the adapter */
        double effect = max_diff(runs[i].logits[0], plain.logits[0], VOCAB);
        if (sp->n && !(effect > 1e-3))
            fail_msg("sequence %zu (%s): the adapter changes the logits by only %g", i,
                     sp->label, effect);
        if (sp->n)
            least = fmin(least, effect);
        if (!sp->n && !(effect <= 1e-4))
            fail_msg("sequence %zu (none): differs from the base by %g", i, effect);
    }
    print_message("mixed vs alone: largest logit difference %.3g; smallest adapter effect %.3g\n",
                  worst, least);
    test_rmtree(tmp);
    free(tmp);
    for (size_t s = 0; s < NSPEC; s++)
        for (int k = 0; k < 2; k++)
            actl_adapter_free(ad[s][k]);
    actl_model_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed__batch_equals_each_sequence_alone_on_its_merged_model),
    };
    return cmocka_run_group_tests_name("mixed", tests, NULL, NULL);
}
