// Unit tests of the predictors on small hand-built traces with known structure.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "predictor/combined_predictor.h"
#include "predictor/frequency_predictor.h"
#include "predictor/predictor.h"
#include "predictor/predictor_eval.h"
#include "predictor/recency_predictor.h"
#include "predictor/transition_predictor.h"
#include "runtime/safetensors.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// experts(sequence, token within the sequence, layer) -> the token's experts at that layer.
using RoutingFn = std::function<std::vector<uint16_t>(int64_t, int64_t, int32_t)>;

RoutingTrace MakeTrace(int32_t num_layers, int32_t num_experts, int32_t top_k,
                       const std::vector<int64_t>& lengths, const RoutingFn& routing) {
  RoutingTrace trace;
  trace.header.model = "hand-built";
  trace.header.num_layers = num_layers;
  trace.header.num_experts = num_experts;
  trace.header.top_k = top_k;
  for (size_t s = 0; s < lengths.size(); ++s) {
    trace.sequences.push_back(TraceSequence{trace.num_tokens(), lengths[s], ""});
    for (int64_t t = 0; t < lengths[s]; ++t) {
      trace.phases.push_back(Phase::kDecode);
      for (int32_t l = 0; l < num_layers; ++l) {
        const std::vector<uint16_t> chosen = routing(static_cast<int64_t>(s), t, l);
        EXPECT_EQ(static_cast<int32_t>(chosen.size()), top_k);
        trace.experts.insert(trace.experts.end(), chosen.begin(), chosen.end());
      }
    }
  }
  return trace;
}

PredictorOptions Options(int32_t num_layers, int32_t num_experts, int32_t top_k) {
  PredictorOptions options;
  options.space = ExpertSpace{num_layers, num_experts};
  options.top_k = top_k;
  return options;
}

std::unique_ptr<Predictor> Make(std::string_view name, const PredictorOptions& options) {
  absl::StatusOr<std::unique_ptr<Predictor>> predictor = MakePredictor(name, options);
  EXPECT_TRUE(predictor.ok()) << predictor.status();
  return std::move(predictor).value();
}

std::vector<float> PredictAll(const Predictor& predictor, int64_t seq, int32_t layer) {
  std::vector<float> probs(predictor.options().space.num_experts, -1.0f);
  predictor.Predict(seq, layer, probs);
  return probs;
}

void ExpectProbabilities(std::span<const float> probs) {
  for (float p : probs) {
    EXPECT_GE(p, 0.0f);
    EXPECT_LE(p, 1.0f);
  }
}

// Layer 0: two distinct experts drawn at random; layer l + 1: a fixed permutation of layer l's.
uint16_t Next(uint16_t expert, int32_t num_experts) { return (expert * 5 + 3) % num_experts; }
RoutingFn ChainRouting(int32_t num_experts, uint64_t seed) {
  return [num_experts, seed](int64_t s, int64_t t, int32_t l) {
    std::mt19937_64 rng(seed * 1000003 + s * 1009 + t);
    std::vector<uint16_t> experts(num_experts);
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng);
    std::vector<uint16_t> chosen = {experts[0], experts[1]};
    for (int32_t i = 0; i < l; ++i) {
      for (uint16_t& e : chosen) e = Next(e, num_experts);
    }
    return chosen;
  };
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (std::string("moe_predictor_test_") + std::to_string(::getpid()) + "_" + name))
      .string();
}

// ---- names, options, TopExperts ----------------------------------------------------------------

TEST(PredictorFactoryTest, MakesEveryNamedPredictor) {
  ASSERT_EQ(PredictorNames().size(), 6u);
  for (std::string_view name : PredictorNames()) {
    std::unique_ptr<Predictor> predictor = Make(name, Options(4, 8, 2));
    ASSERT_NE(predictor, nullptr);
    EXPECT_EQ(predictor->name(), name);
    EXPECT_EQ(predictor->options().top_k, 2);
  }
}

