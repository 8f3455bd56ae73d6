/* adapt.c: adapters in the decoder's form (DESIGN.md 3, 10).
 *
 * actl__rt_new turns an ordered list of adapters (a stack: the first member
 * innermost) into, per module slot of the model, the list of operations its
 * members apply, everything in contiguous arrays made once so that the
 * decoder's hot loop reads no adapter tensor:
 *  - LoRA / MoS (materialized): A [r, in] and (s w B)ᵀ [r, out] in fp32; the
 *    module gains  y += (s w B)(A x)  (+ s w lora_B.bias, as merge.c adds it).
 *    When A and B are both stored F16 or BF16 they stay so, A and Bᵀ exactly
 *    as stored, and s w scales the small t = A x instead: a batch over many
 *    adapters spends its adapter time reading their factors, and half the
 *    bytes, laid out in the order the few-row kernels read them (which widen
 *    as they load), cut that time by about a third (measured at dim 768,
 *    r 8, 32 adapters). The sgemm path widens the two factors per call.
 *    DoRA keeps fp32 factors (its row factors are computed from them).
 *  - DoRA: the same two factors and the row factor of merge.c's formula
 *        F = (1 - w) + w m / ||W + w s B A||_row
 *    so that  y = F ⊙ (W x + w s B A x) + b + s w bias; only as the first
 *    member of its module (it needs the norm of the weight it scales, which
 *    a member applied before it would change at run time).
 *  - RoAd: c[out], s[out] from actl__road_coeffs (theta w, alpha^w), applied
 *    pair by pair to the output: y[p] = c[p] y[p] - s[p] y[q],
 *    y[q] = c[q] y[q] + s[q] y[p] with q = p + g/2 (DESIGN.md 3.2).
 *  - Bottleneck: D [b, n] and (s w U)ᵀ [b, m] with the activation between,
 *    at the adapter's placement (DESIGN.md 3.3). A series-on-input member
 *    rewrites the module's input before the base projection (actl__rt_pre,
 *    outermost first); each member then sees the input as the members
 *    outside it left it, which actl__rt_post recomputes when it is neither
 *    the module's input x nor the base's input x0.
 *  - Embedding LoRA: Aᵀ [vocab, r] (a row per id) and (s w B)ᵀ [r, dim].
 * The two products of a low-rank op use hand-written loops for a few rows
 * (sgemm's fixed cost dominates there) and cblas_sgemm for more; scratch
 * lives on the caller's stack or is allocated per call, so any number of
 * threads may run posts on distinct rows at once.
 */
#include "internal.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Up to this many rows, the low-rank products run as the loops below (as fast
 * as sgemm there, measured at dim 768 and r 8, without its fixed cost). */
#ifndef SMALL_ROWS
#define SMALL_ROWS 8
#endif
/* Scratch floats kept on the stack; more are allocated per call. */
#define STACK_FLOATS 2048

typedef enum op_kind { OP_LORA, OP_DORA, OP_ROAD, OP_BN_IN, OP_BN_OUT, OP_BN_PAR } op_kind;

typedef struct rt_op {
    op_kind kind;
    int stage;           /* the input this member sees: 0 the module's x, npre the base's x0,
                            between: x after the `stage` outermost input bottlenecks */
    int64_t r;           /* LoRA rank or bottleneck size */
    int64_t n_in, n_out; /* a [r, n_in], bt [r, n_out] */
    float *a;            /* LoRA A [r, in]; bottleneck D [b, n] */
    float *bt;           /* LoRA (s w B)ᵀ [r, out]; bottleneck (s w U)ᵀ [b, m] */
    actl_dtype half;     /* ACTL_F32, or LoRA factors kept F16/BF16 in a16, bt16 (a, bt NULL) */
    uint16_t *a16;       /* A [r, in] as stored */
    uint16_t *bt16;      /* Bᵀ [r, out] as stored, unscaled */
    float k;             /* s w, applied to t = A x when the factors are 16-bit */
    float *f;            /* DoRA F [out] */
    float *add;          /* [out] added to each row after the op (LoRA bias terms), or NULL */
    float *c, *s;        /* RoAd [out], or [out/2] (one per pair) when paired */
    bool paired;         /* RoAd: both outputs of every pair share c and s */
    int64_t group;       /* RoAd g */
    actl_activation act; /* bottleneck σ */
} rt_op;

typedef struct rt_slot {
    rt_op *ops; /* n, innermost first */
    int n;
    int npre;   /* series-on-input members */
    bool mid;   /* some member sees an input between x and x0 */
    int64_t in; /* the module's input width */
} rt_slot;

typedef struct rt_embed {
    float *at; /* Aᵀ [vocab, r] */
    float *bt; /* (s w B)ᵀ [r, dim] */
    int64_t r;
} rt_embed;

struct actl__rt {
    int64_t nslots;  /* layers * ACTL__NPROJ + 1 (lm_head) */
    rt_slot *slots;
    rt_embed *emb;   /* nemb embedding LoRAs (they add, so their order does not matter) */
    size_t nemb;
    int64_t dim, vocab;
};

/* ---- building ------------------------------------------------------------- */

static void op_release(rt_op *o)
{
    free(o->a);
    free(o->bt);
    free(o->a16);
    free(o->bt16);
    free(o->f);
    free(o->add);
    free(o->c);
    free(o->s);
}

void actl__rt_free(actl__rt *rt)
{
    if (!rt)
        return;
    for (int64_t i = 0; rt->slots && i < rt->nslots; i++) {
        for (int k = 0; k < rt->slots[i].n; k++)
            op_release(&rt->slots[i].ops[k]);
        free(rt->slots[i].ops);
    }
    free(rt->slots);
    for (size_t i = 0; i < rt->nemb; i++) {
        free(rt->emb[i].at);
        free(rt->emb[i].bt);
    }
    free(rt->emb);
    free(rt);
}

/* t widened into a new fp32 array *out. */
static int widen(const actl_tensor *t, float **out)
{
    int rc;
    float *p = malloc((size_t)(t->numel > 0 ? t->numel : 1) * sizeof *p);
    *out = NULL;
    if (!p)
        return actl__oom();
    if ((rc = actl_tensor_to_f32(t, p))) {
        free(p);
        return rc;
    }
    *out = p;
    return ACTL_OK;
}

