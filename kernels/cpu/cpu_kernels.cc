// The public CPU kernels: argument checks, work splitting over the thread pool, and dispatch to
// the per-instruction-set pieces of kernel_table.h. RoPE and top-k live here in portable code:
// their cost is trigonometry and selection, not vector arithmetic.
#include "kernels/cpu/cpu_kernels.h"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/kernel_table.h"
#include "runtime/status.h"

namespace moe::cpu {
namespace internal {
namespace {

std::atomic<bool> g_force_scalar{false};

bool DetectAvx2() {
#if defined(MOE_CPU_KERNELS_AVX2)
  // libgcc's check also verifies that the OS saves the YMM registers (XGETBV).
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

}  // namespace

}  // namespace internal

bool CpuSupportsAvx2Kernels() {
  static const bool has_avx2 = internal::DetectAvx2();
  return has_avx2;
}

void ForceScalarKernelsForTesting(bool force) {
  internal::g_force_scalar.store(force, std::memory_order_relaxed);
}

namespace internal {

const KernelTable& ActiveKernels() {
#if defined(MOE_CPU_KERNELS_AVX2)
  if (CpuSupportsAvx2Kernels() && !g_force_scalar.load(std::memory_order_relaxed)) {
    return kAvx2Kernels;
  }
#endif
  return kScalarKernels;
}

}  // namespace internal

bool UsingAvx2() { return &internal::ActiveKernels() != &internal::kScalarKernels; }

namespace {

using internal::ElemType;
using internal::KernelTable;
using internal::MatRef;

MatRef ToMat(const WeightView& w) {
  ElemType type = ElemType::kF32;
  switch (w.dtype) {
    case DType::kF32:
      type = ElemType::kF32;
      break;
    case DType::kBF16:
      type = ElemType::kBF16;
      break;
    case DType::kF16:
      type = ElemType::kF16;
      break;
    default:
      MOE_CHECK_MSG(false, "cpu kernels: unsupported weight dtype {}", DTypeName(w.dtype));
  }
  MOE_CHECK_MSG(w.data != nullptr || w.num_elements() == 0, "cpu kernels: weight has no data");
  return MatRef{w.data, type, w.rows, w.cols};
}

// Below this many multiply-adds per chunk, waking another thread costs more than it saves.
constexpr int64_t kMinMacsPerChunk = 1 << 15;

int64_t RowGrain(int64_t macs_per_row) {
  if (macs_per_row <= 0) return kMinMacsPerChunk;
  const int64_t grain = kMinMacsPerChunk / macs_per_row;
  return grain < 1 ? 1 : grain;
}

// Runs fn(begin, end) over [0, n) on the pool, or inline without one. The lambda handed to
// ParallelFor captures a single reference, so it fits std::function's inline storage and the
// call does not allocate.
template <typename Fn>
void ForRange(ThreadPool* pool, int64_t n, int64_t grain, const Fn& fn) {
  if (n <= 0) return;
  if (pool == nullptr || pool->num_threads() <= 1 || n < 2 * grain) {
    fn(int64_t{0}, n);
    return;
  }
  pool->ParallelFor(n, grain, [&fn](int64_t begin, int64_t end) { fn(begin, end); });
}

}  // namespace

void Linear(const float* x, int64_t n, const WeightView& w, float* y, ThreadPool* pool) {
  if (n <= 0 || w.rows <= 0) return;
  const MatRef m = ToMat(w);
  const KernelTable& k = internal::ActiveKernels();
  ForRange(pool, w.rows, RowGrain(n * w.cols),
           [&](int64_t r0, int64_t r1) { k.linear_rows(x, n, m, r0, r1, y); });
}

void AddBias(float* y, int64_t n, const WeightView& bias) {
  if (!bias.present()) return;
  const MatRef b = ToMat(bias);
  const int64_t dim = bias.num_elements();
  const KernelTable& k = internal::ActiveKernels();
  for (int64_t i = 0; i < n; ++i) k.add_converted(b.data, b.type, dim, y + i * dim);
}

void RmsNorm(const float* x, int64_t n, int64_t dim, const WeightView& weight, float eps,
             float* out) {
  MOE_CHECK_MSG(weight.num_elements() == dim, "RmsNorm: weight has {} elements, dim is {}",
                weight.num_elements(), dim);
  const MatRef w = ToMat(weight);
  const KernelTable& k = internal::ActiveKernels();
  for (int64_t i = 0; i < n; ++i) k.rms_norm_row(x + i * dim, dim, w, eps, out + i * dim);
}

void ApplyRope(float* x, int64_t n, int64_t num_heads, int64_t head_dim, const int64_t* positions,
               double theta) {
  MOE_CHECK_MSG(head_dim % 2 == 0, "ApplyRope: head_dim {} is odd", head_dim);
  const int64_t half = head_dim / 2;
  // Angles are formed exactly as Hugging Face's fp32 rotary embedding forms them:
  // inv_freq = 1 / theta^(2i/d) rounded to fp32, angle = fp32(position) * inv_freq rounded to
  // fp32. At position 4096 one fp32 ulp of the angle is 5e-4 rad, so computing the angle more
  // exactly (in double) would move cos/sin away from PyTorch's by far more than their own
  // rounding. cos and sin of that fp32 angle are then evaluated in double and rounded once, and
  // the rotation is x cos - x' sin in fp32, like rotate_half.
  for (int64_t t = 0; t < n; ++t) {
    const float pos = static_cast<float>(positions[t]);
    float* xt = x + t * num_heads * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
      const float freq = static_cast<float>(std::pow(theta, static_cast<double>(exponent)));
      const float inv_freq = 1.0f / freq;
      const float angle = pos * inv_freq;
      const float c = static_cast<float>(std::cos(static_cast<double>(angle)));
      const float s = static_cast<float>(std::sin(static_cast<double>(angle)));
      for (int64_t h = 0; h < num_heads; ++h) {
        float* xh = xt + h * head_dim;
        const float a = xh[i];
        const float b = xh[i + half];
        xh[i] = a * c - b * s;
        xh[i + half] = b * c + a * s;
      }
    }
  }
}

void EmbeddingGather(const WeightView& table, const int32_t* ids, int64_t n, float* out) {
  const MatRef m = ToMat(table);
  const KernelTable& k = internal::ActiveKernels();
  const size_t row_bytes = static_cast<size_t>(table.cols) * DTypeSize(table.dtype);
  for (int64_t i = 0; i < n; ++i) {
    MOE_CHECK_MSG(ids[i] >= 0 && ids[i] < table.rows, "EmbeddingGather: id {} not in [0, {})",
                  ids[i], table.rows);
    const void* row =
        static_cast<const std::byte*>(m.data) + static_cast<size_t>(ids[i]) * row_bytes;
    k.convert(row, m.type, table.cols, out + i * table.cols);
  }
}

void Attention(const float* q, int64_t n, int64_t start, const float* k_cache, const float* v_cache,
               int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, int64_t sliding_window,
               float* out, float* scratch, ThreadPool* pool) {
  if (n <= 0 || num_heads <= 0) return;
  MOE_CHECK_MSG(num_kv_heads > 0 && num_heads % num_kv_heads == 0,
                "Attention: {} heads not a multiple of {} kv heads", num_heads, num_kv_heads);
  const int64_t group = num_heads / num_kv_heads;
  const int64_t items = n * num_heads;  // (token, head) pairs
  const int64_t kv_stride = num_kv_heads * head_dim;
  const int64_t per_slot = start + n;  // scratch floats per thread
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const KernelTable& k = internal::ActiveKernels();

  // Work goes to one "slot" per thread, and slot s owns scratch[s * per_slot, ...): a slot is
  // handed to exactly one fn call whatever the chunking, so scratch is never shared. Items are
  // dealt round-robin (item = slot, slot + slots, ...): later tokens attend to more keys, and
  // dealing spreads them evenly.
  int64_t slots = pool == nullptr ? 1 : pool->num_threads();
  if (slots > items) slots = items;
  // Below ~64K multiply-adds in all, one thread is faster.
  if (items * (start + n) * head_dim < (int64_t{1} << 16)) slots = 1;
  auto run_slots = [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      float* scores = scratch + s * per_slot;
      for (int64_t item = s; item < items; item += slots) {
        const int64_t i = item / num_heads;
        const int64_t h = item % num_heads;
        const int64_t p = start + i;
        int64_t lo = 0;
        if (sliding_window > 0 && p - sliding_window + 1 > 0) lo = p - sliding_window + 1;
        const int64_t kv = h / group;
        const int64_t row = i * num_heads + h;
        k.attention_row(q + row * head_dim, k_cache + kv * head_dim, v_cache + kv * head_dim,
                        kv_stride, head_dim, lo, p, scale, scores, out + row * head_dim);
      }
    }
  };
  ForRange(slots > 1 ? pool : nullptr, slots, 1, run_slots);
}

