/* pack.c: the pack, one immutable self-describing file per adapter version
 * (DESIGN.md 4.4), named by the SHA-256 of its bytes.
 *
 *    0   8  "ACTLPACK"
 *    8   4  format version (u32 LE, ACTL_PACK_FORMAT)
 *   12   4  the low 32 bits of XXH64 (seed 0) of the H header bytes (u32 LE),
 *           so a damaged header is caught even when the caller has no digest
 *   16   8  header length H (u64 LE), a multiple of 8
 *   24   H  compact JSON with sorted keys, padded with spaces:
 *           {"config":{...},"format":1,"tensors":[{"codec":"actz1",
 *            "dtype":"BF16","name":"...","offset":0,"raw":...,"sha256":"...",
 *            "shape":[...],"stored":...},...]}
 *   24+H    the codec frames (codec.c), in tensor order, back to back; offsets
 *           count from here; the file ends with the last frame.
 * Tensors are sorted by name (strictly increasing, so names are unique), and
 * each carries the SHA-256 of its raw bytes. Same adapter in, same bytes out,
 * whatever the number of threads that made it.
 *
 * Writing makes the frames in memory (several threads, one tensor each at a
 * time; frames made ahead by a caller are taken as they are), then the
 * header, then writes the file while a second thread hashes it, starting the
 * writeback as it goes. Reading maps the file and decodes the tensors on
 * several threads. A pack can also be read while it arrives: its prefix and
 * header first (actl__pack_head_parse), then each frame on its own, and the
 * complete file checked at the end taking what was decoded before. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PREFIX ACTL_PACK_PREFIX_LEN
#define CODEC_NAME "actz1"
/* No zstd frame expands more than 2^15 times: an RLE block turns 4 bytes into
 * at most 128 KiB. A tensor claiming more than that from its frame is corrupt,
 * and is refused before its buffer is allocated. */
#define MAX_EXPANSION 32768u

char *actl__pack_path(const char *objects_dir, const char *hex)
{
    size_t dl = strlen(objects_dir);
    bool slash = dl > 0 && objects_dir[dl - 1] == '/';
    return actl__strdup_printf("%s%s%.2s/%s", objects_dir, slash ? "" : "/", hex, hex);
}

bool actl__is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false; /* the NUL of a shorter string stops here too */
    return s[n] == '\0';
}

/* Whether the file at path is a regular file whose SHA-256 is hex. Any
 * failure to read it counts as "no": the caller then replaces it. */
static int file_has_digest(const char *path, const char *hex, bool *same)
{
    int fd = -1, rc = ACTL_OK;
    uint64_t size;
    actl__sha256 *h = NULL;
    unsigned char *buf = NULL, digest[32];
    *same = false;
    if (actl__open_regular(path, &fd, &size) != ACTL_OK) {
        actl__err_clear();
        return ACTL_OK;
    }
    if (!(buf = malloc(1 << 18))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__sha256_new(&h)))
        goto out;
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 18);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out; /* unreadable: not the same */
        if (r == 0)
            break;
        if ((rc = actl__sha256_update(h, buf, (size_t)r)))
            goto out;
    }
    rc = actl__sha256_final(h, digest);
    h = NULL;
    if (rc)
        goto out;
    char got[65];
    actl__hex(digest, 32, got);
    *same = strcmp(got, hex) == 0;
out:
    actl__sha256_free(h);
    free(buf);
    close(fd);
    return rc;
}

/* ---- threads ------------------------------------------------------------------
 * A pack's tensors are independent of one another: their frames (writing) and
 * their decoding (reading) are made on several threads, each taking the next
 * tensor in name order. The bytes do not depend on the number of threads:
 * every frame is a function of its tensor alone and lands at its place in
 * name order. */

int actl__pack_threads = 0;

/* Below this much work a thread costs more than it saves. */
#define PAR_MIN_BYTES (4u << 20)
#define PAR_MAX 8

static int threads_for(uint64_t bytes, size_t items)
{
    long n = actl__pack_threads > 0   ? actl__pack_threads
             : bytes < PAR_MIN_BYTES ? 1
                                     : sysconf(_SC_NPROCESSORS_ONLN);
    if (n > PAR_MAX)
        n = PAR_MAX;
    if ((uint64_t)n > items)
        n = (long)items;
    return n < 1 ? 1 : (int)n;
}

typedef int (*par_fn)(void *ctx, size_t i);

typedef struct par {
    pthread_mutex_t mu;
    size_t next, n;
    par_fn fn;
    void *ctx;
    int rc;           /* the failure of the lowest item that failed */
    size_t failed_at;
    char msg[1024];   /* its message (each thread has its own) */
} par;

/* Items are handed out in order and none after a failure, so every item below
 * the lowest one that failed has run: the error reported does not depend on
 * the timing of the threads. */
