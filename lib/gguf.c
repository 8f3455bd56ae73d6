/*
 * gguf.c: the vocabulary of a GGUF file (versions 2 and 3, little-endian).
 *
 * Layout: "GGUF", u32 version, u64 tensor count, u64 key/value count, then
 * per key/value: string key, u32 type, value. A string is u64 length + bytes
 * (no NUL); an array is u32 element type, u64 count, elements. Types: 0 u8,
 * 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array, 10 u64,
 * 11 i64, 12 f64. Only the metadata is read (tensor infos and data follow it
 * and are not needed). Every length is checked against what is left of the
 * file before it is used, so a lying count or length is a clear error, never
 * a read out of bounds.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Nested arrays deeper than this are refused (none are used in practice). */
#define GGUF_MAX_DEPTH 8
/* At most this many tokens. */
#define GGUF_MAX_TOKENS (1u << 24)

enum {
    GT_U8, GT_I8, GT_U16, GT_I16, GT_U32, GT_I32, GT_F32, GT_BOOL, GT_STRING, GT_ARRAY,
    GT_U64, GT_I64, GT_F64, GT_COUNT
};

typedef struct gg {
    const unsigned char *p;
    size_t n, off;
    const char *path;
} gg;

/* A key we want: its type and where its value starts (0: absent). */
typedef struct ggv {
    uint32_t type;
    size_t off;
} ggv;

enum { K_MODEL, K_PRE, K_TOKENS, K_SCORES, K_TYPES, K_MERGES, K_BOS, K_EOS, K_ADD_BOS, K_N };
static const char *const KEYS[K_N] = {
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
};

