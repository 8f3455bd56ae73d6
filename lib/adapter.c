/* adapter.c: the adapter object: getters, validation against a base model, and MoS
 * materialization. Building and checking an adapter from a config and tensors lives in
 * peft.c (actl__adapter_build); this file only reads what that established. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

bool actl__ends_with(const char *s, const char *suffix)
{
    size_t l = strlen(s), n = strlen(suffix);
    return l >= n && memcmp(s + l - n, suffix, n) == 0;
}

const char *actl_kind_name(actl_kind k)
{
    switch (k) {
    case ACTL_KIND_LORA: return "lora";
    case ACTL_KIND_ROAD: return "road";
    case ACTL_KIND_BOTTLENECK: return "bottleneck";
    case ACTL_KIND_MOS: return "mos";
    case ACTL_KIND_STACK: return "stack";
    }
    return NULL;
}

int actl_kind_parse(const char *name, actl_kind *out)
{
    if (!name || !out)
        return actl__err(ACTL_EINVAL, "kind: NULL argument");
    for (int k = ACTL_KIND_LORA; k <= ACTL_KIND_STACK; k++)
        if (strcmp(actl_kind_name((actl_kind)k), name) == 0) {
            *out = (actl_kind)k;
            return ACTL_OK;
        }
    char q[ACTL__QUOTE_CAP];
    return actl__err(ACTL_EINVAL, "unknown kind '%s' (lora, road, bottleneck, mos, stack)",
                     actl__quote(name, q, sizeof q));
}

const char *actl_road_variant_name(actl_road_variant v)
{
    switch (v) {
    case ACTL_ROAD_1: return "road_1";
    case ACTL_ROAD_2: return "road_2";
    case ACTL_ROAD_4: return "road_4";
    }
    return NULL;
}

const char *actl_placement_name(actl_placement p)
{
    switch (p) {
    case ACTL_PLACE_INPUT: return "input";
    case ACTL_PLACE_OUTPUT: return "output";
    case ACTL_PLACE_PARALLEL: return "parallel";
    case ACTL_PLACE_NONE: break;
    }
    return NULL;
}

const char *actl_activation_name(actl_activation a)
{
    switch (a) {
    case ACTL_ACT_IDENTITY: return "identity";
    case ACTL_ACT_TANH: return "tanh";
    case ACTL_ACT_RELU: return "relu";
    case ACTL_ACT_GELU: return "gelu";
    case ACTL_ACT_SILU: return "silu";
    }
    return NULL;
}

void actl_adapter_free(actl_adapter *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_modules; i++)
        free((char *)a->modules[i].info.name);
    free(a->modules);
    /* Modules point into the tensors, the tensors (views) into st: free in that order. */
    if (a->owns_tensors)
        for (size_t i = 0; i < a->n_tensors; i++)
            actl_tensor_free((actl_tensor *)a->tensors[i]);
    free(a->tensors);
    actl_st_close(a->st);
    json_decref(a->config);
    free(a->config_compact);
    free(a->origin);
    free(a);
}

void actl_adapter_info_get(const actl_adapter *a, actl_adapter_info *out)
{
    if (!a || !out)
        return;
    *out = a->info;
}

const char *actl_adapter_config(const actl_adapter *a)
{
    return a ? a->config_compact : NULL;
}

size_t actl_adapter_module_count(const actl_adapter *a)
{
    return a ? a->n_modules : 0;
}

int actl_adapter_module(const actl_adapter *a, size_t i, actl_module_info *out)
{
    if (!a || !out)
        return actl__err(ACTL_EINVAL, "adapter module: NULL argument");
    if (i >= a->n_modules)
        return actl__err(ACTL_EINVAL, "'%s': module %zu of %zu", a->origin, i, a->n_modules);
    *out = a->modules[i].info;
    return ACTL_OK;
}

size_t actl_adapter_tensor_count(const actl_adapter *a)
{
    return a ? a->n_tensors : 0;
}

