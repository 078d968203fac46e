/* moe: run Mixture-of-Experts language models on devices too small to hold them.
 *
 * The public C API; the only header users include. Link with -lmoe.
 *
 * Conventions
 * -----------
 * - Every name has the moe_ prefix; functions are named <object>_<verb>.
 * - Objects (moe_model, moe_context) are opaque and used through pointers. Each create/load has
 *   a free; free(NULL) is a no-op.
 * - Every fallible call returns a moe_status and writes its results to trailing *_out
 *   parameters (written only on MOE_OK unless stated). On failure, moe_last_error() returns a
 *   readable message for the calling thread (valid until that thread's next moe_ call).
 * - Parameter structs come from moe_*_default_params(); set struct_size is done for you. Fields
 *   may be added at the end in later versions; struct_size lets the library tell versions apart.
 * - Sizes are explicit: buffers are passed with their capacity (in elements); a buffer that is
 *   too small gives MOE_OUT_OF_RANGE and, where stated, the needed size.
 * - Threads: a moe_model is immutable once loaded and may be shared by contexts on several
 *   threads. A moe_context must be used by one thread at a time. The log callback may be
 *   called from any thread that calls into the library.
 * - Nothing here aborts on bad input: NULL handles, bad sizes and out-of-range ids are errors.
 */
#ifndef MOE_MOE_H_
#define MOE_MOE_H_

#include <stddef.h>
#include <stdint.h>

#if defined(MOE_BUILDING_LIBRARY)
#define MOE_API __attribute__((visibility("default")))
#else
#define MOE_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 3
#define MOE_VERSION_PATCH 0
#define MOE_VERSION_STRING "0.3.0"

typedef enum moe_status {
  MOE_OK = 0,
  MOE_INVALID_ARGUMENT = 1,    /* a bad argument: NULL handle, bad size, out-of-range value */
  MOE_NOT_FOUND = 2,           /* a file or directory does not exist */
  MOE_OUT_OF_RANGE = 3,        /* an id, position or buffer size is outside what is allowed */
  MOE_RESOURCE_EXHAUSTED = 4,  /* a budget or memory limit is too small */
  MOE_DATA_LOSS = 5,           /* a file is malformed (checkpoint, tokenizer, trace) */
  MOE_FAILED_PRECONDITION = 6, /* the call is not valid in the object's state */
  MOE_UNIMPLEMENTED = 7,       /* valid input this build cannot run */
  MOE_INTERNAL = 8             /* a bug; please report it */
} moe_status;

typedef struct moe_model moe_model;
typedef struct moe_context moe_context;

/* Version of the library actually linked, e.g. "0.1.0". */
MOE_API const char* moe_version(void);
/* Short name of a status, e.g. "invalid argument". */
MOE_API const char* moe_status_name(moe_status status);
/* The message of the calling thread's last failed call ("" when none). */
MOE_API const char* moe_last_error(void);

/* Log levels, and a sink for the library's log lines (NULL restores stderr). Lines below
 * min_level are dropped. */
enum {
  MOE_LOG_DEBUG = 0,
  MOE_LOG_INFO = 1,
  MOE_LOG_WARNING = 2,
  MOE_LOG_ERROR = 3,
  MOE_LOG_OFF = 4
};
typedef void (*moe_log_callback)(int32_t level, const char* message, void* user_data);
MOE_API void moe_set_log_callback(moe_log_callback callback, void* user_data, int32_t min_level);

/* ---- models ------------------------------------------------------------------------------- */

/* Loads a Hugging Face checkpoint directory (config.json, model.safetensors or sharded with
 * model.safetensors.index.json, optional tokenizer.model). Every tensor is checked before use.
 * The weights are memory-mapped, not copied. */
MOE_API moe_status moe_model_load(const char* dir, moe_model** model_out);
MOE_API void moe_model_free(moe_model* model);

typedef struct moe_model_info {
  int32_t vocab_size;
  int32_t hidden_size;
  int32_t num_layers;
  int32_t num_experts; /* routed experts per layer */
  int32_t top_k;
  int32_t max_position;
  uint64_t expert_bytes;     /* one routed expert */
  uint64_t all_expert_bytes; /* every routed expert */
  uint64_t non_expert_bytes;
  int32_t has_tokenizer; /* 1 when tokenizer.model was loaded */
  int32_t bos_id;        /* -1 when none */
  int32_t eos_id;        /* -1 when none */
} moe_model_info;
MOE_API moe_status moe_model_get_info(const moe_model* model, moe_model_info* info_out);

