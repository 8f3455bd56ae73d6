/* codec.c: one tensor's bytes as a self-checking frame of zstd-compressed
 * byte planes (DESIGN.md 6).
 *
 * Floating-point weights compress poorly as plain bytes because each element
 * mixes a predictable exponent with noise-like mantissa bits. Regrouping the
 * bytes so that every exponent lands in one plane (ZipNN's observation: for
 * BF16 the exponent straddles the two bytes, so the sign has to move out of
 * the way) lets zstd's entropy coder shrink that plane to ~2.6 bits a byte
 * while the mantissa planes, which do not shrink, are stored as they are.
 *
 * Frame layout, little-endian:
 *    0  4  magic "ACTZ"
 *    4  1  frame version (1)
 *    5  1  dtype (actl_dtype)
 *    6  1  transform: 0 none (one plane of the bytes), 1 BF16, 2 F16, 3 F32
 *    7  1  plane count P (1, 2 or 4; fixed by the transform)
 *    8  8  raw size n
 *   16  8  XXH64 (seed 0) of the n raw bytes
 *   24  P x 24, per plane: u8 mode (0 raw, 1 one zstd frame), 7 zero bytes,
 *       u64 the plane's raw size (n / P), u64 its stored size
 *   then the P payloads back to back; the frame ends with the last one.
 *
 * Planes, for element value v (read little-endian):
 *   BF16: exponent (v >> 7) & 0xff; sign and mantissa (v >> 8 & 0x80) | (v & 0x7f)
 *   F16:  high bytes v >> 8 (sign, exponent, two mantissa bits); low bytes
 *   F32:  exponent (v >> 23) & 0xff; sign and top mantissa bits
 *         (v >> 24 & 0x80) | (v >> 16 & 0x7f); then bits 8-15; then bits 0-7
 *   others: the bytes as they are. */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>
#include <zstd_errors.h>

#define FRAME_MAGIC "ACTZ"
#define FRAME_VERSION 1
#define HDR_FIXED 24
#define HDR_PLANE 24
#define MAX_PLANES 4

enum { T_NONE = 0, T_BF16 = 1, T_F16 = 2, T_F32 = 3 };
enum { MODE_RAW = 0, MODE_ZSTD = 1 };

/* Elements per merge step: small enough that a step's planes stay in L1. */
#define CHUNK 4096

static int transform_of(actl_dtype dt)
{
    switch (dt) {
    case ACTL_BF16: return T_BF16;
    case ACTL_F16: return T_F16;
    case ACTL_F32: return T_F32;
    default: return T_NONE;
    }
}

static int planes_of(int transform)
{
    return transform == T_F32 ? 4 : transform == T_NONE ? 1 : 2;
}

void actl__put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

void actl__put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

uint32_t actl__get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t actl__get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- zstd contexts ---------------------------------------------------------
 * A context costs hundreds of kilobytes and its first use initialises its
 * tables, which dominates for the small tensors adapters are made of; so
 * every thread keeps one compression and one decompression context. The
 * _Thread_local pointers keep them reachable for leak checkers; the key's
 * destructor frees them when a thread other than the main one exits. */

static _Thread_local ZSTD_CCtx *tl_cctx;
static _Thread_local ZSTD_DCtx *tl_dctx;
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static int ctx_key_ok;

static void ctx_release(void *unused)
{
    (void)unused;
    ZSTD_freeCCtx(tl_cctx);
    ZSTD_freeDCtx(tl_dctx);
    tl_cctx = NULL;
    tl_dctx = NULL;
}

static void ctx_key_init(void) { ctx_key_ok = pthread_key_create(&ctx_key, ctx_release) == 0; }

static void ctx_register(void)
{
    pthread_once(&ctx_once, ctx_key_init);
    /* Any non-NULL value makes the destructor run at thread exit. */
    if (ctx_key_ok)
        (void)pthread_setspecific(ctx_key, &ctx_key);
}

static ZSTD_CCtx *get_cctx(void)
{
    if (!tl_cctx && (tl_cctx = ZSTD_createCCtx()))
        ctx_register();
    return tl_cctx;
}

static ZSTD_DCtx *get_dctx(void)
{
    if (!tl_dctx && (tl_dctx = ZSTD_createDCtx()))
        ctx_register();
    return tl_dctx;
}

