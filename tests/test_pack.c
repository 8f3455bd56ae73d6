/* test_pack.c: the pack format (lib/pack.c): round trips of every fixture,
 * content addressing checked against sha256sum, sharing of identical packs,
 * and refusal of damaged packs (every byte flipped, truncations, headers whose
 * frames overlap or leave the file), by both load and verify. */
#include "testutil.h"

#include "internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <jansson.h>

#define ADAPTERS FIXTURES "/adapters"

/* ---- helpers ------------------------------------------------------------ */

static void spit(const char *path, const void *buf, size_t len)
{
    /* A new file each time: truncating one makes ext4 flush it on close. */
    unlink(path);
    test_write_file(path, buf, len);
}

static actl_adapter *load_fixture(const char *dir)
{
    actl_adapter *a;
    int rc = actl_adapter_load(dir, &a);
    if (rc)
        fail_msg("cannot load fixture '%s': %s", dir, actl_errmsg());
    return a;
}

/* fixtures/adapters/<base>/<kind>, sorted; n gets the count. */
static char **fixture_dirs(size_t *n)
{
    char **out = NULL;
    *n = 0;
    const char *bases[] = {"base-tiny", "hf-tiny"};
    for (size_t b = 0; b < 2; b++) {
        char *bd = test_join(ADAPTERS, bases[b]);
        struct dirent **ents;
        int k = scandir(bd, &ents, NULL, alphasort);
        assert_true(k >= 0);
        for (int i = 0; i < k; i++) {
            if (ents[i]->d_name[0] != '.') {
                out = realloc(out, (*n + 1) * sizeof *out);
                assert_non_null(out);
                out[(*n)++] = test_join(bd, ents[i]->d_name);
            }
            free(ents[i]);
        }
        free(ents);
        free(bd);
    }
    assert_true(*n >= 28);
    return out;
}

static void free_dirs(char **d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(d[i]);
    free(d);
}

static void assert_same_adapter(const actl_adapter *a, const actl_adapter *b)
{
    assert_string_equal(actl_adapter_config(a), actl_adapter_config(b));
    actl_adapter_info ia, ib;
    actl_adapter_info_get(a, &ia);
    actl_adapter_info_get(b, &ib);
    assert_int_equal(ia.kind, ib.kind);
    assert_int_equal(ia.module_count, ib.module_count);
    test_assert_same_tensors(a, b);
}

typedef struct {
    size_t n;
    char msgs[64][512];
} problems;

static void collect(const char *m, void *ctx)
{
    problems *p = ctx;
    if (p->n < 64)
        snprintf(p->msgs[p->n], sizeof p->msgs[0], "%s", m);
    p->n++;
}

static bool any_has(const problems *p, const char *needle)
{
    for (size_t i = 0; i < p->n && i < 64; i++)
        if (strstr(p->msgs[i], needle))
            return true;
    return false;
}

/* A pack of one fixture in a fresh objects directory. */
typedef struct {
    char *dir, *objects, *path;
    char hex[65];
    unsigned char *bytes;
    size_t len;
} packed;

static packed make_pack(const char *fixture)
{
    packed p;
    p.dir = test_tmpdir();
    p.objects = test_join(p.dir, "objects");
    actl_adapter *a = load_fixture(fixture);
    uint64_t stored, raw;
    assert_ok(actl__pack_write(a, p.objects, p.hex, &stored, &raw));
    actl_adapter_free(a);
    p.path = actl__pack_path(p.objects, p.hex);
    assert_non_null(p.path);
    p.bytes = test_slurp(p.path, &p.len);
    return p;
}

static void free_pack(packed *p)
{
    test_rmtree(p->dir);
    free(p->dir);
    free(p->objects);
    free(p->path);
    free(p->bytes);
}

static uint64_t le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

/* The header JSON of pack bytes (parsed by jansson here, not by pack.c). */
static json_t *header_of(const unsigned char *b, size_t len)
{
    assert_true(len >= 24);
    uint64_t h = le64(b + 16);
    json_error_t e;
    json_t *v = json_loadb((const char *)b + 24, (size_t)h, 0, &e);
    assert_non_null(v);
    return v;
}

/* Writes a pack with the header replaced by `hdr` (its checksum redone, so
 * that only the edit is wrong) and the frames of the original, plus `extra`
 * trailing bytes. */
static void write_with_header(const char *path, const packed *p, json_t *hdr, size_t extra)
{
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(text);
    size_t tl = strlen(text), hl = (tl + 7) / 8 * 8;
    uint64_t old = le64(p->bytes + 16);
    size_t flen = p->len - 24 - (size_t)old;
    size_t total = 24 + hl + flen + extra;
    unsigned char *b = calloc(1, total);
    assert_non_null(b);
    memcpy(b, p->bytes, 24);
    memcpy(b + 24, text, tl);
    memset(b + 24 + tl, ' ', hl - tl);
    uint32_t sum = (uint32_t)actl__xxh64(b + 24, hl, 0);
    for (int i = 0; i < 4; i++)
        b[12 + i] = (unsigned char)(sum >> (8 * i));
    for (int i = 0; i < 8; i++)
        b[16 + i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 24 + hl, p->bytes + 24 + old, flen);
    spit(path, b, total);
    free(b);
    free(text);
}

/* ---- round trips and content addressing ---------------------------------- */

