/* pull.c: adapters from elsewhere, and stores for elsewhere (DESIGN.md 4.5, 7).
 *
 * pull takes three kinds of source: a PEFT directory URL, an hf:// repository
 * (a PEFT directory at a fixed place on the hub) and a published store
 * (index.json + objects/<sha256>, as publish writes it). Downloads go to
 * <store>/partial/<sha256 of the file's URL>.part, locked with flock while
 * the pull runs so that gc leaves them alone, and kept after a failed
 * download so the next pull resumes them; beside each, <...>.etag records
 * the ETag the bytes came with (written as soon as a response's headers are
 * in, so that even a killed pull leaves it), so that a resumed request can
 * say If-Range and a server whose file changed sends it whole instead of a
 * foreign tail.
 *
 * The work a pull does besides the transfer runs while the file arrives (see
 * "following a download"): a PEFT pull makes each tensor's pack frame, a
 * pull from a published store decodes and checks each tensor of the pack,
 * as soon as the bytes are there; the download's own SHA-256 is computed on
 * the way too (fetch.c).
 *
 * Nothing enters the catalogue before every byte is verified: digests first
 * (X-Linked-Etag, --sha256, the pack's name), then the full validation of a
 * PEFT adapter (the code actl_adapter_load runs) or of a pack (every frame
 * and tensor hash). The catalogue is written by actl__store_add_pack, in one
 * transaction, after all of that: for a PEFT pull, with the pack this file
 * writes (the bytes actl_store_add would write, from the frames made on the
 * way) and fsyncs; for a published store, with the pack downloaded, fsynced.
 *
 * The fetch cache (schema/0003) remembers, per file URL, the ETag and digest
 * of what the last pull got and the pack it made, so the next pull of the
 * same source asks If-None-Match and, when every file answers 304 and the
 * adapter is still in the store, transfers nothing. A published index is
 * read into memory and not kept, so for it the cache also keeps, per
 * reference pulled ("URL#NAME[@V]"), which pack that reference named in the
 * index the ETag belongs to.
 *
 * publish writes DIR/objects/<sha256> (each copied through a temporary file
 * and renamed, checked against its digest on the way) and then
 * DIR/index.json (atomically), so a reader never sees an index naming a
 * missing pack. A stack (a recipe over other entries, with no pack of its
 * own) is not published: named, it is refused; publishing everything leaves
 * it out and counts it. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define CONFIG_FILE "adapter_config.json"
#define MODEL_FILE "adapter_model.safetensors"
#define INDEX_FILE "index.json"
#define OBJECTS_DIR "objects"
#define INDEX_FORMAT 1
/* An index lists adapters, not weights: 64 MiB is hundreds of thousands of
 * entries, and anything bigger is a mistake or an attack. */
#define INDEX_LIMIT (64u << 20)
#define HF_DEFAULT_ENDPOINT "https://huggingface.co"
/* The hub's own limit on owner and repository names is 96 characters. */
#define HF_NAME_MAX 96
#define HF_REV_MAX 128
/* The catalogue keeps a source of at most 4096 bytes (store.c); a URL must
 * leave room for "/adapter_model.safetensors" or "#NAME@VERSION". */
#define URL_LEN_MAX 3800
/* Sizes an index may claim: 1 PiB is far beyond any adapter; the point is to
 * refuse numbers that would overflow arithmetic, not to guess a real bound. */
#define SANE_BYTES (1ull << 50)
#define NAME_CAP 129
#define ETAG_CAP 256
#define COPY_CHUNK (1u << 20)

actl_pull_opts actl_pull_default_opts(void)
{
    actl_pull_opts o;
    memset(&o, 0, sizeof o);
    o.max_size = ACTL_PULL_DEFAULT_MAX;
    return o;
}

/* ---- the state of one pull -------------------------------------------------- */

typedef struct pull {
    actl_store *s;
    const actl_pull_opts *o;
    const char *url;             /* as the caller gave it */
    char q[ACTL__QUOTE_CAP];     /* url quoted for messages */
    char sha[65];                /* o->sha256 in lowercase, or "" */
    uint64_t max;                /* o->max_size, or the default */
    char *partial;               /* <store>/partial */
    char *tag_keys;              /* o->tags parsed (actl__tags_parse) */
    const char **tag_vals;
    size_t n_tags;
    uint64_t before;             /* bytes transferred by this pull's earlier fetches */
    actl_pull_result res;
} pull;

/* Progress across the files of one pull: the caller sees one transfer. */
static void on_progress(uint64_t done, uint64_t total, void *ctx)
{
    pull *p = ctx;
    p->o->progress(p->before + done, total ? p->before + total : 0, p->o->progress_ctx);
}

static bool is_hex_digit(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* ---- partial files --------------------------------------------------------- */

typedef struct part {
    char *path;      /* <store>/partial/<sha256 of the URL>.part */
    char *etag_path; /* <store>/partial/<sha256 of the URL>.etag */
    int fd;          /* open and flock'ed until part_release */
    bool complete;   /* downloaded whole: nothing to resume */
    bool gone;       /* moved away (into objects/): not ours to remove */
} part;

#define PART_INIT {NULL, NULL, -1, false, false}

/* Opens and locks the partial file of url. The lock is exclusive: gc (which
 * tries LOCK_EX without waiting) leaves a locked file alone, and a second
 * pull of the same URL waits for the first instead of writing the same file
 * at once. After the lock is granted the path must still name the file
 * locked: gc, or a pull that finished meanwhile, may have removed or renamed
 * it while we waited, and then we start again on the new one. */
static int part_acquire(pull *p, const char *url, part *pt)
{
    char hex[65];
    int rc = actl__sha256_hex(url, strlen(url), hex);
    if (rc)
        return rc;
    if (!(pt->path = actl__strdup_printf("%s/%s.part", p->partial, hex)) ||
        !(pt->etag_path = actl__strdup_printf("%s/%s.etag", p->partial, hex)))
        return actl__oom();
    for (int tries = 0;; tries++) {
        struct stat held, named;
        int fd = open(pt->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0644);
        if (fd < 0)
            return actl__err(ACTL_EIO, "cannot open '%s': %s", pt->path, strerror(errno));
        while (flock(fd, LOCK_EX) != 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            return actl__err(ACTL_EIO, "cannot lock '%s': %s", pt->path, strerror(e));
        }
        if (fstat(fd, &held) != 0) {
            int e = errno;
            close(fd);
            return actl__err(ACTL_EIO, "cannot stat '%s': %s", pt->path, strerror(e));
        }
        if (stat(pt->path, &named) == 0 && named.st_dev == held.st_dev &&
            named.st_ino == held.st_ino) {
            if (!S_ISREG(held.st_mode)) {
                close(fd);
                return actl__err(ACTL_EIO, "'%s' is not a regular file", pt->path);
            }
            pt->fd = fd;
            return ACTL_OK;
        }
        close(fd);
        if (tries == 100)
            return actl__err(ACTL_EIO, "cannot lock '%s': it keeps being replaced", pt->path);
    }
}

/* True when pt->path still names the file we hold (not one another pull
 * created after ours was moved away). */
static bool part_is_ours(const part *pt)
{
    struct stat held, named;
    return pt->fd >= 0 && !pt->gone && fstat(pt->fd, &held) == 0 &&
           stat(pt->path, &named) == 0 && named.st_dev == held.st_dev &&
           named.st_ino == held.st_ino;
}

static uint64_t part_size(const part *pt)
{
    struct stat sb;
    return pt->fd >= 0 && fstat(pt->fd, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* Keeps a partial file for the next pull only when it holds part of a
 * download that failed; removes it when its download completed (used or
 * refused: nothing to resume), when `consumed` (its bytes are stale) or
 * when it is empty. Then drops the lock. */
static void part_release(part *pt, bool consumed)
{
    if (part_is_ours(pt) && (consumed || pt->complete || part_size(pt) == 0)) {
        unlink(pt->path);
        unlink(pt->etag_path);
    }
    if (pt->fd >= 0)
        close(pt->fd);
    free(pt->path);
    free(pt->etag_path);
    pt->path = pt->etag_path = NULL;
    pt->fd = -1;
}

/* Drops the bytes of a download that proved wrong: resuming them would only
 * fail again. */
static void part_discard(part *pt)
{
    if (pt->fd >= 0 && ftruncate(pt->fd, 0) != 0) {
        /* best effort: part_release removes the file anyway */
    }
    unlink(pt->etag_path);
}

/* The ETag recorded beside a partial file, or "" (absent, unreadable or not a
 * header-safe value: a hint, never trusted further). */
static void etag_read(const part *pt, char out[ETAG_CAP])
{
    char *data = NULL;
    size_t len = 0;
    out[0] = '\0';
    if (actl__read_file(pt->etag_path, ETAG_CAP - 1, &data, &len) != ACTL_OK) {
        actl__err_clear();
        return;
    }
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        data[--len] = '\0';
    bool ok = len > 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] < 0x20 || (unsigned char)data[i] > 0x7e)
            ok = false;
    if (ok)
        memcpy(out, data, len + 1);
    free(data);
}

/* The sidecar of a partial file says which ETag every byte in it came with,
 * so that the next pull can resume with If-Range. It is replaced (through a
 * temporary file and a rename, so that it is never seen half written) when a
 * response's body is accepted, before the body's first byte is written: a
 * pull killed at any moment leaves bytes and sidecar that agree, or an empty
 * file. Not fsynced: a sidecar lost in a crash only costs a restart, since
 * without it the next pull asks for the whole file (or resumes only against
 * a digest known beforehand). "" removes it. */
static void etag_put(const part *pt, const char *etag)
{
    if (!etag[0]) {
        unlink(pt->etag_path);
        return;
    }
    char *tmp = actl__temp_name(pt->etag_path);
    FILE *f = tmp ? fopen(tmp, "we") : NULL;
    bool ok = f && fprintf(f, "%s\n", etag) > 0;
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp, pt->etag_path) != 0) {
        if (f)
            unlink(tmp);
        unlink(pt->etag_path); /* better none than a stale one */
    }
    free(tmp);
}

