/* test_tokenizer.c: the tokenizer API and SentencePiece-style BPE
 * (lib/tokenizer.c) against hand-worked vocabularies, a naive transcription
 * of llama2.c's encode loop, and the reference ids in ../shared/data. */
#include <time.h>

#include <jansson.h>

#include "testutil.h"
#include "internal.h"

#define LLAMA_BIN SHARED_DATA "/llama2c/tokenizer.bin"
#define LLAMA_MODEL SHARED_DATA "/llama2c/tokenizer.model"
#define LLAMA_JSON SHARED_DATA "/tokenizers/llama2-spm/tokenizer.json"
#define LLAMA_CASES SHARED_DATA "/llamacpp-vocab/ggml-vocab-llama-spm.gguf"
#define BIN_CASES SHARED_DATA "/llama2c/expected/tokenizer_bin_encode_cases.json"

/* ---- a tiny llama2.c tokenizer.bin -------------------------------------- */

/* ids 0-2 as llama2.c's export writes them, 3-258 <0x00>..<0xFF>, then: */
static const char *const tiny_extra[] = {" ", "a", "b", "c", "ab", "bc", " ab", "aa",
                                         "ca", "bb", " c", "cc", "cab"};
static const float tiny_extra_score[] = {0, 0, 0, 0, -1, -2, -0.5f, -3, -1, -1, -0.2f, -2.5f,
                                         -0.1f};
#define TINY_N (259 + (int)(sizeof tiny_extra / sizeof *tiny_extra))
enum { SP = 259, A, B, C, AB, BC, SAB, AA, CA, BB, SC, CC, CAB };
#define BYTE(b) (3 + (b))

static char tiny_piece[TINY_N][16];
static float tiny_score[TINY_N];