static void par_loop(par *p)
{
    for (;;) {
        pthread_mutex_lock(&p->mu);
        size_t i = p->next;
        bool stop = p->rc != ACTL_OK || i >= p->n;
        if (!stop)
            p->next++;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return;
        int rc = p->fn(p->ctx, i);
        if (rc) {
            pthread_mutex_lock(&p->mu);
            if (p->rc == ACTL_OK || i < p->failed_at) {
                p->rc = rc;
                p->failed_at = i;
                snprintf(p->msg, sizeof p->msg, "%s", actl_errmsg());
            }
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *par_main(void *arg)
{
    par_loop(arg);
    return NULL;
}

/* Runs fn(ctx, i) for every i in [0, n) on `threads` threads, the calling
 * one among them. Returns the failure of the lowest i that failed, with its
 * message set on the calling thread; items after it may not have run. */
static int par_run(size_t n, int threads, par_fn fn, void *ctx)
{
    par p;
    pthread_t th[PAR_MAX];
    int started = 0;
    memset(&p, 0, sizeof p);
    p.n = n;
    p.fn = fn;
    p.ctx = ctx;
    pthread_mutex_init(&p.mu, NULL);
    /* A thread that cannot start leaves its share to the others. */
    for (int t = 1; t < threads && t < PAR_MAX; t++)
        if (pthread_create(&th[started], NULL, par_main, &p) == 0)
            started++;
    par_loop(&p);
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_destroy(&p.mu);
    return p.rc ? actl__err(p.rc, "%s", p.msg) : ACTL_OK;
}

/* ---- write ------------------------------------------------------------------ */

/* The JSON entry of one tensor into *out. */
static int tensor_json(const actl_tensor *t, uint64_t offset, uint64_t stored, const char *sha,
                       const char *origin, json_t **out)
{
    /* jansson refuses strings that are not UTF-8 (running out of memory
     * looks the same, and is far less likely). */
    json_t *name = json_string(t->name);
    if (!name)
        return actl__err(ACTL_EINVAL, "'%s': tensor name '%s' is not valid UTF-8", origin,
                         t->name);
    json_t *o = json_object(), *shape = json_array();
    bool ok = o && shape;
    for (int d = 0; ok && d < t->ndim; d++)
        ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
    /* json_object_set_new takes the value even when it fails. */
    if (ok) {
        ok = json_object_set_new(o, "shape", shape) == 0;
        shape = NULL;
    }
    if (ok) {
        ok = json_object_set_new(o, "name", name) == 0;
        name = NULL;
    }
    ok = ok && json_object_set_new(o, "codec", json_string(CODEC_NAME)) == 0 &&
         json_object_set_new(o, "dtype", json_string(actl_dtype_name(t->dtype))) == 0 &&
         json_object_set_new(o, "offset", json_integer((json_int_t)offset)) == 0 &&
         json_object_set_new(o, "raw", json_integer((json_int_t)t->nbytes)) == 0 &&
         json_object_set_new(o, "sha256", json_string(sha)) == 0 &&
         json_object_set_new(o, "stored", json_integer((json_int_t)stored)) == 0;
    json_decref(shape);
    json_decref(name);
    if (!ok) {
        json_decref(o);
        return actl__oom();
    }
    *out = o;
    return ACTL_OK;
}

/* mkdir that accepts an existing directory; *made tells whether it was new. */
static int ensure_dir(const char *dir, bool *made)
{
    if (made)
        *made = false;
    if (mkdir(dir, 0777) == 0) {
        if (made)
            *made = true;
        return ACTL_OK;
    }
    if (errno == EEXIST && actl__is_dir(dir))
        return ACTL_OK;
    return actl__err(ACTL_EIO, "cannot create directory '%s': %s", dir, strerror(errno));
}

static int write_all(int fd, const void *buf, size_t n, const char *path)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return actl__err(ACTL_EIO, "cannot write '%s': %s", path,
                             w < 0 ? strerror(errno) : "short write");
        p += w;
        n -= (size_t)w;
    }
    return ACTL_OK;
}

/* Moves the complete, fsynced file src to `path` (objects_dir/<2>/<64>), unless
 * a file with its digest is already there: then src is removed and the file in
 * place shared. A file of that name with other bytes (damaged, or cut short by
 * a crash of a system without ordered writes) is replaced. The fanout
 * directory is fsynced after a rename, and objects_dir too when the fanout
 * directory is new. */
static int place(const char *objects_dir, const char *src, const char *path, const char *hex)
{
    bool made_fan = false, same = false;
    char *fandir = strdup(path);
    int rc = ACTL_OK;
    if (!fandir)
        return actl__oom();
    *strrchr(fandir, '/') = '\0';
    if ((rc = ensure_dir(objects_dir, NULL)) || (rc = ensure_dir(fandir, &made_fan)) ||
        (rc = file_has_digest(path, hex, &same)))
        goto out;
    if (same) {
        if (unlink(src) != 0 && errno != ENOENT)
            rc = actl__err(ACTL_EIO, "cannot remove '%s': %s", src, strerror(errno));
        goto out;
    }
    if (rename(src, path) != 0) {
        rc = actl__err(ACTL_EIO, "cannot rename '%s' to '%s': %s", src, path, strerror(errno));
        goto out;
    }
    if ((rc = actl__fsync_dir(fandir)))
        goto out;
    if (made_fan)
        rc = actl__fsync_dir(objects_dir);
out:
    free(fandir);
    return rc;
}

int actl__pack_install(const char *objects_dir, const char *src, const char *hex)
{
    if (!objects_dir || !src || !hex)
        return actl__err(ACTL_EINVAL, "pack install: NULL argument");
    if (!actl__is_hex(hex, 64))
        return actl__err(ACTL_EINVAL, "pack install: '%s' is not a SHA-256 in lowercase hex",
                         hex);
    char *path = actl__pack_path(objects_dir, hex);
    if (!path)
        return actl__oom();
    int rc = place(objects_dir, src, path, hex);
    free(path);
    return rc;
}

/* One tensor's frame as the pack stores it, and the SHA-256 of its raw bytes. */
typedef struct frame_ref {
    const unsigned char *data;
    size_t len;
    char sha[65];
} frame_ref;

/* A pack put together in memory: the frames (made here, or lent by the
 * caller), the header and the prefix. */
typedef struct made {
    size_t n;
    frame_ref *f;        /* n, in the adapter's (name) order */
    unsigned char *room; /* the frames made here */
    char *header;        /* hlen bytes, space-padded */
    size_t hlen;
    unsigned char prefix[PREFIX];
    uint64_t raw;        /* the tensors' raw bytes */
    uint64_t total;      /* the pack's bytes */
} made;

static void made_free(made *m)
{
    free(m->f);
    free(m->room);
    free(m->header);
    memset(m, 0, sizeof *m);
}

typedef struct frames_job {
    const actl_adapter *a;
    const actl__pack_frame *ahead; /* or NULL */
    unsigned char *room;
    const size_t *at;              /* n + 1: tensor i's room is [at[i], at[i + 1]) */
    frame_ref *f;
    const char *origin;
} frames_job;

/* Whether a frame made ahead is one for t: the frame header records the
 * dtype and the raw size. A frame that does not fit is made again. */
static bool ahead_fits(const actl__pack_frame *x, const actl_tensor *t)
{
    return x->data && x->len >= 24 && x->data[5] == (unsigned char)t->dtype &&
           actl__get_le64(x->data + 8) == t->nbytes && actl__is_hex(x->sha256, 64);
}

static int frame_one(void *ctx, size_t i)
{
    frames_job *j = ctx;
    const actl_tensor *t = actl_adapter_tensor(j->a, i);
    frame_ref *f = &j->f[i];
    if (j->ahead && ahead_fits(&j->ahead[i], t)) {
        f->data = j->ahead[i].data;
        f->len = j->ahead[i].len;
        memcpy(f->sha, j->ahead[i].sha256, 65);
        return ACTL_OK;
    }
    unsigned char *dst = j->room + j->at[i];
    int rc = actl__codec_compress(t->dtype, t->data, t->nbytes, ACTL_CODEC_LEVEL, dst,
                                  j->at[i + 1] - j->at[i], &f->len);
    if (rc)
        return actl__err_wrap(rc, "cannot compress '%s' tensor '%s'", j->origin, t->name);
    f->data = dst;
    return actl__sha256_hex(t->data, t->nbytes, f->sha);
}

/* Makes a's pack in memory; ahead (may be NULL; entry i for tensor i, NULL
 * data where none) lends frames made before. */
static int pack_make(const actl_adapter *a, const actl__pack_frame *ahead, made *m)
{
    int rc = ACTL_OK;
    size_t *at = NULL;
    json_t *root = NULL, *list = NULL;
    char *text = NULL;
    const char *origin = a->origin ? a->origin : "adapter";
    size_t n = actl_adapter_tensor_count(a);
    memset(m, 0, sizeof *m);
    m->n = n;

    /* Room for the frames still to make: each one's bound, end to end. */
    size_t cap = 0;
    uint64_t work = 0;
    if (!(at = malloc((n + 1) * sizeof *at)) || (n && !(m->f = calloc(n, sizeof *m->f)))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        at[i] = cap;
        m->raw += t->nbytes;
        if (ahead && ahead_fits(&ahead[i], t))
            continue;
        size_t b = actl__codec_bound(t->dtype, t->nbytes);
        if (b > SIZE_MAX - cap) {
            rc = actl__err(ACTL_ELIMIT, "'%s': the tensors are too large to pack", origin);
            goto out;
        }
        cap += b;
        work += t->nbytes;
    }
    at[n] = cap;
    if (!(m->room = malloc(cap ? cap : 1))) {
        rc = actl__oom();
        goto out;
    }
    frames_job job = {a, ahead, m->room, at, m->f, origin};
    if ((rc = par_run(n, threads_for(work, n), frame_one, &job)))
        goto out;

    /* The header records where each frame lands, in name order. */
    if (!(root = json_object()) || !(list = json_array())) {
        rc = actl__oom();
        goto out;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = NULL;
        if ((rc = tensor_json(actl_adapter_tensor(a, i), off, m->f[i].len, m->f[i].sha, origin,
                              &e)))
            goto out;
        if (json_array_append_new(list, e) != 0) {
            rc = actl__oom();
            goto out;
        }
        off += m->f[i].len;
    }
    if (json_object_set(root, "config", a->config) != 0 ||
        json_object_set_new(root, "format", json_integer(ACTL_PACK_FORMAT)) != 0 ||
        json_object_set(root, "tensors", list) != 0 ||
        !(text = actl__json_dump_keep(root, -1, actl__peft_keep_order))) {
        rc = actl__oom();
        goto out;
    }
    size_t tl = strlen(text);
    m->hlen = (tl + 7) & ~(size_t)7;
    if (!(m->header = malloc(m->hlen ? m->hlen : 1))) {
        rc = actl__oom();
        goto out;
    }
    memcpy(m->header, text, tl);
    memset(m->header + tl, ' ', m->hlen - tl);
    memcpy(m->prefix, ACTL_PACK_MAGIC, 8);
    actl__put_le32(m->prefix + 8, ACTL_PACK_FORMAT);
    actl__put_le32(m->prefix + 12, (uint32_t)actl__xxh64(m->header, m->hlen, 0));
    actl__put_le64(m->prefix + 16, m->hlen);
    m->total = PREFIX + (uint64_t)m->hlen + off;
out:
    if (rc)
        made_free(m);
    free(at);
    free(text);
    json_decref(list);
    json_decref(root);
    return rc;
}

/* The SHA-256 of a made pack, on a thread of its own while the pack is
 * written. */
typedef struct pack_hash {
    const made *m;
    unsigned char digest[32];
    int rc;
    char msg[512];
} pack_hash;

static int hash_made(pack_hash *h)
{
    actl__sha256 *s = NULL;
    int rc = actl__sha256_new(&s);
    if (!rc)
        rc = actl__sha256_update(s, h->m->prefix, PREFIX);
    if (!rc)
        rc = actl__sha256_update(s, h->m->header, h->m->hlen);
    for (size_t i = 0; !rc && i < h->m->n; i++)
        rc = actl__sha256_update(s, h->m->f[i].data, h->m->f[i].len);
    if (rc) {
        actl__sha256_free(s);
        return rc;
    }
    return actl__sha256_final(s, h->digest);
}

static void *hash_main(void *arg)
{
    pack_hash *h = arg;
    if ((h->rc = hash_made(h)))
        snprintf(h->msg, sizeof h->msg, "%s", actl_errmsg());
    return NULL;
}

/* Bytes written between two writeback requests (see emit). */
#define WRITEBACK_STEP (8u << 20)

typedef struct sink {
    int fd;
    const char *path;
    uint64_t off;     /* bytes written */
    uint64_t flushed; /* bytes whose writeback was asked for */
} sink;

static int sink_put(sink *s, const void *p, size_t n)
{
    int rc = write_all(s->fd, p, n, s->path);
    if (rc)
        return rc;
    s->off += n;
    if (s->off - s->flushed >= WRITEBACK_STEP) {
        /* A hint (its failure changes nothing: the fsync follows). */
        (void)sync_file_range(s->fd, (off_t)s->flushed, (off_t)(s->off - s->flushed),
                              SYNC_FILE_RANGE_WRITE);
        s->flushed = s->off;
    }
    return ACTL_OK;
}

/* Writes the made pack to the empty file fd and puts its SHA-256 in hex.
 * The digest is computed on a second thread while this one writes, and the
 * kernel is asked to start writing each WRITEBACK_STEP bytes to the disk as
 * soon as they are written (sync_file_range), so that the caller's fsync
 * waits for the last few megabytes rather than for the whole file. */
static int emit(const made *m, int fd, const char *path, char hex[65])
{
    pack_hash h;
    pthread_t th;
    bool threaded = false;
    memset(&h, 0, sizeof h);
    h.m = m;
    if (threads_for(m->total, 2) > 1)
        threaded = pthread_create(&th, NULL, hash_main, &h) == 0;
    sink s = {fd, path, 0, 0};
    int rc = sink_put(&s, m->prefix, PREFIX);
    if (!rc)
        rc = sink_put(&s, m->header, m->hlen);
    for (size_t i = 0; !rc && i < m->n; i++)
        rc = sink_put(&s, m->f[i].data, m->f[i].len);
    if (threaded)
        pthread_join(th, NULL);
    else if (!rc)
        hash_main(&h);
    if (rc)
        return rc;
    if (h.rc)
        return actl__err(h.rc, "%s", h.msg);
    actl__hex(h.digest, 32, hex);
    return ACTL_OK;
}

int actl__pack_write(const actl_adapter *a, const char *objects_dir, char hex[65],
                     uint64_t *stored, uint64_t *raw)
{
    int rc = ACTL_OK, fd = -1;
    made m;
    char dhex[65];
    char *tmpdir = NULL, *tmp = NULL, *path = NULL;
    bool created = false, same = false;
    memset(&m, 0, sizeof m);
    if (!a || !objects_dir || !hex)
        return actl__err(ACTL_EINVAL, "pack write: NULL argument");
    const char *origin = a->origin ? a->origin : "adapter";
    if ((rc = pack_make(a, NULL, &m)))
        goto out;

    /* Into a temporary file in objects_dir/tmp, hashed on the way: the name
     * is known only once the last byte is. */
    if (!(tmpdir = actl__path_join(objects_dir, "tmp")) ||
        !(tmp = actl__path_join(tmpdir, "pack.XXXXXX"))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = ensure_dir(objects_dir, NULL)) || (rc = ensure_dir(tmpdir, NULL)))
        goto fail;
    if ((fd = mkstemp(tmp)) < 0) {
        rc = actl__err(ACTL_EIO, "cannot create a temporary file in '%s': %s", tmpdir,
                       strerror(errno));
        goto fail;
    }
    created = true;
    /* mkstemp gives 0600; packs are published like any other file. */
    mode_t um = umask(0);
    umask(um);
    (void)fchmod(fd, 0666 & ~um);
    if ((rc = emit(&m, fd, tmp, dhex)))
        goto fail;
    if (!(path = actl__pack_path(objects_dir, dhex))) {
        rc = actl__oom();
        goto out;
    }
    /* A file of that name with the same bytes is shared (the temporary file
     * goes, never synced); one with other bytes (damaged) is replaced.
     * Hashing it costs what writing it would, and trusting its name alone
     * would let a damaged pack be referenced again. */
    if ((rc = file_has_digest(path, dhex, &same)))
        goto out;
    if (!same) {
        if (fsync(fd) != 0) {
            rc = actl__err(ACTL_EIO, "cannot sync '%s': %s", tmp, strerror(errno));
            goto fail;
        }
        int cr = close(fd);
        fd = -1;
        if (cr != 0) {
            rc = actl__err(ACTL_EIO, "cannot write '%s': %s", tmp, strerror(errno));
            goto fail;
        }
        if ((rc = place(objects_dir, tmp, path, dhex)))
            goto fail;
        created = false; /* renamed (or removed) */
    }
    memcpy(hex, dhex, 65);
    if (stored)
        *stored = m.total;
    if (raw)
        *raw = m.raw;
    goto out;
fail:
    actl__err_wrap(rc, "cannot store the pack of '%s'", origin);
out:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    made_free(&m);
    free(path);
    free(tmp);
    free(tmpdir);
    return rc;
}

