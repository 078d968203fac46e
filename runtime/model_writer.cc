#include "runtime/model_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "runtime/model_weights.h"
#include "runtime/status.h"

namespace moe {
namespace {

using Json = nlohmann::json;

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr size_t kChunkElements = size_t{1} << 20;
// The common offset of embedding values; hidden states inherit it, and the router's
// per-expert bias acts along it (see the header comment).
constexpr float kEmbedOffset = 0.5f;
// After RMSNorm, an embedding U(-1, 1) + 0.5 has mean about 0.52 per element, so a router row
// with a constant c per element adds about 0.52 * hidden * c to that expert's logit.
constexpr float kMeanAfterNorm = 0.52f;
// Written as the transformers version whose config.json layout we reproduce.
constexpr const char* kTransformersVersion = "4.46.3";

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

// The i-th output of splitmix64 seeded with `key`, mapped to [-1, 1) with 24 bits.
float Uniform(uint64_t key, uint64_t i) {
  const uint64_t z = Mix64(key + (i + 1) * kGolden);
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even (values here are finite)
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u)
    return static_cast<uint16_t>(sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to infinity
  if (abs < 0x38800000u) {
    // Below the smallest normal half (2^-14): the subnormal's mantissa is |f| * 2^24, rounded
    // to nearest even (exact scaling by a power of two, then the default rounding mode).
    float a;
    std::memcpy(&a, &abs, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  const uint32_t rounded = abs + 0xFFFu + ((abs >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

enum class Init : uint8_t { kLinear, kNorm, kBias, kEmbed, kRouter };

struct TensorPlan {
  std::string name;
  std::vector<int64_t> shape;
  Init init = Init::kLinear;
  int layer = 0;
  uint64_t elements = 0;
  uint64_t bytes = 0;
};

absl::Status ValidateOptions(const SyntheticModelOptions& o) {
  const std::pair<const char*, int64_t> positive[] = {
      {"vocab", o.vocab},     {"hidden", o.hidden}, {"intermediate", o.intermediate},
      {"layers", o.layers},   {"heads", o.heads},   {"kv_heads", o.kv_heads},
      {"experts", o.experts}, {"top_k", o.top_k},   {"max_position", o.max_position}};
  for (const auto& [name, value] : positive) {
    if (value < 1) return InvalidArgument("{} {} must be positive", name, value);
  }
  if (o.hidden % o.heads != 0) {
    return InvalidArgument("heads {} does not divide hidden {}", o.heads, o.hidden);
  }
  if ((o.hidden / o.heads) % 2 != 0) {
    return InvalidArgument("head dimension {} (hidden {} / heads {}) must be even",
                           o.hidden / o.heads, o.hidden, o.heads);
  }
  if (o.heads % o.kv_heads != 0) {
    return InvalidArgument("kv_heads {} does not divide heads {}", o.kv_heads, o.heads);
  }
  if (o.top_k > o.experts) {
    return InvalidArgument("top_k {} exceeds experts {}", o.top_k, o.experts);
  }
  if (o.shared_expert_intermediate < 0) {
    return InvalidArgument("shared_expert_intermediate {} must be non-negative",
                           o.shared_expert_intermediate);
  }
  if (o.family == ModelFamily::kMixtral && o.shared_expert_intermediate != 0) {
    return InvalidArgument("shared_expert_intermediate {}: mixtral has no shared expert",
                           o.shared_expert_intermediate);
  }
  if (o.family == ModelFamily::kMixtral && o.norm_topk_prob) {
    return InvalidArgument("norm_topk_prob: mixtral always renormalises (qwen2_moe only)");
  }
  if (o.sliding_window < 0) {
    return InvalidArgument("sliding_window {} must be non-negative", o.sliding_window);
  }
  if (!(o.rope_theta > 0) || !std::isfinite(o.rope_theta)) {
    return InvalidArgument("rope_theta {} must be positive", o.rope_theta);
  }
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16 && o.dtype != DType::kF16) {
    return InvalidArgument("dtype {} is not F32, BF16 or F16", DTypeName(o.dtype));
  }
  if (o.shards < 1 || o.shards > 99999) {
    return InvalidArgument("shards {} must be in [1, 99999]", o.shards);
  }
  if (!std::isfinite(o.router_scale) || !std::isfinite(o.router_skew) || o.router_scale < 0 ||
      o.router_skew < 0) {
    return InvalidArgument("router_scale {} and router_skew {} must be finite and non-negative",
                           o.router_scale, o.router_skew);
  }
  return absl::OkStatus();
}

std::string TorchDtypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    default:
      return "bfloat16";
  }
}

// config.json as transformers 4.4x's save_pretrained writes it for the family (every field of
// the config class, sorted keys).
Json MakeConfigJson(const SyntheticModelOptions& o) {
  Json j = Json::object();
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = std::min<int64_t>(1, o.vocab - 1);
  j["eos_token_id"] = std::min<int64_t>(2, o.vocab - 1);
  j["hidden_act"] = "silu";
  j["hidden_size"] = o.hidden;
  j["initializer_range"] = 0.02;
  j["max_position_embeddings"] = o.max_position;
  j["num_attention_heads"] = o.heads;
  j["num_experts_per_tok"] = o.top_k;
  j["num_hidden_layers"] = o.layers;
  j["num_key_value_heads"] = o.kv_heads;
  j["output_router_logits"] = false;
  j["rope_theta"] = o.rope_theta;
  j["tie_word_embeddings"] = o.tie_embeddings;
  j["torch_dtype"] = TorchDtypeName(o.dtype);
  j["transformers_version"] = kTransformersVersion;
  j["use_cache"] = true;
  j["vocab_size"] = o.vocab;
  switch (o.family) {
    case ModelFamily::kMixtral:
      j["architectures"] = {"MixtralForCausalLM"};
      j["model_type"] = "mixtral";
      j["intermediate_size"] = o.intermediate;
      j["num_local_experts"] = o.experts;
      j["rms_norm_eps"] = 1e-5;
      j["router_aux_loss_coef"] = 0.02;
      j["router_jitter_noise"] = 0.0;
      j["sliding_window"] = o.sliding_window > 0 ? Json(o.sliding_window) : Json(nullptr);
      break;
    case ModelFamily::kQwen2Moe:
      j["architectures"] = {"Qwen2MoeForCausalLM"};
      j["model_type"] = "qwen2_moe";
      j["decoder_sparse_step"] = 1;
      // The dense-MLP width (used only by mlp_only_layers, which we never write); Qwen1.5-MoE
      // sets it equal to the shared expert's.
      j["intermediate_size"] =
          o.shared_expert_intermediate > 0 ? o.shared_expert_intermediate : o.intermediate;
      j["mlp_only_layers"] = Json::array();
      j["moe_intermediate_size"] = o.intermediate;
      j["norm_topk_prob"] = o.norm_topk_prob;
      j["num_experts"] = o.experts;
      j["rms_norm_eps"] = 1e-6;
      j["rope_scaling"] = nullptr;
      j["router_aux_loss_coef"] = 0.001;
      j["shared_expert_intermediate_size"] = o.shared_expert_intermediate;
      j["use_sliding_window"] = o.sliding_window > 0;
      if (o.sliding_window > 0) {
        j["sliding_window"] = o.sliding_window;
        // Transformers 4.x slides layers >= max_window_layers; 5.x follows layer_types. Both
        // spelled out so every version applies the window to every layer.
        j["max_window_layers"] = 0;
        j["layer_types"] =
            std::vector<std::string>(static_cast<size_t>(o.layers), "sliding_attention");
      } else {
        j["sliding_window"] = nullptr;
        j["max_window_layers"] = o.layers;
      }
      break;
  }
  return j;
}

// Every tensor of the model, in checkpoint order (embedding, layers, final norm, lm_head).
std::vector<TensorPlan> PlanTensors(const ModelConfig& c) {
  const TensorNaming& n = TensorNamingFor(c.family);
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size, shared = c.shared_expert_intermediate_size;
  std::vector<TensorPlan> plan;
  auto add = [&plan](std::string name, std::vector<int64_t> shape, Init init, int64_t layer) {
    TensorPlan t{std::move(name), std::move(shape), init, static_cast<int>(layer), 1, 0};
    for (int64_t d : t.shape) t.elements *= static_cast<uint64_t>(d);
    plan.push_back(std::move(t));
  };
  add(std::string(n.embed), {c.vocab_size, h}, Init::kEmbed, 0);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto name = [l](std::string_view pattern) { return ExpandTensorName(pattern, l); };
    add(name(n.input_norm), {h}, Init::kNorm, l);
    add(name(n.q), {q, h}, Init::kLinear, l);
    add(name(n.k), {kv, h}, Init::kLinear, l);
    add(name(n.v), {kv, h}, Init::kLinear, l);
    add(name(n.o), {h, q}, Init::kLinear, l);
    if (c.attention_bias) {
      add(name(n.q_bias), {q}, Init::kBias, l);
      add(name(n.k_bias), {kv}, Init::kBias, l);
      add(name(n.v_bias), {kv}, Init::kBias, l);
    }
    add(name(n.post_attention_norm), {h}, Init::kNorm, l);
    add(name(n.router), {c.num_experts, h}, Init::kRouter, l);
    for (int64_t e = 0; e < c.num_experts; ++e) {
      add(ExpandTensorName(n.expert_gate, l, e), {inter, h}, Init::kLinear, l);
      add(ExpandTensorName(n.expert_up, l, e), {inter, h}, Init::kLinear, l);
      add(ExpandTensorName(n.expert_down, l, e), {h, inter}, Init::kLinear, l);
    }
    if (shared > 0 && !n.shared_gate.empty()) {
      add(name(n.shared_gate), {shared, h}, Init::kLinear, l);
      add(name(n.shared_up), {shared, h}, Init::kLinear, l);
      add(name(n.shared_down), {h, shared}, Init::kLinear, l);
      add(name(n.shared_expert_gate), {1, h}, Init::kLinear, l);
    }
  }
  add(std::string(n.final_norm), {h}, Init::kNorm, 0);
  if (!c.tie_word_embeddings) add(std::string(n.lm_head), {c.vocab_size, h}, Init::kLinear, 0);
  const size_t elem = DTypeSize(c.dtype);
  for (TensorPlan& t : plan) t.bytes = t.elements * elem;
  return plan;
}

// Computes a tensor's values chunk by chunk. The value of element i depends only on the seed,
// the tensor name and i (plus the row, for the router's per-expert bias).
class TensorGenerator {
 public:
  TensorGenerator(const SyntheticModelOptions& o, const TensorPlan& t)
      : t_(t), key_(Mix64(o.seed * kGolden ^ Fnv1a(t.name))) {
    const int64_t cols = t.shape.back();
    cols_ = static_cast<uint64_t>(cols);
    switch (t.init) {
      case Init::kLinear:
        scale_ = 1.0f / std::sqrt(static_cast<float>(cols));
        break;
      case Init::kRouter: {
        scale_ = o.router_scale / std::sqrt(static_cast<float>(cols));
        // Rank the experts by a hash of (seed, layer, expert) so each layer prefers different
        // experts; the bias falls linearly with the rank from +skew to -skew logits.
        const int64_t experts = t.shape[0];
        std::vector<std::pair<uint64_t, int64_t>> order;
        for (int64_t e = 0; e < experts; ++e) {
          order.emplace_back(Mix64(o.seed ^ Mix64(static_cast<uint64_t>(t.layer) * 65536 + e)), e);
        }
        std::sort(order.begin(), order.end());
        row_bias_.assign(static_cast<size_t>(experts), 0.0f);
        for (int64_t r = 0; r < experts; ++r) {
          const float lin =
              experts > 1 ? 1.0f - 2.0f * static_cast<float>(r) / static_cast<float>(experts - 1)
                          : 0.0f;
          row_bias_[static_cast<size_t>(order[static_cast<size_t>(r)].second)] =
              o.router_skew * lin / (kMeanAfterNorm * static_cast<float>(cols));
        }
        break;
      }
      default:
        break;
    }
  }

  void Fill(uint64_t begin, std::span<float> out) const {
    for (size_t j = 0; j < out.size(); ++j) {
      const uint64_t i = begin + j;
      const float u = Uniform(key_, i);
      float v = 0;
      switch (t_.init) {
        case Init::kLinear:
          v = u * scale_;
          break;
        case Init::kNorm:
          v = 1.0f + 0.1f * u;
          break;
        case Init::kBias:
          v = 0.02f * u;
          break;
        case Init::kEmbed:
          v = u + kEmbedOffset;
          break;
        case Init::kRouter:
          v = u * scale_ + row_bias_[static_cast<size_t>(i / cols_)];
          break;
      }
      out[j] = v;
    }
  }

 private:
  const TensorPlan& t_;
  uint64_t key_;
  uint64_t cols_ = 1;
  float scale_ = 1;
  std::vector<float> row_bias_;
};

absl::Status ErrnoError(std::string_view what, const std::string& path, int err) {
  return absl::UnavailableError(fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

// A file written under a temporary name and renamed into place on Commit; removed otherwise.
class AtomicFile {
 public:
  ~AtomicFile() {
    if (out_ != nullptr) std::fclose(out_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }
  absl::Status Create(const std::string& path) {
    path_ = path;
    tmp_ = path + ".tmp.XXXXXX";
    const int fd = ::mkstemp(tmp_.data());
    if (fd < 0) {
      const int err = errno;
      tmp_.clear();
      return ErrnoError("cannot create a temporary file for", path, err);
    }
    ::fchmod(fd, 0644);
    out_ = ::fdopen(fd, "wb");
    if (out_ == nullptr) {
      const int err = errno;
      ::close(fd);
      return ErrnoError("cannot open temporary file", tmp_, err);
    }
    return absl::OkStatus();
  }
  absl::Status Write(const void* data, size_t size) {
    if (size > 0 && std::fwrite(data, 1, size, out_) != size) {
      return ErrnoError("cannot write", path_, errno != 0 ? errno : EIO);
    }
    return absl::OkStatus();
  }
  absl::Status Commit() {
    bool ok = std::fflush(out_) == 0 && ::fsync(::fileno(out_)) == 0;
    int err = ok ? 0 : errno;
    if (std::fclose(out_) != 0 && ok) {
      ok = false;
      err = errno;
    }
    out_ = nullptr;
    if (!ok) return ErrnoError("cannot write", path_, err != 0 ? err : EIO);
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      return ErrnoError("cannot rename a temporary file onto", path_, errno);
    }
    tmp_.clear();
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::string tmp_;
  FILE* out_ = nullptr;
};

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  AtomicFile file;
  MOE_RETURN_IF_ERROR(file.Create(path));
  MOE_RETURN_IF_ERROR(file.Write(text.data(), text.size()));
  return file.Commit();
}

// Writes one safetensors file with the layout SafetensorsWriter produces (header padded to 8
// bytes, tensors back to back in order of decreasing element size then name) but generating
// each tensor while writing it, so only one chunk is in memory.
absl::Status WriteShard(const SyntheticModelOptions& o, DType dtype,
                        std::vector<const TensorPlan*> tensors, const std::string& path,
                        uint64_t* done, uint64_t total) {
  std::sort(tensors.begin(), tensors.end(),
            [](const TensorPlan* a, const TensorPlan* b) { return a->name < b->name; });
  Json header = Json::object();
  // transformers refuses safetensors files whose metadata lacks format "pt".
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorPlan* t : tensors) {
    header[t->name] = {{"dtype", std::string(DTypeName(dtype))},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes}}};
    offset += t->bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  AtomicFile file;
  MOE_RETURN_IF_ERROR(file.Create(path));
  MOE_RETURN_IF_ERROR(file.Write(&header_len, 8));
  MOE_RETURN_IF_ERROR(file.Write(text.data(), text.size()));
  std::vector<float> values;
  std::vector<uint16_t> halves;
  for (const TensorPlan* t : tensors) {
    const TensorGenerator gen(o, *t);
    for (uint64_t begin = 0; begin < t->elements; begin += kChunkElements) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunkElements, t->elements - begin));
      values.resize(n);
      gen.Fill(begin, values);
      if (dtype == DType::kF32) {
        MOE_RETURN_IF_ERROR(file.Write(values.data(), n * 4));
      } else {
        halves.resize(n);
        for (size_t i = 0; i < n; ++i) {
          halves[i] = dtype == DType::kBF16 ? ToBf16(values[i]) : ToF16(values[i]);
        }
        MOE_RETURN_IF_ERROR(file.Write(halves.data(), n * 2));
      }
    }
    *done += t->bytes;
    if (o.progress) o.progress(*done, total);
  }
  return file.Commit();
}