static void tiny_vocab(void)
{
    strcpy(tiny_piece[0], "<unk>");
    strcpy(tiny_piece[1], "\n<s>\n");
    strcpy(tiny_piece[2], "\n</s>\n");
    for (int b = 0; b < 256; b++)
        snprintf(tiny_piece[3 + b], 16, "<0x%02X>", b);
    for (int i = 259; i < TINY_N; i++) {
        strcpy(tiny_piece[i], tiny_extra[i - 259]);
        tiny_score[i] = tiny_extra_score[i - 259];
    }
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* The file image of the tiny tokenizer.bin (malloc'd). */
static unsigned char *tiny_bin(size_t *n)
{
    tiny_vocab();
    unsigned char *b = malloc(65536), *p = b;
    int32_t max_len = 16;
    memcpy(p, &max_len, 4);
    p += 4;
    for (int i = 0; i < TINY_N; i++) {
        int32_t l = (int32_t)strlen(tiny_piece[i]);
        memcpy(p, &tiny_score[i], 4);
        memcpy(p + 4, &l, 4);
        memcpy(p + 8, tiny_piece[i], (size_t)l);
        p += 8 + l;
    }
    *n = (size_t)(p - b);
    return b;
}

typedef struct fix {
    char *dir, *path;
    actl_tokenizer *t;
} fix;

static int tiny_setup(void **state)
{
    fix *f = calloc(1, sizeof *f);
    f->dir = test_tmpdir();
    f->path = malloc(strlen(f->dir) + 32);
    sprintf(f->path, "%s/tokenizer.bin", f->dir);
    size_t n;
    unsigned char *b = tiny_bin(&n);
    write_bytes(f->path, b, n);
    free(b);
    assert_ok(actl_tokenizer_load(f->path, NULL, &f->t));
    *state = f;
    return 0;
}

static int tiny_teardown(void **state)
{
    fix *f = *state;
    actl_tokenizer_free(f->t);
    test_rmtree(f->dir);
    free(f->dir);
    free(f->path);
    free(f);
    return 0;
}

static void expect_ids(const actl_tokenizer *t, const char *text, int flags, const int32_t *want,
                       size_t nwant)
{
    int32_t *ids = NULL;
    size_t n = 0;
    assert_ok(actl_tokenizer_encode(t, text, strlen(text), flags, &ids, &n));
    if (n != nwant || (n && memcmp(ids, want, n * sizeof *ids))) {
        print_message("text \"%s\": got", text);
        for (size_t i = 0; i < n; i++)
            print_message(" %d", ids[i]);
        print_message("\n");
        free(ids);
        fail_msg("ids differ for \"%s\"", text);
    }
    free(ids);
}

#define EXPECT(t, text, flags, ...)                                                   \
    do {                                                                              \
        const int32_t w_[] = {__VA_ARGS__};                                           \
        expect_ids((t), (text), (flags), w_, sizeof w_ / sizeof *w_);                 \
    } while (0)

static void test_bin__merges_highest_score_first(void **state)
{
    fix *f = *state;
    /* " abc": "ab" (-1) beats "bc" (-2), then " ab" (-0.5) */
    EXPECT(f->t, "abc", 0, SAB, C);
    /* " bc": only "bc" */
    EXPECT(f->t, "bc", 0, SP, BC);
}

static void test_bin__ties_merge_leftmost(void **state)
{
    fix *f = *state;
    /* " aaa": both "aa" pairs score -3; the left one goes first */
    EXPECT(f->t, "aaa", 0, SP, AA, A);
}

static void test_bin__unknown_character_falls_back_to_bytes(void **state)
{
    fix *f = *state;
    EXPECT(f->t, "a\xC3\xA9", 0, SP, A, BYTE(0xC3), BYTE(0xA9));
}

static void test_bin__bos_flag_and_empty_text(void **state)
{
    fix *f = *state;
    int32_t *ids = (int32_t *)1;
    size_t n = 9;
    assert_ok(actl_tokenizer_encode(f->t, "", 0, 0, &ids, &n));
    assert_int_equal(n, 0);
    free(ids);
    EXPECT(f->t, "", ACTL_TOK_BOS, 1);
    EXPECT(f->t, "ab", ACTL_TOK_BOS, 1, SAB);
    assert_int_equal(actl_tokenizer_bos(f->t), 1);
    assert_int_equal(actl_tokenizer_eos(f->t), 2);
    assert_int_equal(actl_tokenizer_vocab_size(f->t), TINY_N);
}

static void test_bin__special_text_only_with_the_flag(void **state)
{
    fix *f = *state;
    /* with the flag "<s>" is BOS and the text after it gets no dummy prefix */
    EXPECT(f->t, "<s>ab", ACTL_TOK_SPECIAL, 1, AB);
    EXPECT(f->t, "c</s>", ACTL_TOK_SPECIAL, SC, 2);
    /* without, it is characters (bytes here) */
    EXPECT(f->t, "<s>ab", 0, SP, BYTE('<'), BYTE('s'), BYTE('>'), AB);
}

static void test_bin__pieces(void **state)
{
    fix *f = *state;
    size_t len = 99;
    const char *p = actl_tokenizer_piece(f->t, BYTE(0xC3), &len);
    assert_int_equal(len, 1);
    assert_int_equal((unsigned char)p[0], 0xC3);
    p = actl_tokenizer_piece(f->t, SAB, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(p, " ab", 3);
    p = actl_tokenizer_piece(f->t, 1, &len);
    assert_string_equal(p, "<s>");
    p = actl_tokenizer_piece(f->t, BYTE(0), &len);
    assert_int_equal(len, 1);
    assert_int_equal(p[0], 0);
    assert_null(actl_tokenizer_piece(f->t, -1, &len));
    assert_null(actl_tokenizer_piece(f->t, TINY_N, &len));
}

static void expect_decode(const actl_tokenizer *t, const int32_t *ids, size_t n, const char *want,
                          size_t wlen)
{
    char *s = NULL;
    size_t len = 0;
    assert_ok(actl_tokenizer_decode(t, ids, n, &s, &len));
    assert_int_equal(len, wlen);
    assert_memory_equal(s, want, wlen);
    assert_int_equal(s[len], '\0');
    free(s);
}

static void test_bin__decode_drops_the_dummy_prefix_and_keeps_partial_utf8(void **state)
{
    fix *f = *state;
    int32_t a[] = {SAB, C};
    expect_decode(f->t, a, 2, "abc", 3);
    int32_t b[] = {SP, A, BYTE(0xC3), BYTE(0xA9)};
    expect_decode(f->t, b, 4, "a\xC3\xA9", 3);
    int32_t c[] = {BYTE(0xC3)};
    expect_decode(f->t, c, 1, "\xC3", 1);
    /* after BOS the first piece loses its space (llama2.c's rule) */
    int32_t d[] = {1, SAB, SP, C};
    expect_decode(f->t, d, 4, "<s>ab c", 7);
    expect_decode(f->t, NULL, 0, "", 0);
    int32_t bad[] = {A, TINY_N};
    char *s = NULL;
    assert_err(actl_tokenizer_decode(f->t, bad, 2, &s, NULL), ACTL_EINVAL, "outside");
    assert_null(s);
}

static void test_bin__invalid_utf8_is_refused(void **state)
{
    fix *f = *state;
    static const char *const bad[] = {"a\xC3", "\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                                      "\xFF", "ab\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        assert_err(actl_tokenizer_encode(f->t, bad[i], strlen(bad[i]), 0, &ids, &n), ACTL_EINVAL,
                   "not valid UTF-8");
        assert_null(ids);
    }
}

/* llama2.c's encode loop as run.c writes it, transcribed naively (linear
 * lookups, a full rescan per merge), over the tiny vocabulary. */
static size_t naive_encode(const char *text, int32_t *out)
{
    size_t n = 0, len = strlen(text);
    int32_t *tok = out;
    if (len)
        tok[n++] = SP;
    for (size_t i = 0; i < len;) {
        size_t k = ((unsigned char)text[i] & 0xE0) == 0xC0 ? 2 : 1;
        int32_t id = -1;
        for (int j = 0; j < TINY_N && id < 0; j++)
            if (strlen(tiny_piece[j]) == k && !memcmp(tiny_piece[j], text + i, k))
                id = j;
        if (id >= 0)
            tok[n++] = id;
        else
            for (size_t j = 0; j < k; j++)
                tok[n++] = BYTE((unsigned char)text[i + j]);
        i += k;
    }
    for (;;) {
        float best = -1e10f;
        int best_id = -1;
        size_t best_i = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            char cat[64];
            snprintf(cat, sizeof cat, "%s%s", tiny_piece[tok[i]], tiny_piece[tok[i + 1]]);
            for (int j = 0; j < TINY_N; j++)
                if (!strcmp(tiny_piece[j], cat) && tiny_score[j] > best) {
                    best = tiny_score[j];
                    best_id = j;
                    best_i = i;
                }
        }
        if (best_id < 0)
            break;
        tok[best_i] = best_id;
        memmove(tok + best_i + 1, tok + best_i + 2, (n - best_i - 2) * sizeof *tok);
        n--;
    }
    return n;
}

static void test_bin__random_texts_match_naive_llama2c_loop(void **state)
{
    fix *f = *state;
    static const char *const alphabet[] = {"a", "b", "c", " ", "\xC3\xA9", "a", "b", "c"};
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (int iter = 0; iter < 400; iter++) {
        char text[256] = "";
        size_t len = 0;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int m = (int)((rng >> 33) % 40);
        for (int i = 0; i < m; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            const char *s = alphabet[(rng >> 33) % 8];
            memcpy(text + len, s, strlen(s));
            len += strlen(s);
        }
        text[len] = '\0';
        int32_t want[512];
        size_t nw = naive_encode(text, want);
        expect_ids(f->t, text, 0, want, nw);
    }
}

/* ---- loading errors ----------------------------------------------------- */

static char *tmp_file(const char *dir, const char *name, const void *data, size_t n)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    write_bytes(p, data, n);
    return p;
}

static void expect_load_err(const char *path, int code, const char *needle)
{
    actl_tokenizer *t = (actl_tokenizer *)1;
    assert_err(actl_tokenizer_load(path, NULL, &t), code, needle);
    assert_null(t);
    /* every message names the file */
    assert_non_null(strstr(actl_errmsg(), path));
}

static void test_load__truncated_and_lying_tokenizer_bin(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    size_t n;
    unsigned char *b = tiny_bin(&n);
    /* cut inside the last token's bytes */
    char *p = tmp_file(dir, "cut.bin", b, n - 1);
    expect_load_err(p, ACTL_EFORMAT, "runs past the end");
    free(p);
    /* cut inside a record header */
    p = tmp_file(dir, "cut2.bin", b, 4 + 8 + 5 + 6);
    expect_load_err(p, ACTL_EFORMAT, "truncated at token 1");
    free(p);
    /* a length over max_token_length */
    int32_t big = 1 << 20, neg = -3;
    memcpy(b + 8, &big, 4);
    p = tmp_file(dir, "big.bin", b, n);
    expect_load_err(p, ACTL_EFORMAT, "token 0 has length 1048576");
    free(p);
    memcpy(b + 8, &neg, 4);
    p = tmp_file(dir, "neg.bin", b, n);
    expect_load_err(p, ACTL_EFORMAT, "token 0 has length -3");
    free(p);
    /* a header alone, and less than a header */
    p = tmp_file(dir, "empty.bin", b, 4);
    expect_load_err(p, ACTL_EFORMAT, "without tokens");
    free(p);
    p = tmp_file(dir, "short.bin", b, 2);
    expect_load_err(p, ACTL_EFORMAT, "truncated tokenizer.bin");
    free(p);
    int32_t zero = 0;
    memcpy(b, &zero, 4);
    p = tmp_file(dir, "zero.bin", b, n);
    expect_load_err(p, ACTL_EFORMAT, "max_token_length 0");
    free(p);
    free(b);
    test_rmtree(dir);
    free(dir);
}

static void test_load__unknown_and_unreadable_formats(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *p = tmp_file(dir, "notes.txt", "hello world\n", 12);
    expect_load_err(p, ACTL_EFORMAT, "unknown tokenizer format");
    free(p);
    p = tmp_file(dir, "tokenizer.json", "{\"model\": ", 10);
    expect_load_err(p, ACTL_EFORMAT, "tokenizer.json");
    free(p);
    p = tmp_file(dir, "list.json", "[1, 2]", 6);
    expect_load_err(p, ACTL_EFORMAT, "JSON object");
    free(p);
    /* a SentencePiece ModelProto starts with field 1 (pieces), 0x0a */
    p = tmp_file(dir, "tokenizer.model", "\x0a\x09\x0a\x05<unk>\x15\x00\x00\x00\x00", 14);
    expect_load_err(p, ACTL_EUNSUPPORTED, "use the model's tokenizer.json");
    free(p);
    p = malloc(strlen(dir) + 16);
    sprintf(p, "%s/absent.bin", dir);
    expect_load_err(p, ACTL_ENOTFOUND, "cannot open");
    free(p);
    char *empty = malloc(strlen(dir) + 16);
    sprintf(empty, "%s/sub", dir);
    assert_int_equal(mkdir(empty, 0700), 0);
    expect_load_err(empty, ACTL_ENOTFOUND, "holds no tokenizer");
    free(empty);
    test_rmtree(dir);
    free(dir);
}

static void test_load__directory_finds_tokenizer_bin(void **state)
{
    fix *f = *state;
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(f->dir, NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), TINY_N);
    EXPECT(t, "abc", 0, SAB, C);
    actl_tokenizer_free(t);
    actl_tokenizer_free(NULL);
}

