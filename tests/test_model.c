/* test_model.c: actl_model_load (DESIGN.md 4.3; issue 6 "Models"), actl__linear and
 * actl__embed_row.
 *
 * Independent references:
 *  - HF checkpoints generated here: every value is k/16 for a small integer k, exact in
 *    F32, F16 and BF16, computed from the tensor's name and index by gval() below, so
 *    what the model holds is compared with what this file wrote.
 *  - llama2.c: the raw bytes of ../shared/data/llama2c/stories260K.bin read with
 *    test_slurp, offsets computed here from the header, the q/k row permutation of
 *    DESIGN.md 4.3 applied here.
 *  - actl__linear: a plain fp64 loop over the weights decoded by this file's own
 *    F16/BF16 decoder; tolerance 1e-5 relative to sum |x_i w_i| of each output.
 * Fixtures: fixtures/base-tiny (F32), fixtures/base-tiny-sharded, and
 * ../shared/data/hf-tiny-random-llama-2 (BF16; skipped when absent). */
#include "testutil.h"

#include "internal.h"

#include <math.h>
#include <pthread.h>

#define TINY FIXTURES "/base-tiny"
#define TINY_SHARDED FIXTURES "/base-tiny-sharded"
#define ADAPTERS FIXTURES "/adapters/base-tiny"
#define HF_TINY SHARED_DATA "/hf-tiny-random-llama-2"
#define STORIES SHARED_DATA "/llama2c/stories260K.bin"

/* ---- numbers, decoded by this file ------------------------------------------ */

/* The value this file writes at index i of the tensor `name`: k/16, k in [-16, 16]. */
static float gval(const char *name, size_t i)
{
    uint32_t h = 2166136261u;
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    h ^= (uint32_t)i * 2654435761u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return (float)((int)(h % 33) - 16) / 16.0f;
}

/* ---- generated HF checkpoints ----------------------------------------------- */

/* dim 8, intermediate 12, 2 layers, 2 heads of 4, kv heads `kv` (the tensors' shapes),
 * vocab 10. */
#define G_DIM 8
#define G_HID 12
#define G_LAYERS 2
#define G_HEADS 2
#define G_HD 4
#define G_VOCAB 10
#define G_SIZES                                                                          \
    "\"hidden_size\": 8, \"intermediate_size\": 12, \"num_hidden_layers\": 2, "       \
    "\"num_attention_heads\": 2, \"vocab_size\": 10"

typedef struct gen_opts {
    const char *cfg;        /* config.json text */
    actl_dtype dt;          /* of every tensor */
    int kv;                 /* kv heads the tensors are shaped for (0: 2) */
    bool bias;              /* q/k/v biases written */
    bool no_head;           /* lm_head.weight left out */
    const char *skip;       /* a tensor left out */
    const char *bad_shape;  /* a tensor written with one row more */
    const char *int_tensor; /* a tensor written as I32 */
} gen_opts;

static void add_tensor(actl_tensor **ts, size_t *n, const gen_opts *o, const char *name,
                       int64_t d0, int64_t d1)
{
    if (o->skip && !strcmp(o->skip, name))
        return;
    if (o->bad_shape && !strcmp(o->bad_shape, name))
        d0++;
    actl_dtype dt = o->int_tensor && !strcmp(o->int_tensor, name) ? ACTL_I32 : o->dt;
    int64_t shape[2] = {d0, d1};
    actl_tensor *t = NULL;
    assert_ok(actl_tensor_new(name, dt, d1 < 0 ? 1 : 2, shape, NULL, &t));
    size_t numel = (size_t)actl_tensor_numel(t);
    void *data = (void *)actl_tensor_data(t);
    for (size_t i = 0; i < numel; i++) {
        float v = gval(name, i);
        if (dt == ACTL_F32)
            memcpy((char *)data + 4 * i, &v, 4);
        else if (dt == ACTL_F16)
            actl_f32_to_f16(&v, (uint16_t *)data + i, 1);
        else if (dt == ACTL_BF16)
            actl_f32_to_bf16(&v, (uint16_t *)data + i, 1);
        else {
            int32_t k = (int32_t)i;
            memcpy((char *)data + 4 * i, &k, 4);
        }
    }
    ts[(*n)++] = t;
}

/* A temporary directory with config.json and model.safetensors; caller removes and frees. */
static char *gen_model(const gen_opts *o)
{
    char *dir = test_tmpdir(), *p = test_join(dir, "config.json"), name[128];
    test_write_text(p, o->cfg);
    free(p);
    int kv = o->kv ? o->kv : G_HEADS;
    int64_t q = G_HEADS * G_HD, k = kv * G_HD;
    actl_tensor *ts[64];
    size_t n = 0;
    add_tensor(ts, &n, o, "model.embed_tokens.weight", G_VOCAB, G_DIM);
    add_tensor(ts, &n, o, "model.norm.weight", G_DIM, -1);
    if (!o->no_head)
        add_tensor(ts, &n, o, "lm_head.weight", G_VOCAB, G_DIM);
    for (int l = 0; l < G_LAYERS; l++) {
        static const char *const parts[7] = {
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        const int64_t shp[7][2] = {{q, G_DIM},     {k, G_DIM},     {k, G_DIM}, {G_DIM, q},
                                   {G_HID, G_DIM}, {G_HID, G_DIM}, {G_DIM, G_HID}};
        for (int j = 0; j < 7; j++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, parts[j]);
            add_tensor(ts, &n, o, name, shp[j][0], shp[j][1]);
            if (o->bias && j < 3) {
                snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, parts[j]);
                add_tensor(ts, &n, o, name, shp[j][0], -1);
            }
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_tensor(ts, &n, o, name, G_DIM, -1);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_tensor(ts, &n, o, name, G_DIM, -1);
    }
    p = test_join(dir, "model.safetensors");
    assert_ok(actl_st_write(p, (const actl_tensor *const *)ts, n, NULL));
    free(p);
    for (size_t i = 0; i < n; i++)
        actl_tensor_free(ts[i]);
    return dir;
}

/* Loads a generated model; rc and the message are checked by the caller. */
static int gen_load(const gen_opts *o, int flags, actl_model **m)
{
    char *dir = gen_model(o);
    int rc = actl_model_load(dir, flags, m);
    test_rmtree(dir);
    free(dir);
    return rc;
}

