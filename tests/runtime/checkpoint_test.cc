// The malformed-checkpoint corpus: every way a checkpoint directory can be broken, generated
// here from a valid synthetic model, must give a non-OK status whose message names the file
// and (where one is involved) the tensor.
#include "runtime/checkpoint.h"
#include "tests/common/temp_dirs.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/logging.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"
#include "runtime/model_writer.h"
#include "runtime/status.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
namespace fs = std::filesystem;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

using testing_util::TempDirCleanup;

std::string MakeTempDir(const std::string& tag) {
  std::string root = ::testing::TempDir();
  if (!root.empty() && root.back() == '/') root.pop_back();
  std::string tmpl = root + "/checkpoint_test_" + tag + "_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  TempDirCleanup::Dirs().push_back(tmpl);
  return tmpl;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from an explicit header; the header is padded to 8 bytes.
std::string RawSafetensors(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  const uint64_t len = header.size();
  std::memcpy(bytes.data(), &len, 8);
  return bytes + header + data;
}

// Reads, opens and binds, as the engine will.
absl::Status LoadModel(const std::string& dir) {
  MOE_ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(dir));
  MOE_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  return BindModelWeights(*checkpoint, config).status();
}

struct Tensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};
using TensorMap = std::map<std::string, Tensor>;

constexpr const char* kExpert = "model.layers.1.block_sparse_moe.experts.2.w3.weight";

class CheckpointCorpusTest : public ::testing::Test {
 protected:
  // One valid model per suite (mixtral, f32: hidden 16, 2 layers, 4 experts), single file and
  // three shards; every test copies and breaks it.
  static void SetUpTestSuite() {
    SyntheticModelOptions o;
    o.vocab = 64;
    o.hidden = 16;
    o.intermediate = 32;
    o.layers = 2;
    o.heads = 2;
    o.kv_heads = 1;
    o.experts = 4;
    o.max_position = 128;
    single_ = new std::string(MakeTempDir("single"));
    sharded_ = new std::string(MakeTempDir("sharded"));
    ASSERT_TRUE(WriteSyntheticModel(o, *single_).ok());
    o.shards = 3;
    ASSERT_TRUE(WriteSyntheticModel(o, *sharded_).ok());
  }
  static void TearDownTestSuite() {
    delete single_;
    delete sharded_;
  }

  void SetUp() override { dir_ = MakeTempDir("case"); }

  // A copy of the valid single-file model.
  std::string CopySingle() {
    fs::copy(*single_, dir_, fs::copy_options::overwrite_existing | fs::copy_options::recursive);
    return dir_;
  }
  std::string CopySharded() {
    fs::copy(*sharded_, dir_, fs::copy_options::overwrite_existing | fs::copy_options::recursive);
    return dir_;
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  static TensorMap Tensors(const std::string& dir) {
    TensorMap out;
    auto ckpt = Checkpoint::Open(dir);
    EXPECT_TRUE(ckpt.ok()) << Message(ckpt.status());
    if (!ckpt.ok()) return out;
    for (const std::string& name : (*ckpt)->TensorNames()) {
      const CheckpointTensor* t = (*ckpt)->Find(name);
      out[name] = {t->info->dtype, t->info->shape, {t->data.begin(), t->data.end()}};
    }
    return out;
  }
  // The config of the valid model plus `tensors` as model.safetensors.
  std::string WriteModel(const TensorMap& tensors) {
    fs::copy_file(*single_ + "/config.json", Path("config.json"),
                  fs::copy_options::overwrite_existing);
    SafetensorsWriter writer;
    for (const auto& [name, t] : tensors) {
      EXPECT_TRUE(writer.AddTensor(name, t.dtype, t.shape, t.data).ok()) << name;
    }
    EXPECT_TRUE(writer.Write(Path("model.safetensors")).ok());
    return dir_;
  }

  // Loading `dir` fails with `code` and a message containing every needle.
  void ExpectLoadFails(const std::string& dir, absl::StatusCode code,
                       const std::vector<std::string>& needles) {
    absl::Status st = LoadModel(dir);
    ASSERT_FALSE(st.ok()) << "expected: " << ::testing::PrintToString(needles);
    EXPECT_EQ(st.code(), code) << Message(st);
    for (const std::string& needle : needles) EXPECT_THAT(Message(st), HasSubstr(needle));
  }

  Json ReadIndex() { return Json::parse(ReadFile(Path("model.safetensors.index.json"))); }
  void WriteIndex(const Json& j) { WriteFile(Path("model.safetensors.index.json"), j.dump(2)); }

  static std::string* single_;
  static std::string* sharded_;
  std::string dir_;
};

std::string* CheckpointCorpusTest::single_ = nullptr;
std::string* CheckpointCorpusTest::sharded_ = nullptr;

TEST_F(CheckpointCorpusTest, ValidModelsLoad) {
  EXPECT_TRUE(LoadModel(*single_).ok());
  EXPECT_TRUE(LoadModel(*sharded_).ok());
}

// ---- the safetensors container ---------------------------------------------------------------

TEST_F(CheckpointCorpusTest, TruncatedFile) {
  CopySingle();
  const std::string bytes = ReadFile(Path("model.safetensors"));
  WriteFile(Path("model.safetensors"), bytes.substr(0, bytes.size() / 2));
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors"), "tensor model.", "outside the"});
  WriteFile(Path("model.safetensors"), bytes.substr(0, 5));
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss, {Path("model.safetensors"), "too short"});
}

