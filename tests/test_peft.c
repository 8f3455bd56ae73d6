/* test_peft.c: every way a PEFT directory or an in-memory adapter is refused, each with
 * the code and the words that name the file, key or tensor at fault. */
#include "testutil.h"

#include <math.h>
#include <sys/stat.h>

#define P "base_model.model."
#define Q0 P "model.layers.0.self_attn.q_proj"
#define V0 P "model.layers.0.self_attn.v_proj"
#define G0 P "model.layers.0.mlp.gate_proj"
#define D0 P "model.layers.0.mlp.down_proj"
#define BN_CFG "{\"peft_type\": \"BOTTLENECK\", \"bottleneck_size\": 4"
#define ADAPTERS FIXTURES "/adapters"

/* A small set of tensors to build adapters from. */
typedef struct tset {
    actl_tensor *t[16];
    size_t n;
} tset;

static void add(tset *s, const char *name, actl_dtype dt, int64_t d0, int64_t d1)
{
    int64_t shape[2] = {d0, d1};
    assert_true(s->n < 16);
    assert_ok(actl_tensor_new(name, dt, d1 ? 2 : 1, shape, NULL, &s->t[s->n++]));
}

/* Always 2-D, so a dimension may be 0. */
static void add2(tset *s, const char *name, actl_dtype dt, int64_t d0, int64_t d1)
{
    int64_t shape[2] = {d0, d1};
    assert_true(s->n < 16);
    assert_ok(actl_tensor_new(name, dt, 2, shape, NULL, &s->t[s->n++]));
}

static void add_f32(tset *s, const char *name, int64_t n, const float *v)
{
    assert_true(s->n < 16);
    assert_ok(actl_tensor_new(name, ACTL_F32, 1, &n, v, &s->t[s->n++]));
}

static void add_i32(tset *s, const char *name, int64_t n, const int32_t *v)
{
    assert_true(s->n < 16);
    assert_ok(actl_tensor_new(name, ACTL_I32, 1, &n, v, &s->t[s->n++]));
}

/* actl_adapter_new on the set, which is freed; the adapter too when made. */
static int make(const char *cfg, tset *s)
{
    actl_adapter *a = NULL;
    int rc = actl_adapter_new(cfg, (const actl_tensor *const *)s->t, s->n, "test", &a);
    if (rc == ACTL_OK)
        assert_non_null(a);
    else
        assert_null(a);
    actl_adapter_free(a);
    for (size_t i = 0; i < s->n; i++)
        actl_tensor_free(s->t[i]);
    s->n = 0;
    return rc;
}

/* A good LoRA module: A [4, 16], B [16, 4]. */
static void add_lora(tset *s, const char *module)
{
    char a[256], b[256];
    snprintf(a, sizeof a, "%s.lora_A.weight", module);
    snprintf(b, sizeof b, "%s.lora_B.weight", module);
    add(s, a, ACTL_F32, 4, 16);
    add(s, b, ACTL_F32, 16, 4);
}

#define LORA_CFG "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8"

static void test_new__accepts_the_minimal_lora(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_ok(make(LORA_CFG "}", &s));
    /* PEFT's defaults when r and lora_alpha are absent: r 8 */
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"LORA\"}", &s), ACTL_ESHAPE, "the config's r is 8");
}

/* ---- config ----------------------------------------------------------------------- */

static void test_config__missing_peft_type(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_err(make("{\"r\": 4}", &s), ACTL_EFORMAT, "key 'peft_type' is missing");
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": 7}", &s), ACTL_EFORMAT, "'peft_type' must be a string");
}

static void test_config__missing_peft_type_names_the_file(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), path[4200], cmd[8600];
    snprintf(cmd, sizeof cmd, "cp " ADAPTERS "/base-tiny/lora/adapter_model.safetensors '%s'/",
             tmp);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    FILE *f = fopen(path, "w");
    fputs("{\"r\": 8, \"lora_alpha\": 16}", f);
    fclose(f);
    actl_adapter *a = NULL;
    assert_err(actl_adapter_load(tmp, &a), ACTL_EFORMAT, "adapter_config.json': key 'peft_type'");
    assert_null(a);
    /* and malformed JSON names it with the position */
    f = fopen(path, "w");
    fputs("{\"peft_type\": \"LORA\",}", f);
    fclose(f);
    assert_err(actl_adapter_load(tmp, &a), ACTL_EFORMAT, "adapter_config.json: invalid JSON");
    test_rmtree(tmp);
    free(tmp);
}

static void test_config__unknown_peft_type(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"IA3\"}", &s), ACTL_EUNSUPPORTED, "peft_type 'IA3'");
}

static void test_config__bad_values(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"LORA\", \"r\": \"4\"}", &s), ACTL_EFORMAT, "key 'r'");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"use_rslora\": 1}", &s), ACTL_EFORMAT, "key 'use_rslora'");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"modules_to_save\": \"lm_head\"}", &s), ACTL_EFORMAT,
               "modules_to_save");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"rank_pattern\": {\"q_proj\": 2.5}}", &s), ACTL_EFORMAT,
               "value of 'q_proj'");
    add_lora(&s, Q0);
    assert_err(make("[1, 2]", &s), ACTL_EFORMAT, "not a JSON object");
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": ", &s), ACTL_EFORMAT, "invalid JSON");
}

