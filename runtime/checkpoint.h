// A Hugging Face checkpoint's tensors: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` ({"weight_map": {tensor name: shard file}}). Every file is
// memory-mapped (no copy) and its header fully validated by SafetensorsFile.
//
// Open checks the index against the shards: every listed shard exists and holds the tensors
// mapped to it, and no tensor appears in two files. Lookups return spans into the mappings,
// valid while the Checkpoint lives. Errors name the file and the tensor.
//
// Thread-safety: immutable after Open; safe to read from many threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/safetensors.h"

namespace moe {

struct CheckpointTensor {
  const TensorInfo* info = nullptr;
  const SafetensorsFile* file = nullptr;
  std::span<const std::byte> data;
};

class Checkpoint {
 public:
  // Called after each file is mapped: (files done, files total, bytes so far).
  using ProgressFn = std::function<void(int done, int total, uint64_t bytes)>;

  // NotFound when `dir` has neither model.safetensors nor the index; DataLoss for malformed files.
  // model.safetensors wins when both exist (as in transformers). DataLoss also covers an index
  // that is not {"weight_map": {string: string}}, names a shard that is not a plain file name
  // in `dir` (no '/', '\\', ".."), names a missing shard, or maps a tensor to a shard that does
  // not hold it, and a tensor stored in two files. A shard tensor absent from the index is only
  // a warning (MOE_LOG) and is still loaded. `progress` bytes count tensor data.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir,
                                                          const ProgressFn& progress = {});

  const std::string& dir() const { return dir_; }
  // nullptr when absent.
  const CheckpointTensor* Find(std::string_view name) const;
  // The tensor `name` with dtype F32, BF16 or F16 and exactly `shape`; NotFound / InvalidArgument
  // naming the file, tensor, found and expected shape otherwise. (NotFound names the single
  // file, or the index of a sharded checkpoint.)
  absl::StatusOr<CheckpointTensor> Expect(std::string_view name,
                                          std::span<const int64_t> shape) const;
  // Every tensor name, sorted.
  std::vector<std::string> TensorNames() const;
  // Sum of all tensors' data bytes (headers excluded).
  uint64_t total_bytes() const { return total_bytes_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  Checkpoint() = default;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, CheckpointTensor> tensors_;
  uint64_t total_bytes_ = 0;
};

}  // namespace moe
