// Tests of ImportDenseTrace on the real traces in ../shared/data and on small broken folders.
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "predictor/routing_trace.h"
#include "predictor/trace_io.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

const std::string kTraceRoot = MOE_SOURCE_DIR "/../shared/data/routing-traces";

std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string MakeTempDir() {
  std::string root = ::testing::TempDir();
  if (!root.empty() && root.back() == '/') root.pop_back();
  std::string tmpl = root + "/dense_import_test_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

std::vector<char> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(text.data(), text.size());
}

// Parses the token_offset / n_tokens columns of a sequences.tsv independently of the importer
// (these files put them at known positions).
std::vector<std::pair<int64_t, int64_t>> TsvRanges(const std::string& path, int offset_col,
                                                   int count_col) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  std::vector<std::pair<int64_t, int64_t>> ranges;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<std::string> fields;
    size_t start = 0, pos;
    while ((pos = line.find('\t', start)) != std::string::npos) {
      fields.push_back(line.substr(start, pos - start));
      start = pos + 1;
    }
    fields.push_back(line.substr(start));
    ranges.emplace_back(std::stoll(fields[offset_col]), std::stoll(fields[count_col]));
  }
  return ranges;
}

TEST(DenseImportRealTest, DeepSeekPuffin) {
  const std::string dir = kTraceRoot + "/deepseek-v2-lite-puffin";
  if (!std::filesystem::exists(dir + "/meta.json")) GTEST_SKIP() << dir << " not present";

  const auto start = std::chrono::steady_clock::now();
  auto trace = ImportDenseTrace(dir);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(trace.ok()) << Message(trace.status());
  // Reported, not asserted (tests never assert timings).
  std::printf("imported %s in %.3f s\n", dir.c_str(), seconds);

  const TraceHeader& h = trace->header;
  EXPECT_EQ(h.model, "deepseek-v2-lite-puffin");
  EXPECT_EQ(h.num_layers, 26);
  EXPECT_EQ(h.num_experts, 64);
  EXPECT_EQ(h.top_k, 6);
  std::vector<int32_t> layer_ids(26);
  std::iota(layer_ids.begin(), layer_ids.end(), 1);
  EXPECT_EQ(h.moe_layer_ids, layer_ids);
  EXPECT_EQ(trace->num_tokens(), 154942);
  EXPECT_FALSE(trace->has_gate_weights());
  EXPECT_TRUE(std::ranges::all_of(trace->phases, [](Phase p) { return p == Phase::kPrefill; }));

  // Every id equals the raw byte, read here independently.
  const std::vector<char> raw = ReadBytes(dir + "/experts_u8.bin");
  ASSERT_EQ(raw.size(), trace->experts.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < raw.size(); ++i) {
    mismatches += trace->experts[i] != static_cast<uint8_t>(raw[i]);
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(trace->Experts(0, 0)[0], static_cast<uint8_t>(raw[0]));
  EXPECT_EQ(trace->Experts(1, 2)[3], static_cast<uint8_t>(raw[(1 * 26 + 2) * 6 + 3]));

  const auto ranges = TsvRanges(dir + "/sequences.tsv", 3, 4);
  ASSERT_EQ(trace->sequences.size(), 1600u);
  ASSERT_EQ(ranges.size(), 1600u);
  for (size_t s = 0; s < ranges.size(); ++s) {
    ASSERT_EQ(trace->sequences[s].token_offset, ranges[s].first) << s;
    ASSERT_EQ(trace->sequences[s].num_tokens, ranges[s].second) << s;
  }
  EXPECT_EQ(trace->sequences[0].name, "training_data_eamc/1");
  EXPECT_EQ(trace->sequences.back().token_offset, 154934);
  EXPECT_EQ(trace->sequences.back().num_tokens, 8);

  // The imported trace survives the moe-trace format unchanged.
  const std::string path = MakeTempDir() + "/deepseek.moetrace";
  ASSERT_TRUE(WriteTrace(*trace, path).ok());
  auto back = ReadTrace(path);
  ASSERT_TRUE(back.ok()) << Message(back.status());
  EXPECT_EQ(back->experts, trace->experts);
  EXPECT_EQ(back->sequences.size(), trace->sequences.size());
  EXPECT_EQ(back->sequences[1599].name, trace->sequences[1599].name);
  EXPECT_EQ(back->header.moe_layer_ids, layer_ids);
  std::filesystem::remove(path);
}

TEST(DenseImportRealTest, MixtralHumanEvalGsm8k) {
  const std::string dir = kTraceRoot + "/mixtral-8x7b-humaneval-gsm8k/";  // trailing slash too
  if (!std::filesystem::exists(dir + "meta.json")) GTEST_SKIP() << dir << " not present";
  auto trace = ReadTrace(dir);  // dispatches on a directory
  ASSERT_TRUE(trace.ok()) << Message(trace.status());

  const TraceHeader& h = trace->header;
  EXPECT_EQ(h.model, "mixtral-8x7b-humaneval-gsm8k");
  EXPECT_EQ(h.num_layers, 32);
  EXPECT_EQ(h.num_experts, 8);
  EXPECT_EQ(h.top_k, 2);
  EXPECT_EQ(h.moe_layer_ids.size(), 32u);
  EXPECT_EQ(h.moe_layer_ids.front(), 0);
  EXPECT_EQ(trace->num_tokens(), 577);
  EXPECT_TRUE(std::ranges::all_of(trace->phases, [](Phase p) { return p == Phase::kDecode; }));

  const std::vector<char> raw = ReadBytes(dir + "experts_u8.bin");
  ASSERT_EQ(raw.size(), 577u * 32 * 2);
  for (size_t i = 0; i < raw.size(); ++i) {
    ASSERT_EQ(trace->experts[i], static_cast<uint8_t>(raw[i])) << i;
  }
  const std::vector<char> gates = ReadBytes(dir + "gate_probs_f32.bin");
  ASSERT_EQ(gates.size(), raw.size() * 4);
  ASSERT_TRUE(trace->has_gate_weights());
  ASSERT_EQ(trace->gate_weights.size(), raw.size());
  EXPECT_EQ(std::memcmp(trace->gate_weights.data(), gates.data(), gates.size()), 0);
  // Renormalized top-2: each pair sums to 1, top-1 first.
  const auto first = trace->GateWeights(0, 0);
  EXPECT_NEAR(first[0] + first[1], 1.0f, 1e-5);
  EXPECT_GE(first[0], first[1]);

  const auto ranges = TsvRanges(dir + "sequences.tsv", 3, 4);
  ASSERT_EQ(trace->sequences.size(), 4u);
  for (size_t s = 0; s < 4; ++s) {
    EXPECT_EQ(trace->sequences[s].token_offset, ranges[s].first);
    EXPECT_EQ(trace->sequences[s].num_tokens, ranges[s].second);
  }
  EXPECT_EQ(trace->sequences[0].name, "humaneval/0");
  EXPECT_EQ(trace->sequences[3].name, "gsm8k/1");

  const std::string path = MakeTempDir() + "/mixtral.moetrace";
  ASSERT_TRUE(WriteTrace(*trace, path).ok());
  auto back = ReadTraceFile(path);
  ASSERT_TRUE(back.ok()) << Message(back.status());
  EXPECT_EQ(back->experts, trace->experts);
  EXPECT_EQ(back->gate_weights, trace->gate_weights);
  EXPECT_EQ(back->phases, trace->phases);
}

// A small valid dense folder (5 tokens, 2 layers, top-2 of 4 experts, 2 sequences) that each
// test breaks in one way.
class DenseImportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    WriteText(Path("meta.json"), meta_);
    WriteBinary("experts_u8.bin", experts_);
    WriteText(Path("sequences.tsv"), tsv_);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  void WriteBinary(const std::string& name, const std::vector<uint8_t>& bytes) {
    std::ofstream(Path(name), std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  void ExpectImportFails(const std::string& needle) {
    auto trace = ImportDenseTrace(dir_);
    ASSERT_FALSE(trace.ok()) << "expected: " << needle;
    EXPECT_THAT(Message(trace.status()), HasSubstr(needle));
  }

  std::string dir_;
  std::string meta_ = R"({"shape": [5, 2, 2], "num_routed_experts": 4, "top_k": 2,
                          "phase": "decode only", "moe_layer_ids": [3, 4], "num_sequences": 2})";
  std::vector<uint8_t> experts_ = {0, 1, 2, 3, 1, 0, 3, 2, 2, 0, 1, 3, 3, 1, 0, 2, 1, 2, 3, 0};
  std::string tsv_ =
      "seq\tdataset\tproblem_id\ttoken_offset\tn_tokens\n"
      "0\tgsm8k\t7\t0\t2\n"
      "1\tgsm8k\t9\t2\t3\n";
};

