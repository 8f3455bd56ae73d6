/* test_merge.c: actl_merge (DESIGN.md 3 and 8; issue 5, acceptance 1, 2 and 5).
 *
 * Every merged tensor is compared with a reference computed here in fp64 with
 * plain loops from the base's and the adapters' stored values: LoRA, DoRA,
 * embedding and bias deltas, MoS gathered from its pools, RoAd pairs derived
 * from DESIGN.md 3.2 (nothing of merge.c or road.c is called). Module scales
 * come from actl_adapter_module (the config parser's result, tested in
 * test_peft.c). Tolerances:
 *  - F32 output: |got - ref| <= 1e-6 x the largest |ref| of the element's row
 *    (a stored row of a 2-D tensor; a whole 1-D tensor): fp32 sums of a few
 *    products carry errors relative to the operands, not to each result.
 *  - BF16 and F16 output: within one unit in the last place of ref rounded
 *    correctly (to nearest, ties to even) by this file's own rounding.
 * Tensors no input touches (same dtype) must be byte-identical to the base.
 * Bases: fixtures/base-tiny (F32, one file), fixtures/base-tiny-sharded (F32,
 * two shards) and, generated here from them, F32 and BF16 bases with q/k/v/o
 * biases, single and sharded. */
#include "testutil.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <sys/resource.h>

#define PREFIX "base_model.model."
#define TINY FIXTURES "/base-tiny"
#define TINY_SHARDED FIXTURES "/base-tiny-sharded"
#define ADAPTERS FIXTURES "/adapters/base-tiny"

/* ---- numbers, decoded and rounded by this file ---------------------------- */

/* x rounded to nearest (ties to even) with `bits` significant bits and the
 * smallest normal exponent emin (below it the step stays 2^(emin-bits+1)). */
static double round_sig(double x, int bits, int emin)
{
    if (x == 0 || !isfinite(x))
        return x;
    int e = ilogb(x);
    if (e < emin)
        e = emin;
    double ulp = ldexp(1, e - bits + 1);
    return nearbyint(x / ulp) * ulp;
}

/* Correctly rounded bfloat16 (8 significant bits, normal exponents from -126). */
static uint16_t to_bf16(double x)
{
    float f = (float)round_sig(x, 8, -126); /* exact in float */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

/* Correctly rounded binary16 (11 significant bits, normal exponents from -14). */
static uint16_t to_f16(double x)
{
    double r = round_sig(x, 11, -14);
    unsigned sign = signbit(r) ? 0x8000u : 0;
    r = fabs(r);
    if (r >= 65536)
        return (uint16_t)(sign | 0x7c00u);
    if (r < ldexp(1, -14))
        return (uint16_t)(sign | (unsigned)(r / ldexp(1, -24)));
    int e = ilogb(r);
    unsigned m = (unsigned)(ldexp(r, 10 - e) - 1024);
    return (uint16_t)(sign | (unsigned)(e + 15) << 10 | m);
}

/* A 16-bit float's bits on a line where neighbours differ by one. */
static int64_t ordered16(unsigned b)
{
    return b & 0x8000u ? -(int64_t)(b & 0x7fffu) : (int64_t)b;
}

static uint64_t lcg_state = 88172645463325252ull;
static double lcg(void) /* in [-0.5, 0.5) */
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) / 9007199254740992.0 - 0.5;
}

/* ---- a checkpoint held in fp64 ------------------------------------------- */

typedef struct mt {
    char *name;
    actl_dtype dt;
    int ndim;
    int64_t shape[ACTL_MAX_DIMS];
    int64_t numel, rows, cols; /* rows = shape[0], cols = numel / rows */
    double *v;
    unsigned char *raw;
    size_t nbytes;
    char *shard;
    int touched; /* the reference changed it */
} mt;

typedef struct model {
    mt *t;
    size_t n;
    char model_type[64]; /* config.json's, or "" */
} model;

static model model_load(const char *path)
{
    actl_ckpt *ck = NULL;
    int rc = actl_ckpt_open(path, &ck);
    if (rc)
        fail_msg("open %s: %s", path, actl_errmsg());
    model m = {calloc(actl_ckpt_count(ck) + 1, sizeof(mt)), actl_ckpt_count(ck), ""};
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    json_t *c = json_load_file(cfg, 0, NULL);
    if (c && json_is_string(json_object_get(c, "model_type")))
        snprintf(m.model_type, sizeof m.model_type, "%s",
                 json_string_value(json_object_get(c, "model_type")));
    json_decref(c);
    for (size_t i = 0; i < m.n; i++) {
        const actl_tensor *t = actl_ckpt_tensor(ck, i);
        mt *x = &m.t[i];
        x->name = strdup(actl_tensor_name(t));
        x->dt = actl_tensor_dtype(t);
        x->ndim = actl_tensor_ndim(t);
        memcpy(x->shape, actl_tensor_shape(t), (size_t)x->ndim * sizeof(int64_t));
        x->numel = actl_tensor_numel(t);
        x->rows = x->ndim ? x->shape[0] : 1;
        x->cols = x->rows ? x->numel / x->rows : 0;
        x->nbytes = actl_tensor_nbytes(t);
        x->raw = malloc(x->nbytes + 1);
        memcpy(x->raw, actl_tensor_data(t), x->nbytes);
        x->v = malloc((size_t)(x->numel + 1) * sizeof(double));
        for (int64_t k = 0; k < x->numel; k++)
            x->v[k] = test_value(x->dt, x->raw, (size_t)k);
        x->shard = strdup(actl_ckpt_shard_of(ck, i));
    }
    actl_ckpt_close(ck);
    return m;
}

static void model_free(model *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->t[i].name);
        free(m->t[i].v);
        free(m->t[i].raw);
        free(m->t[i].shard);
    }
    free(m->t);
    m->t = NULL;
    m->n = 0;
}

static mt *model_find(const model *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name))
            return &m->t[i];
    return NULL;
}

/* ---- the reference merge, fp64 plain loops --------------------------------- */