/* ---- following a download ---------------------------------------------------------
 * While a file downloads, worker threads read what has arrived (from the file,
 * a little behind the writes) and do the work that would otherwise wait for
 * its last byte: for adapter_model.safetensors each tensor's pack frame and
 * digest (FOLLOW_ST), for a pack each tensor decoded and checked
 * (FOLLOW_PACK). The transfer's thread only moves `ready` forward (fetch
 * hooks). The first worker to find enough bytes reads the file's header and
 * lays out the jobs, one per tensor in file order; each worker then takes the
 * next job once all its bytes have arrived. When the download ends, the
 * pulling thread joins in for what is left.
 *
 * Nothing done here is trusted on its own. A result is used only when the
 * download completed and passed its digest checks, and only for the tensor
 * that the strict reading of the complete file puts at the same place
 * (pull_peft matches the adapter's tensors by file offset, dtype and size;
 * actl__pack_verify_load_ahead compares the pack's header entries); anything
 * else is done again there. A body that replaces the file after work began
 * (a restart from zero) ends the following and drops what it did: the bytes
 * read may be the old ones. */

typedef enum { FOLLOW_ST, FOLLOW_PACK } follow_kind;

size_t actl__pull_ahead = 0;

/* Following starts once this many bytes have arrived: for a small file,
 * threads would cost more than they save. ADAPTERCTL_PULL_FOLLOW_MIN (bytes)
 * sets it, for tests that follow small files. */
#define FOLLOW_MIN (4u << 20)
#define FOLLOW_THREADS_MAX 4
/* A tensor bigger than this is left for after the download rather than
 * read into memory twice over. */
#define FOLLOW_JOB_MAX (256u << 20)

typedef struct fjob {
    uint64_t off, len;      /* the bytes it needs: [off, off + len) of the file */
    size_t index;           /* PACK: the tensor's index in the header */
    char *name;             /* ST: the tensor's name (owned) */
    actl_dtype dtype;       /* ST */
    uint64_t begin;         /* ST: its offset in the data section */
    actl__pack_frame frame; /* ST: the result */
    actl_tensor *tensor;    /* PACK: the result */
    bool done;
} fjob;

typedef struct follow {
    follow_kind kind;
    const char *path;     /* the partial file (lent) */
    uint64_t size;        /* PACK: the size the index announces */
    uint64_t min;         /* bytes after which following starts */
    int fd;               /* the file, read-only, or -1 */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    uint64_t ready;       /* bytes [0, ready) of the file have arrived */
    uint64_t need;        /* bytes the next planning step needs */
    bool ended;           /* no more bytes will come */
    bool dead;            /* stop: a restart, or the download failed */
    bool planning, planned;
    size_t next;          /* the next job to take */
    pthread_t th[FOLLOW_THREADS_MAX];
    int nth;              /* threads started */
    bool started;         /* threads were asked for */
    /* the plan: written by the planning worker before `planned` is set */
    fjob *jobs;           /* n, by file offset */
    size_t n;
    uint64_t st_data;     /* ST: where the data section starts */
    actl__pack_head *head; /* PACK */
} follow;

