/* fuzz_safetensors: a .safetensors file (header, offsets, dtypes, shapes,
 * metadata), opened as every reader of adapters and checkpoints opens one;
 * whatever opens is read back whole, then built into an adapter under each
 * of five real configs (LoRA, DoRA, RoAd, bottleneck, MoS: a stranger's
 * tensors against the config's claims), validated against the tiny base
 * and materialized. */
#include "fuzz.h"

static const char *const kinds[] = {"lora", "lora-dora", "road-1", "bottleneck-series", "mos"};
#define N_KINDS (sizeof kinds / sizeof kinds[0])
static char *configs[N_KINDS];

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    char path[512];
    for (size_t k = 0; k < N_KINDS; k++) {
        size_t len;
        snprintf(path, sizeof path, "%s/adapters/base-tiny/%s/adapter_config.json",
                 fuzz_fixtures(), kinds[k]);
        if (actl__read_file(path, 1 << 20, &configs[k], &len) != ACTL_OK) {
            fprintf(stderr, "fuzz_safetensors: %s\n", actl_errmsg());
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
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
    size_t n = actl_st_count(st);
    const actl_tensor **all = calloc(n ? n : 1, sizeof *all);
    if (!all)
        abort();
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = all[i] = actl_st_tensor(st, i);
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
    for (size_t k = 0; k < N_KINDS; k++) {
        actl_adapter *a = NULL, *m = NULL;
        if (actl_adapter_new(configs[k], all, n, path, &a) != ACTL_OK)
            continue;
        actl_adapter_validate(a, fuzz_base());
        if (actl_adapter_materialize(a, &m) == ACTL_OK)
            actl_adapter_free(m);
        actl_adapter_free(a);
    }
    free(all);
    actl_st_close(st);
    return 0;
}
