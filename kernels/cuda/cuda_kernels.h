// CUDA kernels of the model forward. Each has a CPU reference in kernels/cpu/cpu_kernels.h
// (namespace moe::cpu) with the same semantics, and a test comparing the two
// (tests/kernels/cuda_kernels_test.cc).
//
// Contract shared by every function:
// - Pointers are device memory unless said otherwise; a WeightView's `data` is a device pointer
//   here. Activations are fp32; weights are F32 or BF16 (F16 where noted), accumulated in fp32.
// - Layouts are the CPU's: row-major x [n, cols]; heads interleaved per token, q [n, num_heads,
//   head_dim]; matrices in Hugging Face Linear layout [out_features, in_features].
// - Work is enqueued on `stream`; nothing synchronizes, allocates or frees. Outputs are valid
//   once the stream reaches that point. Scratch space, where needed, is the caller's
//   (query the size with the matching *ScratchBytes function).
// - Errors: InvalidArgument (message naming the function and the value) for bad sizes, dtypes or
//   null pointers, checked on the host before any CUDA call (so these need no GPU); Internal
//   naming the kernel and cudaGetErrorString() when a launch fails (checked with
//   cudaGetLastError() after each launch, which also reports earlier asynchronous failures);
//   Internal with the cuBLAS status name when cuBLAS fails. A problem of size zero (n == 0 or
//   count == 0) is a no-op returning OK without touching CUDA.
//
// Thread-safety: the functions are pure over their arguments (no global state); calls on one
// stream are ordered. A Blas handle is used by one thread at a time.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/weight_view.h"

struct cublasContext;  // cublas_v2.h's handle type; the header stays free of cuBLAS includes

namespace moe::cuda {

// out[i, :] = table row ids[i] as fp32 (F32, BF16 or F16 table), out [n, table.cols]. The host
// validates ids before (ids are device memory here); an id outside [0, table.rows) writes a zero
// row instead of reading outside the table.
absl::Status EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out,
                             cudaStream_t stream);

// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight per row of `dim` values (F32, BF16 or F16
// weight of dim elements), the formula of moe::cpu::RmsNorm; fp32 reduction. out may alias x.
absl::Status RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight, float eps,
                     float* out, cudaStream_t stream);

// Rotary embedding in place, Hugging Face rotate_half convention, angles formed exactly as
// moe::cpu::ApplyRope forms them. x [n, num_heads, head_dim] (head_dim even); positions [n]
// (device memory).
absl::Status ApplyRope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                       const int64_t* positions, double theta, cudaStream_t stream);

// h[i] = silu(g[i]) * u[i] for i < count; h may alias g or u.
absl::Status Swiglu(const float* g, const float* u, int64_t count, float* h, cudaStream_t stream);

// Router, the semantics of moe::cpu::TopKSoftmax: softmax over num_experts (<= 256) logits per
// token, the k highest in descending order (ties: lower id first), renormalized to sum 1 when
// `renormalize`. ids_out, weights_out [n, k].
absl::Status TopKSoftmax(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                         bool renormalize, int32_t* ids_out, float* weights_out,
                         cudaStream_t stream);

// Groups the n * k routed rows (flat index t * k + r for token t, rank r; ids [n, k]) by expert,
// stably: within an expert, rows keep their flat order (token order, then rank).
//   counts[e]         rows routed to expert e                  [num_experts]
//   offsets[e]        first grouped position of expert e      [num_experts + 1], exclusive scan
//   sorted_rows[p]    flat row at grouped position p          [n * k]
//   row_position[f]   grouped position of flat row f (inverse) [n * k]
// One thread block does it all: n * k <= 65536 and num_experts <= 4096 (InvalidArgument beyond).
// Ids outside [0, num_experts) are skipped without touching memory out of bounds: their rows get
// row_position -1, and grouped positions from offsets[num_experts] on hold -1.
// With n == 0 nothing is written (counts and offsets included).
absl::Status ExpertPermutation(const int32_t* ids, int64_t n, int64_t k, int64_t num_experts,
                               int32_t* counts, int32_t* offsets, int32_t* sorted_rows,
                               int32_t* row_position, cudaStream_t stream);

// out[p, :] = x[sorted_rows[p] / k, :] for p < n_rows_out (dim values per row): the activations
// of each grouped row. A sorted_rows entry of -1 writes a zero row.
absl::Status GatherRows(const float* x, int64_t n_rows_out, int64_t dim, const int32_t* sorted_rows,
                        int64_t k, float* out, cudaStream_t stream);

