/* score.c: what an eval run is asked to do and how its answers are judged
 * (DESIGN.md 11). The scorers keep LLM-Adapters' rules exactly so that our
 * accuracies compare with their published ones; the request lists come from
 * a JSONL file (one request per line, bad lines reported and skipped) or
 * from one of their datasets (one request per record and adapter). */
#include "internal.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A requests file or dataset is read whole: 1 GiB is far past any eval set
 * and still fits in memory. */
#define REQS_FILE_LIMIT ((size_t)1 << 30)
/* One JSONL line: jansson builds a tree several times the text's size, so a
 * hostile line is refused before parsing; 16 MiB holds a prompt of millions
 * of tokens. */
#define REQS_LINE_MAX ((size_t)16 << 20)

/* ---- scorers ---------------------------------------------------------- */

static const char *const scorer_names[] = {"none", "number", "choice", "exact", "contains"};
#define N_SCORERS (sizeof scorer_names / sizeof scorer_names[0])

const char *actl_scorer_name(actl_scorer s)
{
    if ((unsigned)s >= N_SCORERS)
        return NULL;
    return scorer_names[s];
}

int actl_scorer_parse(const char *name, actl_scorer *out)
{
    if (!name || !out)
        return actl__err(ACTL_EINVAL, "scorer name and output must not be NULL");
    for (size_t i = 0; i < N_SCORERS; i++)
        if (strcmp(name, scorer_names[i]) == 0) {
            *out = (actl_scorer)i;
            return ACTL_OK;
        }
    return actl__err(ACTL_EINVAL, "unknown scorer '%s' (number, choice, exact, contains, none)",
                     name);
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* strtod in the C locale whatever the process's locale is: a comma-decimal
 * LC_NUMERIC would otherwise read "1.5" as 1. */
static int c_strtod(const char *text, char **end, double *out)
{
    locale_t c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!c)
        return actl__oom();
    *out = strtod_l(text, end, c);
    freelocale(c);
    return ACTL_OK;
}

/* A decimal number as Python's float() reads a label: optional spaces,
 * [+-], digits with at most one point (at least one digit), an optional
 * exponent, optional spaces. Hex, "inf" and "nan" are not labels. */
static int is_number_text(const char *s)
{
    const char *p = s;
    size_t digits = 0;
    while (is_space(*p))
        p++;
    if (*p == '+' || *p == '-')
        p++;
    while (is_digit(*p))
        p++, digits++;
    if (*p == '.') {
        p++;
        while (is_digit(*p))
            p++, digits++;
    }
    if (!digits)
        return 0;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!is_digit(*p))
            return 0;
        while (is_digit(*p))
            p++;
    }
    while (is_space(*p))
        p++;
    return *p == '\0';
}

/* Python's re.findall(r'-?\d+\.?\d*', s)[-1] over s with every comma
 * deleted. Matches never overlap and each is as long as the greedy pattern
 * allows, so scanning left to right and resuming after each match finds the
 * same ones. \d is ASCII here (Python's str \d also takes other scripts'
 * digits, which float() would read; models answering in those are not
 * expected). Returns the malloc'd text or NULL (*rc set on OOM). */
