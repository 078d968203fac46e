// Text <-> token ids through a SentencePiece model (`tokenizer.model` in the model directory).
//
// Encode returns the pieces' ids without BOS/EOS (callers add BOS as the model expects);
// Decode turns ids back into text. Ids outside [0, vocab_size) are InvalidArgument naming the id.
//
// Thread-safety: const methods are safe to call concurrently (SentencePiece's processor is).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::internal {
class SentencePieceShim;
}

namespace moe {

class Tokenizer {
 public:
  // NotFound when `path` does not exist; DataLoss when it is not a SentencePiece model.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  ~Tokenizer();

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const;
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const;
  // The text of one piece, for streaming output ("▁" shown as a space).
  absl::StatusOr<std::string> PieceText(int32_t id) const;
  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;

 private:
  Tokenizer() = default;
  std::string path_;
  std::unique_ptr<internal::SentencePieceShim> sp_;
};

}  // namespace moe
