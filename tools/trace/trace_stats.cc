#include "tools/trace/trace_stats.h"

#include <algorithm>
#include <numeric>

namespace moe {
namespace {

// Indices of the `k` largest values (ties: lower index).
std::vector<int32_t> TopIndices(const std::vector<double>& v, int32_t k) {
  std::vector<int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(static_cast<size_t>(k));
  return idx;
}

}  // namespace

TraceStats ComputeTraceStats(const RoutingTrace& trace) {
  TraceStats s;
  const int32_t L = trace.header.num_layers, E = trace.header.num_experts, K = trace.header.top_k;
  s.tokens = trace.num_tokens();
  s.sequences = static_cast<int64_t>(trace.sequences.size());
  for (Phase p : trace.phases) (p == Phase::kPrefill ? s.prefill_tokens : s.decode_tokens)++;
  if (s.tokens == 0 || L == 0) return s;

  // Per-layer counts and transition counts between consecutive layers.
  std::vector<double> counts(static_cast<size_t>(L) * E, 0.0);
  std::vector<double> trans(static_cast<size_t>(std::max(L - 1, 0)) * E * E, 0.0);
  for (int64_t t = 0; t < s.tokens; ++t) {
    for (int32_t l = 0; l < L; ++l) {
      const auto cur = trace.Experts(t, l);
      for (uint16_t e : cur) counts[static_cast<size_t>(l) * E + e] += 1;
      if (l + 1 < L) {
        const auto next = trace.Experts(t, l + 1);
        double* table = trans.data() + static_cast<size_t>(l) * E * E;
        for (uint16_t a : cur)
          for (uint16_t b : next) table[static_cast<size_t>(a) * E + b] += 1;
      }
    }
  }
  const int32_t quarter = std::max(1, E / 4);
  for (int32_t l = 0; l < L; ++l) {
    std::vector<double> c(counts.begin() + static_cast<ptrdiff_t>(l) * E,
                          counts.begin() + static_cast<ptrdiff_t>(l + 1) * E);
    std::sort(c.begin(), c.end(), std::greater<>());
    const double total = std::accumulate(c.begin(), c.end(), 0.0);
    const double top = std::accumulate(c.begin(), c.begin() + quarter, 0.0);
    s.top_quarter_share_per_layer.push_back(total > 0 ? top / total : 0.0);
  }
  s.top_quarter_share = std::accumulate(s.top_quarter_share_per_layer.begin(),
                                        s.top_quarter_share_per_layer.end(), 0.0) /
                        L;

  // Temporal locality.
  double overlap = 0;
  int64_t pairs = 0;
  for (const TraceSequence& seq : trace.sequences) {
    for (int64_t t = seq.token_offset + 1; t < seq.token_offset + seq.num_tokens; ++t) {
      for (int32_t l = 0; l < L; ++l) {
        const auto a = trace.Experts(t, l), b = trace.Experts(t - 1, l);
        int shared = 0;
        for (uint16_t x : a) shared += std::count(b.begin(), b.end(), x) > 0;
        overlap += static_cast<double>(shared) / K;
        ++pairs;
      }
    }
  }
  s.previous_token_overlap = pairs ? overlap / static_cast<double>(pairs) : 0.0;
  s.previous_token_overlap_random = static_cast<double>(K) / E;

  // Inter-layer affinity: in-sample transition recall vs popularity recall.
  if (L > 1) {
    std::vector<std::vector<int32_t>> popular(static_cast<size_t>(L));
    for (int32_t l = 0; l < L; ++l) {
      popular[l] =
          TopIndices(std::vector<double>(counts.begin() + static_cast<ptrdiff_t>(l) * E,
                                         counts.begin() + static_cast<ptrdiff_t>(l + 1) * E),
                     K);
    }
    double trans_hits = 0, pop_hits = 0;
    int64_t samples = 0;
    std::vector<double> score(static_cast<size_t>(E));
    for (int64_t t = 0; t < s.tokens; ++t) {
      for (int32_t l = 0; l + 1 < L; ++l) {
        const auto cur = trace.Experts(t, l), next = trace.Experts(t, l + 1);
        std::fill(score.begin(), score.end(), 0.0);
        const double* table = trans.data() + static_cast<size_t>(l) * E * E;
        for (uint16_t a : cur)
          for (int32_t b = 0; b < E; ++b) score[b] += table[static_cast<size_t>(a) * E + b];
        for (int32_t e : TopIndices(score, K))
          trans_hits += std::count(next.begin(), next.end(), e) > 0;
        for (int32_t e : popular[l + 1]) pop_hits += std::count(next.begin(), next.end(), e) > 0;
        ++samples;
      }
    }
    s.transition_recall = trans_hits / (static_cast<double>(samples) * K);
    s.popularity_recall = pop_hits / (static_cast<double>(samples) * K);
  }
  return s;
}

}  // namespace moe
