/* test_store.c: the store: opening, layout and migrations, the default location,
 * name/ref/tag validation, add/show/list/tag/rm, gc (and its lock with adds),
 * verify, export of every fixture, and stats against independent counts. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <sqlite3.h>

#include "internal.h"

#define ADAPTERS FIXTURES "/adapters"

static const char *const fixture_names[] = TEST_FIXTURE_NAMES;
#define N_FIXTURES (sizeof fixture_names / sizeof fixture_names[0])

/* ---- helpers ---------------------------------------------------------------- */

typedef test_fx fx;

/* A small LoRA adapter whose values depend on seed (distinct seeds, distinct packs). */
static actl_adapter *tiny_lora(unsigned seed, int rank)
{
    float a[4 * 16], b[16 * 4];
    for (int i = 0; i < 64; i++) {
        a[i] = (float)((seed * 131u + (unsigned)i * 7u) % 97u) / 97.0f;
        b[i] = (float)((seed * 17u + (unsigned)i * 3u) % 89u) / 89.0f - 0.5f;
    }
    int64_t sa[2] = {rank, 16}, sb[2] = {16, rank};
    actl_tensor *ta = NULL, *tb = NULL;
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                              ACTL_F32, 2, sa, a, &ta));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                              ACTL_F32, 2, sb, b, &tb));
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": 8, \"target_modules\": "
             "[\"q_proj\"], \"base_model_name_or_path\": \"tiny/base\"}",
             rank);
    const actl_tensor *ts[2] = {ta, tb};
    actl_adapter *ad = NULL;
    assert_ok(actl_adapter_new(cfg, ts, 2, "tiny", &ad));
    actl_tensor_free(ta);
    actl_tensor_free(tb);
    return ad;
}

/* Adds a under name with the given NULL-terminated tags; returns the version. */
static int64_t add_tagged(actl_store *s, const actl_adapter *a, const char *name,
                          const char *const *tags)
{
    actl_add_opts o = actl_add_default_opts();
    o.name = name;
    o.tags = tags;
    actl_entries *l = NULL;
    assert_ok(actl_store_add(s, a, &o, &l));
    assert_int_equal(actl_entries_count(l), 1);
    int64_t v = actl_entries_get(l, 0)->version;
    actl_entries_free(l);
    return v;
}

static int64_t add_plain(actl_store *s, const actl_adapter *a, const char *name)
{
    return add_tagged(s, a, name, NULL);
}


static char *objects_of(const fx *f) { return actl__path_join(f->store, "objects"); }

static char *pack_file(const fx *f, const char *hex)
{
    char *o = objects_of(f);
    char *p = actl__pack_path(o, hex);
    free(o);
    return p;
}

/* Runs one SQL statement on the store's catalogue behind the library's back. */
static void sql_exec(const fx *f, const char *sql)
{
    char *path = actl__path_join(f->store, "catalog.db");
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
    free(path);
}

/* The first column of the first row of a query, as an integer. */
static int64_t sql_int(const fx *f, const char *sql)
{
    char *path = actl__path_join(f->store, "catalog.db");
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
    return v;
}

/* verify's problems, collected. */
typedef struct problems {
    char msgs[32][1024];
    size_t n;
} problems;

static void collect(const char *m, void *ctx)
{
    problems *p = ctx;
    if (p->n < 32)
        snprintf(p->msgs[p->n], sizeof p->msgs[0], "%s", m);
    p->n++;
}

static bool any_problem_has(const problems *p, const char *a, const char *b)
{
    for (size_t i = 0; i < p->n && i < 32; i++)
        if (strstr(p->msgs[i], a) && (!b || strstr(p->msgs[i], b)))
            return true;
    return false;
}

static void dump_problems(const problems *p)
{
    for (size_t i = 0; i < p->n && i < 32; i++)
        print_message("  problem: %s\n", p->msgs[i]);
}

static void assert_verify_clean(actl_store *s)
{
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 99;
    assert_ok(actl_store_verify(s, collect, &p, &n));
    if (n != 0)
        dump_problems(&p);
    assert_int_equal(n, 0);
    assert_int_equal(p.n, 0);
}

static off_t file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

/* SHA-256 of a whole file, computed here (not by pack.c). */
static void file_sha256(const char *path, char hex[65])
{
    char *data = NULL;
    size_t len = 0;
    assert_ok(actl__read_file(path, (size_t)1 << 30, &data, &len));
    assert_ok(actl__sha256_hex(data, len, hex));
    free(data);
}

/* ---- open, layout, migrations -------------------------------------------------- */

static void test_open__creates_the_layout_and_reopens(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *store = actl__path_join(dir, "a/b/store"); /* parents created too */
    mode_t old = umask(022);
    actl_store *s = NULL;
    assert_ok(actl_store_open(store, ACTL_STORE_CREATE, &s));
    umask(old);
    assert_string_equal(actl_store_path(s), store);
    assert_int_equal(actl_store_schema_version(s), (int)actl__migration_count);
    static const char *const subs[] = {"", "/objects", "/objects/tmp"};
    for (size_t i = 0; i < 3; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s%s", store, subs[i]);
        struct stat sb;
        assert_int_equal(stat(p, &sb), 0);
        assert_true(S_ISDIR(sb.st_mode));
        assert_int_equal(sb.st_mode & 0777, 0755);
    }
    char *db = actl__path_join(store, "catalog.db");
    assert_true(actl__exists(db));
    actl_store_close(s);

    /* WAL, and the schema version, as SQLite itself reads them. */
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), (int)actl__migration_count);
    sqlite3_finalize(st);
    sqlite3_close(h);

    /* Reopening, with or without CREATE, keeps what is there. */
    assert_ok(actl_store_open(store, 0, &s));
    assert_int_equal(actl_store_schema_version(s), (int)actl__migration_count);
    actl_store_close(s);
    assert_ok(actl_store_open(store, ACTL_STORE_CREATE, &s));
    actl_store_close(s);
    actl_store_close(NULL);
    free(db);
    free(store);
    test_rmtree(dir);
    free(dir);
}

static void test_open__absent_store_without_create_is_ENOTFOUND(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *store = actl__path_join(dir, "nope");
    actl_store *s = (actl_store *)1;
    assert_err(actl_store_open(store, 0, &s), ACTL_ENOTFOUND, "no store at");
    assert_null(s);
    assert_false(actl__exists(store));
    /* A directory without catalog.db is not a store either. */
    assert_err(actl_store_open(dir, 0, &s), ACTL_ENOTFOUND, "no catalog.db");
    assert_err(actl_store_open("", ACTL_STORE_CREATE, &s), ACTL_EINVAL, "empty");
    assert_err(actl_store_open(dir, 0x10, &s), ACTL_EINVAL, "unknown flags");
    free(store);
    test_rmtree(dir);
    free(dir);
}

static void test_open__a_file_in_the_way_is_EIO(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *file = actl__path_join(dir, "file");
    FILE *f = fopen(file, "w");
    fclose(f);
    char *store = actl__path_join(file, "store");
    actl_store *s = NULL;
    assert_err(actl_store_open(store, ACTL_STORE_CREATE, &s), ACTL_EIO, "cannot create directory");
    free(store);
    free(file);
    test_rmtree(dir);
    free(dir);
}

static void test_open__refuses_a_newer_schema(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_store_close(f.s);
    f.s = NULL;
    sql_exec(&f, "PRAGMA user_version = 99");
    char want[4300];
    snprintf(want, sizeof want, "'%s/catalog.db' has schema version 99, newer than this "
                                "adapterctl (%zu)", f.store, actl__migration_count);
    assert_err(actl_store_open(f.store, 0, &f.s), ACTL_EUNSUPPORTED, want);
    assert_null(f.s);
    assert_err(actl_store_open(f.store, ACTL_STORE_CREATE, &f.s), ACTL_EUNSUPPORTED, want);
    /* And it was left as it was. */
    assert_int_equal(sql_int(&f, "PRAGMA user_version"), 99);
    test_fx_free(&f);
}

/* Refused before any change: not switched to WAL, no directory made, no
 * lock file, no journal left behind. */
static void test_open__a_newer_schema_is_refused_before_any_change(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *db_path = actl__path_join(dir, "catalog.db");
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode = DELETE; CREATE TABLE future (x); "
                                      "PRAGMA user_version = 99",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    char *before = NULL, *after = NULL;
    size_t n_before = 0, n_after = 0;
    assert_ok(actl__read_file(db_path, 1 << 20, &before, &n_before));
    assert_int_equal(test_count_files(dir), 1);
    actl_store *s = NULL;
    assert_err(actl_store_open(dir, ACTL_STORE_CREATE, &s), ACTL_EUNSUPPORTED,
               "schema version 99, newer than this adapterctl");
    assert_err(actl_store_open(dir, 0, &s), ACTL_EUNSUPPORTED, "schema version 99");
    assert_null(s);
    assert_ok(actl__read_file(db_path, 1 << 20, &after, &n_after));
    assert_int_equal(n_after, n_before);
    assert_memory_equal(after, before, n_before);
    assert_int_equal(test_count_files(dir), 1); /* no -wal, -shm, gc.lock */
    char *obj = actl__path_join(dir, "objects");
    assert_false(actl__exists(obj));
    free(obj);
    free(before);
    free(after);
    free(db_path);
    test_rmtree(dir);
    free(dir);
}

/* Every connection is hardened against a crafted catalogue. */
static void test_open__connections_are_defensive_and_distrust_the_schema(void **state)
{
    (void)state;
    fx f = test_fx_new();
    int on = -1;
    assert_int_equal(sqlite3_db_config(f.s->db, SQLITE_DBCONFIG_DEFENSIVE, -1, &on), SQLITE_OK);
    assert_int_equal(on, 1);
    on = -1;
    assert_int_equal(sqlite3_db_config(f.s->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, -1, &on),
                     SQLITE_OK);
    assert_int_equal(on, 0);
    /* What defensive mode is for: SQL cannot rewrite the schema behind SQLite's back. */
    assert_int_equal(sqlite3_exec(f.s->db, "PRAGMA writable_schema = ON; UPDATE sqlite_master "
                                           "SET sql = 'x' WHERE name = 'tags'",
                                  NULL, NULL, NULL) == SQLITE_OK,
                     0);
    test_fx_free(&f);
}

static void test_open__not_a_database_is_EFORMAT(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *db = actl__path_join(dir, "catalog.db");
    FILE *f = fopen(db, "w");
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database. ", f);
    fclose(f);
    actl_store *s = NULL;
    assert_err(actl_store_open(dir, 0, &s), ACTL_EFORMAT, "catalog.db");
    assert_null(s);
    free(db);
    test_rmtree(dir);
    free(dir);
}

static void test_migrate__applies_pending_migrations_once_in_order(void **state)
{
    (void)state;
    fx f = test_fx_new();
    size_t n = actl__migration_count;
    actl__migration list[16];
    assert_true(n + 2 <= 16);
    memcpy(list, actl__migrations, n * sizeof list[0]);
    list[n] = (actl__migration){(int)n + 1, "extra_a", "CREATE TABLE extra_a (x);"};
    list[n + 1] = (actl__migration){(int)n + 2, "extra_b",
                                    "INSERT INTO extra_a VALUES (1); CREATE TABLE extra_b (y);"};
    assert_ok(actl__store_migrate(f.s, list, n + 2));
    assert_int_equal(actl_store_schema_version(f.s), (int)n + 2);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM extra_a"), 1);
    /* Again: nothing to do (a second run would fail on CREATE TABLE). */
    assert_ok(actl__store_migrate(f.s, list, n + 2));
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM extra_a"), 1);
    /* The embedded list is now older than the catalogue. */
    assert_err(actl__store_migrate(f.s, actl__migrations, n), ACTL_EUNSUPPORTED,
               "newer than this adapterctl");
    test_fx_free(&f);
}

