/* SPDX-License-Identifier: MIT */
/*
 * cmd_generate.c - `baton generate`: one request to a running cluster through its router,
 * with the client library. The generated text goes to stdout (as it streams with --stream, or
 * the whole result with --json); timings and the request's path go to stderr. Ctrl-C cancels
 * the request and still prints what was generated.
 */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton_client.h"
#include "cli.h"
#include "common/config.h"
#include "common/status.h"
#include "common/json.h"

typedef struct {
    char *router, *prompt, *prompt_ids, *stop;
    int n_predict, top_k, stream, json, ignore_eos, bos, timeout_ms, max_resubmits;
    float temp, top_p, min_p, repeat_penalty, slo_ttft_ms, slo_tpot_ms;
    int64_t seed;
} gen_cfg_t;

#define OPT(n, s, t, d, lo, hi, f, h)                                                              \
    {                                                                                              \
        n, s, t, d, lo, hi, offsetof(gen_cfg_t, f), h                                              \
    }
static const bt_cfg_opt_t gen_opts[] = {
    OPT("router", 'r', BT_CFG_STRING, "tcp://127.0.0.1:5555", 0, 0, router, "router endpoint"),
    OPT("prompt", 'p', BT_CFG_STRING, NULL, 0, 0, prompt, "prompt text"),
    OPT("prompt-ids", 0, BT_CFG_STRING, NULL, 0, 0, prompt_ids,
        "prompt as token ids, e.g. 1,15043,3186 (instead of --prompt)"),
    OPT("n-predict", 'n', BT_CFG_INT, "0", 0, 1 << 24, n_predict,
        "tokens to generate at most; 0: the router's default"),
    OPT("temp", 't', BT_CFG_FLOAT, "0.8", 0, 100, temp, "temperature; 0 is greedy"),
    OPT("top-k", 0, BT_CFG_INT, "40", 0, 1 << 20, top_k, "top-k filter; 0 off"),
    OPT("top-p", 0, BT_CFG_FLOAT, "0.95", 0, 1, top_p, "top-p filter; 1 off"),
    OPT("min-p", 0, BT_CFG_FLOAT, "0.05", 0, 1, min_p, "min-p filter; 0 off"),
    OPT("repeat-penalty", 0, BT_CFG_FLOAT, "1", 0, 100, repeat_penalty, "repetition penalty"),
    OPT("seed", 's', BT_CFG_INT64, "42", 0, 9.2e18, seed, "random seed"),
    OPT("stop", 0, BT_CFG_STRING, NULL, 0, 0, stop, "stop when this text is generated"),
    OPT("ignore-eos", 0, BT_CFG_BOOL, "0", 0, 0, ignore_eos, "generate exactly --n-predict"),
    OPT("bos", 0, BT_CFG_BOOL, "1", 0, 0, bos, "start a text prompt with BOS"),
    OPT("stream", 0, BT_CFG_BOOL, "0", 0, 0, stream, "print text as it is generated"),
    OPT("json", 0, BT_CFG_BOOL, "0", 0, 0, json,
        "print the result as JSON (ids, text, finish, events, instances)"),
    OPT("slo-ttft-ms", 0, BT_CFG_FLOAT, "0", 0, 1e9, slo_ttft_ms, "TTFT objective; 0: cluster's"),
    OPT("slo-tpot-ms", 0, BT_CFG_FLOAT, "0", 0, 1e9, slo_tpot_ms, "TPOT objective; 0: cluster's"),
    OPT("timeout-ms", 0, BT_CFG_INT, "120000", 1, 1 << 30, timeout_ms,
        "give up after this long without a token"),
    OPT("max-resubmits", 0, BT_CFG_INT, "3", 0, 1000, max_resubmits,
        "send the request again (with the tokens received) at most this many times when the "
        "router connection drops; 0: never, the request then fails at once"),
};
static const bt_cfg_table_t gen_table = {
    .prog = "baton generate",
    .summary = "Sends one request to a baton router and prints the generated text.",
    .opts = gen_opts,
    .n_opts = sizeof gen_opts / sizeof gen_opts[0],
};

