/* test_decode.c: the batched decoder (lib/decode.c) against HF transformers'
 * logits for a real checkpoint (../shared/data), against a plain fp64
 * forward pass written here (full recompute, no KV cache, straight from the
 * checkpoint's tensors), against llama2.c's output for stories260K, and its
 * refusals. */
#include <math.h>

#include "testutil.h"
#include "internal.h"

#define TINY FIXTURES "/base-tiny"
#define HF_TINY SHARED_DATA "/hf-tiny-random-llama-2"
#define L2C SHARED_DATA "/llama2c"

/* ---- the fp64 reference --------------------------------------------------- */

typedef struct ref {
    actl_ckpt *ck;
    int64_t dim, hidden, layers, heads, kvh, hd, vocab;
    double eps, theta;
    /* features base-tiny lacks: rope_scaling (0 none, 1 linear, 2 llama3),
     * q/k/v biases, an lm_head tied to the embedding */
    int rope;
    double factor, low_ff, high_ff, orig_max;
    bool bias, tied;
} ref;

static double *f64(const ref *r, const char *fmt, long l, int64_t numel)
{
    char name[128];
    snprintf(name, sizeof name, fmt, l);
    const actl_tensor *t = actl_ckpt_find(r->ck, name);
    if (!t)
        fail_msg("tensor %s missing", name);
    assert_int_equal(actl_tensor_numel(t), numel);
    float *f = malloc((size_t)numel * sizeof *f);
    assert_ok(actl_tensor_to_f32(t, f));
    double *d = malloc((size_t)numel * sizeof *d);
    for (int64_t i = 0; i < numel; i++)
        d[i] = f[i];
    free(f);
    return d;
}

/* y[T, out] = x[T, in] W^T */
static void matmul(const double *x, const double *W, int64_t T, int64_t in, int64_t out,
                   double *y)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < out; o++) {
            double s = 0;
            for (int64_t i = 0; i < in; i++)
                s += x[t * in + i] * W[o * in + i];
            y[t * out + o] = s;
        }
}

static void norm(const double *x, const double *w, int64_t T, int64_t d, double eps, double *y)
{
    for (int64_t t = 0; t < T; t++) {
        double ss = 0;
        for (int64_t i = 0; i < d; i++)
            ss += x[t * d + i] * x[t * d + i];
        double inv = 1 / sqrt(ss / (double)d + eps);
        for (int64_t i = 0; i < d; i++)
            y[t * d + i] = w[i] * x[t * d + i] * inv;
    }
}

/* HF's inverse frequencies in fp64: 1 / theta^(2i / hd), then the
 * rope_scaling rule (linear: divided by the factor; llama3: as
 * _compute_llama3_parameters, by wavelength band). */
static void inv_freqs(const ref *r, double *inv)
{
    int64_t hd = r->hd;
    double low_wl = r->orig_max / r->low_ff, high_wl = r->orig_max / r->high_ff;
    for (int64_t i = 0; i < hd / 2; i++) {
        double f = pow(r->theta, -2.0 * (double)i / (double)hd);
        if (r->rope == 1) {
            f /= r->factor;
        } else if (r->rope == 2) {
            double wl = 2 * M_PI / f;
            if (wl > low_wl) {
                f /= r->factor;
            } else if (!(wl < high_wl)) {
                double smooth = (r->orig_max / wl - r->low_ff) / (r->high_ff - r->low_ff);
                f = (1 - smooth) * f / r->factor + smooth * f;
            }
        }
        inv[i] = f;
    }
}

static void rot(double *v, int64_t T, int64_t nh, int64_t hd, const double *inv)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < nh; h++) {
            double *p = v + (t * nh + h) * hd;
            for (int64_t i = 0; i < hd / 2; i++) {
                double a = (double)t * inv[i];
                double x1 = p[i], x2 = p[i + hd / 2];
                p[i] = x1 * cos(a) - x2 * sin(a);
                p[i + hd / 2] = x2 * cos(a) + x1 * sin(a);
            }
        }
}

static void add_bias(const ref *r, double *y, int64_t T, const char *fmt, long l, int64_t n)
{
    if (!r->bias)
        return;
    double *b = f64(r, fmt, l, n);
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < n; i++)
            y[t * n + i] += b[i];
    free(b);
}