static void test_migrate__a_failing_migration_changes_nothing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    size_t n = actl__migration_count;
    actl__migration list[16];
    memcpy(list, actl__migrations, n * sizeof list[0]);
    list[n] = (actl__migration){(int)n + 1, "good", "CREATE TABLE good (x);"};
    list[n + 1] = (actl__migration){(int)n + 2, "bad", "CREATE TABLE worse (y); SELEC oops;"};
    assert_err(actl__store_migrate(f.s, list, n + 2), ACTL_EIO, "'bad'");
    assert_int_equal(sql_int(&f, "PRAGMA user_version"), (int)n);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM sqlite_master WHERE name IN "
                                 "('good', 'worse')"),
                     0);
    test_fx_free(&f);
}

static void test_migrate__refuses_a_gap_in_the_numbers(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl__migration list[2] = {{1, "one", "SELECT 1;"}, {3, "three", "SELECT 1;"}};
    assert_err(actl__store_migrate(f.s, list, 2), ACTL_EFORMAT, "'three' is number 3");
    test_fx_free(&f);
}

static void test_migrate__embedded_list_matches_schema_dir(void **state)
{
    (void)state;
    /* Each schema/NNNN_*.sql is embedded under its number, with its text. */
    for (size_t i = 0; i < actl__migration_count; i++) {
        const actl__migration *m = &actl__migrations[i];
        assert_int_equal(m->number, (int)i + 1);
        char path[256];
        snprintf(path, sizeof path, "schema/%s.sql", m->name);
        char *text = NULL;
        size_t len = 0;
        assert_ok(actl__read_file(path, 1 << 20, &text, &len));
        assert_string_equal(m->sql, text);
        free(text);
    }
}

static void test_open__concurrent_first_opens_migrate_once(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *store = actl__path_join(dir, "store");
    enum { N = 8 };
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            actl_store *s = NULL;
            int rc = actl_store_open(store, ACTL_STORE_CREATE, &s);
            if (rc)
                fprintf(stderr, "child %d: %s\n", i, actl_errmsg());
            int ok = !rc && actl_store_schema_version(s) == (int)actl__migration_count;
            actl_store_close(s);
            _exit(ok ? 0 : 1);
        }
    }
    for (int i = 0; i < N; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    actl_store *s = NULL;
    assert_ok(actl_store_open(store, 0, &s));
    assert_verify_clean(s);
    actl_store_close(s);
    free(store);
    test_rmtree(dir);
    free(dir);
}

/* ---- default location ------------------------------------------------------------ */

static char *saved_env[3];
static const char *const env_names[3] = {"ADAPTERCTL_STORE", "XDG_DATA_HOME", "HOME"};

static void env_save(void)
{
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(env_names[i]);
        saved_env[i] = v ? strdup(v) : NULL;
    }
}

static void env_restore(void)
{
    for (int i = 0; i < 3; i++) {
        if (saved_env[i])
            setenv(env_names[i], saved_env[i], 1);
        else
            unsetenv(env_names[i]);
        free(saved_env[i]);
        saved_env[i] = NULL;
    }
}

static void expect_default(const char *want)
{
    char *p = NULL;
    assert_ok(actl_store_default_path(&p));
    assert_string_equal(p, want);
    free(p);
}

static void test_default_path__follows_the_variables_in_order(void **state)
{
    (void)state;
    env_save();
    setenv("ADAPTERCTL_STORE", "/s/store", 1);
    setenv("XDG_DATA_HOME", "/xdg", 1);
    setenv("HOME", "/home/u", 1);
    expect_default("/s/store");
    unsetenv("ADAPTERCTL_STORE");
    expect_default("/xdg/adapterctl");
    setenv("XDG_DATA_HOME", "/xdg/", 1);
    expect_default("/xdg/adapterctl");
    unsetenv("XDG_DATA_HOME");
    expect_default("/home/u/.local/share/adapterctl");
    /* Empty variables count as unset. */
    setenv("ADAPTERCTL_STORE", "", 1);
    setenv("XDG_DATA_HOME", "", 1);
    expect_default("/home/u/.local/share/adapterctl");
    setenv("HOME", "", 1);
    char *p = NULL;
    assert_err(actl_store_default_path(&p), ACTL_ENOTFOUND, "ADAPTERCTL_STORE");
    assert_null(p);
    unsetenv("HOME");
    assert_err(actl_store_default_path(&p), ACTL_ENOTFOUND, "HOME");
    env_restore();
}

static void test_default_path__open_null_uses_it(void **state)
{
    (void)state;
    env_save();
    char *dir = test_tmpdir();
    char *want = actl__path_join(dir, "adapterctl");
    unsetenv("ADAPTERCTL_STORE");
    setenv("XDG_DATA_HOME", dir, 1);
    actl_store *s = NULL;
    assert_ok(actl_store_open(NULL, ACTL_STORE_CREATE, &s));
    assert_string_equal(actl_store_path(s), want);
    actl_store_close(s);
    char *db = actl__path_join(want, "catalog.db");
    assert_true(actl__exists(db));
    env_restore();
    free(db);
    free(want);
    test_rmtree(dir);
    free(dir);
}

/* ---- names, refs, tags ------------------------------------------------------------- */

static void test_name_check__accepts_the_grammar(void **state)
{
    (void)state;
    char n128[129];
    memset(n128, 'a', 128);
    n128[128] = '\0';
    static const char *const ok[] = {"a", "Z", "7", "math-lora", "user_42.v2", "a..b", "x-"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_ok(actl_name_check(ok[i]));
    assert_ok(actl_name_check(n128));
}

static void test_name_check__rejects_hostile_names(void **state)
{
    (void)state;
    char n129[130];
    memset(n129, 'a', 129);
    n129[129] = '\0';
    assert_err(actl_name_check(""), ACTL_EINVAL, "adapter name is empty");
    assert_err(actl_name_check(NULL), ACTL_EINVAL, "missing");
    assert_err(actl_name_check("../x"), ACTL_EINVAL,
               "invalid adapter name '../x': must start with a letter or digit");
    assert_err(actl_name_check("a/b"), ACTL_EINVAL, "'a/b': character '/' is not allowed");
    assert_err(actl_name_check(n129), ACTL_EINVAL, "longer than 128 characters");
    assert_err(actl_name_check("-x"), ACTL_EINVAL, "'-x': must start with a letter or digit");
    assert_err(actl_name_check(".x"), ACTL_EINVAL, "must start with a letter or digit");
    assert_err(actl_name_check("x y"), ACTL_EINVAL, "'x y': character ' ' is not allowed");
    /* Non-printables are escaped when quoted. */
    assert_err(actl_name_check("x\n"), ACTL_EINVAL, "'x\\n': character '\\n' is not allowed");
    assert_err(actl_name_check("x\x1b[31m"), ACTL_EINVAL, "'x\\x1b[31m'");
    assert_err(actl_name_check("caf\xc3\xa9"), ACTL_EINVAL, "'caf\\xc3\\xa9'");
    assert_err(actl_name_check("a@1"), ACTL_EINVAL, "character '@'");
}

static void test_quote__cuts_long_input(void **state)
{
    (void)state;
    char big[5000], buf[ACTL__QUOTE_CAP];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    actl__quote(big, buf, sizeof buf);
    assert_int_equal(strlen(buf), 103);
    assert_string_equal(buf + 100, "...");
    char tiny[8];
    actl__quote("\x01\x02\x03", tiny, sizeof tiny);
    assert_true(strlen(tiny) < sizeof tiny);
}

static void test_ref_parse__name_and_version(void **state)
{
    (void)state;
    char name[129];
    int64_t v = -1;
    assert_ok(actl_ref_parse("math", name, sizeof name, &v));
    assert_string_equal(name, "math");
    assert_int_equal(v, 0);
    assert_ok(actl_ref_parse("math@3", name, sizeof name, &v));
    assert_string_equal(name, "math");
    assert_int_equal(v, 3);
    assert_ok(actl_ref_parse("m@9223372036854775807", name, sizeof name, &v));
    assert_true(v == INT64_MAX);
    assert_ok(actl_ref_parse("m@007", name, sizeof name, &v));
    assert_int_equal(v, 7);
}

static void test_ref_parse__rejects_bad_refs(void **state)
{
    (void)state;
    char name[129];
    int64_t v;
    assert_err(actl_ref_parse("m@0", name, sizeof name, &v), ACTL_EINVAL, "versions start at 1");
    assert_err(actl_ref_parse("m@", name, sizeof name, &v), ACTL_EINVAL, "no version after '@'");
    assert_err(actl_ref_parse("m@-1", name, sizeof name, &v), ACTL_EINVAL, "positive integer");
    assert_err(actl_ref_parse("m@+1", name, sizeof name, &v), ACTL_EINVAL, "positive integer");
    assert_err(actl_ref_parse("m@1a", name, sizeof name, &v), ACTL_EINVAL, "positive integer");
    assert_err(actl_ref_parse("m@ 1", name, sizeof name, &v), ACTL_EINVAL, "positive integer");
    assert_err(actl_ref_parse("m@1@2", name, sizeof name, &v), ACTL_EINVAL, "positive integer");
    assert_err(actl_ref_parse("m@9223372036854775808", name, sizeof name, &v), ACTL_EINVAL,
               "too large");
    assert_err(actl_ref_parse("@3", name, sizeof name, &v), ACTL_EINVAL, "name is empty");
    assert_err(actl_ref_parse("../x@1", name, sizeof name, &v), ACTL_EINVAL,
               "invalid adapter reference '../x@1'");
    assert_err(actl_ref_parse("x\n@1", name, sizeof name, &v), ACTL_EINVAL, "'x\\n@1'");
    assert_err(actl_ref_parse("longname", name, 4, &v), ACTL_ELIMIT, "too small");
}

static void test_tags__rejects_bad_tags(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char key65[80], val1025[1100];
    snprintf(key65, sizeof key65, "%.*s=v", 65,
             "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk");
    memcpy(val1025, "k=", 2);
    memset(val1025 + 2, 'v', 1025);
    val1025[1027] = '\0';
    struct {
        const char *tag, *msg;
    } bad[] = {
        {"task", "invalid tag 'task': expected KEY=VALUE"},
        {"=v", "tag key is empty"},
        {"task=", "invalid tag 'task=': the value is empty"},
        {"-k=v", "must start with a letter or digit"},
        {"a b=v", "character ' ' is not allowed"},
        {key65, "longer than 64 characters"},
        {val1025, "over the limit of 1024"},
        {"k=a\x01z", "contains a control character"},
        {"k=line\nbreak", "contains a control character"},
        {"k=\xff\xfe", "not valid UTF-8"},
        {"k=\xc0\xaf", "not valid UTF-8"}, /* overlong '/' */
        {"k=a\xc2\x9b" "2Jz", "contains a control character"}, /* C1 CSI */
        {"k=\xc2\x80", "contains a control character"},          /* C1, first */
        {"k=\xc2\x85", "contains a control character"},          /* C1 NEL */
    };
    actl_adapter *a = tiny_lora(1, 4);
    add_plain(f.s, a, "t");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *tags[2] = {bad[i].tag, NULL};
        actl_query q = actl_query_default();
        q.tags = tags;
        actl_entries *l = NULL;
        assert_err(actl_store_list(f.s, &q, &l), ACTL_EINVAL, bad[i].msg);
        assert_null(l);
        assert_err(actl_store_tag(f.s, "t", tags, NULL), ACTL_EINVAL, bad[i].msg);
        actl_add_opts o = actl_add_default_opts();
        o.name = "u";
        o.tags = tags;
        assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, bad[i].msg);
    }
    /* UTF-8 values are fine (U+00A0, just past C1, included); a key given
     * twice is not. */
    const char *good[] = {"lang=fran\xc3\xa7" "ais", "k.1_-=a=b", "nb=\xc2\xa0", NULL};
    assert_ok(actl_store_tag(f.s, "t", good, NULL));
    const char *twice[] = {"k=1", "k=2", NULL};
    assert_err(actl_store_tag(f.s, "t", twice, NULL), ACTL_EINVAL, "tag 'k' is given twice");
    const char *unset_bad[] = {"../k", NULL};
    assert_err(actl_store_tag(f.s, "t", NULL, unset_bad), ACTL_EINVAL, "invalid tag key");
    const char *both_set[] = {"k=1", NULL}, *both_unset[] = {"k", NULL};
    assert_err(actl_store_tag(f.s, "t", both_set, both_unset), ACTL_EINVAL,
               "'k' is both set and unset");
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "t", &l));
    const actl_entry *e = actl_entries_get(l, 0);
    assert_int_equal(e->tag_count, 3);
    assert_string_equal(e->tag_keys[0], "k.1_-");
    assert_string_equal(e->tag_values[0], "a=b");
    assert_string_equal(e->tag_keys[1], "lang");
    assert_string_equal(e->tag_values[1], "fran\xc3\xa7" "ais");
    actl_entries_free(l);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* ---- add and show ----------------------------------------------------------------- */