TEST(PredictorFactoryTest, UnknownNameListsValidNames) {
  absl::StatusOr<std::unique_ptr<Predictor>> predictor = MakePredictor("oracle", Options(4, 8, 2));
  ASSERT_FALSE(predictor.ok());
  EXPECT_EQ(predictor.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(predictor.status().message());
  EXPECT_THAT(message, HasSubstr("oracle"));
  for (std::string_view name : PredictorNames()) EXPECT_THAT(message, HasSubstr(name));
}

TEST(PredictorFactoryTest, RejectsBadOptions) {
  struct Case {
    const char* field;
    std::function<void(PredictorOptions&)> change;
  };
  const Case cases[] = {
      {"num_layers", [](PredictorOptions& o) { o.space.num_layers = 0; }},
      {"num_experts", [](PredictorOptions& o) { o.space.num_experts = 0; }},
      {"top_k", [](PredictorOptions& o) { o.top_k = 0; }},
      {"top_k", [](PredictorOptions& o) { o.top_k = 9; }},
      {"max_distance", [](PredictorOptions& o) { o.max_distance = 0; }},
      {"evidence_layers", [](PredictorOptions& o) { o.evidence_layers = 0; }},
      {"frequency_decay", [](PredictorOptions& o) { o.frequency_decay = 0.0; }},
      {"recency_decay", [](PredictorOptions& o) { o.recency_decay = 1.0; }},
  };
  for (const Case& c : cases) {
    PredictorOptions options = Options(4, 8, 2);
    c.change(options);
    absl::StatusOr<std::unique_ptr<Predictor>> predictor = MakePredictor("transition", options);
    ASSERT_FALSE(predictor.ok()) << c.field;
    EXPECT_EQ(predictor.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(predictor.status().message()), HasSubstr(c.field));
  }
}

TEST(TopExpertsTest, OrdersByProbabilityThenLowerId) {
  const std::vector<float> probs = {0.1f, 0.5f, 0.2f, 0.5f, 0.0f, 0.9f};
  const std::vector<ScoredExpert> top = TopExperts(probs, 4);
  ASSERT_EQ(top.size(), 4u);
  EXPECT_EQ(top[0].expert, 5);
  EXPECT_EQ(top[1].expert, 1);  // ties with 3: lower id first
  EXPECT_EQ(top[2].expert, 3);
  EXPECT_EQ(top[3].expert, 2);
  EXPECT_FLOAT_EQ(top[0].probability, 0.9f);
  EXPECT_FLOAT_EQ(top[3].probability, 0.2f);
}

TEST(TopExpertsTest, ClampsBudget) {
  const std::vector<float> probs = {0.3f, 0.1f, 0.2f};
  EXPECT_TRUE(TopExperts(probs, 0).empty());
  EXPECT_TRUE(TopExperts(probs, -1).empty());
  const std::vector<ScoredExpert> all = TopExperts(probs, 10);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].expert, 0);
  EXPECT_EQ(all[1].expert, 2);
  EXPECT_EQ(all[2].expert, 1);
}

TEST(TopExpertsTest, LargeBudgetsOrderTheSameWay) {
  // Budgets above 32 take a different code path; both must give the same order.
  std::vector<float> probs(80);
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>((i * 37) % 11) / 10.0f;
  const std::vector<ScoredExpert> small = TopExperts(probs, 30);
  const std::vector<ScoredExpert> large = TopExperts(probs, 60);
  ASSERT_EQ(large.size(), 60u);
  for (size_t i = 0; i < small.size(); ++i) EXPECT_EQ(small[i].expert, large[i].expert) << i;
  for (size_t i = 1; i < large.size(); ++i) {
    const bool ordered =
        large[i - 1].probability > large[i].probability ||
        (large[i - 1].probability == large[i].probability && large[i - 1].expert < large[i].expert);
    EXPECT_TRUE(ordered) << i;
  }
}

