// Engine behaviour beyond the golden logits: bad input, batching and chunking that must not
// change results, cache accounting, device arena bounds, and the promise that moe-replay on the
// engine's own trace reports the hit rate the engine counted.
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "predictor/learned_predictor.h"
#include "predictor/predictor.h"
#include "predictor/synthetic_trace.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "tools/replay/replay.h"
#include "tools/replay/replay_schedule.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Model> TinyModel() {
  static std::shared_ptr<const Model> model = [] {
    auto m = Model::Load(std::string(MOE_SOURCE_DIR) + "/tests/data/golden/mixtral-tiny-f32");
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *m : nullptr;
  }();
  return model;
}

std::unique_ptr<Engine> MakeEngine(const EngineOptions& options) {
  auto engine = Engine::Create(TinyModel(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

std::vector<int32_t> Prompt(int n, int seed) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(3 + (i * 37 + seed * 101) % 990);
  return ids;
}

double MaxAbsDiff(std::span<const float> a, std::span<const float> b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

TEST(Engine, BudgetSmallerThanOneTokensExpertsIsAClearError) {
  ASSERT_NE(TinyModel(), nullptr);
  EngineOptions options;
  options.expert_budget_bytes = TinyModel()->weights.expert_bytes;  // 1 expert, top-k is 2
  auto engine = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(engine.status().message()),
              HasSubstr("smaller than one token's experts"));
  options.expert_budget_bytes = 0;
  options.policy = "no-such-policy";
  EXPECT_FALSE(Engine::Create(TinyModel(), options).ok());
}

TEST(Engine, BadInputIsRejectedAndNothingIsAppended) {
  EngineOptions options;
  options.max_sequences = 2;
  options.max_context = 8;
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  std::vector<float> logits(1000);
  const std::vector<int32_t> good = {5, 6, 7};
  const std::vector<int32_t> bad_id = {5, 1000};
  const std::vector<int32_t> negative = {-1};
  const std::vector<int32_t> too_long = Prompt(9, 1);
  struct Case {
    std::vector<SequenceTokens> batch;
    size_t logits_size;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{0, bad_id}}, 1000, "token id 1000 outside the vocabulary"},
      {{{0, negative}}, 1000, "token id -1"},
      {{{2, good}}, 1000, "sequence id 2 outside [0, 2)"},
      {{{-1, good}}, 1000, "sequence id -1"},
      {{{0, good}, {0, good}}, 2000, "appears twice"},
      {{{0, good}}, 999, "logits buffer holds 999 floats"},
      {{{0, too_long}}, 1000, "exceed the context of 8"},
      {{}, 0, "empty batch"},
  };
  for (const Case& c : cases) {
    std::vector<float> out(c.logits_size);
    const absl::Status s = engine->Evaluate(c.batch, false, out);
    EXPECT_FALSE(s.ok()) << c.message;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
    EXPECT_EQ(engine->SequenceLength(0), 0);
  }
  EXPECT_FALSE(engine->ResetSequence(5).ok());
  EXPECT_FALSE(engine->StopTrace().ok());  // not recording
}

TEST(Engine, ChunkedPrefillAndBatchedDecodeGiveTheSameLogits) {
  EngineOptions one;
  one.prefill_chunk = 256;
  EngineOptions chunked;
  chunked.prefill_chunk = 3;
  chunked.max_sequences = 3;
  chunked.expert_budget_bytes = TinyModel()->weights.expert_bytes * 5;  // heavy eviction
  auto a = MakeEngine(one);
  auto b = MakeEngine(chunked);
  ASSERT_TRUE(a && b);
  const size_t V = 1000;
  // Reference: each sequence alone, prompt in one step, then 4 decode steps.
  std::vector<std::vector<float>> ref;
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(a->ResetSequence(0).ok());
    const auto prompt = Prompt(5 + 3 * s, s);
    std::vector<float> logits(V);
    const SequenceTokens e{0, prompt};
    ASSERT_TRUE(a->Evaluate({&e, 1}, false, logits).ok());
    ref.push_back(logits);
    for (int step = 0; step < 4; ++step) {
      const int32_t tok = 10 + 7 * step + s;
      const SequenceTokens d{0, {&tok, 1}};
      ASSERT_TRUE(a->Evaluate({&d, 1}, false, logits).ok());
      ref.push_back(logits);
    }
  }
  // Same tokens: three prompts in one call (chunked), then decode steps over all three at once.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<SequenceTokens> batch;
  for (int s = 0; s < 3; ++s) prompts.push_back(Prompt(5 + 3 * s, s));
  for (int s = 0; s < 3; ++s) batch.push_back({s, prompts[s]});
  std::vector<float> logits(3 * V);
  ASSERT_TRUE(b->Evaluate(batch, false, logits).ok());
  for (int s = 0; s < 3; ++s) {
    EXPECT_LT(MaxAbsDiff({logits.data() + s * V, V}, ref[s * 5]), 1e-4) << "prompt " << s;
  }
  for (int step = 0; step < 4; ++step) {
    std::vector<int32_t> toks(3);
    batch.clear();
    for (int s = 0; s < 3; ++s) {
      toks[s] = 10 + 7 * step + s;
      batch.push_back({s, {&toks[s], 1}});
    }
    ASSERT_TRUE(b->Evaluate(batch, false, logits).ok());
    for (int s = 0; s < 3; ++s) {
      EXPECT_LT(MaxAbsDiff({logits.data() + s * V, V}, ref[s * 5 + 1 + step]), 1e-4)
          << "sequence " << s << " step " << step;
    }
  }
  EXPECT_EQ(b->SequenceLength(2), 11 + 4);
}

