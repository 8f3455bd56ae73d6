/*
 * init.c: `adapterctl init`: creates the store (catalog.db and objects/), or
 * brings an existing one up to this version's schema. Optional: every store
 * command creates the store on first use.
 */
#include "cmd.h"

cmd_fn cmd_init;

static const char *const init_usage[] = {
    "adapterctl init [--store DIR] [--json]",
    "",
    "Creates the store at --store DIR, else $ADAPTERCTL_STORE, else",
    "$XDG_DATA_HOME/adapterctl (~/.local/share/adapterctl), and prints where it",
    "is. An existing store is opened and left as it is (pending schema migrations",
    "are applied). Every other store command creates the store too when it is",
    "absent; init only makes that explicit.",
    NULL,
};

int cmd_init(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    int nargs;
    int rc = cmd_parse(argc, argv, opts, init_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs > 0)
        return cmd_usage_error(init_usage, "init takes no arguments: '%s'", argv[0]);

    rc = cmd_store_open(ctx, &s);
    if (rc != CMD_OK)
        return rc;
    if (ctx->json)
        rc = cmd_print_json(json_pack("{s:s, s:i}", "path", actl_store_path(s),
                                      "schema_version", actl_store_schema_version(s)));
    else
        printf("store %s (schema version %d)\n", actl_store_path(s),
               actl_store_schema_version(s));
    actl_store_close(s);
    return rc;
}
