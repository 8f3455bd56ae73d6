/* compose.c: new adapters from old (DESIGN.md 9).
 *
 * LoRA methods (LoRA and materialized MoS inputs; every result has scale 1:
 * use_rslora false, lora_alpha = r, and per module alpha = rank through
 * rank_pattern/alpha_pattern when module ranks differ). Input i has weight
 * w_i and, per module, scale s_i (alpha_m/r_m or alpha_m/sqrt(r_m)); c_i =
 * w_i*s_i, applied once.
 *  - cat: A = rows c_i*A_i stacked, B = the B_i side by side: B A = sum c_i
 *    B_i A_i, rank sum r_i. Exact.
 *  - svd: D = sum c_i B_i A_i, truncated SVD to --rank (default sum r_i;
 *    never above sum r_i, D's rank bound, nor min(out, in)); B = U_k S_k,
 *    A = V_k^T (PEFT's split: the
 *    singular values go to B). Computed in fp64 (LAPACKE dgesdd): the error
 *    reported is sqrt(sum of discarded s^2)/sqrt(sum of all s^2), and fp32
 *    singular values carry an absolute error near 1e-7*s_max, which would
 *    swamp small errors. When sum r_i < min(out, in) the SVD is taken
 *    through thin QRs of the stacked factors (D = Q_B (R_B R_A^T) Q_A^T, SVD
 *    of the small core), O((out+in) R^2) instead of O(out in min(out,in)).
 *  - ties, dare_linear, dare_ties, magnitude_prune: PEFT's *_svd variants,
 *    without its double scale. Task tensors D_i = s_i B_i A_i (full deltas);
 *    pruning and the sign election act on them unweighted, and w_i enters
 *    afterwards, where PEFT's merge_utils puts its weights:
 *      magnitude prune: keep the k = floor(density * numel) entries of
 *        largest |x| (ties broken by row-major position, first wins);
 *      DARE: keep each entry with probability density, divide by density;
 *      sign election ("total"): sign of sum_i of the pruned D_i, >= 0 is +;
 *      disjoint merge: sum_i w_i D_i over the entries whose sign agrees,
 *        divided by the number of agreeing inputs (at least 1);
 *      ties = magnitude prune + election + disjoint merge; dare_ties = DARE
 *      + election + disjoint merge; dare_linear = DARE, sum w_i D_i;
 *      magnitude_prune = magnitude prune, sum w_i D_i.
 *    density >= 1 prunes nothing (as PEFT). Then the rank-k truncation of
 *    the pruned and merged delta D (k = --rank, default sum r_i): the full
 *    fp64 SVD (dgesdd) when min(out, in) <= actl__compose_exact_dim (512),
 *    else a randomized range finder with subspace iteration (svd_sketch;
 *    about 1 s instead of 20-60 s at 4096 x 4096, its error measured within
 *    0.03% of the optimum on pruned deltas). Either way the error reported
 *    is that of the factors returned, ||D - B A|| / ||D|| formed and summed
 *    in fp64, not a claim of optimality. The sketch's Gaussian matrix comes
 *    from a fixed stream per module (sketch_rng_init: the DARE seed, else 0,
 *    and the module name), so the same call gives the same bytes. Pruning
 *    runs an input per thread and merging splits the entries, on two
 *    threads at most; the products use OpenBLAS's threads.
 *    The DARE stream: for input i (its 0-based position in the list) and
 *    module m, splitmix64 started at seed ^ xxh64(m, seed 0) ^ (i+1) *
 *    0xD1B54A32D192ED03 fills xoshiro256**'s state; D_i's entries are visited
 *    in row-major order, each drawing one word x, kept when (x >> 11) * 2^-53
 *    < density. These hold every input's delta of one module at once:
 *    inputs * out * in doubles.
 *  - linear: PEFT's factor-wise mix (add_weighted_adapter, "linear"): equal
 *    ranks per module; A = sum sign(c_i) sqrt|c_i| A_i, B = sum sqrt|c_i|
 *    B_i. B A has cross terms B_i A_j: inexact (report_exact 0); the report
 *    gives its true error against sum c_i B_i A_i.
 *  - lora_B.bias (PEFT adds s*bias to the output): the result's bias is
 *    sum w_i s_i bias_i, exact for every method (biases are not pruned);
 *    the result then has lora_bias true and a zero bias on modules no input
 *    gave one.
 *  - Embedding LoRA modules are modules like any other (B [dim, r] A [r,
 *    vocab] in the same orientation for every input); a module that is an
 *    embedding in one input and linear in another is refused.
 *  - fan_in_fan_out only says how the base stores W (A and B are the same
 *    either way), so it is copied; inputs that disagree are refused.
 *  - DoRA inputs are refused (the row norms depend on the base weights):
 *    merge them into the base instead. Bottleneck and RoAd inputs are refused
 *    (use a stack).
 * RoAd methods (parameters are weighted as merge weights them: theta*w,
 * alpha^w, with w = 1 the adapter itself; see road.c):
 *  - sequential: in list order, first innermost (DESIGN.md 3.2). All road_1:
 *    alpha = prod alpha_i^w_i, theta = sum w_i theta_i per parameter (exact);
 *    otherwise per-pair products of the coefficients, emitted as road_1 when
 *    every pair's two coefficients are equal, else road_2 (alpha = hypot,
 *    theta = atan2).
 *  - union: adapters on disjoint modules; a module in two inputs is refused
 *    (pairs are per module here, so overlapping pairs means a shared module).
 *    The result takes the most general variant among the inputs (road_1 <
 *    road_2 < road_4), each module's parameters copied into it unchanged:
 *    road_1 -> road_2 repeats a pair's parameter on both outputs, road_2 ->
 *    road_4 repeats an output's parameter in its cosine and sine slots. Exact
 *    bit for bit, where converting road_4 to road_2 would round.
 *  - one group_size for all inputs (the config holds one).
 * For every method: the inputs' base models (base_model_name_or_path) must
 * agree where given; modules are the union of the inputs'; tensors passed
 * through (modules_to_save, trained base biases) are copied as they are, so an
 * input carrying one must have weight 1 (merge blends them as (1-w) W + w S,
 * which needs the base), and two inputs holding the same key with different
 * bytes are refused; a result value that is not finite in fp32 (weights too
 * large) is refused; results are F32.
 * Lineage (actl_compose_lineage): "options" holds only what the method uses:
 * nothing for cat, linear, sequential, union; "rank" for svd; "rank" and
 * "density" for ties and magnitude_prune; "rank", "density" and "seed" for
 * dare_*. "rank" is --rank when given; otherwise the largest rank the result
 * has (from the report; absent without one), with "rank_default": true.
 * rank_pattern/alpha_pattern keys: see pattern_key.
 */
#include "internal.h"

#include <cblas.h>
#include <lapacke.h>

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- methods ------------------------------------------------------------- */

static const char *const method_names[] = {
    NULL, "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune", "linear",
    "sequential", "union", "stack",
};
#define N_METHODS (sizeof method_names / sizeof method_names[0])

const char *actl_compose_method_name(actl_compose_method m)
{
    return (int)m >= 1 && (size_t)m < N_METHODS ? method_names[m] : NULL;
}

int actl_compose_method_parse(const char *name, actl_compose_method *out)
{
    if (!name || !out)
        return actl__err(ACTL_EINVAL, "compose method: NULL argument");
    for (size_t i = 1; i < N_METHODS; i++)
        if (strcmp(name, method_names[i]) == 0) {
            *out = (actl_compose_method)i;
            return ACTL_OK;
        }
    char q[ACTL__QUOTE_CAP];
    return actl__err(ACTL_EINVAL,
                     "unknown compose method '%s' (cat, svd, ties, dare_linear, dare_ties, "
                     "magnitude_prune, linear, sequential, union, stack)",
                     actl__quote(name, q, sizeof q));
}

actl_compose_opts actl_compose_default_opts(void)
{
    actl_compose_opts o;
    memset(&o, 0, sizeof o);
    o.method = ACTL_COMPOSE_CAT;
    return o;
}

static bool is_lora_method(actl_compose_method m)
{
    return m >= ACTL_COMPOSE_CAT && m <= ACTL_COMPOSE_LINEAR;
}

/* The methods whose result is a truncated SVD (an error to report). */
static bool uses_svd(actl_compose_method m)
{
    return m >= ACTL_COMPOSE_SVD && m <= ACTL_COMPOSE_MAGNITUDE_PRUNE;
}

static bool uses_density(actl_compose_method m)
{
    return m >= ACTL_COMPOSE_TIES && m <= ACTL_COMPOSE_MAGNITUDE_PRUNE;
}

static bool uses_seed(actl_compose_method m)
{
    return m == ACTL_COMPOSE_DARE_LINEAR || m == ACTL_COMPOSE_DARE_TIES;
}

/* ---- report -------------------------------------------------------------- */

struct actl_compose_report {
    actl_compose_method method;
    size_t n, cap;
    char **names;   /* module names, in the result's (sorted) order */
    double *rel;    /* sqrt(disc2 / norm2), 0 when norm2 is 0 */
    double *disc2;  /* squared Frobenius norm of what the result misses */
    double *norm2;  /* squared Frobenius norm of what it should be */
    int exact;
    uint64_t seed;  /* the DARE stream's seed, when has_seed */
    int has_seed;
    int max_rank;   /* LoRA methods: the largest rank of a result module */
};

static actl_compose_report *report_new(actl_compose_method m)
{
    actl_compose_report *r = calloc(1, sizeof *r);
    if (r)
        r->method = m;
    return r;
}

void actl_compose_report_free(actl_compose_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->names[i]);
    free(r->names);
    free(r->rel);
    free(r->disc2);
    free(r->norm2);
    free(r);
}

static int report_add(actl_compose_report *r, const char *name, double disc2, double norm2)
{
    /* an error of Inf/Inf is no error at all; the factors may fit fp32 while
     * the squared norms of fp64 do not */
    if (!isfinite(disc2) || !isfinite(norm2))
        return actl__err(ACTL_EINVAL,
                         "compose %s: module '%s': its error cannot be measured (the squared "
                         "norm overflows): the weights are too large",
                         actl_compose_method_name(r->method), name);
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        char **names = realloc(r->names, cap * sizeof *names);
        if (!names)
            return actl__oom();
        r->names = names;
        double *v[3] = {r->rel, r->disc2, r->norm2};
        for (int k = 0; k < 3; k++) {
            double *p = realloc(v[k], cap * sizeof *p);
            if (!p)
                return actl__oom();
            v[k] = p;
            if (k == 0)
                r->rel = p;
            else if (k == 1)
                r->disc2 = p;
            else
                r->norm2 = p;
        }
        r->cap = cap;
    }
    if (!(r->names[r->n] = strdup(name)))
        return actl__oom();
    r->disc2[r->n] = disc2;
    r->norm2[r->n] = norm2;
    r->rel[r->n] = norm2 > 0 ? sqrt(disc2 / norm2) : 0.0;
    r->n++;
    return ACTL_OK;
}

