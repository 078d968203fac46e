// The prefetcher's transfer queue: which host -> device expert copies wait, in which order, which
// are on the link, and which prefetched experts landed but are not yet used. Pure bookkeeping:
// it moves no bytes and knows no clock, device or cache; the owner (live engine, replay link
// model) starts the copies StartNext returns and reports what happens to them.
//
// Life of one transfer of key k (states as returned by state(k)):
//
//   kIdle --Enqueue--> kQueued --StartNext--> kInFlight --Complete--> kLanded (unused prefetch)
//                         |                       |                  or kIdle (demand load)
//                         +--Cancel--> kIdle      +--OnEvicted--> kIdle (detached)
//   kLanded --OnDemandUse--> kIdle (confirmed: useful)      kLanded --OnEvicted--> kIdle (wasted)
//
// Rules:
//   - Priorities: kDemand before kNextLayer before kLookahead; FIFO inside a priority. A queued
//     transfer whose priority is raised (a more urgent Enqueue, or a demand use) moves to the back
//     of its new priority's queue. StartNext takes the front of the most urgent non-empty queue.
//   - De-duplication: a key has at most one transfer queued or in flight. Enqueue of a key that
//     is queued, in flight or landed creates nothing (kDeduplicated); it raises the priority of
//     a queued or in-flight transfer when more urgent (an in-flight one keeps its place on the
//     link; only priority() changes).
//   - A prefetch is a transfer created by Enqueue with kNextLayer or kLookahead. It is
//     *unconfirmed* from its Enqueue until demand uses it (OnDemandUse, or Enqueue with kDemand),
//     which confirms it: it becomes a demand transfer (priority kDemand) or, when landed, leaves
//     the queue's books (kIdle). The queue ends the life of a prefetch as exactly one of: useful
//     (demand used it), cancelled (dropped while queued), wasted (evicted in flight or landed
//     without being used), or it is still unconfirmed. For a queued or in-flight transfer,
//     "is an unconfirmed prefetch" is the same as "priority() != kDemand".
//   - Cap (max_unconfirmed_prefetches, 0 = none): unconfirmed() counts the unconfirmed
//     prefetches queued, in flight or landed. A prefetch Enqueue that would create a transfer
//     while unconfirmed() >= cap is refused (kRejectedCap). Checked before the byte budget.
//   - Byte budget (prefetch_bytes_per_step, 0 = none): a prefetch Enqueue that creates a
//     transfer charges expert_bytes to the current step (BeginStep starts a step with nothing
//     charged); one that would take the step's charge over the budget is refused
//     (kRejectedBudget). Cancelling a queued prefetch charged in the current step refunds its
//     bytes (one charged in an earlier step refunds nothing: that step's budget is gone). Demand
//     is never refused and never charged. A refused Enqueue changes nothing but its counter.
//   - Cancellation: Cancel drops one queued transfer (any priority: a demand whose request was
//     aborted may go too); CancelStale drops the queued prefetches of one layer that a new
//     prediction no longer names. Transfers already on the link cannot be cancelled.
//   - Eviction (OnEvicted: the key's cache slot was taken back): a queued transfer is cancelled;
//     an in-flight one is detached (the copy cannot be stopped; the key becomes kIdle at once and
//     the owner must not Complete that copy; an unconfirmed prefetch counts wasted); a landed
//     unconfirmed prefetch counts wasted.
//   - Lateness: a demand use of an unconfirmed prefetch still queued or in flight counts useful
//     and late and promotes it to kDemand; one of a landed prefetch counts useful only. The owner
//     should Complete every finished copy before reporting demand uses, or lateness is
//     overstated.
//
// Counters change exactly as documented on TransferCounters. Identities that always hold:
//   demand_issued + prefetch_issued == started + cancelled + queued()
//   started == completed + detached + in_flight()
//   bytes_started == started * expert_bytes;  wasted_bytes == wasted * expert_bytes
//
// Cost: every operation is O(1) (intrusive lists over dense per-key arrays, memory/index_list.h)
// except CancelStale, O(num_experts + keep.size()). Nothing allocates after construction.
// Keys must be < options.space.size() (MOE_CHECK).
//
// Ownership: the queue owns its state only; it holds no pointers to the caller's objects.
// Thread-safety: none. The owner (engine thread, replay loop) serialises every call.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "experts/expert_id.h"
#include "memory/index_list.h"

