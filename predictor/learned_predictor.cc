#include "predictor/learned_predictor.h"

#include <algorithm>
#include <cmath>

#include "runtime/logging.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"

namespace moe {
namespace {

// Parses a non-negative decimal metadata value; -1 when absent or malformed.
int64_t MetadataInt(const SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata().find(key);
  if (it == file.metadata().end() || it->second.empty()) return -1;
  int64_t v = 0;
  for (char c : it->second) {
    if (c < '0' || c > '9' || v > (int64_t{1} << 40)) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

LearnedPredictor::LearnedPredictor(const PredictorOptions& options)
    : options_(options), fallback_(options) {}

absl::Status LearnedPredictor::SetWeights(LearnedPredictorWeights w) {
  const int64_t outputs = options_.space.size();
  if (w.source_layer < 0 || w.source_layer >= options_.space.num_layers) {
    return InvalidArgument("learned predictor: source layer {} outside [0, {})", w.source_layer,
                           options_.space.num_layers);
  }
  if (w.input_size < 1 || w.hidden_units < 1) {
    return InvalidArgument("learned predictor: input size {} and hidden units {} must be >= 1",
                           w.input_size, w.hidden_units);
  }
  const auto expect = [](const std::vector<float>& v, int64_t n, std::string_view what) {
    return static_cast<int64_t>(v.size()) == n
               ? absl::OkStatus()
               : InvalidArgument("learned predictor: {} has {} values, expected {}", what, v.size(),
                                 n);
  };
  MOE_RETURN_IF_ERROR(expect(w.w1, w.hidden_units * w.input_size, "w1"));
  MOE_RETURN_IF_ERROR(expect(w.b1, w.hidden_units, "b1"));
  MOE_RETURN_IF_ERROR(expect(w.w2, outputs * w.hidden_units, "w2"));
  MOE_RETURN_IF_ERROR(expect(w.b2, outputs, "b2"));
  for (const std::vector<float>* v : {&w.w1, &w.b1, &w.w2, &w.b2}) {
    for (float x : *v) {
      if (!std::isfinite(x)) return InvalidArgument("learned predictor: a weight is {}", x);
    }
  }
  weights_ = std::move(w);
  normed_.assign(static_cast<size_t>(weights_.input_size), 0.0f);
  hidden_.assign(static_cast<size_t>(weights_.hidden_units), 0.0f);
  sequences_.clear();
  return absl::OkStatus();
}

void LearnedPredictor::BeginSequence(int64_t seq) {
  SequenceState& s = sequences_[seq];
  s.last_layer = -1;
  s.has_table = false;
  fallback_.BeginSequence(seq);
}

void LearnedPredictor::EndSequence(int64_t seq) {
  sequences_.erase(seq);
  fallback_.EndSequence(seq);
}

void LearnedPredictor::Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
  fallback_.Observe(seq, layer, experts);
  SequenceState& s = sequences_[seq];
  // A layer not after the latest observed one starts a new token: the table belonged to the
  // previous token.
  if (layer <= s.last_layer) s.has_table = false;
  s.last_layer = layer;
}

void LearnedPredictor::Evaluate(std::span<const float> x, std::span<float> probs) const {
  const LearnedPredictorWeights& w = weights_;
  MOE_CHECK(static_cast<int64_t>(x.size()) == w.input_size &&
            static_cast<int64_t>(probs.size()) == options_.space.size());
  double sum = 0;
  for (float v : x) sum += double{v} * v;
  const auto inv = static_cast<float>(1.0 / std::sqrt(sum / double(x.size()) + 1e-6));
  for (size_t i = 0; i < x.size(); ++i) normed_[i] = x[i] * inv;
  for (int64_t u = 0; u < w.hidden_units; ++u) {
    const float* row = w.w1.data() + u * w.input_size;
    float acc = w.b1[u];
    for (int64_t i = 0; i < w.input_size; ++i) acc += row[i] * normed_[i];
    hidden_[u] = std::max(acc, 0.0f);
  }
  for (size_t o = 0; o < probs.size(); ++o) {
    const float* row = w.w2.data() + static_cast<int64_t>(o) * w.hidden_units;
    float acc = w.b2[o];
    for (int64_t u = 0; u < w.hidden_units; ++u) acc += row[u] * hidden_[u];
    probs[o] = 1.0f / (1.0f + std::exp(-acc));
  }
}

void LearnedPredictor::ObserveHidden(int64_t seq, int32_t layer, std::span<const float> hidden) {
  if (!has_weights() || layer != weights_.source_layer) return;
  if (static_cast<int64_t>(hidden.size()) != weights_.input_size) {
    if (ignored_hidden_++ == 0) {
      MOE_LOG(kWarning,
              "learned predictor: hidden states of {} values, trained on {}; predicting from "
              "frequencies",
              hidden.size(), weights_.input_size);
    }
    return;
  }
  SequenceState& s = sequences_[seq];
  s.table.resize(static_cast<size_t>(options_.space.size()));
  Evaluate(hidden, s.table);
  s.has_table = true;
}

void LearnedPredictor::Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const {
  MOE_CHECK(static_cast<int64_t>(probs.size()) == options_.space.num_experts);
  const auto it = sequences_.find(seq);
  if (it == sequences_.end() || !it->second.has_table || target_layer <= it->second.last_layer) {
    fallback_.Predict(seq, target_layer, probs);
    return;
  }
  const float* row = it->second.table.data() + int64_t{target_layer} * options_.space.num_experts;
  std::copy(row, row + probs.size(), probs.begin());
}

absl::Status LearnedPredictor::Save(const std::string& path) const {
  if (!has_weights()) return FailedPrecondition("learned predictor: no weights to save");
  const LearnedPredictorWeights& w = weights_;
  SafetensorsWriter writer;
  SetPredictorMetadata(name(), options_, writer);
  writer.SetMetadata("source_layer", std::to_string(w.source_layer));
  writer.SetMetadata("hidden_size", std::to_string(w.input_size));
  writer.SetMetadata("hidden_units", std::to_string(w.hidden_units));
  const int64_t outputs = options_.space.size();
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "w1", {w.hidden_units, w.input_size}, w.w1));
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "b1", {w.hidden_units}, w.b1));
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "w2", {outputs, w.hidden_units}, w.w2));
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "b2", {outputs}, w.b2));
  return writer.Write(path);
}