size_t actl_compose_report_count(const actl_compose_report *r)
{
    return r ? r->n : 0;
}

const char *actl_compose_report_module(const actl_compose_report *r, size_t i, double *rel_error)
{
    if (!r || i >= r->n)
        return NULL;
    if (rel_error)
        *rel_error = r->rel[i];
    return r->names[i];
}

double actl_compose_report_overall(const actl_compose_report *r)
{
    double d = 0, t = 0;
    for (size_t i = 0; r && i < r->n; i++) {
        d += r->disc2[i];
        t += r->norm2[i];
    }
    return t > 0 ? sqrt(d / t) : 0.0;
}

int actl_compose_report_exact(const actl_compose_report *r)
{
    return r ? r->exact : 0;
}

/* ---- the job --------------------------------------------------------------- */

typedef struct input {
    const actl_adapter *a; /* the input's adapter, or its materialization (owned) */
    actl_adapter *owned;
    double w;
    const char *ref;
} input;

/* One input's share of a module. */
typedef struct part {
    size_t input;
    const actl__module *m;
} part;

typedef struct job {
    actl_compose_method method;
    int rank;        /* requested; 0: per module, the sum of its input ranks */
    double density;  /* resolved: (0, 1] */
    uint64_t seed;
    input *in;
    size_t n;
    const char *base;  /* the inputs' common base model, or NULL */
    /* modules: the union of the inputs' names, sorted */
    const char **names;
    size_t nmod;
    int *ranks;        /* LoRA: each output module's rank */
    bool bias;         /* LoRA: some input has lora_B.bias */
    bool fan_in_fan_out;
    int variant;       /* RoAd: the result's variant */
    int group;         /* RoAd: the common group size */
    /* the result's tensors */
    actl_tensor **out;
    size_t nout, capout;
    actl_compose_report *rep;
} job;

static void job_release(job *j)
{
    for (size_t i = 0; i < j->n; i++)
        actl_adapter_free(j->in[i].owned);
    free(j->in);
    free(j->names);
    free(j->ranks);
    for (size_t i = 0; i < j->nout; i++)
        actl_tensor_free(j->out[i]);
    free(j->out);
    actl_compose_report_free(j->rep);
}

/* calloc of n doubles, NULL on overflow or when out of memory. */
static double *dalloc(size_t n)
{
    if (n > SIZE_MAX / sizeof(double))
        return NULL;
    return calloc(n ? n : 1, sizeof(double));
}

/* a * b as a size_t, or 0 when it does not fit (sizes here are never 0). */
static size_t mul_size(int64_t a, int64_t b)
{
    if (a <= 0 || b <= 0 || (uint64_t)a > SIZE_MAX / (uint64_t)b)
        return 0;
    return (size_t)a * (size_t)b;
}

/* A tensor's values as doubles, refusing NaN and Inf: they would poison the
 * SVD and every entry they touch. */
static int load_f64(const actl_tensor *t, const char *ref, double *dst)
{
    for (int64_t i = 0; i < t->numel; i++) {
        double v = actl__tensor_get_f64(t, (size_t)i);
        if (!isfinite(v))
            return actl__err(ACTL_EINVAL, "'%s': tensor '%s' holds %s at element %lld", ref,
                             t->name, isnan(v) ? "NaN" : "an infinity", (long long)i);
        dst[i] = v;
    }
    return ACTL_OK;
}

/* Appends an F32 tensor "<prefix><module><suffix>" holding src (rounded once). */
static int push_tensor(job *j, const char *module, const char *suffix, int ndim,
                       const int64_t *shape, const double *src)
{
    int rc = ACTL_OK;
    actl_tensor *t = NULL;
    char *name = actl__strdup_printf(ACTL_PEFT_PREFIX "%s%s", module, suffix);
    if (!name)
        return actl__oom();
    if (j->nout == j->capout) {
        size_t cap = j->capout ? 2 * j->capout : 32;
        actl_tensor **p = realloc(j->out, cap * sizeof *p);
        if (!p) {
            rc = actl__oom();
            goto out;
        }
        j->out = p;
        j->capout = cap;
    }
    if ((rc = actl_tensor_new(name, ACTL_F32, ndim, shape, NULL, &t)))
        goto out;
    float *f = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        f[i] = (float)src[i];
        /* huge finite weights overflow fp64 sums or the fp32 result: a result
         * of infinities is no adapter, whatever the method */
        if (!isfinite(f[i])) {
            rc = actl__err(ACTL_EINVAL,
                           "compose %s: module '%s': tensor '%s' would hold %s at element %lld: "
                           "the weights are too large", method_names[j->method], module, name,
                           isnan(src[i]) ? "NaN" : "a value beyond the float32 range",
                           (long long)i);
            actl_tensor_free(t);
            goto out;
        }
    }
    j->out[j->nout++] = t;
out:
    free(name);
    return rc;
}

/* ---- dense linear algebra --------------------------------------------------- */

/* D [m, n] += c * B [m, r] A [r, n] */
static void gemm_acc(double *D, const double *B, const double *A, int64_t m, int64_t r,
                     int64_t n, double c)
{
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, c, B, (int)r,
                A, (int)n, 1.0, D, (int)n);
}

/* D [m, n] = c * B [m, r] A [r, n], D never read. Into fresh malloc'd
 * memory this took 0.09 s for two 4096 x 4096 deltas of rank 16, against
 * 0.64 s for gemm_acc into calloc'd zeros: reading an untouched page maps
 * the shared zero page, and the write after it faults again (copy on write,
 * with TLB shootdowns across OpenBLAS's threads). */
static void gemm_set(double *D, const double *B, const double *A, int64_t m, int64_t r,
                     int64_t n, double c)
{
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, c, B, (int)r,
                A, (int)n, 0.0, D, (int)n);
}

/* Truncated SVD of a dense D [m, n] (destroyed) to k <= min(m, n):
 * Bk [m, k] = U_k S_k, Ak [k, n] = V_k^T; disc2 = sum of the discarded
 * squared singular values, norm2 = sum of all. */
static int svd_dense(double *D, int64_t m, int64_t n, int64_t k, const char *what, double *Bk,
                     double *Ak, double *disc2, double *norm2)
{
    int rc = ACTL_OK;
    int64_t mn = m < n ? m : n;
    double *S = dalloc((size_t)mn), *U = dalloc(mul_size(m, mn)), *VT = dalloc(mul_size(mn, n));
    if (!S || !U || !VT) {
        rc = actl__oom();
        goto out;
    }
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, D,
                                     (lapack_int)n, S, U, (lapack_int)mn, VT, (lapack_int)n);
    if (info != 0) {
        rc = actl__err(info < 0 ? ACTL_ENOMEM : ACTL_EINVAL,
                       "%s: the SVD did not converge (LAPACK dgesdd info %d)", what, (int)info);
        goto out;
    }
    *disc2 = *norm2 = 0;
    for (int64_t i = 0; i < mn; i++) {
        *norm2 += S[i] * S[i];
        if (i >= k)
            *disc2 += S[i] * S[i];
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < k; c++)
            Bk[r * k + c] = U[r * mn + c] * S[c];
    memcpy(Ak, VT, (size_t)k * (size_t)n * sizeof *Ak);
out:
    free(S);
    free(U);
    free(VT);
    return rc;
}

/* Thin QR of X [rows, R] (rows > R), in place: X becomes Q [rows, R] and Rt
 * [R, R] receives the upper triangle. */
static int thin_qr(double *X, int64_t rows, int64_t R, double *Rt, const char *what)
{
    int rc = ACTL_OK;
    double *tau = dalloc((size_t)R);
    if (!tau)
        return actl__oom();
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)rows, (lapack_int)R, X,
                                     (lapack_int)R, tau);
    if (info == 0) {
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < R; c++)
                Rt[r * R + c] = c >= r ? X[r * R + c] : 0.0;
        info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)rows, (lapack_int)R, (lapack_int)R,
                              X, (lapack_int)R, tau);
    }
    if (info != 0)
        rc = actl__err(info < 0 ? ACTL_ENOMEM : ACTL_EINVAL,
                       "%s: the QR factorization failed (LAPACK info %d)", what, (int)info);
    free(tau);
    return rc;
}

/* Truncated SVD of D = Bc [m, R] Ac [R, n] (both destroyed) to k <= min(R, m,
 * n), outputs as svd_dense's. With R < min(m, n): Bc = Q_B R_B, Ac^T = Q_A R_A, so
 * D = Q_B (R_B R_A^T) Q_A^T and the SVD of the R x R core M = U_m S V_m^T
 * gives U = Q_B U_m, V^T = V_m^T Q_A^T. */
