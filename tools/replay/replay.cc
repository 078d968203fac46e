#include "tools/replay/replay.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>

#include "memory/expert_set.h"
#include "memory/replay_counters.h"
#include "predictor/prefetch_planner.h"
#include "runtime/status.h"
#include "tools/replay/link_model.h"

namespace moe {

absl::StatusOr<std::vector<uint32_t>> ComputeNextUse(const RoutingTrace& trace,
                                                     const ReplaySchedule& schedule,
                                                     bool reset_per_sequence) {
  const int32_t L = trace.header.num_layers;
  const int32_t K = trace.header.top_k;
  const uint64_t total = static_cast<uint64_t>(schedule.num_tokens()) * L * K;
  if (total >= std::numeric_limits<uint32_t>::max()) {
    return InvalidArgument("trace has {} expert accesses; belady replay supports < 2^32", total);
  }
  const ExpertSpace space = trace.space();
  std::vector<uint32_t> next_use(total);
  std::vector<uint32_t> last_seen(static_cast<size_t>(space.size()), kNoNextUse);
  uint64_t pos = total;
  const auto steps = schedule.steps();
  for (auto step = steps.rbegin(); step != steps.rend(); ++step) {
    const auto tokens = schedule.Tokens(*step);
    for (int32_t l = L - 1; l >= 0; --l) {
      const ExpertKey base = space.Key(l, 0);
      for (auto tok = tokens.rbegin(); tok != tokens.rend(); ++tok) {
        const auto experts = trace.Experts(tok->token, l);
        for (int32_t j = K - 1; j >= 0; --j) {
          const ExpertKey key = base + experts[j];
          next_use[--pos] = last_seen[key];
          last_seen[key] = static_cast<uint32_t>(pos);
        }
      }
    }
    if (reset_per_sequence && step->starts_sequence_alone) {
      std::fill(last_seen.begin(), last_seen.end(), kNoNextUse);
    }
  }
  return next_use;
}

namespace {

// The count-only replay of per-layer LRU and Belady with one token per step, through the exact
// counters of memory/replay_counters.h (about 2x as fast as the cache; the counts are the same,
// tested there and in tests/tools/replay_test.cc).
template <typename Counter>
ReplayResult ReplayByCounter(const RoutingTrace& trace, const ReplaySchedule& schedule,
                             bool reset_per_sequence, const std::vector<uint32_t>& next_use,
                             Counter& counter) {
  ReplayResult result;
  const size_t row = static_cast<size_t>(trace.header.num_layers) * size_t(trace.header.top_k);
  size_t pos = 0;
  bool first = true;
  for (const ReplayStep& step : schedule.steps()) {
    if (reset_per_sequence && step.starts_sequence_alone && !first) counter.Clear();
    first = false;
    const int64_t token = schedule.Tokens(step)[0].token;
    const std::span<const uint16_t> routing(trace.Experts(token, 0).data(), row);
    if constexpr (std::is_same_v<Counter, BeladyReplayCounter>) {
      counter.AccessToken(routing, {next_use.data() + pos, row});
    } else {
      counter.AccessToken(routing);
    }
    pos += row;
  }
  const ReplayCounts& counts = counter.counts();
  result.stats.hits = counts.hits;
  result.stats.misses = counts.misses;
  result.stats.accesses = counts.hits + counts.misses;
  result.stats.evictions = counts.evictions;
  result.tokens = schedule.num_tokens();
  result.steps = schedule.num_tokens();
  result.token_layers = schedule.num_tokens() * trace.header.num_layers;
  return result;
}

}  // namespace

absl::StatusOr<CacheOptions> MakeReplayCacheOptions(const RoutingTrace& trace,
                                                    const ReplayOptions& options) {
  CacheOptions cache;
  cache.space = trace.space();
  cache.scope = options.scope;
  cache.policy = options.policy;
  cache.expert_bytes = options.expert_bytes ? options.expert_bytes : trace.header.expert_bytes;
  if (cache.expert_bytes == 0) {
    if (options.capacity_per_layer == 0 && options.budget_bytes > 0) {
      return InvalidArgument(
          "a byte budget needs the size of one expert, and trace '{}' does not record it: give "
          "the expert size (--expert-bytes) or a capacity in experts",
          trace.header.model);
    }
    cache.expert_bytes = 1;  // counting experts only
  }
  if (options.capacity_per_layer > 0) {
    cache.budget_bytes = static_cast<uint64_t>(options.capacity_per_layer) *
                         static_cast<uint64_t>(trace.header.num_layers) * cache.expert_bytes;
  } else if (options.budget_bytes > 0) {
    cache.budget_bytes = options.budget_bytes;
  } else {
    return InvalidArgument("no cache size: give a capacity (experts per layer) or a byte budget");
  }
  return cache;
}

absl::StatusOr<ReplayResult> RunReplay(const RoutingTrace& trace, const ReplaySchedule& schedule,
                                       const ReplayOptions& options, Predictor* predictor) {
  const auto wall_start = std::chrono::steady_clock::now();
  const int32_t L = trace.header.num_layers;
  const int32_t K = trace.header.top_k;
  const ExpertSpace space = trace.space();
  const bool use_future = PolicyNeedsFuture(options.policy);
  if (options.prefetch_depth < 0) {
    return InvalidArgument("prefetch depth {} is negative", options.prefetch_depth);
  }
  if (options.prefetch_depth > 0 && predictor == nullptr) {
    return InvalidArgument("prefetch depth {} needs a predictor", options.prefetch_depth);
  }
  if (use_future && options.prefetch_depth > 0) {
    return InvalidArgument(
        "policy {} is the offline demand-paging optimum and cannot be combined with prefetching",
        options.policy);
  }
  if (options.reset_per_sequence && schedule.interleaved()) {
    return InvalidArgument("reset per sequence needs batch size 1 (sequences interleave)");
  }
  if (K > 64) return InvalidArgument("top_k {} is larger than the 64 replay supports", K);
  const int32_t prefetch_budget = options.prefetch_budget > 0 ? options.prefetch_budget : K;
  if (prefetch_budget > space.num_experts) {
    return InvalidArgument("prefetch budget {} exceeds the {} experts per layer", prefetch_budget,
                           space.num_experts);
  }

  MOE_ASSIGN_OR_RETURN(CacheOptions cache_options, MakeReplayCacheOptions(trace, options));
  ExpertScores scores(space);
  cache_options.scores = &scores;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExpertCache> cache, ExpertCache::Create(cache_options));
  if (cache->capacity_per_partition() < K) {
    return InvalidArgument(
        "cache holds {} experts per {} but a token needs top_k = {} experts at once: raise the "
        "capacity or budget",
        cache->capacity_per_partition(), options.scope == CacheScope::kLayer ? "layer" : "cache",
        K);
  }

