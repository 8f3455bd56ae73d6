/* model.c: a LLaMA-family model in memory (DESIGN.md 4.3, 10), from a Hugging Face
 * checkpoint (config.json + safetensors, one file or shards) or a llama2.c .bin, and the
 * two kernels every projection and token goes through: actl__linear (y = x Wᵀ for F32,
 * F16 and BF16 weights) and actl__embed_row.
 *
 * Weights are kept as stored: HF tensors are views into the mapped checkpoint, llama2.c
 * tensors views into the mapped .bin (wq and wk excepted: their rows are permuted into
 * owned copies). ACTL_MODEL_WIDEN makes owned F32 copies instead. Norm weights and biases
 * are always F32 (widened at load), so the decoder reads them as plain float arrays. */
#include "internal.h"

#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

const char *const actl__proj_names[ACTL__NPROJ] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

/* Bounds on what config.json or a llama2.c header may ask for: every width must fit
 * the int that cblas takes, and a hostile header must not ask for millions of layers. */
#define MAX_LAYERS 65536
#define MAX_HEADS 65536
#define MAX_WIDTH (1 << 30)

/* The llama2.c header: 7 int32. */
#define L2C_HEADER 28

typedef struct model_priv {
    actl_ckpt *ck;          /* HF: the checkpoint the kept weights view */
    void *map;              /* llama2.c: the mapped file the kept weights view */
    size_t map_len;
    actl_tensor **made;     /* tensors this model allocated (copies, and views it named) */
    size_t n_made, cap_made;
    char *model_id;
} model_priv;

/* ---- small helpers -------------------------------------------------------- */

static bool aligned_for(const actl_tensor *t)
{
    return (uintptr_t)t->data % actl_dtype_size(t->dtype) == 0;
}

/* Takes t into the model's list of tensors to free (t freed when that fails). */
static int keep(model_priv *p, actl_tensor *t)
{
    actl_tensor **a = actl__grow(p->made, p->n_made, &p->cap_made, sizeof *a, 64);
    if (!a) {
        actl_tensor_free(t);
        return actl__oom();
    }
    p->made = a;
    p->made[p->n_made++] = t;
    return ACTL_OK;
}

/* Converts n elements of dtype dt at src (any alignment) to floats at dst. */
static void widen(actl_dtype dt, const void *src, size_t n, float *dst)
{
    const unsigned char *s = src;
    if (dt == ACTL_F32) {
        memcpy(dst, s, n * 4);
        return;
    }
    if ((uintptr_t)s % 2 == 0) {
        if (dt == ACTL_F16)
            actl_f16_to_f32((const uint16_t *)src, dst, n);
        else
            actl_bf16_to_f32((const uint16_t *)src, dst, n);
        return;
    }
    /* An odd address (a view into a file laid out by someone else): through an aligned
     * buffer. */
    uint16_t buf[512];
    for (size_t i = 0; i < n; i += 512) {
        size_t m = n - i < 512 ? n - i : 512;
        memcpy(buf, s + 2 * i, 2 * m);
        if (dt == ACTL_F16)
            actl_f16_to_f32(buf, dst + i, m);
        else
            actl_bf16_to_f32(buf, dst + i, m);
    }
}

/* The tensor the model uses for src: src itself when it can be used as is, else an owned
 * copy (kept in p) - F32 when to_f32, in src's dtype when src is merely misaligned. */
static int adopt(model_priv *p, const actl_tensor *src, bool to_f32, const actl_tensor **out)
{
    int rc;
    actl_tensor *t = NULL;
    if ((src->dtype == ACTL_F32 || !to_f32) && aligned_for(src)) {
        *out = src;
        return ACTL_OK;
    }
    actl_dtype dt = to_f32 ? ACTL_F32 : src->dtype;
    if ((rc = actl_tensor_new(src->name, dt, src->ndim, src->shape, NULL, &t)))
        return rc;
    if (dt == ACTL_F32)
        rc = actl_tensor_to_f32(src, t->data);
    else
        memcpy(t->data, src->data, src->nbytes);
    if (rc) {
        actl_tensor_free(t);
        return rc;
    }
    if ((rc = keep(p, t)))
        return rc;
    *out = t;
    return ACTL_OK;
}

const char *actl__slot_name(const actl_model *m, int64_t slot, char *buf, size_t cap)
{
    if (slot == ACTL__SLOT_HEAD(m))
        snprintf(buf, cap, "lm_head");
    else if (slot >= 0 && slot < ACTL__SLOT_HEAD(m))
        snprintf(buf, cap, "model.layers.%lld.%s", (long long)(slot / ACTL__NPROJ),
                 actl__proj_names[slot % ACTL__NPROJ]);
    else
        snprintf(buf, cap, "slot %lld", (long long)slot);
    return buf;
}

