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
// Every expert has the same charge, expert_bytes. Slots are numbered [0, total capacity); a
// resident expert keeps its slot until it leaves.
//
// Accounting (CacheStats): every demand access is a hit or a miss; every miss inserts (a demand
// load); every prefetch that inserts is a prefetch load; every eviction is counted; bytes_loaded
// counts demand and prefetch loads. A prefetched expert that is hit before it leaves counts once
// as prefetch_useful; one that leaves unused counts prefetch_wasted (and its bytes).
//
// Thread-safety: none. The owner (replay loop, engine thread) serialises all calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "experts/expert_id.h"
#include "memory/eviction_policy.h"
#include "memory/expert_scores.h"

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

struct CacheStats {
  uint64_t accesses = 0;         // demand accesses (hits + misses)
  uint64_t hits = 0;
  uint64_t misses = 0;           // == demand loads
  uint64_t prefetch_loads = 0;   // prefetches that inserted an expert
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
    int32_t slot;  // valid for kHit and kLoaded
    bool was_prefetched_unused;  // kHit on an expert a prefetch brought in and nobody used yet
  };

  // InvalidArgument when the options are inconsistent (zero sizes, unknown policy, missing
  // scores); ResourceExhausted when the budget holds less than one expert per partition. The
  // message names the budget, the expert size and the resulting capacity.
  static absl::StatusOr<std::unique_ptr<ExpertCache>> Create(const CacheOptions& options);

  // Demand access to `key`: a hit pins it; a miss evicts unpinned experts chosen by the policy
  // until there is room, inserts `key` and pins it. Each call must be matched by Release.
  Access Acquire(ExpertKey key, const AccessHint& hint = {});

  // Brings `key` in without pinning it (a prefetch). Returns false, changing nothing, when `key`
  // is already resident or no unpinned victim exists; true when it inserted (the caller starts
  // the copy). Prefetches never count as accesses.
  bool Prefetch(ExpertKey key, const AccessHint& hint = {});

  // Unpins one Acquire of `key`. MOE_CHECK fails if `key` is not pinned.
  void Release(ExpertKey key);

  // Removes `key` if resident and unpinned (returns true). FailedPrecondition if pinned.
  absl::StatusOr<bool> Erase(ExpertKey key);

  // Called with each evicted key, after the policy chose it and before its slot is reused.
  void SetEvictionListener(std::function<void(ExpertKey key, int32_t slot)> listener);

  bool Contains(ExpertKey key) const;
  int32_t SlotOf(ExpertKey key) const;  // -1 when not resident
  int32_t PinCount(ExpertKey key) const;

  const CacheOptions& options() const;
  const CacheStats& stats() const;
  int64_t capacity_per_partition() const;
  int64_t capacity_total() const;       // number of slots
  int64_t resident_count() const;
  uint64_t used_bytes() const;          // resident_count() * expert_bytes; <= budget_bytes
  // Prefetched experts still resident and never used (not yet counted as wasted).
  int64_t unused_prefetched_count() const;

  ~ExpertCache();

 private:
  struct Impl;
  explicit ExpertCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe
