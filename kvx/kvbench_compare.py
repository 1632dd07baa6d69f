#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Runs baton-kvbench and ucx_perftest side by side at the same sizes on this machine.

For each transport (UCX shared memory, UCX TCP) and size, alternates the two programs so that
both see the same machine state, repeats everything --repeat times and reports medians. Both
are pinned the same way (receiver/server on CPU 0, sender/client on CPU 1). ucx_perftest runs
its two-sided tests (tag_bw, ucp_am_bw) on the memory it allocates by default (UCX shared
memory segments), and tag_bw once more on heap memory (UCX_ALLOC_PRIO=heap), which is what a
KV pool allocated by the engine is; the one-sided tests are reported for reference.

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
TLS = {"shm": "sm", "tcp": "tcp"}
PERFTESTS = [("tag_bw", {}), ("ucp_am_bw", {}), ("tag_bw", {"UCX_ALLOC_PRIO": "heap"}),
             ("ucp_get", {}), ("ucp_put_bw", {})]


def size_bytes(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mul[s[-1]]) if s[-1] in mul else int(s)


def perftest(test, tls, size, extra_env):
    """One ucx_perftest run; returns GB/s (1e9 bytes per second) or None."""
    env = dict(os.environ, UCX_TLS=tls, **extra_env)
    port = str(20000 + random.randrange(20000))
    iters = max(8, min(2000, (1 << 30) // size))
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
    lines = [l for l in out.splitlines() if l and l[0].isdigit()]
    if not lines:
        return None
    # iterations, typical lat, avg lat, overall lat, avg bw, overall bw (MiB/s), ...
    return float(lines[-1].split(",")[5]) * (1 << 20) / 1e9


def kvbench(binary, transport, size):
    out = subprocess.run([binary, "--json", "--pin", "--transport", transport, "--sizes", size],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return []
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build", help="build directory (bin/baton-kvbench)")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--transports", default="shm,tcp")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--raw", action="store_true", help="also print every JSON line")
    a = ap.parse_args()
    binary = os.path.join(a.build, "bin", "baton-kvbench")
    res = {}
    for rep in range(a.repeat):
        for tr in a.transports.split(","):
            for sz in a.sizes.split(","):
                for r in kvbench(binary, tr, sz):
                    key = (tr, sz, "kvbench-" + r["mode"])
                    res.setdefault(key, []).append(r)
                    if a.raw:
                        print(json.dumps(r))
                for test, env in PERFTESTS:
                    gbps = perftest(test, TLS[tr], size_bytes(sz), env)
                    name = test + ("-heap" if env else "")
                    rec = {"program": "ucx_perftest", "test": name, "transport": tr,
                           "size_bytes": size_bytes(sz), "gb_per_s": gbps}
                    res.setdefault((tr, sz, name), []).append(rec)
                    if a.raw:
                        print(json.dumps(rec))
    med = lambda k, f="gb_per_s": (statistics.median([r[f] for r in res[k] if r[f] is not None])
                                   if k in res and any(r[f] is not None for r in res[k])
                                   else float("nan"))
    print("| transport | size | kvbench whole GB/s | kvbench layer GB/s | whole p50 / p99 us |"
          " perftest tag_bw | perftest am_bw | perftest tag_bw (heap) | best two-sided |"
          " whole / best | layer / best | perftest get / put (one-sided) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tr in a.transports.split(","):
        for sz in a.sizes.split(","):
            w, l = med((tr, sz, "kvbench-whole")), med((tr, sz, "kvbench-layer"))
            p50, p99 = med((tr, sz, "kvbench-whole"), "p50_us"), med((tr, sz, "kvbench-whole"),
                                                                      "p99_us")
            tag, am, heap = (med((tr, sz, "tag_bw")), med((tr, sz, "ucp_am_bw")),
                             med((tr, sz, "tag_bw-heap")))
            best = max(x for x in (tag, am, heap) if x == x) if any(
                x == x for x in (tag, am, heap)) else float("nan")
            get, put = med((tr, sz, "ucp_get")), med((tr, sz, "ucp_put_bw"))
            print(f"| {tr} | {sz} | {w:.2f} | {l:.2f} | {p50:.0f} / {p99:.0f} | {tag:.2f} |"
                  f" {am:.2f} | {heap:.2f} | {best:.2f} | {w / best:.0%} | {l / best:.0%} |"
                  f" {get:.2f} / {put:.2f} |")


if __name__ == "__main__":
    main()
