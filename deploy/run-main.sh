#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds baton and runs its main job on the embedded default model: writes the synthetic
# default model (the 110m preset, Q8_0) if it is not there yet, generates text from a prompt,
# then runs a short engine benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)

bash deploy/install-deps.sh
cmake -S . -B build >/dev/null
cmake --build build -j"$JOBS"

MODEL=build/models/baton-110m-q8_0.gguf
if [ ! -f "$MODEL" ]; then
    mkdir -p build/models
    build/bin/baton model gen --preset 110m --type q8_0 --out "$MODEL"
fi
build/bin/baton run --model "$MODEL" --prompt "Once upon a time" -n 64 --seed 1
echo
build/bin/baton bench-engine --model "$MODEL" --prompt-len 128 --gen 32 --batches 1,4 --reps 1