static char *last_number(const char *response, int *rc)
{
    size_t n = strlen(response), m = 0;
    char *s = malloc(n + 1);
    char *pred = NULL;
    *rc = ACTL_OK;
    if (!s) {
        *rc = actl__oom();
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (response[i] != ',')
            s[m++] = response[i];
    s[m] = '\0';
    size_t best = 0, best_len = 0, i = 0;
    int found = 0;
    while (i < m) {
        size_t j = i;
        if (s[j] == '-')
            j++;
        if (j >= m || !is_digit(s[j])) {
            i++;
            continue;
        }
        while (j < m && is_digit(s[j]))
            j++;
        if (j < m && s[j] == '.') {
            j++;
            while (j < m && is_digit(s[j]))
                j++;
        }
        best = i, best_len = j - i, found = 1;
        i = j;
    }
    if (found) {
        if (!(pred = malloc(best_len + 1)))
            *rc = actl__oom();
        else {
            memcpy(pred, s + best, best_len);
            pred[best_len] = '\0';
        }
    }
    free(s);
    return pred;
}

static char *dup_range(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* [*b, *e) of s without leading and trailing ASCII whitespace. */
static void trim(const char *s, const char **b, const char **e)
{
    const char *p = s, *q = s + strlen(s);
    while (p < q && is_space(*p))
        p++;
    while (q > p && is_space(q[-1]))
        q--;
    *b = p;
    *e = q;
}

int actl_score(actl_scorer s, const char *response, const char *answer, char **pred,
               int *correct)
{
    int rc = ACTL_OK;
    char *p = NULL;
    int ok = 0;
    if (!response || !answer || !pred || !correct) {
        rc = actl__err(ACTL_EINVAL, "response, answer and outputs must not be NULL");
        goto out;
    }
    switch (s) {
    case ACTL_SCORER_NUMBER: {
        double label = 0, v = 0;
        if (!is_number_text(answer)) {
            rc = actl__err(ACTL_EINVAL, "answer '%s' is not a number", answer);
            goto out;
        }
        if ((rc = c_strtod(answer, NULL, &label)))
            goto out;
        p = last_number(response, &rc);
        if (rc)
            goto out;
        if (p) {
            if ((rc = c_strtod(p, NULL, &v)))
                goto out;
            ok = fabs(v - label) <= 0.001;
        }
        break;
    }
    case ACTL_SCORER_CHOICE: {
        /* re.findall(r'A|B|C|D|E', response.strip())[0]: stripping cannot
         * change which letter comes first */
        const char *c = response;
        while (*c && !(*c >= 'A' && *c <= 'E'))
            c++;
        if (*c) {
            const char *b, *e;
            if (!(p = dup_range(c, 1))) {
                rc = actl__oom();
                goto out;
            }
            trim(answer, &b, &e);
            ok = e - b == 1 && *b == *c;
        }
        break;
    }
    case ACTL_SCORER_EXACT: {
        const char *rb, *re, *ab, *ae;
        trim(response, &rb, &re);
        trim(answer, &ab, &ae);
        if (!(p = dup_range(rb, (size_t)(re - rb)))) {
            rc = actl__oom();
            goto out;
        }
        ok = re - rb == ae - ab && memcmp(rb, ab, (size_t)(re - rb)) == 0;
        break;
    }
    case ACTL_SCORER_CONTAINS:
        if (strstr(response, answer)) {
            if (!(p = dup_range(answer, strlen(answer)))) {
                rc = actl__oom();
                goto out;
            }
            ok = 1;
        }
        break;
    default:
        rc = actl__err(ACTL_EINVAL, "scorer %d does not score", (int)s);
        goto out;
    }
    *pred = p;
    *correct = ok;
    p = NULL;
out:
    free(p);
    return rc;
}

/* LLM-Adapters evaluate.py's generate_prompt, byte for byte (their f-string
 * keeps the source's 16-space indentation). */
#define PROMPT_HEAD                                                                  \
    "Below is an instruction that describes a task. Write a response that "          \
    "appropriately completes the request. \n\n                ### Instruction:\n"     \
    "                "
#define PROMPT_TAIL "\n\n                ### Response:\n                "

char *actl_eval_prompt(const char *instruction)
{
    if (!instruction)
        return NULL;
    return actl__strdup_printf("%s%s%s", PROMPT_HEAD, instruction, PROMPT_TAIL);
}

/* ---- request lists ---------------------------------------------------- */

struct actl_eval_reqs {
    actl_eval_req *r;
    size_t n, cap;
};

static void req_release(actl_eval_req *q)
{
    free(q->id);
    for (size_t i = 0; i < q->n_adapter; i++)
        free(q->adapter[i]);
    free(q->adapter);
    free(q->prompt);
    free(q->prompt_ids);
    for (size_t i = 0; i < q->n_stop; i++)
        free(q->stop[i]);
    free(q->stop);
    free(q->answer);
    free(q->continuation);
    free(q->continuation_ids);
    memset(q, 0, sizeof *q);
}

void actl_eval_reqs_free(actl_eval_reqs *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        req_release(&l->r[i]);
    free(l->r);
    free(l);
}

size_t actl_eval_reqs_count(const actl_eval_reqs *l) { return l ? l->n : 0; }

const actl_eval_req *actl_eval_reqs_get(const actl_eval_reqs *l, size_t i)
{
    return l && i < l->n ? &l->r[i] : NULL;
}

/* Moves *q into the list (q zeroed) or leaves it to the caller on OOM. */
static int reqs_push(actl_eval_reqs *l, actl_eval_req *q)
{
    actl_eval_req *r = actl__grow(l->r, l->n, &l->cap, sizeof *r, 64);
    if (!r)
        return actl__oom();
    l->r = r;
    r[l->n++] = *q;
    memset(q, 0, sizeof *q);
    return ACTL_OK;
}

/* Ids seen so far: an open-addressing set of indices into the list, so that
 * a duplicate is found without a quadratic scan of a long file. */
typedef struct {
    size_t *slot; /* index + 1; 0 is empty */
    size_t cap, n;
} idset;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int idset_has(const idset *set, const actl_eval_reqs *l, const char *id)
{
    if (!set->cap)
        return 0;
    for (size_t k = hash_str(id) & (set->cap - 1);; k = (k + 1) & (set->cap - 1)) {
        if (!set->slot[k])
            return 0;
        if (strcmp(l->r[set->slot[k] - 1].id, id) == 0)
            return 1;
    }
}

/* Adds list entry i (whose id is not in the set yet). */
static int idset_add(idset *set, const actl_eval_reqs *l, size_t i)
{
    if (2 * (set->n + 1) > set->cap) {
        size_t cap = set->cap ? 2 * set->cap : 256;
        size_t *slot = calloc(cap, sizeof *slot);
        if (!slot)
            return actl__oom();
        for (size_t k = 0; k < set->cap; k++)
            if (set->slot[k]) {
                size_t h = hash_str(l->r[set->slot[k] - 1].id) & (cap - 1);
                while (slot[h])
                    h = (h + 1) & (cap - 1);
                slot[h] = set->slot[k];
            }
        free(set->slot);
        set->slot = slot;
        set->cap = cap;
    }
    size_t h = hash_str(l->r[i].id) & (set->cap - 1);
    while (set->slot[h])
        h = (h + 1) & (set->cap - 1);
    set->slot[h] = i + 1;
    set->n++;
    return ACTL_OK;
}

/* A JSON number as text: integers as written, reals in the shortest form
 * that reads back to the same double ("15" for 15.0, "0.1"). */
static char *number_text(const json_t *v)
{
    if (json_is_integer(v))
        return actl__strdup_printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    double d = json_real_value(v);
    char buf[64];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, d);
        double back = 0;
        if (c_strtod(buf, NULL, &back) == ACTL_OK && back == d)
            break;
    }
    return dup_range(buf, strlen(buf));
}