int actl__pack_write_fd(const actl_adapter *a, const actl__pack_frame *ahead, int fd,
                        const char *path, char hex[65], uint64_t *stored, uint64_t *raw)
{
    int rc;
    made m;
    char dhex[65];
    if (!a || fd < 0 || !path || !hex)
        return actl__err(ACTL_EINVAL, "pack write: NULL argument");
    if ((rc = pack_make(a, ahead, &m)))
        return rc;
    if ((rc = emit(&m, fd, path, dhex)))
        goto out;
    if (fsync(fd) != 0) {
        rc = actl__err(ACTL_EIO, "cannot sync '%s': %s", path, strerror(errno));
        goto out;
    }
    memcpy(hex, dhex, 65);
    if (stored)
        *stored = m.total;
    if (raw)
        *raw = m.raw;
out:
    made_free(&m);
    return rc;
}

int actl__pack_frame_make(actl_dtype dt, const void *raw, size_t n, actl__pack_frame *out)
{
    memset(out, 0, sizeof *out);
    size_t cap = actl__codec_bound(dt, n);
    int rc = ACTL_OK;
    if (cap == SIZE_MAX)
        return actl__err(ACTL_ELIMIT, "codec: %zu bytes are too many for one frame", n);
    unsigned char *f = malloc(cap);
    if (!f)
        return actl__oom();
    if ((rc = actl__codec_compress(dt, raw, n, ACTL_CODEC_LEVEL, f, cap, &out->len)) ||
        (rc = actl__sha256_hex(raw, n, out->sha256))) {
        free(f);
        memset(out, 0, sizeof *out);
        return rc;
    }
    /* The bound allows for a frame that does not shrink; most do. */
    unsigned char *g = realloc(f, out->len ? out->len : 1);
    out->data = g ? g : f;
    return ACTL_OK;
}

