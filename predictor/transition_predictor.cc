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
// alone gives 0.25. Adding the previous token's experts at the target layer through the
// next-token tables lifts it further (0.721 -> 0.733 in moe-replay; a NumPy replica of these
// scores gave 0.741, 0.749, 0.753, 0.754, 0.754 for weights 0, 0.3, 0.5, 0.7, 1.0): consecutive
// tokens of a prompt share experts. The weight is fit with the temperature, since traces whose
// consecutive tokens are unrelated want none of it.

namespace moe {
namespace {

// Weight of evidence from the layer m steps before the latest observed one: 0.7^m. Nearer layers
// carry more information about the target; 0.7 was the best of {0.5, 0.7, 0.8, 1.0} on the
// DeepSeek-V2-Lite trace.
constexpr float kEvidenceDecay = 0.7f;
// Candidate weights of the previous token's experts at the target layer, beside this token's.
constexpr float kPreviousTokenWeights[] = {0.0f, 0.35f, 0.7f, 1.0f};
// Samples (token, layer, distance) used to fit the temperature; enough for a stable choice.
constexpr int64_t kMaxFitSamples = 20000;
// Candidate temperatures: real traces land between 2 and 4; near-deterministic routing (test
// traces) wants sharper probabilities.
// One table row from counts, smoothed with one pseudo-token drawn from the target layer's
// frequency: row[j] = (count[j] + target_frequency[j]) / (source_count + 1).
void SmoothedRow(const uint32_t* count, int64_t source_count, const float* target_frequency,
                 int32_t num_experts, float* row) {
  const double denominator = static_cast<double>(source_count) + 1.0;
  for (int32_t j = 0; j < num_experts; ++j) {
    row[j] = static_cast<float>((count[j] + double{target_frequency[j]}) / denominator);
  }
}

// log(row / target frequency), the naive-Bayes evidence of one table row.
void LogRatioRow(const float* row, const float* log_target, int32_t num_experts, float* out) {
  for (int32_t j = 0; j < num_experts; ++j) out[j] = std::log(row[j]) - log_target[j];
}

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
  const int64_t next_size = options_.space.size() * options_.space.num_experts;
  next_counts_.resize(next_size);
  next_table_.resize(next_size);
  next_log_ratio_.resize(next_size);
  next_source_counts_.resize(options_.space.size());
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

std::span<const uint16_t> TransitionPredictor::PreviousVisit(const SequenceState& state,
                                                             int32_t target_layer) const {
  if (!has_next_token_ || state.last_layer < 0) return {};
  const int64_t visit = target_layer > state.last_layer ? state.token - 1 : state.token;
  if (visit < 0 || state.stamp[target_layer] != visit) return {};
  return {state.experts.data() + int64_t{target_layer} * options_.top_k,
          static_cast<size_t>(state.count[target_layer])};
}

// ---- prediction -------------------------------------------------------------------------------

void TransitionPredictor::AddNextTokenEvidence(int32_t layer, std::span<const uint16_t> visit,
                                               float weight, float* out) const {
  if (weight == 0.0f) return;
  const int32_t num_experts = options_.space.num_experts;
  for (uint16_t i : visit) {
    MOE_CHECK(i < num_experts);
    const float* row = next_log_ratio_.data() + NextIndex(layer, i);
    for (int32_t j = 0; j < num_experts; ++j) out[j] += weight * row[j];
  }
}

void TransitionPredictor::AddPreviousVisit(const SequenceState& state, int32_t target_layer,
                                           float weight, float* out) const {
  AddNextTokenEvidence(target_layer, PreviousVisit(state, target_layer), weight, out);
}

void TransitionPredictor::Scores(const SequenceState& state, int32_t target_layer, int32_t d,
                                 float next_weight, float* out) const {
  const int32_t num_experts = options_.space.num_experts;
  const float* log_frequency = log_frequency_.data() + int64_t{target_layer} * num_experts;
  std::copy(log_frequency, log_frequency + num_experts, out);
  AddPreviousVisit(state, target_layer, next_weight, out);
  for (int32_t m = 0; d > 0 && m < options_.evidence_layers; ++m) {
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
  if (d == 0 && (it == states_.end() || PreviousVisit(it->second, target_layer).empty())) {
    const float* row = frequency_.data() + int64_t{target_layer} * num_experts;
    std::copy(row, row + num_experts, probs.begin());
    return;
  }
  Scores(it->second, target_layer, d, d > 0 ? previous_weight_ : 1.0f, probs.data());
  ToProbabilities(probs, d > 0 ? temperature_ : next_temperature_);
}

bool TransitionPredictor::PredictNextVisit(int64_t, int32_t layer,
                                           std::span<const uint16_t> experts,
                                           std::span<float> probs) const {
  CheckNextVisitArguments(options_, layer, experts, probs);
  if (!has_next_token_) return false;
  // Predict's next-token case (Scores with d = 0) with `experts` as this token's visit.
  const float* log_frequency = log_frequency_.data() + int64_t{layer} * options_.space.num_experts;
  std::copy_n(log_frequency, options_.space.num_experts, probs.begin());
  AddNextTokenEvidence(layer, experts, 1.0f, probs.data());
  ToProbabilities(probs, next_temperature_);
  return true;
}

float TransitionPredictor::Probability(int32_t distance, int32_t layer, int32_t from,
                                       int32_t to) const {
  MOE_CHECK(distance >= 1 && distance <= num_tables_);
  MOE_CHECK(layer >= 0 && layer < options_.space.num_layers);
  MOE_CHECK(from >= 0 && from < options_.space.num_experts);
  MOE_CHECK(to >= 0 && to < options_.space.num_experts);
  return table_[TableIndex(distance, layer, from) + to];
}

float TransitionPredictor::NextTokenProbability(int32_t layer, int32_t from, int32_t to) const {
  MOE_CHECK(layer >= 0 && layer < options_.space.num_layers);
  MOE_CHECK(from >= 0 && from < options_.space.num_experts);
  MOE_CHECK(to >= 0 && to < options_.space.num_experts);
  return next_table_[NextIndex(layer, from) + to];
}

void TransitionPredictor::set_temperature(float temperature) {
  MOE_CHECK(temperature > 0.0f && std::isfinite(temperature));
  temperature_ = temperature;
}

// ---- learning ---------------------------------------------------------------------------------

void TransitionPredictor::ResetCounts() {
  std::fill(counts_.begin(), counts_.end(), 0u);
  std::fill(source_counts_.begin(), source_counts_.end(), 0);
  std::fill(next_counts_.begin(), next_counts_.end(), 0u);
  std::fill(next_source_counts_.begin(), next_source_counts_.end(), 0);
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
        if (t + 1 < sequence.token_offset + sequence.num_tokens) {
          const std::span<const uint16_t> next = trace.Experts(t + 1, l);
          for (uint16_t i : sources) {
            ++next_source_counts_[int64_t{l} * num_experts + i];
            uint32_t* row = next_counts_.data() + NextIndex(l, i);
            for (uint16_t j : next) ++row[j];
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
        SmoothedRow(counts_.data() + TableIndex(d, l, i),
                    source_counts_[int64_t{l} * num_experts + i],
                    frequency_.data() + int64_t{l + d} * num_experts, num_experts, row);
      }
    }
  }
  for (int32_t l = 0; l < num_layers; ++l) {
    for (int32_t i = 0; i < num_experts; ++i) {
      SmoothedRow(next_counts_.data() + NextIndex(l, i),
                  next_source_counts_[int64_t{l} * num_experts + i],
                  frequency_.data() + int64_t{l} * num_experts, num_experts,
                  next_table_.data() + NextIndex(l, i));
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
        LogRatioRow(table_.data() + base, log_frequency_.data() + int64_t{l + d} * num_experts,
                    num_experts, log_ratio_.data() + base);
      }
    }
  }
  if (!has_next_token_) {  // an older file: no next-token evidence
    std::fill(next_log_ratio_.begin(), next_log_ratio_.end(), 0.0f);
    return;
  }
  for (int32_t l = 0; l < num_layers; ++l) {
    for (int32_t i = 0; i < num_experts; ++i) {
      const int64_t base = NextIndex(l, i);
      LogRatioRow(next_table_.data() + base, log_frequency_.data() + int64_t{l} * num_experts,
                  num_experts, next_log_ratio_.data() + base);
    }
  }
}

namespace {

// Sampled predictions ([samples x num_experts]): the scores without the previous visit's
// evidence, that evidence alone (unweighted), and whether each expert was chosen.
struct FitSamples {
  std::vector<float> scores;
  std::vector<float> previous;
  std::vector<uint8_t> truth;
  int64_t stride = 1;  // keep every stride-th candidate
  int64_t candidate = 0;

