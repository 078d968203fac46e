// TransferQueue: each rule of the contract in memory/transfer_queue.h, then randomized operation
// sequences checked step by step against a plain reference model (std::map + std::deque).
#include "memory/transfer_queue.h"

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe {
namespace {

using Priority = TransferPriority;
using State = TransferQueue::State;
using Result = TransferQueue::EnqueueResult;
using Use = TransferQueue::DemandUse;

constexpr ExpertSpace kSpace{4, 8};  // keys 0..31; layer l holds keys [8l, 8l + 8)
constexpr uint64_t kBytes = 100;

TransferQueueOptions Options(uint64_t budget = 0, int64_t cap = 0) {
  TransferQueueOptions o;
  o.space = kSpace;
  o.expert_bytes = kBytes;
  o.prefetch_bytes_per_step = budget;
  o.max_unconfirmed_prefetches = cap;
  return o;
}

std::vector<ExpertKey> Drain(TransferQueue& q) {
  std::vector<ExpertKey> order;
  while (auto k = q.StartNext()) order.push_back(*k);
  return order;
}

TEST(TransferQueue, ValidateNamesTheBadOption) {
  EXPECT_TRUE(TransferQueue::Validate(Options()).ok());
  TransferQueueOptions o = Options();
  o.space = ExpertSpace{0, 8};
  EXPECT_EQ(TransferQueue::Validate(o).code(), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.expert_bytes = 0;
  EXPECT_NE(std::string(TransferQueue::Validate(o).message()).find("expert_bytes"),
            std::string::npos);
  o = Options(/*budget=*/0, /*cap=*/-1);
  EXPECT_NE(std::string(TransferQueue::Validate(o).message()).find("-1"), std::string::npos);
  o = Options(/*budget=*/kBytes - 1);
  EXPECT_NE(std::string(TransferQueue::Validate(o).message()).find("99 bytes"), std::string::npos);
  EXPECT_TRUE(TransferQueue::Validate(Options(/*budget=*/kBytes)).ok());
}

TEST(TransferQueueDeathTest, ConstructorAndCompleteCheckTheirPreconditions) {
  TransferQueueOptions bad = Options();
  bad.expert_bytes = 0;
  EXPECT_DEATH(TransferQueue{bad}, "expert_bytes");
  TransferQueue q(Options());
  EXPECT_DEATH(q.Complete(3), "not in flight");
  EXPECT_DEATH(q.Enqueue(32, Priority::kDemand), "out of range");
}

TEST(TransferQueue, StartsByPriorityThenFifo) {
  TransferQueue q(Options());
  EXPECT_EQ(q.Enqueue(1, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(q.Enqueue(2, Priority::kNextLayer), Result::kQueued);
  EXPECT_EQ(q.Enqueue(3, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(q.Enqueue(4, Priority::kDemand), Result::kQueued);
  EXPECT_EQ(q.Enqueue(5, Priority::kNextLayer), Result::kQueued);
  EXPECT_EQ(q.Enqueue(6, Priority::kDemand), Result::kQueued);
  EXPECT_EQ(q.queued(), 6u);
  EXPECT_EQ(q.queued(Priority::kDemand), 2u);
  EXPECT_EQ(q.queued(Priority::kNextLayer), 2u);
  EXPECT_EQ(q.queued(Priority::kLookahead), 2u);
  ASSERT_EQ(q.Peek(), std::optional<ExpertKey>(4));
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{4, 6, 2, 5, 1, 3}));
  EXPECT_EQ(q.Peek(), std::nullopt);
  EXPECT_EQ(q.StartNext(), std::nullopt);
  EXPECT_EQ(q.in_flight(), 6u);
  EXPECT_EQ(q.counters().demand_issued, 2u);
  EXPECT_EQ(q.counters().prefetch_issued, 4u);
  EXPECT_EQ(q.counters().started, 6u);
  EXPECT_EQ(q.counters().bytes_started, 6 * kBytes);
}

TEST(TransferQueue, DemandJumpsAheadOfQueuedPrefetchesAddedEarlier) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);
  q.Enqueue(2, Priority::kNextLayer);
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(2));
  q.Enqueue(7, Priority::kDemand);
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(7));
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(1));
}

