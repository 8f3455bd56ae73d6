/*
 * inspect.c: `adapterctl inspect PATH [--json]`: what a PEFT adapter
 * directory, a checkpoint directory or a safetensors file holds. Reads only.
 */
#include "cmd.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

cmd_fn cmd_inspect;

static const char *const inspect_usage[] = {
    "adapterctl inspect PATH [--json]",
    "",
    "Shows what PATH holds; changes nothing. PATH is one of:",
    "  a PEFT adapter directory (adapter_config.json + adapter_model.safetensors):",
    "    kind, base model, config, and per module the rank, alpha, scale, widths,",
    "    flags, placement, dtype, parameters and bytes, then the totals;",
    "  a checkpoint directory (model.safetensors or model.safetensors.index.json):",
    "    every tensor with its dtype, shape, size and shard;",
    "  a .safetensors file: every tensor with its dtype, shape and size, and the",
    "    file's metadata.",
    "With --json, one JSON document (its schema is in README.md).",
    NULL,
};

/* What PATH is, decided from the file system; the library judges the contents. */
enum target { TARGET_PEFT, TARGET_CHECKPOINT, TARGET_SAFETENSORS };

static int has_file(const char *dir, const char *name)
{
    char path[4096];
    struct stat st;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return 0;
    return stat(path, &st) == 0;
}

static enum target classify(const char *path)
{
    struct stat st;
    /* A path that does not exist goes to the safetensors reader, whose message
     * names it; so does any file that is not a directory. */
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return TARGET_SAFETENSORS;
    if (has_file(path, "adapter_config.json") || has_file(path, "adapter_model.safetensors") ||
        has_file(path, "adapter_model.bin"))
        return TARGET_PEFT;
    if (has_file(path, "model.safetensors") || has_file(path, "model.safetensors.index.json"))
        return TARGET_CHECKPOINT;
    /* Neither: the adapter loader says which file is missing. */
    return TARGET_PEFT;
}

/* ---- small formatting helpers ----------------------------------------- */

static const char *yes_no(int b) { return b ? "true" : "false"; }

/* "[16, 3000]" */
static const char *shape_str(const actl_tensor *t, char *buf, size_t len)
{
    const int64_t *shape = actl_tensor_shape(t);
    size_t used = 0;
    used += (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < actl_tensor_ndim(t) && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? ", " : "",
                                 (long long)shape[d]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
    return buf;
}

/* One "key  value" line of the summary at the head of the text output. */
static void field(const char *key, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void field(const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%-22s", key);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
}

/* A config value as one line: strings bare, lists of strings joined by
 * ", ", anything else as compact JSON. */
static void field_json(const char *key, const json_t *v)
{
    if (json_is_string(v)) {
        field(key, "%s", json_string_value(v));
        return;
    }
    if (json_is_array(v)) {
        int all_strings = 1;
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e) all_strings &= json_is_string(e);
        if (all_strings) {
            printf("%-22s", key);
            json_array_foreach(v, i, e) printf("%s%s", i ? ", " : "", json_string_value(e));
            putchar('\n');
            return;
        }
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    field(key, "%s", s ? s : "?");
    free(s);
}

/* Prints a config key when it is present and says something (not null, not
 * an empty object or list). */
static void field_config(const json_t *config, const char *key)
{
    const json_t *v = json_object_get(config, key);
    if (!v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0) ||
        (json_is_array(v) && json_array_size(v) == 0))
        return;
    field_json(key, v);
}

/* "dora,bias", or "-" when no flag is set. */
static const char *flags_str(int flags, char *buf, size_t len)
{
    static const struct { int bit; const char *name; } names[] = {
        { ACTL_MOD_DORA, "dora" },
        { ACTL_MOD_BIAS, "bias" },
        { ACTL_MOD_EMBEDDING, "embedding" },
        { ACTL_MOD_LEARNED_SCALE, "learned-scale" },
    };
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (flags & names[i].bit) {
            if (buf[0])
                strncat(buf, ",", len - strlen(buf) - 1);
            strncat(buf, names[i].name, len - strlen(buf) - 1);
        }
    if (!buf[0])
        snprintf(buf, len, "-");
    return buf;
}

/* Prints a JSON document on stdout; CMD_FAIL when it could not be built. */
static int print_json(json_t *doc)
{
    if (!doc) {
        /* jansson fails on allocation, or on a NaN or infinite real. */
        cmd_error("cannot build the JSON output");
        return CMD_FAIL;
    }
    /* 17 significant digits: every double reads back exactly. */
    if (json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) != 0) {
        cmd_error("cannot write the JSON output");
        return CMD_FAIL;
    }
    putchar('\n');
    return CMD_OK;
}