  // Appends a sample when the candidate count says so and returns its offset, or -1.
  int64_t Next(int32_t num_experts, std::span<const uint16_t> chosen) {
    if (candidate++ % stride != 0) return -1;
    const size_t at = scores.size();
    scores.resize(at + num_experts);
    previous.resize(at + num_experts, 0.0f);
    truth.resize(at + num_experts, 0);
    for (uint16_t j : chosen) truth[at + j] = 1;
    return static_cast<int64_t>(at);
  }
};

}  // namespace

void TransitionPredictor::FitTemperatures(const RoutingTrace& trace,
                                          std::span<const int64_t> sequences) {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  int64_t per_token = 0;
  for (int32_t d = 1; d <= options_.max_distance && d < num_layers; ++d)
    per_token += num_layers - d;
  int64_t ahead_candidates = 0, next_candidates = 0;
  for (int64_t s : sequences) {
    const int64_t tokens = trace.sequences.at(s).num_tokens;
    ahead_candidates += tokens * per_token;
    next_candidates += std::max<int64_t>(tokens - 1, 0) * num_layers;
  }
  FitSamples ahead, next;
  ahead.stride = std::max<int64_t>(1, (ahead_candidates + kMaxFitSamples - 1) / kMaxFitSamples);
  next.stride = std::max<int64_t>(1, (next_candidates + kMaxFitSamples - 1) / kMaxFitSamples);

  SequenceState state;
  for (int64_t s : sequences) {
    const TraceSequence& sequence = trace.sequences.at(s);
    const int64_t end = sequence.token_offset + sequence.num_tokens;
    ResetState(state);
    for (int64_t t = sequence.token_offset; t < end; ++t) {
      for (int32_t l = 0; l < num_layers; ++l) {
        ObserveInto(state, l, trace.Experts(t, l));
        for (int32_t d = 1; d <= options_.max_distance && l + d < num_layers; ++d) {
          const int64_t at = ahead.Next(num_experts, trace.Experts(t, l + d));
          if (at < 0) continue;
          Scores(state, l + d, d, 0.0f, ahead.scores.data() + at);
          AddPreviousVisit(state, l + d, 1.0f, ahead.previous.data() + at);
        }
        if (t + 1 < end) {
          const int64_t at = next.Next(num_experts, trace.Experts(t + 1, l));
          if (at >= 0) Scores(state, l, 0, 1.0f, next.scores.data() + at);
        }
      }
    }
  }

  // Brier score over `samples` of scores + weight x previous, at `temperature`.
  std::vector<float> probs(num_experts);
  auto brier = [&](const FitSamples& samples, float weight, float temperature) {
    double error = 0.0;
    for (size_t at = 0; at < samples.scores.size(); at += num_experts) {
      for (int32_t j = 0; j < num_experts; ++j) {
        probs[j] = samples.scores[at + j] + weight * samples.previous[at + j];
      }
      ToProbabilities(probs, temperature);
      for (int32_t j = 0; j < num_experts; ++j) {
        const double diff = probs[j] - samples.truth[at + j];
        error += diff * diff;
      }
    }
    return error;
  };
  double best_error = INFINITY;
  for (float weight : kPreviousTokenWeights) {
    for (float temperature : kTemperatures) {
      const double error = brier(ahead, weight, temperature);
      if (!ahead.scores.empty() && error < best_error) {
        best_error = error;
        temperature_ = temperature;
        previous_weight_ = weight;
      }
    }
  }
  best_error = INFINITY;
  for (float temperature : kTemperatures) {
    const double error = brier(next, 0.0f, temperature);
    if (!next.scores.empty() && error < best_error) {
      best_error = error;
      next_temperature_ = temperature;
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
  temperature_ = next_temperature_ = kDefaultTemperature;
  previous_weight_ = kDefaultPreviousWeight;
  has_next_token_ = true;
  if (!held_out.empty()) {
    FitTemperatures(trace, held_out);
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
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "temperature", {1}, temperature));
  if (!has_next_token_) return absl::OkStatus();  // loaded from an older file: keep it so
  MOE_RETURN_IF_ERROR(
      AddF32Tensor(writer, "next_token", {num_layers, num_experts, num_experts}, next_table_));
  const float next_temperature[] = {next_temperature_};
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "next_temperature", {1}, next_temperature));
  const float previous_weight[] = {previous_weight_};
  return AddF32Tensor(writer, "previous_token_weight", {1}, previous_weight);
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
  // The next-token tables: absent in files written before them.
  const bool has_next = file.Find("next_token") != nullptr;
  std::vector<float> next_table(next_table_.size(), 0.0f);
  float next_temperature = kDefaultTemperature;
  float previous_weight = 0.0f;
  if (has_next) {
    const int64_t next_shape[] = {num_layers, num_experts, num_experts};
    MOE_RETURN_IF_ERROR(ReadF32Tensor(file, "next_token", next_shape, next_table));
    MOE_RETURN_IF_ERROR(ReadF32Tensor(file, "next_temperature", temperature_shape,
                                      std::span<float>(&next_temperature, 1)));
    MOE_RETURN_IF_ERROR(ReadF32Tensor(file, "previous_token_weight", temperature_shape,
                                      std::span<float>(&previous_weight, 1)));
    for (size_t i = 0; i < next_table.size(); ++i) {
      if (!(next_table[i] > 0.0f && next_table[i] <= 1.0f)) {
        return InvalidArgument("{}: next_token[{}][{}] entry {} is {}, expected in (0, 1]",
                               file.path(), i / (size_t(num_experts) * num_experts),
                               i / num_experts % num_experts, i % num_experts, next_table[i]);
      }
    }
    if (!(next_temperature > 0.0f) || !std::isfinite(next_temperature)) {
      return InvalidArgument("{}: next_temperature is {}, expected > 0", file.path(),
                             next_temperature);
    }
    if (!(previous_weight >= 0.0f && previous_weight <= 16.0f)) {
      return InvalidArgument("{}: previous_token_weight is {}, expected in [0, 16]", file.path(),
                             previous_weight);
    }
  }
  table_ = std::move(table);
  frequency_ = std::move(frequency);
  temperature_ = temperature;
  next_table_ = std::move(next_table);
  next_temperature_ = next_temperature;
  previous_weight_ = previous_weight;
  has_next_token_ = has_next;
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
