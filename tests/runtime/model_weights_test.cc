// Round trips: WriteSyntheticModel -> ReadModelConfig + Checkpoint::Open -> BindModelWeights,
// for both families, every dtype, single-file and sharded, tied and untied.
#include "runtime/model_weights.h"
#include "tests/common/temp_dirs.h"

#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint.h"
#include "runtime/model_config.h"
#include "runtime/model_writer.h"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;
namespace fs = std::filesystem;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

using testing_util::TempDirCleanup;

std::string MakeTempDir() {
  std::string root = ::testing::TempDir();
  if (!root.empty() && root.back() == '/') root.pop_back();
  std::string tmpl = root + "/model_weights_test_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  TempDirCleanup::Dirs().push_back(tmpl);
  return tmpl;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

float F16ToFloat(uint16_t h) {
  const int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const float sign = (h & 0x8000) ? -1.0f : 1.0f;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  if (exp == 31) return mant ? NAN : sign * INFINITY;
  return sign * std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
}

float ValueAt(const WeightView& w, int64_t i) {
  const std::byte* p = w.data + static_cast<size_t>(i) * DTypeSize(w.dtype);
  if (w.dtype == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (w.dtype == DType::kF16) return F16ToFloat(h);
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A small model: fast to write, but every dimension distinct so a transposed shape shows up.
SyntheticModelOptions SmallOptions(ModelFamily family, DType dtype) {
  SyntheticModelOptions o;
  o.family = family;
  o.vocab = 64;
  o.hidden = 32;
  o.intermediate = 48;
  o.layers = 2;
  o.heads = 4;
  o.kv_heads = 2;
  o.experts = 4;
  o.top_k = 2;
  o.shared_expert_intermediate = family == ModelFamily::kQwen2Moe ? 40 : 0;
  o.max_position = 256;
  o.dtype = dtype;
  o.seed = 11;
  return o;
}

struct Loaded {
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
  ModelWeights weights;
};

absl::StatusOr<Loaded> Load(const std::string& dir) {
  Loaded l;
  auto config = ReadModelConfig(dir);
  if (!config.ok()) return config.status();
  l.config = *config;
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();
  l.checkpoint = std::move(*ckpt);
  auto weights = BindModelWeights(*l.checkpoint, l.config);
  if (!weights.ok()) return weights.status();
  l.weights = std::move(*weights);
  return l;
}

struct RoundTripCase {
  ModelFamily family;
  DType dtype;
  int shards;
  bool tie;
};

std::string CaseName(const ::testing::TestParamInfo<RoundTripCase>& info) {
  const RoundTripCase& c = info.param;
  return std::string(ModelFamilyName(c.family)) + "_" + std::string(DTypeName(c.dtype)) + "_" +
         std::to_string(c.shards) + (c.tie ? "_tied" : "");
}

class RoundTripTest : public ::testing::TestWithParam<RoundTripCase> {
 protected:
  // Checks that `view` is exactly the checkpoint tensor `name`, and that the bytes behind it
  // are the bytes of that tensor in its file (read independently of the mapping).
  void ExpectView(const Loaded& l, const WeightView& view, const std::string& name, int64_t rows,
                  int64_t cols) {
    SCOPED_TRACE(name);
    const CheckpointTensor* t = l.checkpoint->Find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(view.data, t->data.data());
    EXPECT_EQ(view.rows, rows);
    EXPECT_EQ(view.cols, cols);
    EXPECT_EQ(view.dtype, GetParam().dtype);
    ASSERT_EQ(view.num_bytes(), t->data.size());
    std::string& bytes = file_bytes_[t->file->path()];
    if (bytes.empty()) bytes = ReadFile(t->file->path());
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    const uint64_t at = 8 + header_len + t->info->begin;
    ASSERT_LE(at + view.num_bytes(), bytes.size());
    EXPECT_EQ(std::memcmp(bytes.data() + at, view.data, view.num_bytes()), 0);
    ++checked_;
  }
  std::map<std::string, std::string> file_bytes_;
  size_t checked_ = 0;
};

TEST_P(RoundTripTest, WritesLoadsAndBindsEveryTensor) {
  const RoundTripCase& c = GetParam();
  SyntheticModelOptions o = SmallOptions(c.family, c.dtype);
  o.shards = c.shards;
  o.tie_embeddings = c.tie;
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());

  std::vector<std::array<uint64_t, 3>> progress;
  auto ckpt = Checkpoint::Open(dir, [&progress](int done, int total, uint64_t bytes) {
    progress.push_back({static_cast<uint64_t>(done), static_cast<uint64_t>(total), bytes});
  });
  ASSERT_TRUE(ckpt.ok()) << Message(ckpt.status());
  ASSERT_EQ(progress.size(), static_cast<size_t>(c.shards));
  for (size_t i = 0; i < progress.size(); ++i) {
    EXPECT_EQ(progress[i][0], i + 1);
    EXPECT_EQ(progress[i][1], static_cast<uint64_t>(c.shards));
    if (i > 0) {
      EXPECT_GT(progress[i][2], progress[i - 1][2]);
    }
  }
  EXPECT_EQ(progress.back()[2], (*ckpt)->total_bytes());
  EXPECT_EQ((*ckpt)->files().size(), static_cast<size_t>(c.shards));
  EXPECT_EQ(fs::exists(dir + "/model.safetensors.index.json"), c.shards > 1);
  EXPECT_EQ(fs::exists(dir + "/model.safetensors"), c.shards == 1);

  auto loaded = Load(dir);
  ASSERT_TRUE(loaded.ok()) << Message(loaded.status());
  const Loaded& l = *loaded;
  const ModelConfig& cfg = l.config;
  EXPECT_EQ(cfg.family, c.family);
  EXPECT_EQ(cfg.dtype, c.dtype);
  EXPECT_EQ(cfg.vocab_size, 64);
  EXPECT_EQ(cfg.hidden_size, 32);
  EXPECT_EQ(cfg.intermediate_size, 48);
  EXPECT_EQ(cfg.num_layers, 2);
  EXPECT_EQ(cfg.num_heads, 4);
  EXPECT_EQ(cfg.num_kv_heads, 2);
  EXPECT_EQ(cfg.head_dim, 8);
  EXPECT_EQ(cfg.num_experts, 4);
  EXPECT_EQ(cfg.top_k, 2);
  EXPECT_EQ(cfg.tie_word_embeddings, c.tie);
  const bool qwen = c.family == ModelFamily::kQwen2Moe;
  EXPECT_EQ(cfg.attention_bias, qwen);
  EXPECT_EQ(cfg.shared_expert_intermediate_size, qwen ? 40 : 0);

  const ModelWeights& w = l.weights;
  const TensorNaming& n = TensorNamingFor(c.family);
  ExpectView(l, w.embed, "model.embed_tokens.weight", 64, 32);
  ExpectView(l, w.final_norm, "model.norm.weight", 1, 32);
  if (c.tie) {
    EXPECT_EQ(l.checkpoint->Find("lm_head.weight"), nullptr);
    EXPECT_EQ(w.lm_head.data, w.embed.data);
    EXPECT_EQ(w.lm_head.rows, 64);
  } else {
    ExpectView(l, w.lm_head, "lm_head.weight", 64, 32);
  }
  ASSERT_EQ(w.layers.size(), 2u);
  for (int64_t layer = 0; layer < 2; ++layer) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(layer)];
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    ExpectView(l, lw.input_norm, p + "input_layernorm.weight", 1, 32);
    ExpectView(l, lw.post_attention_norm, p + "post_attention_layernorm.weight", 1, 32);
    ExpectView(l, lw.q, p + "self_attn.q_proj.weight", 32, 32);
    ExpectView(l, lw.k, p + "self_attn.k_proj.weight", 16, 32);
    ExpectView(l, lw.v, p + "self_attn.v_proj.weight", 16, 32);
    ExpectView(l, lw.o, p + "self_attn.o_proj.weight", 32, 32);
    ASSERT_EQ(lw.experts.size(), 4u);
    if (qwen) {
      ExpectView(l, lw.q_bias, p + "self_attn.q_proj.bias", 1, 32);
      ExpectView(l, lw.k_bias, p + "self_attn.k_proj.bias", 1, 16);
      ExpectView(l, lw.v_bias, p + "self_attn.v_proj.bias", 1, 16);
      ExpectView(l, lw.router, p + "mlp.gate.weight", 4, 32);
      for (int e = 0; e < 4; ++e) {
        const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
        ExpectView(l, lw.experts[e].gate, ep + "gate_proj.weight", 48, 32);
        ExpectView(l, lw.experts[e].up, ep + "up_proj.weight", 48, 32);
        ExpectView(l, lw.experts[e].down, ep + "down_proj.weight", 32, 48);
      }
      ExpectView(l, lw.shared_expert.gate, p + "mlp.shared_expert.gate_proj.weight", 40, 32);
      ExpectView(l, lw.shared_expert.up, p + "mlp.shared_expert.up_proj.weight", 40, 32);
      ExpectView(l, lw.shared_expert.down, p + "mlp.shared_expert.down_proj.weight", 32, 40);
      ExpectView(l, lw.shared_expert_gate, p + "mlp.shared_expert_gate.weight", 1, 32);
    } else {
      EXPECT_FALSE(lw.q_bias.present());
      EXPECT_FALSE(lw.shared_expert.gate.present());
      EXPECT_FALSE(lw.shared_expert_gate.present());
      ExpectView(l, lw.router, p + "block_sparse_moe.gate.weight", 4, 32);
      for (int e = 0; e < 4; ++e) {
        const std::string ep = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        ExpectView(l, lw.experts[e].gate, ep + "w1.weight", 48, 32);
        ExpectView(l, lw.experts[e].up, ep + "w3.weight", 48, 32);
        ExpectView(l, lw.experts[e].down, ep + "w2.weight", 32, 48);
      }
    }
    // The naming table produces the same names.
    EXPECT_EQ(
        ExpandTensorName(n.expert_down, layer, 3),
        qwen ? p + "mlp.experts.3.down_proj.weight" : p + "block_sparse_moe.experts.3.w2.weight");
  }
  // Every tensor of the checkpoint was bound (and checked above).
  EXPECT_EQ(checked_, l.checkpoint->TensorNames().size());

  const uint64_t elem = DTypeSize(c.dtype);
  EXPECT_EQ(w.expert_dtype, c.dtype);
  EXPECT_EQ(w.expert_bytes, 3u * 32 * 48 * elem);
  EXPECT_EQ(w.non_expert_bytes + 2 * 4 * w.expert_bytes, l.checkpoint->total_bytes());

  // Norm weights are around 1, linear weights small and not all equal.
  for (int64_t i = 0; i < 32; ++i) {
    EXPECT_NEAR(ValueAt(w.final_norm, i), 1.0f, 0.11f);
    EXPECT_LT(std::fabs(ValueAt(w.layers[0].experts[1].gate, i)), 1.0f / std::sqrt(32.0f) + 1e-3);
  }
  EXPECT_NE(ValueAt(w.layers[0].q, 0), ValueAt(w.layers[0].q, 1));
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, RoundTripTest,
    ::testing::Values(RoundTripCase{ModelFamily::kMixtral, DType::kF32, 1, false},
                      RoundTripCase{ModelFamily::kMixtral, DType::kBF16, 3, false},
                      RoundTripCase{ModelFamily::kMixtral, DType::kF16, 1, true},
                      RoundTripCase{ModelFamily::kQwen2Moe, DType::kF32, 2, true},
                      RoundTripCase{ModelFamily::kQwen2Moe, DType::kBF16, 1, false},
                      RoundTripCase{ModelFamily::kQwen2Moe, DType::kF16, 4, false}),
    CaseName);

