#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The GPU device check, in one run on one H100/H200 (about 5 minutes): builds baton with CUDA,
# runs the gpu-labelled tests (each op against the CPU backend, the engine end to end on the
# 15m and 1b presets) and benchmarks the engine on the 1b preset in bf16 next to the device's
# own limits (copy bandwidth -> weight-read floor, bf16 cuBLAS rate), with the fused matmuls
# (default) and without (BATON_FUSED_OPS=0), and next to PyTorch/transformers with the same
# shapes. Figures are printed and written to $OUT (or build-gpu/results). Exits non-zero if a
# test failed.
#
# With BATON_PREBUILT=DIR (or DIR.tar.xz, its packed copy) it runs binaries built elsewhere by
# deploy/device-prep.sh (for a GPU machine without ZeroMQ, protobuf-c, UCX or cmocka
# development packages) and builds nothing.
#
# BATON_NO_PEER=1 skips the PyTorch/transformers peer (its longest step) when time is short;
# BATON_NO_EXPERIMENTS=1 skips the experiments (settings measured to choose defaults: attention
# chunks, programmatic dependent launches, the FlashAttention-2 prefill) and the kernel profiles.
# BATON_VALIDATE="cuda cpu-1p1d" (any of deploy/validate-check.sh's clusters) also compares the
# simulator with clusters served on this machine, after everything else (some 2 - 4 minutes per
# cluster); with BATON_VALIDATE_ONLY=1 it does only that (a second call, say).
#
# Otherwise it copes with a machine that lacks some development packages: without UCX headers the transfer
# library (and what needs it) is not configured; without cmocka the tests are skipped and only
# the benchmarks run; without PyTorch the peer figures are skipped.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BATON_GPU_BUILD:-build-gpu}
RESULTS=${OUT:-$BUILD/results}
JOBS=$(nproc)
export PATH=/usr/local/cuda/bin:$PATH
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/device-check.log") 2>&1
t_start=$(date +%s)
step() { echo; echo "== $* ($(($(date +%s) - t_start)) s)"; }
status=0
# The simulator against clusters served here (BATON_VALIDATE: deploy/validate-check.sh's kinds).
validate() {
    local kinds=${BATON_VALIDATE:-cuda}
    step "simulator against the served cluster: deploy/validate-check.sh $kinds"
    timeout "${BATON_VALIDATE_TIMEOUT:-420}" deploy/validate-check.sh "$BUILD" \
        "$RESULTS/validate" $kinds || status=1
}

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
nvcc --version | tail -2 || { echo "no nvcc: cannot build the CUDA backend"; exit 1; }

if [ -n "${BATON_PREBUILT:-}" ]; then
    # Binaries from deploy/device-prep.sh: no configure or build here. A .tar.xz is its packed
    # copy, unpacked beside itself first.
    if [[ "$BATON_PREBUILT" == *.tar.xz ]]; then
        tar xJf "$BATON_PREBUILT" -C "$(dirname "$BATON_PREBUILT")" || exit 1
        BATON_PREBUILT=${BATON_PREBUILT%.tar.xz}
    fi
    PRE=$(cd "$BATON_PREBUILT" && pwd)
    export LD_LIBRARY_PATH=$PRE/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export UCX_MODULE_DIR=$PRE/lib/ucx
    export TMPDIR=${TMPDIR:-/tmp}
    [ -n "${BATON_VALIDATE_ONLY:-}" ] && BUILD=$PRE && validate && exit $status
    step "gpu tests (prebuilt)"
    for t in gpu_test_cuda_ops gpu_test_cuda_engine gpu_test_cuda_attn_fa2 kvx_test_kvx_gpu; do
        echo "-- $t"
        timeout 240 "$PRE/bin/$t" >"$RESULTS/$t.log" 2>&1
        rc=$?
        grep -E '^\[ *(OK|FAILED|PASSED|SKIPPED|ERROR) *\]' "$RESULTS/$t.log" | tail -20
        [ $rc = 0 ] || [ $rc = 77 ] || { echo "$t: exit $rc"; status=1; }
    done
    BUILD=$PRE
    skip=""
    have_tests=0
else
step "configure"
for m in libzmq libprotobuf-c; do
    if ! pkg-config --exists "$m"; then
        echo "missing development package '$m' (pkg-config): baton cannot be configured here"
        exit 1
    fi
