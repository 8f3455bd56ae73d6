/*
 * show.c: `adapterctl show NAME[@V]`: one catalogue entry in full.
 */
#include "cmd.h"

#include <jansson.h>
#include <stdarg.h>
#include <time.h>

cmd_fn cmd_show;

static const char *const show_usage[] = {
    "adapterctl show NAME[@V] [--json]",
    "",
    "Shows one stored adapter: NAME@V, or the newest version of NAME. With",
    "--json, the entry object of README.md.",
    NULL,
};

static void field(const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void field(const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%-14s", key);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
}

/* Entries of the catalogue's target_modules array; -1 when it is not one. */
static long module_count(const char *text)
{
    json_t *v = json_loads(text ? text : "", 0, NULL);
    long n = json_is_array(v) ? (long)json_array_size(v) : -1;
    json_decref(v);
    return n;
}

static void print_entry(const actl_entry *e)
{
    char a[32], b[32], r[32], created[32] = "?";
    time_t t = (time_t)e->created;
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(created, sizeof created, "%Y-%m-%d %H:%M:%S UTC", &tm);

    field("name", "%s", e->name);
    field("version", "%lld", (long long)e->version);
    /* a crafted catalogue may hold a kind this build does not know */
    field("kind", "%s", actl_kind_name(e->kind) ? actl_kind_name(e->kind) : "?");
    field("base model", "%s", e->base_model ? e->base_model : "-");
    if (e->kind == ACTL_KIND_ROAD) {
        field("variant", "%s", e->variant ? e->variant : "-");
        field("group size", "%d", e->group_size);
    } else {
        field(e->kind == ACTL_KIND_BOTTLENECK ? "size" : "rank", "%d", e->rank);
    }
    long modules = module_count(e->target_modules);
    if (modules >= 0)
        field("modules", "%ld", modules);
    else
        field("modules", "?");
    field("raw", "%llu bytes (%s)", (unsigned long long)e->raw_bytes,
          cmd_human_size(e->raw_bytes, a, sizeof a));
    field("stored", "%llu bytes (%s), ratio %s", (unsigned long long)e->stored_bytes,
          cmd_human_size(e->stored_bytes, b, sizeof b),
          cmd_ratio_str(e->raw_bytes, e->stored_bytes, r, sizeof r));
    field("pack", "%s", e->pack ? e->pack : "-");
    field("source", "%s", e->source ? e->source : "-");
    field("description", "%s", e->description ? e->description : "-");
    field("created", "%s", created);
    if (e->tag_count == 0)
        field("tags", "-");
    for (size_t i = 0; i < e->tag_count; i++)
        field(i ? "" : "tags", "%s=%s", e->tag_keys[i], e->tag_values[i]);
}

int cmd_show(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    actl_entries *l = NULL;
    int nargs;

    int rc = cmd_parse(argc, argv, opts, show_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs == 0)
        return cmd_usage_error(show_usage, "missing NAME[@V]");
    if (nargs > 1)
        return cmd_usage_error(show_usage, "too many arguments: '%s'", argv[1]);
    if ((rc = cmd_check_ref(show_usage, argv[0])) != CMD_OK)
        return rc;

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        return rc;
    int lrc = actl_store_show(s, argv[0], &l);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
    } else if (!actl_entries_get(l, 0)) {
        cmd_error("the store returned no entry for '%s'", argv[0]);
        rc = CMD_FAIL;
    } else if (ctx->json) {
        rc = cmd_print_json(cmd_entry_json(actl_entries_get(l, 0)));
    } else {
        print_entry(actl_entries_get(l, 0));
        rc = CMD_OK;
    }
    actl_entries_free(l);
    actl_store_close(s);
    return rc;
}
