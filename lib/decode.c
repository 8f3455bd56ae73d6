/*
 * decode.c: the CPU reference decoder (DESIGN.md 10). A batch holds up to
 * max_seqs sequences, each with its own tokens, KV cache, sampler and
 * adapter. One step gathers a row per token to run (a new sequence's whole
 * prompt, one row for each sequence already decoding), orders the rows so
 * that sequences sharing an adapter are contiguous, runs the LLaMA forward
 * pass on all rows at once - every base projection a single sgemm, the
 * adapters applied per group of rows afterwards - and samples.
 *
 * Threads: OpenBLAS parallelizes the base projections itself; attention,
 * adapter groups and sampling go to the batch's own small pool.
 */
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- a pool of threads that run "for i in [0, n)" together ------------- */

typedef void (*task_fn)(void *ctx, int64_t i, int tid);

typedef struct pool {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    pthread_t *th;
    int nth;            /* worker threads started (the caller is thread 0) */
    uint64_t gen;       /* bumped for each job */
    bool open;          /* the current job still takes helpers */
    int active;         /* workers inside the current job */
    bool quit;
    task_fn fn;
    void *ctx;
    int64_t n;
    atomic_llong next;
} pool;

typedef struct worker_arg {
    pool *p;
    int tid;
} worker_arg;

static void pool_drain(pool *p, int tid)
{
    for (;;) {
        int64_t i = (int64_t)atomic_fetch_add(&p->next, 1);
        if (i >= p->n)
            return;
        p->fn(p->ctx, i, tid);
    }
}

static void *pool_worker(void *arg)
{
    worker_arg *w = arg;
    pool *p = w->p;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->gen == seen)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->quit)
            break;
        seen = p->gen;
        if (!p->open)
            continue; /* woke after the caller finished the job alone */
        p->active++;
        pthread_mutex_unlock(&p->mu);
        pool_drain(p, w->tid);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    free(w);
    return NULL;
}

/* Starts up to n_workers threads; fewer (even none) is not an error: the
 * caller's thread does whatever work is left. */
static int pool_init(pool *p, int n_workers)
{
    memset(p, 0, sizeof *p);
    if (pthread_mutex_init(&p->mu, NULL) != 0)
        return actl__err(ACTL_ENOMEM, "cannot create the decoder's thread pool");
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->next, 0);
    if (n_workers <= 0)
        return ACTL_OK;
    p->th = calloc((size_t)n_workers, sizeof *p->th);
    if (!p->th)
        return ACTL_OK;
    for (int i = 0; i < n_workers; i++) {
        worker_arg *w = malloc(sizeof *w);
        if (!w)
            break;
        w->p = p;
        w->tid = i + 1;
        if (pthread_create(&p->th[i], NULL, pool_worker, w) != 0) {
            free(w);
            break;
        }
        p->nth++;
    }
    return ACTL_OK;
}

static void pool_destroy(pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nth; i++)
        pthread_join(p->th[i], NULL);
    free(p->th);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
}

/* Below about this many multiply-adds a job runs on the calling thread:
 * waking the pool costs more (tiny models, short contexts). */
int64_t actl__decode_parallel_min = 65536;

/* fn(ctx, i, tid) for i in [0, n), spread over the pool when `work` (a
 * rough count of multiply-adds) makes that worth a wake-up. */
