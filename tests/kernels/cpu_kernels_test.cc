#include "kernels/cpu/cpu_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/dispatch.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/kernel_test_util.h"

namespace moe::cpu {
namespace {

using ::moe::kernel_testing::BitwiseEqual;
using ::moe::kernel_testing::Close;
using ::moe::kernel_testing::kF32Rel;
using ::moe::kernel_testing::MakeWeight;
using ::moe::kernel_testing::RandomVector;
using ::moe::kernel_testing::TestWeight;
using ::moe::kernel_testing::ToDouble;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

// ---- references (double accumulation, written for clarity) ----------------------------------

std::vector<double> RefLinear(const std::vector<float>& x, int64_t n, const TestWeight& w) {
  std::vector<double> y(static_cast<size_t>(n * w.rows));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double s = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(x[t * w.cols + c]) * w.at(r, c);
      y[t * w.rows + r] = s;
    }
  }
  return y;
}

double Silu(double g) { return g / (1.0 + std::exp(-g)); }

std::vector<double> RefExpertFfn(const std::vector<float>& x, int64_t n, const TestWeight& gate,
                                 const TestWeight& up, const TestWeight& down) {
  const std::vector<double> g = RefLinear(x, n, gate);
  const std::vector<double> u = RefLinear(x, n, up);
  const int64_t inter = gate.rows;
  std::vector<double> out(static_cast<size_t>(n * down.rows));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < down.rows; ++r) {
      double s = 0.0;
      for (int64_t i = 0; i < inter; ++i) {
        const size_t gi = static_cast<size_t>(t * inter + i);
        s += Silu(g[gi]) * u[gi] * down.at(r, i);
      }
      out[t * down.rows + r] = s;
    }
  }
  return out;
}

// q [n, heads, dim] at positions start..start+n-1 over caches [start + n, kv_heads, dim].
std::vector<double> RefAttention(const std::vector<float>& q, int64_t n, int64_t start,
                                 const std::vector<float>& k, const std::vector<float>& v,
                                 int64_t heads, int64_t kv_heads, int64_t dim, int64_t window) {
  std::vector<double> out(q.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = start + i;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / (heads / kv_heads);
      std::vector<double> s;
      std::vector<int64_t> pos;
      for (int64_t j = 0; j <= p; ++j) {
        if (window > 0 && p - j >= window) continue;
        double d = 0.0;
        for (int64_t e = 0; e < dim; ++e) {
          d += double(q[(i * heads + h) * dim + e]) * k[(j * kv_heads + kvh) * dim + e];
        }
        s.push_back(d / std::sqrt(double(dim)));
        pos.push_back(j);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0.0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t e = 0; e < dim; ++e) {
        double o = 0.0;
        for (size_t a = 0; a < s.size(); ++a)
          o += s[a] / sum * v[(pos[a] * kv_heads + kvh) * dim + e];
        out[(i * heads + h) * dim + e] = o;
      }
    }
  }
  return out;
}

// ---- fixtures: every test runs on the AVX2 path (where the CPU has it) and the scalar path ---

enum class Path { kAvx2, kScalar };

class KernelsTest : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    if (GetParam() == Path::kAvx2 && !CpuSupportsAvx2Kernels()) {
      GTEST_SKIP() << "no AVX2/FMA on this CPU (or not an x86-64 build)";
    }
    ForceScalarKernelsForTesting(GetParam() == Path::kScalar);
  }
  void TearDown() override { ForceScalarKernelsForTesting(false); }
};

std::string PathName(const ::testing::TestParamInfo<Path>& info) {
  return info.param == Path::kAvx2 ? "Avx2" : "Scalar";
}

INSTANTIATE_TEST_SUITE_P(Paths, KernelsTest, ::testing::Values(Path::kAvx2, Path::kScalar),
                         PathName);

TEST_P(KernelsTest, UsingAvx2ReflectsThePath) { EXPECT_EQ(UsingAvx2(), GetParam() == Path::kAvx2); }

// ---- Linear ---------------------------------------------------------------------------------

