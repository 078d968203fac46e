// The transfer queue over dense per-key arrays. Each priority is an intrusive list of keys
// (internal::IndexLists), so a cancel or a priority raise unlinks one node in O(1) and StartNext
// never meets a dead entry: unlike a deque with lazy deletion, a key cancelled and queued again
// cannot reappear at its old place. The per-step charge of a queued prefetch remembers its step,
// so a cancel refunds only the budget of the step that paid.
#include "memory/transfer_queue.h"

#include <algorithm>

#include "runtime/status.h"

namespace moe {

std::string_view TransferPriorityName(TransferPriority priority) {
  switch (priority) {
    case TransferPriority::kDemand:
      return "demand";
    case TransferPriority::kNextLayer:
      return "next-layer";
    case TransferPriority::kLookahead:
      return "lookahead";
  }
  return "unknown";
}

absl::Status TransferQueue::Validate(const TransferQueueOptions& options) {
  const ExpertSpace& space = options.space;
  if (space.num_layers <= 0 || space.num_experts <= 0) {
    return InvalidArgument("transfer queue: empty expert space ({} layers x {} experts)",
                           space.num_layers, space.num_experts);
  }
  if (space.size() > (int64_t{1} << 31)) {
    return InvalidArgument("transfer queue: expert space of {} keys is too large (max 2^31)",
                           space.size());
  }
  if (options.expert_bytes == 0) {
    return InvalidArgument("transfer queue: expert_bytes must be > 0");
  }
  if (options.max_unconfirmed_prefetches < 0) {
    return InvalidArgument("transfer queue: max_unconfirmed_prefetches {} must be >= 0",
                           options.max_unconfirmed_prefetches);
  }
  if (options.prefetch_bytes_per_step != 0 &&
      options.prefetch_bytes_per_step < options.expert_bytes) {
    return InvalidArgument(
        "transfer queue: prefetch budget of {} bytes per step is smaller than one transfer of {} "
        "bytes (0 means unlimited)",
        options.prefetch_bytes_per_step, options.expert_bytes);
  }
  return absl::OkStatus();
}

namespace {
const TransferQueueOptions& CheckedOptions(const TransferQueueOptions& options) {
  const absl::Status status = TransferQueue::Validate(options);
  MOE_CHECK_MSG(status.ok(), "{}", std::string(status.message()));
  return options;
}
}  // namespace

TransferQueue::TransferQueue(const TransferQueueOptions& options)
    : options_(CheckedOptions(options)),
      num_keys_(static_cast<uint32_t>(options.space.size())),
      lists_(num_keys_, kNumTransferPriorities),
      state_(num_keys_, static_cast<uint8_t>(State::kIdle)),
      priority_(num_keys_, static_cast<uint8_t>(TransferPriority::kDemand)),
      charged_(num_keys_, 0),
      keep_mark_(num_keys_, 0) {}

ExpertKey TransferQueue::Checked(ExpertKey key) const {
  MOE_CHECK_MSG(key < num_keys_, "transfer queue: key {} out of range ({} keys)", key, num_keys_);
  return key;
}

void TransferQueue::BeginStep() {
  ++step_;
  step_bytes_ = 0;
}

TransferQueue::EnqueueResult TransferQueue::CheckPrefetch() const {
  if (options_.max_unconfirmed_prefetches != 0 &&
      unconfirmed_ >= options_.max_unconfirmed_prefetches) {
    return EnqueueResult::kRejectedCap;
  }
  if (options_.prefetch_bytes_per_step != 0 &&
      step_bytes_ + options_.expert_bytes > options_.prefetch_bytes_per_step) {
    return EnqueueResult::kRejectedBudget;
  }
  return EnqueueResult::kQueued;
}

TransferQueue::EnqueueResult TransferQueue::Enqueue(ExpertKey key, TransferPriority priority) {
  Checked(key);
  const auto state = static_cast<State>(state_[key]);
  const bool demand = priority == TransferPriority::kDemand;
  if (state != State::kIdle) {
    ++counters_.deduplicated;
    if (demand) {
      Confirm(key);  // a demand use; no-op for a demand transfer
    } else if (state != State::kLanded && Index(priority) < priority_[key]) {
      if (state == State::kQueued) {  // back of the more urgent list
        lists_.Remove(key);
        --queued_[priority_[key]];
        lists_.PushBack(static_cast<uint32_t>(Index(priority)), key);
        ++queued_[Index(priority)];
      }
      priority_[key] = static_cast<uint8_t>(priority);
    }
    return EnqueueResult::kDeduplicated;
  }
  if (demand) {
    ++counters_.demand_issued;
  } else {
    const EnqueueResult admitted = CheckPrefetch();
    if (admitted == EnqueueResult::kRejectedCap) {
      ++counters_.rejected_cap;
      return admitted;
    }
    if (admitted == EnqueueResult::kRejectedBudget) {
      ++counters_.rejected_budget;
      return admitted;
    }
    ++counters_.prefetch_issued;
    step_bytes_ += options_.expert_bytes;
    charged_[key] = step_ + 1;
    ++unconfirmed_;
  }
  state_[key] = static_cast<uint8_t>(State::kQueued);
  priority_[key] = static_cast<uint8_t>(priority);
  lists_.PushBack(static_cast<uint32_t>(Index(priority)), key);
  ++queued_[Index(priority)];
  return EnqueueResult::kQueued;
}

void TransferQueue::Unqueue(ExpertKey key) {
  lists_.Remove(key);
  --queued_[priority_[key]];
  if (charged_[key] == step_ + 1) step_bytes_ -= options_.expert_bytes;
  charged_[key] = 0;
}

bool TransferQueue::Cancel(ExpertKey key) {
  if (static_cast<State>(state_[Checked(key)]) != State::kQueued) return false;
  Unqueue(key);
  if (priority_[key] != Index(TransferPriority::kDemand)) --unconfirmed_;
  state_[key] = static_cast<uint8_t>(State::kIdle);
  ++counters_.cancelled;
  return true;
}

int64_t TransferQueue::CancelStale(int32_t layer, std::span<const ExpertKey> keep,
                                   std::vector<ExpertKey>* cancelled_keys) {
  MOE_CHECK_MSG(layer >= 0 && layer < options_.space.num_layers,
                "transfer queue: layer {} out of range ({} layers)", layer,
                options_.space.num_layers);
  if (++keep_stamp_ == 0) {  // wrapped: old marks could alias the new stamp
    std::fill(keep_mark_.begin(), keep_mark_.end(), 0);
    keep_stamp_ = 1;
  }
  for (ExpertKey k : keep) keep_mark_[Checked(k)] = keep_stamp_;
  const ExpertKey first = options_.space.Key(layer, 0);
  const ExpertKey end = first + static_cast<ExpertKey>(options_.space.num_experts);
  int64_t cancelled = 0;
  for (ExpertKey k = first; k < end; ++k) {
    if (static_cast<State>(state_[k]) == State::kQueued &&
        priority_[k] != Index(TransferPriority::kDemand) && keep_mark_[k] != keep_stamp_) {
      Cancel(k);
      ++cancelled;
      if (cancelled_keys != nullptr) cancelled_keys->push_back(k);
    }
  }
  return cancelled;
}

std::optional<ExpertKey> TransferQueue::Peek() const {
  for (uint32_t p = 0; p < kNumTransferPriorities; ++p) {
    if (!lists_.Empty(p)) return lists_.Front(p);
  }
  return std::nullopt;
}

std::optional<ExpertKey> TransferQueue::StartNext() {
  const std::optional<ExpertKey> next = Peek();
  if (!next) return std::nullopt;
  const ExpertKey key = *next;
  lists_.Remove(key);
  --queued_[priority_[key]];
  charged_[key] = 0;  // started: a later step's cancel has nothing to refund
  state_[key] = static_cast<uint8_t>(State::kInFlight);
  ++in_flight_;
  ++counters_.started;
  counters_.bytes_started += options_.expert_bytes;
  return key;
}

void TransferQueue::Complete(ExpertKey key) {
  MOE_CHECK_MSG(static_cast<State>(state_[Checked(key)]) == State::kInFlight,
                "transfer queue: Complete of key {} which is not in flight (state {})", key,
                state_[key]);
  --in_flight_;
  ++counters_.completed;
  const bool prefetch = priority_[key] != Index(TransferPriority::kDemand);
  state_[key] = static_cast<uint8_t>(prefetch ? State::kLanded : State::kIdle);
}

TransferQueue::DemandUse TransferQueue::Confirm(ExpertKey key) {
  const auto state = static_cast<State>(state_[key]);
  if (state == State::kLanded) {
    ++counters_.useful;
    --unconfirmed_;
    state_[key] = static_cast<uint8_t>(State::kIdle);
    return DemandUse::kUseful;
  }
  if (state == State::kIdle || priority_[key] == Index(TransferPriority::kDemand)) {
    return DemandUse::kNotPrefetched;
  }
  ++counters_.useful;
  ++counters_.late;
  ++counters_.promoted;
  --unconfirmed_;
  if (state == State::kQueued) {
    // The prefetch's charge stays: its step did admit it, and it will use the link.
    lists_.Remove(key);
    --queued_[priority_[key]];
    lists_.PushBack(static_cast<uint32_t>(Index(TransferPriority::kDemand)), key);
    ++queued_[Index(TransferPriority::kDemand)];
  }
  priority_[key] = static_cast<uint8_t>(TransferPriority::kDemand);
  return DemandUse::kLate;
}

TransferQueue::DemandUse TransferQueue::OnDemandUse(ExpertKey key) { return Confirm(Checked(key)); }

TransferQueue::State TransferQueue::OnEvicted(ExpertKey key) {
  const auto state = static_cast<State>(state_[Checked(key)]);
  switch (state) {
    case State::kIdle:
      break;
    case State::kQueued:
      Cancel(key);
      break;
    case State::kInFlight:
      --in_flight_;
      ++counters_.detached;
      if (priority_[key] != Index(TransferPriority::kDemand)) {
        --unconfirmed_;
        ++counters_.wasted;
        counters_.wasted_bytes += options_.expert_bytes;
      }
      state_[key] = static_cast<uint8_t>(State::kIdle);
      break;
    case State::kLanded:
      --unconfirmed_;
      ++counters_.wasted;
      counters_.wasted_bytes += options_.expert_bytes;
      state_[key] = static_cast<uint8_t>(State::kIdle);
      break;
  }
  return state;
}

}  // namespace moe
