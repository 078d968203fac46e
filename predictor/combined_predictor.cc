#include "predictor/combined_predictor.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "runtime/safetensors.h"
#include "runtime/status.h"

namespace moe {
namespace {

// Sampled predictions per weight set for the grid search: enough to separate weights that differ
// by 0.1, small enough that the search takes well under a second.
constexpr int64_t kMaxFitSamples = 5000;
constexpr int kGridSteps = 10;

// Held-out predictions of the three parts, and the truth, for one weight set.
struct FitSamples {
  int32_t num_experts = 0;
  int64_t stride = 1;
  int64_t candidates = 0;
  std::vector<float> parts;    // [n, 3, E]: transition, frequency, recency
  std::vector<uint8_t> truth;  // [n, E]

  // Whether the next candidate is sampled (every stride-th).
  bool Take() { return candidates++ % stride == 0; }
  float* Add(std::span<const uint16_t> chosen) {
    const size_t at = truth.size();
    truth.resize(at + num_experts, 0);
    for (uint16_t j : chosen) truth[at + j] = 1;
    parts.resize(parts.size() + 3 * size_t(num_experts));
    return parts.data() + parts.size() - 3 * size_t(num_experts);
  }
  int64_t size() const { return static_cast<int64_t>(truth.size()) / num_experts; }
};

// The grid point with the best recall at `budget` (first best in grid order on ties).
MixtureWeights BestWeights(const FitSamples& samples, int32_t budget, MixtureWeights fallback) {
  const int32_t e = samples.num_experts;
  if (samples.size() == 0) return fallback;
  std::vector<float> mix(e);
  std::vector<int32_t> order(e);
  MixtureWeights best = fallback;
  int64_t best_hits = -1;
  for (int a = kGridSteps; a >= 0; --a) {
    for (int b = 0; a + b <= kGridSteps; ++b) {
      const MixtureWeights w{float(a) / kGridSteps, float(b) / kGridSteps,
                             float(kGridSteps - a - b) / kGridSteps};
      int64_t hits = 0;
      for (int64_t n = 0; n < samples.size(); ++n) {
        const float* part = samples.parts.data() + n * 3 * e;
        for (int32_t j = 0; j < e; ++j) {
          mix[j] = w.transition * part[j] + w.frequency * part[e + j] + w.recency * part[2 * e + j];
        }
        const int32_t count = TopExpertIds(mix, budget, order);
        const uint8_t* truth = samples.truth.data() + n * e;
        for (int32_t i = 0; i < count; ++i) hits += truth[order[i]];
      }
      if (hits > best_hits) {
        best_hits = hits;
        best = w;
      }
    }
  }
  return best;
}

// Fits `calibration` to the mixture `w` of the samples' parts against their truth.
void FitCalibration(const FitSamples& samples, const MixtureWeights& w, Calibration& calibration) {
  const int32_t e = samples.num_experts;
  std::vector<float> scores(samples.truth.size());
  for (int64_t n = 0; n < samples.size(); ++n) {
    const float* part = samples.parts.data() + n * 3 * e;
    for (int32_t j = 0; j < e; ++j) {
      scores[n * e + j] = std::clamp(
          w.transition * part[j] + w.frequency * part[e + j] + w.recency * part[2 * e + j], 0.0f,
          1.0f);
    }
  }
  if (!scores.empty()) calibration.Fit(scores, samples.truth);
}

absl::Status CheckWeights(const MixtureWeights& w, std::string_view which) {
  for (float v : {w.transition, w.frequency, w.recency}) {
    if (!(v >= 0.0f) || !std::isfinite(v)) {
      return InvalidArgument("{} weights ({}, {}, {}): each must be finite and >= 0", which,
                             w.transition, w.frequency, w.recency);
    }
  }
  if (!(w.transition + w.frequency + w.recency > 0.0f)) {
    return InvalidArgument("{} weights ({}, {}, {}) sum to 0", which, w.transition, w.frequency,
                           w.recency);
  }
  return absl::OkStatus();
}

// Leaves weights that already sum to 1 (up to rounding) untouched, so a Save/Load round trip
// reproduces predictions bit for bit.
MixtureWeights Normalized(const MixtureWeights& w) {
  const float sum = w.transition + w.frequency + w.recency;
  if (std::abs(sum - 1.0f) <= 1e-6f) return w;
  return MixtureWeights{w.transition / sum, w.frequency / sum, w.recency / sum};
}

}  // namespace

CombinedPredictor::CombinedPredictor(const PredictorOptions& options)
    : options_(options),
      frequency_(options),
      transition_(options),
      recency_(options),
      scratch_(options.space.num_experts) {}

absl::Status CombinedPredictor::SetWeights(const MixtureWeights& ahead,
                                           const MixtureWeights& next_token) {
  MOE_RETURN_IF_ERROR(CheckWeights(ahead, "ahead"));
  MOE_RETURN_IF_ERROR(CheckWeights(next_token, "next-token"));
  ahead_ = Normalized(ahead);
  next_token_ = Normalized(next_token);
  return absl::OkStatus();
}

void CombinedPredictor::BeginSequence(int64_t seq) {
  frequency_.BeginSequence(seq);
  transition_.BeginSequence(seq);
  recency_.BeginSequence(seq);
}

void CombinedPredictor::EndSequence(int64_t seq) {
  frequency_.EndSequence(seq);
  transition_.EndSequence(seq);
  recency_.EndSequence(seq);
}

void CombinedPredictor::Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
  frequency_.Observe(seq, layer, experts);
  transition_.Observe(seq, layer, experts);
  recency_.Observe(seq, layer, experts);
}

