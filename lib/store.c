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
 * so gc never sees a pack an add is about to reference as an orphan. verify
 * holds LOCK_SH for its whole run too, so no pack of a row in its snapshot is
 * collected under it; loads take no lock and tell a removal meanwhile from a
 * lost pack by looking the row up again. flock locks die with their process,
 * so a killed add blocks nothing. */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define REF_CAP 129 /* a name of 128 characters and its NUL */
#define LABEL_CAP ACTL__LABEL_CAP

/* ---- small helpers ---------------------------------------------------- */

void (*actl__store_test_pause)(const char *point);

static void test_pause(const char *point)
{
    if (actl__store_test_pause)
        actl__store_test_pause(point);
}

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

/* An adapter row's facts that come from the adapter itself: the same for
 * add and for verify, which recomputes them from the pack. */
typedef struct row_facts {
    const char *kind;    /* actl_kind_name */
    int rank;
    const char *variant; /* RoAd; else NULL */
    int group_size;      /* RoAd; else 0 */
    char *modules;       /* target_modules_json (owned) */
    const char *config;  /* actl_adapter_config (lent by the adapter) */
} row_facts;

static int row_facts_get(const actl_adapter *a, const char *origin, row_facts *f)
{
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    memset(f, 0, sizeof *f);
    if (!(f->kind = actl_kind_name(info.kind)))
        return actl__err(ACTL_EINVAL, "adapter '%s' has no known kind", origin);
    f->rank = info.rank;
    if (info.kind == ACTL_KIND_ROAD) {
        f->variant = actl_road_variant_name(info.variant);
        f->group_size = info.group_size;
    }
    f->config = actl_adapter_config(a);
    return target_modules_json(a, &f->modules);
}

/* Everything an add records besides its pack, checked before any file is
 * written: what the caller can get wrong fails without touching the store. */
typedef struct add_plan {
    const char *name;
    const char *base;    /* o->base_model, else the config's (a stack: its members') */
    const char *lineage; /* o->lineage (a stack: its recipe), or NULL */
    row_facts facts;
    char *keys;          /* actl__tags_parse */
    const char **vals;
    size_t n_tags;
    char *own_config;    /* a stack's facts.config and lineage, owned here */
    char *own_lineage;
} add_plan;

static void add_plan_free(add_plan *p)
{
    free(p->facts.modules);
    free(p->keys);
    free(p->vals);
    free(p->own_config);
    free(p->own_lineage);
    memset(p, 0, sizeof *p);
}

/* Lineage is stored verbatim, so it is checked here: one JSON object (what
 * show embeds in its JSON output), strictly parsed, of config size at most. */
static int lineage_check(const char *name, const char *text)
{
    json_t *j = NULL;
    size_t len = strlen(text);
    if (len > ACTL_CONFIG_LIMIT)
        return actl__err(ACTL_ELIMIT, "lineage of '%s' is %zu bytes, over the limit of %u", name,
                         len, (unsigned)ACTL_CONFIG_LIMIT);
    int rc = actl__json_parse(text, len, "lineage", &j);
    if (rc)
        return actl__err_wrap(ACTL_EINVAL, "lineage of '%s' is not valid JSON", name);
    if (!json_is_object(j))
        rc = actl__err(ACTL_EINVAL, "lineage of '%s' is not a JSON object", name);
    json_decref(j);
    return rc;
}

/* The checks of an add's options, whatever is added; base is the base model
 * id the row gets when o gives none. */
static int add_plan_opts(const actl_add_opts *o, const char *base, add_plan *p)
{
    int rc;
    memset(p, 0, sizeof *p);
    p->name = o->name;
    p->base = o->base_model ? o->base_model : base;
    p->lineage = o->lineage;
    if ((rc = actl_name_check(o->name)))
        return rc;
    if (o->version < 0)
        return actl__err(ACTL_EINVAL, "version %lld of '%s' is not a positive integer",
                         (long long)o->version, o->name);
    if (o->base_model && !*o->base_model)
        return actl__err(ACTL_EINVAL, "base model is empty");
    if ((p->base && (rc = actl__text_check("base model", p->base, 1024, false))) ||
        (o->description &&
         (rc = actl__text_check("description", o->description, 65536, true))) ||
        (o->source && (rc = actl__text_check("source", o->source, 4096, false))) ||
        (o->lineage && (rc = lineage_check(o->name, o->lineage))) ||
        (rc = actl__tags_parse(o->tags, &p->keys, &p->vals, &p->n_tags)))
        add_plan_free(p);
    return rc;
}

static int add_plan_make(const actl_adapter *a, const actl_add_opts *o, add_plan *p)
{
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    int rc = add_plan_opts(o, info.base_model, p);
    if (!rc && (rc = row_facts_get(a, o->name, &p->facts)))
        add_plan_free(p);
    return rc;
}

/* The version a new row of `name` gets: `asked` when no row has it, else
 * ACTL_EEXIST; 0 asks for one past the highest the name has ever had (the
 * names table remembers removed ones, so NAME@V always means the same
 * bytes). The names table is brought up to the result. Inside the add's
 * transaction. */
static int add_version(actl_store *s, const char *name, int64_t asked, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int64_t version = asked;
    int rc = actl__db_prepare(s,
                              asked ? "SELECT 1 FROM adapters WHERE name = ?1 AND version = ?2"
                                    : "SELECT max(coalesce((SELECT last_version FROM names "
                                      "WHERE name = ?1), 0), coalesce((SELECT max(version) "
                                      "FROM adapters WHERE name = ?1), 0))",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (asked)
        sqlite3_bind_int64(st, 2, asked);
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        rc = actl__db_err(s, r, "cannot look up versions");
    } else if (asked && r == SQLITE_ROW) {
        rc = actl__err(ACTL_EEXIST, "'%s@%lld' already exists", name, (long long)asked);
    } else if (!asked) {
        int64_t last = sqlite3_column_int64(st, 0);
        if (last == INT64_MAX)
            rc = actl__err(ACTL_ELIMIT, "'%s' has reached the largest version", name);
        version = last + 1;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (rc)
        return rc;
    if ((rc = actl__db_prepare(s,
                               "INSERT INTO names (name, last_version) VALUES (?1, ?2) "
                               "ON CONFLICT (name) DO UPDATE SET last_version = "
                               "max(last_version, excluded.last_version)",
                               &st)))
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    rc = step_done(s, st, "cannot record the version");
    sqlite3_finalize(st);
    if (!rc)
        *out = version;
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

/* The packs row of hex and its tensor index, from the pack's own header
 * (ix), unless another add inserted them first. */
static int insert_pack_rows(actl_store *s, const char *hex, const actl__pack_index *ix,
                            int64_t created)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s,
                              "INSERT OR IGNORE INTO packs (digest, stored_bytes, raw_bytes, "
                              "created) VALUES (?, ?, ?, ?)",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)ix->size);
    sqlite3_bind_int64(st, 3, (int64_t)ix->raw);
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
        const actl__pack_tensor *t = &ix->tensors[i];
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, t->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, actl_dtype_name(t->dtype), -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, t->shape, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, (int64_t)t->raw);
        sqlite3_bind_text(st, 6, t->sha256, -1, SQLITE_STATIC);
        rc = step_done(s, st, "cannot insert the tensor index");
    }
    sqlite3_finalize(st);
    return rc;
}

