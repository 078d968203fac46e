// The engine's element-wise CUDA kernels (engine_kernels.h). Grid-stride loops over the elements.
#include "runtime/cuda/engine_kernels.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_util.cuh"

namespace moe::cuda {
namespace {

using internal::ElemType;
using internal::LoadElem;

constexpr int kThreads = 256;

__global__ void AddInPlaceKernel(float* x, const float* y, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    x[i] = __fadd_rn(x[i], y[i]);
  }
}

template <ElemType T>
__global__ void AddBiasKernel(float* y, int64_t count, int64_t cols, const void* bias) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    y[i] = __fadd_rn(y[i], LoadElem<T>(bias, i % cols));
  }
}

__global__ void SigmoidGatedAddKernel(const float* y, const float* gate, int64_t count, int64_t dim,
                                      float* x) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float s = 1.0f / (1.0f + expf(-gate[i / dim]));
    x[i] = fmaf(s, y[i], x[i]);
  }
}

}  // namespace

cudaError_t LaunchAddInPlace(float* x, const float* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  AddInPlaceKernel<<<internal::GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(x, y,
                                                                                         count);
  return cudaGetLastError();
}

cudaError_t LaunchAddBias(float* y, int64_t n, int64_t cols, const void* bias, ElemType type,
                          cudaStream_t stream) {
  const int64_t count = n * cols;
  if (count <= 0) return cudaSuccess;
  const unsigned blocks = internal::GridStrideBlocks(count, kThreads);
  switch (type) {
    case ElemType::kF32:
      AddBiasKernel<ElemType::kF32><<<blocks, kThreads, 0, stream>>>(y, count, cols, bias);
      break;
    case ElemType::kBF16:
      AddBiasKernel<ElemType::kBF16><<<blocks, kThreads, 0, stream>>>(y, count, cols, bias);
      break;
    case ElemType::kF16:
      AddBiasKernel<ElemType::kF16><<<blocks, kThreads, 0, stream>>>(y, count, cols, bias);
      break;
  }
  return cudaGetLastError();
}

cudaError_t LaunchSigmoidGatedAdd(const float* y, const float* gate, int64_t n, int64_t dim,
                                  float* x, cudaStream_t stream) {
  const int64_t count = n * dim;
  if (count <= 0) return cudaSuccess;
  SigmoidGatedAddKernel<<<internal::GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(
      y, gate, count, dim, x);
  return cudaGetLastError();
}

}  // namespace moe::cuda
