/* test_adapt.c: adapters in the decoder's form (lib/adapt.c; DESIGN.md 3, 10;
 * issue 6 "Per-sequence adapters").
 *
 * For every module slot of fixtures/base-tiny, actl__rt_pre / actl__rt_post on
 * random rows are compared with a plain fp64 evaluation written here from the
 * adapter's stored tensors and the base checkpoint's weights (read from its
 * safetensors file, not from the model): the wrapping definition of
 * DESIGN.md 3 with member 1 innermost, each member seeing the input as the
 * members outside it left it. Module scales come from actl_adapter_module
 * (the config parser's result, tested in test_peft.c); RoAd coefficients,
 * MoS gathering, DoRA norms and activations are computed here.
 * Tolerance: |got - ref| <= 2e-5 (1 + max |ref| of the row), fp32 sums of a
 * few dozen products. Both the per-row loop path (3 rows) and the sgemm
 * path (9 rows) run. */
#include "testutil.h"

#include "internal.h"

#include <math.h>
#include <pthread.h>

#define TINY FIXTURES "/base-tiny"
#define AD FIXTURES "/adapters/base-tiny/"
#define PREFIX "base_model.model."

static actl_model *model;
static actl_st *base_st;

static const char *const projs[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                     "mlp.down_proj"};
#define LAYERS 2
#define NSLOTS (LAYERS * 7 + 1)

static int setup(void **state)
{
    (void)state;
    if (actl_model_load(TINY, 0, &model) != ACTL_OK ||
        actl_st_open(TINY "/model.safetensors", &base_st) != ACTL_OK) {
        print_message("cannot load %s: %s\n", TINY, actl_errmsg());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    actl_model_free(model);
    actl_st_close(base_st);
    return 0;
}

/* ---- numbers ---------------------------------------------------------------- */

static double tget(const actl_tensor *t, size_t i)
{
    return test_value(actl_tensor_dtype(t), actl_tensor_data(t), i);
}

static uint64_t lcg_state = 0x9e3779b97f4a7c15ull;
static double lcg(void) /* in [-0.5, 0.5) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0 - 0.5;
}

static double act_ref(actl_activation a, double v)
{
    switch (a) {
    case ACTL_ACT_IDENTITY: return v;
    case ACTL_ACT_TANH: return tanh(v);
    case ACTL_ACT_RELU: return v > 0 ? v : 0;
    case ACTL_ACT_GELU: return 0.5 * v * (1 + erf(v / sqrt(2.0)));
    case ACTL_ACT_SILU: return v / (1 + exp(-v));
    }
    fail_msg("activation %d", (int)a);
    return 0;
}

/* ---- the reference: one module under members in[0..n), in fp64 --------------- */

static const actl_tensor *tens(const actl_adapter *a, const char *module, const char *suffix)
{
    char key[512];
    snprintf(key, sizeof key, PREFIX "%s%s", module, suffix);
    return actl_adapter_find(a, key);
}

/* The module's info, or false when the adapter does not touch it. */
static bool mod_info(const actl_adapter *a, const char *module, actl_module_info *mi)
{
    for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
        assert_ok(actl_adapter_module(a, i, mi));
        if (strcmp(mi->name, module) == 0)
            return true;
    }
    return false;
}

/* LoRA A [r, in] and B [out, r] as doubles (MoS gathered from its pools as
 * DESIGN.md 3.4 says). Caller frees. */
static void lora_ab(const actl_adapter *a, const char *module, int64_t in, int64_t out,
                    int64_t *r, double **A, double **B)
{
    actl_adapter_info ai;
    actl_adapter_info_get(a, &ai);
    if (ai.kind == ACTL_KIND_LORA) {
        const actl_tensor *ta = tens(a, module, ".lora_A.weight");
        const actl_tensor *tb = tens(a, module, ".lora_B.weight");
        if (!ta) {
            ta = tens(a, module, ".lora_embedding_A");
            tb = tens(a, module, ".lora_embedding_B");
        }
        assert_non_null(ta);
        assert_non_null(tb);
        *r = actl_tensor_shape(ta)[0];
        assert_int_equal(actl_tensor_numel(ta), *r * in);
        assert_int_equal(actl_tensor_numel(tb), *r * out);
        *A = malloc((size_t)(*r * in) * sizeof **A);
        *B = malloc((size_t)(*r * out) * sizeof **B);
        for (int64_t i = 0; i < *r * in; i++)
            (*A)[i] = tget(ta, (size_t)i);
        for (int64_t i = 0; i < *r * out; i++)
            (*B)[i] = tget(tb, (size_t)i);
        return;
    }
    assert_int_equal(ai.kind, ACTL_KIND_MOS);
    const char *type = strrchr(module, '.') + 1;
    char key[256];
    snprintf(key, sizeof key, PREFIX "mos.%s.pool_A", type);
    const actl_tensor *pa = actl_adapter_find(a, key);
    snprintf(key, sizeof key, PREFIX "mos.%s.pool_B", type);
    const actl_tensor *pb = actl_adapter_find(a, key);
    const actl_tensor *ia = tens(a, module, ".mos_index_A"), *ib = tens(a, module, ".mos_index_B");
    assert_non_null(pa);
    assert_non_null(pb);
    assert_non_null(ia);
    assert_non_null(ib);
    int64_t l = ai.shards, wa = in / l, wb = out / l;
    *r = actl_tensor_numel(ia) / l;
    *A = malloc((size_t)(*r * in) * sizeof **A);
    *B = malloc((size_t)(*r * out) * sizeof **B);
    for (int64_t j = 0; j < *r; j++)
        for (int64_t s = 0; s < l; s++) {
            int64_t xa = (int64_t)tget(ia, (size_t)(j * l + s));
            int64_t xb = (int64_t)tget(ib, (size_t)(j * l + s));
            for (int64_t c = 0; c < wa; c++)
                (*A)[j * in + s * wa + c] = tget(pa, (size_t)(xa * wa + c));
            for (int64_t c = 0; c < wb; c++)
                (*B)[(s * wb + c) * *r + j] = tget(pb, (size_t)(xb * wb + c));
        }
}

