/* test_stack.c: the store side of issue 5: schema 0004 (a store made with
 * schema 3 migrates with its rows, ids and tags intact and no broken
 * reference; a migration that would break one is refused), lineage (stored
 * verbatim, refused unless a JSON object), and stacks: add (kind, members,
 * sizes, modules, base, recipe and lineage), list/show/tag, load refused,
 * rm, gc keeping member packs alive after their adapters are removed (and
 * waiting for a stack add in progress), stats, verify naming each problem,
 * and export as one PEFT directory per member plus stack.json.
 *
 * Expectations come from the fixtures themselves (loaded from their
 * directories), the files on disk (stat, a SHA-256 by sha256sum) and SQL run
 * behind the library's back, never from the code under test. */
#include "testutil.h"

#include <math.h>
#include <sys/file.h>
#include <time.h>

#include <jansson.h>
#include <sqlite3.h>

#include "internal.h"

#define ADAPTERS FIXTURES "/adapters/base-tiny"
#define BASE_ID "adapterctl/base-tiny" /* every base-tiny fixture's base_model_name_or_path */

/* ---- helpers ---------------------------------------------------------------- */

static sqlite3 *db_open(const char *store)
{
    char *path = test_join(store, "catalog.db");
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    free(path);
    return db;
}

/* Runs SQL on the store's catalogue behind the library's back. */
static void sql_exec(const char *store, const char *sql)
{
    sqlite3 *db = db_open(store);
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", sql, err);
    sqlite3_close(db);
}

/* The SQLite result code of running sql with foreign keys on. */
static int sql_try_fk(const char *store, const char *sql)
{
    sqlite3 *db = db_open(store);
    assert_int_equal(sqlite3_exec(db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL), SQLITE_OK);
    int r = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return r;
}

