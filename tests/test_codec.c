/* test_codec.c: the hashes (lib/hash.c) against published vectors and an
 * independent XXH64 (the one inside libzstd, through its frame checksums),
 * and the byte-plane codec (lib/codec.c): exact round trips for every dtype,
 * the documented frame layout, and refusal of every kind of damaged frame. */
#include "testutil.h"

#include "internal.h"

#include <math.h>
#include <pthread.h>

#include <zstd.h>

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(rnd64() >> 32);
}

/* n floats of a rough normal (sum of uniforms) with standard deviation ~s. */
static void fill_normalish(float *f, size_t n, double s)
{
    for (size_t i = 0; i < n; i++) {
        double a = 0;
        for (int k = 0; k < 4; k++)
            a += (double)(rnd64() >> 11) / 9007199254740992.0 - 0.5;
        f[i] = (float)(a * s * 1.7);
    }
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Compresses n bytes of dt at the default level; the frame is malloc'd to
 * exactly its size, so that ASan sees any read past it. */
static unsigned char *compress(actl_dtype dt, const void *raw, size_t n, size_t *len)
{
    size_t cap = actl__codec_bound(dt, n);
    unsigned char *buf = malloc(cap);
    assert_non_null(buf);
    assert_ok(actl__codec_compress(dt, raw, n, ACTL_CODEC_LEVEL, buf, cap, len));
    assert_true(*len <= cap);
    unsigned char *exact = malloc(*len);
    assert_non_null(exact);
    memcpy(exact, buf, *len);
    free(buf);
    return exact;
}

#define GUARD 64

/* Decompresses into a buffer of n bytes followed by a guard; checks that the
 * guard is intact whatever the outcome. Returns the code; *out (when not
 * NULL) gets the n bytes, malloc'd. */
static int decompress(const unsigned char *frame, size_t len, actl_dtype dt, size_t n,
                      unsigned char **out)
{
    unsigned char *dst = malloc(n + GUARD);
    assert_non_null(dst);
    memset(dst + n, 0xc3, GUARD);
    int rc = actl__codec_decompress(frame, len, dt, dst, n, "tensor 't'");
    for (size_t i = 0; i < GUARD; i++)
        if (dst[n + i] != 0xc3)
            fail_msg("decompression wrote past the tensor (byte %zu)", n + i);
    if (out)
        *out = dst;
    else
        free(dst);
    return rc;
}

static void round_trip(actl_dtype dt, const void *raw, size_t n)
{
    size_t len;
    unsigned char *frame = compress(dt, raw, n, &len), *back;
    assert_ok(decompress(frame, len, dt, n, &back));
    if (n && memcmp(back, raw, n) != 0)
        fail_msg("%s round trip of %zu bytes differs", actl_dtype_name(dt), n);
    free(back);
    free(frame);
}

static int planes_of(actl_dtype dt)
{
    return dt == ACTL_F32 ? 4 : (dt == ACTL_BF16 || dt == ACTL_F16) ? 2 : 1;
}

/* ---- hashes ------------------------------------------------------------- */

static void test_xxh64__matches_published_vectors(void **state)
{
    (void)state;
    /* From the xxHash specification's reference and widely used test suites. */
    static const struct {
        const char *s;
        uint64_t h;
    } strs[] = {
        {"", 0xEF46DB3751D8E999ull},
        {"a", 0xD24EC4F1A98C6E5Bull},
        {"as", 0x1C330FB2D66BE179ull},
        {"asd", 0x631C37CE72A97393ull},
        {"asdf", 0x415872F599CEA71Eull},
        /* 63 bytes: one stripe, three 8-byte lanes, one 4-byte, three 1-byte steps */
        {"Call me Ishmael. Some years ago--never mind how long precisely-",
         0x02A2E85470D6FD96ull},
    };
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        assert_int_equal(actl__xxh64(strs[i].s, strlen(strs[i].s), 0), strs[i].h);

    /* xxhsum's sanity buffer: byte i is the top byte of 2654435761 *
     * 11400714785074694797^i (mod 2^64); lengths and seeds as xxhsum checks. */
    unsigned char buf[222];
    uint64_t gen = 2654435761u;
    for (size_t i = 0; i < sizeof buf; i++) {
        buf[i] = (unsigned char)(gen >> 56);
        gen *= 11400714785074694797ull;
    }
    static const struct {
        size_t len;
        uint64_t seed, h;
    } vec[] = {
        {0, 0, 0xEF46DB3751D8E999ull},    {0, 2654435761u, 0xAC75FDA2929B17EFull},
        {1, 0, 0xE934A84ADB052768ull},    {1, 2654435761u, 0x5014607643A9B4C3ull},
        {4, 0, 0x9136A0DCA57457EEull},    {14, 0, 0x8282DCC4994E35C8ull},
        {14, 2654435761u, 0xC3BD6BF63DEB6DF0ull}, {222, 0, 0xB641AE8CB691C174ull},
        {222, 2654435761u, 0x20CB8AB7AE10C14Aull},
    };
    for (size_t i = 0; i < sizeof vec / sizeof *vec; i++)
        assert_int_equal(actl__xxh64(buf, vec[i].len, vec[i].seed), vec[i].h);
    assert_int_equal(actl__xxh64(NULL, 0, 0), 0xEF46DB3751D8E999ull);
}

/* A zstd frame with a checksum ends with the low 32 bits of XXH64 (seed 0)
 * of its content, computed by libzstd's own xxHash: an independent reference
 * for every length, so every stripe count and tail combination is covered,
 * at every alignment. */
static void test_xxh64__low_half_matches_libzstd_for_every_length(void **state)
{
    (void)state;
    enum { MAXLEN = 300 };
    unsigned char *data = malloc(200000 + 8);
    size_t cap = ZSTD_compressBound(200000);
    unsigned char *z = malloc(cap);
    ZSTD_CCtx *c = ZSTD_createCCtx();
    assert_non_null(data);
    assert_non_null(z);
    assert_non_null(c);
    fill_random(data, 200000 + 8);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1)));
    size_t lens[MAXLEN + 4];
    size_t nl = 0;
    for (size_t n = 0; n < MAXLEN; n++)
        lens[nl++] = n;
    lens[nl++] = 4096 + 7;
    lens[nl++] = 65536 + 31;
    lens[nl++] = 200000;
    for (size_t k = 0; k < nl; k++) {
        size_t n = lens[k];
        for (size_t align = 0; align < (n < 64 ? 8u : 2u); align++) {
            const unsigned char *p = data + align;
            size_t r = ZSTD_compress2(c, z, cap, p, n);
            assert_false(ZSTD_isError(r));
            uint32_t want = (uint32_t)z[r - 4] | (uint32_t)z[r - 3] << 8 |
                            (uint32_t)z[r - 2] << 16 | (uint32_t)z[r - 1] << 24;
            if ((uint32_t)actl__xxh64(p, n, 0) != want)
                fail_msg("XXH64 of %zu bytes at offset %zu differs from libzstd's", n, align);
        }
    }
    ZSTD_freeCCtx(c);
    free(z);
    free(data);
}