/* A 2-D t [rows, cols] times k, transposed into a new fp32 [cols, rows] *out. */
static int transposed_scaled(const actl_tensor *t, double k, float **out)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    float *src = NULL, *dst = NULL;
    int rc = widen(t, &src);
    *out = NULL;
    if (rc)
        return rc;
    if (!(dst = malloc((size_t)(rows * cols > 0 ? rows * cols : 1) * sizeof *dst))) {
        rc = actl__oom();
        goto done;
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            dst[j * rows + i] = (float)(src[i * cols + j] * k);
    *out = dst;
done:
    free(src);
    return rc;
}

static bool all_finite(const float *p, int64_t n)
{
    for (int64_t i = 0; p && i < n; i++)
        if (!isfinite(p[i]))
            return false;
    return true;
}

/* The slot of a module name, -1 for the embedding table, -2 for anything
 * the decoder does not run. */
static int64_t slot_of(const actl_model *m, const char *name)
{
    if (strcmp(name, "lm_head") == 0)
        return ACTL__SLOT_HEAD(m);
    if (strcmp(name, "model.embed_tokens") == 0)
        return -1;
    const char *pre = "model.layers.";
    size_t pl = strlen(pre);
    if (strncmp(name, pre, pl) != 0)
        return -2;
    const char *p = name + pl;
    int64_t l = 0;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.'))
        return -2;
    for (; *p >= '0' && *p <= '9'; p++) {
        l = l * 10 + (*p - '0');
        if (l >= m->info.layers)
            return -2;
    }
    if (*p++ != '.')
        return -2;
    for (int k = 0; k < ACTL__NPROJ; k++)
        if (strcmp(p, actl__proj_names[k]) == 0)
            return l * ACTL__NPROJ + k;
    return -2;
}

static int add_op(rt_slot *sl, const rt_op *o)
{
    rt_op *p = realloc(sl->ops, (size_t)(sl->n + 1) * sizeof *p);
    if (!p)
        return actl__oom();
    sl->ops = p;
    sl->ops[sl->n++] = *o;
    return ACTL_OK;
}

/* DoRA's row factors F = (1 - w) + w m / ||W + B'A||_row (merge.c's formula,
 * B' = w s B already in o->bt), norms in double; a zero row keeps F = 1 as
 * merge.c leaves it. W [out, in] is the slot's base weight. */
static int dora_factors(const actl_model *m, int64_t slot, const actl__module *mod, double w,
                        rt_op *o)
{
    int rc = ACTL_OK;
    const actl_tensor *W = actl__slot_weight(m, slot);
    int64_t out = o->n_out, in = o->n_in, r = o->r;
    float *wrow = malloc((size_t)in * sizeof *wrow);
    double *v = malloc((size_t)in * sizeof *v);
    float *mag = NULL;
    uint16_t *half = W->dtype == ACTL_F32 ? NULL : malloc((size_t)in * sizeof *half);
    if ((rc = widen(mod->magnitude, &mag)))
        goto out;
    if (!wrow || !v || (W->dtype != ACTL_F32 && !half) ||
        !(o->f = malloc((size_t)out * sizeof *o->f))) {
        rc = actl__oom();
        goto out;
    }
    for (int64_t p = 0; p < out; p++) {
        const unsigned char *src = (const unsigned char *)W->data +
                                   (size_t)(p * in) * actl_dtype_size(W->dtype);
        if (W->dtype == ACTL_F32) {
            memcpy(wrow, src, (size_t)in * sizeof *wrow);
        } else {
            memcpy(half, src, (size_t)in * sizeof *half);
            if (W->dtype == ACTL_F16)
                actl_f16_to_f32(half, wrow, (size_t)in);
            else
                actl_bf16_to_f32(half, wrow, (size_t)in);
        }
        for (int64_t i = 0; i < in; i++)
            v[i] = wrow[i];
        /* V[p, :] += sum_j B'[p, j] A[j, :] ; B'[p, j] = bt[j, p] */
        for (int64_t j = 0; j < r; j++) {
            double bj = o->bt[j * out + p];
            const float *aj = o->a + j * in;
            for (int64_t i = 0; i < in; i++)
                v[i] += bj * aj[i];
        }
        double ss = 0;
        for (int64_t i = 0; i < in; i++)
            ss += v[i] * v[i];
        double norm = sqrt(ss);
        o->f[p] = norm == 0 ? 1.0f : (float)((1 - w) + w * mag[p] / norm);
    }
out:
    free(wrow);
    free(v);
    free(mag);
    free(half);
    return rc;
}

/* ---- 16-bit factors ----
 * A 16-bit factor value widened (exactly): bf16 is the top half of a float;
 * f16's exponent and mantissa, moved into a float's fields, give the value
 * times 2^-112 (subnormals included), which one exact product restores. The
 * build refused Inf and NaN, so their encodings need no case here. */