TEST(NonePredictorTest, PredictsZeros) {
  std::unique_ptr<Predictor> none = Make("none", Options(3, 4, 1));
  none->BeginSequence(1);
  const uint16_t chosen[] = {2};
  none->Observe(1, 0, chosen);
  EXPECT_THAT(PredictAll(*none, 1, 1), ::testing::Each(0.0f));
  EXPECT_EQ(none->Save(TempPath("none")).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(none->Load(TempPath("none")).code(), absl::StatusCode::kUnimplemented);
}

// ---- frequency ---------------------------------------------------------------------------------

TEST(FrequencyPredictorTest, StartsUniform) {
  std::unique_ptr<Predictor> frequency = Make("frequency", Options(2, 8, 2));
  EXPECT_THAT(PredictAll(*frequency, 0, 1), ::testing::Each(::testing::FloatEq(0.25f)));
}

TEST(FrequencyPredictorTest, TracksPopularExpertAndDecays) {
  PredictorOptions options = Options(2, 8, 2);
  options.frequency_decay = 0.9;
  std::unique_ptr<Predictor> frequency = Make("frequency", options);
  frequency->BeginSequence(0);
  for (int t = 0; t < 100; ++t) {
    const uint16_t chosen[] = {3, static_cast<uint16_t>(4 + t % 4)};
    frequency->Observe(0, 0, chosen);
  }
  std::vector<float> probs = PredictAll(*frequency, 0, 0);
  ExpectProbabilities(probs);
  EXPECT_GT(probs[3], 0.99f);
  EXPECT_NEAR(probs[5], 0.25f, 0.05f);
  EXPECT_LT(probs[0], 0.01f);
  EXPECT_NEAR(std::accumulate(probs.begin(), probs.end(), 0.0f), 2.0f, 1e-4f);
  // Layer 1 saw nothing: still uniform.
  EXPECT_THAT(PredictAll(*frequency, 0, 1), ::testing::Each(::testing::FloatEq(0.25f)));

  // The popular expert changes: the old one fades at the decay's pace.
  for (int t = 0; t < 50; ++t) {
    const uint16_t chosen[] = {1, 2};
    frequency->Observe(0, 0, chosen);
  }
  probs = PredictAll(*frequency, 0, 0);
  EXPECT_GT(probs[1], 0.99f);
  EXPECT_LT(probs[3], 0.01f);
}

TEST(FrequencyPredictorTest, LearnSeedsPrior) {
  const RoutingTrace trace = MakeTrace(2, 8, 2, {30, 20}, [](int64_t, int64_t t, int32_t l) {
    return l == 0 ? std::vector<uint16_t>{1, 2}
                  : std::vector<uint16_t>{static_cast<uint16_t>(t % 2), 7};
  });
  std::unique_ptr<Predictor> frequency = Make("frequency", Options(2, 8, 2));
  ASSERT_TRUE(frequency->Learn(trace).ok());
  const std::vector<float> layer0 = PredictAll(*frequency, 0, 0);
  EXPECT_NEAR(layer0[1], 1.0f, 0.02f);
  EXPECT_NEAR(layer0[2], 1.0f, 0.02f);
  EXPECT_LT(layer0[0], 0.01f);
  const std::vector<float> layer1 = PredictAll(*frequency, 0, 1);
  EXPECT_NEAR(layer1[0], 0.5f, 0.02f);
  EXPECT_NEAR(layer1[7], 1.0f, 0.02f);
}

TEST(FrequencyPredictorTest, LearnRejectsShapeMismatch) {
  const RoutingTrace trace = MakeTrace(3, 8, 2, {2}, [](int64_t, int64_t, int32_t) {
    return std::vector<uint16_t>{0, 1};
  });
  std::unique_ptr<Predictor> frequency = Make("frequency", Options(2, 8, 2));
  const absl::Status status = frequency->Learn(trace);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("layers 3"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("layers 2"));
}

// ---- transition
// ----------------------------------------------------------------------------------

TEST(TransitionPredictorTest, DeterministicChainGivesFullRecallAtBudgetK) {
  const int32_t layers = 6, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(20, 30), ChainRouting(experts, 1));
  const RoutingTrace test =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(5, 10), ChainRouting(experts, 2));
  PredictorOptions options = Options(layers, experts, 2);
  options.max_distance = 3;
  TransitionPredictor transition(options);
  ASSERT_TRUE(transition.Learn(learn).ok());
  // The table itself: expert i at layer 2 is always followed by Next(i) at layer 3.
  EXPECT_GT(transition.Probability(1, 2, 4, Next(4, experts)), 0.95f);
  // Each row is a distribution over the top_k experts of the target layer: it sums to top_k.
  float row_sum = 0.0f;
  for (int32_t j = 0; j < experts; ++j) row_sum += transition.Probability(1, 2, 4, j);
  EXPECT_NEAR(row_sum, 2.0f, 1e-4f);
  EXPECT_EQ(transition.Probability(1, layers - 1, 4, 0), 0.0f);  // no layer after the last

  PredictorEvalOptions eval;
  eval.budget = 2;
  eval.max_distance = 3;
  absl::StatusOr<std::vector<DistanceScore>> scores = EvaluatePredictor(transition, test, eval);
  ASSERT_TRUE(scores.ok()) << scores.status();
  ASSERT_EQ(scores->size(), 3u);
  for (const DistanceScore& score : *scores) {
    EXPECT_DOUBLE_EQ(score.recall, 1.0) << "d=" << score.distance;
    EXPECT_DOUBLE_EQ(score.precision, 1.0) << "d=" << score.distance;
  }
}

TEST(TransitionPredictorTest, PredictsAheadOnlyWithinMaxDistanceElseFrequency) {
  const int32_t layers = 6, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(12, 20), ChainRouting(experts, 3));
  PredictorOptions options = Options(layers, experts, 2);
  options.max_distance = 2;
  TransitionPredictor transition(options);
  ASSERT_TRUE(transition.Learn(learn).ok());
  EXPECT_GT(transition.temperature(), 0.0f);

  transition.BeginSequence(7);
  EXPECT_EQ(transition.Distance(7, 1), 0);  // nothing observed yet
  const uint16_t chosen[] = {4, 9};
  transition.Observe(7, 0, chosen);
  EXPECT_EQ(transition.Distance(7, 1), 1);
  EXPECT_EQ(transition.Distance(7, 2), 2);
  EXPECT_EQ(transition.Distance(7, 3), 0);  // beyond max_distance
  EXPECT_EQ(transition.Distance(7, 0), 0);  // the next token's layer 0

  std::vector<float> probs = PredictAll(transition, 7, 1);
  ExpectProbabilities(probs);
  EXPECT_GT(probs[Next(4, experts)], 0.9f);
  EXPECT_GT(probs[Next(9, experts)], 0.9f);
  EXPECT_LE(std::accumulate(probs.begin(), probs.end(), 0.0f), 2.0f + 1e-4f);

  // Beyond max_distance, with no earlier token of this sequence, only the frequency is known.
  // (Target 0, which this token passed, is predicted from the next-token tables: see below.)
  const std::span<const float> frequency = transition.layer_frequency();
  ExpectProbabilities(PredictAll(transition, 7, 0));
  for (int32_t target : {3, 5}) {
    probs = PredictAll(transition, 7, target);
    for (int32_t j = 0; j < experts; ++j) {
      EXPECT_EQ(probs[j], frequency[target * experts + j]) << target << " " << j;
    }
  }
  // Unknown sequences and ended ones predict the layer frequency too.
  transition.EndSequence(7);
  probs = PredictAll(transition, 7, 1);
  EXPECT_EQ(probs[0], frequency[1 * experts + 0]);
}