/* logits[T, vocab] of every position of ids[T]. */
static void naive_forward(const ref *r, const int32_t *ids, int64_t T, double *logits)
{
    int64_t D = r->dim, H = r->hidden, hd = r->hd, qd = r->heads * hd, kd = r->kvh * hd;
    double *emb = f64(r, "model.embed_tokens.weight%.0ld", 0, r->vocab * D);
    double *x = calloc((size_t)(T * D), sizeof *x), *xn = calloc((size_t)(T * D), sizeof *x);
    double *q = calloc((size_t)(T * qd), sizeof *q), *k = calloc((size_t)(T * kd), sizeof *k);
    double *v = calloc((size_t)(T * kd), sizeof *v), *att = calloc((size_t)(T * qd), sizeof *q);
    double *o = calloc((size_t)(T * D), sizeof *o), *g = calloc((size_t)(T * H), sizeof *g);
    double *u = calloc((size_t)(T * H), sizeof *u), *sc = calloc((size_t)T, sizeof *sc);
    double inv[64];
    assert_true(hd / 2 <= 64);
    inv_freqs(r, inv);
    for (int64_t t = 0; t < T; t++)
        memcpy(x + t * D, emb + (int64_t)ids[t] * D, (size_t)D * sizeof *x);
    for (long l = 0; l < r->layers; l++) {
        double *an = f64(r, "model.layers.%ld.input_layernorm.weight", l, D);
        double *wq = f64(r, "model.layers.%ld.self_attn.q_proj.weight", l, qd * D);
        double *wk = f64(r, "model.layers.%ld.self_attn.k_proj.weight", l, kd * D);
        double *wv = f64(r, "model.layers.%ld.self_attn.v_proj.weight", l, kd * D);
        double *wo = f64(r, "model.layers.%ld.self_attn.o_proj.weight", l, D * qd);
        double *fn = f64(r, "model.layers.%ld.post_attention_layernorm.weight", l, D);
        double *wg = f64(r, "model.layers.%ld.mlp.gate_proj.weight", l, H * D);
        double *wu = f64(r, "model.layers.%ld.mlp.up_proj.weight", l, H * D);
        double *wd = f64(r, "model.layers.%ld.mlp.down_proj.weight", l, D * H);
        norm(x, an, T, D, r->eps, xn);
        matmul(xn, wq, T, D, qd, q);
        matmul(xn, wk, T, D, kd, k);
        matmul(xn, wv, T, D, kd, v);
        add_bias(r, q, T, "model.layers.%ld.self_attn.q_proj.bias", l, qd);
        add_bias(r, k, T, "model.layers.%ld.self_attn.k_proj.bias", l, kd);
        add_bias(r, v, T, "model.layers.%ld.self_attn.v_proj.bias", l, kd);
        rot(q, T, r->heads, hd, inv);
        rot(k, T, r->kvh, hd, inv);
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < r->heads; h++) {
                int64_t kh = h / (r->heads / r->kvh);
                double mx = -INFINITY, z = 0;
                for (int64_t s = 0; s <= t; s++) {
                    double d = 0;
                    for (int64_t e = 0; e < hd; e++)
                        d += q[t * qd + h * hd + e] * k[s * kd + kh * hd + e];
                    sc[s] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[s]);
                }
                for (int64_t s = 0; s <= t; s++)
                    z += (sc[s] = exp(sc[s] - mx));
                for (int64_t e = 0; e < hd; e++) {
                    double a = 0;
                    for (int64_t s = 0; s <= t; s++)
                        a += sc[s] / z * v[s * kd + kh * hd + e];
                    att[t * qd + h * hd + e] = a;
                }
            }
        matmul(att, wo, T, qd, D, o);
        for (int64_t i = 0; i < T * D; i++)
            x[i] += o[i];
        norm(x, fn, T, D, r->eps, xn);
        matmul(xn, wg, T, D, H, g);
        matmul(xn, wu, T, D, H, u);
        for (int64_t i = 0; i < T * H; i++)
            g[i] = g[i] / (1 + exp(-g[i])) * u[i];
        matmul(g, wd, T, H, D, o);
        for (int64_t i = 0; i < T * D; i++)
            x[i] += o[i];
        free(an), free(wq), free(wk), free(wv), free(wo), free(fn), free(wg), free(wu), free(wd);
    }
    double *fnorm = f64(r, "model.norm.weight%.0ld", 0, D);
    double *head = r->tied ? f64(r, "model.embed_tokens.weight%.0ld", 0, r->vocab * D)
                           : f64(r, "lm_head.weight%.0ld", 0, r->vocab * D);
    norm(x, fnorm, T, D, r->eps, xn);
    matmul(xn, head, T, D, r->vocab, logits);
    free(fnorm), free(head), free(emb), free(x), free(xn), free(q), free(k), free(v);
    free(att), free(o), free(g), free(u), free(sc);
}

static void ref_open(ref *r)
{
    /* fixtures/base-tiny/config.json */
    *r = (ref){NULL, 32, 48, 2, 4, 2, 8, 64, 1e-5, 10000.0, 0, 1, 1, 1, 1, false, false};
    assert_ok(actl_ckpt_open(TINY, &r->ck));
}

static double log_softmax(const double *l, int64_t n, int64_t i)
{
    double mx = l[0], z = 0;
    for (int64_t j = 1; j < n; j++)
        mx = fmax(mx, l[j]);
    for (int64_t j = 0; j < n; j++)
        z += exp(l[j] - mx);
    return l[i] - mx - log(z);
}

/* ---- helpers ---------------------------------------------------------------- */

static actl_model *load(const char *path)
{
    actl_model *m = NULL;
    assert_ok(actl_model_load(path, 0, &m));
    return m;
}

static actl_batch *batch(const actl_model *m, int max_seqs, int64_t ctx)
{
    actl_batch_opts o = actl_batch_default_opts();
    o.max_seqs = max_seqs;
    o.max_ctx = ctx;
    actl_batch *b = NULL;
    assert_ok(actl_batch_new(m, &o, &b));
    return b;
}

static int add(actl_batch *b, const int32_t *p, size_t n, int64_t max_tokens)
{
    actl_request r = actl_request_default();
    r.prompt = p;
    r.n_prompt = n;
    r.max_tokens = max_tokens;
    int s = -1;
    assert_ok(actl_batch_add(b, &r, &s));
    return s;
}

static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* ---- HF transformers' logits (acceptance 2) ------------------------------- */