TEST(TransferQueue, DeduplicatesQueuedInFlightAndLandedKeys) {
  TransferQueue q(Options());
  EXPECT_EQ(q.Enqueue(1, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(q.Enqueue(1, Priority::kLookahead), Result::kDeduplicated);
  EXPECT_EQ(q.queued(), 1u);
  ASSERT_EQ(q.StartNext(), std::optional<ExpertKey>(1));
  EXPECT_EQ(q.Enqueue(1, Priority::kLookahead), Result::kDeduplicated);
  EXPECT_EQ(q.queued(), 0u);
  q.Complete(1);
  EXPECT_EQ(q.state(1), State::kLanded);
  EXPECT_EQ(q.Enqueue(1, Priority::kNextLayer), Result::kDeduplicated);
  EXPECT_EQ(q.state(1), State::kLanded);
  EXPECT_EQ(q.counters().deduplicated, 3u);
  EXPECT_EQ(q.counters().prefetch_issued, 1u);
  EXPECT_EQ(q.counters().started, 1u);
  EXPECT_EQ(q.StartNext(), std::nullopt);
}

TEST(TransferQueue, MoreUrgentDuplicateRaisesPriorityToTheBackOfItsQueue) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);
  q.Enqueue(2, Priority::kNextLayer);
  q.Enqueue(3, Priority::kLookahead);
  EXPECT_EQ(q.Enqueue(3, Priority::kNextLayer), Result::kDeduplicated);
  EXPECT_EQ(q.priority(3), Priority::kNextLayer);
  EXPECT_EQ(q.queued(Priority::kNextLayer), 2u);
  EXPECT_EQ(q.queued(Priority::kLookahead), 1u);
  // A less urgent duplicate changes nothing.
  EXPECT_EQ(q.Enqueue(2, Priority::kLookahead), Result::kDeduplicated);
  EXPECT_EQ(q.priority(2), Priority::kNextLayer);
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{2, 3, 1}));
  EXPECT_EQ(q.counters().deduplicated, 2u);
  EXPECT_EQ(q.counters().promoted, 0u);  // promotion means: to demand
}

TEST(TransferQueue, RaisingAnInFlightPrefetchOnlyChangesItsPriority) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);
  q.StartNext();
  EXPECT_EQ(q.Enqueue(1, Priority::kNextLayer), Result::kDeduplicated);
  EXPECT_EQ(q.state(1), State::kInFlight);
  EXPECT_EQ(q.priority(1), Priority::kNextLayer);
  EXPECT_EQ(q.queued(), 0u);
  EXPECT_EQ(q.unconfirmed(), 1);  // still a prefetch
}

TEST(TransferQueue, DemandEnqueueOfAQueuedPrefetchPromotesItBehindEarlierDemand) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);
  q.Enqueue(2, Priority::kLookahead);
  q.Enqueue(5, Priority::kDemand);
  EXPECT_EQ(q.Enqueue(2, Priority::kDemand), Result::kDeduplicated);
  EXPECT_EQ(q.priority(2), Priority::kDemand);
  q.Enqueue(6, Priority::kDemand);
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{5, 2, 6, 1}));
  const TransferCounters& c = q.counters();
  EXPECT_EQ(c.deduplicated, 1u);
  EXPECT_EQ(c.promoted, 1u);
  EXPECT_EQ(c.useful, 1u);
  EXPECT_EQ(c.late, 1u);
  EXPECT_EQ(c.demand_issued, 2u);
  EXPECT_EQ(c.prefetch_issued, 2u);
  EXPECT_EQ(q.unconfirmed(), 1);  // only key 1
}

TEST(TransferQueue, CancelDropsOnlyQueuedTransfers) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);
  q.Enqueue(2, Priority::kLookahead);
  q.Enqueue(3, Priority::kDemand);
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(3));
  EXPECT_FALSE(q.Cancel(3));  // in flight
  EXPECT_FALSE(q.Cancel(9));  // idle
  EXPECT_TRUE(q.Cancel(1));
  EXPECT_FALSE(q.Cancel(1));  // already gone
  EXPECT_EQ(q.state(1), State::kIdle);
  EXPECT_EQ(q.queued(), 1u);
  EXPECT_EQ(q.unconfirmed(), 1);
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{2}));
  EXPECT_EQ(q.counters().cancelled, 1u);
  q.Complete(2);
  EXPECT_FALSE(q.Cancel(2));  // landed
  EXPECT_EQ(q.counters().cancelled, 1u);
}

