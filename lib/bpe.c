/*
 * bpe.c: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2, StarCoder2) from an
 * HF tokenizer.json, a GPT-2-style vocab.json + merges.txt, Meta's tiktoken
 * tokenizer.model, or a GGUF vocabulary handed over by gguf.c.
 *
 * Everything is kept as raw bytes: a vocabulary entry written in GPT-2's
 * byte-to-unicode alphabet is turned back into the bytes it stands for at
 * load, so that a pre-token's bytes start as one symbol per byte and the
 * merges work on ids. Two ways to rank a pair:
 *  - merges lists (tokenizer.json, merges.txt, GGUF): rank = the merge's
 *    line, looked up by the pair of ids;
 *  - tiktoken: rank = the id of the concatenated bytes, when that is a token.
 * Within a pre-token the lowest-ranked pair merges first, the leftmost on
 * ties (a heap ordered by (rank, position), stale entries skipped), as HF's
 * BPE model and tiktoken both do.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "internal.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pcre2.h>
#include <utf8proc.h>

/* Ids beyond this are refused: no real vocabulary comes near, and it keeps
 * a lying id from sizing a huge table. */
#define BPE_MAX_IDS (1 << 24)
/* Pre-tokenizer stages (regexes applied one inside the other's pieces). */
#define BPE_MAX_STAGES 4
/* Text files (vocab.json, merges.txt, tokenizer.model) larger than this are refused. */
#define BPE_MAX_FILE ((size_t)256 << 20)

/* The pre-tokenizer patterns (../shared/data/README.md, tokenizers/). */
static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RE_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RE_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* HF's Digits pre-tokenizer: each digit its own piece (individual_digits),
 * or runs of digits. */
static const char RE_DIGIT[] = "\\p{N}";
static const char RE_DIGITS[] = "\\p{N}+";

/* Llama 3 (3.1 and later) special tokens after the 128000 ranks of its
 * tokenizer.model; ids 128011.. are <|reserved_special_token_N|> from N = 3. */
static const char *const LLAMA3_SPECIAL[] = {
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
};
#define LLAMA3_BASE 128000
#define LLAMA3_NSPECIAL 256

/* Qwen2's specials; its vocab.json + merges.txt do not carry them. */
#define QWEN2_BASE 151643

typedef struct bpe_merge {
    int32_t l, r;   /* the pair of ids (l == -1: empty slot) */
    int32_t rank;
    int32_t id;     /* what the pair becomes */
} bpe_merge;

typedef struct bpe {
    char *origin;          /* names the file in messages */
    /* Raw bytes of id i: arena[start[i] .. start[i] + len[i]); start SIZE_MAX: no such id. */
    char *arena;
    size_t alen, acap;
    size_t *start;
    size_t *len;
    size_t n;              /* ids 0..n-1 */
    int32_t *vslot;        /* open addressing: raw bytes -> id, -1 empty */
    size_t vmask;
    bpe_merge *mslot;      /* open addressing: (l, r) -> merge; NULL with by_rank */
    size_t mmask;
    bool by_rank;          /* tiktoken: a pair's rank is the id of its concatenation */
    bool ignore_merges;    /* a pre-token that is a token is emitted whole */
    bool nfc;
    bool prefix_space;     /* ByteLevel add_prefix_space */
    int32_t byte_id[256];  /* the id of each single byte, -1 if none */
    pcre2_code *re[BPE_MAX_STAGES];
    size_t n_re;
} bpe;

/* ---- GPT-2's byte <-> unicode alphabet -------------------------------------
 * Bytes that are printable Latin-1 (33-126, 161-172, 174-255) stand for
 * themselves; the other 68 (0-32, 127-160, 173) are given the code points
 * 256.. in byte order, so that every byte is a visible character. */

/* The byte a code point of the alphabet stands for, or -1. */
static int bl_byte(int32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return cp;
    if (cp >= 256 && cp <= 288)
        return cp - 256;
    if (cp >= 289 && cp <= 322)
        return cp - 289 + 127;
    if (cp == 323)
        return 173;
    return -1;
}

/* Undoes the alphabet into out (room for len bytes: never longer). A string
 * with a character outside it (a special token such as "<|im_start|>" is
 * inside; one in another script is not) is kept as it is. */
static size_t bl_decode(const char *s, size_t len, char *out)
{
    size_t o = 0, i = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        int b = k > 0 ? bl_byte(cp) : -1;
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[o++] = (char)b;
        i += (size_t)k;
    }
    return o;
}

/* ---- hashing ---------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(int32_t l, int32_t r)
{
    uint64_t x = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    x ^= x >> 33; /* splitmix64's finalizer */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

static int32_t vocab_find(const bpe *b, const char *s, size_t n)
{
    if (!b->vslot)
        return -1;
    for (size_t i = hash_bytes(s, n) & b->vmask;; i = (i + 1) & b->vmask) {
        int32_t id = b->vslot[i];
        if (id < 0)
            return -1;
        if (b->len[id] == n && memcmp(b->arena + b->start[id], s, n) == 0)
            return id;
    }
}

static const bpe_merge *merge_find(const bpe *b, int32_t l, int32_t r)
{
    for (size_t i = hash_pair(l, r) & b->mmask;; i = (i + 1) & b->mmask) {
        const bpe_merge *m = &b->mslot[i];
        if (m->l < 0)
            return NULL;
        if (m->l == l && m->r == r)
            return m;
    }
}

/* ---- building ------------------------------------------------------------------ */

