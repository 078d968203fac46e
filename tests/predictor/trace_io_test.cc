// Tests of RoutingTrace::Validate/Subset and of the moe-trace file format.
#include "predictor/trace_io.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "predictor/routing_trace.h"
#include "runtime/safetensors.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string MakeTempDir() {
  std::string root = ::testing::TempDir();
  if (!root.empty() && root.back() == '/') root.pop_back();
  std::string tmpl = root + "/trace_io_test_XXXXXX";
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

// A valid trace with `lengths.size()` sequences. Expert ids follow a pattern that keeps each
// token-layer set distinct and touches the high ids, so narrowing bugs show.
RoutingTrace MakeTrace(int32_t num_layers, int32_t num_experts, int32_t top_k,
                       std::vector<int64_t> lengths, bool with_gates) {
  RoutingTrace trace;
  trace.header.model = "test-model";
  trace.header.num_layers = num_layers;
  trace.header.num_experts = num_experts;
  trace.header.top_k = top_k;
  trace.header.expert_bytes = 123456789012ull;
  int64_t t = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    trace.sequences.push_back({t, lengths[s], "seq-" + std::to_string(s)});
    for (int64_t i = 0; i < lengths[s]; ++i, ++t) {
      trace.phases.push_back(i == 0 ? Phase::kPrefill : Phase::kDecode);
      for (int32_t l = 0; l < num_layers; ++l) {
        for (int32_t j = 0; j < top_k; ++j) {
          trace.experts.push_back(
              static_cast<uint16_t>((t * 7 + l * 3 + (num_experts - 1) + j) % num_experts));
          if (with_gates) trace.gate_weights.push_back(1.0f / (j + 1) + 0.001f * l);
        }
      }
    }
  }
  return trace;
}

void ExpectSameTrace(const RoutingTrace& a, const RoutingTrace& b) {
  EXPECT_EQ(a.header.model, b.header.model);
  EXPECT_EQ(a.header.num_layers, b.header.num_layers);
  EXPECT_EQ(a.header.num_experts, b.header.num_experts);
  EXPECT_EQ(a.header.top_k, b.header.top_k);
  EXPECT_EQ(a.header.expert_bytes, b.header.expert_bytes);
  EXPECT_EQ(a.header.moe_layer_ids, b.header.moe_layer_ids);
  EXPECT_EQ(a.experts, b.experts);
  EXPECT_EQ(a.gate_weights, b.gate_weights);
  EXPECT_EQ(a.phases, b.phases);
  ASSERT_EQ(a.sequences.size(), b.sequences.size());
  for (size_t s = 0; s < a.sequences.size(); ++s) {
    EXPECT_EQ(a.sequences[s].token_offset, b.sequences[s].token_offset) << s;
    EXPECT_EQ(a.sequences[s].num_tokens, b.sequences[s].num_tokens) << s;
    EXPECT_EQ(a.sequences[s].name, b.sequences[s].name) << s;
  }
}

// ---- Validate and Subset ----------------------------------------------------------------------

TEST(RoutingTraceTest, ValidTraceValidates) {
  RoutingTrace trace = MakeTrace(3, 8, 2, {4, 1, 5}, true);
  EXPECT_TRUE(trace.Validate().ok()) << Message(trace.Validate());
  EXPECT_EQ(trace.num_tokens(), 10);
  EXPECT_EQ(trace.space().size(), 24);
  EXPECT_EQ(trace.Experts(2, 1).size(), 2u);
  EXPECT_EQ(trace.Experts(2, 1)[0], trace.experts[(2 * 3 + 1) * 2]);
  EXPECT_EQ(trace.GateWeights(2, 1)[1], trace.gate_weights[(2 * 3 + 1) * 2 + 1]);
}

void ExpectInvalid(const RoutingTrace& trace, const std::string& needle) {
  absl::Status status = trace.Validate();
  ASSERT_FALSE(status.ok()) << "expected: " << needle;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr(needle));
}

TEST(RoutingTraceTest, ValidateRejectsIdOutOfRange) {
  RoutingTrace trace = MakeTrace(3, 8, 2, {4, 6}, false);
  trace.experts[(5 * 3 + 2) * 2 + 1] = 8;
  ExpectInvalid(trace, "token 5 layer 2 slot 1: expert 8 out of range [0, 8)");
}