// Consecutive tokens linked: token t + 1 chooses Next(e) at every layer for each e token t chose,
// while a token's layers are unrelated to each other. Only the next-token tables can predict.
RoutingFn SuccessorRouting(int32_t num_experts) {
  return [num_experts](int64_t s, int64_t t, int32_t l) {
    std::mt19937_64 rng(s * 7919 + l * 104729);
    std::vector<uint16_t> experts(num_experts);
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng);
    std::vector<uint16_t> chosen = {experts[0], experts[1]};
    for (int64_t i = 0; i < t; ++i) {
      for (uint16_t& e : chosen) e = Next(e, num_experts);
    }
    return chosen;
  };
}

TEST(TransitionPredictorTest, PredictsTheNextTokenFromThisTokensExpertsAtTheLayer) {
  const int32_t layers = 4, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(30, 12), SuccessorRouting(experts));
  TransitionPredictor transition(Options(layers, experts, 2));
  ASSERT_TRUE(transition.Learn(learn).ok());
  ASSERT_TRUE(transition.has_next_token_tables());
  EXPECT_GT(transition.NextTokenProbability(2, 5, Next(5, experts)), 0.95f);
  EXPECT_GT(transition.next_token_temperature(), 0.0f);

  // A new sequence (own random start): after its first token's layers 0..2, layer 1 (passed)
  // is predicted for the next token, and layer 3 (ahead) from this token's layers.
  const uint16_t chosen[][2] = {{3, 8}, {0, 11}, {6, 14}};
  transition.BeginSequence(1);
  for (int32_t l = 0; l < 3; ++l) transition.Observe(1, l, chosen[l]);
  std::vector<float> probs = PredictAll(transition, 1, 1);
  ExpectProbabilities(probs);
  const std::vector<ScoredExpert> top = TopExperts(probs, 2);
  std::vector<int32_t> predicted = {top[0].expert, top[1].expert};
  std::sort(predicted.begin(), predicted.end());
  EXPECT_EQ(predicted, (std::vector<int32_t>{Next(0, experts), Next(11, experts)}));
  EXPECT_GT(probs[Next(0, experts)], 0.8f);
  // The previous token at a layer ahead: the second token's layer 3 is predicted from the first
  // token's (weighted w_p) as well as from the second token's own layers.
  transition.Observe(1, 0, std::vector<uint16_t>{Next(3, experts), Next(8, experts)});
  probs = PredictAll(transition, 1, 3);
  ExpectProbabilities(probs);
}

// PredictNextVisit(seq, l, experts) must equal Predict(seq, l) right after Observe(seq, l,
// experts), without changing the state: checked against a twin that observes.
void ExpectNextVisitEqualsObserveThenPredict(std::string_view name, const RoutingTrace& learn,
                                             const RoutingTrace& replay,
                                             const PredictorOptions& options) {
  SCOPED_TRACE(std::string(name));
  std::unique_ptr<Predictor> asked = Make(name, options);
  std::unique_ptr<Predictor> observing = Make(name, options);
  ASSERT_TRUE(asked->Learn(learn).ok());
  ASSERT_TRUE(observing->Learn(learn).ok());
  const int32_t layers = options.space.num_layers;
  std::vector<float> next(static_cast<size_t>(options.space.num_experts));
  asked->BeginSequence(0);
  observing->BeginSequence(0);
  for (int64_t t = 0; t < replay.num_tokens(); ++t) {
    for (int32_t l = 0; l < layers; ++l) {
      ASSERT_TRUE(asked->PredictNextVisit(0, l, replay.Experts(t, l), next));
      ExpectProbabilities(next);
      observing->Observe(0, l, replay.Experts(t, l));
      EXPECT_EQ(next, PredictAll(*observing, 0, l)) << "token " << t << " layer " << l;
      asked->Observe(0, l, replay.Experts(t, l));
      // Unchanged by the question: both still predict the same for every layer.
      for (int32_t target = 0; target < layers; ++target) {
        ASSERT_EQ(PredictAll(*asked, 0, target), PredictAll(*observing, 0, target));
      }
    }
  }
}