static void test_pack__round_trips_every_fixture(void **state)
{
    (void)state;
    size_t n;
    char **dirs = fixture_dirs(&n);
    char *tmp = test_tmpdir(), *objects = test_join(tmp, "objects");
    for (size_t i = 0; i < n; i++) {
        actl_adapter *a = load_fixture(dirs[i]), *b = NULL, *c = NULL;
        char hex[65], again[65], sum[65];
        uint64_t stored = 0, raw = 0;
        assert_ok(actl__pack_write(a, objects, hex, &stored, &raw));
        char *path = actl__pack_path(objects, hex);
        assert_non_null(path);

        /* named by the SHA-256 of its bytes, as sha256sum computes it */
        test_sha256sum(path, sum);
        assert_string_equal(sum, hex);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal((uint64_t)st.st_size, stored);
        actl_adapter_info info;
        actl_adapter_info_get(a, &info);
        assert_int_equal(raw, info.bytes);

        int rc = actl__pack_load(path, hex, &b);
        if (rc)
            fail_msg("'%s': %s", dirs[i], actl_errmsg());
        assert_same_adapter(a, b);

        /* what comes out packs to the same bytes */
        assert_ok(actl__pack_write(b, objects, again, NULL, NULL));
        assert_string_equal(again, hex);
        assert_ok(actl__pack_load(path, NULL, &c));
        assert_same_adapter(a, c);

        size_t probs = 99;
        assert_ok(actl__pack_verify(path, hex, NULL, NULL, &probs));
        assert_int_equal(probs, 0);
        free(path);
        actl_adapter_free(a);
        actl_adapter_free(b);
        actl_adapter_free(c);
    }
    /* one pack per distinct fixture, nothing left in tmp */
    char *tmpd = test_join(objects, "tmp");
    assert_int_equal(test_count_files(tmpd), 0);
    assert_true(test_count_files(objects) <= n);
    free(tmpd);
    test_rmtree(tmp);
    free(tmp);
    free(objects);
    free_dirs(dirs, n);
}

static void test_pack__same_adapter_twice_shares_one_file(void **state)
{
    (void)state;
    char *tmp = test_tmpdir(), *objects = test_join(tmp, "objects");
    actl_adapter *a = load_fixture(ADAPTERS "/hf-tiny/lora-bf16");
    actl_adapter *a2 = load_fixture(ADAPTERS "/hf-tiny/lora-bf16");
    char h1[65], h2[65];
    assert_ok(actl__pack_write(a, objects, h1, NULL, NULL));
    char *path = actl__pack_path(objects, h1);
    struct stat st1, st;
    assert_int_equal(stat(path, &st1), 0);
    assert_ok(actl__pack_write(a2, objects, h2, NULL, NULL));
    assert_string_equal(h1, h2);
    assert_int_equal(test_count_files(objects), 1);
    /* shared: the intact file is left in place, not rewritten */
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_ino, st1.st_ino);

    /* the file sits at objects/<2 hex>/<64 hex> */
    char want[4200];
    snprintf(want, sizeof want, "%s/%.2s/%s", objects, h1, h1);
    assert_string_equal(path, want);

    /* a damaged file under the name is replaced: cut short, or of the right
     * size with one byte flipped (which a size check alone would share) */
    size_t len;
    unsigned char *b = test_slurp(path, &len);
    spit(path, b, len / 2);
    assert_ok(actl__pack_write(a, objects, h2, NULL, NULL));
    size_t len2;
    unsigned char *b2 = test_slurp(path, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(b, b2, len);
    free(b2);
    b[len - 1] ^= 0x40;
    spit(path, b, len);
    b[len - 1] ^= 0x40;
    assert_ok(actl__pack_write(a, objects, h2, NULL, NULL));
    b2 = test_slurp(path, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(b, b2, len);
    assert_int_equal(test_count_files(objects), 1); /* no temporary left behind */
    free(b);
    free(b2);
    free(path);
    actl_adapter_free(a);
    actl_adapter_free(a2);
    test_rmtree(tmp);
    free(tmp);
    free(objects);
}

/* PEFT's first matching pattern key wins, so a pack must keep the order of
 * rank_pattern and alpha_pattern: here sorting would make "q_proj" (alpha 4,
 * scale 2) win over "self_attn\\.q_proj" (alpha 16, scale 8). */
static void test_pack__keeps_pattern_order_and_scales(void **state)
{
    (void)state;
    const char *config = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, "
                         "\"alpha_pattern\": {\"self_attn\\\\.q_proj\": 16, \"q_proj\": 4}, "
                         "\"target_modules\": [\"q_proj\"]}";
    static const float zeros[8];
    int64_t sa[2] = {2, 4}, sb[2] = {4, 2};
    actl_tensor *t[2];
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                              ACTL_F32, 2, sa, zeros, &t[0]));
    assert_ok(actl_tensor_new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                              ACTL_F32, 2, sb, zeros, &t[1]));
    actl_adapter *a = NULL, *back = NULL;
    assert_ok(actl_adapter_new(config, (const actl_tensor *const *)t, 2, "test", &a));
    char *tmp = test_tmpdir(), *objects = test_join(tmp, "objects"), hex[65];
    assert_ok(actl__pack_write(a, objects, hex, NULL, NULL));
    char *path = actl__pack_path(objects, hex);
    assert_ok(actl__pack_load(path, hex, &back));
    actl_module_info m;
    assert_ok(actl_adapter_module(back, 0, &m));
    assert_true(m.scale == 8.0);
    const char *c = actl_adapter_config(back);
    const char *first = strstr(c, "self_attn"), *second = strstr(c, "\"q_proj\":4");
    assert_non_null(first);
    assert_non_null(second);
    assert_true(first < second);
    actl_adapter_free(a);
    actl_adapter_free(back);
    actl_tensor_free(t[0]);
    actl_tensor_free(t[1]);
    free(path);
    test_rmtree(tmp);
    free(tmp);
    free(objects);
}

