/* test_limits.c: every parser of outside bytes against hostile sizes. Each
 * test writes a small crafted file (sizes that would need gigabytes are only
 * claimed, or the file is sparse) and expects the parser's own limit to
 * refuse it with a named code and a message naming the file and the problem,
 * before anything of the claimed size is allocated. The expected messages and
 * figures are the limits' documented values, written here independently. */
#include "testutil.h"
#include "internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

/* ---- helpers ------------------------------------------------------------ */

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

/* n copies of byte c. */
static void put_fill(buf *b, int c, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memset(b->p + b->n, c, n);
    b->n += n;
}

static void put_u32(buf *b, uint32_t v)
{
    unsigned char x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    put(b, x, 4);
}

static void put_u64(buf *b, uint64_t v)
{
    unsigned char x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    put(b, x, 8);
}

static void put_str(buf *b, const char *s) { put(b, s, strlen(s)); }

/* Extends path with zeros to `size` bytes without writing them (a sparse
 * file): the hostile size costs neither disk nor memory here. */
static void grow_sparse(const char *path, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

/* "[[[...]]]" nested `depth` levels, malloc'd. */
static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 2 + 1);
    assert_non_null(s);
    for (int i = 0; i < depth; i++) {
        s[i] = '[';
        s[depth * 2 - 1 - i] = ']';
    }
    s[depth * 2] = '\0';
    return s;
}

/* Fails unless the last message names `path`. */
static void assert_names(const char *path)
{
    if (!strstr(actl_errmsg(), path))
        fail_msg("message does not name '%s': %s", path, actl_errmsg());
}

/* A safetensors file: 8-byte length, the header as given, `data` zero bytes. */
static void write_st(const char *path, const char *header, size_t data)
{
    buf b = {0};
    put_u64(&b, strlen(header));
    put_str(&b, header);
    put_fill(&b, 0, data);
    test_write_file(path, b.p, b.n);
    free(b.p);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- safetensors ---------------------------------------------------------- */

/* A 16-byte file claiming a 1 TiB header: refused by ACTL_ST_MAX_HEADER
 * (100 MB) before the header is read or allocated. */
static void test_limits__safetensors_header_length(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "big.safetensors");
    buf b = {0};
    put_u64(&b, (uint64_t)1 << 40);
    put_str(&b, "{}      ");
    test_write_file(p, b.p, b.n);
    actl_st *st = NULL;
    assert_err(actl_st_open(p, &st), ACTL_ELIMIT,
               "header length 1099511627776 is over the limit of 100000000 bytes");
    assert_names(p);
    assert_null(st);
    free(b.p);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* Shapes whose element count or byte size does not fit 64 bits. */
static void test_limits__safetensors_shape_overflow(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "w.safetensors");
    actl_st *st = NULL;
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}", 0);
    assert_err(actl_st_open(p, &st), ACTL_ELIMIT, "shape product overflows");
    assert_names(p);
    assert_true(strstr(actl_errmsg(), "'w'") != NULL);
    /* 2^62 elements fit int64, their 2^64 bytes do not */
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
                "\"data_offsets\":[0,0]}}", 0);
    assert_err(actl_st_open(p, &st), ACTL_ELIMIT, "tensor byte size overflows");
    assert_names(p);
    /* 2^31 x 2^31 fits 64 bits but not the 0-byte data section */
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2147483648,2147483648],"
                "\"data_offsets\":[0,0]}}", 0);
    assert_int_not_equal(actl_st_open(p, &st), ACTL_OK);
    assert_names(p);
    assert_null(st);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- JSON nesting depth (ACTL_JSON_MAX_DEPTH, 64) --------------------------- */

