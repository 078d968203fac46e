// moe-run as users run it: a real process over the C API. Generation with a budget, the trace it
// records replayed by moe-replay to the same hit rate, and every kind of bad input giving one
// clear error line and exit status 2.
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/safetensors.h"
#include "tests/common/run_tool.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
using testing_util::CommandResult;
using testing_util::RunTool;
namespace fs = std::filesystem;

const std::string kGolden = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/";

class MoeRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("moe_run_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // A writable copy of a golden model.
  std::string CopyModel(const std::string& name) {
    const fs::path to = dir_ / name;
    fs::copy(kGolden + name, to, fs::copy_options::recursive);
    return to.string();
  }
  void ExpectOneErrorLine(const CommandResult& r, const std::string& needle,
                          const std::string& program = "moe-run") {
    EXPECT_EQ(r.exit_code, 2) << r.errors;
    EXPECT_THAT(r.errors, HasSubstr(program + ": error: "));
    EXPECT_THAT(r.errors, HasSubstr(needle));
    EXPECT_EQ(std::count(r.errors.begin(), r.errors.end(), '\n'), 1) << r.errors;
  }
  fs::path dir_;
};

TEST_F(MoeRunTest, HelpListsTheFlags) {
  const CommandResult r = RunTool("moe-run --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--model", "--prompt", "--max-tokens", "--expert-budget", "--policy",
                           "--trace-out", "--temperature", "--top-p"}) {
    EXPECT_THAT(r.output, HasSubstr(flag));
  }
}

TEST_F(MoeRunTest, GeneratesUnderABudgetAndItsTraceReplaysToTheSameHitRate) {
  const std::string trace = (dir_ / "run.moetrace").string();
  const CommandResult r =
      RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt 'The licence grants' " +
              "--max-tokens 12 --no-eos --expert-budget 25% --policy lfu --trace-out " + trace);
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr("The licence grants"));
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.errors, m, std::regex("hit rate ([0-9.]+)"))) << r.errors;
  const std::string live_hit_rate = m[1];
  EXPECT_THAT(r.errors, HasSubstr("decode          11 tokens"));
  EXPECT_THAT(r.errors, HasSubstr("8 slots"));
  ASSERT_TRUE(std::regex_search(r.errors, m, std::regex("replay: (moe-replay [^)]*)")));
  const CommandResult replay = RunTool(std::string(m[1]) + " --json");
  ASSERT_EQ(replay.exit_code, 0) << replay.errors;
  const auto j = nlohmann::json::parse(replay.output);
  EXPECT_EQ(fmt::format("{:.4f}", j["hit_rate"].get<double>()), live_hit_rate);
}

TEST_F(MoeRunTest, PrefetchingRunsReplayToTheSameHitRateAndPrefetchCounts) {
  const std::string trace = (dir_ / "prefetch.moetrace").string();
  const CommandResult r =
      RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt 'The licence grants' " +
              "--max-tokens 12 --no-eos --expert-budget 25% --predictor frequency " +
              "--prefetch-depth 2 --trace-out " + trace);
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.errors, m, std::regex("hit rate ([0-9.]+)"))) << r.errors;
  const std::string live_hit_rate = m[1];
  ASSERT_TRUE(std::regex_search(r.errors, m, std::regex("prefetch +([0-9]+) loads"))) << r.errors;
  const int live_prefetches = std::stoi(m[1]);
  EXPECT_GT(live_prefetches, 0);
  EXPECT_THAT(r.errors, HasSubstr("one-layer-ahead recall"));
  ASSERT_TRUE(std::regex_search(r.errors, m, std::regex("replay: (moe-replay [^)]*)")));
  EXPECT_THAT(std::string(m[1]), HasSubstr("--predictor frequency --prefetch-depth 2"));
  const CommandResult replay = RunTool(std::string(m[1]) + " --json");
  ASSERT_EQ(replay.exit_code, 0) << replay.errors;
  const auto j = nlohmann::json::parse(replay.output);
  EXPECT_EQ(fmt::format("{:.4f}", j["hit_rate"].get<double>()), live_hit_rate);
  EXPECT_EQ(j["prefetches"].get<int>(), live_prefetches);

  // The gate predictor cannot be replayed from ids: the summary says so.
  const CommandResult gate = RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 " +
                                     "--prompt-ids 5,6,7 --max-tokens 4 --expert-budget 25% " +
                                     "--predictor gate --trace-out " + trace);
  ASSERT_EQ(gate.exit_code, 0) << gate.errors;
  EXPECT_THAT(gate.errors, HasSubstr("gate predictor reads hidden states"));
  ExpectOneErrorLine(RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt-ids 5 " +
                             "--predictor psychic"),
                     "psychic");
}

