/*
 * verify.c: `adapterctl verify`: re-hashes every pack and checks every
 * catalogue row; names each problem and fails when there is one.
 */
#include "cmd.h"

cmd_fn cmd_verify;

static const char *const verify_usage[] = {
    "adapterctl verify [--json]",
    "",
    "Re-hashes every pack (the file's SHA-256, every frame's checksum, every",
    "tensor's SHA-256) and checks every catalogue row against its pack, and",
    "every stack's members (each member's pack present and sound, the stack's",
    "sizes their sums). Prints each problem on stdout as it is found, then",
    "exits 1; with none, prints",
    "\"ok: N adapters (V versions), P packs verified\" and exits 0.",
    "With --json: {\"problems\": [messages], \"ok\": bool}, and the same exit status.",
    NULL,
};

struct report {
    json_t *problems; /* --json: the messages; NULL in text mode */
    int failed;       /* a problem could not be recorded (no memory) */
};

static void on_problem(const char *message, void *ctx)
{
    struct report *r = ctx;
    if (!r->problems) {
        printf("%s\n", message);
        /* Problems may take a while to find; show each as it comes. */
        fflush(stdout);
    } else if (json_array_append_new(r->problems, json_string(message)) != 0) {
        r->failed = 1;
    }
}

int cmd_verify(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    struct report r = { NULL, 0 };
    actl_store *s = NULL;
    size_t problems = 0;
    int nargs;

    int rc = cmd_parse(argc, argv, opts, verify_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs > 0)
        return cmd_usage_error(verify_usage, "verify takes no arguments: '%s'", argv[0]);

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        return rc;
    if (ctx->json && !(r.problems = json_array())) {
        cmd_error("out of memory");
        rc = CMD_FAIL;
        goto out;
    }
    int lrc = actl_store_verify(s, on_problem, &r, &problems);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    if (r.failed) {
        cmd_error("out of memory");
        rc = CMD_FAIL;
        goto out;
    }
    if (ctx->json) {
        /* "O": r.problems stays ours to free at out. */
        rc = cmd_print_json(json_pack("{s:O, s:b}", "problems", r.problems, "ok", problems == 0));
        if (rc == CMD_OK && problems)
            rc = CMD_FAIL;
        goto out;
    }
    if (problems) {
        cmd_error("verify found %zu problem%s", problems, problems == 1 ? "" : "s");
        rc = CMD_FAIL;
        goto out;
    }
    actl_store_stats st;
    lrc = actl_store_stats_get(s, &st);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    printf("ok: %lld adapters (%lld versions), %lld packs verified\n", (long long)st.adapters,
           (long long)st.versions, (long long)st.packs);
    rc = CMD_OK;
out:
    json_decref(r.problems);
    actl_store_close(s);
    return rc;
}