static void test_decode__matches_hf_corpus_logits_and_greedy(void **state)
{
    (void)state;
    REQUIRE_SHARED(HF_TINY "/corpus.json");
    char *text = NULL;
    size_t len = 0;
    assert_ok(actl__read_file(HF_TINY "/corpus.json", 1 << 20, &text, &len));
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "model_cases");
    assert_int_equal(json_array_size(cases), 3);
    actl_model *m = load(HF_TINY);
    /* all three in one batch, each greedy for its 4-token continuation */
    actl_batch *b = batch(m, 4, 0);
    int seq[3];
    int32_t prompt[3][8];
    for (size_t c = 0; c < 3; c++) {
        json_t *ids = json_object_get(json_array_get(cases, c), "input_ids");
        size_t n = json_array_size(ids);
        for (size_t i = 0; i < n; i++)
            prompt[c][i] = (int32_t)json_integer_value(json_array_get(ids, i));
        seq[c] = add(b, prompt[c], n, 4);
    }
    int running = -1;
    assert_ok(actl_batch_step(b, &running));
    assert_int_equal(running, 3);
    for (size_t c = 0; c < 3; c++) {
        json_t *cs = json_array_get(cases, c);
        const float *lg = actl_batch_logits(b, seq[c]);
        assert_non_null(lg);
        const char *key;
        json_t *val;
        size_t checked = 0;
        json_object_foreach(json_object_get(cs, "sampled_logits"), key, val) {
            long id = strtol(key, NULL, 10);
            double want = json_real_value(val);
            if (fabs(lg[id] - want) > 1e-5)
                fail_msg("case %zu id %ld: %.9g, HF %.9g", c, id, (double)lg[id], want);
            checked++;
        }
        assert_int_equal(checked, 11);
        const int32_t *ids;
        assert_int_equal(actl_batch_tokens(b, seq[c], &ids, NULL), 1);
        assert_int_equal(ids[0], json_integer_value(json_object_get(cs, "greedy_token")));
    }
    while (running)
        assert_ok(actl_batch_step(b, &running));
    for (size_t c = 0; c < 3; c++) {
        json_t *cont = json_object_get(json_array_get(cases, c), "greedy_continuation");
        const int32_t *ids;
        assert_int_equal(actl_batch_tokens(b, seq[c], &ids, NULL), 4);
        for (size_t i = 0; i < 4; i++)
            assert_int_equal(ids[i], json_integer_value(json_array_get(cont, i)));
        assert_int_equal(actl_batch_finished(b, seq[c]), ACTL_FINISH_LENGTH);
    }
    actl_batch_free(b);
    actl_model_free(m);
    json_decref(root);
    free(text);
}

/* ---- the fp64 forward ------------------------------------------------------ */

#define NP 5
static const size_t plen[NP] = {1, 3, 7, 12, 2};
#define NGEN 6

static void prompts(int32_t p[NP][16])
{
    uint32_t s = 7;
    for (int i = 0; i < NP; i++)
        for (size_t j = 0; j < plen[i]; j++)
            p[i][j] = (int32_t)(lcg(&s) % 64);
}

/* Runs the prompts in one batch, three at first and the rest joining
 * after two steps (so that a step mixes prefill and decode); records each
 * sequence's logits per generated token. */
static void run_batch(const actl_model *m, int32_t p[NP][16], float lg[NP][NGEN][64],
                      int32_t out[NP][NGEN], int only)
{
    actl_batch *b = batch(m, NP, 64);
    int seq[NP];
    for (int i = 0; i < NP; i++)
        seq[i] = -1;
    int steps = 0, running = 0;
    do {
        for (int i = 0; i < NP; i++)
            if (seq[i] < 0 && (only < 0 ? (i < 3 || steps >= 2) : i == only))
                seq[i] = add(b, p[i], plen[i], NGEN);
        assert_ok(actl_batch_step(b, &running));
        steps++;
        for (int i = 0; i < NP; i++) {
            if (seq[i] < 0)
                continue;
            size_t n = actl_batch_tokens(b, seq[i], NULL, NULL);
            const float *l = actl_batch_logits(b, seq[i]);
            if (n > 0 && n <= NGEN && l)
                memcpy(lg[i][n - 1], l, sizeof lg[i][n - 1]);
        }
    } while (running || (only < 0 && steps < 3));
    for (int i = 0; i < NP; i++) {
        if (seq[i] < 0)
            continue;
        const int32_t *ids;
        const float *lp;
        assert_int_equal(actl_batch_tokens(b, seq[i], &ids, &lp), NGEN);
        memcpy(out[i], ids, sizeof out[i]);
        /* each token's log-probability under its own logits */
        for (int t = 0; t < NGEN; t++) {
            double l64[64];
            for (int j = 0; j < 64; j++)
                l64[j] = lg[i][t][j];
            assert_float_equal(lp[t], log_softmax(l64, 64, ids[t]), 1e-5);
        }
    }
    actl_batch_free(b);
}

static void test_decode__batched_prefill_and_decode_match_fp64_forward(void **state)
{
    (void)state;
    ref r;
    ref_open(&r);
    actl_model *m = load(TINY);
    actl_model_info in;
    actl_model_info_get(m, &in);
    assert_int_equal(in.dim, r.dim);
    assert_int_equal(in.kv_heads, r.kvh);
    assert_int_equal(in.head_dim, r.hd);
    int32_t p[NP][16];
    prompts(p);
    static float lg[NP][NGEN][64];
    int32_t out[NP][NGEN];
    run_batch(m, p, lg, out, -1);
    for (int i = 0; i < NP; i++) {
        int32_t full[16 + NGEN];
        size_t T = plen[i] + NGEN;
        memcpy(full, p[i], plen[i] * sizeof *full);
        memcpy(full + plen[i], out[i], sizeof out[i]);
        double *want = malloc(T * 64 * sizeof *want);
        naive_forward(&r, full, (int64_t)T, want);
        for (int t = 0; t < NGEN; t++) {
            const double *w = want + (plen[i] - 1 + (size_t)t) * 64;
            double err = 0;
            int best = 0;
            for (int j = 0; j < 64; j++) {
                err = fmax(err, fabs(lg[i][t][j] - w[j]));
                if (w[j] > w[best])
                    best = j;
            }
            if (err > 1e-4)
                fail_msg("prompt %d token %d: logits off by %g", i, t, err);
            /* greedy picks the fp64 argmax (the margin here is far above 1e-4) */
            assert_int_equal(out[i][t], best);
        }
        free(want);
    }
    actl_model_free(m);
    actl_ckpt_close(r.ck);
}

