/* test_pull.c: pull and publish (lib/pull.c). The main flows run over file://
 * URLs (no server): a PEFT directory, an hf:// repository laid out under
 * HF_ENDPOINT=file://..., and a published store. A second group runs the HTTP
 * behaviours file:// cannot show (ETag revalidation, resume with If-Range,
 * X-Linked-Etag) against tests/faultserver.py on loopback. Digests are
 * checked against test_sha256sum(1), tensors against the fixtures as
 * actl_adapter_load reads them. */
#include "testutil.h"

#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define ADAPTERS FIXTURES "/adapters"
#define CONFIG_FILE "adapter_config.json"
#define MODEL_FILE "adapter_model.safetensors"
#define PATH_CAP 4400

/* ---- helpers ------------------------------------------------------------------ */

/* snprintf that fails the test instead of cutting: every path here must fit. */
static void pathf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        fail_msg("'%s...' does not fit in %zu bytes", fmt, cap);
}

typedef test_fx fx;

/* A second store in the same scratch directory. */
static actl_store *store_beside(const fx *f, const char *name)
{
    char path[PATH_CAP];
    actl_store *s = NULL;
    pathf(path, sizeof path, "%s/%s", f->dir, name);
    assert_ok(actl_store_open(path, ACTL_STORE_CREATE, &s));
    return s;
}

static void copy_file(const char *src, const char *dst)
{
    char cmd[2 * PATH_CAP];
    pathf(cmd, sizeof cmd, "cp '%s' '%s'", src, dst);
    assert_int_equal(system(cmd), 0);
}

static void mkdirs(const char *path)
{
    char cmd[PATH_CAP + 16];
    pathf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    assert_int_equal(system(cmd), 0);
}

/* "file://" + the absolute path. */
static void file_url(const char *path, char *buf, size_t cap)
{
    char abs[PATH_MAX];
    assert_non_null(realpath(path, abs));
    pathf(buf, cap, "file://%s", abs);
}

/* The fixture directories fixtures/adapters/<base>/<kind>, sorted. */
typedef struct fixture_list {
    char path[64][256];
    char leaf[64][128];
    size_t n;
} fixture_list;

static int cmp_str(const void *a, const void *b) { return strcmp(a, b); }

static void list_fixtures(fixture_list *l)
{
    char bases[8][128];
    size_t nb = 0;
    l->n = 0;
    DIR *d = opendir(ADAPTERS);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && nb < 8)
            pathf(bases[nb++], sizeof bases[0], "%s", e->d_name);
    closedir(d);
    qsort(bases, nb, sizeof bases[0], cmp_str);
    for (size_t b = 0; b < nb; b++) {
        char dir[256], names[32][128];
        size_t nn = 0;
        pathf(dir, sizeof dir, ADAPTERS "/%s", bases[b]);
        assert_non_null(d = opendir(dir));
        while ((e = readdir(d)))
            if (e->d_name[0] != '.' && nn < 32)
                pathf(names[nn++], sizeof names[0], "%s", e->d_name);
        closedir(d);
        qsort(names, nn, sizeof names[0], cmp_str);
        for (size_t i = 0; i < nn && l->n < 64; i++) {
            pathf(l->path[l->n], sizeof l->path[0], "%s/%s", dir, names[i]);
            pathf(l->leaf[l->n], sizeof l->leaf[0], "%s", names[i]);
            l->n++;
        }
    }
    assert_true(l->n >= 28);
}

static actl_pull_result do_pull(actl_store *s, const char *url, const char *ref,
                                const actl_pull_opts *o)
{
    actl_pull_result r;
    memset(&r, 0, sizeof r);
    int rc = actl_store_pull(s, url, ref, o, &r);
    if (rc != ACTL_OK)
        fail_msg("pull '%s' %s: %s: %s", url, ref ? ref : "", actl_strerror(rc), actl_errmsg());
    return r;
}

static const actl_entry *show(actl_store *s, const char *ref, actl_entries **l)
{
    assert_ok(actl_store_show(s, ref, l));
    assert_int_equal(actl_entries_count(*l), 1);
    return actl_entries_get(*l, 0);
}

static void count_problem(const char *message, void *ctx)
{
    (void)ctx;
    print_message("verify: %s\n", message);
}

static void assert_verify_clean(actl_store *s)
{
    size_t problems = 99;
    assert_ok(actl_store_verify(s, count_problem, NULL, &problems));
    assert_int_equal(problems, 0);
}

static void assert_stats_equal(const actl_store_stats *a, const actl_store_stats *b)
{
    assert_int_equal(a->adapters, b->adapters);
    assert_int_equal(a->versions, b->versions);
    assert_int_equal(a->packs, b->packs);
    assert_int_equal(a->raw_bytes, b->raw_bytes);
    assert_int_equal(a->stored_bytes, b->stored_bytes);
}

/* The store's state for "nothing changed" checks: stats and the files in
 * objects/ (a refused pull must not leave a pack behind either). */
typedef struct snapshot {
    actl_store_stats st;
    size_t objects;
} snapshot;

static snapshot snap(const fx *f)
{
    snapshot x;
    char objects[PATH_CAP];
    assert_ok(actl_store_stats_get(f->s, &x.st));
    pathf(objects, sizeof objects, "%s/objects", f->store);
    x.objects = test_count_files(objects);
    return x;
}

static void assert_unchanged(const fx *f, const snapshot *before)
{
    snapshot now = snap(f);
    assert_stats_equal(&before->st, &now.st);
    assert_int_equal(before->objects, now.objects);
    assert_verify_clean(f->s);
}

static int64_t add_fixture(actl_store *s, const char *path, const char *name,
                           const char *const *tags, const char *desc, char pack[65])
{
    actl_adapter *a = NULL;
    actl_entries *l = NULL;
    assert_ok(actl_adapter_load(path, &a));
    actl_add_opts o = actl_add_default_opts();
    o.name = name;
    o.tags = tags;
    o.description = desc;
    assert_ok(actl_store_add(s, a, &o, &l));
    const actl_entry *e = actl_entries_get(l, 0);
    int64_t v = e->version;
    if (pack)
        pathf(pack, 65, "%s", e->pack);
    actl_entries_free(l);
    actl_adapter_free(a);
    return v;
}

/* A PEFT directory copy of a fixture at dir (created). */
static void copy_fixture(const char *fixture, const char *dir)
{
    char src[PATH_CAP], dst[PATH_CAP];
    mkdirs(dir);
    pathf(src, sizeof src, "%s/" CONFIG_FILE, fixture);
    pathf(dst, sizeof dst, "%s/" CONFIG_FILE, dir);
    copy_file(src, dst);
    pathf(src, sizeof src, "%s/" MODEL_FILE, fixture);
    pathf(dst, sizeof dst, "%s/" MODEL_FILE, dir);
    copy_file(src, dst);
}

/* <store>/partial/<sha256 of url>.part and .etag. */
static void partial_paths(const fx *f, const char *url, char part[PATH_CAP], char etag[PATH_CAP])
{
    char hex[65];
    assert_ok(actl__sha256_hex(url, strlen(url), hex));
    pathf(part, PATH_CAP, "%s/partial/%s.part", f->store, hex);
    pathf(etag, PATH_CAP, "%s/partial/%s.etag", f->store, hex);
}

static size_t partial_count(const fx *f)
{
    char dir[PATH_CAP];
    pathf(dir, sizeof dir, "%s/partial", f->store);
    return test_count_files(dir);
}

/* Downloads followed from their first byte (pull.c's follower starts once
 * ADAPTERCTL_PULL_FOLLOW_MIN bytes have arrived, 4 MiB unless set) and packs
 * made on three threads: the work done while a file arrives, and on several
 * threads, must give the bytes the plain path gives. */
static int follow_on(void **state)
{
    (void)state;
    setenv("ADAPTERCTL_PULL_FOLLOW_MIN", "1", 1);
    actl__pack_threads = 3;
    return 0;
}

static int follow_off(void **state)
{
    (void)state;
    unsetenv("ADAPTERCTL_PULL_FOLLOW_MIN");
    actl__pack_threads = 0;
    return 0;
}

/* A LoRA of BIG_LAYERS layers, r 64: q_proj F32 of width 1024 and v_proj
 * BF16 of width 2048 (xorshift64 bytes, all values finite), so that every
 * tensor is 256 KiB and the file (larger elements first, then by name) holds
 * them in another order than their names: 6 MiB, more than one growth step
 * of a download. Written as a PEFT directory at dir. */