TEST(RoutingTraceTest, ValidateRejectsDuplicateIdInSet) {
  RoutingTrace trace = MakeTrace(3, 8, 2, {4, 6}, false);
  trace.experts[(7 * 3 + 1) * 2 + 1] = trace.experts[(7 * 3 + 1) * 2];
  ExpectInvalid(trace, "token 7 layer 1: expert");
  ExpectInvalid(trace, "chosen twice");
}

TEST(RoutingTraceTest, ValidateRejectsSequenceGapsAndOverlaps) {
  RoutingTrace gap = MakeTrace(2, 4, 1, {3, 3, 4}, false);
  gap.sequences[1].token_offset = 4;
  gap.sequences[1].num_tokens = 2;
  ExpectInvalid(gap, "sequence 1 (seq-1) starts at token 4, expected 3 (gap after");

  RoutingTrace overlap = MakeTrace(2, 4, 1, {3, 3, 4}, false);
  overlap.sequences[2].token_offset = 5;
  overlap.sequences[2].num_tokens = 5;
  ExpectInvalid(overlap, "sequence 2 (seq-2) starts at token 5, expected 6 (overlaps");

  RoutingTrace short_cover = MakeTrace(2, 4, 1, {3, 3, 4}, false);
  short_cover.sequences.pop_back();
  ExpectInvalid(short_cover, "sequences cover 6 tokens, but the trace has 10");

  RoutingTrace past_end = MakeTrace(2, 4, 1, {3, 3, 4}, false);
  past_end.sequences[2].num_tokens = 5;
  ExpectInvalid(past_end, "past the trace's 10 tokens");

  RoutingTrace empty_seq = MakeTrace(2, 4, 1, {3, 3, 4}, false);
  empty_seq.sequences.insert(empty_seq.sequences.begin() + 1, {3, 0, "empty"});
  ExpectInvalid(empty_seq, "sequence 1 (empty) has 0 tokens");

  RoutingTrace none = MakeTrace(2, 4, 1, {3}, false);
  none.sequences.clear();
  ExpectInvalid(none, "trace has no sequences");
}

TEST(RoutingTraceTest, ValidateRejectsBadHeaders) {
  RoutingTrace trace = MakeTrace(2, 4, 2, {3}, false);
  trace.header.top_k = 5;
  ExpectInvalid(trace, "top_k 5 exceeds num_experts 4");

  trace = MakeTrace(2, 4, 2, {3}, false);
  trace.header.num_layers = 0;
  ExpectInvalid(trace, "num_layers is 0");

  trace = MakeTrace(2, 4, 2, {3}, false);
  trace.header.moe_layer_ids = {1};
  ExpectInvalid(trace, "moe_layer_ids has 1 entries, expected num_layers = 2");
  trace.header.moe_layer_ids = {3, 2};
  ExpectInvalid(trace, "moe_layer_ids[1] is 2");

  trace = MakeTrace(2, 4, 2, {3}, false);
  trace.experts.pop_back();
  ExpectInvalid(trace, "experts has 11 entries, expected tokens x layers x top_k = 3 x 2 x 2");

  trace = MakeTrace(2, 4, 2, {3}, true);
  trace.gate_weights.pop_back();
  ExpectInvalid(trace, "gate_weights has 11 entries, expected 12");

  trace = MakeTrace(2, 4, 2, {3}, true);
  trace.gate_weights[5] = std::numeric_limits<float>::quiet_NaN();
  ExpectInvalid(trace, "token 1 layer 0 slot 1: gate weight nan is not finite");

  trace = MakeTrace(2, 4, 2, {3}, false);
  trace.phases[1] = static_cast<Phase>(7);
  ExpectInvalid(trace, "token 1: phase 7");

  RoutingTrace empty;
  empty.header = trace.header;
  ExpectInvalid(empty, "trace has no tokens");
}