TEST_F(DenseImportTest, BaselineImports) {
  auto trace = ImportDenseTrace(dir_);
  ASSERT_TRUE(trace.ok()) << Message(trace.status());
  EXPECT_EQ(trace->header.model, std::filesystem::path(dir_).filename().string());
  EXPECT_EQ(trace->header.moe_layer_ids, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(trace->num_tokens(), 5);
  EXPECT_EQ(trace->phases[0], Phase::kDecode);
  EXPECT_EQ(trace->sequences[1].name, "gsm8k/9");
  EXPECT_EQ(trace->Experts(4, 1)[1], 0);
  EXPECT_FALSE(trace->has_gate_weights());
}

TEST_F(DenseImportTest, OptionalFieldsAndGates) {
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_experts": 4, "model": "tiny"})");
  WriteText(Path("sequences.tsv"), "n_tokens\ttoken_offset\r\n2\t0\r\n3\t2\r\n\r\n");
  std::vector<float> gates(20);
  for (size_t i = 0; i < gates.size(); ++i) gates[i] = 0.05f * i;
  std::ofstream(Path("gate_probs_f32.bin"), std::ios::binary)
      .write(reinterpret_cast<const char*>(gates.data()), gates.size() * 4);
  auto trace = ImportDenseTrace(dir_);
  ASSERT_TRUE(trace.ok()) << Message(trace.status());
  EXPECT_EQ(trace->header.model, "tiny");
  EXPECT_TRUE(trace->header.moe_layer_ids.empty());
  EXPECT_EQ(trace->phases[0], Phase::kPrefill);
  EXPECT_EQ(trace->sequences[1].name, "seq 1");
  EXPECT_EQ(trace->gate_weights, gates);
}

