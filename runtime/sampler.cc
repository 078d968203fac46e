#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "runtime/status.h"

namespace moe {

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    return InvalidArgument("temperature {} must be a finite value >= 0", p.temperature);
  }
  if (p.top_k < 0) return InvalidArgument("top_k {} must be >= 0", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return InvalidArgument("top_p {} must be in (0, 1]", p.top_p);
  }
  return absl::OkStatus();
}

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

double Sampler::NextUniform() {
  // splitmix64: a fixed, portable sequence for a given seed.
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature == 0.0f || logits.size() <= 1) return Argmax(logits);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    candidates_.emplace_back((logits[i] - max_logit) / params_.temperature,
                             static_cast<int32_t>(i));
  }
  // Most probable first, ties to the lower id, so truncation is deterministic.
  auto by_prob = [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_prob);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_prob);
  }
  candidates_.resize(keep);
  double total = 0;
  for (auto& c : candidates_) total += (c.first = std::exp(c.first));
  if (params_.top_p < 1.0f) {
    double running = 0;
    size_t n = 0;
    while (n < candidates_.size()) {
      running += candidates_[n++].first / total;
      if (running >= params_.top_p) break;
    }
    candidates_.resize(n);
    total = 0;
    for (const auto& c : candidates_) total += c.first;
  }
  double r = NextUniform() * total;
  for (const auto& c : candidates_) {
    r -= c.first;
    if (r < 0) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace moe
