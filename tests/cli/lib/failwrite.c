/* failwrite.c: an LD_PRELOAD shim that makes writes to chosen files fail as
 * on a full disk, for tests/cli/test_faults.sh (which compiles it into its
 * temporary directory: cc -shared -fPIC -O2 -o failwrite.so failwrite.c -ldl).
 *
 *   FAILWRITE_SUFFIX  comma-separated path suffixes ("catalog.db-wal,x.db");
 *                     unset or empty: every write passes through
 *   FAILWRITE_BYTES   bytes the chosen files may take in all (default 0);
 *                     the write that crosses the limit is cut short there,
 *                     as the kernel does, and every later one fails with
 *                     ENOSPC
 *   FAILWRITE_SILENT  1: instead of failing, report success without writing
 *                     (only to check that a test notices lost writes)
 *   FAILWRITE_COUNT   a file that receives, at exit, one line per fsync or
 *                     fdatasync of a chosen file with the bytes counted by
 *                     then, and a last line with the total (with a high
 *                     FAILWRITE_BYTES: where a command's commits end, to aim
 *                     a limit at them)
 *
 * write, pwrite, pwrite64, writev and pwritev are covered (fsync and
 * fdatasync only noted); the path of a
 * descriptor is read from /proc/self/fd on every write, never cached, as a
 * closed descriptor's number comes back for another file. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_SUFFIXES 8

static char suffix_buf[512];
static const char *suffixes[MAX_SUFFIXES];
static size_t n_suffixes;
static long long limit;
static int silent;
static atomic_llong written;
static long long syncs[64];
static atomic_int n_syncs;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

/* Before main: the CLI's threads start later, so no locking is needed.
 * (The casts through void ** are POSIX's way to store dlsym's result in a
 * function pointer without an ISO C warning.) */
__attribute__((constructor)) static void init(void)
{
    *(void **)&real_write = dlsym(RTLD_NEXT, "write");
    *(void **)&real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    *(void **)&real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    *(void **)&real_writev = dlsym(RTLD_NEXT, "writev");
    *(void **)&real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    *(void **)&real_fsync = dlsym(RTLD_NEXT, "fsync");
    *(void **)&real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    const char *v = getenv("FAILWRITE_BYTES");
    limit = v && *v ? atoll(v) : 0;
    v = getenv("FAILWRITE_SILENT");
    silent = v && strcmp(v, "1") == 0;
    v = getenv("FAILWRITE_SUFFIX");
    if (!v || strlen(v) >= sizeof suffix_buf)
        return;
    strcpy(suffix_buf, v);
    for (char *save = NULL, *t = strtok_r(suffix_buf, ",", &save); t && n_suffixes < MAX_SUFFIXES;
         t = strtok_r(NULL, ",", &save))
        suffixes[n_suffixes++] = t;
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("FAILWRITE_COUNT");
    FILE *f = path && *path ? fopen(path, "w") : NULL;
    if (f) {
        int n = atomic_load(&n_syncs);
        for (int i = 0; i < n && i < 64; i++)
            fprintf(f, "%lld\n", syncs[i]);
        fprintf(f, "%lld\n", (long long)atomic_load(&written));
        fclose(f);
    }
}

static int chosen(int fd)
{
    if (!n_suffixes)
        return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    for (size_t i = 0; i < n_suffixes; i++) {
        size_t k = strlen(suffixes[i]);
        if ((size_t)n >= k && strcmp(path + n - k, suffixes[i]) == 0)
            return 1;
    }
    return 0;
}

/* How many of want bytes the chosen file may take now: want, fewer (the
 * write that reaches the limit), or -1 with errno ENOSPC. The bytes are
 * counted as taken whether or not the real write then succeeds. */
static ssize_t allowance(size_t want)
{
    long long before = atomic_fetch_add(&written, (long long)want);
    if (before + (long long)want <= limit)
        return (ssize_t)want;
    if (before < limit)
        return (ssize_t)(limit - before);
    errno = ENOSPC;
    return -1;
}

static size_t iov_total(const struct iovec *iov, int n)
{
    size_t t = 0;
    for (int i = 0; i < n; i++)
        t += iov[i].iov_len;
    return t;
}

/* The real call's byte count for a write of count bytes to fd, or -1 (the
 * caller returns -1, errno set) or -2 (the caller claims success and writes
 * nothing: FAILWRITE_SILENT). */
static ssize_t gate(int fd, size_t count)
{
    if (!count || !chosen(fd))
        return (ssize_t)count;
    ssize_t ok = allowance(count);
    if (silent && ok < (ssize_t)count)
        return -2;
    return ok;
}

ssize_t write(int fd, const void *buf, size_t count)
{
    ssize_t n = gate(fd, count);
    return n < 0 ? (n == -2 ? (ssize_t)count : -1) : real_write(fd, buf, (size_t)n);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
    ssize_t n = gate(fd, count);
    return n < 0 ? (n == -2 ? (ssize_t)count : -1) : real_pwrite(fd, buf, (size_t)n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t off)
{
    ssize_t n = gate(fd, count);
    return n < 0 ? (n == -2 ? (ssize_t)count : -1) : real_pwrite64(fd, buf, (size_t)n, off);
}

/* The vector calls are not cut short: one that crosses the limit fails.
 * For a call of t bytes to fd: 1, make the real call; 0, claim success
 * without writing (FAILWRITE_SILENT); -1, fail with ENOSPC. */
static int gate_whole(int fd, size_t t)
{
    ssize_t n = gate(fd, t);
    if (n == -2)
        return 0;
    if (n != (ssize_t)t) {
        errno = ENOSPC;
        return -1;
    }
    return 1;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    size_t t = iov_total(iov, iovcnt);
    int g = gate_whole(fd, t);
    return g <= 0 ? (g == 0 ? (ssize_t)t : -1) : real_writev(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
    size_t t = iov_total(iov, iovcnt);
    int g = gate_whole(fd, t);
    return g <= 0 ? (g == 0 ? (ssize_t)t : -1) : real_pwritev(fd, iov, iovcnt, off);
}

static void note_sync(int fd)
{
    if (chosen(fd)) {
        int i = atomic_fetch_add(&n_syncs, 1);
        if (i < 64)
            syncs[i] = atomic_load(&written);
    }
}

int fsync(int fd)
{
    note_sync(fd);
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    note_sync(fd);
    return real_fdatasync(fd);
}
