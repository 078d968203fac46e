// Eviction policies for the expert cache, chosen by name.
//
// A policy instance manages one cache partition (one MoE layer with per-layer scope, or the
// whole cache with global scope). The cache tells it what happens (insert, hit, remove) and asks
// it for a victim; the cache itself owns residency, pins, slots and statistics. Policies see
// only keys, never bytes, so the same policy code serves offline replay and the live engine.
//
// Names (MakeEvictionPolicy):
//   "lru"        least recently used
//   "lfu"        least frequently used (count since insertion; ties broken by recency)
//   "arc"        adaptive recency/frequency (ARC: balances a recency list and a frequency
//                list, adapting the split with ghost hits); see the .cc for the exact rule
//   "lrfu"       recency-weighted frequency (LRFU): evicts the smallest sum of
//                decay^(age) over past accesses; half-life 5 x capacity accesses
//   "predictive" predictor-aware: evicts the resident expert with the lowest ExpertScores value,
//                ties broken by LRU; requires PolicyContext::scores
//   "belady"     offline optimum: evicts the expert whose next use is farthest in the future;
//                requires AccessHint::next_use on every insert and hit (replay only; kUnknown
//                there is a caller bug and fails a MOE_CHECK). Prefetches need it too.
//
// Thread-safety: none; a policy is driven by its cache's owning thread.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "experts/expert_id.h"
#include "memory/expert_scores.h"

namespace moe {

// What the caller knows about an access at the moment it happens.
struct AccessHint {
  static constexpr uint64_t kUnknown = std::numeric_limits<uint64_t>::max() - 1;
  static constexpr uint64_t kNever = std::numeric_limits<uint64_t>::max();
  // Position (in the caller's access order) of the next demand access to this expert after
  // this one; kNever if none; kUnknown when the caller has no oracle (the live engine).
  uint64_t next_use = kUnknown;
};

struct PolicyContext {
  ExpertSpace space;                     // keys range over [0, space.size())
  int64_t capacity = 0;                  // entries this partition can hold
  const ExpertScores* scores = nullptr;  // required by "predictive"; may be null otherwise
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view name() const = 0;

  // `key` became resident (a demand load, or a prefetch when `prefetch` is true).
  virtual void OnInsert(ExpertKey key, const AccessHint& hint, bool prefetch) = 0;
  // A resident `key` was accessed on demand.
  virtual void OnHit(ExpertKey key, const AccessHint& hint) = 0;
  // A resident `key` left the partition (evicted or erased).
  virtual void OnRemove(ExpertKey key) = 0;
  // Returns a resident key of this partition whose pins[key] == 0, or kNoExpert when every
  // resident key is pinned. Does not remove it (the cache calls OnRemove when it does).
  virtual ExpertKey ChooseVictim(std::span<const uint16_t> pins) = 0;
};

// Creates a policy by name; InvalidArgument names the unknown policy and lists the valid ones,
// or says which context field a policy is missing.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name,
                                                                   const PolicyContext& context);

// Every name MakeEvictionPolicy accepts, in a stable order.
std::span<const std::string_view> EvictionPolicyNames();

// True for policies that need AccessHint::next_use (offline only).
bool PolicyNeedsFuture(std::string_view name);

}  // namespace moe
