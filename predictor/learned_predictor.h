// "learned": a small network, trained offline, that predicts from a token's early residual
// stream which experts every later layer will choose (in the spirit of SiDA). Training:
// scripts/train/train_learned_predictor.py; the file:
// models/pydoc-moe/learned_predictor.safetensors.
//
// When the token leaves MoE layer `source_layer` (ObserveHidden(seq, source_layer, x)):
//   xn = x / sqrt(mean(x^2) + 1e-6)            (no weight)
//   h  = relu(w1 . xn + b1)                   w1 [U, H], b1 [U]
//   p  = sigmoid(w2 . h + b2)                 w2 [L * E, U], b2 [L * E]; row l * E + e
// and p[l * E + e] is the probability that layer l chooses expert e for this token (trained with
// a binary cross-entropy per (layer, expert), so it estimates that marginal probability). One
// evaluation answers every later layer of the token: the prediction is available L - 1 layers
// ahead, where transition tables and the next-layer gate see one layer at a time.
// Targets the token has already passed, and tokens before their source layer, are answered by a
// built-in "frequency" predictor fed by Observe (and seeded by Learn).
//
// File: a safetensors file with the learned-state metadata of predictor.h ("predictor" =
// "learned", layers, experts, top_k) plus "source_layer"; tensors w1, b1, w2, b2 in F32. Load
// checks the metadata against the options and the tensor shapes against each other, naming the
// file and the mismatch; hidden sizes other than the model's are caught by the engine through
// input_size(). Save writes the same format.
//
// Thread-safety: none (one predictor per engine). Predict does not allocate.
#pragma once

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "predictor/frequency_predictor.h"
#include "predictor/predictor.h"

namespace moe {

struct LearnedPredictorWeights {
  int32_t source_layer = 0;
  int64_t input_size = 0;    // H
  int64_t hidden_units = 0;  // U
  std::vector<float> w1, b1, w2, b2;
};

class LearnedPredictor final : public Predictor {
 public:
  // Without weights until Load (or SetWeights): Predict then answers from frequencies only.
  explicit LearnedPredictor(const PredictorOptions& options);

  std::string_view name() const override { return "learned"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override;
  void EndSequence(int64_t seq) override;
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override;
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override;
  absl::Status Learn(const RoutingTrace& trace) override { return fallback_.Learn(trace); }
  bool uses_hidden_states() const override { return true; }
  // Hidden states of the wrong size (a model the file was not trained for) are ignored and
  // counted; the engine rejects such a pairing up front (input_size()).
  void ObserveHidden(int64_t seq, int32_t layer, std::span<const float> hidden) override;
  absl::Status Save(const std::string& path) const override;
  absl::Status Load(const std::string& path) override;

  // InvalidArgument when the shapes do not fit the options or each other.
  absl::Status SetWeights(LearnedPredictorWeights weights);
  bool has_weights() const { return weights_.input_size > 0; }
  int64_t input_size() const { return weights_.input_size; }
  int64_t hidden_size() const override { return weights_.input_size; }
  int32_t token_state_layer() const override { return has_weights() ? weights_.source_layer : -1; }
  int32_t source_layer() const { return weights_.source_layer; }
  uint64_t ignored_hidden_states() const { return ignored_hidden_; }

  // The network's output for one residual stream: probs [L * E]. For tests and tools.
  void Evaluate(std::span<const float> hidden, std::span<float> probs) const;

 private:
  struct SequenceState {
    int32_t last_layer = -1;   // latest layer observed for the current token
    bool has_table = false;    // `table` holds the current token's prediction
    std::vector<float> table;  // [L * E]
  };

  PredictorOptions options_;
  LearnedPredictorWeights weights_;
  FrequencyPredictor fallback_;
  absl::flat_hash_map<int64_t, SequenceState> sequences_;
  mutable std::vector<float> normed_, hidden_;  // scratch
  uint64_t ignored_hidden_ = 0;
};

}  // namespace moe
