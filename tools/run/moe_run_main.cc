// moe-run: generate text from a Mixtral-style checkpoint with the expert cache in the loop.
// Everything goes through the public C API (include/moe/moe.h), as an embedding program would.
//   moe-run --model DIR --prompt "Once upon a time" --max-tokens 64 --expert-budget 50%
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "fmt/format.h"
#include "moe/moe.h"
#include "tools/common/cli_flags.h"

namespace moe {
namespace {

struct Budget {
  uint64_t bytes = 0;
  double fraction = 1.0;
};

// "2GiB", "512MB", "50%", "0.5" (a fraction), or "all".
absl::StatusOr<Budget> ParseBudget(const std::string& text) {
  Budget b;
  if (text.empty() || text == "all") return b;
  if (text.back() == '%') {
    char* end = nullptr;
    const double pct = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size() - 1 || !(pct > 0 && pct <= 100)) {
      return absl::InvalidArgumentError(
          fmt::format("--expert-budget '{}': a percentage must be in (0, 100]", text));
    }
    b.fraction = pct / 100;
    return b;
  }
  if (text.find('.') != std::string::npos &&
      text.find_first_not_of("0123456789.") == std::string::npos) {
    const double f = std::strtod(text.c_str(), nullptr);
    if (!(f > 0 && f <= 1)) {
      return absl::InvalidArgumentError(
          fmt::format("--expert-budget '{}': a fraction must be in (0, 1]", text));
    }
    b.fraction = f;
    return b;
  }
  auto bytes = ParseByteSize(text);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(fmt::format(
        "--expert-budget '{}': expected a size (2GiB, 512MB), a percentage (50%) or a fraction "
        "(0.5)",
        text));
  }
  if (*bytes == 0) return absl::InvalidArgumentError("--expert-budget must be > 0");
  b.bytes = *bytes;
  return b;
}

int Fail(const std::string& what) {
  std::cerr << "moe-run: error: " << what << "\n";
  return 2;
}

int FailC(moe_status status) {
  return Fail(fmt::format("{} ({})", moe_last_error(), moe_status_name(status)));
}

struct StreamState {
  const moe_model* model;
  bool has_tokenizer;
  bool quiet;
  std::vector<int32_t> ids;  // the prompt's, then the generated ones
  size_t printed = 0;        // bytes of decoded text already printed (or standing for the prompt)
  size_t generated = 0;
};

// Decoded text of ids; empty when it cannot be decoded.
std::string Detokenize(const moe_model* model, const std::vector<int32_t>& ids) {
  std::vector<char> text(16 * ids.size() + 64);
  size_t len = 0;
  if (moe_detokenize(model, ids.data(), ids.size(), text.data(), text.size(), &len) != MOE_OK) {
    return {};
  }
  return std::string(text.data(), len);
}

// Prints the text the new token completes. Decoding the prompt and the whole continuation each
// time keeps multi-byte characters and SentencePiece's leading spaces (between the prompt and the
// first generated word, too) right.
int32_t OnToken(int32_t token, void* user) {
  auto* s = static_cast<StreamState*>(user);
  s->ids.push_back(token);
  ++s->generated;
  if (s->quiet) return 1;
  if (!s->has_tokenizer) {
    std::printf("%s%d", s->generated > 1 ? " " : "", token);
    std::fflush(stdout);
    return 1;
  }
  const std::string text = Detokenize(s->model, s->ids);
  const size_t len = text.size();
  if (len > s->printed) {
    std::fwrite(text.data() + s->printed, 1, len - s->printed, stdout);
    std::fflush(stdout);
    s->printed = len;
  }
  return 1;
}