static int insert_adapter_row(actl_store *s, const add_plan *p, const actl_add_opts *o,
                              int64_t version, const char *hex, uint64_t stored, uint64_t raw,
                              int64_t created, int64_t *id)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s,
                              "INSERT INTO adapters (name, version, kind, base_model, rank, "
                              "variant, group_size, target_modules, config, raw_bytes, "
                              "stored_bytes, pack, source, description, created, lineage) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, p->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, version);
    sqlite3_bind_text(st, 3, p->facts.kind, -1, SQLITE_STATIC);
    bind_text(st, 4, p->base);
    sqlite3_bind_int(st, 5, p->facts.rank);
    bind_text(st, 6, p->facts.variant);
    sqlite3_bind_int(st, 7, p->facts.group_size);
    sqlite3_bind_text(st, 8, p->facts.modules, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, p->facts.config, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, (int64_t)raw);
    sqlite3_bind_int64(st, 11, (int64_t)stored);
    bind_text(st, 12, hex); /* NULL for a stack */
    bind_text(st, 13, o->source);
    bind_text(st, 14, o->description);
    sqlite3_bind_int64(st, 15, created);
    bind_text(st, 16, p->lineage);
    if (!(rc = step_done(s, st, "cannot insert the adapter row")))
        *id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    if (rc || !p->n_tags)
        return rc;
    if ((rc = actl__db_prepare(s, "INSERT INTO tags (adapter_id, key, value) VALUES (?, ?, ?)",
                               &st)))
        return rc;
    for (size_t i = 0; !rc && i < p->n_tags; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, *id);
        sqlite3_bind_text(st, 2, p->keys + 65 * i, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, p->vals[i], -1, SQLITE_STATIC);
        rc = step_done(s, st, "cannot insert a tag");
    }
    sqlite3_finalize(st);
    return rc;
}

/* One pack an add names, once it is in objects/: its digest and sizes, and
 * when the pack had no row as the gc lock was held (known false), its index,
 * from which the rows are made. */
typedef struct pack_ref {
    char hex[65];
    uint64_t stored, raw;
    bool known;
    bool have_ix;
    actl__pack_index ix;
} pack_ref;

static void pack_ref_free(pack_ref *r)
{
    actl__pack_index_free(&r->ix);
    r->have_ix = false;
}

/* A stack's member rows, position 1 first, each naming its pack. */
static int insert_member_rows(actl_store *s, int64_t id, const actl_input *in,
                              const pack_ref *packs, size_t n)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s,
                              "INSERT INTO stack_members (adapter_id, position, pack, weight, "
                              "member_ref, member_kind) VALUES (?, ?, ?, ?, ?, ?)",
                              &st);
    for (size_t i = 0; !rc && i < n; i++) {
        actl_adapter_info info;
        actl_adapter_info_get(in[i].adapter, &info);
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, (int64_t)i + 1);
        sqlite3_bind_text(st, 3, packs[i].hex, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 4, in[i].weight);
        sqlite3_bind_text(st, 5, in[i].ref, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, actl_kind_name(info.kind), -1, SQLITE_STATIC);
        rc = step_done(s, st, "cannot insert a stack member");
    }
    sqlite3_finalize(st);
    return rc;
}

/* The rows of one add, in one transaction, once its packs are in objects/
 * and while the caller holds the gc lock: the rows of packs[0..n_packs) that
 * had none (only gc deletes pack rows, so a known one stays), the adapter
 * row naming row_hex (NULL for a stack) and, for a stack (members not NULL),
 * one member row per pack. label gets "name@version". */
static int add_rows(actl_store *s, const add_plan *p, const actl_add_opts *o, const char *row_hex,
                    uint64_t stored, uint64_t raw, const pack_ref *packs, size_t n_packs,
                    const actl_input *members, char label[LABEL_CAP], actl_entries **out)
{
    int64_t version = 0, id = 0, created = (int64_t)time(NULL);
    sqlite3_stmt *st = NULL;
    actl_entries *l = NULL;
    int rc = actl__db_begin(s);
    if (rc)
        return rc;
    if ((rc = add_version(s, p->name, o->version, &version)))
        goto out;
    snprintf(label, LABEL_CAP, "%s@%lld", p->name, (long long)version);
    for (size_t i = 0; i < n_packs; i++)
        if (!packs[i].known && (rc = insert_pack_rows(s, packs[i].hex, &packs[i].ix, created)))
            goto out;
    if ((rc = insert_adapter_row(s, p, o, version, row_hex, stored, raw, created, &id)) ||
        (members && (rc = insert_member_rows(s, id, members, packs, n_packs))))
        goto out;
    if (out) {
        if ((rc = actl__entries_new(&l)) ||
            (rc = actl__db_prepare(s, "SELECT " ACTL__ENTRY_COLS " FROM adapters a WHERE a.id = ?",
                                   &st)))
            goto out;
        sqlite3_bind_int64(st, 1, id);
        if ((rc = actl__entries_append(s, l, st)))
            goto out;
    }
    if ((rc = actl__db_commit(s)))
        goto out;
    if (out) {
        *out = l;
        l = NULL;
    }
out:
    sqlite3_finalize(st);
    actl__db_rollback(s);
    actl_entries_free(l);
    return rc;
}

/* Puts a pack in objects/ while the caller holds the gc lock: src_file NULL
 * and src_hex NULL: writes a's pack; src_file: installs that file, whose
 * digest is src_hex; src_hex only: objects/ must hold it. Then fills r,
 * reading the pack's index when it has no row yet (before the transaction,
 * to keep that short). */
static int pack_place(actl_store *s, const actl_adapter *a, const char *src_file,
                      const char *src_hex, pack_ref *r)
{
    int rc = ACTL_OK;
    char *path = NULL;
    memset(r, 0, sizeof *r);
    if (!src_hex) {
        if ((rc = actl__pack_write(a, s->objects, r->hex, &r->stored, &r->raw)))
            goto out;
    } else {
        memcpy(r->hex, src_hex, 65);
        if (!(path = actl__pack_path(s->objects, r->hex))) {
            rc = actl__oom();
            goto out;
        }
        /* A file from outside is trusted as verified (the caller hashed it);
         * one already in objects/ is hashed here, as nothing else vouches for
         * it once it may have lost its row. */
        if ((rc = actl__pack_index_read(src_file ? src_file : path, src_file ? NULL : r->hex,
                                        &r->ix)))
            goto out;
        r->have_ix = true;
        r->stored = r->ix.size;
        r->raw = r->ix.raw;
        if (src_file && (rc = actl__pack_install(s->objects, src_file, r->hex)))
            goto out;
    }
    if ((rc = pack_row_exists(s, r->hex, &r->known)))
        goto out;
    if (!r->known && !r->have_ix) {
        if (!path && !(path = actl__pack_path(s->objects, r->hex))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = actl__pack_index_read(path, NULL, &r->ix)))
            goto out;
        r->have_ix = true;
    }
out:
    if (rc)
        pack_ref_free(r);
    free(path);
    return rc;
}

/* After an add's rows failed (the catalogue full at the commit, say): removes
 * the pack it put in objects/ if no row names it, so that a failed add leaves
 * objects/ as it found it. Only when the gc lock converts to exclusive
 * without waiting: then no other add is between placing the same pack and
 * committing its row; otherwise the pack stays for gc. Either way the lock
 * is no longer held (a failed conversion drops it). Quiet: the add's own
 * error is the one to report. */
static void drop_unnamed_pack(actl_store *s, int lock, const pack_ref *r)
{
    sqlite3_stmt *st = NULL;
    char *path = NULL;
    if (!r->known && lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) == 0 &&
        sqlite3_prepare_v2(s->db, "SELECT 1 FROM packs WHERE digest = ?", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_bind_text(st, 1, r->hex, -1, SQLITE_STATIC) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_DONE && (path = actl__pack_path(s->objects, r->hex)))
        unlink(path);
    sqlite3_finalize(st);
    free(path);
}

