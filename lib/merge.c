/* merge.c: folding adapters into a base checkpoint (DESIGN.md 8).
 *
 * Outline of actl_merge:
 *  1. Check everything before writing anything: the inputs (kinds, weights,
 *     modules and shapes against the base, recorded base model), then turn
 *     them into a plan: for every base tensor the ordered list of operations
 *     ("ops") the inputs apply to it. RoAd coefficients are computed (and
 *     inverted for --unmerge) here, so a near-singular pair is refused before
 *     the output exists.
 *  2. Lay the output out: the same shard files; when no dtype changes, the
 *     same bytes at the same offsets (the header is copied), else a new
 *     header per shard and a rewritten index.
 *  3. Write into a temporary sibling directory ".<out>.tmp-XXXXXX": tasks
 *     (byte ranges of untouched tensors copied with copy_file_range, row
 *     blocks of the others computed and pwritten) run on a small pool of
 *     workers, each starting on its own shard, one block at a time per
 *     worker, the input pages released behind (MADV_DONTNEED on the
 *     mapping) while a writeback thread keeps the disk busy
 *     (sync_file_range). Then the other files, fsync of every file and the
 *     directory, rename to out_dir. Any failure removes the temporary
 *     directory. The output bytes do not depend on the number of workers.
 *
 * The math (DESIGN.md 3), per row block in fp32, rounded once to the output
 * dtype at the end of all of a tensor's ops:
 *  - LoRA: W += w s B A (cblas_sgemm, beta 1); Conv1D layers and embeddings
 *    (stored [in, out] and [vocab, dim]) take (B A)^T = A^T B^T. Like PEFT,
 *    the base layer's type decides, not the adapter's fan_in_fan_out: Conv1D
 *    only in the GPT-2 family (actl__module_stores_in_out). lora_B.bias
 *    adds w s bias to the base bias (PEFT refuses a base without one; so do we).
 *  - DoRA with weight w: V = W + w s B A, then each output row of V is scaled
 *    so that its norm moves from ||V|| towards the magnitude m:
 *        W' = ((1 - w) + w m / ||V||_row) V
 *    w = 1 is the adapter (m / ||W + sBA|| (W + sBA)), w = 0 the base. The
 *    norm is taken in double. Unmerge is refused: m / ||V|| depends on the
 *    unmerged W, which a merged weight alone does not give back.
 *  - RoAd: the pair kernel of road.c on the weight rows and on the bias, with
 *    theta w and alpha^w; unmerge applies the inverse pairs.
 *  - Tensors an adapter carries whole (modules_to_save, trained base biases)
 *    replace the base tensor: W' = (1 - w) W + w S (exactly S when w = 1),
 *    S widened a row block at a time; unmerge refuses them (the replaced
 *    tensor is gone).
 * Nothing non-finite is written where the base was finite: adapter tensors
 * holding Inf/NaN and weights that overflow are refused while planning, and
 * every block is checked after its ops and its rounding (check_block). A
 * base tying its embeddings to its output head refuses adapters on either
 * (check_tied). opts.cancel stops the workers between tasks.
 *  - MoS is materialized into a LoRA first.
 * Unmerge takes the inputs in reverse order, LoRA with -w, RoAd inverted.
 */
#include "internal.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"
#define CONFIG_NAME "config.json"

/* Elements of one fp32 row block: small enough to stay in a core's L2 cache
 * between the conversion, the sgemm and the rounding. */
#define BLOCK_ELEMS (128u * 1024u)
/* Bytes of one copy task (copy_file_range), so that threads share the work
 * and progress moves. */
#define COPY_CHUNK (32u << 20)

actl_merge_opts actl_merge_default_opts(void)
{
    actl_merge_opts o;
    memset(&o, 0, sizeof o);
    o.dtype = -1;
    return o;
}

/* ---- the plan ----------------------------------------------------------- */

enum op_kind {
    OP_LORA,    /* W += alpha B A (or A^T B^T when transposed) */
    OP_DORA,    /* the same, then the row scaling of the header comment */
    OP_BIAS,    /* b += alpha bias */
    OP_ROAD,    /* rows rotated in pairs by c, s */
    OP_REPLACE  /* W = (1 - w) W + w S */
};

typedef struct op {
    enum op_kind kind;
    const actl__module *m;  /* LoRA, DoRA, bias, RoAd */
    const actl_tensor *src; /* OP_REPLACE: the adapter's tensor, same shape as the base's */
    const actl_input *in;   /* whose op it is, for messages */
    double w;               /* the input's weight */
    double alpha;           /* LoRA, DoRA, bias: w s, negated to unmerge */
    int transposed;         /* LoRA: the base stores [in, out] (a Conv1D layer, an embedding) */
    int64_t r;              /* LoRA rank */
    double *c, *s;          /* RoAd coefficients [rows], owned */
    int group;              /* RoAd group size */
    int mapped;             /* the adapter's tensors view a mapped file (not heap memory,
                               which MADV_DONTNEED would wipe) */
    /* Made when the first block of the tensor starts, freed after its last. */
    float *fa;              /* A [r, in] (embedding [r, vocab]) */
    float *fb;              /* B [out, r] (embedding [dim, r]) */
    double *vec;            /* OP_BIAS: bias [out]; OP_DORA: m [out] */
} op;

/* One base tensor and what happens to it. */
typedef struct job {
    const actl_tensor *t; /* the base tensor (a view into the mapped shard) */
    size_t shard;
    uint64_t in_off;      /* the tensor's offset in its input file */
    uint64_t out_off;     /* and in the output file */
    actl_dtype out_dt;
    int64_t rows, cols;   /* numel viewed as [shape[0], rest] (a scalar: [1, 1]) */
    int64_t block;        /* rows per task */
    op *ops;              /* applied in order */
    size_t nops, cap;
    int whole;            /* a DoRA op on a transposed base needs column norms: one block */
    pthread_mutex_t mu;
    int prepared, prep_rc;
    atomic_llong left;    /* tasks of this job not yet finished */
} job;

typedef struct shard {
    const char *name;      /* lent by the checkpoint */
    char *in_path, *out_path;
    int in_fd, out_fd;
    uint64_t in_size;
    uint64_t in_hdr;       /* 8 + header length of the input */
    const unsigned char *data0; /* the mapped input's data section */
    char *header;          /* a new 8-byte length + header, when the layout changes */
    size_t header_len;
    uint64_t out_size;
    size_t *jobs;          /* in input offset order */
    size_t njobs;
    size_t task_lo, task_hi; /* its tasks, tasks[task_lo..task_hi) */
    atomic_size_t next;      /* the next of them to take */
} shard;

enum task_kind { T_COPY, T_BLOCK };

typedef struct task {
    enum task_kind kind;
    size_t shard;          /* T_COPY */
    uint64_t off, len;     /* T_COPY: the same offsets in and out */
    size_t job;            /* T_BLOCK */
    int64_t r0, r1;        /* T_BLOCK: rows */
} task;

typedef struct merge {
    const char *base_dir, *out_dir;
    const actl_merge_opts *o;
    actl_ckpt *ck;
    actl_base *base;
    actl_adapter **owned;  /* materialized MoS adapters, freed at the end */
    size_t nowned;
    job *jobs;             /* one per checkpoint tensor, by name */
    size_t njobs;
    shard *shards;
    size_t nshards;
    int same_layout;       /* no tensor changes dtype: headers and offsets are kept */
    int sharded;           /* the base has an index (and no model.safetensors) */
    char *index_text;      /* the rewritten index, or NULL to copy it */
    char *config_text;     /* the rewritten config.json, or NULL to copy it */
    task *tasks;
    size_t ntasks, tcap;
    uint64_t total_bytes;  /* tensor bytes to write */
    char *tmp_dir;
    char *model_type;      /* config.json's model_type, or NULL */
    int tied;              /* config.json's tie_word_embeddings is true */
    /* while the workers run */
    atomic_int failed;
    atomic_int finished;   /* the workers are done: the writeback thread stops */
    pthread_mutex_t wb_mu;
    pthread_cond_t wb_cv;
    atomic_ullong done_bytes;
    pthread_mutex_t err_mu;
    int err_rc;
    char *err_msg;
    double last_progress;
    actl_merge_result res;
} merge;

static const char *input_name(const actl_input *in)
{
    return in->ref ? in->ref : in->adapter->origin;
}

static int cmp_job_name(const void *key, const void *elem)
{
    return strcmp(key, ((const job *)elem)->t->name);
}

static job *find_job(merge *mg, const char *name)
{
    return mg->njobs ? bsearch(name, mg->jobs, mg->njobs, sizeof *mg->jobs, cmp_job_name) : NULL;
}

static int add_op(job *j, const op *x)
{
    op *p = actl__grow(j->ops, j->nops, &j->cap, sizeof *p, 4);
    if (!p)
        return actl__oom();
    j->ops = p;
    j->ops[j->nops++] = *x;
    return ACTL_OK;
}

/* Every tensor of a that no module holds: modules_to_save copies and trained
 * base biases. *out gets a malloc'd array of n (NULL when n is 0). */
static int passthrough(const actl_adapter *a, const actl_tensor ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!a->n_tensors)
        return ACTL_OK;
    bool *held = calloc(a->n_tensors, sizeof *held);
    const actl_tensor **list = NULL;
    if (!held)
        return actl__oom();
    for (size_t i = 0; i < a->n_modules; i++) {
        const actl__module *m = &a->modules[i];
        const actl_tensor *ts[] = {m->lora_a, m->lora_b, m->lora_bias, m->magnitude,
                                   m->road_theta, m->road_alpha, m->down, m->up, m->scaling,
                                   m->index_a, m->index_b, m->pool_a, m->pool_b};
        for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++)
            for (size_t t = 0; ts[k] && t < a->n_tensors; t++)
                if (a->tensors[t] == ts[k]) {
                    held[t] = true;
                    break;
                }
    }
    size_t cnt = 0;
    for (size_t t = 0; t < a->n_tensors; t++)
        cnt += !held[t];
    if (cnt && !(list = malloc(cnt * sizeof *list))) {
        free(held);
        return actl__oom();
    }
    for (size_t t = 0; t < a->n_tensors; t++)
        if (!held[t])
            list[(*n)++] = a->tensors[t];
    free(held);
    *out = list;
    return ACTL_OK;
}