static void test_config__invalid_regex_in_a_pattern(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"rank_pattern\": {\"q_proj(\": 4}}", &s), ACTL_EFORMAT,
               "key 'rank_pattern': pattern 'q_proj(' is not a valid regex");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"alpha_pattern\": {\"[k\": 4}}", &s), ACTL_EFORMAT,
               "key 'alpha_pattern': pattern '[k'");
}

/* A rank is an int: r and rank_pattern values beyond INT_MAX are refused in the config,
 * before a tensor of that rank (here 0 bytes: its other side is 0 wide) is looked at. */
static void test_config__ranks_beyond_int_range(void **state)
{
    (void)state;
    tset s = {0};
    add2(&s, Q0 ".lora_A.weight", ACTL_F32, 4294967300LL, 0);
    add2(&s, Q0 ".lora_B.weight", ACTL_F32, 0, 4294967300LL);
    assert_err(make(LORA_CFG ", \"rank_pattern\": {\"q_proj\": 4294967300}}", &s), ACTL_EFORMAT,
               "key 'rank_pattern': value of 'q_proj' must be an integer from 1 to 2147483647");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"rank_pattern\": {\"q_proj\": 0}}", &s), ACTL_EFORMAT,
               "value of 'q_proj' must be an integer from 1");
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"LORA\", \"r\": 2147483648}", &s), ACTL_EFORMAT,
               "key 'r' must be an integer from 1 to 2147483647");
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"LORA\", \"r\": 0}", &s), ACTL_EFORMAT, "key 'r'");
}

/* jansson holds no NaN or Inf, so a non-finite lora_alpha, alpha_pattern value or scaling
 * cannot reach the scale math: Python's NaN/Infinity words and overflowing literals are
 * invalid JSON. (peft.c checks isfinite as well, for any other road in.) */
static void test_config__non_finite_numbers_are_refused(void **state)
{
    (void)state;
    static const char *const cfgs[] = {
        "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": NaN}",
        "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 1e999}",
        "{\"peft_type\": \"LORA\", \"r\": 4, \"alpha_pattern\": {\"q_proj\": Infinity}}",
        "{\"peft_type\": \"LORA\", \"r\": 4, \"alpha_pattern\": {\"q_proj\": -1e400}}",
    };
    tset s = {0};
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        add_lora(&s, Q0);
        assert_err(make(cfgs[i], &s), ACTL_EFORMAT, "invalid JSON");
    }
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
    assert_err(make(BN_CFG ", \"scaling\": -1e999}", &s), ACTL_EFORMAT, "invalid JSON");
    /* a number that is not finite-looking but fine: the largest double */
    add_lora(&s, Q0);
    assert_ok(make(LORA_CFG ", \"alpha_pattern\": {\"q_proj\": 1.7976931348623157e308}}", &s));
}

/* ---- tensor keys ------------------------------------------------------------------ */

static void test_keys__unknown_tensor_key(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    add(&s, Q0 ".lora_C.weight", ACTL_F32, 4, 16);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT,
               "tensor '" Q0 ".lora_C.weight' is not a known lora adapter key");
    /* a key without the PEFT prefix */
    add_lora(&s, Q0);
    add(&s, "model.layers.0.self_attn.q_proj.lora_A.weight", ACTL_F32, 4, 16);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT,
               "'model.layers.0.self_attn.q_proj.lora_A.weight' is not a known");
    /* another kind's key */
    add(&s, Q0 ".road_theta", ACTL_F32, 8, 0);
    add(&s, Q0 ".road_alpha", ACTL_F32, 8, 0);
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"ROAD\", \"group_size\": 4}", &s), ACTL_EFORMAT,
               "'" Q0 ".lora_A.weight' is not a known road adapter key");
    /* a duplicate */
    add_lora(&s, Q0);
    add(&s, Q0 ".lora_A.weight", ACTL_F32, 4, 16);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "'" Q0 ".lora_A.weight' appears twice");
    /* nothing at all */
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "no lora adapter tensors");
}

static void test_keys__modules_to_save_match_whole_components(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    add(&s, P "lm_head.weight", ACTL_F32, 8, 16);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "'" P "lm_head.weight' is not a known");
    add_lora(&s, Q0);
    add(&s, P "lm_head.weight", ACTL_F32, 8, 16);
    add(&s, P "model.score.dense.bias", ACTL_F32, 8, 0);
    assert_ok(make(LORA_CFG ", \"modules_to_save\": [\"lm_head\", \"score\"]}", &s));
    /* "lm_head" does not cover "lm_head_x" */
    add_lora(&s, Q0);
    add(&s, P "lm_head_x.weight", ACTL_F32, 8, 16);
    assert_err(make(LORA_CFG ", \"modules_to_save\": [\"lm_head\"]}", &s), ACTL_EFORMAT,
               "lm_head_x.weight");
}