static void test_decode__batch_equals_each_sequence_alone(void **state)
{
    (void)state;
    actl_model *m = load(TINY);
    int32_t p[NP][16];
    prompts(p);
    static float lg[NP][NGEN][64], one[NP][NGEN][64];
    int32_t out[NP][NGEN], alone[NP][NGEN];
    run_batch(m, p, lg, out, -1);
    for (int i = 0; i < NP; i++)
        run_batch(m, p, one, alone, i);
    for (int i = 0; i < NP; i++)
        for (int t = 0; t < NGEN; t++) {
            assert_int_equal(out[i][t], alone[i][t]);
            for (int j = 0; j < 64; j++)
                assert_float_equal(lg[i][t][j], one[i][t][j], 1e-5);
        }
    actl_model_free(m);
}

static void test_decode__score_sums_continuation_logprobs(void **state)
{
    (void)state;
    ref r;
    ref_open(&r);
    actl_model *m = load(TINY);
    actl_batch *b = batch(m, 4, 64);
    const int32_t prompt[4] = {1, 17, 33, 5}, cont[5] = {9, 60, 2, 41, 8};
    /* a generating sequence beside the scored ones */
    int g = add(b, prompt, 2, 3);
    actl_request rq = actl_request_default();
    rq.prompt = prompt;
    rq.n_prompt = 4;
    rq.score = cont;
    rq.n_score = 5;
    int s = -1, s1 = -1;
    assert_ok(actl_batch_add(b, &rq, &s));
    rq.n_prompt = 1;
    assert_ok(actl_batch_add(b, &rq, &s1));
    double sum;
    assert_err(actl_batch_score(b, s, &sum, NULL), ACTL_EINVAL, "no scored continuation");
    int running = 0;
    assert_ok(actl_batch_step(b, &running));
    assert_int_equal(actl_batch_finished(b, s), ACTL_FINISH_LENGTH);
    assert_int_equal(actl_batch_tokens(b, s, NULL, NULL), 0);
    for (int k = 0; k < 2; k++) {
        int sq = k ? s1 : s;
        size_t np = k ? 1 : 4;
        int32_t full[9];
        memcpy(full, prompt, np * sizeof *full);
        memcpy(full + np, cont, sizeof cont);
        double want[9 * 64], total = 0;
        naive_forward(&r, full, (int64_t)(np + 5), want);
        const float *per;
        assert_ok(actl_batch_score(b, sq, &sum, &per));
        for (size_t j = 0; j < 5; j++) {
            double lp = log_softmax(want + (np - 1 + j) * 64, 64, cont[j]);
            assert_float_equal(per[j], lp, 1e-4);
            total += lp;
        }
        assert_float_equal(sum, total, 1e-4);
    }
    while (running)
        assert_ok(actl_batch_step(b, &running));
    assert_err(actl_batch_score(b, g, &sum, NULL), ACTL_EINVAL, "no scored continuation");
    actl_batch_free(b);
    actl_model_free(m);
    actl_ckpt_close(r.ck);
}

static void test_decode__prompt_only_request_gives_last_logits(void **state)
{
    (void)state;
    ref r;
    ref_open(&r);
    actl_model *m = load(TINY);
    actl_batch *b = batch(m, 2, 0);
    const int32_t prompt[3] = {4, 8, 15};
    int s = add(b, prompt, 3, 0);
    assert_null(actl_batch_logits(b, s));
    int running = -1;
    assert_ok(actl_batch_step(b, &running));
    assert_int_equal(running, 0);
    assert_int_equal(actl_batch_finished(b, s), ACTL_FINISH_LENGTH);
    double want[3 * 64];
    naive_forward(&r, prompt, 3, want);
    const float *l = actl_batch_logits(b, s);
    for (int j = 0; j < 64; j++)
        assert_float_equal(l[j], want[2 * 64 + j], 1e-4);
    actl_batch_free(b);
    actl_model_free(m);
    actl_ckpt_close(r.ck);
}

static void test_decode__stop_id_ends_generation(void **state)
{
    (void)state;
    actl_model *m = load(TINY);
    /* find the greedy continuation, then stop at its third token */
    actl_batch *b = batch(m, 2, 0);
    const int32_t prompt[2] = {1, 30};
    int s = add(b, prompt, 2, 8);
    int running = 1;
    while (running)
        assert_ok(actl_batch_step(b, &running));
    const int32_t *ids;
    assert_int_equal(actl_batch_tokens(b, s, &ids, NULL), 8);
    int32_t stop = ids[2];
    size_t first = 0;
    while (ids[first] != stop)
        first++;
    actl_batch_remove(b, s);
    actl_request r = actl_request_default();
    r.prompt = prompt;
    r.n_prompt = 2;
    r.max_tokens = 8;
    r.stop_ids = &stop;
    r.n_stop_ids = 1;
    assert_ok(actl_batch_add(b, &r, &s));
    running = 1;
    while (running)
        assert_ok(actl_batch_step(b, &running));
    assert_int_equal(actl_batch_finished(b, s), ACTL_FINISH_STOP);
    assert_int_equal(actl_batch_tokens(b, s, &ids, NULL), first + 1);
    assert_int_equal(ids[first], stop);
    actl_batch_free(b);
    actl_model_free(m);
}

