/*
 * stats.c: `adapterctl stats`: how much the store holds and how well the
 * codec compresses it.
 */
#include "cmd.h"

cmd_fn cmd_stats;

static const char *const stats_usage[] = {
    "adapterctl stats [--json]",
    "",
    "Prints the store's directory, schema version, adapters (distinct names),",
    "versions, packs, the raw and stored bytes over distinct packs, and the",
    "overall compression ratio raw/stored. With --json, the object of README.md.",
    NULL,
};

int cmd_stats(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    actl_store_stats st;
    char raw[32], stored[32], ratio[32];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, stats_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs > 0)
        return cmd_usage_error(stats_usage, "stats takes no arguments: '%s'", argv[0]);

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        return rc;
    int lrc = actl_store_stats_get(s, &st);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
    } else if (ctx->json) {
        /* ratio: null for an empty store rather than a division by zero. */
        json_t *r = st.stored_bytes ? json_real((double)st.raw_bytes / (double)st.stored_bytes)
                                    : json_null();
        rc = cmd_print_json(json_pack(
            "{s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:o}", "path", actl_store_path(s),
            "schema_version", actl_store_schema_version(s), "adapters", (json_int_t)st.adapters,
            "versions", (json_int_t)st.versions, "packs", (json_int_t)st.packs, "raw_bytes",
            (json_int_t)st.raw_bytes, "stored_bytes", (json_int_t)st.stored_bytes, "ratio", r));
    } else {
        printf("%-14s%s\n", "store", actl_store_path(s));
        printf("%-14s%d\n", "schema", actl_store_schema_version(s));
        printf("%-14s%lld\n", "adapters", (long long)st.adapters);
        printf("%-14s%lld\n", "versions", (long long)st.versions);
        printf("%-14s%lld\n", "packs", (long long)st.packs);
        printf("%-14s%llu bytes (%s)\n", "raw", (unsigned long long)st.raw_bytes,
               cmd_human_size(st.raw_bytes, raw, sizeof raw));
        printf("%-14s%llu bytes (%s)\n", "stored", (unsigned long long)st.stored_bytes,
               cmd_human_size(st.stored_bytes, stored, sizeof stored));
        printf("%-14s%s\n", "ratio", cmd_ratio_str(st.raw_bytes, st.stored_bytes, ratio,
                                                     sizeof ratio));
        rc = CMD_OK;
    }
    actl_store_close(s);
    return rc;
}
