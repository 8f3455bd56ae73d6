/* bench_decode: the CPU decoder on a Llama-shaped F32 model of about 110M
 * parameters (dim 768, 12 layers, 12 heads, hidden 2048, vocab 32000, the
 * llama2.c stories110M shape), generated once into
 * ${TMPDIR:-/tmp}/adapterctl-bench-decode/ and reused.
 *
 * Figures (issue 6, acceptance 5), each the best of 3 interleaved runs:
 *  - decode tokens/s with no adapter at batch 1, 8 and 32 (every sequence an
 *    8-token prompt, then 32 new tokens; the prefill is not counted), and
 *    batch 32's throughput over batch 1's (goal >= 8);
 *  - 32 requests over 32 distinct RoAd adapters (road_1, all seven
 *    projections of every layer), the step time over batch 32 with no
 *    adapter in the same run (goal <= 1.03);
 *  - the same with 32 distinct LoRA adapters, rank 8 on all seven
 *    projections (goal <= 1.15), stored in F32, and again stored in BF16 (as
 *    PEFT saves an adapter trained in bf16 without autocast; the decoder
 *    keeps its factors 16-bit, so a step reads half the adapter bytes).
 * Prints figures; asserts nothing. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define DIM 768
#define HIDDEN 2048
#define LAYERS 12
#define HEADS 12
#define VOCAB 32000
#define PROMPT 8
#define STEPS 48
#define NADAPT 32
#define RUNS 7

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float uniform_pm(float scale) /* uniform in (-scale, scale) */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    double u = (double)((rng * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
    return (float)((2 * u - 1) * scale);
}

/* A random tensor, stored as dt (F32 or BF16). */
static int add_tensor_as(actl_tensor ***list, size_t *n, const char *name, int ndim,
                         const int64_t *shape, float scale, float fill, actl_dtype dt)
{
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= shape[i];
    float *v = malloc(sizeof *v * (size_t)numel);
    uint16_t *h = dt == ACTL_BF16 ? malloc(sizeof *h * (size_t)numel) : NULL;
    actl_tensor **l = realloc(*list, sizeof *l * (*n + 1));
    int rc = ACTL_ENOMEM;
    if (!v || !l || (dt == ACTL_BF16 && !h))
        goto out;
    *list = l;
    for (int64_t i = 0; i < numel; i++)
        v[i] = scale > 0 ? uniform_pm(scale) : fill;
    if (h)
        actl_f32_to_bf16(v, h, (size_t)numel);
    rc = actl_tensor_new(name, dt, ndim, shape, h ? (const void *)h : (const void *)v, &l[*n]);
    if (!rc)
        (*n)++;
out:
    free(v);
    free(h);
    return rc;
}

static int add_tensor(actl_tensor ***list, size_t *n, const char *name, int ndim,
                      const int64_t *shape, float scale, float fill)
{
    return add_tensor_as(list, n, name, ndim, shape, scale, fill, ACTL_F32);
}

static const int64_t proj_shape[ACTL__NPROJ][2] = {
    {DIM, DIM}, {DIM, DIM}, {DIM, DIM}, {DIM, DIM}, {HIDDEN, DIM}, {HIDDEN, DIM}, {DIM, HIDDEN}};

/* The model directory, generated when absent. */
static int make_model(const char *dir)
{
    char path[4096 + 32];
    struct stat st;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (stat(path, &st) == 0)
        return 0;
    fprintf(stderr, "bench_decode: generating a 110M-parameter F32 model into %s (once)\n", dir);
    mkdir(dir, 0755);
    actl_tensor **t = NULL;
    size_t n = 0;
    int rc = 0;
    int64_t emb[2] = {VOCAB, DIM}, norm[1] = {DIM};
    rc |= add_tensor(&t, &n, "model.embed_tokens.weight", 2, emb, 0.05f, 0);
    rc |= add_tensor(&t, &n, "lm_head.weight", 2, emb, 0.05f, 0);
    rc |= add_tensor(&t, &n, "model.norm.weight", 1, norm, 0, 1.0f);
    for (int l = 0; l < LAYERS && !rc; l++) {
        char name[128];
        for (int p = 0; p < ACTL__NPROJ; p++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, actl__proj_names[p]);
            rc |= add_tensor(&t, &n, name, 2, proj_shape[p],
                             1.0f / sqrtf((float)proj_shape[p][1]), 0);
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        rc |= add_tensor(&t, &n, name, 1, norm, 0, 1.0f);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        rc |= add_tensor(&t, &n, name, 1, norm, 0, 1.0f);
    }
    if (!rc)
        rc = actl_st_write(path, (const actl_tensor *const *)t, n, NULL);
    for (size_t i = 0; i < n; i++)
        actl_tensor_free(t[i]);
    free(t);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return ACTL_EIO;
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
               "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
               "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
               "\"max_position_embeddings\": 1024, \"rms_norm_eps\": 1e-05, "
               "\"rope_theta\": 10000.0, \"vocab_size\": %d, \"tie_word_embeddings\": false, "
               "\"bos_token_id\": 1, \"eos_token_id\": 2, \"torch_dtype\": \"float32\"}\n",
            DIM, HIDDEN, LAYERS, HEADS, HEADS, VOCAB);
    return fclose(f) ? ACTL_EIO : 0;
}

