/* pack.c: the pack, one immutable self-describing file per adapter version
 * (DESIGN.md 4.4), named by the SHA-256 of its bytes.
 *
 *    0   8  "ACTLPACK"
 *    8   4  format version (u32 LE, ACTL_PACK_FORMAT)
 *   12   4  the low 32 bits of XXH64 (seed 0) of the H header bytes (u32 LE),
 *           so a damaged header is caught even when the caller has no digest
 *   16   8  header length H (u64 LE), a multiple of 8
 *   24   H  compact JSON with sorted keys, padded with spaces:
 *           {"config":{...},"format":1,"tensors":[{"codec":"actz1",
 *            "dtype":"BF16","name":"...","offset":0,"raw":...,"sha256":"...",
 *            "shape":[...],"stored":...},...]}
 *   24+H    the codec frames (codec.c), in tensor order, back to back; offsets
 *           count from here; the file ends with the last frame.
 * Tensors are sorted by name (strictly increasing, so names are unique), and
 * each carries the SHA-256 of its raw bytes. Same adapter in, same bytes out. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PREFIX 24
#define CODEC_NAME "actz1"
/* No zstd frame expands more than 2^15 times: an RLE block turns 4 bytes into
 * at most 128 KiB. A tensor claiming more than that from its frame is corrupt,
 * and is refused before its buffer is allocated. */
#define MAX_EXPANSION 32768u

char *actl__pack_path(const char *objects_dir, const char *hex)
{
    size_t dl = strlen(objects_dir);
    bool slash = dl > 0 && objects_dir[dl - 1] == '/';
    return actl__strdup_printf("%s%s%.2s/%s", objects_dir, slash ? "" : "/", hex, hex);
}

bool actl__is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false; /* the NUL of a shorter string stops here too */
    return s[n] == '\0';
}

/* Whether the file at path is a regular file whose SHA-256 is hex. Any
 * failure to read it counts as "no": the caller then replaces it. */
static int file_has_digest(const char *path, const char *hex, bool *same)
{
    int fd = -1, rc = ACTL_OK;
    uint64_t size;
    actl__sha256 *h = NULL;
    unsigned char *buf = NULL, digest[32];
    *same = false;
    if (actl__open_regular(path, &fd, &size) != ACTL_OK) {
        actl__err_clear();
        return ACTL_OK;
    }
    if (!(buf = malloc(1 << 18))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__sha256_new(&h)))
        goto out;
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 18);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out; /* unreadable: not the same */
        if (r == 0)
            break;
        if ((rc = actl__sha256_update(h, buf, (size_t)r)))
            goto out;
    }
    rc = actl__sha256_final(h, digest);
    h = NULL;
    if (rc)
        goto out;
    char got[65];
    actl__hex(digest, 32, got);
    *same = strcmp(got, hex) == 0;
out:
    actl__sha256_free(h);
    free(buf);
    close(fd);
    return rc;
}

/* ---- write ------------------------------------------------------------------ */

/* The JSON entry of one tensor into *out. */
static int tensor_json(const actl_tensor *t, uint64_t offset, uint64_t stored, const char *sha,
                       const char *origin, json_t **out)
{
    /* jansson refuses strings that are not UTF-8 (running out of memory
     * looks the same, and is far less likely). */
    json_t *name = json_string(t->name);
    if (!name)
        return actl__err(ACTL_EINVAL, "'%s': tensor name '%s' is not valid UTF-8", origin,
                         t->name);
    json_t *o = json_object(), *shape = json_array();
    bool ok = o && shape;
    for (int d = 0; ok && d < t->ndim; d++)
        ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
    /* json_object_set_new takes the value even when it fails. */
    if (ok) {
        ok = json_object_set_new(o, "shape", shape) == 0;
        shape = NULL;
    }
    if (ok) {
        ok = json_object_set_new(o, "name", name) == 0;
        name = NULL;
    }
    ok = ok && json_object_set_new(o, "codec", json_string(CODEC_NAME)) == 0 &&
         json_object_set_new(o, "dtype", json_string(actl_dtype_name(t->dtype))) == 0 &&
         json_object_set_new(o, "offset", json_integer((json_int_t)offset)) == 0 &&
         json_object_set_new(o, "raw", json_integer((json_int_t)t->nbytes)) == 0 &&
         json_object_set_new(o, "sha256", json_string(sha)) == 0 &&
         json_object_set_new(o, "stored", json_integer((json_int_t)stored)) == 0;
    json_decref(shape);
    json_decref(name);
    if (!ok) {
        json_decref(o);
        return actl__oom();
    }
    *out = o;
    return ACTL_OK;
}