TEST_F(MoeRunTest, PromptFileRunsEachLineAsItsOwnRequest) {
  const std::string prompts = (dir_ / "prompts.txt").string();
  const std::string trace = (dir_ / "prompts.moetrace").string();
  {
    std::ofstream out(prompts);
    out << "The licence grants\n\n   \nYou may copy\nNo warranty\n";
  }
  const CommandResult r = RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt-file " +
                                  prompts + " --max-tokens 4 --no-eos --trace-out " + trace);
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr("The licence grants"));
  EXPECT_THAT(r.output, HasSubstr("No warranty"));
  EXPECT_THAT(r.errors, HasSubstr("decode          9 tokens"));  // 3 requests x 3
  const CommandResult info = RunTool("moe-trace --in " + trace + " --info");
  ASSERT_EQ(info.exit_code, 0) << info.errors;
  EXPECT_THAT(info.output, HasSubstr("sequences            3"));

  ExpectOneErrorLine(RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt-file " +
                             (dir_ / "missing.txt").string()),
                     "missing.txt");
  const std::string blank = (dir_ / "blank.txt").string();
  {
    std::ofstream out(blank);
    out << "\n   \n";
  }
  ExpectOneErrorLine(
      RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt-file " + blank),
      "no prompts");
  ExpectOneErrorLine(RunTool("moe-run --model " + kGolden + "mixtral-tiny-f32 --prompt hi " +
                             "--prompt-file " + prompts),
                     "exactly one of");
}

TEST_F(MoeRunTest, PrefetchBenchRunsAndRejectsBadFlags) {
  const std::string tiny = kGolden + "mixtral-tiny-f32";
  const CommandResult r = RunTool("moe-prefetch-bench --model " + tiny +
                                  " --prompts 2 --tokens 3 --configs none:0,gate:1,none:0+cpu,"
                                  "gate:1+hybrid");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr("gate:1"));
  EXPECT_THAT(r.output, HasSubstr("gate:1+hybrid"));
  EXPECT_THAT(r.output, HasSubstr("floor (whole run)"));
  // Two requests decoded side by side, with stale prefetches cancelled.
  const CommandResult batched = RunTool("moe-prefetch-bench --model " + tiny +
                                        " --prompts 3 --tokens 3 --batch 2 "
                                        "--configs none:0,gate:2+cancel");
  ASSERT_EQ(batched.exit_code, 0) << batched.errors;
  EXPECT_THAT(batched.output, HasSubstr("3 requests x 3 steps, 2 at a time"));
  EXPECT_THAT(batched.output, HasSubstr("gate:2+cancel"));
  EXPECT_THAT(batched.output, HasSubstr("no Belady floor with --batch 2"));
  ExpectOneErrorLine(RunTool("moe-prefetch-bench --model " + tiny + " --configs gate:x"),
                     "bad depth in 'gate:x'", "moe-prefetch-bench");
  ExpectOneErrorLine(RunTool("moe-prefetch-bench --model " + tiny + " --configs gate:1+fast"),
                     "unknown option '+fast'", "moe-prefetch-bench");
  ExpectOneErrorLine(RunTool("moe-prefetch-bench --model " + tiny + " --batch 0"), "--batch 0",
                     "moe-prefetch-bench");
  ExpectOneErrorLine(RunTool("moe-prefetch-bench --model " + tiny + " --expert-budget 0"),
                     "--expert-budget 0", "moe-prefetch-bench");
  ExpectOneErrorLine(RunTool("moe-prefetch-bench --model " + tiny + " --configs oracle:1"),
                     "oracle", "moe-prefetch-bench");
}

TEST_F(MoeRunTest, LearnedPredictorRunsOnTheDemoModelWithItsOwnWeights) {
  const std::string model = std::string(MOE_SOURCE_DIR) + "/models/pydoc-moe";
  const CommandResult r = RunTool("moe-run --model " + model +
                                  " --prompt 'The interpreter reads the command line' "
                                  "--max-tokens 4 --expert-budget 25% --predictor learned "
                                  "--prefill-chunk 1");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.errors, HasSubstr("prediction      learned"));
  const std::string tiny = kGolden + "mixtral-tiny-f32";
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny +
                             " --prompt-ids 5,6 --predictor learned "
                             "--predictor-file " +
                             model + "/learned_predictor.safetensors"),
                     "num_layers is 8 in the file, 4");
}