TEST(TransferQueue, CancelOfAQueuedDemandIsAllowed) {
  TransferQueue q(Options());
  q.Enqueue(4, Priority::kDemand);
  EXPECT_TRUE(q.Cancel(4));
  EXPECT_EQ(q.unconfirmed(), 0);
  EXPECT_EQ(q.counters().cancelled, 1u);
  EXPECT_EQ(q.StartNext(), std::nullopt);
}

TEST(TransferQueue, ACancelledKeyQueuedAgainGoesToTheBack) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);
  q.Enqueue(2, Priority::kLookahead);
  q.Enqueue(3, Priority::kLookahead);
  q.Cancel(1);
  EXPECT_EQ(q.Enqueue(1, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{2, 3, 1}));
  EXPECT_EQ(q.counters().prefetch_issued, 4u);
  EXPECT_EQ(q.counters().started, 3u);
}

TEST(TransferQueue, ByteBudgetRefusesPrefetchesOverTheStepCharge) {
  TransferQueue q(Options(/*budget=*/2 * kBytes + kBytes / 2));
  EXPECT_EQ(q.Enqueue(1, Priority::kNextLayer), Result::kQueued);
  EXPECT_EQ(q.Enqueue(2, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(q.step_prefetch_bytes(), 2 * kBytes);
  EXPECT_EQ(q.Enqueue(3, Priority::kNextLayer), Result::kRejectedBudget);
  EXPECT_EQ(q.state(3), State::kIdle);
  // Demand ignores the budget and is not charged; a duplicate is not charged either.
  EXPECT_EQ(q.Enqueue(4, Priority::kDemand), Result::kQueued);
  EXPECT_EQ(q.Enqueue(1, Priority::kNextLayer), Result::kDeduplicated);
  EXPECT_EQ(q.step_prefetch_bytes(), 2 * kBytes);
  // Cancelling refunds this step's charge.
  EXPECT_TRUE(q.Cancel(2));
  EXPECT_EQ(q.step_prefetch_bytes(), kBytes);
  EXPECT_EQ(q.Enqueue(3, Priority::kNextLayer), Result::kQueued);
  EXPECT_EQ(q.Enqueue(5, Priority::kNextLayer), Result::kRejectedBudget);
  EXPECT_EQ(q.counters().rejected_budget, 2u);
  EXPECT_EQ(q.counters().prefetch_issued, 3u);
  // A new step starts with nothing charged; cancelling an earlier step's prefetch refunds nothing.
  q.BeginStep();
  EXPECT_EQ(q.step_prefetch_bytes(), 0u);
  EXPECT_EQ(q.Enqueue(5, Priority::kLookahead), Result::kQueued);
  EXPECT_TRUE(q.Cancel(3));
  EXPECT_EQ(q.step_prefetch_bytes(), kBytes);
  EXPECT_TRUE(q.Cancel(5));
  EXPECT_EQ(q.step_prefetch_bytes(), 0u);
}

TEST(TransferQueue, StartedPrefetchIsNotRefundedByAnEviction) {
  TransferQueue q(Options(/*budget=*/kBytes));
  q.Enqueue(1, Priority::kLookahead);
  q.StartNext();
  EXPECT_EQ(q.OnEvicted(1), State::kInFlight);
  EXPECT_EQ(q.step_prefetch_bytes(), kBytes);
  EXPECT_EQ(q.Enqueue(2, Priority::kLookahead), Result::kRejectedBudget);
}

TEST(TransferQueue, CapCountsQueuedInFlightAndLandedUnconfirmedPrefetches) {
  TransferQueue q(Options(/*budget=*/0, /*cap=*/3));
  q.Enqueue(1, Priority::kLookahead);  // will land
  q.Enqueue(2, Priority::kLookahead);  // will be in flight
  q.Enqueue(3, Priority::kLookahead);  // stays queued
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(1));
  q.Complete(1);
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(2));
  EXPECT_EQ(q.unconfirmed(), 3);
  EXPECT_EQ(q.Enqueue(4, Priority::kNextLayer), Result::kRejectedCap);
  EXPECT_EQ(q.Enqueue(4, Priority::kDemand), Result::kQueued);  // demand ignores the cap
  EXPECT_EQ(q.unconfirmed(), 3);
  // Confirming the landed one frees a place.
  EXPECT_EQ(q.OnDemandUse(1), Use::kUseful);
  EXPECT_EQ(q.unconfirmed(), 2);
  EXPECT_EQ(q.Enqueue(5, Priority::kNextLayer), Result::kQueued);
  EXPECT_EQ(q.Enqueue(6, Priority::kNextLayer), Result::kRejectedCap);
  // So does promoting an in-flight one, cancelling a queued one, or evicting a landed one.
  EXPECT_EQ(q.OnDemandUse(2), Use::kLate);
  EXPECT_EQ(q.unconfirmed(), 2);
  EXPECT_TRUE(q.Cancel(3));
  EXPECT_EQ(q.unconfirmed(), 1);
  EXPECT_EQ(q.counters().rejected_cap, 2u);
  EXPECT_EQ(q.counters().rejected_budget, 0u);
}

