// The engine: runs a Model's forward pass on a Device with the expert cache in the loop.
//
// What lives where (CPU backend: the "device" is a separate, budgeted host arena; CUDA: GPU
// memory):
//   - device: the non-expert weights (copied once at Create), the expert slot arena
//     (capacity slots x expert_bytes, sized from the expert budget), activations and the KV
//     cache. The device's capacity is exactly their sum, so peak use can never exceed it.
//   - host: the routed experts, in the memory-mapped checkpoint (HostExpertStore).
// Every routed expert's weights reach compute only through the ExpertCache: pinned while in use,
// copied from the host store into its slot on a miss, evicted by the configured policy.
//
// Evaluate runs a batch as steps. A multi-token entry (a prompt) is split into prefill steps of
// at most prefill_chunk tokens; all one-token entries (decode, one token per sequence) form one
// step together. At each MoE layer of a step the tokens are grouped per expert, the experts are
// acquired with AcquireInWaves (resident ones first, then the misses) and each expert's weights
// are read once for all its tokens. Statistics count one cache access per distinct expert per
// layer-step: the same rule `moe-replay --prefill-chunk N` replays.
//
// The math runs through ForwardOps (runtime/forward_ops.h): moe::cpu kernels on the CPU and fake
// devices, moe::cuda kernels on the GPU's compute stream on the CUDA device. The control logic
// (cache, copies, waves, predictor, tracer, statistics) is the same on every device; on the GPU
// each MoE layer's routing is copied back to the host (one synchronisation per layer), so hit and
// miss counts are the CPU device's whenever the routing is.
//
// Thread-safety: an Engine is used by one thread at a time (the C API's context rule). CPU
// kernels use an internal thread pool.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory/expert_cache.h"
#include "memory/transfer_queue.h"
#include "predictor/prefetch_planner.h"
#include "predictor/routing_trace.h"
#include "runtime/device.h"
#include "runtime/fake_device.h"
#include "runtime/model.h"

