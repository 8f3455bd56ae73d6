/* store.c: the store's operations that write rows or touch packs: add, load,
 * export, rm, tag, verify and gc (DESIGN.md 5). The catalogue itself
 * (opening, migrations, validation, entry lists, list/show/stats) is in
 * catalog.c; the pack format in pack.c.
 *
 * Crash safety rests on one order: a pack is renamed into objects/ (pack.c)
 * before the transaction that inserts rows naming it commits, and gc deletes
 * rows before files. A process killed anywhere leaves at worst a pack no row
 * names, which gc removes.
 *
 * gc and adds meet at <store>/gc.lock: each add holds LOCK_SH from before it
 * writes its pack until its rows commit, gc holds LOCK_EX for its whole scan,
 * so gc never sees a pack an add is about to reference as an orphan. flock
 * locks die with their process, so a killed add blocks nothing. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define REF_CAP 129 /* a name of 128 characters and its NUL */
#define LABEL_CAP (REF_CAP + 24)

/* ---- small helpers ---------------------------------------------------- */

static int lock_take(const actl_store *s, int op, int *fd_out)
{
    int fd = open(s->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return actl__err(ACTL_EIO, "cannot open '%s': %s", s->lock_path, strerror(errno));
    while (flock(fd, op) != 0) {
        if (errno == EINTR)
            continue;
        int e = errno;
        close(fd);
        return actl__err(ACTL_EIO, "cannot lock '%s': %s", s->lock_path, strerror(e));
    }
    *fd_out = fd;
    return ACTL_OK;
}

static void lock_release(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return s[n] == '\0';
}

static int bind_text(sqlite3_stmt *st, int i, const char *v)
{
    return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
}

/* Steps a statement that returns no rows (or whose rows do not matter). */
static int step_done(actl_store *s, sqlite3_stmt *st, const char *what)
{
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW)
        ;
    return r == SQLITE_DONE ? ACTL_OK : actl__db_err(s, r, what);
}

/* ---- refs ------------------------------------------------------------- */

/* Finds ref's row: its id, "name@version" for messages and its pack digest.
 * ACTL_ENOTFOUND naming the ref when absent. */
static int resolve(actl_store *s, const char *ref, int64_t *id, char label[LABEL_CAP],
                   char pack[65])
{
    char name[REF_CAP];
    int64_t version;
    sqlite3_stmt *st = NULL;
    int rc = actl_ref_parse(ref, name, sizeof name, &version);
    if (rc)
        return rc;
    rc = actl__db_prepare(s,
                          version ? "SELECT id, version, pack FROM adapters "
                                    "WHERE name = ?1 AND version = ?2"
                                  : "SELECT id, version, pack FROM adapters "
                                    "WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                          &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (version)
        sqlite3_bind_int64(st, 2, version);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        *id = sqlite3_column_int64(st, 0);
        snprintf(label, LABEL_CAP, "%s@%lld", name, (long long)sqlite3_column_int64(st, 1));
        const char *p = (const char *)sqlite3_column_text(st, 2);
        snprintf(pack, 65, "%s", p ? p : "");
    } else if (r == SQLITE_DONE) {
        rc = actl__err(ACTL_ENOTFOUND, "no adapter '%s'", ref);
    } else {
        rc = actl__db_err(s, r, "cannot look up an adapter");
    }
    sqlite3_finalize(st);
    return rc;
}

/* ---- the pack's tensor index ------------------------------------------ */

/* One tensor as a pack header lists it; strings lent by the parsed header
 * except shape, which is the compact JSON of the shape array (owned). */
typedef struct pack_tensor {
    const char *name;
    const char *dtype;
    char *shape;
    int64_t raw;
    const char *sha256;
} pack_tensor;

typedef struct pack_index {
    json_t *root;
    pack_tensor *t;
    size_t n;
    uint64_t raw; /* sum of t[i].raw */
} pack_index;

