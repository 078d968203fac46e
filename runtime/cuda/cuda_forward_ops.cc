#include "runtime/cuda/cuda_forward_ops.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

#include "fmt/format.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/status_util.h"
#include "runtime/cuda/engine_kernels.h"
#include "runtime/status.h"

namespace moe::cuda {
namespace {

constexpr uint64_t kAlign = 256;
uint64_t AlignUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

absl::Status CudaStatus(const char* what, cudaError_t err) {
  if (err == cudaSuccess) return absl::OkStatus();
  return Internal("cuda forward: {}: {} ({})", what, cudaGetErrorString(err),
                  cudaGetErrorName(err));
}

// Where everything sits in the device workspace and in the pinned staging buffer, for steps of at
// most T tokens; each region starts on a kAlign boundary.
struct WorkspaceLayout {
  uint64_t ids, positions, grouping, expert_in, gemm_scratch, gemm_scratch_bytes, total;
};
struct StagingLayout {
  uint64_t ids, positions, grouping, routed_ids, routed_weights, hidden, total;
};

// The largest GEMM scratch any op needs at T tokens.
uint64_t GemmScratchBytes(const ModelConfig& c, const ModelWeights& w, int64_t T) {
  uint64_t bytes = 0;
  auto linear = [&](const WeightView& v) {
    if (v.present()) bytes = std::max(bytes, LinearScratchBytes(T, v));
  };
  linear(w.lm_head.present() ? w.lm_head : w.embed);
  for (const LayerWeights& l : w.layers) {
    for (const WeightView* v : {&l.q, &l.k, &l.v, &l.o, &l.router, &l.shared_expert_gate}) {
      linear(*v);
    }
    if (l.shared_expert.gate.present()) {
      bytes = std::max(bytes, ExpertFfnScratchBytes(T, c.hidden_size, l.shared_expert.gate.rows,
                                                    l.shared_expert.gate.dtype));
    }
  }
  bytes =
      std::max(bytes, ExpertFfnScratchBytes(T, c.hidden_size, c.intermediate_size, w.expert_dtype));
  return std::max<uint64_t>(bytes, kAlign);
}

WorkspaceLayout MakeWorkspaceLayout(const ModelConfig& c, const ModelWeights& w, int64_t T) {
  const uint64_t t = static_cast<uint64_t>(T), k = static_cast<uint64_t>(c.top_k);
  const uint64_t h = static_cast<uint64_t>(c.hidden_size);
  WorkspaceLayout l{};
  l.ids = 0;
  l.positions = l.ids + AlignUp(t * sizeof(int32_t));
  l.grouping = l.positions + AlignUp(t * sizeof(int64_t));
  l.expert_in = l.grouping + AlignUp(2 * t * k * sizeof(int32_t));
  l.gemm_scratch = l.expert_in + AlignUp(t * k * h * sizeof(float));
  l.gemm_scratch_bytes = GemmScratchBytes(c, w, T);
  l.total = l.gemm_scratch + AlignUp(l.gemm_scratch_bytes);
  return l;
}

StagingLayout MakeStagingLayout(int64_t T, int64_t K, int64_t H) {
  const uint64_t t = static_cast<uint64_t>(T), k = static_cast<uint64_t>(K);
  const uint64_t h = static_cast<uint64_t>(H);
  StagingLayout l{};
  l.ids = 0;
  l.positions = l.ids + AlignUp(t * sizeof(int32_t));
  l.grouping = l.positions + AlignUp(t * sizeof(int64_t));
  l.routed_ids = l.grouping + AlignUp(2 * t * k * sizeof(int32_t));
  l.routed_weights = l.routed_ids + AlignUp(t * k * sizeof(int32_t));
  l.hidden = l.routed_weights + AlignUp(t * k * sizeof(float));
  l.total = l.hidden + AlignUp(t * h * sizeof(float));
  return l;
}

absl::Status CheckGemmWeight(const std::string& name, const WeightView& w) {
  if (!w.present() || w.dtype == DType::kF32 || w.dtype == DType::kBF16) return absl::OkStatus();
  return InvalidArgument(
      "cuda device: {} has dtype {}; the CUDA GEMMs take F32 or BF16 weights (run this model on "
      "the cpu device)",
      name, DTypeName(w.dtype));
}

// Process-wide pin counts of host ranges (by start), so engines sharing a mapped model pin it once.
struct PinRegistry {
  std::mutex mu;
  std::map<const std::byte*, int> count;
};
PinRegistry& Pins() {
  static PinRegistry* registry = new PinRegistry;
  return *registry;
}

}  // namespace

// ---- construction --------------------------------------------------------------------------

absl::Status CudaForwardOps::CheckSupported(const ModelConfig& c, const ModelWeights& w) {
  if (c.num_experts > 256) {
    return InvalidArgument(
        "cuda device: {} experts per layer; the CUDA router supports at most 256 (run this model "
        "on the cpu device)",
        c.num_experts);
  }
  if (c.head_dim < 2 || c.head_dim > 256 || c.head_dim % 2 != 0) {
    return InvalidArgument(
        "cuda device: head_dim {}; CUDA attention and RoPE need an even head_dim of at most 256",
        c.head_dim);
  }
  MOE_RETURN_IF_ERROR(CheckGemmWeight("the LM head", w.lm_head.present() ? w.lm_head : w.embed));
  if (w.expert_dtype != DType::kF32 && w.expert_dtype != DType::kBF16) {
    return InvalidArgument(
        "cuda device: the routed experts have dtype {}; the CUDA GEMMs take F32 or BF16 weights "
        "(run this model on the cpu device)",
        DTypeName(w.expert_dtype));
  }
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::pair<const char*, const WeightView*> named[] = {
        {"q_proj", &l.q},
        {"k_proj", &l.k},
        {"v_proj", &l.v},
        {"o_proj", &l.o},
        {"the router", &l.router},
        {"the shared expert's gate_proj", &l.shared_expert.gate},
        {"the shared expert's up_proj", &l.shared_expert.up},
        {"the shared expert's down_proj", &l.shared_expert.down},
        {"the shared expert gate", &l.shared_expert_gate}};
    for (const auto& [name, view] : named) {
      MOE_RETURN_IF_ERROR(CheckGemmWeight(fmt::format("layer {} {}", i, name), *view));
    }
    const FfnWeights& s = l.shared_expert;
    if (s.gate.present() && (s.up.dtype != s.gate.dtype || s.down.dtype != s.gate.dtype)) {
      return InvalidArgument(
          "cuda device: layer {}: the shared expert's projections have different dtypes", i);
    }
  }
  return absl::OkStatus();
}

