// The engine's expert copies: which host -> device copy runs when, and waiting for exactly the
// copy an expert's compute needs.
//
// A TransferQueue (memory/transfer_queue.h) orders the copies: demand before next-layer
// prefetches before further lookahead, FIFO inside a priority, a prefetch that demand needs
// promoted. The device's copy stream is FIFO, so at most `window` copies are issued to it at a
// time (the rest wait in the queue, where demand can still overtake prefetches). Each expert copy
// is issued as the three tensors of its slot (HostExpertStore layout), and compute on an expert
// waits only for its own copy (WaitReady). Pump() is called whenever time may have passed (after
// each expert's compute), so the link does not idle while a copy is queued.
//
// On a synchronous device (the CPU device) every copy is complete when issued: the order and the
// counters are the same, nothing overlaps. On a device that queues compute (CUDA), a copy into a
// slot is ordered after the kernels already queued (Device::CopyWaitForCompute: they may still
// read the slot's previous expert), and compute waits for a copy on the device, not the host. With
// a thread pool the copy is split over its threads (one thread cannot saturate a multi-core host's
// memory system); give no pool for devices that model each copy call (the fake device charges
// latency per call).
//
// The cache's eviction listener must call OnEvicted: a queued copy of an evicted expert is
// cancelled; an in-flight one cannot be, and FIFO order keeps the slot's next copy after it.
//
// Thread-safety: none; the engine thread drives it.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "experts/expert_store.h"
#include "kernels/cpu/thread_pool.h"
#include "memory/expert_cache.h"
#include "memory/transfer_queue.h"
#include "runtime/device.h"

namespace moe {

class ExpertTransfers {
 public:
  // All references must outlive this object. `slots` is the expert slot arena of the cache.
  // `prefetch_bytes_per_step` and `max_unconfirmed_prefetches` are the TransferQueue's limits
  // (0: none); BeginStep starts a step's byte budget.
  ExpertTransfers(Device& device, const HostExpertStore& store, const ExpertCache& cache,
                  std::byte* slots, int32_t window, cpu::ThreadPool* copy_pool,
                  uint64_t prefetch_bytes_per_step = 0, int64_t max_unconfirmed_prefetches = 0);

  void BeginStep() { queue_.BeginStep(); }
  // Whether one more prefetch fits the step's link budget and the cap on unconfirmed
  // prefetches; a refusal is counted (rejected_budget / rejected_cap).
  bool AdmitPrefetch();

  // A demand miss: the cache just gave `key` a slot. Queues its copy at demand priority.
  void Demand(ExpertKey key);
  // A demand hit: a prefetch of `key` still queued or in flight becomes demand (counted late).
  void Use(ExpertKey key);
  // The cache inserted `key` as a prefetch: queues its copy at `priority`.
  void Prefetch(ExpertKey key, TransferPriority priority);
  // From the cache's eviction listener.
  void OnEvicted(ExpertKey key);
  // A new prediction for `layer` names only `keep`: cancels the queued prefetches of the layer's
  // other experts (TransferQueue::CancelStale) and appends their keys to `cancelled`. Their
  // copies never start; the caller must erase them from the cache (their slots hold nothing).
  int64_t CancelStale(int32_t layer, std::span<const ExpertKey> keep,
                      std::vector<ExpertKey>& cancelled) {
    return queue_.CancelStale(layer, keep, &cancelled);
  }

  // Retires completed copies and issues queued ones while fewer than `window` are in flight.
  void Pump();
  // True when `key` has no copy queued or in flight (its slot holds its weights).
  bool Ready(ExpertKey key) const;
  // Where `key` stands in line: copies in flight first (by issue), then queued demand copies (by
  // arrival in the queue), then queued prefetches. For ordering compute; smaller is sooner.
  uint64_t ExpectedOrder(ExpertKey key) const;
  // How many copies must complete before `key`'s has (0 when Ready): its place among the
  // copies in flight, or, while queued, every copy in flight plus the demand queue.
  int64_t CopiesAhead(ExpertKey key) const;
  // The same for a demand copy queued now: every copy in flight and queued demand, plus itself.
  int64_t CopiesAheadOfNewDemand() const {
    return static_cast<int64_t>(in_flight_.size() + queue_.queued(TransferPriority::kDemand)) + 1;
  }
  // No copy in flight or queued: the link would otherwise idle.
  bool LinkIdle() const { return in_flight_.empty() && queue_.queued() == 0; }
  // Blocks compute until `key`'s copy completed (issuing earlier copies as needed). The copy's
  // status: an error names the expert when a copy failed. On a device that queues compute
  // (Device::queues_compute(), the CUDA device) a copy in flight is waited for on the device
  // (Device::ComputeWaitFor): the host returns at once and only the kernels enqueued next wait
  // for this expert's copy; a queued copy is issued first (the host blocks only while the copy
  // window is full, until the oldest copy lands).
  absl::Status WaitReady(ExpertKey key);

  // The queue's counters, with the prefetches AdmitPrefetch refused in rejected_budget/cap.
  TransferCounters counters() const;
  // Copies that failed (each failed expert is copied again when demand needs it).
  uint64_t failed_copies() const { return failed_copies_; }

 private:
  struct InFlight {
    ExpertKey key;
    CopyTicket parts[3];  // gate, up, down; FIFO: the last one completes last
    bool detached;        // the expert was evicted while its copy ran
  };
  void Issue(ExpertKey key);
  // Waits for the oldest copy in flight and retires it.
  absl::Status RetireOldest();
  // Makes the device's compute wait for `key`'s copy in flight; false when it has none or the
  // copy already failed (the caller then waits on the host).
  bool ComputeWaitInFlight(ExpertKey key);

  Device& device_;
  const HostExpertStore& store_;
  const ExpertCache& cache_;
  std::byte* slots_;
  int32_t window_;
  cpu::ThreadPool* copy_pool_;
  TransferQueue queue_;
  std::deque<InFlight> in_flight_;
  std::vector<uint64_t> order_;  // per key: issue number while in flight, enqueue number queued
  std::vector<uint8_t> failed_;  // per key: its last copy failed; the slot holds garbage
  uint64_t issued_ = 0, enqueued_ = 0;
  uint64_t failed_copies_ = 0;
  uint64_t rejected_budget_ = 0, rejected_cap_ = 0;
  bool reported_failure_ = false;
};

}  // namespace moe
