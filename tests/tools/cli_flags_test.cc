// The shared flag parser and byte-size parsing.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/common/cli_flags.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(ParseByteSize, AcceptsDecimalAndBinaryUnits) {
  EXPECT_EQ(*ParseByteSize("123"), 123u);
  EXPECT_EQ(*ParseByteSize("64k"), 64000u);
  EXPECT_EQ(*ParseByteSize("17.3MB"), 17300000u);
  EXPECT_EQ(*ParseByteSize("2GiB"), 2ull << 30);
  EXPECT_EQ(*ParseByteSize(" 512 MiB "), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("1T"), 1000000000000ull);
}

TEST(ParseByteSize, RejectsNonsenseNamingIt) {
  for (const char* bad : {"", "GB", "12XB", "1..2G", "-5"}) {
    auto r = ParseByteSize(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(std::string("'") + bad + "'"));
  }
}

TEST(FlagSet, ParsesEveryFormAndReportsErrors) {
  std::string name = "x";
  int64_t n = 1;
  double d = 0;
  bool b = false;
  uint64_t bytes = 0;
  FlagSet flags("prog", "test");
  flags.AddString("name", &name, "a name");
  flags.AddInt("n", &n, "a count");
  flags.AddDouble("d", &d, "a ratio");
  flags.AddBool("b", &b, "a switch");
  flags.AddBytes("size", &bytes, "a size");
  const char* argv[] = {"prog", "--name", "y", "--n=7", "--d", "0.5", "--b", "--size=1KiB"};
  ASSERT_TRUE(flags.Parse(8, const_cast<char**>(argv)).ok());
  EXPECT_EQ(name, "y");
  EXPECT_EQ(n, 7);
  EXPECT_DOUBLE_EQ(d, 0.5);
  EXPECT_TRUE(b);
  EXPECT_EQ(bytes, 1024u);
  EXPECT_TRUE(flags.WasSet("n"));
  EXPECT_THAT(flags.Usage(), HasSubstr("--size V"));

  const char* unknown[] = {"prog", "--nope"};
  EXPECT_THAT(std::string(flags.Parse(2, const_cast<char**>(unknown)).message()),
              HasSubstr("unknown flag --nope"));
  const char* missing[] = {"prog", "--n"};
  EXPECT_THAT(std::string(flags.Parse(2, const_cast<char**>(missing)).message()),
              HasSubstr("--n needs a value"));
  const char* bad_bool[] = {"prog", "--b=maybe"};
  EXPECT_THAT(std::string(flags.Parse(2, const_cast<char**>(bad_bool)).message()),
              HasSubstr("'maybe' is not true or false"));
  const char* positional[] = {"prog", "stray"};
  EXPECT_THAT(std::string(flags.Parse(2, const_cast<char**>(positional)).message()),
              HasSubstr("unexpected argument 'stray'"));
  const char* help[] = {"prog", "--help"};
  EXPECT_TRUE(FlagSet::IsHelp(flags.Parse(2, const_cast<char**>(help))));
}

TEST(SplitList, TrimsAndDropsEmptyParts) {
  EXPECT_EQ(SplitList(" a, b,,c ,"), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(SplitList("").empty());
}

}  // namespace
}  // namespace moe