/* RoAd c[out], s[out] of DESIGN.md 3.2 at weight w (theta w, alpha^w). */
static void road_cs(const actl_adapter *a, const char *module, int64_t out, double w,
                    double *c, double *s)
{
    actl_adapter_info ai;
    actl_adapter_info_get(a, &ai);
    const actl_tensor *th = tens(a, module, ".road_theta"), *al = tens(a, module, ".road_alpha");
    assert_non_null(th);
    assert_non_null(al);
    int64_t g = ai.group_size, h = g / 2;
    for (int64_t p = 0; p < out; p++) {
        int64_t k = p / g, o = p % g, j = o % h, ic, is;
        switch (ai.variant) {
        case ACTL_ROAD_1: ic = is = k * h + j; break;
        case ACTL_ROAD_2: ic = is = p; break;
        default:
            ic = 2 * g * k + o;
            is = 2 * g * k + g + o;
        }
        double ac = tget(al, (size_t)ic), as = tget(al, (size_t)is);
        if (w != 1) {
            ac = pow(ac, w);
            as = pow(as, w);
        }
        c[p] = ac * cos(tget(th, (size_t)ic) * w);
        s[p] = as * sin(tget(th, (size_t)is) * w);
    }
}

/* y [m] += k U σ(D x), D [b, n], U [m, b] of a bottleneck module. */
static void bottleneck_ref(const actl_adapter *a, const char *module, double k,
                           actl_activation act, const double *x, double *y)
{
    const actl_tensor *D = tens(a, module, ".adapter_down.weight");
    const actl_tensor *U = tens(a, module, ".adapter_up.weight");
    assert_non_null(D);
    assert_non_null(U);
    int64_t b = actl_tensor_shape(D)[0], n = actl_tensor_shape(D)[1], m = actl_tensor_shape(U)[0];
    double h[64];
    assert_true(b <= 64);
    for (int64_t j = 0; j < b; j++) {
        double v = 0;
        for (int64_t i = 0; i < n; i++)
            v += tget(D, (size_t)(j * n + i)) * x[i];
        h[j] = act_ref(act, v);
    }
    double d[256];
    assert_true(m <= 256);
    for (int64_t p = 0; p < m; p++) {
        double v = 0;
        for (int64_t j = 0; j < b; j++)
            v += tget(U, (size_t)(p * b + j)) * h[j];
        d[p] = v;
    }
    for (int64_t p = 0; p < m; p++)
        y[p] += k * d[p];
}

typedef struct member {
    const actl_adapter *a;
    double w;
} member;

/* The module's output for input x [in] under members mem[0..n) (the first
 * innermost). W [out, in] and b come from the base checkpoint. */
static void module_ref(const member *mem, int n, const char *module, const double *x,
                       double *y)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", module);
    const actl_tensor *W = actl_st_find(base_st, name);
    assert_non_null(W);
    snprintf(name, sizeof name, "%s.bias", module);
    const actl_tensor *bias = actl_st_find(base_st, name);
    int64_t out = actl_tensor_shape(W)[0], in = actl_tensor_shape(W)[1];
    double *xs = calloc((size_t)(n + 1) * (size_t)in, sizeof *xs); /* xs[j]: member j's input */
    double *base = calloc((size_t)out, sizeof *base);
    /* inputs: the outermost member sees x; a series-on-input member hands on
     * x + s w U σ(D x) */
    memcpy(xs + (size_t)n * (size_t)in, x, (size_t)in * sizeof *x);
    for (int j = n - 1; j >= 0; j--) {
        double *cur = xs + (size_t)(j + 1) * (size_t)in, *next = xs + (size_t)j * (size_t)in;
        memcpy(next, cur, (size_t)in * sizeof *next);
        actl_module_info mi;
        actl_adapter_info ai;
        actl_adapter_info_get(mem[j].a, &ai);
        if (ai.kind == ACTL_KIND_BOTTLENECK && mod_info(mem[j].a, module, &mi) &&
            mi.placement == ACTL_PLACE_INPUT)
            bottleneck_ref(mem[j].a, module, mi.scale * mem[j].w, ai.activation, cur, next);
    }
    /* innermost: the base, W x0 + b; then each member wraps what is inside it */
    const double *x0 = xs;
    for (int64_t p = 0; p < out; p++) {
        double v = 0;
        for (int64_t i = 0; i < in; i++)
            v += tget(W, (size_t)(p * in + i)) * x0[i];
        base[p] = v;
        y[p] = v + (bias ? tget(bias, (size_t)p) : 0);
    }
    for (int j = 0; j < n; j++) {
        const actl_adapter *a = mem[j].a;
        double w = mem[j].w;
        const double *xj = xs + (size_t)(j + 1) * (size_t)in;
        actl_module_info mi;
        actl_adapter_info ai;
        actl_adapter_info_get(a, &ai);
        if (!mod_info(a, module, &mi))
            continue;
        switch (ai.kind) {
        case ACTL_KIND_LORA:
        case ACTL_KIND_MOS: {
            int64_t r;
            double *A, *B, t[64], d[256];
            lora_ab(a, module, in, out, &r, &A, &B);
            for (int64_t q = 0; q < r; q++) {
                t[q] = 0;
                for (int64_t i = 0; i < in; i++)
                    t[q] += A[q * in + i] * xj[i];
            }
            for (int64_t p = 0; p < out; p++) {
                d[p] = 0;
                for (int64_t q = 0; q < r; q++)
                    d[p] += B[p * r + q] * t[q];
            }
            double k = w * mi.scale;
            if (mi.flags & ACTL_MOD_DORA) {
                /* F = (1 - w) + w m / ||W + w s B A||_row ; y = F (W x + w s B A x) + b */
                const actl_tensor *mag = tens(a, module, ".lora_magnitude_vector");
                assert_non_null(mag);
                for (int64_t p = 0; p < out; p++) {
                    double ss = 0;
                    for (int64_t i = 0; i < in; i++) {
                        double v = tget(W, (size_t)(p * in + i));
                        for (int64_t q = 0; q < r; q++)
                            v += k * B[p * r + q] * A[q * in + i];
                        ss += v * v;
                    }
                    double F = (1 - w) + w * tget(mag, (size_t)p) / sqrt(ss);
                    y[p] = F * (y[p] - (bias ? tget(bias, (size_t)p) : 0) + k * d[p]) +
                           (bias ? tget(bias, (size_t)p) : 0);
                }
            } else {
                for (int64_t p = 0; p < out; p++)
                    y[p] += k * d[p];
            }
            if (mi.flags & ACTL_MOD_BIAS) {
                const actl_tensor *lb = tens(a, module, ".lora_B.bias");
                assert_non_null(lb);
                for (int64_t p = 0; p < out; p++)
                    y[p] += k * tget(lb, (size_t)p);
            }
            free(A);
            free(B);
            break;
        }
        case ACTL_KIND_ROAD: {
            double c[256], s[256], yy[256];
            road_cs(a, module, out, w, c, s);
            memcpy(yy, y, (size_t)out * sizeof *yy);
            int64_t g = ai.group_size, h = g / 2;
            for (int64_t p = 0; p < out; p++) {
                bool first = p % g < h;
                int64_t q = first ? p + h : p - h;
                y[p] = first ? c[p] * yy[p] - s[p] * yy[q] : c[p] * yy[p] + s[p] * yy[q];
            }
            break;
        }
        case ACTL_KIND_BOTTLENECK:
            if (mi.placement == ACTL_PLACE_OUTPUT) {
                double h[256];
                memcpy(h, y, (size_t)out * sizeof *h);
                bottleneck_ref(a, module, mi.scale * w, ai.activation, h, y);
            } else if (mi.placement == ACTL_PLACE_PARALLEL) {
                bottleneck_ref(a, module, mi.scale * w, ai.activation, xj, y);
            }
            break;
        default: fail_msg("kind %d", (int)ai.kind);
        }
    }
    free(xs);
    free(base);
}

