// Tests of the replay driver: schedule, link model, replay semantics against an independent
// brute-force simulation, and the timing model's arithmetic.
#include <algorithm>
#include <list>
#include <random>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "predictor/predictor.h"
#include "tools/replay/link_model.h"
#include "tools/replay/replay.h"
#include "tools/replay/replay_schedule.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

// A random trace: `seqs` sequences of random lengths, each token choosing k distinct experts.
RoutingTrace RandomTrace(int32_t layers, int32_t experts, int32_t k, int32_t seqs, uint32_t seed,
                         int32_t max_len = 12) {
  std::mt19937 rng(seed);
  RoutingTrace t;
  t.header = {"random", layers, experts, k, 100, {}};
  int64_t offset = 0;
  for (int32_t s = 0; s < seqs; ++s) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % max_len);
    t.sequences.push_back({offset, n, ""});
    for (int64_t i = 0; i < n; ++i) {
      t.phases.push_back(Phase::kDecode);
      for (int32_t l = 0; l < layers; ++l) {
        std::vector<uint16_t> pool(static_cast<size_t>(experts));
        for (int32_t e = 0; e < experts; ++e) pool[e] = static_cast<uint16_t>(e);
        // Skewed choice: low ids are more likely, so caches see reuse.
        for (int32_t j = 0; j < k; ++j) {
          size_t pick = std::min<size_t>(rng() % (pool.size() - j), rng() % (pool.size() - j));
          std::swap(pool[j], pool[j + pick]);
          t.experts.push_back(pool[j]);
        }
      }
    }
    offset += n;
  }
  return t;
}

TEST(ReplaySchedule, BatchOneRunsSequencesInOrder) {
  RoutingTrace t = RandomTrace(2, 4, 1, 3, 1);
  ReplaySchedule s(t, {}, 1);
  ASSERT_EQ(s.num_tokens(), t.num_tokens());
  ASSERT_EQ(static_cast<int64_t>(s.steps().size()), t.num_tokens());
  int64_t expect = 0;
  int starts = 0;
  for (const ReplayStep& step : s.steps()) {
    ASSERT_EQ(step.count, 1);
    EXPECT_EQ(s.Tokens(step)[0].token, expect++);
    starts += step.starts_sequence_alone;
  }
  EXPECT_EQ(starts, 3);
}

TEST(ReplaySchedule, PrefillChunksGroupPromptTokensAsTheEngineRunsThem) {
  RoutingTrace t = RandomTrace(2, 6, 2, 3, 5, 20);
  // Each sequence: its first half is the prompt (prefill), the rest decode.
  for (const TraceSequence& seq : t.sequences) {
    for (int64_t i = 0; i < seq.num_tokens; ++i) {
      t.phases[seq.token_offset + i] =
          i < (seq.num_tokens + 1) / 2 ? Phase::kPrefill : Phase::kDecode;
    }
  }
  ReplaySchedule s(t, {}, 1, 3);
  ASSERT_EQ(s.num_tokens(), t.num_tokens());
  int64_t expect = 0;
  for (const ReplayStep& step : s.steps()) {
    const auto tokens = s.Tokens(step);
    const TraceSequence& seq = t.sequences[tokens[0].sequence];
    const int64_t first = tokens[0].token - seq.token_offset;
    EXPECT_EQ(step.starts_sequence_alone, first == 0);
    ASSERT_LE(step.count, 3);
    for (const ScheduledToken& tok : tokens) {
      EXPECT_EQ(tok.token, expect++);  // order kept
      EXPECT_EQ(tok.sequence, tokens[0].sequence);
    }
    if (t.phases[tokens[0].token] == Phase::kDecode) {
      EXPECT_EQ(step.count, 1);
    } else {
      // Prompt chunks start at multiples of 3 from the prompt's start.
      EXPECT_EQ(first % 3, 0);
      for (const ScheduledToken& tok : tokens) EXPECT_EQ(t.phases[tok.token], Phase::kPrefill);
    }
  }
}

TEST(Replay, MultiTokenStepsCountOneAccessPerDistinctExpert) {
  RoutingTrace t = RandomTrace(3, 8, 2, 4, 9, 16);
  for (auto& p : t.phases) p = Phase::kPrefill;
  ReplaySchedule s(t, {}, 1, 4);
  uint64_t distinct = 0;
  std::set<std::pair<int, int>> used;  // (layer, expert) anywhere in the trace
  for (int64_t tok = 0; tok < t.num_tokens(); ++tok) {
    for (int32_t l = 0; l < 3; ++l) {
      for (uint16_t e : t.Experts(tok, l)) used.insert({l, e});
    }
  }
  for (const ReplayStep& step : s.steps()) {
    for (int32_t l = 0; l < 3; ++l) {
      std::set<int> seen;
      for (const ScheduledToken& tok : s.Tokens(step)) {
        for (uint16_t e : t.Experts(tok.token, l)) seen.insert(e);
      }
      distinct += seen.size();
    }
  }
  for (const char* policy : {"lru", "lfu", "belady"}) {
    ReplayOptions o;
    o.policy = policy;
    o.capacity_per_layer = 8;  // everything fits: only cold misses
    auto r = RunReplay(t, s, o, nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->stats.accesses, distinct);
    EXPECT_EQ(r->stats.misses, used.size());
    o.capacity_per_layer = 2;  // smaller than a step's set: waves, never an error
    r = RunReplay(t, s, o, nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->stats.accesses, distinct);
    EXPECT_EQ(r->stats.hits + r->stats.misses, distinct);
  }
}

