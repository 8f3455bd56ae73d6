/* fuzz_adapter_config: adapter_config.json, the PEFT config every adapter
 * import reads, against real tensors: the first byte picks one fixture's
 * adapter_model.safetensors (LoRA, DoRA, RoAd, bottleneck, MoS ...), the
 * rest is the config text. An adapter that builds is then used as the
 * commands use one: described, materialized, validated against the base. */
#include "fuzz.h"

static const char *const kinds[] = {
    "lora",       "lora-dora",     "lora-embedding",      "lora-bias", "lora-patterns",
    "lora-bf16",  "road-1",        "road-4",              "mos",       "bottleneck-series",
    "bottleneck-parallel", "lora-fanin",
};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

static struct {
    actl_st *st;
    const actl_tensor **tensors;
    size_t n;
} sets[N_KINDS];

static void setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    char path[512];
    for (size_t k = 0; k < N_KINDS; k++) {
        snprintf(path, sizeof path, "%s/adapters/base-tiny/%s/adapter_model.safetensors",
                 fuzz_fixtures(), kinds[k]);
        if (actl_st_open(path, &sets[k].st) != ACTL_OK) {
            fprintf(stderr, "fuzz_adapter_config: %s\n", actl_errmsg());
            abort();
        }
        sets[k].n = actl_st_count(sets[k].st);
        sets[k].tensors = calloc(sets[k].n ? sets[k].n : 1, sizeof *sets[k].tensors);
        if (!sets[k].tensors)
            abort();
        for (size_t i = 0; i < sets[k].n; i++)
            sets[k].tensors[i] = actl_st_tensor(sets[k].st, i);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    setup();
    size_t k = data[0] % N_KINDS;
    char *cfg = fuzz_str(data + 1, size - 1);
    actl_adapter *a = NULL, *m = NULL;
    if (actl_adapter_new(cfg, sets[k].tensors, sets[k].n, "fuzz", &a) == ACTL_OK) {
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
            actl_module_info mi;
            if (actl_adapter_module(a, i, &mi) != ACTL_OK)
                abort(); /* every index below the count describes a module */
        }
        if (!actl_adapter_config(a))
            abort();
        actl_adapter_validate(a, fuzz_base());
        if (actl_adapter_materialize(a, &m) == ACTL_OK)
            actl_adapter_free(m);
        actl_adapter_free(a);
    }
    free(cfg);
    return 0;
}
