// End-to-end tests of the moe-trace and moe-replay executables: real processes, real files.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "predictor/synthetic_trace.h"
#include "tests/common/run_tool.h"
#include "tools/trace/trace_stats.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

using testing_util::CommandResult;

CommandResult Exec(const std::string& args) { return testing_util::RunTool(args); }

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("moe_cli_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::create_directories(dir_);
    trace_ = (dir_ / "t.moetrace").string();
    CommandResult r =
        Exec("moe-trace --synthetic --out " + trace_ +
             " --layers 6 --experts 8 --top-k 2 --sequences 12 --expert-bytes 1MB --seed 3");
    ASSERT_EQ(r.exit_code, 0) << r.errors;
  }
  fs::path dir_;
  std::string trace_;
};

TEST_F(CliTest, ReplayJsonHasTheDocumentedFields) {
  CommandResult r = Exec("moe-replay --trace " + trace_ + " --capacity 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  auto j = nlohmann::json::parse(r.output);
  for (const char* key : {"accesses", "hits", "hit_rate", "loads", "bytes_loaded",
                          "belady_hit_rate", "evictions", "capacity_per_partition"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["accesses"].get<uint64_t>(),
            j["hits"].template get<uint64_t>() + j["misses"].template get<uint64_t>());
  EXPECT_EQ(j["bytes_loaded"].get<uint64_t>(), j["loads"].get<uint64_t>() * 1000000u);
  EXPECT_GE(j["belady_hit_rate"].get<double>(), j["hit_rate"].get<double>());
  EXPECT_FALSE(j.contains("prefetches"));
}

// The horizon oracle at H = 0 is LRU and at H = inf Belady: its loads must equal moe-replay's,
// which come from the separate replay counters.
TEST_F(CliTest, HorizonOracleEndsAreLruAndBelady) {
  CommandResult replay = Exec("moe-replay --trace " + trace_ + " --capacity 3 --json");
  ASSERT_EQ(replay.exit_code, 0) << replay.errors;
  auto j = nlohmann::json::parse(replay.output);
  CommandResult r = Exec("moe-horizon-oracle --trace " + trace_ +
                         " --capacity 3 --train-fraction 0 --horizons 0,1,inf");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr(fmt::format("| 0 | {:.4f} | {} |", j["hit_rate"].get<double>(),
                                              j["loads"].get<uint64_t>())));
  EXPECT_THAT(r.output, HasSubstr(fmt::format("| inf (Belady) | {:.4f} | {} |",
                                              j["belady_hit_rate"].get<double>(),
                                              j["belady_loads"].get<uint64_t>())));
  EXPECT_THAT(r.output, HasSubstr("| 1 | "));
}

TEST_F(CliTest, HorizonOracleBadInputIsOneClearError) {
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"", "--trace is required"},
           {" --trace " + trace_ + " --horizons 1,soon", "'soon' is not a token count"},
           {" --trace " + trace_ + " --capacity 1", "--capacity 1 must be in [top_k 2, 8"},
           {" --trace " + trace_ + " --train-fraction 1", "--train-fraction 1 must be in"},
           {" --trace " + trace_ + " --horizons ,", "--horizons lists no horizon"},
           {" --trace " + trace_ + " --link-gbps 0", "--link-gbps > 0 (got 0)"},
           {" --trace " + trace_ + " --fallback-decay 1", "--fallback-decay 1 must be in [0, 1)"},
           {" --trace " + (dir_ / "missing").string(), "missing"}}) {
    CommandResult r = Exec("moe-horizon-oracle" + args);
    EXPECT_EQ(r.exit_code, 2) << args;
    EXPECT_THAT(r.errors, HasSubstr("moe-horizon-oracle: error: ")) << args;
    EXPECT_THAT(r.errors, HasSubstr(needle)) << args;
  }
}