static void assert_f32_values(const float *got, const char *name, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != gval(name, i))
            fail_msg("%s[%zu] = %g, wrote %g", name, i, got[i], gval(name, i));
}

static void assert_tensor_values(const actl_tensor *t, const char *name)
{
    for (size_t i = 0; i < (size_t)actl_tensor_numel(t); i++)
        if (test_value(actl_tensor_dtype(t), actl_tensor_data(t), i) != gval(name, i))
            fail_msg("%s[%zu] = %g, wrote %g", name, i,
                     test_value(actl_tensor_dtype(t), actl_tensor_data(t), i), gval(name, i));
}

/* ---- HF: the fixtures ---------------------------------------------------------- */

static void test_model__loads_base_tiny_config_and_modules(void **state)
{
    (void)state;
    actl_model *m = NULL;
    actl_model_info in;
    assert_ok(actl_model_load(TINY, 0, &m));
    actl_model_info_get(m, &in);
    /* fixtures/base-tiny/config.json */
    assert_string_equal(in.source, "hf");
    assert_string_equal(in.model_id, "adapterctl/base-tiny");
    assert_string_equal(m->model_type, "llama");
    assert_int_equal(in.dim, 32);
    assert_int_equal(in.hidden, 48);
    assert_int_equal(in.layers, 2);
    assert_int_equal(in.heads, 4);
    assert_int_equal(in.kv_heads, 2);
    assert_int_equal(in.head_dim, 8);
    assert_int_equal(in.vocab, 64);
    assert_int_equal(in.max_seq, 128);
    assert_true(in.norm_eps == 1e-5);
    assert_true(in.rope_theta == 10000.0);
    assert_int_equal(in.rope_type, ACTL_ROPE_DEFAULT);
    assert_false(in.tied);
    assert_false(in.attention_bias);
    assert_false(in.widened);
    assert_int_equal(in.dtype, ACTL_F32);
    assert_int_equal(in.bos_id, 1);
    assert_int_equal(in.eos_id, 2);
    /* embed + head + final norm + per layer: 2 norms, q, k, v, o, gate, up, down */
    int64_t per_layer = 2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 48 * 32;
    assert_int_equal(in.params, 2 * 64 * 32 + 32 + 2 * per_layer);
    assert_ptr_not_equal(m->head, m->embed);

    /* Kept as stored: every weight views the checkpoint (not owned), same bytes. */
    actl_st *st = NULL;
    assert_ok(actl_st_open(TINY "/model.safetensors", &st));
    char name[128], mod[120];
    for (int64_t s = 0; s <= ACTL__SLOT_HEAD(m); s++) {
        snprintf(name, sizeof name, "%s.weight", actl__slot_name(m, s, mod, sizeof mod));
        const actl_tensor *w = actl__slot_weight(m, s), *ref = actl_st_find(st, name);
        assert_non_null(ref);
        assert_string_equal(actl_tensor_name(w), name);
        assert_false(w->owned);
        assert_int_equal(actl_tensor_nbytes(w), actl_tensor_nbytes(ref));
        assert_memory_equal(actl_tensor_data(w), actl_tensor_data(ref), actl_tensor_nbytes(w));
    }
    assert_null(actl__slot_weight(m, ACTL__SLOT_HEAD(m) + 1));
    assert_string_equal(actl__slot_name(m, 8, name, sizeof name), "model.layers.1.self_attn.k_proj");
    const actl_tensor *fn = actl_st_find(st, "model.norm.weight");
    assert_memory_equal(m->final_norm, actl_tensor_data(fn), 32 * 4);

    /* The module list equals actl_base_load's for the same checkpoint. */
    actl_base *b = NULL;
    assert_ok(actl_base_load(TINY, &b));
    const actl_base *mb = actl_model_base(m);
    assert_int_equal(actl_base_module_count(mb), actl_base_module_count(b));
    assert_string_equal(actl_base_model_id(mb), "adapterctl/base-tiny");
    for (size_t i = 0; i < actl_base_module_count(b); i++) {
        int64_t r1, c1, r2, c2;
        assert_string_equal(actl_base_module(mb, i, &r1, &c1), actl_base_module(b, i, &r2, &c2));
        assert_int_equal(r1, r2);
        assert_int_equal(c1, c2);
    }
    actl_base_free(b);
    actl_st_close(st);
    actl_model_free(m);
}

static void test_model__base_validates_every_fixture_adapter(void **state)
{
    (void)state;
    static const char *const names[] = TEST_FIXTURE_NAMES;
    actl_model *m = NULL;
    assert_ok(actl_model_load(TINY, 0, &m));
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        actl_adapter *a = test_load_fixture("base-tiny", names[i]);
        int rc = actl_adapter_validate(a, actl_model_base(m));
        if (rc)
            fail_msg("%s: %s", names[i], actl_errmsg());
        actl_adapter_free(a);
    }
    actl_model_free(m);
}

static void test_model__sharded_checkpoint_equals_single_file(void **state)
{
    (void)state;
    actl_model *a = NULL, *b = NULL;
    assert_ok(actl_model_load(TINY, 0, &a));
    assert_ok(actl_model_load(TINY_SHARDED, 0, &b));
    for (int64_t s = 0; s <= ACTL__SLOT_HEAD(a); s++) {
        const actl_tensor *x = actl__slot_weight(a, s), *y = actl__slot_weight(b, s);
        assert_int_equal(actl_tensor_nbytes(x), actl_tensor_nbytes(y));
        assert_memory_equal(actl_tensor_data(x), actl_tensor_data(y), actl_tensor_nbytes(x));
    }
    for (int l = 0; l < 2; l++) {
        assert_memory_equal(a->layers[l].attn_norm, b->layers[l].attn_norm, 32 * 4);
        assert_memory_equal(a->layers[l].ffn_norm, b->layers[l].ffn_norm, 32 * 4);
    }
    actl_model_free(a);
    actl_model_free(b);
}

static void test_model__loads_from_weights_file_and_config_paths(void **state)
{
    (void)state;
    actl_model *m = NULL;
    assert_ok(actl_model_load(TINY "/model.safetensors", 0, &m));
    assert_int_equal(m->info.vocab, 64);
    actl_model_free(m);
    assert_ok(actl_model_load(TINY "/config.json", 0, &m));
    assert_int_equal(m->info.dim, 32);
    actl_model_free(m);
}