static void test_decode__seeded_sampling_ignores_batch_company(void **state)
{
    (void)state;
    actl_model *m = load(TINY);
    const int32_t prompt[3] = {1, 2, 3};
    int32_t got[2][10];
    for (int k = 0; k < 2; k++) {
        actl_batch *b = batch(m, 4, 0);
        if (k)
            add(b, prompt, 1, 10); /* company before it */
        actl_request r = actl_request_default();
        r.prompt = prompt;
        r.n_prompt = 3;
        r.max_tokens = 10;
        r.temperature = 1.5f;
        r.top_p = 0.95f;
        r.seed = 42;
        int s;
        assert_ok(actl_batch_add(b, &r, &s));
        int running = 1;
        while (running)
            assert_ok(actl_batch_step(b, &running));
        const int32_t *ids;
        assert_int_equal(actl_batch_tokens(b, s, &ids, NULL), 10);
        memcpy(got[k], ids, sizeof got[k]);
        actl_batch_free(b);
    }
    assert_memory_equal(got[0], got[1], sizeof got[0]);
    actl_model_free(m);
}

/* ---- config features base-tiny lacks, against the fp64 forward ------------ */

enum { FEAT_LINEAR, FEAT_LLAMA3, FEAT_QWEN2, FEAT_TIED };
#define FEAT_T 20
#define FEAT_GEN 4

static actl_tensor *rand_tensor(const char *name, int ndim, const int64_t *shape, double scale,
                                double offset, uint32_t *s)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *f = malloc((size_t)n * sizeof *f);
    for (int64_t i = 0; i < n; i++)
        f[i] = (float)(offset + scale * ((double)(lcg(s) % 20001) / 10000.0 - 1.0));
    actl_tensor *t = NULL;
    assert_ok(actl_tensor_new(name, ACTL_F32, ndim, shape, f, &t));
    free(f);
    return t;
}

/* A small HF checkpoint at dir with head_dim 12 (not hidden / heads) and
 * the feature f; r describes it to the fp64 forward. */
static void make_feature_ckpt(const char *dir, int f, ref *r)
{
    *r = (ref){NULL, 32, 48, 2, 4, 2, 12, 64, 1e-5, 10000.0, 0, 1, 1, 1, 1, false, false};
    const char *rope = "null", *type = "llama", *arch = "LlamaForCausalLM";
    if (f == FEAT_LINEAR) {
        rope = "{\"rope_type\": \"linear\", \"factor\": 4.0}";
        r->rope = 1, r->factor = 4;
    } else if (f == FEAT_LLAMA3) {
        /* The shortest wavelength is 2 pi (i = 0), so the high-frequency band
         * needs orig_max / high_freq_factor > 2 pi: orig_max 32 gives bands
         * at 8 and 32, and theta 100 spreads the six wavelengths over all
         * three (checked in the test). */
        rope = "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
               "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 32}";
        r->rope = 2, r->factor = 8, r->low_ff = 1, r->high_ff = 4, r->orig_max = 32;
        r->theta = 100.0;
    } else if (f == FEAT_QWEN2) {
        type = "qwen2", arch = "Qwen2ForCausalLM";
        r->bias = true;
    } else {
        r->tied = true;
    }
    uint32_t s = 1234u + (uint32_t)f;
    int64_t D = r->dim, H = r->hidden, qd = r->heads * r->hd, kd = r->kvh * r->hd;
    int64_t emb[2] = {r->vocab, D}, nrm[1] = {D};
    int64_t shp[7][2] = {{qd, D}, {kd, D}, {kd, D}, {D, qd}, {H, D}, {H, D}, {D, H}};
    static const char *const proj[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                        "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",
                                        "mlp.down_proj"};
    actl_tensor *ts[3 + 2 * 12];
    size_t k = 0;
    ts[k++] = rand_tensor("model.embed_tokens.weight", 2, emb, 1.0, 0, &s);
    if (!r->tied)
        ts[k++] = rand_tensor("lm_head.weight", 2, emb, 0.3, 0, &s);
    ts[k++] = rand_tensor("model.norm.weight", 1, nrm, 0.2, 1, &s);
    for (int l = 0; l < 2; l++) {
        char name[128];
        for (int p = 0; p < 7; p++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, proj[p]);
            /* q and k large enough that attention is far from uniform */
            ts[k++] = rand_tensor(name, 2, shp[p], p < 2 ? 0.6 : 0.3, 0, &s);
            if (r->bias && p < 3) {
                snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, proj[p]);
                ts[k++] = rand_tensor(name, 1, shp[p], 0.5, 0, &s);
            }
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        ts[k++] = rand_tensor(name, 1, nrm, 0.2, 1, &s);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        ts[k++] = rand_tensor(name, 1, nrm, 0.2, 1, &s);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_ok(actl_st_write(path, (const actl_tensor *const *)ts, k, NULL));
    for (size_t i = 0; i < k; i++)
        actl_tensor_free(ts[i]);
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"hidden_size\": 32, "
             "\"intermediate_size\": 48, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"head_dim\": 12, \"vocab_size\": 64, "
             "\"max_position_embeddings\": 128, \"rms_norm_eps\": 1e-05, "
             "\"rope_theta\": %.1f, \"rope_scaling\": %s, \"tie_word_embeddings\": %s, "
             "\"hidden_act\": \"silu\", \"torch_dtype\": \"float32\"}",
             arch, type, r->theta, rope, r->tied ? "true" : "false");
    snprintf(path, sizeof path, "%s/config.json", dir);
    test_write_text(path, cfg);
    assert_ok(actl_ckpt_open(dir, &r->ck));
}

