// The expert cache: which experts are resident in the (device) expert arena, under a byte
// budget, with pins and a pluggable eviction policy. Shaped after LevelDB's Cache: an access
// pins, Release unpins, and a pinned expert is never evicted.
//
// The cache tracks residency, slots and statistics only; it moves no bytes. The live engine
// copies an expert into the slot the cache assigns (SlotOf) and the replay tool only counts.
// Both run this same code, so a replayed hit rate predicts a live one.
//
// Scope:
//   kLayer:  the budget is split evenly over MoE layers; each layer is its own partition with its
//            own policy instance (capacity = budget / expert_bytes / num_layers entries).
//   kGlobal: one partition over all layers (capacity = budget / expert_bytes entries).
// A capacity larger than the partition's number of experts (num_experts per layer, or all keys)
// is clamped to it: such slots could never fill. Every expert has the same charge, expert_bytes.
// Slots are numbered [0, capacity_total()); with kLayer, layer l owns the slots
// [l * capacity_per_partition(), (l + 1) * capacity_per_partition()). A resident expert keeps its
// slot until it leaves.
//
// Accounting (CacheStats): every demand access is a hit or a miss; every miss inserts (a demand
// load); every prefetch that inserts is a prefetch load; every eviction is counted (Erase is not
// an eviction); bytes_loaded counts demand and prefetch loads. A kNoRoom Acquire changes nothing
// and is not counted. A prefetched expert that is hit before it leaves counts once as
// prefetch_useful; one that leaves unused (evicted or erased) counts prefetch_wasted (and its
// bytes).
//
// Cost: Acquire and Release are inline for plain hits; with "lru" a miss is one more call and a
// few list moves. Per-key state is dense arrays indexed by ExpertKey; nothing allocates after
// Create. See memory/expert_cache.cc and bench/cache_bench.cc.
//
// Thread-safety: none. The owner (replay loop, engine thread) serialises all calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "experts/expert_id.h"
#include "memory/eviction_policy.h"
#include "memory/expert_scores.h"
#include "memory/lru_policy.h"  // internal; for the inline hit path

namespace moe {

enum class CacheScope { kLayer, kGlobal };

// Parses "layer" / "global".
absl::StatusOr<CacheScope> ParseCacheScope(std::string_view name);
std::string_view CacheScopeName(CacheScope scope);

struct CacheOptions {
  ExpertSpace space;
  uint64_t expert_bytes = 0;  // charge of one expert; > 0
  uint64_t budget_bytes = 0;  // total device bytes the cache may hold
  CacheScope scope = CacheScope::kLayer;
  std::string policy = "lru";
  const ExpertScores* scores = nullptr;  // for the "predictive" policy; must outlive the cache
};

// Aborts (MOE_CHECK) unless `routing` is one token's row: num_layers x top_k expert ids, each
// below num_experts; the message starts with `who`. Used by the one-call token accesses.
void CheckRoutingRow(const ExpertSpace& space, int32_t top_k, std::span<const uint16_t> routing,
                     std::string_view who);

struct CacheStats {
  uint64_t accesses = 0;  // demand accesses (hits + misses)
  uint64_t hits = 0;
  uint64_t misses = 0;          // == demand loads
  uint64_t prefetch_loads = 0;  // prefetches that inserted an expert
  uint64_t evictions = 0;
  uint64_t bytes_loaded = 0;     // (misses + prefetch_loads) * expert_bytes
  uint64_t prefetch_useful = 0;  // prefetched experts later hit on demand
  uint64_t prefetch_wasted = 0;  // prefetched experts that left the cache unused
  uint64_t prefetch_wasted_bytes = 0;

  uint64_t loads() const { return misses + prefetch_loads; }
  double hit_rate() const { return accesses ? double(hits) / double(accesses) : 0.0; }
};

class ExpertCache {
 public:
  enum class Outcome : uint8_t {
    kHit,     // was resident; now pinned
    kLoaded,  // was missing; inserted (evicting as needed) and pinned: the caller fills the slot
    kNoRoom,  // was missing and every resident expert of its partition is pinned; nothing changed
  };
  struct Access {
    Outcome outcome;
    int32_t slot;                // valid for kHit and kLoaded
    bool was_prefetched_unused;  // kHit on an expert a prefetch brought in and nobody used yet
  };

  // InvalidArgument when the options are inconsistent (zero sizes, unknown policy, missing
  // scores); ResourceExhausted when the budget holds less than one expert per partition. The
  // message names the budget, the expert size and the resulting capacity.
  static absl::StatusOr<std::unique_ptr<ExpertCache>> Create(const CacheOptions& options);

  // Demand access to `key`: a hit pins it; a miss evicts unpinned experts chosen by the policy
  // until there is room, inserts `key` and pins it. Each call must be matched by Release.
  // Only pinned experts are safe: a miss may evict a resident expert that the caller means to
  // acquire next, so a caller needing a set together acquires its resident members first
  // (Contains) and then the missing ones. kNoRoom: every resident expert of the partition is
  // pinned (e.g. a set larger than the capacity); nothing changed and nothing was counted.
  Access Acquire(ExpertKey key, const AccessHint& hint = {});

