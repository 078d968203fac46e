// Acquiring the set of experts one layer of one step needs, in waves that fit the cache.
//
// This is the one access rule shared by the live engine and by replay of multi-token steps, so
// both count the same hits and misses:
//   - the keys are the distinct experts the step's tokens route to at the layer, in order of
//     first use (token order, then rank order within a token);
//   - a wave first pins every member already resident (hits), then loads missing members in
//     order until one finds no unpinned victim in its partition (every slot pinned);
//   - `visit(wave)` runs with the wave pinned (the engine copies loaded experts into their slots
//     and computes them); then the wave is released and the next wave takes the remaining keys.
// With enough capacity there is one wave, and a load never evicts a member of the set. One
// access per distinct expert per layer-step is counted.
//
// Thread-safety: as ExpertCache (the caller serialises).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "memory/expert_cache.h"
#include "runtime/status.h"

namespace moe {

struct AcquiredExpert {
  ExpertKey key = kNoExpert;
  int32_t slot = -1;
  bool loaded = false;                 // a miss: the caller fills the slot
  bool was_prefetched_unused = false;  // a hit on a prefetched, not yet used expert
  uint32_t index = 0;                  // position of the key in the caller's list
};

// `hints` is empty or parallel to `keys`. `wave` and `pending` are caller-owned scratch (no
// allocation once they have grown). Internal error when not even one expert can be pinned
// (a partition whose every slot is pinned by someone else).
template <typename Visit>
absl::Status AcquireInWaves(ExpertCache& cache, std::span<const ExpertKey> keys,
                            std::span<const AccessHint> hints, std::vector<AcquiredExpert>& wave,
                            std::vector<uint32_t>& pending, Visit&& visit) {
  pending.clear();
  for (uint32_t i = 0; i < keys.size(); ++i) pending.push_back(i);
  auto acquire = [&](uint32_t i) {
    const ExpertCache::Access a = cache.Acquire(keys[i], hints.empty() ? AccessHint{} : hints[i]);
    if (a.outcome == ExpertCache::Outcome::kNoRoom) return false;
    wave.push_back(AcquiredExpert{keys[i], a.slot, a.outcome == ExpertCache::Outcome::kLoaded,
                                  a.was_prefetched_unused, i});
    return true;
  };
  while (!pending.empty()) {
    wave.clear();
    size_t kept = 0;
    for (uint32_t i : pending) {  // resident members first: they can never be evicted after
      if (!cache.Contains(keys[i]) || !acquire(i)) pending[kept++] = i;
    }
    pending.resize(kept);
    kept = 0;
    bool room = true;
    for (uint32_t i : pending) {
      if (!room || !(room = acquire(i))) pending[kept++] = i;
    }
    pending.resize(kept);
    if (wave.empty()) {
      return Internal("no unpinned expert to evict for layer {} (capacity {} per partition)",
                      cache.options().space.LayerOf(keys[pending.front()]),
                      cache.capacity_per_partition());
    }
    absl::Status status = visit(std::span<const AcquiredExpert>(wave));
    for (const AcquiredExpert& a : wave) cache.Release(a.key);
    MOE_RETURN_IF_ERROR(status);
  }
  return absl::OkStatus();
}

}  // namespace moe
