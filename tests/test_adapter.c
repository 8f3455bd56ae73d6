/* test_adapter.c: importing the adapter fixtures, per-module scales, export/import round
 * trips, MoS materialization, base shapes and validation against a base.
 * Error paths of the import live in test_peft.c. */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <sys/stat.h>

#include <jansson.h>

#include "internal.h"

#define ADAPTERS FIXTURES "/adapters"
#define BASE_TINY FIXTURES "/base-tiny"
#define HF_TINY SHARED_DATA "/hf-tiny-random-llama-2"

/* Every fixture gen_adapters writes, for both bases. */
static const char *const fixture_names[] = TEST_FIXTURE_NAMES;
#define N_FIXTURES (sizeof fixture_names / sizeof fixture_names[0])

static actl_module_info module_named(const actl_adapter *a, const char *name)
{
    actl_module_info mi;
    for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
        assert_ok(actl_adapter_module(a, i, &mi));
        if (strcmp(mi.name, name) == 0)
            return mi;
    }
    fail_msg("no module '%s'", name);
    return mi;
}

#define NEAR(x, y) assert_true(fabs((double)(x) - (double)(y)) < 1e-12)

/* ---- import ------------------------------------------------------------------ */

static void test_import__every_fixture_kind(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        actl_kind kind;
        size_t modules; /* per layer of 2 */
    } want[] = {
        {"lora", ACTL_KIND_LORA, 2},          {"lora-patterns", ACTL_KIND_LORA, 7},
        {"lora-dora", ACTL_KIND_LORA, 2},     {"lora-bias", ACTL_KIND_LORA, 2},
        {"lora-bf16", ACTL_KIND_LORA, 4},     {"lora-f16", ACTL_KIND_LORA, 4},
        {"road-1", ACTL_KIND_ROAD, 2},        {"road-2", ACTL_KIND_ROAD, 4},
        {"road-4", ACTL_KIND_ROAD, 2},        {"bottleneck-series", ACTL_KIND_BOTTLENECK, 3},
        {"bottleneck-parallel", ACTL_KIND_BOTTLENECK, 3}, {"mos", ACTL_KIND_MOS, 3},
    };
    static const char *const bases[] = {"hf-tiny", "base-tiny"};
    for (int b = 0; b < 2; b++)
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            actl_adapter *a = test_load_fixture(bases[b], want[i].name);
            actl_adapter_info info;
            actl_adapter_info_get(a, &info);
            assert_int_equal(info.kind, want[i].kind);
            assert_int_equal(info.module_count, 2 * want[i].modules);
            assert_int_equal(actl_adapter_module_count(a), 2 * want[i].modules);
            assert_int_equal(info.tensor_count, actl_adapter_tensor_count(a));
            assert_non_null(info.base_model);
            actl_adapter_free(a);
        }
}

static void test_import__lora_facts(void **state)
{
    (void)state;
    actl_adapter *a = test_load_fixture("hf-tiny", "lora");
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    assert_string_equal(info.base_model, "stas/tiny-random-llama-2");
    assert_int_equal(info.rank, 4);
    NEAR(info.alpha, 8);
    /* 2 layers x (q, v) x (A [4, 16] + B [16, 4]) F32 */
    assert_int_equal(info.tensor_count, 8);
    assert_int_equal(info.params, 8 * 64);
    assert_int_equal(info.bytes, 8 * 64 * 4);
    actl_module_info mi = module_named(a, "model.layers.1.self_attn.v_proj");
    assert_int_equal(mi.rank, 4);
    NEAR(mi.scale, 8.0 / 4.0);
    assert_int_equal(mi.in_features, 16);
    assert_int_equal(mi.out_features, 16);
    assert_int_equal(mi.dtype, ACTL_F32);
    assert_int_equal(mi.params, 128);
    /* tensors sorted by key, found by key */
    for (size_t i = 1; i < actl_adapter_tensor_count(a); i++)
        assert_true(strcmp(actl_tensor_name(actl_adapter_tensor(a, i - 1)),
                           actl_tensor_name(actl_adapter_tensor(a, i))) < 0);
    const actl_tensor *t =
        actl_adapter_find(a, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
    assert_non_null(t);
    assert_int_equal(actl_tensor_shape(t)[0], 16);
    assert_int_equal(actl_tensor_shape(t)[1], 4);
    assert_null(actl_adapter_find(a, "model.layers.0.self_attn.q_proj.lora_B.weight"));
    /* zero copy: the tensors view the mapped file */
    assert_non_null(a->st);
    assert_false(a->owns_tensors);
    assert_int_equal(actl_adapter_module(a, 99, &mi), ACTL_EINVAL);
    actl_adapter_free(a);
}

/* rank_pattern + alpha_pattern + use_rslora, with the expected scale of every module
 * written out by hand from the fixture's config (see fixtures/gen_adapters.c):
 * r 4, lora_alpha 8, rsLoRA s = alpha / sqrt(r). */
static void test_import__pattern_scales_by_hand(void **state)
{
    (void)state;
    static const struct {
        const char *module;
        int rank;
        double alpha, scale;
    } want[] = {
        /* "q_proj": 2 */
        {"model.layers.0.self_attn.q_proj", 2, 8, 5.656854249492380 /* 8/sqrt(2) */},
        /* regex key "layers\.1\.self_attn\.q_proj": 6 comes first and wins over "q_proj" */
        {"model.layers.1.self_attn.q_proj", 6, 8, 3.265986323710904 /* 8/sqrt(6) */},
        /* alpha "self_attn\.(k|v)_proj": 16 */
        {"model.layers.0.self_attn.k_proj", 4, 16, 8.0},
        /* v matches "self_attn\.(k|v)_proj" (16) before "v_proj" (32): first match wins */
        {"model.layers.1.self_attn.v_proj", 4, 16, 8.0},
        /* "proj" matches nothing: a key must start a name component */
        {"model.layers.0.self_attn.o_proj", 4, 8, 4.0},
        /* "mlp\.(gate|up)_proj": 3 */
        {"model.layers.0.mlp.gate_proj", 3, 8, 4.618802153517006 /* 8/sqrt(3) */},
        {"model.layers.1.mlp.up_proj", 3, 8, 4.618802153517006},
        /* alpha "down_proj": 2.5 */
        {"model.layers.1.mlp.down_proj", 4, 2.5, 1.25},
    };
    static const char *const bases[] = {"hf-tiny", "base-tiny"};
    for (int b = 0; b < 2; b++) {
        actl_adapter *a = test_load_fixture(bases[b], "lora-patterns");
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        assert_true(info.use_rslora);
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            actl_module_info mi = module_named(a, want[i].module);
            assert_int_equal(mi.rank, want[i].rank);
            NEAR(mi.alpha, want[i].alpha);
            assert_true(fabs(mi.scale - want[i].scale) < 1e-12);
        }
        actl_adapter_free(a);
    }
}

static void test_import__options(void **state)
{
    (void)state;
    actl_adapter_info info;
    actl_module_info mi;

    actl_adapter *a = test_load_fixture("hf-tiny", "lora-fanin");
    actl_adapter_info_get(a, &info);
    assert_true(info.fan_in_fan_out);
    actl_adapter_free(a);

    a = test_load_fixture("hf-tiny", "lora-dora");
    actl_adapter_info_get(a, &info);
    assert_true(info.use_dora);
    mi = module_named(a, "model.layers.0.self_attn.q_proj");
    assert_int_equal(mi.flags, ACTL_MOD_DORA);
    actl_adapter_free(a);

    a = test_load_fixture("hf-tiny", "lora-bias");
    mi = module_named(a, "model.layers.0.self_attn.v_proj");
    assert_int_equal(mi.flags, ACTL_MOD_BIAS);
    actl_adapter_free(a);

    /* embedding LoRA: A [2, 3000], B [16, 2]; lm_head kept whole beside it */
    a = test_load_fixture("hf-tiny", "lora-embedding");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.module_count, 1);
    assert_int_equal(info.tensor_count, 3);
    mi = module_named(a, "model.embed_tokens");
    assert_int_equal(mi.flags, ACTL_MOD_EMBEDDING);
    assert_int_equal(mi.in_features, 3000);
    assert_int_equal(mi.out_features, 16);
    assert_int_equal(mi.rank, 2);
    NEAR(mi.scale, 4.0 / 2.0);
    assert_non_null(actl_adapter_find(a, "base_model.model.lm_head.weight"));
    actl_adapter_free(a);

    a = test_load_fixture("base-tiny", "lora-bf16");
    assert_int_equal(module_named(a, "model.layers.0.self_attn.k_proj").dtype, ACTL_BF16);
    assert_int_equal(module_named(a, "model.layers.0.self_attn.k_proj").out_features, 16);
    actl_adapter_free(a);
    a = test_load_fixture("base-tiny", "lora-f16");
    assert_int_equal(module_named(a, "model.layers.0.self_attn.o_proj").dtype, ACTL_F16);
    actl_adapter_free(a);
}

