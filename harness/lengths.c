/* SPDX-License-Identifier: MIT */
/*
 * lengths.c - synthetic and trace request lengths, and DistServe's application presets.
 *
 * The presets' SLOs are DistServe's (Table 1): chatbot on ShareGPT with OPT-13B's 0.25 s TTFT /
 * 0.1 s TPOT, code completion on HumanEval 0.125 s / 0.2 s, summarization 15 s / 0.15 s (its
 * LongBench set; the shared folder holds arXiv summarization lengths, the same kind of long
 * prompt and short output).
 */
#include "lengths.h"

#include <math.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "planner/rng.h"

static const bb_preset_t presets[] = {
    {"chatbot", "sharegpt/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", 250, 100,
     "ShareGPT conversations, DistServe chatbot SLOs (OPT-13B)"},
    {"code", "humaneval/humaneval_lengths_llama2tok.csv", 125, 200,
     "HumanEval code completion, DistServe SLOs"},
    {"summarization",
     "arxiv-summarization/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", 15000, 150,
     "arXiv summarization, DistServe summarization SLOs"},
};

const bb_preset_t *bb_preset_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(name, presets[i].name) == 0)
            return &presets[i];
    return NULL;
}

static int32_t draw(pl_rng_t *r, const bb_lengths_params_t *p, int32_t len, int32_t max)
{
    if (p->kind == BB_LEN_UNIFORM)
        return len + (int32_t)pl_rng_below(r, (uint64_t)(max - len) + 1);
    if (p->kind == BB_LEN_LOGNORMAL) {
        double x = (double)len * exp(p->sigma * pl_rng_normal(r));
        return x < 1 ? 1 : x > 1e8 ? 100000000 : (int32_t)lround(x);
    }
    return len;
}

static int check(const bb_lengths_params_t *p, size_t n)
{
    if (p->kind == BB_LEN_TRACE) {
        if (!p->trace || p->trace->n == 0 || (p->in_order && p->trace->n < n)) {
            bt_error("the trace has %zu requests, %zu asked", p->trace ? p->trace->n : 0, n);
            return BT_ERR_INVAL;
        }
        return BT_OK;
    }
    if (p->input_len < 1 || p->output_len < 1 ||
        (p->kind == BB_LEN_UNIFORM &&
         (p->input_max < p->input_len || p->output_max < p->output_len)) ||
        (p->kind == BB_LEN_LOGNORMAL && !(p->sigma > 0)) || (unsigned)p->kind > BB_LEN_TRACE) {
        bt_error("inconsistent length parameters");
        return BT_ERR_INVAL;
    }
    return BT_OK;
}

int bb_lengths_make(const bb_lengths_params_t *p, size_t n, bb_request_t *out)
{
    int st = check(p, n);
    if (st != BT_OK)
        return st;
    pl_rng_t r;
    pl_rng_seed(&r, p->seed ^ 0x6c656e67746873ull); /* apart from the arrivals' stream */
    for (size_t i = 0; i < n; i++) {
        if (p->kind == BB_LEN_TRACE) {
            size_t k = p->in_order ? i : (size_t)pl_rng_below(&r, p->trace->n);
            out[i].prompt = p->trace->prompt[k];
            out[i].output = p->trace->output[k];
        } else {
            out[i].prompt = draw(&r, p, p->input_len, p->input_max);
            out[i].output = draw(&r, p, p->output_len, p->output_max);
        }
    }
    return BT_OK;
}

size_t bb_lengths_clip(bb_request_t *r, size_t n, int32_t max_prompt, int32_t max_total)
{
    size_t changed = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t p0 = r[i].prompt, o0 = r[i].output;
        if (max_prompt > 0 && r[i].prompt > max_prompt)
            r[i].prompt = max_prompt;
        if (max_total > 1 && r[i].prompt + r[i].output > max_total) {
            if (r[i].prompt >= max_total)
                r[i].prompt = max_total - 1;
            r[i].output = max_total - r[i].prompt;
        }
        changed += r[i].prompt != p0 || r[i].output != o0;
    }
    return changed;
}
