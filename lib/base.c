/* base.c: the modules of a base model and their weight shapes, for validating adapters
 * without loading the model: from a checkpoint's tensors (every 2-D "<module>.weight"), or
 * derived from a LLaMA-family config.json (DESIGN.md 4.3) when there are no weights. */
#include "internal.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>

typedef struct base_module {
    char *name;
    int64_t rows, cols; /* the weight as stored: [out, in] for a Linear, [vocab, dim] for an
                           embedding */
} base_module;

struct actl_base {
    char *model_id;
    base_module *mods; /* sorted by name */
    size_t n, cap;
};

void actl_base_free(actl_base *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++)
        free(b->mods[i].name);
    free(b->mods);
    free(b->model_id);
    free(b);
}

const char *actl_base_model_id(const actl_base *b) { return b ? b->model_id : NULL; }

size_t actl_base_module_count(const actl_base *b) { return b ? b->n : 0; }

const char *actl_base_module(const actl_base *b, size_t i, int64_t *rows, int64_t *cols)
{
    if (!b || i >= b->n)
        return NULL;
    if (rows)
        *rows = b->mods[i].rows;
    if (cols)
        *cols = b->mods[i].cols;
    return b->mods[i].name;
}

static int cmp_module(const void *x, const void *y)
{
    return strcmp(((const base_module *)x)->name, ((const base_module *)y)->name);
}

static int cmp_key_module(const void *key, const void *elem)
{
    return strcmp(key, ((const base_module *)elem)->name);
}

int actl_base_find(const actl_base *b, const char *module, int64_t *rows, int64_t *cols)
{
    if (!b || !module)
        return actl__err(ACTL_EINVAL, "base find: NULL argument");
    const base_module *m =
        b->n ? bsearch(module, b->mods, b->n, sizeof *b->mods, cmp_key_module) : NULL;
    if (!m)
        return actl__err(ACTL_ENOTFOUND, "module '%s' is not in the base model", module);
    if (rows)
        *rows = m->rows;
    if (cols)
        *cols = m->cols;
    return ACTL_OK;
}

/* Appends a module; name is taken (freed on failure). */
static int add_module(actl_base *b, char *name, int64_t rows, int64_t cols)
{
    if (!name)
        return actl__oom();
    base_module *p = actl__grow(b->mods, b->n, &b->cap, sizeof *p, 64);
    if (!p) {
        free(name);
        return actl__oom();
    }
    b->mods = p;
    b->mods[b->n++] = (base_module){name, rows, cols};
    return ACTL_OK;
}

static int from_checkpoint(actl_base *b, const char *path)
{
    int rc;
    actl_ckpt *ck = NULL;
    if ((rc = actl_ckpt_open(path, &ck)))
        return rc;
    for (size_t i = 0; i < actl_ckpt_count(ck) && !rc; i++) {
        const actl_tensor *t = actl_ckpt_tensor(ck, i);
        size_t l = strlen(t->name);
        if (t->ndim != 2 || l <= 7 || strcmp(t->name + l - 7, ".weight") != 0)
            continue;
        rc = add_module(b, strndup(t->name, l - 7), t->shape[0], t->shape[1]);
    }
    actl_ckpt_close(ck);
    return rc;
}

/* Bounds on config.json sizes: config.json alone decides how many modules are listed
 * (7 per layer) and their widths, so a hostile one must not ask for millions of them. */
#define MAX_LAYERS 65536
#define MAX_HEADS 65536
#define MAX_WIDTH (1 << 30)

/* An integer field of config.json in [1, max]; def (when > 0) stands in for absent or
 * null. */
static int cfg_dim(const json_t *cfg, const char *key, int64_t def, int64_t max,
                   const char *what, int64_t *out)
{
    json_t *v = json_object_get(cfg, key);
    if ((!v || json_is_null(v)) && def > 0) {
        *out = def;
        return ACTL_OK;
    }
    if (!v)
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' is missing", what, key);
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max)
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be an integer from 1 to %lld", what,
                         key, (long long)max);
    *out = json_integer_value(v);
    return ACTL_OK;
}

/* LLaMA-family shapes from config.json: per layer N, under model.layers.N,
 *   self_attn.q_proj [heads*head_dim, hidden], k_proj/v_proj [kv_heads*head_dim, hidden],
 *   self_attn.o_proj [hidden, heads*head_dim], mlp.gate_proj/up_proj [intermediate, hidden],
 *   mlp.down_proj [hidden, intermediate];
 * model.embed_tokens [vocab, hidden] and lm_head [vocab, hidden] (listed even when tied:
 * an adapter may target it). */