TEST(ReplaySchedule, BatchInterleavesAndRefillsSlots) {
  RoutingTrace t;
  t.header = {"m", 1, 4, 1, 1, {}};
  // Sequences of 1, 3 and 2 tokens.
  t.sequences = {{0, 1, ""}, {1, 3, ""}, {4, 2, ""}};
  t.phases.assign(6, Phase::kDecode);
  t.experts.assign(6, 0);
  ReplaySchedule s(t, {}, 2);
  std::vector<std::vector<int64_t>> steps;
  for (const ReplayStep& step : s.steps()) {
    std::vector<int64_t> toks;
    for (const ScheduledToken& tok : s.Tokens(step)) toks.push_back(tok.token);
    steps.push_back(toks);
  }
  // Slot 0: seq0 (token 0) then seq2 (4, 5); slot 1: seq1 (1, 2, 3).
  std::vector<std::vector<int64_t>> want = {{0, 1}, {4, 2}, {5, 3}};
  EXPECT_EQ(steps, want);
}

TEST(ReplaySchedule, SplitIsDeterministicAndPartitions) {
  std::vector<int64_t> a, b, c, d;
  SplitSequences(100, 0.8, &a, &b);
  SplitSequences(100, 0.8, &c, &d);
  EXPECT_EQ(a, c);
  EXPECT_EQ(b, d);
  EXPECT_EQ(a.size(), 80u);
  EXPECT_EQ(b.size(), 20u);
  std::set<int64_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 100u);
}

TEST(LinkModel, DemandOvertakesQueuedPrefetches) {
  ExpertSpace space{1, 8};
  LinkModel link(space, 10.0);
  link.EnqueuePrefetch(1, 0);
  link.EnqueuePrefetch(2, 0);
  link.AdvanceTo(0);  // prefetch 1 starts at 0, ends at 10; prefetch 2 waits
  const double demand = link.Demand(3, 5);
  EXPECT_DOUBLE_EQ(demand, 20.0);  // after the transfer in progress, before prefetch 2
  link.AdvanceTo(100);
  bool in_flight = false;
  EXPECT_DOUBLE_EQ(link.ReadyTime(2, 100, &in_flight), 30.0);
  EXPECT_FALSE(in_flight);
  EXPECT_EQ(link.transfers(), 3u);
}

TEST(LinkModel, EvictedQueuedPrefetchIsCancelledAndNeededOneIsPromoted) {
  ExpertSpace space{1, 8};
  LinkModel link(space, 10.0);
  link.Demand(0, 0);  // busy until 10
  link.EnqueuePrefetch(1, 0);
  link.EnqueuePrefetch(2, 0);
  link.OnEvict(1);
  bool in_flight = false;
  const double ready = link.ReadyTime(2, 5, &in_flight);  // needed before it started
  EXPECT_TRUE(in_flight);
  EXPECT_DOUBLE_EQ(ready, 20.0);
  link.AdvanceTo(1000);
  EXPECT_EQ(link.transfers(), 2u);
  EXPECT_EQ(link.cancelled(), 1u);
  EXPECT_DOUBLE_EQ(link.busy_us(), 20.0);
}

TEST(LinkModel, ACancelledPrefetchQueuedAgainWaitsBehindThoseQueuedBeforeIt) {
  // The old queue revived a cancelled entry in its original place; a new request must go to the
  // back, after prefetches issued in between, with its new issue time.
  ExpertSpace space{1, 8};
  LinkModel link(space, 10.0);
  link.Demand(0, 0);  // busy until 10
  link.EnqueuePrefetch(1, 0);
  link.EnqueuePrefetch(2, 1);
  link.OnEvict(1);             // cancelled while queued
  link.EnqueuePrefetch(1, 2);  // asked for again: behind 2
  link.AdvanceTo(1000);
  bool in_flight = false;
  EXPECT_DOUBLE_EQ(link.ReadyTime(2, 1000, &in_flight), 20.0);
  EXPECT_DOUBLE_EQ(link.ReadyTime(1, 1000, &in_flight), 30.0);
  EXPECT_EQ(link.transfers(), 3u);
  EXPECT_EQ(link.cancelled(), 1u);
}