static void pool_run(pool *p, task_fn fn, void *ctx, int64_t n, int64_t work)
{
    if (p->nth == 0 || n <= 1 || work < actl__decode_parallel_min) {
        for (int64_t i = 0; i < n; i++)
            fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store(&p->next, 0);
    p->open = true;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    pool_drain(p, 0);
    /* on a busy machine a worker may not get a core for milliseconds: once
     * every task is taken, wait only for the workers that joined */
    pthread_mutex_lock(&p->mu);
    p->open = false;
    while (p->active > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

/* ---- the batch ---------------------------------------------------------- */

typedef struct seq {
    bool live;
    actl_finish finish;
    int adapter;             /* handle, 0 for none */
    int32_t *toks;           /* prompt, continuation, then generated tokens */
    size_t toks_cap, n_prompt, n_score, n_toks;
    int64_t max_tokens;
    int64_t n_done;          /* positions already in the KV cache */
    float temperature;
    int top_k;
    float top_p;
    uint64_t rng;
    int32_t *stop;
    size_t n_stop, stop_cap;
    float *gen_lp;           /* [max_tokens] log-probabilities of generated tokens */
    size_t gen_lp_cap;
    float *score_lp;         /* [n_score] */
    size_t score_cap;
    double score_sum;
    bool scored;
    float *logits;           /* [vocab] the latest logits */
    bool has_logits;
    /* K then V, each [layers][kv_cap][kv_dim] */
    float *kv;
    int64_t kv_cap;
    /* this step's rows and logit rows */
    int64_t row0, nrows, lrow0, nlrows;
} seq;

typedef struct group {
    int64_t start, n;        /* rows */
    const actl__rt *rt;
} group;

typedef struct thread_err {
    int rc;
    char msg[512];
} thread_err;

struct actl_batch {
    const actl_model *m;
    int64_t dim, hidden, heads, kvh, hd, qdim, kvdim, vocab, layers;
    int max_seqs;
    int64_t max_ctx;
    int threads;
    seq *seqs;               /* [max_seqs] */
    actl__rt **rts;          /* handle h is rts[h - 1] */
    size_t n_rts, rts_cap;

    /* step buffers, grown to rows_cap rows */
    int64_t rows_cap;
    bool force;              /* opts.force: adapters for another base model id */
    int64_t lrows_cap;       /* logits rows: usually one per sequence, not one per row */
    float *x;                /* [rows, dim] the residual stream */
    float *xn;               /* [rows, dim] normed */
    float *x0;               /* [rows, max(dim, qdim, hidden)] input after adapter pres */
    float *q;                /* [rows, qdim] */
    float *k, *v;            /* [rows, kvdim] */
    float *att;              /* [rows, qdim] */
    float *tmp;              /* [rows, dim] */
    float *gate, *up;        /* [rows, hidden] */
    float *cos, *sin;        /* [rows, hd/2] */
    int32_t *row_tok;        /* [rows] */
    int64_t *row_pos;        /* [rows] */
    int *row_seq;            /* [rows] */
    int64_t *lrow;           /* [rows] rows whose logits are needed */
    float *logits;           /* [rows, vocab] */
    group *grp, *lgrp;       /* [max_seqs] */
    int *order;              /* [max_seqs] */
    float *inv_freq;         /* [hd/2] */

    /* per thread */
    float *scores;           /* [threads][max_ctx] attention weights */
    void *samp;              /* [threads][samp_size] */
    size_t samp_size;
    thread_err *terr;        /* [threads] */

    pool pool;
    bool pool_up;
};

actl_batch_opts actl_batch_default_opts(void)
{
    actl_batch_opts o = {.max_seqs = 32, .max_ctx = 0, .threads = 0};
    return o;
}

actl_request actl_request_default(void)
{
    actl_request r;
    memset(&r, 0, sizeof r);
    r.temperature = 0.0f;
    r.top_p = 1.0f;
    return r;
}

/* RoPE inverse frequencies as HF computes them, in float:
 * inv_freq[i] = 1 / theta^(2i / head_dim), then the rope_scaling rule
 * (transformers modeling_rope_utils: linear divides by factor, llama3 per
 * _compute_llama3_parameters). */
static void rope_freqs(const actl_model_info *in, float *inv, int64_t half)
{
    float theta = (float)in->rope_theta;
    for (int64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)(2 * half);
        inv[i] = 1.0f / (float)pow((double)theta, (double)e);
    }
    if (in->rope_type == ACTL_ROPE_LINEAR) {
        float f = (float)in->rope_factor;
        for (int64_t i = 0; i < half; i++)
            inv[i] /= f;
    } else if (in->rope_type == ACTL_ROPE_LLAMA3) {
        float factor = (float)in->rope_factor;
        float lo = (float)in->rope_low_freq_factor, hi = (float)in->rope_high_freq_factor;
        float old = (float)in->rope_original_max;
        float lo_wavelen = old / lo, hi_wavelen = old / hi;
        for (int64_t i = 0; i < half; i++) {
            float wavelen = 2.0f * (float)M_PI / inv[i];
            float f = wavelen > lo_wavelen ? inv[i] / factor : inv[i];
            if (!(wavelen < hi_wavelen) && !(wavelen > lo_wavelen)) {
                float smooth = (old / wavelen - lo) / (hi - lo);
                f = (1.0f - smooth) * f / factor + smooth * f;
            }
            inv[i] = f;
        }
    }
}

static void seq_release(seq *s)
{
    free(s->toks);
    free(s->stop);
    free(s->gen_lp);
    free(s->score_lp);
    free(s->logits);
    free(s->kv);
}

static void free_step_buffers(actl_batch *b)
{
    free(b->x);
    free(b->xn);
    free(b->x0);
    free(b->q);
    free(b->k);
    free(b->v);
    free(b->att);
    free(b->tmp);
    free(b->gate);
    free(b->up);
    free(b->cos);
    free(b->sin);
    free(b->row_tok);
    free(b->row_pos);
    free(b->row_seq);
    free(b->lrow);
    free(b->logits);
    b->lrows_cap = 0;
    b->x = b->xn = b->x0 = b->q = b->k = b->v = b->att = b->tmp = NULL;
    b->gate = b->up = b->cos = b->sin = b->logits = NULL;
    b->row_tok = NULL;
    b->row_pos = b->lrow = NULL;
    b->row_seq = NULL;
}

void actl_batch_free(actl_batch *b)
{
    if (!b)
        return;
    if (b->pool_up)
        pool_destroy(&b->pool);
    if (b->seqs)
        for (int i = 0; i < b->max_seqs; i++)
            seq_release(&b->seqs[i]);
    free(b->seqs);
    for (size_t i = 0; i < b->n_rts; i++)
        actl__rt_free(b->rts[i]);
    free(b->rts);
    free_step_buffers(b);
    free(b->grp);
    free(b->lgrp);
    free(b->order);
    free(b->inv_freq);
    free(b->scores);
    free(b->samp);
    free(b->terr);
    free(b);
}

int actl_batch_new(const actl_model *m, const actl_batch_opts *o, actl_batch **out)
{
    int rc = ACTL_OK;
    actl_batch *b = NULL;
    if (out)
        *out = NULL;
    if (!m || !out) {
        rc = actl__err(ACTL_EINVAL, "actl_batch_new: model and out are required");
        goto done;
    }
    actl_batch_opts def = actl_batch_default_opts();
    if (!o)
        o = &def;
    const actl_model_info *in = &m->info;
    if (o->max_seqs <= 0 || o->max_ctx < 0 || o->threads < 0) {
        rc = actl__err(ACTL_EINVAL, "batch options: max_seqs %d, max_ctx %lld, threads %d: "
                       "max_seqs must be positive, the others not negative",
                       o->max_seqs, (long long)o->max_ctx, o->threads);
        goto done;
    }
    int64_t ctx = o->max_ctx ? o->max_ctx : in->max_seq;
    if (ctx <= 0) {
        rc = actl__err(ACTL_EINVAL, "the model names no context length: give max_ctx");
        goto done;
    }
    if (in->head_dim <= 0 || in->head_dim % 2 || in->kv_heads <= 0 ||
        in->heads % in->kv_heads) {
        rc = actl__err(ACTL_EUNSUPPORTED, "decoder: head_dim %lld with %lld heads over %lld "
                       "kv heads", (long long)in->head_dim, (long long)in->heads,
                       (long long)in->kv_heads);
        goto done;
    }
    b = calloc(1, sizeof *b);
    if (!b) {
        rc = actl__oom();
        goto done;
    }
    b->m = m;
    b->dim = in->dim;
    b->hidden = in->hidden;
    b->heads = in->heads;
    b->kvh = in->kv_heads;
    b->hd = in->head_dim;
    b->qdim = in->heads * in->head_dim;
    b->kvdim = in->kv_heads * in->head_dim;
    b->vocab = in->vocab;
    b->layers = in->layers;
    b->max_seqs = o->max_seqs;
    b->force = o->force != 0;
    b->max_ctx = ctx;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    b->threads = o->threads > 0 ? o->threads : (online > 0 ? (int)online : 1);

    size_t ns = (size_t)b->max_seqs, nt = (size_t)b->threads;
    b->seqs = calloc(ns, sizeof *b->seqs);
    b->grp = calloc(ns, sizeof *b->grp);
    b->lgrp = calloc(ns, sizeof *b->lgrp);
    b->order = calloc(ns, sizeof *b->order);
    b->inv_freq = calloc((size_t)b->hd / 2, sizeof *b->inv_freq);
    b->scores = calloc(nt * (size_t)ctx, sizeof *b->scores);
    b->samp_size = (actl__sample_scratch_size((size_t)b->vocab) + 63) / 64 * 64;
    b->samp = calloc(nt, b->samp_size);
    b->terr = calloc(nt, sizeof *b->terr);
    if (!b->seqs || !b->grp || !b->lgrp || !b->order || !b->inv_freq ||
        !b->scores || !b->samp || !b->terr) {
        rc = actl__oom();
        goto done;
    }
    rope_freqs(in, b->inv_freq, b->hd / 2);
    rc = pool_init(&b->pool, b->threads - 1);
    if (rc)
        goto done;
    b->pool_up = true;
    *out = b;
    b = NULL;
done:
    actl_batch_free(b);
    return rc;
}

int actl_batch_adapter(actl_batch *b, const actl_input *in, size_t n, int *handle)
{
    int rc = ACTL_OK;
    actl__rt *rt = NULL;
    if (!b || !in || n == 0 || !handle) {
        rc = actl__err(ACTL_EINVAL, "actl_batch_adapter: a batch, at least one input and a "
                       "handle are required");
        goto done;
    }
    if (b->n_rts >= (size_t)INT32_MAX) {
        rc = actl__err(ACTL_ELIMIT, "too many adapters in one batch");
        goto done;
    }
    rc = actl__rt_new(b->m, in, n, b->force, &rt);
    if (rc)
        goto done;
    actl__rt **p = actl__grow(b->rts, b->n_rts, &b->rts_cap, sizeof *b->rts, 8);
    if (!p) {
        rc = actl__oom();
        goto done;
    }
    b->rts = p;
    b->rts[b->n_rts++] = rt;
    rt = NULL;
    *handle = (int)b->n_rts;
done:
    actl__rt_free(rt);
    return rc;
}

/* Grows *p to hold n elements of size elem (contents not kept). */
static int reserve(void *pp, size_t *cap, size_t n, size_t elem)
{
    void **p = pp;
    if (n <= *cap && *p)
        return ACTL_OK;
    void *q = malloc(n ? n * elem : elem);
    if (!q)
        return actl__oom();
    free(*p);
    *p = q;
    *cap = n;
    return ACTL_OK;
}

int actl_batch_add(actl_batch *b, const actl_request *r, int *seq_out)
{
    int rc = ACTL_OK;
    if (!b || !r || !seq_out) {
        rc = actl__err(ACTL_EINVAL, "actl_batch_add: batch, request and seq are required");
        goto done;
    }
    if (!r->prompt || r->n_prompt == 0) {
        rc = actl__err(ACTL_EINVAL, "request: the prompt needs at least one token");
        goto done;
    }
    if (r->adapter < 0 || (size_t)r->adapter > b->n_rts) {
        rc = actl__err(ACTL_EINVAL, "request: unknown adapter handle %d (this batch has %zu)",
                       r->adapter, b->n_rts);
        goto done;
    }
    if (r->max_tokens < 0 || r->top_k < 0 || !(r->temperature >= 0.0f) ||
        !(r->top_p >= 0.0f && r->top_p <= 1.0f)) {
        rc = actl__err(ACTL_EINVAL, "request: max_tokens %lld, temperature %g, top_k %d, "
                       "top_p %g: out of range", (long long)r->max_tokens,
                       (double)r->temperature, r->top_k, (double)r->top_p);
        goto done;
    }
    size_t n_score = r->score ? r->n_score : 0;
    for (size_t i = 0; i < r->n_prompt + n_score; i++) {
        int32_t id = i < r->n_prompt ? r->prompt[i] : r->score[i - r->n_prompt];
        if (id < 0 || id >= b->vocab) {
            rc = actl__err(ACTL_EINVAL, "request: %s token %zu is id %d, outside the "
                           "vocabulary of %lld", i < r->n_prompt ? "prompt" : "continuation",
                           i < r->n_prompt ? i : i - r->n_prompt, id, (long long)b->vocab);
            goto done;
        }
    }
    /* a score request is fed, never sampled from: no room for new tokens */
    int64_t gen = n_score ? 0 : r->max_tokens;
    uint64_t ctx = (uint64_t)b->max_ctx;
    if (r->n_prompt > ctx || n_score > ctx || (uint64_t)r->max_tokens > ctx ||
        r->n_prompt + n_score + (uint64_t)r->max_tokens > ctx) {
        rc = actl__err(ACTL_ELIMIT, "request: a prompt of %zu tokens, a continuation of %zu "
                       "and %lld new tokens exceed the context of %lld positions", r->n_prompt,
                       n_score, (long long)r->max_tokens, (long long)b->max_ctx);
        goto done;
    }
    int slot = -1;
    for (int i = 0; i < b->max_seqs; i++)
        if (!b->seqs[i].live) {
            slot = i;
            break;
        }
    if (slot < 0) {
        rc = actl__err(ACTL_ELIMIT, "batch: all %d sequence slots are in use", b->max_seqs);
        goto done;
    }
    seq *s = &b->seqs[slot];
    size_t need = r->n_prompt + n_score + (size_t)gen;
    if ((rc = reserve(&s->toks, &s->toks_cap, need, sizeof *s->toks)))
        goto done;
    if ((rc = reserve(&s->gen_lp, &s->gen_lp_cap, (size_t)gen, sizeof *s->gen_lp)))
        goto done;
    if ((rc = reserve(&s->score_lp, &s->score_cap, n_score, sizeof *s->score_lp)))
        goto done;
    size_t n_stop = r->stop_ids ? r->n_stop_ids : 0;
    if ((rc = reserve(&s->stop, &s->stop_cap, n_stop, sizeof *s->stop)))
        goto done;
    if (!s->logits && !(s->logits = malloc((size_t)b->vocab * sizeof *s->logits))) {
        rc = actl__oom();
        goto done;
    }
    /* the last generated token is never fed back, so need - 1 would do;
     * one spare position keeps the arithmetic plain */
    if (s->kv_cap < (int64_t)need || !s->kv) {
        float *kv = malloc(2 * (size_t)b->layers * need * (size_t)b->kvdim * sizeof *kv);
        if (!kv) {
            rc = actl__oom();
            goto done;
        }
        free(s->kv);
        s->kv = kv;
        s->kv_cap = (int64_t)need;
    }
    memcpy(s->toks, r->prompt, r->n_prompt * sizeof *s->toks);
    if (n_score)
        memcpy(s->toks + r->n_prompt, r->score, n_score * sizeof *s->toks);
    if (n_stop)
        memcpy(s->stop, r->stop_ids, n_stop * sizeof *s->stop);
    s->n_prompt = r->n_prompt;
    s->n_score = n_score;
    s->n_toks = r->n_prompt + n_score;
    s->n_stop = n_stop;
    s->max_tokens = gen;
    s->n_done = 0;
    s->adapter = r->adapter;
    s->temperature = r->temperature;
    s->top_k = r->top_k;
    s->top_p = r->top_p;
    /* xorshift stays at 0 forever from state 0 */
    s->rng = r->seed ? r->seed : 0x9E3779B97F4A7C15ULL;
    s->score_sum = 0;
    s->scored = false;
    s->has_logits = false;
    s->finish = ACTL_RUNNING;
    s->live = true;
    *seq_out = slot;
done:
    return rc;
}

static seq *get_seq(const actl_batch *b, int i)
{
    if (!b || i < 0 || i >= b->max_seqs || !b->seqs[i].live)
        return NULL;
    return &b->seqs[i];
}

void actl_batch_remove(actl_batch *b, int i)
{
    seq *s = get_seq(b, i);
    if (s)
        s->live = false;
}

actl_finish actl_batch_finished(const actl_batch *b, int i)
{
    const seq *s = get_seq(b, i);
    return s ? s->finish : ACTL_FINISH_LENGTH;
}

size_t actl_batch_tokens(const actl_batch *b, int i, const int32_t **ids, const float **logprobs)
{
    const seq *s = get_seq(b, i);
    size_t fed = s ? s->n_prompt + s->n_score : 0;
    size_t n = s ? s->n_toks - fed : 0;
    if (ids)
        *ids = s && n ? s->toks + fed : NULL;
    if (logprobs)
        *logprobs = s && n ? s->gen_lp : NULL;
    return n;
}

const float *actl_batch_logits(const actl_batch *b, int i)
{
    const seq *s = get_seq(b, i);
    return s && s->has_logits ? s->logits : NULL;
}

int actl_batch_score(const actl_batch *b, int i, double *logprob, const float **per_token)
{
    const seq *s = get_seq(b, i);
    if (!s || !s->n_score || !s->scored)
        return actl__err(ACTL_EINVAL, "sequence %d: no scored continuation", i);
    if (logprob)
        *logprob = s->score_sum;
    if (per_token)
        *per_token = s->score_lp;
    return ACTL_OK;
}

/* ---- the forward pass --------------------------------------------------- */

static int grow_rows(actl_batch *b, int64_t rows)
{
    if (rows <= b->rows_cap)
        return ACTL_OK;
    int64_t n = b->rows_cap ? b->rows_cap : 8;
    while (n < rows)
        n *= 2;
    free_step_buffers(b);
    b->rows_cap = 0;
    size_t r = (size_t)n, f = sizeof(float);
    int64_t wide = b->dim > b->qdim ? b->dim : b->qdim;
    if (b->hidden > wide)
        wide = b->hidden;
    b->x = malloc(r * (size_t)b->dim * f);
    b->xn = malloc(r * (size_t)b->dim * f);
    b->x0 = malloc(r * (size_t)wide * f);
    b->q = malloc(r * (size_t)b->qdim * f);
    b->k = malloc(r * (size_t)b->kvdim * f);
    b->v = malloc(r * (size_t)b->kvdim * f);
    b->att = malloc(r * (size_t)b->qdim * f);
    b->tmp = malloc(r * (size_t)b->dim * f);
    b->gate = malloc(r * (size_t)b->hidden * f);
    b->up = malloc(r * (size_t)b->hidden * f);
    b->cos = malloc(r * (size_t)(b->hd / 2) * f);
    b->sin = malloc(r * (size_t)(b->hd / 2) * f);
    b->row_tok = malloc(r * sizeof *b->row_tok);
    b->row_pos = malloc(r * sizeof *b->row_pos);
    b->row_seq = malloc(r * sizeof *b->row_seq);
    b->lrow = malloc(r * sizeof *b->lrow);
    if (!b->x || !b->xn || !b->x0 || !b->q || !b->k || !b->v || !b->att || !b->tmp ||
        !b->gate || !b->up || !b->cos || !b->sin || !b->row_tok || !b->row_pos ||
        !b->row_seq || !b->lrow) {
        free_step_buffers(b);
        return actl__oom();
    }
    b->rows_cap = n;
    return ACTL_OK;
}

/* Room for the logits of rows rows: sized apart from the step's rows, as a
 * long prompt needs one row of logits, not one per token (a 128k
 * vocabulary makes each row half a megabyte). */
static int grow_logits(actl_batch *b, int64_t rows)
{
    if (rows <= b->lrows_cap)
        return ACTL_OK;
    int64_t n = b->lrows_cap ? b->lrows_cap : 8;
    while (n < rows)
        n *= 2;
    free(b->logits);
    b->lrows_cap = 0;
    if (!(b->logits = malloc((size_t)n * (size_t)b->vocab * sizeof *b->logits)))
        return actl__oom();
    b->lrows_cap = n;
    return ACTL_OK;
}

/* HF LlamaRMSNorm: y = w * (x / sqrt(mean(x^2) + eps)). */
static void rmsnorm(const float *x, const float *w, int64_t rows, int64_t dim, double eps,
                    float *y)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        double ss = 0;
        for (int64_t i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t i = 0; i < dim; i++)
            yr[i] = w[i] * (xr[i] * inv);
    }
}