static int from_config(actl_base *b, const json_t *cfg, const char *what)
{
    int rc;
    int64_t hidden, inter, layers, heads, kv, head_dim, vocab;
    if ((rc = cfg_dim(cfg, "hidden_size", 0, MAX_WIDTH, what, &hidden)) ||
        (rc = cfg_dim(cfg, "intermediate_size", 0, MAX_WIDTH, what, &inter)) ||
        (rc = cfg_dim(cfg, "num_hidden_layers", 0, MAX_LAYERS, what, &layers)) ||
        (rc = cfg_dim(cfg, "num_attention_heads", 0, MAX_HEADS, what, &heads)) ||
        (rc = cfg_dim(cfg, "num_key_value_heads", heads, MAX_HEADS, what, &kv)) ||
        (rc = cfg_dim(cfg, "head_dim", hidden / heads, MAX_WIDTH, what, &head_dim)) ||
        (rc = cfg_dim(cfg, "vocab_size", 0, MAX_WIDTH, what, &vocab)))
        return rc;
    /* The attention widths are products: keep them in the same range as the others. */
    if (heads * head_dim > MAX_WIDTH)
        return actl__err(ACTL_EFORMAT,
                         "'%s': num_attention_heads %lld x head_dim %lld is more than %d", what,
                         (long long)heads, (long long)head_dim, MAX_WIDTH);
    if (kv * head_dim > MAX_WIDTH)
        return actl__err(ACTL_EFORMAT,
                         "'%s': num_key_value_heads %lld x head_dim %lld is more than %d", what,
                         (long long)kv, (long long)head_dim, MAX_WIDTH);
    if ((rc = add_module(b, strdup("model.embed_tokens"), vocab, hidden)) ||
        (rc = add_module(b, strdup("lm_head"), vocab, hidden)))
        return rc;
    for (int64_t l = 0; l < layers; l++) {
        static const struct {
            const char *part;
            int rows, cols; /* 0 hidden, 1 heads*head_dim, 2 kv*head_dim, 3 intermediate */
        } lin[] = {
            {"self_attn.q_proj", 1, 0}, {"self_attn.k_proj", 2, 0}, {"self_attn.v_proj", 2, 0},
            {"self_attn.o_proj", 0, 1}, {"mlp.gate_proj", 3, 0},    {"mlp.up_proj", 3, 0},
            {"mlp.down_proj", 0, 3},
        };
        const int64_t width[4] = {hidden, heads * head_dim, kv * head_dim, inter};
        for (size_t k = 0; k < sizeof lin / sizeof lin[0]; k++)
            if ((rc = add_module(b,
                                 actl__strdup_printf("model.layers.%lld.%s", (long long)l,
                                                     lin[k].part),
                                 width[lin[k].rows], width[lin[k].cols])))
                return rc;
    }
    return ACTL_OK;
}

int actl_base_load(const char *path, actl_base **out)
{
    int rc = ACTL_OK;
    char *cfg_path = NULL, *w1 = NULL, *w2 = NULL, *dcopy = NULL, *text = NULL;
    const char *weights = NULL;
    size_t len;
    json_t *cfg = NULL;
    actl_base *b = NULL;
    if (!path || !out)
        return actl__err(ACTL_EINVAL, "base load: NULL argument");
    *out = NULL;
    if (!actl__exists(path)) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s': no such file or directory", path);
        goto out;
    }
    if (actl__is_dir(path)) {
        if (!(cfg_path = actl__path_join(path, "config.json")) ||
            !(w1 = actl__path_join(path, "model.safetensors")) ||
            !(w2 = actl__path_join(path, "model.safetensors.index.json"))) {
            rc = actl__oom();
            goto out;
        }
        if (actl__exists(w1) || actl__exists(w2))
            weights = path;
        else if (!actl__exists(cfg_path)) {
            rc = actl__err(ACTL_ENOTFOUND,
                           "'%s': no model.safetensors, model.safetensors.index.json or "
                           "config.json", path);
            goto out;
        }
    } else if (actl__ends_with(path, ".safetensors")) {
        /* A single weights file: config.json beside it, if any, names the model. */
        weights = path;
        if (!(dcopy = strdup(path)) || !(cfg_path = actl__path_join(dirname(dcopy), "config.json"))) {
            rc = actl__oom();
            goto out;
        }
    } else if (!(cfg_path = strdup(path))) {
        rc = actl__oom();
        goto out;
    }
    if (!(b = calloc(1, sizeof *b))) {
        rc = actl__oom();
        goto out;
    }
    if (cfg_path && actl__exists(cfg_path)) {
        if ((rc = actl__read_file(cfg_path, ACTL_CONFIG_LIMIT, &text, &len)) ||
            (rc = actl__json_parse(text, len, cfg_path, &cfg)))
            goto out;
        if (!json_is_object(cfg)) {
            rc = actl__err(ACTL_EFORMAT, "'%s': not a JSON object", cfg_path);
            goto out;
        }
        json_t *id = json_object_get(cfg, "_name_or_path");
        if (json_is_string(id) && !(b->model_id = strdup(json_string_value(id)))) {
            rc = actl__oom();
            goto out;
        }
    }
    /* Weights win over config.json: they are what an adapter is applied to. */
    if (weights)
        rc = from_checkpoint(b, weights);
    else
        rc = from_config(b, cfg, cfg_path);
    if (rc)
        goto out;
    if (b->n)
        qsort(b->mods, b->n, sizeof *b->mods, cmp_module);
    *out = b;
    b = NULL;
out:
    actl_base_free(b);
    json_decref(cfg);
    free(text);
    free(cfg_path);
    free(w1);
    free(w2);
    free(dcopy);
    return rc;
}

int actl__base_from_modules(const char *model_id, const char *const *names, const int64_t *rows,
                            const int64_t *cols, size_t n, actl_base **out)
{
    int rc = ACTL_OK;
    actl_base *b = calloc(1, sizeof *b);
    *out = NULL;
    if (!b || (model_id && !(b->model_id = strdup(model_id)))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n && !rc; i++)
        rc = add_module(b, strdup(names[i]), rows[i], cols[i]);
    if (rc)
        goto out;
    if (b->n)
        qsort(b->mods, b->n, sizeof *b->mods, cmp_module);
    *out = b;
    b = NULL;
out:
    actl_base_free(b);
    return rc;
}
