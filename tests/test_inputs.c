/* test_inputs.c: the inputs of merge and compose: "NAME[@V][:W]" / "DIR[:W]"
 * specs (weights, '@', ':' inside directory names, negative and malformed
 * numbers, the C locale), and actl_inputs: a PEFT directory, a store
 * reference pinned to the version it resolved to, a stack expanded into its
 * members with their weights multiplied, and every refusal leaving the list
 * as it was. */
#include "testutil.h"

#include <locale.h>
#include <math.h>

#include "internal.h"

#define ADAPTERS FIXTURES "/adapters/base-tiny"

/* ---- specs ------------------------------------------------------------------ */

static void expect_spec(const char *spec, const char *want_ref, double want_w)
{
    char *ref = NULL;
    double w = -12345;
    int rc = actl_input_spec_parse(spec, &ref, &w);
    if (rc != ACTL_OK)
        fail_msg("'%s': %s", spec, actl_errmsg());
    if (strcmp(ref, want_ref) != 0 || w != want_w)
        fail_msg("'%s': got ref '%s' weight %.17g, expected '%s' and %.17g", spec, ref, w,
                 want_ref, want_w);
    free(ref);
}

static void test_spec__weight_after_the_last_colon(void **state)
{
    (void)state;
    /* The expected weights are C literals: the compiler rounds them
     * correctly, as a correct decimal parser must. */
    expect_spec("math", "math", 1);
    expect_spec("math@3", "math@3", 1);
    expect_spec("math@3:0.5", "math@3", 0.5);
    expect_spec("math:2", "math", 2);
    expect_spec("math:+2", "math", 2);
    expect_spec("math:2.", "math", 2);
    expect_spec("math:.25", "math", 0.25);
    expect_spec("math:0.1", "math", 0.1);
    expect_spec("math:1e-3", "math", 1e-3);
    expect_spec("math:2.5E+2", "math", 250);
    expect_spec("math:0", "math", 0);
}

static void test_spec__negative_weights_are_weights(void **state)
{
    (void)state;
    expect_spec("math:-1", "math", -1);
    expect_spec("math@2:-0.25", "math@2", -0.25);
    expect_spec("./runs/a:-3.5e-1", "./runs/a", -0.35);
}

static void test_spec__colons_in_directory_names_stay_in_the_reference(void **state)
{
    (void)state;
    expect_spec("runs/2024-01-01T10:00", "runs/2024-01-01T10", 0); /* "00" is a number */
    expect_spec("runs/a:b/c", "runs/a:b/c", 1);
    expect_spec("runs/a:b/c:0.5", "runs/a:b/c", 0.5);
    expect_spec("dir:with:colons", "dir:with:colons", 1);
    expect_spec("dir:1:2", "dir:1", 2);
    expect_spec("/abs/x@y:z", "/abs/x@y:z", 1);
    expect_spec("/abs/x@y:3", "/abs/x@y", 3);
}

static void test_spec__malformed_numbers_are_part_of_the_reference(void **state)
{
    (void)state;
    static const char *const whole[] = {
        "x:", "x:1.2.3", "x:0x10", "x:inf", "x:-inf", "x:nan", "x:infinity", "x:1e999",
        "x:-1e999", "x: 1", "x:1 ", "x:1e", "x:1e+", "x:-", "x:+", "x:.", "x:1,5", "x:½",
        "x:0.5w", "x:--1",
    };
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        expect_spec(whole[i], whole[i], 1);
}

static void test_spec__empty_reference_is_EINVAL(void **state)
{
    (void)state;
    char *ref = (char *)"untouched";
    double w = 7;
    assert_err(actl_input_spec_parse(":0.5", &ref, &w), ACTL_EINVAL, "reference is empty");
    assert_null(ref);
    assert_true(w == 7);
    assert_err(actl_input_spec_parse("", &ref, &w), ACTL_EINVAL, "reference is empty");
    assert_null(ref);
    assert_err(actl_input_spec_parse(NULL, &ref, &w), ACTL_EINVAL, "NULL");
    assert_err(actl_input_spec_parse("x", NULL, &w), ACTL_EINVAL, "NULL");
    assert_err(actl_input_spec_parse("x", &ref, NULL), ACTL_EINVAL, "NULL");
    /* ':' alone: "" after it is no number, so the reference is ":" itself */
    expect_spec(":", ":", 1);
}

/* A process whose locale writes decimals with a comma still reads "0.5" as
 * a half (the CLI may one day call setlocale). When no such locale is
 * installed, one is compiled into a temporary directory with localedef;
 * skipped only when that fails too. */
