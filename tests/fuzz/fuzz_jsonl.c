/* fuzz_jsonl: what eval reads. The first byte picks what the rest is:
 *   0  a requests file (JSONL: id, adapter, prompt or prompt_ids,
 *      max_tokens, temperature, stop, answer, scorer, continuation);
 *   1  a dataset in the LLM-Adapters format (a JSON array of records);
 *   2  a model's response, a NUL, then an answer: scored by every rule. */
#include "fuzz.h"

static void problem(const char *message, void *ctx)
{
    (void)ctx;
    if (!message || !*message)
        abort(); /* every reported problem says what it is */
}

static void score_all(const char *response, const char *answer)
{
    for (int s = ACTL_SCORER_NONE; s <= ACTL_SCORER_CONTAINS; s++) {
        char *pred = NULL;
        int correct = 0;
        if (actl_score((actl_scorer)s, response, answer, &pred, &correct) == ACTL_OK)
            free(pred);
    }
    free(actl_eval_answer_text(response));
    free(actl_eval_prompt(response));
}

static void use(const actl_eval_reqs *l)
{
    for (size_t i = 0; i < actl_eval_reqs_count(l); i++) {
        const actl_eval_req *r = actl_eval_reqs_get(l, i);
        if (!r || !r->id)
            abort();
        if (r->answer)
            score_all(r->prompt ? r->prompt : "", r->answer);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    actl_eval_reqs *l = NULL;
    switch (data[0] % 3) {
    case 0:
        if (actl_eval_reqs_jsonl(fuzz_file("requests.jsonl", d, n), problem, NULL, &l) ==
            ACTL_OK) {
            use(l);
            actl_eval_reqs_free(l);
        }
        break;
    case 1: {
        static const char *const adapters[] = {"none", "lora@2:0.5"};
        if (actl_eval_reqs_dataset(fuzz_file("test.json", d, n), adapters, 2, 0, &l) ==
            ACTL_OK) {
            use(l);
            actl_eval_reqs_free(l);
        }
        break;
    }
    default: {
        const uint8_t *nul = memchr(d, 0, n);
        size_t rl = nul ? (size_t)(nul - d) : n;
        char *response = fuzz_str(d, rl);
        char *answer = fuzz_str(nul ? nul + 1 : d, nul ? n - rl - 1 : 0);
        score_all(response, answer);
        free(response);
        free(answer);
        break;
    }
    }
    return 0;
}