static void test_model__hf_bf16_kept_as_stored_or_widened(void **state)
{
    (void)state;
    REQUIRE_SHARED(HF_TINY "/model.safetensors");
    actl_model *kept = NULL, *wide = NULL;
    assert_ok(actl_model_load(HF_TINY, 0, &kept));
    assert_ok(actl_model_load(HF_TINY, ACTL_MODEL_WIDEN, &wide));
    /* ../shared/data/README.md: hidden 16, 2 layers, 4 heads, head_dim 4, intermediate 64,
     * vocab 3000, untied. */
    assert_int_equal(kept->info.dim, 16);
    assert_int_equal(kept->info.hidden, 64);
    assert_int_equal(kept->info.head_dim, 4);
    assert_int_equal(kept->info.kv_heads, 4);
    assert_int_equal(kept->info.vocab, 3000);
    assert_false(kept->info.tied);
    assert_int_equal(kept->info.dtype, ACTL_BF16);
    assert_false(kept->info.widened);
    assert_true(wide->info.widened);
    assert_int_equal(wide->info.dtype, ACTL_F32);
    assert_int_equal(kept->info.params, wide->info.params);
    for (int64_t s = 0; s <= ACTL__SLOT_HEAD(kept); s++) {
        const actl_tensor *k = actl__slot_weight(kept, s), *w = actl__slot_weight(wide, s);
        assert_int_equal(actl_tensor_dtype(k), ACTL_BF16);
        assert_int_equal(actl_tensor_dtype(w), ACTL_F32);
        for (size_t i = 0; i < (size_t)actl_tensor_numel(k); i++)
            assert_true(test_value(ACTL_BF16, actl_tensor_data(k), i) ==
                        test_value(ACTL_F32, actl_tensor_data(w), i));
    }
    /* Norms are F32 either way, equal to the stored BF16 values. */
    actl_st *st = NULL;
    assert_ok(actl_st_open(HF_TINY "/model.safetensors", &st));
    const actl_tensor *n0 = actl_st_find(st, "model.layers.1.post_attention_layernorm.weight");
    for (size_t i = 0; i < 16; i++) {
        assert_true(kept->layers[1].ffn_norm[i] == test_value(ACTL_BF16, actl_tensor_data(n0), i));
        assert_true(wide->layers[1].ffn_norm[i] == kept->layers[1].ffn_norm[i]);
    }
    /* embed_row widens the stored row. */
    const actl_tensor *e = actl_st_find(st, "model.embed_tokens.weight");
    float row[16];
    actl__embed_row(kept, 2999, row);
    for (size_t i = 0; i < 16; i++)
        assert_true(row[i] == test_value(ACTL_BF16, actl_tensor_data(e), 2999 * 16 + i));
    actl__embed_row(wide, 2999, row);
    for (size_t i = 0; i < 16; i++)
        assert_true(row[i] == test_value(ACTL_BF16, actl_tensor_data(e), 2999 * 16 + i));
    actl_st_close(st);
    actl_model_free(kept);
    actl_model_free(wide);
}

/* ---- HF: config cases, generated -------------------------------------------------- */

static void test_model__config_defaults_head_dim_kv_heads_theta_eps(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"model_type\": \"llama\", " G_SIZES "}", .dt = ACTL_F32};
    assert_ok(gen_load(&o, 0, &m));
    assert_int_equal(m->info.head_dim, 4);  /* 8 / 2 */
    assert_int_equal(m->info.kv_heads, 2);  /* = heads */
    assert_true(m->info.rope_theta == 10000.0);
    assert_true(m->info.norm_eps == 1e-6);  /* transformers' LlamaConfig */
    assert_int_equal(m->info.max_seq, 2048);
    assert_false(m->info.tied);
    assert_null(m->info.model_id);
    assert_int_equal(m->info.bos_id, -1);
    assert_int_equal(m->info.eos_id, -1);
    assert_int_equal(m->info.rope_type, ACTL_ROPE_DEFAULT);
    assert_tensor_values(m->head, "lm_head.weight");
    assert_tensor_values(m->layers[1].w[ACTL__DOWN], "model.layers.1.mlp.down_proj.weight");
    assert_f32_values(m->layers[0].attn_norm, "model.layers.0.input_layernorm.weight", G_DIM);
    actl_model_free(m);
}

static void test_model__config_values_and_token_lists(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"architectures\": [\"MistralForCausalLM\"], " G_SIZES
                         ", \"num_key_value_heads\": 1, \"rope_theta\": 500000, "
                         "\"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 77, "
                         "\"bos_token_id\": 7, \"eos_token_id\": [9, 8], "
                         "\"_name_or_path\": \"org/tiny\"}",
                  .dt = ACTL_F32, .kv = 1};
    assert_ok(gen_load(&o, 0, &m));
    assert_string_equal(m->model_type, "mistral");
    assert_int_equal(m->info.kv_heads, 1);
    assert_true(m->info.rope_theta == 500000.0);
    assert_true(m->info.norm_eps == 1e-5);
    assert_int_equal(m->info.max_seq, 77);
    assert_int_equal(m->info.bos_id, 7);
    assert_int_equal(m->info.eos_id, 9);
    assert_string_equal(m->info.model_id, "org/tiny");
    assert_string_equal(actl_base_model_id(actl_model_base(m)), "org/tiny");
    int64_t r, c;
    assert_ok(actl_base_find(actl_model_base(m), "model.layers.1.self_attn.v_proj", &r, &c));
    assert_int_equal(r, 4);
    assert_int_equal(c, 8);
    actl_model_free(m);
}

