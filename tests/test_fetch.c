/* test_fetch.c: the download layer (lib/fetch.c) against tests/faultserver.py on
 * loopback. The server runs for the whole group; each test resets its counters
 * and reads them back from /_stats to count requests and body bytes served.
 * Digests are checked against test_sha256sum(1), an independent implementation. */
#include "testutil.h"

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>

#define BIG_SIZE (3u << 20)
#define SMALL_TEXT "small text served from memory\n"
#define TRICKLE_SIZE 4096u
#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static struct {
    pid_t pid;
    char *dir;        /* the test's scratch directory */
    char root[4200];  /* what the server serves */
    int port;
    char big_sha[65]; /* sha256sum of root/big.bin */
    char big_etag[70];
    unsigned char *big; /* its bytes */
} S;

/* ---- helpers ------------------------------------------------------------ */

/* "http://127.0.0.1:PORT/rest" into buf. */
static const char *url(char *buf, size_t cap, const char *rest)
{
    snprintf(buf, cap, "http://127.0.0.1:%d/%s", S.port, rest);
    return buf;
}

/* A scratch path for a test's destination, removed first. */
static const char *out_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", S.dir, name);
    unlink(buf);
    return buf;
}

static actl__fetch new_fetch(const char *u, const char *path)
{
    actl__fetch f;
    memset(&f, 0, sizeof f);
    f.url = u;
    f.path = path;
    return f;
}

static void get_mem(const char *rest, char **data)
{
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, rest), NULL);
    assert_ok(actl__fetch_run(&f));
    *data = f.data;
}

/* Requests seen and body bytes sent for one path, from the server's counters. */
static void stats(const char *path, long *requests, long *bytes)
{
    char *doc = NULL;
    get_mem("_stats", &doc);
    json_error_t je;
    json_t *j = json_loads(doc, 0, &je);
    free(doc);
    assert_non_null(j);
    json_t *r = json_object_get(json_object_get(j, "requests"), path);
    json_t *b = json_object_get(json_object_get(j, "bytes"), path);
    *requests = r ? (long)json_integer_value(r) : 0;
    *bytes = b ? (long)json_integer_value(b) : 0;
    json_decref(j);
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* ---- the server ------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    char path[4400], portfile[4400];
    /* Loopback only: a proxy from the environment must not see these requests. */
    const char *proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy",
                             "ALL_PROXY", "HTTP_PROXY"};
    for (size_t i = 0; i < sizeof proxies / sizeof *proxies; i++)
        unsetenv(proxies[i]);
    setenv("ADAPTERCTL_FETCH_BACKOFF_MS", "50", 1);
    setenv("ADAPTERCTL_FETCH_LOW_SPEED_S", "1", 1);

    S.dir = test_tmpdir();
    snprintf(S.root, sizeof S.root, "%s/root", S.dir);
    if (mkdir(S.root, 0755) != 0)
        return -1;
    /* 3 MiB of xorshift64 bytes: incompressible, reproducible */
    S.big = malloc(BIG_SIZE);
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < BIG_SIZE; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        S.big[i] = (unsigned char)(r >> 24);
    }
    snprintf(path, sizeof path, "%s/big.bin", S.root);
    test_write_file(path, S.big, BIG_SIZE);
    test_sha256sum(path, S.big_sha);
    snprintf(S.big_etag, sizeof S.big_etag, "\"%s\"", S.big_sha);
    snprintf(path, sizeof path, "%s/small.txt", S.root);
    test_write_file(path, SMALL_TEXT, strlen(SMALL_TEXT));
    snprintf(path, sizeof path, "%s/trickle.bin", S.root);
    test_write_file(path, S.big, TRICKLE_SIZE);
    snprintf(path, sizeof path, "%s/empty.bin", S.root);
    test_write_file(path, "", 0);

    snprintf(portfile, sizeof portfile, "%s/port", S.dir);
    return test_faultserver_start(S.root, portfile, NULL, NULL, &S.pid, &S.port);
}

static int group_teardown(void **state)
{
    (void)state;
    test_faultserver_stop(S.pid);
    if (S.dir) {
        test_rmtree(S.dir);
        free(S.dir);
    }
    free(S.big);
    return 0;
}

static int reset_counters(void **state)
{
    (void)state;
    char *doc = NULL;
    get_mem("_reset", &doc);
    free(doc);
    return 0;
}

/* ---- plain downloads ------------------------------------------------------- */

typedef struct {
    int calls;
    uint64_t last_done, last_total;
    int went_back;
} progress_log;