TEST(PredictNextVisitTest, EqualsObservingThenPredicting) {
  const int32_t layers = 4, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(30, 12), SuccessorRouting(experts));
  const RoutingTrace replay = MakeTrace(layers, experts, 2, {6}, SuccessorRouting(experts));
  const PredictorOptions options = Options(layers, experts, 2);
  ExpectNextVisitEqualsObserveThenPredict("transition", learn, replay, options);
  ExpectNextVisitEqualsObserveThenPredict("recency", learn, replay, options);
  // "combined" with its frequency part (which adapts at Observe) weighted 0: exact too.
  CombinedPredictor combined(options);
  ASSERT_TRUE(combined.Learn(learn).ok());
  ASSERT_TRUE(combined.SetWeights({1, 0, 0}, {0.6f, 0, 0.4f}).ok());
  CombinedPredictor twin(options);
  ASSERT_TRUE(twin.Learn(learn).ok());
  ASSERT_TRUE(twin.SetWeights({1, 0, 0}, {0.6f, 0, 0.4f}).ok());
  std::vector<float> next(experts);
  combined.BeginSequence(0);
  twin.BeginSequence(0);
  for (int32_t l = 0; l < layers; ++l) {
    ASSERT_TRUE(combined.PredictNextVisit(0, l, replay.Experts(2, l), next));
    twin.Observe(0, l, replay.Experts(2, l));
    EXPECT_EQ(next, PredictAll(twin, 0, l)) << "layer " << l;
    combined.Observe(0, l, replay.Experts(2, l));
  }
  // Predictors that cannot say so.
  std::vector<float> probs(experts);
  const uint16_t chosen[] = {1, 2};
  EXPECT_FALSE(Make("frequency", options)->PredictNextVisit(0, 1, chosen, probs));
  EXPECT_FALSE(Make("none", options)->PredictNextVisit(0, 1, chosen, probs));
}

TEST(TransitionPredictorTest, FitsNoPreviousTokenWeightWhenTokensAreUnrelated) {
  // ChainRouting draws each token independently: the previous token says nothing ahead.
  const int32_t layers = 6, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(20, 30), ChainRouting(experts, 1));
  TransitionPredictor transition(Options(layers, experts, 2));
  ASSERT_TRUE(transition.Learn(learn).ok());
  EXPECT_EQ(transition.previous_token_weight(), 0.0f);
  const RoutingTrace linked =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(30, 12), SuccessorRouting(experts));
  ASSERT_TRUE(transition.Learn(linked).ok());
  EXPECT_GT(transition.previous_token_weight(), 0.0f);
}

TEST(TransitionPredictorTest, InterleavedSequencesKeepSeparateState) {
  const int32_t layers = 4, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(12, 20), ChainRouting(experts, 4));
  PredictorOptions options = Options(layers, experts, 2);
  TransitionPredictor alone(options), interleaved(options);
  ASSERT_TRUE(alone.Learn(learn).ok());
  ASSERT_TRUE(interleaved.Learn(learn).ok());
  const uint16_t a[] = {1, 2}, b[] = {7, 8};
  alone.BeginSequence(1);
  alone.Observe(1, 0, a);
  interleaved.BeginSequence(1);
  interleaved.BeginSequence(2);
  interleaved.Observe(1, 0, a);
  interleaved.Observe(2, 0, b);
  interleaved.Observe(2, 1, b);
  EXPECT_EQ(PredictAll(alone, 1, 2), PredictAll(interleaved, 1, 2));
  EXPECT_EQ(interleaved.Distance(1, 1), 1);
  EXPECT_EQ(interleaved.Distance(2, 1), 0);
}

TEST(TransitionPredictorTest, LearnRejectsShapeMismatch) {
  const RoutingTrace trace =
      MakeTrace(4, 8, 1, {2}, [](int64_t, int64_t, int32_t) { return std::vector<uint16_t>{3}; });
  TransitionPredictor transition(Options(4, 8, 2));
  const absl::Status status = transition.Learn(trace);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("top_k 1"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("top_k 2"));
}

// ---- recency
// -------------------------------------------------------------------------------------

TEST(RecencyPredictorTest, PredictsTheSequencesRepeatedExperts) {
  PredictorOptions options = Options(3, 8, 2);
  options.recency_decay = 0.5;
  std::unique_ptr<Predictor> recency = Make("recency", options);
  recency->BeginSequence(3);
  EXPECT_THAT(PredictAll(*recency, 3, 1), ::testing::Each(0.0f));

  const uint16_t token0[] = {2, 5}, other[] = {0, 1};
  recency->Observe(3, 0, other);
  recency->Observe(3, 1, token0);
  // After one token: the latest token's experts at 1 - decay.
  std::vector<float> probs = PredictAll(*recency, 3, 1);
  EXPECT_FLOAT_EQ(probs[2], 0.5f);
  EXPECT_FLOAT_EQ(probs[5], 0.5f);
  EXPECT_FLOAT_EQ(probs[0], 0.0f);
  for (int t = 0; t < 30; ++t) {
    recency->Observe(3, 0, other);
    recency->Observe(3, 1, token0);
  }
  probs = PredictAll(*recency, 3, 1);
  ExpectProbabilities(probs);
  EXPECT_NEAR(probs[2], 1.0f, 1e-6f);
  EXPECT_NEAR(probs[5], 1.0f, 1e-6f);
  EXPECT_EQ(probs[3], 0.0f);
  // Layer 2 never observed.
  EXPECT_THAT(PredictAll(*recency, 3, 2), ::testing::Each(0.0f));

  // A change of experts: the old ones halve per token.
  const uint16_t token1[] = {6, 7};
  recency->Observe(3, 1, token1);
  probs = PredictAll(*recency, 3, 1);
  EXPECT_NEAR(probs[2], 0.5f, 1e-6f);
  EXPECT_NEAR(probs[6], 0.5f, 1e-6f);

  // Other sequences are independent; an ended sequence forgets.
  EXPECT_THAT(PredictAll(*recency, 4, 1), ::testing::Each(0.0f));
  recency->EndSequence(3);
  EXPECT_THAT(PredictAll(*recency, 3, 1), ::testing::Each(0.0f));
  recency->BeginSequence(5);  // reuses the released state: must start clean
  EXPECT_THAT(PredictAll(*recency, 5, 1), ::testing::Each(0.0f));
  EXPECT_EQ(recency->Save(TempPath("recency")).code(), absl::StatusCode::kUnimplemented);
}

