/*
 * list.c: `adapterctl list`: the catalogue's entries, filtered, as a table
 * or a JSON array.
 */
#include "cmd.h"

#include <string.h>

cmd_fn cmd_list;

static const char *const list_usage[] = {
    "adapterctl list [--kind K] [--base ID] [--tag K=V]... [--limit N] [--offset N]",
    "                [--all-versions] [--json]",
    "",
    "Lists the stored adapters ordered by name, the newest version of each",
    "(every version with --all-versions). Filters combine: --kind (lora, road,",
    "bottleneck, mos, stack), --base (the exact base model id) and every --tag",
    "must match. --limit and --offset page through the result. A stack's size",
    "is its members' packs.",
    "With --json, a JSON array of entry objects (schema in README.md).",
    NULL,
};

enum { COL_NAME, COL_VERSION, COL_KIND, COL_RANK, COL_BASE, COL_SIZE, COL_TAGS, NCOLS };

static const char *const heads[NCOLS] = { "name", "version", "kind", "rank/variant",
                                          "base", "size", "tags" };

static const char *cell(const actl_entry *e, int c, char *buf, size_t len)
{
    switch (c) {
    case COL_NAME: snprintf(buf, len, "%s", e->name); break;
    case COL_VERSION: snprintf(buf, len, "%lld", (long long)e->version); break;
    case COL_KIND: /* a crafted catalogue may hold a kind this build does not know */
        snprintf(buf, len, "%s", actl_kind_name(e->kind) ? actl_kind_name(e->kind) : "?");
        break;
    case COL_RANK:
        if (e->kind == ACTL_KIND_STACK) /* no rank of its own: show shows its members */
            snprintf(buf, len, "-");
        else if (e->variant)
            snprintf(buf, len, "%s/g%d", e->variant, e->group_size);
        else
            snprintf(buf, len, "%d", e->rank);
        break;
    case COL_BASE: snprintf(buf, len, "%s", e->base_model ? e->base_model : "-"); break;
    case COL_SIZE: cmd_human_size(e->stored_bytes, buf, len); break;
    case COL_TAGS: cmd_tags_str(e, buf, len); break;
    default: buf[0] = '\0';
    }
    return buf;
}

/* One row: numbers right-aligned, words left, the last column unpadded. */
static void print_row(const int *width, const char *const *cells)
{
    for (int c = 0; c < NCOLS; c++) {
        if (c == NCOLS - 1)
            printf("%s\n", cells[c]);
        else if (c == COL_VERSION || c == COL_SIZE)
            printf("%*s  ", width[c], cells[c]);
        else
            printf("%-*s  ", width[c], cells[c]);
    }
}

static void print_table(const actl_entries *l)
{
    char buf[NCOLS][512];
    const char *cells[NCOLS];
    int width[NCOLS];
    size_t n = actl_entries_count(l);
    for (int c = 0; c < NCOLS; c++)
        width[c] = (int)strlen(heads[c]);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < NCOLS; c++) {
            int w = (int)strlen(cell(actl_entries_get(l, i), c, buf[c], sizeof buf[c]));
            if (w > width[c])
                width[c] = w;
        }
    print_row(width, heads);
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < NCOLS; c++)
            cells[c] = cell(actl_entries_get(l, i), c, buf[c], sizeof buf[c]);
        print_row(width, cells);
    }
}

int cmd_list(int argc, char **argv, struct cmd_ctx *ctx)
{
    const char *kind = NULL, *base = NULL, *limit = NULL, *offset = NULL;
    int all_versions = 0;
    struct cmd_list tags = { 0 };
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "kind", &kind, "K", "only this kind: lora, road, bottleneck, mos, stack"),
        CMD_OPT_STRING(0, "base", &base, "ID", "only adapters for this base model id"),
        CMD_OPT_LIST(0, "tag", &tags, "K=V", "only adapters with this tag; repeat: all must match"),
        CMD_OPT_STRING(0, "limit", &limit, "N", "at most N entries"),
        CMD_OPT_STRING(0, "offset", &offset, "N", "skip the first N entries"),
        CMD_OPT_FLAG(0, "all-versions", &all_versions, "every version, not only the newest"),
        CMD_OPT_STORE(ctx),
        CMD_OPT_GLOBALS(ctx),
        CMD_OPT_END(),
    };
    actl_store *s = NULL;
    actl_entries *l = NULL;
    actl_query q = actl_query_default();
    int nargs;

    int rc = cmd_parse(argc, argv, opts, list_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        goto out;
    rc = CMD_USAGE;
    if (nargs > 0) {
        cmd_usage_error(list_usage, "list takes no arguments: '%s'", argv[0]);
        goto out;
    }
    if (kind) {
        actl_kind k;
        if (actl_kind_parse(kind, &k) != ACTL_OK) {
            cmd_usage_error(list_usage, "%s", actl_errmsg());
            goto out;
        }
        q.kind = k;
    }
    /* The library reads limit 0 as "no limit"; on the command line that would
     * surprise, so --limit starts at 1. */
    if (limit && cmd_parse_int(limit, 1, &q.limit) != 0) {
        cmd_usage_error(list_usage, "--limit '%s' is not a positive integer", limit);
        goto out;
    }
    if (offset && cmd_parse_int(offset, 0, &q.offset) != 0) {
        cmd_usage_error(list_usage, "--offset '%s' is not a non-negative integer", offset);
        goto out;
    }
    if ((rc = cmd_check_tags(list_usage, "--tag", tags.items)) != CMD_OK)
        goto out;
    q.base_model = base;
    q.tags = tags.items;
    q.all_versions = all_versions;

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        goto out;
    int lrc = actl_store_list(s, &q, &l);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    if (ctx->json) {
        rc = cmd_print_json(cmd_entries_json(l));
    } else {
        if (actl_entries_count(l) > 0)
            print_table(l);
        else if (!ctx->quiet)
            cmd_error("note: no adapters match");
        rc = CMD_OK;
    }
out:
    actl_entries_free(l);
    actl_store_close(s);
    cmd_list_free(&tags);
    return rc;
}