/* A 20-token prompt and FEAT_GEN greedy steps through the batch, each
 * step's logits against the fp64 forward of the whole sequence so far. */
static void check_feature(int f)
{
    char *tmp = test_tmpdir();
    ref r;
    make_feature_ckpt(tmp, f, &r);
    if (f == FEAT_LLAMA3) {
        /* every llama3 band occurs: kept, smoothed and divided */
        int band[3] = {0, 0, 0};
        for (int64_t i = 0; i < r.hd / 2; i++) {
            double wl = 2 * M_PI * pow(r.theta, 2.0 * (double)i / (double)r.hd);
            band[wl < r.orig_max / r.high_ff ? 0 : wl > r.orig_max / r.low_ff ? 2 : 1]++;
        }
        if (!band[0] || !band[1] || !band[2])
            fail_msg("llama3 bands %d/%d/%d: one is empty", band[0], band[1], band[2]);
    }
    actl_model *m = load(tmp);
    actl_model_info in;
    actl_model_info_get(m, &in);
    assert_int_equal(in.head_dim, 12);
    int32_t full[FEAT_T + FEAT_GEN];
    uint32_t s = 99u + (uint32_t)f;
    for (int i = 0; i < FEAT_T; i++)
        full[i] = (int32_t)(lcg(&s) % 64);
    static float lg[FEAT_GEN][64];
    actl_batch *b = batch(m, 1, 64);
    int seq = add(b, full, FEAT_T, FEAT_GEN), running = 1;
    while (running) {
        assert_ok(actl_batch_step(b, &running));
        size_t n = actl_batch_tokens(b, seq, NULL, NULL);
        memcpy(lg[n - 1], actl_batch_logits(b, seq), sizeof lg[n - 1]);
    }
    const int32_t *ids;
    assert_int_equal(actl_batch_tokens(b, seq, &ids, NULL), FEAT_GEN);
    memcpy(full + FEAT_T, ids, FEAT_GEN * sizeof *full);
    double *want = malloc((FEAT_T + FEAT_GEN) * 64 * sizeof *want);
    naive_forward(&r, full, FEAT_T + FEAT_GEN, want);
    for (int t = 0; t < FEAT_GEN; t++) {
        const double *w = want + (FEAT_T - 1 + t) * 64;
        double err = 0, scale = 1;
        for (int j = 0; j < 64; j++) {
            err = fmax(err, fabs(lg[t][j] - w[j]));
            scale = fmax(scale, fabs(w[j]));
        }
        if (err > 1e-4 * scale)
            fail_msg("feature %d token %d: logits off by %g (scale %g)", f, t, err, scale);
    }
    free(want);
    actl_batch_free(b);
    actl_model_free(m);
    actl_ckpt_close(r.ck);
    test_rmtree(tmp);
    free(tmp);
}

static void test_decode__linear_and_llama3_rope_scaling_match_fp64_forward(void **state)
{
    (void)state;
    check_feature(FEAT_LINEAR);
    check_feature(FEAT_LLAMA3);
}

static void test_decode__qwen2_biases_and_tied_lm_head_match_fp64_forward(void **state)
{
    (void)state;
    check_feature(FEAT_QWEN2);
    check_feature(FEAT_TIED);
}

/* ---- mixed-adapter batches (acceptance 4) ---------------------------------- */

#define MIX_GEN 4

typedef struct mix_case {
    const char *adapters[2]; /* fixture names, applied in order (two: a stack) */
    bool mergeable;
} mix_case;

static const mix_case mix[] = {
    {{"lora", NULL}, true},           {{"road-1", NULL}, true},
    {{"lora-dora", NULL}, true},      {{"road-2", NULL}, true},
    {{"bottleneck-series", NULL}, false}, {{"road-4", NULL}, true},
    {{"mos", NULL}, true},            {{"bottleneck-parallel", NULL}, false},
    {{"road-1", "lora"}, true},       {{NULL, NULL}, true},
    {{"lora-patterns", NULL}, true},
    {{"lora", NULL}, true}, /* the first adapter again, in a distant slot */
};
#define NMIX (sizeof mix / sizeof mix[0])

static void mix_prompt(size_t i, int32_t *p, size_t *n)
{
    uint32_t s = (uint32_t)(11 + i);
    *n = 1 + i % 5;
    for (size_t j = 0; j < *n; j++)
        p[j] = (int32_t)(lcg(&s) % 64);
}

/* Loads the fixtures case c names into ads[] / in[]; returns how many. */
static size_t mix_inputs(const mix_case *c, actl_adapter **ads, actl_input *in)
{
    size_t n = 0;
    for (; n < 2 && c->adapters[n]; n++) {
        char dir[256];
        snprintf(dir, sizeof dir, FIXTURES "/adapters/base-tiny/%s", c->adapters[n]);
        assert_ok(actl_adapter_load(dir, &ads[n]));
        in[n] = (actl_input){ads[n], 1.0, c->adapters[n], NULL};
    }
    return n;
}

