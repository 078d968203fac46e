#include "runtime/model_config.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// Mixtral-8x7B-v0.1's config.json, verbatim.
constexpr const char* kMixtral8x7B = R"({
  "architectures": ["MixtralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mixtral",
  "num_attention_heads": 32,
  "num_experts_per_tok": 2,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "num_local_experts": 8,
  "output_router_logits": false,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.02,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

// Qwen1.5-MoE-A2.7B's config.json, verbatim.
constexpr const char* kQwen15MoE = R"({
  "architectures": ["Qwen2MoeForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 5632,
  "max_position_embeddings": 8192,
  "max_window_layers": 21,
  "model_type": "qwen2_moe",
  "moe_intermediate_size": 1408,
  "norm_topk_prob": false,
  "num_attention_heads": 16,
  "num_experts": 60,
  "num_experts_per_tok": 4,
  "num_hidden_layers": 24,
  "num_key_value_heads": 16,
  "output_router_logits": false,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001,
  "shared_expert_intermediate_size": 5632,
  "sliding_window": 32768,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// The smallest Mixtral config: only the required fields.
Json MinimalMixtral() {
  return Json{{"architectures", {"MixtralForCausalLM"}},
              {"hidden_size", 64},
              {"intermediate_size", 128},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_local_experts", 8},
              {"num_experts_per_tok", 2},
              {"vocab_size", 100}};
}

// Directories made by this file's tests, removed when the test program ends.
class TempDirCleanup : public ::testing::Environment {
 public:
  static std::vector<std::string>& Dirs() {
    static std::vector<std::string> dirs;
    return dirs;
  }
  void TearDown() override {
    for (const std::string& dir : Dirs()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
};
::testing::Environment* const kTempDirCleanup =
    ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

absl::StatusOr<ModelConfig> Parse(const Json& j) { return ParseModelConfig(j.dump(), "cfg.json"); }

TEST(ModelConfigTest, ParsesMixtral8x7B) {
  auto c = ParseModelConfig(kMixtral8x7B, "config.json");
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->family, ModelFamily::kMixtral);
  EXPECT_EQ(c->architecture, "MixtralForCausalLM");
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->top_k, 2);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->shared_expert_intermediate_size, 0);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(c->ExpertBytes(DType::kBF16), 3ull * 4096 * 14336 * 2);
}

TEST(ModelConfigTest, ParsesQwen15MoE) {
  auto c = ParseModelConfig(kQwen15MoE, "config.json");
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->family, ModelFamily::kQwen2Moe);
  EXPECT_EQ(c->architecture, "Qwen2MoeForCausalLM");
  EXPECT_EQ(c->intermediate_size, 1408);  // moe_intermediate_size, not intermediate_size
  EXPECT_EQ(c->num_experts, 60);
  EXPECT_EQ(c->top_k, 4);
  EXPECT_EQ(c->shared_expert_intermediate_size, 5632);
  EXPECT_FALSE(c->norm_topk_prob);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_EQ(c->sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->bos_token_id, 151643);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151643));
}

TEST(ModelConfigTest, DefaultsFollowTransformers) {
  auto c = Parse(MinimalMixtral());
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->num_kv_heads, 4);  // = num_attention_heads
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->max_position_embeddings, 4096 * 32);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());

  Json q = MinimalMixtral();
  q["architectures"] = {"Qwen2MoeForCausalLM"};
  q.erase("intermediate_size");
  q.erase("num_local_experts");
  q["moe_intermediate_size"] = 32;
  q["num_experts"] = 4;
  q["shared_expert_intermediate_size"] = 0;
  auto qc = Parse(q);
  ASSERT_TRUE(qc.ok()) << Message(qc.status());
  EXPECT_DOUBLE_EQ(qc->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(qc->rope_theta, 10000.0);
  EXPECT_EQ(qc->max_position_embeddings, 32768);
  EXPECT_FALSE(qc->norm_topk_prob);
  EXPECT_TRUE(qc->attention_bias);
  EXPECT_EQ(qc->shared_expert_intermediate_size, 0);
}

TEST(ModelConfigTest, OptionalFields) {
  Json j = MinimalMixtral();
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 32;  // independent of hidden_size / heads
  j["sliding_window"] = 4096;
  j["tie_word_embeddings"] = true;
  j["torch_dtype"] = "float16";
  j["eos_token_id"] = {2, 7, 9};
  j["bos_token_id"] = 1;
  j["rms_norm_eps"] = 1e-6;
  j["rope_theta"] = 500000;  // an integer is a valid number
  j["max_position_embeddings"] = 2048;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->dtype, DType::kF16);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2, 7, 9));
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000);
  EXPECT_EQ(c->max_position_embeddings, 2048);

  j["head_dim"] = nullptr;  // transformers writes null when derived
  j["torch_dtype"] = "float32";
  auto d = Parse(j);
  ASSERT_TRUE(d.ok()) << Message(d.status());
  EXPECT_EQ(d->head_dim, 16);
  EXPECT_EQ(d->dtype, DType::kF32);
}

