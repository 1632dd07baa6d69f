/* SPDX-License-Identifier: MIT */
/*
 * kvx_wire.h - the bytes kvx puts on the wire: message tags, control messages, address blobs.
 *
 * The one thing to know: everything read here comes from another process, possibly of another
 * version or broken, so readers never trust a length and never assert; a short or malformed
 * message sets the reader's error flag and is rejected as a whole. Integers are little-endian.
 *
 * Tags (64 bits): the top two bits give the class. A control message's tag holds the id the
 * receiving context gave to the sending peer, so control traffic says who it is from. A data
 * message's tag holds the receiver's generation (32 bits), the layer (10) and the index of the
 * first block of the segment in the request's block list (20): the receiver derives the
 * destination from its own reservation, never from an address the sender supplies. A packed
 * data message (class 3) holds whole layers: the same fields name its first layer and, in
 * place of the block index, how many layers follow it, each the request's blocks in order.
 */
#ifndef BATON_KVX_WIRE_H
#define BATON_KVX_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

#define KVX_WIRE_VERSION 1
#define KVX_BLOB_MAGIC 0x5842544bu    /* "KTBX" */
#define KVX_CTRL_MAX_BYTES (8u << 20) /* a reservation of BT_KVX_MAX_BLOCKS fits */

#define KVX_TAG_CLASS_MASK (3ull << 62)
#define KVX_TAG_CTRL (1ull << 62)
#define KVX_TAG_DATA (2ull << 62)
#define KVX_TAG_PACK (3ull << 62)

static inline uint64_t kvx_tag_ctrl(uint32_t peer_id)
{
    return KVX_TAG_CTRL | peer_id;
}

static inline uint64_t kvx_tag_data(uint32_t gen, int32_t layer, int32_t idx)
{
    return KVX_TAG_DATA | ((uint64_t)gen << 30) | ((uint64_t)(layer & 0x3ff) << 20) |
           (uint64_t)(idx & 0xfffff);
}

static inline uint64_t kvx_tag_pack(uint32_t gen, int32_t first_layer, int32_t n_layers)
{
    return (kvx_tag_data(gen, first_layer, n_layers) & ~KVX_TAG_CLASS_MASK) | KVX_TAG_PACK;
}

static inline uint32_t kvx_tag_gen(uint64_t tag)
{
    return (uint32_t)(tag >> 30);
}

static inline int32_t kvx_tag_layer(uint64_t tag)
{
    return (int32_t)((tag >> 20) & 0x3ff);
}

static inline int32_t kvx_tag_idx(uint64_t tag)
{
    return (int32_t)(tag & 0xfffff);
}

/* Control message types (first byte of every control message). */
enum {
    KVX_MSG_HELLO = 1, /* initiator -> acceptor: u32 initiator's id, blob, extension */
    KVX_MSG_HELLO_ACK, /* i32 status, u32 acceptor's id, str reason */
    KVX_MSG_PING,
    KVX_MSG_BYE,
    KVX_MSG_RESERVE, /* u64 req, u32 gen, u8 method, i32 n_tokens, i32 n_blocks, i32 ids[] */
    KVX_MSG_OFFER,   /* u64 req, i32 n_tokens, i32 n_blocks */
    KVX_MSG_FINISH,  /* u64 req, u32 gen, i32 first_token, i32 n_tokens, u32 n, meta[n] */
    KVX_MSG_CANCEL,  /* u8 target, u64 req, u32 gen (0: not bound yet), i32 status */
    KVX_MSG_RELEASE, /* u64 req, u32 gen, i32 status */
    KVX_MSG_SOURCE,  /* mapped: u64 req, u32 gen, i32 layers ready, i32 n, i32 src ids[] */
    KVX_MSG_READY,   /* mapped method: u64 req, u32 gen, i32 layers ready */
    KVX_MSG_CONFIRM, /* mapped method: u64 req, u32 gen: the source was intact throughout */
    KVX_MSG_APP,     /* bt_kvx_peer_message: the caller's bytes */
};

/* How the data of a reservation moves (chosen by the receiver, sent in RESERVE). */
enum {
    KVX_METHOD_DATA = 0, /* the sender sends tagged data messages */
    KVX_METHOD_MAP = 1,  /* the receiver copies out of the sender's pool, mapped on this host */
};

/* Which side of a transfer a CANCEL ends: the receiver's reservation or the sender's send (a
 * sender's and a receiver's generations come from different counters). */
enum { KVX_CANCEL_TO_RECV = 1, KVX_CANCEL_TO_SEND = 2 };

/* A growing output buffer; the first allocation failure sticks in err. */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    int err;
} kvx_buf_t;

void kvx_buf_init(kvx_buf_t *b);
void kvx_buf_fini(kvx_buf_t *b);
void kvx_buf_reset(kvx_buf_t *b);
void kvx_buf_bytes(kvx_buf_t *b, const void *p, size_t n);
void kvx_buf_u8(kvx_buf_t *b, uint8_t v);
void kvx_buf_u32(kvx_buf_t *b, uint32_t v);
void kvx_buf_u64(kvx_buf_t *b, uint64_t v);
void kvx_buf_i32(kvx_buf_t *b, int32_t v);
/* u32 length, then the bytes (no NUL). */
void kvx_buf_str(kvx_buf_t *b, const char *s);

/* A bounds-checked reader over borrowed bytes; any overrun sets err and yields zeros. */
typedef struct {
    const uint8_t *p;
    size_t len;
    size_t off;
    int err;
} kvx_rd_t;

void kvx_rd_init(kvx_rd_t *r, const void *p, size_t len);
uint8_t kvx_rd_u8(kvx_rd_t *r);
uint32_t kvx_rd_u32(kvx_rd_t *r);
uint64_t kvx_rd_u64(kvx_rd_t *r);
int32_t kvx_rd_i32(kvx_rd_t *r);
/* Pointer to the next n bytes (borrowed), or NULL with err set. */
const void *kvx_rd_bytes(kvx_rd_t *r, size_t n);
/* Copies a string into buf (cap bytes, NUL-terminated); err if it does not fit. */
void kvx_rd_str(kvx_rd_t *r, char *buf, size_t cap);

/* Where a process runs: equal boot id and PID namespace mean the pid is meaningful to us. */
typedef struct {
    uint8_t boot_id[16];
    uint64_t pid_ns;
    int32_t pid;
} kvx_host_t;

void kvx_host_self(kvx_host_t *out);
int kvx_host_same(const kvx_host_t *a, const kvx_host_t *b);

/* A decoded address blob; pointers borrow from the blob's bytes. */
typedef struct {
    char backend[16];
    char name[BT_KVX_NAME_MAX];
    bt_kvx_layout_t layout;
    kvx_host_t host;
    const uint8_t *be_addr;
    size_t be_len;
} kvx_blob_t;

void kvx_blob_write(kvx_buf_t *b, const char *backend, const char *name,
                    const bt_kvx_layout_t *layout, const kvx_host_t *host, const void *be_addr,
                    size_t be_len);
/* BT_ERR_FORMAT on anything malformed, BT_ERR_MISMATCH on another wire version. */
int kvx_blob_read(kvx_rd_t *r, kvx_blob_t *out);

/* BT_OK, or BT_ERR_MISMATCH with the first differing field described in why. */
int kvx_layout_check(const bt_kvx_layout_t *mine, const bt_kvx_layout_t *theirs, char *why,
                     size_t cap);

#endif
