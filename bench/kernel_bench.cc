// CPU kernel throughput against the machine's limits: memory bandwidth for decode (batch 1 is a
// weight stream) and OpenBLAS sgemm for batched expert FFNs (batch 32 is compute).
//
// Cases (all threaded on one ThreadPool of `--threads`-independent size: the machine's cores):
//   MemoryBandwidth      multi-threaded streaming read (sum) of a 1 GiB buffer: the roofline.
//   Linear/ExpertFfn     Mixtral-like shapes scaled to a small machine (H = 1024, I = 3584) with
//                        bf16 and fp32 weights at batch 1 and 32. Each iteration uses the next of
//                        several weight copies totalling >= 256 MiB, so weights come from DRAM
//                        (as offloaded experts do) and not from the last-level cache.
//   SgemmExpertFfn       the same expert FFN as three cblas_sgemm calls plus silu * mul, with
//                        OpenBLAS on the same number of threads (only when built with OpenBLAS).
// Counters: weight_GBps (weight bytes streamed per second), GFLOPs, and pct_of_bw (weight GB/s
// as a percentage of the MemoryBandwidth case of the same run, when it ran first).
//
//   build/bin/moe_kernel_bench --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
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

ThreadPool& Pool() { return ThreadPool::Default(); }

// Measured by BM_MemoryBandwidth (bytes/s), used for pct_of_bw.
double g_bandwidth = 0.0;

// Page-aligned, never-freed-mid-run storage that is first touched by the pool's threads.
struct Buffer {
  std::unique_ptr<std::byte[]> bytes;
  size_t size = 0;
  std::byte* data() { return bytes.get(); }
};

Buffer MakeBuffer(size_t size) {
  Buffer b;
  b.bytes.reset(new std::byte[size]);
  b.size = size;
  std::byte* p = b.data();
  Pool().ParallelFor(static_cast<int64_t>(size >> 12), 64, [p](int64_t begin, int64_t end) {
    std::memset(p + (begin << 12), 0, static_cast<size_t>(end - begin) << 12);
  });
  return b;
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
  DType dtype;
  int copies = 0;
  Buffer storage;
  std::vector<WeightView> gate, up, down;
  uint64_t expert_bytes = 0;
};

ExpertSet& Experts(DType dtype) {
  static ExpertSet* sets[3] = {nullptr, nullptr, nullptr};
  const int slot = dtype == DType::kF32 ? 0 : dtype == DType::kBF16 ? 1 : 2;
  if (sets[slot] != nullptr) return *sets[slot];
  auto* set = new ExpertSet;
  set->dtype = dtype;
  const uint64_t matrix_bytes = static_cast<uint64_t>(kHidden * kInter) * DTypeSize(dtype);
  set->expert_bytes = 3 * matrix_bytes;
  set->copies = static_cast<int>((kRotationBytes + set->expert_bytes - 1) / set->expert_bytes);
  set->storage = MakeBuffer(set->expert_bytes * set->copies);
  // Fill one expert with random values and copy it: the values do not matter for speed.
  std::byte* base = set->storage.data();
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

void SetWeightCounters(benchmark::State& state, uint64_t weight_bytes, double flops) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * weight_bytes));
  state.counters["weight_GBps"] = benchmark::Counter(static_cast<double>(weight_bytes) / 1e9,
                                                     benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOPs"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  if (g_bandwidth > 0.0) {
    // Filled in after the run from the rate: weight bytes / time / bandwidth.
    state.counters["pct_of_bw"] =
        benchmark::Counter(100.0 * static_cast<double>(weight_bytes) / g_bandwidth,
                           benchmark::Counter::kIsIterationInvariantRate);
  }
  state.SetLabel(std::string(UsingAvx2() ? "avx2" : "scalar") + ", " +
                 std::to_string(Pool().num_threads()) + " threads");
}

// ---- memory bandwidth -----------------------------------------------------------------------

void BM_MemoryBandwidth(benchmark::State& state) {
  static Buffer buffer = [] {
    Buffer b = MakeBuffer(size_t{1} << 30);
    std::memset(b.data(), 1, b.size);
    return b;
  }();
  const auto* words = reinterpret_cast<const uint64_t*>(buffer.data());
  const int64_t count = static_cast<int64_t>(buffer.size / 8);
  std::vector<uint64_t> partial(static_cast<size_t>(Pool().num_threads()) * 8, 0);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    struct Ctx {
      const uint64_t* words;
      int64_t count;
      uint64_t* partial;
      int threads;
    } ctx{words, count, partial.data(), Pool().num_threads()};
    // One chunk per thread; integer sums vectorise without reassociation concerns.
    Pool().ParallelFor(ctx.threads, 1, [&ctx](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t begin = ctx.count * t / ctx.threads, end = ctx.count * (t + 1) / ctx.threads;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t i = begin;
        for (; i + 4 <= end; i += 4) {
          s0 += ctx.words[i];
          s1 += ctx.words[i + 1];
          s2 += ctx.words[i + 2];
          s3 += ctx.words[i + 3];
        }
        for (; i < end; ++i) s0 += ctx.words[i];
        ctx.partial[t * 8] = s0 + s1 + s2 + s3;
      }
    });
    benchmark::DoNotOptimize(partial.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * buffer.size));
  state.counters["GBps"] = benchmark::Counter(static_cast<double>(buffer.size) / 1e9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  g_bandwidth = static_cast<double>(buffer.size) * static_cast<double>(state.iterations()) /
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  state.SetLabel(std::to_string(Pool().num_threads()) + " threads, 1 GiB");
}