absl::Status LearnedPredictor::Load(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  MOE_RETURN_IF_ERROR(CheckPredictorFile(name(), options_, /*check_distances=*/false, *file));
  LearnedPredictorWeights w;
  const int64_t source = MetadataInt(*file, "source_layer");
  if (source < 0 || source >= options_.space.num_layers) {
    return InvalidArgument("{}: metadata source_layer is missing or outside [0, {})", path,
                           options_.space.num_layers);
  }
  w.source_layer = static_cast<int32_t>(source);
  const TensorInfo* w1 = file->Find("w1");
  if (w1 == nullptr || w1->shape.size() != 2) {
    return InvalidArgument("{}: tensor w1 [hidden_units, hidden_size] is missing or not 2-D", path);
  }
  w.hidden_units = w1->shape[0];
  w.input_size = w1->shape[1];
  if (w.hidden_units < 1 || w.input_size < 1 ||
      w.hidden_units * w.input_size > (int64_t{1} << 28)) {
    return InvalidArgument("{}: w1 has an implausible shape [{}, {}]", path, w.hidden_units,
                           w.input_size);
  }
  const int64_t outputs = options_.space.size();
  w.w1.resize(static_cast<size_t>(w.hidden_units * w.input_size));
  w.b1.resize(static_cast<size_t>(w.hidden_units));
  w.w2.resize(static_cast<size_t>(outputs * w.hidden_units));
  w.b2.resize(static_cast<size_t>(outputs));
  const int64_t w1_shape[] = {w.hidden_units, w.input_size};
  const int64_t b1_shape[] = {w.hidden_units};
  const int64_t w2_shape[] = {outputs, w.hidden_units};
  const int64_t b2_shape[] = {outputs};
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "w1", w1_shape, w.w1));
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "b1", b1_shape, w.b1));
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "w2", w2_shape, w.w2));
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "b2", b2_shape, w.b2));
  MOE_RETURN_IF_ERROR_CTX(SetWeights(std::move(w)), path);
  return absl::OkStatus();
}

}  // namespace moe
