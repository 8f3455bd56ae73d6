/*
 * test_eval.c: actl_eval_run against the decoder run one request at a time
 * (batch 1, the test's own text loop), the schedule of continuous batching
 * simulated in the test, resume skips, stop strings, continuation
 * log-probabilities, error results, and the text `generate` prints for
 * llama2.c's stories260K.
 */
#include "testutil.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>

#define BASE FIXTURES "/base-tiny"
#define ADS FIXTURES "/adapters/base-tiny/"
#define L2C SHARED_DATA "/llama2c"

/* ---- a 64-token llama2.c tokenizer.bin for base-tiny --------------------- */

static char tiny_piece[64][16];

/* 0-2 as llama2.c's export, 3-28 "a".."z", 29-54 " a".." z", 55-61 "0".."6",
 * 62 " ", 63 the control byte 0x07 (byte fallback). */
static void tiny_vocab(void)
{
    strcpy(tiny_piece[0], "<unk>");
    strcpy(tiny_piece[1], "\n<s>\n");
    strcpy(tiny_piece[2], "\n</s>\n");
    for (int i = 0; i < 26; i++) {
        snprintf(tiny_piece[3 + i], 16, "%c", 'a' + i);
        snprintf(tiny_piece[29 + i], 16, " %c", 'a' + i);
    }
    for (int i = 0; i < 7; i++)
        snprintf(tiny_piece[55 + i], 16, "%c", '0' + i);
    strcpy(tiny_piece[62], " ");
    strcpy(tiny_piece[63], "<0x07>");
}

static void write_tiny_tokenizer(const char *path)
{
    tiny_vocab();
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    int32_t max_len = 16;
    fwrite(&max_len, 4, 1, f);
    for (int i = 0; i < 64; i++) {
        float score = -(float)i;
        int32_t l = (int32_t)strlen(tiny_piece[i]);
        fwrite(&score, 4, 1, f);
        fwrite(&l, 4, 1, f);
        fwrite(tiny_piece[i], 1, (size_t)l, f);
    }
    assert_int_equal(fclose(f), 0);
}

/* The text of generated ids after prev, written here from the rules of
 * cmd/generate.c: EOS (2) prints nothing, the control byte (63) neither,
 * and the first piece after BOS (1) loses its space. */
static char *tiny_text(int32_t prev, const int32_t *ids, size_t n)
{
    char *s = calloc(1, 16 * n + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; prev = ids[i], i++) {
        if (ids[i] == 2 || ids[i] == 63)
            continue;
        /* BOS and <unk> spell what the loader made of their text */
        const char *p = ids[i] == 1 ? "<s>" : ids[i] == 0 ? "<unk>" : tiny_piece[ids[i]];
        if (prev == 1 && p[0] == ' ')
            p++;
        strcat(s, p);
    }
    return s;
}

/* ---- results as the callback saw them ------------------------------------ */

typedef struct got {
    char *id, *adapter, *text, *finish;
    size_t prompt_tokens, completion_tokens;
    int correct, has_logprob;
    double logprob;
} got;

typedef struct sink {
    got r[64];
    size_t n;
    uint64_t progress_done, progress_total, progress_calls;
    int fail_at; /* a nonzero return at this result (1-based), 0: never */
} sink;

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static int on_result(const actl_eval_result *r, void *ctx)
{
    sink *k = ctx;
    assert_true(k->n < 64);
    got *g = &k->r[k->n++];
    g->id = strdup(r->req->id);
    g->adapter = strdup(r->adapter);
    g->text = dup_or_null(r->text);
    g->finish = strdup(r->finish);
    g->prompt_tokens = r->prompt_tokens;
    g->completion_tokens = r->completion_tokens;
    g->correct = r->correct;
    g->has_logprob = r->has_logprob;
    g->logprob = r->logprob;
    return k->fail_at && (int)k->n == k->fail_at ? ACTL_EIO : 0;
}

static void on_progress(uint64_t done, uint64_t total, void *ctx)
{
    sink *k = ctx;
    k->progress_done = done;
    k->progress_total = total;
    k->progress_calls++;
}

static void sink_free(sink *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->r[i].id);
        free(k->r[i].adapter);
        free(k->r[i].text);
        free(k->r[i].finish);
    }
    k->n = 0;
}

static const got *find(const sink *k, const char *id)
{
    const got *g = NULL;
    for (size_t i = 0; i < k->n; i++)
        if (!strcmp(k->r[i].id, id)) {
            assert_null(g); /* each request reported once */
            g = &k->r[i];
        }
    if (!g)
        fail_msg("no result for '%s'", id);
    return g;
}

