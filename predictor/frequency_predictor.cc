#include "predictor/frequency_predictor.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "runtime/safetensors.h"
#include "runtime/status.h"

namespace moe {
namespace {

// Increments grow by 1 / decay per token; rescale long before doubles overflow.
constexpr double kRenormalizeAbove = 1e100;

}  // namespace

FrequencyPredictor::FrequencyPredictor(const PredictorOptions& options)
    : options_(options),
      inverse_decay_(1.0 / options.frequency_decay),
      counts_(options.space.size()),
      tokens_(options.space.num_layers),
      increment_(options.space.num_layers) {
  MOE_CHECK(ValidatePredictorOptions(options).ok());
  const std::vector<float> uniform(options.space.size(),
                                   static_cast<float>(options.top_k) / options.space.num_experts);
  SetPrior(uniform, 1.0);
}

double FrequencyPredictor::PriorWeight() const {
  return options_.frequency_decay < 1.0 ? 1.0 / (1.0 - options_.frequency_decay) : 1000.0;
}

void FrequencyPredictor::SetPrior(std::span<const float> frequency, double weight) {
  MOE_CHECK(static_cast<int64_t>(frequency.size()) == options_.space.size());
  MOE_CHECK(weight > 0.0);
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] = double{frequency[i]} * weight;
  std::fill(tokens_.begin(), tokens_.end(), weight);
  std::fill(increment_.begin(), increment_.end(), 1.0);
}

void FrequencyPredictor::Renormalize(int32_t layer) {
  const int32_t e = options_.space.num_experts;
  const double scale = 1.0 / increment_[layer];
  double* row = counts_.data() + int64_t{layer} * e;
  for (int32_t i = 0; i < e; ++i) row[i] *= scale;
  tokens_[layer] *= scale;
  increment_[layer] = 1.0;
}

void FrequencyPredictor::Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
  MOE_CHECK(layer >= 0 && layer < options_.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(experts.size()) <= options_.top_k);
  // Scaling the new token up by decay^-t instead of decaying the history down keeps this O(k).
  const double inc = increment_[layer] * inverse_decay_;
  increment_[layer] = inc;
  double* row = counts_.data() + int64_t{layer} * options_.space.num_experts;
  for (uint16_t expert : experts) {
    MOE_CHECK(expert < options_.space.num_experts);
    row[expert] += inc;
  }
  tokens_[layer] += inc;
  if (inc > kRenormalizeAbove) Renormalize(layer);
}

void FrequencyPredictor::Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const {
  const int32_t e = options_.space.num_experts;
  MOE_CHECK(target_layer >= 0 && target_layer < options_.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(probs.size()) == e);
  const double* row = counts_.data() + int64_t{target_layer} * e;
  const double inverse_tokens = 1.0 / tokens_[target_layer];
  for (int32_t i = 0; i < e; ++i) {
    probs[i] = static_cast<float>(std::min(1.0, row[i] * inverse_tokens));
  }
}

std::vector<float> FrequencyPredictor::LayerFrequency(const RoutingTrace& trace,
                                                      std::span<const int64_t> sequences,
                                                      const PredictorOptions& options,
                                                      int64_t* tokens_out) {
  const int32_t num_layers = options.space.num_layers;
  const int32_t num_experts = options.space.num_experts;
  std::vector<int64_t> counts(options.space.size());
  int64_t tokens = 0;
  for (int64_t s : sequences) {
    const TraceSequence& sequence = trace.sequences.at(s);
    for (int64_t t = sequence.token_offset; t < sequence.token_offset + sequence.num_tokens; ++t) {
      for (int32_t l = 0; l < num_layers; ++l) {
        for (uint16_t expert : trace.Experts(t, l)) ++counts[int64_t{l} * num_experts + expert];
      }
    }
    tokens += sequence.num_tokens;
  }
  std::vector<float> frequency(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    frequency[i] = SmoothedFrequency(static_cast<double>(counts[i]), static_cast<double>(tokens),
                                     options.top_k, num_experts);
  }
  if (tokens_out != nullptr) *tokens_out = tokens;
  return frequency;
}

absl::Status FrequencyPredictor::Learn(const RoutingTrace& trace) {
  return LearnFrom(trace, AllSequences(trace));
}

absl::Status FrequencyPredictor::LearnFrom(const RoutingTrace& trace,
                                           std::span<const int64_t> sequences) {
  MOE_RETURN_IF_ERROR_CTX(CheckTraceShape(trace, options_), "learning frequency");
  int64_t tokens = 0;
  const std::vector<float> frequency = LayerFrequency(trace, sequences, options_, &tokens);
  // Rounded to float as Save stores it, so a saved and loaded predictor predicts identically.
  SetPrior(frequency,
           static_cast<float>(std::min(static_cast<double>(tokens) + 1.0, PriorWeight())));
  return absl::OkStatus();
}

absl::Status FrequencyPredictor::Save(const std::string& path) const {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t num_experts = options_.space.num_experts;
  std::vector<float> frequency(counts_.size());
  std::vector<float> weight(num_layers);
  for (int32_t l = 0; l < num_layers; ++l) {
    Predict(0, l, std::span<float>(frequency.data() + int64_t{l} * num_experts, num_experts));
    weight[l] = static_cast<float>(tokens_[l] / increment_[l]);
  }
  SafetensorsWriter writer;
  SetPredictorMetadata(name(), options_, writer);
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "frequency", {num_layers, num_experts}, frequency));
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "weight", {num_layers}, weight));
  return writer.Write(path);
}

absl::Status FrequencyPredictor::Load(const std::string& path) {
  const int64_t num_layers = options_.space.num_layers;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  MOE_RETURN_IF_ERROR(CheckPredictorFile(name(), options_, /*check_distances=*/false, *file));
  std::vector<float> frequency(counts_.size());
  std::vector<float> weight(num_layers);
  const int64_t frequency_shape[] = {num_layers, options_.space.num_experts};
  const int64_t weight_shape[] = {num_layers};
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "frequency", frequency_shape, frequency));
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "weight", weight_shape, weight));
  for (size_t i = 0; i < frequency.size(); ++i) {
    if (!(frequency[i] >= 0.0f && frequency[i] <= 1.0f)) {
      return InvalidArgument("{}: frequency[{}] is {}, outside [0, 1]", path, i, frequency[i]);
    }
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    if (!(weight[l] > 0.0f) || !std::isfinite(weight[l])) {
      return InvalidArgument("{}: weight[{}] is {}, expected > 0", path, l, weight[l]);
    }
  }
  SetPrior(frequency, 1.0);
  for (int64_t l = 0; l < num_layers; ++l) {
    const int32_t e = options_.space.num_experts;
    for (int32_t i = 0; i < e; ++i) counts_[l * e + i] = double{frequency[l * e + i]} * weight[l];
    tokens_[l] = weight[l];
  }
  return absl::OkStatus();
}

}  // namespace moe