static inline float bf16w(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float f16w(uint16_t h)
{
    uint32_t u = (uint32_t)(h & 0x7fffu) << 13;
    float f;
    memcpy(&f, &u, sizeof f);
    f *= 0x1p112f;
    return h & 0x8000u ? -f : f;
}

/* 16-bit factors are stored in panels laid out in the order the few-row
 * kernels read them, so that each kernel call streams through one run of
 * memory (a mixed batch reads every adapter's factors once per step, cold,
 * and the prefetcher then keeps up). A panel of h rows of width n (n16 the
 * part in whole blocks of 16):
 *    block b, row q:  16 values at (b h + q) 16, v[16b + k] at 2k and
 *                     v[16b + 8 + k] at 2k + 1 (k < 8), so that a 32-bit
 *                     lane holds one of each of the block's two halves;
 *    then the rest:   row q's n - n16 values at n16 h + q (n - n16).
 * Bᵀ [r, out] is one panel of r rows; A [r, in] is panels of 4 rows (the
 * dot kernel's step), then of 1 for the r % 4 left, panel j at j in. */
static int64_t panel_at(int64_t h, int64_t n, int64_t q, int64_t i)
{
    int64_t n16 = n - n % 16;
    if (i >= n16)
        return n16 * h + q * (n - n16) + (i - n16);
    return (i / 16 * h + q) * 16 + 2 * (i % 8) + (i % 16 >= 8);
}

/* The panels of m [rows, n] (plain, row-major) into dst; rows in panels of
 * `step` rows then of 1. */
static void pack_panels(const uint16_t *m, int64_t rows, int64_t n, int64_t step,
                        uint16_t *dst)
{
    for (int64_t j = 0; j < rows;) {
        int64_t h = j + step <= rows ? step : 1;
        for (int64_t q = 0; q < h; q++)
            for (int64_t i = 0; i < n; i++)
                dst[j * n + panel_at(h, n, q, i)] = m[(j + q) * n + i];
        j += h;
    }
}

/* The inverse of pack_panels, widened to fp32 [rows, n]. */
static void unpack_panels(const uint16_t *src, actl_dtype dt, int64_t rows, int64_t n,
                          int64_t step, float *m)
{
    for (int64_t j = 0; j < rows;) {
        int64_t h = j + step <= rows ? step : 1;
        for (int64_t q = 0; q < h; q++)
            for (int64_t i = 0; i < n; i++) {
                uint16_t v = src[j * n + panel_at(h, n, q, i)];
                m[(j + q) * n + i] = dt == ACTL_BF16 ? bf16w(v) : f16w(v);
            }
        j += h;
    }
}

/* A and Bᵀ of a LoRA whose factors are both F16 or BF16, kept as stored
 * (exact), with k = s w for t. Refuses what the fp32 form would: a value
 * that is not finite, or a delta s w B beyond the float range. */
static int keep_half(const actl_input *in, const actl__module *mod, double k, rt_op *o)
{
    int rc = ACTL_OK;
    const actl_tensor *ta = mod->lora_a, *tb = mod->lora_b;
    int64_t r = tb->shape[1], out = tb->shape[0];
    float *fa = NULL, *fb = NULL;
    uint16_t *plain = NULL; /* A, then Bᵀ, row-major */
    size_t na = (size_t)(ta->numel > 0 ? ta->numel : 1);
    size_t nb = (size_t)(tb->numel > 0 ? tb->numel : 1);
    if ((rc = widen(ta, &fa)) || (rc = widen(tb, &fb)))
        goto done;
    if (!(o->a16 = malloc(na * sizeof *o->a16)) || !(o->bt16 = malloc(nb * sizeof *o->bt16)) ||
        !(plain = malloc((na > nb ? na : nb) * sizeof *plain))) {
        rc = actl__oom();
        goto done;
    }
    if (ta->numel)
        memcpy(plain, ta->data, (size_t)ta->numel * sizeof *plain);
    pack_panels(plain, r, ta->shape[1], 4, o->a16);
    const unsigned char *b = tb->data; /* a view may be unaligned: copy element by element */
    for (int64_t p = 0; p < out; p++)
        for (int64_t j = 0; j < r; j++)
            memcpy(&plain[j * out + p], b + 2 * (size_t)(p * r + j), sizeof *plain);
    pack_panels(plain, r, out, r, o->bt16);
    o->half = ta->dtype;
    o->k = fabs(k) <= FLT_MAX ? (float)k : 0;
    double bmax = 0;
    for (int64_t i = 0; i < tb->numel; i++)
        bmax = fmax(bmax, fabs(fb[i]));
    if (!all_finite(fa, ta->numel) || !all_finite(fb, tb->numel) || !(fabs(k) <= FLT_MAX) ||
        !(bmax * fabs(k) <= FLT_MAX))
        rc = actl__err(ACTL_EINVAL, "'%s': module '%s': at weight %g its tensors are not all "
                       "finite in float (an Inf or NaN, or a value beyond the float range)",
                       in->ref, mod->info.name, in->weight);
done:
    free(fa);
    free(fb);
    free(plain);
    return rc;
}

/* One LoRA (or materialized MoS) module on a slot. */
static int build_lora(const actl_model *m, const actl_input *in, const actl__module *mod,
                      int64_t slot, rt_slot *sl, rt_op *o)
{
    int rc = ACTL_OK;
    const actl_module_info *mi = &mod->info;
    double k = mi->scale * in->weight;
    const actl_tensor *W = actl__slot_weight(m, slot);
    o->kind = (mi->flags & ACTL_MOD_DORA) ? OP_DORA : OP_LORA;
    o->r = mod->lora_a->shape[0];
    o->n_in = W->shape[1];
    o->n_out = W->shape[0];
    const float *bias = NULL;
    float *lb = NULL;
    if (o->kind == OP_DORA && sl->n > 0) {
        rc = actl__err(ACTL_EUNSUPPORTED,
                       "'%s': module '%s': DoRA runs only as the first member of a stack on "
                       "its module (its row norms are those of the base weight, which the "
                       "%d member(s) before it change)", in->ref, mi->name, sl->n);
        goto out;
    }
    if (o->kind == OP_LORA && mod->lora_a->dtype == mod->lora_b->dtype &&
        (mod->lora_a->dtype == ACTL_F16 || mod->lora_a->dtype == ACTL_BF16)) {
        if ((rc = keep_half(in, mod, k, o)))
            goto out;
    } else if ((rc = widen(mod->lora_a, &o->a)) ||
               (rc = transposed_scaled(mod->lora_b, k, &o->bt))) {
        goto out;
    }
    if (o->kind == OP_DORA && (rc = dora_factors(m, slot, mod, in->weight, o)))
        goto out;
    if (o->kind == OP_DORA && slot != ACTL__SLOT_HEAD(m))
        bias = m->layers[slot / ACTL__NPROJ].bias[slot % ACTL__NPROJ];
    if (!bias && !(mi->flags & ACTL_MOD_BIAS))
        goto out;
    if (!(o->add = calloc((size_t)o->n_out, sizeof *o->add))) {
        rc = actl__oom();
        goto out;
    }
    if ((mi->flags & ACTL_MOD_BIAS) && (rc = widen(mod->lora_bias, &lb)))
        goto out;
    for (int64_t p = 0; p < o->n_out; p++) {
        /* DoRA scales W x but not b: F ⊙ (W x + b + ...) needs (1 - F) b back */
        double v = bias ? (1.0 - o->f[p]) * bias[p] : 0.0;
        if (lb)
            v += k * lb[p];
        o->add[p] = (float)v;
    }
out:
    free(lb);
    return rc;
}

static int build_road(const actl_input *in, const actl_adapter *a, const actl__module *mod,
                      int64_t out, rt_op *o)
{
    int rc = ACTL_OK;
    double *c = malloc((size_t)out * sizeof *c), *s = malloc((size_t)out * sizeof *s);
    o->kind = OP_ROAD;
    o->group = a->info.group_size;
    o->n_out = out;
    if (!c || !s || !(o->c = malloc((size_t)out * sizeof *o->c)) ||
        !(o->s = malloc((size_t)out * sizeof *o->s))) {
        rc = actl__oom();
        goto done;
    }
    if (actl__road_out(a, mod) != out) {
        rc = actl__err(ACTL_ESHAPE, "'%s': module '%s': RoAd tensors imply %lld outputs, the "
                       "model's has %lld", in->ref, mod->info.name,
                       (long long)actl__road_out(a, mod), (long long)out);
        goto done;
    }
    if ((rc = actl__road_coeffs(a, mod, in->weight, c, s))) {
        rc = actl__err_wrap(rc, "'%s'", in->ref);
        goto done;
    }
    /* road_1 (and any composite of road_1s) gives both outputs of a pair
     * the same c and s: keep one per pair, so that a batch over many
     * adapters reads half the coefficients (they are what a mixed RoAd
     * batch spends its memory traffic on). */
    o->paired = true;
    for (int64_t g0 = 0; g0 < out && o->paired; g0 += o->group)
        for (int64_t j = 0; j < o->group / 2; j++)
            if ((float)c[g0 + j] != (float)c[g0 + j + o->group / 2] ||
                (float)s[g0 + j] != (float)s[g0 + j + o->group / 2]) {
                o->paired = false;
                break;
            }
    int64_t k = 0;
    for (int64_t g0 = 0; g0 < out; g0 += o->group)
        for (int64_t j = 0; j < o->group; j++) {
            if (o->paired && j >= o->group / 2)
                continue;
            o->c[k] = (float)c[g0 + j];
            o->s[k++] = (float)s[g0 + j];
        }
done:
    free(c);
    free(s);
    return rc;
}

static int build_bottleneck(const actl_input *in, const actl_adapter *a,
                            const actl__module *mod, rt_op *o)
{
    int rc = ACTL_OK;
    const actl_module_info *mi = &mod->info;
    switch (mi->placement) {
    case ACTL_PLACE_INPUT: o->kind = OP_BN_IN; break;
    case ACTL_PLACE_OUTPUT: o->kind = OP_BN_OUT; break;
    case ACTL_PLACE_PARALLEL: o->kind = OP_BN_PAR; break;
    default:
        rc = actl__err(ACTL_EUNSUPPORTED, "'%s': module '%s': bottleneck placement %d is not "
                       "one the decoder runs", in->ref, mi->name, (int)mi->placement);
        goto out;
    }
    o->act = a->info.activation;
    /* D [b, n], U [m, b]: mi->scale is the learned adapter_scaling when there is one */
    o->r = mod->down->shape[0];
    o->n_in = mod->down->shape[1];
    o->n_out = mod->up->shape[0];
    if (!(rc = widen(mod->down, &o->a)))
        rc = transposed_scaled(mod->up, mi->scale * in->weight, &o->bt);
out:
    return rc;
}

/* Every tensor of a that no module holds (modules_to_save copies, trained
 * base biases): the decoder does not replace whole base tensors. */
static int refuse_passthrough(const actl_input *in, const actl_adapter *a)
{
    for (size_t t = 0; t < a->n_tensors; t++) {
        bool held = false;
        for (size_t i = 0; i < a->n_modules && !held; i++) {
            const actl__module *md = &a->modules[i];
            const actl_tensor *ts[] = {md->lora_a, md->lora_b, md->lora_bias, md->magnitude,
                                       md->road_theta, md->road_alpha, md->down, md->up,
                                       md->scaling, md->index_a, md->index_b, md->pool_a,
                                       md->pool_b};
            for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++)
                held = held || ts[k] == a->tensors[t];
        }
        if (!held)
            return actl__err(ACTL_EUNSUPPORTED,
                             "'%s': tensor '%s' replaces a whole base tensor (modules_to_save "
                             "or a trained bias), which the decoder does not run; merge the "
                             "adapter into the model instead", in->ref, a->tensors[t]->name);
    }
    return ACTL_OK;
}

