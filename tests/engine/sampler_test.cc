// Sampling: greedy ties, top-k / top-p truncation, temperature, reproducibility, bad params.
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/sampler.h"

namespace moe {
namespace {

TEST(Sampler, GreedyPicksTheArgmaxWithTiesToTheLowerId) {
  Sampler s({});
  EXPECT_EQ(s.Sample(std::vector<float>{0.1f, 2.0f, 2.0f, -1.0f}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{-3.0f}), 0);
}

TEST(Sampler, TopKOneIsGreedyAndTopKLimitsTheChoices) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.9f, 2.8f, -5.0f};
  Sampler one({1.0f, 1, 1.0f, 7});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(one.Sample(logits), 1);
  Sampler two({1.0f, 2, 1.0f, 7});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[two.Sample(logits)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[1], 0);
  EXPECT_GT(seen[2], 0);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // Probabilities ~ 0.665, 0.245, 0.090: top_p 0.6 keeps only the first.
  const std::vector<float> logits = {2.0f, 1.0f, 0.0f};
  Sampler s({1.0f, 0, 0.6f, 3});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s.Sample(logits), 0);
  Sampler wider({1.0f, 0, 0.8f, 3});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[wider.Sample(logits)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen.count(2), 0u);
}

TEST(Sampler, FrequenciesFollowTheSoftmaxAndSeedsReproduce) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  Sampler s({1.0f, 0, 1.0f, 11});
  int ones = 0;
  const int n = 20000;
  std::vector<int32_t> first;
  for (int i = 0; i < n; ++i) {
    const int32_t t = s.Sample(logits);
    ones += t;
    if (i < 32) first.push_back(t);
  }
  EXPECT_NEAR(double(ones) / n, 0.75, 0.02);
  Sampler again({1.0f, 0, 1.0f, 11});
  for (int32_t t : first) EXPECT_EQ(again.Sample(logits), t);
}

TEST(Sampler, BadParametersNameTheField) {
  EXPECT_FALSE(ValidateSamplingParams({-1.0f, 0, 1.0f, 0}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, -2, 1.0f, 0}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 0.0f, 0}).ok());
  EXPECT_FALSE(ValidateSamplingParams({1.0f, 0, 1.5f, 0}).ok());
  EXPECT_TRUE(ValidateSamplingParams({0.7f, 40, 0.95f, 0}).ok());
  EXPECT_NE(std::string(ValidateSamplingParams({1.0f, 0, 2.0f, 0}).message()).find("top_p"),
            std::string::npos);
}

}  // namespace
}  // namespace moe
