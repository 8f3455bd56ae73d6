/*
 * adapterctl.h: the public contract of libadapterctl.
 *
 * adapterctl keeps, validates, converts and applies adapters (LoRA/DoRA,
 * RoAd, bottleneck, MoS) for one base language model. This header is the
 * whole API: a function not declared here is not part of it.
 *
 * Conventions
 *  - Every fallible call returns an int: ACTL_OK (0) or an ACTL_E* code.
 *    Results come back through out-parameters, which are left untouched
 *    (or set to NULL) on failure.
 *  - actl_errmsg() gives the calling thread's last message, naming the file,
 *    tensor or key and the problem. It is valid until the thread's next
 *    failing call.
 *  - What an _open/_new/_load function returns belongs to the caller and has
 *    one matching _close/_free that accepts NULL. Getters lend: their result
 *    stays valid until the object it came from is freed.
 *  - Inputs are borrowed for the duration of the call; the library copies
 *    what it keeps.
 *  - The library never prints and never exits.
 *  - Distinct objects may be used from different threads at once; one object
 *    must not be used by two threads at once unless its functions say so.
 */
#ifndef ADAPTERCTL_H
#define ADAPTERCTL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Version                                                             */
/* ------------------------------------------------------------------ */

#define ACTL_VERSION_MAJOR 0
#define ACTL_VERSION_MINOR 1
#define ACTL_VERSION_PATCH 0
#define ACTL_VERSION_STRING "0.1.0"

/* The library's version, "MAJOR.MINOR.PATCH"; a static string. */
const char *actl_version(void);

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/* Result codes. Their numbers are fixed once released; new codes are only
 * appended. */
enum {
    ACTL_OK = 0,
    ACTL_EINVAL = 1,       /* invalid argument (a caller's mistake) */
    ACTL_ENOMEM = 2,       /* out of memory */
    ACTL_EIO = 3,          /* a system call failed (open, read, write, mmap, rename, ...) */
    ACTL_EFORMAT = 4,      /* malformed input file or JSON */
    ACTL_EUNSUPPORTED = 5, /* well-formed, but a kind, dtype or option we do not handle */
    ACTL_ESHAPE = 6,       /* tensor shapes do not fit each other or the base model */
    ACTL_ENOTFOUND = 7,    /* a file, tensor, key or module that was asked for is absent */
    ACTL_EEXIST = 8,       /* the destination already exists */
    ACTL_ELIMIT = 9,       /* a size or count limit was exceeded */
    ACTL_ECORRUPT = 10     /* stored bytes do not match their checksum */
};

/* Fixed text for a code ("invalid argument"); never NULL, "unknown error"
 * for codes this version does not know. */
const char *actl_strerror(int code);

/* The calling thread's last error message, e.g.
 *   "'x/adapter_model.safetensors': tensor 'a.lora_A.weight': data_offsets
 *    [0, 12] give 12 bytes, but F32 [2, 4] needs 32"
 * Never NULL ("" when nothing failed yet). Valid until the same thread's next
 * library call that fails. */
const char *actl_errmsg(void);

/* ------------------------------------------------------------------ */
/* Data types and conversions                                          */
/* ------------------------------------------------------------------ */

typedef enum actl_dtype {
    ACTL_F32 = 0,
    ACTL_F16 = 1,
    ACTL_BF16 = 2,
    ACTL_I32 = 3,
    ACTL_I64 = 4,
    ACTL_U8 = 5,
    ACTL_BOOL = 6,
    ACTL_F64 = 7
} actl_dtype;

#define ACTL_DTYPE_COUNT 8

/* The safetensors name of a dtype ("F32", "BF16", ...); NULL if invalid. */
const char *actl_dtype_name(actl_dtype dt);

/* Size of one element in bytes; 0 if invalid. */
size_t actl_dtype_size(actl_dtype dt);

/* Parses a safetensors dtype name (case-sensitive, as the format spells
 * it). ACTL_EUNSUPPORTED for a real dtype we do not handle ("F8_E4M3",
 * "I16", ...), ACTL_EFORMAT for anything else. */
int actl_dtype_parse(const char *name, actl_dtype *out);

/* Conversions between 16-bit floats and float. Narrowing rounds to nearest,
 * ties to even; Inf stays Inf, NaN stays NaN (sign kept, made quiet);
 * values beyond the target's range become Inf. src and dst must not
 * overlap. n may be 0. */
void actl_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void actl_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void actl_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
void actl_f32_to_bf16(const float *src, uint16_t *dst, size_t n);

/* ------------------------------------------------------------------ */
/* Tensors                                                             */
/* ------------------------------------------------------------------ */

#define ACTL_MAX_DIMS 8

/* A named, typed, dense, row-major array. Little-endian bytes, as in
 * safetensors. A tensor either owns its data or views memory owned by the
 * object it was lent from (a mapped file, an adapter). */
typedef struct actl_tensor actl_tensor;

/* Creates a tensor that owns a copy of `data` (nbytes = numel * dtype
 * size), or zeroed memory when data is NULL. name is copied. ndim may be 0
 * (a scalar: numel 1). ACTL_EINVAL for ndim out of [0, ACTL_MAX_DIMS], a
 * negative dim or an invalid dtype; ACTL_ELIMIT when the byte size
 * overflows. */
int actl_tensor_new(const char *name, actl_dtype dt, int ndim, const int64_t *shape,
                    const void *data, actl_tensor **out);

/* A deep copy under a new name (or the same name when name is NULL). */
int actl_tensor_copy(const actl_tensor *t, const char *name, actl_tensor **out);

void actl_tensor_free(actl_tensor *t);

const char *actl_tensor_name(const actl_tensor *t);
actl_dtype actl_tensor_dtype(const actl_tensor *t);
int actl_tensor_ndim(const actl_tensor *t);
/* Lends the ndim-long shape array. */
const int64_t *actl_tensor_shape(const actl_tensor *t);
int64_t actl_tensor_numel(const actl_tensor *t);
size_t actl_tensor_nbytes(const actl_tensor *t);
/* Lends the raw little-endian bytes (may be unaligned for views into a
 * file: copy before casting to a wider type). */
const void *actl_tensor_data(const actl_tensor *t);

/* Widens (or narrows) a floating-point tensor into n = numel floats at dst.
 * ACTL_EUNSUPPORTED for integer and bool dtypes. */
int actl_tensor_to_f32(const actl_tensor *t, float *dst);

/* ------------------------------------------------------------------ */
/* safetensors                                                         */
/* ------------------------------------------------------------------ */

/* Largest header a reader accepts (DESIGN.md 4.2). */
#define ACTL_ST_MAX_HEADER (100u * 1000u * 1000u)

/* A safetensors file opened read-only over mmap and validated strictly:
 * header length within the file and <= ACTL_ST_MAX_HEADER, UTF-8 JSON object,
 * known dtypes, non-negative shapes without overflow, byte lengths equal to
 * numel * size, ranges sorted, contiguous, without holes, overlap or
 * trailing bytes, and __metadata__ mapping strings to strings. */
typedef struct actl_st actl_st;

int actl_st_open(const char *path, actl_st **out);
void actl_st_close(actl_st *st);

/* Tensors in the order of their data offsets. The tensors view the mapping
 * and are valid until the file is closed. */