/* PEFT saves trained base biases ("<module>.bias", or "<module>.base_layer.bias" in newer
 * PEFT) when the config's bias is not "none"; with "none" they are unknown keys. */
static void test_keys__base_bias_only_when_bias_is_not_none(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    add(&s, Q0 ".base_layer.bias", ACTL_F32, 16, 0);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT,
               "tensor '" Q0 ".base_layer.bias' looks like a trained base bias, but the "
               "config's bias is \"none\"");
    add_lora(&s, Q0);
    add(&s, P "model.layers.0.mlp.down_proj.bias", ACTL_F32, 16, 0);
    assert_err(make(LORA_CFG ", \"bias\": \"none\"}", &s), ACTL_EFORMAT,
               "'" P "model.layers.0.mlp.down_proj.bias' looks like a trained base bias");
    /* accepted with "all" and "lora_only", old and new key forms */
    add_lora(&s, Q0);
    add(&s, Q0 ".base_layer.bias", ACTL_F32, 16, 0);
    add(&s, P "model.layers.0.mlp.down_proj.bias", ACTL_BF16, 16, 0);
    assert_ok(make(LORA_CFG ", \"bias\": \"all\"}", &s));
    add_lora(&s, Q0);
    add(&s, Q0 ".bias", ACTL_F16, 16, 0);
    assert_ok(make(LORA_CFG ", \"bias\": \"lora_only\"}", &s));
    /* still 1-D float tensors with something in them */
    add_lora(&s, Q0);
    add(&s, Q0 ".bias", ACTL_F32, 16, 2);
    assert_err(make(LORA_CFG ", \"bias\": \"all\"}", &s), ACTL_ESHAPE,
               "'" Q0 ".bias': shape [16, 2], expected 1 dimensions");
    add_lora(&s, Q0);
    add(&s, Q0 ".bias", ACTL_I32, 16, 0);
    assert_err(make(LORA_CFG ", \"bias\": \"all\"}", &s), ACTL_EFORMAT,
               "'" Q0 ".bias': dtype I32, expected F32, F16 or BF16");
    add_lora(&s, Q0);
    add(&s, Q0 ".bias", ACTL_F32, 0, 0); /* [0] */
    assert_err(make(LORA_CFG ", \"bias\": \"all\"}", &s), ACTL_ESHAPE,
               "'" Q0 ".bias': shape [0] has a zero dimension");
    /* a bias alone is not an adapter */
    add(&s, Q0 ".bias", ACTL_F32, 16, 0);
    assert_err(make(LORA_CFG ", \"bias\": \"all\"}", &s), ACTL_EFORMAT,
               "no lora adapter tensors");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"bias\": \"some\"}", &s), ACTL_EUNSUPPORTED,
               "key 'bias': 'some' is not none, all, lora_only or adapter_only");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"bias\": false}", &s), ACTL_EFORMAT,
               "key 'bias' must be a string");
}

/* ---- LoRA -------------------------------------------------------------------------- */

static void test_lora__rank_mismatch_between_a_and_b(void **state)
{
    (void)state;
    tset s = {0};
    add(&s, Q0 ".lora_A.weight", ACTL_F32, 4, 16);
    add(&s, Q0 ".lora_B.weight", ACTL_F32, 16, 3);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE,
               "module 'model.layers.0.self_attn.q_proj': rank mismatch: A [4, 16] has rank 4, "
               "B [16, 3] has 3");
}

static void test_lora__rank_pattern_disagrees_with_a(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"rank_pattern\": {\"v_proj\": 2, \"q_proj\": 8}}", &s),
               ACTL_ESHAPE,
               "module 'model.layers.0.self_attn.q_proj': A [4, 16] has rank 4, but rank_pattern "
               "key 'q_proj' gives 8");
    add_lora(&s, Q0);
    assert_err(make("{\"peft_type\": \"LORA\", \"r\": 2}", &s), ACTL_ESHAPE,
               "has rank 4, but the config's r is 2");
    /* a matching pattern makes a different r fine */
    add_lora(&s, Q0);
    assert_ok(make("{\"peft_type\": \"LORA\", \"r\": 2, \"rank_pattern\": {\"q_proj\": 4}}", &s));
}

static void test_lora__missing_halves_and_dtypes(void **state)
{
    (void)state;
    tset s = {0};
    add(&s, Q0 ".lora_A.weight", ACTL_F32, 4, 16);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT,
               "tensor '" Q0 ".lora_B.weight' is missing");
    add(&s, Q0 ".lora_A.weight", ACTL_F32, 4, 16);
    add(&s, Q0 ".lora_B.weight", ACTL_F16, 16, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "A is F32 but B is F16");
    add(&s, Q0 ".lora_A.weight", ACTL_I32, 4, 16);
    add(&s, Q0 ".lora_B.weight", ACTL_I32, 16, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "dtype I32, expected F32, F16 or BF16");
    add(&s, Q0 ".lora_A.weight", ACTL_F64, 4, 16);
    add(&s, Q0 ".lora_B.weight", ACTL_F64, 16, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_EUNSUPPORTED, "dtype F64");
    add(&s, Q0 ".lora_A.weight", ACTL_F32, 64, 0);
    add(&s, Q0 ".lora_B.weight", ACTL_F32, 16, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE, "shape [64], expected 2 dimensions");
}