TEST(TransferQueue, CapIsCheckedBeforeTheBudget) {
  TransferQueue q(Options(/*budget=*/kBytes, /*cap=*/1));
  q.Enqueue(1, Priority::kLookahead);
  EXPECT_EQ(q.Enqueue(2, Priority::kLookahead), Result::kRejectedCap);
  q.BeginStep();
  q.Cancel(1);  // unconfirmed 0; the step has its whole budget
  EXPECT_EQ(q.Enqueue(2, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(q.Enqueue(3, Priority::kDemand), Result::kQueued);
  q.OnDemandUse(2);  // confirmed: the cap has room, the budget has none
  EXPECT_EQ(q.Enqueue(4, Priority::kLookahead), Result::kRejectedBudget);
  EXPECT_EQ(q.counters().rejected_cap, 1u);
  EXPECT_EQ(q.counters().rejected_budget, 1u);
}

TEST(TransferQueue, CompleteLandsPrefetchesAndRetiresDemand) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kNextLayer);
  q.Enqueue(2, Priority::kDemand);
  q.StartNext();
  q.StartNext();
  EXPECT_EQ(q.state(1), State::kInFlight);
  EXPECT_EQ(q.state(2), State::kInFlight);
  q.Complete(2);
  q.Complete(1);
  EXPECT_EQ(q.state(1), State::kLanded);
  EXPECT_EQ(q.state(2), State::kIdle);
  EXPECT_EQ(q.in_flight(), 0u);
  EXPECT_EQ(q.unconfirmed(), 1);
  EXPECT_EQ(q.counters().completed, 2u);
  // A landed key may be queued again only once it left: a demand use confirms it.
  EXPECT_EQ(q.OnDemandUse(1), Use::kUseful);
  EXPECT_EQ(q.state(1), State::kIdle);
  EXPECT_EQ(q.Enqueue(1, Priority::kDemand), Result::kQueued);
}

TEST(TransferQueue, DemandUseCountsUsefulAndLate) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);  // in flight, never used
  q.Enqueue(2, Priority::kLookahead);  // in flight when used
  q.Enqueue(3, Priority::kLookahead);  // landed when used
  q.Enqueue(6, Priority::kDemand);
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{6, 1, 2, 3}));
  q.Complete(3);
  q.Enqueue(4, Priority::kLookahead);  // stays queued, passed by the promoted 7
  q.Enqueue(7, Priority::kLookahead);  // queued when used
  q.Enqueue(8, Priority::kDemand);
  EXPECT_EQ(q.OnDemandUse(7), Use::kLate);  // queued: moves behind demand 8, ahead of 4
  EXPECT_EQ(q.state(7), State::kQueued);
  EXPECT_EQ(q.priority(7), Priority::kDemand);
  EXPECT_EQ(q.OnDemandUse(2), Use::kLate);  // in flight
  EXPECT_EQ(q.state(2), State::kInFlight);
  EXPECT_EQ(q.priority(2), Priority::kDemand);
  EXPECT_EQ(q.OnDemandUse(3), Use::kUseful);  // landed
  EXPECT_EQ(q.state(3), State::kIdle);
  EXPECT_EQ(q.OnDemandUse(3), Use::kNotPrefetched);   // already confirmed
  EXPECT_EQ(q.OnDemandUse(6), Use::kNotPrefetched);   // a demand transfer
  EXPECT_EQ(q.OnDemandUse(2), Use::kNotPrefetched);   // promoted already
  EXPECT_EQ(q.OnDemandUse(20), Use::kNotPrefetched);  // idle
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{8, 7, 4}));
  const TransferCounters& c = q.counters();
  EXPECT_EQ(c.useful, 3u);
  EXPECT_EQ(c.late, 2u);
  EXPECT_EQ(c.promoted, 2u);
  EXPECT_EQ(c.deduplicated, 0u);
  EXPECT_EQ(c.wasted, 0u);
  // Promoted transfers complete as demand transfers: idle, not landed.
  q.Complete(2);
  q.Complete(7);
  EXPECT_EQ(q.state(2), State::kIdle);
  EXPECT_EQ(q.state(7), State::kIdle);
  EXPECT_EQ(q.unconfirmed(), 2);  // 1 and 4, in flight
}