const actl_tensor *actl__slot_weight(const actl_model *m, int64_t slot)
{
    if (slot == ACTL__SLOT_HEAD(m))
        return m->head;
    if (slot < 0 || slot > ACTL__SLOT_HEAD(m))
        return NULL;
    return m->layers[slot / ACTL__NPROJ].w[slot % ACTL__NPROJ];
}

/* ---- the kernels ------------------------------------------------------------ */

/* F16/BF16 weights are widened a block of rows at a time into a buffer of the calling
 * thread, then one sgemm per block. 128 Ki floats (512 KiB) keeps the block in a 1 MiB
 * L2 beside sgemm's own packed panels; tests/bench/bench_linear.c measured 16, 64, 128,
 * 256 and 1024 Ki floats: blocks of 64 Ki floats or less (a few dozen rows of a 2048-wide
 * weight) cost up to 2x in sgemm call overhead, above 128 Ki nothing more was gained.
 * _Thread_local keeps the buffer reachable for leak checkers; the key's destructor frees
 * it when a thread other than the main one exits (as codec.c does for its zstd
 * contexts). */
#define BLOCK_FLOATS (128 * 1024)
#define BLOCK_MIN_ROWS 16

static _Thread_local float *tl_buf;
static _Thread_local size_t tl_cap;
static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
static int buf_key_ok;

static void buf_release(void *unused)
{
    (void)unused;
    free(tl_buf);
    tl_buf = NULL;
    tl_cap = 0;
}

static void buf_key_init(void) { buf_key_ok = pthread_key_create(&buf_key, buf_release) == 0; }

static float *thread_buf(size_t n)
{
    if (n <= tl_cap)
        return tl_buf;
    float *b = malloc(n * sizeof *b);
    if (!b)
        return NULL;
    if (!tl_buf) {
        pthread_once(&buf_once, buf_key_init);
        /* Any non-NULL value makes the destructor run at thread exit. */
        if (buf_key_ok)
            (void)pthread_setspecific(buf_key, &buf_key);
    }
    free(tl_buf);
    tl_buf = b;
    tl_cap = n;
    return b;
}

int actl__linear(const actl_tensor *W, const float *x, int64_t rows, float *y, bool accumulate)
{
    if (!W || W->ndim != 2 || !(W->dtype == ACTL_F32 || W->dtype == ACTL_F16 ||
                                W->dtype == ACTL_BF16))
        return actl__err(ACTL_EINVAL, "linear: '%s' is not a 2-D F32/F16/BF16 weight",
                         W && W->name ? W->name : "(null)");
    int64_t out = W->shape[0], in = W->shape[1];
    if (rows > INT_MAX || out > INT_MAX || in > INT_MAX || rows < 0)
        return actl__err(ACTL_EINVAL, "linear: '%s' [%lld, %lld] over %lld rows is beyond "
                         "what cblas takes", W->name, (long long)out, (long long)in,
                         (long long)rows);
    if (rows == 0 || out == 0)
        return ACTL_OK;
    if (in == 0) {
        if (!accumulate)
            memset(y, 0, (size_t)rows * (size_t)out * sizeof *y);
        return ACTL_OK;
    }
    const float beta = accumulate ? 1.0f : 0.0f;
    if (W->dtype == ACTL_F32 && aligned_for(W)) {
        /* y [rows, out] = x [rows, in] · Wᵀ, W [out, in] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)in,
                    1.0f, x, (int)in, W->data, (int)in, beta, y, (int)out);
        return ACTL_OK;
    }
    int64_t nb = BLOCK_FLOATS / in;
    nb = nb < BLOCK_MIN_ROWS ? BLOCK_MIN_ROWS : nb;
    nb = nb > out ? out : nb;
    float *buf = thread_buf((size_t)nb * (size_t)in);
    if (!buf)
        return actl__oom();
    const unsigned char *w = W->data;
    size_t es = actl_dtype_size(W->dtype);
    for (int64_t o0 = 0; o0 < out; o0 += nb) {
        int64_t n = out - o0 < nb ? out - o0 : nb;
        /* buf [n, in] = rows o0 .. o0+n of W; y[:, o0 .. o0+n] = x · bufᵀ */
        widen(W->dtype, w + (size_t)o0 * (size_t)in * es, (size_t)n * (size_t)in, buf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n, (int)in, 1.0f,
                    x, (int)in, buf, (int)in, beta, y + o0, (int)out);
    }
    return ACTL_OK;
}

void actl__embed_row(const actl_model *m, int32_t id, float *dst)
{
    const actl_tensor *t = m->embed;
    size_t dim = (size_t)t->shape[1], es = actl_dtype_size(t->dtype);
    widen(t->dtype, (const unsigned char *)t->data + (size_t)id * dim * es, dim, dst);
}

/* ---- the model -------------------------------------------------------------- */

void actl_model_free(actl_model *m)
{
    if (!m)
        return;
    model_priv *p = m->priv;
    if (p) {
        for (size_t i = 0; i < p->n_made; i++)
            actl_tensor_free(p->made[i]);
        free(p->made);
        actl_ckpt_close(p->ck);
        if (p->map)
            munmap(p->map, p->map_len);
        free(p->model_id);
        free(p);
    }
    actl_base_free(m->base);
    free(m->layers);
    free(m);
}

