/* test_compose.c: actl_compose (DESIGN.md 9), issue 5 acceptance 3: cat and svd against the
 * inputs' deltas summed with plain fp64 loops, the reported SVD error against singular values
 * built into the inputs, TIES / magnitude / DARE on hand-worked matrices and against the
 * documented random stream, RoAd sequential against applying A then B to a vector, union
 * commuting, the lineage, and every refusal.
 *
 * Inputs are built here (actl_adapter_new from known matrices) or are the base-tiny fixtures;
 * every expected value is computed in this file, never by the library. */
#include "testutil.h"

#include <math.h>
#include <regex.h>

#include <jansson.h>
#include <lapacke.h>

#include "internal.h"

#define ADAPTERS FIXTURES "/adapters/base-tiny"
#define Q0 "model.layers.0.self_attn.q_proj"
#define V0 "model.layers.0.self_attn.v_proj"
#define O0 "model.layers.0.self_attn.o_proj"
#define Q1 "model.layers.1.self_attn.q_proj"

/* ---- building inputs ----------------------------------------------------------- */

/* A small deterministic generator for test data (xorshift64*), in [-1, 1). */
static uint64_t rnd_state = 0x243F6A8885A308D3ull;
static double rnd(void)
{
    rnd_state ^= rnd_state >> 12;
    rnd_state ^= rnd_state << 25;
    rnd_state ^= rnd_state >> 27;
    return (double)((rnd_state * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-52 - 1.0;
}

/* One module of a generated LoRA: A [r, in], B [out, r] as doubles (NULL: random). */
typedef struct tmod {
    const char *name;
    int out, in, r;
    const double *A, *B;
    const double *bias; /* [out] or NULL */
} tmod;

static actl_tensor *f32_tensor(const char *name, int ndim, const int64_t *shape,
                               const double *v)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++)
        f[i] = v ? (float)v[i] : (float)rnd();
    actl_tensor *t = NULL;
    assert_ok(actl_tensor_new(name, ACTL_F32, ndim, shape, f, &t));
    free(f);
    return t;
}

/* A LoRA adapter from a config and modules. emb: embedding keys instead of linear ones. */
static actl_adapter *make_lora_kind(const char *config, const tmod *mods, size_t n, bool emb)
{
    actl_tensor *ts[64] = {0};
    size_t nt = 0;
    char key[256];
    for (size_t i = 0; i < n; i++) {
        int64_t sa[2] = {mods[i].r, mods[i].in}, sb[2] = {mods[i].out, mods[i].r};
        snprintf(key, sizeof key, ACTL_PEFT_PREFIX "%s%s", mods[i].name,
                 emb ? ".lora_embedding_A" : ".lora_A.weight");
        ts[nt++] = f32_tensor(key, 2, sa, mods[i].A);
        snprintf(key, sizeof key, ACTL_PEFT_PREFIX "%s%s", mods[i].name,
                 emb ? ".lora_embedding_B" : ".lora_B.weight");
        ts[nt++] = f32_tensor(key, 2, sb, mods[i].B);
        if (mods[i].bias) {
            int64_t sv[1] = {mods[i].out};
            snprintf(key, sizeof key, ACTL_PEFT_PREFIX "%s.lora_B.bias", mods[i].name);
            ts[nt++] = f32_tensor(key, 1, sv, mods[i].bias);
        }
    }
    actl_adapter *a = NULL;
    int rc = actl_adapter_new(config, (const actl_tensor *const *)ts, nt, "test", &a);
    for (size_t i = 0; i < nt; i++)
        actl_tensor_free(ts[i]);
    if (rc)
        fail_msg("make_lora: %s", actl_errmsg());
    return a;
}

static actl_adapter *make_lora(const char *config, const tmod *mods, size_t n)
{
    return make_lora_kind(config, mods, n, false);
}

/* A RoAd adapter: one module per name, alpha and theta random (alpha in [0.5, 1.5] so that
 * fractional weights apply), of the variant's length for `out` outputs. */
static actl_adapter *make_road(int variant, int group, const char *const *names,
                               const int *outs, size_t n)
{
    actl_tensor *ts[32] = {0};
    size_t nt = 0;
    char key[256], cfg[256];
    for (size_t i = 0; i < n; i++) {
        int64_t len = variant == 1 ? outs[i] / 2 : variant == 2 ? outs[i] : 2 * outs[i];
        double *al = malloc((size_t)len * sizeof *al), *th = malloc((size_t)len * sizeof *th);
        assert_non_null(al);
        assert_non_null(th);
        for (int64_t e = 0; e < len; e++) {
            al[e] = 1.0 + 0.5 * rnd();
            th[e] = 1.5 * rnd();
        }
        snprintf(key, sizeof key, ACTL_PEFT_PREFIX "%s.road_alpha", names[i]);
        ts[nt++] = f32_tensor(key, 1, &len, al);
        snprintf(key, sizeof key, ACTL_PEFT_PREFIX "%s.road_theta", names[i]);
        ts[nt++] = f32_tensor(key, 1, &len, th);
        free(al);
        free(th);
    }
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"ROAD\", \"variant\": \"road_%d\", \"group_size\": %d, "
             "\"base_model_name_or_path\": \"adapterctl/base-tiny\"}", variant, group);
    actl_adapter *a = NULL;
    int rc = actl_adapter_new(cfg, (const actl_tensor *const *)ts, nt, "test-road", &a);
    for (size_t i = 0; i < nt; i++)
        actl_tensor_free(ts[i]);
    if (rc)
        fail_msg("make_road: %s", actl_errmsg());
    return a;
}

static actl_input input_of(const actl_adapter *a, double w, const char *ref)
{
    actl_input in;
    in.adapter = a;
    in.weight = w;
    in.ref = ref;
    in.pack = NULL;
    return in;
}

/* ---- reading results ---------------------------------------------------------- */

/* A tensor's values as doubles (malloc'd); NULL when the key is absent. */
static double *values(const actl_adapter *a, const char *module, const char *suffix,
                      int64_t *n)
{
    char key[256];
    snprintf(key, sizeof key, ACTL_PEFT_PREFIX "%s%s", module, suffix);
    const actl_tensor *t = actl_adapter_find(a, key);
    if (!t)
        return NULL;
    int64_t numel = actl_tensor_numel(t);
    float *f = malloc((size_t)numel * sizeof *f);
    double *d = malloc((size_t)numel * sizeof *d);
    assert_non_null(f);
    assert_non_null(d);
    assert_ok(actl_tensor_to_f32(t, f));
    for (int64_t i = 0; i < numel; i++)
        d[i] = f[i];
    free(f);
    if (n)
        *n = numel;
    return d;
}

static actl_module_info module_of(const actl_adapter *a, const char *name)
{
    actl_module_info mi;
    for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
        assert_ok(actl_adapter_module(a, i, &mi));
        if (strcmp(mi.name, name) == 0)
            return mi;
    }
    fail_msg("no module '%s'", name);
    return mi;
}

static bool has_module(const actl_adapter *a, const char *name)
{
    actl_module_info mi;
    for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
        assert_ok(actl_adapter_module(a, i, &mi));
        if (strcmp(mi.name, name) == 0)
            return true;
    }
    return false;
}

/* D [out, in] += c * B A of module `name` with plain loops; false when a lacks it. The
 * scale is passed in, not read from the library. */
static bool add_delta(const actl_adapter *a, const char *name, double c, double *D, bool emb)
{
    int64_t na, nb;
    double *A = values(a, name, emb ? ".lora_embedding_A" : ".lora_A.weight", &na);
    double *B = values(a, name, emb ? ".lora_embedding_B" : ".lora_B.weight", &nb);
    if (!A || !B) {
        free(A);
        free(B);
        return false;
    }
    actl_module_info mi = module_of(a, name);
    int64_t r = mi.rank, out = nb / r, in = na / r;
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            double acc = 0;
            for (int64_t k = 0; k < r; k++)
                acc += B[o * r + k] * A[k * in + i];
            D[o * in + i] += c * acc;
        }
    free(A);
    free(B);
    return true;
}

/* ||x - y|| / ||y|| (Frobenius) */
static double rel_diff(const double *x, const double *y, size_t n)
{
    double d = 0, t = 0;
    for (size_t i = 0; i < n; i++) {
        d += (x[i] - y[i]) * (x[i] - y[i]);
        t += y[i] * y[i];
    }
    return t > 0 ? sqrt(d / t) : sqrt(d);
}

/* The composed LoRA carries scale 1 on every module: use_rslora false, alpha = r. */
static void assert_scale_one(const actl_adapter *res)
{
    actl_adapter_info info;
    actl_adapter_info_get(res, &info);
    assert_int_equal(info.kind, ACTL_KIND_LORA);
    assert_false(info.use_rslora);
    assert_true(info.alpha == (double)info.rank);
    for (size_t i = 0; i < actl_adapter_module_count(res); i++) {
        actl_module_info mi;
        assert_ok(actl_adapter_module(res, i, &mi));
        assert_true(mi.alpha == (double)mi.rank);
        assert_true(mi.scale == 1.0);
    }
}

/* ---- two generated inputs used by cat and svd ------------------------------------- */

#define CFG_A                                                                            \
    "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"base_model_name_or_path\": " \
    "\"adapterctl/base-tiny\", \"alpha_pattern\": {\"v_proj\": 2}}"
#define CFG_B                                                                            \
    "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 6, \"use_rslora\": true, "     \
    "\"rank_pattern\": {\"o_proj\": 5}, \"base_model_name_or_path\": \"adapterctl/base-tiny\"}"

typedef struct pair {
    actl_adapter *a, *b;
    double sa[3], sb[3]; /* scales on Q0, V0, O0 as the configs define them */
} pair;

static pair make_pair(void)
{
    pair p;
    tmod ma[] = {{Q0, 32, 32, 4, NULL, NULL, NULL}, {V0, 16, 32, 4, NULL, NULL, NULL}};
    tmod mb[] = {{Q0, 32, 32, 3, NULL, NULL, NULL}, {O0, 32, 32, 5, NULL, NULL, NULL}};
    p.a = make_lora(CFG_A, ma, 2);
    p.b = make_lora(CFG_B, mb, 2);
    /* a: alpha/r, v_proj alpha 2; b: rsLoRA alpha/sqrt(r), o_proj rank 5 */
    p.sa[0] = 8.0 / 4;
    p.sa[1] = 2.0 / 4;
    p.sa[2] = 0;
    p.sb[0] = 6.0 / sqrt(3.0);
    p.sb[1] = 0;
    p.sb[2] = 6.0 / sqrt(5.0);
    return p;
}

static void pair_free(pair *p)
{
    actl_adapter_free(p->a);
    actl_adapter_free(p->b);
}