/* A RoAd road_1 (group 64) or a LoRA r8 (stored as lora_dt) on all seven
 * projections of every layer, random, in memory. */
static actl_adapter *make_adapter(int road, actl_dtype lora_dt)
{
    actl_tensor **t = NULL;
    size_t n = 0;
    int rc = 0;
    actl_adapter *a = NULL;
    for (int l = 0; l < LAYERS && !rc; l++)
        for (int p = 0; p < ACTL__NPROJ && !rc; p++) {
            char name[192];
            int64_t out = proj_shape[p][0], in = proj_shape[p][1];
            const char *m = actl__proj_names[p];
            if (road) {
                int64_t len[1] = {out / 2};
                snprintf(name, sizeof name, ACTL_PEFT_PREFIX "model.layers.%d.%s.road_theta", l, m);
                rc |= add_tensor(&t, &n, name, 1, len, 0.3f, 0);
                snprintf(name, sizeof name, ACTL_PEFT_PREFIX "model.layers.%d.%s.road_alpha", l, m);
                rc |= add_tensor(&t, &n, name, 1, len, 0, 1.02f);
            } else {
                int64_t sa[2] = {8, in}, sb[2] = {out, 8};
                snprintf(name, sizeof name, ACTL_PEFT_PREFIX "model.layers.%d.%s.lora_A.weight",
                         l, m);
                rc |= add_tensor_as(&t, &n, name, 2, sa, 1.0f / sqrtf((float)in), 0,
                                    lora_dt);
                snprintf(name, sizeof name, ACTL_PEFT_PREFIX "model.layers.%d.%s.lora_B.weight",
                         l, m);
                rc |= add_tensor_as(&t, &n, name, 2, sb, 0.02f, 0, lora_dt);
            }
        }
    const char *cfg = road ? "{\"peft_type\": \"ROAD\", \"variant\": \"road_1\", "
                             "\"group_size\": 64, \"target_modules\": [\"q_proj\", \"k_proj\", "
                             "\"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]}"
                           : "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, "
                             "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", "
                             "\"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]}";
    if (!rc && actl_adapter_new(cfg, (const actl_tensor *const *)t, n, "bench", &a))
        fprintf(stderr, "bench_decode: %s\n", actl_errmsg());
    for (size_t i = 0; i < n; i++)
        actl_tensor_free(t[i]);
    free(t);
    return a;
}

/* One run: `batch` sequences (handles[i] or 0), PROMPT-token prompts, then
 * STEPS decode steps. Returns the seconds of the decode steps, or -1. */
