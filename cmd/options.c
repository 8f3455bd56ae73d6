/* options.c: the option parser and the messages every command shares. */
#include "cmd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void cmd_list_free(struct cmd_list *l)
{
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* Appends v, keeping the array NULL-terminated; -1 when out of memory. */
static int list_append(struct cmd_list *l, const char *v)
{
    const char **items = realloc(l->items, (l->n + 2) * sizeof *items);
    if (!items)
        return -1;
    items[l->n++] = v;
    items[l->n] = NULL;
    l->items = items;
    return 0;
}

static const struct cmd_option *find_long(const struct cmd_option *opts, const char *name,
                                          size_t len)
{
    for (const struct cmd_option *o = opts; o->type != CMD_OPT_END; o++)
        if (o->long_name && strlen(o->long_name) == len && !strncmp(o->long_name, name, len))
            return o;
    return NULL;
}

static const struct cmd_option *find_short(const struct cmd_option *opts, char c)
{
    for (const struct cmd_option *o = opts; o->type != CMD_OPT_END; o++)
        if (o->short_name && o->short_name == c)
            return o;
    return NULL;
}

/* "--json" or "-q", as the user would type it, for messages. */
static const char *spelling(const struct cmd_option *o, char *buf, size_t n)
{
    if (o->long_name)
        snprintf(buf, n, "--%s", o->long_name);
    else
        snprintf(buf, n, "-%c", o->short_name);
    return buf;
}

int cmd_parse(int argc, char **argv, const struct cmd_option *opts,
              const char *const *usage, int flags, int *nargs)
{
    int n = 0;
    int only_args = 0;
    char name[64];

    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        /* "-" alone is an argument (standard input, by convention). */
        if (only_args || a[0] != '-' || a[1] == '\0') {
            argv[n++] = a;
            if (flags & CMD_PARSE_STOP_AT_NON_OPTION)
                only_args = 1;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_args = 1;
            continue;
        }

        const struct cmd_option *o;
        const char *value = NULL;
        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            o = find_long(opts, a + 2, len);
            if (eq)
                value = eq + 1;
        } else {
            /* Short options stand alone: no "-qx" bundles, no "-nVALUE". */
            o = a[2] == '\0' ? find_short(opts, a[1]) : NULL;
        }
        if (!o && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            cmd_usage(stdout, usage, opts);
            return CMD_OK;
        }
        if (!o)
            return cmd_usage_error(usage, "unknown option '%.*s'",
                                   (int)strcspn(a, "="), a);

        if (o->type == CMD_OPT_FLAG) {
            if (value)
                return cmd_usage_error(usage, "option '%s' takes no value",
                                       spelling(o, name, sizeof name));
            *(int *)o->value = 1;
        } else if (o->type == CMD_OPT_LIST) {
            if (!value) {
                if (i + 1 >= argc)
                    return cmd_usage_error(usage, "option '%s' needs a value",
                                           spelling(o, name, sizeof name));
                value = argv[++i];
            }
            if (list_append(o->value, value) != 0) {
                cmd_error("out of memory");
                return CMD_FAIL;
            }
        } else {
            if (!value) {
                if (i + 1 >= argc)
                    return cmd_usage_error(usage, "option '%s' needs a value",
                                           spelling(o, name, sizeof name));
                value = argv[++i];
            }
            *(const char **)o->value = value;
        }
    }
    *nargs = n;
    return CMD_PARSED;
}

/* The left column of the option table: "-q, --quiet", "    --store DIR". */
static const char *left_column(const struct cmd_option *o, char *buf, size_t n)
{
    char s[8] = "    ";
    if (o->short_name)
        snprintf(s, sizeof s, "-%c%s", o->short_name, o->long_name ? ", " : "");
    snprintf(buf, n, "%s%s%s%s%s", s, o->long_name ? "--" : "", o->long_name ? o->long_name : "",
             o->arg_name ? " " : "", o->arg_name ? o->arg_name : "");
    return buf;
}

/* The synopsis: usage's lines up to the first empty one. */
static void synopsis(FILE *f, const char *const *usage)
{
    fprintf(f, "usage: %s\n", usage[0]);
    for (usage++; *usage && **usage; usage++)
        fprintf(f, "       %s\n", *usage);
}