static int64_t sql_int(const char *store, const char *sql)
{
    sqlite3 *db = db_open(store);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static actl_adapter *fixture(const char *name) { return test_load_fixture("base-tiny", name); }

static void add_fixture(actl_store *s, const char *fixture_name, const char *name)
{
    actl_adapter *a = fixture(fixture_name);
    actl_add_opts o = actl_add_default_opts();
    o.name = name;
    assert_ok(actl_store_add(s, a, &o, NULL));
    actl_adapter_free(a);
}

/* The entry's pack digest, copied. */
static void pack_of(actl_store *s, const char *ref, char hex[65])
{
    actl_entries *l = NULL;
    assert_ok(actl_store_show(s, ref, &l));
    assert_non_null(actl_entries_get(l, 0)->pack);
    snprintf(hex, 65, "%s", actl_entries_get(l, 0)->pack);
    actl_entries_free(l);
}

static char *pack_file(const test_fx *f, const char *hex)
{
    char *obj = test_join(f->store, "objects");
    char *p = actl__pack_path(obj, hex);
    free(obj);
    return p;
}

/* Pack files under objects/ (temporary files excluded). */
static size_t count_packs(const test_fx *f)
{
    char *obj = test_join(f->store, "objects"), *tmp = test_join(obj, "tmp");
    size_t n = test_count_files(obj) - test_count_files(tmp);
    free(tmp);
    free(obj);
    return n;
}

/* A list of specs (e.g. {"a", ADAPTERS "/lora-f16", ...}) with weights, loaded. */
static actl_inputs *inputs_of(actl_store *s, const char *const *refs, const double *w, size_t n)
{
    actl_inputs *l = NULL;
    assert_ok(actl_inputs_new(&l));
    for (size_t i = 0; i < n; i++) {
        int rc = actl_inputs_add(l, s, refs[i], w[i]);
        if (rc)
            fail_msg("input %s: %s", refs[i], actl_errmsg());
    }
    return l;
}

static int add_stack(actl_store *s, actl_inputs *l, const char *name, actl_entries **out)
{
    size_t n;
    const actl_input *in = actl_inputs_items(l, &n);
    actl_add_opts o = actl_add_default_opts();
    o.name = name;
    return actl_store_add_stack(s, in, n, &o, out);
}

/* The standard store of these tests: a (lora), b (road-2), c (bottleneck-series)
 * and st = [a:1, b:0.5, <dir lora-f16>:2, a:-1]. */
static const char *const st_refs[] = {"a", "b", ADAPTERS "/lora-f16", "a"};
static const double st_w[] = {1, 0.5, 2, -1};
static const char *const st_fixtures[] = {"lora", "road-2", "lora-f16", "lora"};
static const char *const st_member_refs[] = {"a@1", "b@1", ADAPTERS "/lora-f16", "a@1"};
static const char *const st_kinds[] = {"lora", "road", "lora", "lora"};
#define ST_N 4

static test_fx stack_store(void)
{
    test_fx f = test_fx_new();
    add_fixture(f.s, "lora", "a");
    add_fixture(f.s, "road-2", "b");
    add_fixture(f.s, "bottleneck-series", "c");
    actl_inputs *l = inputs_of(f.s, st_refs, st_w, ST_N);
    assert_ok(add_stack(f.s, l, "st", NULL));
    actl_inputs_free(l);
    return f;
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

static size_t verify_into(actl_store *s, problems *p)
{
    size_t n = 999;
    memset(p, 0, sizeof *p);
    assert_ok(actl_store_verify(s, collect, p, &n));
    assert_int_equal(n, p->n);
    return n;
}

static void assert_verify_clean(actl_store *s)
{
    problems p;
    if (verify_into(s, &p) != 0) {
        for (size_t i = 0; i < p.n && i < 32; i++)
            print_message("  problem: %s\n", p.msgs[i]);
        fail_msg("verify found %zu problems", p.n);
    }
}

/* ---- migration from schema 3 ------------------------------------------------ */

/* A catalogue as adapterctl wrote it before 0004: migrations 1-3 run by
 * SQLite directly, two packs, two adapters (ids 7 and 9) and three tags. */
static char *schema3_store(void)
{
    char *dir = test_tmpdir();
    char *obj = test_join(dir, "objects");
    assert_int_equal(mkdir(obj, 0755), 0);
    free(obj);
    sqlite3 *db = db_open(dir);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(actl__migrations[i].number, (int)i + 1);
        char *err = NULL;
        if (sqlite3_exec(db, actl__migrations[i].sql, NULL, NULL, &err) != SQLITE_OK)
            fail_msg("%s: %s", actl__migrations[i].name, err);
    }
    char *sql = actl__strdup_printf(
        "PRAGMA foreign_keys = ON;"
        "INSERT INTO packs VALUES ('%s', 10, 20, 1), ('%s', 30, 40, 2);"
        "INSERT INTO adapters (id, name, version, kind, base_model, rank, variant, group_size, "
        "target_modules, config, raw_bytes, stored_bytes, pack, source, description, created) "
        "VALUES (7, 'x', 1, 'lora', 'base/x', 8, NULL, 0, '[\"m.q\"]', '{\"r\":8}', 20, 10, "
        "'%s', '/src/x', 'first', 100),"
        "(9, 'y', 2, 'road', NULL, 0, 'road_1', 4, '[\"m.v\"]', '{}', 40, 30, '%s', NULL, NULL, "
        "200);"
        "INSERT INTO names VALUES ('x', 1), ('y', 3);"
        "INSERT INTO tags VALUES (7, 'task', 'gsm8k'), (7, 'user', 'alice'), (9, 'task', 'qa');"
        "PRAGMA user_version = 3;",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s", err);
    free(sql);
    sqlite3_close(db);
    return dir;
}

static int migration_number(const char *name)
{
    for (size_t i = 0; i < actl__migration_count; i++)
        if (strcmp(actl__migrations[i].name, name) == 0)
            return actl__migrations[i].number;
    fail_msg("no migration %s", name);
    return 0;
}

static void test_migrate__a_schema_3_store_keeps_rows_ids_and_tags(void **state)
{
    (void)state;
    char *dir = schema3_store();
    actl_store *s = NULL;
    assert_ok(actl_store_open(dir, 0, &s));
    assert_true(actl_store_schema_version(s) >= migration_number("0004_lineage_stacks"));
    assert_int_equal(sql_int(dir, "SELECT count(*) FROM pragma_foreign_key_check"), 0);
    /* the rows, with their ids, every column and their tags */
    assert_int_equal(sql_int(dir, "SELECT id FROM adapters WHERE name = 'x'"), 7);
    assert_int_equal(sql_int(dir, "SELECT id FROM adapters WHERE name = 'y'"), 9);
    actl_entries *l = NULL;
    assert_ok(actl_store_show(s, "x", &l));
    const actl_entry *e = actl_entries_get(l, 0);
    assert_int_equal(e->version, 1);
    assert_int_equal(e->kind, ACTL_KIND_LORA);
    assert_string_equal(e->base_model, "base/x");
    assert_int_equal(e->rank, 8);
    assert_string_equal(e->target_modules, "[\"m.q\"]");
    assert_string_equal(e->config, "{\"r\":8}");
    assert_true(e->raw_bytes == 20 && e->stored_bytes == 10 && e->created == 100);
    assert_string_equal(e->source, "/src/x");
    assert_string_equal(e->description, "first");
    assert_null(e->lineage);
    assert_int_equal(e->tag_count, 2);
    assert_string_equal(e->tag_keys[0], "task");
    assert_string_equal(e->tag_values[0], "gsm8k");
    assert_string_equal(e->tag_keys[1], "user");
    assert_string_equal(e->tag_values[1], "alice");
    actl_entries_free(l);
    assert_ok(actl_store_show(s, "y@2", &l));
    e = actl_entries_get(l, 0);
    assert_string_equal(e->variant, "road_1");
    assert_int_equal(e->group_size, 4);
    assert_int_equal(e->tag_count, 1);
    actl_entries_free(l);
    /* the indexes are back, and the new table's */
    assert_int_equal(sql_int(dir, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND "
                                  "name IN ('adapters_kind', 'adapters_base_model', "
                                  "'adapters_pack', 'stack_members_pack')"),
                     4);
    assert_int_equal(sql_int(dir, "SELECT count(*) FROM sqlite_master WHERE name = "
                                  "'adapters_new'"),
                     0);
    /* tags still refer to adapters: a dangling tag is refused, and rm cascades */
    assert_int_equal(sql_try_fk(dir, "INSERT INTO tags VALUES (424242, 'k', 'v')") & 0xff,
                     SQLITE_CONSTRAINT);
    assert_ok(actl_store_rm(s, "x@1"));
    assert_int_equal(sql_int(dir, "SELECT count(*) FROM tags WHERE adapter_id = 7"), 0);
    assert_int_equal(sql_int(dir, "SELECT count(*) FROM tags WHERE adapter_id = 9"), 1);
    /* a row without a pack is a stack's privilege */
    assert_int_equal(sql_try_fk(dir, "INSERT INTO adapters (name, version, kind, target_modules, "
                                      "config, raw_bytes, stored_bytes, pack, created) VALUES "
                                      "('z', 1, 'lora', '[]', '{}', 0, 0, NULL, 0)") & 0xff,
                     SQLITE_CONSTRAINT);
    assert_int_equal(sql_try_fk(dir, "INSERT INTO adapters (name, version, kind, target_modules, "
                                      "config, raw_bytes, stored_bytes, pack, created) VALUES "
                                      "('z', 1, 'stack', '[]', '{}', 0, 0, NULL, 0)"),
                     SQLITE_OK);
    actl_store_close(s);
    test_rmtree(dir);
    free(dir);
}

/* A migration that leaves rows naming missing rows is rolled back whole, and
 * the connection's foreign keys are on again afterwards. */
static void test_migrate__a_migration_breaking_references_is_refused(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    add_fixture(f.s, "lora", "a");
    assert_ok(actl_store_tag(f.s, "a", (const char *const[]){"k=v", NULL}, NULL));
    size_t n = actl__migration_count;
    actl__migration list[32];
    assert_true(n + 1 <= 32);
    memcpy(list, actl__migrations, n * sizeof list[0]);
    list[n] = (actl__migration){(int)n + 1, "bad", "CREATE TABLE extra (x); DELETE FROM adapters;"};
    assert_err(actl__store_migrate(f.s, list, n + 1), ACTL_EINVAL, "foreign_key_check");
    assert_int_equal(sql_int(f.store, "PRAGMA user_version"), (int64_t)n);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM adapters"), 1);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM tags"), 1);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM sqlite_master WHERE name = 'extra'"),
                     0);
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(f.s->db, "PRAGMA foreign_keys", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    test_fx_free(&f);
}

