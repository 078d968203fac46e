#include "predictor/predictor_eval.h"

#include <algorithm>
#include <cmath>

#include "runtime/status.h"

namespace moe {

absl::StatusOr<std::vector<DistanceScore>> EvaluatePredictor(Predictor& predictor,
                                                             const RoutingTrace& trace,
                                                             const PredictorEvalOptions& options) {
  const PredictorOptions& popts = predictor.options();
  MOE_RETURN_IF_ERROR_CTX(CheckTraceShape(trace, popts),
                          fmt::format("evaluating predictor \"{}\"", predictor.name()));
  const int32_t num_layers = trace.header.num_layers;
  const int32_t num_experts = trace.header.num_experts;
  const int32_t top_k = trace.header.top_k;
  if (options.budget < 1 || options.budget > num_experts) {
    return InvalidArgument("evaluating predictor \"{}\": budget {} outside [1, num_experts {}]",
                           predictor.name(), options.budget, num_experts);
  }
  if (options.max_distance < 1) {
    return InvalidArgument("evaluating predictor \"{}\": max_distance {} must be >= 1",
                           predictor.name(), options.max_distance);
  }
  const int64_t expected_rows = trace.num_tokens() * num_layers * top_k;
  if (static_cast<int64_t>(trace.experts.size()) != expected_rows) {
    return InvalidArgument(
        "evaluating predictor \"{}\": trace holds {} expert ids, expected {} "
        "({} tokens x {} layers x top_k {})",
        predictor.name(), trace.experts.size(), expected_rows, trace.num_tokens(), num_layers,
        top_k);
  }
  for (size_t s = 0; s < trace.sequences.size(); ++s) {
    const TraceSequence& seq = trace.sequences[s];
    if (seq.token_offset < 0 || seq.num_tokens < 0 ||
        seq.token_offset + seq.num_tokens > trace.num_tokens()) {
      return InvalidArgument(
          "evaluating predictor \"{}\": sequence {} covers tokens [{}, {}), outside the trace's "
          "{} tokens",
          predictor.name(), s, seq.token_offset, seq.token_offset + seq.num_tokens,
          trace.num_tokens());
    }
  }

  const int32_t max_distance = options.max_distance;
  std::vector<double> hits(max_distance + 1, 0.0);  // indexed by distance
  std::vector<int64_t> samples(max_distance + 1, 0);
  // [distance][target layer]
  std::vector<std::vector<double>> layer_hits(max_distance + 1,
                                              std::vector<double>(num_layers, 0.0));
  std::vector<std::vector<int64_t>> layer_samples(max_distance + 1,
                                                  std::vector<int64_t>(num_layers, 0));
  std::vector<float> probs(num_experts);
  std::vector<int32_t> order(num_experts);
  std::vector<uint8_t> chosen(num_experts, 0);
  // Calibration sums per distance: squared error, and per bin the count, sum of p and of y.
  constexpr int kBins = 10;
  struct Calibration {
    double squared_error = 0;
    int64_t count[kBins] = {};
    double sum_p[kBins] = {};
    double sum_y[kBins] = {};
  };
  std::vector<Calibration> calibration(max_distance + 1);

  for (size_t s = 0; s < trace.sequences.size(); ++s) {
    const TraceSequence& seq = trace.sequences[s];
    const int64_t id = static_cast<int64_t>(s);
    predictor.BeginSequence(id);
    for (int64_t t = seq.token_offset; t < seq.token_offset + seq.num_tokens; ++t) {
      for (int32_t l = 0; l < num_layers; ++l) {
        predictor.Observe(id, l, trace.Experts(t, l));
        for (int32_t d = 1; d <= max_distance && l + d < num_layers; ++d) {
          const int32_t target = l + d;
          predictor.Predict(id, target, probs);
          SanitizeProbabilities(probs);
          const int32_t count = TopExpertIds(probs, options.budget, order);
          const std::span<const uint16_t> truth = trace.Experts(t, target);
          for (uint16_t e : truth) chosen[e] = 1;
          int32_t hit = 0;
          for (int32_t i = 0; i < count; ++i) hit += chosen[order[i]];
          Calibration& c = calibration[d];
          for (int32_t e = 0; e < num_experts; ++e) {
            const double p = probs[e], y = chosen[e];
            c.squared_error += (p - y) * (p - y);
            const int bin = std::min(kBins - 1, static_cast<int>(p * kBins));
            ++c.count[bin];
            c.sum_p[bin] += p;
            c.sum_y[bin] += y;
          }
          for (uint16_t e : truth) chosen[e] = 0;
          hits[d] += hit;
          ++samples[d];
          layer_hits[d][target] += hit;
          ++layer_samples[d][target];
        }
      }
    }
    predictor.EndSequence(id);
  }

  std::vector<DistanceScore> scores;
  for (int32_t d = 1; d <= max_distance; ++d) {
    DistanceScore score;
    score.distance = d;
    score.samples = samples[d];
    if (samples[d] > 0) {
      score.recall = hits[d] / (static_cast<double>(samples[d]) * top_k);
      score.precision = hits[d] / (static_cast<double>(samples[d]) * options.budget);
      const Calibration& c = calibration[d];
      const double n = static_cast<double>(samples[d]) * num_experts;
      score.brier = c.squared_error / n;
      for (int b = 0; b < kBins; ++b) {
        if (c.count[b] > 0) score.ece += std::abs(c.sum_p[b] - c.sum_y[b]) / n;
      }
    }
    score.recall_per_layer.assign(num_layers, 0.0);
    for (int32_t l = 0; l < num_layers; ++l) {
      if (layer_samples[d][l] > 0) {
        score.recall_per_layer[l] = layer_hits[d][l] / (double(layer_samples[d][l]) * top_k);
      }
    }
    scores.push_back(std::move(score));
  }
  return scores;
}

}  // namespace moe