void actl__pack_frame_release(actl__pack_frame *f)
{
    if (!f)
        return;
    free(f->data);
    memset(f, 0, sizeof *f);
}

/* ---- read ------------------------------------------------------------------- */

typedef struct {
    const char *name; /* lent by the header JSON */
    actl_dtype dtype;
    int ndim;
    int64_t shape[ACTL_MAX_DIMS];
    uint64_t offset, stored, raw;
    const char *sha256;
} pack_entry;

typedef struct {
    const char *path;
    int fd;
    unsigned char *map;
    size_t size;
    json_t *root;
    json_t *config;      /* lent by root */
    pack_entry *ents;
    size_t n;
    const unsigned char *data; /* the frames */
    size_t data_len;
} pack;

static void pack_close(pack *p)
{
    if (p->map)
        munmap(p->map, p->size);
    if (p->fd >= 0)
        close(p->fd);
    json_decref(p->root);
    free(p->ents);
}

static int get_uint(json_t *o, const char *key, uint64_t *v)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
        return -1;
    *v = (uint64_t)json_integer_value(x);
    return 0;
}

/* Checks one tensor entry against the pack; `*next` is where its frame must
 * start (frames are back to back) and moves past it. */
static int parse_entry(const pack *p, size_t i, json_t *o, const char *prev, uint64_t *next,
                       pack_entry *e)
{
    static const char *const keys[] = {"codec", "dtype", "name", "offset", "raw",
                                       "sha256", "shape", "stored"};
    const char *path = p->path;
    if (!json_is_object(o))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor %zu is not a JSON object", path, i);
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || json_string_length(name) == 0 ||
        strlen(json_string_value(name)) != json_string_length(name))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor %zu has no valid name", path, i);
    e->name = json_string_value(name);
    if (prev && strcmp(prev, e->name) >= 0)
        return actl__err(ACTL_EFORMAT,
                         "pack '%s': tensor '%s' is out of order or repeated (after '%s')", path,
                         e->name, prev);
    if (json_object_size(o) != sizeof keys / sizeof *keys)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' has %zu keys, expected %zu", path,
                         e->name, json_object_size(o), sizeof keys / sizeof *keys);
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        if (!json_object_get(o, keys[k]))
            return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' has no \"%s\"", path,
                             e->name, keys[k]);
    json_t *codec = json_object_get(o, "codec");
    if (!json_is_string(codec) || strcmp(json_string_value(codec), CODEC_NAME) != 0)
        return actl__err(ACTL_EUNSUPPORTED, "pack '%s': tensor '%s' uses an unknown codec", path,
                         e->name);
    json_t *dt = json_object_get(o, "dtype");
    int rc;
    if (!json_is_string(dt))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': dtype is not a string", path,
                         e->name);
    if ((rc = actl_dtype_parse(json_string_value(dt), &e->dtype)))
        return actl__err_wrap(rc, "pack '%s': tensor '%s'", path, e->name);
    json_t *shape = json_object_get(o, "shape");
    if (!json_is_array(shape) || json_array_size(shape) > ACTL_MAX_DIMS)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': shape is not an array of at most %d dimensions",
                         path, e->name, ACTL_MAX_DIMS);
    e->ndim = (int)json_array_size(shape);
    for (int d = 0; d < e->ndim; d++) {
        json_t *x = json_array_get(shape, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': dimension %d is not a non-negative integer",
                             path, e->name, d);
        e->shape[d] = (int64_t)json_integer_value(x);
    }
    int64_t numel;
    size_t nbytes;
    if ((rc = actl__shape_size(e->dtype, e->ndim, e->shape, &numel, &nbytes)))
        return actl__err_wrap(ACTL_EFORMAT, "pack '%s': tensor '%s'", path, e->name);
    if (get_uint(o, "offset", &e->offset) || get_uint(o, "stored", &e->stored) ||
        get_uint(o, "raw", &e->raw))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': offset, stored and raw must be non-negative integers",
                         path, e->name);
    if (e->raw != nbytes)
        return actl__err(ACTL_EFORMAT,
                         "pack '%s': tensor '%s': raw is %llu bytes, its dtype and shape give %zu",
                         path, e->name, (unsigned long long)e->raw, nbytes);
    if (e->offset != *next)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' starts at %llu, expected %llu (frames are back to back)",
                         path, e->name, (unsigned long long)e->offset,
                         (unsigned long long)*next);
    if (e->stored > p->data_len - e->offset)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': frame [%llu, +%llu) leaves the %zu bytes of frames",
                         path, e->name, (unsigned long long)e->offset,
                         (unsigned long long)e->stored, p->data_len);
    if (e->raw / MAX_EXPANSION > e->stored)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' claims %llu raw bytes from a %llu-byte frame",
                         path, e->name, (unsigned long long)e->raw,
                         (unsigned long long)e->stored);
    json_t *sha = json_object_get(o, "sha256");
    if (!json_is_string(sha) || !actl__is_hex(json_string_value(sha), 64))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': sha256 is not 64 lowercase hex digits",
                         path, e->name);
    e->sha256 = json_string_value(sha);
    *next = e->offset + e->stored;
    return ACTL_OK;
}

