#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace moe::cpu {
namespace {

// True on pool workers, and on a calling thread while it runs its own chunk. A ParallelFor
// issued from such a thread runs inline: a worker that waited for its own pool's workers could
// deadlock, and the outer call already keeps every thread busy.
thread_local bool tls_in_parallel_for = false;

// How long an idle thread spins before sleeping on the condition variable. Kernels issue
// ParallelFor calls back to back (a model layer is a dozen of them), and waking a sleeping thread
// costs a futex round trip (tens of microseconds in a VM), comparable to a decode GEMV. A
// short spin keeps that latency off the hot path without burning a core when the pool is idle.
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
  int num_threads = 1;
  std::vector<std::thread> workers;

  std::mutex call_mu;  // serialises ParallelFor calls from different threads

  // The current job. Written by the caller under `mu` before it bumps `generation`; workers
  // snapshot it under `mu`, so a worker never mixes the fields of two jobs.
  std::mutex mu;
  std::condition_variable work_cv;  // generation changed or stop
  std::condition_variable done_cv;  // pending reached zero
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  int64_t num_chunks = 0;
  bool stop = false;
  std::atomic<uint64_t> generation{0};
  // Worker chunks of the current job not yet finished. Only workers that own a chunk
  // (index < num_chunks) touch it, so the caller waits exactly for them; a worker without a
  // chunk may skip a generation, which is harmless because no job waits for it.
  std::atomic<int64_t> pending{0};

  void WorkerLoop(int index);
};

void ThreadPool::Impl::WorkerLoop(int index) {
  tls_in_parallel_for = true;
  uint64_t seen = 0;
  for (;;) {
    SpinUntil([&] { return generation.load(std::memory_order_acquire) != seen; });
    const std::function<void(int64_t, int64_t)>* job_fn;
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
    if (index >= job_chunks) continue;
    (*job_fn)(ChunkBegin(job_n, job_chunks, index), ChunkBegin(job_n, job_chunks, index + 1));
    if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Notify under the mutex: the caller checks `pending` under it before sleeping.
      std::lock_guard<std::mutex> lock(mu);
      done_cv.notify_one();
    }
  }
}

ThreadPool::ThreadPool(int num_threads) : impl_(std::make_unique<Impl>()) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (num_threads <= 0) num_threads = 1;
  impl_->num_threads = num_threads;
  impl_->workers.reserve(static_cast<size_t>(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) {
    impl_->workers.emplace_back([impl = impl_.get(), i] { impl->WorkerLoop(i); });
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
  // As many chunks as threads, but none smaller than `grain`.
  int64_t chunks = n / grain;
  if (chunks > impl_->num_threads) chunks = impl_->num_threads;
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  if (tls_in_parallel_for) {
    // Nested: same chunks, run in order on this thread.
    for (int64_t c = 0; c < chunks; ++c) fn(ChunkBegin(n, chunks, c), ChunkBegin(n, chunks, c + 1));
    return;
  }

  std::lock_guard<std::mutex> call_lock(impl_->call_mu);
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->fn = &fn;
    impl_->n = n;
    impl_->num_chunks = chunks;
    impl_->pending.store(chunks - 1, std::memory_order_relaxed);
    impl_->generation.fetch_add(1, std::memory_order_release);
  }
  impl_->work_cv.notify_all();

  // The caller takes chunk 0.
  tls_in_parallel_for = true;
  fn(0, ChunkBegin(n, chunks, 1));
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
