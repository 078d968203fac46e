// moe-cuda-bench's command line (built where nvcc exists): bad flags are one clear error line
// before any GPU is touched, and on a machine without a GPU the run fails with CUDA's reason
// instead of crashing. The benchmark itself runs only on a GPU (scripts/gpu_run.sh).
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/run_tool.h"

namespace moe {
namespace {

using ::testing::HasSubstr;
using testing_util::CommandResult;
using testing_util::RunTool;

void ExpectOneError(const CommandResult& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 2) << r.errors;
  EXPECT_THAT(r.errors, HasSubstr("moe-cuda-bench: error: "));
  EXPECT_THAT(r.errors, HasSubstr(needle));
}

TEST(CudaBenchCli, BadFlagsAreOneClearError) {
  ExpectOneError(RunTool("moe-cuda-bench --sections bogus"), "unknown section 'bogus'");
  ExpectOneError(RunTool("moe-cuda-bench --layers 0"), "--layers and --tokens must be >= 1");
  ExpectOneError(RunTool("moe-cuda-bench --budget lots"), "lots");
  const CommandResult help = RunTool("moe-cuda-bench --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.output, HasSubstr("--trace"));
}

TEST(CudaBenchCli, WithoutAGpuTheRunFailsWithCudasReason) {
  const CommandResult r = RunTool("moe-cuda-bench --sections link --quick");
  if (r.exit_code == 0) GTEST_SKIP() << "a GPU is present: the benchmark ran";
  ExpectOneError(r, "CUDA");
}

}  // namespace
}  // namespace moe
