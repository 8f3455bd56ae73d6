/* bench_store.c: a store of 100,000 small adapters with varied tags (issue 3,
 * acceptance 3), then the median time of the real binary running
 *   list --tag task=X --limit 50,  show NAME,  add PATH (a 1 MB adapter)
 * beside the spawn cost of the same binary doing nothing (--version), and the
 * same operations through the library in this process.
 *
 *   bench_store [ADAPTERCTL [N]]   (default build/adapterctl, N = 100000)
 *
 * The store lives under /tmp and is removed at the end. Times are printed,
 * never asserted. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "adapterctl.h"

extern char **environ;

#define RUNS 21
#define GOAL_MS 20.0
#define DISTINCT 1000 /* distinct small adapters: packs are shared beyond this */
#define N_TASKS 50
#define N_USERS 2000

static const char *const langs[] = {"en", "fr", "de", "es", "zh", "ja", "pt", "ru"};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_store: %s: %s: %s\n", what, actl_strerror(rc), actl_errmsg());
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* A deterministic pseudo-random stream (splitmix64). */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Roughly N(0, sigma): the sum of four uniforms, centred. */
static float gauss(uint64_t *s, float sigma)
{
    double u = 0;
    for (int i = 0; i < 4; i++)
        u += (double)(mix(s) >> 11) / 9007199254740992.0;
    return (float)((u - 2.0) * 1.7320508 * sigma);
}

/* A LoRA adapter on `modules` q_proj modules with A [r, width], B [width, r],
 * values from seed. */
static actl_adapter *make_lora(uint64_t seed, int modules, int r, int width)
{
    actl_tensor **ts = calloc((size_t)(2 * modules), sizeof *ts);
    float *buf = malloc((size_t)r * (size_t)width * sizeof *buf);
    if (!ts || !buf) {
        fprintf(stderr, "bench_store: out of memory\n");
        exit(1);
    }
    uint64_t s = seed * 7919 + 1;
    for (int m = 0; m < modules; m++)
        for (int k = 0; k < 2; k++) {
            char name[160];
            snprintf(name, sizeof name,
                     "base_model.model.model.layers.%d.self_attn.q_proj.lora_%c.weight", m,
                     k ? 'B' : 'A');
            for (int i = 0; i < r * width; i++)
                buf[i] = gauss(&s, 0.02f);
            int64_t shape[2] = {k ? width : r, k ? r : width};
            int rc = actl_tensor_new(name, ACTL_F32, 2, shape, buf, &ts[2 * m + k]);
            if (rc)
                die("tensor", rc);
        }
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %d, \"target_modules\": "
             "[\"q_proj\"], \"base_model_name_or_path\": \"bench/base\"}",
             r, 2 * r);
    actl_adapter *a = NULL;
    int rc = actl_adapter_new(cfg, (const actl_tensor *const *)ts, (size_t)(2 * modules),
                              "bench", &a);
    if (rc)
        die("adapter", rc);
    for (int i = 0; i < 2 * modules; i++)
        actl_tensor_free(ts[i]);
    free(ts);
    free(buf);
    return a;
}

/* Runs argv with stdout and stderr to /dev/null; milliseconds from spawn to
 * exit, or -1 when it fails (exit status in *status). */
static double run(char *const argv[], int *status)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    double t0 = now_ms();
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        *status = -1;
        return -1;
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    double t = now_ms() - t0;
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return *status == 0 ? t : -1;
}

/* Sum of file sizes under path (bytes actually allocated). */
static uint64_t du(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return 0;
    uint64_t n = (uint64_t)sb.st_blocks * 512;
    if (!S_ISDIR(sb.st_mode))
        return n;
    DIR *d = opendir(path);
    if (!d)
        return n;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        n += du(p);
    }
    closedir(d);
    return n;
}

static void row(const char *what, double cli, int cli_status, double lib, double base)
{
    char c[64], r[64];
    if (cli >= 0)
        snprintf(c, sizeof c, "%8.2f ms", cli);
    else
        snprintf(c, sizeof c, "failed (exit %d)", cli_status);
    if (cli >= 0 && base > 0)
        snprintf(r, sizeof r, "%6.2fx", cli / base);
    else
        snprintf(r, sizeof r, "%7s", "-");
    printf("  %-34s %16s   %s   %8.2f ms   %4.0f ms\n", what, c, r, lib, GOAL_MS);
}

