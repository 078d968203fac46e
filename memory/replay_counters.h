// Count-only LRU and Belady for per-layer caches: the replay tool's fast path for sweeps.
//
// They count exactly what ExpertCache counts with per-layer scope, the "lru" or "belady" policy
// and one token per step (tests/memory/replay_counters_test.cc compares them access by access
// on random traces, repeated experts included), under the same access rule: a token's members
// already resident are hits and are touched first, in order; then its missing members are
// loaded in order (a repeated member is then a hit), each evicting the partition's least
// recently used (LRU) or farthest-next-use (Belady) expert outside the token's set. They keep
// no slots, pins, prefetch state or listeners, which is what lets them be 2x faster:
//   - LRU keeps, per layer, every expert's recency rank (0 = most recent; a byte each). A
//     token's whole set is applied in one pass over the layer's ranks that adds, to every other
//     resident, the number of hits ranked before it plus the number of loads, and drops what
//     falls past the capacity; the pass vectorises (16 experts per instruction).
//   - Belady keeps, per layer, the residents' next uses in `capacity` slots; a miss in a full
//     layer evicts the largest, found by a vectorised scan of the slots.
// Limits (Supports): at most 256 experts per layer, top_k <= 16, and for LRU a capacity below
// 127 - 2 top_k (ranks are bytes). Callers fall back to ExpertCache otherwise.
//
// Thread-safety: none; one counter per thread.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "experts/expert_id.h"

namespace moe {

struct ReplayCounts {
  uint64_t hits = 0;
  uint64_t misses = 0;  // == loads
  uint64_t evictions = 0;
};

class LruReplayCounter {
 public:
  static bool Supports(const ExpertSpace& space, int64_t capacity, int32_t top_k);
  // Aborts unless Supports(space, capacity, top_k) and capacity >= top_k.
  LruReplayCounter(const ExpertSpace& space, int32_t capacity, int32_t top_k);

  // One token at every layer in order: `routing` holds num_layers x top_k expert ids. Aborts
  // with a message on a wrong size or an id out of range.
  void AccessToken(std::span<const uint16_t> routing);
  // Empties every layer (the counts stay).
  void Clear();
  const ReplayCounts& counts() const { return counts_; }

 private:
  void AccessSetInOrder(int8_t* ranks, int32_t& size, const uint16_t* experts);
  // Every layer of one token (ids checked), for layers of kChunks x 16 experts.
  template <int kChunks>
  void AccessLayers(const uint16_t* routing);

  ExpertSpace space_;
  int32_t capacity_;
  int32_t top_k_;
  int32_t stride_;  // bytes of ranks per layer: num_experts rounded up to 16
  void (LruReplayCounter::*access_layers_)(const uint16_t* routing);
  std::vector<int8_t> ranks_;
  std::vector<int32_t> size_;
  std::vector<uint32_t> seen_;  // per expert: stamp of the last set that used it
  uint32_t stamp_ = 0;
  ReplayCounts counts_;
};

class BeladyReplayCounter {
 public:
  static bool Supports(const ExpertSpace& space, int64_t capacity, int32_t top_k);
  // Aborts unless Supports(space, capacity, top_k) and capacity >= top_k.
  BeladyReplayCounter(const ExpertSpace& space, int32_t capacity, int32_t top_k);

  static constexpr uint32_t kNever = 0xFFFFFFFFu;
  // As LruReplayCounter::AccessToken; next_use[i] is the position (in any order-preserving
  // numbering of accesses; kNever if none) of the next access to routing[i]'s expert at its
  // layer. Positions must be > 0.
  void AccessToken(std::span<const uint16_t> routing, std::span<const uint32_t> next_use);
  void Clear();
  const ReplayCounts& counts() const { return counts_; }

 private:
  ExpertSpace space_;
  int32_t capacity_;
  int32_t top_k_;
  int32_t stride_;  // slots per layer: capacity rounded up to 16
  void (*farthest_)(const int32_t* keys, int32_t n, int32_t* slots);
  std::vector<int32_t> keys_;        // per layer and slot: next use (order-mapped) or kNotCandidate
  std::vector<uint16_t> expert_of_;  // per layer and slot: the resident expert
  std::vector<int16_t> slot_of_;     // per layer and expert: its slot, or -1
  std::vector<int32_t> size_;
  ReplayCounts counts_;
};

}  // namespace moe
