/* options.c: the option parser and the messages every command shares. */
#include "cmd.h"

#include <stdarg.h>
#include <string.h>

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