/* adapter_config.json nested 65 levels, beside valid tensors. */
static void test_limits__adapter_config_depth(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *cfg = test_join(dir, "adapter_config.json");
    char *st = test_join(dir, "adapter_model.safetensors");
    char *src = test_join(FIXTURES "/adapters/base-tiny/lora", "adapter_model.safetensors");
    size_t n;
    unsigned char *bytes = test_slurp(src, &n);
    test_write_file(st, bytes, n);
    char *deep = nested(65), text[512];
    snprintf(text, sizeof text, "{\"peft_type\": \"LORA\", \"x\": %s}", deep);
    test_write_text(cfg, text);
    actl_adapter *a = NULL;
    assert_err(actl_adapter_load(dir, &a), ACTL_ELIMIT, "JSON nested deeper than 64 levels");
    assert_names(cfg);
    assert_null(a);
    /* 64 levels in all are within the limit: the error is then another one */
    free(deep);
    deep = nested(62);
    snprintf(text, sizeof text, "{\"peft_type\": \"LORA\", \"x\": %s}", deep);
    test_write_text(cfg, text);
    int rc = actl_adapter_load(dir, &a);
    if (rc == ACTL_ELIMIT)
        fail_msg("64 levels refused: %s", actl_errmsg());
    actl_adapter_free(a);
    free(deep);
    free(bytes);
    test_rmtree(dir);
    free(src);
    free(st);
    free(cfg);
    free(dir);
}

/* adapter_config.json over ACTL_CONFIG_LIMIT (16 MiB), sparse. */
static void test_limits__adapter_config_size(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *cfg = test_join(dir, "adapter_config.json");
    test_write_text(cfg, "{");
    grow_sparse(cfg, (16u << 20) + 1);
    actl_adapter *a = NULL;
    assert_err(actl_adapter_load(dir, &a), ACTL_ELIMIT, "is 16777217 bytes, over the limit of 16777216");
    assert_names(cfg);
    test_rmtree(dir);
    free(cfg);
    free(dir);
}

/* A base model's config.json: nesting, then sizes out of range and products
 * that would overflow, for both readers (actl_base_load, actl_model_load). */
static void test_limits__config_json(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *cfg = test_join(dir, "config.json");
    char *deep = nested(65), text[1024];
    snprintf(text, sizeof text, "{\"hidden_size\": 32, \"x\": %s}", deep);
    test_write_text(cfg, text);
    actl_base *b = NULL;
    actl_model *m = NULL;
    assert_err(actl_base_load(dir, &b), ACTL_ELIMIT, "nested deeper than 64");
    assert_names(cfg);
    assert_err(actl_model_load(dir, 0, &m), ACTL_ELIMIT, "nested deeper than 64");
    assert_names(cfg);
    /* a width of 2^31 */
    test_write_text(cfg, "{\"model_type\": \"llama\", \"hidden_size\": 2147483648, "
                         "\"intermediate_size\": 64, \"num_hidden_layers\": 1, "
                         "\"num_attention_heads\": 1, \"vocab_size\": 64}");
    assert_err(actl_base_load(dir, &b), ACTL_EFORMAT,
               "'hidden_size' must be an integer from 1 to 1073741824");
    assert_names(cfg);
    assert_err(actl_model_load(dir, 0, &m), ACTL_EFORMAT, "hidden_size");
    assert_names(cfg);
    /* each factor within its limit, the product 2^16 x 2^30 not */
    test_write_text(cfg, "{\"model_type\": \"llama\", \"hidden_size\": 65536, "
                         "\"intermediate_size\": 64, \"num_hidden_layers\": 1, "
                         "\"num_attention_heads\": 65536, \"head_dim\": 1073741824, "
                         "\"vocab_size\": 64}");
    assert_err(actl_base_load(dir, &b), ACTL_EFORMAT,
               "num_attention_heads 65536 x head_dim 1073741824 is more than 1073741824");
    assert_names(cfg);
    assert_int_not_equal(actl_model_load(dir, 0, &m), ACTL_OK);
    assert_names(cfg);
    assert_true(strstr(actl_errmsg(), "1073741824") != NULL);
    assert_null(b);
    assert_null(m);
    free(deep);
    test_rmtree(dir);
    free(cfg);
    free(dir);
}

/* ---- packs and codec frames (decompression bombs) --------------------------- */

/* A pack with the given header JSON (padded to 8) and `data` frame bytes. */
static void write_pack(const char *path, const char *header, size_t data)
{
    buf h = {0}, b = {0};
    put_str(&h, header);
    while (h.n % 8)
        put(&h, " ", 1);
    put_str(&b, ACTL_PACK_MAGIC);
    put_u32(&b, ACTL_PACK_FORMAT);
    put_u32(&b, (uint32_t)actl__xxh64(h.p, h.n, 0));
    put_u64(&b, h.n);
    put(&b, h.p, h.n);
    put_fill(&b, 0x28, data);
    test_write_file(path, b.p, b.n);
    free(h.p);
    free(b.p);
}