/* ---- fixture -------------------------------------------------------------- */

typedef struct fx {
    char *dir;
    actl_model *m;
    actl_tokenizer *tok;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    f->dir = test_tmpdir();
    char *p = test_join(f->dir, "tokenizer.bin");
    write_tiny_tokenizer(p);
    assert_ok(actl_tokenizer_load(p, NULL, &f->tok));
    free(p);
    assert_ok(actl_model_load(BASE, 0, &f->m));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    actl_tokenizer_free(f->tok);
    actl_model_free(f->m);
    test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void no_problem(const char *msg, void *ctx)
{
    (void)ctx;
    fail_msg("unexpected request problem: %s", msg);
}

static actl_eval_reqs *reqs(fx *f, const char *jsonl)
{
    char *p = test_join(f->dir, "reqs.jsonl");
    test_write_file(p, jsonl, strlen(jsonl));
    actl_eval_reqs *l = NULL;
    assert_ok(actl_eval_reqs_jsonl(p, no_problem, NULL, &l));
    free(p);
    return l;
}

/* One request alone through a batch of one: the ids it generates (stopping
 * at EOS 2), returned malloc'd with *n; optionally a continuation's score. */
static int32_t *alone(fx *f, const char *const *refs, size_t n_refs, const int32_t *prompt,
                      size_t n_prompt, int64_t max_tokens, float temperature, uint64_t seed,
                      const int32_t *cont, size_t n_cont, double *score, size_t *n)
{
    actl_batch_opts bo = actl_batch_default_opts();
    bo.max_seqs = 1;
    actl_batch *b = NULL;
    assert_ok(actl_batch_new(f->m, &bo, &b));
    actl_inputs *in = NULL;
    int handle = 0;
    if (n_refs) {
        assert_ok(actl_inputs_new(&in));
        for (size_t i = 0; i < n_refs; i++) {
            char *ref;
            double w;
            assert_ok(actl_input_spec_parse(refs[i], &ref, &w));
            assert_ok(actl_inputs_add(in, NULL, ref, w));
            free(ref);
        }
        size_t k;
        const actl_input *it = actl_inputs_items(in, &k);
        assert_ok(actl_batch_adapter(b, it, k, &handle));
    }
    const int32_t eos = 2;
    actl_request r = actl_request_default();
    r.prompt = prompt;
    r.n_prompt = n_prompt;
    r.adapter = handle;
    r.max_tokens = cont ? 0 : max_tokens;
    r.temperature = temperature;
    r.seed = seed;
    r.stop_ids = &eos;
    r.n_stop_ids = 1;
    r.score = cont;
    r.n_score = n_cont;
    int s, running = 1;
    assert_ok(actl_batch_add(b, &r, &s));
    while (running)
        assert_ok(actl_batch_step(b, &running));
    const int32_t *ids;
    *n = actl_batch_tokens(b, s, &ids, NULL);
    int32_t *out = malloc((*n + 1) * sizeof *out);
    if (*n)
        memcpy(out, ids, *n * sizeof *out);
    if (cont)
        assert_ok(actl_batch_score(b, s, score, NULL));
    actl_batch_free(b);
    actl_inputs_free(in);
    return out;
}

static actl_eval_opts opts(sink *k, int batch)
{
    actl_eval_opts o = actl_eval_default_opts();
    o.batch = batch;
    o.threads = 2;
    o.on_result = on_result;
    o.ctx = k;
    o.progress = on_progress;
    o.progress_ctx = k;
    return o;
}

/* ---- mixed adapters in one batch ------------------------------------------ */

typedef struct spec {
    const char *id;
    const char *refs[2];
    size_t n_refs;
    int32_t prompt[4];
    size_t n_prompt;
    int64_t max_tokens;
    float temperature;
    uint64_t seed;
} spec;

static const spec mixed[] = {
    {"none", {0}, 0, {1, 5, 9}, 3, 12, 0, 0},
    {"lora", {ADS "lora"}, 1, {1, 7}, 2, 9, 0, 0},
    {"dora", {ADS "lora-dora"}, 1, {1, 30, 31, 40}, 4, 15, 0, 0},
    {"road", {ADS "road-2"}, 1, {1}, 1, 6, 0, 0},
    {"bneck", {ADS "bottleneck-series"}, 1, {1, 12, 13}, 3, 11, 0, 0},
    {"stack", {ADS "lora:0.5", ADS "road-1"}, 2, {1, 3}, 2, 8, 0, 0},
    {"mos", {ADS "mos"}, 1, {1, 44, 45}, 3, 10, 0, 0},
    {"sampled", {ADS "lora-bias"}, 1, {1, 20}, 2, 14, 0.9f, 77},
};
#define N_MIXED (sizeof mixed / sizeof *mixed)

static char *mixed_jsonl(void)
{
    char *s = calloc(1, 8192);
    for (size_t i = 0; i < N_MIXED; i++) {
        const spec *q = &mixed[i];
        char line[1024];
        int o = snprintf(line, sizeof line, "{\"id\": \"%s\", \"adapter\": [", q->id);
        for (size_t k = 0; k < q->n_refs; k++)
            o += snprintf(line + o, sizeof line - (size_t)o, "%s\"%s\"", k ? ", " : "",
                          q->refs[k]);
        o += snprintf(line + o, sizeof line - (size_t)o, "], \"prompt_ids\": [");
        for (size_t k = 0; k < q->n_prompt; k++)
            o += snprintf(line + o, sizeof line - (size_t)o, "%s%d", k ? ", " : "",
                          q->prompt[k]);
        snprintf(line + o, sizeof line - (size_t)o,
                 "], \"max_tokens\": %lld, \"temperature\": %g, \"seed\": %llu}\n",
                 (long long)q->max_tokens, (double)q->temperature,
                 (unsigned long long)q->seed);
        strcat(s, line);
    }
    return s;
}

static void check_mixed(fx *f, int batch)
{
    char *jsonl = mixed_jsonl();
    actl_eval_reqs *l = reqs(f, jsonl);
    free(jsonl);
    sink k = {0};
    actl_eval_opts o = opts(&k, batch);
    actl_eval_summary *sum = NULL;
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, &sum));
    assert_int_equal(k.n, N_MIXED);
    for (size_t i = 0; i < N_MIXED; i++) {
        const spec *q = &mixed[i];
        size_t n;
        int32_t *ids = alone(f, q->refs, q->n_refs, q->prompt, q->n_prompt, q->max_tokens,
                             q->temperature, q->seed, NULL, 0, NULL, &n);
        char *want = tiny_text(q->prompt[q->n_prompt - 1], ids, n);
        const got *g = find(&k, q->id);
        assert_string_equal(g->text, want);
        assert_int_equal(g->completion_tokens, n);
        assert_int_equal(g->prompt_tokens, q->n_prompt);
        assert_string_equal(g->finish, n && ids[n - 1] == 2 ? "stop" : "length");
        assert_int_equal(g->correct, -1);
        assert_false(g->has_logprob);
        free(want);
        free(ids);
    }
    /* one row per adapter list, "+" between the refs of a stack */
    assert_int_equal(actl_eval_summary_count(sum), N_MIXED);
    const actl_eval_summary_row *row = actl_eval_summary_get(sum, 5);
    assert_string_equal(row->adapter, ADS "lora:0.5+" ADS "road-1");
    assert_int_equal(row->requests, 1);
    assert_int_equal(row->completion_tokens, find(&k, "stack")->completion_tokens);
    assert_string_equal(actl_eval_summary_get(sum, 0)->adapter, "none");
    assert_null(actl_eval_summary_get(sum, N_MIXED));
    assert_true(actl_eval_summary_seconds(sum) >= row->seconds);
    assert_int_equal(k.progress_done, N_MIXED);
    assert_int_equal(k.progress_total, N_MIXED);
    actl_eval_summary_free(sum);
    sink_free(&k);
    actl_eval_reqs_free(l);
}