static void bpe_free(void *impl)
{
    bpe *b = impl;
    if (!b)
        return;
    for (size_t i = 0; i < b->n_re; i++)
        pcre2_code_free(b->re[i]);
    free(b->origin);
    free(b->arena);
    free(b->start);
    free(b->len);
    free(b->vslot);
    free(b->mslot);
    free(b);
}

static int bpe_new(const char *origin, size_t n, bpe **out)
{
    int rc = ACTL_OK;
    bpe *b = calloc(1, sizeof *b);
    if (!b || !(b->origin = strdup(origin)) || !(b->start = malloc(n * sizeof *b->start)) ||
        !(b->len = calloc(n, sizeof *b->len))) {
        rc = actl__oom();
        goto out;
    }
    b->n = n;
    for (size_t i = 0; i < n; i++)
        b->start[i] = SIZE_MAX;
    *out = b;
    b = NULL;
out:
    bpe_free(b);
    return rc;
}

/* Sets id's bytes; `level`: s is written in the byte-level alphabet. A
 * second entry for one id is an error. */
static int bpe_put(bpe *b, int64_t id, const char *s, size_t len, bool level)
{
    if (id < 0 || (uint64_t)id >= b->n)
        return actl__err(ACTL_EFORMAT, "'%s': token id %lld out of range", b->origin,
                         (long long)id);
    if (b->start[id] != SIZE_MAX)
        return actl__err(ACTL_EFORMAT, "'%s': token id %lld given twice", b->origin,
                         (long long)id);
    if (len > SIZE_MAX / 2 - b->alen)
        return actl__oom();
    /* The arena exists once any token is set, even an empty one: pieces
     * point into it. */
    while (b->alen + len > b->acap || !b->arena) {
        size_t c = b->acap ? 2 * b->acap : 1 << 16;
        char *p = realloc(b->arena, c);
        if (!p)
            return actl__oom();
        b->arena = p;
        b->acap = c;
    }
    char *dst = b->arena + b->alen;
    if (level)
        len = bl_decode(s, len, dst);
    else if (len)
        memcpy(dst, s, len);
    b->start[id] = b->alen;
    b->len[id] = len;
    b->alen += len;
    return ACTL_OK;
}

/* The raw-bytes index over every id set so far (ids set later are pieces
 * only: specials beyond the vocabulary must never come out of a merge or a
 * whole-pre-token lookup). A duplicate keeps the lower id. */
static int bpe_index(bpe *b)
{
    size_t cap = pow2_at_least(2 * b->n + 1);
    b->vslot = malloc(cap * sizeof *b->vslot);
    if (!b->vslot)
        return actl__oom();
    memset(b->vslot, 0xff, cap * sizeof *b->vslot);
    b->vmask = cap - 1;
    for (size_t id = 0; id < b->n; id++) {
        if (b->start[id] == SIZE_MAX)
            continue;
        const char *s = b->arena + b->start[id];
        size_t n = b->len[id];
        size_t i = hash_bytes(s, n) & b->vmask;
        bool dup = false;
        for (; b->vslot[i] >= 0; i = (i + 1) & b->vmask) {
            int32_t o = b->vslot[i];
            if (b->len[o] == n && memcmp(b->arena + b->start[o], s, n) == 0) {
                dup = true;
                break;
            }
        }
        if (!dup)
            b->vslot[i] = (int32_t)id;
    }
    for (int c = 0; c < 256; c++) {
        char ch = (char)c;
        b->byte_id[c] = vocab_find(b, &ch, 1);
    }
    return ACTL_OK;
}

static int bpe_merges_alloc(bpe *b, size_t n_merges)
{
    size_t cap = pow2_at_least(2 * n_merges + 1);
    b->mslot = malloc(cap * sizeof *b->mslot);
    if (!b->mslot)
        return actl__oom();
    for (size_t i = 0; i < cap; i++)
        b->mslot[i].l = -1;
    b->mmask = cap - 1;
    return ACTL_OK;
}

/* Looks up one side of a merge, written in the byte-level alphabet. */
static int merge_side(const bpe *b, const char *s, size_t len, size_t rank, char *buf,
                      int32_t *id)
{
    size_t n = bl_decode(s, len, buf);
    *id = vocab_find(b, buf, n);
    if (*id < 0)
        return actl__err(ACTL_EFORMAT, "'%s': merge %zu names '%.*s', which is not in the "
                         "vocabulary", b->origin, rank + 1, (int)(len > 200 ? 200 : len), s);
    return ACTL_OK;
}

/* Adds merge `rank`: l + r (byte-level strings). At most as many merges as
 * bpe_merges_alloc was told. The first of two equal pairs keeps its rank. */
static int bpe_add_merge(bpe *b, const char *l, size_t ll, const char *r, size_t rl, size_t rank)
{
    int rc = ACTL_OK;
    int32_t il, ir;
    char *buf = malloc(ll + rl + 1);
    if (!buf)
        return actl__oom();
    if ((rc = merge_side(b, l, ll, rank, buf, &il)) || (rc = merge_side(b, r, rl, rank, buf, &ir)))
        goto out;
    size_t nl = b->len[il], nr = b->len[ir];
    memcpy(buf, b->arena + b->start[il], nl);
    memcpy(buf + nl, b->arena + b->start[ir], nr);
    int32_t id = vocab_find(b, buf, nl + nr);
    if (id < 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': merge %zu ('%.*s' '%.*s') makes a token that is "
                       "not in the vocabulary", b->origin, rank + 1, (int)(ll > 100 ? 100 : ll),
                       l, (int)(rl > 100 ? 100 : rl), r);
        goto out;
    }
    size_t i = hash_pair(il, ir) & b->mmask;
    for (; b->mslot[i].l >= 0; i = (i + 1) & b->mmask)
        if (b->mslot[i].l == il && b->mslot[i].r == ir)
            goto out;
    b->mslot[i] = (bpe_merge){il, ir, (int32_t)rank, id};