/* The base tensor a pass-through key stands for: the PEFT prefix dropped, and
 * PEFT's wrappers (".modules_to_save.<adapter>.", ".base_layer.") removed. */
static char *passthrough_target(const char *key)
{
    size_t pl = strlen(ACTL_PEFT_PREFIX);
    const char *rest = strncmp(key, ACTL_PEFT_PREFIX, pl) ? key : key + pl;
    char *s = strdup(rest);
    if (!s)
        return NULL;
    char *p;
    if ((p = strstr(s, ".modules_to_save."))) {
        char *after = strchr(p + strlen(".modules_to_save."), '.');
        if (after)
            memmove(p, after, strlen(after) + 1);
    }
    while ((p = strstr(s, ".base_layer.")))
        memmove(p, p + strlen(".base_layer"), strlen(p + strlen(".base_layer")) + 1);
    return s;
}

static int need_float_target(const actl_input *in, const job *j)
{
    actl_dtype dt = j->t->dtype;
    if (dt == ACTL_F32 || dt == ACTL_F16 || dt == ACTL_BF16 || dt == ACTL_F64)
        return ACTL_OK;
    return actl__err(ACTL_EUNSUPPORTED, "'%s': base tensor '%s' is %s, not a floating-point type",
                     input_name(in), j->t->name, actl_dtype_name(dt));
}

/* The ops of one LoRA (or materialized MoS) module. */
static int plan_lora(merge *mg, const actl_input *in, const actl_adapter *a,
                     const actl__module *m, double sign)
{
    int rc;
    const actl_module_info *mi = &m->info;
    char *wname = actl__strdup_printf("%s.weight", mi->name);
    char *bname = actl__strdup_printf("%s.bias", mi->name);
    if (!wname || !bname) {
        rc = actl__oom();
        goto out;
    }
    job *j = find_job(mg, wname);
    if (!j) { /* validate found the module, so this is a base without "<module>.weight" */
        rc = actl__err(ACTL_ENOTFOUND, "'%s': module '%s': the base has no tensor '%s'",
                       input_name(in), mi->name, wname);
        goto out;
    }
    if ((rc = need_float_target(in, j)))
        goto out;
    op x;
    memset(&x, 0, sizeof x);
    x.kind = (mi->flags & ACTL_MOD_DORA) ? OP_DORA : OP_LORA;
    x.mapped = a->st && !a->owns_tensors;
    x.m = m;
    x.in = in;
    x.w = in->weight;
    x.alpha = sign * in->weight * mi->scale;
    /* PEFT follows the base layer, not fan_in_fan_out: see actl__module_stores_in_out */
    x.transposed = (mi->flags & ACTL_MOD_EMBEDDING) ||
                   actl__module_stores_in_out(mg->model_type, mi->name);
    x.r = mi->rank;
    if (!(fabs(x.alpha) <= FLT_MAX)) {
        rc = actl__err(ACTL_EINVAL, "'%s': module '%s': weight %g times the module's scale %g "
                       "is %g, beyond the float range: every merged weight would be infinite",
                       input_name(in), mi->name, in->weight, mi->scale, fabs(x.alpha));
        goto out;
    }
    if (x.kind == OP_DORA && x.transposed)
        j->whole = 1;
    if ((rc = add_op(j, &x)))
        goto out;
    if (mi->flags & ACTL_MOD_BIAS) {
        job *b = find_job(mg, bname);
        if (!b) {
            rc = actl__err(ACTL_ENOTFOUND,
                           "'%s': module '%s' has a lora_B.bias, but the base has no '%s' to add "
                           "it to", input_name(in), mi->name, bname);
            goto out;
        }
        if (b->t->ndim != 1 || b->t->shape[0] != mi->out_features) {
            char sh[64];
            rc = actl__err(ACTL_ESHAPE, "'%s': module '%s': lora_B.bias has %lld outputs, the "
                           "base's '%s' is %s", input_name(in), mi->name,
                           (long long)mi->out_features, bname, actl__shape_str(b->t, sh, sizeof sh));
            goto out;
        }
        if ((rc = need_float_target(in, b)))
            goto out;
        memset(&x, 0, sizeof x);
        x.kind = OP_BIAS;
        x.m = m;
        x.in = in;
        x.w = in->weight;
        x.alpha = sign * in->weight * mi->scale;
        rc = add_op(b, &x);
    }
out:
    free(wname);
    free(bname);
    return rc;
}

/* The ops of one RoAd module: its weight rows and, when the base has one, its bias. */
static int plan_road(merge *mg, const actl_input *in, const actl_adapter *a,
                     const actl__module *m)
{
    int rc = ACTL_OK;
    const actl_module_info *mi = &m->info;
    double *c = NULL, *s = NULL, *c2 = NULL, *s2 = NULL;
    char *wname = actl__strdup_printf("%s.weight", mi->name);
    char *bname = actl__strdup_printf("%s.bias", mi->name);
    char *what = actl__strdup_printf("'%s': module '%s'", input_name(in), mi->name);
    int64_t out = actl__road_out(a, m);
    if (!wname || !bname || !what) {
        rc = actl__oom();
        goto out;
    }
    job *j = find_job(mg, wname);
    if (!j) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s': module '%s': the base has no tensor '%s'",
                       input_name(in), mi->name, wname);
        goto out;
    }
    if ((rc = need_float_target(in, j)))
        goto out;
    if (out <= 0 || j->rows != out) {
        rc = actl__err(ACTL_ESHAPE, "'%s': module '%s': RoAd rotates %lld outputs, the base "
                       "weight '%s' has %lld rows", input_name(in), mi->name, (long long)out,
                       wname, (long long)j->rows);
        goto out;
    }
    if (!(c = malloc((size_t)out * sizeof *c)) || !(s = malloc((size_t)out * sizeof *s))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__road_coeffs(a, m, in->weight, c, s)))
        goto out;
    if (mg->o->unmerge && (rc = actl__road_invert(c, s, out, a->info.group_size, what)))
        goto out;
    job *b = find_job(mg, bname);
    if (b) {
        if (b->rows != out || b->cols != 1) {
            char sh[64];
            rc = actl__err(ACTL_ESHAPE, "'%s': module '%s': RoAd rotates %lld outputs, the base's "
                           "'%s' is %s", input_name(in), mi->name, (long long)out, bname,
                           actl__shape_str(b->t, sh, sizeof sh));
            goto out;
        }
        if ((rc = need_float_target(in, b)))
            goto out;
        if (!(c2 = malloc((size_t)out * sizeof *c2)) || !(s2 = malloc((size_t)out * sizeof *s2))) {
            rc = actl__oom();
            goto out;
        }
        memcpy(c2, c, (size_t)out * sizeof *c2);
        memcpy(s2, s, (size_t)out * sizeof *s2);
    }
    op x;
    memset(&x, 0, sizeof x);
    x.kind = OP_ROAD;
    x.m = m;
    x.in = in;
    x.w = in->weight;
    x.group = a->info.group_size;
    x.c = c;
    x.s = s;
    if ((rc = add_op(j, &x)))
        goto out;
    c = s = NULL;
    if (b) {
        x.c = c2;
        x.s = s2;
        if ((rc = add_op(b, &x)))
            goto out;
        c2 = s2 = NULL;
    }
out:
    free(c);
    free(s);
    free(c2);
    free(s2);
    free(wname);
    free(bname);
    free(what);
    return rc;
}

/* Whole tensors an adapter carries replace the base's. */
static int plan_passthrough(merge *mg, const actl_input *in, const actl_adapter *a)
{
    const actl_tensor **list = NULL;
    size_t n = 0;
    char *target = NULL;
    int rc = passthrough(a, &list, &n);
    for (size_t i = 0; !rc && i < n; i++) {
        const actl_tensor *t = list[i];
        if (mg->o->unmerge) {
            rc = actl__err(ACTL_EUNSUPPORTED,
                           "'%s': tensor '%s' replaces a base tensor (modules_to_save or a "
                           "trained bias); the replaced values are not in the merged checkpoint, "
                           "so it cannot be unmerged", input_name(in), t->name);
            break;
        }
        free(target);
        if (!(target = passthrough_target(t->name))) {
            rc = actl__oom();
            break;
        }
        job *j = find_job(mg, target);
        if (!j) {
            rc = actl__err(ACTL_ENOTFOUND, "'%s': tensor '%s' replaces '%s', which the base does "
                           "not have", input_name(in), t->name, target);
            break;
        }
        bool same = t->ndim == j->t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == j->t->shape[d];
        if (!same) {
            char s1[64], s2[64];
            rc = actl__err(ACTL_ESHAPE, "'%s': tensor '%s' is %s, the base's '%s' is %s",
                           input_name(in), t->name, actl__shape_str(t, s1, sizeof s1), target,
                           actl__shape_str(j->t, s2, sizeof s2));
            break;
        }
        if (!actl__is_float(t->dtype)) {
            rc = actl__err(ACTL_EUNSUPPORTED, "'%s': tensor '%s' is %s, not a floating-point type",
                           input_name(in), t->name, actl_dtype_name(t->dtype));
            break;
        }
        if ((rc = need_float_target(in, j)))
            break;
        op x;
        memset(&x, 0, sizeof x);
        x.kind = OP_REPLACE;
        x.src = t;
        x.in = in;
        x.mapped = a->st && !a->owns_tensors;
        x.w = in->weight;
        rc = add_op(j, &x);
    }
    free(target);
    free(list);
    return rc;
}

