/* SPDX-License-Identifier: MIT */
/*
 * instances.c - heartbeats and liveness (see instances.h).
 *
 * Records are allocated one by one and the table holds pointers, so a record never moves while
 * a request points at it. Lookups scan the table comparing identities; a cluster has tens to
 * hundreds of daemons, and the scan stops at the first length-and-bytes match.
 */
#include "instances.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

struct router_instances {
    router_instance_t **v; /* (cap) records, n used */
    int n, cap;
    int dead_after_ms;
    char model_id[BT_MODEL_ID_MAX];
    uint64_t next_seq;
};

int router_instances_create(const router_instances_params_t *params, router_instances_t **out)
{
    router_instances_params_t p = params ? *params : (router_instances_params_t){0};
    router_instances_t *s = bt_calloc(1, sizeof *s);
    if (!s)
        return BT_ERR_NOMEM;
    s->cap = p.max_instances > 0 ? p.max_instances : 1024;
    s->dead_after_ms = p.dead_after_ms > 0 ? p.dead_after_ms : 3000;
    if (p.model_id)
        snprintf(s->model_id, sizeof s->model_id, "%s", p.model_id);
    s->v = bt_calloc((size_t)s->cap, sizeof *s->v);
    if (!s->v) {
        bt_free(s);
        return BT_ERR_NOMEM;
    }
    *out = s;
    return BT_OK;
}

static void record_free(router_instance_t *inst)
{
    if (inst) {
        bt_free(inst->kvx_address);
        bt_free(inst->suspects);
        bt_free(inst);
    }
}

void router_instances_destroy(router_instances_t *set)
{
    if (!set)
        return;
    for (int i = 0; i < set->n; i++)
        record_free(set->v[i]);
    bt_free(set->v);
    bt_free(set);
}

router_instance_t *router_instances_find(router_instances_t *set, const uint8_t *ident,
                                         size_t ident_len)
{
    for (int i = 0; i < set->n; i++) {
        router_instance_t *r = set->v[i];
        if (r->ident_len == ident_len && memcmp(r->ident, ident, ident_len) == 0)
            return r;
    }
    return NULL;
}

static router_instance_t *add_record(router_instances_t *set, const uint8_t *ident, size_t len)
{
    if (set->n == set->cap || len == 0 || len > ROUTER_IDENT_MAX)
        return NULL;
    router_instance_t *r = bt_calloc(1, sizeof *r);
    if (!r)
        return NULL;
    memcpy(r->ident, ident, len);
    r->ident_len = (uint8_t)len;
    r->seq = set->next_seq++;
    set->v[set->n++] = r;
    return r;
}

static int set_kvx(router_instance_t *r, const ProtobufCBinaryData *kvx)
{
    if (kvx->len == r->kvx_len &&
        (kvx->len == 0 || memcmp(kvx->data, r->kvx_address, kvx->len) == 0))
        return BT_OK;
    uint8_t *copy = NULL;
    if (kvx->len) {
        copy = bt_malloc(kvx->len);
        if (!copy)
            return BT_ERR_NOMEM;
        memcpy(copy, kvx->data, kvx->len);
    }
    bt_free(r->kvx_address);
    r->kvx_address = copy;
    r->kvx_len = kvx->len;
    return BT_OK;
}

/* Copies the identity-level fields (role, model, version) and checks the model id. */
static void set_identity(router_instances_t *set, router_instance_t *r, const Baton__Heartbeat *hb,
                         int changed)
{
    snprintf(r->name, sizeof r->name, "%s",
             hb->instance_id && *hb->instance_id ? hb->instance_id : "(unnamed)");
    r->role = hb->role;
    r->version = hb->version;
    snprintf(r->model_id, sizeof r->model_id, "%s", hb->model_id ? hb->model_id : "");
    if (!set->model_id[0] && r->model_id[0]) {
        snprintf(set->model_id, sizeof set->model_id, "%s", r->model_id);
        bt_info("serving model %s (adopted from instance %s)", set->model_id, r->name);
    }
    int ok = strcmp(r->model_id, set->model_id) == 0;
    if (changed && !ok)
        bt_warn("instance %s serves model '%s', not '%s': it will get no requests", r->name,
                r->model_id, set->model_id);
    r->model_ok = ok;
}