#define BIG_LAYERS 6
static void write_big_lora(const char *dir)
{
    static const char config[] =
        "{\"base_model_name_or_path\": \"test/big\", \"lora_alpha\": 128, "
        "\"peft_type\": \"LORA\", \"r\": 64, \"target_modules\": [\"q_proj\", \"v_proj\"]}";
    const char *mods[] = {"q_proj", "v_proj"};
    actl_tensor *t[BIG_LAYERS * 4];
    size_t n = 0;
    uint64_t r = 0x2545f4914f6cdd1dull;
    char path[PATH_CAP + 64];
    mkdirs(dir);
    for (int layer = 0; layer < BIG_LAYERS; layer++)
        for (int m = 0; m < 2; m++)
            for (int ab = 0; ab < 2; ab++) {
                char name[200];
                actl_dtype dt = m ? ACTL_BF16 : ACTL_F32;
                int64_t width = m ? 2048 : 1024;
                int64_t shape[2] = {ab ? width : 64, ab ? 64 : width};
                size_t esz = m ? 2 : 4;
                pathf(name, sizeof name, "base_model.model.model.layers.%d.self_attn.%s.lora_%s.weight",
                      layer, mods[m], ab ? "B" : "A");
                assert_ok(actl_tensor_new(name, dt, 2, shape, NULL, &t[n]));
                unsigned char *b = t[n]->data;
                for (size_t i = 0; i < t[n]->nbytes; i += esz) {
                    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                    for (size_t k = 0; k + 1 < esz; k++)
                        b[i + k] = (unsigned char)(r >> (8 * k)); /* mantissa bits */
                    /* sign, and a high exponent byte of a value near 1e-3 */
                    b[i + esz - 1] = (unsigned char)((r >> 40 & 0x80) | (0x38 + (r >> 48 & 3)));
                }
                n++;
            }
    pathf(path, sizeof path, "%s/" MODEL_FILE, dir);
    assert_ok(actl_st_write(path, (const actl_tensor *const *)t, n, NULL));
    pathf(path, sizeof path, "%s/" CONFIG_FILE, dir);
    test_write_text(path, config);
    for (size_t i = 0; i < n; i++)
        actl_tensor_free(t[i]);
}

/* ---- PEFT directory URLs -------------------------------------------------------- */

static void test_pull__peft_url_gives_what_a_local_add_gives_for_every_fixture(void **state)
{
    (void)state;
    fx f = test_fx_new();
    actl_store *local = store_beside(&f, "local");
    fixture_list fl;
    list_fixtures(&fl);
    size_t ahead = actl__pull_ahead;
    for (size_t i = 0; i < fl.n; i++) {
        char url[PATH_CAP], want_pack[65], sha[65], path[PATH_CAP + 64], ref[200];
        actl_entries *l = NULL;
        add_fixture(local, fl.path[i], "x", NULL, NULL, want_pack);
        file_url(fl.path[i], url, sizeof url);
        actl_pull_opts o = actl_pull_default_opts();
        actl_pull_result r = do_pull(f.s, url, NULL, &o);
        /* named after the URL's last component; versions count up per name */
        assert_string_equal(r.name, fl.leaf[i]);
        assert_string_equal(r.pack, want_pack);
        assert_int_equal(r.unchanged, 0);
        assert_int_equal(r.files_transferred, 2);
        pathf(path, sizeof path, "%s/" MODEL_FILE, fl.path[i]);
        test_sha256sum(path, sha);
        assert_string_equal(r.sha256, sha);
        uint64_t want_bytes = test_file_size(path);
        pathf(path, sizeof path, "%s/" CONFIG_FILE, fl.path[i]);
        want_bytes += test_file_size(path);
        assert_int_equal(r.bytes_transferred, want_bytes);

        pathf(ref, sizeof ref, "%s@%lld", r.name, (long long)r.version);
        const actl_entry *e = show(f.s, ref, &l);
        assert_string_equal(e->pack, want_pack);
        assert_non_null(e->source);
        assert_string_equal(e->source, url);
        actl_entries_free(l);

        actl_adapter *pulled = NULL, *orig = NULL;
        assert_ok(actl_store_load(f.s, ref, &pulled));
        assert_ok(actl_adapter_load(fl.path[i], &orig));
        test_assert_same_tensors(pulled, orig);
        actl_adapter_free(pulled);
        actl_adapter_free(orig);
    }
    assert_int_equal(partial_count(&f), 0);
    assert_verify_clean(f.s);
    /* under follow_on, the follower did work for every pull */
    if (getenv("ADAPTERCTL_PULL_FOLLOW_MIN"))
        assert_true(actl__pull_ahead - ahead >= fl.n);
    actl_store_close(local);
    test_fx_free(&f);
}

static void test_pull__unchanged_peft_url_adds_nothing_the_second_time(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char url[PATH_CAP];
    file_url(ADAPTERS "/base-tiny/road-2", url, sizeof url);
    actl_pull_opts o = actl_pull_default_opts();
    actl_pull_result r1 = do_pull(f.s, url, NULL, &o);
    snapshot before = snap(&f);
    /* file:// has no ETags: the bytes come again, but the same bytes from the
     * same source with their adapter still present are "unchanged" */
    actl_pull_result r2 = do_pull(f.s, url, NULL, &o);
    assert_int_equal(r2.unchanged, 1);
    assert_string_equal(r2.name, "road-2");
    assert_int_equal(r2.version, r1.version);
    assert_string_equal(r2.pack, r1.pack);
    assert_string_equal(r2.sha256, r1.sha256);
    assert_unchanged(&f, &before);
    /* under another name it is a new entry (same pack) */
    o.name = "other";
    actl_pull_result r3 = do_pull(f.s, url, NULL, &o);
    assert_int_equal(r3.unchanged, 0);
    assert_string_equal(r3.name, "other");
    assert_string_equal(r3.pack, r1.pack);
    /* with the adapter removed, the pull adds it again */
    assert_ok(actl_store_rm(f.s, "road-2@1"));
    o.name = NULL;
    actl_pull_result r4 = do_pull(f.s, url, NULL, &o);
    assert_int_equal(r4.unchanged, 0);
    assert_string_equal(r4.name, "road-2");
    assert_int_equal(partial_count(&f), 0);
    test_fx_free(&f);
}

static void test_pull__name_tags_and_a_trailing_slash(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char url[PATH_CAP];
    actl_entries *l = NULL;
    file_url(ADAPTERS "/hf-tiny/lora-dora", url, sizeof url);
    strcat(url, "/");
    const char *tags[] = {"task=gsm8k", "user=alice", NULL};
    actl_pull_opts o = actl_pull_default_opts();
    o.tags = tags;
    actl_pull_result r = do_pull(f.s, url, NULL, &o);
    assert_string_equal(r.name, "lora-dora");
    const actl_entry *e = show(f.s, "lora-dora", &l);
    assert_int_equal(e->tag_count, 2);
    assert_string_equal(e->tag_keys[0], "task");
    assert_string_equal(e->tag_values[0], "gsm8k");
    assert_string_equal(e->tag_values[1], "alice");
    actl_entries_free(l);
    o.name = "mine";
    o.tags = NULL;
    r = do_pull(f.s, url, NULL, &o);
    assert_string_equal(r.name, "mine");
    assert_int_equal(r.version, 1);
    test_fx_free(&f);
}

static void test_pull__refuses_what_it_cannot_name_or_reach(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char url[PATH_CAP], dir[PATH_CAP];
    actl_pull_opts o = actl_pull_default_opts();
    snapshot before = snap(&f);
    /* a last path component that is not a name */
    pathf(dir, sizeof dir, "%s/bad name!", f.dir);
    copy_fixture(ADAPTERS "/base-tiny/lora", dir);
    pathf(url, sizeof url, "file://%s/bad%%20name%%21", f.dir);
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_EINVAL, "--name");
    assert_err(actl_store_pull(f.s, "file:///", NULL, &o, NULL), ACTL_EINVAL, "--name");
    /* other schemes, queries, junk */
    assert_err(actl_store_pull(f.s, "ftp://127.0.0.1/x", NULL, &o, NULL), ACTL_EINVAL,
               "ftp://127.0.0.1/x");
    assert_err(actl_store_pull(f.s, "http://127.0.0.1/x?a=b", NULL, &o, NULL), ACTL_EINVAL,
               "query");
    assert_err(actl_store_pull(f.s, "not a url", NULL, &o, NULL), ACTL_EINVAL, "not a url");
    /* bad options */
    o.name = "../x";
    file_url(ADAPTERS "/base-tiny/lora", url, sizeof url);
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_EINVAL, "adapter name");
    o.name = NULL;
    o.sha256 = "abc";
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_EINVAL, "64 hexadecimal");
    o.sha256 = NULL;
    const char *tags[] = {"novalue", NULL};
    o.tags = tags;
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_EINVAL, "novalue");
    o.tags = NULL;
    assert_err(actl_store_pull(NULL, url, NULL, &o, NULL), ACTL_EINVAL, "NULL");
    /* a directory without the files */
    pathf(url, sizeof url, "file://%s/nowhere", f.dir);
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_ENOTFOUND, CONFIG_FILE);
    /* a file over the size limit */
    o.max_size = 100;
    file_url(ADAPTERS "/base-tiny/lora", url, sizeof url);
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_ELIMIT, "larger than the limit");
    o.max_size = 2000; /* the config fits, the weights do not */
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_ELIMIT, MODEL_FILE);
    assert_unchanged(&f, &before);
    test_fx_free(&f);
}