static void test_spec__weights_are_read_in_the_c_locale(void **state)
{
    (void)state;
    char *dir = NULL;
    const char *got = setlocale(LC_NUMERIC, "de_DE.UTF-8");
    if (!got) {
        char cmd[4200];
        dir = test_tmpdir();
        snprintf(cmd, sizeof cmd,
                 "localedef -i de_DE -f UTF-8 '%s/de_DE.UTF-8' >/dev/null 2>&1", dir);
        if (system(cmd) == 0 && setenv("LOCPATH", dir, 1) == 0)
            got = setlocale(LC_NUMERIC, "de_DE.UTF-8");
    }
    if (!got) {
        if (dir)
            test_rmtree(dir);
        free(dir);
        print_message("SKIP: no comma-decimal locale, and localedef cannot make one\n");
        skip();
    }
    assert_true(strtod("0.5", NULL) != 0.5); /* the locale is really in force */
    expect_spec("math:0.5", "math", 0.5);
    expect_spec("math:-1.25e1", "math", -12.5);
    setlocale(LC_NUMERIC, "C");
    unsetenv("LOCPATH");
    if (dir)
        test_rmtree(dir);
    free(dir);
}

/* ---- inputs ----------------------------------------------------------------- */

static actl_adapter *fixture(const char *name) { return test_load_fixture("base-tiny", name); }

static actl_entries *add_fixture(actl_store *s, const char *fixture_name, const char *name)
{
    actl_adapter *a = fixture(fixture_name);
    actl_add_opts o = actl_add_default_opts();
    o.name = name;
    actl_entries *l = NULL;
    assert_ok(actl_store_add(s, a, &o, &l));
    actl_adapter_free(a);
    return l;
}

static void test_inputs__a_directory_is_loaded_as_given(void **state)
{
    (void)state;
    actl_inputs *l = NULL;
    assert_ok(actl_inputs_new(&l));
    size_t n = 99;
    assert_null(actl_inputs_items(l, &n));
    assert_int_equal(n, 0);
    /* no store needed for a directory */
    assert_ok(actl_inputs_add(l, NULL, ADAPTERS "/lora", 0.5));
    assert_ok(actl_inputs_add(l, NULL, ADAPTERS "/road-1/", -2));
    const actl_input *in = actl_inputs_items(l, &n);
    assert_int_equal(n, 2);
    assert_string_equal(in[0].ref, ADAPTERS "/lora");
    assert_string_equal(in[1].ref, ADAPTERS "/road-1/");
    assert_null(in[0].pack);
    assert_null(in[1].pack);
    assert_true(in[0].weight == 0.5 && in[1].weight == -2);
    actl_adapter *a = fixture("lora"), *b = fixture("road-1");
    test_assert_same_tensors(in[0].adapter, a);
    test_assert_same_tensors(in[1].adapter, b);
    actl_adapter_free(a);
    actl_adapter_free(b);
    actl_inputs_free(l);
    actl_inputs_free(NULL);
}

static void test_inputs__a_store_ref_is_pinned_to_its_version_and_pack(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    actl_entries *e1 = add_fixture(f.s, "lora", "math");
    actl_entries *e2 = add_fixture(f.s, "lora-bf16", "math");
    actl_inputs *l = NULL;
    assert_ok(actl_inputs_new(&l));
    assert_ok(actl_inputs_add(l, f.s, "math", 1));   /* newest: math@2 */
    assert_ok(actl_inputs_add(l, f.s, "math@1", 3)); /* pinned */
    size_t n;
    const actl_input *in = actl_inputs_items(l, &n);
    assert_int_equal(n, 2);
    assert_string_equal(in[0].ref, "math@2");
    assert_string_equal(in[1].ref, "math@1");
    assert_string_equal(in[0].pack, actl_entries_get(e2, 0)->pack);
    assert_string_equal(in[1].pack, actl_entries_get(e1, 0)->pack);
    assert_true(in[0].weight == 1 && in[1].weight == 3);
    actl_adapter *a = fixture("lora-bf16"), *b = fixture("lora");
    test_assert_same_tensors(in[0].adapter, a);
    test_assert_same_tensors(in[1].adapter, b);
    actl_adapter_free(a);
    actl_adapter_free(b);
    actl_inputs_free(l);
    actl_entries_free(e1);
    actl_entries_free(e2);
    test_fx_free(&f);
}