static volatile sig_atomic_t interrupted;

/* The first Ctrl-C cancels (or, once the result is in, is ignored); the second one ends the
 * program. */
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
    signal(SIGINT, SIG_DFL);
}

typedef struct {
    int stream;
    double t_send, t_first;
} gen_state_t;

static void on_chunk(gen_state_t *g, const bt_client_chunk_t *ch)
{
    if (g->t_first == 0)
        g->t_first = cli_now();
    if (g->stream && ch->text_len) {
        fwrite(ch->text, 1, ch->text_len, stdout);
        fflush(stdout);
    }
}

/* "1,2,3" into a malloc'ed array; -1 on a malformed list. */
static int parse_ids(const char *s, int32_t **out, size_t *n)
{
    size_t cap = strlen(s) / 2 + 1, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return -1;
    while (*s) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 0 || x > INT32_MAX || (*end && *end != ',') || k == cap) {
            free(v);
            return -1;
        }
        v[k++] = (int32_t)x;
        s = *end ? end + 1 : end;
    }
    *out = v;
    *n = k;
    return k ? 0 : -1;
}

static void print_json(const bt_client_result_t *r, double ttft_ms)
{
    printf("{\"request_id\": %llu, \"status\": %d, \"error\": ", (unsigned long long)r->request_id,
           r->status);
    bt_json_write_str(stdout, r->error);
    printf(", \"finish_reason\": \"%s\", \"n_prompt_tokens\": %u, \"n_output_tokens\": %u, "
           "\"retries\": %u, \"ttft_ms\": %.3f,\n \"prefill_instance\": ",
           bt_client_finish_name(r->finish_reason), r->n_prompt_tokens, r->n_output_tokens,
           r->retries, ttft_ms);
    bt_json_write_str(stdout, r->prefill_instance);
    printf(", \"decode_instance\": ");
    bt_json_write_str(stdout, r->decode_instance);
    printf(",\n \"ids\": [");
    for (size_t i = 0; i < r->n_ids; i++)
        printf("%s%d", i ? ", " : "", r->ids[i]);
    printf("],\n \"text\": ");
    bt_json_write_strn(stdout, r->text, r->text_len);
    printf(",\n \"events\": [");
    for (size_t i = 0; i < r->n_events; i++) {
        const bt_client_event_t *e = &r->events[i];
        printf("%s\n  {\"kind\": \"%s\", \"time_ns\": %llu, \"code\": %d, \"instance\": ",
               i ? "," : "", bt_client_lifetime_name(e->kind), (unsigned long long)e->time_ns,
               e->code);
        bt_json_write_str(stdout, e->instance);
        printf("}");
    }
    printf("]}\n");
}

static void fill_request(const gen_cfg_t *c, const char *const *stop, bt_client_gen_params_t *p)
{
    *p = (bt_client_gen_params_t){
        .prompt = c->prompt,
        .max_tokens = (uint32_t)c->n_predict,
        .temperature = c->temp,
        .top_k = c->top_k,
        .top_p = c->top_p,
        .min_p = c->min_p,
        .repeat_penalty = c->repeat_penalty,
        .seed = (uint64_t)c->seed,
        .stop = stop,
        .n_stop = c->stop ? 1 : 0,
        .ignore_eos = c->ignore_eos,
        .no_bos = !c->bos,
        .return_text = 1,
        .slo_ttft_ms = c->slo_ttft_ms,
        .slo_tpot_ms = c->slo_tpot_ms,
    };
}