TEST(ModelWriterTest, SameSeedSameBytesOtherSeedOtherBytes) {
  SyntheticModelOptions o = SmallOptions(ModelFamily::kMixtral, DType::kBF16);
  const std::string a = MakeTempDir(), b = MakeTempDir(), c = MakeTempDir();
  ASSERT_TRUE(WriteSyntheticModel(o, a).ok());
  ASSERT_TRUE(WriteSyntheticModel(o, b).ok());
  o.seed = 12;
  ASSERT_TRUE(WriteSyntheticModel(o, c).ok());
  EXPECT_EQ(ReadFile(a + "/model.safetensors"), ReadFile(b + "/model.safetensors"));
  EXPECT_NE(ReadFile(a + "/model.safetensors"), ReadFile(c + "/model.safetensors"));
  EXPECT_EQ(ReadFile(a + "/config.json"), ReadFile(c + "/config.json"));
}

TEST(ModelWriterTest, TensorValuesDoNotDependOnSharding) {
  SyntheticModelOptions o = SmallOptions(ModelFamily::kQwen2Moe, DType::kF16);
  const std::string one = MakeTempDir(), three = MakeTempDir();
  ASSERT_TRUE(WriteSyntheticModel(o, one).ok());
  o.shards = 3;
  ASSERT_TRUE(WriteSyntheticModel(o, three).ok());
  auto a = Checkpoint::Open(one);
  auto b = Checkpoint::Open(three);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->TensorNames(), (*b)->TensorNames());
  for (const std::string& name : (*a)->TensorNames()) {
    const auto da = (*a)->Find(name)->data, db = (*b)->Find(name)->data;
    ASSERT_EQ(da.size(), db.size()) << name;
    EXPECT_EQ(std::memcmp(da.data(), db.data(), da.size()), 0) << name;
  }
}

