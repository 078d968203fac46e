// The order in which a replay visits a trace's tokens.
//
// A schedule is a list of steps; each step is the set of tokens processed together (one token
// per active sequence, as continuous batching does) and every step visits all MoE layers in
// order, each token of the step at each layer. With batch size 1 a step is one token and
// sequences run one after another (or prompts run as prefill chunks, below). With batch size B, B
// sequence slots run side by side; when a sequence ends its slot takes the next sequence (in the
// order given).
//
// Immutable after construction; safe to share between threads.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "predictor/routing_trace.h"

namespace moe {

struct ReplayStep {
  int64_t first = 0;  // index into ReplaySchedule::tokens
  int64_t count = 0;
  bool starts_sequence_alone = false;  // batch 1: the first token of a sequence
};

struct ScheduledToken {
  int64_t token = 0;     // row in the trace
  int64_t sequence = 0;  // index into trace.sequences
};

class ReplaySchedule {
 public:
  // `sequence_order` lists sequence indices to replay (all of them when empty).
  // prefill_chunk > 0 (batch size 1 only): each run of consecutive prefill tokens of a sequence
  // is split, from its first token, into steps of up to prefill_chunk tokens, as the engine
  // runs a prompt; decode tokens stay one per step.
  ReplaySchedule(const RoutingTrace& trace, std::span<const int64_t> sequence_order,
                 int32_t batch_size, int32_t prefill_chunk = 0);

  std::span<const ReplayStep> steps() const { return steps_; }
  std::span<const ScheduledToken> Tokens(const ReplayStep& step) const {
    return {tokens_.data() + step.first, static_cast<size_t>(step.count)};
  }
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t num_sequences() const { return num_sequences_; }
  // True when steps mix tokens of several sequences (batch size > 1).
  bool interleaved() const { return interleaved_; }

 private:
  std::vector<ReplayStep> steps_;
  std::vector<ScheduledToken> tokens_;
  int64_t num_sequences_ = 0;
  bool interleaved_ = false;
};

// Deterministically splits sequence indices [0, n) into (train, eval): a fixed-seed shuffle,
// then the first round(train_fraction * n) go to train. Each part keeps ascending order.
void SplitSequences(int64_t n, double train_fraction, std::vector<int64_t>* train,
                    std::vector<int64_t>* eval);
// The tools' --train-fraction: train_fraction 0 replays all n sequences and trains on none;
// in (0, 1) it is SplitSequences. InvalidArgument naming the value when it is outside [0, 1) or
// leaves a part empty.
absl::Status SplitForTraining(int64_t n, double train_fraction, std::vector<int64_t>* train,
                              std::vector<int64_t>* replay);

}  // namespace moe