static void test_model__rope_scaling_types(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.dt = ACTL_F32};
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}";
    assert_ok(gen_load(&o, 0, &m));
    assert_int_equal(m->info.rope_type, ACTL_ROPE_LINEAR);
    assert_true(m->info.rope_factor == 4.0);
    actl_model_free(m);
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2}}";
    assert_ok(gen_load(&o, 0, &m));
    assert_int_equal(m->info.rope_type, ACTL_ROPE_LINEAR);
    assert_true(m->info.rope_factor == 2.0);
    actl_model_free(m);
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
            "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
            "\"original_max_position_embeddings\": 8192}}";
    assert_ok(gen_load(&o, 0, &m));
    assert_int_equal(m->info.rope_type, ACTL_ROPE_LLAMA3);
    assert_true(m->info.rope_factor == 8.0);
    assert_true(m->info.rope_low_freq_factor == 1.0);
    assert_true(m->info.rope_high_freq_factor == 4.0);
    assert_int_equal(m->info.rope_original_max, 8192);
    actl_model_free(m);
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"rope_type\": \"default\"}}";
    assert_ok(gen_load(&o, 0, &m));
    assert_int_equal(m->info.rope_type, ACTL_ROPE_DEFAULT);
    actl_model_free(m);

    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}";
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED, "rope_scaling type 'yarn'");
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
            "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0}}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "original_max_position_embeddings");
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES
            ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "'factor' must be a positive number");
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES ", \"rope_scaling\": \"linear\"}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "rope_scaling must be null or an object");
    assert_null(m);
}

static void test_model__attention_bias_llama_flag_and_qwen2_always(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.dt = ACTL_BF16, .bias = true};
    o.cfg = "{\"model_type\": \"llama\", \"attention_bias\": true, " G_SIZES "}";
    assert_ok(gen_load(&o, 0, &m));
    assert_true(m->info.attention_bias);
    assert_f32_values(m->layers[1].bias[ACTL__K], "model.layers.1.self_attn.k_proj.bias", 8);
    assert_f32_values(m->layers[0].bias[ACTL__Q], "model.layers.0.self_attn.q_proj.bias", 8);
    assert_null(m->layers[0].bias[ACTL__O]);
    actl_model_free(m);

    o.cfg = "{\"model_type\": \"qwen2\", " G_SIZES "}";
    assert_ok(gen_load(&o, 0, &m));
    assert_string_equal(m->model_type, "qwen2");
    assert_true(m->info.attention_bias);
    assert_f32_values(m->layers[1].bias[ACTL__V], "model.layers.1.self_attn.v_proj.bias", 8);
    /* q, k, v biases counted */
    assert_int_equal(m->info.params, 2 * G_VOCAB * G_DIM + G_DIM +
                                         G_LAYERS * (2 * G_DIM + 4 * 8 * 8 + 3 * G_HID * G_DIM +
                                                     3 * 8));
    actl_model_free(m);

    /* A LLaMA config without the flag ignores biases in the file. */
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES "}";
    assert_ok(gen_load(&o, 0, &m));
    assert_false(m->info.attention_bias);
    assert_null(m->layers[0].bias[ACTL__Q]);
    actl_model_free(m);

    o.bias = false;
    o.cfg = "{\"model_type\": \"qwen2\", " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_ENOTFOUND, "'model.layers.0.self_attn.q_proj.bias'");
}

static void test_model__tied_and_untied_heads(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.dt = ACTL_F16, .no_head = true};
    o.cfg = "{\"model_type\": \"llama\", \"tie_word_embeddings\": true, " G_SIZES "}";
    assert_ok(gen_load(&o, 0, &m));
    assert_true(m->info.tied);
    assert_ptr_equal(m->head, m->embed);
    assert_ptr_equal(actl__slot_weight(m, ACTL__SLOT_HEAD(m)), m->embed);
    assert_int_equal(m->info.params,
                     G_VOCAB * G_DIM + G_DIM + G_LAYERS * (2 * G_DIM + 4 * 8 * 8 + 3 * G_HID * G_DIM));
    /* lm_head is listed for adapters even when tied, with the embedding's shape. */
    int64_t r, c;
    assert_ok(actl_base_find(actl_model_base(m), "lm_head", &r, &c));
    assert_int_equal(r, G_VOCAB);
    assert_int_equal(c, G_DIM);
    actl_model_free(m);

    /* Tied with lm_head.weight present too: the embedding is the head. */
    o.no_head = false;
    assert_ok(gen_load(&o, 0, &m));
    assert_ptr_equal(m->head, m->embed);
    actl_model_free(m);

    o.no_head = true;
    o.cfg = "{\"model_type\": \"llama\", " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_ENOTFOUND, "tensor 'lm_head.weight' is not in the checkpoint");
    assert_null(m);
}

static void test_model__f16_weights_kept_norms_widened(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"model_type\": \"llama\", " G_SIZES "}", .dt = ACTL_F16};
    assert_ok(gen_load(&o, 0, &m));
    assert_int_equal(m->info.dtype, ACTL_F16);
    assert_int_equal(actl_tensor_dtype(m->layers[0].w[ACTL__GATE]), ACTL_F16);
    assert_tensor_values(m->layers[0].w[ACTL__GATE], "model.layers.0.mlp.gate_proj.weight");
    assert_f32_values(m->layers[1].ffn_norm, "model.layers.1.post_attention_layernorm.weight",
                      G_DIM);
    assert_f32_values(m->final_norm, "model.norm.weight", G_DIM);
    float row[G_DIM];
    actl__embed_row(m, 3, row);
    for (size_t i = 0; i < G_DIM; i++)
        assert_true(row[i] == gval("model.embed_tokens.weight", 3 * G_DIM + i));
    actl_model_free(m);
    assert_ok(gen_load(&o, ACTL_MODEL_WIDEN, &m));
    assert_int_equal(m->info.dtype, ACTL_F32);
    assert_tensor_values(m->layers[0].w[ACTL__GATE], "model.layers.0.mlp.gate_proj.weight");
    assert_tensor_values(m->embed, "model.embed_tokens.weight");
    actl_model_free(m);
}

static void test_model__refuses_missing_tensor_naming_it(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"model_type\": \"llama\", " G_SIZES "}", .dt = ACTL_F32,
                  .skip = "model.layers.1.mlp.up_proj.weight"};
    assert_err(gen_load(&o, 0, &m), ACTL_ENOTFOUND,
               "tensor 'model.layers.1.mlp.up_proj.weight' is not in the checkpoint");
    o.skip = "model.layers.0.input_layernorm.weight";
    assert_err(gen_load(&o, 0, &m), ACTL_ENOTFOUND, "'model.layers.0.input_layernorm.weight'");
    assert_null(m);
}

/* A config.json claiming far more layers than its weights hold is refused
 * by the last layer's absence, before memory is sized by the claim. */
