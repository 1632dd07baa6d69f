/* SPDX-License-Identifier: MIT */
/*
 * modelid.c - the model id shared by the router and the daemons (see modelid.h).
 *
 * The GGUF reader here repeats the few dimension lookups of model.c that the id depends on,
 * with the same defaults, so that the router can compute the id of a model it never maps
 * weights for and still agree byte for byte with a daemon that loaded it; the name is read by
 * one function for both (bt_model_id_read_name).
 */
#include "modelid.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "status.h"

#define MODELID_MAX_DIM (1 << 24)

int bt_model_id_str(const bt_model_hparams_t *hp, char *buf, size_t cap)
{
    if (!hp || !buf || cap == 0)
        return BT_ERR_INVAL;
    int n = snprintf(buf, cap, "%.*s:%dx%dx%dx%dx%d", (int)strnlen(hp->name, sizeof hp->name),
                     hp->name, hp->n_layers, hp->dim, hp->n_heads, hp->n_kv_heads, hp->n_vocab);
    if (n < 0 || (size_t)n >= cap)
        return BT_ERR_NOSPACE;
    return BT_OK;
}

static void set_name(bt_model_hparams_t *hp, const char *s, size_t len)
{
    if (len >= sizeof hp->name)
        len = sizeof hp->name - 1;
    memcpy(hp->name, s, len);
    hp->name[len] = 0;
}

/* A positive integer key; def < 0 makes it required. */
static int get_dim(const bt_gguf_t *g, const char *path, const char *key, int64_t def, int32_t *out)
{
    int64_t v;
    int st = bt_gguf_get_i64(g, key, &v);
    if (st == BT_ERR_NOT_FOUND && def >= 0) {
        *out = (int32_t)def;
        return BT_OK;
    }
    if (st != BT_OK || v <= 0 || v > MODELID_MAX_DIM) {
        bt_error("model %s: %s is missing or not an integer in [1, %d]", path, key,
                 MODELID_MAX_DIM);
        return BT_ERR_FORMAT;
    }
    *out = (int32_t)v;
    return BT_OK;
}

int bt_model_id_read_name(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp)
{
    const char *s;
    size_t len;
    if (bt_gguf_get_str(g, "general.architecture", &s, &len) != BT_OK) {
        bt_error("model %s: general.architecture is missing or not a string", path);
        return BT_ERR_FORMAT;
    }
    if (len != 5 || memcmp(s, "llama", 5) != 0) {
        bt_error("model %s: architecture '%.*s' is not supported (only 'llama')", path,
                 (int)(len > 64 ? 64 : len), s);
        return BT_ERR_UNSUPPORTED;
    }
    strcpy(hp->arch, "llama");
    if (bt_gguf_get_str(g, "general.name", &s, &len) == BT_OK) {
        set_name(hp, s, len);
    } else {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        set_name(hp, base, strlen(base));
    }
    return BT_OK;
}

/* llama.vocab_size, else the rows of token_embd.weight, as bt_model_load decides it. */
static int read_vocab(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp)
{
    int st = get_dim(g, path, "llama.vocab_size", 0, &hp->n_vocab);
    if (st != BT_OK || hp->n_vocab > 0)
        return st;
    bt_gguf_tensor_t t;
    if (bt_gguf_find_tensor(g, "token_embd.weight", &t) != BT_OK || t.ne[1] <= 0 ||
        t.ne[1] > MODELID_MAX_DIM) {
        bt_error("model %s: no llama.vocab_size and no usable token_embd.weight", path);
        return BT_ERR_FORMAT;
    }
    hp->n_vocab = (int32_t)t.ne[1];
    return BT_OK;
}

int bt_model_id_hparams_from_gguf(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp)
{
    if (!g || !path || !hp)
        return BT_ERR_INVAL;
    memset(hp, 0, sizeof *hp);
    int st = bt_model_id_read_name(g, path, hp);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.block_count", -1, &hp->n_layers);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.embedding_length", -1, &hp->dim);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.attention.head_count", -1, &hp->n_heads);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.attention.head_count_kv", hp->n_heads, &hp->n_kv_heads);
    if (st == BT_OK)
        st = read_vocab(g, path, hp);
    return st;
}
