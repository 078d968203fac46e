#include "tools/replay/link_model.h"

#include <algorithm>

namespace moe {

LinkModel::LinkModel(ExpertSpace space, double transfer_us)
    : transfer_us_(transfer_us),
      ready_(static_cast<size_t>(space.size()), 0.0),
      queued_(static_cast<size_t>(space.size()), 0) {}

double LinkModel::Start(ExpertKey key, double start) {
  busy_until_ = start + transfer_us_;
  busy_us_ += transfer_us_;
  ++transfers_;
  ready_[key] = busy_until_;
  return busy_until_;
}

void LinkModel::AdvanceTo(double now) {
  while (!queue_.empty()) {
    const Pending p = queue_.front();
    if (!queued_[p.key]) {  // cancelled or promoted
      queue_.pop_front();
      continue;
    }
    const double start = std::max(busy_until_, p.issued);
    if (start > now) break;
    queue_.pop_front();
    queued_[p.key] = 0;
    Start(p.key, start);
  }
}

double LinkModel::Demand(ExpertKey key, double now) {
  AdvanceTo(now);
  if (queued_[key]) queued_[key] = 0;  // a queued prefetch of it would now be redundant
  return Start(key, std::max(now, busy_until_));
}

void LinkModel::EnqueuePrefetch(ExpertKey key, double now) {
  queued_[key] = 1;
  queue_.push_back({key, now});
}

void LinkModel::OnEvict(ExpertKey key) {
  if (queued_[key]) {
    queued_[key] = 0;
    ++cancelled_;
  }
}

double LinkModel::ReadyTime(ExpertKey key, double now, bool* in_flight) {
  if (queued_[key]) {
    *in_flight = true;
    return Demand(key, now);
  }
  *in_flight = ready_[key] > now;
  return ready_[key];
}

}  // namespace moe