static void pack_index_free(pack_index *x)
{
    for (size_t i = 0; i < x->n; i++)
        free(x->t[i].shape);
    free(x->t);
    json_decref(x->root);
    memset(x, 0, sizeof *x);
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Reads the header of the pack at path (layout in internal.h, pack.c) for its
 * tensor list. Only the header is read; pack.c checks the frames. */
static int pack_index_read(const char *path, pack_index *x)
{
    int rc = ACTL_OK;
    char *hdr = NULL;
    unsigned char pre[24];
    memset(x, 0, sizeof *x);
    FILE *f = fopen(path, "rb");
    if (!f)
        return actl__err(errno == ENOENT ? ACTL_ENOTFOUND : ACTL_EIO, "cannot open '%s': %s",
                         path, strerror(errno));
    if (fread(pre, 1, sizeof pre, f) != sizeof pre || memcmp(pre, ACTL_PACK_MAGIC, 8) != 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s' is not a pack", path);
        goto out;
    }
    uint64_t hlen = le64(pre + 16);
    if (hlen == 0 || hlen > ACTL_ST_MAX_HEADER) {
        rc = actl__err(ACTL_EFORMAT, "'%s': header length %llu is out of range", path,
                       (unsigned long long)hlen);
        goto out;
    }
    if (!(hdr = malloc(hlen))) {
        rc = actl__oom();
        goto out;
    }
    if (fread(hdr, 1, hlen, f) != hlen) {
        rc = actl__err(ACTL_EFORMAT, "'%s': the header is cut short", path);
        goto out;
    }
    if ((rc = actl__json_parse(hdr, hlen, path, &x->root)))
        goto out;
    json_t *ts = json_object_get(x->root, "tensors");
    if (!json_is_array(ts)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': the header has no tensor list", path);
        goto out;
    }
    size_t n = json_array_size(ts);
    if (n && !(x->t = calloc(n, sizeof *x->t))) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(ts, i);
        pack_tensor *p = &x->t[i];
        json_t *raw = json_object_get(t, "raw"), *shape = json_object_get(t, "shape");
        p->name = json_string_value(json_object_get(t, "name"));
        p->dtype = json_string_value(json_object_get(t, "dtype"));
        p->sha256 = json_string_value(json_object_get(t, "sha256"));
        if (!p->name || !p->dtype || !p->sha256 || !json_is_integer(raw) ||
            json_integer_value(raw) < 0 || !json_is_array(shape)) {
            rc = actl__err(ACTL_EFORMAT, "'%s': tensor %zu of the header is malformed", path, i);
            goto out;
        }
        p->raw = json_integer_value(raw);
        x->raw += (uint64_t)p->raw;
        x->n++;
        if (!(p->shape = actl__json_dump(shape, -1))) {
            rc = actl__oom();
            goto out;
        }
    }
out:
    if (rc)
        pack_index_free(x);
    free(hdr);
    fclose(f);
    return rc;
}

/* ---- add -------------------------------------------------------------- */

/* The adapted modules' names as a JSON array (malloc'd). */
static int target_modules_json(const actl_adapter *a, char **out)
{
    int rc = ACTL_OK;
    json_t *arr = json_array();
    if (!arr)
        return actl__oom();
    for (size_t i = 0; i < actl_adapter_module_count(a); i++) {
        actl_module_info mi;
        if ((rc = actl_adapter_module(a, i, &mi)))
            goto out;
        if (json_array_append_new(arr, json_string(mi.name)) != 0) {
            rc = actl__err(ACTL_EINVAL, "module name '%s' is not valid UTF-8", mi.name);
            goto out;
        }
    }
    if (!(*out = actl__json_dump(arr, -1)))
        rc = actl__oom();
out:
    json_decref(arr);
    return rc;
}

static int insert_pack_rows(actl_store *s, const char *hex, uint64_t stored, uint64_t raw,
                            int64_t created, const pack_index *ix)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s,
                              "INSERT OR IGNORE INTO packs (digest, stored_bytes, raw_bytes, "
                              "created) VALUES (?, ?, ?, ?)",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)stored);
    sqlite3_bind_int64(st, 3, (int64_t)raw);
    sqlite3_bind_int64(st, 4, created);
    rc = step_done(s, st, "cannot insert a pack row");
    sqlite3_finalize(st);
    st = NULL;
    if (rc || sqlite3_changes(s->db) == 0) /* an existing pack has its tensor rows */
        return rc;
    if ((rc = actl__db_prepare(s,
                               "INSERT INTO pack_tensors (pack, name, dtype, shape, raw_bytes, "
                               "sha256) VALUES (?, ?, ?, ?, ?, ?)",
                               &st)))
        return rc;
    for (size_t i = 0; !rc && i < ix->n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, ix->t[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, ix->t[i].dtype, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, ix->t[i].shape, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, ix->t[i].raw);
        sqlite3_bind_text(st, 6, ix->t[i].sha256, -1, SQLITE_STATIC);
        rc = step_done(s, st, "cannot insert the tensor index");
    }
    sqlite3_finalize(st);
    return rc;
}

static int pack_row_exists(actl_store *s, const char *hex, bool *exists)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s, "SELECT 1 FROM packs WHERE digest = ?", &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW || r == SQLITE_DONE)
        *exists = r == SQLITE_ROW;
    else
        rc = actl__db_err(s, r, "cannot look up a pack");
    sqlite3_finalize(st);
    return rc;
}

