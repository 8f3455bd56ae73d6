/* inputs.c: the inputs of merge and compose. A spec "NAME[@V][:W]" or
 * "DIR[:W]" names an adapter and its weight; an actl_inputs list loads what
 * specs name, from PEFT directories or from the store, and expands stacks
 * into their members, so that merge and compose see plain adapters only. */
#include "internal.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- specs ------------------------------------------------------------ */

/* A decimal number as people write weights: [+-] digits [. digits] or
 * [+-] . digits, then an optional exponent. Hex floats, "inf", "nan", spaces
 * and the empty string are not weights (the text is then part of the
 * reference: a directory may well be called "run:nan"). */
static bool is_decimal(const char *s)
{
    const char *p = s;
    size_t digits = 0;
    if (*p == '+' || *p == '-')
        p++;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9')
            p++, digits++;
    }
    if (!digits)
        return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!(*p >= '0' && *p <= '9'))
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return *p == '\0';
}

/* Parses a decimal weight in the C locale whatever the process's locale is
 * (a comma-decimal LC_NUMERIC would otherwise read "0.5" as 0). */
static int parse_weight(const char *text, double *out)
{
    locale_t c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!c)
        return actl__oom();
    *out = strtod_l(text, NULL, c); /* is_decimal vouched for the whole text */
    freelocale(c);
    return ACTL_OK;
}

int actl_input_spec_parse(const char *spec, char **ref, double *weight)
{
    char q[ACTL__QUOTE_CAP];
    if (ref)
        *ref = NULL;
    if (!spec || !ref || !weight)
        return actl__err(ACTL_EINVAL, "input spec: NULL argument");
    size_t len = strlen(spec);
    double w = 1;
    const char *colon = strrchr(spec, ':');
    if (colon && is_decimal(colon + 1)) {
        double v;
        int rc = parse_weight(colon + 1, &v);
        if (rc)
            return rc;
        /* "1e999" overflows to infinity: not a finite number, so not a weight. */
        if (isfinite(v)) {
            w = v;
            len = (size_t)(colon - spec);
        }
    }
    if (len == 0)
        return actl__err(ACTL_EINVAL, "input '%s': the adapter reference is empty",
                         actl__quote(spec, q, sizeof q));
    if (!(*ref = strndup(spec, len)))
        return actl__oom();
    *weight = w;
    return ACTL_OK;
}

/* ---- the list --------------------------------------------------------- */

/* items[i] points into adapters[i], refs[i] and packs[i], owned here. */
struct actl_inputs {
    actl_input *items;
    actl_adapter **adapters;
    char **refs;
    char **packs; /* NULL entries for directories */
    size_t n, cap;
};

int actl_inputs_new(actl_inputs **out)
{
    if (!out)
        return actl__err(ACTL_EINVAL, "inputs new: NULL argument");
    if (!(*out = calloc(1, sizeof **out)))
        return actl__oom();
    return ACTL_OK;
}

/* Frees the items from n on. */
static void truncate_to(actl_inputs *l, size_t n)
{
    while (l->n > n) {
        l->n--;
        actl_adapter_free(l->adapters[l->n]);
        free(l->refs[l->n]);
        free(l->packs[l->n]);
    }
}

void actl_inputs_free(actl_inputs *l)
{
    if (!l)
        return;
    truncate_to(l, 0);
    free(l->items);
    free(l->adapters);
    free(l->refs);
    free(l->packs);
    free(l);
}

const actl_input *actl_inputs_items(const actl_inputs *l, size_t *n)
{
    if (n)
        *n = l ? l->n : 0;
    return l ? l->items : NULL;
}

/* Appends a (taken, freed on failure too) with copies of ref and pack. */
static int push(actl_inputs *l, actl_adapter *a, double w, const char *ref, const char *pack)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        actl_input *items = realloc(l->items, cap * sizeof *items);
        if (items)
            l->items = items;
        actl_adapter **ads = realloc(l->adapters, cap * sizeof *ads);
        if (ads)
            l->adapters = ads;
        char **refs = realloc(l->refs, cap * sizeof *refs);
        if (refs)
            l->refs = refs;
        char **packs = realloc(l->packs, cap * sizeof *packs);
        if (packs)
            l->packs = packs;
        if (!items || !ads || !refs || !packs) {
            actl_adapter_free(a);
            return actl__oom();
        }
        l->cap = cap;
    }
    char *r = strdup(ref), *p = pack ? strdup(pack) : NULL;
    if (!r || (pack && !p)) {
        free(r);
        free(p);
        actl_adapter_free(a);
        return actl__oom();
    }
    l->adapters[l->n] = a;
    l->refs[l->n] = r;
    l->packs[l->n] = p;
    l->items[l->n] = (actl_input){a, w, r, p};
    l->n++;
    return ACTL_OK;
}

