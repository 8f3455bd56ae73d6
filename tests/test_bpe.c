/* test_bpe.c: byte-level BPE (lib/bpe.c) and GGUF vocabularies (lib/gguf.c).
 * The real vocabularies are checked against the reference tokenizations in
 * ../shared/data/tokenizers (made by llama.cpp / HF, outside this project);
 * the merge rules, the loaders' formats and their refusals against small
 * vocabularies written here, whose expected ids are worked out by hand. */
#include <time.h>

#include "testutil.h"
#include "internal.h"

#define TOK SHARED_DATA "/tokenizers/"

static void expect_ids(actl_tokenizer *t, const char *text, int flags, const int32_t *want,
                       size_t nwant)
{
    int32_t *ids = NULL;
    size_t n = 0;
    assert_ok(actl_tokenizer_encode(t, text, strlen(text), flags, &ids, &n));
    if (n != nwant || (n && memcmp(ids, want, n * sizeof *ids))) {
        print_message("\"%s\": got", text);
        for (size_t i = 0; i < n; i++)
            print_message(" %d", ids[i]);
        print_message("\n");
        fail_msg("ids differ for \"%s\"", text);
    }
    free(ids);
}

/* ---- reference cases -------------------------------------------------------- */

/* Encodes every case of inp (split on "\n__ggml_vocab_test__\n", the final
 * empty piece dropped) and compares with the ids of out (one line per
 * case); decoding the ids must give the case's text back. */
static void check_cases(const char *tok_path, const char *pre, const char *inp,
                        const char *outp, int flags, size_t want_cases)
{
    REQUIRE_SHARED(tok_path);
    REQUIRE_SHARED(inp);
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(tok_path, pre, &t));
    size_t in_len;
    char *in = (char *)test_slurp(inp, &in_len);
    char *out = (char *)test_slurp(outp, NULL);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t cases = 0, bad = 0;
    char *p = in, *o = out;
    for (;;) {
        char *e = strstr(p, sep);
        if (!e)
            break; /* what follows the last separator is the empty final piece */
        size_t len = (size_t)(e - p);
        char *nl = strchr(o, '\n');
        assert_non_null(nl);
        *nl = '\0';
        int32_t want[1024];
        size_t nwant = 0;
        for (char *q = o; *q;) {
            char *end;
            long v = strtol(q, &end, 10);
            if (end == q)
                break;
            assert_true(nwant < 1024);
            want[nwant++] = (int32_t)v;
            q = end;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        assert_ok(actl_tokenizer_encode(t, p, len, flags, &ids, &n));
        bool same = n == nwant && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
        if (!same) {
            if (bad < 5) {
                print_message("case %zu \"%.*s\": want", cases, (int)len, p);
                for (size_t i = 0; i < nwant; i++)
                    print_message(" %d", want[i]);
                print_message("\n  got");
                for (size_t i = 0; i < n; i++)
                    print_message(" %d", ids[i]);
                print_message("\n");
            }
            bad++;
        }
        char *text = NULL;
        size_t tlen = 0;
        assert_ok(actl_tokenizer_decode(t, want, nwant, &text, &tlen));
        if (tlen != len || memcmp(text, p, len)) {
            print_message("case %zu: decoding does not give the text back: \"%.*s\"\n", cases,
                          (int)tlen, text);
            bad++;
        }
        free(text);
        free(ids);
        cases++;
        p = e + sizeof sep - 1;
        o = nl + 1;
    }
    print_message("%s (%s): %zu cases, %zu mismatches\n", tok_path, pre ? pre : "default",
                  cases, bad);
    assert_int_equal(cases, want_cases);
    assert_int_equal(bad, 0);
    free(in);
    free(out);
    actl_tokenizer_free(t);
}

static void test_bpe__gpt2_tokenizer_json_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "gpt2/tokenizer.json", NULL, TOK "gpt2/ggml-vocab-gpt-2.gguf.inp",
                TOK "gpt2/ggml-vocab-gpt-2.gguf.out", 0, 46);
}

static void test_bpe__gpt2_vocab_merges_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "gpt2/vocab.json", NULL, TOK "gpt2/ggml-vocab-gpt-2.gguf.inp",
                TOK "gpt2/ggml-vocab-gpt-2.gguf.out", 0, 46);
}

