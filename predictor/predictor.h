// Router predictors: guess which experts coming layers (and coming tokens) will need, from the
// routing observed so far. Shared by the replay tool and the live engine.
//
// Protocol, per sequence (request) `seq`:
//   BeginSequence(seq); then, for each token in order and each MoE layer l in order,
//   Observe(seq, l, experts chosen at l); at any point Predict(seq, target_layer, probs).
// Predict's target is the *next visit* of the sequence to `target_layer`: if the sequence's
// current token already passed that layer, the prediction is for the next token. Several
// sequences may be interleaved (continuous batching); per-sequence state is keyed by `seq`.
//
// Predictions only schedule work (prefetch, eviction hints); they never change routing.
//
// Names (MakePredictor):
//   "none"        all zeros (disables prefetching)
//   "frequency"   per-layer expert frequency with exponential decay per observed token
//   "transition"  inter-layer affinity: P(expert e at layer l+d | experts chosen at layer l),
//                 learned from traces (Learn), up to options.max_distance layers ahead
//   "recency"     experts this sequence used at the target layer on its latest tokens
//   "combined"    a weighted mixture of the three above; weights fit in Learn()
//
// Thread-safety: none; one predictor per driving thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "experts/expert_id.h"
#include "predictor/routing_trace.h"

namespace moe {

struct PredictorOptions {
  ExpertSpace space;
  int32_t top_k = 0;
  int32_t max_distance = 4;      // how many layers ahead "transition" learns tables for
  double frequency_decay = 0.999;  // per observed token, for "frequency"
  double recency_decay = 0.5;      // per token of the same sequence, for "recency"
};

struct ScoredExpert {
  int32_t expert = 0;
  float probability = 0.0f;
};

class Predictor {
 public:
  virtual ~Predictor() = default;
  virtual std::string_view name() const = 0;

  virtual void BeginSequence(int64_t seq) = 0;
  // Drops per-sequence state; the default does nothing.
  virtual void EndSequence(int64_t seq) {}
  virtual void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) = 0;
  // Writes, for every expert of `target_layer`, the probability that the sequence's next visit
  // to that layer chooses it (each in [0, 1]). probs.size() == num_experts.
  virtual void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const = 0;

  // Learns tables (or fits weights) from a trace whose shape matches the options; the default
  // does nothing. InvalidArgument on a shape mismatch, naming both shapes.
  virtual absl::Status Learn(const RoutingTrace& trace) { return absl::OkStatus(); }
  // Saves / loads learned state. Load checks that the file matches this predictor's name and
  // options (layers, experts, distances) and names the mismatch. Predictors without learned
  // state return Unimplemented.
  virtual absl::Status Save(const std::string& path) const;
  virtual absl::Status Load(const std::string& path);
};

// InvalidArgument for an unknown name (listing the valid ones) or bad options.
absl::StatusOr<std::unique_ptr<Predictor>> MakePredictor(std::string_view name,
                                                         const PredictorOptions& options);
std::span<const std::string_view> PredictorNames();

// The `budget` most probable experts of a prediction, most probable first (ties: lower id).
std::vector<ScoredExpert> TopExperts(std::span<const float> probs, int32_t budget);

}  // namespace moe