TEST_F(CliTest, ReplayWithPrefetchAndTimingReportsBoth) {
  CommandResult r =
      Exec("moe-replay --trace " + trace_ +
           " --capacity 3 --predictor transition --train-fraction 0.5 --prefetch-depth 2"
           " --link-gbps 25 --layer-compute-us 50 --json");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  auto j = nlohmann::json::parse(r.output);
  for (const char* key :
       {"prefetches", "prefetch_useful", "prefetch_wasted_bytes", "late_prefetches"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  ASSERT_TRUE(j.contains("timing"));
  const auto& t = j["timing"];
  EXPECT_GE(t["decode_time_us"].get<double>(), t["floor_us"].get<double>() - 1e-6);
  EXPECT_GE(t["floor_us"].get<double>(), t["compute_bound_us"].get<double>());
  EXPECT_EQ(j["sequences"].get<int>(), 6);  // the other half learned the tables
}

TEST_F(CliTest, SweepWritesTableCsvAndSvg) {
  const std::string csv = (dir_ / "s.csv").string(), svg = (dir_ / "s.svg").string();
  CommandResult r =
      Exec("moe-replay --trace " + trace_ + " --sweep --capacities 2,4 --policies lru,lfu" +
           " --csv " + csv + " --svg " + svg);
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr("belady"));
  std::ifstream f(csv);
  std::string line;
  int lines = 0;
  while (std::getline(f, line)) ++lines;
  EXPECT_EQ(lines, 1 + 2 * 3);  // header + capacities x (lru, lfu, belady)
  std::ifstream s(svg);
  std::string content((std::istreambuf_iterator<char>(s)), {});
  EXPECT_THAT(content, HasSubstr("<svg"));
  EXPECT_THAT(content, HasSubstr("</svg>"));
}

TEST_F(CliTest, EvalPredictorPrintsRecallPerDistance) {
  CommandResult r = Exec("moe-replay --trace " + trace_ +
                         " --eval-predictor --predictor transition --train-fraction 0.5 --budget 4"
                         " --max-distance 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  auto j = nlohmann::json::parse(r.output);
  ASSERT_EQ(j["distances"].size(), 2u);
  for (const auto& d : j["distances"]) {
    EXPECT_GE(d["recall"].get<double>(), 0.0);
    EXPECT_LE(d["recall"].get<double>(), 1.0);
  }
}

TEST_F(CliTest, BadInputGivesOneClearErrorAndExitCode2) {
  struct Case {
    std::string args;
    std::string message;
  };
  const std::string missing = (dir_ / "missing.moetrace").string();
  const std::string truncated = (dir_ / "truncated.moetrace").string();
  {
    std::ifstream in(trace_, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  const std::string no_size = (dir_ / "no_size.moetrace").string();
  ASSERT_EQ(Exec("moe-trace --synthetic --out " + no_size + " --expert-bytes 0").exit_code, 0);
  const std::string empty = (dir_ / "empty.moetrace").string();
  std::ofstream(empty).close();
  const Case cases[] = {
      {"moe-replay --trace " + missing + " --capacity 2", missing},
      {"moe-replay --trace " + truncated + " --capacity 2", truncated},
      {"moe-replay --trace " + empty + " --capacity 2", empty},
      {"moe-replay --trace " + trace_ + " --capacity 2 --policy nonsense", "nonsense"},
      {"moe-replay --trace " + trace_ + " --capacity 2 --predictor nonsense --prefetch-depth 1",
       "nonsense"},
      {"moe-replay --trace " + trace_ + " --capacity 1", "top_k = 2"},
      {"moe-replay --trace " + trace_ + " --capacity 2 --scope diagonal", "diagonal"},
      {"moe-replay --trace " + trace_ + " --capacity 2 --frobnicate", "unknown flag --frobnicate"},
      {"moe-replay --trace " + trace_ + " --capacity two", "'two' is not an integer"},
      {"moe-replay --trace " + trace_ + " --budget-bytes 3XB", "3XB"},
      {"moe-replay --trace " + trace_ + " --budget-bytes 1000", "budget"},
      {"moe-replay --capacity 2", "--trace is required"},
      {"moe-replay --trace " + trace_ + " --capacity 2 --batch 0", "--batch 0"},
      {"moe-replay --trace " + no_size + " --budget-bytes 1GB", "--expert-bytes"},
      {"moe-trace --synthetic --out " + (dir_ / "x").string() + " --top-k 9 --experts 8", "top_k"},
  };
  for (const Case& c : cases) {
    CommandResult r = Exec(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.errors;
    EXPECT_THAT(r.errors, HasSubstr(c.message)) << c.args;
    EXPECT_THAT(r.errors, HasSubstr("error:")) << c.args;
  }
}

TEST_F(CliTest, HelpListsFlags) {
  CommandResult r = Exec("moe-replay --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--prefetch-depth"));
  EXPECT_THAT(r.output, HasSubstr("--reset-per-sequence"));
  r = Exec("moe-trace --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--synthetic"));
}

TEST_F(CliTest, ConvertsTheRealDenseTraceWhenPresent) {
  const std::string dense =
      std::string(MOE_SOURCE_DIR) + "/../shared/data/routing-traces/mixtral-8x7b-humaneval-gsm8k";
  if (!fs::exists(dense)) GTEST_SKIP() << "no " << dense;
  const std::string out = (dir_ / "mixtral.moetrace").string();
  CommandResult r = Exec("moe-trace --in " + dense + " --out " + out + " --info");
  ASSERT_EQ(r.exit_code, 0) << r.errors;
  EXPECT_THAT(r.output, HasSubstr("577 tokens x 32 MoE layers x top-2 of 8 experts"));
  // The converted file replays to the same hit rate as the folder.
  CommandResult a = Exec("moe-replay --trace " + dense + " --capacity 4 --json");
  CommandResult b = Exec("moe-replay --trace " + out + " --capacity 4 --json");
  ASSERT_EQ(a.exit_code, 0) << a.errors;
  ASSERT_EQ(b.exit_code, 0) << b.errors;
  EXPECT_EQ(nlohmann::json::parse(a.output)["hits"], nlohmann::json::parse(b.output)["hits"]);
}

TEST(TraceStats, EachSyntheticKnobMovesItsStatistic) {
  SyntheticTraceOptions o;
  o.num_layers = 6;
  o.num_experts = 16;
  o.top_k = 2;
  o.num_sequences = 20;
  o.zipf_skew = 0;
  o.temporal_locality = 0;
  o.layer_affinity = 0;
  auto plain = GenerateSyntheticTrace(o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const TraceStats base = ComputeTraceStats(*plain);

  SyntheticTraceOptions skewed = o;
  skewed.zipf_skew = 1.2;
  SyntheticTraceOptions local = o;
  local.temporal_locality = 0.7;
  SyntheticTraceOptions affine = o;
  affine.layer_affinity = 0.7;
  const TraceStats s = ComputeTraceStats(*GenerateSyntheticTrace(skewed));
  const TraceStats t = ComputeTraceStats(*GenerateSyntheticTrace(local));
  const TraceStats a = ComputeTraceStats(*GenerateSyntheticTrace(affine));
  EXPECT_GT(s.top_quarter_share, base.top_quarter_share + 0.1);
  EXPECT_GT(t.previous_token_overlap, base.previous_token_overlap + 0.2);
  EXPECT_GT(a.transition_recall - a.popularity_recall,
            base.transition_recall - base.popularity_recall + 0.1);
  EXPECT_NEAR(base.previous_token_overlap, base.previous_token_overlap_random, 0.05);
}

}  // namespace
}  // namespace moe