TEST(Engine, CountsEveryAccessAndStaysInsideItsDeviceArena) {
  EngineOptions options;
  options.expert_budget_bytes = TinyModel()->weights.expert_bytes * 6;
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  std::vector<int32_t> out;
  GenerateOptions g;
  g.max_tokens = 10;
  auto result = Generate(*engine, 0, Prompt(12, 3), g);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens.size(), 10u);
  const EngineStats s = engine->stats();
  EXPECT_EQ(s.cache.hits + s.cache.misses, s.cache.accesses);
  EXPECT_GT(s.cache.misses, 0u);
  EXPECT_GT(s.cache.evictions, 0u);
  EXPECT_EQ(s.cache.bytes_loaded, s.cache.loads() * TinyModel()->weights.expert_bytes);
  EXPECT_EQ(s.expert_slots, 6);
  // Weights + slots + activations + KV is the whole arena; the peak never passes it.
  EXPECT_EQ(s.device.capacity_bytes,
            s.non_expert_bytes + s.expert_arena_bytes + s.activation_bytes);
  EXPECT_LE(s.device.peak_bytes, s.device.capacity_bytes);
  // Copies into the device: the weights once, then every expert load.
  EXPECT_EQ(s.device.bytes_to_device, s.cache.bytes_loaded + s.setup_bytes_to_device);
  EXPECT_EQ(s.prefill.tokens, 12u);
  EXPECT_EQ(s.decode.tokens, 9u);  // the 10th token is sampled, never evaluated
}

TEST(Engine, ReplayOfTheEnginesTraceReportsTheSameHitRate) {
  const ModelConfig& c = TinyModel()->config;
  const uint64_t expert_bytes = TinyModel()->weights.expert_bytes;
  for (const char* policy : {"lru", "lfu", "arc", "lrfu"}) {
    for (CacheScope scope : {CacheScope::kGlobal, CacheScope::kLayer}) {
      SCOPED_TRACE(fmt::format("{} {}", policy, CacheScopeName(scope)));
      EngineOptions options;
      options.policy = policy;
      options.scope = scope;
      options.prefill_chunk = 5;
      options.expert_budget_bytes = expert_bytes * (scope == CacheScope::kLayer ? 3 * 4 : 9);
      auto engine = MakeEngine(options);
      ASSERT_NE(engine, nullptr);
      engine->StartTrace();
      for (int s = 0; s < 3; ++s) {  // three requests, one after another, cache kept warm
        ASSERT_TRUE(engine->ResetSequence(0).ok());
        GenerateOptions g;
        g.max_tokens = 8;
        ASSERT_TRUE(Generate(*engine, 0, Prompt(7 + 4 * s, s), g).ok());
      }
      auto trace = engine->StopTrace();
      ASSERT_TRUE(trace.ok()) << trace.status();
      // Each request (a reset of sequence 0) is its own sequence in the trace.
      ASSERT_EQ(trace->sequences.size(), 3u);
      const EngineStats live = engine->stats();

      ReplayOptions ro;
      ro.policy = policy;
      ro.scope = scope;
      ro.budget_bytes = live.expert_arena_bytes;
      const ReplaySchedule schedule(*trace, {}, 1, 5);
      auto replayed = RunReplay(*trace, schedule, ro, nullptr);
      ASSERT_TRUE(replayed.ok()) << replayed.status();
      EXPECT_EQ(replayed->stats.accesses, live.cache.accesses);
      EXPECT_EQ(replayed->stats.hits, live.cache.hits);
      EXPECT_EQ(replayed->stats.evictions, live.cache.evictions);
      EXPECT_EQ(replayed->capacity_total, live.expert_slots);
      (void)c;
    }
  }
}

