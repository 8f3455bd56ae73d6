/*
 * internal.h: what the lib/ sources share and nobody else sees (tests may include it
 * to reach internals). Not installed.
 */
#ifndef ACTL_INTERNAL_H
#define ACTL_INTERNAL_H

#include "adapterctl.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#if defined(__GNUC__)
#define ACTL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ACTL_PRINTF(a, b)
#endif

/* ---- error.c ---------------------------------------------------------- */

/* Sets the calling thread's message and returns code, so that failures read
 * `return actl__err(ACTL_EFORMAT, "'%s': ...", path);`. */
int actl__err(int code, const char *fmt, ...) ACTL_PRINTF(2, 3);
/* Prefixes the current message with "prefix: " and returns code. */
int actl__err_wrap(int code, const char *fmt, ...) ACTL_PRINTF(2, 3);
/* ACTL_ENOMEM with a fixed message. */
int actl__oom(void);
/* Room for element n of an array p of *cap elements of elem bytes: p itself
 * while n < *cap, else p grown to twice *cap (`first` when empty) with *cap
 * updated; NULL (p and *cap untouched) when that cannot be allocated. */
void *actl__grow(void *p, size_t n, size_t *cap, size_t elem, size_t first);
/* Clears the message (used before lookups that may fail silently). */
void actl__err_clear(void);

/* ---- tensor.c --------------------------------------------------------- */