/* Maps the file. On failure p is still ready for pack_close. */
static int pack_map(const char *path, pack *p)
{
    memset(p, 0, sizeof *p);
    p->path = path;
    p->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (p->fd < 0)
        return actl__err(errno == ENOENT ? ACTL_ENOTFOUND : ACTL_EIO, "cannot open pack '%s': %s",
                         path, strerror(errno));
    struct stat st;
    if (fstat(p->fd, &st) != 0)
        return actl__err(ACTL_EIO, "cannot stat pack '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return actl__err(ACTL_EFORMAT, "pack '%s' is not a regular file", path);
    if ((uint64_t)st.st_size < PREFIX)
        return actl__err(ACTL_EFORMAT, "pack '%s' is %lld bytes, shorter than its %d-byte prefix",
                         path, (long long)st.st_size, PREFIX);
    if ((uint64_t)st.st_size > SIZE_MAX)
        return actl__err(ACTL_ELIMIT, "pack '%s' is too large to map", path);
    p->size = (size_t)st.st_size;
    void *m = mmap(NULL, p->size, PROT_READ, MAP_PRIVATE, p->fd, 0);
    if (m == MAP_FAILED)
        return actl__err(ACTL_EIO, "cannot map pack '%s': %s", path, strerror(errno));
    p->map = m;
    return ACTL_OK;
}

/* Checks the prefix and the header of a mapped pack, not the frames. */
static int pack_parse(pack *p)
{
    int rc = ACTL_OK;
    const char *path = p->path;
    const unsigned char *b = p->map;
    if (memcmp(b, ACTL_PACK_MAGIC, 8) != 0)
        return actl__err(ACTL_EFORMAT, "'%s' is not a pack (bad magic)", path);
    uint32_t format = actl__get_le32(b + 8);
    if (format != ACTL_PACK_FORMAT)
        return actl__err(ACTL_EUNSUPPORTED, "pack '%s' has format %u; this adapterctl reads %d",
                         path, format, ACTL_PACK_FORMAT);
    uint64_t hlen = actl__get_le64(b + 16);
    if (hlen > p->size - PREFIX || hlen % 8 || hlen > ACTL_ST_MAX_HEADER)
        return actl__err(ACTL_EFORMAT, "pack '%s': header length %llu does not fit the %zu-byte file",
                         path, (unsigned long long)hlen, p->size);
    const char *hdr = (const char *)b + PREFIX;
    if ((uint32_t)actl__xxh64(hdr, (size_t)hlen, 0) != actl__get_le32(b + 12))
        return actl__err(ACTL_ECORRUPT, "pack '%s': header checksum mismatch", path);
    p->data = b + PREFIX + hlen;
    p->data_len = p->size - PREFIX - (size_t)hlen;

    char *what = actl__strdup_printf("pack '%s' header", path);
    if (!what)
        return actl__oom();
    rc = actl__json_parse(hdr, (size_t)hlen, what, &p->root);
    free(what);
    if (rc)
        return rc;
    json_t *format_v = json_object_get(p->root, "format");
    p->config = json_object_get(p->root, "config");
    json_t *list = json_object_get(p->root, "tensors");
    if (!json_is_object(p->root) || json_object_size(p->root) != 3 ||
        !json_is_integer(format_v) || json_integer_value(format_v) != ACTL_PACK_FORMAT ||
        !json_is_object(p->config) || !json_is_array(list))
        return actl__err(ACTL_EFORMAT,
                         "pack '%s': the header is not {\"config\": {...}, \"format\": %d, \"tensors\": [...]}",
                         path, ACTL_PACK_FORMAT);
    p->n = json_array_size(list);
    if (p->n && !(p->ents = calloc(p->n, sizeof *p->ents)))
        return actl__oom();
    uint64_t next = 0;
    for (size_t i = 0; i < p->n; i++)
        if ((rc = parse_entry(p, i, json_array_get(list, i), i ? p->ents[i - 1].name : NULL,
                              &next, &p->ents[i])))
            return rc;
    if (next != p->data_len)
        return actl__err(ACTL_EFORMAT, "pack '%s': %llu bytes after the last frame", path,
                         (unsigned long long)(p->data_len - next));
    return ACTL_OK;
}

static int check_digest(const pack *p, const char *expect_hex)
{
    char hex[65];
    int rc = actl__sha256_hex(p->map, p->size, hex);
    if (rc)
        return rc;
    if (strcmp(hex, expect_hex) != 0)
        return actl__err(ACTL_ECORRUPT, "pack '%s': SHA-256 is %s, expected %s", p->path, hex,
                         expect_hex);
    return ACTL_OK;
}

/* Decompresses the frame of entry e into dst (raw bytes) and checks its
 * SHA-256; path names the pack in messages. */
static int decode(const char *path, const pack_entry *e, const unsigned char *frame, void *dst)
{
    /* The codec names the tensor; the pack's path is put in front. */
    char *what = actl__strdup_printf("tensor '%s'", e->name);
    if (!what)
        return actl__oom();
    int rc = actl__codec_decompress(frame, (size_t)e->stored, e->dtype, dst, (size_t)e->raw,
                                    what);
    free(what);
    if (rc)
        return actl__err_wrap(rc, "pack '%s'", path);
    char hex[65];
    if ((rc = actl__sha256_hex(dst, (size_t)e->raw, hex)))
        return rc;
    if (strcmp(hex, e->sha256) != 0)
        return actl__err(ACTL_ECORRUPT, "pack '%s': tensor '%s': SHA-256 mismatch", path,
                         e->name);
    return ACTL_OK;
}

/* A new owned tensor holding entry e's raw bytes from its frame, checked
 * against its SHA-256. */
static int decode_entry(const char *path, const pack_entry *e, const unsigned char *frame,
                        actl_tensor **out)
{
    actl_tensor *t;
    int rc = actl__tensor_view(e->name, e->dtype, e->ndim, e->shape, NULL, &t);
    if (rc)
        return rc;
    /* Owned from here (freed with it); never malloc(0). */
    t->owned = true;
    if (!(t->data = malloc(t->nbytes ? t->nbytes : 1)))
        rc = actl__oom();
    else
        rc = decode(path, e, frame, t->data);
    if (rc)
        actl_tensor_free(t);
    else
        *out = t;
    return rc;
}

static int decode_tensor(const pack *p, size_t i, actl_tensor **out)
{
    return decode_entry(p->path, &p->ents[i], p->data + p->ents[i].offset, out);
}

/* The tensors of a mapped pack, decoded on several threads. */
typedef struct decode_job {
    const pack *p;
    actl_tensor **t; /* p->n: the tensors; one already there is not decoded again */
    bool keep;       /* false: each tensor is freed once checked (verify alone) */
    int *rc;         /* p->n, or NULL to stop at the first failure: each one's outcome */
    char **msg;      /* p->n with rc: the message of each failure (malloc'd) */
} decode_job;

static int decode_item(void *ctx, size_t i)
{
    decode_job *j = ctx;
    actl_tensor *t = NULL;
    if (j->t[i])
        return ACTL_OK;
    int rc = decode_tensor(j->p, i, &t);
    if (!rc) {
        if (j->keep)
            j->t[i] = t;
        else
            actl_tensor_free(t);
        return ACTL_OK;
    }
    if (!j->rc)
        return rc;
    /* Recorded for the report, in order; only running out of memory stops. */
    j->rc[i] = rc;
    j->msg[i] = strdup(actl_errmsg());
    return rc == ACTL_ENOMEM ? rc : ACTL_OK;
}

/* Builds the adapter from the n decoded tensors (taking them and the array). */
static int build(const pack *p, const actl_tensor **tensors, actl_adapter **out)
{
    json_incref(p->config);
    return actl__adapter_build(p->config, tensors, p->n, true, NULL, p->path, p->path, p->path,
                               out);
}

static void tensors_free(const actl_tensor **tensors, size_t n)
{
    if (tensors)
        for (size_t i = 0; i < n; i++)
            actl_tensor_free((actl_tensor *)tensors[i]);
    free(tensors);
}

int actl__pack_load(const char *path, const char *expect_hex, actl_adapter **out)
{
    int rc = ACTL_OK;
    pack p;
    const actl_tensor **tensors = NULL;
    size_t made = 0;
    if (!path || !out)
        return actl__err(ACTL_EINVAL, "pack load: NULL argument");
    *out = NULL;
    if (expect_hex && !actl__is_hex(expect_hex, 64))
        return actl__err(ACTL_EINVAL, "pack load: '%s' is not a SHA-256 in lowercase hex",
                         expect_hex);
    /* The digest first: when it fails, the bytes are damaged, whatever else
     * looks wrong. */
    if ((rc = pack_map(path, &p)) || (expect_hex && (rc = check_digest(&p, expect_hex))) ||
        (rc = pack_parse(&p)))
        goto out;
    if (p.n && !(tensors = calloc(p.n, sizeof *tensors))) {
        rc = actl__oom();
        goto out;
    }
    made = p.n;
    decode_job job = {&p, (actl_tensor **)tensors, true, NULL, NULL};
    if ((rc = par_run(p.n, threads_for(p.size, p.n), decode_item, &job)))
        goto out;
    rc = build(&p, tensors, out);
    tensors = NULL;
out:
    tensors_free(tensors, made);
    pack_close(&p);
    return rc;
}

/* ---- index ------------------------------------------------------------------ */

void actl__pack_index_free(actl__pack_index *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->n; i++)
        free(x->tensors[i].shape);
    free(x->tensors);
    json_decref(x->header);
    memset(x, 0, sizeof *x);
}

