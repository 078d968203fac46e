// The engine's forward ops on a GPU (runtime/forward_ops.h): moe::cuda kernels and cuBLAS GEMMs
// enqueued on the CudaDevice's compute stream, over the engine's device buffers.
//
// Numerics. fp32 activations throughout. F32 weights: fp32 GEMMs (no TF32), so results match
// the CPU to fp32 rounding (~1e-6 relative). BF16 weights: each GEMM rounds its input
// activations to bf16 (cuBLAS bf16 x bf16, fp32 accumulation), about 2^-9 relative per product,
// so logits differ from the CPU's by about 1e-2 of their range and near-tied routing choices
// can differ. Combine is CombineExpertOutputs: rank order, the CPU's arithmetic.
//
// Memory. Everything the ops need on the device beyond the engine's activations is one workspace
// (WorkspaceBytes, allocated by the engine through the Device so it counts in the arena): the
// step's token ids and positions, the layer's expert grouping, the gathered expert inputs
// [T * K, H] and the GEMM scratch. Host <-> device traffic of small data goes through one
// pinned staging buffer; an upload region is rewritten only after a synchronisation that
// followed its previous upload (checked, not assumed).
//
// Synchronisation. Route, HostView and CopyToHost wait for the compute stream, RunExpertOnHost
// for the layer's gather; nothing else blocks the host. Expert GEMMs wait for their expert's copy
// on the GPU (the engine's ExpertTransfers call Device::ComputeWaitFor before RunExpert).
//
// Thread-safety: none (the engine thread). The CudaDevice must outlive the ops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/checkpoint.h"
#include "runtime/cuda/cuda_device.h"
#include "runtime/forward_ops.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"

namespace moe::cpu {
class ThreadPool;
}  // namespace moe::cpu

namespace moe::cuda {

class Blas;

class CudaForwardOps final : public ForwardOps {
 public:
  // InvalidArgument naming the feature when the model needs something the CUDA path lacks:
  // F16 GEMM weights (cuBLAS GEMMs here take F32 or BF16), more than 256 experts (the router
  // kernel), head_dim above 256 or odd (attention, RoPE). Needs no GPU.
  static absl::Status CheckSupported(const ModelConfig& config, const ModelWeights& weights);
  // Device bytes of workspace for steps of at most `max_tokens` tokens.
  static uint64_t WorkspaceBytes(const ModelConfig& config, const ModelWeights& weights,
                                 int64_t max_tokens);
  // `workspace`: WorkspaceBytes(...) bytes of `device` memory, owned by the caller. Creates the
  // cuBLAS handle on the device's compute stream and the pinned staging buffer (errors: Internal
  // for cuBLAS, ResourceExhausted when pinned memory is refused).
  static absl::StatusOr<std::unique_ptr<CudaForwardOps>> Create(CudaDevice& device,
                                                                const ModelConfig& config,
                                                                const ModelWeights& weights,
                                                                int64_t max_tokens,
                                                                std::byte* workspace);
  ~CudaForwardOps() override;

