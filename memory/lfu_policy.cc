// "lfu": least frequently used, with recency breaking ties.
//
// The count is the number of demand uses since the key (last) became resident: a demand insert
// starts at 1 and each hit adds 1. A prefetch also starts at 1 (it stands for the use the
// predictor expects) and its first demand hit does not add, so a prefetched expert ends up with
// the same count as one loaded on demand. Counts are forgotten when a key leaves: without that,
// a key that was hot long ago would come back with an unbeatable count (no aging otherwise).
//
// Structure (the O(1) LFU of Shah, Mitra and Matani, 2010): a list of count buckets in
// increasing count order, each holding its keys most recent first. A hit moves the key to the
// bucket of count + 1 (created right after its bucket when missing); empty buckets are recycled.
// The victim is the least recent unpinned key of the lowest bucket, walking up while a bucket is
// all pinned. At most `capacity` buckets are non-empty, so the bucket pool is capacity + 1.
#include <cstdint>
#include <memory>
#include <vector>

#include "memory/index_list.h"
#include "memory/policies.h"

namespace moe::internal {
namespace {

class LfuPolicy final : public EvictionPolicy {
 public:
  explicit LfuPolicy(const PolicyContext& context)
      : num_keys_(static_cast<uint32_t>(context.space.size())),
        num_buckets_(static_cast<uint32_t>(context.capacity) + 1),
        keys_(num_keys_, num_buckets_),
        order_(num_buckets_, 1),
        count_(num_buckets_, 0),
        bucket_of_(num_keys_, 0),
        prefetched_(num_keys_, 0) {
    free_buckets_.reserve(num_buckets_);
    for (uint32_t b = num_buckets_; b-- > 0;) free_buckets_.push_back(b);
  }

  std::string_view name() const override { return "lfu"; }

  void OnInsert(ExpertKey key, const AccessHint&, bool prefetch) override {
    uint32_t b = order_.Front(0);
    if (b == order_.End(0) || count_[b] != 1) {
      b = NewBucket(1, order_.End(0));
    }
    Place(key, b);
    prefetched_[key] = prefetch ? 1 : 0;
  }

  void OnHit(ExpertKey key, const AccessHint&) override {
    const uint32_t b = bucket_of_[key];
    if (prefetched_[key]) {  // the use the prefetch stood for: recency only
      prefetched_[key] = 0;
      keys_.MoveToFront(b, key);
      return;
    }
    const uint64_t c = count_[b] + 1;
    uint32_t nb = order_.Next(b);
    const bool alone = keys_.Front(b) == key && keys_.Back(b) == key;
    if (nb == order_.End(0) || count_[nb] != c) {
      if (alone) {  // the bucket becomes the count + 1 bucket in place
        count_[b] = c;
        return;
      }
      nb = NewBucket(c, b);
    }
    keys_.Remove(key);
    if (alone) FreeBucket(b);
    Place(key, nb);
  }

  void OnRemove(ExpertKey key) override {
    const uint32_t b = bucket_of_[key];
    keys_.Remove(key);
    if (keys_.Empty(b)) FreeBucket(b);
    prefetched_[key] = 0;
  }

  ExpertKey ChooseVictim(std::span<const uint16_t> pins) override {
    for (uint32_t b = order_.Front(0); b != order_.End(0); b = order_.Next(b)) {
      const uint32_t end = keys_.End(b);
      for (uint32_t k = keys_.Back(b); k != end; k = keys_.Prev(k)) {
        if (pins[k] == 0) return k;
      }
    }
    return kNoExpert;
  }

 private:
  // Takes a bucket from the pool, with count `c`, placed after `pos` in the order list.
  uint32_t NewBucket(uint64_t c, uint32_t pos) {
    const uint32_t b = free_buckets_.back();
    free_buckets_.pop_back();
    count_[b] = c;
    order_.InsertAfter(pos, b);
    return b;
  }
  void FreeBucket(uint32_t b) {
    order_.Remove(b);
    free_buckets_.push_back(b);
  }
  void Place(ExpertKey key, uint32_t b) {
    keys_.PushFront(b, key);
    bucket_of_[key] = b;
  }

  uint32_t num_keys_;
  uint32_t num_buckets_;
  IndexLists keys_;   // nodes: keys; list b: the keys of bucket b, most recent first
  IndexLists order_;  // nodes: buckets; list 0: non-empty buckets by increasing count
  std::vector<uint64_t> count_;
  std::vector<uint32_t> bucket_of_;
  std::vector<uint8_t> prefetched_;  // inserted by a prefetch and not used yet
  std::vector<uint32_t> free_buckets_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> MakeLfuPolicy(const PolicyContext& context) {
  return std::make_unique<LfuPolicy>(context);
}

}  // namespace moe::internal