/* What config.json says about the layers' layout: model_type (Conv1D
 * families store [in, out]) and tie_word_embeddings. No config.json: an
 * untied nn.Linear model, as actl_base_load accepts a bare checkpoint. */
static int read_config(merge *mg)
{
    int rc = ACTL_OK;
    char *text = NULL;
    size_t len;
    json_t *root = NULL;
    char *path = actl__path_join(mg->base_dir, CONFIG_NAME);
    if (!path)
        return actl__oom();
    if (!actl__exists(path))
        goto out;
    if ((rc = actl__read_file(path, ACTL_CONFIG_LIMIT, &text, &len)) ||
        (rc = actl__json_parse(text, len, path, &root)))
        goto out;
    if (!json_is_object(root)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': not a JSON object", path);
        goto out;
    }
    json_t *mt = json_object_get(root, "model_type");
    if (json_is_string(mt) && !(mg->model_type = strdup(json_string_value(mt)))) {
        rc = actl__oom();
        goto out;
    }
    mg->tied = json_is_true(json_object_get(root, "tie_word_embeddings"));
out:
    json_decref(root);
    free(text);
    free(path);
    return rc;
}

/* The input embedding table or the output head: one matrix when tied. */
static bool is_tied_tensor(const char *name)
{
    static const char *const names[] = {"embed_tokens.weight", "wte.weight",
                                        "word_embeddings.weight", "lm_head.weight",
                                        "embed_out.weight", NULL};
    size_t l = strlen(name);
    for (size_t i = 0; names[i]; i++) {
        size_t k = strlen(names[i]);
        if (l >= k && !strcmp(name + l - k, names[i]) && (l == k || name[l - k - 1] == '.'))
            return true;
    }
    return false;
}

/* A base with tie_word_embeddings has one matrix for the input embeddings
 * and the output head (a checkpoint often stores it once). PEFT applies an
 * adapter on one of them only at run time; folded into the shared matrix,
 * the change reaches both (or, when the checkpoint keeps two copies, the
 * loader re-ties them and throws one away). */
static int check_tied(const merge *mg)
{
    if (!mg->tied || mg->o->force)
        return ACTL_OK;
    for (size_t i = 0; i < mg->njobs; i++) {
        const job *j = &mg->jobs[i];
        bool named = is_tied_tensor(j->t->name);
        for (size_t k = 0; k < j->nops; k++)
            if (named || (j->ops[k].m && (j->ops[k].m->info.flags & ACTL_MOD_EMBEDDING)))
                return actl__err(ACTL_EINVAL,
                                 "'%s': the base '%s' ties its input embeddings to its output head "
                                 "(tie_word_embeddings), so '%s' is one matrix used twice; the "
                                 "adapter changes only one of the two uses, and merged it would "
                                 "change both (or be dropped when the loader ties them again), "
                                 "which is not what the adapter computes (--force merges anyway)",
                                 input_name(j->ops[k].in), mg->base_dir, j->t->name);
    }
    return ACTL_OK;
}

/* The index of the first element at or after `from` of n elements of dtype dt
 * at p whose exponent bits are all ones (an infinity or a NaN), or n. Bits,
 * not isfinite: the bytes may be unaligned, and no conversion is needed.
 * Runs of 256 are tested without a branch per element (the compiler
 * vectorizes that), since every merged block goes through here. */
#define NONFINITE_SCAN(T, MASK)                                                    \
    for (size_t i = from; i < n;) {                                                \
        size_t end = n - i > 256 ? i + 256 : n;                                    \
        unsigned any = 0;                                                          \
        for (size_t k = i; k < end; k++) {                                         \
            T u;                                                                   \
            memcpy(&u, b + sizeof(T) * k, sizeof(T));                              \
            any |= (u & (MASK)) == (MASK);                                         \
        }                                                                          \
        if (any)                                                                   \
            for (size_t k = i; k < end; k++) {                                     \
                T u;                                                               \
                memcpy(&u, b + sizeof(T) * k, sizeof(T));                          \
                if ((u & (MASK)) == (MASK))                                        \
                    return k;                                                      \
            }                                                                      \
        i = end;                                                                   \
    }
static size_t next_nonfinite(actl_dtype dt, const void *p, size_t n, size_t from)
{
    const unsigned char *b = p;
    switch (dt) {
    case ACTL_F32: NONFINITE_SCAN(uint32_t, 0x7f800000u) break;
    case ACTL_F16: NONFINITE_SCAN(uint16_t, 0x7c00u) break;
    case ACTL_BF16: NONFINITE_SCAN(uint16_t, 0x7f80u) break;
    case ACTL_F64: NONFINITE_SCAN(uint64_t, 0x7ff0000000000000ull) break;
    default: break;
    }
    return n;
}
#undef NONFINITE_SCAN

/* An infinity or NaN in an adapter tensor would spread through every merged
 * row it touches; refused once here rather than found element by element. */
static int check_finite(const actl_input *in, const actl_adapter *a)
{
    for (size_t t = 0; t < a->n_tensors; t++) {
        const actl_tensor *x = a->tensors[t];
        if (!actl__is_float(x->dtype))
            continue;
        size_t i = next_nonfinite(x->dtype, x->data, (size_t)x->numel, 0);
        if (i < (size_t)x->numel)
            return actl__err(ACTL_EINVAL, "'%s': tensor '%s' holds a non-finite value (%g at "
                             "element %zu); merging it would make the weights it touches "
                             "infinite or NaN", input_name(in), x->name,
                             actl__tensor_get_f64(x, i), i);
    }
    return ACTL_OK;
}

/* Checks one input and adds its ops. */
static int plan_input(merge *mg, const actl_input *in)
{
    int rc;
    const actl_adapter *a = in->adapter;
    if (!a)
        return actl__err(ACTL_EINVAL, "merge: input '%s' has no adapter",
                         in->ref ? in->ref : "?");
    if (!isfinite(in->weight))
        return actl__err(ACTL_EINVAL, "'%s': weight %g is not a finite number", input_name(in),
                         in->weight);
    if ((rc = check_finite(in, a)))
        return rc;
    switch (a->info.kind) {
    case ACTL_KIND_BOTTLENECK:
        return actl__err(ACTL_EUNSUPPORTED,
                         "'%s': bottleneck adapters cannot be merged: their activation makes them "
                         "non-linear in the input, so no weight matrix equals them; they run "
                         "unmerged in the decoder", input_name(in));
    case ACTL_KIND_MOS: {
        actl_adapter *mat = NULL;
        if ((rc = actl_adapter_materialize(a, &mat)))
            return actl__err_wrap(rc, "'%s'", input_name(in));
        mg->owned[mg->nowned++] = mat;
        a = mat;
        break;
    }
    case ACTL_KIND_LORA:
    case ACTL_KIND_ROAD:
        break;
    default:
        return actl__err(ACTL_EUNSUPPORTED, "'%s': a %s cannot be merged as one adapter (expand "
                         "it into its members)", input_name(in),
                         actl_kind_name(a->info.kind) ? actl_kind_name(a->info.kind) : "kind");
    }
    const char *want = a->info.base_model, *have = actl_base_model_id(mg->base);
    if (want && have && !actl__same_model(want, have) && !mg->o->force)
        return actl__err(ACTL_EINVAL,
                         "'%s' was trained on '%s', but the base '%s' is '%s' (--force merges "
                         "anyway)", input_name(in), want, mg->base_dir, have);
    if ((rc = actl__adapter_validate_for(a, mg->base, mg->model_type)))
        return rc;
    if (mg->o->unmerge && a->info.kind == ACTL_KIND_LORA)
        for (size_t i = 0; i < a->n_modules; i++)
            if (a->modules[i].info.flags & ACTL_MOD_DORA)
                return actl__err(ACTL_EUNSUPPORTED,
                                 "'%s': module '%s': DoRA cannot be unmerged: its row scaling "
                                 "m / ||W + sBA|| depends on the original W, and the merged "
                                 "weight alone does not give back that row norm",
                                 input_name(in), a->modules[i].info.name);
    if ((rc = plan_passthrough(mg, in, a)))
        return rc;
    for (size_t i = 0; i < a->n_modules; i++) {
        const actl__module *m = &a->modules[i];
        rc = a->info.kind == ACTL_KIND_ROAD ? plan_road(mg, in, a, m)
                                            : plan_lora(mg, in, a, m, mg->o->unmerge ? -1 : 1);
        if (rc)
            return rc;
    }
    return ACTL_OK;
}

/* ---- layout --------------------------------------------------------------- */

static actl_dtype out_dtype(const merge *mg, actl_dtype dt)
{
    return mg->o->dtype >= 0 && actl__is_float(dt) ? (actl_dtype)mg->o->dtype : dt;
}

static int cmp_u64(uint64_t a, uint64_t b) { return a < b ? -1 : a > b; }

static int cmp_job_offset(const void *x, const void *y, void *ctx)
{
    const merge *mg = ctx;
    const job *a = &mg->jobs[*(const size_t *)x], *b = &mg->jobs[*(const size_t *)y];
    return cmp_u64(a->in_off, b->in_off);
}

/* Larger elements first, then the input order: every tensor stays aligned to
 * its element size, as the reference writer lays files out. */
static int cmp_job_layout(const void *x, const void *y, void *ctx)
{
    const merge *mg = ctx;
    const job *a = &mg->jobs[*(const size_t *)x], *b = &mg->jobs[*(const size_t *)y];
    size_t sa = actl_dtype_size(a->out_dt), sb = actl_dtype_size(b->out_dt);
    if (sa != sb)
        return sa > sb ? -1 : 1;
    return cmp_u64(a->in_off, b->in_off);
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off, const char *path)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return actl__err(ACTL_EIO, "cannot read '%s': %s", path,
                             r < 0 ? strerror(errno) : "file shrank while reading");
        got += (size_t)r;
    }
    return ACTL_OK;
}

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return actl__err(ACTL_EIO, "cannot write '%s': %s", path, strerror(errno));
        done += (size_t)r;
    }
    return ACTL_OK;
}