void TopKSoftmax(const float* logits, int64_t n, int64_t num_experts, int64_t k, bool renormalize,
                 int32_t* ids_out, float* weights_out) {
  MOE_CHECK_MSG(k >= 1 && k <= num_experts, "TopKSoftmax: k = {} with {} experts", k, num_experts);
  // Probabilities go to a stack buffer for the usual expert counts; beyond it they are
  // recomputed on demand (same function, same values).
  constexpr int64_t kMaxBuffered = 1024;
  float probs[kMaxBuffered];
  const bool buffered = num_experts <= kMaxBuffered;
  for (int64_t t = 0; t < n; ++t) {
    const float* l = logits + t * num_experts;
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < num_experts; ++e) max_logit = std::fmax(max_logit, l[e]);
    float sum = 0.0f;
    for (int64_t e = 0; e < num_experts; ++e) sum += std::exp(l[e] - max_logit);
    auto prob = [&](int64_t e) { return buffered ? probs[e] : std::exp(l[e] - max_logit) / sum; };
    if (buffered) {
      for (int64_t e = 0; e < num_experts; ++e) probs[e] = std::exp(l[e] - max_logit) / sum;
    }
    // k passes of selection in (probability desc, id asc) order: each pass takes the best
    // expert that ranks strictly after the previous pick, so no "taken" set is needed.
    int32_t* ids = ids_out + t * k;
    float* weights = weights_out + t * k;
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      float best_p = 0.0f;
      for (int64_t e = 0; e < num_experts; ++e) {
        const float p = prob(e);
        if (j > 0) {
          const float prev_p = weights[j - 1];
          const bool after_prev = p < prev_p || (p == prev_p && e > ids[j - 1]);
          if (!after_prev) continue;
        }
        if (best < 0 || p > best_p) {
          best = e;
          best_p = p;
        }
      }
      if (best < 0) {
        // Only with NaN probabilities (NaN logits): take the lowest id not yet picked.
        for (int64_t e = 0; e < num_experts && best < 0; ++e) {
          bool taken = false;
          for (int64_t i = 0; i < j; ++i) taken = taken || ids[i] == e;
          if (!taken) best = e;
        }
        best_p = prob(best);
      }
      ids[j] = static_cast<int32_t>(best);
      weights[j] = best_p;
    }
    if (renormalize) {
      float total = 0.0f;
      for (int64_t j = 0; j < k; ++j) total += weights[j];
      for (int64_t j = 0; j < k; ++j) weights[j] /= total;
    }
  }
}