done
skip=""
if ! pkg-config --exists ucx; then
    echo "no UCX headers: the transfer library and the daemons are left out of this build"
    skip="kvx;prefill;decode;colocated;pair;harness;cli;planner"
fi
have_tests=1
if ! pkg-config --exists cmocka; then
    echo "no cmocka: tests cannot be built, running the benchmarks only"
    have_tests=0
fi
cmake -S . -B "$BUILD" -DBATON_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=$have_tests \
    -DCMAKE_CUDA_ARCHITECTURES=90-real -DBATON_SKIP="$skip" >"$RESULTS/configure.log" 2>&1 ||
    { tail -30 "$RESULTS/configure.log"; exit 1; }

step "build"
targets="baton-bench-cuda"
if [ $have_tests = 1 ]; then
    targets="$targets gpu_test_cuda_ops gpu_test_cuda_engine gpu_test_cuda_attn_fa2"
    [ -z "$skip" ] && targets="$targets kvx_test_kvx_gpu"
fi
[ -z "$skip" ] &&
    targets="$targets baton baton-router baton-prefill baton-decode baton-colocated baton-kvbench
             baton-profile baton-validate"
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$JOBS" --target $targets >"$RESULTS/build.log" 2>&1 ||
    { grep -E "error|Error" "$RESULTS/build.log" | head -40; exit 1; }

if [ -n "${BATON_VALIDATE_ONLY:-}" ]; then
    validate
    exit $status
fi
if [ $have_tests = 1 ]; then
    step "gpu tests"
    ctest --test-dir "$BUILD" -R '^(gpu_test_cuda|kvx_test_kvx_gpu)' --output-on-failure \
        --timeout 240 | tee "$RESULTS/tests.log" || status=1
fi
fi

if [ -z "$skip" ]; then
    step "serving on the GPU: colocated and 1P1D clusters, --backend cuda, same greedy tokens"
    timeout 240 deploy/serve-check.sh "$BUILD" cuda "$RESULTS/serve" || status=1
    step "KV between two processes on the GPU: kvx over UCX cuda_ipc, every byte checked"
    timeout 180 "$BUILD/bin/baton-kvbench" --transport cuda --sizes 1M,16M,256M --json \
        --pin >"$RESULTS/kvbench-cuda.json" || status=1
    cat "$RESULTS/kvbench-cuda.json"
fi

step "baton on the 1b preset (bf16 weights, bf16 KV)"
MODEL=$BUILD/bench-1b-bf16.gguf
timeout 200 "$BUILD/bin/baton-bench-cuda" --model "$MODEL" --preset 1b --type bf16 \
    --batches 1,16,64 --ctx 512 --prefills 512,2048 --json "$RESULTS/baton.json" || status=1
echo "(fused matmuls off: BATON_FUSED_OPS=0, the same decode steps and the 2048-token prefill)"
# The composition that the fused q/k/v, gate/up/swiglu and projection+residual ops replace,
# measured in the same run so that the two sets of decode rows compare directly.
BATON_FUSED_OPS=0 timeout 90 "$BUILD/bin/baton-bench-cuda" --model "$MODEL" --batches 1,16,64 \
    --ctx 512 --prefills 2048 --json "$RESULTS/baton-unfused.json" || true
echo "(deterministic mode, decode only)"
timeout 60 "$BUILD/bin/baton-bench-cuda" --model "$MODEL" --deterministic --batches 1,16,64 \
    --ctx 512 --prefills 512 --reps 1 --json "$RESULTS/baton-deterministic.json" || true

if [ -z "${BATON_NO_EXPERIMENTS:-}" ]; then
step "experiment: attention chunks of 64 positions (BATON_CUDA_ATTN_CHUNK=64), decode only"
# Chunks are how many blocks a decode row's attention spreads over: 3 per KV head at context
# 512 with the default 256, against 9 with 64. The ops test checks split and sequential
# launches still agree bit for bit; the figures go next to the default's above.
ops_bin=$BUILD/bin/gpu_test_cuda_ops
[ -x "$ops_bin" ] || ops_bin=$BUILD/tests/gpu_test_cuda_ops
if [ -x "$ops_bin" ]; then
    BATON_CUDA_ATTN_CHUNK=64 timeout 120 "$ops_bin" >"$RESULTS/gpu_test_cuda_ops-chunk64.log" 2>&1
    rc=$?
    grep -E '^\[ *(FAILED|PASSED|ERROR) *\]' "$RESULTS/gpu_test_cuda_ops-chunk64.log" | tail -5
    [ $rc = 0 ] || [ $rc = 77 ] || { echo "ops at chunk 64: exit $rc"; status=1; }