/* mkdir that accepts an existing directory; *made tells whether it was new. */
static int ensure_dir(const char *dir, bool *made)
{
    if (made)
        *made = false;
    if (mkdir(dir, 0777) == 0) {
        if (made)
            *made = true;
        return ACTL_OK;
    }
    if (errno == EEXIST && actl__is_dir(dir))
        return ACTL_OK;
    return actl__err(ACTL_EIO, "cannot create directory '%s': %s", dir, strerror(errno));
}

static int write_all(int fd, const void *buf, size_t n, const char *path)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return actl__err(ACTL_EIO, "cannot write '%s': %s", path,
                             w < 0 ? strerror(errno) : "short write");
        p += w;
        n -= (size_t)w;
    }
    return ACTL_OK;
}

/* Moves the complete, fsynced file src to `path` (objects_dir/<2>/<64>), unless
 * a file with its digest is already there: then src is removed and the file in
 * place shared. A file of that name with other bytes (damaged, or cut short by
 * a crash of a system without ordered writes) is replaced. The fanout
 * directory is fsynced after a rename, and objects_dir too when the fanout
 * directory is new. */
static int place(const char *objects_dir, const char *src, const char *path, const char *hex)
{
    bool made_fan = false, same = false;
    char *fandir = strdup(path);
    int rc = ACTL_OK;
    if (!fandir)
        return actl__oom();
    *strrchr(fandir, '/') = '\0';
    if ((rc = ensure_dir(objects_dir, NULL)) || (rc = ensure_dir(fandir, &made_fan)) ||
        (rc = file_has_digest(path, hex, &same)))
        goto out;
    if (same) {
        if (unlink(src) != 0 && errno != ENOENT)
            rc = actl__err(ACTL_EIO, "cannot remove '%s': %s", src, strerror(errno));
        goto out;
    }
    if (rename(src, path) != 0) {
        rc = actl__err(ACTL_EIO, "cannot rename '%s' to '%s': %s", src, path, strerror(errno));
        goto out;
    }
    if ((rc = actl__fsync_dir(fandir)))
        goto out;
    if (made_fan)
        rc = actl__fsync_dir(objects_dir);
out:
    free(fandir);
    return rc;
}

int actl__pack_install(const char *objects_dir, const char *src, const char *hex)
{
    if (!objects_dir || !src || !hex)
        return actl__err(ACTL_EINVAL, "pack install: NULL argument");
    if (!actl__is_hex(hex, 64))
        return actl__err(ACTL_EINVAL, "pack install: '%s' is not a SHA-256 in lowercase hex",
                         hex);
    char *path = actl__pack_path(objects_dir, hex);
    if (!path)
        return actl__oom();
    int rc = place(objects_dir, src, path, hex);
    free(path);
    return rc;
}

/* Puts the pack's three pieces at `path` through a temporary file in
 * objects_dir/tmp: write, fsync, then place(). */
