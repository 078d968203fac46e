// Belady: equal to an exhaustive search for the fewest misses on small single-key traces, equal
// to a naive farthest-next-use simulation (both the scan and the heap structure), and never worse
// than any other policy on k-set traces.
#include <bit>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "memory/expert_cache.h"
#include "tests/memory/cache_test_util.h"

namespace moe {
namespace {

using Outcome = ExpertCache::Outcome;
using testing::Step;

// The fewest misses any replacement can achieve on `seq` with `capacity` entries: a forward
// search over every reachable cache content (a bitmask of keys), keeping the cheapest way to
// reach each content after each access.
int OptimalMisses(const std::vector<ExpertKey>& seq, int capacity) {
  std::map<uint32_t, int> states = {{0u, 0}};
  for (ExpertKey x : seq) {
    const uint32_t bit = 1u << x;
    std::map<uint32_t, int> next;
    auto relax = [&](uint32_t mask, int cost) {
      auto [it, inserted] = next.emplace(mask, cost);
      if (!inserted && cost < it->second) it->second = cost;
    };
    for (const auto& [mask, cost] : states) {
      if (mask & bit) {
        relax(mask, cost);
      } else if (std::popcount(mask) < capacity) {
        relax(mask | bit, cost + 1);
      } else {
        for (uint32_t rest = mask; rest != 0; rest &= rest - 1) {
          const uint32_t y = rest & (~rest + 1);
          relax((mask & ~y) | bit, cost + 1);
        }
      }
    }
    states = std::move(next);
  }
  int best = 1 << 30;
  for (const auto& [mask, cost] : states) best = std::min(best, cost);
  return best;
}

TEST(BeladyTest, MatchesExhaustiveOptimumOnSmallTraces) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 400; ++trial) {
    const int num_keys = 5 + trial % 2;
    const int capacity = 2 + (trial / 2) % 2;
    const int length = 12 + trial % 5;
    std::uniform_int_distribution<ExpertKey> key(0, static_cast<ExpertKey>(num_keys - 1));
    std::vector<ExpertKey> seq;
    std::vector<Step> steps;
    for (int i = 0; i < length; ++i) {
      seq.push_back(key(rng));
      steps.push_back({seq.back()});
    }
    const ExpertSpace space{1, num_keys};
    const CacheScope scope = trial % 3 == 0 ? CacheScope::kGlobal : CacheScope::kLayer;
    auto cache = testing::MakeCache("belady", scope, space, capacity);
    ASSERT_NE(cache, nullptr);
    const int64_t misses = testing::CountMisses(testing::Replay(*cache, steps, true));
    ASSERT_EQ(misses, OptimalMisses(seq, capacity))
        << "trial " << trial << " capacity " << capacity << " keys " << num_keys;
  }
}

// Naive Belady with pins: per partition, a vector of residents; a miss in a full partition
// replaces the resident not acquired earlier in the step whose next use is farthest.
std::vector<Outcome> NaiveBelady(const std::vector<Step>& steps, ExpertSpace space,
                                 CacheScope scope, size_t capacity) {
  const std::vector<uint64_t> next = testing::NextUses(testing::Flatten(steps));
  std::vector<std::vector<ExpertKey>> resident(scope == CacheScope::kLayer ? space.num_layers : 1);
  std::vector<uint64_t> next_of(static_cast<size_t>(space.size()), 0);
  std::vector<Outcome> outcomes;
  size_t i = 0;
  for (const Step& step : steps) {
    std::vector<ExpertKey> pinned;
    for (ExpertKey key : step) {
      auto& res = resident[scope == CacheScope::kLayer ? space.LayerOf(key) : 0];
      const uint64_t nu = next[i++];
      if (std::find(res.begin(), res.end(), key) != res.end()) {
        outcomes.push_back(Outcome::kHit);
      } else if (res.size() < capacity) {
        res.push_back(key);
        outcomes.push_back(Outcome::kLoaded);
      } else {
        int best = -1;
        for (size_t j = 0; j < res.size(); ++j) {
          if (std::find(pinned.begin(), pinned.end(), res[j]) != pinned.end()) continue;
          if (best < 0 || next_of[res[j]] > next_of[res[size_t(best)]]) best = int(j);
        }
        if (best < 0) {
          outcomes.push_back(Outcome::kNoRoom);
          continue;
        }
        res[size_t(best)] = key;
        outcomes.push_back(Outcome::kLoaded);
      }
      next_of[key] = nu;
      pinned.push_back(key);
    }
  }
  return outcomes;
}

