/* fetch.c: downloads over http, https and file:// with libcurl (DESIGN.md 7).
 *
 * One policy for every call (protocols, redirects, TLS, timeouts, retries,
 * resume, revalidation, size limit; internal.h lists it). The body goes to a
 * file or to memory and is hashed as it arrives (a file's bytes on a thread
 * of their own, see "hashing"), so the caller gets the SHA-256 without
 * reading the file again.
 *
 * Outline of actl__fetch_run: up to ACTL_FETCH_ATTEMPTS attempts on one curl
 * handle (so a kept-alive connection is reused). Each attempt asks for the
 * bytes not yet held (Range: bytes=have-), the header callback records the
 * current response's fields, and the first body byte decides what the body
 * is: a 206 continues the output, a 200 replaces it, anything else is an
 * error page that is read and dropped. After the attempt, the curl result
 * and the status say whether the download is done, failed for good, or is
 * worth another attempt after a backoff; bytes received before a dropped
 * connection are kept and the next attempt continues from them.
 *
 * A caller that works on the file while it arrives, or records what it
 * holds, passes hooks (actl__fetch_run_hooked): it hears of each body
 * accepted into the file, once the file is settled for it (truncated for a
 * body from zero, its prefix confirmed for a continuation) and before its
 * first byte is written, and of the bytes written as they grow. The ETag it
 * hears names every byte the file will hold, or is "" when no single one
 * does (a continuation of bytes that came with another or with none): the
 * same rule gives the ETag reported after a failure, which the next call's
 * If-Range relies on. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#define URL_MAX 8192
#define MAX_REDIRS 5L
#define CONNECT_TIMEOUT_S 30L
/* Below this many bytes a second for the low-speed window, the transfer is
 * abandoned (and retried, resuming): a stalled server must not hang a pull. */
#define LOW_SPEED_BYTES 1024L
#define LOW_SPEED_S_DEFAULT 30L
#define BACKOFF_MS_DEFAULT 500L
#define BACKOFF_MS_CAP 10000L
#define RETRY_AFTER_CAP_S 30L
/* An error page is read (so the connection can be reused) up to this size;
 * a server streaming an endless one is cut off. */
#define DISCARD_MAX (1u << 20)
#define PROGRESS_INTERVAL_NS 100000000LL
/* The largest header line looked at; longer ones are ignored. */
#define HEADER_LINE_MAX 8192
#define PREFIX_CHUNK (1u << 20)
/* Bytes between two requests to write a kept file back (hooks->writeback):
 * large enough to make few calls, small enough that the disk starts early. */
#define WRITEBACK_STEP (8u << 20)
/* A body going to a file is gathered into a buffer of this size before it is
 * written: libcurl hands it over 16 KiB at a time, and a write call per piece
 * costs the transfer's thread more than copying them (a 268 MB file in 16 KiB
 * writes takes twice the time it takes in 1 MiB ones). */
#define WBUF_SIZE (1u << 20)
/* ...and written at least this often, so that a slow transfer's bytes reach
 * the file for the next pull to resume even when this one is killed. */
#define WBUF_AGE_NS 250000000LL

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

typedef enum { BODY_UNDECIDED, BODY_KEEP, BODY_DISCARD } body_mode;

typedef struct xfer {
    actl__fetch *f;
    const actl__fetch_hooks *hooks; /* or NULL */
    CURL *curl;
    const char *url_q;  /* the URL quoted for messages */
    uint64_t max;
    bool is_file;       /* file:// URL: no headers, no status, no resume */
    /* the output, kept across attempts */
    int fd;             /* f->path opened (lazily), else -1 */
    char *mem;          /* f->path NULL: the body, mem_cap bytes allocated */
    size_t mem_cap;
    uint64_t have;      /* valid bytes of the output */
    uint64_t disk;      /* of those, the bytes in the file: have - wlen */
    unsigned char *wbuf; /* the next bytes of the file, wlen of them (WBUF_SIZE allocated) */
    size_t wlen;
    int64_t wbuf_since; /* when the first byte in wbuf came */
    uint64_t told;      /* `disk` when hooks->grow was last called */
    uint64_t written_back; /* bytes whose writeback was asked for (hooks->writeback) */
    uint64_t hashed;    /* h covers the output's bytes [0, hashed) */
    actl__sha256 *h;
    /* the hasher thread (see "hashing" below) */
    bool hashing;       /* it runs */
    pthread_t hasher;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t hash_target; /* under mu: bytes of the file it may hash */
    uint64_t notified;    /* `have` when the hasher was last told */
    int hash_cmd;         /* under mu: HASH_RUN, HASH_FINISH or HASH_ABANDON */
    int hash_rc;          /* its result, read after the join */
    char hash_msg[512];
    char partial_etag[256]; /* the ETag every byte held came with ("": unknown) */
    char linked[65];    /* X-Linked-Etag of any response so far */
    /* the current response, reset at each status line */
    long status;
    char etag[256];
    int64_t clen;       /* Content-Length, -1: none */
    bool cr_seen;
    int64_t cr_first;   /* Content-Range first byte, -1: "*" */
    int64_t cr_total;   /* Content-Range complete length, -1: "*" */
    long retry_after_s; /* -1: none */
    char location[1024];
    body_mode body;
    uint64_t resp_bytes; /* body bytes of this response */
    uint64_t discarded;
    int64_t full_total;  /* the complete file's announced size, -1: unknown */
    /* why a callback stopped the attempt */
    int abort_rc;        /* an ACTL_E* code with the thread's message set */
    bool range_bad;      /* a 206 that does not continue what we hold */
    bool discard_full;   /* an error page longer than DISCARD_MAX */
    /* progress */
    uint64_t expect_call; /* bytes this call expects to receive, 0: unknown */
    int64_t last_progress_ns;
} xfer;

