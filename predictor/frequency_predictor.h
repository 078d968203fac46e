// "frequency": how often each expert of a layer was chosen, with exponential decay per token.
//
// State is global (shared by all sequences): per layer, a decayed count per expert and the
// decayed number of tokens. Each Observe at layer l decays layer l's history by
// options.frequency_decay and adds the new token, so the estimate follows drift with a horizon
// of about 1 / (1 - decay) tokens. Predict returns count / tokens, the fraction of recent tokens
// that chose the expert: in [0, 1] and summing to top_k over a layer.
//
// Learn() seeds the counts with the trace's per-layer frequencies, weighted as
// min(trace tokens + 1, PriorWeight()) tokens, so live observations take over at the decay's pace.
// Before any Learn or Observe every expert has top_k / num_experts.
//
// Decay is lazy (a growing per-layer increment, renormalised rarely), so Observe costs O(top_k).
// Save/Load: tensors "frequency" F32 [L, E] (current estimate) and "weight" F32 [L] (tokens of
// evidence per layer).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "predictor/predictor.h"

namespace moe {

// Frequency of an expert chosen `count` times in `tokens` tokens, smoothed with one pseudo-token
// choosing uniformly (top_k / num_experts each): always in (0, 1).
inline float SmoothedFrequency(double count, double tokens, int32_t top_k, int32_t num_experts) {
  return static_cast<float>((count + static_cast<double>(top_k) / num_experts) / (tokens + 1.0));
}

class FrequencyPredictor final : public Predictor {
 public:
  // `options` must pass ValidatePredictorOptions (MOE_CHECK).
  explicit FrequencyPredictor(const PredictorOptions& options);

  std::string_view name() const override { return "frequency"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override {}
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override;
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override;
  absl::Status Learn(const RoutingTrace& trace) override;
  absl::Status Save(const std::string& path) const override;
  absl::Status Load(const std::string& path) override;

  // Learn() restricted to the given sequences (indices into trace.sequences).
  absl::Status LearnFrom(const RoutingTrace& trace, std::span<const int64_t> sequences);
  // Replaces the state with `frequency` ([L * E], each in [0, 1]) worth `weight` tokens (> 0).
  void SetPrior(std::span<const float> frequency, double weight);
  // The largest prior weight Learn() uses: 1 / (1 - decay), or 1000 tokens without decay.
  double PriorWeight() const;

  // Smoothed per-layer frequencies ([L * E], SmoothedFrequency) of the given sequences; the
  // trace's shape must match `options` (checked by the caller). `tokens_out` may be null.
  static std::vector<float> LayerFrequency(const RoutingTrace& trace,
                                           std::span<const int64_t> sequences,
                                           const PredictorOptions& options, int64_t* tokens_out);

 private:
  void Renormalize(int32_t layer);

  PredictorOptions options_;
  double inverse_decay_;
  std::vector<double> counts_;     // [L * E], scaled by increment_[layer]
  std::vector<double> tokens_;     // [L], scaled by increment_[layer]
  std::vector<double> increment_;  // [L], weight of the next observation
};

}  // namespace moe
