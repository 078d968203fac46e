#!/usr/bin/env bash
# Installs what is missing, builds everything (CUDA targets too where nvcc exists) in a fresh
# build directory and runs every test. Usage: scripts/test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-test}"
jobs="$(nproc)"

scripts/install-deps.sh
rm -rf "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_CUDA=AUTO \
      -DMOE_CUDA_ARCHITECTURES=90 -DMOE_BUILD_BENCHMARKS=ON
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
