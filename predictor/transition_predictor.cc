#include "predictor/transition_predictor.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "predictor/frequency_predictor.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"

// Why naive Bayes over several layers: on the DeepSeek-V2-Lite trace (learn on 80% of the
// sequences, score the other 20%, recall of the top 12 one layer ahead), combining the k rows of
// the latest layer by their mean gives 0.675, a noisy-OR 0.672, a product of likelihood ratios
// 0.701, and the product over the latest three layers (weights 0.7^m) 0.730. Layer frequency
// alone gives 0.25.

namespace moe {
namespace {

// Weight of evidence from the layer m steps before the latest observed one: 0.7^m. Nearer layers
// carry more information about the target; 0.7 was the best of {0.5, 0.7, 0.8, 1.0} on the
// DeepSeek-V2-Lite trace.
constexpr float kEvidenceDecay = 0.7f;
// Samples (token, layer, distance) used to fit the temperature; enough for a stable choice.
constexpr int64_t kMaxFitSamples = 20000;
// Candidate temperatures: real traces land between 2 and 4; near-deterministic routing (test
// traces) wants sharper probabilities.
constexpr float kTemperatures[] = {0.25f, 0.5f, 0.75f, 1.0f, 1.5f, 2.0f, 2.5f,
                                   3.0f,  3.5f, 4.0f,  5.0f, 6.0f, 8.0f};

}  // namespace

TransitionPredictor::TransitionPredictor(const PredictorOptions& options)
    : options_(options), num_tables_(options.max_distance + options.evidence_layers - 1) {
  MOE_CHECK(ValidatePredictorOptions(options).ok());
  for (int32_t m = 0; m < options_.evidence_layers; ++m) {
    evidence_weight_.push_back(std::pow(kEvidenceDecay, static_cast<float>(m)));
  }
  const int64_t table_size = int64_t{num_tables_} * options_.space.num_layers *
                             options_.space.num_experts * options_.space.num_experts;
  counts_.resize(table_size);
  table_.resize(table_size);
  log_ratio_.resize(table_size);
  source_counts_.resize(options_.space.size());
  frequency_.resize(options_.space.size());
  log_frequency_.resize(options_.space.size());
  BuildTables();
}

// ---- per-sequence state ------------------------------------------------------------------------

void TransitionPredictor::ResetState(SequenceState& state) const {
  const int32_t num_layers = options_.space.num_layers;
  state.token = 0;
  state.last_layer = -1;
  state.stamp.assign(num_layers, -1);
  state.count.assign(num_layers, 0);
  state.experts.resize(int64_t{num_layers} * options_.top_k);
}

void TransitionPredictor::BeginSequence(int64_t seq) {
  auto [it, inserted] = states_.try_emplace(seq);
  if (inserted && !free_states_.empty()) {
    it->second = std::move(free_states_.back());
    free_states_.pop_back();
  }
  ResetState(it->second);
}

void TransitionPredictor::EndSequence(int64_t seq) {
  auto it = states_.find(seq);
  if (it == states_.end()) return;
  free_states_.push_back(std::move(it->second));
  states_.erase(it);
}

void TransitionPredictor::ObserveInto(SequenceState& state, int32_t layer,
                                      std::span<const uint16_t> experts) const {
  MOE_CHECK(layer >= 0 && layer < options_.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(experts.size()) <= options_.top_k);
  if (layer <= state.last_layer) ++state.token;  // back at (or before) a seen layer: next token
  state.last_layer = layer;
  state.stamp[layer] = state.token;
  state.count[layer] = static_cast<int32_t>(experts.size());
  uint16_t* slot = state.experts.data() + int64_t{layer} * options_.top_k;
  for (uint16_t expert : experts) {
    MOE_CHECK(expert < options_.space.num_experts);
    *slot++ = expert;
  }
}

void TransitionPredictor::Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
  auto it = states_.find(seq);
  if (it == states_.end()) {
    BeginSequence(seq);
    it = states_.find(seq);
  }
  ObserveInto(it->second, layer, experts);
}

int32_t TransitionPredictor::DistanceFor(const SequenceState& state, int32_t target_layer) const {
  if (state.last_layer < 0) return 0;
  const int32_t d = target_layer - state.last_layer;
  return d >= 1 && d <= options_.max_distance ? d : 0;
}

