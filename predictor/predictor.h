// Router predictors: guess which experts coming layers (and coming tokens) will need, from the
// routing observed so far. Shared by the replay tool and the live engine.
//
// Protocol, per sequence (request) `seq`:
//   BeginSequence(seq); then, for each token in order and each MoE layer l in order,
//   Observe(seq, l, experts chosen at l); at any point Predict(seq, target_layer, probs).
// Predict's target is the *next visit* of the sequence to `target_layer`: if the sequence's
// current token already passed that layer, the prediction is for the next token. Several
// sequences may be interleaved (continuous batching); per-sequence state is keyed by `seq`.
// An Observe with a layer <= the sequence's last observed layer starts a new token. Observe on a
// sequence without BeginSequence starts it implicitly; Predict on an unknown sequence predicts
// from what is known without per-sequence state (layer frequencies, or zeros for "recency").
//
// Predictions only schedule work (prefetch, eviction hints); they never change routing.
//
// Names (MakePredictor):
//   "none"        all zeros (disables prefetching)
//   "frequency"   per-layer expert frequency with exponential decay per observed token; Learn()
//                 seeds it with a trace's frequencies
//   "transition"  inter-layer affinity (ExFlow): P(expert e at layer l+d | experts chosen at the
//                 token's layers l, l-1, ...), learned from traces (Learn), up to
//                 options.max_distance layers ahead; other targets fall back to the learned
//                 layer frequency
//   "recency"     experts this sequence used at the target layer on its latest tokens
//   "combined"    a weighted mixture of the three above; weights fit in Learn()
//   "learned"     a small network over the token's early residual stream predicting every later
//                 layer's experts (needs hidden states: the live engine; weights from Load)
// The classes live in predictor/<name>_predictor.h for callers that need their extra knobs.
//
// Performance: Observe and Predict run once per token-layer in replay and in the engine; they do
// not allocate once a sequence's state exists (BeginSequence reuses released states).
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

class SafetensorsFile;
class SafetensorsWriter;

struct PredictorOptions {
  ExpertSpace space;
  int32_t top_k = 0;               // experts chosen per token per layer; in [1, num_experts]
  int32_t max_distance = 4;        // how many layers ahead "transition" predicts; in [1, 64]
  double frequency_decay = 0.999;  // per observed token, for "frequency"; in (0, 1]
  double recency_decay = 0.5;      // per token of the same sequence, for "recency"; in [0, 1)
  // Observed layers of the current token that "transition" combines (the latest and the ones
  // before it); in [1, 16]. Its tables cover distances 1 .. max_distance + evidence_layers - 1.
  int32_t evidence_layers = 3;
};

// InvalidArgument naming the first option outside its range.
absl::Status ValidatePredictorOptions(const PredictorOptions& options);

struct ScoredExpert {
  int32_t expert = 0;
  float probability = 0.0f;
};

class Predictor {
 public:
  virtual ~Predictor() = default;
  virtual std::string_view name() const = 0;
  virtual const PredictorOptions& options() const = 0;

