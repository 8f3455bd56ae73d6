/* json.c: strict parsing, and serialization in the form PEFT writes
 * (Python's json.dumps with indent=2, sort_keys=True, ensure_ascii=True). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int depth_ok(const json_t *v, int depth)
{
    if (depth > ACTL_JSON_MAX_DEPTH)
        return 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) if (!depth_ok(x, depth + 1)) return 0;
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (!depth_ok(x, depth + 1)) return 0;
    }
    return 1;
}

int actl__json_parse(const char *text, size_t len, const char *what, json_t **out)
{
    json_error_t e;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &e);
    if (!v)
        return actl__err(ACTL_EFORMAT, "%s: invalid JSON at line %d column %d: %s", what,
                         e.line, e.column, e.text);
    if (!depth_ok(v, 1)) {
        json_decref(v);
        return actl__err(ACTL_ELIMIT, "%s: JSON nested deeper than %d levels", what,
                         ACTL_JSON_MAX_DEPTH);
    }
    *out = v;
    return ACTL_OK;
}

/* A growable string. `fail` sticks once an allocation failed. */
typedef struct {
    char *s;
    size_t len, cap;
    int fail;
} sbuf;

static void put(sbuf *b, const char *s, size_t n)
{
    if (b->fail)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->fail = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void puts_(sbuf *b, const char *s) { put(b, s, strlen(s)); }

static void put_u16(sbuf *b, unsigned u)
{
    char esc[8];
    snprintf(esc, sizeof esc, "\\u%04x", u & 0xffffu);
    put(b, esc, 6);
}

/* Python escapes ", \, \n, \r, \t, \b, \f by name and every other byte
 * outside ' '..'~' as \uXXXX (surrogate pairs above U+FFFF). Input is valid
 * UTF-8 (jansson guarantees it). */
static void put_string(sbuf *b, const char *s, size_t n)
{
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(b, e, 2);
            i++;
        } else if (c >= 0x20 && c < 0x7f) {
            put(b, (const char *)&c, 1);
            i++;
        } else if (c < 0x80) {
            const char *named = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t"
                              : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
            if (named)
                puts_(b, named);
            else
                put_u16(b, c);
            i++;
        } else {
            int extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
            unsigned cp = c & (0x3fu >> extra);
            for (int k = 1; k <= extra && i + (size_t)k < n; k++)
                cp = (cp << 6) | ((unsigned char)s[i + (size_t)k] & 0x3fu);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                put_u16(b, 0xd800 + (cp >> 10));
                put_u16(b, 0xdc00 + (cp & 0x3ff));
            } else {
                put_u16(b, cp);
            }
            i += (size_t)extra + 1;
        }
    }
    put(b, "\"", 1);
}

/* Python's repr(float): the shortest digits that round-trip, fixed notation
 * when the decimal exponent is in (-4, 16], else d.ddde+XX. */
static void put_real(sbuf *b, double v)
{
    char tmp[40], digits[24];
    /* jansson holds no NaN or Inf (json_real refuses them), so v is finite. */
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    /* tmp is [-]d[.ddd]e[+-]XX */
    const char *p = tmp;
    if (*p == '-') {
        put(b, "-", 1);
        p++;
    }
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            digits[nd++] = *p;
    digits[nd] = '\0';
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        digits[--nd] = '\0';
    int decpt = exp10 + 1;
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            puts_(b, "0.");
            for (int i = 0; i < -decpt; i++)
                put(b, "0", 1);
            put(b, digits, nd);
        } else if ((size_t)decpt >= nd) {
            put(b, digits, nd);
            for (size_t i = nd; i < (size_t)decpt; i++)
                put(b, "0", 1);
            puts_(b, ".0");
        } else {
            put(b, digits, (size_t)decpt);
            put(b, ".", 1);
            put(b, digits + decpt, nd - (size_t)decpt);
        }
    } else {
        put(b, digits, 1);
        if (nd > 1) {
            put(b, ".", 1);
            put(b, digits + 1, nd - 1);
        }
        char e[16];
        snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        puts_(b, e);
    }
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void newline(sbuf *b, int indent, int level)
{
    if (indent < 0)
        return;
    put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++)
        put(b, " ", 1);
}

static bool in_list(const char *key, const char *const *list)
{
    for (; key && list && *list; list++)
        if (strcmp(key, *list) == 0)
            return true;
    return false;
}

/* keep_order: the objects found under these keys keep their insertion order
 * (parent_key names the key v was found under, or NULL). */
static void dump(sbuf *b, const json_t *v, int indent, int level, const char *parent_key,
                 const char *const *keep_order)
{
    char num[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        if (n == 0) {
            puts_(b, "{}");
            return;
        }
        const char **keys = malloc(n * sizeof *keys);
        if (!keys) {
            b->fail = 1;
            return;
        }
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) keys[i++] = k;
        if (!in_list(parent_key, keep_order))
            qsort(keys, n, sizeof *keys, cmp_keys);
        put(b, "{", 1);
        for (i = 0; i < n; i++) {
            if (i)
                put(b, ",", 1);
            newline(b, indent, level + 1);
            put_string(b, keys[i], strlen(keys[i]));
            puts_(b, indent < 0 ? ":" : ": ");
            dump(b, json_object_get(v, keys[i]), indent, level + 1, keys[i], keep_order);
        }
        free(keys);
        newline(b, indent, level);
        put(b, "}", 1);
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0) {
            puts_(b, "[]");
            return;
        }
        put(b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                put(b, ",", 1);
            newline(b, indent, level + 1);
            dump(b, json_array_get(v, i), indent, level + 1, NULL, keep_order);
        }
        newline(b, indent, level);
        put(b, "]", 1);
        return;
    }
    case JSON_STRING:
        put_string(b, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        puts_(b, num);
        return;
    case JSON_REAL:
        put_real(b, json_real_value(v));
        return;
    case JSON_TRUE:
        puts_(b, "true");
        return;
    case JSON_FALSE:
        puts_(b, "false");
        return;
    case JSON_NULL:
        puts_(b, "null");
        return;
    }
}

char *actl__json_dump(const json_t *v, int indent)
{
    return actl__json_dump_keep(v, indent, NULL);
}

char *actl__json_dump_keep(const json_t *v, int indent, const char *const *keep_order)
{
    sbuf b = {0};
    dump(&b, v, indent, 0, NULL, keep_order);
    if (b.fail) {
        free(b.s);
        return NULL;
    }
    if (!b.s)
        b.s = strdup("");
    return b.s;
}