static int publish(const char *objects_dir, const char *path, const char *hex,
                   const unsigned char *prefix, const char *header, size_t hlen,
                   const unsigned char *frames, size_t flen)
{
    int rc = ACTL_OK, fd = -1;
    bool created = false;
    char *tmpdir = actl__path_join(objects_dir, "tmp");
    char *tmp = tmpdir ? actl__path_join(tmpdir, "pack.XXXXXX") : NULL;
    if (!tmp) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = ensure_dir(objects_dir, NULL)) || (rc = ensure_dir(tmpdir, NULL)))
        goto out;
    if ((fd = mkstemp(tmp)) < 0) {
        rc = actl__err(ACTL_EIO, "cannot create a temporary file in '%s': %s", tmpdir,
                       strerror(errno));
        goto out;
    }
    created = true;
    /* mkstemp gives 0600; packs are published like any other file. */
    mode_t um = umask(0);
    umask(um);
    (void)fchmod(fd, 0666 & ~um);
    if ((rc = write_all(fd, prefix, PREFIX, tmp)) || (rc = write_all(fd, header, hlen, tmp)) ||
        (rc = write_all(fd, frames, flen, tmp)))
        goto out;
    if (fsync(fd) != 0) {
        rc = actl__err(ACTL_EIO, "cannot sync '%s': %s", tmp, strerror(errno));
        goto out;
    }
    int cr = close(fd);
    fd = -1;
    if (cr != 0) {
        rc = actl__err(ACTL_EIO, "cannot write '%s': %s", tmp, strerror(errno));
        goto out;
    }
    rc = place(objects_dir, tmp, path, hex);
    created = rc != ACTL_OK; /* placed: renamed or removed */
out:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    free(tmp);
    free(tmpdir);
    return rc;
}

int actl__pack_write(const actl_adapter *a, const char *objects_dir, char hex[65],
                     uint64_t *stored, uint64_t *raw)
{
    int rc = ACTL_OK;
    unsigned char *frames = NULL;
    json_t *root = NULL, *list = NULL;
    char *text = NULL, *header = NULL, *path = NULL;
    actl__sha256 *h = NULL;
    if (!a || !objects_dir || !hex)
        return actl__err(ACTL_EINVAL, "pack write: NULL argument");
    const char *origin = a->origin ? a->origin : "adapter";
    size_t n = actl_adapter_tensor_count(a);

    /* Frames first: the header records where each one lands. */
    size_t cap = 0;
    uint64_t raw_total = 0;
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        size_t b = actl__codec_bound(t->dtype, t->nbytes);
        if (b > SIZE_MAX - cap) {
            rc = actl__err(ACTL_ELIMIT, "'%s': the tensors are too large to pack", origin);
            goto out;
        }
        cap += b;
        raw_total += t->nbytes;
    }
    if (!(frames = malloc(cap ? cap : 1)) || !(root = json_object()) || !(list = json_array())) {
        rc = actl__oom();
        goto out;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        size_t w;
        char sha[65];
        if ((rc = actl__codec_compress(t->dtype, t->data, t->nbytes, ACTL_CODEC_LEVEL,
                                       frames + off, cap - off, &w))) {
            rc = actl__err_wrap(rc, "cannot compress '%s' tensor '%s'", origin, t->name);
            goto out;
        }
        if ((rc = actl__sha256_hex(t->data, t->nbytes, sha)))
            goto out;
        json_t *e = NULL;
        if ((rc = tensor_json(t, off, w, sha, origin, &e)))
            goto out;
        if (json_array_append_new(list, e) != 0) {
            rc = actl__oom();
            goto out;
        }
        off += w;
    }
    if (json_object_set(root, "config", a->config) != 0 ||
        json_object_set_new(root, "format", json_integer(ACTL_PACK_FORMAT)) != 0 ||
        json_object_set(root, "tensors", list) != 0 ||
        !(text = actl__json_dump_keep(root, -1, actl__peft_keep_order))) {
        rc = actl__oom();
        goto out;
    }
    size_t tl = strlen(text), hlen = (tl + 7) & ~(size_t)7;
    if (!(header = malloc(hlen ? hlen : 1))) {
        rc = actl__oom();
        goto out;
    }
    memcpy(header, text, tl);
    memset(header + tl, ' ', hlen - tl);

    unsigned char prefix[PREFIX];
    memcpy(prefix, ACTL_PACK_MAGIC, 8);
    actl__put_le32(prefix + 8, ACTL_PACK_FORMAT);
    actl__put_le32(prefix + 12, (uint32_t)actl__xxh64(header, hlen, 0));
    actl__put_le64(prefix + 16, hlen);

    unsigned char digest[32];
    if ((rc = actl__sha256_new(&h)) || (rc = actl__sha256_update(h, prefix, PREFIX)) ||
        (rc = actl__sha256_update(h, header, hlen)) || (rc = actl__sha256_update(h, frames, off)))
        goto out;
    rc = actl__sha256_final(h, digest);
    h = NULL;
    if (rc)
        goto out;
    char dhex[65];
    actl__hex(digest, 32, dhex);
    uint64_t total = PREFIX + (uint64_t)hlen + off;

    if (!(path = actl__pack_path(objects_dir, dhex))) {
        rc = actl__oom();
        goto out;
    }
    /* A file of that name with the same bytes is shared; one with other bytes
     * (damaged) is replaced. Hashing it costs what writing it would, and
     * trusting its name alone would let a damaged pack be referenced again. */
    bool same = false;
    if ((rc = file_has_digest(path, dhex, &same)))
        goto out;
    if (!same && (rc = publish(objects_dir, path, dhex, prefix, header, hlen, frames, off))) {
        rc = actl__err_wrap(rc, "cannot store the pack of '%s'", origin);
        goto out;
    }
    memcpy(hex, dhex, 65);
    if (stored)
        *stored = total;
    if (raw)
        *raw = raw_total;