static void test_import__road_bottleneck_mos_facts(void **state)
{
    (void)state;
    actl_adapter_info info;
    actl_module_info mi;

    /* road_1 g 4 on q (out 16): theta [8]; road_2 g 8; road_4 g 4 on up (out 64): [128] */
    actl_adapter *a = test_load_fixture("hf-tiny", "road-1");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.variant, ACTL_ROAD_1);
    assert_int_equal(info.group_size, 4);
    mi = module_named(a, "model.layers.0.self_attn.q_proj");
    assert_int_equal(mi.out_features, 16);
    NEAR(mi.scale, 1);
    actl_adapter_free(a);
    a = test_load_fixture("hf-tiny", "road-2");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.variant, ACTL_ROAD_2);
    assert_int_equal(info.group_size, 8);
    assert_int_equal(module_named(a, "model.layers.1.mlp.gate_proj").out_features, 64);
    actl_adapter_free(a);
    a = test_load_fixture("hf-tiny", "road-4");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.variant, ACTL_ROAD_4);
    mi = module_named(a, "model.layers.0.mlp.up_proj");
    assert_int_equal(mi.out_features, 64);
    assert_int_equal(mi.params, 2 * 128);
    actl_adapter_free(a);

    /* series: gate/up on input (D [4, 16]), down on output (D [4, 16], out of down = 16) */
    a = test_load_fixture("hf-tiny", "bottleneck-series");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.activation, ACTL_ACT_TANH);
    assert_int_equal(info.rank, 4);
    assert_false(info.use_parallel_adapter);
    mi = module_named(a, "model.layers.0.mlp.gate_proj");
    assert_int_equal(mi.placement, ACTL_PLACE_INPUT);
    assert_int_equal(mi.in_features, 16);
    assert_int_equal(mi.out_features, 0);
    NEAR(mi.scale, 1.5);
    mi = module_named(a, "model.layers.0.mlp.down_proj");
    assert_int_equal(mi.placement, ACTL_PLACE_OUTPUT);
    assert_int_equal(mi.in_features, 0);
    assert_int_equal(mi.out_features, 16);
    actl_adapter_free(a);

    /* parallel: down D [4, 64] U [16, 4]; the scale is the stored scalar */
    a = test_load_fixture("hf-tiny", "bottleneck-parallel");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.activation, ACTL_ACT_RELU);
    assert_true(info.use_parallel_adapter);
    mi = module_named(a, "model.layers.1.mlp.down_proj");
    assert_int_equal(mi.placement, ACTL_PLACE_PARALLEL);
    assert_int_equal(mi.flags, ACTL_MOD_LEARNED_SCALE);
    assert_int_equal(mi.in_features, 64);
    assert_int_equal(mi.out_features, 16);
    const actl_tensor *s =
        actl_adapter_find(a, "base_model.model.model.layers.1.mlp.down_proj.adapter_scaling");
    assert_non_null(s);
    float v;
    memcpy(&v, actl_tensor_data(s), 4);
    NEAR(mi.scale, v);
    assert_true(v >= 0.75f && v < 1.25f);
    actl_adapter_free(a);

    /* MoS: base-tiny k_proj [16, 32]: pool_A [6, 16], pool_B [6, 8], l 2, r 4 */
    a = test_load_fixture("base-tiny", "mos");
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.shards, 2);
    assert_int_equal(info.rank, 4);
    mi = module_named(a, "model.layers.1.self_attn.k_proj");
    assert_int_equal(mi.in_features, 32);
    assert_int_equal(mi.out_features, 16);
    assert_int_equal(mi.rank, 4);
    NEAR(mi.scale, 2);
    assert_int_equal(mi.params, 16); /* its two index vectors; the pools are shared */
    assert_int_equal(info.tensor_count, 6 + 12);
    actl_adapter_free(a);
}

static void test_kind_name(void **state)
{
    (void)state;
    assert_string_equal(actl_kind_name(ACTL_KIND_LORA), "lora");
    assert_string_equal(actl_kind_name(ACTL_KIND_ROAD), "road");
    assert_string_equal(actl_kind_name(ACTL_KIND_BOTTLENECK), "bottleneck");
    assert_string_equal(actl_kind_name(ACTL_KIND_MOS), "mos");
    assert_string_equal(actl_kind_name(ACTL_KIND_STACK), "stack");
    actl_kind k = 0;
    assert_ok(actl_kind_parse("stack", &k));
    assert_int_equal(k, ACTL_KIND_STACK);
    assert_err(actl_kind_parse("stacks", &k), ACTL_EINVAL, "mos, stack");
    assert_null(actl_kind_name((actl_kind)0));
}

/* ---- round trip ---------------------------------------------------------------- */

/* json_equal ignores key order, but in rank_pattern and alpha_pattern the order decides
 * which key wins: compare it key by key. */
static void assert_same_pattern_order(const json_t *ca, const json_t *cb)
{
    static const char *const keys[] = {"rank_pattern", "alpha_pattern"};
    for (int k = 0; k < 2; k++) {
        json_t *x = json_object_get(ca, keys[k]), *y = json_object_get(cb, keys[k]);
        if (!json_is_object(x) || !json_is_object(y)) {
            assert_true(json_equal(x, y) || (!x && !y));
            continue;
        }
        void *ix = json_object_iter(x), *iy = json_object_iter(y);
        for (; ix && iy; ix = json_object_iter_next(x, ix), iy = json_object_iter_next(y, iy))
            assert_string_equal(json_object_iter_key(ix), json_object_iter_key(iy));
        assert_null(ix);
        assert_null(iy);
    }
}

static void assert_same_adapter(const actl_adapter *a, const actl_adapter *b)
{
    test_assert_same_tensors(a, b);
    json_t *ca = json_loads(actl_adapter_config(a), 0, NULL);
    json_t *cb = json_loads(actl_adapter_config(b), 0, NULL);
    assert_non_null(ca);
    assert_true(json_equal(ca, cb));
    assert_same_pattern_order(ca, cb);
    json_decref(ca);
    json_decref(cb);
    assert_int_equal(actl_adapter_module_count(a), actl_adapter_module_count(b));
    for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
        actl_module_info x, y;
        assert_ok(actl_adapter_module(a, i, &x));
        assert_ok(actl_adapter_module(b, i, &y));
        assert_string_equal(x.name, y.name);
        assert_int_equal(x.rank, y.rank);
        assert_true(x.scale == y.scale);
        assert_int_equal(x.flags, y.flags);
        assert_int_equal(x.placement, y.placement);
    }
}

/* No "<dir>.tmp.*" left beside an export. */
static void assert_no_temp_left(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    assert_non_null(d);
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp."))
            fail_msg("temporary '%s' left in %s", e->d_name, dir);
    closedir(d);
}

static void test_roundtrip__every_fixture_exact(void **state)
{
    (void)state;
    static const char *const bases[] = {"hf-tiny", "base-tiny"};
    char *tmp = test_tmpdir();
    char out[4300], src[512];
    for (int b = 0; b < 2; b++)
        for (size_t i = 0; i < N_FIXTURES; i++) {
            actl_adapter *a = test_load_fixture(bases[b], fixture_names[i]), *c = NULL;
            snprintf(out, sizeof out, "%s/%s-%s", tmp, bases[b], fixture_names[i]);
            assert_ok(actl_adapter_save(a, out));
            assert_ok(actl_adapter_load(out, &c));
            assert_same_adapter(a, c);
            /* the fixture was itself exported by the library: same config bytes */
            snprintf(src, sizeof src, ADAPTERS "/%s/%s/adapter_config.json", bases[b],
                     fixture_names[i]);
            snprintf(out + strlen(out), sizeof out - strlen(out), "/adapter_config.json");
            char *x = (char *)test_slurp(src, NULL), *y = (char *)test_slurp(out, NULL);
            assert_string_equal(x, y);
            free(x);
            free(y);
            /* and an adapter made by copying (actl_adapter_new) equals both */
            actl_adapter *n = NULL;
            const actl_tensor **ts = malloc(actl_adapter_tensor_count(a) * sizeof *ts);
            for (size_t k = 0; k < actl_adapter_tensor_count(a); k++)
                ts[k] = actl_adapter_tensor(a, k);
            assert_ok(actl_adapter_new(actl_adapter_config(a), ts, actl_adapter_tensor_count(a),
                                       "copy", &n));
            assert_true(n->owns_tensors);
            assert_same_adapter(a, n);
            free(ts);
            actl_adapter_free(n);
            actl_adapter_free(a);
            actl_adapter_free(c);
        }
    assert_no_temp_left(tmp);
    test_rmtree(tmp);
    free(tmp);
}

