/* SPDX-License-Identifier: MIT */
/* support.c - helpers of fuzz.h, linked into both forms of every target. */
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "common/unicode.h"
#include "fuzz.h"

void fuzz_quiet_log(void)
{
    const char *lvl = getenv("BATON_FUZZ_LOG");
    int l = lvl ? bt_log_level_parse(lvl) : -1;
    bt_log_set_level(l >= 0 ? (bt_log_level_t)l : BT_LOG_OFF);
}

int fuzz_utf8_valid(const void *s, size_t n)
{
    const uint8_t *p = s;
    for (size_t i = 0; i < n;) {
        int k = bt_utf8_check(p + i, n - i);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

void fuzz_file_open(fuzz_file_t *f, const char *name)
{
    f->fd = memfd_create(name, MFD_CLOEXEC);
    FUZZ_CHECK(f->fd >= 0, "memfd_create");
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

void fuzz_file_set(const fuzz_file_t *f, const void *data, size_t n)
{
    FUZZ_CHECK(ftruncate(f->fd, 0) == 0 && pwrite(f->fd, data, n, 0) == (ssize_t)n, "memory file");
}

int fuzz_admit(const router_limits_t *lim, const Baton__GenerateRequest *req, char *err, size_t cap)
{
    router_admit_t adm;
    int st = router_limits_check(lim, req, &adm, err, cap);
    if (st != BT_OK) {
        FUZZ_CHECK(err[0] && !adm.prompt_owned, "refused (%d) without a reason", st);
        return st;
    }
    FUZZ_CHECK(adm.n_prompt >= 1 && adm.n_prompt <= lim->max_prompt_tokens,
               "admitted a prompt of %u tokens", adm.n_prompt);
    FUZZ_CHECK(adm.max_tokens >= 1 && adm.max_tokens <= lim->max_tokens, "admitted max_tokens %u",
               adm.max_tokens);
    for (uint32_t i = 0; i < adm.n_prompt; i++)
        FUZZ_CHECK(adm.prompt[i] >= 0 && adm.prompt[i] < lim->n_vocab, "admitted token id %d",
                   adm.prompt[i]);
    FUZZ_CHECK(adm.slo_ttft_ms > 0 && adm.slo_tpot_ms > 0, "objectives");
    FUZZ_CHECK(req->n_resume_ids <= adm.max_tokens, "admitted %zu resume ids", req->n_resume_ids);
    for (size_t i = 0; i < req->n_resume_ids; i++)
        FUZZ_CHECK(req->resume_ids[i] >= 0 && req->resume_ids[i] < lim->n_vocab,
                   "admitted resume id %d", req->resume_ids[i]);
    FUZZ_CHECK(!req->n_resume_ids || !req->return_text || lim->tok,
               "admitted a resumption with text and no tokenizer");
    bt_free(adm.prompt_owned);
    return st;
}
