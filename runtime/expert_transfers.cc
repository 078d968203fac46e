#include "runtime/expert_transfers.h"

#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe {
namespace {

// ExpectedOrder bands: copies in flight by issue number, then queued demand, then prefetches.
constexpr uint64_t kQueuedDemand = uint64_t{1} << 40;
constexpr uint64_t kQueuedPrefetch = uint64_t{1} << 41;

}  // namespace

ExpertTransfers::ExpertTransfers(Device& device, const HostExpertStore& store,
                                 const ExpertCache& cache, std::byte* slots, int32_t window,
                                 cpu::ThreadPool* copy_pool, uint64_t prefetch_bytes_per_step,
                                 int64_t max_unconfirmed_prefetches)
    : device_(device),
      store_(store),
      cache_(cache),
      slots_(slots),
      window_(window),
      copy_pool_(copy_pool),
      queue_(TransferQueueOptions{store.space(), store.expert_bytes(), prefetch_bytes_per_step,
                                  max_unconfirmed_prefetches}),
      order_(static_cast<size_t>(store.space().size()), 0),
      failed_(static_cast<size_t>(store.space().size()), 0) {
  MOE_CHECK(window >= 1);
}

bool ExpertTransfers::AdmitPrefetch() {
  switch (queue_.CheckPrefetch()) {
    case TransferQueue::EnqueueResult::kRejectedBudget:
      ++rejected_budget_;
      return false;
    case TransferQueue::EnqueueResult::kRejectedCap:
      ++rejected_cap_;
      return false;
    default:
      return true;
  }
}

TransferCounters ExpertTransfers::counters() const {
  TransferCounters c = queue_.counters();
  c.rejected_budget += rejected_budget_;
  c.rejected_cap += rejected_cap_;
  return c;
}

void ExpertTransfers::Demand(ExpertKey key) {
  failed_[key] = 0;
  const auto r = queue_.Enqueue(key, TransferPriority::kDemand);
  MOE_CHECK(r == TransferQueue::EnqueueResult::kQueued);
  order_[key] = kQueuedDemand + enqueued_++;
}

void ExpertTransfers::Use(ExpertKey key) {
  const bool queued = queue_.state(key) == TransferQueue::State::kQueued;
  if (queue_.OnDemandUse(key) == TransferQueue::DemandUse::kLate && queued) {
    order_[key] = kQueuedDemand + enqueued_++;  // moved to the back of the demand queue
  }
}

void ExpertTransfers::Prefetch(ExpertKey key, TransferPriority priority) {
  failed_[key] = 0;
  const auto r = queue_.Enqueue(key, priority);
  MOE_CHECK(r == TransferQueue::EnqueueResult::kQueued);  // AdmitPrefetch said it fits
  order_[key] = kQueuedPrefetch + enqueued_++;
}

void ExpertTransfers::OnEvicted(ExpertKey key) {
  failed_[key] = 0;
  if (queue_.OnEvicted(key) == TransferQueue::State::kInFlight) {
    // The copy keeps running into the slot; its completion must not land the key again.
    for (InFlight& f : in_flight_) {
      if (f.key == key && !f.detached) f.detached = true;
    }
  }
}

void ExpertTransfers::Issue(ExpertKey key) {
  const int32_t slot = cache_.SlotOf(key);
  MOE_CHECK(slot >= 0);  // queued copies belong to resident experts (eviction cancels them)
  std::byte* dst = slots_ + static_cast<uint64_t>(slot) * store_.expert_bytes();
  InFlight f{key, {}, false};
  if (device_.queues_compute()) {
    // Kernels still queued may read the slot's previous expert: the copy goes after them. (An
    // error here is the device's sticky error; the copy's own wait reports it.)
    const absl::Status ordered = device_.CopyWaitForCompute();
    if (!ordered.ok()) {
      MOE_LOG(kError, "ordering an expert copy after compute: {}", std::string(ordered.message()));
    }
  }
  if (copy_pool_ != nullptr) {
    store_.CopyToSlot(key, device_, dst, copy_pool_);  // synchronous device: done here
  } else {
    const FfnWeights& w = store_.HostWeights(key);
    int i = 0;
    for (const WeightView* v : {&w.gate, &w.up, &w.down}) {
      f.parts[i++] = device_.CopyToDeviceAsync(dst, v->data, v->num_bytes());
      dst += v->num_bytes();
    }
  }
  order_[key] = issued_++;
  in_flight_.push_back(f);
}