#define SHA0 "0000000000000000000000000000000000000000000000000000000000000000"

/* A tensor of 1 GiB raw claimed from an 8-byte frame: more than any zstd
 * frame expands (MAX_EXPANSION, 2^15), refused before its buffer exists. */
static void test_limits__pack_expansion(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "pack");
    write_pack(p, "{\"config\":{},\"format\":1,\"tensors\":[{\"codec\":\"actz1\",\"dtype\":"
                  "\"F32\",\"name\":\"w\",\"offset\":0,\"raw\":1073741824,\"sha256\":\"" SHA0
                  "\",\"shape\":[268435456],\"stored\":8}]}", 8);
    actl_adapter *a = NULL;
    assert_err(actl__pack_load(p, NULL, &a), ACTL_EFORMAT,
               "tensor 'w' claims 1073741824 raw bytes from a 8-byte frame");
    assert_names(p);
    assert_null(a);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* Pack header shapes that overflow, and a header length past the file. */
static void test_limits__pack_shape_and_header(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "pack");
    actl_adapter *a = NULL;
    write_pack(p, "{\"config\":{},\"format\":1,\"tensors\":[{\"codec\":\"actz1\",\"dtype\":"
                  "\"F32\",\"name\":\"w\",\"offset\":0,\"raw\":0,\"sha256\":\"" SHA0
                  "\",\"shape\":[4294967296,4294967296],\"stored\":8}]}", 8);
    assert_err(actl__pack_load(p, NULL, &a), ACTL_EFORMAT, "tensor 'w'");
    assert_names(p);
    assert_true(strstr(actl_errmsg(), "shape product overflows") != NULL);
    /* a header length of 2^40 in a small file */
    buf b = {0};
    put_str(&b, ACTL_PACK_MAGIC);
    put_u32(&b, ACTL_PACK_FORMAT);
    put_u32(&b, 0);
    put_u64(&b, (uint64_t)1 << 40);
    put_str(&b, "{}      ");
    test_write_file(p, b.p, b.n);
    assert_err(actl__pack_load(p, NULL, &a), ACTL_EFORMAT,
               "header length 1099511627776 does not fit the 32-byte file");
    assert_names(p);
    /* a pack header nested past the JSON limit */
    char *deep = nested(65), text[512];
    snprintf(text, sizeof text, "{\"config\":{\"x\":%s},\"format\":1,\"tensors\":[]}", deep);
    write_pack(p, text, 0);
    assert_err(actl__pack_load(p, NULL, &a), ACTL_ELIMIT, "nested deeper than 64");
    assert_names(p);
    assert_null(a);
    free(deep);
    free(b.p);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* A frame of 1 MiB of zeros (a few hundred bytes) decoded into a 4 KiB
 * buffer: the frame's claimed size is checked against the caller's, so
 * nothing past the 4 KiB is written or allocated. */
static void test_limits__codec_claimed_size(void **state)
{
    (void)state;
    size_t raw_n = (size_t)1 << 20;
    float *raw = calloc(raw_n / 4, 4);
    assert_non_null(raw);
    size_t cap = actl__codec_bound(ACTL_F32, raw_n), w = 0;
    unsigned char *frame = malloc(cap);
    assert_non_null(frame);
    assert_ok(actl__codec_compress(ACTL_F32, raw, raw_n, 3, frame, cap, &w));
    assert_true(w < 4096); /* a bomb: far more out than in */
    unsigned char small[4096];
    assert_err(actl__codec_decompress(frame, w, ACTL_F32, small, sizeof small, "tensor 'bomb'"),
               ACTL_ECORRUPT, "tensor 'bomb'");
    free(frame);
    free(raw);
}

/* ---- llama2.c checkpoints ------------------------------------------------- */

static void write_l2c(const char *path, const int32_t h[7])
{
    test_write_file(path, h, 7 * sizeof *h);
}

static void test_limits__llama2c_header(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "model.bin");
    actl_model *m = NULL;
    /* dim over MAX_WIDTH (2^30) */
    write_l2c(p, (const int32_t[7]){INT32_MAX, 64, 1, 1, 1, 64, 16});
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "not a llama2.c checkpoint");
    assert_names(p);
    /* every field at its limit: the byte count overflows 64 bits */
    write_l2c(p, (const int32_t[7]){1 << 30, 1 << 30, 65536, 65536, 65536, 1 << 30,
                                    INT32_MAX});
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "describes more than 2^64 bytes");
    assert_names(p);
    /* a plausible header that needs more than the 28 bytes there are */
    write_l2c(p, (const int32_t[7]){4096, 11008, 32, 32, 32, 32000, 2048});
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "the file has 28");
    assert_names(p);
    assert_null(m);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- GGUF (tokenizer) ------------------------------------------------------- */

