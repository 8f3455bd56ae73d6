/* fuzz_tokenizer: the other tokenizer files. The first byte picks what the
 * rest is:
 *   0  a llama2.c tokenizer.bin (max length, then score, length, bytes per
 *      token);
 *   1  a tiktoken tokenizer.model (base64 token and rank per line);
 *   2  a GPT-2-style vocab.json, a NUL, then the merges.txt beside it;
 *   3  a GGUF file whose metadata holds the vocabulary.
 * Whatever loads is used as generate and eval use it. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    const char *path;
    switch (data[0] % 4) {
    case 0: path = fuzz_file("tokenizer.bin", d, n); break;
    case 1: path = fuzz_file("tokenizer.model", d, n); break;
    case 2: {
        const uint8_t *nul = memchr(d, 0, n);
        size_t vl = nul ? (size_t)(nul - d) : n;
        fuzz_file("merges.txt", nul ? nul + 1 : d, nul ? n - vl - 1 : 0);
        path = fuzz_file("vocab.json", d, vl);
        break;
    }
    default: path = fuzz_file("vocab.gguf", d, n); break;
    }
    actl_tokenizer *t = NULL;
    if (actl_tokenizer_load(path, NULL, &t) == ACTL_OK) {
        fuzz_use_tokenizer(t);
        actl_tokenizer_free(t);
    }
    return 0;
}