void actl_model_info_get(const actl_model *m, actl_model_info *out)
{
    if (!out)
        return;
    if (!m) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = m->info;
}

const actl_base *actl_model_base(const actl_model *m) { return m ? m->base : NULL; }

/* The fields every loader fills the same way once the tensors are in place: dtype,
 * parameter count and the module list for actl_adapter_validate. */
static int finish(actl_model *m)
{
    int rc = ACTL_OK;
    int64_t L = m->info.layers;
    size_t n = (size_t)L * ACTL__NPROJ + 2;
    char **names = calloc(n, sizeof *names);
    int64_t *rows = calloc(n, sizeof *rows), *cols = calloc(n, sizeof *cols);
    if (!names || !rows || !cols) {
        rc = actl__oom();
        goto out;
    }
    int64_t params = m->embed->numel + (m->info.tied ? 0 : m->head->numel) + m->info.dim;
    for (int64_t l = 0; l < L; l++) {
        const actl__layer *ly = &m->layers[l];
        params += 2 * m->info.dim;
        for (int k = 0; k < ACTL__NPROJ; k++) {
            params += ly->w[k]->numel;
            if (ly->bias[k])
                params += ly->w[k]->shape[0];
        }
    }
    m->info.params = params;
    m->info.dtype = m->layers[0].w[ACTL__Q]->dtype;
    char buf[128];
    for (size_t s = 0; s < n; s++) {
        const actl_tensor *w;
        if (s + 1 == n) {
            names[s] = strdup("model.embed_tokens");
            w = m->embed;
        } else {
            names[s] = strdup(actl__slot_name(m, (int64_t)s, buf, sizeof buf));
            w = actl__slot_weight(m, (int64_t)s);
        }
        if (!names[s]) {
            rc = actl__oom();
            goto out;
        }
        rows[s] = w->shape[0];
        cols[s] = w->shape[1];
    }
    rc = actl__base_from_modules(m->info.model_id, (const char *const *)names, rows, cols, n,
                                 &m->base);
out:
    if (names)
        for (size_t s = 0; s < n; s++)
            free(names[s]);
    free(names);
    free(rows);
    free(cols);
    return rc;
}

/* ---- Hugging Face checkpoints ------------------------------------------------- */