static void test_lora__dora_without_magnitude(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"use_dora\": true}", &s), ACTL_EFORMAT,
               "'" Q0 ".lora_magnitude_vector' is missing");
    add_lora(&s, Q0);
    add(&s, Q0 ".lora_magnitude_vector", ACTL_F32, 16, 0);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "use_dora is false");
    add_lora(&s, Q0);
    add(&s, Q0 ".lora_magnitude_vector", ACTL_F32, 15, 0);
    assert_err(make(LORA_CFG ", \"use_dora\": true}", &s), ACTL_ESHAPE,
               "lora_magnitude_vector': shape [15], expected [16]");
}

static void test_lora__bias_needs_lora_bias(void **state)
{
    (void)state;
    tset s = {0};
    add_lora(&s, Q0);
    add(&s, Q0 ".lora_B.bias", ACTL_F32, 16, 0);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "lora_bias is false");
    add_lora(&s, Q0);
    assert_err(make(LORA_CFG ", \"lora_bias\": true}", &s), ACTL_EFORMAT,
               "'" Q0 ".lora_B.bias' is missing");
    add_lora(&s, Q0);
    add(&s, Q0 ".lora_B.bias", ACTL_F32, 4, 0);
    assert_err(make(LORA_CFG ", \"lora_bias\": true}", &s), ACTL_ESHAPE,
               "shape [4], expected [16]");
}

static void test_lora__embedding_cannot_mix_with_linear_keys(void **state)
{
    (void)state;
    tset s = {0};
    add(&s, P "model.embed_tokens.lora_embedding_A", ACTL_F32, 4, 100);
    add(&s, P "model.embed_tokens.lora_B.weight", ACTL_F32, 16, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT,
               "module 'model.embed_tokens' has both lora_A/lora_B and lora_embedding_A/B");
    add(&s, P "model.embed_tokens.lora_embedding_A", ACTL_F32, 4, 100);
    assert_err(make(LORA_CFG "}", &s), ACTL_EFORMAT, "model.embed_tokens.lora_embedding_B' is missing");
}

/* A 0 width holds no bytes and would make the module fit no base it is checked against
 * (or skip the check, 0 meaning "not implied"): refused for A, B and the embedding pair. */
static void test_lora__zero_width_or_rank_tensors(void **state)
{
    (void)state;
    tset s = {0};
    /* in 0, out 0: A [4, 0], B [0, 4] */
    add2(&s, Q0 ".lora_A.weight", ACTL_F32, 4, 0);
    add2(&s, Q0 ".lora_B.weight", ACTL_F32, 0, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE,
               "tensor '" Q0 ".lora_A.weight': shape [4, 0] has a zero dimension");
    add2(&s, Q0 ".lora_A.weight", ACTL_F32, 4, 16);
    add2(&s, Q0 ".lora_B.weight", ACTL_F32, 0, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE,
               "tensor '" Q0 ".lora_B.weight': shape [0, 4] has a zero dimension");
    /* rank 0 */
    add2(&s, Q0 ".lora_A.weight", ACTL_F32, 0, 16);
    add2(&s, Q0 ".lora_B.weight", ACTL_F32, 16, 0);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE, "shape [0, 16] has a zero dimension");
    /* embedding: vocab 0, dim 0 */
    add2(&s, P "model.embed_tokens.lora_embedding_A", ACTL_F32, 4, 0);
    add2(&s, P "model.embed_tokens.lora_embedding_B", ACTL_F32, 0, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE,
               "tensor '" P "model.embed_tokens.lora_embedding_A': shape [4, 0] has a zero "
               "dimension");
    add2(&s, P "model.embed_tokens.lora_embedding_A", ACTL_F32, 4, 100);
    add2(&s, P "model.embed_tokens.lora_embedding_B", ACTL_F32, 0, 4);
    assert_err(make(LORA_CFG "}", &s), ACTL_ESHAPE,
               "lora_embedding_B': shape [0, 4] has a zero dimension");
}

/* ---- RoAd ---------------------------------------------------------------------------- */

static void add_road(tset *s, int64_t theta, int64_t alpha)
{
    add(s, Q0 ".road_theta", ACTL_F32, theta, 0);
    add(s, Q0 ".road_alpha", ACTL_F32, alpha, 0);
}

