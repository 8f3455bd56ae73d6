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
 * name and size exists, nothing is written (its mtime is set to now) and it
 * is shared. hex receives the digest, *stored the pack's size, *raw the
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
    "a.description, a.created"
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

#endif /* ACTL_INTERNAL_H */