// Independent per-layer LRU over k-sets: the token's set is touched together; a miss evicts the
// least recently used expert not in the current set.
uint64_t BruteForceLruHits(const RoutingTrace& t, int64_t capacity) {
  std::vector<std::list<int>> lru(static_cast<size_t>(t.header.num_layers));
  uint64_t hits = 0;
  for (int64_t tok = 0; tok < t.num_tokens(); ++tok) {
    for (int32_t l = 0; l < t.header.num_layers; ++l) {
      auto set = t.Experts(tok, l);
      auto& list = lru[l];
      // Hits are touched first (in set order), then misses loaded (in set order); a miss evicts
      // the least recently used expert outside the token's set.
      for (uint16_t e : set) {
        auto it = std::find(list.begin(), list.end(), e);
        if (it == list.end()) continue;
        ++hits;
        list.erase(it);
        list.push_front(e);
      }
      for (uint16_t e : set) {
        if (std::find(list.begin(), list.end(), e) != list.end()) continue;
        if (static_cast<int64_t>(list.size()) == capacity) {
          for (auto v = list.rbegin(); v != list.rend(); ++v) {
            if (std::find(set.begin(), set.end(), *v) == set.end()) {
              list.erase(std::next(v).base());
              break;
            }
          }
        }
        list.push_front(e);
      }
    }
  }
  return hits;
}

TEST(Replay, LruMatchesBruteForceOnRandomTraces) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    RoutingTrace t = RandomTrace(3, 8, 2, 4, seed);
    for (int64_t cap : {2, 3, 5}) {
      ReplayOptions o;
      o.capacity_per_layer = cap;
      ReplaySchedule s(t, {}, 1);
      auto r = RunReplay(t, s, o, nullptr);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->stats.hits, BruteForceLruHits(t, cap)) << "seed " << seed << " cap " << cap;
      EXPECT_EQ(r->stats.accesses, static_cast<uint64_t>(t.num_tokens()) * 3 * 2);
    }
  }
}

// Counting-only LRU and Belady replays take the fast counters (memory/replay_counters.h); a timed
// replay takes the general loop through ExpertCache. Both must count the same.
TEST(Replay, CountOnlyFastPathCountsAsTheGeneralLoop) {
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    RoutingTrace t = RandomTrace(3, 64, 6, 20, seed, 40);
    ReplaySchedule s(t, {}, 1);
    for (const char* policy : {"lru", "belady"}) {
      for (bool reset : {false, true}) {
        ReplayOptions o;
        o.capacity_per_layer = 10;
        o.policy = policy;
        o.reset_per_sequence = reset;
        auto counted = RunReplay(t, s, o, nullptr);
        o.link_gbps = 25;
        o.layer_compute_us = 100;
        auto timed = RunReplay(t, s, o, nullptr);
        ASSERT_TRUE(counted.ok() && timed.ok());
        SCOPED_TRACE(std::string(policy) + (reset ? " reset" : "") + " seed " +
                     std::to_string(seed));
        EXPECT_EQ(counted->stats.hits, timed->stats.hits);
        EXPECT_EQ(counted->stats.misses, timed->stats.misses);
        EXPECT_EQ(counted->stats.evictions, timed->stats.evictions);
        EXPECT_EQ(counted->stats.bytes_loaded, timed->stats.bytes_loaded);
        EXPECT_EQ(counted->token_layers, timed->token_layers);
        EXPECT_EQ(counted->steps, timed->steps);
        EXPECT_GT(counted->stats.evictions, 0u);
      }
    }
  }
}

TEST(Replay, BeladyNeverLoadsMoreThanOnlinePolicies) {
  for (uint32_t seed = 1; seed <= 10; ++seed) {
    RoutingTrace t = RandomTrace(4, 16, 3, 6, seed, 30);
    for (CacheScope scope : {CacheScope::kLayer, CacheScope::kGlobal}) {
      ReplayOptions o;
      o.capacity_per_layer = 5;
      o.scope = scope;
      for (int batch : {1, 3}) {
        ReplaySchedule s(t, {}, batch);
        o.policy = "belady";
        auto b = RunReplay(t, s, o, nullptr);
        ASSERT_TRUE(b.ok()) << b.status();
        for (const char* p : {"lru", "lfu", "arc", "lrfu"}) {
          o.policy = p;
          auto r = RunReplay(t, s, o, nullptr);
          ASSERT_TRUE(r.ok()) << r.status();
          EXPECT_LE(b->stats.misses, r->stats.misses) << p << " seed " << seed;
        }
      }
    }
  }
}

