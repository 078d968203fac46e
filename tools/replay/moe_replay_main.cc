// moe-replay: replays a routing trace against an expert-cache configuration and compares it with
// Belady's optimum. Modes: a single replay (default), a sweep over capacities x policies, and a
// predictor evaluation. See docs/replay.md and --help.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "predictor/predictor.h"
#include "predictor/predictor_eval.h"
#include "predictor/trace_io.h"
#include "runtime/logging.h"
#include "runtime/status.h"
#include "tools/common/cli_flags.h"
#include "tools/replay/replay.h"
#include "tools/replay/svg_plot.h"

namespace moe {
namespace {

struct CliOptions {
  std::string trace;
  int64_t capacity = 0;
  uint64_t budget_bytes = 0;
  std::string scope = "layer";
  std::string policy = "lru";
  std::string predictor = "none";
  int64_t prefetch_depth = 0;
  int64_t prefetch_budget = 0;
  double prefetch_threshold = 0;
  bool reset_per_sequence = false;
  int64_t batch = 1;
  int64_t prefill_chunk = 0;
  bool json = false;
  uint64_t expert_bytes = 0;
  double link_gbps = 0;
  double layer_compute_us = 0;
  double train_fraction = 0;
  std::string learn_trace;
  std::string predictor_in;
  std::string predictor_out;
  int64_t max_distance = 4;
  double frequency_decay = PredictorOptions().frequency_decay;
  double recency_decay = PredictorOptions().recency_decay;
  // Sweep.
  bool sweep = false;
  std::string capacities = "2,4,8,16,32";
  std::string policies = "lru,lfu,arc,lrfu";
  std::string csv;
  std::string svg;
  // Predictor evaluation.
  bool eval_predictor = false;
  int64_t budget = 0;
};

struct Inputs {
  RoutingTrace trace;           // the trace as read
  std::vector<int64_t> replay;  // sequences replayed / evaluated
  std::vector<int64_t> train;   // sequences used to learn predictor tables
};

absl::Status LoadInputs(const CliOptions& cli, Inputs* in) {
  if (cli.trace.empty()) return InvalidArgument("--trace is required (a moe-trace file or folder)");
  MOE_ASSIGN_OR_RETURN(in->trace, ReadTrace(cli.trace));
  return SplitForTraining(static_cast<int64_t>(in->trace.sequences.size()), cli.train_fraction,
                          &in->train, &in->replay);
}

// Builds the named predictor and gives it learned state: loaded from --predictor-in, learned
// from --learn-trace, or learned from the training split.
absl::StatusOr<std::unique_ptr<Predictor>> BuildPredictor(const CliOptions& cli,
                                                          const std::string& name,
                                                          const Inputs& in) {
  PredictorOptions po;
  po.space = in.trace.space();
  po.top_k = in.trace.header.top_k;
  po.max_distance = static_cast<int32_t>(cli.max_distance);
  po.frequency_decay = cli.frequency_decay;
  po.recency_decay = cli.recency_decay;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Predictor> p, MakePredictor(name, po));
  if (!cli.predictor_in.empty()) {
    MOE_RETURN_IF_ERROR(p->Load(cli.predictor_in));
  } else if (!cli.learn_trace.empty()) {
    MOE_ASSIGN_OR_RETURN(RoutingTrace learn, ReadTrace(cli.learn_trace));
    MOE_RETURN_IF_ERROR_CTX(p->Learn(learn), fmt::format("learning from {}", cli.learn_trace));
  } else if (!in.train.empty()) {
    MOE_RETURN_IF_ERROR(p->Learn(in.trace.Subset(in.train)));
  }
  if (!cli.predictor_out.empty()) MOE_RETURN_IF_ERROR(p->Save(cli.predictor_out));
  return p;
}

// The predictor --predictor names, or "combined" where a mode needs one and none was named.
std::string PredictorNameOrDefault(const CliOptions& cli) {
  return cli.predictor == "none" ? "combined" : cli.predictor;
}

absl::StatusOr<ReplaySchedule> MakeSchedule(const CliOptions& cli, const Inputs& in) {
  if (cli.batch < 1 || cli.batch > 1 << 20) {
    return InvalidArgument("--batch {} must be in [1, 2^20]", cli.batch);
  }
  if (cli.prefill_chunk < 0 || cli.prefill_chunk > 1 << 20) {
    return InvalidArgument("--prefill-chunk {} must be in [0, 2^20]", cli.prefill_chunk);
  }
  if (cli.prefill_chunk > 0 && cli.batch > 1) {
    return InvalidArgument("--prefill-chunk needs --batch 1 (got --batch {})", cli.batch);
  }
  return ReplaySchedule(in.trace, in.replay, static_cast<int32_t>(cli.batch),
                        static_cast<int32_t>(cli.prefill_chunk));
}

absl::StatusOr<ReplayOptions> MakeReplayOptions(const CliOptions& cli) {
  ReplayOptions o;
  MOE_ASSIGN_OR_RETURN(o.scope, ParseCacheScope(cli.scope));
  if (cli.capacity < 0) return InvalidArgument("--capacity {} is negative", cli.capacity);
  if (cli.capacity > 0 && cli.budget_bytes > 0) {
    return InvalidArgument("give either --capacity or --budget-bytes, not both");
  }
  o.capacity_per_layer = cli.capacity;
  o.budget_bytes = cli.budget_bytes;
  o.expert_bytes = cli.expert_bytes;
  o.policy = cli.policy;
  if (cli.prefetch_depth < 0 || cli.prefetch_depth > 64) {
    return InvalidArgument("--prefetch-depth {} must be in [0, 64]", cli.prefetch_depth);
  }
  o.prefetch_depth = static_cast<int32_t>(cli.prefetch_depth);
  o.prefetch_budget = static_cast<int32_t>(cli.prefetch_budget);
  if (cli.prefetch_threshold < 0 || cli.prefetch_threshold > 1) {
    return InvalidArgument("--prefetch-threshold {} must be in [0, 1]", cli.prefetch_threshold);
  }
  o.prefetch_threshold = cli.prefetch_threshold;
  o.reset_per_sequence = cli.reset_per_sequence;
  if (cli.link_gbps < 0) return InvalidArgument("--link-gbps {} is negative", cli.link_gbps);
  if (cli.layer_compute_us < 0) {
    return InvalidArgument("--layer-compute-us {} is negative", cli.layer_compute_us);
  }
  o.link_gbps = cli.link_gbps;
  o.layer_compute_us = cli.layer_compute_us;
  return o;
}

nlohmann::json StatsJson(const ReplayResult& r) {
  nlohmann::json j;
  j["accesses"] = r.stats.accesses;
  j["hits"] = r.stats.hits;
  j["misses"] = r.stats.misses;
  j["hit_rate"] = r.stats.hit_rate();
  j["loads"] = r.stats.loads();
  j["bytes_loaded"] = r.stats.bytes_loaded;
  j["evictions"] = r.stats.evictions;
  return j;
}

std::string TraceSummary(const RoutingTrace& t, int64_t replayed_sequences, int64_t tokens) {
  return fmt::format("{} ({} of {} sequences, {} tokens; {} MoE layers x {} experts, top-{})",
                     t.header.model, replayed_sequences, t.sequences.size(), tokens,
                     t.header.num_layers, t.header.num_experts, t.header.top_k);
}

absl::Status RunSingle(const CliOptions& cli, const Inputs& in) {
  MOE_ASSIGN_OR_RETURN(ReplayOptions options, MakeReplayOptions(cli));
  MOE_ASSIGN_OR_RETURN(const ReplaySchedule schedule, MakeSchedule(cli, in));

  std::unique_ptr<Predictor> predictor;
  if (cli.predictor != "none" || cli.policy == "predictive") {
    MOE_ASSIGN_OR_RETURN(predictor, BuildPredictor(cli, PredictorNameOrDefault(cli), in));
  }
  MOE_ASSIGN_OR_RETURN(ReplayResult r, RunReplay(in.trace, schedule, options, predictor.get()));

  ReplayOptions belady_options = options;
  belady_options.policy = "belady";
  belady_options.prefetch_depth = 0;
  MOE_ASSIGN_OR_RETURN(ReplayResult b, RunReplay(in.trace, schedule, belady_options, nullptr));

  const double floor_us = r.timing.enabled
                              ? std::max(r.timing.compute_us,
                                         static_cast<double>(b.stats.misses) * r.timing.transfer_us)
                              : 0.0;

  if (cli.json) {
    nlohmann::json j = StatsJson(r);
    j["trace"] = cli.trace;
    j["model"] = in.trace.header.model;
    j["tokens"] = r.tokens;
    j["sequences"] = schedule.num_sequences();
    j["token_layers"] = r.token_layers;
    j["scope"] = cli.scope;
    j["policy"] = cli.policy;
    j["predictor"] = predictor ? std::string(predictor->name()) : "none";
    j["batch"] = cli.batch;
    j["prefill_chunk"] = cli.prefill_chunk;
    j["reset_per_sequence"] = cli.reset_per_sequence;
    j["capacity_per_partition"] = r.capacity_per_partition;
    j["capacity_total"] = r.capacity_total;
    j["expert_bytes"] = r.expert_bytes;
    j["belady_hit_rate"] = b.stats.hit_rate();
    j["belady_loads"] = b.stats.misses;
    j["prefetch_depth"] = cli.prefetch_depth;
    if (cli.prefetch_depth > 0) {
      j["prefetches"] = r.stats.prefetch_loads;
      j["prefetch_useful"] = r.stats.prefetch_useful;
      j["prefetch_wasted"] = r.stats.prefetch_wasted;
      j["prefetch_wasted_bytes"] = r.stats.prefetch_wasted_bytes;
      j["late_prefetches"] = r.late_prefetches;
    }
    if (r.timing.enabled) {
      nlohmann::json t;
      t["link_gbps"] = cli.link_gbps;
      t["layer_compute_us"] = cli.layer_compute_us;
      t["transfer_us"] = r.timing.transfer_us;
      t["decode_time_us"] = r.timing.total_us;
      t["stall_us"] = r.timing.stall_us;
      t["link_busy_us"] = r.timing.link_busy_us;
      t["link_transfers"] = r.timing.link_transfers;
      t["cancelled_prefetches"] = r.timing.cancelled_prefetches;
      t["tokens_per_second"] = r.timing.tokens_per_second;
      t["compute_bound_us"] = r.timing.compute_us;
      t["floor_us"] = floor_us;
      t["ratio_to_floor"] = floor_us > 0 ? r.timing.total_us / floor_us : 0.0;
      j["timing"] = t;
    }
    j["replay_seconds"] = r.seconds;
    j["decisions_per_second"] = r.seconds > 0 ? r.token_layers / r.seconds : 0.0;
    j["belady_seconds"] = b.seconds;
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }

  std::cout << fmt::format("trace      {}\n",
                           TraceSummary(in.trace, schedule.num_sequences(), r.tokens));
  std::cout << fmt::format(
      "cache      {} experts per {} ({} slots, {}), scope {}, policy {}{}\n",
      r.capacity_per_partition, cli.scope == "layer" ? "layer" : "cache", r.capacity_total,
      FormatBytes(static_cast<uint64_t>(r.capacity_total) * r.expert_bytes), cli.scope, cli.policy,
      predictor ? fmt::format(", predictor {}", predictor->name()) : "");
  std::cout << fmt::format("batch      {}{}\n", cli.batch,
                           cli.reset_per_sequence ? ", cache reset per sequence" : "");
  std::cout << fmt::format("accesses   {}\nhits       {}  (hit rate {:.4f}; belady {:.4f})\n",
                           r.stats.accesses, r.stats.hits, r.stats.hit_rate(), b.stats.hit_rate());
  std::cout << fmt::format("loads      {}  ({}; belady {})\n", r.stats.loads(),
                           FormatBytes(r.stats.bytes_loaded), b.stats.misses);
  if (cli.prefetch_depth > 0) {
    std::cout << fmt::format("prefetch   {} issued, {} useful, {} late, {} wasted ({})\n",
                             r.stats.prefetch_loads, r.stats.prefetch_useful, r.late_prefetches,
                             r.stats.prefetch_wasted, FormatBytes(r.stats.prefetch_wasted_bytes));
  }
  if (r.timing.enabled) {
    const ReplayTiming& t = r.timing;
    std::cout << fmt::format(
        "timing     link {} GB/s ({:.1f} us per expert), compute {} us per layer\n"
        "           decode time {:.1f} ms = compute {:.1f} ms + stall {:.1f} ms; {:.1f} tokens/s\n"
        "           bounds: compute only {:.1f} ms; max(compute, belady loads x expert / link) "
        "{:.1f} ms; ratio to floor {:.2f}x\n",
        cli.link_gbps, t.transfer_us, cli.layer_compute_us, t.total_us / 1e3, t.compute_us / 1e3,
        t.stall_us / 1e3, t.tokens_per_second, t.compute_us / 1e3, floor_us / 1e3,
        floor_us > 0 ? t.total_us / floor_us : 0.0);
  }
  std::cout << fmt::format("speed      {:.2f} M decisions/s ({:.3f} s; belady {:.3f} s)\n",
                           r.seconds > 0 ? r.token_layers / r.seconds / 1e6 : 0.0, r.seconds,
                           b.seconds);
  return absl::OkStatus();
}

absl::Status RunSweep(const CliOptions& cli, const Inputs& in) {
  MOE_ASSIGN_OR_RETURN(ReplayOptions base, MakeReplayOptions(cli));
  MOE_ASSIGN_OR_RETURN(const ReplaySchedule schedule, MakeSchedule(cli, in));
  std::vector<int64_t> caps;
  for (const std::string& c : SplitList(cli.capacities)) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(c, &v) || v <= 0) {
      return InvalidArgument("--capacities: '{}' is not a positive integer", c);
    }
    caps.push_back(v);
  }
  if (caps.empty()) return InvalidArgument("--capacities is empty");
  std::vector<std::string> policies = SplitList(cli.policies);
  if (policies.empty()) return InvalidArgument("--policies is empty");
  policies.push_back("belady");

  std::unique_ptr<Predictor> predictor;
  for (const std::string& p : policies) {
    if (p == "predictive" && !predictor) {
      MOE_ASSIGN_OR_RETURN(predictor, BuildPredictor(cli, PredictorNameOrDefault(cli), in));
    }
  }

  std::vector<std::vector<double>> hit(policies.size());
  std::vector<std::vector<uint64_t>> loads(policies.size());
  std::cerr << fmt::format("moe-replay: sweeping {} capacities x {} policies on {}\n", caps.size(),
                           policies.size(),
                           TraceSummary(in.trace, schedule.num_sequences(), schedule.num_tokens()));
  for (int64_t cap : caps) {
    for (size_t p = 0; p < policies.size(); ++p) {
      ReplayOptions o = base;
      o.capacity_per_layer = cap;
      o.budget_bytes = 0;
      o.policy = policies[p];
      o.prefetch_depth = 0;
      o.link_gbps = 0;
      Predictor* pred = policies[p] == "predictive" ? predictor.get() : nullptr;
      MOE_ASSIGN_OR_RETURN(ReplayResult r, RunReplay(in.trace, schedule, o, pred));
      hit[p].push_back(r.stats.hit_rate());
      loads[p].push_back(r.stats.loads());
    }
    std::cerr << fmt::format("moe-replay: capacity {} done\n", cap);
  }

  std::string header = fmt::format("{:>10}", "capacity");
  for (const std::string& p : policies) header += fmt::format(" {:>11}", p);
  std::cout << "hit rate (" << cli.scope << " scope, experts per layer)\n" << header << "\n";
  for (size_t c = 0; c < caps.size(); ++c) {
    std::string row = fmt::format("{:>10}", caps[c]);
    for (size_t p = 0; p < policies.size(); ++p) row += fmt::format(" {:>11.4f}", hit[p][c]);
    std::cout << row << "\n";
  }
  if (!cli.csv.empty()) {
    std::ofstream f(cli.csv);
    if (!f) return InvalidArgument("cannot write --csv file {}", cli.csv);
    f << "capacity_per_layer,scope,policy,hit_rate,loads\n";
    for (size_t c = 0; c < caps.size(); ++c) {
      for (size_t p = 0; p < policies.size(); ++p) {
        f << fmt::format("{},{},{},{:.6f},{}\n", caps[c], cli.scope, policies[p], hit[p][c],
                         loads[p][c]);
      }
    }
    if (!f) return InvalidArgument("error writing --csv file {}", cli.csv);
  }
  if (!cli.svg.empty()) {
    std::vector<PlotSeries> series;
    for (size_t p = 0; p < policies.size(); ++p) {
      PlotSeries s;
      s.label = policies[p];
      s.dashed = policies[p] == "belady";
      for (size_t c = 0; c < caps.size(); ++c) {
        s.x.push_back(static_cast<double>(caps[c]));
        s.y.push_back(hit[p][c]);
      }
      series.push_back(std::move(s));
    }
    std::ofstream f(cli.svg);
    if (!f) return InvalidArgument("cannot write --svg file {}", cli.svg);
    f << RenderLinePlotSvg(fmt::format("{}: hit rate vs cache capacity", in.trace.header.model),
                           "experts per layer", "hit rate", series);
    if (!f) return InvalidArgument("error writing --svg file {}", cli.svg);
  }
  return absl::OkStatus();
}

