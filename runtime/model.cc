#include "runtime/model.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <unistd.h>

#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe {

absl::StatusOr<std::shared_ptr<const Model>> Model::Load(const std::string& dir) {
  auto model = std::make_shared<Model>();
  model->dir = dir;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return NotFound("{}: model directory not found", dir);
  }
  MOE_ASSIGN_OR_RETURN(model->config, ReadModelConfig(dir));
  const auto start = std::chrono::steady_clock::now();
  // Mapping is cheap; the progress line matters for many-shard checkpoints on slow disks.
  // Only for checkpoints large enough to take a while (or when a person watches a terminal).
  bool printed = false;
  const bool tty = isatty(STDERR_FILENO) != 0;
  auto progress = [&](int done, int total, uint64_t bytes) {
    if (total < 2 || (!tty && bytes < (1ull << 30))) return;
    std::fprintf(stderr, "\rloading %s: shard %d/%d (%.1f GB)", dir.c_str(), done, total,
                 static_cast<double>(bytes) / 1e9);
    printed = true;
  };
  auto checkpoint = Checkpoint::Open(dir, progress);
  if (printed) std::fprintf(stderr, "\n");
  if (!checkpoint.ok()) return checkpoint.status();
  model->checkpoint = *std::move(checkpoint);
  MOE_ASSIGN_OR_RETURN(model->weights, BindModelWeights(*model->checkpoint, model->config));
  const std::string tokenizer_path = (std::filesystem::path(dir) / "tokenizer.model").string();
  if (std::filesystem::exists(tokenizer_path, ec)) {
    MOE_ASSIGN_OR_RETURN(model->tokenizer, Tokenizer::Load(tokenizer_path));
    if (model->tokenizer->vocab_size() > model->config.vocab_size) {
      return InvalidArgument("{}: tokenizer has {} pieces, more than vocab_size {}", tokenizer_path,
                             model->tokenizer->vocab_size(), model->config.vocab_size);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MOE_LOG(kInfo,
          "loaded {}: {} layers x {} experts, {:.1f} MB of experts, {:.1f} MB other, {:.2f} s", dir,
          model->config.num_layers, model->config.num_experts,
          model->weights.expert_bytes * model->config.num_layers * model->config.num_experts / 1e6,
          model->weights.non_expert_bytes / 1e6, seconds);
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace moe