static void test_pull__sha256_mismatch_is_refused_and_the_store_unchanged(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char url[PATH_CAP], path[PATH_CAP], sha[65], upper[65];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "kept", NULL, NULL, NULL);
    snapshot before = snap(&f);
    file_url(ADAPTERS "/base-tiny/mos", url, sizeof url);
    actl_pull_opts o = actl_pull_default_opts();
    o.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_ECORRUPT, "expected 0000");
    assert_non_null(strstr(actl_errmsg(), MODEL_FILE));
    assert_unchanged(&f, &before);
    assert_int_equal(partial_count(&f), 0); /* wrong bytes are not kept to resume */
    /* the right digest, in capitals, is accepted */
    pathf(path, sizeof path, ADAPTERS "/base-tiny/mos/" MODEL_FILE);
    test_sha256sum(path, sha);
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(sha[i] >= 'a' && sha[i] <= 'f' ? sha[i] - 'a' + 'A' : sha[i]);
    o.sha256 = upper;
    actl_pull_result r = do_pull(f.s, url, NULL, &o);
    assert_string_equal(r.sha256, sha);
    test_fx_free(&f);
}

static void test_pull__an_invalid_adapter_is_refused_and_the_store_unchanged(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char url[PATH_CAP], dir[PATH_CAP], path[PATH_CAP + 64];
    snapshot before = snap(&f);
    /* a config that does not match the tensors */
    pathf(dir, sizeof dir, "%s/broken", f.dir);
    copy_fixture(ADAPTERS "/base-tiny/lora", dir);
    pathf(path, sizeof path, "%s/" CONFIG_FILE, dir);
    test_write_text(path, "{\"peft_type\": \"ROAD\", \"variant\": \"road_1\", \"group_size\": 64}");
    file_url(dir, url, sizeof url);
    actl_pull_opts o = actl_pull_default_opts();
    int rc = actl_store_pull(f.s, url, NULL, &o, NULL);
    assert_true(rc == ACTL_EFORMAT || rc == ACTL_ESHAPE || rc == ACTL_EINVAL);
    assert_non_null(strstr(actl_errmsg(), url));
    /* a truncated safetensors file */
    copy_fixture(ADAPTERS "/base-tiny/lora", dir);
    pathf(path, sizeof path, "%s/" MODEL_FILE, dir);
    assert_int_equal(truncate(path, 100), 0);
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_EFORMAT, MODEL_FILE);
    assert_unchanged(&f, &before);
    assert_int_equal(partial_count(&f), 0);
    test_fx_free(&f);
}

/* ---- hf:// ----------------------------------------------------------------------- */

static void test_pull__hf_url_resolves_against_HF_ENDPOINT(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char hub[PATH_CAP], dir[PATH_CAP], ep[PATH_CAP + 8], want[65];
    actl_store *local = store_beside(&f, "local");
    add_fixture(local, ADAPTERS "/base-tiny/bottleneck-series", "x", NULL, NULL, want);
    pathf(hub, sizeof hub, "%s/hub", f.dir);
    pathf(dir, sizeof dir, "%s/org/my-adapter/resolve/main", hub);
    copy_fixture(ADAPTERS "/base-tiny/bottleneck-series", dir);
    pathf(dir, sizeof dir, "%s/org/my-adapter/resolve/v1.0", hub);
    copy_fixture(ADAPTERS "/base-tiny/lora-bf16", dir);
    file_url(hub, ep, sizeof ep);
    strcat(ep, "/"); /* a trailing slash is trimmed */
    setenv("HF_ENDPOINT", ep, 1);

    actl_pull_opts o = actl_pull_default_opts();
    actl_pull_result r = do_pull(f.s, "hf://org/my-adapter", NULL, &o);
    assert_string_equal(r.name, "my-adapter"); /* the repository's name */
    assert_string_equal(r.pack, want);
    actl_entries *l = NULL;
    const actl_entry *e = show(f.s, "my-adapter", &l);
    assert_string_equal(e->source, "hf://org/my-adapter");
    actl_entries_free(l);
    /* a revision */
    r = do_pull(f.s, "hf://org/my-adapter@v1.0", NULL, &o);
    assert_int_equal(r.version, 2);
    assert_int_equal(show(f.s, "my-adapter@2", &l)->kind, ACTL_KIND_LORA);
    actl_entries_free(l);
    /* a repository that is not there names the file it looked for */
    assert_err(actl_store_pull(f.s, "hf://org/absent", NULL, &o, NULL), ACTL_ENOTFOUND,
               "org/absent/resolve/main/" CONFIG_FILE);
    assert_non_null(strstr(actl_errmsg(), "hf://org/absent"));
    unsetenv("HF_ENDPOINT");
    actl_store_close(local);
    test_fx_free(&f);
}

static void test_pull__hf_url_validation(void **state)
{
    (void)state;
    fx f = test_fx_new();
    /* points nowhere that exists: nothing may be fetched anyway */
    setenv("HF_ENDPOINT", "file:///nonexistent-hub", 1);
    static const char *const bad[] = {
        "hf://",         "hf://a",          "hf://a/",        "hf:///b",      "hf://a/b/c",
        "hf://../x",     "hf://a/..",       "hf://a/b@",      "hf://a/b@../x", "hf://a/b@r/x",
        "hf://a b/c",    "hf://a/b c",      "hf://a/b@r v",   "hf://a/./b",   "hf://./b",
        "hf://a/b@.",    "hf://a%2f/b",     "hf://a/b?x=1",   "hf://a/b#f",   "hf://a/b\n",
        "hf://a/b@x@y",  "hf://a@r/b",
    };
    snapshot before = snap(&f);
    actl_pull_opts o = actl_pull_default_opts();
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = actl_store_pull(f.s, bad[i], NULL, &o, NULL);
        if (rc != ACTL_EINVAL || !strstr(actl_errmsg(), "hf://"))
            fail_msg("'%s': expected EINVAL naming the URL, got %s: %s", bad[i],
                     actl_strerror(rc), actl_errmsg());
    }
    /* an hf:// URL is not a published store */
    assert_err(actl_store_pull(f.s, "hf://a/b", "x", &o, NULL), ACTL_EINVAL, "published");
    /* a well-formed URL against a missing hub fails later, and differently */
    assert_err(actl_store_pull(f.s, "hf://a/b", NULL, &o, NULL), ACTL_ENOTFOUND,
               "nonexistent-hub/a/b/resolve/main");
    assert_unchanged(&f, &before);
    assert_int_equal(partial_count(&f), 0);
    unsetenv("HF_ENDPOINT");
    test_fx_free(&f);
}

/* ---- published stores --------------------------------------------------------------- */

/* Adds every fixture as "<base>-<kind>" (two versions of one of them), with
 * tags and a description on some, and publishes them all to f->dir/pub. */
static size_t fill_and_publish(fx *f, const fixture_list *fl, char pub[PATH_CAP])
{
    for (size_t i = 0; i < fl->n; i++) {
        char name[200];
        const char *base = strstr(fl->path[i], "hf-tiny") ? "hf" : "bt";
        pathf(name, sizeof name, "%s-%s", base, fl->leaf[i]);
        const char *tags[] = {"kind=fixture", "index=odd", NULL};
        add_fixture(f->s, fl->path[i], name, i % 2 ? tags : NULL,
                    i % 3 ? NULL : "a fixture\nwith two lines", NULL);
    }
    /* a second version of one name, with other bytes */
    add_fixture(f->s, ADAPTERS "/base-tiny/road-4", "bt-lora", NULL, NULL, NULL);
    pathf(pub, PATH_CAP, "%s/pub/nested", f->dir);
    size_t count = 0;
    assert_ok(actl_store_publish(f->s, pub, NULL, &count));
    assert_int_equal(count, fl->n + 1);
    return count;
}

