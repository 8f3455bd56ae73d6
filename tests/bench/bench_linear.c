/* bench_linear: actl__linear on BF16 weights kept as stored (widened block by block on
 * every call) against the same weights widened to F32 once at load (plain sgemm), in
 * the same run: issue 6, "weights kept as stored, widened on the fly or at load:
 * measure both". Shapes of a 110M-parameter LLaMA's MLP (dim 768, 2048 wide), rows 1
 * (decode of one sequence), 8 and 32 (a batch). Prints figures and ratios; asserts
 * nothing. */
#include "internal.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Calls per timed run: enough for about 20 ms with W. */
static int calls_for(const actl_tensor *W, const float *x, int64_t rows, float *y)
{
    int n = 1;
    for (;;) {
        double t0 = now();
        for (int i = 0; i < n; i++)
            if (actl__linear(W, x, rows, y, false))
                return -1;
        if (now() - t0 > 0.02 || n > (1 << 20))
            return n;
        n *= 2;
    }
}

static double run(const actl_tensor *W, const float *x, int64_t rows, float *y, int n)
{
    double t0 = now();
    for (int i = 0; i < n; i++)
        actl__linear(W, x, rows, y, false);
    return (now() - t0) / n;
}

/* Seconds per call of a and of b, each the best of REPS runs taken alternately, so that
 * a machine busy with something else slows both alike. */
#define REPS 15
static int per_call(const actl_tensor *a, const actl_tensor *b, const float *x, int64_t rows,
                    float *y, double *ta, double *tb)
{
    int na = calls_for(a, x, rows, y), nb = calls_for(b, x, rows, y);
    if (na < 0 || nb < 0)
        return -1;
    *ta = *tb = 1e30;
    for (int r = 0; r < REPS; r++) {
        double t = run(a, x, rows, y, na);
        *ta = t < *ta ? t : *ta;
        t = run(b, x, rows, y, nb);
        *tb = t < *tb ? t : *tb;
    }
    return 0;
}

int main(void)
{
    static const int64_t shapes[2][2] = {{2048, 768}, {768, 2048}}; /* [out, in] */
    static const int64_t rows_list[3] = {1, 8, 32};
    int rc = 0;
    printf("OpenBLAS threads: %d (OPENBLAS_NUM_THREADS sets them)\n", openblas_get_num_threads());
    printf("%-12s %5s %14s %14s %8s %10s\n", "W [out,in]", "rows", "bf16 on fly", "f32 at load",
           "ratio", "GFLOP/s f32");
    for (int s = 0; s < 2 && !rc; s++) {
        int64_t out = shapes[s][0], in = shapes[s][1];
        actl_tensor *wb = NULL, *wf = NULL;
        const int64_t shape[2] = {out, in};
        if (actl_tensor_new("w_bf16", ACTL_BF16, 2, shape, NULL, &wb) ||
            actl_tensor_new("w_f32", ACTL_F32, 2, shape, NULL, &wf)) {
            rc = 1;
            goto next;
        }
        float *f = (float *)actl_tensor_data(wf);
        uint32_t r = 2463534242u;
        for (int64_t i = 0; i < out * in; i++) {
            r ^= r << 13, r ^= r >> 17, r ^= r << 5;
            f[i] = (float)(r >> 8) * (1.0f / (1 << 24)) - 0.5f;
        }
        actl_f32_to_bf16(f, (uint16_t *)actl_tensor_data(wb), (size_t)(out * in));
        /* The F32 copy holds exactly the BF16 values, as ACTL_MODEL_WIDEN would. */
        actl_bf16_to_f32(actl_tensor_data(wb), f, (size_t)(out * in));
        for (int k = 0; k < 3 && !rc; k++) {
            int64_t rows = rows_list[k];
            float *x = malloc(sizeof(float) * (size_t)(rows * in));
            float *y = malloc(sizeof(float) * (size_t)(rows * out));
            if (!x || !y) {
                free(x);
                free(y);
                rc = 1;
                break;
            }
            for (int64_t i = 0; i < rows * in; i++)
                x[i] = (float)(i % 17) * 0.1f - 0.8f;
            double tb, tf;
            if (per_call(wb, wf, x, rows, y, &tb, &tf)) {
                rc = 1;
                tb = tf = 0;
            }
            char name[32];
            snprintf(name, sizeof name, "%lldx%lld", (long long)out, (long long)in);
            printf("%-12s %5lld %11.1f us %11.1f us %7.2fx %10.1f\n", name, (long long)rows,
                   tb * 1e6, tf * 1e6, tb / tf, 2.0 * (double)(rows * out * in) / tf * 1e-9);
            free(x);
            free(y);
        }
    next:
        actl_tensor_free(wb);
        actl_tensor_free(wf);
    }
    printf("ratio: time with BF16 weights widened on the fly / with F32 weights widened at "
           "load (memory: half)\n");
    if (rc)
        fprintf(stderr, "bench_linear: %s\n", actl_errmsg());
    return rc;
}
