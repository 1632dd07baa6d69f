#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# baton-bench-router end to end, briefly, with each load generator: the libzmq one (stubs and
# clients on their own threads and libzmq sockets) and the ZMTP one (all on one thread, over
# common/zmtp.c's connecting sockets), on ipc and on loopback TCP endpoints, with the router
# polling or busy-polling (over TCP, the ZMTP generator's kernel-stamped columns and the
# router's own input wait); a router that cannot start; and the probe of the machine's own
# stalls. A real router process serves stub daemons and clients; every point
# must complete requests at about the rate offered, with none failed or lost, and report
# latency samples. The figures themselves are not judged here (this is a shared CI
# machine); docs/PERFORMANCE.md has them.
set -euo pipefail
BIN=${BATON_BINARY_DIR:?}/bin
fail() { echo "FAIL: $*" >&2; exit 1; }

for gen in libzmq zmtp; do
    for extra in "" "--busy-poll" "--transport tcp"; do
        read -r -a xa <<<"$extra"
        out=$("$BIN/baton-bench-router" --generator "$gen" "${xa[@]}" --loads 1,8 --rates 500 \
            --seconds 1 --warmup-ms 300)
        echo "$out"
        grep -q "(errors!)" <<<"$out" && fail "$gen $extra: a point had failed or lost requests"
        grep -q "could not send" <<<"$out" && fail "$gen $extra: the open loop fell behind"
        # load, requests/s, ..., added p99: each point's rate and samples must be there
        awk -v gen="$gen" '
            /in flight|\/s / && $1 != "load" {
                n++
                rate = ($2 == "in") ? $4 : $2
                if ($0 ~ /\/s /) { offered = $1; sub(/\/s/, "", offered) }
                if (rate <= 0) { print gen ": no requests completed: " $0; bad = 1 }
                if ($0 ~ /\/s / && (rate < 0.8 * offered || rate > 1.2 * offered)) {
                    print gen ": " rate "/s for " offered "/s offered"; bad = 1
                }
                if ($NF <= 0) { print gen ": no added-latency samples: " $0; bad = 1 }
            }
            END { if (n != 3) { print gen ": " n " points, want 3"; bad = 1 } exit bad }
        ' <<<"$out" || fail "$gen $extra: points missing or empty"
        if [ "$gen $extra" = "zmtp --transport tcp" ]; then
            # the kernel's receive stamps: the socket columns, and the router's own input wait
            # after each of the three points
            grep -q "sock add p99" <<<"$out" || fail "zmtp over tcp: no socket-stamped columns"
            [ "$(grep -c "input wait the router read [1-9]" <<<"$out")" = 3 ] ||
                fail "zmtp over tcp: the router's input wait is missing after a point"
        fi
    done
done

# A router that does not start (here: one that exits at once, as one whose port another
# process took) is tried again on other ports, then reported with a failing status, not a hang
if out=$("$BIN/baton-bench-router" --router /bin/false --transport tcp --loads 1 --seconds 1 2>&1); then
    fail "a router that never started was not reported: $out"
fi
[ "$(grep -c 'the router did not start on tcp://127.0.0.1:' <<<"$out")" = 5 ] ||
    fail "want five attempts on fresh ports: $out"

# --stall-probe-ms: before each point, a line with the share of a busy loop's time each CPU lost
out=$("$BIN/baton-bench-router" --generator zmtp --loads 1 --seconds 1 --warmup-ms 100 \
    --stall-probe-ms 200 --router-cpu 1 --bench-cpu 0)
echo "$out"
n=$(grep -cE '^ *stalls CPU [01]: [0-9.]+% of 200 ms lost in [0-9]+ gaps .*; CPU [01]: [0-9.]+% of 200 ms' <<<"$out" || true)
[ "$n" = 1 ] || fail "--stall-probe-ms: $n stall lines, want 1"
echo "ok"
