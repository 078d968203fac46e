#include "runtime/model_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "runtime/file_util.h"
#include "runtime/status.h"

namespace moe {
namespace {

using Json = nlohmann::json;

// Upper bounds on sizes. Real models are far below them; they exist so that products such as
// vocab x hidden x 4 bytes or 3 x hidden x intermediate x 4 bytes can never overflow 64 bits
// downstream (ModelConfig::ExpertBytes, shape checks, byte counts).
constexpr int64_t kMaxWidth = int64_t{1} << 24;  // hidden, intermediate, vocab, head_dim
constexpr int64_t kMaxCount = int64_t{1} << 16;  // layers, heads
constexpr int64_t kMaxExperts = 65535;           // expert ids must fit the trace's U16
constexpr int64_t kMaxPositions = int64_t{1} << 40;
constexpr uint64_t kMaxConfigBytes = 64ull << 20;

// What differs between the families' config.json files. Everything else has the same name.
struct FamilySpec {
  ModelFamily family;
  std::string_view architecture;  // "architectures"[0]
  std::string_view model_type;
  const char* intermediate_field;  // the routed expert's width
  const char* experts_field;
  // Hugging Face's defaults for fields a config may omit.
  double default_eps;
  double default_rope_theta;
  int64_t default_max_positions;
};

constexpr FamilySpec kFamilies[] = {
    {ModelFamily::kMixtral, "MixtralForCausalLM", "mixtral", "intermediate_size",
     "num_local_experts", 1e-5, 1e6, 4096 * 32},
    {ModelFamily::kQwen2Moe, "Qwen2MoeForCausalLM", "qwen2_moe", "moe_intermediate_size",
     "num_experts", 1e-6, 10000.0, 32768},
};

// A short, always-UTF-8 rendering of a JSON value for messages (never throws).
std::string Show(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// Typed access to the top-level fields of one config object. Every accessor checks the JSON
// type before reading, so a mistyped field is an InvalidArgument naming it, never an exception.
// A field that is present but null counts as absent, as Hugging Face treats it.
class Fields {
 public:
  Fields(const Json& object, std::string_view source) : object_(object), source_(source) {}

  const Json* Get(const char* name) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(const char* name) const { return Get(name) != nullptr; }

  absl::StatusOr<int64_t> Int(const char* name) const {
    const Json* v = Get(name);
    if (v == nullptr) return InvalidArgument("{}: {} is missing", source_, name);
    return ToInt(name, *v);
  }
  absl::StatusOr<int64_t> Int(const char* name, int64_t fallback) const {
    const Json* v = Get(name);
    return v == nullptr ? absl::StatusOr<int64_t>(fallback) : ToInt(name, *v);
  }
  absl::StatusOr<double> Double(const char* name, double fallback) const {
    const Json* v = Get(name);
    if (v == nullptr) return fallback;
    return ToDouble(name, *v);
  }
  absl::StatusOr<bool> Bool(const char* name, bool fallback) const {
    const Json* v = Get(name);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) {
      return InvalidArgument("{}: {} {} is a {}, expected true or false", source_, name, Show(*v),
                             v->type_name());
    }
    return v->get<bool>();
  }
  // nullptr when absent; an error when present but not a string.
  absl::StatusOr<const Json*> String(const char* name) const {
    const Json* v = Get(name);
    if (v != nullptr && !v->is_string()) {
      return InvalidArgument("{}: {} {} is a {}, expected a string", source_, name, Show(*v),
                             v->type_name());
    }
    return v;
  }

  absl::StatusOr<int64_t> ToInt(std::string_view name, const Json& v) const {
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return InvalidArgument("{}: {} {} is too large", source_, name, u);
      }
      return static_cast<int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    return InvalidArgument("{}: {} {} is a {}, expected an integer", source_, name, Show(v),
                           v.is_number() ? "fraction" : v.type_name());
  }
  absl::StatusOr<double> ToDouble(std::string_view name, const Json& v) const {
    if (!v.is_number()) {
      return InvalidArgument("{}: {} {} is a {}, expected a number", source_, name, Show(v),
                             v.type_name());
    }
    const double d = v.get<double>();
    if (!std::isfinite(d))
      return InvalidArgument("{}: {} {} is not finite", source_, name, Show(v));
    return d;
  }