static void test_roundtrip__unknown_key_and_modules_to_save_survive(void **state)
{
    (void)state;
    char *tmp = test_tmpdir();
    char out[4200];
    actl_adapter *a = test_load_fixture("hf-tiny", "lora"), *b = NULL;
    snprintf(out, sizeof out, "%s/x", tmp);
    assert_ok(actl_adapter_save(a, out));
    assert_ok(actl_adapter_load(out, &b));
    json_t *c = json_loads(actl_adapter_config(b), 0, NULL);
    assert_true(json_is_true(json_object_get(c, "x_adapterctl_fixture")));
    assert_true(json_real_value(json_object_get(c, "lora_dropout")) == 0.05);
    json_decref(c);
    actl_adapter_free(a);
    actl_adapter_free(b);

    a = test_load_fixture("hf-tiny", "lora-embedding");
    snprintf(out, sizeof out, "%s/y", tmp);
    assert_ok(actl_adapter_save(a, out));
    assert_ok(actl_adapter_load(out, &b));
    const actl_tensor *x = actl_adapter_find(a, "base_model.model.lm_head.weight");
    const actl_tensor *y = actl_adapter_find(b, "base_model.model.lm_head.weight");
    assert_non_null(y);
    assert_int_equal(actl_tensor_dtype(y), ACTL_BF16);
    assert_int_equal(actl_tensor_shape(y)[0], 3000);
    assert_int_equal(actl_tensor_shape(y)[1], 16);
    assert_memory_equal(actl_tensor_data(x), actl_tensor_data(y), actl_tensor_nbytes(x));
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_rmtree(tmp);
    free(tmp);
}

/* What Python's json.dumps(cfg, indent=2, sort_keys=True) writes for this config,
 * checked with CPython 3.11 (again after alpha_pattern was added). */
static const char python_text[] =
    "{\n"
    "  \"alpha_pattern\": {\n"
    "    \"k_proj\": 4,\n"
    "    \"q_proj\": 32.0\n"
    "  },\n"
    "  \"eps\": 1e-05,\n"
    "  \"lora_alpha\": 16,\n"
    "  \"lora_dropout\": 0.05,\n"
    "  \"note\": \"caf\\u00e9 \\u2713 \\ud83d\\ude00\",\n"
    "  \"peft_type\": \"LORA\",\n"
    "  \"r\": 2,\n"
    "  \"scale\": 16.0,\n"
    "  \"target_modules\": [\n"
    "    \"q_proj\"\n"
    "  ],\n"
    "  \"zeta\": {\n"
    "    \"a\": [],\n"
    "    \"b\": null\n"
    "  }\n"
    "}";

static void test_export__config_text_is_what_python_writes(void **state)
{
    (void)state;
    const char *cfg = "{\"zeta\": {\"b\": null, \"a\": []}, \"peft_type\": \"LORA\", \"r\": 2,"
                      " \"alpha_pattern\": {\"k_proj\": 4, \"q_proj\": 32.0},"
                      " \"lora_alpha\": 16, \"lora_dropout\": 0.05, \"eps\": 1e-5,"
                      " \"scale\": 16.0, \"note\": \"caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80\","
                      " \"target_modules\": [\"q_proj\"]}";
    const int64_t sa[2] = {2, 3}, sb[2] = {4, 2};
    const float va[6] = {1, 2, 3, 4, 5, 6}, vb[8] = {-1, -2, -3, -4, -5, -6, -7, -8};
    actl_tensor *t[2];
    actl_adapter *a = NULL;
    /* given B before A: the file must list them sorted */
    assert_ok(actl_tensor_new("base_model.model.q_proj.lora_B.weight", ACTL_F32, 2, sb, vb, &t[0]));
    assert_ok(actl_tensor_new("base_model.model.q_proj.lora_A.weight", ACTL_F32, 2, sa, va, &t[1]));
    assert_ok(actl_adapter_new(cfg, (const actl_tensor *const *)t, 2, "test", &a));
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    char *tmp = test_tmpdir(), out[4200];
    /* an existing empty directory is a fine target, with or without a trailing slash */
    snprintf(out, sizeof out, "%s/exp/", tmp);
    assert_int_equal(mkdir(out, 0777), 0);
    assert_ok(actl_adapter_save(a, out));
    snprintf(out, sizeof out, "%s/exp/adapter_config.json", tmp);
    char *text = (char *)test_slurp(out, NULL);
    assert_string_equal(text, python_text);
    free(text);

    snprintf(out, sizeof out, "%s/exp/adapter_model.safetensors", tmp);
    actl_st *st = NULL;
    assert_ok(actl_st_open(out, &st));
    assert_string_equal(actl_st_metadata(st, "format"), "pt");
    assert_int_equal(actl_st_metadata_count(st), 1);
    assert_int_equal(actl_st_count(st), 2);
    assert_string_equal(actl_tensor_name(actl_st_tensor(st, 0)),
                        "base_model.model.q_proj.lora_A.weight");
    assert_memory_equal(actl_tensor_data(actl_st_tensor(st, 1)), vb, sizeof vb);
    actl_st_close(st);

    /* the compact config of the adapter: sorted, no spaces */
    assert_non_null(strstr(actl_adapter_config(a), "\"eps\":1e-05,\"lora_alpha\":16,"));
    /* the pattern's alpha 32 (not lora_alpha 16) over r 2 */
    actl_module_info mi;
    assert_ok(actl_adapter_module(a, 0, &mi));
    NEAR(mi.scale, 16);
    assert_no_temp_left(tmp);
    actl_adapter_free(a);
    test_rmtree(tmp);
    free(tmp);
}

/* PEFT tries rank_pattern and alpha_pattern keys in their order and takes the first match,
 * so export keeps that order (the rest of the file stays sorted). Here the first key of
 * each pattern is not the first in sorted order:
 *   q_proj: r 2 (no rank key matches), alpha "self_attn\.q_proj" 16 first: s = 16/2 = 8
 *           (sorted, "q_proj" 4 would win: s = 2)
 *   v_proj: rank "v_proj" 3 first (sorted, "self_attn\.v_proj" 2 would win and A [3, 16]
 *           would no longer fit); alpha: none matches, lora_alpha 8: s = 8/3 */
static const char unsorted_cfg[] =
    "{\"rank_pattern\": {\"v_proj\": 3, \"self_attn\\\\.v_proj\": 2}, \"r\": 2,"
    " \"peft_type\": \"LORA\", \"lora_alpha\": 8,"
    " \"alpha_pattern\": {\"self_attn\\\\.q_proj\": 16, \"q_proj\": 4}}";
static const char unsorted_text[] =
    "{\n"
    "  \"alpha_pattern\": {\n"
    "    \"self_attn\\\\.q_proj\": 16,\n"
    "    \"q_proj\": 4\n"
    "  },\n"
    "  \"lora_alpha\": 8,\n"
    "  \"peft_type\": \"LORA\",\n"
    "  \"r\": 2,\n"
    "  \"rank_pattern\": {\n"
    "    \"v_proj\": 3,\n"
    "    \"self_attn\\\\.v_proj\": 2\n"
    "  }\n"
    "}";
static const char unsorted_compact[] =
    "{\"alpha_pattern\":{\"self_attn\\\\.q_proj\":16,\"q_proj\":4},\"lora_alpha\":8,"
    "\"peft_type\":\"LORA\",\"r\":2,\"rank_pattern\":{\"v_proj\":3,\"self_attn\\\\.v_proj\":2}}";

static void assert_unsorted_scales(const actl_adapter *a)
{
    actl_module_info q = module_named(a, "model.layers.0.self_attn.q_proj");
    actl_module_info v = module_named(a, "model.layers.0.self_attn.v_proj");
    assert_int_equal(q.rank, 2);
    NEAR(q.alpha, 16);
    NEAR(q.scale, 8);
    assert_int_equal(v.rank, 3);
    NEAR(v.alpha, 8);
    NEAR(v.scale, 8.0 / 3.0);
}

