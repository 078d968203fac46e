#!/usr/bin/env bash
# The main job on the embedded default: the project's small trained Mixtral-style model
# (models/pydoc-moe: 8 layers x 8 experts, top-2, trained on the Python documentation; see its
# README.md) generates text through the C API with only a quarter of its expert bytes on the
# device, the next-layer gate predictor prefetching; then the same model runs held-out prompts
# while the routing is traced, and the trace shows its routing statistics, replays to the same
# hit rate without prediction, and is swept over cache sizes and policies against Belady.
# Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
model=models/pydoc-moe

scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF \
      -DMOE_BUILD_BENCHMARKS=OFF -DMOE_WITH_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target moe-run moe-replay moe-trace >/dev/null

echo "== moe-run: 64 experts, 16 fit the 25% budget; the gate predictor prefetches one layer ahead =="
"$build/bin/moe-run" --model "$model" --prompt "The interpreter reads" --max-tokens 60 \
  --temperature 0.7 --top-p 0.9 --seed 3 --expert-budget 25% --predictor gate --prefetch-depth 1
echo
trace="$build/demo-run.moetrace"
echo "== 32 held-out paragraphs (prompt + 32 tokens each), no prediction, routing traced =="
"$build/bin/moe-run" --model "$model" --prompt-file "$model/eval_prompts.txt" --max-tokens 32 \
  --no-eos --quiet --expert-budget 25% --trace-out "$trace"
echo
echo "== routing statistics of that trace =="
"$build/bin/moe-trace" --in "$trace" --info
echo
echo "== moe-replay of the trace, same cache (16 of 64 experts, global): the live hit rate =="
"$build/bin/moe-replay" --trace "$trace" --capacity 2 --scope global --policy lru \
  --prefill-chunk 256
echo
echo "== the same trace token by token (as decode sees it) against cache sizes and policies =="
"$build/bin/moe-replay" --trace "$trace" --sweep --capacities 2,3,4,5,6 --scope global \
  --policies lru,lfu,arc,lrfu --csv "$build/demo-sweep.csv" --svg "$build/demo-sweep.svg"
echo "plot: $build/demo-sweep.svg   table: $build/demo-sweep.csv"