/* A shard's new header when dtypes change: the input's JSON with each tensor's
 * dtype and data_offsets replaced, __metadata__ kept, padded with spaces so
 * that the data starts 8-byte aligned. */
static int build_header(merge *mg, shard *sh)
{
    int rc = ACTL_OK;
    char *text = NULL, *dump = NULL, *what = NULL;
    json_t *root = NULL, *out = NULL;
    uint64_t n = sh->in_hdr - 8;
    if (!(text = malloc((size_t)n + 1)) ||
        !(what = actl__strdup_printf("'%s': header", sh->in_path))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = pread_all(sh->in_fd, text, (size_t)n, 8, sh->in_path)))
        goto out;
    text[n] = '\0';
    if ((rc = actl__json_parse(text, (size_t)n, what, &root)))
        goto out;
    if (!(out = json_object())) {
        rc = actl__oom();
        goto out;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta && json_object_set(out, "__metadata__", meta)) {
        rc = actl__oom();
        goto out;
    }
    uint64_t off = 0;
    for (size_t k = 0; k < sh->njobs; k++) {
        job *j = &mg->jobs[sh->jobs[k]];
        json_t *e = json_object_get(root, j->t->name);
        uint64_t nb = (uint64_t)j->t->numel * actl_dtype_size(j->out_dt);
        json_t *ne = e ? json_deep_copy(e) : NULL;
        int bad = !ne || json_object_set_new(out, j->t->name, ne) ||
                  json_object_set_new(ne, "dtype", json_string(actl_dtype_name(j->out_dt))) ||
                  json_object_set_new(ne, "data_offsets",
                                      json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
        if (bad) {
            rc = e ? actl__oom()
                   : actl__err(ACTL_EFORMAT, "'%s': tensor '%s' is not in the header",
                               sh->in_path, j->t->name);
            goto out;
        }
        j->out_off = off; /* relative to the data section until the header size is known */
        off += nb;
    }
    if (!(dump = actl__json_dump(out, -1))) {
        rc = actl__oom();
        goto out;
    }
    size_t dl = strlen(dump), pad = (8 - (8 + dl) % 8) % 8;
    sh->header_len = 8 + dl + pad;
    if (!(sh->header = malloc(sh->header_len))) {
        rc = actl__oom();
        goto out;
    }
    uint64_t hl = dl + pad;
    for (int i = 0; i < 8; i++)
        sh->header[i] = (char)(hl >> (8 * i));
    memcpy(sh->header + 8, dump, dl);
    memset(sh->header + 8 + dl, ' ', pad);
    for (size_t k = 0; k < sh->njobs; k++)
        mg->jobs[sh->jobs[k]].out_off += sh->header_len;
    sh->out_size = sh->header_len + off;
out:
    free(text);
    free(dump);
    free(what);
    json_decref(root);
    json_decref(out);
    return rc;
}

/* Opens every input shard, finds each tensor's offset in its file, and lays
 * the output files out. */
static int plan_layout(merge *mg)
{
    int rc = ACTL_OK;
    size_t ns = actl_ckpt_shard_count(mg->ck);
    if (!(mg->shards = calloc(ns ? ns : 1, sizeof *mg->shards)))
        return actl__oom();
    mg->nshards = 0;
    for (size_t i = 0; i < mg->njobs; i++) {
        const char *name = actl_ckpt_shard_of(mg->ck, i);
        size_t s = 0;
        while (s < mg->nshards && strcmp(mg->shards[s].name, name))
            s++;
        if (s == mg->nshards) {
            shard *sh = &mg->shards[mg->nshards++];
            sh->name = name;
            sh->in_fd = sh->out_fd = -1;
        }
        mg->jobs[i].shard = s;
        mg->shards[s].njobs++;
    }
    mg->same_layout = 1;
    for (size_t i = 0; i < mg->njobs; i++) {
        mg->jobs[i].out_dt = out_dtype(mg, mg->jobs[i].t->dtype);
        if (mg->jobs[i].out_dt != mg->jobs[i].t->dtype)
            mg->same_layout = 0;
    }
    for (size_t s = 0; s < mg->nshards; s++) {
        shard *sh = &mg->shards[s];
        if (!(sh->jobs = malloc(sh->njobs * sizeof *sh->jobs)) ||
            !(sh->in_path = actl__path_join(mg->base_dir, sh->name))) {
            rc = actl__oom();
            goto out;
        }
        size_t k = 0;
        const unsigned char *lo = NULL;
        uint64_t data_len = 0;
        for (size_t i = 0; i < mg->njobs; i++)
            if (mg->jobs[i].shard == s) {
                sh->jobs[k++] = i;
                const unsigned char *p = mg->jobs[i].t->data;
                if (!lo || p < lo)
                    lo = p;
                data_len += mg->jobs[i].t->nbytes;
            }
        /* The tensors tile the data section from its first byte (the reader
         * checked), so the lowest address is the data section's start. */
        sh->data0 = lo;
        if ((rc = actl__open_regular(sh->in_path, &sh->in_fd, &sh->in_size)))
            goto out;
        unsigned char len8[8];
        if ((rc = pread_all(sh->in_fd, len8, 8, 0, sh->in_path)))
            goto out;
        uint64_t hl = 0;
        for (int b = 7; b >= 0; b--)
            hl = hl << 8 | len8[b];
        sh->in_hdr = 8 + hl;
        if (hl > ACTL_ST_MAX_HEADER || sh->in_hdr + data_len != sh->in_size) {
            rc = actl__err(ACTL_EIO, "'%s' changed since it was opened", sh->in_path);
            goto out;
        }
        for (k = 0; k < sh->njobs; k++) {
            job *j = &mg->jobs[sh->jobs[k]];
            j->in_off = sh->in_hdr + (uint64_t)((const unsigned char *)j->t->data - lo);
        }
        qsort_r(sh->jobs, sh->njobs, sizeof *sh->jobs, cmp_job_offset, mg);
        if (mg->same_layout) {
            for (k = 0; k < sh->njobs; k++)
                mg->jobs[sh->jobs[k]].out_off = mg->jobs[sh->jobs[k]].in_off;
            sh->out_size = sh->in_size;
        } else {
            qsort_r(sh->jobs, sh->njobs, sizeof *sh->jobs, cmp_job_layout, mg);
            if ((rc = build_header(mg, sh)))
                goto out;
        }
    }
out:
    return rc;
}

/* The index with its total_size updated, and config.json with its dtype, when
 * the output's dtype differs. */
static int plan_side_files(merge *mg)
{
    int rc = ACTL_OK;
    char *path = NULL, *text = NULL, *dump = NULL;
    size_t len;
    json_t *root = NULL;
    if (mg->sharded && !mg->same_layout) {
        uint64_t total = 0;
        for (size_t i = 0; i < mg->njobs; i++)
            total += (uint64_t)mg->jobs[i].t->numel * actl_dtype_size(mg->jobs[i].out_dt);
        if (!(path = actl__path_join(mg->base_dir, INDEX_NAME))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = actl__read_file(path, 64u << 20, &text, &len)) ||
            (rc = actl__json_parse(text, len, path, &root)))
            goto out;
        json_t *meta = json_object_get(root, "metadata");
        if (!json_is_object(meta)) {
            meta = json_object();
            if (!meta || json_object_set_new(root, "metadata", meta)) {
                rc = actl__oom();
                goto out;
            }
        }
        if (json_object_set_new(meta, "total_size", json_integer((json_int_t)total)) ||
            !(dump = actl__json_dump(root, 2)) ||
            !(mg->index_text = actl__strdup_printf("%s\n", dump))) {
            rc = actl__oom();
            goto out;
        }
        json_decref(root);
        root = NULL;
        free(text);
        text = NULL;
        free(dump);
        dump = NULL;
        free(path);
        path = NULL;
    }
    if (mg->o->dtype >= 0) {
        static const char *const torch_names[] = {[ACTL_F32] = "float32", [ACTL_F16] = "float16",
                                                  [ACTL_BF16] = "bfloat16"};
        const char *want = torch_names[mg->o->dtype];
        if (!(path = actl__path_join(mg->base_dir, CONFIG_NAME))) {
            rc = actl__oom();
            goto out;
        }
        if (!actl__exists(path))
            goto out;
        if ((rc = actl__read_file(path, ACTL_CONFIG_LIMIT, &text, &len)) ||
            (rc = actl__json_parse(text, len, path, &root)))
            goto out;
        if (!json_is_object(root)) {
            rc = actl__err(ACTL_EFORMAT, "'%s': not a JSON object", path);
            goto out;
        }
        /* transformers writes "torch_dtype", newer versions "dtype": set what is
         * there, "torch_dtype" when neither is. */
        bool changed = false, any = false;
        static const char *const keys[] = {"torch_dtype", "dtype"};
        for (size_t k = 0; k < 2; k++) {
            json_t *v = json_object_get(root, keys[k]);
            if (!v)
                continue;
            any = true;
            if (json_is_string(v) && !strcmp(json_string_value(v), want))
                continue;
            if (json_object_set_new(root, keys[k], json_string(want))) {
                rc = actl__oom();
                goto out;
            }
            changed = true;
        }
        if (!any) {
            if (json_object_set_new(root, "torch_dtype", json_string(want))) {
                rc = actl__oom();
                goto out;
            }
            changed = true;
        }
        if (changed && (!(dump = actl__json_dump(root, 2)) ||
                        !(mg->config_text = actl__strdup_printf("%s\n", dump)))) {
            rc = actl__oom();
            goto out;
        }
    }
out:
    json_decref(root);
    free(text);
    free(dump);
    free(path);
    return rc;
}

/* ---- tasks ---------------------------------------------------------------- */