// Runs three requests one after another on sequence 0 (prompt + greedy decode) and returns the
// logits of every generated step, for comparing runs that must not differ.
std::vector<float> RunRequests(Engine& engine) {
  std::vector<float> all;
  for (int s = 0; s < 3; ++s) {
    EXPECT_TRUE(engine.ResetSequence(0).ok());
    std::vector<int32_t> tokens = Prompt(7 + 4 * s, s);
    std::vector<float> logits(static_cast<size_t>(engine.model().config.vocab_size));
    for (int step = 0; step < 8; ++step) {
      const SequenceTokens entry{0, tokens};
      EXPECT_TRUE(engine.Evaluate({&entry, 1}, false, logits).ok());
      all.insert(all.end(), logits.begin(), logits.end());
      tokens = {
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    }
  }
  return all;
}

TEST(Engine, PredictionAndPrefetchingNeverChangeTheResult) {
  const uint64_t expert_bytes = TinyModel()->weights.expert_bytes;
  EngineOptions base;
  base.expert_budget_bytes = expert_bytes * 9;
  base.prefill_chunk = 5;
  auto plain = MakeEngine(base);
  ASSERT_NE(plain, nullptr);
  const std::vector<float> expected = RunRequests(*plain);
  const EngineStats plain_stats = plain->stats();
  EXPECT_TRUE(plain_stats.recall.found.empty());
  EXPECT_EQ(plain_stats.cache.prefetch_loads, 0u);

  for (const char* predictor : {"gate", "frequency", "recency", "combined"}) {
    for (int depth : {0, 1, 3}) {
      SCOPED_TRACE(fmt::format("{} depth {}", predictor, depth));
      EngineOptions options = base;
      options.predictor = predictor;
      options.prefetch.depth = depth;
      auto engine = MakeEngine(options);
      ASSERT_NE(engine, nullptr);
      EXPECT_EQ(MaxAbsDiff(RunRequests(*engine), expected), 0.0);
      const EngineStats s = engine->stats();
      const int32_t L = static_cast<int32_t>(TinyModel()->config.num_layers);
      ASSERT_EQ(s.recall.found.size(), static_cast<size_t>(L));
      uint64_t chosen = 0;
      for (int32_t l = 0; l < L; ++l) {
        EXPECT_LE(s.recall.found[l], s.recall.chosen[l]);
        chosen += s.recall.chosen[l];
      }
      // Every token's routing at every layer was scored: top_k experts per token-layer.
      EXPECT_EQ(chosen, (s.prefill.tokens + s.decode.tokens) * L * TinyModel()->config.top_k);
      EXPECT_EQ(s.cache.accesses, plain_stats.cache.accesses);
      if (depth == 0) {
        EXPECT_EQ(s.cache.prefetch_loads, 0u);
      } else {
        EXPECT_GT(s.cache.prefetch_loads, 0u);
      }
      EXPECT_LE(s.cache.prefetch_useful + s.cache.prefetch_wasted, s.cache.prefetch_loads);
      // Every copy that started went through the device; prefetches evicted while still queued
      // were cancelled and cost no bytes.
      EXPECT_EQ(s.device.bytes_to_device, s.transfers.bytes_started + s.setup_bytes_to_device);
      EXPECT_LE(s.transfers.bytes_started, s.cache.bytes_loaded);
      EXPECT_EQ(s.transfers.started * TinyModel()->weights.expert_bytes, s.transfers.bytes_started);
      EXPECT_EQ(s.transfers.prefetch_issued, s.cache.prefetch_loads);
    }
  }
}

TEST(Engine, GatePredictorBeatsLayerFrequencyOnTheTinyModel) {
  // Even with random weights the residual stream carries the token's identity from layer to
  // layer, so the next layer's router applied to it ranks that layer's experts far better than
  // their frequency. (On the trained demo model the gap is what bench/RESULTS.md records.)
  EngineOptions options;
  options.predictor = "gate";
  auto gate = MakeEngine(options);
  options.predictor = "frequency";
  auto frequency = MakeEngine(options);
  ASSERT_NE(gate, nullptr);
  ASSERT_NE(frequency, nullptr);
  RunRequests(*gate);
  RunRequests(*frequency);
  const double g = gate->stats().recall.RecallFrom(1), f = frequency->stats().recall.RecallFrom(1);
  EXPECT_GT(g, f + 0.05) << "gate " << g << " frequency " << f;
}

// Runs a 17-token prompt as one prefill chunk and token by token with `options` (a predictor
// set) and expects the same one-layer-ahead recall per layer: every token of a chunk must be
// predicted from its own state, not the chunk's last token's.
void ExpectChunkedRecallEqualsTokenByToken(EngineOptions options) {
  auto recall_with_chunk = [&](int64_t chunk) {
    options.prefill_chunk = chunk;
    auto engine = MakeEngine(options);
    EXPECT_NE(engine, nullptr);
    std::vector<float> logits(static_cast<size_t>(TinyModel()->config.vocab_size));
    const std::vector<int32_t> prompt = Prompt(17, 4);
    const SequenceTokens entry{0, prompt};
    EXPECT_TRUE(engine->Evaluate({&entry, 1}, false, logits).ok());
    return engine->stats().recall;
  };
  const PredictionRecall chunked = recall_with_chunk(17), single = recall_with_chunk(1);
  for (size_t l = 1; l < chunked.found.size(); ++l) {
    EXPECT_EQ(chunked.found[l], single.found[l]) << "layer " << l;
    EXPECT_EQ(chunked.chosen[l], single.chosen[l]);
  }
}

// Predictor options of the tiny model's shape.
PredictorOptions TinyPredictorOptions() {
  PredictorOptions po;
  po.space = ExpertSpace{static_cast<int32_t>(TinyModel()->config.num_layers),
                         static_cast<int32_t>(TinyModel()->config.num_experts)};
  po.top_k = static_cast<int32_t>(TinyModel()->config.top_k);
  return po;
}

TEST(Engine, GateRecallOfAPromptChunkEqualsTokenByToken) {
  // The sequence's predictor state holds the chunk's last token after a layer.
  EngineOptions options;
  options.predictor = "gate";
  options.prefetch.depth = 0;
  ExpectChunkedRecallEqualsTokenByToken(options);
}

TEST(Engine, LearnedRecallOfAPromptChunkEqualsTokenByToken) {
  // The learned predictor reads each token's layer-0 state once and predicts all later layers
  // from it; in a prefill chunk every token must get its own state back, not the chunk's last.
  const PredictorOptions po = TinyPredictorOptions();
  LearnedPredictor learned(po);
  LearnedPredictorWeights w;
  w.input_size = TinyModel()->config.hidden_size;
  w.hidden_units = 16;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.5f);
  for (int64_t i = 0; i < w.hidden_units * w.input_size; ++i) w.w1.push_back(normal(rng));
  for (int64_t i = 0; i < w.hidden_units; ++i) w.b1.push_back(normal(rng));
  for (int64_t i = 0; i < po.space.size() * w.hidden_units; ++i) w.w2.push_back(normal(rng));
  for (int64_t i = 0; i < po.space.size(); ++i) w.b2.push_back(normal(rng));
  ASSERT_TRUE(learned.SetWeights(w).ok());
  const std::string path = ::testing::TempDir() + "/learned_tiny.safetensors";
  ASSERT_TRUE(learned.Save(path).ok());
  EngineOptions options;
  options.predictor = "learned";
  options.predictor_file = path;
  options.prefetch.depth = 2;
  ExpectChunkedRecallEqualsTokenByToken(options);
}