static void test_add__records_the_facts_of_every_fixture(void **state)
{
    (void)state;
    fx f = test_fx_new();
    for (size_t i = 0; i < N_FIXTURES; i++) {
        actl_adapter *a = test_load_fixture("base-tiny", fixture_names[i]);
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        actl_add_opts o = actl_add_default_opts();
        o.name = fixture_names[i];
        o.source = "fixtures/somewhere";
        o.description = "a fixture\nof two lines";
        time_t before = time(NULL);
        actl_entries *added = NULL, *shown = NULL;
        assert_ok(actl_store_add(f.s, a, &o, &added));
        assert_ok(actl_store_show(f.s, fixture_names[i], &shown));
        for (int k = 0; k < 2; k++) {
            const actl_entry *e = actl_entries_get(k ? shown : added, 0);
            assert_non_null(e);
            assert_string_equal(e->name, fixture_names[i]);
            assert_int_equal(e->version, 1);
            assert_int_equal(e->kind, info.kind);
            assert_string_equal(e->base_model, "adapterctl/base-tiny");
            assert_int_equal(e->rank, info.rank);
            if (info.kind == ACTL_KIND_ROAD) {
                assert_string_equal(e->variant, actl_road_variant_name(info.variant));
                assert_int_equal(e->group_size, info.group_size);
                assert_true(e->group_size > 0);
            } else {
                assert_null(e->variant);
                assert_int_equal(e->group_size, 0);
            }
            /* Target modules: the module names, as a JSON array built here. */
            json_t *want = json_array();
            for (size_t m = 0; m < actl_adapter_module_count(a); m++) {
                actl_module_info mi;
                assert_ok(actl_adapter_module(a, m, &mi));
                json_array_append_new(want, json_string(mi.name));
            }
            json_t *got = json_loads(e->target_modules, 0, NULL);
            assert_non_null(got);
            assert_true(json_equal(want, got));
            json_decref(want);
            json_decref(got);
            assert_string_equal(e->config, actl_adapter_config(a));
            assert_true(e->raw_bytes == info.bytes);
            assert_string_equal(e->source, "fixtures/somewhere");
            assert_string_equal(e->description, "a fixture\nof two lines");
            assert_true(e->created >= (int64_t)before && e->created <= (int64_t)time(NULL));
            assert_int_equal(e->tag_count, 0);
            /* The pack: where it should be, named by the SHA-256 of its bytes. */
            assert_int_equal(strlen(e->pack), 64);
            char *pf = pack_file(&f, e->pack);
            assert_true(e->stored_bytes == (uint64_t)file_size(pf));
            char hex[65];
            file_sha256(pf, hex);
            assert_string_equal(hex, e->pack);
            char fan[3] = {e->pack[0], e->pack[1], 0};
            assert_non_null(strstr(pf, fan));
            free(pf);
        }
        actl_entries_free(added);
        actl_entries_free(shown);
        actl_adapter_free(a);
    }
    /* The tensor index: one row per tensor of every pack. */
    size_t tensors = 0;
    for (size_t i = 0; i < N_FIXTURES; i++) {
        actl_adapter *a = test_load_fixture("base-tiny", fixture_names[i]);
        tensors += actl_adapter_tensor_count(a);
        actl_adapter_free(a);
    }
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM pack_tensors"), (int64_t)tensors);
    assert_verify_clean(f.s);
    test_fx_free(&f);
}

static void test_add__tensor_index_rows_match_the_tensors(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = test_load_fixture("base-tiny", "lora-bf16");
    add_plain(f.s, a, "x");
    char *path = actl__path_join(f.store, "catalog.db");
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT name, dtype, shape, raw_bytes, sha256 FROM "
                                        "pack_tensors ORDER BY name",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (size_t i = 0; i < actl_adapter_tensor_count(a); i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(st, 0), actl_tensor_name(t));
        assert_string_equal((const char *)sqlite3_column_text(st, 1),
                            actl_dtype_name(actl_tensor_dtype(t)));
        char shape[128] = "[";
        for (int d = 0; d < actl_tensor_ndim(t); d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld",
                     d ? "," : "", (long long)actl_tensor_shape(t)[d]);
        strcat(shape, "]");
        assert_string_equal((const char *)sqlite3_column_text(st, 2), shape);
        assert_int_equal(sqlite3_column_int64(st, 3), (int64_t)actl_tensor_nbytes(t));
        char hex[65];
        assert_ok(actl__sha256_hex(actl_tensor_data(t), actl_tensor_nbytes(t), hex));
        assert_string_equal((const char *)sqlite3_column_text(st, 4), hex);
    }
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
    actl_adapter_free(a);
    test_fx_free(&f);
}

static void test_add__refuses_c1_controls_in_free_text(void **state)
{
    (void)state;
    assert_err(actl__text_check("description", "ok\xc2\x9d", 100, true), ACTL_EINVAL,
               "description 'ok\\xc2\\x9d' contains a control character");
    assert_err(actl__text_check("source", "\xc2\x9f", 100, false), ACTL_EINVAL, "control");
    assert_ok(actl__text_check("description", "a\tb\nc \xc2\xa0 \xc3\xa9", 100, true));
}

/* Automatic versions never reuse one that was removed: NAME@V names one
 * adapter for good. Explicit versions are allowed whenever free. */
static void test_add__automatic_versions_are_never_reused_after_rm(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(3, 4), *b = tiny_lora(4, 4);
    assert_int_equal(add_plain(f.s, a, "a"), 1);
    assert_int_equal(add_plain(f.s, b, "a"), 2);
    assert_ok(actl_store_rm(f.s, "a@2"));
    assert_int_equal(add_plain(f.s, a, "a"), 3);
    /* every version removed, the name too */
    assert_ok(actl_store_rm(f.s, "a@3"));
    assert_ok(actl_store_rm(f.s, "a@1"));
    assert_int_equal(add_plain(f.s, b, "a"), 4);
    /* an explicit version that is free, removed or not, is taken as given */
    actl_add_opts o = actl_add_default_opts();
    o.name = "a";
    o.version = 2;
    assert_ok(actl_store_add(f.s, a, &o, NULL));
    assert_int_equal(add_plain(f.s, a, "a"), 5);
    o.version = 9;
    assert_ok(actl_store_add(f.s, a, &o, NULL));
    assert_ok(actl_store_rm(f.s, "a@9"));
    assert_int_equal(add_plain(f.s, a, "a"), 10);
    assert_int_equal(sql_int(&f, "SELECT last_version FROM names WHERE name = 'a'"), 10);
    assert_verify_clean(f.s);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_fx_free(&f);
}

/* A catalogue from before the names table: the migration takes each name's
 * highest remaining version as its last. */
static void test_migrate__names_start_from_the_versions_present(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *db_path = actl__path_join(dir, "catalog.db");
    char *obj = actl__path_join(dir, "objects");
    assert_int_equal(mkdir(obj, 0755), 0);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(db_path, &db), SQLITE_OK);
    char *sql = actl__strdup_printf(
        "%s; INSERT INTO packs VALUES ('%064d', 0, 0, 0);"
        "INSERT INTO adapters (name, version, kind, target_modules, config, raw_bytes, "
        "stored_bytes, pack, created) VALUES ('old', 1, 'lora', '[]', '{}', 0, 0, '%064d', 0), "
        "('old', 5, 'lora', '[]', '{}', 0, 0, '%064d', 0), "
        "('other', 2, 'lora', '[]', '{}', 0, 0, '%064d', 0);"
        "PRAGMA user_version = 1;",
        actl__migrations[0].sql, 0, 0, 0, 0);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    free(sql);
    actl_store *s = NULL;
    assert_ok(actl_store_open(dir, 0, &s));
    fx f = {dir, dir, s};
    assert_int_equal(sql_int(&f, "SELECT last_version FROM names WHERE name = 'old'"), 5);
    assert_int_equal(sql_int(&f, "SELECT last_version FROM names WHERE name = 'other'"), 2);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM names"), 2);
    assert_ok(actl_store_rm(s, "old@5"));
    actl_adapter *a = tiny_lora(5, 4);
    assert_int_equal(add_plain(s, a, "old"), 6);
    actl_adapter_free(a);
    actl_store_close(s);
    test_rmtree(dir);
    free(obj);
    free(db_path);
    free(dir);
}

static void test_add__versions_count_up_unless_given(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(1, 4), *b = tiny_lora(2, 4);
    assert_int_equal(add_plain(f.s, a, "m"), 1);
    assert_int_equal(add_plain(f.s, b, "m"), 2);
    assert_int_equal(add_plain(f.s, a, "m"), 3);
    assert_int_equal(add_plain(f.s, a, "other"), 1);
    actl_add_opts o = actl_add_default_opts();
    o.name = "m";
    o.version = 10;
    assert_ok(actl_store_add(f.s, b, &o, NULL));
    assert_int_equal(add_plain(f.s, a, "m"), 11);
    o.version = 5; /* a gap below the newest is free */
    assert_ok(actl_store_add(f.s, b, &o, NULL));
    o.version = 3;
    assert_err(actl_store_add(f.s, b, &o, NULL), ACTL_EEXIST, "'m@3' already exists");
    o.version = -1;
    assert_err(actl_store_add(f.s, b, &o, NULL), ACTL_EINVAL, "not a positive integer");
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "m", &l));
    assert_int_equal(actl_entries_get(l, 0)->version, 11);
    actl_entries_free(l);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM adapters"), 7);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_fx_free(&f);
}

static void test_add__identical_adds_share_one_pack(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = test_load_fixture("base-tiny", "road-2");
    actl_adapter *again = test_load_fixture("base-tiny", "road-2"); /* a second load, same bytes */
    actl_entries *l1 = NULL, *l2 = NULL;
    actl_add_opts o = actl_add_default_opts();
    o.name = "one";
    assert_ok(actl_store_add(f.s, a, &o, &l1));
    o.name = "two";
    assert_ok(actl_store_add(f.s, again, &o, &l2));
    assert_string_equal(actl_entries_get(l1, 0)->pack, actl_entries_get(l2, 0)->pack);
    char *obj = objects_of(&f);
    assert_int_equal(test_count_files(obj), 1);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM packs"), 1);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM pack_tensors"),
                     (int64_t)actl_adapter_tensor_count(a));
    free(obj);
    actl_entries_free(l1);
    actl_entries_free(l2);
    actl_adapter_free(a);
    actl_adapter_free(again);
    assert_verify_clean(f.s);
    test_fx_free(&f);
}