/* Every object's keys, in file order, are sorted. */
static void assert_keys_sorted(json_t *v)
{
    if (json_is_object(v)) {
        const char *prev = NULL, *k;
        json_t *x;
        json_object_foreach(v, k, x) {
            if (prev && strcmp(prev, k) >= 0)
                fail_msg("key '%s' after '%s'", k, prev);
            prev = k;
            assert_keys_sorted(x);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            assert_keys_sorted(json_array_get(v, i));
    }
}

/* The prefix and header as pack.c documents them. */
static void test_pack__has_the_documented_layout(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/base-tiny/lora");
    assert_memory_equal(p.bytes, "ACTLPACK", 8);
    assert_int_equal(p.bytes[8], 1);
    assert_int_equal(p.bytes[9] | p.bytes[10] | p.bytes[11], 0);
    uint64_t h = le64(p.bytes + 16);
    assert_int_equal(h % 8, 0);
    uint32_t sum = (uint32_t)p.bytes[12] | (uint32_t)p.bytes[13] << 8 |
                   (uint32_t)p.bytes[14] << 16 | (uint32_t)p.bytes[15] << 24;
    assert_int_equal(sum, (uint32_t)actl__xxh64(p.bytes + 24, (size_t)h, 0));
    json_t *hdr = header_of(p.bytes, p.len);
    /* compact JSON (no whitespace outside strings) with sorted keys, then
     * space padding */
    const char *text = (const char *)p.bytes + 24;
    size_t tl = (size_t)h;
    while (tl && text[tl - 1] == ' ')
        tl--;
    assert_true(h - tl < 8);
    assert_memory_equal(text, "{\"config\":{", 11);
    bool in_str = false;
    for (size_t i = 0; i < tl; i++) {
        if (text[i] == '"' && text[i - 1] != '\\')
            in_str = !in_str;
        if (!in_str && (text[i] == ' ' || text[i] == '\n'))
            fail_msg("whitespace at header byte %zu", i);
    }
    json_error_t je;
    json_t *ordered = json_loadb(text, tl, JSON_PRESERVE_ORDER, &je);
    assert_non_null(ordered);
    assert_keys_sorted(ordered);
    json_decref(ordered);
    assert_int_equal(json_integer_value(json_object_get(hdr, "format")), 1);
    actl_adapter *a = load_fixture(ADAPTERS "/base-tiny/lora");
    json_t *ts = json_object_get(hdr, "tensors");
    assert_int_equal(json_array_size(ts), actl_adapter_tensor_count(a));
    uint64_t off = 0;
    for (size_t i = 0; i < json_array_size(ts); i++) {
        json_t *t = json_array_get(ts, i);
        const actl_tensor *x = actl_adapter_tensor(a, i);
        assert_string_equal(json_string_value(json_object_get(t, "name")), actl_tensor_name(x));
        assert_string_equal(json_string_value(json_object_get(t, "codec")), "actz1");
        assert_int_equal(json_integer_value(json_object_get(t, "offset")), off);
        assert_int_equal(json_integer_value(json_object_get(t, "raw")), actl_tensor_nbytes(x));
        char sha[65];
        assert_ok(actl__sha256_hex(actl_tensor_data(x), actl_tensor_nbytes(x), sha));
        assert_string_equal(json_string_value(json_object_get(t, "sha256")), sha);
        /* each frame decodes on its own */
        uint64_t stored = (uint64_t)json_integer_value(json_object_get(t, "stored"));
        unsigned char *dst = malloc(actl_tensor_nbytes(x) + 1);
        assert_ok(actl__codec_decompress(p.bytes + 24 + h + off, (size_t)stored,
                                         actl_tensor_dtype(x), dst, actl_tensor_nbytes(x), "t"));
        assert_memory_equal(dst, actl_tensor_data(x), actl_tensor_nbytes(x));
        free(dst);
        off += stored;
    }
    assert_int_equal(24 + h + off, p.len);
    json_decref(hdr);
    actl_adapter_free(a);
    free_pack(&p);
}

/* ---- damaged packs ------------------------------------------------------- */

/* The tensor whose frame holds byte i of the pack, or NULL. */
static const char *tensor_at(json_t *hdr, uint64_t data_start, size_t i)
{
    json_t *ts = json_object_get(hdr, "tensors");
    for (size_t k = 0; k < json_array_size(ts); k++) {
        json_t *t = json_array_get(ts, k);
        uint64_t off = data_start + (uint64_t)json_integer_value(json_object_get(t, "offset"));
        uint64_t st = (uint64_t)json_integer_value(json_object_get(t, "stored"));
        if (i >= off && i < off + st)
            return json_string_value(json_object_get(t, "name"));
    }
    return NULL;
}

/* Every byte flipped in turn: load with the digest refuses it; load without
 * it refuses it too unless zstd ignores that bit and the tensors come out
 * exact; verify reports it, naming the tensor whose frame holds the byte. */
static void test_pack__detects_every_flipped_byte(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/road-1");
    json_t *hdr = header_of(p.bytes, p.len);
    uint64_t data_start = 24 + le64(p.bytes + 16);
    actl_adapter *orig = load_fixture(ADAPTERS "/hf-tiny/road-1");
    char *bad = test_join(p.dir, "bad.pack");
    size_t benign = 0;
    unsigned char *copy = malloc(p.len);
    assert_non_null(copy);
    for (size_t i = 0; i < p.len; i++) {
        memcpy(copy, p.bytes, p.len);
        copy[i] ^= 0x01;
        spit(bad, copy, p.len);
        actl_adapter *a = NULL;
        assert_err(actl__pack_load(bad, p.hex, &a), ACTL_ECORRUPT, bad);
        assert_null(a);
        int rc = actl__pack_load(bad, NULL, &a);
        const char *name = tensor_at(hdr, data_start, i);
        if (rc == ACTL_OK) {
            if (!name)
                fail_msg("flipped byte %zu (outside every frame) was accepted", i);
            assert_same_adapter(orig, a);
            actl_adapter_free(a);
            benign++;
        } else if (name) {
            char needle[600];
            snprintf(needle, sizeof needle, "tensor '%s'", name);
            if (!strstr(actl_errmsg(), needle) || !strstr(actl_errmsg(), bad))
                fail_msg("byte %zu: message does not name '%s' and the pack: %s", i, name,
                         actl_errmsg());
        }
        problems pr = {0};
        size_t count = 0;
        assert_ok(actl__pack_verify(bad, p.hex, collect, &pr, &count));
        assert_int_equal(count, pr.n);
        assert_true(count >= 1);
        assert_true(any_has(&pr, "SHA-256 is"));
        if (name && rc != ACTL_OK) {
            char needle[600];
            snprintf(needle, sizeof needle, "tensor '%s'", name);
            if (!any_has(&pr, needle))
                fail_msg("byte %zu: verify does not name '%s'", i, name);
        }
    }
    assert_true(benign <= 4 * json_array_size(json_object_get(hdr, "tensors")));
    free(copy);
    free(bad);
    json_decref(hdr);
    actl_adapter_free(orig);
    free_pack(&p);
}

/* Two tensors damaged: verify goes on past the first and names both. */
static void test_pack__verify_reports_every_damaged_tensor(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora");
    json_t *hdr = header_of(p.bytes, p.len);
    json_t *ts = json_object_get(hdr, "tensors");
    size_t nt = json_array_size(ts);
    assert_true(nt >= 3);
    uint64_t data_start = 24 + le64(p.bytes + 16);
    /* the last byte of each frame: the raw mantissa plane or the zstd end */
    for (size_t k = 0; k < nt; k += 2) {
        json_t *t = json_array_get(ts, k);
        uint64_t end = data_start + (uint64_t)json_integer_value(json_object_get(t, "offset")) +
                       (uint64_t)json_integer_value(json_object_get(t, "stored"));
        p.bytes[end - 1] ^= 0x40;
    }
    char *bad = test_join(p.dir, "bad.pack");
    spit(bad, p.bytes, p.len);
    problems pr = {0};
    size_t count = 0;
    assert_ok(actl__pack_verify(bad, NULL, collect, &pr, &count));
    assert_int_equal(count, (nt + 1) / 2);
    for (size_t k = 0; k < nt; k++) {
        char needle[600];
        snprintf(needle, sizeof needle, "tensor '%s'",
                 json_string_value(json_object_get(json_array_get(ts, k), "name")));
        assert_int_equal(any_has(&pr, needle), k % 2 == 0);
    }
    free(bad);
    json_decref(hdr);
    free_pack(&p);
}

/* ---- threads, frames made ahead, packs read while they arrive ------------ */

static int threads_reset(void **state)
{
    (void)state;
    actl__pack_threads = 0;
    return 0;
}

/* Writes a's pack with actl__pack_write_fd into dir/name; returns its bytes. */
static unsigned char *write_fd_pack(const actl_adapter *a, const actl__pack_frame *ahead,
                                    const char *dir, const char *name, char hex[65], size_t *len)
{
    char *path = test_join(dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    uint64_t stored = 0, raw = 0;
    assert_ok(actl__pack_write_fd(a, ahead, fd, path, hex, &stored, &raw));
    close(fd);
    unsigned char *b = test_slurp(path, len);
    assert_int_equal(stored, *len);
    free(path);
    return b;
}

static void test_pack__bytes_do_not_depend_on_threads_or_the_writer(void **state)
{
    (void)state;
    size_t nd;
    char **dirs = fixture_dirs(&nd);
    char *tmp = test_tmpdir();
    for (size_t i = 0; i < nd; i++) {
        actl_adapter *a = load_fixture(dirs[i]);
        char h1[65], h4[65], hfd[65], name[32];
        actl__pack_threads = 1;
        char *o1 = test_join(tmp, "one");
        assert_ok(actl__pack_write(a, o1, h1, NULL, NULL));
        actl__pack_threads = 4;
        char *o4 = test_join(tmp, "four");
        assert_ok(actl__pack_write(a, o4, h4, NULL, NULL));
        assert_string_equal(h1, h4);
        char *p1 = actl__pack_path(o1, h1), *p4 = actl__pack_path(o4, h4);
        size_t l1, l4, lfd;
        unsigned char *b1 = test_slurp(p1, &l1), *b4 = test_slurp(p4, &l4);
        assert_int_equal(l1, l4);
        assert_memory_equal(b1, b4, l1);
        /* the digest named is the bytes' (an independent sha256sum) */
        char sum[65];
        test_sha256sum(p4, sum);
        assert_string_equal(sum, h4);
        snprintf(name, sizeof name, "fd-%zu", i);
        unsigned char *bfd = write_fd_pack(a, NULL, tmp, name, hfd, &lfd);
        assert_string_equal(hfd, h1);
        assert_int_equal(lfd, l1);
        assert_memory_equal(bfd, b1, l1);
        free(bfd);
        free(b1);
        free(b4);
        free(p1);
        free(p4);
        free(o1);
        free(o4);
        actl_adapter_free(a);
    }
    actl__pack_threads = 0;
    test_rmtree(tmp);
    free(tmp);
    free_dirs(dirs, nd);
}

static void test_pack__frames_made_ahead_give_the_same_pack(void **state)
{
    (void)state;
    char *tmp = test_tmpdir();
    actl_adapter *a = load_fixture(ADAPTERS "/hf-tiny/lora-dora");
    size_t n = actl_adapter_tensor_count(a);
    assert_true(n >= 4);
    char want[65], got[65];
    size_t wl, gl;
    unsigned char *wb = write_fd_pack(a, NULL, tmp, "plain", want, &wl);
    /* every other tensor's frame made ahead; one entry made for another
     * tensor (other dtype or size): not used, made again */
    actl__pack_frame *ahead = calloc(n, sizeof *ahead);
    assert_non_null(ahead);
    for (size_t i = 0; i < n; i += 2) {
        const actl_tensor *t = actl_adapter_tensor(a, i);
        assert_ok(actl__pack_frame_make(t->dtype, t->data, t->nbytes, &ahead[i]));
    }
    const actl_tensor *t0 = actl_adapter_tensor(a, 0);
    size_t other = 0;
    for (size_t i = 1; i < n && !other; i++)
        if (actl_adapter_tensor(a, i)->nbytes != t0->nbytes)
            other = i;
    assert_true(other > 0);
    actl__pack_frame_release(&ahead[other]);
    assert_ok(actl__pack_frame_make(t0->dtype, t0->data, t0->nbytes, &ahead[other]));
    actl__pack_threads = 3;
    unsigned char *gb = write_fd_pack(a, ahead, tmp, "ahead", got, &gl);
    assert_string_equal(got, want);
    assert_int_equal(gl, wl);
    assert_memory_equal(gb, wb, wl);
    /* a frame's digest is the tensor's */
    char sha[65];
    assert_ok(actl__sha256_hex(t0->data, t0->nbytes, sha));
    assert_string_equal(ahead[0].sha256, sha);
    for (size_t i = 0; i < n; i++)
        actl__pack_frame_release(&ahead[i]);
    actl__pack_frame_release(NULL);
    free(ahead);
    free(wb);
    free(gb);
    actl_adapter_free(a);
    test_rmtree(tmp);
    free(tmp);
}

static void test_pack__a_head_read_early_decodes_what_the_whole_pack_holds(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora-bias");
    packed q = make_pack(ADAPTERS "/hf-tiny/road-2");
    uint64_t hs = actl__pack_head_size(p.bytes);
    assert_true(hs > ACTL_PACK_PREFIX_LEN && hs < p.len);
    assert_int_equal(hs, 24 + le64(p.bytes + 16));
    /* not a pack prefix */
    unsigned char junk[ACTL_PACK_PREFIX_LEN] = "NOTAPACK";
    assert_int_equal(actl__pack_head_size(junk), 0);
    actl__pack_head *h = NULL;
    /* too few bytes for the header: refused */
    assert_err(actl__pack_head_parse(p.bytes, (size_t)hs - 1, p.len, p.path, &h), ACTL_EINVAL,
               "header");
    assert_null(h);
    assert_ok(actl__pack_head_parse(p.bytes, (size_t)hs, p.len, p.path, &h));
    size_t n = actl__pack_head_count(h);
    actl_adapter *whole = NULL;
    assert_ok(actl__pack_load(p.path, p.hex, &whole));
    assert_int_equal(n, actl_adapter_tensor_count(whole));
    actl_tensor **ahead = calloc(n, sizeof *ahead);
    assert_non_null(ahead);
    for (size_t i = 0; i < n; i++) {
        uint64_t off, len;
        actl__pack_head_frame(h, i, &off, &len);
        assert_true(off >= hs && off + len <= p.len);
        assert_ok(actl__pack_head_decode(h, i, p.bytes + off, &ahead[i]));
        const actl_tensor *w = actl_adapter_tensor(whole, i);
        assert_string_equal(ahead[i]->name, w->name);
        assert_int_equal(ahead[i]->nbytes, w->nbytes);
        assert_memory_equal(ahead[i]->data, w->data, w->nbytes);
    }
    /* a frame with a flipped byte does not decode */
    uint64_t off, len;
    actl__pack_head_frame(h, 0, &off, &len);
    unsigned char *frame = malloc(len);
    memcpy(frame, p.bytes + off, len);
    frame[len - 1] ^= 0x40;
    actl_tensor *bad = NULL;
    assert_int_equal(actl__pack_head_decode(h, 0, frame, &bad), ACTL_ECORRUPT);
    assert_null(bad);
    free(frame);
    /* verify with every tensor decoded ahead (half of them dropped first) */
    actl_tensor_free(ahead[1]);
    ahead[1] = NULL;
    size_t np = 9;
    actl_adapter *a = NULL;
    actl__pack_threads = 2;
    assert_ok(actl__pack_verify_load_ahead(p.path, h, ahead, NULL, NULL, &np, &a));
    assert_int_equal(np, 0);
    assert_non_null(a);
    assert_same_adapter(a, whole);
    for (size_t i = 0; i < n; i++)
        assert_null(ahead[i]); /* all taken */
    actl_adapter_free(a);
    /* tensors decoded from another pack's head are not taken for this one */
    actl__pack_head *hq = NULL;
    uint64_t hsq = actl__pack_head_size(q.bytes);
    assert_ok(actl__pack_head_parse(q.bytes, (size_t)hsq, q.len, q.path, &hq));
    size_t nq = actl__pack_head_count(hq);
    actl_tensor **other = calloc(nq, sizeof *other);
    for (size_t i = 0; i < nq; i++) {
        actl__pack_head_frame(hq, i, &off, &len);
        assert_ok(actl__pack_head_decode(hq, i, q.bytes + off, &other[i]));
    }
    assert_ok(actl__pack_verify_load_ahead(p.path, hq, other, NULL, NULL, &np, &a));
    assert_int_equal(np, 0);
    assert_same_adapter(a, whole);
    actl_adapter_free(a);
    /* a file whose header entry differs from the head's (here a tensor's
     * digest, the header's length and checksum kept right): that tensor is
     * decoded again, and its bytes do not match the digest */
    for (size_t i = 0; i < n; i++) {
        uint64_t o, l;
        actl__pack_head_frame(h, i, &o, &l);
        assert_ok(actl__pack_head_decode(h, i, p.bytes + o, &ahead[i]));
    }
    unsigned char *alt = malloc(p.len);
    memcpy(alt, p.bytes, p.len);
    char *hdr = (char *)alt + 24, *sha = strstr(hdr, "\"sha256\":\"");
    assert_non_null(sha);
    sha += 10;
    sha[0] = sha[0] == 'a' ? 'b' : 'a';
    uint64_t alt_hlen = le64(alt + 16);
    uint64_t sum = actl__xxh64(hdr, (size_t)alt_hlen, 0);
    for (int k = 0; k < 4; k++)
        alt[12 + k] = (unsigned char)(sum >> (8 * k));
    char *altp = test_join(p.dir, "alt.pack");
    spit(altp, alt, p.len);
    problems pa = {0};
    assert_ok(actl__pack_verify_load_ahead(altp, h, ahead, collect, &pa, &np, &a));
    assert_int_equal(np, 1);
    assert_true(any_has(&pa, "SHA-256 mismatch"));
    assert_null(a);
    free(altp);
    free(alt);
    /* without a head, a plain verify: a damaged frame is reported */
    p.bytes[off = le64(p.bytes + 16) + 24 + 3] ^= 0x01;
    char *dam = test_join(p.dir, "damaged.pack");
    spit(dam, p.bytes, p.len);
    problems pr = {0};
    assert_ok(actl__pack_verify_load_ahead(dam, NULL, NULL, collect, &pr, &np, &a));
    assert_int_equal(np, 1);
    assert_null(a);
    free(dam);
    free(other);
    free(ahead);
    actl__pack_head_free(hq);
    actl__pack_head_free(h);
    actl__pack_head_free(NULL);
    actl_adapter_free(whole);
    actl__pack_threads = 0;
    free_pack(&p);
    free_pack(&q);
}

/* Decoding on several threads reports the damaged tensors in their order,
 * and a load names the first one. */
static void test_pack__threads_report_damage_in_tensor_order(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora-dora");
    json_t *hdr = header_of(p.bytes, p.len);
    json_t *ts = json_object_get(hdr, "tensors");
    size_t nt = json_array_size(ts);
    assert_true(nt >= 4);
    uint64_t data_start = 24 + le64(p.bytes + 16);
    for (size_t k = 1; k < nt; k += 2) {
        json_t *t = json_array_get(ts, k);
        uint64_t end = data_start + (uint64_t)json_integer_value(json_object_get(t, "offset")) +
                       (uint64_t)json_integer_value(json_object_get(t, "stored"));
        p.bytes[end - 1] ^= 0x40;
    }
    char *bad = test_join(p.dir, "bad.pack");
    spit(bad, p.bytes, p.len);
    for (int threads = 1; threads <= 4; threads += 3) {
        actl__pack_threads = threads;
        problems pr = {0};
        size_t count = 0;
        assert_ok(actl__pack_verify(bad, NULL, collect, &pr, &count));
        assert_int_equal(count, nt / 2);
        for (size_t k = 1, m = 0; k < nt; k += 2, m++) {
            char needle[600];
            snprintf(needle, sizeof needle, "tensor '%s'",
                     json_string_value(json_object_get(json_array_get(ts, k), "name")));
            assert_non_null(strstr(pr.msgs[m], needle));
        }
        actl_adapter *a = NULL;
        char needle[600];
        snprintf(needle, sizeof needle, "tensor '%s'",
                 json_string_value(json_object_get(json_array_get(ts, 1), "name")));
        assert_err(actl__pack_load(bad, NULL, &a), ACTL_ECORRUPT, needle);
        assert_null(a);
    }
    actl__pack_threads = 0;
    free(bad);
    json_decref(hdr);
    free_pack(&p);
}

static void test_pack__refuses_truncated_packs(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/road-1");
    char *bad = test_join(p.dir, "bad.pack");
    for (size_t cut = 0; cut < p.len; cut++) {
        spit(bad, p.bytes, cut);
        actl_adapter *a = NULL;
        int rc = actl__pack_load(bad, NULL, &a);
        if (rc != ACTL_EFORMAT && rc != ACTL_ECORRUPT)
            fail_msg("cut at %zu: %s: %s", cut, actl_strerror(rc), actl_errmsg());
        assert_null(a);
        size_t count = 0;
        assert_ok(actl__pack_verify(bad, NULL, NULL, NULL, &count));
        assert_true(count >= 1);
    }
    spit(bad, p.bytes, 5);
    actl_adapter *a = NULL;
    assert_err(actl__pack_load(bad, NULL, &a), ACTL_EFORMAT, "shorter than its 24-byte prefix");
    free(bad);
    free_pack(&p);
}

/* Edits the header of a real pack and expects load and verify to refuse it. */
static void expect_header_refused(packed *p, json_t *hdr, size_t extra, int code,
                                  const char *needle)
{
    char *bad = test_join(p->dir, "edited.pack");
    write_with_header(bad, p, hdr, extra);
    actl_adapter *a = NULL;
    assert_err(actl__pack_load(bad, NULL, &a), code, needle);
    assert_null(a);
    problems pr = {0};
    size_t count = 0;
    assert_ok(actl__pack_verify(bad, NULL, collect, &pr, &count));
    assert_int_equal(count, 1);
    assert_true(any_has(&pr, needle));
    free(bad);
}

static json_t *tensor_entry(json_t *hdr, size_t i)
{
    return json_array_get(json_object_get(hdr, "tensors"), i);
}

static void test_pack__refuses_frames_that_overlap_or_leave_the_file(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora");
    json_t *hdr;

    /* an unchanged header passes: the edits below are what is refused */
    hdr = header_of(p.bytes, p.len);
    char *ok = test_join(p.dir, "same.pack");
    write_with_header(ok, &p, hdr, 0);
    actl_adapter *a = NULL;
    assert_ok(actl__pack_load(ok, NULL, &a));
    actl_adapter_free(a);
    free(ok);
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 1), "offset", json_integer(0));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "starts at 0, expected");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_t *last = tensor_entry(hdr, json_array_size(json_object_get(hdr, "tensors")) - 1);
    json_object_set_new(last, "stored",
                        json_integer(json_integer_value(json_object_get(last, "stored")) + 1));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "leaves the");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "offset", json_integer(1u << 30));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "starts at 1073741824");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "stored", json_integer(-1));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "non-negative integers");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    expect_header_refused(&p, hdr, 3, ACTL_EFORMAT, "3 bytes after the last frame");
    json_decref(hdr);
    free_pack(&p);
}