/* ---- a tiny HF tokenizer.json, SentencePiece-style ---------------------- */

#define M "\\u2581" /* "▁" in JSON */

/* vocab 0-2 specials, 3-258 bytes, 259 "▁", 260 "a", 261 "b", 262 "▁a",
 * 263 "ab", 264 "▁ab", added 265 "<x>" (not special). */
static char *tiny_json(const char *merges, const char *model_extra)
{
    char *j = malloc(32768), *p = j;
    p += sprintf(p, "{\"version\": \"1.0\", \"added_tokens\": ["
                    "{\"id\": 0, \"content\": \"<unk>\", \"special\": true},"
                    "{\"id\": 1, \"content\": \"<s>\", \"special\": true},"
                    "{\"id\": 2, \"content\": \"</s>\", \"special\": true},"
                    "{\"id\": 265, \"content\": \"<x>\", \"special\": false}],"
                    "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": ["
                    "{\"type\": \"Prepend\", \"prepend\": \"" M "\"},"
                    "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"" M
                    "\"}]},"
                    "\"pre_tokenizer\": null,"
                    "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
                    " \"byte_fallback\": true, %s \"vocab\": {\"<unk>\": 0, \"<s>\": 1, "
                    "\"</s>\": 2",
                 model_extra);
    for (int b = 0; b < 256; b++)
        p += sprintf(p, ", \"<0x%02X>\": %d", b, 3 + b);
    sprintf(p, ", \"" M "\": 259, \"a\": 260, \"b\": 261, \"" M "a\": 262, \"ab\": 263, \"" M
               "ab\": 264}, \"merges\": %s}}",
            merges);
    return j;
}

static actl_tokenizer *load_json_text(const char *dir, const char *json)
{
    char *p = tmp_file(dir, "tokenizer.json", json, strlen(json));
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(p, NULL, &t));
    free(p);
    return t;
}