// Contiguous groups of tensors, one per file.
std::vector<std::vector<const TensorPlan*>> AssignShards(const std::vector<TensorPlan>& plan,
                                                         const SyntheticModelOptions& o,
                                                         uint64_t total) {
  std::vector<std::vector<const TensorPlan*>> shards(1);
  if (o.max_shard_bytes > 0) {
    uint64_t in_shard = 0;
    for (const TensorPlan& t : plan) {
      if (!shards.back().empty() && in_shard + t.bytes > o.max_shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(&t);
      in_shard += t.bytes;
    }
    return shards;
  }
  // n shards of about total / n bytes: start the next shard once the bytes before a tensor
  // reach the current shard's share, or when just enough tensors remain to fill the rest.
  const size_t n = static_cast<size_t>(o.shards);
  uint64_t before = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    const size_t s = shards.size() - 1;
    const unsigned __int128 target = static_cast<unsigned __int128>(total) * (s + 1) / n;
    if (!shards.back().empty() && s + 1 < n && (before >= target || plan.size() - i == n - 1 - s)) {
      shards.emplace_back();
    }
    shards.back().push_back(&plan[i]);
    before += plan[i].bytes;
  }
  return shards;
}

absl::Status RemoveIfPresent(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoError("cannot remove the stale", path, errno);
  }
  return absl::OkStatus();
}

