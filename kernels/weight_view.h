// A read-only view of a weight tensor in its stored dtype, as kernels consume it.
//
// Matrices are row-major [rows, cols] in Hugging Face Linear layout: [out_features, in_features].
// Vectors (norm weights, biases) are views with rows == 1. Supported dtypes: F32, BF16, F16.
// The view does not own its bytes (they live in a checkpoint mapping or a device arena slot).
#pragma once

#include <cstddef>
#include <cstdint>

#include "runtime/safetensors.h"

namespace moe {

struct WeightView {
  const std::byte* data = nullptr;  // nullptr: absent (e.g. an optional bias)
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;

  bool present() const { return data != nullptr; }
  int64_t num_elements() const { return rows * cols; }
  uint64_t num_bytes() const { return static_cast<uint64_t>(num_elements()) * DTypeSize(dtype); }
  // Row `r` as a view with rows == 1.
  WeightView Row(int64_t r) const {
    return WeightView{data + static_cast<uint64_t>(r * cols) * DTypeSize(dtype), dtype, 1, cols};
  }
};

}  // namespace moe
