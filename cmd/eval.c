/*
 * eval.c: `adapterctl eval --model PATH ...`: runs a stream of requests (a
 * JSONL file, or a dataset times a list of adapters) with continuous
 * batching, writes one JSON line per finished request, and summarizes per
 * adapter (DESIGN.md 11).
 */
#include "cmd.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

cmd_fn cmd_eval;

static const char *const eval_usage[] = {
    "adapterctl eval --model PATH [--tokenizer PATH]",
    "                (--requests FILE.jsonl | --dataset FILE.json --adapter REF[,REF...])",
    "                [--batch N] [--limit N] [--max-tokens N] [--out FILE] [--force]",
    "                [--threads N] [--json]",
    "",
    "Runs requests through the CPU decoder, up to --batch (default 8) at a time,",
    "a finished one's slot refilled at once whatever its adapter. --requests: one",
    "JSON object per line (id, adapter, prompt or prompt_ids, max_tokens,",
    "temperature, top_p, seed, stop, answer and scorer, or continuation); a bad",
    "line is reported with its number and the rest still run. --dataset: an",
    "LLM-Adapters JSON array, each of the first --limit records (default: all)",
    "run once per --adapter ref (\"none\": the base alone), in their Alpaca",
    "prompt, scored by their rules. With --requests, --limit runs the first N",
    "requests. Each finished request is one JSON line on --out (else stdout):",
    "{\"id\", \"adapter\", \"prompt_tokens\", \"completion_tokens\", \"text\",",
    "\"finish\", \"prediction\", \"correct\", \"logprob\"}. When --out exists, the",
    "ids it holds are not run again and new lines are appended (a line cut by",
    "a killed run is dropped first; a file whose lines are not eval results is",
    "refused). Then a summary per adapter of this run (requests, correct,",
    "accuracy, completion tokens, tokens/s) and the decoding used, on stdout",
    "with --out, else on stderr; with --json as one JSON document",
    "{\"summary\", \"decoding\", \"seconds\", \"earlier\"} (earlier: the results",
    "already in --out, not counted in the summary).",
    NULL,
};

/* A growable list of malloc'd strings. */
struct strs {
    char **v;
    size_t n, cap;
};

static int strs_add(struct strs *l, const char *s, size_t len)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c)
        return -1;
    memcpy(c, s, len);
    c[len] = 0;
    l->v[l->n++] = c;
    return 0;
}

static void strs_free(struct strs *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Resume: the ids of the complete lines of an existing --out. A last line
 * without its newline is what a killed run was writing: the file is cut
 * back to the end of the line before it, so appends start on a fresh line. */
static int read_done_ids(const char *path, struct strs *ids)
{
    int rc = CMD_FAIL;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return CMD_OK;
        cmd_error("'%s': %s", path, strerror(errno));
        return CMD_FAIL;
    }
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            cap = cap ? 2 * cap : 65536 * 2;
            char *b = realloc(buf, cap);
            if (!b) {
                rc = cmd_lib_error(ACTL_ENOMEM);
                goto out;
            }
            buf = b;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        cmd_error("'%s': %s", path, strerror(errno));
        goto out;
    }
    size_t keep = len;
    while (keep > 0 && buf[keep - 1] != '\n')
        keep--;
    /* only a cut result line is ours to drop: anything else means --out names
     * some other file, which must not be cut or appended to */
    if (keep < len && (len - keep < 6 || memcmp(buf + keep, "{\"id\":", 6) != 0)) {
        cmd_error("'%s': its last line is not an eval result line cut short: refusing to "
                  "change the file (is --out the right file?)", path);
        goto out;
    }
    for (size_t i = 0, line = 1; i < keep; line++) {
        size_t e = i;
        while (buf[e] != '\n')
            e++;
        json_error_t jerr;
        json_t *o = json_loadb(buf + i, e - i, 0, &jerr);
        int ok = json_is_string(json_object_get(o, "id")) &&
                 json_is_string(json_object_get(o, "finish"));
        json_decref(o);
        if (!ok) {
            cmd_error("'%s' line %zu is not an eval result line: refusing to append to the file "
                      "(is --out the right file?)", path, line);
            goto out;
        }
        i = e + 1;
    }
    if (keep < len && truncate(path, (off_t)keep) != 0) {
        cmd_error("'%s': cannot drop the unfinished last line: %s", path, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < keep;) {
        size_t e = i;
        while (buf[e] != '\n')
            e++;
        json_error_t jerr;
        json_t *o = e > i ? json_loadb(buf + i, e - i, 0, &jerr) : NULL;
        json_t *id = o ? json_object_get(o, "id") : NULL;
        int bad = json_is_string(id) &&
                  strs_add(ids, json_string_value(id), json_string_length(id)) != 0;
        json_decref(o);
        if (bad) {
            rc = cmd_lib_error(ACTL_ENOMEM);
            goto out;
        }
        i = e + 1;
    }
    rc = CMD_OK;
out:
    free(buf);
    fclose(f);
    return rc;
}