static void test_pack__refuses_malformed_tensor_entries(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora");
    json_t *hdr;

    hdr = header_of(p.bytes, p.len);
    json_t *name0 = json_object_get(tensor_entry(hdr, 0), "name");
    json_object_set(tensor_entry(hdr, 1), "name", name0);
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "is out of order or repeated");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "dtype", json_string("F33"));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "unknown dtype 'F33'");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "dtype", json_string("I16"));
    expect_header_refused(&p, hdr, 0, ACTL_EUNSUPPORTED, "dtype 'I16' is not supported");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_t *shape = json_object_get(tensor_entry(hdr, 0), "shape");
    json_array_set_new(shape, 0, json_integer(json_integer_value(json_array_get(shape, 0)) + 1));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "its dtype and shape give");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_array_set_new(json_object_get(tensor_entry(hdr, 0), "shape"), 0, json_integer(-4));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "dimension 0 is not a non-negative");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "codec", json_string("lz4"));
    expect_header_refused(&p, hdr, 0, ACTL_EUNSUPPORTED, "unknown codec");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "extra", json_true());
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "has 9 keys, expected 8");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_del(tensor_entry(hdr, 0), "sha256");
    json_object_set_new(tensor_entry(hdr, 0), "sha", json_string("x"));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "has no \"sha256\"");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(tensor_entry(hdr, 0), "sha256", json_string("ABC"));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "not 64 lowercase hex");
    json_decref(hdr);

    hdr = header_of(p.bytes, p.len);
    json_object_set_new(hdr, "format", json_integer(2));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "the header is not");
    json_decref(hdr);

    /* a tensor claiming more than zstd can expand its frame to */
    hdr = header_of(p.bytes, p.len);
    json_t *t0 = tensor_entry(hdr, 0);
    json_t *sh = json_array();
    json_array_append_new(sh, json_integer(1 << 30));
    json_object_set_new(t0, "shape", sh);
    json_object_set_new(t0, "dtype", json_string("U8"));
    json_object_set_new(t0, "raw", json_integer(1 << 30));
    expect_header_refused(&p, hdr, 0, ACTL_EFORMAT, "claims 1073741824 raw bytes from a");
    json_decref(hdr);
    free_pack(&p);
}

