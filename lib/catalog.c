/* catalog.c: the store's SQLite catalogue (DESIGN.md 5): location, opening,
 * migrations, SQL helpers, name/ref/tag validation, entry lists, and the
 * read-only queries (list, show, stats). What touches packs or writes rows
 * (add, rm, tag, load, export, verify, gc) is in store.c. */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define NAME_MAX_LEN 128
#define REF_CAP (NAME_MAX_LEN + 1)
#define TAG_KEY_MAX_LEN 64
#define TAG_VALUE_MAX_LEN 1024
/* How long a writer waits for another: the busy handler, then as long again
 * of our own retries for the BUSY cases that skip the handler. */
#define BUSY_TIMEOUT_MS 10000

/* ---- messages and validation ------------------------------------------ */

const char *actl__quote(const char *s, char *buf, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, shown = 0;
    if (cap < 8) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, shown++) {
        if (shown == 100 || o + 8 >= cap) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char c = *p;
        if (c == '\n' || c == '\t' || c == '\r') {
            buf[o++] = '\\';
            buf[o++] = c == '\n' ? 'n' : c == '\t' ? 't' : 'r';
        } else if (c == '\\') {
            buf[o++] = '\\';
            buf[o++] = '\\';
        } else if (c < 0x20 || c >= 0x7f) {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

static bool is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

static bool is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* [A-Za-z0-9][A-Za-z0-9._-]{0,max-1} over the first len bytes of s; `what`
 * is "adapter name" or "tag key". */
static int ident_check(const char *what, const char *s, size_t len, size_t max)
{
    char q[ACTL__QUOTE_CAP];
    char *copy = NULL;
    int rc = ACTL_OK;
    if (len == 0)
        return actl__err(ACTL_EINVAL, "%s is empty", what);
    if (!(copy = strndup(s, len)))
        return actl__oom();
    actl__quote(copy, q, sizeof q);
    if (len > max) {
        rc = actl__err(ACTL_EINVAL, "invalid %s '%s': longer than %zu characters", what, q, max);
        goto out;
    }
    if (!is_alnum((unsigned char)s[0])) {
        rc = actl__err(ACTL_EINVAL, "invalid %s '%s': must start with a letter or digit", what,
                       q);
        goto out;
    }
    for (size_t i = 1; i < len; i++)
        if (!is_name_char((unsigned char)s[i])) {
            char one[2] = {s[i], '\0'}, cq[16];
            rc = actl__err(ACTL_EINVAL,
                           "invalid %s '%s': character '%s' is not allowed (letters, digits, "
                           "'.', '_' and '-' are)",
                           what, q, actl__quote(one, cq, sizeof cq));
            goto out;
        }
out:
    free(copy);
    return rc;
}

int actl_name_check(const char *name)
{
    if (!name)
        return actl__err(ACTL_EINVAL, "adapter name is missing");
    return ident_check("adapter name", name, strlen(name), NAME_MAX_LEN);
}

int actl__tag_key_check(const char *key)
{
    if (!key)
        return actl__err(ACTL_EINVAL, "tag key is missing");
    return ident_check("tag key", key, strlen(key), TAG_KEY_MAX_LEN);
}

int actl_ref_parse(const char *ref, char *name, size_t name_cap, int64_t *version)
{
    char q[ACTL__QUOTE_CAP];
    if (!ref || !name || !version)
        return actl__err(ACTL_EINVAL, "adapter reference: NULL argument");
    const char *at = strchr(ref, '@');
    size_t nlen = at ? (size_t)(at - ref) : strlen(ref);
    int rc = ident_check("adapter name", ref, nlen, NAME_MAX_LEN);
    if (rc)
        return actl__err_wrap(rc, "invalid adapter reference '%s'",
                              actl__quote(ref, q, sizeof q));
    int64_t v = 0;
    if (at) {
        const char *p = at + 1;
        if (!*p)
            return actl__err(ACTL_EINVAL,
                             "invalid adapter reference '%s': no version after '@'",
                             actl__quote(ref, q, sizeof q));
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return actl__err(ACTL_EINVAL,
                                 "invalid adapter reference '%s': the version must be a "
                                 "positive integer",
                                 actl__quote(ref, q, sizeof q));
            int d = *p - '0';
            if (v > (INT64_MAX - d) / 10)
                return actl__err(ACTL_EINVAL, "invalid adapter reference '%s': version too large",
                                 actl__quote(ref, q, sizeof q));
            v = v * 10 + d;
        }
        if (v == 0)
            return actl__err(ACTL_EINVAL,
                             "invalid adapter reference '%s': versions start at 1",
                             actl__quote(ref, q, sizeof q));
    }
    if (nlen + 1 > name_cap)
        return actl__err(ACTL_ELIMIT, "adapter reference '%s': name buffer of %zu bytes is too "
                                      "small", actl__quote(ref, q, sizeof q), name_cap);
    memcpy(name, ref, nlen);
    name[nlen] = '\0';
    *version = v;
    return ACTL_OK;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when it is not one
 * (overlong forms, surrogates and values past U+10FFFF included). */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

int actl__text_check(const char *what, const char *s, size_t max, bool multiline)
{
    char q[ACTL__QUOTE_CAP];
    size_t len = strlen(s);
    if (len > max)
        return actl__err(ACTL_EINVAL, "%s '%s' is %zu bytes, over the limit of %zu", what,
                         actl__quote(s, q, sizeof q), len, max);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t n = utf8_seq(p);
        if (!n)
            return actl__err(ACTL_EINVAL, "%s '%s' is not valid UTF-8", what,
                             actl__quote(s, q, sizeof q));
        /* C0, DEL and C1 (U+0080-U+009F, "\xc2\x80"-"\xc2\x9f"): C1 codes such
         * as CSI move terminals as their escaped forms do. */
        bool c0 = *p < 0x20 || *p == 0x7f, c1 = p[0] == 0xc2 && p[1] <= 0x9f;
        if ((c0 && !(multiline && (*p == '\n' || *p == '\t'))) || c1)
            return actl__err(ACTL_EINVAL, "%s '%s' contains a control character", what,
                             actl__quote(s, q, sizeof q));
        p += n;
    }
    return ACTL_OK;
}

int actl__tag_parse(const char *kv, char key[65], const char **value)
{
    char q[ACTL__QUOTE_CAP];
    if (!kv)
        return actl__err(ACTL_EINVAL, "tag: NULL argument");
    const char *eq = strchr(kv, '=');
    if (!eq)
        return actl__err(ACTL_EINVAL, "invalid tag '%s': expected KEY=VALUE",
                         actl__quote(kv, q, sizeof q));
    size_t klen = (size_t)(eq - kv);
    int rc = ident_check("tag key", kv, klen, TAG_KEY_MAX_LEN);
    if (rc)
        return actl__err_wrap(rc, "invalid tag '%s'", actl__quote(kv, q, sizeof q));
    memcpy(key, kv, klen);
    key[klen] = '\0';
    const char *v = eq + 1;
    if (!*v)
        return actl__err(ACTL_EINVAL, "invalid tag '%s': the value is empty",
                         actl__quote(kv, q, sizeof q));
    if ((rc = actl__text_check("value", v, TAG_VALUE_MAX_LEN, false)))
        return actl__err_wrap(rc, "invalid tag '%s'", key);
    *value = v;
    return ACTL_OK;
}

int actl__tags_parse(const char *const *kv, char **keys_out, const char ***vals_out,
                     size_t *n_out)
{
    size_t n = 0;
    char *keys = NULL;
    const char **vals = NULL;
    int rc = ACTL_OK;
    while (kv && kv[n])
        n++;
    *keys_out = NULL;
    *vals_out = NULL;
    *n_out = 0;
    if (n == 0)
        return ACTL_OK;
    if (!(keys = malloc(n * 65)) || !(vals = malloc(n * sizeof *vals))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = actl__tag_parse(kv[i], keys + 65 * i, &vals[i])))
            goto out;
        for (size_t j = 0; j < i; j++)
            if (strcmp(keys + 65 * j, keys + 65 * i) == 0) {
                rc = actl__err(ACTL_EINVAL, "tag '%s' is given twice", keys + 65 * i);
                goto out;
            }
    }
    *keys_out = keys;
    *vals_out = vals;
    *n_out = n;
    keys = NULL;
    vals = NULL;