/* st = [a:0.5, dir lora-f16:1, b:-2], added with weight 3: three inputs with
 * weights 1.5, 3 and -6, the directory member named as it was given. */
static void test_inputs__a_stack_expands_into_its_members_with_weights_multiplied(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    actl_entries *ea = add_fixture(f.s, "lora", "a");
    actl_entries *eb = add_fixture(f.s, "road-2", "b");
    actl_inputs *src = NULL, *l = NULL;
    assert_ok(actl_inputs_new(&src));
    assert_ok(actl_inputs_add(src, f.s, "a", 0.5));
    assert_ok(actl_inputs_add(src, f.s, ADAPTERS "/lora-f16", 1));
    assert_ok(actl_inputs_add(src, f.s, "b@1", -2));
    size_t n;
    const actl_input *sin = actl_inputs_items(src, &n);
    actl_add_opts o = actl_add_default_opts();
    o.name = "st";
    actl_entries *es = NULL;
    assert_ok(actl_store_add_stack(f.s, sin, n, &o, &es));
    assert_int_equal(actl_entries_get(es, 0)->kind, ACTL_KIND_STACK);

    assert_ok(actl_inputs_new(&l));
    assert_ok(actl_inputs_add(l, f.s, ADAPTERS "/road-1", 1));
    assert_ok(actl_inputs_add(l, f.s, "st", 3));
    const actl_input *in = actl_inputs_items(l, &n);
    assert_int_equal(n, 4);
    assert_string_equal(in[1].ref, "a@1");
    assert_string_equal(in[2].ref, ADAPTERS "/lora-f16");
    assert_string_equal(in[3].ref, "b@1");
    assert_true(in[1].weight == 1.5);
    assert_true(in[2].weight == 3);
    assert_true(in[3].weight == -6);
    assert_string_equal(in[1].pack, actl_entries_get(ea, 0)->pack);
    assert_string_equal(in[3].pack, actl_entries_get(eb, 0)->pack);
    /* the directory member got a pack of its own in the store */
    assert_non_null(in[2].pack);
    assert_true(actl__is_hex(in[2].pack, 64));
    const char *fx_names[] = {"road-1", "lora", "lora-f16", "road-2"};
    for (size_t i = 0; i < 4; i++) {
        actl_adapter *want = fixture(fx_names[i]);
        test_assert_same_tensors(in[i].adapter, want);
        actl_adapter_free(want);
    }
    /* A stack of a stack is flat: its members are the first stack's members. */
    actl_inputs *l2 = NULL;
    assert_ok(actl_inputs_new(&l2));
    assert_ok(actl_inputs_add(l2, f.s, "st", 1));
    assert_ok(actl_inputs_add(l2, f.s, "a", 1));
    in = actl_inputs_items(l2, &n);
    o.name = "st2";
    actl_entries *es2 = NULL;
    assert_ok(actl_store_add_stack(f.s, in, n, &o, &es2));
    actl_inputs *l3 = NULL;
    assert_ok(actl_inputs_new(&l3));
    assert_ok(actl_inputs_add(l3, f.s, "st2", 2));
    in = actl_inputs_items(l3, &n);
    assert_int_equal(n, 4);
    assert_string_equal(in[0].ref, "a@1");
    assert_string_equal(in[3].ref, "a@1");
    assert_true(in[0].weight == 1 && in[1].weight == 2 && in[2].weight == -4 &&
                in[3].weight == 2);
    actl_inputs_free(l3);
    actl_inputs_free(l2);
    actl_entries_free(es2);
    actl_inputs_free(l);
    actl_inputs_free(src);
    actl_entries_free(es);
    actl_entries_free(ea);
    actl_entries_free(eb);
    test_fx_free(&f);
}

/* The list before a failing add is the list after it. */
static void assert_unchanged(actl_inputs *l, size_t n_before)
{
    size_t n;
    actl_inputs_items(l, &n);
    assert_int_equal(n, n_before);
}