/* ---- lineage ---------------------------------------------------------------- */

static void test_lineage__round_trips_verbatim_through_show_and_list(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    static const char lineage[] =
        "{\"method\": \"svd\", \"inputs\": [{\"ref\": \"m@1\", \"pack\": null, \"weight\": 0.5}],"
        " \"options\": {\"rank\": 4, \"seed\": 7}, \"exact\": false, \"error\": {\"overall\": "
        "0.125, \"modules\": {\"q\": 0.125}}}";
    actl_adapter *a = fixture("lora");
    actl_add_opts o = actl_add_default_opts();
    o.name = "composed";
    o.lineage = lineage;
    actl_entries *l = NULL;
    assert_ok(actl_store_add(f.s, a, &o, &l));
    assert_string_equal(actl_entries_get(l, 0)->lineage, lineage);
    actl_entries_free(l);
    assert_ok(actl_store_show(f.s, "composed@1", &l));
    assert_string_equal(actl_entries_get(l, 0)->lineage, lineage);
    actl_entries_free(l);
    o.name = "plain";
    o.lineage = NULL;
    assert_ok(actl_store_add(f.s, a, &o, NULL));
    actl_query q = actl_query_default();
    assert_ok(actl_store_list(f.s, &q, &l));
    assert_int_equal(actl_entries_count(l), 2);
    assert_string_equal(actl_entries_get(l, 0)->lineage, lineage);
    assert_null(actl_entries_get(l, 1)->lineage);
    actl_entries_free(l);
    assert_verify_clean(f.s);
    actl_adapter_free(a);
    test_fx_free(&f);
}

static void test_lineage__refuses_anything_but_a_json_object_before_writing(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[1, 2]", "is not a JSON object"},
        {"\"svd\"", "lineage of 'x'"},
        {"{\"method\": ", "is not valid JSON"},
        {"{\"a\": 1, \"a\": 2}", "is not valid JSON"},
        {"{} {}", "is not valid JSON"},
        {"{\"m\": \"\xff\"}", "is not valid JSON"},
    };
    actl_adapter *a = fixture("lora");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        actl_add_opts o = actl_add_default_opts();
        o.name = "x";
        o.lineage = cases[i].text;
        actl_entries *l = (actl_entries *)1;
        assert_err(actl_store_add(f.s, a, &o, &l), ACTL_EINVAL, cases[i].want);
        assert_true(strstr(actl_errmsg(), "lineage of 'x'") != NULL);
        assert_null(l);
    }
    assert_int_equal(count_packs(&f), 0);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM adapters"), 0);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* ---- stacks: add, list, show, load ---------------------------------------- */

static int cmp_strp(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* The union of the fixtures' module names, sorted, as the JSON text
 * ["a","b"] written out here by hand. */
static char *union_modules_json(const char *const *fixtures, size_t n)
{
    const char *names[256];
    size_t k = 0;
    actl_adapter *ads[8];
    for (size_t i = 0; i < n; i++) {
        ads[i] = fixture(fixtures[i]);
        for (size_t j = 0; j < actl_adapter_module_count(ads[i]); j++) {
            actl_module_info mi;
            assert_ok(actl_adapter_module(ads[i], j, &mi));
            bool seen = false;
            for (size_t m = 0; m < k; m++)
                seen = seen || strcmp(names[m], mi.name) == 0;
            if (!seen)
                names[k++] = mi.name;
        }
    }
    qsort(names, k, sizeof names[0], cmp_strp);
    char *out = malloc(16384);
    size_t o = 0;
    out[o++] = '[';
    for (size_t m = 0; m < k; m++)
        o += (size_t)snprintf(out + o, 16384 - o, "%s\"%s\"", m ? "," : "", names[m]);
    snprintf(out + o, 16384 - o, "]");
    for (size_t i = 0; i < n; i++)
        actl_adapter_free(ads[i]);
    return out;
}

/* JSON members list [{"kind","pack","ref","weight"}...] against the expectation. */
static void assert_members_json(const json_t *arr, const char hex[ST_N][65])
{
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), ST_N);
    for (size_t i = 0; i < ST_N; i++) {
        const json_t *m = json_array_get(arr, i);
        assert_string_equal(json_string_value(json_object_get(m, "ref")), st_member_refs[i]);
        assert_string_equal(json_string_value(json_object_get(m, "kind")), st_kinds[i]);
        assert_string_equal(json_string_value(json_object_get(m, "pack")), hex[i]);
        assert_true(json_is_real(json_object_get(m, "weight")));
        assert_true(json_real_value(json_object_get(m, "weight")) == st_w[i]);
    }
}