TEST(ModelConfigTest, TransformersFiveSpellings) {
  Json j = MinimalMixtral();
  j["dtype"] = "float16";
  j["rope_parameters"] = {{"rope_theta", 250000.0}, {"rope_type", "default"}};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->dtype, DType::kF16);
  EXPECT_DOUBLE_EQ(c->rope_theta, 250000.0);
}

TEST(ModelConfigTest, ModelTypeAloneSelectsTheFamily) {
  Json j = MinimalMixtral();
  j.erase("architectures");
  j["model_type"] = "mixtral";
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->family, ModelFamily::kMixtral);
  EXPECT_EQ(c->architecture, "mixtral");
  EXPECT_EQ(ModelFamilyName(ModelFamily::kMixtral), "mixtral");
  EXPECT_EQ(ModelFamilyName(ModelFamily::kQwen2Moe), "qwen2_moe");
}

TEST(ModelConfigTest, QwenSlidingWindowOnlyWhenEnabled) {
  Json j = Json::parse(kQwen15MoE);
  j["use_sliding_window"] = true;
  j["sliding_window"] = 4096;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->sliding_window, 4096);

  j["layer_types"] = std::vector<std::string>(24, "full_attention");
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << Message(c.status());
  EXPECT_EQ(c->sliding_window, 0);

  j["layer_types"][3] = "sliding_attention";
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(c.status()), HasSubstr("layer_types"));
}

TEST(ModelConfigTest, QwenDenseLayersAreUnimplemented) {
  Json j = Json::parse(kQwen15MoE);
  j["decoder_sparse_step"] = 2;
  auto c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(c.status()), StartsWith("cfg.json: decoder_sparse_step 2"));

  j = Json::parse(kQwen15MoE);
  j["mlp_only_layers"] = {0, 5};
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(c.status()), HasSubstr("mlp_only_layers [0,5]"));

  j = Json::parse(kQwen15MoE);
  j["decoder_sparse_step"] = 0;
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, UnsupportedArchitecture) {
  Json j = MinimalMixtral();
  j["architectures"] = {"LlamaForCausalLM"};
  auto c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(c.status()), HasSubstr("cfg.json: architectures \"LlamaForCausalLM\""));
  EXPECT_THAT(Message(c.status()), HasSubstr("not supported"));

  j.erase("architectures");
  j["model_type"] = "llama";
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("model_type \"llama\""));

  j.erase("model_type");
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("neither architectures nor model_type"));

  j = MinimalMixtral();
  j["model_type"] = "qwen2_moe";
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("contradicts architectures"));
}

TEST(ModelConfigTest, UnsupportedMathIsUnimplemented) {
  Json j = MinimalMixtral();
  j["hidden_act"] = "gelu";
  auto c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(c.status()), HasSubstr("hidden_act \"gelu\""));

  j = MinimalMixtral();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(c.status()), HasSubstr("rope_scaling"));
}

struct BadCase {
  const char* field;
  Json value;  // null: erase the field
  const char* message;
};