  std::vector<uint32_t> next_use;
  if (use_future) {
    MOE_ASSIGN_OR_RETURN(next_use, ComputeNextUse(trace, schedule, options.reset_per_sequence));
  }

  ReplayResult result;
  const bool timed = options.link_gbps > 0;
  const int64_t capacity = cache->capacity_per_partition();
  const bool counts_only = !timed && predictor == nullptr && options.scope == CacheScope::kLayer &&
                           schedule.steps().size() == static_cast<size_t>(schedule.num_tokens());
  bool counted = false;
  if (counts_only && options.policy == "lru" && LruReplayCounter::Supports(space, capacity, K)) {
    LruReplayCounter counter(space, static_cast<int32_t>(capacity), K);
    result = ReplayByCounter(trace, schedule, options.reset_per_sequence, next_use, counter);
    counted = true;
  } else if (counts_only && options.policy == "belady" &&
             BeladyReplayCounter::Supports(space, capacity, K)) {
    BeladyReplayCounter counter(space, static_cast<int32_t>(capacity), K);
    result = ReplayByCounter(trace, schedule, options.reset_per_sequence, next_use, counter);
    counted = true;
  }
  result.expert_bytes = cache_options.expert_bytes;
  result.capacity_per_partition = capacity;
  result.capacity_total = cache->capacity_total();
  if (counted) {
    result.stats.bytes_loaded = result.stats.misses * result.expert_bytes;
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
    return result;
  }

  std::optional<LinkModel> link;
  if (timed) {
    const double transfer_us =
        static_cast<double>(cache_options.expert_bytes) / (options.link_gbps * 1e3);
    link.emplace(space, transfer_us);
  }
  auto attach_listener = [&](ExpertCache& c) {
    if (timed) c.SetEvictionListener([&](ExpertKey key, int32_t) { link->OnEvict(key); });
  };
  attach_listener(*cache);