TEST(Engine, ReplayWithTheSamePredictorPrefetchesExactlyAsLive) {
  const uint64_t expert_bytes = TinyModel()->weights.expert_bytes;
  for (const char* predictor : {"frequency", "recency", "combined"}) {
    for (CacheScope scope : {CacheScope::kGlobal, CacheScope::kLayer}) {
      for (const char* policy : {"lru", "predictive"}) {
        SCOPED_TRACE(fmt::format("{} {} {}", predictor, CacheScopeName(scope), policy));
        EngineOptions options;
        options.policy = policy;
        options.scope = scope;
        options.prefill_chunk = 5;
        options.expert_budget_bytes = expert_bytes * (scope == CacheScope::kLayer ? 3 * 4 : 9);
        options.predictor = predictor;
        options.prefetch.depth = 2;
        auto engine = MakeEngine(options);
        ASSERT_NE(engine, nullptr);
        engine->StartTrace();
        RunRequests(*engine);
        auto trace = engine->StopTrace();
        ASSERT_TRUE(trace.ok()) << trace.status();
        const EngineStats live = engine->stats();

        PredictorOptions po;
        po.space = trace->space();
        po.top_k = trace->header.top_k;
        auto replay_predictor = MakePredictor(predictor, po);
        ASSERT_TRUE(replay_predictor.ok());
        ReplayOptions ro;
        ro.policy = policy;
        ro.scope = scope;
        ro.budget_bytes = live.expert_arena_bytes;
        ro.prefetch_depth = 2;
        const ReplaySchedule schedule(*trace, {}, 1, 5);
        auto replayed = RunReplay(*trace, schedule, ro, replay_predictor->get());
        ASSERT_TRUE(replayed.ok()) << replayed.status();
        EXPECT_EQ(replayed->stats.accesses, live.cache.accesses);
        EXPECT_EQ(replayed->stats.hits, live.cache.hits);
        EXPECT_EQ(replayed->stats.prefetch_loads, live.cache.prefetch_loads);
        EXPECT_EQ(replayed->stats.prefetch_useful, live.cache.prefetch_useful);
        EXPECT_EQ(replayed->stats.evictions, live.cache.evictions);
        EXPECT_GT(live.cache.prefetch_loads, 0u);
      }
    }
  }
}

EngineOptions FakeDeviceOptionsFor(const char* predictor, int depth) {
  EngineOptions options;
  options.device = "fake";
  // A slow link against fast compute, as PCIe against HBM: one expert copy costs ~50 expert
  // computes.
  options.fake_compute_bytes_per_second = 1e12;
  options.fake_device.link_bytes_per_second = 2e10;
  options.fake_device.link_latency_seconds = 1e-6;
  options.expert_budget_bytes = TinyModel()->weights.expert_bytes * 12;
  options.prefill_chunk = 5;
  options.predictor = predictor;
  options.prefetch.depth = depth;
  return options;
}

TEST(Engine, FakeDeviceGivesTheSameResultsAndAccountsItsTime) {
  EngineOptions cpu_options = FakeDeviceOptionsFor("none", 0);
  cpu_options.device = "cpu";
  auto cpu = MakeEngine(cpu_options);
  auto fake = MakeEngine(FakeDeviceOptionsFor("none", 0));
  ASSERT_NE(cpu, nullptr);
  ASSERT_NE(fake, nullptr);
  EXPECT_EQ(MaxAbsDiff(RunRequests(*fake), RunRequests(*cpu)), 0.0);
  const EngineStats s = fake->stats();
  EXPECT_EQ(s.cache.hits, cpu->stats().cache.hits);
  EXPECT_GT(s.device.compute_seconds, 0.0);
  EXPECT_GT(s.device.copy_stall_seconds, 0.0);  // on-demand misses wait for the link
  EXPECT_NEAR(s.device_seconds, s.device.compute_seconds + s.device.copy_stall_seconds, 1e-12);
  EXPECT_NEAR(s.prefill.device_seconds + s.decode.device_seconds, s.device_seconds, 1e-12);
  EXPECT_EQ(s.transfers.demand_issued, s.cache.misses);
}