/* ---- the runtime against the reference ---------------------------------------- */

static void slot_module(int64_t slot, char *buf, size_t cap)
{
    if (slot == LAYERS * 7)
        snprintf(buf, cap, "lm_head");
    else
        snprintf(buf, cap, "model.layers.%d.%s", (int)(slot / 7), projs[slot % 7]);
}

static bool any_touches(const member *mem, int n, const char *module)
{
    actl_module_info mi;
    for (int j = 0; j < n; j++)
        if (mod_info(mem[j].a, module, &mi))
            return true;
    return false;
}

/* Runs rt on `rows` random rows of every slot and compares with module_ref.
 * Returns the largest |post - base| seen (the adapter's effect). */
static double check_rt(const actl__rt *rt, const member *mem, int n, int64_t rows)
{
    double effect = 0;
    for (int64_t slot = 0; slot < NSLOTS; slot++) {
        char module[128], wname[160];
        slot_module(slot, module, sizeof module);
        snprintf(wname, sizeof wname, "%s.weight", module);
        const actl_tensor *W = actl_st_find(base_st, wname);
        assert_non_null(W);
        int64_t out = actl_tensor_shape(W)[0], in = actl_tensor_shape(W)[1];
        bool touched = any_touches(mem, n, module);
        if (touched != actl__rt_touches(rt, slot))
            fail_msg("%s: touches says %d, the adapters %d", module, !touched, touched);
        if (!touched)
            continue;
        float *x = malloc((size_t)(rows * in) * sizeof *x);
        float *x0 = malloc((size_t)(rows * in) * sizeof *x0);
        float *y = malloc((size_t)(rows * out) * sizeof *y);
        double *xd = malloc((size_t)in * sizeof *xd), *ref = malloc((size_t)out * sizeof *ref);
        for (int64_t i = 0; i < rows * in; i++)
            x[i] = (float)(2 * lcg());
        const float *xb = x;
        if (actl__rt_has_pre(rt, slot)) {
            assert_ok(actl__rt_pre(rt, slot, x, rows, x0));
            xb = x0;
        }
        /* what the decoder hands post: x0 Wᵀ + b */
        snprintf(wname, sizeof wname, "%s.bias", module);
        const actl_tensor *bias = actl_st_find(base_st, wname);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t p = 0; p < out; p++) {
                double v = bias ? tget(bias, (size_t)p) : 0;
                for (int64_t c = 0; c < in; c++)
                    v += (double)xb[i * in + c] * tget(W, (size_t)(p * in + c));
                y[i * out + p] = (float)v;
            }
        assert_ok(actl__rt_post(rt, slot, x, xb, rows, y));
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t c = 0; c < in; c++)
                xd[c] = x[i * in + c];
            module_ref(NULL, 0, module, xd, ref);
            double plain[256];
            memcpy(plain, ref, (size_t)out * sizeof *ref);
            module_ref(mem, n, module, xd, ref);
            double mx = 0;
            for (int64_t p = 0; p < out; p++)
                mx = fmax(mx, fabs(ref[p]));
            for (int64_t p = 0; p < out; p++) {
                double got = y[i * out + p];
                if (!(fabs(got - ref[p]) <= 2e-5 * (1 + mx)))
                    fail_msg("%s row %lld output %lld: %.8g, the reference %.8g", module,
                             (long long)i, (long long)p, got, ref[p]);
                effect = fmax(effect, fabs(ref[p] - plain[p]));
            }
        }
        free(x);
        free(x0);
        free(y);
        free(xd);
        free(ref);
    }
    return effect;
}

static actl_adapter *load(const char *name)
{
    char dir[256];
    snprintf(dir, sizeof dir, AD "%s", name);
    actl_adapter *a = NULL;
    assert_ok(actl_adapter_load(dir, &a));
    return a;
}

/* Members mem[0..n) through actl__rt_new, then check_rt at 3 and 9 rows;
 * the adapters must change the modules they touch. */
