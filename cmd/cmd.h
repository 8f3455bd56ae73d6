/*
 * cmd.h: what the adapterctl commands share: the entry signature, the
 * global options, exit codes, and a small option parser.
 *
 * Each command lives in cmd/<name>.c, defines
 *     int cmd_<name>(int argc, char **argv, struct cmd_ctx *ctx)
 * with argv[0] the command's name, and is listed once in the command table
 * in cmd/main.c. Commands reach the library through adapterctl.h only.
 */
#ifndef ACTL_CMD_H
#define ACTL_CMD_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "adapterctl.h"

/* Exit codes (DESIGN.md 12). */
#define CMD_OK 0    /* success */
#define CMD_FAIL 1  /* the work failed; a message is on stderr */
#define CMD_USAGE 2 /* bad command line: unknown command or option, missing argument */

/* Global options, given before the command (`adapterctl --json inspect x`);
 * --json and -q are also accepted after it through CMD_OPT_GLOBALS. */
struct cmd_ctx {
    const char *store; /* --store DIR, or NULL for the default location */
    int json;          /* --json: one JSON document on stdout */
    int quiet;         /* -q: no notes or progress on stderr */
};

/* A command's entry point. Returns CMD_OK, CMD_FAIL or CMD_USAGE. */
typedef int cmd_fn(int argc, char **argv, struct cmd_ctx *ctx);

/* ---- options ---------------------------------------------------------- */

enum cmd_opt_type {
    CMD_OPT_END = 0, /* ends a table */
    CMD_OPT_FLAG,    /* sets *(int *)value to 1 */
    CMD_OPT_STRING,  /* sets *(const char **)value to the next argument, or to
                        what follows "=" in --name=value (lent from argv) */
    CMD_OPT_LIST     /* appends that value to the struct cmd_list at value, so
                        the option may be repeated (--tag a=1 --tag b=2) */
};

/* The values of a repeated option, in the order given. items is NULL until
 * the first value, then n values (lent from argv) and a NULL, so that it can
 * be passed to the library as a NULL-terminated `const char *const *`. */
struct cmd_list {
    const char **items;
    size_t n;
};

/* Frees the array (not the strings, which argv owns) and empties the list. */
void cmd_list_free(struct cmd_list *l);

struct cmd_option {
    enum cmd_opt_type type;
    char short_name;       /* 'q' for -q; 0 for none */
    const char *long_name; /* "json" for --json; NULL for none */
    void *value;           /* int * for flags, const char ** for strings */
    const char *arg_name;  /* strings: shown in help ("DIR"); NULL for flags */
    const char *help;      /* one line for the usage text */
};

#define CMD_OPT_FLAG(s, l, v, h) { CMD_OPT_FLAG, (s), (l), (v), NULL, (h) }
#define CMD_OPT_STRING(s, l, v, a, h) { CMD_OPT_STRING, (s), (l), (v), (a), (h) }
#define CMD_OPT_LIST(s, l, v, a, h) { CMD_OPT_LIST, (s), (l), (v), (a), (h) }
#define CMD_OPT_END() { CMD_OPT_END, 0, NULL, NULL, NULL, NULL }
/* The global options a command accepts after its name as well. */
#define CMD_OPT_GLOBALS(ctx)                                                     \
    CMD_OPT_FLAG(0, "json", &(ctx)->json, "print one JSON document on stdout"), \
    CMD_OPT_FLAG('q', "quiet", &(ctx)->quiet, "no notes or progress on stderr")

/* cmd_parse's result when the command should go on. */
#define CMD_PARSED (-1)

/* Flags for cmd_parse. */
#define CMD_PARSE_STOP_AT_NON_OPTION 0x1 /* options only before the first argument */

/*
 * Parses argv[1..argc-1] against opts. Options may come before, between and
 * after the arguments (unless CMD_PARSE_STOP_AT_NON_OPTION); "--" ends them.
 * Forms: --name, --name value, --name=value, -n, -n value. -h and --help
 * print the usage on stdout, unless opts has its own "help" entry.
 *
 * The arguments that are not options are moved, in order, to
 * argv[0..*nargs-1] (argv[0], the command's name, is overwritten).
 *
 * Returns CMD_PARSED to go on, CMD_OK after --help, CMD_USAGE after
 * printing "adapterctl: <problem>" and the usage on stderr, or CMD_FAIL when
 * memory for a CMD_OPT_LIST ran out. The caller frees its lists whatever the
 * result.
 *
 * usage: NULL-terminated lines: the synopsis (one or more lines, e.g.
 * "adapterctl inspect PATH [--json]"), an empty line, a short description.
 */
int cmd_parse(int argc, char **argv, const struct cmd_option *opts,
              const char *const *usage, int flags, int *nargs);

/* Prints the usage lines and the option table to f. */
void cmd_usage(FILE *f, const char *const *usage, const struct cmd_option *opts);