TEST(Engine, PrefetchingOnTheFakeLinkOverlapsCopiesWithCompute) {
  // Every expert fits and compute reads weights 10x slower than the link moves them (a CPU-like
  // device): only the cold misses stall. With whole layers prefetched two layers ahead, those
  // copies run while earlier layers compute.
  auto options = [](const char* predictor, int depth) {
    EngineOptions o = FakeDeviceOptionsFor(predictor, depth);
    o.expert_budget_bytes = 0;  // every expert
    o.fake_compute_bytes_per_second = o.fake_device.link_bytes_per_second / 10;
    o.prefetch.budget = static_cast<int32_t>(TinyModel()->config.num_experts);
    return o;
  };
  auto demand = MakeEngine(options("none", 0));
  auto prefetch = MakeEngine(options("frequency", 2));
  ASSERT_NE(demand, nullptr);
  ASSERT_NE(prefetch, nullptr);
  EXPECT_EQ(MaxAbsDiff(RunRequests(*prefetch), RunRequests(*demand)), 0.0);
  const EngineStats d = demand->stats(), p = prefetch->stats();
  // Same compute; the predicted copies ran while earlier layers computed, so compute waited less.
  EXPECT_NEAR(p.device.compute_seconds, d.device.compute_seconds, 1e-12);
  EXPECT_LT(p.device.copy_stall_seconds, 0.8 * d.device.copy_stall_seconds)
      << p.device.copy_stall_seconds << " vs " << d.device.copy_stall_seconds;
  EXPECT_GT(p.transfers.useful, 0u);
  EXPECT_GT(p.transfers.late, 0u);  // some were still on the link when needed
  EXPECT_LE(p.transfers.useful + p.transfers.wasted + p.transfers.cancelled,
            p.transfers.prefetch_issued);
}

// The fake device with a link of `link` bytes/s, and given CPU rates for the fallback's cost
// model (20 GB/s, 1 TFLOP/s: a CPU faster than a 2 GB/s link at batch 1).
EngineOptions CpuFallbackOptions(bool fallback, double link) {
  EngineOptions o = FakeDeviceOptionsFor("none", 0);
  o.fake_device.link_bytes_per_second = link;
  o.cpu_fallback = fallback;
  o.cpu_bytes_per_second = 20e9;
  o.cpu_flops_per_second = 1e12;
  return o;
}

// Runs the requests on one engine per options; the results must be exactly equal. The stats,
// in order (empty when an engine could not be made: that already failed the test).
std::vector<EngineStats> RunExpectingEqualResults(const std::vector<EngineOptions>& options) {
  std::vector<EngineStats> stats;
  std::vector<float> first;
  for (const EngineOptions& o : options) {
    auto engine = MakeEngine(o);
    EXPECT_NE(engine, nullptr);
    if (engine == nullptr) return {};
    const std::vector<float> results = RunRequests(*engine);
    if (stats.empty()) first = results;
    EXPECT_EQ(MaxAbsDiff(results, first), 0.0) << "options #" << stats.size();
    stats.push_back(engine->stats());
  }
  return stats;
}

TEST(Engine, CpuFallbackRunsLateExpertsOnTheCpuWhenTheLinkIsSlower) {
  // Batch 1 decode over a link slower than the CPU's expert throughput: the cost model sends
  // misses to the CPU instead of waiting, results stay exact, and the device waits less.
  auto options = CpuFallbackOptions;
  auto wait = MakeEngine(options(false, 2e9));
  ASSERT_NE(wait, nullptr);
  const std::vector<EngineStats> runs =
      RunExpectingEqualResults({options(false, 2e9), options(true, 2e9)});
  ASSERT_EQ(runs.size(), 2u);
  const EngineStats &w = runs[0], &c = runs[1];
  EXPECT_EQ(w.cpu_fallbacks, 0u);
  EXPECT_GT(c.cpu_fallbacks, 0u);
  EXPECT_EQ(c.cache.hits, w.cache.hits);  // the cache's view does not change
  EXPECT_LT(c.decode.device_seconds, w.decode.device_seconds);
  EXPECT_LT(c.device.copy_stall_seconds, w.device.copy_stall_seconds);

  EXPECT_EQ(c.cpu_bytes_per_second, 20e9);  // given, not measured

  // Rates left at 0 are measured at Create on a real expert (the values depend on the machine).
  EngineOptions measured = options(true, 2e9);
  measured.cpu_bytes_per_second = 0;
  measured.cpu_flops_per_second = 0;
  auto m = MakeEngine(measured);
  ASSERT_NE(m, nullptr);
  EXPECT_GT(m->stats().cpu_bytes_per_second, 0.0);
  EXPECT_GT(m->stats().cpu_flops_per_second, 0.0);
  EXPECT_EQ(MaxAbsDiff(RunRequests(*m), RunRequests(*wait)), 0.0);

  // A link far faster than the CPU: the copy always wins.
  auto fast = MakeEngine(options(true, 1e13));
  ASSERT_NE(fast, nullptr);
  RunRequests(*fast);
  EXPECT_EQ(fast->stats().cpu_fallbacks, 0u);
}

TEST(Engine, CpuFallbackBypassServesMissesFromHostWithoutLoadingThem) {
  // The same slow link: with the bypass, the misses the CPU serves take no slot and no copy, so
  // fewer bytes cross the link and the copies that remain wait less; results stay exact.
  auto options = [](bool bypass) {
    EngineOptions o = CpuFallbackOptions(true, 2e9);
    o.cpu_fallback_bypass = bypass;
    return o;
  };
  const std::vector<EngineStats> runs = RunExpectingEqualResults({options(false), options(true)});
  ASSERT_EQ(runs.size(), 2u);
  const EngineStats &c = runs[0], &b = runs[1];
  EXPECT_EQ(c.cpu_uncached, 0u);
  EXPECT_GT(b.cpu_uncached, 0u);
  EXPECT_LE(b.cpu_uncached, b.cpu_fallbacks);
  EXPECT_LT(b.transfers.bytes_started, c.transfers.bytes_started);
  EXPECT_LT(b.decode.device_seconds, c.decode.device_seconds);
  // Every expert a layer-step needs is a cache access or, with the bypass, served uncached.
  EXPECT_EQ(b.cache.accesses + b.cpu_uncached, c.cache.accesses);

  EngineOptions bad = options(true);
  bad.cpu_fallback = false;
  auto e = Engine::Create(TinyModel(), bad);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("cpu_fallback_bypass needs"));
}

