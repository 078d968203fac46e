// Text generation on one sequence of an Engine: prefill the prompt, then decode one token per
// step, choosing each with a Sampler, until a stop token or max_tokens.
//
// The prompt is appended to the sequence's existing context (call Engine::ResetSequence first
// for a fresh start). A stop token is not appended to the output or the context.
//
// Thread-safety: as Engine (one thread at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace moe {

struct GenerateOptions {
  int32_t max_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // e.g. the model's EOS ids; empty: never stop early
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated, excluding the prompt and the stop token
  bool stopped = false;         // ended on a stop token (or the callback), not max_tokens
};

// `on_token` (may be empty) sees each generated token as it is chosen; returning false stops.
// Errors: empty prompt, bad sampling parameters, anything Engine::Evaluate rejects (e.g. the
// context would overflow: generation stops there with OutOfRange).
absl::StatusOr<GenerateResult> Generate(Engine& engine, int32_t sequence,
                                        std::span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                        const std::function<bool(int32_t)>& on_token = {});

}  // namespace moe