// Validated options and the config they produce.
absl::StatusOr<ModelConfig> ConfigFor(const SyntheticModelOptions& o, std::string* text) {
  MOE_RETURN_IF_ERROR(ValidateOptions(o));
  *text = MakeConfigJson(o).dump(2) + "\n";
  // Parsing our own output checks that the file says what the options meant (and catches the
  // limits ParseModelConfig enforces, e.g. sizes and vocabulary range).
  return ParseModelConfig(*text, "synthetic model config");
}

}  // namespace

absl::StatusOr<std::string> SyntheticModelConfigJson(const SyntheticModelOptions& options) {
  std::string text;
  MOE_ASSIGN_OR_RETURN(ModelConfig config, ConfigFor(options, &text));
  (void)config;
  return text;
}

absl::StatusOr<uint64_t> SyntheticModelBytes(const SyntheticModelOptions& options) {
  std::string text;
  MOE_ASSIGN_OR_RETURN(ModelConfig config, ConfigFor(options, &text));
  uint64_t total = 0;
  for (const TensorPlan& t : PlanTensors(config)) total += t.bytes;
  return total;
}

absl::Status WriteSyntheticModel(const SyntheticModelOptions& options, const std::string& dir) {
  std::string config_text;
  MOE_ASSIGN_OR_RETURN(ModelConfig config, ConfigFor(options, &config_text));
  const std::vector<TensorPlan> plan = PlanTensors(config);
  uint64_t total = 0;
  for (const TensorPlan& t : plan) total += t.bytes;
  if (options.max_shard_bytes == 0 && static_cast<size_t>(options.shards) > plan.size()) {
    return InvalidArgument("shards {} exceeds the model's {} tensors", options.shards, plan.size());
  }

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(fmt::format("cannot create {}: {}", dir, ec.message()));
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return InvalidArgument("{} is not a directory", dir);
  }
  const std::string base = dir.back() == '/' ? dir : dir + "/";
  const std::string single = base + "model.safetensors";
  const std::string index = base + "model.safetensors.index.json";

  const auto shards = AssignShards(plan, options, total);
  uint64_t done = 0;
  if (shards.size() == 1) {
    MOE_RETURN_IF_ERROR(RemoveIfPresent(index));
    MOE_RETURN_IF_ERROR(WriteShard(options, config.dtype, shards[0], single, &done, total));
  } else {
    // The single file would win over the index when the checkpoint is opened.
    MOE_RETURN_IF_ERROR(RemoveIfPresent(single));
    Json weight_map = Json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string name =
          fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
      MOE_RETURN_IF_ERROR(WriteShard(options, config.dtype, shards[s], base + name, &done, total));
      for (const TensorPlan* t : shards[s]) weight_map[t->name] = name;
    }
    Json index_json = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    MOE_RETURN_IF_ERROR(WriteTextFile(index, index_json.dump(2) + "\n"));
  }
  // Last, so a directory with a config.json holds a complete model.
  return WriteTextFile(base + "config.json", config_text);
}

}  // namespace moe