static void test_bpe__gpt2_gguf_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "gpt2/ggml-vocab-gpt-2.gguf", NULL, TOK "gpt2/ggml-vocab-gpt-2.gguf.inp",
                TOK "gpt2/ggml-vocab-gpt-2.gguf.out", 0, 46);
}

static void test_bpe__qwen2_vocab_merges_matches_reference(void **state)
{
    (void)state;
    /* the vocabulary's size names the pre-tokenizer, and so does "qwen2" */
    check_cases(TOK "qwen2/vocab.json", NULL, TOK "qwen2/ggml-vocab-qwen2.gguf.inp",
                TOK "qwen2/ggml-vocab-qwen2.gguf.out", 0, 46);
    check_cases(TOK "qwen2", "qwen2", TOK "qwen2/ggml-vocab-qwen2.gguf.inp",
                TOK "qwen2/ggml-vocab-qwen2.gguf.out", 0, 46);
    /* its three specials (not in vocab.json) are known; no BOS */
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(TOK "qwen2/vocab.json", NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 151646);
    assert_int_equal(actl_tokenizer_bos(t), -1);
    assert_int_equal(actl_tokenizer_eos(t), 151643);
    expect_ids(t, "<|im_start|>", ACTL_TOK_SPECIAL, (int32_t[]){151644}, 1);
    actl_tokenizer_free(t);
}

static void test_bpe__llama3_tiktoken_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "llama3/tokenizer.model", NULL, TOK "llama3/ggml-vocab-llama-bpe.gguf.inp",
                TOK "llama3/ggml-vocab-llama-bpe.gguf.out", 0, 46);
}

static void test_bpe__llama3_encoder_json_vocab_bpe_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "llama3/ollama-llama3.2/encoder.json", "llama3",
                TOK "llama3/ggml-vocab-llama-bpe.gguf.inp",
                TOK "llama3/ggml-vocab-llama-bpe.gguf.out", 0, 46);
}

static void test_bpe__starcoder2_gguf_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "starcoder2/ggml-vocab-starcoder.gguf", NULL,
                TOK "starcoder2/ggml-vocab-starcoder.gguf.inp",
                TOK "starcoder2/ggml-vocab-starcoder.gguf.out", 0, 46);
}

static void test_bpe__smollm2_tokenizer_json_with_specials_matches_reference(void **state)
{
    (void)state;
    check_cases(TOK "smollm2/tokenizer.json", NULL, TOK "smollm2/supersource-cases.inp",
                TOK "smollm2/supersource-cases.out", ACTL_TOK_SPECIAL, 87);
}

/* A GGUF "llama" vocabulary goes to tokenizer.c's SentencePiece-style BPE. */
static void test_gguf__llama_spm_vocabulary_matches_reference(void **state)
{
    (void)state;
    check_cases(SHARED_DATA "/llamacpp-vocab/ggml-vocab-llama-spm.gguf", NULL,
                SHARED_DATA "/llamacpp-vocab/ggml-vocab-llama-spm.gguf.inp",
                SHARED_DATA "/llamacpp-vocab/ggml-vocab-llama-spm.gguf.out", 0, 46);
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(SHARED_DATA "/llamacpp-vocab/ggml-vocab-llama-spm.gguf", NULL,
                                  &t));
    assert_int_equal(actl_tokenizer_bos(t), 1);
    assert_int_equal(actl_tokenizer_eos(t), 2);
    actl_tokenizer_free(t);
}

static void test_bpe__llama3_specials_and_bos_eos(void **state)
{
    (void)state;
    REQUIRE_SHARED(TOK "llama3/tokenizer.model");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(TOK "llama3/tokenizer.model", NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 128256);
    assert_int_equal(actl_tokenizer_bos(t), 128000);
    assert_int_equal(actl_tokenizer_eos(t), 128001);
    int32_t *ids = NULL;
    size_t n = 0;
    const char *s = "<|begin_of_text|>hi<|eot_id|>";
    assert_ok(actl_tokenizer_encode(t, s, strlen(s), ACTL_TOK_SPECIAL, &ids, &n));
    /* "hi" is rank 6151 in Meta's tiktoken file (base64 "aGk=") */
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 128000);
    assert_int_equal(ids[1], 6151);
    assert_int_equal(ids[2], 128009);
    free(ids);
    actl_tokenizer_free(t);
}

