/* peft.c: PEFT directories in and out (DESIGN.md 4.1), and the checks that turn a config
 * plus a bag of named tensors into an adapter whose modules are known to be consistent.
 *
 * Reading: adapter_config.json (peft_type LORA, ROAD, BOTTLENECK or MOS) and
 * adapter_model.safetensors, whose keys are "base_model.model.<module><suffix>". Every key
 * must be a known suffix of the adapter's kind, a MoS pool, belong to a modules_to_save
 * module, or be a trained base bias when the config's "bias" is not "none"; anything else
 * is an error naming it.
 * Writing: the config as Python's json.dumps(indent=2, sort_keys=True) writes it, except
 * that rank_pattern and alpha_pattern keep their order (PEFT takes the first matching key),
 * the tensors sorted by key with metadata {"format": "pt"}, into a temporary directory that
 * is renamed into place. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONFIG_NAME "adapter_config.json"
#define WEIGHTS_NAME "adapter_model.safetensors"
#define PICKLE_NAME "adapter_model.bin"

/* Config keys whose objects are dumped in insertion order, not sorted: PEFT tries
 * rank_pattern and alpha_pattern keys first to last, so their order is meaning. */
const char *const actl__peft_keep_order[] = {"rank_pattern", "alpha_pattern", NULL};

/* ---- what a tensor key means ------------------------------------------- */

enum role {
    R_LORA_A, R_LORA_B, R_LORA_BIAS, R_MAGNITUDE, R_EMB_A, R_EMB_B,
    R_THETA, R_ALPHA,
    R_DOWN, R_UP, R_SCALING,
    R_INDEX_A, R_INDEX_B, R_POOL_A, R_POOL_B,
    /* Pass-through tensors: kept and exported as they are, attached to no module. */
    R_SAVE,     /* a modules_to_save tensor */
    R_BASE_BIAS /* a trained base bias, "<module>.bias" or "<module>.base_layer.bias" */
};

static const struct suffix {
    actl_kind kind;
    const char *suffix;
    enum role role;
} suffixes[] = {
    {ACTL_KIND_LORA, ".lora_A.weight", R_LORA_A},
    {ACTL_KIND_LORA, ".lora_B.weight", R_LORA_B},
    {ACTL_KIND_LORA, ".lora_B.bias", R_LORA_BIAS},
    {ACTL_KIND_LORA, ".lora_magnitude_vector", R_MAGNITUDE},
    {ACTL_KIND_LORA, ".lora_embedding_A", R_EMB_A},
    {ACTL_KIND_LORA, ".lora_embedding_B", R_EMB_B},
    {ACTL_KIND_ROAD, ".road_theta", R_THETA},
    {ACTL_KIND_ROAD, ".road_alpha", R_ALPHA},
    {ACTL_KIND_BOTTLENECK, ".adapter_down.weight", R_DOWN},
    {ACTL_KIND_BOTTLENECK, ".adapter_up.weight", R_UP},
    {ACTL_KIND_BOTTLENECK, ".adapter_scaling", R_SCALING},
    {ACTL_KIND_MOS, ".mos_index_A", R_INDEX_A},
    {ACTL_KIND_MOS, ".mos_index_B", R_INDEX_B},
};
#define N_SUFFIXES (sizeof suffixes / sizeof suffixes[0])

/* A build-time flag beside ACTL_MOD_*: the module has a lora_A/lora_B key (cleared once
 * checked). */
#define MOD_LINEAR_SEEN 0x100

/* "mos.<type>.pool_A": pools are per module type, not per module. */
#define MOS_POOL_PREFIX "mos."

/* A classified tensor: its module (or, for MoS pools, the module type). */
typedef struct entry {
    char *module;
    enum role role;
    const actl_tensor *t;
} entry;

/* ---- rank_pattern / alpha_pattern --------------------------------------- */

/* One compiled key of a pattern object. PEFT (peft/utils/other.py, get_pattern_key) tries
 * the keys in the object's order and takes the first K for which
 * re.match(rf"(.*\.)?({K})$", module) matches. Same groups here so that a key using
 * back-references numbers them as Python would. */
typedef struct pattern {
    const char *key;
    pcre2_code *re;
    json_t *value;
} pattern;

typedef struct patterns {
    pattern *p;
    size_t n;
} patterns;

static void patterns_free(patterns *ps)
{
    for (size_t i = 0; i < ps->n; i++)
        pcre2_code_free(ps->p[i].re);
    free(ps->p);
    ps->p = NULL;
    ps->n = 0;
}

/* Compiles config[cfg_key] (an object of pattern -> number, or null/absent). */
static int patterns_compile(const json_t *config, const char *cfg_key, const char *what,
                            patterns *out)
{
    int rc = ACTL_OK;
    char *src = NULL;
    json_t *obj = json_object_get(config, cfg_key);
    const char *k;
    json_t *v;
    if (!obj || json_is_null(obj))
        goto out;
    if (!json_is_object(obj)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': key '%s' must be an object", what, cfg_key);
        goto out;
    }
    if (json_object_size(obj) && !(out->p = calloc(json_object_size(obj), sizeof *out->p))) {
        rc = actl__oom();
        goto out;
    }
    json_object_foreach(obj, k, v) {
        if (!json_is_number(v)) {
            rc = actl__err(ACTL_EFORMAT, "'%s': key '%s': value of pattern '%s' is not a number",
                           what, cfg_key, k);
            goto out;
        }
        free(src);
        if (!(src = actl__strdup_printf("^(.*\\.)?(%s)$", k))) {
            rc = actl__oom();
            goto out;
        }
        int err;
        PCRE2_SIZE off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
        if (!re) {
            PCRE2_UCHAR words[256];
            pcre2_get_error_message(err, words, sizeof words);
            rc = actl__err(ACTL_EFORMAT, "'%s': key '%s': pattern '%s' is not a valid regex: %s",
                           what, cfg_key, k, (const char *)words);
            goto out;
        }
        out->p[out->n].key = k;
        out->p[out->n].re = re;
        out->p[out->n].value = v;
        out->n++;
    }
out:
    free(src);
    if (rc)
        patterns_free(out);
    return rc;
}

