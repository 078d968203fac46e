// Offline evaluation of a predictor on a trace: recall and precision at a budget, per layer
// distance d (predicting layer l+d right after observing layer l of the same token).
//
// For every token t of the evaluated sequences and every layer l with l + d < num_layers:
// after Observe(t, l), the predictor's top-`budget` experts for layer l + d are compared with
// the k experts the token actually chose there. recall = |hit| / k, precision = |hit| / budget,
// averaged over all (token, l) pairs; also reported per target layer. Ties in the predictor's
// probabilities are broken by lower expert id (TopExperts).
//
// Calibration, over every (token, l, expert e of layer l + d) with the prediction p_e sanitized
// (SanitizeProbabilities) and y_e = 1 when the token chose e: the Brier score mean((p_e - y_e)^2)
// and the expected calibration error over 10 equal-width bins of p,
// ECE = sum_b (n_b / N) |mean p in b - mean y in b|. A predictor whose p are the true
// probabilities scores ECE ~ 0; ranking-only scores (the gate) need not.
//
// Sequence i of the trace is driven as seq id i, bracketed by BeginSequence / EndSequence; the
// predictor's global state (e.g. "frequency" counts) carries over from one sequence to the next,
// as in a live run.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "predictor/predictor.h"
#include "predictor/routing_trace.h"

namespace moe {

struct PredictorEvalOptions {
  int32_t budget = 0;        // experts predicted per target layer; > 0
  int32_t max_distance = 1;  // evaluate d = 1 .. max_distance
};

struct DistanceScore {
  int32_t distance = 0;
  double recall = 0.0;
  double precision = 0.0;
  int64_t samples = 0;                   // (token, layer) pairs
  double brier = 0.0;                    // mean squared error of the probabilities
  double ece = 0.0;                      // expected calibration error (10 bins)
  std::vector<double> recall_per_layer;  // indexed by target layer; 0 where no samples
};

// Runs `predictor` over every sequence of `trace` (already Learn()ed or not, as the caller
// decides) and scores it. InvalidArgument on shape mismatch or a budget outside [1, experts].
absl::StatusOr<std::vector<DistanceScore>> EvaluatePredictor(Predictor& predictor,
                                                             const RoutingTrace& trace,
                                                             const PredictorEvalOptions& options);

}  // namespace moe