static void assert_same_entry(const actl_entry *a, const actl_entry *b)
{
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->kind, b->kind);
    assert_true((a->base_model == NULL) == (b->base_model == NULL));
    if (a->base_model)
        assert_string_equal(a->base_model, b->base_model);
    assert_int_equal(a->rank, b->rank);
    assert_true((a->variant == NULL) == (b->variant == NULL));
    if (a->variant)
        assert_string_equal(a->variant, b->variant);
    assert_int_equal(a->group_size, b->group_size);
    assert_string_equal(a->target_modules, b->target_modules);
    assert_string_equal(a->config, b->config);
    assert_int_equal(a->raw_bytes, b->raw_bytes);
    assert_int_equal(a->stored_bytes, b->stored_bytes);
    assert_string_equal(a->pack, b->pack);
    assert_true((a->description == NULL) == (b->description == NULL));
    if (a->description)
        assert_string_equal(a->description, b->description);
    assert_int_equal(a->tag_count, b->tag_count);
    for (size_t i = 0; i < a->tag_count; i++) {
        assert_string_equal(a->tag_keys[i], b->tag_keys[i]);
        assert_string_equal(a->tag_values[i], b->tag_values[i]);
    }
}

static void test_publish__writes_a_sorted_index_and_verified_objects(void **state)
{
    (void)state;
    fx f = test_fx_new();
    fixture_list fl;
    char pub[PATH_CAP], path[PATH_CAP + 64];
    list_fixtures(&fl);
    size_t count = fill_and_publish(&f, &fl, pub);
    /* read back with jansson, not with the code under test */
    json_error_t je;
    pathf(path, sizeof path, "%s/index.json", pub);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_object_get(root, "format")), 1);
    assert_true(json_is_integer(json_object_get(root, "generated")));
    json_t *arr = json_object_get(root, "adapters");
    assert_int_equal(json_array_size(arr), count);
    static const char *const keys[] = {
        "name",   "version",     "kind",      "base_model", "rank",        "variant",
        "group_size", "target_modules", "config", "raw_bytes", "stored_bytes", "pack",
        "tags",   "description", "created",
    };
    const char *prev_name = "";
    json_int_t prev_version = 0;
    size_t distinct = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            if (!json_object_get(e, keys[k]))
                fail_msg("index entry %zu lacks \"%s\"", i, keys[k]);
        const char *name = json_string_value(json_object_get(e, "name"));
        json_int_t version = json_integer_value(json_object_get(e, "version"));
        int c = strcmp(prev_name, name);
        assert_true(c < 0 || (c == 0 && prev_version < version));
        prev_name = name;
        prev_version = version;
        assert_true(json_is_object(json_object_get(e, "config")));
        assert_true(json_is_array(json_object_get(e, "target_modules")));
        /* every pack is there under its own digest */
        char sha[65];
        const char *pack = json_string_value(json_object_get(e, "pack"));
        pathf(path, sizeof path, "%s/objects/%s", pub, pack);
        test_sha256sum(path, sha);
        assert_string_equal(sha, pack);
        assert_int_equal(test_file_size(path), json_integer_value(json_object_get(e, "stored_bytes")));
    }
    pathf(path, sizeof path, "%s/objects", pub);
    distinct = test_count_files(path);
    actl_store_stats st;
    assert_ok(actl_store_stats_get(f.s, &st));
    assert_int_equal(distinct, st.packs);
    json_decref(root);

    /* publishing again finds the same objects in place and writes a fresh index */
    assert_ok(actl_store_publish(f.s, pub, NULL, &count));
    pathf(path, sizeof path, "%s/objects", pub);
    assert_int_equal(test_count_files(path), distinct);
    /* a chosen subset: NAME is its newest version; duplicates collapse */
    char sub[PATH_CAP];
    pathf(sub, sizeof sub, "%s/sub", f.dir);
    const char *refs[] = {"bt-lora", "bt-mos@1", "bt-lora@2", NULL};
    assert_ok(actl_store_publish(f.s, sub, refs, &count));
    assert_int_equal(count, 2);
    pathf(path, sizeof path, "%s/index.json", sub);
    assert_non_null(root = json_load_file(path, 0, &je));
    arr = json_object_get(root, "adapters");
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "name")),
                        "bt-lora");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(arr, 0), "version")), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 1), "name")),
                        "bt-mos");
    json_decref(root);
    test_fx_free(&f);
}

static void test_publish__then_pull_round_trips_every_kind(void **state)
{
    (void)state;
    fx f = test_fx_new();
    fixture_list fl;
    char pub[PATH_CAP], url[PATH_CAP], path[PATH_CAP + 64];
    list_fixtures(&fl);
    fill_and_publish(&f, &fl, pub);
    file_url(pub, url, sizeof url);
    pathf(path, sizeof path, "%s/index.json", pub);
    uint64_t index_size = test_file_size(path);
    actl_store *b = store_beside(&f, "second");
    actl_query q = actl_query_default();
    q.all_versions = 1;
    actl_entries *all = NULL;
    assert_ok(actl_store_list(f.s, &q, &all));
    actl_pull_opts o = actl_pull_default_opts();
    const char *seen[64];
    size_t n_seen = 0, ahead = actl__pull_ahead;
    for (size_t i = 0; i < actl_entries_count(all); i++) {
        const actl_entry *want = actl_entries_get(all, i);
        char ref[200], source[PATH_CAP + 200];
        /* a pack that an earlier entry brought is not downloaded again */
        bool had = false;
        for (size_t k = 0; k < n_seen; k++)
            had = had || strcmp(seen[k], want->pack) == 0;
        if (!had && n_seen < 64)
            seen[n_seen++] = want->pack;
        actl_entries *l = NULL;
        pathf(ref, sizeof ref, "%s@%lld", want->name, (long long)want->version);
        actl_pull_result r = do_pull(b, url, ref, &o);
        assert_int_equal(r.unchanged, 0);
        assert_string_equal(r.name, want->name);
        assert_int_equal(r.version, want->version);
        assert_string_equal(r.pack, want->pack);
        assert_string_equal(r.sha256, want->pack);
        assert_int_equal(r.files_transferred, had ? 1 : 2); /* the index, the pack */
        assert_int_equal(r.bytes_transferred, index_size + (had ? 0 : want->stored_bytes));
        const actl_entry *got = show(b, ref, &l);
        assert_same_entry(got, want);
        pathf(source, sizeof source, "%s#%s", url, ref);
        assert_string_equal(got->source, source);
        actl_entries_free(l);
        /* the same tensors as the original fixture's */
        actl_adapter *x = NULL, *y = NULL;
        assert_ok(actl_store_load(b, ref, &x));
        assert_ok(actl_store_load(f.s, ref, &y));
        test_assert_same_tensors(x, y);
        actl_adapter_free(x);
        actl_adapter_free(y);
    }
    /* under follow_on, every pack downloaded was decoded on the way */
    if (getenv("ADAPTERCTL_PULL_FOLLOW_MIN"))
        assert_true(actl__pull_ahead - ahead >= n_seen);
    /* the second pull of each is unchanged: no pack moves (the index does:
     * file:// has no ETags) */
    actl_store_stats before, after;
    assert_ok(actl_store_stats_get(b, &before));
    for (size_t i = 0; i < actl_entries_count(all); i++) {
        const actl_entry *want = actl_entries_get(all, i);
        char ref[200];
        pathf(ref, sizeof ref, "%s@%lld", want->name, (long long)want->version);
        actl_pull_result r = do_pull(b, url, ref, &o);
        assert_int_equal(r.unchanged, 1);
        assert_int_equal(r.files_transferred, 1);
        assert_int_equal(r.bytes_transferred, index_size);
        assert_string_equal(r.pack, want->pack);
    }
    /* NAME alone is the newest version in the index, here already present */
    actl_pull_result r = do_pull(b, url, "bt-lora", &o);
    assert_int_equal(r.unchanged, 1);
    assert_int_equal(r.version, 2);
    assert_ok(actl_store_stats_get(b, &after));
    assert_stats_equal(&before, &after);
    assert_verify_clean(b);
    actl_entries_free(all);
    actl_store_close(b);
    test_fx_free(&f);
}

