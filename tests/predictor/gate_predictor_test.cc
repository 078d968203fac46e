// The next-layer gate predictor: coming layers' routers applied to the latest hidden state,
// checked against a direct computation, and its fallback for layers the token already passed.
#include "predictor/gate_predictor.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace moe {
namespace {

constexpr int32_t kLayers = 3, kExperts = 4, kHidden = 8, kTopK = 2;
constexpr float kEps = 1e-5f;

struct GateFixture {
  std::vector<float> norms, routers;  // [L, H], [L, E, H]
  std::vector<GateLayerWeights> layers;

  GateFixture() : norms(kLayers * kHidden), routers(kLayers * kExperts * kHidden) {
    for (int i = 0; i < kLayers * kHidden; ++i) norms[i] = 0.5f + 0.1f * float(i % 7);
    for (int i = 0; i < kLayers * kExperts * kHidden; ++i) {
      routers[i] = std::sin(0.7f * float(i) + 0.3f);
    }
    for (int l = 0; l < kLayers; ++l) {
      layers.push_back(GateLayerWeights{
          WeightView{reinterpret_cast<const std::byte*>(norms.data() + l * kHidden), DType::kF32, 1,
                     kHidden},
          WeightView{reinterpret_cast<const std::byte*>(routers.data() + l * kExperts * kHidden),
                     DType::kF32, kExperts, kHidden}});
    }
  }

  // min(1, top_k * softmax(router_l . rmsnorm(h) * norm_l)), in double.
  std::vector<float> Expected(int layer, const std::vector<float>& h) const {
    double ms = 0;
    for (float v : h) ms += double(v) * v;
    const double inv = 1.0 / std::sqrt(ms / kHidden + kEps);
    std::vector<double> logits(kExperts);
    double max = -1e300;
    for (int e = 0; e < kExperts; ++e) {
      double dot = 0;
      for (int i = 0; i < kHidden; ++i) {
        dot +=
            h[i] * inv * norms[layer * kHidden + i] * routers[(layer * kExperts + e) * kHidden + i];
      }
      logits[e] = dot;
      max = std::max(max, dot);
    }
    double sum = 0;
    for (double& v : logits) sum += (v = std::exp(v - max));
    std::vector<float> out;
    for (double v : logits) out.push_back(float(std::min(1.0, kTopK * v / sum)));
    return out;
  }
};

PredictorOptions Options() {
  PredictorOptions o;
  o.space = ExpertSpace{kLayers, kExperts};
  o.top_k = kTopK;
  return o;
}

TEST(GatePredictor, AppliesTheTargetLayersRouterToTheLatestHiddenState) {
  GateFixture f;
  GatePredictor p(Options(), f.layers, kHidden, kEps);
  std::vector<float> h(kHidden);
  for (int i = 0; i < kHidden; ++i) h[i] = float(i) - 3.5f;
  p.BeginSequence(7);
  const uint16_t experts[] = {1, 3};
  p.Observe(7, 0, experts);
  p.ObserveHidden(7, 0, h);
  for (int target : {1, 2}) {
    std::vector<float> probs(kExperts);
    p.Predict(7, target, probs);
    const std::vector<float> want = f.Expected(target, h);
    for (int e = 0; e < kExperts; ++e) EXPECT_NEAR(probs[e], want[e], 1e-5) << target << " " << e;
  }
}

TEST(GatePredictor, LayersAlreadyPassedAndNewTokensFallBackToFrequency) {
  GateFixture f;
  GatePredictor p(Options(), f.layers, kHidden, kEps);
  FrequencyPredictor reference(Options());
  std::vector<float> h(kHidden, 1.0f);
  h[2] = 5.0f;
  const uint16_t a[] = {0, 1}, b[] = {2, 3};
  p.BeginSequence(1);
  for (int l = 0; l < kLayers; ++l) {
    p.Observe(1, l, l % 2 ? a : b);
    reference.Observe(1, l, l % 2 ? a : b);
    p.ObserveHidden(1, l, h);
  }
  std::vector<float> got(kExperts), want(kExperts);
  // The token passed layer 1: its next visit is the next token's, which has no hidden state.
  p.Predict(1, 1, got);
  reference.Predict(1, 1, want);
  EXPECT_EQ(got, want);
  // The next token starts (layer 0 observed, no hidden yet): layer 2 must not use the previous
  // token's state from layer 2.
  p.Observe(1, 0, a);
  reference.Observe(1, 0, a);
  p.Predict(1, 2, got);
  reference.Predict(1, 2, want);
  EXPECT_EQ(got, want);
  // Once the new token's hidden state arrives, the gate answers again.
  p.ObserveHidden(1, 0, h);
  p.Predict(1, 2, got);
  const std::vector<float> gate = f.Expected(2, h);
  for (int e = 0; e < kExperts; ++e) EXPECT_NEAR(got[e], gate[e], 1e-5);
  // Unknown sequences get the fallback too.
  p.Predict(99, 1, got);
  reference.Predict(99, 1, want);
  EXPECT_EQ(got, want);
}

TEST(GatePredictor, SequencesKeepTheirOwnHiddenStates) {
  GateFixture f;
  GatePredictor p(Options(), f.layers, kHidden, kEps);
  std::vector<float> h1(kHidden, 0.5f), h2(kHidden);
  for (int i = 0; i < kHidden; ++i) h2[i] = float(i * i) - 10.0f;
  const uint16_t a[] = {0, 1};
  for (int64_t seq : {1, 2}) {
    p.BeginSequence(seq);
    p.Observe(seq, 0, a);
  }
  p.ObserveHidden(1, 0, h1);
  p.ObserveHidden(2, 0, h2);
  std::vector<float> got(kExperts);
  p.Predict(1, 1, got);
  const std::vector<float> w1 = f.Expected(1, h1);
  for (int e = 0; e < kExperts; ++e) EXPECT_NEAR(got[e], w1[e], 1e-5);
  p.Predict(2, 1, got);
  const std::vector<float> w2 = f.Expected(1, h2);
  for (int e = 0; e < kExperts; ++e) EXPECT_NEAR(got[e], w2[e], 1e-5);
  p.EndSequence(2);
  std::vector<float> fallback(kExperts);
  p.Predict(2, 1, got);
  FrequencyPredictor reference(Options());
  reference.Observe(1, 0, a);
  reference.Observe(2, 0, a);
  reference.Predict(2, 1, fallback);
  EXPECT_EQ(got, fallback);
}

}  // namespace
}  // namespace moe
