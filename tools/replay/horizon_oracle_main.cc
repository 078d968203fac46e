// moe-horizon-oracle: how far ahead must an eviction policy see to beat LRU by a given margin?
//
// Replays a trace's sequences (the held-out part of moe-replay's --train-fraction split, one
// token per step, the cache persisting) through per-layer caches whose eviction is an oracle that
// knows the routing of the next H tokens only: at a miss in a full layer it evicts, among the
// residents outside the token's set, the least recently used one (or, with --fallback-decay, the
// one of lowest LRFU value) not needed within H tokens, or, when all are, the one needed last.
// H = 0 is LRU (checked against LruReplayCounter) or LRFU, H = inf is Belady. It measures what
// perfect knowledge of the next H tokens is worth on top of LRU. It is not a bound on policies that
// predict H tokens ahead: those also use the past beyond H (the project's "predictive" policy,
// which predicts one token ahead and weighs frequency, loads a little less than the 1-token
// oracle). The table prints the loads with the timing model's two times relative to LRU on demand:
// "demand" (loads x transfer + compute, as moe-replay's timing model without prefetching) and
// "overlapped" (max(compute, loads x transfer): every load hidden behind compute or another load,
// the best prefetching could do with those loads).
//
//   build/bin/moe-horizon-oracle --trace ../shared/data/routing-traces/deepseek-v2-lite-puffin
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "fmt/format.h"
#include "memory/replay_counters.h"
#include "predictor/trace_io.h"
#include "runtime/status.h"
#include "tools/common/cli_flags.h"
#include "tools/replay/replay.h"
#include "tools/replay/replay_schedule.h"