static void test_add__refuses_bad_options_before_writing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(3, 4);
    actl_add_opts o = actl_add_default_opts();
    assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, "adapter name is missing");
    o.name = "../evil";
    assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, "'../evil'");
    o.name = "ok";
    o.base_model = "";
    assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, "base model is empty");
    o.base_model = "bad\x7f";
    assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, "control character");
    o.base_model = NULL;
    o.description = "\xe2\x28\xa1";
    assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, "description");
    o.description = NULL;
    o.source = "tab\there";
    assert_err(actl_store_add(f.s, a, &o, NULL), ACTL_EINVAL, "source");
    assert_err(actl_store_add(f.s, NULL, &o, NULL), ACTL_EINVAL, "NULL argument");
    char *obj = objects_of(&f);
    assert_int_equal(test_count_files(obj), 0);
    free(obj);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM adapters"), 0);
    actl_adapter_free(a);
    test_fx_free(&f);
}

static void test_add__base_model_from_config_unless_given(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(4, 4);
    actl_add_opts o = actl_add_default_opts();
    actl_entries *l = NULL;
    o.name = "dflt";
    assert_ok(actl_store_add(f.s, a, &o, &l));
    assert_string_equal(actl_entries_get(l, 0)->base_model, "tiny/base");
    actl_entries_free(l);
    o.name = "given";
    o.base_model = "meta-llama/Llama-2-7b-hf";
    assert_ok(actl_store_add(f.s, a, &o, &l));
    assert_string_equal(actl_entries_get(l, 0)->base_model, "meta-llama/Llama-2-7b-hf");
    actl_entries_free(l);
    actl_adapter_free(a);
    test_fx_free(&f);
}

static void test_show__newest_exact_and_missing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(5, 2), *b = tiny_lora(6, 4);
    add_plain(f.s, a, "m");
    add_plain(f.s, b, "m");
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "m", &l));
    assert_int_equal(actl_entries_count(l), 1);
    assert_int_equal(actl_entries_get(l, 0)->version, 2);
    assert_int_equal(actl_entries_get(l, 0)->rank, 4);
    assert_null(actl_entries_get(l, 1));
    actl_entries_free(l);
    assert_ok(actl_store_show(f.s, "m@1", &l));
    assert_int_equal(actl_entries_get(l, 0)->version, 1);
    assert_int_equal(actl_entries_get(l, 0)->rank, 2);
    actl_entries_free(l);
    l = (actl_entries *)1;
    assert_err(actl_store_show(f.s, "m@3", &l), ACTL_ENOTFOUND, "no adapter 'm@3'");
    assert_null(l);
    assert_err(actl_store_show(f.s, "nope", &l), ACTL_ENOTFOUND, "no adapter 'nope'");
    assert_err(actl_store_show(f.s, "a/b", &l), ACTL_EINVAL, "'a/b'");
    assert_int_equal(actl_entries_count(NULL), 0);
    assert_null(actl_entries_get(NULL, 0));
    actl_entries_free(NULL);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_fx_free(&f);
}

/* ---- list --------------------------------------------------------------------------- */

/* "name@version" of every entry, joined by spaces. */
static void list_str(actl_store *s, const actl_query *q, char *out, size_t cap)
{
    actl_entries *l = NULL;
    assert_ok(actl_store_list(s, q, &l));
    out[0] = '\0';
    for (size_t i = 0; i < actl_entries_count(l); i++) {
        const actl_entry *e = actl_entries_get(l, i);
        snprintf(out + strlen(out), cap - strlen(out), "%s%s@%lld", i ? " " : "", e->name,
                 (long long)e->version);
    }
    actl_entries_free(l);
}

#define EXPECT_LIST(q, want)                          \
    do {                                              \
        char got_[2048];                              \
        list_str(f.s, &(q), got_, sizeof got_);       \
        assert_string_equal(got_, (want));            \
    } while (0)

static void test_list__every_filter_limit_and_offset(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *lora = test_load_fixture("base-tiny", "lora");
    actl_adapter *road = test_load_fixture("base-tiny", "road-1");
    actl_adapter *bn = test_load_fixture("base-tiny", "bottleneck-series");
    actl_adapter *mos = test_load_fixture("base-tiny", "mos");
    actl_adapter *t1 = tiny_lora(7, 4);
    const char *math_alice[] = {"task=math", "user=alice", NULL};
    const char *math_bob[] = {"task=math", "user=bob", NULL};
    const char *chat_alice[] = {"task=chat", "user=alice", NULL};
    /* Inserted out of order: the list orders by name, then version. */
    add_tagged(f.s, road, "delta", math_alice);  /* delta@1 road */
    add_tagged(f.s, lora, "alpha", math_bob);    /* alpha@1 lora */
    add_tagged(f.s, t1, "alpha", chat_alice);    /* alpha@2 lora, base tiny/base */
    add_tagged(f.s, bn, "charlie", math_alice);  /* charlie@1 bottleneck */
    add_tagged(f.s, mos, "bravo", NULL);         /* bravo@1 mos */
    add_tagged(f.s, t1, "echo", math_bob);       /* echo@1 lora, base tiny/base */
    add_tagged(f.s, lora, "echo", chat_alice);   /* echo@2 lora */

    actl_query q = actl_query_default();
    EXPECT_LIST(q, "alpha@2 bravo@1 charlie@1 delta@1 echo@2");
    q.all_versions = 1;
    EXPECT_LIST(q, "alpha@1 alpha@2 bravo@1 charlie@1 delta@1 echo@1 echo@2");
    q.limit = 3;
    EXPECT_LIST(q, "alpha@1 alpha@2 bravo@1");
    q.offset = 3;
    EXPECT_LIST(q, "charlie@1 delta@1 echo@1");
    q.offset = 6;
    EXPECT_LIST(q, "echo@2");
    q.offset = 7;
    EXPECT_LIST(q, "");
    q.limit = 0; /* offset without limit */
    q.offset = 5;
    EXPECT_LIST(q, "echo@1 echo@2");

    q = actl_query_default();
    q.kind = ACTL_KIND_LORA;
    EXPECT_LIST(q, "alpha@2 echo@2");
    q.all_versions = 1;
    EXPECT_LIST(q, "alpha@1 alpha@2 echo@1 echo@2");
    q = actl_query_default();
    q.kind = ACTL_KIND_ROAD;
    EXPECT_LIST(q, "delta@1");
    q.kind = ACTL_KIND_BOTTLENECK;
    EXPECT_LIST(q, "charlie@1");
    q.kind = ACTL_KIND_MOS;
    EXPECT_LIST(q, "bravo@1");

    q = actl_query_default();
    q.base_model = "tiny/base";
    EXPECT_LIST(q, "alpha@2");  /* echo's newest is on base-tiny */
    q.all_versions = 1;
    EXPECT_LIST(q, "alpha@2 echo@1");
    q.base_model = "nobody";
    EXPECT_LIST(q, "");

    q = actl_query_default();
    q.name = "echo";
    EXPECT_LIST(q, "echo@2");
    q.all_versions = 1;
    EXPECT_LIST(q, "echo@1 echo@2");

    /* Tags: every one must match, and filters apply to each name's newest version. */
    const char *math[] = {"task=math", NULL};
    const char *alice[] = {"user=alice", NULL};
    const char *math_and_alice[] = {"task=math", "user=alice", NULL};
    const char *nobody[] = {"user=carol", NULL};
    q = actl_query_default();
    q.tags = math;
    EXPECT_LIST(q, "charlie@1 delta@1");
    q.all_versions = 1;
    EXPECT_LIST(q, "alpha@1 charlie@1 delta@1 echo@1");
    q.limit = 2;
    q.offset = 1;
    EXPECT_LIST(q, "charlie@1 delta@1");
    q = actl_query_default();
    q.tags = alice;
    EXPECT_LIST(q, "alpha@2 charlie@1 delta@1 echo@2");
    q.tags = math_and_alice;
    EXPECT_LIST(q, "charlie@1 delta@1");
    q.kind = ACTL_KIND_ROAD;
    EXPECT_LIST(q, "delta@1");
    q.tags = nobody;
    EXPECT_LIST(q, "");

    /* Each listed entry carries its own tags, sorted by key. */
    q = actl_query_default();
    actl_entries *l = NULL;
    assert_ok(actl_store_list(f.s, &q, &l));
    const actl_entry *e = actl_entries_get(l, 0); /* alpha@2 */
    assert_int_equal(e->tag_count, 2);
    assert_string_equal(e->tag_keys[0], "task");
    assert_string_equal(e->tag_values[0], "chat");
    assert_string_equal(e->tag_keys[1], "user");
    assert_string_equal(e->tag_values[1], "alice");
    assert_int_equal(actl_entries_get(l, 1)->tag_count, 0); /* bravo */
    actl_entries_free(l);

    actl_adapter_free(lora);
    actl_adapter_free(road);
    actl_adapter_free(bn);
    actl_adapter_free(mos);
    actl_adapter_free(t1);
    test_fx_free(&f);
}

/* What the test added, to filter by brute force. */
typedef struct rec {
    char name[16];
    int64_t version;
    actl_kind kind;
    const char *base;
    int task, user; /* tags task=t<task>, user=u<user>; user -1: no user tag */
} rec;

static bool rec_match(const rec *r, const rec *all, size_t n, const actl_query *q, int task,
                      int user)
{
    if (!q->all_versions)
        for (size_t j = 0; j < n; j++)
            if (!strcmp(all[j].name, r->name) && all[j].version > r->version)
                return false;
    if (q->kind && r->kind != (actl_kind)q->kind)
        return false;
    if (q->base_model && strcmp(r->base, q->base_model))
        return false;
    if (q->name && strcmp(r->name, q->name))
        return false;
    if (task >= 0 && r->task != task)
        return false;
    if (user >= 0 && r->user != user)
        return false;
    return true;
}

static int rec_cmp(const void *x, const void *y)
{
    const rec *a = x, *b = y;
    int c = strcmp(a->name, b->name);
    return c ? c : (a->version > b->version) - (a->version < b->version);
}

/* Frequent and rare filters, with and without limits, so that both ways of
 * reading (ordered scan, index then sort) run; each result against brute force. */
