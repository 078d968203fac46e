#!/usr/bin/env bash
# The main job on the embedded default: generate a synthetic routing trace with the project's
# own generator, replay it at several cache sizes against every policy and Belady, then LRU and
# LRFU once each with the link timing model. Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=build

scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF \
      -DMOE_BUILD_BENCHMARKS=OFF -DMOE_WITH_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target moe-replay moe-trace >/dev/null

trace="$build/demo.moetrace"
# A Mixtral-like shape: 32 MoE layers x 8 experts, top-2; 350 MB per expert (bf16).
"$build/bin/moe-trace" --synthetic --out "$trace" --model synthetic-mixtral-shape \
  --layers 32 --experts 8 --top-k 2 --sequences 64 --min-tokens 32 --max-tokens 256 \
  --skew 0.8 --locality 0.35 --affinity 0.5 --expert-bytes 352321536 --seed 7 --info
echo
"$build/bin/moe-replay" --trace "$trace" --sweep --capacities 2,3,4,5,6 \
  --policies lru,lfu,arc,lrfu,predictive --predictor combined --train-fraction 0.5 \
  --csv "$build/demo-sweep.csv" --svg "$build/demo-sweep.svg"
echo
for policy in lru lrfu; do
  echo "replay at 4 of 8 experts per layer, policy $policy, on demand, PCIe 4 link (25 GB/s),"
  echo "0.1 ms compute per layer:"
  "$build/bin/moe-replay" --trace "$trace" --capacity 4 --policy "$policy" --link-gbps 25 \
    --layer-compute-us 100
  echo
done
echo "plot: $build/demo-sweep.svg   table: $build/demo-sweep.csv"
