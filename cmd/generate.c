/*
 * generate.c: `adapterctl generate --model PATH ...`: runs the CPU reference
 * decoder on one prompt, with no adapter, one, or several applied as a stack.
 */
#include "cmd.h"

#include <stdbool.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

cmd_fn cmd_generate;

static const char *const generate_usage[] = {
    "adapterctl generate --model PATH [--tokenizer PATH] [--adapter NAME[@V][:W]|DIR]...",
    "                    [--prompt TEXT | --prompt-ids LIST] [-n N] [--temperature T]",
    "                    [--top-k K] [--top-p P] [--seed S] [--stop TEXT]... [--no-bos]",
    "                    [--no-special] [--widen] [--force] [--threads N] [--json]",
    "",
    "Generates N new tokens (default 256) after the prompt with the model PATH (a",
    "Hugging Face LLaMA-family directory or a llama2.c .bin checkpoint). The",
    "tokenizer is --tokenizer, else the one in the model's directory. Without a",
    "prompt the sequence starts at BOS. A --prompt is encoded as HF does: BOS",
    "first when the tokenizer's files say so (not with --no-bos), special-token",
    "text (<|im_start|>) as those tokens (not with --no-special). --prompt-ids",
    "gives token ids directly (comma-separated), for models without a",
    "tokenizer. Each --adapter is a stored adapter or a PEFT directory;",
    "several apply in order as a stack (the first innermost). An adapter that",
    "names another base model than the model's is refused unless --force (its",
    "shapes are checked all the same). --temperature 0 (the default) is greedy;",
    "--seed makes",
    "sampling repeatable. Generation ends after N tokens, at EOS (and, for a",
    "llama2.c model, at BOS), or at a --stop text (the text is cut before it;",
    "ids and logprobs keep the tokens up to the one that completed it). The",
    "prompt and the continuation are printed as they come; with --json:",
    "{\"model\", \"adapters\", \"prompt_ids\", \"ids\", \"text\", \"logprobs\",",
    "\"finish\", \"seconds\", \"tokens_per_second\"} (text null without a",
    "tokenizer; bytes that are not UTF-8 become U+FFFD in it).",
    NULL,
};

static int parse_float(const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !(v >= min && v <= max))
        return -1;
    *out = v;
    return 0;
}

/* "1,42,99" into a malloc'd array. -1 on a malformed list. */
static int parse_ids(const char *s, int32_t **ids, size_t *n)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    size_t k = 0;
    if (!v)
        return -1;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        v[k++] = (int32_t)x;
        if (!*end)
            break;
        p = end + 1;
    }
    *ids = v;
    *n = k;
    return 0;
}

/* The text printed so far and what is held back: bytes of a UTF-8 sequence
 * cut between tokens wait for the rest, and with --stop everything waits
 * for the end (a stop text may span tokens). */
struct out_text {
    char *buf;
    size_t len, cap;
    size_t printed;
    int stream;
};

static int text_append(struct out_text *t, const char *p, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b)
            return -1;
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
    t->buf[t->len] = 0;
    return 0;
}

/* The end of the last complete UTF-8 sequence in b[from, len). */
static size_t utf8_complete(const char *b, size_t from, size_t len)
{
    size_t i = len;
    /* look back at most 3 continuation bytes for the lead byte of a cut sequence */
    for (size_t back = 0; back < 4 && i > from; back++) {
        unsigned char c = (unsigned char)b[i - 1];
        if (c < 0x80)
            return len;
        if (c >= 0xC0) {
            size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            return len - (i - 1) >= need ? len : i - 1;
        }
        i--;
    }
    return len;
}

static void text_flush(struct out_text *t, int all)
{
    if (!t->stream)
        return;
    size_t end = all ? t->len : utf8_complete(t->buf, t->printed, t->len);
    if (end > t->printed) {
        fwrite(t->buf + t->printed, 1, end - t->printed, stdout);
        fflush(stdout);
        t->printed = end;
    }
}

/* Appends token id's text after prev (-1: none) as the library builds a
 * continuation's text, so that eval's texts and ours cannot drift apart. */
static int append_piece(struct out_text *t, const actl_tokenizer *tok, int32_t prev,
                        int32_t bos, int32_t id)
{
    char *s;
    size_t n;
    if (actl_tokenizer_continuation(tok, prev, bos, NULL, 0, &id, 1, &s, &n) != ACTL_OK)
        return -1;
    int rc = n ? text_append(t, s, n) : 0;
    free(s);
    return rc;
}

