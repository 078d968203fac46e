// The expert cache: residency, pins, slots and statistics over dense per-key arrays; the policy
// of each partition decides victims.
//
// Hot path (the replay tool runs tens of millions of Acquire/Release pairs per second): a plain
// hit is inline in the header, a few loads and stores into per-key arrays plus the policy's
// OnHit. With "lru" the cache owns every partition's list (internal::LruLists) and calls it
// directly: a hit is an inline list move, a miss one out-of-line call that walks, unlinks and
// inserts in one pass. Other policies go through the EvictionPolicy vtable. No hashing, no
// allocation after Create; the partition of a key is a multiply, not a division or a table.
//
// What was measured to matter (bench/cache_bench.cc, AMD EPYC Zen 3 VM): the LRU state of all 26
// layers fits in L1 only when the nodes of every partition share one array (one load from the
// cache object reaches any node); building the 12-byte Access by aggregate initialisation
// stalled on store forwarding; counters that can be derived (accesses, evictions,
// bytes_loaded) are derived in stats() instead of being incremented on every access.
#include "memory/expert_cache.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>

#include "memory/lru_policy.h"
#include "runtime/status.h"

namespace moe {
absl::StatusOr<CacheScope> ParseCacheScope(std::string_view name) {
  if (name == "layer") return CacheScope::kLayer;
  if (name == "global") return CacheScope::kGlobal;
  return InvalidArgument("unknown cache scope '{}'; valid scopes: layer, global", name);
}

std::string_view CacheScopeName(CacheScope scope) {
  return scope == CacheScope::kLayer ? "layer" : "global";
}

absl::StatusOr<std::unique_ptr<ExpertCache>> ExpertCache::Create(const CacheOptions& options) {
  const ExpertSpace& space = options.space;
  if (space.num_layers <= 0 || space.num_experts <= 0) {
    return InvalidArgument("expert cache: empty expert space ({} layers x {} experts)",
                           space.num_layers, space.num_experts);
  }
  if (space.size() > (int64_t{1} << 31)) {
    return InvalidArgument("expert cache: expert space of {} keys is too large (max 2^31)",
                           space.size());
  }
  if (options.expert_bytes == 0) {
    return InvalidArgument("expert cache: expert_bytes must be > 0");
  }
  // Validate the policy (name, scores) before the budget, so a typo is reported as such.
  {
    PolicyContext probe{space, 1, options.scores};
    MOE_RETURN_IF_ERROR_CTX(MakeEvictionPolicy(options.policy, probe).status(), "expert cache");
  }
  const uint64_t entries = options.budget_bytes / options.expert_bytes;
  const bool layer = options.scope == CacheScope::kLayer;
  const uint64_t per_partition = layer ? entries / uint64_t(space.num_layers) : entries;
  if (per_partition < 1) {
    if (layer) {
      return ResourceExhausted(
          "expert cache: budget of {} bytes holds {} experts of {} bytes, {} per layer over {} "
          "layers: capacity {} per layer < 1 (need at least {} bytes, or global scope)",
          options.budget_bytes, entries, options.expert_bytes, per_partition, space.num_layers,
          per_partition, options.expert_bytes * uint64_t(space.num_layers));
    }
    return ResourceExhausted(
        "expert cache: budget of {} bytes holds no expert of {} bytes: capacity {} < 1",
        options.budget_bytes, options.expert_bytes, per_partition);
  }
  return std::unique_ptr<ExpertCache>(new ExpertCache(options));
}

ExpertCache::ExpertCache(const CacheOptions& options)
    : options_(options),
      layer_scope_(options.scope == CacheScope::kLayer),
      lru_(options.policy == "lru"),
      num_keys_(static_cast<uint32_t>(options.space.size())),
      lru_lists_(lru_ ? num_keys_ : 0,
                 lru_ ? static_cast<uint32_t>(layer_scope_ ? options.space.num_layers : 1) : 0) {
  const uint64_t entries = options.budget_bytes / options.expert_bytes;
  const uint32_t num_experts = static_cast<uint32_t>(options.space.num_experts);
  const int64_t num_partitions = layer_scope_ ? options.space.num_layers : 1;
  const uint64_t keys_per_partition = layer_scope_ ? num_experts : num_keys_;
  capacity_per_partition_ = static_cast<int64_t>(std::min(
      layer_scope_ ? entries / uint64_t(options.space.num_layers) : entries, keys_per_partition));
  capacity_total_ = capacity_per_partition_ * num_partitions;
  if (layer_scope_ && num_experts == 1) {
    partition_mask_ = 0xFFFFFFFFu;
  } else if (layer_scope_) {
    partition_magic_ = ~uint64_t{0} / num_experts + 1;  // ceil(2^64 / num_experts)
  }
  for (uint32_t k = 0; k < num_keys_; ++k) {
    MOE_CHECK(PartitionOf(k) == (layer_scope_ ? k / num_experts : 0));
  }

  slot_.assign(num_keys_, kAbsent);
  pins_.assign(num_keys_, 0);
  const PolicyContext context{options.space, capacity_per_partition_, options.scores};
  if (lru_) {
    lru_policies_.reserve(static_cast<size_t>(num_partitions));
    for (int64_t p = 0; p < num_partitions; ++p) {
      lru_policies_.emplace_back(&lru_lists_, static_cast<uint32_t>(p));
      policies_.push_back(&lru_policies_.back());
    }
  } else {
    for (int64_t p = 0; p < num_partitions; ++p) {
      auto policy = MakeEvictionPolicy(options.policy, context);
      MOE_CHECK(policy.ok());  // Create validated the same name and context
      owned_policies_.push_back(std::move(policy).value());
      policies_.push_back(owned_policies_.back().get());
    }
  }
  // Each partition's stack of free slots holds its slot range, lowest on top so slots fill in
  // order.
  free_slots_.resize(static_cast<size_t>(capacity_total_));
  free_count_.assign(static_cast<size_t>(num_partitions),
                     static_cast<int32_t>(capacity_per_partition_));
  for (int64_t p = 0; p < num_partitions; ++p) {
    const int64_t base = p * capacity_per_partition_;
    for (int64_t i = 0; i < capacity_per_partition_; ++i) {
      free_slots_[static_cast<size_t>(base + i)] =
          static_cast<int32_t>(base + capacity_per_partition_ - 1 - i);
    }
  }
}

ExpertCache::~ExpertCache() = default;

void ExpertCache::ReleaseFailed(ExpertKey key) const {
  MOE_CHECK_MSG(false, "release of expert key {}, which is {}", key,
                key >= num_keys_ ? fmt::format("out of range [0, {})", num_keys_)
                                 : std::string("not pinned"));
  std::abort();
}

template <class P>
int32_t ExpertCache::Evict(ExpertKey victim) {
  MOE_CHECK_MSG(victim < num_keys_ && slot_[victim] != kAbsent && pins_[victim] == 0,
                "eviction policy '{}' chose key {}, which is not an unpinned resident expert",
                options_.policy, victim);
  const int32_t code = slot_[victim];
  const int32_t slot = DecodeSlot(code);
  if (code < 0) {  // prefetched, never used
    --unused_prefetched_;
    ++stats_.prefetch_wasted;
    stats_.prefetch_wasted_bytes += options_.expert_bytes;
  }
  static_cast<P*>(PolicyOf(victim))->OnRemove(victim);
  slot_[victim] = kAbsent;
  --resident_;
  if (listener_) NotifyEviction(victim, slot);
  return slot;
}

template <class P>
int32_t ExpertCache::MakeRoom(uint32_t part) {
  int32_t& free = free_count_[part];
  if (free > 0) {
    --free;
    return free_slots_[static_cast<size_t>(part * capacity_per_partition_ + free)];
  }
  const ExpertKey victim = static_cast<P*>(policies_[part])->ChooseVictim(pins_);
  if (victim == kNoExpert) return -1;
  MOE_CHECK_MSG(victim >= num_keys_ || PartitionOf(victim) == part,
                "eviction policy '{}' chose key {} from another partition", options_.policy,
                victim);
  return Evict<P>(victim);
}

template <class P>
ExpertCache::Access ExpertCache::AcquireMiss(ExpertKey key, const AccessHint& hint) {
  const int32_t slot = MakeRoom<P>(PartitionOf(key));
  if (slot < 0) return MakeAccess(Outcome::kNoRoom, -1, false);
  ++stats_.misses;
  slot_[key] = slot;
  pins_[key] = 1;
  ++resident_;
  static_cast<P*>(PolicyOf(key))->OnInsert(key, hint, /*prefetch=*/false);
  return MakeAccess(Outcome::kLoaded, slot, false);
}

// "lru" miss: the list walk, unlink and insert happen in one pass and nothing is loaded twice. A
// miss is mostly a chain of dependent loads (sentinel, tail node, its pin count, its neighbours,
// its slot), so fewer links in that chain is what makes it fast.
ExpertCache::Access ExpertCache::AcquireMissLru(ExpertKey key, uint32_t part) {
  int32_t slot;
  int32_t& free = free_count_[part];
  if (free > 0) [[unlikely]] {
    --free;
    slot = free_slots_[static_cast<size_t>(part * capacity_per_partition_ + free)];
    lru_lists_.Insert(part, key);
    ++resident_;
  } else {
    const ExpertKey victim = lru_lists_.Replace(part, pins_.data(), key);
    if (victim == kNoExpert) return MakeAccess(Outcome::kNoRoom, -1, false);
    const int32_t code = slot_[victim];
    slot = DecodeSlot(code);
    if (code < 0) CountWastedPrefetch();  // prefetched, never used
    slot_[victim] = kAbsent;
    if (listener_) [[unlikely]] {
      NotifyEviction(victim, slot);
    }
  }
  ++stats_.misses;
  slot_[key] = slot;
  pins_[key] = 1;
  return MakeAccess(Outcome::kLoaded, slot, false);
}

ExpertCache::Access ExpertCache::AcquireSlow(ExpertKey key, const AccessHint& hint) {
  MOE_CHECK_MSG(key < num_keys_, "expert key {} out of range [0, {})", key, num_keys_);
  const int32_t code = slot_[key];
  if (code == kAbsent) {
    return lru_ ? AcquireMissLru(key, PartitionOf(key)) : AcquireMiss<EvictionPolicy>(key, hint);
  }
  MOE_CHECK_MSG(pins_[key] != 0xFFFF, "expert key {} pinned 65535 times", key);
  ++pins_[key];
  ++stats_.hits;
  const bool was_prefetched = code < 0;
  if (was_prefetched) {
    slot_[key] = DecodeSlot(code);
    --unused_prefetched_;
    ++stats_.prefetch_useful;
  }
  PolicyOf(key)->OnHit(key, hint);
  return MakeAccess(Outcome::kHit, DecodeSlot(code), was_prefetched);
}

bool ExpertCache::Prefetch(ExpertKey key, const AccessHint& hint) {
  MOE_CHECK_MSG(key < num_keys_, "expert key {} out of range [0, {})", key, num_keys_);
  if (slot_[key] != kAbsent) return false;
  const int32_t slot = MakeRoom<EvictionPolicy>(PartitionOf(key));
  if (slot < 0) return false;
  ++stats_.prefetch_loads;
  slot_[key] = PrefetchedCode(slot);
  ++unused_prefetched_;
  ++resident_;
  PolicyOf(key)->OnInsert(key, hint, /*prefetch=*/true);
  return true;
}

absl::StatusOr<bool> ExpertCache::Erase(ExpertKey key) {
  if (key >= num_keys_) {
    return InvalidArgument("erase: expert key {} out of range [0, {})", key, num_keys_);
  }
  const int32_t code = slot_[key];
  if (code == kAbsent) return false;
  if (pins_[key] > 0) {
    return FailedPrecondition("erase: {} is pinned ({} outstanding acquires)",
                              options_.space.Id(key), pins_[key]);
  }
  if (code < 0) {
    --unused_prefetched_;
    ++stats_.prefetch_wasted;
    stats_.prefetch_wasted_bytes += options_.expert_bytes;
  }
  ++erased_;
  PolicyOf(key)->OnRemove(key);
  slot_[key] = kAbsent;
  --resident_;
  const uint32_t part = PartitionOf(key);
  free_slots_[static_cast<size_t>(part * capacity_per_partition_ + free_count_[part]++)] =
      DecodeSlot(code);
  return true;
}

void ExpertCache::NotifyEviction(ExpertKey key, int32_t slot) { listener_(key, slot); }

void ExpertCache::SetEvictionListener(std::function<void(ExpertKey key, int32_t slot)> listener) {
  listener_ = std::move(listener);
}

const CacheOptions& ExpertCache::options() const { return options_; }
const CacheStats& ExpertCache::stats() const {
  stats_.accesses = stats_.hits + stats_.misses;
  // Every load inserts and every insert stays until evicted or erased.
  stats_.evictions = stats_.loads() - static_cast<uint64_t>(resident_) - erased_;
  stats_.bytes_loaded = stats_.loads() * options_.expert_bytes;
  return stats_;
}
int64_t ExpertCache::capacity_per_partition() const { return capacity_per_partition_; }
int64_t ExpertCache::capacity_total() const { return capacity_total_; }
int64_t ExpertCache::resident_count() const { return resident_; }
uint64_t ExpertCache::used_bytes() const {
  return static_cast<uint64_t>(resident_) * options_.expert_bytes;
}
int64_t ExpertCache::unused_prefetched_count() const { return unused_prefetched_; }

}  // namespace moe
