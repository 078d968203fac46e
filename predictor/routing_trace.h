// In-memory routing trace: which experts every token chose at every MoE layer.
//
// Layout is dense and token-major: experts[(t * num_layers + l) * top_k + j] is the j-th expert
// chosen by token t at MoE layer l (expert ids < num_experts). Optional gate weights have the
// same layout. Tokens are grouped into sequences (requests); each sequence is a contiguous
// token range, in file order. Each token carries its phase (prefill or decode).
//
// A RoutingTrace is a plain value: not thread-safe for mutation, safe to read concurrently.
// Validate() checks every invariant above and names the offending value; readers call it before
// returning a trace, so consumers may assume a valid trace.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "experts/expert_id.h"

namespace moe {

enum class Phase : uint8_t { kPrefill = 0, kDecode = 1 };

struct TraceHeader {
  std::string model;          // free text, e.g. "deepseek-v2-lite-chat"
  int32_t num_layers = 0;     // MoE layers in the trace
  int32_t num_experts = 0;    // routed experts per MoE layer
  int32_t top_k = 0;          // experts chosen per token per layer
  uint64_t expert_bytes = 0;  // bytes of one expert's weights (0 = unknown)
  // Decoder-layer index of each MoE layer (e.g. DeepSeek's first layer is dense); may be empty.
  std::vector<int32_t> moe_layer_ids;
};

struct TraceSequence {
  int64_t token_offset = 0;  // first token row of this sequence
  int64_t num_tokens = 0;
  std::string name;  // optional label (source, problem id); not interpreted
};

struct RoutingTrace {
  TraceHeader header;
  std::vector<uint16_t> experts;    // [T, L, K]
  std::vector<float> gate_weights;  // empty, or [T, L, K]
  std::vector<Phase> phases;        // [T]
  std::vector<TraceSequence> sequences;

  int64_t num_tokens() const { return static_cast<int64_t>(phases.size()); }
  ExpertSpace space() const { return ExpertSpace{header.num_layers, header.num_experts}; }
  bool has_gate_weights() const { return !gate_weights.empty(); }

  // The top_k experts of token t at MoE layer l.
  std::span<const uint16_t> Experts(int64_t t, int32_t l) const {
    return {experts.data() + (t * header.num_layers + l) * header.top_k,
            static_cast<size_t>(header.top_k)};
  }
  std::span<const float> GateWeights(int64_t t, int32_t l) const {
    return {gate_weights.data() + (t * header.num_layers + l) * header.top_k,
            static_cast<size_t>(header.top_k)};
  }

  // Checks shapes, ranges (expert ids < num_experts, distinct within a token-layer set),
  // sequence coverage (contiguous, non-overlapping, in order, covering every token) and header
  // sanity (top_k <= num_experts, positive sizes). The message names the first bad value.
  absl::Status Validate() const;

  // A new trace holding the given sequences (by index), in the given order, with token offsets
  // rebased. An index out of range is a bug (MOE_CHECK). Selecting no sequences gives an empty
  // trace, which Validate() rejects.
  RoutingTrace Subset(std::span<const int64_t> sequence_indices) const;
};

}  // namespace moe
