// Row-wise and element-wise kernels: embedding gather, RMSNorm, RoPE, SwiGLU, fp32 -> bf16.
// Each mirrors the arithmetic of its CPU reference (kernels/cpu) operation for operation, so
// results differ only by reduction order (RMSNorm) or by the libm of each side (exp, pow, cos).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/launch.h"

namespace moe::cuda::internal {
namespace {

constexpr int kThreads = 256;

// ---- embedding ------------------------------------------------------------------------------

// One block per token. An id outside [0, rows) writes a zero row (the host validates ids; this
// only keeps a bad id from reading outside the table).
template <ElemType T>
__global__ void EmbeddingGatherKernel(const void* table, int64_t rows, int64_t cols,
                                      const int32_t* ids, float* out) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  float* dst = out + t * cols;
  if (id < 0 || id >= rows) {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = 0.0f;
    return;
  }
  const int64_t base = id * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = LoadElem<T>(table, base + c);
}

// ---- RMSNorm --------------------------------------------------------------------------------

// One block per row. out may alias x: every thread reads the whole row's squares before the
// barrier inside BlockSum, and afterwards reads and writes only its own elements.
template <ElemType T>
__global__ void RmsNormKernel(const float* x, int64_t dim, const void* weight, float eps,
                              float* out) {
  __shared__ float scratch[kWarpSize];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* yr = out + static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = BlockSum(ss, scratch);
  // As the CPU: 1 / sqrt(mean + eps) with IEEE division and square root, then (x * inv) * w.
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = __fmul_rn(__fmul_rn(xr[i], inv), LoadElem<T>(weight, i));
  }
}

// ---- RoPE -----------------------------------------------------------------------------------

// One block per token; a thread owns pair index i and rotates it in every head. The angle is
// formed exactly as moe::cpu::ApplyRope forms it (fp32 exponent, double pow rounded to fp32,
// fp32 inverse and product, cos/sin in double rounded to fp32), and the rotation uses separately
// rounded products (the CPU file is built with -ffp-contract=off), so the only differences from
// the CPU are those of CUDA's double pow/sincos against glibc's before rounding to fp32.
__global__ void RopeKernel(float* x, int64_t num_heads, int64_t head_dim, const int64_t* positions,
                           double theta) {
  const int64_t t = blockIdx.x;
  const int64_t half = head_dim / 2;
  const float pos = static_cast<float>(positions[t]);
  float* xt = x + t * num_heads * head_dim;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float exponent = __fdiv_rn(static_cast<float>(2 * i), static_cast<float>(head_dim));
    const float freq = static_cast<float>(pow(theta, static_cast<double>(exponent)));
    const float inv_freq = __fdiv_rn(1.0f, freq);
    const float angle = __fmul_rn(pos, inv_freq);
    double sd = 0.0;
    double cd = 0.0;
    sincos(static_cast<double>(angle), &sd, &cd);
    const float c = static_cast<float>(cd);
    const float s = static_cast<float>(sd);
    for (int64_t h = 0; h < num_heads; ++h) {
      float* xh = xt + h * head_dim;
      const float a = xh[i];
      const float b = xh[i + half];
      xh[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
      xh[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
  }
}

// ---- SwiGLU ---------------------------------------------------------------------------------

// h may alias g or u: each element is read before it is written, by the same thread.
__global__ void SwigluKernel(const float* g, const float* u, int64_t count, float* h) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float gi = g[i];
    // As the CPU: g / (1 + exp(-g)) * u.
    h[i] = __fmul_rn(__fdiv_rn(gi, __fadd_rn(1.0f, expf(-gi))), u[i]);
  }
}

// ---- fp32 -> bf16 ---------------------------------------------------------------------------

// Round to nearest even, NaN stays a (quiet) NaN: bit for bit moe::F32ToBf16
// (kernels/cpu/float16.h), which for non-NaN inputs is also __float2bfloat16_rn.
__global__ void ConvertToBf16Kernel(const float* src, int64_t count, uint16_t* dst) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    uint32_t bits = __float_as_uint(src[i]);
    if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0) {
      dst[i] = static_cast<uint16_t>((bits >> 16) | 0x0040u);
    } else {
      bits += 0x7FFFu + ((bits >> 16) & 1u);
      dst[i] = static_cast<uint16_t>(bits >> 16);
    }
  }
}

}  // namespace

cudaError_t LaunchEmbeddingGather(const void* table, ElemType type, int64_t rows, int64_t cols,
                                  const int32_t* ids, int64_t n, float* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(n));
  switch (type) {
    case ElemType::kF32:
      EmbeddingGatherKernel<ElemType::kF32>
          <<<grid, kThreads, 0, stream>>>(table, rows, cols, ids, out);
      break;
    case ElemType::kBF16:
      EmbeddingGatherKernel<ElemType::kBF16>
          <<<grid, kThreads, 0, stream>>>(table, rows, cols, ids, out);
      break;
    case ElemType::kF16:
      EmbeddingGatherKernel<ElemType::kF16>
          <<<grid, kThreads, 0, stream>>>(table, rows, cols, ids, out);
      break;
  }
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, int64_t n, int64_t dim, const void* weight, ElemType type,
                          float eps, float* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(n));
  switch (type) {
    case ElemType::kF32:
      RmsNormKernel<ElemType::kF32><<<grid, kThreads, 0, stream>>>(x, dim, weight, eps, out);
      break;
    case ElemType::kBF16:
      RmsNormKernel<ElemType::kBF16><<<grid, kThreads, 0, stream>>>(x, dim, weight, eps, out);
      break;
    case ElemType::kF16:
      RmsNormKernel<ElemType::kF16><<<grid, kThreads, 0, stream>>>(x, dim, weight, eps, out);
      break;
  }
  return cudaGetLastError();
}

cudaError_t LaunchApplyRope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                            const int64_t* positions, double theta, cudaStream_t stream) {
  // A warp-multiple of threads covering head_dim / 2 pairs (at most one block of kThreads).
  int threads = static_cast<int>((head_dim / 2 + kWarpSize - 1) / kWarpSize) * kWarpSize;
  if (threads > kThreads) threads = kThreads;
  if (threads < kWarpSize) threads = kWarpSize;
  RopeKernel<<<static_cast<unsigned>(n), threads, 0, stream>>>(x, num_heads, head_dim, positions,
                                                               theta);
  return cudaGetLastError();
}

cudaError_t LaunchSwiglu(const float* g, const float* u, int64_t count, float* h,
                         cudaStream_t stream) {
  SwigluKernel<<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(g, u, count, h);
  return cudaGetLastError();
}

cudaError_t LaunchConvertToBf16(const float* src, int64_t count, uint16_t* dst,
                                cudaStream_t stream) {
  ConvertToBf16Kernel<<<GridStrideBlocks(count, kThreads), kThreads, 0, stream>>>(src, count, dst);
  return cudaGetLastError();
}

}  // namespace moe::cuda::internal