static void test_pull__published_pack_already_here_is_not_downloaded(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], url[PATH_CAP], pack[65];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora-f16", "a", NULL, NULL, pack);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    file_url(pub, url, sizeof url);
    actl_store *b = store_beside(&f, "b");
    /* b holds the pack under another name */
    add_fixture(b, ADAPTERS "/base-tiny/lora-f16", "mine", NULL, NULL, NULL);
    const char *tags[] = {"via=pull", NULL};
    actl_pull_opts o = actl_pull_default_opts();
    o.tags = tags;
    actl_pull_result r = do_pull(b, url, "a", &o);
    assert_int_equal(r.unchanged, 0);
    assert_int_equal(r.files_transferred, 1); /* the index only */
    assert_string_equal(r.pack, pack);
    actl_entries *l = NULL;
    const actl_entry *e = show(b, "a@1", &l);
    assert_int_equal(e->tag_count, 1);
    assert_string_equal(e->tag_values[0], "pull");
    actl_entries_free(l);
    assert_verify_clean(b);
    actl_store_close(b);
    test_fx_free(&f);
}

static void test_pull__published_version_taken_locally_is_EEXIST_unless_renamed(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], url[PATH_CAP];
    const char *tags[] = {"task=x", "user=bob", NULL};
    add_fixture(f.s, ADAPTERS "/base-tiny/road-1", "a", tags, "desc", NULL);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    file_url(pub, url, sizeof url);
    actl_store *b = store_beside(&f, "b");
    add_fixture(b, ADAPTERS "/base-tiny/road-2", "a", NULL, NULL, NULL); /* other bytes as a@1 */
    actl_store_stats before, after;
    assert_ok(actl_store_stats_get(b, &before));
    actl_pull_opts o = actl_pull_default_opts();
    assert_err(actl_store_pull(b, url, "a@1", &o, NULL), ACTL_EEXIST, "'a@1'");
    assert_ok(actl_store_stats_get(b, &after));
    assert_stats_equal(&before, &after);
    /* under another name: that name's version 1, the index's tags plus ours */
    const char *mine[] = {"user=carol", NULL};
    o.name = "b";
    o.tags = mine;
    actl_pull_result r = do_pull(b, url, "a@1", &o);
    assert_string_equal(r.name, "b");
    assert_int_equal(r.version, 1);
    actl_entries *l = NULL;
    const actl_entry *e = show(b, "b@1", &l);
    assert_string_equal(e->description, "desc");
    assert_int_equal(e->tag_count, 2);
    assert_string_equal(e->tag_keys[0], "task");
    assert_string_equal(e->tag_values[0], "x");
    assert_string_equal(e->tag_keys[1], "user");
    assert_string_equal(e->tag_values[1], "carol");
    actl_entries_free(l);
    /* the same again is unchanged; into a name whose version 1 is taken, the next version */
    r = do_pull(b, url, "a@1", &o);
    assert_int_equal(r.unchanged, 1);
    o.name = "c";
    add_fixture(b, ADAPTERS "/base-tiny/road-2", "c", NULL, NULL, NULL);
    r = do_pull(b, url, "a", &o);
    assert_int_equal(r.unchanged, 0);
    assert_string_equal(r.name, "c");
    assert_int_equal(r.version, 2);
    assert_verify_clean(b);
    actl_store_close(b);
    test_fx_free(&f);
}

static void test_pull__ref_missing_from_the_index_is_ENOTFOUND(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], url[PATH_CAP];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "a", NULL, NULL, NULL);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    file_url(pub, url, sizeof url);
    actl_store *b = store_beside(&f, "b");
    actl_pull_opts o = actl_pull_default_opts();
    assert_err(actl_store_pull(b, url, "nope", &o, NULL), ACTL_ENOTFOUND, "'nope'");
    assert_non_null(strstr(actl_errmsg(), "index.json"));
    assert_err(actl_store_pull(b, url, "a@2", &o, NULL), ACTL_ENOTFOUND, "'a@2'");
    assert_err(actl_store_pull(b, url, "a@0", &o, NULL), ACTL_EINVAL, "a@0");
    /* no index at all */
    char none[PATH_CAP + 16];
    pathf(none, sizeof none, "file://%s/none", f.dir);
    assert_err(actl_store_pull(b, none, "a", &o, NULL), ACTL_ENOTFOUND, "index.json");
    actl_store_stats st;
    assert_ok(actl_store_stats_get(b, &st));
    assert_int_equal(st.versions, 0);
    actl_store_close(b);
    test_fx_free(&f);
}

static void test_pull__published_pack_whose_bytes_do_not_match_is_refused(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], url[PATH_CAP], pa[65], pb[65], path[PATH_CAP + 128],
        other[PATH_CAP + 128];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "a", NULL, NULL, pa);
    add_fixture(f.s, ADAPTERS "/base-tiny/lora-bias", "b", NULL, NULL, pb);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    file_url(pub, url, sizeof url);
    fx g = test_fx_new();
    snapshot before = snap(&g);
    actl_pull_opts o = actl_pull_default_opts();
    /* a's object holds b's (valid) pack */
    pathf(path, sizeof path, "%s/objects/%s", pub, pa);
    pathf(other, sizeof other, "%s/objects/%s", pub, pb);
    copy_file(other, path);
    assert_err(actl_store_pull(g.s, url, "a", &o, NULL), ACTL_ECORRUPT, pb);
    assert_non_null(strstr(actl_errmsg(), pa));
    assert_unchanged(&g, &before);
    assert_int_equal(partial_count(&g), 0);
    /* b's object with one byte flipped */
    FILE *fp = fopen(other, "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, (long)(test_file_size(other) / 2), SEEK_SET), 0);
    int c = fgetc(fp);
    assert_int_equal(fseek(fp, (long)(test_file_size(other) / 2), SEEK_SET), 0);
    fputc(c ^ 0x10, fp);
    fclose(fp);
    assert_err(actl_store_pull(g.s, url, "b", &o, NULL), ACTL_ECORRUPT, pb);
    assert_unchanged(&g, &before);
    /* --sha256 other than the index's pack: refused before any download */
    o.sha256 = pa;
    assert_err(actl_store_pull(g.s, url, "b", &o, NULL), ACTL_ECORRUPT, "not the expected");
    assert_unchanged(&g, &before);
    test_fx_free(&g);
    test_fx_free(&f);
}