/* The one path of actl_store_add and actl__store_add_pack: check, take the gc
 * lock, put the pack in objects/ (pack_place), then the rows. */
static int add(actl_store *s, const actl_adapter *a, const actl_add_opts *o, const char *src_file,
               const char *src_hex, actl_entries **out)
{
    int rc, lock = -1;
    add_plan plan;
    pack_ref r;
    char label[LABEL_CAP] = "";
    memset(&r, 0, sizeof r);
    if ((rc = add_plan_make(a, o, &plan)))
        return rc;
    /* Held from before the pack is in objects/ until its rows commit: gc
     * cannot take the pack for an orphan in between. */
    if ((rc = lock_take(s, LOCK_SH, &lock)) || (rc = pack_place(s, a, src_file, src_hex, &r)))
        goto out;
    test_pause("add");
    if ((rc = add_rows(s, &plan, o, r.hex, r.stored, r.raw, &r, 1, NULL, label, out)))
        drop_unnamed_pack(s, lock, &r);
out:
    if (rc && rc != ACTL_EEXIST && lock >= 0)
        actl__err_wrap(rc, "cannot add '%s'", label[0] ? label : o->name);
    lock_release(lock);
    pack_ref_free(&r);
    add_plan_free(&plan);
    return rc;
}

int actl_store_add(actl_store *s, const actl_adapter *a, const actl_add_opts *o,
                   actl_entries **out)
{
    if (out)
        *out = NULL;
    if (!s || !a || !o)
        return actl__err(ACTL_EINVAL, "store add: NULL argument");
    return add(s, a, o, NULL, NULL, out);
}

int actl__store_add_pack(actl_store *s, const char *pack_path, const char *hex,
                         const actl_adapter *a, const actl_add_opts *o, actl_entries **out)
{
    if (out)
        *out = NULL;
    if (!s || !a || !o || !hex)
        return actl__err(ACTL_EINVAL, "store add: NULL argument");
    if (!actl__is_hex(hex, 64))
        return actl__err(ACTL_EINVAL, "store add: '%s' is not a SHA-256 in lowercase hex", hex);
    return add(s, a, o, pack_path, hex, out);
}

int actl__store_has_pack(actl_store *s, const char *hex)
{
    bool known = false;
    struct stat sb;
    if (!s || !hex || !actl__is_hex(hex, 64))
        return 0;
    char *path = actl__pack_path(s->objects, hex);
    if (!path)
        return 0;
    int has = pack_row_exists(s, hex, &known) == ACTL_OK && known && stat(path, &sb) == 0 &&
              S_ISREG(sb.st_mode);
    actl__err_clear();
    free(path);
    return has;
}

/* ---- stacks ----------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The union of the members' adapted modules, sorted, as a JSON array (malloc'd). */
static int stack_modules_json(const actl_input *in, size_t n, char **out)
{
    int rc = ACTL_OK;
    size_t total = 0, k = 0;
    json_t *arr = NULL;
    for (size_t i = 0; i < n; i++)
        total += actl_adapter_module_count(in[i].adapter);
    const char **names = malloc((total ? total : 1) * sizeof *names);
    if (!names || !(arr = json_array())) {
        rc = actl__oom();
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < actl_adapter_module_count(in[i].adapter); j++) {
            actl_module_info mi;
            if ((rc = actl_adapter_module(in[i].adapter, j, &mi)))
                goto out;
            names[k++] = mi.name; /* lent by the adapter, which outlives this call */
        }
    qsort(names, k, sizeof *names, cmp_str);
    for (size_t i = 0; i < k; i++) {
        if (i && strcmp(names[i], names[i - 1]) == 0)
            continue;
        if (json_array_append_new(arr, json_string(names[i])) != 0) {
            rc = actl__err(ACTL_EINVAL, "module name '%s' is not valid UTF-8", names[i]);
            goto out;
        }
    }
    if (!(*out = actl__json_dump(arr, -1)))
        rc = actl__oom();
out:
    json_decref(arr);
    free(names);
    return rc;
}

/* The base model the members agree on (NULL when none names one): those that
 * name one must all name the same, unless the caller gives the base
 * (o->base_model), asserting it over theirs. */
static int stack_base(const actl_input *in, size_t n, const actl_add_opts *o,
                      const char **out)
{
    const char *base = NULL;
    size_t first = 0;
    char q1[ACTL__QUOTE_CAP], q2[ACTL__QUOTE_CAP];
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        actl_adapter_info info;
        actl_adapter_info_get(in[i].adapter, &info);
        if (!info.base_model)
            continue;
        if (!base) {
            base = info.base_model;
            first = i;
        } else if (strcmp(base, info.base_model) != 0 && !o->base_model) {
            return actl__err(ACTL_EINVAL,
                             "stack '%s': members were made for different base models: "
                             "member %zu '%s' for '%s', member %zu '%s' for '%s' (give the "
                             "base model to assert one)",
                             o->name ? o->name : "", first + 1,
                             actl__quote(in[first].ref, q1, sizeof q1), base, i + 1,
                             actl__quote(in[i].ref, q2, sizeof q2), info.base_model);
        }
    }
    *out = base;
    return ACTL_OK;
}

/* The packs row's sizes of hex; *known false when there is none. */
static int pack_sizes(actl_store *s, const char *hex, bool *known, uint64_t *stored,
                      uint64_t *raw)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s, "SELECT stored_bytes, raw_bytes FROM packs WHERE digest = ?",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    *known = r == SQLITE_ROW;
    if (r == SQLITE_ROW) {
        *stored = (uint64_t)sqlite3_column_int64(st, 0);
        *raw = (uint64_t)sqlite3_column_int64(st, 1);
    } else if (r != SQLITE_DONE) {
        rc = actl__db_err(s, r, "cannot look up a pack");
    }
    sqlite3_finalize(st);
    return rc;
}

/* A member's pack, under the gc lock: the one it came from when this store
 * holds it (row and file), else its adapter's pack, written now. */
static int member_place(actl_store *s, const actl_input *in, pack_ref *r)
{
    memset(r, 0, sizeof *r);
    if (in->pack) {
        bool known = false;
        struct stat sb;
        int rc = pack_sizes(s, in->pack, &known, &r->stored, &r->raw);
        if (rc)
            return rc;
        char *path = actl__pack_path(s->objects, in->pack);
        if (!path)
            return actl__oom();
        bool there = known && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
        free(path);
        if (there) {
            memcpy(r->hex, in->pack, 65);
            r->known = true;
            return ACTL_OK;
        }
    }
    return pack_place(s, in->adapter, NULL, NULL, r);
}