static void test_inputs__missing_refs_are_named_and_change_nothing(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    actl_entries *e = add_fixture(f.s, "lora", "math");
    actl_inputs *l = NULL;
    assert_ok(actl_inputs_new(&l));
    assert_ok(actl_inputs_add(l, f.s, "math", 1));
    assert_err(actl_inputs_add(l, f.s, "nope", 1), ACTL_ENOTFOUND,
               "input 'nope': no such directory or stored adapter");
    assert_unchanged(l, 1);
    assert_err(actl_inputs_add(l, f.s, "math@7", 1), ACTL_ENOTFOUND, "'math@7'");
    assert_unchanged(l, 1);
    assert_err(actl_inputs_add(l, f.s, "./no/such/dir", 1), ACTL_ENOTFOUND,
               "input './no/such/dir' is neither a directory nor a stored adapter");
    assert_unchanged(l, 1);
    assert_err(actl_inputs_add(l, NULL, "math", 1), ACTL_ENOTFOUND,
               "input 'math': no such directory (and no store");
    assert_unchanged(l, 1);
    /* a directory that is not an adapter: the message names it */
    assert_err(actl_inputs_add(l, f.s, FIXTURES "/base-tiny", 1), ACTL_ENOTFOUND,
               FIXTURES "/base-tiny");
    assert_unchanged(l, 1);
    assert_err(actl_inputs_add(l, f.s, "math", NAN), ACTL_EINVAL, "'math': weight nan");
    assert_err(actl_inputs_add(l, f.s, "math", INFINITY), ACTL_EINVAL, "not a finite");
    assert_err(actl_inputs_add(l, f.s, "", 1), ACTL_EINVAL, "empty");
    assert_err(actl_inputs_add(NULL, f.s, "math", 1), ACTL_EINVAL, "NULL");
    assert_err(actl_inputs_add(l, f.s, NULL, 1), ACTL_EINVAL, "NULL");
    assert_err(actl_inputs_new(NULL), ACTL_EINVAL, "NULL");
    assert_unchanged(l, 1);
    actl_inputs_free(l);
    actl_entries_free(e);
    test_fx_free(&f);
}

/* A stack whose second member's pack is damaged: the add fails naming the
 * stack, the member and the pack, and the first member is not left behind. */
static void test_inputs__a_damaged_stack_member_adds_nothing(void **state)
{
    (void)state;
    test_fx f = test_fx_new();
    actl_entries *ea = add_fixture(f.s, "lora", "a");
    actl_entries *eb = add_fixture(f.s, "road-1", "b");
    actl_inputs *src = NULL, *l = NULL;
    assert_ok(actl_inputs_new(&src));
    assert_ok(actl_inputs_add(src, f.s, "a", 1));
    assert_ok(actl_inputs_add(src, f.s, "b", 1));
    size_t n;
    const actl_input *sin = actl_inputs_items(src, &n);
    actl_add_opts o = actl_add_default_opts();
    o.name = "st";
    assert_ok(actl_store_add_stack(f.s, sin, n, &o, NULL));
    char *obj = test_join(f.store, "objects");
    char *path = actl__pack_path(obj, actl_entries_get(eb, 0)->pack);
    size_t len;
    unsigned char *data = test_slurp(path, &len);
    data[len - 1] ^= 0x10;
    test_write_file(path, data, len);
    assert_ok(actl_inputs_new(&l));
    assert_ok(actl_inputs_add(l, f.s, "a", 1));
    assert_err(actl_inputs_add(l, f.s, "st", 1), ACTL_ECORRUPT, "'st@1' member 2 'b@1'");
    assert_unchanged(l, 1);
    /* and with the file gone while the stack still names it: a lost pack */
    assert_int_equal(unlink(path), 0);
    assert_err(actl_inputs_add(l, f.s, "st", 1), ACTL_ENOTFOUND, "cannot load 'st@1' member 2");
    assert_unchanged(l, 1);
    free(data);
    free(path);
    free(obj);
    actl_inputs_free(l);
    actl_inputs_free(src);
    actl_entries_free(ea);
    actl_entries_free(eb);
    test_fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec__weight_after_the_last_colon),
        cmocka_unit_test(test_spec__negative_weights_are_weights),
        cmocka_unit_test(test_spec__colons_in_directory_names_stay_in_the_reference),
        cmocka_unit_test(test_spec__malformed_numbers_are_part_of_the_reference),
        cmocka_unit_test(test_spec__empty_reference_is_EINVAL),
        cmocka_unit_test(test_spec__weights_are_read_in_the_c_locale),
        cmocka_unit_test(test_inputs__a_directory_is_loaded_as_given),
        cmocka_unit_test(test_inputs__a_store_ref_is_pinned_to_its_version_and_pack),
        cmocka_unit_test(test_inputs__a_stack_expands_into_its_members_with_weights_multiplied),
        cmocka_unit_test(test_inputs__missing_refs_are_named_and_change_nothing),
        cmocka_unit_test(test_inputs__a_damaged_stack_member_adds_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
