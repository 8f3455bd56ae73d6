/* fuzz_index: a published store's index.json, as a pull reads it before
 * choosing the pack to fetch: the first byte picks the version asked for
 * (0: the newest), the rest is the index text. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool found = false;
    static const char *const names[] = {"lora", "a", "x-y.z_1"};
    actl__index_check("index.json", (const char *)data + 1, size - 1, names[data[0] % 3],
                      data[0] / 3 % 4, &found);
    return 0;
}
