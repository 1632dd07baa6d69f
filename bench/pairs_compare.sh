#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# AcceLLM pairs against fixed disaggregation and colocation on the same machine, in one run:
# for each layout (1 pair, 1 prefill + 1 decode, 2 colocated: two engines each) start
# `baton up`, drive it with baton-bench on each workload, print one line per (layout,
# workload) with TTFT, TPOT, job completion time and SLO attainment.
# usage: bench/pairs_compare.sh MODEL [RATE] [N] [AZURE_RATE]   (env BIN: the build's bin folder;
#        TTFT, TPOT: objectives in ms; GOODPUT: workloads to search goodput on, default gamma3;
#        GN: requests per goodput-search run)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?model file}
RATE=${2:-20}
N=${3:-150}
AZ_RATE=${4:-2}
GN=${GN:-60}
GOODPUT=${GOODPUT:-gamma3}
BIN=${BIN:-build/bin}
OUT=$(mktemp -d)
TTFT=${TTFT:-250}
TPOT=${TPOT:-25}
PORT=7655
layouts=("--pairs 1" "--prefill 1 --decode 1" "--colocated 2")
names=("pairs" "1P1D" "colocated")
workloads=("gamma3:--rate $RATE --arrival gamma --cv 3 --len-dist lognormal --input-len 256 --output-len 64"
           "azure-conv:--rate $AZ_RATE --workload ../shared/traces/azure2023/AzureLLMInferenceTrace_conv.csv --arrival poisson")
printf "%-10s %-11s %9s %9s %9s %9s %9s %9s %11s\n" layout workload ttft_p50 ttft_p99 tpot_p50 \
    tpot_p99 jct_p50 attain% goodput/inst
for li in "${!layouts[@]}"; do
    "$BIN/baton" up ${layouts[$li]} --model "$MODEL" --port $PORT --threads 2 --ctx 2048 \
        --kv-mem 256M --log-dir "$OUT/logs-${names[$li]}" >"$OUT/up.log" 2>&1 &
    UP=$!
    for _ in $(seq 100); do grep -q "serving on" "$OUT/up.log" && break; sleep 0.2; done
    for w in "${workloads[@]}"; do
        wn=${w%%:*}
        args=${w#*:}
        d="$OUT/${names[$li]}-$wn"
        "$BIN/baton-bench" --router tcp://127.0.0.1:$PORT --out "$d" \
            --num-requests "$N" --slo-ttft-ms "$TTFT" --slo-tpot-ms "$TPOT" \
            $args >/dev/null 2>&1 || true
        # goodput: the highest rate meeting 90% attainment, per instance (2 instances each);
        # only for the workloads in $GOODPUT (a search at rates far below 1 req/s takes long)
        if [[ " $GOODPUT " == *" $wn "* ]]; then
            "$BIN/baton-bench" --router tcp://127.0.0.1:$PORT --out "$d-g" --num-requests "$GN" \
                --slo-ttft-ms "$TTFT" --slo-tpot-ms "$TPOT" --goodput-search --search-iters 4 \
                --n-gpus 2 $args >/dev/null 2>&1 || true
        fi
        python3 - "$d/result.json" "${names[$li]}" "$wn" "$d-g/result.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"{sys.argv[2]:<10} {sys.argv[3]:<11} (no result: {e})"); sys.exit()
g = lambda k: r.get(k, float('nan'))
try:
    gp = json.load(open(sys.argv[4])).get('goodput_per_gpu', float('nan'))
except Exception:
    gp = float('nan')
print(f"{sys.argv[2]:<10} {sys.argv[3]:<11} {g('median_ttft_ms'):9.1f} {g('p99_ttft_ms'):9.1f} "
      f"{g('median_tpot_ms'):9.2f} {g('p99_tpot_ms'):9.2f} {g('median_e2el_ms'):9.1f} "
      f"{100*g('slo_attainment') if g('slo_attainment')<=1 else g('slo_attainment'):9.1f} "
      f"{gp:11.2f}")
PY
    done
    kill $UP; wait $UP 2>/dev/null || true
done
rm -rf "$OUT"
