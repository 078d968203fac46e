// The "learned" predictor: its network against a reference computed here in double, the
// sequence protocol (table for the current token's later layers, frequency elsewhere), the file
// round trip and its errors, and (where the trained file exists) the committed predictor against
// the values its training script computed.
#include "predictor/learned_predictor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "nlohmann/json.hpp"
#include "runtime/safetensors.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

PredictorOptions Options(int32_t layers, int32_t experts, int32_t top_k) {
  PredictorOptions o;
  o.space = ExpertSpace{layers, experts};
  o.top_k = top_k;
  return o;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("moe_learned_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

// A deterministic network for 3 layers x 4 experts, H = 5, U = 3, source layer 0.
LearnedPredictorWeights SmallWeights(int32_t layers = 3, int32_t experts = 4) {
  LearnedPredictorWeights w;
  w.input_size = 5;
  w.hidden_units = 3;
  const int64_t outputs = int64_t{layers} * experts;
  for (int64_t i = 0; i < w.hidden_units * w.input_size; ++i)
    w.w1.push_back(0.1f * float(i % 7) - 0.3f);
  for (int64_t i = 0; i < w.hidden_units; ++i) w.b1.push_back(0.05f * float(i));
  for (int64_t i = 0; i < outputs * w.hidden_units; ++i) w.w2.push_back(0.2f * float(i % 5) - 0.4f);
  for (int64_t i = 0; i < outputs; ++i) w.b2.push_back(0.01f * float(i) - 0.05f);
  return w;
}

// The documented network, in double.
std::vector<double> Reference(const LearnedPredictorWeights& w, const std::vector<float>& x) {
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double inv = 1.0 / std::sqrt(ss / double(x.size()) + 1e-6);
  std::vector<double> h(w.hidden_units);
  for (int64_t u = 0; u < w.hidden_units; ++u) {
    double acc = w.b1[u];
    for (int64_t i = 0; i < w.input_size; ++i)
      acc += double(w.w1[u * w.input_size + i]) * x[i] * inv;
    h[u] = std::max(acc, 0.0);
  }
  std::vector<double> p(w.b2.size());
  for (size_t o = 0; o < p.size(); ++o) {
    double acc = w.b2[o];
    for (int64_t u = 0; u < w.hidden_units; ++u) acc += double(w.w2[o * w.hidden_units + u]) * h[u];
    p[o] = 1.0 / (1.0 + std::exp(-acc));
  }
  return p;
}

TEST(LearnedPredictorTest, NetworkMatchesTheDocumentedFormula) {
  LearnedPredictor p(Options(3, 4, 2));
  const LearnedPredictorWeights w = SmallWeights();
  ASSERT_TRUE(p.SetWeights(w).ok());
  for (const std::vector<float>& x :
       {std::vector<float>{1, -2, 3, 0.5f, -0.25f}, std::vector<float>{100, 0, 0, 0, 1e-3f},
        std::vector<float>{0, 0, 0, 0, 0}}) {
    std::vector<float> probs(12);
    p.Evaluate(x, probs);
    const std::vector<double> ref = Reference(w, x);
    for (size_t i = 0; i < probs.size(); ++i) EXPECT_NEAR(probs[i], ref[i], 1e-6) << i;
  }
}

TEST(LearnedPredictorTest, PredictsLaterLayersOfTheCurrentTokenAndFallsBackElsewhere) {
  LearnedPredictor p(Options(3, 4, 2));
  ASSERT_TRUE(p.SetWeights(SmallWeights()).ok());
  const std::vector<float> x = {1, -2, 3, 0.5f, -0.25f};
  std::vector<float> table(12), probs(4), freq(4);
  p.Evaluate(x, table);

  p.BeginSequence(7);
  const uint16_t e01[] = {0, 1};
  p.Observe(7, 0, e01);
  p.Predict(7, 1, freq);  // no hidden state yet: the frequency fallback
  p.ObserveHidden(7, 0, x);
  p.Predict(7, 1, probs);
  EXPECT_THAT(probs, ::testing::ElementsAreArray(table.begin() + 4, table.begin() + 8));
  p.Predict(7, 2, probs);
  EXPECT_THAT(probs, ::testing::ElementsAreArray(table.begin() + 8, table.end()));
  EXPECT_NE(std::vector<float>(table.begin() + 4, table.begin() + 8), freq);
  // Layer 0 is passed: its prediction (next token's) comes from frequencies.
  p.Predict(7, 0, probs);
  EXPECT_NE(std::vector<float>(probs), std::vector<float>(table.begin(), table.begin() + 4));
  // A hidden state of another layer does not replace the table.
  p.Observe(7, 1, e01);
  p.ObserveHidden(7, 1, std::vector<float>{9, 9, 9, 9, 9});
  p.Predict(7, 2, probs);
  EXPECT_THAT(probs, ::testing::ElementsAreArray(table.begin() + 8, table.end()));
  // The next token starts: until its source layer is observed, frequencies answer.
  p.Observe(7, 0, e01);
  p.Predict(7, 2, probs);
  EXPECT_NE(std::vector<float>(probs), std::vector<float>(table.begin() + 8, table.end()));
  // Other sequences are unaffected and unknown ones fall back.
  p.Predict(99, 2, probs);
  for (float v : probs) EXPECT_TRUE(v >= 0 && v <= 1);
}

TEST(LearnedPredictorTest, WithoutWeightsOrWithTheWrongHiddenSizeItUsesFrequencies) {
  LearnedPredictor p(Options(3, 4, 2));
  EXPECT_FALSE(p.has_weights());
  const uint16_t e[] = {2, 3};
  p.Observe(1, 0, e);
  p.ObserveHidden(1, 0, std::vector<float>(5, 1.0f));  // no weights: ignored
  std::vector<float> probs(4);
  p.Predict(1, 1, probs);
  ASSERT_TRUE(p.SetWeights(SmallWeights()).ok());
  p.Observe(1, 0, e);
  p.ObserveHidden(1, 0, std::vector<float>(6, 1.0f));  // 6 values, trained on 5
  EXPECT_EQ(p.ignored_hidden_states(), 1u);
  std::vector<float> after(4);
  p.Predict(1, 1, after);
  for (float v : after) EXPECT_TRUE(v >= 0 && v <= 1);
}

TEST(LearnedPredictorTest, SetWeightsRejectsInconsistentShapesAndNonFiniteValues) {
  LearnedPredictor p(Options(3, 4, 2));
  LearnedPredictorWeights w = SmallWeights();
  w.b2.pop_back();
  absl::Status st = p.SetWeights(w);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("b2"));
  w = SmallWeights();
  w.w1[3] = std::nanf("");
  EXPECT_EQ(p.SetWeights(w).code(), absl::StatusCode::kInvalidArgument);
  w = SmallWeights();
  w.source_layer = 3;
  EXPECT_THAT(std::string(p.SetWeights(w).message()), HasSubstr("source layer 3"));
  EXPECT_FALSE(p.has_weights());
}

TEST(LearnedPredictorTest, SaveLoadRoundTripsAndLoadNamesMismatches) {
  const std::string path = TempPath("roundtrip.safetensors");
  LearnedPredictor a(Options(3, 4, 2));
  EXPECT_EQ(a.Save(path).code(), absl::StatusCode::kFailedPrecondition);  // nothing to save
  LearnedPredictorWeights w = SmallWeights();
  w.source_layer = 1;
  ASSERT_TRUE(a.SetWeights(w).ok());
  ASSERT_TRUE(a.Save(path).ok());
  LearnedPredictor b(Options(3, 4, 2));
  ASSERT_TRUE(b.Load(path).ok());
  EXPECT_EQ(b.source_layer(), 1);
  EXPECT_EQ(b.input_size(), 5);
  const std::vector<float> x = {0.3f, 0.1f, -0.7f, 2, 1};
  std::vector<float> pa(12), pb(12);
  a.Evaluate(x, pa);
  b.Evaluate(x, pb);
  EXPECT_EQ(pa, pb);

  LearnedPredictor other_layers(Options(4, 4, 2));
  absl::Status st = other_layers.Load(path);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr(path));
  // A transition file is not a learned-predictor file.
  std::unique_ptr<Predictor> transition = MakePredictor("transition", Options(3, 4, 2)).value();
  const std::string tpath = TempPath("transition.safetensors");
  ASSERT_TRUE(transition->Save(tpath).ok());
  EXPECT_EQ(b.Load(tpath).code(), absl::StatusCode::kInvalidArgument);
  // Truncated: a clear error, and the loaded weights stay.
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size / 2);
  st = b.Load(path);
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr(path));
  EXPECT_TRUE(b.has_weights());
  EXPECT_EQ(b.Load(TempPath("missing")).code(), absl::StatusCode::kNotFound);
  std::filesystem::remove(path);
  std::filesystem::remove(tpath);
}

