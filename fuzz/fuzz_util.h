// Helpers shared by the fuzz targets: an in-memory file reachable by path, so targets that take
// paths (SafetensorsFile::Open, Checkpoint::Open) run without touching the disk per input.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

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

// A fresh directory under $TMPDIR (or /tmp), for the lifetime of the process.
inline std::string MakeTempDir(const char* tag) {
  const char* root = std::getenv("TMPDIR");
  std::string dir =
      std::string(root != nullptr && *root != '\0' ? root : "/tmp") + "/" + tag + "_XXXXXX";
  if (::mkdtemp(dir.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  return dir;
}

}  // namespace moe::fuzz