static int svd_factors(double *Bc, double *Ac, int64_t m, int64_t n, int64_t R, int64_t k,
                       const char *what, double *Bk, double *Ak, double *disc2, double *norm2)
{
    int rc = ACTL_OK;
    double *D = NULL, *At = NULL, *RB = NULL, *RA = NULL, *M = NULL, *Um = NULL, *VmT = NULL,
           *S = NULL;
    if (R >= (m < n ? m : n)) {
        if (!(D = dalloc(mul_size(m, n)))) {
            rc = actl__oom();
            goto out;
        }
        gemm_acc(D, Bc, Ac, m, R, n, 1.0);
        rc = svd_dense(D, m, n, k, what, Bk, Ak, disc2, norm2);
        goto out;
    }
    if (!(At = dalloc(mul_size(n, R))) || !(RB = dalloc(mul_size(R, R))) ||
        !(RA = dalloc(mul_size(R, R))) || !(M = dalloc(mul_size(R, R))) ||
        !(Um = dalloc(mul_size(R, R))) || !(VmT = dalloc(mul_size(R, R))) ||
        !(S = dalloc((size_t)R))) {
        rc = actl__oom();
        goto out;
    }
    for (int64_t r = 0; r < R; r++) /* At [n, R] = Ac^T */
        for (int64_t c = 0; c < n; c++)
            At[c * R + r] = Ac[r * n + c];
    if ((rc = thin_qr(Bc, m, R, RB, what)) || (rc = thin_qr(At, n, R, RA, what)))
        goto out;
    /* M [R, R] = R_B R_A^T */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)R, (int)R, 1.0, RB,
                (int)R, RA, (int)R, 0.0, M, (int)R);
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)R, (lapack_int)R, M,
                                     (lapack_int)R, S, Um, (lapack_int)R, VmT, (lapack_int)R);
    if (info != 0) {
        rc = actl__err(info < 0 ? ACTL_ENOMEM : ACTL_EINVAL,
                       "%s: the SVD did not converge (LAPACK dgesdd info %d)", what, (int)info);
        goto out;
    }
    *disc2 = *norm2 = 0;
    for (int64_t i = 0; i < R; i++) {
        *norm2 += S[i] * S[i];
        if (i >= k)
            *disc2 += S[i] * S[i];
    }
    /* Bk [m, k] = Q_B [m, R] U_m[:, :k], then columns times S */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)k, (int)R, 1.0, Bc,
                (int)R, Um, (int)R, 0.0, Bk, (int)k);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < k; c++)
            Bk[r * k + c] *= S[c];
    /* Ak [k, n] = V_m^T[:k, :] [k, R] Q_A^T, Q_A = At [n, R] */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)k, (int)n, (int)R, 1.0, VmT,
                (int)R, At, (int)R, 0.0, Ak, (int)n);
out:
    free(D);
    free(At);
    free(RB);
    free(RA);
    free(M);
    free(Um);
    free(VmT);
    free(S);
    return rc;
}

/* ---- pruning (TIES, DARE, magnitude) --------------------------------------- */

static void dswap(double *a, double *b)
{
    double t = *a;
    *a = *b;
    *b = t;
}

static double median3(double x, double y, double z)
{
    if (x < y)
        return y < z ? y : (x < z ? z : x);
    return x < z ? x : (y < z ? z : y);
}

/* The k-th largest value of a[0..n) (1 <= k <= n), reordering a: quickselect
 * with a three-way partition, so runs of equal values (zeros) end it fast. */
static double kth_largest(double *a, size_t n, size_t k)
{
    size_t lo = 0, hi = n, want = k - 1;
    while (hi - lo > 1) {
        double piv = median3(a[lo], a[lo + (hi - lo) / 2], a[hi - 1]);
        /* [lo, lt) > piv, [lt, gt) == piv, [gt, hi) < piv */
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            if (a[i] > piv)
                dswap(&a[lt++], &a[i++]);
            else if (a[i] < piv)
                dswap(&a[i], &a[--gt]);
            else
                i++;
        }
        if (want < lt)
            hi = lt;
        else if (want >= gt)
            lo = gt;
        else
            return piv;
    }
    return a[lo];
}

/* Keeps the floor(density * n) entries of x of largest magnitude, zeroing the
 * rest; among equal magnitudes at the threshold the first in x wins.
 * scratch holds n doubles. */
static void magnitude_prune(double *x, size_t n, double density, double *scratch)
{
    if (density >= 1)
        return;
    size_t k = (size_t)(density * (double)n); /* PEFT: int(density * numel) */
    if (k == 0) {
        memset(x, 0, n * sizeof *x);
        return;
    }
    for (size_t i = 0; i < n; i++)
        scratch[i] = fabs(x[i]);
    double thr = kth_largest(scratch, n, k);
    size_t above = 0;
    for (size_t i = 0; i < n; i++)
        above += fabs(x[i]) > thr;
    size_t at = k - above; /* entries equal to thr still to keep */
    for (size_t i = 0; i < n; i++) {
        double a = fabs(x[i]);
        if (a > thr)
            continue;
        if (a == thr && at > 0)
            at--;
        else
            x[i] = 0;
    }
}

/* splitmix64 and xoshiro256** (Vigna), the DARE stream (see the top). */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static void rng_init(rng *r, uint64_t seed, const char *module, size_t input)
{
    uint64_t x = seed ^ actl__xxh64(module, strlen(module), 0) ^
                 ((uint64_t)(input + 1) * 0xD1B54A32D192ED03ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

/* DARE's drop and rescale. */
static void dare_prune(double *x, size_t n, double density, rng *r)
{
    for (size_t i = 0; i < n; i++) {
        double u = (double)(rng_next(r) >> 11) * 0x1.0p-53;
        x[i] = u < density ? x[i] / density : 0.0;
    }
}

/* The sign election and disjoint merge over np pruned deltas T[i] with
 * weights w[i], into D, for the entries [lo, hi). */
static void ties_merge(double *const *T, const double *w, size_t np, size_t lo, size_t hi,
                       double *D)
{
    for (size_t e = lo; e < hi; e++) {
        double sum = 0;
        for (size_t i = 0; i < np; i++)
            sum += T[i][e];
        double sign = sum >= 0 ? 1.0 : -1.0;
        double acc = 0;
        size_t agree = 0;
        for (size_t i = 0; i < np; i++) {
            double v = T[i][e];
            if ((v > 0 && sign > 0) || (v < 0 && sign < 0)) {
                acc += w[i] * v;
                agree++;
            }
        }
        D[e] = acc / (double)(agree ? agree : 1);
    }
}

/* D = sum_i w[i] T[i] over the entries [lo, hi). */
static void linear_merge(double *const *T, const double *w, size_t np, size_t lo, size_t hi,
                         double *D)
{
    for (size_t e = lo; e < hi; e++) {
        double acc = 0;
        for (size_t i = 0; i < np; i++)
            acc += w[i] * T[i][e];
        D[e] = acc;
    }
}

/* Pruning and merging one module on both cores. Each input is pruned whole
 * by one worker (the DARE stream and the magnitude ranking run over all of
 * an input's entries in order), the merge is split by entry ranges, so the
 * result does not depend on how many workers ran. Two workers at most: the
 * magnitude selection needs a copy of the input, and the module already
 * holds two buffers of that size that are free while it prunes (D, which
 * the merge fills afterwards, and scratch). */
#define PRUNE_WORKERS 2

typedef struct prune_work {
    const job *j;
    const part *ps;
    size_t np, ne;
    const char *module;
    double *const *T;
    const double *w;
    double *D;
    double *scratch[PRUNE_WORKERS];
} prune_work;

typedef void (*work_fn)(const prune_work *x, int w, int nw);

/* Worker w of nw prunes the inputs w, w + nw, ... */
static void prune_inputs(const prune_work *x, int w, int nw)
{
    const job *j = x->j;
    for (size_t p = (size_t)w; p < x->np; p += (size_t)nw) {
        if (j->method == ACTL_COMPOSE_TIES || j->method == ACTL_COMPOSE_MAGNITUDE_PRUNE) {
            magnitude_prune(x->T[p], x->ne, j->density, x->scratch[w]);
        } else {
            rng r;
            rng_init(&r, j->seed, x->module, x->ps[p].input);
            dare_prune(x->T[p], x->ne, j->density, &r);
        }
    }
}

/* Worker w of nw merges its share of the entries into D. */
static void merge_inputs(const prune_work *x, int w, int nw)
{
    size_t lo = x->ne / (size_t)nw * (size_t)w;
    size_t hi = w == nw - 1 ? x->ne : x->ne / (size_t)nw * (size_t)(w + 1);
    if (x->j->method == ACTL_COMPOSE_TIES || x->j->method == ACTL_COMPOSE_DARE_TIES)
        ties_merge(x->T, x->w, x->np, lo, hi, x->D);
    else
        linear_merge(x->T, x->w, x->np, lo, hi, x->D);
}

typedef struct worker {
    pthread_t thread;
    work_fn fn;
    const prune_work *x;
    int w, nw;
} worker;

static void *worker_main(void *arg)
{
    const worker *k = arg;
    k->fn(k->x, k->w, k->nw);
    return NULL;
}

/* fn(x, w, nw) for every w < nw: worker 0 on the calling thread, the others
 * on threads of their own; one whose thread cannot start runs on the calling
 * thread afterwards (the split, and so the result, is the same). */
static void run_workers(work_fn fn, const prune_work *x, int nw)
{
    worker k[PRUNE_WORKERS];
    bool started[PRUNE_WORKERS] = {false};
    for (int w = 1; w < nw; w++) {
        k[w].fn = fn;
        k[w].x = x;
        k[w].w = w;
        k[w].nw = nw;
        started[w] = pthread_create(&k[w].thread, NULL, worker_main, &k[w]) == 0;
    }
    fn(x, 0, nw);
    for (int w = 1; w < nw; w++) {
        if (started[w])
            pthread_join(k[w].thread, NULL);
        else
            fn(x, w, nw);
    }
}

/* Entries below which a second thread costs more than it saves. */
#define PARALLEL_MIN_ENTRIES (1u << 16)

/* Prunes the task tensors T[0..np) [ne] in place and merges them into D
 * [ne] (see the top); scratch [ne] is free memory. */
static void prune_module(const job *j, const part *ps, size_t np, const char *module,
                         double *const *T, const double *w, size_t ne, double *D,
                         double *scratch)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int nw = cpus >= PRUNE_WORKERS && ne >= PARALLEL_MIN_ENTRIES ? PRUNE_WORKERS : 1;
    prune_work x = {j, ps, np, ne, module, T, w, D, {scratch, D}};
    run_workers(prune_inputs, &x, (size_t)nw < np ? nw : (int)np);
    run_workers(merge_inputs, &x, nw);
}

/* ---- truncation of a full delta (the pruned methods) ------------------------ */

int64_t actl__compose_exact_dim = 512;

/* The sketch: l = max(k, R) + SKETCH_OVERSAMPLE columns, R the sum of the
 * input ranks, and SKETCH_POWER subspace iterations. A pruned delta is the
 * rank-R sum of the inputs' deltas (scaled) plus a noise-like remainder with
 * a flat spectrum; a sketch narrower than R mixes the kept directions with
 * the other signal ones and converges slowly (with l = k + 10 < R the error
 * came out 0.2-1.1% above the optimum at q = 2-4 on 4096 x 4096, two rank-16
 * inputs, k = 16). Spanning all R of them, the achieved/optimal error ratio
 * measured on ties, dare_*, magnitude_prune (two or three inputs, 600 x 700
 * to 4096 x 4096, density 0.3-0.9, flat or decaying input spectra): q = 1
 * <= 1.0045, q = 2 <= 1.001, q = 3 <= 1.00026, q = 4 <= 1.00007 (the worst
 * case each time dare on 1024 x 2816, R = 128, k = 32, density 0.3; at
 * 4096 x 4096, R = 32, k = 16, q = 3 gives below 1.0000001). An iteration
 * costs two fp32 passes over D, ~35 ms at 4096 x 4096, R = 32. */
#define SKETCH_OVERSAMPLE 10
#define SKETCH_POWER 3

/* Sum of squares of x [rows, row] in fp64, a partial sum per row so that
 * each stays near the size of its terms. */
static double sum_squares(const double *x, int64_t rows, int64_t row)
{
    double total = 0;
    for (int64_t r = 0; r < rows; r++) {
        const double *p = x + r * row;
        double acc = 0;
        for (int64_t c = 0; c < row; c++)
            acc += p[c] * p[c];
        total += acc;
    }
    return total;
}

/* Standard normal deviates into x[0..n) (Box-Muller on 53-bit uniforms). */
static void gaussian_fill(double *x, size_t n, rng *r)
{
    for (size_t i = 0; i < n; i += 2) {
        double u1 = (double)((rng_next(r) >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
        double u2 = (double)(rng_next(r) >> 11) * 0x1.0p-53;
        double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        x[i] = rad * cos(th);
        if (i + 1 < n)
            x[i + 1] = rad * sin(th);
    }
}

/* fp32 <-> fp64 copies of n values. */
static void widen(const float *f, double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = f[i];
}

static void narrow(const double *x, float *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        f[i] = (float)x[i];
}

/* Rank-k truncation of D [m, n] (read only) by a randomized range finder with
 * subspace iteration (Halko, Martinsson and Tropp 2011, algorithms 4.4 and
 * 5.1), k < l < min(m, n) columns:
 *   Y = D Omega, Omega [n, l] Gaussian from r; Q = qr(Y);
 *   q times: Q~ = qr(D^T Q), Q = qr(D Q~)   (re-orthonormalized each half step,
 *            so that the small singular directions are not lost to round-off);
 *   C = Q^T D [l, n] = U_c S V^T (dgesdd);  D_k = (Q U_c[:, :k]) S_k V_k^T.
 * Bk [m, k] = Q U_c[:, :k] S_k, Ak [k, n] = V_k^T.
 * The power iterations stream D through sgemm from an fp32 copy Df [m, n]
 * (in the caller's scratch): half the bytes of fp64, 2.1x faster per pass
 * at 4096 x 4096 (measured), and they only steer the subspace. The last
 * Q = qr(D Z), C = Q^T D and everything after are fp64 on the fp64 D: D_k
 * is the projection of D onto a subspace of range(D), whatever round-off
 * chose it, a D of rank <= l comes back whole, and the error of D_k is
 * measured, not assumed (truncate_delta). */
static int svd_sketch(const double *D, float *Df, int64_t m, int64_t n, int64_t k, int64_t l,
                      rng *r, const char *what, double *Bk, double *Ak)
{
    int rc = ACTL_OK;
    size_t nl = mul_size(n, l), ml = mul_size(m, l);
    double *Z = dalloc(nl), *Q = dalloc(ml), *C = dalloc(mul_size(l, n));
    double *Rt = dalloc(mul_size(l, l)), *Uc = dalloc(mul_size(l, l)), *S = dalloc((size_t)l);
    float *Zf = malloc(nl * sizeof *Zf), *Qf = malloc(ml * sizeof *Qf);
    if (!Z || !Q || !C || !Rt || !Uc || !S || !Zf || !Qf) {
        rc = actl__oom();
        goto out;
    }
    narrow(D, Df, (size_t)m * (size_t)n);
    gaussian_fill(Z, nl, r);
    narrow(Z, Zf, nl);
    for (int it = 0;; it++) {
        /* Q [m, l] = D [m, n] Z [n, l], orthonormalized; the last one in fp64 */
        if (it < SKETCH_POWER) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f,
                        Df, (int)n, Zf, (int)l, 0.0f, Qf, (int)l);
            widen(Qf, Q, ml);
        } else {
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0,
                        D, (int)n, Z, (int)l, 0.0, Q, (int)l);
        }
        if ((rc = thin_qr(Q, m, l, Rt, what)))
            goto out;
        if (it == SKETCH_POWER)
            break;
        /* Z [n, l] = D^T Q, orthonormalized */
        narrow(Q, Qf, ml);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0f, Df,
                    (int)n, Qf, (int)l, 0.0f, Zf, (int)l);
        widen(Zf, Z, nl);
        if ((rc = thin_qr(Z, n, l, Rt, what)))
            goto out;
        narrow(Z, Zf, nl);
    }
    /* C [l, n] = Q^T D */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l, (int)n, (int)m, 1.0, Q, (int)l,
                D, (int)n, 0.0, C, (int)n);
    /* C = U_c S V^T: U_c [l, l], V^T [l, n] into Z's storage (n >= l) */
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)l, (lapack_int)n, C,
                                     (lapack_int)n, S, Uc, (lapack_int)l, Z, (lapack_int)n);
    if (info != 0) {
        rc = actl__err(info < 0 ? ACTL_ENOMEM : ACTL_EINVAL,
                       "%s: the SVD did not converge (LAPACK dgesdd info %d)", what, (int)info);
        goto out;
    }
    /* Bk [m, k] = Q [m, l] U_c[:, :k], then columns times S */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)k, (int)l, 1.0, Q,
                (int)l, Uc, (int)l, 0.0, Bk, (int)k);
    for (int64_t i = 0; i < m; i++)
        for (int64_t c = 0; c < k; c++)
            Bk[i * k + c] *= S[c];
    memcpy(Ak, Z, (size_t)k * (size_t)n * sizeof *Ak);