void ExpertFfn(const float* x, int64_t n, const WeightView& gate, const WeightView& up,
               const WeightView& down, float* out, float* scratch, ThreadPool* pool) {
  if (n <= 0) return;
  const int64_t inter = gate.rows;
  const int64_t hidden = gate.cols;
  MOE_CHECK_MSG(up.rows == inter && up.cols == hidden && down.rows == hidden && down.cols == inter,
                "ExpertFfn: shapes gate [{}, {}], up [{}, {}], down [{}, {}]", gate.rows, gate.cols,
                up.rows, up.cols, down.rows, down.cols);
  const MatRef g = ToMat(gate);
  const MatRef u = ToMat(up);
  const MatRef d = ToMat(down);
  const KernelTable& k = internal::ActiveKernels();
  float* gbuf = scratch;              // [n, inter]: gate, then the activation in place
  float* ubuf = scratch + n * inter;  // [n, inter]: up
  // Gate, up and the activation of a range of intermediate rows in one pass per thread: no
  // synchronisation between them, and the activation reads g and u while they are in cache.
  ForRange(pool, inter, RowGrain(2 * n * hidden), [&](int64_t r0, int64_t r1) {
    k.linear_rows(x, n, g, r0, r1, gbuf);
    k.linear_rows(x, n, u, r0, r1, ubuf);
    for (int64_t t = 0; t < n; ++t) {
      k.swiglu(gbuf + t * inter + r0, ubuf + t * inter + r0, r1 - r0, gbuf + t * inter + r0);
    }
  });
  ForRange(pool, hidden, RowGrain(n * inter),
           [&](int64_t r0, int64_t r1) { k.linear_rows(gbuf, n, d, r0, r1, out); });
}

void ScaledAdd(const float* y, const float* scale, int64_t n, int64_t dim, float* out) {
  const KernelTable& k = internal::ActiveKernels();
  for (int64_t i = 0; i < n; ++i) k.scaled_add(y + i * dim, scale[i], dim, out + i * dim);
}

}  // namespace moe::cpu
