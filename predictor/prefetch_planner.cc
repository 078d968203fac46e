#include "predictor/prefetch_planner.h"

namespace moe {

PrefetchPlanner::PrefetchPlanner(Predictor& predictor, ExpertScores* scores,
                                 const PrefetchOptions& options)
    : predictor_(predictor),
      scores_(scores),
      options_(options),
      space_(predictor.options().space),
      budget_(options.budget > 0 ? options.budget : predictor.options().top_k),
      probs_(static_cast<size_t>(space_.num_experts)),
      order_(static_cast<size_t>(space_.num_experts)) {}

double PredictionRecall::RecallFrom(int32_t first) const {
  uint64_t f = 0, c = 0;
  for (size_t l = static_cast<size_t>(first); l < found.size(); ++l) {
    f += found[l];
    c += chosen[l];
  }
  return c ? double(f) / double(c) : 0.0;
}

}  // namespace moe
