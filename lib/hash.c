/* hash.c: SHA-256 (through OpenSSL's EVP interface) names packs and checks
 * tensors; XXH64 (written from the public xxHash specification) checks codec
 * frames, where SHA-256 would cost more than the decompression itself. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* ---- SHA-256 ------------------------------------------------------------ */

struct actl__sha256 {
    EVP_MD_CTX *ctx;
};

int actl__sha256_new(actl__sha256 **out)
{
    actl__sha256 *h = calloc(1, sizeof *h);
    if (!h || !(h->ctx = EVP_MD_CTX_new())) {
        free(h);
        return actl__oom();
    }
    if (EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        actl__sha256_free(h);
        return actl__err(ACTL_EIO, "cannot start a SHA-256 digest (libcrypto)");
    }
    *out = h;
    return ACTL_OK;
}

int actl__sha256_update(actl__sha256 *h, const void *p, size_t n)
{
    if (n && EVP_DigestUpdate(h->ctx, p, n) != 1)
        return actl__err(ACTL_EIO, "cannot update a SHA-256 digest (libcrypto)");
    return ACTL_OK;
}

int actl__sha256_final(actl__sha256 *h, unsigned char digest[32])
{
    int rc = ACTL_OK;
    unsigned int len = 0;
    if (!h)
        return actl__err(ACTL_EINVAL, "sha256: NULL digest state");
    if (EVP_DigestFinal_ex(h->ctx, digest, &len) != 1 || len != 32)
        rc = actl__err(ACTL_EIO, "cannot finish a SHA-256 digest (libcrypto)");
    actl__sha256_free(h);
    return rc;
}

void actl__sha256_free(actl__sha256 *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

void actl__hex(const unsigned char *bytes, size_t n, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[bytes[i] >> 4];
        hex[2 * i + 1] = digits[bytes[i] & 0xf];
    }
    hex[2 * n] = '\0';
}

int actl__sha256_hex(const void *p, size_t n, char hex[65])
{
    unsigned char d[32];
    unsigned int len = 0;
    /* EVP_Digest runs init/update/final on a context of its own. */
    if (EVP_Digest(p, n, d, &len, EVP_sha256(), NULL) != 1 || len != 32)
        return actl__err(ACTL_EIO, "cannot compute a SHA-256 digest (libcrypto)");
    actl__hex(d, 32, hex);
    return ACTL_OK;
}

/* ---- XXH64 ----------------------------------------------------------------
 * The xxHash specification (doc/xxhash_spec.md in the xxHash repository):
 * four 64-bit accumulators eat 32-byte stripes; then the accumulators
 * converge, the length is added, the tail is mixed in 8-, 4- and 1-byte
 * steps, and a final avalanche spreads every input bit over the result.
 * Input words are little-endian. */

#define P64_1 0x9E3779B185EBCA87u
#define P64_2 0xC2B2AE3D27D4EB4Fu
#define P64_3 0x165667B19E3779F9u
#define P64_4 0x85EBCA77C2B2AE63u
#define P64_5 0x27D4EB2F165667C5u

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    /* The compiler turns this into one load on a little-endian target; it
     * also keeps unaligned and big-endian reads right. */
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t rd32(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t lane)
{
    acc += lane * P64_2;
    return rotl64(acc, 31) * P64_1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t v)
{
    acc ^= xxh_round(0, v);
    return acc * P64_1 + P64_4;
}

uint64_t actl__xxh64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    /* No arithmetic on a NULL pointer, even + 0, for an empty input. */
    const unsigned char *end = n ? p + n : p;
    uint64_t acc;

    if (n >= 32) {
        uint64_t v1 = seed + P64_1 + P64_2, v2 = seed + P64_2, v3 = seed, v4 = seed - P64_1;
        const unsigned char *limit = end - 32;
        do {
            v1 = xxh_round(v1, rd64(p));
            v2 = xxh_round(v2, rd64(p + 8));
            v3 = xxh_round(v3, rd64(p + 16));
            v4 = xxh_round(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        acc = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        acc = xxh_merge(acc, v1);
        acc = xxh_merge(acc, v2);
        acc = xxh_merge(acc, v3);
        acc = xxh_merge(acc, v4);
    } else {
        acc = seed + P64_5;
    }
    acc += (uint64_t)n;

    for (; end - p >= 8; p += 8) {
        acc ^= xxh_round(0, rd64(p));
        acc = rotl64(acc, 27) * P64_1 + P64_4;
    }
    if (end - p >= 4) {
        acc ^= rd32(p) * P64_1;
        acc = rotl64(acc, 23) * P64_2 + P64_3;
        p += 4;
    }
    for (; p < end; p++) {
        acc ^= (uint64_t)*p * P64_5;
        acc = rotl64(acc, 11) * P64_1;
    }

    acc ^= acc >> 33;
    acc *= P64_2;
    acc ^= acc >> 29;
    acc *= P64_3;
    acc ^= acc >> 32;
    return acc;
}
