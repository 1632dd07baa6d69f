#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Serving on a backend, end to end: starts a colocated cluster and a 1 prefill + 1 decode cluster
# with `baton up --backend B`, sends the same greedy requests to both, and requires the same
# tokens from both (the decode daemon continues from KV shipped between the two processes, so
# this checks the transfer of a KV pool living in that backend's memory). A colocated cluster
# on the cpu backend runs the same requests for comparison (reported, not required: backends
# agree to rounding, not bit for bit). With the cuda backend, a colocated cluster whose daemon
# runs decode steps as CUDA graphs must give the colocated cluster's tokens too.
# deploy/device-check.sh runs it with the cuda backend.
#
#   deploy/serve-check.sh BUILD_DIR BACKEND RESULTS_DIR
set -uo pipefail
# shellcheck source=deploy/up-wait.sh
. "$(dirname "$0")/up-wait.sh"
BUILD=$1
BACKEND=$2
RESULTS=$3
BIN=$BUILD/bin
mkdir -p "$RESULTS"
MODEL=$RESULTS/serve-15m-bf16.gguf
N_REQ=6
"$BIN/baton" model gen --preset 15m --type bf16 --out "$MODEL" >/dev/null || exit 1

prompt() { # a fixed, varied prompt for request $1
    local words=(the river ran past old stone houses while a small dog watched quietly)
    local n=$((3 + $1 * 3)) out="" i
    for ((i = 0; i < n; i++)); do out="$out ${words[$(((i * 7 + $1) % ${#words[@]}))]}"; done
    echo "$out"
}

# serve NAME PORT [baton up options...]: writes the ids of every request to RESULTS/ids-NAME.txt
serve() {
    local name=$1 port=$2
    shift 2
    local log=$RESULTS/up-$name.log ids=$RESULTS/ids-$name.txt
    : >"$ids"
    "$BIN/baton" up --model "$MODEL" --port "$port" --kv-type bf16 --log-dir "$RESULTS/logs-$name" \
        "$@" >"$log" 2>&1 &
    local up=$!
    up_wait "$name" $up "$log" 60 || return 1
    local i rc=0
    for ((i = 0; i < N_REQ; i++)); do
        local out
        out=$(timeout 60 "$BIN/baton" generate --router "tcp://127.0.0.1:$port" \
            --prompt "$(prompt $i)" -n 24 --temp 0 --ignore-eos --json 2>/dev/null)
        local line
        line=$(echo "$out" | grep -m1 '"ids"')
        if [ -z "$line" ]; then
            echo "$name: request $i failed"
            rc=1
        fi
        echo "$i $line" >>"$ids"
    done
    kill -INT $up
    wait $up || { echo "$name: baton up did not stop cleanly"; rc=1; }
    return $rc
}

status=0
serve "$BACKEND-colocated" 5701 --backend "$BACKEND" --colocated 1 || status=1
serve "$BACKEND-1p1d" 5711 --backend "$BACKEND" --prefill 1 --decode 1 || status=1
if [ $status = 0 ] && cmp -s "$RESULTS/ids-$BACKEND-colocated.txt" "$RESULTS/ids-$BACKEND-1p1d.txt"; then
    echo "$BACKEND: colocated and 1P1D gave the same tokens for $N_REQ greedy requests"
else
    echo "$BACKEND: colocated and 1P1D differ (or failed):"
    diff "$RESULTS/ids-$BACKEND-colocated.txt" "$RESULTS/ids-$BACKEND-1p1d.txt" | head -20
    status=1
fi
if [ "$BACKEND" = cuda ]; then
    # Decode steps as CUDA graphs in a serving daemon (off by default until this passes on a
    # device): the same tokens as the colocated cluster above, and a replay that misses its
    # key stops the daemon (BATON_CUDA_GRAPHS=2) instead of quietly running op by op.
    if BATON_CUDA_GRAPHS=2 serve cuda-graphs-colocated 5731 --backend cuda --colocated 1 &&
        cmp -s "$RESULTS/ids-cuda-colocated.txt" "$RESULTS/ids-cuda-graphs-colocated.txt"; then
        echo "cuda: a colocated daemon on CUDA graphs gave the same tokens for $N_REQ requests"
    else
        echo "cuda: the colocated daemon on CUDA graphs differs (or failed):"
        diff "$RESULTS/ids-cuda-colocated.txt" "$RESULTS/ids-cuda-graphs-colocated.txt" | head -20
        status=1
    fi
fi
if [ "$BACKEND" != cpu ] && serve cpu-colocated 5721 --backend cpu --colocated 1; then
    same=$(paste -d'\n' "$RESULTS/ids-$BACKEND-colocated.txt" "$RESULTS/ids-cpu-colocated.txt" |
        paste - - | awk -F'\t' '$1 == $2' | wc -l)
    echo "$BACKEND against cpu: $same of $N_REQ requests gave the same tokens (informational)"
fi
exit $status