size_t actl_st_count(const actl_st *st);
const actl_tensor *actl_st_tensor(const actl_st *st, size_t i);
/* NULL when absent (no error message set). */
const actl_tensor *actl_st_find(const actl_st *st, const char *name);

/* __metadata__: value for a key, or NULL. And the i-th key/value pair
 * (both lent), i < actl_st_metadata_count(); both NULL when i is out of
 * range. */
const char *actl_st_metadata(const actl_st *st, const char *key);
size_t actl_st_metadata_count(const actl_st *st);
void actl_st_metadata_at(const actl_st *st, size_t i, const char **key, const char **value);

/* Writes n tensors to path: the header padded with spaces to a multiple of 8,
 * then the data, laid out by element size (largest first) and then by name,
 * as the reference writer does, so that every tensor is aligned to its
 * element size. (Readers here never rely on alignment.)
 * metadata is NULL or a NULL-terminated array of key, value, key, value...
 * The file is written to a temporary file beside path, fsynced and renamed
 * over path, so readers see the old file or the new one. Tensor names must
 * be unique and not "__metadata__" (ACTL_EINVAL). */
int actl_st_write(const char *path, const actl_tensor *const *tensors, size_t n,
                  const char *const *metadata);

/* ------------------------------------------------------------------ */
/* Checkpoints (one safetensors file, or shards with an index)         */
/* ------------------------------------------------------------------ */

/* A Hugging Face checkpoint: a directory holding model.safetensors or
 * model.safetensors.index.json (with a weight_map naming shards in the same
 * directory; the single file wins when both are present, as in
 * transformers), a path to such an index, or a path to a single
 * .safetensors file. Every shard is
 * opened strictly; every tensor the index names must be in the shard it
 * names, and no shard may hold a tensor the index does not name. */
typedef struct actl_ckpt actl_ckpt;

int actl_ckpt_open(const char *path, actl_ckpt **out);
void actl_ckpt_close(actl_ckpt *ck);

/* Tensors sorted by name; views valid until the checkpoint is closed. */
size_t actl_ckpt_count(const actl_ckpt *ck);
const actl_tensor *actl_ckpt_tensor(const actl_ckpt *ck, size_t i);
/* NULL when absent (no error message set). */
const actl_tensor *actl_ckpt_find(const actl_ckpt *ck, const char *name);
/* Number of shard files (1 for a single file) and the file name of the
 * shard holding tensor i (lent). */
size_t actl_ckpt_shard_count(const actl_ckpt *ck);
const char *actl_ckpt_shard_of(const actl_ckpt *ck, size_t i);

/* ------------------------------------------------------------------ */
/* Base model shapes (for validating adapters)                         */
/* ------------------------------------------------------------------ */

/* The linear and embedding modules of a base model with their weight shapes,
 * from a checkpoint's tensors (every 2-D "<module>.weight") or, when there
 * are no weights, from a LLaMA-family config.json. */
typedef struct actl_base actl_base;

/* path: a checkpoint directory (config.json and/or weights), a config.json
 * file, or a .safetensors file. Weights win over config.json when both are
 * present. */
int actl_base_load(const char *path, actl_base **out);
void actl_base_free(actl_base *b);

/* The base's model id: config.json's "_name_or_path" if present, else NULL. */
const char *actl_base_model_id(const actl_base *b);
size_t actl_base_module_count(const actl_base *b);
/* Module i's name (e.g. "model.layers.0.self_attn.q_proj", lent) and its
 * weight shape as stored, [rows, cols] (PyTorch: [out, in]). */
const char *actl_base_module(const actl_base *b, size_t i, int64_t *rows, int64_t *cols);
/* ACTL_ENOTFOUND when the base has no such module. */
int actl_base_find(const actl_base *b, const char *module, int64_t *rows, int64_t *cols);

/* ------------------------------------------------------------------ */
/* Adapters                                                            */
/* ------------------------------------------------------------------ */

typedef enum actl_kind {
    ACTL_KIND_LORA = 1,       /* PEFT "LORA", including DoRA */
    ACTL_KIND_ROAD = 2,       /* PEFT "ROAD" */
    ACTL_KIND_BOTTLENECK = 3, /* LLM-Adapters "BOTTLENECK" (Series / Parallel) */
    ACTL_KIND_MOS = 4,        /* Mixture of Shards, compact form (ours: "MOS") */
    ACTL_KIND_STACK = 5       /* a catalogue entry only: an ordered recipe of other
                                 adapters (DESIGN.md 3.5); never an actl_adapter's kind */
} actl_kind;

/* Lowercase name: "lora", "road", "bottleneck", "mos"; NULL if invalid. */
const char *actl_kind_name(actl_kind k);
/* The kind named by actl_kind_name's word ("lora", exactly). ACTL_EINVAL
 * naming the word and the valid ones when there is none; *out untouched. */
int actl_kind_parse(const char *name, actl_kind *out);

typedef enum actl_road_variant {
    ACTL_ROAD_1 = 1,
    ACTL_ROAD_2 = 2,
    ACTL_ROAD_4 = 4
} actl_road_variant;

/* Where a bottleneck adapter sits in its module (DESIGN.md 3.3). */
typedef enum actl_placement {
    ACTL_PLACE_NONE = 0,   /* not a bottleneck module */
    ACTL_PLACE_INPUT = 1,  /* series on input, "mh_adapter": y = W(x + s U σ(D x)) + b */
    ACTL_PLACE_OUTPUT = 2, /* series on output, "output_adapter": h + s U σ(D h) */
    ACTL_PLACE_PARALLEL = 3 /* "parallel_adapter": W x + b + s U σ(D x) */
} actl_placement;

typedef enum actl_activation {
    ACTL_ACT_IDENTITY = 0,
    ACTL_ACT_TANH = 1,
    ACTL_ACT_RELU = 2,
    ACTL_ACT_GELU = 3,
    ACTL_ACT_SILU = 4
} actl_activation;

/* Names as configs spell them: "road_1", "road_2", "road_4"; "input",
 * "output", "parallel" (NULL for ACTL_PLACE_NONE); "identity", "tanh",
 * "relu", "gelu", "silu". NULL for invalid values. Static strings. */
const char *actl_road_variant_name(actl_road_variant v);
const char *actl_placement_name(actl_placement p);
const char *actl_activation_name(actl_activation a);

/* An adapter in memory: its kind, its PEFT config, and its modules with
 * their tensors. Immutable once made. */
typedef struct actl_adapter actl_adapter;

/* Whole-adapter facts. Strings are lent by the adapter. */
typedef struct actl_adapter_info {
    actl_kind kind;
    const char *base_model;       /* "base_model_name_or_path", or NULL */
    int rank;                     /* LoRA/MoS: config "r"; bottleneck: bottleneck_size; RoAd: 0 */
    double alpha;                 /* LoRA/MoS: config "lora_alpha"; else 0 */
    int use_rslora;               /* LoRA */
    int fan_in_fan_out;           /* LoRA */
    int use_dora;                 /* LoRA */
    actl_road_variant variant;    /* RoAd; else 0 */
    int group_size;               /* RoAd; else 0 */
    actl_activation activation;   /* bottleneck */
    int use_parallel_adapter;     /* bottleneck */
    int shards;                   /* MoS: shards per rank l; else 0 */
    size_t module_count;
    size_t tensor_count;          /* every tensor, modules_to_save included */
    int64_t params;               /* elements over all tensors */
    uint64_t bytes;               /* raw bytes over all tensors */
} actl_adapter_info;