static int report(const gen_cfg_t *c, const gen_state_t *g, const bt_client_result_t *r)
{
    double ttft_ms = g->t_first > 0 ? (g->t_first - g->t_send) * 1e3 : 0;
    double total_ms = (cli_now() - g->t_send) * 1e3;
    if (c->json)
        print_json(r, ttft_ms);
    else if (c->stream)
        printf("\n");
    else
        fwrite(r->text, 1, r->text_len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    fprintf(stderr,
            "%s: %u prompt + %u output tokens, first token %.1f ms, total %.1f ms, "
            "prefill %s, decode %s, %u failovers%s%s\n",
            bt_client_finish_name(r->finish_reason), r->n_prompt_tokens, r->n_output_tokens,
            ttft_ms, total_ms, r->prefill_instance, r->decode_instance, r->retries,
            r->status ? ": " : "", r->status ? r->error : "");
    return r->status == 0 && r->finish_reason != BT_CLIENT_FINISH_CANCELLED ? 0 : 1;
}

static int run_request(const gen_cfg_t *c, bt_client_gen_params_t *p)
{
    bt_client_params_t cp = {.endpoint = c->router,
                             .timeout_ms = c->timeout_ms,
                             .max_resubmits = c->max_resubmits ? c->max_resubmits : -1};
    bt_client_t *cl = NULL;
    int st = bt_client_connect(&cp, &cl);
    if (st != 0) {
        fprintf(stderr, "baton generate: cannot connect to %s: %s\n", c->router,
                bt_client_strerror(st));
        return 1;
    }
    gen_state_t g = {.stream = c->stream && !c->json, .t_send = cli_now()};
    bt_client_result_t *r = NULL;
    uint64_t id = 0;
    signal(SIGINT, on_sigint);
    st = bt_client_submit(cl, p, &id);
    /* Short waits, so that Ctrl-C cancels at once even while nothing arrives (the request
     * queued, or failing over); a second Ctrl-C ends the program. --timeout-ms is for
     * silence, as in bt_client_generate. */
    double heard = cli_now();
    int cancelled = 0;
    while (st == 0 && !r) {
        bt_client_next_t ev;
        st = bt_client_next(cl, 100, &ev);
        if (st == 0) {
            heard = cli_now();
            if (ev.kind == BT_CLIENT_NEXT_CHUNK)
                on_chunk(&g, &ev.chunk);
            else
                r = ev.result;
        } else if (st == BT_CLIENT_ERR_TIMEOUT && (cli_now() - heard) * 1e3 < c->timeout_ms) {
            st = 0;
        }
        if (interrupted && !cancelled && !r) {
            bt_client_cancel(cl, id);
            cancelled = 1;
        }
    }
    if (st == BT_CLIENT_ERR_TIMEOUT)
        bt_client_cancel(cl, id); /* the router may yet hear it */
    int rc = 1;
    if (st != 0)
        fprintf(stderr, "baton generate: %s (router %s)\n", bt_client_strerror(st), c->router);
    else
        rc = report(c, &g, r);
    bt_client_result_free(r);
    bt_client_close(cl);
    return rc;
}

int cli_generate(int argc, char **argv)
{
    gen_cfg_t c = {0};
    int st = bt_cfg_parse(&gen_table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK) {
        bt_cfg_free(&gen_table, &c);
        return st == BT_AGAIN ? 0 : 2;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 2;
    if (!c.prompt == !c.prompt_ids) {
        fprintf(stderr, "baton generate: give --prompt TEXT or --prompt-ids LIST (one of them)\n");
    } else if (c.prompt_ids && parse_ids(c.prompt_ids, &ids, &n_ids) != 0) {
        fprintf(stderr, "baton generate: --prompt-ids wants comma-separated token ids\n");
    } else {
        const char *stop[1] = {c.stop};
        bt_client_gen_params_t p;
        fill_request(&c, stop, &p);
        p.prompt_ids = ids;
        p.n_prompt_ids = n_ids;
        rc = run_request(&c, &p);
    }
    free(ids);
    bt_cfg_free(&gen_table, &c);
    return rc;
}