static void check_members(const member *mem, int n)
{
    actl_input in[8];
    assert_true(n <= 8);
    for (int j = 0; j < n; j++)
        in[j] = (actl_input){.adapter = mem[j].a, .weight = mem[j].w, .ref = "test"};
    actl__rt *rt = NULL;
    assert_ok(actl__rt_new(model, in, (size_t)n, false, &rt));
    double e1 = check_rt(rt, mem, n, 3);
    double e2 = check_rt(rt, mem, n, 9);
    bool any_w = false;
    for (int j = 0; j < n; j++)
        any_w = any_w || mem[j].w != 0;
    if (any_w && (e1 < 1e-3 || e2 < 1e-3))
        fail_msg("the adapters barely change the modules (%g, %g)", e1, e2);
    actl__rt_free(rt);
}

static void check_one(const char *name, double w)
{
    actl_adapter *a = load(name);
    member m = {a, w};
    check_members(&m, 1);
    actl_adapter_free(a);
}

/* ---- per kind ------------------------------------------------------------------ */

static void test_adapt__lora_matches_reference(void **state)
{
    (void)state;
    check_one("lora", 1.0);
    check_one("lora-fanin", 1.0);
}

static void test_adapt__lora_weight_scales_the_delta(void **state)
{
    (void)state;
    check_one("lora", 0.5);
    check_one("lora", -1.25);
}

static void test_adapt__lora_patterns_on_all_seven_projections(void **state)
{
    (void)state;
    check_one("lora-patterns", 1.0);
}

static void test_adapt__lora_bias_is_added_scaled(void **state)
{
    (void)state;
    check_one("lora-bias", 1.0);
    check_one("lora-bias", 0.3);
}

static void test_adapt__lora_half_precision_tensors(void **state)
{
    (void)state;
    check_one("lora-bf16", 1.0);
    check_one("lora-f16", 1.0);
}

/* ---- 16-bit LoRA factors on odd widths --------------------------------------------- */

/* A random tensor stored as dt, the values v(i) widened from a float. Some
 * are tiny (F16 subnormals) and one is -0, so the widening is exercised on
 * every kind of value it meets. */
static actl_tensor *typed_tensor(const char *name, actl_dtype dt, int ndim, const int64_t *shape,
                                double scale)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *f = malloc((size_t)n * sizeof *f);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        f[i] = (float)(2 * scale * lcg());
    if (dt != ACTL_F32) {
        for (int64_t i = 0; i < n; i += 7)
            f[i] = (float)(3e-6 * (i % 2 ? -1 : 1) * (1 + (double)(i % 5)));
        f[n / 2] = -0.0f;
    }
    if (dt == ACTL_BF16)
        actl_f32_to_bf16(f, h, (size_t)n);
    else if (dt == ACTL_F16)
        actl_f32_to_f16(f, h, (size_t)n);
    actl_tensor *t = NULL;
    assert_ok(actl_tensor_new(name, dt, ndim, shape, dt == ACTL_F32 ? (void *)f : (void *)h, &t));
    free(f);
    free(h);
    return t;
}

/* An F32 LLaMA base in dir whose widths are not multiples of the kernels'
 * 8 and 16 lanes: hidden 40 (4 heads of 10, 2 kv heads: k/v 20 wide),
 * intermediate 52. */
#define ODD_DIM 40
#define ODD_KV 20
#define ODD_HIDDEN 52
static const int64_t odd_shape[7][2] = {{ODD_DIM, ODD_DIM}, {ODD_KV, ODD_DIM},
                                        {ODD_KV, ODD_DIM},  {ODD_DIM, ODD_DIM},
                                        {ODD_HIDDEN, ODD_DIM}, {ODD_HIDDEN, ODD_DIM},
                                        {ODD_DIM, ODD_HIDDEN}};

static void make_odd_base(const char *dir)
{
    actl_tensor *ts[3 + LAYERS * 9];
    size_t k = 0;
    int64_t emb[2] = {64, ODD_DIM}, norm[1] = {ODD_DIM};
    ts[k++] = typed_tensor("model.embed_tokens.weight", ACTL_F32, 2, emb, 0.5);
    ts[k++] = typed_tensor("lm_head.weight", ACTL_F32, 2, emb, 0.5);
    ts[k++] = typed_tensor("model.norm.weight", ACTL_F32, 1, norm, 1);
    for (int l = 0; l < LAYERS; l++) {
        char name[128];
        for (int p = 0; p < 7; p++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, projs[p]);
            ts[k++] = typed_tensor(name, ACTL_F32, 2, odd_shape[p], 0.3);
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        ts[k++] = typed_tensor(name, ACTL_F32, 1, norm, 1);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        ts[k++] = typed_tensor(name, ACTL_F32, 1, norm, 1);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_ok(actl_st_write(path, (const actl_tensor *const *)ts, k, NULL));
    for (size_t i = 0; i < k; i++)
        actl_tensor_free(ts[i]);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
               "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
               "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 10, "
               "\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-05, "
               "\"rope_theta\": 10000.0, \"vocab_size\": 64, \"tie_word_embeddings\": false}\n",
            ODD_DIM, ODD_HIDDEN, LAYERS);
    assert_int_equal(fclose(f), 0);
}

/* A LoRA of rank 5 (not a multiple of the kernels' 4 rows) on all seven
 * projections of the odd base, its factors stored as dt. */
static actl_adapter *odd_lora(actl_dtype dt)
{
    actl_tensor *ts[LAYERS * 7 * 2];
    size_t k = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < 7; p++) {
            char name[160];
            int64_t sa[2] = {5, odd_shape[p][1]}, sb[2] = {odd_shape[p][0], 5};
            snprintf(name, sizeof name, PREFIX "model.layers.%d.%s.lora_A.weight", l, projs[p]);
            ts[k++] = typed_tensor(name, dt, 2, sa, 0.5);
            snprintf(name, sizeof name, PREFIX "model.layers.%d.%s.lora_B.weight", l, projs[p]);
            ts[k++] = typed_tensor(name, dt, 2, sb, 0.5);
        }
    actl_adapter *a = NULL;
    assert_ok(actl_adapter_new("{\"peft_type\": \"LORA\", \"r\": 5, \"lora_alpha\": 7, "
                               "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", "
                               "\"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]}",
                               (const actl_tensor *const *)ts, k, "odd", &a));
    for (size_t i = 0; i < k; i++)
        actl_tensor_free(ts[i]);
    return a;
}