/* Checks res's delta on every module of the pair against w_a s_a B A + w_b s_b B A. */
static void check_pair_sum(const actl_adapter *res, const pair *p, double wa, double wb,
                           double tol)
{
    const char *names[3] = {Q0, V0, O0};
    int outs[3] = {32, 16, 32};
    assert_int_equal(actl_adapter_module_count(res), 3);
    for (int m = 0; m < 3; m++) {
        size_t ne = (size_t)outs[m] * 32;
        double *want = calloc(ne, sizeof *want), *got = calloc(ne, sizeof *got);
        assert_non_null(want);
        assert_non_null(got);
        if (p->sa[m] != 0)
            assert_true(add_delta(p->a, names[m], wa * p->sa[m], want, false));
        if (p->sb[m] != 0)
            assert_true(add_delta(p->b, names[m], wb * p->sb[m], want, false));
        assert_true(add_delta(res, names[m], 1.0, got, false));
        double e = rel_diff(got, want, ne);
        if (!(e <= tol))
            fail_msg("module %s: relative difference %g > %g", names[m], e, tol);
        free(want);
        free(got);
    }
}

/* ---- methods ----------------------------------------------------------------------- */

static void test_compose__method_names_round_trip(void **state)
{
    (void)state;
    for (int m = ACTL_COMPOSE_CAT; m <= ACTL_COMPOSE_STACK; m++) {
        actl_compose_method back;
        const char *name = actl_compose_method_name((actl_compose_method)m);
        assert_non_null(name);
        assert_ok(actl_compose_method_parse(name, &back));
        assert_int_equal(back, m);
    }
    assert_string_equal(actl_compose_method_name(ACTL_COMPOSE_DARE_TIES), "dare_ties");
    assert_null(actl_compose_method_name((actl_compose_method)0));
    assert_null(actl_compose_method_name((actl_compose_method)11));
    actl_compose_method m = ACTL_COMPOSE_SVD;
    assert_err(actl_compose_method_parse("concat", &m), ACTL_EINVAL, "unknown compose method 'concat'");
    assert_int_equal(m, ACTL_COMPOSE_SVD);
    actl_compose_opts o = actl_compose_default_opts();
    assert_int_equal(o.rank, 0);
    assert_true(o.density == 0);
    assert_int_equal(o.has_seed, 0);
}

/* ---- cat and svd ----------------------------------------------------------------- */

static void test_compose__cat_equals_the_weighted_sum_of_deltas(void **state)
{
    (void)state;
    pair p = make_pair();
    actl_input in[2] = {input_of(p.a, 0.7, "a"), input_of(p.b, -1.3, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_CAT;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, &rep));
    check_pair_sum(res, &p, 0.7, -1.3, 1e-6);
    assert_scale_one(res);
    /* rank = sum of the input ranks per module; different ranks go to rank_pattern */
    assert_int_equal(module_of(res, Q0).rank, 4 + 3);
    assert_int_equal(module_of(res, V0).rank, 4);
    assert_int_equal(module_of(res, O0).rank, 5);
    assert_int_equal(actl_compose_report_exact(rep), 1);
    assert_int_equal(actl_compose_report_count(rep), 3);
    assert_true(actl_compose_report_overall(rep) == 0);
    actl_adapter_info info;
    actl_adapter_info_get(res, &info);
    assert_string_equal(info.base_model, "adapterctl/base-tiny");
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    pair_free(&p);
}

static void test_compose__svd_at_full_rank_equals_the_sum(void **state)
{
    (void)state;
    pair p = make_pair();
    actl_input in[2] = {input_of(p.a, 0.7, "a"), input_of(p.b, -1.3, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_SVD;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, &rep));
    check_pair_sum(res, &p, 0.7, -1.3, 1e-5);
    assert_scale_one(res);
    assert_int_equal(module_of(res, Q0).rank, 7);
    assert_int_equal(actl_compose_report_exact(rep), 1);
    assert_true(actl_compose_report_overall(rep) < 1e-12);
    actl_compose_report_free(rep);
    actl_adapter_free(res);

    /* an explicit rank above what the delta needs is capped at it */
    o.rank = 30;
    assert_ok(actl_compose(in, 2, &o, &res, NULL));
    assert_int_equal(module_of(res, Q0).rank, 7);
    check_pair_sum(res, &p, 0.7, -1.3, 1e-5);
    actl_adapter_free(res);
    pair_free(&p);
}

/* Orthonormal columns: Q [n, k] from random columns by modified Gram-Schmidt. */
static void orthonormal(double *Q, int n, int k)
{
    for (int i = 0; i < n * k; i++)
        Q[i] = rnd();
    for (int c = 0; c < k; c++) {
        for (int p = 0; p < c; p++) {
            double d = 0;
            for (int r = 0; r < n; r++)
                d += Q[r * k + c] * Q[r * k + p];
            for (int r = 0; r < n; r++)
                Q[r * k + c] -= d * Q[r * k + p];
        }
        double nn = 0;
        for (int r = 0; r < n; r++)
            nn += Q[r * k + c] * Q[r * k + c];
        for (int r = 0; r < n; r++)
            Q[r * k + c] /= sqrt(nn);
    }
}

/* The truncation error with singular values built into the inputs: D = U diag(sigma) V^T
 * split over two inputs (the QR path, sum r < min(out, in)) and, on a second module, one
 * input whose rank exceeds the output width (the dense path). */
static void test_compose__svd_reports_the_optimal_truncation_error(void **state)
{
    (void)state;
    static const double sig[6] = {5, 3, 2, 1, 0.5, 0.25};
    enum { OUT = 24, IN = 20, K = 6, O2 = 6, R2 = 8 };
    double U[OUT * K], V[IN * K], U2[O2 * O2], V2[IN * O2];
    orthonormal(U, OUT, K);
    orthonormal(V, IN, K);
    orthonormal(U2, O2, O2);
    orthonormal(V2, IN, O2);
    /* input 1: components 0..2 of module Q0, c1 = w s = 0.5 * 16/3;
     * input 2: components 3..5, rsLoRA c2 = -2 * 6/sqrt(3); B_i = U sigma / c_i, A_i = V^T */
    double c1 = 0.5 * 16.0 / 3.0, c2 = -2.0 * 6.0 / sqrt(3.0);
    double A1[3 * IN], B1[OUT * 3], A2[3 * IN], B2[OUT * 3];
    for (int j = 0; j < 3; j++) {
        for (int i = 0; i < IN; i++) {
            A1[j * IN + i] = V[i * K + j];
            A2[j * IN + i] = V[i * K + 3 + j];
        }
        for (int o = 0; o < OUT; o++) {
            B1[o * 3 + j] = U[o * K + j] * sig[j] / c1;
            B2[o * 3 + j] = U[o * K + 3 + j] * sig[3 + j] / c2;
        }
    }
    /* module V0 [6, 20] in input 1 only, rank 8 (in its rank_pattern): B = [U2 sigma / c1, 0, 0],
     * A = [V2^T; two random rows] */
    double A3[R2 * IN], B3[O2 * R2];
    for (int j = 0; j < R2; j++)
        for (int i = 0; i < IN; i++)
            A3[j * IN + i] = j < O2 ? V2[i * O2 + j] : rnd();
    for (int o = 0; o < O2; o++)
        for (int j = 0; j < R2; j++)
            B3[o * R2 + j] = j < O2 ? U2[o * O2 + j] * sig[j] / c1 : 0.0;
    tmod m1[] = {{Q0, OUT, IN, 3, A1, B1, NULL}, {V0, O2, IN, R2, A3, B3, NULL}};
    tmod m2[] = {{Q0, OUT, IN, 3, A2, B2, NULL}};
    /* v_proj rank 8 keeps scale 16/3 through alpha_pattern */
    actl_adapter *a = make_lora("{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 16, "
                                "\"rank_pattern\": {\"v_proj\": 8}, "
                                "\"alpha_pattern\": {\"v_proj\": 42.666666666666664}}", m1, 2);
    actl_adapter *b = make_lora("{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 6, "
                                "\"use_rslora\": true}", m2, 1);
    actl_input in[2] = {input_of(a, 0.5, "a"), input_of(b, -2.0, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_SVD;
    o.rank = 2;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, &rep));

    /* the optimal error: the root of the discarded squared singular values over the norm */
    double all = 0, kept = 0, all2 = 0, kept2 = 0;
    for (int j = 0; j < 6; j++) {
        all += sig[j] * sig[j];
        kept += j < 2 ? sig[j] * sig[j] : 0;
    }
    all2 = all;
    kept2 = kept;
    double want_q = sqrt((all - kept) / all), want_v = sqrt((all2 - kept2) / all2);
    double want_all = sqrt((all - kept + all2 - kept2) / (all + all2));
    assert_int_equal(actl_compose_report_count(rep), 2);
    for (size_t i = 0; i < 2; i++) {
        double e;
        const char *name = actl_compose_report_module(rep, i, &e);
        double want = strcmp(name, Q0) == 0 ? want_q : want_v;
        if (!(fabs(e - want) <= 1e-4 * want))
            fail_msg("module %s: reported %.9g, optimal %.9g", name, e, want);
    }
    assert_true(fabs(actl_compose_report_overall(rep) - want_all) <= 1e-4 * want_all);
    assert_int_equal(actl_compose_report_exact(rep), 0);

    /* and what was kept is the top two components: U_2 sigma_2 V_2^T */
    double want[OUT * IN] = {0}, got[OUT * IN] = {0};
    for (int o2 = 0; o2 < OUT; o2++)
        for (int i = 0; i < IN; i++)
            for (int j = 0; j < 2; j++)
                want[o2 * IN + i] += U[o2 * K + j] * sig[j] * V[i * K + j];
    assert_true(add_delta(res, Q0, 1.0, got, false));
    assert_true(rel_diff(got, want, OUT * IN) < 1e-5);
    assert_int_equal(module_of(res, Q0).rank, 2);
    assert_scale_one(res);
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    actl_adapter_free(a);
    actl_adapter_free(b);
}

/* ---- TIES, magnitude pruning, DARE on hand-worked 2 x 3 deltas ----------------------- */

/* A LoRA whose delta on Q0-shaped [2, 3] is exactly `delta` / 1: B = I [2, 2], A = delta
 * scaled by 1/s (r = 2, alpha given). */
static actl_adapter *delta_lora(const double *delta, double alpha)
{
    static const double I2[4] = {1, 0, 0, 1};
    double s = alpha / 2, A[6];
    for (int i = 0; i < 6; i++)
        A[i] = delta[i] / s;
    tmod m[] = {{"model.layers.0.mlp.w", 2, 3, 2, A, I2, NULL}};
    char cfg[160];
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": %.17g}",
             alpha);
    return make_lora(cfg, m, 1);
}

/* The composed [2, 3] delta of module "model.layers.0.mlp.w". */
static void composed_delta(const actl_adapter *res, double D[6])
{
    memset(D, 0, 6 * sizeof *D);
    assert_true(add_delta(res, "model.layers.0.mlp.w", 1.0, D, false));
}

static void assert_matrix(const double *got, const double *want, size_t n, double tol)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= tol))
            fail_msg("entry %zu: got %.9g, want %.9g", i, got[i], want[i]);
}