out:
    free(buf);
    return rc;
}

/* Adds merge `rank` from a line "a b" (a and b without spaces: the alphabet
 * has none). */
static int bpe_add_merge_line(bpe *b, const char *s, size_t len, size_t rank)
{
    const char *sp = memchr(s, ' ', len);
    if (!sp || sp == s || sp + 1 == s + len || memchr(sp + 1, ' ', (size_t)(s + len - sp - 1)))
        return actl__err(ACTL_EFORMAT, "'%s': merge %zu ('%.*s') is not two tokens separated "
                         "by one space", b->origin, rank + 1, (int)(len > 200 ? 200 : len), s);
    return bpe_add_merge(b, s, (size_t)(sp - s), sp + 1, (size_t)(s + len - sp - 1), rank);
}

static int bpe_add_stage(bpe *b, const char *pattern)
{
    int err;
    PCRE2_SIZE off;
    if (b->n_re == BPE_MAX_STAGES)
        return actl__err(ACTL_EUNSUPPORTED, "'%s': more than %d pre-tokenizer patterns",
                         b->origin, BPE_MAX_STAGES);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return actl__err(ACTL_EFORMAT, "'%s': pre-tokenizer pattern '%s' at offset %zu: %s",
                         b->origin, pattern, (size_t)off, (const char *)msg);
    }
    /* Without JIT (not built for this CPU) the interpreter does the same work. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    b->re[b->n_re++] = re;
    return ACTL_OK;
}

/* A pre-tokenizer by name. The GGUF names (tokenizer.ggml.pre) are accepted
 * too: "gpt-2" and "default" are gpt2, "llama-bpe" is llama3, "starcoder"
 * is smollm's digits-then-GPT-2. */
static int bpe_preset(bpe *b, const char *name)
{
    for (size_t i = 0; i < b->n_re; i++)
        pcre2_code_free(b->re[i]);
    b->n_re = 0;
    b->nfc = false;
    b->prefix_space = false;
    if (!strcmp(name, "gpt2") || !strcmp(name, "gpt-2") || !strcmp(name, "default"))
        return bpe_add_stage(b, RE_GPT2);
    if (!strcmp(name, "llama3") || !strcmp(name, "llama-bpe")) {
        b->ignore_merges = true;
        return bpe_add_stage(b, RE_LLAMA3);
    }
    if (!strcmp(name, "qwen2")) {
        b->nfc = true;
        return bpe_add_stage(b, RE_QWEN2);
    }
    if (!strcmp(name, "smollm") || !strcmp(name, "starcoder")) {
        int rc = bpe_add_stage(b, RE_DIGIT);
        return rc ? rc : bpe_add_stage(b, RE_GPT2);
    }
    return actl__err(ACTL_EUNSUPPORTED, "'%s': unknown pre-tokenizer '%s' (known: gpt2, "
                     "llama3, qwen2, smollm)", b->origin, name);
}

/* ---- encoding ------------------------------------------------------------------ */

typedef struct sym {
    int32_t id;
    int32_t prev, next; /* neighbours' indices, -1 at the ends */
    size_t end;         /* bytes [index, end) of the pre-token */
    bool dead;          /* merged into its left neighbour */
} sym;

typedef struct cand {
    int32_t rank;
    int32_t l, r;       /* symbol indices */
    int32_t idl, idr;   /* their ids when pushed: a changed id makes the entry stale */
    int32_t id;
} cand;

typedef struct enc {
    const bpe *b;
    pcre2_match_data *md[BPE_MAX_STAGES];
    sym *syms;
    cand *heap;
    size_t cap;         /* syms: cap; heap: 3 * cap */
    int32_t **ids;
    size_t *n, *cap_ids;
} enc;

static int emit(enc *e, int32_t id)
{
    int32_t *p = actl__grow(*e->ids, *e->n, e->cap_ids, sizeof *p, 64);
    if (!p)
        return actl__oom();
    *e->ids = p;
    p[(*e->n)++] = id;
    return ACTL_OK;
}