/* BF16 and F16 factors stay 16-bit in the decoder and are widened inside the
 * kernels: every vector tail (widths 20, 40, 52; rank 5), both paths (3 and 9
 * rows), F16 subnormals and -0, against the fp64 reference. */
static void test_adapt__half_lora_factors_on_odd_widths(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    make_odd_base(dir);
    actl_model *keep_model = model;
    actl_st *keep_st = base_st;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_ok(actl_model_load(dir, 0, &model));
    assert_ok(actl_st_open(path, &base_st));
    actl_dtype dts[3] = {ACTL_BF16, ACTL_F16, ACTL_F32};
    for (int d = 0; d < 3; d++) {
        actl_adapter *a = odd_lora(dts[d]);
        member m = {a, 0.8};
        check_members(&m, 1);
        actl_adapter_free(a);
    }
    actl_model_free(model);
    actl_st_close(base_st);
    model = keep_model;
    base_st = keep_st;
    test_rmtree(dir);
    free(dir);
}

static void test_adapt__dora_scales_rows_by_magnitude_over_norm(void **state)
{
    (void)state;
    check_one("lora-dora", 1.0);
    check_one("lora-dora", 0.6);
}

static void test_adapt__road_variants_rotate_output_pairs(void **state)
{
    (void)state;
    check_one("road-1", 1.0);
    check_one("road-2", 1.0);
    check_one("road-4", 1.0);
    check_one("road-1", 0.5);
    check_one("road-4", 0.7);
}

static void test_adapt__bottleneck_series_input_and_output(void **state)
{
    (void)state;
    check_one("bottleneck-series", 1.0);
    check_one("bottleneck-series", 0.5);
}

static void test_adapt__bottleneck_parallel_learned_scale(void **state)
{
    (void)state;
    check_one("bottleneck-parallel", 1.0);
    check_one("bottleneck-parallel", 2.0);
}

static void test_adapt__mos_equals_its_gathered_lora(void **state)
{
    (void)state;
    check_one("mos", 1.0);
    check_one("mos", 0.25);
}

/* ---- adapters made here ------------------------------------------------------------- */

/* A copy of a fixture with config keys set from set_json and the tensors whose
 * key contains `drop` left out (drop NULL: none). */
static actl_adapter *variant(const char *name, const char *set_json, const char *drop)
{
    actl_adapter *a = load(name), *out = NULL;
    json_error_t e;
    json_t *cfg = json_loads(actl_adapter_config(a), 0, &e);
    json_t *set = json_loads(set_json, 0, &e);
    assert_non_null(cfg);
    assert_non_null(set);
    assert_int_equal(json_object_update(cfg, set), 0);
    char *text = json_dumps(cfg, JSON_COMPACT);
    size_t n = 0, total = actl_adapter_tensor_count(a);
    const actl_tensor **ts = calloc(total, sizeof *ts);
    for (size_t i = 0; i < total; i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        if (!drop || !strstr(actl_tensor_name(t), drop))
            ts[n++] = t;
    }
    assert_ok(actl_adapter_new(text, ts, n, name, &out));
    free(ts);
    free(text);
    json_decref(cfg);
    json_decref(set);
    actl_adapter_free(a);
    return out;
}

static void test_adapt__bottleneck_activations(void **state)
{
    (void)state;
    const char *acts[] = {"gelu", "silu", "relu", "identity"};
    for (size_t i = 0; i < 4; i++) {
        char set[96];
        snprintf(set, sizeof set, "{\"non_linearity\": \"%s\"}", acts[i]);
        actl_adapter *a = variant("bottleneck-series", set, NULL);
        member m = {a, 1.0};
        check_members(&m, 1);
        actl_adapter_free(a);
    }
}

static actl_tensor *rand_tensor(const char *name, int64_t d0, int64_t d1, double amp)
{
    actl_tensor *t = NULL;
    int64_t shape[2] = {d0, d1};
    float *v = malloc((size_t)(d0 * (d1 ? d1 : 1)) * sizeof *v);
    for (int64_t i = 0; i < d0 * (d1 ? d1 : 1); i++)
        v[i] = (float)(amp * lcg());
    assert_ok(actl_tensor_new(name, ACTL_F32, d1 ? 2 : 1, shape, v, &t));
    free(v);
    return t;
}

#define BASE_ID "\"base_model_name_or_path\": \"adapterctl/base-tiny\""

/* LoRA on the embedding table (lora_embedding_A [r, vocab], _B [dim, r]) and
 * on lm_head, r = 4, alpha 8. */
static actl_adapter *embed_head_lora(void)
{
    actl_tensor *t[4] = {
        rand_tensor(PREFIX "model.embed_tokens.lora_embedding_A", 4, 64, 1.0),
        rand_tensor(PREFIX "model.embed_tokens.lora_embedding_B", 32, 4, 1.0),
        rand_tensor(PREFIX "lm_head.lora_A.weight", 4, 32, 1.0),
        rand_tensor(PREFIX "lm_head.lora_B.weight", 64, 4, 1.0),
    };
    actl_adapter *a = NULL;
    assert_ok(actl_adapter_new("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, " BASE_ID
                               ", \"target_modules\": [\"embed_tokens\", \"lm_head\"]}",
                               (const actl_tensor *const *)t, 4, "embed-head", &a));
    for (int i = 0; i < 4; i++)
        actl_tensor_free(t[i]);
    return a;
}

