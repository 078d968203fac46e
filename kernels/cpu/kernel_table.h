// Internal: the per-instruction-set building blocks of the CPU kernels.
//
// cpu_kernels.cc owns the public functions: argument checks, threading, and the parts whose cost
// is not in vector arithmetic (RoPE angles, top-k). It calls the pieces below through a
// KernelTable, of which there is one per instruction set: kScalarKernels (portable C++,
// kernels_scalar.cc) and kAvx2Kernels (kernels_avx2.cc, the only file compiled with
// -mavx2 -mfma -mf16c). Every entry works on a range given by its caller and writes only that
// range, so the caller can split work across threads freely.
//
// Determinism contract for every implementation: the value written for one output element
// depends only on the inputs and on the sizes (n, cols), never on the range boundaries it was
// called with. Results are then identical whatever the thread count.
//
// This header is deliberately free of project headers (no WeightView, no DType): the AVX2 file
// must not instantiate inline functions of shared headers (see kernels_avx2.cc).
#pragma once

#include <cstdint>

namespace moe::cpu::internal {

// The weight element types the kernels read.
enum class ElemType : uint8_t { kF32, kBF16, kF16 };

// A row-major [rows, cols] matrix (or a vector, rows == 1) of `type` elements.
struct MatRef {
  const void* data;
  ElemType type;
  int64_t rows;
  int64_t cols;
};

struct KernelTable {
  const char* name;
  // y[t, r] = sum_k x[t, k] * w[r, k] for t in [0, n), r in [r0, r1). x is [n, w.cols] and y is
  // [n, w.rows] (row-major, tightly packed).
  void (*linear_rows)(const float* x, int64_t n, const MatRef& w, int64_t r0, int64_t r1, float* y);
  // h[i] = silu(g[i]) * u[i] for i < count; h may alias g or u.
  void (*swiglu)(const float* g, const float* u, int64_t count, float* h);
  // One row of RmsNorm: out = x / sqrt(mean(x^2) + eps) * w (w has `dim` elements); out may
  // alias x.
  void (*rms_norm_row)(const float* x, int64_t dim, const MatRef& w, float eps, float* out);
  // out[i] = src[i] as fp32 for i < count.
  void (*convert)(const void* src, ElemType type, int64_t count, float* out);
  // y[i] += src[i] as fp32 for i < count.
  void (*add_converted)(const void* src, ElemType type, int64_t count, float* y);
  // out[i] += scale * y[i] for i < count.
  void (*scaled_add)(const float* y, float scale, int64_t count, float* out);
  // One query row against keys/values at positions [lo, hi] (inclusive): key j is
  // k + j * kv_stride, value j is v + j * kv_stride (head_dim floats each). scores holds
  // hi - lo + 1 floats of scratch. out (head_dim floats) = softmax(q . k_j * scale) . v_j.
  void (*attention_row)(const float* q, const float* k, const float* v, int64_t kv_stride,
                        int64_t head_dim, int64_t lo, int64_t hi, float scale, float* scores,
                        float* out);
};

extern const KernelTable kScalarKernels;
#if defined(MOE_CPU_KERNELS_AVX2)
extern const KernelTable kAvx2Kernels;
#endif

// The table in use: AVX2 where supported and not forced off (dispatch.h), else scalar.
const KernelTable& ActiveKernels();

}  // namespace moe::cpu::internal