TEST_F(CheckpointCorpusTest, HeaderLengthPastTheEnd) {
  CopySingle();
  std::string bytes = ReadFile(Path("model.safetensors"));
  const uint64_t len = bytes.size();
  std::memcpy(bytes.data(), &len, 8);
  WriteFile(Path("model.safetensors"), bytes);
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors"), "runs past the end"});
}

TEST_F(CheckpointCorpusTest, InvalidJsonHeader) {
  CopySingle();
  std::string bytes = ReadFile(Path("model.safetensors"));
  bytes[8 + 1] = '#';  // {#... where a key must start
  WriteFile(Path("model.safetensors"), bytes);
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss, {Path("model.safetensors"), "not valid JSON"});
}

TEST_F(CheckpointCorpusTest, OverlappingOffsets) {
  CopySingle();
  WriteFile(Path("model.safetensors"),
            RawSafetensors(R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],)"
                           R"("data_offsets":[0,16]},"model.norm.weight":{"dtype":"F32",)"
                           R"("shape":[2],"data_offsets":[8,16]}})",
                           std::string(16, '\0')));
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors"), "tensor model.norm.weight", "overlaps"});
}

TEST_F(CheckpointCorpusTest, OffsetsOutsideTheData) {
  CopySingle();
  WriteFile(Path("model.safetensors"),
            RawSafetensors(R"({"model.norm.weight":{"dtype":"F32","shape":[16],)"
                           R"("data_offsets":[0,64]}})",
                           std::string(16, '\0')));
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors"), "tensor model.norm.weight", "outside the"});
}

TEST_F(CheckpointCorpusTest, DtypeShapeSizeMismatch) {
  CopySingle();
  WriteFile(Path("model.safetensors"),
            RawSafetensors(R"({"model.norm.weight":{"dtype":"BF16","shape":[16],)"
                           R"("data_offsets":[0,64]}})",
                           std::string(64, '\0')));
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors"), "tensor model.norm.weight", "needs 32"});
}

TEST_F(CheckpointCorpusTest, MisalignedTensorData) {
  CopySingle();
  // Valid for the container (gaps are allowed) but an F32 tensor starting at byte 2.
  const uint64_t bytes = 64 * 16 * 4;
  WriteFile(Path("model.safetensors"),
            RawSafetensors(R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[64,16],)"
                           R"("data_offsets":[2,)" +
                               std::to_string(2 + bytes) + "]}}",
                           std::string(2 + bytes, '\0')));
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("model.safetensors"), "tensor model.embed_tokens.weight", "not aligned"});
}