/* T_i: top 3 of 6 by magnitude (density 0.5). Worked by hand:
 *   D1 = [[ 3, -1, 0.5], [-4,  2,   1]]  -> [[ 3, 0,  0], [-4,   2, 0]]
 *   D2 = [[-2,  5, 1  ], [-1, -3, 0.2]]  -> [[-2, 5,  0], [ 0,  -3, 0]]
 *   D3 = [[ 1, -0.5, -6], [2, 1.5, 0.1]] -> [[ 0, 0, -6], [ 2, 1.5, 0]]
 * sum of the T_i = [[1, 5, -6], [-2, 0.5, 0]]: signs + + - / - + + (0 counts as +)
 * weights 1, 0.5, 2 enter after the election:
 *   (0,0) agree 3 -> 3;  (0,1) 0.5*5 = 2.5;  (0,2) 2*-6 = -12;  (1,0) -4 (the weighted sum
 *   -4 + 2*2 = 0 would have elected +);  (1,1) (2 + 2*1.5)/2 = 2.5;  (1,2) none -> 0 */
static const double D1[6] = {3, -1, 0.5, -4, 2, 1};
static const double D2[6] = {-2, 5, 1, -1, -3, 0.2};
static const double D3[6] = {1, -0.5, -6, 2, 1.5, 0.1};

static void three_inputs(actl_adapter *ad[3], actl_input in[3])
{
    /* input 2 has scale 2 (alpha 4, r 2): its task tensor s B A is still D2 */
    ad[0] = delta_lora(D1, 2);
    ad[1] = delta_lora(D2, 4);
    ad[2] = delta_lora(D3, 2);
    in[0] = input_of(ad[0], 1.0, "one");
    in[1] = input_of(ad[1], 0.5, "two");
    in[2] = input_of(ad[2], 2.0, "three");
}

static void compose_three(actl_compose_method m, double density, double D[6])
{
    actl_adapter *ad[3], *res = NULL;
    actl_input in[3];
    three_inputs(ad, in);
    actl_compose_opts o = actl_compose_default_opts();
    o.method = m;
    o.density = density;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 3, &o, &res, &rep));
    composed_delta(res, D);
    /* rank: sum r_i = 6 capped at min(2, 3): nothing truncated */
    assert_int_equal(module_of(res, "model.layers.0.mlp.w").rank, 2);
    assert_true(actl_compose_report_overall(rep) < 1e-12);
    assert_int_equal(actl_compose_report_exact(rep), 0);
    assert_scale_one(res);
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    for (int i = 0; i < 3; i++)
        actl_adapter_free(ad[i]);
}

static void test_compose__ties_hand_worked(void **state)
{
    (void)state;
    static const double want[6] = {3, 2.5, -12, -4, 2.5, 0};
    double D[6];
    compose_three(ACTL_COMPOSE_TIES, 0.5, D);
    assert_matrix(D, want, 6, 1e-5);
}