/* Encoding a few KB takes milliseconds; the figure is printed, not asserted. */
static void test_bpe__encodes_kilobytes_quickly(void **state)
{
    (void)state;
    const char *paths[] = {TOK "gpt2/tokenizer.json", TOK "llama3/tokenizer.model"};
    for (size_t k = 0; k < 2; k++) {
        REQUIRE_SHARED(paths[k]);
        actl_tokenizer *t = NULL;
        assert_ok(actl_tokenizer_load(paths[k], NULL, &t));
        size_t len;
        char *in = (char *)test_slurp(TOK "gpt2/ggml-vocab-gpt-2.gguf.inp", &len);
        size_t big = 4 * len;
        char *text = malloc(big);
        for (size_t i = 0; i < 4; i++)
            memcpy(text + i * len, in, len);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int32_t *ids = NULL;
        size_t n = 0;
        assert_ok(actl_tokenizer_encode(t, text, big, 0, &ids, &n));
        clock_gettime(CLOCK_MONOTONIC, &b);
        print_message("%s: %zu bytes -> %zu ids in %.2f ms\n", paths[k], big, n,
                      (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6);
        free(ids);
        free(text);
        free(in);
        actl_tokenizer_free(t);
    }
}

/* ---- small vocabularies written here ---------------------------------------- */

static char *write_in(const char *dir, const char *name, const char *text)
{
    char *p = test_join(dir, name);
    test_write_text(p, text);
    return p;
}

/* A tokenizer.json with a ByteLevel pre-tokenizer; merges is the JSON array. */
static char *json_tok(const char *dir, const char *vocab, const char *merges, bool ignore)
{
    char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"added_tokens\": [{\"id\": 9, \"content\": \"<|end|>\", \"special\": true}],"
             " \"normalizer\": null,"
             " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
             " \"model\": {\"type\": \"BPE\", \"ignore_merges\": %s, \"vocab\": %s,"
             " \"merges\": %s}}",
             ignore ? "true" : "false", vocab, merges);
    return write_in(dir, "tokenizer.json", buf);
}

#define ABC_VOCAB \
    "{\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, \"abc\": 5, \"aa\": 6, " \
    "\"\\u0120\": 7, \"\\u0120a\": 8, \"<|end|>\": 9}"

/* "abc": (b,c) has rank 0 and (a,b) rank 1, so b+c first, then a+bc; a rule
 * merging leftmost first would give ab, c. "aaa": one rank for both pairs,
 * the leftmost merges: aa, a. Both JSON forms of merges give the same. */
static void test_bpe__merges_lowest_rank_first_leftmost_on_ties(void **state)
{
    (void)state;
    const char *forms[2] = {"[\"b c\", \"a b\", \"a bc\", \"a a\", \"\\u0120 a\"]",
                            "[[\"b\", \"c\"], [\"a\", \"b\"], [\"a\", \"bc\"], [\"a\", \"a\"],"
                            " [\"\\u0120\", \"a\"]]"};
    for (int f = 0; f < 2; f++) {
        char *dir = test_tmpdir();
        char *path = json_tok(dir, ABC_VOCAB, forms[f], false);
        actl_tokenizer *t = NULL;
        assert_ok(actl_tokenizer_load(path, NULL, &t));
        expect_ids(t, "abc", 0, (int32_t[]){5}, 1);
        expect_ids(t, "aaa", 0, (int32_t[]){6, 0}, 2);
        expect_ids(t, "cab", 0, (int32_t[]){2, 3}, 2);
        /* the space is the alphabet's U+0120 and joins the word after it */
        expect_ids(t, "b a", 0, (int32_t[]){1, 8}, 2);
        /* a special token only when asked for */
        expect_ids(t, "a<|end|>", ACTL_TOK_SPECIAL, (int32_t[]){0, 9}, 2);
        size_t len;
        const char *piece = actl_tokenizer_piece(t, 7, &len);
        assert_int_equal(len, 1);
        assert_memory_equal(piece, " ", 1);
        actl_tokenizer_free(t);
        test_rmtree(dir);
        free(path);
        free(dir);
    }
}

/* With ignore_merges a pre-token that is itself a token is emitted whole,
 * even when no merge leads to it. */
static void test_bpe__ignore_merges_emits_whole_pretoken(void **state)
{
    (void)state;
    for (int ign = 0; ign < 2; ign++) {
        char *dir = test_tmpdir();
        char *path = json_tok(dir, ABC_VOCAB, "[\"a b\"]", ign);
        actl_tokenizer *t = NULL;
        assert_ok(actl_tokenizer_load(path, NULL, &t));
        if (ign)
            expect_ids(t, "abc", 0, (int32_t[]){5}, 1);
        else
            expect_ids(t, "abc", 0, (int32_t[]){3, 2}, 2);
        actl_tokenizer_free(t);
        test_rmtree(dir);
        free(path);
        free(dir);
    }
}

