// Binds a checkpoint's tensors to the model structure, by the family's naming table, checking
// every tensor's presence, dtype and shape against the config before any compute.
//
// Naming tables (model_weights.cc) map a family to its tensor names:
//   mixtral:   model.layers.N.block_sparse_moe.gate.weight, ...experts.E.{w1,w3,w2}.weight
//   qwen2_moe: model.layers.N.mlp.gate.weight, ...mlp.experts.E.{gate,up,down}_proj.weight,
//              ...mlp.shared_expert.{gate,up,down}_proj.weight, ...mlp.shared_expert_gate.weight
// Adding OLMoE or DeepSeek-style names is one more table entry.
//
// Rules: every weight has dtype F32, BF16 or F16; all routed experts share one dtype (so one
// expert's bytes are the same for all, a requirement of the expert cache); an expert tensor
// beyond num_experts ("wrong expert count") is an error; lm_head is absent and aliases the
// embedding when tie_word_embeddings.
//
// The views point into the checkpoint mapping (valid while the Checkpoint lives).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/weight_view.h"
#include "runtime/checkpoint.h"
#include "runtime/model_config.h"

namespace moe {

// One SwiGLU FFN: gate, up [I, H]; down [H, I].
struct FfnWeights {
  WeightView gate;
  WeightView up;
  WeightView down;
};

struct LayerWeights {
  WeightView input_norm;              // [1, H]
  WeightView q, k, v, o;              // q [Hq*D, H], k/v [Hkv*D, H], o [H, Hq*D]
  WeightView q_bias, k_bias, v_bias;  // [1, ...]; absent unless config.attention_bias
  WeightView post_attention_norm;     // [1, H]
  WeightView router;                  // [E, H]
  std::vector<FfnWeights> experts;    // [E]
  FfnWeights shared_expert;           // absent unless shared_expert_intermediate_size > 0
  WeightView shared_expert_gate;      // [1, H]; present with the shared expert
};

struct ModelWeights {
  WeightView embed;       // [V, H]
  WeightView final_norm;  // [1, H]
  WeightView lm_head;     // [V, H]; == embed when tied
  std::vector<LayerWeights> layers;
  DType expert_dtype = DType::kBF16;
  uint64_t expert_bytes = 0;      // gate + up + down of one routed expert
  uint64_t non_expert_bytes = 0;  // every other tensor (lm_head counted once when tied)
};

// Binds every tensor the config calls for. Checks, before returning anything: presence, dtype
// (F32/BF16/F16), exact shape, alignment of the data to the element size (kernels read the
// mapping in place), one dtype for all routed experts, and that no tensor of the checkpoint
// names a layer >= num_layers or an expert >= num_experts. Errors name the file and the
// tensor: NotFound for a missing tensor, InvalidArgument otherwise. Tensors the model does not
// use are logged as a warning, not rejected. Thread-safe (reads only).
absl::StatusOr<ModelWeights> BindModelWeights(const Checkpoint& checkpoint,
                                              const ModelConfig& config);

// A family's tensor names (the naming table; see the top of this header). Patterns contain
// "{layer}" and "{expert}" placeholders; an empty pattern means the family has no such tensor.
struct TensorNaming {
  std::string_view embed;
  std::string_view final_norm;
  std::string_view lm_head;
  std::string_view input_norm;  // per layer from here on
  std::string_view post_attention_norm;
  std::string_view q, k, v, o;
  std::string_view q_bias, k_bias, v_bias;  // used when config.attention_bias
  std::string_view router;
  std::string_view expert_gate, expert_up, expert_down;  // per routed expert
  std::string_view shared_gate, shared_up, shared_down;  // shared expert
  std::string_view shared_expert_gate;
};
const TensorNaming& TensorNamingFor(ModelFamily family);
// `pattern` with "{layer}" and "{expert}" replaced by the decimal numbers.
std::string ExpandTensorName(std::string_view pattern, int64_t layer, int64_t expert = 0);

}  // namespace moe
