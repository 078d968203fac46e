// Summary statistics of a routing trace: how skewed, how local in time and how predictable
// across layers its routing is. Used by `moe-trace --info` and to characterise the project's
// own synthetic and recorded traces. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "predictor/routing_trace.h"

namespace moe {

struct TraceStats {
  int64_t tokens = 0;
  int64_t sequences = 0;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  // Popularity skew: share of a layer's accesses that go to its most used quarter of experts
  // (0.25 when uniform), averaged over layers; also per layer.
  double top_quarter_share = 0;
  std::vector<double> top_quarter_share_per_layer;
  // Temporal locality: mean |S(t, l) n S(t-1, l)| / k over consecutive tokens of a sequence
  // (k / num_experts when routing is independent of the previous token).
  double previous_token_overlap = 0;
  double previous_token_overlap_random = 0;
  // Inter-layer affinity: recall of the top-k experts at layer l+1 predicted from the experts
  // chosen at layer l through an in-sample transition count table, against the recall of the
  // layer's k most popular experts (the no-affinity baseline).
  double transition_recall = 0;
  double popularity_recall = 0;
};

TraceStats ComputeTraceStats(const RoutingTrace& trace);

}  // namespace moe
