/*
 * add.c: `adapterctl add PATH`: validates a PEFT adapter directory and adds
 * it to the store as NAME@VERSION (its pack, then its catalogue rows).
 */
#include "cmd.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

cmd_fn cmd_add;

static const char *const add_usage[] = {
    "adapterctl add PATH [--name N] [--version V] [--base ID] [--tag K=V]... [--desc TEXT]",
    "",
    "Adds the PEFT adapter directory PATH (adapter_config.json +",
    "adapter_model.safetensors) to the store, after validating every tensor.",
    "The name defaults to PATH's directory name when that is a valid name",
    "([A-Za-z0-9][A-Za-z0-9._-]{0,127}); the version to one more than the newest",
    "version of the name; the base model to the config's base_model_name_or_path.",
    "An adapter whose tensors and config equal a stored one shares its pack.",
    "Prints the new entry (with --json, the entry object of README.md).",
    NULL,
};

/* The last component of an absolute path ("/a/b" -> "b"; "/" -> ""). */
static const char *last_component(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void print_added(const actl_entry *e)
{
    char ref[300], raw[32], stored[32], ratio[32];
    printf("added %s: %s, %zu tag%s, %s raw, %s stored (%s), pack %.12s\n",
           cmd_ref_str(e, ref, sizeof ref), actl_kind_name(e->kind), e->tag_count,
           e->tag_count == 1 ? "" : "s",
           cmd_human_size(e->raw_bytes, raw, sizeof raw),
           cmd_human_size(e->stored_bytes, stored, sizeof stored),
           cmd_ratio_str(e->raw_bytes, e->stored_bytes, ratio, sizeof ratio), e->pack);
}

int cmd_add(int argc, char **argv, struct cmd_ctx *ctx)
{
    const char *name = NULL, *version_arg = NULL, *base = NULL, *desc = NULL;
    struct cmd_list tags = { 0 };
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "name", &name, "N", "the adapter's name (default: PATH's name)"),
        CMD_OPT_STRING(0, "version", &version_arg, "V",
                       "its version, a positive integer (default: newest + 1)"),
        CMD_OPT_STRING(0, "base", &base, "ID",
                       "the base model id (default: base_model_name_or_path)"),
        CMD_OPT_LIST(0, "tag", &tags, "K=V", "a tag; repeat for more"),
        CMD_OPT_STRING(0, "desc", &desc, "TEXT", "a description"),
        CMD_OPT_STORE(ctx),
        CMD_OPT_GLOBALS(ctx),
        CMD_OPT_END(),
    };
    actl_adapter *a = NULL;
    actl_store *s = NULL;
    actl_entries *added = NULL;
    char source[PATH_MAX];
    int64_t version = 0;
    int nargs;

    int rc = cmd_parse(argc, argv, opts, add_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        goto out;
    rc = CMD_USAGE;
    if (nargs == 0) {
        cmd_usage_error(add_usage, "missing PATH");
        goto out;
    }
    if (nargs > 1) {
        cmd_usage_error(add_usage, "too many arguments: '%s'", argv[1]);
        goto out;
    }
    if (name && actl_name_check(name) != ACTL_OK) {
        cmd_usage_error(add_usage, "%s", actl_errmsg());
        goto out;
    }
    if (version_arg && cmd_parse_int(version_arg, 1, &version) != 0) {
        cmd_usage_error(add_usage, "--version '%s' is not a positive integer", version_arg);
        goto out;
    }
    if ((rc = cmd_check_tags(add_usage, "--tag", tags.items)) != CMD_OK)
        goto out;

    const char *path = argv[0];
    /* Load (and so validate) first: its message names what is wrong with
     * PATH, including that it does not exist. */
    int lrc = actl_adapter_load(path, &a);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    if (!realpath(path, source)) {
        cmd_error("cannot resolve '%s': %s", path, strerror(errno));
        rc = CMD_FAIL;
        goto out;
    }
    if (!name) {
        name = last_component(source);
        if (actl_name_check(name) != ACTL_OK) {
            rc = cmd_usage_error(add_usage,
                                 "'%s' is not a valid adapter name; give one with --name", name);
            goto out;
        }
    }

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        goto out;
    actl_add_opts o = actl_add_default_opts();
    o.name = name;
    o.version = version;
    o.base_model = base;
    o.tags = tags.items;
    o.description = desc;
    o.source = source;
    lrc = actl_store_add(s, a, &o, &added);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    const actl_entry *e = actl_entries_get(added, 0);
    if (!e) {
        cmd_error("the store returned no entry for the added adapter");
        rc = CMD_FAIL;
    } else if (ctx->json) {
        rc = cmd_print_json(cmd_entry_json(e));
    } else {
        print_added(e);
        rc = CMD_OK;
    }
out:
    actl_entries_free(added);
    actl_store_close(s);
    actl_adapter_free(a);
    cmd_list_free(&tags);
    return rc;
}