TEST(Engine, PrefetchLimitsBoundTheLinkBytesPerStepAndUnconfirmedPrefetches) {
  auto unlimited = MakeEngine(FakeDeviceOptionsFor("gate", 2));
  ASSERT_NE(unlimited, nullptr);
  const std::vector<float> expected = RunRequests(*unlimited);
  const uint64_t expert_bytes = TinyModel()->weights.expert_bytes;

  EngineOptions budget = FakeDeviceOptionsFor("gate", 2);
  budget.prefetch_bytes_per_step = expert_bytes;  // one prefetch per step
  auto per_step = MakeEngine(budget);
  ASSERT_NE(per_step, nullptr);
  EXPECT_EQ(MaxAbsDiff(RunRequests(*per_step), expected), 0.0);
  const EngineStats b = per_step->stats();
  EXPECT_GT(b.transfers.rejected_budget, 0u);
  EXPECT_LE(b.transfers.prefetch_issued, b.prefill.steps + b.decode.steps);
  EXPECT_EQ(b.cache.prefetch_loads, b.transfers.prefetch_issued);  // refused ones took no slot

  EngineOptions cap = FakeDeviceOptionsFor("gate", 2);
  cap.max_unconfirmed_prefetches = 1;
  auto capped = MakeEngine(cap);
  ASSERT_NE(capped, nullptr);
  EXPECT_EQ(MaxAbsDiff(RunRequests(*capped), expected), 0.0);
  const EngineStats c = capped->stats();
  EXPECT_GT(c.transfers.rejected_cap, 0u);
  EXPECT_LT(c.transfers.prefetch_issued, unlimited->stats().transfers.prefetch_issued);

  EngineOptions bad = FakeDeviceOptionsFor("gate", 2);
  bad.max_unconfirmed_prefetches = -1;
  EXPECT_FALSE(Engine::Create(TinyModel(), bad).ok());
  bad.max_unconfirmed_prefetches = 0;
  bad.prefetch_bytes_per_step = expert_bytes - 1;
  auto e = Engine::Create(TinyModel(), bad);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("prefetch limits"));
}

TEST(Engine, CancellingStalePrefetchesFreesTheirSlotsAndKeepsResultsExact) {
  // Two layers ahead, a narrow copy window and a slow link: prefetches wait in the queue long
  // enough for the next layer's prediction to drop some of them.
  auto options = [](bool cancel) {
    EngineOptions o = FakeDeviceOptionsFor("gate", 2);
    o.copy_window = 1;
    o.prefetch.budget = 3;
    o.cancel_stale_prefetches = cancel;
    return o;
  };
  const std::vector<EngineStats> runs = RunExpectingEqualResults({options(false), options(true)});
  ASSERT_EQ(runs.size(), 2u);
  const EngineStats &k = runs[0], &c = runs[1];
  EXPECT_EQ(k.stale_prefetches_cancelled, 0u);
  EXPECT_GT(c.stale_prefetches_cancelled, 0u);
  // Each one was dropped from the copy queue (no link bytes) and from the cache (an unused
  // prefetch), and the queue's books still balance.
  EXPECT_GE(c.transfers.cancelled, c.stale_prefetches_cancelled);
  EXPECT_GE(c.cache.prefetch_wasted, c.stale_prefetches_cancelled);
  EXPECT_EQ(c.transfers.bytes_started, c.transfers.started * TinyModel()->weights.expert_bytes);
  // (The last token's prefetches for a next token may still be queued at the end.)
  EXPECT_LE(c.transfers.started + c.transfers.cancelled,
            c.transfers.demand_issued + c.transfers.prefetch_issued);
  EXPECT_LT(c.transfers.bytes_started, k.transfers.bytes_started);
}

TEST(Engine, FailedExpertCopiesAreRetriedAndResultsStayExact) {
  auto reference = MakeEngine(FakeDeviceOptionsFor("gate", 1));
  ASSERT_NE(reference, nullptr);
  const std::vector<float> expected = RunRequests(*reference);
  for (uint64_t nth : {1, 2, 7, 40}) {
    SCOPED_TRACE(nth);
    EngineOptions options = FakeDeviceOptionsFor("gate", 1);
    auto engine = MakeEngine(options);
    ASSERT_NE(engine, nullptr);
    auto* fake = dynamic_cast<FakeDevice*>(&engine->device());
    ASSERT_NE(fake, nullptr);
    fake->FailCopies(nth, 3);  // one expert's three tensors, or parts of neighbours
    EXPECT_EQ(MaxAbsDiff(RunRequests(*engine), expected), 0.0);
    EXPECT_GT(engine->stats().failed_copies, 0u);
  }
  // A link that fails every copy: a clear error, no hang, no crash.
  auto engine = MakeEngine(FakeDeviceOptionsFor("none", 0));
  ASSERT_NE(engine, nullptr);
  dynamic_cast<FakeDevice&>(engine->device()).FailCopies(1, UINT64_MAX);
  std::vector<float> logits(static_cast<size_t>(TinyModel()->config.vocab_size));
  const std::vector<int32_t> prompt = Prompt(5, 1);
  const SequenceTokens entry{0, prompt};
  const absl::Status st = engine->Evaluate({&entry, 1}, false, logits);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("failed twice"));
}

