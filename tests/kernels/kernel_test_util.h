// Shared helpers of the kernel tests: weights in every dtype with their exact fp32 values, random
// activations from fixed seeds, and a closeness check relative to the reference's magnitude.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/float16.h"
#include "kernels/weight_view.h"
#include "runtime/safetensors.h"

namespace moe::kernel_testing {

// A weight tensor stored in `dtype` and the exact fp32 value of every element.
struct TestWeight {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<std::byte> bytes;
  std::vector<float> values;  // [rows * cols], exactly what the stored elements decode to

  WeightView view() const {
    return WeightView{bytes.empty() ? nullptr : bytes.data(), dtype, rows, cols};
  }
  float at(int64_t r, int64_t c) const { return values[static_cast<size_t>(r * cols + c)]; }
};

// Uniform values in [-scale, scale], rounded to `dtype`.
inline TestWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed,
                             float scale = 1.0f) {
  TestWeight w;
  w.dtype = dtype;
  w.rows = rows;
  w.cols = cols;
  const size_t count = static_cast<size_t>(rows * cols);
  w.bytes.resize(count * DTypeSize(dtype));
  w.values.resize(count);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (size_t i = 0; i < count; ++i) {
    const float v = dist(rng);
    if (dtype == DType::kF32) {
      std::memcpy(w.bytes.data() + 4 * i, &v, 4);
      w.values[i] = v;
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
      w.values[i] = dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
    }
  }
  return w;
}

inline std::vector<float> RandomVector(size_t count, uint32_t seed, float scale = 1.0f) {
  std::vector<float> v(count);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (float& x : v) x = dist(rng);
  return v;
}

// Checks max|actual - ref| <= rel * max|ref| + abs.
inline ::testing::AssertionResult Close(const std::vector<float>& actual,
                                        const std::vector<double>& ref, double rel,
                                        double abs = 1e-6) {
  if (actual.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << "size " << actual.size() << " != reference size " << ref.size();
  }
  double max_ref = 0.0;
  for (double r : ref) max_ref = std::fmax(max_ref, std::fabs(r));
  double max_err = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(static_cast<double>(actual[i]) - ref[i]);
    if (!(err <= max_err)) {  // also catches NaN
      max_err = err;
      worst = i;
    }
  }
  const double tol = rel * max_ref + abs;
  if (max_err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max error " << max_err << " at " << worst << " (got " << actual[worst] << ", want "
         << ref[worst] << ") exceeds " << tol << " (max |ref| " << max_ref << ")";
}

inline std::vector<double> ToDouble(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

inline bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline std::string DTypeLabel(DType d) { return std::string(DTypeName(d)); }

// Relative tolerance of fp32-accumulated results against a double reference.
constexpr double kF32Rel = 1e-5;

}  // namespace moe::kernel_testing