static void record_err(actl_batch *b, int tid, int rc)
{
    thread_err *e = &b->terr[tid];
    if (!e->rc) {
        e->rc = rc;
        snprintf(e->msg, sizeof e->msg, "%s", actl_errmsg());
    }
}

static void clear_errs(actl_batch *b)
{
    for (int i = 0; i < b->threads; i++)
        b->terr[i].rc = 0;
}

/* The first failure a task recorded, raised on the calling thread. */
static int take_err(actl_batch *b)
{
    for (int i = 0; i < b->threads; i++)
        if (b->terr[i].rc)
            return actl__err(b->terr[i].rc, "%s", b->terr[i].msg);
    return ACTL_OK;
}

/* One module applied to one input: what project() needs per slot. */
typedef struct proj {
    int64_t slot;
    const float *bias;   /* [out_dim] or NULL */
    float *out;          /* [rows, out_dim] */
    int64_t out_dim;
} proj;

typedef struct post_job {
    actl_batch *b;
    const proj *pj;
    const float *in, *x0;
    int64_t in_dim;
    const group *g;
    size_t ng;
} post_job;

/* Task i: slot i / ng's post on group i % ng (those the adapter does not
 * touch return at once). */
static void post_task(void *ctx, int64_t i, int tid)
{
    post_job *j = ctx;
    const proj *p = &j->pj[(size_t)i / j->ng];
    const group *g = &j->g[(size_t)i % j->ng];
    if (!actl__rt_touches(g->rt, p->slot))
        return;
    int rc = actl__rt_post(g->rt, p->slot, j->in + g->start * j->in_dim,
                           j->x0 + g->start * j->in_dim, g->n, p->out + g->start * p->out_dim);
    if (rc)
        record_err(j->b, tid, rc);
}