// The streaming writer must lay files out exactly as SafetensorsWriter (and so the reference
// safetensors writer) does.
TEST(ModelWriterTest, LayoutMatchesSafetensorsWriter) {
  const SyntheticModelOptions o = SmallOptions(ModelFamily::kMixtral, DType::kF32);
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  for (const std::string& name : (*ckpt)->TensorNames()) {
    const CheckpointTensor* t = (*ckpt)->Find(name);
    ASSERT_TRUE(writer.AddTensor(name, t->info->dtype, t->info->shape, t->data).ok());
  }
  ASSERT_TRUE(writer.Write(dir + "/copy.safetensors").ok());
  EXPECT_EQ(ReadFile(dir + "/model.safetensors"), ReadFile(dir + "/copy.safetensors"));
  EXPECT_EQ((*ckpt)->files()[0]->metadata().at("format"), "pt");
}

TEST(ModelWriterTest, MaxShardBytesPicksTheShardCount) {
  SyntheticModelOptions o = SmallOptions(ModelFamily::kMixtral, DType::kF32);
  auto total = SyntheticModelBytes(o);
  ASSERT_TRUE(total.ok());
  o.max_shard_bytes = *total / 3;
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << Message(ckpt.status());
  EXPECT_GE((*ckpt)->files().size(), 3u);
  EXPECT_LE((*ckpt)->files().size(), 5u);
  EXPECT_EQ((*ckpt)->total_bytes(), *total);
  for (const auto& f : (*ckpt)->files()) {
    uint64_t bytes = 0;
    for (const TensorInfo& t : f->tensors()) bytes += t.num_bytes();
    EXPECT_LE(bytes, o.max_shard_bytes) << f->path();
  }
  auto index = Json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), *total);
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"],
            fmt::format("model-00001-of-{:05d}.safetensors", (*ckpt)->files().size()));
}