  std::string_view source() const { return source_; }

 private:
  const Json& object_;
  std::string_view source_;
};

absl::StatusOr<const FamilySpec*> DetectFamily(const Fields& f, std::string* architecture) {
  const std::string_view src = f.source();
  MOE_ASSIGN_OR_RETURN(const Json* model_type, f.String("model_type"));
  std::string arch;
  if (const Json* list = f.Get("architectures"); list != nullptr) {
    if (!list->is_array()) {
      return InvalidArgument("{}: architectures {} is a {}, expected a list of strings", src,
                             Show(*list), list->type_name());
    }
    for (const Json& entry : *list) {
      if (!entry.is_string()) {
        return InvalidArgument("{}: architectures {} holds a {}, expected strings", src,
                               Show(*list), entry.type_name());
      }
    }
    if (!list->empty()) arch = (*list)[0].get<std::string>();
  }
  const FamilySpec* spec = nullptr;
  if (!arch.empty()) {
    for (const FamilySpec& s : kFamilies) {
      if (s.architecture == arch) spec = &s;
    }
    if (spec == nullptr) {
      return InvalidArgument(
          "{}: architectures \"{}\" is not supported (supported: MixtralForCausalLM, "
          "Qwen2MoeForCausalLM)",
          src, arch);
    }
    // A model_type naming another family means the file was edited inconsistently; guessing
    // which of the two is right would bind the wrong tensor names.
    if (model_type != nullptr && model_type->get<std::string>() != spec->model_type) {
      return InvalidArgument("{}: model_type {} contradicts architectures \"{}\" (expected \"{}\")",
                             src, Show(*model_type), arch, spec->model_type);
    }
  } else {
    if (model_type == nullptr) {
      return InvalidArgument("{}: neither architectures nor model_type is given", src);
    }
    const std::string type = model_type->get<std::string>();
    for (const FamilySpec& s : kFamilies) {
      if (s.model_type == type) spec = &s;
    }
    if (spec == nullptr) {
      return InvalidArgument("{}: model_type {} is not supported (supported: mixtral, qwen2_moe)",
                             src, Show(*model_type));
    }
    arch = type;
  }
  *architecture = std::move(arch);
  return spec;
}

absl::StatusOr<DType> ParseTorchDtype(const Fields& f) {
  // Transformers 5 writes "dtype"; earlier versions "torch_dtype".
  const char* field = f.Has("torch_dtype") ? "torch_dtype" : "dtype";
  MOE_ASSIGN_OR_RETURN(const Json* value, f.String(field));
  if (value == nullptr) return DType::kBF16;
  const std::string name = value->get<std::string>();
  if (name == "float32") return DType::kF32;
  if (name == "bfloat16") return DType::kBF16;
  if (name == "float16") return DType::kF16;
  return InvalidArgument("{}: {} {} is not supported (float32, bfloat16 or float16)", f.source(),
                         field, Show(*value));
}

// A non-default rotary scaling changes the math; running it as plain RoPE would be silently
// wrong, so refuse it.
absl::Status CheckRopeScaling(const Fields& f, const char* field) {
  const Json* v = f.Get(field);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_object()) {
    return InvalidArgument("{}: {} {} is a {}, expected an object", f.source(), field, Show(*v),
                           v->type_name());
  }
  for (const char* key : {"rope_type", "type"}) {
    auto it = v->find(key);
    if (it == v->end() || it->is_null()) continue;
    if (!it->is_string() || it->get<std::string>() != "default") {
      return absl::UnimplementedError(
          fmt::format("{}: {} type {} is not supported (only default rotary embeddings)",
                      f.source(), field, Show(*it)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<double> ParseRopeTheta(const Fields& f, double fallback) {
  if (f.Has("rope_theta")) return f.Double("rope_theta", fallback);
  // Transformers 5 moves rope_theta into "rope_parameters".
  const Json* params = f.Get("rope_parameters");
  if (params != nullptr && params->is_object()) {
    Fields inner(*params, f.source());
    return inner.Double("rope_theta", fallback);
  }
  return fallback;
}

absl::StatusOr<std::vector<int64_t>> ParseEosIds(const Fields& f) {
  const Json* v = f.Get("eos_token_id");
  std::vector<int64_t> ids;
  if (v == nullptr) return ids;
  if (v->is_array()) {
    for (const Json& e : *v) {
      MOE_ASSIGN_OR_RETURN(int64_t id, f.ToInt("eos_token_id", e));
      ids.push_back(id);
    }
    return ids;
  }
  if (!v->is_number_integer()) {
    return InvalidArgument("{}: eos_token_id {} is a {}, expected an integer or a list of them",
                           f.source(), Show(*v), v->type_name());
  }
  MOE_ASSIGN_OR_RETURN(int64_t id, f.ToInt("eos_token_id", *v));
  ids.push_back(id);
  return ids;
}

absl::Status CheckRange(std::string_view src, const char* field, int64_t value, int64_t lo,
                        int64_t hi) {
  if (value < lo) {
    return InvalidArgument("{}: {} {} must be {}", src, field, value,
                           lo == 1   ? std::string("positive")
                           : lo == 0 ? std::string("non-negative")
                                     : fmt::format("at least {}", lo));
  }
  if (value > hi) return InvalidArgument("{}: {} {} exceeds the limit {}", src, field, value, hi);
  return absl::OkStatus();
}

// Qwen2-MoE specifics: which layers are sparse, attention biases, sliding windows.
absl::Status ParseQwen2Moe(const Fields& f, ModelConfig* c) {
  const std::string_view src = f.source();
  MOE_ASSIGN_OR_RETURN(int64_t step, f.Int("decoder_sparse_step", 1));
  if (step < 1) return InvalidArgument("{}: decoder_sparse_step {} must be positive", src, step);
  if (step != 1) {
    return absl::UnimplementedError(fmt::format(
        "{}: decoder_sparse_step {}: models with dense (non-MoE) decoder layers are not supported",
        src, step));
  }
  if (const Json* dense = f.Get("mlp_only_layers"); dense != nullptr) {
    if (!dense->is_array()) {
      return InvalidArgument("{}: mlp_only_layers {} is a {}, expected a list of layer indices",
                             src, Show(*dense), dense->type_name());
    }
    if (!dense->empty()) {
      return absl::UnimplementedError(fmt::format(
          "{}: mlp_only_layers {}: models with dense (non-MoE) decoder layers are not supported",
          src, Show(*dense)));
    }
  }
  MOE_ASSIGN_OR_RETURN(c->shared_expert_intermediate_size,
                       f.Int("shared_expert_intermediate_size"));
  MOE_RETURN_IF_ERROR(CheckRange(src, "shared_expert_intermediate_size",
                                 c->shared_expert_intermediate_size, 0, kMaxWidth));
  MOE_ASSIGN_OR_RETURN(c->norm_topk_prob, f.Bool("norm_topk_prob", false));
  // Transformers 5 spells the (always-on in 4.x) q/k/v biases out as qkv_bias.
  MOE_ASSIGN_OR_RETURN(c->attention_bias, f.Bool("qkv_bias", true));

  MOE_ASSIGN_OR_RETURN(bool use_sliding, f.Bool("use_sliding_window", false));
  c->sliding_window = 0;
  if (use_sliding) {
    MOE_ASSIGN_OR_RETURN(c->sliding_window, f.Int("sliding_window", 0));
    // Per-layer windows cannot be represented by one ModelConfig::sliding_window. An explicit
    // layer_types list that is uniform is fine; a mixed one is refused.
    if (const Json* types = f.Get("layer_types"); types != nullptr) {
      if (!types->is_array()) {
        return InvalidArgument("{}: layer_types {} is a {}, expected a list of strings", src,
                               Show(*types), types->type_name());
      }
      int sliding = 0, full = 0;
      for (const Json& t : *types) {
        if (t.is_string() && t.get<std::string>() == "sliding_attention") {
          ++sliding;
        } else if (t.is_string() && t.get<std::string>() == "full_attention") {
          ++full;
        } else {
          return InvalidArgument(
              "{}: layer_types {} holds {}, expected \"sliding_attention\" "
              "or \"full_attention\"",
              src, Show(*types), Show(t));
        }
      }
      if (sliding > 0 && full > 0) {
        return absl::UnimplementedError(fmt::format(
            "{}: layer_types {}: mixing sliding-window and full-attention layers is not supported",
            src, Show(*types)));
      }
      if (sliding == 0) c->sliding_window = 0;
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(std::string_view src, const FamilySpec& spec, bool explicit_head_dim,
                      const ModelConfig& c) {
  MOE_RETURN_IF_ERROR(CheckRange(src, "vocab_size", c.vocab_size, 1, kMaxWidth));
  MOE_RETURN_IF_ERROR(CheckRange(src, "hidden_size", c.hidden_size, 1, kMaxWidth));
  MOE_RETURN_IF_ERROR(CheckRange(src, spec.intermediate_field, c.intermediate_size, 1, kMaxWidth));
  MOE_RETURN_IF_ERROR(CheckRange(src, "num_hidden_layers", c.num_layers, 1, kMaxCount));
  MOE_RETURN_IF_ERROR(CheckRange(src, "num_attention_heads", c.num_heads, 1, kMaxCount));
  MOE_RETURN_IF_ERROR(CheckRange(src, "num_key_value_heads", c.num_kv_heads, 1, kMaxCount));
  MOE_RETURN_IF_ERROR(CheckRange(src, spec.experts_field, c.num_experts, 1, kMaxExperts));
  MOE_RETURN_IF_ERROR(CheckRange(src, "num_experts_per_tok", c.top_k, 1, kMaxExperts));
  MOE_RETURN_IF_ERROR(
      CheckRange(src, "max_position_embeddings", c.max_position_embeddings, 1, kMaxPositions));
  if (explicit_head_dim) {
    MOE_RETURN_IF_ERROR(CheckRange(src, "head_dim", c.head_dim, 1, kMaxWidth));
    if (c.head_dim % 2 != 0) {
      return InvalidArgument("{}: head_dim {} must be even (rotary embeddings rotate pairs)", src,
                             c.head_dim);
    }
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return InvalidArgument("{}: num_attention_heads {} does not divide hidden_size {}", src,
                             c.num_heads, c.hidden_size);
    }
    if (c.head_dim % 2 != 0) {
      return InvalidArgument(
          "{}: head_dim {} (hidden_size {} / num_attention_heads {}) must be even (rotary "
          "embeddings rotate pairs)",
          src, c.head_dim, c.hidden_size, c.num_heads);
    }
  }
  // Bounds the projection widths, so their byte sizes cannot overflow either.
  if (c.num_heads * c.head_dim > kMaxWidth) {
    return InvalidArgument("{}: num_attention_heads {} x head_dim {} exceeds the limit {}", src,
                           c.num_heads, c.head_dim, kMaxWidth);
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument("{}: num_key_value_heads {} does not divide num_attention_heads {}", src,
                           c.num_kv_heads, c.num_heads);
  }
  if (c.top_k > c.num_experts) {
    return InvalidArgument("{}: num_experts_per_tok {} exceeds {} {}", src, c.top_k,
                           spec.experts_field, c.num_experts);
  }
  if (!(c.rope_theta > 0)) {
    return InvalidArgument("{}: rope_theta {} must be positive", src, c.rope_theta);
  }
  if (!(c.rms_norm_eps > 0)) {
    return InvalidArgument("{}: rms_norm_eps {} must be positive", src, c.rms_norm_eps);
  }
  if (c.sliding_window < 0) {
    return InvalidArgument("{}: sliding_window {} must be non-negative", src, c.sliding_window);
  }
  if (c.bos_token_id != -1 && (c.bos_token_id < 0 || c.bos_token_id >= c.vocab_size)) {
    return InvalidArgument("{}: bos_token_id {} is outside the vocabulary [0, {})", src,
                           c.bos_token_id, c.vocab_size);
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidArgument("{}: eos_token_id {} is outside the vocabulary [0, {})", src, id,
                             c.vocab_size);
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view ModelFamilyName(ModelFamily family) {
  for (const FamilySpec& s : kFamilies) {
    if (s.family == family) return s.model_type;
  }
  return "?";
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source) {
  const Json json = Json::parse(json_text.begin(), json_text.end(), /*cb=*/nullptr,
                                /*allow_exceptions=*/false);
  if (json.is_discarded()) return InvalidArgument("{}: not valid JSON", source);
  if (!json.is_object()) {
    return InvalidArgument("{}: the config is a JSON {}, expected an object", source,
                           json.type_name());
  }
  const Fields f(json, source);
  ModelConfig c;
  MOE_ASSIGN_OR_RETURN(const FamilySpec* spec, DetectFamily(f, &c.architecture));
  c.family = spec->family;

  // Every family uses SiLU-gated FFNs; another activation would compute something else.
  MOE_ASSIGN_OR_RETURN(const Json* act, f.String("hidden_act"));
  if (act != nullptr && act->get<std::string>() != "silu") {
    return absl::UnimplementedError(
        fmt::format("{}: hidden_act {} is not supported (silu only)", source, Show(*act)));
  }
  MOE_RETURN_IF_ERROR(CheckRopeScaling(f, "rope_scaling"));
  MOE_RETURN_IF_ERROR(CheckRopeScaling(f, "rope_parameters"));

  MOE_ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size"));
  MOE_ASSIGN_OR_RETURN(c.hidden_size, f.Int("hidden_size"));
  MOE_ASSIGN_OR_RETURN(c.intermediate_size, f.Int(spec->intermediate_field));
  MOE_ASSIGN_OR_RETURN(c.num_layers, f.Int("num_hidden_layers"));
  MOE_ASSIGN_OR_RETURN(c.num_heads, f.Int("num_attention_heads"));
  MOE_ASSIGN_OR_RETURN(c.num_kv_heads, f.Int("num_key_value_heads", c.num_heads));
  MOE_ASSIGN_OR_RETURN(c.num_experts, f.Int(spec->experts_field));
  MOE_ASSIGN_OR_RETURN(c.top_k, f.Int("num_experts_per_tok"));
  MOE_ASSIGN_OR_RETURN(c.max_position_embeddings,
                       f.Int("max_position_embeddings", spec->default_max_positions));
  MOE_ASSIGN_OR_RETURN(c.rms_norm_eps, f.Double("rms_norm_eps", spec->default_eps));
  MOE_ASSIGN_OR_RETURN(c.rope_theta, ParseRopeTheta(f, spec->default_rope_theta));
  MOE_ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  MOE_ASSIGN_OR_RETURN(c.dtype, ParseTorchDtype(f));
  MOE_ASSIGN_OR_RETURN(c.bos_token_id, f.Int("bos_token_id", -1));
  MOE_ASSIGN_OR_RETURN(c.eos_token_ids, ParseEosIds(f));

  const bool explicit_head_dim = f.Has("head_dim");
  if (explicit_head_dim) {
    MOE_ASSIGN_OR_RETURN(c.head_dim, f.Int("head_dim"));
  } else if (c.num_heads > 0) {
    c.head_dim = c.hidden_size / c.num_heads;
  }

  switch (c.family) {
    case ModelFamily::kMixtral: {
      MOE_ASSIGN_OR_RETURN(c.sliding_window, f.Int("sliding_window", 0));
      c.norm_topk_prob = true;
      c.attention_bias = false;
      c.shared_expert_intermediate_size = 0;
      break;
    }
    case ModelFamily::kQwen2Moe:
      MOE_RETURN_IF_ERROR(ParseQwen2Moe(f, &c));
      break;
  }
  MOE_RETURN_IF_ERROR(Validate(source, *spec, explicit_head_dim, c));
  return c;
}

absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  MOE_ASSIGN_OR_RETURN(const std::string text,
                       ReadSmallFile(path, kMaxConfigBytes, absl::StatusCode::kInvalidArgument));
  return ParseModelConfig(text, path);
}

}  // namespace moe