/* A tensor whose recorded SHA-256 differs from its bytes: ECORRUPT naming it. */
static void test_pack__refuses_a_tensor_whose_hash_differs(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora");
    json_t *hdr = header_of(p.bytes, p.len);
    json_t *t = tensor_entry(hdr, 1);
    char sha[65];
    snprintf(sha, sizeof sha, "%s", json_string_value(json_object_get(t, "sha256")));
    sha[10] = sha[10] == '0' ? '1' : '0';
    json_object_set_new(t, "sha256", json_string(sha));
    char needle[600];
    snprintf(needle, sizeof needle, "tensor '%s': SHA-256 mismatch",
             json_string_value(json_object_get(t, "name")));
    expect_header_refused(&p, hdr, 0, ACTL_ECORRUPT, needle);
    json_decref(hdr);
    free_pack(&p);
}

static void test_pack__refuses_a_damaged_prefix(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/road-1");
    char *bad = test_join(p.dir, "bad.pack");
    actl_adapter *a = NULL;
    unsigned char *b = malloc(p.len);
    assert_non_null(b);

    memcpy(b, p.bytes, p.len);
    b[0] = 'X';
    spit(bad, b, p.len);
    assert_err(actl__pack_load(bad, NULL, &a), ACTL_EFORMAT, "is not a pack (bad magic)");

    memcpy(b, p.bytes, p.len);
    b[8] = 2;
    spit(bad, b, p.len);
    assert_err(actl__pack_load(bad, NULL, &a), ACTL_EUNSUPPORTED, "has format 2");

    memcpy(b, p.bytes, p.len);
    b[12] ^= 1;
    spit(bad, b, p.len);
    assert_err(actl__pack_load(bad, NULL, &a), ACTL_ECORRUPT, "header checksum mismatch");

    memcpy(b, p.bytes, p.len);
    b[16] += 8;
    spit(bad, b, p.len);
    assert_int_not_equal(actl__pack_load(bad, NULL, &a), ACTL_OK);

    memcpy(b, p.bytes, p.len);
    b[20] = 1; /* a header length of 2^32 and more */
    spit(bad, b, p.len);
    assert_err(actl__pack_load(bad, NULL, &a), ACTL_EFORMAT, "does not fit the");
    assert_null(a);
    free(b);
    free(bad);
    free_pack(&p);
}