int main(int argc, char **argv)
{
    const char *bin = argc > 1 ? argv[1] : "build/adapterctl";
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 100000;
    if (n < 100)
        n = 100;
    char *bin_abs = realpath(bin, NULL);
    if (!bin_abs) {
        fprintf(stderr, "bench_store: cannot find the binary '%s'\n", bin);
        return 1;
    }
    char dir[] = "/tmp/actl-bench-store-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char store[4096];
    snprintf(store, sizeof store, "%s/store", dir);

    /* ---- build ---- */
    actl_store *s = NULL;
    int rc = actl_store_open(store, ACTL_STORE_CREATE, &s);
    if (rc)
        die("open", rc);
    actl_adapter **small = calloc(DISTINCT, sizeof *small);
    for (int i = 0; i < DISTINCT; i++)
        small[i] = make_lora((uint64_t)i + 1, 1, 4, 16);
    double t0 = now_ms();
    uint64_t us = 12345;
    for (long i = 0; i < n; i++) {
        char name[64], task[32], user[32], lang[16];
        snprintf(name, sizeof name, "adapter-%06ld", i);
        snprintf(task, sizeof task, "task=t%02ld", i % N_TASKS);
        snprintf(user, sizeof user, "user=u%04d", (int)(mix(&us) % N_USERS));
        snprintf(lang, sizeof lang, "lang=%s", langs[(i / 7) % 8]);
        const char *tags[] = {task, user, lang, i % 10 == 0 ? "tier=gold" : NULL, NULL};
        actl_add_opts o = actl_add_default_opts();
        o.name = name;
        o.tags = tags;
        if ((rc = actl_store_add(s, small[i % DISTINCT], &o, NULL)))
            die("add", rc);
        if ((i + 1) % 20000 == 0)
            fprintf(stderr, "  ... %ld adapters, %.1f s\n", i + 1, (now_ms() - t0) / 1e3);
    }
    double build_s = (now_ms() - t0) / 1e3;
    actl_store_stats st;
    if ((rc = actl_store_stats_get(s, &st)))
        die("stats", rc);
    actl_store_close(s);
    s = NULL;
    for (int i = 0; i < DISTINCT; i++)
        actl_adapter_free(small[i]);
    free(small);
    char cat[4200], obj[4200];
    snprintf(cat, sizeof cat, "%s/catalog.db", store);
    snprintf(obj, sizeof obj, "%s/objects", store);
    uint64_t cat_b = du(cat), obj_b = du(obj), all_b = du(store);

    printf("store: %lld adapters, %lld packs, built with actl_store_add in %.1f s "
           "(%.2f ms per add)\n",
           (long long)st.versions, (long long)st.packs, build_s, build_s * 1e3 / (double)n);
    printf("store size: %.1f MB on disk (catalog.db %.1f MB, objects %.1f MB, rest: WAL)\n",
           all_b / 1e6, cat_b / 1e6, obj_b / 1e6);

    /* ---- 1 MB adapters, distinct content per add ---- */
    /* src: for the binary; lsrc: for the library (a pack already stored
     * would be shared, skipping the write). */
    static char src[RUNS][4200], lsrc[RUNS][4200];
    for (int i = 0; i < 2 * RUNS; i++) {
        /* 2 modules x (A [16, 4096] + B [4096, 16]) x 4 bytes = 1 MiB */
        actl_adapter *a = make_lora(1000000 + (uint64_t)i, 2, 16, 4096);
        char *p = i < RUNS ? src[i] : lsrc[i - RUNS];
        snprintf(p, 4200, "%s/%s-%02d", dir, i < RUNS ? "src" : "lsrc", i % RUNS);
        if ((rc = actl_adapter_save(a, p)))
            die("save", rc);
        actl_adapter_free(a);
    }

    /* ---- the binary ---- */
    double tv[RUNS], tl[RUNS], ts[RUNS], ta[RUNS];
    int sv = 0, sl = 0, ss = 0, sa = 0;
    bool ok_v = true, ok_l = true, ok_s = true, ok_a = true;
    for (int i = 0; i < RUNS; i++) {
        char task[32], name[64], big[32];
        snprintf(task, sizeof task, "task=t%02d", (i * 7) % N_TASKS);
        snprintf(name, sizeof name, "adapter-%06ld", (long)((i * 4793L) % n));
        snprintf(big, sizeof big, "big-%02d", i);
        char *v[] = {bin_abs, "--version", NULL};
        char *l[] = {bin_abs, "--store", store, "list", "--tag", task, "--limit", "50", NULL};
        char *sh[] = {bin_abs, "--store", store, "show", name, NULL};
        char *ad[] = {bin_abs, "--store", store, "add", src[i], "--name", big, NULL};
        int x;
        tv[i] = run(v, &x);
        if (tv[i] < 0)
            ok_v = false, sv = x;
        tl[i] = run(l, &x);
        if (tl[i] < 0)
            ok_l = false, sl = x;
        ts[i] = run(sh, &x);
        if (ts[i] < 0)
            ok_s = false, ss = x;
        ta[i] = run(ad, &x);
        if (ta[i] < 0)
            ok_a = false, sa = x;
    }
    double base = ok_v ? median(tv, RUNS) : -1;
    double ml = ok_l ? median(tl, RUNS) : -1, ms = ok_s ? median(ts, RUNS) : -1,
           ma = ok_a ? median(ta, RUNS) : -1;

    /* ---- the library, in process ---- */
    double ll[RUNS], ls[RUNS], la[RUNS];
    for (int i = 0; i < RUNS; i++) {
        char task[32], name[64], big[32];
        snprintf(task, sizeof task, "task=t%02d", (i * 11) % N_TASKS);
        snprintf(name, sizeof name, "adapter-%06ld", (long)((i * 7919L) % n));
        snprintf(big, sizeof big, "lib-%02d", i);
        const char *tags[] = {task, NULL};
        actl_entries *e = NULL;

        double t = now_ms();
        if ((rc = actl_store_open(store, 0, &s)))
            die("open", rc);
        actl_query q = actl_query_default();
        q.tags = tags;
        q.limit = 50;
        if ((rc = actl_store_list(s, &q, &e)))
            die("list", rc);
        if (actl_entries_count(e) != (size_t)(n / N_TASKS < 50 ? n / N_TASKS : 50))
            fprintf(stderr, "bench_store: list gave %zu entries\n", actl_entries_count(e));
        actl_entries_free(e);
        actl_store_close(s);
        ll[i] = now_ms() - t;

        t = now_ms();
        if ((rc = actl_store_open(store, 0, &s)) || (rc = actl_store_show(s, name, &e)))
            die("show", rc);
        actl_entries_free(e);
        actl_store_close(s);
        ls[i] = now_ms() - t;

        /* As the command does: import the directory, then add. */
        t = now_ms();
        actl_adapter *a = NULL;
        actl_add_opts o = actl_add_default_opts();
        o.name = big;
        if ((rc = actl_store_open(store, 0, &s)) || (rc = actl_adapter_load(lsrc[i], &a)) ||
            (rc = actl_store_add(s, a, &o, NULL)))
            die("add", rc);
        actl_adapter_free(a);
        actl_store_close(s);
        la[i] = now_ms() - t;
    }

    printf("medians of %d runs; baseline: the same binary doing nothing ('--version')\n", RUNS);
    printf("  %-34s %16s   %7s   %11s   %s\n", "", "binary", "/ base", "library", "goal");
    if (ok_v)
        printf("  %-34s %13.2f ms   %6.2fx\n", "--version (baseline)", base, 1.0);
    else
        printf("  %-34s failed (exit %d)\n", "--version (baseline)", sv);
    row("list --tag task=X --limit 50", ml, sl, median(ll, RUNS), base);
    row("show NAME", ms, ss, median(ls, RUNS), base);
    row("add PATH --name N (1 MiB adapter)", ma, sa, median(la, RUNS), base);

    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_store: could not remove %s\n", dir);
    free(bin_abs);
    return 0;
}