static void follow_init(follow *w, follow_kind kind, const char *path, uint64_t size)
{
    memset(w, 0, sizeof *w);
    w->kind = kind;
    w->path = path;
    w->size = size;
    w->min = FOLLOW_MIN;
    const char *env = getenv("ADAPTERCTL_PULL_FOLLOW_MIN");
    char *end = NULL;
    unsigned long long v = env && *env ? strtoull(env, &end, 10) : 0;
    if (env && *env && end && !*end && v > 0)
        w->min = v;
    w->fd = -1;
    w->need = kind == FOLLOW_ST ? 8 : ACTL_PACK_PREFIX_LEN;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

/* Reads exactly n bytes at off; false when the file is shorter (a restart
 * truncated it) or unreadable. */
static bool read_at(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *b = buf;
    while (n) {
        ssize_t r = pread(fd, b, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        b += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return true;
}

static int fjob_cmp(const void *a, const void *b)
{
    const fjob *x = a, *y = b;
    return (x->off > y->off) - (x->off < y->off);
}

/* Lays out the jobs of a safetensors file from its header, read with the
 * strict JSON parser actl_st_open uses. Anything odd gives no plan rather
 * than an error: the strict reading after the download says what is wrong.
 * Returns 1 (planned), 0 (*need: the bytes still needed) or -1 (give up). */
static int plan_st(follow *w, uint64_t ready, uint64_t *need)
{
    unsigned char len8[8];
    char *hdr = NULL;
    json_t *root = NULL;
    int rc = -1;
    if (!w->st_data) {
        if (!read_at(w->fd, len8, 8, 0))
            return -1;
        uint64_t hlen = actl__get_le64(len8);
        if (hlen > ACTL_ST_MAX_HEADER)
            return -1;
        w->st_data = 8 + hlen;
    }
    if (ready < w->st_data) {
        *need = w->st_data;
        return 0;
    }
    size_t hlen = (size_t)(w->st_data - 8);
    if (!(hdr = malloc(hlen ? hlen : 1)) || !read_at(w->fd, hdr, hlen, 8) ||
        actl__json_parse(hdr, hlen, "safetensors header", &root) != ACTL_OK ||
        !json_is_object(root))
        goto out;
    size_t cap = json_object_size(root);
    if (cap && !(w->jobs = calloc(cap, sizeof *w->jobs)))
        goto out;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape");
        json_t *offs = json_object_get(v, "data_offsets");
        int64_t dims[ACTL_MAX_DIMS], numel;
        size_t nbytes, nd = json_array_size(shape);
        actl_dtype dtype;
        if (!json_is_string(dt) || actl_dtype_parse(json_string_value(dt), &dtype) != ACTL_OK ||
            !json_is_array(shape) || nd > ACTL_MAX_DIMS || json_array_size(offs) != 2 ||
            !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
            goto out;
        for (size_t d = 0; d < nd; d++) {
            json_t *x = json_array_get(shape, d);
            if (!json_is_integer(x) || json_integer_value(x) < 0)
                goto out;
            dims[d] = json_integer_value(x);
        }
        json_int_t b = json_integer_value(json_array_get(offs, 0));
        json_int_t e = json_integer_value(json_array_get(offs, 1));
        if (actl__shape_size(dtype, (int)nd, dims, &numel, &nbytes) != ACTL_OK || b < 0 ||
            e < b || (uint64_t)(e - b) != nbytes || (uint64_t)e > UINT64_MAX - w->st_data)
            goto out;
        if (nbytes == 0 || nbytes > FOLLOW_JOB_MAX)
            continue; /* nothing to gain, or too big to hold twice: done after */
        fjob *j = &w->jobs[w->n];
        if (!(j->name = strdup(key)))
            goto out;
        w->n++;
        j->dtype = dtype;
        j->begin = (uint64_t)b;
        j->off = w->st_data + (uint64_t)b;
        j->len = nbytes;
    }
    if (w->n > 1)
        qsort(w->jobs, w->n, sizeof *w->jobs, fjob_cmp);
    rc = 1;
out:
    actl__err_clear(); /* this thread's message: nobody reads it */
    json_decref(root);
    free(hdr);
    return rc;
}

/* Lays out the jobs of a pack from its prefix and header; returns as
 * plan_st. */
static int plan_pack(follow *w, uint64_t ready, uint64_t *need)
{
    unsigned char prefix[ACTL_PACK_PREFIX_LEN];
    unsigned char *hdr = NULL;
    int rc = -1;
    if (!read_at(w->fd, prefix, sizeof prefix, 0))
        return -1;
    uint64_t hs = actl__pack_head_size(prefix);
    if (hs == 0 || hs > w->size)
        return -1;
    if (ready < hs) {
        *need = hs;
        return 0;
    }
    if (!(hdr = malloc((size_t)hs)) || !read_at(w->fd, hdr, (size_t)hs, 0) ||
        actl__pack_head_parse(hdr, (size_t)hs, w->size, w->path, &w->head) != ACTL_OK)
        goto out;
    size_t n = actl__pack_head_count(w->head);
    if (n && !(w->jobs = calloc(n, sizeof *w->jobs)))
        goto out;
    for (size_t i = 0; i < n; i++) {
        fjob *j = &w->jobs[w->n];
        actl__pack_head_frame(w->head, i, &j->off, &j->len);
        if (j->len > FOLLOW_JOB_MAX)
            continue;
        j->index = i;
        w->n++;
    }
    rc = 1; /* frames are back to back in header order: sorted already */
out:
    actl__err_clear();
    free(hdr);
    return rc;
}

static void run_job(follow *w, fjob *j)
{
    unsigned char *buf = malloc(j->len ? (size_t)j->len : 1);
    if (buf && read_at(w->fd, buf, (size_t)j->len, j->off)) {
        if (w->kind == FOLLOW_ST)
            j->done = actl__pack_frame_make(j->dtype, buf, (size_t)j->len, &j->frame) == ACTL_OK;
        else
            j->done = actl__pack_head_decode(w->head, j->index, buf, &j->tensor) == ACTL_OK;
    }
    /* A failure leaves the job undone; the final check does it again and
     * reports it. */
    actl__err_clear();
    free(buf);
}

/* A worker: plans when it can, then takes jobs whose bytes have arrived,
 * until there are none left or no more bytes will come. */
static void follow_work(follow *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->dead) {
        if (!w->planned) {
            if (w->planning || w->ready < w->need) {
                if (w->ended)
                    break;
                pthread_cond_wait(&w->cv, &w->mu);
                continue;
            }
            w->planning = true;
            uint64_t ready = w->ready, need = w->need;
            pthread_mutex_unlock(&w->mu);
            int st = w->kind == FOLLOW_ST ? plan_st(w, ready, &need) : plan_pack(w, ready, &need);
            pthread_mutex_lock(&w->mu);
            w->planning = false;
            w->need = need;
            if (st < 0)
                w->dead = true;
            w->planned = st > 0;
            pthread_cond_broadcast(&w->cv);
            continue;
        }
        if (w->next < w->n && w->jobs[w->next].off + w->jobs[w->next].len <= w->ready) {
            fjob *j = &w->jobs[w->next++];
            pthread_mutex_unlock(&w->mu);
            run_job(w, j);
            pthread_mutex_lock(&w->mu);
            continue;
        }
        if (w->next >= w->n || w->ended)
            break;
        pthread_cond_wait(&w->cv, &w->mu);
    }
    pthread_mutex_unlock(&w->mu);
}

static void *follow_main(void *arg)
{
    follow_work(arg);
    return NULL;
}

/* Starts the workers (under mu), once enough of the file has arrived: one
 * fewer than the CPUs, since the transfer keeps one busy, and at least one. */
static void follow_start(follow *w)
{
    w->started = true;
    if ((w->fd = open(w->path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0)
        return;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cpus > 2 ? (int)cpus - 1 : 1;
    if (want > FOLLOW_THREADS_MAX)
        want = FOLLOW_THREADS_MAX;
    while (w->nth < want && pthread_create(&w->th[w->nth], NULL, follow_main, w) == 0)
        w->nth++;
}

/* fetch hook: more bytes are there. */
static void follow_grow(follow *w, uint64_t ready)
{
    pthread_mutex_lock(&w->mu);
    if (ready > w->ready)
        w->ready = ready;
    if (!w->started && !w->dead && w->ready >= w->min)
        follow_start(w);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* fetch hook: a body replaces the file. Before any work began that is the
 * file's first body (nothing to drop); after, following ends. */
static void follow_restart(follow *w)
{
    pthread_mutex_lock(&w->mu);
    if (w->started || w->ready > 0)
        w->dead = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* The download ended: well (ok, all `size` bytes there; this thread then
 * helps with the jobs left) or not (following stops). Joins the workers. */
static void follow_end(follow *w, bool ok, uint64_t size)
{
    pthread_mutex_lock(&w->mu);
    if (ok && size > w->ready)
        w->ready = size;
    if (!ok)
        w->dead = true;
    w->ended = true;
    bool help = ok && w->nth > 0;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (help)
        follow_work(w);
    for (int i = 0; i < w->nth; i++)
        pthread_join(w->th[i], NULL);
    w->nth = 0;
}

/* True when the results may be used: following ran to the end of a download
 * that completed. Call after follow_end. */
static bool follow_usable(const follow *w) { return w->planned && !w->dead && w->ended; }

static void follow_free(follow *w)
{
    follow_end(w, false, 0);
    for (size_t i = 0; i < w->n; i++) {
        free(w->jobs[i].name);
        actl__pack_frame_release(&w->jobs[i].frame);
        actl_tensor_free(w->jobs[i].tensor);
    }
    free(w->jobs);
    actl__pack_head_free(w->head);
    if (w->fd >= 0)
        close(w->fd);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

/* ---- one file of a pull ------------------------------------------------------------ */

typedef struct hook_ctx {
    const part *pt;
    follow *w; /* or NULL */
} hook_ctx;

static int on_body(void *ctx, const char *etag, int resumed)
{
    hook_ctx *c = ctx;
    etag_put(c->pt, etag);
    if (c->w && !resumed)
        follow_restart(c->w);
    return ACTL_OK;
}

static void on_grow(void *ctx, uint64_t ready)
{
    hook_ctx *c = ctx;
    if (c->w)
        follow_grow(c->w, ready);
}

/* Downloads url into pt as one fetch (with its retries), resuming the bytes
 * pt holds when that is safe, revalidating with inm when not NULL, and
 * checking the result against X-Linked-Etag and `expect` (NULL: no digest
 * known beforehand). f gets the fetch's outputs. w, when not NULL, follows
 * the download (and has ended when this returns); writeback asks for the
 * file to be written back to disk as it arrives (the caller will fsync and
 * keep it). */
static int fetch_part(pull *p, const char *url, part *pt, uint64_t max, const char *inm,
                      const char *expect, follow *w, bool writeback, actl__fetch *f)
{
    char etag[ETAG_CAP], uq[ACTL__QUOTE_CAP];
    memset(f, 0, sizeof *f);
    etag_read(pt, etag);
    bool strong = etag[0] == '"';
    /* Resuming appends the server's current bytes to the ones held. That is
     * safe when the server can check they are still its file's (If-Range with
     * a strong ETag: otherwise it sends the whole file) or when the result is
     * checked against a digest known in advance; otherwise start again. */
    if (part_size(pt) > 0 && !strong && !expect) {
        if (ftruncate(pt->fd, 0) != 0)
            return actl__err(ACTL_EIO, "cannot truncate '%s': %s", pt->path, strerror(errno));
        unlink(pt->etag_path);
    }
    f->url = url;
    f->path = pt->path;
    f->max_size = max;
    f->if_none_match = inm;
    f->etag_in = strong ? etag : NULL;
    if (p->o->progress) {
        f->progress = on_progress;
        f->progress_ctx = p;
    }
    hook_ctx hc = {pt, w};
    actl__fetch_hooks hooks = {on_body, on_grow, &hc, writeback};
    int rc = actl__fetch_run_hooked(f, &hooks);
    if (w)
        follow_end(w, rc == ACTL_OK && !f->not_modified, f->size);
    p->res.bytes_transferred += f->transferred;
    p->before += f->transferred;
    if (f->transferred > 0)
        p->res.files_transferred++;
    if (rc) {
        /* The bytes received stay for the next pull, with the sidecar the
         * hook wrote; an empty file has nothing to resume. */
        if (part_size(pt) == 0)
            unlink(pt->etag_path);
        return rc;
    }
    unlink(pt->etag_path);
    if (f->not_modified)
        return ACTL_OK;
    pt->complete = true;
    actl__quote(url, uq, sizeof uq);
    if (f->linked_sha256[0] && strcmp(f->linked_sha256, f->sha256) != 0) {
        part_discard(pt);
        return actl__err(ACTL_ECORRUPT,
                         "'%s': the bytes received have SHA-256 %s, but the server announced "
                         "%s (X-Linked-Etag)",
                         uq, f->sha256, f->linked_sha256);
    }
    if (expect && strcmp(expect, f->sha256) != 0) {
        part_discard(pt);
        return actl__err(ACTL_ECORRUPT, "'%s': the bytes received have SHA-256 %s, expected %s",
                         uq, f->sha256, expect);
    }
    return ACTL_OK;
}

/* ---- the fetch cache -------------------------------------------------------- */

typedef struct cache_row {
    bool found;
    char etag[ETAG_CAP]; /* "" when none */
    char sha256[65];     /* "" when none */
    int64_t size;
    char pack[65];       /* "" when none */
} cache_row;

static void copy_hex(char dst[65], const unsigned char *src)
{
    dst[0] = '\0';
    if (src && actl__is_hex((const char *)src, 64))
        memcpy(dst, src, 65);
}

static int cache_get(actl_store *s, const char *url, cache_row *r)
{
    sqlite3_stmt *st = NULL;
    memset(r, 0, sizeof *r);
    int rc = actl__db_prepare(s, "SELECT etag, sha256, size, pack FROM fetch_cache WHERE url = ?",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, url, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const unsigned char *etag = sqlite3_column_text(st, 0);
        r->found = true;
        if (etag && strlen((const char *)etag) < ETAG_CAP)
            strcpy(r->etag, (const char *)etag);
        copy_hex(r->sha256, sqlite3_column_text(st, 1));
        r->size = sqlite3_column_int64(st, 2);
        copy_hex(r->pack, sqlite3_column_text(st, 3));
    } else if (step != SQLITE_DONE) {
        rc = actl__db_err(s, step, "cannot read the fetch cache");
    }
    sqlite3_finalize(st);
    return rc;
}

typedef struct cache_put_row {
    const char *url;
    const char *etag;   /* NULL or "": none */
    const char *sha256; /* NULL or "": none */
    int64_t size;       /* < 0: none */
    const char *pack;   /* NULL: none */
} cache_put_row;

static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
    if (v && *v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Records rows in one transaction. The cache is a hint for the next pull:
 * failing to write it must not fail a pull whose adapter is already in the
 * catalogue, so errors are dropped (the next pull then downloads again). */
static void cache_put(actl_store *s, const cache_put_row *rows, size_t n)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_begin(s);
    if (rc)
        goto out;
    if ((rc = actl__db_prepare(s,
                               "INSERT OR REPLACE INTO fetch_cache (url, etag, sha256, size, "
                               "pack, fetched) VALUES (?, ?, ?, ?, ?, ?)",
                               &st)))
        goto out;
    for (size_t i = 0; !rc && i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, rows[i].url, -1, SQLITE_STATIC);
        bind_opt(st, 2, rows[i].etag);
        bind_opt(st, 3, rows[i].sha256);
        if (rows[i].size >= 0)
            sqlite3_bind_int64(st, 4, rows[i].size);
        else
            sqlite3_bind_null(st, 4);
        bind_opt(st, 5, rows[i].pack);
        sqlite3_bind_int64(st, 6, (int64_t)time(NULL));
        int step = sqlite3_step(st);
        if (step != SQLITE_DONE)
            rc = actl__db_err(s, step, "cannot write the fetch cache");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (!rc)
        rc = actl__db_commit(s);
out:
    sqlite3_finalize(st);
    actl__db_rollback(s);
    if (rc)
        actl__err_clear();
}

/* The newest adapter whose pack is `pack` and which matches every filter
 * given (NULL or 0: any): source exactly, source starting with `prefix`,
 * name, version. */
static int find_adapter(actl_store *s, const char *pack, const char *source, const char *prefix,
                        const char *name, int64_t version, char out_name[NAME_CAP],
                        int64_t *out_version, bool *found)
{
    sqlite3_stmt *st = NULL;
    *found = false;
    int rc = actl__db_prepare(s,
                              "SELECT name, version FROM adapters WHERE pack = ?1 "
                              "AND (?2 IS NULL OR source = ?2) "
                              "AND (?3 IS NULL OR substr(source, 1, length(?3)) = ?3) "
                              "AND (?4 IS NULL OR name = ?4) AND (?5 = 0 OR version = ?5) "
                              "ORDER BY version DESC, name LIMIT 1",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, pack, -1, SQLITE_STATIC);
    bind_opt(st, 2, source);
    bind_opt(st, 3, prefix);
    bind_opt(st, 4, name);
    sqlite3_bind_int64(st, 5, version);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const char *n = (const char *)sqlite3_column_text(st, 0);
        snprintf(out_name, NAME_CAP, "%s", n ? n : "");
        *out_version = sqlite3_column_int64(st, 1);
        *found = true;
    } else if (step != SQLITE_DONE) {
        rc = actl__db_err(s, step, "cannot look up adapters");
    }
    sqlite3_finalize(st);
    return rc;
}

/* The pack of name@version in the store, or "" when there is no such row. */
static int version_pack(actl_store *s, const char *name, int64_t version, char pack[65])
{
    sqlite3_stmt *st = NULL;
    pack[0] = '\0';
    int rc = actl__db_prepare(s, "SELECT pack FROM adapters WHERE name = ? AND version = ?", &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(st, 0);
        snprintf(pack, 65, "%s", h ? h : "?");
    } else if (step != SQLITE_DONE) {
        rc = actl__db_err(s, step, "cannot look up versions");
    }
    sqlite3_finalize(st);
    return rc;
}

static void result_set(pull *p, const char *name, int64_t version, const char *pack,
                       const char *sha256, bool unchanged)
{
    snprintf(p->res.name, sizeof p->res.name, "%s", name);
    p->res.version = version;
    snprintf(p->res.pack, sizeof p->res.pack, "%s", pack);
    snprintf(p->res.sha256, sizeof p->res.sha256, "%s", sha256);
    p->res.unchanged = unchanged;
}

/* ---- URLs -------------------------------------------------------------------- */

/* dir + "/" + file, without doubling a slash dir ends with. */
static char *url_join(const char *dir, const char *file)
{
    size_t n = strlen(dir);
    return actl__strdup_printf("%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", file);
}

/* A URL that names a directory: files are appended to it, so a query or a
 * fragment would end up in the middle of their URLs. */
static int dir_url_check(const char *url, const char *q)
{
    int rc = actl__url_check(url);
    if (rc)
        return rc;
    if (strpbrk(url, "?#"))
        return actl__err(ACTL_EINVAL,
                         "invalid URL '%s': a directory URL cannot carry a query or a fragment",
                         q);
    return ACTL_OK;
}

/* The last non-empty component of a URL's path ("lora" for
 * "https://h/x/lora/"), copied into out; "" when the path has none. */
static void url_last_component(const char *url, char *out, size_t cap)
{
    const char *p = strstr(url, "://");
    out[0] = '\0';
    p = p ? p + 3 : url;
    p += strcspn(p, "/"); /* past the authority */
    const char *end = p + strlen(p);
    while (end > p && end[-1] == '/')
        end--;
    const char *start = end;
    while (start > p && start[-1] != '/')
        start--;
    if (end > start && (size_t)(end - start) < cap) {
        memcpy(out, start, (size_t)(end - start));
        out[end - start] = '\0';
    } else if (end > start && cap > 0) {
        /* too long to be a name anyway: keep enough for actl_name_check to say so */
        memcpy(out, start, cap - 1);
        out[cap - 1] = '\0';
    }
}

/* The local name of a pull: o->name, else the one derived from the source. */
static int pick_name(pull *p, const char *derived, const char **out)
{
    if (p->o->name) {
        *out = p->o->name;
        return ACTL_OK;
    }
    if (!derived[0])
        return actl__err(ACTL_EINVAL,
                         "cannot name the adapter pulled from '%s': its URL has no last path "
                         "component; give a name (--name)",
                         p->q);
    int rc = actl_name_check(derived);
    if (rc)
        return actl__err_wrap(rc, "cannot name the adapter pulled from '%s' after its URL; "
                                  "give a name (--name)",
                              p->q);
    *out = derived;
    return ACTL_OK;
}

static bool hf_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

/* One part of hf://OWNER/REPO@REV: not empty, not too long, safe characters
 * only, and no ".." (which a server might resolve as a path step). */
static int hf_part(const char *q, const char *what, const char *s, size_t n, size_t max)
{
    if (n == 0)
        return actl__err(ACTL_EINVAL, "invalid hf:// URL '%s': the %s is empty", q, what);
    if (n > max)
        return actl__err(ACTL_EINVAL, "invalid hf:// URL '%s': the %s is longer than %zu "
                                      "characters",
                         q, what, max);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '/')
            return actl__err(ACTL_EINVAL,
                             "invalid hf:// URL '%s': expected hf://OWNER/REPO[@REVISION], "
                             "with one '/'",
                             q);
        if (!hf_char(s[i]))
            return actl__err(ACTL_EINVAL,
                             "invalid hf:// URL '%s': the %s may hold only letters, digits, "
                             "'.', '_' and '-'",
                             q, what);
        if (s[i] == '.' && i + 1 < n && s[i + 1] == '.')
            return actl__err(ACTL_EINVAL, "invalid hf:// URL '%s': '..' in the %s", q, what);
    }
    if (n == 1 && s[0] == '.')
        return actl__err(ACTL_EINVAL, "invalid hf:// URL '%s': the %s is '.'", q, what);
    return ACTL_OK;
}

/* hf://OWNER/REPO[@REV] to $HF_ENDPOINT/OWNER/REPO/resolve/REV (malloc'd into
 * *base) and REPO (into repo). */
static int hf_resolve(pull *p, char **base, char repo[HF_NAME_MAX + 1])
{
    const char *body = p->url + 5; /* past "hf://" */
    const char *at = strchr(body, '@');
    size_t plen = at ? (size_t)(at - body) : strlen(body);
    const char *slash = memchr(body, '/', plen);
    int rc;
    if (!slash)
        return actl__err(ACTL_EINVAL,
                         "invalid hf:// URL '%s': expected hf://OWNER/REPO[@REVISION]", p->q);
    size_t olen = (size_t)(slash - body), rlen = plen - olen - 1;
    const char *rev = at ? at + 1 : "main";
    if ((rc = hf_part(p->q, "owner", body, olen, HF_NAME_MAX)) ||
        (rc = hf_part(p->q, "repository", slash + 1, rlen, HF_NAME_MAX)) ||
        (rc = hf_part(p->q, "revision", rev, strlen(rev), HF_REV_MAX)))
        return rc;
    memcpy(repo, slash + 1, rlen);
    repo[rlen] = '\0';
    const char *ep = getenv("HF_ENDPOINT");
    if (!ep || !*ep)
        ep = HF_DEFAULT_ENDPOINT;
    size_t elen = strlen(ep);
    while (elen && ep[elen - 1] == '/')
        elen--;
    if (!(*base = actl__strdup_printf("%.*s/%.*s/%s/resolve/%s", (int)elen, ep, (int)olen, body,
                                      repo, rev)))
        return actl__oom();
    if ((rc = dir_url_check(*base, p->q)))
        return actl__err_wrap(rc, "cannot resolve '%s' against HF_ENDPOINT", p->q);
    return ACTL_OK;
}

/* ---- PEFT directories and hf:// ----------------------------------------------- */

/* Builds the adapter from the two downloaded files with the validation
 * actl_adapter_load applies to a directory, naming the URLs in messages. */
static int build_adapter(pull *p, const part *pc, const part *ps, const char *cfg_url,
                         const char *st_url, actl_adapter **out)
{
    char *text = NULL;
    size_t len = 0;
    json_t *config = NULL;
    actl_st *st = NULL;
    char cq[ACTL__QUOTE_CAP], sq[ACTL__QUOTE_CAP];
    actl__quote(cfg_url, cq, sizeof cq);
    actl__quote(st_url, sq, sizeof sq);
    int rc = actl__read_file(pc->path, ACTL_CONFIG_LIMIT, &text, &len);
    if (rc) {
        actl__err_wrap(rc, "'%s'", cq);
        goto out;
    }
    if ((rc = actl__json_parse(text, len, cq, &config)))
        goto out;
    if ((rc = actl_st_open(ps->path, &st))) {
        actl__err_wrap(rc, "'%s'", sq);
        goto out;
    }
    rc = actl__adapter_from_st(config, st, p->url, cq, sq, out);
    config = NULL;
    st = NULL;
out:
    json_decref(config);
    actl_st_close(st);
    free(text);
    return rc;
}

/* The frames the follower made while adapter_model.safetensors downloaded,
 * for the tensors of a (built from that file) they belong to: *out gets one
 * entry per tensor of a, in its order (empty where none), or NULL when there
 * are none. A frame belongs to a tensor when it was made from the bytes at
 * the tensor's offset in the data section, of its dtype and size: the views
 * of a are into the mapped file, whose data section starts where its first
 * tensor does (actl_st_open checks that the tensors tile it from 0). */
static int take_frames(follow *w, const actl_adapter *a, actl__pack_frame **out)
{
    unsigned char len8[8];
    size_t n = actl_adapter_tensor_count(a);
    *out = NULL;
    if (!follow_usable(w) || !w->n || !n || !a->st || !actl_st_count(a->st) ||
        !read_at(w->fd, len8, 8, 0) || 8 + actl__get_le64(len8) != w->st_data)
        return ACTL_OK;
    uintptr_t base = (uintptr_t)actl_st_tensor(a->st, 0)->data;
    actl__pack_frame *ahead = calloc(n, sizeof *ahead);
    if (!ahead)
        return actl__oom();
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        if ((uintptr_t)t->data < base)
            continue;
        fjob key;
        key.off = w->st_data + (uint64_t)((uintptr_t)t->data - base);
        fjob *j = bsearch(&key, w->jobs, w->n, sizeof *w->jobs, fjob_cmp);
        if (j && j->done && j->dtype == t->dtype && j->len == t->nbytes &&
            strcmp(j->name, t->name) == 0) {
            ahead[i] = j->frame;
            memset(&j->frame, 0, sizeof j->frame);
            actl__pull_ahead++;
        }
    }
    *out = ahead;
    return ACTL_OK;
}

/* A file of <store>/partial made for this pull alone: created, then locked
 * (so that gc leaves it), then checked to be still there under its name (gc
 * may have taken it between the two). *path is malloc'd. */
static int partial_temp(pull *p, const char *stem, char **path, int *fd)
{
    *fd = -1;
    for (int tries = 0; tries < 100; tries++) {
        struct stat held, named;
        char *tmp = actl__strdup_printf("%s/%s.XXXXXX", p->partial, stem);
        if (!tmp)
            return actl__oom();
        int f = mkstemp(tmp);
        if (f < 0) {
            int e = errno;
            free(tmp);
            return actl__err(ACTL_EIO, "cannot create a temporary file in '%s': %s", p->partial,
                             strerror(e));
        }
        if (flock(f, LOCK_EX | LOCK_NB) == 0 && fstat(f, &held) == 0 &&
            stat(tmp, &named) == 0 && held.st_ino == named.st_ino &&
            held.st_dev == named.st_dev) {
            /* mkstemp gives 0600; packs are published like any other file. */
            mode_t um = umask(0);
            umask(um);
            (void)fchmod(f, 0666 & ~um);
            *path = tmp;
            *fd = f;
            return ACTL_OK;
        }
        close(f);
        free(tmp);
    }
    return actl__err(ACTL_EIO, "cannot create a temporary file in '%s': it keeps being removed",
                     p->partial);
}

/* Writes a's pack into <store>/partial, with the frames w made while the
 * file downloaded, and adds it to the catalogue (which moves it into
 * objects/), as actl_store_add would with a's pack. */
static int store_peft(pull *p, const actl_adapter *a, follow *w, const actl_add_opts *ao,
                      actl_entries **l)
{
    actl__pack_frame *ahead = NULL;
    char *tmp = NULL, hex[65];
    int fd = -1;
    size_t n = actl_adapter_tensor_count(a);
    int rc = w ? take_frames(w, a, &ahead) : ACTL_OK;
    if (rc || (rc = partial_temp(p, "pack", &tmp, &fd)))
        goto out;
    if ((rc = actl__pack_write_fd(a, ahead, fd, tmp, hex, NULL, NULL)))
        goto out;
    rc = actl__store_add_pack(p->s, tmp, hex, a, ao, l);
out:
    if (tmp) {
        unlink(tmp); /* gone already when it was moved into objects/ */
        close(fd);
    }
    for (size_t i = 0; ahead && i < n; i++)
        actl__pack_frame_release(&ahead[i]);
    free(ahead);
    free(tmp);
    return rc;
}

/* A PEFT directory at base (a URL the two file names are appended to),
 * named `name` in the store. */
static int pull_peft(pull *p, const char *base, const char *name)
{
    int rc;
    char *cfg_url = url_join(base, CONFIG_FILE), *st_url = url_join(base, MODEL_FILE);
    part pc = PART_INIT, ps = PART_INIT;
    cache_row cc, cs;
    actl__fetch fc, fs;
    actl_adapter *a = NULL;
    actl_entries *l = NULL;
    bool consumed = false, found = false, following = false;
    char found_name[NAME_CAP];
    int64_t found_version = 0;
    follow w;
    const char *expect = p->sha[0] ? p->sha : NULL;
    uint64_t cfg_max = p->max < ACTL_CONFIG_LIMIT ? p->max : ACTL_CONFIG_LIMIT;
    memset(&fc, 0, sizeof fc);
    memset(&fs, 0, sizeof fs);
    if (!cfg_url || !st_url) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = part_acquire(p, cfg_url, &pc)) || (rc = part_acquire(p, st_url, &ps)))
        goto out;
    /* Read after the locks: a pull of the same URL that held them may just
     * have recorded what it got. */
    if ((rc = cache_get(p->s, cfg_url, &cc)) || (rc = cache_get(p->s, st_url, &cs)))
        goto out;
    /* Both files came from one earlier pull whose adapter is still here:
     * revalidate instead of downloading. */
    bool same_pull = cc.found && cs.found && cc.pack[0] && strcmp(cc.pack, cs.pack) == 0;
    if (same_pull && cc.etag[0] && cs.etag[0] &&
        (rc = find_adapter(p->s, cc.pack, p->url, NULL, name, 0, found_name,
                           &found_version, &found)))
        goto out;
    bool revalidate = found;

    /* The tensors' frames are made while the weights download. */
    follow_init(&w, FOLLOW_ST, ps.path, 0);
    following = true;
    if ((rc = fetch_part(p, cfg_url, &pc, cfg_max, revalidate ? cc.etag : NULL, NULL, NULL, false,
                         &fc)) ||
        (rc = fetch_part(p, st_url, &ps, p->max, fc.not_modified ? cs.etag : NULL, expect, &w,
                         false, &fs)))
        goto fail;
    if (fc.not_modified && fs.not_modified) {
        if ((rc = find_adapter(p->s, cc.pack, p->url, NULL, name, 0, found_name,
                               &found_version, &found)))
            goto out;
        if (found) {
            consumed = true; /* stale bytes of an older failed pull, if any */
            if (expect && strcmp(expect, cs.sha256) != 0) {
                rc = actl__err(ACTL_ECORRUPT,
                               "'%s' is unchanged since it was pulled with SHA-256 %s, not the "
                               "expected %s",
                               p->q, cs.sha256[0] ? cs.sha256 : "(unknown)", expect);
                goto out;
            }
            result_set(p, found_name, found_version, cc.pack, cs.sha256, true);
            goto out;
        }
        /* The adapter went away since: the bytes are needed again. */
        follow_free(&w);
        follow_init(&w, FOLLOW_ST, ps.path, 0);
        if ((rc = fetch_part(p, cfg_url, &pc, cfg_max, NULL, NULL, NULL, false, &fc)) ||
            (rc = fetch_part(p, st_url, &ps, p->max, NULL, expect, &w, false, &fs)))
            goto fail;
    } else if (fc.not_modified) {
        /* The weights changed but the config did not: its bytes are needed. */
        if ((rc = fetch_part(p, cfg_url, &pc, cfg_max, NULL, NULL, NULL, false, &fc)))
            goto fail;
    }
    consumed = true; /* both complete: whatever follows, nothing is left to resume */

    /* A server without ETags (file://) revalidates by content: the same bytes
     * as last time, and their adapter still here, are unchanged. */
    if (same_pull && strcmp(cc.sha256, fc.sha256) == 0 && strcmp(cs.sha256, fs.sha256) == 0) {
        if ((rc = find_adapter(p->s, cc.pack, p->url, NULL, name, 0, found_name,
                               &found_version, &found)))
            goto out;
        if (found) {
            result_set(p, found_name, found_version, cc.pack, fs.sha256, true);
            goto record;
        }
    }

    if ((rc = build_adapter(p, &pc, &ps, cfg_url, st_url, &a)))
        goto fail;
    actl_add_opts ao = actl_add_default_opts();
    ao.name = name;
    ao.tags = p->o->tags;
    ao.source = p->url;
    if ((rc = store_peft(p, a, &w, &ao, &l)))
        goto fail;
    const actl_entry *e = actl_entries_get(l, 0);
    result_set(p, e->name, e->version, e->pack, fs.sha256, false);
record:;
    cache_put_row rows[2] = {
        {cfg_url, fc.etag, fc.sha256, (int64_t)fc.size, p->res.pack},
        {st_url, fs.etag, fs.sha256, (int64_t)fs.size, p->res.pack},
    };
    cache_put(p->s, rows, 2);
    goto out;
fail:
    actl__err_wrap(rc, "cannot pull '%s'", p->q);
out:
    actl_entries_free(l);
    if (following)
        follow_free(&w);
    actl_adapter_free(a); /* before its mapped file is removed */
    part_release(&pc, consumed);
    part_release(&ps, consumed);
    free(cfg_url);
    free(st_url);
    return rc;
}

/* ---- published stores ------------------------------------------------------------ */

/* One adapter of an index, every field checked; strings lent by the index. */
typedef struct ix_entry {
    const char *name;
    int64_t version;
    const char *pack;
    uint64_t stored;
    uint64_t raw;
    json_t *tags;            /* an object of strings, or NULL */
    const char *description; /* or NULL */
    const char *base_model;  /* or NULL */
} ix_entry;

static int get_size(json_t *o, const char *key, bool positive, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < (positive ? 1 : 0) || (uint64_t)x > SANE_BYTES)
        return -1;
    *out = (uint64_t)x;
    return 0;
}

