/* tokenizer.c: the tokenizer API - which loader reads a file, added and
 * special tokens, pieces and decoding - and SentencePiece-style BPE (llama2.c
 * tokenizer.bin, HF tokenizer.json with byte fallback, GGUF "llama"
 * vocabularies). Byte-level BPE is bpe.c's. */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* tokenizer.json files reach tens of MiB (Gemma's is ~34); this only stops
 * a wrong path from pulling a model into memory. */
#define TOK_FILE_LIMIT ((size_t)256 << 20)
/* Ids above this are a corrupt file, not a vocabulary (the largest real ones
 * are ~260k). */
#define TOK_MAX_VOCAB ((size_t)1 << 24)

#define META "\xE2\x96\x81" /* U+2581 "▁", SentencePiece's spelling of a space */
#define META_LEN 3

/* ==== UTF-8 ============================================================= */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return k;
}

/* ==== a byte-string -> id hash map (open addressing) ==================== */

typedef struct strmap {
    uint32_t *slot;            /* id + 1; 0: empty */
    size_t mask;
    char *const *key;          /* borrowed: the vocabulary's strings */
    const size_t *klen;
} strmap;

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static int32_t strmap_find(const strmap *m, const char *s, size_t n)
{
    if (!m->slot)
        return -1;
    for (size_t i = hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slot[i];
        if (!v)
            return -1;
        if (m->klen[v - 1] == n && memcmp(m->key[v - 1], s, n) == 0)
            return (int32_t)(v - 1);
    }
}

/* Inserts id unless its string is already there (the first id wins). */
static void strmap_put(strmap *m, int32_t id)
{
    const char *s = m->key[id];
    size_t n = m->klen[id];
    for (size_t i = hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t v = m->slot[i];
        if (!v) {
            m->slot[i] = (uint32_t)id + 1;
            return;
        }
        if (m->klen[v - 1] == n && memcmp(m->key[v - 1], s, n) == 0)
            return;
    }
}

static size_t table_size(size_t n)
{
    size_t c = 16;
    while (c < 2 * n + 1)
        c <<= 1;
    return c;
}

/* ==== SentencePiece-style BPE =========================================== */

enum { SPM_SCORES, SPM_RANKS };

/* A merge of the pair (a, b) in HF's tokenizer.json: its rank and the id of
 * the merged token. */
typedef struct spm_merge {
    uint64_t key; /* ((a << 32) | b) + 1; 0: empty slot */
    uint32_t rank;
    int32_t result;
} spm_merge;

typedef struct spm {
    int mode;          /* SPM_SCORES: llama2.c / SentencePiece (highest score first);
                          SPM_RANKS: HF BPE (lowest merge rank first) */
    bool meta;         /* pieces spell a space "▁" (HF, GGUF) rather than ' ' (tokenizer.bin) */
    bool add_prefix;   /* the first fragment gets a space in front (the "dummy prefix") */
    bool fuse_unk;     /* consecutive unknown characters make one <unk> */
    size_t n;
    char **vocab;      /* [n] token strings as the file spells them (NULL: no such id) */
    size_t *vlen;
    float *score;      /* [n] SPM_SCORES */
    strmap map;        /* text -> id, for the normal pieces only */
    spm_merge *merges; /* SPM_RANKS: pair -> merge, mmask + 1 slots */
    size_t mmask;
    int32_t byte_id[256]; /* <0xNN> tokens, -1 when absent */
    int32_t unk;
} spm;

static void spm_free(void *p)
{
    spm *s = p;
    if (!s)
        return;
    if (s->vocab)
        for (size_t i = 0; i < s->n; i++)
            free(s->vocab[i]);
    free(s->vocab);
    free(s->vlen);
    free(s->score);
    free(s->map.slot);
    free(s->merges);
    free(s);
}

/* One symbol of the text being merged: a run of bytes of the normalized
 * text with the token it stands for, in a doubly linked list. */
typedef struct spm_sym {
    uint32_t start, len; /* len 0: merged into its left neighbour */
    int32_t id;
    uint32_t prev, next; /* NONE at the ends */
    bool fixed;          /* a byte-fallback or unknown symbol: never merged */
} spm_sym;

#define NONE UINT32_MAX

/* A candidate merge of symbols l and r (adjacent when pushed); stale when
 * either has changed since (lengths differ or no longer neighbours). */
typedef struct spm_cand {
    double prio; /* higher first */
    uint32_t l, r, llen, rlen;
    int32_t result;
} spm_cand;

/* True when a comes out of the heap before b: higher priority, then the
 * leftmost pair - the order in which llama2.c's rescans (first best score)
 * and HF's BPE heap (rank, then position) pick merges. */
static bool cand_before(const spm_cand *a, const spm_cand *b)
{
    return a->prio > b->prio || (a->prio == b->prio && a->l < b->l);
}

typedef struct spm_heap {
    spm_cand *c;
    size_t n, cap;
} spm_heap;

static int heap_push(spm_heap *h, spm_cand x)
{
    spm_cand *c = actl__grow(h->c, h->n, &h->cap, sizeof *c, 64);
    if (!c)
        return actl__oom();
    h->c = c;
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&x, &c[p]))
            break;
        c[i] = c[p];
        i = p;
    }
    c[i] = x;
    return ACTL_OK;
}

