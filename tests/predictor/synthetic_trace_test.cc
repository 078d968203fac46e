// Tests of the synthetic trace generator: validity, determinism, option checks, and that each
// knob moves the property it controls (asserted on statistics computed from the trace).
#include "predictor/synthetic_trace.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "predictor/routing_trace.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// A neutral baseline: no skew, no locality, no affinity; enough tokens for stable statistics.
SyntheticTraceOptions Neutral() {
  SyntheticTraceOptions o;
  o.num_layers = 6;
  o.num_experts = 16;
  o.top_k = 2;
  o.num_sequences = 32;
  o.min_tokens = 48;
  o.max_tokens = 80;
  o.zipf_skew = 0;
  o.temporal_locality = 0;
  o.layer_affinity = 0;
  o.seed = 7;
  return o;
}

RoutingTrace Generate(const SyntheticTraceOptions& o) {
  auto trace = GenerateSyntheticTrace(o);
  EXPECT_TRUE(trace.ok()) << Message(trace.status());
  return trace.ok() ? *std::move(trace) : RoutingTrace();
}

// Mean over layers of the most popular expert's share of that layer's slots.
double TopExpertShare(const RoutingTrace& trace) {
  const auto& h = trace.header;
  double sum = 0;
  for (int32_t l = 0; l < h.num_layers; ++l) {
    std::vector<int64_t> counts(h.num_experts);
    for (int64_t t = 0; t < trace.num_tokens(); ++t) {
      for (uint16_t e : trace.Experts(t, l)) ++counts[e];
    }
    sum += static_cast<double>(std::ranges::max(counts)) / (trace.num_tokens() * h.top_k);
  }
  return sum / h.num_layers;
}

// Mean fraction of a token's set (per layer) also chosen by the previous token of its sequence.
double PreviousTokenOverlap(const RoutingTrace& trace) {
  const auto& h = trace.header;
  int64_t hits = 0, total = 0;
  for (const TraceSequence& s : trace.sequences) {
    for (int64_t t = s.token_offset + 1; t < s.token_offset + s.num_tokens; ++t) {
      for (int32_t l = 0; l < h.num_layers; ++l) {
        auto prev = trace.Experts(t - 1, l);
        for (uint16_t e : trace.Experts(t, l)) {
          hits += std::ranges::find(prev, e) != prev.end();
          ++total;
        }
      }
    }
  }
  return static_cast<double>(hits) / total;
}

// How well layer l's experts predict layer l + 1's: for each (layer, expert) the most frequent
// co-occurring expert at the next layer is the prediction; returns the fraction of predictions
// that are in the next layer's set.
double NextLayerPredictability(const RoutingTrace& trace) {
  const auto& h = trace.header;
  const int32_t E = h.num_experts;
  std::vector<int64_t> co(static_cast<size_t>(h.num_layers) * E * E);
  for (int64_t t = 0; t < trace.num_tokens(); ++t) {
    for (int32_t l = 0; l + 1 < h.num_layers; ++l) {
      for (uint16_t a : trace.Experts(t, l)) {
        for (uint16_t b : trace.Experts(t, l + 1)) ++co[(l * E + a) * E + b];
      }
    }
  }
  int64_t hits = 0, total = 0;
  for (int64_t t = 0; t < trace.num_tokens(); ++t) {
    for (int32_t l = 0; l + 1 < h.num_layers; ++l) {
      auto next = trace.Experts(t, l + 1);
      for (uint16_t a : trace.Experts(t, l)) {
        const int64_t* row = &co[(l * E + a) * E];
        const int32_t predicted = static_cast<int32_t>(std::max_element(row, row + E) - row);
        hits += std::ranges::find(next, predicted) != next.end();
        ++total;
      }
    }
  }
  return static_cast<double>(hits) / total;
}

TEST(SyntheticTraceTest, DefaultsProduceAValidTrace) {
  SyntheticTraceOptions o;
  RoutingTrace trace = Generate(o);
  ASSERT_TRUE(trace.Validate().ok());
  EXPECT_EQ(trace.header.model, "synthetic");
  EXPECT_EQ(trace.header.num_layers, o.num_layers);
  EXPECT_EQ(trace.header.num_experts, o.num_experts);
  EXPECT_EQ(trace.header.top_k, o.top_k);
  EXPECT_EQ(trace.header.expert_bytes, o.expert_bytes);
  ASSERT_EQ(trace.sequences.size(), static_cast<size_t>(o.num_sequences));
  for (const TraceSequence& s : trace.sequences) {
    EXPECT_GE(s.num_tokens, o.min_tokens);
    EXPECT_LE(s.num_tokens, o.max_tokens);
  }
  EXPECT_TRUE(std::ranges::all_of(trace.phases, [](Phase p) { return p == Phase::kDecode; }));
  EXPECT_FALSE(trace.has_gate_weights());
}

TEST(SyntheticTraceTest, DeterministicBySeed) {
  SyntheticTraceOptions o;
  o.temporal_locality = 0.4;
  o.layer_affinity = 0.4;
  const RoutingTrace a = Generate(o), b = Generate(o);
  EXPECT_EQ(a.experts, b.experts);
  ASSERT_EQ(a.sequences.size(), b.sequences.size());
  for (size_t s = 0; s < a.sequences.size(); ++s) {
    EXPECT_EQ(a.sequences[s].num_tokens, b.sequences[s].num_tokens);
  }
  o.seed = 2;
  const RoutingTrace c = Generate(o);
  EXPECT_NE(a.experts, c.experts);
}