static void test_adapt__embedding_lora_adds_rows_of_ba_transposed(void **state)
{
    (void)state;
    actl_adapter *a = embed_head_lora();
    member m = {a, 0.75};
    check_members(&m, 1); /* lm_head */
    actl_input in = {.adapter = a, .weight = 0.75, .ref = "embed-head"};
    actl__rt *rt = NULL;
    assert_ok(actl__rt_new(model, &in, 1, false, &rt));
    const actl_tensor *A = actl_adapter_find(a, PREFIX "model.embed_tokens.lora_embedding_A");
    const actl_tensor *B = actl_adapter_find(a, PREFIX "model.embed_tokens.lora_embedding_B");
    actl_module_info mi;
    assert_true(mod_info(a, "model.embed_tokens", &mi));
    int32_t ids[5] = {0, 7, 63, 7, 31};
    float x[5 * 32];
    double ref[5 * 32];
    for (int i = 0; i < 5 * 32; i++)
        ref[i] = x[i] = (float)lcg();
    actl__rt_embed(rt, ids, 5, x);
    for (int i = 0; i < 5; i++)
        for (int d = 0; d < 32; d++) {
            /* s w (B A)ᵀ[id, d] = s w sum_j B[d, j] A[j, id] */
            double v = 0;
            for (int j = 0; j < 4; j++)
                v += tget(B, (size_t)(d * 4 + j)) * tget(A, (size_t)(j * 64 + ids[i]));
            ref[i * 32 + d] += 0.75 * mi.scale * v;
            assert_float_equal(x[i * 32 + d], ref[i * 32 + d], 1e-5 * (1 + fabs(ref[i * 32 + d])));
        }
    actl__rt_free(rt);
    actl_adapter_free(a);
}

/* A BF16 copy of base-tiny with q/k/v biases (attention_bias), in dir. */
static void make_biased_bf16_base(const char *dir)
{
    char path[4200];
    actl_st *st = NULL;
    assert_ok(actl_st_open(TINY "/model.safetensors", &st));
    size_t n = actl_st_count(st), k = 0;
    actl_tensor **ts = calloc(n + 3 * LAYERS, sizeof *ts);
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = actl_st_tensor(st, i);
        size_t cnt = (size_t)actl_tensor_numel(t);
        float *f = malloc(cnt * sizeof *f);
        uint16_t *h = malloc(cnt * sizeof *h);
        assert_ok(actl_tensor_to_f32(t, f));
        actl_f32_to_bf16(f, h, cnt);
        assert_ok(actl_tensor_new(actl_tensor_name(t), ACTL_BF16, actl_tensor_ndim(t),
                                  actl_tensor_shape(t), h, &ts[k++]));
        free(f);
        free(h);
    }
    for (int l = 0; l < LAYERS; l++)
        for (int p = 0; p < 3; p++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, projs[p]);
            int64_t out = p == 0 ? 32 : 16;
            uint16_t h[32];
            float f[32];
            for (int64_t i = 0; i < out; i++)
                f[i] = (float)lcg();
            actl_f32_to_bf16(f, h, (size_t)out);
            assert_ok(actl_tensor_new(name, ACTL_BF16, 1, &out, h, &ts[k++]));
        }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_ok(actl_st_write(path, (const actl_tensor *const *)ts, k, NULL));
    for (size_t i = 0; i < k; i++)
        actl_tensor_free(ts[i]);
    free(ts);
    actl_st_close(st);
    char *cfg = NULL;
    size_t len;
    FILE *f = fopen(TINY "/config.json", "rb");
    assert_non_null(f);
    cfg = calloc(1, 1 << 16);
    len = fread(cfg, 1, (1 << 16) - 1, f);
    fclose(f);
    cfg[len] = 0;
    char *at = strstr(cfg, "\"attention_bias\": false");
    assert_non_null(at);
    memcpy(at, "\"attention_bias\": true ", strlen("\"attention_bias\": true "));
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(cfg, 1, len, f), len);
    fclose(f);
    free(cfg);
}

/* DoRA scales W x but not the base bias; lora_B.bias adds s w bias. The
 * weights kept as BF16 feed DoRA's norms. */
static void test_adapt__dora_and_lora_bias_on_a_bf16_base_with_biases(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    make_biased_bf16_base(dir);
    actl_model *keep_model = model;
    actl_st *keep_st = base_st;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_ok(actl_model_load(dir, 0, &model));
    assert_ok(actl_st_open(path, &base_st));
    actl_adapter *d = load("lora-dora"), *lb = load("lora-bias"), *r = load("road-2");
    member m[3] = {{d, 0.7}, {lb, 1.0}, {r, 1.0}};
    check_members(m, 1);
    m[0].w = 1.0;
    check_members(m, 3);
    actl_adapter_free(d);
    actl_adapter_free(lb);
    actl_adapter_free(r);
    actl_model_free(model);
    actl_st_close(base_st);
    model = keep_model;
    base_st = keep_st;
    test_rmtree(dir);
    free(dir);
}

/* ---- stacks --------------------------------------------------------------------- */

static void test_adapt__stack_road_over_lora(void **state)
{
    (void)state;
    actl_adapter *l = load("lora"), *r = load("road-1"), *r4 = load("road-4");
    member m[3] = {{l, 1.0}, {r, 1.0}, {r4, 0.5}};
    check_members(m, 2);
    check_members(m, 3);
    actl_adapter_free(l);
    actl_adapter_free(r);
    actl_adapter_free(r4);
}

static void test_adapt__stack_input_bottleneck_then_lora(void **state)
{
    (void)state;
    actl_adapter *b = load("bottleneck-series"), *l = load("lora-patterns"),
                 *p = load("bottleneck-parallel");
    member m[3] = {{b, 1.0}, {l, 0.8}, {p, 1.0}};
    check_members(m, 2);
    check_members(m, 3);
    actl_adapter_free(b);
    actl_adapter_free(l);
    actl_adapter_free(p);
}

/* LoRA between two input bottlenecks sees x after the outer one only: an
 * input neither the module's x nor the base's x0. */
