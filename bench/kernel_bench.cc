// CPU kernel throughput against the machine's limits: memory bandwidth for decode (batch 1 is a
// weight stream) and OpenBLAS sgemm for batched expert FFNs (batch 32 is compute).
//
// Everything runs on ThreadPool::Default() (one thread per hardware thread); OpenBLAS gets the
// same thread count. Shapes are Mixtral-like, scaled to a small machine: H = 1024, I = 3584.
//   MemoryBandwidth     multi-threaded streaming read (integer sum) of a 1 GiB buffer.
//   Linear, ExpertFfn   bf16 and fp32 weights at batch 1 and 32. Each iteration uses the next of
//                       several weight copies totalling >= 256 MiB, so weights come from DRAM
//                       (as offloaded experts do), not from the last-level cache.
//   SgemmExpertFfn      the same expert FFN as three cblas_sgemm calls plus silu * mul (fp32
//                       weights, same copies), only when built with OpenBLAS.
//   Paired*             alternates ours and the reference within one case and reports medians
//                       and their ratio: robust to load changes on a shared machine, where
//                       separate cases can run minutes apart.
// Counters (from wall time): weight_GBps (weight bytes per second), GFLOPs, pct_of_bw
// (weight_GBps as a percentage of the MemoryBandwidth case of the same run, when that ran first).
//
//   build/bin/moe_kernel_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/float16.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/safetensors.h"

#if defined(MOE_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace moe::cpu {
namespace {

constexpr int64_t kHidden = 1024;
constexpr int64_t kInter = 3584;
constexpr uint64_t kRotationBytes = uint64_t{256} << 20;
constexpr size_t kBandwidthBytes = size_t{1} << 30;

ThreadPool& Pool() { return ThreadPool::Default(); }

// Set by BM_MemoryBandwidth (bytes/s); pct_of_bw is relative to it.
double g_bandwidth = 0.0;

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Heap storage first touched (zeroed) by the pool's threads.
std::unique_ptr<std::byte[]> MakeBuffer(size_t size) {
  std::unique_ptr<std::byte[]> b(new std::byte[size]);
  std::byte* p = b.get();
  Pool().ParallelFor(static_cast<int64_t>(size >> 12), 64, [p](int64_t begin, int64_t end) {
    std::memset(p + (begin << 12), 0, static_cast<size_t>(end - begin) << 12);
  });
  return b;
}

// Reads `bytes` (a multiple of 8) from `data` on the pool, one contiguous chunk per thread.
uint64_t StreamSum(const std::byte* data, size_t bytes) {
  const auto* words = reinterpret_cast<const uint64_t*>(data);
  const int64_t count = static_cast<int64_t>(bytes / 8);
  const int threads = Pool().num_threads();
  uint64_t partial[64 * 8] = {};  // padded: one cache line per thread
  Pool().ParallelFor(threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t begin = count * t / threads, end = count * (t + 1) / threads;
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // integer sums: no reassociation concerns
      int64_t i = begin;
      for (; i + 4 <= end; i += 4) {
        s0 += words[i];
        s1 += words[i + 1];
        s2 += words[i + 2];
        s3 += words[i + 3];
      }
      for (; i < end; ++i) s0 += words[i];
      partial[(t % 64) * 8] = s0 + s1 + s2 + s3;
    }
  });
  uint64_t sum = 0;
  for (int t = 0; t < 64; ++t) sum += partial[t * 8];
  return sum;
}

std::byte* BandwidthBuffer() {
  static std::byte* const buffer = [] {
    std::byte* b = MakeBuffer(kBandwidthBytes).release();
    std::memset(b, 1, kBandwidthBytes);
    return b;
  }();
  return buffer;
}