TEST(TransferQueue, EvictionCancelsDetachesOrWastes) {
  TransferQueue q(Options());
  q.Enqueue(1, Priority::kLookahead);  // will land
  q.Enqueue(2, Priority::kLookahead);  // will be in flight
  q.Enqueue(3, Priority::kDemand);     // will be in flight (demand)
  q.Enqueue(4, Priority::kLookahead);  // stays queued
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(3));
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(1));
  q.Complete(1);
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(2));
  EXPECT_EQ(q.OnEvicted(9), State::kIdle);
  EXPECT_EQ(q.OnEvicted(4), State::kQueued);
  EXPECT_EQ(q.OnEvicted(1), State::kLanded);
  EXPECT_EQ(q.OnEvicted(2), State::kInFlight);
  EXPECT_EQ(q.OnEvicted(3), State::kInFlight);
  for (ExpertKey k : {1, 2, 3, 4}) EXPECT_EQ(q.state(k), State::kIdle) << k;
  const TransferCounters& c = q.counters();
  EXPECT_EQ(c.cancelled, 1u);
  EXPECT_EQ(c.detached, 2u);
  EXPECT_EQ(c.wasted, 2u);  // landed 1 and in-flight prefetch 2; not demand 3
  EXPECT_EQ(c.wasted_bytes, 2 * kBytes);
  EXPECT_EQ(c.useful, 0u);
  EXPECT_EQ(q.in_flight(), 0u);
  EXPECT_EQ(q.unconfirmed(), 0);
  EXPECT_EQ(q.StartNext(), std::nullopt);
  // A detached key can be queued again while its old copy is still running.
  EXPECT_EQ(q.Enqueue(2, Priority::kLookahead), Result::kQueued);
  EXPECT_EQ(q.StartNext(), std::optional<ExpertKey>(2));
  EXPECT_EQ(c.started, 4u);
}

TEST(TransferQueue, CancelStaleDropsUnpredictedQueuedPrefetchesOfOneLayer) {
  TransferQueue q(Options(/*budget=*/10 * kBytes));
  const ExpertKey l1 = kSpace.Key(1, 0);  // layer 1 holds keys 8..15
  const ExpertKey other = kSpace.Key(2, 1);
  q.Enqueue(l1 + 3, Priority::kLookahead);  // in flight: untouched
  ASSERT_EQ(q.StartNext(), std::optional<ExpertKey>(l1 + 3));
  q.Enqueue(l1 + 0, Priority::kNextLayer);  // still predicted
  q.Enqueue(l1 + 1, Priority::kLookahead);  // stale
  q.Enqueue(l1 + 2, Priority::kNextLayer);  // stale
  q.Enqueue(l1 + 4, Priority::kDemand);     // demand: untouched
  q.Enqueue(l1 + 5, Priority::kLookahead);  // promoted by demand: untouched
  q.Enqueue(2, Priority::kLookahead);       // layer 0: untouched
  q.Enqueue(other, Priority::kLookahead);   // layer 2: untouched
  q.OnDemandUse(l1 + 5);
  const uint64_t charged = q.step_prefetch_bytes();
  EXPECT_EQ(charged, 7 * kBytes);  // the started l1+3 stays charged
  const std::vector<ExpertKey> keep = {l1 + 0, /*another layer: ignored*/ 2};
  std::vector<ExpertKey> cancelled = {99};  // appended to
  EXPECT_EQ(q.CancelStale(1, keep, &cancelled), 2);
  EXPECT_EQ(cancelled, (std::vector<ExpertKey>{99, l1 + 1, l1 + 2}));
  EXPECT_EQ(q.state(l1 + 1), State::kIdle);
  EXPECT_EQ(q.state(l1 + 2), State::kIdle);
  EXPECT_EQ(q.state(l1 + 0), State::kQueued);
  EXPECT_EQ(q.state(l1 + 3), State::kInFlight);
  EXPECT_EQ(q.step_prefetch_bytes(), charged - 2 * kBytes);
  EXPECT_EQ(q.counters().cancelled, 2u);
  EXPECT_EQ(q.unconfirmed(), 4);  // l1+3 (in flight), l1+0, 2, other
  EXPECT_EQ(Drain(q), (std::vector<ExpertKey>{l1 + 4, l1 + 5, l1 + 0, 2, other}));
  // Nothing queued in the layer: nothing to do. An empty keep cancels every queued prefetch.
  EXPECT_EQ(q.CancelStale(1, {}), 0);
  q.Enqueue(kSpace.Key(3, 0), Priority::kLookahead);
  q.Enqueue(kSpace.Key(3, 7), Priority::kNextLayer);
  EXPECT_EQ(q.CancelStale(3, {}), 2);
  EXPECT_EQ(q.queued(), 0u);
  EXPECT_EQ(q.counters().cancelled, 4u);
}

