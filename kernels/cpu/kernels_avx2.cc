// AVX2/FMA/F16C implementations of the kernel table (kernel_table.h). This is the only file
// compiled with -mavx2 -mfma -mf16c; cpu_kernels.cc calls into it only after checking the CPU.
//
// Rule for this file: everything except the table is in an anonymous namespace, and it calls no
// inline function or template of a shared header (std::min, std::exp, WeightView members...).
// Such functions are emitted as weak symbols; the linker keeps one copy per program and could
// keep this file's AVX2-compiled copy for the portable code of other files, which would then
// fault on a CPU without AVX2. C library functions (expf, sqrtf) and intrinsics are safe.
//
// Linear, the hot kernel, has three shapes:
//  * n <= kGemvMaxTokens (decode): memory-bound. A tile of a few weight rows x all n tokens is
//    accumulated straight from the stored weights (bf16 -> fp32 is a widen and a shift in
//    registers, f16 uses F16C), one vector accumulator per (row, token) over the whole row, with
//    software prefetch running ahead of the weight stream.
//  * small batches (up to kDirectMaxTokens): the same loop with a 3-row x 4-token register tile
//    per group of 4 tokens; the rows, streamed from memory for the first group, stay in L1 for
//    the others. Per 8 columns the tile loads 3 + 4 vectors for 12 FMAs, so the FMA units, not
//    loads, are the limit.
//  * large batches (prefill): weight rows are taken a block at a time (kRowBlock rows x kKc
//    columns), converted to fp32 once into a padded stack buffer, and every token is multiplied
//    against the block with the same 3 x 4 tile: x is then read per block of columns, not per
//    3 rows. (Software prefetch of the next block measured no gain here.)
// Each weight byte is read from memory once per call in all three. Every (row, token) sum is
// accumulated and reduced in a fixed order that depends only on (n, cols), so results do not
// depend on how rows were split across threads.
#include <immintrin.h>
#include <math.h>

#include <cstdint>

#include "kernels/cpu/kernel_table.h"

namespace moe::cpu::internal {
namespace {

constexpr int64_t kGemvMaxTokens = 4;

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- loading weights as fp32 ----------------------------------------------------------------

struct F32 {
  using Elem = float;
};
struct Bf16 {
  using Elem = uint16_t;
};
struct F16 {
  using Elem = uint16_t;
};

template <class D>
__m256 Load8(const typename D::Elem* p);
template <>
inline __m256 Load8<F32>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
inline __m256 Load8<Bf16>(const uint16_t* p) {
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place.
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <>
inline __m256 Load8<F16>(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <class D>
float Load1(const typename D::Elem* p);
template <>
inline float Load1<F32>(const float* p) {
  return *p;
}
template <>
inline float Load1<Bf16>(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}
template <>
inline float Load1<F16>(const uint16_t* p) {
  return _cvtsh_ss(*p);
}

inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Mask of the first `count` (0..8) lanes.
inline __m256i TailMask(int64_t count) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), lanes);
}

// exp(x) for fp32 lanes: Cephes' range reduction x = n ln2 + r, |r| <= ln2/2, and a degree-5
// polynomial; ~1 ulp over the clamped range, 0 below -88.38, and no inf (inputs clamped to
// +88.38: callers only need exp of scores minus their max, and silu's exp(-g)).
inline __m256 Exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_round_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i pow2n =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}

// ---- Linear ---------------------------------------------------------------------------------

// The four lane sums of a, b, c, d, each in the order ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)).
inline __m128 Hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// One lane sum in the same order as Hsum4, so grouped and single reductions agree bit for bit.
inline float HsumPairwise(__m256 v) { return _mm_cvtss_f32(Hsum4(v, v, v, v)); }