static void test_sha256__matches_published_vectors(void **state)
{
    (void)state;
    char hex[65];
    assert_ok(actl__sha256_hex("", 0, hex));
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_ok(actl__sha256_hex("abc", 3, hex));
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_ok(actl__sha256_hex(two, strlen(two), hex));
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* FIPS 180-2's million 'a', streamed in uneven pieces. */
static void test_sha256__streams_in_pieces(void **state)
{
    (void)state;
    char *a = malloc(1000000);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    actl__sha256 *h;
    assert_ok(actl__sha256_new(&h));
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t k = step < 1000000 - off ? step : 1000000 - off;
        assert_ok(actl__sha256_update(h, a + off, k));
        off += k;
        step = step * 3 + 1;
    }
    assert_ok(actl__sha256_update(h, a, 0));
    unsigned char d[32];
    char hex[65];
    assert_ok(actl__sha256_final(h, d));
    actl__hex(d, 32, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    actl__sha256_free(NULL);
    assert_err(actl__sha256_final(NULL, d), ACTL_EINVAL, "NULL");
    free(a);
}

/* ---- codec: round trips ------------------------------------------------- */

static void test_codec__round_trips_every_dtype_and_size(void **state)
{
    (void)state;
    /* Element counts around the merge's 4096-element chunks, odd counts, and
     * nothing at all. */
    static const size_t counts[] = {0, 1, 2, 3, 7, 31, 4095, 4096, 4097, 12289, 100003};
    for (int dt = 0; dt < ACTL_DTYPE_COUNT; dt++) {
        size_t esz = actl_dtype_size((actl_dtype)dt);
        for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
            size_t n = counts[k] * esz;
            unsigned char *raw = malloc(n ? n : 1);
            assert_non_null(raw);
            /* random bytes: every plane incompressible */
            fill_random(raw, n);
            round_trip((actl_dtype)dt, raw, n);
            /* weights-like values: the exponent plane compresses */
            if (dt == ACTL_F32 || dt == ACTL_BF16 || dt == ACTL_F16) {
                float *f = malloc((counts[k] ? counts[k] : 1) * sizeof *f);
                assert_non_null(f);
                fill_normalish(f, counts[k], 0.02);
                if (dt == ACTL_F32)
                    memcpy(raw, f, n);
                else if (dt == ACTL_BF16)
                    actl_f32_to_bf16(f, (uint16_t *)raw, counts[k]);
                else
                    actl_f32_to_f16(f, (uint16_t *)raw, counts[k]);
                round_trip((actl_dtype)dt, raw, n);
                free(f);
            }
            /* zeros: every plane compresses (the merge from scratch planes) */
            memset(raw, 0, n);
            round_trip((actl_dtype)dt, raw, n);
            /* a ramp of small integers */
            for (size_t i = 0; i < n; i++)
                raw[i] = (unsigned char)((i / esz) % 7 == 0 ? i : 0);
            round_trip((actl_dtype)dt, raw, n);
            free(raw);
        }
    }
}