/* The recipe's list: [{"kind", "pack", "ref", "weight"}...] in order. */
static json_t *members_json(const actl_input *in, const pack_ref *packs, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        actl_adapter_info info;
        actl_adapter_info_get(in[i].adapter, &info);
        json_t *m = json_pack("{s:s, s:s, s:s, s:f}", "kind", actl_kind_name(info.kind), "pack",
                              packs[i].hex, "ref", in[i].ref, "weight", in[i].weight);
        if (!m || json_array_append_new(arr, m) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

/* A stack row records, beside its member rows (the truth gc, verify, load and
 * export go by):
 *  - config: {"members": [{"kind", "pack", "ref", "weight"}...]}, the recipe
 *    in the order the members apply;
 *  - lineage: {"method": "stack", "inputs": [the same objects]}, always made
 *    here (o->lineage is checked but not stored: a stack's recipe is its
 *    lineage, with every member's pack, which a directory input lacks before
 *    this call writes it);
 *  - target_modules: the union of the members' modules; raw_bytes and
 *    stored_bytes: the sums over the members (each as often as it appears);
 *  - base_model: o->base_model, else the one the members agree on; members
 *    naming different ones are refused unless o->base_model is given. */
int actl_store_add_stack(actl_store *s, const actl_input *in, size_t n, const actl_add_opts *o,
                         actl_entries **out)
{
    int rc = ACTL_OK, lock = -1;
    add_plan plan;
    pack_ref *packs = NULL;
    json_t *members = NULL, *cfg = NULL, *lin = NULL;
    char label[LABEL_CAP] = "", q[ACTL__QUOTE_CAP];
    uint64_t stored = 0, raw = 0;
    memset(&plan, 0, sizeof plan);
    if (out)
        *out = NULL;
    if (!s || !o || (n && !in))
        return actl__err(ACTL_EINVAL, "store add stack: NULL argument");
    const char *name = o->name ? o->name : "";
    if (n == 0)
        return actl__err(ACTL_EINVAL, "stack '%s' has no members", name);
    for (size_t i = 0; i < n; i++) {
        actl_adapter_info info;
        if (!in[i].adapter || !in[i].ref)
            return actl__err(ACTL_EINVAL, "stack '%s': member %zu has no adapter or no ref", name,
                             i + 1);
        actl_adapter_info_get(in[i].adapter, &info);
        if (!actl_kind_name(info.kind) || info.kind == ACTL_KIND_STACK)
            return actl__err(ACTL_EINVAL, "stack '%s': member %zu '%s' has no adapter kind",
                             name, i + 1, actl__quote(in[i].ref, q, sizeof q));
        if (!isfinite(in[i].weight))
            return actl__err(ACTL_EINVAL, "stack '%s': member %zu '%s': weight %g is not finite",
                             name, i + 1, actl__quote(in[i].ref, q, sizeof q), in[i].weight);
        if (in[i].pack && !actl__is_hex(in[i].pack, 64))
            return actl__err(ACTL_EINVAL,
                             "stack '%s': member %zu '%s': pack '%s' is not a SHA-256 in "
                             "lowercase hex",
                             name, i + 1, actl__quote(in[i].ref, q, sizeof q), in[i].pack);
        if ((rc = actl__text_check("member reference", in[i].ref, 4096, false)))
            return actl__err_wrap(rc, "stack '%s': member %zu", name, i + 1);
    }
    const char *base;
    if ((rc = stack_base(in, n, o, &base)) || (rc = add_plan_opts(o, base, &plan)))
        return rc;
    plan.facts.kind = actl_kind_name(ACTL_KIND_STACK);
    if ((rc = stack_modules_json(in, n, &plan.facts.modules)))
        goto out;
    if (!(packs = calloc(n, sizeof *packs))) {
        rc = actl__oom();
        goto out;
    }
    /* Held from before the first member's pack is checked or written until
     * the rows commit: gc takes none of them meanwhile. */
    if ((rc = lock_take(s, LOCK_SH, &lock)))
        goto out;
    for (size_t i = 0; i < n; i++) {
        if ((rc = member_place(s, &in[i], &packs[i]))) {
            actl__err_wrap(rc, "member %zu '%s'", i + 1, actl__quote(in[i].ref, q, sizeof q));
            goto out;
        }
        stored += packs[i].stored;
        raw += packs[i].raw;
    }
    if (!(members = members_json(in, packs, n)) ||
        !(cfg = json_pack("{s:O}", "members", members)) ||
        !(lin = json_pack("{s:s, s:O}", "method", "stack", "inputs", members)) ||
        !(plan.own_config = actl__json_dump(cfg, -1)) ||
        !(plan.own_lineage = actl__json_dump(lin, -1))) {
        rc = actl__oom();
        goto out;
    }
    plan.facts.config = plan.own_config;
    plan.lineage = plan.own_lineage;
    test_pause("add");
    rc = add_rows(s, &plan, o, NULL, stored, raw, packs, n, in, label, out);
out:
    if (rc && rc != ACTL_EEXIST && lock >= 0)
        actl__err_wrap(rc, "cannot add stack '%s'", label[0] ? label : name);
    lock_release(lock);
    for (size_t i = 0; packs && i < n; i++)
        pack_ref_free(&packs[i]);
    free(packs);
    json_decref(members);
    json_decref(cfg);
    json_decref(lin);
    add_plan_free(&plan);
    return rc;
}

void actl__stack_members_free(actl__stack_member *m, size_t n)
{
    for (size_t i = 0; m && i < n; i++)
        free(m[i].ref);
    free(m);
}

/* The member rows of the stack row id, in order. */
static int members_of(actl_store *s, int64_t id, actl__stack_member **out, size_t *n_out)
{
    sqlite3_stmt *st = NULL;
    actl__stack_member *m = NULL;
    size_t n = 0, cap = 0;
    *out = NULL;
    *n_out = 0;
    int rc = actl__db_prepare(s,
                              "SELECT position, pack, weight, member_ref, member_kind FROM "
                              "stack_members WHERE adapter_id = ? ORDER BY position",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        actl__stack_member *m2 = actl__grow(m, n, &cap, sizeof *m2, 8);
        if (!m2) {
            rc = actl__oom();
            goto out;
        }
        m = m2;
        actl__stack_member *e = &m[n];
        memset(e, 0, sizeof *e);
        const char *pack = (const char *)sqlite3_column_text(st, 1);
        const char *ref = (const char *)sqlite3_column_text(st, 3);
        const char *kind = (const char *)sqlite3_column_text(st, 4);
        e->position = sqlite3_column_int(st, 0);
        e->weight = sqlite3_column_double(st, 2);
        snprintf(e->pack, sizeof e->pack, "%s", pack ? pack : "");
        if (!kind || actl_kind_parse(kind, &e->kind) != ACTL_OK)
            e->kind = (actl_kind)0; /* verify reports it */
        if (!(e->ref = strdup(ref ? ref : ""))) {
            rc = actl__oom();
            goto out;
        }
        n++;
    }
    if (r != SQLITE_DONE)
        rc = actl__db_err(s, r, "cannot read stack members");
out:
    sqlite3_finalize(st);
    if (rc) {
        actl__stack_members_free(m, n);
    } else {
        *out = m;
        *n_out = n;
    }
    return rc;
}

int actl__store_stack_members(actl_store *s, const char *ref, char label[ACTL__LABEL_CAP],
                              actl__stack_member **out, size_t *n)
{
    int64_t id;
    char hex[65];
    *out = NULL;
    *n = 0;
    /* One read snapshot: the row and its members agree. */
    int rc = actl__db_exec(s, "BEGIN", "cannot start a read transaction");
    if (rc)
        return rc;
    if (!(rc = resolve(s, ref, &id, label, hex))) {
        if (hex[0])
            rc = actl__err(ACTL_EINVAL, "'%s' is not a stack", label);
        else
            rc = members_of(s, id, out, n);
    }
    actl__db_rollback(s);
    return rc;
}

/* True when a row (an adapter's or a stack member's) names the pack hex. */
static int pack_in_use(actl_store *s, const char *hex, bool *used)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s,
                              "SELECT EXISTS (SELECT 1 FROM adapters WHERE pack = ?1) OR EXISTS "
                              "(SELECT 1 FROM stack_members WHERE pack = ?1)",
                              &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, hex, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        *used = sqlite3_column_int(st, 0) != 0;
    else
        rc = actl__db_err(s, r, "cannot look up a pack");
    sqlite3_finalize(st);
    return rc;
}

int actl__store_load_pack(actl_store *s, const char *hex, const char *what, actl_adapter **out)
{
    *out = NULL;
    if (!actl__is_hex(hex, 64))
        return actl__err(ACTL_EINVAL, "cannot load %s: pack '%s' is not a SHA-256 digest", what,
                         hex);
    char *path = actl__pack_path(s->objects, hex);
    if (!path)
        return actl__oom();
    /* No lock, as in actl_store_load: a pack no row names any more was taken
     * by an rm and a gc since the caller read its row; one still named is lost. */
    int rc = actl__pack_load(path, hex, out);
    if (rc == ACTL_ENOTFOUND) {
        bool used = true;
        int urc = pack_in_use(s, hex, &used);
        if (urc)
            rc = urc;
        else if (!used)
            rc = actl__err(ACTL_ENOTFOUND, "%s was removed while being read", what);
        else
            actl__err_wrap(rc, "cannot load %s", what);
    } else if (rc) {
        actl__err_wrap(rc, "cannot load %s", what);
    }
    free(path);
    return rc;
}

/* The number of members of the stack row id. */
static int member_count(actl_store *s, int64_t id, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(s, "SELECT count(*) FROM stack_members WHERE adapter_id = ?", &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        *n = sqlite3_column_int64(st, 0);
    else
        rc = actl__db_err(s, r, "cannot count stack members");
    sqlite3_finalize(st);
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
    if (!hex[0]) { /* only a stack has no pack (the schema's CHECK) */
        int64_t n = 0;
        if ((rc = member_count(s, id, &n)))
            return rc;
        return actl__err(ACTL_EUNSUPPORTED,
                         "'%s' is a stack of %lld adapter%s; merge or export it, or load its "
                         "members",
                         label, (long long)n, n == 1 ? "" : "s");
    }
    char *path = actl__pack_path(s->objects, hex);
    if (!path)
        return actl__oom();
    test_pause("load");
    /* Loads take no lock (they would wait for a long gc): an rm and a gc
     * between the lookup and the read take the file. The row tells that case
     * from a pack lost while it is still referenced. */
    if ((rc = actl__pack_load(path, hex, out)) == ACTL_ENOTFOUND) {
        int64_t id2;
        char label2[LABEL_CAP], hex2[65];
        int rrc = resolve(s, label, &id2, label2, hex2);
        if (rrc == ACTL_ENOTFOUND || (rrc == ACTL_OK && id2 != id))
            rc = actl__err(ACTL_ENOTFOUND, "'%s' was removed while being read", label);
        else if (rrc != ACTL_OK)
            rc = rrc;
        else
            actl__err_wrap(rc, "cannot load '%s'", label);
    } else if (rc) {
        actl__err_wrap(rc, "cannot load '%s'", label);
    }
    free(path);
    return rc;
}


/* The member's part of its export directory's name: the last path component
 * of its ref without an "@VERSION", in the name alphabet (anything else
 * becomes '_'), at most 64 characters; "member" when nothing is left. */
static void member_dir_name(const char *ref, char out[65])
{
    size_t end = strlen(ref);
    while (end > 0 && ref[end - 1] == '/')
        end--;
    size_t start = end;
    while (start > 0 && ref[start - 1] != '/')
        start--;
    const char *at = NULL;
    for (size_t i = start; i < end; i++)
        if (ref[i] == '@')
            at = ref + i;
    if (at && at + 1 < ref + end && strspn(at + 1, "0123456789") == (size_t)(ref + end - at - 1))
        end = (size_t)(at - ref);
    size_t o = 0;
    for (size_t i = start; i < end && o < 64; i++) {
        unsigned char c = (unsigned char)ref[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || (c == '.' && o > 0);
        out[o++] = ok ? (char)c : '_';
    }
    out[o] = '\0';
    if (!o)
        strcpy(out, "member");
}

static int write_text(FILE *f, const char *tmp_path, void *ctx)
{
    const char *text = ctx;
    int rc = actl__fwrite_all(f, text, strlen(text), tmp_path);
    return rc ? rc : actl__fwrite_all(f, "\n", 1, tmp_path);
}

/* Exports a stack as a directory of PEFT directories, one per member in the
 * order they apply, DIR/<nn>-<member>/ (nn = 01, 02, ...; more digits past
 * 99 members), and DIR/stack.json, the recipe a reader needs to apply them:
 *   {
 *     "format": 1,               this file's layout; a new layout, a new number
 *     "kind": "stack",
 *     "name": "NAME", "version": V,   the stack's catalogue entry
 *     "base_model": "ID" or null,
 *     "members": [               in order: apply members[0] first
 *       {"position": 1,          1, 2, ... as in the catalogue
 *        "dir": "01-math",       the member's PEFT directory, relative to DIR
 *        "ref": "math@3",        what the member was when stacked (NAME@V, or the
 *                                directory it was read from)
 *        "kind": "lora",         the member's adapter kind
 *        "weight": 1.0,          the weight it applies with (LoRA: delta scaled
 *                                by it; RoAd: theta*w, alpha^w, as merge takes it)
 *        "pack": "<64 hex>"}     the SHA-256 of the member's pack in the store
 *     ]
 *   }
 * Every member is read from its pack with every digest checked; the whole
 * tree is built in a temporary directory beside DIR and renamed, so DIR
 * appears complete or not at all. */
static int export_stack(actl_store *s, const char *ref, const char *dir)
{
    int rc;
    actl__stack_member *m = NULL;
    size_t n = 0;
    char label[LABEL_CAP], sub[128], base[65];
    actl_entries *l = NULL;
    actl_adapter *a = NULL;
    actl__staged_dir d = {0};
    char *path = NULL, *text = NULL;
    json_t *arr = NULL, *doc = NULL;
    if ((rc = actl__store_stack_members(s, ref, label, &m, &n)) ||
        (rc = actl_store_show(s, label, &l)))
        goto out;
    const actl_entry *e = actl_entries_get(l, 0);
    if (!(arr = json_array())) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__dir_stage(dir, &d)))
        goto out;
    int width = 2;
    for (size_t k = n; k >= 100; k /= 10)
        width++;
    for (size_t i = 0; i < n; i++) {
        char what[LABEL_CAP + 4200], q[ACTL__QUOTE_CAP];
        actl_adapter_info info;
        snprintf(what, sizeof what, "'%s' member %zu '%s'", label, i + 1,
                 actl__quote(m[i].ref, q, sizeof q));
        member_dir_name(m[i].ref, base);
        char num[24];
        int len = snprintf(num, sizeof num, "%zu", i + 1);
        snprintf(sub, sizeof sub, "%.*s%s-%s", width > len ? width - len : 0,
                 "00000000000000000000", num, base);
        free(path);
        if (!(path = actl__path_join(d.tmp, sub))) {
            rc = actl__oom();
            goto out;
        }
        if ((rc = actl__store_load_pack(s, m[i].pack, what, &a)) ||
            (rc = actl_adapter_save(a, path)))
            goto out;
        actl_adapter_info_get(a, &info);
        actl_adapter_free(a);
        a = NULL;
        json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:f, s:s}", "position", (int)(i + 1), "dir",
                              sub, "ref", m[i].ref, "kind", actl_kind_name(info.kind), "weight",
                              m[i].weight, "pack", m[i].pack);
        if (!o || json_array_append_new(arr, o) != 0) {
            rc = actl__err(ACTL_EINVAL, "cannot describe member %zu of '%s' in JSON", i + 1,
                           label);
            goto out;
        }
    }
    if (!(doc = json_pack("{s:i, s:s, s:s, s:I, s:s?, s:O}", "format", 1, "kind", "stack",
                          "name", e->name, "version", (json_int_t)e->version, "base_model",
                          e->base_model, "members", arr)) ||
        !(text = actl__json_dump(doc, 2))) {
        rc = actl__oom();
        goto out;
    }
    free(path);
    if (!(path = actl__path_join(d.tmp, "stack.json"))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__write_atomic(path, write_text, text)))
        goto out;
    rc = actl__dir_commit(&d);