int actl_store_add(actl_store *s, const actl_adapter *a, const actl_add_opts *o,
                   actl_entries **out)
{
    int rc = ACTL_OK, lock = -1;
    char *keys = NULL, *modules = NULL, *pack_path = NULL;
    const char **vals = NULL;
    size_t n_tags = 0;
    sqlite3_stmt *st = NULL;
    actl_entries *l = NULL;
    pack_index ix;
    bool have_ix = false, in_tx = false, wrap = false;
    char hex[65], label[LABEL_CAP] = "";
    uint64_t stored = 0, raw = 0;
    memset(&ix, 0, sizeof ix);
    if (out)
        *out = NULL;
    if (!s || !a || !o)
        return actl__err(ACTL_EINVAL, "store add: NULL argument");

    /* Everything the caller can get wrong is refused before any file is written. */
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    const char *base = o->base_model ? o->base_model : info.base_model;
    if ((rc = actl_name_check(o->name)))
        goto out;
    if (o->version < 0) {
        rc = actl__err(ACTL_EINVAL, "version %lld of '%s' is not a positive integer",
                       (long long)o->version, o->name);
        goto out;
    }
    if (base && (rc = actl__text_check("base model", base, 1024, false)))
        goto out;
    if (o->base_model && !*o->base_model) {
        rc = actl__err(ACTL_EINVAL, "base model is empty");
        goto out;
    }
    if (o->description && (rc = actl__text_check("description", o->description, 65536, true)))
        goto out;
    if (o->source && (rc = actl__text_check("source", o->source, 4096, false)))
        goto out;
    if ((rc = actl__tags_parse(o->tags, &keys, &vals, &n_tags)))
        goto out;
    const char *kind = actl_kind_name(info.kind);
    if (!kind) {
        rc = actl__err(ACTL_EINVAL, "adapter '%s' has no known kind", o->name);
        goto out;
    }
    if ((rc = target_modules_json(a, &modules)))
        goto out;

    if ((rc = lock_take(s, LOCK_SH, &lock)))
        goto out;
    wrap = true;
    if ((rc = actl__pack_write(a, s->objects, hex, &stored, &raw)))
        goto out;
    /* The tensor index comes from the pack's own header, read before the
     * transaction to keep it short; a pack already catalogued has its rows,
     * and keeps them while we hold the lock. */
    bool known = false;
    if ((rc = pack_row_exists(s, hex, &known)))
        goto out;
    if (!known) {
        if (!(pack_path = actl__pack_path(s->objects, hex))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = pack_index_read(pack_path, &ix)))
            goto out;
        have_ix = true;
    }

    int64_t created = (int64_t)time(NULL);
    if ((rc = actl__db_begin(s)))
        goto out;
    in_tx = true;
    int64_t version = o->version;
    if ((rc = actl__db_prepare(s,
                               version ? "SELECT 1 FROM adapters WHERE name = ?1 AND version = ?2"
                                       : "SELECT max(version) FROM adapters WHERE name = ?1",
                               &st)))
        goto out;
    sqlite3_bind_text(st, 1, o->name, -1, SQLITE_STATIC);
    if (version)
        sqlite3_bind_int64(st, 2, version);
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        rc = actl__db_err(s, r, "cannot look up versions");
        goto out;
    }
    if (version && r == SQLITE_ROW) {
        rc = actl__err(ACTL_EEXIST, "'%s@%lld' already exists", o->name, (long long)version);
        goto out;
    }
    if (!version) {
        int64_t max = sqlite3_column_int64(st, 0); /* 0 for NULL: no version yet */
        if (max == INT64_MAX) {
            rc = actl__err(ACTL_ELIMIT, "'%s' has reached the largest version", o->name);
            goto out;
        }
        version = max + 1;
    }
    sqlite3_finalize(st);
    st = NULL;
    snprintf(label, sizeof label, "%s@%lld", o->name, (long long)version);

    if (!have_ix) {
        /* Only when another add catalogued the pack and then it lost its row,
         * which gc cannot do while we hold the lock: kept for safety. */
        if ((rc = pack_row_exists(s, hex, &known)))
            goto out;
        if (!known) {
            if (!pack_path && !(pack_path = actl__pack_path(s->objects, hex))) {
                rc = actl__oom();
                goto out;
            }
            if ((rc = pack_index_read(pack_path, &ix)))
                goto out;
            have_ix = true;
        }
    }
    if (have_ix && (rc = insert_pack_rows(s, hex, stored, raw, created, &ix)))
        goto out;

    if ((rc = actl__db_prepare(s,
                               "INSERT INTO adapters (name, version, kind, base_model, rank, "
                               "variant, group_size, target_modules, config, raw_bytes, "
                               "stored_bytes, pack, source, description, created) VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               &st)))
        goto out;
    sqlite3_bind_text(st, 1, o->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    bind_text(st, 4, base);
    sqlite3_bind_int(st, 5, info.rank);
    bind_text(st, 6, info.kind == ACTL_KIND_ROAD ? actl_road_variant_name(info.variant) : NULL);
    sqlite3_bind_int(st, 7, info.kind == ACTL_KIND_ROAD ? info.group_size : 0);
    sqlite3_bind_text(st, 8, modules, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, actl_adapter_config(a), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, (int64_t)raw);
    sqlite3_bind_int64(st, 11, (int64_t)stored);
    sqlite3_bind_text(st, 12, hex, -1, SQLITE_STATIC);
    bind_text(st, 13, o->source);
    bind_text(st, 14, o->description);
    sqlite3_bind_int64(st, 15, created);
    if ((rc = step_done(s, st, "cannot insert the adapter row")))
        goto out;
    sqlite3_finalize(st);
    st = NULL;
    int64_t id = sqlite3_last_insert_rowid(s->db);

    if (n_tags) {
        if ((rc = actl__db_prepare(s, "INSERT INTO tags (adapter_id, key, value) VALUES (?, ?, ?)",
                                   &st)))
            goto out;
        for (size_t i = 0; i < n_tags; i++) {
            sqlite3_reset(st);
            sqlite3_bind_int64(st, 1, id);
            sqlite3_bind_text(st, 2, keys + 65 * i, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, vals[i], -1, SQLITE_STATIC);
            if ((rc = step_done(s, st, "cannot insert a tag")))
                goto out;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    if (out) {
        if ((rc = actl__entries_new(&l)) ||
            (rc = actl__db_prepare(s, "SELECT " ACTL__ENTRY_COLS " FROM adapters a WHERE a.id = ?",
                                   &st)))
            goto out;
        sqlite3_bind_int64(st, 1, id);
        if ((rc = actl__entries_append(s, l, st)))
            goto out;
        sqlite3_finalize(st);
        st = NULL;
    }
    in_tx = false;
    if ((rc = actl__db_commit(s)))
        goto out;
    if (out) {
        *out = l;
        l = NULL;
    }
out:
    sqlite3_finalize(st);
    if (in_tx)
        actl__db_rollback(s);
    if (rc && rc != ACTL_EEXIST && wrap)
        actl__err_wrap(rc, "cannot add '%s'", label[0] ? label : o->name);
    lock_release(lock);
    pack_index_free(&ix);
    actl_entries_free(l);
    free(keys);
    free(vals);
    free(modules);
    free(pack_path);
    return rc;
}

/* ---- load, export, rm, tag -------------------------------------------- */

int actl_store_load(actl_store *s, const char *ref, actl_adapter **out)
{
    int64_t id;
    char label[LABEL_CAP], hex[65];
    if (!out)
        return actl__err(ACTL_EINVAL, "store load: NULL argument");
    *out = NULL;
    if (!s)
        return actl__err(ACTL_EINVAL, "store load: NULL argument");
    int rc = resolve(s, ref, &id, label, hex);
    if (rc)
        return rc;
    char *path = actl__pack_path(s->objects, hex);
    if (!path)
        return actl__oom();
    if ((rc = actl__pack_load(path, hex, out)))
        actl__err_wrap(rc, "cannot load '%s'", label);
    free(path);
    return rc;
}

int actl_store_export(actl_store *s, const char *ref, const char *dir)
{
    actl_adapter *a = NULL;
    if (!dir)
        return actl__err(ACTL_EINVAL, "store export: NULL argument");
    int rc = actl_store_load(s, ref, &a);
    if (!rc)
        rc = actl_adapter_save(a, dir);
    actl_adapter_free(a);
    return rc;
}

int actl_store_rm(actl_store *s, const char *ref)
{
    int64_t id;
    char label[LABEL_CAP], hex[65];
    sqlite3_stmt *st = NULL;
    if (!s || !ref)
        return actl__err(ACTL_EINVAL, "store rm: NULL argument");
    int64_t version;
    int rc = actl_ref_parse(ref, label, sizeof label, &version); /* before taking the lock */
    if (rc || (rc = actl__db_begin(s)))
        return rc;
    if ((rc = resolve(s, ref, &id, label, hex)) ||
        (rc = actl__db_prepare(s, "DELETE FROM adapters WHERE id = ?", &st)))
        goto out;
    sqlite3_bind_int64(st, 1, id);
    if ((rc = step_done(s, st, "cannot remove an adapter")))
        goto out;
    rc = actl__db_commit(s);
out:
    sqlite3_finalize(st);
    actl__db_rollback(s);
    return rc;
}

int actl_store_tag(actl_store *s, const char *ref, const char *const *set,
                   const char *const *unset)
{
    int64_t id;
    char label[LABEL_CAP], hex[65], *keys = NULL;
    const char **vals = NULL;
    size_t n_set = 0;
    sqlite3_stmt *ins = NULL, *del = NULL;
    if (!s || !ref)
        return actl__err(ACTL_EINVAL, "store tag: NULL argument");
    int64_t version;
    int rc = actl_ref_parse(ref, label, sizeof label, &version);
    if (rc || (rc = actl__tags_parse(set, &keys, &vals, &n_set)))
        return rc;
    for (size_t i = 0; unset && unset[i]; i++) {
        if ((rc = actl__tag_key_check(unset[i])))
            goto out;
        for (size_t j = 0; j < n_set; j++)
            if (strcmp(keys + 65 * j, unset[i]) == 0) {
                rc = actl__err(ACTL_EINVAL, "tag '%s' is both set and unset", unset[i]);
                goto out;
            }
    }
    if ((rc = actl__db_begin(s)))
        goto out;
    if ((rc = resolve(s, ref, &id, label, hex)) ||
        (rc = actl__db_prepare(s,
                               "INSERT OR REPLACE INTO tags (adapter_id, key, value) "
                               "VALUES (?, ?, ?)",
                               &ins)) ||
        (rc = actl__db_prepare(s, "DELETE FROM tags WHERE adapter_id = ? AND key = ?", &del)))
        goto out;
    for (size_t i = 0; i < n_set; i++) {
        sqlite3_reset(ins);
        sqlite3_bind_int64(ins, 1, id);
        sqlite3_bind_text(ins, 2, keys + 65 * i, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 3, vals[i], -1, SQLITE_STATIC);
        if ((rc = step_done(s, ins, "cannot set a tag")))
            goto out;
    }
    for (size_t i = 0; unset && unset[i]; i++) {
        sqlite3_reset(del);
        sqlite3_bind_int64(del, 1, id);
        sqlite3_bind_text(del, 2, unset[i], -1, SQLITE_STATIC);
        if ((rc = step_done(s, del, "cannot remove a tag")))
            goto out;
    }
    rc = actl__db_commit(s);
out:
    sqlite3_finalize(ins);
    sqlite3_finalize(del);
    actl__db_rollback(s);
    free(keys);
    free(vals);
    return rc;
}

/* ---- verify ----------------------------------------------------------- */

typedef struct verify_ctx {
    actl_store *s;
    actl_problem_fn fn;
    void *ctx;
    size_t count;
    const char *pack;  /* while checking one pack: its digest */
    char *users;       /* and "'a@1', 'b@2'" (computed on its first problem) */
    int rc;            /* ACTL_ENOMEM if a message could not be built */
} verify_ctx;

static void report(verify_ctx *v, const char *fmt, ...) ACTL_PRINTF(2, 3);
static void report(verify_ctx *v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    v->count++;
    if (!msg) {
        v->rc = ACTL_ENOMEM;
        return;
    }
    if (v->fn)
        v->fn(msg, v->ctx);
    free(msg);
}

/* "'a@1', 'b@2' and 3 more" for the adapters whose rows name v->pack. */
static const char *pack_users(verify_ctx *v)
{
    if (v->users)
        return v->users;
    sqlite3_stmt *st = NULL;
    char *buf = NULL;
    size_t len = 0, shown = 0;
    int64_t total = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return "?";
    if (actl__db_prepare(v->s,
                         "SELECT name, version, count(*) OVER () FROM adapters WHERE pack = ? "
                         "ORDER BY name, version LIMIT 3",
                         &st) == ACTL_OK) {
        sqlite3_bind_text(st, 1, v->pack, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW) {
            fprintf(f, "%s'%s@%lld'", shown ? ", " : "", sqlite3_column_text(st, 0),
                    (long long)sqlite3_column_int64(st, 1));
            total = sqlite3_column_int64(st, 2);
            shown++;
        }
        sqlite3_finalize(st);
    }
    if (!shown)
        fputs("no adapter", f);
    else if (total > (int64_t)shown)
        fprintf(f, " and %lld more", (long long)(total - (int64_t)shown));
    if (fclose(f) != 0)
        return "?";
    v->users = buf;
    return buf;
}

static void pack_problem(const char *message, void *ctx)
{
    verify_ctx *v = ctx;
    report(v, "pack %s (used by %s): %s", v->pack, pack_users(v), message);
}

/* The catalogue's tensor rows of one pack against the pack's header. */
static int verify_tensor_rows(verify_ctx *v, const char *path)
{
    pack_index ix;
    sqlite3_stmt *st = NULL;
    int rc = pack_index_read(path, &ix);
    if (rc == ACTL_ENOMEM)
        return rc;
    if (rc) /* a malformed header was reported by actl__pack_verify */
        return ACTL_OK;
    if ((rc = actl__db_prepare(v->s,
                               "SELECT name, dtype, shape, raw_bytes, sha256 FROM pack_tensors "
                               "WHERE pack = ? ORDER BY name",
                               &st)))
        goto out;
    sqlite3_bind_text(st, 1, v->pack, -1, SQLITE_STATIC);
    bool *seen = ix.n ? calloc(ix.n, sizeof *seen) : NULL;
    if (ix.n && !seen) {
        rc = actl__oom();
        goto out;
    }
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *dtype = (const char *)sqlite3_column_text(st, 1);
        const char *shape = (const char *)sqlite3_column_text(st, 2);
        int64_t raw = sqlite3_column_int64(st, 3);
        const char *sha = (const char *)sqlite3_column_text(st, 4);
        size_t i = 0;
        while (i < ix.n && strcmp(ix.t[i].name, name ? name : "") != 0)
            i++;
        if (i == ix.n) {
            report(v, "pack %s (used by %s): the tensor index lists '%s', which the pack lacks",
                   v->pack, pack_users(v), name ? name : "");
            continue;
        }
        seen[i] = true;
        const pack_tensor *t = &ix.t[i];
        if (!dtype || strcmp(dtype, t->dtype) || !shape || strcmp(shape, t->shape) ||
            raw != t->raw || !sha || strcmp(sha, t->sha256))
            report(v,
                   "pack %s (used by %s): tensor '%s' is %s %s, %lld bytes, sha256 %s in the "
                   "pack but %s %s, %lld bytes, sha256 %s in the tensor index",
                   v->pack, pack_users(v), t->name, t->dtype, t->shape, (long long)t->raw,
                   t->sha256, dtype ? dtype : "?", shape ? shape : "?", (long long)raw,
                   sha ? sha : "?");
    }
    if (r != SQLITE_DONE)
        rc = actl__db_err(v->s, r, "cannot read the tensor index");
    for (size_t i = 0; !rc && i < ix.n; i++)
        if (!seen[i])
            report(v, "pack %s (used by %s): tensor '%s' is missing from the tensor index",
                   v->pack, pack_users(v), ix.t[i].name);
    free(seen);
out:
    sqlite3_finalize(st);
    pack_index_free(&ix);
    return rc;
}

static int verify_packs(verify_ctx *v)
{
    sqlite3_stmt *st = NULL;
    char *path = NULL;
    /* Packs no row names are gc's business, not problems (and gc may be
     * deleting them as we look). */
    int rc = actl__db_prepare(v->s,
                              "SELECT digest, stored_bytes, raw_bytes FROM packs p WHERE EXISTS "
                              "(SELECT 1 FROM adapters a WHERE a.pack = p.digest) ORDER BY digest",
                              &st);
    if (rc)
        return rc;
    int r = SQLITE_DONE;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *hex = (const char *)sqlite3_column_text(st, 0);
        int64_t stored = sqlite3_column_int64(st, 1);
        free(v->users);
        v->users = NULL;
        v->pack = hex ? hex : "";
        if (!hex || strlen(hex) != 64 || !is_hex(hex, 64)) {
            report(v, "pack row '%s' is not a SHA-256 digest", v->pack);
            continue;
        }
        free(path);
        if (!(path = actl__pack_path(v->s->objects, hex))) {
            rc = actl__oom();
            break;
        }
        struct stat sb;
        if (stat(path, &sb) != 0) {
            report(v, "pack %s (used by %s): file '%s' is missing", hex, pack_users(v), path);
            continue;
        }
        if ((int64_t)sb.st_size != stored)
            report(v, "pack %s (used by %s): file '%s' is %lld bytes, the catalogue says %lld",
                   hex, pack_users(v), path, (long long)sb.st_size, (long long)stored);
        size_t n = 0;
        int prc = actl__pack_verify(path, hex, pack_problem, v, &n);
        if (prc == ACTL_ENOMEM) {
            rc = prc;
            break;
        }
        if (prc)
            pack_problem(actl_errmsg(), v);
        if ((rc = verify_tensor_rows(v, path)))
            break;
    }
    if (!rc && r != SQLITE_DONE)
        rc = actl__db_err(v->s, r, "cannot read packs");
    v->pack = NULL;
    free(v->users);
    v->users = NULL;
    free(path);
    sqlite3_finalize(st);
    return rc;
}

/* Rows whose sizes disagree with their pack's, and rows whose kind is unknown. */
static int verify_rows(verify_ctx *v)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(v->s,
                              "SELECT a.name, a.version, a.pack, a.stored_bytes, a.raw_bytes, "
                              "p.stored_bytes, p.raw_bytes, a.kind FROM adapters a "
                              "LEFT JOIN packs p ON p.digest = a.pack "
                              "WHERE p.digest IS NULL OR a.stored_bytes != p.stored_bytes "
                              "OR a.raw_bytes != p.raw_bytes "
                              "OR a.kind NOT IN ('lora', 'road', 'bottleneck', 'mos') "
                              "ORDER BY a.name, a.version",
                              &st);
    if (rc)
        return rc;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        long long ver = sqlite3_column_int64(st, 1);
        const char *pack = (const char *)sqlite3_column_text(st, 2);
        const char *kind = (const char *)sqlite3_column_text(st, 7);
        if (sqlite3_column_type(st, 5) == SQLITE_NULL) {
            report(v, "'%s@%lld': pack %s has no row in the catalogue", name, ver, pack);
            continue;
        }
        long long as = sqlite3_column_int64(st, 3), ar = sqlite3_column_int64(st, 4);
        long long ps = sqlite3_column_int64(st, 5), pr = sqlite3_column_int64(st, 6);
        if (as != ps)
            report(v, "'%s@%lld': stored size %lld, but its pack %s is %lld bytes", name, ver, as,
                   pack, ps);
        if (ar != pr)
            report(v, "'%s@%lld': raw size %lld, but its pack %s holds %lld bytes of tensors",
                   name, ver, ar, pack, pr);
        if (!kind || (strcmp(kind, "lora") && strcmp(kind, "road") &&
                      strcmp(kind, "bottleneck") && strcmp(kind, "mos")))
            report(v, "'%s@%lld': unknown kind '%s'", name, ver, kind ? kind : "");
    }
    if (r != SQLITE_DONE)
        rc = actl__db_err(v->s, r, "cannot read adapters");
    sqlite3_finalize(st);
    return rc;
}

/* PRAGMA integrity_check and foreign_key_check, each row a problem. */
static int verify_sqlite(verify_ctx *v)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(v->s, "PRAGMA integrity_check", &st);
    if (rc)
        return rc;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *m = (const char *)sqlite3_column_text(st, 0);
        if (!m || strcmp(m, "ok") != 0)
            report(v, "catalogue '%s': %s", v->s->db_path, m ? m : "integrity check failed");
    }
    sqlite3_finalize(st);
    st = NULL;
    if (r != SQLITE_DONE)
        return actl__db_err(v->s, r, "integrity check");
    if ((rc = actl__db_prepare(v->s, "PRAGMA foreign_key_check", &st)))
        return rc;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        /* WITHOUT ROWID tables report no rowid. */
        char rowid[40] = "";
        if (sqlite3_column_type(st, 1) != SQLITE_NULL)
            snprintf(rowid, sizeof rowid, " (rowid %lld)", (long long)sqlite3_column_int64(st, 1));
        report(v, "catalogue '%s': a row of table '%s'%s names a missing '%s' row", v->s->db_path,
               sqlite3_column_text(st, 0), rowid, sqlite3_column_text(st, 2));
    }
    sqlite3_finalize(st);
    if (r != SQLITE_DONE)
        return actl__db_err(v->s, r, "foreign key check");
    return ACTL_OK;
}

