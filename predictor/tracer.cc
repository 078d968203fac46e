#include "predictor/tracer.h"

#include "runtime/status.h"

namespace moe {

void RoutingTracer::BeginStep(std::span<const int64_t> sequences, std::span<const Phase> phases) {
  MOE_CHECK(sequences.size() == phases.size());
  const size_t row_size = static_cast<size_t>(header_.num_layers) * header_.top_k;
  step_sequences_.assign(sequences.begin(), sequences.end());
  step_rows_.clear();
  for (size_t i = 0; i < sequences.size(); ++i) {
    auto [it, inserted] = sequences_.try_emplace(sequences[i]);
    if (inserted) order_.push_back(sequences[i]);
    SequenceRecord& rec = it->second;
    step_rows_.push_back(rec.phases.size());
    rec.phases.push_back(phases[i]);
    rec.experts.resize(rec.experts.size() + row_size);
    rec.weights.resize(rec.weights.size() + row_size);
  }
  num_tokens_ += static_cast<int64_t>(sequences.size());
}

void RoutingTracer::RecordLayer(int32_t layer, std::span<const int32_t> ids,
                                std::span<const float> weights) {
  const size_t k = static_cast<size_t>(header_.top_k);
  MOE_CHECK(ids.size() == step_sequences_.size() * k && weights.size() == ids.size());
  const size_t row_size = static_cast<size_t>(header_.num_layers) * k;
  for (size_t t = 0; t < step_sequences_.size(); ++t) {
    SequenceRecord& rec = sequences_.at(step_sequences_[t]);
    const size_t base = step_rows_[t] * row_size + static_cast<size_t>(layer) * k;
    for (size_t j = 0; j < k; ++j) {
      rec.experts[base + j] = static_cast<uint16_t>(ids[t * k + j]);
      rec.weights[base + j] = weights[t * k + j];
    }
  }
}

void RoutingTracer::EndStep() {
  step_sequences_.clear();
  step_rows_.clear();
}

RoutingTrace RoutingTracer::Build() const {
  RoutingTrace trace;
  trace.header = header_;
  for (int64_t id : order_) {
    const SequenceRecord& rec = sequences_.at(id);
    TraceSequence seq;
    seq.token_offset = trace.num_tokens();
    seq.num_tokens = static_cast<int64_t>(rec.phases.size());
    seq.name = "sequence " + std::to_string(id);
    trace.sequences.push_back(seq);
    trace.experts.insert(trace.experts.end(), rec.experts.begin(), rec.experts.end());
    trace.gate_weights.insert(trace.gate_weights.end(), rec.weights.begin(), rec.weights.end());
    trace.phases.insert(trace.phases.end(), rec.phases.begin(), rec.phases.end());
  }
  return trace;
}

}  // namespace moe