TEST_P(KernelsTest, LinearMatchesReference) {
  struct Shape {
    int64_t rows, cols;
  };
  // Odd column counts (tails of the 8-wide vectors), rows that are not multiples of the 3- or
  // 4-row tiles or of the 24-row blocks, and columns crossing the 512-column blocks.
  const Shape shapes[] = {{37, 65}, {50, 1030}, {1, 8}, {13, 7}, {25, 512}, {4, 1}};
  uint32_t seed = 1;
  for (DType dtype : kAllDTypes) {
    for (const Shape& s : shapes) {
      const TestWeight w = MakeWeight(dtype, s.rows, s.cols, seed++);
      // Decode (n <= 4), small-batch (<= 48) and blocked (larger) paths.
      for (int64_t n : {1, 2, 3, 4, 5, 7, 33, 49, 65}) {
        SCOPED_TRACE(kernel_testing::DTypeLabel(dtype) + " rows " + std::to_string(s.rows) +
                     " cols " + std::to_string(s.cols) + " n " + std::to_string(n));
        const std::vector<float> x = RandomVector(static_cast<size_t>(n * s.cols), seed++);
        std::vector<float> y(static_cast<size_t>(n * s.rows), kNan);
        Linear(x.data(), n, w.view(), y.data(), nullptr);
        EXPECT_TRUE(Close(y, RefLinear(x, n, w), kF32Rel));
      }
    }
  }
}

TEST_P(KernelsTest, LinearWithZeroColumnsWritesZeros) {
  const TestWeight w = MakeWeight(DType::kBF16, 5, 0, 1);
  for (int64_t n : {1, 9}) {
    std::vector<float> y(static_cast<size_t>(n * 5), kNan);
    Linear(nullptr, n, w.view(), y.data(), nullptr);
    for (float v : y) EXPECT_EQ(v, 0.0f);
  }
}

// 1100 columns cross the 1024-column blocks of the batched path; 301 rows split unevenly.
TEST_P(KernelsTest, LinearIsIdenticalForAnyThreadCount) {
  ThreadPool pool1(1), pool2(2), pool3(3);
  uint32_t seed = 100;
  for (DType dtype : kAllDTypes) {
    const TestWeight w = MakeWeight(dtype, 301, 1100, seed++);
    for (int64_t n : {1, 2, 3, 4, 7, 33, 50}) {
      SCOPED_TRACE(kernel_testing::DTypeLabel(dtype) + " n " + std::to_string(n));
      const std::vector<float> x = RandomVector(static_cast<size_t>(n * 1100), seed++);
      std::vector<float> y0(static_cast<size_t>(n * 301)), y1 = y0, y2 = y0, y3 = y0;
      Linear(x.data(), n, w.view(), y0.data(), nullptr);
      Linear(x.data(), n, w.view(), y1.data(), &pool1);
      Linear(x.data(), n, w.view(), y2.data(), &pool2);
      Linear(x.data(), n, w.view(), y3.data(), &pool3);
      EXPECT_TRUE(BitwiseEqual(y0, y1));
      EXPECT_TRUE(BitwiseEqual(y0, y2));
      EXPECT_TRUE(BitwiseEqual(y0, y3));
      EXPECT_TRUE(Close(y3, RefLinear(x, n, w), kF32Rel));
    }
  }
}

// ---- ExpertFfn ------------------------------------------------------------------------------

TEST_P(KernelsTest, ExpertFfnMatchesReferenceAndIsThreadInvariant) {
  ThreadPool pool(3);
  uint32_t seed = 200;
  struct Shape {
    int64_t hidden, inter;
  };
  for (const Shape s : {Shape{40, 70}, Shape{64, 130}}) {
    for (DType dtype : kAllDTypes) {
      const TestWeight gate = MakeWeight(dtype, s.inter, s.hidden, seed++);
      const TestWeight up = MakeWeight(dtype, s.inter, s.hidden, seed++);
      const TestWeight down = MakeWeight(dtype, s.hidden, s.inter, seed++);
      for (int64_t n : {1, 3, 7, 33, 50}) {
        SCOPED_TRACE(kernel_testing::DTypeLabel(dtype) + " H " + std::to_string(s.hidden) + " n " +
                     std::to_string(n));
        const std::vector<float> x = RandomVector(static_cast<size_t>(n * s.hidden), seed++, 2.0f);
        std::vector<float> scratch(static_cast<size_t>(2 * n * s.inter), kNan);
        std::vector<float> out(static_cast<size_t>(n * s.hidden), kNan), out3 = out;
        ExpertFfn(x.data(), n, gate.view(), up.view(), down.view(), out.data(), scratch.data(),
                  nullptr);
        ExpertFfn(x.data(), n, gate.view(), up.view(), down.view(), out3.data(), scratch.data(),
                  &pool);
        EXPECT_TRUE(Close(out, RefExpertFfn(x, n, gate, up, down), kF32Rel));
        EXPECT_TRUE(BitwiseEqual(out, out3));
      }
    }
  }
}