/* The modules pj[0..np), all reading in[rows, in_dim], each group of rows
 * under its own adapter: the pres (series-on-input bottlenecks) into x0,
 * one base product per module for every row, the bias, then the adapters'
 * posts on their own rows - those of all np modules in one parallel pass
 * (a pass costs a wake-up of the pool, so q/k/v and gate/up share one).
 * Modules with pres go one at a time (x0 is the pre's output for one
 * module). */
static int project(actl_batch *b, const proj *pj, size_t np, const float *in, int64_t in_dim,
                   int64_t rows, const group *g, size_t ng)
{
    int rc = ACTL_OK;
    bool pre = false;
    for (size_t k = 0; k < np && !pre; k++)
        for (size_t i = 0; i < ng && !pre; i++)
            pre = actl__rt_has_pre(g[i].rt, pj[k].slot);
    if (pre && np > 1) {
        for (size_t k = 0; k < np && !rc; k++)
            rc = project(b, &pj[k], 1, in, in_dim, rows, g, ng);
        return rc;
    }
    const float *x0 = in;
    if (pre) {
        memcpy(b->x0, in, (size_t)(rows * in_dim) * sizeof *b->x0);
        x0 = b->x0;
        for (size_t i = 0; i < ng; i++)
            if (actl__rt_has_pre(g[i].rt, pj[0].slot) &&
                (rc = actl__rt_pre(g[i].rt, pj[0].slot, in + g[i].start * in_dim, g[i].n,
                                   b->x0 + g[i].start * in_dim)))
                return rc;
    }
    bool any = false;
    int64_t work = 0;
    for (size_t k = 0; k < np; k++) {
        if ((rc = actl__linear(actl__slot_weight(b->m, pj[k].slot), x0, rows, pj[k].out, false)))
            return rc;
        if (pj[k].bias)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t i = 0; i < pj[k].out_dim; i++)
                    pj[k].out[r * pj[k].out_dim + i] += pj[k].bias[i];
        for (size_t i = 0; i < ng; i++) {
            any |= actl__rt_touches(g[i].rt, pj[k].slot);
            work += g[i].n * actl__rt_work(g[i].rt, pj[k].slot);
        }
    }
    if (!any)
        return ACTL_OK;
    post_job job = {b, pj, in, x0, in_dim, g, ng};
    /* the groups' small products each on one thread: OpenBLAS threads of
     * their own would only oversubscribe the cores */
    int blas = openblas_get_num_threads();
    openblas_set_num_threads(1);
    clear_errs(b);
    /* the posts' own cost decides whether waking the pool pays: element-wise
     * RoAd over a few rows is cheaper on this thread */
    pool_run(&b->pool, post_task, &job, (int64_t)(np * ng), work);
    openblas_set_num_threads(blas);
    return take_err(b);
}