struct run_state {
    FILE *out;
    const char *out_name;
    size_t tokens;             /* completion tokens so far, for the progress line */
    struct cmd_progress prog;
    int bad_write;
    size_t failed;             /* requests that could not run (finish "error") */
};

static int on_result(const actl_eval_result *r, void *vctx)
{
    struct run_state *st = vctx;
    if (!st->out) /* closed after a failed write */
        return ACTL_EIO;
    if (r->finish && strcmp(r->finish, "error") == 0) {
        /* not written: a rerun with the same --out tries it again (once the
         * adapter is added, say), and the exit status says the run is short */
        if (st->prog.shown)
            cmd_progress_end(&st->prog);
        cmd_error("request '%s': %s", r->req->id, r->text ? r->text : "failed");
        st->failed++;
        return ACTL_OK;
    }
    char *text = r->text ? cmd_utf8_clean(r->text, strlen(r->text)) : NULL;
    if (r->text && !text)
        return ACTL_ENOMEM;
    json_t *o = json_object();
    int rc = ACTL_ENOMEM;
    if (!o)
        goto out;
    json_t *pred = r->prediction ? json_string(r->prediction) : json_null();
    if (r->prediction && !pred) /* not UTF-8: it came from the text, so clean it too */
        pred = json_null();
    if (json_object_set_new(o, "id", json_string(r->req->id)) ||
        json_object_set_new(o, "adapter", json_string(r->adapter ? r->adapter : "none")) ||
        json_object_set_new(o, "prompt_tokens", json_integer((json_int_t)r->prompt_tokens)) ||
        json_object_set_new(o, "completion_tokens",
                            json_integer((json_int_t)r->completion_tokens)) ||
        json_object_set_new(o, "text", text ? json_string(text) : json_null()) ||
        json_object_set_new(o, "finish", json_string(r->finish ? r->finish : "length")) ||
        json_object_set_new(o, "prediction", pred) ||
        json_object_set_new(o, "correct",
                            r->correct < 0 ? json_null() : json_boolean(r->correct)) ||
        json_object_set_new(o, "logprob", r->has_logprob ? json_real(r->logprob) : json_null()))
        goto out;
    char *line = json_dumps(o, JSON_COMPACT);
    if (!line)
        goto out;
    /* The size before this line: every earlier line was flushed whole. */
    struct stat sb;
    bool regular = st->out != stdout && fstat(fileno(st->out), &sb) == 0 && S_ISREG(sb.st_mode);
    /* one write per line and a flush: a kill loses at most the line being written */
    int ok = fprintf(st->out, "%s\n", line) >= 0 && fflush(st->out) == 0;
    free(line);
    rc = ACTL_OK;
    if (!ok) {
        st->bad_write = errno ? errno : EIO;
        rc = ACTL_EIO;
        /* A full disk or a size limit leaves part of the line written: cut
         * the file back to its last whole line, so --out holds only complete
         * results. Closed first, so that no buffered rest is written after. */
        if (regular) {
            fclose(st->out);
            st->out = NULL;
            if (truncate(st->out_name, sb.st_size) != 0)
                cmd_error("'%s': cannot drop the unfinished last line: %s", st->out_name,
                          strerror(errno));
        }
    }
    st->tokens += r->completion_tokens;
out:
    json_decref(o);
    free(text);
    return rc;
}

/* Requests done / total, a bar, completion tokens/s and the ETA, redrawn in
 * place (cmd_progress_update speaks bytes; these are requests). */