static void gguf_head(buf *b, uint64_t n_kv)
{
    put_str(b, "GGUF");
    put_u32(b, 3);
    put_u64(b, 0);
    put_u64(b, n_kv);
}

static void gguf_key(buf *b, const char *k, uint32_t type)
{
    put_u64(b, strlen(k));
    put_str(b, k);
    put_u32(b, type);
}

static void gguf_string(buf *b, const char *s)
{
    put_u64(b, strlen(s));
    put_str(b, s);
}

static void expect_gguf(const char *path, buf *b, int code, const char *needle)
{
    for (int i = 0; i < 32; i++) /* room for the "key/value fits" checks */
        put(b, "", 1);
    test_write_file(path, b->p, b->n);
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(path, NULL, &t), code, needle);
    assert_names(path);
    assert_null(t);
    b->n = 0;
}

static void test_limits__gguf_counts_and_lengths(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "t.gguf");
    buf b = {0};
    gguf_head(&b, (uint64_t)1 << 60);
    expect_gguf(p, &b, ACTL_EFORMAT, "claims 1152921504606846976 key/values");
    /* a string claiming 2^60 bytes */
    gguf_head(&b, 1);
    gguf_key(&b, "tokenizer.ggml.model", 8);
    put_u64(&b, (uint64_t)1 << 60);
    expect_gguf(p, &b, ACTL_EFORMAT, "claims 1152921504606846976 bytes");
    /* a key claiming 2^60 bytes */
    gguf_head(&b, 1);
    put_u64(&b, (uint64_t)1 << 60);
    expect_gguf(p, &b, ACTL_EFORMAT, "claims 1152921504606846976 bytes");
    /* an array claiming 2^60 elements */
    gguf_head(&b, 1);
    gguf_key(&b, "x", 9);
    put_u32(&b, 0);
    put_u64(&b, (uint64_t)1 << 60);
    expect_gguf(p, &b, ACTL_EFORMAT, "claims 1152921504606846976 elements");
    /* arrays of arrays nested 9 deep (GGUF_MAX_DEPTH 8) */
    gguf_head(&b, 1);
    gguf_key(&b, "x", 9);
    for (int i = 0; i < 9; i++) {
        put_u32(&b, 9);
        put_u64(&b, 1);
    }
    put_u32(&b, 0);
    put_u64(&b, 0);
    for (int i = 0; i < 12; i++)
        put(&b, "", 1);
    expect_gguf(p, &b, ACTL_EFORMAT, "arrays nested deeper than 8");
    free(b.p);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* 2^24 + 1 tokens (GGUF_MAX_TOKENS + 1), each an empty string: the file is
 * sparse and mapped, the token tables are never allocated. */
static void test_limits__gguf_token_count(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "t.gguf");
    buf b = {0};
    uint64_t n = ((uint64_t)1 << 24) + 1;
    gguf_head(&b, 2);
    gguf_key(&b, "tokenizer.ggml.model", 8);
    gguf_string(&b, "llama");
    gguf_key(&b, "tokenizer.ggml.tokens", 9);
    put_u32(&b, 8);
    put_u64(&b, n);
    test_write_file(p, b.p, b.n);
    grow_sparse(p, b.n + 8 * n);
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_ELIMIT,
               "tokenizer.ggml.tokens has 16777217 entries (at most 16777216)");
    assert_names(p);
    free(b.p);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- tokenizer.bin, tokenizer.json, vocab.json + merges.txt -------------- */