static int add_task(merge *mg, const task *t)
{
    task *p = actl__grow(mg->tasks, mg->ntasks, &mg->tcap, sizeof *p, 256);
    if (!p)
        return actl__oom();
    mg->tasks = p;
    mg->tasks[mg->ntasks++] = *t;
    return ACTL_OK;
}

/* Copies [off, end) of a shard as COPY_CHUNK tasks. */
static int add_copy(merge *mg, size_t s, uint64_t off, uint64_t end)
{
    int rc = ACTL_OK;
    while (!rc && off < end) {
        uint64_t len = end - off < COPY_CHUNK ? end - off : COPY_CHUNK;
        task t = {T_COPY, s, off, len, 0, 0, 0};
        rc = add_task(mg, &t);
        off += len;
    }
    return rc;
}

/* Rows per block: whole groups of every RoAd op (pairs never straddle two
 * blocks), about BLOCK_ELEMS elements. */
static int64_t block_rows(const job *j)
{
    if (j->whole || j->rows <= 1)
        return j->rows > 0 ? j->rows : 1;
    int64_t unit = 1;
    for (size_t k = 0; k < j->nops; k++)
        if (j->ops[k].kind == OP_ROAD) {
            int64_t a = unit, b = j->ops[k].group;
            while (b) {
                int64_t t = a % b;
                a = b;
                b = t;
            }
            if (unit / a > j->rows / j->ops[k].group)
                return j->rows; /* the lcm passes the tensor: one block */
            unit = unit / a * j->ops[k].group;
        }
    int64_t per = (int64_t)BLOCK_ELEMS / (j->cols > 0 ? j->cols : 1);
    per = per / unit * unit;
    if (per < unit)
        per = unit;
    return per < j->rows ? per : j->rows;
}

static int plan_tasks(merge *mg)
{
    int rc = ACTL_OK;
    for (size_t s = 0; s < mg->nshards && !rc; s++) {
        shard *sh = &mg->shards[s];
        sh->task_lo = mg->ntasks;
        /* Runs of tensors that are copied as they are become one byte range. */
        uint64_t run = mg->same_layout ? 0 : UINT64_MAX, run_end = mg->same_layout ? sh->in_hdr : 0;
        for (size_t k = 0; k < sh->njobs && !rc; k++) {
            size_t ji = sh->jobs[k];
            job *j = &mg->jobs[ji];
            uint64_t nb = (uint64_t)j->t->numel * actl_dtype_size(j->out_dt);
            mg->total_bytes += nb;
            if (!j->nops)
                mg->res.tensors_copied++;
            else
                mg->res.tensors_merged++;
            if (!j->nops && j->out_dt == j->t->dtype && mg->same_layout) {
                if (run == UINT64_MAX)
                    run = j->in_off;
                run_end = j->in_off + nb;
                continue;
            }
            if (run != UINT64_MAX) {
                rc = add_copy(mg, s, run, run_end);
                run = UINT64_MAX;
            }
            /* Tensors that change dtype or place (a new layout) and merged ones go
             * through row blocks. */
            if (rc || j->t->numel == 0)
                continue;
            j->block = block_rows(j);
            int64_t nblocks = (j->rows + j->block - 1) / j->block;
            atomic_init(&j->left, nblocks);
            for (int64_t r0 = 0; r0 < j->rows && !rc; r0 += j->block) {
                task t = {T_BLOCK, s, 0, 0, ji, r0, r0 + j->block < j->rows ? r0 + j->block : j->rows};
                rc = add_task(mg, &t);
            }
        }
        if (!rc && run != UINT64_MAX)
            rc = add_copy(mg, s, run, run_end);
        sh->task_hi = mg->ntasks;
    }
    return rc;
}

/* ---- the kernels ---------------------------------------------------------- */

/* BF16 in and out of a block. x86-64's baseline instruction set (SSE2, what
 * the library is built for) has no 32-to-16-bit pack, which makes the
 * rounding loop a long shuffle sequence: a fifth of a whole merge's time.
 * GCC's target clones build AVX2 and AVX-512 versions too and pick one when
 * the library loads. The arithmetic is tensor.c's, element for element:
 * round to nearest, ties to even; NaN kept quiet. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define HOT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT_CLONES
#endif

HOT_CLONES static void widen_bf16(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

HOT_CLONES static void round_bf16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, &src[i], 4);
        uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
        uint32_t nan = (x >> 16) | 0x0040u;
        uint32_t is_nan = 0u - (uint32_t)((x & 0x7fffffffu) > 0x7f800000u);
        dst[i] = (uint16_t)((nan & is_nan) | (rounded & ~is_nan));
    }
}

/* Widens n elements of dtype dt at src (any alignment) into dst. */
static void to_f32(actl_dtype dt, const unsigned char *src, float *dst, size_t n, void *tmp)
{
    switch (dt) {
    case ACTL_F32:
        memcpy(dst, src, n * 4);
        break;
    case ACTL_F16:
    case ACTL_BF16: {
        const uint16_t *p = (const uint16_t *)(const void *)src;
        if ((uintptr_t)src % 2) {
            memcpy(tmp, src, n * 2);
            p = tmp;
        }
        if (dt == ACTL_F16)
            actl_f16_to_f32(p, dst, n);
        else
            widen_bf16(p, dst, n);
        break;
    }
    case ACTL_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    default:
        break;
    }
}

/* Rounds n floats once into dtype dt at dst (aligned scratch). */
static void from_f32(actl_dtype dt, const float *src, void *dst, size_t n)
{
    switch (dt) {
    case ACTL_F32: memcpy(dst, src, n * 4); break;
    case ACTL_F16: actl_f32_to_f16(src, dst, n); break;
    case ACTL_BF16: round_bf16(src, dst, n); break;
    case ACTL_F64:
        for (size_t i = 0; i < n; i++)
            ((double *)dst)[i] = src[i];
        break;
    default: break;
    }
}

/* Drops this process's mapping of the pages holding [p, p + n) of a mapped
 * file: the page cache keeps them, we stop counting them, so the peak RSS
 * stays near one block per thread. Nothing is ever written through these
 * private read-only mappings, so a neighbour block still being read (or an
 * adapter tensor read again) just faults its page back in. */
static void release_pages(const void *p, size_t n)
{
    static long page;
    if (!page)
        page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)p + n + (uintptr_t)page - 1) & ~(uintptr_t)(page - 1);
    if (n)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

static void free_prepared(job *j)
{
    for (size_t k = 0; k < j->nops; k++) {
        op *x = &j->ops[k];
        free(x->fa);
        free(x->fb);
        free(x->vec);
        x->fa = x->fb = NULL;
        x->vec = NULL;
    }
}

static float *tensor_f32(const actl_tensor *t)
{
    float *p = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *p);
    if (p && actl_tensor_to_f32(t, p) != ACTL_OK) {
        free(p);
        p = NULL;
    }
    return p;
}

static double *tensor_f64(const actl_tensor *t)
{
    double *p = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *p);
    if (p)
        for (int64_t i = 0; i < t->numel; i++)
            p[i] = actl__tensor_get_f64(t, (size_t)i);
    return p;
}

/* Widens the adapter tensors a job's ops need; once per job, under its lock. */
static int prepare(job *j)
{
    pthread_mutex_lock(&j->mu);
    if (!j->prepared) {
        j->prepared = 1;
        for (size_t k = 0; k < j->nops && !j->prep_rc; k++) {
            op *x = &j->ops[k];
            bool ok = true;
            switch (x->kind) {
            case OP_LORA:
            case OP_DORA:
                ok = (x->fa = tensor_f32(x->m->lora_a)) && (x->fb = tensor_f32(x->m->lora_b));
                if (ok && x->kind == OP_DORA)
                    ok = (x->vec = tensor_f64(x->m->magnitude)) != NULL;
                break;
            case OP_BIAS: ok = (x->vec = tensor_f64(x->m->lora_bias)) != NULL; break;
            case OP_REPLACE: /* widened a row block at a time by apply_op */
            case OP_ROAD: break;
            }
            if (!ok)
                j->prep_rc = actl__oom();
        }
        /* Widened copies made: the adapter's mapped bytes are not needed
         * (a large adapter would otherwise stay resident whole). */
        for (size_t k = 0; k < j->nops; k++) {
            const op *x = &j->ops[k];
            const actl_tensor *ts[] = {x->m ? x->m->lora_a : NULL, x->m ? x->m->lora_b : NULL};
            for (size_t i = 0; x->mapped && i < 2; i++)
                if (ts[i] && (x->kind == OP_LORA || x->kind == OP_DORA))
                    release_pages(ts[i]->data, ts[i]->nbytes);
        }
    }
    int rc = j->prep_rc;
    pthread_mutex_unlock(&j->mu);
    return rc;
}

/* x [n, cols]: rows r0.. of the job's tensor. Norms of V's output rows (the
 * columns when the base is transposed), then the DoRA scaling. */
static void dora_scale(const op *x, float *v, int64_t r0, int64_t n, int64_t cols)
{
    double w = x->w;
    if (!x->transposed) {
        for (int64_t i = 0; i < n; i++) {
            float *row = v + i * cols;
            double ss = 0;
            for (int64_t c = 0; c < cols; c++)
                ss += (double)row[c] * row[c];
            double norm = sqrt(ss);
            if (norm == 0)
                continue; /* a zero row stays zero whatever its scale */
            double f = (1 - w) + w * x->vec[r0 + i] / norm;
            for (int64_t c = 0; c < cols; c++)
                row[c] = (float)(row[c] * f);
        }
        return;
    }
    /* [in, out]: output p is column p; the block is the whole tensor */
    for (int64_t p = 0; p < cols; p++) {
        double ss = 0;
        for (int64_t i = 0; i < n; i++)
            ss += (double)v[i * cols + p] * v[i * cols + p];
        double norm = sqrt(ss);
        if (norm == 0)
            continue;
        double f = (1 - w) + w * x->vec[p] / norm;
        for (int64_t i = 0; i < n; i++)
            v[i * cols + p] = (float)(v[i * cols + p] * f);
    }
}