/* The first pattern matching module (*hit NULL when none). */
static int patterns_match(const patterns *ps, const char *module, const char *what,
                          const pattern **hit)
{
    int rc = ACTL_OK;
    pcre2_match_data *md = NULL;
    *hit = NULL;
    for (size_t i = 0; i < ps->n && !*hit; i++) {
        pcre2_match_data_free(md);
        if (!(md = pcre2_match_data_create_from_pattern(ps->p[i].re, NULL))) {
            rc = actl__oom();
            goto out;
        }
        int m = pcre2_match(ps->p[i].re, (PCRE2_SPTR)module, PCRE2_ZERO_TERMINATED, 0, 0, md,
                            NULL);
        if (m >= 0) {
            *hit = &ps->p[i];
        } else if (m != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR words[256];
            pcre2_get_error_message(m, words, sizeof words);
            rc = actl__err(ACTL_EFORMAT, "'%s': pattern '%s' on module '%s': %s", what,
                           ps->p[i].key, module, (const char *)words);
            goto out;
        }
    }
out:
    pcre2_match_data_free(md);
    return rc;
}

/* ---- config fields -------------------------------------------------------- */

/* Integer field; *out = def when absent or null. */
static int cfg_int(const json_t *cfg, const char *key, int def, int min, const char *what,
                   int *out)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ACTL_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > INT_MAX)
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be an integer from %d to %d", what,
                         key, min, INT_MAX);
    *out = (int)json_integer_value(v);
    return ACTL_OK;
}

static int cfg_number(const json_t *cfg, const char *key, double def, const char *what,
                      double *out)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ACTL_OK;
    }
    /* jansson holds no NaN or Inf today; the scale math must not meet one either way. */
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be a finite number", what, key);
    *out = json_number_value(v);
    return ACTL_OK;
}

static int cfg_bool(const json_t *cfg, const char *key, const char *what, bool *out)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = false;
        return ACTL_OK;
    }
    if (!json_is_boolean(v))
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be true or false", what, key);
    *out = json_is_true(v);
    return ACTL_OK;
}

/* String field; *out = def when absent or null. */
static int cfg_string(const json_t *cfg, const char *key, const char *def, const char *what,
                      const char **out)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ACTL_OK;
    }
    if (!json_is_string(v))
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be a string", what, key);
    *out = json_string_value(v);
    return ACTL_OK;
}

/* ---- building ------------------------------------------------------------ */

/* What the config says, parsed once. */
typedef struct build {
    actl_adapter *a;
    const char *cfg_what; /* names the config in messages */
    const char *st_what;  /* names the tensors in messages */
    json_t *save;         /* modules_to_save: an array of strings, or NULL */
    bool base_bias;       /* "bias" is not "none": trained base biases come along */
    /* LoRA, MoS */
    int r;
    double lora_alpha;
    bool rslora, fan_in_fan_out, dora, lora_bias;
    patterns rank_pat, alpha_pat;
    /* RoAd */
    int variant, group;
    /* bottleneck */
    int bsize;
    actl_activation act;
    bool parallel, learnable;
    double scaling;
    /* MoS */
    int shards;
} build;

