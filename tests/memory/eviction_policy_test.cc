// Eviction policies: the registry, LRU against a brute-force reference, and the behaviour each
// other policy exists for, on crafted sequences.
#include "memory/eviction_policy.h"

#include <list>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/expert_cache.h"
#include "tests/memory/cache_test_util.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
using Outcome = ExpertCache::Outcome;
using testing::MakeCache;
using testing::Step;

TEST(EvictionPolicyTest, NamesAndFactory) {
  std::vector<std::string> names;
  for (std::string_view n : EvictionPolicyNames()) names.emplace_back(n);
  EXPECT_THAT(names, ::testing::ElementsAre("lru", "lfu", "arc", "lrfu", "predictive", "belady"));
  EXPECT_TRUE(PolicyNeedsFuture("belady"));
  EXPECT_FALSE(PolicyNeedsFuture("lru"));
  const ExpertSpace space{2, 4};
  ExpertScores scores(space);
  for (std::string_view n : EvictionPolicyNames()) {
    auto policy = MakeEvictionPolicy(n, PolicyContext{space, 2, &scores});
    ASSERT_TRUE(policy.ok()) << policy.status();
    EXPECT_EQ((*policy)->name(), n);
  }
  auto unknown = MakeEvictionPolicy("mru", PolicyContext{space, 2, nullptr});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.status().message()),
              HasSubstr("valid policies: lru, lfu, arc, lrfu, predictive, belady"));
  auto no_scores = MakeEvictionPolicy("predictive", PolicyContext{space, 2, nullptr});
  ASSERT_FALSE(no_scores.ok());
  EXPECT_THAT(std::string(no_scores.status().message()), HasSubstr("scores"));
  auto no_capacity = MakeEvictionPolicy("lru", PolicyContext{space, 0, nullptr});
  EXPECT_FALSE(no_capacity.ok());
}

// A policy used on its own (outside a cache) follows the protocol: victims are resident and
// unpinned.
TEST(EvictionPolicyTest, StandalonePolicyChoosesUnpinnedResidentVictims) {
  const ExpertSpace space{1, 8};
  ExpertScores scores(space);
  std::vector<uint16_t> pins(8, 0);
  for (std::string_view n : EvictionPolicyNames()) {
    SCOPED_TRACE(n);
    auto policy = MakeEvictionPolicy(n, PolicyContext{space, 3, &scores});
    ASSERT_TRUE(policy.ok());
    EvictionPolicy& p = **policy;
    const AccessHint hint{.next_use = 5};
    p.OnInsert(1, hint, false);
    p.OnInsert(2, hint, false);
    p.OnInsert(3, AccessHint{.next_use = 9}, false);
    p.OnHit(1, AccessHint{.next_use = 7});
    pins[1] = pins[2] = 1;
    EXPECT_EQ(p.ChooseVictim(pins), 3u);
    pins[3] = 1;
    EXPECT_EQ(p.ChooseVictim(pins), kNoExpert);
    pins[1] = pins[2] = pins[3] = 0;
    p.OnRemove(2);
    const ExpertKey v = p.ChooseVictim(pins);
    EXPECT_TRUE(v == 1 || v == 3) << v;
  }
}

// The reference LRU: one std::list per partition, most recent first, the victim being the last
// key not acquired earlier in the same step.
std::vector<Outcome> ReferenceLru(const std::vector<Step>& steps, ExpertSpace space,
                                  CacheScope scope, size_t capacity) {
  std::vector<std::list<ExpertKey>> lists(scope == CacheScope::kLayer ? space.num_layers : 1);
  std::vector<Outcome> outcomes;
  for (const Step& step : steps) {
    std::vector<ExpertKey> pinned;
    for (ExpertKey key : step) {
      auto& list = lists[scope == CacheScope::kLayer ? space.LayerOf(key) : 0];
      auto it = std::find(list.begin(), list.end(), key);
      if (it != list.end()) {
        list.erase(it);
        list.push_front(key);
        outcomes.push_back(Outcome::kHit);
      } else {
        if (list.size() == capacity) {
          auto victim = list.end();
          for (auto r = list.end(); r != list.begin();) {
            --r;
            if (std::find(pinned.begin(), pinned.end(), *r) == pinned.end()) {
              victim = r;
              break;
            }
          }
          if (victim == list.end()) {
            outcomes.push_back(Outcome::kNoRoom);
            continue;
          }
          list.erase(victim);
        }
        list.push_front(key);
        outcomes.push_back(Outcome::kLoaded);
      }
      pinned.push_back(key);
    }
  }
  return outcomes;
}

