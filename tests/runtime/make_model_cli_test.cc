// End-to-end tests of the moe-make-model executable: real processes, real files.
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"
#include "tests/common/run_tool.h"
#include "tests/common/temp_dirs.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

using testing_util::TempDirCleanup;

using testing_util::CommandResult;

CommandResult Exec(const std::string& args) {
  return testing_util::RunTool("moe-make-model " + args);
}

class MakeModelCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string root = ::testing::TempDir();
    if (!root.empty() && root.back() == '/') root.pop_back();
    dir_ = root + "/make_model_cli_XXXXXX";
    ASSERT_NE(::mkdtemp(dir_.data()), nullptr);
    TempDirCleanup::Dirs().push_back(dir_);
  }
  std::string dir_;
};

TEST_F(MakeModelCliTest, HelpListsTheFlags) {
  CommandResult r = Exec("--help");
  EXPECT_EQ(r.exit_code, 0) << r.errors;
  for (const char* flag : {"--out", "--preset", "--family", "--hidden", "--kv-heads", "--top-k",
                           "--shared-intermediate", "--dtype", "--shards", "--max-shard-size",
                           "--tokenizer", "--seed"}) {
    EXPECT_THAT(r.output, HasSubstr(flag));
  }
}

TEST_F(MakeModelCliTest, TinyModelIsWrittenAndReopens) {
  const std::string out = dir_ + "/tiny";
  CommandResult r = Exec("--out " + out + " --preset tiny --layers 2 --seed 5");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr(out));
  EXPECT_THAT(r.output, HasSubstr("expert 96.00 KiB (98304 bytes)"));  // 3 x 64 x 128 x 4

  auto config = ReadModelConfig(out);
  ASSERT_TRUE(config.ok()) << std::string(config.status().message());
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->num_experts, 8);
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_EQ(config->vocab_size, 1000);
  EXPECT_EQ(config->dtype, DType::kF32);
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << std::string(ckpt.status().message());
  auto weights = BindModelWeights(**ckpt, *config);
  ASSERT_TRUE(weights.ok()) << std::string(weights.status().message());
  EXPECT_EQ(weights->expert_bytes, 98304u);
  EXPECT_THAT(r.output, HasSubstr("total "));
  EXPECT_THAT(r.output, HasSubstr(std::to_string((*ckpt)->total_bytes()) + " bytes"));
}

TEST_F(MakeModelCliTest, FlagsOverrideThePreset) {
  const std::string out = dir_ + "/qwen";
  CommandResult r = Exec("--out " + out +
                         " --preset tiny --family qwen2_moe --hidden 32 --intermediate 16 "
                         "--layers 1 --experts 4 --dtype bf16 --shards 2 --tie-embeddings");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  auto config = ReadModelConfig(out);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->family, ModelFamily::kQwen2Moe);
  EXPECT_EQ(config->hidden_size, 32);
  EXPECT_EQ(config->intermediate_size, 16);
  EXPECT_EQ(config->shared_expert_intermediate_size, 32);  // default: 2 x --intermediate
  EXPECT_EQ(config->num_experts, 4);
  EXPECT_EQ(config->dtype, DType::kBF16);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(out + "/model-00002-of-00002.safetensors"));
}

TEST_F(MakeModelCliTest, BadValuesExitWithTwoAndOneMessage) {
  // Every case but one gets a valid --out, so the error is the flag's own.
  const std::pair<std::string, std::string> cases[] = {
      {"--dtype f64", "--dtype 'f64' is not f32, bf16 or f16"},
      {"--family llama", "--family 'llama' is not mixtral or qwen2_moe"},
      {"--preset huge", "--preset 'huge'"},
      {"--heads 5", "heads 5 does not divide hidden 64"},
      {"--top-k 9", "top_k 9 exceeds experts 8"},
      {"--shards 0", "--shards 0"},
      {"--hidden abc", "flag --hidden: 'abc' is not an integer"},
      {"--shards 2 --max-shard-size 1MB", "exclude each other"},
      {"--no-such-flag 1", "unknown flag --no-such-flag"},
      {"--tokenizer /nonexistent/missing.model", "--tokenizer /nonexistent/missing.model"},
      {"--shared-intermediate 64", "mixtral has no shared expert"},
  };
  for (const auto& [flags, needle] : cases) {
    std::string args = flags;
    args += " --out ";
    args += dir_;
    args += "/bad";
    CommandResult r = Exec(args);
    EXPECT_EQ(r.exit_code, 2) << args;
    EXPECT_THAT(r.errors, HasSubstr("moe-make-model: error: ")) << args;
    EXPECT_THAT(r.errors, HasSubstr(needle)) << args;
    EXPECT_EQ(std::count(r.errors.begin(), r.errors.end(), '\n'), 1) << r.errors;
  }
  EXPECT_FALSE(fs::exists(dir_ + "/bad/config.json"));

  CommandResult r = Exec("--preset tiny");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.errors, HasSubstr("--out DIR is required"));
}

// A minimal SentencePiece ModelProto: `n` pieces (field 1: {piece: string, score: float}) and a
// trainer spec (field 2).
std::string FakeSentencePiece(int n) {
  std::string proto;
  for (int i = 0; i < n; ++i) {
    std::string piece = std::to_string(i);
    piece += 'p';
    std::string sub;
    sub += '\x0A';
    sub += static_cast<char>(piece.size());
    sub += piece;
    sub += '\x15';
    sub.append(4, '\0');
    proto += '\x0A';
    proto += static_cast<char>(sub.size());
    proto += sub;
  }
  proto += "\x12\x02\x08\x01";
  return proto;
}

TEST_F(MakeModelCliTest, TokenizerIsCopiedAndSetsTheVocabulary) {
  const std::string spm = dir_ + "/spm.model";
  {
    std::ofstream f(spm, std::ios::binary);
    f << FakeSentencePiece(300);
  }
  const std::string out = dir_ + "/with_tok";
  CommandResult r = Exec("--out " + out + " --layers 1 --tokenizer " + spm);
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  auto config = ReadModelConfig(out);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->vocab_size, 300);
  std::ifstream a(spm, std::ios::binary), b(out + "/tokenizer.model", std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}),
            std::string(std::istreambuf_iterator<char>(b), {}));

  r = Exec("--out " + out + " --layers 1 --vocab 100 --tokenizer " + spm);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.errors, HasSubstr("--vocab 100 is smaller than the tokenizer's 300 pieces"));

  {
    std::ofstream f(spm, std::ios::binary | std::ios::trunc);
    f << "this is not a protobuf \xff\xff\xff";
  }
  r = Exec("--out " + out + " --layers 1 --tokenizer " + spm);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.errors, HasSubstr("not a SentencePiece model"));
}

}  // namespace
}  // namespace moe