static void test_eval__mixed_adapters_batched_equal_each_alone(void **state)
{
    check_mixed(*state, 3);
    check_mixed(*state, 8);
}

/* ---- continuous batching --------------------------------------------------- */

static void test_eval__finished_slot_refilled_at_once(void **state)
{
    fx *f = *state;
    static const int64_t len[7] = {6, 1, 2, 5, 1, 3, 4};
    char jsonl[4096] = "";
    for (int i = 0; i < 7; i++) {
        char line[256];
        snprintf(line, sizeof line,
                 "{\"id\": \"r%d\", \"adapter\": %s, \"prompt_ids\": [1, %d], "
                 "\"max_tokens\": %lld}\n",
                 i, i % 2 ? "\"" ADS "lora\"" : "null", 10 + i, (long long)len[i]);
        strcat(jsonl, line);
    }
    actl_eval_reqs *l = reqs(f, jsonl);
    sink k = {0};
    actl_eval_opts o = opts(&k, 2);
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, NULL));
    assert_int_equal(k.n, 7);
    /* The schedule simulated: request i takes as many steps as tokens it
     * generated; a slot freed after a step takes the next request before the
     * following step; finishes in one step are reported in slot order. */
    int64_t steps[7];
    for (int i = 0; i < 7; i++) {
        char id[8];
        snprintf(id, sizeof id, "r%d", i);
        steps[i] = (int64_t)find(&k, id)->completion_tokens;
        assert_true(steps[i] >= 1 && steps[i] <= len[i]);
    }
    int slot_req[2] = {0, 1}, next = 2;
    int64_t slot_end[2] = {steps[0], steps[1]};
    int order[7], n_order = 0;
    for (int64_t t = 1; n_order < 7; t++)
        for (int s = 0; s < 2; s++)
            if (slot_req[s] >= 0 && slot_end[s] == t) {
                order[n_order++] = slot_req[s];
                slot_req[s] = next < 7 ? next++ : -1;
                if (slot_req[s] >= 0)
                    slot_end[s] = t + steps[slot_req[s]];
            }
    for (int i = 0; i < 7; i++) {
        char id[8];
        snprintf(id, sizeof id, "r%d", order[i]);
        assert_string_equal(k.r[i].id, id);
    }
    sink_free(&k);
    actl_eval_reqs_free(l);
}