static void on_progress(uint64_t done, uint64_t total, void *ctx)
{
    progress_log *p = ctx;
    if (done < p->last_done)
        p->went_back = 1;
    p->calls++;
    p->last_done = done;
    p->last_total = total;
}

static void test_fetch__downloads_a_file_with_its_sha256(void **state)
{
    (void)state;
    char u[256], out[4400], hex[65];
    progress_log log = {0};
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out_path(out, sizeof out, "a"));
    f.progress = on_progress;
    f.progress_ctx = &log;
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 200);
    assert_string_equal(f.sha256, S.big_sha);
    test_sha256sum(out, hex);
    assert_string_equal(hex, S.big_sha);
    assert_int_equal(f.size, BIG_SIZE);
    assert_int_equal(f.transferred, BIG_SIZE);
    assert_int_equal(test_file_size(out), BIG_SIZE);
    assert_string_equal(f.etag, S.big_etag);
    assert_string_equal(f.linked_sha256, "");
    assert_null(f.data);
    /* at least the closing call, which reports everything */
    assert_true(log.calls >= 1);
    assert_int_equal(log.last_done, BIG_SIZE);
    assert_int_equal(log.last_total, BIG_SIZE);
    assert_false(log.went_back);
    long req, bytes;
    stats("/big.bin", &req, &bytes);
    assert_int_equal(req, 1);
    assert_int_equal(bytes, BIG_SIZE);
}

static void test_fetch__downloads_into_memory(void **state)
{
    (void)state;
    char u[256], hex[65], src[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "small.txt"), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_non_null(f.data);
    assert_string_equal(f.data, SMALL_TEXT); /* NUL-terminated */
    assert_int_equal(f.size, strlen(SMALL_TEXT));
    snprintf(src, sizeof src, "%s/small.txt", S.root);
    test_sha256sum(src, hex);
    assert_string_equal(f.sha256, hex);
    free(f.data);
}

static void test_fetch__downloads_an_empty_file(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "empty.bin"), out_path(out, sizeof out, "e"));
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.size, 0);
    assert_string_equal(f.sha256, EMPTY_SHA);
    assert_int_equal(test_file_size(out), 0);
    f = new_fetch(u, NULL);
    assert_ok(actl__fetch_run(&f));
    assert_non_null(f.data);
    assert_string_equal(f.data, "");
    free(f.data);
}

static void test_fetch__downloads_a_chunked_body(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "chunked/big.bin"), out_path(out, sizeof out, "c"));
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(f.size, BIG_SIZE);
}

static void test_fetch__reads_a_file_url(void **state)
{
    (void)state;
    char u[4400], out[4400];
    snprintf(u, sizeof u, "file://%s/big.bin", S.root);
    out_path(out, sizeof out, "f");
    test_write_file(out, "stale bytes that must go", 24);
    actl__fetch f = new_fetch(u, out);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 0);
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(test_file_size(out), BIG_SIZE);
    snprintf(u, sizeof u, "file://%s/absent.bin", S.root);
    f = new_fetch(u, NULL);
    assert_err(actl__fetch_run(&f), ACTL_ENOTFOUND, "absent.bin");
}

/* ---- revalidation and resume ------------------------------------------------ */

static void test_fetch__revalidates_with_if_none_match(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out_path(out, sizeof out, "r"));
    f.if_none_match = S.big_etag;
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.not_modified, 1);
    assert_int_equal(f.status, 304);
    assert_int_equal(f.transferred, 0);
    assert_string_equal(f.etag, S.big_etag);
    assert_false(actl__exists(out)); /* nothing written, not even created */
    /* another ETag: the whole body */
    f = new_fetch(u, NULL);
    f.if_none_match = "\"something-else\"";
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.not_modified, 0);
    assert_string_equal(f.sha256, S.big_sha);
    free(f.data);
    long req, bytes;
    stats("/big.bin", &req, &bytes);
    assert_int_equal(req, 2);
    assert_int_equal(bytes, BIG_SIZE);
}

static void test_fetch__resumes_a_partial_file(void **state)
{
    (void)state;
    char u[256], out[4400];
    const size_t k = 1000000;
    out_path(out, sizeof out, "p");
    test_write_file(out, S.big, k);
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out);
    f.etag_in = S.big_etag;
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 206);
    assert_int_equal(f.transferred, BIG_SIZE - k);
    assert_int_equal(f.size, BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha); /* the prefix is hashed too */
    assert_int_equal(test_file_size(out), BIG_SIZE);
    long req, bytes;
    stats("/big.bin", &req, &bytes);
    assert_int_equal(req, 1);
    assert_int_equal(bytes, BIG_SIZE - k);
    /* without a validator the range is asked for all the same */
    test_write_file(out, S.big, k);
    f = new_fetch(u, out);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.transferred, BIG_SIZE - k);
    assert_string_equal(f.sha256, S.big_sha);
}

