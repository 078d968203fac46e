// A thin wrapper that keeps <sentencepiece_processor.h> in one translation unit.
//
// Why: that header declares `namespace absl { using std::string_view; }`, which collides with
// the real Abseil's absl::string_view (Debian's Abseil has its own class). Nothing that
// includes an Abseil header may include it, so the tokenizer talks to SentencePiece through this
// std-only interface. Errors come back as text; the caller turns them into Statuses.
//
// Thread-safety: const methods are safe to call concurrently (SentencePiece's processor is).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::internal {

class SentencePieceShim {
 public:
  SentencePieceShim();
  ~SentencePieceShim();
  // Empty string on success, else SentencePiece's message.
  std::string Load(const std::string& path);
  std::string Encode(std::string_view text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;
  int PieceSize() const;
  int BosId() const;
  int EosId() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::internal