/* Prints "adapterctl: <message>" and the synopsis on stderr; returns CMD_USAGE. */
int cmd_usage_error(const char *const *usage, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prints "adapterctl: <message>" on stderr. */
void cmd_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

/* Reports a failed library call: "adapterctl: <actl_errmsg()>", or the code's
 * fixed text when the library left no message. Returns CMD_FAIL. */
int cmd_lib_error(int code);

/* ---- what the store commands share ------------------------------------ */

/* --store DIR after the command's name, as before it. */
#define CMD_OPT_STORE(ctx)                                  \
    CMD_OPT_STRING(0, "store", &(ctx)->store, "DIR",        \
                   "the store directory (default: $ADAPTERCTL_STORE, else " \
                   "$XDG_DATA_HOME/adapterctl)")

/* Opens the store that --store names, else the default one
 * (actl_store_default_path), creating it when absent (DESIGN.md 5: created
 * on first use). Returns CMD_OK, or CMD_FAIL after printing the library's
 * message. */
int cmd_store_open(const struct cmd_ctx *ctx, actl_store **out);

/* Opens the store as cmd_store_open does and pins ref (NAME[@V]) to one
 * entry, the newest version of NAME when V is absent, so that a command acts
 * on and reports that exact version. Returns CMD_OK with *e lent from *l, or
 * CMD_FAIL after printing why. Either way the caller frees *l
 * (actl_entries_free) and closes *s, which may be NULL. */
int cmd_store_entry(const struct cmd_ctx *ctx, const char *ref, actl_store **s,
                    actl_entries **l, const actl_entry **e);

/* Parses a decimal integer in [min, INT64_MAX]; 0 on success, -1 otherwise. */
int cmd_parse_int(const char *s, int64_t min, int64_t *out);

/* Checks a NAME[@VERSION] argument; CMD_OK, or CMD_USAGE after printing the
 * library's reason and the synopsis. */
int cmd_check_ref(const char *const *usage, const char *ref);

/* Checks that every item of tags is KEY=VALUE with a non-empty KEY; CMD_OK
 * or CMD_USAGE (with the synopsis). `what` names the option ("--tag"). */
int cmd_check_tags(const char *const *usage, const char *what, const char *const *tags);

/* "name@3" into buf. */
const char *cmd_ref_str(const actl_entry *e, char *buf, size_t len);

/* Monotonic seconds, for timing a command's work. */
double cmd_seconds_now(void);

/* Whether p names a directory (following links). */
int cmd_is_dir(const char *p);

/* The tokenizer a decoder command uses: path when given, else the one in
 * the model's directory (tokenizer.json, tokenizer.model, vocab.json,
 * encoder.json or tokenizer.bin, as actl_tokenizer_load looks for them);
 * *out NULL without an error when the model is a file or its directory
 * holds none. */
int cmd_load_tokenizer(const char *model, const char *path, actl_tokenizer **out);

/* s[0, n) as valid UTF-8 for a JSON string: every byte that begins no
 * well-formed sequence (a lone continuation byte, a cut or overlong
 * sequence, a surrogate) and every NUL becomes U+FFFD, as HF's decode does.
 * malloc'd, NUL-terminated; NULL when out of memory. */
char *cmd_utf8_clean(const char *s, size_t n);

/* "512 B", "14.0 KiB", "3.2 MiB". */
const char *cmd_human_size(uint64_t n, char *buf, size_t len);

/* raw/stored as "2.31x", or "-" when stored is 0. */
const char *cmd_ratio_str(uint64_t raw, uint64_t stored, char *buf, size_t len);

/* The README's entry object (name, version, kind, ..., created,
 * created_unix, tags). A new reference, or NULL (after printing why). */
json_t *cmd_entry_json(const actl_entry *e);

/* Every entry of l as a JSON array (new reference), or NULL. */
json_t *cmd_entries_json(const actl_entries *l);

/* Prints doc on stdout, indented by two spaces, and drops the reference.
 * doc NULL (a failed build) is reported. CMD_OK or CMD_FAIL. */
int cmd_print_json(json_t *doc);

/* Tags as "k=v,k2=v2" (or "-" when there are none) into buf, cut short with
 * "..." when longer than len allows. */
const char *cmd_tags_str(const actl_entry *e, char *buf, size_t len);

/* ---- progress bar ------------------------------------------------------ */

/* A one-line progress bar on stderr for a transfer: bytes done / total,
 * percentage, rate and ETA, redrawn in place with '\r' at most ten times a
 * second. It draws only when stderr is a terminal and neither -q nor --json
 * was given (DESIGN.md 12), so scripts and logs never see it. */
struct cmd_progress {
    int enabled;        /* 0: every call is a no-op */
    int shown;          /* characters on the line now, to clear */
    double start;       /* monotonic seconds when this transfer began */
    double last_draw;   /* when the line was last drawn */
    uint64_t last_done; /* to notice that a new file's transfer began */
};

/* Decides whether to draw (the terminal and the options) and starts the clock. */
void cmd_progress_init(struct cmd_progress *p, const struct cmd_ctx *ctx);

/* An actl_progress_fn: ctx is the struct cmd_progress. A `done` smaller than
 * the previous one starts a new transfer (rate and ETA start again). */
void cmd_progress_update(uint64_t done, uint64_t total, void *ctx);

/* Clears the line, so that what follows starts on a clean one. */
void cmd_progress_end(struct cmd_progress *p);

#endif /* ACTL_CMD_H */
