/* SPDX-License-Identifier: MIT */
/*
 * devmodel.h - a model's weights copied into a backend's own memory (a GPU's), so that the
 * engine can hand them to the ops of a backend that cannot read host memory.
 *
 * The copy is one backend allocation holding every matrix, norm vector and the RoPE table,
 * made once when an engine is created. Its view is a bt_model_t whose tensors point into that
 * allocation; hyperparameters and the tokenizer are borrowed from the host model, which must
 * outlive the copy. Backends that work on host memory need no copy (see bt_dev_model_create).
 *
 * Threads: created and destroyed by the thread that drives the backend.
 */
#ifndef BATON_DEVMODEL_H
#define BATON_DEVMODEL_H

#include "model.h"

typedef struct bt_dev_model bt_dev_model_t;

/* Copies host's weights into be's memory when be uses device memory; writes NULL to *out (and
 * returns BT_OK) when it does not. BT_ERR_NOMEM when the device cannot hold the weights. */
int bt_dev_model_create(const bt_model_t *host, bt_backend_t *be, bt_dev_model_t **out);
/* The copy as a model: tensors in device memory, everything else the host model's. */
const bt_model_t *bt_dev_model_view(const bt_dev_model_t *dm);
/* Bytes of device memory the copy holds. */
size_t bt_dev_model_size_bytes(const bt_dev_model_t *dm);
void bt_dev_model_destroy(bt_dev_model_t *dm);

#endif