out:
    free(Z);
    free(Q);
    free(C);
    free(Rt);
    free(Uc);
    free(S);
    free(Zf);
    free(Qf);
    return rc;
}

/* The sketch's stream for a module: splitmix64 started at seed ^ xxh64(module,
 * seed 0) ^ SKETCH_STREAM fills xoshiro256**'s state (seed: the DARE seed, 0
 * for the methods without one). SKETCH_STREAM keeps it apart from the DARE
 * streams, whose third term is a multiple (i+1) * 0xD1B54A32D192ED03. */
#define SKETCH_STREAM 0x5851F42D4C957F2Dull

static void sketch_rng_init(rng *r, uint64_t seed, const char *module)
{
    uint64_t x = seed ^ actl__xxh64(module, strlen(module), 0) ^ SKETCH_STREAM;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

/* Rank-k truncation of the pruned delta D [m, n] into Bk [m, k], Ak [k, n]:
 * the full SVD (svd_dense on a copy in scratch [m*n]) when min(m, n) <=
 * actl__compose_exact_dim or the sketch would be nearly as wide as D, else
 * svd_sketch (its fp32 copy of D in scratch). The error is that of the
 * factors returned, whichever way they were found: norm2 = ||D||^2 and
 * disc2 = ||D - Bk Ak||^2, formed with dgemm and summed in fp64 (not
 * ||D||^2 - ||D_k||^2, which holds only for an exact orthogonal projection
 * and cancels when the error is small). D is overwritten by the residual. */
static int truncate_delta(double *D, double *scratch, int64_t m, int64_t n, int64_t k,
                          int64_t R, uint64_t seed, const char *module, const char *what,
                          double *Bk, double *Ak, double *disc2, double *norm2)
{
    int rc;
    /* the sketch's width (see SKETCH_OVERSAMPLE) */
    int64_t mn = m < n ? m : n, l = (k > R ? k : R) + SKETCH_OVERSAMPLE;
    *norm2 = sum_squares(D, m, n);
    if (mn <= actl__compose_exact_dim || 2 * l > mn) {
        double d2, n2;
        memcpy(scratch, D, (size_t)m * (size_t)n * sizeof *D);
        rc = svd_dense(scratch, m, n, k, what, Bk, Ak, &d2, &n2);
    } else {
        rng r;
        sketch_rng_init(&r, seed, module);
        rc = svd_sketch(D, (float *)scratch, m, n, k, l, &r, what, Bk, Ak);
    }
    if (rc)
        return rc;
    /* D [m, n] -= Bk [m, k] Ak [k, n] */
    gemm_acc(D, Bk, Ak, m, k, n, -1.0);
    *disc2 = sum_squares(D, m, n);
    return ACTL_OK;
}

/* ---- LoRA methods ------------------------------------------------------------ */

/* The parts' factors side by side, so that Bc Ac = sum c_i B_i A_i: Ac [R, in] the rows
 * c_i A_i stacked, Bc [out, R] the columns of the B_i in the same order. */
static void stack_factors(const part *ps, size_t np, double *const *A, double *const *B,
                          const double *c, int64_t out, int64_t inf, int64_t R, double *Ac,
                          double *Bc)
{
    int64_t row = 0;
    for (size_t p = 0; p < np; p++) {
        int64_t r = ps[p].m->info.rank;
        for (int64_t a = 0; a < r; a++)
            for (int64_t e = 0; e < inf; e++)
                Ac[(row + a) * inf + e] = c[p] * A[p][a * inf + e];
        for (int64_t o = 0; o < out; o++)
            for (int64_t a = 0; a < r; a++)
                Bc[o * R + row + a] = B[p][o * r + a];
        row += r;
    }
}

/* One module of a LoRA compose from its np parts. */
static int lora_module(job *j, size_t mi, const part *ps, size_t np)
{
    int rc = ACTL_OK;
    const char *name = j->names[mi];
    const actl__module *m0 = ps[0].m;
    const input *in0 = &j->in[ps[0].input];
    bool emb = m0->info.flags & ACTL_MOD_EMBEDDING;
    int64_t out = m0->info.out_features, inf = m0->info.in_features, R = 0;
    double **A = NULL, **B = NULL, **T = NULL, *c = NULL, *w = NULL, *bias = NULL;
    double *Ak = NULL, *Bk = NULL, *D = NULL, *D2 = NULL, *scratch = NULL;
    double disc2 = 0, norm2 = 0;
    int64_t k = 0;
    char what[512];
    snprintf(what, sizeof what, "compose %s: module '%s'", method_names[j->method], name);

    if (!(A = calloc(np, sizeof *A)) || !(B = calloc(np, sizeof *B)) ||
        !(T = calloc(np, sizeof *T)) || !(c = dalloc(np)) || !(w = dalloc(np))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t p = 0; p < np; p++) {
        const actl__module *m = ps[p].m;
        const input *x = &j->in[ps[p].input];
        if (((m->info.flags & ACTL_MOD_EMBEDDING) != 0) != emb) {
            rc = actl__err(ACTL_ESHAPE, "%s is an embedding LoRA in '%s' but a linear one in '%s'",
                           what, emb ? in0->ref : x->ref, emb ? x->ref : in0->ref);
            goto out;
        }
        if (m->info.out_features != out || m->info.in_features != inf) {
            rc = actl__err(ACTL_ESHAPE,
                           "%s: '%s' has a delta of [%lld, %lld] but '%s' one of [%lld, %lld]",
                           what, in0->ref, (long long)out, (long long)inf, x->ref,
                           (long long)m->info.out_features, (long long)m->info.in_features);
            goto out;
        }
        R += m->info.rank;
    }
    if (out > INT_MAX || inf > INT_MAX || R > INT_MAX || !mul_size(out, inf)) {
        rc = actl__err(ACTL_ELIMIT, "%s: [%lld, %lld] with rank %lld is too large", what,
                       (long long)out, (long long)inf, (long long)R);
        goto out;
    }
    for (size_t p = 0; p < np; p++) {
        const actl__module *m = ps[p].m;
        const input *x = &j->in[ps[p].input];
        int64_t r = m->info.rank;
        c[p] = x->w * m->info.scale;
        w[p] = x->w;
        if (!(A[p] = dalloc(mul_size(r, inf))) || !(B[p] = dalloc(mul_size(out, r)))) {
            rc = actl__oom();
            goto out;
        }
        /* A [r, in], B [out, r] */
        if ((rc = load_f64(m->lora_a, x->ref, A[p])) || (rc = load_f64(m->lora_b, x->ref, B[p])))
            goto out;
    }
    /* bias [out]: PEFT adds s * lora_B.bias to the output, so the weighted sum is exact */
    if (j->bias && !emb) {
        if (!(bias = dalloc((size_t)out))) {
            rc = actl__oom();
            goto out;
        }
        for (size_t p = 0; p < np; p++) {
            const actl__module *m = ps[p].m;
            if (!m->lora_bias)
                continue;
            for (int64_t e = 0; e < out; e++) {
                double v = actl__tensor_get_f64(m->lora_bias, (size_t)e);
                if (!isfinite(v)) {
                    rc = actl__err(ACTL_EINVAL, "'%s': tensor '%s' holds a non-finite value",
                                   j->in[ps[p].input].ref, m->lora_bias->name);
                    goto out;
                }
                bias[e] += c[p] * v;
            }
        }
    }

    int64_t mn = out < inf ? out : inf;
    switch (j->method) {
    case ACTL_COMPOSE_CAT:
        k = R;
        if (!(Ak = dalloc(mul_size(R, inf))) || !(Bk = dalloc(mul_size(out, R)))) {
            rc = actl__oom();
            goto out;
        }
        stack_factors(ps, np, A, B, c, out, inf, R, Ak, Bk);
        break;
    case ACTL_COMPOSE_SVD: {
        /* D = sum c_i B_i A_i = [B_1 .. B_n] [c_1 A_1; ..; c_n A_n], of rank <= R: a
         * larger k would only add zero singular values */
        k = j->rank > 0 && j->rank < R ? j->rank : R;
        k = k < mn ? k : mn;
        double *Bc = dalloc(mul_size(out, R)), *Ac = dalloc(mul_size(R, inf));
        if (!Bc || !Ac || !(Ak = dalloc(mul_size(k, inf))) || !(Bk = dalloc(mul_size(out, k)))) {
            free(Bc);
            free(Ac);
            rc = actl__oom();
            goto out;
        }
        stack_factors(ps, np, A, B, c, out, inf, R, Ac, Bc);
        rc = svd_factors(Bc, Ac, out, inf, R, k, what, Bk, Ak, &disc2, &norm2);
        free(Bc);
        free(Ac);
        if (rc)
            goto out;
        break;
    }
    case ACTL_COMPOSE_LINEAR: {
        /* PEFT: A = sum sign(c_i) sqrt|c_i| A_i, B = sum sqrt|c_i| B_i, equal ranks */
        k = ps[0].m->info.rank;
        for (size_t p = 1; p < np; p++)
            if (ps[p].m->info.rank != k) {
                rc = actl__err(ACTL_ESHAPE,
                               "%s: linear needs equal ranks, but '%s' has rank %lld and '%s' "
                               "rank %d (use cat or svd)", what, in0->ref, (long long)k,
                               j->in[ps[p].input].ref, ps[p].m->info.rank);
                goto out;
            }
        if (!(Ak = dalloc(mul_size(k, inf))) || !(Bk = dalloc(mul_size(out, k))) ||
            !(D = dalloc(mul_size(out, inf))) || !(D2 = dalloc(mul_size(out, inf)))) {
            rc = actl__oom();
            goto out;
        }
        for (size_t p = 0; p < np; p++) {
            double root = sqrt(fabs(c[p])), sa = c[p] >= 0 ? root : -root;
            for (int64_t e = 0; e < k * inf; e++)
                Ak[e] += sa * A[p][e];
            for (int64_t e = 0; e < out * k; e++)
                Bk[e] += root * B[p][e];
            gemm_acc(D, B[p], A[p], out, k, inf, c[p]);
        }
        /* what the mix misses: B'A' - sum c_i B_i A_i */
        gemm_acc(D2, Bk, Ak, out, k, inf, 1.0);
        for (int64_t e = 0; e < out * inf; e++) {
            norm2 += D[e] * D[e];
            disc2 += (D2[e] - D[e]) * (D2[e] - D[e]);
        }
        break;
    }
    default: {
        /* ties, dare_*, magnitude_prune on full deltas T_i = s_i B_i A_i */
        size_t ne = mul_size(out, inf);
        k = j->rank > 0 ? j->rank : R;
        k = k < mn ? k : mn;
        if (!(D = dalloc(ne)) || !(scratch = dalloc(ne)) || !(Ak = dalloc(mul_size(k, inf))) ||
            !(Bk = dalloc(mul_size(out, k)))) {
            rc = actl__oom();
            goto out;
        }
        /* T_i [out, in] = s_i B_i A_i (dgemm, OpenBLAS threads), then pruned and merged
         * on up to two threads (prune_module) */
        for (size_t p = 0; p < np; p++) {
            const actl__module *m = ps[p].m;
            if (!(T[p] = malloc(ne * sizeof *T[p]))) {
                rc = actl__oom();
                goto out;
            }
            gemm_set(T[p], B[p], A[p], out, m->info.rank, inf, m->info.scale);
        }
        prune_module(j, ps, np, name, T, w, ne, D, scratch);
        if ((rc = truncate_delta(D, scratch, out, inf, k, R, j->seed, name, what, Bk, Ak, &disc2,
                                 &norm2)))
            goto out;
        break;
    }
    }

    int64_t sa[2] = {k, inf}, sb[2] = {out, k}, sbias[1] = {out};
    if ((rc = push_tensor(j, name, emb ? ".lora_embedding_A" : ".lora_A.weight", 2, sa, Ak)) ||
        (rc = push_tensor(j, name, emb ? ".lora_embedding_B" : ".lora_B.weight", 2, sb, Bk)) ||
        (bias && (rc = push_tensor(j, name, ".lora_B.bias", 1, sbias, bias))) ||
        (rc = report_add(j->rep, name, disc2, norm2)))
        goto out;
    j->ranks[mi] = (int)k;
    if ((int)k > j->rep->max_rank)
        j->rep->max_rank = (int)k;
out:
    for (size_t p = 0; A && B && T && p < np; p++) {
        free(A[p]);
        free(B[p]);
        free(T[p]);
    }
    free(A);
    free(B);
    free(T);
    free(c);
    free(w);
    free(bias);
    free(Ak);
    free(Bk);
    free(D);
    free(D2);
    free(scratch);
    return rc;
}

/* The parts of module mi: every input that has it, in list order. */
static size_t parts_of(const job *j, size_t mi, part *ps)
{
    size_t np = 0;
    for (size_t i = 0; i < j->n; i++) {
        const actl__module *m = actl__adapter_module_find(j->in[i].a, j->names[mi]);
        if (m) {
            ps[np].input = i;
            ps[np].m = m;
            np++;
        }
    }
    return np;
}

static int compose_lora(job *j)
{
    int rc = ACTL_OK;
    part *ps = calloc(j->n, sizeof *ps);
    if (!ps)
        return actl__oom();
    for (size_t mi = 0; mi < j->nmod && !rc; mi++) {
        size_t np = parts_of(j, mi, ps);
        rc = lora_module(j, mi, ps, np);
    }
    free(ps);
    /* exact: cat always; svd when no singular value was dropped */
    if (!rc) {
        j->rep->exact = j->method == ACTL_COMPOSE_CAT;
        if (j->method == ACTL_COMPOSE_SVD) {
            j->rep->exact = 1;
            for (size_t i = 0; i < j->rep->n; i++)
                if (j->rep->disc2[i] != 0)
                    j->rep->exact = 0;
        }
    }
    return rc;
}

/* ---- RoAd methods ------------------------------------------------------------ */


/* A RoAd module's parameters under weight w (theta*w, alpha^w), as doubles of
 * the module's own variant and length. */
static int road_params(const input *x, const actl__module *m, double *alpha, double *theta)
{
    int rc = ACTL_OK;
    int64_t len = m->road_theta->shape[0];
    for (int64_t t = 0; t < len && !rc; t++) {
        double a = actl__tensor_get_f64(m->road_alpha, (size_t)t);
        double th = actl__tensor_get_f64(m->road_theta, (size_t)t);
        if (!isfinite(a) || !isfinite(th))
            return actl__err(ACTL_EINVAL, "'%s': module '%s': road_alpha or road_theta holds a "
                             "non-finite value at %lld", x->ref, m->info.name, (long long)t);
        theta[t] = x->w * th;
        rc = actl__road_alpha_pow(a, x->w, x->ref, m->info.name, &alpha[t]);
    }
    return rc;
}

/* Parameters of variant `from` (for out outputs, group g) copied into the
 * layout of variant `to` (from <= to): road_1 -> road_2 repeats a pair's
 * parameter on both outputs; road_2 -> road_4 repeats an output's parameter
 * in its cosine and sine slots (DESIGN.md 3.2). Exact. */
static int64_t road_len(int variant, int64_t out);

static void road_widen(const double *src, int from, int to, int64_t out, int64_t g,
                       double *dst)
{
    int64_t h = g / 2;
    if (from == to) {
        memcpy(dst, src, (size_t)road_len(from, out) * sizeof *dst);
        return;
    }
    for (int64_t p = 0; p < out; p++) {
        int64_t k = p / g, o = p % g, j = o % h;
        double v = from == ACTL_ROAD_1 ? src[k * h + j] : src[p];
        if (to == ACTL_ROAD_4) {
            dst[2 * g * k + o] = v;
            dst[2 * g * k + g + o] = v;
        } else {
            dst[p] = v;
        }
    }
}

static int64_t road_len(int variant, int64_t out)
{
    return variant == ACTL_ROAD_1 ? out / 2 : variant == ACTL_ROAD_2 ? out : 2 * out;
}

static int push_road(job *j, const char *name, int64_t len, const double *alpha,
                     const double *theta)
{
    int rc = push_tensor(j, name, ".road_alpha", 1, &len, alpha);
    return rc ? rc : push_tensor(j, name, ".road_theta", 1, &len, theta);
}

static int compose_union(job *j)
{
    int rc = ACTL_OK;
    double *a = NULL, *t = NULL, *wa = NULL, *wt = NULL;
    part *ps = calloc(j->n, sizeof *ps);
    if (!ps)
        return actl__oom();
    j->variant = ACTL_ROAD_1;
    for (size_t i = 0; i < j->n; i++)
        if ((int)j->in[i].a->info.variant > j->variant)
            j->variant = j->in[i].a->info.variant;
    for (size_t mi = 0; mi < j->nmod; mi++) {
        size_t np = parts_of(j, mi, ps);
        if (np > 1) {
            rc = actl__err(ACTL_EINVAL,
                           "compose union: module '%s' is in both '%s' and '%s'; union takes "
                           "adapters on disjoint modules (use sequential to apply one after "
                           "the other)", j->names[mi], j->in[ps[0].input].ref,
                           j->in[ps[1].input].ref);
            goto out;
        }
        const input *x = &j->in[ps[0].input];
        const actl__module *m = ps[0].m;
        int64_t out = actl__road_out(x->a, m), len = m->road_theta->shape[0];
        int64_t wlen = road_len(j->variant, out);
        free(a);
        free(t);
        free(wa);
        free(wt);
        a = dalloc((size_t)len), t = dalloc((size_t)len);
        wa = dalloc((size_t)wlen), wt = dalloc((size_t)wlen);
        if (!a || !t || !wa || !wt) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = road_params(x, m, a, t)))
            goto out;
        road_widen(a, x->a->info.variant, j->variant, out, j->group, wa);
        road_widen(t, x->a->info.variant, j->variant, out, j->group, wt);
        if ((rc = push_road(j, j->names[mi], wlen, wa, wt)) ||
            (rc = report_add(j->rep, j->names[mi], 0, 0)))
            goto out;
    }
    j->rep->exact = 1;