out:
    free(keys);
    free(vals);
    return rc;
}

actl_add_opts actl_add_default_opts(void)
{
    actl_add_opts o;
    memset(&o, 0, sizeof o);
    return o;
}

actl_query actl_query_default(void)
{
    actl_query q;
    memset(&q, 0, sizeof q);
    return q;
}

/* ---- location --------------------------------------------------------- */

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int actl_store_default_path(char **out)
{
    const char *v;
    char *p = NULL;
    if (!out)
        return actl__err(ACTL_EINVAL, "store path: NULL argument");
    if ((v = env_nonempty("ADAPTERCTL_STORE")))
        p = strdup(v);
    else if ((v = env_nonempty("XDG_DATA_HOME")))
        p = actl__path_join(v, "adapterctl");
    else if ((v = env_nonempty("HOME")))
        p = actl__path_join(v, ".local/share/adapterctl");
    else
        return actl__err(ACTL_ENOTFOUND, "no store directory: none of ADAPTERCTL_STORE, "
                                         "XDG_DATA_HOME and HOME is set");
    if (!p)
        return actl__oom();
    *out = p;
    return ACTL_OK;
}

/* mkdir -p with mode 0755 (before the umask). */
static int mkdir_p(const char *path)
{
    int rc = ACTL_OK;
    char *buf = strdup(path);
    if (!buf)
        return actl__oom();
    size_t len = strlen(buf);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        if (buf[i - 1] == '/')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            rc = actl__err(ACTL_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
            goto out;
        }
        if (!actl__is_dir(buf)) {
            rc = actl__err(ACTL_EIO, "cannot create directory '%s': a file is in the way", buf);
            goto out;
        }
        buf[i] = saved;
    }
out:
    free(buf);
    return rc;
}