  virtual void BeginSequence(int64_t seq) = 0;
  // Drops per-sequence state; the default does nothing.
  virtual void EndSequence(int64_t seq) {}
  // `experts` holds at most top_k ids < num_experts (a violation is a bug: MOE_CHECK).
  virtual void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) = 0;
  // Writes, for every expert of `target_layer`, the probability that the sequence's next visit
  // to that layer chooses it (each in [0, 1]). probs.size() == num_experts.
  virtual void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const = 0;
  // The prediction for the sequence's next visit to `layer` (its next token's), given that it
  // chooses `experts` at `layer` now, before that is observed: what Predict(seq, layer) returns
  // after Observe(seq, layer, experts), without changing any state. The engine and replay call
  // it while the layer's experts are acquired, for the "predictive" eviction policy, so victims
  // are the experts the next token is least likely to want. Returns false (leaving probs
  // unspecified) for predictors that cannot (the default); "combined" approximates its
  // frequency part by the state before the observation.
  virtual bool PredictNextVisit(int64_t seq, int32_t layer, std::span<const uint16_t> experts,
                                std::span<float> probs) const {
    return false;
  }

  // Predictors that read hidden states (the live engine's "gate") return true; the engine then
  // calls ObserveHidden(seq, layer, h) with the token's residual stream after MoE layer `layer`
  // (hidden_size floats, valid only during the call) right after Observe(seq, layer, ...).
  // Replay has no hidden states and never calls it.
  virtual bool uses_hidden_states() const { return false; }
  virtual void ObserveHidden(int64_t seq, int32_t layer, std::span<const float> hidden) {}
  // For predictors that read hidden states: the hidden size they were built or trained for
  // (the engine refuses a model of another size); 0 when any size works.
  virtual int64_t hidden_size() const { return 0; }
  // The layer whose hidden state the predictor reads once per token and keeps for the token's
  // later layers ("learned": its source layer); -1 when it reads only the latest one. In a
  // prefill chunk the engine hands it each token's own state of that layer again before that
  // token's later predictions (tokens of a chunk share the sequence's state).
  virtual int32_t token_state_layer() const { return -1; }

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

// Makes a prediction safe to rank and use: NaN and negative values become 0, values above 1
// (and +inf) become 1. Returns how many values it changed (0 for a well-behaved predictor).
// The engine and the prefetch planner run every prediction through it, so a predictor that
// returns garbage can waste copies but never corrupt a ranking.
int32_t SanitizeProbabilities(std::span<float> probs);

// The `budget` most probable experts of a prediction, most probable first (ties: lower id).
std::vector<ScoredExpert> TopExperts(std::span<const float> probs, int32_t budget);

// Allocation-free form for hot loops: writes the ids of the min(budget, probs.size()) most
// probable experts (same order as TopExperts) to the front of `order` and returns how many.
// `order` must hold probs.size() entries; its whole content is scratch.
int32_t TopExpertIds(std::span<const float> probs, int32_t budget, std::span<int32_t> order);

// ---- for predictor implementations ---------------------------------------------------------

// MOE_CHECKs PredictNextVisit's arguments: layer in range, probs.size() == num_experts, at most
// top_k experts (each id is checked where it is used).
void CheckNextVisitArguments(const PredictorOptions& options, int32_t layer,
                             std::span<const uint16_t> experts, std::span<const float> probs);

// InvalidArgument unless the trace's layers, experts and top_k equal the options', naming both.
absl::Status CheckTraceShape(const RoutingTrace& trace, const PredictorOptions& options);

// Indices 0 .. trace.sequences.size() - 1.
std::vector<int64_t> AllSequences(const RoutingTrace& trace);

// Learned-state files are safetensors files whose metadata holds "format" = "moe-predictor",
// "predictor" (the name), "num_layers", "num_experts", "top_k", "max_distance" and
// "evidence_layers". CheckPredictorFile fails with InvalidArgument naming the file and both
// values on a mismatch of name, layers, experts or top_k, and of the distances when
// `check_distances` is set.
void SetPredictorMetadata(std::string_view name, const PredictorOptions& options,
                          SafetensorsWriter& writer);
absl::Status CheckPredictorFile(std::string_view name, const PredictorOptions& options,
                                bool check_distances, const SafetensorsFile& file);
// F32 tensors of learned-state files. ReadF32Tensor checks dtype and shape (the error names the
// file, the tensor and both shapes) and copies the data into `out` (size = product of shape).
absl::Status AddF32Tensor(SafetensorsWriter& writer, std::string name, std::vector<int64_t> shape,
                          std::span<const float> values);
absl::Status ReadF32Tensor(const SafetensorsFile& file, std::string_view name,
                           std::span<const int64_t> shape, std::span<float> out);

}  // namespace moe