static void copy_load(router_instance_t *r, const Baton__Heartbeat *hb, uint64_t now_ms)
{
    r->queue_len = hb->queue_len;
    r->running = hb->running;
    r->kv_free_blocks = hb->kv_free_blocks;
    r->kv_total_blocks = hb->kv_total_blocks;
    r->kv_block_size = hb->kv_block_size;
    r->queued_tokens = hb->queued_tokens;
    r->unshipped_blocks = hb->unshipped_blocks;
    r->draining = hb->draining;
    snprintf(r->partner, sizeof r->partner, "%s", hb->partner ? hb->partner : "");
    /* a heartbeat sent before the last SET_ROLE arrived must not undo it */
    if ((hb->serving == BATON__ROLE__PREFILL || hb->serving == BATON__ROLE__DECODE) &&
        (!r->last_switch_ms || now_ms - r->last_switch_ms >= 1000))
        r->serving = hb->serving;
    r->replicas = hb->replicas;
    r->decoding = hb->decoding;
    r->full = 0;
    r->pend_reqs = 0;
    r->pend_tokens = 0;
    r->pend_prompts = 0;
}

int router_instances_heartbeat(router_instances_t *set, const uint8_t *ident, size_t ident_len,
                               const Baton__Heartbeat *hb, uint64_t now_ms, router_instance_t **out,
                               router_hb_event_t *ev)
{
    if (hb->role != BATON__ROLE__PREFILL && hb->role != BATON__ROLE__DECODE &&
        hb->role != BATON__ROLE__COLOCATED && hb->role != BATON__ROLE__PAIR)
        return BT_ERR_INVAL;
    if (hb->role == BATON__ROLE__PAIR && (!hb->partner || !hb->partner[0]))
        return BT_ERR_INVAL;
    router_instance_t *r = router_instances_find(set, ident, ident_len);
    int fresh = !r || !r->alive;
    int revived = r && !r->alive && (!hb->incarnation || hb->incarnation == r->incarnation);
    int restarted =
        !fresh && hb->incarnation && r->incarnation && hb->incarnation != r->incarnation;
    if (!r && !(r = add_record(set, ident, ident_len)))
        return BT_ERR_NOSPACE;
    int changed = fresh || restarted || r->role != hb->role ||
                  strcmp(r->model_id, hb->model_id ? hb->model_id : "") != 0;
    if (set_kvx(r, &hb->kvx_address) != BT_OK)
        return BT_ERR_NOMEM;
    set_identity(set, r, hb, changed);
    copy_load(r, hb, now_ms);
    r->incarnation = hb->incarnation;
    r->last_seen_ms = now_ms;
    r->alive = 1;
    if (fresh || restarted) {
        r->told_partner = 0;
        bt_info("instance %s %s: role %s, model %s, version %u", r->name,
                restarted ? "restarted"
                : revived ? "is back (the same process)"
                          : "registered",
                protobuf_c_enum_descriptor_get_value(&baton__role__descriptor, r->role)->name,
                r->model_id, r->version);
    }
    *out = r;
    *ev = revived     ? ROUTER_HB_REVIVED
          : fresh     ? ROUTER_HB_NEW
          : restarted ? ROUTER_HB_RESTARTED
                      : ROUTER_HB_REFRESH;
    return BT_OK;
}

void router_instances_touch(router_instance_t *inst, uint64_t now_ms)
{
    if (inst->alive)
        inst->last_seen_ms = now_ms;
}

void router_instances_expire(router_instances_t *set, uint64_t now_ms,
                             router_instance_dead_fn on_dead, void *ctx)
{
    for (int i = 0; i < set->n; i++) {
        router_instance_t *r = set->v[i];
        uint64_t silent = now_ms > r->last_seen_ms ? now_ms - r->last_seen_ms : 0;
        if (r->alive && silent >= (uint64_t)set->dead_after_ms) {
            bt_warn("instance %s is dead: no heartbeat for %llu ms (%u requests on it)", r->name,
                    (unsigned long long)silent, r->n_active);
            r->alive = 0;
            if (on_dead)
                on_dead(ctx, r);
        }
        if (!r->alive && r->n_active == 0 && silent >= 10ull * (uint64_t)set->dead_after_ms) {
            record_free(r);
            set->v[i--] = set->v[--set->n];
        }
    }
}

void router_instance_note_assign(router_instance_t *inst, uint32_t n_prompt_tokens)
{
    inst->pend_reqs++;
    inst->pend_tokens += n_prompt_tokens;
    inst->n_assigned++;
}

int router_instance_serving(const router_instance_t *inst)
{
    return inst->alive && !inst->draining && inst->model_ok;
}

int router_instance_eligible(const router_instance_t *inst)
{
    return router_instance_serving(inst) && !inst->full && !inst->probe_out;
}

int router_instances_count(const router_instances_t *set)
{
    return set->n;
}

router_instance_t *router_instances_at(router_instances_t *set, int i)
{
    return i >= 0 && i < set->n ? set->v[i] : NULL;
}

const char *router_instances_model_id(const router_instances_t *set)
{
    return set->model_id;
}