/* Text -> ids with the model's tokenizer (MOE_FAILED_PRECONDITION without one). add_bos != 0
 * prepends the BOS id. When capacity is too small: MOE_OUT_OF_RANGE and *n_out = ids needed. */
MOE_API moe_status moe_tokenize(const moe_model* model, const char* text, size_t text_len,
                                int32_t add_bos, int32_t* ids_out, size_t capacity, size_t* n_out);
/* Ids -> text, NUL-terminated. *len_out = length without the NUL. When capacity (bytes,
 * including the NUL) is too small: MOE_OUT_OF_RANGE and *len_out = length needed. */
MOE_API moe_status moe_detokenize(const moe_model* model, const int32_t* ids, size_t n,
                                  char* text_out, size_t capacity, size_t* len_out);

/* ---- contexts: device, expert cache, sequences and their KV cache ------------------------- */

typedef struct moe_context_params {
  uint32_t struct_size;
  /* Device memory for expert slots, in bytes. 0: use expert_budget_fraction. */
  uint64_t expert_budget_bytes;
  /* Fraction of all routed expert bytes (0, 1]; used when expert_budget_bytes is 0.
   * Default 1 (every expert resident). */
  double expert_budget_fraction;
  /* Eviction policy: "lru" (default), "lfu", "arc", "lrfu", "predictive" (ranks experts by the
   * predictor's guesses; needs a predictor). */
  const char* policy;
  /* "global" (default: one cache over all layers) or "layer" (an equal share per layer). */
  const char* cache_scope;
  /* Where the forward runs: "cpu" (default; CPU kernels, the device a budgeted host arena),
   * "cuda" (GPU 0: weights, activations, KV cache and expert slots in GPU memory;
   * MOE_FAILED_PRECONDITION when the library was built without CUDA or no GPU is usable; BF16
   * weights give logits within about 1e-2 of the CPU's range, F32 ones match to fp32 rounding)
   * or "auto" (cuda when built with CUDA and a GPU is visible, else cpu). Anything else:
   * MOE_INVALID_ARGUMENT. */
  const char* device;
  int32_t max_sequences; /* sequence ids 0 .. max_sequences-1; default 1 */
  int32_t max_context;   /* tokens per sequence; 0 (default): min(max_position, 4096) */
  int32_t prefill_chunk; /* prompt tokens per prefill step; default 256 */
  int32_t num_threads;   /* 0 (default): all cores */
  /* Router predictor that schedules prefetches: "none" (default), "gate" (coming layers'
   * routers applied to the token's hidden state), "frequency", "transition", "recency",
   * "combined". Predictions never change which experts compute a token. */
  const char* predictor;
  /* Learned predictor tables (moe-replay --predictor-out); NULL or "" (default): none. */
  const char* predictor_file;
  int32_t prefetch_depth;  /* layers ahead to prefetch with a predictor; default 1 */
  int32_t prefetch_budget; /* experts prefetched per predicted layer; 0 (default): top-k */
  /* Benchmark mode, never on by default: a routing trace (trace file or dense folder) whose
   * routing replaces the router's (token n processed takes trace token n mod T; layer l, trace
   * layer l mod its layers), so synthetic weights of a real model's shapes meet real routing.
   * Outputs are then meaningless. NULL or "" (default): the router decides. */
  const char* force_routing_trace;
  /* CPU fallback for devices that are not the CPU (cuda, or auto where it picks cuda): "off"
   * (default; NULL too), "on" (a missed expert whose copy would land later than the CPU could
   * compute it from host memory runs on the CPU; the copy still lands for later tokens) or
   * "hybrid" (such a miss is not even loaded unless the link is idle). Results agree with the
   * CPU backend's as the device's do. With device "cpu": MOE_INVALID_ARGUMENT. */
  const char* cpu_fallback;
} moe_context_params;
MOE_API moe_context_params moe_context_default_params(void);

/* The context keeps the model alive; free the model whenever convenient. params NULL: defaults.
 * MOE_RESOURCE_EXHAUSTED when the budget is smaller than one token's experts. */
MOE_API moe_status moe_context_create(moe_model* model, const moe_context_params* params,
                                      moe_context** context_out);
MOE_API void moe_context_free(moe_context* context);

/* Appends n tokens to `sequence` and runs them; writes the logits of the last token
 * (vocab_size floats) to logits_out, whose capacity must be >= vocab_size. */