static void test_json__merges_by_rank_not_by_vocabulary(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    /* "▁ a" first: "▁ab" is reached through "▁a" + "b" */
    char *j = tiny_json("[\"" M " a\", \"a b\", \"" M "a b\"]", "");
    actl_tokenizer *t = load_json_text(dir, j);
    EXPECT(t, "ab", 0, 264);
    /* spaces become "▁"; "é" falls back to bytes; <x> is a plain added token */
    EXPECT(t, "a b\xC3\xA9", 0, 262, 259, 261, BYTE(0xC3), BYTE(0xA9));
    EXPECT(t, "b<x>a", 0, 259, 261, 265, 260);
    EXPECT(t, "<s>a", ACTL_TOK_SPECIAL | ACTL_TOK_BOS, 1, 1, 260);
    assert_int_equal(actl_tokenizer_bos(t), 1);
    assert_int_equal(actl_tokenizer_eos(t), 2);
    assert_int_equal(actl_tokenizer_vocab_size(t), 266);
    int32_t ids[] = {262, 259, 261, BYTE(0xC3), BYTE(0xA9)};
    expect_decode(t, ids, 5, "a b\xC3\xA9", 5);
    actl_tokenizer_free(t);
    free(j);
    /* "a b" first: "▁" + "ab" has no merge, though "▁ab" is in the vocabulary */
    j = tiny_json("[[\"a\", \"b\"], [\"" M "\", \"a\"], [\"" M "a\", \"b\"]]", "");
    t = load_json_text(dir, j);
    EXPECT(t, "ab", 0, 259, 263);
    actl_tokenizer_free(t);
    free(j);
    test_rmtree(dir);
    free(dir);
}

