// Selection kernels: the router's top-k softmax and greedy argmax over logits. Both reproduce the
// CPU's choice rules exactly (ties to the lower index, NaN handling), so the same logits give the
// same ids on every backend; only the softmax probabilities differ, by rounding (summation order
// and libm exp).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace moe::cuda::internal {
namespace {

// ---- top-k softmax --------------------------------------------------------------------------

constexpr int kRouterThreads = 256;  // 8 warps: one token per warp
constexpr int kPerLane = static_cast<int>(kMaxRouterExperts) / kWarpSize;
constexpr int kNoExpert = INT_MAX;

// The strict total order of moe::cpu::TopKSoftmax's picks: probabilities that are not NaN come
// first, highest first, ties to the lower id; then NaN probabilities by id (the CPU takes those
// only when nothing else is left, lowest id first); "no candidate" (kNoExpert) ranks last.
__device__ __forceinline__ bool RanksBefore(float pa, int ia, float pb, int ib) {
  if (ia == kNoExpert) return false;
  if (ib == kNoExpert) return true;
  const bool a_nan = isnan(pa);
  const bool b_nan = isnan(pb);
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && pa != pb) return pa > pb;
  return ia < ib;
}

// One warp per token; lane l holds experts l, l + 32, ... (up to kPerLane of them) in registers.
// Each of the k rounds takes the best expert not yet taken: a per-lane candidate, then a
// butterfly reduction under the total order above, so every lane learns the same winner.
__global__ void TopKSoftmaxKernel(const float* logits, int64_t n, int num_experts, int k,
                                  bool renormalize, int32_t* ids_out, float* weights_out) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t t =
      static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (t >= n) return;  // uniform across the warp: the shuffles below see full warps only
  const float* l = logits + t * num_experts;

  float p[kPerLane];
  float max_logit = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + j * kWarpSize;
    p[j] = e < num_experts ? l[e] : -INFINITY;
    if (e < num_experts) max_logit = fmaxf(max_logit, p[j]);
  }
  max_logit = WarpMax(max_logit);
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + j * kWarpSize;
    if (e < num_experts) {
      p[j] = expf(p[j] - max_logit);
      sum += p[j];
    }
  }
  sum = WarpSum(sum);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) p[j] = p[j] / sum;

  int32_t* ids = ids_out + t * k;
  float* weights = weights_out + t * k;
  uint32_t taken = 0;  // bit j: expert lane + 32 j already picked
  float total = 0.0f;
  for (int r = 0; r < k; ++r) {
    float best_p = 0.0f;
    int best = kNoExpert;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + j * kWarpSize;
      if (e < num_experts && ((taken >> j) & 1u) == 0 && RanksBefore(p[j], e, best_p, best)) {
        best_p = p[j];
        best = e;
      }
    }
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const float other_p = __shfl_xor_sync(kFullMask, best_p, offset);
      const int other = __shfl_xor_sync(kFullMask, best, offset);
      if (RanksBefore(other_p, other, best_p, best)) {
        best_p = other_p;
        best = other;
      }
    }
    // k <= num_experts, so some expert is always left: best is a real id here.
    if (best % kWarpSize == lane) taken |= 1u << (best / kWarpSize);
    total += best_p;  // in pick order, as the CPU sums
    if (lane == 0) {
      ids[r] = best;
      weights[r] = best_p;
    }
  }
  if (renormalize && lane == 0) {
    for (int r = 0; r < k; ++r) weights[r] = weights[r] / total;
  }
}

// ---- argmax ---------------------------------------------------------------------------------

constexpr int kArgmaxThreads = 512;
constexpr int kNoIndex = INT_MAX;

// a before b: larger value, ties to the lower index; kNoIndex ranks last. Values are never NaN.
__device__ __forceinline__ bool Beats(float va, int ia, float vb, int ib) {
  if (ia == kNoIndex) return false;
  if (ib == kNoIndex) return true;
  return va > vb || (va == vb && ia < ib);
}

// One block per row. runtime/sampler.cc's greedy Argmax keeps the first index whose value is
// strictly greater than the best so far, starting from index 0: NaN never wins, so the answer is
// the first maximum of the non-NaN values, except that a NaN at index 0 is never replaced (the
// answer is then 0). This kernel computes exactly that.
__global__ void ArgmaxKernel(const float* logits, int64_t vocab, int32_t* ids_out) {
  __shared__ float s_val[kArgmaxThreads / kWarpSize];
  __shared__ int s_idx[kArgmaxThreads / kWarpSize];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float best_v = 0.0f;
  int best = kNoIndex;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (!isnan(v) && (best == kNoIndex || v > best_v)) {  // increasing i: first max kept
      best_v = v;
      best = static_cast<int>(i);
    }
  }
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const float other_v = __shfl_xor_sync(kFullMask, best_v, offset);
    const int other = __shfl_xor_sync(kFullMask, best, offset);
    if (Beats(other_v, other, best_v, best)) {
      best_v = other_v;
      best = other;
    }
  }
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) {
    s_val[warp] = best_v;
    s_idx[warp] = best;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int num_warps = blockDim.x / kWarpSize;
    for (int w = 1; w < num_warps; ++w) {
      if (Beats(s_val[w], s_idx[w], best_v, best)) {
        best_v = s_val[w];
        best = s_idx[w];
      }
    }
    if (isnan(row[0]) || best == kNoIndex) best = 0;
    ids_out[blockIdx.x] = best;
  }
}

}  // namespace

cudaError_t LaunchTopKSoftmax(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                              bool renormalize, int32_t* ids_out, float* weights_out,
                              cudaStream_t stream) {
  constexpr int64_t kTokensPerBlock = kRouterThreads / kWarpSize;
  const unsigned blocks = static_cast<unsigned>((n + kTokensPerBlock - 1) / kTokensPerBlock);
  TopKSoftmaxKernel<<<blocks, kRouterThreads, 0, stream>>>(logits, n, static_cast<int>(num_experts),
                                                           static_cast<int>(k), renormalize,
                                                           ids_out, weights_out);
  return cudaGetLastError();
}

cudaError_t LaunchArgmax(const float* logits, int64_t n, int64_t vocab, int32_t* ids_out,
                         cudaStream_t stream) {
  ArgmaxKernel<<<static_cast<unsigned>(n), kArgmaxThreads, 0, stream>>>(logits, vocab, ids_out);
  return cudaGetLastError();
}

}  // namespace moe::cuda::internal