// ---- combined
// ------------------------------------------------------------------------------------

TEST(CombinedPredictorTest, FitsTransitionWeightOnChainAndStaysInRange) {
  const int32_t layers = 6, experts = 16;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(20, 30), ChainRouting(experts, 5));
  const RoutingTrace test =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(5, 10), ChainRouting(experts, 6));
  PredictorOptions options = Options(layers, experts, 2);
  CombinedPredictor combined(options);
  ASSERT_TRUE(combined.Learn(learn).ok());
  EXPECT_GE(combined.ahead_weights().transition, 0.5f);
  PredictorEvalOptions eval;
  eval.budget = 2;
  eval.max_distance = 4;
  absl::StatusOr<std::vector<DistanceScore>> scores = EvaluatePredictor(combined, test, eval);
  ASSERT_TRUE(scores.ok()) << scores.status();
  for (const DistanceScore& score : *scores) EXPECT_DOUBLE_EQ(score.recall, 1.0);

  combined.BeginSequence(0);
  const uint16_t chosen[] = {3, 4};
  combined.Observe(0, 0, chosen);
  for (int32_t l = 0; l < layers; ++l) ExpectProbabilities(PredictAll(combined, 0, l));
}

TEST(CombinedPredictorTest, FitsRecencyWeightForNextTokenOnRepeatingSequences) {
  // Every sequence keeps its own experts at every token (no layer structure, no global
  // favourite): only recency predicts the next token.
  const int32_t layers = 3, experts = 16;
  const RoutingFn repeating = [](int64_t s, int64_t, int32_t l) {
    const uint16_t a = static_cast<uint16_t>((s * 3 + l * 5) % 16);
    return std::vector<uint16_t>{a, static_cast<uint16_t>((a + 7) % 16)};
  };
  const RoutingTrace learn = MakeTrace(layers, experts, 2, std::vector<int64_t>(20, 12), repeating);
  CombinedPredictor combined(Options(layers, experts, 2));
  ASSERT_TRUE(combined.Learn(learn).ok());
  // Recency and the transition part's next-token tables both see the repetition; the layer
  // frequency alone cannot.
  EXPECT_GT(combined.next_token_weights().recency + combined.next_token_weights().transition, 0.5f);

  // After a token, the next token's experts are the top 2 at every layer.
  const RoutingTrace replay = MakeTrace(layers, experts, 2, {0, 0, 0, 0, 0, 0, 0, 5}, repeating);
  combined.BeginSequence(0);
  const TraceSequence& sequence = replay.sequences.back();
  for (int64_t t = sequence.token_offset; t < sequence.token_offset + sequence.num_tokens; ++t) {
    for (int32_t l = 0; l < layers; ++l) combined.Observe(0, l, replay.Experts(t, l));
    for (int32_t l = 0; l < layers; ++l) {
      const std::vector<ScoredExpert> top = TopExperts(PredictAll(combined, 0, l), 2);
      std::vector<uint16_t> predicted = {static_cast<uint16_t>(top[0].expert),
                                         static_cast<uint16_t>(top[1].expert)};
      std::vector<uint16_t> actual(replay.Experts(t, l).begin(), replay.Experts(t, l).end());
      std::sort(predicted.begin(), predicted.end());
      std::sort(actual.begin(), actual.end());
      EXPECT_EQ(predicted, actual) << "token " << t << " layer " << l;
    }
  }
}

TEST(CombinedPredictorTest, SetWeightsValidatesAndNormalizes) {
  CombinedPredictor combined(Options(3, 8, 2));
  EXPECT_FALSE(combined.SetWeights({-1, 1, 1}, {1, 1, 1}).ok());
  EXPECT_FALSE(combined.SetWeights({1, 1, 1}, {0, 0, 0}).ok());
  ASSERT_TRUE(combined.SetWeights({2, 1, 1}, {0, 0, 3}).ok());
  EXPECT_FLOAT_EQ(combined.ahead_weights().transition, 0.5f);
  EXPECT_FLOAT_EQ(combined.ahead_weights().recency, 0.25f);
  EXPECT_FLOAT_EQ(combined.next_token_weights().recency, 1.0f);
  // Next-token weights all on recency: a fresh sequence predicts zeros for the next token.
  combined.BeginSequence(1);
  const uint16_t chosen[] = {1, 2};
  combined.Observe(1, 2, chosen);
  const std::vector<float> probs = PredictAll(combined, 1, 2);
  EXPECT_FLOAT_EQ(probs[1], 0.5f);  // recency after one token, decay 0.5
  EXPECT_FLOAT_EQ(probs[0], 0.0f);
}

