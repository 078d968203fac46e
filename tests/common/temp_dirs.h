// Temporary directories of a test program, removed when the program ends: tests push their
// directories to TempDirCleanup::Dirs(). One environment per program (an inline variable), however
// many test files include this.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe::testing_util {

class TempDirCleanup : public ::testing::Environment {
 public:
  static std::vector<std::string>& Dirs() {
    static std::vector<std::string> dirs;
    return dirs;
  }
  void TearDown() override {
    for (const std::string& dir : Dirs()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
};

inline ::testing::Environment* const kTempDirCleanup =
    ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

}  // namespace moe::testing_util