  // The demand access of one token at one layer, released at once: exactly Acquire of the
  // experts `layer_first + experts[j]` that are resident, in order, then of the missing ones, in
  // order, then Release of all, in one call (the replay tool's hot loop; no AccessHint, so not
  // for "belady"). `layer_first` is space.Key(layer, 0) and every expert < num_experts
  // (MOE_CHECK). Returns false when a missing expert found every entry of its partition pinned;
  // the members acquired before it are released and stay counted.
  bool AccessSet(ExpertKey layer_first, std::span<const uint16_t> experts);
  // AccessSet at every MoE layer in order, for one token whose `routing` holds top_k experts
  // per layer (num_layers x top_k ids, layer-major). Returns -1, or the first layer whose set
  // found no room (AccessSet returned false; later layers were not accessed).
  int32_t AccessToken(std::span<const uint16_t> routing, int32_t top_k);

  // Brings `key` in without pinning it (a prefetch). Returns false, changing nothing, when `key`
  // is already resident or no unpinned victim exists; true when it inserted (the caller starts
  // the copy). Prefetches never count as accesses.
  bool Prefetch(ExpertKey key, const AccessHint& hint = {});

  // Unpins one Acquire of `key`. MOE_CHECK fails if `key` is not pinned.
  void Release(ExpertKey key);

  // Removes `key` if resident and unpinned (returns true). FailedPrecondition if pinned.
  absl::StatusOr<bool> Erase(ExpertKey key);

  // Called with each evicted key and the slot it held, after it left (Contains(key) is false)
  // and before its slot is reused. Not called by Erase.
  void SetEvictionListener(std::function<void(ExpertKey key, int32_t slot)> listener);

  bool Contains(ExpertKey key) const { return key < num_keys_ && slot_[key] != kAbsent; }
  int32_t SlotOf(ExpertKey key) const {  // -1 when not resident
    return key < num_keys_ && slot_[key] != kAbsent ? DecodeSlot(slot_[key]) : -1;
  }
  int32_t PinCount(ExpertKey key) const { return key < num_keys_ ? pins_[key] : 0; }

  const CacheOptions& options() const;
  const CacheStats& stats() const;
  int64_t capacity_per_partition() const;
  int64_t capacity_total() const;  // number of slots
  int64_t resident_count() const;
  uint64_t used_bytes() const;  // resident_count() * expert_bytes; <= budget_bytes
  // Prefetched experts still resident and never used (not yet counted as wasted).
  int64_t unused_prefetched_count() const;

  ~ExpertCache();

 private:
  explicit ExpertCache(const CacheOptions& options);
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // slot_[key] encodes residency and the prefetch flag in one int32, so a plain hit tests one
  // value: >= 0 resident with that slot; -1 absent; <= -2 resident, prefetched and unused, with
  // slot -(value + 2).
  static constexpr int32_t kAbsent = -1;
  static int32_t PrefetchedCode(int32_t slot) { return -slot - 2; }
  static int32_t DecodeSlot(int32_t code) { return code >= 0 ? code : -code - 2; }

  static Access MakeAccess(Outcome outcome, int32_t slot, bool prefetched);
  // Everything but a plain hit: range check, pin overflow, prefetched hits, misses.
  [[gnu::noinline]] Access AcquireSlow(ExpertKey key, const AccessHint& hint);
  [[noreturn, gnu::noinline, gnu::cold]] void ReleaseFailed(ExpertKey key) const;
  // The miss path. P is the static type of the partitions' policies: internal::LruPolicy
  // (final, so calls are direct and inline) or EvictionPolicy (virtual calls).
  template <class P>
  Access AcquireMiss(ExpertKey key, const AccessHint& hint);
  [[gnu::noinline]] Access AcquireMissLru(ExpertKey key, uint32_t part);
  // The "lru" miss of `key` in partition `part`: its slot, or -1 (nothing changed) when every
  // entry is pinned.
  int32_t LoadLru(ExpertKey key, uint32_t part);
  bool AccessSetGeneric(ExpertKey layer_first, std::span<const uint16_t> experts);
  // AccessSet's hot path: raw views of the per-key arrays and the LRU lists, taken once per
  // call (nothing reallocates them after Create).
  // The hits and misses it counts are added to stats_ by FlushCounts.
  struct RawView {
    int32_t* slots;
    uint16_t* pins;
    internal::IndexLists::Raw lists;
    bool no_listener;
    uint64_t hits = 0;
    uint64_t misses = 0;
  };
  RawView RawState() { return {slot_.data(), pins_.data(), lru_lists_.raw_lists(), !listener_}; }
  void FlushCounts(const RawView& raw) {
    stats_.hits += raw.hits;
    stats_.misses += raw.misses;
  }
  // kCheckIds: MOE_CHECK every id < num_experts (AccessToken checks its row at once instead).
  template <bool kCheckIds>
  bool AccessSetLru(uint32_t part, ExpertKey layer_first, const uint16_t* experts, uint32_t n,
                    RawView& raw);
  void CheckLayerFirst(ExpertKey layer_first, uint32_t part) const;
  [[gnu::noinline]] void NotifyEviction(ExpertKey key, int32_t slot);
  void CountWastedPrefetch() {
    --unused_prefetched_;
    ++stats_.prefetch_wasted;
    stats_.prefetch_wasted_bytes += options_.expert_bytes;
  }
  // Frees a slot in partition `part` (evicting if needed); -1 when every entry is pinned.
  template <class P>
  int32_t MakeRoom(uint32_t part);
  // Evicts resident, unpinned `victim`; returns its (now free) slot.
  template <class P>
  int32_t Evict(ExpertKey victim);
  // key / num_experts (layer scope) or 0 (global) without a division or a per-key table: the
  // high half of key * magic, exact for 32-bit keys (checked for every key at construction);
  // the mask covers num_experts == 1, where the magic would need 65 bits.
  uint32_t PartitionOf(ExpertKey key) const {
    return static_cast<uint32_t>((static_cast<unsigned __int128>(key) * partition_magic_) >> 64) +
           (key & partition_mask_);
  }
  EvictionPolicy* PolicyOf(ExpertKey key) const { return policies_[PartitionOf(key)]; }