static void test_roundtrip__unsorted_patterns_keep_their_order(void **state)
{
    (void)state;
    const int64_t sqa[2] = {2, 16}, sqb[2] = {16, 2}, sva[2] = {3, 16}, svb[2] = {16, 3};
    actl_tensor *t[4];
    actl_adapter *a = NULL, *b = NULL, *c = NULL;
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                              ACTL_F32, 2, sqa, NULL, &t[0]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                              ACTL_F32, 2, sqb, NULL, &t[1]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                              ACTL_F32, 2, sva, NULL, &t[2]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
                              ACTL_F32, 2, svb, NULL, &t[3]));
    assert_ok(actl_adapter_new(unsorted_cfg, (const actl_tensor *const *)t, 4, "unsorted", &a));
    for (int i = 0; i < 4; i++)
        actl_tensor_free(t[i]);
    assert_unsorted_scales(a);
    assert_string_equal(actl_adapter_config(a), unsorted_compact);

    char *tmp = test_tmpdir(), out[4200];
    snprintf(out, sizeof out, "%s/u", tmp);
    assert_ok(actl_adapter_save(a, out));
    assert_ok(actl_adapter_load(out, &b));
    assert_unsorted_scales(b);
    assert_same_adapter(a, b);
    snprintf(out, sizeof out, "%s/u/adapter_config.json", tmp);
    char *text = (char *)test_slurp(out, NULL);
    assert_string_equal(text, unsorted_text);
    free(text);
    /* and through the compact config, as a store keeps it */
    const actl_tensor *ts[4];
    for (size_t i = 0; i < 4; i++)
        ts[i] = actl_adapter_tensor(b, i);
    assert_ok(actl_adapter_new(actl_adapter_config(b), ts, 4, "again", &c));
    assert_unsorted_scales(c);
    assert_same_adapter(a, c);
    actl_adapter_free(a);
    actl_adapter_free(b);
    actl_adapter_free(c);
    test_rmtree(tmp);
    free(tmp);
}

/* bias "all": PEFT's trained base biases ride along unchanged, counted in the totals, in
 * no module. */
static void test_roundtrip__base_biases_pass_through(void **state)
{
    (void)state;
    const int64_t sa[2] = {4, 16}, sb[2] = {16, 4}, sv = 16;
    float bias[16];
    uint16_t hbias[16];
    for (int i = 0; i < 16; i++)
        bias[i] = 0.25f * (float)i - 1.0f;
    actl_f32_to_bf16(bias, hbias, 16);
    actl_tensor *t[4];
    actl_adapter *a = NULL, *b = NULL;
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                              ACTL_F32, 2, sa, NULL, &t[0]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                              ACTL_F32, 2, sb, NULL, &t[1]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias",
                              ACTL_F32, 1, &sv, bias, &t[2]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.mlp.down_proj.bias", ACTL_BF16,
                              1, &sv, hbias, &t[3]));
    assert_ok(actl_adapter_new("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8,"
                               " \"bias\": \"all\"}",
                               (const actl_tensor *const *)t, 4, "bias", &a));
    for (int i = 0; i < 4; i++)
        actl_tensor_free(t[i]);
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    assert_int_equal(info.module_count, 1);
    assert_int_equal(info.tensor_count, 4);
    assert_int_equal(info.params, 64 + 64 + 16 + 16);
    assert_int_equal(info.bytes, 4 * (64 + 64 + 16) + 2 * 16);
    actl_module_info mi = module_named(a, "model.layers.0.self_attn.q_proj");
    assert_int_equal(mi.params, 128); /* its own A and B only */
    assert_int_equal(mi.flags, 0);

    char *tmp = test_tmpdir(), out[4200];
    snprintf(out, sizeof out, "%s/b", tmp);
    assert_ok(actl_adapter_save(a, out));
    assert_ok(actl_adapter_load(out, &b));
    assert_same_adapter(a, b);
    const actl_tensor *x =
        actl_adapter_find(b, "base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias");
    const actl_tensor *y =
        actl_adapter_find(b, "base_model.model.model.layers.0.mlp.down_proj.bias");
    assert_non_null(x);
    assert_non_null(y);
    assert_memory_equal(actl_tensor_data(x), bias, sizeof bias);
    assert_int_equal(actl_tensor_dtype(y), ACTL_BF16);
    assert_memory_equal(actl_tensor_data(y), hbias, sizeof hbias);
    actl_adapter_free(a);
    actl_adapter_free(b);
    test_rmtree(tmp);
    free(tmp);
}

static void test_export__refuses_a_non_empty_destination(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), out[4200], file[4300];
    actl_adapter *a = test_load_fixture("base-tiny", "road-1");
    snprintf(out, sizeof out, "%s/taken", tmp);
    assert_int_equal(mkdir(out, 0777), 0);
    snprintf(file, sizeof file, "%s/keep.txt", out);
    FILE *f = fopen(file, "w");
    fputs("mine", f);
    fclose(f);
    assert_err(actl_adapter_save(a, out), ACTL_EEXIST, "taken");
    char *s = (char *)test_slurp(file, NULL);
    assert_string_equal(s, "mine");
    free(s);
    /* a file in the way is refused too */
    assert_err(actl_adapter_save(a, file), ACTL_EEXIST, "keep.txt");
    assert_no_temp_left(tmp);
    assert_no_temp_left(out);
    /* and a second export to the same place after a first one */
    snprintf(out, sizeof out, "%s/once", tmp);
    assert_ok(actl_adapter_save(a, out));
    assert_err(actl_adapter_save(a, out), ACTL_EEXIST, "once");
    assert_no_temp_left(tmp);
    actl_adapter_free(a);
    test_rmtree(tmp);
    free(tmp);
}

/* ---- MoS ---------------------------------------------------------------------- */

/* r 2, l 2, in 4, out 4: pools P_A [3, 2], P_B [3, 2] with distinct values; indices
 * a = [2, 0, 1, 2], b = [0, 1, 2, 0]. DESIGN.md 3.4:
 *   A[j, s*2:(s+1)*2] = P_A[a[j*2+s]]     B[s*2:(s+1)*2, j] = P_B[b[j*2+s]] */
static const float pool_a[6] = {1, 2, 10, 20, 100, 200};
static const float pool_b[6] = {-1, -2, -10, -20, -100, -200};
static const int32_t idx_a[4] = {2, 0, 1, 2}, idx_b[4] = {0, 1, 2, 0};

static actl_adapter *hand_mos(actl_dtype dt)
{
    const char *cfg = "{\"peft_type\": \"MOS\", \"r\": 2, \"lora_alpha\": 6, \"mos_shards\": 2,"
                      " \"target_modules\": [\"q_proj\"], \"base_model_name_or_path\": \"m\"}";
    const int64_t sp[2] = {3, 2}, si = 4;
    actl_tensor *t[4];
    actl_adapter *a = NULL;
    uint16_t ha[6], hb[6];
    const void *da = pool_a, *db = pool_b;
    if (dt == ACTL_BF16) {
        actl_f32_to_bf16(pool_a, ha, 6);
        actl_f32_to_bf16(pool_b, hb, 6);
        da = ha;
        db = hb;
    }
    assert_ok(actl_tensor_new("base_model.model.mos.q_proj.pool_A", dt, 2, sp, da, &t[0]));
    assert_ok(actl_tensor_new("base_model.model.mos.q_proj.pool_B", dt, 2, sp, db, &t[1]));
    assert_ok(actl_tensor_new("base_model.model.l.q_proj.mos_index_A", ACTL_I32, 1, &si, idx_a,
                              &t[2]));
    assert_ok(actl_tensor_new("base_model.model.l.q_proj.mos_index_B", ACTL_I32, 1, &si, idx_b,
                              &t[3]));
    assert_ok(actl_adapter_new(cfg, (const actl_tensor *const *)t, 4, "hand", &a));
    for (int i = 0; i < 4; i++)
        actl_tensor_free(t[i]);
    return a;
}