/* ---- small helpers -------------------------------------------------------- */

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return def;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return def;
    return v;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Digits only, no sign, no overflow: an unparsable length is "none" rather
 * than a guess. */
static bool parse_u63(const char *s, int64_t *out)
{
    int64_t v = 0;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (INT64_MAX - (*s - '0')) / 10)
            return false;
        v = v * 10 + (*s - '0');
    }
    *out = v;
    return *s == '\0';
}

/* What may go into a request header: printable ASCII, nothing that could end
 * the line. */
static bool header_safe(const char *s)
{
    if (!*s || strlen(s) > 255)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            return false;
    return true;
}

static bool is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    return s[64] == '\0';
}

/* ---- hashing ------------------------------------------------------------------
 * A file's bytes are hashed on a thread of their own, read back from the page
 * cache a little behind the writes, so that hashing overlaps the transfer
 * instead of adding to it: SHA-256 runs at about the speed of a loopback
 * transfer, and in series it would halve a pull's throughput. While the
 * thread runs it alone touches h and hashed; the transfer only raises
 * hash_target. A resumed prefix is hashed the same way, from the start.
 * Bodies in memory (small documents) are hashed in the write callback. */

enum { HASH_RUN, HASH_FINISH, HASH_ABANDON };

/* Hashes the next chunk of the file below `upto`. */
static int hash_file_step(xfer *x, unsigned char *buf, uint64_t upto)
{
    uint64_t want = upto - x->hashed;
    size_t n = want < PREFIX_CHUNK ? (size_t)want : PREFIX_CHUNK;
    ssize_t got = pread(x->fd, buf, n, (off_t)x->hashed);
    if (got < 0 && errno == EINTR)
        return ACTL_OK;
    if (got <= 0)
        return actl__err(ACTL_EIO, "cannot read '%s': %s", x->f->path,
                         got < 0 ? strerror(errno) : "shorter than expected");
    int rc = actl__sha256_update(x->h, buf, (size_t)got);
    if (!rc)
        x->hashed += (uint64_t)got;
    return rc;
}

static void *hasher_main(void *arg)
{
    xfer *x = arg;
    int rc = ACTL_OK;
    unsigned char *buf = malloc(PREFIX_CHUNK);
    if (!buf)
        rc = actl__oom();
    while (!rc) {
        pthread_mutex_lock(&x->mu);
        while (x->hashed == x->hash_target && x->hash_cmd == HASH_RUN)
            pthread_cond_wait(&x->cv, &x->mu);
        uint64_t target = x->hash_target;
        int cmd = x->hash_cmd;
        pthread_mutex_unlock(&x->mu);
        if (cmd == HASH_ABANDON || (cmd == HASH_FINISH && x->hashed == target))
            break;
        rc = hash_file_step(x, buf, target);
    }
    if (rc) /* the message is this thread's: carried over by hand */
        snprintf(x->hash_msg, sizeof x->hash_msg, "%s", actl_errmsg());
    x->hash_rc = rc;
    free(buf);
    return NULL;
}

/* Brings the digest up to `have` on the calling thread (no hasher running):
 * a prefix the hasher could not take, or a complete file nothing was
 * received for. */
static int hash_sync(xfer *x)
{
    int rc = ACTL_OK;
    unsigned char *buf = NULL;
    if (x->hashed >= x->have)
        return ACTL_OK;
    if (!x->f->path) {
        rc = actl__sha256_update(x->h, x->mem + x->hashed, (size_t)(x->have - x->hashed));
        if (!rc)
            x->hashed = x->have;
        return rc;
    }
    if (!(buf = malloc(PREFIX_CHUNK)))
        return actl__oom();
    while (!rc && x->hashed < x->have)
        rc = hash_file_step(x, buf, x->have);
    free(buf);
    return rc;
}

/* Starts hashing the file from `hashed` up (the prefix first). When no
 * thread can be had, hashes the prefix here and the rest in the write
 * callback. */
static int hasher_start(xfer *x)
{
    if (x->hashing || x->fd < 0)
        return x->hashing ? ACTL_OK : hash_sync(x);
    x->hash_target = x->notified = x->disk;
    x->hash_cmd = HASH_RUN;
    x->hash_rc = ACTL_OK;
    if (pthread_create(&x->hasher, NULL, hasher_main, x) != 0)
        return hash_sync(x);
    x->hashing = true;
    return ACTL_OK;
}