/* ---- SQL helpers ------------------------------------------------------ */

int actl__db_err(const actl_store *s, int sqlite_rc, const char *what)
{
    int code;
    switch (sqlite_rc & 0xff) {
    case SQLITE_NOMEM: return actl__oom();
    case SQLITE_CORRUPT: code = ACTL_ECORRUPT; break;
    case SQLITE_NOTADB: code = ACTL_EFORMAT; break;
    case SQLITE_CONSTRAINT: code = ACTL_EINVAL; break;
    default: code = ACTL_EIO; break;
    }
    const char *msg = s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(sqlite_rc);
    /* SQLite says only "disk I/O error"; the system's reason (a full disk, a
     * file size limit) is what the user can act on. */
    int sys = s->db && (sqlite_rc & 0xff) == SQLITE_IOERR ? sqlite3_system_errno(s->db) : 0;
    if (sys)
        return actl__err(code, "'%s': %s: %s (%s)", s->db_path, what, msg, strerror(sys));
    return actl__err(code, "'%s': %s: %s", s->db_path, what, msg);
}

int actl__db_exec(actl_store *s, const char *sql, const char *what)
{
    int r = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    return r == SQLITE_OK ? ACTL_OK : actl__db_err(s, r, what);
}

int actl__db_prepare(actl_store *s, const char *sql, sqlite3_stmt **st)
{
    int r = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    return r == SQLITE_OK ? ACTL_OK : actl__db_err(s, r, "cannot prepare a query");
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* sqlite3_exec, retried while SQLITE_BUSY for up to BUSY_TIMEOUT_MS: some
 * lock waits (BEGIN IMMEDIATE under WAL, switching to WAL while another
 * connection opens the same new file) return BUSY without calling the busy
 * handler. cb as sqlite3_exec's (NULL: rows ignored). */
static int exec_retry_cb(actl_store *s, const char *sql, const char *what,
                         int (*cb)(void *, int, char **, char **), void *arg)
{
    int64_t start = now_ms();
    unsigned seed = (unsigned)getpid() ^ (unsigned)start;
    for (;;) {
        int r = sqlite3_exec(s->db, sql, cb, arg, NULL);
        if (r == SQLITE_OK)
            return ACTL_OK;
        if ((r & 0xff) != SQLITE_BUSY || now_ms() - start > BUSY_TIMEOUT_MS)
            return actl__db_err(s, r, what);
        /* 1-8 ms, jittered so that waiting writers do not retry in step. */
        seed = seed * 1103515245u + 12345u;
        struct timespec ts = {0, (long)(1 + (seed >> 16) % 8) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int exec_retry(actl_store *s, const char *sql, const char *what)
{
    return exec_retry_cb(s, sql, what, NULL, NULL);
}

int actl__db_begin(actl_store *s)
{
    return exec_retry(s, "BEGIN IMMEDIATE", "cannot start a write transaction");
}

int actl__db_commit(actl_store *s)
{
    int r = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    if (r == SQLITE_OK)
        return ACTL_OK;
    int rc = actl__db_err(s, r, "cannot commit");
    actl__db_rollback(s);
    return rc;
}

void actl__db_rollback(actl_store *s)
{
    if (s->db && !sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static int user_version(actl_store *s, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s, "PRAGMA user_version", &st);
    if (rc)
        return rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        *out = sqlite3_column_int(st, 0);
    else
        rc = actl__db_err(s, r, "cannot read the schema version");
    sqlite3_finalize(st);
    return rc;
}

/* ---- open and migrate ------------------------------------------------- */

static int too_new(const actl_store *s, int v, int newest)
{
    return actl__err(ACTL_EUNSUPPORTED,
                     "'%s' has schema version %d, newer than this adapterctl (%d)", s->db_path,
                     v, newest);
}

static int int_cb(void *arg, int n, char **vals, char **names)
{
    (void)names;
    if (n >= 1 && vals[0])
        *(int *)arg = atoi(vals[0]);
    return 0;
}

/* Rows PRAGMA foreign_key_check reports: references to missing rows. */
static int fk_violations(actl_store *s, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s, "PRAGMA foreign_key_check", &st);
    if (rc)
        return rc;
    int64_t n = 0;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW)
        n++;
    if (r != SQLITE_DONE)
        rc = actl__db_err(s, r, "cannot check foreign keys");
    sqlite3_finalize(st);
    *out = n;
    return rc;
}

static int fk_enabled(actl_store *s, int *on)
{
    *on = 0;
    return exec_retry_cb(s, "PRAGMA foreign_keys", "cannot read the foreign keys setting",
                         int_cb, on);
}

int actl__store_migrate(actl_store *s, const actl__migration *list, size_t n)
{
    int rc, v = 0, fk_was = 0;
    bool in_tx = false, fk_off = false;
    int64_t fk_before = 0, fk_after = 0;
    int newest = n ? list[n - 1].number : 0;
    for (size_t i = 0; i < n; i++)
        if (list[i].number != (int)i + 1)
            return actl__err(ACTL_EFORMAT, "schema migration '%s' is number %d, expected %zu",
                             list[i].name, list[i].number, i + 1);
    if ((rc = user_version(s, &v)))
        goto out;
    /* Checked before and again inside the transaction: another process may
     * have migrated in between. */
    for (int pass = 0; pass < 2; pass++) {
        if (v > newest) {
            rc = too_new(s, v, newest);
            goto out;
        }
        if (v == newest)
            goto out;
        if (pass == 0) {
            /* SQLite's procedure for table rebuilds (schema/0004): foreign
             * keys off around the transaction (the pragma does nothing inside
             * one), else dropping a parent table cascades into its children;
             * then a check that the migrations broke no reference. */
            if ((rc = fk_enabled(s, &fk_was)))
                goto out;
            if (fk_was) {
                if ((rc = actl__db_exec(s, "PRAGMA foreign_keys = OFF",
                                        "cannot configure the catalogue")))
                    goto out;
                fk_off = true;
            }
            if ((rc = actl__db_begin(s)))
                goto out;
            in_tx = true;
            if ((rc = user_version(s, &v)))
                goto out;
        }
    }
    /* Violations already there (verify reports them) do not stop a migration;
     * new ones do. */
    if ((rc = fk_violations(s, &fk_before)))
        goto out;
    for (size_t i = (size_t)v; i < n; i++) {
        int r = sqlite3_exec(s->db, list[i].sql, NULL, NULL, NULL);
        if (r != SQLITE_OK) {
            char what[256];
            snprintf(what, sizeof what, "cannot apply schema migration '%s'", list[i].name);
            rc = actl__db_err(s, r, what);
            goto out;
        }
    }
    if ((rc = fk_violations(s, &fk_after)))
        goto out;
    if (fk_after > fk_before) {
        rc = actl__err(ACTL_EINVAL,
                       "'%s': schema migrations up to '%s' would leave %lld rows naming missing "
                       "rows (PRAGMA foreign_key_check)",
                       s->db_path, list[n - 1].name, (long long)(fk_after - fk_before));
        goto out;
    }
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", newest);
    if ((rc = actl__db_exec(s, pragma, "cannot set the schema version")))
        goto out;
    rc = actl__db_commit(s);
    in_tx = false;
    v = newest;
out:
    if (in_tx)
        actl__db_rollback(s);
    if (fk_off) {
        int frc = actl__db_exec(s, "PRAGMA foreign_keys = ON", "cannot configure the catalogue");
        if (!rc)
            rc = frc;
    }
    if (!rc)
        s->schema_version = v;
    return rc;
}

/* Settings every connection gets before it reads anything: a crafted
 * catalogue cannot make SQL in its schema (views, triggers, defaults) call
 * functions with side effects, nor can SQL corrupt the file on purpose. */
static int harden(actl_store *s)
{
    int on = 0;
    int r = sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, &on);
    if (r != SQLITE_OK || !on)
        return actl__db_err(s, r != SQLITE_OK ? r : SQLITE_ERROR,
                            "cannot configure the catalogue");
    return actl__db_exec(s, "PRAGMA trusted_schema = OFF", "cannot configure the catalogue");
}

/* The schema version of an existing catalogue, read through a read-only
 * connection: a store this adapterctl must refuse is refused before anything
 * in it changes (its journal mode, its directories). */
static int probe_version(actl_store *s, int *v)
{
    *v = 0;
    int r = sqlite3_open_v2(s->db_path, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    int rc = r == SQLITE_OK ? ACTL_OK : actl__db_err(s, r, "cannot open the catalogue");
    if (!rc) {
        sqlite3_extended_result_codes(s->db, 1);
        sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
        if (!(rc = harden(s)))
            rc = exec_retry_cb(s, "PRAGMA user_version", "cannot read the schema version",
                               int_cb, v);
    }
    sqlite3_close_v2(s->db);
    s->db = NULL;
    return rc;
}

int actl_store_open(const char *dir, int flags, actl_store **out)
{
    int rc = ACTL_OK;
    actl_store *s = NULL;
    char *tmp = NULL;
    bool create = (flags & ACTL_STORE_CREATE) != 0;
    if (!out)
        return actl__err(ACTL_EINVAL, "store open: NULL argument");
    *out = NULL;
    if (flags & ~ACTL_STORE_CREATE)
        return actl__err(ACTL_EINVAL, "store open: unknown flags 0x%x", (unsigned)flags);
    if (!(s = calloc(1, sizeof *s)))
        return actl__oom();
    if (dir) {
        if (!*dir) {
            rc = actl__err(ACTL_EINVAL, "store directory is empty");
            goto out;
        }
        s->dir = strdup(dir);
    } else if ((rc = actl_store_default_path(&s->dir))) {
        goto out;
    }
    if (!s->dir || !(s->db_path = actl__path_join(s->dir, "catalog.db")) ||
        !(s->objects = actl__path_join(s->dir, "objects")) ||
        !(s->lock_path = actl__path_join(s->dir, "gc.lock")) ||
        !(tmp = actl__path_join(s->objects, "tmp"))) {
        rc = actl__oom();
        goto out;
    }
    if (!create && !actl__is_dir(s->dir)) {
        rc = actl__err(ACTL_ENOTFOUND, "no store at '%s'", s->dir);
        goto out;
    }
    if (!create && !actl__exists(s->db_path)) {
        rc = actl__err(ACTL_ENOTFOUND, "no store at '%s': it has no catalog.db", s->dir);
        goto out;
    }
    int newest = actl__migration_count ? actl__migrations[actl__migration_count - 1].number : 0;
    int v = 0;
    if (actl__exists(s->db_path)) {
        if ((rc = probe_version(s, &v)))
            goto out;
        if (v > newest) {
            rc = too_new(s, v, newest);
            goto out;
        }
    }
    if (create && ((rc = mkdir_p(s->dir)) || (rc = mkdir_p(s->objects)) || (rc = mkdir_p(tmp))))
        goto out;
    int oflags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    int r = sqlite3_open_v2(s->db_path, &s->db, oflags, NULL);
    if (r != SQLITE_OK) {
        rc = actl__db_err(s, r, "cannot open the catalogue");
        goto out;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    if ((rc = harden(s)))
        goto out;
    /* WAL: readers never wait for the writer. synchronous=FULL: a commit is on
     * disk when it returns, so a row never outlives a crash that its pack's
     * rename survived the other way round. */
    if ((rc = exec_retry(s, "PRAGMA journal_mode = WAL", "cannot configure the catalogue")) ||
        (rc = actl__db_exec(s, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON",
                            "cannot configure the catalogue")))
        goto out;
    if ((rc = actl__store_migrate(s, actl__migrations, actl__migration_count)))
        goto out;
    *out = s;
    s = NULL;
out:
    free(tmp);
    actl_store_close(s);
    return rc;
}

void actl_store_close(actl_store *s)
{
    if (!s)
        return;
    if (s->db)
        sqlite3_close_v2(s->db);
    free(s->dir);
    free(s->db_path);
    free(s->objects);
    free(s->lock_path);
    free(s);
}

const char *actl_store_path(const actl_store *s) { return s ? s->dir : NULL; }

int actl_store_schema_version(const actl_store *s) { return s ? s->schema_version : 0; }

/* ---- entry lists ------------------------------------------------------ */

struct actl_entries {
    actl_entry *v;
    int64_t *ids; /* adapters.id of each entry, for loading tags */
    size_t n, cap;
    void **owned; /* every string and tag array the entries point to */
    size_t n_owned, cap_owned;
};

int actl__entries_new(actl_entries **out)
{
    actl_entries *l = calloc(1, sizeof *l);
    if (!l)
        return actl__oom();
    *out = l;
    return ACTL_OK;
}

size_t actl_entries_count(const actl_entries *l) { return l ? l->n : 0; }

const actl_entry *actl_entries_get(const actl_entries *l, size_t i)
{
    return l && i < l->n ? &l->v[i] : NULL;
}

void actl_entries_free(actl_entries *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n_owned; i++)
        free(l->owned[i]);
    free(l->owned);
    free(l->v);
    free(l->ids);
    free(l);
}

static int keep(actl_entries *l, void *p)
{
    if (!p)
        return actl__oom();
    if (l->n_owned == l->cap_owned) {
        size_t cap = l->cap_owned ? 2 * l->cap_owned : 64;
        void **o = realloc(l->owned, cap * sizeof *o);
        if (!o) {
            free(p);
            return actl__oom();
        }
        l->owned = o;
        l->cap_owned = cap;
    }
    l->owned[l->n_owned++] = p;
    return ACTL_OK;
}

/* A copy of column c owned by l, or NULL for SQL NULL. */
static int keep_col(actl_entries *l, sqlite3_stmt *st, int c, const char **out)
{
    const unsigned char *t = sqlite3_column_text(st, c);
    *out = NULL;
    if (!t)
        return sqlite3_column_type(st, c) == SQLITE_NULL ? ACTL_OK : actl__oom();
    char *copy = strdup((const char *)t);
    int rc = keep(l, copy);
    if (!rc)
        *out = copy;
    return rc;
}

static int load_tags(actl_store *s, actl_entries *l, size_t from)
{
    sqlite3_stmt *st = NULL;
    char **keys = NULL, **vals = NULL;
    int rc = actl__db_prepare(s, "SELECT key, value FROM tags WHERE adapter_id = ? ORDER BY key",
                              &st);
    for (size_t i = from; !rc && i < l->n; i++) {
        size_t n = 0, cap = 0;
        keys = vals = NULL;
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, l->ids[i]);
        int r;
        while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
            if (n == cap) {
                cap = cap ? 2 * cap : 4;
                char **k2 = realloc(keys, cap * sizeof *k2);
                if (k2)
                    keys = k2;
                char **v2 = realloc(vals, cap * sizeof *v2);
                if (v2)
                    vals = v2;
                if (!k2 || !v2) {
                    rc = actl__oom();
                    break;
                }
            }
            const char *k, *v;
            if ((rc = keep_col(l, st, 0, &k)) || (rc = keep_col(l, st, 1, &v)))
                break;
            keys[n] = (char *)k;
            vals[n] = (char *)v;
            n++;
        }
        if (!rc && r != SQLITE_DONE)
            rc = actl__db_err(s, r, "cannot read tags");
        /* The arrays go to l even on failure, so they are freed with it. */
        if (keys && keep(l, keys) && !rc)
            rc = ACTL_ENOMEM;
        if (vals && keep(l, vals) && !rc)
            rc = ACTL_ENOMEM;
        if (!rc) {
            l->v[i].tag_count = n;
            l->v[i].tag_keys = (const char *const *)keys;
            l->v[i].tag_values = (const char *const *)vals;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

int actl__entries_append(actl_store *s, actl_entries *l, sqlite3_stmt *st)
{
    int rc = ACTL_OK, r;
    size_t from = l->n;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (l->n == l->cap) {
            size_t cap = l->cap ? 2 * l->cap : 16;
            actl_entry *v = realloc(l->v, cap * sizeof *v);
            if (v)
                l->v = v;
            int64_t *ids = realloc(l->ids, cap * sizeof *ids);
            if (ids)
                l->ids = ids;
            if (!v || !ids)
                return actl__oom();
            l->cap = cap;
        }
        actl_entry *e = &l->v[l->n];
        memset(e, 0, sizeof *e);
        l->ids[l->n] = sqlite3_column_int64(st, 0);
        /* An unknown kind (a crafted or newer catalogue) reads as 0, which
         * actl_kind_name answers with NULL; verify reports it. */
        const char *kind = (const char *)sqlite3_column_text(st, 3);
        actl_kind k = (actl_kind)0;
        if (!kind || actl_kind_parse(kind, &k) != ACTL_OK)
            actl__err_clear();
        e->kind = k;
        e->version = sqlite3_column_int64(st, 2);
        e->rank = sqlite3_column_int(st, 5);
        e->group_size = sqlite3_column_int(st, 7);
        e->raw_bytes = (uint64_t)sqlite3_column_int64(st, 10);
        e->stored_bytes = (uint64_t)sqlite3_column_int64(st, 11);
        e->created = sqlite3_column_int64(st, 15);
        if ((rc = keep_col(l, st, 1, &e->name)) || (rc = keep_col(l, st, 4, &e->base_model)) ||
            (rc = keep_col(l, st, 6, &e->variant)) ||
            (rc = keep_col(l, st, 8, &e->target_modules)) ||
            (rc = keep_col(l, st, 9, &e->config)) || (rc = keep_col(l, st, 12, &e->pack)) ||
            (rc = keep_col(l, st, 13, &e->source)) ||
            (rc = keep_col(l, st, 14, &e->description)) ||
            (rc = keep_col(l, st, 16, &e->lineage)))
            return rc;
        l->n++;
    }
    if (r != SQLITE_DONE)
        return actl__db_err(s, r, "cannot read adapters");
    return load_tags(s, l, from);
}

/* ---- list and show ---------------------------------------------------- */

/* A filter that can drive the list query through an index. */
enum { DRIVE_SCAN = 0, DRIVE_TAG, DRIVE_KIND, DRIVE_BASE };

/* min(rows matching sql's bound filter, cap + 1), read through an index. */
static int count_capped(actl_store *s, const char *sql, const char *a, const char *b, int64_t cap,
                        int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s, sql, &st);
    if (rc)
        return rc;
    int i = 1;
    sqlite3_bind_text(st, i++, a, -1, SQLITE_STATIC);
    if (b)
        sqlite3_bind_text(st, i++, b, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, i, cap + 1);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        rc = actl__db_err(s, r, "cannot count adapters");
    sqlite3_finalize(st);
    return rc;
}

/* Chooses how the list query reads the adapters, which SQLite's planner
 * cannot (it knows no per-value counts): either walk adapters(name, version)
 * in output order, testing every filter, and stop after limit + offset rows,
 * reading about (limit + offset) * N / m rows when m of the N rows match; or
 * start from the rarest filter's index entries (m rows), then sort them,
 * which costs about 4 times as much per row (measured: a rowid lookup, the
 * newest check and a sorter insert). The second wins when 4 m < L N / m, i.e.
 * m < sqrt(L N / 4); without a limit, when 4 m < N. Each filter's m is
 * counted through its index, up to that threshold only. */
static int list_plan(actl_store *s, const actl_query *q, const char *keys, const char **vals,
                     size_t n_tags, int *drive, size_t *drive_tag)
{
    sqlite3_stmt *st = NULL;
    int64_t n = 0, best = INT64_MAX, m;
    *drive = DRIVE_SCAN;
    *drive_tag = 0;
    if (q->name) /* the name index finds a name's few rows directly */
        return ACTL_OK;
    int rc = actl__db_prepare(s, "SELECT coalesce(max(id), 0) FROM adapters", &st);
    if (rc)
        return rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0); /* rows, give or take deleted ones */
    else
        rc = actl__db_err(s, r, "cannot count adapters");
    sqlite3_finalize(st);
    if (rc)
        return rc;
    double l = q->limit ? (double)q->limit + (double)q->offset : 0;
    double t = l > 0 ? sqrt(l * (double)n / 4) : (double)n / 4;
    int64_t cap = t < 1 ? 1 : t > 1e15 ? (int64_t)1e15 : (int64_t)t;
    for (size_t i = 0; i < n_tags; i++) {
        if ((rc = count_capped(s,
                               "SELECT count(*) FROM (SELECT 1 FROM tags WHERE key = ? AND "
                               "value = ? LIMIT ?)",
                               keys + 65 * i, vals[i], cap, &m)))
            return rc;
        if (m < best)
            best = m, *drive = DRIVE_TAG, *drive_tag = i;
    }
    if (q->kind) {
        if ((rc = count_capped(s, "SELECT count(*) FROM (SELECT 1 FROM adapters WHERE kind = ? "
                                  "LIMIT ?)",
                               actl_kind_name((actl_kind)q->kind), NULL, cap, &m)))
            return rc;
        if (m < best)
            best = m, *drive = DRIVE_KIND;
    }
    if (q->base_model) {
        if ((rc = count_capped(s, "SELECT count(*) FROM (SELECT 1 FROM adapters WHERE "
                                  "base_model = ? LIMIT ?)",
                               q->base_model, NULL, cap, &m)))
            return rc;
        if (m < best)
            best = m, *drive = DRIVE_BASE;
    }
    if (best > cap)
        *drive = DRIVE_SCAN;
    return ACTL_OK;
}

/* The WHERE terms of the list query. Parameters are numbered: tag i is
 * ?(2i+1), ?(2i+2); then kind, base, name in that order. A term written
 * "+a.kind" cannot use an index, which is how the chosen plan is imposed. */
static void list_where(FILE *f, const actl_query *q, size_t n_tags, int drive, size_t drive_tag)
{
    int p = (int)(2 * n_tags) + 1;
    fputs(" WHERE 1", f);
    for (size_t i = 0; i < n_tags; i++) {
        if (drive == DRIVE_TAG && i == drive_tag)
            fprintf(f, " AND a.id IN (SELECT adapter_id FROM tags WHERE key = ?%zu AND "
                       "value = ?%zu)", 2 * i + 1, 2 * i + 2);
        else
            fprintf(f, " AND EXISTS (SELECT 1 FROM tags t WHERE t.adapter_id = a.id AND "
                       "t.key = ?%zu AND t.value = ?%zu)", 2 * i + 1, 2 * i + 2);
    }
    if (q->kind)
        fprintf(f, " AND %sa.kind = ?%d", drive == DRIVE_KIND ? "" : "+", p++);
    if (q->base_model)
        fprintf(f, " AND %sa.base_model = ?%d", drive == DRIVE_BASE ? "" : "+", p++);
    if (q->name)
        fprintf(f, " AND a.name = ?%d", p++);
    /* Newest per name: no later version of the same name, found through the
     * (name, version) index; filters therefore apply to each name's newest. */
    if (!q->all_versions)
        fputs(" AND NOT EXISTS (SELECT 1 FROM adapters b WHERE b.name = a.name "
              "AND b.version > a.version)",
              f);
}

int actl_store_list(actl_store *s, const actl_query *q, actl_entries **out)
{
    int rc = ACTL_OK, drive = DRIVE_SCAN;
    char *keys = NULL, *sql = NULL;
    const char **vals = NULL;
    size_t n_tags = 0, sql_len = 0, drive_tag = 0;
    sqlite3_stmt *st = NULL;
    actl_entries *l = NULL;
    FILE *f = NULL;
    bool in_tx = false;
    if (!out)
        return actl__err(ACTL_EINVAL, "store list: NULL argument");
    *out = NULL;
    if (!s || !q)
        return actl__err(ACTL_EINVAL, "store list: NULL argument");
    if (q->kind && !actl_kind_name((actl_kind)q->kind))
        return actl__err(ACTL_EINVAL, "unknown adapter kind %d", q->kind);
    if (q->limit < 0 || q->offset < 0)
        return actl__err(ACTL_EINVAL, "limit and offset must not be negative");
    if (q->name && (rc = actl_name_check(q->name)))
        return rc;
    if (q->base_model && (rc = actl__text_check("base model", q->base_model, 1024, false)))
        return rc;
    if ((rc = actl__tags_parse(q->tags, &keys, &vals, &n_tags)))
        return rc;

    /* One read transaction: the plan's counts, the rows and their tags come
     * from one snapshot. */
    if ((rc = actl__db_exec(s, "BEGIN", "cannot start a read transaction")))
        goto out;
    in_tx = true;
    if ((rc = list_plan(s, q, keys, vals, n_tags, &drive, &drive_tag)))
        goto out;
    bool limited = q->limit || q->offset;
    int p_limit = (int)(2 * n_tags) + 1 + (q->kind != 0) + (q->base_model != NULL) +
                  (q->name != NULL);
    if (!(f = open_memstream(&sql, &sql_len))) {
        rc = actl__oom();
        goto out;
    }
    if (drive != DRIVE_SCAN && limited) {
        /* Sort and cut the narrow (id, name, version) rows first, then read
         * the wide rows of the page only. */
        fputs("SELECT " ACTL__ENTRY_COLS " FROM adapters a WHERE a.id IN "
              "(SELECT a.id FROM adapters a", f);
        list_where(f, q, n_tags, drive, drive_tag);
        fprintf(f, " ORDER BY a.name, a.version LIMIT ?%d OFFSET ?%d) "
                   "ORDER BY a.name, a.version", p_limit, p_limit + 1);
    } else {
        fputs("SELECT " ACTL__ENTRY_COLS " FROM adapters a", f);
        list_where(f, q, n_tags, drive, drive_tag);
        fputs(" ORDER BY a.name, a.version", f);
        if (limited)
            fprintf(f, " LIMIT ?%d OFFSET ?%d", p_limit, p_limit + 1);
    }
    int ferr = fclose(f);
    f = NULL;
    if (ferr != 0) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__db_prepare(s, sql, &st)))
        goto out;
    int b = 1;
    for (size_t i = 0; i < n_tags; i++) {
        sqlite3_bind_text(st, b++, keys + 65 * i, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, b++, vals[i], -1, SQLITE_STATIC);
    }
    if (q->kind)
        sqlite3_bind_text(st, b++, actl_kind_name((actl_kind)q->kind), -1, SQLITE_STATIC);
    if (q->base_model)
        sqlite3_bind_text(st, b++, q->base_model, -1, SQLITE_STATIC);
    if (q->name)
        sqlite3_bind_text(st, b++, q->name, -1, SQLITE_STATIC);
    if (limited) {
        sqlite3_bind_int64(st, b++, q->limit ? q->limit : -1);
        sqlite3_bind_int64(st, b++, q->offset);
    }
    if ((rc = actl__entries_new(&l)) || (rc = actl__entries_append(s, l, st)))
        goto out;
    *out = l;
    l = NULL;
