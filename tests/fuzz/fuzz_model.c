/* fuzz_model: the model files a decoder or a merge reads. The first byte
 * picks what the rest is:
 *   0  a llama2.c checkpoint (.bin: a 7-int header, then fp32 tensors whose
 *      sizes the header implies);
 *   1  a Hugging Face config.json, beside the real weights of the tiny
 *      fixture model (fixtures/base-tiny/model.safetensors), loaded as a
 *      model and as a merge's base. */
#include "fuzz.h"

#include <limits.h>

static void hf(const uint8_t *d, size_t n)
{
    static char dir[400];
    if (!dir[0]) {
        char src[PATH_MAX], rel[512];
        snprintf(rel, sizeof rel, "%s/base-tiny/model.safetensors", fuzz_fixtures());
        snprintf(dir, sizeof dir, "%s/hf", fuzz_dir());
        char *link = actl__path_join(dir, "model.safetensors");
        if (!realpath(rel, src) || mkdir(dir, 0700) != 0 || !link || symlink(src, link) != 0) {
            perror("fuzz_model: setting up the model directory");
            abort();
        }
        free(link);
    }
    char *cfg = actl__path_join(dir, "config.json");
    FILE *f = fopen(cfg, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0)
        abort();
    free(cfg);
    actl_model *m = NULL;
    if (actl_model_load(dir, 0, &m) == ACTL_OK) {
        actl_model_info mi;
        actl_model_info_get(m, &mi);
        actl_model_free(m);
    }
    actl_base *b = NULL;
    if (actl_base_load(dir, &b) == ACTL_OK)
        actl_base_free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] % 2 == 0) {
        actl_model *m = NULL;
        if (actl_model_load(fuzz_file("m.bin", data + 1, size - 1), 0, &m) == ACTL_OK) {
            actl_model_info mi;
            actl_model_info_get(m, &mi);
            actl_model_free(m);
        }
    } else {
        hf(data + 1, size - 1);
    }
    return 0;
}