out:
    free(ps);
    free(a);
    free(t);
    free(wa);
    free(wt);
    return rc;
}

static int compose_sequential(job *j)
{
    int rc = ACTL_OK;
    double **cs = NULL; /* per module: c [out] then s [out] */
    double *a = NULL, *t = NULL, *c1 = NULL, *s1 = NULL;
    bool all1 = true;
    part *ps = calloc(j->n, sizeof *ps);
    if (!ps || !(cs = calloc(j->nmod, sizeof *cs))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < j->n; i++)
        all1 = all1 && j->in[i].a->info.variant == ACTL_ROAD_1;
    j->variant = ACTL_ROAD_1;
    for (size_t mi = 0; mi < j->nmod; mi++) {
        size_t np = parts_of(j, mi, ps);
        int64_t out = actl__road_out(j->in[ps[0].input].a, ps[0].m);
        for (size_t p = 1; p < np; p++)
            if (actl__road_out(j->in[ps[p].input].a, ps[p].m) != out) {
                rc = actl__err(ACTL_ESHAPE,
                               "compose sequential: module '%s' has %lld outputs in '%s' but "
                               "%lld in '%s'", j->names[mi], (long long)out,
                               j->in[ps[0].input].ref,
                               (long long)actl__road_out(j->in[ps[p].input].a, ps[p].m),
                               j->in[ps[p].input].ref);
                goto out;
            }
        free(a);
        free(t);
        free(c1);
        free(s1);
        a = t = c1 = s1 = NULL;
        if (all1) {
            /* road_1 o road_1: scaled rotations of one pair multiply: alpha = prod
             * alpha_i, theta = sum theta_i, per parameter (exact) */
            int64_t len = out / 2;
            double *pa = dalloc((size_t)len), *pt = dalloc((size_t)len);
            a = dalloc((size_t)len), t = dalloc((size_t)len);
            if (!pa || !pt || !a || !t) {
                free(pa);
                free(pt);
                rc = actl__oom();
                goto out;
            }
            for (int64_t e = 0; e < len; e++)
                a[e] = 1.0;
            for (size_t p = 0; p < np && !rc; p++) {
                rc = road_params(&j->in[ps[p].input], ps[p].m, pa, pt);
                for (int64_t e = 0; e < len && !rc; e++) {
                    a[e] *= pa[e];
                    t[e] += pt[e];
                }
            }
            free(pa);
            free(pt);
            if (rc || (rc = push_road(j, j->names[mi], len, a, t)) ||
                (rc = report_add(j->rep, j->names[mi], 0, 0)))
                goto out;
            continue;
        }
        /* general: per-pair products of the coefficients, A first */
        if (!(cs[mi] = dalloc(mul_size(2, out))) || !(c1 = dalloc((size_t)out)) ||
            !(s1 = dalloc((size_t)out))) {
            rc = actl__oom();
            goto out;
        }
        double *c = cs[mi], *s = cs[mi] + out;
        for (int64_t e = 0; e < out; e++)
            c[e] = 1.0;
        for (size_t p = 0; p < np; p++) {
            const input *x = &j->in[ps[p].input];
            if ((rc = actl__road_coeffs(x->a, ps[p].m, x->w, c1, s1))) {
                rc = actl__err_wrap(rc, "compose sequential: '%s'", x->ref);
                goto out;
            }
            actl__road_compose(c, s, c1, s1, out, j->group, c, s);
        }
        /* road_1 holds one (alpha, theta) per pair: both outputs must agree */
        int64_t h = j->group / 2;
        for (int64_t base = 0; base < out && j->variant == ACTL_ROAD_1; base += j->group)
            for (int64_t q = 0; q < h; q++)
                if (c[base + q] != c[base + q + h] || s[base + q] != s[base + q + h]) {
                    j->variant = ACTL_ROAD_2;
                    break;
                }
    }
    if (!all1) {
        /* the variant is known only now: write every module in it */
        for (size_t mi = 0; mi < j->nmod; mi++) {
            parts_of(j, mi, ps);
            int64_t out = actl__road_out(j->in[ps[0].input].a, ps[0].m);
            int64_t len = road_len(j->variant, out), h = j->group / 2;
            double *c = cs[mi], *s = cs[mi] + out;
            free(a);
            free(t);
            a = dalloc((size_t)len), t = dalloc((size_t)len);
            if (!a || !t) {
                rc = actl__oom();
                goto out;
            }
            for (int64_t p = 0; p < out; p++) {
                int64_t k = p / j->group, o = p % j->group;
                if (j->variant == ACTL_ROAD_1 && o >= h)
                    continue;
                int64_t at = j->variant == ACTL_ROAD_1 ? k * h + o : p;
                a[at] = hypot(c[p], s[p]);
                t[at] = atan2(s[p], c[p]);
            }
            if ((rc = push_road(j, j->names[mi], len, a, t)) ||
                (rc = report_add(j->rep, j->names[mi], 0, 0)))
                goto out;
        }
    }
    j->rep->exact = 1;
out:
    for (size_t mi = 0; cs && mi < j->nmod; mi++)
        free(cs[mi]);
    free(cs);
    free(ps);
    free(a);
    free(t);
    free(c1);
    free(s1);
    return rc;
}