TEST(Replay, ResetPerSequenceMakesEverySequenceStartCold) {
  // Every token of every sequence uses expert 0 at its single layer.
  RoutingTrace t;
  t.header = {"m", 1, 4, 1, 1, {}};
  t.sequences = {{0, 3, ""}, {3, 2, ""}};
  t.phases.assign(5, Phase::kDecode);
  t.experts.assign(5, 0);
  ReplaySchedule s(t, {}, 1);
  ReplayOptions o;
  o.capacity_per_layer = 1;
  auto persist = RunReplay(t, s, o, nullptr);
  o.reset_per_sequence = true;
  auto reset = RunReplay(t, s, o, nullptr);
  ASSERT_TRUE(persist.ok() && reset.ok());
  EXPECT_EQ(persist->stats.misses, 1u);
  EXPECT_EQ(reset->stats.misses, 2u);
  o.policy = "belady";
  auto belady = RunReplay(t, s, o, nullptr);
  ASSERT_TRUE(belady.ok());
  EXPECT_EQ(belady->stats.misses, 2u);
}

TEST(Replay, DemandOnlyTimingIsComputePlusSerialLoads) {
  RoutingTrace t = RandomTrace(4, 8, 2, 5, 3);
  ReplaySchedule s(t, {}, 1);
  ReplayOptions o;
  o.capacity_per_layer = 3;
  o.expert_bytes = 25000;  // 1 us at 25 GB/s
  o.link_gbps = 25;
  o.layer_compute_us = 2;
  auto r = RunReplay(t, s, o, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->timing.enabled);
  EXPECT_DOUBLE_EQ(r->timing.transfer_us, 1.0);
  EXPECT_NEAR(r->timing.stall_us, static_cast<double>(r->stats.misses) * 1.0, 1e-6);
  EXPECT_NEAR(r->timing.total_us, r->timing.compute_us + r->timing.stall_us, 1e-6);
  EXPECT_DOUBLE_EQ(r->timing.compute_us, static_cast<double>(t.num_tokens()) * 4 * 2);
}

TEST(Replay, PrefetchingWithAPerfectPredictorHidesTheLink) {
  // Each layer's expert is a function of the previous layer's, learned by "transition".
  RoutingTrace t;
  const int32_t L = 6, E = 8;
  t.header = {"chain", L, E, 1, 25000, {}};
  std::mt19937 rng(5);
  int64_t offset = 0;
  for (int s = 0; s < 40; ++s) {
    const int64_t n = 20;
    t.sequences.push_back({offset, n, ""});
    for (int64_t i = 0; i < n; ++i) {
      t.phases.push_back(Phase::kDecode);
      uint16_t e = static_cast<uint16_t>(rng() % E);
      for (int32_t l = 0; l < L; ++l) {
        t.experts.push_back(e);
        e = static_cast<uint16_t>((e * 3 + 1) % E);
      }
    }
    offset += n;
  }
  PredictorOptions po{t.space(), 1};
  auto pred = MakePredictor("transition", po);
  ASSERT_TRUE(pred.ok()) << pred.status();
  ASSERT_TRUE((*pred)->Learn(t).ok());
  ReplaySchedule s(t, {}, 1);
  ReplayOptions o;
  o.capacity_per_layer = 2;
  o.link_gbps = 25;
  o.layer_compute_us = 2;  // longer than one transfer (1 us)
  auto demand = RunReplay(t, s, o, nullptr);
  o.prefetch_depth = 1;
  o.prefetch_budget = 1;
  auto prefetch = RunReplay(t, s, o, pred->get());
  ASSERT_TRUE(demand.ok() && prefetch.ok()) << prefetch.status();
  EXPECT_GT(prefetch->stats.prefetch_useful, 0u);
  EXPECT_GT(prefetch->stats.hit_rate(), demand->stats.hit_rate());
  EXPECT_LT(prefetch->timing.total_us, demand->timing.total_us);
}

TEST(Replay, RejectsOptionsThatDoNotCombine) {
  RoutingTrace t = RandomTrace(2, 8, 3, 3, 1);
  ReplaySchedule s1(t, {}, 1), s2(t, {}, 2);
  ReplayOptions o;
  o.capacity_per_layer = 2;  // < top_k
  auto r = RunReplay(t, s1, o, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("top_k = 3"));

  o.capacity_per_layer = 4;
  o.prefetch_depth = 1;
  r = RunReplay(t, s1, o, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("needs a predictor"));

  PredictorOptions po{t.space(), 3};
  auto pred = MakePredictor("frequency", po);
  ASSERT_TRUE(pred.ok());
  o.policy = "belady";
  r = RunReplay(t, s1, o, pred->get());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("prefetching"));

  o.policy = "lru";
  o.prefetch_depth = 0;
  o.reset_per_sequence = true;
  r = RunReplay(t, s2, o, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("batch size 1"));

  o.reset_per_sequence = false;
  o.policy = "nonsense";
  r = RunReplay(t, s1, o, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("nonsense"));
}

}  // namespace
}  // namespace moe