static int build_embed(actl__rt *rt, const actl_input *in, const actl__module *mod)
{
    int rc = ACTL_OK;
    const actl_module_info *mi = &mod->info;
    rt_embed *p = realloc(rt->emb, (rt->nemb + 1) * sizeof *p);
    if (!p) {
        rc = actl__oom();
        goto out;
    }
    /* entered before it is filled, so that actl__rt_free releases what is made */
    rt->emb = p;
    rt_embed *e = &rt->emb[rt->nemb++];
    memset(e, 0, sizeof *e);
    /* lora_embedding_A [r, vocab], lora_embedding_B [dim, r] */
    e->r = mod->lora_a->shape[0];
    if ((rc = transposed_scaled(mod->lora_a, 1.0, &e->at)) ||
        (rc = transposed_scaled(mod->lora_b, mi->scale * in->weight, &e->bt)))
        goto out;
    if (!all_finite(e->bt, e->r * rt->dim) || !all_finite(e->at, e->r * rt->vocab))
        rc = actl__err(ACTL_EINVAL, "'%s': module '%s': at weight %g its tensors are not all "
                       "finite in float (an Inf or NaN, or a value beyond the float range)",
                       in->ref, mi->name, in->weight);
out:
    return rc;
}

/* One module of one input. */
static int build_module(actl__rt *rt, const actl_model *m, const actl_input *in,
                        const actl_adapter *a, const actl__module *mod)
{
    int rc = ACTL_OK;
    const actl_module_info *mi = &mod->info;
    int64_t slot = slot_of(m, mi->name);
    bool lora = a->info.kind == ACTL_KIND_LORA;
    rt_op o;
    memset(&o, 0, sizeof o);
    o.half = ACTL_F32;
    if (slot == -1 && lora && (mi->flags & ACTL_MOD_EMBEDDING) && !(mi->flags & ACTL_MOD_DORA)) {
        rc = build_embed(rt, in, mod);
        goto out;
    }
    if (slot < 0 || (mi->flags & ACTL_MOD_EMBEDDING)) {
        rc = actl__err(ACTL_EUNSUPPORTED,
                       "'%s': module '%s'%s is not one the decoder runs (it runs LoRA on the "
                       "embeddings, and every kind on the seven projections and lm_head)",
                       in->ref, mi->name,
                       (mi->flags & ACTL_MOD_DORA) ? " (DoRA on an embedding)" : "");
        goto out;
    }
    rt_slot *sl = &rt->slots[slot];
    const actl_tensor *W = actl__slot_weight(m, slot);
    switch (a->info.kind) {
    case ACTL_KIND_LORA: rc = build_lora(m, in, mod, slot, sl, &o); break;
    case ACTL_KIND_ROAD: rc = build_road(in, a, mod, W->shape[0], &o); break;
    case ACTL_KIND_BOTTLENECK: rc = build_bottleneck(in, a, mod, &o); break;
    default:
        rc = actl__err(ACTL_EUNSUPPORTED, "'%s': a %s adapter does not run in the decoder",
                       in->ref, actl_kind_name(a->info.kind) ? actl_kind_name(a->info.kind)
                                                              : "kind");
    }
    if (!rc && (o.kind == OP_LORA || o.kind == OP_DORA || o.kind >= OP_BN_IN)) {
        /* validate checked these against the base; the decoder's widths must agree */
        int64_t want_in = o.kind == OP_BN_OUT ? W->shape[0] : W->shape[1];
        int64_t want_out = o.kind == OP_BN_IN ? W->shape[1] : W->shape[0];
        if (o.n_in != want_in || o.n_out != want_out)
            rc = actl__err(ACTL_ESHAPE, "'%s': module '%s': the adapter maps %lld to %lld "
                           "features where the model's module needs %lld to %lld", in->ref,
                           mi->name, (long long)o.n_in, (long long)o.n_out,
                           (long long)want_in, (long long)want_out);
    }
    if (!rc && !(all_finite(o.a, o.r * o.n_in) && all_finite(o.bt, o.r * o.n_out) &&
                 all_finite(o.f, o.f ? o.n_out : 0) && all_finite(o.add, o.add ? o.n_out : 0) &&
                 all_finite(o.c, o.c ? (o.paired ? o.n_out / 2 : o.n_out) : 0) &&
                 all_finite(o.s, o.s ? (o.paired ? o.n_out / 2 : o.n_out) : 0)))
        rc = actl__err(ACTL_EINVAL, "'%s': module '%s': at weight %g its tensors are not all "
                       "finite in float (an Inf or NaN, or a value beyond the float range)",
                       in->ref, mi->name, in->weight);
    if (!rc)
        rc = add_op(sl, &o);
out:
    if (rc)
        op_release(&o);
    return rc;
}