/* Per-module flags. */
#define ACTL_MOD_DORA 0x1         /* has lora_magnitude_vector */
#define ACTL_MOD_BIAS 0x2         /* has lora_B.bias */
#define ACTL_MOD_EMBEDDING 0x4    /* embedding LoRA (lora_embedding_A/B) */
#define ACTL_MOD_LEARNED_SCALE 0x8 /* bottleneck scale from adapter_scaling */

/* One module's facts. */
typedef struct actl_module_info {
    const char *name;        /* base module name, "model.layers.0.self_attn.q_proj" (lent) */
    int rank;                /* LoRA/MoS r_m (from the tensors); bottleneck size; RoAd 0 */
    double alpha;            /* LoRA/MoS alpha_m (alpha_pattern, else lora_alpha); else 0 */
    double scale;            /* LoRA/MoS: alpha_m/r_m, or alpha_m/sqrt(r_m) with rsLoRA;
                                bottleneck: s (the learned value when learned); RoAd: 1 */
    int64_t in_features;     /* the base module's input width implied by the tensors, or 0
                                when they do not imply it (RoAd; series-on-output bottleneck) */
    int64_t out_features;    /* its output width, or 0 when not implied (series-on-input
                                bottleneck); for embeddings in is the vocab, out the dim */
    int flags;               /* ACTL_MOD_* */
    actl_placement placement;/* bottleneck; else ACTL_PLACE_NONE */
    actl_dtype dtype;        /* dtype of the module's main tensor (A, theta, down, index pools) */
    int64_t params;          /* elements of this module's own tensors */
    uint64_t bytes;          /* their raw bytes */
} actl_module_info;

/* Imports a PEFT directory: adapter_config.json + adapter_model.safetensors.
 * Requires "peft_type" LORA, ROAD, BOTTLENECK or MOS; validates every tensor
 * name, dtype and shape against the config and each other, and names the
 * file, key or tensor at fault. A directory holding only adapter_model.bin
 * is refused (ACTL_EUNSUPPORTED): pickles can run code. Unknown config keys
 * are kept. */
int actl_adapter_load(const char *dir, actl_adapter **out);

/* Builds an adapter from a config (JSON text, as in adapter_config.json) and
 * tensors named as in adapter_model.safetensors, with the same validation
 * as actl_adapter_load. `origin` names the source in messages (may be NULL).
 * Tensors are copied. */
int actl_adapter_new(const char *config_json, const actl_tensor *const *tensors, size_t n,
                     const char *origin, actl_adapter **out);

/* Exports a PEFT directory that PEFT loads: adapter_config.json with sorted
 * keys and 2-space indent (except that rank_pattern and alpha_pattern keep
 * their order: PEFT's first matching key wins), adapter_model.safetensors
 * with metadata {"format":"pt"}. dir must not exist, or be an empty directory
 * (ACTL_EEXIST otherwise). Written into a temporary directory beside dir and
 * renamed, so dir appears whole or not at all. */
int actl_adapter_save(const actl_adapter *a, const char *dir);

void actl_adapter_free(actl_adapter *a);

void actl_adapter_info_get(const actl_adapter *a, actl_adapter_info *out);

/* The config as compact JSON text with sorted keys, rank_pattern and
 * alpha_pattern keeping their order (lent). */
const char *actl_adapter_config(const actl_adapter *a);

/* Modules sorted by name. ACTL_EINVAL when i is out of range. */
size_t actl_adapter_module_count(const actl_adapter *a);
int actl_adapter_module(const actl_adapter *a, size_t i, actl_module_info *out);

/* All tensors under their PEFT keys ("base_model.model....lora_A.weight"),
 * sorted by key; lent. */
size_t actl_adapter_tensor_count(const actl_adapter *a);
const actl_tensor *actl_adapter_tensor(const actl_adapter *a, size_t i);
const actl_tensor *actl_adapter_find(const actl_adapter *a, const char *key);

/* Checks that every module exists in the base with a shape the adapter
 * fits (LoRA A [r, in] and B [out, r] against the base's [out, in]: the
 * layers are taken as nn.Linear, which makes PEFT ignore fan_in_fan_out;
 * actl_merge reads config.json's model_type and takes GPT-2's Conv1D
 * layers as [in, out]; RoAd lengths and group divisibility against
 * out; bottleneck widths per placement; embeddings against [vocab, dim]).
 * ACTL_ENOTFOUND / ACTL_ESHAPE with a message naming the module. */
int actl_adapter_validate(const actl_adapter *a, const actl_base *base);

/* MoS materialization (DESIGN.md 3.4): a new plain LoRA adapter with the
 * same modules, A [r, in] and B [out, r] gathered from the pools (exact:
 * the pools' dtype is kept), the same lora_alpha and r. ACTL_EINVAL if a is not MoS. */
int actl_adapter_materialize(const actl_adapter *a, actl_adapter **out);

/* ------------------------------------------------------------------ */
/* The store: an SQLite catalogue and content-addressed packs          */
/* ------------------------------------------------------------------ */

/* A store directory: catalog.db (SQLite, WAL) and objects/ (packs named by
 * the SHA-256 of their bytes, objects/<2 hex>/<64 hex>). Several processes
 * may use one store at once; one actl_store handle is used by one thread at
 * a time. */
typedef struct actl_store actl_store;

/* The default store directory: $ADAPTERCTL_STORE, else
 * $XDG_DATA_HOME/adapterctl, else $HOME/.local/share/adapterctl. malloc'd
 * into *out (the caller frees). ACTL_ENOTFOUND when none of the variables
 * is set. */
int actl_store_default_path(char **out);

/* Opens the store at dir (NULL: actl_store_default_path), creating the
 * directory, catalog.db and objects/ when absent and ACTL_STORE_CREATE is
 * given (otherwise ACTL_ENOTFOUND). Applies pending schema migrations in one
 * transaction; a catalogue written by a newer adapterctl is refused
 * (ACTL_EUNSUPPORTED). */
#define ACTL_STORE_CREATE 0x1
int actl_store_open(const char *dir, int flags, actl_store **out);
void actl_store_close(actl_store *s);
/* The store's directory (lent). */
const char *actl_store_path(const actl_store *s);
/* The catalogue's schema version (PRAGMA user_version). */
int actl_store_schema_version(const actl_store *s);

/* Names: [A-Za-z0-9][A-Za-z0-9._-]{0,127}. A reference is NAME or
 * NAME@VERSION (VERSION a positive integer); NAME alone is the newest
 * version. ACTL_EINVAL with a message for anything else. */
int actl_name_check(const char *name);
int actl_ref_parse(const char *ref, char *name, size_t name_cap, int64_t *version);

/* Options of actl_store_add; start from actl_add_default_opts(). Strings are
 * borrowed for the call. */
