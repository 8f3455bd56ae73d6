/* fuzz_tokenizer_json: an HF tokenizer.json (SentencePiece-style or
 * byte-level BPE: vocabulary, merges in both forms, added tokens,
 * normalizer, pre-tokenizer regexes, post-processor), loaded and used. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    actl_tokenizer *t = NULL;
    if (actl_tokenizer_load(fuzz_file("tokenizer.json", data, size), NULL, &t) == ACTL_OK) {
        fuzz_use_tokenizer(t);
        actl_tokenizer_free(t);
    }
    return 0;
}