int actl__pack_index_read(const char *path, const char *expect_hex, actl__pack_index *out)
{
    int rc = ACTL_OK;
    pack p;
    if (!out)
        return actl__err(ACTL_EINVAL, "pack index: NULL argument");
    memset(out, 0, sizeof *out);
    if (!path)
        return actl__err(ACTL_EINVAL, "pack index: NULL argument");
    if (expect_hex && !actl__is_hex(expect_hex, 64))
        return actl__err(ACTL_EINVAL, "pack index: '%s' is not a SHA-256 in lowercase hex",
                         expect_hex);
    if ((rc = pack_map(path, &p)) || (expect_hex && (rc = check_digest(&p, expect_hex))) ||
        (rc = pack_parse(&p)))
        goto out;
    if (p.n && !(out->tensors = calloc(p.n, sizeof *out->tensors))) {
        rc = actl__oom();
        goto out;
    }
    json_t *list = json_object_get(p.root, "tensors");
    for (size_t i = 0; i < p.n; i++, out->n++) {
        const pack_entry *e = &p.ents[i];
        actl__pack_tensor *t = &out->tensors[i];
        if (!(t->shape = actl__json_dump(json_object_get(json_array_get(list, i), "shape"), -1))) {
            rc = actl__oom();
            goto out;
        }
        t->name = e->name;
        t->dtype = e->dtype;
        t->raw = e->raw;
        t->stored = e->stored;
        t->sha256 = e->sha256;
        out->raw += e->raw;
    }
    /* The strings lent above live in the header, which moves to the index. */
    out->header = p.root;
    out->config = p.config;
    out->size = p.size;
    p.root = NULL;
out:
    if (rc)
        actl__pack_index_free(out);
    pack_close(&p);
    return rc;
}