static bool cand_less(const cand *a, const cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->l < b->l);
}

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c]))
            c++;
        if (!cand_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

/* Pushes the pair (l, next of l) if it merges. */
static void push_pair(const enc *e, const char *s, int32_t l, cand *h, size_t *nh)
{
    const bpe *b = e->b;
    if (l < 0)
        return;
    int32_t r = e->syms[l].next;
    if (r < 0)
        return;
    cand c = {0, l, r, e->syms[l].id, e->syms[r].id, 0};
    if (b->by_rank) {
        int32_t id = vocab_find(b, s + l, e->syms[r].end - (size_t)l);
        if (id < 0)
            return;
        c.rank = c.id = id;
    } else {
        const bpe_merge *m = merge_find(b, c.idl, c.idr);
        if (!m)
            return;
        c.rank = m->rank;
        c.id = m->id;
    }
    heap_push(h, nh, c);
}

/* One pre-token: whole if allowed, else bytes merged by rank. */
static int bpe_word(enc *e, const char *s, size_t len)
{
    const bpe *b = e->b;
    if (len == 0)
        return ACTL_OK;
    if (b->ignore_merges || len == 1) {
        int32_t id = vocab_find(b, s, len);
        if (id >= 0)
            return emit(e, id);
    }
    if (len > INT32_MAX)
        return actl__err(ACTL_ELIMIT, "'%s': a pre-token of %zu bytes is too long", b->origin,
                         len);
    if (len > e->cap) {
        size_t c = len < 64 ? 64 : len;
        sym *ns = realloc(e->syms, c * sizeof *ns);
        if (!ns)
            return actl__oom();
        e->syms = ns;
        cand *nh = realloc(e->heap, 3 * c * sizeof *nh);
        if (!nh)
            return actl__oom();
        e->heap = nh;
        e->cap = c;
    }
    sym *y = e->syms;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (b->byte_id[c] < 0)
            return actl__err(ACTL_EUNSUPPORTED, "'%s': the vocabulary has no token for byte "
                             "0x%02x", b->origin, c);
        y[i] = (sym){b->byte_id[c], (int32_t)i - 1, i + 1 < len ? (int32_t)i + 1 : -1, i + 1,
                     false};
    }
    size_t nh = 0;
    for (size_t i = 0; i + 1 < len; i++)
        push_pair(e, s, (int32_t)i, e->heap, &nh);
    while (nh) {
        cand c = heap_pop(e->heap, &nh);
        sym *L = &y[c.l];
        if (L->dead || L->next != c.r || L->id != c.idl || y[c.r].id != c.idr)
            continue; /* stale: one side has merged since */
        sym *R = &y[c.r];
        L->id = c.id;
        L->end = R->end;
        L->next = R->next;
        if (R->next >= 0)
            y[R->next].prev = c.l;
        R->dead = true;
        push_pair(e, s, L->prev, e->heap, &nh);
        push_pair(e, s, c.l, e->heap, &nh);
    }
    for (int32_t i = 0; i >= 0; i = y[i].next) {
        int rc = emit(e, y[i].id);
        if (rc)
            return rc;
    }
    return ACTL_OK;
}

/* Stage k's pattern splits s: each match and each run of text between
 * matches goes on to stage k + 1 (HF's Split with behaviour "Isolated"),
 * the last stage's pieces to BPE. */
static int split(enc *e, size_t k, const char *s, size_t len)
{
    const bpe *b = e->b;
    if (k == b->n_re)
        return bpe_word(e, s, len);
    size_t pos = 0;
    int rc = ACTL_OK;
    /* UTF-8 was checked once over the whole fragment; rechecking the
     * subject at every match would make the loop quadratic. */
    uint32_t opts = PCRE2_NO_UTF_CHECK;
    while (pos < len) {
        int m = pcre2_match(b->re[k], (PCRE2_SPTR)s, len, pos, opts, e->md[k], NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(m, msg, sizeof msg);
            /* PCRE2's own limits (match 10^7 steps per call by default, depth,
             * heap, the JIT's 32 KiB stack) stop a pattern that backtracks catastrophically: a limit,
             * not a bad argument. */
            bool lim = m == PCRE2_ERROR_MATCHLIMIT || m == PCRE2_ERROR_DEPTHLIMIT ||
                       m == PCRE2_ERROR_HEAPLIMIT || m == PCRE2_ERROR_JIT_STACKLIMIT;
            return actl__err(lim ? ACTL_ELIMIT : ACTL_EINVAL, "'%s': pre-tokenizer: %s",
                             b->origin, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md[k]);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* An empty match (none of our patterns makes one): search on
             * from the same place for a non-empty one. */
            if (opts & PCRE2_NOTEMPTY_ATSTART)
                break;
            opts |= PCRE2_NOTEMPTY_ATSTART;
            continue;
        }
        opts &= ~(uint32_t)PCRE2_NOTEMPTY_ATSTART;
        if (ms > pos && (rc = split(e, k + 1, s + pos, ms - pos)))
            return rc;
        if ((rc = split(e, k + 1, s + ms, me - ms)))
            return rc;
        pos = me;
    }
    if (pos < len)
        rc = split(e, k + 1, s + pos, len - pos);
    return rc;
}

static bool valid_utf8(const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            return false;
        i += (size_t)k;
    }
    return true;
}

static int bpe_encode(const void *impl, const char *text, size_t len, bool first, int32_t **ids,
                      size_t *n, size_t *cap)
{
    const bpe *b = impl;
    enc e = {.b = b, .ids = ids, .n = n, .cap_ids = cap};
    utf8proc_uint8_t *norm = NULL;
    char *pref = NULL;
    int rc = ACTL_OK;
    (void)first; /* HF's ByteLevel prefixes every fragment, not only the first */
    if (len == 0)
        goto out;
    if (!valid_utf8(text, len)) {
        rc = actl__err(ACTL_EINVAL, "'%s': text to encode is not valid UTF-8", b->origin);
        goto out;
    }
    if (b->nfc) {
        utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                          &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (m < 0) {
            rc = actl__err(ACTL_EINVAL, "'%s': cannot normalize text: %s", b->origin,
                           utf8proc_errmsg(m));
            goto out;
        }
        text = (const char *)norm;
        len = (size_t)m;
    }
    if (b->prefix_space && len && text[0] != ' ') {
        if (!(pref = malloc(len + 1))) {
            rc = actl__oom();
            goto out;
        }
        pref[0] = ' ';
        memcpy(pref + 1, text, len);
        text = pref;
        len++;
    }
    for (size_t k = 0; k < b->n_re; k++)
        if (!(e.md[k] = pcre2_match_data_create_from_pattern(b->re[k], NULL))) {
            rc = actl__oom();
            goto out;
        }
    rc = split(&e, 0, text, len);
out:
    for (size_t k = 0; k < b->n_re; k++)
        pcre2_match_data_free(e.md[k]);
    free(e.syms);
    free(e.heap);
    free(norm);
    free(pref);
    return rc;
}

static const actl__tok_ops bpe_ops = {bpe_encode, bpe_free};