static void test_adapt__stack_lora_between_input_bottlenecks(void **state)
{
    (void)state;
    actl_adapter *b = load("bottleneck-series"), *l = load("lora-patterns"),
                 *g = variant("bottleneck-series", "{\"non_linearity\": \"gelu\"}", NULL);
    member m[4] = {{b, 1.0}, {l, 1.0}, {g, 0.7}, {l, 0.5}};
    check_members(m, 3);
    check_members(m, 4);
    actl_adapter_free(b);
    actl_adapter_free(l);
    actl_adapter_free(g);
}

static void test_adapt__stack_dora_first_then_road_and_mos(void **state)
{
    (void)state;
    actl_adapter *d = load("lora-dora"), *r = load("road-2"), *mos = load("mos");
    member m[3] = {{d, 0.9}, {r, 1.0}, {mos, 1.0}};
    check_members(m, 3);
    actl_adapter_free(d);
    actl_adapter_free(r);
    actl_adapter_free(mos);
}

static void test_adapt__empty_and_zero_weight_are_the_base(void **state)
{
    (void)state;
    actl__rt *rt = NULL;
    assert_ok(actl__rt_new(model, NULL, 0, false, &rt));
    for (int64_t s = 0; s < NSLOTS; s++) {
        assert_false(actl__rt_touches(rt, s));
        assert_false(actl__rt_has_pre(rt, s));
    }
    actl__rt_free(rt);
    actl_adapter *r = load("road-4"), *d = load("lora-dora");
    member m[2] = {{d, 0.0}, {r, 0.0}};
    check_members(m, 2); /* the reference gives the base at w = 0 */
    actl_adapter_free(r);
    actl_adapter_free(d);
}

/* Posts on distinct rows from several threads at once give what one thread gives. */
typedef struct job {
    const actl__rt *rt;
    int64_t slot, rows;
    const float *x;
    float *y;
    int rc;
} job;

static void *run_job(void *p)
{
    job *j = p;
    for (int it = 0; it < 50 && !j->rc; it++)
        j->rc = actl__rt_post(j->rt, j->slot, j->x, j->x, j->rows, j->y);
    return NULL;
}

static void test_adapt__posts_run_concurrently(void **state)
{
    (void)state;
    actl_adapter *l = load("lora-patterns"), *r = load("road-2");
    actl_input in[2] = {{.adapter = l, .weight = 1, .ref = "l"}, {.adapter = r, .weight = 1, .ref = "r"}};
    actl__rt *rt = NULL;
    assert_ok(actl__rt_new(model, in, 2, false, &rt));
    int64_t slot = 1 * 7 + 2; /* layer 1 v_proj [16, 32]: both touch it */
    enum { T = 4, ROWS = 9 };
    float x[T][ROWS * 32], y[T][ROWS * 16], want[T][ROWS * 16];
    job jobs[T];
    pthread_t th[T];
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < ROWS * 32; i++)
            x[t][i] = (float)lcg();
        /* 50 posts on zeros: RoAd and LoRA are linear in y, so each post's
         * result is the same affine map applied 50 times; one thread alone
         * computes the reference */
        memset(y[t], 0, sizeof y[t]);
        memset(want[t], 0, sizeof want[t]);
        int64_t rows = t % 2 ? ROWS : 3;
        jobs[t] = (job){rt, slot, rows, x[t], y[t], 0};
    }
    for (int t = 0; t < T; t++) {
        job alone = jobs[t];
        alone.y = want[t];
        run_job(&alone);
        assert_ok(alone.rc);
    }
    for (int t = 0; t < T; t++)
        assert_int_equal(pthread_create(&th[t], NULL, run_job, &jobs[t]), 0);
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        assert_ok(jobs[t].rc);
        assert_memory_equal(y[t], want[t], sizeof y[t]);
    }
    actl__rt_free(rt);
    actl_adapter_free(l);
    actl_adapter_free(r);
}

/* ---- refusals ------------------------------------------------------------------- */

static int rt_new1(const actl_adapter *a, double w, const char *ref)
{
    actl_input in = {.adapter = a, .weight = w, .ref = ref};
    actl__rt *rt = (actl__rt *)&in; /* must be reset to NULL on failure */
    int rc = actl__rt_new(model, &in, 1, false, &rt);
    if (rc)
        assert_null(rt);
    actl__rt_free(rt);
    return rc;
}

static void test_adapt__refuses_adapter_trained_on_another_model(void **state)
{
    (void)state;
    actl_adapter *a = variant("lora", "{\"base_model_name_or_path\": \"meta-llama/Llama-2-7b-hf\"}",
                              NULL);
    assert_err(rt_new1(a, 1, "math@3"), ACTL_EINVAL,
               "'math@3' was trained on 'meta-llama/Llama-2-7b-hf', but the model is "
               "'adapterctl/base-tiny'");
    actl_adapter_free(a);
    /* the same last path component is the same model */
    a = variant("lora", "{\"base_model_name_or_path\": \"/models/base-tiny\"}", NULL);
    assert_ok(rt_new1(a, 1, "local"));
    actl_adapter_free(a);
}