/* An optional string field: absent or null gives NULL; anything else but a
 * string is an error (-1). */
static int get_opt_string(json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

static int entry_parse(const char *what, size_t i, json_t *o, ix_entry *e)
{
    char msg[1024], q[ACTL__QUOTE_CAP];
    memset(e, 0, sizeof *e);
    if (!json_is_object(o))
        return actl__err(ACTL_EFORMAT, "'%s': adapter %zu is not an object", what, i);
    json_t *name = json_object_get(o, "name"), *version = json_object_get(o, "version");
    json_t *pack = json_object_get(o, "pack");
    if (!json_is_string(name))
        return actl__err(ACTL_EFORMAT, "'%s': adapter %zu has no name", what, i);
    e->name = json_string_value(name);
    if (actl_name_check(e->name) != ACTL_OK) {
        snprintf(msg, sizeof msg, "%s", actl_errmsg());
        return actl__err(ACTL_EFORMAT, "'%s': adapter %zu: %s", what, i, msg);
    }
    if (!json_is_integer(version) || json_integer_value(version) <= 0)
        return actl__err(ACTL_EFORMAT, "'%s': adapter '%s': version is not a positive integer",
                         what, e->name);
    e->version = json_integer_value(version);
    if (!json_is_string(pack) || !actl__is_hex(json_string_value(pack), 64))
        return actl__err(ACTL_EFORMAT,
                         "'%s': adapter '%s@%lld': pack '%s' is not a SHA-256 in lowercase hex",
                         what, e->name, (long long)e->version,
                         json_is_string(pack) ? actl__quote(json_string_value(pack), q, sizeof q)
                                              : "?");
    e->pack = json_string_value(pack);
    if (get_size(o, "stored_bytes", true, &e->stored) || get_size(o, "raw_bytes", false, &e->raw))
        return actl__err(ACTL_EFORMAT,
                         "'%s': adapter '%s@%lld': stored_bytes and raw_bytes must be integers "
                         "from 1 (0 for raw_bytes) to %llu",
                         what, e->name, (long long)e->version, (unsigned long long)SANE_BYTES);
    if (get_opt_string(o, "description", &e->description) ||
        get_opt_string(o, "base_model", &e->base_model))
        return actl__err(ACTL_EFORMAT,
                         "'%s': adapter '%s@%lld': description and base_model must be strings "
                         "or null",
                         what, e->name, (long long)e->version);
    int rc = ACTL_OK;
    if ((e->description && (rc = actl__text_check("description", e->description, 65536, true))) ||
        (e->base_model && (rc = actl__text_check("base model", e->base_model, 1024, false)))) {
        if (rc == ACTL_ENOMEM)
            return rc;
        snprintf(msg, sizeof msg, "%s", actl_errmsg());
        return actl__err(ACTL_EFORMAT, "'%s': adapter '%s@%lld': %s", what, e->name,
                         (long long)e->version, msg);
    }
    json_t *tags = json_object_get(o, "tags");
    if (tags && !json_is_null(tags)) {
        if (!json_is_object(tags))
            return actl__err(ACTL_EFORMAT, "'%s': adapter '%s@%lld': tags is not an object",
                             what, e->name, (long long)e->version);
        const char *k;
        json_t *v;
        json_object_foreach(tags, k, v)
        {
            char key[65];
            const char *val;
            char *kv = json_is_string(v) ? actl__strdup_printf("%s=%s", k, json_string_value(v))
                                         : NULL;
            if (json_is_string(v) && !kv)
                return actl__oom();
            rc = kv ? actl__tag_parse(kv, key, &val) : ACTL_EFORMAT;
            free(kv);
            if (rc == ACTL_ENOMEM)
                return rc;
            if (rc) {
                if (json_is_string(v))
                    snprintf(msg, sizeof msg, "%s", actl_errmsg());
                else
                    snprintf(msg, sizeof msg, "tag '%s' is not a string",
                             actl__quote(k, q, sizeof q));
                return actl__err(ACTL_EFORMAT, "'%s': adapter '%s@%lld': %s", what, e->name,
                                 (long long)e->version, msg);
            }
        }
        e->tags = tags;
    }
    return ACTL_OK;
}

static int entry_cmp(const void *a, const void *b)
{
    const ix_entry *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->version > y->version) - (x->version < y->version);
}

