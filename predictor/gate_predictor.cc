#include "predictor/gate_predictor.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "runtime/status.h"

namespace moe {

GatePredictor::GatePredictor(const PredictorOptions& options, std::vector<GateLayerWeights> layers,
                             int64_t hidden_size, float rms_norm_eps)
    : options_(options),
      layers_(std::move(layers)),
      hidden_size_(hidden_size),
      eps_(rms_norm_eps),
      fallback_(options),
      normed_(static_cast<size_t>(hidden_size)),
      logits_(static_cast<size_t>(options.space.num_experts)) {
  MOE_CHECK(static_cast<int32_t>(layers_.size()) == options.space.num_layers);
  for (const GateLayerWeights& l : layers_) {
    MOE_CHECK(l.router.rows == options.space.num_experts && l.router.cols == hidden_size);
    MOE_CHECK(l.norm.num_elements() == hidden_size);
  }
}

void GatePredictor::BeginSequence(int64_t seq) { sequences_[seq].hidden_layer = -1; }

void GatePredictor::EndSequence(int64_t seq) { sequences_.erase(seq); }

void GatePredictor::Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
  fallback_.Observe(seq, layer, experts);
  // A new token starts at a layer not after the last one with a hidden state: that state
  // belongs to the previous token and must not answer for this token's layers.
  auto it = sequences_.find(seq);
  if (it != sequences_.end() && layer <= it->second.hidden_layer) it->second.hidden_layer = -1;
}

void GatePredictor::ObserveHidden(int64_t seq, int32_t layer, std::span<const float> hidden) {
  MOE_CHECK(static_cast<int64_t>(hidden.size()) == hidden_size_);
  SequenceState& s = sequences_[seq];
  s.hidden.assign(hidden.begin(), hidden.end());
  s.hidden_layer = layer;
}

void GatePredictor::Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end() || it->second.hidden_layer < 0 ||
      target_layer <= it->second.hidden_layer) {
    fallback_.Predict(seq, target_layer, probs);
    return;
  }
  const GateLayerWeights& w = layers_[target_layer];
  cpu::RmsNorm(it->second.hidden.data(), 1, hidden_size_, w.norm, eps_, normed_.data());
  cpu::Linear(normed_.data(), 1, w.router, logits_.data(), nullptr);
  const float max = *std::max_element(logits_.begin(), logits_.end());
  double sum = 0;
  for (float& v : logits_) sum += (v = std::exp(v - max));
  const double scale = static_cast<double>(options_.top_k) / sum;
  for (size_t e = 0; e < probs.size(); ++e) {
    probs[e] = static_cast<float>(std::min(1.0, logits_[e] * scale));
  }
}

}  // namespace moe
