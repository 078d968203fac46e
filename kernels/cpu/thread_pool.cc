#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace moe::cpu {
namespace {

// True on pool workers, and on a calling thread while it runs chunks. A ParallelFor issued from
// such a thread runs inline: a worker that waited for its own pool's workers could deadlock, and
// the outer call already keeps every thread busy.
thread_local bool tls_in_parallel_for = false;

// Chunks per thread. More chunks than threads, claimed dynamically, let the threads that run
// take over the work of one that is descheduled or slow to wake (other processes, SMT
// siblings): with exactly one chunk per thread, every call waits for the slowest thread.
constexpr int64_t kChunksPerThread = 4;

// How long an idle thread spins before sleeping on a condition variable. Kernels issue
// ParallelFor calls back to back (a model layer is a dozen of them), and waking a sleeping
// thread costs a futex round trip (tens of microseconds in a VM), comparable to a decode GEMV.
// A short spin keeps that latency off the hot path without burning a core when the pool idles.
constexpr std::chrono::microseconds kSpinBudget(50);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Spins until pred() holds or the budget runs out; returns pred().
template <typename Pred>
bool SpinUntil(const Pred& pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinBudget;
  for (;;) {
    // Reading the clock costs ~20 ns; check it only every 64 polls.
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      CpuRelax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return pred();
  }
}

// Chunk c of `chunks` over [0, n): sizes differ by at most one, in order.
inline int64_t ChunkBegin(int64_t n, int64_t chunks, int64_t c) { return n * c / chunks; }

}  // namespace

struct ThreadPool::Impl {
  using Fn = std::function<void(int64_t, int64_t)>;

  int num_threads = 1;
  std::vector<std::thread> workers;

  std::mutex call_mu;  // serialises ParallelFor calls from different threads

  // The current job. The caller writes it under `mu` and then bumps `generation`; workers
  // snapshot it under `mu`, so a worker never mixes the fields of two jobs.
  std::mutex mu;
  std::condition_variable work_cv;  // generation changed, or stop
  std::condition_variable done_cv;  // pending reached zero
  const Fn* fn = nullptr;
  int64_t n = 0;
  int64_t num_chunks = 0;
  bool stop = false;
  std::atomic<uint64_t> generation{0};
  // (generation << 32) | next unclaimed chunk. Claiming compares the generation, so a worker
  // still holding a finished job's snapshot can never claim (and run with a stale fn) a chunk of
  // the next job.
  std::atomic<uint64_t> cursor{0};
  // Chunks of the current job not finished; the caller returns when it reaches zero, so fn is
  // never called after ParallelFor returned.
  std::atomic<int64_t> pending{0};

  // Claims and runs chunks of job `gen` until none is left.
  void RunChunks(uint64_t gen, const Fn& job_fn, int64_t job_n, int64_t job_chunks);
  void WorkerLoop();
};

void ThreadPool::Impl::RunChunks(uint64_t gen, const Fn& job_fn, int64_t job_n,
                                 int64_t job_chunks) {
  const uint64_t tag = gen << 32;
  for (;;) {
    uint64_t cur = cursor.load(std::memory_order_acquire);
    do {
      if ((cur & ~uint64_t{0xFFFFFFFF}) != tag) return;
      if (static_cast<int64_t>(cur & 0xFFFFFFFF) >= job_chunks) return;
    } while (!cursor.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel));
    const int64_t c = static_cast<int64_t>(cur & 0xFFFFFFFF);
    job_fn(ChunkBegin(job_n, job_chunks, c), ChunkBegin(job_n, job_chunks, c + 1));
    if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Notify under the mutex: the caller checks `pending` under it before sleeping.
      std::lock_guard<std::mutex> lock(mu);
      done_cv.notify_one();
    }
  }
}

void ThreadPool::Impl::WorkerLoop() {
  tls_in_parallel_for = true;
  uint64_t seen = 0;
  for (;;) {
    SpinUntil([&] { return generation.load(std::memory_order_acquire) != seen; });
    const Fn* job_fn;
    int64_t job_n;
    int64_t job_chunks;
    {
      std::unique_lock<std::mutex> lock(mu);
      work_cv.wait(lock,
                   [&] { return stop || generation.load(std::memory_order_relaxed) != seen; });
      if (stop) return;
      seen = generation.load(std::memory_order_relaxed);
      job_fn = fn;
      job_n = n;
      job_chunks = num_chunks;
    }
    RunChunks(seen, *job_fn, job_n, job_chunks);
  }
}

ThreadPool::ThreadPool(int num_threads) : impl_(std::make_unique<Impl>()) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (num_threads <= 0) num_threads = 1;
  impl_->num_threads = num_threads;
  impl_->workers.reserve(static_cast<size_t>(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) {
    impl_->workers.emplace_back([impl = impl_.get()] { impl->WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->work_cv.notify_all();
  for (std::thread& t : impl_->workers) t.join();
}

int ThreadPool::num_threads() const { return impl_->num_threads; }

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  // Chunks of at least `grain` items, at most kChunksPerThread per thread.
  int64_t chunks = n / grain;
  if (chunks > kChunksPerThread * impl_->num_threads)
    chunks = kChunksPerThread * impl_->num_threads;
  if (impl_->num_threads <= 1 || chunks <= 1) {
    fn(0, n);
    return;
  }
  if (tls_in_parallel_for) {
    // Nested: same chunks, run in order on this thread.
    for (int64_t c = 0; c < chunks; ++c) fn(ChunkBegin(n, chunks, c), ChunkBegin(n, chunks, c + 1));
    return;
  }

  std::lock_guard<std::mutex> call_lock(impl_->call_mu);
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->fn = &fn;
    impl_->n = n;
    impl_->num_chunks = chunks;
    impl_->pending.store(chunks, std::memory_order_relaxed);
    // Generations are 32-bit inside `cursor`; wrapping is harmless (a worker is never four
    // billion jobs behind).
    gen = (impl_->generation.load(std::memory_order_relaxed) + 1) & 0xFFFFFFFF;
    impl_->cursor.store(gen << 32, std::memory_order_relaxed);
    impl_->generation.store(gen, std::memory_order_release);
  }
  impl_->work_cv.notify_all();

  // The caller claims chunks too.
  tls_in_parallel_for = true;
  impl_->RunChunks(gen, fn, n, chunks);
  tls_in_parallel_for = false;

  auto done = [this] { return impl_->pending.load(std::memory_order_acquire) == 0; };
  if (!SpinUntil(done)) {
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->done_cv.wait(lock, done);
  }
}

ThreadPool& ThreadPool::Default() {
  // Never destroyed: kernels may run from other static destructors at exit.
  static ThreadPool* const pool = new ThreadPool(0);
  return *pool;
}

}  // namespace moe::cpu