MOE_API moe_status moe_evaluate(moe_context* context, int32_t sequence, const int32_t* tokens,
                                size_t n, float* logits_out, size_t logits_capacity);
/* Several sequences at once (distinct ids): prompts run as prefill steps, and every one-token
 * entry joins one decode step (continuous batching). logits_out receives the logits of each
 * entry's last token, in entry order: n_entries x vocab_size floats. */
typedef struct moe_sequence_tokens {
  int32_t sequence;
  const int32_t* tokens;
  size_t n;
} moe_sequence_tokens;
MOE_API moe_status moe_evaluate_batch(moe_context* context, const moe_sequence_tokens* entries,
                                      size_t n_entries, float* logits_out, size_t logits_capacity);
/* Forgets a sequence's tokens. */
MOE_API moe_status moe_sequence_reset(moe_context* context, int32_t sequence);
/* Tokens held in a sequence's context. */
MOE_API moe_status moe_sequence_length(const moe_context* context, int32_t sequence,
                                       int64_t* length_out);

typedef struct moe_generate_params {
  uint32_t struct_size;
  int32_t max_tokens;  /* default 64 */
  float temperature;   /* 0 (default): greedy */
  int32_t top_k;       /* 0 (default): no limit */
  float top_p;         /* (0, 1]; default 1 */
  uint64_t seed;       /* default 0 */
  int32_t stop_at_eos; /* default 1: stop on the model's EOS id(s) */
} moe_generate_params;
MOE_API moe_generate_params moe_generate_default_params(void);

/* Called with each generated token; return 0 to stop generating. */
typedef int32_t (*moe_token_callback)(int32_t token, void* user_data);

/* Appends the prompt to `sequence`, then generates up to params->max_tokens tokens into
 * tokens_out (capacity >= max_tokens). *n_out = tokens generated. callback may be NULL. */
MOE_API moe_status moe_generate(moe_context* context, int32_t sequence, const int32_t* prompt,
                                size_t prompt_len, const moe_generate_params* params,
                                int32_t* tokens_out, size_t capacity, size_t* n_out,
                                moe_token_callback callback, void* user_data);

/* ---- statistics and traces -------------------------------------------------------------- */

typedef struct moe_stats {
  uint64_t expert_accesses; /* one per distinct expert per layer per step */
  uint64_t expert_hits;
  uint64_t expert_misses;
  uint64_t expert_loads; /* copies of an expert into the device */
  uint64_t expert_evictions;
  uint64_t bytes_to_device; /* expert bytes copied host -> device */
  uint64_t prefill_tokens;
  uint64_t decode_tokens;
  double prefill_seconds;
  double decode_seconds;
  double load_seconds; /* of the above, copying experts */
  uint64_t device_peak_bytes;
  uint64_t device_capacity_bytes; /* weights + expert slots + activations + KV cache */
  uint64_t expert_slot_bytes;     /* the expert budget actually used for slots */
  int64_t expert_slots;
  uint64_t prefetch_loads;        /* experts copied ahead of demand (in expert_loads) */
  uint64_t prefetch_useful;       /* prefetched experts later used */
  uint64_t prefetch_wasted_bytes; /* bytes of prefetched experts evicted unused */
  /* The predictor's one-layer-ahead recall over all layers: the fraction of routed experts that
   * were among its top-budget guesses. 0 without a predictor. */
  double prediction_recall;
} moe_stats;
MOE_API moe_status moe_context_get_stats(const moe_context* context, moe_stats* stats_out);
/* Per-layer one-layer-ahead recall of the predictor: writes num_layers values (capacity must be
 * >= the model's layers). MOE_FAILED_PRECONDITION without a predictor. */
MOE_API moe_status moe_context_get_layer_recall(const moe_context* context, double* recall_out,
                                                size_t capacity);

/* The CPU fallback's counts (moe_context_params.cpu_fallback): missed experts the CPU computed,
 * and of those the ones never copied to the device ("hybrid"). Both 0 with the fallback off.
 * Either output may be NULL. */
MOE_API moe_status moe_context_get_cpu_fallback_counts(const moe_context* context,
                                                       uint64_t* cpu_experts_out,
                                                       uint64_t* not_loaded_out);

/* Records every token's routing from now on (restarting any recording in progress). */
MOE_API moe_status moe_trace_start(moe_context* context);
/* Stops recording and writes the trace (the moe-trace format, see docs/trace-format.md). */
MOE_API moe_status moe_trace_stop(moe_context* context, const char* path);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MOE_MOE_H_ */