/* ---- inputs, modules, pass-through tensors, config --------------------------- */

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* Checks what every method needs of its inputs and materializes MoS. */
static int prepare_inputs(job *j, const actl_input *in, size_t n)
{
    bool lora = is_lora_method(j->method);
    const char *base_ref = NULL;
    if (!(j->in = calloc(n, sizeof *j->in)))
        return actl__oom();
    j->n = n;
    for (size_t i = 0; i < n; i++) {
        input *x = &j->in[i];
        const actl_adapter *a = in[i].adapter;
        x->ref = in[i].ref ? in[i].ref : (a ? a->origin : "?");
        x->w = in[i].weight;
        if (!a)
            return actl__err(ACTL_EINVAL, "compose: input %zu ('%s') has no adapter", i, x->ref);
        if (!isfinite(x->w))
            return actl__err(ACTL_EINVAL, "compose: input '%s' has a non-finite weight", x->ref);
        actl_kind k = a->info.kind;
        const char *meth = method_names[j->method];
        if (k == ACTL_KIND_BOTTLENECK)
            return actl__err(ACTL_EUNSUPPORTED,
                             "compose %s: '%s' is a bottleneck adapter, which is non-linear and "
                             "cannot be folded into %s; use --method stack", meth, x->ref,
                             lora ? "a LoRA" : "a RoAd adapter");
        if (lora && k == ACTL_KIND_ROAD)
            return actl__err(ACTL_EINVAL,
                             "compose %s: '%s' is a RoAd adapter, %s takes LoRA or MoS inputs; "
                             "use sequential or union for RoAd, stack for mixed kinds", meth,
                             x->ref, meth);
        if (!lora && k != ACTL_KIND_ROAD)
            return actl__err(ACTL_EINVAL,
                             "compose %s: '%s' is a %s adapter, %s takes RoAd inputs; use stack "
                             "for mixed kinds", meth, x->ref, actl_kind_name(k), meth);
        if (lora && a->info.use_dora)
            return actl__err(ACTL_EUNSUPPORTED,
                             "compose %s: '%s' is DoRA: its row norms depend on the base weights, "
                             "so its delta is not a product of factors; merge it into the base "
                             "instead", meth, x->ref);
        if (a->info.base_model) {
            if (j->base && strcmp(j->base, a->info.base_model) != 0)
                return actl__err(ACTL_EINVAL,
                                 "compose %s: the inputs were made for different base models: "
                                 "'%s' for '%s', '%s' for '%s'", meth, base_ref, j->base, x->ref,
                                 a->info.base_model);
            if (!j->base) {
                j->base = a->info.base_model;
                base_ref = x->ref;
            }
        }
        if (k == ACTL_KIND_MOS) {
            int rc = actl_adapter_materialize(a, &x->owned);
            if (rc)
                return actl__err_wrap(rc, "compose %s: '%s'", meth, x->ref);
            a = x->owned;
        }
        x->a = a;
        if (lora) {
            if (i > 0 && (bool)a->info.fan_in_fan_out != j->fan_in_fan_out)
                return actl__err(ACTL_EINVAL,
                                 "compose %s: '%s' has fan_in_fan_out %s but '%s' has %s: they "
                                 "disagree on how the base stores its weights", meth,
                                 j->in[0].ref, j->fan_in_fan_out ? "true" : "false", x->ref,
                                 a->info.fan_in_fan_out ? "true" : "false");
            j->fan_in_fan_out = a->info.fan_in_fan_out;
            for (size_t m = 0; m < a->n_modules; m++)
                if (a->modules[m].lora_bias)
                    j->bias = true;
        } else {
            if (i > 0 && a->info.group_size != j->group)
                return actl__err(ACTL_ESHAPE,
                                 "compose %s: '%s' has group_size %d but '%s' has %d; a RoAd "
                                 "adapter has one group size", meth, j->in[0].ref, j->group,
                                 x->ref, a->info.group_size);
            j->group = a->info.group_size;
        }
    }
    return ACTL_OK;
}