int cmd_generate(int argc, char **argv, struct cmd_ctx *ctx)
{
    const char *model_path = NULL, *tok_path = NULL, *prompt = NULL, *prompt_ids = NULL;
    const char *n_arg = NULL, *temp_arg = NULL, *topk_arg = NULL, *topp_arg = NULL;
    const char *seed_arg = NULL, *threads_arg = NULL;
    struct cmd_list adapters = {0}, stops = {0};
    int no_bos = 0, no_special = 0, widen = 0, force = 0;
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "model", &model_path, "PATH",
                       "an HF LLaMA-family directory or a llama2.c .bin checkpoint"),
        CMD_OPT_STRING(0, "tokenizer", &tok_path, "PATH",
                       "tokenizer.bin, tokenizer.json, tokenizer.model, vocab.json or .gguf"),
        CMD_OPT_LIST(0, "adapter", &adapters, "REF",
                     "NAME[@V][:W] or DIR; repeat for a stack (first innermost)"),
        CMD_OPT_STRING(0, "prompt", &prompt, "TEXT", "the prompt text"),
        CMD_OPT_STRING(0, "prompt-ids", &prompt_ids, "LIST", "the prompt as token ids: 1,42,99"),
        CMD_OPT_STRING('n', NULL, &n_arg, "N", "new tokens to generate (default 256)"),
        CMD_OPT_STRING(0, "temperature", &temp_arg, "T", "0 (default): greedy"),
        CMD_OPT_STRING(0, "top-k", &topk_arg, "K", "sample among the K likeliest (0: off)"),
        CMD_OPT_STRING(0, "top-p", &topp_arg, "P", "nucleus sampling (1: off, the default)"),
        CMD_OPT_STRING(0, "seed", &seed_arg, "S", "the sampler's seed (default: the time)"),
        CMD_OPT_LIST(0, "stop", &stops, "TEXT", "end when the continuation contains TEXT"),
        CMD_OPT_FLAG(0, "no-bos", &no_bos, "do not put BOS before a --prompt"),
        CMD_OPT_FLAG(0, "no-special", &no_special,
                     "read special-token text in a --prompt as plain text"),
        CMD_OPT_FLAG(0, "widen", &widen, "widen every weight to F32 at load"),
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
    actl_inputs *list = NULL;
    actl_batch *batch = NULL;
    int32_t *ids = NULL, *stop_ids = NULL;
    size_t n_ids = 0;
    struct out_text text = {0};
    json_t *doc = NULL;
    int nargs, lrc;

    int rc = cmd_parse(argc, argv, opts, generate_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        goto out;
    rc = CMD_USAGE;
    if (nargs > 0) {
        cmd_usage_error(generate_usage, "unexpected argument '%s'", argv[0]);
        goto out;
    }
    if (!model_path) {
        cmd_usage_error(generate_usage, "missing --model PATH");
        goto out;
    }
    if (prompt && prompt_ids) {
        cmd_usage_error(generate_usage, "give --prompt or --prompt-ids, not both");
        goto out;
    }
    int64_t n_new = 256, top_k = 0, threads = 0;
    double temperature = 0, top_p = 1;
    uint64_t seed = (uint64_t)time(NULL);
    if (n_arg && cmd_parse_int(n_arg, 0, &n_new) != 0) {
        cmd_usage_error(generate_usage, "-n '%s' is not a number of tokens", n_arg);
        goto out;
    }
    if (temp_arg && parse_float(temp_arg, 0, 1e6, &temperature) != 0) {
        cmd_usage_error(generate_usage, "--temperature '%s' is not a number >= 0", temp_arg);
        goto out;
    }
    if (topk_arg && (cmd_parse_int(topk_arg, 0, &top_k) != 0 || top_k > INT32_MAX)) {
        cmd_usage_error(generate_usage, "--top-k '%s' is not a number from 0 to %d", topk_arg,
                        INT32_MAX);
        goto out;
    }
    if (topp_arg && (parse_float(topp_arg, 0, 1, &top_p) != 0 || top_p == 0)) {
        cmd_usage_error(generate_usage, "--top-p '%s' is not a number in (0, 1]", topp_arg);
        goto out;
    }
    if (seed_arg) {
        int64_t v;
        if (cmd_parse_int(seed_arg, 0, &v) != 0) {
            cmd_usage_error(generate_usage, "--seed '%s' is not a number >= 0", seed_arg);
            goto out;
        }
        seed = (uint64_t)v;
    }
    if (threads_arg && (cmd_parse_int(threads_arg, 1, &threads) != 0 || threads > 1024)) {
        cmd_usage_error(generate_usage, "--threads '%s' is not a number from 1 to 1024",
                        threads_arg);
        goto out;
    }
    if (prompt_ids && parse_ids(prompt_ids, &ids, &n_ids) != 0) {
        cmd_usage_error(generate_usage,
                        "--prompt-ids '%s' is not a comma-separated list of token ids",
                        prompt_ids);
        goto out;
    }
    rc = CMD_FAIL;

    if ((lrc = actl_model_load(model_path, widen ? ACTL_MODEL_WIDEN : 0, &model)) != ACTL_OK ||
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
    int32_t bos = tok && actl_tokenizer_bos(tok) >= 0 ? actl_tokenizer_bos(tok) : mi.bos_id;
    int32_t eos = tok && actl_tokenizer_eos(tok) >= 0 ? actl_tokenizer_eos(tok) : mi.eos_id;
    if (!prompt_ids) {
        if (prompt && !tok) {
            cmd_error("'%s' has no tokenizer: give --tokenizer PATH, or the prompt as "
                      "--prompt-ids", model_path);
            goto out;
        }
        if (prompt && *prompt) {
            int flags = (!no_bos && actl_tokenizer_adds_bos(tok) ? ACTL_TOK_BOS : 0) |
                        (no_special ? 0 : ACTL_TOK_SPECIAL);
            if ((lrc = actl_tokenizer_encode(tok, prompt, strlen(prompt), flags, &ids,
                                             &n_ids))) {
                rc = cmd_lib_error(lrc);
                goto out;
            }
        }
        if (n_ids == 0) {
            /* no prompt: the sequence starts at BOS, as the reference decoders do */
            if (bos < 0) {
                cmd_error("'%s' names no BOS token to start from: give a prompt", model_path);
                goto out;
            }
            if (!(ids = malloc(sizeof *ids))) {
                rc = cmd_lib_error(ACTL_ENOMEM);
                goto out;
            }
            ids[0] = bos;
            n_ids = 1;
        }
    }
    if ((int64_t)n_ids >= mi.max_seq) {
        cmd_error("the prompt has %zu tokens, but '%s' holds %lld positions", n_ids, model_path,
                  (long long)mi.max_seq);
        goto out;
    }
    if (n_new > mi.max_seq - (int64_t)n_ids) {
        int64_t room = mi.max_seq - (int64_t)n_ids;
        if (!ctx->quiet)
            fprintf(stderr, "adapterctl: note: %lld new tokens do not fit in %lld positions "
                            "after the prompt's %zu: generating %lld\n",
                    (long long)n_new, (long long)mi.max_seq, n_ids, (long long)room);
        n_new = room;
    }

    /* adapters: every --adapter in order, one stack */
    int handle = 0;
    actl_batch_opts bo = actl_batch_default_opts();
    bo.max_seqs = 1;
    bo.max_ctx = (int64_t)n_ids + n_new;
    bo.threads = (int)threads;
    bo.force = force;
    if ((lrc = actl_batch_new(model, &bo, &batch)) != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    if (adapters.n) {
        if ((lrc = actl_inputs_new(&list)) != ACTL_OK) {
            rc = cmd_lib_error(lrc);
            goto out;
        }
        for (size_t i = 0; i < adapters.n; i++) {
            char *ref = NULL;
            double w;
            if ((lrc = actl_input_spec_parse(adapters.items[i], &ref, &w)) != ACTL_OK) {
                rc = cmd_usage_error(generate_usage, "%s", actl_errmsg());
                goto out;
            }
            if (!cmd_is_dir(ref) && !s && (rc = cmd_store_open(ctx, &s)) != CMD_OK) {
                free(ref);
                goto out;
            }
            rc = CMD_FAIL;
            lrc = actl_inputs_add(list, s, ref, w);
            free(ref);
            if (lrc != ACTL_OK) {
                rc = cmd_lib_error(lrc);
                goto out;
            }
        }
        size_t n_in;
        const actl_input *in = actl_inputs_items(list, &n_in);
        if ((lrc = actl_batch_adapter(batch, in, n_in, &handle)) != ACTL_OK) {
            rc = cmd_lib_error(lrc);
            goto out;
        }
    }

    /* EOS ends generation; a llama2.c model's also ends at BOS */
    int32_t stop_list[2];
    size_t n_stop = 0;
    if (eos >= 0)
        stop_list[n_stop++] = eos;
    if (!strcmp(mi.source, "llama2c") && bos >= 0 && bos != eos)
        stop_list[n_stop++] = bos;

    actl_request req = actl_request_default();
    req.prompt = ids;
    req.n_prompt = n_ids;
    req.adapter = handle;
    req.max_tokens = n_new;
    req.temperature = (float)temperature;
    req.top_k = (int)top_k;
    req.top_p = (float)top_p;
    req.seed = seed;
    req.stop_ids = stop_list;
    req.n_stop_ids = n_stop;
    int seq;
    if ((lrc = actl_batch_add(batch, &req, &seq)) != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }

    text.stream = !ctx->json && !stops.n;
    int32_t prev = -1;
    if (tok)
        for (size_t i = 0; i < n_ids; i++) {
            if (ids[i] != bos && append_piece(&text, tok, prev, bos, ids[i])) {
                rc = cmd_lib_error(ACTL_ENOMEM);
                goto out;
            }
            prev = ids[i];
        }
    text_flush(&text, 0);
    size_t prompt_text = text.len;

    double t0 = cmd_seconds_now();
    size_t done = 0;
    const char *stopped_at = NULL;
    while (actl_batch_finished(batch, seq) == ACTL_RUNNING && n_new > 0) {
        if ((lrc = actl_batch_step(batch, NULL)) != ACTL_OK) {
            text_flush(&text, 1);
            rc = cmd_lib_error(lrc);
            goto out;
        }
        const int32_t *out_ids;
        const float *lp;
        size_t n_out = actl_batch_tokens(batch, seq, &out_ids, &lp);
        for (; done < n_out; done++) {
            int32_t id = out_ids[done];
            int is_stop = 0;
            for (size_t k = 0; k < n_stop; k++)
                is_stop |= id == stop_list[k];
            if (tok && !is_stop && append_piece(&text, tok, prev, bos, id)) {
                rc = cmd_lib_error(ACTL_ENOMEM);
                goto out;
            }
            prev = id;
        }
        for (size_t k = 0; k < stops.n && !stopped_at; k++) {
            char *hit = text.buf ? strstr(text.buf + prompt_text, stops.items[k]) : NULL;
            if (hit && *stops.items[k]) {
                stopped_at = stops.items[k];
                text.len = (size_t)(hit - text.buf);
                text.buf[text.len] = 0;
            }
        }
        if (stopped_at)
            break;
        text_flush(&text, 0);
    }
    double secs = cmd_seconds_now() - t0;
    const int32_t *out_ids = NULL;
    const float *lp = NULL;
    size_t n_out = actl_batch_tokens(batch, seq, &out_ids, &lp);
    actl_finish fin = actl_batch_finished(batch, seq);

    if (ctx->json) {
        json_t *pids = json_array(), *oids = json_array(), *lps = json_array();
        json_t *ads = json_array();
        size_t n_in = 0;
        const actl_input *in = list ? actl_inputs_items(list, &n_in) : NULL;
        for (size_t i = 0; ads && i < n_in; i++)
            json_array_append_new(ads, json_pack("{s:s, s:f, s:s?}", "ref", in[i].ref, "weight",
                                                 in[i].weight, "pack", in[i].pack));
        for (size_t i = 0; pids && i < n_ids; i++)
            json_array_append_new(pids, json_integer(ids[i]));
        for (size_t i = 0; oids && lps && i < n_out; i++) {
            json_array_append_new(oids, json_integer(out_ids[i]));
            json_array_append_new(lps, json_real(lp[i]));
        }
        json_t *txt = json_null();
        if (tok) {
            char *u = cmd_utf8_clean(text.buf ? text.buf + prompt_text : "",
                                     text.len - prompt_text);
            json_decref(txt);
            txt = u ? json_string(u) : NULL;
            free(u);
        }
        doc = json_pack("{s:s, s:o, s:o, s:o, s:o, s:o, s:s, s:f, s:f}", "model", model_path,
                        "adapters", ads ? ads : json_null(), "prompt_ids", pids, "ids", oids,
                        "text", txt, "logprobs", lps,
                        "finish", stopped_at || fin == ACTL_FINISH_STOP ? "stop" : "length",
                        "seconds", secs, "tokens_per_second", secs > 0 ? n_out / secs : 0.0);
        rc = cmd_print_json(doc);
        doc = NULL;
    } else {
        if (!tok) {
            /* no tokenizer: the ids, one line */
            for (size_t i = 0; i < n_out; i++)
                printf("%s%d", i ? " " : "", out_ids[i]);
            printf("\n");
        } else {
            text.stream = 1;
            text_flush(&text, 1);
            printf("\n");
        }
        fflush(stdout);
        if (!ctx->quiet)
            fprintf(stderr, "adapterctl: %zu tokens in %.3f s (%.1f tokens/s)\n", n_out, secs,
                    secs > 0 ? n_out / secs : 0.0);
        rc = CMD_OK;
    }
out:
    json_decref(doc);
    free(text.buf);
    free(ids);
    free(stop_ids);
    actl_batch_free(batch);
    actl_inputs_free(list);
    actl_store_close(s);
    actl_tokenizer_free(tok);
    actl_model_free(model);
    cmd_list_free(&adapters);
    cmd_list_free(&stops);
    return rc;
}