/* Per-thread buffers, grown on demand. */
typedef struct scratch {
    float *v;          /* the block in fp32 */
    void *tmp;         /* the block's input bytes, aligned, or its output bytes */
    float *src;        /* OP_REPLACE: the adapter's rows of the block in fp32 */
    size_t cap_v, cap_tmp, cap_src;
} scratch;

/* Applies one op to rows [r0, r0 + n) of the job's tensor held in v [n, cols].
 * sc->src has room for n * cols floats, sc->tmp for n * cols 8-byte elements
 * (free between the widening of the block and its rounding). */
static void apply_op(const job *j, const op *x, float *v, int64_t r0, int64_t n, scratch *sc)
{
    int64_t cols = j->cols;
    switch (x->kind) {
    case OP_LORA:
    case OP_DORA:
        if (!x->transposed) {
            /* W [out, in] rows r0..: += alpha B[r0.., :] [n, r] . A [r, in] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)cols, (int)x->r,
                        (float)x->alpha, x->fb + r0 * x->r, (int)x->r, x->fa, (int)cols, 1.0f, v,
                        (int)cols);
        } else {
            /* W [in, out] rows r0..: += alpha A^T[r0.., :] [n, r] . B^T [r, out]; A is [r, rows] */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)n, (int)cols, (int)x->r,
                        (float)x->alpha, x->fa + r0, (int)j->rows, x->fb, (int)x->r, 1.0f, v,
                        (int)cols);
        }
        if (x->kind == OP_DORA)
            dora_scale(x, v, r0, n, cols);
        break;
    case OP_BIAS:
        /* b [out]: one element per row */
        for (int64_t i = 0; i < n * cols; i++)
            v[i] = (float)((double)v[i] + x->alpha * x->vec[r0 + i]);
        break;
    case OP_ROAD:
        /* RoAd merge, DESIGN.md 3.2: rows paired within whole groups of this block */
        actl__road_rotate_rows(x->c + r0, x->s + r0, n, x->group, v, cols);
        break;
    case OP_REPLACE: {
        /* Only this block's rows of S are widened: a replaced lm_head costs a
         * block per worker, like the other ops, not a whole fp32 copy. */
        size_t cnt = (size_t)(n * cols), es = actl_dtype_size(x->src->dtype);
        const unsigned char *rows =
            (const unsigned char *)x->src->data + (size_t)r0 * (size_t)cols * es;
        to_f32(x->src->dtype, rows, sc->src, cnt, sc->tmp);
        if (x->w == 1.0)
            memcpy(v, sc->src, cnt * sizeof *v);
        else
            for (size_t i = 0; i < cnt; i++)
                v[i] = (float)((1 - x->w) * v[i] + x->w * sc->src[i]);
        if (x->mapped)
            release_pages(rows, cnt * es);
        break;
    }
    }
}

static int grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return ACTL_OK;
    void *q = NULL;
    if (posix_memalign(&q, 64, need))
        return actl__oom();
    free(*p);
    *p = q;
    *cap = need;
    return ACTL_OK;
}

/* When a tensor's last block is done: its pages and a margin on both sides,
 * within the shard's mapping. Faults map whole (large) folios around the
 * address they hit, so pages past a block's ends, in tensors that are only
 * copied (never read through the mapping), would otherwise stay counted. */
#define RELEASE_MARGIN (2u << 20)
static void release_tensor(const shard *sh, const actl_tensor *t)
{
    const unsigned char *lo = sh->data0 - sh->in_hdr, *hi = lo + sh->in_size;
    const unsigned char *a = t->data, *b = a + t->nbytes;
    a = (size_t)(a - lo) > RELEASE_MARGIN ? a - RELEASE_MARGIN : lo;
    b = (size_t)(hi - b) > RELEASE_MARGIN ? b + RELEASE_MARGIN : hi;
    release_pages(a, (size_t)(b - a));
}

/* An element finite in the base must stay finite: a weight too large, or a
 * value past the output dtype's range (F16 tops out at 65504), would
 * otherwise write infinities or NaN silently. Elements the base already
 * held non-finite pass as they are. v is the block in fp32 after the ops,
 * out the bytes to write. */
static int check_block(const job *j, const unsigned char *in, const float *v, const void *out,
                       int64_t r0, size_t cnt)
{
    size_t ies = actl_dtype_size(j->t->dtype);
    for (size_t i = next_nonfinite(j->out_dt, out, cnt, 0); i < cnt;
         i = next_nonfinite(j->out_dt, out, cnt, i + 1)) {
        if (next_nonfinite(j->t->dtype, in + i * ies, 1, 0) == 0)
            continue;
        int64_t e = r0 * j->cols + (int64_t)i;
        char what[160];
        /* the base was finite: a non-finite fp32 value came from the ops */
        if (!isfinite(v[i]))
            snprintf(what, sizeof what, "the adapters' changes, past the float range");
        else
            snprintf(what, sizeof what, "rounding %g to %s", (double)v[i],
                     actl_dtype_name(j->out_dt));
        return actl__err(ACTL_EINVAL, "merge: tensor '%s': element %lld (row %lld) is finite in "
                         "the base but not after %s; nothing was written", j->t->name,
                         (long long)e, (long long)(e / (j->cols ? j->cols : 1)), what);
    }
    return ACTL_OK;
}

static int run_block(merge *mg, const task *t, scratch *sc)
{
    int rc;
    job *j = &mg->jobs[t->job];
    shard *sh = &mg->shards[j->shard];
    int64_t n = t->r1 - t->r0;
    size_t cnt = (size_t)(n * j->cols);
    size_t ies = actl_dtype_size(j->t->dtype), oes = actl_dtype_size(j->out_dt);
    if (j->nops && (rc = prepare(j)))
        return rc;
    if ((rc = grow((void **)&sc->v, &sc->cap_v, cnt * sizeof(float))) ||
        (rc = grow(&sc->tmp, &sc->cap_tmp, cnt * (ies > oes ? ies : oes))))
        return rc;
    for (size_t k = 0; k < j->nops; k++)
        if (j->ops[k].kind == OP_REPLACE &&
            (rc = grow((void **)&sc->src, &sc->cap_src, cnt * sizeof(float))))
            return rc;
    const unsigned char *src = (const unsigned char *)j->t->data + (size_t)t->r0 * (size_t)j->cols * ies;
    if (!actl__is_float(j->t->dtype)) {
        /* integers and bools are only moved (a new layout) */
        rc = pwrite_all(sh->out_fd, src, cnt * ies, j->out_off + (uint64_t)t->r0 * (uint64_t)j->cols * ies,
                        sh->out_path);
    } else {
        to_f32(j->t->dtype, src, sc->v, cnt, sc->tmp);
        for (size_t k = 0; k < j->nops; k++)
            apply_op(j, &j->ops[k], sc->v, t->r0, n, sc);
        const void *bytes = sc->v; /* F32 goes out as it is */
        if (j->out_dt != ACTL_F32) {
            from_f32(j->out_dt, sc->v, sc->tmp, cnt);
            bytes = sc->tmp;
        }
        rc = check_block(j, src, sc->v, bytes, t->r0, cnt);
        uint64_t off = j->out_off + (uint64_t)t->r0 * (uint64_t)j->cols * oes;
        if (!rc)
            rc = pwrite_all(sh->out_fd, bytes, cnt * oes, off, sh->out_path);
    }
    release_pages(src, cnt * ies);
    if (atomic_fetch_sub(&j->left, 1) == 1) {
        free_prepared(j);
        release_tensor(sh, j->t);
    }
    if (!rc)
        atomic_fetch_add(&mg->done_bytes, (unsigned long long)(cnt * oes));
    return rc;
}

/* copy_file_range keeps the bytes in the kernel; where it is not offered
 * (another file system, an old kernel) read and write do. */