// res[r * TT + t] = sum_{k < len} w[r * ldw + k] * x[t * ldx + k] for RT rows and TT tokens.
// Each sum is one 8-lane accumulator over the multiple-of-8 part, reduced in pairwise order,
// then the remaining columns fused in one by one: the same roundings for every (r, t).
// With kPrefetch, each step also prefetches the next RT * 8 weight elements' worth of bytes
// from address `pf` on, below pf_end (addresses as integers: they may lie past the weights, and
// prefetching never faults): see GemvRows.
template <class D, int RT, int TT, bool kPrefetch>
inline void DotTile(const typename D::Elem* w, int64_t ldw, const float* x, int64_t ldx,
                    int64_t len, float* res, uintptr_t pf = 0, uintptr_t pf_end = 0) {
  constexpr int64_t kStepBytes = RT * 8 * static_cast<int64_t>(sizeof(typename D::Elem));
  __m256 acc[RT][TT];
#pragma GCC unroll 4
  for (int r = 0; r < RT; ++r) {
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= len; k += 8) {
    if constexpr (kPrefetch) {
#pragma GCC unroll 4
      for (int64_t b = 0; b < kStepBytes; b += 64) {
        if (pf + b < pf_end) _mm_prefetch(reinterpret_cast<const char*>(pf + b), _MM_HINT_T0);
      }
      pf += kStepBytes;
    }
    __m256 wv[RT];
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) wv[r] = Load8<D>(w + r * ldw + k);
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
#pragma GCC unroll 4
      for (int r = 0; r < RT; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RT; ++r) {
    if constexpr (TT == 4) {
      _mm_storeu_ps(res + r * 4, Hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    } else {
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) res[r * TT + t] = HsumPairwise(acc[r][t]);
    }
  }
  for (; k < len; ++k) {
#pragma GCC unroll 4
    for (int r = 0; r < RT; ++r) {
      const float wk = Load1<D>(w + r * ldw + k);
#pragma GCC unroll 4
      for (int t = 0; t < TT; ++t) {
        res[r * TT + t] = __builtin_fmaf(wk, x[t * ldx + k], res[r * TT + t]);
      }
    }
  }
}

// How far ahead (bytes) the decode path prefetches weights. Rows are consecutive in memory, so
// a thread's rows are one contiguous stream; the hardware prefetchers restart at every short
// row (a 1024-column bf16 row is only 2 KiB) and leave the memory pipe half empty. Prefetching
// the bytes 8 KiB ahead of the current row group, at the rate the group is consumed, keeps
// enough lines in flight: +30-40% on 16-bit weights on the development VM. fp32 rows are twice
// as long and stream at full speed without it (prefetching cost them ~10%).
constexpr int64_t kGemvPrefetchBytes = 8192;

// Decode shape: rows [r0, r1) of y = x w^T for TT (= n) tokens, RT rows per tile.
template <class D, int RT, int TT>
void GemvRows(const float* x, const typename D::Elem* w, int64_t cols, int64_t rows, int64_t r0,
              int64_t r1, float* y) {
  constexpr bool kPrefetch = sizeof(typename D::Elem) == 2;
  const uintptr_t pf_end = reinterpret_cast<uintptr_t>(w + r1 * cols);
  float res[RT * TT];
  int64_t r = r0;
  for (; r + RT <= r1; r += RT) {
    const typename D::Elem* wr = w + r * cols;
    DotTile<D, RT, TT, kPrefetch>(wr, cols, x, cols, cols, res,
                                  reinterpret_cast<uintptr_t>(wr) + kGemvPrefetchBytes, pf_end);
    for (int i = 0; i < RT; ++i) {
      for (int t = 0; t < TT; ++t) y[t * rows + r + i] = res[i * TT + t];
    }
  }
  for (; r < r1; ++r) {
    DotTile<D, 1, TT, false>(w + r * cols, cols, x, cols, cols, res);
    for (int t = 0; t < TT; ++t) y[t * rows + r] = res[t];
  }
}

// Small batches (kGemvMaxTokens < n <= kDirectMaxTokens, x at most kDirectMaxXBytes): the
// decode loop extended to every token, a 3-row tile at a time. The first 4-token group streams
// the rows from memory (with prefetch) and the other groups find them in L1, so weights are
// still read from memory once, and loads interleave with FMAs. On the development VM this beat
// the blocked path below at every batch up to 48 (by 1.5x at batch 5-8, where converting a
// block first waits on memory); the blocked path wins from ~128 tokens, or when x no longer
// fits in L2/L3 slices (every 3-row tile re-reads all of x).
constexpr int64_t kDirectMaxTokens = 48;
constexpr int64_t kDirectMaxXBytes = 1 << 20;

template <class D, int RT, int TT>
inline void DirectTile(const float* x, const typename D::Elem* wr, int64_t cols, int64_t rows,
                       float* y, bool prefetch, uintptr_t pf_end) {
  float res[RT * TT];
  if (prefetch) {
    DotTile<D, RT, TT, true>(wr, cols, x, cols, cols, res,
                             reinterpret_cast<uintptr_t>(wr) + kGemvPrefetchBytes, pf_end);
  } else {
    DotTile<D, RT, TT, false>(wr, cols, x, cols, cols, res);
  }
  for (int t = 0; t < TT; ++t) {
    for (int i = 0; i < RT; ++i) y[t * rows + i] = res[i * TT + t];
  }
}