TEST(ModelWriterTest, RewritingWithTheOtherLayoutReplacesTheOldOne) {
  SyntheticModelOptions o = SmallOptions(ModelFamily::kMixtral, DType::kBF16);
  const std::string dir = MakeTempDir();
  o.shards = 2;
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());
  o.shards = 1;
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  o.shards = 2;
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  auto l = Load(dir);
  ASSERT_TRUE(l.ok()) << Message(l.status());
  EXPECT_EQ(l->checkpoint->files().size(), 2u);
}

TEST(ModelWriterTest, ConfigJsonHasTheFamilysFields) {
  SyntheticModelOptions o = SmallOptions(ModelFamily::kMixtral, DType::kBF16);
  o.sliding_window = 128;
  auto text = SyntheticModelConfigJson(o);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->back(), '\n');
  EXPECT_THAT(*text, HasSubstr("\n  \"architectures\": [\n    \"MixtralForCausalLM\"\n  ],"));
  Json j = Json::parse(*text);
  EXPECT_EQ(j["model_type"], "mixtral");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["num_local_experts"], 4);
  EXPECT_EQ(j["intermediate_size"], 48);
  EXPECT_EQ(j["sliding_window"], 128);
  EXPECT_EQ(j["rms_norm_eps"], 1e-5);
  EXPECT_FALSE(j.contains("num_experts"));

  o = SmallOptions(ModelFamily::kQwen2Moe, DType::kF16);
  text = SyntheticModelConfigJson(o);
  ASSERT_TRUE(text.ok());
  j = Json::parse(*text);
  EXPECT_EQ(j["architectures"], Json::array({"Qwen2MoeForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen2_moe");
  EXPECT_EQ(j["torch_dtype"], "float16");
  EXPECT_EQ(j["moe_intermediate_size"], 48);
  EXPECT_EQ(j["num_experts"], 4);
  EXPECT_EQ(j["shared_expert_intermediate_size"], 40);
  EXPECT_EQ(j["decoder_sparse_step"], 1);
  EXPECT_EQ(j["mlp_only_layers"], Json::array());
  EXPECT_EQ(j["use_sliding_window"], false);
  EXPECT_EQ(j["norm_topk_prob"], false);
  EXPECT_FALSE(j.contains("num_local_experts"));
}

TEST(ModelWriterTest, RejectsContradictoryOptions) {
  struct Bad {
    std::function<void(SyntheticModelOptions*)> edit;
    const char* message;
  };
  const Bad cases[] = {
      {[](SyntheticModelOptions* o) { o->heads = 5; }, "heads 5 does not divide hidden 32"},
      {[](SyntheticModelOptions* o) { o->kv_heads = 3; }, "kv_heads 3 does not divide heads 4"},
      {[](SyntheticModelOptions* o) { o->top_k = 5; }, "top_k 5 exceeds experts 4"},
      {[](SyntheticModelOptions* o) { o->hidden = 0; }, "hidden 0 must be positive"},
      {[](SyntheticModelOptions* o) { o->dtype = DType::kI32; }, "dtype I32"},
      {[](SyntheticModelOptions* o) { o->shards = 0; }, "shards 0"},
      {[](SyntheticModelOptions* o) { o->shards = 10000; }, "shards 10000 exceeds the model's"},
      {[](SyntheticModelOptions* o) { o->shared_expert_intermediate = 8; }, "no shared expert"},
      {[](SyntheticModelOptions* o) { o->heads = 32; }, "head dimension 1 (hidden 32 / heads 32)"},
      {[](SyntheticModelOptions* o) { o->vocab = int64_t{1} << 30; }, "vocab_size 1073741824"},
  };
  for (const Bad& bad : cases) {
    SyntheticModelOptions o = SmallOptions(ModelFamily::kMixtral, DType::kF32);
    bad.edit(&o);
    const std::string dir = MakeTempDir();
    absl::Status st = WriteSyntheticModel(o, dir);
    ASSERT_FALSE(st.ok()) << bad.message;
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(st), HasSubstr(bad.message));
    EXPECT_FALSE(fs::exists(dir + "/config.json"));
  }
}