static void test_stack__add_records_members_sizes_modules_recipe_and_lineage(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    add_fixture(f.s, "lora", "a");
    add_fixture(f.s, "road-2", "b");
    actl_inputs *l = inputs_of(f.s, st_refs, st_w, ST_N);
    size_t n;
    const actl_input *in = actl_inputs_items(l, &n);
    assert_null(in[2].pack); /* the directory member has no pack yet */
    actl_entries *out = NULL;
    assert_ok(add_stack(f.s, l, "st", &out));
    const actl_entry *e = actl_entries_get(out, 0);
    assert_string_equal(e->name, "st");
    assert_int_equal(e->version, 1);
    assert_int_equal(e->kind, ACTL_KIND_STACK);
    assert_null(e->pack);
    assert_int_equal(e->rank, 0);
    assert_null(e->variant);
    assert_int_equal(e->group_size, 0);
    assert_string_equal(e->base_model, BASE_ID);

    /* members' packs: a and b from their entries, the directory's as written now */
    char hex[ST_N][65];
    pack_of(f.s, "a", hex[0]);
    pack_of(f.s, "b", hex[1]);
    memcpy(hex[3], hex[0], 65);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM stack_members"), ST_N);
    {
        sqlite3 *db = db_open(f.store);
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT position, pack, weight, member_ref, "
                                            "member_kind FROM stack_members ORDER BY position",
                                            -1, &st, NULL),
                         SQLITE_OK);
        for (size_t i = 0; i < ST_N; i++) {
            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            assert_int_equal(sqlite3_column_int(st, 0), (int)i + 1);
            if (i == 2)
                snprintf(hex[2], 65, "%s", (const char *)sqlite3_column_text(st, 1));
            assert_string_equal((const char *)sqlite3_column_text(st, 1), hex[i]);
            assert_true(sqlite3_column_double(st, 2) == st_w[i]);
            assert_string_equal((const char *)sqlite3_column_text(st, 3), st_member_refs[i]);
            assert_string_equal((const char *)sqlite3_column_text(st, 4), st_kinds[i]);
        }
        sqlite3_finalize(st);
        sqlite3_close(db);
    }
    /* the directory's pack: a file whose SHA-256 is its name, with its rows */
    char *p2 = pack_file(&f, hex[2]), sum[65];
    test_sha256sum(p2, sum);
    assert_string_equal(sum, hex[2]);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pack_tensors WHERE pack = '%s'", hex[2]);
    actl_adapter *f16 = fixture("lora-f16");
    assert_int_equal(sql_int(f.store, sql), (int64_t)actl_adapter_tensor_count(f16));
    actl_adapter_free(f16);

    /* sizes: sums over the members, each as often as it appears */
    uint64_t raw = 0, stored = 0;
    for (size_t i = 0; i < ST_N; i++) {
        actl_adapter *a = fixture(st_fixtures[i]);
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        raw += info.bytes;
        actl_adapter_free(a);
        char *p = pack_file(&f, hex[i]);
        stored += test_file_size(p);
        free(p);
    }
    assert_true(e->raw_bytes == raw);
    assert_true(e->stored_bytes == stored);

    char *want_modules = union_modules_json(st_fixtures, ST_N);
    assert_string_equal(e->target_modules, want_modules);
    free(want_modules);

    json_t *cfg = json_loads(e->config, 0, NULL), *lin = json_loads(e->lineage, 0, NULL);
    assert_non_null(cfg);
    assert_non_null(lin);
    assert_members_json(json_object_get(cfg, "members"), (const char(*)[65])hex);
    assert_string_equal(json_string_value(json_object_get(lin, "method")), "stack");
    assert_members_json(json_object_get(lin, "inputs"), (const char(*)[65])hex);
    json_decref(cfg);
    json_decref(lin);
    assert_verify_clean(f.s);
    free(p2);
    actl_entries_free(out);
    actl_inputs_free(l);
    test_fx_free(&f);
}

/* A tiny LoRA whose config names base `base` (NULL: none). */
static actl_adapter *tiny_lora(const char *base)
{
    float a[4 * 16] = {0}, b[16 * 4] = {0};
    for (int i = 0; i < 64; i++)
        a[i] = (float)i / 64, b[i] = (float)(64 - i) / 64;
    int64_t sa[2] = {4, 16}, sb[2] = {16, 4};
    actl_tensor *ta = NULL, *tb = NULL;
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                              ACTL_F32, 2, sa, a, &ta));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                              ACTL_F32, 2, sb, b, &tb));
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": "
             "[\"q_proj\"]%s%s%s}",
             base ? ", \"base_model_name_or_path\": \"" : "", base ? base : "", base ? "\"" : "");
    const actl_tensor *ts[2] = {ta, tb};
    actl_adapter *ad = NULL;
    assert_ok(actl_adapter_new(cfg, ts, 2, "tiny", &ad));
    actl_tensor_free(ta);
    actl_tensor_free(tb);
    return ad;
}

static void test_stack__base_model_is_the_members_common_one_or_the_callers(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    actl_adapter *other = tiny_lora("other/base"), *none = tiny_lora(NULL);
    actl_adapter *lora = fixture("lora");
    actl_add_opts o = actl_add_default_opts();
    actl_entries *l = NULL;
    /* agreeing members, and one that names no base: the common base */
    actl_input agree[2] = {{lora, 1, "lora-dir", NULL}, {none, 1, "none-dir", NULL}};
    o.name = "agree";
    assert_ok(actl_store_add_stack(f.s, agree, 2, &o, &l));
    assert_string_equal(actl_entries_get(l, 0)->base_model, BASE_ID);
    actl_entries_free(l);
    /* members made for different bases are refused, naming both, and nothing is written */
    actl_input differ[3] = {{lora, 1, "lora-dir", NULL},
                            {none, 1, "none-dir", NULL},
                            {other, 1, "other-dir", NULL}};
    o.name = "differ";
    l = (actl_entries *)1;
    assert_err(actl_store_add_stack(f.s, differ, 3, &o, &l), ACTL_EINVAL,
               "stack 'differ': members were made for different base models: member 1 "
               "'lora-dir' for '" BASE_ID "', member 3 'other-dir' for 'other/base'");
    assert_null(l);
    assert_int_equal(count_packs(&f), 2);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM adapters WHERE name = 'differ'"), 0);
    /* the caller's word wins: it asserts the base */
    o.name = "given";
    o.base_model = "my/base";
    assert_ok(actl_store_add_stack(f.s, differ, 3, &o, &l));
    assert_string_equal(actl_entries_get(l, 0)->base_model, "my/base");
    /* and a lineage the caller passes does not replace the recipe */
    actl_entries_free(l);
    o.name = "recipe";
    o.lineage = "{\"method\": \"something else\"}";
    assert_ok(actl_store_add_stack(f.s, differ, 3, &o, &l));
    json_t *lin = json_loads(actl_entries_get(l, 0)->lineage, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(lin, "method")), "stack");
    json_decref(lin);
    actl_entries_free(l);
    /* identical members share one pack: two files for three adapters */
    assert_int_equal(count_packs(&f), 3);
    assert_verify_clean(f.s);
    actl_adapter_free(other);
    actl_adapter_free(none);
    actl_adapter_free(lora);
    test_fx_free(&f);
}

