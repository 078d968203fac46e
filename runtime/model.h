// A loaded model: validated config, memory-mapped checkpoint, weights bound by name, and the
// tokenizer when the directory has `tokenizer.model`. Immutable after Load and shared by every
// engine (context) created from it.
//
// Thread-safety: immutable; safe to share across threads.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/checkpoint.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"
#include "runtime/tokenizer.h"

namespace moe {

struct Model {
  std::string dir;
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;
  ModelWeights weights;                  // views into the checkpoint mapping
  std::unique_ptr<Tokenizer> tokenizer;  // nullptr when the directory has none

  // Reads config.json, maps the safetensors files (a progress line on stderr for large
  // checkpoints), binds and checks every tensor, loads tokenizer.model if present. Errors name
  // the file and tensor, prefixed with the directory.
  static absl::StatusOr<std::shared_ptr<const Model>> Load(const std::string& dir);
};

}  // namespace moe