// ---- tensors against the config ---------------------------------------------------------------

TEST_F(CheckpointCorpusTest, WrongShape) {
  TensorMap t = Tensors(*single_);
  const std::string name = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
  t[name].shape = {32, 16};  // transposed: [I, H] instead of [H, I]
  WriteModel(t);
  ExpectLoadFails(
      dir_, absl::StatusCode::kInvalidArgument,
      {Path("model.safetensors") + ": tensor " + name + ": shape [32, 16], expected [16, 32]"});
}

TEST_F(CheckpointCorpusTest, WrongDtype) {
  TensorMap t = Tensors(*single_);
  t["model.norm.weight"].dtype = DType::kI32;
  WriteModel(t);
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("model.safetensors"), "tensor model.norm.weight",
                   "dtype I32, expected F32, BF16 or F16"});
}

TEST_F(CheckpointCorpusTest, MissingExpertTensor) {
  TensorMap t = Tensors(*single_);
  t.erase(kExpert);
  WriteModel(t);
  ExpectLoadFails(dir_, absl::StatusCode::kNotFound,
                  {Path("model.safetensors"), std::string("no tensor ") + kExpert});
}

TEST_F(CheckpointCorpusTest, MissingLmHead) {
  TensorMap t = Tensors(*single_);
  t.erase("lm_head.weight");
  WriteModel(t);
  ExpectLoadFails(dir_, absl::StatusCode::kNotFound,
                  {Path("model.safetensors"), "no tensor lm_head.weight"});
}

TEST_F(CheckpointCorpusTest, ExtraExpertIsAWrongExpertCount) {
  TensorMap t = Tensors(*single_);
  t["model.layers.0.block_sparse_moe.experts.4.w1.weight"] =
      t["model.layers.0.block_sparse_moe.experts.0.w1.weight"];
  WriteModel(t);
  ExpectLoadFails(
      dir_, absl::StatusCode::kInvalidArgument,
      {Path("model.safetensors"), "tensor model.layers.0.block_sparse_moe.experts.4.w1.weight",
       "wrong expert count"});
}

TEST_F(CheckpointCorpusTest, ExtraLayerIsAWrongLayerCount) {
  TensorMap t = Tensors(*single_);
  t["model.layers.2.input_layernorm.weight"] = t["model.layers.0.input_layernorm.weight"];
  WriteModel(t);
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("model.safetensors"), "tensor model.layers.2.input_layernorm.weight",
                   "wrong layer count"});
}

TEST_F(CheckpointCorpusTest, MixedExpertDtypes) {
  TensorMap t = Tensors(*single_);
  Tensor& e = t[kExpert];
  e.dtype = DType::kBF16;
  e.data.resize(e.data.size() / 2);
  WriteModel(t);
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("model.safetensors"), std::string("tensor ") + kExpert, "dtype BF16",
                   "all routed experts must share one dtype"});
}

TEST_F(CheckpointCorpusTest, UnusedTensorsAreOnlyAWarning) {
  TensorMap t = Tensors(*single_);
  t["model.layers.0.self_attn.rotary_emb.inv_freq"] = t["model.norm.weight"];
  WriteModel(t);
  std::vector<std::string> warnings;
  SetLogSink([&warnings](LogLevel level, std::string_view m) {
    if (level == LogLevel::kWarning) warnings.emplace_back(m);
  });
  absl::Status st = LoadModel(dir_);
  SetLogSink({});
  EXPECT_TRUE(st.ok()) << Message(st);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("rotary_emb.inv_freq"));
}

// ---- config.json -----------------------------------------------------------------------------