static void test_stack__list_show_tag_and_versions(void **state)
{
    (void)state;
    test_fx f = stack_store();
    actl_entries *l = NULL;
    actl_query q = actl_query_default();
    assert_ok(actl_store_list(f.s, &q, &l));
    assert_int_equal(actl_entries_count(l), 4);
    assert_string_equal(actl_entries_get(l, 3)->name, "st");
    assert_int_equal(actl_entries_get(l, 3)->kind, ACTL_KIND_STACK);
    actl_entries_free(l);
    q.kind = ACTL_KIND_STACK;
    assert_ok(actl_store_list(f.s, &q, &l));
    assert_int_equal(actl_entries_count(l), 1);
    assert_string_equal(actl_entries_get(l, 0)->name, "st");
    actl_entries_free(l);
    /* versions count up as for adapters; an existing one is EEXIST */
    actl_inputs *in = inputs_of(f.s, (const char *const[]){"b", "a"}, (const double[]){1, 1}, 2);
    actl_entries *e = NULL;
    assert_ok(add_stack(f.s, in, "st", &e));
    assert_int_equal(actl_entries_get(e, 0)->version, 2);
    actl_entries_free(e);
    size_t n;
    const actl_input *items = actl_inputs_items(in, &n);
    actl_add_opts o = actl_add_default_opts();
    o.name = "st";
    o.version = 1;
    assert_err(actl_store_add_stack(f.s, items, n, &o, NULL), ACTL_EEXIST, "'st@1' already exists");
    assert_ok(actl_store_tag(f.s, "st@1", (const char *const[]){"task=mix", NULL}, NULL));
    assert_ok(actl_store_show(f.s, "st@1", &l));
    assert_int_equal(actl_entries_get(l, 0)->tag_count, 1);
    assert_string_equal(actl_entries_get(l, 0)->tag_values[0], "mix");
    actl_entries_free(l);
    actl_inputs_free(in);
    test_fx_free(&f);
}

static void test_stack__load_is_refused_saying_it_is_a_stack(void **state)
{
    (void)state;
    test_fx f = stack_store();
    actl_adapter *a = (actl_adapter *)1;
    assert_err(actl_store_load(f.s, "st", &a), ACTL_EUNSUPPORTED,
               "'st@1' is a stack of 4 adapters; merge or export it, or load its members");
    assert_null(a);
    actl_inputs *in = inputs_of(f.s, (const char *const[]){"c"}, (const double[]){1}, 1);
    assert_ok(add_stack(f.s, in, "one", NULL));
    assert_err(actl_store_load(f.s, "one@1", &a), ACTL_EUNSUPPORTED, "a stack of 1 adapter;");
    /* the member helper refuses what is not a stack */
    actl__stack_member *m = NULL;
    size_t n = 0;
    char label[ACTL__LABEL_CAP];
    assert_err(actl__store_stack_members(f.s, "c", label, &m, &n), ACTL_EINVAL,
               "'c@1' is not a stack");
    assert_err(actl__store_stack_members(f.s, "zz", label, &m, &n), ACTL_ENOTFOUND, "'zz'");
    assert_null(m);
    actl_inputs_free(in);
    test_fx_free(&f);
}

static void test_stack__add_refusals_write_nothing(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    actl_adapter *a = fixture("lora");
    actl_input good = {a, 1, "dir-a", NULL};
    actl_add_opts o = actl_add_default_opts();
    o.name = "st";
    actl_entries *l = (actl_entries *)1;
    assert_err(actl_store_add_stack(f.s, &good, 0, &o, &l), ACTL_EINVAL, "'st' has no members");
    assert_null(l);
    actl_input bad = good;
    bad.weight = NAN;
    assert_err(actl_store_add_stack(f.s, &bad, 1, &o, NULL), ACTL_EINVAL,
               "member 1 'dir-a': weight nan is not finite");
    bad = good;
    bad.pack = "ABC";
    assert_err(actl_store_add_stack(f.s, &bad, 1, &o, NULL), ACTL_EINVAL, "not a SHA-256");
    bad = good;
    bad.adapter = NULL;
    assert_err(actl_store_add_stack(f.s, &bad, 1, &o, NULL), ACTL_EINVAL, "member 1 has no");
    bad = good;
    bad.ref = "line\nbreak";
    assert_err(actl_store_add_stack(f.s, &bad, 1, &o, NULL), ACTL_EINVAL, "control character");
    o.name = "-bad";
    assert_err(actl_store_add_stack(f.s, &good, 1, &o, NULL), ACTL_EINVAL, "invalid adapter name");
    o.name = "st";
    o.tags = (const char *const[]){"novalue", NULL};
    assert_err(actl_store_add_stack(f.s, &good, 1, &o, NULL), ACTL_EINVAL, "KEY=VALUE");
    o.tags = NULL;
    o.lineage = "[]";
    assert_err(actl_store_add_stack(f.s, &good, 1, &o, NULL), ACTL_EINVAL, "not a JSON object");
    o.lineage = NULL;
    assert_err(actl_store_add_stack(NULL, &good, 1, &o, NULL), ACTL_EINVAL, "NULL");
    assert_err(actl_store_add_stack(f.s, NULL, 1, &o, NULL), ACTL_EINVAL, "NULL");
    assert_err(actl_store_add_stack(f.s, &good, 1, NULL, NULL), ACTL_EINVAL, "NULL");
    assert_int_equal(count_packs(&f), 0);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM adapters"), 0);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM packs"), 0);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM stack_members"), 0);
    actl_adapter_free(a);
    test_fx_free(&f);
}

