/* testutil.h: shared helpers for the cmocka tests. */
#ifndef ACTL_TESTUTIL_H
#define ACTL_TESTUTIL_H

#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "adapterctl.h"

/* Element i of stored tensor bytes as a double, decoded here from the
 * formats' definitions (F16 by its bit fields, BF16 as the high half of an
 * F32), independently of the library's conversions. */
static inline double test_value(actl_dtype dt, const void *data, size_t i)
{
    const unsigned char *p = data;
    switch (dt) {
    case ACTL_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case ACTL_BF16: {
        uint32_t u = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case ACTL_F16: {
        unsigned h = (unsigned)(p[2 * i] | p[2 * i + 1] << 8);
        int e = (int)(h >> 10 & 31u);
        double m = h & 1023u, v;
        if (e == 0)
            v = ldexp(m, -24);
        else if (e == 31)
            v = m ? NAN : INFINITY;
        else
            v = ldexp(1024 + m, e - 25);
        return h & 0x8000u ? -v : v;
    }
    case ACTL_F64: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    case ACTL_I32: {
        int32_t x;
        memcpy(&x, p + 4 * i, 4);
        return x;
    }
    default:
        fail_msg("dtype %d in a test tensor", (int)dt);
        return 0;
    }
}

/* Paths relative to the repository root; tests run from there. */
#define FIXTURES "fixtures"
#define SHARED_DATA "../shared/data"

/* Skips the current test with a visible message when a file of
 * ../shared/data is absent. */
#define REQUIRE_SHARED(path)                                                         \
    do {                                                                             \
        if (access((path), R_OK) != 0) {                                             \
            print_message("SKIP: %s is absent (../shared/data not beside the repo)\n", \
                          (path));                                                   \
            skip();                                                                  \
        }                                                                            \
    } while (0)

/* Asserts rc == want and that the thread's message contains `needle`. */
#define assert_err(rc, want, needle)                                                  \
    do {                                                                              \
        int rc_ = (rc);                                                               \
        if (rc_ != (want) || !strstr(actl_errmsg(), (needle)))                        \
            fail_msg("expected %s containing \"%s\", got %s: \"%s\"",                 \
                     actl_strerror(want), (needle), actl_strerror(rc_), actl_errmsg()); \
    } while (0)

#define assert_ok(rc)                                                                  \
    do {                                                                               \
        int rc_ = (rc);                                                                \
        if (rc_ != ACTL_OK)                                                            \
            fail_msg("expected success, got %s: %s", actl_strerror(rc_), actl_errmsg()); \
    } while (0)

/* A fresh empty directory under $TMPDIR (or /tmp); malloc'd path. */
static inline char *test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/actl-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(p)) {
        free(p);
        fail_msg("mkdtemp failed");
    }
    return p;
}

/* rm -rf of a test directory. */
static inline void test_rmtree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        print_message("warning: could not remove %s\n", dir);
}

/* Every fixture gen_adapters writes under fixtures/adapters/<base>/, as an initializer. */
#define TEST_FIXTURE_NAMES                                                            \
    {                                                                                 \
        "lora", "lora-patterns", "lora-fanin", "lora-dora", "lora-embedding",         \
        "lora-bias", "lora-bf16", "lora-f16", "road-1", "road-2", "road-4",           \
        "bottleneck-series", "bottleneck-parallel", "mos",                            \
    }

/* "a/b", malloc'd; never NULL. */
static inline char *test_join(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    assert_non_null(p);
    snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* The whole file, malloc'd with a NUL after the last byte; *len gets its size (len may be NULL). */
static inline unsigned char *test_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = (size_t)n;
    return buf;
}

/* Writes n bytes to path (created or truncated), failing the test on any error. */
static inline void test_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* test_write_file of a NUL-terminated string, without the NUL. */
static inline void test_write_text(const char *path, const char *text)
{
    test_write_file(path, text, strlen(text));
}

/* The SHA-256 of a file by the sha256sum program, independent of our code; hex gets 64 digits. */
static inline void test_sha256sum(const char *path, char hex[65])
{
    char cmd[4500], line[256] = "";
    int n = snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    if (n < 0 || (size_t)n >= sizeof cmd)
        fail_msg("path too long: %s", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(line, sizeof line, p));
    assert_int_equal(pclose(p), 0);
    memcpy(hex, line, 64);
    hex[64] = '\0';
}