uint64_t CudaForwardOps::WorkspaceBytes(const ModelConfig& config, const ModelWeights& weights,
                                        int64_t max_tokens) {
  return MakeWorkspaceLayout(config, weights, max_tokens).total;
}

CudaForwardOps::CudaForwardOps(CudaDevice& device, int64_t max_tokens, int64_t hidden,
                               int64_t top_k)
    : device_(device),
      stream_(device.compute_stream()),
      max_tokens_(max_tokens),
      hidden_(hidden),
      top_k_(top_k) {}

CudaForwardOps::~CudaForwardOps() {
  // Queued kernels may still use the handle's workspace; drain before cuBLAS frees it.
  cudaStreamSynchronize(stream_);
  if (host_stream_ != nullptr) {
    cudaStreamSynchronize(host_stream_);
    cudaStreamDestroy(host_stream_);
  }
  if (gathered_ != nullptr) cudaEventDestroy(gathered_);
}

absl::StatusOr<std::unique_ptr<CudaForwardOps>> CudaForwardOps::Create(CudaDevice& device,
                                                                       const ModelConfig& config,
                                                                       const ModelWeights& weights,
                                                                       int64_t max_tokens,
                                                                       std::byte* workspace) {
  MOE_RETURN_IF_ERROR(CheckSupported(config, weights));
  if (max_tokens < 1 || workspace == nullptr) {
    return InvalidArgument("cuda forward: {} tokens per step and a workspace are needed",
                           max_tokens);
  }
  std::unique_ptr<CudaForwardOps> ops(
      new CudaForwardOps(device, max_tokens, config.hidden_size, config.top_k));
  MOE_ASSIGN_OR_RETURN(ops->blas_, Blas::Create(device.compute_stream()));
  const WorkspaceLayout w = MakeWorkspaceLayout(config, weights, max_tokens);
  ops->ids_ = reinterpret_cast<int32_t*>(workspace + w.ids);
  ops->positions_ = reinterpret_cast<int64_t*>(workspace + w.positions);
  ops->grouping_ = reinterpret_cast<int32_t*>(workspace + w.grouping);
  ops->expert_in_ = reinterpret_cast<float*>(workspace + w.expert_in);
  ops->gemm_scratch_ = workspace + w.gemm_scratch;
  ops->gemm_scratch_bytes_ = w.gemm_scratch_bytes;
  const StagingLayout s = MakeStagingLayout(max_tokens, config.top_k, config.hidden_size);
  MOE_ASSIGN_OR_RETURN(ops->staging_, PinnedHostBuffer::Allocate(s.total, "engine staging"));
  std::byte* p = ops->staging_.data();
  ops->staged_ids_ = reinterpret_cast<int32_t*>(p + s.ids);
  ops->staged_positions_ = reinterpret_cast<int64_t*>(p + s.positions);
  ops->staged_grouping_ = reinterpret_cast<int32_t*>(p + s.grouping);
  ops->routed_ids_ = reinterpret_cast<int32_t*>(p + s.routed_ids);
  ops->routed_weights_ = reinterpret_cast<float*>(p + s.routed_weights);
  ops->staged_hidden_ = reinterpret_cast<float*>(p + s.hidden);
  return ops;
}