void cmd_usage(FILE *f, const char *const *usage, const struct cmd_option *opts)
{
    synopsis(f, usage);
    for (const char *const *l = usage + 1; *l; l++)
        if (!**l) {
            for (; *l; l++)
                fprintf(f, "%s\n", *l);
            break;
        }

    char left[128];
    int width = (int)strlen("-h, --help");
    for (const struct cmd_option *o = opts; o->type != CMD_OPT_END; o++) {
        int w = (int)strlen(left_column(o, left, sizeof left));
        if (w > width)
            width = w;
    }
    fprintf(f, "\noptions:\n");
    for (const struct cmd_option *o = opts; o->type != CMD_OPT_END; o++)
        fprintf(f, "  %-*s  %s\n", width, left_column(o, left, sizeof left), o->help);
    if (!find_long(opts, "help", 4))
        fprintf(f, "  %-*s  %s\n", width, "-h, --help", "show this help");
}

int cmd_usage_error(const char *const *usage, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("adapterctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    synopsis(stderr, usage);
    return CMD_USAGE;
}

void cmd_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("adapterctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cmd_lib_error(int code)
{
    const char *msg = actl_errmsg();
    cmd_error("%s", msg && *msg ? msg : actl_strerror(code));
    return CMD_FAIL;
}

/* ---- what the store commands share ------------------------------------ */

int cmd_store_open(const struct cmd_ctx *ctx, actl_store **out)
{
    char *fallback = NULL;
    const char *dir = ctx->store;
    int rc = ACTL_OK;
    if (!dir) {
        rc = actl_store_default_path(&fallback);
        if (rc != ACTL_OK)
            goto out;
        dir = fallback;
    }
    rc = actl_store_open(dir, ACTL_STORE_CREATE, out);
out:
    free(fallback);
    return rc == ACTL_OK ? CMD_OK : cmd_lib_error(rc);
}

int cmd_store_entry(const struct cmd_ctx *ctx, const char *ref, actl_store **s,
                    actl_entries **l, const actl_entry **e)
{
    *e = NULL;
    int rc = cmd_store_open(ctx, s);
    if (rc != CMD_OK)
        return rc;
    int lrc = actl_store_show(*s, ref, l);
    if (lrc != ACTL_OK)
        return cmd_lib_error(lrc);
    *e = actl_entries_get(*l, 0);
    if (!*e) {
        cmd_error("the store returned no entry for '%s'", ref);
        return CMD_FAIL;
    }
    return CMD_OK;
}

int cmd_parse_int(const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    /* strtoll would take " 5" and "+5"; a count on a command line is digits. */
    if (!s || !((s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && s[1] >= '0' && s[1] <= '9')))
        return -1;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min)
        return -1;
    *out = v;
    return 0;
}

int cmd_check_ref(const char *const *usage, const char *ref)
{
    char name[256];
    int64_t version;
    if (actl_ref_parse(ref, name, sizeof name, &version) != ACTL_OK)
        return cmd_usage_error(usage, "%s", actl_errmsg());
    return CMD_OK;
}

int cmd_check_tags(const char *const *usage, const char *what, const char *const *tags)
{
    for (; tags && *tags; tags++) {
        const char *eq = strchr(*tags, '=');
        if (!eq || eq == *tags)
            return cmd_usage_error(usage, "%s '%s' is not KEY=VALUE", what, *tags);
    }
    return CMD_OK;
}

const char *cmd_ref_str(const actl_entry *e, char *buf, size_t len)
{
    snprintf(buf, len, "%s@%lld", e->name, (long long)e->version);
    return buf;
}

const char *cmd_human_size(uint64_t n, char *buf, size_t len)
{
    static const char *const unit[] = { "KiB", "MiB", "GiB", "TiB" };
    if (n < 1024) {
        snprintf(buf, len, "%llu B", (unsigned long long)n);
        return buf;
    }
    double v = (double)n / 1024;
    int u = 0;
    while (v >= 1024 && u < 3) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

const char *cmd_ratio_str(uint64_t raw, uint64_t stored, char *buf, size_t len)
{
    if (stored == 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.2fx", (double)raw / (double)stored);
    return buf;
}

const char *cmd_tags_str(const actl_entry *e, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    if (e->tag_count == 0) {
        snprintf(buf, len, "-");
        return buf;
    }
    for (size_t i = 0; i < e->tag_count; i++) {
        int w = snprintf(buf + used, len - used, "%s%s=%s", i ? "," : "", e->tag_keys[i],
                         e->tag_values[i]);
        if (w < 0 || (size_t)w >= len - used) {
            /* Cut: end with "..." where there is room for it. */
            if (len >= 4)
                memcpy(buf + len - 4, "...", 4);
            break;
        }
        used += (size_t)w;
    }
    return buf;
}

/* A JSON text the catalogue holds (config, target_modules), parsed back. */
static json_t *stored_json(const actl_entry *e, const char *field, const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text ? text : "null", JSON_DECODE_ANY, &jerr);
    if (!v)
        cmd_error("'%s@%lld': the catalogue's %s is not JSON: %s", e->name,
                  (long long)e->version, field, jerr.text);
    return v;
}

json_t *cmd_entry_json(const actl_entry *e)
{
    char created[32] = "";
    time_t t = (time_t)e->created;
    struct tm tm;
    if (gmtime_r(&t, &tm))
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);

    json_t *modules = stored_json(e, "target_modules", e->target_modules);
    json_t *config = modules ? stored_json(e, "config", e->config) : NULL;
    /* lineage: the object itself (null when the entry was not composed here) */
    json_t *lineage = config ? stored_json(e, "lineage", e->lineage) : NULL;
    json_t *tags = json_object();
    for (size_t i = 0; tags && i < e->tag_count; i++)
        if (json_object_set_new(tags, e->tag_keys[i], json_string(e->tag_values[i])) != 0)
            tags = (json_decref(tags), NULL);
    if (!modules || !config || !lineage || !tags) {
        json_decref(modules);
        json_decref(config);
        json_decref(lineage);
        json_decref(tags);
        return NULL;
    }
    /* "o" steals modules, config, lineage and tags, even when packing fails.
     * pack is null for a stack, which has none. */
    json_t *doc = json_pack(
        "{s:s, s:I, s:s, s:s?, s:i, s:s?, s:i, s:o, s:o, s:I, s:I, s:s?, s:s?, s:s?, s:s, s:I,"
        " s:o, s:o}",
        "name", e->name, "version", (json_int_t)e->version, "kind", actl_kind_name(e->kind),
        "base_model", e->base_model, "rank", e->rank, "variant", e->variant, "group_size",
        e->group_size, "target_modules", modules, "config", config, "raw_bytes",
        (json_int_t)e->raw_bytes, "stored_bytes", (json_int_t)e->stored_bytes, "pack",
        e->pack, "source", e->source, "description", e->description, "created",
        created, "created_unix", (json_int_t)e->created, "lineage", lineage, "tags", tags);
    if (!doc)
        cmd_error("cannot build the JSON output for '%s@%lld'", e->name, (long long)e->version);
    return doc;
}

json_t *cmd_entries_json(const actl_entries *l)
{
    json_t *arr = json_array();
    if (!arr) {
        cmd_error("out of memory");
        return NULL;
    }
    for (size_t i = 0; i < actl_entries_count(l); i++) {
        json_t *o = cmd_entry_json(actl_entries_get(l, i));
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

int cmd_print_json(json_t *doc)
{
    int rc = CMD_OK;
    if (!doc) {
        /* The builder said why when it could; jansson fails on memory alone here. */
        cmd_error("cannot build the JSON output");
        return CMD_FAIL;
    }
    /* 17 significant digits: every double reads back exactly. */
    if (json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) != 0) {
        cmd_error("cannot write the JSON output");
        rc = CMD_FAIL;
    } else {
        putchar('\n');
    }
    json_decref(doc);
    return rc;
}

/* ---- progress bar ------------------------------------------------------ */

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cmd_progress_init(struct cmd_progress *p, const struct cmd_ctx *ctx)
{
    memset(p, 0, sizeof *p);
    p->enabled = !ctx->quiet && !ctx->json && isatty(STDERR_FILENO);
    p->start = monotonic_seconds();
    p->last_draw = -1;
}

/* "1:05" or "2:03:07"; "--:--" when unknown or absurd. */
static const char *eta_str(double seconds, char *buf, size_t len)
{
    if (!(seconds >= 0) || seconds > 99 * 3600.0) {
        snprintf(buf, len, "--:--");
        return buf;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, len, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

void cmd_progress_update(uint64_t done, uint64_t total, void *ctx)
{
    struct cmd_progress *p = ctx;
    if (!p || !p->enabled)
        return;
    double now = monotonic_seconds();
    /* The counter went back: the next file (or a restart from zero). */
    if (done < p->last_done)
        p->start = now;
    p->last_done = done;
    int final = total && done >= total;
    if (!final && p->last_draw >= 0 && now - p->last_draw < 0.1)
        return;
    p->last_draw = now;

    char d[32], t[32], r[32], eta[32], line[160];
    double elapsed = now - p->start;
    /* Under 50 ms the rate is noise: show none rather than a wild one. */
    double rate = elapsed >= 0.05 ? (double)done / elapsed : 0;
    if (rate > 0)
        snprintf(r, sizeof r, "%s/s", cmd_human_size((uint64_t)rate, d, sizeof d));
    else
        snprintf(r, sizeof r, "--/s");
    cmd_human_size(done, d, sizeof d);
    int n;
    if (total) {
        /* [#########.........] 20 cells */
        char bar[21];
        uint64_t shown = done > total ? total : done;
        int cells = (int)((double)shown / (double)total * 20);
        for (int i = 0; i < 20; i++)
            bar[i] = i < cells ? '#' : '.';
        bar[20] = '\0';
        n = snprintf(line, sizeof line, "%s / %s [%s] %3d%%  %s  ETA %s", d,
                     cmd_human_size(total, t, sizeof t), bar,
                     (int)((double)shown / (double)total * 100), r,
                     eta_str(rate > 0 ? (double)(total - shown) / rate : -1, eta, sizeof eta));
    } else {
        n = snprintf(line, sizeof line, "%s  %s", d, r);
    }
    if (n < 0)
        return;
    if (n >= (int)sizeof line)
        n = (int)sizeof line - 1;
    /* Pad over a longer previous line instead of clearing it first: no flicker. */
    fprintf(stderr, "\r%s%*s", line, p->shown > n ? p->shown - n : 0, "");
    fflush(stderr);
    if (n > p->shown)
        p->shown = n;
}

void cmd_progress_end(struct cmd_progress *p)
{
    if (!p->enabled || !p->shown)
        return;
    fprintf(stderr, "\r%*s\r", p->shown, "");
    fflush(stderr);
    p->shown = 0;
}

/* ---- what the decoder commands share ----------------------------------- */

double cmd_seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int cmd_is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cmd_load_tokenizer(const char *model, const char *path, actl_tokenizer **out)
{
    *out = NULL;
    if (path)
        return actl_tokenizer_load(path, NULL, out);
    if (!cmd_is_dir(model))
        return ACTL_OK;
    static const char *const names[] = {"tokenizer.json", "tokenizer.model", "vocab.json",
                                        "encoder.json", "tokenizer.bin"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[4096];
        struct stat st;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", model, names[i]) < sizeof p &&
            stat(p, &st) == 0)
            return actl_tokenizer_load(model, NULL, out);
    }
    return ACTL_OK;
}

char *cmd_utf8_clean(const char *s, size_t n)
{
    char *o = malloc(3 * n + 1), *w = o;
    if (!o)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3
                   : c >= 0xF0 && c < 0xF5 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
            ok = (p[i + k] & 0xC0) == 0x80;
        if (ok && len == 3) /* overlong or a surrogate */
            ok = !(c == 0xE0 && p[i + 1] < 0xA0) && !(c == 0xED && p[i + 1] >= 0xA0);
        if (ok && len == 4) /* overlong or beyond U+10FFFF */
            ok = !(c == 0xF0 && p[i + 1] < 0x90) && !(c == 0xF4 && p[i + 1] >= 0x90);
        if (c == 0) /* JSON text cannot hold NUL through json_string */
            ok = false, len = 1;
        if (ok) {
            memcpy(w, p + i, len);
            w += len;
            i += len;
        } else {
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            i++;
        }
    }
    *w = 0;
    return o;
}