/* ---- PEFT adapter directories ----------------------------------------- */

/* The module table's columns; which appear depends on the adapter's kind. */
enum column {
    COL_MODULE, COL_RANK, COL_ALPHA, COL_SCALE, COL_PLACEMENT, COL_IN, COL_OUT,
    COL_FLAGS, COL_DTYPE, COL_PARAMS, COL_BYTES, NCOLS
};

static const char *const column_head[NCOLS] = {
    "module", "rank", "alpha", "scale", "placement", "in", "out",
    "flags", "dtype", "params", "bytes",
};

static int column_shown(actl_kind kind, enum column c)
{
    switch (c) {
    case COL_RANK: return kind != ACTL_KIND_ROAD;
    case COL_ALPHA: return kind == ACTL_KIND_LORA || kind == ACTL_KIND_MOS;
    case COL_SCALE: return kind != ACTL_KIND_ROAD;
    case COL_PLACEMENT: return kind == ACTL_KIND_BOTTLENECK;
    case COL_IN: return kind != ACTL_KIND_ROAD; /* RoAd tensors say nothing of it */
    default: return 1;
    }
}

/* A module width, "-" when the tensors do not imply it (0). */
static void width_str(int64_t w, char *buf, size_t len)
{
    if (w > 0)
        snprintf(buf, len, "%lld", (long long)w);
    else
        snprintf(buf, len, "-");
}

/* The same in JSON: null when unknown. */
static json_t *width_json(int64_t w) { return w > 0 ? json_integer(w) : json_null(); }

static const char *cell(enum column c, const actl_module_info *m, char *buf, size_t len)
{
    switch (c) {
    case COL_MODULE: snprintf(buf, len, "%s", m->name); break;
    case COL_RANK: snprintf(buf, len, "%d", m->rank); break;
    case COL_ALPHA: snprintf(buf, len, "%g", m->alpha); break;
    case COL_SCALE: snprintf(buf, len, "%.6g", m->scale); break;
    case COL_PLACEMENT: {
        const char *place = actl_placement_name(m->placement);
        snprintf(buf, len, "%s", place ? place : "-");
        break;
    }
    case COL_IN: width_str(m->in_features, buf, len); break;
    case COL_OUT: width_str(m->out_features, buf, len); break;
    case COL_FLAGS: flags_str(m->flags, buf, len); break;
    case COL_DTYPE: snprintf(buf, len, "%s", actl_dtype_name(m->dtype)); break;
    case COL_PARAMS: snprintf(buf, len, "%lld", (long long)m->params); break;
    case COL_BYTES: snprintf(buf, len, "%llu", (unsigned long long)m->bytes); break;
    case NCOLS: buf[0] = '\0'; break;
    }
    return buf;
}