static void test_compose__magnitude_prune_hand_worked(void **state)
{
    (void)state;
    /* sum w_i T_i = T1 + 0.5 T2 + 2 T3 */
    static const double want[6] = {2, 2.5, -12, 0, 3.5, 0};
    double D[6];
    compose_three(ACTL_COMPOSE_MAGNITUDE_PRUNE, 0.5, D);
    assert_matrix(D, want, 6, 1e-5);

    /* density 0.4 keeps int(2.4) = 2 per input; ties at the threshold go to the first:
     * E = [[1, -1, 1], [-1, 1, 0.5]] keeps its first two entries */
    static const double E[6] = {1, -1, 1, -1, 1, 0.5};
    static const double wantE[6] = {1.5, -1.5, 0, 0, 0, 0};
    actl_adapter *a = delta_lora(E, 2), *res = NULL;
    actl_input in[1] = {input_of(a, 1.5, "e")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_MAGNITUDE_PRUNE;
    o.density = 0.4;
    assert_ok(actl_compose(in, 1, &o, &res, NULL));
    composed_delta(res, D);
    assert_matrix(D, wantE, 6, 1e-5);
    actl_adapter_free(res);
    actl_adapter_free(a);
}

static void test_compose__ties_at_density_one_elects_on_whole_deltas(void **state)
{
    (void)state;
    /* no pruning: D1 + D2 + D3 = [[2, 3.5, -4.5], [-3, 0.5, 1.3]], signs + + - / - + +
     *   (0,0): D1 3 and D3 1 agree: (3 + 2*1)/2 = 2.5
     *   (0,1): D2 5 alone: 0.5*5 = 2.5
     *   (0,2): D3 -6 alone (D1 0.5 and D2 1 disagree): 2*-6 = -12
     *   (1,0): D1 -4, D2 -1 agree: (-4 + 0.5*-1)/2 = -2.25
     *   (1,1): D1 2, D3 1.5 agree: (2 + 3)/2 = 2.5
     *   (1,2): all three > 0: (1 + 0.1 + 0.2)/3 = 1.3/3 */
    static const double want[6] = {2.5, 2.5, -12, -2.25, 2.5, 1.3 / 3};
    double D[6];
    compose_three(ACTL_COMPOSE_TIES, 1.0, D);
    assert_matrix(D, want, 6, 1e-5);
    /* dare_ties at density 1 keeps everything (and divides by 1): the same */
    compose_three(ACTL_COMPOSE_DARE_TIES, 1.0, D);
    assert_matrix(D, want, 6, 1e-5);
    /* dare_linear at density 1: the weighted sum D1 + 0.5 D2 + 2 D3 */
    static const double lin[6] = {4, 0.5, -11, -0.5, 3.5, 1.3};
    compose_three(ACTL_COMPOSE_DARE_LINEAR, 1.0, D);
    assert_matrix(D, lin, 6, 1e-5);
}

/* The documented DARE stream, written again here from its definition: splitmix64 from
 * seed ^ xxh64(module) ^ (i+1) * 0xD1B54A32D192ED03 fills xoshiro256**; one word per entry in
 * row-major order, kept when (x >> 11) 2^-53 < density. */
static uint64_t t_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t t_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static void t_dare_mask(uint64_t seed, const char *module, size_t input, size_t n,
                        double density, bool *keep)
{
    uint64_t x = seed ^ actl__xxh64(module, strlen(module), 0) ^
                 ((uint64_t)(input + 1) * 0xD1B54A32D192ED03ull);
    uint64_t s[4];
    for (int i = 0; i < 4; i++)
        s[i] = t_splitmix(&x);
    for (size_t e = 0; e < n; e++) {
        uint64_t r = t_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = t_rotl(s[3], 45);
        keep[e] = (double)(r >> 11) * 0x1.0p-53 < density;
    }
}

static void test_compose__dare_follows_its_documented_stream(void **state)
{
    (void)state;
    /* dare_linear, two inputs, density 0.3: sum_i w_i mask_i D_i / 0.3 */
    actl_adapter *ad[3], *res = NULL;
    actl_input in[3];
    three_inputs(ad, in);
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_DARE_LINEAR;
    o.density = 0.3;
    o.seed = 12345;
    o.has_seed = 1;
    assert_ok(actl_compose(in, 3, &o, &res, NULL));
    double D[6], want[6] = {0};
    composed_delta(res, D);
    const double *Ds[3] = {D1, D2, D3};
    for (size_t i = 0; i < 3; i++) {
        bool keep[6];
        t_dare_mask(12345, "model.layers.0.mlp.w", i, 6, 0.3, keep);
        for (int e = 0; e < 6; e++)
            if (keep[e])
                want[e] += in[i].weight * Ds[i][e] / 0.3;
    }
    assert_matrix(D, want, 6, 1e-4);
    actl_adapter_free(res);

    /* dare_ties: election on the rescaled survivors, disjoint mean with the weights */
    o.method = ACTL_COMPOSE_DARE_TIES;
    o.seed = 99;
    assert_ok(actl_compose(in, 3, &o, &res, NULL));
    composed_delta(res, D);
    double T[3][6];
    for (size_t i = 0; i < 3; i++) {
        bool keep[6];
        t_dare_mask(99, "model.layers.0.mlp.w", i, 6, 0.3, keep);
        for (int e = 0; e < 6; e++)
            T[i][e] = keep[e] ? Ds[i][e] / 0.3 : 0;
    }
    for (int e = 0; e < 6; e++) {
        double sum = T[0][e] + T[1][e] + T[2][e], acc = 0;
        int agree = 0;
        for (int i = 0; i < 3; i++)
            if ((sum >= 0 && T[i][e] > 0) || (sum < 0 && T[i][e] < 0)) {
                acc += in[i].weight * T[i][e];
                agree++;
            }
        want[e] = acc / (agree ? agree : 1);
    }
    assert_matrix(D, want, 6, 1e-4);
    actl_adapter_free(res);
    for (int i = 0; i < 3; i++)
        actl_adapter_free(ad[i]);
}

static void test_compose__dare_is_reproducible_from_its_seed(void **state)
{
    (void)state;
    pair p = make_pair();
    actl_input in[2] = {input_of(p.a, 1.0, "a"), input_of(p.b, 0.5, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_DARE_LINEAR;
    o.density = 0.5;
    actl_adapter *r1 = NULL, *r2 = NULL, *r3 = NULL, *r4 = NULL;
    actl_compose_report *rep = NULL;

    /* no seed given: one is drawn and recorded in the lineage; composing again with it gives
     * the same tensors */
    assert_ok(actl_compose(in, 2, &o, &r1, &rep));
    char *lin = actl_compose_lineage(in, 2, &o, rep);
    assert_non_null(lin);
    json_t *l = json_loads(lin, 0, NULL);
    assert_non_null(l);
    json_t *seed = json_object_get(json_object_get(l, "options"), "seed");
    assert_true(json_is_integer(seed));
    o.seed = (uint64_t)json_integer_value(seed);
    o.has_seed = 1;
    assert_ok(actl_compose(in, 2, &o, &r2, NULL));
    test_assert_same_tensors(r1, r2);
    /* another seed drops other entries */
    o.seed ^= 1;
    assert_ok(actl_compose(in, 2, &o, &r3, NULL));
    const actl_tensor *x = actl_adapter_find(r2, ACTL_PEFT_PREFIX Q0 ".lora_A.weight");
    const actl_tensor *y = actl_adapter_find(r3, ACTL_PEFT_PREFIX Q0 ".lora_A.weight");
    assert_non_null(x);
    assert_non_null(y);
    assert_true(actl_tensor_nbytes(x) != actl_tensor_nbytes(y) ||
                memcmp(actl_tensor_data(x), actl_tensor_data(y), actl_tensor_nbytes(x)) != 0);
    /* about density of the entries survive: a 32 x 32 delta of one input */
    o.seed = 7;
    actl_input one[1] = {input_of(p.a, 1.0, "a")};
    o.rank = 32; /* full rank: the pruned delta comes back whole */
    assert_ok(actl_compose(one, 1, &o, &r4, NULL));
    double *got = calloc(32 * 32, sizeof *got), *full = calloc(32 * 32, sizeof *full);
    assert_true(add_delta(r4, Q0, 1.0, got, false));
    assert_true(add_delta(p.a, Q0, p.sa[0], full, false));
    int kept = 0;
    for (int e = 0; e < 32 * 32; e++) {
        /* each entry is dropped (0, up to the fp32 factors' round-off) or kept and doubled */
        if (fabs(got[e]) > 1e-3) {
            kept++;
            assert_true(fabs(got[e] - 2 * full[e]) <= 1e-4 * (1 + fabs(full[e])));
        } else {
            assert_true(fabs(got[e]) <= 1e-3 && (fabs(full[e]) < 1e-3 || fabs(got[e]) < 1e-4));
        }
    }
    /* binomial(1024, 0.5): sd 16; 6 sd either side */
    assert_in_range(kept, 512 - 96, 512 + 96);
    free(got);
    free(full);
    json_decref(l);
    free(lin);
    actl_compose_report_free(rep);
    actl_adapter_free(r1);
    actl_adapter_free(r2);
    actl_adapter_free(r3);
    actl_adapter_free(r4);
    pair_free(&p);
}

/* ---- pruned methods above the exact-SVD size (the randomized truncation) ---------------- */

/* A module wider than actl__compose_exact_dim (512), so that the truncation is the sketch's:
 * two inputs of rank 8, scales 16/8 and 4/8, weights 1 and -0.7. */
#define BIG "model.layers.0.mlp.down_proj"
enum { BIG_OUT = 600, BIG_IN = 700, BIG_R = 8 };

typedef struct big {
    actl_adapter *ad[2];
    actl_input in[2];
    double s[2]; /* the scales the configs define */
    double *T[2]; /* s_i B_i A_i [BIG_OUT, BIG_IN], by plain loops */
} big;

static void big_make(big *b)
{
    static const char *cfg[2] = {"{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16}",
                                 "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 4}"};
    static const double w[2] = {1.0, -0.7};
    b->s[0] = 16.0 / 8;
    b->s[1] = 4.0 / 8;
    for (int i = 0; i < 2; i++) {
        tmod m[] = {{BIG, BIG_OUT, BIG_IN, BIG_R, NULL, NULL, NULL}};
        b->ad[i] = make_lora(cfg[i], m, 1);
        b->in[i] = input_of(b->ad[i], w[i], i ? "b" : "a");
        b->T[i] = calloc((size_t)BIG_OUT * BIG_IN, sizeof(double));
        assert_non_null(b->T[i]);
        assert_true(add_delta(b->ad[i], BIG, b->s[i], b->T[i], false));
    }
}

static void big_free(big *b)
{
    for (int i = 0; i < 2; i++) {
        actl_adapter_free(b->ad[i]);
        free(b->T[i]);
    }
}

static const double *sort_key; /* what by_magnitude compares */

/* Larger |x| first; among equal magnitudes the earlier position first. */
static int by_magnitude(const void *x, const void *y)
{
    size_t i = *(const size_t *)x, j = *(const size_t *)y;
    double a = fabs(sort_key[i]), b = fabs(sort_key[j]);
    if (a != b)
        return a > b ? -1 : 1;
    return (i > j) - (i < j);
}

/* Keeps the floor(density n) entries of x of largest magnitude, by a full sort. */
static void sort_prune(double *x, size_t n, double density)
{
    size_t *idx = malloc(n * sizeof *idx), keep = (size_t)(density * (double)n);
    bool *kept = calloc(n, sizeof *kept);
    assert_non_null(idx);
    assert_non_null(kept);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    sort_key = x;
    qsort(idx, n, sizeof *idx, by_magnitude);
    for (size_t i = 0; i < keep; i++)
        kept[idx[i]] = true;
    for (size_t i = 0; i < n; i++)
        if (!kept[i])
            x[i] = 0;
    free(idx);
    free(kept);
}

/* The pruned and merged delta D [BIG_OUT, BIG_IN] of ties (density 0.5) or dare_linear
 * (density 0.5, the documented stream from seed), from the T_i. */
static void big_pruned_delta(const big *b, actl_compose_method m, uint64_t seed, double *D)
{
    size_t ne = (size_t)BIG_OUT * BIG_IN;
    double *P[2];
    for (int i = 0; i < 2; i++) {
        P[i] = malloc(ne * sizeof *P[i]);
        assert_non_null(P[i]);
        memcpy(P[i], b->T[i], ne * sizeof *P[i]);
        if (m == ACTL_COMPOSE_TIES) {
            sort_prune(P[i], ne, 0.5);
        } else {
            bool *keep = malloc(ne * sizeof *keep);
            assert_non_null(keep);
            t_dare_mask(seed, BIG, (size_t)i, ne, 0.5, keep);
            for (size_t e = 0; e < ne; e++)
                P[i][e] = keep[e] ? P[i][e] / 0.5 : 0;
            free(keep);
        }
    }
    for (size_t e = 0; e < ne; e++) {
        if (m == ACTL_COMPOSE_TIES) {
            double sum = P[0][e] + P[1][e], acc = 0;
            int agree = 0;
            for (int i = 0; i < 2; i++)
                if ((sum >= 0 && P[i][e] > 0) || (sum < 0 && P[i][e] < 0)) {
                    acc += b->in[i].weight * P[i][e];
                    agree++;
                }
            D[e] = acc / (agree ? agree : 1);
        } else {
            D[e] = b->in[0].weight * P[0][e] + b->in[1].weight * P[1][e];
        }
    }
    free(P[0]);
    free(P[1]);
}

/* The optimal rank-k error of D [BIG_OUT, BIG_IN]: the root of the discarded squared singular
 * values over the norm, the singular values from LAPACK's full dgesdd here. */
static double optimal_error(const double *D, int k)
{
    size_t ne = (size_t)BIG_OUT * BIG_IN;
    int mn = BIG_OUT < BIG_IN ? BIG_OUT : BIG_IN;
    double *X = malloc(ne * sizeof *X), *S = malloc((size_t)mn * sizeof *S);
    assert_non_null(X);
    assert_non_null(S);
    memcpy(X, D, ne * sizeof *X);
    /* no vectors: u and vt are not referenced, but LAPACKE checks their strides */
    assert_int_equal(LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', BIG_OUT, BIG_IN, X, BIG_IN, S, NULL,
                                    BIG_OUT, NULL, BIG_IN), 0);
    double all = 0, tail = 0;
    for (int i = 0; i < mn; i++) {
        all += S[i] * S[i];
        tail += i >= k ? S[i] * S[i] : 0;
    }
    free(X);
    free(S);
    return sqrt(tail / all);
}

/* The error ties and dare_linear report on a module above the exact-SVD size is the true
 * ||D - B A|| / ||D|| of the factors returned, D the pruned delta recomputed here and B A
 * multiplied out here from the result's tensors (measured: equal within 3e-14); and it is
 * within 1% of the optimal rank-k error (measured: achieved/optimal - 1 below 1e-8 on both).
 * The same call is reproducible, and with the exact path forced the error is the optimal
 * one. */
static void test_compose__pruned_methods_above_exact_size_report_their_true_error(void **state)
{
    (void)state;
    static const actl_compose_method ms[2] = {ACTL_COMPOSE_TIES, ACTL_COMPOSE_DARE_LINEAR};
    size_t ne = (size_t)BIG_OUT * BIG_IN;
    big b;
    big_make(&b);
    double *D = malloc(ne * sizeof *D), *got = malloc(ne * sizeof *got);
    assert_non_null(D);
    assert_non_null(got);
    assert_true(actl__compose_exact_dim < BIG_OUT);
    for (int t = 0; t < 2; t++) {
        actl_compose_opts o = actl_compose_default_opts();
        o.method = ms[t];
        o.rank = BIG_R;
        o.density = 0.5;
        o.seed = 2024;
        o.has_seed = 1;
        actl_adapter *res = NULL, *again = NULL;
        actl_compose_report *rep = NULL;
        assert_ok(actl_compose(b.in, 2, &o, &res, &rep));
        assert_int_equal(module_of(res, BIG).rank, BIG_R);
        assert_scale_one(res);
        big_pruned_delta(&b, ms[t], 2024, D);
        memset(got, 0, ne * sizeof *got);
        assert_true(add_delta(res, BIG, 1.0, got, false));
        double actual = rel_diff(got, D, ne), opt = optimal_error(D, BIG_R), reported;
        assert_string_equal(actl_compose_report_module(rep, 0, &reported), BIG);
        if (!(fabs(reported - actual) <= 1e-6 * actual))
            fail_msg("%s: reported %.9g, actual %.9g", actl_compose_method_name(ms[t]), reported,
                     actual);
        if (!(actual >= opt * (1 - 1e-9) && actual <= 1.01 * opt))
            fail_msg("%s: error %.9g against the optimal %.9g (ratio %.9g)",
                     actl_compose_method_name(ms[t]), actual, opt, actual / opt);
        assert_true(fabs(actl_compose_report_overall(rep) - reported) <= 1e-12 * reported);
        assert_int_equal(actl_compose_report_exact(rep), 0);

        /* the sketch's random matrix comes from a fixed stream: the same call, the same bytes */
        assert_ok(actl_compose(b.in, 2, &o, &again, NULL));
        test_assert_same_tensors(res, again);
        actl_adapter_free(again);

        /* the full SVD on the same module (the small-module path): the optimal error */
        actl_compose_report *full = NULL;
        actl__compose_exact_dim = BIG_OUT;
        int rc = actl_compose(b.in, 2, &o, &again, &full);
        actl__compose_exact_dim = 512;
        assert_ok(rc);
        assert_true(fabs(actl_compose_report_overall(full) - opt) <= 1e-9 * opt);
        actl_compose_report_free(full);
        actl_adapter_free(again);
        actl_compose_report_free(rep);
        actl_adapter_free(res);
    }
    free(D);
    free(got);
    big_free(&b);
}

/* A pruned delta whose rank fits the sketch (density 1 keeps everything: D = sum w_i T_i, of
 * rank 16 = k) comes back whole, and the error reported is round-off. */
static void test_compose__pruned_sketch_recovers_a_delta_of_rank_k(void **state)
{
    (void)state;
    size_t ne = (size_t)BIG_OUT * BIG_IN;
    big b;
    big_make(&b);
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_DARE_LINEAR;
    o.density = 1;
    o.seed = 5;
    o.has_seed = 1;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(b.in, 2, &o, &res, &rep));
    assert_int_equal(module_of(res, BIG).rank, 2 * BIG_R);
    double *want = malloc(ne * sizeof *want), *got = calloc(ne, sizeof *got);
    assert_non_null(want);
    assert_non_null(got);
    for (size_t e = 0; e < ne; e++)
        want[e] = b.in[0].weight * b.T[0][e] + b.in[1].weight * b.T[1][e];
    assert_true(add_delta(res, BIG, 1.0, got, false));
    assert_true(rel_diff(got, want, ne) < 1e-6);
    assert_true(actl_compose_report_overall(rep) < 1e-10);
    free(want);
    free(got);
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    big_free(&b);
}

/* ---- linear -------------------------------------------------------------------------- */

static void test_compose__linear_is_peft_factor_mix_and_inexact(void **state)
{
    (void)state;
    tmod ma[] = {{Q0, 32, 32, 4, NULL, NULL, NULL}};
    tmod mb[] = {{Q0, 32, 32, 4, NULL, NULL, NULL}, {V0, 16, 32, 4, NULL, NULL, NULL}};
    actl_adapter *a = make_lora("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8}", ma, 1);
    actl_adapter *b = make_lora("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 4}", mb, 2);
    actl_input in[2] = {input_of(a, 0.5, "a"), input_of(b, -3.0, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_LINEAR;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, &rep));
    assert_scale_one(res);
    /* c_a = 0.5 * 2 = 1, c_b = -3 * 1 = -3: A = 1 A_a - sqrt(3) A_b, B = B_a + sqrt(3) B_b */
    int64_t n;
    double *Aa = values(a, Q0, ".lora_A.weight", &n), *Ab = values(b, Q0, ".lora_A.weight", NULL);
    double *Ar = values(res, Q0, ".lora_A.weight", NULL);
    double *Ba = values(a, Q0, ".lora_B.weight", NULL), *Bb = values(b, Q0, ".lora_B.weight", NULL);
    double *Br = values(res, Q0, ".lora_B.weight", NULL);
    for (int64_t e = 0; e < n; e++) {
        assert_true(fabs(Ar[e] - (Aa[e] - sqrt(3.0) * Ab[e])) < 1e-6);
        assert_true(fabs(Br[e] - (Ba[e] + sqrt(3.0) * Bb[e])) < 1e-6);
    }
    /* its error against the true weighted sum, from loops */
    double *want = calloc(32 * 32, sizeof *want), *got = calloc(32 * 32, sizeof *got);
    add_delta(a, Q0, 1.0, want, false);
    add_delta(b, Q0, -3.0, want, false);
    add_delta(res, Q0, 1.0, got, false);
    double e_q = rel_diff(got, want, 32 * 32), rel;
    assert_true(e_q > 0.1); /* cross terms */
    assert_string_equal(actl_compose_report_module(rep, 0, &rel), Q0);
    assert_true(fabs(rel - e_q) < 1e-5);
    /* a module only b has mixes nothing: exact there */
    assert_string_equal(actl_compose_report_module(rep, 1, &rel), V0);
    assert_true(rel < 1e-6);
    assert_int_equal(actl_compose_report_exact(rep), 0);
    free(Aa);
    free(Ab);
    free(Ar);
    free(Ba);
    free(Bb);
    free(Br);
    free(want);
    free(got);
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    actl_adapter_free(a);
    actl_adapter_free(b);
}

/* ---- inputs of every LoRA shape: bias, embeddings, MoS, fan_in_fan_out, pass-through ----- */

static void test_compose__lora_bias_is_summed_with_weights_and_scales(void **state)
{
    (void)state;
    actl_adapter *fb = test_load_fixture("base-tiny", "lora-bias"); /* r 4, alpha 8: s 2 */
    tmod m[] = {{Q0, 32, 32, 2, NULL, NULL, NULL}, {O0, 32, 32, 2, NULL, NULL, NULL}};
    actl_adapter *g = make_lora("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}", m, 2);
    actl_input in[2] = {input_of(fb, 0.75, "bias"), input_of(g, 2.0, "plain")};
    for (int method = ACTL_COMPOSE_CAT; method <= ACTL_COMPOSE_SVD; method++) {
        actl_compose_opts o = actl_compose_default_opts();
        o.method = (actl_compose_method)method;
        actl_adapter *res = NULL;
        assert_ok(actl_compose(in, 2, &o, &res, NULL));
        actl_adapter_info info;
        actl_adapter_info_get(res, &info);
        int64_t n;
        double *want = values(fb, Q0, ".lora_B.bias", &n), *got = values(res, Q0, ".lora_B.bias", NULL);
        assert_int_equal(n, 32);
        for (int64_t e = 0; e < n; e++)
            assert_true(fabs(got[e] - 0.75 * 2.0 * want[e]) < 1e-6);
        free(want);
        free(got);
        /* o_proj: no input gave a bias, and lora_bias needs one on every module: zero */
        got = values(res, O0, ".lora_B.bias", &n);
        assert_non_null(got);
        for (int64_t e = 0; e < n; e++)
            assert_true(got[e] == 0);
        free(got);
        assert_true(module_of(res, O0).flags & ACTL_MOD_BIAS);
        /* and the weights still sum */
        double *dw = calloc(32 * 32, sizeof *dw), *dg = calloc(32 * 32, sizeof *dg);
        add_delta(fb, Q0, 0.75 * 2.0, dw, false);
        add_delta(g, Q0, 2.0 * 1.0, dw, false);
        add_delta(res, Q0, 1.0, dg, false);
        assert_true(rel_diff(dg, dw, 32 * 32) < 1e-5);
        free(dw);
        free(dg);
        actl_adapter_free(res);
    }
    actl_adapter_free(fb);
    actl_adapter_free(g);
}

static void test_compose__embedding_modules_and_saved_modules(void **state)
{
    (void)state;
    actl_adapter *e = test_load_fixture("base-tiny", "lora-embedding"); /* r 4, alpha 8 */
    /* a second embedding LoRA for the same table [vocab 64, dim 32] */
    tmod m[] = {{"model.embed_tokens", 32, 64, 2, NULL, NULL, NULL}};
    actl_adapter *g =
        make_lora_kind("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 6}", m, 1, true);
    /* e carries lm_head (modules_to_save): weight 1 each time it appears */
    actl_input in[3] = {input_of(e, 1.0, "emb"), input_of(g, -0.5, "emb2"),
                        input_of(e, 1.0, "emb-again")};
    actl_compose_opts o = actl_compose_default_opts();
    actl_adapter *res = NULL;
    assert_ok(actl_compose(in, 3, &o, &res, NULL));
    actl_module_info mi = module_of(res, "model.embed_tokens");
    assert_true(mi.flags & ACTL_MOD_EMBEDDING);
    assert_int_equal(mi.rank, 4 + 2 + 4);
    double *want = calloc(32 * 64, sizeof *want), *got = calloc(32 * 64, sizeof *got);
    add_delta(e, "model.embed_tokens", 2.0 * 2.0, want, true);
    add_delta(g, "model.embed_tokens", -0.5 * 3.0, want, true);
    add_delta(res, "model.embed_tokens", 1.0, got, true);
    assert_true(rel_diff(got, want, 32 * 64) < 1e-6);
    /* lm_head (modules_to_save) passes through once: both copies hold the same bytes */
    const actl_tensor *lm = actl_adapter_find(res, ACTL_PEFT_PREFIX "lm_head.weight");
    assert_non_null(lm);
    assert_memory_equal(actl_tensor_data(lm),
                        actl_tensor_data(actl_adapter_find(e, ACTL_PEFT_PREFIX "lm_head.weight")),
                        actl_tensor_nbytes(lm));
    free(want);
    free(got);
    actl_adapter_free(res);

    /* the same saved key with other bytes cannot be combined */
    actl_tensor *ts[3];
    int64_t sa[2] = {4, 64}, sb[2] = {32, 4}, sl[2] = {64, 32};
    ts[0] = f32_tensor(ACTL_PEFT_PREFIX "model.embed_tokens.lora_embedding_A", 2, sa, NULL);
    ts[1] = f32_tensor(ACTL_PEFT_PREFIX "model.embed_tokens.lora_embedding_B", 2, sb, NULL);
    ts[2] = f32_tensor(ACTL_PEFT_PREFIX "lm_head.weight", 2, sl, NULL);
    actl_adapter *other = NULL;
    assert_ok(actl_adapter_new("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, "
                               "\"modules_to_save\": [\"lm_head\"]}",
                               (const actl_tensor *const *)ts, 3, "other", &other));
    for (int i = 0; i < 3; i++)
        actl_tensor_free(ts[i]);
    actl_input in2[2] = {input_of(e, 1.0, "emb"), input_of(other, 1.0, "other")};
    assert_err(actl_compose(in2, 2, &o, &res, NULL), ACTL_EINVAL, "lm_head.weight");
    assert_null(res);

    /* a module that is an embedding in one input and linear in another */
    tmod lin[] = {{"model.embed_tokens", 32, 64, 2, NULL, NULL, NULL}};
    actl_adapter *l = make_lora("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}", lin, 1);
    actl_input in3[2] = {input_of(e, 1.0, "emb"), input_of(l, 1.0, "linear")};
    assert_err(actl_compose(in3, 2, &o, &res, NULL), ACTL_ESHAPE, "embedding LoRA in 'emb'");
    assert_null(res);
    actl_adapter_free(l);
    actl_adapter_free(other);
    actl_adapter_free(e);
    actl_adapter_free(g);
}

static void test_compose__mos_is_materialized_first(void **state)
{
    (void)state;
    actl_adapter *mos = test_load_fixture("base-tiny", "mos"), *mat = NULL, *res = NULL;
    actl_adapter *lora = test_load_fixture("base-tiny", "lora");
    /* the dense factors, from the MoS subsystem (tested in test_adapter.c) */
    assert_ok(actl_adapter_materialize(mos, &mat));
    actl_input in[2] = {input_of(mos, 2.0, "mos"), input_of(lora, 1.0, "lora")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_SVD;
    assert_ok(actl_compose(in, 2, &o, &res, NULL));
    /* q_proj of layer 0: mos (alpha 8 / r 4 = 2) * 2 + lora (16/8 = 2) */
    double *want = calloc(32 * 32, sizeof *want), *got = calloc(32 * 32, sizeof *got);
    assert_true(add_delta(mat, Q0, 2.0 * 2.0, want, false));
    assert_true(add_delta(lora, Q0, 2.0, want, false));
    assert_true(add_delta(res, Q0, 1.0, got, false));
    assert_true(rel_diff(got, want, 32 * 32) < 1e-5);
    assert_true(has_module(res, "model.layers.1.self_attn.k_proj"));
    free(want);
    free(got);
    actl_adapter_free(res);
    actl_adapter_free(mat);
    actl_adapter_free(mos);
    actl_adapter_free(lora);
}

static void test_compose__fan_in_fan_out_is_kept_and_mixing_refused(void **state)
{
    (void)state;
    actl_adapter *f = test_load_fixture("base-tiny", "lora-fanin");
    actl_adapter *l = test_load_fixture("base-tiny", "lora");
    actl_adapter *res = NULL;
    actl_input in[2] = {input_of(f, 1.0, "fanin"), input_of(f, 0.5, "fanin2")};
    actl_compose_opts o = actl_compose_default_opts();
    assert_ok(actl_compose(in, 2, &o, &res, NULL));
    actl_adapter_info info;
    actl_adapter_info_get(res, &info);
    assert_true(info.fan_in_fan_out);
    actl_adapter_free(res);
    in[1] = input_of(l, 1.0, "plain");
    assert_err(actl_compose(in, 2, &o, &res, NULL), ACTL_EINVAL, "fan_in_fan_out");
    assert_null(res);
    actl_adapter_free(f);
    actl_adapter_free(l);
}

/* ---- RoAd ---------------------------------------------------------------------------- */

/* Coefficients from a RoAd tensor pair per DESIGN.md 3.2, weighted (theta w, alpha^w). */
static void t_coeffs(int variant, int g, int out, const double *al, const double *th, double w,
                     double *c, double *s)
{
    int h = g / 2;
    for (int p = 0; p < out; p++) {
        int k = p / g, o = p % g, j = o % h;
        int ic, is;
        if (variant == 1)
            ic = is = k * h + j;
        else if (variant == 2)
            ic = is = p;
        else {
            ic = 2 * g * k + o;
            is = 2 * g * k + g + o;
        }
        double ac = w == 1 ? al[ic] : pow(al[ic], w), as = w == 1 ? al[is] : pow(al[is], w);
        c[p] = ac * cos(w * th[ic]);
        s[p] = as * sin(w * th[is]);
    }
}

/* y = R x, pairs (p, p + g/2). */
static void t_apply(int g, int out, const double *c, const double *s, const double *x,
                    double *y)
{
    int h = g / 2;
    for (int b = 0; b < out; b += g)
        for (int j = 0; j < h; j++) {
            int p = b + j, q = p + h;
            y[p] = c[p] * x[p] - s[p] * x[q];
            y[q] = s[q] * x[p] + c[q] * x[q];
        }
}

/* Applies module `name` of a (weight w; identity when absent) to x in place. */
static void road_apply(const actl_adapter *a, const char *name, double w, int out, double *x)
{
    if (!has_module(a, name))
        return;
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    double *al = values(a, name, ".road_alpha", NULL), *th = values(a, name, ".road_theta", NULL);
    double *c = malloc((size_t)out * sizeof *c), *s = malloc((size_t)out * sizeof *s);
    double *y = malloc((size_t)out * sizeof *y);
    t_coeffs((int)info.variant, info.group_size, out, al, th, w, c, s);
    t_apply(info.group_size, out, c, s, x, y);
    memcpy(x, y, (size_t)out * sizeof *x);
    free(al);
    free(th);
    free(c);
    free(s);
    free(y);
}

static void check_sequential(const actl_adapter *res, const actl_adapter *a, double wa,
                             const actl_adapter *b, double wb, const char *const *names,
                             const int *outs, size_t n)
{
    for (size_t m = 0; m < n; m++) {
        double x[64], y[64];
        for (int e = 0; e < outs[m]; e++)
            x[e] = y[e] = rnd();
        road_apply(a, names[m], wa, outs[m], x); /* A first */
        road_apply(b, names[m], wb, outs[m], x); /* then B */
        road_apply(res, names[m], 1.0, outs[m], y);
        for (int e = 0; e < outs[m]; e++)
            if (!(fabs(x[e] - y[e]) <= 1e-5 * (1 + fabs(x[e]))))
                fail_msg("module %s output %d: A then B %.9g, composed %.9g", names[m], e, x[e],
                         y[e]);
    }
}

static void test_compose__sequential_equals_a_then_b(void **state)
{
    (void)state;
    static const char *const na[] = {Q0, V0}, *const nb[] = {Q0, O0};
    static const char *const all[] = {Q0, V0, O0};
    static const int oa[] = {32, 16}, ob[] = {32, 32}, oall[] = {32, 16, 32};
    actl_adapter *a = make_road(2, 8, na, oa, 2), *b = make_road(4, 8, nb, ob, 2);
    actl_input in[2] = {input_of(a, 1.0, "a"), input_of(b, 0.6, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_SEQUENTIAL;
    actl_adapter *res = NULL, *rev = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, &rep));
    actl_adapter_info info;
    actl_adapter_info_get(res, &info);
    assert_int_equal(info.kind, ACTL_KIND_ROAD);
    assert_int_equal(info.variant, ACTL_ROAD_2);
    assert_int_equal(info.group_size, 8);
    assert_int_equal(actl_compose_report_exact(rep), 1);
    check_sequential(res, a, 1.0, b, 0.6, all, oall, 3);
    /* the other order is another rotation (road_2 and road_4 do not commute) */
    actl_input back[2] = {in[1], in[0]};
    assert_ok(actl_compose(back, 2, &o, &rev, NULL));
    check_sequential(rev, b, 0.6, a, 1.0, all, oall, 3);
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    actl_adapter_free(rev);
    actl_adapter_free(a);
    actl_adapter_free(b);
}

static void test_compose__road1_sequential_stays_road1(void **state)
{
    (void)state;
    static const char *const n1[] = {Q0, V0}, *const n2[] = {Q0};
    static const int o1[] = {32, 16}, o2[] = {32};
    actl_adapter *a = make_road(1, 4, n1, o1, 2), *b = make_road(1, 4, n2, o2, 1);
    actl_input in[2] = {input_of(a, 0.5, "a"), input_of(b, 2.0, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_SEQUENTIAL;
    actl_adapter *res = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, NULL));
    actl_adapter_info info;
    actl_adapter_info_get(res, &info);
    assert_int_equal(info.variant, ACTL_ROAD_1);
    /* per parameter: alpha = aA^0.5 aB^2, theta = 0.5 tA + 2 tB */
    int64_t n;
    double *aa = values(a, Q0, ".road_alpha", &n), *ta = values(a, Q0, ".road_theta", NULL);
    double *ab = values(b, Q0, ".road_alpha", NULL), *tb = values(b, Q0, ".road_theta", NULL);
    double *ar = values(res, Q0, ".road_alpha", NULL), *tr = values(res, Q0, ".road_theta", NULL);
    assert_int_equal(n, 16);
    for (int64_t e = 0; e < n; e++) {
        double want_a = pow(aa[e], 0.5) * pow(ab[e], 2.0), want_t = 0.5 * ta[e] + 2.0 * tb[e];
        assert_true(fabs(ar[e] - want_a) <= 1e-6 * fabs(want_a));
        assert_true(fabs(tr[e] - want_t) <= 1e-6 * (1 + fabs(want_t)));
    }
    static const char *const all[] = {Q0, V0};
    check_sequential(res, a, 0.5, b, 2.0, all, o1, 2);
    free(aa);
    free(ta);
    free(ab);
    free(tb);
    free(ar);
    free(tr);
    actl_adapter_free(res);
    actl_adapter_free(a);
    actl_adapter_free(b);
}

static void test_compose__union_of_disjoint_adapters_commutes(void **state)
{
    (void)state;
    static const char *const n1[] = {Q0, V0}, *const n2[] = {O0};
    static const int o1[] = {32, 16}, o2[] = {32};
    actl_adapter *a = make_road(1, 8, n1, o1, 2), *b = make_road(4, 8, n2, o2, 1);
    actl_input ab[2] = {input_of(a, 1.0, "a"), input_of(b, 0.5, "b")};
    actl_input ba[2] = {ab[1], ab[0]};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_UNION;
    actl_adapter *r1 = NULL, *r2 = NULL;
    assert_ok(actl_compose(ab, 2, &o, &r1, NULL));
    assert_ok(actl_compose(ba, 2, &o, &r2, NULL));
    test_assert_same_tensors(r1, r2);
    assert_string_equal(actl_adapter_config(r1), actl_adapter_config(r2));
    actl_adapter_info info;
    actl_adapter_info_get(r1, &info);
    assert_int_equal(info.variant, ACTL_ROAD_4); /* the most general input variant */
    /* every module does what its input did, a's at weight 1 bit for bit */
    for (int m = 0; m < 3; m++) {
        const char *name = m < 2 ? n1[m] : O0;
        int out = m < 2 ? o1[m] : 32;
        const actl_adapter *src = m < 2 ? a : b;
        double w = m < 2 ? 1.0 : 0.5;
        double x[32], y[32];
        for (int e = 0; e < out; e++)
            x[e] = y[e] = rnd();
        road_apply(src, name, w, out, x);
        road_apply(r1, name, 1.0, out, y);
        for (int e = 0; e < out; e++)
            assert_true(fabs(x[e] - y[e]) <= 1e-6 * (1 + fabs(x[e])));
    }
    double *t1 = values(a, Q0, ".road_theta", NULL), *t4 = values(r1, Q0, ".road_theta", NULL);
    /* road_1 t = k h + j -> road_4 cosine slot 2gk + j and sine slot 2gk + g + j */
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) {
            assert_true(t4[16 * k + j] == t1[4 * k + j]);
            assert_true(t4[16 * k + 8 + j] == t1[4 * k + j]);
            assert_true(t4[16 * k + 4 + j] == t1[4 * k + j]);
        }
    free(t1);
    free(t4);
    actl_adapter_free(r1);
    actl_adapter_free(r2);
    actl_adapter_free(a);
    actl_adapter_free(b);
}

/* ---- lineage ------------------------------------------------------------------------- */

static void test_compose__lineage_records_inputs_options_and_error(void **state)
{
    (void)state;
    pair p = make_pair();
    actl_input in[2] = {input_of(p.a, 0.7, "math@3"), input_of(p.b, -1, "/tmp/dir")};
    in[0].pack = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_SVD;
    o.rank = 2;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, &rep));
    char *text = actl_compose_lineage(in, 2, &o, rep);
    assert_non_null(text);
    json_t *l = json_loads(text, 0, NULL);
    assert_non_null(l);
    assert_string_equal(json_string_value(json_object_get(l, "method")), "svd");
    json_t *ins = json_object_get(l, "inputs");
    assert_int_equal(json_array_size(ins), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ins, 0), "ref")),
                        "math@3");
    assert_string_equal(json_string_value(json_object_get(json_array_get(ins, 0), "pack")),
                        in[0].pack);
    assert_true(json_is_null(json_object_get(json_array_get(ins, 1), "pack")));
    assert_true(json_number_value(json_object_get(json_array_get(ins, 1), "weight")) == -1);
    /* svd uses --rank only: nothing else is recorded */
    json_t *opts = json_object_get(l, "options");
    assert_int_equal(json_object_size(opts), 1);
    assert_int_equal(json_integer_value(json_object_get(opts, "rank")), 2);
    assert_true(json_is_false(json_object_get(l, "exact")));
    json_t *err = json_object_get(l, "error");
    assert_true(fabs(json_number_value(json_object_get(err, "overall")) -
                     actl_compose_report_overall(rep)) < 1e-12);
    assert_int_equal(json_object_size(json_object_get(err, "modules")), 3);
    json_decref(l);
    free(text);

    /* an exact method records no error */
    o.method = ACTL_COMPOSE_CAT;
    text = actl_compose_lineage(in, 2, &o, NULL);
    l = json_loads(text, 0, NULL);
    assert_true(json_is_true(json_object_get(l, "exact")));
    assert_null(json_object_get(l, "error"));
    assert_int_equal(json_object_size(json_object_get(l, "options")), 0);
    json_decref(l);
    free(text);
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    pair_free(&p);
}