static void hasher_notify(xfer *x, int cmd)
{
    pthread_mutex_lock(&x->mu);
    x->hash_target = x->disk; /* the thread reads the file */
    x->hash_cmd = cmd;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

/* HASH_FINISH: waits until all of `have` is hashed; HASH_ABANDON: stops at
 * once, the digest being of no further use. */
static int hasher_stop(xfer *x, int cmd)
{
    if (!x->hashing)
        return ACTL_OK;
    hasher_notify(x, cmd);
    pthread_join(x->hasher, NULL);
    x->hashing = false;
    if (cmd == HASH_FINISH && x->hash_rc)
        return actl__err(x->hash_rc, "%s", x->hash_msg);
    return ACTL_OK;
}

/* ---- the output ------------------------------------------------------------ */

static int open_output(xfer *x)
{
    if (x->fd >= 0 || !x->f->path)
        return ACTL_OK;
    x->fd = open(x->f->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
    if (x->fd < 0)
        return actl__err(ACTL_EIO, "cannot open '%s': %s", x->f->path, strerror(errno));
    return ACTL_OK;
}

/* A 200 (or a file:// body) replaces whatever is held. */
static int restart_output(xfer *x)
{
    hasher_stop(x, HASH_ABANDON);
    int rc = open_output(x);
    if (rc)
        return rc;
    /* Only a file with bytes in it: on ext4, truncating a file to zero arms
     * a flush of everything written after it at close (auto_da_alloc),
     * which costs a fresh download a quarter of its time. */
    struct stat st;
    if (x->fd >= 0 && (fstat(x->fd, &st) != 0 || st.st_size > 0) && ftruncate(x->fd, 0) != 0)
        return actl__err(ACTL_EIO, "cannot truncate '%s': %s", x->f->path, strerror(errno));
    x->have = x->disk = x->hashed = x->told = x->written_back = 0;
    x->wlen = 0;
    actl__sha256_free(x->h);
    x->h = NULL;
    return actl__sha256_new(&x->h);
}

/* Passes the output's growth on to the caller's hooks: grow() every
 * ACTL_FETCH_GROW_STEP bytes (or at once when `now`), and writeback requests
 * every WRITEBACK_STEP bytes. */
static void tell_growth(xfer *x, bool now)
{
    const actl__fetch_hooks *h = x->hooks;
    if (!h || x->fd < 0)
        return;
    if (h->grow && (now || x->disk - x->told >= ACTL_FETCH_GROW_STEP)) {
        h->grow(h->ctx, x->disk);
        x->told = x->disk;
    }
    if (h->writeback && x->disk - x->written_back >= WRITEBACK_STEP) {
        /* A hint: its failure changes nothing, the caller's fsync follows. */
        (void)sync_file_range(x->fd, (off_t)x->written_back, (off_t)(x->disk - x->written_back),
                              SYNC_FILE_RANGE_WRITE);
        x->written_back = x->disk;
    }
}

static int write_at(xfer *x, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(x->fd, p + done, n - done, (off_t)(off + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return actl__err(ACTL_EIO, "cannot write '%s': %s", x->f->path,
                             w < 0 ? strerror(errno) : "no progress");
        done += (size_t)w;
    }
    return ACTL_OK;
}

/* Writes the buffered bytes to the file, then tells whoever reads the file
 * (the hasher thread, the caller's hooks) how far it goes. */
static int flush_output(xfer *x)
{
    if (x->wlen) {
        int rc = write_at(x, x->wbuf, x->wlen, x->disk);
        if (rc)
            return rc;
        x->disk += x->wlen;
        x->wlen = 0;
    }
    tell_growth(x, false);
    if (x->hashing && x->disk - x->notified >= PREFIX_CHUNK) {
        /* waking the hasher for less would cost more than it saves */
        hasher_notify(x, HASH_RUN);
        x->notified = x->disk;
    }
    return ACTL_OK;
}

/* Appends body bytes to the output: a file (through wbuf) or memory. With
 * no hasher thread, they are hashed here, in order. */
static int append_output(xfer *x, const char *p, size_t n)
{
    int rc;
    if (x->fd >= 0) {
        if (!x->wbuf && !(x->wbuf = malloc(WBUF_SIZE)))
            return actl__oom();
        for (size_t done = 0; done < n;) {
            if (x->wlen == 0)
                x->wbuf_since = now_ns();
            size_t k = WBUF_SIZE - x->wlen < n - done ? WBUF_SIZE - x->wlen : n - done;
            memcpy(x->wbuf + x->wlen, p + done, k);
            x->wlen += k;
            x->have += k;
            done += k;
            if (x->wlen == WBUF_SIZE && (rc = flush_output(x)))
                return rc;
        }
        if (x->wlen && now_ns() - x->wbuf_since >= WBUF_AGE_NS && (rc = flush_output(x)))
            return rc;
        if (x->hashing)
            return ACTL_OK;
    } else {
        /* +1: room for the NUL the caller gets */
        if (x->have + n + 1 > x->mem_cap) {
            size_t cap = x->mem_cap ? x->mem_cap : 65536;
            while (cap < x->have + n + 1)
                cap *= 2;
            char *m = realloc(x->mem, cap);
            if (!m)
                return actl__oom();
            x->mem = m;
            x->mem_cap = cap;
        }
        memcpy(x->mem + x->have, p, n);
        x->have += n;
    }
    if (!(rc = actl__sha256_update(x->h, p, n)))
        x->hashed += n;
    return rc;
}

/* ---- callbacks --------------------------------------------------------------- */

static void new_response(xfer *x, long status)
{
    x->status = status;
    x->etag[0] = '\0';
    x->clen = -1;
    x->cr_seen = false;
    x->cr_first = x->cr_total = -1;
    x->retry_after_s = -1;
    x->location[0] = '\0';
    x->body = BODY_UNDECIDED;
    x->resp_bytes = 0;
    x->discarded = 0;
    x->full_total = -1;
}

/* Content-Range: "bytes FIRST-LAST/TOTAL", where FIRST-LAST or TOTAL may be
 * a star (read as -1). */
static void parse_content_range(xfer *x, const char *v)
{
    char first[32] = "", total[32] = "";
    if (strncasecmp(v, "bytes ", 6) != 0)
        return;
    v += 6;
    const char *slash = strchr(v, '/');
    if (!slash)
        return;
    const char *dash = memchr(v, '-', (size_t)(slash - v));
    size_t fl = dash ? (size_t)(dash - v) : (size_t)(slash - v);
    if (fl >= sizeof first || strlen(slash + 1) >= sizeof total)
        return;
    memcpy(first, v, fl);
    strcpy(total, slash + 1);
    x->cr_seen = true;
    if (!dash || !parse_u63(first, &x->cr_first))
        x->cr_first = -1;
    if (!parse_u63(total, &x->cr_total))
        x->cr_total = -1;
}

/* Seconds or an HTTP-date, capped: a server asking for an hour is not
 * obeyed for an hour. */
static void parse_retry_after(xfer *x, const char *v)
{
    int64_t s;
    if (parse_u63(v, &s)) {
        x->retry_after_s = s > RETRY_AFTER_CAP_S ? RETRY_AFTER_CAP_S : (long)s;
        return;
    }
    time_t when = curl_getdate(v, NULL);
    if (when == -1)
        return;
    double d = difftime(when, time(NULL));
    x->retry_after_s = d <= 0 ? 0 : d > RETRY_AFTER_CAP_S ? RETRY_AFTER_CAP_S : (long)d;
}

/* X-Linked-Etag: "<64 hex>" (the hub's SHA-256 of a large file), quoted or
 * not; anything else (a git blob id, say) is not a SHA-256 and is ignored. */
static void parse_linked(xfer *x, const char *v)
{
    char buf[80];
    if (strncmp(v, "W/", 2) == 0)
        v += 2;
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    if (n != 64)
        return;
    memcpy(buf, v, 64);
    buf[64] = '\0';
    if (!is_hex64(buf))
        return;
    for (int i = 0; i < 64; i++)
        x->linked[i] = (char)(buf[i] >= 'A' && buf[i] <= 'F' ? buf[i] - 'A' + 'a' : buf[i]);
    x->linked[64] = '\0';
}

static size_t on_header(char *data, size_t size, size_t nitems, void *ud)
{
    xfer *x = ud;
    size_t n = size * nitems, len = n;
    char line[HEADER_LINE_MAX];
    while (len && (data[len - 1] == '\r' || data[len - 1] == '\n'))
        len--;
    if (len == 0 || len >= sizeof line || memchr(data, '\0', len))
        return n;
    memcpy(line, data, len);
    line[len] = '\0';
    if (strncmp(line, "HTTP/", 5) == 0) {
        /* "HTTP/1.1 200 OK", "HTTP/2 206": a new response of the chain */
        const char *p = strchr(line, ' ');
        long status = 0;
        if (p && p[1] >= '1' && p[1] <= '9' && p[2] >= '0' && p[2] <= '9' && p[3] >= '0' &&
            p[3] <= '9')
            status = (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
        new_response(x, status);
        return n;
    }
    char *colon = strchr(line, ':');
    if (!colon)
        return n;
    *colon = '\0';
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    for (char *e = v + strlen(v); e > v && (e[-1] == ' ' || e[-1] == '\t');)
        *--e = '\0';
    if (strcasecmp(line, "ETag") == 0) {
        if (header_safe(v))
            snprintf(x->etag, sizeof x->etag, "%s", v);
    } else if (strcasecmp(line, "X-Linked-Etag") == 0) {
        parse_linked(x, v);
    } else if (strcasecmp(line, "Content-Length") == 0) {
        if (!parse_u63(v, &x->clen))
            x->clen = -1;
    } else if (strcasecmp(line, "Content-Range") == 0) {
        parse_content_range(x, v);
    } else if (strcasecmp(line, "Retry-After") == 0) {
        parse_retry_after(x, v);
    } else if (strcasecmp(line, "Location") == 0) {
        snprintf(x->location, sizeof x->location, "%s", v);
    }
    return n;
}

/* The first byte of a body (or the end of an empty one) decides what it is.
 * Returns ACTL_OK, or an error with x->abort_rc / x->range_bad set. */
static int begin_body(xfer *x)
{
    int rc = ACTL_OK;
    long st = x->is_file ? 200 : x->status;
    int64_t total = -1;
    if (st == 206) {
        /* The continuation of what we hold, or nothing. */
        if (!x->cr_seen || x->cr_first < 0 || (uint64_t)x->cr_first != x->have) {
            x->range_bad = true;
            return ACTL_EIO;
        }
        total = x->cr_total >= 0 ? x->cr_total
                : x->clen >= 0   ? (int64_t)x->have + x->clen
                                 : -1;
        /* One ETag names all the bytes only when the part held came with it
         * too (it did when If-Range was sent with it and the server agreed). */
        if (strcmp(x->partial_etag, x->etag) != 0)
            x->partial_etag[0] = '\0';
    } else if (st >= 200 && st < 300) {
        if ((rc = restart_output(x)))
            goto fail;
        snprintf(x->partial_etag, sizeof x->partial_etag, "%s", x->etag);
        total = x->clen;
        if (x->is_file) {
            /* no headers: libcurl knows the file's size */
            curl_off_t cl = -1;
            if (curl_easy_getinfo(x->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK)
                total = cl >= 0 ? (int64_t)cl : -1;
        }
    } else {
        x->body = BODY_DISCARD;
        return ACTL_OK;
    }
    if (total >= 0 && (uint64_t)total > x->max) {
        rc = actl__err(ACTL_ELIMIT,
                       "cannot download '%s': body of %lld bytes is larger than the limit of "
                       "%llu bytes",
                       x->url_q, (long long)total, (unsigned long long)x->max);
        goto fail;
    }
    if ((rc = hasher_start(x)))
        goto fail;
    /* The file's state is settled (truncated, or its prefix confirmed): the
     * caller hears of it before any byte of this body lands. */
    if (x->hooks && x->hooks->body && x->fd >= 0 &&
        (rc = x->hooks->body(x->hooks->ctx, x->partial_etag, st == 206)))
        goto fail;
    if (st == 206)
        tell_growth(x, true);
    x->full_total = total;
    x->expect_call = total >= 0 ? x->f->transferred + ((uint64_t)total - x->have) : 0;
    x->body = BODY_KEEP;
    return ACTL_OK;
fail:
    x->abort_rc = rc;
    return rc;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (x->body == BODY_UNDECIDED && begin_body(x) != ACTL_OK)
        return 0;
    if (x->body == BODY_DISCARD) {
        x->discarded += n;
        if (x->discarded > DISCARD_MAX) {
            x->discard_full = true;
            return 0;
        }
        return n;
    }
    /* libcurl frames a body by its Content-Length, so this is a second line
     * of defence: bytes past what was announced are never written. */
    if ((x->clen >= 0 && x->resp_bytes + n > (uint64_t)x->clen) ||
        (x->full_total >= 0 && x->have + n > (uint64_t)x->full_total)) {
        x->abort_rc = actl__err(ACTL_EIO,
                                "cannot download '%s': the server sent more bytes than it "
                                "announced",
                                x->url_q);
        return 0;
    }
    if (x->have + n > x->max) {
        x->abort_rc = actl__err(ACTL_ELIMIT,
                                "cannot download '%s': body larger than the limit of %llu bytes",
                                x->url_q, (unsigned long long)x->max);
        return 0;
    }
    int rc = append_output(x, p, n);
    if (rc) {
        x->abort_rc = rc;
        return 0;
    }
    x->resp_bytes += n;
    x->f->transferred += n;
    return n;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    xfer *x = ud;
    int64_t t = now_ns();
    /* libcurl calls this many times a second; a terminal needs ten at most */
    if (x->last_progress_ns && t - x->last_progress_ns < PROGRESS_INTERVAL_NS)
        return 0;
    x->last_progress_ns = t;
    x->f->progress(x->f->transferred, x->expect_call, x->f->progress_ctx);
    return 0;
}

/* ---- URL syntax --------------------------------------------------------------- */

int actl__url_check(const char *url)
{
    int rc = ACTL_OK;
    char q[ACTL__QUOTE_CAP];
    CURLU *u = NULL;
    if (!url)
        return actl__err(ACTL_EINVAL, "invalid URL: NULL");
    /* A NUL cannot be seen here (the string ends there); callers that build
     * URLs from JSON strings check jansson's length for embedded NULs. */
    size_t len = strnlen(url, URL_MAX + 1);
    actl__quote(url, q, sizeof q);
    if (len == 0)
        return actl__err(ACTL_EINVAL, "invalid URL: empty");
    if (len > URL_MAX)
        return actl__err(ACTL_EINVAL, "invalid URL '%s': longer than %d characters", q,
                         URL_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f)
            return actl__err(ACTL_EINVAL,
                             "invalid URL '%s': %s at offset %zu (spaces, control and "
                             "non-ASCII characters must be percent-encoded)",
                             q, c == ' ' ? "a space" : "a control or non-ASCII character", i);
    }
    const char *sep = strstr(url, "://");
    size_t sl = sep ? (size_t)(sep - url) : 0;
    bool http = (sl == 4 && strncasecmp(url, "http", 4) == 0) ||
                (sl == 5 && strncasecmp(url, "https", 5) == 0);
    bool file = sl == 4 && strncasecmp(url, "file", 4) == 0;
    if (!http && !file)
        return actl__err(ACTL_EINVAL,
                         "unsupported URL '%s': only http://, https:// and file:// are allowed",
                         q);
    const char *auth = sep + 3;
    size_t al = strcspn(auth, "/?#");
    if (http) {
        /* userinfo@host:port; the host may be a bracketed IPv6 literal */
        const char *at = memchr(auth, '@', al);
        const char *host = at ? at + 1 : auth;
        size_t hl = al - (size_t)(host - auth);
        if (hl && host[0] == '[') {
            const char *close = memchr(host, ']', hl);
            hl = close ? (size_t)(close - host) + 1 : 0;
        } else {
            const char *colon = memchr(host, ':', hl);
            if (colon)
                hl = (size_t)(colon - host);
        }
        if (hl == 0)
            return actl__err(ACTL_EINVAL, "invalid URL '%s': no host", q);
    } else {
        if (!(al == 0 || (al == 9 && strncasecmp(auth, "localhost", 9) == 0)))
            return actl__err(ACTL_EINVAL,
                             "invalid URL '%s': a file URL names no host (file:///path)", q);
        if (auth[al] != '/')
            return actl__err(ACTL_EINVAL, "invalid URL '%s': no path", q);
    }
    /* libcurl's own parser has the last word, so that what passes here is
     * what the transfer will accept. */
    if (!(u = curl_url()))
        return actl__oom();
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK)
        rc = actl__err(uc == CURLUE_OUT_OF_MEMORY ? ACTL_ENOMEM : ACTL_EINVAL,
                       "invalid URL '%s': %s", q, curl_url_strerror(uc));
    curl_url_cleanup(u);
    return rc;
}

/* ---- the download ----------------------------------------------------------------- */

typedef enum { STEP_DONE, STEP_FAIL, STEP_RETRY, STEP_RESTART } step;

static void why_range_bad(const xfer *x, char *why, size_t cap)
{
    snprintf(why, cap, "the server answered a range starting at byte %lld instead of %llu",
             (long long)x->cr_first, (unsigned long long)x->have);
}

/* What an attempt that ended with a complete response means. why gets the
 * reason for anything but STEP_DONE, *code the error for STEP_FAIL. */
static step judge_status(xfer *x, long status, char *why, size_t cap, int *code)
{
    actl__fetch *f = x->f;
    *code = ACTL_EIO;
    if (x->is_file || (status >= 200 && status < 300)) {
        /* an empty body never reached on_body */
        if (x->body == BODY_UNDECIDED && begin_body(x) != ACTL_OK) {
            if (x->range_bad) {
                why_range_bad(x, why, cap);
                return STEP_RESTART;
            }
            *code = x->abort_rc;
            return STEP_FAIL;
        }
        if (x->full_total >= 0 && x->have < (uint64_t)x->full_total) {
            /* a 206 for less than the rest: ask again for what is missing */
            snprintf(why, cap, "the server stopped after %llu of %lld bytes", (unsigned long long)x->have,
                     (long long)x->full_total);
            return STEP_RETRY;
        }
        return STEP_DONE;
    }
    if (status == 304) {
        if (f->if_none_match) {
            f->not_modified = 1;
            return STEP_DONE;
        }
        snprintf(why, cap, "unexpected HTTP 304 (no If-None-Match was sent)");
        return STEP_FAIL;
    }
    if (status == 416 && x->have > 0) {
        /* What we hold is the whole file only when the server says so. */
        if (x->cr_total >= 0 && (uint64_t)x->cr_total == x->have) {
            x->full_total = x->cr_total;
            return STEP_DONE;
        }
        snprintf(why, cap, "HTTP 416 for bytes %llu- of a file of %lld bytes",
                 (unsigned long long)x->have, (long long)x->cr_total);
        return STEP_RESTART;
    }
    snprintf(why, cap, "HTTP %ld", status);
    if (status == 429 || status >= 500)
        return STEP_RETRY;
    if (status == 404 || status == 410)
        *code = ACTL_ENOTFOUND;
    return STEP_FAIL;
}

/* What an attempt that libcurl ended with an error means. */
static step judge_curl(xfer *x, CURLcode cc, const char *errbuf, char *why, size_t cap,
                       int *code)
{
    char lq[ACTL__QUOTE_CAP];
    const char *words = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    *code = ACTL_EIO;
    switch (cc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
        if (x->location[0])
            snprintf(why, cap, "refused: redirect to '%s' is not allowed (http and https only)",
                     actl__quote(x->location, lq, sizeof lq));
        else
            snprintf(why, cap, "%s", words);
        return STEP_FAIL;
    case CURLE_TOO_MANY_REDIRECTS:
        snprintf(why, cap, "refused: more than %ld redirects", MAX_REDIRS);
        return STEP_FAIL;
    case CURLE_PARTIAL_FILE:
        if (x->body == BODY_KEEP) {
            if (x->full_total >= 0)
                snprintf(why, cap, "closed after %llu of %lld bytes",
                         (unsigned long long)x->have, (long long)x->full_total);
            else
                snprintf(why, cap, "closed after %llu bytes", (unsigned long long)x->have);
        } else {
            snprintf(why, cap, "%s", words);
        }
        return STEP_RETRY;
    case CURLE_COULDNT_CONNECT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        snprintf(why, cap, "%s", words);
        return STEP_RETRY;
    case CURLE_FILE_COULDNT_READ_FILE:
    case CURLE_REMOTE_FILE_NOT_FOUND:
        *code = ACTL_ENOTFOUND;
        snprintf(why, cap, "%s", words);
        return STEP_FAIL;
    default:
        snprintf(why, cap, "%s", words);
        return STEP_FAIL;
    }
}

static long backoff_ms(int attempt, long base)
{
    long d = base;
    for (int i = 1; i < attempt && d < BACKOFF_MS_CAP; i++)
        d *= 2;
    return d < BACKOFF_MS_CAP ? d : BACKOFF_MS_CAP;
}

/* Options that hold for every attempt; libcurl refuses a protocol list it
 * was built without, hence the checks. */
static CURLcode configure(CURL *c, xfer *x, char *errbuf)
{
    actl__fetch *f = x->f;
    long low_speed_s = env_long("ADAPTERCTL_FETCH_LOW_SPEED_S", LOW_SPEED_S_DEFAULT, 1, 3600);
    CURLcode e = CURLE_OK;
#define SET(opt, val)                                                                    \
    do {                                                                                 \
        if (e == CURLE_OK)                                                               \
            e = curl_easy_setopt(c, opt, val);                                           \
    } while (0)
    SET(CURLOPT_URL, f->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https,file");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 1L);
    SET(CURLOPT_MAXREDIRS, MAX_REDIRS);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    SET(CURLOPT_LOW_SPEED_LIMIT, LOW_SPEED_BYTES);
    SET(CURLOPT_LOW_SPEED_TIME, low_speed_s);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FAILONERROR, 0L);
    SET(CURLOPT_USERAGENT, "adapterctl/" ACTL_VERSION_STRING);
    /* the largest read buffer libcurl allows: fewer callbacks, faster */
    SET(CURLOPT_BUFFERSIZE, CURL_MAX_READ_SIZE);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, x);
    if (f->progress) {
        SET(CURLOPT_NOPROGRESS, 0L);
        SET(CURLOPT_XFERINFOFUNCTION, on_progress);
        SET(CURLOPT_XFERINFODATA, x);
    }
#undef SET
    return e;
}

static int add_header(struct curl_slist **list, const char *name, const char *value)
{
    char line[300];
    snprintf(line, sizeof line, "%s: %s", name, value);
    struct curl_slist *l = curl_slist_append(*list, line);
    if (!l)
        return actl__oom();
    *list = l;
    return ACTL_OK;
}

int actl__fetch_run(actl__fetch *f) { return actl__fetch_run_hooked(f, NULL); }

int actl__fetch_run_hooked(actl__fetch *f, const actl__fetch_hooks *hooks)
{
    int rc = ACTL_OK;
    xfer x;
    CURL *curl = NULL;
    struct curl_slist *hdrs = NULL;
    char q[ACTL__QUOTE_CAP], errbuf[CURL_ERROR_SIZE], why[1200], range[32];
    int attempt = 1, restarts = 0;
    bool no_range = false; /* the next attempt asks for the whole file */

    memset(&x, 0, sizeof x);
    x.fd = -1;
    if (!f)
        return actl__err(ACTL_EINVAL, "fetch: NULL argument");
    f->not_modified = 0;
    f->status = 0;
    f->etag[0] = f->linked_sha256[0] = f->sha256[0] = '\0';
    f->size = f->transferred = 0;
    f->data = NULL;
    if ((rc = actl__url_check(f->url)))
        return rc;
    actl__quote(f->url, q, sizeof q);
    if ((f->if_none_match && !header_safe(f->if_none_match)) ||
        (f->etag_in && !header_safe(f->etag_in)))
        return actl__err(ACTL_EINVAL,
                         "cannot download '%s': invalid ETag (printable ASCII, at most 255 "
                         "characters)",
                         q);
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return actl__err(ACTL_EIO, "cannot initialise libcurl: %s",
                         curl_easy_strerror(curl_init_rc));
    x.f = f;
    x.hooks = hooks;
    x.url_q = q;
    x.max = f->max_size ? f->max_size : ACTL_PULL_DEFAULT_MAX;
    x.is_file = strncasecmp(f->url, "file:", 5) == 0;
    pthread_mutex_init(&x.mu, NULL);
    pthread_cond_init(&x.cv, NULL);
    if ((rc = actl__sha256_new(&x.h)))
        goto out;
    /* A partial file to resume (file:// copies are local and cheap: always
     * whole, so they never need Range). */
    if (f->path && !x.is_file) {
        struct stat st;
        x.fd = open(f->path, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (x.fd < 0 && errno == EISDIR) {
            rc = actl__err(ACTL_EINVAL, "cannot download into '%s': not a regular file",
                           f->path);
            goto out;
        }
        if (x.fd < 0 && errno != ENOENT) {
            rc = actl__err(ACTL_EIO, "cannot open '%s': %s", f->path, strerror(errno));
            goto out;
        }
        if (x.fd >= 0) {
            if (fstat(x.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
                rc = actl__err(ACTL_EINVAL, "cannot download into '%s': not a regular file",
                               f->path);
                goto out;
            }
            x.have = x.disk = (uint64_t)st.st_size;
        }
        if (f->etag_in)
            snprintf(x.partial_etag, sizeof x.partial_etag, "%s", f->etag_in);
    }
    if (!(curl = curl_easy_init())) {
        rc = actl__err(ACTL_EIO, "cannot download '%s': cannot start a libcurl handle", q);
        goto out;
    }
    x.curl = curl;
    errbuf[0] = '\0';
    CURLcode e = configure(curl, &x, errbuf);
    if (e != CURLE_OK) {
        rc = actl__err(ACTL_EIO, "cannot download '%s': libcurl refused an option: %s", q,
                       curl_easy_strerror(e));
        goto out;
    }
    long base_ms = env_long("ADAPTERCTL_FETCH_BACKOFF_MS", BACKOFF_MS_DEFAULT, 0, 60000);

    for (;;) {
        int code = ACTL_EIO;
        step s;
        new_response(&x, 0);
        x.abort_rc = 0;
        x.range_bad = x.discard_full = false;
        errbuf[0] = '\0';
        curl_slist_free_all(hdrs);
        hdrs = NULL;
        bool ranged = !x.is_file && !no_range && x.have > 0;
        no_range = false;
        if (f->if_none_match && (rc = add_header(&hdrs, "If-None-Match", f->if_none_match)))
            goto out;
        /* If-Range takes a strong validator only (RFC 9110 13.1.5); without
         * one the range is asked for unconditionally and the caller's
         * digest check catches a file that changed. */
        if (ranged && x.partial_etag[0] == '"' &&
            (rc = add_header(&hdrs, "If-Range", x.partial_etag)))
            goto out;
        snprintf(range, sizeof range, "%llu-", (unsigned long long)x.have);
        /* CURLOPT_RANGE rather than CURLOPT_RESUME_FROM_LARGE: with the
         * latter libcurl itself fails a 200 answer (CURLE_RANGE_ERROR) or
         * takes a 200 of the same size as "already downloaded", where we
         * want to restart from zero. */
        if (curl_easy_setopt(curl, CURLOPT_RANGE, ranged ? range : NULL) != CURLE_OK ||
            curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs) != CURLE_OK) {
            rc = actl__oom(); /* both only copy or keep a pointer */
            goto out;
        }

        CURLcode cc = curl_easy_perform(curl);

        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        f->status = status;
        /* What this attempt received is in the file before anything else
         * happens: the next attempt continues it, a caller resumes it. */
        int frc = x.wlen ? flush_output(&x) : ACTL_OK;
        if (x.abort_rc) {
            rc = x.abort_rc;
            goto out;
        }
        if (frc) {
            rc = frc;
            goto out;
        }
        if (x.range_bad) {
            why_range_bad(&x, why, sizeof why);
            s = STEP_RESTART;
        } else if (cc == CURLE_OK || x.discard_full) {
            s = judge_status(&x, status, why, sizeof why, &code);
        } else {
            s = judge_curl(&x, cc, errbuf, why, sizeof why, &code);
        }
        if (s == STEP_DONE)
            break;
        if (s == STEP_FAIL && x.abort_rc) {
            rc = x.abort_rc;
            goto out;
        }
        if (s == STEP_FAIL || (s == STEP_RESTART && restarts > 0)) {
            rc = actl__err(code, "cannot download '%s': %s", q, why);
            goto out;
        }
        if (s == STEP_RESTART) {
            /* once, at once, without Range: the server and what we hold disagree */
            restarts++;
            no_range = true;
            continue;
        }
        if (attempt >= ACTL_FETCH_ATTEMPTS) {
            rc = actl__err(ACTL_EIO, "cannot download '%s': %s (%d attempts)", q, why, attempt);
            goto out;
        }
        sleep_ms(x.retry_after_s >= 0 ? x.retry_after_s * 1000 : backoff_ms(attempt, base_ms));
        attempt++;
    }

    snprintf(f->etag, sizeof f->etag, "%s", x.etag);
    if (!f->not_modified)
        tell_growth(&x, true);
    if (!f->not_modified) {
        unsigned char d[32];
        if ((rc = hasher_stop(&x, HASH_FINISH)) || (rc = hash_sync(&x)))
            goto out;
        rc = actl__sha256_final(x.h, d);
        x.h = NULL;
        if (rc)
            goto out;
        actl__hex(d, 32, f->sha256);
        f->size = x.have;
        if (!f->path) {
            if (!x.mem && !(x.mem = malloc(1))) {
                rc = actl__oom();
                goto out;
            }
            x.mem[x.have] = '\0';
            f->data = x.mem;
            x.mem = NULL;
        }
    }
    if (f->progress)
        f->progress(f->transferred, f->transferred, f->progress_ctx);
out:
    hasher_stop(&x, HASH_ABANDON);
    pthread_cond_destroy(&x.cv);
    pthread_mutex_destroy(&x.mu);
    /* A body over the limit is not worth resuming: drop what was kept. */
    if (rc == ACTL_ELIMIT && x.fd >= 0 && ftruncate(x.fd, 0) != 0)
        rc = actl__err_wrap(rc, "cannot truncate '%s': %s", f->path, strerror(errno));
    memcpy(f->linked_sha256, x.linked, sizeof f->linked_sha256);
    if (rc) /* for the next call's etag_in */
        snprintf(f->etag, sizeof f->etag, "%s", x.partial_etag);
    curl_easy_cleanup(curl);
    curl_slist_free_all(hdrs);
    if (x.fd >= 0)
        close(x.fd);
    actl__sha256_free(x.h);
    free(x.mem);
    free(x.wbuf);
    return rc;
}