static void test_road__bad_lengths(void **state)
{
    (void)state;
    tset s = {0};
    add_road(&s, 8, 6);
    assert_err(make("{\"peft_type\": \"ROAD\", \"group_size\": 4}", &s), ACTL_ESHAPE,
               "road_theta [8] and road_alpha [6] differ");
    /* road_4 stores 2 * out values: an odd length has no out */
    add_road(&s, 9, 9);
    assert_err(make("{\"peft_type\": \"ROAD\", \"variant\": \"road_4\", \"group_size\": 2}", &s),
               ACTL_ESHAPE, "road_theta length 9 (road_4)");
    add(&s, Q0 ".road_theta", ACTL_F32, 8, 0);
    assert_err(make("{\"peft_type\": \"ROAD\", \"group_size\": 4}", &s), ACTL_EFORMAT,
               "'" Q0 ".road_alpha' is missing");
    add(&s, Q0 ".road_theta", ACTL_F32, 2, 4);
    add(&s, Q0 ".road_alpha", ACTL_F32, 8, 0);
    assert_err(make("{\"peft_type\": \"ROAD\", \"group_size\": 4}", &s), ACTL_ESHAPE,
               "expected 1 dimensions");
}

static void test_road__group_size_odd_or_not_dividing(void **state)
{
    (void)state;
    tset s = {0};
    add_road(&s, 6, 6);
    assert_err(make("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\", \"group_size\": 3}", &s),
               ACTL_EFORMAT, "key 'group_size': 3 is odd");
    /* road_2: out = 12, not a multiple of 8 */
    add_road(&s, 12, 12);
    assert_err(make("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\", \"group_size\": 8}", &s),
               ACTL_ESHAPE, "not give an output width that is a multiple of group_size 8");
    /* road_1: out = 2 * 6 = 12, a multiple of 4 and of 12 */
    add_road(&s, 6, 6);
    assert_ok(make("{\"peft_type\": \"ROAD\", \"variant\": \"road_1\", \"group_size\": 4}", &s));
    /* default group_size 64 */
    add_road(&s, 16, 16);
    assert_err(make("{\"peft_type\": \"ROAD\"}", &s), ACTL_ESHAPE, "group_size 64");
    add_road(&s, 16, 16);
    assert_err(make("{\"peft_type\": \"ROAD\", \"variant\": \"road_3\"}", &s), ACTL_EUNSUPPORTED,
               "'road_3'");
}

static void test_road__zero_length(void **state)
{
    (void)state;
    tset s = {0};
    add_road(&s, 0, 0);
    assert_err(make("{\"peft_type\": \"ROAD\", \"variant\": \"road_2\", \"group_size\": 2}", &s),
               ACTL_ESHAPE, "tensor '" Q0 ".road_theta': shape [0] has a zero dimension");
}

/* ---- bottleneck ------------------------------------------------------------------------ */


static void test_bottleneck__shape_mismatch(void **state)
{
    (void)state;
    tset s = {0};
    /* series on gate's input: D [4, 16] needs U [16, 4] */
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 20, 4);
    assert_err(make(BN_CFG "}", &s), ACTL_ESHAPE,
               "module 'model.layers.0.mlp.gate_proj': adapter_down [4, 16] and adapter_up "
               "[20, 4] do not fit bottleneck_size 4 in input placement");
    /* the same pair is a fine parallel adapter (n = in 16, m = out 20) */
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 20, 4);
    assert_ok(make(BN_CFG ", \"use_parallel_adapter\": true}", &s));
    /* bottleneck_size disagrees with D */
    add(&s, D0 ".adapter_down.weight", ACTL_F32, 3, 16);
    add(&s, D0 ".adapter_up.weight", ACTL_F32, 16, 3);
    assert_err(make(BN_CFG "}", &s), ACTL_ESHAPE, "bottleneck_size 4 in output placement");
    add(&s, D0 ".adapter_down.weight", ACTL_F32, 4, 16);
    assert_err(make(BN_CFG "}", &s), ACTL_EFORMAT, "adapter_up.weight' is missing");
    add(&s, D0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, D0 ".adapter_up.weight", ACTL_F32, 16, 4);
    assert_err(make(BN_CFG ", \"non_linearity\": \"softsign\"}", &s), ACTL_EUNSUPPORTED,
               "'softsign'");
}

static void test_bottleneck__learnable_scalar_needs_its_tensor(void **state)
{
    (void)state;
    tset s = {0};
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
    assert_err(make(BN_CFG ", \"scaling\": \"learnable_scalar\"}", &s), ACTL_EFORMAT,
               "'" G0 ".adapter_scaling' is missing");
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
    add(&s, G0 ".adapter_scaling", ACTL_F32, 1, 0);
    assert_err(make(BN_CFG ", \"scaling\": 2.0}", &s), ACTL_EFORMAT,
               "scaling is not \"learnable_scalar\"");
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
    add(&s, G0 ".adapter_scaling", ACTL_F32, 2, 0);
    assert_err(make(BN_CFG ", \"scaling\": \"learnable_scalar\"}", &s), ACTL_ESHAPE,
               "shape [2], expected [1]");
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
    assert_err(make(BN_CFG ", \"scaling\": \"learned\"}", &s), ACTL_EFORMAT, "'learned'");
}

