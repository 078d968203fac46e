#!/usr/bin/env bash
# The main job on the embedded default: make the project's small Mixtral-style model (8 layers
# x 8 experts, top-2, bf16, deterministic weights, the SentencePiece tokenizer of
# tests/data/golden), generate from it through the C API with an expert budget of half the
# expert bytes, record the routing trace, and replay that trace: the same hit rate, then a sweep
# of cache sizes and policies against Belady. Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=build

scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF \
      -DMOE_BUILD_BENCHMARKS=OFF -DMOE_WITH_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target moe-make-model moe-run moe-replay >/dev/null

model="$build/demo-model"
if [[ ! -f "$model/config.json" ]]; then
  "$build/bin/moe-make-model" --preset demo --out "$model" \
    --tokenizer tests/data/golden/mixtral-tiny-f32/tokenizer.model
fi
trace="$build/demo-run.moetrace"
echo "== moe-run: 64 experts of which 32 fit the budget (random weights: the text is noise;"
echo "   the trained default model comes with the predictor work) =="
"$build/bin/moe-run" --model "$model" --prompt "The licence grants you the freedom to" \
  --max-tokens 48 --no-eos --expert-budget 50% --policy lru --trace-out "$trace"
echo
echo "== moe-replay of the recorded trace, same cache (4 of 8 experts x 8 layers, global) =="
"$build/bin/moe-replay" --trace "$trace" --capacity 4 --scope global --policy lru \
  --prefill-chunk 256
echo
echo "== the same trace against cache sizes and policies =="
"$build/bin/moe-replay" --trace "$trace" --sweep --capacities 2,3,4,5,6 --scope global \
  --policies lru,lfu,arc,lrfu --prefill-chunk 256 --csv "$build/demo-sweep.csv" \
  --svg "$build/demo-sweep.svg"
echo "plot: $build/demo-sweep.svg   table: $build/demo-sweep.csv"