/* The scorer LLM-Adapters' datasets imply: a single letter A-E is a
 * multiple-choice label, a number a numeric one; anything else compares
 * exactly (ACTL_SCORER_NONE when exact is not allowed). */
static actl_scorer default_scorer(const char *answer, int allow_exact)
{
    if (answer[0] >= 'A' && answer[0] <= 'E' && answer[1] == '\0')
        return ACTL_SCORER_CHOICE;
    if (is_number_text(answer))
        return ACTL_SCORER_NUMBER;
    return allow_exact ? ACTL_SCORER_EXACT : ACTL_SCORER_NONE;
}

/* ---- JSONL ------------------------------------------------------------ */

/* A line's problem: *why (malloc'd) says what is wrong; the return code is
 * ACTL_OK for a problem (the line is skipped) and an error only on OOM. */
#define BAD(...)                                                                     \
    do {                                                                             \
        if (!(*why = actl__strdup_printf(__VA_ARGS__)))                              \
            rc = actl__oom();                                                        \
        goto out;                                                                    \
    } while (0)

static int line_strings(const json_t *v, const char *key, int allow_array, char ***out,
                        size_t *n, char **why)
{
    int rc = ACTL_OK;
    size_t count = json_is_array(v) ? json_array_size(v) : 1;
    char **s = NULL;
    if (!json_is_string(v) && !(allow_array && json_is_array(v)))
        BAD("'%s' must be a string%s", key, allow_array ? " or an array of strings" : "");
    if (!(s = calloc(count ? count : 1, sizeof *s))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(e))
            BAD("'%s' must be a string or an array of strings", key);
        if (json_string_length(e) == 0)
            BAD("'%s' has an empty string", key);
        if (strlen(json_string_value(e)) != json_string_length(e))
            BAD("'%s' has a NUL character", key);
        if (!(s[i] = dup_range(json_string_value(e), json_string_length(e)))) {
            rc = actl__oom();
            goto out;
        }
    }
    *out = s;
    *n = count;
    s = NULL;