/* merges.txt: only a first line "#version" is a header; "# #" further down
 * is a merge. Digits: "smollm" splits each digit, "gpt2" keeps a run. */
static void test_bpe__vocab_merges_header_and_digit_split(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *vocab = write_in(dir, "vocab.json",
                           "{\"#\": 0, \"##\": 1, \"1\": 2, \"2\": 3, \"12\": 4, \"x\": 5}");
    char *merges = write_in(dir, "merges.txt", "#version: 0.2\n# #\n1 2\n");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(vocab, NULL, &t));
    expect_ids(t, "##", 0, (int32_t[]){1}, 1);
    expect_ids(t, "x12", 0, (int32_t[]){5, 4}, 2);
    actl_tokenizer_free(t);
    assert_ok(actl_tokenizer_load(vocab, "smollm", &t));
    expect_ids(t, "x12", 0, (int32_t[]){5, 2, 3}, 3);
    actl_tokenizer_free(t);
    /* without the header line "#version" would be a merge naming unknown tokens */
    test_write_text(merges, "# #\n1 2\n");
    assert_ok(actl_tokenizer_load(vocab, NULL, &t));
    expect_ids(t, "##", 0, (int32_t[]){1}, 1);
    actl_tokenizer_free(t);
    assert_err(actl_tokenizer_load(vocab, "nosuch", &t), ACTL_EUNSUPPORTED, "'nosuch'");
    test_rmtree(dir);
    free(vocab);
    free(merges);
    free(dir);
}

/* qwen2 normalizes to NFC first: "e" + U+0301 becomes "é" (C3 A9), whose
 * bytes are the alphabet's "Ã" and "©". */
static void test_bpe__qwen2_normalizes_to_nfc(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *vocab = write_in(dir, "vocab.json",
                           "{\"\\u00c3\": 0, \"\\u00a9\": 1, \"\\u00c3\\u00a9\": 2, \"e\": 3,"
                           " \"\\u00cc\": 4, \"\\u0123\": 5}");
    char *merges = write_in(dir, "merges.txt", "\xc3\x83 \xc2\xa9\n");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(vocab, "qwen2", &t));
    expect_ids(t, "e\xcc\x81", 0, (int32_t[]){2}, 1);
    actl_tokenizer_free(t);
    /* GPT-2's pre-tokenizer leaves it alone: e, then CC 81 (U+0120+1 is byte 0x81) */
    assert_ok(actl_tokenizer_load(vocab, "gpt2", &t));
    int32_t *ids = NULL;
    size_t n = 0;
    assert_ok(actl_tokenizer_encode(t, "e\xcc\x81", 3, 0, &ids, &n));
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 3);
    assert_int_equal(ids[1], 4);
    free(ids);
    /* invalid UTF-8 is refused */
    assert_err(actl_tokenizer_encode(t, "e\xcc", 2, 0, &ids, &n), ACTL_EINVAL, "UTF-8");
    actl_tokenizer_free(t);
    test_rmtree(dir);
    free(vocab);
    free(merges);
    free(dir);
}

/* tiktoken: ids are ranks and a pair merges at the rank of its
 * concatenation. "abcx" (not a token): bc (3) before ab (4), then a+bc. */