// ---- Save / Load
// ---------------------------------------------------------------------------------

// Learns `name` on a chain trace, saves it, loads it into a fresh predictor, and checks both
// predict identically over a replayed sequence.
void ExpectRoundTrip(std::string_view name) {
  SCOPED_TRACE(std::string(name));
  const int32_t layers = 5, experts = 12;
  const RoutingTrace learn =
      MakeTrace(layers, experts, 2, std::vector<int64_t>(12, 15), ChainRouting(experts, 7));
  const RoutingTrace replay = MakeTrace(layers, experts, 2, {6}, ChainRouting(experts, 8));
  const PredictorOptions options = Options(layers, experts, 2);
  std::unique_ptr<Predictor> original = Make(name, options);
  ASSERT_TRUE(original->Learn(learn).ok());
  const std::string path = TempPath(std::string(name) + ".safetensors");
  ASSERT_TRUE(original->Save(path).ok());
  std::unique_ptr<Predictor> loaded = Make(name, options);
  const absl::Status status = loaded->Load(path);
  ASSERT_TRUE(status.ok()) << status;
  std::filesystem::remove(path);

  original->BeginSequence(0);
  loaded->BeginSequence(0);
  for (int64_t t = 0; t < replay.num_tokens(); ++t) {
    for (int32_t l = 0; l < layers; ++l) {
      for (int32_t target = 0; target < layers; ++target) {
        ASSERT_EQ(PredictAll(*original, 0, target), PredictAll(*loaded, 0, target))
            << "token " << t << " layer " << l << " target " << target;
      }
      original->Observe(0, l, replay.Experts(t, l));
      loaded->Observe(0, l, replay.Experts(t, l));
    }
  }
}

TEST(PredictorFileTest, RoundTripPredictsIdentically) {
  ExpectRoundTrip("frequency");
  ExpectRoundTrip("transition");
  ExpectRoundTrip("combined");
}

TEST(PredictorFileTest, LoadMissingFileNamesIt) {
  const std::string path = TempPath("does_not_exist.safetensors");
  for (std::string_view name : {"frequency", "transition", "combined"}) {
    std::unique_ptr<Predictor> predictor = Make(name, Options(4, 8, 2));
    const absl::Status status = predictor->Load(path);
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << name << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(path));
  }
}

TEST(PredictorFileTest, LoadRejectsMismatchedShapeAndName) {
  const std::string path = TempPath("transition.safetensors");
  PredictorOptions options = Options(4, 8, 2);
  ASSERT_TRUE(TransitionPredictor(options).Save(path).ok());

  struct Case {
    std::string_view name;
    PredictorOptions options;
    std::vector<std::string> expected;  // substrings of the error
  };
  PredictorOptions more_layers = options, more_experts = options, farther = options;
  more_layers.space.num_layers = 6;
  more_experts.space.num_experts = 16;
  farther.max_distance = 2;
  const Case cases[] = {
      {"transition", more_layers, {"num_layers", "4", "6"}},
      {"transition", more_experts, {"num_experts", "8", "16"}},
      {"transition", farther, {"max_distance", "4", "2"}},
      {"combined", options, {"\"transition\"", "\"combined\""}},
      {"frequency", options, {"\"transition\"", "\"frequency\""}},
  };
  for (const Case& c : cases) {
    std::unique_ptr<Predictor> predictor = Make(c.name, c.options);
    const absl::Status status = predictor->Load(path);
    ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    const std::string message(status.message());
    EXPECT_THAT(message, HasSubstr(path));
    for (const std::string& part : c.expected) EXPECT_THAT(message, HasSubstr(part));
  }
  std::filesystem::remove(path);
}