int32_t TransitionPredictor::Distance(int64_t seq, int32_t target_layer) const {
  auto it = states_.find(seq);
  return it == states_.end() ? 0 : DistanceFor(it->second, target_layer);
}

// ---- prediction -------------------------------------------------------------------------------

void TransitionPredictor::Scores(const SequenceState& state, int32_t target_layer, int32_t d,
                                 float* out) const {
  const int32_t num_experts = options_.space.num_experts;
  const float* log_frequency = log_frequency_.data() + int64_t{target_layer} * num_experts;
  std::copy(log_frequency, log_frequency + num_experts, out);
  for (int32_t m = 0; m < options_.evidence_layers; ++m) {
    const int32_t source = state.last_layer - m;
    if (source < 0 || state.stamp[source] != state.token) break;  // only this token's layers
    const float w = evidence_weight_[m];
    const uint16_t* experts = state.experts.data() + int64_t{source} * options_.top_k;
    for (int32_t a = 0; a < state.count[source]; ++a) {
      const float* row = log_ratio_.data() + TableIndex(d + m, source, experts[a]);
      for (int32_t j = 0; j < num_experts; ++j) out[j] += w * row[j];
    }
  }
}

void TransitionPredictor::ToProbabilities(std::span<float> values, float temperature) const {
  const float max_score = *std::max_element(values.begin(), values.end());
  const float inverse_temperature = 1.0f / temperature;
  float sum = 0.0f;
  for (float& v : values) {
    v = std::exp((v - max_score) * inverse_temperature);
    sum += v;
  }
  const float scale = static_cast<float>(options_.top_k) / sum;
  for (float& v : values) v = std::min(1.0f, v * scale);
}

void TransitionPredictor::Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const {
  const int32_t num_experts = options_.space.num_experts;
  MOE_CHECK(target_layer >= 0 && target_layer < options_.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(probs.size()) == num_experts);
  auto it = states_.find(seq);
  const int32_t d = it == states_.end() ? 0 : DistanceFor(it->second, target_layer);
  if (d == 0) {
    const float* row = frequency_.data() + int64_t{target_layer} * num_experts;
    std::copy(row, row + num_experts, probs.begin());
    return;
  }
  Scores(it->second, target_layer, d, probs.data());
  ToProbabilities(probs, temperature_);
}

float TransitionPredictor::Probability(int32_t distance, int32_t layer, int32_t from,
                                       int32_t to) const {
  MOE_CHECK(distance >= 1 && distance <= num_tables_);
  MOE_CHECK(layer >= 0 && layer < options_.space.num_layers);
  MOE_CHECK(from >= 0 && from < options_.space.num_experts);
  MOE_CHECK(to >= 0 && to < options_.space.num_experts);
  return table_[TableIndex(distance, layer, from) + to];
}

void TransitionPredictor::set_temperature(float temperature) {
  MOE_CHECK(temperature > 0.0f && std::isfinite(temperature));
  temperature_ = temperature;
}

// ---- learning ---------------------------------------------------------------------------------

void TransitionPredictor::ResetCounts() {
  std::fill(counts_.begin(), counts_.end(), 0u);
  std::fill(source_counts_.begin(), source_counts_.end(), 0);
  tokens_ = 0;
  counts_valid_ = true;
}

void TransitionPredictor::Accumulate(const RoutingTrace& trace,
                                     std::span<const int64_t> sequences) {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  for (int64_t s : sequences) {
    const TraceSequence& sequence = trace.sequences.at(s);
    for (int64_t t = sequence.token_offset; t < sequence.token_offset + sequence.num_tokens; ++t) {
      for (int32_t l = 0; l < num_layers; ++l) {
        const std::span<const uint16_t> sources = trace.Experts(t, l);
        for (uint16_t i : sources) ++source_counts_[int64_t{l} * num_experts + i];
        for (int32_t d = 1; d <= num_tables_ && l + d < num_layers; ++d) {
          const std::span<const uint16_t> targets = trace.Experts(t, l + d);
          for (uint16_t i : sources) {
            uint32_t* row = counts_.data() + TableIndex(d, l, i);
            for (uint16_t j : targets) ++row[j];
          }
        }
      }
    }
    tokens_ += sequence.num_tokens;
  }
}