// ---- synchronisation -----------------------------------------------------------------------

absl::Status CudaForwardOps::Synchronize() {
  MOE_RETURN_IF_ERROR(device_.SynchronizeCompute());
  ++epoch_;
  return absl::OkStatus();
}

absl::Status CudaForwardOps::ReuseStaging(uint64_t* epoch) {
  // An upload made in the current epoch may not have run yet (no synchronisation since).
  if (*epoch == epoch_) MOE_RETURN_IF_ERROR(Synchronize());
  return absl::OkStatus();
}

// ---- ops -----------------------------------------------------------------------------------

absl::Status CudaForwardOps::BeginStep(std::span<const int32_t> ids,
                                       std::span<const int64_t> positions) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < 1 || n > max_tokens_ || positions.size() != ids.size()) {
    return InvalidArgument("cuda forward: a step of {} tokens ({} positions), at most {}", n,
                           positions.size(), max_tokens_);
  }
  MOE_RETURN_IF_ERROR(ReuseStaging(&step_upload_epoch_));
  std::memcpy(staged_ids_, ids.data(), ids.size_bytes());
  std::memcpy(staged_positions_, positions.data(), positions.size_bytes());
  MOE_RETURN_IF_ERROR(CudaStatus(
      "uploading token ids",
      cudaMemcpyAsync(ids_, staged_ids_, ids.size_bytes(), cudaMemcpyHostToDevice, stream_)));
  MOE_RETURN_IF_ERROR(CudaStatus(
      "uploading positions", cudaMemcpyAsync(positions_, staged_positions_, positions.size_bytes(),
                                             cudaMemcpyHostToDevice, stream_)));
  step_upload_epoch_ = epoch_;
  step_tokens_ = n;
  return absl::OkStatus();
}

absl::Status CudaForwardOps::Embed(const WeightView& table, float* x) {
  return EmbeddingGather(table, ids_, step_tokens_, x, stream_);
}

absl::Status CudaForwardOps::RmsNorm(const float* x, int64_t n, int64_t dim,
                                     const WeightView& weight, float eps, float* out) {
  return cuda::RmsNorm(x, n, dim, weight, eps, out, stream_);
}

absl::Status CudaForwardOps::Linear(const float* x, int64_t n, const WeightView& w, float* y) {
  return cuda::Linear(*blas_, x, n, w, y, gemm_scratch_, gemm_scratch_bytes_, stream_);
}

absl::Status CudaForwardOps::AddBias(float* y, int64_t n, const WeightView& bias) {
  constexpr const char* kFn = "AddBias";
  if (!bias.present() || n == 0) return absl::OkStatus();
  internal::ElemType type = internal::ElemType::kF32;
  MOE_RETURN_IF_ERROR(internal::WeightElemType(kFn, bias, /*allow_f16=*/true, &type));
  return internal::LaunchStatus(kFn, "AddBiasKernel",
                                LaunchAddBias(y, n, bias.num_elements(), bias.data, type, stream_));
}