int actl_store_verify(actl_store *s, actl_problem_fn fn, void *ctx, size_t *problems)
{
    verify_ctx v;
    memset(&v, 0, sizeof v);
    v.s = s;
    v.fn = fn;
    v.ctx = ctx;
    if (problems)
        *problems = 0;
    if (!s)
        return actl__err(ACTL_EINVAL, "store verify: NULL argument");
    /* One read snapshot: adds committing meanwhile are neither half seen nor
     * reported as problems. Their packs, written before their rows, may be
     * absent from it; packs without rows are not problems (gc's business). */
    int rc = actl__db_exec(s, "BEGIN", "cannot start a read transaction");
    if (rc)
        return rc;
    if (!(rc = verify_sqlite(&v)) && !(rc = verify_rows(&v)))
        rc = verify_packs(&v);
    actl__db_rollback(s);
    if (!rc && v.rc)
        rc = actl__oom();
    if (problems)
        *problems = v.count;
    return rc;
}

/* ---- gc --------------------------------------------------------------- */

/* Removes the files in dir (not subdirectories); counts them. */
static int gc_tmp(const char *dir, actl_gc_result *res)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? ACTL_OK
                               : actl__err(ACTL_EIO, "cannot read '%s': %s", dir, strerror(errno));
    int rc = ACTL_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        char *p = actl__path_join(dir, e->d_name);
        if (!p) {
            rc = actl__oom();
            break;
        }
        struct stat sb;
        if (lstat(p, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
            if (unlink(p) == 0)
                res->temp_removed++;
            else if (errno != ENOENT)
                rc = actl__err(ACTL_EIO, "cannot remove '%s': %s", p, strerror(errno));
        }
        free(p);
        if (rc)
            break;
    }
    closedir(d);
    return rc;
}

