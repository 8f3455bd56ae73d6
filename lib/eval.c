/*
 * eval.c: batch evaluation (DESIGN.md 11). Requests run through one
 * actl_batch with continuous batching: up to o->batch sequences in flight,
 * and a slot freed by a finished request is refilled from the queue before
 * the next step, whatever the next request's adapter. Each distinct adapter
 * list is loaded and prepared once, the first time a request names it.
 *
 * A request that cannot run - its adapter does not load or fit the model,
 * its prompt does not encode or does not fit the context, it needs a
 * tokenizer there is none of - is not fatal to the run: it finishes at once
 * with finish "error" and the message as its text (counted in its adapter's
 * requests, never as scored). Only a failing step, memory, or a nonzero
 * on_result stops the run.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct label {
    char *name;         /* refs joined by "+", or "none" (for display: a directory
                           named "x+y" and the stack x, y share it, not a label) */
    const actl_eval_req *first; /* the request that made it: its refs are the key */
    int state;          /* 0: not loaded yet, 1: ready, -1: failed */
    int handle;
    char *err;          /* why it failed */
    size_t requests, scored, correct, tokens;
    double last;        /* seconds from the run's start to its last finish */
} label;

typedef struct slot {
    int live;
    int seq;
    const actl_eval_req *req;
    size_t lab;
    size_t n_prompt;
    int has_cont;
    int32_t prev;       /* the last id turned into text */
    size_t done;        /* tokens turned into text */
    char *text;
    size_t len, cap;
    int stopped;        /* a stop string was found (the text is cut before it) */
} slot;

struct actl_eval_summary {
    actl_eval_summary_row *rows;
    size_t n;
    double seconds;
};

typedef struct run {
    const actl_model *m;
    const actl_tokenizer *tok;
    const actl_eval_opts *o;
    actl_batch *b;
    int64_t max_seq;
    int32_t bos;
    int32_t stop_ids[2];
    size_t n_stop_ids;
    label *labs;
    size_t n_labs, labs_cap;
    slot *slots;
    uint64_t done, total;
    double t0;
} run;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

actl_eval_opts actl_eval_default_opts(void)
{
    actl_eval_opts o = {0};
    o.batch = 8;
    o.max_tokens = 256;
    return o;
}

size_t actl_eval_summary_count(const actl_eval_summary *s)
{
    return s ? s->n : 0;
}

const actl_eval_summary_row *actl_eval_summary_get(const actl_eval_summary *s, size_t i)
{
    return s && i < s->n ? &s->rows[i] : NULL;
}

double actl_eval_summary_seconds(const actl_eval_summary *s)
{
    return s ? s->seconds : 0;
}

