// Helpers shared by the memory/ tests: building caches, random k-set traces, next-use oracles,
// replaying a trace the way the replay tool does (acquire a step's k experts, then release them).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "memory/expert_cache.h"

namespace moe::testing {

// One token at one layer: the experts it needs together.
using Step = std::vector<ExpertKey>;

inline std::unique_ptr<ExpertCache> MakeCache(const std::string& policy, CacheScope scope,
                                              ExpertSpace space, int64_t capacity_per_partition,
                                              const ExpertScores* scores = nullptr,
                                              uint64_t expert_bytes = 1000) {
  CacheOptions options;
  options.space = space;
  options.expert_bytes = expert_bytes;
  const int64_t partitions = scope == CacheScope::kLayer ? space.num_layers : 1;
  options.budget_bytes = expert_bytes * static_cast<uint64_t>(capacity_per_partition * partitions);
  options.scope = scope;
  options.policy = policy;
  options.scores = scores;
  auto cache = ExpertCache::Create(options);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return cache.ok() ? std::move(cache).value() : nullptr;
}

// Random steps: each picks a layer (round robin when `round_robin`, else at random) and k
// distinct experts of it, skewed towards low expert ids (so caches see reuse).
inline std::vector<Step> RandomSteps(std::mt19937_64& rng, ExpertSpace space, int num_steps, int k,
                                     bool round_robin = true) {
  std::vector<Step> steps;
  std::vector<double> weights(static_cast<size_t>(space.num_experts));
  for (size_t e = 0; e < weights.size(); ++e) weights[e] = 1.0 / double(e + 1);
  std::discrete_distribution<int> pick(weights.begin(), weights.end());
  std::uniform_int_distribution<int> layer_dist(0, space.num_layers - 1);
  for (int s = 0; s < num_steps; ++s) {
    const int layer = round_robin ? s % space.num_layers : layer_dist(rng);
    Step step;
    while (static_cast<int>(step.size()) < k) {
      const ExpertKey key = space.Key(layer, pick(rng));
      if (std::find(step.begin(), step.end(), key) == step.end()) step.push_back(key);
    }
    steps.push_back(step);
  }
  return steps;
}

// next_use for every access of the flattened sequence: the index of the next access to the same
// key, or kNever.
inline std::vector<uint64_t> NextUses(const std::vector<ExpertKey>& flat) {
  std::vector<uint64_t> next(flat.size(), AccessHint::kNever);
  std::vector<uint64_t> last;
  for (size_t i = flat.size(); i-- > 0;) {
    if (flat[i] >= last.size()) last.resize(flat[i] + 1, AccessHint::kNever);
    next[i] = last[flat[i]];
    last[flat[i]] = i;
  }
  return next;
}

inline std::vector<ExpertKey> Flatten(const std::vector<Step>& steps) {
  std::vector<ExpertKey> flat;
  for (const Step& s : steps) flat.insert(flat.end(), s.begin(), s.end());
  return flat;
}

// Replays `steps`: Acquire each key of a step in order (with next-use hints when `future`), then
// Release them. Returns the outcome of every access, in order.
inline std::vector<ExpertCache::Outcome> Replay(ExpertCache& cache, const std::vector<Step>& steps,
                                                bool future) {
  const std::vector<ExpertKey> flat = Flatten(steps);
  const std::vector<uint64_t> next = NextUses(flat);
  std::vector<ExpertCache::Outcome> outcomes;
  size_t i = 0;
  for (const Step& step : steps) {
    std::vector<ExpertKey> pinned;
    for (ExpertKey key : step) {
      AccessHint hint;
      if (future) hint.next_use = next[i];
      ++i;
      const ExpertCache::Access a = cache.Acquire(key, hint);
      outcomes.push_back(a.outcome);
      if (a.outcome != ExpertCache::Outcome::kNoRoom) pinned.push_back(key);
    }
    for (ExpertKey key : pinned) cache.Release(key);
  }
  return outcomes;
}

inline int64_t CountMisses(const std::vector<ExpertCache::Outcome>& outcomes) {
  return std::count(outcomes.begin(), outcomes.end(), ExpertCache::Outcome::kLoaded);
}

}  // namespace moe::testing