/* ---- rm, gc, stats ---------------------------------------------------------- */

static void test_stack__rm_of_a_stack_removes_its_rows_only(void **state)
{
    (void)state;
    test_fx f = stack_store();
    assert_ok(actl_store_tag(f.s, "st", (const char *const[]){"k=v", NULL}, NULL));
    int64_t packs = sql_int(f.store, "SELECT count(*) FROM packs");
    assert_ok(actl_store_rm(f.s, "st"));
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM stack_members"), 0);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM tags"), 0);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM adapters"), 3);
    assert_int_equal(sql_int(f.store, "SELECT count(*) FROM packs"), packs);
    /* gc then takes only the directory member's pack, which nothing else uses */
    actl_gc_result g;
    assert_ok(actl_store_gc(f.s, &g));
    assert_int_equal(g.packs_removed, 1);
    assert_int_equal(count_packs(&f), 3);
    actl_adapter *a = NULL;
    assert_ok(actl_store_load(f.s, "a", &a));
    actl_adapter_free(a);
    assert_verify_clean(f.s);
    test_fx_free(&f);
}

/* rm of the adapters a stack was made from is allowed, and the stack stays
 * whole: gc keeps every member pack, the stack expands and verifies, until
 * the stack itself goes. (With gc blind to stack_members, the first gc
 * removes two packs and everything after fails.) */
static void test_stack__gc_keeps_member_packs_after_their_adapters_are_removed(void **state)
{
    (void)state;
    test_fx f = stack_store();
    assert_int_equal(count_packs(&f), 4); /* a, b, c and the directory's */
    assert_ok(actl_store_rm(f.s, "a"));
    assert_ok(actl_store_rm(f.s, "b"));
    assert_ok(actl_store_rm(f.s, "c"));
    actl_gc_result g;
    assert_ok(actl_store_gc(f.s, &g));
    assert_int_equal(g.packs_removed, 1); /* c's, which no stack uses */
    assert_int_equal(count_packs(&f), 3);
    assert_verify_clean(f.s);
    actl_inputs *l = NULL;
    assert_ok(actl_inputs_new(&l));
    assert_ok(actl_inputs_add(l, f.s, "st", 1));
    size_t n;
    const actl_input *in = actl_inputs_items(l, &n);
    assert_int_equal(n, ST_N);
    for (size_t i = 0; i < ST_N; i++) {
        actl_adapter *want = fixture(st_fixtures[i]);
        test_assert_same_tensors(in[i].adapter, want);
        actl_adapter_free(want);
    }
    actl_inputs_free(l);
    actl_store_stats st;
    assert_ok(actl_store_stats_get(f.s, &st));
    assert_int_equal(st.versions, 1);
    assert_int_equal(st.packs, 3);
    assert_ok(actl_store_rm(f.s, "st"));
    assert_ok(actl_store_gc(f.s, &g));
    assert_int_equal(g.packs_removed, 3);
    assert_int_equal(count_packs(&f), 0);
    assert_verify_clean(f.s);
    test_fx_free(&f);
}

/* Packs count once whoever uses them: stats against distinct fixtures' bytes
 * and the files on disk. */
static void test_stack__stats_count_member_packs_once(void **state)
{
    (void)state;
    test_fx f = stack_store();
    actl_store_stats st;
    assert_ok(actl_store_stats_get(f.s, &st));
    const char *distinct[] = {"lora", "road-2", "bottleneck-series", "lora-f16"};
    uint64_t raw = 0;
    for (size_t i = 0; i < 4; i++) {
        actl_adapter *a = fixture(distinct[i]);
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        raw += info.bytes;
        actl_adapter_free(a);
    }
    /* stored: every pack file's size, from the disk */
    uint64_t stored = 0;
    sqlite3 *db = db_open(f.store);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT digest FROM packs", -1, &q, NULL), SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
        char *p = pack_file(&f, (const char *)sqlite3_column_text(q, 0));
        stored += test_file_size(p);
        free(p);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    assert_int_equal(st.adapters, 4);
    assert_int_equal(st.versions, 4);
    assert_int_equal(st.packs, 4);
    assert_true(st.raw_bytes == raw);
    assert_true(st.stored_bytes == stored);
    test_fx_free(&f);
}

/* The add hook of the stack add below: tells the parent the member pack is
 * in objects/ with no row yet, then waits for its word. */
static int g_to_parent = -1, g_from_parent = -1;

static void pause_stack_add(const char *point)
{
    char c = 'w';
    if (strcmp(point, "add") != 0)
        return;
    if (write(g_to_parent, &c, 1) != 1 || read(g_from_parent, &c, 1) != 1)
        _exit(30);
}

