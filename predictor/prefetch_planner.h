// What to prefetch after a token's routing at a layer is known: the one rule shared by
// `moe-replay` and the live engine, so that replayed prefetching predicts live prefetching.
//
// AfterRouting(cache, seq, layer, experts, hidden):
//   1. predictor.Observe(seq, layer, experts), then, when `hidden` is not empty (the engine
//      passes the token's residual stream after the layer to predictors that use hidden states),
//      predictor.ObserveHidden(seq, layer, hidden);
//   2. when `scores` is set (the "predictive" eviction policy reads them): the scores of `layer`
//      become the prediction for its next visit (the sequence's next token);
//   3. for d = 1 .. depth, target = (layer + d) mod L (wrapping to the next token's early layers):
//      predict the target, refresh its scores, call on_predicted(target, wanted) with the keys
//      of its `budget` most probable experts (most probable first, stopping below `threshold`;
//      the engine may cancel queued prefetches of the target that the prediction no longer
//      names), and prefetch those of them that are not resident and that admit(d) accepts (the
//      engine's link budget and cap; replay admits all): cache.Prefetch(key); for each expert
//      that this inserts, on_prefetch(key, d) runs (the engine queues its copy, with a priority
//      by distance d; replay queues it on the link model).
//
// No allocation after construction. Thread-safety: none (the cache's owner drives it).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "memory/expert_cache.h"
#include "memory/expert_scores.h"
#include "predictor/predictor.h"

namespace moe {

struct PrefetchOptions {
  int32_t depth = 0;       // layers ahead to prefetch; 0: none (the predictor still observes)
  int32_t budget = 0;      // experts prefetched per predicted layer; 0: top_k
  double threshold = 0.0;  // only prefetch experts predicted with at least this probability
};

// The default on_predicted: nothing.
struct IgnorePredicted {
  void operator()(int32_t, std::span<const ExpertKey>) const {}
};

class PrefetchPlanner {
 public:
  // `scores` may be null. The predictor and scores must outlive the planner.
  PrefetchPlanner(Predictor& predictor, ExpertScores* scores, const PrefetchOptions& options);

  // `token_state` (engine, prefill chunks): the token's own hidden state at
  // predictor.token_state_layer(), observed again after `hidden` when that layer is earlier.
  template <typename Admit, typename OnPrefetch, typename OnPredicted = IgnorePredicted>
  void AfterRouting(ExpertCache& cache, int64_t seq, int32_t layer,
                    std::span<const uint16_t> experts, std::span<const float> hidden, Admit&& admit,
                    OnPrefetch&& on_prefetch, std::span<const float> token_state = {},
                    OnPredicted&& on_predicted = OnPredicted{}) {
    predictor_.Observe(seq, layer, experts);
    if (!hidden.empty()) predictor_.ObserveHidden(seq, layer, hidden);
    if (!token_state.empty() && predictor_.token_state_layer() < layer) {
      predictor_.ObserveHidden(seq, predictor_.token_state_layer(), token_state);
    }
    if (scores_ != nullptr) {
      Predict(seq, layer);
      scores_->SetLayer(layer, probs_);
    }
    const int32_t L = space_.num_layers;
    for (int32_t d = 1; d <= options_.depth; ++d) {
      const int32_t target = (layer + d) % L;
      Predict(seq, target);
      if (scores_ != nullptr) scores_->SetLayer(target, probs_);
      const int32_t top = TopExpertIds(probs_, budget_, order_);
      wanted_.clear();
      for (int32_t i = 0; i < top && probs_[order_[i]] >= options_.threshold; ++i) {
        wanted_.push_back(space_.Key(target, order_[i]));  // most probable first
      }
      on_predicted(target, std::span<const ExpertKey>(wanted_));
      for (const ExpertKey key : wanted_) {
        if (cache.Contains(key)) continue;
        if (!admit(d)) return;  // the link's budget or cap is spent for now
        if (cache.Prefetch(key)) on_prefetch(key, d);
      }
    }
  }

  // Before the experts of a token's layer are acquired (engine and replay alike): with `scores`
  // (the "predictive" policy), the scores of `layer` become the prediction for its next visit
  // given `experts` (Predictor::PredictNextVisit), so the acquire evicts what the next token is
  // least likely to want. Does nothing without scores or for predictors that cannot.
  void BeforeAcquire(int64_t seq, int32_t layer, std::span<const uint16_t> experts) {
    if (scores_ == nullptr || !predictor_.PredictNextVisit(seq, layer, experts, probs_)) return;
    SanitizeCounted(layer);
    scores_->SetLayer(layer, probs_);
  }

  const PrefetchOptions& options() const { return options_; }
  Predictor& predictor() { return predictor_; }
  // Predictions that held values outside [0, 1] or NaN (sanitized; the first one is logged).
  uint64_t garbage_predictions() const { return garbage_predictions_; }

 private:
  // predictor_.Predict into probs_, sanitized.
  void Predict(int64_t seq, int32_t target);
  // Sanitizes probs_ (a prediction for `layer`), counting and logging garbage.
  void SanitizeCounted(int32_t layer);

  Predictor& predictor_;
  ExpertScores* scores_;
  PrefetchOptions options_;
  ExpertSpace space_;
  int32_t budget_;
  std::vector<float> probs_;
  std::vector<int32_t> order_;     // TopExpertIds scratch
  std::vector<ExpertKey> wanted_;  // keys of one target's prediction; reserved budget_
  uint64_t garbage_predictions_ = 0;
};

// Per-layer recall of a predictor's one-layer-ahead guess, as the engine measures it live:
// before a token's routing at layer l is observed, the predictor's top-`budget` experts for l
// are compared with the experts the router chose. recall(l) = found / chosen.
struct PredictionRecall {
  int32_t budget = 0;
  std::vector<uint64_t> found;   // [L]
  std::vector<uint64_t> chosen;  // [L]

  double Recall(int32_t layer) const {
    return chosen[layer] ? double(found[layer]) / double(chosen[layer]) : 0.0;
  }
  // Over layers [first, L).
  double RecallFrom(int32_t first) const;
};

}  // namespace moe
