// Causal grouped-query attention over a KV cache, with an optional sliding window: the semantics
// of moe::cpu::Attention. A simple kernel, one block per (token, head): keys are taken in chunks
// whose scores sit in shared memory, with the online-softmax rescaling between chunks, so there
// is no limit on the context length. When the context fits one chunk (kChunk keys) the arithmetic
// is the CPU's: scores, their max, exp(score - max), their sum, sum p v, times 1 / sum.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace moe::cuda::internal {
namespace {

constexpr int kAttnThreads = 128;
constexpr int kChunk = 1024;  // keys per chunk
constexpr int kDimsPerThread = static_cast<int>(kMaxAttentionHeadDim) / kAttnThreads;

// Block (blockIdx.x = token i, blockIdx.y = head h). Thread t owns output dims t and t + 128.
__global__ void AttentionKernel(const float* q, int64_t start, const float* k_cache,
                                const float* v_cache, int num_heads, int group, int head_dim,
                                int64_t kv_stride, int64_t sliding_window, float scale,
                                float* out) {
  __shared__ float s_q[kMaxAttentionHeadDim];
  __shared__ float s_p[kChunk];
  __shared__ float s_red[kWarpSize];
  const int tid = threadIdx.x;
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;

  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t p = start + i;
  int64_t lo = 0;
  if (sliding_window > 0 && p - sliding_window + 1 > 0) lo = p - sliding_window + 1;
  const int64_t row = i * num_heads + h;
  const float* kb = k_cache + static_cast<int64_t>(h / group) * head_dim;
  const float* vb = v_cache + static_cast<int64_t>(h / group) * head_dim;

  for (int d = tid; d < head_dim; d += blockDim.x) s_q[d] = q[row * head_dim + d];
  __syncthreads();

  float m = -INFINITY;  // running max of the scores seen so far
  float l = 0.0f;       // running sum of exp(score - m)
  float acc[kDimsPerThread];
#pragma unroll
  for (int x = 0; x < kDimsPerThread; ++x) acc[x] = 0.0f;

  // The loop bounds are the same in every thread: the block reductions below see all threads.
  for (int64_t c0 = lo; c0 <= p; c0 += kChunk) {
    const int len = static_cast<int>(p + 1 - c0 < kChunk ? p + 1 - c0 : kChunk);
    // Scores: one warp per key, lanes split the dot product.
    for (int jj = warp; jj < len; jj += num_warps) {
      const float* kj = kb + (c0 + jj) * kv_stride;
      float s = 0.0f;
      for (int d = lane; d < head_dim; d += kWarpSize) s += s_q[d] * kj[d];
      s = WarpSum(s);
      if (lane == 0) s_p[jj] = s * scale;
    }
    __syncthreads();
    float chunk_max = -INFINITY;
    for (int jj = tid; jj < len; jj += blockDim.x) chunk_max = fmaxf(chunk_max, s_p[jj]);
    chunk_max = BlockMax(chunk_max, s_red);
    const float new_m = fmaxf(m, chunk_max);
    float chunk_sum = 0.0f;
    for (int jj = tid; jj < len; jj += blockDim.x) {
      const float e = expf(s_p[jj] - new_m);
      s_p[jj] = e;
      chunk_sum += e;
    }
    chunk_sum = BlockSum(chunk_sum, s_red);  // its barriers also publish s_p
    const float alpha = expf(m - new_m);     // 0 on the first chunk (m = -inf)
    l = l * alpha + chunk_sum;
#pragma unroll
    for (int x = 0; x < kDimsPerThread; ++x) {
      const int d = tid + x * kAttnThreads;
      if (d < head_dim) {
        float a = acc[x] * alpha;
        const float* vd = vb + c0 * kv_stride + d;
        for (int jj = 0; jj < len; ++jj) a += s_p[jj] * vd[jj * kv_stride];
        acc[x] = a;
      }
    }
    m = new_m;
    __syncthreads();  // s_p is rewritten by the next chunk
  }
  const float inv = 1.0f / l;
#pragma unroll
  for (int x = 0; x < kDimsPerThread; ++x) {
    const int d = tid + x * kAttnThreads;
    if (d < head_dim) out[row * head_dim + d] = acc[x] * inv;
  }
}

}  // namespace

cudaError_t LaunchAttention(const float* q, int64_t n, int64_t start, const float* k_cache,
                            const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                            int64_t head_dim, int64_t sliding_window, float* out,
                            cudaStream_t stream) {
  // The CPU's scale: 1 / sqrt(head_dim) in double, rounded once.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(num_heads));
  AttentionKernel<<<grid, kAttnThreads, 0, stream>>>(
      q, start, k_cache, v_cache, static_cast<int>(num_heads),
      static_cast<int>(num_heads / num_kv_heads), static_cast<int>(head_dim),
      num_kv_heads * head_dim, sliding_window, scale, out);
  return cudaGetLastError();
}

}  // namespace moe::cuda::internal
