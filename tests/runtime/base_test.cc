// Status helpers and logging.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe {
namespace {

absl::StatusOr<int> Half(int v) {
  if (v % 2 != 0) return InvalidArgument("{} is odd", v);
  return v / 2;
}

absl::Status Quarter(int v, int* out) {
  MOE_ASSIGN_OR_RETURN(int h, Half(v));
  MOE_ASSIGN_OR_RETURN(*out, Half(h));
  return absl::OkStatus();
}

absl::Status Layered(int v) {
  int out = 0;
  MOE_RETURN_IF_ERROR_CTX(Quarter(v, &out), fmt::format("loading layer {}", 3));
  return absl::OkStatus();
}

TEST(Status, AssignOrReturnPropagatesTheFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  absl::Status st = Quarter(6, &out);  // 6 -> 3 -> odd
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_EQ(std::string(st.message()), "3 is odd");
}

TEST(Status, ContextIsPrependedAndTheCodeKept) {
  absl::Status st = Layered(6);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_EQ(std::string(st.message()), "loading layer 3: 3 is odd");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "ignored").ok());
}

TEST(StatusDeathTest, CheckAbortsWithTheExpression) {
  EXPECT_DEATH(MOE_CHECK_MSG(1 + 1 == 3, "arithmetic is {}", "broken"),
               "check failed.*1 \\+ 1 == 3.*arithmetic is broken");
}

TEST(Logging, LevelFiltersAndSinkReceivesMessages) {
  std::vector<std::string> seen;
  SetLogSink([&](LogLevel level, std::string_view m) {
    seen.push_back(std::string(LogLevelName(level)) + ":" + std::string(m));
  });
  SetLogLevel(LogLevel::kWarning);
  MOE_LOG(kInfo, "hidden {}", 1);
  MOE_LOG(kWarning, "shown {}", 2);
  SetLogLevel(LogLevel::kInfo);
  SetLogSink(nullptr);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], "warning:shown 2");
  LogLevel parsed;
  EXPECT_TRUE(ParseLogLevel("debug", &parsed));
  EXPECT_EQ(parsed, LogLevel::kDebug);
  EXPECT_FALSE(ParseLogLevel("loud", &parsed));
}

}  // namespace
}  // namespace moe
