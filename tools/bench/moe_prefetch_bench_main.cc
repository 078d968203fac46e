// moe-prefetch-bench: what prediction + prefetching buys on a modelled GPU, in one run.
//
// The engine runs on the FakeDevice (virtual clock, modelled host -> device link; compute charged
// as weight bytes read / memory bandwidth), so the figures are deterministic and show what the
// same run would cost on a GPU with those ratios. Every configuration runs the same requests
// (each prompt of --prompt-file, or synthetic ones, then --tokens greedy decode steps) and
// prints device time beside the on-demand baseline (the first configuration) and the floor
// max(compute, Belady loads x transfer time), Belady computed by replaying the baseline's own
// trace with the same capacity and scope. With --batch B, B requests decode side by side
// (continuous batching: each decode step runs one token of every active request; a finished
// request's slot takes the next prompt, whose prefill runs as its own step).
//   moe-prefetch-bench --model DIR [--prompt-file F] [--configs none:0,gate:1] [--expert-budget 25]
#include <algorithm>
#include <fstream>
#include <iostream>
#include <vector>

#include "fmt/format.h"
#include "predictor/routing_trace.h"
#include "runtime/engine.h"
#include "runtime/logging.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "runtime/status.h"
#include "runtime/tokenizer.h"
#include "tools/common/cli_flags.h"
#include "tools/replay/replay.h"
#include "tools/replay/replay_schedule.h"

namespace moe {
namespace {

struct Config {
  std::string name;
  std::string predictor;
  int32_t depth = 0;
  bool cpu_fallback = false;
  bool cancel_stale = false;
  bool cpu_bypass = false;  // +hybrid: the CPU fallback, and misses it serves are not loaded
  std::string policy;       // empty: --policy
};

// "predictor:depth[@policy][+cpu|+hybrid][+cancel]".
absl::StatusOr<Config> ParseConfig(const std::string& text) {
  Config config;
  config.name = text;
  std::string c = text;
  for (size_t plus; (plus = c.rfind('+')) != std::string::npos; c.resize(plus)) {
    const std::string flag = c.substr(plus + 1);
    if (flag == "cpu") {
      config.cpu_fallback = true;
    } else if (flag == "hybrid") {
      config.cpu_fallback = config.cpu_bypass = true;
    } else if (flag == "cancel") {
      config.cancel_stale = true;
    } else {
      return InvalidArgument(
          "--configs: unknown option '+{}' in '{}' (valid: +cpu, +hybrid, +cancel)", flag, text);
    }
  }
  if (const size_t at = c.find('@'); at != std::string::npos) {
    config.policy = c.substr(at + 1);
    c.resize(at);
  }
  const size_t colon = c.find(':');
  config.predictor = c.substr(0, colon);
  if (colon != std::string::npos) {
    char* end = nullptr;
    config.depth = static_cast<int32_t>(std::strtol(c.c_str() + colon + 1, &end, 10));
    if (*end != '\0' || end == c.c_str() + colon + 1) {
      return InvalidArgument("--configs: bad depth in '{}'", text);
    }
  }
  return config;
}

struct RunResult {
  EngineStats stats;
  RoutingTrace trace;
};

absl::StatusOr<std::vector<std::vector<int32_t>>> Prompts(const Model& model,
                                                          const std::string& file, int64_t count,
                                                          int64_t length) {
  std::vector<std::vector<int32_t>> prompts;
  if (file.empty()) {  // synthetic: deterministic ids
    for (int64_t r = 0; r < count; ++r) {
      std::vector<int32_t> ids;
      for (int64_t i = 0; i < length; ++i) {
        ids.push_back(static_cast<int32_t>(3 + (i * 37 + r * 101) % (model.config.vocab_size - 3)));
      }
      prompts.push_back(std::move(ids));
    }
    return prompts;
  }
  MOE_ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(model.dir + "/tokenizer.model"));
  std::ifstream in(file);
  if (!in) return NotFound("--prompt-file {}: cannot open it", file);
  for (std::string line; std::getline(in, line) && int64_t(prompts.size()) < count;) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer->Encode(line));
    ids.insert(ids.begin(), tokenizer->bos_id());
    prompts.push_back(std::move(ids));
  }
  if (prompts.empty()) return InvalidArgument("--prompt-file {}: no prompts", file);
  return prompts;
}