TEST(Engine, BadDeviceOptionsAreClearErrors) {
  auto expect_error = [](const EngineOptions& options, const char* needle) {
    auto e = Engine::Create(TinyModel(), options);
    ASSERT_FALSE(e.ok()) << needle;
    EXPECT_THAT(std::string(e.status().message()), HasSubstr(needle));
  };
  EngineOptions o;
  o.device = "tpu";
  expect_error(o, "unknown device 'tpu'");
  o = FakeDeviceOptionsFor("none", 0);
  o.copy_window = 0;
  expect_error(o, "copy window 0");
  o = FakeDeviceOptionsFor("none", 0);
  o.fake_device.link_bytes_per_second = 0;
  expect_error(o, "fake device: link 0 B/s");
  o = FakeDeviceOptionsFor("none", 0);
  o.cpu_fallback = true;
  o.cpu_bytes_per_second = -1;
  expect_error(o, "cpu fallback: -1 B/s");
}

TEST(Engine, CudaDeviceWorksOrIsAClearError) {
  EngineOptions o;
  o.device = "cuda";
  auto e = Engine::Create(TinyModel(), o);
#if MOE_CUDA_ENABLED
  // tests/engine/cuda_engine_test.cc covers the GPU; here only: never a crash, and without a GPU
  // a FailedPrecondition with CudaDevice::Create's reason.
  if (!e.ok()) {
    EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition) << e.status();
    EXPECT_THAT(std::string(e.status().message()), HasSubstr("device 'cuda'"));
  }
#else
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("this build has no CUDA support"));
  // "auto" means the CPU in a build without CUDA.
  o.device = "auto";
  auto a = Engine::Create(TinyModel(), o);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->device().name(), "cpu");
#endif
}

TEST(Engine, BadPredictorOptionsAreClearErrors) {
  EngineOptions options;
  options.predictor = "oracle";
  auto e = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("oracle"));

  options.predictor = "none";
  options.policy = "predictive";
  e = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("choose a predictor"));
  options.policy = "lru";

  options.predictor = "gate";
  options.prefetch.budget = 99;
  e = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("budget 99"));

  options.prefetch.budget = 0;
  options.predictor = "transition";
  options.predictor_file = "/nonexistent/tables.safetensors";
  e = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("/nonexistent/tables.safetensors"));
}

TEST(Engine, ForcedRoutingRunsTheTracesExpertsTokenByTokenAndWraps) {
  // A 2-layer, 5-token trace for the 4-layer tiny model: layer l takes trace layer l mod 2, and
  // the 8 tokens processed take trace tokens 0..4, 0..2.
  SyntheticTraceOptions so;
  so.num_layers = 2;
  so.num_experts = 8;
  so.top_k = 2;
  so.num_sequences = 1;
  so.min_tokens = so.max_tokens = 5;
  auto forced = GenerateSyntheticTrace(so);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EngineOptions options;
  options.expert_budget_bytes = TinyModel()->weights.expert_bytes * 8;
  options.forced_routing = std::make_shared<const RoutingTrace>(*forced);
  auto engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  engine->StartTrace();
  const std::vector<int32_t> prompt = Prompt(6, 1);
  std::vector<float> logits(static_cast<size_t>(TinyModel()->config.vocab_size));
  const SequenceTokens entry{0, prompt};
  ASSERT_TRUE(engine->Evaluate({&entry, 1}, false, logits).ok());  // tokens 0..5 (one chunk)
  for (int32_t next : {7, 9}) {                                    // tokens 6, 7 (decode)
    const std::vector<int32_t> one = {next};
    const SequenceTokens e{0, one};
    ASSERT_TRUE(engine->Evaluate({&e, 1}, false, logits).ok());
  }
  auto recorded = engine->StopTrace();
  ASSERT_TRUE(recorded.ok()) << recorded.status();
  ASSERT_EQ(recorded->num_tokens(), 8);
  for (int64_t t = 0; t < 8; ++t) {
    for (int32_t l = 0; l < 4; ++l) {
      const auto got = recorded->Experts(t, l);
      const auto want = forced->Experts(t % 5, l % 2);
      EXPECT_EQ(std::vector<uint16_t>(got.begin(), got.end()),
                std::vector<uint16_t>(want.begin(), want.end()))
          << "token " << t << " layer " << l;
    }
  }
  EXPECT_EQ(engine->stats().cache.accesses > 0, true);

  // The predictor observes the forced experts, not the router's: every token forced to {0, 1}
  // makes a frequency predictor's top-2 exactly {0, 1} once it has seen a token.
  RoutingTrace constant;
  constant.header.model = "constant";
  constant.header.num_layers = 1;
  constant.header.num_experts = 8;
  constant.header.top_k = 2;
  constant.header.moe_layer_ids = {0};
  constant.experts = {0, 1};
  constant.phases = {Phase::kDecode};
  constant.sequences = {TraceSequence{0, 1, "constant"}};
  EngineOptions predicted = options;
  predicted.forced_routing = std::make_shared<const RoutingTrace>(constant);
  predicted.predictor = "frequency";
  predicted.prefill_chunk = 1;
  auto with_predictor = MakeEngine(predicted);
  ASSERT_NE(with_predictor, nullptr);
  const std::vector<int32_t> twelve = Prompt(12, 2);
  const SequenceTokens run{0, twelve};
  const absl::Status evaluated = with_predictor->Evaluate({&run, 1}, false, logits);
  ASSERT_TRUE(evaluated.ok()) << evaluated;
  const PredictionRecall& recall = with_predictor->stats().recall;
  ASSERT_EQ(recall.found.size(), 4u);
  for (size_t l = 1; l < recall.found.size(); ++l) {
    EXPECT_GT(recall.chosen[l], 0u);
    // Every guess right but the first token's (the predictor has not seen a token yet).
    EXPECT_GE(recall.found[l] + 2, recall.chosen[l]) << "layer " << l;
  }

  // Traces that do not fit the model are clear errors.
  so.top_k = 3;
  options.forced_routing = std::make_shared<const RoutingTrace>(*GenerateSyntheticTrace(so));
  auto bad = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("top-k 3"));
  so.top_k = 2;
  so.num_experts = 16;
  options.forced_routing = std::make_shared<const RoutingTrace>(*GenerateSyntheticTrace(so));
  bad = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("16 experts per layer"));
}

