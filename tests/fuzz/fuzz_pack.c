/* fuzz_pack: packs (the store's object format) and the codec frames inside
 * them. The first byte picks what the rest is:
 *   0  a codec frame: byte 1 the dtype, bytes 2-5 the raw size the caller
 *      expects (LE, below 64 KiB: the frame's own claims may be anything),
 *      then the frame, decoded;
 *   1  raw tensor bytes: byte 1 the dtype, then the bytes, compressed and
 *      decompressed, which must give them back exactly;
 *   2  a pack's header JSON, a NUL, then its frames: the harness adds the
 *      prefix with a correct length and header checksum, so mutations reach
 *      the header's meaning and the frames instead of stopping at the
 *      checksum; read as a pull reads one (header, then frame by frame, then
 *      the whole file checked taking the tensors decoded ahead) and as the
 *      store loads one (the whole file);
 *   3  a whole pack file as it is, loaded and verified. */
#include "fuzz.h"

static void frame(const uint8_t *d, size_t n)
{
    if (n < 5)
        return;
    actl_dtype dt = (actl_dtype)(d[0] % ACTL_DTYPE_COUNT);
    size_t es = actl_dtype_size(dt);
    size_t raw = actl__get_le32(d + 1) % (1u << 16) / es * es;
    unsigned char *dst = malloc(raw ? raw : 1);
    if (!dst)
        abort();
    actl__codec_decompress(d + 5, n - 5, dt, dst, raw, NULL);
    free(dst);
}

static void roundtrip(const uint8_t *d, size_t n)
{
    if (n < 1)
        return;
    actl_dtype dt = (actl_dtype)(d[0] % ACTL_DTYPE_COUNT);
    size_t es = actl_dtype_size(dt);
    size_t raw = (n - 1) / es * es;
    size_t cap = actl__codec_bound(dt, raw), len = 0;
    unsigned char *f = malloc(cap), *back = malloc(raw ? raw : 1);
    if (!f || !back)
        abort();
    if (actl__codec_compress(dt, d + 1, raw, ACTL_CODEC_LEVEL, f, cap, &len) != ACTL_OK) {
        fprintf(stderr, "compress failed: %s\n", actl_errmsg());
        abort();
    }
    if (len > cap)
        abort();
    if (actl__codec_decompress(f, len, dt, back, raw, NULL) != ACTL_OK) {
        fprintf(stderr, "decompress of a fresh frame failed: %s\n", actl_errmsg());
        abort();
    }
    if (raw && memcmp(back, d + 1, raw) != 0)
        abort(); /* the codec is lossless */
    free(f);
    free(back);
}

static void load_file(const char *path)
{
    actl_adapter *a = NULL;
    size_t problems = 0;
    if (actl__pack_load(path, NULL, &a) == ACTL_OK)
        actl_adapter_free(a);
    actl__pack_verify(path, NULL, NULL, NULL, &problems);
}

static void built(const uint8_t *d, size_t n)
{
    const uint8_t *nul = memchr(d, 0, n);
    size_t hlen = nul ? (size_t)(nul - d) : n;
    size_t padded = (hlen + 7) / 8 * 8;
    size_t rest = nul ? n - hlen - 1 : 0;
    size_t total = ACTL_PACK_PREFIX_LEN + padded + rest;
    unsigned char *p = malloc(total);
    if (!p)
        abort();
    memcpy(p, "ACTLPACK", 8);
    actl__put_le32(p + 8, ACTL_PACK_FORMAT);
    memcpy(p + ACTL_PACK_PREFIX_LEN, d, hlen);
    memset(p + ACTL_PACK_PREFIX_LEN + hlen, ' ', padded - hlen);
    actl__put_le32(p + 12, (uint32_t)actl__xxh64(p + ACTL_PACK_PREFIX_LEN, padded, 0));
    actl__put_le64(p + 16, padded);
    if (rest)
        memcpy(p + ACTL_PACK_PREFIX_LEN + padded, nul + 1, rest);

    /* As a pull reads it: the head from the first bytes, then each frame,
     * then the complete file checked, taking the tensors decoded ahead. */
    const char *path = fuzz_file("built.pack", p, total);
    actl__pack_head *h = NULL;
    if (actl__pack_head_size(p) == ACTL_PACK_PREFIX_LEN + padded &&
        actl__pack_head_parse(p, ACTL_PACK_PREFIX_LEN + padded, total, path, &h) == ACTL_OK) {
        size_t n = actl__pack_head_count(h);
        actl_tensor **ahead = calloc(n ? n : 1, sizeof *ahead);
        if (!ahead)
            abort();
        for (size_t i = 0; i < n; i++) {
            uint64_t off, len;
            actl__pack_head_frame(h, i, &off, &len);
            if (off > total || len > total - off)
                abort(); /* the head was checked against the file's size */
            if (actl__pack_head_decode(h, i, p + off, &ahead[i]) != ACTL_OK)
                ahead[i] = NULL;
        }
        actl_adapter *a = NULL;
        size_t problems = 0;
        if (actl__pack_verify_load_ahead(path, h, ahead, NULL, NULL, &problems, &a) == ACTL_OK)
            actl_adapter_free(a);
        for (size_t i = 0; i < n; i++)
            actl_tensor_free(ahead[i]); /* taken entries are NULL */
        free(ahead);
        actl__pack_head_free(h);
    }
    load_file(path);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        once = 1;
        actl__pack_threads = 1; /* one thread: the fuzzer follows one path */
    }
    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0: frame(data + 1, size - 1); break;
    case 1: roundtrip(data + 1, size - 1); break;
    case 2: built(data + 1, size - 1); break;
    default: load_file(fuzz_file("raw.pack", data + 1, size - 1)); break;
    }
    return 0;
}