static size_t type_size(uint32_t t)
{
    static const unsigned char sz[GT_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t < GT_COUNT ? sz[t] : 0;
}

static int need(gg *g, size_t k)
{
    if (k > g->n - g->off)
        return actl__err(ACTL_EFORMAT, "'%s': truncated GGUF: %zu bytes needed at offset %zu, "
                         "%zu left", g->path, k, g->off, g->n - g->off);
    return ACTL_OK;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int rd_u32(gg *g, uint32_t *v)
{
    int rc = need(g, 4);
    if (!rc) {
        *v = (uint32_t)le(g->p + g->off, 4);
        g->off += 4;
    }
    return rc;
}

static int rd_u64(gg *g, uint64_t *v)
{
    int rc = need(g, 8);
    if (!rc) {
        *v = le(g->p + g->off, 8);
        g->off += 8;
    }
    return rc;
}

static int rd_str(gg *g, const char **s, size_t *len)
{
    uint64_t n;
    int rc = rd_u64(g, &n);
    if (rc)
        return rc;
    if (n > g->n - g->off)
        return actl__err(ACTL_EFORMAT, "'%s': a string at offset %zu claims %llu bytes, only "
                         "%zu left", g->path, g->off - 8, (unsigned long long)n,
                         g->n - g->off);
    *s = (const char *)g->p + g->off;
    *len = (size_t)n;
    g->off += (size_t)n;
    return ACTL_OK;
}

/* An array's header: element type and count, the count checked against
 * the bytes left (every element takes at least one byte, a string 8). */
static int rd_array_head(gg *g, uint32_t *et, uint64_t *count)
{
    int rc;
    if ((rc = rd_u32(g, et)) || (rc = rd_u64(g, count)))
        return rc;
    if (*et >= GT_COUNT)
        return actl__err(ACTL_EFORMAT, "'%s': array of unknown type %u at offset %zu", g->path,
                         *et, g->off - 12);
    size_t min = *et == GT_STRING ? 8 : *et == GT_ARRAY ? 12 : type_size(*et);
    if (*count > (g->n - g->off) / min)
        return actl__err(ACTL_EFORMAT, "'%s': an array at offset %zu claims %llu elements, "
                         "more than the %zu bytes left can hold", g->path, g->off - 12,
                         (unsigned long long)*count, g->n - g->off);
    return ACTL_OK;
}

static int skip_value(gg *g, uint32_t type, int depth)
{
    int rc = ACTL_OK;
    if (type >= GT_COUNT)
        return actl__err(ACTL_EFORMAT, "'%s': value of unknown type %u at offset %zu", g->path,
                         type, g->off);
    if (type == GT_STRING) {
        const char *s;
        size_t n;
        return rd_str(g, &s, &n);
    }
    if (type != GT_ARRAY) {
        if (!(rc = need(g, type_size(type))))
            g->off += type_size(type);
        return rc;
    }
    if (depth >= GGUF_MAX_DEPTH)
        return actl__err(ACTL_EFORMAT, "'%s': arrays nested deeper than %d", g->path,
                         GGUF_MAX_DEPTH);
    uint32_t et;
    uint64_t count;
    if ((rc = rd_array_head(g, &et, &count)))
        return rc;
    if (et != GT_STRING && et != GT_ARRAY) {
        g->off += (size_t)count * type_size(et); /* bounded by rd_array_head */
        return ACTL_OK;
    }
    for (uint64_t i = 0; i < count && !rc; i++)
        rc = skip_value(g, et, depth + 1);
    return rc;
}

/* An integer of any integer type. */
static int get_int(gg *g, const ggv *v, const char *key, int64_t *out)
{
    g->off = v->off;
    if (v->type > GT_I32 && v->type != GT_U64 && v->type != GT_I64)
        return actl__err(ACTL_EFORMAT, "'%s': %s is not an integer", g->path, key);
    size_t sz = type_size(v->type);
    uint64_t u = le(g->p + g->off, (int)sz);
    bool sign = v->type == GT_I8 || v->type == GT_I16 || v->type == GT_I32 || v->type == GT_I64;
    if (sign && sz < 8 && (u >> (8 * sz - 1)) & 1)
        u |= ~(uint64_t)0 << (8 * sz);
    *out = (int64_t)u;
    return ACTL_OK;
}

/* An array of strings: pointers into the map and lengths (malloc'd). */
static int get_strings(gg *g, const ggv *v, const char *key, const char ***s, size_t **len,
                       size_t *n)
{
    uint32_t et;
    uint64_t count;
    int rc;
    g->off = v->off;
    if (v->type != GT_ARRAY || (rc = rd_array_head(g, &et, &count)) || et != GT_STRING)
        return actl__err(ACTL_EFORMAT, "'%s': %s is not an array of strings", g->path, key);
    if (count > GGUF_MAX_TOKENS)
        return actl__err(ACTL_ELIMIT, "'%s': %s has %llu entries (at most %u)", g->path, key,
                         (unsigned long long)count, GGUF_MAX_TOKENS);
    *n = (size_t)count;
    *s = malloc((*n ? *n : 1) * sizeof **s);
    *len = malloc((*n ? *n : 1) * sizeof **len);
    if (!*s || !*len)
        return actl__oom();
    for (size_t i = 0; i < *n; i++)
        if ((rc = rd_str(g, &(*s)[i], &(*len)[i])))
            return rc;
    return ACTL_OK;
}

/* A numeric array of exactly n elements of type want (or want2) into out[n]. */
static int get_numbers(gg *g, const ggv *v, const char *key, uint32_t want, uint32_t want2,
                       size_t n, void *out)
{
    uint32_t et;
    uint64_t count;
    int rc;
    g->off = v->off;
    if (v->type != GT_ARRAY || (rc = rd_array_head(g, &et, &count)) ||
        (et != want && et != want2))
        return actl__err(ACTL_EFORMAT, "'%s': %s is not an array of %s", g->path, key,
                         want == GT_F32 ? "f32" : "i32");
    if (count != n)
        return actl__err(ACTL_EFORMAT, "'%s': %s has %llu entries for %zu tokens", g->path, key,
                         (unsigned long long)count, n);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)le(g->p + g->off + 4 * i, 4);
        memcpy((char *)out + 4 * i, &u, 4);
    }
    return ACTL_OK;
}

