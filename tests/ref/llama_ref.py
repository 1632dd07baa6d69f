#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""llama_ref.py - an independent float64 reference forward pass for Llama-architecture models.

This is the judge the C engine is held to, so it shares no code and no intermediate format with
it: its own GGUF v2/v3 reader (F32, F16, BF16 and Q8_0 tensors, dequantized exactly into
float64), its own llama2.c checkpoint reader, and a plain numpy forward pass written from the
architecture's definition (RMSNorm, RoPE on adjacent pairs, grouped-query causal attention,
SwiGLU FFN). Everything is computed in float64; only the written logits are rounded to float32.
The one thing a reader must know: a sequence's logits at every position depend only on that
sequence's tokens, so "decode steps" of the engine are checked against the same full-sequence
forward (this module also has a KV-cached incremental path, used by greedy generation, and the
two are checked against each other by --self-test).

Usage:
  llama_ref.py --model FILE --tokens 1,2,3 [--tokens 4,5 ...] --out LOGITS.f32
      Writes the logits of every position of every sequence, sequences in order, as
      little-endian float32 [total_positions][n_vocab] with no header.
  llama_ref.py --model FILE --check-golden GOLDEN.json [--steps N]
      Compares the first positions' logits and the greedy token ids from BOS with a golden file;
      exit status 0 when both match, 1 otherwise.
  llama_ref.py --model FILE --greedy N [--bos 1]
      Prints N greedy token ids from BOS, comma-separated.
  llama_ref.py --model FILE --info
      Prints the hyperparameters as read from the file.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# ---------------------------------------------------------------------------------------------
# GGUF reader

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types -> (struct code, size); 8 = string, 9 = array are handled apart.
_GGUF_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_GGUF_NUMPY = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
    10: "<u8", 11: "<i8", 12: "<f8",
}

# ggml tensor types this reference can dequantize: id -> (name, elements per block, bytes per block)
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
_GGML_TYPES = {
    GGML_F32: ("f32", 1, 4),
    GGML_F16: ("f16", 1, 2),
    GGML_Q8_0: ("q8_0", 32, 34),
    GGML_BF16: ("bf16", 1, 2),
}


class FormatError(Exception):
    pass


class _Cursor:
    """Bounds-checked little-endian reads from a bytes-like buffer."""

    def __init__(self, buf, pos=0):
        self.buf = buf
        self.pos = pos

    def take(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            raise FormatError("truncated file at offset %d (need %d bytes)" % (self.pos, n))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, code, size):
        return struct.unpack(code, self.take(size))[0]

    def u32(self):
        return self.scalar("<I", 4)

    def u64(self):
        return self.scalar("<Q", 8)

    def string(self):
        n = self.u64()
        return bytes(self.take(n)).decode("utf-8", errors="replace")


def _gguf_value(cur, vtype):
    if vtype in _GGUF_SCALARS:
        return cur.scalar(*_GGUF_SCALARS[vtype])
    if vtype == 8:
        return cur.string()
    if vtype == 9:
        etype = cur.u32()
        count = cur.u64()
        if etype in _GGUF_NUMPY:
            dt = np.dtype(_GGUF_NUMPY[etype])
            raw = cur.take(count * dt.itemsize)
            return np.frombuffer(raw, dtype=dt)
        return [_gguf_value(cur, etype) for _ in range(count)]
    raise FormatError("unknown GGUF metadata type %d" % vtype)


