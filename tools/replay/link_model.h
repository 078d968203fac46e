// Simulated host-to-device link for the replay timing model.
//
// One transfer at a time, each taking `transfer_us` (expert bytes / link bandwidth). Demand
// loads have priority: a demand load waits only for the transfer in progress, then runs ahead of
// every prefetch still queued. Prefetches run in issue order whenever the link is free. A queued
// prefetch whose expert is evicted before its transfer starts is cancelled and costs nothing; a
// queued prefetch that demand needs is promoted (it becomes a demand load).
//
// Time is in microseconds on a virtual clock owned by the caller, which must call AdvanceTo with
// non-decreasing times. Not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "experts/expert_id.h"

namespace moe {

class LinkModel {
 public:
  LinkModel(ExpertSpace space, double transfer_us);

  // Starts every queued prefetch whose start time (link free and issued) is <= now.
  void AdvanceTo(double now);
  // A demand load of `key` issued at `now`; returns its arrival time.
  double Demand(ExpertKey key, double now);
  // Queues a prefetch of `key` issued at `now`.
  void EnqueuePrefetch(ExpertKey key, double now);
  // The expert was evicted: a queued prefetch of it is cancelled.
  void OnEvict(ExpertKey key);
  // Arrival time of resident `key` needed at `now` (<= now when already there). A still-queued
  // prefetch is promoted to a demand load. Sets *in_flight when the expert was not there yet.
  double ReadyTime(ExpertKey key, double now, bool* in_flight);

  double busy_us() const { return busy_us_; }
  uint64_t transfers() const { return transfers_; }
  uint64_t cancelled() const { return cancelled_; }
  double transfer_us() const { return transfer_us_; }

 private:
  double Start(ExpertKey key, double start);

  double transfer_us_;
  double busy_until_ = 0;
  double busy_us_ = 0;
  uint64_t transfers_ = 0;
  uint64_t cancelled_ = 0;
  std::vector<double> ready_;    // arrival time per key
  std::vector<uint8_t> queued_;  // 1 while a prefetch of the key waits in queue_
  struct Pending {
    ExpertKey key;
    double issued;
  };
  std::deque<Pending> queue_;  // may hold cancelled entries (queued_ == 0): skipped lazily
};

}  // namespace moe