/* Rotate-half RoPE (HF's apply_rotary_pos_emb) on n heads of each row. */
static void rope(const actl_batch *b, float *x, int64_t rows, int64_t n_heads)
{
    int64_t hd = b->hd, half = hd / 2;
    for (int64_t r = 0; r < rows; r++) {
        const float *c = b->cos + r * half, *s = b->sin + r * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *v = x + (r * n_heads + h) * hd;
            for (int64_t i = 0; i < half; i++) {
                float a = v[i], z = v[i + half];
                v[i] = a * c[i] - z * s[i];
                v[i + half] = z * c[i] + a * s[i];
            }
        }
    }
}

/* Eight independent partial sums: the compiler may then use vector lanes
 * without reassociating a single sum (which it must not do unasked). */
static float dot(const float *a, const float *b, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    float d = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        d += a[i] * b[i];
    return d;
}

typedef struct att_job {
    actl_batch *b;
    int64_t layer;
} att_job;

/* One (row, head): causal attention over the row's own sequence, positions
 * 0..pos, softmax(q·k / sqrt(head_dim)) · v. */
static void att_task(void *ctx, int64_t i, int tid)
{
    att_job *j = ctx;
    actl_batch *b = j->b;
    int64_t r = i / b->heads, h = i % b->heads;
    const seq *s = &b->seqs[b->row_seq[r]];
    int64_t pos = b->row_pos[r], hd = b->hd, kvdim = b->kvdim;
    int64_t g = h / (b->heads / b->kvh);
    const float *q = b->q + r * b->qdim + h * hd;
    size_t plane = (size_t)b->layers * (size_t)s->kv_cap * (size_t)kvdim;
    const float *K = s->kv + (size_t)j->layer * (size_t)s->kv_cap * (size_t)kvdim + g * hd;
    const float *V = K + plane;
    float *sc = b->scores + (size_t)tid * (size_t)b->max_ctx;
    float scale = 1.0f / sqrtf((float)hd);
    float mx = -INFINITY;
    for (int64_t t = 0; t <= pos; t++) {
        const float *kt = K + t * kvdim;
        float d = dot(q, kt, hd) * scale;
        sc[t] = d;
        if (d > mx)
            mx = d;
    }
    float sum = 0.0f;
    for (int64_t t = 0; t <= pos; t++) {
        sc[t] = expf(sc[t] - mx);
        sum += sc[t];
    }
    float inv = 1.0f / sum;
    float *o = b->att + r * b->qdim + h * hd;
    memset(o, 0, (size_t)hd * sizeof *o);
    for (int64_t t = 0; t <= pos; t++) {
        const float *vt = V + t * kvdim;
        float w = sc[t] * inv;
        for (int64_t e = 0; e < hd; e++)
            o[e] += w * vt[e];
    }
}

