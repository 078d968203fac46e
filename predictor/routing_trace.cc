#include "predictor/routing_trace.h"

#include <cmath>
#include <limits>

#include "runtime/status.h"

namespace moe {

absl::Status RoutingTrace::Validate() const {
  const TraceHeader& h = header;
  if (h.num_layers <= 0) return InvalidArgument("num_layers is {}, must be positive", h.num_layers);
  if (h.num_experts <= 0) {
    return InvalidArgument("num_experts is {}, must be positive", h.num_experts);
  }
  // Expert ids are stored as uint16.
  if (h.num_experts > 65536) {
    return InvalidArgument("num_experts is {}, at most 65536 supported", h.num_experts);
  }
  if (h.top_k <= 0) return InvalidArgument("top_k is {}, must be positive", h.top_k);
  if (h.top_k > h.num_experts) {
    return InvalidArgument("top_k {} exceeds num_experts {}", h.top_k, h.num_experts);
  }
  if (!h.moe_layer_ids.empty()) {
    if (h.moe_layer_ids.size() != static_cast<size_t>(h.num_layers)) {
      return InvalidArgument("moe_layer_ids has {} entries, expected num_layers = {}",
                             h.moe_layer_ids.size(), h.num_layers);
    }
    for (size_t i = 0; i < h.moe_layer_ids.size(); ++i) {
      if (h.moe_layer_ids[i] < 0 || (i > 0 && h.moe_layer_ids[i] <= h.moe_layer_ids[i - 1])) {
        return InvalidArgument(
            "moe_layer_ids[{}] is {}; ids must be non-negative and strictly increasing", i,
            h.moe_layer_ids[i]);
      }
    }
  }

  const int64_t num_tokens = this->num_tokens();
  if (num_tokens == 0) return InvalidArgument("trace has no tokens");
  const int64_t per_token = int64_t{h.num_layers} * h.top_k;
  if (static_cast<uint64_t>(num_tokens) > std::numeric_limits<uint64_t>::max() / per_token ||
      experts.size() != static_cast<uint64_t>(num_tokens * per_token)) {
    return InvalidArgument(
        "experts has {} entries, expected tokens x layers x top_k = {} x {} x {}", experts.size(),
        num_tokens, h.num_layers, h.top_k);
  }
  if (!gate_weights.empty() && gate_weights.size() != experts.size()) {
    return InvalidArgument("gate_weights has {} entries, expected {} (same as experts)",
                           gate_weights.size(), experts.size());
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    const auto p = static_cast<uint8_t>(phases[t]);
    if (p > 1)
      return InvalidArgument("token {}: phase {} is neither 0 (prefill) nor 1 (decode)", t, p);
  }

  // Range and distinctness, O(1) per id: stamp[e] holds the index of the last set that chose e.
  std::vector<int64_t> stamp(h.num_experts, -1);
  const int64_t num_sets = num_tokens * h.num_layers;
  for (int64_t s = 0; s < num_sets; ++s) {
    const uint16_t* set = experts.data() + s * h.top_k;
    for (int32_t j = 0; j < h.top_k; ++j) {
      const uint16_t e = set[j];
      if (e >= h.num_experts) {
        return InvalidArgument("token {} layer {} slot {}: expert {} out of range [0, {})",
                               s / h.num_layers, s % h.num_layers, j, e, h.num_experts);
      }
      if (stamp[e] == s) {
        return InvalidArgument("token {} layer {}: expert {} chosen twice", s / h.num_layers,
                               s % h.num_layers, e);
      }
      stamp[e] = s;
    }
  }
  for (size_t i = 0; i < gate_weights.size(); ++i) {
    if (!std::isfinite(gate_weights[i])) {
      return InvalidArgument("token {} layer {} slot {}: gate weight {} is not finite",
                             i / per_token, (i / h.top_k) % h.num_layers, i % h.top_k,
                             gate_weights[i]);
    }
  }

  if (sequences.empty()) return InvalidArgument("trace has no sequences");
  int64_t expected_offset = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const TraceSequence& s = sequences[i];
    if (s.num_tokens <= 0) {
      return InvalidArgument("sequence {} ({}) has {} tokens, must be positive", i, s.name,
                             s.num_tokens);
    }
    if (s.token_offset != expected_offset) {
      return InvalidArgument(
          "sequence {} ({}) starts at token {}, expected {} ({} the previous "
          "sequence's end)",
          i, s.name, s.token_offset, expected_offset,
          s.token_offset > expected_offset ? "gap after" : "overlaps");
    }
    if (s.num_tokens > num_tokens - s.token_offset) {
      return InvalidArgument("sequence {} ({}) covers tokens [{}, {}), past the trace's {} tokens",
                             i, s.name, s.token_offset, s.token_offset + s.num_tokens, num_tokens);
    }
    expected_offset = s.token_offset + s.num_tokens;
  }
  if (expected_offset != num_tokens) {
    return InvalidArgument("sequences cover {} tokens, but the trace has {}", expected_offset,
                           num_tokens);
  }
  return absl::OkStatus();
}

RoutingTrace RoutingTrace::Subset(std::span<const int64_t> sequence_indices) const {
  RoutingTrace out;
  out.header = header;
  const size_t per_token = static_cast<size_t>(header.num_layers) * header.top_k;
  int64_t total = 0;
  for (int64_t index : sequence_indices) {
    MOE_CHECK_MSG(index >= 0 && static_cast<size_t>(index) < sequences.size(),
                  "sequence index {} out of range [0, {})", index, sequences.size());
    total += sequences[index].num_tokens;
  }
  out.experts.reserve(total * per_token);
  if (has_gate_weights()) out.gate_weights.reserve(total * per_token);
  out.phases.reserve(total);
  out.sequences.reserve(sequence_indices.size());
  for (int64_t index : sequence_indices) {
    const TraceSequence& s = sequences[index];
    TraceSequence copy = s;
    copy.token_offset = out.num_tokens();
    out.sequences.push_back(std::move(copy));
    const size_t begin = s.token_offset * per_token,
                 end = (s.token_offset + s.num_tokens) * per_token;
    out.experts.insert(out.experts.end(), experts.begin() + begin, experts.begin() + end);
    if (has_gate_weights()) {
      out.gate_weights.insert(out.gate_weights.end(), gate_weights.begin() + begin,
                              gate_weights.begin() + end);
    }
    out.phases.insert(out.phases.end(), phases.begin() + s.token_offset,
                      phases.begin() + s.token_offset + s.num_tokens);
  }
  return out;
}

}  // namespace moe