/* Greedy MIX_GEN tokens of each sequence: its logits per step into lg. */
static void mix_run(const actl_model *m, const size_t *which, size_t n, bool with_adapters,
                    float (*lg)[MIX_GEN][64])
{
    actl_batch *b = batch(m, (int)n, 32);
    int seq[NMIX];
    actl_adapter *ads[NMIX][2] = {{NULL}};
    for (size_t k = 0; k < n; k++) {
        const mix_case *c = &mix[which[k]];
        actl_input in[2];
        size_t na = with_adapters ? mix_inputs(c, ads[k], in) : 0;
        int32_t p[8];
        size_t np;
        mix_prompt(which[k], p, &np);
        actl_request r = actl_request_default();
        r.prompt = p;
        r.n_prompt = np;
        r.max_tokens = MIX_GEN;
        if (na)
            assert_ok(actl_batch_adapter(b, in, na, &r.adapter));
        assert_ok(actl_batch_add(b, &r, &seq[k]));
    }
    int running = 1;
    while (running) {
        assert_ok(actl_batch_step(b, &running));
        for (size_t k = 0; k < n; k++) {
            size_t t = actl_batch_tokens(b, seq[k], NULL, NULL);
            memcpy(lg[k][t - 1], actl_batch_logits(b, seq[k]), sizeof lg[k][t - 1]);
        }
    }
    actl_batch_free(b);
    for (size_t k = 0; k < n; k++)
        actl_adapter_free(ads[k][0]), actl_adapter_free(ads[k][1]);
}

static double max_diff(const float (*a)[64], const float (*b)[64])
{
    double d = 0;
    for (int t = 0; t < MIX_GEN; t++)
        for (int j = 0; j < 64; j++)
            d = fmax(d, fabs(a[t][j] - b[t][j]));
    return d;
}

static void test_decode__mixed_adapter_batch_equals_each_alone_merged(void **state)
{
    (void)state;
    actl_model *m = load(TINY);
    size_t all[NMIX];
    for (size_t i = 0; i < NMIX; i++)
        all[i] = i;
    static float mixed[NMIX][MIX_GEN][64], alone[MIX_GEN][64], base[MIX_GEN][64];
    mix_run(m, all, NMIX, true, mixed);
    char *tmp = test_tmpdir();
    for (size_t i = 0; i < NMIX; i++) {
        const mix_case *c = &mix[i];
        mix_run(m, &i, 1, false, &base);
        if (c->mergeable && c->adapters[0]) {
            actl_adapter *ads[2] = {NULL, NULL};
            actl_input in[2];
            size_t na = mix_inputs(c, ads, in);
            char out[512];
            snprintf(out, sizeof out, "%s/merged-%zu", tmp, i);
            actl_merge_opts mo = actl_merge_default_opts();
            assert_ok(actl_merge(TINY, out, in, na, &mo, NULL));
            actl_model *mm = load(out);
            mix_run(mm, &i, 1, false, &alone);
            actl_model_free(mm);
            actl_adapter_free(ads[0]);
            actl_adapter_free(ads[1]);
        } else {
            /* bottleneck adapters cannot be merged: alone, unmerged; none: the base */
            mix_run(m, &i, 1, true, &alone);
        }
        double d = max_diff((const float(*)[64])mixed[i], (const float(*)[64])alone);
        if (d > 1e-4)
            fail_msg("case %zu (%s): mixed batch off by %g from alone", i,
                     c->adapters[0] ? c->adapters[0] : "none", d);
        double moved = max_diff((const float(*)[64])mixed[i], (const float(*)[64])base);
        if (c->adapters[0] && moved < 1e-3)
            fail_msg("case %zu (%s): the adapter changes the logits by only %g", i,
                     c->adapters[0], moved);
    }
    test_rmtree(tmp);
    free(tmp);
    actl_model_free(m);
}

/* ---- refusals (acceptance 6) ----------------------------------------------- */

static void test_decode__refuses_bad_requests(void **state)
{
    (void)state;
    actl_model *m = load(TINY);
    actl_batch *b = batch(m, 2, 16);
    int32_t p[20] = {0};
    actl_request r = actl_request_default();
    r.prompt = p;
    r.n_prompt = 10;
    r.max_tokens = 7;
    int s = -1;
    assert_err(actl_batch_add(b, &r, &s), ACTL_ELIMIT,
               "a prompt of 10 tokens, a continuation of 0 and 7 new tokens exceed the "
               "context of 16");
    r.n_prompt = 20;
    r.max_tokens = 0;
    assert_err(actl_batch_add(b, &r, &s), ACTL_ELIMIT, "context of 16");
    r.n_prompt = 4;
    r.score = p;
    r.n_score = 13;
    assert_err(actl_batch_add(b, &r, &s), ACTL_ELIMIT, "a continuation of 13");
    r.score = NULL;
    r.max_tokens = INT64_MAX;
    assert_err(actl_batch_add(b, &r, &s), ACTL_ELIMIT, "context of 16");
    r.max_tokens = 2;
    p[3] = 64;
    assert_err(actl_batch_add(b, &r, &s), ACTL_EINVAL, "prompt token 3 is id 64, outside");
    p[3] = -1;
    assert_err(actl_batch_add(b, &r, &s), ACTL_EINVAL, "outside the vocabulary of 64");
    p[3] = 0;
    r.adapter = 1;
    assert_err(actl_batch_add(b, &r, &s), ACTL_EINVAL, "unknown adapter handle 1");
    r.adapter = -3;
    assert_err(actl_batch_add(b, &r, &s), ACTL_EINVAL, "unknown adapter handle -3");
    r.adapter = 0;
    r.n_prompt = 0;
    assert_err(actl_batch_add(b, &r, &s), ACTL_EINVAL, "at least one token");
    r.n_prompt = 4;
    r.temperature = -1.0f;
    assert_err(actl_batch_add(b, &r, &s), ACTL_EINVAL, "out of range");
    r.temperature = 0.0f;
    assert_int_equal(s, -1);
    /* two slots: the third is refused until one is removed */
    int s0, s1;
    assert_ok(actl_batch_add(b, &r, &s0));
    assert_ok(actl_batch_add(b, &r, &s1));
    assert_err(actl_batch_add(b, &r, &s), ACTL_ELIMIT, "all 2 sequence slots are in use");
    actl_batch_remove(b, s0);
    assert_ok(actl_batch_add(b, &r, &s));
    assert_int_equal(s, s0);
    /* unknown slots read as nothing, never a crash */
    assert_null(actl_batch_logits(b, 7));
    assert_int_equal(actl_batch_tokens(b, -1, NULL, NULL), 0);
    assert_int_equal(actl_batch_finished(b, 5), ACTL_FINISH_LENGTH);
    double sum;
    assert_err(actl_batch_score(b, 9, &sum, NULL), ACTL_EINVAL, "no scored continuation");
    actl_batch_remove(b, 12);
    actl_batch_free(b);

    actl_batch_opts o = actl_batch_default_opts();
    o.max_seqs = 0;
    assert_err(actl_batch_new(m, &o, &b), ACTL_EINVAL, "max_seqs");
    assert_null(b);
    actl_model_free(m);
}