static void test_eval__skip_ids_not_run_nor_counted(void **state)
{
    fx *f = *state;
    actl_eval_reqs *l = reqs(f, "{\"id\": \"a\", \"prompt_ids\": [1], \"max_tokens\": 2}\n"
                                "{\"id\": \"b\", \"prompt_ids\": [1], \"max_tokens\": 2}\n"
                                "{\"id\": \"c\", \"prompt_ids\": [1], \"max_tokens\": 2}\n"
                                "{\"id\": \"d\", \"prompt_ids\": [1], \"max_tokens\": 2}\n"
                                "{\"id\": \"e\", \"prompt_ids\": [1], \"max_tokens\": 2}\n");
    sink k = {0};
    actl_eval_opts o = opts(&k, 2);
    const char *skip[] = {"d", "b", "zz"};
    o.skip = skip;
    o.n_skip = 3;
    actl_eval_summary *sum = NULL;
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, &sum));
    assert_int_equal(k.n, 3);
    assert_string_equal(k.r[0].id, "a");
    assert_string_equal(k.r[1].id, "c");
    assert_string_equal(k.r[2].id, "e");
    assert_int_equal(k.progress_total, 3);
    assert_int_equal(k.progress_done, 3);
    assert_int_equal(actl_eval_summary_count(sum), 1);
    assert_int_equal(actl_eval_summary_get(sum, 0)->requests, 3);
    actl_eval_summary_free(sum);
    sink_free(&k);
    actl_eval_reqs_free(l);
}

/* ---- stop strings ---------------------------------------------------------- */

static void test_eval__stop_string_cuts_text_and_tokens(void **state)
{
    fx *f = *state;
    const int32_t prompt[] = {1, 9, 4};
    size_t n;
    int32_t *ids = alone(f, NULL, 0, prompt, 3, 20, 0, 0, NULL, 0, NULL, &n);
    char *full = tiny_text(4, ids, n);
    size_t fl = strlen(full);
    if (fl < 6)
        fail_msg("the reference continuation '%s' is too short for this test", full);
    /* a stop string of two characters from the middle of the text */
    char stop[3] = {full[fl / 2], full[fl / 2 + 1], 0};
    if (stop[0] == '"' || stop[1] == '"' || stop[0] == '\n' || stop[1] == '\n' ||
        stop[0] == '\\' || stop[1] == '\\')
        fail_msg("pick another prompt: the stop text needs JSON escaping");
    size_t cut = (size_t)(strstr(full, stop) - full);
    /* the token count: the fewest tokens whose text holds the stop string */
    size_t need = 0;
    for (size_t t = 1; t <= n && !need; t++) {
        char *part = tiny_text(4, ids, t);
        if (strstr(part, stop))
            need = t;
        free(part);
    }
    char jsonl[512];
    snprintf(jsonl, sizeof jsonl,
             "{\"id\": \"s\", \"prompt_ids\": [1, 9, 4], \"max_tokens\": 20, "
             "\"stop\": [\"nomatch\", \"%s\"]}\n"
             "{\"id\": \"t\", \"prompt_ids\": [1, 9, 4], \"max_tokens\": 20}\n",
             stop);
    actl_eval_reqs *l = reqs(f, jsonl);
    sink k = {0};
    actl_eval_opts o = opts(&k, 2);
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, NULL));
    const got *g = find(&k, "s");
    assert_int_equal(strlen(g->text), cut);
    assert_memory_equal(g->text, full, cut);
    assert_string_equal(g->finish, "stop");
    assert_int_equal(g->completion_tokens, need);
    g = find(&k, "t");
    assert_string_equal(g->text, full);
    sink_free(&k);
    actl_eval_reqs_free(l);
    free(full);
    free(ids);
}