/* Size of a file in bytes, UINT64_MAX when stat fails. */
static inline uint64_t test_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : UINT64_MAX;
}

/* A scratch directory holding a fresh store at dir/store, open in s. */
typedef struct test_fx {
    char *dir;   /* temporary directory holding the store (and exports) */
    char *store; /* dir/store */
    actl_store *s;
} test_fx;

/* Creates the scratch directory and the store; release with test_fx_free. */
static inline test_fx test_fx_new(void)
{
    test_fx f;
    f.dir = test_tmpdir();
    f.store = test_join(f.dir, "store");
    f.s = NULL;
    assert_ok(actl_store_open(f.store, ACTL_STORE_CREATE, &f.s));
    return f;
}

/* Closes the store and removes the scratch directory. */
static inline void test_fx_free(test_fx *f)
{
    actl_store_close(f->s);
    test_rmtree(f->dir);
    free(f->store);
    free(f->dir);
}

/* Regular files (and other non-directories) under dir, recursively; 0 when dir is absent. */
static inline size_t test_count_files(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *p = test_join(dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0)
            n += S_ISDIR(sb.st_mode) ? test_count_files(p) : 1;
        free(p);
    }
    closedir(d);
    return n;
}

/* Loads fixtures/adapters/<base>/<name>, failing the test if it cannot; caller frees. */
static inline actl_adapter *test_load_fixture(const char *base, const char *name)
{
    char path[512];
    actl_adapter *a = NULL;
    snprintf(path, sizeof path, FIXTURES "/adapters/%s/%s", base, name);
    int rc = actl_adapter_load(path, &a);
    if (rc != ACTL_OK)
        fail_msg("loading %s: %s: %s", path, actl_strerror(rc), actl_errmsg());
    return a;
}

/* Same tensors, in the same order: names, dtypes, shapes and bytes. */
static inline void test_assert_same_tensors(const actl_adapter *a, const actl_adapter *b)
{
    assert_int_equal(actl_adapter_tensor_count(a), actl_adapter_tensor_count(b));
    for (size_t i = 0; i < actl_adapter_tensor_count(a); i++) {
        const actl_tensor *x = actl_adapter_tensor(a, i), *y = actl_adapter_tensor(b, i);
        assert_string_equal(actl_tensor_name(x), actl_tensor_name(y));
        assert_int_equal(actl_tensor_dtype(x), actl_tensor_dtype(y));
        assert_int_equal(actl_tensor_ndim(x), actl_tensor_ndim(y));
        for (int d = 0; d < actl_tensor_ndim(x); d++)
            assert_int_equal(actl_tensor_shape(x)[d], actl_tensor_shape(y)[d]);
        assert_int_equal(actl_tensor_nbytes(x), actl_tensor_nbytes(y));
        if (actl_tensor_nbytes(x))
            assert_memory_equal(actl_tensor_data(x), actl_tensor_data(y), actl_tensor_nbytes(x));
    }
}

/* Starts tests/faultserver.py serving root (HTTPS when cert is not NULL, with key) and
 * waits up to 10 s for the port it writes to portfile; 0 with *pid and *port set, or -1. */
static inline int test_faultserver_start(const char *root, const char *portfile,
                                         const char *cert, const char *key, pid_t *pid,
                                         int *port)
{
    *pid = fork();
    if (*pid < 0)
        return -1;
    if (*pid == 0) {
        /* dies with the test even when the test is killed */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (cert)
            execlp("python3", "python3", "tests/faultserver.py", "--port", "0", "--root",
                   root, "--portfile", portfile, "--timeout", "120", "--tls-cert", cert,
                   "--tls-key", key, (char *)NULL);
        else
            execlp("python3", "python3", "tests/faultserver.py", "--port", "0", "--root",
                   root, "--portfile", portfile, "--timeout", "120", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* up to 10 s */
        FILE *f = fopen(portfile, "r");
        if (f) {
            int ok = fscanf(f, "%d", port) == 1;
            fclose(f);
            if (ok)
                return 0;
        }
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = 0;
            print_message("faultserver.py exited before writing its port\n");
            return -1;
        }
        usleep(20000);
    }
    print_message("faultserver.py did not start within 10 s\n");
    return -1;
}

/* Stops a server test_faultserver_start started; does nothing when pid <= 0. */
static inline void test_faultserver_stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
}

#endif