static void test_list__matches_brute_force_on_every_plan(void **state)
{
    (void)state;
    fx f = test_fx_new();
    enum { N = 240 };
    static rec recs[N];
    actl_adapter *lora[3] = {tiny_lora(21, 4), tiny_lora(22, 4), tiny_lora(23, 2)};
    actl_adapter *road = test_load_fixture("base-tiny", "road-1");
    for (size_t i = 0; i < N; i++) {
        rec *r = &recs[i];
        snprintf(r->name, sizeof r->name, "n%03zu", (i * 37) % 97); /* names repeat: versions */
        r->task = (int)(i % 3);
        r->user = i % 4 == 0 ? -1 : (int)(i % 41);
        bool is_road = i % 29 == 0;
        r->kind = is_road ? ACTL_KIND_ROAD : ACTL_KIND_LORA;
        r->base = is_road ? "adapterctl/base-tiny" : i % 13 == 0 ? "other/base" : "tiny/base";
        char task[16], user[16];
        snprintf(task, sizeof task, "task=t%d", r->task);
        snprintf(user, sizeof user, "user=u%d", r->user);
        const char *tags[] = {task, r->user >= 0 ? user : NULL, NULL};
        actl_add_opts o = actl_add_default_opts();
        o.name = r->name;
        o.tags = tags;
        o.base_model = i % 13 == 0 && !is_road ? "other/base" : NULL;
        actl_entries *l = NULL;
        assert_ok(actl_store_add(f.s, is_road ? road : lora[i % 3], &o, &l));
        r->version = actl_entries_get(l, 0)->version;
        actl_entries_free(l);
    }
    static const struct {
        int kind;
        const char *base;
        int task, user;
    } filters[] = {
        {0, NULL, -1, -1},          {0, NULL, 1, -1},          {0, NULL, -1, 7},
        {0, NULL, 2, 7},            {ACTL_KIND_ROAD, NULL, -1, -1},
        {ACTL_KIND_LORA, NULL, -1, -1}, {ACTL_KIND_LORA, NULL, 0, -1},
        {0, "other/base", -1, -1},  {0, "tiny/base", 1, -1},   {ACTL_KIND_ROAD, NULL, 0, -1},
        {0, NULL, -1, 40},
    };
    static const int64_t limits[][2] = {{0, 0}, {1, 0}, {5, 0}, {5, 3}, {50, 0}, {0, 10},
                                        {3, 1000}};
    rec want[N];
    size_t checked = 0;
    for (size_t fi = 0; fi < sizeof filters / sizeof filters[0]; fi++)
        for (int all = 0; all < 2; all++)
            for (size_t li = 0; li < sizeof limits / sizeof limits[0]; li++) {
                actl_query q = actl_query_default();
                char task[16], user[16];
                snprintf(task, sizeof task, "task=t%d", filters[fi].task);
                snprintf(user, sizeof user, "user=u%d", filters[fi].user);
                const char *tags[3] = {NULL, NULL, NULL};
                size_t nt = 0;
                if (filters[fi].user >= 0)
                    tags[nt++] = user;
                if (filters[fi].task >= 0)
                    tags[nt++] = task;
                q.tags = nt ? tags : NULL;
                q.kind = filters[fi].kind;
                q.base_model = filters[fi].base;
                q.all_versions = all;
                q.limit = limits[li][0];
                q.offset = limits[li][1];
                size_t nw = 0;
                for (size_t i = 0; i < N; i++)
                    if (rec_match(&recs[i], recs, N, &q, filters[fi].task, filters[fi].user))
                        want[nw++] = recs[i];
                qsort(want, nw, sizeof want[0], rec_cmp);
                size_t from = (size_t)q.offset < nw ? (size_t)q.offset : nw;
                size_t to = q.limit && from + (size_t)q.limit < nw ? from + (size_t)q.limit : nw;
                actl_entries *l = NULL;
                assert_ok(actl_store_list(f.s, &q, &l));
                if (actl_entries_count(l) != to - from)
                    fail_msg("filter %zu all %d limit %zu: %zu entries, want %zu", fi, all, li,
                             actl_entries_count(l), to - from);
                for (size_t k = from; k < to; k++) {
                    const actl_entry *e = actl_entries_get(l, k - from);
                    assert_string_equal(e->name, want[k].name);
                    assert_int_equal(e->version, want[k].version);
                }
                actl_entries_free(l);
                checked++;
            }
    assert_true(checked > 100);
    for (size_t i = 0; i < 3; i++)
        actl_adapter_free(lora[i]);
    actl_adapter_free(road);
    test_fx_free(&f);
}

static void test_list__refuses_bad_queries(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_entries *l = NULL;
    actl_query q = actl_query_default();
    q.kind = 99;
    assert_err(actl_store_list(f.s, &q, &l), ACTL_EINVAL, "unknown adapter kind 99");
    q = actl_query_default();
    q.limit = -1;
    assert_err(actl_store_list(f.s, &q, &l), ACTL_EINVAL, "negative");
    q = actl_query_default();
    q.offset = -1;
    assert_err(actl_store_list(f.s, &q, &l), ACTL_EINVAL, "negative");
    q = actl_query_default();
    q.name = "a b";
    assert_err(actl_store_list(f.s, &q, &l), ACTL_EINVAL, "'a b'");
    assert_err(actl_store_list(f.s, NULL, &l), ACTL_EINVAL, "NULL");
    q = actl_query_default();
    assert_ok(actl_store_list(f.s, &q, &l)); /* an empty store lists nothing */
    assert_int_equal(actl_entries_count(l), 0);
    actl_entries_free(l);
    test_fx_free(&f);
}

/* ---- tag, rm ---------------------------------------------------------------------------- */

static void test_tag__sets_replaces_and_unsets_in_one_call(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(8, 4);
    const char *init[] = {"task=math", "user=alice", "lang=en", NULL};
    add_tagged(f.s, a, "m", init);
    add_plain(f.s, a, "m"); /* m@2, untagged: "m" now means m@2 */
    const char *set[] = {"user=bob", "team=x", NULL}, *unset[] = {"lang", "absent", NULL};
    assert_ok(actl_store_tag(f.s, "m@1", set, unset));
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "m@1", &l));
    const actl_entry *e = actl_entries_get(l, 0);
    assert_int_equal(e->tag_count, 3);
    assert_string_equal(e->tag_keys[0], "task");
    assert_string_equal(e->tag_values[0], "math");
    assert_string_equal(e->tag_keys[1], "team");
    assert_string_equal(e->tag_values[1], "x");
    assert_string_equal(e->tag_keys[2], "user");
    assert_string_equal(e->tag_values[2], "bob");
    actl_entries_free(l);
    assert_ok(actl_store_show(f.s, "m", &l));
    assert_int_equal(actl_entries_get(l, 0)->tag_count, 0);
    actl_entries_free(l);
    const char *t[] = {"k=v", NULL};
    assert_ok(actl_store_tag(f.s, "m", t, NULL)); /* NAME alone: the newest */
    assert_ok(actl_store_show(f.s, "m@2", &l));
    assert_int_equal(actl_entries_get(l, 0)->tag_count, 1);
    actl_entries_free(l);
    assert_err(actl_store_tag(f.s, "m@9", t, NULL), ACTL_ENOTFOUND, "no adapter 'm@9'");
    assert_err(actl_store_tag(f.s, "nope", t, NULL), ACTL_ENOTFOUND, "no adapter 'nope'");
    actl_adapter_free(a);
    test_fx_free(&f);
}

static void test_rm__removes_rows_and_tags_and_gc_the_pack(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(9, 4), *b = tiny_lora(10, 4);
    const char *tags[] = {"task=x", NULL};
    add_tagged(f.s, a, "m", tags);
    add_tagged(f.s, a, "n", tags); /* shares m's pack */
    add_tagged(f.s, b, "m", tags);
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "m@1", &l));
    char *shared = pack_file(&f, actl_entries_get(l, 0)->pack);
    actl_entries_free(l);
    assert_ok(actl_store_show(f.s, "m@2", &l));
    char *own = pack_file(&f, actl_entries_get(l, 0)->pack);
    off_t own_size = file_size(own);
    actl_entries_free(l);

    assert_ok(actl_store_rm(f.s, "m")); /* the newest: m@2 */
    assert_err(actl_store_show(f.s, "m@2", &l), ACTL_ENOTFOUND, "'m@2'");
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM tags"), 2);
    assert_true(actl__exists(own)); /* packs stay until gc */
    actl_gc_result r;
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.packs_removed, 1);
    assert_true(r.bytes_freed == (uint64_t)own_size);
    assert_int_equal(r.temp_removed, 0);
    assert_false(actl__exists(own));
    assert_true(actl__exists(shared));
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM packs"), 1);

    assert_ok(actl_store_rm(f.s, "m@1"));
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.packs_removed, 0); /* n still uses it */
    assert_true(actl__exists(shared));
    assert_ok(actl_store_rm(f.s, "n@1"));
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.packs_removed, 1);
    assert_false(actl__exists(shared));
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM packs"), 0);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM pack_tensors"), 0);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM tags"), 0);
    char *obj = objects_of(&f);
    assert_int_equal(test_count_files(obj), 0);
    free(obj);
    assert_err(actl_store_rm(f.s, "m"), ACTL_ENOTFOUND, "no adapter 'm'");
    assert_err(actl_store_rm(f.s, "m@x"), ACTL_EINVAL, "positive integer");
    assert_verify_clean(f.s);
    free(shared);
    free(own);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_fx_free(&f);
}

/* ---- gc ---------------------------------------------------------------------------------- */

