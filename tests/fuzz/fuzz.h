/* fuzz.h: what the libFuzzer harnesses share.
 *
 * Each harness is one file tests/fuzz/fuzz_NAME.c defining
 * LLVMFuzzerTestOneInput. It is linked twice: with libFuzzer (`make fuzz`),
 * and with replay.c, which feeds it files (`make test`). Parsers that take
 * a path get the input through a file in a private directory, on /dev/shm
 * when there is one (a file write costs microseconds there). */
#ifndef ACTL_FUZZ_H
#define ACTL_FUZZ_H

#include "adapterctl.h"
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir_path[256];

static inline void fuzz_dir_remove(void)
{
    if (fuzz_dir_path[0])
        actl__remove_tree(fuzz_dir_path);
}

/* The harness's private directory, made on first use, removed at exit. */
static inline const char *fuzz_dir(void)
{
    if (!fuzz_dir_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/actl-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir_path)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

/* Writes n bytes to the file `name` in the private directory (replacing
 * it) and returns its path (static storage, one per name slot). */
static inline const char *fuzz_file(const char *name, const void *data, size_t n)
{
    static char path[8][320];
    static int slot;
    char *p = path[slot++ % 8];
    snprintf(p, sizeof path[0], "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror("fuzz: writing the input file");
        abort();
    }
    return p;
}

/* A NUL-terminated copy (malloc'd, so ASan sees its end). */
static inline char *fuzz_str(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* Where the fixtures are: $ACTL_FIXTURES, else fixtures/ of the working
 * directory (make runs from the repository root). */
static inline const char *fuzz_fixtures(void)
{
    const char *f = getenv("ACTL_FIXTURES");
    return f && *f ? f : "fixtures";
}

/* The tiny fixture base (fixtures/base-tiny) adapters are validated
 * against, loaded once. */
static inline const actl_base *fuzz_base(void)
{
    static actl_base *base;
    char path[512];
    if (!base) {
        snprintf(path, sizeof path, "%s/base-tiny", fuzz_fixtures());
        if (actl_base_load(path, &base) != ACTL_OK) {
            fprintf(stderr, "fuzz: %s\n", actl_errmsg());
            abort();
        }
    }
    return base;
}

/* Uses a tokenizer as generate and eval do: texts encoded with and without
 * special tokens, ids decoded back, every piece looked up, continuations.
 * A tokenizer that loaded must encode valid UTF-8 and give ids in range. */
static inline void fuzz_use_tokenizer(const actl_tokenizer *t)
{
    static const char *const texts[] = {
        "Hello, world! It's 2026: 12345 + 0.5 = ?\n\tTabs  and   spaces.",
        "Ünïcödé naïve café — 日本語のテキスト 😀 <s></s><|endoftext|> [INST] x",
        " ",
        "",
    };
    size_t vocab = actl_tokenizer_vocab_size(t);
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++)
        for (int flags = 0; flags <= (ACTL_TOK_BOS | ACTL_TOK_SPECIAL); flags += 3) {
            int32_t *ids = NULL;
            size_t n = 0;
            if (actl_tokenizer_encode(t, texts[k], strlen(texts[k]), flags, &ids, &n) != ACTL_OK)
                continue; /* out of memory, or a limit of the tokenizer's own */
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || (size_t)ids[i] >= vocab)
                    abort();
            char *text = NULL;
            size_t len = 0;
            if (actl_tokenizer_decode(t, ids, n, &text, &len) == ACTL_OK)
                free(text);
            text = NULL;
            if (actl_tokenizer_continuation(t, n ? ids[0] : -1, actl_tokenizer_bos(t), NULL, 0,
                                            ids, n, &text, &len) == ACTL_OK)
                free(text);
            free(ids);
        }
    size_t cap = vocab < 4096 ? vocab : 4096;
    for (size_t i = 0; i < cap; i++) {
        size_t len = 0;
        const char *p = actl_tokenizer_piece(t, (int32_t)i, &len);
        if (p && len && (p[0] == 0x7f && p[len - 1] == 0x7f))
            continue; /* touches both ends of every piece for ASan */
    }
    int32_t odd[] = {-1, 0, (int32_t)vocab, (int32_t)vocab - 1, INT32_MAX};
    char *text = NULL;
    size_t len = 0;
    if (actl_tokenizer_decode(t, odd, 5, &text, &len) == ACTL_OK)
        free(text);
    actl_tokenizer_adds_bos(t);
    actl_tokenizer_sentencepiece(t);
    actl_tokenizer_bos(t);
    actl_tokenizer_eos(t);
}

#endif
