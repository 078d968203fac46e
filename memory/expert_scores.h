// Per-expert "how likely am I to be needed soon" scores, shared between whoever predicts
// (the replay driver or the live engine, fed by a Predictor) and the predictor-aware eviction
// policy, which reads them to pick victims.
//
// One float per dense ExpertKey, in [0, 1]; 0 until someone writes. Not thread-safe: written
// and read by the thread that drives the cache.
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "experts/expert_id.h"

namespace moe {

class ExpertScores {
 public:
  explicit ExpertScores(ExpertSpace space)
      : space_(space), scores_(static_cast<size_t>(space.size()), 0.0f) {}

  ExpertSpace space() const { return space_; }
  float Get(ExpertKey key) const { return scores_[key]; }
  void Set(ExpertKey key, float score) { scores_[key] = score; }
  // Overwrites the scores of every expert of `layer` (probs.size() == num_experts).
  void SetLayer(int32_t layer, std::span<const float> probs) {
    std::copy(probs.begin(), probs.end(), scores_.begin() + space_.Key(layer, 0));
  }
  std::span<const float> Layer(int32_t layer) const {
    return {scores_.data() + space_.Key(layer, 0), static_cast<size_t>(space_.num_experts)};
  }

 private:
  ExpertSpace space_;
  std::vector<float> scores_;
};

}  // namespace moe
