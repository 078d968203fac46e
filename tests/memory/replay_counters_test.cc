// LruReplayCounter and BeladyReplayCounter, the replay tool's count-only fast path: they must
// count exactly what ExpertCache counts (per-layer scope, "lru" / "belady") when every token's
// set is acquired as the replay loop and the engine do it (resident members first, then the
// missing ones, then all released), access by access, on random traces of several shapes,
// with repeated experts and emptied caches.
#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fmt/format.h"
#include "gtest/gtest.h"
#include "memory/expert_cache.h"
#include "memory/replay_counters.h"
#include "tests/memory/cache_test_util.h"

namespace moe {
namespace {

using testing::MakeCache;

// The reference: one token's set at one layer through ExpertCache (hints when `next` is set).
void AcquireSet(ExpertCache& cache, ExpertKey first, const uint16_t* experts, int32_t k,
                const uint32_t* next) {
  auto hint = [&](int32_t j) {
    AccessHint h;
    if (next != nullptr) {
      h.next_use = next[j] == BeladyReplayCounter::kNever ? AccessHint::kNever : next[j];
    }
    return h;
  };
  std::vector<int32_t> later;
  for (int32_t j = 0; j < k; ++j) {
    if (cache.Contains(first + experts[j])) {
      ASSERT_EQ(cache.Acquire(first + experts[j], hint(j)).outcome, ExpertCache::Outcome::kHit);
    } else {
      later.push_back(j);
    }
  }
  for (int32_t j : later) {
    ASSERT_NE(cache.Acquire(first + experts[j], hint(j)).outcome, ExpertCache::Outcome::kNoRoom);
  }
  for (int32_t j = 0; j < k; ++j) cache.Release(first + experts[j]);
}

// num_tokens rows of num_layers x k ids, skewed towards low ids; every `repeat_every`-th set
// repeats one of its experts (0: never).
std::vector<uint16_t> RandomRows(std::mt19937_64& rng, const ExpertSpace& space, int32_t k,
                                 int32_t num_tokens, int32_t repeat_every) {
  std::vector<double> weights(static_cast<size_t>(space.num_experts));
  for (size_t e = 0; e < weights.size(); ++e) weights[e] = 1.0 / double(e + 1);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  std::vector<uint16_t> rows;
  int32_t sets = 0;
  for (int32_t t = 0; t < num_tokens; ++t) {
    for (int32_t l = 0; l < space.num_layers; ++l, ++sets) {
      std::vector<uint16_t> set;
      const bool repeat = repeat_every > 0 && sets % repeat_every == 0 && k > 1;
      while (static_cast<int32_t>(set.size()) < k - (repeat ? 1 : 0)) {
        const auto e = static_cast<uint16_t>(pick(rng));
        if (std::find(set.begin(), set.end(), e) == set.end()) set.push_back(e);
      }
      if (repeat) {
        const uint16_t again = set[size_t(sets) % set.size()];
        set.insert(set.begin() + (sets % k), again);
      }
      rows.insert(rows.end(), set.begin(), set.end());
    }
  }
  return rows;
}

// For every access of `rows` (token-major), the index of the next access to the same expert at
// the same layer, or kNever.
std::vector<uint32_t> NextUses(const std::vector<uint16_t>& rows, const ExpertSpace& space,
                               int32_t k) {
  std::vector<uint32_t> next(rows.size()), last(size_t(space.size()), BeladyReplayCounter::kNever);
  const size_t row = size_t(space.num_layers) * size_t(k);
  for (size_t i = rows.size(); i-- > 0;) {
    const auto layer = static_cast<int32_t>((i % row) / size_t(k));
    const ExpertKey key = space.Key(layer, rows[i]);
    next[i] = last[key];
    last[key] = static_cast<uint32_t>(i);
  }
  return next;
}

struct Shape {
  ExpertSpace space;
  int32_t k;
  int32_t capacity;
  int32_t repeat_every;
};

class ReplayCountersTest : public ::testing::TestWithParam<Shape> {};

TEST_P(ReplayCountersTest, CountExactlyAsTheCacheDoes) {
  const Shape& s = GetParam();
  ASSERT_TRUE(LruReplayCounter::Supports(s.space, s.capacity, s.k));
  ASSERT_TRUE(BeladyReplayCounter::Supports(s.space, s.capacity, s.k));
  std::mt19937_64 rng(uint64_t(s.space.num_experts) * 131 + uint64_t(s.capacity));
  const int32_t tokens = 600;
  const std::vector<uint16_t> rows = RandomRows(rng, s.space, s.k, tokens, s.repeat_every);
  const std::vector<uint32_t> next = NextUses(rows, s.space, s.k);
  const size_t row = size_t(s.space.num_layers) * size_t(s.k);

  for (const char* policy : {"lru", "belady"}) {
    SCOPED_TRACE(policy);
    const bool belady = std::string(policy) == "belady";
    std::unique_ptr<ExpertCache> cache = MakeCache(policy, CacheScope::kLayer, s.space, s.capacity);
    ASSERT_NE(cache, nullptr);
    CacheStats emptied;  // the stats of caches replaced by an emptied one
    LruReplayCounter lru(s.space, s.capacity, s.k);
    BeladyReplayCounter opt(s.space, s.capacity, s.k);
    for (int32_t t = 0; t < tokens; ++t) {
      if (t == tokens / 2) {  // empty both halfway, as reset_per_sequence does
        emptied = cache->stats();
        cache = MakeCache(policy, CacheScope::kLayer, s.space, s.capacity);
        lru.Clear();
        opt.Clear();
      }
      const std::span<const uint16_t> routing(rows.data() + size_t(t) * row, row);
      const std::span<const uint32_t> next_use(next.data() + size_t(t) * row, row);
      for (int32_t l = 0; l < s.space.num_layers; ++l) {
        AcquireSet(*cache, s.space.Key(l, 0), routing.data() + size_t(l) * size_t(s.k), s.k,
                   belady ? next_use.data() + size_t(l) * size_t(s.k) : nullptr);
      }
      ReplayCounts counts;
      if (belady) {
        opt.AccessToken(routing, next_use);
        counts = opt.counts();
      } else {
        lru.AccessToken(routing);
        counts = lru.counts();
      }
      ASSERT_EQ(counts.hits, emptied.hits + cache->stats().hits) << "token " << t;
      ASSERT_EQ(counts.misses, emptied.misses + cache->stats().misses) << "token " << t;
      ASSERT_EQ(counts.evictions, emptied.evictions + cache->stats().evictions) << "token " << t;
    }
    const ReplayCounts& final_counts = belady ? opt.counts() : lru.counts();
    EXPECT_GT(final_counts.hits, 0u);
    if (s.capacity < s.space.num_experts) {
      EXPECT_GT(final_counts.evictions, 0u);
    }
  }
}

std::string ShapeName(const ::testing::TestParamInfo<Shape>& info) {
  const Shape& s = info.param;
  return fmt::format("e{}_k{}_cap{}{}", s.space.num_experts, s.k, s.capacity,
                     s.repeat_every ? "_repeats" : "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, ReplayCountersTest,
                         ::testing::Values(Shape{{3, 8}, 2, 2, 0}, Shape{{3, 8}, 2, 3, 5},
                                           Shape{{2, 8}, 2, 8, 0}, Shape{{4, 64}, 6, 6, 0},
                                           Shape{{4, 64}, 6, 16, 0}, Shape{{4, 64}, 6, 16, 7},
                                           Shape{{3, 64}, 6, 64, 0}, Shape{{2, 60}, 4, 10, 3},
                                           Shape{{2, 100}, 8, 40, 0}, Shape{{2, 256}, 8, 30, 9},
                                           Shape{{2, 256}, 16, 94, 0}),
                         ShapeName);

TEST(ReplayCountersTest, SupportsNamesItsLimits) {
  const ExpertSpace space{4, 64};
  EXPECT_TRUE(LruReplayCounter::Supports(space, 16, 6));
  EXPECT_FALSE(LruReplayCounter::Supports(space, 5, 6));  // below top_k
  EXPECT_FALSE(LruReplayCounter::Supports({4, 257}, 16, 6));
  EXPECT_FALSE(LruReplayCounter::Supports(space, 16, 17));
  EXPECT_FALSE(LruReplayCounter::Supports({4, 256}, 116, 6));  // ranks would pass 126
  EXPECT_TRUE(BeladyReplayCounter::Supports({4, 256}, 200, 6));
  EXPECT_FALSE(BeladyReplayCounter::Supports({4, 300}, 16, 6));
}

TEST(ReplayCountersDeathTest, MisuseAborts) {
  const ExpertSpace space{2, 8};
  LruReplayCounter lru(space, 3, 2);
  BeladyReplayCounter opt(space, 3, 2);
  const std::vector<uint16_t> short_row = {1, 2};
  EXPECT_DEATH(lru.AccessToken(short_row), "lru replay counter: 2 ids for 2 layers x top_k 2");
  const std::vector<uint16_t> bad_row = {1, 2, 3, 8};
  EXPECT_DEATH(lru.AccessToken(bad_row), "lru replay counter: expert 8 out of range");
  const std::vector<uint32_t> next = {5, 6, 7, 8}, short_next = {5};
  EXPECT_DEATH(opt.AccessToken(bad_row, next), "belady replay counter: expert 8 out of range");
  const std::vector<uint16_t> row = {1, 2, 3, 4};
  EXPECT_DEATH(opt.AccessToken(row, short_next), "1 next uses for 4 accesses");
  EXPECT_DEATH(LruReplayCounter(space, 1, 2), "capacity 1, top_k 2 not supported");
}

}  // namespace
}  // namespace moe
