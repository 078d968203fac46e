#include "runtime/generate.h"

#include <algorithm>

#include "runtime/status.h"

namespace moe {

absl::StatusOr<GenerateResult> Generate(Engine& engine, int32_t sequence,
                                        std::span<const int32_t> prompt,
                                        const GenerateOptions& options,
                                        const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) return InvalidArgument("generate: empty prompt");
  if (options.max_tokens < 0) {
    return InvalidArgument("generate: max tokens {} must be >= 0", options.max_tokens);
  }
  MOE_RETURN_IF_ERROR(ValidateSamplingParams(options.sampling));
  const size_t vocab = static_cast<size_t>(engine.model().config.vocab_size);
  std::vector<float> logits(vocab);
  Sampler sampler(options.sampling);
  GenerateResult result;
  const SequenceTokens first{sequence, prompt};
  MOE_RETURN_IF_ERROR(engine.Evaluate({&first, 1}, false, logits));
  while (static_cast<int32_t>(result.tokens.size()) < options.max_tokens) {
    const int32_t next = sampler.Sample(logits);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end()) {
      result.stopped = true;
      break;
    }
    result.tokens.push_back(next);
    if (on_token && !on_token(next)) {
      result.stopped = true;
      break;
    }
    if (static_cast<int32_t>(result.tokens.size()) == options.max_tokens) break;
    const SequenceTokens step{sequence, {&next, 1}};
    MOE_RETURN_IF_ERROR(engine.Evaluate({&step, 1}, false, logits));
  }
  return result;
}

}  // namespace moe
