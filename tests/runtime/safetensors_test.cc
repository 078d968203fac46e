#include "runtime/safetensors.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// A fresh directory under the test temp dir, one per test.
std::string MakeTempDir() {
  std::string root = ::testing::TempDir();
  if (!root.empty() && root.back() == '/') root.pop_back();
  std::string tmpl = root + "/safetensors_test_XXXXXX";
  char* dir = ::mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
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

// A file made of an explicit header length, header text and data bytes.
std::string RawFile(uint64_t header_len, const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &header_len, 8);
  return bytes + header + data;
}
std::string RawFile(const std::string& header, const std::string& data) {
  return RawFile(header.size(), header, data);
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` to a file and expects Open to fail with a message naming the file and
  // containing `needle`.
  void ExpectOpenFails(const std::string& bytes, const std::string& needle,
                       absl::StatusCode code = absl::StatusCode::kDataLoss) {
    const std::string path = Path("bad.safetensors");
    WriteFile(path, bytes);
    auto file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << "expected failure containing: " << needle;
    EXPECT_EQ(file.status().code(), code) << Message(file.status());
    EXPECT_THAT(Message(file.status()), HasSubstr(path));
    EXPECT_THAT(Message(file.status()), HasSubstr(needle));
  }

  std::string dir_;
};

TEST(DTypeTest, NamesAndSizesRoundTrip) {
  const DType all[] = {DType::kBool, DType::kU8,   DType::kI8,  DType::kU16, DType::kI16,
                       DType::kF16,  DType::kBF16, DType::kU32, DType::kI32, DType::kF32,
                       DType::kU64,  DType::kI64,  DType::kF64};
  for (DType d : all) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
    EXPECT_GT(DTypeSize(d), 0u);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_FALSE(ParseDType("F8").ok());
  EXPECT_FALSE(ParseDType("f32").ok());
}

TEST_F(SafetensorsTest, RoundTripAllDTypesAndMetadata) {
  const DType all[] = {DType::kBool, DType::kU8,   DType::kI8,  DType::kU16, DType::kI16,
                       DType::kF16,  DType::kBF16, DType::kU32, DType::kI32, DType::kF32,
                       DType::kU64,  DType::kI64,  DType::kF64};
  SafetensorsWriter writer;
  writer.SetMetadata("format", "test");
  writer.SetMetadata("note", "a \"quoted\" value, with unicode \xc3\xa9");
  std::map<std::string, std::vector<std::byte>> expected;
  int index = 0;
  for (DType d : all) {
    // Odd element counts so tensors of small types end at unaligned offsets.
    const std::vector<int64_t> shape = {3, index % 3 + 1};
    std::vector<std::byte> data(3 * (index % 3 + 1) * DTypeSize(d));
    for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte((i * 31 + index * 7) & 0xff);
    const std::string name = "t." + std::string(DTypeName(d));
    ASSERT_TRUE(writer.AddTensor(name, d, shape, data).ok());
    expected[name] = data;
    ++index;
  }
  ASSERT_TRUE(writer
                  .AddTensor("scalar", DType::kF32, {},
                             AsBytes(std::span<const float>(std::vector<float>{2.5f})))
                  .ok());
  ASSERT_TRUE(writer.AddTensor("empty", DType::kI64, {0, 4}, {}).ok());
  const std::string path = Path("all.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());

  auto file_or = SafetensorsFile::Open(path);
  ASSERT_TRUE(file_or.ok()) << Message(file_or.status());
  const SafetensorsFile& file = **file_or;
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata().at("format"), "test");
  EXPECT_EQ(file.metadata().at("note"), "a \"quoted\" value, with unicode \xc3\xa9");
  EXPECT_EQ(file.tensors().size(), expected.size() + 2);

  for (const auto& [name, data] : expected) {
    const TensorInfo* t = file.Find(name);
    ASSERT_NE(t, nullptr) << name;
    std::span<const std::byte> got = file.Data(*t);
    ASSERT_EQ(got.size(), data.size()) << name;
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin())) << name;
    // Natural alignment inside the data section.
    EXPECT_EQ(t->begin % DTypeSize(t->dtype), 0u) << name;
    EXPECT_EQ(static_cast<size_t>(t->num_elements()) * DTypeSize(t->dtype), t->num_bytes());
  }
  const TensorInfo* scalar = file.Find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->num_elements(), 1);
  float value = 0;
  std::memcpy(&value, file.Data(*scalar).data(), 4);
  EXPECT_EQ(value, 2.5f);
  const TensorInfo* empty = file.Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->num_elements(), 0);
  EXPECT_EQ(file.Data(*empty).size(), 0u);
  EXPECT_EQ(file.Find("missing"), nullptr);

  // Tensors come in offset order, back to back, covering the data section exactly (the
  // reference reader demands that).
  const std::string bytes = ReadFile(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  uint64_t offset = 0;
  for (const TensorInfo& t : file.tensors()) {
    EXPECT_EQ(t.begin, offset) << t.name;
    offset = t.end;
  }
  EXPECT_EQ(8 + header_len + offset, bytes.size());
  // The data section itself starts 8-aligned.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file.Data(file.tensors()[0]).data()) % 8, 0u);
}

TEST_F(SafetensorsTest, ExpectChecksDTypeAndShape) {
  SafetensorsWriter writer;
  std::vector<float> values(6, 1.0f);
  ASSERT_TRUE(
      writer.AddTensor("w", DType::kF32, {2, 3}, AsBytes(std::span<const float>(values))).ok());
  const std::string path = Path("expect.safetensors");
  ASSERT_TRUE(writer.Write(path).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());

  const int64_t good[] = {2, 3};
  const int64_t bad[] = {3, 2};
  EXPECT_TRUE((*file)->Expect("w", DType::kF32, good).ok());
  EXPECT_TRUE((*file)->Expect("w", DType::kF32, {}, /*check_shape=*/false).ok());

  auto wrong_shape = (*file)->Expect("w", DType::kF32, bad);
  ASSERT_FALSE(wrong_shape.ok());
  EXPECT_THAT(Message(wrong_shape.status()), HasSubstr("shape [2, 3], expected [3, 2]"));
  EXPECT_THAT(Message(wrong_shape.status()), HasSubstr(path));

  auto wrong_dtype = (*file)->Expect("w", DType::kF16, good);
  ASSERT_FALSE(wrong_dtype.ok());
  EXPECT_THAT(Message(wrong_dtype.status()), HasSubstr("dtype F32, expected F16"));

  auto missing = (*file)->Expect("nope", DType::kF32, good);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()), HasSubstr("nope"));
}

TEST_F(SafetensorsTest, WriterRejectsBadTensors) {
  SafetensorsWriter writer;
  std::vector<std::byte> four(4);
  EXPECT_TRUE(writer.AddTensor("a", DType::kU8, {4}, four).ok());
  auto dup = writer.AddTensor("a", DType::kU8, {4}, four);
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(dup), HasSubstr("a added twice"));
  auto size = writer.AddTensor("b", DType::kF32, {2}, four);
  EXPECT_THAT(Message(size), HasSubstr("needs 8 bytes, got 4"));
  auto negative = writer.AddTensor("c", DType::kU8, {-4}, four);
  EXPECT_THAT(Message(negative), HasSubstr("negative"));
  EXPECT_FALSE(writer.AddTensor("__metadata__", DType::kU8, {4}, four).ok());
  // A file in a missing directory cannot be written, and nothing is left behind.
  auto status = writer.Write(Path("no/such/dir/x.safetensors"));
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(Message(status), HasSubstr("no/such/dir/x.safetensors"));
}

TEST_F(SafetensorsTest, WriteReplacesAtomically) {
  const std::string path = Path("replace.safetensors");
  WriteFile(path, "old contents");
  SafetensorsWriter writer;
  std::vector<std::byte> two(2);
  ASSERT_TRUE(writer.AddTensor("x", DType::kU16, {1}, two).ok());
  ASSERT_TRUE(writer.Write(path).ok());
  EXPECT_TRUE(SafetensorsFile::Open(path).ok());
  // No temporary file remains beside it.
  std::vector<std::string> entries;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    entries.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(entries, ::testing::ElementsAre("replace.safetensors"));
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const std::string path = Path("absent.safetensors");
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(file.status()), HasSubstr(path));
}

TEST_F(SafetensorsTest, TruncatedFiles) {
  ExpectOpenFails("", "too short");
  ExpectOpenFails("abc", "too short");
  // The header length points past the end of the file.
  ExpectOpenFails(RawFile(64, "{}", ""), "runs past the end");
  // A valid file cut in the middle of its data.
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  ExpectOpenFails(RawFile(header, std::string(10, 'x')), "outside the 10-byte data section");
}

TEST_F(SafetensorsTest, HeaderLengthTooBig) {
  ExpectOpenFails(RawFile(uint64_t{200'000'000}, "{}", ""), "exceeds");
  ExpectOpenFails(RawFile(~uint64_t{0}, "{}", ""), "exceeds");
}

TEST_F(SafetensorsTest, BadJson) {
  ExpectOpenFails(RawFile("{\"a\": ", ""), "not valid JSON");
  ExpectOpenFails(RawFile("[1, 2]", ""), "does not start with a JSON object");
  ExpectOpenFails(RawFile("{} trailing", ""), "not valid JSON");
  ExpectOpenFails(RawFile(R"({"a": 5})", ""), "tensor a: entry is number");
}

TEST_F(SafetensorsTest, UnknownDType) {
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})", "x"),
                  "tensor a: unknown dtype \"F8\"");
  ExpectOpenFails(RawFile(R"({"a":{"shape":[1],"data_offsets":[0,1]}})", "x"),
                  "tensor a: missing or non-string \"dtype\"");
}

TEST_F(SafetensorsTest, BadShapes) {
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", ""),
                  "tensor a: negative dimension -1");
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "x"),
                  "non-integer");
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":"4","data_offsets":[0,4]}})", "xxxx"),
                  "non-array \"shape\"");
  // Elements overflow 64 bits: 2^40 x 2^40.
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[1099511627776,1099511627776],)"
                          R"("data_offsets":[0,1]}})",
                          "x"),
                  "overflows");
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})", "xxxx"),
                  "tensor a: data_offsets [8, 12] outside the 4-byte data section");
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[3,1]}})", "xxxx"),
                  "reversed");
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[-1,3]}})", "xxxx"),
                  "two non-negative integers");
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", "xxxx"),
                  "two non-negative integers");
}

TEST_F(SafetensorsTest, SizeMismatch) {
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"),
                  "tensor a: data_offsets [0, 4] span 4 bytes, but F32 [2] needs 8");
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                          "xxxxxx"),
                  "tensor b [2, 6] overlaps tensor a [0, 4]");
  // Empty tensors overlap nothing; gaps are tolerated.
  const std::string path = Path("gap.safetensors");
  WriteFile(path, RawFile(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                          R"("e":{"dtype":"U8","shape":[0],"data_offsets":[1,1]},)"
                          R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
                          "xxxxxx"));
  EXPECT_TRUE(SafetensorsFile::Open(path).ok());
}

TEST_F(SafetensorsTest, NonStringMetadata) {
  ExpectOpenFails(RawFile(R"({"__metadata__":{"version":1}})", ""),
                  "__metadata__ value of \"version\" is a JSON number, expected a string");
  ExpectOpenFails(RawFile(R"({"__metadata__":["x"]})", ""), "__metadata__ is a JSON array");
}

TEST_F(SafetensorsTest, HeaderPaddedWithSpacesIsAccepted) {
  const std::string path = Path("padded.safetensors");
  WriteFile(path, RawFile(R"({"__metadata__":{"k":"v"}})"
                          "       ",
                          ""));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << Message(file.status());
  EXPECT_EQ((*file)->metadata().at("k"), "v");
  EXPECT_TRUE((*file)->tensors().empty());
}

// Every single-byte corruption of a small file either opens (and then every tensor's span lies
// inside the file) or fails cleanly; run under the sanitizers this catches out-of-bounds reads.
TEST_F(SafetensorsTest, SingleByteCorruptionsNeverCrash) {
  SafetensorsWriter writer;
  writer.SetMetadata("k", "v");
  std::vector<std::byte> data(24, std::byte{7});
  ASSERT_TRUE(writer.AddTensor("a", DType::kU16, {2, 3}, std::span(data).first(12)).ok());
  ASSERT_TRUE(writer.AddTensor("b", DType::kF32, {3}, std::span(data).first(12)).ok());
  const std::string good_path = Path("good.safetensors");
  ASSERT_TRUE(writer.Write(good_path).ok());
  const std::string good = ReadFile(good_path);
  const std::string path = Path("mutant.safetensors");
  int opened = 0, failed = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    for (char c : {'\0', '9', '"', '}', ',', '-', '\xff'}) {
      std::string mutant = good;
      mutant[i] = c;
      WriteFile(path, mutant);
      auto file = SafetensorsFile::Open(path);
      if (!file.ok()) {
        ++failed;
        EXPECT_THAT(Message(file.status()), HasSubstr(path));
        continue;
      }
      ++opened;
      for (const TensorInfo& t : (*file)->tensors()) {
        EXPECT_LE(t.end, mutant.size());
        EXPECT_EQ(t.num_bytes(), static_cast<uint64_t>(t.num_elements()) * DTypeSize(t.dtype));
      }
    }
  }
  EXPECT_GT(opened, 0);  // data bytes and padding are free to change
  EXPECT_GT(failed, 0);
}

}  // namespace
}  // namespace moe
