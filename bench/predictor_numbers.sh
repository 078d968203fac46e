#!/usr/bin/env bash
# The predictor numbers of bench/RESULTS.md (issue 5) in one command, on the trained demo model
# and its held-out prompts (models/pydoc-moe/eval_prompts.txt: validation paragraphs never seen
# in training):
#   - one-layer-ahead recall per layer at budget top-k of the next-layer gate and of the id-only
#     predictors, measured live by the engine;
#   - hit rate and prefetch waste at a 25% expert budget, beside Belady's hit rate for the same
#     run (moe-replay of the trace the engine recorded, same capacity and scope);
#   - the routing statistics of that trace (skew, temporal locality, inter-layer affinity);
#   - device time on a modelled GPU (moe-prefetch-bench, fake device with PCIe-4-like link,
#     HBM-like compute and a host CPU for the fallback) for on-demand LRU, prediction +
#     prefetching, predictive eviction, stale-prefetch cancellation and the CPU fallback (also
#     without loading the misses it serves: +hybrid), beside
#     the max(compute, Belady) floor; then the same with 4 requests decoded side by side.
# Usage: bench/predictor_numbers.sh [build-dir (default build)] [model-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
model="${2:-models/pydoc-moe}"
prompts="$model/eval_prompts.txt"
budget="${BUDGET:-25%}"
tokens="${TOKENS:-32}"

scripts/install-deps.sh
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_CUDA=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target moe-run moe-replay moe-trace moe-prefetch-bench \
  >/dev/null
out="$build/predictor-numbers"
mkdir -p "$out"

echo "model $model, prompts $prompts, expert budget $budget, $tokens generated tokens each"
printf '%-10s %-6s %-9s %-9s %-10s %-11s %s\n' predictor depth hit_rate belady recall_2+ \
  wasted/moved "recall per layer"
for spec in none:0 frequency:1 recency:1 combined:1 gate:0 gate:1 gate:2; do
  predictor="${spec%%:*}"
  depth="${spec##*:}"
  trace="$out/$predictor-$depth.moetrace"
  log="$out/$predictor-$depth.log"
  "$build/bin/moe-run" --model "$model" --prompt-file "$prompts" --max-tokens "$tokens" \
    --no-eos --quiet --expert-budget "$budget" --predictor "$predictor" \
    --prefetch-depth "$depth" --trace-out "$trace" 2>"$log" >/dev/null
  hit=$(sed -n 's/.*hit rate \([0-9.]*\).*/\1/p' "$log")
  slot_bytes=$(sed -n 's/.*--budget-bytes \([0-9]*\).*/\1/p' "$log")
  belady=$("$build/bin/moe-replay" --trace "$trace" --budget-bytes "$slot_bytes" --scope global \
    --prefill-chunk 256 --json | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["belady_hit_rate"])')
  layers=$(sed -n 's/.*per layer: *\(.*\)/\1/p' "$log")
  recall2=$(python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]][2:]; print(f"{sum(v)/len(v):.4f}" if v else "-")' $layers)
  moved=$(sed -n 's/^bytes moved *\([0-9.]* [KMG]*i*B\).*/\1/p' "$log")
  wasted=$(sed -n 's/.* useful, \(.*\) wasted/\1/p' "$log")
  printf '%-10s %-6s %-9s %-9s %-10s %-11s %s\n' "$predictor" "$depth" "$hit" "$belady" \
    "$recall2" "${wasted:-0}/${moved}" "${layers:--}"
done
echo
echo "== routing statistics of the run (trace $out/none-0.moetrace) =="
"$build/bin/moe-trace" --in "$out/none-0.moetrace" --info

echo
echo "== modelled GPU: link 25 GB/s + 1 us per copy, HBM 3350 GB/s, host CPU 100 GB/s =="
"$build/bin/moe-prefetch-bench" --model "$model" --prompt-file "$prompts" --tokens "$tokens" \
  --expert-budget "${budget%\%}" --link-gbps 25 --latency-us 1 --compute-gbps 3350 \
  --cpu-gbps 100 --configs \
  none:0,gate:1,gate:2,gate:2+cancel,gate:1@predictive,none:0+cpu,gate:1+cpu,gate:1@predictive+cpu,none:0+hybrid,gate:1@predictive+hybrid \
  2>/dev/null

echo
echo "== the same, 4 requests decoded side by side (continuous batching) =="
"$build/bin/moe-prefetch-bench" --model "$model" --prompt-file "$prompts" --tokens "$tokens" \
  --expert-budget "${budget%\%}" --link-gbps 25 --latency-us 1 --compute-gbps 3350 \
  --cpu-gbps 100 --batch 4 --configs \
  none:0,gate:1,gate:2,gate:1@predictive,none:0+cpu,gate:1+cpu,gate:1@predictive+cpu,none:0+hybrid,gate:1@predictive+hybrid \
  2>/dev/null
