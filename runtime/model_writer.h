// Writes synthetic Mixtral / Qwen2-MoE checkpoints in the Hugging Face layout, for tests, demos
// and benchmarks: config.json as transformers writes it for the family (same field names,
// architectures, model_type, torch_dtype), and deterministic weights in model.safetensors or in
// shards model-0000i-of-0000n.safetensors plus model.safetensors.index.json.
//
// Weights: every value comes from a counter-based generator (splitmix64 of the seed, the tensor
// name and the element index), so a tensor does not depend on the others, on the shard layout
// or on the write order, and the same options always give byte-identical files. Linear weights
// are uniform in [-1, 1) / sqrt(fan_in); norm weights 1 +- 0.1; biases +- 0.02; embeddings
// uniform plus a common offset (so hidden states share a direction). Router rows add a
// per-expert bias along that direction, scaled by router_skew and permuted per layer, on top
// of uniform noise scaled by router_scale: routing is peaky and a few experts per layer are
// preferred, as in trained MoE models (a cache has something to learn).
//
// Memory: files are streamed tensor by tensor in chunks of 1M elements (no SafetensorsWriter
// buffering), so peak memory is a few MB whatever the model size. Each file is written to a
// temporary name and renamed, so a failure never leaves a torn file; config.json is written
// last.
//
// Thread-safety: WriteSyntheticModel may run concurrently for different directories.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"

namespace moe {

struct SyntheticModelOptions {
  ModelFamily family = ModelFamily::kMixtral;
  int64_t vocab = 1000;
  int64_t hidden = 64;
  int64_t intermediate = 128;  // one routed expert (qwen2_moe: moe_intermediate_size)
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t experts = 8;
  int64_t top_k = 2;
  int64_t shared_expert_intermediate = 0;  // qwen2_moe only; 0: no shared expert
  int64_t sliding_window = 0;              // 0: full attention
  int64_t max_position = 4096;
  double rope_theta = 1e6;
  bool tie_embeddings = false;
  bool norm_topk_prob = false;  // qwen2_moe only (Mixtral always renormalises)
  DType dtype = DType::kF32;    // F32, BF16 or F16; every tensor is stored in it
  // Number of files: 1 writes model.safetensors; n > 1 writes n shards of about equal size and
  // the index. Ignored when max_shard_bytes > 0.
  int shards = 1;
  // > 0: start a new shard before a tensor that would make the current one exceed this many
  // bytes (as transformers' max_shard_size does); one shard is written as model.safetensors.
  uint64_t max_shard_bytes = 0;
  uint64_t seed = 0;
  float router_scale = 4.0f;  // router noise: logits of a token spread by about 2.3 x this / 4
  float router_skew = 1.0f;   // router preference: logit offsets spread over [-skew, +skew]
  // Called after each tensor with (bytes written, bytes in all tensors). May be empty.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// The config.json text WriteSyntheticModel writes (sorted keys, two-space indent, as
// transformers' save_pretrained). InvalidArgument when the options contradict each other.
absl::StatusOr<std::string> SyntheticModelConfigJson(const SyntheticModelOptions& options);

// Bytes of all tensors of the model `options` describes (what the files will hold, headers
// excluded). InvalidArgument as above.
absl::StatusOr<uint64_t> SyntheticModelBytes(const SyntheticModelOptions& options);

// Creates `dir` (and parents) if needed and writes config.json and the weights. Replaces a
// model.safetensors or index left there by an earlier run with the other layout, so the
// directory never holds two disagreeing checkpoints. InvalidArgument for contradictory options
// (messages name the option: "heads 5 does not divide hidden 64"); I/O errors name the file.
absl::Status WriteSyntheticModel(const SyntheticModelOptions& options, const std::string& dir);

}  // namespace moe
