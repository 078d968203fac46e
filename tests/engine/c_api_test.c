/* The C API from a program compiled as C99: load, tokenize, evaluate, generate with a small
 * expert budget, statistics, traces, and misuse (NULL handles, small buffers, bad ids, budgets
 * below one token's experts, missing files), each giving a status and a message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"

static int failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

#define CHECK_STATUS(call, expected)                                                          \
  do {                                                                                        \
    moe_status s_ = (call);                                                                   \
    if (s_ != (expected)) {                                                                   \
      fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #call, \
              moe_status_name(s_), moe_last_error(), moe_status_name(expected));              \
      ++failures;                                                                             \
    }                                                                                         \
  } while (0)

static int log_lines = 0;
static void on_log(int32_t level, const char* message, void* user) {
  (void)level;
  (void)message;
  ++*(int*)user;
}

static int32_t stop_after_three(int32_t token, void* user) {
  (void)token;
  return ++*(int*)user < 3;
}

int main(void) {
  const char* dir = MOE_SOURCE_DIR "/tests/data/golden/mixtral-tiny-f32";
  CHECK(strcmp(moe_version(), MOE_VERSION_STRING) == 0);
  moe_set_log_callback(on_log, &log_lines, MOE_LOG_INFO);

  /* Misuse before anything exists. */
  moe_model* model = NULL;
  CHECK_STATUS(moe_model_load(NULL, &model), MOE_INVALID_ARGUMENT);
  CHECK(strstr(moe_last_error(), "NULL") != NULL);
  CHECK_STATUS(moe_model_load("/nonexistent-model-dir", &model), MOE_NOT_FOUND);
  CHECK(strstr(moe_last_error(), "/nonexistent-model-dir") != NULL);
  CHECK(model == NULL);
  moe_model_free(NULL);
  moe_context_free(NULL);

  CHECK_STATUS(moe_model_load(dir, &model), MOE_OK);
  if (model == NULL) return 1;
  CHECK(log_lines > 0);
  moe_model_info info;
  CHECK_STATUS(moe_model_get_info(model, &info), MOE_OK);
  CHECK(info.vocab_size == 1000 && info.num_layers == 4 && info.num_experts == 8);
  CHECK(info.top_k == 2 && info.has_tokenizer == 1);
  CHECK(info.all_expert_bytes == info.expert_bytes * 32);

  /* Tokenize: ask for the size first, then fill. */
  const char* text = "the licence grants you";
  size_t n = 0;
  CHECK_STATUS(moe_tokenize(model, text, strlen(text), 1, NULL, 0, &n), MOE_OUT_OF_RANGE);
  CHECK(n > 1);
  int32_t ids[64];
  CHECK_STATUS(moe_tokenize(model, text, strlen(text), 1, ids, 64, &n), MOE_OK);
  CHECK(ids[0] == info.bos_id);
  char back[256];
  size_t len = 0;
  CHECK_STATUS(moe_detokenize(model, ids + 1, n - 1, back, sizeof back, &len), MOE_OK);
  CHECK(strcmp(back, text) == 0);
  CHECK_STATUS(moe_detokenize(model, ids + 1, n - 1, back, 3, &len), MOE_OUT_OF_RANGE);
  CHECK(len == strlen(text));
  int32_t bad_id = 5000;
  CHECK_STATUS(moe_detokenize(model, &bad_id, 1, back, sizeof back, &len), MOE_INVALID_ARGUMENT);

  /* Contexts: budget below one token's experts, bad params, then a 25% budget. */
  moe_context* ctx = NULL;
  moe_context_params params = moe_context_default_params();
  params.expert_budget_bytes = info.expert_bytes; /* one expert, top-k is 2 */
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_RESOURCE_EXHAUSTED);
  CHECK(strstr(moe_last_error(), "smaller than one token's experts") != NULL);
  params = moe_context_default_params();
  params.policy = "nope";
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_INVALID_ARGUMENT);
  params = moe_context_default_params();
  params.struct_size = 3;
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_INVALID_ARGUMENT);
  params = moe_context_default_params();
  params.device = "tpu";
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_INVALID_ARGUMENT);
  CHECK(strstr(moe_last_error(), "cpu, cuda, auto") != NULL);
  params = moe_context_default_params();
  params.cpu_fallback = "sometimes";
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_INVALID_ARGUMENT);
  CHECK(strstr(moe_last_error(), "unknown cpu_fallback 'sometimes' (off, on, hybrid)") != NULL);
  params.cpu_fallback = "hybrid"; /* the default device is the CPU itself */
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_INVALID_ARGUMENT);
  CHECK(strstr(moe_last_error(), "needs a device that is not the CPU") != NULL);
  /* "cuda" works or says why not (no CUDA in this build, no GPU): never a crash. "auto" always
   * finds a device. Both give the logits of the CPU (to bf16 tolerance at worst). */
  {
    const char* devices[] = {"cuda", "auto"};
    int d;
    for (d = 0; d < 2; ++d) {
      moe_context* c = NULL;
      params = moe_context_default_params();
      params.device = devices[d];
      params.cpu_fallback = "hybrid"; /* accepted: auto ignores it where it picks the CPU */
      const moe_status s = moe_context_create(model, &params, &c);
      CHECK(s == MOE_OK || (d == 0 && s == MOE_FAILED_PRECONDITION));
      if (s == MOE_FAILED_PRECONDITION) CHECK(strstr(moe_last_error(), "cuda") != NULL);
      CHECK((s == MOE_OK) == (c != NULL));
      if (c != NULL) {
        const int32_t prompt[3] = {5, 6, 7};
        float* logits = malloc(sizeof(float) * 1000);
        uint64_t on_cpu = 7, not_loaded = 7;
        CHECK_STATUS(moe_evaluate(c, 0, prompt, 3, logits, 1000), MOE_OK);
        CHECK(logits[0] == logits[0]); /* not NaN */
        free(logits);
        CHECK_STATUS(moe_context_get_cpu_fallback_counts(c, &on_cpu, &not_loaded), MOE_OK);
        CHECK(not_loaded <= on_cpu); /* a GPU may or may not send experts to the CPU */
        CHECK_STATUS(moe_context_get_cpu_fallback_counts(c, NULL, NULL), MOE_OK);
      }
      moe_context_free(c);
    }
  }
  params = moe_context_default_params();
  params.expert_budget_fraction = 0.25;
  CHECK_STATUS(moe_context_create(NULL, &params, &ctx), MOE_INVALID_ARGUMENT);
  CHECK_STATUS(moe_context_create(model, &params, &ctx), MOE_OK);
  {
    uint64_t on_cpu = 7, not_loaded = 7;
    CHECK_STATUS(moe_context_get_cpu_fallback_counts(ctx, &on_cpu, &not_loaded), MOE_OK);
    CHECK(on_cpu == 0 && not_loaded == 0); /* the fallback is off */
    CHECK_STATUS(moe_context_get_cpu_fallback_counts(NULL, &on_cpu, &not_loaded),
                 MOE_INVALID_ARGUMENT);
  }
  if (ctx == NULL) return 1;
  /* Two sequences in one call; each gets the logits it would get alone. */
  {
    moe_context* two = NULL;
    moe_context_params p2 = moe_context_default_params();
    p2.max_sequences = 2;
    CHECK_STATUS(moe_context_create(model, &p2, &two), MOE_OK);
    float* both = malloc(sizeof(float) * 2000);
    float* alone = malloc(sizeof(float) * 1000);
    moe_sequence_tokens entries[2] = {{0, ids, n}, {1, ids, 2}};
    CHECK_STATUS(moe_evaluate_batch(two, entries, 2, both, 1999), MOE_OUT_OF_RANGE);
    CHECK_STATUS(moe_evaluate_batch(two, entries, 2, both, 2000), MOE_OK);
    CHECK_STATUS(moe_evaluate(ctx, 0, ids, 2, alone, 1000), MOE_OK);
    float worst = 0;
    for (int i = 0; i < 1000; ++i) {
      const float d = both[1000 + i] - alone[i];
      if (d > worst) worst = d;
      if (-d > worst) worst = -d;
    }
    CHECK(worst < 1e-4f);
    CHECK_STATUS(moe_sequence_reset(ctx, 0), MOE_OK);
    moe_sequence_tokens twice[2] = {{0, ids, 1}, {0, ids, 1}};
    CHECK_STATUS(moe_evaluate_batch(two, twice, 2, both, 2000), MOE_INVALID_ARGUMENT);
    CHECK(strstr(moe_last_error(), "twice") != NULL);
    CHECK_STATUS(moe_evaluate_batch(two, NULL, 0, both, 2000), MOE_INVALID_ARGUMENT);
    free(both);
    free(alone);
    moe_context_free(two);
  }
  moe_model_free(model); /* the context keeps it alive */
  model = NULL;

  float* logits = malloc(sizeof(float) * 1000);
  CHECK_STATUS(moe_evaluate(ctx, 0, ids, n, logits, 999), MOE_OUT_OF_RANGE);
  CHECK_STATUS(moe_evaluate(ctx, 1, ids, n, logits, 1000), MOE_OUT_OF_RANGE);
  CHECK_STATUS(moe_evaluate(ctx, 0, &bad_id, 1, logits, 1000), MOE_INVALID_ARGUMENT);
  CHECK(strstr(moe_last_error(), "5000") != NULL);
  CHECK_STATUS(moe_evaluate(NULL, 0, ids, n, logits, 1000), MOE_INVALID_ARGUMENT);
  int64_t length = -1;
  CHECK_STATUS(moe_sequence_length(ctx, 0, &length), MOE_OK);
  CHECK(length == 0);

  CHECK_STATUS(moe_trace_stop(ctx, "/tmp/never.moetrace"), MOE_FAILED_PRECONDITION);
  CHECK_STATUS(moe_trace_start(ctx), MOE_OK);
  CHECK_STATUS(moe_evaluate(ctx, 0, ids, n, logits, 1000), MOE_OK);
  CHECK_STATUS(moe_sequence_length(ctx, 0, &length), MOE_OK);
  CHECK(length == (int64_t)n);

  moe_generate_params gp = moe_generate_default_params();
  gp.max_tokens = 8;
  gp.stop_at_eos = 0;
  int32_t out[8];
  size_t produced = 0;
  CHECK_STATUS(moe_generate(ctx, 0, ids, n, &gp, out, 4, &produced, NULL, NULL), MOE_OUT_OF_RANGE);
  CHECK_STATUS(moe_sequence_reset(ctx, 0), MOE_OK);
  CHECK_STATUS(moe_generate(ctx, 0, ids, n, &gp, out, 8, &produced, NULL, NULL), MOE_OK);
  CHECK(produced == 8);
  int calls = 0;
  CHECK_STATUS(moe_sequence_reset(ctx, 0), MOE_OK);
  CHECK_STATUS(moe_generate(ctx, 0, ids, n, &gp, out, 8, &produced, stop_after_three, &calls),
               MOE_OK);
  CHECK(produced == 3 && calls == 3);

  moe_stats stats;
  CHECK_STATUS(moe_context_get_stats(ctx, &stats), MOE_OK);
  CHECK(stats.expert_accesses == stats.expert_hits + stats.expert_misses);
  CHECK(stats.expert_misses > 0 && stats.expert_evictions > 0);
  CHECK(stats.bytes_to_device == stats.expert_loads * info.expert_bytes);
  CHECK(stats.expert_slots == 8); /* 25% of 32 experts */
  CHECK(stats.device_peak_bytes <= stats.device_capacity_bytes);
  CHECK(stats.prefill_tokens > 0 && stats.decode_tokens > 0);

  const char* trace_path = "c_api_test.moetrace";
  CHECK_STATUS(moe_trace_stop(ctx, trace_path), MOE_OK);
  FILE* f = fopen(trace_path, "rb");
  CHECK(f != NULL);
  if (f != NULL) fclose(f);
  remove(trace_path);

  /* Without a predictor there is no recall to read. */
  double recall[8];
  CHECK_STATUS(moe_context_get_layer_recall(ctx, recall, 8), MOE_FAILED_PRECONDITION);
  CHECK(strstr(moe_last_error(), "no predictor") != NULL);
  CHECK(stats.prefetch_loads == 0 && stats.prediction_recall == 0.0);
  moe_context_free(ctx);

  /* With the next-layer gate predictor: prefetches happen, recall is measured per layer, and the
   * generated tokens are the same as without it. */
  CHECK_STATUS(moe_model_load(dir, &model), MOE_OK);
  if (model == NULL) return 1;
  moe_context_params pp = moe_context_default_params();
  pp.expert_budget_fraction = 0.25;
  pp.predictor = "gate";
  pp.prefetch_depth = 2;
  moe_context* pctx = NULL;
  CHECK_STATUS(moe_context_create(model, &pp, &pctx), MOE_OK);
  int32_t predicted_out[8];
  size_t predicted_n = 0;
  CHECK_STATUS(moe_generate(pctx, 0, ids, n, &gp, predicted_out, 8, &predicted_n, NULL, NULL),
               MOE_OK);
  CHECK(predicted_n == 8);
  CHECK(memcmp(predicted_out, out, sizeof(int32_t) * 3) == 0);
  moe_stats pstats;
  CHECK_STATUS(moe_context_get_stats(pctx, &pstats), MOE_OK);
  CHECK(pstats.prefetch_loads > 0 && pstats.prefetch_useful <= pstats.prefetch_loads);
  CHECK(pstats.prediction_recall > 0.0 && pstats.prediction_recall <= 1.0);
  CHECK_STATUS(moe_context_get_layer_recall(pctx, recall, 3), MOE_OUT_OF_RANGE);
  CHECK_STATUS(moe_context_get_layer_recall(pctx, NULL, 8), MOE_INVALID_ARGUMENT);
  CHECK_STATUS(moe_context_get_layer_recall(NULL, recall, 8), MOE_INVALID_ARGUMENT);
  CHECK_STATUS(moe_context_get_layer_recall(pctx, recall, 8), MOE_OK);
  for (int l = 0; l < 4; ++l) CHECK(recall[l] >= 0.0 && recall[l] <= 1.0);
  moe_context_free(pctx);

  /* A predictor the library does not know, and a predictor file that does not exist. */
  pp.predictor = "oracle";
  CHECK_STATUS(moe_context_create(model, &pp, &pctx), MOE_INVALID_ARGUMENT);
  CHECK(strstr(moe_last_error(), "oracle") != NULL);
  pp.predictor = "transition";
  pp.predictor_file = "/nonexistent/tables.safetensors";
  CHECK(moe_context_create(model, &pp, &pctx) != MOE_OK);
  CHECK(strstr(moe_last_error(), "/nonexistent/tables.safetensors") != NULL);
  moe_model_free(model);

  free(logits);
  moe_set_log_callback(NULL, NULL, MOE_LOG_WARNING);
  if (failures != 0) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
