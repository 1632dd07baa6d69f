/* SPDX-License-Identifier: MIT */
/*
 * kvx_wire.c - encoding and validated decoding of kvx's control messages and address blobs.
 *
 * Writers grow a buffer and remember the first allocation failure, so that a message is built
 * with straight-line code and checked once; readers clamp every length to what is there.
 */
#include "kvx_wire.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"

void kvx_buf_init(kvx_buf_t *b)
{
    memset(b, 0, sizeof *b);
}

void kvx_buf_fini(kvx_buf_t *b)
{
    bt_free(b->data);
    memset(b, 0, sizeof *b);
}

void kvx_buf_reset(kvx_buf_t *b)
{
    b->len = 0;
    b->err = 0;
}

void kvx_buf_bytes(kvx_buf_t *b, const void *p, size_t n)
{
    if (b->err)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = bt_realloc(b->data, cap);
        if (!d) {
            b->err = BT_ERR_NOMEM;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

void kvx_buf_u8(kvx_buf_t *b, uint8_t v)
{
    kvx_buf_bytes(b, &v, 1);
}

void kvx_buf_u32(kvx_buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    kvx_buf_bytes(b, x, sizeof x);
}

void kvx_buf_u64(kvx_buf_t *b, uint64_t v)
{
    kvx_buf_u32(b, (uint32_t)v);
    kvx_buf_u32(b, (uint32_t)(v >> 32));
}

void kvx_buf_i32(kvx_buf_t *b, int32_t v)
{
    kvx_buf_u32(b, (uint32_t)v);
}

void kvx_buf_str(kvx_buf_t *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    kvx_buf_u32(b, (uint32_t)n);
    kvx_buf_bytes(b, s, n);
}

void kvx_rd_init(kvx_rd_t *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->off = 0;
    r->err = 0;
}

const void *kvx_rd_bytes(kvx_rd_t *r, size_t n)
{
    if (r->err || n > r->len - r->off) {
        r->err = 1;
        return NULL;
    }
    const void *p = r->p + r->off;
    r->off += n;
    return p;
}

uint8_t kvx_rd_u8(kvx_rd_t *r)
{
    const uint8_t *p = kvx_rd_bytes(r, 1);
    return p ? p[0] : 0;
}

uint32_t kvx_rd_u32(kvx_rd_t *r)
{
    const uint8_t *p = kvx_rd_bytes(r, 4);
    if (!p)
        return 0;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t kvx_rd_u64(kvx_rd_t *r)
{
    uint64_t lo = kvx_rd_u32(r);
    return lo | (uint64_t)kvx_rd_u32(r) << 32;
}

int32_t kvx_rd_i32(kvx_rd_t *r)
{
    return (int32_t)kvx_rd_u32(r);
}

void kvx_rd_str(kvx_rd_t *r, char *buf, size_t cap)
{
    uint32_t n = kvx_rd_u32(r);
    const char *s = kvx_rd_bytes(r, n);
    if (!s || n >= cap) {
        r->err = 1;
        buf[0] = '\0';
        return;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The kernel's boot id: two processes with the same one (and the same PID namespace) run on
 * the same machine instance and can name each other by pid. Zero if unreadable. */
static void read_boot_id(uint8_t out[16])
{
    memset(out, 0, 16);
    char s[64] = {0};
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f)
        return;
    size_t n = fread(s, 1, sizeof s - 1, f);
    fclose(f);
    int k = 0;
    for (size_t i = 0; i + 1 < n && k < 16; i++) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            continue;
        out[k++] = (uint8_t)(hi << 4 | lo);
        i++;
    }
}

void kvx_host_self(kvx_host_t *out)
{
    memset(out, 0, sizeof *out);
    read_boot_id(out->boot_id);
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0)
        out->pid_ns = (uint64_t)st.st_ino;
    out->pid = (int32_t)getpid();
}

int kvx_host_same(const kvx_host_t *a, const kvx_host_t *b)
{
    static const uint8_t zero[16];
    return memcmp(a->boot_id, zero, 16) != 0 && memcmp(a->boot_id, b->boot_id, 16) == 0 &&
           a->pid_ns == b->pid_ns && a->pid_ns != 0;
}

static void layout_write(kvx_buf_t *b, const bt_kvx_layout_t *l)
{
    kvx_buf_str(b, l->model_id);
    kvx_buf_i32(b, l->n_layers);
    kvx_buf_i32(b, l->n_kv_heads);
    kvx_buf_i32(b, l->head_dim);
    kvx_buf_i32(b, l->block_size);
    kvx_buf_i32(b, l->type);
    kvx_buf_i32(b, l->layout_version);
    kvx_buf_i32(b, l->n_blocks);
    kvx_buf_u64(b, l->block_bytes);
}

static void layout_read(kvx_rd_t *r, bt_kvx_layout_t *l)
{
    memset(l, 0, sizeof *l);
    kvx_rd_str(r, l->model_id, sizeof l->model_id);
    l->n_layers = kvx_rd_i32(r);
    l->n_kv_heads = kvx_rd_i32(r);
    l->head_dim = kvx_rd_i32(r);
    l->block_size = kvx_rd_i32(r);
    l->type = kvx_rd_i32(r);
    l->layout_version = kvx_rd_i32(r);
    l->n_blocks = kvx_rd_i32(r);
    l->block_bytes = kvx_rd_u64(r);
}

void kvx_blob_write(kvx_buf_t *b, const char *backend, const char *name,
                    const bt_kvx_layout_t *layout, const kvx_host_t *host, const void *be_addr,
                    size_t be_len)
{
    kvx_buf_u32(b, KVX_BLOB_MAGIC);
    kvx_buf_u32(b, KVX_WIRE_VERSION);
    kvx_buf_str(b, backend);
    kvx_buf_str(b, name);
    layout_write(b, layout);
    kvx_buf_bytes(b, host->boot_id, sizeof host->boot_id);
    kvx_buf_u64(b, host->pid_ns);
    kvx_buf_i32(b, host->pid);
    kvx_buf_u32(b, (uint32_t)be_len);
    kvx_buf_bytes(b, be_addr, be_len);
}

int kvx_blob_read(kvx_rd_t *r, kvx_blob_t *out)
{
    memset(out, 0, sizeof *out);
    if (kvx_rd_u32(r) != KVX_BLOB_MAGIC)
        return BT_ERR_FORMAT;
    if (kvx_rd_u32(r) != KVX_WIRE_VERSION)
        return r->err ? BT_ERR_FORMAT : BT_ERR_MISMATCH;
    kvx_rd_str(r, out->backend, sizeof out->backend);
    kvx_rd_str(r, out->name, sizeof out->name);
    layout_read(r, &out->layout);
    const uint8_t *boot = kvx_rd_bytes(r, sizeof out->host.boot_id);
    if (boot)
        memcpy(out->host.boot_id, boot, sizeof out->host.boot_id);
    out->host.pid_ns = kvx_rd_u64(r);
    out->host.pid = kvx_rd_i32(r);
    out->be_len = kvx_rd_u32(r);
    out->be_addr = kvx_rd_bytes(r, out->be_len);
    return r->err ? BT_ERR_FORMAT : BT_OK;
}

int kvx_layout_check(const bt_kvx_layout_t *mine, const bt_kvx_layout_t *theirs, char *why,
                     size_t cap)
{
    if (strcmp(mine->model_id, theirs->model_id) != 0) {
        snprintf(why, cap, "model id '%s' here, '%s' there", mine->model_id, theirs->model_id);
        return BT_ERR_MISMATCH;
    }
    static const struct {
        const char *name;
        size_t off;
    } fields[] = {
        {"layout version", offsetof(bt_kvx_layout_t, layout_version)},
        {"layers", offsetof(bt_kvx_layout_t, n_layers)},
        {"KV heads", offsetof(bt_kvx_layout_t, n_kv_heads)},
        {"head dim", offsetof(bt_kvx_layout_t, head_dim)},
        {"block size", offsetof(bt_kvx_layout_t, block_size)},
        {"dtype", offsetof(bt_kvx_layout_t, type)},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        int32_t a, b;
        memcpy(&a, (const char *)mine + fields[i].off, sizeof a);
        memcpy(&b, (const char *)theirs + fields[i].off, sizeof b);
        if (a != b && fields[i].off == offsetof(bt_kvx_layout_t, type)) {
            const char *ta = bt_type_name(a), *tb = bt_type_name(b);
            snprintf(why, cap, "KV type %s here, %s there (daemons' --kv-type)", ta ? ta : "?",
                     tb ? tb : "?");
            return BT_ERR_MISMATCH;
        }
        if (a != b) {
            snprintf(why, cap, "%s %d here, %d there", fields[i].name, a, b);
            return BT_ERR_MISMATCH;
        }
    }
    if (mine->block_bytes != theirs->block_bytes) {
        snprintf(why, cap, "block bytes %llu here, %llu there",
                 (unsigned long long)mine->block_bytes, (unsigned long long)theirs->block_bytes);
        return BT_ERR_MISMATCH;
    }
    return BT_OK;
}