TEST(SyntheticTraceTest, EdgeShapesStayValid) {
  // Every expert chosen by every token; heavy skew with k near E (exercises the exact fallback);
  // more than 256 experts; a single layer; sequences of length 1.
  SyntheticTraceOptions all = Neutral();
  all.top_k = all.num_experts;
  all.temporal_locality = 0.5;
  all.layer_affinity = 0.5;
  SyntheticTraceOptions skewed = Neutral();
  skewed.top_k = 14;
  skewed.zipf_skew = 6;
  SyntheticTraceOptions wide = Neutral();
  wide.num_experts = 300;
  wide.top_k = 8;
  wide.zipf_skew = 1.2;
  wide.temporal_locality = 0.3;
  wide.layer_affinity = 0.6;
  SyntheticTraceOptions single = Neutral();
  single.num_layers = 1;
  single.min_tokens = single.max_tokens = 1;
  single.phase = Phase::kPrefill;
  for (const auto& o : {all, skewed, wide, single}) {
    RoutingTrace trace = Generate(o);
    EXPECT_TRUE(trace.Validate().ok()) << Message(trace.Validate());
    EXPECT_EQ(trace.phases[0], o.phase);
  }
  EXPECT_GT(std::ranges::max(Generate(wide).experts), 255);
}

TEST(SyntheticTraceTest, RejectsBadOptionsNamingTheField) {
  struct Case {
    void (*mutate)(SyntheticTraceOptions&);
    const char* needle;
  };
  const Case cases[] = {
      {[](SyntheticTraceOptions& o) { o.num_layers = 0; }, "num_layers is 0"},
      {[](SyntheticTraceOptions& o) { o.num_experts = -3; }, "num_experts is -3"},
      {[](SyntheticTraceOptions& o) { o.top_k = 17; },
       "top_k is 17, must be in [1, num_experts = 16]"},
      {[](SyntheticTraceOptions& o) { o.top_k = 0; }, "top_k is 0"},
      {[](SyntheticTraceOptions& o) { o.num_sequences = 0; }, "num_sequences is 0"},
      {[](SyntheticTraceOptions& o) { o.min_tokens = 0; }, "min_tokens is 0"},
      {[](SyntheticTraceOptions& o) { o.max_tokens = 3; },
       "max_tokens is 3, must be >= min_tokens"},
      {[](SyntheticTraceOptions& o) { o.zipf_skew = -1; }, "zipf_skew is -1"},
      {[](SyntheticTraceOptions& o) { o.temporal_locality = 1.5; }, "temporal_locality is 1.5"},
      {[](SyntheticTraceOptions& o) { o.layer_affinity = -0.1; }, "layer_affinity is -0.1"},
      {[](SyntheticTraceOptions& o) { o.num_sequences = 1 << 22; }, "more than the limit"},
  };
  for (const Case& c : cases) {
    SyntheticTraceOptions o;
    c.mutate(o);
    auto trace = GenerateSyntheticTrace(o);
    ASSERT_FALSE(trace.ok()) << c.needle;
    EXPECT_EQ(trace.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(trace.status()), HasSubstr(c.needle));
  }
}

TEST(SyntheticTraceTest, SkewConcentratesPopularity) {
  SyntheticTraceOptions o = Neutral();
  const double uniform = TopExpertShare(Generate(o));
  o.zipf_skew = 1.5;
  const double skewed = TopExpertShare(Generate(o));
  // Uniform: each expert holds about 1/16 of the slots.
  EXPECT_NEAR(uniform, 1.0 / 16, 0.03);
  EXPECT_GT(skewed, uniform + 0.15);
  // The most popular expert differs between layers (per-layer permutations).
  RoutingTrace trace = Generate(o);
  std::map<int, int> top_by_layer;
  for (int32_t l = 0; l < trace.header.num_layers; ++l) {
    std::vector<int64_t> counts(trace.header.num_experts);
    for (int64_t t = 0; t < trace.num_tokens(); ++t) {
      for (uint16_t e : trace.Experts(t, l)) ++counts[e];
    }
    ++top_by_layer[static_cast<int>(std::ranges::max_element(counts) - counts.begin())];
  }
  EXPECT_GT(top_by_layer.size(), 1u);
}

TEST(SyntheticTraceTest, LocalityRaisesOverlapWithPreviousToken) {
  SyntheticTraceOptions o = Neutral();
  const double none = PreviousTokenOverlap(Generate(o));
  o.temporal_locality = 0.8;
  const double strong = PreviousTokenOverlap(Generate(o));
  // Without locality, overlap is chance: about top_k / num_experts.
  EXPECT_NEAR(none, 2.0 / 16, 0.03);
  EXPECT_GT(strong, none + 0.4);
  // Popularity and affinity stay near their neutral values.
  EXPECT_LT(TopExpertShare(Generate(o)), 0.15);
}

TEST(SyntheticTraceTest, AffinityRaisesNextLayerPredictability) {
  SyntheticTraceOptions o = Neutral();
  const double none = NextLayerPredictability(Generate(o));
  o.layer_affinity = 0.9;
  const double strong = NextLayerPredictability(Generate(o));
  EXPECT_LT(none, 0.3);
  EXPECT_GT(strong, none + 0.4);
  // Affinity does not create temporal locality.
  EXPECT_NEAR(PreviousTokenOverlap(Generate(o)), 2.0 / 16, 0.05);
}

}  // namespace
}  // namespace moe
