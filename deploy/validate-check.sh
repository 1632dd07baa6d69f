#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The simulator against a real cluster on this machine (docs/planner.md, "baton-validate"),
# with profiles of two kinds: measured alone (baton-profile, on the CPU or GPU the daemon will
# use) and fitted from what the serving daemons recorded (--step-log, baton-profile --refit).
# For each cluster:
#   1. the profile measured alone sets the objectives (TTFT 3x the longest prompt's prefill,
#      TPOT 2x a decode step of 8 sequences at the mean context) and, through the simulator,
#      the rates (--rates auto: where simulated attainment falls through 99, 90, 75, 50, 25 and
#      10%, so that every rate compared lies on the knee, wherever this machine's knee is);
#   2. calibration pass: the workload with seed 2 at those rates, every forward recorded;
#   3. the serving profile is fitted from those steps;
#   4. validation pass: the workload with seed 1 (other requests) at the rates the serving
#      profile gives, real against simulated with it (and, in two more columns, with the
#      profile measured alone).
#   Both passes also simulate each rate on a profile fitted from the steps served during that
#   rate's own run (baton-validate --window-steps): the simulator's queueing and batching on
#   their own, with the machine's speed of that minute; and once more with that speed
#   replayed in 2-second bins (--speed-bins-ms), a diagnostic of the queueing model alone.
# Clusters:
#   cpu:  1 prefill + 1 decode and 1 colocated, 15m preset (Q8_0), one compute thread per
#         daemon, each daemon on a CPU of its own (the profile taken on the prefill daemon's);
#   cuda: 1 colocated daemon on the GPU, 1b preset in bf16 (bf16 KV).
# The decode and colocated daemons run with --growth-reserve 1 (BATON_GROWTH_RESERVE, unless
# set): they preempt nothing, which is what the simulator models; a recompute would stall every
# running sequence for a whole prefill.
# Reports: RESULTS/calibrate-*.md and validate-*.md (tables ending "within 2 points at N of M
# rates"), every request in the matching .csv, the profiles as profile-*.json.
#
#   deploy/validate-check.sh BUILD_DIR RESULTS_DIR [cpu | cpu-1p1d | cpu-colocated] [cuda]
#
# Environment: VAL_REQUESTS (requests per rate, default 200), VAL_LEVELS (the attainments, %),
# VAL_PRESET (the CPU clusters' model preset, default 15m; 110m is slower and closer to a real
# model's cache behaviour).
set -uo pipefail
# shellcheck source=deploy/up-wait.sh
. "$(dirname "$0")/up-wait.sh"
BUILD=$1
RESULTS=$2
shift 2
KINDS=${*:-cpu}
BIN=$BUILD/bin
REQ=${VAL_REQUESTS:-200}
LEVELS=${VAL_LEVELS:-99,90,75,50,25,10}
PRESET=${VAL_PRESET:-15m}
PROMPT=(32 512) OUTPUT=(16 128) # lengths, uniform between the two
WORKLOAD=(--prompt-len "${PROMPT[0]}" --prompt-max "${PROMPT[1]}" --output-len "${OUTPUT[0]}"
    --output-max "${OUTPUT[1]}")
mkdir -p "$RESULTS"
export BATON_GROWTH_RESERVE=${BATON_GROWTH_RESERVE:-1}

# CPU layout: on a machine with 8 or more CPUs the prefill daemon gets CPU 2, the decode daemon
# CPU 3 and everything else 4 - 7 (CPUs 0 and 1 take the system's interrupts); with fewer, the
# daemons get CPUs 0 and 1 and the rest runs anywhere.
if [ "$(nproc)" -ge 8 ]; then
    CPU_P=2 CPU_D=3 REST=(taskset -c 4-7)
else
    CPU_P=0 CPU_D=1 REST=()
fi

# objectives PROFILE: prints "TTFT_MS TPOT_MS" from the profile's models and the workload's
# lengths (see above)
objectives() {
    python3 - "$1" "${PROMPT[@]}" "${OUTPUT[@]}" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
lo, hi, out_lo, out_hi = (float(x) for x in sys.argv[2:6])
pf, dc = p["prefill"], p["decode"]
ttft = 3 * (pf["a_ms"] + pf["b_ms_per_token"] * hi + pf["c_ms_per_token2"] * hi * hi)
b, ctx = 8, (lo + hi) / 2 + (out_lo + out_hi) / 4
k = p.get("decode_knee")
if k and b >= k["batch"]:
    dc = k
tpot = 2 * (dc["a_ms"] + dc["b_ms_per_ctx_token"] * b * ctx + dc["c_ms_per_seq"] * b)
print("%.3f %.3f" % (ttft, tpot))
EOF
}

# link PROFILE: prints the profile's KV link as baton-profile options (kept by the refit)
link() {
    python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))["transfer"]
print("--link-gbps %.17g --link-latency-us %.17g" % (p["gb_per_s"], 1e3 * p["latency_ms"]))' "$1"
}