/* Every 16-bit pattern (NaNs with payloads, infinities, subnormals, both
 * zeros) and a set of F32 specials come back bit for bit. */
static void test_codec__keeps_nan_inf_and_subnormal_bits(void **state)
{
    (void)state;
    uint16_t *all = malloc(65536 * 2);
    assert_non_null(all);
    for (uint32_t i = 0; i < 65536; i++)
        all[i] = (uint16_t)(i * 40503u); /* every pattern, shuffled */
    round_trip(ACTL_BF16, all, 65536 * 2);
    round_trip(ACTL_F16, all, 65536 * 2);
    free(all);
    static const uint32_t specials[] = {
        0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u,
        0x7f800001u, 0x7fbfffffu, 0xffffffffu, 0x00000001u, 0x807fffffu, 0x00400000u,
        0x7f7fffffu, 0xff7fffffu, 0x00800000u, 0x3f800000u, 0x7fa5a5a5u, 0x80000001u};
    enum { REP = 1000 };
    size_t ns = sizeof specials / sizeof *specials;
    uint32_t *f = malloc(ns * REP * 4);
    assert_non_null(f);
    for (size_t i = 0; i < ns * REP; i++)
        f[i] = specials[(i * 7) % ns];
    round_trip(ACTL_F32, f, ns * REP * 4);
    round_trip(ACTL_F64, f, ns * REP * 4);
    free(f);
}

