// Helpers shared by the fuzz targets: an in-memory file reachable by path, so targets that take
// paths (SafetensorsFile::Open, Checkpoint::Open) run without touching the disk per input.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "runtime/model_writer.h"

namespace moe::fuzz {

// A memfd whose content is replaced by each input; path() opens it like a regular file.
class MemFile {
 public:
  explicit MemFile(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  void Set(const uint8_t* data, size_t size) {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

// A fresh directory under $TMPDIR (or /tmp), removed when the process exits normally (libFuzzer
// calls exit() when -max_total_time or -runs is reached).
inline std::string MakeTempDir(const char* tag) {
  static std::vector<std::string>* dirs = new std::vector<std::string>();
  const char* root = std::getenv("TMPDIR");
  std::string dir =
      std::string(root != nullptr && *root != '\0' ? root : "/tmp") + "/" + tag + "_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  if (dirs->empty()) {
    std::atexit([] {
      for (const std::string& d : *dirs) {
        std::error_code ec;
        std::filesystem::remove_all(d, ec);
      }
    });
  }
  dirs->push_back(dir);
  return dir;
}

// The tiny model the checkpoint fuzzers start from (and their seed corpora were made with):
// 1 layer, 2 experts, hidden 4, f16. See docs/checkpoints.md.
inline SyntheticModelOptions TinyFuzzModelOptions() {
  SyntheticModelOptions o;
  o.vocab = 8;
  o.hidden = 4;
  o.intermediate = 4;
  o.layers = 1;
  o.heads = 2;
  o.kv_heads = 1;
  o.experts = 2;
  o.top_k = 1;
  o.max_position = 64;
  o.dtype = DType::kF16;
  return o;
}

}  // namespace moe::fuzz