/* The whole network over b's rows [0, R); logits of the rows in
 * b->lrow[0, L) into b->logits. */
static int forward(actl_batch *b, int64_t R, const group *g, size_t ng, int64_t L,
                   const group *lg, size_t nlg)
{
    int rc = ACTL_OK;
    const actl_model *m = b->m;
    int64_t dim = b->dim, half = b->hd / 2;
    double eps = m->info.norm_eps;

    for (int64_t r = 0; r < R; r++)
        actl__embed_row(m, b->row_tok[r], b->x + r * dim);
    for (size_t i = 0; i < ng; i++)
        actl__rt_embed(g[i].rt, b->row_tok + g[i].start, g[i].n, b->x + g[i].start * dim);
    /* cos/sin of each row's position, as HF: the angle in float, then its cos */
    int64_t att_work = 0; /* positions attended over all rows */
    for (int64_t r = 0; r < R; r++)
        att_work += b->row_pos[r] + 1;
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < half; i++) {
            float a = (float)b->row_pos[r] * b->inv_freq[i];
            b->cos[r * half + i] = (float)cos((double)a);
            b->sin[r * half + i] = (float)sin((double)a);
        }

    for (int64_t l = 0; l < b->layers; l++) {
        const actl__layer *ly = &m->layers[l];
        int64_t slot = l * ACTL__NPROJ;
        rmsnorm(b->x, ly->attn_norm, R, dim, eps, b->xn);
        const proj qkv[3] = {{slot + ACTL__Q, ly->bias[ACTL__Q], b->q, b->qdim},
                             {slot + ACTL__K, ly->bias[ACTL__K], b->k, b->kvdim},
                             {slot + ACTL__V, ly->bias[ACTL__V], b->v, b->kvdim}};
        if ((rc = project(b, qkv, 3, b->xn, dim, R, g, ng)))
            goto done;
        rope(b, b->q, R, b->heads);
        rope(b, b->k, R, b->kvh);
        for (int64_t r = 0; r < R; r++) {
            seq *s = &b->seqs[b->row_seq[r]];
            size_t plane = (size_t)b->layers * (size_t)s->kv_cap * (size_t)b->kvdim;
            float *kd = s->kv + ((size_t)l * (size_t)s->kv_cap + (size_t)b->row_pos[r]) *
                                    (size_t)b->kvdim;
            memcpy(kd, b->k + r * b->kvdim, (size_t)b->kvdim * sizeof *kd);
            memcpy(kd + plane, b->v + r * b->kvdim, (size_t)b->kvdim * sizeof *kd);
        }
        att_job aj = {b, l};
        pool_run(&b->pool, att_task, &aj, R * b->heads, att_work * 2 * b->qdim);
        const proj o = {slot + ACTL__O, NULL, b->tmp, dim};
        if ((rc = project(b, &o, 1, b->att, b->qdim, R, g, ng)))
            goto done;
        for (int64_t i = 0; i < R * dim; i++)
            b->x[i] += b->tmp[i];

        rmsnorm(b->x, ly->ffn_norm, R, dim, eps, b->xn);
        const proj gu[2] = {{slot + ACTL__GATE, NULL, b->gate, b->hidden},
                            {slot + ACTL__UP, NULL, b->up, b->hidden}};
        if ((rc = project(b, gu, 2, b->xn, dim, R, g, ng)))
            goto done;
        for (int64_t i = 0; i < R * b->hidden; i++) {
            float z = b->gate[i];
            b->gate[i] = z / (1.0f + expf(-z)) * b->up[i];
        }
        const proj down = {slot + ACTL__DOWN, NULL, b->tmp, dim};
        if ((rc = project(b, &down, 1, b->gate, b->hidden, R, g, ng)))
            goto done;
        for (int64_t i = 0; i < R * dim; i++)
            b->x[i] += b->tmp[i];
    }

    /* the final norm and the head only on the rows whose logits are used;
     * xn holds them packed */
    for (int64_t i = 0; i < L; i++)
        rmsnorm(b->x + b->lrow[i] * dim, m->final_norm, 1, dim, eps, b->xn + i * dim);
    const proj head = {ACTL__SLOT_HEAD(m), NULL, b->logits, b->vocab};
    rc = project(b, &head, 1, b->xn, dim, L, lg, nlg);