out:
    actl__sha256_free(h);
    free(path);
    free(header);
    free(text);
    json_decref(list);
    json_decref(root);
    free(frames);
    return rc;
}

/* ---- read ------------------------------------------------------------------- */

typedef struct {
    const char *name; /* lent by the header JSON */
    actl_dtype dtype;
    int ndim;
    int64_t shape[ACTL_MAX_DIMS];
    uint64_t offset, stored, raw;
    const char *sha256;
} pack_entry;

typedef struct {
    const char *path;
    int fd;
    unsigned char *map;
    size_t size;
    json_t *root;
    json_t *config;      /* lent by root */
    pack_entry *ents;
    size_t n;
    const unsigned char *data; /* the frames */
    size_t data_len;
} pack;

static void pack_close(pack *p)
{
    if (p->map)
        munmap(p->map, p->size);
    if (p->fd >= 0)
        close(p->fd);
    json_decref(p->root);
    free(p->ents);
}

static int get_uint(json_t *o, const char *key, uint64_t *v)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
        return -1;
    *v = (uint64_t)json_integer_value(x);
    return 0;
}

/* Checks one tensor entry against the pack; `*next` is where its frame must
 * start (frames are back to back) and moves past it. */
static int parse_entry(const pack *p, size_t i, json_t *o, const char *prev, uint64_t *next,
                       pack_entry *e)
{
    static const char *const keys[] = {"codec", "dtype", "name", "offset", "raw",
                                       "sha256", "shape", "stored"};
    const char *path = p->path;
    if (!json_is_object(o))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor %zu is not a JSON object", path, i);
    json_t *name = json_object_get(o, "name");
    if (!json_is_string(name) || json_string_length(name) == 0 ||
        strlen(json_string_value(name)) != json_string_length(name))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor %zu has no valid name", path, i);
    e->name = json_string_value(name);
    if (prev && strcmp(prev, e->name) >= 0)
        return actl__err(ACTL_EFORMAT,
                         "pack '%s': tensor '%s' is out of order or repeated (after '%s')", path,
                         e->name, prev);
    if (json_object_size(o) != sizeof keys / sizeof *keys)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' has %zu keys, expected %zu", path,
                         e->name, json_object_size(o), sizeof keys / sizeof *keys);
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        if (!json_object_get(o, keys[k]))
            return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' has no \"%s\"", path,
                             e->name, keys[k]);
    json_t *codec = json_object_get(o, "codec");
    if (!json_is_string(codec) || strcmp(json_string_value(codec), CODEC_NAME) != 0)
        return actl__err(ACTL_EUNSUPPORTED, "pack '%s': tensor '%s' uses an unknown codec", path,
                         e->name);
    json_t *dt = json_object_get(o, "dtype");
    int rc;
    if (!json_is_string(dt))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': dtype is not a string", path,
                         e->name);
    if ((rc = actl_dtype_parse(json_string_value(dt), &e->dtype)))
        return actl__err_wrap(rc, "pack '%s': tensor '%s'", path, e->name);
    json_t *shape = json_object_get(o, "shape");
    if (!json_is_array(shape) || json_array_size(shape) > ACTL_MAX_DIMS)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': shape is not an array of at most %d dimensions",
                         path, e->name, ACTL_MAX_DIMS);
    e->ndim = (int)json_array_size(shape);
    for (int d = 0; d < e->ndim; d++) {
        json_t *x = json_array_get(shape, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': dimension %d is not a non-negative integer",
                             path, e->name, d);
        e->shape[d] = (int64_t)json_integer_value(x);
    }
    int64_t numel;
    size_t nbytes;
    if ((rc = actl__shape_size(e->dtype, e->ndim, e->shape, &numel, &nbytes)))
        return actl__err_wrap(ACTL_EFORMAT, "pack '%s': tensor '%s'", path, e->name);
    if (get_uint(o, "offset", &e->offset) || get_uint(o, "stored", &e->stored) ||
        get_uint(o, "raw", &e->raw))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': offset, stored and raw must be non-negative integers",
                         path, e->name);
    if (e->raw != nbytes)
        return actl__err(ACTL_EFORMAT,
                         "pack '%s': tensor '%s': raw is %llu bytes, its dtype and shape give %zu",
                         path, e->name, (unsigned long long)e->raw, nbytes);
    if (e->offset != *next)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' starts at %llu, expected %llu (frames are back to back)",
                         path, e->name, (unsigned long long)e->offset,
                         (unsigned long long)*next);
    if (e->stored > p->data_len - e->offset)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': frame [%llu, +%llu) leaves the %zu bytes of frames",
                         path, e->name, (unsigned long long)e->offset,
                         (unsigned long long)e->stored, p->data_len);
    if (e->raw / MAX_EXPANSION > e->stored)
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s' claims %llu raw bytes from a %llu-byte frame",
                         path, e->name, (unsigned long long)e->raw,
                         (unsigned long long)e->stored);
    json_t *sha = json_object_get(o, "sha256");
    if (!json_is_string(sha) || !actl__is_hex(json_string_value(sha), 64))
        return actl__err(ACTL_EFORMAT, "pack '%s': tensor '%s': sha256 is not 64 lowercase hex digits",
                         path, e->name);
    e->sha256 = json_string_value(sha);
    *next = e->offset + e->stored;
    return ACTL_OK;
}