namespace moe {

struct EngineOptions {
  uint64_t expert_budget_bytes = 0;  // device bytes for expert slots; 0: every expert
  std::string policy = "lru";
  CacheScope scope = CacheScope::kGlobal;
  int32_t max_sequences = 1;    // KV cache slots (sequence ids 0 .. max_sequences-1)
  int64_t max_context = 0;      // tokens per sequence; 0: min(max_position_embeddings, 4096)
  int64_t prefill_chunk = 256;  // tokens per prefill step
  int32_t num_threads = 0;      // 0: all cores
  // Prediction and prefetching (predictor/prefetch_planner.h, the rule moe-replay shares).
  // predictor: "none", "gate" (next-layer gate: coming layers' routers applied to the token's
  // residual stream; needs no tables) or a MakePredictor name ("frequency", "transition",
  // "recency", "combined"), optionally with tables from predictor_file (Predictor::Load).
  // With a predictor, its one-layer-ahead recall is measured (EngineStats::recall) even when
  // prefetch.depth is 0. Predictions only schedule copies; routing is always the router's.
  std::string predictor = "none";
  std::string predictor_file;
  PrefetchOptions prefetch;
  // Limits on prefetching (the TransferQueue's; 0: none): prefetch bytes admitted per step,
  // and experts prefetched but not yet used (queued, on the link or landed) at any time.
  uint64_t prefetch_bytes_per_step = 0;
  int64_t max_unconfirmed_prefetches = 0;
  // Cancel prefetches made stale: in a single-token step (batch-1 decode), a new prediction for
  // a layer cancels that layer's prefetches still waiting in the copy queue that it no longer
  // names, and frees their cache slots (EngineStats::stale_prefetches_cancelled). In a step of
  // several tokens every token's prediction stands, so nothing is cancelled. Off by default:
  // what is still queued depends on link timing, so with it on moe-replay (which has no copy
  // queue) no longer reproduces the live hit rates exactly. Never changes results.
  bool cancel_stale_prefetches = false;
  // Expert copies issued to the device's copy stream at a time (the rest wait in the priority
  // queue, where demand overtakes prefetches); >= 1.
  int32_t copy_window = 2;
  // Benchmark mode, never on by default: the experts each token runs are taken from this
  // routing trace instead of the router (the router still runs; its top-k weights still scale
  // the experts' outputs). The n-th token the engine processes (prefill or decode, any sequence)
  // takes trace token n mod T, and MoE layer l trace layer l mod the trace's layers. The cache,
  // copies, predictors and tracer see the forced routing, so a synthetic-weight model of a real
  // model's shapes meets real routing patterns; its outputs are meaningless. InvalidArgument
  // when the trace's top-k differs from the model's or it names experts the model lacks.
  std::shared_ptr<const RoutingTrace> forced_routing;
  // "cpu" (default): CPU kernels, the device a budgeted host arena.
  // "cuda": the whole forward on GPU 0 (runtime/cuda/cuda_forward_ops.h): weights, activations,
  // KV cache and expert slots in GPU memory, expert copies on a copy stream that compute waits
  // for on the GPU. FailedPrecondition when this build has no CUDA or no GPU is usable;
  // InvalidArgument for models the CUDA path does not support (F16 GEMM weights, > 256 experts,
  // head_dim > 256). BF16 weights: GEMM inputs are rounded to bf16, so
  // logits differ from the CPU's by about 1e-2 of their range (F32: fp32 rounding only).
  // "auto": cuda when this build has CUDA and a GPU is visible, else cpu.
  // "fake": the FakeDevice (virtual clock, modelled link, fault injection) for measuring
  // overlap deterministically. On the fake device compute is charged, not timed: every weight
  // byte a kernel reads costs 1 / fake_compute_bytes_per_second seconds (decode is
  // memory-bound), so the ratio of link to memory bandwidth sets how much a miss costs.
  // Anything else is InvalidArgument naming the accepted values.
  std::string device = "cpu";
  // cuda: pin the mapped checkpoint (cudaHostRegister) so expert copies are asynchronous DMA;
  // when the driver refuses, a warning is logged and copies go through a pinned staging ring.
  bool pin_host_experts = true;
  FakeDeviceOptions fake_device;
  double fake_compute_bytes_per_second = 3.35e12;  // about H100 HBM3
  // CPU fallback: a missed expert whose copy would arrive later than the CPU could compute it
  // runs on the CPU from host memory instead of waiting; its copy still lands, so later tokens
  // find it resident (the cache and its statistics are unchanged; see cpu_fallback_bypass). The
  // cost model compares (copies ahead + 1) x transfer time + device compute with the CPU's
  // max(expert bytes / cpu_bytes_per_second, FFN flops / cpu_flops_per_second), so batch-1 decode
  // over a slow link goes to the CPU and large prefill batches do not. Only for devices that are
  // not the CPU (the fake and cuda devices; on the CPU device it is ignored). Hit rates are the
  // same either way: moe-replay still reproduces them. Results are identical on the fake device;
  // on cuda the expert's input rows are read back, its FFN runs on the CPU in fp32 and its output
  // rows are written back (CudaForwardOps::RunExpertOnHost), so results agree with the CPU
  // backend's within the CUDA path's tolerance, and the transfer time is measured at Create by
  // copying one expert. The CPU's rates are measured at Create on a real expert when 0 (the
  // default; reported in EngineStats); tests and modelled benchmarks give them for deterministic
  // decisions.
  bool cpu_fallback = false;
  // With cpu_fallback: a missed expert the cost model sends to the CPU is not loaded at all (no
  // cache slot, no copy, no eviction) unless the link is idle, so copies the CPU made unneeded do
  // not hold up the next ones: the hybrid rule of moe-cuda-bench. Such experts are not cache
  // accesses (EngineStats::cpu_uncached counts them), so moe-replay no longer reproduces the
  // hit rates. Results are still identical.
  bool cpu_fallback_bypass = false;
  double cpu_bytes_per_second = 0;  // weight bytes per second of the CPU expert kernel
  double cpu_flops_per_second = 0;
};

struct PhaseStats {
  uint64_t tokens = 0;
  uint64_t steps = 0;
  double seconds = 0;
  double load_seconds = 0;    // of which issuing expert copies and waiting for them
  double device_seconds = 0;  // on the device timeline (fake device: virtual compute + stall)
};

struct EngineStats {
  CacheStats cache;
  PhaseStats prefill;
  PhaseStats decode;
  DeviceCounters device;
  uint64_t expert_arena_bytes = 0;     // slots x expert_bytes
  uint64_t non_expert_bytes = 0;       // device bytes holding the non-expert weights
  uint64_t setup_bytes_to_device = 0;  // copied at Create (the weights), before any token
  uint64_t activation_bytes = 0;       // activations + KV cache (+ the CUDA ops' workspace)
  uint64_t pinned_host_bytes = 0;      // cuda: bytes of the mapped checkpoint pinned
  int64_t expert_slots = 0;
  // One-layer-ahead recall of the predictor at budget prefetch.budget (top_k when 0); empty
  // vectors without a predictor.
  PredictionRecall recall;
  TransferCounters transfers;  // expert copies: issued, cancelled, useful, late, wasted
  uint64_t failed_copies = 0;  // expert copies that failed (copied again when needed)
  // Queued prefetches a newer prediction dropped (cancel_stale_prefetches; also in
  // transfers.cancelled); the cache counts each as an unused prefetch (prefetch_wasted), though
  // it never moved a byte.
  uint64_t stale_prefetches_cancelled = 0;
  double device_seconds = 0;  // the device timeline (fake device: virtual compute + stall)
  // The cost model's CPU rates (measured at Create unless given); 0 without the fallback.
  double cpu_bytes_per_second = 0;
  double cpu_flops_per_second = 0;
  uint64_t cpu_fallbacks = 0;       // missed experts computed on the CPU instead of copied
  uint64_t cpu_uncached = 0;        // ... of which never loaded (cpu_fallback_bypass)
  double cpu_fallback_seconds = 0;  // their modelled CPU time (in device_seconds)
};

struct SequenceTokens {
  int32_t sequence = 0;
  std::span<const int32_t> tokens;
};

class Engine {
 public:
  // InvalidArgument for bad options (unknown policy or predictor, zero chunk, prefetch budget
  // above the experts per layer); a predictor_file that cannot be loaded or does not match the
  // model is an error naming the file. ResourceExhausted when the
  // expert budget holds fewer than top_k experts per cache partition ("budget smaller than one
  // token's experts"), naming the budget and the expert size.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::shared_ptr<const Model> model,
                                                        const EngineOptions& options);
  ~Engine();