/* An integer of config.json in [1, max]; def (when > 0) stands in for absent or null. */
static int cfg_int(const json_t *cfg, const char *key, int64_t def, int64_t max,
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

/* A positive number of config.json (integer or real); def for absent or null. */
static int cfg_pos(const json_t *cfg, const char *key, double def, const char *what,
                   double *out)
{
    json_t *v = json_object_get(cfg, key);
    if ((!v || json_is_null(v)) && def > 0) {
        *out = def;
        return ACTL_OK;
    }
    if (!v)
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' is missing", what, key);
    if (!json_is_number(v) || !(json_number_value(v) > 0))
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be a positive number", what, key);
    *out = json_number_value(v);
    return ACTL_OK;
}

/* bos_token_id / eos_token_id: an integer, or a list whose first element is one; -1 when
 * absent or null. */
static int cfg_token(const json_t *cfg, const char *key, const char *what, int32_t *out)
{
    json_t *v = json_object_get(cfg, key);
    *out = -1;
    if (json_is_array(v))
        v = json_array_get(v, 0);
    if (!v || json_is_null(v))
        return ACTL_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return actl__err(ACTL_EFORMAT, "'%s': key '%s' must be a token id or a list of them",
                         what, key);
    *out = (int32_t)json_integer_value(v);
    return ACTL_OK;
}

/* The model_type the decoder runs ("llama", "mistral", "qwen2", static), from
 * model_type or else the first of architectures. */
static int cfg_arch(const json_t *cfg, const char *what, const char **type)
{
    static const struct {
        const char *type, *arch;
    } known[] = {
        {"llama", "LlamaForCausalLM"},
        {"mistral", "MistralForCausalLM"},
        {"qwen2", "Qwen2ForCausalLM"},
    };
    json_t *mt = json_object_get(cfg, "model_type");
    json_t *ar = json_array_get(json_object_get(cfg, "architectures"), 0);
    if (json_is_string(mt)) {
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (!strcmp(json_string_value(mt), known[i].type)) {
                *type = known[i].type;
                return ACTL_OK;
            }
        return actl__err(ACTL_EUNSUPPORTED, "'%s': model_type '%s' is not supported (llama, "
                         "mistral and qwen2 are)", what, json_string_value(mt));
    }
    if (json_is_string(ar)) {
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (!strcmp(json_string_value(ar), known[i].arch)) {
                *type = known[i].type;
                return ACTL_OK;
            }
        return actl__err(ACTL_EUNSUPPORTED, "'%s': architecture '%s' is not supported "
                         "(LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM are)",
                         what, json_string_value(ar));
    }
    return actl__err(ACTL_EUNSUPPORTED, "'%s': neither model_type nor architectures names "
                     "the model's architecture", what);
}

/* rope_scaling: null, {"type"|"rope_type": "default" | "linear" | "llama3", ...}. */
static int cfg_rope(const json_t *cfg, const char *what, actl_model_info *in)
{
    int rc;
    json_t *rs = json_object_get(cfg, "rope_scaling");
    in->rope_type = ACTL_ROPE_DEFAULT;
    if (!rs || json_is_null(rs))
        return ACTL_OK;
    if (!json_is_object(rs))
        return actl__err(ACTL_EFORMAT, "'%s': rope_scaling must be null or an object", what);
    json_t *t = json_object_get(rs, "rope_type");
    if (!t)
        t = json_object_get(rs, "type");
    if (!json_is_string(t))
        return actl__err(ACTL_EFORMAT, "'%s': rope_scaling has no rope_type", what);
    const char *type = json_string_value(t);
    char sub[256];
    snprintf(sub, sizeof sub, "%s: rope_scaling", what);
    if (!strcmp(type, "default"))
        return ACTL_OK;
    if (!strcmp(type, "linear")) {
        in->rope_type = ACTL_ROPE_LINEAR;
        return cfg_pos(rs, "factor", 0, sub, &in->rope_factor);
    }
    if (!strcmp(type, "llama3")) {
        in->rope_type = ACTL_ROPE_LLAMA3;
        if ((rc = cfg_pos(rs, "factor", 0, sub, &in->rope_factor)) ||
            (rc = cfg_pos(rs, "low_freq_factor", 0, sub, &in->rope_low_freq_factor)) ||
            (rc = cfg_pos(rs, "high_freq_factor", 0, sub, &in->rope_high_freq_factor)) ||
            (rc = cfg_int(rs, "original_max_position_embeddings", 0, INT32_MAX, sub,
                          &in->rope_original_max)))
            return rc;
        /* The smooth band divides by high - low (HF's formula). */
        if (!(in->rope_high_freq_factor > in->rope_low_freq_factor))
            return actl__err(ACTL_EFORMAT, "'%s': rope_scaling high_freq_factor must exceed "
                             "low_freq_factor", what);
        return ACTL_OK;
    }
    return actl__err(ACTL_EUNSUPPORTED, "'%s': rope_scaling type '%s' is not supported "
                     "(linear and llama3 are)", what, type);
}

static int hf_config(const json_t *cfg, const char *what, actl_model *m, const char **type)
{
    int rc;
    actl_model_info *in = &m->info;
    json_t *v;
    if ((rc = cfg_arch(cfg, what, type)))
        return rc;
    if ((v = json_object_get(cfg, "hidden_act")) && !json_is_null(v) &&
        (!json_is_string(v) || strcmp(json_string_value(v), "silu")))
        return actl__err(ACTL_EUNSUPPORTED, "'%s': hidden_act '%s' is not supported (silu is)",
                         what, json_is_string(v) ? json_string_value(v) : "?");
    if (json_is_true(json_object_get(cfg, "mlp_bias")))
        return actl__err(ACTL_EUNSUPPORTED, "'%s': mlp_bias is not supported", what);
    if ((rc = cfg_int(cfg, "hidden_size", 0, MAX_WIDTH, what, &in->dim)) ||
        (rc = cfg_int(cfg, "intermediate_size", 0, MAX_WIDTH, what, &in->hidden)) ||
        (rc = cfg_int(cfg, "num_hidden_layers", 0, MAX_LAYERS, what, &in->layers)) ||
        (rc = cfg_int(cfg, "num_attention_heads", 0, MAX_HEADS, what, &in->heads)) ||
        (rc = cfg_int(cfg, "num_key_value_heads", in->heads, MAX_HEADS, what, &in->kv_heads)) ||
        (rc = cfg_int(cfg, "vocab_size", 0, MAX_WIDTH, what, &in->vocab)) ||
        (rc = cfg_int(cfg, "max_position_embeddings", 2048, INT32_MAX, what, &in->max_seq)) ||
        (rc = cfg_pos(cfg, "rms_norm_eps", 1e-6, what, &in->norm_eps)) ||
        (rc = cfg_pos(cfg, "rope_theta", 10000.0, what, &in->rope_theta)) ||
        (rc = cfg_rope(cfg, what, in)) ||
        (rc = cfg_token(cfg, "bos_token_id", what, &in->bos_id)) ||
        (rc = cfg_token(cfg, "eos_token_id", what, &in->eos_id)))
        return rc;
    v = json_object_get(cfg, "head_dim");
    if ((!v || json_is_null(v)) && in->dim % in->heads)
        return actl__err(ACTL_EFORMAT, "'%s': hidden_size %lld is not a multiple of "
                         "num_attention_heads %lld and head_dim is not given", what,
                         (long long)in->dim, (long long)in->heads);
    if ((rc = cfg_int(cfg, "head_dim", in->dim / in->heads, MAX_WIDTH, what, &in->head_dim)))
        return rc;
    if (in->heads % in->kv_heads)
        return actl__err(ACTL_EFORMAT, "'%s': num_attention_heads %lld is not a multiple of "
                         "num_key_value_heads %lld", what, (long long)in->heads,
                         (long long)in->kv_heads);
    if (in->head_dim % 2)
        return actl__err(ACTL_EFORMAT, "'%s': head_dim %lld is odd (RoPE rotates pairs)", what,
                         (long long)in->head_dim);
    if (in->heads * in->head_dim > MAX_WIDTH)
        return actl__err(ACTL_EFORMAT, "'%s': num_attention_heads %lld x head_dim %lld is more "
                         "than %d", what, (long long)in->heads, (long long)in->head_dim,
                         MAX_WIDTH);
    /* Qwen2 always has q/k/v biases; LLaMA and Mistral only when the config says so. */
    in->attention_bias =
        !strcmp(*type, "qwen2") || json_is_true(json_object_get(cfg, "attention_bias"));
    in->tied = json_is_true(json_object_get(cfg, "tie_word_embeddings"));
    return ACTL_OK;
}

typedef struct hf_loader {
    actl_model *m;
    model_priv *p;
    const char *what; /* the checkpoint, in messages */
    bool widen;
} hf_loader;

/* The tensor `name` of shape [d0] (d1 < 0) or [d0, d1], adopted into the model: F32 when
 * to_f32 or widening, else as stored. */
static int hf_tensor(hf_loader *L, const char *name, int64_t d0, int64_t d1, bool to_f32,
                     const actl_tensor **out)
{
    const actl_tensor *t = actl_ckpt_find(L->p->ck, name);
    char got[128], want[64];
    if (!t)
        return actl__err(ACTL_ENOTFOUND, "'%s': tensor '%s' is not in the checkpoint",
                         L->what, name);
    int nd = d1 < 0 ? 1 : 2;
    if (t->ndim != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        if (nd == 1)
            snprintf(want, sizeof want, "[%lld]", (long long)d0);
        else
            snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        return actl__err(ACTL_ESHAPE, "'%s': tensor '%s' has shape %s, expected %s (from "
                         "config.json)", L->what, name, actl__shape_str(t, got, sizeof got),
                         want);
    }
    if (!actl__is_float(t->dtype))
        return actl__err(ACTL_EUNSUPPORTED, "'%s': tensor '%s' has dtype %s; model weights "
                         "must be floating point", L->what, name, actl_dtype_name(t->dtype));
    /* F64 is widened too: the kernels take F32, F16 and BF16. */
    return adopt(L->p, t, to_f32 || L->widen || t->dtype == ACTL_F64, out);
}

static const float *f32(const actl_tensor *t) { return t ? (const float *)t->data : NULL; }

static int hf_weights(hf_loader *L)
{
    int rc;
    actl_model *m = L->m;
    const actl_model_info *in = &m->info;
    int64_t q = in->heads * in->head_dim, kv = in->kv_heads * in->head_dim;
    char name[160];
    const actl_tensor *t;
    if ((rc = hf_tensor(L, "model.embed_tokens.weight", in->vocab, in->dim, false, &m->embed)) ||
        (rc = hf_tensor(L, "model.norm.weight", in->dim, -1, true, &t)))
        return rc;
    m->final_norm = f32(t);
    if (in->tied)
        m->head = m->embed;
    else if ((rc = hf_tensor(L, "lm_head.weight", in->vocab, in->dim, false, &m->head)))
        return rc;
    for (int64_t l = 0; l < in->layers; l++) {
        actl__layer *ly = &m->layers[l];
        /* [out, in] of each projection, in actl__proj_names order */
        const int64_t shp[ACTL__NPROJ][2] = {
            {q, in->dim},          {kv, in->dim},         {kv, in->dim}, {in->dim, q},
            {in->hidden, in->dim}, {in->hidden, in->dim}, {in->dim, in->hidden},
        };
        snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)l);
        if ((rc = hf_tensor(L, name, in->dim, -1, true, &t)))
            return rc;
        ly->attn_norm = f32(t);
        snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight",
                 (long long)l);
        if ((rc = hf_tensor(L, name, in->dim, -1, true, &t)))
            return rc;
        ly->ffn_norm = f32(t);
        for (int k = 0; k < ACTL__NPROJ; k++) {
            snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)l,
                     actl__proj_names[k]);
            if ((rc = hf_tensor(L, name, shp[k][0], shp[k][1], false, &ly->w[k])))
                return rc;
            if (!in->attention_bias || k > ACTL__V)
                continue;
            snprintf(name, sizeof name, "model.layers.%lld.%s.bias", (long long)l,
                     actl__proj_names[k]);
            if ((rc = hf_tensor(L, name, shp[k][0], -1, true, &t)))
                return rc;
            ly->bias[k] = f32(t);
        }
    }
    return ACTL_OK;
}