namespace moe {

// Lower is more urgent.
enum class TransferPriority : uint8_t { kDemand = 0, kNextLayer = 1, kLookahead = 2 };
inline constexpr int kNumTransferPriorities = 3;
std::string_view TransferPriorityName(TransferPriority priority);

struct TransferQueueOptions {
  ExpertSpace space;
  uint64_t expert_bytes = 0;               // bytes of one transfer; > 0
  uint64_t prefetch_bytes_per_step = 0;    // prefetch bytes admitted per step; 0: unlimited
  int64_t max_unconfirmed_prefetches = 0;  // cap on unconfirmed prefetches; 0: unlimited
};

struct TransferCounters {
  uint64_t demand_issued = 0;    // Enqueue(kDemand) that created a transfer
  uint64_t prefetch_issued = 0;  // prefetch Enqueue that created a transfer
  uint64_t deduplicated = 0;     // Enqueue of a key already queued, in flight or landed
  uint64_t promoted = 0;         // unconfirmed prefetches queued or in flight that demand used
  uint64_t cancelled = 0;        // queued transfers dropped (Cancel, CancelStale, OnEvicted)
  uint64_t rejected_budget = 0;  // prefetch Enqueues refused by the per-step byte budget
  uint64_t rejected_cap = 0;     // prefetch Enqueues refused by the unconfirmed cap
  uint64_t started = 0;          // StartNext that returned a transfer
  uint64_t completed = 0;        // Complete calls
  uint64_t detached = 0;         // in-flight transfers detached by OnEvicted
  uint64_t bytes_started = 0;    // started * expert_bytes: link bytes
  uint64_t useful = 0;  // unconfirmed prefetches that demand used (queued, in flight or landed)
  uint64_t late = 0;    // ... of which had not landed yet (queued or in flight)
  uint64_t wasted = 0;  // unconfirmed prefetches evicted in flight or landed
  uint64_t wasted_bytes = 0;  // wasted * expert_bytes
};

class TransferQueue {
 public:
  enum class State : uint8_t {
    kIdle,      // no transfer of the key is tracked
    kQueued,    // waiting for StartNext
    kInFlight,  // returned by StartNext, not yet Completed
    kLanded,    // a completed unconfirmed prefetch: resident, not yet used by demand
  };
  enum class EnqueueResult : uint8_t { kQueued, kDeduplicated, kRejectedBudget, kRejectedCap };
  enum class DemandUse : uint8_t {
    kNotPrefetched,  // the key had no unconfirmed prefetch (idle, or a demand transfer)
    kUseful,         // it was a landed prefetch: confirmed
    kLate,           // it was a queued or in-flight prefetch: confirmed and promoted to kDemand
  };

  // InvalidArgument naming the value when the options are unusable: empty or too large (> 2^31
  // keys) space, expert_bytes == 0, negative cap, or a non-zero per-step budget smaller than one
  // transfer (no prefetch could ever pass).
  static absl::Status Validate(const TransferQueueOptions& options);

  // MOE_CHECK fails unless Validate(options) is OK: callers validate user input first.
  explicit TransferQueue(const TransferQueueOptions& options);

  // Starts a new step: nothing charged against prefetch_bytes_per_step.
  void BeginStep();

  // Asks for `key` to be copied with `priority`. kQueued: a new transfer was queued (counted in
  // demand_issued or prefetch_issued; a prefetch charged expert_bytes to the step). Otherwise see
  // the rules above. Enqueue(kDemand) of an unconfirmed prefetch is also a demand use of it
  // (counts useful, and late + promoted unless it landed).
  EnqueueResult Enqueue(ExpertKey key, TransferPriority priority);

  // Whether a prefetch Enqueue of an idle key would be admitted now (kQueued), or which limit
  // refuses it (kRejectedCap, kRejectedBudget; the cap is checked first). Changes nothing and
  // counts nothing: owners ask before committing cache space to a prefetch.
  EnqueueResult CheckPrefetch() const;