static int parse_kind(build *b)
{
    const json_t *cfg = b->a->config;
    const char *w = b->cfg_what;
    actl_adapter_info *in = &b->a->info;
    int rc;
    const char *type = NULL;
    json_t *pt = json_object_get(cfg, "peft_type");
    if (!pt || json_is_null(pt))
        return actl__err(ACTL_EFORMAT, "'%s': key 'peft_type' is missing", w);
    if (!json_is_string(pt))
        return actl__err(ACTL_EFORMAT, "'%s': key 'peft_type' must be a string", w);
    type = json_string_value(pt);
    if (strcmp(type, "LORA") == 0)
        in->kind = ACTL_KIND_LORA;
    else if (strcmp(type, "ROAD") == 0)
        in->kind = ACTL_KIND_ROAD;
    else if (strcmp(type, "BOTTLENECK") == 0)
        in->kind = ACTL_KIND_BOTTLENECK;
    else if (strcmp(type, "MOS") == 0)
        in->kind = ACTL_KIND_MOS;
    else
        return actl__err(ACTL_EUNSUPPORTED,
                         "'%s': peft_type '%s' is not supported (LORA, ROAD, BOTTLENECK, MOS)",
                         w, type);

    if ((rc = cfg_string(cfg, "base_model_name_or_path", NULL, w, &in->base_model)))
        return rc;
    json_t *save = json_object_get(cfg, "modules_to_save");
    if (save && !json_is_null(save)) {
        size_t i;
        json_t *x;
        if (!json_is_array(save))
            return actl__err(ACTL_EFORMAT, "'%s': key 'modules_to_save' must be a list", w);
        json_array_foreach(save, i, x) if (!json_is_string(x)) return actl__err(
            ACTL_EFORMAT, "'%s': key 'modules_to_save' must hold strings", w);
        b->save = save;
    }
    /* PEFT's LoRA ("all", "lora_only") and LLM-Adapters' bottleneck ("adapter_only") save
     * the base biases they trained beside the adapter whenever "bias" is not "none". */
    const char *bias = "none";
    if ((rc = cfg_string(cfg, "bias", "none", w, &bias)))
        return rc;
    if (strcmp(bias, "all") == 0 || strcmp(bias, "lora_only") == 0 ||
        strcmp(bias, "adapter_only") == 0)
        b->base_bias = true;
    else if (strcmp(bias, "none") != 0)
        return actl__err(ACTL_EUNSUPPORTED,
                         "'%s': key 'bias': '%s' is not none, all, lora_only or adapter_only", w,
                         bias);

    switch (in->kind) {
    case ACTL_KIND_LORA:
        /* Defaults are PEFT's LoraConfig defaults. */
        if ((rc = cfg_int(cfg, "r", 8, 1, w, &b->r)) ||
            (rc = cfg_number(cfg, "lora_alpha", 8, w, &b->lora_alpha)) ||
            (rc = cfg_bool(cfg, "use_rslora", w, &b->rslora)) ||
            (rc = cfg_bool(cfg, "fan_in_fan_out", w, &b->fan_in_fan_out)) ||
            (rc = cfg_bool(cfg, "use_dora", w, &b->dora)) ||
            (rc = cfg_bool(cfg, "lora_bias", w, &b->lora_bias)) ||
            (rc = patterns_compile(cfg, "rank_pattern", w, &b->rank_pat)) ||
            (rc = patterns_compile(cfg, "alpha_pattern", w, &b->alpha_pat)))
            return rc;
        /* The same range as "r": a rank is an int, and a huge one would be cut when the
         * module's rank is stored. */
        for (size_t i = 0; i < b->rank_pat.n; i++) {
            json_t *v = b->rank_pat.p[i].value;
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                json_integer_value(v) > INT_MAX)
                return actl__err(ACTL_EFORMAT,
                                 "'%s': key 'rank_pattern': value of '%s' must be an integer "
                                 "from 1 to %d", w, b->rank_pat.p[i].key, INT_MAX);
        }
        for (size_t i = 0; i < b->alpha_pat.n; i++)
            if (!isfinite(json_number_value(b->alpha_pat.p[i].value)))
                return actl__err(ACTL_EFORMAT,
                                 "'%s': key 'alpha_pattern': value of '%s' must be a finite "
                                 "number", w, b->alpha_pat.p[i].key);
        in->rank = b->r;
        in->alpha = b->lora_alpha;
        in->use_rslora = b->rslora;
        in->fan_in_fan_out = b->fan_in_fan_out;
        in->use_dora = b->dora;
        return ACTL_OK;
    case ACTL_KIND_ROAD: {
        const char *variant = "road_1";
        if ((rc = cfg_string(cfg, "variant", "road_1", w, &variant)) ||
            (rc = cfg_int(cfg, "group_size", 64, 1, w, &b->group)))
            return rc;
        if (strcmp(variant, "road_1") == 0)
            b->variant = ACTL_ROAD_1;
        else if (strcmp(variant, "road_2") == 0)
            b->variant = ACTL_ROAD_2;
        else if (strcmp(variant, "road_4") == 0)
            b->variant = ACTL_ROAD_4;
        else
            return actl__err(ACTL_EUNSUPPORTED,
                             "'%s': key 'variant': '%s' is not road_1, road_2 or road_4", w,
                             variant);
        /* Pairs are (p, p + g/2) inside a group (DESIGN.md 3.2): g must be even. */
        if (b->group % 2)
            return actl__err(ACTL_EFORMAT, "'%s': key 'group_size': %d is odd", w, b->group);
        in->variant = (actl_road_variant)b->variant;
        in->group_size = b->group;
        return ACTL_OK;
    }
    case ACTL_KIND_BOTTLENECK: {
        const char *act = "tanh";
        json_t *sc = json_object_get(cfg, "scaling");
        if ((rc = cfg_int(cfg, "bottleneck_size", 256, 1, w, &b->bsize)) ||
            (rc = cfg_string(cfg, "non_linearity", "tanh", w, &act)) ||
            (rc = cfg_bool(cfg, "use_parallel_adapter", w, &b->parallel)))
            return rc;
        if (strcasecmp(act, "tanh") == 0)
            b->act = ACTL_ACT_TANH;
        else if (strcasecmp(act, "relu") == 0)
            b->act = ACTL_ACT_RELU;
        else if (strcasecmp(act, "gelu") == 0)
            b->act = ACTL_ACT_GELU;
        else if (strcasecmp(act, "silu") == 0 || strcasecmp(act, "swish") == 0)
            b->act = ACTL_ACT_SILU;
        else if (strcasecmp(act, "identity") == 0 || strcasecmp(act, "linear") == 0)
            b->act = ACTL_ACT_IDENTITY;
        else
            return actl__err(ACTL_EUNSUPPORTED,
                             "'%s': key 'non_linearity': '%s' is not tanh, relu, gelu, silu or "
                             "identity", w, act);
        if (json_is_string(sc)) {
            if (strcmp(json_string_value(sc), "learnable_scalar") != 0)
                return actl__err(ACTL_EFORMAT,
                                 "'%s': key 'scaling': '%s' is neither a number nor "
                                 "\"learnable_scalar\"", w, json_string_value(sc));
            b->learnable = true;
            b->scaling = 1;
        } else if ((rc = cfg_number(cfg, "scaling", 1.0, w, &b->scaling))) {
            return rc;
        }
        in->rank = b->bsize;
        in->activation = b->act;
        in->use_parallel_adapter = b->parallel;
        return ACTL_OK;
    }
    case ACTL_KIND_MOS:
        if ((rc = cfg_int(cfg, "r", 8, 1, w, &b->r)) ||
            (rc = cfg_number(cfg, "lora_alpha", 8, w, &b->lora_alpha)) ||
            (rc = cfg_int(cfg, "mos_shards", 0, 1, w, &b->shards)))
            return rc;
        if (!b->shards)
            return actl__err(ACTL_EFORMAT, "'%s': key 'mos_shards' is missing", w);
        in->rank = b->r;
        in->alpha = b->lora_alpha;
        in->shards = b->shards;
        return ACTL_OK;
    case ACTL_KIND_STACK: /* the detection above never yields it */
        break;
    }
    return ACTL_OK;
}

/* True when the key's module path (rest, without the PEFT prefix) lies inside a
 * modules_to_save entry E: some prefix of rest ending at a '.' boundary is E or ends in
 * ".E" (PEFT matches module names by suffix). */
static bool is_saved(const json_t *save, const char *rest)
{
    size_t i;
    json_t *x;
    if (!save)
        return false;
    json_array_foreach(save, i, x) {
        const char *e = json_string_value(x);
        size_t el = strlen(e);
        for (size_t p = 0;; p++) {
            if ((rest[p] == '.' || rest[p] == '\0') && p >= el &&
                memcmp(rest + p - el, e, el) == 0 && (p == el || rest[p - el - 1] == '.'))
                return true;
            if (!rest[p])
                break;
        }
    }
    return false;
}

/* s ends with suffix and has something before it (a module name). */
static bool has_suffix(const char *s, const char *suffix)
{
    return strlen(s) > strlen(suffix) && actl__ends_with(s, suffix);
}