TEST_F(CheckpointCorpusTest, ConfigContradictions) {
  CopySingle();
  Json config = Json::parse(ReadFile(Path("config.json")));
  config["num_attention_heads"] = 3;
  WriteFile(Path("config.json"), config.dump(2));
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("config.json") + ": num_attention_heads 3 does not divide hidden_size 16"});

  // Consistent on its own, but not with the checkpoint.
  config = Json::parse(ReadFile(*single_ + "/config.json"));
  config["num_local_experts"] = 3;
  WriteFile(Path("config.json"), config.dump(2));
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("model.safetensors"), "experts.3.", "wrong expert count"});

  config = Json::parse(ReadFile(*single_ + "/config.json"));
  config["hidden_size"] = 32;
  WriteFile(Path("config.json"), config.dump(2));
  ExpectLoadFails(dir_, absl::StatusCode::kInvalidArgument,
                  {Path("model.safetensors"),
                   "tensor model.embed_tokens.weight: shape [64, 16], expected [64, 32]"});

  config = Json::parse(ReadFile(*single_ + "/config.json"));
  config["tie_word_embeddings"] = true;  // fine: lm_head is then unused
  WriteFile(Path("config.json"), config.dump(2));
  EXPECT_TRUE(LoadModel(dir_).ok());
}

TEST_F(CheckpointCorpusTest, ConfigMissing) {
  CopySingle();
  fs::remove(Path("config.json"));
  ExpectLoadFails(dir_, absl::StatusCode::kNotFound, {Path("config.json")});
}

TEST_F(CheckpointCorpusTest, WeightsMissing) {
  CopySingle();
  fs::remove(Path("model.safetensors"));
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(ckpt.status()), HasSubstr(dir_));
  EXPECT_THAT(Message(ckpt.status()), HasSubstr("model.safetensors"));

  auto none = Checkpoint::Open(dir_ + "/nowhere");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(none.status()), HasSubstr(dir_ + "/nowhere does not exist"));
}

// ---- the shard index -------------------------------------------------------------------------

TEST_F(CheckpointCorpusTest, IndexNamesAMissingShard) {
  CopySharded();
  fs::remove(Path("model-00002-of-00003.safetensors"));
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors.index.json"), "shard model-00002-of-00003.safetensors",
                   "does not exist"});
}

TEST_F(CheckpointCorpusTest, IndexMapsATensorToTheWrongShard) {
  CopySharded();
  Json index = ReadIndex();
  ASSERT_EQ(index["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00003.safetensors");
  index["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00003.safetensors";
  WriteIndex(index);
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors.index.json"), "tensor model.embed_tokens.weight",
                   "maps to shard model-00002-of-00003.safetensors, but it is stored in " +
                       Path("model-00001-of-00003.safetensors")});
}

TEST_F(CheckpointCorpusTest, IndexMapsATensorNoShardHolds) {
  CopySharded();
  Json index = ReadIndex();
  index["weight_map"]["model.layers.0.extra.weight"] = "model-00001-of-00003.safetensors";
  WriteIndex(index);
  ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                  {Path("model.safetensors.index.json"), "tensor model.layers.0.extra.weight",
                   "has no such tensor"});
}

TEST_F(CheckpointCorpusTest, ShardNamesMustStayInTheDirectory) {
  for (const char* evil :
       {"../model-00001-of-00003.safetensors", "/etc/passwd", "sub/x", "..", ""}) {
    CopySharded();
    Json index = ReadIndex();
    index["weight_map"]["model.norm.weight"] = evil;
    WriteIndex(index);
    ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                    {Path("model.safetensors.index.json"), "tensor model.norm.weight",
                     "not a plain file name"});
  }
}

TEST_F(CheckpointCorpusTest, MalformedIndexJson) {
  const std::pair<std::string, std::string> cases[] = {
      {"{\"weight_map\": {", "not valid JSON"},
      {"[]", "expected an object"},
      {"{\"metadata\": {}}", "\"weight_map\" is missing"},
      {"{\"weight_map\": []}", "\"weight_map\" is array"},
      {"{\"weight_map\": {}}", "weight_map is empty"},
      {"{\"weight_map\": {\"model.norm.weight\": 3}}",
       "entry for tensor model.norm.weight is a number"},
  };
  for (const auto& [text, needle] : cases) {
    CopySharded();
    WriteFile(Path("model.safetensors.index.json"), text);
    ExpectLoadFails(dir_, absl::StatusCode::kDataLoss,
                    {Path("model.safetensors.index.json"), needle});
  }
}