static int copy_range(int in, int out, uint64_t off_in, uint64_t off_out, uint64_t len,
                      const char *in_path, const char *out_path, void *buf, size_t cap)
{
    bool fallback = false;
    while (len) {
        if (!fallback) {
            loff_t a = (loff_t)off_in, b = (loff_t)off_out;
            ssize_t r = copy_file_range(in, &a, out, &b, (size_t)len, 0);
            if (r > 0) {
                off_in += (uint64_t)r;
                off_out += (uint64_t)r;
                len -= (uint64_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (r == 0)
                return actl__err(ACTL_EIO, "cannot read '%s': file shrank while reading", in_path);
            if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP &&
                errno != EBADF && errno != EPERM)
                return actl__err(ACTL_EIO, "cannot copy '%s' to '%s': %s", in_path, out_path,
                                 strerror(errno));
            fallback = true;
        }
        size_t n = len < cap ? (size_t)len : cap;
        int rc;
        if ((rc = pread_all(in, buf, n, off_in, in_path)) ||
            (rc = pwrite_all(out, buf, n, off_out, out_path)))
            return rc;
        off_in += n;
        off_out += n;
        len -= n;
    }
    return ACTL_OK;
}

static int run_copy(merge *mg, const task *t, scratch *sc)
{
    shard *sh = &mg->shards[t->shard];
    int rc = grow(&sc->tmp, &sc->cap_tmp, 1u << 20);
    if (!rc)
        rc = copy_range(sh->in_fd, sh->out_fd, t->off, t->off, t->len, sh->in_path, sh->out_path,
                        sc->tmp, sc->cap_tmp);
    if (!rc) {
        /* bytes of tensors only: the header is not counted in the total */
        uint64_t lo = t->off > sh->in_hdr ? t->off : sh->in_hdr;
        uint64_t hi = t->off + t->len;
        if (hi > lo)
            atomic_fetch_add(&mg->done_bytes, (unsigned long long)(hi - lo));
    }
    return rc;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool cancelled(const merge *mg)
{
    return mg->o->cancel && *mg->o->cancel;
}

static int interrupted(const merge *mg)
{
    return actl__err(ACTL_EIO, "merge into '%s' interrupted; nothing was written", mg->out_dir);
}

typedef struct worker {
    merge *mg;
    int main;     /* the calling thread: the only one that reports progress */
    size_t index;
    pthread_t th;
} worker;

/* Starts writeback of what the workers wrote, every 50 ms, so that the final
 * fsync finds little left to do. A thread of its own: sync_file_range waits
 * when the device's queue is full, and the workers must not. */
static void *writeback(void *arg)
{
    merge *mg = arg;
    pthread_mutex_lock(&mg->wb_mu);
    while (!atomic_load(&mg->finished)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&mg->wb_cv, &mg->wb_mu, &ts);
        if (atomic_load(&mg->finished))
            break;
        pthread_mutex_unlock(&mg->wb_mu);
        for (size_t s = 0; s < mg->nshards; s++)
            sync_file_range(mg->shards[s].out_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        pthread_mutex_lock(&mg->wb_mu);
    }
    pthread_mutex_unlock(&mg->wb_mu);
    return NULL;
}

static void *work(void *arg)
{
    worker *w = arg;
    merge *mg = w->mg;
    scratch sc = {0};
    /* Each worker starts on its own shard and then helps where most is left:
     * ext4 holds a file's lock through a whole buffered write, so two
     * threads writing one file take turns, two files go side by side. */
    size_t s = mg->nshards ? w->index % mg->nshards : 0;
    for (;;) {
        if (atomic_load(&mg->failed) || !mg->nshards)
            break;
        size_t i = atomic_fetch_add(&mg->shards[s].next, 1);
        if (i >= mg->shards[s].task_hi) {
            size_t best = SIZE_MAX, most = 0;
            for (size_t k = 0; k < mg->nshards; k++) {
                size_t nx = atomic_load(&mg->shards[k].next), hi = mg->shards[k].task_hi;
                if (nx < hi && hi - nx > most) {
                    most = hi - nx;
                    best = k;
                }
            }
            if (best == SIZE_MAX)
                break;
            s = best;
            continue;
        }
        const task *t = &mg->tasks[i];
        /* polled per task: a block or a copy chunk takes milliseconds */
        int rc = cancelled(mg) ? interrupted(mg)
                 : t->kind == T_COPY ? run_copy(mg, t, &sc) : run_block(mg, t, &sc);
        if (rc) {
            /* Messages are per thread: keep the first failure's for the caller. */
            pthread_mutex_lock(&mg->err_mu);
            if (!mg->err_rc) {
                mg->err_rc = rc;
                mg->err_msg = strdup(actl_errmsg());
            }
            pthread_mutex_unlock(&mg->err_mu);
            atomic_store(&mg->failed, 1);
            break;
        }
        if (w->main && mg->o->progress) {
            double t_now = now_seconds();
            if (t_now - mg->last_progress >= 0.1) {
                mg->last_progress = t_now;
                mg->o->progress(atomic_load(&mg->done_bytes), mg->total_bytes,
                                mg->o->progress_ctx);
            }
        }
    }
    free(sc.v);
    free(sc.tmp);
    free(sc.src);
    return NULL;
}

static int run_tasks(merge *mg)
{
    int rc = ACTL_OK;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = mg->o->threads > 0 ? mg->o->threads : (ncpu > 0 ? (int)ncpu : 1);
    if (nt > 64)
        nt = 64;
    if ((size_t)nt > mg->ntasks)
        nt = mg->ntasks ? (int)mg->ntasks : 1;
    worker *ws = calloc((size_t)nt, sizeof *ws);
    if (!ws)
        return actl__oom();
    for (size_t s = 0; s < mg->nshards; s++)
        atomic_init(&mg->shards[s].next, mg->shards[s].task_lo);
    atomic_init(&mg->failed, 0);
    atomic_init(&mg->finished, 0);
    pthread_t wb;
    bool wb_started = pthread_create(&wb, NULL, writeback, mg) == 0;
    atomic_init(&mg->done_bytes, 0);
    mg->last_progress = now_seconds();
    /* The workers are the parallelism: OpenBLAS's own pool, spinning for
     * the same cores, halves what they get done; and with one sgemm per
     * block on one thread, the output bytes do not depend on the number of
     * workers. Its thread count is process state (OpenBLAS 0.3.21 has no
     * per-call setting), so it is put back at the end; a BLAS call elsewhere
     * in the process meanwhile runs single-threaded: slower, never wrong. */
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    int started = 0;
    for (int i = 1; i < nt; i++) {
        ws[i].mg = mg;
        ws[i].index = (size_t)i;
        if (pthread_create(&ws[i].th, NULL, work, &ws[i]) != 0)
            break; /* fewer threads: the work still gets done */
        started = i;
    }
    ws[0].mg = mg;
    ws[0].main = 1;
    work(&ws[0]);
    for (int i = 1; i <= started; i++)
        pthread_join(ws[i].th, NULL);
    if (wb_started) {
        pthread_mutex_lock(&mg->wb_mu);
        atomic_store(&mg->finished, 1);
        pthread_cond_signal(&mg->wb_cv);
        pthread_mutex_unlock(&mg->wb_mu);
        pthread_join(wb, NULL);
    }
    openblas_set_num_threads(blas_threads);
    free(ws);
    if (mg->err_rc) {
        rc = mg->err_msg ? actl__err(mg->err_rc, "%s", mg->err_msg) : mg->err_rc;
    } else if (mg->o->progress) {
        mg->o->progress(mg->total_bytes, mg->total_bytes, mg->o->progress_ctx);
    }
    return rc;
}

/* ---- the output directory ----------------------------------------------- */

/* ".<name>.tmp-XXXXXX" beside out_dir, made with mode 0777 less the umask
 * (mkdtemp would make it 0700 for good). */
static int make_tmp_dir(merge *mg)
{
    char *copy = strdup(mg->out_dir);
    int rc = ACTL_OK;
    if (!copy)
        return actl__oom();
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    const char *name = slash ? slash + 1 : copy;
    const char *parent = slash ? (slash == copy ? "/" : copy) : ".";
    if (slash && slash != copy)
        *slash = '\0';
    static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    for (int tries = 0; tries < 32; tries++) {
        unsigned char r[6];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
            for (size_t i = 0; i < sizeof r; i++)
                r[i] = (unsigned char)(rand() ^ (int)getpid() ^ (int)time(NULL));
        char suffix[7];
        for (int i = 0; i < 6; i++)
            suffix[i] = digits[r[i] % 36];
        suffix[6] = '\0';
        free(mg->tmp_dir);
        if (!(mg->tmp_dir = actl__strdup_printf("%s%s.%s.tmp-%s", parent,
                                                 !strcmp(parent, "/") ? "" : "/", name, suffix))) {
            rc = actl__oom();
            break;
        }
        if (mkdir(mg->tmp_dir, 0777) == 0)
            goto out;
        if (errno != EEXIST) {
            rc = actl__err(errno == ENOENT ? ACTL_ENOTFOUND : ACTL_EIO,
                           "cannot create '%s': %s", mg->tmp_dir, strerror(errno));
            break;
        }
    }
    if (!rc)
        rc = actl__err(ACTL_EIO, "cannot create a temporary directory beside '%s'", mg->out_dir);
    free(mg->tmp_dir);
    mg->tmp_dir = NULL;
out:
    free(copy);
    return rc;
}

/* Removes the temporary directory and what we put in it (files only). */
static void remove_tmp_dir(merge *mg)
{
    if (!mg->tmp_dir)
        return;
    DIR *d = opendir(mg->tmp_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(mg->tmp_dir);
    free(mg->tmp_dir);
    mg->tmp_dir = NULL;
}

static int create_file(const char *path, int *fd)
{
    *fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (*fd < 0)
        return actl__err(ACTL_EIO, "cannot create '%s': %s", path, strerror(errno));
    return ACTL_OK;
}

static int sync_close(int *fd, const char *path)
{
    int rc = ACTL_OK;
    if (*fd < 0)
        return ACTL_OK;
    if (fsync(*fd) != 0)
        rc = actl__err(ACTL_EIO, "cannot sync '%s': %s", path, strerror(errno));
    /* The written pages stay cached (clean after the fsync, so reclaimable
     * at no cost, and not part of anyone's RSS): dropping them with
     * POSIX_FADV_DONTNEED cost a fifth of a merge's time, and the merged
     * model is usually read next. */
    if (close(*fd) != 0 && !rc)
        rc = actl__err(ACTL_EIO, "cannot write '%s': %s", path, strerror(errno));
    *fd = -1;
    return rc;
}

static int write_text_file(merge *mg, const char *name, const char *text)
{
    int fd = -1, rc;
    char *path = actl__path_join(mg->tmp_dir, name);
    if (!path)
        return actl__oom();
    if (!(rc = create_file(path, &fd)))
        rc = pwrite_all(fd, text, strlen(text), 0, path);
    int rc2 = sync_close(&fd, path);
    free(path);
    return rc ? rc : rc2;
}

static int copy_file(const char *from, const char *to)
{
    int in = -1, out = -1, rc;
    uint64_t size;
    void *buf = NULL;
    if ((rc = actl__open_regular(from, &in, &size)) || (rc = create_file(to, &out)))
        goto out;
    if (!(buf = malloc(1u << 20))) {
        rc = actl__oom();
        goto out;
    }
    rc = copy_range(in, out, 0, 0, size, from, to, buf, 1u << 20);
out:
    free(buf);
    if (in >= 0)
        close(in);
    int rc2 = sync_close(&out, to);
    return rc ? rc : rc2;
}

static bool is_shard_name(const merge *mg, const char *name)
{
    for (size_t s = 0; s < mg->nshards; s++)
        if (!strcmp(mg->shards[s].name, name))
            return true;
    return false;
}

/* config.json, tokenizer files and every other regular file of the base
 * directory (symbolic links followed, as in a Hugging Face cache snapshot);
 * subdirectories are not part of a checkpoint and are left out. */
static int copy_side_files(merge *mg)
{
    int rc = ACTL_OK;
    DIR *d = opendir(mg->base_dir);
    char *from = NULL, *to = NULL;
    if (!d)
        return actl__err(ACTL_EIO, "cannot read directory '%s': %s", mg->base_dir,
                         strerror(errno));
    struct dirent *e;
    while (!rc && (errno = 0, e = readdir(d))) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || is_shard_name(mg, n))
            continue;
        bool is_index = mg->index_text && !strcmp(n, INDEX_NAME);
        bool is_config = mg->config_text && !strcmp(n, CONFIG_NAME);
        free(from);
        free(to);
        from = actl__path_join(mg->base_dir, n);
        to = actl__path_join(mg->tmp_dir, n);
        if (!from || !to) {
            rc = actl__oom();
            break;
        }
        struct stat st;
        if (stat(from, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (is_index)
            rc = write_text_file(mg, n, mg->index_text);
        else if (is_config)
            rc = write_text_file(mg, n, mg->config_text);
        else
            rc = copy_file(from, to);
        if (!rc)
            mg->res.files_copied++;
    }
    if (!rc && errno)
        rc = actl__err(ACTL_EIO, "cannot read directory '%s': %s", mg->base_dir, strerror(errno));
    closedir(d);
    free(from);
    free(to);
    return rc;
}

static int write_output(merge *mg)
{
    int rc = ACTL_OK;
    for (size_t s = 0; s < mg->nshards && !rc; s++) {
        shard *sh = &mg->shards[s];
        if (!(sh->out_path = actl__path_join(mg->tmp_dir, sh->name))) {
            rc = actl__oom();
            break;
        }
        if ((rc = create_file(sh->out_path, &sh->out_fd)))
            break;
        /* Reserve the space: a full disk fails now, not half way through.
         * fallocate(2), not posix_fallocate: where the file system cannot
         * reserve, glibc would write the whole file with zeros first. */
        int fr = 0;
        if (sh->out_size && fallocate(sh->out_fd, 0, 0, (off_t)sh->out_size) != 0) {
            fr = errno;
            if (fr == EOPNOTSUPP || fr == ENOSYS || fr == EINVAL)
                fr = ftruncate(sh->out_fd, (off_t)sh->out_size) != 0 ? errno : 0;
        }
        if (fr) {
            rc = actl__err(ACTL_EIO, "cannot reserve %llu bytes on disk for '%s': %s",
                           (unsigned long long)sh->out_size, sh->out_path, strerror(fr));
            break;
        }
        if (sh->header && (rc = pwrite_all(sh->out_fd, sh->header, sh->header_len, 0,
                                           sh->out_path)))
            break;
    }
    if (!rc)
        rc = run_tasks(mg);
    for (size_t s = 0; s < mg->nshards; s++) {
        int r = sync_close(&mg->shards[s].out_fd, mg->shards[s].out_path);
        if (!rc)
            rc = r;
    }
    if (!rc && cancelled(mg))
        rc = interrupted(mg);
    if (!rc)
        rc = copy_side_files(mg);
    if (!rc)
        rc = actl__fsync_dir(mg->tmp_dir);
    /* the last moment before the output appears */
    if (!rc && cancelled(mg))
        rc = interrupted(mg);
    return rc;
}

/* rename without replacing: out_dir may have appeared while we worked. */
static int publish(merge *mg)
{
    int r;
#ifdef RENAME_NOREPLACE
    r = renameat2(AT_FDCWD, mg->tmp_dir, AT_FDCWD, mg->out_dir, RENAME_NOREPLACE);
    if (r != 0 && (errno == EINVAL || errno == ENOSYS)) {
        if (actl__exists(mg->out_dir)) {
            errno = EEXIST;
        } else {
            r = rename(mg->tmp_dir, mg->out_dir);
        }
    }
#else
    if (actl__exists(mg->out_dir)) {
        r = -1;
        errno = EEXIST;
    } else {
        r = rename(mg->tmp_dir, mg->out_dir);
    }
#endif
    if (r != 0)
        return actl__err(errno == EEXIST || errno == ENOTEMPTY ? ACTL_EEXIST : ACTL_EIO,
                         "cannot rename '%s' to '%s': %s", mg->tmp_dir, mg->out_dir,
                         strerror(errno));
    free(mg->tmp_dir);
    mg->tmp_dir = NULL;
    /* the rename is durable once the parent directory is */
    char *copy = strdup(mg->out_dir);
    if (!copy)
        return actl__oom();
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    const char *parent = ".";
    if (slash == copy)
        parent = "/";
    else if (slash) {
        *slash = '\0';
        parent = copy;
    }
    int rc = actl__fsync_dir(parent);
    free(copy);
    return rc;
}

static void merge_release(merge *mg)
{
    for (size_t i = 0; i < mg->njobs; i++) {
        job *j = &mg->jobs[i];
        free_prepared(j);
        for (size_t k = 0; k < j->nops; k++) {
            free(j->ops[k].c);
            free(j->ops[k].s);
        }
        free(j->ops);
        pthread_mutex_destroy(&j->mu);
    }
    free(mg->jobs);
    for (size_t s = 0; s < mg->nshards; s++) {
        shard *sh = &mg->shards[s];
        if (sh->in_fd >= 0)
            close(sh->in_fd);
        if (sh->out_fd >= 0)
            close(sh->out_fd);
        free(sh->in_path);
        free(sh->out_path);
        free(sh->header);
        free(sh->jobs);
    }
    free(mg->shards);
    for (size_t i = 0; i < mg->nowned; i++)
        actl_adapter_free(mg->owned[i]);
    free(mg->owned);
    free(mg->tasks);
    free(mg->index_text);
    free(mg->config_text);
    free(mg->err_msg);
    free(mg->model_type);
    pthread_mutex_destroy(&mg->err_mu);
    pthread_mutex_destroy(&mg->wb_mu);
    pthread_cond_destroy(&mg->wb_cv);
    actl_ckpt_close(mg->ck);
    actl_base_free(mg->base);
}

int actl_merge(const char *base_dir, const char *out_dir, const actl_input *in, size_t n,
               const actl_merge_opts *o, actl_merge_result *out)
{
    int rc = ACTL_OK;
    actl_merge_opts defaults = actl_merge_default_opts();
    merge mg;
    memset(&mg, 0, sizeof mg);
    pthread_mutex_init(&mg.err_mu, NULL);
    pthread_mutex_init(&mg.wb_mu, NULL);
    pthread_cond_init(&mg.wb_cv, NULL);
    if (!o)
        o = &defaults;
    mg.o = o;
    mg.base_dir = base_dir;
    mg.out_dir = out_dir;
    if (!base_dir || !out_dir || (n && !in)) {
        rc = actl__err(ACTL_EINVAL, "merge: NULL argument");
        goto out;
    }
    if (o->dtype != -1 && o->dtype != ACTL_F32 && o->dtype != ACTL_F16 && o->dtype != ACTL_BF16) {
        rc = actl__err(ACTL_EINVAL, "merge: output dtype %d is not F32, F16 or BF16", o->dtype);
        goto out;
    }
    if (!*out_dir) {
        rc = actl__err(ACTL_EINVAL, "merge: empty output directory name");
        goto out;
    }
    if (actl__exists(out_dir)) {
        rc = actl__err(ACTL_EEXIST, "'%s' already exists; merge writes a new directory", out_dir);
        goto out;
    }
    if (!actl__is_dir(base_dir)) {
        rc = actl__err(actl__exists(base_dir) ? ACTL_EINVAL : ACTL_ENOTFOUND,
                       "'%s' is not a checkpoint directory", base_dir);
        goto out;
    }
    if ((rc = actl_base_load(base_dir, &mg.base)) || (rc = actl_ckpt_open(base_dir, &mg.ck)) ||
        (rc = read_config(&mg)))
        goto out;
    char *single = actl__path_join(base_dir, "model.safetensors");
    if (!single) {
        rc = actl__oom();
        goto out;
    }
    mg.sharded = !actl__exists(single);
    free(single);

    mg.njobs = actl_ckpt_count(mg.ck);
    if (!(mg.jobs = calloc(mg.njobs ? mg.njobs : 1, sizeof *mg.jobs)) ||
        !(mg.owned = calloc(n ? n : 1, sizeof *mg.owned))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < mg.njobs; i++) {
        job *j = &mg.jobs[i];
        j->t = actl_ckpt_tensor(mg.ck, i);
        j->rows = j->t->ndim ? j->t->shape[0] : 1;
        j->cols = j->rows ? j->t->numel / j->rows : 0;
        pthread_mutex_init(&j->mu, NULL);
    }
    /* Unmerge undoes the last applied first. */
    for (size_t k = 0; k < n; k++)
        if ((rc = plan_input(&mg, &in[o->unmerge ? n - 1 - k : k])))
            goto out;
    if ((rc = check_tied(&mg)))
        goto out;
    if ((rc = plan_layout(&mg)) || (rc = plan_side_files(&mg)) || (rc = plan_tasks(&mg)))
        goto out;

    /* Nothing has been written so far; from here a failure removes what was. */
    if (cancelled(&mg)) {
        rc = interrupted(&mg);
        goto out;
    }
    if ((rc = make_tmp_dir(&mg)))
        goto out;
    if ((rc = write_output(&mg)) || (rc = publish(&mg)))
        goto out;
    mg.res.bytes_written = mg.total_bytes;
    if (out)
        *out = mg.res;
out:
    remove_tmp_dir(&mg);
    merge_release(&mg);
    return rc;
}