  // Adds a cache's statistics to `accumulated` (stats of caches discarded by
  // reset_per_sequence plus the last one), counting prefetched experts still unused as wasted.
  CacheStats accumulated;
  auto harvest = [&](const ExpertCache& c) {
    const CacheStats& s = c.stats();
    const auto unused = static_cast<uint64_t>(c.unused_prefetched_count());
    accumulated.accesses += s.accesses;
    accumulated.hits += s.hits;
    accumulated.misses += s.misses;
    accumulated.prefetch_loads += s.prefetch_loads;
    accumulated.evictions += s.evictions;
    accumulated.bytes_loaded += s.bytes_loaded;
    accumulated.prefetch_useful += s.prefetch_useful;
    accumulated.prefetch_wasted += s.prefetch_wasted + unused;
    accumulated.prefetch_wasted_bytes +=
        s.prefetch_wasted_bytes + unused * c.options().expert_bytes;
  };

  // Only the "predictive" policy reads the scores.
  std::optional<PrefetchPlanner> planner;
  if (predictor != nullptr) {
    planner.emplace(
        *predictor, options.policy == "predictive" ? &scores : nullptr,
        PrefetchOptions{options.prefetch_depth, prefetch_budget, options.prefetch_threshold});
  }
  // Scratch of multi-token steps.
  std::vector<uint32_t> seen_stamp(static_cast<size_t>(space.size()), 0), index_of(seen_stamp);
  uint32_t stamp = 0;
  std::vector<ExpertKey> step_keys;
  std::vector<AccessHint> step_hints;
  std::vector<AcquiredExpert> wave;
  std::vector<uint32_t> pending;
  uint64_t pos = 0;
  double now = 0;
  bool first_step = true;
  auto no_room = [&](int32_t l) {
    return Internal("no unpinned expert to evict at layer {} (capacity {})", l,
                    cache->capacity_per_partition());
  };
  // The plain case (one token per step, nothing but counts: no timing model, no oracle, no
  // predictor): each token's row of the trace straight through the cache's one-call access.
  // The general loop below gives the same counts; this one was about 10% faster (15.6 -> 17.2
  // M decisions/s on DeepSeek), which is the point of `moe-replay` as a sweep tool.
  const bool plain = !timed && !use_future && predictor == nullptr && !schedule.interleaved();
  for (const ReplayStep& step : schedule.steps()) {
    if (plain && step.count == 1 && !(options.reset_per_sequence && step.starts_sequence_alone)) {
      const int64_t token = schedule.Tokens(step)[0].token;
      const std::span<const uint16_t> row(trace.Experts(token, 0).data(),
                                          static_cast<size_t>(L) * K);
      if (const int32_t l = cache->AccessToken(row, K); l >= 0) return no_room(l);
      pos += static_cast<uint64_t>(L) * K;
      result.token_layers += L;
      ++result.tokens;
      ++result.steps;
      first_step = false;
      continue;
    }
    if (options.reset_per_sequence && step.starts_sequence_alone && !first_step) {
      harvest(*cache);
      MOE_ASSIGN_OR_RETURN(cache, ExpertCache::Create(cache_options));
      attach_listener(*cache);
    }
    first_step = false;
    const auto tokens = schedule.Tokens(step);
    if (predictor != nullptr) {
      for (const ScheduledToken& tok : tokens) {
        const TraceSequence& seq = trace.sequences[tok.sequence];
        if (tok.token == seq.token_offset) predictor->BeginSequence(tok.sequence);
      }
    }
    for (int32_t l = 0; l < L; ++l) {
      const ExpertKey base = space.Key(l, 0);
      double layer_ready = now;
      if (timed) link->AdvanceTo(now);
      const bool multi = tokens.size() > 1;
      if (planner) {  // eviction scores for the next visit, before the acquire, as the engine
        for (const ScheduledToken& tok : tokens) {
          planner->BeforeAcquire(tok.sequence, l, trace.Experts(tok.token, l));
        }
      }
      if (multi) {
        // A multi-token step (continuous batching, prefill chunk): one access per distinct
        // expert, acquired in waves exactly as the engine does (memory/expert_set.h).
        ++stamp;
        step_keys.clear();
        step_hints.clear();
        for (const ScheduledToken& tok : tokens) {
          const auto experts = trace.Experts(tok.token, l);
          for (int32_t j = 0; j < K; ++j, ++pos) {
            const ExpertKey key = base + experts[j];
            if (seen_stamp[key] != stamp) {
              seen_stamp[key] = stamp;
              index_of[key] = static_cast<uint32_t>(step_keys.size());
              step_keys.push_back(key);
              if (use_future) step_hints.emplace_back();
            }
            if (use_future) {  // the last occurrence in the step tells the next use after it
              const uint32_t n = next_use[pos];
              step_hints[index_of[key]].next_use = n == kNoNextUse ? AccessHint::kNever : n;
            }
          }
        }
        MOE_RETURN_IF_ERROR(AcquireInWaves(*cache, step_keys, step_hints, wave, pending,
                                           [&](std::span<const AcquiredExpert> acquired) {
                                             if (!timed) return absl::OkStatus();
                                             for (const AcquiredExpert& a : acquired) {
                                               double ready;
                                               if (a.loaded) {
                                                 ready = link->Demand(a.key, now);
                                               } else {
                                                 bool in_flight = false;
                                                 ready = link->ReadyTime(a.key, now, &in_flight);
                                                 if (in_flight && a.was_prefetched_unused)
                                                   ++result.late_prefetches;
                                               }
                                               layer_ready = std::max(layer_ready, ready);
                                             }
                                             return absl::OkStatus();
                                           }));
      }
      for (const ScheduledToken& tok : tokens) {
        const auto experts = trace.Experts(tok.token, l);
        if (!multi && !timed && !use_future) {  // counts only: the cache's one-call path
          pos += static_cast<uint64_t>(K);
          if (!cache->AccessSet(base, experts)) return no_room(l);
        } else if (!multi) {
          const uint64_t set_pos = pos;
          pos += static_cast<uint64_t>(K);
          // Pin the experts already resident first, then load the missing ones, so that a load
          // never evicts a member of the token's own set.
          ExpertCache& c = *cache;
          auto acquire = [&](int32_t j, ExpertKey key) {
            AccessHint hint;
            if (use_future) {
              const uint32_t n = next_use[set_pos + j];
              hint.next_use = n == kNoNextUse ? AccessHint::kNever : n;
            }
            const ExpertCache::Access access = c.Acquire(key, hint);
            if (access.outcome == ExpertCache::Outcome::kNoRoom) [[unlikely]] {
              return false;
            }
            if (timed) {
              double ready;
              if (access.outcome == ExpertCache::Outcome::kLoaded) {
                ready = link->Demand(key, now);
              } else {
                bool in_flight = false;
                ready = link->ReadyTime(key, now, &in_flight);
                if (in_flight && access.was_prefetched_unused) ++result.late_prefetches;
              }
              layer_ready = std::max(layer_ready, ready);
            }
            return true;
          };
          uint64_t missing = 0;  // bit j: experts[j] was not resident
          bool room = true;
          for (int32_t j = 0; j < K; ++j) {
            const ExpertKey key = base + experts[j];
            if (c.Contains(key)) {
              room &= acquire(j, key);
            } else {
              missing |= uint64_t{1} << j;
            }
          }
          for (; missing != 0; missing &= missing - 1) {
            const int32_t j = std::countr_zero(missing);
            room &= acquire(j, base + experts[j]);
          }
          if (!room) return no_room(l);
          for (int32_t j = 0; j < K; ++j) cache->Release(base + experts[j]);
        }

        if (planner) {
          planner->AfterRouting(
              *cache, tok.sequence, l, experts, {}, [](int32_t) { return true; },
              [&](ExpertKey key, int32_t) {
                if (timed) link->EnqueuePrefetch(key, now);
              });
        }
      }
      if (timed) {
        result.timing.stall_us += layer_ready - now;
        now = layer_ready + options.layer_compute_us;
      }
    }
    result.token_layers += static_cast<int64_t>(tokens.size()) * L;
    result.tokens += static_cast<int64_t>(tokens.size());
    ++result.steps;
  }

  harvest(*cache);
  result.stats = accumulated;

  if (timed) {
    ReplayTiming& t = result.timing;
    t.enabled = true;
    t.total_us = now;
    t.compute_us = static_cast<double>(result.steps) * L * options.layer_compute_us;
    t.link_busy_us = link->busy_us();
    t.link_transfers = link->transfers();
    t.cancelled_prefetches = link->cancelled();
    t.transfer_us = link->transfer_us();
    t.tokens_per_second = now > 0 ? static_cast<double>(result.tokens) / (now * 1e-6) : 0;
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  return result;
}

}  // namespace moe
