#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "runtime/file_util.h"
#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kSingleFile = "model.safetensors";
constexpr std::string_view kIndexFile = "model.safetensors.index.json";
// Index files of the largest public models are a few MB; anything far larger is corrupt.
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

std::string JoinPath(const std::string& dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  if (dir.back() == '/') return dir + std::string(name);
  return dir + "/" + std::string(name);
}

// 1: a regular file (or something else that is there), 0: absent, error: cannot tell.
absl::StatusOr<bool> PathExists(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  return absl::UnavailableError(fmt::format("cannot stat {}: {}", path, std::strerror(errno)));
}

std::string ShapeString(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// A shard must be a file directly inside the checkpoint directory: an index is untrusted input
// and must not make us map arbitrary files ("../../etc/..." or absolute paths).
bool IsPlainFileName(const std::string& name) {
  if (name.empty() || name.size() > 255) return false;
  if (name.find('/') != std::string::npos || name.find('\\') != std::string::npos) return false;
  if (name.find('\0') != std::string::npos) return false;
  if (name.find("..") != std::string::npos) return false;
  return name != ".";
}

// The index's weight_map: tensor name -> shard file name, validated.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& index_path) {
  MOE_ASSIGN_OR_RETURN(std::string text,
                       ReadSmallFile(index_path, kMaxIndexBytes, absl::StatusCode::kDataLoss));
  const Json json = Json::parse(text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return DataLoss("{}: not valid JSON", index_path);
  if (!json.is_object()) {
    return DataLoss("{}: the index is a JSON {}, expected an object", index_path, json.type_name());
  }
  auto map_it = json.find("weight_map");
  if (map_it == json.end() || !map_it->is_object()) {
    return DataLoss("{}: \"weight_map\" is {}, expected an object of tensor name -> shard file",
                    index_path, map_it == json.end() ? "missing" : map_it->type_name());
  }
  if (map_it->empty()) return DataLoss("{}: weight_map is empty", index_path);
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, shard] : map_it->items()) {
    if (!shard.is_string()) {
      return DataLoss("{}: weight_map entry for tensor {} is a {}, expected a shard file name",
                      index_path, tensor, shard.type_name());
    }
    std::string name = shard.get<std::string>();
    if (!IsPlainFileName(name)) {
      return DataLoss(
          "{}: tensor {} maps to shard \"{}\", which is not a plain file name inside the "
          "checkpoint directory",
          index_path, tensor, name);
    }
    weight_map.emplace(tensor, std::move(name));
  }
  return weight_map;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir,
                                                             const ProgressFn& progress) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = dir;
  const std::string single_path = JoinPath(dir, kSingleFile);
  const std::string index_path = JoinPath(dir, kIndexFile);

  // Like transformers, a single model.safetensors wins over an index.
  MOE_ASSIGN_OR_RETURN(const bool has_single, PathExists(single_path));
  bool has_index = false;
  if (!has_single) {
    MOE_ASSIGN_OR_RETURN(has_index, PathExists(index_path));
  }
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (has_single) {
    shard_names.emplace_back(kSingleFile);
  } else if (has_index) {
    MOE_ASSIGN_OR_RETURN(weight_map, ReadIndex(index_path));
    std::set<std::string> unique;
    for (const auto& [tensor, shard] : weight_map) unique.insert(shard);
    shard_names.assign(unique.begin(), unique.end());
  } else {
    MOE_ASSIGN_OR_RETURN(const bool dir_exists, PathExists(dir));
    if (!dir_exists) return NotFound("checkpoint directory {} does not exist", dir);
    return NotFound("{}: no {} or {} in the checkpoint directory", dir, kSingleFile, kIndexFile);
  }

  const int total = static_cast<int>(shard_names.size());
  uint64_t bytes = 0;
  for (int i = 0; i < total; ++i) {
    const std::string path = JoinPath(dir, shard_names[i]);
    auto file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      if (has_index && absl::IsNotFound(file.status())) {
        // Name one tensor that needs the shard, so the user sees why it was looked for.
        std::string example;
        for (const auto& [tensor, shard] : weight_map) {
          if (shard == shard_names[i]) {
            example = tensor;
            break;
          }
        }
        return DataLoss("{}: shard {} (holding tensor {}) does not exist: {}", index_path,
                        shard_names[i], example, std::string(file.status().message()));
      }
      return file.status();
    }
    for (const TensorInfo& t : (*file)->tensors()) bytes += t.num_bytes();
    ckpt->files_.push_back(std::move(*file));
    if (progress) progress(i + 1, total, bytes);
  }
  ckpt->total_bytes_ = bytes;

  // Every tensor once, across all files.
  for (const auto& file : ckpt->files_) {
    for (const TensorInfo& t : file->tensors()) {
      CheckpointTensor entry{&t, file.get(), file->Data(t)};
      auto [it, inserted] = ckpt->tensors_.emplace(t.name, entry);
      if (!inserted) {
        return DataLoss("{}: tensor {} is also in {} (a tensor may be stored only once)",
                        file->path(), t.name, it->second.file->path());
      }
    }
  }
  if (!has_index) return ckpt;

  // The index and the shards must agree: a mapped tensor lives in exactly its shard.
  for (const auto& [tensor, shard] : weight_map) {
    auto it = ckpt->tensors_.find(tensor);
    if (it == ckpt->tensors_.end()) {
      return DataLoss("{}: tensor {} maps to shard {}, which has no such tensor", index_path,
                      tensor, shard);
    }
    const std::string expected = JoinPath(dir, shard);
    if (it->second.file->path() != expected) {
      return DataLoss("{}: tensor {} maps to shard {}, but it is stored in {}", index_path, tensor,
                      shard, it->second.file->path());
    }
  }
  // Unlisted tensors are harmless (transformers ignores them too) but suggest a stale index.
  size_t unlisted = 0;
  std::string first_unlisted;
  for (const auto& [name, entry] : ckpt->tensors_) {
    if (weight_map.count(name) == 0) {
      if (unlisted++ == 0 || name < first_unlisted) first_unlisted = name;
    }
  }
  if (unlisted > 0) {
    MOE_LOG(kWarning, "{}: {} tensor(s) in the shards are not in weight_map (e.g. {})", index_path,
            unlisted, first_unlisted);
  }
  return ckpt;
}

const CheckpointTensor* Checkpoint::Find(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<CheckpointTensor> Checkpoint::Expect(std::string_view name,
                                                    std::span<const int64_t> shape) const {
  const CheckpointTensor* t = Find(name);
  if (t == nullptr) {
    // Name the one file the tensor should have been in, or the index that lists the shards.
    const std::string where = files_.size() == 1 ? files_[0]->path() : JoinPath(dir_, kIndexFile);
    return NotFound("{}: no tensor {}", where, name);
  }
  const DType dtype = t->info->dtype;
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return InvalidArgument("{}: tensor {}: dtype {}, expected F32, BF16 or F16", t->file->path(),
                           name, DTypeName(dtype));
  }
  if (!std::equal(t->info->shape.begin(), t->info->shape.end(), shape.begin(), shape.end())) {
    return InvalidArgument("{}: tensor {}: shape {}, expected {}", t->file->path(), name,
                           ShapeString(t->info->shape), ShapeString(shape));
  }
  return *t;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace moe