static void test_bpe__tiktoken_merges_by_rank_of_concatenation(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    /* a b c bc ab abc x */
    char *path = write_in(dir, "tokenizer.model",
                          "YQ== 0\nYg== 1\nYw== 2\nYmM= 3\nYWI= 4\nYWJj 5\neA== 6\n");
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(path, NULL, &t));
    expect_ids(t, "abcx", 0, (int32_t[]){5, 6}, 2);
    expect_ids(t, "xab", 0, (int32_t[]){6, 4}, 2);
    assert_int_equal(actl_tokenizer_vocab_size(t), 7);
    actl_tokenizer_free(t);
    test_write_text(path, "YQ== 0\nY!== 1\n");
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "line 2");
    test_write_text(path, "YQ== 0\nYg== 0\n");
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "given twice");
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_bpe__refuses_malformed_tokenizer_json(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = write_in(dir, "tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0}, ");
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, path);
    free(path);
    path = json_tok(dir, ABC_VOCAB, "[\"a b\", 7]", false);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "model.merges[1]");
    free(path);
    path = json_tok(dir, "{\"a\": -3}", "[]", false);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "not a token id");
    free(path);
    path = write_in(dir, "tokenizer.json",
                    "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, \"model\": {\"type\": "
                    "\"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EUNSUPPORTED, "Whitespace");
    assert_null(t);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_bpe__refuses_merges_naming_unknown_tokens(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = json_tok(dir, ABC_VOCAB, "[\"a q\"]", false);
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "'q', which is not in the");
    free(path);
    /* both sides known, the result not: "c a" makes "ca" */
    path = json_tok(dir, ABC_VOCAB, "[\"c a\"]", false);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "not in the vocabulary");
    char *vocab = write_in(dir, "vocab.json", "{\"a\": 0, \"b\": 1}");
    char *merges = write_in(dir, "merges.txt", "a b\n");
    assert_err(actl_tokenizer_load(vocab, NULL, &t), ACTL_EFORMAT, merges);
    test_write_text(merges, "a  b\n");
    assert_err(actl_tokenizer_load(vocab, NULL, &t), ACTL_EFORMAT, "one space");
    test_rmtree(dir);
    free(path);
    free(vocab);
    free(merges);
    free(dir);
}

/* ---- GGUF ------------------------------------------------------------------ */

typedef struct gbuf {
    unsigned char *p;
    size_t n, cap;
} gbuf;