static void test_json__bad_merges_are_refused(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *j = tiny_json("[\"a q\"]", "");
    char *p = tmp_file(dir, "tokenizer.json", j, strlen(j));
    expect_load_err(p, ACTL_EFORMAT, "merges[0] (\"a\" \"q\") names a token not in");
    free(j);
    free(p);
    j = tiny_json("[\"a b c\"]", "");
    p = tmp_file(dir, "tokenizer.json", j, strlen(j));
    expect_load_err(p, ACTL_EFORMAT, "merges[0] is not a pair");
    free(j);
    free(p);
    j = tiny_json("[]", "\"vocab_x\": 1,");
    /* a vocab id that is not a number */
    char *q = strstr(j, "\"a\": 260");
    memcpy(q, "\"a\": \"x\"", 8);
    p = tmp_file(dir, "tokenizer.json", j, strlen(j));
    expect_load_err(p, ACTL_EFORMAT, "vocab entry \"a\" has no valid id");
    free(j);
    free(p);
    test_rmtree(dir);
    free(dir);
}

/* ---- the reference cases ------------------------------------------------ */

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    char *b = malloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    b[*n] = '\0';
    fclose(f);
    return b;
}

/* Runs the llama.cpp cases (split on the separator line, the final empty
 * piece dropped) through t: exact ids (no BOS) and decode back to the text. */
static void run_llamacpp_cases(const actl_tokenizer *t, const char *what)
{
    size_t ni, no;
    char *inp = slurp(LLAMA_CASES ".inp", &ni), *outp = slurp(LLAMA_CASES ".out", &no);
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = inp, *line = outp;
    int cases = 0, round_trips = 0;
    for (char *e; (e = strstr(p, sep)); p = e + strlen(sep)) {
        size_t len = (size_t)(e - p);
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        int32_t want[4096];
        size_t nw = 0;
        for (char *q = line; *q;) {
            while (*q == ' ')
                q++;
            if (*q)
                want[nw++] = (int32_t)strtol(q, &q, 10);
        }
        int32_t *ids = NULL;
        size_t n = 0;
        assert_ok(actl_tokenizer_encode(t, p, len, 0, &ids, &n));
        if (n != nw || (n && memcmp(ids, want, n * sizeof *ids)))
            fail_msg("%s: case %d \"%.*s\": ids differ from \"%s\"", what, cases, (int)len, p,
                     line);
        char *s = NULL;
        size_t sl = 0;
        assert_ok(actl_tokenizer_decode(t, ids, n, &s, &sl));
        if (sl == len && !memcmp(s, p, len))
            round_trips++;
        else
            print_message("%s: case %d decodes to \"%s\"\n", what, cases, s);
        free(s);
        free(ids);
        cases++;
        line = nl + 1;
    }
    assert_int_equal(cases, 46);
    assert_int_equal(round_trips, 46);
    print_message("%s: %d/46 cases exact, %d/46 decode to their text\n", what, cases,
                  round_trips);
    free(inp);
    free(outp);
}