static void test_limits__tokenizer_bin(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "tokenizer.bin");
    actl_tokenizer *t = NULL;
    /* max_token_length over 65536 */
    int32_t h[3] = {1 << 20, 0, 1};
    test_write_file(p, h, sizeof h);
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_EFORMAT, "max_token_length 1048576");
    assert_names(p);
    /* a token claiming 65536 bytes in a 12-byte file */
    h[0] = 65536;
    h[2] = 65536;
    test_write_file(p, h, sizeof h);
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_EFORMAT, "runs past the end of the file");
    assert_names(p);
    /* 2^24 + 1 empty tokens (TOK_MAX_VOCAB + 1): zeros after the header */
    h[0] = 16;
    test_write_file(p, h, 4);
    grow_sparse(p, 4 + 8 * (((uint64_t)1 << 24) + 1));
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_ELIMIT, "more than 16777216 tokens");
    assert_names(p);
    /* over TOK_FILE_LIMIT (256 MiB) */
    grow_sparse(p, ((uint64_t)256 << 20) + 1);
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_ELIMIT, "over the limit of 268435456");
    assert_names(p);
    assert_null(t);
    test_rmtree(dir);
    free(p);
    free(dir);
}

static void test_limits__tokenizer_json_depth_and_size(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "tokenizer.json");
    char *deep = nested(65), text[512];
    snprintf(text, sizeof text, "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": %s}}",
             deep);
    test_write_text(p, text);
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_ELIMIT, "nested deeper than 64");
    assert_names(p);
    grow_sparse(p, ((uint64_t)256 << 20) + 1);
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_ELIMIT, "over the limit of 268435456");
    assert_names(p);
    /* vocab.json + merges.txt: the merges file over BPE_MAX_FILE (256 MiB) */
    char *v = test_join(dir, "vocab.json"), *mg = test_join(dir, "merges.txt");
    test_write_text(v, "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    test_write_text(mg, "a b\n");
    grow_sparse(mg, ((uint64_t)256 << 20) + 1);
    assert_err(actl_tokenizer_load(v, NULL, &t), ACTL_ELIMIT, "over the limit of 268435456");
    assert_names(mg);
    snprintf(text, sizeof text, "{\"a\": 0, \"x\": %s}", deep);
    test_write_text(v, text);
    assert_err(actl_tokenizer_load(v, NULL, &t), ACTL_ELIMIT, "nested deeper than 64");
    assert_names(v);
    assert_null(t);
    free(deep);
    test_rmtree(dir);
    free(v);
    free(mg);
    free(p);
    free(dir);
}

/* A tokenizer.json whose Split pattern is `pattern` (JSON-escaped). */
static char *split_tok(const char *dir, const char *pattern)
{
    char *p = test_join(dir, "tokenizer.json"), text[1024];
    snprintf(text, sizeof text,
             "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Sequence\", "
             "\"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"%s\"}, "
             "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
             "\"add_prefix_space\": false, \"use_regex\": false}]}, "
             "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"!\": 2}, "
             "\"merges\": []}}",
             pattern);
    test_write_text(p, text);
    return p;
}

/* A pattern that backtracks exponentially on a run of a's without a b or c
 * (and has no single required character PCRE2 could look for first): PCRE2's
 * match limit ends the encode with ACTL_ELIMIT naming the tokenizer, in a
 * fraction of a second. */
static void test_limits__regex_backtracking(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = split_tok(dir, "(a|a)+[bc]");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(p, NULL, &t));
    /* 32 a's: the match limit; 4096: the JIT stack gives out first */
    static const size_t lens[2] = {32, 4096};
    for (int i = 0; i < 2; i++) {
        size_t n = lens[i];
        char *text = malloc(n + 1);
        assert_non_null(text);
        memset(text, 'a', n);
        text[n] = '\0';
        int32_t *ids = NULL;
        size_t n_ids = 0;
        double t0 = now_s();
        int rc = actl_tokenizer_encode(t, text, n, 0, &ids, &n_ids);
        double dt = now_s() - t0;
        print_message("pathological pattern over %zu bytes: %s in %.2f s: %s\n", n,
                      actl_strerror(rc), dt, actl_errmsg());
        assert_err(rc, ACTL_ELIMIT, "pre-tokenizer: ");
        assert_true(strstr(actl_errmsg(), "limit") != NULL);
        assert_names(p); /* the time is printed, never asserted: the limit's error is the proof */
        free(ids);
        free(text);
    }
    actl_tokenizer_free(t);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* A pattern that does not compile: refused at load, naming the pattern. */
static void test_limits__regex_compile_error(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = split_tok(dir, "(a");
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(p, NULL, &t), ACTL_EFORMAT, "pre-tokenizer pattern '(a'");
    assert_names(p);
    assert_null(t);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- requests JSONL ----------------------------------------------------------- */

typedef struct probs {
    int n;
    char last[1024];
} probs;

