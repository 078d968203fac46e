#include "predictor/calibration.h"

#include <algorithm>
#include <cmath>

#include "runtime/status.h"

namespace moe {

void Calibration::Fit(std::span<const float> scores, std::span<const uint8_t> outcomes) {
  MOE_CHECK(scores.size() == outcomes.size());
  double sum_score[kBins] = {}, sum_outcome[kBins] = {};
  int64_t count[kBins] = {};
  for (size_t i = 0; i < scores.size(); ++i) {
    const float s = std::clamp(std::isnan(scores[i]) ? 0.0f : scores[i], 0.0f, 1.0f);
    const int b = std::min(kBins - 1, static_cast<int>(s * kBins));
    sum_score[b] += s;
    sum_outcome[b] += outcomes[i] != 0 ? 1.0 : 0.0;
    ++count[b];
  }
  // Pool adjacent violators over the non-empty bins, weighted by their counts.
  struct Block {
    double score, outcome;  // sums
    int64_t n;
  };
  std::vector<Block> blocks;
  for (int b = 0; b < kBins; ++b) {
    if (count[b] == 0) continue;
    blocks.push_back({sum_score[b], sum_outcome[b], count[b]});
    while (blocks.size() >= 2) {
      Block& last = blocks.back();
      Block& prev = blocks[blocks.size() - 2];
      if (prev.outcome / double(prev.n) <= last.outcome / double(last.n)) break;
      prev = {prev.score + last.score, prev.outcome + last.outcome, prev.n + last.n};
      blocks.pop_back();
    }
  }
  knot_score_.clear();
  knot_value_.clear();
  for (const Block& b : blocks) {
    knot_score_.push_back(static_cast<float>(b.score / double(b.n)));
    knot_value_.push_back(static_cast<float>(b.outcome / double(b.n)));
  }
}

float Calibration::Apply(float score) const {
  if (knot_score_.empty()) return score;
  const float s = std::clamp(std::isnan(score) ? 0.0f : score, 0.0f, 1.0f);
  float v;
  const auto it = std::upper_bound(knot_score_.begin(), knot_score_.end(), s);
  if (it == knot_score_.begin()) {
    v = knot_value_.front();
  } else if (it == knot_score_.end()) {
    v = knot_value_.back();
  } else {
    const size_t hi = static_cast<size_t>(it - knot_score_.begin()), lo = hi - 1;
    const float t = (s - knot_score_[lo]) / (knot_score_[hi] - knot_score_[lo]);
    v = knot_value_[lo] + t * (knot_value_[hi] - knot_value_[lo]);
  }
  return std::clamp((1.0f - kIdentityShare) * v + kIdentityShare * s, 0.0f, 1.0f);
}

absl::Status Calibration::SetKnots(std::span<const float> scores, std::span<const float> values) {
  if (scores.size() != values.size()) {
    return InvalidArgument("calibration: {} knot scores but {} values", scores.size(),
                           values.size());
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!(scores[i] >= 0.0f && scores[i] <= 1.0f) || !(values[i] >= 0.0f && values[i] <= 1.0f)) {
      return InvalidArgument("calibration: knot {} ({}, {}) outside [0, 1]", i, scores[i],
                             values[i]);
    }
    if (i > 0 && !(scores[i] > scores[i - 1])) {
      return InvalidArgument("calibration: knot scores not increasing at knot {} ({} after {})", i,
                             scores[i], scores[i - 1]);
    }
    if (i > 0 && values[i] < values[i - 1]) {
      return InvalidArgument("calibration: knot values decrease at knot {} ({} after {})", i,
                             values[i], values[i - 1]);
    }
  }
  knot_score_.assign(scores.begin(), scores.end());
  knot_value_.assign(values.begin(), values.end());
  return absl::OkStatus();
}

}  // namespace moe
