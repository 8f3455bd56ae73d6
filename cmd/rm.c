/*
 * rm.c: `adapterctl rm NAME[@V]`: removes one version from the catalogue.
 * Its pack stays until `adapterctl gc`, which removes unreferenced packs
 * (a stack's member packs stay for as long as the stack).
 */
#include "cmd.h"

cmd_fn cmd_rm;

static const char *const rm_usage[] = {
    "adapterctl rm NAME[@V] [--json]",
    "",
    "Removes NAME@V, or the newest version of NAME, from the catalogue and",
    "prints what it removed (with --json, that entry's object). The pack is",
    "left for 'adapterctl gc', which frees it once no version and no stack",
    "refers to it. Removing a stack removes its recipe only; removing an",
    "adapter a stack uses leaves the stack whole (it keeps the member's pack).",
    NULL,
};

int cmd_rm(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    actl_entries *l = NULL;
    char ref[300];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, rm_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs == 0)
        return cmd_usage_error(rm_usage, "missing NAME[@V]");
    if (nargs > 1)
        return cmd_usage_error(rm_usage, "too many arguments: '%s'", argv[1]);
    if ((rc = cmd_check_ref(rm_usage, argv[0])) != CMD_OK)
        return rc;

    /* Resolve NAME to its newest version first, then remove exactly that
     * version: what is printed is what was removed, even if another process
     * adds a version in between. */
    const actl_entry *e = NULL;
    if ((rc = cmd_store_entry(ctx, argv[0], &s, &l, &e)) != CMD_OK)
        goto out;
    int lrc = actl_store_rm(s, cmd_ref_str(e, ref, sizeof ref));
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    if (ctx->json) {
        rc = cmd_print_json(cmd_entry_json(e));
    } else {
        printf("removed %s\n", ref);
        rc = CMD_OK;
    }
out:
    actl_entries_free(l);
    actl_store_close(s);
    return rc;
}