/* Parses and checks a whole index, then finds rname@rver in it (rver 0: the
 * newest version of rname). *root owns what *pick lends. */
static int index_parse(const char *what, const char *text, size_t len, const char *rname,
                       int64_t rver, json_t **root, ix_entry *pick, bool *found)
{
    ix_entry *all = NULL;
    *found = false;
    int rc = actl__json_parse(text, len, what, root);
    if (rc)
        return rc;
    json_t *format = json_object_get(*root, "format");
    json_t *adapters = json_object_get(*root, "adapters");
    if (!json_is_object(*root) || !json_is_integer(format) || !json_is_array(adapters)) {
        rc = actl__err(ACTL_EFORMAT,
                       "'%s' is not a published store's index (an object with \"format\" and "
                       "\"adapters\")",
                       what);
        goto out;
    }
    if (json_integer_value(format) != INDEX_FORMAT) {
        rc = actl__err(ACTL_EUNSUPPORTED, "'%s' has format %lld; this adapterctl reads %d", what,
                       (long long)json_integer_value(format), INDEX_FORMAT);
        goto out;
    }
    size_t n = json_array_size(adapters);
    if (n && !(all = calloc(n, sizeof *all))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = entry_parse(what, i, json_array_get(adapters, i), &all[i])))
            goto out;
        if (strcmp(all[i].name, rname) == 0 &&
            (rver ? all[i].version == rver : !*found || all[i].version > pick->version)) {
            *pick = all[i];
            *found = true;
        }
    }
    /* Two entries for one name@version would make the pick depend on order. */
    if (n > 1)
        qsort(all, n, sizeof *all, entry_cmp);
    for (size_t i = 1; i < n; i++)
        if (entry_cmp(&all[i - 1], &all[i]) == 0) {
            rc = actl__err(ACTL_EFORMAT, "'%s' lists '%s@%lld' twice", what, all[i].name,
                           (long long)all[i].version);
            goto out;
        }