static void print_peft_text(const char *path, const actl_adapter *a, const json_t *config)
{
    actl_adapter_info info;
    char buf[256];
    actl_adapter_info_get(a, &info);

    field("path", "%s", path);
    field("type", "peft");
    field("kind", "%s", actl_kind_name(info.kind));
    field("base model", "%s", info.base_model ? info.base_model : "-");
    switch (info.kind) {
    case ACTL_KIND_LORA:
    case ACTL_KIND_MOS:
        field("r", "%d", info.rank);
        field("lora_alpha", "%g", info.alpha);
        if (info.kind == ACTL_KIND_MOS) {
            field("mos_shards", "%d", info.shards);
            break;
        }
        field("use_rslora", "%s", yes_no(info.use_rslora));
        field("use_dora", "%s", yes_no(info.use_dora));
        field("fan_in_fan_out", "%s", yes_no(info.fan_in_fan_out));
        field_config(config, "rank_pattern");
        field_config(config, "alpha_pattern");
        break;
    case ACTL_KIND_ROAD:
        field("variant", "%s", actl_road_variant_name(info.variant));
        field("group_size", "%d", info.group_size);
        break;
    case ACTL_KIND_BOTTLENECK:
        field("bottleneck_size", "%d", info.rank);
        field("non_linearity", "%s", actl_activation_name(info.activation));
        field_config(config, "scaling");
        field("use_parallel_adapter", "%s", yes_no(info.use_parallel_adapter));
        break;
    case ACTL_KIND_STACK: /* a store entry, never a directory's */
        break;
    }
    field_config(config, "target_modules");
    field_config(config, "modules_to_save");

    /* Column widths from the heads and every cell, then the rows. */
    size_t n = actl_adapter_module_count(a);
    int width[NCOLS];
    for (int c = 0; c < NCOLS; c++)
        width[c] = (int)strlen(column_head[c]);
    for (size_t i = 0; i < n; i++) {
        actl_module_info m;
        if (actl_adapter_module(a, i, &m) != ACTL_OK)
            continue;
        for (int c = 0; c < NCOLS; c++) {
            int w = (int)strlen(cell((enum column)c, &m, buf, sizeof buf));
            if (w > width[c])
                width[c] = w;
        }
    }
    putchar('\n');
    const char *sep = "";
    for (int c = 0; c < NCOLS; c++) {
        if (!column_shown(info.kind, (enum column)c))
            continue;
        const char *head = c == COL_RANK && info.kind == ACTL_KIND_BOTTLENECK ? "size"
                                                                               : column_head[c];
        /* Names and words left-aligned, numbers right-aligned. */
        int left = c == COL_MODULE || c == COL_PLACEMENT || c == COL_FLAGS || c == COL_DTYPE;
        printf("%s%*s", sep, left ? -width[c] : width[c], head);
        sep = "  ";
    }
    putchar('\n');
    for (size_t i = 0; i < n; i++) {
        actl_module_info m;
        if (actl_adapter_module(a, i, &m) != ACTL_OK)
            continue;
        sep = "";
        for (int c = 0; c < NCOLS; c++) {
            if (!column_shown(info.kind, (enum column)c))
                continue;
            int left = c == COL_MODULE || c == COL_PLACEMENT || c == COL_FLAGS || c == COL_DTYPE;
            printf("%s%*s", sep, left ? -width[c] : width[c],
                   cell((enum column)c, &m, buf, sizeof buf));
            sep = "  ";
        }
        putchar('\n');
    }
    printf("\n%zu modules, %zu tensors, %lld params, %llu bytes (%s)\n", info.module_count,
           info.tensor_count, (long long)info.params, (unsigned long long)info.bytes,
           cmd_human_size(info.bytes, buf, sizeof buf));
}

static json_t *peft_json(const char *path, const actl_adapter *a, json_t *config)
{
    actl_adapter_info info;
    actl_adapter_info_get(a, &info);
    json_t *modules = json_array();
    for (size_t i = 0; modules && i < actl_adapter_module_count(a); i++) {
        actl_module_info m;
        if (actl_adapter_module(a, i, &m) != ACTL_OK)
            continue;
        json_t *o = json_pack(
            "{s:s, s:i, s:f, s:f, s:o, s:o, s:b, s:b, s:b, s:b, s:s?, s:s, s:I, s:I}",
            "name", m.name, "rank", m.rank, "alpha", m.alpha, "scale", m.scale,
            "in_features", width_json(m.in_features), "out_features", width_json(m.out_features),
            "dora", (m.flags & ACTL_MOD_DORA) != 0, "bias", (m.flags & ACTL_MOD_BIAS) != 0,
            "embedding", (m.flags & ACTL_MOD_EMBEDDING) != 0,
            "learned_scale", (m.flags & ACTL_MOD_LEARNED_SCALE) != 0,
            "placement", actl_placement_name(m.placement), "dtype", actl_dtype_name(m.dtype),
            "params", (json_int_t)m.params, "bytes", (json_int_t)m.bytes);
        if (json_array_append_new(modules, o) != 0) {
            json_decref(modules);
            modules = NULL;
        }
    }
    /* "O" takes a new reference to config, which the caller still frees;
     * "o" steals modules, even when packing fails. */
    return json_pack("{s:s, s:s, s:s, s:s?, s:O, s:o, s:I, s:I, s:I}", "path", path, "type",
                     "peft", "kind", actl_kind_name(info.kind), "base_model", info.base_model,
                     "config", config, "modules", modules, "tensors",
                     (json_int_t)info.tensor_count, "params", (json_int_t)info.params, "bytes",
                     (json_int_t)info.bytes);
}

static int inspect_peft(const char *path, const struct cmd_ctx *ctx)
{
    actl_adapter *a = NULL;
    json_t *config = NULL;
    int rc = actl_adapter_load(path, &a);
    if (rc != ACTL_OK)
        return cmd_lib_error(rc);

    json_error_t jerr;
    config = json_loads(actl_adapter_config(a), 0, &jerr);
    if (!config) {
        cmd_error("'%s': cannot read the adapter's config back: %s", path, jerr.text);
        rc = CMD_FAIL;
        goto out;
    }
    if (ctx->json) {
        json_t *doc = peft_json(path, a, config);
        rc = print_json(doc);
        json_decref(doc);
    } else {
        print_peft_text(path, a, config);
        rc = CMD_OK;
    }
out:
    json_decref(config);
    actl_adapter_free(a);
    return rc;
}