out:
    if (s)
        for (size_t i = 0; i < count; i++)
            free(s[i]);
    free(s);
    return rc;
}

static int line_ids(const json_t *v, const char *key, int32_t **out, size_t *n, char **why)
{
    int rc = ACTL_OK;
    int32_t *ids = NULL;
    size_t count = json_array_size(v);
    if (!json_is_array(v))
        BAD("'%s' must be an array of token ids", key);
    if (count == 0)
        BAD("'%s' is empty", key);
    if (!(ids = malloc(count * sizeof *ids))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < count; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e))
            BAD("'%s'[%zu] is not an integer", key, i);
        json_int_t x = json_integer_value(e);
        if (x < 0)
            BAD("'%s'[%zu] is negative (%" JSON_INTEGER_FORMAT ")", key, i, x);
        if (x > INT32_MAX)
            BAD("'%s'[%zu] is too large (%" JSON_INTEGER_FORMAT ")", key, i, x);
        ids[i] = (int32_t)x;
    }
    *out = ids;
    *n = count;
    ids = NULL;
out:
    free(ids);
    return rc;
}


/* One line's object into *q (zeroed by the caller; released by the caller
 * whatever happens). */
static int line_req(const json_t *o, int64_t line, actl_eval_req *q, char **why)
{
    int rc = ACTL_OK;
    const json_t *v;
    char qb[ACTL__QUOTE_CAP];
    q->line = line;
    q->max_tokens = -1;
    q->top_p = 1;
    if (!json_is_object(o))
        BAD("not a JSON object");

    if ((v = json_object_get(o, "id")) && !json_is_null(v)) {
        if (json_is_string(v)) {
            if (json_string_length(v) == 0 ||
                strlen(json_string_value(v)) != json_string_length(v))
                BAD("'id' is empty or has a NUL character");
            q->id = dup_range(json_string_value(v), json_string_length(v));
        } else if (json_is_number(v)) {
            q->id = number_text(v);
        } else {
            BAD("'id' must be a string or a number");
        }
    } else {
        q->id = actl__strdup_printf("line-%lld", (long long)line);
    }
    if (!q->id) {
        rc = actl__oom();
        goto out;
    }

    /* null, "none" and [] all mean the base alone, as "none" does in a
     * dataset's adapter list */
    if ((v = json_object_get(o, "adapter")) && !json_is_null(v)) {
        if ((rc = line_strings(v, "adapter", 1, &q->adapter, &q->n_adapter, why)) || *why)
            goto out;
        if (q->n_adapter == 1 && strcmp(q->adapter[0], "none") == 0) {
            free(q->adapter[0]);
            free(q->adapter);
            q->adapter = NULL;
            q->n_adapter = 0;
        }
        for (size_t i = 0; i < q->n_adapter; i++)
            if (strcmp(q->adapter[i], "none") == 0)
                BAD("'adapter' lists \"none\" in a stack");
    }

    const json_t *p = json_object_get(o, "prompt"), *pi = json_object_get(o, "prompt_ids");
    if (!p == !pi)
        BAD(p ? "both 'prompt' and 'prompt_ids'" : "neither 'prompt' nor 'prompt_ids'");
    if (p) {
        if (!json_is_string(p))
            BAD("'prompt' must be a string");
        if (strlen(json_string_value(p)) != json_string_length(p))
            BAD("'prompt' has a NUL character");
        if (!(q->prompt = dup_range(json_string_value(p), json_string_length(p)))) {
            rc = actl__oom();
            goto out;
        }
    } else if ((rc = line_ids(pi, "prompt_ids", &q->prompt_ids, &q->n_prompt_ids, why)) ||
               *why) {
        goto out;
    }

    if ((v = json_object_get(o, "max_tokens"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            BAD("'max_tokens' must be an integer >= 0");
        q->max_tokens = json_integer_value(v);
    }
    if ((v = json_object_get(o, "temperature"))) {
        if (!json_is_number(v) || !(json_number_value(v) >= 0) || !isfinite(json_number_value(v)))
            BAD("'temperature' must be a number >= 0");
        q->temperature = json_number_value(v);
    }
    if ((v = json_object_get(o, "top_p"))) {
        if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
            BAD("'top_p' must be a number in (0, 1]");
        q->top_p = json_number_value(v);
    }
    if ((v = json_object_get(o, "seed"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            BAD("'seed' must be an integer >= 0");
        q->seed = (uint64_t)json_integer_value(v);
    }
    if ((v = json_object_get(o, "stop")) && !json_is_null(v))
        if ((rc = line_strings(v, "stop", 1, &q->stop, &q->n_stop, why)) || *why)
            goto out;

    const json_t *a = json_object_get(o, "answer"), *sc = json_object_get(o, "scorer");
    const json_t *c = json_object_get(o, "continuation");
    const json_t *ci = json_object_get(o, "continuation_ids");
    if (a && (c || ci))
        BAD("both 'answer' and a continuation");
    if (c && ci)
        BAD("both 'continuation' and 'continuation_ids'");
    if (sc && !a)
        BAD("'scorer' without an 'answer'");
    if (a) {
        if (json_is_string(a)) {
            if (strlen(json_string_value(a)) != json_string_length(a))
                BAD("'answer' has a NUL character");
            q->answer = dup_range(json_string_value(a), json_string_length(a));
        } else if (json_is_number(a)) {
            q->answer = number_text(a);
        } else {
            BAD("'answer' must be a string or a number");
        }
        if (!q->answer) {
            rc = actl__oom();
            goto out;
        }
        if (sc) {
            if (!json_is_string(sc))
                BAD("'scorer' must be a string");
            if (actl_scorer_parse(json_string_value(sc), &q->scorer) != ACTL_OK)
                BAD("unknown scorer '%s' (number, choice, exact, contains)",
                    actl__quote(json_string_value(sc), qb, sizeof qb));
            if (q->scorer == ACTL_SCORER_NONE)
                BAD("scorer 'none' with an 'answer'");
            if (q->scorer == ACTL_SCORER_NUMBER && !is_number_text(q->answer))
                BAD("scorer 'number' but answer '%s' is not a number",
                    actl__quote(q->answer, qb, sizeof qb));
        } else {
            q->scorer = default_scorer(q->answer, 1);
        }
    }
    if (c) {
        if (!json_is_string(c) || json_string_length(c) == 0)
            BAD("'continuation' must be a non-empty string");
        if (strlen(json_string_value(c)) != json_string_length(c))
            BAD("'continuation' has a NUL character");
        if (!(q->continuation = dup_range(json_string_value(c), json_string_length(c)))) {
            rc = actl__oom();
            goto out;
        }
    } else if (ci) {
        if ((rc = line_ids(ci, "continuation_ids", &q->continuation_ids,
                           &q->n_continuation_ids, why)) ||
            *why)
            goto out;
    }
out:
    return rc;
}

int actl_eval_reqs_jsonl(const char *path, actl_problem_fn fn, void *ctx, actl_eval_reqs **out)
{
    int rc = ACTL_OK;
    char *data = NULL, *why = NULL, *msg = NULL;
    size_t len = 0, bad = 0;
    actl_eval_reqs *l = NULL;
    idset ids = {0};
    actl_eval_req q = {0};
    json_t *o = NULL;
    char qb[ACTL__QUOTE_CAP];
    if (!path || !out) {
        rc = actl__err(ACTL_EINVAL, "requests path and output must not be NULL");
        goto out;
    }
    *out = NULL;
    if ((rc = actl__read_file(path, REQS_FILE_LIMIT, &data, &len)))
        goto out;
    if (!(l = calloc(1, sizeof *l))) {
        rc = actl__oom();
        goto out;
    }
    int64_t line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *s = data + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL);
        line++;
        size_t b = 0;
        while (b < n && is_space(s[b]))
            b++;
        if (b == n)
            continue;
        char what[64];
        snprintf(what, sizeof what, "line %lld", (long long)line);
        int prc = n > REQS_LINE_MAX ? ACTL_ELIMIT : actl__json_parse(s, n, what, &o);
        if (prc == ACTL_ENOMEM) {
            rc = prc;
            goto out;
        }
        if (prc == ACTL_ELIMIT && n > REQS_LINE_MAX) {
            if (!(why = actl__strdup_printf("%zu bytes, over the limit of %zu for a line", n,
                                            REQS_LINE_MAX))) {
                rc = actl__oom();
                goto out;
            }
        } else if (prc) {
            if (!(why = actl__strdup_printf("%s", actl_errmsg() + strlen(what) + 2))) {
                rc = actl__oom();
                goto out;
            }
        } else if ((rc = line_req(o, line, &q, &why))) {
            goto out;
        }
        json_decref(o);
        o = NULL;
        if (!why && idset_has(&ids, l, q.id) &&
            !(why = actl__strdup_printf("duplicate id '%s'", actl__quote(q.id, qb, sizeof qb)))) {
            rc = actl__oom();
            goto out;
        }
        if (why) {
            bad++;
            if (fn) {
                if (!(msg = actl__strdup_printf("'%s' line %lld: %s", path, (long long)line,
                                                why))) {
                    rc = actl__oom();
                    goto out;
                }
                fn(msg, ctx);
                free(msg);
                msg = NULL;
            }
            free(why);
            why = NULL;
            req_release(&q);
            continue;
        }
        if ((rc = reqs_push(l, &q)) || (rc = idset_add(&ids, l, l->n - 1)))
            goto out;
    }
    if (l->n == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': no usable request (%zu bad line%s)", path, bad,
                       bad == 1 ? "" : "s");
        goto out;
    }
    *out = l;
    l = NULL;
out:
    json_decref(o);
    req_release(&q);
    free(ids.slot);
    free(why);
    free(msg);
    free(data);
    actl_eval_reqs_free(l);
    return rc;
}

/* ---- LLM-Adapters datasets -------------------------------------------- */

int actl_eval_reqs_dataset(const char *path, const char *const *adapters, size_t n_adapters,
                           size_t limit, actl_eval_reqs **out)
{
    int rc = ACTL_OK;
    char *data = NULL, *answer = NULL;
    size_t len = 0;
    json_t *root = NULL;
    actl_eval_reqs *l = NULL;
    actl_eval_req q = {0};
    char qb[ACTL__QUOTE_CAP];
    if (!path || !out || (n_adapters && !adapters)) {
        rc = actl__err(ACTL_EINVAL, "dataset path, adapters and output must not be NULL");
        goto out;
    }
    *out = NULL;
    if (n_adapters == 0) {
        rc = actl__err(ACTL_EINVAL, "'%s': no adapter to evaluate (\"none\" for the base alone)",
                       path);
        goto out;
    }
    for (size_t k = 0; k < n_adapters; k++) {
        if (!adapters[k] || !adapters[k][0]) {
            rc = actl__err(ACTL_EINVAL, "'%s': adapter %zu is empty", path, k + 1);
            goto out;
        }
        for (size_t j = 0; j < k; j++)
            if (strcmp(adapters[j], adapters[k]) == 0) {
                rc = actl__err(ACTL_EINVAL, "'%s': adapter '%s' is named twice", path,
                               actl__quote(adapters[k], qb, sizeof qb));
                goto out;
            }
    }
    if ((rc = actl__read_file(path, REQS_FILE_LIMIT, &data, &len)))
        goto out;
    {
        char what[ACTL__QUOTE_CAP + 8];
        snprintf(what, sizeof what, "'%s'", path);
        if ((rc = actl__json_parse(data, len, what, &root)))
            goto out;
    }
    if (!json_is_array(root)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': not a JSON array of records", path);
        goto out;
    }
    size_t n = json_array_size(root);
    if (limit && limit < n)
        n = limit;
    if (n == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': no record", path);
        goto out;
    }
    if (!(l = calloc(1, sizeof *l))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(root, i);
        const json_t *ins = json_object_get(r, "instruction"), *a = json_object_get(r, "answer");
        actl_scorer sc;
        if (!json_is_object(r) || !json_is_string(ins) ||
            strlen(json_string_value(ins)) != json_string_length(ins)) {
            rc = actl__err(ACTL_EFORMAT, "'%s' record %zu: no 'instruction' string", path, i);
            goto out;
        }
        if (json_is_string(a) && strlen(json_string_value(a)) == json_string_length(a))
            answer = dup_range(json_string_value(a), json_string_length(a));
        else if (json_is_number(a))
            answer = number_text(a);
        else {
            rc = actl__err(ACTL_EFORMAT, "'%s' record %zu: no 'answer' string or number", path,
                           i);
            goto out;
        }
        if (!answer) {
            rc = actl__oom();
            goto out;
        }
        if ((sc = default_scorer(answer, 0)) == ACTL_SCORER_NONE) {
            rc = actl__err(ACTL_EFORMAT,
                           "'%s' record %zu: answer '%s' is neither a letter A-E nor a number",
                           path, i, actl__quote(answer, qb, sizeof qb));
            goto out;
        }
        for (size_t k = 0; k < n_adapters; k++) {
            q.line = (int64_t)i + 1;
            q.max_tokens = -1;
            q.top_p = 1;
            q.scorer = sc;
            if (!(q.id = actl__strdup_printf("%s:%zu", adapters[k], i)) ||
                !(q.prompt = actl_eval_prompt(json_string_value(ins))) ||
                !(q.answer = dup_range(answer, strlen(answer)))) {
                rc = actl__oom();
                goto out;
            }
            if (strcmp(adapters[k], "none") != 0) {
                if (!(q.adapter = calloc(1, sizeof *q.adapter)) ||
                    !(q.adapter[0] = dup_range(adapters[k], strlen(adapters[k])))) {
                    rc = actl__oom();
                    goto out;
                }
                q.n_adapter = 1;
            }
            if ((rc = reqs_push(l, &q)))
                goto out;
        }
        free(answer);
        answer = NULL;
    }
    *out = l;
    l = NULL;
out:
    req_release(&q);
    free(answer);
    json_decref(root);
    free(data);
    actl_eval_reqs_free(l);
    return rc;
}

char *actl_eval_answer_text(const char *completion)
{
    const char *c = completion ? completion : "";
    const char *cut = strstr(c, "### Response:");
    char *t = cut ? strndup(c, (size_t)(cut - c)) : strdup(c);
    if (!t)
        actl__oom();
    return t;
}