void CombinedPredictor::Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const {
  MOE_CHECK(static_cast<int32_t>(probs.size()) == options_.space.num_experts);
  const bool ahead = transition_.Distance(seq, target_layer) > 0;
  Mix(
      ahead ? ahead_ : next_token_, ahead ? ahead_calibration_ : next_token_calibration_, probs,
      [&] { transition_.Predict(seq, target_layer, scratch_); },
      [&] { frequency_.Predict(seq, target_layer, scratch_); },
      [&] { recency_.Predict(seq, target_layer, scratch_); });
}

bool CombinedPredictor::PredictNextVisit(int64_t seq, int32_t layer,
                                         std::span<const uint16_t> experts,
                                         std::span<float> probs) const {
  MOE_CHECK(static_cast<int32_t>(probs.size()) == options_.space.num_experts);
  Mix(
      next_token_, next_token_calibration_, probs,
      [&] {
        // Without next-token tables (an older file) the transition part of a next-token
        // prediction is the layer frequency, as in Predict.
        if (!transition_.PredictNextVisit(seq, layer, experts, scratch_)) {
          const std::span<const float> f = transition_.layer_frequency();
          std::copy_n(f.begin() + int64_t{layer} * options_.space.num_experts,
                      options_.space.num_experts, scratch_.begin());
        }
      },
      [&] { frequency_.Predict(seq, layer, scratch_); },
      [&] { recency_.PredictNextVisit(seq, layer, experts, scratch_); });
  return true;
}

void CombinedPredictor::FitWeights(const RoutingTrace& trace, std::span<const int64_t> sequences) {
  const int32_t num_layers = options_.space.num_layers;
  const int32_t e = options_.space.num_experts;
  FitSamples ahead, next;
  ahead.num_experts = next.num_experts = e;
  int64_t ahead_per_token = 0;
  for (int32_t d = 1; d <= options_.max_distance && d < num_layers; ++d) {
    ahead_per_token += num_layers - d;
  }
  int64_t ahead_total = 0, next_total = 0;
  for (int64_t s : sequences) {
    const int64_t tokens = trace.sequences.at(s).num_tokens;
    ahead_total += tokens * ahead_per_token;
    next_total += std::max<int64_t>(tokens - 1, 0) * num_layers;
  }
  ahead.stride = std::max<int64_t>(1, (ahead_total + kMaxFitSamples - 1) / kMaxFitSamples);
  next.stride = std::max<int64_t>(1, (next_total + kMaxFitSamples - 1) / kMaxFitSamples);

  auto record = [&](FitSamples& samples, int64_t seq, int32_t target,
                    std::span<const uint16_t> chosen) {
    float* part = samples.Add(chosen);
    transition_.Predict(seq, target, std::span<float>(part, e));
    frequency_.Predict(seq, target, std::span<float>(part + e, e));
    recency_.Predict(seq, target, std::span<float>(part + 2 * e, e));
  };
  for (int64_t s : sequences) {
    const TraceSequence& sequence = trace.sequences.at(s);
    const int64_t end = sequence.token_offset + sequence.num_tokens;
    // Negative ids keep clear of the caller's live sequences (ids are usually >= 0).
    const int64_t id = -1 - s;
    BeginSequence(id);
    for (int64_t t = sequence.token_offset; t < end; ++t) {
      for (int32_t l = 0; l < num_layers; ++l) {
        Observe(id, l, trace.Experts(t, l));
        for (int32_t d = 1; d <= options_.max_distance && l + d < num_layers; ++d) {
          if (ahead.Take()) record(ahead, id, l + d, trace.Experts(t, l + d));
        }
        if (t + 1 < end && next.Take()) record(next, id, l, trace.Experts(t + 1, l));
      }
    }
    EndSequence(id);
  }
  const int32_t budget = std::min(2 * options_.top_k, e);
  ahead_ = BestWeights(ahead, budget, ahead_);
  next_token_ = BestWeights(next, budget, next_token_);
  FitCalibration(ahead, ahead_, ahead_calibration_);
  FitCalibration(next, next_token_, next_token_calibration_);
}

