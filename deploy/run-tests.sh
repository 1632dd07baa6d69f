#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds baton and runs every test: the release build with warnings as errors (all labels;
# GPU tests skip without a device), then the unit and integration tests again under
# ASan+UBSan, then the formatting check. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)

bash deploy/install-deps.sh

cmake -S . -B build -DBATON_WERROR=ON >/dev/null
cmake --build build -j"$JOBS"
ctest --test-dir build --output-on-failure -j"$JOBS"

# CUDA off under the sanitizers: they do not apply to device code, and the release build above
# already compiles every .cu file.
cmake -S . -B build-asan -DBATON_WERROR=ON -DBATON_SANITIZE=ON -DBATON_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-asan -j"$JOBS"
# Unit and integration tests (real daemons killed, stopped and restarted under load included);
# not planner_validate_auto, whose objectives are sized to the release build's speed.
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j"$JOBS" \
    -LE gpu -E '^planner_validate_auto$'

files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')
clang-format --dry-run -Werror $files
echo "format check passed"
