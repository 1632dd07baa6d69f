#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds everything the GPU device check runs, for sm_90, on a machine without a GPU, into
# DIR (default build-dev): bin/ (GPU tests, the CUDA bench, the daemons and the CLI) and lib/
# (the shared libraries outside glibc and the CUDA toolkit: cmocka, ZeroMQ and its
# dependencies, protobuf-c, UCX with its transport modules). A GPU machine that has CUDA but
# none of these development packages then runs the check without building:
#
#   deploy/device-prep.sh                      # here
#   BATON_PREBUILT=build-dev deploy/device-check.sh   # there, with build-dev carried along
#   BATON_PREBUILT=build-devpack/build-dev.tar.xz deploy/device-check.sh   # or its packed copy
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build-dev}
BUILD=${BATON_PREP_BUILD:-build-devprep}
export PATH=/usr/local/cuda/bin:$PATH
mkdir -p "$BUILD"
cmake -S . -B "$BUILD" -DBATON_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES=90-real >"$BUILD/prep-configure.log" 2>&1 ||
    { tail -20 "$BUILD/prep-configure.log"; exit 1; }
tests="gpu_test_cuda_ops gpu_test_cuda_engine gpu_test_cuda_attn_fa2 kvx_test_kvx_gpu"
bins="baton baton-router baton-prefill baton-decode baton-colocated baton-kvbench baton-kvx-peer
      baton-bench-cuda baton-profile baton-validate"
# shellcheck disable=SC2086
cmake --build "$BUILD" -j"$(nproc)" --target $tests $bins
rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib/ucx"
for t in $tests; do cp "$BUILD/tests/$t" "$DIR/bin/"; done
for b in $bins; do cp "$BUILD/bin/$b" "$DIR/bin/"; done
# Every shared library the binaries load, except glibc's, the compiler runtime's and CUDA's
# (the GPU machine has its own, matching its driver).
for f in "$DIR"/bin/*; do ldd "$f"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    grep -v -E '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' |
    grep -v -E '/usr/local/cuda|libcuda\.so|libcublas|libcudart' |
    while read -r lib; do cp -L "$lib" "$DIR/lib/"; done
# UCX loads its transports from a directory beside libucs. GPU KV transfer needs a UCX built
# with CUDA (cuda_copy, cuda_ipc); Debian's has none. UCX_PREFIX=DIR takes the libraries of
# such a build instead (its configure needs --with-cuda and NVML's header; the GPU machine's
# driver provides libcuda and libnvidia-ml at run time).
ucs=$(ldd "$DIR/bin/baton-prefill" | awk '/libucs\.so/ {print $3}')
src=${UCX_PREFIX:+$UCX_PREFIX/lib}
src=${src:-$(dirname "$ucs")}
if [ -n "${UCX_PREFIX:-}" ]; then
    for l in libucm libucp libucs libuct; do cp -L "$src/$l.so.0" "$DIR/lib/"; done
fi
for m in "$src"/ucx/*.so.0; do [ -e "$m" ] && cp -L "$m" "$DIR/lib/ucx/"; done
rm -f "$DIR"/lib/ucx/libucx_perftest* "$DIR"/lib/ucx/libuct_ib* "$DIR"/lib/ucx/libuct_rdmacm*
du -sh "$DIR"
# Every binary carries the same CUDA kernels (some 5 MB each), so the directory packs small:
# PACK/DIR.tar.xz, for copying to the GPU machine (BATON_PREBUILT=PACK/DIR.tar.xz there).
PACK=${BATON_PREP_PACK:-build-devpack}
rm -rf "$PACK" # only the pack: it is what gets copied
mkdir -p "$PACK"
tar cJf "$PACK/$(basename "$DIR").tar.xz" -C "$(dirname "$DIR")" "$(basename "$DIR")"
du -sh "$PACK/$(basename "$DIR").tar.xz"
