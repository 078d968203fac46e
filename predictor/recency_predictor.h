// "recency": the experts this sequence chose at the target layer on its latest tokens.
//
// Per sequence and layer, a score per expert: each Observe at layer l multiplies layer l's
// scores by options.recency_decay and adds 1 to the chosen experts, so
//   score_e = sum over the sequence's past tokens t that chose e at l of decay^(age of t).
// Predict returns min(1, (1 - decay) x score): 1 for an expert every recent token chose,
// (1 - decay) for one only the latest token chose, 0 for one never chosen (or an unknown
// sequence). Since the target is the layer's next visit, the same state answers "later in this
// token" (the latest token is the previous one) and "next token" (the latest is this one).
//
// No learned state: Learn does nothing; Save/Load are Unimplemented.
// Memory: L x E floats per live sequence; EndSequence recycles them.
#pragma once

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "predictor/predictor.h"

namespace moe {

class RecencyPredictor final : public Predictor {
 public:
  // `options` must pass ValidatePredictorOptions (MOE_CHECK).
  explicit RecencyPredictor(const PredictorOptions& options);

  std::string_view name() const override { return "recency"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override;
  void EndSequence(int64_t seq) override;
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override;
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override;
  bool PredictNextVisit(int64_t seq, int32_t layer, std::span<const uint16_t> experts,
                        std::span<float> probs) const override;

 private:
  PredictorOptions options_;
  absl::flat_hash_map<int64_t, std::vector<float>> scores_;  // [L * E] per sequence
  std::vector<std::vector<float>> free_scores_;
};

}  // namespace moe