/* One input: checks, then its modules. */
static int build_input(actl__rt *rt, const actl_model *m, const actl_input *in, bool force)
{
    int rc = ACTL_OK;
    actl_adapter *mat = NULL;
    const actl_adapter *a = in->adapter;
    const char *ref = in->ref ? in->ref : a ? a->origin : "?";
    actl_input named = *in;
    named.ref = ref;
    if (!a) {
        rc = actl__err(ACTL_EINVAL, "'%s': no adapter", ref);
        goto out;
    }
    if (!isfinite(in->weight)) {
        rc = actl__err(ACTL_EINVAL, "'%s': weight %g is not a finite number", ref, in->weight);
        goto out;
    }
    const char *want = a->info.base_model, *have = m->info.model_id;
    if (want && have && !actl__same_model(want, have) && !force) {
        rc = actl__err(ACTL_EINVAL, "'%s' was trained on '%s', but the model is '%s' "
                       "(--force runs it anyway)", ref, want, have);
        goto out;
    }
    if ((rc = actl__adapter_validate_for(a, actl_model_base(m), m->model_type))) {
        /* validate names a->origin; the caller knows the adapter by ref */
        if (!a->origin || strcmp(a->origin, ref) != 0)
            rc = actl__err_wrap(rc, "'%s'", ref);
        goto out;
    }
    if (a->info.kind == ACTL_KIND_MOS) {
        if ((rc = actl_adapter_materialize(a, &mat))) {
            rc = actl__err_wrap(rc, "'%s'", ref);
            goto out;
        }
        a = mat;
    }
    if ((rc = refuse_passthrough(&named, a)))
        goto out;
    for (size_t i = 0; i < a->n_modules && !rc; i++)
        rc = build_module(rt, m, &named, a, &a->modules[i]);
out:
    actl_adapter_free(mat);
    return rc;
}

int actl__rt_new(const actl_model *m, const actl_input *in, size_t n, bool force,
                 actl__rt **out)
{
    int rc = ACTL_OK;
    actl__rt *rt = NULL;
    if (!out || !m || (n && !in)) {
        rc = actl__err(ACTL_EINVAL, "runtime adapter: NULL argument");
        goto out;
    }
    *out = NULL;
    if (!(rt = calloc(1, sizeof *rt))) {
        rc = actl__oom();
        goto out;
    }
    rt->nslots = m->info.layers * ACTL__NPROJ + 1;
    rt->dim = m->info.dim;
    rt->vocab = m->info.vocab;
    if (!(rt->slots = calloc((size_t)rt->nslots, sizeof *rt->slots))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n && !rc; i++)
        rc = build_input(rt, m, &in[i], force);
    if (rc)
        goto out;
    /* Which input each member sees: the input bottlenecks outside it (after it
     * in the list) have rewritten x on the way in. */
    for (int64_t i = 0; i < rt->nslots; i++) {
        rt_slot *sl = &rt->slots[i];
        int outer = 0;
        for (int k = sl->n - 1; k >= 0; k--) {
            sl->ops[k].stage = outer;
            if (sl->ops[k].kind == OP_BN_IN)
                outer++;
        }
        sl->npre = outer;
        sl->in = actl__slot_weight(m, i)->shape[1];
        for (int k = 0; k < sl->n; k++)
            if (sl->ops[k].kind != OP_BN_IN && sl->ops[k].kind != OP_ROAD &&
                sl->ops[k].kind != OP_BN_OUT && sl->ops[k].stage > 0 &&
                sl->ops[k].stage < outer)
                sl->mid = true;
    }
    *out = rt;
    rt = NULL;
out:
    actl__rt_free(rt);
    return rc;
}

/* ---- running -------------------------------------------------------------- */

bool actl__rt_touches(const actl__rt *rt, int64_t slot)
{
    return rt && slot >= 0 && slot < rt->nslots && rt->slots[slot].n > 0;
}

int64_t actl__rt_work(const actl__rt *rt, int64_t slot)
{
    if (!actl__rt_touches(rt, slot))
        return 0;
    const rt_slot *sl = &rt->slots[slot];
    int64_t w = 0;
    for (int k = 0; k < sl->n; k++) {
        const rt_op *o = &sl->ops[k];
        switch (o->kind) {
        case OP_ROAD: w += 2 * o->n_out; break;
        case OP_DORA: w += o->r * (o->n_in + o->n_out) + 2 * o->n_out; break;
        default: w += o->r * (o->n_in + o->n_out) + (o->add ? o->n_out : 0); break;
        }
    }
    return w;
}

bool actl__rt_has_pre(const actl__rt *rt, int64_t slot)
{
    return rt && slot >= 0 && slot < rt->nslots && rt->slots[slot].npre > 0;
}