/* An adapter tensor's values (malloc'd) and shape. */
static double *getv(const actl_adapter *a, const char *key, int64_t *d0, int64_t *d1)
{
    const actl_tensor *t = actl_adapter_find(a, key);
    if (!t)
        fail_msg("adapter tensor '%s' is absent", key);
    int64_t n = actl_tensor_numel(t);
    double *v = malloc((size_t)(n + 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = test_value(actl_tensor_dtype(t), actl_tensor_data(t), (size_t)i);
    if (d0)
        *d0 = actl_tensor_ndim(t) > 0 ? actl_tensor_shape(t)[0] : 1;
    if (d1)
        *d1 = actl_tensor_ndim(t) > 1 ? actl_tensor_shape(t)[1] : 1;
    return v;
}

static mt *target(model *M, const char *module, const char *suffix)
{
    char name[512];
    snprintf(name, sizeof name, "%s%s", module, suffix);
    mt *t = model_find(M, name);
    if (!t)
        fail_msg("base tensor '%s' is absent", name);
    t->touched = 1;
    return t;
}

/* W += k * (B A) with A [r, in], B [out, r]; the base is [out, in], or
 * [in, out] when transposed (fan_in_fan_out, embeddings). DoRA (mag not NULL)
 * then scales each output row of V = W + k B A by (1 - w) + w m / |V|. */
static void ref_lowrank(mt *W, const double *A, const double *B, int64_t r, int64_t in,
                        int64_t out, double k, int transposed, const double *mag, double w)
{
    if (transposed)
        assert_true(W->rows == in && W->cols == out);
    else
        assert_true(W->rows == out && W->cols == in);
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            double d = 0;
            for (int64_t j = 0; j < r; j++)
                d += B[o * r + j] * A[j * in + i];
            W->v[transposed ? i * out + o : o * in + i] += k * d;
        }
    if (!mag)
        return;
    for (int64_t o = 0; o < out; o++) {
        double ss = 0;
        for (int64_t i = 0; i < in; i++) {
            double x = W->v[transposed ? i * out + o : o * in + i];
            ss += x * x;
        }
        double f = (1 - w) + w * mag[o] / sqrt(ss);
        for (int64_t i = 0; i < in; i++)
            W->v[transposed ? i * out + o : o * in + i] *= f;
    }
}

/* RoAd coefficients from DESIGN.md 3.2, weight w: theta w and alpha^w. */
static void ref_road_coeffs(const actl_adapter *a, const char *module, double w, int64_t out,
                            double *c, double *s)
{
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    char k1[512], k2[512];
    snprintf(k1, sizeof k1, PREFIX "%s.road_theta", module);
    snprintf(k2, sizeof k2, PREFIX "%s.road_alpha", module);
    double *th = getv(a, k1, NULL, NULL), *al = getv(a, k2, NULL, NULL);
    int64_t g = info.group_size, h = g / 2;
    for (int64_t p = 0; p < out; p++) {
        int64_t k = p / g, o = p % g, j = o % h, tc, ts;
        if (info.variant == ACTL_ROAD_1)
            tc = ts = k * h + j;
        else if (info.variant == ACTL_ROAD_2)
            tc = ts = p;
        else
            tc = 2 * g * k + o, ts = 2 * g * k + g + o;
        c[p] = pow(al[tc], w) * cos(w * th[tc]);
        s[p] = pow(al[ts], w) * sin(w * th[ts]);
    }
    free(th);
    free(al);
}

/* Rows p and q = p + g/2 of each group: x'[p] = c[p] x[p] - s[p] x[q],
 * x'[q] = s[q] x[p] + c[q] x[q]. */
static void ref_rotate(mt *X, const double *c, const double *s, int64_t g)
{
    int64_t h = g / 2, cols = X->cols;
    for (int64_t b = 0; b < X->rows; b += g)
        for (int64_t j = 0; j < h; j++) {
            int64_t p = b + j, q = p + h;
            for (int64_t i = 0; i < cols; i++) {
                double xp = X->v[p * cols + i], xq = X->v[q * cols + i];
                X->v[p * cols + i] = c[p] * xp - s[p] * xq;
                X->v[q * cols + i] = s[q] * xp + c[q] * xq;
            }
        }
}

static int module_key(const char *key, const char *const *suffixes)
{
    for (int i = 0; suffixes[i]; i++) {
        size_t l = strlen(key), n = strlen(suffixes[i]);
        if (l > n && !strcmp(key + l - n, suffixes[i]))
            return 1;
    }
    return 0;
}

/* PEFT's rule for where fan_in_fan_out comes from: the base layer's type.
 * transformers builds the attention and MLP projections (c_attn, c_proj,
 * c_fc, q_attn) of GPT-2 and its relatives from Conv1D, which stores
 * [in, out]; every other layer is nn.Linear, [out, in], whatever the flag. */
static int ref_conv1d(const model *M, const char *module)
{
    static const char *const types[] = {"gpt2", "openai-gpt", "decision_transformer",
                                        "imagegpt"};
    static const char *const layers[] = {".c_attn", ".c_proj", ".c_fc", ".q_attn"};
    int family = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        family |= !strcmp(M->model_type, types[i]);
    size_t l = strlen(module);
    for (size_t i = 0; family && i < sizeof layers / sizeof layers[0]; i++) {
        size_t k = strlen(layers[i]);
        if (l > k && !strcmp(module + l - k, layers[i]))
            return 1;
    }
    return 0;
}

/* The reference merge of one input into M. */
static void ref_apply(model *M, const actl_adapter *a, double w)
{
    static const char *const lora_sfx[] = {".lora_A.weight", ".lora_B.weight", ".lora_B.bias",
                                           ".lora_magnitude_vector", ".lora_embedding_A",
                                           ".lora_embedding_B", NULL};
    static const char *const road_sfx[] = {".road_theta", ".road_alpha", NULL};
    static const char *const mos_sfx[] = {".mos_index_A", ".mos_index_B", ".pool_A", ".pool_B",
                                          NULL};
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    const char *const *sfx = info.kind == ACTL_KIND_ROAD ? road_sfx
                             : info.kind == ACTL_KIND_MOS ? mos_sfx : lora_sfx;
    /* whole tensors the adapter carries replace the base's: W = (1 - w) W + w S */
    for (size_t i = 0; i < actl_adapter_tensor_count(a); i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        const char *key = actl_tensor_name(t);
        if (module_key(key, sfx))
            continue;
        mt *X = model_find(M, key + strlen(PREFIX));
        assert_non_null(X);
        X->touched = 1;
        for (int64_t k = 0; k < X->numel; k++)
            X->v[k] = (1 - w) * X->v[k] + w * test_value(actl_tensor_dtype(t), actl_tensor_data(t), (size_t)k);
    }
    for (size_t m = 0; m < actl_adapter_module_count(a); m++) {
        actl_module_info mi;
        assert_ok(actl_adapter_module(a, m, &mi));
        char key[512];
        if (info.kind == ACTL_KIND_ROAD) {
            mt *W = target(M, mi.name, ".weight");
            double *c = malloc((size_t)W->rows * sizeof *c), *s = malloc((size_t)W->rows * sizeof *s);
            ref_road_coeffs(a, mi.name, w, W->rows, c, s);
            ref_rotate(W, c, s, info.group_size);
            snprintf(key, sizeof key, "%s.bias", mi.name);
            mt *b = model_find(M, key);
            if (b) {
                b->touched = 1;
                ref_rotate(b, c, s, info.group_size);
            }
            free(c);
            free(s);
            continue;
        }
        double *A, *B, *mag = NULL;
        int64_t r, in, r2, out;
        int transposed = ref_conv1d(M, mi.name);
        if (info.kind == ACTL_KIND_MOS) {
            /* DESIGN.md 3.4: A[j, s*in/l + k] = P_A[a[j*l+s], k]; B[s*out/l + k, j] = P_B[b[j*l+s], k] */
            const char *type = strrchr(mi.name, '.') + 1;
            int64_t l = info.shards, na, wa, nb, wb;
            snprintf(key, sizeof key, PREFIX "mos.%s.pool_A", type);
            double *pa = getv(a, key, &na, &wa);
            snprintf(key, sizeof key, PREFIX "mos.%s.pool_B", type);
            double *pb = getv(a, key, &nb, &wb);
            snprintf(key, sizeof key, PREFIX "%s.mos_index_A", mi.name);
            double *ia = getv(a, key, NULL, NULL);
            snprintf(key, sizeof key, PREFIX "%s.mos_index_B", mi.name);
            double *ib = getv(a, key, NULL, NULL);
            r = mi.rank;
            in = wa * l;
            out = wb * l;
            A = malloc((size_t)(r * in) * sizeof *A);
            B = malloc((size_t)(out * r) * sizeof *B);
            for (int64_t j = 0; j < r; j++)
                for (int64_t sh = 0; sh < l; sh++)
                    for (int64_t k = 0; k < wa; k++)
                        A[j * in + sh * wa + k] = pa[(int64_t)ia[j * l + sh] * wa + k];
            for (int64_t j = 0; j < r; j++)
                for (int64_t sh = 0; sh < l; sh++)
                    for (int64_t k = 0; k < wb; k++)
                        B[(sh * wb + k) * r + j] = pb[(int64_t)ib[j * l + sh] * wb + k];
            free(pa);
            free(pb);
            free(ia);
            free(ib);
        } else if (mi.flags & ACTL_MOD_EMBEDDING) {
            snprintf(key, sizeof key, PREFIX "%s.lora_embedding_A", mi.name);
            A = getv(a, key, &r, &in);
            snprintf(key, sizeof key, PREFIX "%s.lora_embedding_B", mi.name);
            B = getv(a, key, &out, &r2);
            transposed = 1; /* the table is [vocab, dim]: rows of (B A)^T */
        } else {
            snprintf(key, sizeof key, PREFIX "%s.lora_A.weight", mi.name);
            A = getv(a, key, &r, &in);
            snprintf(key, sizeof key, PREFIX "%s.lora_B.weight", mi.name);
            B = getv(a, key, &out, &r2);
        }
        if (mi.flags & ACTL_MOD_DORA) {
            snprintf(key, sizeof key, PREFIX "%s.lora_magnitude_vector", mi.name);
            mag = getv(a, key, NULL, NULL);
        }
        ref_lowrank(target(M, mi.name, ".weight"), A, B, r, in, out, w * mi.scale, transposed,
                    mag, w);
        if (mi.flags & ACTL_MOD_BIAS) {
            snprintf(key, sizeof key, PREFIX "%s.lora_B.bias", mi.name);
            double *bias = getv(a, key, NULL, NULL);
            mt *b = target(M, mi.name, ".bias");
            for (int64_t o = 0; o < b->numel; o++)
                b->v[o] += w * mi.scale * bias[o];
            free(bias);
        }
        free(A);
        free(B);
        free(mag);
    }
}

/* The reference unmerge of one input from M: LoRA and MoS deltas subtracted,
 * RoAd pairs multiplied by the inverse of [[c_p, -s_p], [s_q, c_q]]. */
static void ref_unapply(model *M, const actl_adapter *a, double w)
{
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    if (info.kind != ACTL_KIND_ROAD) {
        ref_apply(M, a, -w);
        return;
    }
    for (size_t m = 0; m < actl_adapter_module_count(a); m++) {
        actl_module_info mi;
        assert_ok(actl_adapter_module(a, m, &mi));
        char key[512];
        mt *W = target(M, mi.name, ".weight");
        int64_t n = W->rows, g = info.group_size, h = g / 2;
        double *c = malloc((size_t)n * sizeof *c), *s = malloc((size_t)n * sizeof *s);
        ref_road_coeffs(a, mi.name, w, n, c, s);
        for (int64_t b = 0; b < n; b += g)
            for (int64_t j = 0; j < h; j++) {
                int64_t p = b + j, q = p + h;
                double det = c[p] * c[q] + s[p] * s[q];
                double cp = c[p], sp = s[p], cq = c[q], sq = s[q];
                /* inverse: [[cq, sp], [-sq, cp]] / det, written in the forward form */
                c[p] = cq / det;
                s[p] = -sp / det;
                c[q] = cp / det;
                s[q] = -sq / det;
            }
        ref_rotate(W, c, s, g);
        snprintf(key, sizeof key, "%s.bias", mi.name);
        mt *bias = model_find(M, key);
        if (bias)
            ref_rotate(bias, c, s, g);
        free(c);
        free(s);
    }
}

/* ---- comparisons ------------------------------------------------------------ */

/* One unit in the last place of x in dtype dt (BF16 or F16). */
static double bf_ulp(double x, actl_dtype dt)
{
    int bits = dt == ACTL_BF16 ? 8 : 11, emin = dt == ACTL_BF16 ? -126 : -14;
    int e = x == 0 ? emin : ilogb(x);
    if (e < emin)
        e = emin;
    return ldexp(1, e - bits + 1);
}

/* Elements of 16-bit outputs that needed the fp32 allowance (more than one
 * ulp from the reference, within the F32 bound plus one ulp). */
static size_t n_slack, n_checked16;

/* Every tensor of out_dir against ref (as rounded to out_dt, or ref's own
 * dtype when out_dt < 0); untouched tensors of an unchanged dtype must be the
 * base's bytes. `what` names the case in failures. */
static void compare_scaled(const model *ref, const model *scale, const char *out_dir,
                           int out_dt, const char *what);
static void compare(const model *ref, const char *out_dir, int out_dt, const char *what)
{
    compare_scaled(ref, NULL, out_dir, out_dt, what);
}

/* compare, with the F32 bound taken relative to the larger of the row's
 * largest value in ref and in scale (the operands of an unmerge: fp32 errors
 * follow the merged values subtracted from, which may exceed the result). */
static void compare_scaled(const model *ref, const model *scale, const char *out_dir,
                           int out_dt, const char *what)
{
    model got = model_load(out_dir);
    assert_int_equal(got.n, ref->n);
    for (size_t i = 0; i < ref->n; i++) {
        const mt *r = &ref->t[i];
        const mt *g = model_find(&got, r->name);
        if (!g)
            fail_msg("%s: tensor '%s' is missing from the output", what, r->name);
        actl_dtype want = out_dt >= 0 && (r->dt == ACTL_F32 || r->dt == ACTL_BF16 ||
                                          r->dt == ACTL_F16)
                              ? (actl_dtype)out_dt : r->dt;
        assert_int_equal(g->dt, want);
        assert_int_equal(g->ndim, r->ndim);
        for (int d = 0; d < r->ndim; d++)
            assert_int_equal(g->shape[d], r->shape[d]);
        if (!r->touched && want == r->dt) {
            if (memcmp(g->raw, r->raw, r->nbytes))
                fail_msg("%s: untouched tensor '%s' is not byte-identical", what, r->name);
            continue;
        }
        for (int64_t row = 0; row < r->rows; row++) {
            int64_t n = r->ndim == 1 ? r->numel : r->cols, o0 = r->ndim == 1 ? 0 : row * r->cols;
            double mx = 0;
            const mt *sc = scale ? model_find(scale, r->name) : NULL;
            for (int64_t k = 0; k < n; k++)
                mx = fmax(mx, fmax(fabs(r->v[o0 + k]), sc ? fabs(sc->v[o0 + k]) : 0));
            for (int64_t k = 0; k < n; k++) {
                size_t at = (size_t)(o0 + k);
                double rv = r->v[at], gv = g->v[at];
                if (want != ACTL_F32)
                    n_checked16++;
                if (want == ACTL_F32) {
                    if (!(fabs(gv - rv) <= 1e-6 * mx))
                        fail_msg("%s: '%s'[%zu]: got %.9g, reference %.9g (row max %.3g)", what,
                                 r->name, at, gv, rv, mx);
                } else {
                    unsigned gb = (unsigned)(g->raw[2 * at] | g->raw[2 * at + 1] << 8);
                    unsigned rb = want == ACTL_BF16 ? to_bf16(rv) : to_f16(rv);
                    if (llabs(ordered16(gb) - ordered16(rb)) <= 1)
                        continue;
                    /* fp32 arithmetic near a cancellation: the F32 bound, then the rounding */
                    if (fabs(gv - rv) <= 1e-6 * mx + fabs(bf_ulp(rv, want))) {
                        n_slack++;
                        continue;
                    }
                    fail_msg("%s: '%s'[%zu]: got %.9g (0x%04x), reference %.9g rounds to "
                             "0x%04x: more than one ulp apart", what, r->name, at, gv, gb,
                             rv, rb);
                }
            }
            if (r->ndim == 1)
                break;
        }
    }
    model_free(&got);
}

/* Regular files of dir, sorted, in a NULL-terminated malloc'd list. */
static char **list_files(const char *dir)
{
    size_t n = 0, cap = 16;
    char **v = calloc(cap, sizeof *v);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        char *p = test_join(dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (n + 2 > cap)
                v = realloc(v, (cap *= 2) * sizeof *v);
            v[n++] = strdup(e->d_name);
            v[n] = NULL;
        }
        free(p);
    }
    closedir(d);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) {
            char *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v;
}