const actl_tensor *actl_adapter_tensor(const actl_adapter *a, size_t i)
{
    return a && i < a->n_tensors ? a->tensors[i] : NULL;
}

static int cmp_key_tensor(const void *key, const void *elem)
{
    return strcmp(key, (*(const actl_tensor *const *)elem)->name);
}

const actl_tensor *actl_adapter_find(const actl_adapter *a, const char *key)
{
    if (!a || !key || !a->n_tensors)
        return NULL;
    const actl_tensor **hit = bsearch(key, a->tensors, a->n_tensors, sizeof *a->tensors,
                                      cmp_key_tensor);
    return hit ? *hit : NULL;
}

static int cmp_key_module(const void *key, const void *elem)
{
    return strcmp(key, ((const actl__module *)elem)->info.name);
}

const actl__module *actl__adapter_module_find(const actl_adapter *a, const char *name)
{
    if (!a || !name || !a->n_modules)
        return NULL;
    return bsearch(name, a->modules, a->n_modules, sizeof *a->modules, cmp_key_module);
}

double actl__tensor_get_f64(const actl_tensor *t, size_t i)
{
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ACTL_F32: {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    case ACTL_F16:
    case ACTL_BF16: {
        uint16_t h;
        float f;
        memcpy(&h, p + 2 * i, 2);
        if (t->dtype == ACTL_F16)
            actl_f16_to_f32(&h, &f, 1);
        else
            actl_bf16_to_f32(&h, &f, 1);
        return f;
    }
    case ACTL_F64: {
        double d;
        memcpy(&d, p + 8 * i, 8);
        return d;
    }
    default:
        return 0;
    }
}

/* ---- validation against a base ------------------------------------------ */

/* "[16, 32]" or with unknown dims as "?". */
static const char *dims(char *buf, size_t n, int64_t rows, int64_t cols)
{
    char r[24] = "?", c[24] = "?";
    if (rows > 0)
        snprintf(r, sizeof r, "%lld", (long long)rows);
    if (cols > 0)
        snprintf(c, sizeof c, "%lld", (long long)cols);
    snprintf(buf, n, "[%s, %s]", r, c);
    return buf;
}

bool actl__module_stores_in_out(const char *model_type, const char *module)
{
    /* transformers builds these model types' attention and MLP projections
     * from pytorch_utils.Conv1D; their lm_head and score heads stay nn.Linear */
    static const char *const conv1d_types[] = {"gpt2", "openai-gpt", "decision_transformer",
                                               "imagegpt", NULL};
    static const char *const conv1d_layers[] = {"c_attn", "c_proj", "c_fc", "q_attn", NULL};
    if (!model_type || !module)
        return false;
    bool family = false;
    for (size_t i = 0; !family && conv1d_types[i]; i++)
        family = !strcmp(model_type, conv1d_types[i]);
    if (!family)
        return false;
    const char *dot = strrchr(module, '.');
    const char *last = dot ? dot + 1 : module;
    for (size_t i = 0; conv1d_layers[i]; i++)
        if (!strcmp(last, conv1d_layers[i]))
            return true;
    return false;
}

