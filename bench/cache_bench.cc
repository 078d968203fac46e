// Throughput of the expert cache as the replay tool drives it: per token and MoE layer, Acquire
// the k experts the router chose, then Release them. One "item" is one token-layer decision
// (k Acquire + k Release); items_per_second is decisions per second on one core.
//
// Streams (26 layers x 64 experts, top-6: DeepSeek-V2-Lite's shape), replayed cyclically:
//   synthetic  generated in-process: experts drawn from a Zipf(1.0) distribution with a
//              different popularity order per layer, k distinct experts per token-layer;
//   deepseek   the first 20000 tokens of the real DeepSeek-V2-Lite trace in
//              ../shared/data/routing-traces (skipped when that folder is absent).
// Cases: every policy x {layer scope with 16 entries per layer, global scope with the same
// budget (416 entries)}. "belady" gets exact next-use positions (the stream is replayed
// cyclically, so the future is known); "predictive" gets each stream's true per-layer popularity
// as its scores (a perfect frequency predictor). Counter hit_rate: the cache's after the run.
// Two more cases per stream, layer scope, "lru", with the resident-first rule of moe-replay:
//   <stream>/lru/layer/access_token  ExpertCache::AccessToken, the replay tool's one-call path;
//   <stream>/baseline_list_lru/layer a hand-written list LRU over the same data (no pins beyond
//                                     the token's set, no checks, no statistics): what one LRU
//                                     decision costs on this machine, for comparison;
//   <stream>/lru_counter/layer        LruReplayCounter, moe-replay's count-only fast path;
//   <stream>/belady_counter/layer     BeladyReplayCounter (next uses from the cyclic stream).
//
//   build/bin/moe_cache_bench [--benchmark_filter=lru]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "memory/expert_cache.h"
#include "memory/expert_scores.h"
#include "memory/replay_counters.h"

namespace moe {

constexpr int kLayers = 26;
constexpr int kExperts = 64;
constexpr int kTopK = 6;
constexpr int kTokens = 8192;
constexpr int kEntriesPerLayer = 16;
constexpr uint64_t kExpertBytes = 1 << 20;

struct Stream {
  std::vector<uint16_t> keys;        // [token][layer][k]
  std::vector<uint16_t> experts;     // keys as expert ids within their layer
  std::vector<uint32_t> next_delta;  // accesses until the same key again (cyclic)
  std::vector<float> popularity;     // [layer][expert]: probability of being in a token's set
};

// Fills next_delta and popularity from keys.
void Finish(Stream& s) {
  const ExpertSpace space{kLayers, kExperts};
  const size_t n = s.keys.size();
  const size_t tokens = n / (kLayers * kTopK);
  s.popularity.assign(static_cast<size_t>(space.size()), 0.0f);
  for (uint16_t key : s.keys) s.popularity[key] += 1.0f / static_cast<float>(tokens);
  s.experts.resize(n);
  for (size_t i = 0; i < n; ++i) s.experts[i] = static_cast<uint16_t>(s.keys[i] % kExperts);
  s.next_delta.assign(n, 0);
  std::vector<int64_t> last(static_cast<size_t>(space.size()), -1);
  // Two backward passes give every access its cyclic next use.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = n; i-- > 0;) {
      const int64_t pos = static_cast<int64_t>(i) + (pass == 0 ? int64_t(n) : 0);
      if (last[s.keys[i]] >= 0) s.next_delta[i] = static_cast<uint32_t>(last[s.keys[i]] - pos);
      last[s.keys[i]] = pos;
    }
  }
}

const Stream& SyntheticStream() {
  static const Stream stream = [] {
    Stream s;
    std::mt19937_64 rng(42);
    std::vector<double> zipf(kExperts);
    for (int e = 0; e < kExperts; ++e) zipf[e] = 1.0 / (e + 1);
    std::discrete_distribution<int> draw(zipf.begin(), zipf.end());
    std::vector<std::vector<int>> perm(kLayers, std::vector<int>(kExperts));
    for (auto& p : perm) {
      std::iota(p.begin(), p.end(), 0);
      std::shuffle(p.begin(), p.end(), rng);
    }
    const ExpertSpace space{kLayers, kExperts};
    s.keys.reserve(size_t{kTokens} * kLayers * kTopK);
    for (int t = 0; t < kTokens; ++t) {
      for (int l = 0; l < kLayers; ++l) {
        int chosen[kTopK];
        for (int j = 0; j < kTopK;) {
          const int e = perm[l][draw(rng)];
          if (std::find(chosen, chosen + j, e) != chosen + j) continue;
          chosen[j++] = e;
          s.keys.push_back(static_cast<uint16_t>(space.Key(l, e)));
        }
      }
    }
    Finish(s);
    return s;
  }();
  return stream;
}

