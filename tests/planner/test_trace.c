/* SPDX-License-Identifier: MIT */
/*
 * test_trace.c - the trace readers on the shared traces (ShareGPT, HumanEval,
 * arXiv-summarization, Azure 2023 code and conversation, Mooncake), skipped when ../shared is
 * absent, and on malformed input, which must be refused with an error rather than half-read.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "planner/trace.h"

static pl_trace_t *load_shared(const char *rel)
{
    char path[1024];
    if (!bt_test_shared_path(rel, path, sizeof path))
        return NULL;
    pl_trace_t *t = NULL;
    assert_int_equal(pl_trace_load(path, &t), BT_OK);
    return t;
}

static void test_trace_sharegpt_arxiv_humaneval(void **state)
{
    (void)state;
    char buf[1024];
    BT_TEST_NEED_SHARED("traces/sharegpt/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", buf);
    pl_trace_t *t = load_shared("traces/sharegpt/sharegpt_8k_filtered_stats_llama2_tokenizer.csv");
    assert_int_equal(t->n, 30731);
    assert_int_equal(t->prompt[0], 74);
    assert_int_equal(t->output[0], 918);
    assert_null(t->arrival_ms);
    double mp, mo, rate;
    pl_trace_stats(t, &mp, &mo, &rate);
    assert_true(mp > 100 && mp < 4000 && mo > 10 && rate == 0);
    pl_trace_destroy(t);
    t = load_shared("traces/arxiv-summarization/"
                    "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv");
    assert_int_equal(t->n, 28257);
    assert_int_equal(t->prompt[0], 3772);
    assert_int_equal(t->output[0], 54);
    pl_trace_destroy(t);
    t = load_shared("traces/humaneval/humaneval_lengths_llama2tok.csv");
    assert_int_equal(t->n, 164);
    assert_int_equal(t->prompt[0], 134);
    assert_int_equal(t->output[0], 60);
    pl_trace_destroy(t);
}

static void test_trace_azure_and_mooncake(void **state)
{
    (void)state;
    char buf[1024];
    BT_TEST_NEED_SHARED("traces/azure2023/AzureLLMInferenceTrace_conv.csv", buf);
    pl_trace_t *t = load_shared("traces/azure2023/AzureLLMInferenceTrace_conv.csv");
    assert_int_equal(t->n, 19366);
    assert_non_null(t->arrival_ms);
    assert_int_equal(t->prompt[0], 374);
    assert_int_equal(t->output[0], 44);
    /* 18:15:46.6805900 -> 18:15:50.9951690 */
    assert_true(fabs(t->arrival_ms[1] - 4314.579) < 1e-3);
    double mp, mo, rate;
    pl_trace_stats(t, &mp, &mo, &rate);
    assert_true(rate > 1 && rate < 100);
    pl_trace_destroy(t);
    t = load_shared("traces/azure2023/AzureLLMInferenceTrace_code.csv");
    assert_int_equal(t->n, 8819);
    pl_trace_destroy(t);
    t = load_shared("traces/mooncake/conversation_trace.jsonl");
    assert_int_equal(t->n, 12031);
    assert_string_equal(t->format, "jsonl");
    assert_int_equal(t->prompt[0], 6758);
    assert_int_equal(t->output[0], 500);
    assert_non_null(t->arrival_ms);
    pl_trace_destroy(t);
}

static int parse(const char *text, pl_trace_t **t)
{
    *t = NULL;
    return pl_trace_parse(text, strlen(text), "t", t);
}

static void test_trace_small_formats(void **state)
{
    (void)state;
    pl_trace_t *t;
    /* BOM, CRLF, spaces, unused columns, a blank line, no final newline, a zero output. */
    assert_int_equal(parse("\xef\xbb\xbfid, ContextTokens ,GeneratedTokens,timestamp_ms\r\n"
                           "a,10,5,1000\r\n\r\nb, 20 ,0,1500.5",
                           &t),
                     BT_OK);
    assert_int_equal(t->n, 2);
    assert_int_equal(t->prompt[1], 20);
    assert_int_equal(t->output[1], 1);
    assert_true(t->arrival_ms[0] == 0 && t->arrival_ms[1] == 500.5);
    pl_trace_destroy(t);
    /* Seconds in a plain TIMESTAMP column; dates across a month boundary. */
    assert_int_equal(parse("TIMESTAMP,input_length,output_length\n"
                           "2024-02-29 23:59:59.5,1,1\n2024-03-01 00:00:00.25,2,2\n",
                           &t),
                     BT_OK);
    assert_true(fabs(t->arrival_ms[1] - 750) < 1e-6);
    pl_trace_destroy(t);
    assert_int_equal(parse("{\"input_length\": 5, \"output_length\": 7, \"hash_ids\": [1]}\n"
                           "{\"input_length\": 6, \"output_length\": 8}\n",
                           &t),
                     BT_OK);
    assert_null(t->arrival_ms);
    assert_int_equal(t->output[1], 8);
    pl_trace_destroy(t);
}

static void test_trace_refuses_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",                                                        /* no requests */
        "a,b\n1,2\n",                                              /* no known columns */
        "num_prefill_tokens,num_decode_tokens\n",                  /* header only */
        "num_prefill_tokens,num_decode_tokens\n1,x\n",             /* not a number */
        "num_prefill_tokens,num_decode_tokens\n1.5,2\n",           /* not an integer */
        "num_prefill_tokens,num_decode_tokens\n-1,2\n",            /* negative */
        "num_prefill_tokens,num_decode_tokens\n1\n",               /* short row */
        "num_prefill_tokens,num_decode_tokens\n\"1\",2\n",         /* quoted */
        "ContextTokens,GeneratedTokens,TIMESTAMP\n1,1,5\n1,1,4\n", /* time goes back */
        "ContextTokens,GeneratedTokens,TIMESTAMP\n1,1,2023-13-01 00:00:00\n",
        "{\"input_length\": 1, \"output_length\": 1}\n{\"input_length\": 1,}\n",
        "{\"timestamp\": 1, \"input_length\": 1, \"output_length\": 1}\n"
        "{\"input_length\": 1, \"output_length\": 1}\n", /* timestamps on some lines only */
        "{\"input_length\": \"1\", \"output_length\": 1}\n",
        "{\"input_length\": 1e12, \"output_length\": 1}\n",
    };
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pl_trace_t *t;
        int st = parse(bad[i], &t);
        if (st == BT_OK)
            fail_msg("case %zu was accepted: %s", i, bad[i]);
        assert_null(t);
    }
    pl_trace_t *t = NULL;
    assert_int_equal(pl_trace_load("/nonexistent/trace.csv", &t), BT_ERR_IO);
    bt_log_set_level(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_sharegpt_arxiv_humaneval),
        cmocka_unit_test(test_trace_azure_and_mooncake),
        cmocka_unit_test(test_trace_small_formats),
        cmocka_unit_test(test_trace_refuses_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