static int load_hf(const char *dir, const char *weights, int flags, actl_model *m)
{
    int rc;
    model_priv *p = m->priv;
    char *cfg_path = actl__path_join(dir, "config.json"), *text = NULL;
    size_t len;
    json_t *cfg = NULL;
    const char *type = NULL;
    if (!cfg_path) {
        rc = actl__oom();
        goto out;
    }
    if (!actl__exists(cfg_path)) {
        rc = actl__err(ACTL_ENOTFOUND, "'%s': no config.json", dir);
        goto out;
    }
    if ((rc = actl__read_file(cfg_path, ACTL_CONFIG_LIMIT, &text, &len)) ||
        (rc = actl__json_parse(text, len, cfg_path, &cfg)))
        goto out;
    if (!json_is_object(cfg)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': not a JSON object", cfg_path);
        goto out;
    }
    if ((rc = hf_config(cfg, cfg_path, m, &type)))
        goto out;
    json_t *id = json_object_get(cfg, "_name_or_path");
    if (json_is_string(id) && *json_string_value(id)) {
        if (!(p->model_id = strdup(json_string_value(id)))) {
            rc = actl__oom();
            goto out;
        }
        m->info.model_id = p->model_id;
    }
    m->info.source = "hf";
    m->model_type = type;
    m->info.widened = (flags & ACTL_MODEL_WIDEN) != 0;
    if ((rc = actl_ckpt_open(weights, &p->ck)))
        goto out;
    /* The layer count comes from config.json: one the weights do not back is
     * refused before memory is sized by it. */
    char last[64];
    snprintf(last, sizeof last, "model.layers.%lld.input_layernorm.weight",
             (long long)m->info.layers - 1);
    if (m->info.layers > 0 && !actl_ckpt_find(p->ck, last)) {
        rc = actl__err(ACTL_ENOTFOUND,
                       "'%s': config.json gives %lld layers, but tensor '%s' is not in the "
                       "checkpoint",
                       weights, (long long)m->info.layers, last);
        goto out;
    }
    if (!(m->layers = calloc((size_t)m->info.layers, sizeof *m->layers))) {
        rc = actl__oom();
        goto out;
    }
    hf_loader L = {m, p, weights, m->info.widened};
    rc = hf_weights(&L);
out:
    json_decref(cfg);
    free(text);
    free(cfg_path);
    return rc;
}