static void refused(const actl_input *in, size_t n, actl_compose_method m, int code,
                    const char *needle);

/* Each method records the options it uses and no other; a defaulted rank is the largest
 * rank of the result (pair: Q0 4 + 3, V0 4, O0 5), marked rank_default. */
static void test_compose__lineage_options_are_the_methods_own_with_the_effective_rank(void **state)
{
    (void)state;
    pair p = make_pair();
    actl_input in[2] = {input_of(p.a, 1.0, "a"), input_of(p.b, 0.5, "b")};
    static const struct {
        actl_compose_method m;
        int rank;
        const char *want; /* the options object, compact and sorted */
    } cases[] = {
        {ACTL_COMPOSE_CAT, 0, "{}"},
        {ACTL_COMPOSE_LINEAR, 0, "{}"},
        {ACTL_COMPOSE_SVD, 0, "{\"rank\": 7, \"rank_default\": true}"},
        {ACTL_COMPOSE_SVD, 3, "{\"rank\": 3}"},
        {ACTL_COMPOSE_TIES, 0, "{\"density\": 0.5, \"rank\": 7, \"rank_default\": true}"},
        {ACTL_COMPOSE_MAGNITUDE_PRUNE, 2, "{\"density\": 0.5, \"rank\": 2}"},
        {ACTL_COMPOSE_DARE_LINEAR, 2, "{\"density\": 0.5, \"rank\": 2, \"seed\": 9}"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        actl_compose_opts o = actl_compose_default_opts();
        o.method = cases[c].m;
        o.rank = cases[c].rank;
        o.seed = 9;
        o.has_seed = cases[c].m == ACTL_COMPOSE_DARE_LINEAR;
        actl_adapter *res = NULL;
        actl_compose_report *rep = NULL;
        /* linear needs equal ranks: a with itself */
        actl_input same[2] = {input_of(p.a, 1.0, "a"), input_of(p.a, 0.5, "a2")};
        const actl_input *use = cases[c].m == ACTL_COMPOSE_LINEAR ? same : in;
        assert_ok(actl_compose(use, 2, &o, &res, &rep));
        char *text = actl_compose_lineage(use, 2, &o, rep);
        assert_non_null(text);
        json_t *l = json_loads(text, 0, NULL), *want = json_loads(cases[c].want, 0, NULL);
        assert_non_null(l);
        assert_non_null(want);
        if (!json_equal(json_object_get(l, "options"), want))
            fail_msg("%s: options %s, want %s", actl_compose_method_name(cases[c].m), text,
                     cases[c].want);
        json_decref(want);
        json_decref(l);
        free(text);
        actl_compose_report_free(rep);
        actl_adapter_free(res);
    }
    pair_free(&p);
}

/* Lineage is JSON: a value JSON cannot hold is refused with a message, not reported as out of
 * memory. */
static void test_compose__lineage_refuses_a_non_finite_value_saying_which(void **state)
{
    (void)state;
    pair p = make_pair();
    actl_input in[2] = {input_of(p.a, 1.0, "a"), input_of(p.b, INFINITY, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    assert_null(actl_compose_lineage(in, 2, &o, NULL));
    assert_non_null(strstr(actl_errmsg(), "the weight of input 2 is infinite"));
    pair_free(&p);
}

/* Huge finite weights: the fp32 result would hold infinities (cat, svd, linear) or the fp64
 * norms overflow (the pruned methods); refused, naming the module, before anything is made. */
static void test_compose__refuses_weights_too_large_for_the_result(void **state)
{
    (void)state;
    pair p = make_pair();
    static const actl_compose_method ms[] = {ACTL_COMPOSE_CAT, ACTL_COMPOSE_SVD,
                                             ACTL_COMPOSE_DARE_LINEAR, ACTL_COMPOSE_TIES};
    actl_input in[2] = {input_of(p.a, 1e300, "a"), input_of(p.b, 1.0, "b")};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        refused(in, 2, ms[i], ACTL_EINVAL, "the weights are too large");
    /* linear takes sqrt|w|: 1e300 -> 1e150 per factor, still beyond fp32 */
    actl_input same[2] = {input_of(p.a, 1e300, "a"), input_of(p.a, 1.0, "a2")};
    refused(same, 2, ACTL_COMPOSE_LINEAR, ACTL_EINVAL, "module '" Q0 "'");
    /* just inside fp32 is fine: 1e30 times entries of at most 2 * 1 * 1 */
    actl_input fine[1] = {input_of(p.a, 1e30, "a")};
    actl_compose_opts o = actl_compose_default_opts();
    actl_adapter *res = NULL;
    assert_ok(actl_compose(fine, 1, &o, &res, NULL));
    actl_adapter_free(res);
    pair_free(&p);
}

/* Merge applies a tensor saved whole as (1-w) W + w S; compose copies S, which agrees only
 * at w = 1, so an input carrying one with another weight is refused, naming both. */
static void test_compose__refuses_weighted_inputs_carrying_saved_modules(void **state)
{
    (void)state;
    actl_adapter *e = test_load_fixture("base-tiny", "lora-embedding"); /* carries lm_head */
    actl_adapter *l = test_load_fixture("base-tiny", "lora");
    actl_input in[2] = {input_of(l, 0.5, "plain"), input_of(e, 0.5, "emb")};
    refused(in, 2, ACTL_COMPOSE_CAT, ACTL_EINVAL,
            "input 'emb' has weight 0.5 but carries tensor '" ACTL_PEFT_PREFIX "lm_head.weight' "
            "saved whole");
    refused(in, 2, ACTL_COMPOSE_SVD, ACTL_EINVAL, "'emb' has weight 0.5");
    in[1].weight = -1;
    refused(in, 2, ACTL_COMPOSE_CAT, ACTL_EINVAL, "'emb' has weight -1");
    /* weight 1 on the carrier (any weight on the others) is accepted */
    in[1].weight = 1;
    actl_compose_opts o = actl_compose_default_opts();
    actl_adapter *res = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, NULL));
    assert_non_null(actl_adapter_find(res, ACTL_PEFT_PREFIX "lm_head.weight"));
    actl_adapter_free(res);
    actl_adapter_free(e);
    actl_adapter_free(l);
}

/* PEFT's two pattern rules, re-implemented with POSIX regexes: newer releases match a
 * key K against a module path with re.match("(.*\.)?(K)$"), older ones with
 * re.match(".*\.K$"). */
static bool peft_matches(const char *key, const char *path, bool older)
{
    char src[512];
    regex_t re;
    snprintf(src, sizeof src, older ? "^.*\\.%s$" : "^(.*\\.)?(%s)$", key);
    assert_int_equal(regcomp(&re, src, REG_EXTENDED | REG_NOSUB), 0);
    bool m = regexec(&re, path, 0, NULL, 0) == 0;
    regfree(&re);
    return m;
}

/* The rank_pattern and alpha_pattern keys a composed adapter carries select exactly their own
 * module under both rules, and no module of the default rank. */
static void test_compose__pattern_keys_match_their_module_under_old_and_new_peft(void **state)
{
    (void)state;
#define L(i, m) "model.layers." #i "." m
    tmod ma[] = {{L(0, "self_attn.q_proj"), 8, 8, 2, NULL, NULL, NULL},
                 {L(1, "self_attn.q_proj"), 8, 8, 2, NULL, NULL, NULL},
                 {L(10, "self_attn.q_proj"), 8, 8, 2, NULL, NULL, NULL},
                 {L(0, "mlp.up_proj"), 8, 8, 2, NULL, NULL, NULL}};
    tmod mb[] = {{L(1, "self_attn.q_proj"), 8, 8, 1, NULL, NULL, NULL},
                 {L(10, "self_attn.q_proj"), 8, 8, 1, NULL, NULL, NULL},
                 {L(0, "self_attn.k_proj"), 8, 8, 1, NULL, NULL, NULL}};
#undef L
    actl_adapter *a = make_lora("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}", ma, 4);
    actl_adapter *b = make_lora("{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1}", mb, 3);
    actl_input in[2] = {input_of(a, 1, "a"), input_of(b, 1, "b")};
    actl_compose_opts o = actl_compose_default_opts();
    actl_adapter *res = NULL;
    assert_ok(actl_compose(in, 2, &o, &res, NULL));
    /* ranks 2, 3, 3, 2 and 1: r = 3 (the larger of the tie), three modules in the patterns */
    json_t *cfg = json_loads(actl_adapter_config(res), 0, NULL);
    assert_non_null(cfg);
    int r = (int)json_integer_value(json_object_get(cfg, "r"));
    assert_int_equal(r, 3);
    json_t *rp = json_object_get(cfg, "rank_pattern"), *ap = json_object_get(cfg, "alpha_pattern");
    assert_int_equal(json_object_size(rp), 3);
    assert_true(json_equal(rp, ap));
    size_t nm = actl_adapter_module_count(res);
    assert_int_equal(nm, 5);
    for (int older = 0; older < 2; older++) {
        const char *k;
        json_t *v;
        size_t covered = 0;
        json_object_foreach(rp, k, v) {
            size_t hits = 0;
            for (size_t i = 0; i < nm; i++) {
                actl_module_info mi;
                assert_ok(actl_adapter_module(res, i, &mi));
                if (!peft_matches(k, mi.name, older))
                    continue;
                hits++;
                if (mi.rank != json_integer_value(v) || mi.rank == r)
                    fail_msg("%s rule: key '%s' (%lld) matches '%s' of rank %d",
                             older ? "older" : "newer", k, (long long)json_integer_value(v),
                             mi.name, mi.rank);
            }
            if (hits != 1)
                fail_msg("%s rule: key '%s' matches %zu modules", older ? "older" : "newer", k,
                         hits);
            covered++;
        }
        /* every module of another rank than r has its key: the three above */
        size_t other = 0;
        for (size_t i = 0; i < nm; i++) {
            actl_module_info mi;
            assert_ok(actl_adapter_module(res, i, &mi));
            other += mi.rank != r;
        }
        assert_int_equal(covered, other);
    }
    json_decref(cfg);
    actl_adapter_free(res);
    actl_adapter_free(a);
    actl_adapter_free(b);
}

/* ---- refusals ----------------------------------------------------------------------- */

static void refused(const actl_input *in, size_t n, actl_compose_method m, int code,
                    const char *needle)
{
    actl_compose_opts o = actl_compose_default_opts();
    o.method = m;
    actl_adapter *res = (actl_adapter *)1;
    actl_compose_report *rep = (actl_compose_report *)1;
    assert_err(actl_compose(in, n, &o, &res, &rep), code, needle);
    assert_null(res);
    assert_null(rep);
}

static void test_compose__refuses_dora_for_every_factor_method(void **state)
{
    (void)state;
    actl_adapter *d = test_load_fixture("base-tiny", "lora-dora");
    actl_adapter *l = test_load_fixture("base-tiny", "lora");
    actl_input in[2] = {input_of(l, 1, "lora"), input_of(d, 1, "dora")};
    for (int m = ACTL_COMPOSE_CAT; m <= ACTL_COMPOSE_LINEAR; m++)
        refused(in, 2, (actl_compose_method)m, ACTL_EUNSUPPORTED,
                "'dora' is DoRA: its row norms depend on the base weights");
    actl_adapter_free(d);
    actl_adapter_free(l);
}

static void test_compose__refuses_unequal_ranks_for_linear(void **state)
{
    (void)state;
    actl_adapter *a = test_load_fixture("base-tiny", "lora");     /* r 8 */
    actl_adapter *b = test_load_fixture("base-tiny", "lora-bf16"); /* r 4 */
    actl_input in[2] = {input_of(a, 1, "r8"), input_of(b, 1, "r4")};
    refused(in, 2, ACTL_COMPOSE_LINEAR, ACTL_ESHAPE,
            "linear needs equal ranks, but 'r8' has rank 8 and 'r4' rank 4");
    actl_adapter_free(a);
    actl_adapter_free(b);
}

static void test_compose__refuses_bottleneck_and_mixed_kinds(void **state)
{
    (void)state;
    actl_adapter *l = test_load_fixture("base-tiny", "lora");
    actl_adapter *bn = test_load_fixture("base-tiny", "bottleneck-series");
    actl_adapter *r = test_load_fixture("base-tiny", "road-1");
    actl_input lb[2] = {input_of(l, 1, "lora"), input_of(bn, 1, "bn")};
    for (int m = ACTL_COMPOSE_CAT; m <= ACTL_COMPOSE_LINEAR; m++)
        refused(lb, 2, (actl_compose_method)m, ACTL_EUNSUPPORTED,
                "'bn' is a bottleneck adapter, which is non-linear");
    actl_input rb[2] = {input_of(r, 1, "road"), input_of(bn, 1, "bn")};
    refused(rb, 2, ACTL_COMPOSE_SEQUENTIAL, ACTL_EUNSUPPORTED, "'bn' is a bottleneck adapter");
    actl_input lr[2] = {input_of(l, 1, "lora"), input_of(r, 1, "road")};
    refused(lr, 2, ACTL_COMPOSE_CAT, ACTL_EINVAL, "'road' is a RoAd adapter");
    refused(lr, 2, ACTL_COMPOSE_UNION, ACTL_EINVAL, "'lora' is a lora adapter, union takes RoAd");
    /* stack is the store's */
    refused(lr, 2, ACTL_COMPOSE_STACK, ACTL_EINVAL, "actl_store_add_stack");
    actl_adapter_free(l);
    actl_adapter_free(bn);
    actl_adapter_free(r);
}

static void test_compose__refuses_road_group_mismatch_and_overlapping_union(void **state)
{
    (void)state;
    actl_adapter *r1 = test_load_fixture("base-tiny", "road-1"); /* g 4, q and v */
    actl_adapter *r2 = test_load_fixture("base-tiny", "road-2"); /* g 8 */
    actl_adapter *r4 = test_load_fixture("base-tiny", "road-4"); /* g 4, o and up */
    actl_input g[2] = {input_of(r1, 1, "g4"), input_of(r2, 1, "g8")};
    refused(g, 2, ACTL_COMPOSE_SEQUENTIAL, ACTL_ESHAPE, "'g4' has group_size 4 but 'g8' has 8");
    refused(g, 2, ACTL_COMPOSE_UNION, ACTL_ESHAPE, "group_size");
    actl_input same[2] = {input_of(r1, 1, "x"), input_of(r1, 0.5, "y")};
    refused(same, 2, ACTL_COMPOSE_UNION, ACTL_EINVAL,
            "module '" Q0 "' is in both 'x' and 'y'");
    /* disjoint fixtures are fine */
    actl_input ok[2] = {input_of(r1, 1, "x"), input_of(r4, 1, "z")};
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_UNION;
    actl_adapter *res = NULL;
    assert_ok(actl_compose(ok, 2, &o, &res, NULL));
    assert_int_equal(actl_adapter_module_count(res), 8);
    actl_adapter_free(res);
    actl_adapter_free(r1);
    actl_adapter_free(r2);
    actl_adapter_free(r4);
}

static void test_compose__refuses_bad_options_and_inputs(void **state)
{
    (void)state;
    actl_adapter *l = test_load_fixture("base-tiny", "lora");
    actl_input in[1] = {input_of(l, 1, "lora")};
    actl_adapter *res = (actl_adapter *)1;
    actl_compose_opts o = actl_compose_default_opts();
    o.method = ACTL_COMPOSE_TIES;
    static const double bad_density[] = {1.5, -0.1, NAN, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        o.density = bad_density[i];
        assert_err(actl_compose(in, 1, &o, &res, NULL), ACTL_EINVAL, "is not in (0, 1]");
        assert_null(res);
    }
    o.density = 0;
    o.method = ACTL_COMPOSE_SVD;
    o.rank = -1;
    assert_err(actl_compose(in, 1, &o, &res, NULL), ACTL_EINVAL, "rank -1 is below 1");
    o.rank = 0;
    o.method = (actl_compose_method)42;
    assert_err(actl_compose(in, 1, &o, &res, NULL), ACTL_EINVAL, "unknown method 42");
    o.method = ACTL_COMPOSE_DARE_LINEAR;
    o.has_seed = 1;
    o.seed = UINT64_MAX;
    assert_err(actl_compose(in, 1, &o, &res, NULL), ACTL_EINVAL, "above 2^63-1");
    o = actl_compose_default_opts();
    assert_err(actl_compose(in, 0, &o, &res, NULL), ACTL_EINVAL, "no inputs");
    assert_err(actl_compose(NULL, 1, &o, &res, NULL), ACTL_EINVAL, "NULL argument");
    in[0].weight = NAN;
    assert_err(actl_compose(in, 1, &o, &res, NULL), ACTL_EINVAL, "non-finite weight");
    in[0].weight = 1;

    /* different base models, named */
    tmod m[] = {{Q0, 32, 32, 2, NULL, NULL, NULL}};
    actl_adapter *other = make_lora("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2, "
                                    "\"base_model_name_or_path\": \"meta-llama/Llama-2-7b\"}",
                                    m, 1);
    actl_input two[2] = {input_of(l, 1, "lora"), input_of(other, 1, "llama")};
    assert_err(actl_compose(two, 2, &o, &res, NULL), ACTL_EINVAL,
               "'lora' for 'adapterctl/base-tiny', 'llama' for 'meta-llama/Llama-2-7b'");
    /* a module whose shapes differ between inputs */
    tmod wide[] = {{Q0, 32, 48, 2, NULL, NULL, NULL}};
    actl_adapter *w = make_lora("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}", wide, 1);
    two[1] = input_of(w, 1, "wide");
    assert_err(actl_compose(two, 2, &o, &res, NULL), ACTL_ESHAPE, "[32, 32] but 'wide' one of [32, 48]");
    /* a non-finite factor */
    double A[2 * 32], B[32 * 2];
    for (int i = 0; i < 64; i++)
        A[i] = B[i] = 0.1;
    A[5] = NAN;
    tmod nanm[] = {{Q0, 32, 32, 2, A, B, NULL}};
    actl_adapter *nn = make_lora("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2}", nanm, 1);
    two[1] = input_of(nn, 1, "nan");
    assert_err(actl_compose(two, 2, &o, &res, NULL), ACTL_EINVAL, "holds NaN at element 5");
    /* a fractional weight of a RoAd adapter with a negative alpha has no real power */
    static const char *const names[] = {Q0};
    static const int outs[] = {32};
    actl_adapter *r = make_road(2, 8, names, outs, 1);
    ((float *)((actl_tensor *)r->modules[0].road_alpha)->data)[3] = -0.5f;
    actl_input rr[1] = {input_of(r, 0.5, "neg")};
    o.method = ACTL_COMPOSE_UNION;
    assert_err(actl_compose(rr, 1, &o, &res, NULL), ACTL_EINVAL, "no real power");
    assert_null(res);
    actl_adapter_free(r);
    actl_adapter_free(nn);
    actl_adapter_free(w);
    actl_adapter_free(other);
    actl_adapter_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compose__method_names_round_trip),
        cmocka_unit_test(test_compose__cat_equals_the_weighted_sum_of_deltas),
        cmocka_unit_test(test_compose__svd_at_full_rank_equals_the_sum),
        cmocka_unit_test(test_compose__svd_reports_the_optimal_truncation_error),
        cmocka_unit_test(test_compose__ties_hand_worked),
        cmocka_unit_test(test_compose__magnitude_prune_hand_worked),
        cmocka_unit_test(test_compose__ties_at_density_one_elects_on_whole_deltas),
        cmocka_unit_test(test_compose__dare_follows_its_documented_stream),
        cmocka_unit_test(test_compose__dare_is_reproducible_from_its_seed),
        cmocka_unit_test(test_compose__pruned_methods_above_exact_size_report_their_true_error),
        cmocka_unit_test(test_compose__pruned_sketch_recovers_a_delta_of_rank_k),
        cmocka_unit_test(test_compose__linear_is_peft_factor_mix_and_inexact),
        cmocka_unit_test(test_compose__lora_bias_is_summed_with_weights_and_scales),
        cmocka_unit_test(test_compose__embedding_modules_and_saved_modules),
        cmocka_unit_test(test_compose__mos_is_materialized_first),
        cmocka_unit_test(test_compose__fan_in_fan_out_is_kept_and_mixing_refused),
        cmocka_unit_test(test_compose__sequential_equals_a_then_b),
        cmocka_unit_test(test_compose__road1_sequential_stays_road1),
        cmocka_unit_test(test_compose__union_of_disjoint_adapters_commutes),
        cmocka_unit_test(test_compose__lineage_records_inputs_options_and_error),
        cmocka_unit_test(test_compose__lineage_options_are_the_methods_own_with_the_effective_rank),
        cmocka_unit_test(test_compose__lineage_refuses_a_non_finite_value_saying_which),
        cmocka_unit_test(test_compose__refuses_weights_too_large_for_the_result),
        cmocka_unit_test(test_compose__refuses_weighted_inputs_carrying_saved_modules),
        cmocka_unit_test(test_compose__pattern_keys_match_their_module_under_old_and_new_peft),
        cmocka_unit_test(test_compose__refuses_dora_for_every_factor_method),
        cmocka_unit_test(test_compose__refuses_unequal_ranks_for_linear),
        cmocka_unit_test(test_compose__refuses_bottleneck_and_mixed_kinds),
        cmocka_unit_test(test_compose__refuses_road_group_mismatch_and_overlapping_union),
        cmocka_unit_test(test_compose__refuses_bad_options_and_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