static void test_shared__llamacpp_cases_through_tokenizer_bin(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_BIN);
    REQUIRE_SHARED(LLAMA_CASES ".inp");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(LLAMA_BIN, NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 32000);
    run_llamacpp_cases(t, "tokenizer.bin");
    actl_tokenizer_free(t);
}

static void test_shared__llamacpp_cases_through_tokenizer_json(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_JSON);
    REQUIRE_SHARED(LLAMA_CASES ".inp");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(LLAMA_JSON, NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 32000);
    assert_int_equal(actl_tokenizer_bos(t), 1);
    assert_int_equal(actl_tokenizer_eos(t), 2);
    run_llamacpp_cases(t, "tokenizer.json");
    actl_tokenizer_free(t);
}

/* actl__spm_from_vocab (gguf.c's "llama" vocabularies spell spaces "▁"):
 * tokenizer.bin's tokens and scores, spaces respelled, give the same ids. */
static void test_shared__spm_from_vocab_matches_the_cases(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_BIN);
    REQUIRE_SHARED(LLAMA_CASES ".inp");
    size_t size;
    char *data = slurp(LLAMA_BIN, &size);
    char **tokens = calloc(32000, sizeof *tokens);
    float *scores = calloc(32000, sizeof *scores);
    size_t off = 4, n = 0;
    for (; off < size; n++) {
        int32_t l;
        assert_true(n < 32000);
        memcpy(&scores[n], data + off, 4);
        memcpy(&l, data + off + 4, 4);
        tokens[n] = malloc(3 * (size_t)l + 1);
        char *q = tokens[n];
        for (int32_t i = 0; i < l; i++) {
            if (data[off + 8 + i] == ' ') {
                memcpy(q, "\xE2\x96\x81", 3);
                q += 3;
            } else {
                *q++ = data[off + 8 + i];
            }
        }
        *q = '\0';
        off += 8 + (size_t)l;
    }
    assert_int_equal(n, 32000);
    actl_tokenizer *t = calloc(1, sizeof *t);
    t->bos = t->eos = -1;
    assert_ok(actl__spm_from_vocab((const char *const *)tokens, scores, n, t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 32000);
    size_t len = 0;
    const char *p = actl_tokenizer_piece(t, 6324, &len); /* "▁Hi" */
    assert_int_equal(len, 3);
    assert_memory_equal(p, " Hi", 3);
    run_llamacpp_cases(t, "spm_from_vocab");
    actl_tokenizer_free(t);
    for (size_t i = 0; i < n; i++)
        free(tokens[i]);
    free(tokens);
    free(scores);
    free(data);
}

static void test_shared__llama2c_cases_with_bos(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_BIN);
    REQUIRE_SHARED(BIN_CASES);
    json_error_t err;
    json_t *root = json_load_file(BIN_CASES, 0, &err);
    assert_non_null(root);
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(LLAMA_BIN, NULL, &t));
    size_t i, cases = 0;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c)
    {
        const json_t *prompt = json_object_get(c, "prompt"), *exp =
                                                                 json_object_get(c,
                                                                                 "expected_tokens");
        int32_t want[256];
        size_t nw = json_array_size(exp);
        for (size_t k = 0; k < nw; k++)
            want[k] = (int32_t)json_integer_value(json_array_get(exp, k));
        int32_t *ids = NULL;
        size_t n = 0;
        assert_ok(actl_tokenizer_encode(t, json_string_value(prompt), json_string_length(prompt),
                                        ACTL_TOK_BOS, &ids, &n));
        assert_int_equal(n, nw);
        assert_memory_equal(ids, want, n * sizeof *ids);
        /* decode: BOS's text, then the prompt (its dummy-prefix space dropped) */
        char *s = NULL;
        assert_ok(actl_tokenizer_decode(t, ids + 1, n - 1, &s, NULL));
        assert_string_equal(s, json_string_value(prompt));
        free(s);
        free(ids);
        cases++;
    }
    assert_int_equal(cases, 5);
    actl_tokenizer_free(t);
    json_decref(root);
}