/* D [4, 0] U [0, 4] on gate's input would be a series adapter on a 0-wide input. */
static void test_bottleneck__zero_width(void **state)
{
    (void)state;
    tset s = {0};
    add2(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 0);
    add2(&s, G0 ".adapter_up.weight", ACTL_F32, 0, 4);
    assert_err(make(BN_CFG "}", &s), ACTL_ESHAPE,
               "tensor '" G0 ".adapter_down.weight': shape [4, 0] has a zero dimension");
    add2(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add2(&s, G0 ".adapter_up.weight", ACTL_F32, 0, 4);
    assert_err(make(BN_CFG ", \"use_parallel_adapter\": true}", &s), ACTL_ESHAPE,
               "tensor '" G0 ".adapter_up.weight': shape [0, 4] has a zero dimension");
}

/* A learned scale of NaN or Inf would poison every output of the module. */
static void test_bottleneck__non_finite_learned_scale(void **state)
{
    (void)state;
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    const char *const words[3] = {"is NaN", "is infinite", "is infinite"};
    tset s = {0};
    for (int i = 0; i < 3; i++) {
        add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
        add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
        add_f32(&s, G0 ".adapter_scaling", 1, &bad[i]);
        assert_err(make(BN_CFG ", \"scaling\": \"learnable_scalar\"}", &s), ACTL_EFORMAT,
                   "tensor '" G0 ".adapter_scaling': the learned scale");
        assert_non_null(strstr(actl_errmsg(), words[i]));
    }
    const float fine = -0.5f;
    add(&s, G0 ".adapter_down.weight", ACTL_F32, 4, 16);
    add(&s, G0 ".adapter_up.weight", ACTL_F32, 16, 4);
    add_f32(&s, G0 ".adapter_scaling", 1, &fine);
    assert_ok(make(BN_CFG ", \"scaling\": \"learnable_scalar\"}", &s));
}

/* ---- MoS ---------------------------------------------------------------------------------- */

#define MOS_CFG "{\"peft_type\": \"MOS\", \"r\": 2, \"lora_alpha\": 4, \"mos_shards\": 2}"

static void add_pools(tset *s, int64_t rows)
{
    add(s, P "mos.q_proj.pool_A", ACTL_F32, rows, 8);
    add(s, P "mos.q_proj.pool_B", ACTL_F32, rows, 8);
}

static void test_mos__index_out_of_range(void **state)
{
    (void)state;
    static const int32_t ok[4] = {0, 1, 2, 0}, bad[4] = {0, 1, 2, 3}, neg[4] = {0, -1, 0, 0};
    tset s = {0};
    add_pools(&s, 3);
    add_i32(&s, Q0 ".mos_index_A", 4, bad);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_err(make(MOS_CFG, &s), ACTL_EFORMAT,
               "module 'model.layers.0.self_attn.q_proj': mos_index_A[3] = 3 is out of range for "
               "pool " P "mos.q_proj.pool_A with 3 rows");
    add_pools(&s, 3);
    add_i32(&s, Q0 ".mos_index_A", 4, ok);
    add_i32(&s, Q0 ".mos_index_B", 4, neg);
    assert_err(make(MOS_CFG, &s), ACTL_EFORMAT, "mos_index_B[1] = -1 is out of range");
    add_pools(&s, 3);
    add_i32(&s, Q0 ".mos_index_A", 4, ok);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_ok(make(MOS_CFG, &s));
}

static void test_mos__indices_and_pools_malformed(void **state)
{
    (void)state;
    static const int32_t ok[6] = {0, 1, 2, 0, 1, 2};
    tset s = {0};
    /* r 2 x l 2 = 4 indices, not 6 */
    add_pools(&s, 3);
    add_i32(&s, Q0 ".mos_index_A", 6, ok);
    add_i32(&s, Q0 ".mos_index_B", 6, ok);
    assert_err(make(MOS_CFG, &s), ACTL_ESHAPE, "shape [6], expected [4] (r 2 x mos_shards 2)");
    /* indices as floats */
    add_pools(&s, 3);
    add(&s, Q0 ".mos_index_A", ACTL_F32, 4, 0);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_err(make(MOS_CFG, &s), ACTL_EFORMAT, "dtype F32, expected I32");
    /* no pool_B for the type */
    add(&s, P "mos.q_proj.pool_A", ACTL_F32, 3, 8);
    add_i32(&s, Q0 ".mos_index_A", 4, ok);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_err(make(MOS_CFG, &s), ACTL_EFORMAT, "pool tensor '" P "mos.q_proj.pool_B' is missing");
    /* pools of different dtypes */
    add(&s, P "mos.q_proj.pool_A", ACTL_F32, 3, 8);
    add(&s, P "mos.q_proj.pool_B", ACTL_BF16, 3, 8);
    add_i32(&s, Q0 ".mos_index_A", 4, ok);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_err(make(MOS_CFG, &s), ACTL_EFORMAT, "pool_A is F32 but pool_B is BF16");
    add_pools(&s, 3);
    add_i32(&s, Q0 ".mos_index_A", 4, ok);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_err(make("{\"peft_type\": \"MOS\", \"r\": 2}", &s), ACTL_EFORMAT,
               "key 'mos_shards' is missing");
}

static void test_mos__zero_sized_pools(void **state)
{
    (void)state;
    static const int32_t zero[4] = {0, 0, 0, 0};
    tset s = {0};
    add2(&s, P "mos.q_proj.pool_A", ACTL_F32, 3, 0);
    add2(&s, P "mos.q_proj.pool_B", ACTL_F32, 3, 8);
    add_i32(&s, Q0 ".mos_index_A", 4, zero);
    add_i32(&s, Q0 ".mos_index_B", 4, zero);
    assert_err(make(MOS_CFG, &s), ACTL_ESHAPE,
               "tensor '" P "mos.q_proj.pool_A': shape [3, 0] has a zero dimension");
    add2(&s, P "mos.q_proj.pool_A", ACTL_F32, 3, 8);
    add2(&s, P "mos.q_proj.pool_B", ACTL_F32, 0, 8);
    add_i32(&s, Q0 ".mos_index_A", 4, zero);
    add_i32(&s, Q0 ".mos_index_B", 4, zero);
    assert_err(make(MOS_CFG, &s), ACTL_ESHAPE,
               "tensor '" P "mos.q_proj.pool_B': shape [0, 8] has a zero dimension");
}

/* A pool's width times mos_shards is the module's in (or out) width: 2^34 x 2^30 does not
 * fit in int64. The pools have 0 rows (no bytes) and the indices are 2 long, not the
 * 2^30 that r x l asks for: the width check comes first and nothing large is made. */
static void test_mos__pool_width_times_shards_overflows(void **state)
{
    (void)state;
    static const int32_t idx[2] = {0, 0};
    const char *cfg = "{\"peft_type\": \"MOS\", \"r\": 1, \"lora_alpha\": 4,"
                      " \"mos_shards\": 1073741824}";
    tset s = {0};
    add2(&s, P "mos.q_proj.pool_A", ACTL_F32, 0, 17179869184LL);
    add2(&s, P "mos.q_proj.pool_B", ACTL_F32, 0, 8);
    add_i32(&s, Q0 ".mos_index_A", 2, idx);
    add_i32(&s, Q0 ".mos_index_B", 2, idx);
    assert_err(make(cfg, &s), ACTL_ELIMIT,
               "tensor '" P "mos.q_proj.pool_A': width 17179869184 x mos_shards 1073741824 does "
               "not fit in 64 bits");
    add2(&s, P "mos.q_proj.pool_A", ACTL_F32, 0, 8);
    add2(&s, P "mos.q_proj.pool_B", ACTL_F32, 0, 9223372036854775807LL);
    add_i32(&s, Q0 ".mos_index_A", 2, idx);
    add_i32(&s, Q0 ".mos_index_B", 2, idx);
    assert_err(make("{\"peft_type\": \"MOS\", \"r\": 1, \"mos_shards\": 2}", &s), ACTL_ELIMIT,
               "pool_B': width 9223372036854775807 x mos_shards 2");
}

/* Every tensor belongs to a module or passes through: a pool that no module uses is
 * neither (and materialize would carry it into a LoRA). */
static void test_mos__unused_pool(void **state)
{
    (void)state;
    static const int32_t ok[4] = {0, 1, 2, 0};
    tset s = {0};
    add_pools(&s, 3);
    add(&s, P "mos.k_proj.pool_A", ACTL_F32, 3, 8);
    add(&s, P "mos.k_proj.pool_B", ACTL_F32, 3, 8);
    add_i32(&s, Q0 ".mos_index_A", 4, ok);
    add_i32(&s, Q0 ".mos_index_B", 4, ok);
    assert_err(make(MOS_CFG, &s), ACTL_EFORMAT,
               "pool tensor '" P "mos.k_proj.pool_A' is used by no module");
}

/* ---- files --------------------------------------------------------------------------------- */

static void test_load__refuses_pickles(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.bin", tmp);
    FILE *f = fopen(path, "wb");
    fputs("\x80\x02}q\x00.", f); /* a pickle's first bytes */
    fclose(f);
    actl_adapter *a = NULL;
    int rc = actl_adapter_load(tmp, &a);
    assert_err(rc, ACTL_EUNSUPPORTED, "adapter_model.bin' is a pickle file");
    assert_non_null(strstr(actl_errmsg(), "pickle files can run arbitrary code when loaded"));
    assert_non_null(strstr(actl_errmsg(),
                           "from safetensors.torch import save_file; import torch; "
                           "save_file(torch.load(\"adapter_model.bin\", weights_only=True), "
                           "\"adapter_model.safetensors\", metadata={\"format\": \"pt\"})"));
    assert_null(a);
    test_rmtree(tmp);
    free(tmp);
}

static void test_load__missing_files(void **state)
{
    (void)state;
    actl_adapter *a = NULL;
    assert_err(actl_adapter_load(FIXTURES "/adapters/none", &a), ACTL_ENOTFOUND,
               "'" FIXTURES "/adapters/none': no such directory");
    char *tmp = test_tmpdir(), cmd[8600], path[4200];
    assert_err(actl_adapter_load(tmp, &a), ACTL_ENOTFOUND, "adapter_config.json");
    snprintf(cmd, sizeof cmd, "cp " ADAPTERS "/base-tiny/lora/adapter_config.json '%s'/", tmp);
    assert_int_equal(system(cmd), 0);
    assert_err(actl_adapter_load(tmp, &a), ACTL_ENOTFOUND, "adapter_model.safetensors': no such");
    /* a truncated weights file: the reader's message, naming it */
    snprintf(cmd, sizeof cmd,
             "head -c 100 " ADAPTERS "/base-tiny/lora/adapter_model.safetensors > "
             "'%s'/adapter_model.safetensors", tmp);
    assert_int_equal(system(cmd), 0);
    int rc = actl_adapter_load(tmp, &a);
    assert_int_not_equal(rc, ACTL_OK);
    assert_non_null(strstr(actl_errmsg(), "adapter_model.safetensors"));
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    assert_err(actl_adapter_load(path, &a), ACTL_EFORMAT, "not a directory");
    assert_null(a);
    test_rmtree(tmp);
    free(tmp);
}

/* Loading from a directory names the weights file in tensor errors. */
static void test_load__tensor_errors_name_the_file(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), cmd[8600], path[4200];
    snprintf(cmd, sizeof cmd, "cp " ADAPTERS "/base-tiny/lora/adapter_model.safetensors '%s'/",
             tmp);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    FILE *f = fopen(path, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8}", f); /* the file has r 8 */
    fclose(f);
    actl_adapter *a = NULL;
    assert_err(actl_adapter_load(tmp, &a), ACTL_ESHAPE,
               "adapter_model.safetensors': module 'model.layers.0.self_attn.q_proj': A [8, 32] "
               "has rank 8, but the config's r is 4");
    test_rmtree(tmp);
    free(tmp);
}

