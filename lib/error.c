/* error.c: result codes, their fixed texts, and the per-thread message. */
#include "internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MSG_MAX 2048

static _Thread_local char last_msg[MSG_MAX];

const char *actl_version(void) { return ACTL_VERSION_STRING; }

const char *actl_strerror(int code)
{
    switch (code) {
    case ACTL_OK: return "success";
    case ACTL_EINVAL: return "invalid argument";
    case ACTL_ENOMEM: return "out of memory";
    case ACTL_EIO: return "input/output error";
    case ACTL_EFORMAT: return "malformed input";
    case ACTL_EUNSUPPORTED: return "unsupported";
    case ACTL_ESHAPE: return "shape mismatch";
    case ACTL_ENOTFOUND: return "not found";
    case ACTL_EEXIST: return "already exists";
    case ACTL_ELIMIT: return "limit exceeded";
    case ACTL_ECORRUPT: return "data corrupt";
    default: return "unknown error";
    }
}

const char *actl_errmsg(void) { return last_msg; }

void actl__err_clear(void) { last_msg[0] = '\0'; }

int actl__err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    return code;
}

int actl__err_wrap(int code, const char *fmt, ...)
{
    char prefix[MSG_MAX / 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t pl = strlen(prefix), ol = strlen(last_msg);
    if (ol == 0) {
        memcpy(last_msg, prefix, pl + 1);
        return code;
    }
    /* "prefix: old", the old message cut to what fits. */
    size_t keep = ol < MSG_MAX - 1 - (pl + 2) ? ol : MSG_MAX - 1 - (pl + 2);
    memmove(last_msg + pl + 2, last_msg, keep);
    last_msg[pl + 2 + keep] = '\0';
    memcpy(last_msg, prefix, pl);
    last_msg[pl] = ':';
    last_msg[pl + 1] = ' ';
    return code;
}

int actl__oom(void) { return actl__err(ACTL_ENOMEM, "out of memory"); }

void *actl__grow(void *p, size_t n, size_t *cap, size_t elem, size_t first)
{
    if (n < *cap)
        return p;
    size_t c = *cap ? 2 * *cap : first;
    if (c > SIZE_MAX / elem)
        return NULL;
    void *q = realloc(p, c * elem);
    if (q)
        *cap = c;
    return q;
}
