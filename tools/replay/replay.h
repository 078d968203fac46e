// Replays a routing trace through the expert cache (and optionally a predictor + prefetching and
// a link timing model). The same ExpertCache, EvictionPolicy and Predictor code the live engine
// runs, so a replayed hit rate predicts a live one.
//
// Semantics (docs/replay.md has the long form):
//   - steps come from a ReplaySchedule; each step visits every MoE layer in order; at each layer
//     each token of the step acquires its k experts together (pinned, so eviction never removes
//     an expert of the current token's set), then releases them;
//   - a hit is an expert resident (or already on its way, see late_prefetches) when the token
//     reaches the layer; cold misses count; every miss loads the expert;
//   - with a predictor, after a token's routing at layer l is observed the predictor is asked
//     for layers l+1 .. l+prefetch_depth (wrapping to the next token's early layers) and the top
//     `prefetch_budget` predicted experts that are not resident are prefetched; the predictions
//     also feed ExpertScores (read by the "predictive" policy): the scores of a layer always hold
//     the latest prediction for that layer's next visit, set before each acquire from the
//     experts being acquired (PrefetchPlanner::BeforeAcquire) as the engine does;
//   - reset_per_sequence empties the cache when a new sequence starts (batch 1 only).
// Timing model (when link_gbps > 0): a virtual clock; each layer of a step starts when the
// previous one ends, waits until all experts it needs have arrived over the link (LinkModel:
// one transfer at a time, expert_bytes / link bandwidth each, demand before queued prefetches),
// then computes for layer_compute_us. Prefetches are issued when the routing of their source
// layer is known (the start of that layer).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory/expert_cache.h"
#include "predictor/predictor.h"
#include "predictor/routing_trace.h"
#include "tools/replay/replay_schedule.h"

namespace moe {

struct ReplayOptions {
  CacheScope scope = CacheScope::kLayer;
  int64_t capacity_per_layer = 0;  // experts per layer (x layers for global scope); or
  uint64_t budget_bytes = 0;       // a byte budget (used when capacity_per_layer == 0)
  uint64_t expert_bytes = 0;       // 0: the trace header's value; still 0: 1 byte (count only)
  std::string policy = "lru";
  int32_t prefetch_depth = 0;     // layers ahead to prefetch (needs a predictor)
  int32_t prefetch_budget = 0;    // experts prefetched per predicted layer; 0: top_k
  double prefetch_threshold = 0;  // only prefetch experts predicted with at least this probability
  bool reset_per_sequence = false;
  // Timing model; disabled when link_gbps <= 0.
  double link_gbps = 0;         // GB/s (1e9 bytes per second)
  double layer_compute_us = 0;  // compute per MoE layer per step
};

struct ReplayTiming {
  bool enabled = false;
  double total_us = 0;    // simulated decode time
  double compute_us = 0;  // steps x layers x layer_compute_us: the compute-only bound
  double stall_us = 0;    // time layers waited for experts
  double link_busy_us = 0;
  uint64_t link_transfers = 0;
  uint64_t cancelled_prefetches = 0;  // evicted before their transfer started: no link time
  double transfer_us = 0;             // one expert over the link
  double tokens_per_second = 0;
};

struct ReplayResult {
  CacheStats stats;
  uint64_t late_prefetches = 0;  // demand hits on prefetched experts still in flight
  int64_t tokens = 0;
  int64_t steps = 0;
  int64_t token_layers = 0;  // routing decisions replayed
  int64_t capacity_per_partition = 0;
  int64_t capacity_total = 0;
  uint64_t expert_bytes = 0;
  ReplayTiming timing;
  double seconds = 0;  // wall time of the replay loop
};

// InvalidArgument / ResourceExhausted (named values) for a capacity below top_k, options that
// do not combine (belady with prefetching, reset_per_sequence with batching, prefetching without
// a predictor) or an unknown policy.
absl::StatusOr<ReplayResult> RunReplay(const RoutingTrace& trace, const ReplaySchedule& schedule,
                                       const ReplayOptions& options, Predictor* predictor);

// For every demand access in replay order (steps, then layers, then each token of the step, then
// its k experts), the position of the next access to the same expert, or kNoNextUse. With
// reset_per_sequence a sequence's accesses never see past its end, since the cache is emptied
// there. InvalidArgument when the schedule has 2^32 accesses or more.
inline constexpr uint32_t kNoNextUse = 0xFFFFFFFFu;
absl::StatusOr<std::vector<uint32_t>> ComputeNextUse(const RoutingTrace& trace,
                                                     const ReplaySchedule& schedule,
                                                     bool reset_per_sequence);

// The cache options RunReplay uses for `trace` and `options` (budget from capacity, etc.).
absl::StatusOr<CacheOptions> MakeReplayCacheOptions(const RoutingTrace& trace,
                                                    const ReplayOptions& options);

}  // namespace moe