static void test_codec__is_deterministic(void **state)
{
    (void)state;
    enum { N = 50000 };
    float *f = malloc(N * 4);
    assert_non_null(f);
    fill_normalish(f, N, 0.02);
    size_t l1, l2;
    unsigned char *a = compress(ACTL_F32, f, N * 4, &l1), *b = compress(ACTL_F32, f, N * 4, &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(a, b, l1);
    free(a);
    free(b);
    free(f);
}

/* The frame as codec.c documents it, read here independently: header fields,
 * plane sizes, and the BF16 planes' contents computed from the definition. */
static void test_codec__bf16_frame_has_the_documented_layout(void **state)
{
    (void)state;
    enum { N = 20000 };
    float f[N];
    uint16_t v[N];
    fill_normalish(f, N, 0.02);
    actl_f32_to_bf16(f, v, N);
    size_t len;
    unsigned char *fr = compress(ACTL_BF16, v, sizeof v, &len);
    assert_memory_equal(fr, "ACTZ", 4);
    assert_int_equal(fr[4], 1);
    assert_int_equal(fr[5], ACTL_BF16);
    assert_int_equal(fr[6], 1);
    assert_int_equal(fr[7], 2);
    assert_int_equal(le64(fr + 8), sizeof v);
    assert_int_equal(le64(fr + 16), actl__xxh64(v, sizeof v, 0));
    const unsigned char *d0 = fr + 24, *d1 = fr + 48, *payload = fr + 72;
    assert_int_equal(d0[0], 1); /* the exponents shrink: zstd */
    assert_int_equal(d1[0], 0); /* sign and mantissa do not: raw */
    assert_int_equal(le64(d0 + 8), N);
    assert_int_equal(le64(d1 + 8), N);
    assert_int_equal(72 + le64(d0 + 16) + le64(d1 + 16), len);
    assert_true(le64(d0 + 16) < N / 2); /* under 4 bits an exponent */

    unsigned char *e = malloc(N);
    assert_non_null(e);
    size_t r = ZSTD_decompress(e, N, payload, le64(d0 + 16));
    assert_int_equal(r, N);
    const unsigned char *sm = payload + le64(d0 + 16);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(e[i], (v[i] >> 7) & 0xff);
        assert_int_equal(sm[i], ((v[i] >> 8) & 0x80) | (v[i] & 0x7f));
    }
    free(e);
    free(fr);

    /* BF16 from N(0, 0.02): about 1.5 times smaller (ZipNN's figure). */
    enum { M = 1 << 20 };
    float *g = malloc(M * 4);
    uint16_t *w = malloc(M * 2);
    assert_non_null(g);
    assert_non_null(w);
    fill_normalish(g, M, 0.02);
    actl_f32_to_bf16(g, w, M);
    fr = compress(ACTL_BF16, w, M * 2, &len);
    assert_true((double)M * 2 / (double)len > 1.45);
    free(fr);
    free(g);
    free(w);
}

static void test_codec__f32_and_f16_planes_follow_the_definition(void **state)
{
    (void)state;
    enum { N = 3001 };
    uint32_t x[N];
    uint16_t h[N];
    fill_random((unsigned char *)x, sizeof x);
    fill_random((unsigned char *)h, sizeof h);
    size_t len;
    /* Random bits: every plane is stored raw, so the payload is the planes. */
    unsigned char *fr = compress(ACTL_F32, x, sizeof x, &len);
    assert_int_equal(fr[6], 3);
    assert_int_equal(fr[7], 4);
    assert_int_equal(len, 24 + 4 * 24 + sizeof x);
    const unsigned char *p = fr + 24 + 4 * 24;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(p[i], (x[i] >> 23) & 0xff);
        assert_int_equal(p[N + i], ((x[i] >> 24) & 0x80) | ((x[i] >> 16) & 0x7f));
        assert_int_equal(p[2 * N + i], (x[i] >> 8) & 0xff);
        assert_int_equal(p[3 * N + i], x[i] & 0xff);
    }
    free(fr);
    fr = compress(ACTL_F16, h, sizeof h, &len);
    assert_int_equal(fr[6], 2);
    assert_int_equal(len, 24 + 2 * 24 + sizeof h);
    p = fr + 24 + 2 * 24;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(p[i], h[i] >> 8);
        assert_int_equal(p[N + i], h[i] & 0xff);
    }
    free(fr);
}

