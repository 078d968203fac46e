#include "runtime/tokenizer.h"

#include <filesystem>

#include "runtime/sentencepiece_shim.h"
#include "runtime/status.h"

namespace moe {

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return NotFound("{}: tokenizer model not found", path);
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  tok->path_ = path;
  tok->sp_ = std::make_unique<internal::SentencePieceShim>();
  const std::string error = tok->sp_->Load(path);
  if (!error.empty()) return DataLoss("{}: not a SentencePiece model: {}", path, error);
  return tok;
}

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text) const {
  std::vector<int> ids;
  const std::string error = sp_->Encode(text, &ids);
  if (!error.empty()) return InvalidArgument("{}: encoding failed: {}", path_, error);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids) const {
  const int32_t n = vocab_size();
  for (int32_t id : ids) {
    if (id < 0 || id >= n)
      return InvalidArgument("token id {} outside the vocabulary [0, {})", id, n);
  }
  std::string text;
  const std::string error = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!error.empty()) return InvalidArgument("{}: decoding failed: {}", path_, error);
  return text;
}

absl::StatusOr<std::string> Tokenizer::PieceText(int32_t id) const {
  const int32_t one[1] = {id};
  return Decode(one);
}

int32_t Tokenizer::vocab_size() const { return sp_->PieceSize(); }
int32_t Tokenizer::bos_id() const { return sp_->BosId(); }
int32_t Tokenizer::eos_id() const { return sp_->EosId(); }

}  // namespace moe