/* Classifies one key into e (module name malloc'd). */
static int classify(const build *b, const actl_tensor *t, entry *e)
{
    const char *key = t->name;
    size_t pl = strlen(ACTL_PEFT_PREFIX);
    actl_kind kind = b->a->info.kind;
    e->t = t;
    e->module = NULL;
    if (strncmp(key, ACTL_PEFT_PREFIX, pl) != 0)
        goto unknown;
    const char *rest = key + pl;
    size_t rl = strlen(rest);
    /* "mos.<type>.pool_A|B" with a type free of dots */
    if (kind == ACTL_KIND_MOS && strncmp(rest, MOS_POOL_PREFIX, strlen(MOS_POOL_PREFIX)) == 0 &&
        rl > strlen(MOS_POOL_PREFIX) + strlen(".pool_A")) {
        bool pa = actl__ends_with(rest, ".pool_A"), pb = actl__ends_with(rest, ".pool_B");
        size_t tl = rl - strlen(MOS_POOL_PREFIX) - strlen(".pool_A");
        if ((pa || pb) && !memchr(rest + strlen(MOS_POOL_PREFIX), '.', tl)) {
            e->role = pa ? R_POOL_A : R_POOL_B;
            e->module = strndup(rest + strlen(MOS_POOL_PREFIX), tl);
            return e->module ? ACTL_OK : actl__oom();
        }
    }
    for (size_t i = 0; i < N_SUFFIXES; i++) {
        if (suffixes[i].kind != kind || !has_suffix(rest, suffixes[i].suffix))
            continue;
        e->role = suffixes[i].role;
        e->module = strndup(rest, rl - strlen(suffixes[i].suffix));
        return e->module ? ACTL_OK : actl__oom();
    }
    if (is_saved(b->save, rest)) {
        e->role = R_SAVE;
        return ACTL_OK;
    }
    /* "<module>.bias", or "<module>.base_layer.bias" as newer PEFT names the wrapped layer */
    if (has_suffix(rest, ".bias")) {
        if (!b->base_bias)
            return actl__err(ACTL_EFORMAT,
                             "'%s': tensor '%s' looks like a trained base bias, but the "
                             "config's bias is \"none\"", b->st_what, key);
        e->role = R_BASE_BIAS;
        return ACTL_OK;
    }
unknown:
    return actl__err(ACTL_EFORMAT,
                     "'%s': tensor '%s' is not a known %s adapter key and not in modules_to_save",
                     b->st_what, key, actl_kind_name(kind));
}

static int cmp_entry(const void *x, const void *y)
{
    const entry *a = x, *b = y;
    int c = strcmp(a->module, b->module);
    return c ? c : (int)a->role - (int)b->role;
}

static int cmp_tensor_name(const void *x, const void *y)
{
    const actl_tensor *a = *(const actl_tensor *const *)x, *b = *(const actl_tensor *const *)y;
    return strcmp(a->name, b->name);
}

/* F32, F16 or BF16: what the math accepts for adapter weights. */
static int need_float(const build *b, const actl_tensor *t)
{
    if (t->dtype == ACTL_F32 || t->dtype == ACTL_F16 || t->dtype == ACTL_BF16)
        return ACTL_OK;
    return actl__err(actl__is_float(t->dtype) ? ACTL_EUNSUPPORTED : ACTL_EFORMAT,
                     "'%s': tensor '%s': dtype %s, expected F32, F16 or BF16", b->st_what,
                     t->name, actl_dtype_name(t->dtype));
}

static int need_ndim(const build *b, const actl_tensor *t, int ndim)
{
    char s[96];
    if (t->ndim == ndim)
        return ACTL_OK;
    return actl__err(ACTL_ESHAPE, "'%s': tensor '%s': shape %s, expected %d dimensions",
                     b->st_what, t->name, actl__shape_str(t, s, sizeof s), ndim);
}

/* Every dimension of an adapter tensor is a width or a rank: a 0 would let a module skip
 * the base's shape checks with no bytes behind it. */
static int need_nonzero(const build *b, const actl_tensor *t)
{
    char s[96];
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 1)
            return actl__err(ACTL_ESHAPE, "'%s': tensor '%s': shape %s has a zero dimension",
                             b->st_what, t->name, actl__shape_str(t, s, sizeof s));
    return ACTL_OK;
}

/* The missing tensor's key in a message. */
static int missing(const build *b, const actl__module *m, const char *suffix)
{
    return actl__err(ACTL_EFORMAT, "'%s': module '%s': tensor '%s%s%s' is missing", b->st_what,
                     m->info.name, ACTL_PEFT_PREFIX, m->info.name, suffix);
}

static int unexpected(const build *b, const actl_tensor *t, const char *why)
{
    return actl__err(ACTL_EFORMAT, "'%s': tensor '%s' is unexpected: %s", b->st_what, t->name,
                     why);
}

