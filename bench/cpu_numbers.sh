#!/usr/bin/env bash
# The CPU-backend numbers of bench/RESULTS.md in one command: the expert FFN against OpenBLAS
# (Google Benchmark, side by side in one run) and decode tokens/s against the memory-bandwidth
# bound with every expert resident and with a 50% expert budget.
# Usage: bench/cpu_numbers.sh [build-dir (default build)] [model-dir (default <build>/bench-model)]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
model="${2:-$build/bench-model}"

scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target moe_kernel_bench moe-decode-bench moe-make-model \
  >/dev/null
if [[ ! -f "$model/config.json" ]]; then
  # hidden 1024, intermediate 3584, 8 layers, 8 experts, top-2, bf16: 1.58 GB.
  "$build/bin/moe-make-model" --preset bench --out "$model"
fi
echo "== expert FFN and Linear vs OpenBLAS (medians of 3) =="
"$build/bin/moe_kernel_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_filter='Bandwidth|ExpertFfn|Sgemm|Paired' 2>&1 | grep -v "_mean\|_stddev\|_cv"
echo
echo "== decode against the memory-bandwidth bound =="
"$build/bin/moe-decode-bench" --model "$model" --tokens 24 --repeats 5 --budgets 100,50