static spm_cand heap_pop(spm_heap *h)
{
    spm_cand *c = h->c, top = c[0], x = c[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && cand_before(&c[k + 1], &c[k]))
            k++;
        if (!cand_before(&c[k], &x))
            break;
        c[i] = c[k];
        i = k;
    }
    if (n)
        c[i] = x;
    return top;
}

static const spm_merge *spm_merge_find(const spm *s, int32_t a, int32_t b)
{
    if (!s->merges)
        return NULL;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (size_t i = (key * 0x9E3779B97F4A7C15ull >> 17) & s->mmask;; i = (i + 1) & s->mmask) {
        if (s->merges[i].key == 0)
            return NULL;
        if (s->merges[i].key == key)
            return &s->merges[i];
    }
}

/* Pushes the merge of neighbours l and r when the vocabulary has one. */
static int spm_try(const spm *s, const char *norm, const spm_sym *sym, uint32_t l, uint32_t r,
                   spm_heap *h)
{
    if (l == NONE || r == NONE)
        return ACTL_OK;
    spm_cand c = {0, l, r, sym[l].len, sym[r].len, -1};
    if (s->mode == SPM_SCORES) {
        if (sym[l].fixed || sym[r].fixed)
            return ACTL_OK;
        /* symbols are contiguous runs of the text, so the pair is a substring */
        c.result = strmap_find(&s->map, norm + sym[l].start, sym[l].len + sym[r].len);
        if (c.result < 0)
            return ACTL_OK;
        c.prio = s->score[c.result];
    } else {
        const spm_merge *m = spm_merge_find(s, sym[l].id, sym[r].id);
        if (!m)
            return ACTL_OK;
        c.result = m->result;
        c.prio = -(double)m->rank;
    }
    return heap_push(h, c);
}

static int push_id(int32_t id, int32_t **ids, size_t *n, size_t *cap)
{
    int32_t *p = actl__grow(*ids, *n, cap, sizeof *p, 16);
    if (!p)
        return actl__oom();
    *ids = p;
    p[(*n)++] = id;
    return ACTL_OK;
}

/* Normalizes (the dummy-prefix space, spaces as "▁" for a "▁" vocabulary),
 * splits into code points (each its piece, else its <0xNN> bytes, else
 * <unk>), then merges neighbours best first until no pair is a token. A
 * heap of candidate pairs keeps a long text O(n log n). */
static int spm_encode(const void *impl, const char *text, size_t len, bool first, int32_t **ids,
                      size_t *n, size_t *cap)
{
    const spm *s = impl;
    int rc = ACTL_OK;
    char *norm = NULL;
    spm_sym *sym = NULL;
    spm_heap h = {0};
    if (len == 0)
        return ACTL_OK;

    size_t spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    size_t sp_len = s->meta ? META_LEN : 1;
    bool prefix = first && s->add_prefix;
    size_t nlen = len + (spaces + prefix) * (sp_len - 1) + prefix;
    if (nlen > UINT32_MAX / 2) {
        rc = actl__err(ACTL_ELIMIT, "text of %zu bytes is too long to tokenize", len);
        goto out;
    }
    if (!(norm = malloc(nlen + 1)) || !(sym = malloc(nlen * sizeof *sym))) {
        rc = actl__oom();
        goto out;
    }
    size_t o = 0;
    if (prefix) {
        memcpy(norm, s->meta ? META : " ", sp_len);
        o = sp_len;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ' && s->meta) {
            memcpy(norm + o, META, META_LEN);
            o += META_LEN;
        } else {
            norm[o++] = text[i];
        }
    }

    uint32_t ns = 0;
    for (size_t i = 0; i < nlen;) {
        size_t k = utf8_len((const unsigned char *)norm + i, nlen - i);
        if (k == 0)
            k = 1; /* the caller validated the text; a stray byte stays one symbol */
        int32_t id = strmap_find(&s->map, norm + i, k);
        if (id >= 0) {
            sym[ns++] = (spm_sym){(uint32_t)i, (uint32_t)k, id, 0, 0, false};
        } else {
            bool bytes = true;
            for (size_t j = 0; j < k; j++)
                bytes = bytes && s->byte_id[(unsigned char)norm[i + j]] >= 0;
            if (bytes) {
                for (size_t j = 0; j < k; j++)
                    sym[ns++] = (spm_sym){(uint32_t)(i + j), 1,
                                          s->byte_id[(unsigned char)norm[i + j]], 0, 0, true};
            } else if (s->fuse_unk && ns > 0 && sym[ns - 1].fixed && sym[ns - 1].id == s->unk &&
                       sym[ns - 1].start + sym[ns - 1].len == i) {
                sym[ns - 1].len += (uint32_t)k;
            } else {
                sym[ns++] = (spm_sym){(uint32_t)i, (uint32_t)k, s->unk, 0, 0, true};
            }
        }
        i += k;
    }
    for (uint32_t i = 0; i < ns; i++) {
        sym[i].prev = i ? i - 1 : NONE;
        sym[i].next = i + 1 < ns ? i + 1 : NONE;
    }
    for (uint32_t i = 0; i + 1 < ns; i++)
        if ((rc = spm_try(s, norm, sym, i, i + 1, &h)))
            goto out;
    while (h.n) {
        spm_cand c = heap_pop(&h);
        spm_sym *l = &sym[c.l], *r = &sym[c.r];
        if (l->len != c.llen || r->len != c.rlen || l->next != c.r)
            continue;
        l->len += r->len;
        l->id = c.result;
        r->len = 0;
        l->next = r->next;
        if (r->next != NONE)
            sym[r->next].prev = c.l;
        if ((rc = spm_try(s, norm, sym, l->prev, c.l, &h)) ||
            (rc = spm_try(s, norm, sym, c.l, l->next, &h)))
            goto out;
    }
    for (uint32_t i = ns ? 0 : NONE; i != NONE; i = sym[i].next) {
        if (sym[i].id < 0) {
            rc = actl__err(ACTL_EFORMAT, "the tokenizer has no <unk> token for text it cannot "
                                         "spell");
            goto out;
        }
        if ((rc = push_id(sym[i].id, ids, n, cap)))
            goto out;
    }
