// Runs one of the project's executables (from build/bin) as a real process, for CLI tests.
//
// RunTool("moe-run --model X --prompt-ids 1,2") returns the exit code, stdout and stderr.
// stderr goes through a temporary file that is removed afterwards. Not thread-safe (tests run
// their cases one at a time).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"

namespace moe::testing_util {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout
  std::string errors;  // stderr
};

inline CommandResult RunTool(const std::string& command_line) {
  static int counter = 0;
  const std::string err_file =
      (std::filesystem::path(::testing::TempDir()) /
       ("moe_tool_err_" + std::to_string(::getpid()) + "_" + std::to_string(++counter)))
          .string();
  const std::string cmd = std::string(MOE_BIN_DIR) + "/" + command_line + " 2>" + err_file;
  CommandResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  {
    std::ifstream f(err_file);
    r.errors.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::error_code ec;
  std::filesystem::remove(err_file, ec);
  return r;
}

}  // namespace moe::testing_util