typedef struct actl_add_opts {
    const char *name;        /* required */
    int64_t version;         /* 0: one more than the newest version of name */
    const char *base_model;  /* NULL: the adapter's base_model_name_or_path */
    const char *const *tags; /* NULL-terminated "KEY=VALUE" strings, or NULL */
    const char *description; /* or NULL */
    const char *source;      /* where it came from (a path or URL), or NULL */
    const char *lineage;     /* how it was made (JSON object text, see actl_compose_lineage),
                                or NULL; stored verbatim and shown by show */
} actl_add_opts;
actl_add_opts actl_add_default_opts(void);

/* One catalogue row. Every string is lent by the list it came from. */
typedef struct actl_entry {
    const char *name;
    int64_t version;
    actl_kind kind;
    const char *base_model;     /* or NULL */
    int rank;                   /* LoRA/MoS r, bottleneck size; 0 for RoAd */
    const char *variant;        /* RoAd "road_1"...; else NULL */
    int group_size;             /* RoAd; else 0 */
    const char *target_modules; /* JSON array text of the adapted module names */
    const char *config;         /* adapter_config.json as compact JSON */
    uint64_t raw_bytes;         /* tensors, uncompressed */
    uint64_t stored_bytes;      /* the pack's size on disk */
    const char *pack;           /* 64 hex digits; NULL for a stack */
    const char *source;         /* or NULL */
    const char *lineage;        /* JSON object text (inputs, weights, method, options,
                                   seed, errors), or NULL for an adapter not composed here */
    const char *description;    /* or NULL */
    int64_t created;            /* Unix seconds */
    size_t tag_count;
    const char *const *tag_keys;   /* tag_count keys, sorted */
    const char *const *tag_values; /* the matching values */
} actl_entry;

/* A list of entries, owned by the caller. */
typedef struct actl_entries actl_entries;
size_t actl_entries_count(const actl_entries *l);
/* Lends entry i (NULL when out of range), valid until l is freed. */
const actl_entry *actl_entries_get(const actl_entries *l, size_t i);
void actl_entries_free(actl_entries *l);

/* Adds an adapter: writes its pack (temporary file, fsync, rename; a pack
 * with the same bytes is shared) and then, in one transaction, its rows.
 * A crash leaves the old state or the new one. ACTL_EEXIST when name@version
 * exists. On success *out (when out is not NULL) receives the new entry. */
int actl_store_add(actl_store *s, const actl_adapter *a, const actl_add_opts *o,
                   actl_entries **out);

/* Filters of actl_store_list; start from actl_query_default(). */
typedef struct actl_query {
    int kind;                /* an actl_kind, or 0 for any */
    const char *base_model;  /* exact match, or NULL */
    const char *name;        /* exact name (every version), or NULL */
    const char *const *tags; /* NULL-terminated "KEY=VALUE" (all must match), or NULL */
    int64_t limit;           /* 0: no limit */
    int64_t offset;
    int all_versions;        /* 0: only the newest version of each name */
} actl_query;
actl_query actl_query_default(void);

/* Entries matching q, ordered by name then version. */
int actl_store_list(actl_store *s, const actl_query *q, actl_entries **out);
/* The one entry ref names; ACTL_ENOTFOUND naming it when absent. */
int actl_store_show(actl_store *s, const char *ref, actl_entries **out);
/* Loads ref's adapter from its pack, checking every tensor's SHA-256
 * (ACTL_ECORRUPT naming the pack and tensor on a mismatch). */
int actl_store_load(actl_store *s, const char *ref, actl_adapter **out);
/* actl_store_load + actl_adapter_save. A stack is written as one PEFT
 * directory per member, DIR/01-<name>/, DIR/02-<name>/, ..., plus
 * DIR/stack.json, the recipe (members in order with weight, kind, directory
 * and pack). */
int actl_store_export(actl_store *s, const char *ref, const char *dir);
/* Removes ref's rows (the pack stays until actl_store_gc). */
int actl_store_rm(actl_store *s, const char *ref);
/* Sets "KEY=VALUE" tags and removes `unset` keys (both NULL-terminated or
 * NULL), in one transaction. */
int actl_store_tag(actl_store *s, const char *ref, const char *const *set,
                   const char *const *unset);

/* verify: re-hashes every pack and checks every row. Each problem is passed
 * to fn (message, ctx) as found; *problems counts them. Returns ACTL_OK when
 * the check ran (even with problems), else the error that stopped it. */
typedef void (*actl_problem_fn)(const char *message, void *ctx);
int actl_store_verify(actl_store *s, actl_problem_fn fn, void *ctx, size_t *problems);

/* gc: removes packs no row references and stale temporary files, never a
 * pack that an add in progress (in any process) is about to reference. */
typedef struct actl_gc_result {
    size_t packs_removed;
    uint64_t bytes_freed;
    size_t temp_removed;
} actl_gc_result;
int actl_store_gc(actl_store *s, actl_gc_result *out);

typedef struct actl_store_stats {
    int64_t adapters;       /* distinct names */
    int64_t versions;       /* rows */
    int64_t packs;          /* pack files referenced */
    uint64_t raw_bytes;     /* tensors, uncompressed, over distinct packs */
    uint64_t stored_bytes;  /* packs on disk, over distinct packs */
} actl_store_stats;
int actl_store_stats_get(actl_store *s, actl_store_stats *out);

/* ------------------------------------------------------------------ */
/* Pull and publish                                                    */
/* ------------------------------------------------------------------ */

/* Progress of a transfer: bytes received so far in this call and the
 * expected total (0 when unknown). Called on the pulling thread, at most
 * about ten times a second and once at the end. */
typedef void (*actl_progress_fn)(uint64_t done, uint64_t total, void *ctx);

/* The default per-file download limit of a pull (16 GiB). */
#define ACTL_PULL_DEFAULT_MAX (16ull << 30)

/* Options of actl_store_pull; start from actl_pull_default_opts(). Strings
 * are borrowed for the call. */
typedef struct actl_pull_opts {
    const char *name;        /* local name; NULL: the published entry's name, else the
                                URL's last path component or the hf repository's name */
    const char *sha256;      /* expected SHA-256 (64 hex) of adapter_model.safetensors (a
                                PEFT URL or hf://) or of the pack (a published store) */
    uint64_t max_size;       /* largest file to download; 0: ACTL_PULL_DEFAULT_MAX */
    const char *const *tags; /* NULL-terminated "KEY=VALUE" for the new entry, or NULL */
    actl_progress_fn progress; /* or NULL */
    void *progress_ctx;
} actl_pull_opts;
actl_pull_opts actl_pull_default_opts(void);

/* What a pull did. */
typedef struct actl_pull_result {
    char name[129];
    int64_t version;
    char pack[65];               /* the local pack's digest */
    char sha256[65];             /* SHA-256 of the adapter_model.safetensors or pack pulled */
    uint64_t bytes_transferred;  /* bytes received over the wire in this call, all files */
    int files_transferred;       /* files whose body was transferred (304s and skipped packs
                                    are not counted) */
    int unchanged;               /* 1: the source was unchanged and already in the store */
} actl_pull_result;