/* ---- safetensors files and checkpoints -------------------------------- */

/* A tensor list, from a single file or from a checkpoint's shards. */
struct tensor_list {
    size_t (*count)(const void *src);
    const actl_tensor *(*get)(const void *src, size_t i);
    const char *(*shard)(const void *src, size_t i); /* NULL for a single file */
    const void *src;
};

static size_t st_count(const void *s) { return actl_st_count(s); }
static const actl_tensor *st_get(const void *s, size_t i) { return actl_st_tensor(s, i); }
static size_t ck_count(const void *c) { return actl_ckpt_count(c); }
static const actl_tensor *ck_get(const void *c, size_t i) { return actl_ckpt_tensor(c, i); }
static const char *ck_shard(const void *c, size_t i) { return actl_ckpt_shard_of(c, i); }

/* Tensor names that only adapters use. */
static int looks_like_adapter(const struct tensor_list *tl)
{
    static const char *const marks[] = {
        "lora_A", "lora_embedding_A", "road_theta", "adapter_down", "mos_index_A",
    };
    for (size_t i = 0; i < tl->count(tl->src); i++)
        for (size_t k = 0; k < sizeof marks / sizeof marks[0]; k++)
            if (strstr(actl_tensor_name(tl->get(tl->src, i)), marks[k]))
                return 1;
    return 0;
}

static void print_tensors_text(const struct tensor_list *tl)
{
    char buf[256];
    size_t n = tl->count(tl->src);
    int wname = (int)strlen("tensor"), wdtype = (int)strlen("dtype");
    int wshape = (int)strlen("shape"), wbytes = (int)strlen("bytes");
    int64_t params = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = tl->get(tl->src, i);
        int w;
        if ((w = (int)strlen(actl_tensor_name(t))) > wname)
            wname = w;
        if ((w = (int)strlen(actl_dtype_name(actl_tensor_dtype(t)))) > wdtype)
            wdtype = w;
        if ((w = (int)strlen(shape_str(t, buf, sizeof buf))) > wshape)
            wshape = w;
        if ((w = snprintf(buf, sizeof buf, "%zu", actl_tensor_nbytes(t))) > wbytes)
            wbytes = w;
        params += actl_tensor_numel(t);
        bytes += actl_tensor_nbytes(t);
    }
    printf("\n%-*s  %-*s  %-*s  %*s%s\n", wname, "tensor", wdtype, "dtype", wshape, "shape",
           wbytes, "bytes", tl->shard ? "  shard" : "");
    for (size_t i = 0; i < n; i++) {
        const actl_tensor *t = tl->get(tl->src, i);
        printf("%-*s  %-*s  %-*s  %*zu", wname, actl_tensor_name(t), wdtype,
               actl_dtype_name(actl_tensor_dtype(t)), wshape, shape_str(t, buf, sizeof buf),
               wbytes, actl_tensor_nbytes(t));
        if (tl->shard)
            printf("  %s", tl->shard(tl->src, i));
        putchar('\n');
    }
    printf("\n%zu tensors, %lld params, %llu bytes (%s)\n", n, (long long)params,
           (unsigned long long)bytes, cmd_human_size(bytes, buf, sizeof buf));
}

/* The "tensors" array, and the totals through params and bytes. */
static json_t *tensors_json(const struct tensor_list *tl, int64_t *params, uint64_t *bytes)
{
    json_t *arr = json_array();
    *params = 0;
    *bytes = 0;
    for (size_t i = 0; arr && i < tl->count(tl->src); i++) {
        const actl_tensor *t = tl->get(tl->src, i);
        json_t *shape = json_array();
        for (int d = 0; shape && d < actl_tensor_ndim(t); d++)
            if (json_array_append_new(shape, json_integer(actl_tensor_shape(t)[d])) != 0) {
                json_decref(shape);
                shape = NULL;
            }
        json_t *o = json_pack("{s:s, s:s, s:o, s:I}", "name", actl_tensor_name(t), "dtype",
                              actl_dtype_name(actl_tensor_dtype(t)), "shape", shape, "bytes",
                              (json_int_t)actl_tensor_nbytes(t));
        if (o && tl->shard && json_object_set_new(o, "shard", json_string(tl->shard(tl->src, i))))
            o = (json_decref(o), NULL);
        if (json_array_append_new(arr, o) != 0)
            arr = (json_decref(arr), NULL);
        *params += actl_tensor_numel(t);
        *bytes += actl_tensor_nbytes(t);
    }
    return arr;
}

