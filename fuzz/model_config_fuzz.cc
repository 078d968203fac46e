// Fuzzes ParseModelConfig with arbitrary text: it must return a Status for every input (no
// exception, no crash, no signed overflow), and every config it accepts must satisfy the
// invariants downstream code relies on.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = moe::ParseModelConfig(text, "fuzz/config.json");
  if (!config.ok()) return 0;
  const moe::ModelConfig& c = *config;
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.vocab_size <= 0 || c.num_layers <= 0)
    __builtin_trap();
  if (c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0)
    __builtin_trap();
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) __builtin_trap();
  if (c.top_k < 1 || c.top_k > c.num_experts || c.num_experts > 65535) __builtin_trap();
  if (!(c.rope_theta > 0) || !(c.rms_norm_eps > 0) || c.sliding_window < 0) __builtin_trap();
  if (c.shared_expert_intermediate_size < 0) __builtin_trap();
  // The products the loader computes must not overflow (UBSan checks the arithmetic).
  volatile uint64_t bytes = c.ExpertBytes(moe::DType::kF32);
  volatile int64_t q = c.num_heads * c.head_dim * c.hidden_size;
  volatile int64_t v = c.vocab_size * c.hidden_size * 4;
  (void)bytes;
  (void)q;
  (void)v;
  return 0;
}
