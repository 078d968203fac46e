// The engine's math, one function per op, per device (DESIGN.md section 4, "kernel table").
//
// The engine's control logic (expert cache, expert copies, waves, predictor, tracer, statistics)
// is the same on every device; what differs is where activations live and which kernels run on
// them. ForwardOps is that difference:
//   - CPU and fake devices (MakeCpuForwardOps): the device arena is host memory and the ops are
//     moe::cpu's kernels, called exactly as the engine always called them, so results are bit
//     for bit what they were before this seam existed.
//   - CUDA device (runtime/cuda/cuda_forward_ops.h): the arena is GPU memory and the ops enqueue
//     moe::cuda kernels and cuBLAS GEMMs on the device's compute stream.
//
// Pointers. Activations, the KV cache, non-expert weights (WeightView::data) and expert slots are
// device pointers: the engine's DeviceBuffers. Arguments named `host` are host memory. The engine
// never dereferences a device pointer; it reads what its host logic needs through the three calls
// that return host data (Route's host routing, HostView, CopyToHost). On a device that queues
// compute those wait for everything enqueued so far: they are a step's only synchronisations
// (once per MoE layer for the routing, once more per layer when a predictor reads hidden
// states, and once for the logits).
//
// Shapes. H = hidden size, K = top-k; x [n, dim] row-major; q [n, heads, head_dim].
//
// Errors: Status; the CPU ops cannot fail (always OK), the CUDA ops return Internal for a failed
// launch or cuBLAS call. Thread-safety: none; the engine thread drives them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/weight_view.h"
#include "runtime/model_weights.h"

namespace moe {

// Host copies of one MoE layer's routing, [n, K] each; valid until the next Route call.
struct HostRouting {
  const int32_t* ids = nullptr;
  const float* weights = nullptr;
};

class ForwardOps {
 public:
  virtual ~ForwardOps() = default;

  // True when activations are host memory the engine may read in place (CPU and fake devices).
  virtual bool host_memory() const = 0;

  // The tokens of the step about to run (host): Embed and Rope read them until the next call.
  virtual absl::Status BeginStep(std::span<const int32_t> ids,
                                 std::span<const int64_t> positions) = 0;
  // x [n, table.cols] = rows of `table` for the step's ids (n = the step's tokens).
  virtual absl::Status Embed(const WeightView& table, float* x) = 0;

  // cpu::RmsNorm / cpu::Linear / cpu::AddBias semantics.
  virtual absl::Status RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight,
                               float eps, float* out) = 0;
  virtual absl::Status Linear(const float* x, int64_t n, const WeightView& w, float* y) = 0;
  virtual absl::Status AddBias(float* y, int64_t n, const WeightView& bias) = 0;
  // Rotary embedding in place on the step's first n tokens, at the step's positions.
  virtual absl::Status Rope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                            double theta) = 0;
  // dst[0, count) = src[0, count), both device memory (KV cache writes).
  virtual absl::Status CopyDeviceFloats(float* dst, const float* src, int64_t count) = 0;
  // cpu::Attention semantics (the CPU ops bring the scratch and the thread pool).
  virtual absl::Status Attention(const float* q, int64_t n, int64_t start, const float* k_cache,
                                 const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                                 int64_t head_dim, int64_t sliding_window, float* out) = 0;
  // x[i] += y[i] for i < count (the attention residual).
  virtual absl::Status AddInPlace(float* x, const float* y, int64_t count) = 0;

  // Router: cpu::TopKSoftmax of `logits` [n, num_experts] into ids, weights [n, k] (device
  // memory), and their host copies in *host (waits for the compute queued so far).
  virtual absl::Status Route(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                             bool renormalize, int32_t* ids, float* weights, HostRouting* host) = 0;

  // Routed experts of one MoE layer. BeginExperts gives the grouping: `rows` (host, n * k
  // entries) lists the flat (token, rank) indices t * k + j grouped per expert, each expert's
  // rows contiguous and in flat order. RunExpert then computes the SwiGLU FFN of expert `w` on
  // the normed input rows rows[first, first + count) and stores the results in `expert_out`
  // ([n * k, H], device memory) where CombineExperts finds them; CombineExperts adds, per token,
  // weights[t * k + j] * output of rank j to x[t], in rank order j = 0 .. k - 1 whatever order
  // the experts ran in (so results never depend on the cache). `rows` must stay valid until
  // CombineExperts returns; `w` is read by work that may still be queued when RunExpert returns
  // (the engine keeps the expert pinned in the cache until the layer's wave ends, and copies
  // into its slot are ordered after queued compute: Device::CopyWaitForCompute).
  virtual absl::Status BeginExperts(const float* xn, int64_t n, int64_t k,
                                    std::span<const int32_t> rows) = 0;
  virtual absl::Status RunExpert(int32_t first, int32_t count, const FfnWeights& w,
                                 float* expert_out) = 0;
  virtual absl::Status CombineExperts(const float* expert_out, const float* weights, float* x) = 0;
  // RunExpert for an expert computed by the host CPU from `w` in host memory (the engine's CPU
  // fallback). Ops on host memory run RunExpert itself (the default). Device ops read the
  // expert's input rows back, run the FFN on the CPU and write its output rows where RunExpert
  // would, ordered before CombineExperts.
  virtual absl::Status RunExpertOnHost(int32_t first, int32_t count, const FfnWeights& w,
                                       float* expert_out) {
    return RunExpert(first, count, w, expert_out);
  }

  // Shared expert with a sigmoid gate (Qwen2-MoE): x[t] += sigmoid(xn[t] . gate) * ffn(xn)[t].
  // shared_out [n, H] and gate_out [n] are scratch activations.
  virtual absl::Status SharedExpert(const float* xn, int64_t n, const FfnWeights& w,
                                    const WeightView& gate, float* shared_out, float* gate_out,
                                    float* x) = 0;

  // A host pointer to `count` floats at device pointer `src`: `src` itself on host memory, else
  // a copy (valid until the next HostView) made after the compute queued so far.
  virtual absl::StatusOr<const float*> HostView(const float* src, int64_t count) = 0;
  // host[0, count) = src[0, count), after the compute queued so far.
  virtual absl::Status CopyToHost(float* host, const float* src, int64_t count) = 0;
};

// The engine's activations the CPU ops use as scratch (host memory of the CPU or fake device).
struct CpuForwardScratch {
  float* xe = nullptr;            // [max step tokens, H]: one expert's gathered input rows
  float* ye = nullptr;            // [max step tokens, H]: one expert's output rows
  float* ffn_scratch = nullptr;   // [2 * max step tokens * max(I, shared I)]
  float* attn_scratch = nullptr;  // [threads * max context]
};

// The ops of the CPU and fake devices: moe::cpu kernels on host memory, with `pool` (which must
// outlive the ops; nullptr runs on the calling thread). `hidden` is the model's hidden size.
std::unique_ptr<ForwardOps> MakeCpuForwardOps(cpu::ThreadPool* pool, int64_t hidden,
                                              const CpuForwardScratch& scratch);

}  // namespace moe