static void test_model__refuses_layer_count_the_weights_do_not_back(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"model_type\": \"llama\", \"hidden_size\": 8, "
                         "\"intermediate_size\": 12, \"num_hidden_layers\": 65536, "
                         "\"num_attention_heads\": 2, \"vocab_size\": 10}",
                  .dt = ACTL_F32};
    assert_err(gen_load(&o, 0, &m), ACTL_ENOTFOUND,
               "gives 65536 layers, but tensor 'model.layers.65535.input_layernorm.weight' is "
               "not in the checkpoint");
    assert_null(m);
}

static void test_model__refuses_wrong_shape_naming_tensor_and_shapes(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"model_type\": \"llama\", " G_SIZES "}", .dt = ACTL_F32,
                  .bad_shape = "model.layers.1.self_attn.o_proj.weight"};
    assert_err(gen_load(&o, 0, &m), ACTL_ESHAPE,
               "tensor 'model.layers.1.self_attn.o_proj.weight' has shape [9, 8], expected [8, 8]");
    o.bad_shape = "model.norm.weight";
    assert_err(gen_load(&o, 0, &m), ACTL_ESHAPE, "has shape [9], expected [8]");
    /* The config says 1 kv head, the tensors have 2. */
    o.bad_shape = NULL;
    o.cfg = "{\"model_type\": \"llama\", \"num_key_value_heads\": 1, " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_ESHAPE,
               "'model.layers.0.self_attn.k_proj.weight' has shape [8, 8], expected [4, 8]");
    assert_null(m);
}

static void test_model__refuses_integer_weights(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.cfg = "{\"model_type\": \"llama\", " G_SIZES "}", .dt = ACTL_F32,
                  .int_tensor = "model.layers.0.self_attn.v_proj.weight"};
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED,
               "'model.layers.0.self_attn.v_proj.weight' has dtype I32");
    assert_null(m);
}

static void test_model__refuses_unsupported_architectures(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.dt = ACTL_F32};
    o.cfg = "{\"model_type\": \"gpt2\", " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED, "model_type 'gpt2' is not supported");
    o.cfg = "{\"architectures\": [\"FalconForCausalLM\"], " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED, "architecture 'FalconForCausalLM'");
    o.cfg = "{" G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED, "neither model_type nor architectures");
    o.cfg = "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_act\": \"gelu\", " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED, "hidden_act 'gelu'");
    o.cfg = "{\"model_type\": \"llama\", \"mlp_bias\": true, " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EUNSUPPORTED, "mlp_bias");
    assert_null(m);
}

static void test_model__refuses_malformed_configs(void **state)
{
    (void)state;
    actl_model *m = NULL;
    gen_opts o = {.dt = ACTL_F32};
    o.cfg = "{\"model_type\": \"llama\", \"hidden_size\": 8, \"intermediate_size\": 12, "
            "\"num_attention_heads\": 2, \"vocab_size\": 10}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "key 'num_hidden_layers' is missing");
    o.cfg = "{\"model_type\": \"llama\", \"num_key_value_heads\": 3, " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT,
               "num_attention_heads 2 is not a multiple of num_key_value_heads 3");
    o.cfg = "{\"model_type\": \"llama\", \"head_dim\": 3, " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "head_dim 3 is odd");
    o.cfg = "{\"model_type\": \"llama\", \"hidden_size\": 9, \"intermediate_size\": 12, "
            "\"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"vocab_size\": 10}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "hidden_size 9 is not a multiple");
    o.cfg = "{\"model_type\": \"llama\", \"rope_theta\": -1, " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "'rope_theta' must be a positive number");
    o.cfg = "{\"model_type\": \"llama\", \"eos_token_id\": \"x\", " G_SIZES "}";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "'eos_token_id'");
    o.cfg = "[1]";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "not a JSON object");
    o.cfg = "{\"model_type\": ";
    assert_err(gen_load(&o, 0, &m), ACTL_EFORMAT, "config.json");
    assert_null(m);
}

static void test_model__refuses_bad_arguments_and_absent_paths(void **state)
{
    (void)state;
    actl_model *m = NULL;
    assert_err(actl_model_load(NULL, 0, &m), ACTL_EINVAL, "NULL");
    assert_err(actl_model_load(TINY, 0x100, &m), ACTL_EINVAL, "unknown flags");
    assert_err(actl_model_load("no/such/model", 0, &m), ACTL_ENOTFOUND, "'no/such/model'");
    char *dir = test_tmpdir();
    assert_err(actl_model_load(dir, 0, &m), ACTL_ENOTFOUND, "no config.json");
    char *cfg = test_join(dir, "config.json");
    test_write_text(cfg, "{\"model_type\": \"llama\", " G_SIZES "}");
    assert_err(actl_model_load(dir, 0, &m), ACTL_ENOTFOUND, "model.safetensors");
    free(cfg);
    test_rmtree(dir);
    free(dir);
    assert_null(m);
    actl_model_free(NULL);
    actl_model_info in;
    actl_model_info_get(NULL, &in);
    assert_int_equal(in.dim, 0);
    assert_null(actl_model_base(NULL));
}

/* ---- llama2.c ------------------------------------------------------------------- */

static int32_t hdr(const unsigned char *raw, int i)
{
    int32_t v;
    memcpy(&v, raw + 4 * i, 4);
    return v;
}

