#!/usr/bin/env bash
# Installs what is missing, builds everything (CUDA targets too where nvcc exists) in a fresh
# build directory and runs every test; then builds the model-path tests with AddressSanitizer and
# UndefinedBehaviorSanitizer and runs them, and runs each fuzz target for a bounded time.
# Usage: scripts/test.sh [build-dir]      FUZZ_SECONDS=0 skips the fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-test}"
jobs="$(nproc)"

scripts/install-deps.sh clang libclang-rt-14-dev
rm -rf "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_CUDA=AUTO \
      -DMOE_CUDA_ARCHITECTURES=90 -DMOE_BUILD_BENCHMARKS=ON
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"

# The model path (checkpoint parsing, engine, C API, CLIs) under ASan + UBSan.
asan="$build-asan"
rm -rf "$asan"
cmake -S . -B "$asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON -DMOE_WITH_CUDA=OFF \
      -DMOE_BUILD_BENCHMARKS=OFF
sanitized=(safetensors_test device_test fake_device_test model_test kernels_test engine_test c_api_test
           memory_test gate_predictor_test learned_predictor_test
           moe_run_cli_test)
cmake --build "$asan" -j "$jobs" --target "${sanitized[@]}"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ctest --test-dir "$asan" --output-on-failure -j "$jobs" \
  -R "^($(IFS='|'; echo "${sanitized[*]}"))"

# Fuzz the checkpoint and config parsers for a bounded time.
secs="${FUZZ_SECONDS:-20}"
if [[ "$secs" -gt 0 ]]; then
  scripts/fuzz.sh "$secs" "$build-fuzz"
fi