/* In one fanout directory objects/<xx>: removes every pack file that no
 * packs row names, then the directory if it is left empty. */
static int gc_fanout(actl_store *s, const char *dir, const char *prefix, sqlite3_stmt *known,
                     actl_gc_result *res)
{
    DIR *d = opendir(dir);
    if (!d)
        return actl__err(ACTL_EIO, "cannot read '%s': %s", dir, strerror(errno));
    int rc = ACTL_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        /* Only our own names: 64 hex digits starting with the directory's two. */
        if (strlen(e->d_name) != 64 || !is_hex(e->d_name, 64) ||
            memcmp(e->d_name, prefix, 2) != 0)
            continue;
        sqlite3_reset(known);
        sqlite3_bind_text(known, 1, e->d_name, -1, SQLITE_STATIC);
        int r = sqlite3_step(known);
        if (r == SQLITE_ROW)
            continue;
        if (r != SQLITE_DONE) {
            rc = actl__db_err(s, r, "cannot look up a pack");
            break;
        }
        char *p = actl__path_join(dir, e->d_name);
        if (!p) {
            rc = actl__oom();
            break;
        }
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (unlink(p) == 0) {
                res->packs_removed++;
                res->bytes_freed += (uint64_t)sb.st_size;
            } else if (errno != ENOENT) {
                rc = actl__err(ACTL_EIO, "cannot remove '%s': %s", p, strerror(errno));
            }
        }
        free(p);
    }
    sqlite3_reset(known);
    closedir(d);
    if (!rc)
        (void)rmdir(dir); /* fails, harmlessly, unless empty */
    return rc;
}