TEST_F(MoeRunTest, ForcedRoutingIsABenchmarkModeWithClearErrors) {
  const std::string tiny = kGolden + "mixtral-tiny-f32";
  const std::string mixtral =
      std::string(MOE_SOURCE_DIR) + "/../shared/data/routing-traces/mixtral-8x7b-humaneval-gsm8k";
  if (std::filesystem::exists(mixtral)) {
    const CommandResult r = RunTool("moe-run --model " + tiny +
                                    " --prompt-ids 5,6,7 --max-tokens 4 --expert-budget 25% "
                                    "--force-routing " +
                                    mixtral);
    ASSERT_EQ(r.exit_code, 0) << r.errors;
    EXPECT_THAT(r.errors, HasSubstr("benchmark mode: routing forced"));
  }
  ExpectOneErrorLine(
      RunTool("moe-run --model " + tiny + " --prompt-ids 5,6 --force-routing /no/such/trace"),
      "/no/such/trace");
}

TEST_F(MoeRunTest, TokenIdsWorkWithoutATokenizerAndTextDoesNot) {
  const std::string qwen = kGolden + "qwen2moe-tiny-f32";
  CommandResult r = RunTool("moe-run --model " + qwen + " --prompt-ids 5,6,7 --max-tokens 4");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), ' '), 3) << r.output;  // 4 ids
  ExpectOneErrorLine(RunTool("moe-run --model " + qwen + " --prompt hello"), "no tokenizer.model");
}

TEST_F(MoeRunTest, BadInputGivesOneClearError) {
  const std::string tiny = kGolden + "mixtral-tiny-f32";
  ExpectOneErrorLine(RunTool("moe-run --prompt hi"), "--model DIR is required");
  ExpectOneErrorLine(RunTool("moe-run --model /no/such/model --prompt hi"), "/no/such/model");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt-ids 5,1000"),
                     "token id 1000 outside the vocabulary");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt-ids 5,x"), "'x'");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt hi --expert-budget 100KB"),
                     "smaller than one token's experts");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt hi --expert-budget lots"),
                     "--expert-budget 'lots'");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt hi --policy fifo"), "fifo");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt hi --top-p 0"), "top_p");
  ExpectOneErrorLine(
      RunTool("moe-run --model " + tiny + " --prompt-ids 5,6 --cpu-fallback sometimes"),
      "unknown cpu_fallback 'sometimes' (off, on, hybrid)");
  ExpectOneErrorLine(RunTool("moe-run --model " + tiny + " --prompt-ids 5,6 --cpu-fallback on"),
                     "needs a device that is not the CPU");
}

TEST_F(MoeRunTest, MalformedCheckpointsNameTheFileAndTensor) {
  {  // truncated data
    const std::string m = CopyModel("mixtral-tiny-f32");
    fs::resize_file(fs::path(m) / "model.safetensors", 1000000);
    ExpectOneErrorLine(RunTool("moe-run --model " + m + " --prompt hi"), "model.safetensors");
    fs::remove_all(m);
  }
  {  // config contradiction
    const std::string m = CopyModel("mixtral-tiny-f32");
    std::ifstream in(fs::path(m) / "config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    in.close();
    config["num_attention_heads"] = 5;
    std::ofstream(fs::path(m) / "config.json") << config.dump();
    ExpectOneErrorLine(RunTool("moe-run --model " + m + " --prompt hi"), "num_attention_heads");
    fs::remove_all(m);
  }
  {  // a missing expert tensor
    const std::string m = CopyModel("mixtral-tiny-f32");
    const std::string path = (fs::path(m) / "model.safetensors").string();
    const std::string missing = "model.layers.2.block_sparse_moe.experts.5.w2.weight";
    SafetensorsWriter writer;
    {
      auto file = SafetensorsFile::Open(path);
      ASSERT_TRUE(file.ok());
      for (const TensorInfo& t : (*file)->tensors()) {
        if (t.name == missing) continue;
        ASSERT_TRUE(writer.AddTensor(t.name, t.dtype, t.shape, (*file)->Data(t)).ok());
      }
    }
    ASSERT_TRUE(writer.Write(path).ok());
    ExpectOneErrorLine(RunTool("moe-run --model " + m + " --prompt hi"), missing);
  }
}

}  // namespace
}  // namespace moe