/* Pulls an adapter into the store from
 *  - a PEFT directory URL (http, https or file): URL/adapter_config.json and
 *    URL/adapter_model.safetensors;
 *  - hf://OWNER/REPO[@REVISION]: the same files at
 *    $HF_ENDPOINT/OWNER/REPO/resolve/REVISION/FILE (HF_ENDPOINT defaults to
 *    the public hub, REVISION to "main"); an X-Linked-Etag header must match
 *    the file's SHA-256;
 *  - a published store (ref not NULL: NAME or NAME@VERSION): URL/index.json,
 *    then URL/objects/<sha256> for a pack the store lacks.
 * Every byte is verified (digests, then full adapter validation) before
 * anything enters the catalogue; a failed pull leaves the store as it was,
 * apart from a resumable partial download (<store>/partial/) that gc
 * removes. A second pull of an unchanged source revalidates with
 * If-None-Match and transfers nothing. Only http, https and file URLs are
 * followed (redirects: http and https, at most 5); TLS is verified;
 * connection failures, 5xx and 429 are retried with exponential backoff,
 * honouring Retry-After. out may be NULL. */
int actl_store_pull(actl_store *s, const char *url, const char *ref, const actl_pull_opts *o,
                    actl_pull_result *out);

/* Publishes the adapters refs names (NULL or empty: every version in the
 * store) into dir as a static tree any HTTP server can serve:
 * dir/objects/<sha256> (the packs) and dir/index.json, written in that
 * order and each atomically, so a reader never sees an index naming a
 * missing pack. *count (when not NULL) gets the number of adapters in the
 * index. */
int actl_store_publish(actl_store *s, const char *dir, const char *const *refs, size_t *count);

/* ------------------------------------------------------------------ */
/* Inputs of merge and compose                                         */
/* ------------------------------------------------------------------ */

/* One adapter with its weight, as merge and compose take them. */
typedef struct actl_input {
    const actl_adapter *adapter; /* never a stack: stacks are expanded into members */
    double weight;               /* W of NAME[@V]:W, default 1 */
    const char *ref;             /* how the user named it: "math@3" (the resolved
                                    version) or the directory; in messages and lineage */
    const char *pack;            /* its pack's digest when it came from a store, else NULL */
} actl_input;

/* Splits "NAME[@V][:W]" or "DIR[:W]": W is the text after the last ':' when
 * that text is a finite number, else the weight is 1 and the whole spec is
 * the reference. *ref is malloc'd. ACTL_EINVAL for an empty reference. */
int actl_input_spec_parse(const char *spec, char **ref, double *weight);

/* An ordered list of inputs that owns the adapters it loaded. */
typedef struct actl_inputs actl_inputs;
int actl_inputs_new(actl_inputs **out);
void actl_inputs_free(actl_inputs *l);
/* Appends what ref names, with weight w: an existing directory is loaded
 * as a PEFT directory (actl_adapter_load); anything else is a store
 * reference NAME[@V] (s must not be NULL then), loaded and verified
 * (actl_store_load). A stack entry appends its members in order, each
 * weight multiplied by w. Errors name ref. */
int actl_inputs_add(actl_inputs *l, actl_store *s, const char *ref, double w);
/* The inputs as one array of *n (lent, valid until the next add or free). */
const actl_input *actl_inputs_items(const actl_inputs *l, size_t *n);

/* ------------------------------------------------------------------ */
/* Merge (DESIGN.md 8)                                                 */
/* ------------------------------------------------------------------ */

typedef struct actl_merge_opts {
    int dtype;      /* -1: keep each tensor's dtype; else ACTL_F32, ACTL_F16 or ACTL_BF16
                       for every floating-point tensor written */
    int unmerge;    /* 1: take the adapters back out (LoRA subtracted, RoAd inverted),
                       in reverse order */
    int force;      /* 1: merge even when an adapter's recorded base model differs from
                       the base's */
    int threads;    /* worker threads; 0: the number of online CPUs */
    actl_progress_fn progress; /* bytes of tensors written of the total, or NULL */
    void *progress_ctx;
    /* NULL, or a flag the merge polls between row blocks and copy chunks:
     * once *cancel is non-zero (a signal handler may set it: on Linux a
     * volatile sig_atomic_t is this int), the merge stops, removes its
     * temporary directory and returns ACTL_EIO "merge ... interrupted",
     * writing nothing. */
    const volatile int *cancel;
} actl_merge_opts;
actl_merge_opts actl_merge_default_opts(void);

typedef struct actl_merge_result {
    size_t tensors_merged;   /* tensors an adapter changed */
    size_t tensors_copied;   /* tensors passed through (converted when dtype asks) */
    uint64_t bytes_written;  /* tensor bytes written */
    size_t files_copied;     /* other files of the base directory copied */
} actl_merge_result;

/* Merges in[0..n) in order into the checkpoint directory base_dir and
 * writes a checkpoint directory out_dir of the same layout: the same
 * shard files (index rewritten when sizes change), config.json, tokenizer
 * and every other regular file copied. Each input applies with its weight:
 * LoRA/MoS scale the delta by W; DoRA gives W' = ((1-W) + W m/|V|_row) V
 * with V = Wb + W s B A (the adapter at W = 1, the base at W = 0); RoAd
 * takes theta*W and alpha^W; a whole tensor the adapter carries
 * (modules_to_save) gives (1-W) Wb + W S. Computes in fp32 and rounds once.
 * Streams: one tensor at a time from the mapped base, pages released
 * behind. out_dir must not exist; it appears complete (rename of a
 * temporary sibling) or not at all. Refuses, writing nothing:
 * bottleneck adapters (ACTL_EUNSUPPORTED), modules the base lacks
 * (ACTL_ENOTFOUND), shapes that do not fit, a RoAd group size that does
 * not divide (ACTL_ESHAPE), a recorded base model that differs from the
 * base's config "_name_or_path" (ACTL_EINVAL, unless force), DoRA with
 * unmerge (ACTL_EUNSUPPORTED), a near-singular RoAd pair on unmerge
 * (ACTL_EINVAL), an adapter tensor holding Inf or NaN, a weight whose
 * LoRA w*s or RoAd coefficients are not finite in float, an adapter on
 * the embeddings or output head of a base whose config ties them
 * (tie_word_embeddings; ACTL_EINVAL, unless force). A base element that
 * was finite and is not after the ops or after rounding to the output
 * dtype fails the merge (ACTL_EINVAL naming the tensor; nothing written).
 * LoRA deltas are laid out as PEFT does: [in, out] on the Conv1D layers
 * of GPT-2 family bases (config.json's model_type), [out, in] elsewhere,
 * whatever the adapter's fan_in_fan_out says. out may be NULL. */
int actl_merge(const char *base_dir, const char *out_dir, const actl_input *in, size_t n,
               const actl_merge_opts *o, actl_merge_result *out);

/* ------------------------------------------------------------------ */
/* Compose (DESIGN.md 9)                                               */
/* ------------------------------------------------------------------ */

typedef enum actl_compose_method {
    ACTL_COMPOSE_CAT = 1,        /* LoRA: concatenate factors; exact */
    ACTL_COMPOSE_SVD = 2,        /* LoRA: truncated SVD of the weighted delta sum */
    ACTL_COMPOSE_TIES = 3,       /* LoRA: TIES on full deltas, then SVD */
    ACTL_COMPOSE_DARE_LINEAR = 4,
    ACTL_COMPOSE_DARE_TIES = 5,
    ACTL_COMPOSE_MAGNITUDE_PRUNE = 6,
    ACTL_COMPOSE_LINEAR = 7,     /* LoRA: PEFT's factor-wise mix; inexact */
    ACTL_COMPOSE_SEQUENTIAL = 8, /* RoAd: per-pair product; exact */
    ACTL_COMPOSE_UNION = 9,      /* RoAd: disjoint modules/pairs combined; exact */
    ACTL_COMPOSE_STACK = 10      /* any kinds: a recipe in the store (actl_store_add_stack) */
} actl_compose_method;
/* "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune",
 * "linear", "sequential", "union", "stack". */