/* The few-row kernels below are where a batch of single-row groups spends
 * its adapter time. They use GCC's vector extension (8 floats), built twice,
 * for AVX2 and for the baseline ISA, and picked at load time (the build has
 * no -march); other compilers get the plain loops. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#if defined(__GNUC__)
/* Unaligned, aliasing-safe 8-float vectors; macros rather than helpers, since
 * a function taking or returning one changes ABI between the two builds. */
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));
#define LD8(p) (*(const v8 *)(const void *)(p))
#define ST8(p, v) (*(v8 *)(void *)(p) = (v))
#define HSUM8(v) ((((v)[0] + (v)[4]) + ((v)[1] + (v)[5])) + (((v)[2] + (v)[6]) + ((v)[3] + (v)[7])))

/* t[j] = sum_i a[j, i] x[i] for j < r, a [r, n]: four rows of a at a time
 * against one pass over x, eight lanes of partial sums per row. */
CLONES static void small_dots(const float *restrict x, const float *restrict a, int64_t r,
                              int64_t n, float *restrict t)
{
    int64_t n8 = n - n % 8, j = 0;
    for (; j + 4 <= r; j += 4) {
        const float *a0 = a + j * n, *a1 = a0 + n, *a2 = a1 + n, *a3 = a2 + n;
        v8 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
        for (int64_t i = 0; i < n8; i += 8) {
            v8 xv = LD8(x + i);
            c0 += xv * LD8(a0 + i);
            c1 += xv * LD8(a1 + i);
            c2 += xv * LD8(a2 + i);
            c3 += xv * LD8(a3 + i);
        }
        float s0 = HSUM8(c0), s1 = HSUM8(c1), s2 = HSUM8(c2), s3 = HSUM8(c3);
        for (int64_t i = n8; i < n; i++) {
            s0 += x[i] * a0[i];
            s1 += x[i] * a1[i];
            s2 += x[i] * a2[i];
            s3 += x[i] * a3[i];
        }
        t[j] = s0;
        t[j + 1] = s1;
        t[j + 2] = s2;
        t[j + 3] = s3;
    }
    for (; j < r; j++) {
        const float *aj = a + j * n;
        v8 c = {0};
        for (int64_t i = 0; i < n8; i += 8)
            c += LD8(x + i) * LD8(aj + i);
        float sum = HSUM8(c);
        for (int64_t i = n8; i < n; i++)
            sum += x[i] * aj[i];
        t[j] = sum;
    }
}

/* y[p] += sum_j t[j] bt[j, p] for p < n, bt [r, n]: one pass over y, sixteen
 * outputs at a time. */
CLONES static void small_axpys(float *restrict y, const float *restrict t,
                               const float *restrict bt, int64_t r, int64_t n)
{
    int64_t n16 = n - n % 16;
    for (int64_t p = 0; p < n16; p += 16) {
        v8 y0 = LD8(y + p), y1 = LD8(y + p + 8);
        for (int64_t j = 0; j < r; j++) {
            const float *b = bt + j * n + p;
            v8 tj = {t[j], t[j], t[j], t[j], t[j], t[j], t[j], t[j]};
            y0 += tj * LD8(b);
            y1 += tj * LD8(b + 8);
        }
        ST8(y + p, y0);
        ST8(y + p + 8, y1);
    }
    for (int64_t p = n16; p < n; p++) {
        float acc = y[p];
        for (int64_t j = 0; j < r; j++)
            acc += t[j] * bt[j * n + p];
        y[p] = acc;
    }
}
#else
static void small_dots(const float *restrict x, const float *restrict a, int64_t r, int64_t n,
                       float *restrict t)
{
    for (int64_t j = 0; j < r; j++) {
        float sum = 0;
        for (int64_t i = 0; i < n; i++)
            sum += x[i] * a[j * n + i];
        t[j] = sum;
    }
}

static void small_axpys(float *restrict y, const float *restrict t, const float *restrict bt,
                        int64_t r, int64_t n)
{
    for (int64_t j = 0; j < r; j++)
        for (int64_t p = 0; p < n; p++)
            y[p] += t[j] * bt[j * n + p];
}
#endif

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* 8 lanes of two 16-bit values each; LO / HI widen the low / high ones. */
typedef unsigned int w8 __attribute__((vector_size(32), aligned(2), may_alias));
#define LDW(p) (*(const w8 *)(const void *)(p))
#define BF16_LO(u) ((v8)((u) << 16))
#define BF16_HI(u) ((v8)((u) & 0xffff0000u))
#define F16_8(h) ((v8)((w8)((v8)(((h) & 0x7fffu) << 13) * 0x1p112f) | (((h) & 0x8000u) << 16)))
#define F16_LO(u) F16_8(u)
#define F16_HI(u) F16_8((u) >> 16)

/* small_dots on A in panels (see pack_panels). */
#define HALF_DOTS(name, LO, HI, W)                                                            \
    CLONES static void name(const float *restrict x, const uint16_t *restrict a, int64_t r,  \
                            int64_t n, float *restrict t)                                    \
    {                                                                                         \
        int64_t n16 = n - n % 16, w = n - n16, j = 0;                                         \
        for (; j + 4 <= r; j += 4) {                                                          \
            const uint16_t *pa = a + j * n;                                                   \
            v8 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};                                        \
            for (int64_t i = 0; i < n16; i += 16, pa += 64) {                                 \
                v8 xl = LD8(x + i), xh = LD8(x + i + 8);                                      \
                w8 u0 = LDW(pa), u1 = LDW(pa + 16), u2 = LDW(pa + 32), u3 = LDW(pa + 48);     \
                c0 += xl * LO(u0) + xh * HI(u0);                                              \
                c1 += xl * LO(u1) + xh * HI(u1);                                              \
                c2 += xl * LO(u2) + xh * HI(u2);                                              \
                c3 += xl * LO(u3) + xh * HI(u3);                                              \
            }                                                                                 \
            float s0 = HSUM8(c0), s1 = HSUM8(c1), s2 = HSUM8(c2), s3 = HSUM8(c3);             \
            for (int64_t i = 0; i < w; i++) {                                                 \
                float xi = x[n16 + i];                                                        \
                s0 += xi * W(pa[i]);                                                          \
                s1 += xi * W(pa[w + i]);                                                      \
                s2 += xi * W(pa[2 * w + i]);                                                  \
                s3 += xi * W(pa[3 * w + i]);                                                  \
            }                                                                                 \
            t[j] = s0;                                                                        \
            t[j + 1] = s1;                                                                    \
            t[j + 2] = s2;                                                                    \
            t[j + 3] = s3;                                                                    \
        }                                                                                     \
        for (; j < r; j++) {                                                                  \
            const uint16_t *pa = a + j * n;                                                   \
            v8 c = {0};                                                                       \
            for (int64_t i = 0; i < n16; i += 16, pa += 16) {                                 \
                w8 u = LDW(pa);                                                               \
                c += LD8(x + i) * LO(u) + LD8(x + i + 8) * HI(u);                             \
            }                                                                                 \
            float sum = HSUM8(c);                                                             \
            for (int64_t i = 0; i < w; i++)                                                   \
                sum += x[n16 + i] * W(pa[i]);                                                 \
            t[j] = sum;                                                                       \
        }                                                                                     \
    }

