/*
 * show.c: `adapterctl show NAME[@V]`: one catalogue entry in full.
 */
#include "cmd.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

cmd_fn cmd_show;

static const char *const show_usage[] = {
    "adapterctl show NAME[@V] [--json]",
    "",
    "Shows one stored adapter: NAME@V, or the newest version of NAME, with its",
    "lineage when it was composed here (method, inputs and weights, options,",
    "errors); a stack shows its members there. With --json, the entry object",
    "of README.md.",
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

/* Members of a stack's recipe (its config {"members": [...]}); -1 when unreadable. */
static long stack_members(const char *config)
{
    json_t *v = json_loads(config ? config : "", 0, NULL);
    json_t *m = json_object_get(v, "members");
    long n = json_is_array(m) ? (long)json_array_size(m) : -1;
    json_decref(v);
    return n;
}

/* A JSON value in one line: strings bare, the rest compact. malloc'd. */
static char *one_line(const json_t *v)
{
    if (json_is_string(v))
        return strdup(json_string_value(v));
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS |
                             JSON_REAL_PRECISION(6));
}

/* lineage.inputs: one line each, "N. REF (KIND), weight W, pack 0123456789ab". */
static void print_inputs(const json_t *inputs)
{
    size_t i;
    const json_t *in;
    if (!json_is_array(inputs) || json_array_size(inputs) == 0) {
        char *t = one_line(inputs);
        printf("  %-12s%s\n", "inputs", t ? t : "?");
        free(t);
        return;
    }
    json_array_foreach(inputs, i, in) {
        const char *ref = json_string_value(json_object_get(in, "ref"));
        const char *kind = json_string_value(json_object_get(in, "kind"));
        const char *pack = json_string_value(json_object_get(in, "pack"));
        const json_t *w = json_object_get(in, "weight");
        printf("  %-12s%zu. %s", i ? "" : "inputs", i + 1, ref ? ref : "?");
        if (kind)
            printf(" (%s)", kind);
        if (json_is_number(w))
            printf(", weight %g", json_number_value(w));
        if (pack)
            printf(", pack %.12s", pack);
        putchar('\n');
    }
}

/* lineage.error: {"overall": x, "modules": {name: rel}}: the overall error and
 * the largest module's. */
static void print_error(const json_t *err)
{
    const json_t *overall = json_object_get(err, "overall");
    const json_t *modules = json_object_get(err, "modules");
    const char *key, *worst = NULL;
    const json_t *v;
    double max = -1;
    if (!json_is_number(overall)) {
        char *t = one_line(err);
        printf("  %-12s%s\n", "error", t ? t : "?");
        free(t);
        return;
    }
    printf("  %-12srelative %.6g overall", "error", json_number_value(overall));
    json_object_foreach((json_t *)modules, key, v) {
        if (json_is_number(v) && json_number_value(v) > max) {
            max = json_number_value(v);
            worst = key;
        }
    }
    if (worst)
        printf("; largest %.6g in '%s' (%zu modules)", max, worst, json_object_size(modules));
    putchar('\n');
}

/* The lineage block: method, inputs with their weights, options, exactness,
 * errors, then any other key as compact JSON. */
static void print_lineage(const char *text)
{
    json_t *l = json_loads(text, 0, NULL);
    const char *key;
    json_t *v;
    if (!json_is_object(l)) {
        field("lineage", "%s (not a JSON object)", text);
        json_decref(l);
        return;
    }
    printf("lineage\n");
    static const char *const order[] = { "method", "inputs", "options", "exact", "error" };
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        v = json_object_get(l, order[k]);
        if (!v)
            continue;
        if (k == 1) {
            print_inputs(v);
        } else if (k == 2 && json_is_object(v)) {
            const char *ok;
            json_t *ov;
            printf("  %-12s", "options");
            int first = 1;
            json_object_foreach(v, ok, ov) {
                if (json_is_null(ov)) /* an option the method does not take */
                    continue;
                char *t = one_line(ov);
                printf("%s%s=%s", first ? "" : " ", ok, t ? t : "?");
                free(t);
                first = 0;
            }
            printf("%s\n", first ? "-" : "");
        } else if (k == 3 && json_is_boolean(v)) {
            printf("  %-12s%s\n", "exact", json_is_true(v) ? "yes" : "no");
        } else if (k == 4) {
            print_error(v);
        } else {
            char *t = one_line(v);
            printf("  %-12s%s\n", order[k], t ? t : "?");
            free(t);
        }
    }
    json_object_foreach(l, key, v) {
        size_t k = 0;
        while (k < sizeof order / sizeof order[0] && strcmp(order[k], key) != 0)
            k++;
        if (k < sizeof order / sizeof order[0])
            continue;
        char *t = one_line(v);
        printf("  %-12s%s\n", key, t ? t : "?");
        free(t);
    }
    json_decref(l);
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
    } else if (e->kind == ACTL_KIND_STACK) {
        long members = stack_members(e->config);
        if (members >= 0)
            field("members", "%ld", members);
        else
            field("members", "?");
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
    if (e->lineage)
        print_lineage(e->lineage);
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