TEST_F(DenseImportTest, MissingFiles) {
  for (const char* name : {"meta.json", "experts_u8.bin", "sequences.tsv"}) {
    SetUp();
    std::filesystem::remove(Path(name));
    auto trace = ImportDenseTrace(dir_);
    ASSERT_FALSE(trace.ok()) << name;
    EXPECT_EQ(trace.status().code(), absl::StatusCode::kNotFound) << name;
    EXPECT_THAT(Message(trace.status()), HasSubstr(Path(name)));
  }
}

TEST_F(DenseImportTest, WrongFileSizes) {
  experts_.pop_back();
  WriteBinary("experts_u8.bin", experts_);
  ExpectImportFails(Path("experts_u8.bin") +
                    " is 19 bytes, expected 20 (tokens x layers x top_k = 5 x 2 x 2)");
  experts_.push_back(0);
  SetUp();
  WriteBinary("gate_probs_f32.bin", std::vector<uint8_t>(79));
  ExpectImportFails(Path("gate_probs_f32.bin") + " is 79 bytes, expected 80");
}

TEST_F(DenseImportTest, ExpertIdsOutOfRangeOrRepeated) {
  experts_[13] = 4;
  WriteBinary("experts_u8.bin", experts_);
  ExpectImportFails(Path("experts_u8.bin") + ": token 3 layer 0 slot 1: expert 4 out of range");
  experts_[13] = 3;  // token 3 layer 0 is {3, 3}
  SetUp();
  WriteBinary("experts_u8.bin", experts_);
  ExpectImportFails("dense trace " + dir_ + ": token 3 layer 0: expert 3 chosen twice");
}