// The router is built so routing is peaky (a token strongly prefers its top experts) and
// skewed (some experts are popular), like a trained MoE: layer-0 routing of the embeddings.
TEST(ModelWriterTest, RoutingIsPeakyAndSkewed) {
  SyntheticModelOptions o;  // the tiny preset: f32, 8 experts, top-2, hidden 64, vocab 1000
  const std::string dir = MakeTempDir();
  ASSERT_TRUE(WriteSyntheticModel(o, dir).ok());
  auto l = Load(dir);
  ASSERT_TRUE(l.ok()) << Message(l.status());
  const ModelWeights& w = l->weights;
  const int64_t hidden = 64, experts = 8;
  for (const LayerWeights& layer : w.layers) {
    std::vector<int> counts(experts, 0);
    double top1 = 0;
    for (int64_t t = 0; t < 1000; ++t) {
      std::vector<float> x(hidden);
      double ss = 0;
      for (int64_t i = 0; i < hidden; ++i) {
        x[i] = ValueAt(w.embed, t * hidden + i);
        ss += x[i] * x[i];
      }
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / hidden) + 1e-5f);
      for (int64_t i = 0; i < hidden; ++i) x[i] *= inv * ValueAt(layer.post_attention_norm, i);
      std::vector<double> p(experts);
      double max_logit = -1e30, sum = 0;
      for (int64_t e = 0; e < experts; ++e) {
        double logit = 0;
        for (int64_t i = 0; i < hidden; ++i) logit += x[i] * ValueAt(layer.router, e * hidden + i);
        p[e] = logit;
        max_logit = std::max(max_logit, logit);
      }
      for (double& v : p) sum += (v = std::exp(v - max_logit));
      int best = 0, second = -1;
      for (int e = 1; e < experts; ++e) {
        if (p[e] > p[best]) best = e;
      }
      for (int e = 0; e < experts; ++e) {
        if (e != best && (second < 0 || p[e] > p[second])) second = e;
      }
      ++counts[best];
      ++counts[second];
      top1 += p[best] / sum;
    }
    const double mean = 2000.0 / experts;
    EXPECT_GT(top1 / 1000, 0.45) << "routing is not peaky";  // uniform: 0.125
    EXPECT_GT(*std::max_element(counts.begin(), counts.end()), 1.5 * mean);
    EXPECT_LT(*std::min_element(counts.begin(), counts.end()), 0.5 * mean);
  }
}

TEST(TensorNamingTest, ExpandsPlaceholders) {
  EXPECT_EQ(ExpandTensorName(TensorNamingFor(ModelFamily::kMixtral).expert_gate, 3, 7),
            "model.layers.3.block_sparse_moe.experts.7.w1.weight");
  EXPECT_EQ(ExpandTensorName(TensorNamingFor(ModelFamily::kQwen2Moe).shared_expert_gate, 12),
            "model.layers.12.mlp.shared_expert_gate.weight");
  EXPECT_TRUE(TensorNamingFor(ModelFamily::kMixtral).shared_gate.empty());
  EXPECT_EQ(ExpandTensorName("x.{expert}.{layer}.{layer}", 1, 20), "x.20.1.1");
}

}  // namespace
}  // namespace moe