static void test_model__llama2c_stories260k_header_and_layout(void **state)
{
    (void)state;
    REQUIRE_SHARED(STORIES);
    actl_model *m = NULL;
    assert_ok(actl_model_load(STORIES, 0, &m));
    actl_model_info in;
    actl_model_info_get(m, &in);
    /* ../shared/data/README.md */
    assert_string_equal(in.source, "llama2c");
    assert_null(in.model_id);
    assert_string_equal(m->model_type, "llama");
    assert_int_equal(in.dim, 64);
    assert_int_equal(in.hidden, 172);
    assert_int_equal(in.layers, 5);
    assert_int_equal(in.heads, 8);
    assert_int_equal(in.kv_heads, 4);
    assert_int_equal(in.head_dim, 8);
    assert_int_equal(in.vocab, 512);
    assert_int_equal(in.max_seq, 512);
    assert_true(in.tied);
    assert_int_equal(in.bos_id, 1);
    assert_int_equal(in.eos_id, 2);
    assert_true(in.norm_eps == 1e-5);
    assert_true(in.rope_theta == 10000.0);
    assert_int_equal(in.dtype, ACTL_F32);
    assert_ptr_equal(m->head, m->embed);
    assert_int_equal(actl_base_module_count(actl_model_base(m)), 5 * 7 + 2);

    size_t len;
    unsigned char *raw = test_slurp(STORIES, &len);
    size_t dim = 64, hid = 172, L = 5, hs = 8, kvd = 32, V = 512;
    assert_int_equal(hdr(raw, 0), 64);
    /* float offsets, in file order */
    size_t emb = 0, rms_att = emb + V * dim, wq = rms_att + L * dim, wk = wq + L * dim * dim;
    size_t wv = wk + L * kvd * dim, wo = wv + L * kvd * dim, rms_ffn = wo + L * dim * dim;
    size_t w1 = rms_ffn + L * dim, w2 = w1 + L * hid * dim, w3 = w2 + L * dim * hid;
    size_t rms_final = w3 + L * hid * dim;
    assert_int_equal(len, 28 + 4 * (rms_final + dim + 512 * hs));
#define RAW(off) (raw + 28 + 4 * (off))
    assert_memory_equal(actl_tensor_data(m->embed), RAW(emb), V * dim * 4);
    assert_memory_equal(m->final_norm, RAW(rms_final), dim * 4);
    for (size_t l = 0; l < L; l++) {
        const actl__layer *ly = &m->layers[l];
        assert_memory_equal(ly->attn_norm, RAW(rms_att + l * dim), dim * 4);
        assert_memory_equal(ly->ffn_norm, RAW(rms_ffn + l * dim), dim * 4);
        assert_memory_equal(actl_tensor_data(ly->w[ACTL__V]), RAW(wv + l * kvd * dim), kvd * dim * 4);
        assert_memory_equal(actl_tensor_data(ly->w[ACTL__O]), RAW(wo + l * dim * dim), dim * dim * 4);
        assert_memory_equal(actl_tensor_data(ly->w[ACTL__GATE]), RAW(w1 + l * hid * dim), hid * dim * 4);
        assert_memory_equal(actl_tensor_data(ly->w[ACTL__DOWN]), RAW(w2 + l * dim * hid), hid * dim * 4);
        assert_memory_equal(actl_tensor_data(ly->w[ACTL__UP]), RAW(w3 + l * hid * dim), hid * dim * 4);
        /* q [8 heads x 8, 64] and k [4 heads x 8, 64]: within head h, file row 2i is row i
         * and file row 2i+1 is row i + 4. */
        const unsigned char *q = actl_tensor_data(ly->w[ACTL__Q]);
        const unsigned char *k = actl_tensor_data(ly->w[ACTL__K]);
        assert_int_equal(actl_tensor_shape(ly->w[ACTL__Q])[0], 64);
        assert_int_equal(actl_tensor_shape(ly->w[ACTL__K])[0], 32);
        for (size_t h = 0; h < 8; h++)
            for (size_t i = 0; i < hs / 2; i++) {
                size_t fr = wq + l * dim * dim + (h * hs + 2 * i) * dim;
                assert_memory_equal(q + (h * hs + i) * dim * 4, RAW(fr), dim * 4);
                assert_memory_equal(q + (h * hs + i + hs / 2) * dim * 4, RAW(fr + dim), dim * 4);
                if (h >= 4)
                    continue;
                fr = wk + l * kvd * dim + (h * hs + 2 * i) * dim;
                assert_memory_equal(k + (h * hs + i) * dim * 4, RAW(fr), dim * 4);
                assert_memory_equal(k + (h * hs + i + hs / 2) * dim * 4, RAW(fr + dim), dim * 4);
            }
    }
#undef RAW
    char name[128];
    assert_string_equal(actl_tensor_name(m->layers[3].w[ACTL__Q]),
                        "model.layers.3.self_attn.q_proj.weight");
    assert_string_equal(actl__slot_name(m, 3 * 7 + ACTL__DOWN, name, sizeof name),
                        "model.layers.3.mlp.down_proj");
    free(raw);
    actl_model_free(m);
}

/* A tiny llama2.c file: header h[7], then floats 0, 1, 2, ... for every tensor. */
static char *write_l2c(const char *dir, const int32_t h[7], size_t nfloats)
{
    char *p = test_join(dir, "model.bin");
    size_t n = 28 + 4 * nfloats;
    unsigned char *b = malloc(n);
    memcpy(b, h, 28);
    for (size_t i = 0; i < nfloats; i++) {
        float f = (float)i;
        memcpy(b + 28 + 4 * i, &f, 4);
    }
    test_write_file(p, b, n);
    free(b);
    return p;
}

static void test_model__llama2c_untied_head_follows_rope_tables(void **state)
{
    (void)state;
    /* dim 4, hidden 6, 1 layer, 1 head of 4, 1 kv head, vocab 5 untied, seq_len 3 */
    const int32_t h[7] = {4, 6, 1, 1, 1, -5, 3};
    size_t emb = 20, per_layer = 4 + 16 + 16 + 16 + 16 + 4 + 3 * 24, rope = 3 * 2 * 2;
    size_t wq = emb + 4, head = emb + per_layer + 4 + rope;
    char *dir = test_tmpdir(), *p = write_l2c(dir, h, head + 20);
    actl_model *m = NULL;
    assert_ok(actl_model_load(p, 0, &m));
    assert_false(m->info.tied);
    assert_int_equal(m->info.vocab, 5);
    assert_int_equal(m->info.max_seq, 3);
    assert_ptr_not_equal(m->head, m->embed);
    float row[4];
    memcpy(row, actl_tensor_data(m->head), 16);
    assert_true(row[0] == (float)head);
    assert_true(row[3] == (float)(head + 3));
    actl__embed_row(m, 4, row);
    assert_true(row[0] == 16.0f);
    /* q: one head of 4: file rows 0, 1, 2, 3 become rows 0, 2, 1, 3 (pairs (0,1), (2,3)
     * to (0,2), (1,3)). */
    static const int from[4] = {0, 2, 1, 3};
    for (int r = 0; r < 4; r++) {
        memcpy(row, (const char *)actl_tensor_data(m->layers[0].w[ACTL__Q]) + 16 * r, 16);
        assert_true(row[0] == (float)(wq + 4 * from[r]));
    }
    actl_model_free(m);
    free(p);
    test_rmtree(dir);
    free(dir);
}