static int parse_header(gg *g, ggv *keys)
{
    int rc;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    if (g->n < 4 || memcmp(g->p, "GGUF", 4))
        return actl__err(ACTL_EFORMAT, "'%s': not a GGUF file (no \"GGUF\" magic)", g->path);
    g->off = 4;
    if ((rc = rd_u32(g, &version)) || (rc = rd_u64(g, &n_tensors)) || (rc = rd_u64(g, &n_kv)))
        return rc;
    if (version != 2 && version != 3)
        return actl__err(ACTL_EUNSUPPORTED, "'%s': GGUF version %u (2 and 3 are read)",
                         g->path, version);
    /* A key/value takes at least 8 + 1 + 4 + 1 bytes. */
    if (n_kv > (g->n - g->off) / 14)
        return actl__err(ACTL_EFORMAT, "'%s': claims %llu key/values, more than the file can "
                         "hold", g->path, (unsigned long long)n_kv);
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *k;
        size_t kl;
        uint32_t type;
        if ((rc = rd_str(g, &k, &kl)) || (rc = rd_u32(g, &type)))
            return rc;
        for (int j = 0; j < K_N; j++)
            if (strlen(KEYS[j]) == kl && !memcmp(KEYS[j], k, kl)) {
                keys[j].type = type;
                keys[j].off = g->off;
            }
        if ((rc = skip_value(g, type, 0)))
            return rc;
    }
    return ACTL_OK;
}