// ---- small kernels --------------------------------------------------------------------------

TEST_P(KernelsTest, RmsNormMatchesReference) {
  uint32_t seed = 300;
  for (DType dtype : kAllDTypes) {
    for (int64_t dim : {1, 7, 8, 64, 65, 4097}) {
      SCOPED_TRACE(kernel_testing::DTypeLabel(dtype) + " dim " + std::to_string(dim));
      const int64_t n = 3;
      const TestWeight w = MakeWeight(dtype, 1, dim, seed++);
      std::vector<float> x = RandomVector(static_cast<size_t>(n * dim), seed++, 3.0f);
      std::vector<double> ref(x.size());
      for (int64_t i = 0; i < n; ++i) {
        double ss = 0.0;
        for (int64_t d = 0; d < dim; ++d) ss += double(x[i * dim + d]) * x[i * dim + d];
        const double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
        for (int64_t d = 0; d < dim; ++d) ref[i * dim + d] = x[i * dim + d] * inv * w.at(0, d);
      }
      std::vector<float> out(x.size(), kNan);
      RmsNorm(x.data(), n, dim, w.view(), 1e-6f, out.data());
      EXPECT_TRUE(Close(out, ref, kF32Rel));
      RmsNorm(x.data(), n, dim, w.view(), 1e-6f, x.data());  // in place
      EXPECT_TRUE(BitwiseEqual(x, out));
    }
  }
}

TEST_P(KernelsTest, AddBiasAndScaledAdd) {
  uint32_t seed = 400;
  for (DType dtype : kAllDTypes) {
    for (int64_t dim : {1, 7, 37, 64}) {
      SCOPED_TRACE(kernel_testing::DTypeLabel(dtype) + " dim " + std::to_string(dim));
      const int64_t n = 3;
      const TestWeight bias = MakeWeight(dtype, 1, dim, seed++);
      std::vector<float> y = RandomVector(static_cast<size_t>(n * dim), seed++);
      std::vector<double> ref(y.size());
      for (size_t i = 0; i < y.size(); ++i) ref[i] = double(y[i]) + bias.values[i % dim];
      AddBias(y.data(), n, bias.view());
      EXPECT_TRUE(Close(y, ref, 1e-6));

      const std::vector<float> src = RandomVector(y.size(), seed++);
      const std::vector<float> scale = {0.5f, -2.0f, 0.125f};
      for (size_t i = 0; i < y.size(); ++i) ref[i] = double(y[i]) + double(scale[i / dim]) * src[i];
      ScaledAdd(src.data(), scale.data(), n, dim, y.data());
      EXPECT_TRUE(Close(y, ref, 1e-6));
    }
  }
  // An absent bias is a no-op.
  std::vector<float> y = {1.0f, 2.0f};
  AddBias(y.data(), 1, WeightView{});
  EXPECT_EQ(y, (std::vector<float>{1.0f, 2.0f}));
}

TEST_P(KernelsTest, EmbeddingGatherIsExact) {
  uint32_t seed = 500;
  for (DType dtype : kAllDTypes) {
    for (int64_t dim : {1, 13, 64}) {
      const TestWeight table = MakeWeight(dtype, 10, dim, seed++);
      const std::vector<int32_t> ids = {3, 0, 9, 3, 7};
      std::vector<float> out(ids.size() * dim, kNan);
      EmbeddingGather(table.view(), ids.data(), static_cast<int64_t>(ids.size()), out.data());
      for (size_t i = 0; i < ids.size(); ++i) {
        for (int64_t d = 0; d < dim; ++d) ASSERT_EQ(out[i * dim + d], table.at(ids[i], d));
      }
    }
  }
}

// ---- RoPE -----------------------------------------------------------------------------------

TEST_P(KernelsTest, RopeRotatesHalvesAsHuggingFace) {
  // head_dim 4, theta 1: every inv_freq is 1, so the angle is the position. Pairs are (0, 2)
  // and (1, 3) (rotate_half), not adjacent elements.
  std::vector<float> x = {1, 2, 3, 4};
  const int64_t pos = 1;
  ApplyRope(x.data(), 1, 1, 4, &pos, 1.0);
  const double c = std::cos(1.0), s = std::sin(1.0);
  EXPECT_TRUE(Close(x, {1 * c - 3 * s, 2 * c - 4 * s, 3 * c + 1 * s, 4 * c + 2 * s}, 1e-6));
  // Position 0 is the identity.
  std::vector<float> y = {1, 2, 3, 4};
  const int64_t zero = 0;
  ApplyRope(y.data(), 1, 1, 4, &zero, 10000.0);
  EXPECT_EQ(y, (std::vector<float>{1, 2, 3, 4}));
}