out:
    free(norm);
    free(sym);
    free(h.c);
    return rc;
}

static const actl__tok_ops spm_ops = {spm_encode, spm_free};

/* "<0xNN>" (upper-case hex, as SentencePiece writes them): the byte, else -1. */
static int byte_piece(const char *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    const char *a = memchr(hex, p[3], 16), *b = memchr(hex, p[4], 16);
    if (!a || !b || !p[3] || !p[4])
        return -1;
    return (int)((a - hex) * 16 + (b - hex));
}

/* SentencePiece's unknown and control tokens: never the result of merging
 * text (SentencePiece does not match them; llama2.c would). */
static bool spm_reserved(const char *p, size_t n)
{
    return (n == 5 && !memcmp(p, "<unk>", 5)) || (n == 3 && !memcmp(p, "<s>", 3)) ||
           (n == 4 && !memcmp(p, "</s>", 4));
}

/* The bytes a vocabulary string stands for: "▁" a space, <0xNN> its byte. */
static int spm_piece(const char *p, size_t n, bool meta, char **out, size_t *out_len)
{
    char *q = malloc(n + 1);
    if (!q)
        return actl__oom();
    size_t o = 0;
    int b = byte_piece(p, n);
    if (b >= 0) {
        q[o++] = (char)b;
    } else {
        for (size_t i = 0; i < n;) {
            if (meta && n - i >= META_LEN && !memcmp(p + i, META, META_LEN)) {
                q[o++] = ' ';
                i += META_LEN;
            } else {
                q[o++] = p[i++];
            }
        }
    }
    q[o] = '\0';
    *out = q;
    *out_len = o;
    return ACTL_OK;
}

/* Fills t from s->vocab (and s->score): the piece map, byte tokens, <unk>,
 * pieces. s becomes t's. */
static int spm_finish(spm *s, actl_tokenizer *t)
{
    int rc = ACTL_OK;
    t->ops = &spm_ops;
    t->impl = s;
    t->sentencepiece = true;
    for (int i = 0; i < 256; i++)
        s->byte_id[i] = -1;
    s->unk = -1;
    s->map.key = s->vocab;
    s->map.klen = s->vlen;
    s->map.mask = table_size(s->n) - 1;
    if (!(s->map.slot = calloc(s->map.mask + 1, sizeof *s->map.slot)))
        return actl__oom();
    for (size_t i = 0; i < s->n; i++) {
        if (!s->vocab[i])
            continue;
        int b = byte_piece(s->vocab[i], s->vlen[i]);
        if (b >= 0) {
            if (s->byte_id[b] < 0)
                s->byte_id[b] = (int32_t)i;
        } else if (s->vlen[i] == 5 && !memcmp(s->vocab[i], "<unk>", 5)) {
            if (s->unk < 0)
                s->unk = (int32_t)i;
        } else if (s->vlen[i] > 0 && !spm_reserved(s->vocab[i], s->vlen[i])) {
            strmap_put(&s->map, (int32_t)i);
        }
    }
    if (!(t->pieces = calloc(s->n, sizeof *t->pieces)) ||
        !(t->piece_len = calloc(s->n, sizeof *t->piece_len)))
        return actl__oom();
    t->n_vocab = s->n;
    for (size_t i = 0; i < s->n; i++)
        if (s->vocab[i] && (rc = spm_piece(s->vocab[i], s->vlen[i], s->meta, &t->pieces[i],
                                           &t->piece_len[i])))
            return rc;
    return rc;
}

static spm *spm_new(size_t n)
{
    spm *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->n = n;
    if (!(s->vocab = calloc(n, sizeof *s->vocab)) || !(s->vlen = calloc(n, sizeof *s->vlen)) ||
        !(s->score = calloc(n, sizeof *s->score))) {
        spm_free(s);
        return NULL;
    }
    return s;
}

static char *memdup0(const char *p, size_t n)
{
    char *q = malloc(n + 1);
    if (q) {
        memcpy(q, p, n);
        q[n] = '\0';
    }
    return q;
}

int actl__spm_from_vocab(const char *const *tokens, const float *scores, size_t n,
                         actl_tokenizer *t)
{
    int rc = ACTL_OK;
    spm *s = NULL;
    if (n == 0 || n > TOK_MAX_VOCAB) {
        rc = actl__err(ACTL_EFORMAT, "a vocabulary of %zu tokens", n);
        goto out;
    }
    if (!(s = spm_new(n))) {
        rc = actl__oom();
        goto out;
    }
    s->mode = SPM_SCORES;
    s->meta = true;
    s->add_prefix = true;
    for (size_t i = 0; i < n; i++) {
        if (!tokens[i])
            continue;
        s->vlen[i] = strlen(tokens[i]);
        if (!(s->vocab[i] = memdup0(tokens[i], s->vlen[i]))) {
            rc = actl__oom();
            goto out;
        }
        s->score[i] = scores ? scores[i] : 0.0f;
    }
    spm *own = s;
    s = NULL; /* t's from here, freed with t even on failure */
    rc = spm_finish(own, t);
out:
    spm_free(s);
    return rc;
}