static void free_list(char **v)
{
    for (size_t i = 0; v[i]; i++)
        free(v[i]);
    free(v);
}

static json_t *load_json(const char *path)
{
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j)
        fail_msg("%s: %s", path, err.text);
    return j;
}

/* The output directory holds exactly the base's files: weights in the same
 * shard split (checked by a strict open), a valid index whose total_size
 * adds up, config.json with torch_dtype when the dtype was asked for, every
 * other file byte-identical. Each safetensors header is padded to 8 bytes
 * and each tensor aligned to its element size. */
static void check_layout(const char *base_dir, const char *out_dir, int out_dt)
{
    char **bf = list_files(base_dir), **of = list_files(out_dir);
    size_t i;
    for (i = 0; bf[i] && of[i]; i++)
        assert_string_equal(bf[i], of[i]);
    assert_null(bf[i]);
    assert_null(of[i]);
    model b = model_load(base_dir), o = model_load(out_dir);
    assert_int_equal(b.n, o.n);
    uint64_t total = 0;
    for (i = 0; i < b.n; i++) {
        mt *x = model_find(&o, b.t[i].name);
        assert_non_null(x);
        assert_string_equal(x->shard, b.t[i].shard);
        total += x->nbytes;
    }
    for (i = 0; bf[i]; i++) {
        char *p1 = test_join(base_dir, bf[i]), *p2 = test_join(out_dir, of[i]);
        size_t l1, l2;
        unsigned char *d1 = test_slurp(p1, &l1), *d2 = test_slurp(p2, &l2);
        size_t nl = strlen(bf[i]);
        if (nl > 12 && !strcmp(bf[i] + nl - 12, ".safetensors")) {
            uint64_t hl = 0;
            for (int k = 7; k >= 0; k--)
                hl = hl << 8 | d2[k];
            assert_int_equal((8 + hl) % 8, 0);
            json_t *h = json_loadb((const char *)d2 + 8, (size_t)hl, 0, NULL);
            assert_non_null(h);
            const char *k;
            json_t *v;
            json_object_foreach(h, k, v) {
                if (!strcmp(k, "__metadata__"))
                    continue;
                const char *dt = json_string_value(json_object_get(v, "dtype"));
                json_int_t off = json_integer_value(json_array_get(json_object_get(v, "data_offsets"), 0));
                int es = !strcmp(dt, "F32") || !strcmp(dt, "I32") ? 4 : !strcmp(dt, "F64") ? 8 : 2;
                assert_int_equal(off % es, 0);
            }
            json_decref(h);
        } else if (!strcmp(bf[i], "model.safetensors.index.json")) {
            json_t *j1 = load_json(p1), *j2 = load_json(p2);
            assert_true(json_equal(json_object_get(j1, "weight_map"), json_object_get(j2, "weight_map")));
            assert_int_equal(json_integer_value(json_object_get(json_object_get(j2, "metadata"),
                                                                "total_size")), total);
            json_decref(j1);
            json_decref(j2);
        } else if (!strcmp(bf[i], "config.json") && out_dt >= 0) {
            json_t *j1 = load_json(p1), *j2 = load_json(p2);
            const char *want = out_dt == ACTL_F32 ? "float32" : out_dt == ACTL_BF16 ? "bfloat16" : "float16";
            assert_string_equal(json_string_value(json_object_get(j2, "torch_dtype")), want);
            json_object_set_new(j1, "torch_dtype", json_string(want));
            assert_true(json_equal(j1, j2));
            json_decref(j1);
            json_decref(j2);
        } else {
            assert_int_equal(l1, l2);
            assert_memory_equal(d1, d2, l1);
        }
        free(d1);
        free(d2);
        free(p1);
        free(p2);
    }
    model_free(&b);
    model_free(&o);
    free_list(bf);
    free_list(of);
}

/* Nothing was written: no out_dir and no temporary sibling ".<name>.tmp-*". */
static void assert_no_output(const char *out_dir)
{
    struct stat sb;
    if (lstat(out_dir, &sb) == 0)
        fail_msg("'%s' exists after a refused merge", out_dir);
    char *copy = strdup(out_dir), *slash = strrchr(copy, '/');
    assert_non_null(slash);
    *slash = '\0';
    char prefix[512];
    snprintf(prefix, sizeof prefix, ".%s.tmp-", slash + 1);
    DIR *d = opendir(copy);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix)))
            fail_msg("temporary directory '%s' left in '%s'", e->d_name, copy);
    closedir(d);
    free(copy);
}

/* ---- generated bases ---------------------------------------------------------- */

/* Writes a checkpoint at dir from base-tiny's values: dtype dt (values
 * rounded by this file), q/k/v/o biases added when bias, one file or two
 * shards with an index, config.json (torch_dtype set; _name_or_path replaced
 * when name is not NULL) and a tokenizer.json to be copied through. */
static void gen_base(const char *dir, actl_dtype dt, int sharded, int bias, const char *name)
{
    model m = model_load(TINY);
    assert_int_equal(mkdir(dir, 0777), 0);
    size_t cap = m.n + 16, n = 0;
    actl_tensor **ts = calloc(cap, sizeof *ts);
    for (size_t i = 0; i < m.n; i++) {
        mt *x = &m.t[i];
        unsigned char *buf = malloc((size_t)x->numel * 4 + 1);
        for (int64_t k = 0; k < x->numel; k++) {
            if (dt == ACTL_F32) {
                float f = (float)x->v[k];
                memcpy(buf + 4 * k, &f, 4);
            } else {
                uint16_t h = to_bf16(x->v[k]);
                memcpy(buf + 2 * k, &h, 2);
            }
        }
        assert_ok(actl_tensor_new(x->name, dt, x->ndim, x->shape, buf, &ts[n++]));
        free(buf);
    }
    for (int l = 0; bias && l < 2; l++) {
        static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int p = 0; p < 4; p++) {
            char wname[128], bname[128];
            snprintf(wname, sizeof wname, "model.layers.%d.self_attn.%s.weight", l, proj[p]);
            snprintf(bname, sizeof bname, "model.layers.%d.self_attn.%s.bias", l, proj[p]);
            int64_t len = model_find(&m, wname)->rows;
            unsigned char buf[4096];
            for (int64_t k = 0; k < len; k++) {
                double v = lcg();
                if (dt == ACTL_F32) {
                    float f = (float)v;
                    memcpy(buf + 4 * k, &f, 4);
                } else {
                    uint16_t h = to_bf16(v);
                    memcpy(buf + 2 * k, &h, 2);
                }
            }
            assert_ok(actl_tensor_new(bname, dt, 1, &len, buf, &ts[n++]));
        }
    }
    static const char *const meta[] = {"format", "pt", NULL};
    if (!sharded) {
        char *p = test_join(dir, "model.safetensors");
        assert_ok(actl_st_write(p, (const actl_tensor *const *)ts, n, meta));
        free(p);
    } else {
        static const char *const files[2] = {"model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors"};
        const actl_tensor *part[2][64];
        size_t np[2] = {0, 0};
        json_t *idx = json_object(), *wm = json_object();
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++) {
            const char *nm = actl_tensor_name(ts[i]);
            int s = strstr(nm, "layers.0.") || strstr(nm, "embed_tokens") ? 0 : 1;
            part[s][np[s]++] = ts[i];
            json_object_set_new(wm, nm, json_string(files[s]));
            total += actl_tensor_nbytes(ts[i]);
        }
        for (int s = 0; s < 2; s++) {
            char *p = test_join(dir, files[s]);
            assert_ok(actl_st_write(p, part[s], np[s], meta));
            free(p);
        }
        json_object_set_new(idx, "metadata", json_pack("{s:I}", "total_size", (json_int_t)total));
        json_object_set_new(idx, "weight_map", wm);
        char *p = test_join(dir, "model.safetensors.index.json");
        assert_int_equal(json_dump_file(idx, p, JSON_INDENT(2) | JSON_SORT_KEYS), 0);
        free(p);
        json_decref(idx);
    }
    json_t *cfg = load_json(TINY "/config.json");
    json_object_set_new(cfg, "torch_dtype", json_string(dt == ACTL_F32 ? "float32" : "bfloat16"));
    json_object_set_new(cfg, "attention_bias", json_boolean(bias));
    if (name)
        json_object_set_new(cfg, "_name_or_path", json_string(name));
    char *p = test_join(dir, "config.json");
    assert_int_equal(json_dump_file(cfg, p, JSON_INDENT(2) | JSON_SORT_KEYS), 0);
    free(p);
    json_decref(cfg);
    p = test_join(dir, "tokenizer.json");
    test_write_text(p, "{\"model\": {\"type\": \"BPE\"}, \"version\": \"1.0\"}\n");
    free(p);
    for (size_t i = 0; i < n; i++)
        actl_tensor_free(ts[i]);
    free(ts);
    model_free(&m);
}