/* Maps the file. On failure p is still ready for pack_close. */
static int pack_map(const char *path, pack *p)
{
    memset(p, 0, sizeof *p);
    p->path = path;
    p->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (p->fd < 0)
        return actl__err(errno == ENOENT ? ACTL_ENOTFOUND : ACTL_EIO, "cannot open pack '%s': %s",
                         path, strerror(errno));
    struct stat st;
    if (fstat(p->fd, &st) != 0)
        return actl__err(ACTL_EIO, "cannot stat pack '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return actl__err(ACTL_EFORMAT, "pack '%s' is not a regular file", path);
    if ((uint64_t)st.st_size < PREFIX)
        return actl__err(ACTL_EFORMAT, "pack '%s' is %lld bytes, shorter than its %d-byte prefix",
                         path, (long long)st.st_size, PREFIX);
    if ((uint64_t)st.st_size > SIZE_MAX)
        return actl__err(ACTL_ELIMIT, "pack '%s' is too large to map", path);
    p->size = (size_t)st.st_size;
    void *m = mmap(NULL, p->size, PROT_READ, MAP_PRIVATE, p->fd, 0);
    if (m == MAP_FAILED)
        return actl__err(ACTL_EIO, "cannot map pack '%s': %s", path, strerror(errno));
    p->map = m;
    return ACTL_OK;
}

/* Checks the prefix and the header of a mapped pack, not the frames. */
static int pack_parse(pack *p)
{
    int rc = ACTL_OK;
    const char *path = p->path;
    const unsigned char *b = p->map;
    if (memcmp(b, ACTL_PACK_MAGIC, 8) != 0)
        return actl__err(ACTL_EFORMAT, "'%s' is not a pack (bad magic)", path);
    uint32_t format = actl__get_le32(b + 8);
    if (format != ACTL_PACK_FORMAT)
        return actl__err(ACTL_EUNSUPPORTED, "pack '%s' has format %u; this adapterctl reads %d",
                         path, format, ACTL_PACK_FORMAT);
    uint64_t hlen = actl__get_le64(b + 16);
    if (hlen > p->size - PREFIX || hlen % 8 || hlen > ACTL_ST_MAX_HEADER)
        return actl__err(ACTL_EFORMAT, "pack '%s': header length %llu does not fit the %zu-byte file",
                         path, (unsigned long long)hlen, p->size);
    const char *hdr = (const char *)b + PREFIX;
    if ((uint32_t)actl__xxh64(hdr, (size_t)hlen, 0) != actl__get_le32(b + 12))
        return actl__err(ACTL_ECORRUPT, "pack '%s': header checksum mismatch", path);
    p->data = b + PREFIX + hlen;
    p->data_len = p->size - PREFIX - (size_t)hlen;

    char *what = actl__strdup_printf("pack '%s' header", path);
    if (!what)
        return actl__oom();
    rc = actl__json_parse(hdr, (size_t)hlen, what, &p->root);
    free(what);
    if (rc)
        return rc;
    json_t *format_v = json_object_get(p->root, "format");
    p->config = json_object_get(p->root, "config");
    json_t *list = json_object_get(p->root, "tensors");
    if (!json_is_object(p->root) || json_object_size(p->root) != 3 ||
        !json_is_integer(format_v) || json_integer_value(format_v) != ACTL_PACK_FORMAT ||
        !json_is_object(p->config) || !json_is_array(list))
        return actl__err(ACTL_EFORMAT,
                         "pack '%s': the header is not {\"config\": {...}, \"format\": %d, \"tensors\": [...]}",
                         path, ACTL_PACK_FORMAT);
    p->n = json_array_size(list);
    if (p->n && !(p->ents = calloc(p->n, sizeof *p->ents)))
        return actl__oom();
    uint64_t next = 0;
    for (size_t i = 0; i < p->n; i++)
        if ((rc = parse_entry(p, i, json_array_get(list, i), i ? p->ents[i - 1].name : NULL,
                              &next, &p->ents[i])))
            return rc;
    if (next != p->data_len)
        return actl__err(ACTL_EFORMAT, "pack '%s': %llu bytes after the last frame", path,
                         (unsigned long long)(p->data_len - next));
    return ACTL_OK;
}

static int check_digest(const pack *p, const char *expect_hex)
{
    char hex[65];
    int rc = actl__sha256_hex(p->map, p->size, hex);
    if (rc)
        return rc;
    if (strcmp(hex, expect_hex) != 0)
        return actl__err(ACTL_ECORRUPT, "pack '%s': SHA-256 is %s, expected %s", p->path, hex,
                         expect_hex);
    return ACTL_OK;
}

/* Decompresses tensor i into dst (raw bytes) and checks its SHA-256. */
static int decode(const pack *p, size_t i, void *dst)
{
    const pack_entry *e = &p->ents[i];
    /* The codec names the tensor; the pack's path is put in front. */
    char *what = actl__strdup_printf("tensor '%s'", e->name);
    if (!what)
        return actl__oom();
    int rc = actl__codec_decompress(p->data + e->offset, (size_t)e->stored, e->dtype, dst,
                                    (size_t)e->raw, what);
    free(what);
    if (rc)
        return actl__err_wrap(rc, "pack '%s'", p->path);
    char hex[65];
    if ((rc = actl__sha256_hex(dst, (size_t)e->raw, hex)))
        return rc;
    if (strcmp(hex, e->sha256) != 0)
        return actl__err(ACTL_ECORRUPT, "pack '%s': tensor '%s': SHA-256 mismatch", p->path,
                         e->name);
    return ACTL_OK;
}

/* A new owned tensor holding entry i's raw bytes, checked against its SHA-256. */
static int decode_tensor(const pack *p, size_t i, actl_tensor **out)
{
    const pack_entry *e = &p->ents[i];
    actl_tensor *t;
    int rc = actl__tensor_view(e->name, e->dtype, e->ndim, e->shape, NULL, &t);
    if (rc)
        return rc;
    /* Owned from here (freed with it); never malloc(0). */
    t->owned = true;
    if (!(t->data = malloc(t->nbytes ? t->nbytes : 1)))
        rc = actl__oom();
    else
        rc = decode(p, i, t->data);
    if (rc)
        actl_tensor_free(t);
    else
        *out = t;
    return rc;
}

/* Builds the adapter from the n decoded tensors (taking them and the array). */
static int build(const pack *p, const actl_tensor **tensors, actl_adapter **out)
{
    json_incref(p->config);
    return actl__adapter_build(p->config, tensors, p->n, true, NULL, p->path, p->path, p->path,
                               out);
}

static void tensors_free(const actl_tensor **tensors, size_t n)
{
    if (tensors)
        for (size_t i = 0; i < n; i++)
            actl_tensor_free((actl_tensor *)tensors[i]);
    free(tensors);
}

int actl__pack_load(const char *path, const char *expect_hex, actl_adapter **out)
{
    int rc = ACTL_OK;
    pack p;
    const actl_tensor **tensors = NULL;
    size_t made = 0;
    if (!path || !out)
        return actl__err(ACTL_EINVAL, "pack load: NULL argument");
    *out = NULL;
    if (expect_hex && !actl__is_hex(expect_hex, 64))
        return actl__err(ACTL_EINVAL, "pack load: '%s' is not a SHA-256 in lowercase hex",
                         expect_hex);
    /* The digest first: when it fails, the bytes are damaged, whatever else
     * looks wrong. */
    if ((rc = pack_map(path, &p)) || (expect_hex && (rc = check_digest(&p, expect_hex))) ||
        (rc = pack_parse(&p)))
        goto out;
    if (p.n && !(tensors = calloc(p.n, sizeof *tensors))) {
        rc = actl__oom();
        goto out;
    }
    for (made = 0; made < p.n; made++) {
        actl_tensor *t;
        if ((rc = decode_tensor(&p, made, &t)))
            goto out;
        tensors[made] = t;
    }
    rc = build(&p, tensors, out);
    tensors = NULL;
out:
    tensors_free(tensors, made);
    pack_close(&p);
    return rc;
}

/* ---- index ------------------------------------------------------------------ */

void actl__pack_index_free(actl__pack_index *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->n; i++)
        free(x->tensors[i].shape);
    free(x->tensors);
    json_decref(x->header);
    memset(x, 0, sizeof *x);
}