static void test_mos__materialize_hand_built(void **state)
{
    (void)state;
    /* A [2, 4]: row 0 = P_A[2] ++ P_A[0], row 1 = P_A[1] ++ P_A[2] */
    static const float want_a[8] = {100, 200, 1, 2, /**/ 10, 20, 100, 200};
    /* B [4, 2]: column 0 = P_B[0] ++ P_B[1], column 1 = P_B[2] ++ P_B[0] */
    static const float want_b[8] = {-1, -100, /**/ -2, -200, /**/ -10, -1, /**/ -20, -2};
    /* the transposed reading a[s*r+j] would give row 0 = P_A[2] ++ P_A[1] */
    static const float wrong_a[8] = {100, 200, 10, 20, /**/ 1, 2, 100, 200};
    actl_adapter *m = hand_mos(ACTL_F32), *l = NULL;
    assert_ok(actl_adapter_materialize(m, &l));
    actl_adapter_info info;
    actl_adapter_info_get(l, &info);
    assert_int_equal(info.kind, ACTL_KIND_LORA);
    assert_int_equal(info.rank, 2);
    NEAR(info.alpha, 6);
    assert_string_equal(info.base_model, "m");
    assert_int_equal(actl_adapter_tensor_count(l), 2);
    const actl_tensor *A = actl_adapter_find(l, "base_model.model.l.q_proj.lora_A.weight");
    const actl_tensor *B = actl_adapter_find(l, "base_model.model.l.q_proj.lora_B.weight");
    assert_non_null(A);
    assert_non_null(B);
    assert_int_equal(actl_tensor_shape(A)[0], 2);
    assert_int_equal(actl_tensor_shape(A)[1], 4);
    assert_int_equal(actl_tensor_shape(B)[0], 4);
    assert_int_equal(actl_tensor_shape(B)[1], 2);
    assert_memory_equal(actl_tensor_data(A), want_a, sizeof want_a);
    assert_memory_equal(actl_tensor_data(B), want_b, sizeof want_b);
    assert_true(memcmp(actl_tensor_data(A), wrong_a, sizeof wrong_a) != 0);
    actl_module_info mi;
    assert_ok(actl_adapter_module(l, 0, &mi));
    NEAR(mi.scale, 3.0); /* 6 / 2 */
    json_t *c = json_loads(actl_adapter_config(l), 0, NULL);
    assert_string_equal(json_string_value(json_object_get(c, "peft_type")), "LORA");
    assert_null(json_object_get(c, "mos_shards"));
    json_decref(c);
    actl_adapter_free(l);
    actl_adapter_free(m);

    /* pools in BF16 stay BF16, bit for bit (these values are exact in BF16) */
    m = hand_mos(ACTL_BF16);
    assert_ok(actl_adapter_materialize(m, &l));
    A = actl_adapter_find(l, "base_model.model.l.q_proj.lora_A.weight");
    assert_int_equal(actl_tensor_dtype(A), ACTL_BF16);
    float got[8];
    assert_ok(actl_tensor_to_f32(A, got));
    assert_memory_equal(got, want_a, sizeof want_a);
    actl_adapter_free(l);
    actl_adapter_free(m);
}

/* What passes through a MoS adapter (a modules_to_save tensor, even one whose name holds
 * ".mos_index_"; a trained base bias) passes through materialize too, and the LoRA's config
 * keeps the "bias" that makes the bias a valid key. */
static void test_mos__materialize_keeps_pass_through_tensors(void **state)
{
    (void)state;
    const char *cfg = "{\"peft_type\": \"MOS\", \"r\": 2, \"lora_alpha\": 6, \"mos_shards\": 2,"
                      " \"modules_to_save\": [\"score\"], \"bias\": \"all\"}";
    const int64_t sp[2] = {3, 2}, si = 4, ss[2] = {2, 4}, sv = 4;
    const float score[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bias[4] = {0.5f, -0.5f, 1.5f, -1.5f};
    actl_tensor *t[6];
    actl_adapter *m = NULL, *l = NULL;
    assert_ok(actl_tensor_new("base_model.model.mos.q_proj.pool_A", ACTL_F32, 2, sp, pool_a,
                              &t[0]));
    assert_ok(actl_tensor_new("base_model.model.mos.q_proj.pool_B", ACTL_F32, 2, sp, pool_b,
                              &t[1]));
    assert_ok(actl_tensor_new("base_model.model.l.q_proj.mos_index_A", ACTL_I32, 1, &si, idx_a,
                              &t[2]));
    assert_ok(actl_tensor_new("base_model.model.l.q_proj.mos_index_B", ACTL_I32, 1, &si, idx_b,
                              &t[3]));
    assert_ok(actl_tensor_new("base_model.model.score.mos_index_A.weight", ACTL_F32, 2, ss, score,
                              &t[4]));
    assert_ok(actl_tensor_new("base_model.model.l.q_proj.base_layer.bias", ACTL_F32, 1, &sv, bias,
                              &t[5]));
    assert_ok(actl_adapter_new(cfg, (const actl_tensor *const *)t, 6, "pass", &m));
    for (int i = 0; i < 6; i++)
        actl_tensor_free(t[i]);
    assert_ok(actl_adapter_materialize(m, &l));
    assert_int_equal(actl_adapter_tensor_count(l), 4);
    const actl_tensor *x = actl_adapter_find(l, "base_model.model.score.mos_index_A.weight");
    const actl_tensor *y = actl_adapter_find(l, "base_model.model.l.q_proj.base_layer.bias");
    assert_non_null(x);
    assert_non_null(y);
    assert_memory_equal(actl_tensor_data(x), score, sizeof score);
    assert_memory_equal(actl_tensor_data(y), bias, sizeof bias);
    assert_non_null(actl_adapter_find(l, "base_model.model.l.q_proj.lora_A.weight"));
    assert_null(actl_adapter_find(l, "base_model.model.mos.q_proj.pool_A"));
    assert_null(actl_adapter_find(l, "base_model.model.l.q_proj.mos_index_A"));
    json_t *c = json_loads(actl_adapter_config(l), 0, NULL);
    assert_string_equal(json_string_value(json_object_get(c, "bias")), "all");
    json_decref(c);
    actl_adapter_free(l);
    actl_adapter_free(m);
}

/* actl__mos_gather sizes A [r, w_A * l] and B [w_B * l, r]: a module from anywhere but the
 * build (which refuses it) must not overflow the product. Pools of 0 rows hold no bytes. */
static void test_mos__gather_refuses_overflowing_widths(void **state)
{
    (void)state;
    const int64_t spa[2] = {0, INT64_MAX}, spb[2] = {0, 1}, si = 2;
    const int32_t idx[2] = {0, 0};
    actl_tensor *pa, *pb, *ia, *ib, *A = NULL, *B = NULL;
    assert_ok(actl_tensor_new("pa", ACTL_F32, 2, spa, NULL, &pa));
    assert_ok(actl_tensor_new("pb", ACTL_F32, 2, spb, NULL, &pb));
    assert_ok(actl_tensor_new("ia", ACTL_I32, 1, &si, idx, &ia));
    assert_ok(actl_tensor_new("ib", ACTL_I32, 1, &si, idx, &ib));
    actl__module m = {0};
    m.info.name = "x.q_proj";
    m.info.rank = 1;
    m.pool_a = pa;
    m.pool_b = pb;
    m.index_a = ia;
    m.index_b = ib;
    actl_adapter a = {0};
    a.info.kind = ACTL_KIND_MOS;
    a.info.shards = 2;
    a.origin = (char *)"hand";
    a.modules = &m;
    a.n_modules = 1;
    assert_err(actl__mos_gather(&a, &m, "A", "B", &A, &B), ACTL_ELIMIT,
               "'hand': module 'x.q_proj': pool widths 9223372036854775807 and 1 x mos_shards 2 "
               "do not fit in 64 bits");
    assert_null(A);
    assert_null(B);
    actl_tensor_free(pa);
    actl_tensor_free(pb);
    actl_tensor_free(ia);
    actl_tensor_free(ib);
}

static void test_mos__materialize_fixture_validates(void **state)
{
    (void)state;
    actl_adapter *m = test_load_fixture("base-tiny", "mos"), *l = NULL, *back = NULL;
    actl_base *base = NULL;
    assert_ok(actl_adapter_materialize(m, &l));
    assert_int_equal(actl_adapter_module_count(l), 6);
    actl_module_info mi = module_named(l, "model.layers.0.self_attn.k_proj");
    assert_int_equal(mi.in_features, 32);
    assert_int_equal(mi.out_features, 16);
    assert_int_equal(mi.rank, 4);
    NEAR(mi.scale, 2);
    assert_ok(actl_base_load(BASE_TINY, &base));
    assert_ok(actl_adapter_validate(m, base));
    assert_ok(actl_adapter_validate(l, base));
    /* and it exports as a plain LoRA */
    char *tmp = test_tmpdir(), out[4200];
    snprintf(out, sizeof out, "%s/lora", tmp);
    assert_ok(actl_adapter_save(l, out));
    assert_ok(actl_adapter_load(out, &back));
    assert_same_adapter(l, back);
    actl_adapter_free(back);
    /* only MoS materializes */
    assert_err(actl_adapter_materialize(l, &back), ACTL_EINVAL, "MoS");
    actl_base_free(base);
    actl_adapter_free(l);
    actl_adapter_free(m);
    test_rmtree(tmp);
    free(tmp);
}

/* ---- base model shapes ------------------------------------------------------------ */

static void assert_same_base(const actl_base *x, const actl_base *y)
{
    assert_int_equal(actl_base_module_count(x), actl_base_module_count(y));
    for (size_t i = 0; i < actl_base_module_count(x); i++) {
        int64_t r1, c1, r2, c2;
        const char *n1 = actl_base_module(x, i, &r1, &c1), *n2 = actl_base_module(y, i, &r2, &c2);
        assert_string_equal(n1, n2);
        assert_int_equal(r1, r2);
        assert_int_equal(c1, c2);
    }
}

static void test_base__tiny_shapes_by_hand(void **state)
{
    (void)state;
    static const struct {
        const char *m;
        int64_t rows, cols;
    } want[] = {
        {"model.embed_tokens", 64, 32},
        {"lm_head", 64, 32},
        {"model.layers.0.self_attn.q_proj", 32, 32}, /* 4 heads x 8 */
        {"model.layers.1.self_attn.k_proj", 16, 32}, /* 2 kv heads x 8 */
        {"model.layers.1.self_attn.v_proj", 16, 32},
        {"model.layers.0.self_attn.o_proj", 32, 32},
        {"model.layers.0.mlp.gate_proj", 48, 32},
        {"model.layers.1.mlp.up_proj", 48, 32},
        {"model.layers.1.mlp.down_proj", 32, 48},
    };
    actl_base *b = NULL;
    assert_ok(actl_base_load(BASE_TINY, &b));
    assert_string_equal(actl_base_model_id(b), "adapterctl/base-tiny");
    assert_int_equal(actl_base_module_count(b), 2 + 2 * 7);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int64_t r = 0, c = 0;
        assert_ok(actl_base_find(b, want[i].m, &r, &c));
        assert_int_equal(r, want[i].rows);
        assert_int_equal(c, want[i].cols);
    }
    assert_err(actl_base_find(b, "model.layers.2.self_attn.q_proj", NULL, NULL), ACTL_ENOTFOUND,
               "model.layers.2.self_attn.q_proj");
    /* norms are 1-D: not modules */
    assert_int_equal(actl_base_find(b, "model.norm", NULL, NULL), ACTL_ENOTFOUND);
    actl_base_free(b);
}

