// ExpertCache: options and errors, capacity and slots, pins, prefetch accounting, the eviction
// listener, and the checks that abort.
#include "memory/expert_cache.h"

#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/memory/cache_test_util.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
using Outcome = ExpertCache::Outcome;
using testing::MakeCache;

CacheOptions Options(const std::string& policy, uint64_t budget, uint64_t expert_bytes = 100,
                     CacheScope scope = CacheScope::kLayer) {
  CacheOptions o;
  o.space = ExpertSpace{4, 8};
  o.expert_bytes = expert_bytes;
  o.budget_bytes = budget;
  o.scope = scope;
  o.policy = policy;
  return o;
}

TEST(ExpertCacheTest, CapacityFromBudget) {
  auto layer = ExpertCache::Create(Options("lru", 1250));  // 12 experts over 4 layers
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ((*layer)->capacity_per_partition(), 3);
  EXPECT_EQ((*layer)->capacity_total(), 12);

  auto global = ExpertCache::Create(Options("lru", 1250, 100, CacheScope::kGlobal));
  ASSERT_TRUE(global.ok()) << global.status();
  EXPECT_EQ((*global)->capacity_per_partition(), 12);
  EXPECT_EQ((*global)->capacity_total(), 12);

  // A budget beyond every expert is clamped to the number of experts.
  auto huge = ExpertCache::Create(Options("lru", 1'000'000));
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ((*huge)->capacity_per_partition(), 8);
  EXPECT_EQ((*huge)->capacity_total(), 32);
  auto huge_global = ExpertCache::Create(Options("lru", 1'000'000, 100, CacheScope::kGlobal));
  ASSERT_TRUE(huge_global.ok());
  EXPECT_EQ((*huge_global)->capacity_total(), 32);
}

TEST(ExpertCacheTest, BudgetBelowOneExpertPerLayerIsResourceExhausted) {
  auto cache = ExpertCache::Create(Options("lru", 350));  // 3 experts, 4 layers
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(cache.status().message());
  EXPECT_THAT(msg, HasSubstr("350 bytes"));
  EXPECT_THAT(msg, HasSubstr("100 bytes"));
  EXPECT_THAT(msg, HasSubstr("capacity 0"));
  EXPECT_THAT(msg, HasSubstr("4 layers"));
}

TEST(ExpertCacheTest, BudgetBelowOneExpertGlobalIsResourceExhausted) {
  auto cache = ExpertCache::Create(Options("lfu", 99, 100, CacheScope::kGlobal));
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string msg(cache.status().message());
  EXPECT_THAT(msg, HasSubstr("99 bytes"));
  EXPECT_THAT(msg, HasSubstr("100 bytes"));
  EXPECT_THAT(msg, HasSubstr("capacity 0"));
}

TEST(ExpertCacheTest, UnknownPolicyListsValidNames) {
  auto cache = ExpertCache::Create(Options("fifo", 10000));
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(cache.status().message());
  EXPECT_THAT(msg, HasSubstr("'fifo'"));
  for (std::string_view name : EvictionPolicyNames()) EXPECT_THAT(msg, HasSubstr(name));
}

TEST(ExpertCacheTest, PredictiveWithoutScoresIsInvalid) {
  auto cache = ExpertCache::Create(Options("predictive", 10000));
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cache.status().message()), HasSubstr("scores"));

  ExpertScores wrong(ExpertSpace{2, 8});
  CacheOptions o = Options("predictive", 10000);
  o.scores = &wrong;
  auto mismatched = ExpertCache::Create(o);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExpertCacheTest, InconsistentOptionsAreInvalid) {
  auto zero_bytes = ExpertCache::Create(Options("lru", 1000, 0));
  ASSERT_FALSE(zero_bytes.ok());
  EXPECT_EQ(zero_bytes.status().code(), absl::StatusCode::kInvalidArgument);
  CacheOptions empty = Options("lru", 1000);
  empty.space = ExpertSpace{0, 8};
  auto no_layers = ExpertCache::Create(empty);
  ASSERT_FALSE(no_layers.ok());
  EXPECT_EQ(no_layers.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExpertCacheTest, ParsesScopes) {
  EXPECT_EQ(*ParseCacheScope("layer"), CacheScope::kLayer);
  EXPECT_EQ(*ParseCacheScope("global"), CacheScope::kGlobal);
  EXPECT_EQ(CacheScopeName(CacheScope::kGlobal), "global");
  auto bad = ParseCacheScope("node");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("'node'"));
}