static void on_problem(const char *msg, void *ctx)
{
    probs *pr = ctx;
    pr->n++;
    snprintf(pr->last, sizeof pr->last, "%s", msg);
}

static void test_limits__requests_jsonl(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "reqs.jsonl");
    char *deep = nested(65);
    /* line 1 nested too deep, line 2 longer than REQS_LINE_MAX (16 MiB),
     * line 3 good */
    size_t long_n = ((size_t)16 << 20) + 16;
    buf b = {0};
    put_str(&b, "{\"prompt\": \"x\", \"x\": ");
    put_str(&b, deep);
    put_str(&b, "}\n{\"prompt\": \"");
    put_fill(&b, 'y', long_n);
    put_str(&b, "\"}\n{\"prompt\": \"z\"}\n");
    test_write_file(p, b.p, b.n);
    free(b.p);
    probs pr = {0};
    actl_eval_reqs *l = NULL;
    assert_ok(actl_eval_reqs_jsonl(p, on_problem, &pr, &l));
    assert_int_equal(actl_eval_reqs_count(l), 1);
    assert_int_equal(pr.n, 2);
    actl_eval_reqs_free(l);
    l = NULL;
    /* each bad line alone: the problem names the file, the line and the limit */
    test_write_text(p, "{\"prompt\": \"z\"}\n");
    FILE *f = fopen(p, "a");
    assert_non_null(f);
    fprintf(f, "{\"prompt\": \"x\", \"x\": %s}\n", deep);
    fclose(f);
    pr.n = 0;
    assert_ok(actl_eval_reqs_jsonl(p, on_problem, &pr, &l));
    assert_int_equal(pr.n, 1);
    assert_true(strstr(pr.last, p) && strstr(pr.last, "line 2") &&
                strstr(pr.last, "nested deeper than 64"));
    actl_eval_reqs_free(l);
    l = NULL;
    b = (buf){0};
    put_str(&b, "{\"prompt\": \"");
    put_fill(&b, 'y', long_n);
    put_str(&b, "\"}\n");
    test_write_file(p, b.p, b.n);
    free(b.p);
    pr.n = 0;
    assert_err(actl_eval_reqs_jsonl(p, on_problem, &pr, &l), ACTL_EFORMAT, "no usable request");
    assert_int_equal(pr.n, 1);
    assert_true(strstr(pr.last, p) && strstr(pr.last, "line 1") &&
                strstr(pr.last, "over the limit of 16777216"));
    assert_null(l);
    /* the whole file over REQS_FILE_LIMIT (1 GiB), sparse */
    grow_sparse(p, ((uint64_t)1 << 30) + 1);
    assert_err(actl_eval_reqs_jsonl(p, on_problem, &pr, &l), ACTL_ELIMIT,
               "over the limit of 1073741824");
    assert_names(p);
    free(deep);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- sharded checkpoint index ------------------------------------------------ */

static void test_limits__ckpt_index(void **state)
{
    (void)state;
    char *dir = test_tmpdir(), *p = test_join(dir, "model.safetensors.index.json");
    char *deep = nested(65), text[512];
    snprintf(text, sizeof text, "{\"weight_map\": {\"a\": \"s.safetensors\"}, \"x\": %s}", deep);
    test_write_text(p, text);
    actl_ckpt *c = NULL;
    assert_err(actl_ckpt_open(dir, &c), ACTL_ELIMIT, "nested deeper than 64");
    assert_names(p);
    /* over INDEX_MAX_BYTES (64 MiB) */
    grow_sparse(p, ((uint64_t)64 << 20) + 1);
    assert_err(actl_ckpt_open(dir, &c), ACTL_ELIMIT, "over the limit of 67108864");
    assert_names(p);
    assert_null(c);
    free(deep);
    test_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- downloads --------------------------------------------------------------- */

/* A one-shot HTTP server on loopback answering every connection with
 * `response`; the child's pid in *pid, the port returned. */
static int serve(const char *response, pid_t *pid)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s, 8), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
    *pid = fork();
    assert_true(*pid >= 0);
    if (*pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 0; i < 16; i++) {
            int c = accept(s, NULL, NULL);
            if (c < 0)
                _exit(0);
            char req[4096];
            ssize_t got = read(c, req, sizeof req); /* the request is small */
            (void)got;
            size_t n = strlen(response), off = 0;
            while (off < n) {
                ssize_t w = write(c, response + off, n - off);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
            close(c);
        }
        _exit(0);
    }
    close(s);
    return ntohs(a.sin_port);
}