static void test_codec__stores_incompressible_planes_raw(void **state)
{
    (void)state;
    enum { N = 1 << 16 };
    unsigned char *raw = malloc(N);
    assert_non_null(raw);
    fill_random(raw, N);
    for (int dt = 0; dt < ACTL_DTYPE_COUNT; dt++) {
        size_t len;
        unsigned char *fr = compress((actl_dtype)dt, raw, N, &len);
        int np = planes_of((actl_dtype)dt);
        assert_int_equal(fr[7], np);
        assert_int_equal(len, 24 + 24 * (size_t)np + N);
        assert_int_equal(len, actl__codec_bound((actl_dtype)dt, N));
        for (int k = 0; k < np; k++)
            assert_int_equal(fr[24 + 24 * k], 0);
        free(fr);
    }
    free(raw);
}

static void *thread_round_trips(void *arg)
{
    uint32_t seed = (uint32_t)(uintptr_t)arg;
    enum { N = 30000 };
    uint16_t *v = malloc(N * 2), *back = malloc(N * 2);
    size_t cap = actl__codec_bound(ACTL_BF16, N * 2), len;
    unsigned char *fr = malloc(cap);
    int bad = !v || !back || !fr;
    for (int r = 0; !bad && r < 20; r++) {
        for (size_t i = 0; i < N; i++) {
            seed = seed * 1664525u + 1013904223u;
            v[i] = (uint16_t)(0x3c00u + ((seed >> 20) & 0x3ff) - 0x200);
        }
        bad = actl__codec_compress(ACTL_BF16, v, N * 2, 3, fr, cap, &len) ||
              actl__codec_decompress(fr, len, ACTL_BF16, back, N * 2, "t") ||
              memcmp(v, back, N * 2) != 0;
    }
    free(v);
    free(back);
    free(fr);
    return (void *)(uintptr_t)bad;
}

/* Each thread keeps its own zstd contexts (and frees them when it exits: the
 * sanitizer build's leak check would see them otherwise). */
static void test_codec__works_from_several_threads(void **state)
{
    (void)state;
    pthread_t th[4];
    for (uintptr_t i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, thread_round_trips, (void *)(i + 1)), 0);
    for (int i = 0; i < 4; i++) {
        void *bad;
        assert_int_equal(pthread_join(th[i], &bad), 0);
        assert_null(bad);
    }
}

static void test_codec__rejects_bad_compress_arguments(void **state)
{
    (void)state;
    unsigned char raw[12] = {0}, out[256];
    size_t len;
    assert_err(actl__codec_compress(ACTL_F32, raw, 10, 3, out, sizeof out, &len), ACTL_EINVAL,
               "not a whole number of F32 elements");
    assert_err(actl__codec_compress(ACTL_F32, raw, 12, 3, out, 20, &len), ACTL_EINVAL,
               "bytes of room");
    assert_err(actl__codec_compress(ACTL_U8, raw, 12, 1000, out, sizeof out, &len), ACTL_EINVAL,
               "zstd level 1000");
    assert_err(actl__codec_compress((actl_dtype)99, raw, 12, 3, out, sizeof out, &len),
               ACTL_EINVAL, "invalid dtype");
    unsigned char dst[12];
    assert_err(actl__codec_decompress(out, 0, ACTL_F32, dst, 10, "t"), ACTL_EINVAL,
               "not a whole number");
}

/* ---- codec: damaged frames ---------------------------------------------- */

/* A BF16 frame whose exponent plane is zstd and whose mantissa plane is raw,
 * and an F32 frame with two zstd planes: all the regions a frame has. */