TEST(ExpertCacheTest, HitMissAndSlotsPerLayer) {
  const ExpertSpace space{3, 8};
  auto cache = MakeCache("lru", CacheScope::kLayer, space, 2);
  ASSERT_NE(cache, nullptr);
  const ExpertKey a = space.Key(1, 0), b = space.Key(1, 5), c = space.Key(1, 7);
  ExpertCache::Access x = cache->Acquire(a);
  EXPECT_EQ(x.outcome, Outcome::kLoaded);
  EXPECT_GE(x.slot, 2);  // layer 1 owns slots [2, 4)
  EXPECT_LT(x.slot, 4);
  EXPECT_FALSE(x.was_prefetched_unused);
  EXPECT_EQ(cache->PinCount(a), 1);
  cache->Release(a);
  EXPECT_EQ(cache->PinCount(a), 0);
  EXPECT_EQ(cache->Acquire(a).outcome, Outcome::kHit);
  EXPECT_EQ(cache->SlotOf(a), x.slot);
  cache->Release(a);
  const ExpertCache::Access y = cache->Acquire(b);
  cache->Release(b);
  EXPECT_NE(y.slot, x.slot);
  // c evicts the least recent (a), and takes its slot.
  const ExpertCache::Access z = cache->Acquire(c);
  cache->Release(c);
  EXPECT_EQ(z.outcome, Outcome::kLoaded);
  EXPECT_EQ(z.slot, x.slot);
  EXPECT_FALSE(cache->Contains(a));
  EXPECT_EQ(cache->SlotOf(a), -1);
  const CacheStats& s = cache->stats();
  EXPECT_EQ(s.accesses, 4u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.bytes_loaded, 3000u);
  EXPECT_EQ(cache->resident_count(), 2);
  EXPECT_EQ(cache->used_bytes(), 2000u);
}

TEST(ExpertCacheTest, NoRoomWhenEveryEntryIsPinned) {
  for (std::string_view policy : EvictionPolicyNames()) {
    SCOPED_TRACE(policy);
    const ExpertSpace space{1, 8};
    ExpertScores scores(space);
    auto cache = MakeCache(std::string(policy), CacheScope::kLayer, space, 2, &scores);
    ASSERT_NE(cache, nullptr);
    AccessHint hint{.next_use = 10};
    ASSERT_EQ(cache->Acquire(0, hint).outcome, Outcome::kLoaded);
    ASSERT_EQ(cache->Acquire(1, hint).outcome, Outcome::kLoaded);
    const CacheStats before = cache->stats();
    const ExpertCache::Access a = cache->Acquire(2, hint);
    EXPECT_EQ(a.outcome, Outcome::kNoRoom);
    EXPECT_FALSE(cache->Contains(2));
    EXPECT_EQ(cache->PinCount(2), 0);
    EXPECT_EQ(cache->stats().accesses, before.accesses);
    EXPECT_EQ(cache->stats().misses, before.misses);
    EXPECT_FALSE(cache->Prefetch(3, hint));  // no unpinned victim either
    EXPECT_TRUE(cache->Contains(0));
    EXPECT_TRUE(cache->Contains(1));
    cache->Release(1);
    EXPECT_EQ(cache->Acquire(2, hint).outcome, Outcome::kLoaded);  // evicts 1, the only unpinned
    EXPECT_FALSE(cache->Contains(1));
    cache->Release(0);
    cache->Release(2);
  }
}

TEST(ExpertCacheTest, PinnedKeyIsKeptAcrossManyMisses) {
  const ExpertSpace space{1, 16};
  auto cache = MakeCache("lru", CacheScope::kLayer, space, 3);
  ASSERT_NE(cache, nullptr);
  cache->Acquire(5);  // held
  for (ExpertKey k = 6; k < 16; ++k) {
    cache->Acquire(k);
    cache->Release(k);
  }
  EXPECT_TRUE(cache->Contains(5));
  EXPECT_EQ(cache->Acquire(5).outcome, Outcome::kHit);
  EXPECT_EQ(cache->PinCount(5), 2);
  cache->Release(5);
  cache->Release(5);
}

TEST(ExpertCacheTest, EraseRemovesUnpinnedAndRefusesPinned) {
  const ExpertSpace space{2, 4};
  auto cache = MakeCache("lru", CacheScope::kLayer, space, 2);
  ASSERT_NE(cache, nullptr);
  cache->Acquire(1);
  auto pinned = cache->Erase(1);
  ASSERT_FALSE(pinned.ok());
  EXPECT_EQ(pinned.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(pinned.status().message()), HasSubstr("pinned"));
  cache->Release(1);
  const int32_t slot = cache->SlotOf(1);
  auto erased = cache->Erase(1);
  ASSERT_TRUE(erased.ok());
  EXPECT_TRUE(*erased);
  EXPECT_FALSE(cache->Contains(1));
  EXPECT_EQ(cache->resident_count(), 0);
  EXPECT_EQ(cache->stats().evictions, 0u);  // an erase is not an eviction
  auto again = cache->Erase(1);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  // The freed slot is reused.
  EXPECT_EQ(cache->Acquire(2).slot, slot);
  cache->Release(2);
}

