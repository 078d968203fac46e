// Randomized workloads against every policy in both scopes, checking the cache's invariants after
// every operation against a model kept by the test: the budget is never exceeded, pinned experts
// are never evicted, slots are unique and stable, and every access, load, eviction and prefetch
// is counted exactly once.
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "memory/expert_cache.h"
#include "tests/memory/cache_test_util.h"

namespace moe {
namespace {

using Outcome = ExpertCache::Outcome;

enum class OpType { kStep, kPrefetch, kErase, kHold, kUnhold };
struct Op {
  OpType type;
  std::vector<ExpertKey> keys;
};

struct Param {
  std::string policy;
  CacheScope scope;
};

class CacheInvariantsTest : public ::testing::TestWithParam<Param> {};

// Ops are generated first so that next-use positions (for "belady") can be computed.
std::vector<Op> RandomOps(std::mt19937_64& rng, ExpertSpace space, int n, int k) {
  std::vector<Op> ops;
  std::vector<testing::Step> steps = testing::RandomSteps(rng, space, n, k, /*round_robin=*/false);
  std::uniform_int_distribution<int> kind(0, 99);
  std::uniform_int_distribution<ExpertKey> any_key(0, static_cast<ExpertKey>(space.size() - 1));
  for (int i = 0; i < n; ++i) {
    const int r = kind(rng);
    if (r < 70) {
      ops.push_back({OpType::kStep, steps[i]});
    } else if (r < 85) {
      ops.push_back({OpType::kPrefetch, {any_key(rng)}});
    } else if (r < 90) {
      ops.push_back({OpType::kErase, {any_key(rng)}});
    } else if (r < 95) {
      ops.push_back({OpType::kHold, {steps[i][0]}});
    } else {
      ops.push_back({OpType::kUnhold, {}});
    }
  }
  return ops;
}

void RunWorkload(const Param& param, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  const ExpertSpace space{3, 8};
  const int64_t capacity = param.scope == CacheScope::kLayer ? 4 : 9;
  const uint64_t expert_bytes = 64;
  ExpertScores scores(space);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (ExpertKey key = 0; key < space.size(); ++key) scores.Set(key, unit(rng));
  auto cache =
      testing::MakeCache(param.policy, param.scope, space, capacity, &scores, expert_bytes);
  ASSERT_NE(cache, nullptr);
  const std::vector<Op> ops = RandomOps(rng, space, 600, 2);

  // Demand accesses in order, for next-use positions.
  std::vector<ExpertKey> demand;
  for (const Op& op : ops) {
    if (op.type == OpType::kStep || op.type == OpType::kHold) {
      demand.insert(demand.end(), op.keys.begin(), op.keys.end());
    }
  }
  const std::vector<uint64_t> next = testing::NextUses(demand);
  auto next_demand_of = [&](ExpertKey key, size_t from) {
    for (size_t i = from; i < demand.size(); ++i) {
      if (demand[i] == key) return static_cast<uint64_t>(i);
    }
    return AccessHint::kNever;
  };

  // The model.
  std::map<ExpertKey, int32_t> resident;  // key -> slot
  std::set<ExpertKey> prefetched_unused;
  std::vector<ExpertKey> held;
  uint64_t hits = 0, misses = 0, prefetch_loads = 0, evictions = 0, erased = 0;
  uint64_t useful = 0, wasted = 0;

  cache->SetEvictionListener([&](ExpertKey key, int32_t slot) {
    ASSERT_TRUE(resident.count(key)) << "evicted " << key << ", which was not resident";
    EXPECT_EQ(resident[key], slot);
    EXPECT_EQ(cache->PinCount(key), 0) << "evicted pinned key " << key;
    EXPECT_FALSE(cache->Contains(key));
    resident.erase(key);
    wasted += prefetched_unused.erase(key);
    ++evictions;
  });

  auto check = [&]() {
    EXPECT_LE(cache->resident_count(), cache->capacity_total());
    EXPECT_LE(cache->used_bytes(), cache->options().budget_bytes);
    EXPECT_EQ(cache->used_bytes(), uint64_t(cache->resident_count()) * expert_bytes);
    EXPECT_EQ(cache->resident_count(), static_cast<int64_t>(resident.size()));
    std::set<int32_t> slots;
    std::vector<int64_t> per_partition(static_cast<size_t>(space.num_layers), 0);
    for (ExpertKey key = 0; key < space.size(); ++key) {
      const bool in = cache->Contains(key);
      ASSERT_EQ(in, resident.count(key) == 1) << "key " << key;
      if (!in) {
        EXPECT_EQ(cache->PinCount(key), 0);
        EXPECT_EQ(cache->SlotOf(key), -1);
        continue;
      }
      const int32_t slot = cache->SlotOf(key);
      EXPECT_EQ(slot, resident[key]) << "slot of key " << key << " moved";
      EXPECT_TRUE(slots.insert(slot).second) << "slot " << slot << " used twice";
      EXPECT_GE(slot, 0);
      EXPECT_LT(slot, cache->capacity_total());
      const int32_t layer = space.LayerOf(key);
      if (param.scope == CacheScope::kLayer) {
        EXPECT_GE(slot, layer * capacity);
        EXPECT_LT(slot, (layer + 1) * capacity);
        ++per_partition[static_cast<size_t>(layer)];
      }
    }
    for (int64_t n : per_partition) EXPECT_LE(n, capacity);
    for (ExpertKey key : held) {
      EXPECT_TRUE(cache->Contains(key)) << "held key " << key << " was evicted";
      EXPECT_GE(cache->PinCount(key), 1);
    }
    const CacheStats& s = cache->stats();
    EXPECT_EQ(s.hits, hits);
    EXPECT_EQ(s.misses, misses);
    EXPECT_EQ(s.accesses, hits + misses);
    EXPECT_EQ(s.prefetch_loads, prefetch_loads);
    EXPECT_EQ(s.evictions, evictions);
    EXPECT_EQ(s.loads() - s.evictions - erased, uint64_t(cache->resident_count()));
    EXPECT_EQ(s.bytes_loaded, s.loads() * expert_bytes);
    EXPECT_EQ(s.prefetch_useful, useful);
    EXPECT_EQ(s.prefetch_wasted, wasted);
    EXPECT_EQ(s.prefetch_wasted_bytes, wasted * expert_bytes);
    EXPECT_EQ(cache->unused_prefetched_count(), static_cast<int64_t>(prefetched_unused.size()));
  };

  // Every resident key of `key`'s partition is pinned (the only reason for kNoRoom).
  auto partition_full_and_pinned = [&](ExpertKey key) {
    int64_t pinned = 0;
    for (ExpertKey other = 0; other < space.size(); ++other) {
      const bool same =
          param.scope == CacheScope::kGlobal || space.LayerOf(other) == space.LayerOf(key);
      if (same && cache->Contains(other) && cache->PinCount(other) > 0) ++pinned;
    }
    return pinned == capacity;
  };

  auto acquire = [&](ExpertKey key, size_t position) {
    const AccessHint hint{.next_use = next[position]};
    const bool was_resident = resident.count(key) == 1;
    const ExpertCache::Access a = cache->Acquire(key, hint);
    switch (a.outcome) {
      case Outcome::kHit:
        EXPECT_TRUE(was_resident);
        EXPECT_EQ(a.slot, resident[key]);
        EXPECT_EQ(a.was_prefetched_unused, prefetched_unused.count(key) == 1);
        useful += prefetched_unused.erase(key);
        ++hits;
        break;
      case Outcome::kLoaded:
        EXPECT_FALSE(was_resident);
        resident[key] = a.slot;
        ++misses;
        break;
      case Outcome::kNoRoom:
        EXPECT_FALSE(was_resident);
        EXPECT_TRUE(partition_full_and_pinned(key));
        break;
    }
    return a.outcome != Outcome::kNoRoom;
  };

  size_t position = 0;
  for (const Op& op : ops) {
    switch (op.type) {
      case OpType::kStep: {
        std::vector<ExpertKey> pinned;
        for (ExpertKey key : op.keys) {
          if (acquire(key, position++)) pinned.push_back(key);
          for (ExpertKey p : pinned) EXPECT_TRUE(cache->Contains(p)) << "step key evicted";
        }
        check();
        for (ExpertKey key : pinned) cache->Release(key);
        break;
      }
      case OpType::kPrefetch: {
        const ExpertKey key = op.keys[0];
        const bool was_resident = resident.count(key) == 1;
        const AccessHint hint{.next_use = next_demand_of(key, position)};
        const bool inserted = cache->Prefetch(key, hint);
        if (was_resident) {
          EXPECT_FALSE(inserted);
        }
        if (inserted) {
          resident[key] = cache->SlotOf(key);
          prefetched_unused.insert(key);
          ++prefetch_loads;
        } else if (!was_resident) {
          EXPECT_TRUE(partition_full_and_pinned(key));
        }
        break;
      }
      case OpType::kErase: {
        const ExpertKey key = op.keys[0];
        auto erased_or = cache->Erase(key);
        if (cache->PinCount(key) > 0) {
          EXPECT_FALSE(erased_or.ok());
        } else {
          ASSERT_TRUE(erased_or.ok());
          EXPECT_EQ(*erased_or, resident.count(key) == 1);
          if (*erased_or) {
            resident.erase(key);
            wasted += prefetched_unused.erase(key);
            ++erased;
          }
        }
        break;
      }
      case OpType::kHold: {
        // At most one held key per partition keeps every step's k=2 keys placeable.
        const ExpertKey key = op.keys[0];
        bool partition_has_hold = false;
        for (ExpertKey h : held) {
          partition_has_hold |=
              param.scope == CacheScope::kGlobal || space.LayerOf(h) == space.LayerOf(key);
        }
        if (!partition_has_hold && acquire(key, position)) held.push_back(key);
        ++position;
        break;
      }
      case OpType::kUnhold:
        if (!held.empty()) {
          cache->Release(held.back());
          held.pop_back();
        }
        break;
    }
    check();
    if (::testing::Test::HasFailure()) return;
  }
  for (ExpertKey key : held) cache->Release(key);
}

TEST_P(CacheInvariantsTest, RandomWorkloads) {
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    RunWorkload(GetParam(), seed);
    if (HasFailure()) return;
  }
}

std::vector<Param> AllParams() {
  std::vector<Param> params;
  for (std::string_view policy : EvictionPolicyNames()) {
    for (CacheScope scope : {CacheScope::kLayer, CacheScope::kGlobal}) {
      params.push_back({std::string(policy), scope});
    }
  }
  return params;
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, CacheInvariantsTest, ::testing::ValuesIn(AllParams()),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return info.param.policy + "_" +
                                  std::string(CacheScopeName(info.param.scope));
                         });

}  // namespace
}  // namespace moe
