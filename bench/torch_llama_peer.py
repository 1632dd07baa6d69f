#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""torch_llama_peer.py - the peer figures for baton-bench-cuda: PyTorch/transformers running a
LlamaForCausalLM of the same shape as baton's synthetic presets, with random bf16 weights, in
the same shapes baton-bench-cuda measures: decode step time at several batch sizes over a fixed
context (one token per sequence, KV cache in place) and prefill time of single prompts.

The one thing to know: the model is built from a config, never downloaded, so the figures need
no network; each attention implementation asked for (eager, sdpa) is measured in turn, and
times are wall-clock around synchronized forwards, as baton's are.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

PRESETS = {
    # name: (dim, layers, heads, kv_heads, ffn, vocab, rope_theta, tied)
    "110m": (768, 12, 12, 12, 2048, 32000, 10000.0, True),
    "1b": (2048, 16, 32, 8, 8192, 128256, 500000.0, True),
}


def build(preset, attn):
    from transformers import LlamaConfig, LlamaForCausalLM

    dim, layers, heads, kv, ffn, vocab, theta, tied = PRESETS[preset]
    cfg = LlamaConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=ffn, vocab_size=vocab,
                      rope_theta=theta, tie_word_embeddings=tied, rms_norm_eps=1e-5,
                      max_position_embeddings=8192, attn_implementation=attn)
    torch.manual_seed(1)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


def forward(model, ids, cache=None):
    kw = {"use_cache": True, "past_key_values": cache}
    try:
        return model(ids, logits_to_keep=1, **kw)
    except TypeError:
        return model(ids, num_logits_to_keep=1, **kw)


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


@torch.inference_mode()
def decode_step_ms(model, batch, ctx, steps, vocab):
    ids = torch.randint(3, vocab, (batch, ctx), device="cuda")
    out = forward(model, ids)
    cache = out.past_key_values
    tok = torch.full((batch, 1), 100, device="cuda")
    out = forward(model, tok, cache)  # warm-up step
    cache = out.past_key_values
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = forward(model, tok, cache)
        cache = out.past_key_values
        out.logits.float().cpu()  # baton downloads the logits every step, too
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


@torch.inference_mode()
def prefill_ms(model, tokens, reps, vocab):
    ids = torch.randint(3, vocab, (1, tokens), device="cuda")
    forward(model, ids)
    ts = [timed(lambda: forward(model, ids).logits.float().cpu())[0] for _ in range(reps)]
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="1b", choices=sorted(PRESETS))
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--prefills", default="512,2048")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_llama_peer: no CUDA device", file=sys.stderr)
        return 77
    import transformers

    res = {"device": torch.cuda.get_device_name(0), "preset": a.preset,
           "torch": torch.__version__, "transformers": transformers.__version__, "runs": []}
    print(f"device {res['device']}  torch {torch.__version__}  transformers "
          f"{transformers.__version__}  preset {a.preset} bf16")
    vocab = PRESETS[a.preset][5]
    for attn in a.attn.split(","):
        model = build(a.preset, attn)
        run = {"attn": attn, "decode": [], "prefill": []}
        for b in map(int, a.batches.split(",")):
            ms = decode_step_ms(model, b, a.ctx, a.steps, vocab)
            print(f"transformers[{attn}] decode batch {b:<4d} ctx {a.ctx}: {ms:8.3f} ms/step")
            run["decode"].append({"batch": b, "ctx": a.ctx, "step_ms": ms})
        for t in map(int, a.prefills.split(",")):
            ms = prefill_ms(model, t, a.reps, vocab)
            print(f"transformers[{attn}] prefill {t:5d} tokens:   {ms:8.3f} ms")
            run["prefill"].append({"tokens": t, "ms": ms})
        res["runs"].append(run)
        del model
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
