/* fuzz_names: the short strings users and remote indexes hand over: the
 * text (up to its first NUL) as a URL to pull (with and without a ref, as
 * a published store or a PEFT directory or hf://), an adapter name, a
 * reference NAME[@V], an input spec NAME[@V][:W], a tag KEY=VALUE, and the
 * names of dtypes, kinds, compose methods and scorers. What the URL parts
 * accept must be what the name checks accept. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_str(data, size);
    char *base = NULL, *name = NULL;
    if (actl__pull_plan(s, NULL, NULL, &base, &name) == ACTL_OK) {
        if (!base || !name || actl_name_check(name) != ACTL_OK)
            abort(); /* a derived name is one the store accepts */
    }
    free(base);
    free(name);
    base = name = NULL;
    if (actl__pull_plan(s, "lora@3", NULL, &base, &name) == ACTL_OK && !base)
        abort();
    free(base);
    free(name);
    actl__url_check(s);

    char rname[160];
    int64_t version = 0;
    if (actl_name_check(s) == ACTL_OK && actl_ref_parse(s, rname, sizeof rname, &version) == ACTL_OK &&
        (strcmp(rname, s) != 0 || version != 0))
        abort(); /* a plain name is a reference to its newest version */
    actl_ref_parse(s, rname, sizeof rname, &version);
    char *ref = NULL;
    double w = 0;
    if (actl_input_spec_parse(s, &ref, &w) == ACTL_OK)
        free(ref);
    char key[65];
    const char *value = NULL;
    actl__tag_parse(s, key, &value);
    actl_dtype dt;
    actl_dtype_parse(s, &dt);
    actl_kind kind;
    actl_kind_parse(s, &kind);
    actl_compose_method m;
    actl_compose_method_parse(s, &m);
    actl_scorer sc;
    actl_scorer_parse(s, &sc);
    free(s);
    return 0;
}