TEST(EvictionPolicyTest, LruMatchesReferenceHitForHit) {
  const ExpertSpace space{3, 10};
  for (CacheScope scope : {CacheScope::kLayer, CacheScope::kGlobal}) {
    for (uint64_t seed = 1; seed <= 30; ++seed) {
      std::mt19937_64 rng(seed);
      const int k = 1 + static_cast<int>(seed % 3);
      const int64_t capacity = scope == CacheScope::kLayer ? 3 + seed % 3 : 4 + seed % 8;
      const std::vector<Step> steps =
          testing::RandomSteps(rng, space, 200, k, /*round_robin=*/seed % 2 == 0);
      auto cache = MakeCache("lru", scope, space, capacity);
      ASSERT_NE(cache, nullptr);
      const std::vector<Outcome> got = testing::Replay(*cache, steps, false);
      const std::vector<Outcome> want =
          ReferenceLru(steps, space, scope, static_cast<size_t>(capacity));
      ASSERT_EQ(got, want) << "seed " << seed << " scope " << CacheScopeName(scope);
    }
  }
}

// Single-key steps over one layer.
std::vector<Step> Singles(std::initializer_list<ExpertKey> keys) {
  std::vector<Step> steps;
  for (ExpertKey k : keys) steps.push_back({k});
  return steps;
}