/* small_axpys on Bᵀ as one panel. */
#define HALF_AXPYS(name, LO, HI, W)                                                           \
    CLONES static void name(float *restrict y, const float *restrict t,                       \
                            const uint16_t *restrict bt, int64_t r, int64_t n)                \
    {                                                                                         \
        int64_t n16 = n - n % 16, w = n - n16;                                                \
        const uint16_t *pb = bt;                                                              \
        for (int64_t p = 0; p < n16; p += 16) {                                               \
            v8 y0 = LD8(y + p), y1 = LD8(y + p + 8);                                          \
            for (int64_t j = 0; j < r; j++, pb += 16) {                                       \
                w8 u = LDW(pb);                                                               \
                v8 tj = {t[j], t[j], t[j], t[j], t[j], t[j], t[j], t[j]};                     \
                y0 += tj * LO(u);                                                             \
                y1 += tj * HI(u);                                                             \
            }                                                                                 \
            ST8(y + p, y0);                                                                   \
            ST8(y + p + 8, y1);                                                               \
        }                                                                                     \
        for (int64_t p = 0; p < w; p++) {                                                     \
            float acc = y[n16 + p];                                                           \
            for (int64_t j = 0; j < r; j++)                                                   \
                acc += t[j] * W(pb[j * w + p]);                                               \
            y[n16 + p] = acc;                                                                 \
        }                                                                                     \
    }
#else
#define HALF_DOTS(name, LO, HI, W)                                                            \
    static void name(const float *restrict x, const uint16_t *restrict a, int64_t r,          \
                     int64_t n, float *restrict t)                                            \
    {                                                                                         \
        for (int64_t j = 0; j < r; j++) {                                                     \
            int64_t g = j - j % 4, h = g + 4 <= r ? 4 : 1, q = h == 4 ? j - g : 0;            \
            const uint16_t *pa = a + (h == 4 ? g : j) * n;                                    \
            float sum = 0;                                                                    \
            for (int64_t i = 0; i < n; i++)                                                   \
                sum += x[i] * W(pa[panel_at(h, n, q, i)]);                                    \
            t[j] = sum;                                                                       \
        }                                                                                     \
    }
#define HALF_AXPYS(name, LO, HI, W)                                                           \
    static void name(float *restrict y, const float *restrict t,                              \
                     const uint16_t *restrict bt, int64_t r, int64_t n)                       \
    {                                                                                         \
        for (int64_t j = 0; j < r; j++)                                                       \
            for (int64_t p = 0; p < n; p++)                                                   \
                y[p] += t[j] * W(bt[panel_at(r, n, j, p)]);                                   \
    }
#endif

HALF_DOTS(small_dots_bf16, BF16_LO, BF16_HI, bf16w)
HALF_DOTS(small_dots_f16, F16_LO, F16_HI, f16w)
HALF_AXPYS(small_axpys_bf16, BF16_LO, BF16_HI, bf16w)
HALF_AXPYS(small_axpys_f16, F16_LO, F16_HI, f16w)

static inline void axpy(float *restrict y, float k, const float *restrict b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += k * b[i];
}

static void activate(actl_activation act, float *t, int64_t n)
{
    switch (act) {
    case ACTL_ACT_IDENTITY: break;
    case ACTL_ACT_TANH:
        for (int64_t i = 0; i < n; i++)
            t[i] = tanhf(t[i]);
        break;
    case ACTL_ACT_RELU:
        for (int64_t i = 0; i < n; i++)
            t[i] = t[i] > 0 ? t[i] : 0;
        break;
    case ACTL_ACT_GELU: /* PyTorch's nn.GELU default: the exact erf form */
        for (int64_t i = 0; i < n; i++)
            t[i] = 0.5f * t[i] * (1.0f + erff(t[i] * 0.70710678118654752f));
        break;
    case ACTL_ACT_SILU:
        for (int64_t i = 0; i < n; i++)
            t[i] = t[i] / (1.0f + expf(-t[i]));
        break;
    }
}

/* lowrank for a LoRA with 16-bit factors, t [rows, r] its scratch:
 * y += (k (x · Aᵀ)) · Bᵀ. */
static int lowrank_half(const rt_op *o, const float *x, int64_t rows, float *y, float *t)
{
    int64_t r = o->r, ni = o->n_in, no = o->n_out;
    bool bf = o->half == ACTL_BF16;
    if (rows <= SMALL_ROWS) {
        for (int64_t i = 0; i < rows; i++) {
            float *ti = t + i * r;
            if (bf)
                small_dots_bf16(x + i * ni, o->a16, r, ni, ti);
            else
                small_dots_f16(x + i * ni, o->a16, r, ni, ti);
            for (int64_t j = 0; j < r; j++)
                ti[j] *= o->k;
            if (bf)
                small_axpys_bf16(y + i * no, ti, o->bt16, r, no);
            else
                small_axpys_f16(y + i * no, ti, o->bt16, r, no);
        }
        return ACTL_OK;
    }
    /* enough rows that sgemm pays: widen both factors for this call */
    float *a = malloc((size_t)(r * (ni + no)) * sizeof *a);
    if (!a)
        return actl__oom();
    float *bt = a + r * ni;
    unpack_panels(o->a16, o->half, r, ni, 4, a);
    unpack_panels(o->bt16, o->half, r, no, r, bt);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)r, (int)ni, 1.0f, x,
                (int)ni, a, (int)ni, 0.0f, t, (int)r);
    for (int64_t i = 0; i < rows * r; i++)
        t[i] *= o->k;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)no, (int)r, 1.0f, t,
                (int)r, bt, (int)no, 1.0f, y, (int)no);
    free(a);
    return ACTL_OK;
}

