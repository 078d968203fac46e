// Behaviour check of the predictors on the real DeepSeek-V2-Lite routing trace (26 MoE layers,
// 64 experts, top-6; ../shared/data, skipped where absent). Tables are learned on some sequences
// and scored on others (held out): every 5th sequence is held out.
//
// By default the test learns on 400 sequences and evaluates on 100 (a few seconds in Release).
// With MOE_PREDICTOR_FULL_EVAL=1 it learns on all ~80% and evaluates on all ~20% held out, and
// prints the recall table (budget 12, d = 1..4, every predictor) that docs quote:
//   MOE_PREDICTOR_FULL_EVAL=1 build/bin/predictor_test --gtest_filter='*DeepSeek*'
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "fmt/format.h"
#include "predictor/combined_predictor.h"
#include "predictor/predictor.h"
#include "predictor/predictor_eval.h"
#include "predictor/trace_io.h"
#include "predictor/transition_predictor.h"

namespace moe {
namespace {

const std::string kTraceDir =
    MOE_SOURCE_DIR "/../shared/data/routing-traces/deepseek-v2-lite-puffin";

bool FullEval() {
  const char* value = std::getenv("MOE_PREDICTOR_FULL_EVAL");
  return value != nullptr && std::string(value) == "1";
}

TEST(PredictorDeepSeekTest, HeldOutRecallAtBudget12) {
  if (!std::filesystem::exists(kTraceDir + "/experts_u8.bin")) {
    GTEST_SKIP() << "no real trace at " << kTraceDir;
  }
  absl::StatusOr<RoutingTrace> trace = ImportDenseTrace(kTraceDir);
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->header.num_layers, 26);
  ASSERT_EQ(trace->header.num_experts, 64);
  ASSERT_EQ(trace->header.top_k, 6);

  const bool full = FullEval();
  const size_t max_learn = full ? SIZE_MAX : 400;
  const size_t max_eval = full ? SIZE_MAX : 100;
  std::vector<int64_t> learn_ids, eval_ids;
  for (size_t i = 0; i < trace->sequences.size(); ++i) {
    if (i % 5 == 4) {
      if (eval_ids.size() < max_eval) eval_ids.push_back(static_cast<int64_t>(i));
    } else if (learn_ids.size() < max_learn) {
      learn_ids.push_back(static_cast<int64_t>(i));
    }
  }
  const RoutingTrace learn = trace->Subset(learn_ids);
  const RoutingTrace held_out = trace->Subset(eval_ids);

  PredictorOptions options;
  options.space = trace->space();
  options.top_k = trace->header.top_k;
  options.max_distance = 4;
  PredictorEvalOptions eval;
  eval.budget = 12;
  eval.max_distance = full ? 4 : 1;

  fmt::print("learned on {} sequences ({} tokens), evaluated on {} held out ({} tokens)\n",
             learn.sequences.size(), learn.num_tokens(), held_out.sequences.size(),
             held_out.num_tokens());
  fmt::print("recall@12 (precision@12)   d=1              d=2              d=3              d=4\n");
  for (std::string_view name : PredictorNames()) {
    if (!full && name != "transition" && name != "combined") continue;
    absl::StatusOr<std::unique_ptr<Predictor>> predictor = MakePredictor(name, options);
    ASSERT_TRUE(predictor.ok()) << predictor.status();
    ASSERT_TRUE((*predictor)->Learn(learn).ok());
    absl::StatusOr<std::vector<DistanceScore>> scores =
        EvaluatePredictor(**predictor, held_out, eval);
    ASSERT_TRUE(scores.ok()) << scores.status();
    ASSERT_EQ(scores->size(), static_cast<size_t>(eval.max_distance));
    std::string line = fmt::format("{:<26}", name);
    for (const DistanceScore& s : *scores) {
      line += fmt::format(" {:.4f} ({:.4f})  ", s.recall, s.precision);
    }
    fmt::print("{}\n", line);
    if (const auto* transition = dynamic_cast<const TransitionPredictor*>(predictor->get())) {
      fmt::print("  fitted temperature {}\n", transition->temperature());
    }
    if (const auto* combined = dynamic_cast<const CombinedPredictor*>(predictor->get())) {
      const MixtureWeights& a = combined->ahead_weights();
      const MixtureWeights& n = combined->next_token_weights();
      fmt::print(
          "  fitted weights (transition, frequency, recency): ahead ({}, {}, {}), next token "
          "({}, {}, {}); temperature {}\n",
          a.transition, a.frequency, a.recency, n.transition, n.frequency, n.recency,
          combined->transition().temperature());
    }
    if (name == "transition" || name == "combined") {
      EXPECT_GE((*scores)[0].recall, 0.70) << name << " one layer ahead";
    }
  }
}

}  // namespace
}  // namespace moe
