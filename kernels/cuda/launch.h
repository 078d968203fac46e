// Internal: the kernel launchers behind kernels/cuda/cuda_kernels.h.
//
// The public functions (cuda_kernels.cc, blas.cc) are C++20 and check arguments, then call these.
// The launchers live in the .cu files, which nvcc compiles as C++17, so this header must stay
// free of project headers (WeightView pulls in C++20 code): plain pointers, sizes and a stream.
// Every launcher assumes validated arguments and a non-empty problem, enqueues its kernel(s) on
// `stream` and returns cudaGetLastError() after the launch (launch errors and any sticky error of
// earlier asynchronous work). None synchronizes or allocates.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace moe::cuda::internal {

// The weight element types the kernels read.
enum class ElemType : uint8_t { kF32, kBF16, kF16 };

// ---- elementwise.cu -----------------------------------------------------------------------------

cudaError_t LaunchEmbeddingGather(const void* table, ElemType type, int64_t rows, int64_t cols,
                                  const int32_t* ids, int64_t n, float* out, cudaStream_t stream);
cudaError_t LaunchRmsNorm(const float* x, int64_t n, int64_t dim, const void* weight, ElemType type,
                          float eps, float* out, cudaStream_t stream);
cudaError_t LaunchApplyRope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                            const int64_t* positions, double theta, cudaStream_t stream);
cudaError_t LaunchSwiglu(const float* g, const float* u, int64_t count, float* h,
                         cudaStream_t stream);
cudaError_t LaunchConvertToBf16(const float* src, int64_t count, uint16_t* dst,
                                cudaStream_t stream);

// ---- router.cu ----------------------------------------------------------------------------------

// num_experts <= kMaxRouterExperts.
constexpr int64_t kMaxRouterExperts = 256;
cudaError_t LaunchTopKSoftmax(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                              bool renormalize, int32_t* ids_out, float* weights_out,
                              cudaStream_t stream);
cudaError_t LaunchArgmax(const float* logits, int64_t n, int64_t vocab, int32_t* ids_out,
                         cudaStream_t stream);

// ---- permute.cu ---------------------------------------------------------------------------------

// One block does the whole permutation: n * k <= kMaxPermutationRows and
// num_experts <= kMaxPermutationExperts (the counts and offsets live in shared memory).
constexpr int64_t kMaxPermutationRows = int64_t{1} << 16;
constexpr int64_t kMaxPermutationExperts = 4096;
cudaError_t LaunchExpertPermutation(const int32_t* ids, int64_t rows, int64_t num_experts,
                                    int32_t* counts, int32_t* offsets, int32_t* sorted_rows,
                                    int32_t* row_position, cudaStream_t stream);
cudaError_t LaunchGatherRows(const float* x, int64_t n_rows_out, int64_t dim,
                             const int32_t* sorted_rows, int64_t k, float* out,
                             cudaStream_t stream);
cudaError_t LaunchCombineExpertOutputs(const float* y, const int32_t* row_position,
                                       const float* weights, int64_t n, int64_t k, int64_t dim,
                                       float* out, cudaStream_t stream);

// ---- attention.cu -------------------------------------------------------------------------------

constexpr int64_t kMaxAttentionHeadDim = 256;
cudaError_t LaunchAttention(const float* q, int64_t n, int64_t start, const float* k_cache,
                            const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                            int64_t head_dim, int64_t sliding_window, float* out,
                            cudaStream_t stream);

}  // namespace moe::cuda::internal
