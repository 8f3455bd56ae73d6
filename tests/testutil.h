/* testutil.h: shared helpers for the cmocka tests. */
#ifndef ACTL_TESTUTIL_H
#define ACTL_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "adapterctl.h"

/* Paths relative to the repository root; tests run from there. */
#define FIXTURES "fixtures"
#define SHARED_DATA "../shared/data"

/* Skips the current test with a visible message when a file of
 * ../shared/data is absent. */
#define REQUIRE_SHARED(path)                                                         \
    do {                                                                             \
        if (access((path), R_OK) != 0) {                                             \
            print_message("SKIP: %s is absent (../shared/data not beside the repo)\n", \
                          (path));                                                   \
            skip();                                                                  \
        }                                                                            \
    } while (0)

/* Asserts rc == want and that the thread's message contains `needle`. */
#define assert_err(rc, want, needle)                                                  \
    do {                                                                              \
        int rc_ = (rc);                                                               \
        if (rc_ != (want) || !strstr(actl_errmsg(), (needle)))                        \
            fail_msg("expected %s containing \"%s\", got %s: \"%s\"",                 \
                     actl_strerror(want), (needle), actl_strerror(rc_), actl_errmsg()); \
    } while (0)

#define assert_ok(rc)                                                                  \
    do {                                                                               \
        int rc_ = (rc);                                                                \
        if (rc_ != ACTL_OK)                                                            \
            fail_msg("expected success, got %s: %s", actl_strerror(rc_), actl_errmsg()); \
    } while (0)

/* A fresh empty directory under $TMPDIR (or /tmp); malloc'd path. */
static inline char *test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/actl-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(p)) {
        free(p);
        fail_msg("mkdtemp failed");
    }
    return p;
}

/* rm -rf of a test directory. */
static inline void test_rmtree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        print_message("warning: could not remove %s\n", dir);
}

#endif
