// The CPU ops: moe::cpu kernels on host memory, called exactly as the engine called them before
// the ForwardOps seam (same kernels, arguments, order and scratch), so results are bit for bit
// unchanged on the CPU and fake devices.
#include "runtime/forward_ops.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace moe {
namespace {

class CpuForwardOps final : public ForwardOps {
 public:
  CpuForwardOps(cpu::ThreadPool* pool, int64_t hidden, const CpuForwardScratch& scratch)
      : pool_(pool), hidden_(hidden), s_(scratch) {}

  bool host_memory() const override { return true; }

  absl::Status BeginStep(std::span<const int32_t> ids,
                         std::span<const int64_t> positions) override {
    ids_ = ids;
    positions_ = positions;
    return absl::OkStatus();
  }

  absl::Status Embed(const WeightView& table, float* x) override {
    cpu::EmbeddingGather(table, ids_.data(), static_cast<int64_t>(ids_.size()), x);
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight, float eps,
                       float* out) override {
    cpu::RmsNorm(x, n, dim, weight, eps, out);
    return absl::OkStatus();
  }

  absl::Status Linear(const float* x, int64_t n, const WeightView& w, float* y) override {
    cpu::Linear(x, n, w, y, pool_);
    return absl::OkStatus();
  }

  absl::Status AddBias(float* y, int64_t n, const WeightView& bias) override {
    cpu::AddBias(y, n, bias);
    return absl::OkStatus();
  }

  absl::Status Rope(float* x, int64_t n, int64_t num_heads, int64_t head_dim,
                    double theta) override {
    cpu::ApplyRope(x, n, num_heads, head_dim, positions_.data(), theta);
    return absl::OkStatus();
  }

  absl::Status CopyDeviceFloats(float* dst, const float* src, int64_t count) override {
    std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
    return absl::OkStatus();
  }

  absl::Status Attention(const float* q, int64_t n, int64_t start, const float* k_cache,
                         const float* v_cache, int64_t num_heads, int64_t num_kv_heads,
                         int64_t head_dim, int64_t sliding_window, float* out) override {
    cpu::Attention(q, n, start, k_cache, v_cache, num_heads, num_kv_heads, head_dim, sliding_window,
                   out, s_.attn_scratch, pool_);
    return absl::OkStatus();
  }

  absl::Status AddInPlace(float* x, const float* y, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
    return absl::OkStatus();
  }

  absl::Status Route(const float* logits, int64_t n, int64_t num_experts, int64_t k,
                     bool renormalize, int32_t* ids, float* weights, HostRouting* host) override {
    cpu::TopKSoftmax(logits, n, num_experts, k, renormalize, ids, weights);
    host->ids = ids;
    host->weights = weights;
    return absl::OkStatus();
  }

  absl::Status BeginExperts(const float* xn, int64_t n, int64_t k,
                            std::span<const int32_t> rows) override {
    xn_ = xn;
    n_ = n;
    k_ = k;
    rows_ = rows;
    return absl::OkStatus();
  }

  // Gathers the expert's rows, runs its FFN, and scatters the results to their flat (token,
  // rank) rows of expert_out.
  absl::Status RunExpert(int32_t first, int32_t count, const FfnWeights& w,
                         float* expert_out) override {
    const int64_t H = hidden_;
    for (int32_t r = 0; r < count; ++r) {
      std::memcpy(s_.xe + int64_t{r} * H, xn_ + int64_t{rows_[first + r] / k_} * H,
                  H * sizeof(float));
    }
    cpu::ExpertFfn(s_.xe, count, w.gate, w.up, w.down, s_.ye, s_.ffn_scratch, pool_);
    for (int32_t r = 0; r < count; ++r) {
      std::memcpy(expert_out + int64_t{rows_[first + r]} * H, s_.ye + int64_t{r} * H,
                  H * sizeof(float));
    }
    return absl::OkStatus();
  }

  absl::Status CombineExperts(const float* expert_out, const float* weights, float* x) override {
    const int64_t H = hidden_, K = k_;
    for (int64_t t = 0; t < n_; ++t) {
      for (int64_t j = 0; j < K; ++j) {
        cpu::ScaledAdd(expert_out + (t * K + j) * H, &weights[t * K + j], 1, H, x + t * H);
      }
    }
    return absl::OkStatus();
  }

  absl::Status SharedExpert(const float* xn, int64_t n, const FfnWeights& w, const WeightView& gate,
                            float* shared_out, float* gate_out, float* x) override {
    cpu::ExpertFfn(xn, n, w.gate, w.up, w.down, shared_out, s_.ffn_scratch, pool_);
    cpu::Linear(xn, n, gate, gate_out, pool_);
    for (int64_t t = 0; t < n; ++t) gate_out[t] = 1.0f / (1.0f + std::exp(-gate_out[t]));
    cpu::ScaledAdd(shared_out, gate_out, n, hidden_, x);
    return absl::OkStatus();
  }

  absl::StatusOr<const float*> HostView(const float* src, int64_t /*count*/) override {
    return src;
  }

  absl::Status CopyToHost(float* host, const float* src, int64_t count) override {
    std::memcpy(host, src, static_cast<size_t>(count) * sizeof(float));
    return absl::OkStatus();
  }

 private:
  cpu::ThreadPool* const pool_;
  const int64_t hidden_;
  const CpuForwardScratch s_;
  std::span<const int32_t> ids_;
  std::span<const int64_t> positions_;
  const float* xn_ = nullptr;
  int64_t n_ = 0, k_ = 0;
  std::span<const int32_t> rows_;
};

}  // namespace

std::unique_ptr<ForwardOps> MakeCpuForwardOps(cpu::ThreadPool* pool, int64_t hidden,
                                              const CpuForwardScratch& scratch) {
  return std::make_unique<CpuForwardOps>(pool, hidden, scratch);
}

}  // namespace moe
