/* file.c: whole-file reads and atomic writes (temporary file, fsync, rename). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

char *actl__strdup_printf(const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return s;
}

char *actl__path_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    return actl__strdup_printf("%s%s%s", dir, slash ? "" : "/", name);
}

bool actl__is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool actl__exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int actl__open_regular(const char *path, int *fd_out, uint64_t *size)
{
    /* O_NONBLOCK: opening a FIFO planted where a file should be must not hang;
     * it is refused below like any other non-regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return actl__err(errno == ENOENT ? ACTL_ENOTFOUND : ACTL_EIO, "cannot open '%s': %s",
                         path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return actl__err(ACTL_EIO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return actl__err(ACTL_EFORMAT, "'%s' is not a regular file", path);
    }
    *fd_out = fd;
    *size = (uint64_t)st.st_size;
    return ACTL_OK;
}

int actl__read_file(const char *path, size_t limit, char **data, size_t *len)
{
    char *buf = NULL;
    int fd;
    uint64_t fsize;
    int rc = actl__open_regular(path, &fd, &fsize);
    if (rc)
        return rc;
    if (fsize > limit) {
        rc = actl__err(ACTL_ELIMIT, "'%s' is %llu bytes, over the limit of %zu", path,
                       (unsigned long long)fsize, limit);
        goto out;
    }
    size_t size = (size_t)fsize, got = 0;
    if (!(buf = malloc(size + 1))) {
        rc = actl__oom();
        goto out;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = actl__err(ACTL_EIO, "cannot read '%s': %s", path,
                           r < 0 ? strerror(errno) : "file shrank while reading");
            goto out;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int actl__fwrite_all(FILE *f, const void *buf, size_t n, const char *path)
{
    if (n && fwrite(buf, 1, n, f) != n)
        return actl__err(ACTL_EIO, "cannot write '%s': %s", path, strerror(errno));
    return ACTL_OK;
}

int actl__fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return actl__err(ACTL_EIO, "cannot open directory '%s': %s", dir, strerror(errno));
    int r = fsync(fd);
    int e = errno;
    close(fd);
    if (r != 0 && e != EINVAL)
        return actl__err(ACTL_EIO, "cannot sync directory '%s': %s", dir, strerror(e));
    return ACTL_OK;
}

char *actl__temp_name(const char *path)
{
    uint64_t r;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) {
        /* No entropy source: fall back to what is unique enough per process. */
        static _Atomic unsigned long counter;
        r = (uint64_t)getpid() << 32 ^ (uint64_t)++counter ^ (uint64_t)time(NULL) << 16;
    }
    return actl__strdup_printf("%s.tmp.%016llx", path, (unsigned long long)r);
}

int actl__write_atomic(const char *path, actl__writer_fn fn, void *ctx)
{
    int rc = ACTL_OK, fd = -1;
    FILE *f = NULL;
    char *tmp = NULL;
    char *dcopy = strdup(path);
    if (!dcopy)
        return actl__oom();
    /* O_EXCL on a random name rather than mkstemp: mkstemp creates 0600 and
     * widening that would need the umask, which only a racy umask() call
     * can read. Here the kernel applies it. */
    for (int tries = 0; fd < 0 && tries < 16; tries++) {
        free(tmp);
        if (!(tmp = actl__temp_name(path))) {
            rc = actl__oom();
            goto out_notmp;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        rc = actl__err(ACTL_EIO, "cannot create a temporary file for '%s': %s", path,
                       strerror(errno));
        goto out_notmp;
    }
    if (!(f = fdopen(fd, "wb"))) {
        rc = actl__err(ACTL_EIO, "cannot open '%s': %s", tmp, strerror(errno));
        close(fd);
        goto out;
    }
    if ((rc = fn(f, tmp, ctx)))
        goto out;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        rc = actl__err(ACTL_EIO, "cannot write '%s': %s", path, strerror(errno));
        goto out;
    }
    int cr = fclose(f);
    f = NULL;
    if (cr != 0) {
        rc = actl__err(ACTL_EIO, "cannot write '%s': %s", path, strerror(errno));
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = actl__err(ACTL_EIO, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
        goto out;
    }
    rc = actl__fsync_dir(dirname(dcopy));
    goto out_notmp;
out:
    if (f)
        fclose(f);
    unlink(tmp);
out_notmp:
    free(tmp);
    free(dcopy);
    return rc;
}

void actl__remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (!S_ISDIR(sb.st_mode)) {
        (void)unlink(path);
        return;
    }
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *p = actl__path_join(path, e->d_name);
        if (p)
            actl__remove_tree(p);
        free(p);
    }
    if (d)
        closedir(d);
    (void)rmdir(path);
}

static bool dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    bool empty = d != NULL;
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            empty = false;
            break;
        }
    if (d)
        closedir(d);
    return empty;
}

int actl__dir_stage(const char *dir, actl__staged_dir *d)
{
    int rc = ACTL_OK;
    memset(d, 0, sizeof *d);
    /* "out/" and "out" are the same target; rename() wants the bare name. */
    if (!(d->target = strdup(dir))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t l = strlen(d->target); l > 1 && d->target[l - 1] == '/'; l--)
        d->target[l - 1] = '\0';
    if (actl__exists(d->target) && !(actl__is_dir(d->target) && dir_is_empty(d->target))) {
        rc = actl__err(ACTL_EEXIST, "'%s' already exists and is not an empty directory",
                       d->target);
        goto out;
    }
    if (!(d->tmp = actl__strdup_printf("%s.tmp.XXXXXX", d->target))) {
        rc = actl__oom();
        goto out;
    }
    if (!mkdtemp(d->tmp)) {
        rc = actl__err(ACTL_EIO, "cannot create a temporary directory for '%s': %s", d->target,
                       strerror(errno));
        free(d->tmp);
        d->tmp = NULL;
        goto out;
    }
    /* mkdtemp gives 0700; what we write should be as readable as any directory. */
    mode_t um = umask(0);
    umask(um);
    (void)chmod(d->tmp, 0777 & ~um);
out:
    if (rc)
        actl__dir_stage_free(d);
    return rc;
}

int actl__dir_commit(actl__staged_dir *d)
{
    if (rename(d->tmp, d->target) != 0) {
        int e = errno;
        return e == ENOTEMPTY || e == EEXIST || e == ENOTDIR || e == EISDIR
                   ? actl__err(ACTL_EEXIST, "'%s' already exists and is not an empty directory",
                               d->target)
                   : actl__err(ACTL_EIO, "cannot rename '%s' to '%s': %s", d->tmp, d->target,
                               strerror(e));
    }
    d->committed = true;
    char *parent = strdup(d->target);
    if (!parent)
        return actl__oom();
    int rc = actl__fsync_dir(dirname(parent));
    free(parent);
    return rc;
}

void actl__dir_stage_free(actl__staged_dir *d)
{
    if (d->tmp && !d->committed)
        actl__remove_tree(d->tmp);
    free(d->target);
    free(d->tmp);
    memset(d, 0, sizeof *d);
}