// ---------------------------------------------------------------------------------------------
// Reference model: per-key records in a std::map and one std::deque per priority, written from
// the contract without the implementation's structure (linear searches, explicit erase).

struct ModelEntry {
  State state = State::kIdle;
  Priority priority = Priority::kDemand;
  bool prefetch = false;  // unconfirmed prefetch
  int64_t charged = -1;   // step of the budget charge while queued; -1: none
};

class Model {
 public:
  explicit Model(const TransferQueueOptions& o) : o_(o) {}

  void BeginStep() {
    ++step_;
    step_bytes_ = 0;
  }

  Result Enqueue(ExpertKey k, Priority p) {
    ModelEntry& e = keys_[k];
    if (e.state != State::kIdle) {
      ++c_.deduplicated;
      if (p == Priority::kDemand) {
        DemandUse(k);
      } else if ((e.state == State::kQueued || e.state == State::kInFlight) && p < e.priority) {
        if (e.state == State::kQueued) {
          Erase(k, e.priority);
          fifo_[int(p)].push_back(k);
        }
        e.priority = p;
      }
      return Result::kDeduplicated;
    }
    if (p != Priority::kDemand) {
      if (o_.max_unconfirmed_prefetches > 0 && Unconfirmed() >= o_.max_unconfirmed_prefetches) {
        ++c_.rejected_cap;
        return Result::kRejectedCap;
      }
      if (o_.prefetch_bytes_per_step > 0 &&
          step_bytes_ + o_.expert_bytes > o_.prefetch_bytes_per_step) {
        ++c_.rejected_budget;
        return Result::kRejectedBudget;
      }
      ++c_.prefetch_issued;
      step_bytes_ += o_.expert_bytes;
      e.charged = step_;
      e.prefetch = true;
    } else {
      ++c_.demand_issued;
      e.prefetch = false;
    }
    e.state = State::kQueued;
    e.priority = p;
    fifo_[int(p)].push_back(k);
    return Result::kQueued;
  }

  bool Cancel(ExpertKey k) {
    ModelEntry& e = keys_[k];
    if (e.state != State::kQueued) return false;
    Erase(k, e.priority);
    if (e.charged == step_) step_bytes_ -= o_.expert_bytes;
    e = ModelEntry{};
    ++c_.cancelled;
    return true;
  }

  int64_t CancelStale(int32_t layer, const std::vector<ExpertKey>& keep) {
    std::vector<ExpertKey> victims;
    for (auto& [k, e] : keys_) {
      if (kSpace.LayerOf(k) == layer && e.state == State::kQueued && e.prefetch &&
          std::find(keep.begin(), keep.end(), k) == keep.end()) {
        victims.push_back(k);
      }
    }
    for (ExpertKey k : victims) Cancel(k);
    return static_cast<int64_t>(victims.size());
  }

  std::optional<ExpertKey> StartNext() {
    for (auto& f : fifo_) {
      if (f.empty()) continue;
      const ExpertKey k = f.front();
      f.pop_front();
      ModelEntry& e = keys_[k];
      e.state = State::kInFlight;
      e.charged = -1;
      ++c_.started;
      c_.bytes_started += o_.expert_bytes;
      return k;
    }
    return std::nullopt;
  }

  void Complete(ExpertKey k) {
    ModelEntry& e = keys_[k];
    ++c_.completed;
    if (e.prefetch) {
      e.state = State::kLanded;
    } else {
      e = ModelEntry{};
    }
  }

  Use DemandUse(ExpertKey k) {
    ModelEntry& e = keys_[k];
    if (!e.prefetch) return Use::kNotPrefetched;
    ++c_.useful;
    if (e.state == State::kLanded) {
      e = ModelEntry{};
      return Use::kUseful;
    }
    ++c_.late;
    ++c_.promoted;
    e.prefetch = false;
    if (e.state == State::kQueued) {
      Erase(k, e.priority);
      fifo_[0].push_back(k);
    }
    e.priority = Priority::kDemand;
    return Use::kLate;
  }

