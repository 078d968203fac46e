// The public CUDA kernels (cuda_kernels.h) except the cuBLAS ones (blas.cc): argument checks on
// the host, then the launchers of the .cu files (launch.h). Every check comes before the first
// CUDA call, so bad arguments and empty problems are answered on machines without a GPU too.
#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>

#include "kernels/cuda/launch.h"
#include "kernels/cuda/status_util.h"
#include "runtime/status.h"

namespace moe::cuda {
namespace {

using internal::ElemType;

// Grids put one block per row in gridDim.x.
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;

}  // namespace

absl::Status EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                             cudaStream_t stream) {
  constexpr const char* kFn = "EmbeddingGather";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  if (table.rows <= 0 || table.cols <= 0) {
    return InvalidArgument("{}: table shape [{}, {}] is empty", kFn, table.rows, table.cols);
  }
  ElemType type = ElemType::kF32;
  MOE_RETURN_IF_ERROR(internal::WeightElemType(kFn, table, /*allow_f16=*/true, &type));
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(
      internal::CheckNotNull(kFn, {{"table", table.data}, {"ids", ids}, {"out", out}}));
  return internal::LaunchStatus(kFn, "EmbeddingGatherKernel",
                                internal::LaunchEmbeddingGather(table.data, type, table.rows,
                                                                table.cols, ids, n, out, stream));
}

absl::Status RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight, float eps,
                     float* out, cudaStream_t stream) {
  constexpr const char* kFn = "RmsNorm";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  if (dim <= 0) return InvalidArgument("{}: dim = {} is not positive", kFn, dim);
  if (weight.num_elements() != dim) {
    return InvalidArgument("{}: weight has {} elements, dim is {}", kFn, weight.num_elements(),
                           dim);
  }
  ElemType type = ElemType::kF32;
  MOE_RETURN_IF_ERROR(internal::WeightElemType(kFn, weight, /*allow_f16=*/true, &type));
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(
      internal::CheckNotNull(kFn, {{"x", x}, {"weight", weight.data}, {"out", out}}));
  return internal::LaunchStatus(
      kFn, "RmsNormKernel",
      internal::LaunchRmsNorm(x, n, dim, weight.data, type, eps, out, stream));
}

absl::Status ApplyRope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                       const int64_t* positions, double theta, cudaStream_t stream) {
  constexpr const char* kFn = "ApplyRope";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  if (num_heads < 0) return InvalidArgument("{}: num_heads = {} is negative", kFn, num_heads);
  if (head_dim < 0 || head_dim % 2 != 0) {
    return InvalidArgument("{}: head_dim = {} is not a non-negative even number", kFn, head_dim);
  }
  if (!(theta > 0.0)) return InvalidArgument("{}: theta = {} is not positive", kFn, theta);
  if (n == 0 || num_heads == 0 || head_dim == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"x", x}, {"positions", positions}}));
  return internal::LaunchStatus(
      kFn, "RopeKernel",
      internal::LaunchApplyRope(x, n, num_heads, head_dim, positions, theta, stream));
}

absl::Status Swiglu(const float* g, const float* u, int64_t count, float* h, cudaStream_t stream) {
  constexpr const char* kFn = "Swiglu";
  if (count < 0) return InvalidArgument("{}: count = {} is negative", kFn, count);
  if (count == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"g", g}, {"u", u}, {"h", h}}));
  return internal::LaunchStatus(kFn, "SwigluKernel",
                                internal::LaunchSwiglu(g, u, count, h, stream));
}

absl::Status TopKSoftmax(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                         bool renormalize, int32_t* ids_out, float* weights_out,
                         cudaStream_t stream) {
  constexpr const char* kFn = "TopKSoftmax";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  if (num_experts < 1 || num_experts > internal::kMaxRouterExperts) {
    return InvalidArgument("{}: num_experts = {} not in [1, {}]", kFn, num_experts,
                           internal::kMaxRouterExperts);
  }
  if (k < 1 || k > num_experts) {
    return InvalidArgument("{}: k = {} not in [1, num_experts = {}]", kFn, k, num_experts);
  }
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(
      kFn, {{"logits", logits}, {"ids_out", ids_out}, {"weights_out", weights_out}}));
  return internal::LaunchStatus(kFn, "TopKSoftmaxKernel",
                                internal::LaunchTopKSoftmax(logits, n, num_experts, k, renormalize,
                                                            ids_out, weights_out, stream));
}

