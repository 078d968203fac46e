#include "runtime/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "fmt/format.h"
#include "runtime/status.h"

namespace moe {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t limit,
                                          absl::StatusCode bad_file_code) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound("{}: no such file", path);
    return absl::UnavailableError(fmt::format("{}: cannot open: {}", path, std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::Status(bad_file_code, fmt::format("{}: not a regular file", path));
  }
  if (static_cast<uint64_t>(st.st_size) > limit) {
    ::close(fd);
    return absl::Status(bad_file_code, fmt::format("{}: {} bytes is too large (limit {} bytes)",
                                                   path, st.st_size, limit));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::read(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      return absl::UnavailableError(fmt::format("{}: read failed: {}", path, std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return text;
}

}  // namespace moe