int actl__pack_index_read(const char *path, const char *expect_hex, actl__pack_index *out)
{
    int rc = ACTL_OK;
    pack p;
    if (!out)
        return actl__err(ACTL_EINVAL, "pack index: NULL argument");
    memset(out, 0, sizeof *out);
    if (!path)
        return actl__err(ACTL_EINVAL, "pack index: NULL argument");
    if (expect_hex && !actl__is_hex(expect_hex, 64))
        return actl__err(ACTL_EINVAL, "pack index: '%s' is not a SHA-256 in lowercase hex",
                         expect_hex);
    if ((rc = pack_map(path, &p)) || (expect_hex && (rc = check_digest(&p, expect_hex))) ||
        (rc = pack_parse(&p)))
        goto out;
    if (p.n && !(out->tensors = calloc(p.n, sizeof *out->tensors))) {
        rc = actl__oom();
        goto out;
    }
    json_t *list = json_object_get(p.root, "tensors");
    for (size_t i = 0; i < p.n; i++, out->n++) {
        const pack_entry *e = &p.ents[i];
        actl__pack_tensor *t = &out->tensors[i];
        if (!(t->shape = actl__json_dump(json_object_get(json_array_get(list, i), "shape"), -1))) {
            rc = actl__oom();
            goto out;
        }
        t->name = e->name;
        t->dtype = e->dtype;
        t->raw = e->raw;
        t->stored = e->stored;
        t->sha256 = e->sha256;
        out->raw += e->raw;
    }
    /* The strings lent above live in the header, which moves to the index. */
    out->header = p.root;
    out->config = p.config;
    out->size = p.size;
    p.root = NULL;
out:
    if (rc)
        actl__pack_index_free(out);
    pack_close(&p);
    return rc;
}