static void on_progress(uint64_t done, uint64_t total, void *vctx)
{
    struct run_state *st = vctx;
    struct cmd_progress *p = &st->prog;
    if (!p->enabled)
        return;
    double now = cmd_seconds_now(), el = now - p->start;
    if (!(total && done >= total) && p->last_draw >= 0 && now - p->last_draw < 0.1)
        return;
    p->last_draw = now;
    char bar[21], eta[32], line[160];
    uint64_t shown = total && done > total ? total : done;
    int cells = total ? (int)((double)shown / (double)total * 20) : 0;
    for (int i = 0; i < 20; i++)
        bar[i] = i < cells ? '#' : '.';
    bar[20] = 0;
    double rate = el >= 0.05 ? (double)done / el : 0;
    if (rate > 0 && total >= shown) {
        long s = (long)((double)(total - shown) / rate + 0.5);
        snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
    } else {
        snprintf(eta, sizeof eta, "--:--");
    }
    int n = snprintf(line, sizeof line, "%llu / %llu requests [%s]  %.1f tokens/s  ETA %s",
                     (unsigned long long)done, (unsigned long long)total, bar,
                     el >= 0.05 ? (double)st->tokens / el : 0.0, eta);
    if (n < 0)
        return;
    int pad = p->shown > n ? p->shown - n : 0;
    fprintf(stderr, "\r%s%*s", line, pad, "");
    fflush(stderr);
    p->shown = n;
}

static void on_problem(const char *message, void *ctx)
{
    (void)ctx;
    fprintf(stderr, "adapterctl: %s\n", message);
}

/* What the summary says about decoding: greedy unless a request sampled. */
static const char *decoding_of(const actl_eval_reqs *l)
{
    size_t n = actl_eval_reqs_count(l), sampled = 0;
    for (size_t i = 0; i < n; i++)
        sampled += actl_eval_reqs_get(l, i)->temperature > 0;
    return sampled == 0 ? "greedy" : sampled == n ? "sampled" : "greedy and sampled";
}

static int print_summary(FILE *f, const actl_eval_summary *sum, const char *decoding, int json,
                         size_t earlier, const char *out_path)
{
    size_t n = actl_eval_summary_count(sum);
    double secs = actl_eval_summary_seconds(sum);
    if (json) {
        json_t *rows = json_array();
        for (size_t i = 0; rows && i < n; i++) {
            const actl_eval_summary_row *r = actl_eval_summary_get(sum, i);
            json_t *acc = r->scored ? json_real((double)r->correct / (double)r->scored)
                                    : json_null();
            json_array_append_new(
                rows, json_pack("{s:s, s:I, s:I, s:I, s:o, s:I, s:f, s:f}", "adapter",
                                r->adapter, "requests", (json_int_t)r->requests, "scored",
                                (json_int_t)r->scored, "correct", (json_int_t)r->correct,
                                "accuracy", acc, "completion_tokens",
                                (json_int_t)r->completion_tokens, "seconds", r->seconds,
                                "tokens_per_second",
                                r->seconds > 0 ? (double)r->completion_tokens / r->seconds
                                               : 0.0));
        }
        json_t *doc = rows ? json_pack("{s:o, s:s, s:f, s:I}", "summary", rows, "decoding",
                                       decoding, "seconds", secs, "earlier",
                                       (json_int_t)earlier)
                           : NULL;
        if (!doc) {
            cmd_error("cannot build the summary document");
            return CMD_FAIL;
        }
        char *s = json_dumps(doc, JSON_INDENT(2));
        json_decref(doc);
        if (!s)
            return cmd_lib_error(ACTL_ENOMEM);
        fprintf(f, "%s\n", s);
        free(s);
        return fflush(f) == 0 ? CMD_OK : CMD_FAIL;
    }
    size_t w = strlen("adapter");
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(actl_eval_summary_get(sum, i)->adapter);
        w = l > w ? l : w;
    }
    fprintf(f, "%-*s  %8s  %8s  %8s  %17s  %10s\n", (int)w, "adapter", "requests", "correct",
            "accuracy", "completion tokens", "tokens/s");
    for (size_t i = 0; i < n; i++) {
        const actl_eval_summary_row *r = actl_eval_summary_get(sum, i);
        char acc[32], corr[32];
        if (r->scored) {
            snprintf(acc, sizeof acc, "%.1f%%", 100.0 * (double)r->correct / (double)r->scored);
            snprintf(corr, sizeof corr, "%zu", r->correct);
        } else {
            snprintf(acc, sizeof acc, "-");
            snprintf(corr, sizeof corr, "-");
        }
        fprintf(f, "%-*s  %8zu  %8s  %8s  %17zu  %10.1f\n", (int)w, r->adapter, r->requests, corr,
                acc, r->completion_tokens,
                r->seconds > 0 ? (double)r->completion_tokens / r->seconds : 0.0);
    }
    fprintf(f, "decoding: %s; %.2f s\n", decoding, secs);
    if (earlier)
        fprintf(f, "(this run only: %zu earlier result%s in '%s' are not counted above)\n",
                earlier, earlier == 1 ? "" : "s", out_path);
    return fflush(f) == 0 ? CMD_OK : CMD_FAIL;
}

