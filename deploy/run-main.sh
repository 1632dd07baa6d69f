#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds baton and runs its main job: `baton up` starts a router, one prefill and one decode
# daemon on the embedded default model (the synthetic 110m preset in Q8_0, written to
# build/models the first time), then a short load run goes through the router: one streamed
# request, then a burst of concurrent ones, each printing its timings and the instances that
# served it, then `baton status`. The cluster is stopped cleanly at the end (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)
PORT=${BATON_MAIN_PORT:-5555}
ROUTER=tcp://127.0.0.1:$PORT

bash deploy/install-deps.sh
cmake -S . -B build >/dev/null
cmake --build build -j"$JOBS"

mkdir -p build/logs
UP_OUT=build/logs/up.out
build/bin/baton up --port "$PORT" --log-dir build/logs >"$UP_OUT" &
UP=$!
stop_cluster() {
    if kill -0 "$UP" 2>/dev/null; then
        kill -INT "$UP"
        wait "$UP" || true
    fi
}
trap stop_cluster EXIT

# baton up prints its endpoint once the router reports the cluster healthy.
until grep -q "serving on" "$UP_OUT"; do
    if ! kill -0 "$UP" 2>/dev/null; then
        echo "baton up failed; logs in build/logs" >&2
        exit 1
    fi
    sleep 0.2
done
cat "$UP_OUT"

echo "== one request, streamed"
build/bin/baton generate --router "$ROUTER" --prompt "Once upon a time" -n 64 --seed 1 --stream
echo

echo "== 8 concurrent requests"
pids=()
for i in $(seq 1 8); do
    build/bin/baton generate --router "$ROUTER" --prompt "Story number $i:" -n 48 --seed "$i" \
        >"build/logs/generate-$i.txt" 2>"build/logs/generate-$i.err" &
    pids+=($!)
done
failed=0
for i in $(seq 1 8); do
    wait "${pids[$((i - 1))]}" || failed=1
    tail -n 1 "build/logs/generate-$i.err"
done
if [ "$failed" -ne 0 ]; then
    echo "some requests failed; logs in build/logs" >&2
    exit 1
fi

echo
echo "== the cluster as its router sees it (baton status)"
build/bin/baton status --router "$ROUTER" || exit 1

stop_cluster
trap - EXIT
echo "cluster stopped; logs in build/logs"
