/*
 * pull.c: `adapterctl pull URL [NAME[@V]]`: downloads an adapter from a PEFT
 * directory URL, an hf:// repository or a published store, and adds it to
 * the store once every byte is verified (the library's actl_store_pull).
 */
#include "cmd.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

cmd_fn cmd_pull;

static const char *const pull_usage[] = {
    "adapterctl pull URL [NAME[@V]] [--name N] [--sha256 HEX] [--max-size BYTES]",
    "                [--tag K=V]... [--json]",
    "",
    "Pulls an adapter into the store. URL is one of",
    "  a PEFT directory (http, https or file): URL/adapter_config.json and",
    "    URL/adapter_model.safetensors are fetched;",
    "  hf://OWNER/REPO[@REVISION]: the same files from the Hugging Face hub",
    "    ($HF_ENDPOINT, revision main by default);",
    "  a published store (see 'adapterctl publish'), with NAME[@V]: URL/index.json",
    "    names the pack, downloaded only when the store lacks it.",
    "Every byte is verified before the adapter enters the store; a failed pull",
    "leaves the store as it was (a partial download, resumed by the next pull,",
    "is removed by gc). A second pull of an unchanged source transfers nothing.",
    "With --json: {\"name\", \"version\", \"source\", \"pack\", \"sha256\",",
    "\"bytes_transferred\", \"files_transferred\", \"unchanged\"}.",
    NULL,
};

/* The schemes pull accepts; the library enforces the rest of its policy. */
static const char *const schemes[] = { "http://", "https://", "file://", "hf://" };

/* A URL for a message: control characters (which would move the cursor or
 * hide text) shown as '?', and cut at 200 characters. */
static const char *printable(const char *s, char *buf, size_t len)
{
    size_t i = 0;
    for (; s[i] && i + 4 < len && i < 200; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i] && i + 4 < len)
        memcpy(buf + i, "...", 3), i += 3;
    buf[i] = '\0';
    return buf;
}

/* The command-line syntax of URL: a known scheme, something after it, and no
 * space or control character (a URL is sent as given, so those would be
 * request smuggling or a typo). CMD_OK or CMD_USAGE. */
static int check_url(const char *url)
{
    char shown[256];
    for (const unsigned char *c = (const unsigned char *)url; *c; c++)
        if (*c <= 0x20 || *c == 0x7f)
            return cmd_usage_error(pull_usage,
                                   "URL '%s' contains a space or a control character "
                                   "(percent-encode it)",
                                   printable(url, shown, sizeof shown));
    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t n = strlen(schemes[i]);
        if (!strncasecmp(url, schemes[i], n)) {
            if (!url[n])
                return cmd_usage_error(pull_usage, "URL '%s' names nothing after the scheme",
                                       printable(url, shown, sizeof shown));
            return CMD_OK;
        }
    }
    return cmd_usage_error(pull_usage,
                           "URL '%s' is not an http://, https://, file:// or hf:// URL",
                           printable(url, shown, sizeof shown));
}