// experts_u8.bin is uint8 [tokens, 26, 6] in C order.
constexpr char kDeepSeekTrace[] =
    MOE_SOURCE_DIR "/../shared/data/routing-traces/deepseek-v2-lite-puffin/experts_u8.bin";
constexpr size_t kDeepSeekTokens = 20000;

const Stream& DeepSeekStream() {
  static const Stream stream = [] {
    Stream s;
    std::ifstream in(kDeepSeekTrace, std::ios::binary);
    std::vector<uint8_t> raw(kDeepSeekTokens * kLayers * kTopK);
    if (!in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()))) {
      return s;  // absent: the cases skip
    }
    const ExpertSpace space{kLayers, kExperts};
    s.keys.resize(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
      const int layer = static_cast<int>((i / kTopK) % kLayers);
      s.keys[i] = static_cast<uint16_t>(space.Key(layer, raw[i]));
    }
    Finish(s);
    return s;
  }();
  return stream;
}

void BM_CacheDecisions(benchmark::State& state, const Stream* (*get)(), std::string policy,
                       CacheScope scope) {
  const Stream* stream = get();
  if (stream->keys.empty()) {
    static const std::string message = "trace not found: " + std::string(kDeepSeekTrace);
    state.SkipWithError(message.c_str());
    return;
  }
  const Stream& s = *stream;
  ExpertScores scores(ExpertSpace{kLayers, kExperts});
  for (size_t k = 0; k < s.popularity.size(); ++k) {
    scores.Set(static_cast<ExpertKey>(k), s.popularity[k]);
  }
  CacheOptions options;
  options.space = ExpertSpace{kLayers, kExperts};
  options.expert_bytes = kExpertBytes;
  options.budget_bytes = kExpertBytes * kEntriesPerLayer * kLayers;
  options.scope = scope;
  options.policy = policy;
  options.scores = &scores;
  auto cache_or = ExpertCache::Create(options);
  if (!cache_or.ok()) {
    static std::string message;
    message = std::string(cache_or.status().message());
    state.SkipWithError(message.c_str());
    return;
  }
  ExpertCache& cache = **cache_or;
  const bool future = PolicyNeedsFuture(policy);
  const size_t n = s.keys.size();
  const uint16_t* keys = s.keys.data();
  const uint32_t* delta = s.next_delta.data();
  size_t i = 0;
  uint64_t base = 0;
  uint64_t no_room = 0;
  for (auto _ : state) {
    // One iteration = one token through every layer.
    for (int l = 0; l < kLayers; ++l) {
      for (int j = 0; j < kTopK; ++j) {
        AccessHint hint;
        if (future) hint.next_use = base + i + j + delta[i + j];
        no_room += cache.Acquire(keys[i + j], hint).outcome == ExpertCache::Outcome::kNoRoom;
      }
      for (int j = 0; j < kTopK; ++j) cache.Release(keys[i + j]);
      i += kTopK;
    }
    if (i == n) {
      i = 0;
      base += n;
    }
  }
  if (no_room != 0) state.SkipWithError("kNoRoom");
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kLayers);
  state.counters["hit_rate"] = cache.stats().hit_rate();
}

void BM_AccessToken(benchmark::State& state, const Stream* (*get)()) {
  const Stream& s = *get();
  if (s.keys.empty()) {
    state.SkipWithError("trace not found");
    return;
  }
  CacheOptions options;
  options.space = ExpertSpace{kLayers, kExperts};
  options.expert_bytes = kExpertBytes;
  options.budget_bytes = kExpertBytes * kEntriesPerLayer * kLayers;
  auto cache = ExpertCache::Create(options);
  if (!cache.ok()) {
    state.SkipWithError("cache");
    return;
  }
  const size_t row = size_t{kLayers} * kTopK;
  size_t i = 0;
  int64_t no_room = 0;
  for (auto _ : state) {
    no_room += (*cache)->AccessToken({s.experts.data() + i, row}, kTopK) >= 0;
    i += row;
    if (i == s.experts.size()) i = 0;
  }
  if (no_room != 0) state.SkipWithError("no room");
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kLayers);
  state.counters["hit_rate"] = (*cache)->stats().hit_rate();
}

