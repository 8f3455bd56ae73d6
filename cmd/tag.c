/*
 * tag.c: `adapterctl tag NAME[@V] K=V... [--unset K]...`: sets and removes
 * tags of one version, in one transaction.
 */
#include "cmd.h"

#include <string.h>

cmd_fn cmd_tag;

static const char *const tag_usage[] = {
    "adapterctl tag NAME[@V] K=V... [--unset K]... [--json]",
    "",
    "Sets the tags K=V (replacing a key's old value) and removes the --unset",
    "keys of NAME@V, or of the newest version of NAME, then prints its tags",
    "(with --json, its entry object). Removing a key it does not have is not",
    "an error.",
    NULL,
};

int cmd_tag(int argc, char **argv, struct cmd_ctx *ctx)
{
    struct cmd_list unset = { 0 };
    const struct cmd_option opts[] = {
        CMD_OPT_LIST(0, "unset", &unset, "K", "remove the tag K; repeat for more"),
        CMD_OPT_STORE(ctx),
        CMD_OPT_GLOBALS(ctx),
        CMD_OPT_END(),
    };
    actl_store *s = NULL;
    actl_entries *l = NULL;
    const char **set = NULL;
    char ref[300], tags[4096];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, tag_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        goto out;
    if (nargs == 0) {
        rc = cmd_usage_error(tag_usage, "missing NAME[@V]");
        goto out;
    }
    if (nargs == 1 && unset.n == 0) {
        rc = cmd_usage_error(tag_usage, "nothing to do: give K=V or --unset K");
        goto out;
    }
    if ((rc = cmd_check_ref(tag_usage, argv[0])) != CMD_OK)
        goto out;
    for (size_t i = 0; i < unset.n; i++)
        if (!unset.items[i][0] || strchr(unset.items[i], '=')) {
            rc = cmd_usage_error(tag_usage, "--unset takes a key, not '%s'", unset.items[i]);
            goto out;
        }
    /* argv[1..nargs-1] are the K=V; the library wants them NULL-terminated. */
    argv[nargs] = NULL;
    set = (const char **)argv + 1;
    if ((rc = cmd_check_tags(tag_usage, "tag", set)) != CMD_OK)
        goto out;

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        goto out;
    /* Pin the version first so that the one printed is the one tagged. */
    int lrc = actl_store_show(s, argv[0], &l);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    const actl_entry *e = actl_entries_get(l, 0);
    if (!e) {
        cmd_error("the store returned no entry for '%s'", argv[0]);
        rc = CMD_FAIL;
        goto out;
    }
    cmd_ref_str(e, ref, sizeof ref);
    actl_entries_free(l);
    l = NULL;
    lrc = actl_store_tag(s, ref, nargs > 1 ? set : NULL, unset.items);
    if (lrc == ACTL_OK)
        lrc = actl_store_show(s, ref, &l);
    if (lrc != ACTL_OK) {
        rc = cmd_lib_error(lrc);
        goto out;
    }
    e = actl_entries_get(l, 0);
    if (ctx->json) {
        rc = cmd_print_json(e ? cmd_entry_json(e) : NULL);
    } else {
        printf("%s  %s\n", ref, e ? cmd_tags_str(e, tags, sizeof tags) : "?");
        rc = CMD_OK;
    }
out:
    actl_entries_free(l);
    actl_store_close(s);
    cmd_list_free(&unset);
    return rc;
}