# run NAME MODEL PROFILE PORT UP_OPTS... -- VALIDATE_OPTS...: starts one cluster (its daemons
# recording their steps), runs the calibration pass (seed 2, rates from PROFILE), fits the
# serving profile from the step logs, runs the validation pass (seed 1, rates from the serving
# profile), stops the cluster.
run() {
    local name=$1 model=$2 profile=$3 port=$4
    shift 4
    local up_opts=() val_opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do up_opts+=("$1") && shift; done
    shift
    val_opts=("$@")
    local log=$RESULTS/up-validate-$name.log logs=$RESULTS/logs-validate-$name slo
    slo=($(objectives "$profile")) || return 1
    rm -rf "$logs"
    "${REST[@]}" "$BIN/baton" up --model "$model" --port "$port" --log-dir "$logs" --step-logs \
        "${up_opts[@]}" >"$log" 2>&1 &
    local up=$!
    up_wait "$name" $up "$log" 120 || return 1
    local common=(--endpoint "tcp://127.0.0.1:$port" --requests "$REQ" "${WORKLOAD[@]}"
        --rates auto --auto-levels "$LEVELS" --slo-ttft-ms "${slo[0]}" --slo-tpot-ms "${slo[1]}"
        --timeout-s 120 "${val_opts[@]}")
    echo "$name: objectives TTFT ${slo[0]} ms, TPOT ${slo[1]} ms (from $(basename "$profile"))"
    # Every pass is also simulated on each rate's own served steps (--window-steps): the
    # simulator given the service times of that very run.
    local served=$RESULTS/profile-served-$name.json steps
    steps=$(ls "$logs"/*.steps.csv | paste -sd,)
    echo "$name: calibration pass (seed 2), simulated with the profile measured alone"
    "${REST[@]}" "$BIN/baton-validate" "${common[@]}" --seed 2 --profile "$profile" \
        --window-steps "$steps" --speed-bins-ms 2000 --csv "$RESULTS/calibrate-$name.csv" |
        tee "$RESULTS/calibrate-$name.md"
    local rc=${PIPESTATUS[0]}
    [ $rc = 0 ] || echo "$name: the calibration pass failed"
    # shellcheck disable=SC2046 # link prints two options
    [ $rc = 0 ] && "$BIN/baton-profile" --model "$model" "${KV_TYPE[@]}" --refit "$steps" \
        $(link "$profile") --out "$served" --quiet || rc=1
    if [ $rc = 0 ]; then
        echo "$name: validation pass (seed 1), simulated with the profile fitted from the steps"
        "${REST[@]}" "$BIN/baton-validate" "${common[@]}" --seed 1 --profile "$served" \
            --profile-alt "$profile" --window-steps "$steps" --speed-bins-ms 2000 \
            --csv "$RESULTS/validate-$name.csv" |
            tee "$RESULTS/validate-$name.md"
        rc=${PIPESTATUS[0]}
    fi
    kill -INT $up 2>/dev/null
    wait $up || { echo "$name: baton up did not stop cleanly"; rc=1; }
    return $rc
}

# The profile's grid: the workload's prompts (up to 512 tokens in a 512-token budget) and
# contexts (up to 640), within the daemons' 256 MiB of KV.
GRID=(--prefill-lens 16,32,64,128,256,512 --max-batch-tokens 512 --decode-ctx 16,64,256,1024
    --kv-mem 256M --quiet)
status=0
for kind in $KINDS; do
    case $kind in
    cpu | cpu-1p1d | cpu-colocated)
        KV_TYPE=()
        model=$BUILD/validate-$PRESET-q8_0.gguf
        prof=$RESULTS/profile-$PRESET-cpu.json
        [ -s "$model" ] ||
            "$BIN/baton" model gen --preset "$PRESET" --type q8_0 --out "$model" >/dev/null || exit 1
        if [ ! -s "$prof" ]; then # one profile for both clusters
            echo "== profiling the $PRESET preset on CPU $CPU_P (1 thread)"
            taskset -c $CPU_P "$BIN/baton-profile" --model "$model" --threads 1 --reps 5 \
                --median "${GRID[@]}" --out "$prof" || { status=1 && continue; }
        fi
        if [ "$kind" != cpu-colocated ]; then
            run cpu-1p1d "$model" "$prof" 5721 --prefill 1 --decode 1 --threads 2 \
                --cpus "$CPU_P;$CPU_D" -- --prefill 1 --decode 1 || status=1
        fi
        if [ "$kind" != cpu-1p1d ]; then
            run cpu-colocated "$model" "$prof" 5731 --colocated 1 --threads 1 --cpus "$CPU_P" \
                -- --prefill 0 --decode 0 --colocated 1 || status=1
        fi
        ;;
    cuda)
        KV_TYPE=(--kv-type bf16)
        model=$BUILD/bench-1b-bf16.gguf # device-check.sh's, when it ran first
        [ -s "$model" ] ||
            "$BIN/baton" model gen --preset 1b --type bf16 --out "$model" >/dev/null || exit 1
        prof=$RESULTS/profile-1b-cuda.json
        echo "== profiling the 1b preset on the GPU (bf16, bf16 KV)"
        taskset -c $CPU_P "$BIN/baton-profile" --model "$model" --backend cuda --kv-type bf16 \
            --threads 1 "${GRID[@]}" --out "$prof" || { status=1 && continue; }
        run cuda-colocated "$model" "$prof" 5741 --colocated 1 --backend cuda --kv-type bf16 \
            --threads 1 --cpus "$CPU_P" -- --prefill 0 --decode 0 --colocated 1 || status=1
        ;;
    *) echo "unknown kind $kind (cpu, cpu-1p1d, cpu-colocated, cuda)" && status=1 ;;
    esac
done
exit $status