absl::Status ExpertTransfers::RetireOldest() {
  MOE_CHECK(!in_flight_.empty());
  const InFlight f = in_flight_.front();
  in_flight_.pop_front();
  absl::Status status;
  for (const CopyTicket& t : f.parts) {
    absl::Status s = device_.WaitCopy(t);
    if (status.ok() && !s.ok()) status = s;
  }
  if (f.detached) return absl::OkStatus();  // its expert left the cache; nobody reads this copy
  queue_.Complete(f.key);
  if (!status.ok()) {
    failed_[f.key] = 1;
    if (!reported_failure_) {
      reported_failure_ = true;
      MOE_LOG(kWarning, "expert copy failed ({}); the expert will be copied again when needed",
              std::string(status.message()));
    }
    ++failed_copies_;
  }
  return absl::OkStatus();
}

void ExpertTransfers::Pump() {
  while (!in_flight_.empty() && device_.CopyDone(in_flight_.front().parts[2])) {
    RetireOldest().IgnoreError();
  }
  while (static_cast<int32_t>(in_flight_.size()) < window_) {
    const std::optional<ExpertKey> key = queue_.StartNext();
    if (!key) break;
    Issue(*key);
  }
}

bool ExpertTransfers::Ready(ExpertKey key) const {
  const TransferQueue::State s = queue_.state(key);
  return (s == TransferQueue::State::kIdle || s == TransferQueue::State::kLanded) && !failed_[key];
}

uint64_t ExpertTransfers::ExpectedOrder(ExpertKey key) const {
  return Ready(key) ? 0 : order_[key];
}

int64_t ExpertTransfers::CopiesAhead(ExpertKey key) const {
  if (Ready(key)) return 0;
  if (queue_.state(key) == TransferQueue::State::kInFlight) {
    for (size_t i = 0; i < in_flight_.size(); ++i) {
      if (in_flight_[i].key == key && !in_flight_[i].detached) return static_cast<int64_t>(i) + 1;
    }
  }
  return static_cast<int64_t>(in_flight_.size() + queue_.queued(TransferPriority::kDemand));
}

bool ExpertTransfers::ComputeWaitInFlight(ExpertKey key) {
  for (const InFlight& f : in_flight_) {
    if (f.key != key || f.detached) continue;
    // The parts complete in issue order (one copy stream), so the last one covers all three.
    // A copy already known to have failed is retired on the host instead (and copied again).
    return device_.ComputeWaitFor(f.parts[2]).ok();
  }
  return false;
}

absl::Status ExpertTransfers::WaitReady(ExpertKey key) {
  int retries = 0;
  while (true) {
    switch (queue_.state(key)) {
      case TransferQueue::State::kIdle:
      case TransferQueue::State::kLanded:
        if (!failed_[key]) return absl::OkStatus();
        // The copy failed: copy it again at demand priority, once.
        if (retries++ == 1) {
          const ExpertId id = store_.space().Id(key);
          return Internal("copying expert {} of layer {} to the device failed twice", id.expert,
                          id.layer);
        }
        queue_.OnDemandUse(key);  // a landed prefetch is confirmed (it was used, if uselessly)
        Demand(key);
        Pump();
        break;
      case TransferQueue::State::kQueued:
        if (static_cast<int32_t>(in_flight_.size()) >= window_) {
          MOE_RETURN_IF_ERROR(RetireOldest());
        }
        Pump();
        break;
      case TransferQueue::State::kInFlight:
        if (device_.queues_compute() && ComputeWaitInFlight(key)) return absl::OkStatus();
        MOE_RETURN_IF_ERROR(RetireOldest());
        break;
    }
  }
}

}  // namespace moe
