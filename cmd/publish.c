/*
 * publish.c: `adapterctl publish DIR [NAME[@V]...]`: writes stored adapters
 * out as a published store (DIR/index.json + DIR/objects/<sha256>) that any
 * static HTTP server can serve to `adapterctl pull`.
 */
#include "cmd.h"

#include <limits.h>
#include <stdlib.h>

cmd_fn cmd_publish;

static const char *const publish_usage[] = {
    "adapterctl publish DIR [NAME[@V]...] [--json]",
    "",
    "Publishes the named adapters (NAME: its newest version; none: every version",
    "in the store) into DIR: the packs as DIR/objects/<sha256>, then",
    "DIR/index.json naming them, each written atomically, so a reader never sees",
    "an index that names a missing pack. Serve DIR with any static HTTP server",
    "(or a bucket) and run 'adapterctl pull URL NAME[@V]' elsewhere. DIR is",
    "created when absent; publishing again replaces the index.",
    "With --json: {\"dir\", \"adapters\"}.",
    NULL,
};

int cmd_publish(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    char abs[PATH_MAX];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, publish_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs == 0)
        return cmd_usage_error(publish_usage, "missing DIR");
    const char *dir = argv[0];
    for (int i = 1; i < nargs; i++)
        if ((rc = cmd_check_ref(publish_usage, argv[i])) != CMD_OK)
            return rc;

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        return rc;
    /* cmd_parse moved the arguments to the front; argv[nargs] may still be an
     * option, so the refs get their own NULL-terminated array. */
    const char **refs = calloc((size_t)nargs, sizeof *refs);
    if (!refs) {
        cmd_error("out of memory");
        rc = CMD_FAIL;
        goto out;
    }
    for (int i = 1; i < nargs; i++)
        refs[i - 1] = argv[i];
    size_t count = 0;
    int lrc = actl_store_publish(s, dir, refs, &count);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    const char *shown = realpath(dir, abs) ? abs : dir;
    if (ctx->json) {
        rc = cmd_print_json(json_pack("{s:s, s:I}", "dir", shown, "adapters", (json_int_t)count));
    } else {
        printf("published %zu adapter%s to %s (index.json, objects/)\n", count,
               count == 1 ? "" : "s", shown);
        rc = CMD_OK;
    }
out:
    free(refs);
    actl_store_close(s);
    return rc;
}