/* The base weight [rows, cols] this module needs (0: any), then the check. */
static int validate_module(const actl_adapter *a, const actl__module *m, int64_t rows,
                           int64_t cols, const char *model_type)
{
    const actl_module_info *mi = &m->info;
    char want[64], have[64];
    int64_t need_rows = 0, need_cols = 0;
    switch (a->info.kind) {
    case ACTL_KIND_LORA:
        if (mi->flags & ACTL_MOD_EMBEDDING) {
            /* embedding table [vocab, dim]: A [r, vocab], B [dim, r] */
            need_rows = mi->in_features;
            need_cols = mi->out_features;
        } else if (actl__module_stores_in_out(model_type, mi->name)) {
            /* a Conv1D layer stores [in, out]; like PEFT, the layer's type
             * decides, not the adapter's fan_in_fan_out (which PEFT resets) */
            need_rows = mi->in_features;
            need_cols = mi->out_features;
        } else {
            need_rows = mi->out_features;
            need_cols = mi->in_features;
        }
        break;
    case ACTL_KIND_ROAD: {
        /* theta/alpha [out/2] | [out] | [2 out] (DESIGN.md 3.2), out % group_size == 0 */
        int64_t len = m->road_theta->shape[0];
        int64_t want_len = a->info.variant == ACTL_ROAD_1   ? rows / 2
                           : a->info.variant == ACTL_ROAD_2 ? rows
                                                            : 2 * rows;
        if (rows % a->info.group_size)
            return actl__err(ACTL_ESHAPE,
                             "'%s': module '%s': base weight %s has %lld outputs, not a multiple "
                             "of group_size %d", a->origin, mi->name, dims(have, sizeof have, rows, cols),
                             (long long)rows, a->info.group_size);
        if (len != want_len)
            return actl__err(ACTL_ESHAPE,
                             "'%s': module '%s': road_theta has length %lld, but road_%d on a "
                             "base weight %s needs %lld", a->origin, mi->name, (long long)len,
                             (int)a->info.variant, dims(have, sizeof have, rows, cols),
                             (long long)want_len);
        return ACTL_OK;
    }
    case ACTL_KIND_BOTTLENECK:
        /* D [b, n], U [m, b]: input n = m = in; output n = m = out; parallel n = in, m = out */
        need_rows = mi->out_features;
        need_cols = mi->in_features;
        break;
    case ACTL_KIND_MOS: {
        /* P_A [N, in/l], P_B [N, out/l] (DESIGN.md 3.4) */
        int64_t l = a->info.shards;
        if (rows % l || cols % l)
            return actl__err(ACTL_ESHAPE,
                             "'%s': module '%s': base weight %s is not divisible into "
                             "mos_shards %lld", a->origin, mi->name,
                             dims(have, sizeof have, rows, cols), (long long)l);
        if (m->pool_a->shape[1] != cols / l || m->pool_b->shape[1] != rows / l)
            return actl__err(ACTL_ESHAPE,
                             "'%s': module '%s': pools of widths %lld (pool_A) and %lld (pool_B) "
                             "need in/l = %lld and out/l = %lld for a base weight %s",
                             a->origin, mi->name, (long long)m->pool_a->shape[1],
                             (long long)m->pool_b->shape[1], (long long)(cols / l),
                             (long long)(rows / l), dims(have, sizeof have, rows, cols));
        return ACTL_OK;
    }
    case ACTL_KIND_STACK: /* never an adapter's kind */
        break;
    }
    if ((need_rows && need_rows != rows) || (need_cols && need_cols != cols))
        return actl__err(ACTL_ESHAPE, "'%s': module '%s': the adapter needs a base weight %s, "
                         "the base has %s", a->origin, mi->name,
                         dims(want, sizeof want, need_rows, need_cols),
                         dims(have, sizeof have, rows, cols));
    return ACTL_OK;
}

int actl_adapter_validate(const actl_adapter *a, const actl_base *base)
{
    return actl__adapter_validate_for(a, base, NULL);
}

int actl__adapter_validate_for(const actl_adapter *a, const actl_base *base,
                               const char *model_type)
{
    int rc = ACTL_OK;
    if (!a || !base)
        return actl__err(ACTL_EINVAL, "adapter validate: NULL argument");
    for (size_t i = 0; i < a->n_modules && !rc; i++) {
        const actl__module *m = &a->modules[i];
        int64_t rows, cols;
        if (actl_base_find(base, m->info.name, &rows, &cols) != ACTL_OK) {
            const char *id = actl_base_model_id(base);
            rc = actl__err(ACTL_ENOTFOUND, "'%s': module '%s' is not in the base model%s%s%s",
                           a->origin, m->info.name, id ? " '" : "", id ? id : "", id ? "'" : "");
            break;
        }
        rc = validate_module(a, m, rows, cols, model_type);
    }
    return rc;
}

/* ---- MoS materialization (DESIGN.md 3.4) ---------------------------------- */

