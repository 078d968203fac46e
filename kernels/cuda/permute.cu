// Token permutation for the routed experts: group the n * k (token, rank) rows by expert,
// gather the grouped activations, and combine expert outputs back per token in rank order.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace moe::cuda::internal {
namespace {

constexpr int kPermuteThreads = 1024;
constexpr int kRowThreads = 256;

// One block. Histogram (shared atomics: order-free), exclusive scan (one thread; at most
// kMaxPermutationExperts steps), then a stable scatter: warp w walks the rows of experts w,
// w + 32, ... in flat order 32 at a time, and a ballot gives each matching lane its place, so
// rows keep their flat order t * k + r (token order, then rank) within an expert. Rows whose id
// is outside [0, num_experts) are skipped: row_position -1, and the grouped positions past the
// last expert's rows hold -1.
__global__ void ExpertPermutationKernel(const int32_t* ids, int rows, int num_experts,
                                        int32_t* counts, int32_t* offsets, int32_t* sorted_rows,
                                        int32_t* row_position) {
  extern __shared__ int32_t smem[];
  int32_t* s_count = smem;                 // [num_experts]
  int32_t* s_offset = smem + num_experts;  // [num_experts + 1]
  const int tid = threadIdx.x;
  for (int e = tid; e < num_experts; e += blockDim.x) s_count[e] = 0;
  __syncthreads();
  for (int f = tid; f < rows; f += blockDim.x) {
    const int32_t e = ids[f];
    if (e >= 0 && e < num_experts) {
      atomicAdd(&s_count[e], 1);
    } else {
      row_position[f] = -1;
    }
  }
  __syncthreads();
  if (tid == 0) {
    int32_t acc = 0;
    for (int e = 0; e < num_experts; ++e) {
      s_offset[e] = acc;
      acc += s_count[e];
    }
    s_offset[num_experts] = acc;
  }
  __syncthreads();
  for (int e = tid; e < num_experts; e += blockDim.x) counts[e] = s_count[e];
  for (int e = tid; e <= num_experts; e += blockDim.x) offsets[e] = s_offset[e];
  for (int p = s_offset[num_experts] + tid; p < rows; p += blockDim.x) sorted_rows[p] = -1;

  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int e = warp; e < num_experts; e += num_warps) {
    int32_t pos = s_offset[e];  // the same in every lane of the warp throughout
    const int32_t end = s_offset[e + 1];
    for (int base = 0; base < rows && pos < end; base += kWarpSize) {
      const int f = base + lane;
      const bool match = f < rows && ids[f] == e;
      const unsigned mask = __ballot_sync(kFullMask, match);
      if (match) {
        const int32_t p = pos + __popc(mask & lanes_below);
        sorted_rows[p] = f;
        row_position[f] = p;
      }
      pos += __popc(mask);
    }
  }
}

// One block per grouped row p: out[p, :] = x[sorted_rows[p] / k, :] (zeros where the row is -1).
__global__ void GatherRowsKernel(const float* x, int64_t dim, const int32_t* sorted_rows, int64_t k,
                                 float* out) {
  const int64_t p = blockIdx.x;
  const int32_t row = sorted_rows[p];
  float* dst = out + p * dim;
  if (row < 0) {
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = 0.0f;
    return;
  }
  const float* src = x + (row / k) * dim;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = src[d];
}

// One block per token. Each element adds its k terms in rank order with one fused multiply-add
// each: exactly the CPU engine's ScaledAdd per (token, rank) on its AVX2/FMA path. Rows with
// row_position -1 (skipped ids) add nothing.
__global__ void CombineKernel(const float* y, const int32_t* row_position, const float* weights,
                              int64_t k, int64_t dim, float* out) {
  const int64_t t = blockIdx.x;
  const int32_t* pos = row_position + t * k;
  const float* w = weights + t * k;
  float* o = out + t * dim;
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = o[d];
    for (int64_t r = 0; r < k; ++r) {
      const int32_t p = pos[r];
      if (p >= 0) acc = __fmaf_rn(w[r], y[static_cast<int64_t>(p) * dim + d], acc);
    }
    o[d] = acc;
  }
}

}  // namespace

cudaError_t LaunchExpertPermutation(const int32_t* ids, int64_t rows, int64_t num_experts,
                                    int32_t* counts, int32_t* offsets, int32_t* sorted_rows,
                                    int32_t* row_position, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(2 * num_experts + 1) * sizeof(int32_t);
  ExpertPermutationKernel<<<1, kPermuteThreads, smem, stream>>>(
      ids, static_cast<int>(rows), static_cast<int>(num_experts), counts, offsets, sorted_rows,
      row_position);
  return cudaGetLastError();
}

cudaError_t LaunchGatherRows(const float* x, int64_t n_rows_out, int64_t dim,
                             const int32_t* sorted_rows, int64_t k, float* out,
                             cudaStream_t stream) {
  GatherRowsKernel<<<static_cast<unsigned>(n_rows_out), kRowThreads, 0, stream>>>(
      x, dim, sorted_rows, k, out);
  return cudaGetLastError();
}

cudaError_t LaunchCombineExpertOutputs(const float* y, const int32_t* row_position,
                                       const float* weights, int64_t n, int64_t k, int64_t dim,
                                       float* out, cudaStream_t stream) {
  CombineKernel<<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(y, row_position, weights, k,
                                                                      dim, out);
  return cudaGetLastError();
}

}  // namespace moe::cuda::internal
