#include "predictor/recency_predictor.h"

#include <algorithm>

#include "runtime/status.h"

namespace moe {

RecencyPredictor::RecencyPredictor(const PredictorOptions& options) : options_(options) {
  MOE_CHECK(ValidatePredictorOptions(options).ok());
}

void RecencyPredictor::BeginSequence(int64_t seq) {
  auto [it, inserted] = scores_.try_emplace(seq);
  if (inserted && !free_scores_.empty()) {
    it->second = std::move(free_scores_.back());
    free_scores_.pop_back();
  }
  it->second.assign(options_.space.size(), 0.0f);
}

void RecencyPredictor::EndSequence(int64_t seq) {
  auto it = scores_.find(seq);
  if (it == scores_.end()) return;
  free_scores_.push_back(std::move(it->second));
  scores_.erase(it);
}

void RecencyPredictor::Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
  MOE_CHECK(layer >= 0 && layer < options_.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(experts.size()) <= options_.top_k);
  auto it = scores_.find(seq);
  if (it == scores_.end()) {
    BeginSequence(seq);
    it = scores_.find(seq);
  }
  const int32_t num_experts = options_.space.num_experts;
  float* row = it->second.data() + int64_t{layer} * num_experts;
  const float decay = static_cast<float>(options_.recency_decay);
  for (int32_t i = 0; i < num_experts; ++i) row[i] *= decay;
  for (uint16_t expert : experts) {
    MOE_CHECK(expert < num_experts);
    row[expert] += 1.0f;
  }
}

void RecencyPredictor::Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const {
  const int32_t num_experts = options_.space.num_experts;
  MOE_CHECK(target_layer >= 0 && target_layer < options_.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(probs.size()) == num_experts);
  auto it = scores_.find(seq);
  if (it == scores_.end()) {
    std::fill(probs.begin(), probs.end(), 0.0f);
    return;
  }
  const float* row = it->second.data() + int64_t{target_layer} * num_experts;
  const float scale = static_cast<float>(1.0 - options_.recency_decay);
  for (int32_t i = 0; i < num_experts; ++i) probs[i] = std::min(1.0f, row[i] * scale);
}

bool RecencyPredictor::PredictNextVisit(int64_t seq, int32_t layer,
                                        std::span<const uint16_t> experts,
                                        std::span<float> probs) const {
  CheckNextVisitArguments(options_, layer, experts, probs);
  const int32_t num_experts = options_.space.num_experts;
  // Observe's update of the layer's scores, into probs, then Predict's scaling.
  auto it = scores_.find(seq);
  const float decay = static_cast<float>(options_.recency_decay);
  for (int32_t i = 0; i < num_experts; ++i) {
    probs[i] = it == scores_.end() ? 0.0f : it->second[int64_t{layer} * num_experts + i] * decay;
  }
  for (uint16_t expert : experts) {
    MOE_CHECK(expert < num_experts);
    probs[expert] += 1.0f;
  }
  const float scale = static_cast<float>(1.0 - options_.recency_decay);
  for (float& p : probs) p = std::min(1.0f, p * scale);
  return true;
}

}  // namespace moe
