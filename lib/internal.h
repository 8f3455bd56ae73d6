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
    char *config_compact;     /* actl__json_dump(config, -1), for actl_adapter_config */
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

#endif /* ACTL_INTERNAL_H */
