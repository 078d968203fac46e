// Internal host helpers of the CUDA kernel wrappers (cuda_kernels.cc, blas.cc): argument checks
// shared by several functions and the conversion of launch errors into Statuses. C++20 host code
// (includes project headers); never included by .cu files.
#pragma once

#include <cuda_runtime_api.h>

#include <initializer_list>

#include "absl/status/status.h"
#include "kernels/cuda/launch.h"
#include "kernels/weight_view.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"

namespace moe::cuda::internal {

struct NamedPointer {
  const char* name;
  const void* pointer;
};

// InvalidArgument naming the first null pointer.
inline absl::Status CheckNotNull(const char* fn, std::initializer_list<NamedPointer> pointers) {
  for (const NamedPointer& p : pointers) {
    if (p.pointer == nullptr) return InvalidArgument("{}: {} is null", fn, p.name);
  }
  return absl::OkStatus();
}

// The element type of a weight: F32 and BF16, and F16 where `allow_f16`; InvalidArgument else.
inline absl::Status WeightElemType(const char* fn, const WeightView& w, bool allow_f16,
                                   ElemType* type) {
  switch (w.dtype) {
    case DType::kF32:
      *type = ElemType::kF32;
      return absl::OkStatus();
    case DType::kBF16:
      *type = ElemType::kBF16;
      return absl::OkStatus();
    case DType::kF16:
      if (allow_f16) {
        *type = ElemType::kF16;
        return absl::OkStatus();
      }
      break;
    default:
      break;
  }
  return InvalidArgument("{}: unsupported weight dtype {}", fn, DTypeName(w.dtype));
}

// Internal naming the kernel and the CUDA error when a launch failed; OK otherwise.
inline absl::Status LaunchStatus(const char* fn, const char* kernel, cudaError_t error) {
  if (error == cudaSuccess) return absl::OkStatus();
  return Internal("{}: kernel {} failed: {} ({})", fn, kernel, cudaGetErrorString(error),
                  cudaGetErrorName(error));
}

}  // namespace moe::cuda::internal