  CacheOptions options_;
  mutable CacheStats stats_;  // accesses, evictions and bytes_loaded are derived in stats()
  uint64_t erased_ = 0;
  bool layer_scope_;
  bool lru_;  // every partition runs internal::LruPolicy (a final class): calls skip the vtable
  uint32_t num_keys_;
  uint64_t partition_magic_ = 0;
  uint32_t partition_mask_ = 0;
  int64_t capacity_per_partition_;
  int64_t capacity_total_;
  int64_t resident_ = 0;
  int64_t unused_prefetched_ = 0;
  std::vector<int32_t> slot_;              // per key, encoded as above
  std::vector<uint16_t> pins_;             // per key: outstanding Acquires
  std::vector<int32_t> free_slots_;        // partition p's free slots: a stack at p * capacity
  std::vector<int32_t> free_count_;        // per partition: size of its stack
  std::vector<EvictionPolicy*> policies_;  // per partition; owned by one of the two below
  std::vector<std::unique_ptr<EvictionPolicy>> owned_policies_;  // other than "lru"
  internal::LruLists lru_lists_;  // "lru": the lists of every partition (else empty)
  std::vector<internal::LruPolicy> lru_policies_;  // "lru": views of lru_lists_
  std::function<void(ExpertKey, int32_t)> listener_;
};

// The plain hit and Release are inline: the replay loop runs tens of millions of them per second.
inline ExpertCache::Access ExpertCache::Acquire(ExpertKey key, const AccessHint& hint) {
  if (key < num_keys_) [[likely]] {
    const int32_t slot = slot_[key];
    uint16_t& pins = pins_[key];
    if (lru_) {
      const uint32_t part = PartitionOf(key);
      if (slot >= 0 && pins != 0xFFFF) [[likely]] {
        ++pins;
        ++stats_.hits;
        lru_lists_.Touch(part, key);
        return MakeAccess(Outcome::kHit, slot, false);
      }
      if (slot == kAbsent) return AcquireMissLru(key, part);
    } else if (slot >= 0 && pins != 0xFFFF) [[likely]] {
      ++pins;
      ++stats_.hits;
      PolicyOf(key)->OnHit(key, hint);
      return MakeAccess(Outcome::kHit, slot, false);
    }
  }
  return AcquireSlow(key, hint);
}

inline void ExpertCache::Release(ExpertKey key) {
  if (key >= num_keys_ || pins_[key] == 0) [[unlikely]] {
    ReleaseFailed(key);
  }
  --pins_[key];
}

inline ExpertCache::Access ExpertCache::MakeAccess(Outcome outcome, int32_t slot, bool prefetched) {
  // Assembled in registers: aggregate initialisation makes GCC 12 build the 12-byte value on the
  // stack with narrow stores and reload it with wide loads, a store-forwarding stall that cost
  // about a third of a hit.
  static_assert(sizeof(Access) == 12 && offsetof(Access, outcome) == 0 &&
                offsetof(Access, slot) == 4 && offsetof(Access, was_prefetched_unused) == 8);
  const uint64_t low =
      uint64_t{static_cast<uint8_t>(outcome)} | (uint64_t{static_cast<uint32_t>(slot)} << 32);
  const uint32_t high = prefetched ? 1 : 0;
  Access access;
  std::memcpy(&access, &low, sizeof(low));
  std::memcpy(reinterpret_cast<char*>(&access) + sizeof(low), &high, sizeof(high));
  return access;
}

}  // namespace moe
