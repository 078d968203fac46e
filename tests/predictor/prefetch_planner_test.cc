// The prefetch planner: what it prefetches for a prediction, and that a predictor returning
// garbage (NaN, negative, above 1, infinite) can neither break the ranking nor crash it.
#include "predictor/prefetch_planner.h"

#include <cmath>
#include <limits>
#include <vector>

#include "fmt/format.h"
#include "fmt/ranges.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

constexpr int32_t kLayers = 3, kExperts = 6, kTopK = 2;

// Returns fixed probabilities for every target layer; counts its calls.
class FixedPredictor final : public Predictor {
 public:
  FixedPredictor(const PredictorOptions& options, std::vector<float> probs)
      : options_(options), probs_(std::move(probs)) {}
  std::string_view name() const override { return "fixed"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t) override {}
  void Observe(int64_t, int32_t layer, std::span<const uint16_t>) override {
    observed_.push_back(layer);
  }
  void Predict(int64_t, int32_t, std::span<float> probs) const override {
    std::copy(probs_.begin(), probs_.end(), probs.begin());
  }
  std::vector<int32_t> observed_;

 private:
  PredictorOptions options_;
  std::vector<float> probs_;
};

PredictorOptions Options() {
  PredictorOptions o;
  o.space = ExpertSpace{kLayers, kExperts};
  o.top_k = kTopK;
  return o;
}

std::unique_ptr<ExpertCache> Cache(int64_t per_layer) {
  CacheOptions c;
  c.space = ExpertSpace{kLayers, kExperts};
  c.expert_bytes = 1;
  c.budget_bytes = static_cast<uint64_t>(per_layer * kLayers);
  c.scope = CacheScope::kLayer;
  auto cache = ExpertCache::Create(c);
  EXPECT_TRUE(cache.ok());
  return *std::move(cache);
}

TEST(PrefetchPlanner, PrefetchesTheMostProbableExpertsOfTheNextLayersAboveTheThreshold) {
  FixedPredictor p(Options(), {0.1f, 0.9f, 0.3f, 0.8f, 0.05f, 0.2f});
  PrefetchPlanner planner(p, nullptr, PrefetchOptions{2, 3, 0.25});
  auto cache = Cache(4);
  std::vector<std::pair<ExpertKey, int32_t>> got;
  const uint16_t experts[] = {0, 1};
  planner.AfterRouting(
      *cache, 0, 2, experts, {}, [](int32_t) { return true; },
      [&](ExpertKey key, int32_t d) { got.emplace_back(key, d); });
  // Layer 2 + 1 wraps to layer 0, + 2 to layer 1: experts 1, 3, 2 (0.3 >= 0.25), not 5 (0.2).
  const ExpertSpace s{kLayers, kExperts};
  const std::vector<std::pair<ExpertKey, int32_t>> want = {{s.Key(0, 1), 1}, {s.Key(0, 3), 1},
                                                           {s.Key(0, 2), 1}, {s.Key(1, 1), 2},
                                                           {s.Key(1, 3), 2}, {s.Key(1, 2), 2}};
  EXPECT_EQ(got, want);
  EXPECT_EQ(p.observed_, std::vector<int32_t>{2});
  // Already resident: nothing new.
  got.clear();
  planner.AfterRouting(
      *cache, 0, 2, experts, {}, [](int32_t) { return true; },
      [&](ExpertKey key, int32_t d) { got.emplace_back(key, d); });
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(planner.garbage_predictions(), 0u);
}

