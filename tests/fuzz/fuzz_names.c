/* fuzz_names: the short strings users and remote indexes hand over: the
 * text (up to its first NUL) as a URL to pull (with and without a ref, as
 * a published store or a PEFT directory or hf://), an adapter name, a
 * reference NAME[@V], an input spec NAME[@V][:W], a tag KEY=VALUE, and the
 * names of dtypes, kinds, compose methods and scorers. A URL accepted for a
 * PEFT directory gives a base URL that passes the URL check and a local
 * name that cannot leave the store: no '/', never "." or "..", at most 128
 * bytes. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_str(data, size);
    char *base = NULL, *name = NULL;
    if (actl__pull_plan(s, NULL, NULL, &base, &name) == ACTL_OK) {
        if (!base || !name || !*name || strchr(name, '/') || strcmp(name, ".") == 0 ||
            strcmp(name, "..") == 0 || strlen(name) > 128 || actl__url_check(base) != ACTL_OK)
            abort();
    } else if (base || name) {
        abort(); /* nothing is handed out on failure */
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