/* ---- continuations ---------------------------------------------------------- */

static void test_eval__continuation_logprob_equals_batch_score_alone(void **state)
{
    fx *f = *state;
    actl_eval_reqs *l =
        reqs(f, "{\"id\": \"ids\", \"adapter\": \"" ADS "lora\", \"prompt_ids\": [1, 5, 6], "
                "\"continuation_ids\": [7, 8, 9, 10]}\n"
                "{\"id\": \"text\", \"prompt\": \"ab\", \"continuation\": \" cd\"}\n"
                "{\"id\": \"gen\", \"prompt_ids\": [1, 5], \"max_tokens\": 3}\n");
    sink k = {0};
    actl_eval_opts o = opts(&k, 3);
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, NULL));
    assert_int_equal(k.n, 3);

    const char *refs[] = {ADS "lora"};
    const int32_t p1[] = {1, 5, 6}, c1[] = {7, 8, 9, 10};
    double want;
    size_t n;
    free(alone(f, refs, 1, p1, 3, 0, 0, 0, c1, 4, &want, &n));
    const got *g = find(&k, "ids");
    assert_true(g->has_logprob);
    if (fabs(g->logprob - want) > 1e-5 * (1 + fabs(want)))
        fail_msg("logprob %.9g, alone %.9g", g->logprob, want);
    assert_int_equal(g->completion_tokens, 0);
    assert_string_equal(g->text, "");

    /* "ab" is BOS " a" "b" (the dummy-prefix space); " cd" after it is
     * " c" "d", not the " " " c" "d" it would be at a text's start */
    int32_t *pi = NULL, *wi = NULL;
    size_t np, nw;
    assert_ok(actl_tokenizer_encode(f->tok, "ab", 2, ACTL_TOK_BOS | ACTL_TOK_SPECIAL, &pi, &np));
    assert_ok(actl_tokenizer_encode(f->tok, "ab cd", 5, ACTL_TOK_BOS | ACTL_TOK_SPECIAL, &wi,
                                    &nw));
    assert_true(nw > np);
    assert_memory_equal(wi, pi, np * sizeof *pi);
    assert_int_equal(wi[np], 29 + 2);  /* " c" */
    assert_int_equal(wi[np + 1], 3 + 3); /* "d" */
    free(alone(f, NULL, 0, pi, np, 0, 0, 0, wi + np, nw - np, &want, &n));
    g = find(&k, "text");
    assert_true(g->has_logprob);
    if (fabs(g->logprob - want) > 1e-5 * (1 + fabs(want)))
        fail_msg("logprob %.9g, alone %.9g", g->logprob, want);
    assert_int_equal(g->prompt_tokens, np);
    assert_false(find(&k, "gen")->has_logprob);
    free(pi);
    free(wi);
    sink_free(&k);
    actl_eval_reqs_free(l);
}

/* ---- scoring ------------------------------------------------------------------ */