static void test_pack__digest_and_file_errors(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/road-1");
    actl_adapter *a = NULL;
    char wrong[65];
    memcpy(wrong, p.hex, 65);
    wrong[0] = wrong[0] == 'a' ? 'b' : 'a';
    assert_err(actl__pack_load(p.path, wrong, &a), ACTL_ECORRUPT, "SHA-256 is");
    assert_err(actl__pack_load(p.path, "ABC", &a), ACTL_EINVAL, "not a SHA-256");
    problems pr = {0};
    size_t count = 0;
    assert_ok(actl__pack_verify(p.path, wrong, collect, &pr, &count));
    assert_int_equal(count, 1);
    assert_true(any_has(&pr, wrong));

    char *missing = test_join(p.dir, "missing.pack");
    assert_err(actl__pack_load(missing, NULL, &a), ACTL_ENOTFOUND, "missing.pack");
    pr.n = 0;
    assert_ok(actl__pack_verify(missing, p.hex, collect, &pr, &count));
    assert_int_equal(count, 1);
    assert_true(any_has(&pr, "cannot open pack"));
    assert_null(a);

    /* objects_dir under a regular file cannot be made */
    char *file = test_join(p.dir, "plain");
    spit(file, "x", 1);
    char *objs = test_join(file, "objects");
    actl_adapter *fx = load_fixture(ADAPTERS "/hf-tiny/road-1");
    char hex[65];
    assert_err(actl__pack_write(fx, objs, hex, NULL, NULL), ACTL_EIO, "cannot create directory");
    actl_adapter_free(fx);
    free(objs);
    free(file);
    free(missing);
    free_pack(&p);
}

