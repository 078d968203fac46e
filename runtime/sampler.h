// Picks the next token from a row of logits: greedy (temperature 0) or sampling with
// temperature, top-k and top-p (nucleus), reproducible for a given seed on every platform (the
// generator is the project's own splitmix64, not std::random's unspecified distributions).
//
// Sampling order: temperature scaling, softmax, keep the top_k most probable (0: all), keep the
// smallest prefix of those whose probability sums to >= top_p, renormalise, draw.
//
// Thread-safety: a Sampler holds generator state; one per sequence, not shared.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace moe {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, ties to the lower id)
  int32_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;
};

// InvalidArgument naming the field for negative temperature or top_k, top_p outside (0, 1].
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), state_(params.seed) {}
  int32_t Sample(std::span<const float> logits);

 private:
  double NextUniform();  // [0, 1)
  SamplingParams params_;
  uint64_t state_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

int32_t Argmax(std::span<const float> logits);

}  // namespace moe