int actl__mos_gather(const actl_adapter *a, const actl__module *m, const char *name_a,
                     const char *name_b, actl_tensor **A, actl_tensor **B)
{
    int rc = ACTL_OK;
    actl_tensor *ta = NULL, *tb = NULL;
    if (!a || a->info.kind != ACTL_KIND_MOS || !m)
        return actl__err(ACTL_EINVAL, "mos gather: not a MoS module");
    int64_t r = m->info.rank, l = a->info.shards;
    int64_t wa = m->pool_a->shape[1], wb = m->pool_b->shape[1]; /* in/l, out/l */
    /* The build refuses such pools; a module from anywhere else must not overflow here. */
    if (l < 1 || wa > INT64_MAX / l || wb > INT64_MAX / l)
        return actl__err(ACTL_ELIMIT, "'%s': module '%s': pool widths %lld and %lld x "
                         "mos_shards %lld do not fit in 64 bits", a->origin, m->info.name,
                         (long long)wa, (long long)wb, (long long)l);
    int64_t in = wa * l, outf = wb * l;
    size_t es = actl_dtype_size(m->pool_a->dtype);
    int64_t sa[2] = {r, in}, sb[2] = {outf, r};
    if ((rc = actl_tensor_new(name_a, m->pool_a->dtype, 2, sa, NULL, &ta)) ||
        (rc = actl_tensor_new(name_b, m->pool_b->dtype, 2, sb, NULL, &tb)))
        goto out;
    const unsigned char *pa = m->pool_a->data, *pb = m->pool_b->data;
    const unsigned char *ia = m->index_a->data, *ib = m->index_b->data;
    unsigned char *da = ta->data, *db = tb->data;
    /* Indices were range-checked at import. Copying bytes keeps the pools' dtype exactly. */
    for (int64_t j = 0; j < r; j++)
        for (int64_t s = 0; s < l; s++) {
            int32_t xa, xb;
            memcpy(&xa, ia + 4 * (j * l + s), 4);
            memcpy(&xb, ib + 4 * (j * l + s), 4);
            /* A [r, in]: A[j, s*wa : (s+1)*wa] = P_A[a[j*l + s]] */
            memcpy(da + ((size_t)(j * in + s * wa)) * es, pa + (size_t)xa * (size_t)wa * es,
                   (size_t)wa * es);
            /* B [out, r]: B[s*wb : (s+1)*wb, j] = P_B[b[j*l + s]], a column: strided */
            for (int64_t k = 0; k < wb; k++)
                memcpy(db + ((size_t)((s * wb + k) * r + j)) * es,
                       pb + ((size_t)xb * (size_t)wb + (size_t)k) * es, es);
        }
    *A = ta;
    *B = tb;
    ta = tb = NULL;
out:
    actl_tensor_free(ta);
    actl_tensor_free(tb);
    return rc;
}

/* The LoRA config of a materialized MoS adapter: what PEFT needs to load it. */
static json_t *lora_config_of(const actl_adapter *a)
{
    static const char *const copied[] = {"target_modules", "base_model_name_or_path",
                                         "task_type", "modules_to_save", "bias", NULL};
    json_t *c = json_object();
    int bad = !c;
    bad = bad || json_object_set_new(c, "peft_type", json_string("LORA"));
    bad = bad || json_object_set_new(c, "r", json_integer(a->info.rank));
    json_t *alpha = json_object_get(a->config, "lora_alpha");
    bad = bad || json_object_set_new(c, "lora_alpha",
                                     alpha ? json_deep_copy(alpha) : json_real(a->info.alpha));
    bad = bad || json_object_set_new(c, "use_rslora", json_false());
    for (int i = 0; !bad && copied[i]; i++) {
        json_t *v = json_object_get(a->config, copied[i]);
        if (v)
            bad = json_object_set_new(c, copied[i], json_deep_copy(v)) != 0;
    }
    if (bad) {
        json_decref(c);
        return NULL;
    }
    return c;
}

