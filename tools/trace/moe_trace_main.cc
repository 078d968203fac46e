// moe-trace: makes, converts and inspects routing traces.
//   moe-trace --synthetic --out demo.moetrace [generator knobs]
//   moe-trace --in ../shared/data/routing-traces/deepseek-v2-lite-puffin --out ds.moetrace
//   moe-trace --in ds.moetrace --info
#include <iostream>
#include <string>

#include "fmt/format.h"
#include "predictor/synthetic_trace.h"
#include "predictor/trace_io.h"
#include "runtime/status.h"
#include "tools/common/cli_flags.h"
#include "tools/trace/trace_stats.h"

namespace moe {
namespace {

void PrintInfo(const RoutingTrace& t) {
  const TraceStats s = ComputeTraceStats(t);
  std::cout << fmt::format(
      "model                {}\n"
      "shape                {} tokens x {} MoE layers x top-{} of {} experts\n"
      "sequences            {} ({} prefill tokens, {} decode tokens)\n"
      "expert bytes         {}\n"
      "gate weights         {}\n"
      "popularity skew      top quarter of experts takes {:.3f} of accesses (uniform 0.25)\n"
      "temporal locality    {:.3f} of a token's experts repeat the previous token's "
      "(independent: {:.3f})\n"
      "inter-layer affinity transition top-k recall {:.3f} vs popularity top-k {:.3f}\n",
      t.header.model, s.tokens, t.header.num_layers, t.header.top_k, t.header.num_experts,
      s.sequences, s.prefill_tokens, s.decode_tokens,
      t.header.expert_bytes ? FormatBytes(t.header.expert_bytes) : "unknown",
      t.has_gate_weights() ? "yes" : "no", s.top_quarter_share, s.previous_token_overlap,
      s.previous_token_overlap_random, s.transition_recall, s.popularity_recall);
}

int Main(int argc, char** argv) {
  std::string in, out;
  bool info = false, synthetic = false;
  SyntheticTraceOptions so;
  int64_t layers = so.num_layers, experts = so.num_experts, top_k = so.top_k;
  int64_t sequences = so.num_sequences, min_tokens = so.min_tokens, max_tokens = so.max_tokens;
  int64_t seed = static_cast<int64_t>(so.seed);
  uint64_t expert_bytes = so.expert_bytes;
  std::string model = so.model, phase = "decode";
  FlagSet flags("moe-trace",
                "Makes, converts and inspects routing traces (docs/trace-format.md).\n"
                "  --synthetic --out FILE     generate a synthetic trace\n"
                "  --in PATH --out FILE       convert (e.g. a dense trace folder) to a moe-trace "
                "file\n"
                "  --in PATH --info           print shape and routing statistics");
  flags.AddString("in", &in, "input trace: a moe-trace file or a dense trace folder");
  flags.AddString("out", &out, "output moe-trace file");
  flags.AddBool("info", &info, "print statistics of --in (or of the generated trace)");
  flags.AddBool("synthetic", &synthetic, "generate a synthetic trace");
  flags.AddString("model", &model, "synthetic: model name in the header");
  flags.AddInt("layers", &layers, "synthetic: MoE layers");
  flags.AddInt("experts", &experts, "synthetic: experts per layer");
  flags.AddInt("top-k", &top_k, "synthetic: experts per token per layer");
  flags.AddInt("sequences", &sequences, "synthetic: number of sequences");
  flags.AddInt("min-tokens", &min_tokens, "synthetic: fewest tokens per sequence");
  flags.AddInt("max-tokens", &max_tokens, "synthetic: most tokens per sequence");
  flags.AddDouble("skew", &so.zipf_skew, "synthetic: Zipf exponent of expert popularity");
  flags.AddDouble("locality", &so.temporal_locality,
                  "synthetic: probability a slot repeats the previous token's expert");
  flags.AddDouble("affinity", &so.layer_affinity,
                  "synthetic: probability a slot follows the previous layer's expert");
  flags.AddBytes("expert-bytes", &expert_bytes, "bytes of one expert, stored in the header");
  flags.AddString("phase", &phase, "synthetic: prefill or decode");
  flags.AddInt("seed", &seed, "synthetic: random seed");

  return flags.Run(argc, argv, [&]() -> absl::Status {
    RoutingTrace trace;
    if (synthetic) {
      if (!in.empty()) return InvalidArgument("--synthetic and --in exclude each other");
      if (phase != "prefill" && phase != "decode") {
        return InvalidArgument("--phase '{}' must be prefill or decode", phase);
      }
      so.model = model;
      so.num_layers = static_cast<int32_t>(layers);
      so.num_experts = static_cast<int32_t>(experts);
      so.top_k = static_cast<int32_t>(top_k);
      so.num_sequences = static_cast<int32_t>(sequences);
      so.min_tokens = static_cast<int32_t>(min_tokens);
      so.max_tokens = static_cast<int32_t>(max_tokens);
      so.expert_bytes = expert_bytes;
      so.phase = phase == "prefill" ? Phase::kPrefill : Phase::kDecode;
      so.seed = static_cast<uint64_t>(seed);
      MOE_ASSIGN_OR_RETURN(trace, GenerateSyntheticTrace(so));
    } else if (!in.empty()) {
      MOE_ASSIGN_OR_RETURN(trace, ReadTrace(in));
      if (flags.WasSet("expert-bytes")) trace.header.expert_bytes = expert_bytes;
    } else {
      return InvalidArgument("nothing to do: give --synthetic or --in (see --help)");
    }
    if (out.empty() && !info) return InvalidArgument("give --out FILE and/or --info");
    if (!out.empty()) {
      MOE_RETURN_IF_ERROR(WriteTrace(trace, out));
      std::cerr << fmt::format("moe-trace: wrote {} ({} tokens, {} sequences)\n", out,
                               trace.num_tokens(), trace.sequences.size());
    }
    if (info) PrintInfo(trace);
    return absl::OkStatus();
  });
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