/* ---- llama2.c tokenizer.bin --------------------------------------------- */

/* int32 max_token_length, then per token: float32 score, int32 length, the
 * bytes (no count: the file ends after the last token). */
static int load_bin(const char *path, actl_tokenizer *t)
{
    char *data = NULL;
    size_t size = 0;
    spm *s = NULL;
    int rc = actl__read_file(path, TOK_FILE_LIMIT, &data, &size);
    if (rc)
        goto out;
    int32_t max_len;
    if (size < 4) {
        rc = actl__err(ACTL_EFORMAT, "'%s': truncated tokenizer.bin (%zu bytes, no header)", path,
                       size);
        goto out;
    }
    memcpy(&max_len, data, 4);
    if (max_len <= 0 || max_len > 65536) {
        rc = actl__err(ACTL_EFORMAT, "'%s': max_token_length %d is not a tokenizer.bin header",
                       path, (int)max_len);
        goto out;
    }
    size_t n = 0;
    for (size_t off = 4; off < size; n++) {
        int32_t l;
        /* An empty token takes 8 bytes, so the 256 MiB file could hold 32M
         * of them: cap the count as tokenizer.json's ids are capped. */
        if (n == TOK_MAX_VOCAB) {
            rc = actl__err(ACTL_ELIMIT, "'%s': more than %zu tokens", path, TOK_MAX_VOCAB);
            goto out;
        }
        if (size - off < 8) {
            rc = actl__err(ACTL_EFORMAT, "'%s': truncated at token %zu (offset %zu)", path, n,
                           off);
            goto out;
        }
        memcpy(&l, data + off + 4, 4);
        if (l < 0 || l > max_len) {
            rc = actl__err(ACTL_EFORMAT, "'%s': token %zu has length %d (max_token_length %d)",
                           path, n, (int)l, (int)max_len);
            goto out;
        }
        if ((size_t)l > size - off - 8) {
            rc = actl__err(ACTL_EFORMAT,
                           "'%s': token %zu of %d bytes runs past the end of the file", path, n,
                           (int)l);
            goto out;
        }
        off += 8 + (size_t)l;
    }
    if (n == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': a tokenizer.bin without tokens", path);
        goto out;
    }
    if (!(s = spm_new(n))) {
        rc = actl__oom();
        goto out;
    }
    s->mode = SPM_SCORES;
    s->meta = false;
    s->add_prefix = true;
    size_t off = 4;
    for (size_t i = 0; i < n; i++) {
        int32_t l;
        memcpy(&s->score[i], data + off, 4);
        memcpy(&l, data + off + 4, 4);
        if (!(s->vocab[i] = memdup0(data + off + 8, (size_t)l))) {
            rc = actl__oom();
            goto out;
        }
        s->vlen[i] = (size_t)l;
        off += 8 + (size_t)l;
    }
    spm *own = s;
    s = NULL;
    if ((rc = spm_finish(own, t)))
        goto out;
    /* llama2.c's export spells BOS and EOS "\n<s>\n" and "\n</s>\n"; the ids
     * are fixed (run.c: BOS 1, EOS 2). */
    static const char *const specials[3] = {"<unk>", "<s>", "</s>"};
    for (int32_t i = 0; i < 3 && (size_t)i < n; i++) {
        const char *p = own->vocab[i];
        size_t l = own->vlen[i];
        while (l && *p == '\n') {
            p++;
            l--;
        }
        while (l && p[l - 1] == '\n')
            l--;
        size_t sl = strlen(specials[i]);
        if (l != sl || memcmp(p, specials[i], sl) != 0)
            continue;
        free(t->pieces[i]);
        if (!(t->pieces[i] = memdup0(specials[i], sl))) {
            rc = actl__oom();
            goto out;
        }
        t->piece_len[i] = sl;
        if ((rc = actl__tok_add(t, specials[i], sl, i, true)))
            goto out;
    }
    t->bos = n > 1 ? 1 : -1;
    t->eos = n > 2 ? 2 : -1;
out:
    spm_free(s);
    free(data);
    return rc;
}

/* ---- HF tokenizer.json, SentencePiece-style ----------------------------- */

static bool is_meta(const json_t *v)
{
    return json_is_string(v) && strcmp(json_string_value(v), META) == 0;
}

/* The Llama 2 normalizer: Prepend "▁" and/or Replace " " by "▁", alone or
 * in a Sequence. Sets *prepend when a Prepend is there. */
static bool meta_normalizer(const json_t *n, bool *prepend)
{
    if (!json_is_object(n))
        return false;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!type)
        return false;
    if (!strcmp(type, "Sequence")) {
        bool any = false;
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(n, "normalizers"), i, x) any |=
            meta_normalizer(x, prepend);
        return any;
    }
    if (!strcmp(type, "Prepend") && is_meta(json_object_get(n, "prepend"))) {
        *prepend = true;
        return true;
    }
    if (!strcmp(type, "Replace")) {
        const json_t *pat = json_object_get(json_object_get(n, "pattern"), "String");
        return json_is_string(pat) && !strcmp(json_string_value(pat), " ") &&
               is_meta(json_object_get(n, "content"));
    }
    return false;
}