/* ---- shared state: the generated bases -------------------------------------- */

typedef struct bases {
    char *dir;
    char *f32_bias, *f32_bias_sharded, *bf16_bias, *bf16_bias_sharded;
} bases;

static bases B;

static int setup_bases(void **state)
{
    (void)state;
    B.dir = test_tmpdir();
    B.f32_bias = test_join(B.dir, "f32");
    B.f32_bias_sharded = test_join(B.dir, "f32-sharded");
    B.bf16_bias = test_join(B.dir, "bf16");
    B.bf16_bias_sharded = test_join(B.dir, "bf16-sharded");
    gen_base(B.f32_bias, ACTL_F32, 0, 1, NULL);
    gen_base(B.f32_bias_sharded, ACTL_F32, 1, 1, NULL);
    gen_base(B.bf16_bias, ACTL_BF16, 0, 1, NULL);
    gen_base(B.bf16_bias_sharded, ACTL_BF16, 1, 1, NULL);
    return 0;
}

static int teardown_bases(void **state)
{
    (void)state;
    test_rmtree(B.dir);
    free(B.f32_bias);
    free(B.f32_bias_sharded);
    free(B.bf16_bias);
    free(B.bf16_bias_sharded);
    free(B.dir);
    return 0;
}

/* ---- inputs -------------------------------------------------------------------- */

typedef struct spec {
    const char *fixture; /* under fixtures/adapters/base-tiny */
    double w;
} spec;

typedef struct loaded {
    actl_input in[8];
    actl_adapter *a[8];
    size_t n;
} loaded;

static loaded load_specs(const spec *s)
{
    loaded l;
    memset(&l, 0, sizeof l);
    for (; s[l.n].fixture; l.n++) {
        l.a[l.n] = test_load_fixture("base-tiny", s[l.n].fixture);
        l.in[l.n].adapter = l.a[l.n];
        l.in[l.n].weight = s[l.n].w;
        l.in[l.n].ref = s[l.n].fixture;
    }
    return l;
}

static void free_loaded(loaded *l)
{
    for (size_t i = 0; i < l->n; i++)
        actl_adapter_free(l->a[i]);
}

/* ---- acceptance 1 and 2: every kind against the reference, and back ------------ */

typedef struct mcase {
    const char *label;
    spec in[8];
    int dtype;    /* -1: keep */
    int bias;     /* needs a base with biases */
    int unmerge;  /* merge then --unmerge gives the base back */
} mcase;

static const mcase cases[] = {
    {"lora", {{"lora", 1}}, -1, 0, 1},
    {"lora-patterns", {{"lora-patterns", 1}}, -1, 0, 1},
    {"lora-fanin", {{"lora-fanin", 1}}, -1, 0, 1},
    {"lora-dora", {{"lora-dora", 1}}, -1, 0, 0},
    {"lora-dora at 0.4", {{"lora-dora", 0.4}}, -1, 0, 0},
    {"lora-embedding", {{"lora-embedding", 1}}, -1, 0, 0},
    {"lora-embedding at 0.3", {{"lora-embedding", 0.3}}, -1, 0, 0},
    {"lora-bias", {{"lora-bias", 1}}, -1, 1, 1},
    {"lora-bf16", {{"lora-bf16", 1}}, -1, 0, 1},
    {"lora-f16", {{"lora-f16", 1}}, -1, 0, 1},
    {"lora at -0.7", {{"lora", -0.7}}, -1, 0, 1},
    {"road-1", {{"road-1", 1}}, -1, 0, 1},
    {"road-2", {{"road-2", 1}}, -1, 0, 1},
    {"road-4", {{"road-4", 1}}, -1, 0, 1},
    {"road-1 at 0.5", {{"road-1", 0.5}}, -1, 0, 1},
    {"road-4 at 0.25", {{"road-4", 0.25}}, -1, 0, 1},
    {"road-2 at -1.5", {{"road-2", -1.5}}, -1, 0, 1},
    {"mos", {{"mos", 1}}, -1, 0, 1},
    {"several with weights",
     {{"lora", 0.5}, {"road-1", 0.7}, {"lora-bf16", -0.3}, {"road-2", 0.25}, {"mos", 1},
      {"road-1", 1.5}, {"lora-fanin", 2}},
     -1, 0, 1},
    {"lora and road-4 into bf16", {{"lora", 1}, {"road-4", 0.6}}, ACTL_BF16, 0, 0},
    {"road-2 into f16", {{"road-2", 1}}, ACTL_F16, 0, 0},
    {"dora into f32", {{"lora-dora", 1}}, ACTL_F32, 0, 0},
};

/* merge then unmerge gave the base back. F32: within 1e-6 of each row's
 * largest value. 16-bit merged checkpoints (lora_only): within one ulp of the
 * larger of the base value and the merged one, where the merged checkpoint
 * rounded and what it dropped cannot come back; RoAd mixes that rounding of
 * both rows of a pair, so its bound is checked through the exact unmerge
 * (unmerge_ok) instead. */
static void restored(const char *base_dir, const char *out, const char *back, int lora_only,
                     const char *what)
{
    model b = model_load(base_dir), m = model_load(out), g = model_load(back);
    for (size_t i = 0; i < b.n; i++) {
        const mt *x = &b.t[i], *y = model_find(&g, x->name), *z = model_find(&m, x->name);
        if (x->dt != ACTL_F32 && !lora_only)
            continue;
        for (int64_t row = 0; row < x->rows; row++) {
            int64_t n = x->ndim == 1 ? x->numel : x->cols, o0 = x->ndim == 1 ? 0 : row * x->cols;
            double mx = 0;
            for (int64_t k = 0; k < n; k++)
                mx = fmax(mx, fabs(x->v[o0 + k]));
            for (int64_t k = 0; k < n; k++) {
                size_t at = (size_t)(o0 + k);
                double err = fabs(y->v[at] - x->v[at]);
                double tol = x->dt == ACTL_F32 ? 1e-6 * mx
                                               : bf_ulp(fmax(fabs(x->v[at]), fabs(z->v[at])), x->dt);
                if (!(err <= tol))
                    fail_msg("%s: '%s'[%zu]: %.9g, the base has %.9g (merged %.9g)", what,
                             x->name, at, y->v[at], x->v[at], z->v[at]);
            }
            if (x->ndim == 1)
                break;
        }
    }
    model_free(&b);
    model_free(&m);
    model_free(&g);
}

/* The unmerge itself: back must be the fp64 unmerge of the merged checkpoint
 * as stored (out), within the usual tolerances. */
static void unmerge_ok(const char *out, const char *back, const loaded *l, const char *what)
{
    model mg = model_load(out), merged = model_load(out);
    for (size_t i = 0; i < mg.n; i++)
        mg.t[i].touched = 1;
    for (size_t i = l->n; i-- > 0;)
        ref_unapply(&mg, l->a[i], l->in[i].weight);
    compare_scaled(&mg, &merged, back, -1, what);
    model_free(&mg);
    model_free(&merged);
}

static int lora_only(const loaded *l)
{
    for (size_t i = 0; i < l->n; i++) {
        actl_adapter_info info;
        actl_adapter_info_get(l->a[i], &info);
        if (info.kind == ACTL_KIND_ROAD)
            return 0;
    }
    return 1;
}

/* A 16-bit base through an F32 merged checkpoint and back to its dtype: every
 * element within one ulp of the base's own value. */
static void round_trip_via_f32(const char *base_dir, const char *tmp, const loaded *l,
                               actl_dtype dt, const char *what)
{
    char *mid = test_join(tmp, "mid"), *back = test_join(tmp, "back32");
    actl_merge_opts o = actl_merge_default_opts();
    o.dtype = ACTL_F32;
    assert_ok(actl_merge(base_dir, mid, l->in, l->n, &o, NULL));
    o.dtype = dt;
    o.unmerge = 1;
    assert_ok(actl_merge(mid, back, l->in, l->n, &o, NULL));
    model b = model_load(base_dir);
    for (size_t i = 0; i < b.n; i++)
        b.t[i].touched = 1;
    compare(&b, back, -1, what);
    model_free(&b);
    free(mid);
    free(back);
}

/* Merges c into base_dir and compares with the reference; then, when the
 * case allows, unmerges and compares with the base. */
