#!/usr/bin/env bash
# Measures the replay-core numbers of issue 2 on the real DeepSeek-V2-Lite trace, all in one
# run, and prints a Markdown table (paste into bench/RESULTS.md with date and machine).
# Usage: bench/replay_numbers.sh [build-dir]   (needs python3 for the JSON)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
R="$build/bin/moe-replay"
T="../shared/data/routing-traces/deepseek-v2-lite-puffin"
[[ -x "$R" ]] || { echo "build moe-replay first (cmake --build $build --target moe-replay)" >&2; exit 1; }
[[ -d "$T" ]] || { echo "missing $T" >&2; exit 1; }
out=$(mktemp -d)
TIMING=(--expert-bytes 17.3MB --link-gbps 25 --layer-compute-us 150)

echo "## demand policies, capacity 16 of 64 per layer, cache persists (all 1600 sequences)"
for p in lru lfu arc lrfu predictive; do
  extra=()
  [[ $p == predictive ]] && extra=(--predictor combined --train-fraction 0.8)
  "$R" --trace "$T" --capacity 16 --policy "$p" "${extra[@]}" --json > "$out/demand_$p.json"
done
# LRU on the same held-out 20% the predictive policy replays (its predictor learns on the rest).
"$R" --trace "$T" --capacity 16 --policy lru --train-fraction 0.8 --json > "$out/demand_lru_heldout.json"
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
print("| policy | sequences | hit rate | belady | loads | decisions/s | belady s |")
print("|---|---|---|---|---|---|---|")
for p in ["lru", "lfu", "arc", "lrfu", "lru_heldout", "predictive"]:
    j = json.load(open(os.path.join(d, f"demand_{p}.json")))
    print(f"| {j['policy']} | {j['sequences']} | {j['hit_rate']:.4f} | {j['belady_hit_rate']:.4f} | "
          f"{j['loads']} | {j['decisions_per_second']/1e6:.1f} M | {j['belady_seconds']:.3f} |")
PY

echo
echo "## predictor recall, held-out 20% of sequences (tables learned on the other 80%), budget 12"
for p in frequency recency transition combined; do
  "$R" --trace "$T" --eval-predictor --predictor "$p" --train-fraction 0.8 --budget 12 \
    --max-distance 4 --json > "$out/eval_$p.json"
done
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
print("| predictor | d=1 | d=2 | d=3 | d=4 |")
print("|---|---|---|---|---|")
for p in ["frequency", "recency", "transition", "combined"]:
    j = json.load(open(os.path.join(d, f"eval_{p}.json")))
    print(f"| {p} | " + " | ".join(f"{x['recall']:.4f}" for x in j["distances"]) + " |")
PY

echo
echo "## timing model: 17.3 MB experts, 25 GB/s, 0.15 ms compute per layer, capacity 16, held-out 20%"
run_t() { name=$1; shift; "$R" --trace "$T" --capacity 16 --train-fraction 0.8 "${TIMING[@]}" "$@" --json > "$out/t_$name.json"; }
run_t lru_demand --policy lru
run_t lrfu_demand --policy lrfu
run_t lru_prefetch --policy lru --predictor combined --prefetch-depth 1
run_t lrfu_prefetch --policy lrfu --predictor combined --prefetch-depth 1
run_t lrfu_prefetch_p07 --policy lrfu --predictor combined --prefetch-depth 1 --prefetch-threshold 0.7
run_t predictive_prefetch --policy predictive --predictor combined --prefetch-depth 1
run_t predictive_demand --policy predictive --predictor combined
# Faster decays for the combined predictor's frequency and recency parts (chosen on this same
# held-out split, so mildly optimistic): a popularity that follows the prompt.
DECAYS=(--frequency-decay 0.99 --recency-decay 0.9)
run_t predictive_demand_d --policy predictive --predictor combined "${DECAYS[@]}"
run_t predictive_prefetch_p09_d --policy predictive --predictor combined "${DECAYS[@]}" \
  --prefetch-depth 1 --prefetch-threshold 0.9
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
base = json.load(open(os.path.join(d, "t_lru_demand.json")))["timing"]["decode_time_us"]
print("| configuration | hit rate | loads | wasted prefetch | decode ms | vs LRU demand | vs floor | tokens/s |")
print("|---|---|---|---|---|---|---|---|")
for n in ["lru_demand", "lrfu_demand", "lru_prefetch", "lrfu_prefetch", "lrfu_prefetch_p07",
          "predictive_prefetch", "predictive_demand", "predictive_demand_d",
          "predictive_prefetch_p09_d"]:
    j = json.load(open(os.path.join(d, f"t_{n}.json")))
    t = j["timing"]
    print(f"| {n} | {j['hit_rate']:.4f} | "
          f"{j['loads']} | {j.get('prefetch_wasted', 0)} | {t['decode_time_us']/1e3:.1f} | "
          f"{t['decode_time_us']/base:.3f} | {t['ratio_to_floor']:.2f}x | {t['tokens_per_second']:.1f} |")
j = json.load(open(os.path.join(d, "t_lru_demand.json")))
print(f"\nfloor = max(compute {j['timing']['compute_bound_us']/1e3:.1f} ms, belady loads "
      f"{j['belady_loads']} x transfer) = {j['timing']['floor_us']/1e3:.1f} ms")
PY

echo
echo "## eviction that sees the next H tokens (held-out 20%, same timing model)"
"$build/bin/moe-horizon-oracle" --trace "$T" --capacity 16 --train-fraction 0.8
"$build/bin/moe-horizon-oracle" --trace "$T" --capacity 16 --train-fraction 0.8 \
  --fallback-decay 0.95 --horizons 0,1,2,3,inf
rm -rf "$out"