/* ---- handing over to the tokenizer ---------------------------------------------- */

/* Hands b to t (t owns it from here, on failure too) with every id's piece:
 * the raw bytes, or "" for an id the file leaves out. Added tokens get
 * their text afterwards through set_piece. */
static int bpe_finish(bpe *b, actl_tokenizer *t)
{
    t->ops = &bpe_ops;
    t->impl = b;
    t->bos = t->eos = -1;
    if (!(t->pieces = calloc(b->n, sizeof *t->pieces)) ||
        !(t->piece_len = calloc(b->n, sizeof *t->piece_len)))
        return actl__oom();
    t->n_vocab = b->n;
    for (size_t i = 0; i < b->n; i++) {
        size_t n = b->start[i] == SIZE_MAX ? 0 : b->len[i];
        if (!(t->pieces[i] = malloc(n + 1)))
            return actl__oom();
        if (n)
            memcpy(t->pieces[i], b->arena + b->start[i], n);
        t->pieces[i][n] = '\0';
        t->piece_len[i] = n;
    }
    return ACTL_OK;
}

static int set_piece(actl_tokenizer *t, int32_t id, const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        return actl__oom();
    memcpy(p, s, n);
    p[n] = '\0';
    free(t->pieces[id]);
    t->pieces[id] = p;
    t->piece_len[id] = n;
    return ACTL_OK;
}

static int add_token(actl_tokenizer *t, const char *s, size_t n, int32_t id, bool special)
{
    int rc = set_piece(t, id, s, n);
    return rc ? rc : actl__tok_add(t, s, n, id, special);
}

/* The id of a token by its text (raw bytes == its text for the ASCII
 * specials looked up here), -1 if absent. */
static int32_t find_text(const actl_tokenizer *t, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].text, s, n))
            return t->added[i].id;
    return vocab_find(t->impl, s, n);
}

/* BOS/EOS by the conventional names, when the file does not say. */
static void guess_bos_eos(actl_tokenizer *t)
{
    static const char *const eos[] = {"<|end_of_text|>", "<|endoftext|>", "</s>"};
    static const char *const bos[] = {"<|begin_of_text|>", "<s>", "<|endoftext|>"};
    for (size_t i = 0; t->eos < 0 && i < sizeof eos / sizeof *eos; i++)
        t->eos = find_text(t, eos[i]);
    for (size_t i = 0; t->bos < 0 && i < sizeof bos / sizeof *bos; i++)
        t->bos = find_text(t, bos[i]);
}

/* ---- tokenizer.json ----------------------------------------------------------------- */

/* Reads one pre-tokenizer object (or a Sequence of them) into b's stages.
 * *byte_level: a ByteLevel was seen. */
static int json_pre(bpe *b, const json_t *p, int depth, bool *byte_level)
{
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!json_is_object(p) || !type)
        return actl__err(ACTL_EFORMAT, "'%s': pre_tokenizer has no \"type\"", b->origin);
    if (!strcmp(type, "Sequence") && depth < 4) {
        const json_t *list = json_object_get(p, "pretokenizers");
        size_t i;
        const json_t *v;
        if (!json_is_array(list))
            return actl__err(ACTL_EFORMAT, "'%s': pre_tokenizer Sequence has no "
                             "\"pretokenizers\" array", b->origin);
        json_array_foreach(list, i, v) {
            int rc = json_pre(b, v, depth + 1, byte_level);
            if (rc)
                return rc;
        }
        return ACTL_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        const json_t *re = json_object_get(p, "use_regex");
        *byte_level = true;
        b->prefix_space = json_is_true(json_object_get(p, "add_prefix_space"));
        return re && !json_is_true(re) ? ACTL_OK : bpe_add_stage(b, RE_GPT2);
    }
    if (!strcmp(type, "Digits"))
        return bpe_add_stage(b, json_is_true(json_object_get(p, "individual_digits"))
                                    ? RE_DIGIT : RE_DIGITS);
    if (!strcmp(type, "Split")) {
        const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"),
                                                           "Regex"));
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (!re || !beh || strcmp(beh, "Isolated") ||
            json_is_true(json_object_get(p, "invert")))
            return actl__err(ACTL_EUNSUPPORTED, "'%s': pre_tokenizer Split is supported only "
                             "with a \"Regex\" pattern, behavior \"Isolated\", not inverted",
                             b->origin);
        return bpe_add_stage(b, re);
    }
    return actl__err(ACTL_EUNSUPPORTED, "'%s': pre_tokenizer type '%s' is not supported",
                     b->origin, type);
}

static int json_normalizer(bpe *b, const json_t *p, int depth)
{
    const char *type = json_string_value(json_object_get(p, "type"));
    if (json_is_null(p) || !p)
        return ACTL_OK;
    if (type && !strcmp(type, "NFC")) {
        b->nfc = true;
        return ACTL_OK;
    }
    if (type && !strcmp(type, "Sequence") && depth < 4) {
        const json_t *list = json_object_get(p, "normalizers");
        size_t i;
        const json_t *v;
        json_array_foreach(list, i, v) {
            int rc = json_normalizer(b, v, depth + 1);
            if (rc)
                return rc;
        }
        return ACTL_OK;
    }
    return actl__err(ACTL_EUNSUPPORTED, "'%s': normalizer '%s' is not supported for byte-level "
                     "BPE", b->origin, type ? type : "?");
}

static int json_id(const json_t *v, const char *path, const char *what, int64_t *id)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) >= BPE_MAX_IDS)
        return actl__err(ACTL_EFORMAT, "'%s': %s is not a token id in [0, %d)", path, what,
                         BPE_MAX_IDS);
    *id = json_integer_value(v);
    return ACTL_OK;
}