template <class D, int RT>
inline void DirectAllTokens(const float* x, int64_t n, const typename D::Elem* wr, int64_t cols,
                            int64_t rows, float* y, uintptr_t pf_end) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    DirectTile<D, RT, 4>(x + t * cols, wr, cols, rows, y + t * rows, t == 0, pf_end);
  }
  switch (n - t) {
    case 3:
      return DirectTile<D, RT, 3>(x + t * cols, wr, cols, rows, y + t * rows, t == 0, pf_end);
    case 2:
      return DirectTile<D, RT, 2>(x + t * cols, wr, cols, rows, y + t * rows, t == 0, pf_end);
    case 1:
      return DirectTile<D, RT, 1>(x + t * cols, wr, cols, rows, y + t * rows, t == 0, pf_end);
    default:
      return;
  }
}

template <class D>
void DirectRows(const float* x, int64_t n, const typename D::Elem* w, int64_t cols, int64_t rows,
                int64_t r0, int64_t r1, float* y) {
  const uintptr_t pf_end = reinterpret_cast<uintptr_t>(w + r1 * cols);
  int64_t r = r0;
  for (; r + 3 <= r1; r += 3) DirectAllTokens<D, 3>(x, n, w + r * cols, cols, rows, y + r, pf_end);
  for (; r < r1; ++r) DirectAllTokens<D, 1>(x, n, w + r * cols, cols, rows, y + r, pf_end);
}

// ---- batched path ----

// Columns per block, and rows per converted block (a multiple of the 3-row tile). The block
// buffer holds kRowBlock x kKc fp32 weights (~49 KiB of stack: L2-resident while every token
// group passes over it); a 3 x 4 tile then reads 3 weight rows and 4 token rows of kKc columns
// (28 KiB) from L1. A longer kKc means fewer partial-sum reductions per FMA.
constexpr int64_t kKc = 1024;
constexpr int64_t kRowBlock = 12;
// Buffer row stride: 16 floats of padding, so rows are not 4 KiB apart (rows at 4 KiB strides
// share L1 sets and evict each other).
constexpr int64_t kLdb = kKc + 16;

// Stores (first block of columns) or accumulates an RT x TT tile into y (row stride ldy).
template <int RT, int TT>
inline void PutTile(const float* res, bool first, float* y, int64_t ldy) {
  for (int t = 0; t < TT; ++t) {
    for (int i = 0; i < RT; ++i) {
      y[t * ldy + i] = first ? res[i * TT + t] : y[t * ldy + i] + res[i * TT + t];
    }
  }
}

// One group of TT tokens against `rows` fp32 weight rows (row stride ldw), columns [0, len).
template <int TT>
inline void TokenGroup(const float* wp, int64_t ldw, int64_t rows, const float* x, int64_t ldx,
                       int64_t len, bool first, float* y, int64_t ldy) {
  float res[3 * TT];
  int64_t r = 0;
  for (; r + 3 <= rows; r += 3) {
    DotTile<F32, 3, TT, false>(wp + r * ldw, ldw, x, ldx, len, res);
    PutTile<3, TT>(res, first, y + r, ldy);
  }
  if (rows - r == 2) {
    DotTile<F32, 2, TT, false>(wp + r * ldw, ldw, x, ldx, len, res);
    PutTile<2, TT>(res, first, y + r, ldy);
  } else if (rows - r == 1) {
    DotTile<F32, 1, TT, false>(wp + r * ldw, ldw, x, ldx, len, res);
    PutTile<1, TT>(res, first, y + r, ldy);
  }
}

// Converts (or copies, for fp32) rows x len weights into out (row stride ldo).
template <class D>
void ConvertBlock(const typename D::Elem* w, int64_t ldw, int64_t rows, int64_t len, float* out,
                  int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const typename D::Elem* src = w + r * ldw;
    float* dst = out + r * ldo;
    int64_t k = 0;
    for (; k + 8 <= len; k += 8) _mm256_storeu_ps(dst + k, Load8<D>(src + k));
    for (; k < len; ++k) dst[k] = Load1<D>(src + k);
  }
}