struct actl_tensor {
    char *name;
    actl_dtype dtype;
    int ndim;
    int64_t shape[ACTL_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    void *data;   /* owned when `owned`, else a view into someone else's memory */
    bool owned;
};

/* numel and byte size of a shape, with overflow checks: ACTL_ELIMIT when
 * numel * size does not fit in int64 / size_t. Dims must be >= 0. */
int actl__shape_size(actl_dtype dt, int ndim, const int64_t *shape, int64_t *numel,
                     size_t *nbytes);
/* A view tensor over `data` (not copied, not freed); name copied. */
int actl__tensor_view(const char *name, actl_dtype dt, int ndim, const int64_t *shape,
                      const void *data, actl_tensor **out);
/* "[3000, 16]" into buf. */
const char *actl__shape_str(const actl_tensor *t, char *buf, size_t n);
int actl__is_float(actl_dtype dt);

/* ---- file.c ----------------------------------------------------------- */

/* Reads a whole regular file (at most `limit` bytes, else ACTL_ELIMIT) into
 * a NUL-terminated malloc'd buffer. */
int actl__read_file(const char *path, size_t limit, char **data, size_t *len);
/* Opens a regular file read-only (refusing FIFOs, devices and directories
 * without blocking on them); *size gets its size. */
int actl__open_regular(const char *path, int *fd, uint64_t *size);
/* "path.tmp.<16 random hex>", malloc'd: a temporary name beside path. */
char *actl__temp_name(const char *path);
/* Atomic write: a temporary file beside path, the writer callback, fsync,
 * rename, fsync of the directory. On failure the temporary is removed and
 * path is untouched. */
typedef int (*actl__writer_fn)(FILE *f, const char *tmp_path, void *ctx);
int actl__write_atomic(const char *path, actl__writer_fn fn, void *ctx);
/* Writes all of buf or fails with ACTL_EIO naming path. */
int actl__fwrite_all(FILE *f, const void *buf, size_t n, const char *path);
/* "dir/name" in a malloc'd string (NULL on OOM). */
char *actl__path_join(const char *dir, const char *name);
/* fsync a directory so a rename inside it is durable. */
int actl__fsync_dir(const char *dir);
bool actl__is_dir(const char *path);
bool actl__exists(const char *path);
/* Removes path and, for a directory, everything below it (best effort). */
void actl__remove_tree(const char *path);
/* A directory written whole or not at all. actl__dir_stage checks that dir
 * is absent or an empty directory (ACTL_EEXIST) and makes the temporary
 * sibling d->tmp ("dir.tmp.XXXXXX", readable as umask allows); the caller
 * fills it; actl__dir_commit renames it onto d->target and fsyncs the
 * parent; actl__dir_stage_free removes the temporary tree unless committed
 * and frees d (harmless on a zeroed or failed d). */
typedef struct actl__staged_dir {
    char *target; /* dir without trailing slashes */
    char *tmp;
    bool committed;
} actl__staged_dir;
int actl__dir_stage(const char *dir, actl__staged_dir *d);
int actl__dir_commit(actl__staged_dir *d);
void actl__dir_stage_free(actl__staged_dir *d);
/* malloc'd printf. */
char *actl__strdup_printf(const char *fmt, ...) ACTL_PRINTF(1, 2);

/* ---- json.c ----------------------------------------------------------- */

/* Parses JSON text strictly (valid UTF-8, no duplicate keys, one value,
 * nesting at most ACTL_JSON_MAX_DEPTH). `what` names the source in messages.
 * Returns ACTL_EFORMAT with jansson's words and position. */
#define ACTL_JSON_MAX_DEPTH 64
int actl__json_parse(const char *text, size_t len, const char *what, json_t **out);
/* Serializes like Python's json.dumps(obj, indent=2, sort_keys=True) as PEFT
 * writes adapter_config.json: sorted keys, 2-space indent, ", " -> ",\n",
 * ": ", ASCII-only with \uXXXX escapes, floats in shortest round-trip form
 * ("16.0", "0.05", "1e-05"). indent < 0 gives compact output with sorted
 * keys (separators "," and ":"). malloc'd; NULL on OOM. */
char *actl__json_dump(const json_t *v, int indent);
/* The same, except that objects found under a key listed in keep_order
 * (NULL-terminated) keep their insertion order: PEFT's rank_pattern and
 * alpha_pattern match first key first, so sorting them would change which
 * pattern wins. */
char *actl__json_dump_keep(const json_t *v, int indent, const char *const *keep_order);

/* ---- adapter.c -------------------------------------------------------- */

/* PEFT keys start with this; what follows up to a kind's suffix is the base
 * module name ("model.layers.0.self_attn.q_proj"). */
#define ACTL_PEFT_PREFIX "base_model.model."

/* One adapted module. The tensor pointers are lent from the adapter's tensor
 * list (NULL when the module has no such tensor) and stay valid until the
 * adapter is freed. Shapes below use the module's in/out widths. */
typedef struct actl__module {
    actl_module_info info; /* what actl_adapter_module reports; info.name is owned here */
    /* LoRA / DoRA, ACTL_KIND_LORA (DESIGN.md 3.1) */
    const actl_tensor *lora_a;    /* A [r, in]; embedding: lora_embedding_A [r, vocab] */
    const actl_tensor *lora_b;    /* B [out, r]; embedding: lora_embedding_B [dim, r] */
    const actl_tensor *lora_bias; /* lora_B.bias [out] (lora_bias) */
    const actl_tensor *magnitude; /* lora_magnitude_vector m [out] (use_dora) */
    /* RoAd, ACTL_KIND_ROAD (DESIGN.md 3.2): 1-D, [out/2] road_1, [out] road_2,
     * [2*out] road_4 */
    const actl_tensor *road_theta;
    const actl_tensor *road_alpha;
    /* Bottleneck, ACTL_KIND_BOTTLENECK (DESIGN.md 3.3) */
    const actl_tensor *down;    /* D [b, n] */
    const actl_tensor *up;      /* U [m, b] */
    const actl_tensor *scaling; /* adapter_scaling [1] when learnable_scalar */
    /* MoS, ACTL_KIND_MOS (DESIGN.md 3.4) */
    const actl_tensor *index_a; /* mos_index_A, I32 [r*l] */
    const actl_tensor *index_b; /* mos_index_B, I32 [r*l] */
    const actl_tensor *pool_a;  /* mos.<type>.pool_A [N_A, in/l], shared by the type */
    const actl_tensor *pool_b;  /* mos.<type>.pool_B [N_B, out/l] */
} actl__module;

struct actl_adapter {
    actl_adapter_info info;   /* strings in it point into config */
    json_t *config;           /* the whole adapter_config.json, unknown keys kept */
    char *config_compact;     /* actl__json_dump_keep(config, -1, actl__peft_keep_order) */
    char *origin;             /* names the source in messages (a directory or the caller's word) */
    const actl_tensor **tensors; /* n_tensors, sorted by key */
    size_t n_tensors;
    bool owns_tensors;        /* true: tensors were allocated for this adapter; false:
                                 they are views owned by st */
    actl_st *st;              /* the mapped adapter_model.safetensors, or NULL */
    actl__module *modules;    /* n_modules, sorted by name */
    size_t n_modules;
};

/* Builds an adapter from a parsed config and tensors named by PEFT keys,
 * validating as actl_adapter_load describes. Takes ownership of config,
 * the malloc'd `tensors` array, the tensors themselves when owns_tensors,
 * and st (which the tensors may view), on success and on failure alike.
 * origin is kept to name the adapter in later messages; cfg_what and
 * st_what name the config and the tensors' file in this call's. peft.c */
int actl__adapter_build(json_t *config, const actl_tensor **tensors, size_t n,
                        bool owns_tensors, actl_st *st, const char *origin,
                        const char *cfg_what, const char *st_what, actl_adapter **out);
/* actl__adapter_build over every tensor of an opened safetensors file (views,
 * zero copy). Takes config and st on success and failure alike. peft.c */
int actl__adapter_from_st(json_t *config, actl_st *st, const char *origin,
                          const char *cfg_what, const char *st_what, actl_adapter **out);
/* The module named `name`, or NULL. */
const actl__module *actl__adapter_module_find(const actl_adapter *a, const char *name);
/* MoS: gathers one module's dense A [r, in] and B [out, r] (DESIGN.md 3.4) in
 * the pools' dtype, under the given names. The caller frees both. */
int actl__mos_gather(const actl_adapter *a, const actl__module *m, const char *name_a,
                     const char *name_b, actl_tensor **A, actl_tensor **B);
/* Reads element i of a floating-point tensor as a double. */
double actl__tensor_get_f64(const actl_tensor *t, size_t i);

/* ---- hash.c ----------------------------------------------------------- */

/* SHA-256 (OpenSSL libcrypto), one-shot and streaming. Hex is lowercase.
 * Failures are ACTL_ENOMEM or ACTL_EIO (libcrypto refused). */
typedef struct actl__sha256 actl__sha256;
int actl__sha256_new(actl__sha256 **out);
int actl__sha256_update(actl__sha256 *h, const void *p, size_t n);
/* Writes 32 bytes to digest and frees h (h may be NULL after a failed new). */
int actl__sha256_final(actl__sha256 *h, unsigned char digest[32]);
void actl__sha256_free(actl__sha256 *h);
int actl__sha256_hex(const void *p, size_t n, char hex[65]);
void actl__hex(const unsigned char *bytes, size_t n, char *hex /* 2n+1 */);
/* XXH64 (the public xxHash spec), the codec frames' checksum. p may be NULL
 * when n is 0. */
uint64_t actl__xxh64(const void *p, size_t n, uint64_t seed);

/* ---- codec.c ---------------------------------------------------------- */

/* One tensor's bytes as a self-checking frame (DESIGN.md 6): the bytes are
 * split into planes (BF16: exponent byte, then sign+mantissa byte; F16: high
 * bytes, then low; F32: exponent, sign+high mantissa, mid, low; others: one
 * plane), each plane zstd-compressed or stored raw when that does not shrink
 * it. The frame records the dtype, the raw size and the XXH64 of the raw
 * bytes. Layout in codec.c. Thread-safe: each thread keeps its own zstd
 * contexts (freed when the thread exits). */
#define ACTL_CODEC_LEVEL 3
/* Upper bound of a frame's size for n raw bytes: a header of at most 120
 * bytes + n (no plane is stored larger than raw). */
size_t actl__codec_bound(actl_dtype dt, size_t n);
/* Compresses n raw bytes of dtype dt (n a multiple of the element size) into
 * dst (cap >= actl__codec_bound); *written gets the frame's size. level is a
 * zstd level for the mantissa and single planes; exponent planes always use
 * an entropy-only setting (codec.c says why). Deterministic for given
 * inputs, level and libzstd version. ACTL_EINVAL for bad arguments. */
int actl__codec_compress(actl_dtype dt, const void *raw, size_t n, int level, void *dst,
                         size_t cap, size_t *written);
/* Decompresses a frame of `len` bytes into dst, which holds exactly raw_size
 * bytes. Every header field is checked before dst is touched or anything is
 * allocated: ACTL_ECORRUPT for a frame whose dtype or raw size differs from
 * the caller's, whose planes claim more than raw_size (zstd content sizes
 * included), that is cut short or has trailing bytes, or whose checksum does
 * not match after decompression. Never writes past dst + raw_size; dst is
 * unspecified after a failure. Messages start with `what` (e.g. "tensor 'x'";
 * NULL: "codec frame"). */
int actl__codec_decompress(const void *frame, size_t len, actl_dtype dt, void *dst,
                           size_t raw_size, const char *what);

/* ---- pack.c ----------------------------------------------------------- */

/* The pack (DESIGN.md 4.4): one immutable, self-describing file per adapter
 * version: "ACTLPACK", u32 format version, u32 low half of the XXH64 of the
 * header bytes, u64 header length H, H bytes of compact sorted JSON
 * {"config": {...}, "format": 1, "tensors": [{"codec", "dtype", "name",
 * "offset", "raw", "sha256", "shape", "stored"}...]} padded with spaces to a
 * multiple of 8, then the frames (offsets from the end of the header), back
 * to back in name order. Layout in pack.c. Same adapter in, same bytes out
 * (for one libzstd version). */
#define ACTL_PACK_MAGIC "ACTLPACK"
#define ACTL_PACK_FORMAT 1
/* Writes a's pack as objects_dir/<2 hex>/<64 hex>, built in memory: into a
 * temporary file objects_dir/tmp/pack.XXXXXX (directories made as needed),
 * fsynced, renamed, and the fanout directory fsynced. When a file of that
 * name holds those bytes (its SHA-256 is checked), nothing is written and it
 * is shared; a file of that name with other bytes (damaged) is replaced. hex receives the digest, *stored the pack's size, *raw the
 * tensors' raw size (both may be NULL). */
int actl__pack_write(const actl_adapter *a, const char *objects_dir, char hex[65],
                     uint64_t *stored, uint64_t *raw);
/* objects_dir/<2 hex>/<64 hex>, malloc'd. */
char *actl__pack_path(const char *objects_dir, const char *hex);
/* Reads a pack into a new adapter (tensors owned by it), checking every
 * tensor's SHA-256 and, when expect_hex is not NULL, the whole file's digest.
 * ACTL_ECORRUPT naming the pack and the tensor on a mismatch (and for a
 * header whose checksum fails); ACTL_EFORMAT for a malformed pack;
 * ACTL_ENOTFOUND when the file is absent; ACTL_EINVAL for a malformed
 * expect_hex. */
int actl__pack_load(const char *path, const char *expect_hex, actl_adapter **out);
/* Verifies a pack without building the adapter: file digest, header, every
 * frame and tensor hash, going on past a damaged tensor. Each problem (an
 * absent or unreadable file included) goes to fn (may be NULL) with a message
 * naming the pack and the tensor; *problems gets their count. Returns ACTL_OK
 * when the check ran, ACTL_ENOMEM / ACTL_EINVAL when it could not. */
int actl__pack_verify(const char *path, const char *expect_hex, actl_problem_fn fn, void *ctx,
                      size_t *problems);

/* ---- catalog.c / store.c (the store; owner: the store library) -------- */

/* One embedded migration, schema/NNNN_name.sql: number N (1, 2, 3... in
 * order), "NNNN_name", the file's text. Generated by the Makefile into
 * $(BUILD)/gen/schema.c. */
typedef struct actl__migration {
    int number;
    const char *name;
    const char *sql;
} actl__migration;
extern const actl__migration actl__migrations[];
extern const size_t actl__migration_count;

struct sqlite3;
struct sqlite3_stmt;

struct actl_store {
    char *dir;       /* as given or resolved */
    char *db_path;   /* dir/catalog.db */
    char *objects;   /* dir/objects */
    char *lock_path; /* dir/gc.lock: LOCK_SH by adds, LOCK_EX by gc */
    struct sqlite3 *db;
    int schema_version;
};

/* Applies the migrations above the catalogue's user_version, from `list`
 * (n entries), in one BEGIN IMMEDIATE transaction, re-reading user_version
 * inside it. ACTL_EUNSUPPORTED when the catalogue is newer than list's last
 * entry. actl_store_open calls it with the embedded list; tests pass others. */
int actl__store_migrate(actl_store *s, const actl__migration *list, size_t n);

/* SQL helpers; each sets a message naming the catalogue and `what` on failure. */
int actl__db_err(const actl_store *s, int sqlite_rc, const char *what);
int actl__db_exec(actl_store *s, const char *sql, const char *what);
int actl__db_prepare(actl_store *s, const char *sql, struct sqlite3_stmt **st);
/* BEGIN IMMEDIATE, retried on SQLITE_BUSY for up to ~10 s beyond the busy
 * handler (WAL returns BUSY without calling it in some cases). */
int actl__db_begin(actl_store *s);
int actl__db_commit(actl_store *s);
/* Rolls back if a transaction is open; keeps the current error message. */
void actl__db_rollback(actl_store *s);

/* s quoted for a message: printable ASCII as is, anything else as \n, \t or
 * \xNN, cut with "..." beyond ~100 characters. Returns buf. */
const char *actl__quote(const char *s, char *buf, size_t cap);
#define ACTL__QUOTE_CAP 512

/* Splits and checks one "KEY=VALUE" tag. key must hold 65 bytes; *value
 * points into kv. */
int actl__tag_parse(const char *kv, char key[65], const char **value);
int actl__tag_key_check(const char *key);
/* Parses a NULL-terminated "KEY=VALUE" list (NULL: none) into n keys, copied
 * into one malloc'd block of n * 65 bytes (key i at keys + 65 i), and n
 * values lent from the list (a malloc'd array). Refuses a key given twice. */
int actl__tags_parse(const char *const *kv, char **keys, const char ***values, size_t *n);
/* Checks an optional free-text field: valid UTF-8, at most max bytes, no
 * control characters (newline and tab allowed when multiline). */
int actl__text_check(const char *what, const char *s, size_t max, bool multiline);

/* The columns actl__entries_append expects, in this order, from a query over
 * `adapters a`. */
#define ACTL__ENTRY_COLS                                                                 \
    "a.id, a.name, a.version, a.kind, a.base_model, a.rank, a.variant, a.group_size, "   \
    "a.target_modules, a.config, a.raw_bytes, a.stored_bytes, a.pack, a.source, "        \
    "a.description, a.created, a.lineage"
int actl__entries_new(actl_entries **out);
/* Steps st to the end, appending one entry per row, then loads the tags of
 * the appended rows. */
int actl__entries_append(actl_store *s, actl_entries *l, struct sqlite3_stmt *st);

/* ---- adapter.c, peft.c: shared adapter helpers (owner: adapters) -------- */

/* The largest adapter_config.json or config.json read (a config is small; a
 * bigger file is a mistake or an attack). */
#define ACTL_CONFIG_LIMIT (16u << 20)
/* True when s ends with suffix (s equal to suffix included). */
bool actl__ends_with(const char *s, const char *suffix);
/* {"rank_pattern", "alpha_pattern", NULL}: the config keys whose objects keep their
 * order when a config is dumped (actl__json_dump_keep), since PEFT takes the first
 * matching pattern key. Whatever writes an adapter's config passes it (peft.c
 * for adapter_config.json and actl_adapter_config). Defined in peft.c. */
extern const char *const actl__peft_keep_order[];

/* ---- store.c: entry points for pull.c (issue 4) ------------------------ */

/* Adds an adapter whose pack is already a file: pack_path is a verified pack
 * (its SHA-256 is hex) outside objects/, moved into objects/ by rename (or
 * dropped when objects/ already holds hex); pack_path NULL when objects/
 * already holds hex. a is the adapter the pack holds (actl__pack_load), from
 * which the row's facts come, as in actl_store_add; o as in actl_store_add.
 * Takes the gc lock as actl_store_add does. (store.c: a damaged file under
 * hex in objects/ is replaced by pack_path; with pack_path NULL the file in
 * objects/ is hashed: ACTL_ENOTFOUND when a gc took it since it was seen,
 * ACTL_ECORRUPT when damaged.) */
int actl__store_add_pack(actl_store *s, const char *pack_path, const char *hex,
                         const actl_adapter *a, const actl_add_opts *o, actl_entries **out);
/* 1 when objects/ holds a pack file named hex whose packs row exists, else 0. */
int actl__store_has_pack(actl_store *s, const char *hex);
/* <store>/partial: resumable downloads, one file per URL, each held with
 * flock(LOCK_SH) by the pull writing it; gc removes those it can lock
 * exclusively without waiting. */
#define ACTL_PARTIAL_DIR "partial"

/* ---- fetch.c (libcurl; DESIGN.md 7) ------------------------------------ */

/* One download. The caller fills the inputs; actl__fetch_run fills the
 * outputs. Policy, the same for every call: protocols http, https, file;
 * redirects http and https only, at most 5; TLS peer and host verified;
 * connect timeout (30 s) and a low-speed abort (under 1 KiB/s for the
 * window); up to ACTL_FETCH_ATTEMPTS attempts with exponential backoff
 * (doubling, capped at 10 s) on connection failures, bodies cut short, 5xx
 * and 429, honouring Retry-After (seconds or HTTP-date, capped at 30 s)
 * instead when given; every attempt counts, whether it brought bytes or not.
 * A body larger than max_size (announced or actual) is refused. libcurl
 * frames a body by its Content-Length, so bytes a server sends past what it
 * announced are never written. Environment (for tests):
 * ADAPTERCTL_FETCH_BACKOFF_MS sets the first backoff (default 500 ms),
 * ADAPTERCTL_FETCH_LOW_SPEED_S the low-speed window (default 30 s).
 * Thread-safe: concurrent calls on different actl__fetch structs. */
#define ACTL_FETCH_ATTEMPTS 5
typedef struct actl__fetch {
    /* inputs (borrowed for the call) */
    const char *url;
    const char *path;          /* destination file: when it exists, the download resumes from
                                  its size with Range (and If-Range: etag_in when that is a
                                  strong ETag); a 200 answer restarts it from zero, a 416
                                  whose Content-Range says the file has exactly that size
                                  means it is complete. Bytes received before a dropped
                                  connection are kept, and the next attempt (or a later call
                                  with the same path) asks only for the rest. Created only
                                  when a body arrives. file:// URLs are always copied whole.
                                  NULL: into memory (resumed across attempts the same way) */
    uint64_t max_size;         /* 0: ACTL_PULL_DEFAULT_MAX */
    const char *if_none_match; /* ETag to revalidate, or NULL */
    const char *etag_in;       /* ETag the partial file at `path` came from, or NULL (the
                                  range is then asked for without If-Range) */
    actl_progress_fn progress; /* or NULL; (bytes received so far by this call, bytes this
                                  call expects in all or 0), ~10/s and once at the end */
    void *progress_ctx;
    /* outputs, all reset at the start of the call (data included: free it first) */
    int not_modified;          /* 1: the server answered 304: nothing written or created,
                                  sha256 "" and size 0 */
    long status;               /* the final HTTP status: 200, 206, 304, or 416 when the file
                                  at path was already complete; 0 for file:// */
    char etag[256];            /* the final response's ETag as sent (quotes included), ""
                                  if none; after a failure, the ETag the bytes kept at path
                                  came with ("" if unknown), the next call's etag_in */
    char linked_sha256[65];    /* X-Linked-Etag of any response of the redirect chain, quoted
                                  or not, when it is 64 hex (lowercased here); else "" */
    char sha256[65];           /* SHA-256 of the whole file (resumed prefix included) */
    uint64_t size;             /* bytes of the complete file */
    uint64_t transferred;      /* body bytes received over the wire by this call, summed
                                  over its attempts (error pages not counted) */
    char *data;                /* path NULL: the body (malloc'd, NUL-terminated; caller frees);
                                  NULL after a failure or a 304 */
} actl__fetch;
/* Runs the download. Messages start "cannot download '<url>': " and say the
 * problem: "HTTP 404", "HTTP 500 (5 attempts)", curl's words, "refused:
 * redirect to 'ftp://...' is not allowed (http and https only)", "refused:
 * more than 5 redirects", "body of N bytes is larger than the limit of M
 * bytes", "body larger than the limit of M bytes", "closed after N of M
 * bytes (5 attempts)". ACTL_ENOTFOUND for HTTP 404 and 410 and an absent
 * file:// file (at once, no retry); ACTL_EIO for other network and server
 * failures (4xx other than 429 at once, the rest after the retries);
 * ACTL_ELIMIT for the size limit (the file at path is then truncated to
 * zero: nothing in it is worth resuming); ACTL_EINVAL for a URL refused by
 * actl__url_check, an ETag argument that is not printable ASCII of at most
 * 255 characters, or a path that is not a regular file. After any other
 * failure the file at path keeps what was received, for a later call to
 * resume; a caller whose digest check fails must remove it, or the next
 * call would build on the bad prefix. */
int actl__fetch_run(actl__fetch *f);
/* Checks a URL before any request, naming it (quoted) in the message:
 * ACTL_EINVAL unless the scheme is http, https or file (any case), it is at
 * most 8 KiB of printable ASCII without spaces (control characters,
 * spaces and non-ASCII must be percent-encoded), http(s) names a host, file
 * names none (or localhost) and has a path, and libcurl's parser accepts
 * it. A NUL cannot be seen here: callers building a URL from a JSON string
 * check its length for embedded NULs. */
int actl__url_check(const char *url);

/* ---- codec.c, pack.c: shared by the store's files (owner: the store library) ---- */

/* Little-endian fixed-width fields of codec frames and pack prefixes. codec.c */
void actl__put_le32(unsigned char *p, uint32_t v);
void actl__put_le64(unsigned char *p, uint64_t v);
uint32_t actl__get_le32(const unsigned char *p);
uint64_t actl__get_le64(const unsigned char *p);
/* True when s is exactly n lowercase hex digits followed by its NUL. pack.c */
bool actl__is_hex(const char *s, size_t n);

/* One tensor as a pack's header lists it. */
typedef struct actl__pack_tensor {
    const char *name;   /* PEFT key, lent by the index */
    actl_dtype dtype;
    char *shape;        /* the shape as compact JSON, "[16,64]" (owned by the index) */
    uint64_t raw;       /* bytes uncompressed */
    uint64_t stored;    /* bytes of its codec frame */
    const char *sha256; /* of the raw bytes, 64 lowercase hex, lent */
} actl__pack_tensor;
/* What a pack's header says, every field checked as actl__pack_load checks
 * it (the frames are not read). */
typedef struct actl__pack_index {
    json_t *header;        /* owns the strings lent above */
    json_t *config;        /* the adapter's config, lent by header */
    actl__pack_tensor *tensors; /* n, in name order */
    size_t n;
    uint64_t size;         /* the file's bytes */
    uint64_t raw;          /* sum of tensors[i].raw */
} actl__pack_index;
/* Reads the index of the pack at path; when expect_hex is not NULL, the whole
 * file's SHA-256 is checked first (ACTL_ECORRUPT). Errors as actl__pack_load.
 * On failure *out is empty (actl__pack_index_free on it is harmless). */
int actl__pack_index_read(const char *path, const char *expect_hex, actl__pack_index *out);
void actl__pack_index_free(actl__pack_index *x);
/* Puts the pack file src, whose SHA-256 is hex, at objects_dir/<2>/<hex> by
 * rename (directories made as needed, the fanout directory fsynced). When a
 * file with those exact bytes is already there, src is removed instead; a
 * damaged or different file there is replaced. src must be on objects_dir's
 * file system. */
int actl__pack_install(const char *objects_dir, const char *src, const char *hex);
/* actl__pack_verify, and when it found no problem and out is not NULL, the
 * adapter the pack holds (as actl__pack_load gives it) in *out; *out is NULL
 * otherwise. One pass over the frames serves both. */
int actl__pack_verify_load(const char *path, const char *expect_hex, actl_problem_fn fn,
                           void *ctx, size_t *problems, actl_adapter **out);

/* ---- road.c: RoAd pair arithmetic (DESIGN.md 3.2), shared by merge, compose
 * and the decoder. Coefficients are double vectors c[out], s[out]; pairs are
 * half-group: p = k*g + j (j < g/2) with q = p + g/2. ---------------------- */

/* The output width a RoAd module's tensors imply (road_1: 2*len, road_2:
 * len, road_4: len/2), or 0 for a malformed module. */
int64_t actl__road_out(const actl_adapter *a, const actl__module *m);
/* alpha^w as a weight applies it: alpha itself at w = 1, 1 at w = 0, else
 * pow, which needs alpha > 0 (ACTL_EINVAL naming who and module). */
int actl__road_alpha_pow(double alpha, double w, const char *who, const char *module,
                         double *out);
/* Coefficients of module m under weight w (theta*w, alpha^w; w = 1 is the
 * adapter, w = 0 the identity) into c[out], s[out], out = actl__road_out.
 * ACTL_ESHAPE (naming the adapter and module) when the group size does not
 * divide out or is odd; ACTL_EINVAL when w makes a coefficient infinite or
 * NaN (theta w or alpha^w overflowing). */
int actl__road_coeffs(const actl_adapter *a, const actl__module *m, double w, double *c,
                      double *s);
/* Rotates the rows of x [out, cols] (fp32, row-major) in place:
 * x'[p] = c[p] x[p] - s[p] x[q],  x'[q] = s[q] x[p] + c[q] x[q], each
 * computed in double and rounded once. cols = 1 rotates a bias vector. */
void actl__road_rotate_rows(const double *c, const double *s, int64_t out, int group,
                            float *x, int64_t cols);
/* Replaces c, s by the inverse pairs' coefficients. ACTL_EINVAL naming
 * `what` and the pair when |det| = |c[p]c[q] + s[p]s[q]| < 1e-6 (a
 * near-singular pair); c and s are unchanged then. */
int actl__road_invert(double *c, double *s, int64_t out, int group, const char *what);
/* A applied first, then B (same group), into c, s (which may alias A or B). */
void actl__road_compose(const double *cA, const double *sA, const double *cB,
                        const double *sB, int64_t out, int group, double *c, double *s);

/* Test hook, NULL in normal use (nothing sets it outside tests): when set,
 * store.c calls it at the moments where a concurrent rm or gc matters, with
 * `point` naming the moment:
 *   "add"    an add's pack is in objects/, its rows not yet written (gc lock held)
 *   "verify" verify holds the gc lock and its read snapshot
 *   "load"   a load has found the row and is about to read its pack
 * tests/test_store.c holds an operation there while another process runs rm
 * or gc, to pin what each may do. Not to be changed while store calls run. */
extern void (*actl__store_test_pause)(const char *point);

/* ---- store.c: stacks and their members (issue 5; owner: the store library) ---- */

/* "name@version" with room for a 128-character name and any version. */
#define ACTL__LABEL_CAP 153

/* One member of a stack as its stack_members row records it. */
typedef struct actl__stack_member {
    int position;    /* 1 applies first */
    char pack[65];   /* the member's pack digest */
    double weight;
    char *ref;       /* "name@version" or the directory it came from (owned) */
    actl_kind kind;  /* 0 when the row holds no known kind (verify reports it) */
} actl__stack_member;
void actl__stack_members_free(actl__stack_member *m, size_t n);
/* The members of the stack ref (NAME[@V]) in order, read in one snapshot with
 * the row; label gets the stack's "name@version". ACTL_ENOTFOUND when there is
 * no such entry, ACTL_EINVAL when it is not a stack. */
int actl__store_stack_members(actl_store *s, const char *ref, char label[ACTL__LABEL_CAP],
                              actl__stack_member **out, size_t *n);
/* Loads the pack hex as actl_store_load loads an entry's (every digest
 * checked). `what` names it in messages as it should read, quotes included
 * ("'mix@1' member 2 'math@3'"). ACTL_ENOTFOUND "... was removed while being
 * read" when the file is gone and no row names the pack any more. */
int actl__store_load_pack(actl_store *s, const char *hex, const char *what, actl_adapter **out);

/* ==== pull.c, fetch.c, pack.c: streaming a download into the store (issue 4,
 * pull throughput; owner: pull) ========================================== */

/* -- pack.c -- */

/* Threads pack.c uses for one pack's tensors (compressing, decoding) and to
 * hash a pack while it is written: 0 (the default) means the online CPUs, at
 * most 8, and 1 below 4 MiB of work. The bytes written do not depend on it.
 * Tests set it; not to be changed while pack calls run. */
extern int actl__pack_threads;

/* One tensor's codec frame (actl__codec_compress at ACTL_CODEC_LEVEL) and the
 * SHA-256 of its raw bytes: what a pack stores for it, made ahead of the pack
 * (pull.c makes them while the file downloads). */
typedef struct actl__pack_frame {
    unsigned char *data; /* malloc'd; NULL: none */
    size_t len;
    char sha256[65];
} actl__pack_frame;
/* Makes the frame of n raw bytes of dtype dt into *out (the caller releases
 * it). Thread-safe. */
int actl__pack_frame_make(actl_dtype dt, const void *raw, size_t n, actl__pack_frame *out);
/* Frees f's data and empties it; f may be NULL. */
void actl__pack_frame_release(actl__pack_frame *f);
/* Writes a's pack, the bytes actl__pack_write would store, into fd (an empty
 * regular file open for writing; path names it in messages) and fsyncs it.
 * ahead is NULL or holds one entry per tensor of a, in actl_adapter_tensor
 * order: an entry with data is that tensor's frame, which the caller vouches
 * was made from exactly the tensor's bytes, used instead of compressing
 * again (lent for the call). hex gets the digest, *stored the pack's size
 * and *raw the tensors' (both may be NULL). The caller installs the file
 * (actl__store_add_pack). */
int actl__pack_write_fd(const actl_adapter *a, const actl__pack_frame *ahead, int fd,
                        const char *path, char hex[65], uint64_t *stored, uint64_t *raw);

/* A pack's prefix and header, read before the rest of the file (pull.c reads
 * them while the pack downloads, then decodes each frame once its bytes are
 * there). */
typedef struct actl__pack_head actl__pack_head;
/* The bytes of the fixed prefix of a pack. */
#define ACTL_PACK_PREFIX_LEN 24
/* The bytes of prefix and header of a pack that starts with `prefix`
 * (ACTL_PACK_PREFIX_LEN bytes); 0 when they are not a prefix this reader
 * accepts. */
uint64_t actl__pack_head_size(const unsigned char *prefix);
/* Parses the prefix and header in the first len bytes (at least
 * actl__pack_head_size) of the pack at path, which is size bytes in all, with
 * every check actl__pack_load makes of them; errors as actl__pack_load,
 * ACTL_EINVAL when the bytes do not hold the whole header. bytes is read
 * during the call only; path is copied. */
int actl__pack_head_parse(const void *bytes, size_t len, uint64_t size, const char *path,
                          actl__pack_head **out);
size_t actl__pack_head_count(const actl__pack_head *h);
/* Where tensor i's frame is: bytes [*offset, *offset + *len) of the file. */
void actl__pack_head_frame(const actl__pack_head *h, size_t i, uint64_t *offset,
                           uint64_t *len);
/* Decodes tensor i from its frame (the bytes actl__pack_head_frame names)
 * into a new owned tensor, checking the frame's checksum and the tensor's
 * SHA-256; errors as actl__pack_load. Thread-safe for calls on one head. */
int actl__pack_head_decode(const actl__pack_head *h, size_t i, const void *frame,
                           actl_tensor **out);
/* h may be NULL. */
void actl__pack_head_free(actl__pack_head *h);
/* actl__pack_verify_load of the complete file at path without its digest
 * (the caller has checked it), where ahead[i] (actl__pack_head_count(h)
 * entries, NULL where none) is tensor i already decoded from h, which was
 * parsed from this file's first bytes: it stands for tensor i when h's entry
 * i is the file's, and is decoded afresh otherwise. Every ahead[i] is taken
 * (the array's entries set to NULL). h and ahead may be NULL. */
int actl__pack_verify_load_ahead(const char *path, const actl__pack_head *h,
                                 actl_tensor **ahead, actl_problem_fn fn, void *ctx,
                                 size_t *problems, actl_adapter **out);

/* -- fetch.c -- */

/* What a caller hears while actl__fetch_run_hooked downloads into f->path,
 * on the transfer's thread; every member may be NULL or 0. */
typedef struct actl__fetch_hooks {
    /* A response's body was accepted and its first byte is about to be
     * written: resumed is 1 when it continues the bytes held, 0 when it
     * replaces them (the file was just truncated to zero). etag is the ETag
     * that describes every byte the file will hold: the response's, or ""
     * when it has none or continues bytes that came with another. A non-zero
     * return fails the download with that code (message set). */
    int (*body)(void *ctx, const char *etag, int resumed);
    /* The file's first `ready` bytes are written and stay as they are until
     * the next body(..., 0). Called when a resumed body is accepted, after
     * each ACTL_FETCH_GROW_STEP bytes or so, and when the download ends well
     * (with the whole size). */
    void (*grow)(void *ctx, uint64_t ready);
    void *ctx;
    /* 1: ask the kernel to start writing the file back to disk as it arrives
     * (sync_file_range), for a file the caller will fsync and keep, so that
     * its fsync waits for little. */
    int writeback;
} actl__fetch_hooks;
#define ACTL_FETCH_GROW_STEP (1u << 20)
/* actl__fetch_run with hooks (h may be NULL). */
int actl__fetch_run_hooked(actl__fetch *f, const actl__fetch_hooks *h);

/* -- pull.c -- */

/* Tensors whose work (a frame, or a decoded and checked tensor) a follower
 * did while their file downloaded and handed to the rest of the pull, summed
 * over pulls: for tests, which read it (single-threaded) to know that the
 * path ran. */
extern size_t actl__pull_ahead;

/* What actl_store_pull makes of its arguments before any byte moves, with
 * the same checks and messages: *base the URL its files are fetched under,
 * *name (without a ref) the adapter's local name; both malloc'd, NULL on
 * failure. For tests and fuzzing. */
int actl__pull_plan(const char *url, const char *ref, const actl_pull_opts *o, char **base,
                    char **name);
/* Parses and checks the text of a published index.json as a pull does,
 * finding name@version in it (0: the newest); *found says whether it is
 * there. `what` names the source in messages. For tests and fuzzing. */
int actl__index_check(const char *what, const char *text, size_t len, const char *name,
                      int64_t version, bool *found);

/* actl_store_publish, and *stacks (may be NULL) gets the number of stack
 * entries left out of the index when refs is NULL or empty (a stack has no
 * pack of its own; named in refs, it is refused with ACTL_EUNSUPPORTED). */
int actl__store_publish(actl_store *s, const char *dir, const char *const *refs, size_t *count,
                        size_t *stacks);

/* ==== end of the streaming section (issue 4) ============================== */

/* ==== compose.c (issue 5; owner: compose) ================================ */

/* Pruned-delta methods (ties, dare_*, magnitude_prune): a module whose
 * min(out, in) is at most this takes the full SVD (LAPACK dgesdd); a larger
 * one the randomized range finder. Default 512. Benchmarks and tests raise
 * it to time or check the full SVD on the same module; not to be changed
 * while compose calls run. */
extern int64_t actl__compose_exact_dim;

/* ==== end of the compose section ========================================== */

/* ==== merge.c / adapter.c: base layer orientation (issue 5; owner: merge) == */

/* Whether the base layer `module` stores its weight [in, out]: PEFT takes the
 * orientation from the layer's type, not from an adapter's fan_in_fan_out
 * (nn.Linear forces it false, transformers' Conv1D true). Conv1D layers are
 * the c_attn, c_proj, c_fc and q_attn projections of the model types that
 * build them from Conv1D ("gpt2", "openai-gpt", "decision_transformer",
 * "imagegpt");
 * everything else (model_type NULL included) is nn.Linear, [out, in]. */
bool actl__module_stores_in_out(const char *model_type, const char *module);
/* Whether two model ids name the same model: equal, or the same last path
 * component ("meta-llama/Llama-2-7b-hf" and "/models/Llama-2-7b-hf"). */
bool actl__same_model(const char *a, const char *b);
/* actl_adapter_validate with the base's orientation taken from model_type
 * (config.json's "model_type", or NULL) by the rule above. */
int actl__adapter_validate_for(const actl_adapter *a, const actl_base *base,
                               const char *model_type);

/* ==== end of the merge section ============================================ */

/* ==== the decoder section (issue 6): model.c, adapt.c, decode.c, sample.c,
 * tokenizer.c, bpe.c, gguf.c ================================================ */

/* ---- model.c: a LLaMA-family model in memory (DESIGN.md 4.3, 10) ---------- */

/* The seven projections of a layer, in this order. A module slot numbers a
 * projection of the whole model: slot = layer * ACTL__NPROJ + proj; slot
 * ACTL__SLOT_HEAD(m) = layers * ACTL__NPROJ is lm_head. */
enum { ACTL__Q, ACTL__K, ACTL__V, ACTL__O, ACTL__GATE, ACTL__UP, ACTL__DOWN, ACTL__NPROJ };
/* "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
 * "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj": the module is
 * "model.layers.<l>.<this>". */
extern const char *const actl__proj_names[ACTL__NPROJ];
#define ACTL__SLOT_HEAD(m) ((m)->info.layers * ACTL__NPROJ)

typedef struct actl__layer {
    const float *attn_norm;            /* [dim], always F32 (widened at load) */
    const float *ffn_norm;             /* [dim] */
    const actl_tensor *w[ACTL__NPROJ]; /* [out, in] (PyTorch layout), F32/F16/BF16 as stored,
                                          or F32 when info.widened */
    const float *bias[ACTL__NPROJ];    /* q/k/v biases when attention_bias, else NULL */
} actl__layer;

struct actl_model {
    actl_model_info info;       /* strings point into owned memory */
    actl__layer *layers;        /* info.layers */
    const actl_tensor *embed;   /* model.embed_tokens.weight [vocab, dim] */
    const actl_tensor *head;    /* lm_head.weight [vocab, dim]; == embed when tied */
    const float *final_norm;    /* model.norm.weight [dim] */
    actl_base *base;            /* module names and shapes, for actl_adapter_validate */
    const char *model_type;     /* config.json "model_type", or NULL (llama2.c: "llama") */
    void *priv;                 /* model.c's own: the checkpoint, owned copies */
};

/* The module name of a slot ("model.layers.3.self_attn.q_proj", "lm_head")
 * into buf. */
const char *actl__slot_name(const actl_model *m, int64_t slot, char *buf, size_t cap);
/* The weight of a slot (lm_head included). */
const actl_tensor *actl__slot_weight(const actl_model *m, int64_t slot);
/* y[rows, out] = x[rows, in] · Wᵀ for W [out, in] F32/F16/BF16 (F32 through
 * cblas_sgemm directly; F16/BF16 widened block by block into a buffer of
 * the caller's thread, then sgemm). accumulate: y += instead of y =.
 * Thread-safe; OpenBLAS may use its own threads inside. ACTL_ENOMEM only. */
int actl__linear(const actl_tensor *W, const float *x, int64_t rows, float *y, bool accumulate);
/* Row `id` of the embedding table widened to F32 into dst[dim]. */
void actl__embed_row(const actl_model *m, int32_t id, float *dst);
/* An actl_base listing the given modules (names copied) with their weight
 * shapes [rows[i], cols[i]], for a model whose checkpoint is not an HF one
 * (actl_model_base). model_id may be NULL. base.c */
int actl__base_from_modules(const char *model_id, const char *const *names, const int64_t *rows,
                            const int64_t *cols, size_t n, actl_base **out);

/* ---- adapt.c: adapters in the decoder's form (DESIGN.md 3, 10) ------------ */

/* One prepared adapter or stack: its members in order (the first innermost,
 * each wrapping the module made by those before it), converted to fp32:
 * LoRA B pre-scaled by s·w, DoRA's m/‖W+sBA‖ row factors computed from the
 * model's weights, RoAd c/s vectors (actl__road_coeffs, stored as float),
 * bottleneck D/U and scale·w, MoS materialized. Immutable once made;
 * every function below is thread-safe on distinct rows (no shared scratch). */
typedef struct actl__rt actl__rt;
/* Validates in[0..n) against the model (actl__adapter_validate_for with the
 * model's base and model_type; base model ids compared with
 * actl__same_model, unless force) and converts them. Errors name the input
 * (in[i].ref) and module. */
int actl__rt_new(const actl_model *m, const actl_input *in, size_t n, bool force,
                 actl__rt **out);
void actl__rt_free(actl__rt *rt);
/* Whether any member acts on the slot, and whether one changes the slot's
 * input (a series-on-input bottleneck). */
bool actl__rt_touches(const actl__rt *rt, int64_t slot);
bool actl__rt_has_pre(const actl__rt *rt, int64_t slot);
/* Multiply-adds per row that the slot's members cost (0 when none acts on
 * it): the decoder spreads the posts over its threads only when worth it. */
int64_t actl__rt_work(const actl__rt *rt, int64_t slot);
/* x0[rows, in]: what the base projection sees for module input x[rows, in]
 * (the input bottlenecks applied, outermost member first). */
int actl__rt_pre(const actl__rt *rt, int64_t slot, const float *x, int64_t rows, float *x0);
/* y[rows, out] holds x0·Wᵀ + b (b the slot's bias, if any) on entry and the
 * module's output under the adapter on return. x is the module's input, x0
 * what actl__rt_pre made of it (== x when there is no pre). */
int actl__rt_post(const actl__rt *rt, int64_t slot, const float *x, const float *x0,
                  int64_t rows, float *y);
/* Embedding LoRA: adds each id's row of s·(B A)ᵀ to x[rows, dim]. */
void actl__rt_embed(const actl__rt *rt, const int32_t *ids, int64_t rows, float *x);

/* ---- sample.c --------------------------------------------------------------- */

/* The xorshift generator llama2.c samples with (state must not be 0). */
uint32_t actl__rng_u32(uint64_t *state);
float actl__rng_f32(uint64_t *state); /* [0, 1) */
/* Samples from logits[n] as llama2.c does: temperature 0 = argmax (the first
 * largest); else softmax(logits / T), then top-k (k > 0) and/or top-p
 * (0 < p < 1, llama2.c's cutoff and order), one draw of actl__rng_f32.
 * scratch: room for n floats and n (index, prob) pairs, from
 * actl__sample_scratch_size(n). */
size_t actl__sample_scratch_size(size_t n);
int32_t actl__sample(const float *logits, size_t n, float temperature, int top_k, float top_p,
                     uint64_t *rng, void *scratch);
/* log-softmax of logits[n] at index i, computed stably in double. */
float actl__logprob(const float *logits, size_t n, int32_t i);

/* ---- decode.c ------------------------------------------------------------- */

/* Jobs of fewer multiply-adds than this run on the calling thread instead
 * of the batch's pool (tests set 0 to run every job on the pool). */
extern int64_t actl__decode_parallel_min;

/* ---- tokenizer.c (the public API, SentencePiece-style BPE, added tokens)
 * and bpe.c / gguf.c (byte-level BPE, vocabularies from GGUF) ---------------- */

/* What a tokenizer model does with one fragment of text that holds no
 * special/added token. */
typedef struct actl__tok_ops {
    /* Appends the ids of text[0..len) to *ids (grown with actl__grow, *n
     * elements, *cap capacity). `first`: the fragment starts the text (a
     * SentencePiece normalizer prepends "▁" only there). */
    int (*encode)(const void *impl, const char *text, size_t len, bool first, int32_t **ids,
                  size_t *n, size_t *cap);
    void (*free)(void *impl);
} actl__tok_ops;

typedef struct actl__tok_added {
    char *text;
    size_t len;
    int32_t id;
    bool special;   /* matched only with ACTL_TOK_SPECIAL; otherwise (a plain added
                       token) always matched */
} actl__tok_added;

struct actl_tokenizer {
    const actl__tok_ops *ops;
    void *impl;
    bool sentencepiece;      /* decode drops the first piece's leading space */
    int add_bos;             /* 1 / 0: the file says whether encoding a text starts with
                                BOS (post_processor, add_bos_token); -1: it does not say
                                (then: SentencePiece-style yes, byte-level no) */
    char **pieces;           /* [n_vocab] bytes each id stands for (see actl_tokenizer_piece) */
    size_t *piece_len;
    size_t n_vocab;
    actl__tok_added *added;  /* n_added, matched longest first */
    size_t n_added;
    int32_t bos, eos;
};

/* Byte-level BPE loaders (bpe.c, gguf.c). Each fills t->ops, t->impl,
 * t->pieces/piece_len/n_vocab, the added tokens (special ones flagged) and
 * bos/eos when the file names them; t is zeroed on entry and freed by the
 * caller (actl_tokenizer_free) on failure too. pre: as actl_tokenizer_load. */
int actl__bpe_from_json(const json_t *root, const char *path, const char *pre,
                        actl_tokenizer *t);
int actl__bpe_from_vocab(const char *vocab_path, const char *merges_path, const char *pre,
                         actl_tokenizer *t);
int actl__bpe_from_tiktoken(const char *path, const char *pre, actl_tokenizer *t);
int actl__tok_from_gguf(const char *path, const char *pre, actl_tokenizer *t);
/* Adds an added token (tokenizer.c); copies text. */
int actl__tok_add(actl_tokenizer *t, const char *text, size_t len, int32_t id, bool special);
/* tokenizer.c's SentencePiece-style BPE over a vocabulary with scores, for
 * gguf.c's "llama" vocabularies: fills t as the loaders above. */
int actl__spm_from_vocab(const char *const *tokens, const float *scores, size_t n,
                         actl_tokenizer *t);

/* bpe.c, for gguf.c's "gpt2" vocabularies: tokens[i] (tok_len[i] bytes, in
 * the byte-level alphabet) is id i; merges[j] ("a b", merge_len[j] bytes)
 * has rank j; types[i] (or NULL) llama.cpp's token type: 3 (control) makes
 * a special added token, 4 (user-defined) a plain one. pre: a pre-tokenizer
 * name (the caller's, or tokenizer.ggml.pre: "gpt-2", "llama-bpe",
 * "qwen2", "starcoder", "smollm"; NULL: gpt2). origin names the file. Fills
 * t as the loaders above. */
int actl__bpe_from_list(const char *const *tokens, const size_t *tok_len, size_t n,
                        const char *const *merges, const size_t *merge_len, size_t n_merges,
                        const int32_t *types, const char *pre, const char *origin,
                        actl_tokenizer *t);

/* ==== end of the decoder section ========================================== */

#endif /* ACTL_INTERNAL_H */