TEST(ExpertCacheTest, PrefetchAccounting) {
  const ExpertSpace space{1, 8};
  auto cache = MakeCache("lru", CacheScope::kLayer, space, 2, nullptr, 100);
  ASSERT_NE(cache, nullptr);
  EXPECT_TRUE(cache->Prefetch(0));
  EXPECT_FALSE(cache->Prefetch(0));  // already resident
  EXPECT_EQ(cache->unused_prefetched_count(), 1);
  EXPECT_EQ(cache->PinCount(0), 0);
  EXPECT_EQ(cache->stats().accesses, 0u);
  EXPECT_EQ(cache->stats().prefetch_loads, 1u);
  EXPECT_EQ(cache->stats().bytes_loaded, 100u);

  ExpertCache::Access a = cache->Acquire(0);
  EXPECT_EQ(a.outcome, Outcome::kHit);
  EXPECT_TRUE(a.was_prefetched_unused);
  cache->Release(0);
  a = cache->Acquire(0);
  EXPECT_FALSE(a.was_prefetched_unused);  // only the first use counts
  cache->Release(0);
  EXPECT_EQ(cache->stats().prefetch_useful, 1u);
  EXPECT_EQ(cache->unused_prefetched_count(), 0);

  EXPECT_TRUE(cache->Prefetch(1));  // unused, then evicted by two demand misses
  cache->Acquire(2);
  cache->Release(2);
  cache->Acquire(3);
  cache->Release(3);
  EXPECT_FALSE(cache->Contains(1));
  EXPECT_EQ(cache->stats().prefetch_wasted, 1u);
  EXPECT_EQ(cache->stats().prefetch_wasted_bytes, 100u);

  EXPECT_TRUE(cache->Prefetch(4));  // unused, then erased
  ASSERT_TRUE(cache->Erase(4).ok());
  EXPECT_EQ(cache->stats().prefetch_wasted, 2u);
  EXPECT_EQ(cache->stats().prefetch_wasted_bytes, 200u);
  EXPECT_EQ(cache->unused_prefetched_count(), 0);
  EXPECT_EQ(cache->stats().loads(), 5u);  // prefetches of 0, 1, 4; misses of 2, 3
  EXPECT_EQ(cache->stats().bytes_loaded, 500u);
}

TEST(ExpertCacheTest, EvictionListenerSeesVictimAndSlot) {
  for (std::string_view policy : {"lru", "lfu", "arc"}) {
    SCOPED_TRACE(policy);
    const ExpertSpace space{2, 8};
    auto cache = MakeCache(std::string(policy), CacheScope::kGlobal, space, 3);
    ASSERT_NE(cache, nullptr);
    std::vector<std::pair<ExpertKey, int32_t>> evicted;
    cache->SetEvictionListener([&](ExpertKey key, int32_t slot) {
      EXPECT_FALSE(cache->Contains(key));
      evicted.emplace_back(key, slot);
    });
    std::vector<int32_t> slot_of(space.size(), -1);
    for (ExpertKey k : {0u, 1u, 2u, 9u, 10u}) {
      const ExpertCache::Access a = cache->Acquire(k);
      slot_of[k] = a.slot;
      cache->Release(k);
    }
    ASSERT_EQ(evicted.size(), 2u);
    for (const auto& [key, slot] : evicted) EXPECT_EQ(slot, slot_of[key]);
    EXPECT_EQ(cache->stats().evictions, 2u);
  }
}

TEST(ExpertCacheDeathTest, ReleaseOfUnpinnedKeyAborts) {
  const ExpertSpace space{1, 4};
  auto cache = MakeCache("lru", CacheScope::kLayer, space, 2);
  ASSERT_NE(cache, nullptr);
  EXPECT_DEATH(cache->Release(1), "not pinned");
  cache->Acquire(1);
  cache->Release(1);
  EXPECT_DEATH(cache->Release(1), "not pinned");
  EXPECT_DEATH(cache->Release(99), "out of range");
}

TEST(ExpertCacheDeathTest, AcquireOutOfRangeAborts) {
  const ExpertSpace space{1, 4};
  auto cache = MakeCache("lfu", CacheScope::kLayer, space, 2);
  ASSERT_NE(cache, nullptr);
  EXPECT_DEATH(cache->Acquire(4), "out of range");
}

TEST(ExpertCacheDeathTest, BeladyWithoutNextUseAborts) {
  const ExpertSpace space{1, 4};
  auto cache = MakeCache("belady", CacheScope::kLayer, space, 2);
  ASSERT_NE(cache, nullptr);
  EXPECT_DEATH(cache->Acquire(1), "next_use");
}

}  // namespace
}  // namespace moe