int Main(int argc, char** argv) {
  std::string model_dir, prompt, prompt_ids, prompt_file,
      budget_text = "all", policy = "lru", scope = "global", trace_out, device = "cpu",
      predictor = "none", predictor_file, force_routing, cpu_fallback = "off";
  int64_t prefetch_depth = 1, prefetch_budget = 0;
  int64_t max_tokens = 32, top_k = 0, seed = 0, threads = 0, prefill_chunk = 256;
  int64_t max_context = 0;
  double temperature = 0, top_p = 1;
  bool quiet = false, no_eos = false, verbose = false;
  FlagSet flags("moe-run",
                "Generates text from a Mixtral-style Hugging Face checkpoint with the experts in "
                "host memory and a byte-budgeted expert cache on the device.\n"
                "  moe-run --model DIR --prompt TEXT [--max-tokens N] [--expert-budget 50%]");
  flags.AddString("model", &model_dir, "checkpoint directory (config.json + *.safetensors)");
  flags.AddString("prompt", &prompt, "prompt text (needs tokenizer.model in the directory)");
  flags.AddString("prompt-ids", &prompt_ids, "prompt as comma-separated token ids");
  flags.AddString("prompt-file", &prompt_file,
                  "one prompt per non-empty line, each a request of its own (the sequence is "
                  "reset between them; the cache and predictor persist); the summary covers all");
  flags.AddInt("max-tokens", &max_tokens, "tokens to generate at most");
  flags.AddString("expert-budget", &budget_text,
                  "device memory for experts: a size (2GiB), a percentage of all expert bytes "
                  "(50%), a fraction (0.5) or 'all'");
  flags.AddString("policy", &policy,
                  "eviction policy: lru, lfu, arc, lrfu, predictive (needs --predictor)");
  flags.AddString("scope", &scope, "cache scope: global or layer");
  flags.AddString("device", &device,
                  "device: cpu, cuda (the whole forward on GPU 0) or auto (cuda when a GPU is "
                  "visible and the build has CUDA, else cpu)");
  flags.AddString("cpu-fallback", &cpu_fallback,
                  "off; on (a missed expert whose copy would land later than the CPU could "
                  "compute it runs on the CPU); hybrid (such misses are not loaded at all): for "
                  "--device cuda/auto");
  flags.AddString("trace-out", &trace_out, "record the run's routing into this trace file");
  flags.AddString("predictor", &predictor,
                  "router predictor for prefetching: none, gate, frequency, transition, recency, "
                  "combined, learned");
  flags.AddString("predictor-file", &predictor_file,
                  "learned predictor tables (moe-replay --predictor-out) or weights ('learned': "
                  "default MODEL/learned_predictor.safetensors)");
  flags.AddInt("prefetch-depth", &prefetch_depth, "layers ahead to prefetch with a predictor");
  flags.AddString("force-routing", &force_routing,
                  "benchmark mode: take each token's experts from this routing trace instead of "
                  "the router (for synthetic weights of a real model's shapes; the text is then "
                  "meaningless)");
  flags.AddInt("prefetch-budget", &prefetch_budget,
               "experts prefetched per predicted layer (0: top-k)");
  flags.AddDouble("temperature", &temperature, "sampling temperature (0: greedy)");
  flags.AddInt("top-k", &top_k, "sample among the k most probable tokens (0: all)");
  flags.AddDouble("top-p", &top_p, "nucleus sampling threshold in (0, 1]");
  flags.AddInt("seed", &seed, "sampling seed");
  flags.AddInt("threads", &threads, "CPU threads (0: all cores)");
  flags.AddInt("prefill-chunk", &prefill_chunk, "prompt tokens per prefill step");
  flags.AddInt("max-context", &max_context, "tokens per sequence (0: min(max position, 4096))");
  flags.AddBool("no-eos", &no_eos, "do not stop at the end-of-sequence token");
  flags.AddBool("quiet", &quiet, "print only the summary");
  flags.AddBool("verbose", &verbose, "log loading and engine details");
  absl::Status st = flags.Parse(argc, argv);
  if (FlagSet::IsHelp(st)) {
    std::cout << flags.Usage();
    return 0;
  }
  if (!st.ok()) return Fail(std::string(st.message()));
  if (model_dir.empty()) return Fail("--model DIR is required (see --help)");
  if (int(!prompt.empty()) + int(!prompt_ids.empty()) + int(!prompt_file.empty()) != 1) {
    return Fail("give exactly one of --prompt TEXT, --prompt-ids 1,2,3 and --prompt-file FILE");
  }
  std::vector<std::string> prompts;  // texts, or one comma-separated id list
  if (!prompt_file.empty()) {
    std::ifstream in(prompt_file);
    if (!in) return Fail(fmt::format("--prompt-file {}: cannot open it", prompt_file));
    for (std::string line; std::getline(in, line);) {
      if (line.find_first_not_of(" \t\r") != std::string::npos) prompts.push_back(line);
    }
    if (prompts.empty()) return Fail(fmt::format("--prompt-file {}: no prompts", prompt_file));
  } else if (!prompt.empty()) {
    prompts.push_back(prompt);
  }
  if (max_tokens < 0) return Fail(fmt::format("--max-tokens {} must be >= 0", max_tokens));
  auto budget = ParseBudget(budget_text);
  if (!budget.ok()) return Fail(std::string(budget.status().message()));
  moe_set_log_callback(nullptr, nullptr, verbose ? MOE_LOG_INFO : MOE_LOG_WARNING);

  moe_model* model = nullptr;
  moe_status s = moe_model_load(model_dir.c_str(), &model);
  if (s != MOE_OK) return FailC(s);
  moe_model_info info;
  moe_model_get_info(model, &info);

  std::vector<std::vector<int32_t>> requests;
  if (!prompt_ids.empty()) {
    std::vector<int32_t> ids;
    for (const std::string& part : SplitList(prompt_ids)) {
      char* end = nullptr;
      const long v = std::strtol(part.c_str(), &end, 10);
      if (end != part.c_str() + part.size()) {
        moe_model_free(model);
        return Fail(fmt::format("--prompt-ids: '{}' is not an integer", part));
      }
      ids.push_back(static_cast<int32_t>(v));
    }
    requests.push_back(std::move(ids));
  }
  for (const std::string& text : prompts) {
    size_t n = 0;
    s = moe_tokenize(model, text.data(), text.size(), 1, nullptr, 0, &n);
    std::vector<int32_t> ids(n);
    if (s == MOE_OK || s == MOE_OUT_OF_RANGE) {
      s = moe_tokenize(model, text.data(), text.size(), 1, ids.data(), ids.size(), &n);
    }
    if (s != MOE_OK) {
      const int rc = FailC(s);
      moe_model_free(model);
      return rc;
    }
    requests.push_back(std::move(ids));
  }
  for (const std::vector<int32_t>& ids : requests) {
    if (ids.empty()) {
      moe_model_free(model);
      return Fail("a prompt has no tokens");
    }
  }

  moe_context_params cp = moe_context_default_params();
  cp.expert_budget_bytes = budget->bytes;
  cp.expert_budget_fraction = budget->fraction;
  cp.policy = policy.c_str();
  cp.cache_scope = scope.c_str();
  cp.device = device.c_str();
  cp.num_threads = static_cast<int32_t>(threads);
  cp.prefill_chunk = static_cast<int32_t>(prefill_chunk);
  cp.max_context = static_cast<int32_t>(max_context);
  if (predictor == "learned" && predictor_file.empty()) {
    predictor_file = model_dir + "/learned_predictor.safetensors";
  }
  cp.predictor = predictor.c_str();
  cp.predictor_file = predictor_file.c_str();
  cp.prefetch_depth = static_cast<int32_t>(prefetch_depth);
  cp.prefetch_budget = static_cast<int32_t>(prefetch_budget);
  cp.force_routing_trace = force_routing.c_str();
  cp.cpu_fallback = cpu_fallback.c_str();
  moe_context* ctx = nullptr;
  s = moe_context_create(model, &cp, &ctx);
  if (s != MOE_OK) {
    moe_model_free(model);
    return FailC(s);
  }
  auto cleanup = [&] {
    moe_context_free(ctx);
    moe_model_free(model);
  };
  if (!trace_out.empty()) moe_trace_start(ctx);

  moe_generate_params gp = moe_generate_default_params();
  gp.max_tokens = static_cast<int32_t>(max_tokens);
  gp.temperature = static_cast<float>(temperature);
  gp.top_k = static_cast<int32_t>(top_k);
  gp.top_p = static_cast<float>(top_p);
  gp.seed = static_cast<uint64_t>(seed);
  gp.stop_at_eos = no_eos ? 0 : 1;
  std::vector<int32_t> out(static_cast<size_t>(max_tokens) + 1);
  for (size_t r = 0; r < requests.size(); ++r) {
    StreamState stream{model, info.has_tokenizer != 0, quiet, {}, 0, 0};
    if (r < prompts.size() && stream.has_tokenizer) {  // continue after the prompt's own text
      stream.ids = requests[r];
      stream.printed = Detokenize(model, stream.ids).size();
    }
    if (!quiet && r < prompts.size()) {
      std::fputs(prompts[r].c_str(), stdout);
      std::fflush(stdout);
    }
    size_t produced = 0;
    moe_sequence_reset(ctx, 0);
    s = moe_generate(ctx, 0, requests[r].data(), requests[r].size(), &gp, out.data(), out.size(),
                     &produced, &OnToken, &stream);
    if (!quiet) std::printf("\n");
    if (s != MOE_OK) {
      const int rc = FailC(s);
      cleanup();
      return rc;
    }
  }
  moe_stats stats;
  moe_context_get_stats(ctx, &stats);
  if (!trace_out.empty()) {
    s = moe_trace_stop(ctx, trace_out.c_str());
    if (s != MOE_OK) {
      const int rc = FailC(s);
      cleanup();
      return rc;
    }
  }
  const double hit_rate =
      stats.expert_accesses ? double(stats.expert_hits) / double(stats.expert_accesses) : 0.0;
  auto rate = [](uint64_t tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; };
  std::cerr << fmt::format(
      "--- moe-run summary ---\n"
      "model           {} ({} layers x {} experts, top-{}, expert {})\n"
      "expert budget   {} slots = {} of {} ({:.0f}%), policy {}, scope {}, cpu fallback {}\n"
      "prefill         {} tokens in {:.3f} s = {:.1f} tokens/s\n"
      "decode          {} tokens in {:.3f} s = {:.2f} tokens/s\n"
      "expert cache    {} accesses, hit rate {:.4f}, {} loads, {} evictions\n"
      "bytes moved     {} host->device (expert copies took {:.3f} s)\n"
      "device arena    peak {} of {} (expert slots + activations + KV cache; + weights where the "
      "device copies them)\n",
      model_dir, info.num_layers, info.num_experts, info.top_k, FormatBytes(info.expert_bytes),
      stats.expert_slots, FormatBytes(stats.expert_slot_bytes), FormatBytes(info.all_expert_bytes),
      100.0 * double(stats.expert_slot_bytes) / double(info.all_expert_bytes), policy, scope,
      cpu_fallback, stats.prefill_tokens, stats.prefill_seconds,
      rate(stats.prefill_tokens, stats.prefill_seconds), stats.decode_tokens, stats.decode_seconds,
      rate(stats.decode_tokens, stats.decode_seconds), stats.expert_accesses, hit_rate,
      stats.expert_loads, stats.expert_evictions, FormatBytes(stats.bytes_to_device),
      stats.load_seconds, FormatBytes(stats.device_peak_bytes),
      FormatBytes(stats.device_capacity_bytes));
  if (cpu_fallback != "off") {
    uint64_t on_cpu = 0, not_loaded = 0;
    moe_context_get_cpu_fallback_counts(ctx, &on_cpu, &not_loaded);
    std::cerr << fmt::format(
        "cpu fallback    {}: {} missed experts computed on the CPU ({} never "
        "copied to the device)\n",
        cpu_fallback, on_cpu, not_loaded);
  }
  if (predictor != "none") {
    std::vector<double> recall(static_cast<size_t>(info.num_layers));
    moe_context_get_layer_recall(ctx, recall.data(), recall.size());
    std::string per_layer;
    for (double r : recall) per_layer += fmt::format(" {:.2f}", r);
    std::cerr << fmt::format(
        "prediction      {} (depth {}): one-layer-ahead recall {:.4f}, per layer:{}\n"
        "prefetch        {} loads, {} useful, {} wasted\n",
        predictor, prefetch_depth, stats.prediction_recall, per_layer, stats.prefetch_loads,
        stats.prefetch_useful, FormatBytes(stats.prefetch_wasted_bytes));
  }
  if (!trace_out.empty()) {
    // Id-only predictors replay exactly; the gate and the learned predictor read hidden states a
    // trace does not hold.
    std::string replay_flags;
    if (predictor != "none" && predictor != "gate" && predictor != "learned") {
      replay_flags = fmt::format(" --predictor {} --prefetch-depth {} --prefetch-budget {}",
                                 predictor, prefetch_depth, prefetch_budget);
      if (!predictor_file.empty()) replay_flags += " --predictor-in " + predictor_file;
    }
    std::cerr << fmt::format(
        "trace           {} (replay: moe-replay --trace {} --budget-bytes {} --scope {} "
        "--policy {} --prefill-chunk {}{})\n",
        trace_out, trace_out, stats.expert_slot_bytes, scope, policy, prefill_chunk, replay_flags);
    if (predictor == "gate") {
      std::cerr << "                (the gate predictor reads hidden states, which a trace does "
                   "not hold: replay shows the cache without it)\n";
    }
  }
  cleanup();
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