static void test_base__config_only_equals_weights(void **state)
{
    (void)state;
    actl_base *w = NULL, *sharded = NULL, *cfg = NULL, *single = NULL, *dir = NULL;
    assert_ok(actl_base_load(BASE_TINY, &w));
    assert_ok(actl_base_load(FIXTURES "/base-tiny-sharded", &sharded));
    assert_ok(actl_base_load(BASE_TINY "/config.json", &cfg));
    assert_ok(actl_base_load(BASE_TINY "/model.safetensors", &single));
    assert_same_base(w, sharded);
    assert_same_base(w, cfg);
    assert_same_base(w, single);
    assert_string_equal(actl_base_model_id(cfg), "adapterctl/base-tiny");
    assert_string_equal(actl_base_model_id(single), "adapterctl/base-tiny");
    /* a directory holding only config.json */
    char *tmp = test_tmpdir(), cmd[4400];
    snprintf(cmd, sizeof cmd, "cp " BASE_TINY "/config.json '%s'/", tmp);
    assert_int_equal(system(cmd), 0);
    assert_ok(actl_base_load(tmp, &dir));
    assert_same_base(w, dir);
    actl_base_free(dir);
    actl_base_free(w);
    actl_base_free(sharded);
    actl_base_free(cfg);
    actl_base_free(single);
    test_rmtree(tmp);
    free(tmp);
}

static void test_base__hf_tiny_config_equals_weights(void **state)
{
    (void)state;
    REQUIRE_SHARED(HF_TINY "/model.safetensors");
    actl_base *w = NULL, *c = NULL;
    assert_ok(actl_base_load(HF_TINY, &w));
    /* no head_dim in this config.json: hidden / heads; kv heads = heads */
    assert_ok(actl_base_load(HF_TINY "/config.json", &c));
    assert_same_base(w, c);
    assert_string_equal(actl_base_model_id(w), "meta-llama/Llama-2-7b-hf");
    int64_t r, col;
    assert_ok(actl_base_find(w, "model.embed_tokens", &r, &col));
    assert_int_equal(r, 3000);
    assert_int_equal(col, 16);
    actl_base_free(w);
    actl_base_free(c);
}

static void test_base__errors(void **state)
{
    (void)state;
    actl_base *b = NULL;
    assert_err(actl_base_load(FIXTURES "/no-such-model", &b), ACTL_ENOTFOUND, "no-such-model");
    assert_null(b);
    char *tmp = test_tmpdir(), path[4200];
    assert_err(actl_base_load(tmp, &b), ACTL_ENOTFOUND, "config.json");
    snprintf(path, sizeof path, "%s/config.json", tmp);
    FILE *f = fopen(path, "w");
    fputs("{\"hidden_size\": 16, \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
          " \"vocab_size\": 10}", f);
    fclose(f);
    assert_err(actl_base_load(tmp, &b), ACTL_EFORMAT, "intermediate_size");
    test_rmtree(tmp);
    free(tmp);
}

/* config.json alone decides how many modules a base lists (7 per layer) and how wide they
 * are: a hostile one must not make it allocate millions of them. */
static void test_base__config_sizes_are_bounded(void **state)
{
    (void)state;
    static const struct {
        const char *extra, *words;
    } bad[] = {
        {"\"num_hidden_layers\": 65537",
         "key 'num_hidden_layers' must be an integer from 1 to 65536"},
        {"\"num_hidden_layers\": 1000000000", "key 'num_hidden_layers'"},
        {"\"num_hidden_layers\": 0", "key 'num_hidden_layers'"},
        {"\"num_attention_heads\": 65537",
         "key 'num_attention_heads' must be an integer from 1 to 65536"},
        {"\"num_key_value_heads\": 70000", "key 'num_key_value_heads'"},
        {"\"hidden_size\": 1073741825",
         "key 'hidden_size' must be an integer from 1 to 1073741824"},
        {"\"vocab_size\": 4294967296", "key 'vocab_size'"},
        {"\"num_attention_heads\": 65536, \"head_dim\": 65536",
         "num_attention_heads 65536 x head_dim 65536 is more than 1073741824"},
        {"\"num_key_value_heads\": 32768, \"head_dim\": 65536",
         "num_key_value_heads 32768 x head_dim"},
    };
    char *tmp = test_tmpdir(), path[4200];
    snprintf(path, sizeof path, "%s/config.json", tmp);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        /* later keys override: the bad one comes last, so defaults are otherwise sane */
        FILE *f = fopen(path, "w");
        json_t *cfg = json_loads("{\"hidden_size\": 16, \"intermediate_size\": 32,"
                                 " \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                                 " \"vocab_size\": 10}", 0, NULL);
        char obj[256];
        snprintf(obj, sizeof obj, "{%s}", bad[i].extra);
        json_t *over = json_loads(obj, 0, NULL);
        assert_non_null(over);
        assert_int_equal(json_object_update(cfg, over), 0);
        assert_int_equal(json_dumpf(cfg, f, 0), 0);
        fclose(f);
        json_decref(over);
        json_decref(cfg);
        actl_base *b = NULL;
        assert_err(actl_base_load(path, &b), ACTL_EFORMAT, bad[i].words);
        assert_non_null(strstr(actl_errmsg(), "config.json"));
        assert_null(b);
    }
    /* the limit itself is fine */
    FILE *f = fopen(path, "w");
    fputs("{\"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 65536,"
          " \"num_attention_heads\": 2, \"vocab_size\": 10}", f);
    fclose(f);
    actl_base *b = NULL;
    assert_ok(actl_base_load(path, &b));
    assert_int_equal(actl_base_module_count(b), 2 + 7 * 65536);
    assert_ok(actl_base_find(b, "model.layers.65535.mlp.down_proj", NULL, NULL));
    actl_base_free(b);
    test_rmtree(tmp);
    free(tmp);
}

/* ---- internals -------------------------------------------------------------------------- */

static void test_internal__module_find_and_ends_with(void **state)
{
    (void)state;
    actl_adapter *a = test_load_fixture("hf-tiny", "lora");
    const actl__module *m = actl__adapter_module_find(a, "model.layers.1.self_attn.v_proj");
    assert_non_null(m);
    assert_string_equal(m->info.name, "model.layers.1.self_attn.v_proj");
    assert_non_null(m->lora_a);
    assert_string_equal(actl_tensor_name(m->lora_a),
                        "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight");
    assert_ptr_equal(actl__adapter_module_find(a, "model.layers.0.self_attn.q_proj"),
                     &a->modules[0]);
    assert_null(actl__adapter_module_find(a, "model.layers.1.self_attn"));
    assert_null(actl__adapter_module_find(a, "model.layers.1.self_attn.v_proj.lora_A"));
    assert_null(actl__adapter_module_find(a, ""));
    assert_null(actl__adapter_module_find(a, NULL));
    assert_null(actl__adapter_module_find(NULL, "x"));
    actl_adapter_free(a);

    assert_true(actl__ends_with("mlp.down_proj", ".down_proj"));
    assert_true(actl__ends_with("down_proj", "down_proj"));
    assert_true(actl__ends_with("x", ""));
    assert_false(actl__ends_with("mlp.xdown_proj", ".down_proj"));
    assert_false(actl__ends_with("proj", "down_proj"));
}