TEST_P(KernelsTest, RopeMatchesExactAnglesAtSmallPositions) {
  const std::vector<int64_t> positions = {0, 1, 2, 17, 63};
  const int64_t n = static_cast<int64_t>(positions.size());
  const int64_t heads = 3;
  for (double theta : {10000.0, 1000000.0}) {
    for (int64_t dim : {2, 8, 64, 128}) {
      SCOPED_TRACE("theta " + std::to_string(theta) + " dim " + std::to_string(dim));
      std::vector<float> x = RandomVector(static_cast<size_t>(n * heads * dim), 600);
      std::vector<double> ref(x.size());
      const int64_t half = dim / 2;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t i = 0; i < half; ++i) {
            const double angle = positions[t] * std::pow(theta, -2.0 * i / dim);
            const size_t a = static_cast<size_t>((t * heads + h) * dim + i);
            const size_t b = a + static_cast<size_t>(half);
            ref[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
            ref[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
          }
        }
      }
      ApplyRope(x.data(), n, heads, dim, positions.data(), theta);
      // fp32 rounding of inv_freq and of the angle: ~1.2e-7 relative of an angle <= 63.
      EXPECT_TRUE(Close(x, ref, 1e-5));
    }
  }
}

TEST_P(KernelsTest, RopeMatchesPytorchFp32AnglesAtLargePositions) {
  // PyTorch's rotary tables: inv_freq and position * inv_freq are fp32 tensors, so the angle
  // is rounded to fp32 before cos/sin (at position 32767 that rounding is ~1e-3 rad). The
  // kernel must reproduce those angles, not the exact ones.
  const std::vector<int64_t> positions = {4095, 32767, 100000};
  const int64_t n = 3, heads = 2, dim = 128, half = 64;
  const double theta = 1000000.0;
  std::vector<float> x = RandomVector(static_cast<size_t>(n * heads * dim), 601);
  std::vector<double> ref(x.size());
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float inv_freq =
          1.0f / static_cast<float>(std::pow(theta, double(float(2 * i) / float(dim))));
      const float angle = static_cast<float>(positions[t]) * inv_freq;
      const double c = std::cos(double(angle)), s = std::sin(double(angle));
      for (int64_t h = 0; h < heads; ++h) {
        const size_t a = static_cast<size_t>((t * heads + h) * dim + i);
        const size_t b = a + static_cast<size_t>(half);
        ref[a] = x[a] * c - x[b] * s;
        ref[b] = x[b] * c + x[a] * s;
      }
    }
  }
  ApplyRope(x.data(), n, heads, dim, positions.data(), theta);
  EXPECT_TRUE(Close(x, ref, 1e-6));
}

// ---- Attention ------------------------------------------------------------------------------

TEST_P(KernelsTest, AttentionMatchesReference) {
  struct Heads {
    int64_t heads, kv_heads, dim;
  };
  struct Span {
    int64_t start, n;
  };
  ThreadPool pool1(1), pool3(3);
  uint32_t seed = 700;
  // GQA ratios 1, 2, 3 and MQA; head dims with and without vector tails; the last case is big
  // enough to be split over threads.
  for (const Heads hd :
       {Heads{4, 4, 8}, Heads{4, 2, 12}, Heads{6, 2, 64}, Heads{2, 1, 37}, Heads{8, 4, 64}}) {
    for (const Span sp : {Span{0, 1}, Span{0, 9}, Span{7, 1}, Span{5, 6}, Span{40, 24}}) {
      for (int64_t window : {0, 1, 3, 100}) {
        SCOPED_TRACE("heads " + std::to_string(hd.heads) + "/" + std::to_string(hd.kv_heads) +
                     " dim " + std::to_string(hd.dim) + " start " + std::to_string(sp.start) +
                     " n " + std::to_string(sp.n) + " window " + std::to_string(window));
        const int64_t total = sp.start + sp.n;
        const std::vector<float> q =
            RandomVector(static_cast<size_t>(sp.n * hd.heads * hd.dim), seed++, 2.0f);
        const std::vector<float> k =
            RandomVector(static_cast<size_t>(total * hd.kv_heads * hd.dim), seed++, 2.0f);
        const std::vector<float> v =
            RandomVector(static_cast<size_t>(total * hd.kv_heads * hd.dim), seed++);
        std::vector<float> scratch(static_cast<size_t>(3 * total), kNan);
        std::vector<float> out(q.size(), kNan), out1 = out, out3 = out;
        Attention(q.data(), sp.n, sp.start, k.data(), v.data(), hd.heads, hd.kv_heads, hd.dim,
                  window, out.data(), scratch.data(), nullptr);
        Attention(q.data(), sp.n, sp.start, k.data(), v.data(), hd.heads, hd.kv_heads, hd.dim,
                  window, out1.data(), scratch.data(), &pool1);
        Attention(q.data(), sp.n, sp.start, k.data(), v.data(), hd.heads, hd.kv_heads, hd.dim,
                  window, out3.data(), scratch.data(), &pool3);
        EXPECT_TRUE(
            Close(out, RefAttention(q, sp.n, sp.start, k, v, hd.heads, hd.kv_heads, hd.dim, window),
                  kF32Rel));
        EXPECT_TRUE(BitwiseEqual(out, out1));
        EXPECT_TRUE(BitwiseEqual(out, out3));
      }
    }
  }
}

