#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs baton-kvbench and ucx_perftest side by side at the same sizes on this machine.

For each size, alternates the two programs so that both see the same machine state, repeats
everything --repeat times and reports each program's best bandwidth (other jobs on a shared
machine only ever lower a figure) and the median latency. Both are pinned the same way (receiver/server on
CPU 0, sender/client on CPU 1). baton-kvbench runs over "shm" (one host, data copied out of the
mapped sender pool), "cma" (one host, data through UCX rendezvous), "tcp" (kvx's own TCP data
connection) and "tcp-ucx" (UCX's TCP transport); ucx_perftest runs
over UCX_TLS=sm (compared with shm and cma) and UCX_TLS=tcp: its two-sided tests (tag_bw,
ucp_am_bw on the UCX-allocated shared memory it uses by default, tag_bw again on heap memory,
which is what an engine's pool is) and its one-sided tests (ucp_get, ucp_put_bw).

A layer-wise transfer is one message per layer, so the two-sided tests also run at one layer's
size (kvbench's default geometry), for the layer-wise column to be read against.

Prints a markdown table (and the raw JSON lines with --raw). Example:
    python3 kvx/kvbench_compare.py --build build --repeat 3
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

SIZES = ["64K", "256K", "1M", "4M", "16M", "64M", "256M", "1G"]
# baton-kvbench transport -> the UCX transports ucx_perftest gets for the same link.
TLS = {"shm": "sm", "cma": "sm", "tcp": "tcp", "tcp-ucx": "tcp"}
TCP_TUNED = {"UCX_TCP_TX_SEG_SIZE": "64K", "UCX_TCP_RX_SEG_SIZE": "256K"}  # as kvx sets them
TWO_SIDED = [("tag_bw", {}), ("ucp_am_bw", {}), ("tag_bw", {"UCX_ALLOC_PRIO": "heap"}),
             ("tag_bw", TCP_TUNED)]
ONE_SIDED = [("ucp_get", {}), ("ucp_put_bw", {})]
ONE_SIDED_TCP_MAX = 16 << 20  # UCX 1.13 emulates RMA over TCP at ~0.1 GB/s: keep it short
LAYER_BYTES = 64 << 10  # kvbench's default geometry: 64 KiB per block and layer
MAX_LAYERS = 32


def layer_msg_bytes(size):
    """The size of one layer of a kvbench request (its default Llama-3-8B geometry): a
    layer-wise transfer is that many messages of this size, released one at a time."""
    return size // max(1, min(MAX_LAYERS, size // LAYER_BYTES))


def size_bytes(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mul[s[-1]]) if s[-1] in mul else int(s)


def cpu_idle(seconds=2.0):
    """Fraction of CPU time idle over the next few seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait_s):
    """Waits (up to max_wait_s) until other programs leave the CPUs idle, since both benchmarks
    spin on both cores and a third busy process distorts them (the machine is shared)."""
    end = time.time() + max_wait_s
    while time.time() < end and cpu_idle() < 0.93:
        pass


def perftest(test, tls, size, extra_env, budget=1 << 30):
    """One ucx_perftest run moving about budget bytes; returns GB/s (1e9 B/s) or None."""
    env = dict(os.environ, UCX_TLS=tls, **extra_env)
    port = str(20000 + random.randrange(20000))
    iters = max(8, min(2000, budget // size))
    server = subprocess.Popen(["ucx_perftest", "-p", port, "-c", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = subprocess.run(["ucx_perftest", "127.0.0.1", "-p", port, "-c", "1", "-t", test,
                              "-s", str(size), "-n", str(iters), "-w", str(max(2, iters // 10)),
                              "-f", "-v"], env=env, capture_output=True, text=True,
                             timeout=300).stdout
    finally:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    lines = [l.strip() for l in out.splitlines() if l.strip()[:1].isdigit()]
    if not lines:
        return None
    # iterations, typical lat, avg lat, overall lat, avg bw, overall bw (MiB/s), ...
    return float(lines[-1].split(",")[5]) * (1 << 20) / 1e9


def kvbench(binary, transport, size):
    # "tcp-ucx": kvbench over UCX's own TCP transport instead of kvx's TCP data connection.
    args = ["--transport", "tcp", "--stream", "off"] if transport == "tcp-ucx" else \
        ["--transport", transport]
    out = subprocess.run([binary, "--json", "--pin", "--sizes", size] + args,
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return []
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build", help="build directory (bin/baton-kvbench)")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--transports", default="shm,cma,tcp")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--raw", action="store_true", help="also print every JSON line")
    ap.add_argument("--wait-quiet", type=float, default=900,
                    help="seconds to wait for idle CPUs before each size (default 900)")
    a = ap.parse_args()
    binary = os.path.join(a.build, "bin", "baton-kvbench")
    res = {}
    transports = a.transports.split(",")
    for rep in range(a.repeat):
        for sz in a.sizes.split(","):
            wait_quiet(a.wait_quiet)
            for tr in transports:
                for r in kvbench(binary, tr, sz):
                    res.setdefault((tr, sz, "kvbench-" + r["mode"]), []).append(r)
                    if a.raw:
                        print(json.dumps(r), flush=True)
            for tls in sorted({TLS[t] for t in transports}):
                tests = [t for t in TWO_SIDED if tls == "tcp" or t[1] is not TCP_TUNED]
                tests += ONE_SIDED if tls != "tcp" or size_bytes(sz) <= ONE_SIDED_TCP_MAX else []
                # The two-sided tests again at one layer's size: what a layer-wise transfer's
                # messages are (there is no such run where a layer is the whole request).
                lsz = layer_msg_bytes(size_bytes(sz))
                for test in ("tag_bw", "ucp_am_bw") if lsz < size_bytes(sz) else ():
                    gbps = perftest(test, tls, lsz, {})
                    rec = {"program": "ucx_perftest", "test": test, "tls": tls,
                           "size_bytes": lsz, "gb_per_s": gbps}
                    res.setdefault((tls, sz, "layer-" + test), []).append(rec)
                    if a.raw:
                        print(json.dumps(rec), flush=True)
                for test, env in tests:
                    slow = tls == "tcp" and (test, env) in ONE_SIDED
                    gbps = perftest(test, tls, size_bytes(sz), env, 64 << 20 if slow else 1 << 30)
                    name = test + ("-heap" if "UCX_ALLOC_PRIO" in env else
                                   "-tuned" if env is TCP_TUNED else "")
                    rec = {"program": "ucx_perftest", "test": name, "tls": tls,
                           "size_bytes": size_bytes(sz), "gb_per_s": gbps}
                    res.setdefault((tls, sz, name), []).append(rec)
                    if a.raw:
                        print(json.dumps(rec), flush=True)
    # Bandwidth: each program's best of the repeats (interference from other jobs only ever
    # lowers a figure); latency: the median.
    def med(k, f="gb_per_s"):
        v = [r[f] for r in res.get(k, []) if r[f] is not None]
        if not v:
            return float("nan")
        return max(v) if f == "gb_per_s" else statistics.median(v)
    print("| transport | size | kvbench whole GB/s | kvbench layer GB/s | whole p50 / p99 us |"
          " perftest tag / am / tag heap / tag tuned | perftest get / put | best two-sided |"
          " best of all |"
          " whole / best two-sided | whole / best of all | layer / best of all |"
          " perftest tag / am at a layer's size | layer / best at a layer's size |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for tr in transports:
        tls = TLS[tr]
        for sz in a.sizes.split(","):
            w, l = med((tr, sz, "kvbench-whole")), med((tr, sz, "kvbench-layer"))
            p50 = med((tr, sz, "kvbench-whole"), "p50_us")
            p99 = med((tr, sz, "kvbench-whole"), "p99_us")
            two = [med((tls, sz, n)) for n in ("tag_bw", "ucp_am_bw", "tag_bw-heap",
                                                "tag_bw-tuned")]
            one = [med((tls, sz, n)) for n in ("ucp_get", "ucp_put_bw")]
            best2 = max([x for x in two if x == x] or [nan])
            best = max([x for x in two + one if x == x] or [nan])
            lay = [med((tls, sz, "layer-" + n)) for n in ("tag_bw", "ucp_am_bw")]
            lbest = max([x for x in lay if x == x] or [best])
            print(f"| {tr} | {sz} | {w:.2f} | {l:.2f} | {p50:.0f} / {p99:.0f} |"
                  f" {two[0]:.2f} / {two[1]:.2f} / {two[2]:.2f} / {two[3]:.2f} |"
                  f" {one[0]:.2f} / {one[1]:.2f} |"
                  f" {best2:.2f} | {best:.2f} | {w / best2:.0%} | {w / best:.0%} |"
                  f" {l / best:.0%} | {lay[0]:.2f} / {lay[1]:.2f} | {l / lbest:.0%} |",
                  flush=True)


if __name__ == "__main__":
    main()