/* The LLaMA placement map matches whole name components: "xdown_proj" is not down_proj. */
static void test_import__bottleneck_placement_by_component(void **state)
{
    (void)state;
    static const struct {
        const char *module;
        actl_placement want;
    } cases[] = {
        {"model.layers.0.mlp.down_proj", ACTL_PLACE_OUTPUT},
        {"down_proj", ACTL_PLACE_OUTPUT},
        {"model.layers.0.mlp.xdown_proj", ACTL_PLACE_INPUT},
        {"model.layers.0.mlp.down_proj_x", ACTL_PLACE_INPUT},
    };
    const int64_t sd[2] = {4, 16}, su[2] = {16, 4};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char kd[256], ku[256];
        actl_tensor *t[2];
        actl_adapter *a = NULL;
        snprintf(kd, sizeof kd, "base_model.model.%s.adapter_down.weight", cases[i].module);
        snprintf(ku, sizeof ku, "base_model.model.%s.adapter_up.weight", cases[i].module);
        assert_ok(actl_tensor_new(kd, ACTL_F32, 2, sd, NULL, &t[0]));
        assert_ok(actl_tensor_new(ku, ACTL_F32, 2, su, NULL, &t[1]));
        assert_ok(actl_adapter_new("{\"peft_type\": \"BOTTLENECK\", \"bottleneck_size\": 4}",
                                   (const actl_tensor *const *)t, 2, "p", &a));
        actl_module_info mi = module_named(a, cases[i].module);
        if (mi.placement != cases[i].want)
            fail_msg("%s: placement %s, expected %s", cases[i].module,
                     actl_placement_name(mi.placement), actl_placement_name(cases[i].want));
        /* input placement implies in (16), output placement out (16) */
        assert_int_equal(cases[i].want == ACTL_PLACE_INPUT ? mi.in_features : mi.out_features,
                         16);
        actl_tensor_free(t[0]);
        actl_tensor_free(t[1]);
        actl_adapter_free(a);
    }
}

/* ---- validation ---------------------------------------------------------------------- */

static void test_validate__base_tiny_fixtures_fit(void **state)
{
    (void)state;
    static const char *const bases[] = {BASE_TINY, FIXTURES "/base-tiny-sharded",
                                        BASE_TINY "/config.json"};
    for (int k = 0; k < 3; k++) {
        actl_base *b = NULL;
        assert_ok(actl_base_load(bases[k], &b));
        for (size_t i = 0; i < N_FIXTURES; i++) {
            actl_adapter *a = test_load_fixture("base-tiny", fixture_names[i]);
            int rc = actl_adapter_validate(a, b);
            if (rc)
                fail_msg("%s on %s: %s", fixture_names[i], bases[k], actl_errmsg());
            actl_adapter_free(a);
        }
        actl_base_free(b);
    }
}

static void test_validate__hf_tiny_fixtures_fit_the_real_checkpoint(void **state)
{
    (void)state;
    REQUIRE_SHARED(HF_TINY "/model.safetensors");
    actl_base *b = NULL;
    assert_ok(actl_base_load(HF_TINY, &b));
    for (size_t i = 0; i < N_FIXTURES; i++) {
        actl_adapter *a = test_load_fixture("hf-tiny", fixture_names[i]);
        int rc = actl_adapter_validate(a, b);
        if (rc)
            fail_msg("%s: %s", fixture_names[i], actl_errmsg());
        actl_adapter_free(a);
    }
    actl_base_free(b);
}

/* Every hf-tiny adapter on base-tiny (hidden 32, not 16) is refused, naming a module. */
static void test_validate__hf_tiny_fixtures_do_not_fit_base_tiny(void **state)
{
    (void)state;
    actl_base *b = NULL;
    assert_ok(actl_base_load(BASE_TINY, &b));
    for (size_t i = 0; i < N_FIXTURES; i++) {
        actl_adapter *a = test_load_fixture("hf-tiny", fixture_names[i]);
        int rc = actl_adapter_validate(a, b);
        if (rc != ACTL_ESHAPE || !strstr(actl_errmsg(), "module 'model."))
            fail_msg("%s: expected a shape mismatch naming a module, got %s: %s",
                     fixture_names[i], actl_strerror(rc), actl_errmsg());
        actl_adapter_free(a);
    }
    /* the message carries both shapes: lora q_proj needs [16, 16], the base has [32, 32] */
    actl_adapter *a = test_load_fixture("hf-tiny", "lora");
    assert_err(actl_adapter_validate(a, b), ACTL_ESHAPE,
               "module 'model.layers.0.self_attn.q_proj': the adapter needs a base weight "
               "[16, 16], the base has [32, 32]");
    actl_adapter_free(a);
    actl_base_free(b);
}

static actl_adapter *one_lora(const char *module, int64_t r, int64_t in, int64_t out,
                              bool fan_in_fan_out)
{
    char cfg[256], ka[256], kb[256];
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"LORA\", \"r\": %lld, \"lora_alpha\": 8,"
             " \"fan_in_fan_out\": %s}", (long long)r, fan_in_fan_out ? "true" : "false");
    snprintf(ka, sizeof ka, "base_model.model.%s.lora_A.weight", module);
    snprintf(kb, sizeof kb, "base_model.model.%s.lora_B.weight", module);
    const int64_t sa[2] = {r, in}, sb[2] = {out, r};
    actl_tensor *t[2];
    actl_adapter *a = NULL;
    assert_ok(actl_tensor_new(ka, ACTL_F32, 2, sa, NULL, &t[0]));
    assert_ok(actl_tensor_new(kb, ACTL_F32, 2, sb, NULL, &t[1]));
    assert_ok(actl_adapter_new(cfg, (const actl_tensor *const *)t, 2, "one", &a));
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    return a;
}

static void test_validate__module_missing_and_fan_in_fan_out(void **state)
{
    (void)state;
    actl_base *b = NULL;
    assert_ok(actl_base_load(BASE_TINY, &b));
    actl_adapter *a = one_lora("model.layers.5.self_attn.q_proj", 2, 32, 32, false);
    assert_err(actl_adapter_validate(a, b), ACTL_ENOTFOUND,
               "module 'model.layers.5.self_attn.q_proj' is not in the base model");
    actl_adapter_free(a);
    /* down_proj [32, 48]: A [2, 48], B [32, 2] fits as stored [out, in] ... */
    a = one_lora("model.layers.0.mlp.down_proj", 2, 48, 32, false);
    assert_ok(actl_adapter_validate(a, b));
    actl_adapter_free(a);
    /* ... and so it does with fan_in_fan_out: on nn.Linear layers PEFT resets
     * the flag, the base stays [out, in] */
    a = one_lora("model.layers.0.mlp.down_proj", 2, 48, 32, true);
    assert_ok(actl_adapter_validate(a, b));
    assert_ok(actl__adapter_validate_for(a, b, "llama"));
    actl_adapter_free(a);
    /* the transposed reading is refused, flag or not, and a Conv1D model type
     * does not make a Llama projection Conv1D */
    a = one_lora("model.layers.0.mlp.down_proj", 2, 32, 48, true);
    assert_err(actl_adapter_validate(a, b), ACTL_ESHAPE, "needs a base weight [48, 32]");
    assert_err(actl__adapter_validate_for(a, b, "gpt2"), ACTL_ESHAPE,
               "needs a base weight [48, 32]");
    actl_adapter_free(a);
    actl_base_free(b);
}

/* Which layers store [in, out]: the c_attn/c_proj/c_fc/q_attn projections of
 * the Conv1D model types (transformers' GPT-2 family), nothing else. */
static void test_validate__conv1d_layers_follow_the_model_type(void **state)
{
    (void)state;
    assert_true(actl__module_stores_in_out("gpt2", "transformer.h.0.attn.c_attn"));
    assert_true(actl__module_stores_in_out("gpt2", "h.3.mlp.c_fc"));
    assert_true(actl__module_stores_in_out("openai-gpt", "h.0.attn.c_proj"));
    assert_true(actl__module_stores_in_out("decision_transformer", "h.0.mlp.c_proj"));
    assert_false(actl__module_stores_in_out("gpt2", "lm_head"));
    assert_false(actl__module_stores_in_out("gpt2", "transformer.h.0.attn.c_attn_x"));
    assert_false(actl__module_stores_in_out("llama", "model.layers.0.self_attn.q_proj"));
    assert_false(actl__module_stores_in_out("llama", "h.0.attn.c_attn"));
    assert_false(actl__module_stores_in_out(NULL, "h.0.attn.c_attn"));

    /* a GPT-2 style base: c_attn stores [in 8, out 24] */
    char *dir = test_tmpdir(), path[512];
    const int64_t sh[2] = {8, 24};
    actl_tensor *t = NULL;
    assert_ok(actl_tensor_new("h.0.attn.c_attn.weight", ACTL_F32, 2, sh, NULL, &t));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const actl_tensor *const ts[] = {t};
    assert_ok(actl_st_write(path, ts, 1, NULL));
    actl_tensor_free(t);
    actl_base *b = NULL;
    assert_ok(actl_base_load(dir, &b));
    /* with or without the flag, A [r, 8] and B [24, r] fit only the Conv1D reading */
    for (int fan = 0; fan < 2; fan++) {
        actl_adapter *a = one_lora("h.0.attn.c_attn", 2, 8, 24, fan);
        assert_ok(actl__adapter_validate_for(a, b, "gpt2"));
        assert_err(actl__adapter_validate_for(a, b, NULL), ACTL_ESHAPE,
                   "needs a base weight [24, 8]");
        actl_adapter_free(a);
    }
    actl_base_free(b);
    test_rmtree(dir);
    free(dir);
}