void TransitionPredictor::BuildTables() {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  const double tokens = static_cast<double>(tokens_);
  for (int64_t i = 0; i < options_.space.size(); ++i) {
    frequency_[i] = SmoothedFrequency(static_cast<double>(source_counts_[i]), tokens,
                                      options_.top_k, num_experts);
  }
  for (int32_t d = 1; d <= num_tables_; ++d) {
    for (int32_t l = 0; l < num_layers; ++l) {
      for (int32_t i = 0; i < num_experts; ++i) {
        float* row = table_.data() + TableIndex(d, l, i);
        if (l + d >= num_layers) {
          std::fill(row, row + num_experts, 0.0f);
          continue;
        }
        const uint32_t* count = counts_.data() + TableIndex(d, l, i);
        const float* target_frequency = frequency_.data() + int64_t{l + d} * num_experts;
        const double denominator =
            static_cast<double>(source_counts_[int64_t{l} * num_experts + i]) + 1.0;
        for (int32_t j = 0; j < num_experts; ++j) {
          row[j] = static_cast<float>((count[j] + double{target_frequency[j]}) / denominator);
        }
      }
    }
  }
  BuildLogTables();
}

void TransitionPredictor::BuildLogTables() {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  for (size_t i = 0; i < frequency_.size(); ++i) log_frequency_[i] = std::log(frequency_[i]);
  for (int32_t d = 1; d <= num_tables_; ++d) {
    for (int32_t l = 0; l < num_layers; ++l) {
      for (int32_t i = 0; i < num_experts; ++i) {
        const int64_t base = TableIndex(d, l, i);
        if (l + d >= num_layers) {
          std::fill_n(log_ratio_.data() + base, num_experts, 0.0f);
          continue;
        }
        const float* log_target = log_frequency_.data() + int64_t{l + d} * num_experts;
        for (int32_t j = 0; j < num_experts; ++j) {
          log_ratio_[base + j] = std::log(table_[base + j]) - log_target[j];
        }
      }
    }
  }
}

void TransitionPredictor::FitTemperature(const RoutingTrace& trace,
                                         std::span<const int64_t> sequences) {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  int64_t per_token = 0;
  for (int32_t d = 1; d <= options_.max_distance && d < num_layers; ++d)
    per_token += num_layers - d;
  int64_t candidates = 0;
  for (int64_t s : sequences) candidates += trace.sequences.at(s).num_tokens * per_token;
  if (candidates == 0) return;
  const int64_t stride = (candidates + kMaxFitSamples - 1) / kMaxFitSamples;

  // Raw scores and the truth of every sampled prediction.
  std::vector<float> scores;
  std::vector<uint8_t> truth;
  SequenceState state;
  ResetState(state);
  int64_t candidate = 0;
  for (int64_t s : sequences) {
    const TraceSequence& sequence = trace.sequences.at(s);
    ResetState(state);
    for (int64_t t = sequence.token_offset; t < sequence.token_offset + sequence.num_tokens; ++t) {
      for (int32_t l = 0; l < num_layers; ++l) {
        ObserveInto(state, l, trace.Experts(t, l));
        for (int32_t d = 1; d <= options_.max_distance && l + d < num_layers; ++d) {
          if (candidate++ % stride != 0) continue;
          const size_t at = scores.size();
          scores.resize(at + num_experts);
          truth.resize(at + num_experts, 0);
          Scores(state, l + d, d, scores.data() + at);
          for (uint16_t j : trace.Experts(t, l + d)) truth[at + j] = 1;
        }
      }
    }
  }

  std::vector<float> probs(num_experts);
  double best_error = INFINITY;
  for (float temperature : kTemperatures) {
    double error = 0.0;
    for (size_t at = 0; at < scores.size(); at += num_experts) {
      std::copy_n(scores.data() + at, num_experts, probs.data());
      ToProbabilities(probs, temperature);
      for (int32_t j = 0; j < num_experts; ++j) {
        const double diff = probs[j] - truth[at + j];
        error += diff * diff;
      }
    }
    if (error < best_error) {
      best_error = error;
      temperature_ = temperature;
    }
  }
}

absl::Status TransitionPredictor::Learn(const RoutingTrace& trace) {
  return LearnFrom(trace, AllSequences(trace));
}