absl::Status ExpertPermutation(const int32_t* ids, int64_t n, int64_t k, int64_t num_experts,
                               int32_t* counts, int32_t* offsets, int32_t* sorted_rows,
                               int32_t* row_position, cudaStream_t stream) {
  constexpr const char* kFn = "ExpertPermutation";
  constexpr int64_t kMaxRows = internal::kMaxPermutationRows;
  if (n < 0) return InvalidArgument("{}: n = {} is negative", kFn, n);
  if (k < 1) return InvalidArgument("{}: k = {} is not positive", kFn, k);
  if (num_experts < 1 || num_experts > internal::kMaxPermutationExperts) {
    return InvalidArgument("{}: num_experts = {} not in [1, {}]", kFn, num_experts,
                           internal::kMaxPermutationExperts);
  }
  if (n > kMaxRows || k > kMaxRows || n * k > kMaxRows) {
    return InvalidArgument("{}: n * k = {} * {} rows exceed the single-block limit {}", kFn, n, k,
                           kMaxRows);
  }
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"ids", ids},
                                                   {"counts", counts},
                                                   {"offsets", offsets},
                                                   {"sorted_rows", sorted_rows},
                                                   {"row_position", row_position}}));
  return internal::LaunchStatus(
      kFn, "ExpertPermutationKernel",
      internal::LaunchExpertPermutation(ids, n * k, num_experts, counts, offsets, sorted_rows,
                                        row_position, stream));
}

absl::Status GatherRows(const float* x, int64_t n_rows_out, int64_t dim, const int32_t* sorted_rows,
                        int64_t k, float* out, cudaStream_t stream) {
  constexpr const char* kFn = "GatherRows";
  if (n_rows_out < 0 || n_rows_out > kMaxGridX) {
    return InvalidArgument("{}: n_rows_out = {} out of range", kFn, n_rows_out);
  }
  if (dim < 0) return InvalidArgument("{}: dim = {} is negative", kFn, dim);
  if (k < 1) return InvalidArgument("{}: k = {} is not positive", kFn, k);
  if (n_rows_out == 0 || dim == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(
      internal::CheckNotNull(kFn, {{"x", x}, {"sorted_rows", sorted_rows}, {"out", out}}));
  return internal::LaunchStatus(
      kFn, "GatherRowsKernel",
      internal::LaunchGatherRows(x, n_rows_out, dim, sorted_rows, k, out, stream));
}

absl::Status CombineExpertOutputs(const float* y, const int32_t* row_position, const float* weights,
                                  int64_t n, int64_t k, int64_t dim, float* out,
                                  cudaStream_t stream) {
  constexpr const char* kFn = "CombineExpertOutputs";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  if (k < 1) return InvalidArgument("{}: k = {} is not positive", kFn, k);
  if (dim < 0) return InvalidArgument("{}: dim = {} is negative", kFn, dim);
  if (n == 0 || dim == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(
      kFn, {{"y", y}, {"row_position", row_position}, {"weights", weights}, {"out", out}}));
  return internal::LaunchStatus(
      kFn, "CombineKernel",
      internal::LaunchCombineExpertOutputs(y, row_position, weights, n, k, dim, out, stream));
}

absl::Status ConvertToBf16(const float* src, int64_t count, uint16_t* dst, cudaStream_t stream) {
  constexpr const char* kFn = "ConvertToBf16";
  if (count < 0) return InvalidArgument("{}: count = {} is negative", kFn, count);
  if (count == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"src", src}, {"dst", dst}}));
  return internal::LaunchStatus(kFn, "ConvertToBf16Kernel",
                                internal::LaunchConvertToBf16(src, count, dst, stream));
}

absl::Status Attention(const float* q, int64_t n, int64_t start, const float* k_cache,
                       const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                       int64_t head_dim, int64_t sliding_window, float* out, cudaStream_t stream) {
  constexpr const char* kFn = "Attention";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  if (start < 0) return InvalidArgument("{}: start = {} is negative", kFn, start);
  if (num_heads < 1 || num_heads > kMaxGridY) {
    return InvalidArgument("{}: num_heads = {} not in [1, {}]", kFn, num_heads, kMaxGridY);
  }
  if (num_kv_heads < 1 || num_heads % num_kv_heads != 0) {
    return InvalidArgument("{}: {} heads not a multiple of {} kv heads", kFn, num_heads,
                           num_kv_heads);
  }
  if (head_dim < 1 || head_dim > internal::kMaxAttentionHeadDim) {
    return InvalidArgument("{}: head_dim = {} not in [1, {}]", kFn, head_dim,
                           internal::kMaxAttentionHeadDim);
  }
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(
      kFn, {{"q", q}, {"k_cache", k_cache}, {"v_cache", v_cache}, {"out", out}}));
  return internal::LaunchStatus(
      kFn, "AttentionKernel",
      internal::LaunchAttention(q, n, start, k_cache, v_cache, num_heads, num_kv_heads, head_dim,
                                sliding_window, out, stream));
}

absl::Status Argmax(const float* logits, int64_t n, int64_t vocab, int32_t* ids_out,
                    cudaStream_t stream) {
  constexpr const char* kFn = "Argmax";
  if (n < 0 || n > kMaxGridX) return InvalidArgument("{}: n = {} out of range", kFn, n);
  // The kernel keeps indices in int32 with INT32_MAX as "none".
  if (vocab < 1 || vocab >= std::numeric_limits<int32_t>::max()) {
    return InvalidArgument("{}: vocab = {} out of range", kFn, vocab);
  }
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"logits", logits}, {"ids_out", ids_out}}));
  return internal::LaunchStatus(kFn, "ArgmaxKernel",
                                internal::LaunchArgmax(logits, n, vocab, ids_out, stream));
}

}  // namespace moe::cuda