static void put(gbuf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_le(gbuf *b, uint64_t v, int n)
{
    unsigned char x[8];
    for (int i = 0; i < n; i++)
        x[i] = (unsigned char)(v >> (8 * i));
    put(b, x, (size_t)n);
}

static void put_str(gbuf *b, const char *s)
{
    put_le(b, strlen(s), 8);
    put(b, s, strlen(s));
}

static void put_kv_str(gbuf *b, const char *k, const char *v)
{
    put_str(b, k);
    put_le(b, 8, 4);
    put_str(b, v);
}

static void put_kv_strs(gbuf *b, const char *k, const char *const *v, size_t n)
{
    put_str(b, k);
    put_le(b, 9, 4);
    put_le(b, 8, 4);
    put_le(b, n, 8);
    for (size_t i = 0; i < n; i++)
        put_str(b, v[i]);
}

/* A vocab-only GGUF v3 in the layout llama.cpp writes, built byte by byte. */
static gbuf small_gguf(void)
{
    static const char *const tokens[] = {"a", "b", "c", "ab", "abc", "\xc4\xa0", "<|eot|>"};
    static const char *const merges[] = {"a b", "ab c"};
    gbuf b = {0};
    put(&b, "GGUF", 4);
    put_le(&b, 3, 4);
    put_le(&b, 0, 8); /* tensors */
    put_le(&b, 7, 8); /* key/values */
    put_kv_str(&b, "general.architecture", "gpt2");
    put_kv_str(&b, "tokenizer.ggml.model", "gpt2");
    put_kv_str(&b, "tokenizer.ggml.pre", "gpt-2");
    put_kv_strs(&b, "tokenizer.ggml.tokens", tokens, 7);
    put_kv_strs(&b, "tokenizer.ggml.merges", merges, 2);
    put_str(&b, "tokenizer.ggml.token_type");
    put_le(&b, 9, 4);
    put_le(&b, 5, 4);
    put_le(&b, 7, 8);
    for (int i = 0; i < 7; i++)
        put_le(&b, i == 6 ? 3 : 1, 4);
    put_str(&b, "tokenizer.ggml.eos_token_id");
    put_le(&b, 4, 4);
    put_le(&b, 6, 4);
    return b;
}

static void test_gguf__reads_a_gpt2_vocabulary(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = test_join(dir, "v.gguf");
    gbuf b = small_gguf();
    test_write_file(path, b.p, b.n);
    actl_tokenizer *t = NULL;
    assert_ok(actl_tokenizer_load(path, NULL, &t));
    assert_int_equal(actl_tokenizer_vocab_size(t), 7);
    assert_int_equal(actl_tokenizer_eos(t), 6);
    assert_int_equal(actl_tokenizer_bos(t), -1);
    expect_ids(t, "abc cab", 0, (int32_t[]){4, 5, 2, 3}, 4);
    /* the control token is special */
    expect_ids(t, "a<|eot|>", ACTL_TOK_SPECIAL, (int32_t[]){0, 6}, 2);
    actl_tokenizer_free(t);
    free(b.p);
    test_rmtree(dir);
    free(path);
    free(dir);
}

/* Every truncation is refused with a message naming the file, and so are
 * lengths and counts larger than the file. */
static void test_gguf__refuses_truncated_and_lying_files(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = test_join(dir, "v.gguf");
    gbuf b = small_gguf();
    actl_tokenizer *t = NULL;
    for (size_t n = 0; n < b.n; n++) {
        test_write_file(path, b.p, n);
        int rc = actl_tokenizer_load(path, NULL, &t);
        if (rc != ACTL_EFORMAT || !strstr(actl_errmsg(), path))
            fail_msg("truncated at %zu: %s: %s", n, actl_strerror(rc), actl_errmsg());
    }
    /* the first key's length (offset 24) claims 2^40 bytes */
    unsigned char *lie = malloc(b.n);
    memcpy(lie, b.p, b.n);
    lie[24 + 5] = 1;
    test_write_file(path, lie, b.n);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "claims");
    /* the key/value count claims 2^32 */
    memcpy(lie, b.p, b.n);
    lie[16 + 4] = 1;
    test_write_file(path, lie, b.n);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "claims");
    /* an array count of 2^60 elements */
    memcpy(lie, b.p, b.n);
    size_t at = 0;
    for (size_t i = 0; i + 21 < b.n; i++)
        if (!memcmp(lie + i, "tokenizer.ggml.tokens", 21))
            at = i + 21 + 4 + 4; /* key, type, element type: the count */
    assert_true(at > 0);
    lie[at + 7] = 0x10;
    test_write_file(path, lie, b.n);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EFORMAT, "claims");
    /* not GGUF, unknown version */
    memcpy(lie, b.p, b.n);
    lie[4] = 9;
    test_write_file(path, lie, b.n);
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_EUNSUPPORTED, "version 9");
    assert_null(t);
    free(lie);
    free(b.p);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_gguf__refuses_a_file_without_vocabulary(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = test_join(dir, "m.gguf");
    gbuf b = {0};
    put(&b, "GGUF", 4);
    put_le(&b, 3, 4);
    put_le(&b, 0, 8);
    put_le(&b, 1, 8);
    put_kv_str(&b, "general.architecture", "llama");
    test_write_file(path, b.p, b.n);
    actl_tokenizer *t = NULL;
    assert_err(actl_tokenizer_load(path, NULL, &t), ACTL_ENOTFOUND, "tokenizer.ggml.model");
    free(b.p);
    test_rmtree(dir);
    free(path);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe__gpt2_tokenizer_json_matches_reference),
        cmocka_unit_test(test_bpe__gpt2_vocab_merges_matches_reference),
        cmocka_unit_test(test_bpe__gpt2_gguf_matches_reference),
        cmocka_unit_test(test_bpe__qwen2_vocab_merges_matches_reference),
        cmocka_unit_test(test_bpe__llama3_tiktoken_matches_reference),
        cmocka_unit_test(test_bpe__llama3_encoder_json_vocab_bpe_matches_reference),
        cmocka_unit_test(test_bpe__starcoder2_gguf_matches_reference),
        cmocka_unit_test(test_bpe__smollm2_tokenizer_json_with_specials_matches_reference),
        cmocka_unit_test(test_gguf__llama_spm_vocabulary_matches_reference),
        cmocka_unit_test(test_bpe__llama3_specials_and_bos_eos),
        cmocka_unit_test(test_bpe__encodes_kilobytes_quickly),
        cmocka_unit_test(test_bpe__merges_lowest_rank_first_leftmost_on_ties),
        cmocka_unit_test(test_bpe__ignore_merges_emits_whole_pretoken),
        cmocka_unit_test(test_bpe__vocab_merges_header_and_digit_split),
        cmocka_unit_test(test_bpe__qwen2_normalizes_to_nfc),
        cmocka_unit_test(test_bpe__tiktoken_merges_by_rank_of_concatenation),
        cmocka_unit_test(test_bpe__refuses_malformed_tokenizer_json),
        cmocka_unit_test(test_bpe__refuses_merges_naming_unknown_tokens),
        cmocka_unit_test(test_gguf__reads_a_gpt2_vocabulary),
        cmocka_unit_test(test_gguf__refuses_truncated_and_lying_files),
        cmocka_unit_test(test_gguf__refuses_a_file_without_vocabulary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