static void run_case(const char *base_dir, const mcase *c, int has_bias)
{
    if (c->bias && !has_bias)
        return;
    char what[512];
    snprintf(what, sizeof what, "%s on %s", c->label, base_dir);
    char *tmp = test_tmpdir();
    char *out = test_join(tmp, "merged"), *back = test_join(tmp, "back");
    loaded l = load_specs(c->in);
    actl_merge_opts o = actl_merge_default_opts();
    o.dtype = c->dtype;
    actl_merge_result res;
    int rc = actl_merge(base_dir, out, l.in, l.n, &o, &res);
    if (rc)
        fail_msg("%s: %s: %s", what, actl_strerror(rc), actl_errmsg());
    model ref = model_load(base_dir);
    for (size_t i = 0; i < l.n; i++)
        ref_apply(&ref, l.a[i], l.in[i].weight);
    compare(&ref, out, c->dtype, what);
    check_layout(base_dir, out, c->dtype);
    size_t touched = 0;
    for (size_t i = 0; i < ref.n; i++)
        touched += ref.t[i].touched;
    assert_int_equal(res.tensors_merged, touched);
    assert_int_equal(res.tensors_merged + res.tensors_copied, ref.n);
    model_free(&ref);
    if (c->unmerge) {
        snprintf(what, sizeof what, "%s on %s, unmerged", c->label, base_dir);
        o.unmerge = 1;
        rc = actl_merge(out, back, l.in, l.n, &o, NULL);
        if (rc)
            fail_msg("%s: %s: %s", what, actl_strerror(rc), actl_errmsg());
        unmerge_ok(out, back, &l, what);
        restored(base_dir, out, back, lora_only(&l), what);
        model b = model_load(base_dir);
        actl_dtype dt = b.t[0].dt;
        model_free(&b);
        if (dt != ACTL_F32) {
            snprintf(what, sizeof what, "%s on %s, through F32 and back", c->label, base_dir);
            round_trip_via_f32(base_dir, tmp, &l, dt, what);
        }
    }
    free_loaded(&l);
    test_rmtree(tmp);
    free(out);
    free(back);
    free(tmp);
}

static void run_all_cases(const char *base_dir, int has_bias)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(base_dir, &cases[i], has_bias);
}

static void test_merge__single_f32_fixture_matches_reference(void **state)
{
    (void)state;
    run_all_cases(TINY, 0);
}

static void test_merge__sharded_f32_fixture_matches_reference(void **state)
{
    (void)state;
    run_all_cases(TINY_SHARDED, 0);
}

static void test_merge__single_f32_with_biases_matches_reference(void **state)
{
    (void)state;
    run_all_cases(B.f32_bias, 1);
}

static void test_merge__sharded_f32_with_biases_matches_reference(void **state)
{
    (void)state;
    run_all_cases(B.f32_bias_sharded, 1);
}

static void test_merge__single_bf16_matches_reference_within_one_ulp(void **state)
{
    (void)state;
    run_all_cases(B.bf16_bias, 1);
}

static void test_merge__sharded_bf16_matches_reference_within_one_ulp(void **state)
{
    (void)state;
    run_all_cases(B.bf16_bias_sharded, 1);
}

/* ---- larger tensors: several row blocks per tensor, one or two threads ---------- */

static actl_tensor *rand_tensor(const char *name, actl_dtype dt, int64_t d0, int64_t d1,
                                double scale, double offset)
{
    int64_t shape[2] = {d0, d1};
    int ndim = d1 ? 2 : 1;
    int64_t n = d0 * (d1 ? d1 : 1);
    unsigned char *buf = malloc((size_t)n * 4 + 1);
    for (int64_t k = 0; k < n; k++) {
        double v = offset + scale * lcg();
        if (dt == ACTL_F32) {
            float f = (float)v;
            memcpy(buf + 4 * k, &f, 4);
        } else {
            uint16_t h = to_bf16(v);
            memcpy(buf + 2 * k, &h, 2);
        }
    }
    actl_tensor *t;
    assert_ok(actl_tensor_new(name, dt, ndim, shape, buf, &t));
    free(buf);
    return t;
}

static actl_adapter *make_adapter(const char *cfg, actl_tensor **ts, size_t n)
{
    actl_adapter *a = NULL;
    int rc = actl_adapter_new(cfg, (const actl_tensor *const *)ts, n, "test", &a);
    if (rc)
        fail_msg("actl_adapter_new: %s", actl_errmsg());
    for (size_t i = 0; i < n; i++)
        actl_tensor_free(ts[i]);
    return a;
}

/* A base of a few MB: [1024, 256] and [768, 512] weights, a bias, an embedding
 * table [2000, 64]; written as one file. */
static void gen_big_base(const char *dir, actl_dtype dt)
{
    assert_int_equal(mkdir(dir, 0777), 0);
    actl_tensor *ts[5];
    ts[0] = rand_tensor("model.layers.0.self_attn.q_proj.weight", dt, 1024, 256, 0.2, 0);
    ts[1] = rand_tensor("model.layers.0.self_attn.q_proj.bias", dt, 1024, 0, 0.2, 0);
    ts[2] = rand_tensor("model.layers.0.mlp.up_proj.weight", dt, 768, 512, 0.2, 0);
    ts[3] = rand_tensor("model.embed_tokens.weight", dt, 2000, 64, 0.5, 0);
    ts[4] = rand_tensor("model.norm.weight", dt, 64, 0, 0.1, 1);
    static const char *const meta[] = {"format", "pt", NULL};
    char *p = test_join(dir, "model.safetensors");
    assert_ok(actl_st_write(p, (const actl_tensor *const *)ts, 5, meta));
    free(p);
    for (int i = 0; i < 5; i++)
        actl_tensor_free(ts[i]);
}

static void test_merge__many_row_blocks_match_reference_with_one_or_two_threads(void **state)
{
    (void)state;
    char *tmp = test_tmpdir();
    char *base = test_join(tmp, "base");
    gen_big_base(base, ACTL_BF16);
    actl_tensor *ts[8];
    /* LoRA r 8 on q_proj and up_proj, embedding LoRA r 4 on the table */
    ts[0] = rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_A.weight", ACTL_F32, 8, 256, 0.5, 0);
    ts[1] = rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_B.weight", ACTL_F32, 1024, 8, 0.5, 0);
    ts[2] = rand_tensor(PREFIX "model.layers.0.mlp.up_proj.lora_A.weight", ACTL_BF16, 8, 512, 0.5, 0);
    ts[3] = rand_tensor(PREFIX "model.layers.0.mlp.up_proj.lora_B.weight", ACTL_BF16, 768, 8, 0.5, 0);
    ts[4] = rand_tensor(PREFIX "model.embed_tokens.lora_embedding_A", ACTL_F32, 4, 2000, 0.5, 0);
    ts[5] = rand_tensor(PREFIX "model.embed_tokens.lora_embedding_B", ACTL_F32, 64, 4, 0.5, 0);
    actl_adapter *lora = make_adapter("{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16,"
                                      " \"rank_pattern\": {\"embed_tokens\": 4},"
                                      " \"target_modules\": [\"q_proj\", \"up_proj\", \"embed_tokens\"]}",
                                      ts, 6);
    /* RoAd road_2 with groups of 64 on q_proj (1024 outputs, bias rotated too), road_1
     * with groups of 256 on up_proj (768 outputs) */
    ts[0] = rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.road_theta", ACTL_F32, 1024, 0, 2, 0);
    ts[1] = rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.road_alpha", ACTL_F32, 1024, 0, 0.4, 1);
    actl_adapter *road2 = make_adapter("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\", "
                                       "\"group_size\": 64, \"target_modules\": [\"q_proj\"]}",
                                       ts, 2);
    ts[0] = rand_tensor(PREFIX "model.layers.0.mlp.up_proj.road_theta", ACTL_F32, 384, 0, 2, 0);
    ts[1] = rand_tensor(PREFIX "model.layers.0.mlp.up_proj.road_alpha", ACTL_F32, 384, 0, 0.4, 1);
    actl_adapter *road1 = make_adapter("{\"peft_type\": \"ROAD\", \"variant\": \"road_1\", "
                                       "\"group_size\": 256, \"target_modules\": [\"up_proj\"]}",
                                       ts, 2);
    actl_input in[3] = {{lora, 0.8, "lora", NULL}, {road2, 0.6, "road2", NULL}, {road1, 1, "road1", NULL}};
    model ref = model_load(base);
    ref_apply(&ref, lora, 0.8);
    ref_apply(&ref, road2, 0.6);
    ref_apply(&ref, road1, 1);
    unsigned char *first = NULL;
    size_t first_len = 0;
    for (int threads = 1; threads <= 2; threads++) {
        char name[32];
        snprintf(name, sizeof name, "out%d", threads);
        char *out = test_join(tmp, name), *file = test_join(out, "model.safetensors");
        actl_merge_opts o = actl_merge_default_opts();
        o.threads = threads;
        assert_ok(actl_merge(base, out, in, 3, &o, NULL));
        compare(&ref, out, -1, name);
        size_t len;
        unsigned char *bytes = test_slurp(file, &len);
        if (!first) {
            first = bytes;
            first_len = len;
        } else {
            /* the split among threads changes nothing */
            assert_int_equal(len, first_len);
            assert_memory_equal(bytes, first, len);
            free(bytes);
        }
        /* and back */
        char *back = test_join(tmp, threads == 1 ? "back1" : "back2");
        o.unmerge = 1;
        assert_ok(actl_merge(out, back, in, 3, &o, NULL));
        loaded l = {{in[0], in[1], in[2]}, {lora, road2, road1}, 3};
        unmerge_ok(out, back, &l, "big, unmerged");
        restored(base, out, back, 0, "big, unmerged");
        free(back);
        free(out);
        free(file);
    }
    free(first);
    model_free(&ref);
    loaded l = {{in[0], in[1], in[2]}, {lora, road2, road1}, 3};
    round_trip_via_f32(base, tmp, &l, ACTL_BF16, "big, through F32 and back");
    actl_adapter_free(lora);
    actl_adapter_free(road1);
    actl_adapter_free(road2);
    test_rmtree(tmp);
    free(base);
    free(tmp);
}

/* ---- the copy path, conversions, counts and progress ----------------------------- */

static void test_merge__without_inputs_copies_the_base_byte_for_byte(void **state)
{
    (void)state;
    const char *bases_[] = {TINY, TINY_SHARDED, B.bf16_bias_sharded};
    for (int b = 0; b < 3; b++) {
        char *tmp = test_tmpdir(), *out = test_join(tmp, "out");
        actl_merge_result r;
        assert_ok(actl_merge(bases_[b], out, NULL, 0, NULL, &r));
        assert_int_equal(r.tensors_merged, 0);
        char **f = list_files(bases_[b]);
        for (size_t i = 0; f[i]; i++) {
            char *p1 = test_join(bases_[b], f[i]), *p2 = test_join(out, f[i]);
            size_t l1, l2;
            unsigned char *d1 = test_slurp(p1, &l1), *d2 = test_slurp(p2, &l2);
            assert_int_equal(l1, l2);
            assert_memory_equal(d1, d2, l1);
            free(d1);
            free(d2);
            free(p1);
            free(p2);
        }
        free_list(f);
        test_rmtree(tmp);
        free(out);
        free(tmp);
    }
}