/* Makes sure the current message names ref (the store's messages name the
 * resolved "name@version", which contains a bare NAME but not every ref). */
static int naming(int rc, const char *ref)
{
    char q[ACTL__QUOTE_CAP];
    if (!strstr(actl_errmsg(), ref))
        actl__err_wrap(rc, "input '%s'", actl__quote(ref, q, sizeof q));
    return rc;
}

/* A stack's members in order, each weight multiplied by w; all or nothing. */
static int add_stack_members(actl_inputs *l, actl_store *s, const char *ref, double w)
{
    actl__stack_member *m = NULL;
    size_t n = 0, n0 = l->n;
    char label[ACTL__LABEL_CAP], q[ACTL__QUOTE_CAP];
    int rc = actl__store_stack_members(s, ref, label, &m, &n);
    for (size_t i = 0; !rc && i < n; i++) {
        char what[ACTL__LABEL_CAP + ACTL__QUOTE_CAP + 48];
        actl_adapter *a = NULL;
        double mw = w * m[i].weight;
        snprintf(what, sizeof what, "'%s' member %zu '%s'", label, i + 1,
                 actl__quote(m[i].ref, q, sizeof q));
        if (!isfinite(mw)) {
            rc = actl__err(ACTL_EINVAL, "%s: weight %g times %g is not a finite number", what, w,
                           m[i].weight);
            break;
        }
        if ((rc = actl__store_load_pack(s, m[i].pack, what, &a)))
            break;
        rc = push(l, a, mw, m[i].ref, m[i].pack);
    }
    if (!rc && n == 0)
        rc = actl__err(ACTL_EFORMAT, "stack '%s' has no members (run adapterctl verify)", label);
    if (rc)
        truncate_to(l, n0);
    actl__stack_members_free(m, n);
    return rc;
}

int actl_inputs_add(actl_inputs *l, actl_store *s, const char *ref, double w)
{
    char q[ACTL__QUOTE_CAP], name[129], label[ACTL__LABEL_CAP];
    int64_t version;
    actl_entries *es = NULL;
    actl_adapter *a = NULL;
    if (!l || !ref)
        return actl__err(ACTL_EINVAL, "inputs add: NULL argument");
    if (!*ref)
        return actl__err(ACTL_EINVAL, "input reference is empty");
    if (!isfinite(w))
        return actl__err(ACTL_EINVAL, "input '%s': weight %g is not a finite number",
                         actl__quote(ref, q, sizeof q), w);
    /* A directory wins over a store entry of the same name, as a path given
     * on a command line is what the user points at. Its messages name the
     * directory (or a file in it). */
    if (actl__is_dir(ref)) {
        int rc = actl_adapter_load(ref, &a);
        return rc ? rc : push(l, a, w, ref, NULL);
    }
    actl__quote(ref, q, sizeof q);
    if (!s)
        return actl__err(ACTL_ENOTFOUND, "input '%s': no such directory (and no store to look "
                                         "it up in)", q);
    int rc = actl_ref_parse(ref, name, sizeof name, &version);
    if (rc) {
        char why[1024];
        snprintf(why, sizeof why, "%s", actl_errmsg());
        return actl__err(ACTL_ENOTFOUND,
                         "input '%s' is neither a directory nor a stored adapter NAME[@V] (%s)",
                         q, why);
    }
    if ((rc = actl_store_show(s, ref, &es))) {
        if (rc == ACTL_ENOTFOUND)
            rc = actl__err(ACTL_ENOTFOUND, "input '%s': no such directory or stored adapter", q);
        goto out;
    }
    const actl_entry *e = actl_entries_get(es, 0);
    /* The version resolved now is the one loaded and recorded: "math" means
     * math@3 in the lineage, whatever is added later. */
    snprintf(label, sizeof label, "%s@%lld", e->name, (long long)e->version);
    if (e->kind == ACTL_KIND_STACK) {
        rc = add_stack_members(l, s, label, w);
    } else if (!(rc = actl_store_load(s, label, &a))) {
        rc = push(l, a, w, label, e->pack);
        a = NULL; /* push took it */
    }
out:
    if (rc)
        naming(rc, ref);
    actl_adapter_free(a);
    actl_entries_free(es);
    return rc;
}