/* ---- llama2.c checkpoints ------------------------------------------------------- */

/* a * b into *r, false on overflow. */
static bool mul_ok(uint64_t a, uint64_t b, uint64_t *r)
{
    if (a && b > UINT64_MAX / a)
        return false;
    *r = a * b;
    return true;
}

static bool add_ok(uint64_t a, uint64_t b, uint64_t *r)
{
    if (b > UINT64_MAX - a)
        return false;
    *r = a + b;
    return true;
}

/* A view tensor into the map, named as HF names it, kept in the model. */
static int l2c_view(model_priv *p, const char *name, int64_t d0, int64_t d1, const float *data,
                    const actl_tensor **out)
{
    actl_tensor *t;
    int64_t shape[2] = {d0, d1};
    int rc = actl__tensor_view(name, ACTL_F32, d1 < 0 ? 1 : 2, shape, data, &t);
    if (rc || (rc = keep(p, t)))
        return rc;
    *out = t;
    return ACTL_OK;
}

/* wq / wk of one layer [heads * hs, dim], rows permuted from llama2.c's adjacent-pair
 * RoPE order into HF's rotate-half order (DESIGN.md 4.3): within head h, row 2i goes to
 * row i and row 2i+1 to row i + hs/2. */
static int l2c_permuted(model_priv *p, const char *name, int64_t heads, int64_t hs,
                        int64_t dim, const float *src, const actl_tensor **out)
{
    actl_tensor *t;
    int64_t shape[2] = {heads * hs, dim};
    int rc = actl_tensor_new(name, ACTL_F32, 2, shape, NULL, &t);
    if (rc)
        return rc;
    float *dst = t->data;
    size_t row = (size_t)dim * sizeof *dst;
    for (int64_t h = 0; h < heads; h++)
        for (int64_t i = 0; i < hs / 2; i++) {
            const float *s = src + (h * hs + 2 * i) * dim;
            memcpy(dst + (h * hs + i) * dim, s, row);
            memcpy(dst + (h * hs + i + hs / 2) * dim, s + dim, row);
        }
    if ((rc = keep(p, t)))
        return rc;
    *out = t;
    return ACTL_OK;
}

