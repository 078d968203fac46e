// The monotone calibration map (predictor/calibration.h) and the calibrated "combined" predictor.
#include "predictor/calibration.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "predictor/combined_predictor.h"
#include "predictor/predictor_eval.h"
#include "predictor/synthetic_trace.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(CalibrationTest, UnfittedIsTheIdentity) {
  Calibration c;
  EXPECT_FALSE(c.fitted());
  for (float s : {0.0f, 0.25f, 1.0f}) EXPECT_EQ(c.Apply(s), s);
}

TEST(CalibrationTest, LearnsTheTrueProbabilityAndKeepsTheOrder) {
  // Outcomes drawn with probability s^2: the map must bend the scores down to s^2.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> scores;
  std::vector<uint8_t> outcomes;
  for (int i = 0; i < 200000; ++i) {
    const float s = uniform(rng);
    scores.push_back(s);
    outcomes.push_back(uniform(rng) < s * s ? 1 : 0);
  }
  Calibration c;
  c.Fit(scores, outcomes);
  ASSERT_TRUE(c.fitted());
  for (float s = 0.05f; s < 0.96f; s += 0.1f) EXPECT_NEAR(c.Apply(s), s * s, 0.03) << s;
  float previous = -1.0f;
  for (int i = 0; i <= 1000; ++i) {
    const float v = c.Apply(float(i) / 1000);
    EXPECT_GT(v, previous) << i;  // strictly increasing at this resolution: rankings kept
    EXPECT_TRUE(v >= 0.0f && v <= 1.0f);
    previous = v;
  }
}

TEST(CalibrationTest, PoolsViolatorsIntoAMonotoneMap) {
  // Frequencies 0.8 at low scores and 0.2 at high scores: pooled into one flat level.
  std::vector<float> scores;
  std::vector<uint8_t> outcomes;
  for (int i = 0; i < 100; ++i) {
    scores.push_back(0.1f);
    outcomes.push_back(i < 80);
    scores.push_back(0.9f);
    outcomes.push_back(i < 20);
  }
  Calibration c;
  c.Fit(scores, outcomes);
  EXPECT_NEAR(c.Apply(0.1f), 0.5f, 0.01);
  EXPECT_NEAR(c.Apply(0.9f), 0.5f, 0.01);
  EXPECT_LT(c.Apply(0.1f), c.Apply(0.9f));
}

TEST(CalibrationTest, SetKnotsRejectsBadKnots) {
  Calibration c;
  const float s[] = {0.1f, 0.5f}, v[] = {0.2f, 0.1f};
  absl::Status st = c.SetKnots(s, v);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("decrease"));
  const float s2[] = {0.5f, 0.5f}, v2[] = {0.1f, 0.2f};
  EXPECT_THAT(std::string(c.SetKnots(s2, v2).message()), HasSubstr("not increasing"));
  const float s3[] = {0.5f, 1.5f};
  EXPECT_THAT(std::string(c.SetKnots(s3, v2).message()), HasSubstr("outside"));
  EXPECT_EQ(c.SetKnots(s, {v, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(c.fitted());
  const float good[] = {0.1f, 0.2f};
  EXPECT_TRUE(c.SetKnots(s, good).ok());
  EXPECT_NEAR(c.Apply(0.3f), 0.99f * 0.15f + 0.01f * 0.3f, 1e-6);
}

TEST(CalibrationTest, CombinedPredictorIsCalibratedWithoutLosingRecall) {
  SyntheticTraceOptions o;
  o.num_layers = 6;
  o.num_experts = 16;
  o.top_k = 2;
  o.num_sequences = 150;
  o.min_tokens = 30;
  o.max_tokens = 50;
  auto trace = GenerateSyntheticTrace(o);
  ASSERT_TRUE(trace.ok()) << trace.status();
  PredictorOptions options;
  options.space = trace->space();
  options.top_k = 2;
  CombinedPredictor predictor(options);
  ASSERT_TRUE(predictor.Learn(*trace).ok());
  ASSERT_TRUE(predictor.ahead_calibration().fitted());
  // Evaluation adapts the frequency part online, so compare predictors fresh from one file.
  const std::string path = ::testing::TempDir() + "/combined_calibrated.safetensors";
  ASSERT_TRUE(predictor.Save(path).ok());
  CombinedPredictor calibrated(options), raw(options);
  ASSERT_TRUE(calibrated.Load(path).ok());
  ASSERT_TRUE(calibrated.ahead_calibration().fitted());
  ASSERT_TRUE(raw.Load(path).ok());
  raw.ResetCalibration();
  PredictorEvalOptions eval;
  eval.budget = 4;
  const auto c = EvaluatePredictor(calibrated, *trace, eval);
  const auto r = EvaluatePredictor(raw, *trace, eval);
  ASSERT_TRUE(c.ok() && r.ok());
  // The calibrated mixture ranks as the raw one (equal recall) and is better calibrated.
  EXPECT_DOUBLE_EQ((*c)[0].recall, (*r)[0].recall);
  EXPECT_LT((*c)[0].ece, (*r)[0].ece);
  EXPECT_LE((*c)[0].brier, (*r)[0].brier);
}

}  // namespace
}  // namespace moe
