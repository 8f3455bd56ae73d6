/* tensor.c: dtypes, 16-bit float conversions and the tensor object. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[ACTL_DTYPE_COUNT] = {
    [ACTL_F32] = {"F32", 4}, [ACTL_F16] = {"F16", 2}, [ACTL_BF16] = {"BF16", 2},
    [ACTL_I32] = {"I32", 4}, [ACTL_I64] = {"I64", 8}, [ACTL_U8] = {"U8", 1},
    [ACTL_BOOL] = {"BOOL", 1}, [ACTL_F64] = {"F64", 8},
};

/* Real safetensors dtypes that this version refuses by name. */
static const char *const unsupported_dtypes[] = {
    "I8", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2",
    "F4", "C64", "C128", NULL,
};

const char *actl_dtype_name(actl_dtype dt)
{
    return (unsigned)dt < ACTL_DTYPE_COUNT ? dtypes[dt].name : NULL;
}

size_t actl_dtype_size(actl_dtype dt)
{
    return (unsigned)dt < ACTL_DTYPE_COUNT ? dtypes[dt].size : 0;
}

int actl__is_float(actl_dtype dt)
{
    return dt == ACTL_F32 || dt == ACTL_F16 || dt == ACTL_BF16 || dt == ACTL_F64;
}

int actl_dtype_parse(const char *name, actl_dtype *out)
{
    if (!name || !out)
        return actl__err(ACTL_EINVAL, "dtype: NULL argument");
    for (int i = 0; i < ACTL_DTYPE_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (actl_dtype)i;
            return ACTL_OK;
        }
    for (int i = 0; unsupported_dtypes[i]; i++)
        if (strcmp(name, unsupported_dtypes[i]) == 0)
            return actl__err(ACTL_EUNSUPPORTED, "dtype '%s' is not supported", name);
    return actl__err(ACTL_EFORMAT, "unknown dtype '%s'", name);
}

/* ---- 16-bit floats -------------------------------------------------------
 * Written as straight-line integer code with selects so that the loops
 * vectorize. IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
 * bfloat16: the high half of a binary32. */

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void actl_f16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t h = src[i];
        uint32_t sign = (h & 0x8000u) << 16;
        uint32_t em = h & 0x7fffu;
        /* Placing exponent+mantissa 13 bits up and scaling by 2^(127-15)
         * rebiases normals and turns subnormals (exponent 0) into the right
         * normal float in one multiply. Inf/NaN keep an all-ones exponent. */
        float scaled = u2f(em << 13) * 0x1p112f;
        uint32_t special = 0u - (uint32_t)(em >= 0x7c00u);
        uint32_t bits = (((em << 13) | 0x7f800000u) & special) | (f2u(scaled) & ~special);
        dst[i] = u2f(bits | sign);
    }
}

void actl_f32_to_f16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t x = f2u(src[i]);
        uint32_t sign = (x >> 16) & 0x8000u;
        uint32_t ax = x & 0x7fffffffu;
        /* NaN: keep the top payload bits, set the quiet bit. */
        uint32_t nan = 0x7e00u | ((ax >> 13) & 0x3ffu);
        /* Subnormal results (|x| < 2^-14): adding 0.5 (whose ulp is 2^-24,
         * the binary16 subnormal step) lets the FPU round to nearest even;
         * the bits above 0.5 count the steps (0x400 is the smallest normal). */
        uint32_t sub = f2u(u2f(ax) + 0.5f) - 0x3f000000u;
        /* Normal results: rebias the exponent by -112 and round the 13
         * dropped bits to nearest even before shifting them out. */
        uint32_t odd = (ax >> 13) & 1u;
        uint32_t norm = (ax + 0xc8000fffu + odd) >> 13;
        /* Select with masks, not branches, so the loop vectorizes. */
        uint32_t is_nan = 0u - (uint32_t)(ax > 0x7f800000u);
        uint32_t is_inf = 0u - (uint32_t)(ax >= 0x477ff000u); /* >= 65520 rounds to Inf */
        uint32_t is_sub = 0u - (uint32_t)(ax < 0x38800000u);
        uint32_t h = (sub & is_sub) | (norm & ~is_sub);
        h = (0x7c00u & is_inf) | (h & ~is_inf);
        h = (nan & is_nan) | (h & ~is_nan);
        dst[i] = (uint16_t)(h | sign);
    }
}

void actl_bf16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = u2f((uint32_t)src[i] << 16);
}

void actl_f32_to_bf16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t x = f2u(src[i]);
        uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
        uint32_t nan = (x >> 16) | 0x0040u;
        uint32_t is_nan = 0u - (uint32_t)((x & 0x7fffffffu) > 0x7f800000u);
        dst[i] = (uint16_t)((nan & is_nan) | (rounded & ~is_nan));
    }
}

/* ---- tensors ------------------------------------------------------------ */

