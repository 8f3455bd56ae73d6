/* replay.c: runs a harness over files instead of libFuzzer's mutations, so
 * that `make test` (gcc, with or without sanitizers) replays the seeds and
 * every input that once crashed (tests/fuzz/regress/NAME/). Arguments are
 * files or directories (their regular files, not recursively). Exits
 * non-zero when an argument cannot be read; a crash is the harness's own. */
#include "fuzz.h"

#include <dirent.h>
#include <sys/stat.h>

static int replay_file(const char *path)
{
    char *data = NULL;
    size_t len = 0;
    /* 64 MiB: well above any seed or regression input. */
    if (actl__read_file(path, (size_t)64 << 20, &data, &len) != ACTL_OK) {
        fprintf(stderr, "replay: %s\n", actl_errmsg());
        return 1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, len);
    free(data);
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int bad = 0;
    size_t runs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: '%s': no such file or directory\n", argv[i]);
            bad = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad |= replay_file(argv[i]);
            runs++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        if (!d) {
            fprintf(stderr, "replay: '%s': cannot open\n", argv[i]);
            bad = 1;
            continue;
        }
        char **names = NULL;
        size_t n = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            if (n == cap && !(names = actl__grow(names, n, &cap, sizeof *names, 64)))
                abort();
            names[n++] = actl__path_join(argv[i], e->d_name);
        }
        closedir(d);
        if (n)
            qsort(names, n, sizeof *names, name_cmp);
        for (size_t k = 0; k < n; k++) {
            if (stat(names[k], &st) == 0 && S_ISREG(st.st_mode)) {
                bad |= replay_file(names[k]);
                runs++;
            }
            free(names[k]);
        }
        free(names);
    }
    printf("replayed %zu inputs\n", runs);
    return bad;
}