/* Counts a problem and passes its message on; only running out of memory
 * stops the check. */
static int report(int rc, actl_problem_fn fn, void *ctx, size_t *count)
{
    if (rc == ACTL_ENOMEM)
        return rc;
    (*count)++;
    if (fn)
        fn(actl_errmsg(), ctx);
    return ACTL_OK;
}

/* Decodes and checks the tensors of the parsed pack p (those in `tensors`
 * already, decoded ahead, are taken as they are), reporting each damaged one
 * in order; then, when out is not NULL and nothing was damaged, builds the
 * adapter. `tensors` (p->n entries or NULL when out is NULL) is taken. */
static int verify_tensors(pack *p, const actl_tensor **tensors, actl_problem_fn fn, void *ctx,
                          size_t *count, actl_adapter **out)
{
    int rc = ACTL_OK, *rcs = NULL;
    char **msgs = NULL;
    if (p->n && (!(rcs = calloc(p->n, sizeof *rcs)) || !(msgs = calloc(p->n, sizeof *msgs)) ||
                 (!tensors && !(tensors = calloc(p->n, sizeof *tensors))))) {
        rc = actl__oom();
        goto out;
    }
    decode_job job = {p, (actl_tensor **)tensors, out != NULL, rcs, msgs};
    if ((rc = par_run(p->n, threads_for(p->size, p->n), decode_item, &job)))
        goto out;
    for (size_t i = 0; i < p->n; i++) {
        if (rcs[i] == ACTL_ENOMEM) {
            rc = actl__oom();
            goto out;
        }
        if (rcs[i]) {
            (*count)++;
            if (fn)
                fn(msgs[i] ? msgs[i] : actl_strerror(rcs[i]), ctx);
        }
    }
    if (out && *count == 0) {
        /* Intact bytes that do not make an adapter are a problem too. */
        const actl_tensor **taken = tensors;
        tensors = NULL;
        if ((rc = build(p, taken, out)))
            rc = report(rc, fn, ctx, count);
    }
out:
    for (size_t i = 0; msgs && i < p->n; i++)
        free(msgs[i]);
    free(msgs);
    free(rcs);
    tensors_free(tensors, p->n);
    return rc;
}