static void test_fetch__restarts_when_the_server_ignores_range(void **state)
{
    (void)state;
    char u[256], out[4400];
    out_path(out, sizeof out, "n");
    test_write_file(out, "garbage that is not the file's prefix", 37);
    actl__fetch f = new_fetch(url(u, sizeof u, "norange/big.bin"), out);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 200);
    assert_int_equal(f.transferred, BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(test_file_size(out), BIG_SIZE);
}

static void test_fetch__restarts_when_if_range_does_not_match(void **state)
{
    (void)state;
    char u[256], out[4400];
    out_path(out, sizeof out, "i");
    test_write_file(out, "an older version of the file", 28);
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out);
    f.etag_in = "\"an-older-version\"";
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 200);
    assert_int_equal(f.transferred, BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha);
}

static void test_fetch__restarts_when_a_range_starts_elsewhere(void **state)
{
    (void)state;
    char u[256], out[4400];
    out_path(out, sizeof out, "b");
    test_write_file(out, S.big, 1000);
    /* a 206 for bytes 0- when 1000- was asked for: not appended, asked again whole */
    actl__fetch f = new_fetch(url(u, sizeof u, "badrange/big.bin"), out);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 200);
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(test_file_size(out), BIG_SIZE);
    long req, bytes;
    stats("/badrange/big.bin", &req, &bytes);
    assert_int_equal(req, 2);
}

static void test_fetch__takes_a_complete_partial_file_on_416(void **state)
{
    (void)state;
    char u[256], out[4400];
    out_path(out, sizeof out, "c416");
    test_write_file(out, S.big, BIG_SIZE);
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out);
    f.etag_in = S.big_etag;
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 416);
    assert_int_equal(f.transferred, 0);
    assert_int_equal(f.size, BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha);
}

static void test_fetch__restarts_a_partial_file_longer_than_the_file(void **state)
{
    (void)state;
    char u[256], out[4400];
    out_path(out, sizeof out, "l416");
    test_write_file(out, S.big, BIG_SIZE);
    FILE *fp = fopen(out, "ab");
    assert_non_null(fp);
    fputs("tail", fp);
    fclose(fp);
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 200);
    assert_int_equal(f.transferred, BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(test_file_size(out), BIG_SIZE);
}

/* ---- faults ------------------------------------------------------------------ */

static void test_fetch__resumes_after_a_dropped_connection(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f =
        new_fetch(url(u, sizeof u, "drop-half-1/big.bin"), out_path(out, sizeof out, "d"));
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(f.transferred, BIG_SIZE);
    long req, bytes;
    stats("/drop-half-1/big.bin", &req, &bytes);
    assert_int_equal(req, 2);
    /* half, then the other half: the first half is not sent twice */
    assert_int_equal(bytes, BIG_SIZE);
}

static void test_fetch__resumes_across_calls_after_giving_up(void **state)
{
    (void)state;
    char u[256], out[4400];
    /* every attempt of the first call is cut, each after half of what it asked for */
    actl__fetch f =
        new_fetch(url(u, sizeof u, "drop-half-5/big.bin"), out_path(out, sizeof out, "x"));
    assert_err(actl__fetch_run(&f), ACTL_EIO, "closed after");
    assert_non_null(strstr(actl_errmsg(), "(5 attempts)"));
    assert_non_null(strstr(actl_errmsg(), "drop-half-5/big.bin"));
    uint64_t kept = test_file_size(out);
    assert_true(kept > BIG_SIZE / 2 && kept < BIG_SIZE);
    assert_int_equal(f.transferred, kept);
    assert_string_equal(f.etag, S.big_etag); /* what the kept bytes came with */
    /* the next call transfers only the remainder */
    f = new_fetch(u, out);
    f.etag_in = S.big_etag;
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.transferred, BIG_SIZE - kept);
    assert_string_equal(f.sha256, S.big_sha);
    long req, bytes;
    stats("/drop-half-5/big.bin", &req, &bytes);
    assert_int_equal(req, 6);
    assert_int_equal(bytes, BIG_SIZE);
}

/* ---- hooks (actl__fetch_run_hooked) ---------------------------------------- */

