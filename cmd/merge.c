/*
 * merge.c: `adapterctl merge --base DIR --out DIR NAME[@V][:W]...`: folds
 * adapters into a base checkpoint (the library's actl_merge), or takes them
 * back out with --unmerge.
 */
#include "cmd.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

cmd_fn cmd_merge;

static const char *const merge_usage[] = {
    "adapterctl merge --base DIR --out DIR NAME[@V][:W]... [--dtype f32|f16|bf16]",
    "                 [--unmerge] [--force] [--threads N] [--json]",
    "",
    "Writes a copy of the checkpoint DIR (one safetensors file or shards with an",
    "index) with the adapters folded into its weights, in the order given, each",
    "with weight W (default 1): LoRA and MoS scale their delta by W, RoAd takes",
    "theta*W and alpha^W, DoRA moves each row's norm towards its magnitude by W.",
    "NAME[@V] is a stored adapter (a stack expands into its members); an",
    "existing directory is read as a PEFT adapter. The output has the same shard",
    "files, config, tokenizer and other files; it appears whole or not at all.",
    "--unmerge takes the adapters back out (in reverse order). Bottleneck",
    "adapters, DoRA unmerges and adapters made for another base (unless",
    "--force) are refused, as are adapters on the embeddings or output head of a",
    "base that ties them (unless --force), and merges whose results would not be",
    "finite. SIGINT, SIGTERM or SIGHUP stops the merge and removes what it wrote",
    "(exit status 1). With --json: {\"out\", \"base\", \"unmerge\", \"dtype\",",
    "\"tensors_merged\", \"tensors_copied\", \"files_copied\", \"bytes\", \"seconds\",",
    "\"inputs\": [{\"ref\", \"weight\", \"pack\"}]}.",
    NULL,
};

/* The signal that interrupted the merge, 0 until one does: actl_merge polls
 * it (actl_merge_opts.cancel), stops and removes its temporary directory. */
static volatile sig_atomic_t interrupted_by;

_Static_assert(sizeof(sig_atomic_t) == sizeof(int), "actl_merge_opts.cancel reads an int");

static void on_signal(int sig)
{
    interrupted_by = sig;
}

static const int merge_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define N_MERGE_SIGNALS (sizeof merge_signals / sizeof merge_signals[0])

/* SIGINT, SIGTERM and SIGHUP set interrupted_by instead of killing the
 * process, which would leave a full-size temporary directory behind; the
 * previous actions are kept in old to be put back. A signal the caller
 * ignores stays ignored (nohup, a shell's background job). */
static void catch_signals(struct sigaction old[N_MERGE_SIGNALS])
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    interrupted_by = 0;
    for (size_t i = 0; i < N_MERGE_SIGNALS; i++)
        if (sigaction(merge_signals[i], NULL, &old[i]) == 0 && old[i].sa_handler != SIG_IGN)
            sigaction(merge_signals[i], &sa, NULL);
}

static void restore_signals(const struct sigaction old[N_MERGE_SIGNALS])
{
    for (size_t i = 0; i < N_MERGE_SIGNALS; i++)
        sigaction(merge_signals[i], &old[i], NULL);
}

static int parse_dtype(const char *s, int *out)
{
    static const struct {
        const char *name;
        int dt;
    } names[] = {{"f32", ACTL_F32}, {"f16", ACTL_F16}, {"bf16", ACTL_BF16},
                 {"float32", ACTL_F32}, {"float16", ACTL_F16}, {"bfloat16", ACTL_BF16}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(s, names[i].name)) {
            *out = names[i].dt;
            return 0;
        }
    return -1;
}

/* The --dtype spelling of an output dtype, NULL for "keep". */
static const char *dtype_word(int dt)
{
    return dt == ACTL_F32 ? "f32" : dt == ACTL_F16 ? "f16" : dt == ACTL_BF16 ? "bf16" : NULL;
}

static int print_result(const struct cmd_ctx *ctx, const char *base, const char *out,
                        const actl_merge_opts *o, const actl_input *in, size_t n,
                        const actl_merge_result *r, double secs)
{
    if (ctx->json) {
        json_t *inputs = json_array();
        for (size_t i = 0; inputs && i < n; i++)
            if (json_array_append_new(inputs, json_pack("{s:s, s:f, s:s?}", "ref", in[i].ref,
                                                         "weight", in[i].weight, "pack",
                                                         in[i].pack))) {
                json_decref(inputs);
                inputs = NULL;
            }
        if (!inputs)
            return cmd_print_json(NULL);
        return cmd_print_json(json_pack(
            "{s:s, s:s, s:b, s:s?, s:I, s:I, s:I, s:I, s:f, s:o}", "out", out, "base", base,
            "unmerge", o->unmerge, "dtype", dtype_word(o->dtype),
            "tensors_merged", (json_int_t)r->tensors_merged, "tensors_copied",
            (json_int_t)r->tensors_copied, "files_copied", (json_int_t)r->files_copied, "bytes",
            (json_int_t)r->bytes_written, "seconds", secs, "inputs", inputs));
    }
    char size[32];
    double rate = secs > 0 ? (double)r->bytes_written / secs : 0;
    char rs[32];
    printf("%s %zu adapter%s %s %s: %zu tensors changed, %zu copied, %s in %.2f s (%s/s)\n",
           o->unmerge ? "unmerged" : "merged", n, n == 1 ? "" : "s",
           o->unmerge ? "from" : "into", out, r->tensors_merged, r->tensors_copied,
           cmd_human_size(r->bytes_written, size, sizeof size), secs,
           cmd_human_size((uint64_t)rate, rs, sizeof rs));
    return CMD_OK;
}

