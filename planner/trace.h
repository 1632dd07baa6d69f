/* SPDX-License-Identifier: MIT */
/*
 * trace.h - workload traces read in their own formats: request lengths (prompt and output
 * tokens) and, where the file has them, arrival times.
 *
 * Formats, detected from the content:
 *  - CSV with a header line. The prompt column is the first of num_prefill_tokens (ShareGPT and
 *    arXiv-summarization stats), prompt_tokens_with_bos (HumanEval), ContextTokens (Azure LLM
 *    inference 2023), input_length, prompt_tokens; the output column the first of
 *    num_decode_tokens, canonical_solution_tokens, GeneratedTokens, output_length,
 *    output_tokens; an optional time column TIMESTAMP/timestamp (a date-time
 *    "YYYY-MM-DD HH:MM:SS.fffffff", or a number of seconds) or timestamp_ms/arrival_ms
 *    (milliseconds). Other columns are ignored. Quoted fields are refused.
 *  - JSON lines (Mooncake): one object per line with input_length, output_length and an
 *    optional timestamp in milliseconds; other keys (hash_ids) are ignored.
 * Arrival times are made relative to the first request and must not decrease. Lengths below 1
 * count as 1 (a request always has a prompt token and produces its first token). Anything else
 * that does not parse is refused with BT_ERR_FORMAT / BT_ERR_RANGE and "file:line: what" logged
 * once: a trace is input from outside, never trusted.
 */
#ifndef BATON_PLANNER_TRACE_H
#define BATON_PLANNER_TRACE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t n;           /* requests */
    int32_t *prompt;    /* (n) prompt tokens, >= 1 */
    int32_t *output;    /* (n) output tokens, >= 1 */
    double *arrival_ms; /* (n) arrival since the first request, or NULL without timestamps */
    char format[32];    /* "csv" or "jsonl" */
} pl_trace_t;

/* Reads a trace file (at most 1 GiB). BT_ERR_IO when it cannot be read. */
int pl_trace_load(const char *path, pl_trace_t **out);
/* Parses len bytes of trace text; source names it in messages. The text is not kept. */
int pl_trace_parse(const char *text, size_t len, const char *source, pl_trace_t **out);
/* NULL is allowed. */
void pl_trace_destroy(pl_trace_t *t);

/* Mean prompt and output lengths, and the mean arrival rate in requests per second (0 without
 * timestamps or when all arrive at once). */
void pl_trace_stats(const pl_trace_t *t, double *mean_prompt, double *mean_output,
                    double *rate_per_s);

#endif
