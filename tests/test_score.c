/* test_score.c: LLM-Adapters' scoring rules, their prompt template, and the
 * request lists of an eval run (JSONL and datasets). Every expected number
 * and prediction below was checked against Python's
 * re.findall(r'-?\d+\.?\d*', s.replace(',', '')) and float(), the code
 * LLM-Adapters runs. */
#include "testutil.h"

/* Scores and checks the prediction text (NULL: none) and verdict. */
static void check_score(actl_scorer s, const char *response, const char *answer,
                        const char *want_pred, int want_correct)
{
    char *pred = (char *)"unset";
    int correct = -1;
    assert_ok(actl_score(s, response, answer, &pred, &correct));
    if (want_pred) {
        if (!pred)
            fail_msg("'%s': expected prediction '%s', got none", response, want_pred);
        assert_string_equal(pred, want_pred);
    } else if (pred) {
        fail_msg("'%s': expected no prediction, got '%s'", response, pred);
    }
    if (correct != want_correct)
        fail_msg("'%s' vs '%s': expected correct=%d, got %d", response, answer, want_correct,
                 correct);
    free(pred);
}

static void test_number__acceptance_edge_cases(void **state)
{
    (void)state;
    check_score(ACTL_SCORER_NUMBER, "1,234.5", "1234.5", "1234.5", 1);
    check_score(ACTL_SCORER_NUMBER, "5-3", "-3", "-3", 1);
    check_score(ACTL_SCORER_NUMBER, "5-3", "2", "-3", 0);
    check_score(ACTL_SCORER_NUMBER, "4.", "4", "4.", 1);
    check_score(ACTL_SCORER_NUMBER, "1.5.3", "3", "3", 1);
    check_score(ACTL_SCORER_NUMBER, "1.5.3", "1.5", "3", 0);
    check_score(ACTL_SCORER_NUMBER, "no number here", "0", NULL, 0);
    check_score(ACTL_SCORER_NUMBER, "", "0", NULL, 0);
}

static void test_number__tolerance_is_one_thousandth_inclusive(void **state)
{
    (void)state;
    /* |2.001 - 2| = 0.00099999... in doubles, |2.0011 - 2| = 0.0010999... */
    check_score(ACTL_SCORER_NUMBER, "about 2.001", "2", "2.001", 1);
    check_score(ACTL_SCORER_NUMBER, "about 2.0011", "2", "2.0011", 0);
    check_score(ACTL_SCORER_NUMBER, "1.9995", "2.0", "1.9995", 1);
    check_score(ACTL_SCORER_NUMBER, "0.6666", "0.6666666666666666", "0.6666", 1);
    check_score(ACTL_SCORER_NUMBER, "0.666", "0.6666666666666666", "0.666", 1);
    check_score(ACTL_SCORER_NUMBER, "0.665", "0.6666666666666666", "0.665", 0);
}

static void test_number__takes_the_last_greedy_match(void **state)
{
    (void)state;
    check_score(ACTL_SCORER_NUMBER, "12 + 30 = 42.0 apples", "42", "42.0", 1);
    check_score(ACTL_SCORER_NUMBER, "The answer is 15.", " 15.0 ", "15.", 1);
    check_score(ACTL_SCORER_NUMBER, "--7 apples", "-7", "-7", 1);
    /* "-" needs a digit right after it, "." cannot start a match */
    check_score(ACTL_SCORER_NUMBER, "x-.5 and 3-", "3", "3", 1);
    /* no exponents: "1e5" is "1" then "5" */
    check_score(ACTL_SCORER_NUMBER, "1e5", "5", "5", 1);
    check_score(ACTL_SCORER_NUMBER, "1,000,000 people", "1000000", "1000000", 1);
    check_score(ACTL_SCORER_NUMBER, "-0", "0", "-0", 1);
}

