/* bench_safetensors: writing and reading a 256 MiB checkpoint against `cp`
 * and `cat` of the same file in the same run. Prints figures and ratios;
 * asserts nothing. */
#include "adapterctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NT 64
#define NEL (1u << 20) /* F32 elements per tensor: 4 MiB each */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double timed_system(const char *cmd)
{
    double t0 = now();
    if (system(cmd) != 0)
        fprintf(stderr, "bench: '%s' failed\n", cmd);
    return now() - t0;
}

int main(void)
{
    char dir[] = "/tmp/actl-bench-XXXXXX", path[256], copy[256], cmd[1024];
    if (!mkdtemp(dir))
        return 1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(copy, sizeof copy, "%s/copy.safetensors", dir);

    actl_tensor *ts[NT];
    float *buf = malloc(NEL * sizeof *buf);
    if (!buf)
        return 1;
    for (int i = 0; i < NT; i++) {
        for (size_t j = 0; j < NEL; j++)
            buf[j] = (float)((i * 131 + j * 7) % 1000) * 1e-3f;
        char name[64];
        int64_t shape[2] = {1024, NEL / 1024};
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", i);
        if (actl_tensor_new(name, ACTL_F32, 2, shape, buf, &ts[i])) {
            fprintf(stderr, "%s\n", actl_errmsg());
            return 1;
        }
    }
    double mb = (double)NT * NEL * 4 / 1e6;

    /* Write (with fsync and rename) against cp + sync of the same bytes. */
    double t0 = now();
    if (actl_st_write(path, (const actl_tensor *const *)ts, NT, NULL)) {
        fprintf(stderr, "%s\n", actl_errmsg());
        return 1;
    }
    double t_write = now() - t0;
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && sync '%s'", path, copy, copy);
    double t_cp = timed_system(cmd);

    /* Open, validate and touch every byte, against cat of the file. */
    double best_read = 1e30, best_cat = 1e30;
    unsigned long long sum = 0;
    for (int r = 0; r < 3; r++) {
        t0 = now();
        actl_st *st = NULL;
        if (actl_st_open(path, &st)) {
            fprintf(stderr, "%s\n", actl_errmsg());
            return 1;
        }
        for (size_t i = 0; i < actl_st_count(st); i++) {
            const actl_tensor *t = actl_st_tensor(st, i);
            const unsigned char *p = actl_tensor_data(t);
            for (size_t k = 0; k < actl_tensor_nbytes(t); k += 64)
                sum += p[k];
        }
        actl_st_close(st);
        double t = now() - t0;
        best_read = t < best_read ? t : best_read;
        snprintf(cmd, sizeof cmd, "cat '%s' > /dev/null", path);
        t = timed_system(cmd);
        best_cat = t < best_cat ? t : best_cat;
    }

    printf("safetensors, %d tensors, %.0f MB (page cache warm)\n", NT, mb);
    printf("%-28s %9s %9s %8s\n", "", "MB/s", "base MB/s", "ratio");
    printf("%-28s %9.0f %9.0f %8.2f   (baseline: cp + sync)\n", "write (tmp, fsync, rename)",
           mb / t_write, mb / t_cp, t_cp / t_write);
    printf("%-28s %9.0f %9.0f %8.2f   (baseline: cat > /dev/null)\n", "open + validate + read",
           mb / best_read, mb / best_cat, best_cat / best_read);
    if (sum == 42)
        printf("\n");

    for (int i = 0; i < NT; i++)
        actl_tensor_free(ts[i]);
    free(buf);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