/* What the hooks heard, and the file's size at each body(). */
typedef struct heard {
    const char *path;
    int bodies;
    char etag[4][300];
    int resumed[4];
    long size_at[4];
    int grows;
    uint64_t last, max_gap;
    bool shrank;
    int fail_with; /* body() returns this */
} heard;

static int heard_body(void *ctx, const char *etag, int resumed)
{
    heard *h = ctx;
    if (h->bodies < 4) {
        snprintf(h->etag[h->bodies], sizeof h->etag[0], "%s", etag);
        h->resumed[h->bodies] = resumed;
        struct stat st;
        h->size_at[h->bodies] = stat(h->path, &st) == 0 ? (long)st.st_size : -1;
    }
    h->bodies++;
    if (h->fail_with)
        return actl__err(h->fail_with, "refused by the hook");
    return ACTL_OK;
}

static void heard_grow(void *ctx, uint64_t ready)
{
    heard *h = ctx;
    struct stat st;
    /* what is announced is written */
    if (stat(h->path, &st) != 0 || (uint64_t)st.st_size < ready)
        h->shrank = true;
    if (ready < h->last)
        h->shrank = true;
    else if (ready - h->last > h->max_gap)
        h->max_gap = ready - h->last;
    h->last = ready;
    h->grows++;
}

static void test_fetch__hooks_hear_each_body_and_the_growth(void **state)
{
    (void)state;
    char u[256], out[4400];
    heard h;
    memset(&h, 0, sizeof h);
    h.path = out_path(out, sizeof out, "hooks");
    actl__fetch_hooks hooks = {heard_body, heard_grow, &h, 1};
    /* cut at half once: a body from zero, then its continuation */
    actl__fetch f = new_fetch(url(u, sizeof u, "drop-half-1/big.bin"), out);
    assert_ok(actl__fetch_run_hooked(&f, &hooks));
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(h.bodies, 2);
    assert_string_equal(h.etag[0], S.big_etag);
    assert_int_equal(h.resumed[0], 0);
    assert_int_equal(h.size_at[0], 0);
    /* the continuation came under If-Range with the same ETag */
    assert_string_equal(h.etag[1], S.big_etag);
    assert_int_equal(h.resumed[1], 1);
    assert_true(h.size_at[1] > 0 && h.size_at[1] < (long)BIG_SIZE);
    /* growth: never backwards, never ahead of the file, in steps of about
     * ACTL_FETCH_GROW_STEP, and the whole size at the end */
    assert_false(h.shrank);
    assert_true(h.grows >= 3);
    assert_true(h.max_gap <= ACTL_FETCH_GROW_STEP + (1u << 20));
    assert_int_equal(h.last, BIG_SIZE);
}

static void test_fetch__hooks_hear_a_body_that_replaces_the_file(void **state)
{
    (void)state;
    char u[256], out[4400];
    heard h;
    memset(&h, 0, sizeof h);
    h.path = out_path(out, sizeof out, "hooks-restart");
    test_write_file(out, "an older version of the file", 28);
    actl__fetch_hooks hooks = {heard_body, heard_grow, &h, 0};
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out);
    f.etag_in = "\"an-older-version\"";
    assert_ok(actl__fetch_run_hooked(&f, &hooks));
    assert_string_equal(f.sha256, S.big_sha);
    /* the file was truncated before the hook heard of the new body */
    assert_int_equal(h.bodies, 1);
    assert_int_equal(h.resumed[0], 0);
    assert_int_equal(h.size_at[0], 0);
    assert_string_equal(h.etag[0], S.big_etag);
    assert_int_equal(h.last, BIG_SIZE);
}

static void test_fetch__a_continuation_of_bytes_of_unknown_origin_names_no_etag(void **state)
{
    (void)state;
    char u[256], out[4400];
    heard h;
    memset(&h, 0, sizeof h);
    h.path = out_path(out, sizeof out, "hooks-noetag");
    /* bytes held without an ETag (resumable only against a digest the caller
     * checks): the server's ETag names its bytes, not the whole file */
    test_write_file(out, S.big, 1000);
    actl__fetch_hooks hooks = {heard_body, heard_grow, &h, 0};
    actl__fetch f = new_fetch(url(u, sizeof u, "drop-half-5/big.bin"), out);
    assert_err(actl__fetch_run_hooked(&f, &hooks), ACTL_EIO, "closed after");
    assert_true(h.bodies >= 2);
    for (int i = 0; i < 4 && i < h.bodies; i++) {
        assert_string_equal(h.etag[i], "");
        assert_int_equal(h.resumed[i], 1);
    }
    assert_string_equal(f.etag, ""); /* nothing for the next call's If-Range */
    /* a hook that refuses a body fails the download with its code */
    memset(&h, 0, sizeof h);
    h.path = out_path(out, sizeof out, "hooks-refused");
    h.fail_with = ACTL_ELIMIT;
    f = new_fetch(url(u, sizeof u, "big.bin"), out);
    assert_err(actl__fetch_run_hooked(&f, &hooks), ACTL_ELIMIT, "refused by the hook");
    assert_int_equal(h.bodies, 1);
    assert_int_equal(test_file_size(out), 0);
    /* no hooks at all is actl__fetch_run */
    f = new_fetch(url(u, sizeof u, "big.bin"), out_path(out, sizeof out, "hooks-none"));
    assert_ok(actl__fetch_run_hooked(&f, NULL));
    assert_string_equal(f.sha256, S.big_sha);
}