/* BYTES with an optional binary suffix K, M, G or T ("512M"). 0 or -1. */
static int parse_size(const char *s, uint64_t *out)
{
    char digits[32];
    size_t n = strlen(s);
    int shift = 0;
    if (n == 0 || n >= sizeof digits)
        return -1;
    memcpy(digits, s, n + 1);
    const char *units = "KMGT";
    const char *u = strchr(units, toupper((unsigned char)digits[n - 1]));
    if (u) {
        shift = 10 * (int)(u - units + 1);
        digits[--n] = '\0';
    }
    int64_t v;
    if (n == 0 || cmd_parse_int(digits, 1, &v) != 0)
        return -1;
    if ((uint64_t)v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/* 64 hexadecimal digits, lowercased into out[65]. 0 or -1. */
static int parse_sha256(const char *s, char out[65])
{
    if (strlen(s) != 64)
        return -1;
    for (int i = 0; i < 64; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return -1;
        out[i] = (char)tolower((unsigned char)s[i]);
    }
    out[64] = '\0';
    return 0;
}

static int print_result(const struct cmd_ctx *ctx, const char *url, const actl_pull_result *r)
{
    if (ctx->json)
        return cmd_print_json(json_pack(
            "{s:s, s:I, s:s, s:s, s:s, s:I, s:i, s:b}", "name", r->name, "version",
            (json_int_t)r->version, "source", url, "pack", r->pack, "sha256", r->sha256,
            "bytes_transferred", (json_int_t)r->bytes_transferred, "files_transferred",
            r->files_transferred, "unchanged", r->unchanged));
    if (r->unchanged)
        printf("unchanged: %s@%lld is up to date (%llu bytes transferred)\n", r->name,
               (long long)r->version, (unsigned long long)r->bytes_transferred);
    else
        printf("pulled %s@%lld from %s: %llu bytes transferred, sha256 %s\n", r->name,
               (long long)r->version, url, (unsigned long long)r->bytes_transferred, r->sha256);
    return CMD_OK;
}

int cmd_pull(int argc, char **argv, struct cmd_ctx *ctx)
{
    const char *name = NULL, *sha_arg = NULL, *max_arg = NULL;
    struct cmd_list tags = { 0 };
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "name", &name, "N",
                       "the local name (default: from the index, URL or repository)"),
        CMD_OPT_STRING(0, "sha256", &sha_arg, "HEX",
                       "expected SHA-256 of the safetensors file (or of the pack)"),
        CMD_OPT_STRING(0, "max-size", &max_arg, "BYTES",
                       "largest file to download; K, M, G, T suffixes (default 16G)"),
        CMD_OPT_LIST(0, "tag", &tags, "K=V", "a tag for the new entry; repeat for more"),
        CMD_OPT_STORE(ctx),
        CMD_OPT_GLOBALS(ctx),
        CMD_OPT_END(),
    };
    actl_store *s = NULL;
    char sha[65], shown[256];
    int nargs;

    int rc = cmd_parse(argc, argv, opts, pull_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        goto out;
    rc = CMD_USAGE;
    if (nargs == 0) {
        cmd_usage_error(pull_usage, "missing URL");
        goto out;
    }
    if (nargs > 2) {
        cmd_usage_error(pull_usage, "too many arguments: '%s'", argv[2]);
        goto out;
    }
    const char *url = argv[0];
    const char *ref = nargs > 1 ? argv[1] : NULL;
    if ((rc = check_url(url)) != CMD_OK)
        goto out;
    if (ref && (rc = cmd_check_ref(pull_usage, ref)) != CMD_OK)
        goto out;
    rc = CMD_USAGE;
    if (name && actl_name_check(name) != ACTL_OK) {
        cmd_usage_error(pull_usage, "%s", actl_errmsg());
        goto out;
    }
    if (sha_arg && parse_sha256(sha_arg, sha) != 0) {
        cmd_usage_error(pull_usage, "--sha256 '%s' is not 64 hexadecimal digits",
                        printable(sha_arg, shown, sizeof shown));
        goto out;
    }
    actl_pull_opts o = actl_pull_default_opts();
    if (max_arg && parse_size(max_arg, &o.max_size) != 0) {
        cmd_usage_error(pull_usage, "--max-size '%s' is not a positive size in bytes",
                        printable(max_arg, shown, sizeof shown));
        goto out;
    }
    if ((rc = cmd_check_tags(pull_usage, "--tag", tags.items)) != CMD_OK)
        goto out;

    if ((rc = cmd_store_open(ctx, &s)) != CMD_OK)
        goto out;
    struct cmd_progress bar;
    cmd_progress_init(&bar, ctx);
    o.name = name;
    o.sha256 = sha_arg ? sha : NULL;
    o.tags = tags.items;
    if (bar.enabled) {
        o.progress = cmd_progress_update;
        o.progress_ctx = &bar;
    }
    actl_pull_result r;
    memset(&r, 0, sizeof r);
    int lrc = actl_store_pull(s, url, ref, &o, &r);
    cmd_progress_end(&bar);
    rc = lrc == ACTL_OK ? print_result(ctx, url, &r) : cmd_lib_error(lrc);
out:
    actl_store_close(s);
    cmd_list_free(&tags);
    return rc;
}