TEST(LearnedPredictorTest, LoadRejectsAMissingSourceLayerAndMisshapenTensors) {
  const PredictorOptions options = Options(3, 4, 2);
  const LearnedPredictorWeights w = SmallWeights();
  auto write = [&](bool with_source, std::vector<int64_t> w2_shape) {
    SafetensorsWriter writer;
    SetPredictorMetadata("learned", options, writer);
    if (with_source) writer.SetMetadata("source_layer", "0");
    EXPECT_TRUE(AddF32Tensor(writer, "w1", {3, 5}, w.w1).ok());
    EXPECT_TRUE(AddF32Tensor(writer, "b1", {3}, w.b1).ok());
    std::vector<float> w2(static_cast<size_t>(w2_shape[0] * w2_shape[1]), 0.1f);
    EXPECT_TRUE(AddF32Tensor(writer, "w2", w2_shape, w2).ok());
    EXPECT_TRUE(AddF32Tensor(writer, "b2", {12}, w.b2).ok());
    const std::string path = TempPath("handmade.safetensors");
    EXPECT_TRUE(writer.Write(path).ok());
    return path;
  };
  LearnedPredictor p(options);
  std::string path = write(false, {12, 3});
  EXPECT_THAT(std::string(p.Load(path).message()), HasSubstr("source_layer"));
  path = write(true, {12, 4});
  absl::Status st = p.Load(path);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("w2"));
  path = write(true, {12, 3});
  EXPECT_TRUE(p.Load(path).ok());
  std::filesystem::remove(path);
}