// Batched shape: rows [r0, r1) of y = x w^T for n > kGemvMaxTokens tokens.
template <class D>
void GemmRows(const float* x, int64_t n, const typename D::Elem* w, int64_t cols, int64_t rows,
              int64_t r0, int64_t r1, float* y) {
  alignas(64) float buf[kRowBlock * kLdb];
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t block_rows = Min(kRowBlock, r1 - rb);
    for (int64_t k0 = 0; k0 < cols; k0 += kKc) {
      const int64_t len = Min(kKc, cols - k0);
      ConvertBlock<D>(w + rb * cols + k0, cols, block_rows, len, buf, kLdb);
      const bool first = k0 == 0;
      const float* xk = x + k0;
      float* yb = y + rb;
      int64_t t = 0;
      for (; t + 4 <= n; t += 4) {
        TokenGroup<4>(buf, kLdb, block_rows, xk + t * cols, cols, len, first, yb + t * rows, rows);
      }
      switch (n - t) {
        case 3:
          TokenGroup<3>(buf, kLdb, block_rows, xk + t * cols, cols, len, first, yb + t * rows,
                        rows);
          break;
        case 2:
          TokenGroup<2>(buf, kLdb, block_rows, xk + t * cols, cols, len, first, yb + t * rows,
                        rows);
          break;
        case 1:
          TokenGroup<1>(buf, kLdb, block_rows, xk + t * cols, cols, len, first, yb + t * rows,
                        rows);
          break;
        default:
          break;
      }
    }
  }
}

template <class D>
void LinearRowsT(const float* x, int64_t n, const MatRef& w, int64_t r0, int64_t r1, float* y) {
  const auto* data = static_cast<const typename D::Elem*>(w.data);
  const int64_t cols = w.cols;
  const int64_t rows = w.rows;
  if (cols == 0) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t r = r0; r < r1; ++r) y[t * rows + r] = 0.0f;
    }
    return;
  }
  static_assert(kGemvMaxTokens == 4);
  switch (n) {
    case 1:
      return GemvRows<D, 4, 1>(x, data, cols, rows, r0, r1, y);
    case 2:
      return GemvRows<D, 4, 2>(x, data, cols, rows, r0, r1, y);
    case 3:
      return GemvRows<D, 3, 3>(x, data, cols, rows, r0, r1, y);
    case 4:
      return GemvRows<D, 3, 4>(x, data, cols, rows, r0, r1, y);
    default:
      if (n <= kDirectMaxTokens &&
          n * cols * static_cast<int64_t>(sizeof(float)) <= kDirectMaxXBytes) {
        return DirectRows<D>(x, n, data, cols, rows, r0, r1, y);
      }
      return GemmRows<D>(x, n, data, cols, rows, r0, r1, y);
  }
}

void LinearRows(const float* x, int64_t n, const MatRef& w, int64_t r0, int64_t r1, float* y) {
  switch (w.type) {
    case ElemType::kF32:
      return LinearRowsT<F32>(x, n, w, r0, r1, y);
    case ElemType::kBF16:
      return LinearRowsT<Bf16>(x, n, w, r0, r1, y);
    case ElemType::kF16:
      return LinearRowsT<F16>(x, n, w, r0, r1, y);
  }
}

// ---- element-wise ---------------------------------------------------------------------------

// Every element-wise kernel handles its last partial vector by running the full-vector code on
// a zero-padded copy: an element's result then does not depend on whether it fell in the tail,
// which is what keeps results independent of the range split.

inline __m256 Silu8(__m256 g) {
  const __m256 e = Exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
  return _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

void Swiglu(const float* g, const float* u, int64_t count, float* h) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 s = Silu8(_mm256_loadu_ps(g + i));
    _mm256_storeu_ps(h + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  if (i < count) {
    const __m256i mask = TailMask(count - i);
    const __m256 s = Silu8(_mm256_maskload_ps(g + i, mask));
    _mm256_maskstore_ps(h + i, mask, _mm256_mul_ps(s, _mm256_maskload_ps(u + i, mask)));
  }
}

// x[i] as fp32 for 8 lanes from i (i + 8 <= count) or the masked tail.
inline __m256 LoadConverted8(const void* src, ElemType type, int64_t i) {
  switch (type) {
    case ElemType::kF32:
      return Load8<F32>(static_cast<const float*>(src) + i);
    case ElemType::kBF16:
      return Load8<Bf16>(static_cast<const uint16_t*>(src) + i);
    case ElemType::kF16:
      return Load8<F16>(static_cast<const uint16_t*>(src) + i);
  }
  return _mm256_setzero_ps();
}

inline float LoadConverted1(const void* src, ElemType type, int64_t i) {
  switch (type) {
    case ElemType::kF32:
      return Load1<F32>(static_cast<const float*>(src) + i);
    case ElemType::kBF16:
      return Load1<Bf16>(static_cast<const uint16_t*>(src) + i);
    case ElemType::kF16:
      return Load1<F16>(static_cast<const uint16_t*>(src) + i);
  }
  return 0.0f;
}

void Convert(const void* src, ElemType type, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, LoadConverted8(src, type, i));
  for (; i < count; ++i) out[i] = LoadConverted1(src, type, i);  // conversions are exact
}