static void test_fetch__retries_a_short_body(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "short-1/big.bin"), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.sha256, S.big_sha);
    assert_int_equal(f.size, BIG_SIZE);
    assert_int_equal(memcmp(f.data, S.big, BIG_SIZE), 0);
    free(f.data);
    long req, bytes;
    stats("/short-1/big.bin", &req, &bytes);
    assert_int_equal(req, 2);
    assert_int_equal(bytes, BIG_SIZE);
}

static void test_fetch__continues_a_range_that_stops_short(void **state)
{
    (void)state;
    char u[256];
    /* a 206 for bytes 0-(N/2-1) of N: complete as far as HTTP goes, not as a file */
    actl__fetch f = new_fetch(url(u, sizeof u, "range-half-1/big.bin"), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 206);
    assert_int_equal(f.size, BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha);
    free(f.data);
    long req, bytes;
    stats("/range-half-1/big.bin", &req, &bytes);
    assert_int_equal(req, 2);
    assert_int_equal(bytes, BIG_SIZE);
    /* always short: a clear error once the attempts are spent */
    f = new_fetch(url(u, sizeof u, "range-half/big.bin"), NULL);
    assert_err(actl__fetch_run(&f), ACTL_EIO, "the server stopped after");
    assert_non_null(strstr(actl_errmsg(), "of 3145728 bytes (5 attempts)"));
}

static void test_fetch__keeps_no_byte_past_the_announced_length(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "long/big.bin"), out_path(out, sizeof out, "g"));
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.size, BIG_SIZE);
    assert_int_equal(test_file_size(out), BIG_SIZE);
    assert_string_equal(f.sha256, S.big_sha);
}

static void test_fetch__reports_the_digest_of_wrong_bytes(void **state)
{
    (void)state;
    char u[256], out[4400], hex[65];
    actl__fetch f = new_fetch(url(u, sizeof u, "wrong/big.bin"), out_path(out, sizeof out, "w"));
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.size, BIG_SIZE);
    assert_string_not_equal(f.sha256, S.big_sha);
    test_sha256sum(out, hex);
    assert_string_equal(f.sha256, hex);
}

static void test_fetch__retries_500_then_succeeds(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "fail500-2/small.txt"), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.data, SMALL_TEXT);
    free(f.data);
    long req, bytes;
    stats("/fail500-2/small.txt", &req, &bytes);
    assert_int_equal(req, 3);
}

static void test_fetch__honours_retry_after_on_429(void **state)
{
    (void)state;
    char u[256];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    actl__fetch f = new_fetch(url(u, sizeof u, "fail429-1/small.txt"), NULL);
    assert_ok(actl__fetch_run(&f));
    double s = seconds_since(&t0);
    assert_string_equal(f.data, SMALL_TEXT);
    free(f.data);
    /* Retry-After: 1, not the 50 ms backoff */
    assert_true(s >= 0.95);
    long req, bytes;
    stats("/fail429-1/small.txt", &req, &bytes);
    assert_int_equal(req, 2);
}

static void test_fetch__honours_retry_after_as_a_date_on_503(void **state)
{
    (void)state;
    char u[256];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    actl__fetch f = new_fetch(url(u, sizeof u, "fail503-1/small.txt"), NULL);
    assert_ok(actl__fetch_run(&f));
    double s = seconds_since(&t0);
    assert_string_equal(f.data, SMALL_TEXT);
    free(f.data);
    /* a date 2 s ahead, at one-second resolution: between 1 and 2 s */
    assert_true(s >= 0.95);
}