static double run(actl_batch *b, int batch, const int *handles)
{
    int seqs[64];
    int32_t prompt[PROMPT];
    for (int i = 0; i < batch; i++) {
        for (int k = 0; k < PROMPT; k++)
            prompt[k] = (int32_t)(1 + (i * 131 + k * 17) % (VOCAB - 1));
        actl_request r = actl_request_default();
        r.prompt = prompt;
        r.n_prompt = PROMPT;
        r.adapter = handles ? handles[i] : 0;
        r.max_tokens = STEPS + 1;
        if (actl_batch_add(b, &r, &seqs[i])) {
            fprintf(stderr, "bench_decode: %s\n", actl_errmsg());
            return -1;
        }
    }
    double t0 = 0;
    for (int s = 0; s <= STEPS; s++) {
        if (s == 1)
            t0 = now(); /* step 0 is the prefill */
        if (actl_batch_step(b, NULL)) {
            fprintf(stderr, "bench_decode: %s\n", actl_errmsg());
            return -1;
        }
    }
    double t = now() - t0;
    for (int i = 0; i < batch; i++)
        actl_batch_remove(b, seqs[i]);
    return t;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/adapterctl-bench-decode", tmp && *tmp ? tmp : "/tmp");
    mkdir(dir, 0755);
    actl_model *m = NULL;
    actl_batch *b = NULL;
    actl_adapter *ad[3 * NADAPT] = {0};
    int road_h[NADAPT], lora_h[NADAPT], bf16_h[NADAPT];
    int rc = 1;
    if (make_model(dir) || actl_model_load(dir, 0, &m)) {
        fprintf(stderr, "bench_decode: cannot make or load the model: %s\n", actl_errmsg());
        goto out;
    }
    actl_batch_opts o = actl_batch_default_opts();
    o.max_seqs = 32;
    o.max_ctx = PROMPT + STEPS + 2;
    if (actl_batch_new(m, &o, &b))
        goto fail;
    for (int i = 0; i < NADAPT; i++) {
        if (!(ad[i] = make_adapter(1, ACTL_F32)) ||
            !(ad[NADAPT + i] = make_adapter(0, ACTL_F32)) ||
            !(ad[2 * NADAPT + i] = make_adapter(0, ACTL_BF16)))
            goto fail;
        actl_input in = {ad[i], 1.0, "road", NULL};
        actl_input il = {ad[NADAPT + i], 1.0, "lora", NULL};
        actl_input ib = {ad[2 * NADAPT + i], 1.0, "lora-bf16", NULL};
        if (actl_batch_adapter(b, &in, 1, &road_h[i]) ||
            actl_batch_adapter(b, &il, 1, &lora_h[i]) ||
            actl_batch_adapter(b, &ib, 1, &bf16_h[i]))
            goto fail;
    }
    /* Each round runs the six cases, the four batch-32 ones in a rotating
     * order; a mixed batch's ratio is taken within its round (the machine's
     * speed drifts between rounds) and the median over rounds is printed. */
    enum { NCASE = 6, NMIXED = NCASE - 3 };
    const int *mixed[NMIXED] = {road_h, lora_h, bf16_h};
    double best[NCASE], ratio[NMIXED][RUNS];
    for (int k = 0; k < NCASE; k++)
        best[k] = 1e30;
    for (int r = 0; r < RUNS; r++) {
        double t[NCASE];
        t[0] = run(b, 1, NULL);
        t[1] = run(b, 8, NULL);
        for (int k = 0; k < NCASE - 2; k++) {
            int c = 2 + (r + k) % (NCASE - 2);
            t[c] = run(b, 32, c == 2 ? NULL : mixed[c - 3]);
        }
        for (int k = 0; k < NCASE; k++) {
            if (t[k] < 0)
                goto out;
            if (t[k] < best[k])
                best[k] = t[k];
        }
        for (int k = 0; k < NMIXED; k++)
            ratio[k][r] = t[3 + k] / t[2];
    }
    double tps1 = STEPS / best[0], tps8 = 8 * STEPS / best[1], tps32 = 32 * STEPS / best[2];
    printf("decode on a 110M F32 Llama-shaped model (dim %d, %d layers, vocab %d; %d-token "
           "prompts, %d new tokens; best of %d rounds, ratios the median of per-round ones)\n",
           DIM, LAYERS, VOCAB, PROMPT, STEPS, RUNS);
    printf("  no adapter, batch 1:   %8.1f tokens/s\n", tps1);
    printf("  no adapter, batch 8:   %8.1f tokens/s   %.2fx batch 1\n", tps8, tps8 / tps1);
    printf("  no adapter, batch 32:  %8.1f tokens/s   %.2fx batch 1 (goal >= 8)\n", tps32,
           tps32 / tps1);
    printf("  32 RoAd road_1 (all seven), batch 32: %8.1f tokens/s   time %.3fx no adapter "
           "(goal <= 1.03)\n", 32 * STEPS / best[3], median(ratio[0], RUNS));
    printf("  32 LoRA r8 (all seven), batch 32:     %8.1f tokens/s   time %.3fx no adapter "
           "(goal <= 1.15)\n", 32 * STEPS / best[4], median(ratio[1], RUNS));
    printf("  32 LoRA r8 BF16 (all seven), batch 32:%8.1f tokens/s   time %.3fx no adapter "
           "(goal <= 1.15)\n", 32 * STEPS / best[5], median(ratio[2], RUNS));
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "bench_decode: %s\n", actl_errmsg());
out:
    actl_batch_free(b);
    for (int i = 0; i < 3 * NADAPT; i++)
        actl_adapter_free(ad[i]);
    actl_model_free(m);
    return rc;
}