TEST_F(CheckpointCorpusTest, TensorInTwoFiles) {
  CopySharded();
  // Rewrite shard 2 with one extra tensor that shard 1 already holds.
  TensorMap all = Tensors(*sharded_);
  Json index = ReadIndex();
  SafetensorsWriter writer;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (shard != "model-00002-of-00003.safetensors") continue;
    const Tensor& t = all[name];
    ASSERT_TRUE(writer.AddTensor(name, t.dtype, t.shape, t.data).ok());
  }
  const Tensor& dup = all["model.embed_tokens.weight"];
  ASSERT_TRUE(writer.AddTensor("model.embed_tokens.weight", dup.dtype, dup.shape, dup.data).ok());
  ASSERT_TRUE(writer.Write(Path("model-00002-of-00003.safetensors")).ok());
  ExpectLoadFails(
      dir_, absl::StatusCode::kDataLoss,
      {"tensor model.embed_tokens.weight is also in", Path("model-00001-of-00003.safetensors"),
       Path("model-00002-of-00003.safetensors")});
}

TEST_F(CheckpointCorpusTest, UnlistedShardTensorIsAWarning) {
  CopySharded();
  Json index = ReadIndex();
  index["weight_map"].erase("model.norm.weight");
  WriteIndex(index);
  std::vector<std::string> warnings;
  SetLogSink([&warnings](LogLevel level, std::string_view m) {
    if (level == LogLevel::kWarning) warnings.emplace_back(m);
  });
  auto ckpt = Checkpoint::Open(dir_);
  SetLogSink({});
  ASSERT_TRUE(ckpt.ok()) << Message(ckpt.status());
  EXPECT_NE((*ckpt)->Find("model.norm.weight"), nullptr);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("model.norm.weight"));
  EXPECT_THAT(warnings[0], HasSubstr("not in weight_map"));
}

TEST_F(CheckpointCorpusTest, SingleFileWinsOverAnIndex) {
  CopySharded();
  fs::copy_file(*single_ + "/model.safetensors", Path("model.safetensors"));
  WriteFile(Path("model.safetensors.index.json"), "garbage");
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << Message(ckpt.status());
  EXPECT_EQ((*ckpt)->files().size(), 1u);
}

// ---- the lookup API ----------------------------------------------------------------------------

TEST_F(CheckpointCorpusTest, FindAndExpect) {
  auto ckpt = Checkpoint::Open(*sharded_);
  ASSERT_TRUE(ckpt.ok());
  const Checkpoint& c = **ckpt;
  EXPECT_EQ(c.dir(), *sharded_);
  const std::vector<std::string> names = c.TensorNames();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.size(), 1 + 2 * (2 + 4 + 1 + 4 * 3) + 1 + 1u);
  EXPECT_EQ(c.Find("no.such.tensor"), nullptr);

  const int64_t good[] = {64, 16}, bad[] = {16, 64};
  auto ok = c.Expect("model.embed_tokens.weight", good);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->data.size(), 64u * 16 * 4);
  EXPECT_EQ(ok->file->path(), *sharded_ + "/model-00001-of-00003.safetensors");

  auto wrong = c.Expect("model.embed_tokens.weight", bad);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(wrong.status()),
              HasSubstr("model-00001-of-00003.safetensors: tensor model.embed_tokens.weight: "
                        "shape [64, 16], expected [16, 64]"));

  auto missing = c.Expect("no.such.tensor", good);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()),
              HasSubstr(*sharded_ + "/model.safetensors.index.json: no tensor no.such.tensor"));
}

}  // namespace
}  // namespace moe