static void test_fetch__gives_up_on_500_after_the_attempts(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "fail500/big.bin"), out_path(out, sizeof out, "5"));
    assert_err(actl__fetch_run(&f), ACTL_EIO, "HTTP 500 (5 attempts)");
    assert_int_equal(f.status, 500);
    assert_false(actl__exists(out)); /* an error page is never written */
    long req, bytes;
    stats("/fail500/big.bin", &req, &bytes);
    assert_int_equal(req, ACTL_FETCH_ATTEMPTS);
}

static void test_fetch__fails_at_once_on_404(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "missing.bin"), NULL);
    assert_err(actl__fetch_run(&f), ACTL_ENOTFOUND, "HTTP 404");
    assert_non_null(strstr(actl_errmsg(), "'http://127.0.0.1:"));
    assert_null(f.data);
    long req, bytes;
    stats("/missing.bin", &req, &bytes);
    assert_int_equal(req, 1);
}

static void test_fetch__retries_a_refused_connection(void **state)
{
    (void)state;
    char u[256];
    /* a port nobody listens on: bind one, note it, close it */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
    close(s);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/x", ntohs(a.sin_port));
    actl__fetch f = new_fetch(u, NULL);
    assert_err(actl__fetch_run(&f), ACTL_EIO, "(5 attempts)");
}

static void test_fetch__aborts_a_trickle_at_the_low_speed_limit(void **state)
{
    (void)state;
    char u[256];
    /* the first answer trickles 64 bytes a second and is cut after ~1 s
     * (ADAPTERCTL_FETCH_LOW_SPEED_S=1); the retry resumes from what came */
    progress_log log = {0};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    actl__fetch f = new_fetch(url(u, sizeof u, "trickle-1/trickle.bin"), NULL);
    f.progress = on_progress;
    f.progress_ctx = &log;
    assert_ok(actl__fetch_run(&f));
    /* about ten progress calls a second, plus the closing one */
    assert_true(log.calls >= 2);
    assert_true(log.calls <= (int)(seconds_since(&t0) * 10) + 3);
    assert_int_equal(log.last_done, f.transferred);
    assert_false(log.went_back);
    assert_int_equal(f.size, TRICKLE_SIZE);
    assert_int_equal(memcmp(f.data, S.big, TRICKLE_SIZE), 0);
    free(f.data);
    long req, bytes;
    stats("/trickle-1/trickle.bin", &req, &bytes);
    assert_int_equal(req, 2);
    assert_true(bytes <= (long)TRICKLE_SIZE + 16); /* at most a piece in flight twice */
    /* trickling forever: every attempt is cut, then a clear error */
    f = new_fetch(url(u, sizeof u, "trickle/trickle.bin"), NULL);
    assert_err(actl__fetch_run(&f), ACTL_EIO, "too slow");
    assert_non_null(strstr(actl_errmsg(), "(5 attempts)"));
}

/* ---- redirects -------------------------------------------------------------- */

static void test_fetch__follows_a_redirect(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "redirect-ok/big.bin"), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_int_equal(f.status, 200);
    assert_string_equal(f.sha256, S.big_sha);
    free(f.data);
}

static void test_fetch__refuses_a_redirect_loop(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "redirect-loop/0"), NULL);
    assert_err(actl__fetch_run(&f), ACTL_EIO, "refused: more than 5 redirects");
    long req, bytes, total = 0;
    for (int i = 0; i < 10; i++) {
        char p[64];
        snprintf(p, sizeof p, "/redirect-loop/%d", i);
        stats(p, &req, &bytes);
        total += req;
    }
    assert_int_equal(total, 6); /* the first request and 5 redirects */
}

static void test_fetch__refuses_a_redirect_to_ftp(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "redirect-ftp/big.bin"), NULL);
    assert_err(actl__fetch_run(&f), ACTL_EIO,
               "refused: redirect to 'ftp://127.0.0.1/big.bin' is not allowed");
    assert_null(f.data);
}

static void test_fetch__refuses_a_redirect_to_a_file_url(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f =
        new_fetch(url(u, sizeof u, "redirect-file/big.bin"), out_path(out, sizeof out, "rf"));
    assert_err(actl__fetch_run(&f), ACTL_EIO,
               "refused: redirect to 'file:///etc/passwd' is not allowed");
    assert_false(actl__exists(out));
}