  bool host_memory() const override { return false; }
  absl::Status BeginStep(std::span<const int32_t> ids, std::span<const int64_t> positions) override;
  absl::Status Embed(const WeightView& table, float* x) override;
  absl::Status RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight, float eps,
                       float* out) override;
  absl::Status Linear(const float* x, int64_t n, const WeightView& w, float* y) override;
  absl::Status AddBias(float* y, int64_t n, const WeightView& bias) override;
  absl::Status Rope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                    double theta) override;
  absl::Status CopyDeviceFloats(float* dst, const float* src, int64_t count) override;
  absl::Status Attention(const float* q, int64_t n, int64_t start, const float* k_cache,
                         const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, int64_t sliding_window, float* out) override;
  absl::Status AddInPlace(float* x, const float* y, int64_t count) override;
  absl::Status Route(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                     bool renormalize, int32_t* ids, float* weights, HostRouting* host) override;
  absl::Status BeginExperts(const float* xn, int64_t n, int64_t k,
                            std::span<const int32_t> rows) override;
  absl::Status RunExpert(int32_t first, int32_t count, const FfnWeights& w,
                         float* expert_out) override;
  absl::Status CombineExperts(const float* expert_out, const float* weights, float* x) override;
  // Needs EnableHostExperts (else FailedPrecondition). Reads the expert's rows back on a stream
  // of its own once BeginExperts' gather ran (not waiting for the experts queued since), runs the
  // FFN on `pool` in chunks of at most max_tokens rows, and queues the output rows' upload on
  // the compute stream, before the CombineExperts that reads them.
  absl::Status RunExpertOnHost(int32_t first, int32_t count, const FfnWeights& w,
                               float* expert_out) override;
  // Makes RunExpertOnHost available: pinned host buffers for max_tokens rows of input and a
  // layer's output rows, the CPU FFN's scratch for experts of `intermediate_size`, a stream and
  // an event (ResourceExhausted when pinned memory is refused, Internal for CUDA errors). `pool`
  // runs the CPU FFN and must outlive the ops. Calling it again changes nothing.
  absl::Status EnableHostExperts(cpu::ThreadPool* pool, int64_t intermediate_size);
  absl::Status SharedExpert(const float* xn, int64_t n, const FfnWeights& w, const WeightView& gate,
                            float* shared_out, float* gate_out, float* x) override;
  absl::StatusOr<const float*> HostView(const float* src, int64_t count) override;
  absl::Status CopyToHost(float* host, const float* src, int64_t count) override;

 private:
  CudaForwardOps(CudaDevice& device, int64_t max_tokens, int64_t hidden, int64_t top_k);
  // Blocks until the compute stream drained; a new synchronisation epoch.
  absl::Status Synchronize();
  // Waits, if needed, until the last upload from a staging region (made in epoch `*epoch`) ran.
  absl::Status ReuseStaging(uint64_t* epoch);

  CudaDevice& device_;
  CUstream_st* const stream_;
  const int64_t max_tokens_, hidden_, top_k_;
  std::unique_ptr<Blas> blas_;
  PinnedHostBuffer staging_;
  // Device workspace.
  int32_t* ids_ = nullptr;        // [T]
  int64_t* positions_ = nullptr;  // [T]
  int32_t* grouping_ = nullptr;   // [2 * T * K]: rows grouped per expert, then row positions
  float* expert_in_ = nullptr;    // [T * K, H]: gathered expert inputs in grouped order
  void* gemm_scratch_ = nullptr;
  uint64_t gemm_scratch_bytes_ = 0;
  // Pinned staging regions.
  int32_t* staged_ids_ = nullptr;        // [T]
  int64_t* staged_positions_ = nullptr;  // [T]
  int32_t* staged_grouping_ = nullptr;   // [2 * T * K]
  int32_t* routed_ids_ = nullptr;        // [T * K]
  float* routed_weights_ = nullptr;      // [T * K]
  float* staged_hidden_ = nullptr;       // [T * H]
  // Synchronisation epochs (see ReuseStaging).
  uint64_t epoch_ = 0;
  uint64_t step_upload_epoch_ = UINT64_MAX, grouping_upload_epoch_ = UINT64_MAX;
  // Host experts (EnableHostExperts): pinned input rows [T, H] and output rows [T * K, H], the
  // FFN's scratch, the read-back stream and the event after the layer's gather.
  cpu::ThreadPool* host_pool_ = nullptr;
  PinnedHostBuffer host_rows_;
  float* host_in_ = nullptr;
  float* host_out_ = nullptr;
  std::vector<float> host_scratch_;
  CUstream_st* host_stream_ = nullptr;
  CUevent_st* gathered_ = nullptr;
  // The current step and MoE layer.
  int64_t step_tokens_ = 0;
  int64_t layer_tokens_ = 0;
  const int32_t* row_position_ = nullptr;  // device, [n * K]
};

// Pins the memory-mapped checkpoint for DMA (cudaHostRegister): per safetensors file, the
// page-aligned range spanning its whole data section (a copy whose source straddles the edge of
// a registered range is refused by CUDA, so every tensor is wholly inside one). Pins are counted
// process-wide, so engines sharing a model register a range once and the last one unpins it.
// Pinned memory makes expert copies truly asynchronous DMA; refused pinning (mapped files the
// driver will not lock, RLIMIT_MEMLOCK) is not fatal: CudaDevice then copies through its pinned
// staging ring (the host stages each copy before it returns).
class PinnedCheckpoint {
 public:
  PinnedCheckpoint() = default;
  PinnedCheckpoint(const PinnedCheckpoint&) = delete;
  PinnedCheckpoint& operator=(const PinnedCheckpoint&) = delete;
  ~PinnedCheckpoint();  // unpins what Pin pinned

  // Stops at the first refusal and returns its status; ranges pinned before it stay pinned.
  absl::Status Pin(CudaDevice& device, const Checkpoint& checkpoint);
  uint64_t bytes() const { return bytes_; }

 private:
  CudaDevice* device_ = nullptr;
  std::vector<const std::byte*> ranges_;  // range starts this object holds a pin on
  uint64_t bytes_ = 0;
};

}  // namespace moe::cuda
