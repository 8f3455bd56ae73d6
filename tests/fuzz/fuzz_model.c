/* fuzz_model: the model files a decoder or a merge reads. The first byte
 * picks what the rest is:
 *   0  a llama2.c checkpoint (.bin: a 7-int header, then fp32 tensors whose
 *      sizes the header implies);
 *   1  a Hugging Face config.json, beside the real weights of the tiny
 *      fixture model (fixtures/base-tiny/model.safetensors), loaded as a
 *      model and as a merge's base;
 *   2  a sharded checkpoint's model.safetensors.index.json, beside the real
 *      shards and config of fixtures/base-tiny-sharded, loaded the same
 *      ways. */
#include "fuzz.h"

#include <limits.h>

/* dir (under the private directory) holding links to the files of the
 * fixture directory `from` (all but `except`), made once. */
static void link_dir(const char *dir, const char *from, const char *const *files, size_t n)
{
    char src[PATH_MAX], rel[512];
    if (mkdir(dir, 0700) != 0) {
        perror("fuzz_model: mkdir");
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(rel, sizeof rel, "%s/%s/%s", fuzz_fixtures(), from, files[i]);
        char *link = actl__path_join(dir, files[i]);
        if (!realpath(rel, src) || !link || symlink(src, link) != 0) {
            perror("fuzz_model: linking the fixture");
            abort();
        }
        free(link);
    }
}

/* Writes the input as dir/name, then loads dir as a model and as a base. */
static void load_dir(const char *dir, const char *name, const uint8_t *d, size_t n)
{
    char *path = actl__path_join(dir, name);
    FILE *f = path ? fopen(path, "wb") : NULL;
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0)
        abort();
    free(path);
    actl_model *m = NULL;
    if (actl_model_load(dir, 0, &m) == ACTL_OK) {
        actl_model_info mi;
        actl_model_info_get(m, &mi);
        actl_model_free(m);
    }
    actl_base *b = NULL;
    if (actl_base_load(dir, &b) == ACTL_OK)
        actl_base_free(b);
    actl_ckpt *ck = NULL;
    if (actl_ckpt_open(dir, &ck) == ACTL_OK) {
        for (size_t i = 0; i < actl_ckpt_count(ck); i++)
            if (actl_ckpt_find(ck, actl_tensor_name(actl_ckpt_tensor(ck, i))) !=
                actl_ckpt_tensor(ck, i))
                abort(); /* names are unique across the shards */
        actl_ckpt_close(ck);
    }
}

static void hf(const uint8_t *d, size_t n)
{
    static char dir[400];
    if (!dir[0]) {
        static const char *const files[] = {"model.safetensors"};
        snprintf(dir, sizeof dir, "%s/hf", fuzz_dir());
        link_dir(dir, "base-tiny", files, 1);
    }
    load_dir(dir, "config.json", d, n);
}

static void sharded(const uint8_t *d, size_t n)
{
    static char dir[400];
    if (!dir[0]) {
        static const char *const files[] = {"config.json", "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors"};
        snprintf(dir, sizeof dir, "%s/sharded", fuzz_dir());
        link_dir(dir, "base-tiny-sharded", files, 3);
    }
    load_dir(dir, "model.safetensors.index.json", d, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] % 3 == 0) {
        actl_model *m = NULL;
        if (actl_model_load(fuzz_file("m.bin", data + 1, size - 1), 0, &m) == ACTL_OK) {
            actl_model_info mi;
            actl_model_info_get(m, &mi);
            actl_model_free(m);
        }
    } else if (data[0] % 3 == 1) {
        hf(data + 1, size - 1);
    } else {
        sharded(data + 1, size - 1);
    }
    return 0;
}