/* y[rows, n_out] += σ(x[rows, n_in] · aᵀ) · bt, σ the identity for LoRA.
 * x may be y (the series-on-output bottleneck reads the output it adds to):
 * a row's t is complete before that row of y changes. */
static int lowrank(const rt_op *o, const float *x, int64_t rows, float *y, bool act)
{
    float stackbuf[STACK_FLOATS];
    int64_t r = o->r, ni = o->n_in, no = o->n_out;
    int rc = ACTL_OK;
    float *t = stackbuf;
    if (rows * r > STACK_FLOATS && !(t = malloc((size_t)(rows * r) * sizeof *t)))
        return actl__oom();
    if (o->half != ACTL_F32) {
        rc = lowrank_half(o, x, rows, y, t);
    } else if (rows <= SMALL_ROWS) {
        for (int64_t i = 0; i < rows; i++) {
            float *ti = t + i * r;
            small_dots(x + i * ni, o->a, r, ni, ti);
            if (act)
                activate(o->act, ti, r);
            small_axpys(y + i * no, ti, o->bt, r, no);
        }
    } else {
        /* t [rows, r] = x [rows, ni] · aᵀ ;  y [rows, no] += t · bt [r, no] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)r, (int)ni, 1.0f,
                    x, (int)ni, o->a, (int)ni, 0.0f, t, (int)r);
        if (act)
            activate(o->act, t, rows * r);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)no, (int)r, 1.0f,
                    t, (int)r, o->bt, (int)no, 1.0f, y, (int)no);
    }
    if (t != stackbuf)
        free(t);
    return rc;
}

/* RoAd on y [rows, out], DESIGN.md 3.2: pairs (p, p + g/2) in each group. */
static void road(const rt_op *o, int64_t rows, float *y)
{
    int64_t out = o->n_out, g = o->group, h = g / 2;
    if (o->paired) {
        for (int64_t i = 0; i < rows; i++)
            for (int64_t g0 = 0; g0 < out; g0 += g) {
                float *restrict yp = y + i * out + g0;
                float *restrict yq = yp + h;
                const float *restrict c = o->c + g0 / 2, *restrict s = o->s + g0 / 2;
                for (int64_t j = 0; j < h; j++) {
                    float a = yp[j], b = yq[j];
                    yp[j] = c[j] * a - s[j] * b;
                    yq[j] = c[j] * b + s[j] * a;
                }
            }
        return;
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t g0 = 0; g0 < out; g0 += g) {
            float *restrict yp = y + i * out + g0;
            float *restrict yq = yp + h;
            const float *restrict cp = o->c + g0, *restrict cq = cp + h;
            const float *restrict sp = o->s + g0, *restrict sq = sp + h;
            for (int64_t j = 0; j < h; j++) {
                float a = yp[j], b = yq[j];
                yp[j] = cp[j] * a - sp[j] * b;
                yq[j] = cq[j] * b + sq[j] * a;
            }
        }
}

int actl__rt_pre(const actl__rt *rt, int64_t slot, const float *x, int64_t rows, float *x0)
{
    const rt_slot *sl = &rt->slots[slot];
    int rc = ACTL_OK;
    if (x0 != x)
        memcpy(x0, x, (size_t)(rows * sl->in) * sizeof *x0);
    for (int k = sl->n - 1; k >= 0 && !rc; k--) {
        const rt_op *o = &sl->ops[k];
        if (o->kind != OP_BN_IN)
            continue;
        /* x_{k-1} = x_k + s w U σ(D x_k), in place */
        rc = lowrank(o, x0, rows, x0, true);
    }
    return rc;
}

int actl__rt_post(const actl__rt *rt, int64_t slot, const float *x, const float *x0,
                  int64_t rows, float *y)
{
    const rt_slot *sl = &rt->slots[slot];
    int rc = ACTL_OK;
    float *mid = NULL; /* inputs after 1 .. npre-1 input bottlenecks [npre-1][rows, in] */
    int64_t in = 0;
    if (sl->mid) {
        in = sl->in;
        size_t per = (size_t)(rows * in);
        if (!(mid = malloc(per * (size_t)(sl->npre - 1) * sizeof *mid)))
            return actl__oom();
        const float *cur = x;
        int st = 0;
        for (int k = sl->n - 1; k >= 0 && !rc && st < sl->npre - 1; k--) {
            const rt_op *o = &sl->ops[k];
            if (o->kind != OP_BN_IN)
                continue;
            float *next = mid + per * (size_t)st++;
            memcpy(next, cur, per * sizeof *next);
            rc = lowrank(o, next, rows, next, true);
            cur = next;
        }
    }
    for (int k = 0; k < sl->n && !rc; k++) {
        const rt_op *o = &sl->ops[k];
        const float *xk = o->stage == 0 ? x
                          : o->stage == sl->npre ? x0
                                                 : mid + (size_t)(rows * in) * (size_t)(o->stage - 1);
        switch (o->kind) {
        case OP_LORA:
            rc = lowrank(o, xk, rows, y, false);
            break;
        case OP_DORA:
            rc = lowrank(o, xk, rows, y, false);
            for (int64_t i = 0; !rc && i < rows; i++) {
                float *yi = y + i * o->n_out;
                for (int64_t p = 0; p < o->n_out; p++)
                    yi[p] *= o->f[p];
            }
            break;
        case OP_ROAD: road(o, rows, y); break;
        case OP_BN_IN: break; /* applied by actl__rt_pre */
        case OP_BN_OUT: rc = lowrank(o, y, rows, y, true); break;
        case OP_BN_PAR: rc = lowrank(o, xk, rows, y, true); break;
        }
        if (!rc && o->add)
            for (int64_t i = 0; i < rows; i++)
                axpy(y + i * o->n_out, 1.0f, o->add, o->n_out);
    }
    free(mid);
    return rc;
}

void actl__rt_embed(const actl__rt *rt, const int32_t *ids, int64_t rows, float *x)
{
    for (size_t e = 0; e < rt->nemb; e++) {
        const rt_embed *em = &rt->emb[e];
        for (int64_t i = 0; i < rows; i++) {
            if (ids[i] < 0 || ids[i] >= rt->vocab)
                continue; /* the decoder checks ids; nothing to add for one it did not */
            /* x[i] += (s w B) A[:, id] = sum_j A[j, id] (s w B)ᵀ[j, :] */
            const float *aj = em->at + (int64_t)ids[i] * em->r;
            for (int64_t j = 0; j < em->r; j++)
                axpy(x + i * rt->dim, aj[j], em->bt + j * rt->dim, rt->dim);
        }
    }
}