static unsigned char *sample_frame(actl_dtype dt, size_t *n, size_t *len, unsigned char **raw)
{
    enum { E = 1500 };
    float f[E];
    fill_normalish(f, E, 0.02);
    for (size_t i = 0; i < E; i += 3)
        f[i] = 0; /* zeros make F32's second plane compress too */
    *n = E * actl_dtype_size(dt);
    *raw = malloc(*n);
    assert_non_null(*raw);
    if (dt == ACTL_BF16)
        actl_f32_to_bf16(f, (uint16_t *)*raw, E);
    else
        memcpy(*raw, f, *n);
    return compress(dt, *raw, *n, len);
}

/* Every single byte of the frame flipped in turn: the decoder refuses it
 * (ECORRUPT) without writing past the tensor, or - only for bits zstd does not
 * depend on, such as its window size - produces the exact bytes. Flips in our
 * own header never pass. */
static void test_codec__refuses_every_flipped_byte(void **state)
{
    (void)state;
    actl_dtype dts[] = {ACTL_BF16, ACTL_F32};
    for (size_t d = 0; d < 2; d++) {
        size_t n, len;
        unsigned char *raw, *fr = sample_frame(dts[d], &n, &len, &raw);
        int np = planes_of(dts[d]), nz = 0;
        for (int k = 0; k < np; k++)
            nz += fr[24 + 24 * k] == 1;
        assert_true(nz >= 1);
        if (dts[d] == ACTL_F32)
            assert_true(nz >= 2);
        size_t hdr = 24 + 24 * (size_t)np, passed = 0;
        for (size_t i = 0; i < len; i++) {
            for (int bit = 0; bit < 8; bit += 7) {
                unsigned char *copy = malloc(len);
                assert_non_null(copy);
                memcpy(copy, fr, len);
                copy[i] ^= (unsigned char)(1u << bit);
                unsigned char *out;
                int rc = decompress(copy, len, dts[d], n, &out);
                if (rc == ACTL_OK) {
                    if (i < hdr)
                        fail_msg("%s: flipped header byte %zu accepted", actl_dtype_name(dts[d]),
                                 i);
                    if (memcmp(out, raw, n) != 0)
                        fail_msg("%s: flipped byte %zu gave different bytes without an error",
                                 actl_dtype_name(dts[d]), i);
                    passed++;
                } else if (rc != ACTL_ECORRUPT) {
                    fail_msg("%s: flipped byte %zu: %s", actl_dtype_name(dts[d]), i,
                             actl_errmsg());
                } else if (!strstr(actl_errmsg(), "tensor 't'")) {
                    fail_msg("message does not name the tensor: %s", actl_errmsg());
                }
                free(out);
                free(copy);
            }
        }
        /* The harmless flips are a handful of zstd header bits, no more. */
        assert_true(passed <= 8);
        free(fr);
        free(raw);
    }
}

static void test_codec__refuses_truncated_and_extended_frames(void **state)
{
    (void)state;
    size_t n, len;
    unsigned char *raw, *fr = sample_frame(ACTL_BF16, &n, &len, &raw);
    for (size_t cut = 0; cut < len; cut++) {
        unsigned char *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, fr, cut);
        assert_int_equal(decompress(copy, cut, ACTL_BF16, n, NULL), ACTL_ECORRUPT);
        free(copy);
    }
    unsigned char *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, fr, len);
    longer[len] = 0;
    assert_err(decompress(longer, len + 1, ACTL_BF16, n, NULL), ACTL_ECORRUPT,
               "1 bytes after the last plane");
    free(longer);
    free(fr);
    free(raw);
}