/* Which loader reads what: a GPT-2 vocab.json (one of whose tokens is
 * "model") goes to the vocab + merges loader, a directory prefers
 * tokenizer.json, a tokenizer.json-less vocabulary needs its merges. */
static void test_shared__dispatch_by_content_and_directory(void **state)
{
    (void)state;
    REQUIRE_SHARED(SHARED_DATA "/tokenizers/gpt2/vocab.json");
    REQUIRE_SHARED(LLAMA_JSON);
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(SHARED_DATA "/tokenizers/gpt2/vocab.json", NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 50257);
    actl_tokenizer_free(t);
    t = NULL;
    assert_ok(actl_tokenizer_load(SHARED_DATA "/tokenizers/llama2-spm", NULL, &t));
    EXPECT(t, "Hello", ACTL_TOK_BOS, 1, 15043);
    actl_tokenizer_free(t);

    char *dir = test_tmpdir();
    static const char vocab[] = "{\"a\": 0, \"model\": 1}";
    char *p = tmp_file(dir, "vocab.json", vocab, strlen(vocab));
    expect_load_err(p, ACTL_EFORMAT, "merges.txt' beside it");
    free(p);
    test_rmtree(dir);
    free(dir);
}

static void test_shared__sentencepiece_protobuf_is_refused(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_MODEL);
    expect_load_err(LLAMA_MODEL, ACTL_EUNSUPPORTED, "SentencePiece protobuf");
}

static void test_shared__llama_pieces(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_BIN);
    REQUIRE_SHARED(LLAMA_JSON);
    static const char *const paths[] = {LLAMA_BIN, LLAMA_JSON};
    for (int k = 0; k < 2; k++) {
        actl_tokenizer *t = NULL;
        assert_ok(actl_tokenizer_load(paths[k], NULL, &t));
        size_t len = 0;
        /* 13 is <0x0A>; 29871 "▁"; 6324 "▁Hi"; 1 BOS */
        const char *p = actl_tokenizer_piece(t, 13, &len);
        assert_int_equal(len, 1);
        assert_int_equal(p[0], '\n');
        p = actl_tokenizer_piece(t, 29871, &len);
        assert_int_equal(len, 1);
        assert_int_equal(p[0], ' ');
        p = actl_tokenizer_piece(t, 6324, &len);
        assert_int_equal(len, 3);
        assert_memory_equal(p, " Hi", 3);
        assert_string_equal(actl_tokenizer_piece(t, 1, NULL), "<s>");
        /* U+1F999 is not a piece: its four bytes, and the first alone decodes
         * to that one byte */
        int32_t *ids = NULL;
        size_t n = 0;
        assert_ok(actl_tokenizer_encode(t, "\xF0\x9F\xA6\x99", 4, 0, &ids, &n));
        assert_int_equal(n, 5); /* "▁" then the four bytes of U+1F999 */
        assert_int_equal(ids[1], 3 + 0xF0);
        char *s = NULL;
        size_t sl = 0;
        assert_ok(actl_tokenizer_decode(t, ids, 2, &s, &sl));
        assert_int_equal(sl, 1);
        assert_int_equal((unsigned char)s[0], 0xF0);
        free(s);
        free(ids);
        actl_tokenizer_free(t);
    }
}