// The reference: an intrusive list per layer over dense arrays, nothing else.
void BM_BaselineListLru(benchmark::State& state, const Stream* (*get)()) {
  const Stream& s = *get();
  if (s.keys.empty()) {
    state.SkipWithError("trace not found");
    return;
  }
  constexpr uint32_t kKeys = kLayers * kExperts;
  struct Link {
    uint32_t prev, next;
  };
  std::vector<Link> links(kKeys + kLayers);
  for (uint32_t l = 0; l < kLayers; ++l) links[kKeys + l] = {kKeys + l, kKeys + l};
  std::vector<int32_t> slot(kKeys, -1);
  std::vector<uint8_t> pinned(kKeys, 0);
  std::vector<int32_t> fill(kLayers, 0);
  uint64_t hits = 0, misses = 0;
  auto unlink = [&](uint32_t n) {
    links[links[n].prev].next = links[n].next;
    links[links[n].next].prev = links[n].prev;
  };
  auto push_front = [&](uint32_t list, uint32_t n) {
    const uint32_t head = kKeys + list;
    links[n] = {head, links[head].next};
    links[links[head].next].prev = n;
    links[head].next = n;
  };
  size_t i = 0;
  for (auto _ : state) {
    for (uint32_t l = 0; l < kLayers; ++l, i += kTopK) {
      const uint16_t* set = s.keys.data() + i;
      uint32_t missing = 0;
      for (int j = 0; j < kTopK; ++j) {
        if (slot[set[j]] >= 0) {
          ++hits;
          pinned[set[j]] = 1;
          unlink(set[j]);
          push_front(l, set[j]);
        } else {
          missing |= 1u << j;
        }
      }
      for (; missing != 0; missing &= missing - 1) {
        const uint16_t key = set[__builtin_ctz(missing)];
        int32_t free_slot;
        if (fill[l] < kEntriesPerLayer) {
          free_slot = fill[l]++;
        } else {
          uint32_t victim = links[kKeys + l].prev;
          while (pinned[victim]) victim = links[victim].prev;
          unlink(victim);
          free_slot = slot[victim];
          slot[victim] = -1;
        }
        slot[key] = free_slot;
        pinned[key] = 1;
        push_front(l, key);
        ++misses;
      }
      for (int j = 0; j < kTopK; ++j) pinned[set[j]] = 0;
    }
    if (i == s.keys.size()) i = 0;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kLayers);
  state.counters["hit_rate"] = double(hits) / double(hits + misses);
}

// moe-replay's count-only counters (memory/replay_counters.h), one token per iteration.
void BM_ReplayCounter(benchmark::State& state, const Stream* (*get)(), bool belady) {
  const Stream& s = *get();
  if (s.keys.empty()) {
    state.SkipWithError("trace not found");
    return;
  }
  const ExpertSpace space{kLayers, kExperts};
  LruReplayCounter lru(space, kEntriesPerLayer, kTopK);
  BeladyReplayCounter opt(space, kEntriesPerLayer, kTopK);
  const size_t row = size_t{kLayers} * kTopK;
  std::vector<uint32_t> next_use(row);
  uint32_t position = 1;  // of the row's first access; positions must be > 0
  size_t i = 0;
  for (auto _ : state) {
    const std::span<const uint16_t> routing(s.experts.data() + i, row);
    if (belady) {
      for (size_t j = 0; j < row; ++j) next_use[j] = position + uint32_t(j) + s.next_delta[i + j];
      opt.AccessToken(routing, next_use);
      position += uint32_t(row);
    } else {
      lru.AccessToken(routing);
    }
    i += row;
    if (i == s.experts.size()) i = 0;
  }
  const ReplayCounts& c = belady ? opt.counts() : lru.counts();
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * kLayers);
  state.counters["hit_rate"] = double(c.hits) / double(c.hits + c.misses);
}

}  // namespace moe

int main(int argc, char** argv) {
  struct Source {
    const char* name;
    const moe::Stream* (*get)();
  };
  const Source sources[] = {{"synthetic", [] { return &moe::SyntheticStream(); }},
                            {"deepseek", [] { return &moe::DeepSeekStream(); }}};
  for (const Source& source : sources) {
    for (moe::CacheScope scope : {moe::CacheScope::kLayer, moe::CacheScope::kGlobal}) {
      for (std::string_view policy : moe::EvictionPolicyNames()) {
        const std::string name = std::string(source.name) + "/" + std::string(policy) + "/" +
                                 std::string(moe::CacheScopeName(scope));
        benchmark::RegisterBenchmark(name.c_str(), moe::BM_CacheDecisions, source.get,
                                     std::string(policy), scope);
      }
    }
    benchmark::RegisterBenchmark((std::string(source.name) + "/lru/layer/access_token").c_str(),
                                 moe::BM_AccessToken, source.get);
    benchmark::RegisterBenchmark((std::string(source.name) + "/baseline_list_lru/layer").c_str(),
                                 moe::BM_BaselineListLru, source.get);
    benchmark::RegisterBenchmark((std::string(source.name) + "/lru_counter/layer").c_str(),
                                 moe::BM_ReplayCounter, source.get, false);
    benchmark::RegisterBenchmark((std::string(source.name) + "/belady_counter/layer").c_str(),
                                 moe::BM_ReplayCounter, source.get, true);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
