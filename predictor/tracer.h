// The activation tracer: records which experts every token routed to at every MoE layer, while
// the engine runs, into a RoutingTrace (predictor/routing_trace.h) that moe-replay reads.
//
// The engine reports each step: BeginStep with the sequence and phase of each of the step's
// tokens, RecordLayer once per MoE layer with the step's [tokens, k] expert ids and gate
// weights, EndStep. Tokens of one sequence are kept together (traces store sequences as
// contiguous token ranges), in the order sequences first appear.
//
// Thread-safety: none; the engine thread owns it.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "predictor/routing_trace.h"

namespace moe {

class RoutingTracer {
 public:
  RoutingTracer(TraceHeader header) : header_(std::move(header)) {}

  void BeginStep(std::span<const int64_t> sequences, std::span<const Phase> phases);
  // ids and weights are [step tokens, top_k].
  void RecordLayer(int32_t layer, std::span<const int32_t> ids, std::span<const float> weights);
  void EndStep();

  int64_t num_tokens() const { return num_tokens_; }
  // The trace so far (sequences in order of first appearance).
  RoutingTrace Build() const;

 private:
  struct SequenceRecord {
    std::vector<uint16_t> experts;  // [tokens, L, K]
    std::vector<float> weights;
    std::vector<Phase> phases;
  };
  TraceHeader header_;
  std::vector<int64_t> order_;  // sequence ids in order of first appearance
  std::map<int64_t, SequenceRecord> sequences_;
  std::vector<int64_t> step_sequences_;
  std::vector<size_t> step_rows_;  // per step token: its row in its sequence's record
  int64_t num_tokens_ = 0;
};

}  // namespace moe
