#include "predictor/synthetic_trace.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "runtime/status.h"

namespace moe {
namespace {

// xoshiro256** seeded through splitmix64 (Blackman & Vigna). Self-written rather than <random>
// distributions, whose outputs are implementation-defined: a seed must give the same trace with
// every standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& word : s_) word = SplitMix64(seed);
  }

  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1), 53 random bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // Uniform in [0, n) for n > 0 (Lemire's multiply-shift; the bias is below 2^-32 for the sizes
  // used here and, unlike rejection, the number of draws is fixed).
  uint32_t Below(uint32_t n) {
    return static_cast<uint32_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }

 private:
  static uint64_t SplitMix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

  uint64_t s_[4];
};

std::vector<uint16_t> RandomPermutation(int32_t n, Rng& rng) {
  std::vector<uint16_t> perm(n);
  for (int32_t i = 0; i < n; ++i) perm[i] = static_cast<uint16_t>(i);
  for (int32_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[rng.Below(i + 1)]);
  return perm;
}

absl::Status CheckOptions(const SyntheticTraceOptions& o) {
  auto bad = [](std::string_view field, auto value, std::string_view rule) {
    return InvalidArgument("synthetic trace option {} is {}, {}", field, value, rule);
  };
  if (o.num_layers <= 0) return bad("num_layers", o.num_layers, "must be positive");
  if (o.num_experts <= 0 || o.num_experts > 65536) {
    return bad("num_experts", o.num_experts, "must be in [1, 65536]");
  }
  if (o.top_k <= 0 || o.top_k > o.num_experts) {
    return InvalidArgument("synthetic trace option top_k is {}, must be in [1, num_experts = {}]",
                           o.top_k, o.num_experts);
  }
  if (o.num_sequences <= 0) return bad("num_sequences", o.num_sequences, "must be positive");
  if (o.min_tokens <= 0) return bad("min_tokens", o.min_tokens, "must be positive");
  if (o.max_tokens < o.min_tokens) {
    return InvalidArgument("synthetic trace option max_tokens is {}, must be >= min_tokens = {}",
                           o.max_tokens, o.min_tokens);
  }
  if (!(o.zipf_skew >= 0.0 && std::isfinite(o.zipf_skew))) {
    return bad("zipf_skew", o.zipf_skew, "must be finite and >= 0");
  }
  if (!(o.temporal_locality >= 0.0 && o.temporal_locality <= 1.0)) {
    return bad("temporal_locality", o.temporal_locality, "must be in [0, 1]");
  }
  if (!(o.layer_affinity >= 0.0 && o.layer_affinity <= 1.0)) {
    return bad("layer_affinity", o.layer_affinity, "must be in [0, 1]");
  }
  if (o.phase != Phase::kPrefill && o.phase != Phase::kDecode) {
    return bad("phase", static_cast<int>(o.phase), "must be 0 (prefill) or 1 (decode)");
  }
  // Bound the allocation: at most 2^30 expert entries (2 GiB).
  const double entries =
      static_cast<double>(o.num_sequences) * o.max_tokens * o.num_layers * o.top_k;
  if (entries > double(1 << 30)) {
    return InvalidArgument(
        "synthetic trace options ask for up to {} expert entries (num_sequences {} x max_tokens "
        "{} x num_layers {} x top_k {}), more than the limit of 2^30",
        entries, o.num_sequences, o.max_tokens, o.num_layers, o.top_k);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RoutingTrace> GenerateSyntheticTrace(const SyntheticTraceOptions& options) {
  MOE_RETURN_IF_ERROR(CheckOptions(options));
  const int32_t num_layers = options.num_layers;
  const int32_t num_experts = options.num_experts;
  const int32_t top_k = options.top_k;
  Rng rng(options.seed);

  // Popularity: per layer, expert perm[r] gets Zipf weight 1 / (r + 1)^skew. cdf[l][e] is the
  // running sum over expert ids, so a draw is one binary search.
  std::vector<std::vector<double>> weight(num_layers), cdf(num_layers);
  for (int32_t l = 0; l < num_layers; ++l) {
    const std::vector<uint16_t> perm = RandomPermutation(num_experts, rng);
    weight[l].resize(num_experts);
    for (int32_t r = 0; r < num_experts; ++r) {
      weight[l][perm[r]] = std::pow(static_cast<double>(r + 1), -options.zipf_skew);
    }
    cdf[l].resize(num_experts);
    double sum = 0;
    for (int32_t e = 0; e < num_experts; ++e) cdf[l][e] = (sum += weight[l][e]);
  }
  // Affinity: expert e at layer l - 1 leads to affinity[l][e] at layer l. A permutation, so the
  // top_k distinct experts of the previous layer map to top_k distinct experts.
  std::vector<std::vector<uint16_t>> affinity(num_layers);
  for (int32_t l = 1; l < num_layers; ++l) affinity[l] = RandomPermutation(num_experts, rng);

  RoutingTrace trace;
  trace.header.model = options.model;
  trace.header.num_layers = num_layers;
  trace.header.num_experts = num_experts;
  trace.header.top_k = top_k;
  trace.header.expert_bytes = options.expert_bytes;
  int64_t num_tokens = 0;
  const uint32_t length_range = static_cast<uint32_t>(options.max_tokens - options.min_tokens) + 1;
  for (int32_t s = 0; s < options.num_sequences; ++s) {
    TraceSequence seq;
    seq.token_offset = num_tokens;
    seq.num_tokens = options.min_tokens + rng.Below(length_range);
    seq.name = fmt::format("synthetic {}", s);
    num_tokens += seq.num_tokens;
    trace.sequences.push_back(std::move(seq));
  }
  trace.phases.assign(num_tokens, options.phase);
  trace.experts.resize(num_tokens * num_layers * top_k);

  // taken[e] == stamp marks e as already chosen in the current token-layer set.
  std::vector<int64_t> taken(num_experts, -1);
  int64_t stamp = 0;
  for (const TraceSequence& seq : trace.sequences) {
    for (int64_t t = seq.token_offset; t < seq.token_offset + seq.num_tokens; ++t) {
      const bool has_prev_token = t > seq.token_offset;
      for (int32_t l = 0; l < num_layers; ++l, ++stamp) {
        uint16_t* set = trace.experts.data() + (t * num_layers + l) * top_k;
        const uint16_t* prev_token = set - int64_t{num_layers} * top_k;
        const uint16_t* prev_layer = set - top_k;
        auto free = [&](int32_t e) { return taken[e] != stamp; };
        for (int32_t j = 0; j < top_k; ++j) {
          int32_t chosen = -1;
          // Temporal locality: repeat one of the previous token's experts at this layer.
          if (has_prev_token && options.temporal_locality > 0 &&
              rng.Uniform() < options.temporal_locality) {
            const uint32_t start = rng.Below(top_k);
            for (int32_t i = 0; i < top_k && chosen < 0; ++i) {
              const int32_t e = prev_token[(start + i) % top_k];
              if (free(e)) chosen = e;
            }
          }
          // Inter-layer affinity: follow the mapping from this slot's previous-layer expert
          // (then the other slots', if that one is taken).
          if (chosen < 0 && l > 0 && options.layer_affinity > 0 &&
              rng.Uniform() < options.layer_affinity) {
            for (int32_t i = 0; i < top_k && chosen < 0; ++i) {
              const int32_t e = affinity[l][prev_layer[(j + i) % top_k]];
              if (free(e)) chosen = e;
            }
          }
          // Popularity: Zipf draw, rejecting experts already in the set; after a few misses
          // (heavy skew with top_k near num_experts) draw from the remaining weight exactly.
          if (chosen < 0) {
            const std::vector<double>& c = cdf[l];
            for (int tries = 0; tries < 16 && chosen < 0; ++tries) {
              const double u = rng.Uniform() * c.back();
              const int32_t e = static_cast<int32_t>(std::min<ptrdiff_t>(
                  std::upper_bound(c.begin(), c.end(), u) - c.begin(), num_experts - 1));
              if (free(e)) chosen = e;
            }
            if (chosen < 0) {
              double remaining = 0;
              for (int32_t e = 0; e < num_experts; ++e) {
                if (free(e)) remaining += weight[l][e];
              }
              double u = rng.Uniform() * remaining;
              for (int32_t e = 0; e < num_experts; ++e) {
                if (!free(e)) continue;
                chosen = e;  // the last free expert absorbs rounding
                if ((u -= weight[l][e]) < 0) break;
              }
            }
          }
          taken[chosen] = stamp;
          set[j] = static_cast<uint16_t>(chosen);
        }
      }
    }
  }
  MOE_RETURN_IF_ERROR_CTX(trace.Validate(), "synthetic trace");  // a failure here is a bug
  return trace;
}

}  // namespace moe
