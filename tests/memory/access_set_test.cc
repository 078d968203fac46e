// ExpertCache::AccessSet and AccessToken, the replay tool's one-call accesses: they must change
// the cache exactly as acquiring a set's resident members, then its missing ones, then releasing
// them all does (the rule the general replay loop and the engine follow), for every policy and
// scope, with prefetched experts, an eviction listener and partitions that run out of room.
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "memory/expert_cache.h"
#include "memory/expert_scores.h"
#include "tests/memory/cache_test_util.h"

namespace moe {
namespace {

using testing::MakeCache;

// The reference, as the general replay loop does it: the members resident now are acquired
// first (in order), then the others (in order; a repeated expert is then a hit), then all are
// released. Returns false, releasing what it acquired, when a miss finds no room.
bool AcquireSetByHand(ExpertCache& cache, ExpertKey first, const std::vector<uint16_t>& experts) {
  std::vector<ExpertKey> pinned, later;
  for (uint16_t e : experts) {
    const ExpertKey key = first + e;
    if (cache.Contains(key)) {
      cache.Acquire(key);
      pinned.push_back(key);
    } else {
      later.push_back(key);
    }
  }
  bool room = true;
  for (ExpertKey key : later) {
    if (cache.Acquire(key).outcome == ExpertCache::Outcome::kNoRoom) {
      room = false;
      break;
    }
    pinned.push_back(key);
  }
  for (ExpertKey key : pinned) cache.Release(key);
  return room;
}

void ExpectSameState(const ExpertCache& a, const ExpertCache& b, const ExpertSpace& space) {
  const CacheStats& sa = a.stats();
  const CacheStats& sb = b.stats();
  EXPECT_EQ(sa.hits, sb.hits);
  EXPECT_EQ(sa.misses, sb.misses);
  EXPECT_EQ(sa.evictions, sb.evictions);
  EXPECT_EQ(sa.prefetch_useful, sb.prefetch_useful);
  EXPECT_EQ(sa.prefetch_wasted, sb.prefetch_wasted);
  EXPECT_EQ(a.unused_prefetched_count(), b.unused_prefetched_count());
  for (ExpertKey key = 0; key < static_cast<ExpertKey>(space.size()); ++key) {
    ASSERT_EQ(a.SlotOf(key), b.SlotOf(key)) << "key " << key;
    ASSERT_EQ(a.PinCount(key), b.PinCount(key)) << "key " << key;
  }
}

// k distinct experts of one layer, skewed towards low ids.
std::vector<uint16_t> RandomSet(std::mt19937_64& rng, int32_t num_experts, int32_t k) {
  std::vector<double> weights(static_cast<size_t>(num_experts));
  for (size_t e = 0; e < weights.size(); ++e) weights[e] = 1.0 / double(e + 1);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  std::vector<uint16_t> set;
  while (static_cast<int32_t>(set.size()) < k) {
    const auto e = static_cast<uint16_t>(pick(rng));
    if (std::find(set.begin(), set.end(), e) == set.end()) set.push_back(e);
  }
  return set;
}

struct Case {
  std::string policy;
  CacheScope scope;
  bool listener;
};

class AccessSetTest : public ::testing::TestWithParam<Case> {};

TEST_P(AccessSetTest, ChangesTheCacheExactlyAsAcquiringByHand) {
  const Case& c = GetParam();
  const ExpertSpace space{4, 12};
  const int32_t k = 3;
  ExpertScores scores(space);
  auto by_hand = MakeCache(c.policy, c.scope, space, 5, &scores);
  auto one_call = MakeCache(c.policy, c.scope, space, 5, &scores);
  ASSERT_NE(by_hand, nullptr);
  ASSERT_NE(one_call, nullptr);
  std::vector<ExpertKey> evicted_by_hand, evicted_one_call;
  if (c.listener) {
    by_hand->SetEvictionListener([&](ExpertKey key, int32_t) { evicted_by_hand.push_back(key); });
    one_call->SetEvictionListener([&](ExpertKey key, int32_t) { evicted_one_call.push_back(key); });
  }
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> score(0.0f, 1.0f);
  for (int step = 0; step < 3000; ++step) {
    const int32_t layer = step % space.num_layers;
    const ExpertKey first = space.Key(layer, 0);
    if (step % 7 == 0) {  // a prefetch (later hits on it take the slow path)
      const ExpertKey key = first + static_cast<ExpertKey>(rng() % space.num_experts);
      ASSERT_EQ(by_hand->Prefetch(key), one_call->Prefetch(key));
    }
    if (step % 11 == 0) {  // new predictions for the "predictive" policy
      for (int32_t e = 0; e < space.num_experts; ++e) scores.Set(space.Key(layer, e), score(rng));
    }
    std::vector<uint16_t> set = RandomSet(rng, space.num_experts, k);
    if (step % 13 == 0) set.push_back(set[step % k]);  // a repeated expert (not from a router)
    ASSERT_TRUE(AcquireSetByHand(*by_hand, first, set));
    ASSERT_TRUE(one_call->AccessSet(first, set));
    ExpectSameState(*by_hand, *one_call, space);
    if (::testing::Test::HasFailure()) FAIL() << "diverged at step " << step;
  }
  EXPECT_EQ(evicted_by_hand, evicted_one_call);
  EXPECT_GT(one_call->stats().evictions, 0u);
  EXPECT_GT(one_call->stats().prefetch_useful, 0u);
}

TEST_P(AccessSetTest, AccessTokenIsAccessSetAtEveryLayer) {
  const Case& c = GetParam();
  const ExpertSpace space{5, 10};
  const int32_t k = 2;
  ExpertScores scores(space);
  auto per_layer = MakeCache(c.policy, c.scope, space, 4, &scores);
  auto per_token = MakeCache(c.policy, c.scope, space, 4, &scores);
  ASSERT_NE(per_layer, nullptr);
  ASSERT_NE(per_token, nullptr);
  std::mt19937_64 rng(11);
  for (int token = 0; token < 500; ++token) {
    std::vector<uint16_t> routing;
    for (int32_t l = 0; l < space.num_layers; ++l) {
      const std::vector<uint16_t> set = RandomSet(rng, space.num_experts, k);
      ASSERT_TRUE(per_layer->AccessSet(space.Key(l, 0), set));
      routing.insert(routing.end(), set.begin(), set.end());
    }
    ASSERT_EQ(per_token->AccessToken(routing, k), -1);
  }
  ExpectSameState(*per_layer, *per_token, space);
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.policy + "_" + std::string(CacheScopeName(info.param.scope)) +
         (info.param.listener ? "_listener" : "");
}

INSTANTIATE_TEST_SUITE_P(Policies, AccessSetTest,
                         ::testing::Values(Case{"lru", CacheScope::kLayer, false},
                                           Case{"lru", CacheScope::kGlobal, false},
                                           Case{"lru", CacheScope::kLayer, true},
                                           Case{"lfu", CacheScope::kLayer, false},
                                           Case{"arc", CacheScope::kGlobal, false},
                                           Case{"lrfu", CacheScope::kLayer, true},
                                           Case{"predictive", CacheScope::kLayer, false}),
                         CaseName);

TEST(AccessSetNoRoomTest, ReportsTheSetThatFoundEveryEntryPinnedAndReleasesTheRest) {
  for (const char* policy : {"lru", "lfu"}) {
    SCOPED_TRACE(policy);
    const ExpertSpace space{2, 8};
    auto cache = MakeCache(policy, CacheScope::kLayer, space, 2);
    ASSERT_NE(cache, nullptr);
    // Layer 1's two entries: expert 0 pinned by someone else, expert 1 resident and free.
    const ExpertKey first = space.Key(1, 0);
    cache->Acquire(first + 0);
    cache->Acquire(first + 1);
    cache->Release(first + 1);
    // {1, 4, 5}: 1 is a hit; loading 4 evicts nothing it may (0 and 1 are pinned): no room.
    const std::vector<uint16_t> set = {1, 4, 5};
    EXPECT_FALSE(cache->AccessSet(first, set));
    EXPECT_EQ(cache->PinCount(first + 1), 0);  // released again
    EXPECT_EQ(cache->PinCount(first + 0), 1);  // the other owner's pin stays
    EXPECT_FALSE(cache->Contains(first + 4));
    EXPECT_FALSE(cache->Contains(first + 5));
    // Per token: layer 0 is fine, layer 1 is the one reported.
    const std::vector<uint16_t> routing = {2, 3, 1, 4};
    EXPECT_EQ(cache->AccessToken(routing, 2), 1);
    EXPECT_TRUE(cache->Contains(space.Key(0, 2)));
    EXPECT_EQ(cache->PinCount(space.Key(0, 2)), 0);
  }
}

TEST(AccessSetDeathTest, MisuseAborts) {
  const ExpertSpace space{2, 8};
  auto cache = MakeCache("lru", CacheScope::kLayer, space, 3);
  ASSERT_NE(cache, nullptr);
  const std::vector<uint16_t> set = {1, 2};
  EXPECT_DEATH(cache->AccessSet(3, set), "not a layer's first expert key");
  EXPECT_DEATH(cache->AccessSet(16, set), "not a layer's first expert key");
  const std::vector<uint16_t> bad = {1, 8};
  EXPECT_DEATH(cache->AccessSet(0, bad), "expert 8 out of range");
  EXPECT_DEATH(cache->AccessToken(set, 2), "2 ids for 2 layers x top_k 2");
  const std::vector<uint16_t> bad_row = {1, 2, 3, 9};
  EXPECT_DEATH(cache->AccessToken(bad_row, 2), "access token: expert 9 out of range");
}

}  // namespace
}  // namespace moe
