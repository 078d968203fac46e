#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace moe::cpu {
namespace {

using Chunks = std::vector<std::pair<int64_t, int64_t>>;

// The chunks fn was called with, sorted by begin.
Chunks RecordChunks(ThreadPool& pool, int64_t n, int64_t grain) {
  std::mutex mu;
  Chunks chunks;
  pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(mu);
    chunks.emplace_back(b, e);
  });
  std::sort(chunks.begin(), chunks.end());
  return chunks;
}

TEST(ThreadPoolTest, SizeAndDefault) {
  EXPECT_EQ(ThreadPool(1).num_threads(), 1);
  EXPECT_EQ(ThreadPool(3).num_threads(), 3);
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  EXPECT_EQ(ThreadPool(0).num_threads(), hw > 0 ? hw : 1);
  EXPECT_EQ(ThreadPool::Default().num_threads(), hw > 0 ? hw : 1);
  EXPECT_EQ(&ThreadPool::Default(), &ThreadPool::Default());
}

TEST(ThreadPoolTest, ChunksCoverRangeOnceAndRespectGrain) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 3, 7, 10, 64, 1000, 1001}) {
      for (int64_t grain : {1, 3, 4, 100, 5000}) {
        const Chunks chunks = RecordChunks(pool, n, grain);
        ASSERT_FALSE(chunks.empty());
        EXPECT_LE(static_cast<int>(chunks.size()), 4 * threads);
        int64_t next = 0;
        for (const auto& [b, e] : chunks) {
          EXPECT_EQ(b, next);
          EXPECT_GT(e, b);
          if (chunks.size() > 1) {
            EXPECT_GE(e - b, grain) << n << " " << grain;
          }
          next = e;
        }
        EXPECT_EQ(next, n);
        // Deterministic: the same call gives the same chunks.
        EXPECT_EQ(RecordChunks(pool, n, grain), chunks);
      }
    }
  }
}

TEST(ThreadPoolTest, RunsEveryIndexOnceOnSeveralThreads) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(3000);
  std::mutex mu;
  std::vector<std::thread::id> ids;
  pool.ParallelFor(3000, 1, [&](int64_t b, int64_t e) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.push_back(std::this_thread::get_id());
    }
    for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
    // Slow chunks: the workers wake and claim some before the caller has run them all.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  for (const auto& h : hits) ASSERT_EQ(h.load(), 1);
  std::sort(ids.begin(), ids.end());
  EXPECT_GE(std::unique(ids.begin(), ids.end()) - ids.begin(), 2);
}

TEST(ThreadPoolTest, SmallWorkRunsInlineOnCaller) {
  ThreadPool pool(3);
  std::vector<std::thread::id> ids;
  pool.ParallelFor(5, 10, [&](int64_t b, int64_t e) {
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 5);
    ids.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(ids[0], std::this_thread::get_id());
  int calls = 0;
  pool.ParallelFor(0, 1, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPoolTest, NestedCallsRunInline) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  std::atomic<int> not_inline{0};
  pool.ParallelFor(30, 1, [&](int64_t b, int64_t e) {
    const auto outer = std::this_thread::get_id();
    for (int64_t i = b; i < e; ++i) {
      pool.ParallelFor(100, 1, [&](int64_t ib, int64_t ie) {
        if (std::this_thread::get_id() != outer) not_inline.fetch_add(1);
        total.fetch_add(ie - ib);
      });
    }
  });
  EXPECT_EQ(total.load(), 30 * 100);
  EXPECT_EQ(not_inline.load(), 0);
}

TEST(ThreadPoolTest, ConcurrentCallersSerialise) {
  ThreadPool pool(3);
  std::vector<int64_t> sums(4, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&, c] {
      for (int rep = 0; rep < 50; ++rep) {
        std::atomic<int64_t> sum{0};
        pool.ParallelFor(1000, 1, [&](int64_t b, int64_t e) {
          int64_t s = 0;
          for (int64_t i = b; i < e; ++i) s += i;
          sum.fetch_add(s);
        });
        sums[c] += sum.load();
      }
    });
  }
  for (auto& t : callers) t.join();
  for (int64_t s : sums) EXPECT_EQ(s, 50 * (999 * 1000 / 2));
}

TEST(ThreadPoolTest, ManyBackToBackCalls) {
  ThreadPool pool(3);
  std::vector<int> data(999, 0);
  for (int rep = 0; rep < 2000; ++rep) {
    pool.ParallelFor(999, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) data[i] += 1;
    });
  }
  for (int v : data) ASSERT_EQ(v, 2000);
}

}  // namespace
}  // namespace moe::cpu