/* ---- planes ----------------------------------------------------------------
 * Byte-wise loads and stores keep these endian-neutral; gcc -O3 vectorizes
 * each loop (interleaved loads and stores become shuffles). The merges are
 * kept out of line: inlined into the chunk loop of actl__codec_decompress,
 * gcc no longer sees their restrict promises and leaves them scalar, at a
 * seventh of the speed. */
#if defined(__GNUC__)
#define OUT_OF_LINE __attribute__((noinline))
#else
#define OUT_OF_LINE
#endif

static void split_bf16(const unsigned char *restrict src, size_t n, unsigned char *restrict e,
                       unsigned char *restrict sm)
{
    for (size_t i = 0; i < n; i++) {
        unsigned lo = src[2 * i], hi = src[2 * i + 1];
        e[i] = (unsigned char)((hi << 1) | (lo >> 7));
        sm[i] = (unsigned char)((hi & 0x80u) | (lo & 0x7fu));
    }
}

OUT_OF_LINE
static void merge_bf16(const unsigned char *restrict e, const unsigned char *restrict sm,
                       size_t n, unsigned char *restrict dst)
{
    for (size_t i = 0; i < n; i++) {
        unsigned ex = e[i], s = sm[i];
        dst[2 * i] = (unsigned char)((ex << 7) | (s & 0x7fu));
        dst[2 * i + 1] = (unsigned char)((s & 0x80u) | (ex >> 1));
    }
}

static void split_f16(const unsigned char *restrict src, size_t n, unsigned char *restrict hi,
                      unsigned char *restrict lo)
{
    for (size_t i = 0; i < n; i++) {
        lo[i] = src[2 * i];
        hi[i] = src[2 * i + 1];
    }
}

OUT_OF_LINE
static void merge_f16(const unsigned char *restrict hi, const unsigned char *restrict lo, size_t n,
                      unsigned char *restrict dst)
{
    for (size_t i = 0; i < n; i++) {
        dst[2 * i] = lo[i];
        dst[2 * i + 1] = hi[i];
    }
}

static void split_f32(const unsigned char *restrict src, size_t n, unsigned char *restrict e,
                      unsigned char *restrict sm, unsigned char *restrict mid,
                      unsigned char *restrict low)
{
    for (size_t i = 0; i < n; i++) {
        unsigned b0 = src[4 * i], b1 = src[4 * i + 1], b2 = src[4 * i + 2], b3 = src[4 * i + 3];
        e[i] = (unsigned char)((b3 << 1) | (b2 >> 7));
        sm[i] = (unsigned char)((b3 & 0x80u) | (b2 & 0x7fu));
        mid[i] = (unsigned char)b1;
        low[i] = (unsigned char)b0;
    }
}

OUT_OF_LINE
static void merge_f32(const unsigned char *restrict e, const unsigned char *restrict sm,
                      const unsigned char *restrict mid, const unsigned char *restrict low,
                      size_t n, unsigned char *restrict dst)
{
    for (size_t i = 0; i < n; i++) {
        unsigned ex = e[i], s = sm[i];
        dst[4 * i] = low[i];
        dst[4 * i + 1] = mid[i];
        dst[4 * i + 2] = (unsigned char)((ex << 7) | (s & 0x7fu));
        dst[4 * i + 3] = (unsigned char)((s & 0x80u) | (ex >> 1));
    }
}

/* ---- compression ------------------------------------------------------------ */

size_t actl__codec_bound(actl_dtype dt, size_t n)
{
    /* Planes that do not shrink are stored raw, so no plane exceeds its raw
     * size. */
    size_t hdr = HDR_FIXED + HDR_PLANE * (size_t)planes_of(transform_of(dt));
    return n > SIZE_MAX - hdr ? SIZE_MAX : hdr + n;
}

/* Exponent planes are close to independent draws from a narrow
 * distribution: matches found by a normal zstd level replace cheap
 * Huffman-coded literals with costly sequences (measured on N(0, 0.02) BF16
 * exponents: 3.25 bits a byte at level 3, 2.88 at level 1, 2.60 at level 19,
 * 2.55 the entropy). The smallest hash table and the longest minimum match
 * leave almost only literals (2.61 bits) and run several times faster than
 * level 3; runs of zeros are still found through the repeat offsets. */