out:
    actl__dir_stage_free(&d);
    actl_adapter_free(a);
    actl__stack_members_free(m, n);
    actl_entries_free(l);
    json_decref(arr);
    json_decref(doc);
    free(path);
    free(text);
    return rc;
}

int actl_store_export(actl_store *s, const char *ref, const char *dir)
{
    actl_adapter *a = NULL;
    int64_t id;
    char label[LABEL_CAP], hex[65];
    if (!s || !ref || !dir || !*dir)
        return actl__err(ACTL_EINVAL, "store export: NULL argument");
    int rc = resolve(s, ref, &id, label, hex);
    if (rc)
        return rc;
    if (!hex[0]) /* a stack */
        return export_stack(s, label, dir);
    /* label pins the version resolved above */
    if (!(rc = actl_store_load(s, label, &a)))
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
    /* A malformed ref is refused before the write transaction is opened. */
    int rc = actl_ref_parse(ref, label, sizeof label, &version);
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
                         "SELECT name, version, stack, count(*) OVER () FROM "
                         "(SELECT name, version, 0 AS stack FROM adapters WHERE pack = ?1 UNION "
                         "SELECT a.name, a.version, 1 FROM stack_members m JOIN adapters a ON "
                         "a.id = m.adapter_id WHERE m.pack = ?1) "
                         "ORDER BY name, version LIMIT 3",
                         &st) == ACTL_OK) {
        sqlite3_bind_text(st, 1, v->pack, -1, SQLITE_STATIC);
        while (sqlite3_step(st) == SQLITE_ROW) {
            fprintf(f, "%s'%s@%lld'%s", shown ? ", " : "", sqlite3_column_text(st, 0),
                    (long long)sqlite3_column_int64(st, 1),
                    sqlite3_column_int(st, 2) ? " (a stack member)" : "");
            total = sqlite3_column_int64(st, 3);
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

/* The catalogue's tensor rows of one pack, and its raw size (raw, from its
 * packs row), against the pack's header. */
static int verify_tensor_rows(verify_ctx *v, const char *path, int64_t raw_row)
{
    actl__pack_index ix;
    sqlite3_stmt *st = NULL;
    int rc = actl__pack_index_read(path, NULL, &ix);
    if (rc == ACTL_ENOMEM)
        return rc;
    if (rc) /* a malformed header was reported by actl__pack_verify_load */
        return ACTL_OK;
    if ((uint64_t)raw_row != ix.raw)
        report(v, "pack %s (used by %s): the catalogue says %lld raw bytes, its tensors hold "
                  "%llu",
               v->pack, pack_users(v), (long long)raw_row, (unsigned long long)ix.raw);
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
        while (i < ix.n && strcmp(ix.tensors[i].name, name ? name : "") != 0)
            i++;
        if (i == ix.n) {
            report(v, "pack %s (used by %s): the tensor index lists '%s', which the pack lacks",
                   v->pack, pack_users(v), name ? name : "");
            continue;
        }
        seen[i] = true;
        const actl__pack_tensor *t = &ix.tensors[i];
        const char *tdtype = actl_dtype_name(t->dtype);
        if (!dtype || strcmp(dtype, tdtype) || !shape || strcmp(shape, t->shape) ||
            raw != (int64_t)t->raw || !sha || strcmp(sha, t->sha256))
            report(v,
                   "pack %s (used by %s): tensor '%s' is %s %s, %lld bytes, sha256 %s in the "
                   "pack but %s %s, %lld bytes, sha256 %s in the tensor index",
                   v->pack, pack_users(v), t->name, tdtype, t->shape, (long long)t->raw,
                   t->sha256, dtype ? dtype : "?", shape ? shape : "?", (long long)raw,
                   sha ? sha : "?");
    }
    if (r != SQLITE_DONE)
        rc = actl__db_err(v->s, r, "cannot read the tensor index");
    for (size_t i = 0; !rc && i < ix.n; i++)
        if (!seen[i])
            report(v, "pack %s (used by %s): tensor '%s' is missing from the tensor index",
                   v->pack, pack_users(v), ix.tensors[i].name);
    free(seen);
out:
    sqlite3_finalize(st);
    actl__pack_index_free(&ix);
    return rc;
}

/* A column of a row (label) whose value differs from what its pack gives. */
static void report_text(verify_ctx *v, const char *label, const char *col, const char *row,
                        const char *pack)
{
    char q1[ACTL__QUOTE_CAP], q2[ACTL__QUOTE_CAP];
    report(v, "'%s': column %s is %s%s%s in the catalogue but %s%s%s in its pack %s", label, col,
           row ? "'" : "", row ? actl__quote(row, q1, sizeof q1) : "null", row ? "'" : "",
           pack ? "'" : "", pack ? actl__quote(pack, q2, sizeof q2) : "null", pack ? "'" : "",
           v->pack);
}

static bool same_text(const char *a, const char *b)
{
    return a && b ? strcmp(a, b) == 0 : a == b;
}

/* A JSON column that must parse; reports and returns false when it does not. */
static bool json_column_ok(verify_ctx *v, const char *label, const char *col, const char *text)
{
    json_t *j = NULL;
    if (!text) {
        report(v, "'%s': column %s is null", label, col);
        return false;
    }
    if (actl__json_parse(text, strlen(text), col, &j) != ACTL_OK) {
        report(v, "'%s': column %s is not valid JSON: %s", label, col, actl_errmsg());
        return false;
    }
    json_decref(j);
    return true;
}

/* The rows naming v->pack against the adapter their pack holds: kind, rank,
 * variant, group size, target modules and config come from it (as add took
 * them). a is NULL when the pack is damaged (already reported): then only
 * what needs no pack is checked. */
static int verify_pack_rows(verify_ctx *v, const actl_adapter *a)
{
    row_facts f;
    bool have = false;
    sqlite3_stmt *st = NULL;
    int rc = ACTL_OK;
    memset(&f, 0, sizeof f);
    if (a) {
        if ((rc = row_facts_get(a, v->pack, &f)) == ACTL_ENOMEM)
            goto out;
        if (rc)
            report(v, "pack %s (used by %s): %s", v->pack, pack_users(v), actl_errmsg());
        have = rc == ACTL_OK;
        rc = ACTL_OK;
    }
    if ((rc = actl__db_prepare(v->s,
                               "SELECT name, version, kind, rank, variant, group_size, "
                               "target_modules, config FROM adapters WHERE pack = ? "
                               "ORDER BY name, version",
                               &st)))
        goto out;
    sqlite3_bind_text(st, 1, v->pack, -1, SQLITE_STATIC);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        char label[LABEL_CAP], q[ACTL__QUOTE_CAP];
        const char *name = (const char *)sqlite3_column_text(st, 0);
        snprintf(label, sizeof label, "%s@%lld", name ? name : "",
                 (long long)sqlite3_column_int64(st, 1));
        const char *kind = (const char *)sqlite3_column_text(st, 2);
        const char *variant = (const char *)sqlite3_column_text(st, 4);
        const char *modules = (const char *)sqlite3_column_text(st, 6);
        const char *config = (const char *)sqlite3_column_text(st, 7);
        int64_t rank = sqlite3_column_int64(st, 3), group = sqlite3_column_int64(st, 5);
        actl_kind k;
        if (!kind || actl_kind_parse(kind, &k) != ACTL_OK)
            report(v, "'%s': unknown kind '%s'", label, kind ? actl__quote(kind, q, sizeof q) : "");
        else if (have && strcmp(kind, f.kind) != 0)
            report_text(v, label, "kind", kind, f.kind);
        bool modules_ok = json_column_ok(v, label, "target_modules", modules);
        bool config_ok = json_column_ok(v, label, "config", config);
        if (!have)
            continue;
        if (rank != f.rank)
            report(v, "'%s': column rank is %lld in the catalogue but %d in its pack %s", label,
                   (long long)rank, f.rank, v->pack);
        if (!same_text(variant, f.variant))
            report_text(v, label, "variant", variant, f.variant);
        if (group != f.group_size)
            report(v, "'%s': column group_size is %lld in the catalogue but %d in its pack %s",
                   label, (long long)group, f.group_size, v->pack);
        if (modules_ok && strcmp(modules, f.modules) != 0)
            report_text(v, label, "target_modules", modules, f.modules);
        if (config_ok && strcmp(config, f.config) != 0)
            report_text(v, label, "config", config, f.config);
    }
    if (r != SQLITE_DONE) {
        rc = actl__db_err(v->s, r, "cannot read adapters");
        goto out;
    }
    if (!have)
        goto out;
    /* Stack members naming this pack: the kind each records is the pack's. */
    sqlite3_finalize(st);
    if ((rc = actl__db_prepare(v->s,
                               "SELECT a.name, a.version, m.position, m.member_ref, "
                               "m.member_kind FROM stack_members m JOIN adapters a ON "
                               "a.id = m.adapter_id WHERE m.pack = ? "
                               "ORDER BY a.name, a.version, m.position",
                               &st)))
        goto out;
    sqlite3_bind_text(st, 1, v->pack, -1, SQLITE_STATIC);
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        char q1[ACTL__QUOTE_CAP], q2[ACTL__QUOTE_CAP];
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *ref = (const char *)sqlite3_column_text(st, 3);
        const char *kind = (const char *)sqlite3_column_text(st, 4);
        if (!same_text(kind, f.kind))
            report(v, "'%s@%lld': member %lld '%s' is a '%s' in the catalogue but its pack %s "
                      "holds a '%s' adapter",
                   name ? name : "", (long long)sqlite3_column_int64(st, 1),
                   (long long)sqlite3_column_int64(st, 2), actl__quote(ref ? ref : "", q1, sizeof q1),
                   actl__quote(kind ? kind : "", q2, sizeof q2), v->pack, f.kind);
    }
    if (r != SQLITE_DONE)
        rc = actl__db_err(v->s, r, "cannot read stack members");
