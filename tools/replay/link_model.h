// Simulated host-to-device link for the replay timing model.
//
// One transfer at a time, each taking `transfer_us` (expert bytes / link bandwidth). Demand
// loads have priority: a demand load waits only for the transfer in progress, then runs ahead of
// every prefetch still queued. Prefetches run in issue order whenever the link is free, never
// before their issue time. A queued prefetch whose expert is evicted before its transfer starts
// is cancelled and costs nothing; a queued prefetch that demand needs is promoted (it becomes a
// demand load).
//
// Which transfers wait, in which order, their de-duplication, cancellation and promotion are the
// engine's TransferQueue (memory/transfer_queue.h: prefetches at kLookahead, demand loads at
// kDemand, no byte budget or cap); this class adds the virtual clock: issue times, the start and
// arrival of each transfer, and completion once the clock passes an arrival. The cache is the
// authority on residency: when it reports a key missing (Demand, EnqueuePrefetch) while the queue
// still tracks a started transfer of it (replay's reset_per_sequence drops a cache without
// evictions), that transfer is detached first and the key is loaded again.
//
// Time is in microseconds on a virtual clock owned by the caller, which must call AdvanceTo with
// non-decreasing times. Not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "experts/expert_id.h"
#include "memory/transfer_queue.h"

namespace moe {

class LinkModel {
 public:
  LinkModel(ExpertSpace space, double transfer_us);

  // Completes the transfers that arrived by `now`, then starts every queued prefetch whose start
  // time (link free and issued) is <= now.
  void AdvanceTo(double now);
  // A demand load of `key` (a cache miss) issued at `now`; returns its arrival time.
  double Demand(ExpertKey key, double now);
  // Queues a prefetch of `key` (the cache just inserted it) issued at `now`.
  void EnqueuePrefetch(ExpertKey key, double now);
  // The expert was evicted: a queued prefetch of it is cancelled.
  void OnEvict(ExpertKey key);
  // Arrival time of resident `key` needed at `now` (<= now when already there). A still-queued
  // prefetch is promoted to a demand load. Sets *in_flight when the expert was not there yet.
  double ReadyTime(ExpertKey key, double now, bool* in_flight);

  double busy_us() const { return busy_us_; }
  uint64_t transfers() const { return queue_.counters().started; }
  uint64_t cancelled() const { return queue_.counters().cancelled; }
  double transfer_us() const { return transfer_us_; }
  // The queue's books (in units of one transfer: expert_bytes is 1): useful, late and wasted
  // prefetches as the engine's prefetcher would count them.
  const TransferQueue& queue() const { return queue_; }

 private:
  // Starts the transfer StartNext just returned for `key` at `start` (>= the link's free time).
  double Start(ExpertKey key, double start);
  // Completes the started transfers that arrived by `now`.
  void Retire(double now);
  // Detaches a started transfer of `key` that the cache no longer holds.
  void Forget(ExpertKey key);

  TransferQueue queue_;
  double transfer_us_;
  double busy_until_ = 0;
  double busy_us_ = 0;
  std::vector<double> ready_;   // arrival time of the key's latest transfer
  std::vector<double> issued_;  // issue time of the key's queued prefetch
  struct Started {
    ExpertKey key;
    double arrival;
  };
  std::deque<Started> started_;  // in arrival order; detached entries are skipped when retired
};

}  // namespace moe