void actl_eval_summary_free(actl_eval_summary *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free((char *)s->rows[i].adapter);
    free(s->rows);
    free(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The label of a request's adapter list: the refs joined by "+", "none" for none. */
static char *label_of(const actl_eval_req *r)
{
    if (!r->n_adapter)
        return actl__strdup_printf("none");
    size_t n = 1;
    for (size_t i = 0; i < r->n_adapter; i++)
        n += strlen(r->adapter[i]) + 1;
    char *s = malloc(n), *w = s;
    if (!s)
        return NULL;
    for (size_t i = 0; i < r->n_adapter; i++) {
        size_t k = strlen(r->adapter[i]);
        if (i)
            *w++ = '+';
        memcpy(w, r->adapter[i], k);
        w += k;
    }
    *w = 0;
    return s;
}

/* Loads and prepares the adapter list the first time; a failure is kept
 * in the label, for every request naming it. */
static int label_load(run *R, label *L, const actl_eval_req *r)
{
    actl_inputs *in = NULL;
    int rc = ACTL_OK;
    if (L->state)
        return ACTL_OK;
    if (!r->n_adapter) {
        L->state = 1;
        return ACTL_OK;
    }
    int lrc = actl_inputs_new(&in);
    for (size_t i = 0; lrc == ACTL_OK && i < r->n_adapter; i++) {
        char *ref = NULL;
        double w;
        if ((lrc = actl_input_spec_parse(r->adapter[i], &ref, &w)) == ACTL_OK)
            lrc = actl_inputs_add(in, R->o->store, ref, w);
        free(ref);
    }
    if (lrc == ACTL_OK) {
        size_t n;
        const actl_input *items = actl_inputs_items(in, &n);
        lrc = actl_batch_adapter(R->b, items, n, &L->handle);
    }
    if (lrc == ACTL_ENOMEM) {
        rc = lrc;
        goto out;
    }
    if (lrc != ACTL_OK) {
        if (!(L->err = actl__strdup_printf("adapter '%s': %s", L->name, actl_errmsg()))) {
            rc = actl__oom();
            goto out;
        }
        L->state = -1;
    } else {
        L->state = 1;
    }
out:
    actl_inputs_free(in);
    return rc;
}

/* Whether two requests name the same adapter list, ref by ref. */
static bool same_refs(const actl_eval_req *a, const actl_eval_req *b)
{
    if (a->n_adapter != b->n_adapter)
        return false;
    for (size_t i = 0; i < a->n_adapter; i++)
        if (strcmp(a->adapter[i], b->adapter[i]))
            return false;
    return true;
}

static int find_label(run *R, const actl_eval_req *r, size_t *idx)
{
    int rc = ACTL_OK;
    char *name = label_of(r);
    if (!name)
        return actl__oom();
    for (size_t i = 0; i < R->n_labs; i++)
        if (same_refs(R->labs[i].first, r)) {
            *idx = i;
            goto out;
        }
    label *v = actl__grow(R->labs, R->n_labs, &R->labs_cap, sizeof *R->labs, 8);
    if (!v) {
        rc = actl__oom();
        goto out;
    }
    R->labs = v;
    memset(&R->labs[R->n_labs], 0, sizeof *R->labs);
    R->labs[R->n_labs].name = name;
    R->labs[R->n_labs].first = r;
    name = NULL;
    *idx = R->n_labs++;
out:
    free(name);
    return rc;
}

/* Reports a finished request through on_result and the progress callback. */
static int emit(run *R, actl_eval_result *res, label *L)
{
    L->requests++;
    L->tokens += res->completion_tokens;
    if (res->correct >= 0) {
        L->scored++;
        L->correct += res->correct == 1;
    }
    L->last = now_seconds() - R->t0;
    R->done++;
    int rc = R->o->on_result ? R->o->on_result(res, R->o->ctx) : ACTL_OK;
    if (rc == ACTL_OK && R->o->progress)
        R->o->progress(R->done, R->total, R->o->progress_ctx);
    return rc;
}

/* A request that cannot run: finish "error", the message as its text. */
static int emit_error(run *R, const actl_eval_req *r, size_t lab, size_t n_prompt,
                      const char *msg)
{
    actl_eval_result res = {0};
    res.req = r;
    res.adapter = R->labs[lab].name;
    res.prompt_tokens = n_prompt;
    res.text = msg;
    res.finish = "error";
    res.correct = -1;
    return emit(R, &res, &R->labs[lab]);
}

/* Starts request r in slot S, or finishes it with an error result. */
static int start(run *R, const actl_eval_req *r, slot *S)
{
    int32_t *ids = NULL, *whole = NULL, *cont_own = NULL;
    size_t n_ids = 0, n_whole = 0;
    const int32_t *prompt, *cont = NULL;
    size_t n_prompt, n_cont = 0;
    char *msg = NULL, *joined = NULL;
    size_t lab = 0;
    int rc, lrc = ACTL_OK;
    const char *id = r->id ? r->id : "";

    if ((rc = find_label(R, r, &lab)) || (rc = label_load(R, &R->labs[lab], r)))
        goto out;
    label *L = &R->labs[lab];
    if (L->state < 0) {
        rc = emit_error(R, r, lab, 0, L->err);
        goto out;
    }
    int scored = r->answer && r->scorer != ACTL_SCORER_NONE;
    int text_cont = !r->continuation_ids && r->continuation;
    if (!R->tok && ((r->prompt && !r->prompt_ids) || scored || r->n_stop || text_cont)) {
        msg = actl__strdup_printf("request '%s': a text prompt, a continuation text, stop "
                                  "strings and scoring need a tokenizer", id);
        goto fail;
    }

    /* the prompt: ids as given, else the text encoded as generate does */
    int flags = (R->tok && actl_tokenizer_adds_bos(R->tok) ? ACTL_TOK_BOS : 0) | ACTL_TOK_SPECIAL;
    if (r->prompt_ids || !r->prompt) {
        prompt = r->prompt_ids;
        n_prompt = r->prompt_ids ? r->n_prompt_ids : 0;
    } else {
        if ((lrc = actl_tokenizer_encode(R->tok, r->prompt, strlen(r->prompt), flags, &ids,
                                         &n_ids)))
            goto lib_fail;
        prompt = ids;
        n_prompt = n_ids;
    }
    int32_t bos1[1] = {R->bos};
    if (n_prompt == 0) {
        /* no prompt: the sequence starts at BOS, as generate's does */
        if (R->bos < 0) {
            msg = actl__strdup_printf("request '%s': the prompt is empty and the model names "
                                      "no BOS token to start from", id);
            goto fail;
        }
        prompt = bos1;
        n_prompt = 1;
    }
    if ((int64_t)n_prompt >= R->max_seq) {
        msg = actl__strdup_printf("request '%s': the prompt has %zu tokens, but the model "
                                  "holds %lld positions", id, n_prompt, (long long)R->max_seq);
        goto fail;
    }

    /* A continuation text is encoded after the prompt text, as part of one
     * text, and its ids are what follows the prompt's own ids: encoded
     * alone it would get BOS and the dummy-prefix space of a text start. */
    if (r->continuation_ids) {
        cont = r->continuation_ids;
        n_cont = r->n_continuation_ids;
    } else if (r->continuation) {
        if (r->prompt && !r->prompt_ids) {
            if (!(joined = actl__strdup_printf("%s%s", r->prompt, r->continuation))) {
                rc = actl__oom();
                goto out;
            }
            if ((lrc = actl_tokenizer_encode(R->tok, joined, strlen(joined), flags, &whole,
                                             &n_whole)))
                goto lib_fail;
            cont = n_whole > n_ids ? whole + n_ids : NULL;
            n_cont = n_whole > n_ids ? n_whole - n_ids : 0;
        } else {
            if ((lrc = actl_tokenizer_encode(R->tok, r->continuation, strlen(r->continuation),
                                             ACTL_TOK_SPECIAL, &cont_own, &n_cont)))
                goto lib_fail;
            cont = cont_own;
        }
        if (!n_cont) {
            msg = actl__strdup_printf("request '%s': the continuation encodes to no tokens", id);
            goto fail;
        }
    }
    if (cont && (int64_t)(n_prompt + n_cont) > R->max_seq) {
        msg = actl__strdup_printf("request '%s': a prompt of %zu tokens and a continuation of "
                                  "%zu do not fit in the model's %lld positions", id, n_prompt,
                                  n_cont, (long long)R->max_seq);
        goto fail;
    }

    int64_t n_new = r->max_tokens >= 0 ? r->max_tokens : R->o->max_tokens;
    if (n_new > R->max_seq - (int64_t)n_prompt)
        n_new = R->max_seq - (int64_t)n_prompt;
    actl_request q = actl_request_default();
    q.prompt = prompt;
    q.n_prompt = n_prompt;
    q.adapter = L->handle;
    q.max_tokens = cont ? 0 : n_new;
    q.score = cont;
    q.n_score = cont ? n_cont : 0;
    q.temperature = (float)r->temperature;
    q.top_p = (float)r->top_p;
    q.seed = r->seed;
    q.stop_ids = R->stop_ids;
    q.n_stop_ids = R->n_stop_ids;
    if ((lrc = actl_batch_add(R->b, &q, &S->seq)))
        goto lib_fail;
    S->live = 1;
    S->req = r;
    S->lab = lab;
    S->n_prompt = n_prompt;
    S->has_cont = cont != NULL;
    S->prev = prompt[n_prompt - 1];
    S->done = 0;
    S->len = 0;
    S->stopped = 0;
    goto out;

lib_fail:
    if (lrc == ACTL_ENOMEM) {
        rc = lrc;
        goto out;
    }
    msg = actl__strdup_printf("request '%s': %s", id, actl_errmsg());
fail:
    if (!msg) {
        rc = actl__oom();
        goto out;
    }
    rc = emit_error(R, r, lab, n_ids, msg);
out:
    free(msg);
    free(joined);
    free(ids);
    free(whole);
    free(cont_own);
    return rc;
}

/* Turns the slot's new tokens into text and looks for the stop strings
 * in the whole continuation, in the request's order, as generate does. */
static int advance_text(run *R, slot *S, const int32_t *ids, size_t n)
{
    if (!R->tok || n <= S->done)
        return ACTL_OK;
    char *t = NULL;
    size_t tl;
    int rc = actl_tokenizer_continuation(R->tok, S->prev, R->bos, R->stop_ids, R->n_stop_ids,
                                         ids + S->done, n - S->done, &t, &tl);
    if (rc)
        return rc;
    while (S->len + tl >= S->cap) {
        char *v = actl__grow(S->text, S->len + tl, &S->cap, 1, 256);
        if (!v) {
            free(t);
            return actl__oom();
        }
        S->text = v;
    }
    memcpy(S->text + S->len, t, tl + 1);
    S->len += tl;
    free(t);
    S->prev = ids[n - 1];
    S->done = n;
    const actl_eval_req *r = S->req;
    for (size_t k = 0; k < r->n_stop && !S->stopped; k++) {
        char *hit = *r->stop[k] ? strstr(S->text, r->stop[k]) : NULL;
        if (hit) {
            S->stopped = 1;
            S->len = (size_t)(hit - S->text);
            S->text[S->len] = 0;
        }
    }
    return ACTL_OK;
}

static int finish(run *R, slot *S)
{
    const actl_eval_req *r = S->req;
    const int32_t *ids;
    const float *lps;
    size_t n = actl_batch_tokens(R->b, S->seq, &ids, &lps);
    actl_eval_result res = {0};
    char *pred = NULL, *scored = NULL;
    int rc = ACTL_OK;
    res.req = r;
    res.adapter = R->labs[S->lab].name;
    res.prompt_tokens = S->n_prompt;
    res.completion_tokens = n;
    res.text = R->tok ? (S->text ? S->text : "") : NULL;
    res.finish = S->stopped || actl_batch_finished(R->b, S->seq) == ACTL_FINISH_STOP ? "stop"
                                                                                      : "length";
    res.correct = -1;
    if (S->has_cont) {
        if ((rc = actl_batch_score(R->b, S->seq, &res.logprob, NULL)))
            goto out;
        res.has_logprob = 1;
    } else if (r->answer && r->scorer != ACTL_SCORER_NONE) {
        /* LLM-Adapters score decode(prompt + output).split("### Response:")[1]:
         * what the model writes after a "### Response:" of its own (it ran on
         * into another Alpaca block) is not part of its answer */
        if (!(scored = actl_eval_answer_text(res.text))) {
            rc = ACTL_ENOMEM;
            goto out;
        }
        if ((rc = actl_score(r->scorer, scored, r->answer, &pred, &res.correct)))
            goto out;
        res.prediction = pred;
    }
    rc = emit(R, &res, &R->labs[S->lab]);
out:
    free(pred);
    free(scored);
    actl_batch_remove(R->b, S->seq);
    S->live = 0;
    return rc;
}

int actl_eval_run(const actl_model *m, const actl_tokenizer *tok, const actl_eval_reqs *l,
                  const actl_eval_opts *o, actl_eval_summary **out)
{
    actl_eval_opts def = actl_eval_default_opts();
    run R = {0};
    const char **skip = NULL;
    actl_eval_summary *sum = NULL;
    int rc = ACTL_OK;
    if (out)
        *out = NULL;
    if (!m || !l) {
        rc = actl__err(ACTL_EINVAL, "eval: a model and a request list are required");
        goto out;
    }
    if (!o)
        o = &def;
    if (o->batch <= 0 || o->max_tokens < 0 || o->threads < 0 || (!o->skip && o->n_skip)) {
        rc = actl__err(ACTL_EINVAL, "eval options: batch %d, max_tokens %lld, threads %d: "
                                    "batch must be positive, the others not negative",
                       o->batch, (long long)o->max_tokens, o->threads);
        goto out;
    }
    actl_model_info mi;
    actl_model_info_get(m, &mi);
    if (tok && actl_tokenizer_vocab_size(tok) > (size_t)mi.vocab) {
        rc = actl__err(ACTL_EINVAL, "eval: the tokenizer has %zu tokens, more than the model's "
                                    "%lld", actl_tokenizer_vocab_size(tok), (long long)mi.vocab);
        goto out;
    }
    R.m = m;
    R.tok = tok;
    R.o = o;
    R.max_seq = mi.max_seq;
    R.bos = tok && actl_tokenizer_bos(tok) >= 0 ? actl_tokenizer_bos(tok) : mi.bos_id;
    int32_t eos = tok && actl_tokenizer_eos(tok) >= 0 ? actl_tokenizer_eos(tok) : mi.eos_id;
    /* EOS ends generation; a llama2.c model's also ends at BOS (as generate) */
    if (eos >= 0)
        R.stop_ids[R.n_stop_ids++] = eos;
    if (!strcmp(mi.source, "llama2c") && R.bos >= 0 && R.bos != eos)
        R.stop_ids[R.n_stop_ids++] = R.bos;

    /* resume: sorted ids for a lookup per request */
    if (o->n_skip) {
        if (!(skip = malloc(o->n_skip * sizeof *skip))) {
            rc = actl__oom();
            goto out;
        }
        memcpy(skip, o->skip, o->n_skip * sizeof *skip);
        qsort(skip, o->n_skip, sizeof *skip, cmp_str);
    }
    size_t n_req = actl_eval_reqs_count(l);
    for (size_t i = 0; i < n_req; i++) {
        const char *id = actl_eval_reqs_get(l, i)->id;
        R.total += !(skip && id && bsearch(&id, skip, o->n_skip, sizeof *skip, cmp_str));
    }

    actl_batch_opts bo = actl_batch_default_opts();
    bo.max_seqs = o->batch;
    bo.max_ctx = mi.max_seq;
    bo.force = o->force;
    bo.threads = o->threads;
    if ((rc = actl_batch_new(m, &bo, &R.b)))
        goto out;
    if (!(R.slots = calloc((size_t)o->batch, sizeof *R.slots))) {
        rc = actl__oom();
        goto out;
    }
    R.t0 = now_seconds();
    if (o->progress)
        o->progress(0, R.total, o->progress_ctx);

    size_t next = 0;
    for (;;) {
        /* refill every free slot from the queue */
        int live = 0;
        for (int s = 0; s < o->batch; s++) {
            slot *S = &R.slots[s];
            while (!S->live && next < n_req) {
                const actl_eval_req *r = actl_eval_reqs_get(l, next++);
                if (skip && r->id && bsearch(&r->id, skip, o->n_skip, sizeof *skip, cmp_str))
                    continue;
                if ((rc = start(&R, r, S)))
                    goto out;
            }
            live += S->live;
        }
        if (!live)
            break;
        if ((rc = actl_batch_step(R.b, NULL)))
            goto out;
        for (int s = 0; s < o->batch; s++) {
            slot *S = &R.slots[s];
            if (!S->live)
                continue;
            const int32_t *ids;
            const float *lps;
            size_t n = actl_batch_tokens(R.b, S->seq, &ids, &lps);
            if ((rc = advance_text(&R, S, ids, n)))
                goto out;
            if ((S->stopped || actl_batch_finished(R.b, S->seq) != ACTL_RUNNING) &&
                (rc = finish(&R, S)))
                goto out;
        }
    }

    if (out) {
        if (!(sum = calloc(1, sizeof *sum)) ||
            (R.n_labs && !(sum->rows = calloc(R.n_labs, sizeof *sum->rows)))) {
            rc = actl__oom();
            goto out;
        }
        sum->seconds = now_seconds() - R.t0;
        for (size_t i = 0; i < R.n_labs; i++, sum->n++) {
            actl_eval_summary_row *w = &sum->rows[i];
            w->adapter = R.labs[i].name;
            R.labs[i].name = NULL;
            w->requests = R.labs[i].requests;
            w->scored = R.labs[i].scored;
            w->correct = R.labs[i].correct;
            w->completion_tokens = R.labs[i].tokens;
            w->seconds = R.labs[i].last;
        }
        *out = sum;
        sum = NULL;
    }
out:
    actl_eval_summary_free(sum);
    for (size_t i = 0; i < R.n_labs; i++) {
        free(R.labs[i].name);
        free(R.labs[i].err);
    }
    free(R.labs);
    for (int s = 0; R.slots && s < o->batch; s++)
        free(R.slots[s].text);
    free(R.slots);
    actl_batch_free(R.b);
    free(skip);
    return rc;
}