// out[t, :] += weights[t * k + r] * y[row_position[t * k + r], :] for r = 0 .. k - 1 in rank
// order, one fused multiply-add per term: y [>= n * k, dim] in grouped order, weights [n, k],
// out [n, dim]. This is the CPU engine's combine (cpu::ScaledAdd per token and rank, in rank
// order), bit for bit on its AVX2/FMA path. Deterministic. Rows with row_position -1 add nothing.
absl::Status CombineExpertOutputs(const float* y, const int32_t* row_position, const float* weights,
                                  int64_t n, int64_t k, int64_t dim, float* out,
                                  cudaStream_t stream);

// dst[i] = src[i] rounded to bf16 (nearest even; NaN stays NaN): bit for bit moe::F32ToBf16.
absl::Status ConvertToBf16(const float* src, int64_t count, uint16_t* dst, cudaStream_t stream);

// Causal grouped-query attention, the semantics of moe::cpu::Attention: n new tokens at
// positions [start, start + n) over k_cache, v_cache [>= start + n, num_kv_heads, head_dim]; query
// head h reads kv head h / (num_heads / num_kv_heads); position p attends to j <= p and, when
// sliding_window > 0, p - j < sliding_window; scale 1 / sqrt(head_dim); fp32 softmax. q and out
// [n, num_heads, head_dim], head_dim <= 256, num_heads <= 65535; no limit on the context length.
absl::Status Attention(const float* q, int64_t n, int64_t start, const float* k_cache,
                       const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                       int64_t head_dim, int64_t sliding_window, float* out, cudaStream_t stream);

// Greedy sampling: ids_out[i] = index of the largest of logits[i, 0 .. vocab), ties to the lower
// index; NaN never wins, except that a NaN at index 0 gives 0 (runtime/sampler.cc's Argmax).
absl::Status Argmax(const float* logits, int64_t n, int64_t vocab, int32_t* ids_out,
                    cudaStream_t stream);

// ---- GEMM through cuBLAS ----------------------------------------------------------------------

// Owns a cuBLAS handle (cuBLAS's default workspace; default math mode, so fp32 GEMMs do not use
// TF32). Create() binds it to a stream; Linear and ExpertFfn bind it to their own `stream`
// argument before enqueueing. Not thread-safe: one thread uses a Blas at a time.
class Blas {
 public:
  // Creates the handle and binds it to `stream`. Internal when cuBLAS cannot start (no GPU).
  static absl::StatusOr<std::unique_ptr<Blas>> Create(cudaStream_t stream);
  // A Blas without a handle, for tests of argument checking on machines without a GPU: the
  // functions below check their arguments, then return FailedPrecondition instead of computing.
  static std::unique_ptr<Blas> CreateWithoutHandleForTesting();

  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // The cuBLAS handle (a cublasHandle_t); nullptr for CreateWithoutHandleForTesting().
  cublasContext* handle() const { return handle_; }

 private:
  explicit Blas(cublasContext* handle) : handle_(handle) {}

  cublasContext* handle_;
};

// Bytes of scratch Linear needs: n * w.cols bf16 values for BF16 weights, 0 for F32.
uint64_t LinearScratchBytes(int64_t n, const WeightView& w);

// y[n, w.rows] = x[n, w.cols] * w^T (y overwritten), the semantics of moe::cpu::Linear. F32
// weights: an fp32 cuBLAS GEMM. BF16 weights: x is rounded to bf16 into `scratch`, then a
// bf16 x bf16 GEMM with fp32 accumulation and fp32 output (cublasGemmEx), so results differ from
// the CPU (which keeps x in fp32) by the rounding of x: about 2^-9 relative per product. F16
// weights: InvalidArgument. Runs on `stream` (the handle is rebound to it if needed). Sizes up to
// INT32_MAX per dimension.
absl::Status Linear(Blas& blas, const float* x, int64_t n, const WeightView& w, float* y,
                    void* scratch, uint64_t scratch_bytes, cudaStream_t stream);

// Bytes of scratch ExpertFfn needs for n tokens, hidden size `hidden`, intermediate size `inter`
// and weights of `dtype` (F32 or BF16; 0 for other dtypes).
uint64_t ExpertFfnScratchBytes(int64_t n, int64_t hidden, int64_t inter, DType dtype);

// SwiGLU expert FFN, the semantics of moe::cpu::ExpertFfn: out[n, H] = (silu(x gate^T) *
// (x up^T)) down^T with gate, up [I, H] and down [H, I] of one dtype (F32 or BF16); out is
// overwritten (as the CPU's). With BF16 weights both x and the activation h are rounded to bf16
// before their GEMMs (the CPU keeps them in fp32).
absl::Status ExpertFfn(Blas& blas, const float* x, int64_t n, const WeightView& gate,
                       const WeightView& up, const WeightView& down, float* out, void* scratch,
                       uint64_t scratch_bytes, cudaStream_t stream);

}  // namespace moe::cuda