  const Model& model() const { return *model_; }
  const EngineOptions& options() const { return options_; }
  int64_t max_context() const { return max_context_; }

  // Appends the tokens to their sequences (distinct sequence ids per call) and runs them.
  // logits_out receives, per entry in order, the logits of its last token ([entries, vocab]), or
  // with all_logits of every token ([sum of tokens, vocab]). logits_out.size() must match.
  // Errors (nothing is appended): sequence id out of range or repeated, token id outside the
  // vocabulary, context overflow, wrong logits size.
  absl::Status Evaluate(std::span<const SequenceTokens> batch, bool all_logits,
                        std::span<float> logits_out);

  // Forgets a sequence's tokens (its KV cache). OutOfRange for a bad id.
  absl::Status ResetSequence(int32_t sequence);
  int64_t SequenceLength(int32_t sequence) const;

  // Starts recording routing into a fresh trace (replacing any recording in progress).
  void StartTrace();
  // The trace recorded since StartTrace; FailedPrecondition when not recording or empty.
  absl::StatusOr<RoutingTrace> StopTrace();
  bool tracing() const;

  EngineStats stats() const;
  // The device the engine runs on (tests reach the fake device's fault injection through it).
  Device& device();

 private:
  struct Impl;
  Engine(std::shared_ptr<const Model> model, const EngineOptions& options);
  std::shared_ptr<const Model> model_;
  EngineOptions options_;
  int64_t max_context_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