static void test_merge__dtype_conversion_rounds_once_and_rewrites_index_and_config(void **state)
{
    (void)state;
    static const int dts[] = {ACTL_BF16, ACTL_F16, ACTL_F32};
    const char *bases_[] = {TINY_SHARDED, B.bf16_bias_sharded};
    for (int b = 0; b < 2; b++)
        for (int d = 0; d < 3; d++) {
            char *tmp = test_tmpdir(), *out = test_join(tmp, "out");
            actl_merge_opts o = actl_merge_default_opts();
            o.dtype = dts[d];
            actl_merge_result r;
            assert_ok(actl_merge(bases_[b], out, NULL, 0, &o, &r));
            model ref = model_load(bases_[b]);
            compare(&ref, out, dts[d], "conversion");
            check_layout(bases_[b], out, dts[d]);
            uint64_t bytes = 0;
            for (size_t i = 0; i < ref.n; i++)
                bytes += (uint64_t)ref.t[i].numel * actl_dtype_size((actl_dtype)dts[d]);
            assert_int_equal(r.bytes_written, bytes);
            assert_int_equal(r.tensors_copied, ref.n);
            model_free(&ref);
            test_rmtree(tmp);
            free(out);
            free(tmp);
        }
}

typedef struct prog {
    uint64_t last_done, last_total;
    int calls, backwards;
} prog;

static void on_progress(uint64_t done, uint64_t total, void *ctx)
{
    prog *p = ctx;
    if (done < p->last_done)
        p->backwards = 1;
    p->last_done = done;
    p->last_total = total;
    p->calls++;
}