void FillRandom(std::byte* dst, DType dtype, int64_t count, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (int64_t i = 0; i < count; ++i) {
    const float v = dist(rng);
    if (dtype == DType::kF32) {
      std::memcpy(dst + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  }
}

// `copies` experts (gate, up, down) of one dtype, cycled through so that the working set
// exceeds the last-level cache.
struct ExpertSet {
  int copies = 0;
  uint64_t expert_bytes = 0;
  std::unique_ptr<std::byte[]> storage;
  std::vector<WeightView> gate, up, down;
};

ExpertSet& Experts(DType dtype) {
  static ExpertSet* sets[3] = {nullptr, nullptr, nullptr};
  const int slot = dtype == DType::kF32 ? 0 : dtype == DType::kBF16 ? 1 : 2;
  if (sets[slot] != nullptr) return *sets[slot];
  auto* set = new ExpertSet;
  const uint64_t matrix_bytes = static_cast<uint64_t>(kHidden * kInter) * DTypeSize(dtype);
  set->expert_bytes = 3 * matrix_bytes;
  set->copies = static_cast<int>((kRotationBytes + set->expert_bytes - 1) / set->expert_bytes);
  set->storage = MakeBuffer(set->expert_bytes * set->copies);
  // One expert of random values, copied: the values do not matter for speed.
  std::byte* base = set->storage.get();
  FillRandom(base, dtype, 3 * kHidden * kInter, 1, 0.05f);
  for (int c = 0; c < set->copies; ++c) {
    std::byte* e = base + c * set->expert_bytes;
    if (c > 0) std::memcpy(e, base, set->expert_bytes);
    set->gate.push_back(WeightView{e, dtype, kInter, kHidden});
    set->up.push_back(WeightView{e + matrix_bytes, dtype, kInter, kHidden});
    set->down.push_back(WeightView{e + 2 * matrix_bytes, dtype, kHidden, kInter});
  }
  sets[slot] = set;
  return *set;
}

std::string ThreadsLabel() { return std::to_string(Pool().num_threads()) + " threads"; }

// Plain (not rate) counters from the loop's wall time, so the table reads GB/s, GFLOP/s and %.
void SetWeightCounters(benchmark::State& state, Clock::time_point start, uint64_t weight_bytes,
                       double flops) {
  const double per_second = static_cast<double>(state.iterations()) / Seconds(start);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * weight_bytes));
  state.counters["weight_GBps"] = static_cast<double>(weight_bytes) * per_second / 1e9;
  state.counters["GFLOPs"] = flops * per_second / 1e9;
  if (g_bandwidth > 0.0) {
    state.counters["pct_of_bw"] =
        100.0 * static_cast<double>(weight_bytes) * per_second / g_bandwidth;
  }
  state.SetLabel(std::string(UsingAvx2() ? "avx2, " : "scalar, ") + ThreadsLabel());
}

// ---- memory bandwidth -----------------------------------------------------------------------

void BM_MemoryBandwidth(benchmark::State& state) {
  const std::byte* buffer = BandwidthBuffer();
  const auto start = Clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(StreamSum(buffer, kBandwidthBytes));
  g_bandwidth = static_cast<double>(kBandwidthBytes) * static_cast<double>(state.iterations()) /
                Seconds(start);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBandwidthBytes));
  state.counters["GBps"] = g_bandwidth / 1e9;
  state.SetLabel(ThreadsLabel() + ", 1 GiB");
}

// ---- Linear and ExpertFfn -------------------------------------------------------------------

void BM_Linear(benchmark::State& state, DType dtype) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(dtype);
  // The gate matrices of every copy, then the up matrices: 2 * copies distinct [I, H] weights.
  std::vector<WeightView> weights = set.gate;
  weights.insert(weights.end(), set.up.begin(), set.up.end());
  std::vector<float> x(static_cast<size_t>(n * kHidden), 0.01f);
  std::vector<float> y(static_cast<size_t>(n * kInter));
  size_t next = 0;
  const auto start = Clock::now();
  for (auto _ : state) {
    Linear(x.data(), n, weights[next], y.data(), &Pool());
    next = (next + 1) % weights.size();
    benchmark::DoNotOptimize(y.data());
  }
  SetWeightCounters(state, start, weights[0].num_bytes(), 2.0 * n * kHidden * kInter);
}

