// "arc": adaptive recency/frequency, ARC (Megiddo and Modha, FAST 2003) adapted to a cache with
// pins and to the EvictionPolicy protocol.
//
// Lists (c = capacity):
//   T1  resident keys used once since they came in (recency side), most recent first
//   T2  resident keys used at least twice (frequency side)
//   B1  ghosts: keys recently evicted from T1 (no data, just the key)
//   B2  ghosts: keys recently evicted from T2
// and a target p in [0, c] for |T1|. Invariants kept: |T1| + |T2| <= c (the cache enforces it),
// |T1| + |B1| <= c, |T1| + |T2| + |B1| + |B2| <= 2c.
//
// Rules:
//   hit in T1 or T2        -> move to the front of T2;
//   miss, key in ghost B1  -> p += max(1, |B2| / |B1|) (T1 was too small), insert at front of T2;
//   miss, key in ghost B2  -> p -= max(1, |B1| / |B2|) (T2 was too small), insert at front of T2;
//   miss, key unknown      -> insert at front of T1;
//   victim (REPLACE)       -> the least recent unpinned key of T1 when |T1| > p (or T2 has no
//                             unpinned key), else of T2; it becomes a ghost at the front of B1 or
//                             B2; ghost lists are then trimmed from their back to the invariants.
//
// Differences from the paper, all forced by the protocol or by pins:
//   * The cache asks for a victim before it says which key is coming in (ChooseVictim, then
//     OnRemove, then OnInsert). So p adapts to a ghost hit in OnInsert, after the victim of that
//     same miss was chosen with the previous p, and REPLACE drops its "x in B2 and |T1| == p"
//     tie rule (it cannot know x). The adaptation lags by one eviction; the balance it converges
//     to is the same.
//   * Pinned keys are skipped; if the preferred list is entirely pinned the other one gives the
//     victim.
//   * Prefetches: a prefetched key enters T1 without adapting p (it is not a demand access), its
//     first demand hit keeps it in T1 (that is its first use), and if it leaves unused it leaves
//     no ghost (its eviction says nothing about the workload).
//   * Erase (OnRemove outside eviction) is treated like an eviction and leaves a ghost.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "memory/index_list.h"
#include "memory/policies.h"

namespace moe::internal {
namespace {

class ArcPolicy final : public EvictionPolicy {
 public:
  explicit ArcPolicy(const PolicyContext& context)
      : c_(context.capacity),
        lists_(static_cast<uint32_t>(context.space.size()), 4),
        where_(static_cast<size_t>(context.space.size()), kNone),
        prefetched_(static_cast<size_t>(context.space.size()), 0) {}

  std::string_view name() const override { return "arc"; }

  void OnInsert(ExpertKey key, const AccessHint&, bool prefetch) override {
    const uint8_t w = where_[key];
    uint8_t dest = kT1;
    if (w == kB1 || w == kB2) {
      if (!prefetch) {
        const double b1 = static_cast<double>(size_[kB1]);
        const double b2 = static_cast<double>(size_[kB2]);
        if (w == kB1) {
          p_ = std::min(static_cast<double>(c_), p_ + std::max(1.0, b2 / b1));
        } else {
          p_ = std::max(0.0, p_ - std::max(1.0, b1 / b2));
        }
        dest = kT2;
      }
      Unlink(key);
    }
    Link(dest, key);
    prefetched_[key] = prefetch ? 1 : 0;
    TrimGhosts();
  }

  void OnHit(ExpertKey key, const AccessHint&) override {
    if (prefetched_[key]) {
      prefetched_[key] = 0;
      lists_.MoveToFront(kT1, key);
      return;
    }
    if (where_[key] == kT1) {
      --size_[kT1];
      ++size_[kT2];
      where_[key] = kT2;
    }
    lists_.MoveToFront(kT2, key);
  }

  void OnRemove(ExpertKey key) override {
    const uint8_t w = where_[key];
    Unlink(key);
    if (prefetched_[key]) {
      prefetched_[key] = 0;
      return;
    }
    Link(w == kT1 ? kB1 : kB2, key);
    TrimGhosts();
  }

  ExpertKey ChooseVictim(std::span<const uint16_t> pins) override {
    const bool t1_first = size_[kT1] > 0 && static_cast<double>(size_[kT1]) > p_;
    const uint8_t first = t1_first ? kT1 : kT2;
    const uint8_t second = t1_first ? kT2 : kT1;
    ExpertKey v = LeastRecentUnpinned(first, pins);
    if (v == kNoExpert) v = LeastRecentUnpinned(second, pins);
    return v;
  }

 private:
  static constexpr uint8_t kT1 = 0, kT2 = 1, kB1 = 2, kB2 = 3, kNone = 4;

  ExpertKey LeastRecentUnpinned(uint8_t list, std::span<const uint16_t> pins) const {
    const uint32_t end = lists_.End(list);
    for (uint32_t k = lists_.Back(list); k != end; k = lists_.Prev(k)) {
      if (pins[k] == 0) return k;
    }
    return kNoExpert;
  }
  void Link(uint8_t list, ExpertKey key) {
    lists_.PushFront(list, key);
    where_[key] = list;
    ++size_[list];
  }
  void Unlink(ExpertKey key) {
    --size_[where_[key]];
    where_[key] = kNone;
    lists_.Remove(key);
  }
  void DropOldestGhost(uint8_t list) { Unlink(lists_.Back(list)); }
  void TrimGhosts() {
    while (size_[kT1] + size_[kB1] > c_ && size_[kB1] > 0) DropOldestGhost(kB1);
    while (size_[kT1] + size_[kT2] + size_[kB1] + size_[kB2] > 2 * c_ &&
           size_[kB1] + size_[kB2] > 0) {
      DropOldestGhost(size_[kB2] > 0 ? kB2 : kB1);
    }
  }

  int64_t c_;
  double p_ = 0.0;  // target size of T1
  int64_t size_[4] = {0, 0, 0, 0};
  IndexLists lists_;
  std::vector<uint8_t> where_;
  std::vector<uint8_t> prefetched_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> MakeArcPolicy(const PolicyContext& context) {
  return std::make_unique<ArcPolicy>(context);
}

}  // namespace moe::internal