/* bos_token / eos_token of a tokenizer_config.json beside path, if any
 * (a string or {"content": ...}). Best effort: anything unreadable is
 * ignored, the names are only a default. */
static void json_config_bos_eos(actl_tokenizer *t, const char *path)
{
    const char *slash = strrchr(path, '/');
    char *cfg = slash ? actl__strdup_printf("%.*s/tokenizer_config.json", (int)(slash - path),
                                            path)
                      : strdup("tokenizer_config.json");
    char *text = NULL;
    size_t len;
    json_t *root = NULL;
    if (cfg && actl__exists(cfg) && actl__read_file(cfg, BPE_MAX_FILE, &text, &len) == ACTL_OK &&
        actl__json_parse(text, len, cfg, &root) == ACTL_OK) {
        const json_t *add = json_object_get(root, "add_bos_token");
        if (json_is_boolean(add))
            t->add_bos = json_is_true(add);
        const char *keys[2] = {"bos_token", "eos_token"};
        int32_t *dst[2] = {&t->bos, &t->eos};
        for (int i = 0; i < 2; i++) {
            const json_t *v = json_object_get(root, keys[i]);
            const char *s = json_is_string(v) ? json_string_value(v)
                                               : json_string_value(json_object_get(v, "content"));
            if (s)
                *dst[i] = find_text(t, s);
        }
    }
    actl__err_clear();
    json_decref(root);
    free(text);
    free(cfg);
}

int actl__bpe_from_json(const json_t *root, const char *path, const char *pre, actl_tokenizer *t)
{
    int rc = ACTL_OK;
    bpe *b = NULL;
    const json_t *model = json_object_get(root, "model");
    const json_t *vocab = json_object_get(model, "vocab");
    const json_t *merges = json_object_get(model, "merges");
    const json_t *added = json_object_get(root, "added_tokens");
    const char *type = json_string_value(json_object_get(model, "type"));
    const char *key;
    const json_t *v;
    size_t i;
    int64_t id = 0, max_id = -1;
    bool byte_level = false;

    if (!json_is_object(model)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': no \"model\" object", path);
        goto out;
    }
    if (type && strcmp(type, "BPE")) {
        rc = actl__err(ACTL_EUNSUPPORTED, "'%s': model type '%s' is not BPE", path, type);
        goto out;
    }
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': model has no \"vocab\" object or no \"merges\" "
                       "array", path);
        goto out;
    }
    if (added && !json_is_array(added)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': \"added_tokens\" is not an array", path);
        goto out;
    }
    json_object_foreach((json_t *)vocab, key, v) {
        if ((rc = json_id(v, path, "a model.vocab value", &id)))
            goto out;
        max_id = id > max_id ? id : max_id;
    }
    json_array_foreach(added, i, v) {
        if (!json_is_string(json_object_get(v, "content"))) {
            rc = actl__err(ACTL_EFORMAT, "'%s': added_tokens[%zu] has no \"content\"", path, i);
            goto out;
        }
        if ((rc = json_id(json_object_get(v, "id"), path, "an added token's \"id\"", &id)))
            goto out;
        max_id = id > max_id ? id : max_id;
    }
    if ((rc = bpe_new(path, (size_t)(max_id + 1), &b)))
        goto out;
    json_object_foreach((json_t *)vocab, key, v)
        if ((rc = bpe_put(b, json_integer_value(v), key, strlen(key), true)))
            goto out;
    if ((rc = bpe_index(b)) || (rc = bpe_merges_alloc(b, json_array_size(merges))))
        goto out;
    json_array_foreach(merges, i, v) {
        if (json_is_string(v)) {
            rc = bpe_add_merge_line(b, json_string_value(v), json_string_length(v), i);
        } else if (json_is_array(v) && json_array_size(v) == 2 &&
                   json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
            const json_t *l = json_array_get(v, 0), *r = json_array_get(v, 1);
            rc = bpe_add_merge(b, json_string_value(l), json_string_length(l),
                               json_string_value(r), json_string_length(r), i);
        } else {
            rc = actl__err(ACTL_EFORMAT, "'%s': model.merges[%zu] is neither \"a b\" nor "
                           "[\"a\", \"b\"]", path, i);
        }
        if (rc)
            goto out;
    }
    b->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    const json_t *pt = json_object_get(root, "pre_tokenizer");
    if (pt && !json_is_null(pt) && (rc = json_pre(b, pt, 0, &byte_level)))
        goto out;
    if (!byte_level) {
        rc = actl__err(ACTL_EUNSUPPORTED, "'%s': not a byte-level BPE (no ByteLevel "
                       "pre-tokenizer)", path);
        goto out;
    }
    if ((rc = json_normalizer(b, json_object_get(root, "normalizer"), 0)) ||
        (pre && (rc = bpe_preset(b, pre))))
        goto out;
    rc = bpe_finish(b, t);
    b = NULL;
    if (rc)
        goto out;
    json_array_foreach(added, i, v) {
        const json_t *c = json_object_get(v, "content");
        if ((rc = add_token(t, json_string_value(c), json_string_length(c),
                            (int32_t)json_integer_value(json_object_get(v, "id")),
                            json_is_true(json_object_get(v, "special")))))
            goto out;
    }
    json_config_bos_eos(t, path);
    guess_bos_eos(t);
    /* HF puts BOS first when the post_processor's template names it */
    if (t->add_bos < 0 && t->bos >= 0) {
        const json_t *pp = json_object_get(root, "post_processor");
        char *dump = json_is_object(pp) ? json_dumps(pp, JSON_COMPACT) : NULL;
        char *want = actl__strdup_printf("\"SpecialToken\":{\"id\":\"%s\"", t->pieces[t->bos]);
        if (json_is_object(pp) && (!dump || !want))
            rc = actl__oom();
        else
            t->add_bos = dump && strstr(dump, want) != NULL;
        free(dump);
        free(want);
    }
