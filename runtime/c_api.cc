// The C API (include/moe/moe.h) over the C++ runtime. Every entry point checks its arguments,
// converts absl::Status into moe_status plus a thread-local message, and never lets a C++
// exception or abort escape on bad input.
#define MOE_BUILDING_LIBRARY 1
#include "moe/moe.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "memory/expert_cache.h"
#include "predictor/trace_io.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/logging.h"
#include "runtime/model.h"
#include "runtime/status.h"

struct moe_model {
  std::shared_ptr<const moe::Model> model;
};

struct moe_context {
  std::unique_ptr<moe::Engine> engine;
};

namespace {

thread_local std::string last_error;

moe_status Fail(moe_status status, std::string message) {
  last_error = std::move(message);
  return status;
}

moe_status FromStatus(const absl::Status& status) {
  if (status.ok()) return MOE_OK;
  moe_status code;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      code = MOE_INVALID_ARGUMENT;
      break;
    case absl::StatusCode::kNotFound:
      code = MOE_NOT_FOUND;
      break;
    case absl::StatusCode::kOutOfRange:
      code = MOE_OUT_OF_RANGE;
      break;
    case absl::StatusCode::kResourceExhausted:
      code = MOE_RESOURCE_EXHAUSTED;
      break;
    case absl::StatusCode::kDataLoss:
      code = MOE_DATA_LOSS;
      break;
    case absl::StatusCode::kFailedPrecondition:
      code = MOE_FAILED_PRECONDITION;
      break;
    case absl::StatusCode::kUnimplemented:
      code = MOE_UNIMPLEMENTED;
      break;
    default:
      code = MOE_INTERNAL;
      break;
  }
  return Fail(code, std::string(status.message()));
}

#define MOE_C_REQUIRE(cond, ...) \
  if (!(cond)) return Fail(MOE_INVALID_ARGUMENT, fmt::format(__VA_ARGS__))

moe_log_callback log_callback = nullptr;
void* log_user_data = nullptr;

}  // namespace