int cmd_merge(int argc, char **argv, struct cmd_ctx *ctx)
{
    const char *base = NULL, *out = NULL, *dtype = NULL, *threads = NULL;
    int unmerge = 0, force = 0;
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "base", &base, "DIR", "the base checkpoint directory"),
        CMD_OPT_STRING(0, "out", &out, "DIR", "the new checkpoint directory (must not exist)"),
        CMD_OPT_STRING(0, "dtype", &dtype, "T",
                       "f32, f16 or bf16 for every floating-point tensor (default: keep)"),
        CMD_OPT_FLAG(0, "unmerge", &unmerge, "take the adapters out instead"),
        CMD_OPT_FLAG(0, "force", &force, "merge even into another base model than recorded"),
        CMD_OPT_STRING(0, "threads", &threads, "N", "worker threads (default: every CPU)"),
        CMD_OPT_STORE(ctx),
        CMD_OPT_GLOBALS(ctx),
        CMD_OPT_END(),
    };
    actl_store *s = NULL;
    actl_inputs *list = NULL;
    int nargs;

    int rc = cmd_parse(argc, argv, opts, merge_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (!base)
        return cmd_usage_error(merge_usage, "missing --base DIR");
    if (!out)
        return cmd_usage_error(merge_usage, "missing --out DIR");
    if (nargs == 0)
        return cmd_usage_error(merge_usage, "missing NAME[@V][:W]: name at least one adapter");
    actl_merge_opts o = actl_merge_default_opts();
    o.unmerge = unmerge;
    o.force = force;
    if (dtype && parse_dtype(dtype, &o.dtype) != 0)
        return cmd_usage_error(merge_usage, "--dtype '%s' is not f32, f16 or bf16", dtype);
    if (threads) {
        int64_t t;
        if (cmd_parse_int(threads, 1, &t) != 0 || t > 1024)
            return cmd_usage_error(merge_usage, "--threads '%s' is not a number from 1 to 1024",
                                   threads);
        o.threads = (int)t;
    }

    if (actl_inputs_new(&list) != ACTL_OK) {
        rc = cmd_lib_error(ACTL_ENOMEM);
        goto out;
    }
    for (int i = 0; i < nargs; i++) {
        char *ref = NULL;
        double w;
        int lrc = actl_input_spec_parse(argv[i], &ref, &w);
        if (lrc != ACTL_OK) {
            rc = cmd_usage_error(merge_usage, "%s", actl_errmsg());
            goto out;
        }
        /* The store is opened (and made) only when something names it. */
        if (!cmd_is_dir(ref) && !s && (rc = cmd_store_open(ctx, &s)) != CMD_OK) {
            free(ref);
            goto out;
        }
        lrc = actl_inputs_add(list, s, ref, w);
        free(ref);
        if (lrc != ACTL_OK) {
            rc = cmd_lib_error(lrc);
            goto out;
        }
    }
    size_t n;
    const actl_input *in = actl_inputs_items(list, &n);

    struct cmd_progress bar;
    cmd_progress_init(&bar, ctx);
    if (bar.enabled) {
        o.progress = cmd_progress_update;
        o.progress_ctx = &bar;
    }
    actl_merge_result r;
    memset(&r, 0, sizeof r);
    struct sigaction old[N_MERGE_SIGNALS];
    catch_signals(old);
    /* sig_atomic_t is int on the platforms we build for */
    o.cancel = (const volatile int *)&interrupted_by;
    double t0 = cmd_seconds_now();
    int lrc = actl_merge(base, out, in, n, &o, &r);
    double secs = cmd_seconds_now() - t0;
    restore_signals(old);
    cmd_progress_end(&bar);
    if (lrc != ACTL_OK && interrupted_by) {
        /* exit status 1 like any failed merge; the message names the signal */
        cmd_error("%s: %s", strsignal(interrupted_by), actl_errmsg());
        rc = CMD_FAIL;
    } else {
        rc = lrc == ACTL_OK ? print_result(ctx, base, out, &o, in, n, &r, secs)
                            : cmd_lib_error(lrc);
    }
out:
    actl_inputs_free(list);
    actl_store_close(s);
    return rc;
}
