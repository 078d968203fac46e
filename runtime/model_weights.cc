#include "runtime/model_weights.h"

#include <array>
#include <set>
#include <string>

#include "fmt/format.h"
#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe {
namespace {

// One table per family. Adding a family (OLMoE: mlp.experts.E.{gate,up,down}_proj and no
// shared expert; DeepSeek: mlp.shared_experts.*) is one more entry here plus its config.json
// parsing in model_config.cc.
constexpr TensorNaming kMixtralNaming = {
    .embed = "model.embed_tokens.weight",
    .final_norm = "model.norm.weight",
    .lm_head = "lm_head.weight",
    .input_norm = "model.layers.{layer}.input_layernorm.weight",
    .post_attention_norm = "model.layers.{layer}.post_attention_layernorm.weight",
    .q = "model.layers.{layer}.self_attn.q_proj.weight",
    .k = "model.layers.{layer}.self_attn.k_proj.weight",
    .v = "model.layers.{layer}.self_attn.v_proj.weight",
    .o = "model.layers.{layer}.self_attn.o_proj.weight",
    .q_bias = "",
    .k_bias = "",
    .v_bias = "",
    .router = "model.layers.{layer}.block_sparse_moe.gate.weight",
    .expert_gate = "model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight",
    .expert_up = "model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight",
    .expert_down = "model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight",
    .shared_gate = "",
    .shared_up = "",
    .shared_down = "",
    .shared_expert_gate = "",
};

constexpr TensorNaming kQwen2MoeNaming = {
    .embed = "model.embed_tokens.weight",
    .final_norm = "model.norm.weight",
    .lm_head = "lm_head.weight",
    .input_norm = "model.layers.{layer}.input_layernorm.weight",
    .post_attention_norm = "model.layers.{layer}.post_attention_layernorm.weight",
    .q = "model.layers.{layer}.self_attn.q_proj.weight",
    .k = "model.layers.{layer}.self_attn.k_proj.weight",
    .v = "model.layers.{layer}.self_attn.v_proj.weight",
    .o = "model.layers.{layer}.self_attn.o_proj.weight",
    .q_bias = "model.layers.{layer}.self_attn.q_proj.bias",
    .k_bias = "model.layers.{layer}.self_attn.k_proj.bias",
    .v_bias = "model.layers.{layer}.self_attn.v_proj.bias",
    .router = "model.layers.{layer}.mlp.gate.weight",
    .expert_gate = "model.layers.{layer}.mlp.experts.{expert}.gate_proj.weight",
    .expert_up = "model.layers.{layer}.mlp.experts.{expert}.up_proj.weight",
    .expert_down = "model.layers.{layer}.mlp.experts.{expert}.down_proj.weight",
    .shared_gate = "model.layers.{layer}.mlp.shared_expert.gate_proj.weight",
    .shared_up = "model.layers.{layer}.mlp.shared_expert.up_proj.weight",
    .shared_down = "model.layers.{layer}.mlp.shared_expert.down_proj.weight",
    .shared_expert_gate = "model.layers.{layer}.mlp.shared_expert_gate.weight",
};

constexpr std::string_view kLayerKey = "{layer}";
constexpr std::string_view kExpertKey = "{expert}";

// Matches `name` against a naming pattern; placeholders match 1-18 decimal digits. A field not
// in the pattern stays -1.
bool MatchPattern(std::string_view pattern, std::string_view name, int64_t* layer,
                  int64_t* expert) {
  *layer = -1;
  *expert = -1;
  size_t p = 0, n = 0;
  while (p < pattern.size()) {
    int64_t* field = nullptr;
    size_t key_len = 0;
    if (pattern.substr(p, kLayerKey.size()) == kLayerKey) {
      field = layer;
      key_len = kLayerKey.size();
    } else if (pattern.substr(p, kExpertKey.size()) == kExpertKey) {
      field = expert;
      key_len = kExpertKey.size();
    }
    if (field == nullptr) {
      if (n >= name.size() || name[n] != pattern[p]) return false;
      ++p;
      ++n;
      continue;
    }
    int64_t value = 0;
    size_t digits = 0;
    while (n < name.size() && name[n] >= '0' && name[n] <= '9' && digits < 18) {
      value = value * 10 + (name[n] - '0');
      ++n;
      ++digits;
    }
    if (digits == 0) return false;
    *field = value;
    p += key_len;
  }
  return n == name.size();
}

// Binds tensors one by one (Expect plus an alignment check), remembering which names it used.
class Binder {
 public:
  explicit Binder(const Checkpoint& checkpoint) : ckpt_(checkpoint) {}

  // A [rows, cols] matrix.
  absl::StatusOr<WeightView> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    const int64_t shape[2] = {rows, cols};
    return Bind(name, shape, rows, cols);
  }
  // A [n] vector, viewed as rows == 1.
  absl::StatusOr<WeightView> Vector(const std::string& name, int64_t n) {
    const int64_t shape[1] = {n};
    return Bind(name, shape, 1, n);
  }

  const std::set<std::string>& used() const { return used_; }