TEST_F(DenseImportTest, SequencesMustCoverTokens) {
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t2\n3\t2\n");
  ExpectImportFails(Path("sequences.tsv") + " line 3: token_offset 3, expected 2");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t2\n1\t4\n");
  ExpectImportFails("line 3: token_offset 1, expected 2");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t2\n2\t2\n");
  ExpectImportFails(Path("sequences.tsv") + ": sequences cover 4 tokens, but the trace has 5");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t2\n2\t9\n");
  ExpectImportFails("line 3: tokens [2, 11) run past the 5 tokens");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t0\n0\t5\n");
  ExpectImportFails("line 2: n_tokens is 0, must be positive");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n");
  ExpectImportFails(Path("sequences.tsv") + ": no sequences");
}

TEST_F(DenseImportTest, MalformedTsv) {
  WriteText(Path("sequences.tsv"), "seq\ttoken_offset\tn_tokens\n0\t0\t2\n1\t2\n");
  ExpectImportFails(Path("sequences.tsv") + " line 3: 2 fields, expected 3");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t2x\n2\t3\n");
  ExpectImportFails("line 2: n_tokens \"2x\" is not an integer");
  WriteText(Path("sequences.tsv"), "token_offset\tn_tokens\n0\t2\n\n-\t3\n");
  ExpectImportFails("line 4: token_offset \"-\" is not an integer");
  WriteText(Path("sequences.tsv"), "offset\tcount\n0\t2\n2\t3\n");
  ExpectImportFails("header row must name token_offset and n_tokens columns");
  WriteText(Path("sequences.tsv"), "");
  ExpectImportFails("missing header row");
}

TEST_F(DenseImportTest, BadMeta) {
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": 4,)");
  ExpectImportFails(Path("meta.json") + ": not valid JSON");
  WriteText(Path("meta.json"), R"([5, 2, 2])");
  ExpectImportFails("is a JSON array, expected an object");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2]})");
  ExpectImportFails(Path("meta.json") + ": field \"num_routed_experts\" is missing");
  WriteText(Path("meta.json"), R"({"shape": [5, 2], "num_routed_experts": 4})");
  ExpectImportFails("field \"shape\" must be [tokens, layers, top_k], got [5,2]");
  WriteText(Path("meta.json"), R"({"shape": [5, -2, 2], "num_routed_experts": 4})");
  ExpectImportFails("three non-negative integers");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": "4"})");
  ExpectImportFails("field \"num_routed_experts\" is \"4\", expected an integer");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": 1})");
  ExpectImportFails("top_k 2 exceeds num_experts 1");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": 4, "top_k": 3})");
  ExpectImportFails("field \"top_k\" is 3, but \"shape\" says 2");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": 4,
                                   "num_sequences": 3})");
  ExpectImportFails("has 2 sequences, but " + Path("meta.json") + " says num_sequences = 3");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": 4,
                                   "dtype": "uint16"})");
  ExpectImportFails("field \"dtype\" is \"uint16\", expected \"uint8\"");
  WriteText(Path("meta.json"), R"({"shape": [5, 2, 2], "num_routed_experts": 4,
                                   "moe_layer_ids": [1, 2, 3]})");
  ExpectImportFails("moe_layer_ids has 3 entries, expected num_layers = 2");
}

TEST_F(DenseImportTest, EmptyTraceIsAnError) {
  WriteText(Path("meta.json"), R"({"shape": [0, 2, 2], "num_routed_experts": 4})");
  WriteBinary("experts_u8.bin", {});
  ExpectImportFails("trace " + dir_ + " has no tokens");
}

}  // namespace
}  // namespace moe
