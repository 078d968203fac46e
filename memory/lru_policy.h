// "lru": least recently used. Internal to memory/: the cache includes it so that its hot path
// runs the list operations inline, without a virtual call.
//
// One intrusive list per partition over the partition's resident keys, most recent at the front.
// Insert (demand or prefetch) and hit move the key to the front: O(1). The victim is the first
// unpinned key walking from the back; pinned keys are only the few experts of the step in flight,
// which are at the front, so the walk is short.
//
// LruLists holds the lists of every partition of a cache over one node array indexed by key (a
// key belongs to one partition, hence to at most one list), with the sentinels side by side at
// the end: the hot path reaches a node with one load from the cache object, and the whole LRU
// state of DeepSeek-V2-Lite's 26 x 64 experts is 13 KiB. LruPolicy is the EvictionPolicy face of
// one list (its own LruLists when made by MakeEvictionPolicy).
#pragma once

#include <memory>
#include <span>
#include <string_view>

#include "memory/eviction_policy.h"
#include "memory/index_list.h"

namespace moe::internal {

class LruLists {
 public:
  LruLists(uint32_t num_keys, uint32_t num_lists) : lists_(num_keys, num_lists) {}

  void Touch(uint32_t list, ExpertKey key) { lists_.MoveToFront(list, key); }
  // The lists over raw pointers, for the cache's one-call accesses (IndexLists::Raw).
  IndexLists::Raw raw_lists() { return lists_.raw(); }
  void Insert(uint32_t list, ExpertKey key) { lists_.PushFront(list, key); }
  void Remove(ExpertKey key) { lists_.Remove(key); }
  ExpertKey LeastRecentUnpinned(uint32_t list, const uint16_t* pins) const {
    const uint32_t end = lists_.End(list);
    for (uint32_t k = lists_.Back(list); k != end; k = lists_.Prev(k)) {
      if (pins[k] == 0) return k;
    }
    return kNoExpert;
  }
  // LeastRecentUnpinned + Remove(victim) + Insert(key) in one pass (the cache's miss path).
  // Returns the victim, or kNoExpert (changing nothing) when every key of the list is pinned.
  ExpertKey Replace(uint32_t list, const uint16_t* pins, ExpertKey key) {
    const ExpertKey victim = LeastRecentUnpinned(list, pins);
    if (victim != kNoExpert) {
      lists_.Remove(victim);
      lists_.PushFront(list, key);
    }
    return victim;
  }

 private:
  IndexLists lists_;
};

class LruPolicy final : public EvictionPolicy {
 public:
  explicit LruPolicy(const PolicyContext& context)
      : own_(std::make_unique<LruLists>(static_cast<uint32_t>(context.space.size()), 1)),
        lists_(own_.get()),
        list_(0) {}
  // A view of list `list` of `shared`, which must outlive it.
  LruPolicy(LruLists* shared, uint32_t list) : lists_(shared), list_(list) {}

  std::string_view name() const override { return "lru"; }
  void OnInsert(ExpertKey key, const AccessHint&, bool) override { lists_->Insert(list_, key); }
  void OnHit(ExpertKey key, const AccessHint&) override { lists_->Touch(list_, key); }
  void OnRemove(ExpertKey key) override { lists_->Remove(key); }
  ExpertKey ChooseVictim(std::span<const uint16_t> pins) override {
    return lists_->LeastRecentUnpinned(list_, pins.data());
  }

 private:
  std::unique_ptr<LruLists> own_;
  LruLists* lists_;
  uint32_t list_;
};

}  // namespace moe::internal