/* "a,b,none" into lst (malloc'd copies); -1 on an empty item. */
static int split_refs(const char *s, struct strs *lst)
{
    for (const char *p = s;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 0 || strs_add(lst, p, len) != 0)
            return -1;
        if (!e)
            return 0;
        p = e + 1;
    }
}

/* Whether some adapter ref is a name for the store (not a directory, not "none"). */
static int needs_store(const actl_eval_reqs *l)
{
    size_t n = actl_eval_reqs_count(l);
    for (size_t i = 0; i < n; i++) {
        const actl_eval_req *r = actl_eval_reqs_get(l, i);
        for (size_t k = 0; k < r->n_adapter; k++)
            if (strcmp(r->adapter[k], "none") != 0 && !cmd_is_dir(r->adapter[k]))
                return 1;
    }
    return 0;
}

int cmd_eval(int argc, char **argv, struct cmd_ctx *ctx)
{
    const char *model_path = NULL, *tok_path = NULL, *req_path = NULL, *data_path = NULL;
    const char *adapter_arg = NULL, *batch_arg = NULL, *limit_arg = NULL, *maxtok_arg = NULL;
    const char *out_path = NULL, *threads_arg = NULL;
    int force = 0;
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "model", &model_path, "PATH",
                       "an HF LLaMA-family directory or a llama2.c .bin checkpoint"),
        CMD_OPT_STRING(0, "tokenizer", &tok_path, "PATH",
                       "the tokenizer (default: the one in the model's directory)"),
        CMD_OPT_STRING(0, "requests", &req_path, "FILE", "requests, one JSON object per line"),
        CMD_OPT_STRING(0, "dataset", &data_path, "FILE", "an LLM-Adapters JSON dataset"),
        CMD_OPT_STRING(0, "adapter", &adapter_arg, "REF[,REF...]",
                       "with --dataset: the adapters to compare (\"none\": the base)"),
        CMD_OPT_STRING(0, "batch", &batch_arg, "N", "sequences in flight (default 8)"),
        CMD_OPT_STRING(0, "limit", &limit_arg, "N", "the first N records or requests"),
        CMD_OPT_STRING(0, "max-tokens", &maxtok_arg, "N",
                       "new tokens for requests that give none (default 256)"),
        CMD_OPT_STRING(0, "out", &out_path, "FILE", "write the result lines here (resumable)"),
        CMD_OPT_FLAG(0, "force", &force,
                     "run adapters that name another base model (shapes still checked)"),
        CMD_OPT_STRING(0, "threads", &threads_arg, "N", "worker threads (default: every CPU)"),
        CMD_OPT_STORE(ctx),
        CMD_OPT_GLOBALS(ctx),
        CMD_OPT_END(),
    };
    actl_model *model = NULL;
    actl_tokenizer *tok = NULL;
    actl_store *s = NULL;
    actl_eval_reqs *reqs = NULL;
    actl_eval_summary *sum = NULL;
    struct strs refs = {0}, done = {0};
    const char **skip = NULL;
    struct run_state st = {0};
    int nargs, lrc;

    int rc = cmd_parse(argc, argv, opts, eval_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        goto out;
    rc = CMD_USAGE;
    int64_t batch = 8, limit = 0, max_tokens = 256, threads = 0;
    if (nargs > 0) {
        cmd_usage_error(eval_usage, "unexpected argument '%s'", argv[0]);
        goto out;
    }
    if (!model_path) {
        cmd_usage_error(eval_usage, "missing --model PATH");
        goto out;
    }
    if (!req_path == !data_path) {
        cmd_usage_error(eval_usage, "give --requests FILE or --dataset FILE (one of them)");
        goto out;
    }
    if (data_path && !adapter_arg) {
        cmd_usage_error(eval_usage, "--dataset needs --adapter REF[,REF...] (\"none\": the base)");
        goto out;
    }
    if (req_path && adapter_arg) {
        cmd_usage_error(eval_usage, "--adapter goes with --dataset; requests name their own");
        goto out;
    }
    if (adapter_arg && split_refs(adapter_arg, &refs) != 0) {
        cmd_usage_error(eval_usage, "--adapter '%s' is not a comma-separated list of refs",
                        adapter_arg);
        goto out;
    }
    if (batch_arg && (cmd_parse_int(batch_arg, 1, &batch) != 0 || batch > 4096)) {
        cmd_usage_error(eval_usage, "--batch '%s' is not a number from 1 to 4096", batch_arg);
        goto out;
    }
    if (limit_arg && cmd_parse_int(limit_arg, 1, &limit) != 0) {
        cmd_usage_error(eval_usage, "--limit '%s' is not a number >= 1", limit_arg);
        goto out;
    }
    if (maxtok_arg && cmd_parse_int(maxtok_arg, 0, &max_tokens) != 0) {
        cmd_usage_error(eval_usage, "--max-tokens '%s' is not a number >= 0", maxtok_arg);
        goto out;
    }
    if (threads_arg && (cmd_parse_int(threads_arg, 1, &threads) != 0 || threads > 1024)) {
        cmd_usage_error(eval_usage, "--threads '%s' is not a number from 1 to 1024",
                        threads_arg);
        goto out;
    }
    rc = CMD_FAIL;

    /* requests first: a bad file is reported before the model is loaded */
    if (req_path)
        lrc = actl_eval_reqs_jsonl(req_path, on_problem, NULL, &reqs);
    else
        lrc = actl_eval_reqs_dataset(data_path, (const char *const *)refs.v, refs.n,
                                     (size_t)limit, &reqs);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    if (out_path && (rc = read_done_ids(out_path, &done)) != CMD_OK)
        goto out;
    rc = CMD_FAIL;
    /* --limit over JSONL requests: the ones after the first N are skipped too */
    size_t n_req = actl_eval_reqs_count(reqs);
    if (req_path && limit)
        for (size_t i = (size_t)limit; i < n_req; i++) {
            const char *id = actl_eval_reqs_get(reqs, i)->id;
            if (strs_add(&done, id, strlen(id)) != 0) {
                rc = cmd_lib_error(ACTL_ENOMEM);
                goto out;
            }
        }
    if (done.n && !(skip = malloc(done.n * sizeof *skip))) {
        rc = cmd_lib_error(ACTL_ENOMEM);
        goto out;
    }
    for (size_t i = 0; i < done.n; i++)
        skip[i] = done.v[i];

    if ((lrc = actl_model_load(model_path, 0, &model)) != ACTL_OK ||
        (lrc = cmd_load_tokenizer(model_path, tok_path, &tok)) != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    actl_model_info mi;
    actl_model_info_get(model, &mi);
    if (tok && actl_tokenizer_vocab_size(tok) > (size_t)mi.vocab) {
        cmd_error("the tokenizer has %zu tokens, more than the model's %lld",
                  actl_tokenizer_vocab_size(tok), (long long)mi.vocab);
        goto out;
    }
    if (needs_store(reqs) && (rc = cmd_store_open(ctx, &s)) != CMD_OK)
        goto out;
    rc = CMD_FAIL;

    st.out = stdout;
    st.out_name = "stdout";
    if (out_path) {
        if (!(st.out = fopen(out_path, "ab"))) {
            cmd_error("'%s': %s", out_path, strerror(errno));
            goto out;
        }
        st.out_name = out_path;
    }
    cmd_progress_init(&st.prog, ctx);

    actl_eval_opts o = actl_eval_default_opts();
    o.batch = (int)batch;
    o.max_tokens = max_tokens;
    o.store = s;
    o.force = force;
    o.threads = (int)threads;
    o.skip = skip;
    o.n_skip = done.n;
    o.on_result = on_result;
    o.ctx = &st;
    o.progress = on_progress;
    o.progress_ctx = &st;
    lrc = actl_eval_run(model, tok, reqs, &o, &sum);
    cmd_progress_end(&st.prog);
    if (lrc != ACTL_OK) {
        if (st.bad_write)
            cmd_error("cannot write '%s': %s", st.out_name, strerror(st.bad_write));
        else
            cmd_lib_error(lrc);
        goto out;
    }
    rc = print_summary(out_path ? stdout : stderr, sum, decoding_of(reqs), ctx->json, done.n,
                       out_path);
    if (rc == CMD_OK && st.failed) {
        cmd_error("%zu request%s could not run (reported above)", st.failed,
                  st.failed == 1 ? "" : "s");
        rc = CMD_FAIL;
    }
out:
    if (st.out && st.out != stdout && fclose(st.out) != 0 && rc == CMD_OK) {
        cmd_error("'%s': %s", out_path, strerror(errno));
        rc = CMD_FAIL;
    }
    actl_eval_summary_free(sum);
    actl_eval_reqs_free(reqs);
    actl_store_close(s);
    actl_tokenizer_free(tok);
    actl_model_free(model);
    free(skip);
    strs_free(&done);
    strs_free(&refs);
    return rc;
}