absl::Status CudaForwardOps::Rope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                                  double theta) {
  if (n > step_tokens_) {
    return InvalidArgument("cuda forward: rope over {} tokens of a {}-token step", n, step_tokens_);
  }
  return ApplyRope(x, n, num_heads, head_dim, positions_, theta, stream_);
}

absl::Status CudaForwardOps::CopyDeviceFloats(float* dst, const float* src, int64_t count) {
  if (count <= 0) return absl::OkStatus();
  return CudaStatus("device copy", cudaMemcpyAsync(dst, src, static_cast<size_t>(count) * 4,
                                                   cudaMemcpyDeviceToDevice, stream_));
}

absl::Status CudaForwardOps::Attention(const float* q, int64_t n, int64_t start,
                                       const float* k_cache, const float* v_cache,
                                       int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                                       int64_t sliding_window, float* out) {
  return cuda::Attention(q, n, start, k_cache, v_cache, num_heads, num_kv_heads, head_dim,
                         sliding_window, out, stream_);
}

absl::Status CudaForwardOps::AddInPlace(float* x, const float* y, int64_t count) {
  return internal::LaunchStatus("AddInPlace", "AddInPlaceKernel",
                                LaunchAddInPlace(x, y, count, stream_));
}

absl::Status CudaForwardOps::Route(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                                   bool renormalize, int32_t* ids, float* weights,
                                   HostRouting* host) {
  if (n > max_tokens_ || k != top_k_) {
    return InvalidArgument("cuda forward: routing {} tokens to {} experts each ({} and {} here)", n,
                           k, max_tokens_, top_k_);
  }
  MOE_RETURN_IF_ERROR(TopKSoftmax(logits, n, num_experts, k, renormalize, ids, weights, stream_));
  const size_t count = static_cast<size_t>(n * k);
  MOE_RETURN_IF_ERROR(CudaStatus(
      "reading the routing",
      cudaMemcpyAsync(routed_ids_, ids, count * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_)));
  MOE_RETURN_IF_ERROR(CudaStatus("reading the routing weights",
                                 cudaMemcpyAsync(routed_weights_, weights, count * sizeof(float),
                                                 cudaMemcpyDeviceToHost, stream_)));
  MOE_RETURN_IF_ERROR(Synchronize());
  host->ids = routed_ids_;
  host->weights = routed_weights_;
  return absl::OkStatus();
}

absl::Status CudaForwardOps::BeginExperts(const float* xn, int64_t n, int64_t k,
                                          std::span<const int32_t> rows) {
  const int64_t count = n * k;
  if (n > max_tokens_ || k != top_k_ || static_cast<int64_t>(rows.size()) != count) {
    return InvalidArgument("cuda forward: expert grouping of {} rows for {} tokens x {}",
                           rows.size(), n, k);
  }
  MOE_RETURN_IF_ERROR(ReuseStaging(&grouping_upload_epoch_));
  // [rows grouped per expert | grouped position of each flat row], one upload.
  int32_t* position = staged_grouping_ + count;
  for (int64_t p = 0; p < count; ++p) {
    const int32_t flat = rows[p];
    if (flat < 0 || flat >= count) {
      return InvalidArgument("cuda forward: grouped row {} outside [0, {})", flat, count);
    }
    staged_grouping_[p] = flat;
    position[flat] = static_cast<int32_t>(p);
  }
  MOE_RETURN_IF_ERROR(
      CudaStatus("uploading the expert grouping",
                 cudaMemcpyAsync(grouping_, staged_grouping_, static_cast<size_t>(2 * count) * 4,
                                 cudaMemcpyHostToDevice, stream_)));
  grouping_upload_epoch_ = epoch_;
  layer_tokens_ = n;
  row_position_ = grouping_ + count;
  // Every expert's input rows at once, in grouped order: expert e's rows start at its first.
  MOE_RETURN_IF_ERROR(GatherRows(xn, count, hidden_, grouping_, k, expert_in_, stream_));
  if (host_pool_ == nullptr) return absl::OkStatus();
  // Host experts read the rows back after this point only, not after the GEMMs queued later.
  return CudaStatus("marking the gathered expert rows", cudaEventRecord(gathered_, stream_));
}