/* Counts a problem and passes its message on; only running out of memory
 * stops the check. */
static int report(int rc, actl_problem_fn fn, void *ctx, size_t *count)
{
    if (rc == ACTL_ENOMEM)
        return rc;
    (*count)++;
    if (fn)
        fn(actl_errmsg(), ctx);
    return ACTL_OK;
}

int actl__pack_verify_load(const char *path, const char *expect_hex, actl_problem_fn fn,
                           void *ctx, size_t *problems, actl_adapter **out)
{
    int rc = ACTL_OK;
    pack p;
    size_t count = 0;
    const actl_tensor **tensors = NULL;
    if (out)
        *out = NULL;
    if (!path || !problems)
        return actl__err(ACTL_EINVAL, "pack verify: NULL argument");
    if (expect_hex && !actl__is_hex(expect_hex, 64))
        return actl__err(ACTL_EINVAL, "pack verify: '%s' is not a SHA-256 in lowercase hex",
                         expect_hex);
    if ((rc = pack_map(path, &p))) {
        rc = report(rc, fn, ctx, &count);
        goto out;
    }
    /* The digest says whether the bytes are intact; the header and the
     * tensors then say where they are damaged. */
    if (expect_hex && (rc = check_digest(&p, expect_hex)) && (rc = report(rc, fn, ctx, &count)))
        goto out;
    if ((rc = pack_parse(&p))) {
        rc = report(rc, fn, ctx, &count);
        goto out;
    }
    if (out && p.n && !(tensors = calloc(p.n, sizeof *tensors))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < p.n; i++) {
        actl_tensor *t = NULL;
        if ((rc = decode_tensor(&p, i, &t)) && (rc = report(rc, fn, ctx, &count)))
            goto out;
        if (tensors)
            tensors[i] = t; /* NULL for a damaged one: no adapter is built then */
        else
            actl_tensor_free(t);
    }
    if (tensors && count == 0) {
        /* Intact bytes that do not make an adapter are a problem too. */
        const actl_tensor **taken = tensors;
        tensors = NULL;
        if ((rc = build(&p, taken, out)))
            rc = report(rc, fn, ctx, &count);
    }
out:
    tensors_free(tensors, p.n);
    pack_close(&p);
    *problems = count;
    return rc;
}

int actl__pack_verify(const char *path, const char *expect_hex, actl_problem_fn fn, void *ctx,
                      size_t *problems)
{
    return actl__pack_verify_load(path, expect_hex, fn, ctx, problems, NULL);
}