struct FfnBuffers {
  explicit FfnBuffers(int64_t n)
      : x(static_cast<size_t>(n * kHidden), 0.01f),
        out(static_cast<size_t>(n * kHidden)),
        scratch(static_cast<size_t>(2 * n * kInter)) {}
  std::vector<float> x, out, scratch;
};

void RunExpertFfn(const ExpertSet& set, int c, int64_t n, FfnBuffers& b) {
  ExpertFfn(b.x.data(), n, set.gate[c], set.up[c], set.down[c], b.out.data(), b.scratch.data(),
            &Pool());
}

void BM_ExpertFfn(benchmark::State& state, DType dtype) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(dtype);
  FfnBuffers b(n);
  int c = 0;
  const auto start = Clock::now();
  for (auto _ : state) {
    RunExpertFfn(set, c, n, b);
    c = (c + 1) % set.copies;
    benchmark::DoNotOptimize(b.out.data());
  }
  SetWeightCounters(state, start, set.expert_bytes, 6.0 * n * kHidden * kInter);
}

// Reading as many bytes as one expert from a rotating window of the 1 GiB buffer: the
// bandwidth reference of the paired decode case.
void StreamExpertBytes(uint64_t bytes, size_t* offset) {
  if (*offset + bytes > kBandwidthBytes) *offset = 0;
  benchmark::DoNotOptimize(StreamSum(BandwidthBuffer() + *offset, bytes));
  *offset += bytes;
}

void BM_PairedExpertFfnVsBandwidth(benchmark::State& state, DType dtype) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(dtype);
  BandwidthBuffer();  // allocate before timing
  FfnBuffers b(n);
  std::vector<double> ours, stream;
  size_t offset = 0;
  int c = 0;
  for (auto _ : state) {
    auto t = Clock::now();
    RunExpertFfn(set, c, n, b);
    ours.push_back(Seconds(t));
    t = Clock::now();
    StreamExpertBytes(set.expert_bytes, &offset);
    stream.push_back(Seconds(t));
    c = (c + 1) % set.copies;
  }
  const double bytes = static_cast<double>(set.expert_bytes);
  state.counters["ffn_GBps"] = bytes / Median(ours) / 1e9;
  state.counters["stream_GBps"] = bytes / Median(stream) / 1e9;
  state.counters["pct_of_stream"] = 100.0 * Median(stream) / Median(ours);
  state.SetLabel(std::string(UsingAvx2() ? "avx2, " : "scalar, ") + ThreadsLabel());
}

#if defined(MOE_HAVE_OPENBLAS)
// The same expert FFN with OpenBLAS: g = x gate^T and u = x up^T (sgemm with B transposed: the
// weights are [out, in]), h = silu(g) * u, out = h down^T.
struct SgemmFfn {
  explicit SgemmFfn(int64_t n) : n(n), g(static_cast<size_t>(n * kInter)), u(g.size()) {
    openblas_set_num_threads(Pool().num_threads());
  }
  void Run(const ExpertSet& set, int c, FfnBuffers& b) {
    const auto* gate = reinterpret_cast<const float*>(set.gate[c].data);
    const auto* up = reinterpret_cast<const float*>(set.up[c].data);
    const auto* down = reinterpret_cast<const float*>(set.down[c].data);
    const int m = static_cast<int>(n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, kInter, kHidden, 1.0f, b.x.data(),
                kHidden, gate, kHidden, 0.0f, g.data(), kInter);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, kInter, kHidden, 1.0f, b.x.data(),
                kHidden, up, kHidden, 0.0f, u.data(), kInter);
    // On the calling thread: OpenBLAS's own threads are still spinning after the call, and a
    // second pool next to them would only fight them for the cores.
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, kHidden, kInter, 1.0f, g.data(), kInter,
                down, kInter, 0.0f, b.out.data(), kHidden);
  }
  int64_t n;
  std::vector<float> g, u;
};

std::string OpenBlasLabel() {
  return std::string("openblas ") + openblas_get_corename() + ", " + ThreadsLabel();
}