int actl__pack_verify_load(const char *path, const char *expect_hex, actl_problem_fn fn,
                           void *ctx, size_t *problems, actl_adapter **out)
{
    int rc = ACTL_OK;
    pack p;
    size_t count = 0;
    if (out)
        *out = NULL;
    if (!path || !problems)
        return actl__err(ACTL_EINVAL, "pack verify: NULL argument");
    if (expect_hex && !actl__is_hex(expect_hex, 64))
        return actl__err(ACTL_EINVAL, "pack verify: '%s' is not a SHA-256 in lowercase hex",
                         expect_hex);
    if ((rc = pack_map(path, &p))) {
        rc = report(rc, fn, ctx, &count);
        goto out;
    }
    /* The digest says whether the bytes are intact; the header and the
     * tensors then say where they are damaged. */
    if (expect_hex && (rc = check_digest(&p, expect_hex)) && (rc = report(rc, fn, ctx, &count)))
        goto out;
    if ((rc = pack_parse(&p))) {
        rc = report(rc, fn, ctx, &count);
        goto out;
    }
    rc = verify_tensors(&p, NULL, fn, ctx, &count, out);
out:
    pack_close(&p);
    *problems = count;
    return rc;
}

int actl__pack_verify(const char *path, const char *expect_hex, actl_problem_fn fn, void *ctx,
                      size_t *problems)
{
    return actl__pack_verify_load(path, expect_hex, fn, ctx, problems, NULL);
}

/* ---- a pack that is still arriving ------------------------------------------ */

struct actl__pack_head {
    pack p;            /* the header's entries; no map, no file */
    uint64_t data_off; /* where the frames start in the file */
    char *path;
};

uint64_t actl__pack_head_size(const unsigned char *prefix)
{
    if (memcmp(prefix, ACTL_PACK_MAGIC, 8) != 0 ||
        actl__get_le32(prefix + 8) != ACTL_PACK_FORMAT)
        return 0;
    uint64_t hlen = actl__get_le64(prefix + 16);
    return hlen % 8 || hlen > ACTL_ST_MAX_HEADER ? 0 : PREFIX + hlen;
}

int actl__pack_head_parse(const void *bytes, size_t len, uint64_t size, const char *path,
                          actl__pack_head **out)
{
    int rc = ACTL_OK;
    actl__pack_head *h = NULL;
    *out = NULL;
    if (!bytes || !path)
        return actl__err(ACTL_EINVAL, "pack head: NULL argument");
    /* pack_parse reads the prefix and the header only, from the map. */
    if (len < PREFIX || actl__pack_head_size(bytes) == 0 ||
        actl__pack_head_size(bytes) > len || size < len)
        return actl__err(ACTL_EINVAL, "pack '%s': the %zu bytes given do not hold its header",
                         path, len);
    if (!(h = calloc(1, sizeof *h)) || !(h->path = strdup(path))) {
        rc = actl__oom();
        goto out;
    }
    h->p.path = h->path;
    h->p.fd = -1;
    h->p.map = (unsigned char *)bytes; /* read only, and only in this call */
    h->p.size = (size_t)size;
    if (size > SIZE_MAX) {
        rc = actl__err(ACTL_ELIMIT, "pack '%s' is too large to map", path);
        goto out;
    }
    if ((rc = pack_parse(&h->p)))
        goto out;
    h->data_off = (uint64_t)(h->p.data - h->p.map);
    h->p.map = NULL;
    h->p.data = NULL;
    *out = h;
    h = NULL;
out:
    if (h)
        h->p.map = NULL;
    actl__pack_head_free(h);
    return rc;
}

size_t actl__pack_head_count(const actl__pack_head *h) { return h ? h->p.n : 0; }

void actl__pack_head_frame(const actl__pack_head *h, size_t i, uint64_t *offset, uint64_t *len)
{
    *offset = h->data_off + h->p.ents[i].offset;
    *len = h->p.ents[i].stored;
}

int actl__pack_head_decode(const actl__pack_head *h, size_t i, const void *frame,
                           actl_tensor **out)
{
    *out = NULL;
    return decode_entry(h->path, &h->p.ents[i], frame, out);
}

void actl__pack_head_free(actl__pack_head *h)
{
    if (!h)
        return;
    pack_close(&h->p);
    free(h->path);
    free(h);
}

static bool same_entry(const pack_entry *a, const pack_entry *b)
{
    if (strcmp(a->name, b->name) != 0 || a->dtype != b->dtype || a->ndim != b->ndim ||
        a->offset != b->offset || a->stored != b->stored || a->raw != b->raw ||
        strcmp(a->sha256, b->sha256) != 0)
        return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return false;
    return true;
}

int actl__pack_verify_load_ahead(const char *path, const actl__pack_head *h,
                                 actl_tensor **ahead, actl_problem_fn fn, void *ctx,
                                 size_t *problems, actl_adapter **out)
{
    int rc = ACTL_OK;
    pack p;
    size_t count = 0;
    const actl_tensor **tensors = NULL;
    *out = NULL;
    *problems = 0;
    if ((rc = pack_map(path, &p))) {
        rc = report(rc, fn, ctx, &count);
        goto out;
    }
    if ((rc = pack_parse(&p))) {
        rc = report(rc, fn, ctx, &count);
        goto out;
    }
    if (p.n && !(tensors = calloc(p.n, sizeof *tensors))) {
        rc = actl__oom();
        goto out;
    }
    /* A tensor decoded ahead counts when it came from the same place of the
     * same header: the same bytes, since the file only grew meanwhile. */
    bool same_head = h && ahead && h->p.n == p.n &&
                     h->data_off == (uint64_t)(p.data - p.map) && h->p.size == p.size;
    for (size_t i = 0; same_head && i < p.n; i++)
        if (ahead[i] && same_entry(&h->p.ents[i], &p.ents[i])) {
            tensors[i] = ahead[i];
            ahead[i] = NULL;
        }
    rc = verify_tensors(&p, tensors, fn, ctx, &count, out);
    tensors = NULL;
out:
    /* Those not taken above are of no use. */
    for (size_t i = 0; h && ahead && i < h->p.n; i++) {
        actl_tensor_free(ahead[i]);
        ahead[i] = NULL;
    }
    tensors_free(tensors, p.n);
    pack_close(&p);
    *problems = count;
    return rc;
}