static int load_l2c(const char *path, int flags, actl_model *m)
{
    int rc = ACTL_OK, fd = -1;
    uint64_t size;
    model_priv *p = m->priv;
    actl_model_info *in = &m->info;
    if ((rc = actl__open_regular(path, &fd, &size)))
        goto out;
    if (size < L2C_HEADER) {
        rc = actl__err(ACTL_EFORMAT, "'%s': %llu bytes, too short for a llama2.c header (%d "
                       "bytes)", path, (unsigned long long)size, L2C_HEADER);
        goto out;
    }
    if (size > SIZE_MAX) {
        rc = actl__err(ACTL_ELIMIT, "'%s': too large to map", path);
        goto out;
    }
    p->map_len = (size_t)size;
    p->map = mmap(NULL, p->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p->map == MAP_FAILED) {
        p->map = NULL;
        rc = actl__err(ACTL_EIO, "'%s': cannot map: %s", path, strerror(errno));
        goto out;
    }
    int32_t h[7];
    memcpy(h, p->map, sizeof h);
    /* dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len */
    int64_t vocab = h[5] < 0 ? -(int64_t)h[5] : h[5];
    if (h[0] < 1 || h[1] < 1 || h[2] < 1 || h[3] < 1 || h[4] < 1 || vocab < 1 || h[6] < 1 ||
        h[0] > MAX_WIDTH || h[1] > MAX_WIDTH || h[2] > MAX_LAYERS || h[3] > MAX_HEADS ||
        vocab > MAX_WIDTH) {
        rc = actl__err(ACTL_EFORMAT, "'%s': not a llama2.c checkpoint: header dim %d, "
                       "hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, "
                       "seq_len %d", path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
        goto out;
    }
    if (h[0] % h[3] || h[3] % h[4] || (h[0] / h[3]) % 2) {
        rc = actl__err(ACTL_EFORMAT, "'%s': llama2.c header: n_heads %d must divide dim %d "
                       "into an even head size, and n_kv_heads %d must divide n_heads", path,
                       h[3], h[0], h[4]);
        goto out;
    }
    in->dim = h[0];
    in->hidden = h[1];
    in->layers = h[2];
    in->heads = h[3];
    in->kv_heads = h[4];
    in->vocab = vocab;
    in->max_seq = h[6];
    in->tied = h[5] > 0;
    in->head_dim = in->dim / in->heads;
    int64_t dim = in->dim, hid = in->hidden, L = in->layers, hs = in->head_dim;
    int64_t kvd = in->kv_heads * hs;
    /* Floats in file order: token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim,
     * dim], wk, wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden,
     * dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim], freq_cis_real and
     * freq_cis_imag [seq_len, hs/2] each, then wcls [vocab, dim] when untied. */
    uint64_t per_layer, t1, t2, total = 0, bytes;
    bool ok = mul_ok((uint64_t)dim, (uint64_t)dim, &t1) && mul_ok(t1, 2, &t1) &&
              mul_ok((uint64_t)kvd, (uint64_t)dim * 2, &t2) && add_ok(t1, t2, &per_layer) &&
              mul_ok((uint64_t)hid, (uint64_t)dim * 3, &t1) && add_ok(per_layer, t1, &per_layer) &&
              add_ok(per_layer, (uint64_t)dim * 2, &per_layer) &&
              mul_ok(per_layer, (uint64_t)L, &total) &&
              mul_ok((uint64_t)vocab, (uint64_t)dim, &t1) &&
              mul_ok(t1, in->tied ? 1 : 2, &t1) && add_ok(total, t1, &total) &&
              add_ok(total, (uint64_t)dim, &total) &&
              mul_ok((uint64_t)h[6], (uint64_t)hs, &t2) && add_ok(total, t2, &total) &&
              mul_ok(total, 4, &bytes) && add_ok(bytes, L2C_HEADER, &bytes);
    if (!ok) {
        rc = actl__err(ACTL_EFORMAT, "'%s': llama2.c header describes more than 2^64 bytes",
                       path);
        goto out;
    }
    if (bytes != size) {
        rc = actl__err(ACTL_EFORMAT, "'%s': the llama2.c header (dim %lld, hidden_dim %lld, "
                       "n_layers %lld, n_heads %lld, n_kv_heads %lld, vocab_size %d, seq_len "
                       "%lld) needs %llu bytes, the file has %llu", path, (long long)dim,
                       (long long)hid, (long long)L, (long long)in->heads,
                       (long long)in->kv_heads, h[5], (long long)in->max_seq,
                       (unsigned long long)bytes, (unsigned long long)size);
        goto out;
    }
    in->source = "llama2c";
    in->model_id = NULL;
    in->norm_eps = 1e-5;
    in->rope_theta = 10000.0;
    in->rope_type = ACTL_ROPE_DEFAULT;
    in->attention_bias = 0;
    in->widened = (flags & ACTL_MODEL_WIDEN) != 0; /* the weights are F32 either way */
    in->bos_id = 1;
    in->eos_id = 2;
    m->model_type = "llama";
    if (!(m->layers = calloc((size_t)L, sizeof *m->layers))) {
        rc = actl__oom();
        goto out;
    }
    /* The header is 28 bytes, so every float is 4-aligned in the page-aligned map. */
    const float *f = (const float *)((const char *)p->map + L2C_HEADER);
    const float *emb = f, *rms_att = emb + vocab * dim, *wq = rms_att + L * dim;
    const float *wk = wq + L * dim * dim, *wv = wk + L * kvd * dim, *wo = wv + L * kvd * dim;
    const float *rms_ffn = wo + L * dim * dim, *w1 = rms_ffn + L * dim;
    const float *w2 = w1 + L * hid * dim, *w3 = w2 + L * dim * hid;
    const float *rms_final = w3 + L * hid * dim;
    const float *wcls = rms_final + dim + (int64_t)h[6] * hs; /* past both RoPE tables */
    const actl_tensor *t;
    if ((rc = l2c_view(p, "model.embed_tokens.weight", vocab, dim, emb, &m->embed)) ||
        (rc = l2c_view(p, "model.norm.weight", dim, -1, rms_final, &t)))
        goto out;
    m->final_norm = f32(t);
    if (in->tied)
        m->head = m->embed;
    else if ((rc = l2c_view(p, "lm_head.weight", vocab, dim, wcls, &m->head)))
        goto out;
    char name[160];
    for (int64_t l = 0; l < L; l++) {
        actl__layer *ly = &m->layers[l];
        struct {
            const char *part;
            int64_t d0, d1;
            const float *data;
        } v[] = {
            {"input_layernorm.weight", dim, -1, rms_att + l * dim},
            {"post_attention_layernorm.weight", dim, -1, rms_ffn + l * dim},
            {"self_attn.v_proj.weight", kvd, dim, wv + l * kvd * dim},
            {"self_attn.o_proj.weight", dim, dim, wo + l * dim * dim},
            {"mlp.gate_proj.weight", hid, dim, w1 + l * hid * dim},
            {"mlp.up_proj.weight", hid, dim, w3 + l * hid * dim},
            {"mlp.down_proj.weight", dim, hid, w2 + l * dim * hid},
        };
        const actl_tensor **dst[] = {NULL, NULL, &ly->w[ACTL__V], &ly->w[ACTL__O],
                                     &ly->w[ACTL__GATE], &ly->w[ACTL__UP], &ly->w[ACTL__DOWN]};
        for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)l, v[k].part);
            if ((rc = l2c_view(p, name, v[k].d0, v[k].d1, v[k].data, dst[k] ? dst[k] : &t)))
                goto out;
            if (k == 0)
                ly->attn_norm = f32(t);
            else if (k == 1)
                ly->ffn_norm = f32(t);
        }
        snprintf(name, sizeof name, "model.layers.%lld.self_attn.q_proj.weight", (long long)l);
        if ((rc = l2c_permuted(p, name, in->heads, hs, dim, wq + l * dim * dim, &ly->w[ACTL__Q])))
            goto out;
        snprintf(name, sizeof name, "model.layers.%lld.self_attn.k_proj.weight", (long long)l);
        if ((rc = l2c_permuted(p, name, in->kv_heads, hs, dim, wk + l * kvd * dim,
                               &ly->w[ACTL__K])))
            goto out;
    }
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* ---- entry point ------------------------------------------------------------------ */

