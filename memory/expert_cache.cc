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
// AccessSet/AccessToken (the replay loop's count-only path) go further: one call per token,
// the member arrays read once into raw pointers (through the vectors every store made GCC reload
// them), LRU hits and full-partition misses inline, counters kept in registers. On the
// DeepSeek-V2-Lite trace that took `moe-replay` from 12 to 18 M decisions/s on a 2.45 GHz EPYC,
// against 24 M/s for a hand-written list LRU with no pins, checks or statistics. Tried and
// dropped: LRU by per-slot timestamps with a (SIMD) minimum scan per miss: 10-12 M/s.
#include "memory/expert_cache.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <string>
#include <utility>

#include "memory/lru_policy.h"
#include "runtime/status.h"

namespace moe {
void CheckRoutingRow(const ExpertSpace& space, int32_t top_k, std::span<const uint16_t> routing,
                     std::string_view who) {
  MOE_CHECK_MSG(top_k > 0 && routing.size() == size_t(space.num_layers) * size_t(top_k),
                "{}: {} ids for {} layers x top_k {}", who, routing.size(), space.num_layers,
                top_k);
  // One pass over the row checks every id (it vectorises), so per-layer loops need not.
  uint16_t largest = 0;
  for (uint16_t e : routing) largest = std::max(largest, e);
  MOE_CHECK_MSG(largest < space.num_experts, "{}: expert {} out of range [0, {})", who, largest,
                space.num_experts);
}

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
inline int32_t ExpertCache::LoadLru(ExpertKey key, uint32_t part) {
  int32_t slot;
  int32_t& free = free_count_[part];
  if (free > 0) [[unlikely]] {
    --free;
    slot = free_slots_[static_cast<size_t>(part * capacity_per_partition_ + free)];
    lru_lists_.Insert(part, key);
    ++resident_;
  } else {
    const ExpertKey victim = lru_lists_.Replace(part, pins_.data(), key);
    if (victim == kNoExpert) return -1;
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
  return slot;
}

ExpertCache::Access ExpertCache::AcquireMissLru(ExpertKey key, uint32_t part) {
  const int32_t slot = LoadLru(key, part);
  return MakeAccess(slot < 0 ? Outcome::kNoRoom : Outcome::kLoaded, slot, false);
}

bool ExpertCache::AccessSet(ExpertKey layer_first, std::span<const uint16_t> experts) {
  const uint32_t part = PartitionOf(layer_first);
  CheckLayerFirst(layer_first, part);
  if (!lru_ || experts.size() > 64) return AccessSetGeneric(layer_first, experts);
  RawView raw = RawState();
  const bool room = AccessSetLru<true>(part, layer_first, experts.data(),
                                       static_cast<uint32_t>(experts.size()), raw);
  FlushCounts(raw);
  return room;
}

int32_t ExpertCache::AccessToken(std::span<const uint16_t> routing, int32_t top_k) {
  const ExpertSpace& space = options_.space;
  CheckRoutingRow(space, top_k, routing, "access token");
  if (!lru_ || top_k > 64) {
    for (int32_t l = 0; l < space.num_layers; ++l) {
      const uint16_t* experts = routing.data() + size_t(l) * size_t(top_k);
      if (!AccessSetGeneric(space.Key(l, 0), {experts, static_cast<size_t>(top_k)})) return l;
    }
    return -1;
  }
  RawView raw = RawState();
  const auto k = static_cast<uint32_t>(top_k);
  for (int32_t l = 0; l < space.num_layers; ++l) {
    const uint16_t* experts = routing.data() + size_t(l) * k;
    if (!AccessSetLru<false>(layer_scope_ ? static_cast<uint32_t>(l) : 0, space.Key(l, 0), experts,
                             k, raw)) {
      FlushCounts(raw);
      return l;
    }
  }
  FlushCounts(raw);
  return -1;
}

void ExpertCache::CheckLayerFirst(ExpertKey layer_first, uint32_t part) const {
  // All the set's keys are in `part` when layer_first starts a layer (with layer scope; there is
  // one partition otherwise). A multiply checks it: a division here cost ~10% of the call.
  MOE_CHECK_MSG(layer_first < num_keys_ &&
                    (!layer_scope_ || part * uint32_t(options_.space.num_experts) == layer_first),
                "access set: {} is not a layer's first expert key", layer_first);
}

// The LRU path of Acquire with the partition computed once, the hits and the common miss (a full
// partition) inline over raw pointers: as fast as a hand-written LRU loop, nearly (the replay
// tool runs this tens of millions of times per second).
template <bool kCheckIds>
[[gnu::always_inline]] inline bool ExpertCache::AccessSetLru(uint32_t part, ExpertKey layer_first,
                                                             const uint16_t* experts, uint32_t n,
                                                             RawView& raw) {
  const auto num_experts = static_cast<uint32_t>(options_.space.num_experts);
  int32_t* const slots = raw.slots;
  uint16_t* const pins = raw.pins;
  const internal::IndexLists::Raw& lists = raw.lists;
  uint64_t missing = 0;  // bit j: experts[j] was not resident
  uint64_t& hits = raw.hits;
  for (uint32_t j = 0; j < n; ++j) {
    if constexpr (kCheckIds) {
      MOE_CHECK_MSG(experts[j] < num_experts, "access set: expert {} out of range [0, {})",
                    experts[j], num_experts);
    }
    const ExpertKey key = layer_first + experts[j];
    const int32_t code = slots[key];
    if (code >= 0 && pins[key] != 0xFFFF) [[likely]] {
      ++pins[key];
      ++hits;
      lists.MoveToFront(part, key);
    } else if (code == kAbsent) {
      missing |= uint64_t{1} << j;
    } else {
      AcquireSlow(key, AccessHint{});  // a prefetched expert's first use, or a pin overflow
    }
  }
  bool room = true;
  const bool full = raw.no_listener && free_count_[part] == 0;
  uint64_t& misses = raw.misses;
  for (uint64_t left = missing; left != 0; left &= left - 1) {
    const uint32_t j = static_cast<uint32_t>(std::countr_zero(left));
    const ExpertKey key = layer_first + experts[j];
    if (slots[key] != kAbsent) [[unlikely]] {  // a repeated expert, loaded for an earlier copy
      Acquire(key);                            // a hit, as Acquire one by one would count it
      continue;
    }
    if (full) {
      const uint32_t end = lists.num_nodes + part;
      uint32_t victim = lists.links[end].prev;
      while (victim != end && pins[victim] != 0) victim = lists.links[victim].prev;
      if (victim != end) [[likely]] {
        const int32_t code = slots[victim];
        if (code < 0) CountWastedPrefetch();  // prefetched, never used
        slots[victim] = kAbsent;
        lists.Remove(victim);
        lists.PushFront(part, key);
        slots[key] = DecodeSlot(code);
        pins[key] = 1;
        ++misses;
        continue;
      }
    } else if (LoadLru(key, part) >= 0) {
      continue;
    }
    room = false;
    missing = left;  // experts[j] and the later misses were not acquired
    break;
  }
  if (room) [[likely]] {
    for (uint32_t j = 0; j < n; ++j) --pins[layer_first + experts[j]];  // each acquired above
    return true;
  }
  for (uint32_t j = 0; j < n; ++j) {
    if (!(missing >> j & 1)) Release(layer_first + experts[j]);
  }
  return false;
}

bool ExpertCache::AccessSetGeneric(ExpertKey layer_first, std::span<const uint16_t> experts) {
  const auto num_experts = static_cast<uint32_t>(options_.space.num_experts);
  for (uint16_t e : experts) {
    MOE_CHECK_MSG(e < num_experts, "access set: expert {} out of range [0, {})", e, num_experts);
  }
  // Resident members first (hits cannot fail), then the others in order: a repeated expert is
  // then a hit on its first copy's load, as acquiring one by one counts it.
  std::vector<uint8_t> acquired(experts.size(), 0);
  for (size_t j = 0; j < experts.size(); ++j) {
    const ExpertKey key = layer_first + experts[j];
    if (Contains(key)) acquired[j] = Acquire(key).outcome != Outcome::kNoRoom;
  }
  bool room = true;
  for (size_t j = 0; j < experts.size() && room; ++j) {
    if (acquired[j]) continue;
    room = Acquire(layer_first + experts[j]).outcome != Outcome::kNoRoom;
    acquired[j] = room;
  }
  for (size_t j = 0; j < experts.size(); ++j) {
    if (acquired[j]) Release(layer_first + experts[j]);
  }
  return room;
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