TEST(RoutingTraceTest, SubsetReordersAndRebases) {
  RoutingTrace trace = MakeTrace(3, 8, 2, {4, 2, 5}, true);
  const int64_t pick[] = {2, 0};
  RoutingTrace sub = trace.Subset(pick);
  ASSERT_TRUE(sub.Validate().ok()) << Message(sub.Validate());
  ASSERT_EQ(sub.num_tokens(), 9);
  ASSERT_EQ(sub.sequences.size(), 2u);
  EXPECT_EQ(sub.sequences[0].name, "seq-2");
  EXPECT_EQ(sub.sequences[0].token_offset, 0);
  EXPECT_EQ(sub.sequences[1].name, "seq-0");
  EXPECT_EQ(sub.sequences[1].token_offset, 5);
  for (int64_t i = 0; i < 5; ++i) {
    for (int32_t l = 0; l < 3; ++l) {
      EXPECT_TRUE(std::ranges::equal(sub.Experts(i, l), trace.Experts(6 + i, l)));
      EXPECT_TRUE(std::ranges::equal(sub.GateWeights(i, l), trace.GateWeights(6 + i, l)));
    }
    EXPECT_EQ(sub.phases[i], trace.phases[6 + i]);
  }
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(std::ranges::equal(sub.Experts(5 + i, 2), trace.Experts(i, 2)));
  }
}

// ---- moe-trace files --------------------------------------------------------------------------

class TraceFileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

TEST_F(TraceFileTest, RoundTripU8WithGates) {
  RoutingTrace trace = MakeTrace(4, 64, 6, {5, 1, 9}, true);
  trace.header.moe_layer_ids = {1, 2, 3, 5};
  const std::string path = Path("u8.moetrace");
  ASSERT_TRUE(WriteTrace(trace, path).ok());
  auto read = ReadTraceFile(path);
  ASSERT_TRUE(read.ok()) << Message(read.status());
  ExpectSameTrace(trace, *read);

  // The file is plain safetensors with the documented names and dtypes.
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("format"), "moe-trace");
  EXPECT_EQ((*file)->metadata().at("version"), "1");
  EXPECT_EQ((*file)->metadata().at("moe_layer_ids"), "1,2,3,5");
  EXPECT_EQ((*file)->metadata().at("sequence_names"), R"(["seq-0","seq-1","seq-2"])");
  const int64_t shape[] = {15, 4, 6};
  EXPECT_TRUE((*file)->Expect("experts", DType::kU8, shape).ok());
  EXPECT_TRUE((*file)->Expect("gate_weights", DType::kF32, shape).ok());
  const int64_t offsets_shape[] = {4};
  EXPECT_TRUE((*file)->Expect("sequence_offsets", DType::kI64, offsets_shape).ok());
  const int64_t phase_shape[] = {15};
  EXPECT_TRUE((*file)->Expect("phase", DType::kU8, phase_shape).ok());
}

TEST_F(TraceFileTest, RoundTripU16WithoutGates) {
  RoutingTrace trace = MakeTrace(2, 300, 4, {3, 4}, false);
  for (auto& s : trace.sequences) s.name.clear();
  const std::string path = Path("u16.moetrace");
  ASSERT_TRUE(WriteTrace(trace, path).ok());
  auto read = ReadTrace(path);  // dispatches on a file
  ASSERT_TRUE(read.ok()) << Message(read.status());
  ExpectSameTrace(trace, *read);
  EXPECT_FALSE(read->has_gate_weights());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->Find("experts")->dtype, DType::kU16);
  EXPECT_EQ((*file)->Find("gate_weights"), nullptr);
  EXPECT_EQ((*file)->metadata().count("sequence_names"), 0u);
  EXPECT_EQ((*file)->metadata().count("moe_layer_ids"), 0u);
  // Ids above 255 survive.
  EXPECT_GT(std::ranges::max(read->experts), 255);
}

