// Only std and SentencePiece headers here: see sentencepiece_shim.h for why.
#include "runtime/sentencepiece_shim.h"

#include "sentencepiece_processor.h"

namespace moe::internal {

struct SentencePieceShim::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceShim::SentencePieceShim() : impl_(std::make_unique<Impl>()) {}
SentencePieceShim::~SentencePieceShim() = default;

std::string SentencePieceShim::Load(const std::string& path) {
  const auto status = impl_->sp.Load(path);
  return status.ok() ? std::string() : status.ToString();
}

std::string SentencePieceShim::Encode(std::string_view text, std::vector<int>* ids) const {
  const auto status = impl_->sp.Encode(text, ids);
  return status.ok() ? std::string() : status.ToString();
}

std::string SentencePieceShim::Decode(const std::vector<int>& ids, std::string* text) const {
  const auto status = impl_->sp.Decode(ids, text);
  return status.ok() ? std::string() : status.ToString();
}

int SentencePieceShim::PieceSize() const { return impl_->sp.GetPieceSize(); }
int SentencePieceShim::BosId() const { return impl_->sp.bos_id(); }
int SentencePieceShim::EosId() const { return impl_->sp.eos_id(); }

}  // namespace moe::internal