static void test_shared__long_text_is_not_quadratic(void **state)
{
    (void)state;
    REQUIRE_SHARED(LLAMA_BIN);
    REQUIRE_SHARED(LLAMA_JSON);
    size_t n = 1 << 16;
    char *text = malloc(n + 1);
    static const char chunk[] = "Once upon a time, a little girl named Lily found a needle. ";
    for (size_t i = 0; i < n; i++)
        text[i] = chunk[i % (sizeof chunk - 1)];
    text[n] = '\0';
    static const char *const paths[] = {LLAMA_BIN, LLAMA_JSON};
    for (int k = 0; k < 2; k++) {
        actl_tokenizer *t = NULL;
        assert_ok(actl_tokenizer_load(paths[k], NULL, &t));
        struct timespec a, b;
        int32_t *ids = NULL;
        size_t cnt = 0;
        clock_gettime(CLOCK_MONOTONIC, &a);
        assert_ok(actl_tokenizer_encode(t, text, n, 0, &ids, &cnt));
        clock_gettime(CLOCK_MONOTONIC, &b);
        print_message("%s: 64 KiB -> %zu ids in %.1f ms\n", k ? "tokenizer.json" : "tokenizer.bin",
                      cnt, (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
        char *s = NULL;
        assert_ok(actl_tokenizer_decode(t, ids, cnt, &s, NULL));
        assert_string_equal(s, text);
        free(s);
        free(ids);
        actl_tokenizer_free(t);
    }
    free(text);
}

/* Whether a text starts with BOS is the tokenizer files' word, as in HF:
 * SentencePiece and tiktoken vocabularies say yes, GPT-2-style ones no
 * (their post_processor names no BOS), and one without BOS cannot. */
static void test_shared__adds_bos_follows_the_files(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        int adds, spm;
    } cases[] = {
        {"../shared/data/llama2c/tok512.bin", 1, 1},
        {"../shared/data/tokenizers/llama2-spm/tokenizer.json", 1, 1},
        {"../shared/data/llamacpp-vocab/ggml-vocab-llama-spm.gguf", 1, 1},
        {"../shared/data/tokenizers/llama3/tokenizer.model", 1, 0},
        {"../shared/data/tokenizers/gpt2/tokenizer.json", 0, 0},
        {"../shared/data/tokenizers/gpt2/vocab.json", 0, 0},
        {"../shared/data/tokenizers/gpt2/ggml-vocab-gpt-2.gguf", 0, 0},
        {"../shared/data/tokenizers/qwen2", 0, 0},
        {"../shared/data/tokenizers/smollm2/tokenizer.json", 0, 0},
    };
    REQUIRE_SHARED(cases[0].path);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        actl_tokenizer *t = NULL;
        assert_ok(actl_tokenizer_load(cases[i].path, NULL, &t));
        if (actl_tokenizer_adds_bos(t) != cases[i].adds ||
            actl_tokenizer_sentencepiece(t) != cases[i].spm)
            fail_msg("%s: adds_bos %d (want %d), sentencepiece %d (want %d)", cases[i].path,
                     actl_tokenizer_adds_bos(t), cases[i].adds,
                     actl_tokenizer_sentencepiece(t), cases[i].spm);
        actl_tokenizer_free(t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bin__merges_highest_score_first, tiny_setup,
                                        tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__ties_merge_leftmost, tiny_setup, tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__unknown_character_falls_back_to_bytes,
                                        tiny_setup, tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__bos_flag_and_empty_text, tiny_setup,
                                        tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__special_text_only_with_the_flag, tiny_setup,
                                        tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__pieces, tiny_setup, tiny_teardown),
        cmocka_unit_test_setup_teardown(
            test_bin__decode_drops_the_dummy_prefix_and_keeps_partial_utf8, tiny_setup,
            tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__invalid_utf8_is_refused, tiny_setup,
                                        tiny_teardown),
        cmocka_unit_test_setup_teardown(test_bin__random_texts_match_naive_llama2c_loop,
                                        tiny_setup, tiny_teardown),
        cmocka_unit_test(test_load__truncated_and_lying_tokenizer_bin),
        cmocka_unit_test(test_load__unknown_and_unreadable_formats),
        cmocka_unit_test_setup_teardown(test_load__directory_finds_tokenizer_bin, tiny_setup,
                                        tiny_teardown),
        cmocka_unit_test(test_json__merges_by_rank_not_by_vocabulary),
        cmocka_unit_test(test_json__bad_merges_are_refused),
        cmocka_unit_test(test_shared__llamacpp_cases_through_tokenizer_bin),
        cmocka_unit_test(test_shared__llamacpp_cases_through_tokenizer_json),
        cmocka_unit_test(test_shared__spm_from_vocab_matches_the_cases),
        cmocka_unit_test(test_shared__llama2c_cases_with_bos),
        cmocka_unit_test(test_shared__dispatch_by_content_and_directory),
        cmocka_unit_test(test_shared__sentencepiece_protobuf_is_refused),
        cmocka_unit_test(test_shared__llama_pieces),
        cmocka_unit_test(test_shared__long_text_is_not_quadratic),
        cmocka_unit_test(test_shared__adds_bos_follows_the_files),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, NULL, NULL);
}
