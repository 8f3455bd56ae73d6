/* ckpt.c: Hugging Face checkpoints, one safetensors file or shards listed by
 * model.safetensors.index.json (DESIGN.md 4.2, 4.3). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* Real indexes are a few hundred KB even for the largest models. */
#define INDEX_MAX_BYTES (64u * 1024u * 1024u)

#define SINGLE_NAME "model.safetensors"
#define INDEX_NAME "model.safetensors.index.json"

typedef struct {
    const actl_tensor *t; /* lent by shards[shard] */
    size_t shard;
} ck_entry;

struct actl_ckpt {
    actl_st **shards;
    char **shard_names; /* plain file names, sorted */
    size_t nshards;
    ck_entry *ents; /* n, sorted by tensor name */
    size_t n;
};

static int cmp_str_ptrs(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_entries(const void *a, const void *b)
{
    return strcmp(((const ck_entry *)a)->t->name, ((const ck_entry *)b)->t->name);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* A shard must be a file beside the index: anything that could name a path
 * elsewhere ("../x", "/etc/x", "sub/x") is refused. Backslashes too, so that
 * an index made on Windows cannot smuggle a path component in. */
static bool plain_file_name(const char *s)
{
    return *s && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/') && !strchr(s, '\\');
}

/* Opens one shard file into ck->shards[i]. */
static int open_shard(actl_ckpt *ck, size_t i, const char *dir, const char *what)
{
    char *p = actl__path_join(dir, ck->shard_names[i]);
    if (!p)
        return actl__oom();
    int rc = actl_st_open(p, &ck->shards[i]);
    if (rc && what)
        rc = actl__err_wrap(rc, "%s: shard '%s'", what, ck->shard_names[i]);
    free(p);
    return rc;
}

/* Reads the index, opens every shard it names and checks that the index and
 * the shards agree tensor for tensor. */
static int load_index(actl_ckpt *ck, const char *index_path, const char *dir)
{
    int rc = ACTL_OK;
    char *text = NULL, *what = NULL;
    const char **names = NULL;
    size_t len;
    json_t *root = NULL;

    if ((rc = actl__read_file(index_path, INDEX_MAX_BYTES, &text, &len)))
        goto out;
    if (!(what = actl__strdup_printf("'%s'", index_path))) {
        rc = actl__oom();
        goto out;
    }
    if ((rc = actl__json_parse(text, len, what, &root)))
        goto out;
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        rc = actl__err(ACTL_EFORMAT, "'%s': no \"weight_map\" object", index_path);
        goto out;
    }
    size_t nmap = json_object_size(map);
    if (nmap == 0) {
        rc = actl__err(ACTL_EFORMAT, "'%s': \"weight_map\" is empty", index_path);
        goto out;
    }

    /* The distinct shard names, sorted; lent by root while we count them. */
    if (!(names = malloc(nmap * sizeof *names))) {
        rc = actl__oom();
        goto out;
    }
    size_t k = 0;
    const char *tname;
    json_t *v;
    json_object_foreach(map, tname, v) {
        if (!json_is_string(v)) {
            rc = actl__err(ACTL_EFORMAT, "'%s': weight_map entry '%s' is not a string",
                           index_path, tname);
            goto out;
        }
        const char *s = json_string_value(v);
        if (!plain_file_name(s)) {
            rc = actl__err(ACTL_EFORMAT,
                           "'%s': tensor '%s': shard '%s' is not a plain file name in the "
                           "index's directory",
                           index_path, tname, s);
            goto out;
        }
        names[k++] = s;
    }
    qsort(names, nmap, sizeof *names, cmp_str_ptrs);
    size_t ns = 0;
    for (size_t i = 0; i < nmap; i++)
        if (ns == 0 || strcmp(names[ns - 1], names[i]))
            names[ns++] = names[i];
    ck->shard_names = calloc(ns, sizeof *ck->shard_names);
    ck->shards = calloc(ns, sizeof *ck->shards);
    if (!ck->shard_names || !ck->shards) {
        rc = actl__oom();
        goto out;
    }
    ck->nshards = ns; /* close frees the NULL slots of a half-filled array too */
    for (size_t i = 0; i < ns; i++)
        if (!(ck->shard_names[i] = strdup(names[i]))) {
            rc = actl__oom();
            goto out;
        }
    for (size_t i = 0; i < ns; i++)
        if ((rc = open_shard(ck, i, dir, what)))
            goto out;

    if (!(ck->ents = calloc(nmap, sizeof *ck->ents))) {
        rc = actl__oom();
        goto out;
    }
    json_object_foreach(map, tname, v) {
        const char *s = json_string_value(v);
        const char **hit = bsearch(&s, ck->shard_names, ns, sizeof *ck->shard_names,
                                   cmp_str_ptrs);
        size_t si = (size_t)((char **)hit - ck->shard_names);
        const actl_tensor *t = actl_st_find(ck->shards[si], tname);
        if (!t) {
            rc = actl__err(ACTL_ENOTFOUND,
                           "'%s': tensor '%s' is not in shard '%s', where the index puts it",
                           index_path, tname, s);
            goto out;
        }
        ck->ents[ck->n].t = t;
        ck->ents[ck->n].shard = si;
        ck->n++;
    }

    /* Every tensor of a shard must be mapped to that shard: this refuses
     * tensors the index leaves out and, since every mapped tensor was found
     * where the index puts it, tensors present in two shards. */
    for (size_t s = 0; s < ns; s++) {
        for (size_t i = 0; i < actl_st_count(ck->shards[s]); i++) {
            const char *name = actl_st_tensor(ck->shards[s], i)->name;
            json_t *m = json_object_get(map, name);
            if (!m) {
                rc = actl__err(ACTL_EFORMAT,
                               "'%s': shard '%s' holds tensor '%s', which the index does not "
                               "list",
                               index_path, ck->shard_names[s], name);
                goto out;
            }
            if (strcmp(json_string_value(m), ck->shard_names[s])) {
                rc = actl__err(ACTL_EFORMAT,
                               "'%s': tensor '%s' is in shard '%s' as well as in shard '%s', "
                               "where the index puts it",
                               index_path, name, ck->shard_names[s], json_string_value(m));
                goto out;
            }
        }
    }
out:
    json_decref(root);
    free(names);
    free(text);
    free(what);
    return rc;
}

/* A single safetensors file: one shard named by the file's base name. */
static int load_single(actl_ckpt *ck, const char *file)
{
    const char *slash = strrchr(file, '/');
    const char *base = slash ? slash + 1 : file;
    if (!(ck->shard_names = calloc(1, sizeof *ck->shard_names)) ||
        !(ck->shards = calloc(1, sizeof *ck->shards)) ||
        !(ck->shard_names[0] = strdup(base)))
        return actl__oom();
    ck->nshards = 1;
    int rc = actl_st_open(file, &ck->shards[0]);
    if (rc)
        return rc;
    size_t n = actl_st_count(ck->shards[0]);
    if (!(ck->ents = calloc(n ? n : 1, sizeof *ck->ents)))
        return actl__oom();
    for (size_t i = 0; i < n; i++)
        ck->ents[i].t = actl_st_tensor(ck->shards[0], i);
    ck->n = n;
    return ACTL_OK;
}

int actl_ckpt_open(const char *path, actl_ckpt **out)
{
    int rc = ACTL_OK;
    actl_ckpt *ck = NULL;
    char *single = NULL, *index = NULL, *dir = NULL;

    if (!path || !out)
        return actl__err(ACTL_EINVAL, "checkpoint open: NULL argument");
    if (!(ck = calloc(1, sizeof *ck))) {
        rc = actl__oom();
        goto out;
    }
    if (actl__is_dir(path)) {
        single = actl__path_join(path, SINGLE_NAME);
        index = actl__path_join(path, INDEX_NAME);
        if (!single || !index) {
            rc = actl__oom();
            goto out;
        }
        /* transformers looks for the single file first; so do we. */
        if (actl__exists(single))
            rc = load_single(ck, single);
        else if (actl__exists(index))
            rc = load_index(ck, index, path);
        else
            rc = actl__err(ACTL_ENOTFOUND, "'%s': neither %s nor %s is there", path,
                           SINGLE_NAME, INDEX_NAME);
    } else if (ends_with(path, ".index.json")) {
        const char *slash = strrchr(path, '/');
        dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup(".");
        if (!dir) {
            rc = actl__oom();
            goto out;
        }
        rc = load_index(ck, path, dir);
    } else {
        rc = load_single(ck, path);
    }
    if (rc)
        goto out;
    qsort(ck->ents, ck->n, sizeof *ck->ents, cmp_entries);
    *out = ck;
    ck = NULL;
out:
    free(single);
    free(index);
    free(dir);
    actl_ckpt_close(ck);
    return rc;
}

void actl_ckpt_close(actl_ckpt *ck)
{
    if (!ck)
        return;
    free(ck->ents);
    for (size_t i = 0; i < ck->nshards; i++) {
        actl_st_close(ck->shards[i]);
        free(ck->shard_names[i]);
    }
    free(ck->shards);
    free(ck->shard_names);
    free(ck);
}

size_t actl_ckpt_count(const actl_ckpt *ck) { return ck ? ck->n : 0; }

const actl_tensor *actl_ckpt_tensor(const actl_ckpt *ck, size_t i)
{
    return ck && i < ck->n ? ck->ents[i].t : NULL;
}

static int cmp_name_entry(const void *key, const void *elem)
{
    return strcmp(key, ((const ck_entry *)elem)->t->name);
}

const actl_tensor *actl_ckpt_find(const actl_ckpt *ck, const char *name)
{
    if (!ck || !name || !ck->n)
        return NULL;
    const ck_entry *hit = bsearch(name, ck->ents, ck->n, sizeof *ck->ents, cmp_name_entry);
    return hit ? hit->t : NULL;
}

size_t actl_ckpt_shard_count(const actl_ckpt *ck) { return ck ? ck->nshards : 0; }

const char *actl_ckpt_shard_of(const actl_ckpt *ck, size_t i)
{
    return ck && i < ck->n ? ck->shard_names[ck->ents[i].shard] : NULL;
}
