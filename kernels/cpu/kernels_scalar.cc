// Portable implementations of the kernel table (kernel_table.h): plain C++ for any CPU, used
// where AVX2/FMA is missing and as the reference the AVX2 path is tested against. Written so
// compilers can still vectorise the inner loops with the baseline instruction set (independent
// partial sums instead of one serial accumulator), but clarity wins over speed here.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cpu/float16.h"
#include "kernels/cpu/kernel_table.h"

namespace moe::cpu::internal {
namespace {

// Weight rows are converted to fp32 this many elements at a time (a stack buffer).
constexpr int64_t kChunk = 256;

float LoadElem(const void* data, ElemType type, int64_t i) {
  switch (type) {
    case ElemType::kF32:
      return static_cast<const float*>(data)[i];
    case ElemType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(data)[i]);
    case ElemType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0f;
}

size_t ElemSize(ElemType type) { return type == ElemType::kF32 ? 4 : 2; }

void Convert(const void* src, ElemType type, int64_t count, float* out) {
  switch (type) {
    case ElemType::kF32:
      std::memcpy(out, src, static_cast<size_t>(count) * sizeof(float));
      return;
    case ElemType::kBF16: {
      const auto* p = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < count; ++i) out[i] = Bf16ToF32(p[i]);
      return;
    }
    case ElemType::kF16: {
      const auto* p = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < count; ++i) out[i] = F16ToF32(p[i]);
      return;
    }
  }
}

// Dot product with eight interleaved partial sums, combined pairwise: the same order for every
// call with the same length.
float Dot(const float* a, const float* b, int64_t len) {
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= len; k += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[k + j] * b[k + j];
  }
  for (int j = 0; k < len; ++k, ++j) acc[j] += a[k] * b[k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

void LinearRows(const float* x, int64_t n, const MatRef& w, int64_t r0, int64_t r1, float* y) {
  const int64_t cols = w.cols;
  const int64_t rows = w.rows;
  const auto* base = static_cast<const char*>(w.data);
  const size_t elem = ElemSize(w.type);
  float buf[kChunk];
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < n; ++t) y[t * rows + r] = 0.0f;
    // Convert the row a chunk at a time and add each chunk's dot product to every token: the
    // row is converted once whatever n is.
    for (int64_t k0 = 0; k0 < cols; k0 += kChunk) {
      const int64_t len = std::min(kChunk, cols - k0);
      Convert(base + static_cast<size_t>(r * cols + k0) * elem, w.type, len, buf);
      for (int64_t t = 0; t < n; ++t) y[t * rows + r] += Dot(buf, x + t * cols + k0, len);
    }
  }
}

void Swiglu(const float* g, const float* u, int64_t count, float* h) {
  for (int64_t i = 0; i < count; ++i) {
    const float gi = g[i];
    h[i] = gi / (1.0f + std::exp(-gi)) * u[i];
  }
}

void RmsNormRow(const float* x, int64_t dim, const MatRef& w, float eps, float* out) {
  const float ss = Dot(x, x, dim);
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = (x[i] * inv) * LoadElem(w.data, w.type, i);
}

void AddConverted(const void* src, ElemType type, int64_t count, float* y) {
  for (int64_t i = 0; i < count; ++i) y[i] += LoadElem(src, type, i);
}

void ScaledAdd(const float* y, float scale, int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) out[i] += scale * y[i];
}

void AttentionRow(const float* q, const float* k, const float* v, int64_t kv_stride,
                  int64_t head_dim, int64_t lo, int64_t hi, float scale, float* scores,
                  float* out) {
  const int64_t m = hi - lo + 1;
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < m; ++j) {
    scores[j] = Dot(q, k + (lo + j) * kv_stride, head_dim) * scale;
    max_score = std::max(max_score, scores[j]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < m; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (int64_t j = 0; j < m; ++j) {
    const float p = scores[j];
    const float* vj = v + (lo + j) * kv_stride;
    for (int64_t d = 0; d < head_dim; ++d) out[d] += p * vj[d];
  }
  for (int64_t d = 0; d < head_dim; ++d) out[d] *= inv;
}

}  // namespace

const KernelTable kScalarKernels = {
    "scalar", LinearRows, Swiglu, RmsNormRow, Convert, AddConverted, ScaledAdd, AttentionRow,
};

}  // namespace moe::cpu::internal
