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

#endif /* ACTL_INTERNAL_H */