const char *actl_compose_method_name(actl_compose_method m);
int actl_compose_method_parse(const char *name, actl_compose_method *out);

typedef struct actl_compose_opts {
    actl_compose_method method;
    int rank;          /* target rank of the SVD methods; 0: the sum of the input ranks */
    double density;    /* ties, dare_*, magnitude_prune: fraction kept, (0, 1]; 0: 0.5 */
    uint64_t seed;     /* dare_*: the random stream; recorded in the lineage */
    int has_seed;      /* 0: a seed is drawn from the clock and recorded */
} actl_compose_opts;
actl_compose_opts actl_compose_default_opts(void);

/* Per-module report of a compose: for the SVD-based methods the relative
 * Frobenius error ||D - D_r|| / ||D|| of the truncation (0 for exact
 * methods). */
typedef struct actl_compose_report actl_compose_report;
size_t actl_compose_report_count(const actl_compose_report *r);
/* Module i's name (lent) and error. */
const char *actl_compose_report_module(const actl_compose_report *r, size_t i, double *rel_error);
/* sqrt(sum of squared discarded energy / sum of squared norms) over all modules. */
double actl_compose_report_overall(const actl_compose_report *r);
int actl_compose_report_exact(const actl_compose_report *r); /* 1 when no error was made */
void actl_compose_report_free(actl_compose_report *r);

/* Builds a new adapter from in[0..n) with o->method (not STACK). LoRA
 * results carry use_rslora false and lora_alpha = r; DoRA inputs are refused
 * for the factor methods; ranks checked where a method needs them equal.
 * MoS inputs are materialized first. Errors name the input and module.
 * report may be NULL. */
int actl_compose(const actl_input *in, size_t n, const actl_compose_opts *o,
                 actl_adapter **out, actl_compose_report **report);

/* The lineage JSON object text for a composed entry: {"method", "inputs":
 * [{"ref", "pack", "weight"}...], "options": {...}, "exact", "error":
 * {"overall", "modules": {name: rel}}} (error only for the SVD-based
 * methods). "options" holds only what the method uses: "rank" (svd and the
 * pruning methods; the largest rank of the result, with "rank_default":
 * true, when none was asked), "density" (pruning methods), "seed" (dare_*).
 * malloc'd; NULL with a message (out of memory, or a value JSON cannot
 * hold). */
char *actl_compose_lineage(const actl_input *in, size_t n, const actl_compose_opts *o,
                           const actl_compose_report *report);

/* Adds a stack: an ordered recipe of in[0..n) (any kinds), materializing
 * nothing. Inputs that have no pack in this store (PEFT directories) get
 * one. The entry's kind is ACTL_KIND_STACK, its pack NULL, its lineage the
 * recipe; its member packs stay alive (gc keeps them) for as long as it
 * exists. actl_inputs_add expands it again; actl_store_load refuses it
 * (ACTL_EUNSUPPORTED, saying it is a stack). Members naming different base
 * models: ACTL_EINVAL, unless o->base_model is given (the caller asserts it). */
int actl_store_add_stack(actl_store *s, const actl_input *in, size_t n, const actl_add_opts *o,
                         actl_entries **out);


/* ------------------------------------------------------------------ */
/* Models (DESIGN.md 4.3, 10)                                          */
/* ------------------------------------------------------------------ */

/* A LLaMA-family decoder's configuration and weights, read-only once loaded
 * and shareable by any number of batches (and threads). */
typedef struct actl_model actl_model;

typedef enum actl_rope_type {
    ACTL_ROPE_DEFAULT = 0, /* rope_scaling null */
    ACTL_ROPE_LINEAR = 1,  /* positions divided by factor */
    ACTL_ROPE_LLAMA3 = 2   /* Llama 3.1 frequency-dependent scaling */
} actl_rope_type;

typedef struct actl_model_info {
    const char *source;      /* "hf" or "llama2c" (static) */
    const char *model_id;    /* config.json "_name_or_path", or NULL (lent) */
    int64_t dim;             /* hidden_size */
    int64_t hidden;          /* intermediate_size */
    int64_t layers, heads, kv_heads, head_dim;
    int64_t vocab;
    int64_t max_seq;         /* max_position_embeddings (llama2.c: seq_len) */
    double norm_eps;         /* rms_norm_eps (llama2.c: 1e-5) */
    double rope_theta;       /* default 10000 */
    actl_rope_type rope_type;
    double rope_factor;      /* linear, llama3 */
    double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int64_t rope_original_max; /* llama3: original_max_position_embeddings */
    int tied;                /* the output head is the embedding table */
    int attention_bias;      /* q/k/v carry biases (Qwen2-style) */
    int widened;             /* every weight was widened to F32 at load */
    actl_dtype dtype;        /* the dtype the projection weights are stored in */
    int32_t bos_id, eos_id;  /* config.json bos/eos_token_id (first of a list);
                                llama2.c: 1 and 2; -1 when unknown */
    int64_t params;          /* elements over all weights (the head counted once if tied) */
} actl_model_info;

#define ACTL_MODEL_WIDEN 0x1 /* widen every weight to F32 at load (else each is kept
                                as stored and widened block by block when used) */

/* path: a Hugging Face directory (config.json with model_type "llama",
 * "mistral" or "qwen2", or architectures naming one of their *ForCausalLM;
 * weights in model.safetensors or shards with an index), or a llama2.c .bin
 * checkpoint (7 int32 header: dim, hidden, layers, heads, kv_heads, vocab -
 * negative for an untied head - and seq_len; fp32 tensors), whose q/k rows
 * are permuted into the HF rotate-half order and whose tensors take HF names
 * (DESIGN.md 4.3). ACTL_EUNSUPPORTED naming the architecture it does not run;
 * ACTL_ENOTFOUND naming a missing tensor; ACTL_ESHAPE naming a tensor of the
 * wrong shape; ACTL_EFORMAT for a truncated or lying file. */
int actl_model_load(const char *path, int flags, actl_model **out);
void actl_model_free(actl_model *m);
void actl_model_info_get(const actl_model *m, actl_model_info *out);
/* The model's linear and embedding modules with their shapes, for
 * actl_adapter_validate (lent, valid while the model lives). */
const actl_base *actl_model_base(const actl_model *m);

/* ------------------------------------------------------------------ */
/* Tokenizers (DESIGN.md 10)                                           */
/* ------------------------------------------------------------------ */

typedef struct actl_tokenizer actl_tokenizer;