static void test_pull__hostile_index_is_refused(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], url[PATH_CAP], path[PATH_CAP + 64], pack[65], text[4096];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "a", NULL, NULL, pack);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    file_url(pub, url, sizeof url);
    pathf(path, sizeof path, "%s/index.json", pub);
    actl_store *b = store_beside(&f, "b");
    actl_store_stats before, after;
    assert_ok(actl_store_stats_get(b, &before));
    /* Each: the text of one adapter entry (or of the whole index), the code
     * and a word of the message. %s is the real pack's digest. */
    static const struct {
        int whole;
        const char *text;
        int code;
        const char *needle;
    } cases[] = {
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"../../etc/passwd\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "../../etc/passwd"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%.63s/\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "lowercase hex"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%sAB\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "lowercase hex"},
        {0, "{\"name\":\"../a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "adapter name"},
        {0, "{\"name\":\"a b\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "adapter name"},
        {0, "{\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,\"raw_bytes\":1}", ACTL_EFORMAT,
         "no name"},
        {0, "{\"name\":\"a\",\"version\":0,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "positive"},
        {0, "{\"name\":\"a\",\"version\":\"1\",\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "positive"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":4611686018427387904,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "stored_bytes"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":0,"
            "\"raw_bytes\":1}", ACTL_EFORMAT, "stored_bytes"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":-1}", ACTL_EFORMAT, "raw_bytes"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1,\"tags\":{\"k\":1}}", ACTL_EFORMAT, "not a string"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1,\"tags\":{\"bad key\":\"v\"}}", ACTL_EFORMAT, "tag key"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1,\"tags\":[\"k=v\"]}", ACTL_EFORMAT, "tags"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1,\"description\":\"bell\\u0007\"}", ACTL_EFORMAT, "description"},
        {0, "{\"name\":\"a\",\"version\":1,\"pack\":\"%s\",\"stored_bytes\":10,"
            "\"raw_bytes\":1,\"base_model\":5}", ACTL_EFORMAT, "base_model"},
        {0, "[1]", ACTL_EFORMAT, "not an object"},
        {1, "{\"format\":2,\"adapters\":[]}", ACTL_EUNSUPPORTED, "format 2"},
        {1, "{\"adapters\":[]}", ACTL_EFORMAT, "published store"},
        {1, "{\"format\":1,\"adapters\":{}}", ACTL_EFORMAT, "published store"},
        {1, "{\"format\":1,\"format\":1,\"adapters\":[]}", ACTL_EFORMAT, "duplicate"},
        {1, "{\"format\":1,\"adapters\":[", ACTL_EFORMAT, "invalid JSON"},
        {1, "", ACTL_EFORMAT, "invalid JSON"},
        {1, "{\"format\":1,\"adapters\":[{\"name\":\"a\",\"version\":1,\"pack\":\"%s\","
            "\"stored_bytes\":10,\"raw_bytes\":1},{\"name\":\"a\",\"version\":1,\"pack\":\"%s\","
            "\"stored_bytes\":10,\"raw_bytes\":1}]}", ACTL_EFORMAT, "twice"},
    };
    actl_pull_opts o = actl_pull_default_opts();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char entry[1024];
        if (cases[i].whole) {
            pathf(text, sizeof text, cases[i].text, pack, pack);
        } else {
            pathf(entry, sizeof entry, cases[i].text, pack);
            pathf(text, sizeof text, "{\"format\":1,\"adapters\":[%s]}", entry);
        }
        test_write_text(path, text);
        int rc = actl_store_pull(b, url, "a", &o, NULL);
        if (rc != cases[i].code || !strstr(actl_errmsg(), cases[i].needle) ||
            !strstr(actl_errmsg(), "index.json"))
            fail_msg("case %zu (%s): expected %s with \"%s\", got %s: %s", i, text,
                     actl_strerror(cases[i].code), cases[i].needle, actl_strerror(rc),
                     actl_errmsg());
    }
    /* a size over the caller's limit is refused before the download */
    pathf(text, sizeof text,
             "{\"format\":1,\"adapters\":[{\"name\":\"a\",\"version\":1,\"pack\":\"%s\","
             "\"stored_bytes\":1000000,\"raw_bytes\":1}]}",
             pack);
    test_write_text(path, text);
    o.max_size = 1000;
    assert_err(actl_store_pull(b, url, "a", &o, NULL), ACTL_ELIMIT, "limit");
    o.max_size = 0;
    /* a pack bigger than its entry says is cut at stored_bytes */
    pathf(text, sizeof text,
             "{\"format\":1,\"adapters\":[{\"name\":\"a\",\"version\":1,\"pack\":\"%s\","
             "\"stored_bytes\":100,\"raw_bytes\":1}]}",
             pack);
    test_write_text(path, text);
    assert_err(actl_store_pull(b, url, "a", &o, NULL), ACTL_ELIMIT, "larger than the limit");
    /* an index over 64 MiB (sparse: costs no disk) */
    int fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (64 << 20) + 1), 0);
    close(fd);
    assert_err(actl_store_pull(b, url, "a", &o, NULL), ACTL_ELIMIT, "index.json");
    assert_ok(actl_store_stats_get(b, &after));
    assert_stats_equal(&before, &after);
    assert_verify_clean(b);
    actl_store_close(b);
    test_fx_free(&f);
}

static void test_publish__a_missing_ref_writes_nothing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "a", NULL, NULL, NULL);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    const char *refs[] = {"a", "nope", NULL};
    size_t count = 7;
    assert_err(actl_store_publish(f.s, pub, refs, &count), ACTL_ENOTFOUND, "nope");
    assert_int_equal(count, 0);
    assert_false(actl__exists(pub));
    const char *refs2[] = {"a@2", NULL};
    assert_err(actl_store_publish(f.s, pub, refs2, NULL), ACTL_ENOTFOUND, "a@2");
    const char *refs3[] = {"bad name", NULL};
    assert_err(actl_store_publish(f.s, pub, refs3, NULL), ACTL_EINVAL, "bad name");
    assert_false(actl__exists(pub));
    assert_err(actl_store_publish(f.s, NULL, NULL, NULL), ACTL_EINVAL, "NULL");
    /* an empty store publishes an empty index */
    actl_store *e = store_beside(&f, "empty");
    assert_ok(actl_store_publish(e, pub, NULL, &count));
    assert_int_equal(count, 0);
    actl_store_close(e);
    test_fx_free(&f);
}

/* A stack is a recipe over other entries, without a pack of its own: left out
 * (and counted) when everything is published, refused when named. */
static void test_publish__leaves_out_stacks_and_refuses_one_named(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], index[PATH_CAP + 64], sha[65], sha2[65];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "a", NULL, NULL, NULL);
    add_fixture(f.s, ADAPTERS "/base-tiny/road-2", "b", NULL, NULL, NULL);
    actl_inputs *in = NULL;
    assert_ok(actl_inputs_new(&in));
    assert_ok(actl_inputs_add(in, f.s, "a", 1.0));
    assert_ok(actl_inputs_add(in, f.s, "b", 0.5));
    size_t n_in;
    const actl_input *items = actl_inputs_items(in, &n_in);
    actl_add_opts o = actl_add_default_opts();
    o.name = "mix";
    assert_ok(actl_store_add_stack(f.s, items, n_in, &o, NULL));
    actl_inputs_free(in);

    pathf(pub, sizeof pub, "%s/pub", f.dir);
    pathf(index, sizeof index, "%s/index.json", pub);
    size_t count = 9, stacks = 9;
    assert_ok(actl__store_publish(f.s, pub, NULL, &count, &stacks));
    assert_int_equal(count, 2);
    assert_int_equal(stacks, 1);
    assert_ok(actl_store_publish(f.s, pub, NULL, &count));
    assert_int_equal(count, 2);
    /* the index lists the two adapters and no stack */
    size_t len;
    char *text = (char *)test_slurp(index, &len);
    json_t *root = NULL;
    assert_ok(actl__json_parse(text, len, "index", &root));
    json_t *list = json_object_get(root, "adapters");
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "name")), "a");
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "name")), "b");
    json_decref(root);
    free(text);

    /* named, alone or among others: refused, and the index stays as it was */
    test_sha256sum(index, sha);
    const char *refs[] = {"mix", NULL};
    assert_err(actl__store_publish(f.s, pub, refs, &count, &stacks), ACTL_EUNSUPPORTED,
               "'mix@1': it is a stack");
    assert_int_equal(count, 0);
    assert_int_equal(stacks, 0);
    const char *refs2[] = {"a", "mix@1", NULL};
    assert_err(actl_store_publish(f.s, pub, refs2, &count), ACTL_EUNSUPPORTED, "stack");
    test_sha256sum(index, sha2);
    assert_string_equal(sha, sha2);
    /* nothing is written for a refused one */
    char pub2[PATH_CAP];
    pathf(pub2, sizeof pub2, "%s/pub2", f.dir);
    assert_err(actl_store_publish(f.s, pub2, refs, NULL), ACTL_EUNSUPPORTED, "stack");
    assert_false(actl__exists(pub2));
    test_fx_free(&f);
}

static void test_publish__refuses_a_damaged_pack_and_keeps_the_old_index(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP], pack[65], path[PATH_CAP + 64], index[PATH_CAP + 64], sha[65];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora", "a", NULL, NULL, NULL);
    pathf(pub, sizeof pub, "%s/pub", f.dir);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    pathf(index, sizeof index, "%s/index.json", pub);
    test_sha256sum(index, sha);
    add_fixture(f.s, ADAPTERS "/base-tiny/mos", "b", NULL, NULL, pack);
    pathf(path, sizeof path, "%s/objects/%.2s/%s", f.store, pack, pack);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    fseek(fp, 40, SEEK_SET);
    fputc('!', fp);
    fclose(fp);
    assert_err(actl_store_publish(f.s, pub, NULL, NULL), ACTL_ECORRUPT, pack);
    char now[65];
    test_sha256sum(index, now);
    assert_string_equal(now, sha); /* the old index still stands */
    pathf(path, sizeof path, "%s/objects", pub);
    assert_int_equal(test_count_files(path), 1); /* no temporary left */
    test_fx_free(&f);
}

/* ---- partial files and gc ------------------------------------------------------------ */

