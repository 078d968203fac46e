// Synthetic routing traces with controllable structure, for tests and the demo.
//
// Each token's experts at each layer are drawn (without replacement, k distinct) from a mixture
// of three sources, so each knob moves one measurable property:
//   - popularity: a per-layer Zipf distribution over experts with exponent `zipf_skew`
//     (0 = uniform); each layer gets its own random permutation of expert ranks;
//   - temporal locality: with probability `temporal_locality`, a slot repeats one of the experts
//     the same sequence's previous token chose at this layer;
//   - inter-layer affinity: with probability `layer_affinity`, a slot follows a fixed random
//     mapping from an expert chosen at the previous layer to an expert at this layer.
// For each slot the sources are tried in that order: locality (when the token is not the first
// of its sequence), then affinity (from layer 1 on), then popularity; a source whose candidates
// are all already in the set falls through to the next one. So the effective share of affinity
// is about (1 - temporal_locality) x layer_affinity. The affinity mapping is a permutation per
// layer, so the k distinct experts of layer l - 1 map to k distinct experts at layer l.
//
// Deterministic for a given seed on every platform: the generator uses its own xoshiro256**
// stream, not <random> distributions (whose outputs differ between standard libraries).
// All tokens get `phase`; sequence lengths are uniform in [min_tokens, max_tokens].
// Thread-safety: a pure function; safe to call concurrently.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "predictor/routing_trace.h"

namespace moe {

struct SyntheticTraceOptions {
  std::string model = "synthetic";
  int32_t num_layers = 8;
  int32_t num_experts = 16;
  int32_t top_k = 2;
  uint64_t expert_bytes = 1 << 20;
  int32_t num_sequences = 16;
  int32_t min_tokens = 16;  // tokens per sequence drawn uniformly in [min_tokens, max_tokens]
  int32_t max_tokens = 64;
  double zipf_skew = 0.8;
  double temporal_locality = 0.3;
  double layer_affinity = 0.4;
  Phase phase = Phase::kDecode;
  uint64_t seed = 1;
};

// InvalidArgument when options are out of range (top_k > num_experts, probabilities outside
// [0, 1], no sequences or tokens, more than 2^30 expert entries, ...), naming the field and
// value.
absl::StatusOr<RoutingTrace> GenerateSyntheticTrace(const SyntheticTraceOptions& options);

}  // namespace moe