out:
    free(all);
    if (rc) {
        json_decref(*root);
        *root = NULL;
        *found = false;
    }
    return rc;
}

/* The index entry's tags, minus those the caller sets, then the caller's:
 * a NULL-terminated "KEY=VALUE" list (each string and the array malloc'd). */
static int merged_tags(const pull *p, const ix_entry *e, char ***out)
{
    size_t n = (e->tags ? json_object_size(e->tags) : 0) + p->n_tags, k = 0;
    char **list = calloc(n + 1, sizeof *list);
    if (!list)
        return actl__oom();
    const char *key;
    json_t *v;
    if (e->tags)
        json_object_foreach(e->tags, key, v)
        {
            bool overridden = false;
            for (size_t i = 0; i < p->n_tags; i++)
                if (strcmp(p->tag_keys + 65 * i, key) == 0)
                    overridden = true;
            if (!overridden && !(list[k++] = actl__strdup_printf("%s=%s", key,
                                                                 json_string_value(v))))
                goto oom;
        }
    for (size_t i = 0; i < p->n_tags; i++)
        if (!(list[k++] = strdup(p->o->tags[i])))
            goto oom;
    *out = list;
    return ACTL_OK;
oom:
    for (size_t i = 0; i < k; i++)
        free(list[i]);
    free(list);
    return actl__oom();
}

static void free_list(char **list)
{
    for (size_t i = 0; list && list[i]; i++)
        free(list[i]);
    free(list);
}

/* Collects the first problem actl__pack_verify_load reports. */
static void first_problem(const char *message, void *ctx)
{
    char *buf = ctx;
    if (!buf[0])
        snprintf(buf, 1024, "%s", message);
}

/* The tensors the follower decoded while a pack downloaded, by their index in
 * its header (*out: actl__pack_head_count entries, NULL where none; NULL
 * when there are none at all). */
static int take_tensors(follow *w, actl_tensor ***out)
{
    *out = NULL;
    size_t n = actl__pack_head_count(w->head);
    if (!follow_usable(w) || !n)
        return ACTL_OK;
    actl_tensor **t = calloc(n, sizeof *t);
    if (!t)
        return actl__oom();
    for (size_t i = 0; i < w->n; i++)
        if (w->jobs[i].done) {
            t[w->jobs[i].index] = w->jobs[i].tensor;
            w->jobs[i].tensor = NULL;
            actl__pull_ahead++;
        }
    *out = t;
    return ACTL_OK;
}

/* ref (NAME or NAME@V) from the published store at base. */
static int pull_published(pull *p, const char *base, const char *ref)
{
    int rc;
    char rname[NAME_CAP], found_name[NAME_CAP], taken[65], problem[1024] = "";
    char iq[ACTL__QUOTE_CAP];
    int64_t rver = 0, found_version = 0;
    char *index_url = url_join(base, INDEX_FILE);
    char *ref_key = actl__strdup_printf("%s#%s", base, ref);
    char *prefix = NULL, *source = NULL, *obj_url = NULL, *pack_path = NULL, **tags = NULL;
    cache_row ic, rc_row;
    actl__fetch fi, fp;
    json_t *root = NULL;
    ix_entry e;
    part pt = PART_INIT;
    actl_adapter *a = NULL;
    actl_entries *l = NULL;
    bool found = false, consumed = false, have = false, following = false;
    follow w;
    memset(&fi, 0, sizeof fi);
    memset(&fp, 0, sizeof fp);
    memset(&e, 0, sizeof e);
    if (!index_url || !ref_key) {
        rc = actl__oom();
        goto out;
    }
    actl__quote(index_url, iq, sizeof iq);
    if ((rc = actl_ref_parse(ref, rname, sizeof rname, &rver)))
        goto out;
    /* Adapters pulled from this index under this name carry a source that
     * starts so (exactly "...@V" when a version was asked for). */
    if (!(prefix = rver ? actl__strdup_printf("%s#%s@%lld", base, rname, (long long)rver)
                        : actl__strdup_printf("%s#%s@", base, rname))) {
        rc = actl__oom();
        goto out;
    }

    /* Revalidate when the index this reference was last resolved against
     * is the one cached and the adapter it gave is still here (under the
     * name this pull would give it). */
    const char *inm = NULL, *local = p->o->name ? p->o->name : rname;
    if ((rc = cache_get(p->s, index_url, &ic)) || (rc = cache_get(p->s, ref_key, &rc_row)))
        goto out;
    if (ic.found && ic.etag[0] && ic.sha256[0] && rc_row.found && rc_row.pack[0] &&
        strcmp(rc_row.sha256, ic.sha256) == 0) {
        if ((rc = find_adapter(p->s, rc_row.pack, rver ? prefix : NULL, rver ? NULL : prefix,
                               local, 0, found_name, &found_version, &found)))
            goto out;
        if (found)
            inm = ic.etag;
    }
    for (;;) {
        memset(&fi, 0, sizeof fi);
        fi.url = index_url;
        fi.max_size = INDEX_LIMIT;
        fi.if_none_match = inm;
        if (p->o->progress) {
            fi.progress = on_progress;
            fi.progress_ctx = p;
        }
        rc = actl__fetch_run(&fi);
        p->res.bytes_transferred += fi.transferred;
        p->before += fi.transferred;
        if (fi.transferred > 0)
            p->res.files_transferred++;
        if (rc)
            goto fail;
        if (!fi.not_modified)
            break;
        if ((rc = find_adapter(p->s, rc_row.pack, rver ? prefix : NULL, rver ? NULL : prefix,
                               local, 0, found_name, &found_version, &found)))
            goto out;
        if (found) {
            result_set(p, found_name, found_version, rc_row.pack, rc_row.pack, true);
            goto out;
        }
        inm = NULL; /* removed meanwhile: the index is needed after all */
    }

    if ((rc = index_parse(iq, fi.data, (size_t)fi.size, rname, rver, &root, &e, &found)))
        goto fail;
    if (!found) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s' has no adapter '%s'", iq, ref);
        goto out;
    }
    if (p->sha[0] && strcmp(p->sha, e.pack) != 0) {
        rc = actl__err(ACTL_ECORRUPT, "'%s' publishes '%s@%lld' as pack %s, not the expected %s",
                       iq, e.name, (long long)e.version, e.pack, p->sha);
        goto out;
    }
    const char *name = p->o->name ? p->o->name : e.name;
    if (!(source = actl__strdup_printf("%s#%s@%lld", base, e.name, (long long)e.version))) {
        rc = actl__oom();
        goto out;
    }

    /* Already here: the same version with the same pack, or this very entry
     * pulled before under an automatic version. */
    if ((rc = find_adapter(p->s, e.pack, NULL, NULL, name, e.version, found_name,
                           &found_version, &found)))
        goto out;
    if (!found && (rc = find_adapter(p->s, e.pack, source, NULL, name, 0, found_name,
                                     &found_version, &found)))
        goto out;
    if (found) {
        result_set(p, found_name, found_version, e.pack, e.pack, true);
        goto record;
    }
    actl_add_opts ao = actl_add_default_opts();
    ao.name = name;
    ao.version = e.version;
    if ((rc = version_pack(p->s, name, e.version, taken)))
        goto out;
    if (taken[0]) {
        if (!p->o->name || strcmp(p->o->name, e.name) == 0) {
            rc = actl__err(ACTL_EEXIST,
                           "'%s@%lld' is already in the store with pack %s, not the pack %s "
                           "that '%s' publishes; pull it under another name (--name)",
                           name, (long long)e.version, taken, e.pack, p->q);
            goto out;
        }
        ao.version = 0; /* a name of the caller's: the next free version */
    }
    if (e.stored > p->max) {
        rc = actl__err(ACTL_ELIMIT, "'%s': '%s@%lld' is %llu bytes, over the limit of %llu", iq,
                       e.name, (long long)e.version, (unsigned long long)e.stored,
                       (unsigned long long)p->max);
        goto out;
    }

    /* The pack itself: the store's own copy when it has one that loads
     * (every tensor hash checked), else downloaded. A damaged local copy is
     * downloaded again, and installing the download replaces it. */
    if (actl__store_has_pack(p->s, e.pack)) {
        if (!(pack_path = actl__pack_path(p->s->objects, e.pack))) {
            rc = actl__oom();
            goto out;
        }
        rc = actl__pack_load(pack_path, e.pack, &a);
        if (rc == ACTL_ENOMEM)
            goto out;
        have = rc == ACTL_OK;
        rc = ACTL_OK;
        actl__err_clear();
    }
    if (!have) {
        char obj[80];
        snprintf(obj, sizeof obj, OBJECTS_DIR "/%s", e.pack);
        if (!(obj_url = url_join(base, obj))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = part_acquire(p, obj_url, &pt)))
            goto fail;
        /* Each tensor is decoded and checked while the pack downloads, and
         * the file is written back to disk as it arrives: it is kept. */
        follow_init(&w, FOLLOW_PACK, pt.path, e.stored);
        following = true;
        if ((rc = fetch_part(p, obj_url, &pt, e.stored, NULL, e.pack, &w, true, &fp)))
            goto fail;
        consumed = true;
        /* fetch_part checked the digest of the bytes written; the header,
         * every frame and tensor digest, and the adapter they make are
         * checked here, from what the follower did where it applies. */
        size_t problems = 0;
        actl_tensor **ahead = NULL;
        if ((rc = take_tensors(&w, &ahead)))
            goto out;
        rc = actl__pack_verify_load_ahead(pt.path, ahead ? w.head : NULL, ahead, first_problem,
                                          problem, &problems, &a);
        free(ahead);
        if (rc)
            goto fail;
        if (problems || !a) {
            rc = actl__err(ACTL_ECORRUPT, "pack %s of '%s@%lld': %s", e.pack, e.name,
                           (long long)e.version, problem[0] ? problem : "damaged");
            goto fail;
        }
        /* On disk before the catalogue names it. */
        if (fsync(pt.fd) != 0) {
            rc = actl__err(ACTL_EIO, "cannot sync '%s': %s", pt.path, strerror(errno));
            goto fail;
        }
    }
    if ((rc = merged_tags(p, &e, &tags)))
        goto out;
    ao.tags = (const char *const *)tags;
    ao.description = e.description;
    ao.base_model = e.base_model;
    ao.source = source;
    rc = actl__store_add_pack(p->s, have ? NULL : pt.path, e.pack, a, &ao, &l);
    if (!have && !actl__exists(pt.path))
        pt.gone = true; /* renamed into objects/ */
    if (rc)
        goto fail;
    const actl_entry *ent = actl_entries_get(l, 0);
    result_set(p, ent->name, ent->version, ent->pack, e.pack, false);