static void test_gc__removes_orphan_files_and_temporaries_only(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(11, 4);
    add_plain(f.s, a, "keep");
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "keep", &l));
    char *kept = pack_file(&f, actl_entries_get(l, 0)->pack);
    actl_entries_free(l);

    char *obj = objects_of(&f);
    char p[4400];
    /* An orphan pack (a killed add's), in its own fanout directory. */
    const char *orphan = "ab00000000000000000000000000000000000000000000000000000000000000";
    snprintf(p, sizeof p, "%s/ab", obj);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/ab/%s", obj, orphan);
    test_write_text(p, "0123456789"); /* 10 bytes */
    /* Temporaries. */
    snprintf(p, sizeof p, "%s/tmp/pack.AbC123", obj);
    test_write_text(p, "partial");
    snprintf(p, sizeof p, "%s/tmp/pack.zzz", obj);
    test_write_text(p, "partial");
    /* Not ours: left alone. */
    snprintf(p, sizeof p, "%s/README", obj);
    test_write_text(p, "hello");
    snprintf(p, sizeof p, "%s/cd", obj);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/cd/notes.txt", obj);
    test_write_text(p, "mine");

    actl_gc_result r;
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.packs_removed, 1);
    assert_int_equal(r.bytes_freed, 10);
    assert_int_equal(r.temp_removed, 2);
    snprintf(p, sizeof p, "%s/ab", obj);
    assert_false(actl__exists(p)); /* emptied fanout directories go too */
    snprintf(p, sizeof p, "%s/tmp", obj);
    assert_true(actl__is_dir(p));
    assert_int_equal(test_count_files(p), 0);
    snprintf(p, sizeof p, "%s/README", obj);
    assert_true(actl__exists(p));
    snprintf(p, sizeof p, "%s/cd/notes.txt", obj);
    assert_true(actl__exists(p));
    assert_true(actl__exists(kept));
    assert_verify_clean(f.s);
    /* Nothing left to do. */
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.packs_removed + r.temp_removed, 0);
    free(obj);
    free(kept);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* Children never call cmocka (a failed assertion would longjmp into the
 * child's copy of the test runner): they report through their exit status. */
static void child_write(int fd, char c)
{
    if (write(fd, &c, 1) != 1)
        _exit(90);
}

static char child_read(int fd)
{
    char c = 0;
    if (read(fd, &c, 1) != 1)
        _exit(91);
    return c;
}

/* waitpid with a deadline: the exit status, or -1 after killing a child that
 * took longer than `seconds`. */
static int wait_bounded(pid_t pid, int seconds)
{
    int st = 0;
    for (int i = 0; i < seconds * 100; i++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* The add hook of the child below: tells the parent the pack is in objects/
 * (with no row yet: an "orphan" to a careless gc), then waits for its word. */
static int g_pause_to_parent = -1, g_pause_from_parent = -1;

static void pause_in_child(const char *point)
{
    if (strcmp(point, "add") != 0)
        return;
    child_write(g_pause_to_parent, 'w');
    child_read(g_pause_from_parent);
}

/* A real actl_store_add in another process, held by the test hook between
 * placing its pack and committing its row: gc must wait for it, then keep
 * the pack. (With the add's lock removed, gc finishes during the pause and
 * deletes the pack: both `blocked` and verify fail.) */
static void test_gc__waits_for_an_add_in_progress_and_keeps_its_pack(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(12, 4);
    char *obj = objects_of(&f);
    int to_child[2], to_parent[2];
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(to_parent), 0);
    pid_t adder = fork();
    assert_true(adder >= 0);
    if (adder == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        g_pause_to_parent = to_parent[1];
        g_pause_from_parent = to_child[0];
        actl__store_test_pause = pause_in_child;
        actl_store *s = NULL;
        actl_add_opts o = actl_add_default_opts();
        o.name = "late";
        int rc = actl_store_open(f.store, 0, &s);
        if (!rc)
            rc = actl_store_add(s, a, &o, NULL);
        actl_store_close(s);
        _exit(rc ? 11 : 0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    char c = 0;
    bool paused = read(to_parent[0], &c, 1) == 1 && c == 'w';
    size_t files_before = test_count_files(obj); /* the pack, with no row yet */
    int64_t rows_before = sql_int(&f, "SELECT count(*) FROM adapters");
    pid_t gc = paused ? fork() : -1;
    if (gc == 0) {
        actl_store *s = NULL;
        actl_gc_result r;
        int rc = actl_store_open(f.store, 0, &s);
        if (!rc)
            rc = actl_store_gc(s, &r);
        actl_store_close(s);
        _exit(rc ? 20 : (int)r.packs_removed);
    }
    bool blocked = false;
    if (gc > 0) {
        struct timespec ts = {0, 300 * 1000000L};
        nanosleep(&ts, NULL);
        int st;
        blocked = waitpid(gc, &st, WNOHANG) == 0;
    }
    /* Let the add finish whatever happened, then collect both children before
     * any assertion can end this test. */
    if (write(to_child[1], "g", 1) != 1)
        kill(adder, SIGKILL);
    close(to_child[1]);
    int adder_status = wait_bounded(adder, 30);
    int gc_status = gc > 0 ? wait_bounded(gc, 30) : -1;
    close(to_parent[0]);
    assert_true(paused);
    assert_int_equal(files_before, 1);
    assert_int_equal(rows_before, 0);
    assert_true(blocked);           /* gc waited for the add's lock */
    assert_int_equal(adder_status, 0);
    assert_int_equal(gc_status, 0); /* and removed nothing */
    assert_int_equal(test_count_files(obj), 1);
    actl_adapter *back = NULL;
    assert_ok(actl_store_load(f.s, "late", &back));
    actl_adapter_free(back);
    assert_verify_clean(f.s);
    free(obj);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* verify holds the gc lock for its whole run: an rm committed after its
 * snapshot leaves a row it still checks, and a gc meanwhile must wait rather
 * than delete that row's pack under it. The gc process is forked before
 * verify starts: a child forked inside it would share its flock on gc.lock
 * and SQLite's state of its open transaction. */
static const char *g_store_dir;
static pid_t g_gc_child = -1;
static int g_gc_go = -1;
static bool g_gc_blocked, g_hook_ok;

static void pause_verify_rm_gc(const char *point)
{
    if (strcmp(point, "verify") != 0)
        return;
    actl_store *s2 = NULL;
    g_hook_ok = actl_store_open(g_store_dir, 0, &s2) == ACTL_OK &&
                actl_store_rm(s2, "gone@1") == ACTL_OK && write(g_gc_go, "g", 1) == 1;
    actl_store_close(s2);
    struct timespec ts = {0, 300 * 1000000L};
    nanosleep(&ts, NULL);
    int st;
    g_gc_blocked = waitpid(g_gc_child, &st, WNOHANG) == 0;
}

static void test_verify__an_rm_and_gc_meanwhile_report_nothing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(50, 4), *b = tiny_lora(51, 4);
    add_plain(f.s, a, "gone");
    add_plain(f.s, b, "kept");
    int go[2];
    assert_int_equal(pipe(go), 0);
    g_gc_child = fork();
    assert_true(g_gc_child >= 0);
    if (g_gc_child == 0) {
        close(go[1]);
        child_read(go[0]);
        actl_store *s = NULL;
        actl_gc_result r;
        int rc = actl_store_open(f.store, 0, &s);
        if (!rc)
            rc = actl_store_gc(s, &r);
        actl_store_close(s);
        _exit(rc ? 20 : (int)r.packs_removed);
    }
    close(go[0]);
    g_store_dir = f.store;
    g_gc_go = go[1];
    g_gc_blocked = g_hook_ok = false;
    actl__store_test_pause = pause_verify_rm_gc;
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 99;
    int rc = actl_store_verify(f.s, collect, &p, &n);
    actl__store_test_pause = NULL;
    close(go[1]); /* a child still waiting for its word reads EOF and exits */
    int gc_status = wait_bounded(g_gc_child, 30);
    dump_problems(&p);
    assert_ok(rc);
    assert_true(g_hook_ok);
    assert_true(g_gc_blocked);
    assert_int_equal(n, 0);
    assert_int_equal(gc_status, 1); /* once verify was done, gc took the pack */
    assert_verify_clean(f.s);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_fx_free(&f);
}

/* A load whose row is removed and whose pack is collected between its lookup
 * and its read says so, unlike a pack lost while still referenced. */
static actl_store *g_other;

static void pause_load_rm_gc(const char *point)
{
    actl_gc_result r;
    if (strcmp(point, "load") == 0 && actl_store_rm(g_other, "x@1") == ACTL_OK)
        (void)actl_store_gc(g_other, &r);
}

static void test_load__a_removal_meanwhile_is_reported_as_such(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(52, 4), *b = tiny_lora(53, 4), *back = NULL;
    add_plain(f.s, a, "x");
    add_plain(f.s, b, "y");
    assert_ok(actl_store_open(f.store, 0, &g_other));
    actl__store_test_pause = pause_load_rm_gc;
    int rc = actl_store_load(f.s, "x", &back);
    char out[4400];
    snprintf(out, sizeof out, "%s/out", f.dir);
    actl__store_test_pause = NULL;
    assert_err(rc, ACTL_ENOTFOUND, "'x@1' was removed while being read");
    assert_null(back);
    assert_err(actl_store_export(f.s, "x", out), ACTL_ENOTFOUND, "no adapter 'x'");
    /* a pack gone while its row stays is not a removal */
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "y", &l));
    char *path = pack_file(&f, actl_entries_get(l, 0)->pack);
    actl_entries_free(l);
    assert_int_equal(unlink(path), 0);
    assert_err(actl_store_load(f.s, "y", &back), ACTL_ENOTFOUND,
               "cannot load 'y@1': cannot open pack");
    assert_err(actl_store_export(f.s, "y@1", out), ACTL_ENOTFOUND, "cannot load 'y@1'");
    actl_store_close(g_other);
    g_other = NULL;
    free(path);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_fx_free(&f);
}

/* flock dies with its process: an add killed while holding the lock blocks no gc. */
static void test_gc__a_killed_add_releases_the_lock(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char *lock = actl__path_join(f.store, "gc.lock");
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        int fd = open(lock, O_RDWR | O_CREAT, 0644);
        if (fd < 0 || flock(fd, LOCK_SH) != 0)
            _exit(1);
        child_write(p[1], 'l');
        for (;;)
            pause();
    }
    char c = 0;
    bool locked = read(p[0], &c, 1) == 1 && c == 'l';
    kill(child, SIGKILL);
    int st;
    waitpid(child, &st, 0);
    close(p[0]);
    close(p[1]);
    assert_true(locked);
    actl_gc_result r;
    assert_ok(actl_store_gc(f.s, &r));
    free(lock);
    test_fx_free(&f);
}

/* ---- pull's entry points: add_pack, has_pack, partial downloads ---------------------- */

/* Writes a's pack into dir/outside (as a finished download would be) and
 * loads it back; *path gets the file, hex its digest. */
static actl_adapter *pack_outside(const fx *f, const actl_adapter *a, char **path, char hex[65])
{
    char *outside = actl__path_join(f->dir, "outside");
    assert_ok(actl__pack_write(a, outside, hex, NULL, NULL));
    *path = actl__pack_path(outside, hex);
    actl_adapter *back = NULL;
    assert_ok(actl__pack_load(*path, hex, &back));
    free(outside);
    return back;
}

static void test_add_pack__moves_the_file_in_and_records_the_rows(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = test_load_fixture("base-tiny", "road-2");
    char hex[65], *src = NULL;
    actl_adapter *b = pack_outside(&f, a, &src, hex);
    off_t size = file_size(src);
    char sha[65];
    file_sha256(src, sha);
    assert_string_equal(sha, hex);

    assert_int_equal(actl__store_has_pack(f.s, hex), 0);
    actl_add_opts o = actl_add_default_opts();
    o.name = "pulled";
    o.source = "https://example.invalid/pulled";
    const char *tags[] = {"from=hub", NULL};
    o.tags = tags;
    actl_entries *l = NULL;
    assert_ok(actl__store_add_pack(f.s, src, hex, b, &o, &l));
    const actl_entry *e = actl_entries_get(l, 0);
    assert_string_equal(e->name, "pulled");
    assert_int_equal(e->version, 1);
    assert_int_equal(e->kind, ACTL_KIND_ROAD);
    assert_string_equal(e->variant, "road_2");
    assert_string_equal(e->pack, hex);
    assert_string_equal(e->source, "https://example.invalid/pulled");
    assert_true(e->stored_bytes == (uint64_t)size);
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    assert_true(e->raw_bytes == info.bytes);
    assert_int_equal(e->tag_count, 1);
    actl_entries_free(l);

    assert_false(actl__exists(src)); /* moved, not copied */
    char *in = pack_file(&f, hex);
    file_sha256(in, sha);
    assert_string_equal(sha, hex);
    assert_int_equal(actl__store_has_pack(f.s, hex), 1);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM pack_tensors"),
                     (int64_t)actl_adapter_tensor_count(a));
    actl_adapter *back = NULL;
    assert_ok(actl_store_load(f.s, "pulled", &back));
    assert_int_equal(actl_adapter_tensor_count(back), actl_adapter_tensor_count(a));
    for (size_t i = 0; i < actl_adapter_tensor_count(a); i++) {
        const actl_tensor *x = actl_adapter_tensor(a, i), *y = actl_adapter_tensor(back, i);
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    actl_adapter_free(back);
    assert_verify_clean(f.s);
    free(in);
    free(src);
    actl_adapter_free(b);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* The same bytes already in objects/: the download is dropped and the file in
 * place shared; a damaged file in place is replaced by the verified one. */
static void test_add_pack__shares_an_intact_pack_and_replaces_a_damaged_one(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(40, 4);
    add_plain(f.s, a, "local");
    char hex[65], *src = NULL;
    actl_adapter *b = pack_outside(&f, a, &src, hex);
    char *in = pack_file(&f, hex);
    struct stat st1, st2;
    assert_int_equal(stat(in, &st1), 0);
    actl_add_opts o = actl_add_default_opts();
    o.name = "pulled";
    assert_ok(actl__store_add_pack(f.s, src, hex, b, &o, NULL));
    assert_false(actl__exists(src));
    assert_int_equal(stat(in, &st2), 0);
    assert_int_equal(st1.st_ino, st2.st_ino); /* kept, not rewritten */
    char *obj = objects_of(&f);
    assert_int_equal(test_count_files(obj), 1);
    assert_int_equal(sql_int(&f, "SELECT count(*) FROM packs"), 1);

    /* flip a byte of the pack in place, then pull it again */
    free(src);
    actl_adapter_free(b);
    b = pack_outside(&f, a, &src, hex);
    size_t len;
    char *data = NULL;
    assert_ok(actl__read_file(in, 1 << 20, &data, &len));
    data[len / 2] ^= 1;
    FILE *w = fopen(in, "wb");
    assert_non_null(w);
    assert_int_equal(fwrite(data, 1, len, w), len);
    fclose(w);
    free(data);
    o.name = "again";
    assert_ok(actl__store_add_pack(f.s, src, hex, b, &o, NULL));
    char sha[65];
    file_sha256(in, sha);
    assert_string_equal(sha, hex);
    assert_verify_clean(f.s);
    free(obj);
    free(in);
    free(src);
    actl_adapter_free(b);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* pack_path NULL: objects/ must hold the pack (hashed), else ENOTFOUND; a bad
 * digest is refused before anything happens. */
static void test_add_pack__without_a_file_uses_the_pack_in_place(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(41, 4), *c = tiny_lora(42, 4);
    add_plain(f.s, a, "local");
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "local", &l));
    char hex[65];
    snprintf(hex, sizeof hex, "%s", actl_entries_get(l, 0)->pack);
    actl_entries_free(l);
    actl_add_opts o = actl_add_default_opts();
    o.name = "same";
    assert_ok(actl__store_add_pack(f.s, NULL, hex, a, &o, &l));
    assert_string_equal(actl_entries_get(l, 0)->pack, hex);
    actl_entries_free(l);

    /* a digest objects/ does not hold */
    char *dir = actl__path_join(f.dir, "elsewhere");
    char other[65];
    assert_ok(actl__pack_write(c, dir, other, NULL, NULL));
    o.name = "absent";
    assert_err(actl__store_add_pack(f.s, NULL, other, c, &o, NULL), ACTL_ENOTFOUND,
               "cannot add 'absent'");
    assert_err(actl_store_show(f.s, "absent", &l), ACTL_ENOTFOUND, "absent");
    assert_err(actl__store_add_pack(f.s, NULL, "ABC", c, &o, NULL), ACTL_EINVAL,
               "not a SHA-256");
    assert_err(actl__store_add_pack(f.s, NULL, NULL, c, &o, NULL), ACTL_EINVAL, "NULL");
    /* the options are checked as add checks them */
    o.name = "bad name";
    assert_err(actl__store_add_pack(f.s, NULL, hex, a, &o, NULL), ACTL_EINVAL,
               "invalid adapter name");
    assert_verify_clean(f.s);
    test_rmtree(dir);
    free(dir);
    actl_adapter_free(a);
    actl_adapter_free(c);
    test_fx_free(&f);
}

static void test_has_pack__needs_both_the_row_and_the_file(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_adapter *a = tiny_lora(43, 4);
    add_plain(f.s, a, "x");
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "x", &l));
    char hex[65];
    snprintf(hex, sizeof hex, "%s", actl_entries_get(l, 0)->pack);
    actl_entries_free(l);
    assert_int_equal(actl__store_has_pack(f.s, hex), 1);
    assert_int_equal(actl__store_has_pack(f.s, "0123"), 0);
    assert_int_equal(actl__store_has_pack(f.s, NULL), 0);
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(hex[i] >= 'a' && hex[i] <= 'f' ? hex[i] - 32 : hex[i]);
    assert_int_equal(actl__store_has_pack(f.s, upper), strcmp(upper, hex) == 0);
    /* the file without a row: not held */
    char *p = pack_file(&f, hex);
    char *saved = actl__path_join(f.dir, "saved");
    assert_int_equal(rename(p, saved), 0);
    assert_int_equal(actl__store_has_pack(f.s, hex), 0); /* row, no file */
    assert_int_equal(rename(saved, p), 0);
    assert_ok(actl_store_rm(f.s, "x"));
    assert_int_equal(actl__store_has_pack(f.s, hex), 1); /* until gc */
    actl_gc_result r;
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(actl__store_has_pack(f.s, hex), 0);
    free(saved);
    free(p);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* gc removes the partial downloads no pull holds (LOCK_SH), and only regular files. */