std::vector<Step> Concat(std::vector<Step> a, const std::vector<Step>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(EvictionPolicyTest, LfuKeepsAFrequentKeyAcrossAScan) {
  const ExpertSpace space{1, 16};
  // Key 0 used five times, then a scan of 8 keys used once, then key 0 again.
  const std::vector<Step> steps =
      Concat(Singles({0, 0, 0, 0, 0}), Singles({1, 2, 3, 4, 5, 6, 7, 8, 0}));
  auto lfu = MakeCache("lfu", CacheScope::kLayer, space, 3);
  auto lru = MakeCache("lru", CacheScope::kLayer, space, 3);
  EXPECT_EQ(testing::Replay(*lfu, steps, false).back(), Outcome::kHit);
  EXPECT_EQ(testing::Replay(*lru, steps, false).back(), Outcome::kLoaded);
}

TEST(EvictionPolicyTest, LfuBreaksTiesByRecency) {
  const ExpertSpace space{1, 8};
  auto lfu = MakeCache("lfu", CacheScope::kLayer, space, 3);
  // 1 is used twice, 3 and 4 once: 5 evicts 3 (count 1 and least recent).
  testing::Replay(*lfu, Singles({1, 1, 3, 4, 5}), false);
  EXPECT_TRUE(lfu->Contains(1));
  EXPECT_FALSE(lfu->Contains(3));
  EXPECT_TRUE(lfu->Contains(4));
  EXPECT_TRUE(lfu->Contains(5));
}

TEST(EvictionPolicyTest, ArcResistsAOneTimeScan) {
  const ExpertSpace space{1, 32};
  // A working set {0, 1, 2} used twice (frequency side), then a scan of 12 keys used once.
  const std::vector<Step> steps = Concat(Singles({0, 1, 2, 0, 1, 2}),
                                         Singles({10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}));
  const std::vector<Step> after = Singles({0, 1, 2});
  auto arc = MakeCache("arc", CacheScope::kLayer, space, 4);
  auto lru = MakeCache("lru", CacheScope::kLayer, space, 4);
  testing::Replay(*arc, steps, false);
  testing::Replay(*lru, steps, false);
  EXPECT_EQ(testing::CountMisses(testing::Replay(*arc, after, false)), 0);
  EXPECT_EQ(testing::CountMisses(testing::Replay(*lru, after, false)), 3);
}

TEST(EvictionPolicyTest, LrfuKeepsARecentlyFrequentKeyThroughAScan) {
  const ExpertSpace space{1, 32};
  // Key 0 is used often, then a scan of keys used once passes through: LRU loses 0, LRFU not.
  std::vector<Step> steps = Singles({0, 1, 0, 2, 0, 3, 0});
  steps = Concat(steps, Singles({10, 11, 12, 13}));
  auto lrfu = MakeCache("lrfu", CacheScope::kLayer, space, 4);
  auto lru = MakeCache("lru", CacheScope::kLayer, space, 4);
  testing::Replay(*lrfu, steps, false);
  testing::Replay(*lru, steps, false);
  EXPECT_EQ(testing::CountMisses(testing::Replay(*lrfu, Singles({0}), false)), 0);
  EXPECT_EQ(testing::CountMisses(testing::Replay(*lru, Singles({0}), false)), 1);
}

TEST(EvictionPolicyTest, LrfuForgetsFrequencyThatStoppedBeingUsed) {
  const ExpertSpace space{1, 64};
  auto lrfu = MakeCache("lrfu", CacheScope::kLayer, space, 2);
  // Key 0 is used 10 times, then keys 1 and 2 alternate for many rounds: 0's old frequency
  // decays (half-life 5 x capacity accesses), so it becomes the victim instead of 1 or 2.
  std::vector<Step> steps;
  for (int i = 0; i < 10; ++i) steps = Concat(steps, Singles({0}));
  testing::Replay(*lrfu, steps, false);
  std::vector<Step> rounds;
  for (int r = 0; r < 60; ++r) rounds = Concat(rounds, Singles({1, 2}));
  const auto outcomes = testing::Replay(*lrfu, rounds, false);
  // After warm-up the alternating pair always hits: 0 was evicted, not one of them.
  int late_misses = 0;
  for (size_t i = outcomes.size() - 20; i < outcomes.size(); ++i) {
    late_misses += outcomes[i] != Outcome::kHit;
  }
  EXPECT_EQ(late_misses, 0);
  EXPECT_FALSE(lrfu->Contains(0));
}

TEST(EvictionPolicyTest, ArcAdaptsToANewWorkingSet) {
  const ExpertSpace space{1, 32};
  auto arc = MakeCache("arc", CacheScope::kLayer, space, 4);
  // An old frequent set, then a new set used round robin: ghost hits move the target towards
  // recency until the new set fits.
  testing::Replay(*arc, Singles({0, 1, 2, 3, 0, 1, 2, 3}), false);
  std::vector<Step> rounds;
  for (int r = 0; r < 4; ++r) rounds = Concat(rounds, Singles({20, 21, 22, 23}));
  testing::Replay(*arc, rounds, false);
  EXPECT_EQ(testing::CountMisses(testing::Replay(*arc, Singles({20, 21, 22, 23}), false)), 0);
}

TEST(EvictionPolicyTest, ArcGrowsTheRecencySideOnGhostHits) {
  const ExpertSpace space{1, 64};
  auto arc = MakeCache("arc", CacheScope::kLayer, space, 3);
  // A stale frequent set, then new keys each reused right after one other new key: x, y, x.
  // Keeping x in T1 needs the target p to grow; with p stuck at 0, T1 would lose x to y every
  // time.
  testing::Replay(*arc, Singles({0, 1, 0, 1}), false);
  int reuse_hits = 0;
  for (ExpertKey r = 0; r < 8; ++r) {
    const ExpertKey x = 10 + 2 * r, y = 11 + 2 * r;
    reuse_hits += testing::Replay(*arc, Singles({x, y, x}), false).back() == Outcome::kHit;
  }
  EXPECT_GE(reuse_hits, 6);
}

TEST(EvictionPolicyTest, PrefetchedKeysDoNotCountAsFrequent) {
  const ExpertSpace space{1, 16};
  for (const char* policy : {"lfu", "arc", "lrfu"}) {
    SCOPED_TRACE(policy);
    auto cache = MakeCache(policy, CacheScope::kLayer, space, 2);
    // 1 is used twice on demand; 2 is prefetched then used once: 2 is the less frequent.
    testing::Replay(*cache, Singles({1, 1}), false);
    ASSERT_TRUE(cache->Prefetch(2));
    testing::Replay(*cache, Singles({2, 1, 3}), false);
    EXPECT_TRUE(cache->Contains(1));
    EXPECT_FALSE(cache->Contains(2));
  }
}

TEST(EvictionPolicyTest, PredictiveEvictsTheLowestScore) {
  const ExpertSpace space{2, 8};
  ExpertScores scores(space);
  for (CacheScope scope : {CacheScope::kLayer, CacheScope::kGlobal}) {
    auto cache = MakeCache("predictive", scope, space, 3, &scores);
    scores.Set(0, 0.9f);
    scores.Set(1, 0.1f);
    scores.Set(2, 0.5f);
    testing::Replay(*cache, Singles({0, 1, 2, 3}), false);  // 0 is least recent, 1 lowest
    EXPECT_TRUE(cache->Contains(0));
    EXPECT_FALSE(cache->Contains(1));
    EXPECT_TRUE(cache->Contains(2));
    // Scores change at any time, and the next victim follows them.
    scores.Set(2, 0.0f);
    scores.Set(3, 0.95f);
    testing::Replay(*cache, Singles({4}), false);
    EXPECT_FALSE(cache->Contains(2));
    EXPECT_TRUE(cache->Contains(0));
    EXPECT_TRUE(cache->Contains(3));
    for (ExpertKey k = 0; k < 8; ++k) scores.Set(k, 0.0f);
  }
}

TEST(EvictionPolicyTest, PredictiveWithEqualScoresIsLru) {
  const ExpertSpace space{3, 10};
  ExpertScores scores(space);
  for (ExpertKey k = 0; k < space.size(); ++k) scores.Set(k, 0.25f);
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    std::mt19937_64 rng(seed);
    const std::vector<Step> steps = testing::RandomSteps(rng, space, 200, 2);
    auto predictive = MakeCache("predictive", CacheScope::kLayer, space, 4, &scores);
    auto lru = MakeCache("lru", CacheScope::kLayer, space, 4);
    EXPECT_EQ(testing::Replay(*predictive, steps, false), testing::Replay(*lru, steps, false));
  }
}

}  // namespace
}  // namespace moe