TEST(ModelConfigTest, EveryContradictionNamesTheField) {
  const BadCase cases[] = {
      {"num_attention_heads", 5, "cfg.json: num_attention_heads 5 does not divide hidden_size 64"},
      {"num_key_value_heads", 3,
       "cfg.json: num_key_value_heads 3 does not divide "
       "num_attention_heads 4"},
      {"num_experts_per_tok", 9, "cfg.json: num_experts_per_tok 9 exceeds num_local_experts 8"},
      {"num_experts_per_tok", 0, "cfg.json: num_experts_per_tok 0 must be positive"},
      {"num_local_experts", 70000, "cfg.json: num_local_experts 70000 exceeds the limit 65535"},
      {"hidden_size", 0, "cfg.json: hidden_size 0 must be positive"},
      {"hidden_size", -64, "cfg.json: hidden_size -64 must be positive"},
      {"hidden_size", int64_t{1} << 40, "cfg.json: hidden_size 1099511627776 exceeds the limit"},
      {"hidden_size", nullptr, "cfg.json: hidden_size is missing"},
      {"hidden_size", "64", "cfg.json: hidden_size \"64\" is a string, expected an integer"},
      {"hidden_size", 64.5, "cfg.json: hidden_size 64.5 is a fraction, expected an integer"},
      {"hidden_size", 18446744073709551615ull,
       "cfg.json: hidden_size 18446744073709551615 is "
       "too large"},
      {"intermediate_size", 0, "cfg.json: intermediate_size 0 must be positive"},
      {"num_hidden_layers", 0, "cfg.json: num_hidden_layers 0 must be positive"},
      {"vocab_size", nullptr, "cfg.json: vocab_size is missing"},
      {"head_dim", 7, "cfg.json: head_dim 7 must be even"},
      {"num_attention_heads", 64,
       "cfg.json: head_dim 1 (hidden_size 64 / num_attention_heads "
       "64) must be even"},
      {"rope_theta", 0, "cfg.json: rope_theta 0 must be positive"},
      {"rope_theta", "big", "cfg.json: rope_theta \"big\" is a string, expected a number"},
      {"rms_norm_eps", -1e-5, "cfg.json: rms_norm_eps -1e-05 must be positive"},
      {"sliding_window", -1, "cfg.json: sliding_window -1 must be non-negative"},
      {"tie_word_embeddings", "yes",
       "cfg.json: tie_word_embeddings \"yes\" is a string, "
       "expected true or false"},
      {"torch_dtype", "float64", "cfg.json: torch_dtype \"float64\" is not supported"},
      {"torch_dtype", 16, "cfg.json: torch_dtype 16 is a number, expected a string"},
      {"eos_token_id", Json::array({2, "x"}), "cfg.json: eos_token_id \"x\" is a string"},
      {"eos_token_id", "2",
       "cfg.json: eos_token_id \"2\" is a string, expected an integer or "
       "a list"},
      {"eos_token_id", 100, "cfg.json: eos_token_id 100 is outside the vocabulary [0, 100)"},
      {"bos_token_id", -5, "cfg.json: bos_token_id -5 is outside the vocabulary"},
      {"architectures", "MixtralForCausalLM",
       "cfg.json: architectures \"MixtralForCausalLM\" "
       "is a string, expected a list of strings"},
      {"max_position_embeddings", 0, "cfg.json: max_position_embeddings 0 must be positive"},
      {"head_dim", 1 << 23, "cfg.json: num_attention_heads 4 x head_dim 8388608 exceeds the limit"},
  };
  for (const BadCase& bad : cases) {
    Json j = MinimalMixtral();
    if (bad.value.is_null()) {
      j.erase(bad.field);
    } else {
      j[bad.field] = bad.value;
    }
    auto c = Parse(j);
    ASSERT_FALSE(c.ok()) << bad.field << " = " << bad.value.dump();
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << Message(c.status());
    EXPECT_THAT(Message(c.status()), HasSubstr(bad.message));
  }
}

TEST(ModelConfigTest, QwenFieldNamesAppearInMessages) {
  Json j = Json::parse(kQwen15MoE);
  j["num_experts_per_tok"] = 61;
  auto c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("num_experts_per_tok 61 exceeds num_experts 60"));
  j = Json::parse(kQwen15MoE);
  j.erase("moe_intermediate_size");
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("moe_intermediate_size is missing"));
  j = Json::parse(kQwen15MoE);
  j["shared_expert_intermediate_size"] = -1;
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("shared_expert_intermediate_size -1 must be "
                                             "non-negative"));
  j = Json::parse(kQwen15MoE);
  j["norm_topk_prob"] = 1;
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(Message(c.status()), HasSubstr("norm_topk_prob 1 is a number"));
}

TEST(ModelConfigTest, MalformedJson) {
  for (const char* text :
       {"", "{", "[1, 2]", "\"mixtral\"", "{\"hidden_size\": 64,}", "null", "{\"a\": NaN}"}) {
    auto c = ParseModelConfig(text, "cfg.json");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(c.status()), StartsWith("cfg.json: ")) << text;
  }
}

TEST(ModelConfigTest, ReadModelConfigNamesTheFile) {
  std::string root = ::testing::TempDir();
  if (!root.empty() && root.back() == '/') root.pop_back();
  std::string dir = root + "/model_config_test_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  TempDirCleanup::Dirs().push_back(dir);

  auto missing = ReadModelConfig(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()), HasSubstr(dir + "/config.json"));

  {
    std::ofstream out(dir + "/config.json");
    out << kMixtral8x7B;
  }
  auto ok = ReadModelConfig(dir);
  ASSERT_TRUE(ok.ok()) << Message(ok.status());
  EXPECT_EQ(ok->num_experts, 8);

  {
    Json j = MinimalMixtral();
    j["num_attention_heads"] = 5;
    std::ofstream out(dir + "/config.json", std::ios::trunc);
    out << j.dump(2);
  }
  auto bad = ReadModelConfig(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(Message(bad.status()),
              HasSubstr(dir + "/config.json: num_attention_heads 5 does not divide hidden_size"));
}

}  // namespace
}  // namespace moe