out:
    sqlite3_finalize(st);
    free(f.modules);
    return rc;
}

/* One stack row's members (a JSON-free check: what gc, load and export rely
 * on): at least one, positions 1..n, a known kind other than a stack, a
 * finite weight, a pack with a row; and the row's sizes equal the sums over
 * its members' packs. The packs themselves are re-hashed by verify_packs. */
static int verify_stack(verify_ctx *v, sqlite3_stmt *members, int64_t id, const char *label,
                        int64_t raw_row, int64_t stored_row)
{
    char q1[ACTL__QUOTE_CAP], q2[ACTL__QUOTE_CAP];
    int64_t n = 0, raw = 0, stored = 0;
    bool sizes_known = true;
    int r;
    sqlite3_reset(members);
    sqlite3_bind_int64(members, 1, id);
    while ((r = sqlite3_step(members)) == SQLITE_ROW) {
        int64_t pos = sqlite3_column_int64(members, 0);
        const char *pack = (const char *)sqlite3_column_text(members, 1);
        double w = sqlite3_column_double(members, 2);
        const char *ref = (const char *)sqlite3_column_text(members, 3);
        const char *kind = (const char *)sqlite3_column_text(members, 4);
        actl_kind k;
        n++;
        actl__quote(ref ? ref : "", q1, sizeof q1);
        if (pos != n)
            report(v, "'%s': member '%s' is at position %lld, expected %lld", label, q1,
                   (long long)pos, (long long)n);
        if (!kind || actl_kind_parse(kind, &k) != ACTL_OK || k == ACTL_KIND_STACK)
            report(v, "'%s': member %lld '%s' has kind '%s', not an adapter kind", label,
                   (long long)n, q1, actl__quote(kind ? kind : "", q2, sizeof q2));
        if (sqlite3_column_type(members, 2) != SQLITE_FLOAT &&
            sqlite3_column_type(members, 2) != SQLITE_INTEGER)
            report(v, "'%s': member %lld '%s' has no numeric weight", label, (long long)n, q1);
        else if (!isfinite(w))
            report(v, "'%s': member %lld '%s' has weight %g, not a finite number", label,
                   (long long)n, q1, w);
        if (sqlite3_column_type(members, 5) == SQLITE_NULL) {
            report(v, "'%s': member %lld '%s': pack %s has no row in the catalogue", label,
                   (long long)n, q1, pack ? pack : "");
            sizes_known = false;
        } else {
            raw += sqlite3_column_int64(members, 5);
            stored += sqlite3_column_int64(members, 6);
        }
    }
    sqlite3_reset(members);
    if (r != SQLITE_DONE)
        return actl__db_err(v->s, r, "cannot read stack members");
    if (n == 0)
        report(v, "'%s': a stack without members", label);
    if (sizes_known && raw != raw_row)
        report(v, "'%s': raw size %lld, but its members' packs hold %lld bytes of tensors",
               label, (long long)raw_row, (long long)raw);
    if (sizes_known && stored != stored_row)
        report(v, "'%s': stored size %lld, but its members' packs are %lld bytes", label,
               (long long)stored_row, (long long)stored);
    return ACTL_OK;
}