TEST(PredictorFileTest, LoadRejectsCorruptFiles) {
  PredictorOptions options = Options(4, 8, 2);
  const std::string good = TempPath("good.safetensors");
  ASSERT_TRUE(TransitionPredictor(options).Save(good).ok());
  const uintmax_t size = std::filesystem::file_size(good);

  const std::string truncated = TempPath("truncated.safetensors");
  std::filesystem::copy_file(good, truncated, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(truncated, size - 100);
  const std::string garbage = TempPath("garbage.safetensors");
  {
    std::ofstream out(garbage, std::ios::binary);
    out << "this is not a safetensors file at all, just some text";
  }
  for (const std::string& path : {truncated, garbage}) {
    TransitionPredictor transition(options);
    const absl::Status status = transition.Load(path);
    EXPECT_FALSE(status.ok()) << path;
    EXPECT_THAT(std::string(status.message()), HasSubstr(path));
    std::filesystem::remove(path);
  }
  std::filesystem::remove(good);
}

// A transition file as written before the next-token tables: no "next_token",
// "next_temperature" or "previous_token_weight".
void WriteFileWithoutNextTokenTables(const PredictorOptions& options, const std::string& path) {
  const TransitionPredictor source(options);
  const int64_t d = options.max_distance + options.evidence_layers - 1;
  const int64_t layers = options.space.num_layers, experts = options.space.num_experts;
  SafetensorsWriter writer;
  SetPredictorMetadata("transition", options, writer);
  std::vector<float> table(d * layers * experts * experts);
  for (int64_t i = 0; i < static_cast<int64_t>(table.size()); ++i) {
    table[i] = source.Probability(static_cast<int32_t>(i / (layers * experts * experts)) + 1,
                                  static_cast<int32_t>(i / (experts * experts) % layers),
                                  static_cast<int32_t>(i / experts % experts),
                                  static_cast<int32_t>(i % experts));
  }
  ASSERT_TRUE(AddF32Tensor(writer, "transition", {d, layers, experts, experts}, table).ok());
  const std::span<const float> frequency = source.layer_frequency();
  ASSERT_TRUE(AddF32Tensor(writer, "frequency", {layers, experts}, frequency).ok());
  const float temperature[] = {2.0f};
  ASSERT_TRUE(AddF32Tensor(writer, "temperature", {1}, temperature).ok());
  ASSERT_TRUE(writer.Write(path).ok());
}

TEST(PredictorFileTest, LoadsFilesWrittenBeforeTheNextTokenTables) {
  PredictorOptions options = Options(4, 8, 2);
  const std::string path = TempPath("old_transition.safetensors");
  WriteFileWithoutNextTokenTables(options, path);
  TransitionPredictor transition(options);
  const absl::Status status = transition.Load(path);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_FALSE(transition.has_next_token_tables());
  EXPECT_EQ(transition.temperature(), 2.0f);
  // A passed layer is predicted by its frequency, as before the tables existed.
  transition.BeginSequence(0);
  transition.Observe(0, 0, std::vector<uint16_t>{1, 2});
  const std::vector<float> probs = PredictAll(transition, 0, 0);
  for (int32_t j = 0; j < 8; ++j) EXPECT_EQ(probs[j], transition.layer_frequency()[j]);
  // Saved again, it stays without them.
  ASSERT_TRUE(transition.Save(path).ok());
  TransitionPredictor reloaded(options);
  ASSERT_TRUE(reloaded.Load(path).ok());
  EXPECT_FALSE(reloaded.has_next_token_tables());
  std::filesystem::remove(path);
}

TEST(PredictorFileTest, LoadRejectsBadNextTokenTables) {
  PredictorOptions options = Options(4, 8, 2);
  const std::string path = TempPath("bad_next.safetensors");
  auto write = [&](float entry, float weight, float next_temperature = 2.0f) {
    const TransitionPredictor source(options);
    const std::string good = TempPath("good_next.safetensors");
    ASSERT_TRUE(source.Save(good).ok());
    auto file = SafetensorsFile::Open(good);
    ASSERT_TRUE(file.ok()) << file.status();
    SafetensorsWriter writer;
    SetPredictorMetadata("transition", options, writer);
    for (const std::string name : {"transition", "frequency", "temperature", "next_token",
                                   "next_temperature", "previous_token_weight"}) {
      const TensorInfo* info = (*file)->Find(name);
      ASSERT_NE(info, nullptr) << name;
      std::vector<float> values(info->num_elements());
      ASSERT_TRUE(ReadF32Tensor(**file, name, info->shape, values).ok());
      if (name == "next_token") values[37] = entry;
      if (name == "previous_token_weight") values[0] = weight;
      if (name == "next_temperature") values[0] = next_temperature;
      ASSERT_TRUE(AddF32Tensor(writer, name, info->shape, values).ok());
    }
    ASSERT_TRUE(writer.Write(path).ok());
    std::filesystem::remove(good);
  };
  for (float entry : {0.0f, 1.5f, std::nanf("")}) {
    write(entry, 0.5f);
    TransitionPredictor transition(options);
    const absl::Status status = transition.Load(path);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << entry;
    EXPECT_THAT(std::string(status.message()), HasSubstr("next_token[0][4] entry 5"));
    EXPECT_THAT(std::string(status.message()), HasSubstr(path));
  }
  write(0.5f, -1.0f);
  TransitionPredictor transition(options);
  const absl::Status status = transition.Load(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("previous_token_weight is -1"));
  write(0.5f, 0.5f, 0.0f);
  const absl::Status zero = TransitionPredictor(options).Load(path);
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(zero.message()), HasSubstr("next_temperature is 0"));
  std::filesystem::remove(path);
}

TEST(PredictorFileTest, AddSequencesAfterLoadFails) {
  PredictorOptions options = Options(4, 8, 2);
  const std::string path = TempPath("add.safetensors");
  ASSERT_TRUE(TransitionPredictor(options).Save(path).ok());
  TransitionPredictor transition(options);
  ASSERT_TRUE(transition.Load(path).ok());
  const RoutingTrace trace = MakeTrace(4, 8, 2, {3}, [](int64_t, int64_t, int32_t) {
    return std::vector<uint16_t>{0, 1};
  });
  const std::vector<int64_t> all = {0};
  EXPECT_EQ(transition.AddSequences(trace, all).code(), absl::StatusCode::kFailedPrecondition);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace moe