static int set_params(ZSTD_CCtx *c, int level, int exponent)
{
    size_t r = ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
    if (!ZSTD_isError(r))
        r = ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    if (!ZSTD_isError(r))
        r = ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
    if (!ZSTD_isError(r))
        r = ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
    if (exponent) {
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(c, ZSTD_c_strategy, ZSTD_fast);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(c, ZSTD_c_hashLog, 6);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(c, ZSTD_c_minMatch, 7);
    }
    if (ZSTD_isError(r))
        return actl__err(ACTL_EINVAL, "cannot set zstd level %d: %s", level,
                         ZSTD_getErrorName(r));
    return ACTL_OK;
}

/* Compresses one plane into out (room for raw - 1 bytes: a zstd frame is only
 * worth keeping when it is smaller than the plane) or copies it raw. */
static int put_plane(ZSTD_CCtx *c, const unsigned char *plane, size_t raw, int level,
                     int exponent, unsigned char *desc, unsigned char *out, size_t *stored)
{
    int rc;
    int mode = MODE_RAW;
    size_t size = raw;
    if (raw > 1) {
        if ((rc = set_params(c, level, exponent)))
            return rc;
        size_t r = ZSTD_compress2(c, out, raw - 1, plane, raw);
        if (!ZSTD_isError(r)) {
            mode = MODE_ZSTD;
            size = r;
        } else if (ZSTD_getErrorCode(r) != ZSTD_error_dstSize_tooSmall) {
            return actl__err(ACTL_EIO, "zstd compression failed: %s", ZSTD_getErrorName(r));
        }
    }
    if (mode == MODE_RAW && raw)
        memcpy(out, plane, raw);
    memset(desc, 0, HDR_PLANE);
    desc[0] = (unsigned char)mode;
    actl__put_le64(desc + 8, raw);
    actl__put_le64(desc + 16, size);
    *stored = size;
    return ACTL_OK;
}

int actl__codec_compress(actl_dtype dt, const void *raw, size_t n, int level, void *dst,
                         size_t cap, size_t *written)
{
    int rc = ACTL_OK;
    unsigned char *scratch = NULL;
    size_t esz = actl_dtype_size(dt);
    if (!esz)
        return actl__err(ACTL_EINVAL, "codec: invalid dtype %d", (int)dt);
    if ((n && !raw) || !dst || !written)
        return actl__err(ACTL_EINVAL, "codec: NULL argument");
    if (n % esz)
        return actl__err(ACTL_EINVAL, "codec: %zu bytes is not a whole number of %s elements", n,
                         actl_dtype_name(dt));
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
        return actl__err(ACTL_EINVAL, "codec: zstd level %d is outside [%d, %d]", level,
                         ZSTD_minCLevel(), ZSTD_maxCLevel());
    if (cap < actl__codec_bound(dt, n))
        return actl__err(ACTL_EINVAL, "codec: %zu bytes of room, %zu needed", cap,
                         actl__codec_bound(dt, n));

    int transform = transform_of(dt), np = planes_of(transform);
    size_t q = n / (size_t)np; /* each plane's raw size */
    const unsigned char *planes[MAX_PLANES];
    if (transform == T_NONE) {
        planes[0] = raw;
    } else {
        if (!(scratch = malloc(n ? n : 1))) {
            rc = actl__oom();
            goto out;
        }
        for (int k = 0; k < np; k++)
            planes[k] = scratch + (size_t)k * q;
        if (transform == T_BF16)
            split_bf16(raw, q, scratch, scratch + q);
        else if (transform == T_F16)
            split_f16(raw, q, scratch, scratch + q);
        else
            split_f32(raw, q, scratch, scratch + q, scratch + 2 * q, scratch + 3 * q);
    }

    ZSTD_CCtx *c = get_cctx();
    if (!c) {
        rc = actl__oom();
        goto out;
    }
    unsigned char *d = dst;
    memcpy(d, FRAME_MAGIC, 4);
    d[4] = FRAME_VERSION;
    d[5] = (unsigned char)dt;
    d[6] = (unsigned char)transform;
    d[7] = (unsigned char)np;
    actl__put_le64(d + 8, n);
    actl__put_le64(d + 16, actl__xxh64(raw, n, 0));
    size_t off = HDR_FIXED + HDR_PLANE * (size_t)np;
    for (int k = 0; k < np; k++) {
        size_t stored = 0;
        int exponent = transform != T_NONE && k == 0;
        if ((rc = put_plane(c, planes[k], q, level, exponent, d + HDR_FIXED + HDR_PLANE * k,
                            d + off, &stored)))
            goto out;
        off += stored;
    }
    *written = off;
out:
    free(scratch);
    return rc;
}

