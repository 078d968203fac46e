// "gate": the next-layer gate predictor of the live engine (needs the model's weights, so it is
// made by the engine, not by MakePredictor).
//
// It applies the routers of coming layers to the token's latest residual stream. For a target
// layer t after the latest layer l the token has passed (ObserveHidden(seq, l, h)):
//   p = softmax(router_t . RmsNorm(h, post_attention_norm_t))
// which is exactly layer t's router except that its input lacks the updates of layers l+1..t
// (attention and experts); the residual stream changes slowly, so for t = l + 1 this is a close
// guess at no cost (E x H multiply-adds). Predict returns min(1, top_k x p_e): a score in [0, 1]
// that ranks experts as the router will; it is not calibrated.
// A target the token has already passed (the next token's layers) has no hidden state yet: it
// is answered by a built-in "frequency" predictor fed by Observe.
//
// Predictions only schedule work; the engine's routing is always the real router's.
// No learned state: Save/Load are Unimplemented; Learn seeds the frequency fallback.
// Thread-safety: none (one predictor per engine). Predict reuses internal scratch.
#pragma once

#include <vector>

#include "absl/container/flat_hash_map.h"
#include "kernels/weight_view.h"
#include "predictor/frequency_predictor.h"
#include "predictor/predictor.h"

namespace moe {

struct GateLayerWeights {
  WeightView norm;    // post_attention_layernorm, [1, H]
  WeightView router;  // [E, H]
};

class GatePredictor final : public Predictor {
 public:
  // One GateLayerWeights per MoE layer (options.space.num_layers of them, routers with
  // num_experts rows and hidden_size columns: MOE_CHECK). The views must outlive the predictor.
  GatePredictor(const PredictorOptions& options, std::vector<GateLayerWeights> layers,
                int64_t hidden_size, float rms_norm_eps);

  std::string_view name() const override { return "gate"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override;
  void EndSequence(int64_t seq) override;
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override;
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override;
  absl::Status Learn(const RoutingTrace& trace) override { return fallback_.Learn(trace); }
  bool uses_hidden_states() const override { return true; }
  void ObserveHidden(int64_t seq, int32_t layer, std::span<const float> hidden) override;

 private:
  struct SequenceState {
    int32_t hidden_layer = -1;  // layer of `hidden`; -1: none for the current token
    std::vector<float> hidden;  // [H]
  };

  PredictorOptions options_;
  std::vector<GateLayerWeights> layers_;
  int64_t hidden_size_;
  float eps_;
  FrequencyPredictor fallback_;
  absl::flat_hash_map<int64_t, SequenceState> sequences_;
  mutable std::vector<float> normed_, logits_;
};

}  // namespace moe