/* Stack rows (their JSON columns and members), and every row's lineage,
 * which show embeds as an object. */
static int verify_stacks_and_lineage(verify_ctx *v)
{
    sqlite3_stmt *st = NULL, *members = NULL;
    int rc = actl__db_prepare(v->s,
                              "SELECT id, name, version, kind, raw_bytes, stored_bytes, "
                              "target_modules, config, lineage FROM adapters "
                              "WHERE kind = 'stack' OR lineage IS NOT NULL ORDER BY name, version",
                              &st);
    if (rc)
        return rc;
    if ((rc = actl__db_prepare(v->s,
                               "SELECT m.position, m.pack, m.weight, m.member_ref, m.member_kind, "
                               "p.raw_bytes, p.stored_bytes FROM stack_members m LEFT JOIN packs "
                               "p ON p.digest = m.pack WHERE m.adapter_id = ? ORDER BY m.position",
                               &members)))
        goto out;
    int r = SQLITE_DONE;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        char label[LABEL_CAP];
        const char *name = (const char *)sqlite3_column_text(st, 1);
        const char *kind = (const char *)sqlite3_column_text(st, 3);
        const char *lineage = (const char *)sqlite3_column_text(st, 8);
        snprintf(label, sizeof label, "%s@%lld", name ? name : "",
                 (long long)sqlite3_column_int64(st, 2));
        if (lineage) {
            json_t *j = NULL;
            if (actl__json_parse(lineage, strlen(lineage), "lineage", &j) != ACTL_OK)
                report(v, "'%s': column lineage is not valid JSON: %s", label, actl_errmsg());
            else if (!json_is_object(j))
                report(v, "'%s': column lineage is not a JSON object", label);
            json_decref(j);
        }
        if (!kind || strcmp(kind, "stack") != 0)
            continue;
        (void)json_column_ok(v, label, "target_modules",
                             (const char *)sqlite3_column_text(st, 6));
        (void)json_column_ok(v, label, "config", (const char *)sqlite3_column_text(st, 7));
        rc = verify_stack(v, members, sqlite3_column_int64(st, 0), label,
                          sqlite3_column_int64(st, 4), sqlite3_column_int64(st, 5));
    }
    if (!rc && r != SQLITE_DONE)
        rc = actl__db_err(v->s, r, "cannot read adapters");