fi
BATON_CUDA_ATTN_CHUNK=64 timeout 60 "$BUILD/bin/baton-bench-cuda" --model "$MODEL" \
    --batches 1,16,64 --ctx 512 --prefills 512 --reps 1 --json "$RESULTS/baton-chunk64.json" || true

step "experiment: GEMVs as programmatic dependent launches (BATON_CUDA_PDL=1), decode only"
# gpu_test_cuda_engine (above) checks PDL steps against plain ones bit for bit; these decode
# figures go next to the default's, then with 64-position attention chunks as well.
BATON_CUDA_PDL=1 timeout 60 "$BUILD/bin/baton-bench-cuda" --model "$MODEL" \
    --batches 1,16,64 --ctx 512 --prefills 512 --reps 1 --json "$RESULTS/baton-pdl.json" || true
BATON_CUDA_PDL=1 BATON_CUDA_ATTN_CHUNK=64 timeout 60 "$BUILD/bin/baton-bench-cuda" \
    --model "$MODEL" --batches 1,16,64 --ctx 512 --prefills 512 --reps 1 \
    --json "$RESULTS/baton-pdl-chunk64.json" || true

step "experiment: FlashAttention-2 prefill attention (BATON_CUDA_PREFILL_ATTN=fa2), prefill only"
# gpu_test_cuda_attn_fa2 (above) checks it against the CPU and the WMMA kernel; these are the
# prefill figures to put next to the default's (the WMMA kernel).
BATON_CUDA_PREFILL_ATTN=fa2 timeout 60 "$BUILD/bin/baton-bench-cuda" --model "$MODEL" \
    --batches 1 --ctx 512 --prefills 512,2048 --json "$RESULTS/baton-fa2.json" || true

step "where the time goes: kernel summaries (nsys) of decode at batch 1 and a 2048-token prefill"
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
    # Decode: graphs traced node by node; prefill with the FlashAttention-2 kernel. The CSVs
    # list every kernel's total time, calls and share, largest first.
    for what in decode prefill; do
        if [ $what = decode ]; then
            args="--batches 1 --prefills 16 --steps 16 --reps 1"
            envs="BATON_CUDA_GRAPHS=1"
        else
            args="--batches 1 --steps 1 --prefills 2048 --reps 2"
            envs="BATON_CUDA_PREFILL_ATTN=fa2"
        fi
        env $envs timeout 150 "$NSYS" profile -t cuda --cuda-graph-trace=node --force-overwrite true \
            -o "$RESULTS/nsys-$what" "$BUILD/bin/baton-bench-cuda" --model "$MODEL" $args \
            >"$RESULTS/nsys-$what.log" 2>&1 &&
            timeout 90 "$NSYS" stats -r cuda_gpu_kern_sum -f csv -o "$RESULTS/nsys-$what" \
                "$RESULTS/nsys-$what.nsys-rep" >>"$RESULTS/nsys-$what.log" 2>&1 &&
            echo "-- $what" && head -16 "$RESULTS/nsys-${what}_cuda_gpu_kern_sum.csv" ||
            { echo "nsys $what failed:"; tail -5 "$RESULTS/nsys-$what.log"; }
        rm -f "$RESULTS/nsys-$what.nsys-rep" "$RESULTS/nsys-$what.sqlite"
    done
else
    echo "no nsys: skipped"
fi
fi # BATON_NO_EXPERIMENTS

step "PyTorch/transformers, same shapes"
if [ -n "${BATON_NO_PEER:-}" ]; then
    echo "BATON_NO_PEER set: peer figures skipped"
elif python3 -c "import torch, transformers" 2>/dev/null; then
    timeout 240 python3 bench/torch_llama_peer.py --preset 1b --batches 1,16,64 --ctx 512 \
        --prefills 512,2048 --attn eager,sdpa --json "$RESULTS/torch.json" || true
else
    echo "torch or transformers not importable: peer figures skipped"
fi

[ -n "${BATON_VALIDATE:-}" ] && validate

step "done"
echo "results in $RESULTS; status $status"
exit $status
