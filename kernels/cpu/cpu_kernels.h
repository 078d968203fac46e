// CPU kernels of the model forward: the reference every other backend is checked against, and
// the compute of the CPU backend. Activations are fp32; weights are read in their stored dtype
// (F32, BF16, F16: see kernels/weight_view.h) and accumulated in fp32. Vectorised with AVX2/FMA
// (chosen at run time; a portable path elsewhere). Kernels never allocate on their hot path:
// callers pass scratch space. `pool` may be nullptr (run on the calling thread).
//
// Layouts: x [n, cols] row-major; heads are interleaved per token: q [n, num_heads, head_dim].
//
// Thread-safety: the functions are pure over their arguments; distinct outputs may be computed
// concurrently.
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"
#include "kernels/weight_view.h"

namespace moe::cpu {

// y[n, w.rows] = x[n, w.cols] * w^T. Each row of w is read once per call (not once per token),
// so a batch of n tokens streams the weight once.
void Linear(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool);

// y[i, :] += bias for i in [0, n); bias is a vector view of w.rows values.
void AddBias(float* y, int64_t n, const WeightView& bias);

// out[i] = x[i] / sqrt(mean(x[i]^2) + eps) * weight, per row of `dim` values. out may alias x.
void RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight, float eps,
             float* out);

// Rotary position embedding in place, Hugging Face "rotate_half" convention (first and second
// halves of each head are the pairs): for i < head_dim/2, with
// inv_freq_i = theta^(-2i/head_dim) and angle = position * inv_freq_i,
//   x'[i] = x[i] cos - x[i + d/2] sin,  x'[i + d/2] = x[i + d/2] cos + x[i] sin.
// x is [n, num_heads, head_dim]; positions[n].
void ApplyRope(float* x, int64_t n, int64_t num_heads, int64_t head_dim, const int64_t* positions,
               double theta);

// out[i, :] = table row ids[i] (converted to fp32). ids must be in [0, table.rows).
void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out);

// Causal attention of n new tokens of one sequence at positions [start, start + n) over a KV
// cache holding positions [0, start + n): k_cache and v_cache are [>= start + n, num_kv_heads,
// head_dim]. Grouped-query: query head h reads kv head h / (num_heads / num_kv_heads).
// Query at position p attends to keys at positions j with j <= p and, when sliding_window > 0,
// p - j < sliding_window. Scores are scaled by 1/sqrt(head_dim), softmax in fp32.
// q and out are [n, num_heads, head_dim]; scratch holds >= (start + n) floats per thread of pool
// (pass num_threads * (start + n)).
void Attention(const float* q, int64_t n, int64_t start, const float* k_cache, const float* v_cache,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t sliding_window,
               float* out, float* scratch, ThreadPool* pool);

// Router: for each of n tokens, softmax over num_experts logits (fp32), then the k experts of
// highest probability in descending order (ties: lower id first); with `renormalize` their
// weights are divided by their sum (Mixtral), else they are the softmax probabilities
// (Qwen2-MoE with norm_topk_prob = false). ids_out, weights_out are [n, k].
void TopKSoftmax(const float* logits, int64_t n, int64_t num_experts, int64_t k, bool renormalize,
                 int32_t* ids_out, float* weights_out);

// SwiGLU expert FFN: out[n, H] = (silu(x gate^T) * (x up^T)) down^T, with gate, up [I, H] and
// down [H, I] (Mixtral w1, w3, w2). scratch holds >= 2 * n * I floats. Each weight is streamed
// once per call whatever n is.
void ExpertFfn(const float* x, int64_t n, const WeightView& gate, const WeightView& up,
               const WeightView& down, float* out, float* scratch, ThreadPool* pool);

// out[i, :] += scale[i] * y[i, :] for i in [0, n), rows of `dim` values (the weighted un-permute
// of expert outputs back into the residual).
void ScaledAdd(const float* y, const float* scale, int64_t n, int64_t dim, float* out);

// True when the AVX2/FMA paths are in use (for benchmark reports).
bool UsingAvx2();

}  // namespace moe::cpu