static void test_gc__removes_an_abandoned_partial_but_not_a_locked_one(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char dir[PATH_CAP], src[PATH_CAP], dst[PATH_CAP + 64], url[PATH_CAP];
    /* a directory with the config but no weights: the pull fails, and leaves
     * nothing behind (the config came whole, the weights not at all) */
    pathf(dir, sizeof dir, "%s/half", f.dir);
    mkdirs(dir);
    pathf(src, sizeof src, ADAPTERS "/base-tiny/lora/" CONFIG_FILE);
    pathf(dst, sizeof dst, "%s/" CONFIG_FILE, dir);
    copy_file(src, dst);
    file_url(dir, url, sizeof url);
    actl_pull_opts o = actl_pull_default_opts();
    assert_err(actl_store_pull(f.s, url, NULL, &o, NULL), ACTL_ENOTFOUND, MODEL_FILE);
    assert_int_equal(partial_count(&f), 0);
    /* what a killed pull leaves (HTTP keeps real ones: see the http group),
     * and a partial file a pull in progress holds */
    char part[PATH_CAP], etag[PATH_CAP], held[PATH_CAP], held_etag[PATH_CAP];
    partial_paths(&f, "http://127.0.0.1:1/left/" MODEL_FILE, part, etag);
    test_write_text(part, "some bytes");
    test_write_text(etag, "\"e\"\n");
    partial_paths(&f, "http://127.0.0.1:1/held/" MODEL_FILE, held, held_etag);
    test_write_text(held, "other bytes");
    int fd = open(held, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    actl_gc_result g;
    assert_ok(actl_store_gc(f.s, &g));
    assert_int_equal(g.temp_removed, 2);
    assert_false(actl__exists(part));
    assert_true(actl__exists(held));
    close(fd); /* the pull ends without finishing: now abandoned */
    assert_ok(actl_store_gc(f.s, &g));
    assert_int_equal(partial_count(&f), 0);
    test_fx_free(&f);
}

/* ---- HTTP, against tests/faultserver.py ------------------------------------------------- */

static struct {
    pid_t pid;
    char *dir;
    char root[PATH_CAP];
    int port;
} S;

static int start_server(void)
{
    char portfile[PATH_CAP + 16];
    pathf(portfile, sizeof portfile, "%s/port", S.dir);
    return test_faultserver_start(S.root, portfile, NULL, NULL, &S.pid, &S.port);
}

static int http_setup(void **state)
{
    (void)state;
    const char *proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY",
                             "all_proxy",  "ALL_PROXY",   "HTTP_PROXY"};
    for (size_t i = 0; i < sizeof proxies / sizeof *proxies; i++)
        unsetenv(proxies[i]);
    setenv("ADAPTERCTL_FETCH_BACKOFF_MS", "20", 1);
    setenv("ADAPTERCTL_FETCH_LOW_SPEED_S", "2", 1);
    S.dir = test_tmpdir();
    pathf(S.root, sizeof S.root, "%s/root", S.dir);
    char dir[PATH_CAP + 64];
    pathf(dir, sizeof dir, "%s/peft/lora", S.root);
    copy_fixture(ADAPTERS "/base-tiny/lora", dir);
    pathf(dir, sizeof dir, "%s/peft/mos", S.root);
    copy_fixture(ADAPTERS "/hf-tiny/mos", dir);
    pathf(dir, sizeof dir, "%s/org/repo/resolve/main", S.root);
    copy_fixture(ADAPTERS "/base-tiny/road-4", dir);
    pathf(dir, sizeof dir, "%s/peft/big", S.root);
    write_big_lora(dir);
    return start_server();
}

static int http_teardown(void **state)
{
    (void)state;
    test_faultserver_stop(S.pid);
    if (S.dir) {
        test_rmtree(S.dir);
        free(S.dir);
    }
    return 0;
}

static const char *http_url(char *buf, size_t cap, const char *rest)
{
    pathf(buf, cap, "http://127.0.0.1:%d/%s", S.port, rest);
    return buf;
}

/* Body bytes the server sent for one path since the last _reset. */
static long served(const char *path)
{
    char u[256];
    actl__fetch f;
    memset(&f, 0, sizeof f);
    f.url = http_url(u, sizeof u, "_stats");
    assert_ok(actl__fetch_run(&f));
    json_error_t je;
    json_t *j = json_loads(f.data, 0, &je);
    free(f.data);
    assert_non_null(j);
    json_t *b = json_object_get(json_object_get(j, "bytes"), path);
    long n = b ? (long)json_integer_value(b) : 0;
    json_decref(j);
    return n;
}

static int reset_counters(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f;
    memset(&f, 0, sizeof f);
    f.url = http_url(u, sizeof u, "_reset");
    assert_ok(actl__fetch_run(&f));
    free(f.data);
    return 0;
}

static int reset_and_follow(void **state)
{
    reset_counters(state);
    return follow_on(state);
}

/* A download of a few MiB, followed while it arrives (by default from 4 MiB
 * on; from the first byte under follow_on), cut halfway once, as a PEFT URL
 * and from a published store: the same pack as a local add, every byte sent
 * once. */
static void test_pull_http__a_big_adapter_pulled_while_it_arrives_is_the_local_adds(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char u[256], src[PATH_CAP], pub[PATH_CAP + 64], want[65], sha[65];
    pathf(src, sizeof src, "%s/peft/big", S.root);
    add_fixture(f.s, src, "big", NULL, NULL, want);
    pathf(pub, sizeof pub, "%s/pub-big", S.root);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    pathf(src, sizeof src, "%s/peft/big/" MODEL_FILE, S.root);
    test_sha256sum(src, sha);
    uint64_t size = test_file_size(src);

    actl_store *b = store_beside(&f, "b");
    actl_pull_opts o = actl_pull_default_opts();
    size_t ahead = actl__pull_ahead;
    actl_pull_result r = do_pull(b, http_url(u, sizeof u, "drop-half-1/peft/big"), NULL, &o);
    /* the tensors after the first 4 MiB at least were compressed on the way */
    assert_true(actl__pull_ahead - ahead >= 6);
    assert_string_equal(r.pack, want);
    assert_string_equal(r.sha256, sha);
    assert_int_equal(served("/drop-half-1/peft/big/" MODEL_FILE), (long)size);

    actl_store *c = store_beside(&f, "c");
    char pack[PATH_CAP + 160];
    pathf(pack, sizeof pack, "/drop-half-1/pub-big/objects/%s", want);
    ahead = actl__pull_ahead;
    r = do_pull(c, http_url(u, sizeof u, "drop-half-1/pub-big"), "big", &o);
    assert_true(actl__pull_ahead - ahead >= 6);
    assert_string_equal(r.pack, want);
    pathf(src, sizeof src, "%s/objects/%.2s/%s", f.store, want, want);
    assert_int_equal(served(pack), (long)test_file_size(src));
    actl_adapter *x = NULL, *y = NULL, *z = NULL;
    assert_ok(actl_store_load(f.s, "big", &x));
    assert_ok(actl_store_load(b, "big", &y));
    assert_ok(actl_store_load(c, "big", &z));
    test_assert_same_tensors(x, y);
    test_assert_same_tensors(x, z);
    actl_adapter_free(x);
    actl_adapter_free(y);
    actl_adapter_free(z);
    assert_verify_clean(b);
    assert_verify_clean(c);
    actl_store_close(b);
    actl_store_close(c);
    test_fx_free(&f);
}

static void test_pull_http__second_pull_revalidates_and_transfers_nothing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char u[256];
    http_url(u, sizeof u, "peft/lora");
    actl_pull_opts o = actl_pull_default_opts();
    actl_pull_result r1 = do_pull(f.s, u, NULL, &o);
    assert_int_equal(r1.unchanged, 0);
    assert_int_equal(r1.files_transferred, 2);
    long first = served("/peft/lora/" MODEL_FILE) + served("/peft/lora/" CONFIG_FILE);
    assert_int_equal((uint64_t)first, r1.bytes_transferred);
    actl_pull_result r2 = do_pull(f.s, u, NULL, &o);
    assert_int_equal(r2.unchanged, 1);
    assert_int_equal(r2.bytes_transferred, 0);
    assert_int_equal(r2.files_transferred, 0);
    assert_string_equal(r2.name, "lora");
    assert_int_equal(r2.version, 1);
    assert_string_equal(r2.sha256, r1.sha256);
    assert_int_equal(served("/peft/lora/" MODEL_FILE) + served("/peft/lora/" CONFIG_FILE),
                     first);
    /* the adapter removed: 304s are not enough, the files come again */
    assert_ok(actl_store_rm(f.s, "lora"));
    actl_pull_result r3 = do_pull(f.s, u, NULL, &o);
    assert_int_equal(r3.unchanged, 0);
    assert_int_equal(r3.version, 2);
    assert_int_equal(r3.bytes_transferred, r1.bytes_transferred);
    test_fx_free(&f);
}