done:
    return rc;
}

/* ---- a step --------------------------------------------------------------- */

static void finish_task(void *ctx, int64_t i, int tid)
{
    actl_batch *b = ctx;
    seq *s = &b->seqs[b->order[i]];
    size_t V = (size_t)b->vocab;
    const float *last = b->logits + (size_t)(s->lrow0 + s->nlrows - 1) * V;
    s->n_done += s->nrows;
    memcpy(s->logits, last, V * sizeof *s->logits);
    s->has_logits = true;
    if (s->n_score) {
        /* continuation token j is predicted at the position before it */
        double sum = 0;
        for (size_t j = 0; j < s->n_score; j++) {
            const float *lj = b->logits + (size_t)(s->lrow0 + (int64_t)j) * V;
            float lp = actl__logprob(lj, V, s->toks[s->n_prompt + j]);
            s->score_lp[j] = lp;
            sum += lp;
        }
        s->score_sum = sum;
        s->scored = true;
        s->finish = ACTL_FINISH_LENGTH;
        return;
    }
    if (s->max_tokens == 0) {
        s->finish = ACTL_FINISH_LENGTH;
        return;
    }
    void *scratch = (char *)b->samp + (size_t)tid * b->samp_size;
    int32_t t = actl__sample(s->logits, V, s->temperature, s->top_k, s->top_p, &s->rng, scratch);
    size_t k = s->n_toks - s->n_prompt;
    s->gen_lp[k] = actl__logprob(s->logits, V, t);
    s->toks[s->n_toks++] = t;
    for (size_t j = 0; j < s->n_stop; j++)
        if (s->stop[j] == t) {
            s->finish = ACTL_FINISH_STOP;
            return;
        }
    if ((int64_t)(k + 1) >= s->max_tokens)
        s->finish = ACTL_FINISH_LENGTH;
}