void AddConverted(const void* src, ElemType type, int64_t count, float* y) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), LoadConverted8(src, type, i)));
  }
  for (; i < count; ++i) y[i] += LoadConverted1(src, type, i);  // one exact rounding either way
}

void ScaledAdd(const float* y, float scale, int64_t count, float* out) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(s, _mm256_loadu_ps(y + i), _mm256_loadu_ps(out + i)));
  }
  for (; i < count; ++i) out[i] = __builtin_fmaf(scale, y[i], out[i]);  // same fused rounding
}

// Sum of squares: 8-lane accumulators over full vectors, then the rest in order.
inline float SumSquares(const float* x, int64_t dim) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= dim; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  if (i + 8 <= dim) {
    const __m256 v0 = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    i += 8;
  }
  float s = Hsum(_mm256_add_ps(a0, a1));
  for (; i < dim; ++i) s = __builtin_fmaf(x[i], x[i], s);
  return s;
}

void RmsNormRow(const float* x, int64_t dim, const MatRef& w, float eps, float* out) {
  const float inv = 1.0f / sqrtf(SumSquares(x, dim) / static_cast<float>(dim) + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    const __m256 xs = _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(xs, LoadConverted8(w.data, w.type, i)));
  }
  for (; i < dim; ++i) out[i] = (x[i] * inv) * LoadConverted1(w.data, w.type, i);
}

// ---- attention ------------------------------------------------------------------------------

inline float Dot(const float* a, const float* b, int64_t len) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
  }
  if (i + 8 <= len) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    i += 8;
  }
  float s = Hsum(_mm256_add_ps(a0, a1));
  for (; i < len; ++i) s = __builtin_fmaf(a[i], b[i], s);
  return s;
}

void AttentionRow(const float* q, const float* k, const float* v, int64_t kv_stride,
                  int64_t head_dim, int64_t lo, int64_t hi, float scale, float* scores,
                  float* out) {
  const int64_t m = hi - lo + 1;
  const float* kj = k + lo * kv_stride;
  const float* vj = v + lo * kv_stride;
  float max_score = -__builtin_inff();
  for (int64_t j = 0; j < m; ++j) {
    const float s = Dot(q, kj + j * kv_stride, head_dim) * scale;
    scores[j] = s;
    if (s > max_score) max_score = s;
  }
  // Probabilities (unnormalised) and their sum.
  const __m256 vmax = _mm256_set1_ps(max_score);
  __m256 vsum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vmax));
    _mm256_storeu_ps(scores + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (j < m) {
    const __m256i mask = TailMask(m - j);
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_maskload_ps(scores + j, mask), vmax));
    _mm256_maskstore_ps(scores + j, mask, e);
    vsum = _mm256_add_ps(vsum, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
  }
  const __m256 inv = _mm256_set1_ps(1.0f / Hsum(vsum));
  // out = sum_j p_j v_j, 32 dimensions (4 accumulators) at a time, then 8, then the rest.
  int64_t d = 0;
  for (; d + 32 <= head_dim; d += 32) {
    __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps();
    __m256 o2 = _mm256_setzero_ps(), o3 = _mm256_setzero_ps();
    for (int64_t i = 0; i < m; ++i) {
      const __m256 p = _mm256_broadcast_ss(scores + i);
      const float* vi = vj + i * kv_stride + d;
      o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vi), o0);
      o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vi + 8), o1);
      o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vi + 16), o2);
      o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vi + 24), o3);
    }
    _mm256_storeu_ps(out + d, _mm256_mul_ps(o0, inv));
    _mm256_storeu_ps(out + d + 8, _mm256_mul_ps(o1, inv));
    _mm256_storeu_ps(out + d + 16, _mm256_mul_ps(o2, inv));
    _mm256_storeu_ps(out + d + 24, _mm256_mul_ps(o3, inv));
  }
  for (; d < head_dim; d += 8) {
    const __m256i mask = TailMask(Min(8, head_dim - d));
    __m256 o = _mm256_setzero_ps();
    for (int64_t i = 0; i < m; ++i) {
      const __m256 p = _mm256_broadcast_ss(scores + i);
      o = _mm256_fmadd_ps(p, _mm256_maskload_ps(vj + i * kv_stride + d, mask), o);
    }
    _mm256_maskstore_ps(out + d, mask, _mm256_mul_ps(o, inv));
  }
}

}  // namespace

const KernelTable kAvx2Kernels = {
    "avx2", LinearRows, Swiglu, RmsNormRow, Convert, AddConverted, ScaledAdd, AttentionRow,
};

}  // namespace moe::cpu::internal