TEST(Engine, LearnedPredictorNeedsWeightsForTheModelsHiddenSize) {
  EngineOptions options;
  options.predictor = "learned";
  auto e = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("needs its weights"));

  // Weights for the tiny model's layers and experts but another hidden size (65, not 64).
  const PredictorOptions po = TinyPredictorOptions();
  LearnedPredictor learned(po);
  LearnedPredictorWeights w;
  w.input_size = TinyModel()->config.hidden_size + 1;
  w.hidden_units = 4;
  w.w1.assign(static_cast<size_t>(w.hidden_units * w.input_size), 0.01f);
  w.b1.assign(static_cast<size_t>(w.hidden_units), 0.0f);
  w.w2.assign(static_cast<size_t>(po.space.size() * w.hidden_units), 0.01f);
  w.b2.assign(static_cast<size_t>(po.space.size()), 0.0f);
  ASSERT_TRUE(learned.SetWeights(w).ok());
  const std::string path = ::testing::TempDir() + "/learned_wrong_hidden.safetensors";
  ASSERT_TRUE(learned.Save(path).ok());
  options.predictor_file = path;
  e = Engine::Create(TinyModel(), options);
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("65 values"));
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("model's are 64"));

  // The right size works, and predicts from the token's layer-0 hidden state.
  w.input_size = TinyModel()->config.hidden_size;
  w.w1.assign(static_cast<size_t>(w.hidden_units * w.input_size), 0.01f);
  ASSERT_TRUE(learned.SetWeights(w).ok());
  ASSERT_TRUE(learned.Save(path).ok());
  e = Engine::Create(TinyModel(), options);
  ASSERT_TRUE(e.ok()) << e.status();
}

TEST(Generate, GreedyFollowsTheArgmaxAndSamplingIsReproducible) {
  auto engine = MakeEngine({});
  ASSERT_NE(engine, nullptr);
  GenerateOptions g;
  g.max_tokens = 6;
  auto greedy = Generate(*engine, 0, Prompt(6, 9), g);
  ASSERT_TRUE(greedy.ok());
  // Re-derive the greedy chain step by step.
  ASSERT_TRUE(engine->ResetSequence(0).ok());
  std::vector<float> logits(1000);
  std::vector<int32_t> prompt = Prompt(6, 9);
  SequenceTokens e{0, prompt};
  ASSERT_TRUE(engine->Evaluate({&e, 1}, false, logits).ok());
  for (int32_t expected : greedy->tokens) {
    const int32_t tok = Argmax(logits);
    EXPECT_EQ(tok, expected);
    e = {0, {&tok, 1}};
    ASSERT_TRUE(engine->Evaluate({&e, 1}, false, logits).ok());
  }
  g.sampling = {0.8f, 50, 0.9f, 42};
  ASSERT_TRUE(engine->ResetSequence(0).ok());
  auto s1 = Generate(*engine, 0, Prompt(6, 9), g);
  ASSERT_TRUE(engine->ResetSequence(0).ok());
  auto s2 = Generate(*engine, 0, Prompt(6, 9), g);
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_EQ(s1->tokens, s2->tokens);
  // A stop id ends generation before it is emitted.
  g.sampling = {};
  g.stop_ids = {greedy->tokens[2]};
  const size_t first = static_cast<size_t>(
      std::find(greedy->tokens.begin(), greedy->tokens.end(), greedy->tokens[2]) -
      greedy->tokens.begin());
  ASSERT_TRUE(engine->ResetSequence(0).ok());
  auto stopped = Generate(*engine, 0, Prompt(6, 9), g);
  ASSERT_TRUE(stopped.ok());
  EXPECT_TRUE(stopped->stopped);
  EXPECT_EQ(stopped->tokens.size(), first);
  g.sampling.top_p = 0;
  EXPECT_FALSE(Generate(*engine, 0, Prompt(6, 9), g).ok());
}

}  // namespace
}  // namespace moe