def dequantize(raw, ggml_type, shape):
    """Turns a tensor's bytes into a float64 array of the given numpy shape (slowest first)."""
    n = int(np.prod(shape))
    if ggml_type == GGML_F32:
        out = np.frombuffer(raw, dtype="<f4", count=n)
    elif ggml_type == GGML_F16:
        out = np.frombuffer(raw, dtype="<f2", count=n)
    elif ggml_type == GGML_BF16:
        bits = np.frombuffer(raw, dtype="<u2", count=n).astype(np.uint32) << 16
        out = bits.view(np.float32)
    elif ggml_type == GGML_Q8_0:
        blk = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
        b = np.frombuffer(raw, dtype=blk, count=n // 32)
        out = b["d"].astype(np.float64)[:, None] * b["qs"].astype(np.float64)
    else:
        raise FormatError("tensor type %d is not supported by the reference" % ggml_type)
    return np.asarray(out, dtype=np.float64).reshape(shape)


class GGUF:
    """A parsed GGUF v2/v3 file: .version, .kv (dict), .tensors (name -> info dict)."""

    def __init__(self, path):
        self.path = path
        self.data = np.memmap(path, dtype=np.uint8, mode="r")
        buf = memoryview(self.data)
        cur = _Cursor(buf)
        if bytes(cur.take(4)) != GGUF_MAGIC:
            raise FormatError("%s: not a GGUF file" % path)
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise FormatError("%s: GGUF version %d is not supported (v2 and v3 are)"
                              % (path, self.version))
        n_tensors = cur.u64()
        n_kv = cur.u64()
        self.kv = {}
        for _ in range(n_kv):
            key = cur.string()
            self.kv[key] = _gguf_value(cur, cur.u32())
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if not 1 <= n_dims <= 4:
                raise FormatError("tensor %s has %d dimensions" % (name, n_dims))
            ne = [cur.u64() for _ in range(n_dims)]
            ttype = cur.u32()
            offset = cur.u64()
            infos.append((name, ne, ttype, offset))
        self.alignment = int(self.kv.get("general.alignment", 32))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise FormatError("alignment %d is not a power of two" % self.alignment)
        data_start = (cur.pos + self.alignment - 1) // self.alignment * self.alignment
        self.tensors = {}
        for name, ne, ttype, offset in infos:
            if ttype not in _GGML_TYPES:
                # Present but not computable here; kept so callers can name it in an error.
                self.tensors[name] = dict(ne=ne, type=ttype, offset=None, nbytes=0)
                continue
            _, blck, tsize = _GGML_TYPES[ttype]
            n = int(np.prod(ne))
            if ne[0] % blck:
                raise FormatError("tensor %s: %d columns not a multiple of %d" % (name, ne[0], blck))
            nbytes = n // blck * tsize
            start = data_start + offset
            if offset % self.alignment or start + nbytes > len(self.data):
                raise FormatError("tensor %s: bad offset %d" % (name, offset))
            self.tensors[name] = dict(ne=ne, type=ttype, offset=start, nbytes=nbytes)

    def has(self, name):
        return name in self.tensors

    def tensor(self, name):
        """float64 array with numpy shape reversed(ne): a matrix is [rows = ne[1]][cols = ne[0]]."""
        t = self.tensors.get(name)
        if t is None:
            raise FormatError("missing tensor %s" % name)
        if t["offset"] is None:
            raise FormatError("tensor %s has type %d, not supported" % (name, t["type"]))
        raw = self.data[t["offset"]:t["offset"] + t["nbytes"]]
        shape = tuple(reversed(t["ne"]))
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        return dequantize(raw, t["type"], shape)


# ---------------------------------------------------------------------------------------------
# The model

class Model:
    """Hyperparameters and float64 weights. Matrices are [out][in]: y = W @ x."""

    def __init__(self):
        self.n_vocab = self.dim = self.n_layers = self.n_heads = self.n_kv_heads = 0
        self.head_dim = self.ffn_dim = 0
        self.norm_eps = 1e-5
        self.rope_theta = 10000.0
        self.rope_linear = 1.0     # positions are divided by this
        self.rope_freq_factors = None  # (head_dim/2) divisors of the frequencies, or None
        self.tok_embd = None       # (n_vocab, dim)
        self.out_norm = None       # (dim)
        self.output = None         # (n_vocab, dim)
        self.tied = False
        self.layers = []           # dicts: attn_norm wq wk wv wo ffn_norm w_gate w_up w_down
        self.weight_type = "f32"
        # Names of the matrices stored as Q8_0 ("output", "<layer>.wq", ...), and whether to
        # round the activations entering them to Q8_0 blocks as llama.cpp-style engines do.
        self.q8_mats = set()
        self.act_q8 = False

    def inv_freq(self):
        """Angle of pair i at position p is p * inv_freq[i]."""
        i = np.arange(self.head_dim // 2, dtype=np.float64)
        f = self.rope_theta ** (-2.0 * i / self.head_dim)
        if self.rope_freq_factors is not None:
            f = f / self.rope_freq_factors
        return f / self.rope_linear

    def describe(self):
        return ("n_vocab=%d dim=%d n_layers=%d n_heads=%d n_kv_heads=%d head_dim=%d ffn_dim=%d "
                "norm_eps=%g rope_theta=%g rope_linear=%g rope_freqs=%s tied=%d weights=%s"
                % (self.n_vocab, self.dim, self.n_layers, self.n_heads, self.n_kv_heads,
                   self.head_dim, self.ffn_dim, self.norm_eps, self.rope_theta, self.rope_linear,
                   "yes" if self.rope_freq_factors is not None else "no", self.tied,
                   self.weight_type))


def _kv_get(kv, arch, key, default=None):
    return kv.get("%s.%s" % (arch, key), default)


def load_gguf(path):
    g = GGUF(path)
    arch = g.kv.get("general.architecture", "llama")
    m = Model()
    m.tok_embd = g.tensor("token_embd.weight")
    m.n_vocab, m.dim = m.tok_embd.shape
    m.n_layers = int(_kv_get(g.kv, arch, "block_count"))
    m.n_heads = int(_kv_get(g.kv, arch, "attention.head_count"))
    m.n_kv_heads = int(_kv_get(g.kv, arch, "attention.head_count_kv", m.n_heads))
    m.head_dim = int(_kv_get(g.kv, arch, "attention.key_length", m.dim // m.n_heads))
    m.norm_eps = float(_kv_get(g.kv, arch, "attention.layer_norm_rms_epsilon", 1e-5))
    m.rope_theta = float(_kv_get(g.kv, arch, "rope.freq_base", 10000.0))
    stype = _kv_get(g.kv, arch, "rope.scaling.type", "none")
    if stype == "linear":
        m.rope_linear = float(_kv_get(g.kv, arch, "rope.scaling.factor", 1.0))
    elif _kv_get(g.kv, arch, "rope.scale_linear") is not None:
        m.rope_linear = float(_kv_get(g.kv, arch, "rope.scale_linear"))
    if m.rope_linear <= 0:
        m.rope_linear = 1.0
    if g.has("rope_freqs.weight"):
        m.rope_freq_factors = g.tensor("rope_freqs.weight").reshape(-1)
    m.out_norm = g.tensor("output_norm.weight").reshape(-1)
    if g.has("output.weight"):
        m.output = g.tensor("output.weight")
        out_name = "output.weight"
    else:
        m.output = m.tok_embd
        m.tied = True
        out_name = "token_embd.weight"
    if g.tensors[out_name]["type"] == GGML_Q8_0:
        m.q8_mats.add("output")
    names = dict(wq="attn_q", wk="attn_k", wv="attn_v", wo="attn_output", w_gate="ffn_gate",
                 w_up="ffn_up", w_down="ffn_down")
    for l in range(m.n_layers):
        p = "blk.%d." % l
        m.layers.append(dict(
            attn_norm=g.tensor(p + "attn_norm.weight").reshape(-1),
            wq=g.tensor(p + "attn_q.weight"),
            wk=g.tensor(p + "attn_k.weight"),
            wv=g.tensor(p + "attn_v.weight"),
            wo=g.tensor(p + "attn_output.weight"),
            ffn_norm=g.tensor(p + "ffn_norm.weight").reshape(-1),
            w_gate=g.tensor(p + "ffn_gate.weight"),
            w_up=g.tensor(p + "ffn_up.weight"),
            w_down=g.tensor(p + "ffn_down.weight"),
        ))
        for k, name in names.items():
            if g.tensors[p + name + ".weight"]["type"] == GGML_Q8_0:
                m.q8_mats.add("%d.%s" % (l, k))
    m.ffn_dim = m.layers[0]["w_gate"].shape[0] if m.layers else 0
    m.weight_type = _GGML_TYPES[g.tensors["blk.0.attn_q.weight"]["type"]][0] if m.layers else "f32"
    _check_shapes(m)
    return m


def load_llama2c(path):
    """llama2.c checkpoint: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
    seq_len; vocab_size < 0 means a separate classifier at the end), then float32 tensors."""
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    if len(raw) < 28:
        raise FormatError("%s: too short for a llama2.c header" % path)
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", raw[:28])
    if min(dim, hidden, n_layers, n_heads, n_kv_heads, seq_len) <= 0 or vocab == 0:
        raise FormatError("%s: bad llama2.c header" % path)
    shared = vocab > 0
    vocab = abs(vocab)
    head_size = dim // n_heads
    kv_dim = n_kv_heads * head_size
    floats = np.frombuffer(raw, dtype="<f4", offset=28)
    pos = [0]

    def take(*shape):
        n = int(np.prod(shape))
        if pos[0] + n > len(floats):
            raise FormatError("%s: truncated llama2.c checkpoint" % path)
        a = floats[pos[0]:pos[0] + n].astype(np.float64).reshape(shape)
        pos[0] += n
        return a

    m = Model()
    m.n_vocab, m.dim, m.n_layers, m.n_heads, m.n_kv_heads = vocab, dim, n_layers, n_heads, n_kv_heads
    m.head_dim, m.ffn_dim = head_size, hidden
    m.tok_embd = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    m.out_norm = take(dim)
    fc_real = take(seq_len, head_size // 2)
    fc_imag = take(seq_len, head_size // 2)
    m.output = m.tok_embd if shared else take(vocab, dim)
    m.tied = shared
    for l in range(n_layers):
        m.layers.append(dict(attn_norm=rms_att[l], wq=wq[l], wk=wk[l], wv=wv[l], wo=wo[l],
                             ffn_norm=rms_ffn[l], w_gate=w1[l], w_up=w3[l], w_down=w2[l]))
    # Old checkpoints carry their RoPE tables; they must agree with the frequencies used here
    # (theta 10000), otherwise this reference would silently compute a different model.
    ang = np.outer(np.arange(seq_len, dtype=np.float64), m.inv_freq())
    err = max(np.max(np.abs(fc_real - np.cos(ang))), np.max(np.abs(fc_imag - np.sin(ang))))
    if err > 1e-3 and np.any(fc_real != 0):
        sys.stderr.write("warning: %s: freq_cis tables differ from theta=10000 RoPE by %g\n"
                         % (path, err))
    _check_shapes(m)
    return m


def _check_shapes(m):
    q_dim, kv_dim = m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    if m.n_heads % m.n_kv_heads or m.head_dim % 2:
        raise FormatError("bad head configuration")
    want = dict(attn_norm=(m.dim,), wq=(q_dim, m.dim), wk=(kv_dim, m.dim), wv=(kv_dim, m.dim),
                wo=(m.dim, q_dim), ffn_norm=(m.dim,), w_gate=(m.ffn_dim, m.dim),
                w_up=(m.ffn_dim, m.dim), w_down=(m.dim, m.ffn_dim))
    for l, layer in enumerate(m.layers):
        for k, shape in want.items():
            if layer[k].shape != shape:
                raise FormatError("layer %d %s has shape %s, expected %s"
                                  % (l, k, layer[k].shape, shape))
    if m.output.shape != (m.n_vocab, m.dim) or m.out_norm.shape != (m.dim,):
        raise FormatError("bad output shapes")


def load_model(path):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return load_gguf(path)
    return load_llama2c(path)


# ---------------------------------------------------------------------------------------------
# The forward pass (float64)

def rmsnorm(x, w, eps):
    """x: (n, dim). Each row scaled by 1/sqrt(mean(x^2) + eps), then by w."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, inv_freq):
    """x: (n, heads, head_dim). Rotates adjacent pairs (x[2i], x[2i+1]) of every head by
    position * inv_freq[i]."""
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


class KVCache:
    def __init__(self, m):
        self.k = [np.zeros((0, m.n_kv_heads, m.head_dim)) for _ in range(m.n_layers)]
        self.v = [np.zeros((0, m.n_kv_heads, m.head_dim)) for _ in range(m.n_layers)]

    @property
    def n_tokens(self):
        return self.k[0].shape[0] if self.k else 0


def quantize_q8_rows(x):
    """x (n, cols) rounded to Q8_0-style blocks of 32: per block d = max|x| / 127 and
    q = round(x / d) (half to even), giving q * d. This is what an engine does to activations
    before an int8 dot product with Q8_0 weights; the scale is kept exact here."""
    n, cols = x.shape
    b = x.reshape(n, cols // 32, 32)
    d = np.abs(b).max(axis=2, keepdims=True) / 127.0
    q = np.round(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
    return (q * d).reshape(n, cols)


def matmul(m, x, w, name):
    """y = x @ W^T, with x rounded to Q8_0 blocks first when emulating that for this matrix."""
    if m.act_q8 and name in m.q8_mats:
        x = quantize_q8_rows(x)
    return x @ w.T


def forward(m, tokens, cache=None):
    """Logits (n, n_vocab) float64 of the new tokens, which sit at positions cache.n_tokens...
    With cache=None the tokens are a whole sequence starting at position 0."""
    if cache is None:
        cache = KVCache(m)
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.min() < 0 or tokens.max() >= m.n_vocab:
        raise ValueError("token id outside the vocabulary")
    n, n_past = len(tokens), cache.n_tokens
    pos = np.arange(n_past, n_past + n)
    inv_freq = m.inv_freq()
    group = m.n_heads // m.n_kv_heads
    scale = 1.0 / math.sqrt(m.head_dim)
    # Causal mask: new row i (position n_past + i) sees cached keys 0 .. n_past + i.
    mask = np.arange(n_past + n)[None, :] > pos[:, None]
    x = m.tok_embd[tokens].copy()
    for l, w in enumerate(m.layers):
        h = rmsnorm(x, w["attn_norm"], m.norm_eps)
        q = matmul(m, h, w["wq"], "%d.wq" % l).reshape(n, m.n_heads, m.head_dim)
        k = matmul(m, h, w["wk"], "%d.wk" % l).reshape(n, m.n_kv_heads, m.head_dim)
        v = matmul(m, h, w["wv"], "%d.wv" % l).reshape(n, m.n_kv_heads, m.head_dim)
        q = rope(q, pos, inv_freq)
        k = rope(k, pos, inv_freq)
        cache.k[l] = np.concatenate([cache.k[l], k])
        cache.v[l] = np.concatenate([cache.v[l], v])
        K, V = cache.k[l], cache.v[l]
        att = np.empty((n, m.n_heads, m.head_dim))
        for hd in range(m.n_heads):
            kvh = hd // group
            s = (q[:, hd, :] @ K[:, kvh, :].T) * scale
            s = np.where(mask, -np.inf, s)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            att[:, hd, :] = s @ V[:, kvh, :]
        x = x + matmul(m, att.reshape(n, -1), w["wo"], "%d.wo" % l)
        h = rmsnorm(x, w["ffn_norm"], m.norm_eps)
        ff = silu(matmul(m, h, w["w_gate"], "%d.w_gate" % l)) * matmul(m, h, w["w_up"],
                                                                        "%d.w_up" % l)
        x = x + matmul(m, ff, w["w_down"], "%d.w_down" % l)
    x = rmsnorm(x, m.out_norm, m.norm_eps)
    return matmul(m, x, m.output, "output")


def greedy(m, bos, steps):
    """Token ids of `steps` greedy steps from [bos], with a KV cache (one token per step).
    Returns (ids, logits of the first positions as a list of arrays)."""
    cache = KVCache(m)
    tok = bos
    ids, first = [], []
    for _ in range(steps):
        logits = forward(m, [tok], cache)[0]
        if len(first) < 3:
            first.append(logits)
        tok = int(np.argmax(logits))
        ids.append(tok)
    return ids, first


# ---------------------------------------------------------------------------------------------
# Command line

def check_golden(m, path, steps):
    with open(path) as f:
        gold = json.load(f)
    bos = int(gold.get("bos", 1))
    want_ids = [int(t) for t in gold["next_token_ids"]]
    want_logits = np.asarray(gold["logits_first3_positions"], dtype=np.float64)
    steps = min(steps or len(want_ids), len(want_ids))
    ids, _ = greedy(m, bos, steps)
    # The golden logits belong to the sequence BOS, next[0], next[1]: compute them with one
    # full-sequence forward, independent of the cached greedy path.
    seq = [bos] + want_ids[:want_logits.shape[0] - 1]
    got = forward(m, seq)
    abs_err = np.max(np.abs(got - want_logits))
    rel_err = np.max(np.abs(got - want_logits).max(axis=1) / np.abs(want_logits).max(axis=1))
    n_same = next((i for i, (a, b) in enumerate(zip(ids, want_ids)) if a != b), steps)
    print("logits: %d positions, max abs err %.3e, max rel err %.3e"
          % (want_logits.shape[0], abs_err, rel_err))
    print("greedy: %d/%d steps match%s" % (n_same, steps,
          "" if n_same == steps else " (first mismatch at step %d: %d vs %d)"
          % (n_same, ids[n_same], want_ids[n_same])))
    return abs_err <= 1e-4 and n_same == steps


def dequant_self_test():
    """Known encodings of each tensor type decode to known values."""
    f32 = struct.pack("<2f", 1.5, -2.0)
    f16 = struct.pack("<2H", 0x3C00, 0xC000)              # 1.0, -2.0
    bf16 = struct.pack("<2H", 0x3FC0, 0xC040)             # 1.5, -3.0
    q8 = struct.pack("<H", 0x3800) + bytes(range(32))      # scale 0.5, qs 0..31
    q8 += struct.pack("<H", 0xBC00) + struct.pack("<32b", *range(-16, 16))  # scale -1
    ok = (np.array_equal(dequantize(f32, GGML_F32, (2,)), [1.5, -2.0])
          and np.array_equal(dequantize(f16, GGML_F16, (2,)), [1.0, -2.0])
          and np.array_equal(dequantize(bf16, GGML_BF16, (2,)), [1.5, -3.0])
          and np.array_equal(dequantize(q8, GGML_Q8_0, (2, 32)),
                             [np.arange(32) * 0.5, -np.arange(-16.0, 16.0)]))
    print("self-test: dequantization %s" % ("ok" if ok else "WRONG"))
    return ok


def self_test(m):
    """The cached incremental path and the full-sequence path must agree."""
    if not dequant_self_test():
        return False
    rng = np.random.default_rng(1)
    seq = rng.integers(0, m.n_vocab, size=12)
    full = forward(m, seq)
    cache = KVCache(m)
    parts = [forward(m, seq[:5], cache)] + [forward(m, [t], cache) for t in seq[5:9]]
    parts.append(forward(m, seq[9:], cache))
    inc = np.concatenate(parts)
    err = np.max(np.abs(full - inc))
    print("self-test: full vs incremental max abs diff %.3e" % err)
    return err < 1e-10


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help=".gguf or llama2.c .bin checkpoint")
    ap.add_argument("--tokens", action="append", default=[],
                    help="comma-separated token ids of one sequence (repeatable)")
    ap.add_argument("--tokens-file", help="one sequence per line, comma-separated ids")
    ap.add_argument("--out", help="where to write float32 logits [total_positions][n_vocab]")
    ap.add_argument("--check-golden", metavar="JSON", help="golden file to compare with")
    ap.add_argument("--steps", type=int, default=0, help="greedy steps to check (0: all)")
    ap.add_argument("--greedy", type=int, default=0, help="print N greedy ids from BOS")
    ap.add_argument("--bos", type=int, default=1)
    ap.add_argument("--info", action="store_true", help="print the hyperparameters")
    ap.add_argument("--act-q8", action="store_true",
                    help="round activations to Q8_0 blocks before products with Q8_0 weights "
                         "(emulates llama.cpp-style int8 dot products; exact otherwise)")
    ap.add_argument("--self-test", action="store_true",
                    help="check the KV-cached path against the full-sequence path")
    a = ap.parse_args(argv)
    try:
        m = load_model(a.model)
    except (FormatError, OSError, KeyError, TypeError, ValueError) as e:
        sys.stderr.write("llama_ref: cannot load %s: %s\n" % (a.model, e))
        return 2
    m.act_q8 = a.act_q8
    ok = True
    if a.info:
        print(m.describe())
    if a.self_test:
        ok = self_test(m) and ok
    seqs = [s for s in a.tokens]
    if a.tokens_file:
        with open(a.tokens_file) as f:
            seqs += [line.strip() for line in f if line.strip()]
    if seqs:
        if not a.out:
            sys.stderr.write("llama_ref: --tokens needs --out\n")
            return 2
        rows = [forward(m, [int(t) for t in s.split(",")]) for s in seqs]
        tmp = a.out + ".part"
        np.concatenate(rows).astype("<f4").tofile(tmp)
        os.replace(tmp, a.out)
    if a.greedy:
        ids, _ = greedy(m, a.bos, a.greedy)
        print(",".join(str(i) for i in ids))
    if a.check_golden:
        ok = check_golden(m, a.check_golden, a.steps) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
