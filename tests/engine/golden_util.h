// Test helpers shared by the golden tests (CPU and CUDA): reading tensors of the transformers
// reference files and comparing logits at their scale. Header-only, for tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/safetensors.h"

namespace moe::testing_golden {

// The tensor `name` of a reference file as a vector of T (empty, with a test failure, when
// absent).
template <typename T>
std::vector<T> Read(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* info = f.Find(name);
  EXPECT_NE(info, nullptr) << name;
  if (info == nullptr) return {};
  const auto bytes = f.Data(*info);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

// max |a - b| / max |ref|: the error relative to the logits' scale.
inline double RelativeError(std::span<const float> got, std::span<const float> ref) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, std::abs(double(got[i]) - double(ref[i])));
    scale = std::max(scale, std::abs(double(ref[i])));
  }
  return diff / scale;
}

}  // namespace moe::testing_golden