/* ---- the index, install, verify with the adapter -------------------------- */

static void test_pack__index_lists_what_the_header_says(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/lora-dora");
    json_t *hdr = header_of(p.bytes, p.len);
    json_t *ts = json_object_get(hdr, "tensors");
    actl__pack_index ix;
    assert_ok(actl__pack_index_read(p.path, p.hex, &ix));
    assert_int_equal(ix.n, json_array_size(ts));
    assert_int_equal(ix.size, p.len);
    assert_true(json_equal(ix.config, json_object_get(hdr, "config")));
    uint64_t raw = 0;
    for (size_t i = 0; i < ix.n; i++) {
        json_t *t = json_array_get(ts, i);
        const actl__pack_tensor *x = &ix.tensors[i];
        assert_string_equal(x->name, json_string_value(json_object_get(t, "name")));
        assert_string_equal(actl_dtype_name(x->dtype),
                            json_string_value(json_object_get(t, "dtype")));
        char *shape = json_dumps(json_object_get(t, "shape"), JSON_COMPACT);
        assert_string_equal(x->shape, shape);
        free(shape);
        assert_int_equal(x->raw, json_integer_value(json_object_get(t, "raw")));
        assert_int_equal(x->stored, json_integer_value(json_object_get(t, "stored")));
        assert_string_equal(x->sha256, json_string_value(json_object_get(t, "sha256")));
        raw += x->raw;
    }
    assert_int_equal(ix.raw, raw);
    actl__pack_index_free(&ix);
    assert_null(ix.header);

    /* the digest, when given, is checked; errors leave the index empty */
    char wrong[65];
    memcpy(wrong, p.hex, 65);
    wrong[63] = wrong[63] == '0' ? '1' : '0';
    assert_err(actl__pack_index_read(p.path, wrong, &ix), ACTL_ECORRUPT, "SHA-256 is");
    assert_int_equal(ix.n, 0);
    assert_null(ix.header);
    assert_err(actl__pack_index_read(p.path, "xyz", &ix), ACTL_EINVAL, "not a SHA-256");
    char *missing = test_join(p.dir, "missing.pack");
    assert_err(actl__pack_index_read(missing, NULL, &ix), ACTL_ENOTFOUND, "missing.pack");
    /* the header's checks are pack_load's: a tensor entry without its hash */
    json_object_del(json_array_get(ts, 1), "sha256");
    char *bad = test_join(p.dir, "bad.pack");
    write_with_header(bad, &p, hdr, 0);
    assert_err(actl__pack_index_read(bad, NULL, &ix), ACTL_EFORMAT, "has 7 keys, expected 8");
    assert_int_equal(ix.n, 0);
    free(bad);
    free(missing);
    json_decref(hdr);
    free_pack(&p);
}

