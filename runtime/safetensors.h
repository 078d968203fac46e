// Reading and writing safetensors files (https://huggingface.co/docs/safetensors).
//
// Layout: 8-byte little-endian header length N; N bytes of JSON mapping tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the byte after the
// header) plus an optional "__metadata__" object of string -> string; then the data.
//
// SafetensorsFile memory-maps the file read-only and validates the header completely before
// returning: length bound (<= 100 MB and inside the file), valid JSON object, known dtypes,
// non-negative shapes, offsets inside the data section, end - begin == elements x dtype size,
// no two tensors overlapping, metadata values are strings. Every message names the file and the
// tensor. Tensor data is returned as byte spans into the mapping (valid while the object lives).
//
// Gaps between tensors are accepted (the reference reader rejects them; we are more lenient).
// Open fails with NotFound when the file does not exist and DataLoss when its content is
// malformed.
//
// SafetensorsWriter collects tensors and writes a file the reference `safetensors` package
// reads: the header is padded with spaces to a multiple of 8 bytes, so the data section starts
// 8-aligned; tensors are stored back to back (no gaps, as the reference reader demands) in
// order of decreasing element size, so every tensor starts at a multiple of its element size
// (naturally aligned), as the reference writer does.
//
// Thread-safety: a SafetensorsFile is immutable after Open and safe to read from many threads.
// A SafetensorsWriter is a plain value (not thread-safe for mutation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64
};

// "F32", "BF16", ... as spelled in safetensors headers.
std::string_view DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(std::string_view name);
size_t DTypeSize(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the data section
  uint64_t end = 0;

  int64_t num_elements() const;
  uint64_t num_bytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensors in the order of their data offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  std::span<const std::byte> Data(const TensorInfo& tensor) const;

  // Looks up `name` and checks dtype and shape; the error names the file, tensor, and the
  // found vs expected dtype/shape. An empty `shape` with `check_shape` false skips the shape test.
  absl::StatusOr<const TensorInfo*> Expect(std::string_view name, DType dtype,
                                           std::span<const int64_t> shape,
                                           bool check_shape = true) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data section
  std::map<std::string, std::string> metadata_;
  std::vector<TensorInfo> tensors_;
};

class SafetensorsWriter {
 public:
  void SetMetadata(std::string key, std::string value);
  // Copies `data`; InvalidArgument if its size is not elements x dtype size or the name repeats.
  absl::Status AddTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                         std::span<const std::byte> data);
  // Writes to `path` via a temporary file and rename, so a failed write never leaves a torn file.
  absl::Status Write(const std::string& path) const;

 private:
  struct Pending {
    TensorInfo info;
    std::vector<std::byte> data;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Pending> tensors_;
};

// Helper: view a typed span as bytes.
template <typename T>
std::span<const std::byte> AsBytes(std::span<const T> values) {
  return std::as_bytes(values);
}

}  // namespace moe