static void test_model__llama2c_refuses_truncated_and_lying_files(void **state)
{
    (void)state;
    REQUIRE_SHARED(STORIES);
    size_t len;
    unsigned char *raw = test_slurp(STORIES, &len);
    char *dir = test_tmpdir(), *p = test_join(dir, "m.bin");
    actl_model *m = NULL;
    char want[128];

    test_write_file(p, raw, len - 100);
    snprintf(want, sizeof want, "needs %zu bytes, the file has %zu", len, len - 100);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, want);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, p);

    /* n_layers 6: the file is a layer short */
    unsigned char *lie = malloc(len);
    memcpy(lie, raw, len);
    int32_t v = 6;
    memcpy(lie + 8, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "n_layers 6");
    /* vocab -512 (untied): wcls would follow, the file ends */
    memcpy(lie, raw, len);
    v = -512;
    memcpy(lie + 20, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "needs");
    /* n_layers 4: bytes left over */
    memcpy(lie, raw, len);
    v = 4;
    memcpy(lie + 8, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "needs");
    /* n_heads 7 does not divide dim 64 */
    memcpy(lie, raw, len);
    v = 7;
    memcpy(lie + 12, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "n_heads 7 must divide dim 64");
    /* n_kv_heads 3 does not divide n_heads 8 */
    memcpy(lie, raw, len);
    v = 3;
    memcpy(lie + 16, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "n_kv_heads 3");
    /* a zero and a huge dimension */
    memcpy(lie, raw, len);
    v = 0;
    memcpy(lie + 24, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "not a llama2.c checkpoint");
    memcpy(lie, raw, len);
    v = INT32_MIN;
    memcpy(lie + 20, &v, 4);
    test_write_file(p, lie, len);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "not a llama2.c checkpoint");
    /* header values whose product passes 2^64 */
    const int32_t big[7] = {1 << 30, 1 << 30, 65536, 1 << 16, 1 << 16, 1 << 30, 1 << 30};
    test_write_file(p, big, 28);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "more than 2^64 bytes");
    test_write_file(p, raw, 20);
    assert_err(actl_model_load(p, 0, &m), ACTL_EFORMAT, "too short for a llama2.c header");
    assert_null(m);
    free(lie);
    free(raw);
    free(p);
    test_rmtree(dir);
    free(dir);
}

/* ---- actl__linear ------------------------------------------------------------------ */

/* A [out, in] tensor of dtype dt holding gval values (exact in every dtype). */
static actl_tensor *make_w(actl_dtype dt, int64_t out, int64_t in)
{
    gen_opts o = {.dt = dt};
    actl_tensor *ts[1];
    size_t n = 0;
    add_tensor(ts, &n, &o, "w", out, in);
    return ts[0];
}

static void fill_x(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((int)((i * 7919u + seed * 104729u) % 201u) - 100) / 37.0f;
}

/* y vs y0 + x Wᵀ in fp64, relative to sum |x_i w_i| of each output. */
static void check_linear(const actl_tensor *W, const float *x, int64_t rows, const float *y,
                         const float *y0)
{
    int64_t out = actl_tensor_shape(W)[0], in = actl_tensor_shape(W)[1];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = y0 ? y0[r * out + o] : 0, mag = y0 ? fabs(y0[r * out + o]) : 0;
            for (int64_t i = 0; i < in; i++) {
                double w = test_value(actl_tensor_dtype(W), actl_tensor_data(W), (size_t)(o * in + i));
                s += (double)x[r * in + i] * w;
                mag += fabs((double)x[r * in + i] * w);
            }
            if (fabs(y[r * out + o] - s) > 1e-5 * (mag > 1 ? mag : 1))
                fail_msg("%s y[%lld, %lld] = %.9g, fp64 %.9g", actl_dtype_name(actl_tensor_dtype(W)),
                         (long long)r, (long long)o, y[r * out + o], s);
        }
}

static void test_model__linear_matches_fp64_for_f32_f16_bf16(void **state)
{
    (void)state;
    /* in 1000: blocks of 131 rows, so out 300 spans 3 blocks, the last one partial; in 64:
     * one block of 513 rows */
    const actl_dtype dts[3] = {ACTL_F32, ACTL_F16, ACTL_BF16};
    const int64_t shapes[3][2] = {{300, 1000}, {7, 5}, {513, 64}};
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < 3; s++) {
            int64_t out = shapes[s][0], in = shapes[s][1];
            actl_tensor *W = make_w(dts[d], out, in);
            for (int64_t rows = 1; rows <= 9; rows += 4) {
                float *x = malloc(sizeof(float) * (size_t)(rows * in));
                float *y = malloc(sizeof(float) * (size_t)(rows * out));
                float *y0 = malloc(sizeof(float) * (size_t)(rows * out));
                fill_x(x, (size_t)(rows * in), (unsigned)rows);
                for (int64_t i = 0; i < rows * out; i++)
                    y[i] = NAN; /* beta 0 must not read y */
                assert_ok(actl__linear(W, x, rows, y, false));
                check_linear(W, x, rows, y, NULL);
                /* accumulate: y += x Wᵀ */
                fill_x(y0, (size_t)(rows * out), 99);
                memcpy(y, y0, sizeof(float) * (size_t)(rows * out));
                assert_ok(actl__linear(W, x, rows, y, true));
                check_linear(W, x, rows, y, y0);
                free(x);
                free(y);
                free(y0);
            }
            actl_tensor_free(W);
        }
}

static void test_model__linear_reads_unaligned_views(void **state)
{
    (void)state;
    /* A view at an odd address, as a safetensors file laid out by another writer may give. */
    const actl_dtype dts[3] = {ACTL_F32, ACTL_F16, ACTL_BF16};
    for (int d = 0; d < 3; d++) {
        actl_tensor *W = make_w(dts[d], 40, 33), *V = NULL;
        size_t nb = actl_tensor_nbytes(W);
        unsigned char *buf = malloc(nb + 1);
        memcpy(buf + 1, actl_tensor_data(W), nb);
        const int64_t shape[2] = {40, 33};
        assert_ok(actl__tensor_view("v", dts[d], 2, shape, buf + 1, &V));
        float x[2 * 33], y[2 * 40];
        fill_x(x, 66, 3);
        assert_ok(actl__linear(V, x, 2, y, false));
        check_linear(W, x, 2, y, NULL);
        actl_tensor_free(V);
        actl_tensor_free(W);
        free(buf);
    }
}