// The committed predictor of the demo model against the probabilities its training script
// computed in float64 from the same float32 weights.
TEST(LearnedPredictorTest, CommittedPredictorMatchesItsTrainingScript) {
  const std::string model =
      std::string(MOE_SOURCE_DIR) + "/models/pydoc-moe/learned_predictor.safetensors";
  const std::string ref_path =
      std::string(MOE_SOURCE_DIR) + "/tests/data/learned_predictor_reference.json";
  if (!std::filesystem::exists(model) || !std::filesystem::exists(ref_path)) {
    GTEST_SKIP() << "no trained predictor in this checkout";
  }
  LearnedPredictor p(Options(8, 8, 2));
  ASSERT_TRUE(p.Load(model).ok());
  std::ifstream in(ref_path);
  const nlohmann::json ref = nlohmann::json::parse(in);
  const nlohmann::json& cases = ref.is_array() ? ref : ref.at("cases");
  ASSERT_FALSE(cases.empty());
  for (const nlohmann::json& c : cases) {
    const std::vector<float> x = c.at("input").get<std::vector<float>>();
    const std::vector<double> expected = c.at("probabilities").get<std::vector<double>>();
    std::vector<float> probs(64);
    p.Evaluate(x, probs);
    ASSERT_EQ(expected.size(), probs.size());
    for (size_t i = 0; i < probs.size(); ++i) EXPECT_NEAR(probs[i], expected[i], 1e-5) << i;
  }
}

}  // namespace
}  // namespace moe