/* ---- llama2.c's stories260K (acceptance 1) ---------------------------------- */

static char *read_text(const char *path)
{
    char *t = NULL;
    size_t n = 0;
    assert_ok(actl__read_file(path, 1 << 20, &t, &n));
    return t;
}

/* Runs from BOS for up to n new tokens (the expected files' -n), ending at
 * BOS as llama2.c's generate loop does, and returns the text printed. */
static char *llama2c_run(float temperature, float top_p, uint64_t seed, int n_new)
{
    actl_model *m = load(L2C "/stories260K.bin");
    actl_tokenizer *tok = NULL;
    assert_ok(actl_tokenizer_load(L2C "/tok512.bin", NULL, &tok));
    actl_batch *b = batch(m, 1, 0);
    const int32_t bos = 1;
    actl_request r = actl_request_default();
    r.prompt = &bos;
    r.n_prompt = 1;
    r.max_tokens = n_new;
    r.temperature = temperature;
    r.top_p = top_p;
    r.seed = seed;
    r.stop_ids = &bos;
    r.n_stop_ids = 1;
    int s, running = 1;
    assert_ok(actl_batch_add(b, &r, &s));
    while (running)
        assert_ok(actl_batch_step(b, &running));
    const int32_t *ids;
    size_t n = actl_batch_tokens(b, s, &ids, NULL);
    if (n && ids[n - 1] == bos)
        n--;
    char *text = NULL;
    size_t len = 0;
    assert_ok(actl_tokenizer_decode(tok, ids, n, &text, &len));
    actl_batch_free(b);
    actl_tokenizer_free(tok);
    actl_model_free(m);
    return text;
}

static void check_text(const char *got, const char *want_path)
{
    char *want = read_text(want_path);
    /* the expected files may end in a newline run.c prints after generating */
    size_t wl = strlen(want);
    while (wl && want[wl - 1] == '\n')
        wl--;
    size_t gl = strlen(got);
    if (gl != wl || memcmp(got, want, wl) != 0)
        fail_msg("got:\n%s\nwant:\n%.*s", got, (int)wl, want);
    free(want);
}

static void test_decode__stories260k_greedy_matches_llama2c(void **state)
{
    (void)state;
    REQUIRE_SHARED(L2C "/stories260K.bin");
    REQUIRE_SHARED(L2C "/expected/stories260K_t0_n200.txt");
    char *got = llama2c_run(0.0f, 1.0f, 0, 200);
    check_text(got, L2C "/expected/stories260K_t0_n200.txt");
    free(got);
    REQUIRE_SHARED(L2C "/expected/stories260K_t0_n256.txt");
    got = llama2c_run(0.0f, 1.0f, 0, 256);
    check_text(got, L2C "/expected/stories260K_t0_n256.txt");
    free(got);
}

static void test_decode__stories260k_top_p_sampling_matches_llama2c(void **state)
{
    (void)state;
    REQUIRE_SHARED(L2C "/stories260K.bin");
    REQUIRE_SHARED(L2C "/expected/stories260K_t1.0_p0.9_s133742_n256.txt");
    char *got = llama2c_run(1.0f, 0.9f, 133742, 256);
    check_text(got, L2C "/expected/stories260K_t1.0_p0.9_s133742_n256.txt");
    free(got);
}

/* The same checks with every job (attention, adapter posts, sampling) on
 * the pool's threads, as large models run them. */
static int all_parallel(void **state)
{
    (void)state;
    actl__decode_parallel_min = 0;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode__matches_hf_corpus_logits_and_greedy),
        cmocka_unit_test(test_decode__batched_prefill_and_decode_match_fp64_forward),
        cmocka_unit_test(test_decode__linear_and_llama3_rope_scaling_match_fp64_forward),
        cmocka_unit_test(test_decode__qwen2_biases_and_tied_lm_head_match_fp64_forward),
        cmocka_unit_test(test_decode__batch_equals_each_sequence_alone),
        cmocka_unit_test(test_decode__score_sums_continuation_logprobs),
        cmocka_unit_test(test_decode__prompt_only_request_gives_last_logits),
        cmocka_unit_test(test_decode__stop_id_ends_generation),
        cmocka_unit_test(test_decode__seeded_sampling_ignores_batch_company),
        cmocka_unit_test(test_decode__mixed_adapter_batch_equals_each_alone_merged),
        cmocka_unit_test(test_decode__refuses_bad_requests),
        cmocka_unit_test(test_decode__stories260k_greedy_matches_llama2c),
        cmocka_unit_test(test_decode__stories260k_top_p_sampling_matches_llama2c),
    };
    int failed = cmocka_run_group_tests_name("decode", tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("decode on the pool", tests, all_parallel, NULL);
    return failed;
}