static void test_model__linear_refuses_non_matrix_weights(void **state)
{
    (void)state;
    actl_tensor *t = NULL;
    const int64_t shape[2] = {2, 2};
    float x[2] = {1, 2}, y[2];
    assert_ok(actl_tensor_new("ids", ACTL_I32, 2, shape, NULL, &t));
    assert_err(actl__linear(t, x, 1, y, false), ACTL_EINVAL, "'ids' is not a 2-D");
    actl_tensor_free(t);
    assert_ok(actl_tensor_new("vec", ACTL_F32, 1, shape, NULL, &t));
    assert_err(actl__linear(t, x, 1, y, false), ACTL_EINVAL, "'vec'");
    actl_tensor_free(t);
}

typedef struct lin_job {
    const actl_tensor *W;
    const float *x;
    float *y;
    int64_t rows;
    int rc;
} lin_job;

static void *lin_thread(void *arg)
{
    lin_job *j = arg;
    for (int k = 0; k < 20 && !j->rc; k++)
        j->rc = actl__linear(j->W, j->x, j->rows, j->y, false);
    return NULL;
}

static void test_model__linear_is_thread_safe(void **state)
{
    (void)state;
    /* Each thread widens into its own buffer: concurrent calls on different shapes must
     * each give their own exact result. */
    enum { T = 4 };
    actl_tensor *W[T];
    float *x[T], *y[T];
    lin_job jobs[T];
    pthread_t th[T];
    for (int t = 0; t < T; t++) {
        int64_t out = 200 + 37 * t, in = 100 + 300 * t;
        W[t] = make_w(t % 2 ? ACTL_BF16 : ACTL_F16, out, in);
        x[t] = malloc(sizeof(float) * (size_t)(3 * in));
        y[t] = malloc(sizeof(float) * (size_t)(3 * out));
        fill_x(x[t], (size_t)(3 * in), (unsigned)t);
        jobs[t] = (lin_job){W[t], x[t], y[t], 3, 0};
        assert_int_equal(pthread_create(&th[t], NULL, lin_thread, &jobs[t]), 0);
    }
    for (int t = 0; t < T; t++) {
        assert_int_equal(pthread_join(th[t], NULL), 0);
        assert_ok(jobs[t].rc);
        check_linear(W[t], x[t], 3, y[t], NULL);
        actl_tensor_free(W[t]);
        free(x[t]);
        free(y[t]);
    }
}

static void test_model__linear_widened_model_gives_the_same_outputs(void **state)
{
    (void)state;
    REQUIRE_SHARED(HF_TINY "/model.safetensors");
    actl_model *kept = NULL, *wide = NULL;
    assert_ok(actl_model_load(HF_TINY, 0, &kept));
    assert_ok(actl_model_load(HF_TINY, ACTL_MODEL_WIDEN, &wide));
    for (int64_t s = 0; s <= ACTL__SLOT_HEAD(kept); s++) {
        const actl_tensor *k = actl__slot_weight(kept, s), *w = actl__slot_weight(wide, s);
        int64_t out = actl_tensor_shape(k)[0], in = actl_tensor_shape(k)[1], rows = 5;
        float *x = malloc(sizeof(float) * (size_t)(rows * in));
        float *y1 = malloc(sizeof(float) * (size_t)(rows * out));
        float *y2 = malloc(sizeof(float) * (size_t)(rows * out));
        fill_x(x, (size_t)(rows * in), (unsigned)s);
        assert_ok(actl__linear(k, x, rows, y1, false));
        assert_ok(actl__linear(w, x, rows, y2, false));
        check_linear(k, x, rows, y1, NULL);
        for (int64_t i = 0; i < rows * out; i++)
            assert_true(fabsf(y1[i] - y2[i]) <= 1e-5f * (fabsf(y2[i]) > 1 ? fabsf(y2[i]) : 1));
        free(x);
        free(y1);
        free(y2);
    }
    actl_model_free(kept);
    actl_model_free(wide);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model__loads_base_tiny_config_and_modules),
        cmocka_unit_test(test_model__base_validates_every_fixture_adapter),
        cmocka_unit_test(test_model__sharded_checkpoint_equals_single_file),
        cmocka_unit_test(test_model__loads_from_weights_file_and_config_paths),
        cmocka_unit_test(test_model__hf_bf16_kept_as_stored_or_widened),
        cmocka_unit_test(test_model__config_defaults_head_dim_kv_heads_theta_eps),
        cmocka_unit_test(test_model__config_values_and_token_lists),
        cmocka_unit_test(test_model__rope_scaling_types),
        cmocka_unit_test(test_model__attention_bias_llama_flag_and_qwen2_always),
        cmocka_unit_test(test_model__tied_and_untied_heads),
        cmocka_unit_test(test_model__f16_weights_kept_norms_widened),
        cmocka_unit_test(test_model__refuses_missing_tensor_naming_it),
        cmocka_unit_test(test_model__refuses_layer_count_the_weights_do_not_back),
        cmocka_unit_test(test_model__refuses_wrong_shape_naming_tensor_and_shapes),
        cmocka_unit_test(test_model__refuses_integer_weights),
        cmocka_unit_test(test_model__refuses_unsupported_architectures),
        cmocka_unit_test(test_model__refuses_malformed_configs),
        cmocka_unit_test(test_model__refuses_bad_arguments_and_absent_paths),
        cmocka_unit_test(test_model__llama2c_stories260k_header_and_layout),
        cmocka_unit_test(test_model__llama2c_untied_head_follows_rope_tables),
        cmocka_unit_test(test_model__llama2c_refuses_truncated_and_lying_files),
        cmocka_unit_test(test_model__linear_matches_fp64_for_f32_f16_bf16),
        cmocka_unit_test(test_model__linear_reads_unaligned_views),
        cmocka_unit_test(test_model__linear_refuses_non_matrix_weights),
        cmocka_unit_test(test_model__linear_is_thread_safe),
        cmocka_unit_test(test_model__linear_widened_model_gives_the_same_outputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