extern "C" {

const char* moe_version(void) { return MOE_VERSION_STRING; }

const char* moe_status_name(moe_status status) {
  switch (status) {
    case MOE_OK:
      return "ok";
    case MOE_INVALID_ARGUMENT:
      return "invalid argument";
    case MOE_NOT_FOUND:
      return "not found";
    case MOE_OUT_OF_RANGE:
      return "out of range";
    case MOE_RESOURCE_EXHAUSTED:
      return "resource exhausted";
    case MOE_DATA_LOSS:
      return "data loss";
    case MOE_FAILED_PRECONDITION:
      return "failed precondition";
    case MOE_UNIMPLEMENTED:
      return "unimplemented";
    case MOE_INTERNAL:
      return "internal";
  }
  return "unknown status";
}

const char* moe_last_error(void) { return last_error.c_str(); }

void moe_set_log_callback(moe_log_callback callback, void* user_data, int32_t min_level) {
  log_callback = callback;
  log_user_data = user_data;
  moe::SetLogLevel(static_cast<moe::LogLevel>(std::clamp(min_level, 0, 4)));
  if (callback == nullptr) {
    moe::SetLogSink({});
    return;
  }
  moe::SetLogSink([](moe::LogLevel level, std::string_view message) {
    const std::string text(message);
    if (log_callback != nullptr)
      log_callback(static_cast<int32_t>(level), text.c_str(), log_user_data);
  });
}

moe_status moe_model_load(const char* dir, moe_model** model_out) {
  MOE_C_REQUIRE(dir != nullptr, "moe_model_load: dir is NULL");
  MOE_C_REQUIRE(model_out != nullptr, "moe_model_load: model_out is NULL");
  auto model = moe::Model::Load(dir);
  if (!model.ok()) return FromStatus(model.status());
  *model_out = new (std::nothrow) moe_model{*std::move(model)};
  if (*model_out == nullptr) return Fail(MOE_RESOURCE_EXHAUSTED, "out of memory");
  return MOE_OK;
}

void moe_model_free(moe_model* model) { delete model; }

moe_status moe_model_get_info(const moe_model* model, moe_model_info* info_out) {
  MOE_C_REQUIRE(model != nullptr, "moe_model_get_info: model is NULL");
  MOE_C_REQUIRE(info_out != nullptr, "moe_model_get_info: info_out is NULL");
  const moe::ModelConfig& c = model->model->config;
  const moe::ModelWeights& w = model->model->weights;
  moe_model_info info{};
  info.vocab_size = static_cast<int32_t>(c.vocab_size);
  info.hidden_size = static_cast<int32_t>(c.hidden_size);
  info.num_layers = static_cast<int32_t>(c.num_layers);
  info.num_experts = static_cast<int32_t>(c.num_experts);
  info.top_k = static_cast<int32_t>(c.top_k);
  info.max_position = static_cast<int32_t>(c.max_position_embeddings);
  info.expert_bytes = w.expert_bytes;
  info.all_expert_bytes = w.expert_bytes * static_cast<uint64_t>(c.num_layers * c.num_experts);
  info.non_expert_bytes = w.non_expert_bytes;
  const moe::Tokenizer* tok = model->model->tokenizer.get();
  info.has_tokenizer = tok != nullptr;
  info.bos_id = tok ? tok->bos_id() : static_cast<int32_t>(c.bos_token_id);
  info.eos_id = tok ? tok->eos_id()
                    : (c.eos_token_ids.empty() ? -1 : static_cast<int32_t>(c.eos_token_ids[0]));
  *info_out = info;
  return MOE_OK;
}

moe_status moe_tokenize(const moe_model* model, const char* text, size_t text_len, int32_t add_bos,
                        int32_t* ids_out, size_t capacity, size_t* n_out) {
  MOE_C_REQUIRE(model != nullptr, "moe_tokenize: model is NULL");
  MOE_C_REQUIRE(text != nullptr || text_len == 0, "moe_tokenize: text is NULL");
  MOE_C_REQUIRE(n_out != nullptr, "moe_tokenize: n_out is NULL");
  MOE_C_REQUIRE(ids_out != nullptr || capacity == 0, "moe_tokenize: ids_out is NULL");
  const moe::Tokenizer* tok = model->model->tokenizer.get();
  if (tok == nullptr) {
    return Fail(
        MOE_FAILED_PRECONDITION,
        fmt::format("{}: the model has no tokenizer.model; pass token ids", model->model->dir));
  }
  auto ids = tok->Encode(std::string_view(text == nullptr ? "" : text, text_len));
  if (!ids.ok()) return FromStatus(ids.status());
  if (add_bos != 0 && tok->bos_id() >= 0) ids->insert(ids->begin(), tok->bos_id());
  *n_out = ids->size();
  if (ids->size() > capacity) {
    return Fail(MOE_OUT_OF_RANGE, fmt::format("moe_tokenize: {} ids need a buffer of {}, got {}",
                                              ids->size(), ids->size(), capacity));
  }
  std::copy(ids->begin(), ids->end(), ids_out);
  return MOE_OK;
}

moe_status moe_detokenize(const moe_model* model, const int32_t* ids, size_t n, char* text_out,
                          size_t capacity, size_t* len_out) {
  MOE_C_REQUIRE(model != nullptr, "moe_detokenize: model is NULL");
  MOE_C_REQUIRE(ids != nullptr || n == 0, "moe_detokenize: ids is NULL");
  MOE_C_REQUIRE(len_out != nullptr, "moe_detokenize: len_out is NULL");
  MOE_C_REQUIRE(text_out != nullptr || capacity == 0, "moe_detokenize: text_out is NULL");
  const moe::Tokenizer* tok = model->model->tokenizer.get();
  if (tok == nullptr) {
    return Fail(MOE_FAILED_PRECONDITION,
                fmt::format("{}: the model has no tokenizer.model", model->model->dir));
  }
  auto text = tok->Decode({ids, n});
  if (!text.ok()) return FromStatus(text.status());
  *len_out = text->size();
  if (text->size() + 1 > capacity) {
    return Fail(MOE_OUT_OF_RANGE,
                fmt::format("moe_detokenize: {} bytes of text need a buffer of {}, got {}",
                            text->size(), text->size() + 1, capacity));
  }
  std::memcpy(text_out, text->data(), text->size());
  text_out[text->size()] = '\0';
  return MOE_OK;
}

moe_context_params moe_context_default_params(void) {
  moe_context_params p{};
  p.struct_size = sizeof(moe_context_params);
  p.expert_budget_bytes = 0;
  p.expert_budget_fraction = 1.0;
  p.policy = "lru";
  p.cache_scope = "global";
  p.device = "cpu";
  p.max_sequences = 1;
  p.max_context = 0;
  p.prefill_chunk = 256;
  p.num_threads = 0;
  p.predictor = "none";
  p.predictor_file = nullptr;
  p.prefetch_depth = 1;
  p.prefetch_budget = 0;
  p.force_routing_trace = nullptr;
  p.cpu_fallback = "off";
  return p;
}

moe_status moe_context_create(moe_model* model, const moe_context_params* params,
                              moe_context** context_out) {
  MOE_C_REQUIRE(model != nullptr, "moe_context_create: model is NULL");
  MOE_C_REQUIRE(context_out != nullptr, "moe_context_create: context_out is NULL");
  const moe_context_params p = params != nullptr ? *params : moe_context_default_params();
  MOE_C_REQUIRE(p.struct_size == sizeof(moe_context_params),
                "moe_context_create: params.struct_size {} is not {} (use "
                "moe_context_default_params())",
                p.struct_size, sizeof(moe_context_params));
  const std::string device = p.device == nullptr ? "cpu" : p.device;
  MOE_C_REQUIRE(device == "cpu" || device == "cuda" || device == "auto",
                "moe_context_create: unknown device '{}' (devices: cpu, cuda, auto)", device);
  moe::EngineOptions options;
  options.device = device;
  const moe::ModelWeights& w = model->model->weights;
  const moe::ModelConfig& c = model->model->config;
  if (p.expert_budget_bytes > 0) {
    options.expert_budget_bytes = p.expert_budget_bytes;
  } else {
    MOE_C_REQUIRE(p.expert_budget_fraction > 0 && p.expert_budget_fraction <= 1,
                  "moe_context_create: expert_budget_fraction {} must be in (0, 1]",
                  p.expert_budget_fraction);
    const double all = static_cast<double>(w.expert_bytes) * c.num_layers * c.num_experts;
    options.expert_budget_bytes = static_cast<uint64_t>(all * p.expert_budget_fraction);
  }
  options.policy = p.policy == nullptr ? "lru" : p.policy;
  auto scope = moe::ParseCacheScope(p.cache_scope == nullptr ? "global" : p.cache_scope);
  if (!scope.ok()) return FromStatus(scope.status());
  options.scope = *scope;
  options.max_sequences = p.max_sequences;
  options.max_context = p.max_context;
  options.prefill_chunk = p.prefill_chunk;
  options.num_threads = p.num_threads;
  options.predictor = p.predictor == nullptr ? "none" : p.predictor;
  options.predictor_file = p.predictor_file == nullptr ? "" : p.predictor_file;
  options.prefetch.depth = p.prefetch_depth;
  options.prefetch.budget = p.prefetch_budget;
  const std::string fallback = p.cpu_fallback == nullptr ? "off" : p.cpu_fallback;
  MOE_C_REQUIRE(fallback == "off" || fallback == "on" || fallback == "hybrid",
                "moe_context_create: unknown cpu_fallback '{}' (off, on, hybrid)", fallback);
  MOE_C_REQUIRE(fallback == "off" || device != "cpu",
                "moe_context_create: cpu_fallback '{}' needs a device that is not the CPU (cuda, "
                "or auto where it picks cuda)",
                fallback);
  options.cpu_fallback = fallback != "off";
  options.cpu_fallback_bypass = fallback == "hybrid";
  if (p.force_routing_trace != nullptr && p.force_routing_trace[0] != '\0') {
    auto trace = moe::ReadTrace(p.force_routing_trace);
    if (!trace.ok()) return FromStatus(trace.status());
    options.forced_routing = std::make_shared<const moe::RoutingTrace>(*std::move(trace));
  }
  auto engine = moe::Engine::Create(model->model, options);
  if (!engine.ok()) return FromStatus(engine.status());
  *context_out = new (std::nothrow) moe_context{*std::move(engine)};
  if (*context_out == nullptr) return Fail(MOE_RESOURCE_EXHAUSTED, "out of memory");
  return MOE_OK;
}

void moe_context_free(moe_context* context) { delete context; }

moe_status moe_evaluate(moe_context* context, int32_t sequence, const int32_t* tokens, size_t n,
                        float* logits_out, size_t logits_capacity) {
  MOE_C_REQUIRE(context != nullptr, "moe_evaluate: context is NULL");
  MOE_C_REQUIRE(tokens != nullptr && n > 0, "moe_evaluate: no tokens");
  MOE_C_REQUIRE(logits_out != nullptr, "moe_evaluate: logits_out is NULL");
  const size_t vocab = static_cast<size_t>(context->engine->model().config.vocab_size);
  if (logits_capacity < vocab) {
    return Fail(MOE_OUT_OF_RANGE,
                fmt::format("moe_evaluate: logits buffer holds {} floats, the vocabulary has {}",
                            logits_capacity, vocab));
  }
  const moe::SequenceTokens entry{sequence, {tokens, n}};
  return FromStatus(context->engine->Evaluate({&entry, 1}, false, {logits_out, vocab}));
}

moe_status moe_evaluate_batch(moe_context* context, const moe_sequence_tokens* entries,
                              size_t n_entries, float* logits_out, size_t logits_capacity) {
  MOE_C_REQUIRE(context != nullptr, "moe_evaluate_batch: context is NULL");
  MOE_C_REQUIRE(entries != nullptr && n_entries > 0, "moe_evaluate_batch: no entries");
  MOE_C_REQUIRE(logits_out != nullptr, "moe_evaluate_batch: logits_out is NULL");
  const size_t vocab = static_cast<size_t>(context->engine->model().config.vocab_size);
  if (logits_capacity / vocab < n_entries) {
    return Fail(MOE_OUT_OF_RANGE,
                fmt::format("moe_evaluate_batch: logits buffer holds {} floats, {} entries need {}",
                            logits_capacity, n_entries, n_entries * vocab));
  }
  std::vector<moe::SequenceTokens> batch;
  for (size_t i = 0; i < n_entries; ++i) {
    MOE_C_REQUIRE(entries[i].tokens != nullptr && entries[i].n > 0,
                  "moe_evaluate_batch: entry {} has no tokens", i);
    batch.push_back({entries[i].sequence, {entries[i].tokens, entries[i].n}});
  }
  return FromStatus(context->engine->Evaluate(batch, false, {logits_out, n_entries * vocab}));
}

moe_status moe_sequence_reset(moe_context* context, int32_t sequence) {
  MOE_C_REQUIRE(context != nullptr, "moe_sequence_reset: context is NULL");
  return FromStatus(context->engine->ResetSequence(sequence));
}

moe_status moe_sequence_length(const moe_context* context, int32_t sequence, int64_t* length_out) {
  MOE_C_REQUIRE(context != nullptr, "moe_sequence_length: context is NULL");
  MOE_C_REQUIRE(length_out != nullptr, "moe_sequence_length: length_out is NULL");
  const int64_t len = context->engine->SequenceLength(sequence);
  if (len < 0) {
    return Fail(MOE_OUT_OF_RANGE, fmt::format("sequence id {} outside [0, {})", sequence,
                                              context->engine->options().max_sequences));
  }
  *length_out = len;
  return MOE_OK;
}

moe_generate_params moe_generate_default_params(void) {
  moe_generate_params p{};
  p.struct_size = sizeof(moe_generate_params);
  p.max_tokens = 64;
  p.temperature = 0.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.seed = 0;
  p.stop_at_eos = 1;
  return p;
}

moe_status moe_generate(moe_context* context, int32_t sequence, const int32_t* prompt,
                        size_t prompt_len, const moe_generate_params* params, int32_t* tokens_out,
                        size_t capacity, size_t* n_out, moe_token_callback callback,
                        void* user_data) {
  MOE_C_REQUIRE(context != nullptr, "moe_generate: context is NULL");
  MOE_C_REQUIRE(prompt != nullptr && prompt_len > 0, "moe_generate: empty prompt");
  MOE_C_REQUIRE(n_out != nullptr, "moe_generate: n_out is NULL");
  const moe_generate_params p = params != nullptr ? *params : moe_generate_default_params();
  MOE_C_REQUIRE(p.struct_size == sizeof(moe_generate_params),
                "moe_generate: params.struct_size {} is not {} (use "
                "moe_generate_default_params())",
                p.struct_size, sizeof(moe_generate_params));
  MOE_C_REQUIRE(p.max_tokens >= 0, "moe_generate: max_tokens {} must be >= 0", p.max_tokens);
  MOE_C_REQUIRE(tokens_out != nullptr || p.max_tokens == 0, "moe_generate: tokens_out is NULL");
  if (capacity < static_cast<size_t>(p.max_tokens)) {
    return Fail(MOE_OUT_OF_RANGE,
                fmt::format("moe_generate: tokens_out holds {} ids, max_tokens is {}", capacity,
                            p.max_tokens));
  }
  moe::GenerateOptions options;
  options.max_tokens = p.max_tokens;
  options.sampling = {p.temperature, p.top_k, p.top_p, p.seed};
  const moe::Model& model = context->engine->model();
  if (p.stop_at_eos != 0) {
    for (int64_t id : model.config.eos_token_ids)
      options.stop_ids.push_back(static_cast<int32_t>(id));
    if (model.tokenizer != nullptr && model.tokenizer->eos_id() >= 0) {
      options.stop_ids.push_back(model.tokenizer->eos_id());
    }
  }
  size_t produced = 0;
  auto on_token = [&](int32_t token) {
    tokens_out[produced++] = token;
    return callback == nullptr || callback(token, user_data) != 0;
  };
  auto result = moe::Generate(*context->engine, sequence, {prompt, prompt_len}, options, on_token);
  *n_out = produced;
  if (!result.ok()) return FromStatus(result.status());
  return MOE_OK;
}

moe_status moe_context_get_stats(const moe_context* context, moe_stats* stats_out) {
  MOE_C_REQUIRE(context != nullptr, "moe_context_get_stats: context is NULL");
  MOE_C_REQUIRE(stats_out != nullptr, "moe_context_get_stats: stats_out is NULL");
  const moe::EngineStats s = context->engine->stats();
  moe_stats out{};
  out.expert_accesses = s.cache.accesses;
  out.expert_hits = s.cache.hits;
  out.expert_misses = s.cache.misses;
  out.expert_loads = s.cache.loads();
  out.expert_evictions = s.cache.evictions;
  out.bytes_to_device = s.transfers.bytes_started;
  out.prefill_tokens = s.prefill.tokens;
  out.decode_tokens = s.decode.tokens;
  out.prefill_seconds = s.prefill.seconds;
  out.decode_seconds = s.decode.seconds;
  out.load_seconds = s.prefill.load_seconds + s.decode.load_seconds;
  out.device_peak_bytes = s.device.peak_bytes;
  out.device_capacity_bytes = s.device.capacity_bytes;
  out.expert_slot_bytes = s.expert_arena_bytes;
  out.expert_slots = s.expert_slots;
  out.prefetch_loads = s.cache.prefetch_loads;
  out.prefetch_useful = s.cache.prefetch_useful;
  out.prefetch_wasted_bytes = s.cache.prefetch_wasted_bytes;
  out.prediction_recall = s.recall.found.empty() ? 0.0 : s.recall.RecallFrom(0);
  *stats_out = out;
  return MOE_OK;
}

moe_status moe_context_get_layer_recall(const moe_context* context, double* recall_out,
                                        size_t capacity) {
  MOE_C_REQUIRE(context != nullptr, "moe_context_get_layer_recall: context is NULL");
  MOE_C_REQUIRE(recall_out != nullptr, "moe_context_get_layer_recall: recall_out is NULL");
  const moe::EngineStats s = context->engine->stats();
  if (s.recall.found.empty()) {
    return Fail(MOE_FAILED_PRECONDITION,
                "moe_context_get_layer_recall: the context has no predictor");
  }
  const size_t layers = s.recall.found.size();
  if (capacity < layers) {
    return Fail(MOE_OUT_OF_RANGE,
                fmt::format("moe_context_get_layer_recall: capacity {} is below the {} layers",
                            capacity, layers));
  }
  for (size_t l = 0; l < layers; ++l) recall_out[l] = s.recall.Recall(static_cast<int32_t>(l));
  return MOE_OK;
}

moe_status moe_context_get_cpu_fallback_counts(const moe_context* context,
                                               uint64_t* cpu_experts_out,
                                               uint64_t* not_loaded_out) {
  MOE_C_REQUIRE(context != nullptr, "moe_context_get_cpu_fallback_counts: context is NULL");
  const moe::EngineStats s = context->engine->stats();
  if (cpu_experts_out != nullptr) *cpu_experts_out = s.cpu_fallbacks;
  if (not_loaded_out != nullptr) *not_loaded_out = s.cpu_uncached;
  return MOE_OK;
}

moe_status moe_trace_start(moe_context* context) {
  MOE_C_REQUIRE(context != nullptr, "moe_trace_start: context is NULL");
  context->engine->StartTrace();
  return MOE_OK;
}

moe_status moe_trace_stop(moe_context* context, const char* path) {
  MOE_C_REQUIRE(context != nullptr, "moe_trace_stop: context is NULL");
  MOE_C_REQUIRE(path != nullptr, "moe_trace_stop: path is NULL");
  auto trace = context->engine->StopTrace();
  if (!trace.ok()) return FromStatus(trace.status());
  return FromStatus(moe::WriteTrace(*trace, path));
}

}  // extern "C"
