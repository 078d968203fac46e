// The link model: the TransferQueue decides order, de-duplication, cancellation and promotion;
// this file keeps the clock. Transfers are serial, so arrivals are in start order and `started_`
// is a FIFO; a key detached in flight (evicted) and started again has a newer arrival, which is
// how a stale FIFO entry is recognised when it is retired.
#include "tools/replay/link_model.h"

#include <algorithm>

#include "runtime/status.h"

namespace moe {
namespace {
TransferQueueOptions LinkQueueOptions(ExpertSpace space) {
  TransferQueueOptions o;
  o.space = space;
  o.expert_bytes = 1;  // the model counts transfers, not bytes
  return o;
}
}  // namespace

LinkModel::LinkModel(ExpertSpace space, double transfer_us)
    : queue_(LinkQueueOptions(space)),
      transfer_us_(transfer_us),
      ready_(static_cast<size_t>(space.size()), 0.0),
      issued_(static_cast<size_t>(space.size()), 0.0) {}

double LinkModel::Start(ExpertKey key, double start) {
  busy_until_ = start + transfer_us_;
  busy_us_ += transfer_us_;
  ready_[key] = busy_until_;
  started_.push_back({key, busy_until_});
  return busy_until_;
}

void LinkModel::Retire(double now) {
  while (!started_.empty() && started_.front().arrival <= now) {
    const Started s = started_.front();
    started_.pop_front();
    if (queue_.state(s.key) == TransferQueue::State::kInFlight && ready_[s.key] == s.arrival) {
      queue_.Complete(s.key);
    }
  }
}

void LinkModel::Forget(ExpertKey key) {
  const TransferQueue::State state = queue_.state(key);
  if (state == TransferQueue::State::kInFlight || state == TransferQueue::State::kLanded) {
    queue_.OnEvicted(key);
  }
}

void LinkModel::AdvanceTo(double now) {
  Retire(now);
  while (const std::optional<ExpertKey> next = queue_.Peek()) {
    // Only prefetches wait in the queue between calls: demand loads start at once.
    const double start = std::max(busy_until_, issued_[*next]);
    if (start > now) break;
    queue_.StartNext();
    Start(*next, start);
  }
  Retire(now);
}

double LinkModel::Demand(ExpertKey key, double now) {
  AdvanceTo(now);
  Forget(key);
  // A queued prefetch of the key is promoted (de-duplicated); otherwise a new demand transfer.
  queue_.Enqueue(key, TransferPriority::kDemand);
  const std::optional<ExpertKey> next = queue_.StartNext();
  MOE_CHECK(next == key);  // the only demand transfer queued
  return Start(key, std::max(now, busy_until_));
}

void LinkModel::EnqueuePrefetch(ExpertKey key, double now) {
  Forget(key);
  // A prefetch already queued keeps its place and issue time.
  if (queue_.Enqueue(key, TransferPriority::kLookahead) == TransferQueue::EnqueueResult::kQueued) {
    issued_[key] = now;
  }
}

void LinkModel::OnEvict(ExpertKey key) { queue_.OnEvicted(key); }

double LinkModel::ReadyTime(ExpertKey key, double now, bool* in_flight) {
  if (queue_.state(key) == TransferQueue::State::kQueued) {
    *in_flight = true;
    AdvanceTo(now);  // the link may have become free for it by now
    const bool still_queued = queue_.state(key) == TransferQueue::State::kQueued;
    queue_.OnDemandUse(key);  // late: promoted ahead of every queued prefetch
    if (!still_queued) return ready_[key];
    const std::optional<ExpertKey> next = queue_.StartNext();
    MOE_CHECK(next == key);
    return Start(key, std::max(now, busy_until_));
  }
  Retire(now);
  queue_.OnDemandUse(key);
  *in_flight = ready_[key] > now;
  return ready_[key];
}

}  // namespace moe