static void test_adapt__refuses_adapter_made_for_another_shape(void **state)
{
    (void)state;
    actl_tensor *t[2] = {rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_A.weight", 4, 16, 1),
                         rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_B.weight", 32, 4, 1)};
    actl_adapter *a = NULL;
    assert_ok(actl_adapter_new("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, " BASE_ID
                               ", \"target_modules\": [\"q_proj\"]}",
                               (const actl_tensor *const *)t, 2, "narrow", &a));
    assert_err(rt_new1(a, 1, "narrow@1"), ACTL_ESHAPE, "q_proj");
    assert_err(rt_new1(a, 1, "narrow@1"), ACTL_ESHAPE, "'narrow@1'");
    actl_adapter_free(a);
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    /* a module the model does not have */
    actl_tensor *u[2] = {rand_tensor(PREFIX "model.layers.5.self_attn.q_proj.lora_A.weight", 4, 32, 1),
                         rand_tensor(PREFIX "model.layers.5.self_attn.q_proj.lora_B.weight", 32, 4, 1)};
    assert_ok(actl_adapter_new("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, " BASE_ID
                               ", \"target_modules\": [\"q_proj\"]}",
                               (const actl_tensor *const *)u, 2, "deep", &a));
    assert_err(rt_new1(a, 1, "deep@2"), ACTL_ENOTFOUND, "model.layers.5.self_attn.q_proj");
    actl_adapter_free(a);
    actl_tensor_free(u[0]);
    actl_tensor_free(u[1]);
}

static void test_adapt__refuses_dora_that_is_not_first(void **state)
{
    (void)state;
    actl_adapter *l = load("lora"), *d = load("lora-dora");
    actl_input in[2] = {{.adapter = l, .weight = 1, .ref = "plain@1"},
                        {.adapter = d, .weight = 1, .ref = "dora@2"}};
    actl__rt *rt = NULL;
    assert_err(actl__rt_new(model, in, 2, false, &rt), ACTL_EUNSUPPORTED, "'dora@2'");
    assert_err(actl__rt_new(model, in, 2, false, &rt), ACTL_EUNSUPPORTED, "DoRA runs only as the first");
    assert_null(rt);
    /* first on its modules it is fine, whatever comes before on other modules */
    actl_adapter *r4 = load("road-4");
    in[0].adapter = r4;
    assert_ok(actl__rt_new(model, in, 2, false, &rt));
    actl__rt_free(rt);
    actl_adapter_free(r4);
    actl_adapter_free(l);
    actl_adapter_free(d);
}

static void test_adapt__refuses_modules_the_decoder_does_not_run(void **state)
{
    (void)state;
    actl_adapter *a = load("lora-embedding"); /* modules_to_save: lm_head */
    assert_err(rt_new1(a, 1, "emb@1"), ACTL_EUNSUPPORTED, "'emb@1': tensor '" PREFIX "lm_head");
    actl_adapter_free(a);
    /* RoAd on the embedding table */
    actl_tensor *t[2] = {rand_tensor(PREFIX "model.embed_tokens.road_theta", 16, 0, 1),
                         rand_tensor(PREFIX "model.embed_tokens.road_alpha", 16, 0, 1)};
    assert_ok(actl_adapter_new("{\"peft_type\": \"ROAD\", \"variant\": \"road_1\", "
                               "\"group_size\": 4, " BASE_ID ", \"target_modules\": "
                               "[\"embed_tokens\"]}",
                               (const actl_tensor *const *)t, 2, "roademb", &a));
    int rc = rt_new1(a, 1, "roademb@1");
    if (rc != ACTL_EUNSUPPORTED && rc != ACTL_ESHAPE && rc != ACTL_ENOTFOUND)
        fail_msg("RoAd on embed_tokens: %s: %s", actl_strerror(rc), actl_errmsg());
    assert_non_null(strstr(actl_errmsg(), "embed_tokens"));
    actl_adapter_free(a);
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
}

static void test_adapt__refuses_weight_that_is_not_finite(void **state)
{
    (void)state;
    actl_adapter *a = load("lora");
    assert_err(rt_new1(a, NAN, "l@1"), ACTL_EINVAL, "'l@1': weight");
    assert_err(rt_new1(a, 1e39, "l@1"), ACTL_EINVAL, "not all finite");
    actl_adapter_free(a);
    /* 16-bit factors keep B unscaled and s w apart: refused all the same */
    a = load("lora-bf16");
    assert_err(rt_new1(a, 1e39, "h@1"), ACTL_EINVAL, "not all finite");
    actl_adapter_free(a);
    actl_input in = {.adapter = NULL, .weight = 1, .ref = "ghost"};
    actl__rt *rt = NULL;
    assert_err(actl__rt_new(model, &in, 1, false, &rt), ACTL_EINVAL, "'ghost'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapt__lora_matches_reference),
        cmocka_unit_test(test_adapt__lora_weight_scales_the_delta),
        cmocka_unit_test(test_adapt__lora_patterns_on_all_seven_projections),
        cmocka_unit_test(test_adapt__lora_bias_is_added_scaled),
        cmocka_unit_test(test_adapt__lora_half_precision_tensors),
        cmocka_unit_test(test_adapt__half_lora_factors_on_odd_widths),
        cmocka_unit_test(test_adapt__dora_scales_rows_by_magnitude_over_norm),
        cmocka_unit_test(test_adapt__road_variants_rotate_output_pairs),
        cmocka_unit_test(test_adapt__bottleneck_series_input_and_output),
        cmocka_unit_test(test_adapt__bottleneck_parallel_learned_scale),
        cmocka_unit_test(test_adapt__mos_equals_its_gathered_lora),
        cmocka_unit_test(test_adapt__bottleneck_activations),
        cmocka_unit_test(test_adapt__embedding_lora_adds_rows_of_ba_transposed),
        cmocka_unit_test(test_adapt__dora_and_lora_bias_on_a_bf16_base_with_biases),
        cmocka_unit_test(test_adapt__stack_road_over_lora),
        cmocka_unit_test(test_adapt__stack_input_bottleneck_then_lora),
        cmocka_unit_test(test_adapt__stack_lora_between_input_bottlenecks),
        cmocka_unit_test(test_adapt__stack_dora_first_then_road_and_mos),
        cmocka_unit_test(test_adapt__empty_and_zero_weight_are_the_base),
        cmocka_unit_test(test_adapt__posts_run_concurrently),
        cmocka_unit_test(test_adapt__refuses_adapter_trained_on_another_model),
        cmocka_unit_test(test_adapt__refuses_adapter_made_for_another_shape),
        cmocka_unit_test(test_adapt__refuses_dora_that_is_not_first),
        cmocka_unit_test(test_adapt__refuses_modules_the_decoder_does_not_run),
        cmocka_unit_test(test_adapt__refuses_weight_that_is_not_finite),
    };
    return cmocka_run_group_tests_name("adapt", tests, setup, teardown);
}
