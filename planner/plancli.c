/* SPDX-License-Identifier: MIT */
/*
 * plancli.c - the workload options shared by the planner's programs (plancli.h).
 */
#include "plancli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int pl_cli_workload(const pl_cli_workload_t *c, pl_trace_t **trace, pl_workload_t **w, char *desc,
                    size_t cap)
{
    int arrival = pl_arrival_parse(c->arrival);
    if (arrival < 0) {
        bt_error("--arrival %s: want poisson, gamma or trace", c->arrival);
        return BT_ERR_INVAL;
    }
    *trace = NULL;
    if (c->trace) {
        int st = pl_trace_load(c->trace, trace);
        if (st != BT_OK)
            return st;
    }
    pl_workload_params_t p = {
        .n_requests = (size_t)c->requests,
        .seed = (uint64_t)c->seed,
        .arrival = (pl_arrival_t)arrival,
        .cv = c->cv,
        .lengths = c->trace                                 ? PL_LEN_TRACE
                   : c->prompt_max > 0 || c->output_max > 0 ? PL_LEN_UNIFORM
                                                            : PL_LEN_FIXED,
        .prompt_min = c->prompt_len,
        .prompt_max = c->prompt_max > 0 ? c->prompt_max : c->prompt_len,
        .output_min = c->output_len,
        .output_max = c->output_max > 0 ? c->output_max : c->output_len,
        .trace = *trace,
        .max_prompt = c->max_prompt,
        .max_output = c->max_output,
    };
    int st = pl_workload_create(&p, w);
    if (st != BT_OK) {
        pl_trace_destroy(*trace);
        *trace = NULL;
        return st;
    }
    double mp, mo;
    int32_t mx;
    pl_workload_lengths(*w, &mp, &mo, &mx);
    if (c->trace)
        snprintf(desc, cap, "%s, %s arrivals, %d requests (mean prompt %.0f, output %.0f)",
                 base_name(c->trace), c->arrival, c->requests, mp, mo);
    else
        snprintf(desc, cap, "prompt %d..%d, output %d..%d tokens, %s arrivals, %d requests",
                 p.prompt_min, p.prompt_max, p.output_min, p.output_max, c->arrival, c->requests);
    return BT_OK;
}

int pl_cli_numbers(const char *s, double *out, int max)
{
    int n = 0;
    for (const char *p = s; p && *p;) {
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        if (end == p || errno || !(x > 0) || n == max || (*end && *end != ','))
            return -1;
        out[n++] = x;
        p = *end ? end + 1 : end;
    }
    return n > 0 ? n : -1;
}