  State Evict(ExpertKey k) {
    ModelEntry& e = keys_[k];
    const State before = e.state;
    if (before == State::kQueued) {
      Cancel(k);
    } else if (before == State::kInFlight || before == State::kLanded) {
      if (before == State::kInFlight) ++c_.detached;
      if (e.prefetch) {
        ++c_.wasted;
        c_.wasted_bytes += o_.expert_bytes;
      }
      e = ModelEntry{};
    }
    return before;
  }

  int64_t Unconfirmed() const {
    int64_t n = 0;
    for (const auto& [k, e] : keys_) n += e.prefetch && e.state != State::kIdle;
    return n;
  }
  std::vector<ExpertKey> InFlight() const {
    std::vector<ExpertKey> v;
    for (const auto& [k, e] : keys_) {
      if (e.state == State::kInFlight) v.push_back(k);
    }
    return v;
  }
  size_t Queued(int p) const { return fifo_[p].size(); }
  const ModelEntry& Entry(ExpertKey k) { return keys_[k]; }
  const TransferCounters& counters() const { return c_; }
  uint64_t step_bytes() const { return step_bytes_; }

 private:
  void Erase(ExpertKey k, Priority p) {
    auto& f = fifo_[int(p)];
    auto it = std::find(f.begin(), f.end(), k);
    ASSERT_NE(it, f.end());
    f.erase(it);
  }

  TransferQueueOptions o_;
  std::map<ExpertKey, ModelEntry> keys_;
  std::deque<ExpertKey> fifo_[3];
  int64_t step_ = 0;
  uint64_t step_bytes_ = 0;
  TransferCounters c_;
};

void ExpectSameCounters(const TransferCounters& a, const TransferCounters& b) {
  EXPECT_EQ(a.demand_issued, b.demand_issued);
  EXPECT_EQ(a.prefetch_issued, b.prefetch_issued);
  EXPECT_EQ(a.deduplicated, b.deduplicated);
  EXPECT_EQ(a.promoted, b.promoted);
  EXPECT_EQ(a.cancelled, b.cancelled);
  EXPECT_EQ(a.rejected_budget, b.rejected_budget);
  EXPECT_EQ(a.rejected_cap, b.rejected_cap);
  EXPECT_EQ(a.started, b.started);
  EXPECT_EQ(a.completed, b.completed);
  EXPECT_EQ(a.detached, b.detached);
  EXPECT_EQ(a.bytes_started, b.bytes_started);
  EXPECT_EQ(a.useful, b.useful);
  EXPECT_EQ(a.late, b.late);
  EXPECT_EQ(a.wasted, b.wasted);
  EXPECT_EQ(a.wasted_bytes, b.wasted_bytes);
}

struct RandomParam {
  uint64_t budget;
  int64_t cap;
};

class TransferQueueRandomTest : public ::testing::TestWithParam<RandomParam> {};