/* A Metaspace pre-tokenizer that does not split (newer Mistral files): the
 * same effect as the normalizer above. */
static bool meta_pretokenizer(const json_t *p, bool *prepend)
{
    if (!json_is_object(p))
        return false;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type || strcmp(type, "Metaspace") != 0 || !is_meta(json_object_get(p, "replacement")) ||
        json_is_true(json_object_get(p, "split")))
        return false;
    const char *scheme = json_string_value(json_object_get(p, "prepend_scheme"));
    *prepend = !scheme || strcmp(scheme, "never") != 0;
    return true;
}

static bool spm_json(const json_t *root, bool *prepend)
{
    const json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || (type && strcmp(type, "BPE") != 0) ||
        !json_is_true(json_object_get(model, "byte_fallback")))
        return false;
    *prepend = false;
    return meta_normalizer(json_object_get(root, "normalizer"), prepend) ||
           meta_pretokenizer(json_object_get(root, "pre_tokenizer"), prepend);
}

/* A merge as "a b" or ["a", "b"]: the two halves. */
static bool merge_parts(const json_t *m, const char **a, size_t *al, const char **b, size_t *bl)
{
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return false;
        *a = s;
        *al = (size_t)(sp - s);
        *b = sp + 1;
        *bl = strlen(sp + 1);
        return true;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *al = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *bl = json_string_length(json_array_get(m, 1));
        return true;
    }
    return false;
}

static int load_spm_json(const json_t *root, const char *path, bool prepend, actl_tokenizer *t)
{
    int rc = ACTL_OK;
    char *cat = NULL;
    spm *s = NULL;
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges) || (added && !json_is_array(added))) {
        rc = actl__err(ACTL_EFORMAT, "'%s': model.vocab (an object) and model.merges (an array) "
                                     "are required",
                       path);
        goto out;
    }
    /* ids may have gaps and added tokens may lie past the model's vocabulary */
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)vocab, k, v)
    {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || (size_t)id >= TOK_MAX_VOCAB) {
            rc = actl__err(ACTL_EFORMAT, "'%s': vocab entry \"%s\" has no valid id", path, k);
            goto out;
        }
        if ((size_t)id >= n)
            n = (size_t)id + 1;
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        json_int_t id = json_integer_value(json_object_get(v, "id"));
        if (!json_is_integer(json_object_get(v, "id")) || id < 0 ||
            (size_t)id >= TOK_MAX_VOCAB || !json_is_string(json_object_get(v, "content"))) {
            rc = actl__err(ACTL_EFORMAT, "'%s': added_tokens[%zu] needs an id and a content",
                           path, i);
            goto out;
        }
        if ((size_t)id >= n)
            n = (size_t)id + 1;
    }
    if (n == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': an empty vocabulary", path);
        goto out;
    }
    if (!(s = spm_new(n))) {
        rc = actl__oom();
        goto out;
    }
    s->mode = SPM_RANKS;
    s->meta = true;
    s->add_prefix = prepend;
    s->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    json_object_foreach((json_t *)vocab, k, v)
    {
        size_t id = (size_t)json_integer_value(v);
        if (s->vocab[id]) {
            rc = actl__err(ACTL_EFORMAT, "'%s': id %zu is given to both \"%s\" and \"%s\"", path,
                           id, s->vocab[id], k);
            goto out;
        }
        s->vlen[id] = strlen(k);
        if (!(s->vocab[id] = memdup0(k, s->vlen[id]))) {
            rc = actl__oom();
            goto out;
        }
    }
    json_array_foreach(added, i, v)
    {
        size_t id = (size_t)json_integer_value(json_object_get(v, "id"));
        if (s->vocab[id])
            continue;
        const json_t *c = json_object_get(v, "content");
        s->vlen[id] = json_string_length(c);
        if (!(s->vocab[id] = memdup0(json_string_value(c), s->vlen[id]))) {
            rc = actl__oom();
            goto out;
        }
    }
    spm *own = s;
    s = NULL;
    if ((rc = spm_finish(own, t)))
        goto out;

    /* merges -> (pair of ids) -> rank, result; the first of duplicates wins */
    size_t nm = json_array_size(merges);
    own->mmask = table_size(nm) - 1;
    if (!(own->merges = calloc(own->mmask + 1, sizeof *own->merges))) {
        rc = actl__oom();
        goto out;
    }
    size_t cat_cap = 0;
    json_array_foreach(merges, i, v)
    {
        const char *a, *b;
        size_t al, bl;
        if (!merge_parts(v, &a, &al, &b, &bl)) {
            rc = actl__err(ACTL_EFORMAT, "'%s': merges[%zu] is not a pair of tokens", path, i);
            goto out;
        }
        if (al + bl + 1 > cat_cap) {
            free(cat);
            cat_cap = 2 * (al + bl + 1);
            if (!(cat = malloc(cat_cap))) {
                rc = actl__oom();
                goto out;
            }
        }
        memcpy(cat, a, al);
        memcpy(cat + al, b, bl);
        /* merges are looked up through the plain vocabulary: the map leaves
         * out byte and reserved tokens, which no merge of Llama's involves */
        int32_t ia = strmap_find(&own->map, a, al), ib = strmap_find(&own->map, b, bl),
                ir = strmap_find(&own->map, cat, al + bl);
        if (ia < 0 || ib < 0 || ir < 0) {
            rc = actl__err(ACTL_EFORMAT, "'%s': merges[%zu] (\"%.*s\" \"%.*s\") names a token "
                                         "not in the vocabulary",
                           path, i, (int)al, a, (int)bl, b);
            goto out;
        }
        uint64_t key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
        for (size_t j = (key * 0x9E3779B97F4A7C15ull >> 17) & own->mmask;;
             j = (j + 1) & own->mmask) {
            if (own->merges[j].key == key)
                break;
            if (own->merges[j].key == 0) {
                own->merges[j] = (spm_merge){key, (uint32_t)i, ir};
                break;
            }
        }
    }

    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) {
        int32_t u = -1;
        for (size_t j = 0; j < own->n && u < 0; j++)
            if (own->vocab[j] && !strcmp(own->vocab[j], unk))
                u = (int32_t)j;
        own->unk = u;
    }
    t->bos = t->eos = -1;
    json_array_foreach(added, i, v)
    {
        const json_t *c = json_object_get(v, "content");
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        if ((rc = actl__tok_add(t, json_string_value(c), json_string_length(c), id,
                                json_is_true(json_object_get(v, "special")))))
            goto out;
        /* an added token's piece is its text, whatever the vocabulary says */
        free(t->pieces[id]);
        t->piece_len[id] = json_string_length(c);
        if (!(t->pieces[id] = memdup0(json_string_value(c), t->piece_len[id]))) {
            rc = actl__oom();
            goto out;
        }
    }
    /* SentencePiece's names; Llama 2, TinyLlama and Mistral all use them */
    for (size_t j = 0; j < own->n; j++) {
        if (own->vocab[j] && !strcmp(own->vocab[j], "<s>") && t->bos < 0)
            t->bos = (int32_t)j;
        if (own->vocab[j] && !strcmp(own->vocab[j], "</s>") && t->eos < 0)
            t->eos = (int32_t)j;
    }
