// "combined": a weighted mixture of "transition", "frequency" and "recency".
//
//   p_j = w_transition * transition_j + w_frequency * frequency_j + w_recency * recency_j
// with weights >= 0 summing to 1, so p_j is in [0, 1] and as calibrated as its parts. Two weight
// sets: `ahead` for targets the transition tables cover (a later layer of the current token,
// 1 <= d <= max_distance) and `next_token` for the others (the next token's layers), where the
// transition part is only the learned layer frequency and recency carries the information.
//
// Learn(trace): holds out every 10th sequence (the last one with 2..9 sequences), learns the
// transition tables and the frequency prior on the rest, replays the held-out sequences through
// all three parts, and picks each weight set by a grid search (steps of 0.1 on the simplex)
// maximising recall at budget min(2 x top_k, num_experts); then adds the held-out sequences to
// the tables and the prior. The frequency part keeps adapting online (decayed counts) from the
// learned prior. Before Learn: ahead {0.8, 0.1, 0.1}, next token {0, 0.5, 0.5}.
//
// Calibration: the mixture ranks well but its value is not a probability (ECE 0.03 on DeepSeek,
// against 0.007 for "transition" alone). After the weights, Learn fits one monotone Calibration
// per weight set (predictor/calibration.h) on the same held-out predictions, mapping the mixture
// to the observed frequency; Predict applies it. The map is strictly increasing, so rankings and
// recall are unchanged. Before Learn: no calibration (the mixture as is).
//
// Save/Load: the "transition" predictor's tensors plus "weights" F32 [2, 3] (rows ahead and
// next_token; columns transition, frequency, recency), "prior_weight" F32 [1] (tokens the
// frequency prior is worth) and "calibration" F32 [2, 2, Calibration::kBins] (per weight set:
// knot scores, then knot values; unused knots -1; absent in older files: no calibration). The
// frequency part's online state is not saved: Load restarts it from the prior.
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "predictor/calibration.h"
#include "predictor/frequency_predictor.h"
#include "predictor/predictor.h"
#include "predictor/recency_predictor.h"
#include "predictor/transition_predictor.h"

namespace moe {

struct MixtureWeights {
  float transition = 0.0f;
  float frequency = 0.0f;
  float recency = 0.0f;
};

class CombinedPredictor final : public Predictor {
 public:
  // `options` must pass ValidatePredictorOptions (MOE_CHECK).
  explicit CombinedPredictor(const PredictorOptions& options);

  std::string_view name() const override { return "combined"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override;
  void EndSequence(int64_t seq) override;
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override;
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override;
  // The next-token mixture and calibration over the parts' PredictNextVisit (the frequency part
  // as it stands before the observation).
  bool PredictNextVisit(int64_t seq, int32_t layer, std::span<const uint16_t> experts,
                        std::span<float> probs) const override;
  absl::Status Learn(const RoutingTrace& trace) override;
  absl::Status Save(const std::string& path) const override;
  absl::Status Load(const std::string& path) override;

  // Sets both weight sets, each normalised to sum 1. InvalidArgument when a weight is negative
  // or not finite, or a set sums to 0.
  absl::Status SetWeights(const MixtureWeights& ahead, const MixtureWeights& next_token);
  const MixtureWeights& ahead_weights() const { return ahead_; }
  const MixtureWeights& next_token_weights() const { return next_token_; }

  // Back to the raw mixture (no calibration), e.g. to measure what calibration changes.
  void ResetCalibration() { ahead_calibration_ = next_token_calibration_ = Calibration(); }
  const Calibration& ahead_calibration() const { return ahead_calibration_; }
  const Calibration& next_token_calibration() const { return next_token_calibration_; }
  const TransitionPredictor& transition() const { return transition_; }
  const FrequencyPredictor& frequency() const { return frequency_; }
  const RecencyPredictor& recency() const { return recency_; }

 private:
  void FitWeights(const RoutingTrace& trace, std::span<const int64_t> sequences);
  // probs = calibration(sum of each weighted part), each part written into scratch_ by its
  // callable (skipped when its weight is 0).
  template <typename Transition, typename Frequency, typename Recency>
  void Mix(const MixtureWeights& w, const Calibration& calibration, std::span<float> probs,
           Transition&& transition, Frequency&& frequency, Recency&& recency) const {
    std::fill(probs.begin(), probs.end(), 0.0f);
    auto add = [&](float weight, auto&& predict) {
      if (weight <= 0.0f) return;
      predict();
      for (size_t j = 0; j < probs.size(); ++j) probs[j] += weight * scratch_[j];
    };
    add(w.transition, transition);
    add(w.frequency, frequency);
    add(w.recency, recency);
    for (float& p : probs) p = calibration.Apply(std::clamp(p, 0.0f, 1.0f));
  }

  PredictorOptions options_;
  FrequencyPredictor frequency_;
  TransitionPredictor transition_;
  RecencyPredictor recency_;
  MixtureWeights ahead_{0.8f, 0.1f, 0.1f};
  MixtureWeights next_token_{0.0f, 0.5f, 0.5f};
  Calibration ahead_calibration_, next_token_calibration_;
  double prior_weight_ = 1.0;           // tokens the learned frequency prior is worth
  mutable std::vector<float> scratch_;  // [E], one part's prediction
};

}  // namespace moe