static void test_number__answer_that_is_not_a_number_is_refused(void **state)
{
    (void)state;
    char *pred = NULL;
    int correct = 0;
    assert_err(actl_score(ACTL_SCORER_NUMBER, "5", "five", &pred, &correct), ACTL_EINVAL,
               "'five' is not a number");
    assert_err(actl_score(ACTL_SCORER_NUMBER, "5", "0x5", &pred, &correct), ACTL_EINVAL,
               "not a number");
    assert_err(actl_score(ACTL_SCORER_NUMBER, "5", "inf", &pred, &correct), ACTL_EINVAL,
               "not a number");
    assert_null(pred);
}

static void test_choice__first_capital_a_to_e_anywhere(void **state)
{
    (void)state;
    check_score(ACTL_SCORER_CHOICE, "Bob has (C)", "B", "B", 1);
    check_score(ACTL_SCORER_CHOICE, "Bob has (C)", "C", "B", 0);
    check_score(ACTL_SCORER_CHOICE, "  the answer is (d) or D) 5", "D", "D", 1);
    check_score(ACTL_SCORER_CHOICE, "the answer is e", "E", NULL, 0);
    check_score(ACTL_SCORER_CHOICE, "", "A", NULL, 0);
}

static void test_exact_and_contains(void **state)
{
    (void)state;
    check_score(ACTL_SCORER_EXACT, " \t Paris\n", "Paris ", "Paris", 1);
    check_score(ACTL_SCORER_EXACT, "Paris, France", "Paris", "Paris, France", 0);
    check_score(ACTL_SCORER_EXACT, "paris", "Paris", "paris", 0);
    check_score(ACTL_SCORER_EXACT, "   ", "", "", 1);
    check_score(ACTL_SCORER_CONTAINS, "it is Paris, France", "Paris", "Paris", 1);
    check_score(ACTL_SCORER_CONTAINS, "it is paris", "Paris", NULL, 0);
}

static void test_score__refuses_none_and_null(void **state)
{
    (void)state;
    char *pred = NULL;
    int correct = 0;
    assert_err(actl_score(ACTL_SCORER_NONE, "x", "x", &pred, &correct), ACTL_EINVAL,
               "does not score");
    assert_err(actl_score((actl_scorer)42, "x", "x", &pred, &correct), ACTL_EINVAL,
               "does not score");
    assert_err(actl_score(ACTL_SCORER_EXACT, NULL, "x", &pred, &correct), ACTL_EINVAL,
               "NULL");
    assert_null(pred);
}

static void test_scorer_names__round_trip_and_unknown(void **state)
{
    (void)state;
    const char *names[] = {"none", "number", "choice", "exact", "contains"};
    for (int i = 0; i < 5; i++) {
        actl_scorer s;
        assert_string_equal(actl_scorer_name((actl_scorer)i), names[i]);
        assert_ok(actl_scorer_parse(names[i], &s));
        assert_int_equal(s, i);
    }
    assert_null(actl_scorer_name((actl_scorer)5));
    actl_scorer s;
    assert_err(actl_scorer_parse("Number", &s), ACTL_EINVAL, "unknown scorer 'Number'");
}

static void test_prompt__is_llm_adapters_template_byte_for_byte(void **state)
{
    (void)state;
    char *p = actl_eval_prompt(" How many? ");
    assert_non_null(p);
    assert_string_equal(p, "Below is an instruction that describes a task. Write a response "
                           "that appropriately completes the request. \n\n"
                           "                ### Instruction:\n"
                           "                 How many? \n\n"
                           "                ### Response:\n"
                           "                ");
    free(p);
    assert_null(actl_eval_prompt(NULL));
}

/* ---- request files ---------------------------------------------------- */

