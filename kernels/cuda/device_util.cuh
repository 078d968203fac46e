// Internal device helpers shared by the .cu files: element loads by weight type, warp and block
// reductions, and launch-size helpers. Device code only (nvcc, C++17).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/launch.h"

namespace moe::cuda::internal {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

// Element i of a weight of element type T, as fp32 (exact for every type).
template <ElemType T>
__device__ __forceinline__ float LoadElem(const void* data, int64_t i) {
  if constexpr (T == ElemType::kF32) {
    return static_cast<const float*>(data)[i];
  } else if constexpr (T == ElemType::kBF16) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(data)[i]) << 16;
    return __uint_as_float(bits);
  } else {
    return __half2float(static_cast<const __half*>(data)[i]);
  }
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

// Sum of `v` over the block, returned to every thread. `scratch` holds >= 32 floats of shared
// memory; blockDim.x is a multiple of 32. Starts and ends with a barrier, so consecutive calls
// may reuse the same scratch and callers may read/write shared data around it freely.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < num_warps ? scratch[lane] : 0.0f;
  total = WarpSum(total);
  __syncthreads();
  return total;
}

// Maximum of `v` over the block (fmaxf: NaN is ignored unless every value is NaN), returned to
// every thread. Same contract as BlockSum.
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = lane < num_warps ? scratch[lane] : -INFINITY;
  m = WarpMax(m);
  __syncthreads();
  return m;
}

// Blocks for a grid-stride loop over `count` elements with `threads` per block: enough to fill
// the GPU, capped so the grid stays within limits whatever the count.
inline unsigned GridStrideBlocks(int64_t count, int threads) {
  constexpr int64_t kMaxBlocks = int64_t{1} << 16;
  int64_t blocks = (count + threads - 1) / threads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

}  // namespace moe::cuda::internal
