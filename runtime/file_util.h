// Reading small text files (config.json, shard indexes) whole, with a size bound.
//
// Thread-safety: a pure function.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

// The bytes of `path`. NotFound when it does not exist; `bad_file_code` (with a message naming
// the path) when it is not a regular file or is larger than `limit` bytes; Unavailable on I/O
// errors.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, uint64_t limit,
                                          absl::StatusCode bad_file_code);

}  // namespace moe
