#include "predictor/prefetch_planner.h"

#include "runtime/logging.h"

namespace moe {

PrefetchPlanner::PrefetchPlanner(Predictor& predictor, ExpertScores* scores,
                                 const PrefetchOptions& options)
    : predictor_(predictor),
      scores_(scores),
      options_(options),
      space_(predictor.options().space),
      budget_(options.budget > 0 ? options.budget : predictor.options().top_k),
      probs_(static_cast<size_t>(space_.num_experts)),
      order_(static_cast<size_t>(space_.num_experts)) {
  wanted_.reserve(static_cast<size_t>(budget_));
}

void PrefetchPlanner::Predict(int64_t seq, int32_t target) {
  predictor_.Predict(seq, target, probs_);
  SanitizeCounted(target);
}

void PrefetchPlanner::SanitizeCounted(int32_t layer) {
  if (SanitizeProbabilities(probs_) > 0 && garbage_predictions_++ == 0) {
    MOE_LOG(kWarning,
            "predictor '{}' returned probabilities outside [0, 1] (layer {}); they are clamped, "
            "prefetching may waste copies but results are unaffected",
            predictor_.name(), layer);
  }
}

double PredictionRecall::RecallFrom(int32_t first) const {
  uint64_t f = 0, c = 0;
  for (size_t l = static_cast<size_t>(first); l < found.size(); ++l) {
    f += found[l];
    c += chosen[l];
  }
  return c ? double(f) / double(c) : 0.0;
}

}  // namespace moe