absl::Status CudaForwardOps::RunExpert(int32_t first, int32_t count, const FfnWeights& w,
                                       float* expert_out) {
  const int64_t offset = int64_t{first} * hidden_;
  return ExpertFfn(*blas_, expert_in_ + offset, count, w.gate, w.up, w.down, expert_out + offset,
                   gemm_scratch_, gemm_scratch_bytes_, stream_);
}

absl::Status CudaForwardOps::EnableHostExperts(cpu::ThreadPool* pool, int64_t intermediate_size) {
  if (pool == nullptr || intermediate_size < 1) {
    return InvalidArgument("cuda forward: host experts need a thread pool and an FFN size ({})",
                           intermediate_size);
  }
  if (host_pool_ != nullptr) return absl::OkStatus();
  // Input: one chunk of rows at a time. Output: every row of a layer, so that no row is rewritten
  // before its upload ran (the compute stream is synchronised by the next layer's Route).
  const uint64_t in_bytes = static_cast<uint64_t>(max_tokens_ * hidden_) * sizeof(float);
  const uint64_t out_bytes = in_bytes * static_cast<uint64_t>(top_k_);
  MOE_ASSIGN_OR_RETURN(
      host_rows_, PinnedHostBuffer::Allocate(AlignUp(in_bytes) + out_bytes, "host expert rows"));
  host_in_ = reinterpret_cast<float*>(host_rows_.data());
  host_out_ = reinterpret_cast<float*>(host_rows_.data() + AlignUp(in_bytes));
  host_scratch_.assign(static_cast<size_t>(2 * max_tokens_ * intermediate_size), 0.0f);
  MOE_RETURN_IF_ERROR(CudaStatus("creating the host experts' stream",
                                 cudaStreamCreateWithFlags(&host_stream_, cudaStreamNonBlocking)));
  MOE_RETURN_IF_ERROR(CudaStatus("creating the host experts' event",
                                 cudaEventCreateWithFlags(&gathered_, cudaEventDisableTiming)));
  host_pool_ = pool;
  return absl::OkStatus();
}

absl::Status CudaForwardOps::RunExpertOnHost(int32_t first, int32_t count, const FfnWeights& w,
                                             float* expert_out) {
  if (host_pool_ == nullptr) {
    return FailedPrecondition("cuda forward: host experts were not enabled (EnableHostExperts)");
  }
  if (first < 0 || count < 1 || int64_t{first} + count > layer_tokens_ * top_k_) {
    return InvalidArgument("cuda forward: host expert rows [{}, {}) outside the layer's {}", first,
                           int64_t{first} + count, layer_tokens_ * top_k_);
  }
  // The read-back waits on its own stream for the gather only, so the GPU keeps running the
  // experts queued before (resident ones) while the CPU computes this one.
  MOE_RETURN_IF_ERROR(CudaStatus("waiting for the gathered expert rows",
                                 cudaStreamWaitEvent(host_stream_, gathered_, 0)));
  for (int32_t done = 0; done < count;) {
    const auto rows = static_cast<int32_t>(std::min<int64_t>(count - done, max_tokens_));
    const int64_t offset = int64_t{first + done} * hidden_;
    const size_t bytes = static_cast<size_t>(rows * hidden_) * sizeof(float);
    MOE_RETURN_IF_ERROR(CudaStatus("reading a host expert's input rows",
                                   cudaMemcpyAsync(host_in_, expert_in_ + offset, bytes,
                                                   cudaMemcpyDeviceToHost, host_stream_)));
    MOE_RETURN_IF_ERROR(
        CudaStatus("reading a host expert's input rows", cudaStreamSynchronize(host_stream_)));
    float* out = host_out_ + offset;
    cpu::ExpertFfn(host_in_, rows, w.gate, w.up, w.down, out, host_scratch_.data(), host_pool_);
    // On the compute stream: CombineExperts, queued later, reads the rows after they landed.
    MOE_RETURN_IF_ERROR(CudaStatus(
        "writing a host expert's output rows",
        cudaMemcpyAsync(expert_out + offset, out, bytes, cudaMemcpyHostToDevice, stream_)));
    done += rows;
  }
  return absl::OkStatus();
}