record:;
    char isha[65];
    snprintf(isha, sizeof isha, "%s", fi.sha256);
    cache_put_row rows[2] = {
        {index_url, fi.etag, isha, (int64_t)fi.size, NULL},
        {ref_key, NULL, isha, -1, e.pack},
    };
    cache_put(p->s, rows, 2);
    goto out;
fail:
    if (rc != ACTL_EEXIST)
        actl__err_wrap(rc, "cannot pull '%s' from '%s'", ref, p->q);
out:
    actl_entries_free(l);
    actl_adapter_free(a);
    if (following)
        follow_free(&w);
    part_release(&pt, consumed);
    json_decref(root);
    free(fi.data);
    free_list(tags);
    free(pack_path);
    free(obj_url);
    free(source);
    free(prefix);
    free(ref_key);
    free(index_url);
    return rc;
}

/* ---- actl_store_pull ------------------------------------------------------------- */

static int make_dir(const char *path)
{
    if (mkdir(path, 0755) == 0 || (errno == EEXIST && actl__is_dir(path)))
        return ACTL_OK;
    return actl__err(ACTL_EIO, "cannot create directory '%s': %s", path,
                     errno == EEXIST ? "a file is in the way" : strerror(errno));
}

/* Everything the caller can get wrong, before any byte moves: the URL, the
 * ref, the expected digest, the name and the tags (p->sha, p->tag_* set).
 * *base gets the URL the files are fetched under (malloc'd); without a ref,
 * *name the adapter's local name (o->name, or the one the URL gives, kept
 * in derived). */
static int pull_plan(pull *p, const char *ref, char **base, char *derived, size_t dcap,
                     const char **name)
{
    int rc = ACTL_OK;
    const char *url = p->url;
    const actl_pull_opts *o = p->o;
    bool hf = strncasecmp(url, "hf://", 5) == 0;
    *base = NULL;
    *name = NULL;
    derived[0] = '\0';
    if (strlen(url) > URL_LEN_MAX)
        return actl__err(ACTL_EINVAL, "URL '%s' is longer than %d characters", p->q, URL_LEN_MAX);
    if (o->sha256) {
        size_t n = strlen(o->sha256);
        bool ok = n == 64;
        for (size_t i = 0; ok && i < 64; i++)
            ok = is_hex_digit(o->sha256[i]);
        if (!ok) {
            char q[ACTL__QUOTE_CAP];
            return actl__err(ACTL_EINVAL, "expected SHA-256 '%s' is not 64 hexadecimal digits",
                             actl__quote(o->sha256, q, sizeof q));
        }
        for (size_t i = 0; i < 64; i++)
            p->sha[i] = (char)(o->sha256[i] >= 'A' && o->sha256[i] <= 'F'
                                   ? o->sha256[i] - 'A' + 'a'
                                   : o->sha256[i]);
        p->sha[64] = '\0';
    }
    if (o->name && (rc = actl_name_check(o->name)))
        return rc;
    if ((rc = actl__tags_parse(o->tags, &p->tag_keys, &p->tag_vals, &p->n_tags)))
        return rc;
    if (ref) {
        if (hf)
            return actl__err(ACTL_EINVAL,
                             "'%s': a published store is an http, https or file URL, not hf://",
                             p->q);
        char rname[NAME_CAP];
        int64_t rver;
        if ((rc = actl_ref_parse(ref, rname, sizeof rname, &rver)) ||
            (rc = dir_url_check(url, p->q)))
            return rc;
        size_t n = strlen(url);
        while (n > 1 && url[n - 1] == '/' && url[n - 2] != '/')
            n--; /* "http://h/store/" and "http://h/store" are one store */
        if (!(*base = strndup(url, n)))
            return actl__oom();
        return ACTL_OK;
    }
    if (hf) {
        if ((rc = hf_resolve(p, base, derived))) {
            free(*base); /* resolved, then refused by the URL check */
            *base = NULL;
            return rc;
        }
    } else {
        if ((rc = dir_url_check(url, p->q)))
            return rc;
        if (!(*base = strdup(url)))
            return actl__oom();
        url_last_component(url, derived, dcap);
    }
    if ((rc = pick_name(p, derived, name))) {
        free(*base);
        *base = NULL;
    }
    return rc;
}

static void pull_init(pull *p, actl_store *s, const char *url, const actl_pull_opts *o)
{
    memset(p, 0, sizeof *p);
    p->s = s;
    p->o = o;
    p->url = url;
    p->max = o->max_size ? o->max_size : ACTL_PULL_DEFAULT_MAX;
    actl__quote(url, p->q, sizeof p->q);
}

int actl__pull_plan(const char *url, const char *ref, const actl_pull_opts *o, char **base,
                    char **name)
{
    pull p;
    char derived[HF_NAME_MAX + NAME_CAP + 2];
    const char *nm = NULL;
    actl_pull_opts defaults = actl_pull_default_opts();
    *base = NULL;
    *name = NULL;
    if (!url)
        return actl__err(ACTL_EINVAL, "pull plan: NULL argument");
    pull_init(&p, NULL, url, o ? o : &defaults);
    int rc = pull_plan(&p, ref, base, derived, sizeof derived, &nm);
    if (!rc && nm && !(*name = strdup(nm))) {
        free(*base);
        *base = NULL;
        rc = actl__oom();
    }
    free(p.tag_keys);
    free(p.tag_vals);
    return rc;
}

int actl_store_pull(actl_store *s, const char *url, const char *ref, const actl_pull_opts *o,
                    actl_pull_result *out)
{
    int rc = ACTL_OK;
    pull p;
    char *base = NULL, derived[HF_NAME_MAX + NAME_CAP + 2];
    const char *name = NULL;
    actl_pull_opts defaults = actl_pull_default_opts();
    if (!s || !url)
        return actl__err(ACTL_EINVAL, "store pull: NULL argument");
    pull_init(&p, s, url, o ? o : &defaults);
    if ((rc = pull_plan(&p, ref, &base, derived, sizeof derived, &name)))
        goto out;
    if (!(p.partial = actl__path_join(s->dir, ACTL_PARTIAL_DIR))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = make_dir(p.partial)))
        goto out;
    rc = ref ? pull_published(&p, base, ref) : pull_peft(&p, base, name);
    if (!rc && out)
        *out = p.res;
out:
    free(base);
    free(p.partial);
    free(p.tag_keys);
    free(p.tag_vals);
    return rc;
}

int actl__index_check(const char *what, const char *text, size_t len, const char *name,
                      int64_t version, bool *found)
{
    json_t *root = NULL;
    ix_entry pick;
    int rc = index_parse(what, text, len, name, version, &root, &pick, found);
    json_decref(root);
    return rc;
}

/* ---- publish ------------------------------------------------------------------------ */

static int mkdir_p(const char *path)
{
    char *buf = strdup(path);
    int rc = ACTL_OK;
    if (!buf)
        return actl__oom();
    for (char *c = buf + 1; *c; c++) {
        if (*c != '/')
            continue;
        *c = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            rc = actl__err(ACTL_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
            goto out;
        }
        *c = '/';
    }
    rc = make_dir(buf);
out:
    free(buf);
    return rc;
}

typedef struct copy_ctx {
    const char *src;
    const char *hex;
} copy_ctx;

/* Copies the pack ctx->src into f, hashing on the way: a damaged pack in the
 * store must not be published under a name its bytes do not have. */
