#include "tools/replay/replay_schedule.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/status.h"

namespace moe {

ReplaySchedule::ReplaySchedule(const RoutingTrace& trace, std::span<const int64_t> sequence_order,
                               int32_t batch_size, int32_t prefill_chunk) {
  std::vector<int64_t> order(sequence_order.begin(), sequence_order.end());
  if (order.empty()) {
    order.resize(trace.sequences.size());
    std::iota(order.begin(), order.end(), 0);
  }
  num_sequences_ = static_cast<int64_t>(order.size());
  batch_size = std::max(batch_size, 1);
  interleaved_ = batch_size > 1;

  // Each slot holds (sequence index, next token offset within it).
  struct Slot {
    int64_t seq = -1;
    int64_t next = 0;
  };
  std::vector<Slot> slots(static_cast<size_t>(batch_size));
  size_t next_seq = 0;
  auto refill = [&](Slot& s) {
    while (next_seq < order.size()) {
      int64_t q = order[next_seq++];
      if (trace.sequences[q].num_tokens > 0) {
        s.seq = q;
        s.next = 0;
        return;
      }
    }
    s.seq = -1;
  };
  for (Slot& s : slots) refill(s);

  int64_t total = 0;
  for (int64_t q : order) total += trace.sequences[q].num_tokens;
  tokens_.reserve(static_cast<size_t>(total));
  if (batch_size == 1 && prefill_chunk > 0) {
    for (int64_t q : order) {
      const TraceSequence& seq = trace.sequences[q];
      for (int64_t t = 0; t < seq.num_tokens;) {
        ReplayStep step;
        step.first = static_cast<int64_t>(tokens_.size());
        step.starts_sequence_alone = t == 0;
        int64_t end = t + 1;
        if (trace.phases[seq.token_offset + t] == Phase::kPrefill) {
          while (end < seq.num_tokens && end - t < prefill_chunk &&
                 trace.phases[seq.token_offset + end] == Phase::kPrefill) {
            ++end;
          }
        }
        for (; t < end; ++t) tokens_.push_back({seq.token_offset + t, q});
        step.count = static_cast<int64_t>(tokens_.size()) - step.first;
        steps_.push_back(step);
      }
    }
    return;
  }
  while (true) {
    ReplayStep step;
    step.first = static_cast<int64_t>(tokens_.size());
    for (Slot& s : slots) {
      if (s.seq < 0) continue;
      const TraceSequence& seq = trace.sequences[s.seq];
      if (batch_size == 1 && s.next == 0) step.starts_sequence_alone = true;
      tokens_.push_back({seq.token_offset + s.next, s.seq});
      if (++s.next == seq.num_tokens) refill(s);
    }
    step.count = static_cast<int64_t>(tokens_.size()) - step.first;
    if (step.count == 0) break;
    steps_.push_back(step);
  }
}

void SplitSequences(int64_t n, double train_fraction, std::vector<int64_t>* train,
                    std::vector<int64_t>* eval) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  // Fisher-Yates with splitmix64 so the split is the same on every platform.
  uint64_t state = 0x5eed5eedULL;
  auto next = [&state]() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  for (int64_t i = n - 1; i > 0; --i) {
    std::swap(idx[i], idx[next() % static_cast<uint64_t>(i + 1)]);
  }
  const int64_t n_train =
      std::clamp<int64_t>(std::llround(train_fraction * static_cast<double>(n)), 0, n);
  train->assign(idx.begin(), idx.begin() + n_train);
  eval->assign(idx.begin() + n_train, idx.end());
  std::sort(train->begin(), train->end());
  std::sort(eval->begin(), eval->end());
}

absl::Status SplitForTraining(int64_t n, double train_fraction, std::vector<int64_t>* train,
                              std::vector<int64_t>* replay) {
  if (!(train_fraction >= 0 && train_fraction < 1)) {
    return InvalidArgument("--train-fraction {} must be in [0, 1)", train_fraction);
  }
  train->clear();
  replay->clear();
  if (train_fraction == 0) {
    for (int64_t i = 0; i < n; ++i) replay->push_back(i);
    return absl::OkStatus();
  }
  SplitSequences(n, train_fraction, train, replay);
  if (replay->empty() || train->empty()) {
    return InvalidArgument("--train-fraction {} leaves an empty part of {} sequences",
                           train_fraction, n);
  }
  return absl::OkStatus();
}

}  // namespace moe