/* The index in a->tensors of t, one of them (keys are unique and sorted). */
static size_t tensor_index(const actl_adapter *a, const actl_tensor *t)
{
    const actl_tensor **hit = bsearch(t->name, a->tensors, a->n_tensors, sizeof *a->tensors,
                                      cmp_key_tensor);
    return (size_t)(hit - a->tensors);
}

int actl_adapter_materialize(const actl_adapter *a, actl_adapter **out)
{
    int rc = ACTL_OK;
    const actl_tensor **ts = NULL;
    bool *in_module = NULL;
    size_t nt = 0;
    json_t *cfg = NULL;
    char *name_a = NULL, *name_b = NULL, *origin = NULL;
    if (!a || !out)
        return actl__err(ACTL_EINVAL, "materialize: NULL argument");
    if (a->info.kind != ACTL_KIND_MOS)
        return actl__err(ACTL_EINVAL, "'%s': materialize needs a MoS adapter, not %s", a->origin,
                         actl_kind_name(a->info.kind));
    *out = NULL;
    /* Two tensors per module plus the pass-through tensors (pools and indices go). */
    if (!(ts = calloc(2 * a->n_modules + a->n_tensors, sizeof *ts)) ||
        (a->n_tensors && !(in_module = calloc(a->n_tensors, sizeof *in_module))) ||
        !(cfg = lora_config_of(a)) ||
        !(origin = actl__strdup_printf("%s (materialized)", a->origin))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < a->n_modules; i++) {
        const actl__module *m = &a->modules[i];
        actl_tensor *A, *B;
        free(name_a);
        free(name_b);
        name_a = actl__strdup_printf(ACTL_PEFT_PREFIX "%s.lora_A.weight", m->info.name);
        name_b = actl__strdup_printf(ACTL_PEFT_PREFIX "%s.lora_B.weight", m->info.name);
        if (!name_a || !name_b) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = actl__mos_gather(a, m, name_a, name_b, &A, &B)))
            goto out;
        ts[nt++] = A;
        ts[nt++] = B;
    }
    /* The build attached every MoS tensor to a module (pools to all modules of their type)
     * and let only pass-through tensors (modules_to_save, base biases) stand alone: those
     * are what the LoRA keeps. One rule, the build's, decides which is which. */
    for (size_t i = 0; i < a->n_modules; i++) {
        const actl__module *m = &a->modules[i];
        in_module[tensor_index(a, m->index_a)] = true;
        in_module[tensor_index(a, m->index_b)] = true;
        in_module[tensor_index(a, m->pool_a)] = true;
        in_module[tensor_index(a, m->pool_b)] = true;
    }
    for (size_t i = 0; i < a->n_tensors; i++) {
        actl_tensor *c;
        if (in_module[i])
            continue;
        if ((rc = actl_tensor_copy(a->tensors[i], NULL, &c)))
            goto out;
        ts[nt++] = c;
    }
    rc = actl__adapter_build(cfg, ts, nt, true, NULL, origin, origin, origin, out);
    cfg = NULL;
    ts = NULL;
out:
    if (ts)
        for (size_t i = 0; i < nt; i++)
            actl_tensor_free((actl_tensor *)ts[i]);
    free(ts);
    free(in_module);
    json_decref(cfg);
    free(name_a);
    free(name_b);
    free(origin);
    return rc;
}

/* The last path component, without trailing slashes, as [*start, *start + *len). */
static void last_component(const char *s, const char **start, size_t *len)
{
    size_t n = strlen(s);
    while (n > 1 && s[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && s[b - 1] != '/')
        b--;
    *start = s + b;
    *len = n - b;
}

/* An adapter trained on "meta-llama/Llama-2-7b-hf" fits a base whose config
 * says "/models/Llama-2-7b-hf": the same name, fetched to another place. */
bool actl__same_model(const char *a, const char *b)
{
    if (!strcmp(a, b))
        return true;
    const char *sa, *sb;
    size_t la, lb;
    last_component(a, &sa, &la);
    last_component(b, &sb, &lb);
    return la > 0 && la == lb && !memcmp(sa, sb, la);
}