static int wait_bounded(pid_t pid, int seconds)
{
    int st = 0;
    for (int i = 0; i < seconds * 100; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* A stack add from a directory writes its member's pack before its rows: a
 * gc started meanwhile waits for it and then keeps that pack. (Without the
 * add's lock, gc deletes the pack during the pause: `blocked` and the
 * expansion below fail.) */
static void test_stack__gc_waits_for_a_stack_add_in_progress(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    int to_child[2], to_parent[2];
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(to_parent), 0);
    pid_t adder = fork();
    assert_true(adder >= 0);
    if (adder == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        g_to_parent = to_parent[1];
        g_from_parent = to_child[0];
        actl__store_test_pause = pause_stack_add;
        actl_store *s = NULL;
        actl_inputs *l = NULL;
        int rc = actl_store_open(f.store, 0, &s);
        if (!rc)
            rc = actl_inputs_new(&l);
        if (!rc)
            rc = actl_inputs_add(l, s, ADAPTERS "/road-4", 1);
        if (!rc)
            rc = add_stack(s, l, "late", NULL);
        actl_inputs_free(l);
        actl_store_close(s);
        _exit(rc ? 11 : 0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    char c = 0;
    bool paused = read(to_parent[0], &c, 1) == 1 && c == 'w';
    size_t files_before = count_packs(&f);
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
    if (write(to_child[1], "g", 1) != 1)
        kill(adder, SIGKILL);
    close(to_child[1]);
    int adder_status = wait_bounded(adder, 30);
    int gc_status = gc > 0 ? wait_bounded(gc, 30) : -1;
    close(to_parent[0]);
    assert_true(paused);
    assert_int_equal(files_before, 1);
    assert_true(blocked);
    assert_int_equal(adder_status, 0);
    assert_int_equal(gc_status, 0);
    assert_int_equal(count_packs(&f), 1);
    actl_inputs *l = NULL;
    assert_ok(actl_inputs_new(&l));
    assert_ok(actl_inputs_add(l, f.s, "late", 1));
    actl_inputs_free(l);
    assert_verify_clean(f.s);
    test_fx_free(&f);
}

/* ---- verify ----------------------------------------------------------------- */

/* Each damage to a stack, on a fresh store, and what verify must say. */
static void test_stack__verify_names_each_problem(void **state)
{
    (void)state;
    static const struct {
        const char *sql, *want, *also;
        size_t count; /* 0: at least one */
    } cases[] = {
        {"UPDATE stack_members SET member_kind = 'road' WHERE position = 1",
         "'st@1': member 1 'a@1' is a 'road' in the catalogue but its pack", "a 'lora' adapter",
         1},
        {"UPDATE stack_members SET member_kind = 'stack' WHERE position = 2",
         "'st@1': member 2 'b@1' has kind 'stack', not an adapter kind", NULL, 0},
        {"UPDATE stack_members SET weight = 'x' WHERE position = 2",
         "'st@1': member 2 'b@1' has no numeric weight", NULL, 1},
        {"UPDATE stack_members SET position = 9 WHERE position = 4",
         "'st@1': member 'a@1' is at position 9, expected 4", NULL, 1},
        {"UPDATE adapters SET raw_bytes = raw_bytes + 1 WHERE name = 'st'",
         "'st@1': raw size", "members' packs hold", 1},
        {"UPDATE adapters SET stored_bytes = 1 WHERE name = 'st'", "'st@1': stored size 1, but",
         NULL, 1},
        {"DELETE FROM stack_members", "'st@1': a stack without members", NULL, 0},
        {"UPDATE adapters SET config = '{' WHERE name = 'st'",
         "'st@1': column config is not valid JSON", NULL, 1},
        {"UPDATE adapters SET target_modules = '[' WHERE name = 'st'",
         "'st@1': column target_modules is not valid JSON", NULL, 1},
        {"UPDATE adapters SET lineage = '[1]' WHERE name = 'a'",
         "'a@1': column lineage is not a JSON object", NULL, 1},
        {"UPDATE adapters SET lineage = '{' WHERE name = 'st'",
         "'st@1': column lineage is not valid JSON", NULL, 1},
        {"PRAGMA foreign_keys = OFF; UPDATE stack_members SET pack = "
         "'0000000000000000000000000000000000000000000000000000000000000000' WHERE position = 2",
         "'st@1': member 2 'b@1': pack 0000000000000000000000000000000000000000000000000000000000"
         "000000 has no row in the catalogue",
         "", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_fx f = stack_store();
        assert_verify_clean(f.s);
        sql_exec(f.store, cases[i].sql);
        problems p;
        size_t n = verify_into(f.s, &p);
        bool ok = any_problem_has(&p, cases[i].want, cases[i].also) &&
                  (cases[i].count ? n == cases[i].count : n >= 1);
        if (!ok) {
            print_message("case %s: want %s (%zu)\n", cases[i].sql, cases[i].want,
                          cases[i].count);
            for (size_t k = 0; k < p.n && k < 32; k++)
                print_message("  problem: %s\n", p.msgs[k]);
        }
        assert_true(ok);
        test_fx_free(&f);
    }
}

/* A member's pack damaged or gone after its adapter was removed: verify
 * names the pack and the stack that uses it. */
static void test_stack__verify_rehashes_member_packs(void **state)
{
    (void)state;
    test_fx f = stack_store();
    char hex[65];
    pack_of(f.s, "b", hex);
    assert_ok(actl_store_rm(f.s, "b"));
    assert_verify_clean(f.s);
    char *path = pack_file(&f, hex);
    size_t len;
    unsigned char *data = test_slurp(path, &len);
    data[len / 2] ^= 0x01;
    test_write_file(path, data, len);
    problems p;
    assert_true(verify_into(f.s, &p) >= 1);
    assert_true(any_problem_has(&p, hex, "'st@1' (a stack member)"));
    assert_int_equal(unlink(path), 0);
    verify_into(f.s, &p);
    assert_true(any_problem_has(&p, hex, "missing"));
    assert_true(any_problem_has(&p, "'st@1' (a stack member)", NULL));
    free(data);
    free(path);
    test_fx_free(&f);
}

/* ---- export ----------------------------------------------------------------- */

static size_t count_entries(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    assert_non_null(d);
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static void test_stack__export_writes_a_directory_per_member_and_stack_json(void **state)
{
    (void)state;
    test_fx f = stack_store();
    static const char *const subdirs[ST_N] = {"01-a", "02-b", "03-lora-f16", "04-a"};
    char hex[ST_N][65];
    pack_of(f.s, "a", hex[0]);
    pack_of(f.s, "b", hex[1]);
    memcpy(hex[3], hex[0], 65);
    char *out = test_join(f.dir, "out");
    size_t before = count_entries(f.dir);
    assert_ok(actl_store_export(f.s, "st", out));
    assert_int_equal(count_entries(f.dir), before + 1); /* no temporary left beside it */
    assert_int_equal(count_entries(out), ST_N + 1);
    for (size_t i = 0; i < ST_N; i++) {
        char *sub = test_join(out, subdirs[i]);
        actl_adapter *got = NULL, *want = fixture(st_fixtures[i]);
        assert_ok(actl_adapter_load(sub, &got));
        test_assert_same_tensors(got, want);
        actl_adapter_free(got);
        actl_adapter_free(want);
        free(sub);
    }
    char *js = test_join(out, "stack.json");
    json_error_t jerr;
    json_t *doc = json_load_file(js, 0, &jerr);
    if (!doc)
        fail_msg("stack.json: %s", jerr.text);
    assert_int_equal(json_integer_value(json_object_get(doc, "format")), 1);
    assert_string_equal(json_string_value(json_object_get(doc, "kind")), "stack");
    assert_string_equal(json_string_value(json_object_get(doc, "name")), "st");
    assert_int_equal(json_integer_value(json_object_get(doc, "version")), 1);
    assert_string_equal(json_string_value(json_object_get(doc, "base_model")), BASE_ID);
    json_t *members = json_object_get(doc, "members");
    assert_int_equal(json_array_size(members), ST_N);
    for (size_t i = 0; i < ST_N; i++) {
        json_t *m = json_array_get(members, i);
        assert_int_equal(json_integer_value(json_object_get(m, "position")), (int)i + 1);
        assert_string_equal(json_string_value(json_object_get(m, "dir")), subdirs[i]);
        assert_string_equal(json_string_value(json_object_get(m, "ref")), st_member_refs[i]);
        assert_string_equal(json_string_value(json_object_get(m, "kind")), st_kinds[i]);
        assert_true(json_real_value(json_object_get(m, "weight")) == st_w[i]);
        if (i != 2)
            assert_string_equal(json_string_value(json_object_get(m, "pack")), hex[i]);
    }
    json_decref(doc);
    /* again into the non-empty directory: refused, nothing changed */
    assert_err(actl_store_export(f.s, "st", out), ACTL_EEXIST, "not an empty directory");
    assert_int_equal(count_entries(out), ST_N + 1);
    assert_int_equal(count_entries(f.dir), before + 1);
    /* an empty directory is fine, a trailing slash too */
    char *empty = test_join(f.dir, "empty");
    assert_int_equal(mkdir(empty, 0755), 0);
    char *slash = actl__strdup_printf("%s/", empty);
    assert_ok(actl_store_export(f.s, "st@1", slash));
    assert_int_equal(count_entries(empty), ST_N + 1);
    free(slash);
    free(empty);
    free(js);
    free(out);
    test_fx_free(&f);
}

/* A damaged member: the export fails naming it, and leaves nothing behind. */
static void test_stack__export_of_a_damaged_member_writes_nothing(void **state)
{
    (void)state;
    test_fx f = stack_store();
    char hex[65];
    pack_of(f.s, "b", hex);
    char *path = pack_file(&f, hex);
    size_t len;
    unsigned char *data = test_slurp(path, &len);
    data[len - 1] ^= 0x40;
    test_write_file(path, data, len);
    char *out = test_join(f.dir, "out");
    size_t before = count_entries(f.dir);
    assert_err(actl_store_export(f.s, "st", out), ACTL_ECORRUPT, "'st@1' member 2 'b@1'");
    assert_false(access(out, F_OK) == 0);
    assert_int_equal(count_entries(f.dir), before);
    /* and a missing stack is ENOTFOUND, as for adapters */
    assert_err(actl_store_export(f.s, "nope", out), ACTL_ENOTFOUND, "'nope'");
    free(data);
    free(path);
    free(out);
    test_fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate__a_schema_3_store_keeps_rows_ids_and_tags),
        cmocka_unit_test(test_migrate__a_migration_breaking_references_is_refused),
        cmocka_unit_test(test_lineage__round_trips_verbatim_through_show_and_list),
        cmocka_unit_test(test_lineage__refuses_anything_but_a_json_object_before_writing),
        cmocka_unit_test(test_stack__add_records_members_sizes_modules_recipe_and_lineage),
        cmocka_unit_test(test_stack__base_model_is_the_members_common_one_or_the_callers),
        cmocka_unit_test(test_stack__list_show_tag_and_versions),
        cmocka_unit_test(test_stack__load_is_refused_saying_it_is_a_stack),
        cmocka_unit_test(test_stack__add_refusals_write_nothing),
        cmocka_unit_test(test_stack__rm_of_a_stack_removes_its_rows_only),
        cmocka_unit_test(test_stack__gc_keeps_member_packs_after_their_adapters_are_removed),
        cmocka_unit_test(test_stack__stats_count_member_packs_once),
        cmocka_unit_test(test_stack__gc_waits_for_a_stack_add_in_progress),
        cmocka_unit_test(test_stack__verify_names_each_problem),
        cmocka_unit_test(test_stack__verify_rehashes_member_packs),
        cmocka_unit_test(test_stack__export_writes_a_directory_per_member_and_stack_json),
        cmocka_unit_test(test_stack__export_of_a_damaged_member_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
