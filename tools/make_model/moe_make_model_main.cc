// moe-make-model: writes a synthetic Mixtral / Qwen2-MoE checkpoint (config.json, safetensors,
// optionally a tokenizer) that the runtime and transformers both load.
//   moe-make-model --out models/tiny --preset tiny
//   moe-make-model --out models/qwen --preset demo --family qwen2_moe --shards 3
//   moe-make-model --out models/bench --preset bench --max-shard-size 1GB --tokenizer t.model
#include <sys/stat.h>

#include <filesystem>
#include <iostream>
#include <string>

#include "fmt/format.h"
#include "runtime/checkpoint.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"
#include "runtime/model_writer.h"
#include "runtime/status.h"
#include "tools/common/cli_flags.h"

namespace moe {
namespace {

// Models above this size get progress lines on stderr.
constexpr uint64_t kProgressThreshold = 256ull << 20;

absl::StatusOr<SyntheticModelOptions> Preset(const std::string& name) {
  SyntheticModelOptions o;  // the defaults are the "tiny" preset
  if (name == "tiny") return o;
  if (name == "demo") {
    o.hidden = 256;
    o.intermediate = 704;
    o.layers = 8;
    o.experts = 8;
    o.top_k = 2;
    o.heads = 8;
    o.kv_heads = 4;
    o.vocab = 1000;
    o.dtype = DType::kBF16;
    return o;
  }
  if (name == "bench") {
    o.hidden = 1024;
    o.intermediate = 3584;
    o.layers = 8;
    o.experts = 8;
    o.top_k = 2;
    o.heads = 16;
    o.kv_heads = 4;
    o.vocab = 32000;
    o.dtype = DType::kBF16;
    o.max_position = 32768;
    return o;
  }
  return InvalidArgument("--preset '{}' is not tiny, demo or bench", name);
}

// Counts the pieces of a SentencePiece ModelProto (repeated field 1) by walking the top-level
// protobuf fields; anything that does not parse as protobuf is not a tokenizer model.
absl::StatusOr<int64_t> CountSentencePieces(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return NotFound("--tokenizer {}: cannot open", path);
  std::string bytes;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.append(buf, n);
  std::fclose(f);
  auto bad = [&path]() {
    return InvalidArgument("--tokenizer {}: not a SentencePiece model (protobuf) file", path);
  };
  size_t pos = 0;
  auto varint = [&bytes, &pos](uint64_t* out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= bytes.size()) return false;
      const uint8_t b = static_cast<uint8_t>(bytes[pos++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) {
        *out = v;
        return true;
      }
    }
    return false;
  };
  int64_t pieces = 0;
  while (pos < bytes.size()) {
    uint64_t tag = 0, value = 0;
    if (!varint(&tag)) return bad();
    switch (tag & 7) {
      case 0:
        if (!varint(&value)) return bad();
        break;
      case 1:
        if (bytes.size() - pos < 8) return bad();
        pos += 8;
        break;
      case 2:
        if (!varint(&value) || value > bytes.size() - pos) return bad();
        pos += static_cast<size_t>(value);
        if ((tag >> 3) == 1) ++pieces;
        break;
      case 5:
        if (bytes.size() - pos < 4) return bad();
        pos += 4;
        break;
      default:
        return bad();
    }
  }
  if (pieces == 0) return bad();
  return pieces;
}

int Main(int argc, char** argv) {
  std::string out, family = "mixtral", dtype = "f32", preset, tokenizer;
  SyntheticModelOptions d;
  int64_t vocab = d.vocab, hidden = d.hidden, intermediate = d.intermediate, layers = d.layers;
  int64_t heads = d.heads, kv_heads = d.kv_heads, experts = d.experts, top_k = d.top_k;
  int64_t shared = 0, sliding = d.sliding_window, max_position = d.max_position;
  int64_t shards = d.shards, seed = 0;
  double rope_theta = d.rope_theta, router_scale = d.router_scale, router_skew = d.router_skew;
  bool tie = false, norm_topk = false;
  uint64_t max_shard = 0;
  FlagSet flags("moe-make-model",
                "Writes a synthetic MoE checkpoint in the Hugging Face layout (config.json,\n"
                "safetensors) with deterministic weights; see docs/checkpoints.md.\n"
                "Presets: tiny (hidden 64, 4 layers, 8 experts, f32, 3.7 MiB), demo (hidden 256,\n"
                "8 layers, bf16, 70 MiB), bench (hidden 1024, 8 layers, vocab 32000, bf16,\n"
                "1.5 GiB). Explicit flags override the preset.");
  flags.AddString("out", &out, "output directory (created if needed; required)");
  flags.AddString("preset", &preset, "tiny, demo or bench (default: tiny)");
  flags.AddString("family", &family, "mixtral or qwen2_moe");
  flags.AddInt("vocab", &vocab, "vocabulary size (default: the tokenizer's, with --tokenizer)");
  flags.AddInt("hidden", &hidden, "hidden size");
  flags.AddInt("intermediate", &intermediate, "routed expert width");
  flags.AddInt("layers", &layers, "decoder layers");
  flags.AddInt("heads", &heads, "attention heads");
  flags.AddInt("kv-heads", &kv_heads, "key/value heads");
  flags.AddInt("experts", &experts, "routed experts per layer");
  flags.AddInt("top-k", &top_k, "experts per token");
  flags.AddInt("shared-intermediate", &shared,
               "qwen2_moe: shared expert width; 0 = none (default: 2 x --intermediate)");
  flags.AddBool("norm-topk-prob", &norm_topk, "qwen2_moe: renormalise the top-k weights");
  flags.AddInt("sliding-window", &sliding, "attention window; 0 = full attention");
  flags.AddInt("max-position", &max_position, "max_position_embeddings");
  flags.AddDouble("rope-theta", &rope_theta, "RoPE base");
  flags.AddBool("tie-embeddings", &tie, "share the embedding with lm_head");
  flags.AddString("dtype", &dtype, "f32, bf16 or f16 (tiny: f32; demo, bench: bf16)");
  flags.AddInt("shards", &shards, "number of safetensors files (1 = model.safetensors)");
  flags.AddBytes("max-shard-size", &max_shard,
                 "pick the shard count so no file exceeds this size (e.g. 1GB); excludes --shards");
  flags.AddInt("seed", &seed, "random seed of the weights");
  flags.AddDouble("router-scale", &router_scale, "router noise scale (peakier routing)");
  flags.AddDouble("router-skew", &router_skew, "per-expert router preference, in logits");
  flags.AddString("tokenizer", &tokenizer, "SentencePiece model to copy in as tokenizer.model");

  return flags.Run(argc, argv, [&]() -> absl::Status {
    SyntheticModelOptions o;
    if (out.empty()) return InvalidArgument("--out DIR is required (see --help)");
    MOE_ASSIGN_OR_RETURN(o, Preset(preset.empty() ? "tiny" : preset));
    auto set = [&flags](const char* name, int64_t value, int64_t* dest) {
      if (flags.WasSet(name)) *dest = value;
    };
    if (family == "mixtral") {
      o.family = ModelFamily::kMixtral;
    } else if (family == "qwen2_moe") {
      o.family = ModelFamily::kQwen2Moe;
    } else {
      return InvalidArgument("--family '{}' is not mixtral or qwen2_moe", family);
    }
    set("vocab", vocab, &o.vocab);
    set("hidden", hidden, &o.hidden);
    set("intermediate", intermediate, &o.intermediate);
    set("layers", layers, &o.layers);
    set("heads", heads, &o.heads);
    set("kv-heads", kv_heads, &o.kv_heads);
    set("experts", experts, &o.experts);
    set("top-k", top_k, &o.top_k);
    set("sliding-window", sliding, &o.sliding_window);
    set("max-position", max_position, &o.max_position);
    if (o.family == ModelFamily::kQwen2Moe) {
      o.shared_expert_intermediate =
          flags.WasSet("shared-intermediate") ? shared : 2 * o.intermediate;
      o.norm_topk_prob = norm_topk;
    } else if (flags.WasSet("shared-intermediate") && shared != 0) {
      return InvalidArgument("--shared-intermediate: mixtral has no shared expert");
    } else if (norm_topk) {
      return InvalidArgument("--norm-topk-prob: mixtral always renormalises (qwen2_moe only)");
    }
    if (flags.WasSet("rope-theta")) o.rope_theta = rope_theta;
    if (flags.WasSet("router-scale")) o.router_scale = static_cast<float>(router_scale);
    if (flags.WasSet("router-skew")) o.router_skew = static_cast<float>(router_skew);
    o.tie_embeddings = tie;
    if (flags.WasSet("dtype")) {
      if (dtype == "f32") {
        o.dtype = DType::kF32;
      } else if (dtype == "bf16") {
        o.dtype = DType::kBF16;
      } else if (dtype == "f16") {
        o.dtype = DType::kF16;
      } else {
        return InvalidArgument("--dtype '{}' is not f32, bf16 or f16", dtype);
      }
    }
    if (flags.WasSet("shards") && flags.WasSet("max-shard-size")) {
      return InvalidArgument("--shards and --max-shard-size exclude each other");
    }
    if (shards < 1 || shards > 99999) {
      return InvalidArgument("--shards {} must be in [1, 99999]", shards);
    }
    o.shards = static_cast<int>(shards);
    if (flags.WasSet("max-shard-size") && max_shard == 0) {
      return InvalidArgument("--max-shard-size must be positive");
    }
    o.max_shard_bytes = max_shard;
    if (seed < 0) return InvalidArgument("--seed {} must be non-negative", seed);
    o.seed = static_cast<uint64_t>(seed);

    // Check the tokenizer before writing gigabytes; its piece count is the natural vocab.
    if (!tokenizer.empty()) {
      MOE_ASSIGN_OR_RETURN(const int64_t pieces, CountSentencePieces(tokenizer));
      if (!flags.WasSet("vocab")) {
        o.vocab = pieces;
      } else if (o.vocab < pieces) {
        return InvalidArgument("--vocab {} is smaller than the tokenizer's {} pieces", o.vocab,
                               pieces);
      }
    }

    MOE_ASSIGN_OR_RETURN(const uint64_t model_bytes, SyntheticModelBytes(o));
    if (model_bytes >= kProgressThreshold) {
      int last_decile = -1;
      o.progress = [&last_decile](uint64_t done, uint64_t total) {
        const int decile = static_cast<int>(done * 10 / total);
        if (decile == last_decile) return;
        last_decile = decile;
        std::cerr << fmt::format("moe-make-model: {} / {} ({}%)\n", FormatBytes(done),
                                 FormatBytes(total), decile * 10);
      };
    }
    MOE_RETURN_IF_ERROR(WriteSyntheticModel(o, out));
    if (!tokenizer.empty()) {
      std::error_code ec;
      std::filesystem::copy_file(tokenizer, std::filesystem::path(out) / "tokenizer.model",
                                 std::filesystem::copy_options::overwrite_existing, ec);
      if (ec) return InvalidArgument("cannot copy --tokenizer {}: {}", tokenizer, ec.message());
    }

    // Load what was written, as the runtime will: proves the files are consistent and gives
    // the sizes for the summary.
    MOE_ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(out));
    MOE_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(out));
    MOE_ASSIGN_OR_RETURN(ModelWeights weights, BindModelWeights(*checkpoint, config));
    const uint64_t expert_bytes = weights.expert_bytes;
    const uint64_t total_bytes = checkpoint->total_bytes();
    const int files = static_cast<int>(checkpoint->files().size());
    std::cout << fmt::format(
        "moe-make-model: wrote {}: {} {} layers x {} experts (top-{}), {}, {} file(s), total {} "
        "({} bytes), expert {} ({} bytes)\n",
        out, ModelFamilyName(o.family), o.layers, o.experts, o.top_k, DTypeName(o.dtype), files,
        FormatBytes(total_bytes), total_bytes, FormatBytes(expert_bytes), expert_bytes);
    return absl::OkStatus();
  });
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