static int inspect_safetensors(const char *path, const struct cmd_ctx *ctx)
{
    actl_st *st = NULL;
    int rc = actl_st_open(path, &st);
    if (rc != ACTL_OK)
        return cmd_lib_error(rc);

    struct tensor_list tl = { st_count, st_get, NULL, st };
    int adapter = looks_like_adapter(&tl);
    if (ctx->json) {
        json_t *meta = json_object();
        for (size_t i = 0; meta && i < actl_st_metadata_count(st); i++) {
            const char *k, *v;
            actl_st_metadata_at(st, i, &k, &v);
            if (json_object_set_new(meta, k, json_string(v)) != 0)
                meta = (json_decref(meta), NULL);
        }
        int64_t params;
        uint64_t bytes;
        json_t *tensors = tensors_json(&tl, &params, &bytes);
        json_t *doc = json_pack("{s:s, s:s, s:o, s:o, s:I, s:I, s:b}", "path", path, "type",
                                "safetensors", "metadata", meta, "tensors", tensors, "params",
                                (json_int_t)params, "bytes", (json_int_t)bytes,
                                "looks_like_adapter", adapter);
        rc = print_json(doc);
        json_decref(doc);
    } else {
        field("path", "%s", path);
        field("type", "safetensors");
        for (size_t i = 0; i < actl_st_metadata_count(st); i++) {
            const char *k, *v;
            actl_st_metadata_at(st, i, &k, &v);
            field(i ? "" : "metadata", "%s=%s", k, v);
        }
        print_tensors_text(&tl);
        rc = CMD_OK;
    }
    if (adapter && !ctx->quiet)
        cmd_error("note: '%s' holds adapter tensors; inspect its directory, with "
                  "adapter_config.json, for modules and scales",
                  path);
    actl_st_close(st);
    return rc;
}

static int inspect_checkpoint(const char *path, const struct cmd_ctx *ctx)
{
    actl_ckpt *ck = NULL;
    int rc = actl_ckpt_open(path, &ck);
    if (rc != ACTL_OK)
        return cmd_lib_error(rc);

    struct tensor_list tl = { ck_count, ck_get, ck_shard, ck };
    if (ctx->json) {
        /* Shard names, each once, sorted: an insertion sort, as there are few. */
        json_t *shards = json_array();
        for (size_t i = 0; shards && i < actl_ckpt_count(ck); i++) {
            const char *s = actl_ckpt_shard_of(ck, i);
            size_t k = 0, n = json_array_size(shards);
            int cmp = 1;
            while (k < n && (cmp = strcmp(json_string_value(json_array_get(shards, k)), s)) < 0)
                k++;
            if (k < n && cmp == 0)
                continue;
            if (json_array_insert_new(shards, k, json_string(s)) != 0)
                shards = (json_decref(shards), NULL);
        }
        int64_t params;
        uint64_t bytes;
        json_t *tensors = tensors_json(&tl, &params, &bytes);
        json_t *doc = json_pack("{s:s, s:s, s:o, s:o, s:I, s:I}", "path", path, "type",
                                "checkpoint", "shards", shards, "tensors", tensors, "params",
                                (json_int_t)params, "bytes", (json_int_t)bytes);
        rc = print_json(doc);
        json_decref(doc);
    } else {
        field("path", "%s", path);
        field("type", "checkpoint");
        field("shards", "%zu", actl_ckpt_shard_count(ck));
        /* One shard: no shard column. */
        if (actl_ckpt_shard_count(ck) == 1)
            tl.shard = NULL;
        print_tensors_text(&tl);
        rc = CMD_OK;
    }
    actl_ckpt_close(ck);
    return rc;
}

int cmd_inspect(int argc, char **argv, struct cmd_ctx *ctx)
{
    const struct cmd_option opts[] = { CMD_OPT_GLOBALS(ctx), CMD_OPT_END() };
    int nargs;
    int rc = cmd_parse(argc, argv, opts, inspect_usage, 0, &nargs);
    if (rc != CMD_PARSED)
        return rc;
    if (nargs == 0)
        return cmd_usage_error(inspect_usage, "missing PATH");
    if (nargs > 1)
        return cmd_usage_error(inspect_usage, "too many arguments: '%s'", argv[1]);

    const char *path = argv[0];
    switch (classify(path)) {
    case TARGET_PEFT: return inspect_peft(path, ctx);
    case TARGET_CHECKPOINT: return inspect_checkpoint(path, ctx);
    case TARGET_SAFETENSORS: return inspect_safetensors(path, ctx);
    }
    return CMD_FAIL;
}
