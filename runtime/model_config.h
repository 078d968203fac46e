// The model's hyper-parameters, read from a Hugging Face `config.json` and validated.
//
// Supported architectures (ModelFamily): MixtralForCausalLM, Qwen2MoeForCausalLM. Each family's
// config field names and defaults are handled in model_config.cc; everything downstream sees
// only ModelConfig. Validation rejects contradictions with a message naming the file and the
// fields (e.g. "config.json: num_attention_heads 5 does not divide hidden_size 64").
//
// Thread-safety: a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/safetensors.h"

namespace moe {

enum class ModelFamily : uint8_t { kMixtral, kQwen2Moe };
std::string_view ModelFamilyName(ModelFamily family);  // "mixtral", "qwen2_moe"

struct ModelConfig {
  ModelFamily family = ModelFamily::kMixtral;
  std::string architecture;  // as in config.json "architectures"[0] (or model_type)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // of one routed expert (Qwen2-MoE: moe_intermediate_size)
  int64_t num_layers = 0;         // decoder layers; every one has a MoE block
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // config "head_dim" when present, else hidden_size / num_heads
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t max_position_embeddings = 0;
  int64_t sliding_window = 0;  // 0: full attention
  double rms_norm_eps = 1e-5;
  double rope_theta = 1e6;
  bool tie_word_embeddings = false;
  bool norm_topk_prob = true;   // renormalise the k routing weights (Mixtral: always)
  bool attention_bias = false;  // q/k/v projections have biases (Qwen2-MoE: always)
  int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  DType dtype = DType::kBF16;                   // torch_dtype
  std::vector<int64_t> eos_token_ids;           // may be empty
  int64_t bos_token_id = -1;                    // -1: none

  // Bytes of one routed expert's three matrices in dtype `weights`.
  uint64_t ExpertBytes(DType weights) const {
    return 3ull * static_cast<uint64_t>(hidden_size * intermediate_size) * DTypeSize(weights);
  }
};

// Parses and validates config.json text. `source` names the file in messages. InvalidArgument on
// bad JSON, missing or mistyped fields, unsupported architectures or contradictions;
// Unimplemented for valid configs this runtime cannot run (e.g. Qwen2-MoE with dense layers).
// Fields, defaults and limits (widths and vocab <= 2^24, layers and heads <= 2^16, experts <=
// 65535) are listed in docs/checkpoints.md. Never throws, whatever the input.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source);

// Reads `<model_dir>/config.json` (NotFound when absent).
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir);

}  // namespace moe