/* path: a llama2.c tokenizer.bin; an HF tokenizer.json (SentencePiece-style
 * BPE with byte fallback, or byte-level BPE); a GPT-2-style vocab.json (with
 * merges.txt beside it) or encoder.json (with vocab.bpe); Meta's tiktoken
 * tokenizer.model; a .gguf file's vocabulary; or a directory holding one of
 * them (tokenizer.json first). pre: the byte-level pre-tokenizer by name -
 * "gpt2", "llama3", "qwen2", "smollm" (digits split individually, then
 * GPT-2's) - or NULL to take it from the file (tokenizer.json's
 * pre_tokenizer, tiktoken: llama3, vocab.json: gpt2, gguf: tokenizer.ggml.pre). */
int actl_tokenizer_load(const char *path, const char *pre, actl_tokenizer **out);
void actl_tokenizer_free(actl_tokenizer *t);
size_t actl_tokenizer_vocab_size(const actl_tokenizer *t);
/* BOS / EOS ids the file names, or -1. */
int32_t actl_tokenizer_bos(const actl_tokenizer *t);
int32_t actl_tokenizer_eos(const actl_tokenizer *t);

/* Whether the tokenizer's own files put BOS before a text (HF's
 * post_processor or tokenizer_config.json add_bos_token, GGUF's
 * tokenizer.ggml.add_bos_token; otherwise yes for SentencePiece-style and
 * tiktoken vocabularies, no for GPT-2-style ones), as HF's encode with
 * special tokens does. */
int actl_tokenizer_adds_bos(const actl_tokenizer *t);
/* Whether it is a SentencePiece-style tokenizer, whose pieces mark a word
 * start with a space (so the first piece of a text has one to drop). */
int actl_tokenizer_sentencepiece(const actl_tokenizer *t);

#define ACTL_TOK_BOS 0x1     /* prepend BOS (when the tokenizer has one) */
#define ACTL_TOK_SPECIAL 0x2 /* text spelling a special or added token becomes that token */

/* Encodes len bytes of UTF-8 text (invalid UTF-8 is ACTL_EINVAL). *ids is
 * malloc'd (may be NULL when *n is 0). */
int actl_tokenizer_encode(const actl_tokenizer *t, const char *text, size_t len, int flags,
                          int32_t **ids, size_t *n);
/* The bytes token id stands for (byte-level alphabet undone, "▁" made a
 * space, <0xNN> made its byte; special tokens give their text), lent and
 * valid while t lives; NULL for an id out of range. */
const char *actl_tokenizer_piece(const actl_tokenizer *t, int32_t id, size_t *len);
/* The text of ids, the pieces concatenated (a SentencePiece-style
 * tokenizer drops the space its normalizer put before the first piece).
 * Invalid or partial UTF-8 (a sequence cut between ids) is kept as bytes.
 * *text malloc'd and NUL-terminated. */
int actl_tokenizer_decode(const actl_tokenizer *t, const int32_t *ids, size_t n, char **text,
                          size_t *len);
/* The text of generated ids[0..n) as `generate` prints it, following the
 * token prev (the prompt's last id; -1: none): each id's piece in order,
 * except that an id in stop[0..n_stop) prints nothing, nor does an id
 * outside the tokenizer's vocabulary or a piece that is one control byte
 * (ASCII, neither printable nor white space: llama2.c's rule); a piece
 * right after the id bos (the caller's: the tokenizer's BOS, else the
 * model's) loses its leading space in a SentencePiece-style vocabulary.
 * Each id becomes prev for the next, so a text built call by call, each
 * call given the previous call's last id, equals the text of one call.
 * Bytes are kept as they are (no UTF-8 repair). *text malloc'd and
 * NUL-terminated. */
int actl_tokenizer_continuation(const actl_tokenizer *t, int32_t prev, int32_t bos,
                                const int32_t *stop, size_t n_stop, const int32_t *ids,
                                size_t n, char **text, size_t *len);

/* ------------------------------------------------------------------ */
/* The decoder: batches of sequences, each with its own adapter        */
/* ------------------------------------------------------------------ */

typedef struct actl_batch actl_batch;

typedef struct actl_batch_opts {
    int max_seqs;    /* sequences alive at once (default 32) */
    int64_t max_ctx; /* positions per sequence (prompt + new tokens); 0: the model's max_seq */
    int threads;     /* 0: every online CPU */
    int force;       /* accept adapters that name another base model than the model's
                        id (their shapes are checked all the same) */
} actl_batch_opts;
actl_batch_opts actl_batch_default_opts(void);

int actl_batch_new(const actl_model *m, const actl_batch_opts *o, actl_batch **out);
void actl_batch_free(actl_batch *b);

/* Prepares an adapter - in[0..n) applied in order on each module, n > 1 a
 * stack (DESIGN.md 3.5), each with its weight - for every request that names
 * the returned handle (> 0; 0 means no adapter). The adapters are converted
 * into the decoder's own form (fp32, DoRA factors and RoAd coefficients
 * precomputed, MoS materialized), so in[] need not outlive the call.
 * Validated against the model: ACTL_ENOTFOUND / ACTL_ESHAPE naming the
 * adapter and module that does not fit; ACTL_EINVAL when an adapter names a
 * base model (base_model_name_or_path) other than the model's id, both being
 * known (unless the batch's opts said force); ACTL_EUNSUPPORTED for a module the decoder does not run. */
int actl_batch_adapter(actl_batch *b, const actl_input *in, size_t n, int *handle);

typedef struct actl_request {
    const int32_t *prompt;   /* ids (with BOS if wanted), at least one */
    size_t n_prompt;
    int adapter;             /* a handle from actl_batch_adapter, or 0 */
    int64_t max_tokens;      /* new tokens to generate (0: only the prompt's logits / score) */
    const int32_t *score;    /* a continuation whose log-probability to compute, or NULL: */
    size_t n_score;          /* it is fed after the prompt, nothing is sampled */
    float temperature;       /* 0: greedy (the first largest logit) */
    int top_k;               /* 0: off */
    float top_p;             /* 1 (or 0): off */
    uint64_t seed;
    const int32_t *stop_ids; /* generation ends after emitting one of these */
    size_t n_stop_ids;
} actl_request;
/* Sets the fields to: no adapter, greedy, top_p 1, no stop ids. */
actl_request actl_request_default(void);

/* Adds a sequence; *seq is its slot (>= 0). The ids are copied.
 * ACTL_ELIMIT when prompt + score + max_tokens exceed max_ctx (message:
 * the lengths and the limit), or when max_seqs sequences are alive;
 * ACTL_EINVAL for an id outside the vocabulary or an unknown handle. */
int actl_batch_add(actl_batch *b, const actl_request *r, int *seq);

/* Runs every live, unfinished sequence one step: prompts (and score
 * continuations) not yet processed are prefilled together, the others
 * decode their last token; the base projections run once for all rows.
 * Then each generating sequence samples one token. *running (may be NULL):
 * sequences still unfinished after the step. */
int actl_batch_step(actl_batch *b, int *running);

typedef enum actl_finish {
    ACTL_RUNNING = 0,
    ACTL_FINISH_LENGTH = 1, /* max_tokens reached (or nothing to generate) */
    ACTL_FINISH_STOP = 2    /* a stop id was emitted (it is included in the tokens) */
} actl_finish;
actl_finish actl_batch_finished(const actl_batch *b, int seq);
/* The tokens generated so far and, per token, its log-probability under the
 * model (log-softmax of the logits at temperature 1). Lent until the next
 * step or remove. */