/* A server announcing a 1 TiB body behind an over-long header line: the
 * long line is ignored (HEADER_LINE_MAX, 8 KiB) and the body refused by
 * ACTL_PULL_DEFAULT_MAX (16 GiB) before a byte of it is stored. */
static void test_limits__fetch_announced_size_and_header_line(void **state)
{
    (void)state;
    setenv("ADAPTERCTL_FETCH_BACKOFF_MS", "1", 1);
    size_t long_n = 9000;
    char *resp = malloc(long_n + 256);
    assert_non_null(resp);
    int k = snprintf(resp, 256, "HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\nETag: \"");
    memset(resp + k, 'e', long_n);
    snprintf(resp + k + long_n, 256, "\"\r\nConnection: close\r\n\r\nabc");
    pid_t pid;
    int port = serve(resp, &pid);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/adapter_model.safetensors", port);
    actl__fetch f;
    memset(&f, 0, sizeof f);
    f.url = url;
    assert_err(actl__fetch_run(&f), ACTL_ELIMIT,
               "body of 1099511627776 bytes is larger than the limit of 17179869184 bytes");
    assert_names(url);
    assert_null(f.data);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    free(resp);
}

/* A pull's max_size against a file:// PEFT directory, and a published
 * index.json nested past the JSON limit: refused, the store unchanged. */
static void test_limits__pull_size_and_index_depth(void **state)
{
    (void)state;
    test_fx fx = test_fx_new();
    char cwd[4096], url[4600];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(url, sizeof url, "file://%s/" FIXTURES "/adapters/base-tiny/lora", cwd);
    actl_pull_opts o = actl_pull_default_opts();
    o.max_size = 100;
    o.name = "x";
    assert_err(actl_store_pull(fx.s, url, NULL, &o, NULL), ACTL_ELIMIT,
               "larger than the limit of 100 bytes");
    assert_true(strstr(actl_errmsg(), "adapters/base-tiny/lora/") != NULL);
    /* a published store whose index is nested too deep */
    char *pub = test_join(fx.dir, "pub"), *ix = test_join(pub, "index.json");
    assert_int_equal(mkdir(pub, 0755), 0);
    char *deep = nested(65), text[512];
    snprintf(text, sizeof text, "{\"format\": 1, \"adapters\": [], \"x\": %s}", deep);
    test_write_text(ix, text);
    snprintf(url, sizeof url, "file://%s", pub);
    assert_err(actl_store_pull(fx.s, url, "x", NULL, NULL), ACTL_ELIMIT, "nested deeper than 64");
    assert_true(strstr(actl_errmsg(), "index.json") != NULL);
    actl_entries *e = NULL;
    actl_query q = actl_query_default();
    q.all_versions = 1;
    assert_ok(actl_store_list(fx.s, &q, &e));
    assert_int_equal(actl_entries_count(e), 0);
    actl_entries_free(e);
    free(deep);
    free(ix);
    free(pub);
    test_fx_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits__safetensors_header_length),
        cmocka_unit_test(test_limits__safetensors_shape_overflow),
        cmocka_unit_test(test_limits__adapter_config_depth),
        cmocka_unit_test(test_limits__adapter_config_size),
        cmocka_unit_test(test_limits__config_json),
        cmocka_unit_test(test_limits__pack_expansion),
        cmocka_unit_test(test_limits__pack_shape_and_header),
        cmocka_unit_test(test_limits__codec_claimed_size),
        cmocka_unit_test(test_limits__llama2c_header),
        cmocka_unit_test(test_limits__gguf_counts_and_lengths),
        cmocka_unit_test(test_limits__gguf_token_count),
        cmocka_unit_test(test_limits__tokenizer_bin),
        cmocka_unit_test(test_limits__tokenizer_json_depth_and_size),
        cmocka_unit_test(test_limits__regex_backtracking),
        cmocka_unit_test(test_limits__regex_compile_error),
        cmocka_unit_test(test_limits__requests_jsonl),
        cmocka_unit_test(test_limits__ckpt_index),
        cmocka_unit_test(test_limits__fetch_announced_size_and_header_line),
        cmocka_unit_test(test_limits__pull_size_and_index_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