absl::Status CombinedPredictor::Learn(const RoutingTrace& trace) {
  MOE_RETURN_IF_ERROR_CTX(CheckTraceShape(trace, options_), "learning combined predictor");
  const std::vector<int64_t> all = AllSequences(trace);
  std::vector<int64_t> train, fit;
  const size_t n = all.size();
  for (size_t i = 0; i < n; ++i) {
    const bool held_out = n >= 10 ? i % 10 == 9 : (n >= 2 && i + 1 == n);
    (held_out ? fit : train).push_back(all[i]);
  }
  if (n == 1) fit = train;  // nothing to hold out: fit on what was learned

  auto tokens_of = [&trace](std::span<const int64_t> sequences) {
    double tokens = 0;
    for (int64_t s : sequences) tokens += static_cast<double>(trace.sequences[s].num_tokens);
    return tokens;
  };
  MOE_RETURN_IF_ERROR(transition_.LearnFrom(trace, train));
  // Rounded to float as Save stores it, so a loaded predictor starts from the same prior.
  prior_weight_ = static_cast<float>(std::min(tokens_of(train) + 1.0, frequency_.PriorWeight()));
  frequency_.SetPrior(transition_.layer_frequency(), prior_weight_);
  FitWeights(trace, fit);
  if (n >= 2) MOE_RETURN_IF_ERROR(transition_.AddSequences(trace, fit));
  prior_weight_ = static_cast<float>(std::min(tokens_of(all) + 1.0, frequency_.PriorWeight()));
  frequency_.SetPrior(transition_.layer_frequency(), prior_weight_);
  return absl::OkStatus();
}

absl::Status CombinedPredictor::Save(const std::string& path) const {
  SafetensorsWriter writer;
  SetPredictorMetadata(name(), options_, writer);
  MOE_RETURN_IF_ERROR(transition_.AddTensors(writer));
  const float weights[] = {ahead_.transition,      ahead_.frequency,      ahead_.recency,
                           next_token_.transition, next_token_.frequency, next_token_.recency};
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "weights", {2, 3}, weights));
  const float prior_weight[] = {static_cast<float>(prior_weight_)};
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "prior_weight", {1}, prior_weight));
  constexpr int K = Calibration::kBins;
  std::vector<float> knots(4 * K, -1.0f);  // [set][score | value][knot]
  for (int set = 0; set < 2; ++set) {
    const Calibration& c = set == 0 ? ahead_calibration_ : next_token_calibration_;
    std::copy(c.knot_scores().begin(), c.knot_scores().end(), knots.begin() + (2 * set) * K);
    std::copy(c.knot_values().begin(), c.knot_values().end(), knots.begin() + (2 * set + 1) * K);
  }
  MOE_RETURN_IF_ERROR(AddF32Tensor(writer, "calibration", {2, 2, K}, knots));
  return writer.Write(path);
}

absl::Status CombinedPredictor::Load(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  MOE_RETURN_IF_ERROR(CheckPredictorFile(name(), options_, /*check_distances=*/true, *file));
  float weights[6] = {};
  float prior_weight = 0.0f;
  const int64_t weights_shape[] = {2, 3};
  const int64_t prior_shape[] = {1};
  MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "weights", weights_shape, weights));
  MOE_RETURN_IF_ERROR(
      ReadF32Tensor(*file, "prior_weight", prior_shape, std::span<float>(&prior_weight, 1)));
  const MixtureWeights ahead{weights[0], weights[1], weights[2]};
  const MixtureWeights next_token{weights[3], weights[4], weights[5]};
  MOE_RETURN_IF_ERROR_CTX(CheckWeights(ahead, "ahead"), path);
  MOE_RETURN_IF_ERROR_CTX(CheckWeights(next_token, "next-token"), path);
  if (!(prior_weight > 0.0f) || !std::isfinite(prior_weight)) {
    return InvalidArgument("{}: prior_weight is {}, expected > 0", path, prior_weight);
  }
  Calibration calibration[2];
  if (file->Find("calibration") != nullptr) {  // absent in files from before calibration
    constexpr int K = Calibration::kBins;
    std::vector<float> knots(4 * K);
    const int64_t shape[] = {2, 2, K};
    MOE_RETURN_IF_ERROR(ReadF32Tensor(*file, "calibration", shape, knots));
    for (int set = 0; set < 2; ++set) {
      const float* scores = knots.data() + (2 * set) * K;
      const float* values = knots.data() + (2 * set + 1) * K;
      const auto used = static_cast<size_t>(
          std::find_if(scores, scores + K, [](float v) { return v < 0.0f; }) - scores);
      MOE_RETURN_IF_ERROR_CTX(calibration[set].SetKnots({scores, used}, {values, used}), path);
    }
  }
  MOE_RETURN_IF_ERROR(transition_.ReadTensors(*file));
  MOE_RETURN_IF_ERROR(SetWeights(ahead, next_token));
  ahead_calibration_ = calibration[0];
  next_token_calibration_ = calibration[1];
  prior_weight_ = prior_weight;
  frequency_.SetPrior(transition_.layer_frequency(), prior_weight_);
  return absl::OkStatus();
}

}  // namespace moe