static void test_gc__removes_abandoned_partial_downloads_only(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char *dir = actl__path_join(f.store, ACTL_PARTIAL_DIR);
    assert_int_equal(mkdir(dir, 0755), 0);
    char p[4400];
    snprintf(p, sizeof p, "%s/abandoned", dir);
    test_write_text(p, "half a pack");
    snprintf(p, sizeof p, "%s/another", dir);
    test_write_text(p, "");
    snprintf(p, sizeof p, "%s/busy", dir);
    test_write_text(p, "being written");
    /* a pull's lock: another open file description, as another process has */
    int held = open(p, O_RDWR);
    assert_true(held >= 0);
    assert_int_equal(flock(held, LOCK_SH), 0);
    snprintf(p, sizeof p, "%s/sub", dir);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/link", dir);
    char *target = actl__path_join(f.dir, "target");
    test_write_text(target, "not ours");
    assert_int_equal(symlink(target, p), 0);
    snprintf(p, sizeof p, "%s/fifo", dir);
    assert_int_equal(mkfifo(p, 0644), 0);

    actl_gc_result r;
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.temp_removed, 2);
    assert_int_equal(r.packs_removed, 0);
    snprintf(p, sizeof p, "%s/abandoned", dir);
    assert_false(actl__exists(p));
    snprintf(p, sizeof p, "%s/another", dir);
    assert_false(actl__exists(p));
    snprintf(p, sizeof p, "%s/busy", dir);
    assert_true(actl__exists(p));
    snprintf(p, sizeof p, "%s/sub", dir);
    assert_true(actl__is_dir(p));
    snprintf(p, sizeof p, "%s/fifo", dir);
    struct stat sb;
    assert_int_equal(lstat(p, &sb), 0);
    snprintf(p, sizeof p, "%s/link", dir);
    assert_int_equal(lstat(p, &sb), 0);
    assert_true(actl__exists(target));

    /* released: the next gc takes it */
    close(held);
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.temp_removed, 1);
    snprintf(p, sizeof p, "%s/busy", dir);
    assert_false(actl__exists(p));
    /* no partial directory at all is fine */
    test_rmtree(dir);
    assert_ok(actl_store_gc(f.s, &r));
    assert_int_equal(r.temp_removed, 0);
    free(target);
    free(dir);
    test_fx_free(&f);
}

/* ---- verify ---------------------------------------------------------------------------- */

/* A store with one fixture per kind; returns the digest of "victim"'s pack. */
static fx verify_store(char victim_pack[65])
{
    fx f = test_fx_new();
    static const char *const which[] = {"lora", "road-4", "bottleneck-parallel", "mos"};
    for (size_t i = 0; i < 4; i++) {
        actl_adapter *a = test_load_fixture("base-tiny", which[i]);
        add_plain(f.s, a, i == 1 ? "victim" : which[i]);
        actl_adapter_free(a);
    }
    actl_entries *l = NULL;
    assert_ok(actl_store_show(f.s, "victim", &l));
    snprintf(victim_pack, 65, "%s", actl_entries_get(l, 0)->pack);
    actl_entries_free(l);
    return f;
}

static void test_verify__a_good_store_is_clean(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    assert_verify_clean(f.s);
    size_t n = 9;
    assert_ok(actl_store_verify(f.s, NULL, NULL, &n)); /* no callback: just the count */
    assert_int_equal(n, 0);
    test_fx_free(&f);
}

static void test_verify__reports_a_flipped_byte(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    char *path = pack_file(&f, hex);
    off_t size = file_size(path);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, size - 5), 1);
    c ^= 0x10;
    assert_int_equal(pwrite(fd, &c, 1, size - 5), 1);
    close(fd);
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 0;
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    dump_problems(&p);
    assert_true(n >= 1);
    assert_int_equal(n, p.n);
    assert_true(any_problem_has(&p, hex, "'victim@1'"));
    /* Only the victim's pack is named. */
    for (size_t i = 0; i < p.n; i++)
        assert_non_null(strstr(p.msgs[i], hex));
    /* Loading and exporting it fail too, naming it. */
    actl_adapter *a = NULL;
    assert_err(actl_store_load(f.s, "victim", &a), ACTL_ECORRUPT, "'victim@1'");
    char *out = actl__path_join(f.dir, "export");
    assert_err(actl_store_export(f.s, "victim", out), ACTL_ECORRUPT, "'victim@1'");
    assert_false(actl__exists(out));
    free(out);
    free(path);
    test_fx_free(&f);
}

static void test_verify__reports_a_deleted_pack(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    char *path = pack_file(&f, hex);
    assert_int_equal(unlink(path), 0);
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 0;
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    dump_problems(&p);
    assert_int_equal(n, 1);
    assert_true(any_problem_has(&p, hex, "is missing"));
    assert_true(any_problem_has(&p, "'victim@1'", NULL));
    free(path);
    test_fx_free(&f);
}

/* Each fact column of a row is checked against the adapter its pack holds,
 * and the JSON columns must parse. */