int actl_store_gc(actl_store *s, actl_gc_result *out)
{
    int rc, lock = -1;
    actl_gc_result res;
    sqlite3_stmt *known = NULL;
    DIR *d = NULL;
    char *tmp = NULL;
    memset(&res, 0, sizeof res);
    if (out)
        memset(out, 0, sizeof *out);
    if (!s)
        return actl__err(ACTL_EINVAL, "store gc: NULL argument");
    /* Held to the end: no add is between writing its pack and committing its
     * rows, and none starts. */
    if ((rc = lock_take(s, LOCK_EX, &lock)))
        return rc;
    /* Rows first, files after: a crash in between leaves files no row names,
     * which the scan below (now or next time) removes. */
    if ((rc = actl__db_begin(s)))
        goto out;
    rc = actl__db_exec(s,
                       "DELETE FROM packs WHERE NOT EXISTS "
                       "(SELECT 1 FROM adapters a WHERE a.pack = packs.digest)",
                       "cannot remove unreferenced packs");
    if (rc) {
        actl__db_rollback(s);
        goto out;
    }
    if ((rc = actl__db_commit(s)))
        goto out;

    if (!(tmp = actl__path_join(s->objects, "tmp"))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = gc_tmp(tmp, &res)))
        goto out;
    if ((rc = actl__db_prepare(s, "SELECT 1 FROM packs WHERE digest = ?", &known)))
        goto out;
    if (!(d = opendir(s->objects))) {
        if (errno != ENOENT)
            rc = actl__err(ACTL_EIO, "cannot read '%s': %s", s->objects, strerror(errno));
        goto out;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strlen(e->d_name) != 2 || !is_hex(e->d_name, 2))
            continue;
        char *sub = actl__path_join(s->objects, e->d_name);
        if (!sub) {
            rc = actl__oom();
            goto out;
        }
        if (actl__is_dir(sub))
            rc = gc_fanout(s, sub, e->d_name, known, &res);
        free(sub);
        if (rc)
            goto out;
    }
out:
    if (d)
        closedir(d);
    sqlite3_finalize(known);
    free(tmp);
    lock_release(lock);
    if (out)
        *out = res;
    return rc;
}