absl::Status TransitionPredictor::LearnFrom(const RoutingTrace& trace,
                                            std::span<const int64_t> sequences) {
  MOE_RETURN_IF_ERROR_CTX(CheckTraceShape(trace, options_), "learning transition tables");
  std::vector<int64_t> counted, held_out;
  for (size_t i = 0; i < sequences.size(); ++i) {
    (sequences.size() >= 10 && i % 10 == 9 ? held_out : counted).push_back(sequences[i]);
  }
  ResetCounts();
  Accumulate(trace, counted);
  BuildTables();
  temperature_ = kDefaultTemperature;
  if (!held_out.empty()) {
    FitTemperature(trace, held_out);
    Accumulate(trace, held_out);
    BuildTables();
  }
  return absl::OkStatus();
}

absl::Status TransitionPredictor::AddSequences(const RoutingTrace& trace,
                                               std::span<const int64_t> sequences) {
  MOE_RETURN_IF_ERROR_CTX(CheckTraceShape(trace, options_), "adding to transition tables");
  if (!counts_valid_) {
    return FailedPrecondition(
        "transition tables were loaded from a file, which keeps no counts: learn before adding "
        "sequences");
  }
  Accumulate(trace, sequences);
  BuildTables();
  return absl::OkStatus();
}

// ---- files ------------------------------------------------------------------------------------

absl::Status TransitionPredictor::AddTensors(SafetensorsWriter& writer) const {
  const int64_t num_layers = options_.space.num_layers;
  const int64_t num_experts = options_.space.num_experts;
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "transition",
                                   {num_tables_, num_layers, num_experts, num_experts}, table_));
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "frequency", {num_layers, num_experts}, frequency_));
  const float temperature[] = {temperature_};
  return AddF32Tensor(writer, "temperature", {1}, temperature);
}

absl::Status TransitionPredictor::ReadTensors(const SafetensorsFile& file) {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  std::vector<float> table(table_.size());
  std::vector<float> frequency(frequency_.size());
  float temperature = 0.0f;
  const int64_t table_shape[] = {num_tables_, num_layers, num_experts, num_experts};
  const int64_t frequency_shape[] = {num_layers, num_experts};
  const int64_t temperature_shape[] = {1};
  MOE_RETURN_IF_ERROR(ReadF32Tensor(file, "transition", table_shape, table));
  MOE_RETURN_IF_ERROR(ReadF32Tensor(file, "frequency", frequency_shape, frequency));
  MOE_RETURN_IF_ERROR(
      ReadF32Tensor(file, "temperature", temperature_shape, std::span<float>(&temperature, 1)));
  // Logs of these values feed every prediction: reject what would make them NaN or infinite.
  for (size_t i = 0; i < frequency.size(); ++i) {
    if (!(frequency[i] > 0.0f && frequency[i] <= 1.0f)) {
      return InvalidArgument("{}: frequency[{}] is {}, expected in (0, 1]", file.path(), i,
                             frequency[i]);
    }
  }
  for (int32_t d = 1; d <= num_tables_; ++d) {
    for (int32_t l = 0; l + d < num_layers; ++l) {
      const int64_t begin = TableIndex(d, l, 0);
      const int64_t end = begin + int64_t{num_experts} * num_experts;
      for (int64_t i = begin; i < end; ++i) {
        if (!(table[i] > 0.0f && table[i] <= 1.0f)) {
          return InvalidArgument("{}: transition[{}][{}] entry {} is {}, expected in (0, 1]",
                                 file.path(), d - 1, l, i - begin, table[i]);
        }
      }
    }
  }
  if (!(temperature > 0.0f) || !std::isfinite(temperature)) {
    return InvalidArgument("{}: temperature is {}, expected > 0", file.path(), temperature);
  }
  table_ = std::move(table);
  frequency_ = std::move(frequency);
  temperature_ = temperature;
  counts_valid_ = false;
  BuildLogTables();
  return absl::OkStatus();
}

absl::Status TransitionPredictor::Save(const std::string& path) const {
  SafetensorsWriter writer;
  SetPredictorMetadata(name(), options_, writer);
  MOE_RETURN_IF_ERROR(AddTensors(writer));
  return writer.Write(path);
}

absl::Status TransitionPredictor::Load(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  MOE_RETURN_IF_ERROR(CheckPredictorFile(name(), options_, /*check_distances=*/true, *file));
  return ReadTensors(*file);
}

}  // namespace moe