/* The union of the inputs' module names, sorted. */
static int collect_modules(job *j)
{
    size_t total = 0;
    for (size_t i = 0; i < j->n; i++)
        total += j->in[i].a->n_modules;
    if (!(j->names = calloc(total ? total : 1, sizeof *j->names)))
        return actl__oom();
    for (size_t i = 0; i < j->n; i++)
        for (size_t m = 0; m < j->in[i].a->n_modules; m++)
            j->names[j->nmod++] = j->in[i].a->modules[m].info.name;
    qsort(j->names, j->nmod, sizeof *j->names, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < j->nmod; i++)
        if (u == 0 || strcmp(j->names[u - 1], j->names[i]) != 0)
            j->names[u++] = j->names[i];
    j->nmod = u;
    if (!(j->ranks = calloc(u ? u : 1, sizeof *j->ranks)))
        return actl__oom();
    return ACTL_OK;
}

static bool same_bytes(const actl_tensor *x, const actl_tensor *y)
{
    if (x->dtype != y->dtype || x->ndim != y->ndim || x->nbytes != y->nbytes)
        return false;
    for (int d = 0; d < x->ndim; d++)
        if (x->shape[d] != y->shape[d])
            return false;
    return memcmp(x->data, y->data, x->nbytes) == 0;
}

static bool module_holds(const actl__module *m, const actl_tensor *t)
{
    return t == m->lora_a || t == m->lora_b || t == m->lora_bias || t == m->magnitude ||
           t == m->road_theta || t == m->road_alpha || t == m->down || t == m->up ||
           t == m->scaling || t == m->index_a || t == m->index_b || t == m->pool_a ||
           t == m->pool_b;
}

/* A tensor of a that no module holds: a module saved whole (modules_to_save)
 * or a trained base bias. */
static bool is_passthrough(const actl_adapter *a, const actl_tensor *x)
{
    for (size_t m = 0; m < a->n_modules; m++)
        if (module_holds(&a->modules[m], x))
            return false;
    return true;
}

/* Merge applies a tensor saved whole as (1 - w) W + w S, which depends on the
 * base W a composed adapter cannot know; copying S as it is agrees with that
 * only at w = 1. Checked before any arithmetic. */
static int check_passthrough_weights(const job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        const actl_adapter *a = j->in[i].a;
        if (j->in[i].w == 1.0)
            continue;
        for (size_t t = 0; t < a->n_tensors; t++)
            if (is_passthrough(a, a->tensors[t]))
                return actl__err(ACTL_EINVAL,
                                 "compose %s: input '%s' has weight %g but carries tensor '%s' "
                                 "saved whole (modules_to_save or a trained bias), which merge "
                                 "blends with the base as (1-w)*W + w*S; give that input weight "
                                 "1, or merge it instead", method_names[j->method], j->in[i].ref,
                                 j->in[i].w, a->tensors[t]->name);
    }
    return ACTL_OK;
}

/* Copies the tensors no module holds (modules_to_save, trained base biases),
 * as they are: every input carrying one has weight 1 (check_passthrough_weights).
 * The same key from two inputs must hold the same bytes. */
static int collect_passthrough(job *j)
{
    int rc = ACTL_OK;
    size_t first = j->nout; /* pass-through tensors are appended after this */
    for (size_t i = 0; i < j->n; i++) {
        const actl_adapter *a = j->in[i].a;
        for (size_t t = 0; t < a->n_tensors; t++) {
            const actl_tensor *x = a->tensors[t];
            if (!is_passthrough(a, x))
                continue;
            bool dup = false;
            for (size_t k = first; k < j->nout && !dup; k++) {
                if (strcmp(j->out[k]->name, x->name) != 0)
                    continue;
                if (!same_bytes(j->out[k], x))
                    return actl__err(ACTL_EINVAL,
                                     "compose %s: tensor '%s' is in two inputs with different "
                                     "values (the second is '%s'); a module saved whole cannot "
                                     "be combined", method_names[j->method], x->name,
                                     j->in[i].ref);
                dup = true;
            }
            if (dup)
                continue;
            if (j->nout == j->capout) {
                size_t cap = j->capout ? 2 * j->capout : 32;
                actl_tensor **p = realloc(j->out, cap * sizeof *p);
                if (!p)
                    return actl__oom();
                j->out = p;
                j->capout = cap;
            }
            actl_tensor *c;
            if ((rc = actl_tensor_copy(x, NULL, &c)))
                return rc;
            j->out[j->nout++] = c;
        }
    }
    return rc;
}

/* name is the module path k or ends with "." k. */
static bool ends_with_path(const char *name, const char *k)
{
    size_t n = strlen(name), m = strlen(k);
    if (n == m)
        return strcmp(name, k) == 0;
    return n > m && name[n - m - 1] == '.' && strcmp(name + n - m, k) == 0;
}

/* The rank_pattern/alpha_pattern key for module `name` of the result: a regex
 * PEFT matches with re.match against the module's path in the base model
 * ("model.layers.0.self_attn.q_proj"); newer releases (get_pattern_key) use
 * "(.*\.)?(KEY)$", older ones ".*\.KEY$", which needs a dot before the key,
 * so the full path never matches there. The key is therefore the path without
 * its first segment ("layers\.0\.self_attn\.q_proj"), escaped: under both
 * rules it matches exactly the paths equal to it or ending in "." and it, and
 * it is used only when no other module of the result is such a path. Otherwise
 * (or for a path of one segment) the whole escaped path, which only the newer
 * rule matches. */
static char *pattern_key(const job *j, const char *name)
{
    const char *use = name, *tail = strchr(name, '.');
    if (tail && tail[1]) {
        bool unique = true;
        for (size_t m = 0; m < j->nmod && unique; m++)
            unique = strcmp(j->names[m], name) == 0 || !ends_with_path(j->names[m], tail + 1);
        if (unique)
            use = tail + 1;
    }
    size_t n = strlen(use);
    char *k = malloc(2 * n + 1), *p = k;
    if (!k)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)use[i];
        bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                     (ch >= '0' && ch <= '9') || ch == '_' || ch >= 0x80;
        if (!plain)
            *p++ = '\\';
        *p++ = (char)ch;
    }
    *p = '\0';
    return k;
}

/* The config keys every result shares: base model, task type, targets, and
 * what pass-through tensors need (modules_to_save, bias). */
static int config_common(const job *j, json_t *cfg)
{
    json_t *targets = json_array(), *save = NULL;
    const char *task = NULL, *bias = NULL;
    int bad = !targets;
    for (size_t m = 0; !bad && m < j->nmod; m++)
        bad = json_array_append_new(targets, json_string(j->names[m])) != 0;
    bad = bad || json_object_set(cfg, "target_modules", targets);
    bad = bad || json_object_set_new(cfg, "base_model_name_or_path",
                                     j->base ? json_string(j->base) : json_null());
    bad = bad || json_object_set_new(cfg, "inference_mode", json_true());
    for (size_t i = 0; !bad && i < j->n; i++) {
        const json_t *c = j->in[i].a->config;
        json_t *v = json_object_get(c, "task_type");
        if (!task && json_is_string(v))
            task = json_string_value(v);
        v = json_object_get(c, "bias");
        if (!bias && json_is_string(v) && strcmp(json_string_value(v), "none") != 0)
            bias = json_string_value(v);
        v = json_object_get(c, "modules_to_save");
        size_t k;
        json_t *e;
        if (!json_is_array(v))
            continue;
        if (!save && !(save = json_array())) {
            bad = 1;
            break;
        }
        json_array_foreach(v, k, e) {
            bool seen = false;
            for (size_t s = 0; s < json_array_size(save); s++)
                seen = seen || json_equal(json_array_get(save, s), e);
            if (!seen && json_array_append(save, e) != 0)
                bad = 1;
        }
    }
    bad = bad || json_object_set_new(cfg, "modules_to_save", save ? json_incref(save) : json_null());
    bad = bad || json_object_set_new(cfg, "bias", json_string(bias ? bias : "none"));
    if (!bad && task)
        bad = json_object_set_new(cfg, "task_type", json_string(task)) != 0;
    json_decref(targets);
    json_decref(save);
    return bad ? actl__oom() : ACTL_OK;
}

static int cmp_int_desc(const void *x, const void *y)
{
    int a = *(const int *)x, b = *(const int *)y;
    return (a < b) - (a > b);
}

/* LoRA config: r = the rank most modules have (the larger on a tie), scale 1
 * everywhere: lora_alpha = r, and for each module of another rank a
 * rank_pattern and an alpha_pattern entry of its rank. */