/* MoS against a base: in and out must split into l shards of the pools' widths. */
static void test_validate__mos_pool_width_and_divisibility(void **state)
{
    (void)state;
    actl_base *b = NULL;
    assert_ok(actl_base_load(BASE_TINY, &b));
    const int64_t si = 4;
    const int32_t idx[4] = {0, 1, 0, 1};
    for (int k = 0; k < 2; k++) {
        /* k 0: l 2, pool_A [2, 8] -> in 16, but q_proj's in is 32: width mismatch
         * k 1: l 3 (r 1 -> 3 indices), 32 is not divisible by 3 */
        const char *cfg = k == 0 ? "{\"peft_type\": \"MOS\", \"r\": 2, \"lora_alpha\": 4,"
                                   " \"mos_shards\": 2}"
                                 : "{\"peft_type\": \"MOS\", \"r\": 1, \"lora_alpha\": 4,"
                                   " \"mos_shards\": 3}";
        const int64_t spa[2] = {2, k == 0 ? 8 : 11}, spb[2] = {2, k == 0 ? 16 : 11};
        const int64_t n = k == 0 ? si : 3;
        actl_tensor *t[4];
        actl_adapter *a = NULL;
        assert_ok(actl_tensor_new("base_model.model.mos.q_proj.pool_A", ACTL_F32, 2, spa, NULL,
                                  &t[0]));
        assert_ok(actl_tensor_new("base_model.model.mos.q_proj.pool_B", ACTL_F32, 2, spb, NULL,
                                  &t[1]));
        assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.mos_index_A",
                                  ACTL_I32, 1, &n, idx, &t[2]));
        assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.mos_index_B",
                                  ACTL_I32, 1, &n, idx, &t[3]));
        assert_ok(actl_adapter_new(cfg, (const actl_tensor *const *)t, 4, "m", &a));
        assert_err(actl_adapter_validate(a, b), ACTL_ESHAPE,
                   k == 0 ? "pools of widths 8 (pool_A) and 16 (pool_B) need in/l = 16"
                          : "is not divisible into mos_shards 3");
        assert_non_null(strstr(actl_errmsg(), "model.layers.0.self_attn.q_proj"));
        for (int i = 0; i < 4; i++)
            actl_tensor_free(t[i]);
        actl_adapter_free(a);
    }
    actl_base_free(b);
}

/* RoAd against a base: the theta length per variant, and out % group_size. */
static void test_validate__road_lengths_against_base(void **state)
{
    (void)state;
    actl_base *b = NULL;
    assert_ok(actl_base_load(BASE_TINY, &b));
    /* road_2 g 8 with theta [16] fits a 16-output k_proj, not the 32-output q_proj */
    static const char *const mods[] = {"model.layers.0.self_attn.k_proj",
                                       "model.layers.0.self_attn.q_proj"};
    for (int k = 0; k < 2; k++) {
        char ka[256], kt[256];
        const int64_t len = 16;
        actl_tensor *t[2];
        actl_adapter *a = NULL;
        snprintf(ka, sizeof ka, "base_model.model.%s.road_alpha", mods[k]);
        snprintf(kt, sizeof kt, "base_model.model.%s.road_theta", mods[k]);
        assert_ok(actl_tensor_new(ka, ACTL_F32, 1, &len, NULL, &t[0]));
        assert_ok(actl_tensor_new(kt, ACTL_F32, 1, &len, NULL, &t[1]));
        assert_ok(actl_adapter_new("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\","
                                   " \"group_size\": 8}",
                                   (const actl_tensor *const *)t, 2, "r", &a));
        if (k == 0)
            assert_ok(actl_adapter_validate(a, b));
        else
            assert_err(actl_adapter_validate(a, b), ACTL_ESHAPE,
                       "road_theta has length 16, but road_2 on a base weight [32, 32] needs 32");
        actl_tensor_free(t[0]);
        actl_tensor_free(t[1]);
        actl_adapter_free(a);
    }
    /* road_1 theta [16] implies 32 outputs, a multiple of g 32, so it imports; on v_proj
     * (16 outputs) the base's width is not a multiple of 32 */
    {
        const int64_t len = 16;
        actl_tensor *t[2];
        actl_adapter *a = NULL;
        assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.v_proj.road_alpha",
                                  ACTL_F32, 1, &len, NULL, &t[0]));
        assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.v_proj.road_theta",
                                  ACTL_F32, 1, &len, NULL, &t[1]));
        assert_ok(actl_adapter_new("{\"peft_type\": \"ROAD\", \"variant\": \"road_1\","
                                   " \"group_size\": 32}",
                                   (const actl_tensor *const *)t, 2, "r", &a));
        assert_err(actl_adapter_validate(a, b), ACTL_ESHAPE, "not a multiple of group_size 32");
        actl_tensor_free(t[0]);
        actl_tensor_free(t[1]);
        actl_adapter_free(a);
    }
    actl_base_free(b);
}

static void test_names__enums_spell_as_configs_do(void **state)
{
    (void)state;
    assert_string_equal(actl_kind_name(ACTL_KIND_MOS), "mos");
    assert_string_equal(actl_road_variant_name(ACTL_ROAD_4), "road_4");
    assert_string_equal(actl_placement_name(ACTL_PLACE_OUTPUT), "output");
    assert_null(actl_placement_name(ACTL_PLACE_NONE));
    assert_string_equal(actl_activation_name(ACTL_ACT_SILU), "silu");
    assert_null(actl_kind_name((actl_kind)0));
    assert_null(actl_road_variant_name((actl_road_variant)3));
    assert_null(actl_activation_name((actl_activation)9));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names__enums_spell_as_configs_do),
        cmocka_unit_test(test_import__every_fixture_kind),
        cmocka_unit_test(test_import__lora_facts),
        cmocka_unit_test(test_import__pattern_scales_by_hand),
        cmocka_unit_test(test_import__options),
        cmocka_unit_test(test_import__road_bottleneck_mos_facts),
        cmocka_unit_test(test_import__bottleneck_placement_by_component),
        cmocka_unit_test(test_kind_name),
        cmocka_unit_test(test_roundtrip__every_fixture_exact),
        cmocka_unit_test(test_roundtrip__unknown_key_and_modules_to_save_survive),
        cmocka_unit_test(test_roundtrip__unsorted_patterns_keep_their_order),
        cmocka_unit_test(test_roundtrip__base_biases_pass_through),
        cmocka_unit_test(test_export__config_text_is_what_python_writes),
        cmocka_unit_test(test_export__refuses_a_non_empty_destination),
        cmocka_unit_test(test_mos__materialize_hand_built),
        cmocka_unit_test(test_mos__materialize_keeps_pass_through_tensors),
        cmocka_unit_test(test_mos__gather_refuses_overflowing_widths),
        cmocka_unit_test(test_mos__materialize_fixture_validates),
        cmocka_unit_test(test_base__tiny_shapes_by_hand),
        cmocka_unit_test(test_base__config_only_equals_weights),
        cmocka_unit_test(test_base__hf_tiny_config_equals_weights),
        cmocka_unit_test(test_base__errors),
        cmocka_unit_test(test_base__config_sizes_are_bounded),
        cmocka_unit_test(test_internal__module_find_and_ends_with),
        cmocka_unit_test(test_validate__base_tiny_fixtures_fit),
        cmocka_unit_test(test_validate__hf_tiny_fixtures_fit_the_real_checkpoint),
        cmocka_unit_test(test_validate__hf_tiny_fixtures_do_not_fit_base_tiny),
        cmocka_unit_test(test_validate__module_missing_and_fan_in_fan_out),
        cmocka_unit_test(test_validate__conv1d_layers_follow_the_model_type),
        cmocka_unit_test(test_validate__mos_pool_width_and_divisibility),
        cmocka_unit_test(test_validate__road_lengths_against_base),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