/* Runs of consecutive sequences (in order) sharing an adapter, as row groups. */
static size_t make_groups(const actl_batch *b, int n, bool logit_rows, group *out)
{
    size_t ng = 0;
    for (int i = 0; i < n; i++) {
        const seq *s = &b->seqs[b->order[i]];
        int64_t start = logit_rows ? s->lrow0 : s->row0;
        int64_t cnt = logit_rows ? s->nlrows : s->nrows;
        if (!s->adapter)
            continue;
        const actl__rt *rt = b->rts[s->adapter - 1];
        if (ng && out[ng - 1].rt == rt && out[ng - 1].start + out[ng - 1].n == start)
            out[ng - 1].n += cnt;
        else
            out[ng++] = (group){start, cnt, rt};
    }
    return ng;
}

int actl_batch_step(actl_batch *b, int *running)
{
    int rc = ACTL_OK;
    if (!b) {
        rc = actl__err(ACTL_EINVAL, "actl_batch_step: no batch");
        goto done;
    }
    /* live, unfinished sequences ordered by adapter (insertion sort: few) */
    int n = 0;
    for (int i = 0; i < b->max_seqs; i++) {
        const seq *s = &b->seqs[i];
        if (!s->live || s->finish != ACTL_RUNNING)
            continue;
        int j = n++;
        while (j > 0 && b->seqs[b->order[j - 1]].adapter > s->adapter) {
            b->order[j] = b->order[j - 1];
            j--;
        }
        b->order[j] = i;
    }
    if (n == 0)
        goto count;
    int64_t R = 0, L = 0;
    for (int i = 0; i < n; i++) {
        seq *s = &b->seqs[b->order[i]];
        s->row0 = R;
        s->nrows = s->n_done == 0 ? (int64_t)(s->n_prompt + s->n_score) : 1;
        R += s->nrows;
        s->lrow0 = L;
        s->nlrows = s->n_score ? (int64_t)s->n_score + 1 : 1;
        L += s->nlrows;
    }
    if ((rc = grow_rows(b, R)) || (rc = grow_logits(b, L)))
        goto done;
    for (int i = 0; i < n; i++) {
        int si = b->order[i];
        seq *s = &b->seqs[si];
        for (int64_t r = 0; r < s->nrows; r++) {
            int64_t pos = s->n_done + r;
            b->row_tok[s->row0 + r] = s->toks[pos];
            b->row_pos[s->row0 + r] = pos;
            b->row_seq[s->row0 + r] = si;
        }
        for (int64_t r = 0; r < s->nlrows; r++)
            b->lrow[s->lrow0 + r] = s->row0 + s->nrows - s->nlrows + r;
    }
    size_t ng = make_groups(b, n, false, b->grp);
    size_t nlg = make_groups(b, n, true, b->lgrp);
    if ((rc = forward(b, R, b->grp, ng, L, b->lgrp, nlg)))
        goto done;
    pool_run(&b->pool, finish_task, b, n, L * b->vocab);
count:
    if (running) {
        int c = 0;
        for (int i = 0; i < b->max_seqs; i++)
            c += b->seqs[i].live && b->seqs[i].finish == ACTL_RUNNING;
        *running = c;
    }
done:
    return rc;
}