void BM_SgemmExpertFfn(benchmark::State& state) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(DType::kF32);
  FfnBuffers b(n);
  SgemmFfn sgemm(n);
  int c = 0;
  const auto start = Clock::now();
  for (auto _ : state) {
    sgemm.Run(set, c, b);
    c = (c + 1) % set.copies;
    benchmark::DoNotOptimize(b.out.data());
  }
  SetWeightCounters(state, start, set.expert_bytes, 6.0 * n * kHidden * kInter);
  state.SetLabel(OpenBlasLabel());
}

// Paired in blocks: kPairBlock calls of ours back to back, then kPairBlock sgemm calls, the
// first call of each block not counted. Back to back because a call right after idling runs
// ~1.5x slower on the development VM (clocks ramping up), and in blocks because OpenBLAS's
// threads keep spinning for a while after a call and would slow down our next one.
constexpr int kPairBlock = 5;
constexpr int kOpenBlasIdleMs = 300;

void BM_PairedExpertFfnVsSgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(DType::kF32);
  FfnBuffers b(n);
  SgemmFfn sgemm(n);
  std::vector<double> ours, theirs;
  int c = 0;
  for (auto _ : state) {
    for (int i = 0; i < kPairBlock; ++i, c = (c + 1) % set.copies) {
      const auto t = Clock::now();
      RunExpertFfn(set, c, n, b);
      if (i > 0) ours.push_back(Seconds(t));
    }
    for (int i = 0; i < kPairBlock; ++i, c = (c + 1) % set.copies) {
      const auto t = Clock::now();
      sgemm.Run(set, c, b);
      if (i > 0) theirs.push_back(Seconds(t));
    }
    state.PauseTiming();
    std::this_thread::sleep_for(std::chrono::milliseconds(kOpenBlasIdleMs));
    state.ResumeTiming();
  }
  const double flops = 6.0 * n * kHidden * kInter;
  state.counters["ours_GFLOPs"] = flops / Median(ours) / 1e9;
  state.counters["sgemm_GFLOPs"] = flops / Median(theirs) / 1e9;
  state.counters["ours_us"] = Median(ours) * 1e6;
  state.counters["sgemm_us"] = Median(theirs) * 1e6;
  state.counters["time_ratio"] = Median(ours) / Median(theirs);
  state.SetLabel(OpenBlasLabel());
}
#endif

// ---- thread pool overhead -------------------------------------------------------------------

void BM_ParallelForOverhead(benchmark::State& state) {
  std::vector<int64_t> sink(static_cast<size_t>(Pool().num_threads()) * 8);
  int64_t* s = sink.data();
  for (auto _ : state) {
    Pool().ParallelFor(Pool().num_threads(), 1, [s](int64_t b, int64_t e) { s[b * 8] += e; });
  }
  benchmark::DoNotOptimize(sink.data());
  state.SetLabel(ThreadsLabel());
}

BENCHMARK(BM_MemoryBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_ParallelForOverhead)->UseRealTime();
BENCHMARK_CAPTURE(BM_Linear, bf16, DType::kBF16)
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(5)
    ->Arg(8)
    ->Arg(32)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Linear, f32, DType::kF32)
    ->Arg(1)
    ->Arg(32)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_ExpertFfn, bf16, DType::kBF16)
    ->Arg(1)
    ->Arg(32)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_ExpertFfn, f32, DType::kF32)
    ->Arg(1)
    ->Arg(32)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PairedExpertFfnVsBandwidth, bf16, DType::kBF16)
    ->Arg(1)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PairedExpertFfnVsBandwidth, f32, DType::kF32)
    ->Arg(1)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
#if defined(MOE_HAVE_OPENBLAS)
BENCHMARK(BM_SgemmExpertFfn)->Arg(1)->Arg(32)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_PairedExpertFfnVsSgemm)
    ->Arg(32)
    ->Iterations(8)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
#endif

}  // namespace
}  // namespace moe::cpu

BENCHMARK_MAIN();