TEST_F(TraceFileTest, WriteRefusesInvalidTrace) {
  RoutingTrace trace = MakeTrace(2, 4, 2, {3}, false);
  trace.experts[0] = 9;
  const std::string path = Path("invalid.moetrace");
  absl::Status status = WriteTrace(trace, path);
  ASSERT_FALSE(status.ok());
  EXPECT_THAT(Message(status), HasSubstr(path));
  EXPECT_THAT(Message(status), HasSubstr("expert 9 out of range"));
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(TraceFileTest, MissingPaths) {
  auto missing = ReadTrace(Path("nothing-here"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()), HasSubstr("nothing-here"));
  EXPECT_EQ(ReadTraceFile(Path("nothing-here")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(TraceFileTest, TruncatedAndCorruptFiles) {
  const RoutingTrace trace = MakeTrace(3, 16, 2, {10, 10}, true);
  const std::string path = Path("t.moetrace");
  ASSERT_TRUE(WriteTrace(trace, path).ok());
  const auto full_size = std::filesystem::file_size(path);
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  for (uint64_t cut : {uint64_t{0}, uint64_t{5}, uint64_t{40}, full_size / 2, full_size - 1}) {
    const std::string cut_path = Path("cut.moetrace");
    std::ofstream(cut_path, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(cut));
    auto read = ReadTraceFile(cut_path);
    ASSERT_FALSE(read.ok()) << "cut at " << cut;
    EXPECT_THAT(Message(read.status()), HasSubstr(cut_path)) << cut;
  }

  // Flip the header's JSON into garbage.
  std::string corrupt = bytes;
  corrupt[8] = '#';
  const std::string corrupt_path = Path("corrupt.moetrace");
  std::ofstream(corrupt_path, std::ios::binary).write(corrupt.data(), corrupt.size());
  auto read = ReadTraceFile(corrupt_path);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(Message(read.status()), HasSubstr(corrupt_path));
}

// Every single-byte corruption of a small trace file either reads as a valid trace or fails
// with the file's name; never a crash or a partially valid trace.
TEST_F(TraceFileTest, SingleByteCorruptionsAreCaught) {
  const RoutingTrace trace = MakeTrace(2, 8, 2, {2, 1}, true);
  const std::string good_path = Path("good.moetrace");
  ASSERT_TRUE(WriteTrace(trace, good_path).ok());
  std::ifstream in(good_path, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string path = Path("mutant.moetrace");
  for (size_t i = 0; i < good.size(); ++i) {
    for (char c : {'\0', '1', '9', '"', ',', '\x7f'}) {
      std::string mutant = good;
      mutant[i] = c;
      std::ofstream(path, std::ios::binary | std::ios::trunc).write(mutant.data(), mutant.size());
      auto read = ReadTraceFile(path);
      if (read.ok()) {
        EXPECT_TRUE(read->Validate().ok()) << "byte " << i;
      } else {
        EXPECT_THAT(Message(read.status()), HasSubstr(path)) << "byte " << i;
      }
    }
  }
}

// Writes a hand-made moe-trace file, so each field can be broken on its own.
struct RawTrace {
  std::map<std::string, std::string> meta = {
      {"format", "moe-trace"}, {"version", "1"}, {"model", "m"},        {"num_layers", "2"},
      {"num_experts", "4"},    {"top_k", "2"},   {"expert_bytes", "0"},
  };
  std::vector<int64_t> experts_shape = {3, 2, 2};
  std::vector<uint8_t> experts = {0, 1, 2, 3, 1, 2, 3, 0, 0, 3, 1, 2};
  std::vector<uint8_t> phase = {0, 1, 1};
  std::vector<int64_t> offsets = {0, 1, 3};

  absl::Status Write(const std::string& path) const {
    SafetensorsWriter w;
    for (const auto& [k, v] : meta) w.SetMetadata(k, v);
    ExpectOk(w.AddTensor("experts", DType::kU8, experts_shape,
                         std::as_bytes(std::span<const uint8_t>(experts))));
    ExpectOk(w.AddTensor("phase", DType::kU8, {static_cast<int64_t>(phase.size())},
                         std::as_bytes(std::span<const uint8_t>(phase))));
    ExpectOk(w.AddTensor("sequence_offsets", DType::kI64, {static_cast<int64_t>(offsets.size())},
                         std::as_bytes(std::span<const int64_t>(offsets))));
    return w.Write(path);
  }
  static void ExpectOk(const absl::Status& s) { EXPECT_TRUE(s.ok()) << Message(s); }
};

class RawTraceTest : public TraceFileTest {
 protected:
  void ExpectReadFails(const RawTrace& raw, const std::string& needle) {
    const std::string path = Path("raw.moetrace");
    ASSERT_TRUE(raw.Write(path).ok());
    auto read = ReadTraceFile(path);
    ASSERT_FALSE(read.ok()) << "expected: " << needle;
    EXPECT_THAT(Message(read.status()), HasSubstr(path));
    EXPECT_THAT(Message(read.status()), HasSubstr(needle));
  }
};

TEST_F(RawTraceTest, BaselineReads) {
  RawTrace raw;
  const std::string path = Path("raw.moetrace");
  ASSERT_TRUE(raw.Write(path).ok());
  auto read = ReadTraceFile(path);
  ASSERT_TRUE(read.ok()) << Message(read.status());
  EXPECT_EQ(read->num_tokens(), 3);
  EXPECT_EQ(read->sequences.size(), 2u);
  EXPECT_EQ(read->sequences[1].num_tokens, 2);
  EXPECT_TRUE(read->sequences[1].name.empty());
  EXPECT_EQ(read->phases[1], Phase::kDecode);
}

TEST_F(RawTraceTest, MetadataErrorsNameTheField) {
  RawTrace raw;
  raw.meta.erase("format");
  ExpectReadFails(raw, "not a moe-trace file (metadata field format is missing)");
  raw = RawTrace();
  raw.meta["format"] = "other";
  ExpectReadFails(raw, "metadata field format is \"other\"");
  raw = RawTrace();
  raw.meta["version"] = "2";
  ExpectReadFails(raw, "moe-trace version 2 is not supported");
  raw = RawTrace();
  raw.meta["num_layers"] = "two";
  ExpectReadFails(raw, "metadata field num_layers is \"two\", expected an integer");
  raw = RawTrace();
  raw.meta["num_experts"] = "4x";
  ExpectReadFails(raw, "metadata field num_experts is \"4x\"");
  raw = RawTrace();
  raw.meta.erase("top_k");
  ExpectReadFails(raw, "metadata field top_k is missing");
  raw = RawTrace();
  raw.meta["top_k"] = "5";
  ExpectReadFails(raw, "metadata field top_k is 5, expected a value in [1, 4]");
  raw = RawTrace();
  raw.meta["expert_bytes"] = "-1";
  ExpectReadFails(raw, "metadata field expert_bytes");
  raw = RawTrace();
  raw.meta["moe_layer_ids"] = "1,x";
  ExpectReadFails(raw, "moe_layer_ids: \"x\" is not an integer");
  raw = RawTrace();
  raw.meta["moe_layer_ids"] = "1,2,3";
  ExpectReadFails(raw, "moe_layer_ids has 3 entries");
  raw = RawTrace();
  raw.meta["sequence_names"] = "[\"a\"]";
  ExpectReadFails(raw, "sequence_names has 1 names, expected 2");
  raw = RawTrace();
  raw.meta["sequence_names"] = "not json";
  ExpectReadFails(raw, "sequence_names is not a JSON array");
}

TEST_F(RawTraceTest, TensorErrors) {
  RawTrace raw;
  raw.experts[5] = 4;
  ExpectReadFails(raw, "token 1 layer 0 slot 1: expert 4 out of range [0, 4)");
  raw = RawTrace();
  raw.experts[5] = raw.experts[4];
  ExpectReadFails(raw, "token 1 layer 0: expert 1 chosen twice");
  raw = RawTrace();
  raw.meta["num_layers"] = "3";
  ExpectReadFails(raw, "tensor experts has shape [3, 2, 2], expected [tokens, 3, 2]");
  raw = RawTrace();
  raw.phase = {0, 2, 1};
  ExpectReadFails(raw, "token 1 has phase 2");
  raw = RawTrace();
  raw.phase = {0, 1};
  ExpectReadFails(raw, "tensor phase: shape [2], expected [3]");
  raw = RawTrace();
  raw.offsets = {0, 2, 2, 3};
  ExpectReadFails(raw, "offset 2 (2) is not above offset 1 (2)");
  raw = RawTrace();
  raw.offsets = {0, 1, 4};
  ExpectReadFails(raw, "runs from 0 to 4, expected 0 to 3");
  raw = RawTrace();
  raw.offsets = {1, 3};
  ExpectReadFails(raw, "runs from 1 to 3");
}

TEST_F(RawTraceTest, EmptyTracesAreErrors) {
  RawTrace raw;
  raw.experts_shape = {0, 2, 2};
  raw.experts.clear();
  raw.phase.clear();
  raw.offsets = {0};
  const std::string path = Path("raw.moetrace");
  ASSERT_TRUE(raw.Write(path).ok());
  auto read = ReadTraceFile(path);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(Message(read.status()), HasSubstr("trace " + path + " has no tokens"));

  raw = RawTrace();
  raw.offsets = {0};
  ASSERT_TRUE(raw.Write(path).ok());
  read = ReadTraceFile(path);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(Message(read.status()), HasSubstr("trace " + path + " has no sequences"));
}

}  // namespace
}  // namespace moe