out:
    if (f)
        fclose(f);
    if (in_tx)
        actl__db_rollback(s);
    sqlite3_finalize(st);
    actl_entries_free(l);
    free(sql);
    free(keys);
    free(vals);
    return rc;
}

int actl_store_show(actl_store *s, const char *ref, actl_entries **out)
{
    char name[REF_CAP];
    int64_t version;
    sqlite3_stmt *st = NULL;
    actl_entries *l = NULL;
    if (!out)
        return actl__err(ACTL_EINVAL, "store show: NULL argument");
    *out = NULL;
    if (!s)
        return actl__err(ACTL_EINVAL, "store show: NULL argument");
    int rc = actl_ref_parse(ref, name, sizeof name, &version);
    if (rc)
        return rc;
    if ((rc = actl__db_prepare(s,
                               version ? "SELECT " ACTL__ENTRY_COLS " FROM adapters a "
                                         "WHERE a.name = ?1 AND a.version = ?2"
                                       : "SELECT " ACTL__ENTRY_COLS " FROM adapters a "
                                         "WHERE a.name = ?1 ORDER BY a.version DESC LIMIT 1",
                               &st)))
        goto out;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (version)
        sqlite3_bind_int64(st, 2, version);
    if ((rc = actl__db_exec(s, "BEGIN", "cannot start a read transaction")))
        goto out;
    if (!(rc = actl__entries_new(&l)))
        rc = actl__entries_append(s, l, st);
    actl__db_rollback(s);
    if (rc)
        goto out;
    if (actl_entries_count(l) == 0) {
        rc = actl__err(ACTL_ENOTFOUND, "no adapter '%s'", ref);
        goto out;
    }
    *out = l;
    l = NULL;
out:
    sqlite3_finalize(st);
    actl_entries_free(l);
    return rc;
}