namespace moe {
namespace {

constexpr int64_t kInfinite = std::numeric_limits<int64_t>::max();

struct Options {
  std::string trace;
  int64_t capacity = 16;
  double train_fraction = 0.8;
  std::string horizons = "0,1,2,3,5,10,inf";
  double fallback_decay = 0;  // 0: LRU beyond the horizon; else LRFU with this decay per token
  uint64_t expert_bytes = 17'300'000;
  double link_gbps = 25;
  double layer_compute_us = 150;
};

// The replayed rows (trace token indices, in order) and, for every access, the step of the next
// one to the same expert at the same layer (kInfinite if none): ComputeNextUse's position over
// the row size, since every step is one token.
struct Replay {
  std::vector<int64_t> rows;
  std::vector<int64_t> next_step;
};

absl::StatusOr<Replay> Prepare(const RoutingTrace& trace, const ReplaySchedule& schedule) {
  MOE_ASSIGN_OR_RETURN(const std::vector<uint32_t> next_use,
                       ComputeNextUse(trace, schedule, /*reset_per_sequence=*/false));
  const uint32_t row = uint32_t(trace.header.num_layers) * uint32_t(trace.header.top_k);
  Replay r;
  for (const ReplayStep& step : schedule.steps()) r.rows.push_back(schedule.Tokens(step)[0].token);
  r.next_step.reserve(next_use.size());
  for (uint32_t n : next_use) r.next_step.push_back(n == kNoNextUse ? kInfinite : int64_t(n / row));
  return r;
}

// Loads of the H-token oracle (hits first, then misses, as the cache's access rule).
// Beyond the horizon the oracle falls back to LRU (fallback_decay 0) or to LRFU: evict the
// smallest sum over past uses of decay^(tokens since the use), kept as its logarithm plus
// (last use) x log(1 / decay), which orders residents without rescaling as time passes.
uint64_t OracleLoads(const RoutingTrace& trace, const Replay& r, int32_t capacity, int64_t horizon,
                     double fallback_decay) {
  const int32_t L = trace.header.num_layers, K = trace.header.top_k;
  const int32_t E = trace.header.num_experts;
  std::vector<uint8_t> resident(size_t(L) * E, 0);
  std::vector<int64_t> stamp(resident.size(), 0), next(resident.size(), kInfinite);
  const bool lrfu = fallback_decay > 0;
  const double log_decay = lrfu ? std::log(fallback_decay) : 0;
  std::vector<double> value(lrfu ? resident.size() : 0, 0);  // the LRFU value's log, shifted
  std::vector<int64_t> last_step(value.size(), -1);          // -1: never used
  auto fallback_below = [&](size_t c, size_t b) {            // c is a better victim than b beyond H
    if (lrfu && value[c] != value[b]) return value[c] < value[b];
    return stamp[c] < stamp[b];
  };
  std::vector<int32_t> size(size_t(L), 0);
  std::vector<uint32_t> in_set(size_t(E), 0);
  uint32_t set_id = 0;
  int64_t clock = 0;
  uint64_t loads = 0;
  for (size_t i = 0; i < r.rows.size(); ++i) {
    const auto step = static_cast<int64_t>(i);
    for (int32_t l = 0; l < L; ++l) {
      const auto experts = trace.Experts(r.rows[i], l);
      const size_t base = size_t(l) * E;
      const int64_t* next_of = r.next_step.data() + (i * L + size_t(l)) * K;
      ++set_id;
      for (int32_t j = 0; j < K; ++j) in_set[experts[j]] = set_id;
      for (int32_t j = 0; j < K; ++j) {  // hits
        const size_t e = base + experts[j];
        if (!resident[e]) continue;
        stamp[e] = ++clock;
        next[e] = next_of[j];
      }
      for (int32_t j = 0; j < K; ++j) {  // misses
        const size_t e = base + experts[j];
        if (resident[e]) continue;
        ++loads;
        if (size[size_t(l)] == capacity) {
          int32_t victim = -1;
          bool victim_far = false;
          for (int32_t v = 0; v < E; ++v) {
            const size_t c = base + size_t(v);
            if (!resident[c] || in_set[size_t(v)] == set_id) continue;
            const bool far = next[c] == kInfinite || next[c] - step > horizon;
            if (victim < 0) {
              victim = v;
              victim_far = far;
              continue;
            }
            const size_t b = base + size_t(victim);
            const bool better =
                far ? (!victim_far || fallback_below(c, b)) : (!victim_far && next[c] > next[b]);
            if (better) {
              victim = v;
              victim_far = far;
            }
          }
          MOE_CHECK_MSG(victim >= 0, "no victim at layer {}", l);
          resident[base + size_t(victim)] = 0;
        } else {
          ++size[size_t(l)];
        }
        resident[e] = 1;
        stamp[e] = ++clock;
        next[e] = next_of[j];
      }
      if (lrfu) {  // one more use now; the value kept across evictions
        for (int32_t j = 0; j < K; ++j) {
          const size_t e = base + experts[j];
          const double now = last_step[e] < 0 ? 0.0 : std::exp(value[e] + double(step) * log_decay);
          value[e] = std::log(now + 1.0) - double(step) * log_decay;
          last_step[e] = step;
        }
      }
    }
  }
  return loads;
}

absl::Status Run(const Options& o) {
  if (o.trace.empty()) return InvalidArgument("--trace is required");
  std::vector<int64_t> horizons;
  for (const std::string& h : SplitList(o.horizons)) {
    int64_t value = 0;
    if (h == "inf") {
      value = kInfinite;
    } else if (!absl::SimpleAtoi(h, &value) || value < 0) {
      return InvalidArgument("--horizons: '{}' is not a token count >= 0 or 'inf'", h);
    }
    horizons.push_back(value);
  }
  if (horizons.empty()) return InvalidArgument("--horizons lists no horizon");
  if (!(o.fallback_decay >= 0 && o.fallback_decay < 1)) {
    return InvalidArgument("--fallback-decay {} must be in [0, 1) (0: LRU)", o.fallback_decay);
  }
  if (o.link_gbps <= 0 || o.layer_compute_us < 0 || o.expert_bytes == 0) {
    return InvalidArgument(
        "the timing model needs --link-gbps > 0 (got {}), --layer-compute-us >= 0 (got {}) and "
        "--expert-bytes > 0 (got {})",
        o.link_gbps, o.layer_compute_us, o.expert_bytes);
  }
  MOE_ASSIGN_OR_RETURN(RoutingTrace trace, ReadTrace(o.trace));
  std::vector<int64_t> train, replayed;
  MOE_RETURN_IF_ERROR(SplitForTraining(static_cast<int64_t>(trace.sequences.size()),
                                       o.train_fraction, &train, &replayed));
  const int32_t K = trace.header.top_k;
  if (o.capacity < K || o.capacity > trace.header.num_experts) {
    return InvalidArgument("--capacity {} must be in [top_k {}, {} experts]", o.capacity, K,
                           trace.header.num_experts);
  }
  if (!LruReplayCounter::Supports(trace.space(), o.capacity, K)) {
    return InvalidArgument(
        "{} experts per layer with top_k {} and capacity {}: beyond the LRU replay counter's "
        "limits (256 experts, top_k 16, capacity < 127 - 2 top_k)",
        trace.header.num_experts, K, o.capacity);
  }
  const ReplaySchedule schedule(trace, replayed, 1);
  MOE_ASSIGN_OR_RETURN(const Replay r, Prepare(trace, schedule));
  const auto capacity = static_cast<int32_t>(o.capacity);

  // LRU on demand, the reference: the exact counter moe-replay uses.
  LruReplayCounter lru(trace.space(), capacity, K);
  for (int64_t row : r.rows) {
    lru.AccessToken({trace.Experts(row, 0).data(), size_t(trace.header.num_layers) * size_t(K)});
  }
  const double transfer_us = double(o.expert_bytes) / (o.link_gbps * 1e3);
  const double compute_us =
      double(r.rows.size()) * double(trace.header.num_layers) * o.layer_compute_us;
  const double lru_demand_us = double(lru.counts().misses) * transfer_us + compute_us;
  fmt::print("{}: {} sequences, {} tokens replayed; capacity {} of {} per layer\n", o.trace,
             replayed.size(), r.rows.size(), capacity, trace.header.num_experts);
  fmt::print("timing model: {:.1f} us per expert transfer, {:.0f} us compute per layer\n",
             transfer_us, o.layer_compute_us);
  fmt::print("beyond the horizon: {}\n\n",
             o.fallback_decay > 0 ? fmt::format("LRFU, decay {} per token", o.fallback_decay)
                                  : std::string("LRU"));
  fmt::print(
      "| horizon (tokens) | hit rate | loads | vs LRU loads | demand vs LRU demand | "
      "overlapped vs LRU demand |\n|---|---|---|---|---|---|\n");
  const double accesses = double(r.rows.size()) * trace.header.num_layers * K;
  for (int64_t h : horizons) {
    const uint64_t loads = OracleLoads(trace, r, capacity, h, o.fallback_decay);
    if (h == 0 && o.fallback_decay == 0 && loads != lru.counts().misses) {
      return Internal("horizon 0 loads {} differ from LRU's {}", loads, lru.counts().misses);
    }
    const double link_us = double(loads) * transfer_us;
    fmt::print("| {} | {:.4f} | {} | {:.3f} | {:.3f} | {:.3f} |\n",
               h == kInfinite ? std::string("inf (Belady)") : std::to_string(h),
               1.0 - double(loads) / accesses, loads, double(loads) / double(lru.counts().misses),
               (link_us + compute_us) / lru_demand_us,
               std::max(link_us, compute_us) / lru_demand_us);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::Options o;
  moe::FlagSet flags("moe-horizon-oracle",
                     "Loads of an eviction oracle that sees the next H tokens, against LRU and "
                     "Belady,\nwith moe-replay's timing model (defaults: DeepSeek-V2-Lite).");
  flags.AddString("trace", &o.trace, "routing trace: a moe-trace file or a dense trace folder");
  flags.AddInt("capacity", &o.capacity, "experts per layer");
  flags.AddDouble("train-fraction", &o.train_fraction,
                  "replay the held-out part of moe-replay's split (0: every sequence)");
  flags.AddString("horizons", &o.horizons, "tokens the oracle sees ahead, comma-separated");
  flags.AddDouble("fallback-decay", &o.fallback_decay,
                  "beyond the horizon: 0 evicts the least recently used, a decay in (0, 1) the "
                  "lowest LRFU value (decay per token)");
  flags.AddBytes("expert-bytes", &o.expert_bytes, "bytes of one expert");
  flags.AddDouble("link-gbps", &o.link_gbps, "host-to-device link, GB/s");
  flags.AddDouble("layer-compute-us", &o.layer_compute_us, "compute per MoE layer, microseconds");
  return flags.Run(argc, argv, [&] { return moe::Run(o); });
}
