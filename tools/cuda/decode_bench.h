// GPU decode benchmark with real routing (issue 4, benchmark mode): a Mixtral-shaped stack of MoE
// blocks (RMSNorm, router GEMM + softmax/top-k, the routed SwiGLU experts in bf16 through
// cuBLAS, the weighted combine into the residual) with deterministic synthetic weights, decoding
// at batch 1 while the experts chosen at each layer are forced from a real routing trace, so
// the expert cache sees real routing. Attention and the dense parts outside the MoE block are
// not run (at batch 1 they read ~84 MB per Mixtral layer against 704 MB of experts; the result
// table says so).
//
// Each layer reads its routing back to the host (a real engine must, to know which experts to
// run), then the experts run on the compute stream. Modes:
//   resident  every expert already on the GPU (layer l reads the resident experts of layer
//             l mod R, R = the layers that fit): the compute-only time.
//   serial    cache misses copied one at a time and waited for before computing (copy, wait,
//             compute): no overlap.
//   overlap   all misses of a layer issued on the copy stream at once; resident experts compute
//             first; each missing expert's GEMMs wait (on the GPU) for its own copy only.
//   hybrid    overlap, plus a cost model measured at start (one expert's FFN on the CPU threads
//             from pinned host memory vs one expert over the measured link): each missing expert
//             goes to whichever of the link (after the copies already queued on it) and the CPU
//             would finish it first; the CPU computes from the host store (the normed hidden
//             state is read back with the routing) and uploads the 16 KB result. When the CPU
//             takes an expert while the link is idle, a background copy brings it into the cache
//             for later tokens (nobody waits for it; a later hit waits on the GPU if it is still
//             arriving).
// The expert cache is the project's ExpertCache (budget, scope, policy), so `moe-replay` on the
// same tokens gives the same hits; the benchmark replays them to print Belady's loads and the
// floor max(compute, Belady loads x expert bytes / link bandwidth).
//
// Host expert store: pinned buffers of expert_bytes; when the model's experts exceed
// `host_bytes`, experts share buffers round-robin (the weights are synthetic, the bytes moved
// are the same). Not thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "memory/expert_cache.h"
#include "predictor/routing_trace.h"
#include "runtime/cuda/cuda_device.h"

namespace moe::cuda {

struct DecodeBenchOptions {
  int64_t hidden = 4096;  // Mixtral-8x7B
  int64_t inter = 14336;
  int32_t experts = 8;
  int32_t top_k = 2;
  int32_t layers = 32;
  uint64_t budget_bytes = 24'000'000'000;  // expert cache budget on the GPU
  uint64_t host_bytes = 64'000'000'000;    // pinned host memory for the expert store at most
  int64_t tokens = 64;                     // decode steps timed (trace tokens 0 .. tokens-1)
  std::string policy = "lru";
  double link_bytes_per_second = 25e9;  // the hybrid's cost model (moe-cuda-bench: measured)
  CacheScope scope = CacheScope::kGlobal;
  // "resident", "serial" or "overlap", each optionally "@policy" (default: `policy`).
  std::vector<std::string> modes = {"resident", "serial", "overlap"};
};

struct DecodeModeResult {
  std::string mode;
  std::string policy;  // the cache's eviction policy (streaming modes)
  double seconds = 0;  // all timed tokens
  double median_token_seconds = 0;
  double tokens_per_second = 0;
  CacheStats cache;               // empty for "resident"
  CacheStats replay;              // moe-replay's stats for the same tokens and cache options
  double copy_stall_seconds = 0;  // host blocked in WaitCopy (serial)
  int32_t resident_layers = 0;    // "resident": R
  // hybrid: the cost model's inputs and how many routed experts the CPU computed.
  double cpu_expert_seconds = 0;
  double link_expert_seconds = 0;
  uint64_t cpu_experts = 0;
};

struct DecodeBenchResult {
  uint64_t expert_bytes = 0;
  int64_t capacity_experts = 0;
  uint64_t host_buffers = 0;  // distinct pinned expert buffers
  std::vector<DecodeModeResult> modes;
  CacheStats replay_belady;  // Belady's optimum for the same tokens and cache options
};

absl::StatusOr<DecodeBenchResult> RunDecodeBench(CudaDevice& device, const RoutingTrace& trace,
                                                 const DecodeBenchOptions& options);

// The routing the benchmark forces: `tokens` decode steps over `layers` layers, token t at
// layer l taking trace token t mod T at trace layer l mod L_trace. One sequence, decode phase.
// InvalidArgument when the trace's experts or top-k do not fit the model's.
absl::StatusOr<RoutingTrace> ForcedRoutingTrace(const RoutingTrace& trace, int32_t layers,
                                                int32_t experts, int32_t top_k, int64_t tokens,
                                                uint64_t expert_bytes);

}  // namespace moe::cuda