static void test_verify__reports_each_column_that_differs_from_the_pack(void **state)
{
    (void)state;
    struct {
        const char *set, *want;
    } cases[] = {
        {"kind = 'lora'", "'victim@1': column kind is 'lora' in the catalogue but 'road'"},
        {"kind = 'zzz'", "'victim@1': unknown kind 'zzz'"},
        {"rank = 7", "'victim@1': column rank is 7 in the catalogue but 0"},
        {"variant = 'road_1'",
         "'victim@1': column variant is 'road_1' in the catalogue but 'road_4'"},
        {"variant = NULL", "'victim@1': column variant is null in the catalogue but 'road_4'"},
        {"group_size = 3", "'victim@1': column group_size is 3 in the catalogue but"},
        {"target_modules = '[\"model.x\"]'",
         "'victim@1': column target_modules is '[\"model.x\"]' in the catalogue but '[\"model."},
        {"target_modules = '[\"a\",'", "'victim@1': column target_modules is not valid JSON"},
        {"config = '{}'", "'victim@1': column config is '{}' in the catalogue but '{"},
        {"config = '{\"r\": 1'", "'victim@1': column config is not valid JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char hex[65], sql[256];
        fx f = verify_store(hex);
        snprintf(sql, sizeof sql, "UPDATE adapters SET %s WHERE name = 'victim'", cases[i].set);
        sql_exec(&f, sql);
        problems p;
        memset(&p, 0, sizeof p);
        size_t n = 0;
        assert_ok(actl_store_verify(f.s, collect, &p, &n));
        if (n != 1 || !any_problem_has(&p, cases[i].want, NULL)) {
            print_message("case %s: want %s\n", cases[i].set, cases[i].want);
            dump_problems(&p);
        }
        assert_int_equal(n, 1);
        assert_true(any_problem_has(&p, cases[i].want, NULL));
        test_fx_free(&f);
    }
}

/* The same with the pack damaged: what needs no pack is still checked. */
static void test_verify__checks_kind_and_json_of_rows_of_a_damaged_pack(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    sql_exec(&f, "UPDATE adapters SET kind = 'zzz', config = '{' WHERE name = 'victim'");
    char *path = pack_file(&f, hex);
    size_t len;
    char *data = NULL;
    assert_ok(actl__read_file(path, 1 << 20, &data, &len));
    data[len - 1] ^= 1;
    FILE *w = fopen(path, "wb");
    assert_int_equal(fwrite(data, 1, len, w), len);
    fclose(w);
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 0;
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    assert_true(any_problem_has(&p, "'victim@1': unknown kind 'zzz'", NULL));
    assert_true(any_problem_has(&p, "'victim@1': column config is not valid JSON", NULL));
    assert_true(any_problem_has(&p, hex, "SHA-256"));
    free(data);
    free(path);
    test_fx_free(&f);
}

/* A pack damaged in objects/ is not shared by the next add of the same
 * adapter: it is replaced, and every adapter using it exports again. */
static void test_add__repairs_a_damaged_pack_it_would_share(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    char *path = pack_file(&f, hex);
    size_t len;
    char *data = NULL;
    assert_ok(actl__read_file(path, 1 << 20, &data, &len));
    data[len / 2] ^= 0x10;
    FILE *w = fopen(path, "wb");
    assert_int_equal(fwrite(data, 1, len, w), len);
    fclose(w);
    char out[4400];
    snprintf(out, sizeof out, "%s/out-damaged", f.dir);
    assert_err(actl_store_export(f.s, "victim", out), ACTL_ECORRUPT, "cannot load 'victim@1'");
    actl_adapter *a = test_load_fixture("base-tiny", "road-4");
    assert_int_equal(add_plain(f.s, a, "again"), 1);
    char sha[65];
    file_sha256(path, sha);
    assert_string_equal(sha, hex);
    snprintf(out, sizeof out, "%s/out-victim", f.dir);
    assert_ok(actl_store_export(f.s, "victim", out));
    actl_adapter *back = NULL;
    assert_ok(actl_adapter_load(out, &back));
    test_assert_same_tensors(a, back);
    assert_verify_clean(f.s);
    actl_adapter_free(back);
    actl_adapter_free(a);
    free(data);
    free(path);
    test_fx_free(&f);
}

static void test_verify__reports_a_row_whose_sizes_lie(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    sql_exec(&f, "UPDATE adapters SET stored_bytes = stored_bytes + 1 WHERE name = 'victim'");
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 0;
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    dump_problems(&p);
    assert_int_equal(n, 1);
    assert_true(any_problem_has(&p, "'victim@1': stored size", hex));
    /* The pack row lying about the file's size is another problem. */
    sql_exec(&f, "UPDATE adapters SET stored_bytes = stored_bytes - 1 WHERE name = 'victim'");
    sql_exec(&f, "PRAGMA foreign_keys = OFF; UPDATE packs SET raw_bytes = raw_bytes + 7, "
                 "stored_bytes = stored_bytes + 3 WHERE digest IN (SELECT pack FROM adapters "
                 "WHERE name = 'victim')");
    memset(&p, 0, sizeof p);
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    dump_problems(&p);
    assert_true(any_problem_has(&p, "the catalogue says", hex));
    assert_true(any_problem_has(&p, "'victim@1': stored size", NULL));
    assert_true(any_problem_has(&p, "'victim@1': raw size", NULL));
    test_fx_free(&f);
}

static void test_verify__reports_tensor_index_rows_that_differ(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    char sql[512];
    snprintf(sql, sizeof sql,
             "UPDATE pack_tensors SET shape = '[1,2]' WHERE pack = '%s' AND name = "
             "(SELECT min(name) FROM pack_tensors WHERE pack = '%s')",
             hex, hex);
    sql_exec(&f, sql);
    snprintf(sql, sizeof sql,
             "DELETE FROM pack_tensors WHERE pack = '%s' AND name = "
             "(SELECT max(name) FROM pack_tensors WHERE pack = '%s')",
             hex, hex);
    sql_exec(&f, sql);
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 0;
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    dump_problems(&p);
    assert_int_equal(n, 2);
    assert_true(any_problem_has(&p, "[1,2]", "in the tensor index"));
    assert_true(any_problem_has(&p, "is missing from the tensor index", hex));
    test_fx_free(&f);
}

static void test_verify__reports_dangling_foreign_keys(void **state)
{
    (void)state;
    char hex[65];
    fx f = verify_store(hex);
    sql_exec(&f, "PRAGMA foreign_keys = OFF; INSERT INTO tags VALUES (424242, 'k', 'v')");
    problems p;
    memset(&p, 0, sizeof p);
    size_t n = 0;
    assert_ok(actl_store_verify(f.s, collect, &p, &n));
    dump_problems(&p);
    assert_int_equal(n, 1);
    assert_true(any_problem_has(&p, "table 'tags'", "missing 'adapters' row"));
    test_fx_free(&f);
}

/* ---- export and load ----------------------------------------------------------------------- */

static void test_export__identical_tensors_for_every_fixture(void **state)
{
    (void)state;
    fx f = test_fx_new();
    static const char *const bases[] = {"base-tiny", "hf-tiny"};
    size_t done = 0;
    for (size_t b = 0; b < 2; b++)
        for (size_t i = 0; i < N_FIXTURES; i++) {
            char name[128], out[4400];
            snprintf(name, sizeof name, "%s.%s", bases[b], fixture_names[i]);
            actl_adapter *orig = test_load_fixture(bases[b], fixture_names[i]);
            add_plain(f.s, orig, name);
            snprintf(out, sizeof out, "%s/out-%s", f.dir, name);
            assert_ok(actl_store_export(f.s, name, out));
            actl_adapter *back = NULL;
            assert_ok(actl_adapter_load(out, &back));
            test_assert_same_tensors(orig, back);
            assert_string_equal(actl_adapter_config(orig), actl_adapter_config(back));
            /* The files' bytes, too: the same as saving the original directly. */
            char direct[4400], p1[4500], p2[4500], h1[65], h2[65];
            snprintf(direct, sizeof direct, "%s/direct-%s", f.dir, name);
            assert_ok(actl_adapter_save(orig, direct));
            snprintf(p1, sizeof p1, "%s/adapter_model.safetensors", direct);
            snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", out);
            file_sha256(p1, h1);
            file_sha256(p2, h2);
            assert_string_equal(h1, h2);
            snprintf(p1, sizeof p1, "%s/adapter_config.json", direct);
            snprintf(p2, sizeof p2, "%s/adapter_config.json", out);
            file_sha256(p1, h1);
            file_sha256(p2, h2);
            assert_string_equal(h1, h2);
            actl_adapter *loaded = NULL;
            assert_ok(actl_store_load(f.s, name, &loaded));
            test_assert_same_tensors(orig, loaded);
            actl_adapter_free(loaded);
            actl_adapter_free(back);
            actl_adapter_free(orig);
            done++;
        }
    assert_int_equal(done, 2 * N_FIXTURES);
    char out[4400];
    snprintf(out, sizeof out, "%s/out-base-tiny.lora", f.dir);
    assert_err(actl_store_export(f.s, "base-tiny.lora", out), ACTL_EEXIST, "");
    assert_err(actl_store_export(f.s, "absent", out), ACTL_ENOTFOUND, "no adapter 'absent'");
    assert_verify_clean(f.s);
    test_fx_free(&f);
}

/* ---- stats ----------------------------------------------------------------------------------- */

static void test_stats__match_independent_counts(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_store_stats st;
    assert_ok(actl_store_stats_get(f.s, &st));
    assert_int_equal(st.adapters + st.versions + st.packs, 0);
    assert_true(st.raw_bytes == 0 && st.stored_bytes == 0);

    /* Adds: (name, fixture). Packs are shared by identical fixtures. */
    static const struct {
        const char *name, *fixture;
    } adds[] = {
        {"a", "lora"}, {"a", "road-1"}, {"a", "lora"}, {"b", "lora"},
        {"c", "mos"},  {"d", "bottleneck-series"}, {"d", "road-1"}, {"gone", "lora-f16"},
    };
    enum { N = sizeof adds / sizeof adds[0] };
    for (size_t i = 0; i < N; i++) {
        actl_adapter *a = test_load_fixture("base-tiny", adds[i].fixture);
        add_plain(f.s, a, adds[i].name);
        actl_adapter_free(a);
    }
    assert_ok(actl_store_rm(f.s, "gone")); /* its pack is no longer counted */
    /* Independent: distinct fixtures among the remaining adds; raw bytes from
     * the adapters; stored bytes from the pack files on disk. */
    const char *distinct[] = {"lora", "road-1", "mos", "bottleneck-series"};
    uint64_t raw = 0, stored = 0;
    for (size_t i = 0; i < 4; i++) {
        actl_adapter *a = test_load_fixture("base-tiny", distinct[i]);
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        raw += info.bytes;
        actl_entries *l = NULL;
        actl_query q = actl_query_default();
        q.all_versions = 1;
        assert_ok(actl_store_list(f.s, &q, &l));
        /* find a row for this fixture via its config, then its file */
        for (size_t k = 0; k < actl_entries_count(l); k++) {
            const actl_entry *e = actl_entries_get(l, k);
            if (strcmp(e->config, actl_adapter_config(a)) == 0) {
                char *pf = pack_file(&f, e->pack);
                stored += (uint64_t)file_size(pf);
                free(pf);
                break;
            }
        }
        actl_entries_free(l);
        actl_adapter_free(a);
    }
    assert_ok(actl_store_stats_get(f.s, &st));
    assert_int_equal(st.adapters, 4);  /* a b c d */
    assert_int_equal(st.versions, 7);
    assert_int_equal(st.packs, 4);
    assert_true(st.raw_bytes == raw);
    assert_true(st.stored_bytes == stored);
    assert_err(actl_store_stats_get(f.s, NULL), ACTL_EINVAL, "NULL");
    test_fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open__creates_the_layout_and_reopens),
        cmocka_unit_test(test_open__absent_store_without_create_is_ENOTFOUND),
        cmocka_unit_test(test_open__a_file_in_the_way_is_EIO),
        cmocka_unit_test(test_open__refuses_a_newer_schema),
        cmocka_unit_test(test_open__a_newer_schema_is_refused_before_any_change),
        cmocka_unit_test(test_open__connections_are_defensive_and_distrust_the_schema),
        cmocka_unit_test(test_open__not_a_database_is_EFORMAT),
        cmocka_unit_test(test_migrate__names_start_from_the_versions_present),
        cmocka_unit_test(test_migrate__applies_pending_migrations_once_in_order),
        cmocka_unit_test(test_migrate__a_failing_migration_changes_nothing),
        cmocka_unit_test(test_migrate__refuses_a_gap_in_the_numbers),
        cmocka_unit_test(test_migrate__embedded_list_matches_schema_dir),
        cmocka_unit_test(test_open__concurrent_first_opens_migrate_once),
        cmocka_unit_test(test_default_path__follows_the_variables_in_order),
        cmocka_unit_test(test_default_path__open_null_uses_it),
        cmocka_unit_test(test_name_check__accepts_the_grammar),
        cmocka_unit_test(test_name_check__rejects_hostile_names),
        cmocka_unit_test(test_quote__cuts_long_input),
        cmocka_unit_test(test_ref_parse__name_and_version),
        cmocka_unit_test(test_ref_parse__rejects_bad_refs),
        cmocka_unit_test(test_tags__rejects_bad_tags),
        cmocka_unit_test(test_add__records_the_facts_of_every_fixture),
        cmocka_unit_test(test_add__tensor_index_rows_match_the_tensors),
        cmocka_unit_test(test_add__refuses_c1_controls_in_free_text),
        cmocka_unit_test(test_add__automatic_versions_are_never_reused_after_rm),
        cmocka_unit_test(test_add__versions_count_up_unless_given),
        cmocka_unit_test(test_add__identical_adds_share_one_pack),
        cmocka_unit_test(test_add__refuses_bad_options_before_writing),
        cmocka_unit_test(test_add__base_model_from_config_unless_given),
        cmocka_unit_test(test_show__newest_exact_and_missing),
        cmocka_unit_test(test_list__every_filter_limit_and_offset),
        cmocka_unit_test(test_list__matches_brute_force_on_every_plan),
        cmocka_unit_test(test_list__refuses_bad_queries),
        cmocka_unit_test(test_tag__sets_replaces_and_unsets_in_one_call),
        cmocka_unit_test(test_rm__removes_rows_and_tags_and_gc_the_pack),
        cmocka_unit_test(test_gc__removes_orphan_files_and_temporaries_only),
        cmocka_unit_test(test_gc__waits_for_an_add_in_progress_and_keeps_its_pack),
        cmocka_unit_test(test_verify__an_rm_and_gc_meanwhile_report_nothing),
        cmocka_unit_test(test_load__a_removal_meanwhile_is_reported_as_such),
        cmocka_unit_test(test_gc__a_killed_add_releases_the_lock),
        cmocka_unit_test(test_add_pack__moves_the_file_in_and_records_the_rows),
        cmocka_unit_test(test_add_pack__shares_an_intact_pack_and_replaces_a_damaged_one),
        cmocka_unit_test(test_add_pack__without_a_file_uses_the_pack_in_place),
        cmocka_unit_test(test_has_pack__needs_both_the_row_and_the_file),
        cmocka_unit_test(test_gc__removes_abandoned_partial_downloads_only),
        cmocka_unit_test(test_verify__a_good_store_is_clean),
        cmocka_unit_test(test_verify__reports_a_flipped_byte),
        cmocka_unit_test(test_verify__reports_a_deleted_pack),
        cmocka_unit_test(test_verify__reports_each_column_that_differs_from_the_pack),
        cmocka_unit_test(test_verify__checks_kind_and_json_of_rows_of_a_damaged_pack),
        cmocka_unit_test(test_add__repairs_a_damaged_pack_it_would_share),
        cmocka_unit_test(test_verify__reports_a_row_whose_sizes_lie),
        cmocka_unit_test(test_verify__reports_tensor_index_rows_that_differ),
        cmocka_unit_test(test_verify__reports_dangling_foreign_keys),
        cmocka_unit_test(test_export__identical_tensors_for_every_fixture),
        cmocka_unit_test(test_stats__match_independent_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