static char *write_tmp(const char *dir, const char *name, const char *text)
{
    char *path = malloc(4200);
    snprintf(path, 4200, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

typedef struct {
    char msgs[32][512];
    int n;
} problems;

static void collect(const char *message, void *ctx)
{
    problems *p = ctx;
    if (p->n < 32)
        snprintf(p->msgs[p->n], sizeof p->msgs[0], "%s", message);
    p->n++;
}

static void test_jsonl__reads_every_field_and_defaults(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = write_tmp(
        dir, "r.jsonl",
        "{\"id\": \"a\", \"adapter\": \"math-lora@2:0.5\", \"prompt\": \"2+2=\", "
        "\"max_tokens\": 8, \"temperature\": 0.7, \"top_p\": 0.9, \"seed\": 42, "
        "\"stop\": \"\\n\", \"answer\": 4, \"extra\": true}\n"
        "\n"
        "   \r\n"
        "{\"adapter\": [\"x\", \"y\"], \"prompt_ids\": [1, 5, 7], \"answer\": \"C\"}\r\n"
        "{\"id\": 7, \"adapter\": null, \"prompt\": \"Q\", \"answer\": \"Paris\", "
        "\"stop\": [\"a\", \"bc\"]}\n"
        "{\"id\": \"c\", \"adapter\": \"none\", \"prompt\": \"Q\", \"continuation\": \" A\"}\n"
        "{\"id\": \"d\", \"prompt\": \"\", \"continuation_ids\": [3, 0]}\n"
        "{\"id\": \"e\", \"prompt\": \"Q\", \"answer\": \"7\", \"scorer\": \"contains\"}");
    problems pr = {0};
    actl_eval_reqs *l = NULL;
    assert_ok(actl_eval_reqs_jsonl(path, collect, &pr, &l));
    assert_int_equal(pr.n, 0);
    assert_int_equal(actl_eval_reqs_count(l), 6);

    const actl_eval_req *q = actl_eval_reqs_get(l, 0);
    assert_string_equal(q->id, "a");
    assert_int_equal(q->n_adapter, 1);
    assert_string_equal(q->adapter[0], "math-lora@2:0.5");
    assert_string_equal(q->prompt, "2+2=");
    assert_null(q->prompt_ids);
    assert_int_equal(q->max_tokens, 8);
    assert_true(q->temperature == 0.7 && q->top_p == 0.9 && q->seed == 42);
    assert_int_equal(q->n_stop, 1);
    assert_string_equal(q->stop[0], "\n");
    assert_string_equal(q->answer, "4");
    assert_int_equal(q->scorer, ACTL_SCORER_NUMBER);
    assert_int_equal(q->line, 1);

    q = actl_eval_reqs_get(l, 1);
    assert_string_equal(q->id, "line-4");
    assert_int_equal(q->line, 4);
    assert_int_equal(q->n_adapter, 2);
    assert_string_equal(q->adapter[1], "y");
    assert_null(q->prompt);
    assert_int_equal(q->n_prompt_ids, 3);
    assert_int_equal(q->prompt_ids[2], 7);
    assert_int_equal(q->max_tokens, -1);
    assert_true(q->temperature == 0 && q->top_p == 1 && q->seed == 0);
    assert_int_equal(q->scorer, ACTL_SCORER_CHOICE);

    q = actl_eval_reqs_get(l, 2);
    assert_string_equal(q->id, "7");
    assert_int_equal(q->n_adapter, 0);
    assert_int_equal(q->n_stop, 2);
    assert_string_equal(q->stop[1], "bc");
    assert_int_equal(q->scorer, ACTL_SCORER_EXACT);

    q = actl_eval_reqs_get(l, 3);
    assert_int_equal(q->n_adapter, 0);
    assert_null(q->answer);
    assert_int_equal(q->scorer, ACTL_SCORER_NONE);
    assert_string_equal(q->continuation, " A");

    q = actl_eval_reqs_get(l, 4);
    assert_string_equal(q->prompt, "");
    assert_int_equal(q->n_continuation_ids, 2);
    assert_int_equal(q->continuation_ids[0], 3);

    q = actl_eval_reqs_get(l, 5);
    assert_int_equal(q->scorer, ACTL_SCORER_CONTAINS);
    assert_int_equal(q->line, 8);
    assert_null(actl_eval_reqs_get(l, 6));

    actl_eval_reqs_free(l);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_jsonl__bad_lines_are_reported_and_the_rest_kept(void **state)
{
    (void)state;
    static const struct {
        const char *line, *what;
    } bad[] = {
        {"{\"id\": \"x\", \"prompt\": ", "invalid JSON"},
        {"[1, 2]", "not a JSON object"},
        {"{\"id\": true, \"prompt\": \"p\"}", "'id' must be a string or a number"},
        {"{\"id\": \"b1\"}", "neither 'prompt' nor 'prompt_ids'"},
        {"{\"id\": \"b2\", \"prompt\": \"p\", \"prompt_ids\": [1]}", "both 'prompt'"},
        {"{\"id\": \"b3\", \"prompt_ids\": [1, -2]}", "'prompt_ids'[1] is negative"},
        {"{\"id\": \"b4\", \"prompt_ids\": []}", "'prompt_ids' is empty"},
        {"{\"id\": \"b5\", \"prompt\": 3}", "'prompt' must be a string"},
        {"{\"id\": \"b6\", \"prompt\": \"p\", \"answer\": \"1\", \"scorer\": \"fuzzy\"}",
         "unknown scorer 'fuzzy'"},
        {"{\"id\": \"b7\", \"prompt\": \"p\", \"answer\": \"x\", \"scorer\": \"number\"}",
         "answer 'x' is not a number"},
        {"{\"id\": \"b8\", \"prompt\": \"p\", \"scorer\": \"exact\"}", "without an 'answer'"},
        {"{\"id\": \"b9\", \"prompt\": \"p\", \"max_tokens\": 2.5}", "'max_tokens' must be"},
        {"{\"id\": \"b10\", \"prompt\": \"p\", \"temperature\": -1}", "'temperature' must be"},
        {"{\"id\": \"b11\", \"prompt\": \"p\", \"top_p\": 0}", "'top_p' must be"},
        {"{\"id\": \"b12\", \"prompt\": \"p\", \"stop\": [\"a\", 1]}", "'stop' must be"},
        {"{\"id\": \"b13\", \"prompt\": \"p\", \"adapter\": 5}", "'adapter' must be"},
        {"{\"id\": \"b14\", \"prompt\": \"p\", \"answer\": \"1\", \"continuation\": \"x\"}",
         "both 'answer' and a continuation"},
        {"{\"id\": \"ok\", \"prompt\": \"again\"}", "duplicate id 'ok'"},
        {"{\"id\": \"b15\", \"prompt\": \"p\", \"id\": \"b16\"}", "invalid JSON"},
        {"{\"id\": \"b17\", \"prompt\": \"p\", \"seed\": -1}", "'seed' must be"},
    };
    size_t nbad = sizeof bad / sizeof bad[0];
    char text[8192] = "{\"id\": \"ok\", \"prompt\": \"first\"}\n";
    for (size_t i = 0; i < nbad; i++) {
        strcat(text, bad[i].line);
        strcat(text, "\n");
    }
    strcat(text, "{\"id\": \"ok2\", \"prompt\": \"last\"}\n");
    char *dir = test_tmpdir();
    char *path = write_tmp(dir, "r.jsonl", text);
    problems pr = {0};
    actl_eval_reqs *l = NULL;
    assert_ok(actl_eval_reqs_jsonl(path, collect, &pr, &l));
    assert_int_equal(pr.n, (int)nbad);
    for (size_t i = 0; i < nbad; i++) {
        char want[4300];
        snprintf(want, sizeof want, "'%s' line %zu: ", path, i + 2);
        if (strncmp(pr.msgs[i], want, strlen(want)) != 0 || !strstr(pr.msgs[i], bad[i].what))
            fail_msg("line %zu: expected \"%s...%s\", got \"%s\"", i + 2, want, bad[i].what,
                     pr.msgs[i]);
    }
    assert_int_equal(actl_eval_reqs_count(l), 2);
    assert_string_equal(actl_eval_reqs_get(l, 0)->prompt, "first");
    assert_string_equal(actl_eval_reqs_get(l, 1)->prompt, "last");
    assert_int_equal(actl_eval_reqs_get(l, 1)->line, (int64_t)nbad + 2);
    actl_eval_reqs_free(l);

    /* a NULL callback skips the same lines silently */
    assert_ok(actl_eval_reqs_jsonl(path, NULL, NULL, &l));
    assert_int_equal(actl_eval_reqs_count(l), 2);
    actl_eval_reqs_free(l);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_jsonl__unreadable_or_nothing_usable_is_an_error(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *empty = write_tmp(dir, "empty.jsonl", "\n  \n");
    char *allbad = write_tmp(dir, "bad.jsonl", "{\"prompt\": 1}\nnope\n");
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/missing.jsonl", dir);
    problems pr = {0};
    actl_eval_reqs *l = (actl_eval_reqs *)1;
    assert_err(actl_eval_reqs_jsonl(empty, collect, &pr, &l), ACTL_EFORMAT,
               "no usable request (0 bad lines)");
    assert_null(l);
    assert_err(actl_eval_reqs_jsonl(allbad, collect, &pr, &l), ACTL_EFORMAT,
               "no usable request (2 bad lines)");
    assert_int_equal(pr.n, 2);
    int rc = actl_eval_reqs_jsonl(missing, collect, &pr, &l);
    assert_true(rc != ACTL_OK);
    assert_non_null(strstr(actl_errmsg(), "missing.jsonl"));
    rc = actl_eval_reqs_jsonl(dir, collect, &pr, &l); /* a directory */
    assert_true(rc != ACTL_OK);
    assert_non_null(strstr(actl_errmsg(), dir));
    assert_err(actl_eval_reqs_jsonl(NULL, NULL, NULL, &l), ACTL_EINVAL, "NULL");
    test_rmtree(dir);
    free(empty);
    free(allbad);
    free(dir);
}

/* ---- datasets --------------------------------------------------------- */

static void test_dataset__one_request_per_record_and_adapter(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *path = write_tmp(
        dir, "test.json",
        "[{\"instruction\": \" caf\\u00e9 has 3 \", \"input\": \"\", \"output\": \"x\", "
        "\"answer\": \"15.0\"},\n"
        " {\"instruction\": \"Pick (A) or (B)\", \"input\": \"\", \"output\": \"\", "
        "\"answer\": \"B\"},\n"
        " {\"instruction\": \"n\", \"input\": \"\", \"output\": \"\", \"answer\": 2.5}]");
    const char *ads[] = {"none", "math-lora"};
    actl_eval_reqs *l = NULL;
    assert_ok(actl_eval_reqs_dataset(path, ads, 2, 0, &l));
    assert_int_equal(actl_eval_reqs_count(l), 6);
    const char *ids[] = {"none:0", "math-lora:0", "none:1", "math-lora:1", "none:2",
                         "math-lora:2"};
    for (size_t i = 0; i < 6; i++) {
        const actl_eval_req *q = actl_eval_reqs_get(l, i);
        assert_string_equal(q->id, ids[i]);
        assert_int_equal(q->line, (int64_t)(i / 2) + 1);
        assert_int_equal(q->n_adapter, i % 2);
        if (i % 2)
            assert_string_equal(q->adapter[0], "math-lora");
        assert_int_equal(q->max_tokens, -1);
        assert_true(q->temperature == 0 && q->top_p == 1);
        assert_null(q->continuation);
    }
    const actl_eval_req *q = actl_eval_reqs_get(l, 0);
    assert_string_equal(q->prompt, "Below is an instruction that describes a task. Write a "
                                   "response that appropriately completes the request. \n\n"
                                   "                ### Instruction:\n"
                                   "                 caf\xc3\xa9 has 3 \n\n"
                                   "                ### Response:\n"
                                   "                ");
    assert_string_equal(q->answer, "15.0");
    assert_int_equal(q->scorer, ACTL_SCORER_NUMBER);
    assert_string_equal(actl_eval_reqs_get(l, 3)->answer, "B");
    assert_int_equal(actl_eval_reqs_get(l, 3)->scorer, ACTL_SCORER_CHOICE);
    assert_string_equal(actl_eval_reqs_get(l, 5)->answer, "2.5");
    actl_eval_reqs_free(l);

    const char *one[] = {"dir/ad"};
    assert_ok(actl_eval_reqs_dataset(path, one, 1, 2, &l));
    assert_int_equal(actl_eval_reqs_count(l), 2);
    assert_string_equal(actl_eval_reqs_get(l, 1)->id, "dir/ad:1");
    actl_eval_reqs_free(l);
    assert_ok(actl_eval_reqs_dataset(path, one, 1, 100, &l));
    assert_int_equal(actl_eval_reqs_count(l), 3);
    actl_eval_reqs_free(l);
    test_rmtree(dir);
    free(path);
    free(dir);
}

static void test_dataset__refuses_bad_files_and_arguments(void **state)
{
    (void)state;
    char *dir = test_tmpdir();
    char *obj = write_tmp(dir, "obj.json", "{\"instruction\": \"x\", \"answer\": \"1\"}");
    char *noins = write_tmp(dir, "noins.json", "[{\"instruction\": \"x\", \"answer\": \"1\"}, "
                                               "{\"answer\": \"1\"}]");
    char *badans = write_tmp(dir, "badans.json", "[{\"instruction\": \"x\", \"answer\": \"F\"}]");
    char *noans = write_tmp(dir, "noans.json", "[{\"instruction\": \"x\", \"answer\": null}]");
    char *empty = write_tmp(dir, "empty.json", "[]");
    char *broken = write_tmp(dir, "broken.json", "[{\"instruction\": ");
    const char *ads[] = {"a", "a"};
    actl_eval_reqs *l = NULL;
    assert_err(actl_eval_reqs_dataset(obj, ads, 1, 0, &l), ACTL_EFORMAT, "not a JSON array");
    assert_err(actl_eval_reqs_dataset(noins, ads, 1, 0, &l), ACTL_EFORMAT,
               "record 1: no 'instruction'");
    assert_err(actl_eval_reqs_dataset(badans, ads, 1, 0, &l), ACTL_EFORMAT,
               "answer 'F' is neither a letter A-E nor a number");
    assert_err(actl_eval_reqs_dataset(noans, ads, 1, 0, &l), ACTL_EFORMAT, "no 'answer'");
    assert_err(actl_eval_reqs_dataset(empty, ads, 1, 0, &l), ACTL_EFORMAT, "no record");
    assert_err(actl_eval_reqs_dataset(broken, ads, 1, 0, &l), ACTL_EFORMAT, "invalid JSON");
    assert_err(actl_eval_reqs_dataset(obj, ads, 2, 0, &l), ACTL_EINVAL, "named twice");
    assert_err(actl_eval_reqs_dataset(obj, ads, 0, 0, &l), ACTL_EINVAL, "no adapter");
    const char *blank[] = {""};
    assert_err(actl_eval_reqs_dataset(obj, blank, 1, 0, &l), ACTL_EINVAL, "empty");
    assert_null(l);
    test_rmtree(dir);
    free(obj);
    free(noins);
    free(badans);
    free(noans);
    free(empty);
    free(broken);
    free(dir);
}

static void test_dataset__multiarith_and_aqua(void **state)
{
    (void)state;
    const char *ma = SHARED_DATA "/math/MultiArith/test.json";
    const char *aq = SHARED_DATA "/math/AQuA/test.json";
    REQUIRE_SHARED(ma);
    REQUIRE_SHARED(aq);
    const char *ads[] = {"none", "lora", "road"};
    actl_eval_reqs *l = NULL;
    /* 600 records (data README), the first one's label "15.0" and text read
     * with Python's json module */
    assert_ok(actl_eval_reqs_dataset(ma, ads, 3, 0, &l));
    assert_int_equal(actl_eval_reqs_count(l), 1800);
    const actl_eval_req *q = actl_eval_reqs_get(l, 1);
    assert_string_equal(q->id, "lora:0");
    assert_string_equal(q->answer, "15.0");
    char *want = actl_eval_prompt(" At the schools book fair Sam bought 13 adventure books and "
                                  "17 mystery books. If 15 of the books were used, how many new "
                                  "books did he buy? ");
    assert_string_equal(q->prompt, want);
    free(want);
    assert_string_equal(actl_eval_reqs_get(l, 1799)->id, "road:599");
    assert_string_equal(actl_eval_reqs_get(l, 1799)->answer, "11.0");
    for (size_t i = 0; i < 1800; i++)
        assert_int_equal(actl_eval_reqs_get(l, i)->scorer, ACTL_SCORER_NUMBER);
    actl_eval_reqs_free(l);

    assert_ok(actl_eval_reqs_dataset(aq, ads, 1, 0, &l));
    assert_int_equal(actl_eval_reqs_count(l), 254);
    /* label counts from Python: A 63, B 58, C 46, D 53, E 34 */
    int count[5] = {0};
    for (size_t i = 0; i < 254; i++) {
        q = actl_eval_reqs_get(l, i);
        assert_int_equal(q->scorer, ACTL_SCORER_CHOICE);
        assert_int_equal(strlen(q->answer), 1);
        count[q->answer[0] - 'A']++;
    }
    assert_int_equal(count[0], 63);
    assert_int_equal(count[1], 58);
    assert_int_equal(count[2], 46);
    assert_int_equal(count[3], 53);
    assert_int_equal(count[4], 34);
    assert_string_equal(actl_eval_reqs_get(l, 0)->answer, "A");
    actl_eval_reqs_free(l);

    assert_ok(actl_eval_reqs_dataset(aq, ads, 2, 30, &l));
    assert_int_equal(actl_eval_reqs_count(l), 60);
    actl_eval_reqs_free(l);
}

/* What is scored stops at a "### Response:" the model wrote itself, as
 * LLM-Adapters' split("### Response:")[1] does: the answer after it is not
 * the model's answer to this instruction. */
static void test_score__answer_text_stops_at_the_models_own_response(void **state)
{
    (void)state;
    char *t = actl_eval_answer_text(" 5 apples.\n\n### Instruction:\n 7 pears\n\n### Response:\n 9");
    assert_non_null(t);
    assert_string_equal(t, " 5 apples.\n\n### Instruction:\n 7 pears\n\n");
    char *pred = NULL;
    int ok = -1;
    assert_ok(actl_score(ACTL_SCORER_NUMBER, t, "7", &pred, &ok));
    assert_string_equal(pred, "7");
    assert_int_equal(ok, 1);
    free(pred);
    free(t);
    t = actl_eval_answer_text("no marker: 12");
    assert_string_equal(t, "no marker: 12");
    free(t);
    t = actl_eval_answer_text(NULL);
    assert_string_equal(t, "");
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_score__answer_text_stops_at_the_models_own_response),
        cmocka_unit_test(test_number__acceptance_edge_cases),
        cmocka_unit_test(test_number__tolerance_is_one_thousandth_inclusive),
        cmocka_unit_test(test_number__takes_the_last_greedy_match),
        cmocka_unit_test(test_number__answer_that_is_not_a_number_is_refused),
        cmocka_unit_test(test_choice__first_capital_a_to_e_anywhere),
        cmocka_unit_test(test_exact_and_contains),
        cmocka_unit_test(test_score__refuses_none_and_null),
        cmocka_unit_test(test_scorer_names__round_trip_and_unknown),
        cmocka_unit_test(test_prompt__is_llm_adapters_template_byte_for_byte),
        cmocka_unit_test(test_jsonl__reads_every_field_and_defaults),
        cmocka_unit_test(test_jsonl__bad_lines_are_reported_and_the_rest_kept),
        cmocka_unit_test(test_jsonl__unreadable_or_nothing_usable_is_an_error),
        cmocka_unit_test(test_dataset__one_request_per_record_and_adapter),
        cmocka_unit_test(test_dataset__refuses_bad_files_and_arguments),
        cmocka_unit_test(test_dataset__multiarith_and_aqua),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