out:
    free(cat);
    spm_free(s);
    return rc;
}

/* ==== the API =========================================================== */

int actl__tok_add(actl_tokenizer *t, const char *text, size_t len, int32_t id, bool special)
{
    if (len == 0 || id < 0)
        return ACTL_OK; /* an empty text matches nothing */
    /* the struct keeps no capacity; added tokens are few */
    actl__tok_added *a = realloc(t->added, (t->n_added + 1) * sizeof *a);
    if (!a)
        return actl__oom();
    t->added = a;
    char *c = memdup0(text, len);
    if (!c)
        return actl__oom();
    a[t->n_added++] = (actl__tok_added){c, len, id, special};
    return ACTL_OK;
}

void actl_tokenizer_free(actl_tokenizer *t)
{
    if (!t)
        return;
    if (t->ops && t->ops->free)
        t->ops->free(t->impl);
    if (t->pieces)
        for (size_t i = 0; i < t->n_vocab; i++)
            free(t->pieces[i]);
    free(t->pieces);
    free(t->piece_len);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].text);
    free(t->added);
    free(t);
}

static int added_cmp(const void *pa, const void *pb)
{
    const actl__tok_added *a = pa, *b = pb;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* The first bytes of a file, to tell the formats apart. */
static int sniff(const char *path, unsigned char *buf, size_t cap, size_t *got)
{
    int fd;
    uint64_t size;
    int rc = actl__open_regular(path, &fd, &size);
    if (rc)
        return rc;
    *got = 0;
    while (*got < cap) {
        ssize_t r = read(fd, buf + *got, cap - *got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = actl__err(ACTL_EIO, "cannot read '%s': %s", path, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        *got += (size_t)r;
    }
    close(fd);
    return rc;
}

/* tiktoken's "base64 rank" lines. */
static bool looks_tiktoken(const unsigned char *b, size_t n)
{
    size_t i = 0;
    while (i < n && (isalnum(b[i]) || b[i] == '+' || b[i] == '/' || b[i] == '='))
        i++;
    if (i == 0 || i >= n || b[i] != ' ')
        return false;
    size_t d = ++i;
    while (i < n && b[i] >= '0' && b[i] <= '9')
        i++;
    return i > d && (i == n || b[i] == '\n' || b[i] == '\r');
}

static int load_json(const char *path, const char *pre, actl_tokenizer *t)
{
    char *data = NULL;
    size_t size = 0;
    json_t *root = NULL;
    int rc = actl__read_file(path, TOK_FILE_LIMIT, &data, &size);
    if (rc)
        goto out;
    if ((rc = actl__json_parse(data, size, path, &root)))
        goto out;
    bool prepend = false;
    if (!json_is_object(root)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': a tokenizer file holds a JSON object", path);
    } else if (!json_is_object(json_object_get(root, "model"))) {
        /* a GPT-2-style vocabulary: token -> id (GPT-2's has a token "model"),
         * with merges beside it */
        char *dir = strdup(path);
        if (!dir) {
            rc = actl__oom();
            goto out;
        }
        char *slash = strrchr(dir, '/');
        const char *mname = ends_with(path, "encoder.json") ? "vocab.bpe" : "merges.txt";
        char *merges = slash ? (*slash = '\0', actl__path_join(dir, mname)) : strdup(mname);
        free(dir);
        if (!merges) {
            rc = actl__oom();
            goto out;
        }
        if (!actl__exists(merges))
            rc = actl__err(ACTL_EFORMAT,
                           "'%s' is neither a tokenizer.json (no \"model\") nor a vocabulary "
                           "with '%s' beside it",
                           path, merges);
        else
            rc = actl__bpe_from_vocab(path, merges, pre, t);
        free(merges);
    } else if (spm_json(root, &prepend)) {
        rc = load_spm_json(root, path, prepend, t);
    } else {
        rc = actl__bpe_from_json(root, path, pre, t);
    }
out:
    json_decref(root);
    free(data);
    return rc;
}

static int load_file(const char *path, const char *pre, actl_tokenizer *t)
{
    unsigned char head[64];
    size_t got = 0;
    int rc = sniff(path, head, sizeof head, &got);
    if (rc)
        return rc;
    const char *name = base_name(path);
    if (ends_with(name, ".gguf") || (got >= 4 && !memcmp(head, "GGUF", 4)))
        return actl__tok_from_gguf(path, pre, t);
    size_t i = 0;
    while (i < got && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t'))
        i++;
    if (ends_with(name, ".json") || (i < got && head[i] == '{'))
        return load_json(path, pre, t);
    if (looks_tiktoken(head, got))
        return actl__bpe_from_tiktoken(path, pre, t);
    /* A SentencePiece model is a protobuf ModelProto whose first field is
     * the repeated `pieces` (field 1, length-delimited: 0x0a). */
    if (got > 0 && head[0] == 0x0a && ends_with(name, ".model"))
        return actl__err(ACTL_EUNSUPPORTED,
                         "'%s' is a SentencePiece protobuf model, which is not read: use the "
                         "model's tokenizer.json or a llama2.c tokenizer.bin",
                         path);
    int32_t max_len = 0;
    if (got >= 4)
        memcpy(&max_len, head, 4);
    if (ends_with(name, ".bin") || (max_len > 0 && max_len <= 1024 && got >= 12))
        return load_bin(path, t);
    return actl__err(ACTL_EFORMAT,
                     "'%s': unknown tokenizer format (expected tokenizer.json, vocab.json, "
                     "tiktoken tokenizer.model, llama2.c tokenizer.bin or GGUF)",
                     path);
}

int actl_tokenizer_load(const char *path, const char *pre, actl_tokenizer **out)
{
    int rc = ACTL_OK;
    actl_tokenizer *t = NULL;
    char *file = NULL;
    if (!path || !out)
        return actl__err(ACTL_EINVAL, "actl_tokenizer_load: path and out are required");
    *out = NULL;
    if (!(t = calloc(1, sizeof *t))) {
        rc = actl__oom();
        goto out;
    }
    t->bos = t->eos = -1;
    t->add_bos = -1;
    if (actl__is_dir(path)) {
        static const char *const names[] = {"tokenizer.json", "tokenizer.model", "vocab.json",
                                            "encoder.json", "tokenizer.bin"};
        for (size_t i = 0; i < sizeof names / sizeof *names && !file; i++) {
            char *p = actl__path_join(path, names[i]);
            if (!p) {
                rc = actl__oom();
                goto out;
            }
            if (actl__exists(p))
                file = p;
            else
                free(p);
        }
        if (!file) {
            rc = actl__err(ACTL_ENOTFOUND,
                           "'%s' holds no tokenizer (tokenizer.json, tokenizer.model, "
                           "vocab.json, encoder.json or tokenizer.bin)",
                           path);
            goto out;
        }
        rc = load_file(file, pre, t);
    } else {
        rc = load_file(path, pre, t);
    }
    if (rc)
        goto out;
    if (t->n_vocab == 0 || !t->ops || !t->pieces) {
        rc = actl__err(ACTL_EFORMAT, "'%s': an empty vocabulary", file ? file : path);
        goto out;
    }
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id >= t->n_vocab) {
            rc = actl__err(ACTL_EFORMAT, "'%s': added token \"%s\" has id %d, outside the "
                                         "vocabulary of %zu",
                           file ? file : path, t->added[i].text, (int)t->added[i].id,
                           t->n_vocab);
            goto out;
        }
    if (t->add_bos < 0)
        t->add_bos = t->sentencepiece && t->bos >= 0;
    if (t->bos < 0)
        t->add_bos = 0;
    /* longest first, so that the first match at a position is the longest */
    if (t->n_added > 1)
        qsort(t->added, t->n_added, sizeof *t->added, added_cmp);
    *out = t;
    t = NULL;
out:
    free(file);
    actl_tokenizer_free(t);
    return rc;
}

size_t actl_tokenizer_vocab_size(const actl_tokenizer *t)
{
    return t ? t->n_vocab : 0;
}

int actl_tokenizer_adds_bos(const actl_tokenizer *t)
{
    return t ? t->add_bos > 0 : 0;
}

int actl_tokenizer_sentencepiece(const actl_tokenizer *t)
{
    return t ? t->sentencepiece : 0;
}

int32_t actl_tokenizer_bos(const actl_tokenizer *t)
{
    return t ? t->bos : -1;
}

int32_t actl_tokenizer_eos(const actl_tokenizer *t)
{
    return t ? t->eos : -1;
}

int actl_tokenizer_encode(const actl_tokenizer *t, const char *text, size_t len, int flags,
                          int32_t **ids, size_t *n)
{
    int rc = ACTL_OK;
    int32_t *out = NULL;
    size_t cnt = 0, cap = 0;
    if (!t || !ids || !n || (!text && len))
        return actl__err(ACTL_EINVAL, "actl_tokenizer_encode: tokenizer, ids and n are required");
    *ids = NULL;
    *n = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_len((const unsigned char *)text + i, len - i);
        if (!k) {
            rc = actl__err(ACTL_EINVAL, "text to tokenize is not valid UTF-8 (byte %zu: 0x%02x)",
                           i, (unsigned)(unsigned char)text[i]);
            goto out;
        }
        i += k;
    }
    if ((flags & ACTL_TOK_BOS) && t->bos >= 0 && (rc = push_id(t->bos, &out, &cnt, &cap)))
        goto out;

    /* which bytes can start an added token that may match */
    bool starts[256] = {false};
    for (size_t j = 0; j < t->n_added; j++)
        if (!t->added[j].special || (flags & ACTL_TOK_SPECIAL))
            starts[(unsigned char)t->added[j].text[0]] = true;
    size_t frag = 0;
    for (size_t i = 0; i < len;) {
        const actl__tok_added *m = NULL;
        if (starts[(unsigned char)text[i]])
            for (size_t j = 0; j < t->n_added && !m; j++) {
                const actl__tok_added *a = &t->added[j];
                if ((!a->special || (flags & ACTL_TOK_SPECIAL)) && a->len <= len - i &&
                    !memcmp(text + i, a->text, a->len))
                    m = a;
            }
        if (!m) {
            i++;
            continue;
        }
        if (i > frag && (rc = t->ops->encode(t->impl, text + frag, i - frag, frag == 0, &out,
                                             &cnt, &cap)))
            goto out;
        if ((rc = push_id(m->id, &out, &cnt, &cap)))
            goto out;
        i += m->len;
        frag = i;
    }
    if (len > frag &&
        (rc = t->ops->encode(t->impl, text + frag, len - frag, frag == 0, &out, &cnt, &cap)))
        goto out;
    *ids = out;
    *n = cnt;
    out = NULL;
out:
    free(out);
    return rc;
}

const char *actl_tokenizer_piece(const actl_tokenizer *t, int32_t id, size_t *len)
{
    if (!t || id < 0 || (size_t)id >= t->n_vocab)
        return NULL;
    const char *p = t->pieces[id] ? t->pieces[id] : "";
    if (len)
        *len = t->pieces[id] ? t->piece_len[id] : 0;
    return p;
}

int actl_tokenizer_decode(const actl_tokenizer *t, const int32_t *ids, size_t n, char **text,
                          size_t *len)
{
    if (!t || !text || (!ids && n))
        return actl__err(ACTL_EINVAL, "actl_tokenizer_decode: tokenizer and text are required");
    *text = NULL;
    if (len)
        *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_vocab)
            return actl__err(ACTL_EINVAL, "token id %d is outside the vocabulary of %zu",
                             (int)ids[i], t->n_vocab);
        total += t->pieces[ids[i]] ? t->piece_len[ids[i]] : 0;
    }
    char *s = malloc(total + 1);
    if (!s)
        return actl__oom();
    size_t o = 0;
    /* The normalizer's dummy-prefix space sits on the first piece of the
     * text, which follows a BOS when there is one (llama2.c's rule too). */
    size_t first = 0;
    while (first < n && ids[first] == t->bos)
        first++;
    for (size_t i = 0; i < n; i++) {
        const char *p = t->pieces[ids[i]];
        size_t l = p ? t->piece_len[ids[i]] : 0;
        if (t->sentencepiece && i == first && l && p[0] == ' ') {
            p++;
            l--;
        }
        if (l)
            memcpy(s + o, p, l);
        o += l;
    }
    s[o] = '\0';
    *text = s;
    if (len)
        *len = o;
    return ACTL_OK;
}