static void test_pack__install_moves_shares_and_replaces(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/road-1");
    char *objects = test_join(p.dir, "store-objects");
    char *dest = actl__pack_path(objects, p.hex);
    char *src = test_join(p.dir, "download");
    /* moved in: directories made, the source gone */
    spit(src, p.bytes, p.len);
    assert_ok(actl__pack_install(objects, src, p.hex));
    assert_false(actl__exists(src));
    char sum[65];
    test_sha256sum(dest, sum);
    assert_string_equal(sum, p.hex);
    struct stat st1, st2;
    assert_int_equal(stat(dest, &st1), 0);
    /* the same bytes again: the source is dropped, the file in place kept */
    spit(src, p.bytes, p.len);
    assert_ok(actl__pack_install(objects, src, p.hex));
    assert_false(actl__exists(src));
    assert_int_equal(stat(dest, &st2), 0);
    assert_int_equal(st1.st_ino, st2.st_ino);
    /* a damaged file in place is replaced */
    p.bytes[p.len / 2] ^= 4;
    spit(dest, p.bytes, p.len);
    p.bytes[p.len / 2] ^= 4;
    spit(src, p.bytes, p.len);
    assert_ok(actl__pack_install(objects, src, p.hex));
    test_sha256sum(dest, sum);
    assert_string_equal(sum, p.hex);
    assert_false(actl__exists(src));
    assert_int_equal(test_count_files(objects), 1);
    assert_err(actl__pack_install(objects, src, "0123"), ACTL_EINVAL, "not a SHA-256");
    assert_err(actl__pack_install(objects, src, NULL), ACTL_EINVAL, "NULL");
    /* a missing source is an error, never a silent success */
    char other[65];
    memcpy(other, p.hex, 65);
    other[0] = other[0] == 'a' ? 'b' : 'a';
    assert_err(actl__pack_install(objects, src, other), ACTL_EIO, "cannot rename");
    free(src);
    free(dest);
    free(objects);
    free_pack(&p);
}

static void test_pack__verify_load_gives_the_adapter_only_when_clean(void **state)
{
    (void)state;
    packed p = make_pack(ADAPTERS "/hf-tiny/mos");
    actl_adapter *a = NULL, *orig = load_fixture(ADAPTERS "/hf-tiny/mos");
    problems pr = {0};
    size_t count = 9;
    assert_ok(actl__pack_verify_load(p.path, p.hex, collect, &pr, &count, &a));
    assert_int_equal(count, 0);
    assert_non_null(a);
    assert_same_adapter(orig, a);
    actl_adapter_free(a);
    a = NULL;

    /* a damaged tensor: reported, and no adapter */
    p.bytes[p.len - 1] ^= 0x40;
    char *bad = test_join(p.dir, "bad.pack");
    spit(bad, p.bytes, p.len);
    p.bytes[p.len - 1] ^= 0x40;
    assert_ok(actl__pack_verify_load(bad, NULL, collect, &pr, &count, &a));
    assert_int_equal(count, 1);
    assert_null(a);

    /* intact bytes that make no adapter are a problem too */
    json_t *hdr = header_of(p.bytes, p.len);
    json_object_set_new(json_object_get(hdr, "config"), "peft_type", json_string("NOPE"));
    write_with_header(bad, &p, hdr, 0);
    pr.n = 0;
    assert_ok(actl__pack_verify_load(bad, NULL, collect, &pr, &count, &a));
    assert_int_equal(count, 1);
    assert_true(any_has(&pr, "NOPE"));
    assert_null(a);
    /* without an adapter wanted, the same pack is clean: the config is not read */
    assert_ok(actl__pack_verify(bad, NULL, collect, &pr, &count));
    assert_int_equal(count, 0);
    json_decref(hdr);
    free(bad);
    actl_adapter_free(orig);
    free_pack(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack__round_trips_every_fixture),
        cmocka_unit_test(test_pack__same_adapter_twice_shares_one_file),
        cmocka_unit_test(test_pack__keeps_pattern_order_and_scales),
        cmocka_unit_test(test_pack__has_the_documented_layout),
        cmocka_unit_test(test_pack__detects_every_flipped_byte),
        cmocka_unit_test(test_pack__verify_reports_every_damaged_tensor),
        cmocka_unit_test(test_pack__refuses_truncated_packs),
        cmocka_unit_test(test_pack__refuses_frames_that_overlap_or_leave_the_file),
        cmocka_unit_test(test_pack__refuses_malformed_tensor_entries),
        cmocka_unit_test(test_pack__refuses_a_tensor_whose_hash_differs),
        cmocka_unit_test(test_pack__refuses_a_damaged_prefix),
        cmocka_unit_test(test_pack__digest_and_file_errors),
        cmocka_unit_test(test_pack__index_lists_what_the_header_says),
        cmocka_unit_test(test_pack__install_moves_shares_and_replaces),
        cmocka_unit_test(test_pack__verify_load_gives_the_adapter_only_when_clean),
        cmocka_unit_test_teardown(test_pack__bytes_do_not_depend_on_threads_or_the_writer,
                                  threads_reset),
        cmocka_unit_test_teardown(test_pack__frames_made_ahead_give_the_same_pack,
                                  threads_reset),
        cmocka_unit_test_teardown(
            test_pack__a_head_read_early_decodes_what_the_whole_pack_holds, threads_reset),
        cmocka_unit_test_teardown(test_pack__threads_report_damage_in_tensor_order,
                                  threads_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