static void test_codec__refuses_wrong_dtype_or_size(void **state)
{
    (void)state;
    size_t n, len;
    unsigned char *raw, *fr = sample_frame(ACTL_BF16, &n, &len, &raw);
    assert_err(decompress(fr, len, ACTL_F16, n, NULL), ACTL_ECORRUPT,
               "frame holds dtype 2, expected F16");
    assert_err(decompress(fr, len, ACTL_BF16, n - 2, NULL), ACTL_ECORRUPT,
               "frame claims 3000 raw bytes, the tensor has 2998");
    assert_err(decompress(fr, len, ACTL_BF16, n + 2, NULL), ACTL_ECORRUPT,
               "frame claims 3000 raw bytes, the tensor has 3002");
    free(fr);
    free(raw);
    fr = sample_frame(ACTL_F32, &n, &len, &raw);
    assert_err(decompress(fr, len, ACTL_I32, n, NULL), ACTL_ECORRUPT, "expected I32");
    free(fr);
    free(raw);
}

/* Builds a one-plane U8 frame around a given payload, with its header fields
 * as given (the checksum is of `content`). */
static unsigned char *handmade(uint64_t raw_size, int mode, uint64_t plane_raw,
                               const void *payload, size_t stored, const void *content,
                               size_t content_len, size_t *len)
{
    *len = 48 + stored;
    unsigned char *f = calloc(1, *len);
    assert_non_null(f);
    memcpy(f, "ACTZ", 4);
    f[4] = 1;
    f[5] = ACTL_U8;
    f[6] = 0;
    f[7] = 1;
    put_le64(f + 8, raw_size);
    put_le64(f + 16, actl__xxh64(content, content_len, 0));
    f[24] = (unsigned char)mode;
    put_le64(f + 32, plane_raw);
    put_le64(f + 40, stored);
    memcpy(f + 48, payload, stored);
    return f;
}

/* A zstd plane that would expand to far more than the tensor: refused from
 * its declared size, before anything of that size is allocated or written. */
static void test_codec__refuses_a_decompression_bomb(void **state)
{
    (void)state;
    size_t big = 64u << 20, cap = ZSTD_compressBound(big);
    unsigned char *zeros = calloc(1, big), *z = malloc(cap);
    assert_non_null(zeros);
    assert_non_null(z);
    size_t zl = ZSTD_compress(z, cap, zeros, big, 1);
    assert_false(ZSTD_isError(zl));
    size_t len;
    /* Header honest about the tensor (16 bytes), zstd frame claims 64 MiB. */
    unsigned char *f = handmade(16, 1, 16, z, zl, zeros, 16, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT,
               "zstd frame claims 67108864 bytes, the plane has 16");
    free(f);
    /* Header claiming the 64 MiB, for a 16-byte tensor. */
    f = handmade(big, 1, big, z, zl, zeros, big, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT,
               "frame claims 67108864 raw bytes, the tensor has 16");
    free(f);
    /* Plane claiming more than the frame's raw size. */
    f = handmade(16, 1, big, z, zl, zeros, 16, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT,
               "plane 0 claims 67108864 raw bytes");
    free(f);
    free(z);
    free(zeros);
}