out:
    bpe_free(b);
    return rc;
}

/* ---- vocab.json + merges.txt ---------------------------------------------------- */

/* Next line of [*p, end) without its "\n" / "\r\n"; false at the end. */
static bool next_line(const char **p, const char *end, const char **s, size_t *n)
{
    if (*p >= end)
        return false;
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    const char *e = nl ? nl : end;
    *s = *p;
    *n = (size_t)(e - *p);
    if (*n && (*s)[*n - 1] == '\r')
        (*n)--;
    *p = nl ? nl + 1 : end;
    return true;
}

int actl__bpe_from_vocab(const char *vocab_path, const char *merges_path, const char *pre,
                         actl_tokenizer *t)
{
    int rc;
    bpe *b = NULL;
    char *vtext = NULL, *mtext = NULL;
    size_t vlen, mlen;
    json_t *vocab = NULL;
    const char *key;
    json_t *v;
    int64_t id = 0, max_id = -1;

    if ((rc = actl__read_file(vocab_path, BPE_MAX_FILE, &vtext, &vlen)) ||
        (rc = actl__json_parse(vtext, vlen, vocab_path, &vocab)) ||
        (rc = actl__read_file(merges_path, BPE_MAX_FILE, &mtext, &mlen)))
        goto out;
    if (!json_is_object(vocab)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': not a JSON object of token ids", vocab_path);
        goto out;
    }
    json_object_foreach(vocab, key, v) {
        if ((rc = json_id(v, vocab_path, "a value", &id)))
            goto out;
        max_id = id > max_id ? id : max_id;
    }
    /* Neither file says which pre-tokenizer it wants. Qwen2's vocabulary is
     * recognized by its size (151643 entries, shared by Qwen1.5/2/2.5) and
     * Llama 3's (as ollama ships it) by its 128000; anything else is GPT-2's,
     * and the caller's pre overrides the guess. */
    size_t nv = json_object_size(vocab);
    const char *name = pre ? pre : nv == QWEN2_BASE ? "qwen2" : nv == LLAMA3_BASE ? "llama3"
                                                                                   : "gpt2";
    bool llama3 = (!strcmp(name, "llama3") || !strcmp(name, "llama-bpe")) &&
                  nv == LLAMA3_BASE && max_id + 1 == LLAMA3_BASE;
    bool qwen2 = !strcmp(name, "qwen2") && max_id + 1 == QWEN2_BASE;
    size_t n_ids = (size_t)(max_id + 1) + (llama3 ? LLAMA3_NSPECIAL : qwen2 ? 3 : 0);
    if ((rc = bpe_new(vocab_path, n_ids, &b)))
        goto out;
    json_object_foreach(vocab, key, v)
        if ((rc = bpe_put(b, json_integer_value(v), key, strlen(key), true)))
            goto out;
    if ((rc = bpe_index(b)))
        goto out;

    /* Merges: one "a b" per line. Only a FIRST line starting "#version" is a
     * header: "# #" and "## ##" are real merges in Llama 3's vocab.bpe. */
    const char *p = mtext, *end = mtext + mlen, *s;
    size_t n, count = 0, rank = 0;
    while (next_line(&p, end, &s, &n))
        count++;
    if ((rc = bpe_merges_alloc(b, count)))
        goto out;
    /* Merge errors name merges.txt. */
    char *mo = strdup(merges_path);
    if (!mo) {
        rc = actl__oom();
        goto out;
    }
    free(b->origin);
    b->origin = mo;
    p = mtext;
    for (size_t line = 0; next_line(&p, end, &s, &n); line++) {
        if ((line == 0 && n >= 8 && !memcmp(s, "#version", 8)) || n == 0)
            continue;
        if ((rc = bpe_add_merge_line(b, s, n, rank++)))
            goto out;
    }
    if ((rc = bpe_preset(b, name)))
        goto out;
    rc = bpe_finish(b, t);
    b = NULL;
    if (rc)
        goto out;
    if (llama3) {
        char buf[64];
        for (int i = 0; i < LLAMA3_NSPECIAL; i++) {
            int k = (int)(sizeof LLAMA3_SPECIAL / sizeof *LLAMA3_SPECIAL);
            const char *txt = LLAMA3_SPECIAL[i < k ? i : 0];
            if (i >= k) {
                snprintf(buf, sizeof buf, "<|reserved_special_token_%d|>", i - k + 3);
                txt = buf;
            }
            if ((rc = add_token(t, txt, strlen(txt), LLAMA3_BASE + i, true)))
                goto out;
        }
    } else if (qwen2) {
        static const char *const q[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
        for (int i = 0; i < 3; i++)
            if ((rc = add_token(t, q[i], strlen(q[i]), QWEN2_BASE + i, true)))
                goto out;
        t->eos = QWEN2_BASE; /* Qwen2 has no BOS */
        goto out;
    } else {
        int32_t eot = vocab_find(t->impl, "<|endoftext|>", 13);
        if (eot >= 0 && (rc = add_token(t, "<|endoftext|>", 13, eot, true)))
            goto out;
    }
    guess_bos_eos(t);
out:
    bpe_free(b);
    json_decref(vocab);
    free(vtext);
    free(mtext);
    return rc;
}

/* ---- tiktoken ------------------------------------------------------------------ */

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Standard base64 with padding; out has room for n bytes. -1 if malformed. */
static long b64_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    if (n == 0 || n % 4)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=' && i + 4 == n && j >= 2) {
                v[j] = 0;
                pad++;
            } else if (pad || (v[j] = b64_val((unsigned char)s[i + j])) < 0) {
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        out[o++] = (char)(w >> 16);
        if (pad < 2)
            out[o++] = (char)(w >> 8);
        if (pad < 1)
            out[o++] = (char)w;
    }
    return (long)o;
}