TEST_P(TransferQueueRandomTest, MatchesTheReferenceModel) {
  const TransferQueueOptions options = Options(GetParam().budget, GetParam().cap);
  TransferQueue q(options);
  Model m(options);
  std::mt19937_64 rng(20240611 + GetParam().budget * 7 + static_cast<uint64_t>(GetParam().cap));
  std::uniform_int_distribution<int> op_dist(0, 99);
  std::uniform_int_distribution<ExpertKey> key_dist(0, static_cast<ExpertKey>(kSpace.size() - 1));
  std::uniform_int_distribution<int> prio_dist(0, 2);
  std::uniform_int_distribution<int32_t> layer_dist(0, kSpace.num_layers - 1);
  std::uniform_int_distribution<int> expert_dist(0, kSpace.num_experts - 1);
  uint64_t starts = 0, rejections = 0, lates = 0, stale = 0;
  constexpr int kOps = 20000;
  for (int i = 0; i < kOps; ++i) {
    SCOPED_TRACE(::testing::Message() << "op " << i);
    const int r = op_dist(rng);
    if (r < 3) {
      q.BeginStep();
      m.BeginStep();
    } else if (r < 40) {
      const ExpertKey k = key_dist(rng);
      const auto p = static_cast<Priority>(prio_dist(rng));
      const Result got = q.Enqueue(k, p);
      ASSERT_EQ(got, m.Enqueue(k, p)) << "enqueue " << k << " " << TransferPriorityName(p);
      rejections += got == Result::kRejectedBudget || got == Result::kRejectedCap;
    } else if (r < 46) {
      const ExpertKey k = key_dist(rng);
      ASSERT_EQ(q.Cancel(k), m.Cancel(k)) << "cancel " << k;
    } else if (r < 48) {
      const int32_t layer = layer_dist(rng);
      std::vector<ExpertKey> keep;
      for (int n = expert_dist(rng) / 2; n > 0; --n) {
        keep.push_back(kSpace.Key(layer, expert_dist(rng)));
      }
      if (op_dist(rng) < 20) keep.push_back(key_dist(rng));  // maybe another layer
      const int64_t got = q.CancelStale(layer, keep);
      ASSERT_EQ(got, m.CancelStale(layer, keep)) << "cancel stale layer " << layer;
      stale += static_cast<uint64_t>(got);
    } else if (r < 68) {
      const std::optional<ExpertKey> got = q.StartNext();
      ASSERT_EQ(got, m.StartNext()) << "start";
      starts += got.has_value();
    } else if (r < 83) {
      const std::vector<ExpertKey> flying = m.InFlight();
      if (flying.empty()) continue;
      const ExpertKey k = flying[std::uniform_int_distribution<size_t>(0, flying.size() - 1)(rng)];
      q.Complete(k);
      m.Complete(k);
    } else if (r < 93) {
      const ExpertKey k = key_dist(rng);
      const Use got = q.OnDemandUse(k);
      ASSERT_EQ(got, m.DemandUse(k)) << "demand use " << k;
      lates += got == Use::kLate;
    } else {
      const ExpertKey k = key_dist(rng);
      ASSERT_EQ(q.OnEvicted(k), m.Evict(k)) << "evict " << k;
    }
    ExpectSameCounters(q.counters(), m.counters());
    ASSERT_EQ(q.unconfirmed(), m.Unconfirmed());
    for (int p = 0; p < 3; ++p) ASSERT_EQ(q.queued(static_cast<Priority>(p)), m.Queued(p));
    ASSERT_EQ(q.in_flight(), m.InFlight().size());
    ASSERT_EQ(q.step_prefetch_bytes(), m.step_bytes());
    if (options.max_unconfirmed_prefetches > 0) {
      ASSERT_LE(q.unconfirmed(), options.max_unconfirmed_prefetches);
    }
    if (options.prefetch_bytes_per_step > 0) {
      ASSERT_LE(q.step_prefetch_bytes(), options.prefetch_bytes_per_step);
    }
    const TransferCounters& c = q.counters();
    ASSERT_EQ(c.demand_issued + c.prefetch_issued, c.started + c.cancelled + q.queued());
    ASSERT_EQ(c.started, c.completed + c.detached + q.in_flight());
    if (i % 97 == 0) {
      for (ExpertKey k = 0; k < kSpace.size(); ++k) {
        const ModelEntry& e = m.Entry(k);
        ASSERT_EQ(q.state(k), e.state) << "key " << k;
        if (e.state == State::kQueued || e.state == State::kInFlight) {
          ASSERT_EQ(q.priority(k), e.priority) << "key " << k;
          ASSERT_EQ(e.prefetch, e.priority != Priority::kDemand) << "key " << k;
        }
      }
    }
  }
  // Every kind of event happened, so the comparison above exercised it.
  EXPECT_GT(starts, 1000u);
  EXPECT_GT(lates, 50u);
  EXPECT_GT(stale, 20u);
  EXPECT_GT(q.counters().deduplicated, 500u);
  EXPECT_GT(q.counters().wasted, 50u);
  EXPECT_GT(q.counters().detached, 20u);
  if (options.prefetch_bytes_per_step > 0 || options.max_unconfirmed_prefetches > 0) {
    EXPECT_GT(rejections, 100u);
  }
}

INSTANTIATE_TEST_SUITE_P(Limits, TransferQueueRandomTest,
                         ::testing::Values(RandomParam{0, 0}, RandomParam{3 * kBytes, 0},
                                           RandomParam{0, 5}, RandomParam{4 * kBytes + 1, 6}),
                         [](const ::testing::TestParamInfo<RandomParam>& info) {
                           return "budget" + std::to_string(info.param.budget) + "_cap" +
                                  std::to_string(info.param.cap);
                         });

}  // namespace
}  // namespace moe
