// moe-cuda-bench: the GPU numbers of issue 4, side by side in one run on one GPU.
//   link    host -> device copies (one large pinned copy, per-expert copies through CudaDevice,
//           pageable) and device -> device bandwidth;
//   decode  Mixtral-shaped MoE decode with routing forced from a real trace: all experts
//           resident, copy-wait-compute, overlapped copies; Belady's loads for the same tokens
//           and the floor max(compute, Belady loads x expert bytes / measured link bandwidth).
// Prints a markdown table (and writes it to --results). Benchmark mode: synthetic weights.
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "fmt/format.h"
#include "predictor/trace_io.h"
#include "runtime/cuda/cuda_devices.h"
#include "runtime/logging.h"
#include "runtime/status.h"
#include "tools/common/cli_flags.h"
#include "tools/cuda/decode_bench.h"
#include "tools/cuda/link_bench.h"

namespace moe::cuda {
namespace {

struct Flags {
  std::string sections = "all";
  std::string trace;
  std::string results;
  std::string policy = "lru";
  std::string scope = "global";
  std::string modes = "resident,serial,overlap";
  int64_t layers = 32;
  int64_t tokens = 32;
  uint64_t budget = 24'000'000'000;
  uint64_t host = 64'000'000'000;
  bool quick = false;
};

bool Wants(const Flags& f, std::string_view section) {
  if (f.sections == "all") return true;
  for (const std::string& s : SplitList(f.sections)) {
    if (s == section) return true;
  }
  return false;
}

absl::Status Run(const Flags& f) {
  for (const std::string& s : SplitList(f.sections)) {
    if (s != "all" && s != "link" && s != "decode") {
      return InvalidArgument("unknown section '{}' (link, decode, all)", s);
    }
  }
  MOE_ASSIGN_OR_RETURN(auto device, CudaDevice::Create({}));
  std::ostringstream md;
  md << fmt::format("## moe-cuda-bench on {} ({})\n\n", device->name(), CudaVersionText());
  DecodeBenchOptions d;
  d.layers = static_cast<int32_t>(f.layers);
  d.tokens = f.quick ? std::min<int64_t>(f.tokens, 8) : f.tokens;
  d.budget_bytes = f.budget;
  d.host_bytes = f.host;
  d.policy = f.policy;
  MOE_ASSIGN_OR_RETURN(d.scope, ParseCacheScope(f.scope));
  d.modes = SplitList(f.modes);
  const uint64_t expert_bytes = 3 * uint64_t(d.inter) * d.hidden * 2;

  LinkBenchResult link;
  if (Wants(f, "link") || Wants(f, "decode")) {
    LinkBenchOptions lo;
    lo.expert_bytes = expert_bytes;
    lo.repeats = f.quick ? 2 : 5;
    MOE_ASSIGN_OR_RETURN(link, RunLinkBench(*device, lo));
    md << "| link | GB/s | ratio |\n|---|---|---|\n";
    md << fmt::format("| pinned host->device, one {} copy | {:.1f} | 1.00 |\n",
                      FormatBytes(lo.large_bytes), link.pinned_gbps);
    md << fmt::format("| expert copies via CudaDevice ({} x {}) | {:.1f} | {:.3f} |\n",
                      lo.experts, FormatBytes(expert_bytes), link.expert_copy_gbps,
                      link.expert_copy_gbps / link.pinned_gbps);
    md << fmt::format("| pageable host->device | {:.1f} | {:.3f} |\n", link.pageable_gbps,
                      link.pageable_gbps / link.pinned_gbps);
    md << fmt::format("| pageable through the pinned staging ring (4 x 16 MiB) | {:.1f} | {:.3f} |\n",
                      link.staged_gbps, link.staged_gbps / link.pinned_gbps);
    md << fmt::format("| device->device (bytes copied) | {:.0f} | |\n", link.d2d_copy_gbps);
    md << fmt::format("| device->device (bytes read + written) | {:.0f} | |\n\n",
                      link.d2d_traffic_gbps);
    std::cout << md.str() << std::flush;
  }
  if (Wants(f, "decode")) {
    if (f.trace.empty()) return InvalidArgument("the decode section needs --trace (a routing trace)");
    MOE_ASSIGN_OR_RETURN(const RoutingTrace trace, ReadTrace(f.trace));
    d.link_bytes_per_second = link.pinned_gbps * 1e9;
    MOE_ASSIGN_OR_RETURN(const DecodeBenchResult r, RunDecodeBench(*device, trace, d));
    const double floor_link =
        double(r.replay_belady.loads()) * r.expert_bytes / (link.pinned_gbps * 1e9);
    // Compute-only time: the resident mode's median token (its first token is not special,
    // the kernels were warmed up) times the tokens.
    double compute = 0;
    for (const DecodeModeResult& m : r.modes) {
      if (m.mode == "resident") compute = m.median_token_seconds * d.tokens;
    }
    const double floor_s = std::max(compute, floor_link);
    std::ostringstream head;
    head << fmt::format(
        "decode: {} layers x {} experts (top-{}, hidden {}, intermediate {}, bf16; MoE blocks "
        "only: attention not run), {} tokens at batch 1, routing forced from {}; expert cache "
        "{} ({} experts of {}), scope {}, policy {}; host store {} pinned expert buffers\n\n",
        d.layers, d.experts, d.top_k, d.hidden, d.inter, d.tokens, trace.header.model,
        FormatBytes(d.budget_bytes), r.capacity_experts, FormatBytes(r.expert_bytes), f.scope,
        f.policy, r.host_buffers);
    head << "| mode | policy | tokens/s | median ms/token | hit rate | loads | replayed loads | "
            "vs serial | vs floor |\n|---|---|---|---|---|---|---|---|---|\n";
    double serial = 0;
    for (const DecodeModeResult& m : r.modes) {
      if (m.mode == "serial" && serial == 0) serial = m.seconds;
    }
    for (const DecodeModeResult& m : r.modes) {
      const bool cached = m.mode != "resident";
      head << fmt::format(
          "| {} | {} | {:.2f} | {:.1f} | {} | {} | {} | {} | {:.2f}x |\n",
          cached ? m.mode : fmt::format("resident (R={})", m.resident_layers),
          cached ? m.policy : "-", m.tokens_per_second, m.median_token_seconds * 1e3,
          cached ? fmt::format("{:.4f}", m.cache.hit_rate()) : "-",
          cached ? fmt::format("{}", m.cache.loads()) : "-",
          cached && m.mode != "hybrid" ? fmt::format("{}", m.replay.loads()) : "-",
          serial > 0 ? fmt::format("{:.2f}x", serial / m.seconds) : "-", m.seconds / floor_s);
    }
    head << fmt::format(
        "| floor: max(compute, Belady loads x bytes / link) | belady | {:.2f} | | {:.4f} | {} | | "
        "| 1.00x |\n\n",
        d.tokens / floor_s, r.replay_belady.hit_rate(), r.replay_belady.loads());
    head << fmt::format(
        "compute (resident) {:.3f} s; Belady link time {:.3f} s at the measured {:.1f} GB/s. "
        "'replayed loads': moe-replay's loads for the same tokens and cache options (equal to "
        "the live loads when the benchmark's cache behaves as the replay's).\n\n",
        compute, floor_link, link.pinned_gbps);
    for (const DecodeModeResult& m : r.modes) {
      if (m.mode != "resident" && m.mode != "hybrid" && (m.cache.hits != m.replay.hits ||
                                   m.cache.loads() != m.replay.loads())) {
        head << fmt::format("WARNING: mode {}@{}: live cache stats differ from the replay ({} "
                            "hits vs {})\n\n",
                            m.mode, m.policy, m.cache.hits, m.replay.hits);
      }
    }
    for (const DecodeModeResult& m : r.modes) {
      if (m.mode != "hybrid") continue;
      head << fmt::format(
          "hybrid@{}: cost model measured at start: one expert {:.2f} ms on {} CPU threads "
          "(from pinned host memory) vs {:.2f} ms over the link; the CPU computed {} of {} "
          "routed experts ({} missed).\n\n",
          m.policy, m.cpu_expert_seconds * 1e3, std::thread::hardware_concurrency(),
          m.link_expert_seconds * 1e3, m.cpu_experts, uint64_t(d.tokens) * d.layers * d.top_k,
          m.cpu_experts + m.cache.misses);
    }
    if (compute > 0) {
      for (const DecodeModeResult& m : r.modes) {
        if (m.mode != "resident") continue;
        const double layer_s = m.median_token_seconds / d.layers;
        const double read_gbps = d.top_k * double(r.expert_bytes) / layer_s / 1e9;
        head << fmt::format(
            "MoE layer at decode, all experts resident: {:.1f} us per layer (median token / "
            "layers, routing readback included), expert weights read at {:.0f} GB/s = {:.2f} of "
            "device->device traffic ({:.0f} GB/s), {:.2f} of device->device bytes copied\n\n",
            layer_s * 1e6, read_gbps, read_gbps / link.d2d_traffic_gbps, link.d2d_traffic_gbps,
            read_gbps / link.d2d_copy_gbps);
      }
    }
    std::cout << head.str() << std::flush;
    md << head.str();
  }
  if (!f.results.empty()) {
    std::ofstream out(f.results);
    out << md.str();
    if (!out) return Internal("cannot write {}", f.results);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::cuda

int main(int argc, char** argv) {
  moe::cuda::Flags f;
  moe::FlagSet flags("moe-cuda-bench",
                     "GPU benchmarks: link bandwidth and Mixtral-shaped MoE decode with routing "
                     "forced from a real trace (synthetic weights; benchmark mode).");
  flags.AddString("sections", &f.sections, "comma list of link, decode, or all");
  flags.AddString("trace", &f.trace, "routing trace (own format or dense folder) for decode");
  flags.AddString("results", &f.results, "also write the markdown table to this file");
  flags.AddString("policy", &f.policy, "expert cache eviction policy");
  flags.AddString("scope", &f.scope, "expert cache scope: global or layer");
  flags.AddString("modes", &f.modes, "decode modes: resident, serial, overlap, hybrid (overlap + CPU experts); all but resident may name a policy: overlap@lfu");
  flags.AddInt("layers", &f.layers, "MoE layers (Mixtral-8x7B: 32)");
  flags.AddInt("tokens", &f.tokens, "decode tokens timed");
  flags.AddBytes("budget", &f.budget, "expert cache budget on the GPU");
  flags.AddBytes("host", &f.host, "pinned host memory for the expert store at most");
  flags.AddBool("quick", &f.quick, "fewer repeats and tokens");
  return flags.Run(argc, argv, [&]() -> absl::Status {
    if (f.layers < 1 || f.tokens < 1) return moe::InvalidArgument("--layers and --tokens must be >= 1");
    return moe::cuda::Run(f);
  });
}