TEST(BeladyTest, MatchesNaiveSimulationWithScanAndHeap) {
  struct Case {
    ExpertSpace space;
    CacheScope scope;
    int64_t capacity;  // <= 64: packed scan; larger: lazy heap
    int k;
  };
  const Case cases[] = {
      {{4, 16}, CacheScope::kLayer, 5, 3},
      {{4, 16}, CacheScope::kGlobal, 20, 3},
      {{4, 64}, CacheScope::kGlobal, 80, 6},
      {{3, 200}, CacheScope::kLayer, 70, 4},
  };
  for (const Case& c : cases) {
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      std::mt19937_64 rng(seed);
      const std::vector<Step> steps = testing::RandomSteps(rng, c.space, 1500, c.k);
      auto cache = testing::MakeCache("belady", c.scope, c.space, c.capacity);
      ASSERT_NE(cache, nullptr);
      ASSERT_EQ(testing::Replay(*cache, steps, true),
                NaiveBelady(steps, c.space, c.scope, static_cast<size_t>(c.capacity)))
          << "capacity " << c.capacity << " seed " << seed;
    }
  }
}

TEST(BeladyTest, NeverWorseThanAnyOtherPolicy) {
  const ExpertSpace space{3, 12};
  ExpertScores scores(space);
  for (CacheScope scope : {CacheScope::kLayer, CacheScope::kGlobal}) {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      std::mt19937_64 rng(seed);
      std::uniform_real_distribution<float> unit(0.0f, 1.0f);
      for (ExpertKey k = 0; k < space.size(); ++k) scores.Set(k, unit(rng));
      const int k = 1 + static_cast<int>(seed % 3);
      const int64_t capacity = scope == CacheScope::kLayer ? 3 + seed % 3 : 5 + seed % 7;
      const std::vector<Step> steps =
          testing::RandomSteps(rng, space, 300, k, /*round_robin=*/seed % 2 == 0);
      auto belady = testing::MakeCache("belady", scope, space, capacity);
      const int64_t optimum = testing::CountMisses(testing::Replay(*belady, steps, true));
      for (std::string_view policy : EvictionPolicyNames()) {
        auto cache = testing::MakeCache(std::string(policy), scope, space, capacity, &scores);
        const int64_t misses =
            testing::CountMisses(testing::Replay(*cache, steps, PolicyNeedsFuture(policy)));
        EXPECT_LE(optimum, misses) << policy << " seed " << seed;
      }
    }
  }
}

TEST(BeladyTest, KeysNeverUsedAgainGoFirst) {
  const ExpertSpace space{1, 8};
  auto cache = testing::MakeCache("belady", CacheScope::kLayer, space, 2);
  cache->Acquire(0, AccessHint{.next_use = AccessHint::kNever});
  cache->Release(0);
  cache->Acquire(1, AccessHint{.next_use = 100});
  cache->Release(1);
  cache->Acquire(2, AccessHint{.next_use = 50});
  cache->Release(2);
  EXPECT_FALSE(cache->Contains(0));
  cache->Acquire(3, AccessHint{.next_use = 60});
  cache->Release(3);
  EXPECT_FALSE(cache->Contains(1));  // 100 is farther than 50
  EXPECT_TRUE(cache->Contains(2));
}

}  // namespace
}  // namespace moe