int actl__bpe_from_tiktoken(const char *path, const char *pre, actl_tokenizer *t)
{
    int rc;
    bpe *b = NULL;
    char *text = NULL, *buf = NULL;
    size_t len, n, lines = 0;
    const char *p, *end, *s;
    int64_t max_rank = -1;

    if ((rc = actl__read_file(path, BPE_MAX_FILE, &text, &len)))
        goto out;
    end = text + len;
    /* Pass 1: check every line, find the largest rank. */
    for (p = text; next_line(&p, end, &s, &n); lines++) {
        if (n == 0)
            continue;
        const char *sp = memchr(s, ' ', n);
        char *e;
        long long r = sp ? strtoll(sp + 1, &e, 10) : -1;
        if (!sp || sp == s || sp + 1 == s + n || e != s + n || r < 0 || r >= BPE_MAX_IDS ||
            sp[1] == '-' || sp[1] == '+' || sp[1] == ' ') {
            rc = actl__err(ACTL_EFORMAT, "'%s': line %zu is not \"<base64 token> <rank>\"",
                           path, lines + 1);
            goto out;
        }
        max_rank = r > max_rank ? r : max_rank;
    }
    if (max_rank < 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': no tokens", path);
        goto out;
    }
    /* Meta's Llama 3 special tokens follow its 128000 ranks. */
    bool llama3 = max_rank + 1 == LLAMA3_BASE;
    if ((rc = bpe_new(path, (size_t)max_rank + 1 + (llama3 ? LLAMA3_NSPECIAL : 0), &b)))
        goto out;
    if (!(buf = malloc(len + 1))) {
        rc = actl__oom();
        goto out;
    }
    for (p = text, lines = 0; next_line(&p, end, &s, &n); lines++) {
        if (n == 0)
            continue;
        const char *sp = memchr(s, ' ', n);
        long k = b64_decode(s, (size_t)(sp - s), buf);
        if (k < 0) {
            rc = actl__err(ACTL_EFORMAT, "'%s': line %zu: the token is not valid base64", path,
                           lines + 1);
            goto out;
        }
        if ((rc = bpe_put(b, strtoll(sp + 1, NULL, 10), buf, (size_t)k, false)))
            goto out;
    }
    if ((rc = bpe_index(b)))
        goto out;
    b->by_rank = true;
    /* tiktoken looks a whole piece up before merging; keep that whatever
     * pattern the caller picks. */
    if ((rc = bpe_preset(b, pre ? pre : "llama3")))
        goto out;
    b->ignore_merges = true;
    rc = bpe_finish(b, t);
    b = NULL;
    if (rc)
        goto out;
    if (llama3) {
        char name[64];
        int k = (int)(sizeof LLAMA3_SPECIAL / sizeof *LLAMA3_SPECIAL);
        for (int i = 0; i < LLAMA3_NSPECIAL; i++) {
            const char *txt = i < k ? LLAMA3_SPECIAL[i] : name;
            if (i >= k)
                snprintf(name, sizeof name, "<|reserved_special_token_%d|>", i - k + 3);
            if ((rc = add_token(t, txt, strlen(txt), LLAMA3_BASE + i, true)))
                goto out;
        }
        t->bos = LLAMA3_BASE;
        t->eos = LLAMA3_BASE + 1;
        t->add_bos = 1; /* Meta's encode starts every text with <|begin_of_text|> */
    }
out:
    bpe_free(b);
    free(buf);
    free(text);
    return rc;
}

/* ---- GGUF (gguf.c reads the file) -------------------------------------------------- */

int actl__bpe_from_list(const char *const *tokens, const size_t *tok_len, size_t n,
                        const char *const *merges, const size_t *merge_len, size_t n_merges,
                        const int32_t *types, const char *pre, const char *origin,
                        actl_tokenizer *t)
{
    int rc;
    bpe *b = NULL;
    if (n == 0 || n > BPE_MAX_IDS) {
        rc = actl__err(ACTL_EFORMAT, "'%s': %zu tokens (want 1 to %d)", origin, n, BPE_MAX_IDS);
        goto out;
    }
    if ((rc = bpe_new(origin, n, &b)))
        goto out;
    for (size_t i = 0; i < n; i++)
        if ((rc = bpe_put(b, (int64_t)i, tokens[i], tok_len[i], true)))
            goto out;
    if ((rc = bpe_index(b)) || (rc = bpe_merges_alloc(b, n_merges)))
        goto out;
    for (size_t i = 0; i < n_merges; i++)
        if ((rc = bpe_add_merge_line(b, merges[i], merge_len[i], i)))
            goto out;
    if ((rc = bpe_preset(b, pre ? pre : "gpt2")))
        goto out;
    rc = bpe_finish(b, t);
    b = NULL;
    if (rc)
        goto out;
    /* llama.cpp's token types: 3 control (special), 4 user-defined (an added
     * token matched always). */
    for (size_t i = 0; types && i < n; i++)
        if ((types[i] == 3 || types[i] == 4) &&
            (rc = add_token(t, tokens[i], tok_len[i], (int32_t)i, types[i] == 3)))
            goto out;
out:
    bpe_free(b);
    return rc;
}