// Runs every prompt for `tokens` greedy steps (the first is its prefill), `batch` requests at a
// time: each request holds an engine sequence until done, then the next prompt takes it.
absl::StatusOr<RunResult> Run(std::shared_ptr<const Model> model, EngineOptions options,
                              const std::vector<std::vector<int32_t>>& prompts, int64_t tokens,
                              int32_t batch) {
  options.max_sequences = batch;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, options));
  engine->StartTrace();
  const auto vocab = static_cast<size_t>(model->config.vocab_size);
  std::vector<float> logits(vocab * static_cast<size_t>(batch));
  struct Request {
    int64_t steps = 0;  // done; 0: the slot is free
    int32_t next = 0;   // the token to append
  };
  std::vector<Request> slots(static_cast<size_t>(batch));
  size_t next_prompt = 0;
  std::vector<SequenceTokens> entries;
  std::vector<int32_t> entry_slot;
  for (;;) {
    // Free slots take the next prompts; each prefill is its own step.
    for (int32_t s = 0; s < batch && next_prompt < prompts.size(); ++s) {
      if (slots[s].steps != 0) continue;
      MOE_RETURN_IF_ERROR(engine->ResetSequence(s));
      const SequenceTokens entry{s, prompts[next_prompt++]};
      MOE_RETURN_IF_ERROR(engine->Evaluate({&entry, 1}, false, {logits.data(), vocab}));
      slots[s] = {1, Argmax({logits.data(), vocab})};
      if (tokens == 1) slots[s].steps = 0;
    }
    // One decode step over every active request.
    entries.clear();
    entry_slot.clear();
    for (int32_t s = 0; s < batch; ++s) {
      if (slots[s].steps == 0) continue;
      entries.push_back({s, {&slots[s].next, 1}});
      entry_slot.push_back(s);
    }
    if (entries.empty()) {
      if (next_prompt >= prompts.size()) break;
      continue;
    }
    MOE_RETURN_IF_ERROR(engine->Evaluate(entries, false, {logits.data(), vocab * entries.size()}));
    for (size_t i = 0; i < entries.size(); ++i) {
      Request& r = slots[static_cast<size_t>(entry_slot[i])];
      r.next = Argmax({logits.data() + i * vocab, vocab});
      ++r.steps;
      if (r.steps >= tokens) r.steps = 0;  // done: the slot is free
    }
  }
  RunResult r;
  r.stats = engine->stats();
  MOE_ASSIGN_OR_RETURN(r.trace, engine->StopTrace());
  return r;
}