int actl_tokenizer_continuation(const actl_tokenizer *t, int32_t prev, int32_t bos,
                                const int32_t *stop, size_t n_stop, const int32_t *ids,
                                size_t n, char **text, size_t *len)
{
    if (!t || !text || (!ids && n) || (!stop && n_stop))
        return actl__err(ACTL_EINVAL,
                         "actl_tokenizer_continuation: tokenizer and text are required");
    *text = NULL;
    if (len)
        *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += ids[i] >= 0 && (size_t)ids[i] < t->n_vocab && t->pieces[ids[i]]
                     ? t->piece_len[ids[i]] : 0;
    char *s = malloc(total + 1);
    if (!s)
        return actl__oom();
    size_t o = 0;
    for (size_t i = 0; i < n; prev = ids[i], i++) {
        int is_stop = 0;
        for (size_t k = 0; k < n_stop; k++)
            is_stop |= ids[i] == stop[k];
        /* ids past the tokenizer's vocabulary (a model's padded rows) have no text */
        if (is_stop || ids[i] < 0 || (size_t)ids[i] >= t->n_vocab || !t->pieces[ids[i]])
            continue;
        const char *p = t->pieces[ids[i]];
        size_t l = t->piece_len[ids[i]];
        /* the space a SentencePiece normalizer put before the text's first word */
        if (prev >= 0 && prev == bos && t->sentencepiece && l && p[0] == ' ') {
            p++;
            l--;
        }
        /* a lone control byte (a byte-fallback token) is not printed, as
         * llama2.c's safe_printf leaves it out */
        if (l == 1) {
            unsigned char c = (unsigned char)p[0];
            if (c < 0x80 && !(c >= 0x20 && c < 0x7F) && !(c == ' ' || (c >= '\t' && c <= '\r')))
                continue;
        }
        memcpy(s + o, p, l);
        o += l;
    }
    s[o] = '\0';
    *text = s;
    if (len)
        *len = o;
    return ACTL_OK;
}