 private:
  absl::StatusOr<WeightView> Bind(const std::string& name, std::span<const int64_t> shape,
                                  int64_t rows, int64_t cols) {
    MOE_ASSIGN_OR_RETURN(CheckpointTensor t, ckpt_.Expect(name, shape));
    const size_t elem = DTypeSize(t.info->dtype);
    // Kernels reinterpret the mapping as float / uint16_t arrays; a misaligned tensor (possible
    // in files from writers that do not pad the header) would be undefined behaviour there.
    if (reinterpret_cast<uintptr_t>(t.data.data()) % elem != 0) {
      return InvalidArgument(
          "{}: tensor {}: data at offset {} of the data section is not aligned to its {}-byte "
          "elements",
          t.file->path(), name, t.info->begin, elem);
    }
    used_.insert(name);
    return WeightView{t.data.data(), t.info->dtype, rows, cols};
  }

  const Checkpoint& ckpt_;
  std::set<std::string> used_;
};

// Scans every checkpoint tensor name against the per-layer patterns: a tensor for a layer or
// an expert beyond the config means config and checkpoint disagree on the model's shape, which
// binding by name alone would silently ignore.
absl::Status CheckLayerAndExpertCounts(const Checkpoint& ckpt, const ModelConfig& config,
                                       const TensorNaming& names) {
  const std::array<std::string_view, 3> expert_patterns = {names.expert_gate, names.expert_up,
                                                           names.expert_down};
  const std::string_view layer_patterns[] = {names.input_norm,
                                             names.post_attention_norm,
                                             names.q,
                                             names.k,
                                             names.v,
                                             names.o,
                                             names.q_bias,
                                             names.k_bias,
                                             names.v_bias,
                                             names.router,
                                             names.expert_gate,
                                             names.expert_up,
                                             names.expert_down,
                                             names.shared_gate,
                                             names.shared_up,
                                             names.shared_down,
                                             names.shared_expert_gate};
  for (const std::string& name : ckpt.TensorNames()) {
    int64_t layer = -1, expert = -1;
    for (std::string_view pattern : expert_patterns) {
      if (pattern.empty() || !MatchPattern(pattern, name, &layer, &expert)) continue;
      if (expert >= config.num_experts) {
        const CheckpointTensor* t = ckpt.Find(name);
        return InvalidArgument(
            "{}: tensor {}: expert {} but the config has {} experts per layer (wrong expert "
            "count)",
            t->file->path(), name, expert, config.num_experts);
      }
    }
    for (std::string_view pattern : layer_patterns) {
      if (pattern.empty() || !MatchPattern(pattern, name, &layer, &expert)) continue;
      if (layer >= config.num_layers) {
        const CheckpointTensor* t = ckpt.Find(name);
        return InvalidArgument(
            "{}: tensor {}: layer {} but the config has {} layers (wrong layer count)",
            t->file->path(), name, layer, config.num_layers);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

const TensorNaming& TensorNamingFor(ModelFamily family) {
  switch (family) {
    case ModelFamily::kMixtral:
      return kMixtralNaming;
    case ModelFamily::kQwen2Moe:
      return kQwen2MoeNaming;
  }
  return kMixtralNaming;
}

std::string ExpandTensorName(std::string_view pattern, int64_t layer, int64_t expert) {
  std::string out;
  out.reserve(pattern.size() + 8);
  size_t p = 0;
  while (p < pattern.size()) {
    if (pattern.substr(p, kLayerKey.size()) == kLayerKey) {
      out += std::to_string(layer);
      p += kLayerKey.size();
    } else if (pattern.substr(p, kExpertKey.size()) == kExpertKey) {
      out += std::to_string(expert);
      p += kExpertKey.size();
    } else {
      out += pattern[p++];
    }
  }
  return out;
}

absl::StatusOr<ModelWeights> BindModelWeights(const Checkpoint& checkpoint,
                                              const ModelConfig& config) {
  const TensorNaming& names = TensorNamingFor(config.family);
  MOE_RETURN_IF_ERROR(CheckLayerAndExpertCounts(checkpoint, config, names));

  const int64_t hidden = config.hidden_size;
  const int64_t q_width = config.num_heads * config.head_dim;
  const int64_t kv_width = config.num_kv_heads * config.head_dim;
  const int64_t inter = config.intermediate_size;
  const int64_t shared_inter = config.shared_expert_intermediate_size;
  const bool has_shared = shared_inter > 0 && !names.shared_gate.empty();
  Binder b(checkpoint);
  ModelWeights w;
  uint64_t non_expert = 0;
  auto bind = [&non_expert](absl::StatusOr<WeightView> view, WeightView* out) -> absl::Status {
    if (!view.ok()) return view.status();
    *out = *view;
    non_expert += out->num_bytes();
    return absl::OkStatus();
  };

  MOE_RETURN_IF_ERROR(
      bind(b.Matrix(std::string(names.embed), config.vocab_size, hidden), &w.embed));
  MOE_RETURN_IF_ERROR(bind(b.Vector(std::string(names.final_norm), hidden), &w.final_norm));
  if (config.tie_word_embeddings) {
    w.lm_head = w.embed;  // counted once, with the embedding
  } else {
    MOE_RETURN_IF_ERROR(
        bind(b.Matrix(std::string(names.lm_head), config.vocab_size, hidden), &w.lm_head));
  }

  bool have_expert_dtype = false;
  std::string first_expert;  // the tensor that fixed the expert dtype, for messages
  w.layers.resize(static_cast<size_t>(config.num_layers));
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    auto name = [l](std::string_view pattern) { return ExpandTensorName(pattern, l); };
    MOE_RETURN_IF_ERROR(bind(b.Vector(name(names.input_norm), hidden), &lw.input_norm));
    MOE_RETURN_IF_ERROR(bind(b.Matrix(name(names.q), q_width, hidden), &lw.q));
    MOE_RETURN_IF_ERROR(bind(b.Matrix(name(names.k), kv_width, hidden), &lw.k));
    MOE_RETURN_IF_ERROR(bind(b.Matrix(name(names.v), kv_width, hidden), &lw.v));
    MOE_RETURN_IF_ERROR(bind(b.Matrix(name(names.o), hidden, q_width), &lw.o));
    if (config.attention_bias) {
      if (names.q_bias.empty()) {
        return InvalidArgument("family {} has no attention bias tensors in its naming table",
                               ModelFamilyName(config.family));
      }
      MOE_RETURN_IF_ERROR(bind(b.Vector(name(names.q_bias), q_width), &lw.q_bias));
      MOE_RETURN_IF_ERROR(bind(b.Vector(name(names.k_bias), kv_width), &lw.k_bias));
      MOE_RETURN_IF_ERROR(bind(b.Vector(name(names.v_bias), kv_width), &lw.v_bias));
    }
    MOE_RETURN_IF_ERROR(
        bind(b.Vector(name(names.post_attention_norm), hidden), &lw.post_attention_norm));
    MOE_RETURN_IF_ERROR(bind(b.Matrix(name(names.router), config.num_experts, hidden), &lw.router));

    lw.experts.resize(static_cast<size_t>(config.num_experts));
    for (int64_t e = 0; e < config.num_experts; ++e) {
      FfnWeights& f = lw.experts[static_cast<size_t>(e)];
      const std::string gate = ExpandTensorName(names.expert_gate, l, e);
      const std::string up = ExpandTensorName(names.expert_up, l, e);
      const std::string down = ExpandTensorName(names.expert_down, l, e);
      MOE_ASSIGN_OR_RETURN(f.gate, b.Matrix(gate, inter, hidden));
      MOE_ASSIGN_OR_RETURN(f.up, b.Matrix(up, inter, hidden));
      MOE_ASSIGN_OR_RETURN(f.down, b.Matrix(down, hidden, inter));
      // The expert cache gives every expert a slot of one size, so all experts must share one
      // dtype; a checkpoint mixing them (e.g. a partial conversion) is refused here.
      for (const auto& [tensor, view] :
           {std::pair{&gate, &f.gate}, std::pair{&up, &f.up}, std::pair{&down, &f.down}}) {
        if (!have_expert_dtype) {
          have_expert_dtype = true;
          w.expert_dtype = view->dtype;
          first_expert = *tensor;
        } else if (view->dtype != w.expert_dtype) {
          return InvalidArgument(
              "{}: tensor {}: dtype {}, but {} is {} (all routed experts must share one dtype)",
              checkpoint.Find(*tensor)->file->path(), *tensor, DTypeName(view->dtype), first_expert,
              DTypeName(w.expert_dtype));
        }
      }
    }

    if (has_shared) {
      MOE_RETURN_IF_ERROR(
          bind(b.Matrix(name(names.shared_gate), shared_inter, hidden), &lw.shared_expert.gate));
      MOE_RETURN_IF_ERROR(
          bind(b.Matrix(name(names.shared_up), shared_inter, hidden), &lw.shared_expert.up));
      MOE_RETURN_IF_ERROR(
          bind(b.Matrix(name(names.shared_down), hidden, shared_inter), &lw.shared_expert.down));
      MOE_RETURN_IF_ERROR(
          bind(b.Matrix(name(names.shared_expert_gate), 1, hidden), &lw.shared_expert_gate));
    }
  }
  w.expert_bytes = config.ExpertBytes(w.expert_dtype);
  w.non_expert_bytes = non_expert;

  // Unused tensors are not an error (old checkpoints carry rotary inv_freq buffers, tied models
  // sometimes keep lm_head), but a surprising count points at a naming-table mismatch.
  size_t unused = 0;
  std::string first_unused;
  for (const std::string& n : checkpoint.TensorNames()) {
    if (b.used().count(n) != 0) continue;
    if (config.tie_word_embeddings && n == names.lm_head) continue;
    if (unused++ == 0) first_unused = n;
  }
  if (unused > 0) {
    MOE_LOG(kWarning, "checkpoint {}: {} tensor(s) not used by the {} model (e.g. {})",
            checkpoint.dir(), unused, ModelFamilyName(config.family), first_unused);
  }
  return w;
}

}  // namespace moe