int Main(int argc, char** argv) {
  std::string learned_file;  // for "learned" configs; default: the model's own
  std::string model_dir, prompt_file, configs_text = "none:0,gate:1,gate:2,frequency:1",
                                      policy = "lru", scope = "global";
  int64_t tokens = 32, prompts_count = 32, prompt_len = 32, window = 2, max_unconfirmed = 0,
          step_experts = 0, batch = 1;
  double budget_percent = 25, link_gbps = 25, compute_gbps = 3350, latency_us = 10, cpu_gbps = 20,
         threshold = 0;
  FlagSet flags("moe-prefetch-bench",
                "Device time with prediction + prefetching against on-demand loading and the "
                "max(compute, Belady) floor, on the fake device (modelled link and compute).\n"
                "  moe-prefetch-bench --model DIR [--prompt-file F] [--configs none:0,gate:1]");
  flags.AddString("model", &model_dir, "checkpoint directory");
  flags.AddString(
      "learned-file", &learned_file,
      "weights of the 'learned' predictor (default: MODEL/learned_predictor.safetensors)");
  flags.AddString("prompt-file", &prompt_file,
                  "prompts, one per line (default: synthetic token ids)");
  flags.AddInt("prompts", &prompts_count, "requests to run at most");
  flags.AddInt("prompt-tokens", &prompt_len, "synthetic prompt length");
  flags.AddInt("tokens", &tokens, "greedy steps per request (the first is the prefill)");
  flags.AddInt("batch", &batch, "requests decoded side by side (continuous batching)");
  flags.AddString("configs", &configs_text,
                  "predictor:depth[@policy][+cpu|+hybrid][+cancel] list: '@predictive' "
                  "overrides --policy, '+cpu' adds the CPU fallback, '+hybrid' the CPU fallback "
                  "without loading the misses it serves (unless the link idles), '+cancel' "
                  "cancels queued prefetches a newer prediction dropped (e.g. "
                  "gate:1@predictive+cpu); the first is the baseline (none:0 is on-demand)");
  flags.AddDouble("expert-budget", &budget_percent, "expert budget, percent of all expert bytes");
  flags.AddString("policy", &policy, "eviction policy");
  flags.AddString("scope", &scope, "cache scope: global or layer");
  flags.AddDouble("link-gbps", &link_gbps, "host -> device link, GB/s (PCIe 4 x16: ~25)");
  flags.AddDouble("latency-us", &latency_us, "per-copy latency, microseconds");
  flags.AddDouble("compute-gbps", &compute_gbps,
                  "device memory bandwidth for compute, GB/s (H100 HBM3: ~3350)");
  flags.AddInt("copy-window", &window, "expert copies on the device's copy stream at a time");
  flags.AddInt("prefetch-cap", &max_unconfirmed,
               "experts prefetched but not yet used at any time (0: no cap)");
  flags.AddInt("prefetch-step-experts", &step_experts,
               "experts' worth of prefetch bytes admitted per step (0: no budget)");
  flags.AddDouble("prefetch-threshold", &threshold,
                  "prefetch only experts predicted with at least this probability");
  flags.AddDouble("cpu-gbps", &cpu_gbps,
                  "host memory bandwidth of CPU expert compute, GB/s (configs ending in +cpu; "
                  "0: measured at start-up)");
  return flags.Run(argc, argv, [&]() -> absl::Status {
    if (model_dir.empty()) return InvalidArgument("--model DIR is required");
    SetLogLevel(LogLevel::kWarning);  // the table is the output; engine chatter is not
    if (tokens < 1) return InvalidArgument("--tokens {} must be >= 1", tokens);
    if (batch < 1 || batch > 1024) return InvalidArgument("--batch {} must be in [1, 1024]", batch);
    if (!(budget_percent > 0 && budget_percent <= 100)) {
      return InvalidArgument("--expert-budget {} must be in (0, 100]", budget_percent);
    }
    std::vector<Config> configs;
    for (const std::string& c : SplitList(configs_text)) {
      MOE_ASSIGN_OR_RETURN(Config config, ParseConfig(c));
      configs.push_back(std::move(config));
    }
    if (configs.empty()) return InvalidArgument("--configs is empty");
    MOE_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, Model::Load(model_dir));
    MOE_ASSIGN_OR_RETURN(const auto prompts,
                         Prompts(*model, prompt_file, prompts_count, prompt_len));
    MOE_ASSIGN_OR_RETURN(const CacheScope cache_scope, ParseCacheScope(scope));
    const ModelConfig& c = model->config;
    const uint64_t expert_bytes = model->weights.expert_bytes;
    const uint64_t all = expert_bytes * c.num_layers * c.num_experts;

    EngineOptions base;
    base.device = "fake";
    base.fake_device.link_bytes_per_second = link_gbps * 1e9;
    base.fake_device.link_latency_seconds = latency_us * 1e-6;
    base.fake_compute_bytes_per_second = compute_gbps * 1e9;
    base.expert_budget_bytes = static_cast<uint64_t>(double(all) * budget_percent / 100.0);
    base.policy = policy;
    base.scope = cache_scope;
    base.copy_window = static_cast<int32_t>(window);
    base.num_threads = 0;
    base.cpu_bytes_per_second = cpu_gbps * 1e9;
    base.prefetch.threshold = threshold;
    base.max_unconfirmed_prefetches = max_unconfirmed;
    base.prefetch_bytes_per_step =
        static_cast<uint64_t>(step_experts) * model->weights.expert_bytes;

    const double transfer_s = latency_us * 1e-6 + double(expert_bytes) / (link_gbps * 1e9);
    std::cout << fmt::format(
        "model {} ({} layers x {} experts, top-{}, expert {:.1f} KiB); {} requests x {} steps, "
        "{} at a time\n"
        "fake device: link {} GB/s + {} us per copy (one expert {:.1f} us), compute {} GB/s "
        "(one expert {:.2f} us); expert budget {}% ({} policy, {} scope)\n\n",
        model_dir, c.num_layers, c.num_experts, c.top_k, expert_bytes / 1024.0, prompts.size(),
        tokens, batch, link_gbps, latency_us, transfer_s * 1e6, compute_gbps,
        double(expert_bytes) / (compute_gbps * 1e9) * 1e6, budget_percent, policy, scope);
    std::cout << fmt::format(
        "{:<24} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9} {:>10} {:>8} {:>9} {:>7} {:>6}\n", "config",
        "total ms", "decode ms", "vs base", "stall ms", "hit", "link MiB", "prefetched", "useful",
        "cancelled", "wasted", "on cpu");
    double base_decode = 0, base_compute = 0, cpu_bytes_rate = 0, cpu_flop_rate = 0;
    RoutingTrace base_trace;
    uint64_t slot_bytes = 0;
    for (size_t i = 0; i < configs.size(); ++i) {
      EngineOptions options = base;
      options.predictor = configs[i].predictor;
      options.prefetch.depth = configs[i].depth;
      if (options.predictor == "learned") {
        options.predictor_file =
            learned_file.empty() ? model_dir + "/learned_predictor.safetensors" : learned_file;
      }
      options.cpu_fallback = configs[i].cpu_fallback;
      options.cancel_stale_prefetches = configs[i].cancel_stale;
      options.cpu_fallback_bypass = configs[i].cpu_bypass;
      if (!configs[i].policy.empty()) options.policy = configs[i].policy;
      MOE_ASSIGN_OR_RETURN(RunResult r,
                           Run(model, options, prompts, tokens, static_cast<int32_t>(batch)));
      const EngineStats& s = r.stats;
      const TransferCounters& t = s.transfers;
      if (configs[i].cpu_fallback) {
        cpu_bytes_rate = s.cpu_bytes_per_second;
        cpu_flop_rate = s.cpu_flops_per_second;
      }
      if (i == 0) {
        base_decode = s.decode.device_seconds;
        base_compute = s.device.compute_seconds;
        base_trace = std::move(r.trace);
        slot_bytes = s.expert_arena_bytes;
      }
      // Bytes of prefetches that went over the link and were evicted unused, over all bytes
      // moved (prefetches cancelled while queued cost nothing).
      const double wasted =
          t.bytes_started ? double(t.wasted_bytes) / double(t.bytes_started) : 0.0;
      std::cout << fmt::format(
          "{:<24} {:>10.3f} {:>9.3f} {:>8.3f}x {:>9.3f} {:>7.4f} {:>9.1f} {:>10} {:>8} {:>9} "
          "{:>6.1f}% {:>6}\n",
          configs[i].name, s.device_seconds * 1e3, s.decode.device_seconds * 1e3,
          base_decode > 0 ? s.decode.device_seconds / base_decode : 0,
          s.device.copy_stall_seconds * 1e3, s.cache.hit_rate(),
          double(t.bytes_started) / (1 << 20), t.prefetch_issued, t.useful,
          s.stale_prefetches_cancelled, 100.0 * wasted, s.cpu_fallbacks);
    }
    // The floor for the whole run: Belady's loads for the baseline's trace over the link, or the
    // compute, whichever is larger. Replay reproduces a run's steps only one request at a time
    // (a trace does not record which tokens of several requests shared a step), so a batched
    // run gets no floor rather than a wrong one.
    if (batch == 1) {
      ReplayOptions ro;
      ro.scope = cache_scope;
      ro.budget_bytes = slot_bytes;
      ro.expert_bytes = expert_bytes;
      ro.policy = "belady";
      const ReplaySchedule schedule(base_trace, {}, 1, 256);
      MOE_ASSIGN_OR_RETURN(ReplayResult belady, RunReplay(base_trace, schedule, ro, nullptr));
      const double floor = std::max(base_compute, double(belady.stats.loads()) * transfer_s);
      std::cout << fmt::format(
          "\nfloor (whole run) max(compute {:.3f} ms, Belady {} loads x {:.1f} us = {:.3f} ms) = "
          "{:.3f} ms; Belady hit rate {:.4f}\n",
          base_compute * 1e3, belady.stats.loads(), transfer_s * 1e6,
          double(belady.stats.loads()) * transfer_s * 1e3, floor * 1e3, belady.stats.hit_rate());
    } else {
      std::cout << fmt::format(
          "\nno Belady floor with --batch {}: replay cannot reproduce which tokens shared a step\n",
          batch);
    }
    if (cpu_bytes_rate > 0) {
      std::cout << fmt::format(
          "CPU fallback cost model: {:.1f} GB/s of expert weights, {:.1f} GFLOP/s ({})\n",
          cpu_bytes_rate / 1e9, cpu_flop_rate / 1e9,
          cpu_gbps > 0 ? "bandwidth given by --cpu-gbps, flop rate measured at start-up"
                       : "both measured at start-up on this machine's CPU");
    }
    std::cout << "wasted = bytes of prefetches moved and evicted unused / bytes moved; cancelled = "
                 "queued prefetches a newer prediction dropped (+cancel); on cpu = missed experts "
                 "the cost model sent to the CPU instead of waiting\n";
    return absl::OkStatus();
  });
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
