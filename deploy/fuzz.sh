#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs fuzzing campaigns (docs/fuzzing.md): builds the libFuzzer targets of fuzz/ with clang
# under ASan+UBSan in build-fuzz, runs each named target (default: all) for SECONDS (default
# 300) from its checked-in corpus, one process per target at a time (libFuzzer's fork mode, so
# a crash is saved and the campaign goes on), then adds to the corpus the inputs that reached
# code it did not. Findings land in build-fuzz/findings/<target>/
# (crash-*, timeout-*, oom-*); the script exits 1 when there are any.
#   deploy/fuzz.sh [SECONDS [TARGET...]]      e.g. deploy/fuzz.sh 600 zmtp rpc
# FUZZ_JOBS (default 1) runs that many fuzzing processes per target.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-300}
shift || true

bash deploy/install-deps.sh
if ! command -v clang >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y -qq --no-install-recommends clang
fi
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DBATON_FUZZ=ON -DBATON_SANITIZE=ON \
    -DBATON_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_*.c; do
        t=$(basename "$f" .c)
        targets+=("${t#fuzz_}")
    done
fi
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

found=0
for t in "${targets[@]}"; do
    work=build-fuzz/work/$t
    out=build-fuzz/findings/$t
    mkdir -p "$work" "$out"
    max_len=()
    if [ "$t" = model ]; then max_len=(-max_len=32768); fi # the seed models are up to 27 KB
    echo "fuzz_$t: ${SECONDS_EACH}s"
    build-fuzz/fuzz/fuzz_"$t" -fork="${FUZZ_JOBS:-1}" -ignore_crashes=1 -ignore_timeouts=1 \
        -ignore_ooms=1 -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 \
        "${max_len[@]}" -artifact_prefix="$out/" "$work" "fuzz/corpus/$t" \
        >"build-fuzz/fuzz_$t.log" 2>&1 || true
    grep -a 'cov:' "build-fuzz/fuzz_$t.log" | tail -1
    n=$(find "$out" -type f | wc -l)
    if [ "$n" -gt 0 ]; then
        echo "fuzz_$t: $n findings in $out"
        found=1
    fi
    # Into the corpus goes what reached code it did not (edges; hit counts are left out, so
    # that it grows only with new coverage and the named inputs stay as they are).
    build-fuzz/fuzz/fuzz_"$t" -merge=1 -use_counters=0 "${max_len[@]}" "fuzz/corpus/$t" "$work" \
        >>"build-fuzz/fuzz_$t.log" 2>&1 || echo "fuzz_$t: merge failed (build-fuzz/fuzz_$t.log)"
done
exit $found