/* ---- stats ------------------------------------------------------------ */

/* Packs count once each, whether adapters, stack members or both use them. */

int actl_store_stats_get(actl_store *s, actl_store_stats *out)
{
    sqlite3_stmt *st = NULL;
    if (!s || !out)
        return actl__err(ACTL_EINVAL, "store stats: NULL argument");
    memset(out, 0, sizeof *out);
    int rc = actl__db_prepare(
        s,
        "SELECT (SELECT count(DISTINCT name) FROM adapters), (SELECT count(*) FROM adapters), "
        "count(*), coalesce(sum(raw_bytes), 0), coalesce(sum(stored_bytes), 0) FROM packs p "
        "WHERE EXISTS (SELECT 1 FROM adapters a WHERE a.pack = p.digest) "
        "OR EXISTS (SELECT 1 FROM stack_members m WHERE m.pack = p.digest)",
        &st);
    if (rc)
        return rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        out->adapters = sqlite3_column_int64(st, 0);
        out->versions = sqlite3_column_int64(st, 1);
        out->packs = sqlite3_column_int64(st, 2);
        out->raw_bytes = (uint64_t)sqlite3_column_int64(st, 3);
        out->stored_bytes = (uint64_t)sqlite3_column_int64(st, 4);
    } else {
        rc = actl__db_err(s, r, "cannot compute statistics");
    }
    sqlite3_finalize(st);
    return rc;
}