static void test_pull_http__published_store_second_pull_transfers_nothing(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char pub[PATH_CAP + 64], u[256], pack[65];
    add_fixture(f.s, ADAPTERS "/base-tiny/lora-patterns", "p", NULL, NULL, pack);
    pathf(pub, sizeof pub, "%s/pub", S.root);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    actl_store *b = store_beside(&f, "b");
    http_url(u, sizeof u, "pub/");
    actl_pull_opts o = actl_pull_default_opts();
    actl_pull_result r1 = do_pull(b, u, "p", &o);
    assert_int_equal(r1.files_transferred, 2);
    assert_string_equal(r1.pack, pack);
    actl_pull_result r2 = do_pull(b, u, "p", &o);
    assert_int_equal(r2.unchanged, 1);
    assert_int_equal(r2.bytes_transferred, 0);
    assert_int_equal(r2.files_transferred, 0);
    assert_string_equal(r2.name, "p");
    assert_int_equal(r2.version, 1);
    r2 = do_pull(b, u, "p@1", &o);
    assert_int_equal(r2.unchanged, 1);
    /* a new version published: the index changes, only the new pack moves */
    add_fixture(f.s, ADAPTERS "/base-tiny/lora-fanin", "p", NULL, NULL, NULL);
    assert_ok(actl_store_publish(f.s, pub, NULL, NULL));
    actl_pull_result r3 = do_pull(b, u, "p", &o);
    assert_int_equal(r3.unchanged, 0);
    assert_int_equal(r3.version, 2);
    assert_int_equal(r3.files_transferred, 2);
    assert_verify_clean(b);
    actl_store_close(b);
    test_fx_free(&f);
}

static void test_pull_http__resumes_a_partial_file_with_if_range(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char u[256], file_u[300], part[PATH_CAP], etag[PATH_CAP], src[PATH_CAP], sha[65];
    http_url(u, sizeof u, "peft/mos");
    pathf(file_u, sizeof file_u, "%s/" MODEL_FILE, u);
    pathf(src, sizeof src, "%s/peft/mos/" MODEL_FILE, S.root);
    test_sha256sum(src, sha);
    uint64_t size = test_file_size(src);
    /* what an interrupted pull leaves: the first half, and the ETag it came with */
    FILE *in = fopen(src, "rb");
    assert_non_null(in);
    char *half = malloc(size / 2);
    assert_int_equal(fread(half, 1, size / 2, in), size / 2);
    fclose(in);
    partial_paths(&f, file_u, part, etag);
    mkdirs(strcat(strcpy(src, f.store), "/partial"));
    test_write_file(part, half, size / 2);
    char tag[80];
    pathf(tag, sizeof tag, "\"%s\"\n", sha); /* the server's ETag is the quoted digest */
    test_write_text(etag, tag);
    actl_pull_opts o = actl_pull_default_opts();
    actl_pull_result r = do_pull(f.s, u, NULL, &o);
    assert_string_equal(r.sha256, sha);
    assert_int_equal(served("/peft/mos/" MODEL_FILE), (long)(size - size / 2));
    assert_int_equal(partial_count(&f), 0);

    /* a partial whose ETag the server no longer has: the whole file comes */
    reset_counters(NULL);
    assert_ok(actl_store_rm(f.s, "mos"));
    test_write_file(part, half, size / 2);
    test_write_text(etag, "\"stale\"\n");
    r = do_pull(f.s, u, NULL, &o);
    assert_string_equal(r.sha256, sha);
    assert_int_equal(served("/peft/mos/" MODEL_FILE), (long)size);

    /* a partial without an ETag, and no digest to check: started again */
    reset_counters(NULL);
    assert_ok(actl_store_rm(f.s, "mos"));
    test_write_file(part, "garbage that is not the file's start", 36);
    unlink(etag);
    r = do_pull(f.s, u, NULL, &o);
    assert_string_equal(r.sha256, sha);
    assert_int_equal(served("/peft/mos/" MODEL_FILE), (long)size);
    free(half);
    test_fx_free(&f);
}

static void test_pull_http__hf_over_http_and_x_linked_etag(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char ep[256], sha[65], src[PATH_CAP];
    pathf(src, sizeof src, "%s/org/repo/resolve/main/" MODEL_FILE, S.root);
    test_sha256sum(src, sha);
    setenv("HF_ENDPOINT", http_url(ep, sizeof ep, ""), 1);
    actl_pull_opts o = actl_pull_default_opts();
    actl_pull_result r = do_pull(f.s, "hf://org/repo", NULL, &o);
    assert_string_equal(r.name, "repo");
    assert_string_equal(r.sha256, sha);
    /* the hub announces another digest than the bytes have: refused */
    snapshot before = snap(&f);
    char bad[256];
    pathf(bad, sizeof bad, "linked/%064d", 0);
    setenv("HF_ENDPOINT", http_url(ep, sizeof ep, bad), 1);
    o.name = "other";
    assert_err(actl_store_pull(f.s, "hf://org/repo", NULL, &o, NULL), ACTL_ECORRUPT,
               "X-Linked-Etag");
    assert_non_null(strstr(actl_errmsg(), "hf://org/repo"));
    assert_unchanged(&f, &before);
    assert_int_equal(partial_count(&f), 0);
    unsetenv("HF_ENDPOINT");
    test_fx_free(&f);
}

static void test_pull_http__a_failed_download_keeps_a_partial_that_gc_removes(void **state)
{
    (void)state;
    fx f = test_fx_new();
    char u[256];
    /* every attempt cut after half its bytes: the pull gives up */
    http_url(u, sizeof u, "drop-half/peft/mos");
    actl_pull_opts o = actl_pull_default_opts();
    snapshot before = snap(&f);
    assert_err(actl_store_pull(f.s, u, NULL, &o, NULL), ACTL_EIO, "closed after");
    assert_non_null(strstr(actl_errmsg(), u));
    assert_unchanged(&f, &before);
    assert_true(partial_count(&f) >= 1);
    actl_gc_result g;
    assert_ok(actl_store_gc(f.s, &g));
    assert_int_equal(partial_count(&f), 0);
    test_fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest file_tests[] = {
        cmocka_unit_test(test_pull__peft_url_gives_what_a_local_add_gives_for_every_fixture),
        cmocka_unit_test_setup_teardown(
            test_pull__peft_url_gives_what_a_local_add_gives_for_every_fixture, follow_on,
            follow_off),
        cmocka_unit_test(test_pull__unchanged_peft_url_adds_nothing_the_second_time),
        cmocka_unit_test(test_pull__name_tags_and_a_trailing_slash),
        cmocka_unit_test(test_pull__refuses_what_it_cannot_name_or_reach),
        cmocka_unit_test(test_pull__sha256_mismatch_is_refused_and_the_store_unchanged),
        cmocka_unit_test(test_pull__an_invalid_adapter_is_refused_and_the_store_unchanged),
        cmocka_unit_test(test_pull__hf_url_resolves_against_HF_ENDPOINT),
        cmocka_unit_test(test_pull__hf_url_validation),
        cmocka_unit_test(test_publish__writes_a_sorted_index_and_verified_objects),
        cmocka_unit_test(test_publish__then_pull_round_trips_every_kind),
        cmocka_unit_test_setup_teardown(test_publish__then_pull_round_trips_every_kind,
                                        follow_on, follow_off),
        cmocka_unit_test(test_pull__published_pack_already_here_is_not_downloaded),
        cmocka_unit_test(test_pull__published_version_taken_locally_is_EEXIST_unless_renamed),
        cmocka_unit_test(test_pull__ref_missing_from_the_index_is_ENOTFOUND),
        cmocka_unit_test(test_pull__published_pack_whose_bytes_do_not_match_is_refused),
        cmocka_unit_test(test_pull__hostile_index_is_refused),
        cmocka_unit_test(test_publish__a_missing_ref_writes_nothing),
        cmocka_unit_test(test_publish__refuses_a_damaged_pack_and_keeps_the_old_index),
        cmocka_unit_test(test_publish__leaves_out_stacks_and_refuses_one_named),
        cmocka_unit_test(test_gc__removes_an_abandoned_partial_but_not_a_locked_one),
    };
#define H(name) cmocka_unit_test_setup(name, reset_counters)
#define HF(name) cmocka_unit_test_setup_teardown(name, reset_and_follow, follow_off)
    const struct CMUnitTest http_tests[] = {
        H(test_pull_http__second_pull_revalidates_and_transfers_nothing),
        H(test_pull_http__published_store_second_pull_transfers_nothing),
        H(test_pull_http__resumes_a_partial_file_with_if_range),
        H(test_pull_http__hf_over_http_and_x_linked_etag),
        H(test_pull_http__a_failed_download_keeps_a_partial_that_gc_removes),
        H(test_pull_http__a_big_adapter_pulled_while_it_arrives_is_the_local_adds),
        HF(test_pull_http__a_big_adapter_pulled_while_it_arrives_is_the_local_adds),
    };
    int failed = cmocka_run_group_tests_name("pull (file://)", file_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("pull (http)", http_tests, http_setup, http_teardown);
    return failed;
}