/* LoRA / DoRA / embedding LoRA (DESIGN.md 3.1). */
static int check_lora(build *b, actl__module *m)
{
    int rc;
    char s1[96], s2[96];
    const pattern *hit;
    actl_module_info *mi = &m->info;
    bool emb = mi->flags & ACTL_MOD_EMBEDDING;
    if (emb && (mi->flags & MOD_LINEAR_SEEN))
        return actl__err(ACTL_EFORMAT,
                         "'%s': module '%s' has both lora_A/lora_B and lora_embedding_A/B",
                         b->st_what, mi->name);
    mi->flags &= ~MOD_LINEAR_SEEN;
    if (!m->lora_a)
        return missing(b, m, emb ? ".lora_embedding_A" : ".lora_A.weight");
    if (!m->lora_b)
        return missing(b, m, emb ? ".lora_embedding_B" : ".lora_B.weight");
    if ((rc = need_float(b, m->lora_a)) || (rc = need_float(b, m->lora_b)) ||
        (rc = need_ndim(b, m->lora_a, 2)) || (rc = need_ndim(b, m->lora_b, 2)) ||
        (rc = need_nonzero(b, m->lora_a)) || (rc = need_nonzero(b, m->lora_b)))
        return rc;
    if (m->lora_a->dtype != m->lora_b->dtype)
        return actl__err(ACTL_EFORMAT, "'%s': module '%s': A is %s but B is %s", b->st_what,
                         mi->name, actl_dtype_name(m->lora_a->dtype),
                         actl_dtype_name(m->lora_b->dtype));
    /* A [r, in], B [out, r] (embedding: A [r, vocab], B [dim, r]) */
    int64_t r = m->lora_a->shape[0];
    if (m->lora_b->shape[1] != r)
        return actl__err(ACTL_ESHAPE,
                         "'%s': module '%s': rank mismatch: A %s has rank %lld, B %s has %lld",
                         b->st_what, mi->name, actl__shape_str(m->lora_a, s1, sizeof s1),
                         (long long)r, actl__shape_str(m->lora_b, s2, sizeof s2),
                         (long long)m->lora_b->shape[1]);
    if ((rc = patterns_match(&b->rank_pat, mi->name, b->cfg_what, &hit)))
        return rc;
    /* want is an int (parse_kind bounds r and rank_pattern), so r == want fits the cast
     * to mi->rank below. */
    int64_t want = hit ? json_integer_value(hit->value) : b->r;
    if (r != want) {
        if (hit)
            return actl__err(ACTL_ESHAPE,
                             "'%s': module '%s': A %s has rank %lld, but rank_pattern key '%s' "
                             "gives %lld", b->st_what, mi->name,
                             actl__shape_str(m->lora_a, s1, sizeof s1), (long long)r, hit->key,
                             (long long)want);
        return actl__err(ACTL_ESHAPE,
                         "'%s': module '%s': A %s has rank %lld, but the config's r is %lld",
                         b->st_what, mi->name, actl__shape_str(m->lora_a, s1, sizeof s1),
                         (long long)r, (long long)want);
    }
    if ((rc = patterns_match(&b->alpha_pat, mi->name, b->cfg_what, &hit)))
        return rc;
    mi->rank = (int)r;
    mi->alpha = hit ? json_number_value(hit->value) : b->lora_alpha;
    /* s = alpha_m / r_m, or alpha_m / sqrt(r_m) with rsLoRA (DESIGN.md 3.1) */
    mi->scale = b->rslora ? mi->alpha / sqrt((double)r) : mi->alpha / (double)r;
    mi->in_features = m->lora_a->shape[1];
    mi->out_features = m->lora_b->shape[0];
    mi->dtype = m->lora_a->dtype;

    if (m->lora_bias) {
        if (emb)
            return unexpected(b, m->lora_bias, "embedding LoRA has no lora_B.bias");
        if (!b->lora_bias)
            return unexpected(b, m->lora_bias, "lora_bias is false in the config");
        /* bias [out] */
        if ((rc = need_float(b, m->lora_bias)) || (rc = need_ndim(b, m->lora_bias, 1)))
            return rc;
        if (m->lora_bias->shape[0] != mi->out_features)
            return actl__err(ACTL_ESHAPE, "'%s': tensor '%s': shape %s, expected [%lld]",
                             b->st_what, m->lora_bias->name,
                             actl__shape_str(m->lora_bias, s1, sizeof s1),
                             (long long)mi->out_features);
        mi->flags |= ACTL_MOD_BIAS;
    } else if (b->lora_bias && !emb) {
        return missing(b, m, ".lora_B.bias");
    }
    if (m->magnitude) {
        if (!b->dora)
            return unexpected(b, m->magnitude, "use_dora is false in the config");
        if (emb)
            return actl__err(ACTL_EUNSUPPORTED,
                             "'%s': module '%s': DoRA on an embedding is not supported",
                             b->st_what, mi->name);
        /* m [out] */
        if ((rc = need_float(b, m->magnitude)) || (rc = need_ndim(b, m->magnitude, 1)))
            return rc;
        if (m->magnitude->shape[0] != mi->out_features)
            return actl__err(ACTL_ESHAPE, "'%s': tensor '%s': shape %s, expected [%lld]",
                             b->st_what, m->magnitude->name,
                             actl__shape_str(m->magnitude, s1, sizeof s1),
                             (long long)mi->out_features);
        mi->flags |= ACTL_MOD_DORA;
    } else if (b->dora && !emb) {
        return missing(b, m, ".lora_magnitude_vector");
    }
    return ACTL_OK;
}

/* RoAd (DESIGN.md 3.2): theta and alpha 1-D of length out/2, out or 2*out. */
static int check_road(build *b, actl__module *m)
{
    int rc;
    char s1[96], s2[96];
    actl_module_info *mi = &m->info;
    if (!m->road_theta)
        return missing(b, m, ".road_theta");
    if (!m->road_alpha)
        return missing(b, m, ".road_alpha");
    if ((rc = need_float(b, m->road_theta)) || (rc = need_float(b, m->road_alpha)) ||
        (rc = need_ndim(b, m->road_theta, 1)) || (rc = need_ndim(b, m->road_alpha, 1)) ||
        (rc = need_nonzero(b, m->road_theta)) || (rc = need_nonzero(b, m->road_alpha)))
        return rc;
    int64_t len = m->road_theta->shape[0];
    if (m->road_alpha->shape[0] != len)
        return actl__err(ACTL_ESHAPE, "'%s': module '%s': road_theta %s and road_alpha %s differ",
                         b->st_what, mi->name, actl__shape_str(m->road_theta, s1, sizeof s1),
                         actl__shape_str(m->road_alpha, s2, sizeof s2));
    int64_t out = b->variant == ACTL_ROAD_1 ? 2 * len
                : b->variant == ACTL_ROAD_2 ? len : len / 2;
    if ((b->variant == ACTL_ROAD_4 && len % 2) || out % b->group)
        return actl__err(ACTL_ESHAPE,
                         "'%s': module '%s': road_theta length %lld (road_%d) does not give an "
                         "output width that is a multiple of group_size %d",
                         b->st_what, mi->name, (long long)len, b->variant, b->group);
    mi->out_features = out;
    mi->scale = 1;
    mi->dtype = m->road_theta->dtype;
    return ACTL_OK;
}

/* The default LLaMA placement of LLM-Adapters (DESIGN.md 3.3): gate_proj and up_proj take
 * the adapter on their input (mh_adapter), down_proj on its output (output_adapter). Any
 * other module gets the input placement, the series adapter's usual default. */
static actl_placement placement_of(const build *b, const char *module)
{
    if (b->parallel)
        return ACTL_PLACE_PARALLEL;
    /* a whole name component: "mlp.down_proj", not "mlp.xdown_proj" */
    if (strcmp(module, "down_proj") == 0 || actl__ends_with(module, ".down_proj"))
        return ACTL_PLACE_OUTPUT;
    return ACTL_PLACE_INPUT;
}

