/* bench_convert: 16-bit float conversions against memcpy of the same output
 * bytes, measured in the same run. Prints figures and ratios; asserts nothing. */
#include "adapterctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N (32u << 20) /* elements: 64 MiB of 16-bit input, 128 MiB of floats */
#define REPS 5

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint16_t *h, *h2;
static float *f, *f2;

static void cpy4(void) { memcpy(f2, f, N * 4); }
static void cpy2(void) { memcpy(h2, h, N * 2); }
static void h2f(void) { actl_f16_to_f32(h, f2, N); }
static void b2f(void) { actl_bf16_to_f32(h, f2, N); }
static void f2h(void) { actl_f32_to_f16(f, h2, N); }
static void f2b(void) { actl_f32_to_bf16(f, h2, N); }

/* Best of REPS, in seconds. */
static double best(void (*fn)(void))
{
    double b = 1e30;
    for (int r = 0; r < REPS; r++) {
        double t0 = now();
        fn();
        double t = now() - t0;
        if (t < b)
            b = t;
    }
    return b;
}

int main(void)
{
    h = malloc(N * 2), h2 = malloc(N * 2);
    f = malloc(N * 4), f2 = malloc(N * 4);
    if (!h || !h2 || !f || !f2)
        return 1;
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        h[i] = (uint16_t)(0x3000 | (x & 0x0fff)); /* finite values of both formats */
        f[i] = (float)(x >> 8) * 1e-7f - 0.8f;
    }
    memset(f2, 0, N * 4);
    memset(h2, 0, N * 2);
    double t_cpy4 = best(cpy4);
    double t_cpy2 = best(cpy2);
    struct { const char *name; double t, base; } rows[4] = {
        {"f16 -> f32", best(h2f), t_cpy4},
        {"bf16 -> f32", best(b2f), t_cpy4},
        {"f32 -> f16", best(f2h), t_cpy2},
        {"f32 -> bf16", best(f2b), t_cpy2},
    };
    printf("conversion of %u elements (best of %d); baseline: memcpy of the output bytes\n", N, REPS);
    printf("%-12s %12s %14s %8s\n", "", "Melem/s", "memcpy Melem/s", "ratio");
    for (int i = 0; i < 4; i++)
        printf("%-12s %12.0f %14.0f %8.2f\n", rows[i].name, N / rows[i].t / 1e6,
               N / rows[i].base / 1e6, rows[i].base / rows[i].t);
    free(h), free(h2), free(f), free(f2);
    return 0;
}