TEST_P(KernelsTest, AttentionWindowOfOneCopiesTheOwnValue) {
  // With sliding_window 1 each query sees only its own position: out = v at that position.
  const int64_t n = 4, heads = 2, dim = 5;
  const std::vector<float> q = RandomVector(n * heads * dim, 1);
  const std::vector<float> k = RandomVector(n * heads * dim, 2);
  const std::vector<float> v = RandomVector(n * heads * dim, 3);
  std::vector<float> scratch(n), out(q.size());
  Attention(q.data(), n, 0, k.data(), v.data(), heads, heads, dim, 1, out.data(), scratch.data(),
            nullptr);
  EXPECT_TRUE(Close(out, ToDouble(v), 1e-6));
}

// ---- TopKSoftmax ----------------------------------------------------------------------------

struct TopK {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};

TopK RefTopK(const float* logits, int64_t experts, int64_t k, bool renormalize) {
  const double mx = *std::max_element(logits, logits + experts);
  std::vector<double> p(static_cast<size_t>(experts));
  double sum = 0.0;
  for (int64_t e = 0; e < experts; ++e) sum += (p[e] = std::exp(logits[e] - mx));
  for (double& x : p) x /= sum;
  std::vector<int32_t> order(static_cast<size_t>(experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  TopK r;
  double total = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    r.ids.push_back(order[j]);
    r.weights.push_back(p[order[j]]);
    total += p[order[j]];
  }
  if (renormalize) {
    for (double& w : r.weights) w /= total;
  }
  return r;
}

TEST_P(KernelsTest, TopKSoftmaxMatchesReference) {
  struct Case {
    int64_t experts, k;
  };
  uint32_t seed = 800;
  for (const Case c : {Case{8, 2}, Case{64, 6}, Case{5, 5}, Case{60, 4}, Case{2000, 4}}) {
    for (bool renormalize : {false, true}) {
      SCOPED_TRACE("experts " + std::to_string(c.experts) + " k " + std::to_string(c.k) +
                   (renormalize ? " renormalized" : ""));
      const int64_t n = 5;
      std::vector<float> logits = RandomVector(static_cast<size_t>(n * c.experts), seed++, 4.0f);
      // Ties: token 1 has every logit equal, token 2 repeats its largest logit at three ids.
      for (int64_t e = 0; e < c.experts; ++e) logits[c.experts + e] = 0.25f;
      float* t2 = logits.data() + 2 * c.experts;
      const int64_t top = std::max_element(t2, t2 + c.experts) - t2;
      t2[c.experts - 1] = t2[top];
      t2[c.experts / 2] = t2[top];
      std::vector<int32_t> ids(static_cast<size_t>(n * c.k), -1);
      std::vector<float> weights(ids.size(), kNan);
      TopKSoftmax(logits.data(), n, c.experts, c.k, renormalize, ids.data(), weights.data());
      for (int64_t t = 0; t < n; ++t) {
        const TopK ref = RefTopK(logits.data() + t * c.experts, c.experts, c.k, renormalize);
        const std::vector<int32_t> got(ids.begin() + t * c.k, ids.begin() + (t + 1) * c.k);
        EXPECT_EQ(got, ref.ids) << "token " << t;
        const std::vector<float> got_w(weights.begin() + t * c.k, weights.begin() + (t + 1) * c.k);
        EXPECT_TRUE(Close(got_w, ref.weights, 1e-6)) << "token " << t;
      }
      // Token 1 (all tied): ids 0..k-1 in order.
      for (int64_t j = 0; j < c.k; ++j) EXPECT_EQ(ids[c.k + j], j);
    }
  }
}

// ---- scalar and AVX2 agree -------------------------------------------------------------------

TEST(KernelPathsTest, ScalarAndAvx2Agree) {
  if (!CpuSupportsAvx2Kernels()) GTEST_SKIP() << "no AVX2/FMA on this CPU";
  ThreadPool pool(2);
  uint32_t seed = 900;
  auto run_both = [](auto&& fn, std::vector<float>* avx2, std::vector<float>* scalar) {
    ForceScalarKernelsForTesting(false);
    fn(avx2);
    ForceScalarKernelsForTesting(true);
    fn(scalar);
    ForceScalarKernelsForTesting(false);
  };
  for (DType dtype : kAllDTypes) {
    const int64_t hidden = 96, inter = 200;
    const TestWeight gate = MakeWeight(dtype, inter, hidden, seed++);
    const TestWeight up = MakeWeight(dtype, inter, hidden, seed++);
    const TestWeight down = MakeWeight(dtype, hidden, inter, seed++);
    for (int64_t n : {1, 4, 5, 32, 64}) {
      SCOPED_TRACE(kernel_testing::DTypeLabel(dtype) + " n " + std::to_string(n));
      const std::vector<float> x = RandomVector(static_cast<size_t>(n * hidden), seed++);
      std::vector<float> a, s;
      run_both(
          [&](std::vector<float>* y) {
            y->assign(static_cast<size_t>(n * inter), kNan);
            Linear(x.data(), n, gate.view(), y->data(), &pool);
          },
          &a, &s);
      EXPECT_TRUE(Close(a, ToDouble(s), kF32Rel));
      run_both(
          [&](std::vector<float>* y) {
            std::vector<float> scratch(static_cast<size_t>(2 * n * inter));
            y->assign(static_cast<size_t>(n * hidden), kNan);
            ExpertFfn(x.data(), n, gate.view(), up.view(), down.view(), y->data(), scratch.data(),
                      &pool);
          },
          &a, &s);
      EXPECT_TRUE(Close(a, ToDouble(s), kF32Rel));
      const TestWeight norm = MakeWeight(dtype, 1, hidden, seed++);
      run_both(
          [&](std::vector<float>* y) {
            y->assign(x.size(), kNan);
            RmsNorm(x.data(), n, hidden, norm.view(), 1e-5f, y->data());
          },
          &a, &s);
      EXPECT_TRUE(Close(a, ToDouble(s), kF32Rel));
    }
  }
  const int64_t heads = 8, kv_heads = 2, dim = 72, start = 30, n = 10;
  const std::vector<float> q = RandomVector(n * heads * dim, seed++, 2.0f);
  const std::vector<float> k = RandomVector((start + n) * kv_heads * dim, seed++, 2.0f);
  const std::vector<float> v = RandomVector((start + n) * kv_heads * dim, seed++);
  std::vector<float> a, s;
  run_both(
      [&](std::vector<float>* out) {
        std::vector<float> scratch(2 * (start + n));
        out->assign(q.size(), kNan);
        Attention(q.data(), n, start, k.data(), v.data(), heads, kv_heads, dim, 16, out->data(),
                  scratch.data(), &pool);
      },
      &a, &s);
  EXPECT_TRUE(Close(a, ToDouble(s), kF32Rel));
}

// ---- contract violations abort ---------------------------------------------------------------

TEST(KernelDeathTest, BadInputsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const TestWeight table = MakeWeight(DType::kF32, 4, 3, 1);
  std::vector<float> out(3);
  const int32_t bad_id = 4;
  EXPECT_DEATH(EmbeddingGather(table.view(), &bad_id, 1, out.data()), "not in \\[0, 4\\)");
  std::vector<std::byte> bytes(16);
  const WeightView ints{bytes.data(), DType::kI32, 1, 4};
  std::vector<float> x(4), y(1);
  EXPECT_DEATH(Linear(x.data(), 1, ints, y.data(), nullptr), "unsupported weight dtype I32");
}

}  // namespace
}  // namespace moe::cpu
