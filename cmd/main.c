/*
 * main.c: adapterctl's global options and its command table.
 *
 *   adapterctl [--store DIR] [--json] [-q] COMMAND [ARGS...]
 */
#include "cmd.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

/*
 * The command table, in the order `adapterctl --help` lists them: name and
 * one-line summary. Adding a command is one line here and one file
 * cmd/<name>.c defining `int cmd_<name>(int argc, char **argv, struct cmd_ctx *ctx)`.
 */
#define COMMANDS(X)                                                                   \
    X(inspect, "show what an adapter directory, checkpoint or safetensors file holds") \
    X(init, "create the store (optional: every store command creates it)")          \
    X(add, "validate a PEFT adapter directory and add it to the store")             \
    X(list, "list stored adapters, filtered by kind, base model and tags")          \
    X(show, "show one stored adapter")                                              \
    X(rm, "remove a stored adapter version (its pack goes at the next gc)")         \
    X(tag, "set or remove tags of a stored adapter")                                \
    X(export, "write a stored adapter out as a PEFT directory")                     \
    X(merge, "fold adapters into a base checkpoint, or take them back out")         \
    X(generate, "run the CPU decoder on a prompt, with adapters or a stack of them") \
    X(eval, "run requests or a dataset over many adapters with continuous batching") \
    X(compose, "build a new adapter from stored ones (cat, svd, ties, ..., stack)") \
    X(pull, "download an adapter from a URL, hf:// or a published store, verified") \
    X(publish, "write stored adapters as a static tree any HTTP server can serve")  \
    X(verify, "re-hash every pack and check every catalogue row")                   \
    X(gc, "remove unreferenced packs and stale temporary files")                    \
    X(stats, "adapters, versions, packs, sizes and the compression ratio")          \
    X(help, "show the help of a command")

#define DECLARE(name, summary) cmd_fn cmd_##name;
COMMANDS(DECLARE)
#undef DECLARE

struct command {
    const char *name;
    cmd_fn *run;
    const char *summary;
};

#define ENTRY(name, summary) { #name, cmd_##name, summary },
static const struct command commands[] = { COMMANDS(ENTRY) };
#undef ENTRY

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

static const char *const main_usage[] = {
    "adapterctl [--store DIR] [--json] [-q] COMMAND [ARGS...]",
    "adapterctl --version",
    "adapterctl help COMMAND",
    "",
    "Keeps, checks and applies LLM adapters (LoRA/DoRA, RoAd, bottleneck, MoS).",
    "Data goes to stdout, messages to stderr. Exit status: 0 success, 1 failure,",
    "2 usage error.",
    NULL,
};

static void print_commands(FILE *f)
{
    int width = 0;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if ((int)strlen(commands[i].name) > width)
            width = (int)strlen(commands[i].name);
    fprintf(f, "\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-*s  %s\n", width, commands[i].name, commands[i].summary);
    fprintf(f, "\nSee 'adapterctl help COMMAND' or 'adapterctl COMMAND --help'.\n");
}

static const char *const help_usage[] = {
    "adapterctl help [COMMAND]",
    "",
    "Shows the help of COMMAND, or the list of commands.",
    NULL,
};

int cmd_help(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    int nargs;
    int rc = cmd_parse(argc, argv, opts, help_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs == 0) {
        printf("usage: %s\n", main_usage[0]);
        print_commands(stdout);
        return CMD_OK;
    }
    if (nargs > 1)
        return cmd_usage_error(help_usage, "too many arguments");

    const struct command *c = find_command(argv[0]);
    if (!c) {
        cmd_error("'%s' is not a command, see 'adapterctl --help'", argv[0]);
        return CMD_USAGE;
    }
    /* Run it as `adapterctl COMMAND --help`; argv strings are writable, so copies. */
    char name[64], help[] = "--help";
    snprintf(name, sizeof name, "%s", c->name);
    char *sub[] = { name, help, NULL };
    return c->run(2, sub, ctx);
}

int main(int argc, char **argv)
{
    struct cmd_ctx ctx = { 0 };
    int help = 0, version = 0, nargs;
    /*
     * A write past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills the
     * process without a word. Ignored, the write fails with EFBIG instead, and
     * the usual error path reports the file, removes the partial output and
     * leaves the store as it was.
     */
    signal(SIGXFSZ, SIG_IGN);
    const struct cmd_option opts[] = {
        CMD_OPT_STRING(0, "store", &ctx.store, "DIR",
                       "the store directory (default: $ADAPTERCTL_STORE, else "
                       "$XDG_DATA_HOME/adapterctl)"),
        CMD_OPT_GLOBALS(&ctx),
        CMD_OPT_FLAG(0, "version", &version, "print the version"),
        CMD_OPT_FLAG('h', "help", &help, "show this help"),
        CMD_OPT_END(),
    };

    int rc = cmd_parse(argc, argv, opts, main_usage, CMD_PARSE_STOP_AT_NON_OPTION, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (help) {
        cmd_usage(stdout, main_usage, opts);
        print_commands(stdout);
        return CMD_OK;
    }
    if (version) {
        printf("adapterctl %s\n", actl_version());
        return CMD_OK;
    }
    if (nargs == 0) {
        cmd_error("no command given");
        cmd_usage(stderr, main_usage, opts);
        print_commands(stderr);
        return CMD_USAGE;
    }

    const struct command *c = find_command(argv[0]);
    if (!c) {
        cmd_error("'%s' is not a command, see 'adapterctl --help'", argv[0]);
        return CMD_USAGE;
    }
    /* argv[0..nargs-1] is now the command's name and its arguments. */
    rc = c->run(nargs, argv, &ctx);
    /* Data that never reached stdout (a full disk) is a failure too. */
    if (fflush(stdout) != 0 || ferror(stdout)) {
        cmd_error("cannot write to standard output: %s", strerror(errno));
        return CMD_FAIL;
    }
    return rc;
}