out:
    sqlite3_finalize(st);
    sqlite3_finalize(members);
    return rc;
}

static int verify_packs(verify_ctx *v)
{
    sqlite3_stmt *st = NULL;
    char *path = NULL;
    actl_adapter *a = NULL;
    /* Packs no row names are gc's business, not problems. */
    int rc = actl__db_prepare(v->s,
                              "SELECT digest, stored_bytes, raw_bytes FROM packs p WHERE EXISTS "
                              "(SELECT 1 FROM adapters a WHERE a.pack = p.digest) OR EXISTS "
                              "(SELECT 1 FROM stack_members m WHERE m.pack = p.digest) "
                              "ORDER BY digest",
                              &st);
    if (rc)
        return rc;
    int r = SQLITE_DONE;
    while (!rc && (r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *hex = (const char *)sqlite3_column_text(st, 0);
        int64_t stored = sqlite3_column_int64(st, 1), raw = sqlite3_column_int64(st, 2);
        free(v->users);
        v->users = NULL;
        v->pack = hex ? hex : "";
        if (!hex || !actl__is_hex(hex, 64)) {
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
        } else {
            if ((int64_t)sb.st_size != stored)
                report(v, "pack %s (used by %s): file '%s' is %lld bytes, the catalogue says %lld",
                       hex, pack_users(v), path, (long long)sb.st_size, (long long)stored);
            size_t n = 0;
            int prc = actl__pack_verify_load(path, hex, pack_problem, v, &n, &a);
            if (prc == ACTL_ENOMEM) {
                rc = prc;
                break;
            }
            if (prc)
                pack_problem(actl_errmsg(), v);
            if ((rc = verify_tensor_rows(v, path, raw)))
                break;
        }
        rc = verify_pack_rows(v, a);
        actl_adapter_free(a);
        a = NULL;
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

/* Rows whose pack has no row, and rows whose sizes disagree with their pack's. */
static int verify_rows(verify_ctx *v)
{
    sqlite3_stmt *st = NULL;
    int rc = actl__db_prepare(v->s,
                              "SELECT a.name, a.version, a.pack, a.stored_bytes, a.raw_bytes, "
                              "p.stored_bytes, p.raw_bytes FROM adapters a "
                              "LEFT JOIN packs p ON p.digest = a.pack WHERE a.pack IS NOT NULL "
                              "AND (p.digest IS NULL OR a.stored_bytes != p.stored_bytes "
                              "OR a.raw_bytes != p.raw_bytes) ORDER BY a.name, a.version",
                              &st);
    if (rc)
        return rc;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        long long ver = sqlite3_column_int64(st, 1);
        const char *pack = (const char *)sqlite3_column_text(st, 2);
        name = name ? name : "";
        pack = pack ? pack : "";
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
    int lock = -1;
    memset(&v, 0, sizeof v);
    v.s = s;
    v.fn = fn;
    v.ctx = ctx;
    if (problems)
        *problems = 0;
    if (!s)
        return actl__err(ACTL_EINVAL, "store verify: NULL argument");
    /* The gc lock, shared, for the whole check: an rm committing after the
     * snapshot below leaves a row verify still checks, and gc must not take
     * that row's pack meanwhile. Adds go on (they share the lock). */
    int rc = lock_take(s, LOCK_SH, &lock);
    if (rc)
        return rc;
    /* One read snapshot: adds committing meanwhile are neither half seen nor
     * reported as problems. Their packs, written before their rows, may be
     * absent from it; packs without rows are not problems (gc's business). */
    if ((rc = actl__db_exec(s, "BEGIN", "cannot start a read transaction")))
        goto out;
    if (!(rc = verify_sqlite(&v))) {
        test_pause("verify"); /* the snapshot is taken by the first read */
        if (!(rc = verify_rows(&v)) && !(rc = verify_stacks_and_lineage(&v)))
            rc = verify_packs(&v);
    }
    actl__db_rollback(s);
    if (!rc && v.rc)
        rc = actl__oom();
    if (problems)
        *problems = v.count;
out:
    lock_release(lock);
    return rc;
}

/* ---- gc --------------------------------------------------------------- */

/* Unlinks p, counting it in res->temp_removed; a file already gone is not an error. */
static int gc_unlink(const char *p, actl_gc_result *res)
{
    if (unlink(p) == 0)
        res->temp_removed++;
    else if (errno != ENOENT)
        return actl__err(ACTL_EIO, "cannot remove '%s': %s", p, strerror(errno));
    return ACTL_OK;
}

/* Calls one(path, res) for every name in dir but "." and "..", stopping at
 * the first error; a missing dir has nothing to remove. */
static int gc_each(const char *dir, int (*one)(const char *, actl_gc_result *),
                   actl_gc_result *res)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? ACTL_OK
                               : actl__err(ACTL_EIO, "cannot read '%s': %s", dir, strerror(errno));
    int rc = ACTL_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
            continue;
        char *p = actl__path_join(dir, e->d_name);
        if (!p) {
            rc = actl__oom();
            break;
        }
        rc = one(p, res);
        free(p);
    }
    closedir(d);
    return rc;
}

/* A temporary file (not a subdirectory) is always removed. */
static int gc_tmp_one(const char *p, actl_gc_result *res)
{
    struct stat sb;
    if (lstat(p, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return gc_unlink(p, res);
    return ACTL_OK;
}

/* Removes the files in dir (not subdirectories); counts them. */
static int gc_tmp(const char *dir, actl_gc_result *res)
{
    return gc_each(dir, gc_tmp_one, res);
}

/* A download no pull is writing: a pull holds LOCK_SH on its partial file for
 * as long as it writes it, so a file that can be locked exclusively without
 * waiting is abandoned. The lock is held across the unlink, so no pull can
 * take the file up in between. */
static int gc_partial_one(const char *p, actl_gc_result *res)
{
    int rc = ACTL_OK;
    /* O_NOFOLLOW and O_NONBLOCK: a planted link or FIFO is neither
     * followed nor waited on; only regular files are removed. */
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
        flock(fd, LOCK_EX | LOCK_NB) == 0)
        rc = gc_unlink(p, res);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Removes the downloads in dir that no pull is writing; counts them. */
static int gc_partial(const char *dir, actl_gc_result *res)
{
    return gc_each(dir, gc_partial_one, res);
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
        if (!actl__is_hex(e->d_name, 64) ||
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
    /* A stack's member packs stay for as long as the stack does, even when
     * the adapters they came from are removed. */
    rc = actl__db_exec(s,
                       "DELETE FROM packs WHERE NOT EXISTS "
                       "(SELECT 1 FROM adapters a WHERE a.pack = packs.digest) AND NOT EXISTS "
                       "(SELECT 1 FROM stack_members m WHERE m.pack = packs.digest)",
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
    free(tmp);
    if (!(tmp = actl__path_join(s->dir, ACTL_PARTIAL_DIR))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = gc_partial(tmp, &res)))
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
        if (!actl__is_hex(e->d_name, 2))
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
