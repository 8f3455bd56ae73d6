/*
 * gc.c: `adapterctl gc`: removes packs no catalogue row refers to and stale
 * temporary files. Safe beside running adds (the library's gc lock).
 */
#include "cmd.h"

cmd_fn cmd_gc;

static const char *const gc_usage[] = {
    "adapterctl gc [--json]",
    "",
    "Removes the packs that no version and no stack refers to (left by 'rm'",
    "or by an add that was killed) and stale temporary files, never a pack",
    "that a stack still uses, even after the adapter it came from was removed,",
    "nor one that an add running in another process is about to record.",
    "Prints what it freed; with --json: {\"packs_removed\", \"bytes_freed\",",
    "\"temp_removed\"}.",
    NULL,
};

int cmd_gc(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    actl_gc_result g;
    char size[32];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, gc_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs > 0)
        return cmd_usage_error(gc_usage, "gc takes no arguments: '%s'", argv[0]);

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        return rc;
    int lrc = actl_store_gc(s, &g);
    if (lrc != ACTL_OK)
        rc = cmd_lib_error(lrc);
    else if (ctx->json)
        rc = cmd_print_json(json_pack("{s:I, s:I, s:I}", "packs_removed",
                                      (json_int_t)g.packs_removed, "bytes_freed",
                                      (json_int_t)g.bytes_freed, "temp_removed",
                                      (json_int_t)g.temp_removed));
    else
        printf("removed %zu pack%s (%s) and %zu temporary file%s\n", g.packs_removed,
               g.packs_removed == 1 ? "" : "s", cmd_human_size(g.bytes_freed, size, sizeof size),
               g.temp_removed, g.temp_removed == 1 ? "" : "s");
    actl_store_close(s);
    return rc;
}