static void test_merge__reports_counts_and_progress(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *out = test_join(tmp, "out");
    spec s[] = {{"lora", 1}, {"road-4", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    prog p = {0};
    actl_merge_opts o = actl_merge_default_opts();
    o.progress = on_progress;
    o.progress_ctx = &p;
    actl_merge_result r;
    assert_ok(actl_merge(TINY_SHARDED, out, l.in, l.n, &o, &r));
    /* lora: q and v of 2 layers; road-4: o and up of 2 layers */
    assert_int_equal(r.tensors_merged, 8);
    assert_int_equal(r.tensors_copied, 21 - 8);
    assert_int_equal(r.bytes_written, 78464); /* the index's total_size */
    assert_int_equal(r.files_copied, 2);      /* config.json and the index */
    assert_true(p.calls >= 1);
    assert_false(p.backwards);
    assert_int_equal(p.last_done, r.bytes_written);
    assert_int_equal(p.last_total, r.bytes_written);
    free_loaded(&l);
    test_rmtree(tmp);
    free(out);
    free(tmp);
}

/* ---- refusals: each writes nothing (acceptance 5) ---------------------------------- */

/* Runs a merge that must fail with code and a message holding needle. */
static void refused(const char *base, const actl_input *in, size_t n, const actl_merge_opts *o,
                    int code, const char *needle)
{
    char *tmp = test_tmpdir(), *out = test_join(tmp, "out");
    assert_err(actl_merge(base, out, in, n, o, NULL), code, needle);
    assert_no_output(out);
    test_rmtree(tmp);
    free(out);
    free(tmp);
}

static void test_merge__refuses_bottleneck_adapters(void **state)
{
    (void)state;
    spec s[] = {{"lora", 1}, {"bottleneck-series", 1}, {"bottleneck-parallel", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    refused(TINY, l.in, 2, NULL, ACTL_EUNSUPPORTED, "non-linear");
    refused(TINY_SHARDED, l.in + 2, 1, NULL, ACTL_EUNSUPPORTED, "run unmerged in the decoder");
    free_loaded(&l);
}

static void test_merge__refuses_a_module_the_base_lacks(void **state)
{
    (void)state;
    actl_tensor *ts[2];
    ts[0] = rand_tensor(PREFIX "model.layers.7.self_attn.q_proj.lora_A.weight", ACTL_F32, 2, 32, 1, 0);
    ts[1] = rand_tensor(PREFIX "model.layers.7.self_attn.q_proj.lora_B.weight", ACTL_F32, 32, 2, 1, 0);
    actl_adapter *a = make_adapter("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2,"
                                   " \"target_modules\": [\"q_proj\"]}", ts, 2);
    actl_input in = {a, 1, "far", NULL};
    refused(TINY, &in, 1, NULL, ACTL_ENOTFOUND, "model.layers.7.self_attn.q_proj");
    actl_adapter_free(a);
}

static void test_merge__refuses_shapes_that_do_not_fit(void **state)
{
    (void)state;
    actl_tensor *ts[2];
    /* k_proj is [16, 32]; this LoRA wants [24, 32] */
    ts[0] = rand_tensor(PREFIX "model.layers.0.self_attn.k_proj.lora_A.weight", ACTL_F32, 2, 32, 1, 0);
    ts[1] = rand_tensor(PREFIX "model.layers.0.self_attn.k_proj.lora_B.weight", ACTL_F32, 24, 2, 1, 0);
    actl_adapter *a = make_adapter("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2,"
                                   " \"target_modules\": [\"k_proj\"]}", ts, 2);
    actl_input in = {a, 1, "wide", NULL};
    refused(TINY_SHARDED, &in, 1, NULL, ACTL_ESHAPE, "k_proj");
    actl_adapter_free(a);
}

static void test_merge__refuses_a_road_group_size_that_does_not_divide(void **state)
{
    (void)state;
    /* road_2 with groups of 32 over 32 outputs, put on gate_proj's 48 outputs */
    actl_tensor *ts[2];
    ts[0] = rand_tensor(PREFIX "model.layers.0.mlp.gate_proj.road_theta", ACTL_F32, 32, 0, 1, 0);
    ts[1] = rand_tensor(PREFIX "model.layers.0.mlp.gate_proj.road_alpha", ACTL_F32, 32, 0, 0.2, 1);
    actl_adapter *a = make_adapter("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\", "
                                   "\"group_size\": 32, \"target_modules\": [\"gate_proj\"]}",
                                   ts, 2);
    actl_input in = {a, 1, "g32", NULL};
    refused(TINY, &in, 1, NULL, ACTL_ESHAPE, "group_size 32");
    actl_adapter_free(a);
}

static void test_merge__refuses_another_base_model_unless_forced(void **state)
{
    (void)state;
    char *tmp = test_tmpdir();
    char *other = test_join(tmp, "other"), *moved = test_join(tmp, "moved");
    gen_base(other, ACTL_F32, 0, 0, "someone/another-model");
    gen_base(moved, ACTL_F32, 1, 0, "/srv/models/base-tiny/");
    spec s[] = {{"road-2", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    refused(other, l.in, 1, NULL, ACTL_EINVAL, "'adapterctl/base-tiny'");
    refused(other, l.in, 1, NULL, ACTL_EINVAL, "'someone/another-model'");
    actl_merge_opts o = actl_merge_default_opts();
    o.force = 1;
    char *out = test_join(tmp, "forced"), *out2 = test_join(tmp, "moved-out");
    assert_ok(actl_merge(other, out, l.in, 1, &o, NULL));
    /* the same name in another place is the same model */
    assert_ok(actl_merge(moved, out2, l.in, 1, NULL, NULL));
    free_loaded(&l);
    test_rmtree(tmp);
    free(other);
    free(moved);
    free(out);
    free(out2);
    free(tmp);
}

static void test_merge__refuses_to_unmerge_dora(void **state)
{
    (void)state;
    spec s[] = {{"lora", 1}, {"lora-dora", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    actl_merge_opts o = actl_merge_default_opts();
    o.unmerge = 1;
    refused(TINY, l.in, 2, &o, ACTL_EUNSUPPORTED, "DoRA cannot be unmerged");
    free_loaded(&l);
}

static void test_merge__refuses_to_unmerge_a_near_singular_road_pair(void **state)
{
    (void)state;
    /* road_2, groups of 4 on k_proj (16 outputs): pair (8, 10) gets alpha 1e-4 each, so
     * its determinant alpha_p alpha_q cos(theta_p - theta_q) is about 1e-8 */
    float th[16], al[16];
    for (int i = 0; i < 16; i++) {
        th[i] = 0.1f * (float)(i + 1);
        al[i] = i == 8 || i == 10 ? 1e-4f : 1.0f;
    }
    int64_t len = 16;
    actl_tensor *ts[2];
    assert_ok(actl_tensor_new(PREFIX "model.layers.1.self_attn.k_proj.road_theta", ACTL_F32, 1, &len, th, &ts[0]));
    assert_ok(actl_tensor_new(PREFIX "model.layers.1.self_attn.k_proj.road_alpha", ACTL_F32, 1, &len, al, &ts[1]));
    actl_adapter *a = make_adapter("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\", "
                                   "\"group_size\": 4, \"target_modules\": [\"k_proj\"]}", ts, 2);
    actl_input in = {a, 1, "flat", NULL};
    actl_merge_opts o = actl_merge_default_opts();
    o.unmerge = 1;
    refused(TINY_SHARDED, &in, 1, &o, ACTL_EINVAL, "near-singular");
    refused(TINY_SHARDED, &in, 1, &o, ACTL_EINVAL, "outputs 8 and 10");
    actl_adapter_free(a);
}

static void test_merge__refuses_an_existing_output(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *out = test_join(tmp, "out"), *keep = test_join(out, "keep");
    assert_int_equal(mkdir(out, 0777), 0);
    test_write_text(keep, "mine");
    spec s[] = {{"lora", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    assert_err(actl_merge(TINY, out, l.in, 1, NULL, NULL), ACTL_EEXIST, "already exists");
    char *t = (char *)test_slurp(keep, NULL);
    assert_string_equal(t, "mine");
    assert_int_equal(test_count_files(out), 1);
    free(t);
    /* an empty directory is not a fair target either */
    char *empty = test_join(tmp, "empty");
    assert_int_equal(mkdir(empty, 0777), 0);
    assert_err(actl_merge(TINY, empty, l.in, 1, NULL, NULL), ACTL_EEXIST, "already exists");
    assert_int_equal(test_count_files(empty), 0);
    free_loaded(&l);
    test_rmtree(tmp);
    free(empty);
    free(keep);
    free(out);
    free(tmp);
}

static void test_merge__refuses_lora_bias_on_a_base_without_bias(void **state)
{
    (void)state;
    spec s[] = {{"lora-bias", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    refused(TINY, l.in, 1, NULL, ACTL_ENOTFOUND, "no 'model.layers.0.self_attn.q_proj.bias'");
    free_loaded(&l);
}

static void test_merge__refuses_to_unmerge_replaced_tensors(void **state)
{
    (void)state;
    spec s[] = {{"lora-embedding", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    actl_merge_opts o = actl_merge_default_opts();
    o.unmerge = 1;
    refused(TINY, l.in, 1, &o, ACTL_EUNSUPPORTED, "lm_head.weight");
    free_loaded(&l);
}

static void test_merge__refuses_bad_arguments(void **state)
{
    (void)state;
    spec s[] = {{"lora", 1}, {NULL, 0}};
    loaded l = load_specs(s);
    l.in[0].weight = NAN;
    refused(TINY, l.in, 1, NULL, ACTL_EINVAL, "not a finite number");
    l.in[0].weight = 1;
    actl_merge_opts o = actl_merge_default_opts();
    o.dtype = ACTL_I32;
    refused(TINY, l.in, 1, &o, ACTL_EINVAL, "not F32, F16 or BF16");
    refused(FIXTURES "/no-such-base", l.in, 1, NULL, ACTL_ENOTFOUND, "no-such-base");
    refused(TINY "/model.safetensors", l.in, 1, NULL, ACTL_EINVAL, "not a checkpoint directory");
    free_loaded(&l);
}

/* Runs a merge of fixture lora into base in a child whose files may not grow
 * past limit bytes (RLIMIT_FSIZE): it must fail with ACTL_EIO. */
static void merge_under_size_limit(const char *base, const char *out, rlim_t limit)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {limit, limit};
        setrlimit(RLIMIT_FSIZE, &rl);
        actl_adapter *a = NULL;
        if (actl_adapter_load(ADAPTERS "/lora", &a))
            _exit(3);
        actl_input in = {a, 1, "lora", NULL};
        int rc = actl_merge(base, out, &in, 1, NULL, NULL);
        actl_adapter_free(a);
        _exit(rc == ACTL_EIO ? 0 : 4);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A merge that fails once its temporary directory exists (the file size
 * limit) removes it: at the first shard, and after every shard is written
 * and synced, when a large side file cannot be copied. */
static void test_merge__failure_while_writing_leaves_nothing(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *out = test_join(tmp, "out"), *base = test_join(tmp, "base");
    merge_under_size_limit(TINY_SHARDED, out, 20000);
    assert_no_output(out);
    /* base-tiny-sharded (shards of 40200 and 40392 bytes) and a 60000-byte side file */
    assert_int_equal(mkdir(base, 0777), 0);
    char **f = list_files(TINY_SHARDED);
    for (size_t i = 0; f[i]; i++) {
        char *p1 = test_join(TINY_SHARDED, f[i]), *p2 = test_join(base, f[i]);
        size_t len;
        unsigned char *d = test_slurp(p1, &len);
        test_write_file(p2, d, len);
        free(d);
        free(p1);
        free(p2);
    }
    free_list(f);
    char *big = test_join(base, "tokenizer.json");
    char *text = malloc(60001);
    memset(text, ' ', 60000);
    text[60000] = '\0';
    test_write_text(big, text);
    merge_under_size_limit(base, out, 50000);
    assert_no_output(out);
    free(text);
    free(big);
    test_rmtree(tmp);
    free(base);
    free(out);
    free(tmp);
}

/* ---- values that would not be finite ------------------------------------------- */

/* A weight whose w s passes the float range (LoRA) or whose theta w and
 * alpha^w overflow (RoAd) is refused before anything is written. */
static void test_merge__refuses_weights_that_overflow_float(void **state)
{
    (void)state;
    spec s1[] = {{"lora", 1e40}, {NULL, 0}}, s2[] = {{"road-1", 1e308}, {NULL, 0}};
    loaded l = load_specs(s1);
    refused(TINY, l.in, 1, NULL, ACTL_EINVAL, "beyond the float range");
    free_loaded(&l);
    l = load_specs(s2);
    refused(TINY, l.in, 1, NULL, ACTL_EINVAL, "RoAd coefficients that are not finite");
    free_loaded(&l);
}

/* r 1, A and B all ones on q_proj [32, 32]: the delta is w lora_alpha everywhere. */
static actl_adapter *ones_lora(double lora_alpha, double poison)
{
    actl_tensor *ts[2];
    ts[0] = rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_A.weight", ACTL_F32, 1, 32, 0, 1);
    ts[1] = rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_B.weight", ACTL_F32, 32, 1, 0, 1);
    if (poison != 1) {
        float f = (float)poison;
        memcpy((unsigned char *)actl_tensor_data(ts[1]) + 4 * 7, &f, 4);
    }
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": %g, "
             "\"target_modules\": [\"q_proj\"]}", lora_alpha);
    return make_adapter(cfg, ts, 2);
}

/* An infinity or NaN inside an adapter is refused, naming the adapter and tensor. */
static void test_merge__refuses_non_finite_adapter_tensors(void **state)
{
    (void)state;
    const double bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < 3; k++) {
        actl_adapter *a = ones_lora(1, bad[k]);
        actl_input in = {a, 1, "poisoned", NULL};
        refused(TINY, &in, 1, NULL, ACTL_EINVAL,
                "'poisoned': tensor '" PREFIX "model.layers.0.self_attn.q_proj.lora_B.weight' "
                "holds a non-finite value");
        actl_adapter_free(a);
    }
}

/* Each weight fits in float, their sum does not: W + 3e38 + 3e38 overflows in
 * the block, which fails the merge and names the tensor. */
static void test_merge__refuses_results_that_overflow(void **state)
{
    (void)state;
    actl_adapter *a = ones_lora(1, 1);
    actl_input in[2] = {{a, 3e38, "big", NULL}, {a, 3e38, "big", NULL}};
    char *tmp = test_tmpdir(), *out = test_join(tmp, "out");
    assert_ok(actl_merge(TINY, out, in, 1, NULL, NULL)); /* one of them fits */
    test_rmtree(tmp);
    free(out);
    free(tmp);
    refused(TINY, in, 2, NULL, ACTL_EINVAL,
            "tensor 'model.layers.0.self_attn.q_proj.weight': element 0 (row 0) is finite in the "
            "base but not after the adapters' changes");
    actl_adapter_free(a);
}

/* F16 stops at 65504: converting a base that holds 70000 fails, naming the
 * tensor; a base already holding an infinity passes it through. */
static void test_merge__refuses_f16_overflow_but_keeps_existing_infinities(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *base = test_join(tmp, "base"), *out = test_join(tmp, "out");
    assert_int_equal(mkdir(base, 0777), 0);
    actl_tensor *ts[2];
    ts[0] = rand_tensor("model.norm.weight", ACTL_F32, 64, 0, 0.1, 1);
    ts[1] = rand_tensor("model.layers.0.mlp.up_proj.weight", ACTL_F32, 16, 8, 0.2, 0);
    float big = 70000.0f, inf = INFINITY;
    memcpy((unsigned char *)actl_tensor_data(ts[1]) + 4 * 21, &big, 4);
    memcpy((unsigned char *)actl_tensor_data(ts[0]) + 4 * 3, &inf, 4);
    char *p = test_join(base, "model.safetensors");
    assert_ok(actl_st_write(p, (const actl_tensor *const *)ts, 2, NULL));
    actl_merge_opts o = actl_merge_default_opts();
    o.dtype = ACTL_F16;
    assert_err(actl_merge(base, out, NULL, 0, &o, NULL), ACTL_EINVAL,
               "tensor 'model.layers.0.mlp.up_proj.weight': element 21 (row 2) is finite in the "
               "base but not after rounding 70000 to F16");
    assert_no_output(out);
    /* without the large value the infinity of the base goes through as it is */
    float ok = 1.0f;
    memcpy((unsigned char *)actl_tensor_data(ts[1]) + 4 * 21, &ok, 4);
    assert_int_equal(unlink(p), 0);
    assert_ok(actl_st_write(p, (const actl_tensor *const *)ts, 2, NULL));
    assert_ok(actl_merge(base, out, NULL, 0, &o, NULL));
    model m = model_load(out);
    assert_true(isinf(model_find(&m, "model.norm.weight")->v[3]));
    model_free(&m);
    actl_tensor_free(ts[0]);
    actl_tensor_free(ts[1]);
    test_rmtree(tmp);
    free(p);
    free(base);
    free(out);
    free(tmp);
}

/* ---- tied embeddings ------------------------------------------------------------ */

/* base-tiny with config.json's tie_word_embeddings set to true. */
static void gen_tied_base(const char *dir)
{
    gen_base(dir, ACTL_F32, 0, 0, NULL);
    char *cfg = test_join(dir, "config.json");
    json_t *c = load_json(cfg);
    json_object_set_new(c, "tie_word_embeddings", json_true());
    assert_int_equal(json_dump_file(c, cfg, JSON_INDENT(2)), 0);
    json_decref(c);
    free(cfg);
}

/* An embedding LoRA, or a tensor replacing lm_head, on a base that ties the
 * two is refused unless forced; adapters elsewhere merge as usual. */
static void test_merge__refuses_embeddings_and_head_of_a_tied_base_unless_forced(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *base = test_join(tmp, "tied"), *out = test_join(tmp, "out");
    gen_tied_base(base);
    spec se[] = {{"lora-embedding", 1}, {NULL, 0}}, sl[] = {{"lora", 1}, {NULL, 0}};
    loaded l = load_specs(se);
    /* the embedding LoRA on embed_tokens and lm_head from modules_to_save: the
     * first in name order is lm_head */
    refused(base, l.in, 1, NULL, ACTL_EINVAL,
            "ties its input embeddings to its output head (tie_word_embeddings), so "
            "'lm_head.weight' is one matrix used twice");
    /* the embedding alone */
    actl_tensor *ts[2];
    ts[0] = rand_tensor(PREFIX "model.embed_tokens.lora_embedding_A", ACTL_F32, 2, 64, 0.5, 0);
    ts[1] = rand_tensor(PREFIX "model.embed_tokens.lora_embedding_B", ACTL_F32, 32, 2, 0.5, 0);
    actl_adapter *emb = make_adapter("{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4,"
                                     " \"target_modules\": [\"embed_tokens\"]}", ts, 2);
    actl_input ein = {emb, 1, "emb", NULL};
    refused(base, &ein, 1, NULL, ACTL_EINVAL, "'model.embed_tokens.weight' is one matrix used twice");
    actl_merge_opts o = actl_merge_default_opts();
    o.force = 1;
    assert_ok(actl_merge(base, out, l.in, 1, &o, NULL));
    model ref = model_load(base);
    ref_apply(&ref, l.a[0], 1);
    compare(&ref, out, -1, "forced into a tied base");
    model_free(&ref);
    free_loaded(&l);
    actl_adapter_free(emb);
    test_rmtree(out);
    l = load_specs(sl);
    assert_ok(actl_merge(base, out, l.in, 1, NULL, NULL));
    free_loaded(&l);
    test_rmtree(tmp);
    free(base);
    free(out);
    free(tmp);
}

/* ---- Conv1D bases ----------------------------------------------------------------- */

/* A GPT-2 style base (model_type gpt2): the Conv1D projection c_attn stores
 * [in 16, out 48], lm_head is nn.Linear [vocab 40, 16]. PEFT makes c_attn's
 * delta (B A)^T whatever fan_in_fan_out says, and lm_head's B A. */
static void test_merge__conv1d_base_orientation_follows_the_layer_not_the_flag(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *base = test_join(tmp, "gpt2"), *out = test_join(tmp, "out");
    assert_int_equal(mkdir(base, 0777), 0);
    actl_tensor *bt[3];
    bt[0] = rand_tensor("h.0.attn.c_attn.weight", ACTL_F32, 16, 48, 0.2, 0);
    bt[1] = rand_tensor("h.0.attn.c_attn.bias", ACTL_F32, 48, 0, 0.2, 0);
    bt[2] = rand_tensor("lm_head.weight", ACTL_F32, 40, 16, 0.2, 0);
    char *p = test_join(base, "model.safetensors"), *cfg = test_join(base, "config.json");
    assert_ok(actl_st_write(p, (const actl_tensor *const *)bt, 3, NULL));
    for (int i = 0; i < 3; i++)
        actl_tensor_free(bt[i]);
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs("{\"model_type\": \"gpt2\", \"_name_or_path\": \"tiny-gpt2\"}\n", f);
    fclose(f);
    for (int fan = 0; fan < 2; fan++) {
        actl_tensor *ts[4];
        ts[0] = rand_tensor(PREFIX "h.0.attn.c_attn.lora_A.weight", ACTL_F32, 2, 16, 0.5, 0);
        ts[1] = rand_tensor(PREFIX "h.0.attn.c_attn.lora_B.weight", ACTL_F32, 48, 2, 0.5, 0);
        ts[2] = rand_tensor(PREFIX "lm_head.lora_A.weight", ACTL_F32, 2, 16, 0.5, 0);
        ts[3] = rand_tensor(PREFIX "lm_head.lora_B.weight", ACTL_F32, 40, 2, 0.5, 0);
        char c[256];
        snprintf(c, sizeof c, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, "
                 "\"fan_in_fan_out\": %s, \"target_modules\": [\"c_attn\", \"lm_head\"]}",
                 fan ? "true" : "false");
        actl_adapter *a = make_adapter(c, ts, 4);
        actl_input in = {a, 0.75, "gpt2-lora", NULL};
        assert_ok(actl_merge(base, out, &in, 1, NULL, NULL));
        model ref = model_load(base);
        assert_string_equal(ref.model_type, "gpt2");
        ref_apply(&ref, a, 0.75);
        compare(&ref, out, -1, fan ? "gpt2, fan_in_fan_out true" : "gpt2, fan_in_fan_out false");
        model_free(&ref);
        test_rmtree(out);
        actl_adapter_free(a);
    }
    test_rmtree(tmp);
    free(p);
    free(cfg);
    free(base);
    free(out);
    free(tmp);
}

/* ---- replaced tensors stream by row block ----------------------------------------- */

static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n))
            v = atol(line + n);
    if (f)
        fclose(f);
    return v;
}

/* A modules_to_save lm_head of 32 MB replaces the base's: the peak resident
 * memory of the merge stays far below the tensor's size (it was widened
 * whole to fp32 before). The peak is reset through /proc/self/clear_refs. */
static void test_merge__replaced_tensor_is_widened_per_row_block(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *base = test_join(tmp, "base"), *out = test_join(tmp, "out");
    assert_int_equal(mkdir(base, 0777), 0);
    const int64_t vocab = 16384, dim = 512; /* 32 MiB in F32 */
    actl_tensor *bt[2] = {rand_tensor("lm_head.weight", ACTL_F32, vocab, dim, 0.2, 0),
                          rand_tensor("model.layers.0.self_attn.q_proj.weight", ACTL_F32, 8, 8,
                                      0.2, 0)};
    char *p = test_join(base, "model.safetensors");
    assert_ok(actl_st_write(p, (const actl_tensor *const *)bt, 2, NULL));
    actl_tensor_free(bt[0]);
    actl_tensor_free(bt[1]);
    /* BF16, so the widened fp32 copy of before would have been twice its size */
    actl_tensor *ts[3] = {
        rand_tensor(PREFIX "lm_head.weight", ACTL_BF16, vocab, dim, 0.2, 0),
        rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_A.weight", ACTL_F32, 1, 8, 0.5, 0),
        rand_tensor(PREFIX "model.layers.0.self_attn.q_proj.lora_B.weight", ACTL_F32, 8, 1, 0.5, 0)};
    actl_adapter *a = make_adapter("{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1, "
                                   "\"target_modules\": [\"q_proj\"], "
                                   "\"modules_to_save\": [\"lm_head\"]}", ts, 3);
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f || fputs("5", f) == EOF || fclose(f) != 0) {
        actl_adapter_free(a);
        test_rmtree(tmp);
        free(p);
        free(base);
        free(out);
        free(tmp);
        skip();
    }
    long before = status_kb("VmRSS:");
    actl_input in = {a, 0.5, "head", NULL};
    actl_merge_opts o = actl_merge_default_opts();
    o.threads = 2;
    assert_ok(actl_merge(base, out, &in, 1, &o, NULL));
    long peak = status_kb("VmHWM:");
    print_message("replaced lm_head of %lld MiB: peak RSS grew by %.1f MiB\n",
                  (long long)(vocab * dim * 4 >> 20), (double)(peak - before) / 1024);
    /* Whole-tensor widening grew it by 39 MiB; per block it grows by about 6 MiB, 9 under
     * ASan's allocator: half the tensor separates the two with room to spare. */
    assert_true(peak - before < (long)(vocab * dim * 4 / 1024 / 2));
    model ref = model_load(base);
    ref_apply(&ref, a, 0.5);
    compare(&ref, out, -1, "replaced lm_head at 0.5");
    model_free(&ref);
    actl_adapter_free(a);
    test_rmtree(tmp);
    free(p);
    free(base);
    free(out);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge__single_f32_fixture_matches_reference),
        cmocka_unit_test(test_merge__sharded_f32_fixture_matches_reference),
        cmocka_unit_test(test_merge__single_f32_with_biases_matches_reference),
        cmocka_unit_test(test_merge__sharded_f32_with_biases_matches_reference),
        cmocka_unit_test(test_merge__single_bf16_matches_reference_within_one_ulp),
        cmocka_unit_test(test_merge__sharded_bf16_matches_reference_within_one_ulp),
        cmocka_unit_test(test_merge__many_row_blocks_match_reference_with_one_or_two_threads),
        cmocka_unit_test(test_merge__without_inputs_copies_the_base_byte_for_byte),
        cmocka_unit_test(test_merge__dtype_conversion_rounds_once_and_rewrites_index_and_config),
        cmocka_unit_test(test_merge__reports_counts_and_progress),
        cmocka_unit_test(test_merge__refuses_bottleneck_adapters),
        cmocka_unit_test(test_merge__refuses_a_module_the_base_lacks),
        cmocka_unit_test(test_merge__refuses_shapes_that_do_not_fit),
        cmocka_unit_test(test_merge__refuses_a_road_group_size_that_does_not_divide),
        cmocka_unit_test(test_merge__refuses_another_base_model_unless_forced),
        cmocka_unit_test(test_merge__refuses_to_unmerge_dora),
        cmocka_unit_test(test_merge__refuses_to_unmerge_a_near_singular_road_pair),
        cmocka_unit_test(test_merge__refuses_an_existing_output),
        cmocka_unit_test(test_merge__refuses_lora_bias_on_a_base_without_bias),
        cmocka_unit_test(test_merge__refuses_to_unmerge_replaced_tensors),
        cmocka_unit_test(test_merge__refuses_bad_arguments),
        cmocka_unit_test(test_merge__failure_while_writing_leaves_nothing),
        cmocka_unit_test(test_merge__refuses_weights_that_overflow_float),
        cmocka_unit_test(test_merge__refuses_non_finite_adapter_tensors),
        cmocka_unit_test(test_merge__refuses_results_that_overflow),
        cmocka_unit_test(test_merge__refuses_f16_overflow_but_keeps_existing_infinities),
        cmocka_unit_test(test_merge__refuses_embeddings_and_head_of_a_tied_base_unless_forced),
        cmocka_unit_test(test_merge__conv1d_base_orientation_follows_the_layer_not_the_flag),
        cmocka_unit_test(test_merge__replaced_tensor_is_widened_per_row_block),
    };
    int rc = cmocka_run_group_tests(tests, setup_bases, teardown_bases);
    printf("16-bit elements checked: %zu, of which %zu within the fp32 allowance only\n",
           n_checked16, n_slack);
    return rc;
}