static int check_bottleneck(build *b, actl__module *m)
{
    int rc;
    char s1[96], s2[96];
    actl_module_info *mi = &m->info;
    if (!m->down)
        return missing(b, m, ".adapter_down.weight");
    if (!m->up)
        return missing(b, m, ".adapter_up.weight");
    if ((rc = need_float(b, m->down)) || (rc = need_float(b, m->up)) ||
        (rc = need_ndim(b, m->down, 2)) || (rc = need_ndim(b, m->up, 2)) ||
        (rc = need_nonzero(b, m->down)) || (rc = need_nonzero(b, m->up)))
        return rc;
    /* D [b, n], U [m, b] */
    int64_t bs = m->down->shape[0], n = m->down->shape[1], mm = m->up->shape[0];
    mi->placement = placement_of(b, mi->name);
    if (m->up->shape[1] != bs || bs != b->bsize ||
        (mi->placement != ACTL_PLACE_PARALLEL && n != mm))
        return actl__err(ACTL_ESHAPE,
                         "'%s': module '%s': adapter_down %s and adapter_up %s do not fit "
                         "bottleneck_size %d in %s placement",
                         b->st_what, mi->name, actl__shape_str(m->down, s1, sizeof s1),
                         actl__shape_str(m->up, s2, sizeof s2), b->bsize,
                         actl_placement_name(mi->placement));
    mi->rank = b->bsize; /* == bs */
    /* INPUT: n = m = in; OUTPUT: n = m = out; PARALLEL: n = in, m = out. The other width is
     * the base's business and stays 0. */
    if (mi->placement == ACTL_PLACE_INPUT)
        mi->in_features = n;
    else if (mi->placement == ACTL_PLACE_OUTPUT)
        mi->out_features = mm;
    else {
        mi->in_features = n;
        mi->out_features = mm;
    }
    mi->dtype = m->down->dtype;
    mi->scale = b->scaling;
    if (b->learnable) {
        if (!m->scaling)
            return missing(b, m, ".adapter_scaling");
        if ((rc = need_float(b, m->scaling)))
            return rc;
        if (m->scaling->numel != 1 || m->scaling->ndim > 1)
            return actl__err(ACTL_ESHAPE, "'%s': tensor '%s': shape %s, expected [1]",
                             b->st_what, m->scaling->name,
                             actl__shape_str(m->scaling, s1, sizeof s1));
        mi->scale = actl__tensor_get_f64(m->scaling, 0);
        if (!isfinite(mi->scale))
            return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': the learned scale is %s",
                             b->st_what, m->scaling->name, isnan(mi->scale) ? "NaN" : "infinite");
        mi->flags |= ACTL_MOD_LEARNED_SCALE;
    } else if (m->scaling) {
        return unexpected(b, m->scaling, "the config's scaling is not \"learnable_scalar\"");
    }
    return ACTL_OK;
}

/* The pool tensor of a module type, or NULL. */
static const actl_tensor *find_pool(const entry *pools, size_t n, const char *type,
                                    enum role role)
{
    for (size_t i = 0; i < n; i++)
        if (pools[i].role == role && strcmp(pools[i].module, type) == 0)
            return pools[i].t;
    return NULL;
}

/* MoS compact form (DESIGN.md 3.4). */
static int check_mos(build *b, actl__module *m, const entry *pools, size_t npools)
{
    int rc;
    char s1[96];
    actl_module_info *mi = &m->info;
    const char *dot = strrchr(mi->name, '.');
    const char *type = dot ? dot + 1 : mi->name;
    int64_t l = b->shards, want = (int64_t)b->r * l;
    if (!m->index_a)
        return missing(b, m, ".mos_index_A");
    if (!m->index_b)
        return missing(b, m, ".mos_index_B");
    m->pool_a = find_pool(pools, npools, type, R_POOL_A);
    m->pool_b = find_pool(pools, npools, type, R_POOL_B);
    if (!m->pool_a || !m->pool_b)
        return actl__err(ACTL_EFORMAT, "'%s': module '%s': pool tensor '%s%s%s.%s' is missing",
                         b->st_what, mi->name, ACTL_PEFT_PREFIX, MOS_POOL_PREFIX, type,
                         m->pool_a ? "pool_B" : "pool_A");
    if ((rc = need_float(b, m->pool_a)) || (rc = need_float(b, m->pool_b)) ||
        (rc = need_ndim(b, m->pool_a, 2)) || (rc = need_ndim(b, m->pool_b, 2)))
        return rc;
    if (m->pool_a->dtype != m->pool_b->dtype)
        return actl__err(ACTL_EFORMAT, "'%s': module type '%s': pool_A is %s but pool_B is %s",
                         b->st_what, type, actl_dtype_name(m->pool_a->dtype),
                         actl_dtype_name(m->pool_b->dtype));
    const actl_tensor *idx[2] = {m->index_a, m->index_b};
    const actl_tensor *pool[2] = {m->pool_a, m->pool_b};
    /* The pools first: their widths times l are the module's in and out, and a pool with
     * 0 rows holds no bytes whatever its width, so the product is checked before anything
     * is read or sized from it. */
    for (int k = 0; k < 2; k++)
        if (pool[k]->shape[1] > INT64_MAX / l)
            return actl__err(ACTL_ELIMIT,
                             "'%s': tensor '%s': width %lld x mos_shards %lld does not fit in "
                             "64 bits", b->st_what, pool[k]->name,
                             (long long)pool[k]->shape[1], (long long)l);
    if ((rc = need_nonzero(b, m->pool_a)) || (rc = need_nonzero(b, m->pool_b)))
        return rc;
    for (int k = 0; k < 2; k++) {
        const actl_tensor *t = idx[k];
        if (t->dtype != ACTL_I32)
            return actl__err(ACTL_EFORMAT, "'%s': tensor '%s': dtype %s, expected I32",
                             b->st_what, t->name, actl_dtype_name(t->dtype));
        if (t->ndim != 1 || t->shape[0] != want)
            return actl__err(ACTL_ESHAPE,
                             "'%s': tensor '%s': shape %s, expected [%lld] (r %d x mos_shards %d)",
                             b->st_what, t->name, actl__shape_str(t, s1, sizeof s1),
                             (long long)want, b->r, b->shards);
        /* P [N, width]: every index must name a row. */
        int64_t rows = pool[k]->shape[0];
        for (int64_t i = 0; i < want; i++) {
            int32_t v;
            memcpy(&v, (const char *)t->data + 4 * i, 4);
            if (v < 0 || v >= rows)
                return actl__err(ACTL_EFORMAT,
                                 "'%s': module '%s': %s[%lld] = %d is out of range for pool %s "
                                 "with %lld rows", b->st_what, mi->name,
                                 k ? "mos_index_B" : "mos_index_A", (long long)i, (int)v,
                                 pool[k]->name, (long long)rows);
        }
    }
    mi->rank = b->r;
    mi->alpha = b->lora_alpha;
    mi->scale = b->lora_alpha / b->r; /* then a LoRA with scale alpha/r (DESIGN.md 3.4) */
    /* P_A [N_A, in/l], P_B [N_B, out/l] */
    mi->in_features = m->pool_a->shape[1] * l;
    mi->out_features = m->pool_b->shape[1] * l;
    mi->dtype = m->pool_a->dtype;
    return ACTL_OK;
}

