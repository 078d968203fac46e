// The engine against Hugging Face transformers: logits of prefill and of KV-cached decode steps,
// and every token's routing, for tiny models made by scripts/golden/make_golden.py (fp32 and
// bf16 Mixtral, sharded, sliding window, tied embeddings; Qwen2-MoE with a shared expert and
// q/k/v biases). The expert budget must never change a result: every case also runs with the
// smallest budget and with per-layer scope.
#include <cmath>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/float16.h"
#include "runtime/engine.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"
#include "tests/engine/golden_util.h"

namespace moe {
namespace {

std::string GoldenDir(const std::string& name) {
  return std::string(MOE_SOURCE_DIR) + "/tests/data/golden/" + name;
}

using testing_golden::Read;
using testing_golden::RelativeError;

struct GoldenCase {
  std::string model;
  double tolerance;
};

struct BudgetCase {
  const char* name;
  double fraction;  // of all expert bytes; 0: the smallest allowed (top_k experts)
  CacheScope scope;
};

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenTest, LogitsAndRoutingMatchTransformers) {
  const GoldenCase& gc = GetParam();
  auto model_or = Model::Load(GoldenDir(gc.model));
  ASSERT_TRUE(model_or.ok()) << model_or.status();
  std::shared_ptr<const Model> model = *model_or;
  auto golden_or = SafetensorsFile::Open(GoldenDir(gc.model) + "/golden.safetensors");
  ASSERT_TRUE(golden_or.ok()) << golden_or.status();
  const SafetensorsFile& golden = **golden_or;
  const ModelConfig& c = model->config;
  const uint64_t all = model->weights.expert_bytes * c.num_layers * c.num_experts;

  for (const BudgetCase& bc : {BudgetCase{"all experts", 1.0, CacheScope::kGlobal},
                               BudgetCase{"smallest global", 0.0, CacheScope::kGlobal},
                               BudgetCase{"smallest per layer", 0.0, CacheScope::kLayer},
                               BudgetCase{"half, lfu", 0.5, CacheScope::kGlobal}}) {
    SCOPED_TRACE(bc.name);
    EngineOptions options;
    options.scope = bc.scope;
    const uint64_t smallest =
        model->weights.expert_bytes * c.top_k * (bc.scope == CacheScope::kLayer ? c.num_layers : 1);
    options.expert_budget_bytes = bc.fraction == 0 ? smallest : uint64_t(all * bc.fraction);
    if (std::string(bc.name).find("lfu") != std::string::npos) options.policy = "lfu";
    options.prefill_chunk = 4;  // several prefill steps per prompt
    options.num_threads = 2;
    auto engine_or = Engine::Create(model, options);
    ASSERT_TRUE(engine_or.ok()) << engine_or.status();
    Engine& engine = **engine_or;

    for (int p = 0; p < 3; ++p) {
      SCOPED_TRACE("prompt " + std::to_string(p));
      const auto prompt = Read<int32_t>(golden, fmt::format("prompt_ids_{}", p));
      const auto prefill = Read<float>(golden, fmt::format("prefill_logits_{}", p));
      const auto decode_ids = Read<int32_t>(golden, fmt::format("decode_ids_{}", p));
      const auto decode = Read<float>(golden, fmt::format("decode_logits_{}", p));
      const auto router = Read<int32_t>(golden, fmt::format("router_ids_{}", p));
      const size_t V = static_cast<size_t>(c.vocab_size);
      ASSERT_EQ(prefill.size(), prompt.size() * V);

      ASSERT_TRUE(engine.ResetSequence(0).ok());
      engine.StartTrace();
      std::vector<float> logits(prompt.size() * V);
      const SequenceTokens entry{0, prompt};
      ASSERT_TRUE(engine.Evaluate({&entry, 1}, true, logits).ok());
      EXPECT_LE(RelativeError(logits, prefill), gc.tolerance);
      for (size_t s = 0; s < decode_ids.size(); ++s) {
        std::vector<float> step_logits(V);
        const SequenceTokens one{0, {&decode_ids[s], 1}};
        ASSERT_TRUE(engine.Evaluate({&one, 1}, false, step_logits).ok());
        EXPECT_LE(RelativeError(step_logits, {decode.data() + s * V, V}), gc.tolerance)
            << "decode step " << s;
      }
      auto trace = engine.StopTrace();
      ASSERT_TRUE(trace.ok()) << trace.status();
      ASSERT_EQ(trace->num_tokens(), static_cast<int64_t>(prompt.size() + decode_ids.size()));
      ASSERT_EQ(trace->experts.size(), router.size());
      for (size_t i = 0; i < router.size(); ++i) {
        ASSERT_EQ(trace->experts[i], router[i]) << "routing differs at flat index " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GoldenTest,
                         ::testing::Values(GoldenCase{"mixtral-tiny-f32", 1e-4},
                                           GoldenCase{"mixtral-tiny-bf16", 1e-4},
                                           GoldenCase{"qwen2moe-tiny-f32", 1e-4}),
                         [](const auto& info) {
                           std::string name = info.param.model;
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace moe
