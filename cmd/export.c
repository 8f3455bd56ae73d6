/*
 * export.c: `adapterctl export NAME[@V] DIR`: writes a stored adapter back
 * out as a PEFT directory, every tensor checked against its SHA-256 first.
 */
#include "cmd.h"

cmd_fn cmd_export;

/* Members of a stack's recipe (its config {"members": [...]}), the member
 * directories the library writes; -1 when unreadable. */
static long stack_members(const char *config)
{
    json_t *v = json_loads(config ? config : "", 0, NULL);
    json_t *m = json_object_get(v, "members");
    long n = json_is_array(m) ? (long)json_array_size(m) : -1;
    json_decref(v);
    return n;
}

static const char *const export_usage[] = {
    "adapterctl export NAME[@V] DIR [--json]",
    "",
    "Writes NAME@V, or the newest version of NAME, to DIR as a PEFT directory",
    "(adapter_config.json + adapter_model.safetensors) whose tensors are the",
    "bytes that were added. DIR must not exist or be empty; it appears whole or",
    "not at all. A pack whose bytes do not match their SHA-256 is an error and",
    "nothing is written. A stack is written as one PEFT directory per member,",
    "DIR/01-NAME, DIR/02-NAME... in the order they apply, plus DIR/stack.json",
    "(the recipe: each member's directory, ref, kind, weight and pack).",
    "With --json: {\"name\", \"version\", \"dir\"}, and for a stack",
    "\"members\": the number of member directories.",
    NULL,
};

int cmd_export(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_STORE(ctx), CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    actl_store *s = NULL;
    actl_entries *l = NULL;
    char ref[300];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, export_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs < 2)
        return cmd_usage_error(export_usage, nargs ? "missing DIR" : "missing NAME[@V] and DIR");
    if (nargs > 2)
        return cmd_usage_error(export_usage, "too many arguments: '%s'", argv[2]);
    if ((rc = cmd_check_ref(export_usage, argv[0])) != CMD_OK)
        return rc;
    const char *dir = argv[1];

    /* Pin the version, so that the one reported is the one written. */
    const actl_entry *e = NULL;
    if ((rc = cmd_store_entry(ctx, argv[0], &s, &l, &e)) != CMD_OK)
        goto out;
    int lrc = actl_store_export(s, cmd_ref_str(e, ref, sizeof ref), dir);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    long members = e->kind == ACTL_KIND_STACK ? stack_members(e->config) : -1;
    if (ctx->json) {
        json_t *doc = json_pack("{s:s, s:I, s:s}", "name", e->name, "version",
                                (json_int_t)e->version, "dir", dir);
        if (doc && members >= 0 && json_object_set_new(doc, "members", json_integer(members)))
            doc = (json_decref(doc), NULL);
        rc = cmd_print_json(doc);
    } else {
        printf("exported %s to %s\n", ref, dir);
        rc = CMD_OK;
    }
    /* A stack is not one PEFT directory: say what a reader will find. */
    if (rc == CMD_OK && e->kind == ACTL_KIND_STACK && !ctx->quiet)
        cmd_error("note: '%s' is a stack: wrote %ld member director%s plus stack.json (the "
                  "order and weights to apply them with)",
                  ref, members, members == 1 ? "y" : "ies");
out:
    actl_entries_free(l);
    actl_store_close(s);
    return rc;
}