static void test_eval__scored_request_uses_completion_text(void **state)
{
    fx *f = *state;
    const int32_t prompt[] = {1, 11};
    size_t n;
    int32_t *ids = alone(f, NULL, 0, prompt, 2, 8, 0, 0, NULL, 0, NULL, &n);
    char *full = tiny_text(11, ids, n);
    char jsonl[512];
    /* "contains": the text's own first character is in it, "zzzz" (no 'z'
     * run that long can come from 8 tokens of one letter each) is not */
    snprintf(jsonl, sizeof jsonl,
             "{\"id\": \"yes\", \"prompt_ids\": [1, 11], \"max_tokens\": 8, "
             "\"answer\": \"%c\", \"scorer\": \"contains\"}\n"
             "{\"id\": \"no\", \"prompt_ids\": [1, 11], \"max_tokens\": 8, "
             "\"answer\": \"zzzzzzzzz\", \"scorer\": \"contains\"}\n",
             full[0] == ' ' ? full[1] : full[0]);
    actl_eval_reqs *l = reqs(f, jsonl);
    sink k = {0};
    actl_eval_opts o = opts(&k, 2);
    actl_eval_summary *sum = NULL;
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, &sum));
    assert_int_equal(find(&k, "yes")->correct, 1);
    assert_int_equal(find(&k, "no")->correct, 0);
    const actl_eval_summary_row *row = actl_eval_summary_get(sum, 0);
    assert_int_equal(row->scored, 2);
    assert_int_equal(row->correct, 1);
    assert_int_equal(row->completion_tokens, 2 * n);
    actl_eval_summary_free(sum);
    sink_free(&k);
    actl_eval_reqs_free(l);
    free(full);
    free(ids);
}

/* ---- errors -------------------------------------------------------------------- */

static void test_eval__bad_request_is_an_error_result_others_run(void **state)
{
    fx *f = *state;
    char jsonl[4096];
    char ids[1024] = "1";
    for (int i = 1; i < 128; i++)
        strcat(ids, ", 5");
    snprintf(jsonl, sizeof jsonl,
             "{\"id\": \"ok1\", \"prompt_ids\": [1, 3], \"max_tokens\": 4}\n"
             "{\"id\": \"unknown\", \"adapter\": \"no-such-adapter\", \"prompt_ids\": [1], "
             "\"max_tokens\": 4}\n"
             "{\"id\": \"unknown2\", \"adapter\": \"no-such-adapter\", \"prompt_ids\": [1, 2], "
             "\"max_tokens\": 4}\n"
             "{\"id\": \"long\", \"prompt_ids\": [%s], \"max_tokens\": 4}\n"
             "{\"id\": \"vocab\", \"prompt_ids\": [1, 999], \"max_tokens\": 4}\n"
             "{\"id\": \"ok2\", \"adapter\": \"" ADS "lora\", \"prompt_ids\": [1, 4], "
             "\"max_tokens\": 4}\n",
             ids);
    actl_eval_reqs *l = reqs(f, jsonl);
    sink k = {0};
    actl_eval_opts o = opts(&k, 2);
    actl_eval_summary *sum = NULL;
    assert_ok(actl_eval_run(f->m, f->tok, l, &o, &sum));
    assert_int_equal(k.n, 6);
    const got *g = find(&k, "unknown");
    assert_string_equal(g->finish, "error");
    assert_non_null(strstr(g->text, "no-such-adapter"));
    assert_string_equal(g->adapter, "no-such-adapter");
    assert_string_equal(find(&k, "unknown2")->finish, "error");
    g = find(&k, "long");
    assert_string_equal(g->finish, "error");
    assert_non_null(strstr(g->text, "128 tokens"));
    g = find(&k, "vocab");
    assert_string_equal(g->finish, "error");
    assert_non_null(strstr(g->text, "999"));
    for (int i = 0; i < 2; i++) {
        g = find(&k, i ? "ok2" : "ok1");
        assert_string_not_equal(g->finish, "error");
        assert_true(g->completion_tokens >= 1);
    }
    /* the failed list counts its requests, none scored */
    int seen = 0;
    for (size_t i = 0; i < actl_eval_summary_count(sum); i++) {
        const actl_eval_summary_row *row = actl_eval_summary_get(sum, i);
        if (!strcmp(row->adapter, "no-such-adapter")) {
            assert_int_equal(row->requests, 2);
            assert_int_equal(row->scored, 0);
            seen = 1;
        }
    }
    assert_true(seen);
    actl_eval_summary_free(sum);
    sink_free(&k);
    actl_eval_reqs_free(l);
}

static void test_eval__text_request_without_tokenizer_is_an_error_result(void **state)
{
    fx *f = *state;
    actl_eval_reqs *l = reqs(f, "{\"id\": \"t\", \"prompt\": \"ab\", \"max_tokens\": 2}\n"
                                "{\"id\": \"i\", \"prompt_ids\": [1], \"max_tokens\": 2}\n");
    sink k = {0};
    actl_eval_opts o = opts(&k, 2);
    assert_ok(actl_eval_run(f->m, NULL, l, &o, NULL));
    assert_string_equal(find(&k, "t")->finish, "error");
    assert_non_null(strstr(find(&k, "t")->text, "tokenizer"));
    const got *g = find(&k, "i");
    assert_null(g->text); /* no tokenizer: no text */
    assert_int_equal(g->completion_tokens, 2);
    sink_free(&k);
    actl_eval_reqs_free(l);
}