  // Drops the queued transfer of `key` (counts cancelled; refunds a prefetch charged this step).
  // Returns false, changing nothing, when `key` is not queued (idle, in flight or landed).
  bool Cancel(ExpertKey key);

  // The prediction for `layer` changed: cancels (as Cancel) every queued unconfirmed prefetch of
  // a key of `layer` that is not in `keep`. Keys of `keep` in other layers are ignored; demand
  // transfers and transfers in flight are never touched. Returns the number cancelled and, when
  // `cancelled` is given, appends their keys to it (the owner frees their cache slots).
  int64_t CancelStale(int32_t layer, std::span<const ExpertKey> keep,
                      std::vector<ExpertKey>* cancelled = nullptr);

  // The most urgent queued transfer, without starting it; nullopt when nothing is queued.
  std::optional<ExpertKey> Peek() const;

  // Pops the most urgent queued transfer (FIFO within a priority), marks it in flight and counts
  // started and bytes_started. nullopt when nothing is queued.
  std::optional<ExpertKey> StartNext();

  // The in-flight transfer of `key` finished: counts completed; an unconfirmed prefetch becomes
  // kLanded, a demand transfer kIdle. MOE_CHECK fails unless state(key) == kInFlight.
  void Complete(ExpertKey key);

  // Demand needs `key` now (it is resident or on its way). See DemandUse; counters: kUseful
  // counts useful; kLate counts useful, late and promoted (a queued transfer moves to the back
  // of the demand queue). kNotPrefetched changes nothing.
  DemandUse OnDemandUse(ExpertKey key);

  // The cache slot of `key` was taken back (evicted or erased). Returns the state before: a
  // queued transfer is cancelled (as Cancel); an in-flight one is detached (counts detached; the
  // owner must not Complete it; an unconfirmed prefetch also counts wasted); a landed one counts
  // wasted. Idle: nothing.
  State OnEvicted(ExpertKey key);

  State state(ExpertKey key) const { return static_cast<State>(state_[Checked(key)]); }
  // Priority of a queued or in-flight transfer (kDemand once a prefetch is confirmed);
  // meaningless for other states.
  TransferPriority priority(ExpertKey key) const {
    return static_cast<TransferPriority>(priority_[Checked(key)]);
  }
  size_t queued() const { return queued_[0] + queued_[1] + queued_[2]; }
  size_t queued(TransferPriority priority) const { return queued_[Index(priority)]; }
  size_t in_flight() const { return in_flight_; }
  int64_t unconfirmed() const { return unconfirmed_; }
  uint64_t step_prefetch_bytes() const { return step_bytes_; }  // charged in the current step
  const TransferCounters& counters() const { return counters_; }
  const TransferQueueOptions& options() const { return options_; }

 private:
  static size_t Index(TransferPriority p) { return static_cast<size_t>(p); }
  ExpertKey Checked(ExpertKey key) const;
  // Removes a queued `key` from its list and refunds its charge when made this step.
  void Unqueue(ExpertKey key);
  // Confirms the unconfirmed prefetch of `key`: counts useful (and late + promoted when not
  // landed), moves a queued one to the back of the demand list.
  DemandUse Confirm(ExpertKey key);

  TransferQueueOptions options_;
  uint32_t num_keys_;
  internal::IndexLists lists_;       // one list per priority; queued keys only
  std::vector<uint8_t> state_;       // State per key
  std::vector<uint8_t> priority_;    // TransferPriority per queued / in-flight key
  std::vector<uint64_t> charged_;    // step number + 1 of a queued prefetch's charge; 0: none
  std::vector<uint32_t> keep_mark_;  // CancelStale scratch: == keep_stamp_ when in `keep`
  uint32_t keep_stamp_ = 0;
  uint64_t step_ = 0;
  uint64_t step_bytes_ = 0;
  std::array<size_t, kNumTransferPriorities> queued_{};
  size_t in_flight_ = 0;
  int64_t unconfirmed_ = 0;
  TransferCounters counters_;
};

}  // namespace moe