absl::Status RunEvalPredictor(const CliOptions& cli, const Inputs& in) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Predictor> predictor,
                       BuildPredictor(cli, PredictorNameOrDefault(cli), in));
  PredictorEvalOptions eo;
  eo.budget = static_cast<int32_t>(cli.budget > 0 ? cli.budget : 2 * in.trace.header.top_k);
  eo.max_distance = static_cast<int32_t>(cli.max_distance);
  const RoutingTrace eval_trace = in.trace.Subset(in.replay);
  MOE_ASSIGN_OR_RETURN(std::vector<DistanceScore> scores,
                       EvaluatePredictor(*predictor, eval_trace, eo));
  if (cli.json) {
    nlohmann::json j;
    j["predictor"] = std::string(predictor->name());
    j["budget"] = eo.budget;
    j["eval_sequences"] = in.replay.size();
    j["train_sequences"] = in.train.size();
    for (const DistanceScore& s : scores) {
      j["distances"].push_back({{"distance", s.distance},
                                {"recall", s.recall},
                                {"precision", s.precision},
                                {"samples", s.samples},
                                {"brier", s.brier},
                                {"ece", s.ece},
                                {"recall_per_layer", s.recall_per_layer}});
    }
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::cout << fmt::format("predictor {} at budget {} on {} held-out sequences ({} for learning)\n",
                           predictor->name(), eo.budget, in.replay.size(), in.train.size());
  std::cout << fmt::format("{:>9} {:>8} {:>10} {:>8} {:>8} {:>10}\n", "distance", "recall",
                           "precision", "brier", "ece", "samples");
  for (const DistanceScore& s : scores) {
    std::cout << fmt::format("{:>9} {:>8.4f} {:>10.4f} {:>8.4f} {:>8.4f} {:>10}\n", s.distance,
                             s.recall, s.precision, s.brier, s.ece, s.samples);
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  CliOptions cli;
  FlagSet flags("moe-replay",
                "Replays a routing trace through the expert cache and compares it with Belady's\n"
                "optimum. Modes: one replay (default), --sweep, --eval-predictor.");
  flags.AddString("trace", &cli.trace, "routing trace: a moe-trace file or a dense trace folder");
  flags.AddInt("capacity", &cli.capacity, "cache size in experts per MoE layer");
  flags.AddBytes("budget-bytes", &cli.budget_bytes, "cache size in bytes (e.g. 4GiB)");
  flags.AddString("scope", &cli.scope, "layer (budget split per layer) or global");
  flags.AddString("policy", &cli.policy,
                  "eviction policy: lru, lfu, arc, lrfu, predictive, belady");
  flags.AddString("predictor", &cli.predictor, "none, frequency, transition, recency, combined");
  flags.AddInt("prefetch-depth", &cli.prefetch_depth, "layers ahead to prefetch (0: demand only)");
  flags.AddInt("prefetch-budget", &cli.prefetch_budget,
               "experts prefetched per predicted layer (0: top-k)");
  flags.AddDouble("prefetch-threshold", &cli.prefetch_threshold,
                  "prefetch only experts predicted with at least this probability");
  flags.AddBool("reset-per-sequence", &cli.reset_per_sequence,
                "empty the cache at each new sequence (default: it persists)");
  flags.AddInt("batch", &cli.batch, "interleave this many sequences (continuous batching)");
  flags.AddInt("prefill-chunk", &cli.prefill_chunk,
               "replay prompts as the engine runs them: prefill steps of up to N tokens, one "
               "access per distinct expert per layer-step (0: token by token)");
  flags.AddBool("json", &cli.json, "print one JSON object on stdout");
  flags.AddBytes("expert-bytes", &cli.expert_bytes,
                 "bytes of one expert (default: the trace header's)");
  flags.AddDouble("link-gbps", &cli.link_gbps,
                  "timing model: host-to-device link in GB/s (0: no timing)");
  flags.AddDouble("layer-compute-us", &cli.layer_compute_us,
                  "timing model: compute per MoE layer per step, microseconds");
  flags.AddDouble("train-fraction", &cli.train_fraction,
                  "learn predictor tables on this fraction of sequences; replay the rest");
  flags.AddString("learn-trace", &cli.learn_trace, "learn predictor tables from this trace");
  flags.AddString("predictor-in", &cli.predictor_in, "load learned predictor tables");
  flags.AddString("predictor-out", &cli.predictor_out, "save learned predictor tables");
  flags.AddInt("max-distance", &cli.max_distance, "layers ahead the predictor learns/evaluates");
  flags.AddDouble("frequency-decay", &cli.frequency_decay,
                  "frequency predictor: decay per observed token, in (0, 1]");
  flags.AddDouble("recency-decay", &cli.recency_decay,
                  "recency predictor: decay per token of a sequence, in [0, 1)");
  flags.AddBool("sweep", &cli.sweep, "sweep capacities x policies and print a hit-rate table");
  flags.AddString("capacities", &cli.capacities, "sweep: experts per layer, comma-separated");
  flags.AddString("policies", &cli.policies, "sweep: policies, comma-separated (belady added)");
  flags.AddString("csv", &cli.csv, "sweep: also write the table as CSV");
  flags.AddString("svg", &cli.svg, "sweep: also write a hit-rate plot as SVG");
  flags.AddBool("eval-predictor", &cli.eval_predictor,
                "report recall/precision of --predictor per layer distance");
  flags.AddInt("budget", &cli.budget, "eval: experts predicted per layer (default 2 x top-k)");

  return flags.Run(argc, argv, [&]() -> absl::Status {
    Inputs in;
    MOE_RETURN_IF_ERROR(LoadInputs(cli, &in));
    if (cli.sweep && cli.eval_predictor) {
      return InvalidArgument("--sweep and --eval-predictor are separate modes; pick one");
    }
    if (cli.sweep) return RunSweep(cli, in);
    if (cli.eval_predictor) return RunEvalPredictor(cli, in);
    return RunSingle(cli, in);
  });
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
