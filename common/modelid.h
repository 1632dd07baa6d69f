/* SPDX-License-Identifier: MIT */
/*
 * modelid.h - the model id string that the router and the daemons compare before pairing.
 *
 * The id is "<name>:<n_layers>x<dim>x<n_heads>x<n_kv_heads>x<n_vocab>", where name is the
 * model's general.name (or its file's base name). Two instances are paired only when their ids
 * are byte-equal, so every program must build it with this one function: a daemon from its
 * loaded model's hyperparameters, the router from the GGUF metadata alone (it needs no weights).
 */
#ifndef BATON_MODELID_H
#define BATON_MODELID_H

#include <stddef.h>

#include "gguf.h"
#include "model.h"

/* Longest id the function can write, with its NUL (name of up to 127 bytes plus five numbers). */
#define BT_MODEL_ID_MAX 192

/* Writes the id of hp (name, n_layers, dim, n_heads, n_kv_heads, n_vocab are used) into buf of
 * cap bytes. BT_ERR_NOSPACE when it does not fit (buf then holds a truncated, NUL-terminated
 * prefix), BT_ERR_INVAL for NULL arguments. Any thread. */
int bt_model_id_str(const bt_model_hparams_t *hp, char *buf, size_t cap);

/* Checks that general.architecture is llama (BT_ERR_FORMAT when it is missing,
 * BT_ERR_UNSUPPORTED for another one; the reason logged) and fills hp->arch and hp->name:
 * general.name, else path's base name, cut to fit. bt_model_load names a GGUF model with it too,
 * so that both agree on the name in the id. */
int bt_model_id_read_name(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp);

/* Fills the fields bt_model_id_str uses from a GGUF's metadata and tensor table without
 * touching weights: general.name (else path's base name), llama.block_count,
 * llama.embedding_length, llama.attention.head_count, llama.attention.head_count_kv (default:
 * head_count), llama.vocab_size (default: token_embd.weight's rows), the same rules as
 * bt_model_load. Other fields of *hp are zeroed. BT_ERR_FORMAT (reason logged) when a key is
 * missing or out of range, BT_ERR_UNSUPPORTED for an architecture other than llama. */
int bt_model_id_hparams_from_gguf(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp);

#endif
