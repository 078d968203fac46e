// A small fixed-size thread pool for data-parallel CPU kernels.
//
// ParallelFor splits [0, n) into contiguous chunks of at least `grain` items and runs
// fn(begin, end) on the pool's workers and the calling thread; it returns when every chunk is
// done. With one thread (or n <= grain) it runs inline on the caller. Chunks are deterministic
// for a given (n, grain, num_threads), so results do not depend on scheduling as long as each
// chunk writes only its own outputs. (There are up to 4 chunks per thread, claimed dynamically,
// so one slow thread does not hold up the others; which thread runs which chunk varies.)
//
// Thread-safety: ParallelFor may be called from one thread at a time per pool (calls from
// several threads serialise on an internal mutex). Nested ParallelFor from inside fn runs inline.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace moe::cpu {

class ThreadPool {
 public:
  // num_threads <= 0: std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // A process-wide pool sized to the machine (created on first use).
  static ThreadPool& Default();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::cpu
