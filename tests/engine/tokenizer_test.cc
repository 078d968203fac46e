// The SentencePiece tokenizer against the Python sentencepiece package: ids, pieces and decoded
// text recorded by scripts/golden/make_golden.py in tests/data/golden/tokenizer_cases.json.
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer.h"

namespace moe {
namespace {

const std::string kGolden = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/";

TEST(Tokenizer, MatchesPythonSentencePiece) {
  auto tok = Tokenizer::Load(kGolden + "mixtral-tiny-f32/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::ifstream in(kGolden + "tokenizer_cases.json");
  ASSERT_TRUE(in.good());
  const nlohmann::json cases = nlohmann::json::parse(in);
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    auto ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>());
    auto decoded = (*tok)->Decode(*ids);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
  }
  EXPECT_EQ((*tok)->vocab_size(), 1000);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
}

TEST(Tokenizer, BadFilesAndIdsGiveClearErrors) {
  auto missing = Tokenizer::Load("/nonexistent/tokenizer.model");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  // Any non-SentencePiece file: the model's config.json.
  auto garbage = Tokenizer::Load(kGolden + "mixtral-tiny-f32/config.json");
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(std::string(garbage.status().message()).find("config.json"), std::string::npos);
  auto tok = Tokenizer::Load(kGolden + "mixtral-tiny-f32/tokenizer.model");
  ASSERT_TRUE(tok.ok());
  const int32_t bad[] = {5, 1000};
  auto text = (*tok)->Decode(bad);
  ASSERT_FALSE(text.ok());
  EXPECT_NE(std::string(text.status().message()).find("1000"), std::string::npos);
}

}  // namespace
}  // namespace moe