static void test_fetch__verifies_the_tls_peer(void **state)
{
    (void)state;
    char cmd[9000], cert[4400], key[4400], portfile[4400], u[256];
    snprintf(cert, sizeof cert, "%s/cert.pem", S.dir);
    snprintf(key, sizeof key, "%s/key.pem", S.dir);
    snprintf(portfile, sizeof portfile, "%s/tls-port", S.dir);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -days 1 "
             "-keyout '%s' -out '%s' >/dev/null 2>&1",
             key, cert);
    if (system(cmd) != 0) {
        print_message("SKIP: openssl cannot make a self-signed certificate\n");
        skip();
    }
    pid_t pid = 0;
    int port = 0;
    assert_int_equal(test_faultserver_start(S.root, portfile, cert, key, &pid, &port), 0);
    /* a certificate no CA signed: refused at once, not retried, not read */
    snprintf(u, sizeof u, "https://127.0.0.1:%d/small.txt", port);
    actl__fetch f = new_fetch(u, NULL);
    int rc = actl__fetch_run(&f);
    test_faultserver_stop(pid);
    assert_err(rc, ACTL_EIO, "certificate");
    assert_null(strstr(actl_errmsg(), "attempts"));
    assert_null(f.data);
}

/* ---- limits and headers ------------------------------------------------------ */

static void test_fetch__refuses_a_body_announced_over_the_limit(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "big.bin"), out_path(out, sizeof out, "m"));
    f.max_size = BIG_SIZE - 1;
    assert_err(actl__fetch_run(&f), ACTL_ELIMIT, "larger than the limit of 3145727 bytes");
    assert_true(test_file_size(out) == 0 || !actl__exists(out));
    assert_int_equal(f.transferred, 0);
    /* exactly the limit is fine */
    f = new_fetch(u, out);
    f.max_size = BIG_SIZE;
    assert_ok(actl__fetch_run(&f));
}

static void test_fetch__refuses_an_unannounced_body_over_the_limit(void **state)
{
    (void)state;
    char u[256], out[4400];
    actl__fetch f = new_fetch(url(u, sizeof u, "chunked/big.bin"), out_path(out, sizeof out, "mc"));
    f.max_size = 1u << 20;
    assert_err(actl__fetch_run(&f), ACTL_ELIMIT, "body larger than the limit of 1048576 bytes");
    assert_true(f.transferred <= (1u << 20));
    assert_int_equal(test_file_size(out), 0); /* nothing worth resuming is kept */
    f = new_fetch(u, NULL);
    f.max_size = 1000;
    assert_err(actl__fetch_run(&f), ACTL_ELIMIT, "limit of 1000 bytes");
    assert_null(f.data);
}

static void test_fetch__captures_x_linked_etag(void **state)
{
    (void)state;
    char u[512], rest[256], upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(S.big_sha[i] >= 'a' && S.big_sha[i] <= 'f' ? S.big_sha[i] - 32
                                                                     : S.big_sha[i]);
    snprintf(rest, sizeof rest, "linked/%s/small.txt", upper);
    actl__fetch f = new_fetch(url(u, sizeof u, rest), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.linked_sha256, S.big_sha); /* unquoted, lowercase */
    free(f.data);
    /* from the redirect in the chain, as the hub sends it */
    snprintf(rest, sizeof rest, "linked-redirect/%s/small.txt", S.big_sha);
    f = new_fetch(url(u, sizeof u, rest), NULL);
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.linked_sha256, S.big_sha);
    free(f.data);
    /* not a SHA-256 (a git blob id, say): ignored */
    f = new_fetch(url(u, sizeof u, "linked/0123456789abcdef0123456789abcdef01234567/small.txt"),
                  NULL);
    assert_ok(actl__fetch_run(&f));
    assert_string_equal(f.linked_sha256, "");
    free(f.data);
}

/* ---- arguments --------------------------------------------------------------- */

static void test_url_check__accepts_http_https_and_file(void **state)
{
    (void)state;
    assert_ok(actl__url_check("http://127.0.0.1:8080/a/b?c=d#e"));
    assert_ok(actl__url_check("HTTPS://example.org/adapter"));
    assert_ok(actl__url_check("https://user@[::1]:443/x"));
    assert_ok(actl__url_check("file:///tmp/x"));
    assert_ok(actl__url_check("file://localhost/tmp/x"));
}