static void test_codec__refuses_inconsistent_plane_fields(void **state)
{
    (void)state;
    unsigned char content[16] = "0123456789abcdef", z[64];
    size_t len;
    unsigned char *f;

    f = handmade(16, 2, 16, content, 16, content, 16, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "plane 0: unknown mode 2");
    free(f);

    f = handmade(16, 0, 16, content, 16, content, 16, &len);
    f[30] = 1;
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "reserved bytes");
    free(f);

    f = handmade(16, 0, 16, content, 15, content, 16, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT,
               "raw plane 0 stores 15 bytes, its raw size is 16");
    free(f);

    f = handmade(16, 0, 16, content, 16, content, 16, &len);
    put_le64(f + 40, 17);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT,
               "claims 17 stored bytes, 16 are left");
    free(f);

    f = handmade(16, 0, 16, content, 16, content, 16, &len);
    f[16] ^= 1;
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "checksum mismatch");
    free(f);

    f = handmade(16, 0, 16, content, 16, content, 16, &len);
    f[4] = 2;
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "unknown frame version 2");
    free(f);

    f = handmade(16, 0, 16, content, 16, content, 16, &len);
    f[0] = 'X';
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "bad magic");
    free(f);

    f = handmade(16, 0, 16, content, 16, content, 16, &len);
    f[7] = 2;
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "transform 0 with 2 planes");
    free(f);

    /* BF16 planes must each be half the tensor, even when they add up. */
    unsigned char bf[72 + 8] = {0};
    memcpy(bf, "ACTZ", 4);
    bf[4] = 1;
    bf[5] = ACTL_BF16;
    bf[6] = 1;
    bf[7] = 2;
    put_le64(bf + 8, 8);
    put_le64(bf + 32, 3);
    put_le64(bf + 40, 3);
    put_le64(bf + 56, 5);
    put_le64(bf + 64, 5);
    assert_err(decompress(bf, sizeof bf, ACTL_BF16, 8, NULL), ACTL_ECORRUPT,
               "plane 0 claims 3 raw bytes, BF16 of 8 bytes needs 4");

    /* A zstd plane without a content size, and one followed by a second frame. */
    ZSTD_CCtx *c = ZSTD_createCCtx();
    assert_non_null(c);
    assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)));
    unsigned char zeros[16] = {0};
    size_t zl = ZSTD_compress2(c, z, sizeof z, zeros, 16);
    assert_false(ZSTD_isError(zl));
    ZSTD_freeCCtx(c);
    f = handmade(16, 1, 16, z, zl, zeros, 16, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "not a zstd frame with a size");
    free(f);
    zl = ZSTD_compress(z, sizeof z, zeros, 16, 1);
    assert_false(ZSTD_isError(zl));
    assert_true(2 * zl <= sizeof z);
    memcpy(z + zl, z, zl);
    f = handmade(16, 1, 16, z, 2 * zl, zeros, 16, &len);
    assert_err(decompress(f, len, ACTL_U8, 16, NULL), ACTL_ECORRUPT, "does not fill its");
    free(f);
    /* An empty tensor's plane is raw: a zstd frame there is refused. */
    size_t el = ZSTD_compress(z + 32, 32, zeros, 0, 1);
    assert_false(ZSTD_isError(el));
    f = handmade(0, 1, 0, z + 32, el, zeros, 0, &len);
    assert_err(decompress(f, len, ACTL_U8, 0, NULL), ACTL_ECORRUPT,
               "plane 0 is empty but not stored raw");
    free(f);
    /* The same frame alone decodes: the refusals above are the fields'. */
    f = handmade(16, 1, 16, z, zl, zeros, 16, &len);
    assert_ok(decompress(f, len, ACTL_U8, 16, NULL));
    free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xxh64__matches_published_vectors),
        cmocka_unit_test(test_xxh64__low_half_matches_libzstd_for_every_length),
        cmocka_unit_test(test_sha256__matches_published_vectors),
        cmocka_unit_test(test_sha256__streams_in_pieces),
        cmocka_unit_test(test_codec__round_trips_every_dtype_and_size),
        cmocka_unit_test(test_codec__keeps_nan_inf_and_subnormal_bits),
        cmocka_unit_test(test_codec__is_deterministic),
        cmocka_unit_test(test_codec__bf16_frame_has_the_documented_layout),
        cmocka_unit_test(test_codec__f32_and_f16_planes_follow_the_definition),
        cmocka_unit_test(test_codec__stores_incompressible_planes_raw),
        cmocka_unit_test(test_codec__works_from_several_threads),
        cmocka_unit_test(test_codec__rejects_bad_compress_arguments),
        cmocka_unit_test(test_codec__refuses_every_flipped_byte),
        cmocka_unit_test(test_codec__refuses_truncated_and_extended_frames),
        cmocka_unit_test(test_codec__refuses_wrong_dtype_or_size),
        cmocka_unit_test(test_codec__refuses_a_decompression_bomb),
        cmocka_unit_test(test_codec__refuses_inconsistent_plane_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