static void test_api__null_arguments(void **state)
{
    (void)state;
    actl_adapter *a = NULL;
    assert_int_equal(actl_adapter_load(NULL, &a), ACTL_EINVAL);
    assert_int_equal(actl_adapter_new(NULL, NULL, 0, NULL, &a), ACTL_EINVAL);
    assert_int_equal(actl_adapter_new("{}", NULL, 2, NULL, &a), ACTL_EINVAL);
    assert_int_equal(actl_adapter_save(NULL, "x"), ACTL_EINVAL);
    assert_int_equal(actl_adapter_validate(NULL, NULL), ACTL_EINVAL);
    assert_int_equal(actl_adapter_materialize(NULL, &a), ACTL_EINVAL);
    assert_int_equal(actl_adapter_module_count(NULL), 0);
    assert_int_equal(actl_adapter_tensor_count(NULL), 0);
    assert_null(actl_adapter_tensor(NULL, 0));
    assert_null(actl_adapter_find(NULL, "x"));
    assert_null(actl_adapter_config(NULL));
    actl_adapter_free(NULL);
    actl_base_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new__accepts_the_minimal_lora),
        cmocka_unit_test(test_config__missing_peft_type),
        cmocka_unit_test(test_config__missing_peft_type_names_the_file),
        cmocka_unit_test(test_config__unknown_peft_type),
        cmocka_unit_test(test_config__bad_values),
        cmocka_unit_test(test_config__invalid_regex_in_a_pattern),
        cmocka_unit_test(test_config__ranks_beyond_int_range),
        cmocka_unit_test(test_config__non_finite_numbers_are_refused),
        cmocka_unit_test(test_keys__unknown_tensor_key),
        cmocka_unit_test(test_keys__modules_to_save_match_whole_components),
        cmocka_unit_test(test_keys__base_bias_only_when_bias_is_not_none),
        cmocka_unit_test(test_lora__rank_mismatch_between_a_and_b),
        cmocka_unit_test(test_lora__rank_pattern_disagrees_with_a),
        cmocka_unit_test(test_lora__missing_halves_and_dtypes),
        cmocka_unit_test(test_lora__dora_without_magnitude),
        cmocka_unit_test(test_lora__bias_needs_lora_bias),
        cmocka_unit_test(test_lora__embedding_cannot_mix_with_linear_keys),
        cmocka_unit_test(test_lora__zero_width_or_rank_tensors),
        cmocka_unit_test(test_road__bad_lengths),
        cmocka_unit_test(test_road__group_size_odd_or_not_dividing),
        cmocka_unit_test(test_road__zero_length),
        cmocka_unit_test(test_bottleneck__shape_mismatch),
        cmocka_unit_test(test_bottleneck__learnable_scalar_needs_its_tensor),
        cmocka_unit_test(test_bottleneck__zero_width),
        cmocka_unit_test(test_bottleneck__non_finite_learned_scale),
        cmocka_unit_test(test_mos__index_out_of_range),
        cmocka_unit_test(test_mos__indices_and_pools_malformed),
        cmocka_unit_test(test_mos__zero_sized_pools),
        cmocka_unit_test(test_mos__pool_width_times_shards_overflows),
        cmocka_unit_test(test_mos__unused_pool),
        cmocka_unit_test(test_load__refuses_pickles),
        cmocka_unit_test(test_load__missing_files),
        cmocka_unit_test(test_load__tensor_errors_name_the_file),
        cmocka_unit_test(test_api__null_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