static void test_url_check__refuses_other_schemes_and_hostile_input(void **state)
{
    (void)state;
    assert_err(actl__url_check("ftp://127.0.0.1/x"), ACTL_EINVAL, "only http://, https://");
    assert_err(actl__url_check("gopher://127.0.0.1/x"), ACTL_EINVAL, "'gopher://127.0.0.1/x'");
    assert_err(actl__url_check("127.0.0.1/x"), ACTL_EINVAL, "only http://");
    assert_err(actl__url_check("http://host/with space"), ACTL_EINVAL, "a space at offset 16");
    assert_err(actl__url_check("http://host/a\r\nX-Evil: 1"), ACTL_EINVAL,
               "'http://host/a\\r\\nX-Evil: 1'");
    assert_err(actl__url_check("http://h\xc3\xa9/x"), ACTL_EINVAL, "non-ASCII");
    assert_err(actl__url_check("http:///x"), ACTL_EINVAL, "no host");
    assert_err(actl__url_check("https://user@:80/x"), ACTL_EINVAL, "no host");
    assert_err(actl__url_check("file://remote/etc/passwd"), ACTL_EINVAL, "names no host");
    assert_err(actl__url_check("http://host:99999999/x"), ACTL_EINVAL, "invalid URL");
    assert_err(actl__url_check(""), ACTL_EINVAL, "empty");
    assert_err(actl__url_check(NULL), ACTL_EINVAL, "NULL");
    char *longurl = malloc(9000);
    memcpy(longurl, "http://h/", 9);
    memset(longurl + 9, 'a', 9000 - 10);
    longurl[8999] = '\0';
    assert_err(actl__url_check(longurl), ACTL_EINVAL, "longer than 8192 characters");
    free(longurl);
    /* the download refuses before any request */
    actl__fetch f = new_fetch("ftp://127.0.0.1/x", NULL);
    assert_err(actl__fetch_run(&f), ACTL_EINVAL, "only http://");
}

static void test_fetch__refuses_bad_arguments(void **state)
{
    (void)state;
    char u[256];
    actl__fetch f = new_fetch(url(u, sizeof u, "small.txt"), NULL);
    f.if_none_match = "\"x\"\r\nX-Evil: 1";
    assert_err(actl__fetch_run(&f), ACTL_EINVAL, "invalid ETag");
    f = new_fetch(u, S.root); /* a directory */
    assert_err(actl__fetch_run(&f), ACTL_EINVAL, "not a regular file");
    assert_err(actl__fetch_run(NULL), ACTL_EINVAL, "NULL");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup(name, reset_counters)
    const struct CMUnitTest tests[] = {
        T(test_fetch__downloads_a_file_with_its_sha256),
        T(test_fetch__downloads_into_memory),
        T(test_fetch__downloads_an_empty_file),
        T(test_fetch__downloads_a_chunked_body),
        T(test_fetch__reads_a_file_url),
        T(test_fetch__revalidates_with_if_none_match),
        T(test_fetch__resumes_a_partial_file),
        T(test_fetch__restarts_when_the_server_ignores_range),
        T(test_fetch__restarts_when_if_range_does_not_match),
        T(test_fetch__restarts_when_a_range_starts_elsewhere),
        T(test_fetch__takes_a_complete_partial_file_on_416),
        T(test_fetch__restarts_a_partial_file_longer_than_the_file),
        T(test_fetch__resumes_after_a_dropped_connection),
        T(test_fetch__resumes_across_calls_after_giving_up),
        T(test_fetch__hooks_hear_each_body_and_the_growth),
        T(test_fetch__hooks_hear_a_body_that_replaces_the_file),
        T(test_fetch__a_continuation_of_bytes_of_unknown_origin_names_no_etag),
        T(test_fetch__retries_a_short_body),
        T(test_fetch__continues_a_range_that_stops_short),
        T(test_fetch__keeps_no_byte_past_the_announced_length),
        T(test_fetch__reports_the_digest_of_wrong_bytes),
        T(test_fetch__retries_500_then_succeeds),
        T(test_fetch__honours_retry_after_on_429),
        T(test_fetch__honours_retry_after_as_a_date_on_503),
        T(test_fetch__gives_up_on_500_after_the_attempts),
        T(test_fetch__fails_at_once_on_404),
        T(test_fetch__retries_a_refused_connection),
        T(test_fetch__aborts_a_trickle_at_the_low_speed_limit),
        T(test_fetch__follows_a_redirect),
        T(test_fetch__refuses_a_redirect_loop),
        T(test_fetch__refuses_a_redirect_to_ftp),
        T(test_fetch__refuses_a_redirect_to_a_file_url),
        T(test_fetch__verifies_the_tls_peer),
        T(test_fetch__refuses_a_body_announced_over_the_limit),
        T(test_fetch__refuses_an_unannounced_body_over_the_limit),
        T(test_fetch__captures_x_linked_etag),
        T(test_url_check__accepts_http_https_and_file),
        T(test_url_check__refuses_other_schemes_and_hostile_input),
        T(test_fetch__refuses_bad_arguments),
    };
#undef T
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