/* ---- decompression ---------------------------------------------------------- */

/* Merges m elements of the planes p into dst. */
static void merge_chunk(int transform, const unsigned char *const *p, size_t m,
                        unsigned char *dst)
{
    switch (transform) {
    case T_BF16: merge_bf16(p[0], p[1], m, dst); break;
    case T_F16: merge_f16(p[0], p[1], m, dst); break;
    case T_F32: merge_f32(p[0], p[1], p[2], p[3], m, dst); break;
    default: break;
    }
}

int actl__codec_decompress(const void *frame, size_t len, actl_dtype dt, void *dst,
                           size_t raw_size, const char *what)
{
    int rc = ACTL_OK;
    unsigned char *scratch = NULL;
    const unsigned char *f = frame;
    unsigned char *out = dst;
    size_t esz = actl_dtype_size(dt);
    if (!what)
        what = "codec frame";
    if (!esz)
        return actl__err(ACTL_EINVAL, "%s: invalid dtype %d", what, (int)dt);
    if ((len && !frame) || (raw_size && !dst))
        return actl__err(ACTL_EINVAL, "%s: NULL argument", what);
    if (raw_size % esz)
        return actl__err(ACTL_EINVAL, "%s: %zu bytes is not a whole number of %s elements",
                         what, raw_size, actl_dtype_name(dt));

    /* Everything the header claims is checked before dst is touched or any
     * memory sized by the frame is allocated. */
    if (len < HDR_FIXED)
        return actl__err(ACTL_ECORRUPT, "%s: frame of %zu bytes is shorter than its header",
                         what, len);
    if (memcmp(f, FRAME_MAGIC, 4) != 0)
        return actl__err(ACTL_ECORRUPT, "%s: not a codec frame (bad magic)", what);
    if (f[4] != FRAME_VERSION)
        return actl__err(ACTL_ECORRUPT, "%s: unknown frame version %u", what, f[4]);
    if (f[5] != (unsigned)dt)
        return actl__err(ACTL_ECORRUPT, "%s: frame holds dtype %u, expected %s", what, f[5],
                         actl_dtype_name(dt));
    int transform = transform_of(dt), np = planes_of(transform);
    if (f[6] != (unsigned)transform || f[7] != (unsigned)np)
        return actl__err(ACTL_ECORRUPT,
                         "%s: frame uses transform %u with %u planes, %s needs %d with %d",
                         what, f[6], f[7], actl_dtype_name(dt), transform, np);
    uint64_t n = actl__get_le64(f + 8);
    if (n != raw_size)
        return actl__err(ACTL_ECORRUPT, "%s: frame claims %llu raw bytes, the tensor has %zu",
                         what, (unsigned long long)n, raw_size);
    uint64_t sum = actl__get_le64(f + 16);
    size_t hdr = HDR_FIXED + HDR_PLANE * (size_t)np;
    if (len < hdr)
        return actl__err(ACTL_ECORRUPT, "%s: frame of %zu bytes is shorter than its header",
                         what, len);
    size_t q = raw_size / (size_t)np;
    const unsigned char *payload[MAX_PLANES];
    int mode[MAX_PLANES], nz = 0;
    size_t off = hdr;
    for (int k = 0; k < np; k++) {
        const unsigned char *desc = f + HDR_FIXED + HDR_PLANE * k;
        uint64_t praw = actl__get_le64(desc + 8), stored = actl__get_le64(desc + 16);
        mode[k] = desc[0];
        for (int i = 1; i < 8; i++)
            if (desc[i])
                return actl__err(ACTL_ECORRUPT, "%s: plane %d: reserved bytes are not zero",
                                 what, k);
        if (mode[k] != MODE_RAW && mode[k] != MODE_ZSTD)
            return actl__err(ACTL_ECORRUPT, "%s: plane %d: unknown mode %d", what, k, mode[k]);
        if (praw != q)
            return actl__err(ACTL_ECORRUPT,
                             "%s: plane %d claims %llu raw bytes, %s of %zu bytes needs %zu",
                             what, k, (unsigned long long)praw, actl_dtype_name(dt), raw_size, q);
        if (stored > len - off)
            return actl__err(ACTL_ECORRUPT,
                             "%s: plane %d claims %llu stored bytes, %zu are left in the frame",
                             what, k, (unsigned long long)stored, len - off);
        payload[k] = f + off;
        if (mode[k] == MODE_RAW) {
            if (stored != q)
                return actl__err(ACTL_ECORRUPT,
                                 "%s: raw plane %d stores %llu bytes, its raw size is %zu",
                                 what, k, (unsigned long long)stored, q);
        } else {
            if (q == 0)
                return actl__err(ACTL_ECORRUPT, "%s: plane %d is empty but not stored raw", what,
                                 k);
            unsigned long long content = ZSTD_getFrameContentSize(payload[k], (size_t)stored);
            if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN)
                return actl__err(ACTL_ECORRUPT, "%s: plane %d: not a zstd frame with a size",
                                 what, k);
            if (content != q)
                return actl__err(ACTL_ECORRUPT,
                                 "%s: plane %d: zstd frame claims %llu bytes, the plane has %zu",
                                 what, k, content, q);
            size_t fs = ZSTD_findFrameCompressedSize(payload[k], (size_t)stored);
            if (ZSTD_isError(fs) || fs != stored)
                return actl__err(ACTL_ECORRUPT,
                                 "%s: plane %d: zstd frame does not fill its %llu bytes", what,
                                 k, (unsigned long long)stored);
            nz++;
        }
        off += (size_t)stored;
    }
    if (off != len)
        return actl__err(ACTL_ECORRUPT, "%s: %zu bytes after the last plane", what, len - off);

    /* Where the zstd planes go: the first one into the last q bytes of dst
     * (no scratch for the usual case of one compressible plane), any others
     * into scratch. With one plane there is no merge and that is all of dst.
     * The merge moves forward and copies each chunk of the tail out before
     * writing the chunk; the writes for elements [0, i] end at byte
     * np * (i + 1) <= (np - 1) * q + i + 1, the tail's byte i + 1, so they
     * never reach a tail byte still to be read. */
    const unsigned char *src[MAX_PLANES];
    int in_dst = -1;
    if (nz > 1 && !(scratch = malloc((size_t)(nz - 1) * q))) {
        rc = actl__oom();
        goto out;
    }
    ZSTD_DCtx *dc = nz ? get_dctx() : NULL;
    if (nz && !dc) {
        rc = actl__oom();
        goto out;
    }
    size_t used = 0;
    for (int k = 0; k < np; k++) {
        if (mode[k] == MODE_RAW) {
            src[k] = payload[k];
            continue;
        }
        unsigned char *to;
        if (in_dst < 0) {
            in_dst = k;
            to = out + raw_size - q;
        } else {
            to = scratch + used;
            used += q;
        }
        size_t stored = (size_t)actl__get_le64(f + HDR_FIXED + HDR_PLANE * k + 16);
        size_t r = ZSTD_decompressDCtx(dc, to, q, payload[k], stored);
        if (ZSTD_isError(r) || r != q) {
            rc = actl__err(ACTL_ECORRUPT, "%s: plane %d: %s", what, k,
                           ZSTD_isError(r) ? ZSTD_getErrorName(r) : "zstd frame is short");
            goto out;
        }
        src[k] = to;
    }

    if (transform == T_NONE) {
        if (in_dst < 0 && raw_size)
            memcpy(out, src[0], raw_size);
    } else {
        unsigned char tmp[CHUNK];
        const unsigned char *p[MAX_PLANES];
        for (size_t i0 = 0; i0 < q; i0 += CHUNK) {
            size_t m = q - i0 < CHUNK ? q - i0 : CHUNK;
            for (int k = 0; k < np; k++)
                p[k] = src[k] + i0;
            /* The plane in dst is copied out before the merge overwrites
             * it, which also keeps the merge's restrict promises. */
            if (in_dst >= 0) {
                memcpy(tmp, p[in_dst], m);
                p[in_dst] = tmp;
            }
            merge_chunk(transform, p, m, out + (size_t)np * i0);
        }
    }

    if (actl__xxh64(out, raw_size, 0) != sum)
        rc = actl__err(ACTL_ECORRUPT, "%s: checksum mismatch after decompression", what);
out:
    free(scratch);
    return rc;
}