/* Points the module's slot for e's role at e's tensor. Embedding LoRA uses the lora_a and
 * lora_b slots too; the flags remember which kind of key filled them so that check_lora can
 * refuse a module mixing both. */
static void assign(actl__module *m, const entry *e)
{
    switch (e->role) {
    case R_LORA_A: m->lora_a = e->t; m->info.flags |= MOD_LINEAR_SEEN; break;
    case R_LORA_B: m->lora_b = e->t; m->info.flags |= MOD_LINEAR_SEEN; break;
    case R_LORA_BIAS: m->lora_bias = e->t; break;
    case R_MAGNITUDE: m->magnitude = e->t; break;
    case R_EMB_A: m->lora_a = e->t; m->info.flags |= ACTL_MOD_EMBEDDING; break;
    case R_EMB_B: m->lora_b = e->t; m->info.flags |= ACTL_MOD_EMBEDDING; break;
    case R_THETA: m->road_theta = e->t; break;
    case R_ALPHA: m->road_alpha = e->t; break;
    case R_DOWN: m->down = e->t; break;
    case R_UP: m->up = e->t; break;
    case R_SCALING: m->scaling = e->t; break;
    case R_INDEX_A: m->index_a = e->t; break;
    case R_INDEX_B: m->index_b = e->t; break;
    default: break;
    }
}

int actl__adapter_build(json_t *config, const actl_tensor **tensors, size_t n,
                        bool owns_tensors, actl_st *st, const char *origin,
                        const char *cfg_what, const char *st_what, actl_adapter **out)
{
    int rc = ACTL_OK;
    entry *ents = NULL, *pools = NULL;
    size_t nents = 0, npools = 0;
    build b = {0};
    actl_adapter *a = calloc(1, sizeof *a);
    if (!a) {
        /* Still honour the ownership transfer. */
        if (owns_tensors)
            for (size_t i = 0; i < n; i++)
                actl_tensor_free((actl_tensor *)tensors[i]);
        free(tensors);
        json_decref(config);
        actl_st_close(st);
        return actl__oom();
    }
    a->config = config;
    a->tensors = tensors;
    a->n_tensors = n;
    a->owns_tensors = owns_tensors;
    a->st = st;
    b.a = a;
    b.cfg_what = cfg_what;
    b.st_what = st_what;
    if (!(a->origin = strdup(origin))) {
        rc = actl__oom();
        goto out;
    }
    if (!json_is_object(config)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': the config is not a JSON object", cfg_what);
        goto out;
    }
    if ((rc = parse_kind(&b)))
        goto out;

    if (n)
        qsort(tensors, n, sizeof *tensors, cmp_tensor_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(tensors[i - 1]->name, tensors[i]->name) == 0) {
            rc = actl__err(ACTL_EFORMAT, "'%s': tensor '%s' appears twice", st_what,
                           tensors[i]->name);
            goto out;
        }

    /* Classify every key; sort by (module, role) so a module's tensors sit together. */
    if (n && (!(ents = calloc(n, sizeof *ents)) || !(pools = calloc(n, sizeof *pools)))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = tensors[i];
        a->info.params += t->numel;
        a->info.bytes += t->nbytes;
        entry e;
        if ((rc = classify(&b, t, &e)))
            goto out;
        if (e.role == R_BASE_BIAS &&
            ((rc = need_float(&b, t)) || (rc = need_ndim(&b, t, 1)) ||
             (rc = need_nonzero(&b, t))))
            goto out;
        if (e.role == R_SAVE || e.role == R_BASE_BIAS)
            continue;
        if (e.role == R_POOL_A || e.role == R_POOL_B)
            pools[npools++] = e;
        else
            ents[nents++] = e;
    }
    if (nents)
        qsort(ents, nents, sizeof *ents, cmp_entry);
    size_t nmod = 0;
    for (size_t i = 0; i < nents; i++)
        nmod += i == 0 || strcmp(ents[i - 1].module, ents[i].module) != 0;
    if (nmod == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': no %s adapter tensors", st_what,
                       actl_kind_name(a->info.kind));
        goto out;
    }
    if (!(a->modules = calloc(nmod, sizeof *a->modules))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < nents; i++) {
        /* Entries are sorted: a new name starts a new module. */
        if (a->n_modules == 0 || strcmp(a->modules[a->n_modules - 1].info.name, ents[i].module)) {
            actl__module *m = &a->modules[a->n_modules++];
            m->info.name = ents[i].module; /* moves into the module */
            m->info.placement = ACTL_PLACE_NONE;
        } else {
            free(ents[i].module);
        }
        ents[i].module = NULL;
        actl__module *m = &a->modules[a->n_modules - 1];
        assign(m, &ents[i]);
        m->info.params += ents[i].t->numel;
        m->info.bytes += ents[i].t->nbytes;
    }
    for (size_t i = 0; i < a->n_modules && !rc; i++) {
        actl__module *m = &a->modules[i];
        switch (a->info.kind) {
        case ACTL_KIND_LORA: rc = check_lora(&b, m); break;
        case ACTL_KIND_ROAD: rc = check_road(&b, m); break;
        case ACTL_KIND_BOTTLENECK: rc = check_bottleneck(&b, m); break;
        case ACTL_KIND_MOS: rc = check_mos(&b, m, pools, npools); break;
        case ACTL_KIND_STACK: break;
        }
    }
    if (rc)
        goto out;
    /* Every tensor is a module's or passes through (R_SAVE, R_BASE_BIAS); materialize relies
     * on it to tell them apart. A pool no module uses would be neither. */
    for (size_t i = 0; i < npools; i++) {
        bool used = false;
        for (size_t k = 0; k < a->n_modules && !used; k++)
            used = a->modules[k].pool_a == pools[i].t || a->modules[k].pool_b == pools[i].t;
        if (!used) {
            rc = actl__err(ACTL_EFORMAT, "'%s': pool tensor '%s' is used by no module",
                           st_what, pools[i].t->name);
            goto out;
        }
    }
    a->info.module_count = a->n_modules;
    a->info.tensor_count = n;
    if (!(a->config_compact = actl__json_dump_keep(config, -1, actl__peft_keep_order))) {
        rc = actl__oom();
        goto out;
    }
    *out = a;
    a = NULL;
