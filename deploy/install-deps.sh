#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs baton's build and test dependencies from Debian 12 packages. Idempotent: does
# nothing (and needs no network) when everything is already there.
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config git
    libprotobuf-c-dev protobuf-c-compiler   # wire protocol (protoc-c generates C at build time)
    libzmq3-dev                             # client and control sockets
    libucx-dev ucx-utils                    # KV transfer
    libcmocka-dev                           # unit tests
    libopenblas-dev                         # BLAS for non-deterministic f32 GEMMs
    python3 python3-numpy                   # independent reference forward pass in tests
    python3-yaml                            # Kubernetes manifests (deploy/k8s)
    procps                                  # pkill (fault-injection tests)
    clang-format                            # style check
    gnuplot-nox                             # baton-bench plots (optional)
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