size_t actl_batch_tokens(const actl_batch *b, int seq, const int32_t **ids,
                         const float **logprobs);
/* The logits (vocab floats) the sequence's latest token was sampled from -
 * after a prompt-only request, those at the prompt's last position. NULL
 * before the first step. Lent until the next step or remove. */
const float *actl_batch_logits(const actl_batch *b, int seq);
/* A score request's result: the sum of log-probabilities of the
 * continuation and, per token, each one (lent). ACTL_EINVAL if seq had no
 * continuation or has not run. */
int actl_batch_score(const actl_batch *b, int seq, double *logprob, const float **per_token);
/* Frees the slot (its KV cache reused by the next add). */
void actl_batch_remove(actl_batch *b, int seq);

/* ------------------------------------------------------------------ */
/* Eval (DESIGN.md 11)                                                 */
/* ------------------------------------------------------------------ */

typedef enum actl_scorer {
    ACTL_SCORER_NONE = 0,     /* not scored */
    ACTL_SCORER_NUMBER = 1,   /* LLM-Adapters: commas deleted, the last -?\d+\.?\d*,
                                 correct when |pred - label| <= 0.001 */
    ACTL_SCORER_CHOICE = 2,   /* the first capital letter A-E anywhere */
    ACTL_SCORER_EXACT = 3,    /* the response, trimmed, equals the answer */
    ACTL_SCORER_CONTAINS = 4  /* the answer occurs in the response */
} actl_scorer;
/* "none", "number", "choice", "exact", "contains"; NULL if invalid. */
const char *actl_scorer_name(actl_scorer s);
int actl_scorer_parse(const char *name, actl_scorer *out);
/* Scores a response against an answer. *pred: the prediction the rule
 * extracted (malloc'd), NULL when there is none (then *correct is 0). */
int actl_score(actl_scorer s, const char *response, const char *answer, char **pred,
               int *correct);
/* LLM-Adapters' Alpaca prompt around an instruction, byte for byte
 * (../shared/data/math/README), malloc'd. */
char *actl_eval_prompt(const char *instruction);
/* The part of a completion that is scored: the text before a "### Response:"
 * of the model's own (LLM-Adapters score decode(prompt + output) split at
 * "### Response:", element 1), malloc'd. */
char *actl_eval_answer_text(const char *completion);

/* One request. Strings and arrays are owned by the list it is in. */
typedef struct actl_eval_req {
    char *id;
    char **adapter;          /* n_adapter refs (NAME[@V][:W] or a PEFT directory), applied
                                as a stack in order; n_adapter 0: no adapter */
    size_t n_adapter;
    char *prompt;            /* text, or NULL when prompt_ids are given */
    int32_t *prompt_ids;
    size_t n_prompt_ids;
    int64_t max_tokens;      /* -1: the run's default */
    double temperature;      /* default 0 (greedy) */
    double top_p;            /* default 1 */
    uint64_t seed;           /* default 0 */
    char **stop;             /* stop strings */
    size_t n_stop;
    char *answer;            /* expected answer, or NULL */
    actl_scorer scorer;
    char *continuation;      /* text whose log-probability is wanted, or NULL */
    int32_t *continuation_ids;
    size_t n_continuation_ids;
    int64_t line;            /* 1-based line of the JSONL file, or record index + 1 */
} actl_eval_req;

typedef struct actl_eval_reqs actl_eval_reqs;
/* Requests from a JSONL file (DESIGN.md 11; issue 7): each bad line is
 * reported through fn ("'FILE' line N: what is wrong") and skipped, the
 * rest kept. An unreadable file or no usable line: an error. */
int actl_eval_reqs_jsonl(const char *path, actl_problem_fn fn, void *ctx, actl_eval_reqs **out);
/* A dataset in the LLM-Adapters format: for each of the first `limit`
 * records (0: all), one request per adapter ref (adapters[i] is one ref,
 * or "none" for the base alone), id "<adapter>:<index>", prompt
 * actl_eval_prompt(instruction), scorer choice when the answer is a letter
 * A-E, else number. */
int actl_eval_reqs_dataset(const char *path, const char *const *adapters, size_t n_adapters,
                           size_t limit, actl_eval_reqs **out);
size_t actl_eval_reqs_count(const actl_eval_reqs *l);
const actl_eval_req *actl_eval_reqs_get(const actl_eval_reqs *l, size_t i);
void actl_eval_reqs_free(actl_eval_reqs *l);

/* One finished request, lent to the callback for the call only. */
typedef struct actl_eval_result {
    const actl_eval_req *req;
    const char *adapter;      /* the refs joined by "+", or "none" */
    size_t prompt_tokens, completion_tokens;
    const char *text;         /* the completion's text (stop string cut off) */
    const char *finish;       /* "length", "stop" (EOS, a stop id or a stop string), or
                                 "error": the request could not run (its adapter does not
                                 load or fit, its prompt does not encode or fit the
                                 context, it needs a tokenizer); text is then the message */
    const char *prediction;   /* scored requests: what the scorer extracted, or NULL */
    int correct;              /* 1 / 0; -1 when not scored */
    double logprob;           /* continuation requests: its log-probability */
    int has_logprob;
} actl_eval_result;

/* Per adapter label, after a run. */
typedef struct actl_eval_summary_row {
    const char *adapter;
    size_t requests, scored, correct;
    size_t completion_tokens;
    double seconds;           /* wall time from the run's start to its last request's end */
} actl_eval_summary_row;
typedef struct actl_eval_summary actl_eval_summary;
size_t actl_eval_summary_count(const actl_eval_summary *s);
const actl_eval_summary_row *actl_eval_summary_get(const actl_eval_summary *s, size_t i);
double actl_eval_summary_seconds(const actl_eval_summary *s); /* the whole run */
void actl_eval_summary_free(actl_eval_summary *s);

typedef struct actl_eval_opts {
    int batch;                 /* sequences in flight (default 8) */
    int64_t max_tokens;        /* default for requests without one (default 256) */
    actl_store *store;         /* resolves adapter names (may be NULL: directories only) */
    int force;                 /* as actl_batch_opts.force */
    int threads;               /* 0: every online CPU */
    const char *const *skip;   /* ids already done (resume): not run, not counted */
    size_t n_skip;
    /* Called as each request finishes (in finishing order); a nonzero return
     * stops the run with that code. */
    int (*on_result)(const actl_eval_result *r, void *ctx);
    void *ctx;
    actl_progress_fn progress; /* (requests done, requests total) */
    void *progress_ctx;
} actl_eval_opts;
actl_eval_opts actl_eval_default_opts(void);

/* Runs the requests with continuous batching: up to o->batch in flight, a
 * finished one's slot refilled at once from the queue, whatever its
 * adapter. Each distinct adapter list is loaded and prepared once. Prompts
 * are encoded as `generate` encodes them (BOS when the tokenizer adds one,
 * special tokens parsed); a request's text equals what `generate` gives
 * for the same prompt, adapter and sampling alone. tok may be NULL when
 * every request has ids. */
int actl_eval_run(const actl_model *m, const actl_tokenizer *tok, const actl_eval_reqs *l,
                  const actl_eval_opts *o, actl_eval_summary **out);

#ifdef __cplusplus
}
#endif

#endif /* ADAPTERCTL_H */