out:
    for (size_t i = 0; i < nents; i++)
        free(ents[i].module);
    for (size_t i = 0; i < npools; i++)
        free(pools[i].module);
    free(ents);
    free(pools);
    patterns_free(&b.rank_pat);
    patterns_free(&b.alpha_pat);
    actl_adapter_free(a);
    return rc;
}

/* ---- import ---------------------------------------------------------------- */

int actl__adapter_from_st(json_t *config, actl_st *st, const char *origin,
                          const char *cfg_what, const char *st_what, actl_adapter **out)
{
    size_t n = actl_st_count(st);
    const actl_tensor **tensors = n ? malloc(n * sizeof *tensors) : NULL;
    if (n && !tensors) {
        json_decref(config);
        actl_st_close(st);
        return actl__oom();
    }
    for (size_t i = 0; i < n; i++)
        tensors[i] = actl_st_tensor(st, i);
    /* The adapter takes config, tensors and st whatever happens: tensors stay views
     * into the mapping (zero copy). */
    return actl__adapter_build(config, tensors, n, false, st, origin, cfg_what, st_what, out);
}

int actl_adapter_load(const char *dir, actl_adapter **out)
{
    int rc = ACTL_OK;
    char *cfg_path = NULL, *st_path = NULL, *bin_path = NULL, *text = NULL;
    size_t len;
    json_t *config = NULL;
    actl_st *st = NULL;
    if (!dir || !out)
        return actl__err(ACTL_EINVAL, "adapter load: NULL argument");
    *out = NULL;
    if (!(cfg_path = actl__path_join(dir, CONFIG_NAME)) ||
        !(st_path = actl__path_join(dir, WEIGHTS_NAME)) ||
        !(bin_path = actl__path_join(dir, PICKLE_NAME))) {
        rc = actl__oom();
        goto out;
    }
    if (!actl__is_dir(dir)) {
        rc = actl__err(actl__exists(dir) ? ACTL_EFORMAT : ACTL_ENOTFOUND,
                       "'%s': %s", dir, actl__exists(dir) ? "not a directory" : "no such directory");
        goto out;
    }
    if (!actl__exists(st_path) && actl__exists(bin_path)) {
        rc = actl__err(ACTL_EUNSUPPORTED,
                       "'%s' is a pickle file, and pickle files can run arbitrary code when "
                       "loaded, so adapterctl refuses them; convert it to safetensors in a "
                       "trusted environment with Python: from safetensors.torch import "
                       "save_file; import torch; save_file(torch.load(\"adapter_model.bin\", "
                       "weights_only=True), \"adapter_model.safetensors\", "
                       "metadata={\"format\": \"pt\"})", bin_path);
        goto out;
    }
    if ((rc = actl__read_file(cfg_path, ACTL_CONFIG_LIMIT, &text, &len)) ||
        (rc = actl__json_parse(text, len, cfg_path, &config)))
        goto out;
    if (!actl__exists(st_path)) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s': no such file", st_path);
        goto out;
    }
    if ((rc = actl_st_open(st_path, &st)))
        goto out;
    rc = actl__adapter_from_st(config, st, dir, cfg_path, st_path, out);
    config = NULL;
    st = NULL;
out:
    json_decref(config);
    actl_st_close(st);
    free(text);
    free(cfg_path);
    free(st_path);
    free(bin_path);
    return rc;
}

int actl_adapter_new(const char *config_json, const actl_tensor *const *tensors, size_t n,
                     const char *origin, actl_adapter **out)
{
    int rc = ACTL_OK;
    json_t *config = NULL;
    const actl_tensor **copies = NULL;
    size_t made = 0;
    const char *what = origin ? origin : "adapter";
    if (!config_json || !out || (n && !tensors))
        return actl__err(ACTL_EINVAL, "adapter new: NULL argument");
    *out = NULL;
    if ((rc = actl__json_parse(config_json, strlen(config_json), what, &config)))
        goto out;
    if (n && !(copies = calloc(n, sizeof *copies))) {
        rc = actl__oom();
        goto out;
    }
    for (made = 0; made < n; made++) {
        actl_tensor *c;
        if (!tensors[made]) {
            rc = actl__err(ACTL_EINVAL, "'%s': tensor %zu is NULL", what, made);
            goto out;
        }
        if ((rc = actl_tensor_copy(tensors[made], NULL, &c)))
            goto out;
        copies[made] = c;
    }
    rc = actl__adapter_build(config, copies, n, true, NULL, what, what, what, out);
    config = NULL;
    copies = NULL;
out:
    if (copies)
        for (size_t i = 0; i < made; i++)
            actl_tensor_free((actl_tensor *)copies[i]);
    free(copies);
    json_decref(config);
    return rc;
}

/* ---- export ------------------------------------------------------------------- */

static int write_text(FILE *f, const char *tmp_path, void *ctx)
{
    const char *text = ctx;
    return actl__fwrite_all(f, text, strlen(text), tmp_path);
}

int actl_adapter_save(const actl_adapter *a, const char *dir)
{
    int rc = ACTL_OK;
    actl__staged_dir d = {0};
    char *cfg_path = NULL, *st_path = NULL, *text = NULL;
    static const char *const meta[] = {"format", "pt", NULL};
    if (!a || !dir || !*dir)
        return actl__err(ACTL_EINVAL, "adapter save: NULL argument");
    if ((rc = actl__dir_stage(dir, &d)))
        goto out;
    if (!(cfg_path = actl__path_join(d.tmp, CONFIG_NAME)) ||
        !(st_path = actl__path_join(d.tmp, WEIGHTS_NAME)) ||
        !(text = actl__json_dump_keep(a->config, 2, actl__peft_keep_order))) {
        rc = actl__oom();
        goto out;
    }
    /* PEFT writes json.dumps(indent=2, sort_keys=True) with no trailing newline; the pattern
     * objects keep their order (actl__peft_keep_order). Both writers fsync their file and the
     * temporary directory. */
    if ((rc = actl__write_atomic(cfg_path, write_text, text)) ||
        (rc = actl_st_write(st_path, a->tensors, a->n_tensors, meta)))
        goto out;
    rc = actl__dir_commit(&d);
out:
    actl__dir_stage_free(&d);
    free(cfg_path);
    free(st_path);
    free(text);
    return rc;
}