int actl__tok_from_gguf(const char *path, const char *pre, actl_tokenizer *t)
{
    int rc, fd = -1;
    uint64_t size = 0;
    void *map = MAP_FAILED;
    gg g = {NULL, 0, 0, path};
    ggv keys[K_N] = {{0, 0}};
    const char **tok = NULL, **merges = NULL;
    size_t *tok_len = NULL, *merge_len = NULL, n_tok = 0, n_merges = 0;
    int32_t *types = NULL;
    float *scores = NULL;
    char **ztok = NULL;
    char *model = NULL, *gpre = NULL;

    if ((rc = actl__open_regular(path, &fd, &size)))
        goto out;
    if (size < 24) {
        rc = actl__err(ACTL_EFORMAT, "'%s': truncated GGUF (%llu bytes)", path,
                       (unsigned long long)size);
        goto out;
    }
    map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = actl__err(ACTL_EIO, "cannot map '%s'", path);
        goto out;
    }
    g.p = map;
    g.n = (size_t)size;
    if ((rc = parse_header(&g, keys)))
        goto out;

    const char *s;
    size_t sl;
    if (!keys[K_MODEL].off) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s': no tokenizer.ggml.model (a GGUF without a "
                       "vocabulary)", path);
        goto out;
    }
    g.off = keys[K_MODEL].off;
    if (keys[K_MODEL].type != GT_STRING || (rc = rd_str(&g, &s, &sl)) ||
        !(model = strndup(s, sl))) {
        rc = rc ? rc : keys[K_MODEL].type != GT_STRING
                           ? actl__err(ACTL_EFORMAT, "'%s': tokenizer.ggml.model is not a "
                                       "string", path)
                           : actl__oom();
        goto out;
    }
    if (keys[K_PRE].off) {
        g.off = keys[K_PRE].off;
        if (keys[K_PRE].type != GT_STRING || (rc = rd_str(&g, &s, &sl)) ||
            !(gpre = strndup(s, sl))) {
            rc = rc ? rc : keys[K_PRE].type != GT_STRING
                               ? actl__err(ACTL_EFORMAT, "'%s': tokenizer.ggml.pre is not a "
                                           "string", path)
                               : actl__oom();
            goto out;
        }
    }
    if (!keys[K_TOKENS].off) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s': no tokenizer.ggml.tokens", path);
        goto out;
    }
    if ((rc = get_strings(&g, &keys[K_TOKENS], KEYS[K_TOKENS], &tok, &tok_len, &n_tok)))
        goto out;
    if (n_tok == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': tokenizer.ggml.tokens is empty", path);
        goto out;
    }
    if (keys[K_TYPES].off) {
        if (!(types = malloc(n_tok * sizeof *types))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = get_numbers(&g, &keys[K_TYPES], KEYS[K_TYPES], GT_I32, GT_U32, n_tok, types)))
            goto out;
    }

    if (!strcmp(model, "gpt2")) {
        if (!keys[K_MERGES].off) {
            rc = actl__err(ACTL_ENOTFOUND, "'%s': no tokenizer.ggml.merges", path);
            goto out;
        }
        if ((rc = get_strings(&g, &keys[K_MERGES], KEYS[K_MERGES], &merges, &merge_len,
                              &n_merges)))
            goto out;
        const char *name = pre ? pre : gpre;
        if ((rc = actl__bpe_from_list(tok, tok_len, n_tok, merges, merge_len, n_merges, types,
                                      name, path, t)))
            goto out;
    } else if (!strcmp(model, "llama")) {
        if (!keys[K_SCORES].off) {
            rc = actl__err(ACTL_ENOTFOUND, "'%s': no tokenizer.ggml.scores", path);
            goto out;
        }
        if (!(scores = malloc(n_tok * sizeof *scores)) ||
            !(ztok = calloc(n_tok, sizeof *ztok))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = get_numbers(&g, &keys[K_SCORES], KEYS[K_SCORES], GT_F32, GT_F32, n_tok,
                              scores)))
            goto out;
        for (size_t i = 0; i < n_tok; i++)
            if (!(ztok[i] = strndup(tok[i], tok_len[i]))) {
                rc = actl__oom();
                goto out;
            }
        if ((rc = actl__spm_from_vocab((const char *const *)ztok, scores, n_tok, t)))
            goto out;
        for (size_t i = 0; types && i < n_tok; i++)
            if ((types[i] == 3 || types[i] == 4) &&
                (rc = actl__tok_add(t, tok[i], tok_len[i], (int32_t)i, types[i] == 3)))
                goto out;
    } else {
        rc = actl__err(ACTL_EUNSUPPORTED, "'%s': tokenizer model '%s' is not supported (gpt2, "
                       "llama)", path, model);
        goto out;
    }

    int32_t *dst[2] = {&t->bos, &t->eos};
    for (int j = 0; j < 2; j++) {
        int64_t id = -1;
        if (!keys[K_BOS + j].off)
            continue;
        if ((rc = get_int(&g, &keys[K_BOS + j], KEYS[K_BOS + j], &id)))
            goto out;
        if (id < 0 || (uint64_t)id >= n_tok) {
            rc = actl__err(ACTL_EFORMAT, "'%s': %s %lld is not a token id", path,
                           KEYS[K_BOS + j], (long long)id);
            goto out;
        }
        *dst[j] = (int32_t)id;
    }
    if (keys[K_ADD_BOS].off) {
        g.off = keys[K_ADD_BOS].off;
        if (keys[K_ADD_BOS].type != GT_BOOL || (rc = need(&g, 1))) {
            rc = rc ? rc : actl__err(ACTL_EFORMAT, "'%s': %s is not a bool", path,
                                     KEYS[K_ADD_BOS]);
            goto out;
        }
        t->add_bos = g.p[g.off] != 0;
    }
out:
    if (ztok)
        for (size_t i = 0; i < n_tok; i++)
            free(ztok[i]);
    free(ztok);
    free(scores);
    free(types);
    free(tok);
    free(tok_len);
    free(merges);
    free(merge_len);
    free(model);
    free(gpre);
    if (map != MAP_FAILED)
        munmap(map, (size_t)size);
    if (fd >= 0)
        close(fd);
    return rc;
}