int actl_model_load(const char *path, int flags, actl_model **out)
{
    int rc = ACTL_OK;
    actl_model *m = NULL;
    char *dcopy = NULL;
    if (!path || !out)
        return actl__err(ACTL_EINVAL, "model load: NULL argument");
    *out = NULL;
    if (flags & ~ACTL_MODEL_WIDEN)
        return actl__err(ACTL_EINVAL, "model load: unknown flags 0x%x", (unsigned)flags);
    if (!actl__exists(path))
        return actl__err(ACTL_ENOTFOUND, "'%s': no such file or directory", path);
    if (!(m = calloc(1, sizeof *m)) || !(m->priv = calloc(1, sizeof(model_priv)))) {
        rc = actl__oom();
        goto out;
    }
    if (actl__is_dir(path))
        rc = load_hf(path, path, flags, m);
    else if (actl__ends_with(path, ".safetensors") || actl__ends_with(path, ".json")) {
        /* A weights file, an index or config.json itself: config.json is beside it, and
         * a config.json path stands for its directory's weights. */
        if (!(dcopy = strdup(path))) {
            rc = actl__oom();
            goto out;
        }
        char *slash = strrchr(dcopy, '/');
        const char *dir = ".";
        if (slash) {
            *slash = '\0';
            dir = slash == dcopy ? "/" : dcopy;
        }
        rc = load_hf(dir, actl__ends_with(path, "config.json") ? dir : path, flags, m);
    } else
        rc = load_l2c(path, flags, m);
    if (rc || (rc = finish(m)))
        goto out;
    *out = m;
    m = NULL;
out:
    actl_model_free(m);
    free(dcopy);
    return rc;
}
