// "belady": the offline optimum (Belady's MIN). Evicts the resident unpinned key whose next use
// is farthest in the future; AccessHint::kNever is farther than any position. Ties (several keys
// never used again, or equal positions) go to whichever the scan or heap meets first: any choice
// among them is optimal.
//
// Needs the future: every OnInsert and OnHit must carry AccessHint::next_use (a position in the
// caller's access order, or kNever). kUnknown there is a bug in the caller (a replay that forgot
// its oracle, or the live engine configured with "belady") and fails a MOE_CHECK.
//
// Optimality with pins and k-sets: the cache pins the experts of the step in flight as it
// acquires them, so a victim is never one of them. Farthest-in-future among the unpinned keys is
// still optimal: the usual exchange argument only swaps evictions of keys that are not requested
// before the point of exchange, and such keys are never pinned. It is exact when next_use counts
// individual accesses; with one position per step (token x layer) keys due in the same step tie,
// which costs nothing because all of them must be resident together anyway.
//
// Two layouts of one packed array of resident (next_use, key) entries, picked by capacity:
//   capacity <= kScanCapacity (layer scope: 16 or so per layer): unordered; a victim is one
//     branch-free linear scan (a few cache lines, no pointer chasing), a hit is one store. Faster
//     than any ordered structure at this size.
//   larger (global scope, hundreds of entries): an indexed binary max-heap on next_use (pos_ maps
//     a key to its entry). A hit raises the key's next_use from "now", the smallest of all
//     residents (so the key sits at a leaf), to a random future position: a sift-up of O(1)
//     expected steps. The victim is the root unless pinned; pinned keys (the few of the step in
//     flight, whose fresh next uses may well be the largest) are stepped over by a best-first
//     walk down the heap, which looks at about (pinned + 1) x 2 entries. An eviction is one
//     O(log n) sift-down. Unlike a heap with lazy deletion, nothing stale accumulates.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "memory/policies.h"
#include "runtime/status.h"

namespace moe::internal {
namespace {

constexpr int64_t kScanCapacity = 64;
constexpr uint32_t kNotResident = 0xFFFFFFFFu;

class BeladyPolicy final : public EvictionPolicy {
 public:
  explicit BeladyPolicy(const PolicyContext& context)
      : use_heap_(context.capacity > kScanCapacity),
        pos_(static_cast<size_t>(context.space.size()), kNotResident) {
    entries_.reserve(static_cast<size_t>(context.capacity));
  }

  std::string_view name() const override { return "belady"; }

  void OnInsert(ExpertKey key, const AccessHint& hint, bool) override {
    CheckHint(key, hint);
    const uint32_t i = static_cast<uint32_t>(entries_.size());
    entries_.push_back({hint.next_use, key});
    pos_[key] = i;
    if (use_heap_) SiftUp(i);
  }

  void OnHit(ExpertKey key, const AccessHint& hint) override {
    CheckHint(key, hint);
    const uint32_t i = pos_[key];
    const uint64_t old = entries_[i].next;
    entries_[i].next = hint.next_use;
    if (use_heap_) {
      if (hint.next_use > old) {
        SiftUp(i);
      } else {
        SiftDown(i);
      }
    }
  }

  void OnRemove(ExpertKey key) override {
    const uint32_t i = pos_[key];
    pos_[key] = kNotResident;
    const Entry last = entries_.back();
    entries_.pop_back();
    if (i == entries_.size()) return;
    const uint64_t old = entries_[i].next;
    entries_[i] = last;
    pos_[last.key] = i;
    if (use_heap_) {
      if (last.next > old) {
        SiftUp(i);
      } else {
        SiftDown(i);
      }
    }
  }

  ExpertKey ChooseVictim(std::span<const uint16_t> pins) override {
    return use_heap_ ? HeapVictim(pins) : ScanVictim(pins);
  }

 private:
  struct Entry {
    uint64_t next;
    ExpertKey key;
  };

  static void CheckHint(ExpertKey key, const AccessHint& hint) {
    MOE_CHECK_MSG(hint.next_use != AccessHint::kUnknown,
                  "eviction policy 'belady' needs AccessHint::next_use on every access "
                  "(key {} came without one)",
                  key);
  }

  // The scan ranks an entry 0 when pinned, else next_use + 1 (kNever stays the largest; kUnknown
  // never gets here), and keeps the largest with masks: which entries are pinned, and where the
  // maximum is, follow no pattern a branch predictor could learn.
  ExpertKey ScanVictim(std::span<const uint16_t> pins) const {
    uint64_t best_rank = 0;
    uint64_t best = kNoExpert;
    for (const Entry& e : entries_) {
      const uint64_t unpinned = uint64_t{0} - uint64_t{pins[e.key] == 0};
      const uint64_t rank = (e.next + uint64_t{e.next != AccessHint::kNever}) & unpinned;
      const uint64_t take = uint64_t{0} - uint64_t{rank > best_rank};
      best_rank = (rank & take) | (best_rank & ~take);
      best = (uint64_t{e.key} & take) | (best & ~take);
    }
    return static_cast<ExpertKey>(best);
  }

  ExpertKey HeapVictim(std::span<const uint16_t> pins) {
    if (entries_.empty()) return kNoExpert;
    if (pins[entries_[0].key] == 0) return entries_[0].key;
    // Best-first walk: the frontier holds heap indices whose ancestors are all pinned; the
    // largest frontier entry is the largest entry not yet looked at.
    frontier_.clear();
    frontier_.push_back(0);
    for (int steps = 0; !frontier_.empty(); ++steps) {
      if (steps > 64) return ScanVictim(pins);  // almost everything pinned: plain scan
      size_t best = 0;
      for (size_t f = 1; f < frontier_.size(); ++f) {
        if (entries_[frontier_[f]].next > entries_[frontier_[best]].next) best = f;
      }
      const uint32_t i = frontier_[best];
      if (pins[entries_[i].key] == 0) return entries_[i].key;
      frontier_[best] = frontier_.back();
      frontier_.pop_back();
      for (uint32_t child = 2 * i + 1; child <= 2 * i + 2; ++child) {
        if (child < entries_.size()) frontier_.push_back(child);
      }
    }
    return kNoExpert;
  }

  void Place(uint32_t i, const Entry& e) {
    entries_[i] = e;
    pos_[e.key] = i;
  }
  void SiftUp(uint32_t i) {
    const Entry e = entries_[i];
    while (i > 0) {
      const uint32_t parent = (i - 1) / 2;
      if (entries_[parent].next >= e.next) break;
      Place(i, entries_[parent]);
      i = parent;
    }
    Place(i, e);
  }
  void SiftDown(uint32_t i) {
    const Entry e = entries_[i];
    const uint32_t n = static_cast<uint32_t>(entries_.size());
    while (true) {
      uint32_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && entries_[child + 1].next > entries_[child].next) ++child;
      if (entries_[child].next <= e.next) break;
      Place(i, entries_[child]);
      i = child;
    }
    Place(i, e);
  }

  bool use_heap_;
  std::vector<uint32_t> pos_;       // per key: index into entries_, or kNotResident
  std::vector<Entry> entries_;      // resident keys: unordered (scan) or a max-heap on next
  std::vector<uint32_t> frontier_;  // HeapVictim scratch
};

}  // namespace

std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(const PolicyContext& context) {
  return std::make_unique<BeladyPolicy>(context);
}

}  // namespace moe::internal