static void test_eval__callback_error_stops_run(void **state)
{
    fx *f = *state;
    actl_eval_reqs *l = reqs(f, "{\"id\": \"a\", \"prompt_ids\": [1], \"max_tokens\": 1}\n"
                                "{\"id\": \"b\", \"prompt_ids\": [1], \"max_tokens\": 5}\n"
                                "{\"id\": \"c\", \"prompt_ids\": [1], \"max_tokens\": 5}\n");
    sink k = {0};
    k.fail_at = 1;
    actl_eval_opts o = opts(&k, 1);
    actl_eval_summary *sum = (actl_eval_summary *)&k; /* must be reset to NULL */
    assert_int_equal(actl_eval_run(f->m, f->tok, l, &o, &sum), ACTL_EIO);
    assert_null(sum);
    assert_int_equal(k.n, 1);
    sink_free(&k);
    actl_eval_reqs_free(l);
}

static void test_eval__bad_options_refused(void **state)
{
    fx *f = *state;
    actl_eval_reqs *l = reqs(f, "{\"id\": \"a\", \"prompt_ids\": [1], \"max_tokens\": 1}\n");
    actl_eval_opts o = actl_eval_default_opts();
    assert_int_equal(o.batch, 8);
    assert_int_equal(o.max_tokens, 256);
    o.batch = 0;
    assert_err(actl_eval_run(f->m, f->tok, l, &o, NULL), ACTL_EINVAL, "batch 0");
    o = actl_eval_default_opts();
    o.max_tokens = -1;
    assert_err(actl_eval_run(f->m, f->tok, l, &o, NULL), ACTL_EINVAL, "max_tokens -1");
    assert_err(actl_eval_run(NULL, f->tok, l, NULL, NULL), ACTL_EINVAL, "required");
    actl_eval_reqs_free(l);
}

/* ---- the shared text function ----------------------------------------------------- */

static void test_continuation__generate_rules(void **state)
{
    fx *f = *state;
    /* after BOS the space goes; EOS and the control byte print nothing; an
     * id past the tokenizer's vocabulary neither */
    const int32_t ids[] = {29, 2, 63, 30, 1, 31, 4};
    const int32_t stop[] = {2};
    char *t = NULL;
    size_t len = 0;
    assert_ok(actl_tokenizer_continuation(f->tok, 1, 1, stop, 1, ids, 7, &t, &len));
    assert_string_equal(t, "a b<s>cb");
    assert_int_equal(len, strlen(t));
    free(t);
    /* not after BOS: the space stays; piece by piece equals all at once */
    assert_ok(actl_tokenizer_continuation(f->tok, 5, 1, stop, 1, ids, 7, &t, &len));
    assert_string_equal(t, " a b<s>cb");
    free(t);
    char *a = NULL, *b = NULL;
    assert_ok(actl_tokenizer_continuation(f->tok, 1, 1, stop, 1, ids, 3, &a, NULL));
    assert_ok(actl_tokenizer_continuation(f->tok, ids[2], 1, stop, 1, ids + 3, 4, &b, NULL));
    char both[64];
    snprintf(both, sizeof both, "%s%s", a, b);
    assert_string_equal(both, "a b<s>cb");
    free(a);
    free(b);
    const int32_t big[] = {64, 1000, -1};
    assert_ok(actl_tokenizer_continuation(f->tok, -1, 1, NULL, 0, big, 3, &t, &len));
    assert_string_equal(t, "");
    free(t);
    assert_err(actl_tokenizer_continuation(NULL, -1, 1, NULL, 0, ids, 1, &t, &len), ACTL_EINVAL,
               "required");
}

/* ---- llama2.c's stories260K -------------------------------------------------------- */

static char *read_text(const char *path)
{
    unsigned char *t = test_slurp(path, NULL);
    size_t n = strlen((char *)t);
    while (n && t[n - 1] == '\n')
        t[--n] = 0;
    return (char *)t;
}