// ---- Linear and ExpertFfn -------------------------------------------------------------------

void BM_Linear(benchmark::State& state, DType dtype) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(dtype);
  // The gate matrices of every copy, then the up matrices: 2 * copies distinct [I, H] weights.
  std::vector<const WeightView*> weights;
  for (int c = 0; c < set.copies; ++c) weights.push_back(&set.gate[c]);
  for (int c = 0; c < set.copies; ++c) weights.push_back(&set.up[c]);
  std::vector<float> x(static_cast<size_t>(n * kHidden), 0.01f), y(static_cast<size_t>(n * kInter));
  size_t next = 0;
  for (auto _ : state) {
    Linear(x.data(), n, *weights[next], y.data(), &Pool());
    next = (next + 1) % weights.size();
    benchmark::DoNotOptimize(y.data());
  }
  SetWeightCounters(state, weights[0]->num_bytes(), 2.0 * n * kHidden * kInter);
}

void BM_ExpertFfn(benchmark::State& state, DType dtype) {
  const int64_t n = state.range(0);
  ExpertSet& set = Experts(dtype);
  std::vector<float> x(static_cast<size_t>(n * kHidden), 0.01f);
  std::vector<float> out(static_cast<size_t>(n * kHidden));
  std::vector<float> scratch(static_cast<size_t>(2 * n * kInter));
  int c = 0;
  for (auto _ : state) {
    ExpertFfn(x.data(), n, set.gate[c], set.up[c], set.down[c], out.data(), scratch.data(),
              &Pool());
    c = (c + 1) % set.copies;
    benchmark::DoNotOptimize(out.data());
  }
  SetWeightCounters(state, set.expert_bytes, 6.0 * n * kHidden * kInter);
}

#if defined(MOE_HAVE_OPENBLAS)
// The same expert FFN with OpenBLAS: g = x gate^T, u = x up^T (sgemm with B transposed, as the
// weights are [out, in]), h = silu(g) * u on the pool, out = h down^T.
void BM_SgemmExpertFfn(benchmark::State& state) {
  const int64_t n = state.range(0);
  openblas_set_num_threads(Pool().num_threads());
  ExpertSet& set = Experts(DType::kF32);
  std::vector<float> x(static_cast<size_t>(n * kHidden), 0.01f);
  std::vector<float> out(static_cast<size_t>(n * kHidden));
  std::vector<float> g(static_cast<size_t>(n * kInter)), u(g.size());
  int c = 0;
  for (auto _ : state) {
    const auto* gate = reinterpret_cast<const float*>(set.gate[c].data);
    const auto* up = reinterpret_cast<const float*>(set.up[c].data);
    const auto* down = reinterpret_cast<const float*>(set.down[c].data);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, kInter, kHidden, 1.0f, x.data(),
                kHidden, gate, kHidden, 0.0f, g.data(), kInter);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, kInter, kHidden, 1.0f, x.data(),
                kHidden, up, kHidden, 0.0f, u.data(), kInter);
    float* gp = g.data();
    const float* uptr = u.data();
    Pool().ParallelFor(n * kInter, 4096, [gp, uptr](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) gp[i] = gp[i] / (1.0f + std::exp(-gp[i])) * uptr[i];
    });
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, kHidden, kInter, 1.0f, g.data(), kInter,
                down, kInter, 0.0f, out.data(), kHidden);
    c = (c + 1) % set.copies;
    benchmark::DoNotOptimize(out.data());
  }
  SetWeightCounters(state, set.expert_bytes, 6.0 * n * kHidden * kInter);
  state.SetLabel(std::string("openblas ") + openblas_get_corename() + ", " +
                 std::to_string(Pool().num_threads()) + " threads");
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
}

BENCHMARK(BM_MemoryBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(BM_ParallelForOverhead)->UseRealTime();
BENCHMARK_CAPTURE(BM_Linear, bf16, DType::kBF16)
    ->Arg(1)
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
#if defined(MOE_HAVE_OPENBLAS)
BENCHMARK(BM_SgemmExpertFfn)->Arg(1)->Arg(32)->Unit(benchmark::kMicrosecond)->UseRealTime();
#endif

}  // namespace
}  // namespace moe::cpu

BENCHMARK_MAIN();