int actl__shape_size(actl_dtype dt, int ndim, const int64_t *shape, int64_t *numel,
                     size_t *nbytes)
{
    size_t esz = actl_dtype_size(dt);
    if (!esz)
        return actl__err(ACTL_EINVAL, "invalid dtype %d", (int)dt);
    if (ndim < 0 || ndim > ACTL_MAX_DIMS)
        return actl__err(ACTL_EINVAL, "%d dimensions (at most %d)", ndim, ACTL_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return actl__err(ACTL_EINVAL, "negative dimension %lld", (long long)shape[i]);
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return actl__err(ACTL_ELIMIT, "shape product overflows");
        n *= shape[i];
    }
    if ((uint64_t)n > SIZE_MAX / esz || (uint64_t)n > (uint64_t)INT64_MAX / esz)
        return actl__err(ACTL_ELIMIT, "tensor byte size overflows");
    *numel = n;
    *nbytes = (size_t)n * esz;
    return ACTL_OK;
}

static int tensor_alloc(const char *name, actl_dtype dt, int ndim, const int64_t *shape,
                        actl_tensor **out)
{
    int64_t numel;
    size_t nbytes;
    if (!name || !out || (ndim > 0 && !shape))
        return actl__err(ACTL_EINVAL, "tensor: NULL argument");
    int rc = actl__shape_size(dt, ndim, shape, &numel, &nbytes);
    if (rc)
        return actl__err_wrap(rc, "tensor '%s'", name);
    actl_tensor *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return actl__oom();
    }
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->numel = numel;
    t->nbytes = nbytes;
    *out = t;
    return ACTL_OK;
}

int actl_tensor_new(const char *name, actl_dtype dt, int ndim, const int64_t *shape,
                    const void *data, actl_tensor **out)
{
    actl_tensor *t;
    int rc = tensor_alloc(name, dt, ndim, shape, &t);
    if (rc)
        return rc;
    /* Never malloc(0): keep a valid pointer for empty tensors. */
    t->data = data ? malloc(t->nbytes ? t->nbytes : 1) : calloc(t->nbytes ? t->nbytes : 1, 1);
    if (!t->data) {
        actl_tensor_free(t);
        return actl__oom();
    }
    if (data && t->nbytes)
        memcpy(t->data, data, t->nbytes);
    t->owned = true;
    *out = t;
    return ACTL_OK;
}

int actl__tensor_view(const char *name, actl_dtype dt, int ndim, const int64_t *shape,
                      const void *data, actl_tensor **out)
{
    actl_tensor *t;
    int rc = tensor_alloc(name, dt, ndim, shape, &t);
    if (rc)
        return rc;
    t->data = (void *)data;
    t->owned = false;
    *out = t;
    return ACTL_OK;
}

int actl_tensor_copy(const actl_tensor *t, const char *name, actl_tensor **out)
{
    if (!t)
        return actl__err(ACTL_EINVAL, "tensor copy: NULL tensor");
    return actl_tensor_new(name ? name : t->name, t->dtype, t->ndim, t->shape, t->data, out);
}

void actl_tensor_free(actl_tensor *t)
{
    if (!t)
        return;
    if (t->owned)
        free(t->data);
    free(t->name);
    free(t);
}

const char *actl_tensor_name(const actl_tensor *t) { return t->name; }
actl_dtype actl_tensor_dtype(const actl_tensor *t) { return t->dtype; }
int actl_tensor_ndim(const actl_tensor *t) { return t->ndim; }
const int64_t *actl_tensor_shape(const actl_tensor *t) { return t->shape; }
int64_t actl_tensor_numel(const actl_tensor *t) { return t->numel; }
size_t actl_tensor_nbytes(const actl_tensor *t) { return t->nbytes; }
const void *actl_tensor_data(const actl_tensor *t) { return t->data; }

const char *actl__shape_str(const actl_tensor *t, char *buf, size_t n)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "",
                                 (long long)t->shape[i]);
    if (used < n)
        snprintf(buf + used, n - used, "]");
    return buf;
}

int actl_tensor_to_f32(const actl_tensor *t, float *dst)
{
    if (!t || !dst)
        return actl__err(ACTL_EINVAL, "tensor_to_f32: NULL argument");
    size_t n = (size_t)t->numel;
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case ACTL_F32:
        memcpy(dst, src, n * 4);
        return ACTL_OK;
    case ACTL_F16:
    case ACTL_BF16: {
        /* The source may be unaligned (a view into a file): convert in
         * chunks through an aligned buffer. */
        uint16_t buf[1024];
        for (size_t i = 0; i < n; i += 1024) {
            size_t m = n - i < 1024 ? n - i : 1024;
            memcpy(buf, src + 2 * i, 2 * m);
            if (t->dtype == ACTL_F16)
                actl_f16_to_f32(buf, dst + i, m);
            else
                actl_bf16_to_f32(buf, dst + i, m);
        }
        return ACTL_OK;
    }
    case ACTL_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            dst[i] = (float)d;
        }
        return ACTL_OK;
    default:
        return actl__err(ACTL_EUNSUPPORTED, "tensor '%s': %s is not a floating-point dtype",
                         t->name, actl_dtype_name(t->dtype));
    }
}