static int copy_writer(FILE *f, const char *tmp_path, void *ctx)
{
    copy_ctx *c = ctx;
    int fd = -1;
    uint64_t size;
    actl__sha256 *h = NULL;
    unsigned char *buf = NULL, digest[32];
    char got[65];
    int rc = actl__open_regular(c->src, &fd, &size);
    if (rc)
        return rc;
    if (!(buf = malloc(COPY_CHUNK))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__sha256_new(&h)))
        goto out;
    for (;;) {
        ssize_t r = read(fd, buf, COPY_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = actl__err(ACTL_EIO, "cannot read '%s': %s", c->src, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        if ((rc = actl__sha256_update(h, buf, (size_t)r)) ||
            (rc = actl__fwrite_all(f, buf, (size_t)r, tmp_path)))
            goto out;
    }
    rc = actl__sha256_final(h, digest);
    h = NULL;
    if (rc)
        goto out;
    actl__hex(digest, 32, got);
    if (strcmp(got, c->hex) != 0)
        rc = actl__err(ACTL_ECORRUPT,
                       "pack '%s' has SHA-256 %s, not the %s it is named after; run verify",
                       c->src, got, c->hex);
out:
    actl__sha256_free(h);
    free(buf);
    close(fd);
    return rc;
}

/* The SHA-256 of a regular file, or "" when it is absent or unreadable. */
static int file_sha256(const char *path, char hex[65])
{
    int fd = -1;
    uint64_t size;
    actl__sha256 *h = NULL;
    unsigned char *buf = NULL, digest[32];
    hex[0] = '\0';
    if (actl__open_regular(path, &fd, &size) != ACTL_OK) {
        actl__err_clear();
        return ACTL_OK;
    }
    int rc = ACTL_OK;
    if (!(buf = malloc(COPY_CHUNK))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__sha256_new(&h)))
        goto out;
    for (;;) {
        ssize_t r = read(fd, buf, COPY_CHUNK);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out; /* unreadable: replaced */
        if (r == 0)
            break;
        if ((rc = actl__sha256_update(h, buf, (size_t)r)))
            goto out;
    }
    rc = actl__sha256_final(h, digest);
    h = NULL;
    if (!rc)
        actl__hex(digest, 32, hex);
out:
    actl__sha256_free(h);
    free(buf);
    close(fd);
    return rc;
}

/* DIR/objects/<hex> from the store's pack, unless an identical file is there. */
static int publish_pack(actl_store *s, const char *objects, const char *hex)
{
    char have[65];
    char *src = actl__pack_path(s->objects, hex), *dst = actl__path_join(objects, hex);
    int rc = ACTL_OK;
    if (!src || !dst) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = file_sha256(dst, have)) || strcmp(have, hex) == 0)
        goto out;
    copy_ctx c = {src, hex};
    rc = actl__write_atomic(dst, copy_writer, &c);
out:
    free(src);
    free(dst);
    return rc;
}

static int set_new(json_t *o, const char *key, json_t *v)
{
    /* json_object_set_new frees v on failure; a NULL v is an allocation or
     * UTF-8 failure of its constructor */
    return v && json_object_set_new(o, key, v) == 0 ? ACTL_OK : actl__oom();
}

static json_t *string_or_null(const char *s) { return s ? json_string(s) : json_null(); }

/* One adapter of the index, from its catalogue entry. */
static int entry_json(const actl_entry *e, json_t **out)
{
    json_t *o = json_object(), *tags = json_object(), *tm = NULL, *cfg = NULL;
    int rc = ACTL_OK;
    if (!o || !tags) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__json_parse(e->target_modules, strlen(e->target_modules), "target modules",
                               &tm)) ||
        (rc = actl__json_parse(e->config, strlen(e->config), "config", &cfg)))
        goto out;
    for (size_t i = 0; i < e->tag_count; i++)
        if ((rc = set_new(tags, e->tag_keys[i], json_string(e->tag_values[i]))))
            goto out;
    if ((rc = set_new(o, "name", json_string(e->name))) ||
        (rc = set_new(o, "version", json_integer(e->version))) ||
        (rc = set_new(o, "kind", json_string(actl_kind_name(e->kind)))) ||
        (rc = set_new(o, "base_model", string_or_null(e->base_model))) ||
        (rc = set_new(o, "rank", json_integer(e->rank))) ||
        (rc = set_new(o, "variant", string_or_null(e->variant))) ||
        (rc = set_new(o, "group_size", json_integer(e->group_size))) ||
        (rc = set_new(o, "raw_bytes", json_integer((json_int_t)e->raw_bytes))) ||
        (rc = set_new(o, "stored_bytes", json_integer((json_int_t)e->stored_bytes))) ||
        (rc = set_new(o, "pack", json_string(e->pack))) ||
        (rc = set_new(o, "description", string_or_null(e->description))) ||
        (rc = set_new(o, "created", json_integer(e->created))))
        goto out;
    rc = set_new(o, "target_modules", tm);
    tm = NULL;
    if (!rc)
        rc = set_new(o, "config", cfg);
    cfg = NULL;
    if (!rc)
        rc = set_new(o, "tags", tags);
    tags = NULL;
    if (rc)
        goto out;
    *out = o;
    o = NULL;
out:
    json_decref(o);
    json_decref(tags);
    json_decref(tm);
    json_decref(cfg);
    return rc;
}

typedef struct index_ctx {
    const char *text;
} index_ctx;

static int index_writer(FILE *f, const char *tmp_path, void *ctx)
{
    const index_ctx *c = ctx;
    int rc = actl__fwrite_all(f, c->text, strlen(c->text), tmp_path);
    return rc ? rc : actl__fwrite_all(f, "\n", 1, tmp_path);
}

static int entry_ptr_cmp(const void *a, const void *b)
{
    const actl_entry *x = *(const actl_entry *const *)a, *y = *(const actl_entry *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->version > y->version) - (x->version < y->version);
}

static int pack_ptr_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int actl_store_publish(actl_store *s, const char *dir, const char *const *refs, size_t *count)
{
    return actl__store_publish(s, dir, refs, count, NULL);
}

int actl__store_publish(actl_store *s, const char *dir, const char *const *refs, size_t *count,
                        size_t *stacks)
{
    int rc = ACTL_OK;
    size_t n_refs = 0, n = 0, n_lists = 0, skipped = 0;
    actl_entries **lists = NULL;
    const actl_entry **v = NULL;
    const char **packs = NULL;
    char *objects = NULL, *index_path = NULL, *text = NULL;
    json_t *root = NULL, *arr = NULL;
    if (count)
        *count = 0;
    if (stacks)
        *stacks = 0;
    if (!s || !dir)
        return actl__err(ACTL_EINVAL, "store publish: NULL argument");
    if (!*dir)
        return actl__err(ACTL_EINVAL, "publish directory is empty");
    while (refs && refs[n_refs])
        n_refs++;

    /* Every ref resolved before anything is written. */
    if (!(lists = calloc(n_refs ? n_refs : 1, sizeof *lists))) {
        rc = actl__oom();
        goto out;
    }
    if (n_refs == 0) {
        actl_query q = actl_query_default();
        q.all_versions = 1;
        if ((rc = actl_store_list(s, &q, &lists[0])))
            goto out;
        n_lists = 1;
    } else {
        for (; n_lists < n_refs; n_lists++)
            if ((rc = actl_store_show(s, refs[n_lists], &lists[n_lists])))
                goto out;
    }
    size_t total = 0;
    for (size_t i = 0; i < n_lists; i++)
        total += actl_entries_count(lists[i]);
    if (total && (!(v = calloc(total, sizeof *v)) || !(packs = calloc(total, sizeof *packs)))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n_lists; i++)
        for (size_t j = 0; j < actl_entries_count(lists[i]); j++) {
            const actl_entry *e = actl_entries_get(lists[i], j);
            /* A stack is a recipe over other entries, with no pack of its
             * own, and an index lists packs: named, it is refused; when
             * everything is published, it is left out and counted. */
            if (!e->pack && n_refs) {
                rc = actl__err(ACTL_EUNSUPPORTED,
                               "cannot publish '%s@%lld': it is a stack, which has no pack of "
                               "its own; publish its members",
                               e->name, (long long)e->version);
                goto out;
            }
            if (!e->pack) {
                skipped++;
                continue;
            }
            v[n++] = e;
        }
    /* sorted by name and version, each once (a ref may be given twice) */
    if (n > 1)
        qsort(v, n, sizeof *v, entry_ptr_cmp);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || entry_ptr_cmp(&v[m - 1], &v[i]) != 0)
            v[m++] = v[i];
    n = m;

    if (!(objects = actl__path_join(dir, OBJECTS_DIR)) ||
        !(index_path = actl__path_join(dir, INDEX_FILE))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = mkdir_p(dir)) || (rc = make_dir(objects)))
        goto out;
    for (size_t i = 0; i < n; i++)
        packs[i] = v[i]->pack;
    if (n > 1)
        qsort(packs, n, sizeof *packs, pack_ptr_cmp);
    for (size_t i = 0; i < n; i++)
        if ((i == 0 || strcmp(packs[i - 1], packs[i]) != 0) &&
            (rc = publish_pack(s, objects, packs[i]))) {
            actl__err_wrap(rc, "cannot publish to '%s'", dir);
            goto out;
        }
    if (n && (rc = actl__fsync_dir(objects)))
        goto out;

    if (!(root = json_object()) || !(arr = json_array())) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = NULL;
        if ((rc = entry_json(v[i], &e)))
            goto out;
        if (json_array_append_new(arr, e) != 0) {
            rc = actl__oom();
            goto out;
        }
    }
    if ((rc = set_new(root, "format", json_integer(INDEX_FORMAT))) ||
        (rc = set_new(root, "generated", json_integer((json_int_t)time(NULL)))))
        goto out;
    rc = set_new(root, "adapters", arr);
    arr = NULL;
    if (rc)
        goto out;
    /* rank_pattern and alpha_pattern inside each config keep their order */
    if (!(text = actl__json_dump_keep(root, 2, actl__peft_keep_order))) {
        rc = actl__oom();
        goto out;
    }
    index_ctx ic = {text};
    if ((rc = actl__write_atomic(index_path, index_writer, &ic)))
        goto out;
    if (count)
        *count = n;
    if (stacks)
        *stacks = skipped;
out:
    for (size_t i = 0; i < n_lists; i++)
        actl_entries_free(lists[i]);
    free(lists);
    free(v);
    free(packs);
    free(objects);
    free(index_path);
    free(text);
    json_decref(root);
    json_decref(arr);
    return rc;
}
