// Tests of EvaluatePredictor on tiny hand-checked cases.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "predictor/predictor.h"
#include "predictor/predictor_eval.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// Predicts fixed probabilities and records the protocol it sees.
class FixedPredictor final : public Predictor {
 public:
  FixedPredictor(const PredictorOptions& options, std::vector<float> probs)
      : options_(options), probs_(std::move(probs)) {}
  std::string_view name() const override { return "fixed"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override { log_.push_back("begin " + std::to_string(seq)); }
  void EndSequence(int64_t seq) override { log_.push_back("end " + std::to_string(seq)); }
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override {
    log_.push_back("observe " + std::to_string(seq) + " " + std::to_string(layer));
  }
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override {
    log_.push_back("predict " + std::to_string(seq) + " " + std::to_string(target_layer));
    std::copy(probs_.begin(), probs_.end(), probs.begin());
  }
  const std::vector<std::string>& log() const { return log_; }

 private:
  PredictorOptions options_;
  std::vector<float> probs_;
  mutable std::vector<std::string> log_;
};

// 2 layers, 4 experts, top-1; two sequences: tokens (layer 0, layer 1) = (1, 0), (3, 2) and
// (0, 1).
RoutingTrace TinyTrace() {
  RoutingTrace trace;
  trace.header.num_layers = 2;
  trace.header.num_experts = 4;
  trace.header.top_k = 1;
  trace.experts = {1, 0, 3, 2, 0, 1};
  trace.phases = {Phase::kPrefill, Phase::kPrefill, Phase::kPrefill};
  trace.sequences = {TraceSequence{0, 2, "a"}, TraceSequence{2, 1, "b"}};
  return trace;
}

PredictorOptions TinyOptions() {
  PredictorOptions options;
  options.space = ExpertSpace{2, 4};
  options.top_k = 1;
  return options;
}

TEST(PredictorEvalTest, RecallAndPrecisionOnHandCheckedCase) {
  // Top-2 is always {0, 1}. Layer-1 truths: 0 (hit), 2 (miss), 1 (hit).
  FixedPredictor predictor(TinyOptions(), {0.9f, 0.8f, 0.1f, 0.0f});
  PredictorEvalOptions options;
  options.budget = 2;
  options.max_distance = 2;
  absl::StatusOr<std::vector<DistanceScore>> scores =
      EvaluatePredictor(predictor, TinyTrace(), options);
  ASSERT_TRUE(scores.ok()) << scores.status();
  ASSERT_EQ(scores->size(), 2u);
  const DistanceScore& d1 = (*scores)[0];
  EXPECT_EQ(d1.distance, 1);
  EXPECT_EQ(d1.samples, 3);
  EXPECT_DOUBLE_EQ(d1.recall, 2.0 / 3.0);           // 2 hits of 3 x top-1
  EXPECT_DOUBLE_EQ(d1.precision, 2.0 / (3.0 * 2));  // 2 hits of 3 x budget 2
  ASSERT_EQ(d1.recall_per_layer.size(), 2u);
  EXPECT_DOUBLE_EQ(d1.recall_per_layer[0], 0.0);  // no samples target layer 0
  EXPECT_DOUBLE_EQ(d1.recall_per_layer[1], 2.0 / 3.0);
  // Two layers leave nothing two layers ahead.
  const DistanceScore& d2 = (*scores)[1];
  EXPECT_EQ(d2.distance, 2);
  EXPECT_EQ(d2.samples, 0);
  EXPECT_EQ(d2.recall, 0.0);

  // The protocol: observe layer l, then predict l + d, per token, per sequence.
  const std::vector<std::string> expected = {
      "begin 0",     "observe 0 0", "predict 0 1", "observe 0 1", "observe 0 0",
      "predict 0 1", "observe 0 1", "end 0",       "begin 1",     "observe 1 0",
      "predict 1 1", "observe 1 1", "end 1"};
  EXPECT_EQ(predictor.log(), expected);
}

TEST(PredictorEvalTest, BrierScoreAndCalibrationErrorOnHandCheckedCase) {
  // p = (0.9, 0.8, 0.1, 0) against the layer-1 truths 0, 2, 1 (12 (token, expert) pairs).
  FixedPredictor predictor(TinyOptions(), {0.9f, 0.8f, 0.1f, 0.0f});
  PredictorEvalOptions options;
  options.budget = 2;
  absl::StatusOr<std::vector<DistanceScore>> scores =
      EvaluatePredictor(predictor, TinyTrace(), options);
  ASSERT_TRUE(scores.ok()) << scores.status();
  // Squared errors per token: 0.66, 2.26, 0.86.
  EXPECT_NEAR((*scores)[0].brier, 3.78 / 12, 1e-6);
  // Bins: p 0.9 (3 pairs, 1 chosen) |2.7 - 1|, p 0.8 |2.4 - 1|, p 0.1 |0.3 - 1|, p 0 |0 - 0|.
  EXPECT_NEAR((*scores)[0].ece, (1.7 + 1.4 + 0.7) / 12, 1e-6);
}

TEST(PredictorEvalTest, BudgetOfAllExpertsHasFullRecall) {
  FixedPredictor predictor(TinyOptions(), {0.0f, 0.0f, 0.0f, 0.0f});
  PredictorEvalOptions options;
  options.budget = 4;
  absl::StatusOr<std::vector<DistanceScore>> scores =
      EvaluatePredictor(predictor, TinyTrace(), options);
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_DOUBLE_EQ((*scores)[0].recall, 1.0);
  EXPECT_DOUBLE_EQ((*scores)[0].precision, 0.25);
}

TEST(PredictorEvalTest, RejectsBadBudgetDistanceAndShape) {
  FixedPredictor predictor(TinyOptions(), {0.9f, 0.8f, 0.1f, 0.0f});
  for (int32_t budget : {0, 5}) {
    PredictorEvalOptions options;
    options.budget = budget;
    absl::StatusOr<std::vector<DistanceScore>> scores =
        EvaluatePredictor(predictor, TinyTrace(), options);
    ASSERT_FALSE(scores.ok()) << budget;
    EXPECT_EQ(scores.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(scores.status().message()),
                HasSubstr("budget " + std::to_string(budget)));
  }
  PredictorEvalOptions options;
  options.budget = 2;
  options.max_distance = 0;
  EXPECT_EQ(EvaluatePredictor(predictor, TinyTrace(), options).status().code(),
            absl::StatusCode::kInvalidArgument);

  options.max_distance = 1;
  RoutingTrace wider = TinyTrace();
  wider.header.num_experts = 8;
  absl::StatusOr<std::vector<DistanceScore>> scores = EvaluatePredictor(predictor, wider, options);
  ASSERT_FALSE(scores.ok());
  EXPECT_EQ(scores.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(scores.status().message()), HasSubstr("experts 8"));
  EXPECT_THAT(std::string(scores.status().message()), HasSubstr("experts 4"));

  RoutingTrace short_experts = TinyTrace();
  short_experts.experts.pop_back();
  EXPECT_EQ(EvaluatePredictor(predictor, short_experts, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace moe
