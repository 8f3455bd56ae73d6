/* bench_compose: the pruned compose methods (ties, dare_linear) on one
 * Llama-7B-shaped module, 4096 x 4096, two rank-16 LoRA inputs, density 0.5,
 * rank 16: the whole actl_compose call with the randomized truncation (the
 * default above 512) against the same call with the full fp64 SVD (LAPACK
 * dgesdd, forced through actl__compose_exact_dim), in the same run on the
 * same module. Prints the times, their ratio, and the reported errors: the
 * full SVD's is the optimal rank-16 error, so their ratio less one is how
 * far the randomized truncation is from the optimum. One call each (the
 * full SVD takes 20-50 s, the whole run about a minute); asserts nothing. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DIM 4096
#define RANK 16
#define MODULE "model.layers.0.self_attn.q_proj"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64*: fixed seed, the same inputs every run. */
static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double uniform01(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return ((double)((rng * 0x2545F4914F6CDD1Dull) >> 11) + 0.5) * 0x1.0p-53; /* (0, 1) */
}

static double normal(void)
{
    return sqrt(-2.0 * log(uniform01())) * cos(2.0 * M_PI * uniform01());
}

/* A LoRA with one module: A [RANK, DIM] ~ N(0, 1/DIM) (PEFT's init scale),
 * B [DIM, RANK] ~ N(0, 0.01^2) (a trained B is small), alpha 2r. */
static actl_adapter *make_input(void)
{
    int64_t sa[2] = {RANK, DIM}, sb[2] = {DIM, RANK};
    float *A = malloc(sizeof *A * RANK * DIM), *B = malloc(sizeof *B * DIM * RANK);
    actl_tensor *t[2] = {NULL, NULL};
    actl_adapter *a = NULL;
    char cfg[96];
    if (!A || !B)
        goto out;
    for (size_t i = 0; i < (size_t)RANK * DIM; i++) {
        A[i] = (float)(normal() / sqrt((double)DIM));
        B[i] = (float)(0.01 * normal());
    }
    snprintf(cfg, sizeof cfg, "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %d}", RANK,
             2 * RANK);
    if (actl_tensor_new(ACTL_PEFT_PREFIX MODULE ".lora_A.weight", ACTL_F32, 2, sa, A, &t[0]) ||
        actl_tensor_new(ACTL_PEFT_PREFIX MODULE ".lora_B.weight", ACTL_F32, 2, sb, B, &t[1]) ||
        actl_adapter_new(cfg, (const actl_tensor *const *)t, 2, "bench", &a))
        fprintf(stderr, "bench_compose: %s\n", actl_errmsg());
out:
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    free(A);
    free(B);
    return a;
}

/* One compose call: its time in seconds and its reported error, or a
 * negative time on failure. */
static double timed(const actl_input *in, actl_compose_method m, double *err)
{
    actl_compose_opts o = actl_compose_default_opts();
    o.method = m;
    o.rank = RANK;
    o.density = 0.5;
    o.seed = 42;
    o.has_seed = 1;
    actl_adapter *res = NULL;
    actl_compose_report *rep = NULL;
    double t0 = now();
    int rc = actl_compose(in, 2, &o, &res, &rep);
    double t = now() - t0;
    if (rc) {
        fprintf(stderr, "bench_compose: %s\n", actl_errmsg());
        t = -1;
    } else {
        *err = actl_compose_report_overall(rep);
    }
    actl_compose_report_free(rep);
    actl_adapter_free(res);
    return t;
}

int main(void)
{
    static const actl_compose_method methods[2] = {ACTL_COMPOSE_TIES, ACTL_COMPOSE_DARE_LINEAR};
    int status = 0;
    actl_adapter *a = make_input(), *b = make_input();
    if (!a || !b) {
        status = 1;
        goto out;
    }
    actl_input in[2] = {{a, 1.0, "a", NULL}, {b, 1.0, "b", NULL}};
    printf("compose of one %d x %d module, two rank-%d LoRA inputs, density 0.5, rank %d\n",
           DIM, DIM, RANK, RANK);
    printf("baseline: the same call with the full fp64 SVD (dgesdd)\n");
    printf("%-12s %9s %11s %8s %10s %10s %12s\n", "method", "sketch s", "full SVD s", "speedup",
           "error", "optimal", "err/opt - 1");
    for (int i = 0; i < 2; i++) {
        double e_fast = 0, e_full = 0;
        int64_t keep = actl__compose_exact_dim;
        double t_fast = timed(in, methods[i], &e_fast);
        actl__compose_exact_dim = INT64_MAX;
        double t_full = t_fast < 0 ? -1 : timed(in, methods[i], &e_full);
        actl__compose_exact_dim = keep;
        if (t_fast < 0 || t_full < 0) {
            status = 1;
            break;
        }
        printf("%-12s %9.2f %11.2f %8.1f %10.6f %10.6f %12.1e\n",
               actl_compose_method_name(methods[i]), t_fast, t_full, t_full / t_fast, e_fast,
               e_full, e_fast / e_full - 1);
        fflush(stdout);
    }
out:
    actl_adapter_free(a);
    actl_adapter_free(b);
    return status;
}