absl::Status CudaForwardOps::CombineExperts(const float* expert_out, const float* weights,
                                            float* x) {
  return CombineExpertOutputs(expert_out, row_position_, weights, layer_tokens_, top_k_, hidden_, x,
                              stream_);
}

absl::Status CudaForwardOps::SharedExpert(const float* xn, int64_t n, const FfnWeights& w,
                                          const WeightView& gate, float* shared_out,
                                          float* gate_out, float* x) {
  MOE_RETURN_IF_ERROR(ExpertFfn(*blas_, xn, n, w.gate, w.up, w.down, shared_out, gemm_scratch_,
                                gemm_scratch_bytes_, stream_));
  MOE_RETURN_IF_ERROR(Linear(xn, n, gate, gate_out));
  return internal::LaunchStatus(
      "SharedExpert", "SigmoidGatedAddKernel",
      LaunchSigmoidGatedAdd(shared_out, gate_out, n, hidden_, x, stream_));
}

absl::StatusOr<const float*> CudaForwardOps::HostView(const float* src, int64_t count) {
  if (count < 0 || count > max_tokens_ * hidden_) {
    return InvalidArgument("cuda forward: a host view of {} floats, at most {}", count,
                           max_tokens_ * hidden_);
  }
  MOE_RETURN_IF_ERROR(CudaStatus(
      "reading hidden states", cudaMemcpyAsync(staged_hidden_, src, static_cast<size_t>(count) * 4,
                                               cudaMemcpyDeviceToHost, stream_)));
  MOE_RETURN_IF_ERROR(Synchronize());
  return staged_hidden_;
}

absl::Status CudaForwardOps::CopyToHost(float* host, const float* src, int64_t count) {
  if (count <= 0) return Synchronize();
  MOE_RETURN_IF_ERROR(CudaStatus(
      "reading logits",
      cudaMemcpyAsync(host, src, static_cast<size_t>(count) * 4, cudaMemcpyDeviceToHost, stream_)));
  return Synchronize();
}

// ---- pinned expert bytes ---------------------------------------------------------------------

absl::Status PinnedCheckpoint::Pin(CudaDevice& device, const Checkpoint& checkpoint) {
  device_ = &device;
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  for (const auto& file : checkpoint.files()) {
    // The file's data section.
    const std::byte* file_begin = nullptr;
    const std::byte* file_end = nullptr;
    for (const TensorInfo& t : file->tensors()) {
      const auto data = file->Data(t);
      if (file_begin == nullptr || data.data() < file_begin) file_begin = data.data();
      if (file_end == nullptr || data.data() + data.size() > file_end) {
        file_end = data.data() + data.size();
      }
    }
    if (file_begin == nullptr) continue;
    // The whole data section, page-aligned outwards (still inside the file's mapping, which is
    // whole pages): a copy whose source straddles the edge of a registered range fails with
    // cudaErrorInvalidValue, so no tensor may be half inside one. Non-expert tensors are pinned
    // too (they are copied once, at load).
    const auto begin = reinterpret_cast<uintptr_t>(file_begin) / page * page;
    const auto end = (reinterpret_cast<uintptr_t>(file_end) + page - 1) / page * page;
    const auto* start = reinterpret_cast<const std::byte*>(begin);
    const uint64_t bytes = end - begin;
    PinRegistry& pins = Pins();
    std::lock_guard lock(pins.mu);
    auto it = pins.count.find(start);
    if (it == pins.count.end()) {
      const absl::Status st = device.RegisterHost(start, bytes);
      if (!st.ok()) {
        return absl::Status(st.code(),
                            fmt::format("{}: {}", file->path(), std::string(st.message())));
      }
      it = pins.count.emplace(start, 0).first;
    }
    ++it->second;
    ranges_.push_back(start);
    bytes_ += bytes;
  }
  return absl::OkStatus();
}

PinnedCheckpoint::~PinnedCheckpoint() {
  if (ranges_.empty()) return;
  PinRegistry& pins = Pins();
  std::lock_guard lock(pins.mu);
  for (const std::byte* start : ranges_) {
    auto it = pins.count.find(start);
    if (it == pins.count.end()) continue;
    if (--it->second == 0) {
      device_->UnregisterHost(start).IgnoreError();
      pins.count.erase(it);
    }
  }
}

}  // namespace moe::cuda
