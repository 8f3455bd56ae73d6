/* fuzz_safetensors: a .safetensors file (header, offsets, dtypes, shapes,
 * metadata), opened as every reader of adapters and checkpoints opens one;
 * whatever opens is read back whole. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("x.safetensors", data, size);
    actl_st *st = NULL;
    if (actl_st_open(path, &st) != ACTL_OK)
        return 0;
    for (size_t i = 0; i < actl_st_metadata_count(st); i++) {
        const char *k, *v;
        actl_st_metadata_at(st, i, &k, &v);
        if (strlen(k) + strlen(v) == (size_t)-1)
            abort();
    }
    for (size_t i = 0; i < actl_st_count(st); i++) {
        const actl_tensor *t = actl_st_tensor(st, i);
        if (actl_st_find(st, actl_tensor_name(t)) != t)
            abort(); /* names are unique: find gives the same tensor */
        int64_t numel = actl_tensor_numel(t);
        if (numel <= 4096 && actl__is_float(actl_tensor_dtype(t))) {
            float *f = malloc((size_t)(numel ? numel : 1) * sizeof *f);
            if (!f)
                abort();
            actl_tensor_to_f32(t, f);
            free(f);
        }
    }
    actl_st_close(st);
    return 0;
}