TEST(PrefetchPlanner, ReportsEachTargetsWantedExpertsBeforePrefetchingThem) {
  FixedPredictor p(Options(), {0.1f, 0.9f, 0.3f, 0.8f, 0.05f, 0.2f});
  PrefetchPlanner planner(p, nullptr, PrefetchOptions{2, 3, 0.25});
  auto cache = Cache(4);
  const ExpertSpace s{kLayers, kExperts};
  ASSERT_TRUE(cache->Prefetch(s.Key(1, 3)));  // resident already: still wanted
  std::vector<std::string> events;
  const uint16_t experts[] = {0, 1};
  planner.AfterRouting(
      *cache, 0, 0, experts, {}, [](int32_t) { return true; },
      [&](ExpertKey key, int32_t) { events.push_back(fmt::format("prefetch {}", key)); }, {},
      [&](int32_t target, std::span<const ExpertKey> wanted) {
        events.push_back(fmt::format("layer {} wants {}", target, fmt::join(wanted, ",")));
      });
  // Most probable first, cut at the threshold (expert 5, 0.2, is not wanted); the report comes
  // before that layer's prefetches, so the owner can drop stale ones first.
  const std::vector<std::string> want = {
      fmt::format("layer 1 wants {},{},{}", s.Key(1, 1), s.Key(1, 3), s.Key(1, 2)),
      fmt::format("prefetch {}", s.Key(1, 1)),
      fmt::format("prefetch {}", s.Key(1, 2)),
      fmt::format("layer 2 wants {},{},{}", s.Key(2, 1), s.Key(2, 3), s.Key(2, 2)),
      fmt::format("prefetch {}", s.Key(2, 1)),
      fmt::format("prefetch {}", s.Key(2, 3)),
      fmt::format("prefetch {}", s.Key(2, 2))};
  EXPECT_EQ(events, want);
}

TEST(PrefetchPlanner, StopsWhenTheLinkAdmitsNoMorePrefetches) {
  FixedPredictor p(Options(), {0.1f, 0.9f, 0.3f, 0.8f, 0.05f, 0.2f});
  PrefetchPlanner planner(p, nullptr, PrefetchOptions{2, 3, 0.0});
  auto cache = Cache(4);
  int admitted = 0;
  std::vector<ExpertKey> got;
  const uint16_t experts[] = {0, 1};
  planner.AfterRouting(
      *cache, 0, 0, experts, {}, [&](int32_t) { return admitted++ < 2; },
      [&](ExpertKey key, int32_t) { got.push_back(key); });
  const ExpertSpace s{kLayers, kExperts};
  EXPECT_EQ(got, (std::vector<ExpertKey>{s.Key(1, 1), s.Key(1, 3)}));
  EXPECT_EQ(cache->resident_count(), 2);  // a refused prefetch takes no cache space
}

TEST(PrefetchPlanner, GarbageProbabilitiesAreSanitizedAndCounted) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  FixedPredictor p(Options(), {nan, -3.0f, 7.0f, inf, -inf, 0.5f});
  ExpertScores scores(ExpertSpace{kLayers, kExperts});
  PrefetchPlanner planner(p, &scores, PrefetchOptions{1, 3, 0.0});
  auto cache = Cache(4);
  std::vector<ExpertKey> got;
  const uint16_t experts[] = {4, 5};
  planner.AfterRouting(
      *cache, 0, 0, experts, {}, [](int32_t) { return true; },
      [&](ExpertKey key, int32_t) { got.push_back(key); });
  // 7 and +inf become 1 (ids 2, 3), then 0.5 (id 5); NaN and negatives became 0.
  const ExpertSpace s{kLayers, kExperts};
  EXPECT_EQ(got, (std::vector<ExpertKey>{s.Key(1, 2), s.Key(1, 3), s.Key(1, 5)}));
  for (int32_t l = 0; l < kLayers; ++l) {
    for (float v : scores.Layer(l)) EXPECT_TRUE(v >= 0.0f && v <= 1.0f) << v;
  }
  EXPECT_EQ(planner.garbage_predictions(), 2u);  // the policy scores' and the prefetch's
}

TEST(SanitizeProbabilities, ClampsAndCounts) {
  std::vector<float> v = {0.0f, 1.0f, 0.5f, std::numeric_limits<float>::quiet_NaN(), -0.1f, 1.5f};
  EXPECT_EQ(SanitizeProbabilities(v), 3);
  EXPECT_EQ(v, (std::vector<float>{0.0f, 1.0f, 0.5f, 0.0f, 0.0f, 1.0f}));
}

}  // namespace
}  // namespace moe