/* The adapterctl binary beside this test's build directory. */
static int adapterctl_path(char *out, size_t cap)
{
    char self[PATH_MAX - 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = 0;
    char *slash = strrchr(self, '/'); /* .../build/tests/test_eval */
    if (!slash)
        return -1;
    *slash = 0;
    if (!(slash = strrchr(self, '/')))
        return -1;
    *slash = 0;
    snprintf(out, cap, "%s/adapterctl", self);
    return access(out, X_OK);
}

/* What `adapterctl generate --json` gives as "text" for this prompt. */
static char *generate_text(const char *bin, const char *prompt, int n, const char *stop)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "'%s' generate --model " L2C "/stories260K.bin --tokenizer " L2C "/tok512.bin "
             "--prompt '%s' -n %d --temperature 0 --threads 1 --json %s%s%s 2>/dev/null",
             bin, prompt, n, stop ? "--stop '" : "", stop ? stop : "", stop ? "'" : "");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *buf = calloc(1, 1 << 20);
    size_t got = fread(buf, 1, (1 << 20) - 1, p);
    assert_int_equal(pclose(p), 0);
    json_error_t e;
    json_t *doc = json_loadb(buf, got, 0, &e);
    if (!doc)
        fail_msg("generate printed no JSON: %s", buf);
    char *text = strdup(json_string_value(json_object_get(doc, "text")));
    json_decref(doc);
    free(buf);
    return text;
}

static void test_eval__stories260k_text_equals_generate(void **state)
{
    (void)state;
    REQUIRE_SHARED(L2C "/stories260K.bin");
    REQUIRE_SHARED(L2C "/tok512.bin");
    REQUIRE_SHARED(L2C "/expected/stories260K_t0_n200.txt");
    actl_model *m = NULL;
    actl_tokenizer *tok = NULL;
    assert_ok(actl_model_load(L2C "/stories260K.bin", 0, &m));
    assert_ok(actl_tokenizer_load(L2C "/tok512.bin", NULL, &tok));
    char *dir = test_tmpdir();
    char *p = test_join(dir, "reqs.jsonl");
    const char *jsonl = "{\"id\": \"bos\", \"prompt_ids\": [1], \"max_tokens\": 200}\n"
                        "{\"id\": \"once\", \"prompt\": \"Once upon a time\", \"max_tokens\": 40}\n"
                        "{\"id\": \"lily\", \"prompt\": \"Lily went\", \"max_tokens\": 60, "
                        "\"stop\": [\" ball\"]}\n"
                        "{\"id\": \"big\", \"prompt\": \"The cat\", \"max_tokens\": 9999}\n";
    test_write_file(p, jsonl, strlen(jsonl));
    actl_eval_reqs *l = NULL;
    assert_ok(actl_eval_reqs_jsonl(p, no_problem, NULL, &l));
    sink k = {0};
    actl_eval_opts o = opts(&k, 3);
    assert_ok(actl_eval_run(m, tok, l, &o, NULL));
    assert_int_equal(k.n, 4);

    char *want = read_text(L2C "/expected/stories260K_t0_n200.txt");
    assert_string_equal(find(&k, "bos")->text, want);
    free(want);

    /* max_tokens past the context is clipped to it, as generate does */
    actl_model_info mi;
    actl_model_info_get(m, &mi);
    const got *g = find(&k, "big");
    assert_true((int64_t)(g->prompt_tokens + g->completion_tokens) <= mi.max_seq);

    char bin[PATH_MAX];
    if (adapterctl_path(bin, sizeof bin) != 0) {
        print_message("SKIP (part): no adapterctl binary beside the test to compare with\n");
    } else {
        char *t = generate_text(bin, "Once upon a time", 40, NULL);
        assert_string_equal(find(&k, "once")->text, t);
        free(t);
        t = generate_text(bin, "Lily went", 60, " ball");
        assert_string_equal(find(&k, "lily")->text, t);
        free(t);
        t = generate_text(bin, "The cat", 9999, NULL);
        assert_string_equal(find(&k, "big")->text, t);
        free(t);
    }
    sink_free(&k);
    actl_eval_reqs_free(l);
    actl_tokenizer_free(tok);
    actl_model_free(m);
    test_rmtree(dir);
    free(dir);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_eval__mixed_adapters_batched_equal_each_alone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval__finished_slot_refilled_at_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_eval__skip_ids_not_run_nor_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval__stop_string_cuts_text_and_tokens, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_eval__continuation_logprob_equals_batch_score_alone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval__scored_request_uses_completion_text, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_eval__bad_request_is_an_error_result_others_run,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_eval__text_request_without_tokenizer_is_an_error_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval__callback_error_stops_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval__bad_options_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_continuation__generate_rules, setup, teardown),
        cmocka_unit_test(test_eval__stories260k_text_equals_generate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
