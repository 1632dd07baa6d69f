/* SPDX-License-Identifier: MIT */
/*
 * devmodel.c - one device allocation for all of a model's weights, filled tensor by tensor.
 *
 * Every piece starts on a 256-byte boundary, so the GEMV kernels' 16-byte loads and cuBLAS's
 * alignment preferences hold for every matrix. A tied output projection is copied once.
 */
#include "devmodel.h"

#include <string.h>

#include "alloc.h"
#include "log.h"

#define ALIGN 256

struct bt_dev_model {
    bt_backend_t *be; /* borrowed */
    void *mem;        /* backend memory, size_bytes */
    size_t size_bytes;
    bt_model_t view;
    bt_layer_weights_t *layers; /* (n_layers) */
};

static size_t align_up(size_t n)
{
    return (n + ALIGN - 1) / ALIGN * ALIGN;
}

static size_t tensor_bytes(const bt_tensor_t *t)
{
    return bt_type_row_bytes(t->type, t->cols) * (size_t)t->rows;
}

/* Walks every piece of the model in a fixed order; with dm->mem NULL it only adds up sizes. */
typedef struct {
    bt_dev_model_t *dm;
    size_t off;
} placer_t;

static const void *place(placer_t *p, const void *src, size_t bytes)
{
    size_t off = p->off;
    p->off += align_up(bytes);
    if (!p->dm->mem)
        return NULL;
    void *dst = (char *)p->dm->mem + off;
    bt_backend_upload(p->dm->be, dst, src, bytes);
    return dst;
}

static void place_tensor(placer_t *p, bt_tensor_t *t)
{
    t->data = place(p, t->data, tensor_bytes(t));
}

static void place_model(placer_t *p, const bt_model_t *host)
{
    const bt_model_hparams_t *hp = &host->hp;
    bt_model_t *v = &p->dm->view;
    const size_t norm = (size_t)hp->dim * sizeof(float);
    *v = *host;
    v->layers = p->dm->layers;
    place_tensor(p, &v->tok_embd);
    if (host->output.data == host->tok_embd.data)
        v->output.data = v->tok_embd.data;
    else
        place_tensor(p, &v->output);
    v->out_norm = place(p, host->out_norm, norm);
    v->rope_inv_freq = (float *)place(p, host->rope_inv_freq, (size_t)hp->head_dim / 2 * 4);
    for (int32_t l = 0; l < hp->n_layers; l++) {
        bt_layer_weights_t *w = &p->dm->layers[l];
        *w = host->layers[l];
        w->attn_norm = place(p, w->attn_norm, norm);
        w->ffn_norm = place(p, w->ffn_norm, norm);
        place_tensor(p, &w->wq);
        place_tensor(p, &w->wk);
        place_tensor(p, &w->wv);
        place_tensor(p, &w->wo);
        place_tensor(p, &w->w_gate);
        place_tensor(p, &w->w_up);
        place_tensor(p, &w->w_down);
    }
}

int bt_dev_model_create(const bt_model_t *host, bt_backend_t *be, bt_dev_model_t **out)
{
    if (!bt_backend_device_memory(be)) {
        *out = NULL;
        return BT_OK;
    }
    bt_dev_model_t *dm = bt_calloc(1, sizeof *dm);
    if (!dm)
        return BT_ERR_NOMEM;
    dm->be = be;
    dm->layers = bt_calloc((size_t)host->hp.n_layers, sizeof *dm->layers);
    if (!dm->layers)
        goto err_dm;
    placer_t sizer = {.dm = dm};
    place_model(&sizer, host);
    dm->size_bytes = sizer.off;
    dm->mem = bt_backend_alloc(be, dm->size_bytes);
    if (!dm->mem) {
        bt_error("engine: cannot allocate %zu bytes of %s memory for the weights", dm->size_bytes,
                 bt_backend_name(be));
        goto err_dm;
    }
    placer_t placer = {.dm = dm};
    place_model(&placer, host);
    bt_backend_sync(be);
    *out = dm;
    return BT_OK;

err_dm:
    bt_free(dm->layers);
    bt_free(dm);
    return BT_ERR_NOMEM;
}

const bt_model_t *bt_dev_model_view(const bt_dev_model_t *dm)
{
    return &dm->view;
}

size_t bt_dev_model_size_bytes(const bt_dev_model_t *dm)
{
    return dm ? dm->size_bytes : 0;
}

void bt_dev_model_destroy(bt_dev_model_t *dm)
{
    if (!dm)
        return;
    bt_backend_free(dm->be, dm->mem);
    bt_free(dm->layers);
    bt_free(dm);
}