static int config_lora(const job *j, json_t *cfg)
{
    int rc = ACTL_OK, r = 0, best = 0;
    int *sorted = malloc((j->nmod ? j->nmod : 1) * sizeof *sorted);
    json_t *rp = json_object(), *ap = json_object();
    char *key = NULL;
    if (!sorted || !rp || !ap) {
        rc = actl__oom();
        goto out;
    }
    memcpy(sorted, j->ranks, j->nmod * sizeof *sorted);
    qsort(sorted, j->nmod, sizeof *sorted, cmp_int_desc);
    for (size_t i = 0; i < j->nmod;) {
        size_t e = i;
        while (e < j->nmod && sorted[e] == sorted[i])
            e++;
        if ((int)(e - i) > best) {
            best = (int)(e - i);
            r = sorted[i];
        }
        i = e;
    }
    for (size_t m = 0; m < j->nmod; m++) {
        if (j->ranks[m] == r)
            continue;
        free(key);
        if (!(key = pattern_key(j, j->names[m])) ||
            json_object_set_new(rp, key, json_integer(j->ranks[m])) ||
            json_object_set_new(ap, key, json_integer(j->ranks[m]))) {
            rc = actl__oom();
            goto out;
        }
    }
    if (json_object_set_new(cfg, "peft_type", json_string("LORA")) ||
        json_object_set_new(cfg, "r", json_integer(r)) ||
        json_object_set_new(cfg, "lora_alpha", json_integer(r)) ||
        json_object_set_new(cfg, "use_rslora", json_false()) ||
        json_object_set_new(cfg, "use_dora", json_false()) ||
        json_object_set_new(cfg, "fan_in_fan_out", json_boolean(j->fan_in_fan_out)) ||
        json_object_set_new(cfg, "lora_bias", json_boolean(j->bias)) ||
        json_object_set_new(cfg, "lora_dropout", json_real(0.0)) ||
        json_object_set_new(cfg, "init_lora_weights", json_true()) ||
        json_object_set(cfg, "rank_pattern", rp) || json_object_set(cfg, "alpha_pattern", ap))
        rc = actl__oom();
out:
    free(sorted);
    free(key);
    json_decref(rp);
    json_decref(ap);
    return rc;
}

static int config_road(const job *j, json_t *cfg)
{
    if (json_object_set_new(cfg, "peft_type", json_string("ROAD")) ||
        json_object_set_new(cfg, "variant",
                            json_string(actl_road_variant_name((actl_road_variant)j->variant))) ||
        json_object_set_new(cfg, "group_size", json_integer(j->group)))
        return actl__oom();
    return ACTL_OK;
}

static int build_result(job *j, actl_adapter **out)
{
    int rc;
    char origin[64];
    json_t *cfg = json_object();
    if (!cfg)
        return actl__oom();
    if ((rc = config_common(j, cfg)) ||
        (rc = is_lora_method(j->method) ? config_lora(j, cfg) : config_road(j, cfg))) {
        json_decref(cfg);
        return rc;
    }
    snprintf(origin, sizeof origin, "composed (%s)", method_names[j->method]);
    /* The build takes the config and the tensors, on failure too. */
    const actl_tensor **ts = (const actl_tensor **)j->out;
    size_t nt = j->nout;
    j->out = NULL;
    j->nout = j->capout = 0;
    return actl__adapter_build(cfg, ts, nt, true, NULL, origin, origin, origin, out);
}

/* A seed for a DARE run that was given none: the clock and the process,
 * stirred, kept to 53 bits so that any JSON reader holds it exactly. */
static uint64_t draw_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^
                 ((uint64_t)getpid() << 32);
    return splitmix64(&x) & ((1ull << 53) - 1);
}

int actl_compose(const actl_input *in, size_t n, const actl_compose_opts *o,
                 actl_adapter **out, actl_compose_report **report)
{
    int rc = ACTL_OK;
    job j;
    memset(&j, 0, sizeof j);
    if (out)
        *out = NULL;
    if (report)
        *report = NULL;
    if (!in || !o || !out)
        return actl__err(ACTL_EINVAL, "compose: NULL argument");
    const char *meth = actl_compose_method_name(o->method);
    if (!meth)
        return actl__err(ACTL_EINVAL, "compose: unknown method %d", (int)o->method);
    if (o->method == ACTL_COMPOSE_STACK)
        return actl__err(ACTL_EINVAL, "compose: a stack is a recipe kept by the store, not a "
                         "new adapter; use actl_store_add_stack");
    if (n == 0)
        return actl__err(ACTL_EINVAL, "compose %s: no inputs", meth);
    if (o->rank < 0)
        return actl__err(ACTL_EINVAL, "compose %s: rank %d is below 1 (0: the sum of the "
                         "input ranks)", meth, o->rank);
    if (o->density != 0 && !(o->density > 0 && o->density <= 1))
        return actl__err(ACTL_EINVAL, "compose %s: density %g is not in (0, 1]", meth,
                         o->density);
    if (o->has_seed && o->seed > (uint64_t)INT64_MAX)
        return actl__err(ACTL_EINVAL, "compose %s: seed %llu is above 2^63-1 (the lineage "
                         "records it as a JSON integer)", meth, (unsigned long long)o->seed);
    j.method = o->method;
    j.rank = o->rank;
    j.density = o->density != 0 ? o->density : 0.5;
    if (uses_seed(o->method))
        j.seed = o->has_seed ? o->seed : draw_seed();
    if (!(j.rep = report_new(o->method))) {
        rc = actl__oom();
        goto out;
    }
    if (uses_seed(o->method)) {
        j.rep->seed = j.seed;
        j.rep->has_seed = 1;
    }
    if ((rc = prepare_inputs(&j, in, n)) || (rc = check_passthrough_weights(&j)) ||
        (rc = collect_modules(&j)))
        goto out;
    if (is_lora_method(j.method))
        rc = compose_lora(&j);
    else if (j.method == ACTL_COMPOSE_UNION)
        rc = compose_union(&j);
    else
        rc = compose_sequential(&j);
    if (rc || (rc = collect_passthrough(&j)) || (rc = build_result(&j, out)))
        goto out;
    if (report) {
        *report = j.rep;
        j.rep = NULL;
    }
out:
    job_release(&j);
    return rc;
}

/* ---- lineage ------------------------------------------------------------------ */

/* A JSON number for the lineage; NULL (with the error set) when v is not
 * finite, which JSON cannot hold. */
static json_t *lineage_real(double v, const char *what, int *err)
{
    if (*err)
        return NULL;
    if (!isfinite(v)) {
        *err = actl__err(ACTL_EINVAL, "compose lineage: %s is %s, which JSON cannot record",
                         what, isnan(v) ? "NaN" : "infinite");
        return NULL;
    }
    json_t *x = json_real(v);
    if (!x)
        *err = actl__oom();
    return x;
}

/* Sets key to v (taken), noting OOM in *err unless an error is already noted. */
static void lineage_set(json_t *obj, const char *key, json_t *v, int *err)
{
    if (*err) {
        json_decref(v);
        return;
    }
    if (!v || json_object_set_new(obj, key, v) != 0)
        *err = actl__oom();
}

char *actl_compose_lineage(const actl_input *in, size_t n, const actl_compose_opts *o,
                           const actl_compose_report *report)
{
    char *text = NULL;
    int err = ACTL_OK;
    if (!o || (n && !in)) {
        actl__err(ACTL_EINVAL, "compose lineage: NULL argument");
        return NULL;
    }
    actl_compose_method m = o->method;
    const char *meth = actl_compose_method_name(m);
    if (!meth) {
        actl__err(ACTL_EINVAL, "compose lineage: unknown method %d", (int)m);
        return NULL;
    }
    json_t *root = json_object(), *inputs = json_array(), *opts = json_object();
    if (!root || !inputs || !opts)
        err = actl__oom();
    for (size_t i = 0; !err && i < n; i++) {
        json_t *x = json_object();
        char what[64];
        snprintf(what, sizeof what, "the weight of input %zu", i + 1);
        lineage_set(x, "ref", in[i].ref ? json_string(in[i].ref) : json_null(), &err);
        lineage_set(x, "pack", in[i].pack ? json_string(in[i].pack) : json_null(), &err);
        lineage_set(x, "weight", lineage_real(in[i].weight, what, &err), &err);
        if (!err && (!x || json_array_append(inputs, x) != 0))
            err = actl__oom();
        json_decref(x);
    }
    lineage_set(root, "method", json_string(meth), &err);
    lineage_set(root, "inputs", json_incref(inputs), &err);
    /* only the options the method uses (see the top of this file) */
    if (uses_svd(m)) {
        if (o->rank > 0)
            lineage_set(opts, "rank", json_integer(o->rank), &err);
        else {
            if (report && report->max_rank > 0)
                lineage_set(opts, "rank", json_integer(report->max_rank), &err);
            lineage_set(opts, "rank_default", json_true(), &err);
        }
    }
    if (uses_density(m))
        lineage_set(opts, "density",
                    lineage_real(o->density != 0 ? o->density : 0.5, "the density", &err), &err);
    if (uses_seed(m)) {
        if (report && report->has_seed)
            lineage_set(opts, "seed", json_integer((json_int_t)report->seed), &err);
        else if (o->has_seed)
            lineage_set(opts, "seed", json_integer((json_int_t)o->seed), &err);
    }
    lineage_set(root, "options", json_incref(opts), &err);
    int exact = report ? report->exact
                       : (m == ACTL_COMPOSE_CAT || m == ACTL_COMPOSE_SEQUENTIAL ||
                          m == ACTL_COMPOSE_UNION);
    lineage_set(root, "exact", json_boolean(exact), &err);
    if (!err && report && uses_svd(m)) {
        json_t *e = json_object(), *mods = json_object();
        if (!e || !mods)
            err = actl__oom();
        for (size_t i = 0; !err && i < report->n; i++)
            lineage_set(mods, report->names[i],
                        lineage_real(report->rel[i], "a module's error", &err), &err);
        lineage_set(e, "overall",
                    lineage_real(actl_compose_report_overall(report), "the overall error", &err),
                    &err);
        lineage_set(e, "modules", json_incref(mods), &err);
        lineage_set(root, "error", json_incref(e), &err);
        json_decref(e);
        json_decref(mods);
    }
    if (!err && !(text = actl__json_dump(root, -1)))
        actl__oom();
    json_decref(root);
    json_decref(inputs);
    json_decref(opts);
    return text;
}
