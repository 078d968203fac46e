// The CUDA kernels (kernels/cuda/cuda_kernels.h) against their CPU references (moe::cpu).
//
// CudaKernelsArgs: argument checking and empty problems, answered on the host before any CUDA
// call, so these run (and must pass) on machines without a GPU. CudaKernelsTest: every kernel on
// random inputs from fixed seeds, several sizes (1, odd, not multiples of the block size), against
// the CPU; these skip with the CUDA runtime's reason where no GPU is usable.
//
// Tolerances (each comparison says which applies):
// - exact: gathers, permutations, bf16 conversion, top-k ids, argmax, and the combine on the
//   CPU's AVX2/FMA path (the same fused multiply-adds in the same order).
// - 1e-5 relative per element: RMSNorm (fp32 reductions in another order), RoPE (the same fp32
//   operations; only CUDA's double pow/sincos against glibc's before rounding), SwiGLU and
//   softmax (CUDA's expf and the CPU's exp are each within ~2 ulp), router weights.
// - GEMMs: relative to sum_k |x_k w_k| (the scale of any fp32 dot product's rounding error):
//   1e-5 for fp32; bf16 weights with x rounded to bf16 on the CPU side too leave only the
//   accumulation order (products of two bf16 values are exact in fp32), 1e-4; against the CPU
//   on unrounded x, 2^-8 (x's rounding is at most 2^-9 relative per product).
// - ExpertFfn with bf16 weights: the CPU mirror rounds x and h to bf16 as the GPU does, but h can
//   round to the other neighbour where CPU and GPU h differ in the last fp32 bits: 1e-3 of
//   sum_i |h_i down_i|. fp32 weights: 1e-4 of the same sum.
// - Attention: 1e-4 relative + 2e-5 absolute (outputs are convex combinations of values in
//   [-1, 1]; softmax over up to thousands of keys in another summation order).
#include "kernels/cuda/cuda_kernels.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/float16.h"
#include "kernels/cpu/kernel_table.h"
#include "tests/kernels/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace moe::cuda {
namespace {

using ::moe::cuda_testing::AllWithin;
using ::moe::cuda_testing::CudaTest;
using ::moe::cuda_testing::DeviceBuffer;
using ::moe::cuda_testing::DeviceWeight;
using ::moe::cuda_testing::NearRel;
using ::moe::kernel_testing::MakeWeight;
using ::moe::kernel_testing::RandomVector;
using ::moe::kernel_testing::TestWeight;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

#define ASSERT_OK(expr)                   \
  do {                                    \
    const ::absl::Status moe_s_ = (expr); \
    ASSERT_TRUE(moe_s_.ok()) << moe_s_;   \
  } while (0)

// InvalidArgument whose message names `fn`.
::testing::AssertionResult IsInvalidArgument(const absl::Status& status, const char* fn) {
  if (status.code() != absl::StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "expected InvalidArgument, got " << status;
  }
  if (std::string(status.message()).find(fn) == std::string::npos) {
    return ::testing::AssertionFailure() << "message does not name " << fn << ": " << status;
  }
  return ::testing::AssertionSuccess();
}

// ---- host references and helpers ------------------------------------------------------------

std::vector<float> RoundToBf16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = Bf16ToF32(F32ToBf16(v[i]));
  return r;
}

// sum_c |x[t, c] w[r, c]| for every (t, r): the scale of a dot product's rounding error.
std::vector<double> AbsDot(const std::vector<float>& x, int64_t n, const TestWeight& w) {
  std::vector<double> s(static_cast<size_t>(n * w.rows), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < w.rows; ++r) {
      double acc = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        acc += std::fabs(double(x[t * w.cols + c]) * double(w.at(r, c)));
      }
      s[t * w.rows + r] = acc;
    }
  }
  return s;
}

std::vector<double> Scaled(const std::vector<double>& v, double rel, double abs) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = rel * v[i] + abs;
  return r;
}

std::vector<float> CpuLinear(const std::vector<float>& x, int64_t n, const WeightView& w) {
  std::vector<float> y(static_cast<size_t>(n * w.rows));
  cpu::Linear(x.data(), n, w, y.data(), nullptr);
  return y;
}

std::vector<float> CpuSwiglu(const std::vector<float>& g, const std::vector<float>& u) {
  std::vector<float> h(g.size());
  cpu::internal::ActiveKernels().swiglu(g.data(), u.data(), static_cast<int64_t>(g.size()),
                                        h.data());
  return h;
}

// runtime/sampler.cc's greedy Argmax, restated (the test links only the kernel libraries).
int32_t SamplerArgmax(const float* logits, int64_t vocab) {
  int32_t best = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

// k distinct experts per token (as a router picks them), from a fixed seed.
std::vector<int32_t> DistinctIds(int64_t n, int64_t k, int64_t num_experts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> all(static_cast<size_t>(num_experts));
  std::iota(all.begin(), all.end(), 0);
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(n * k));
  for (int64_t t = 0; t < n; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    ids.insert(ids.end(), all.begin(), all.begin() + k);
  }
  return ids;
}

struct HostPermutation {
  std::vector<int32_t> counts;
  std::vector<int32_t> offsets;
  std::vector<int32_t> sorted_rows;
  std::vector<int32_t> row_position;
};

// The documented permutation: rows grouped by expert, flat order within an expert, invalid ids
// skipped (row_position -1, trailing grouped positions -1).
HostPermutation Permute(const std::vector<int32_t>& ids, int64_t num_experts) {
  const size_t rows = ids.size();
  HostPermutation p;
  p.counts.assign(static_cast<size_t>(num_experts), 0);
  p.offsets.assign(static_cast<size_t>(num_experts + 1), 0);
  p.sorted_rows.assign(rows, -1);
  p.row_position.assign(rows, -1);
  auto valid = [&](int32_t e) { return e >= 0 && e < num_experts; };
  for (int32_t e : ids) {
    if (valid(e)) ++p.counts[e];
  }
  for (int64_t e = 0; e < num_experts; ++e) p.offsets[e + 1] = p.offsets[e] + p.counts[e];
  std::vector<int32_t> fill(p.offsets.begin(), p.offsets.end() - 1);
  for (size_t f = 0; f < rows; ++f) {
    if (!valid(ids[f])) continue;
    const int32_t pos = fill[ids[f]]++;
    p.sorted_rows[pos] = static_cast<int32_t>(f);
    p.row_position[f] = pos;
  }
  return p;
}

// ---- argument checks (no GPU needed) ----------------------------------------------------------

// Host memory standing in for device pointers: never dereferenced, since every check runs
// before the first CUDA call.
struct FakeBuffers {
  float f[64] = {};
  int32_t i32[64] = {};
  int64_t i64[64] = {};
  uint16_t u16[64] = {};
  std::byte bytes[256] = {};
};

TEST(CudaKernelsArgs, ElementwiseRejectBadArguments) {
  FakeBuffers b;
  const WeightView table{b.bytes, DType::kF32, 4, 4};
  EXPECT_TRUE(
      IsInvalidArgument(EmbeddingGather(table, b.i32, -1, b.f, nullptr), "EmbeddingGather"));
  EXPECT_TRUE(IsInvalidArgument(
      EmbeddingGather(WeightView{b.bytes, DType::kF64, 4, 2}, b.i32, 1, b.f, nullptr),
      "EmbeddingGather"));
  EXPECT_TRUE(IsInvalidArgument(
      EmbeddingGather(WeightView{b.bytes, DType::kF32, 0, 4}, b.i32, 1, b.f, nullptr),
      "EmbeddingGather"));
  EXPECT_TRUE(IsInvalidArgument(EmbeddingGather(table, nullptr, 2, b.f, nullptr), "ids"));

  const WeightView w4{b.bytes, DType::kBF16, 1, 4};
  EXPECT_TRUE(IsInvalidArgument(RmsNorm(b.f, 1, 5, w4, 1e-5f, b.f, nullptr), "RmsNorm"));
  EXPECT_TRUE(IsInvalidArgument(RmsNorm(b.f, -1, 4, w4, 1e-5f, b.f, nullptr), "RmsNorm"));
  EXPECT_TRUE(IsInvalidArgument(
      RmsNorm(b.f, 1, 0, WeightView{b.bytes, DType::kF32, 1, 0}, 1e-5f, b.f, nullptr), "RmsNorm"));
  EXPECT_TRUE(IsInvalidArgument(
      RmsNorm(b.f, 1, 4, WeightView{b.bytes, DType::kI32, 1, 4}, 1e-5f, b.f, nullptr), "RmsNorm"));

  EXPECT_TRUE(IsInvalidArgument(ApplyRope(b.f, 1, 2, 7, b.i64, 1e4, nullptr), "ApplyRope"));
  EXPECT_TRUE(IsInvalidArgument(ApplyRope(b.f, -1, 2, 8, b.i64, 1e4, nullptr), "ApplyRope"));
  EXPECT_TRUE(IsInvalidArgument(ApplyRope(b.f, 1, -2, 8, b.i64, 1e4, nullptr), "ApplyRope"));
  EXPECT_TRUE(IsInvalidArgument(ApplyRope(b.f, 1, 2, 8, b.i64, 0.0, nullptr), "ApplyRope"));

  EXPECT_TRUE(IsInvalidArgument(Swiglu(b.f, b.f, -1, b.f, nullptr), "Swiglu"));
  EXPECT_TRUE(IsInvalidArgument(Swiglu(nullptr, b.f, 3, b.f, nullptr), "Swiglu"));
  EXPECT_TRUE(IsInvalidArgument(ConvertToBf16(b.f, -2, b.u16, nullptr), "ConvertToBf16"));
}

TEST(CudaKernelsArgs, RouterAndPermutationRejectBadArguments) {
  FakeBuffers b;
  EXPECT_TRUE(
      IsInvalidArgument(TopKSoftmax(b.f, 1, 8, 9, true, b.i32, b.f, nullptr), "TopKSoftmax"));
  EXPECT_TRUE(
      IsInvalidArgument(TopKSoftmax(b.f, 1, 8, 0, true, b.i32, b.f, nullptr), "TopKSoftmax"));
  EXPECT_TRUE(
      IsInvalidArgument(TopKSoftmax(b.f, 1, 257, 2, true, b.i32, b.f, nullptr), "TopKSoftmax"));
  EXPECT_TRUE(
      IsInvalidArgument(TopKSoftmax(b.f, -1, 8, 2, true, b.i32, b.f, nullptr), "TopKSoftmax"));

  EXPECT_TRUE(IsInvalidArgument(Argmax(b.f, 1, 0, b.i32, nullptr), "Argmax"));
  EXPECT_TRUE(IsInvalidArgument(Argmax(b.f, -1, 10, b.i32, nullptr), "Argmax"));

  EXPECT_TRUE(
      IsInvalidArgument(ExpertPermutation(b.i32, 40000, 2, 8, b.i32, b.i32, b.i32, b.i32, nullptr),
                        "ExpertPermutation"));
  EXPECT_TRUE(IsInvalidArgument(
      ExpertPermutation(b.i32, 2, 0, 8, b.i32, b.i32, b.i32, b.i32, nullptr), "ExpertPermutation"));
  EXPECT_TRUE(IsInvalidArgument(
      ExpertPermutation(b.i32, 2, 2, 0, b.i32, b.i32, b.i32, b.i32, nullptr), "ExpertPermutation"));
  EXPECT_TRUE(
      IsInvalidArgument(ExpertPermutation(b.i32, 2, 2, 4097, b.i32, b.i32, b.i32, b.i32, nullptr),
                        "ExpertPermutation"));
  EXPECT_TRUE(
      IsInvalidArgument(ExpertPermutation(b.i32, -1, 2, 8, b.i32, b.i32, b.i32, b.i32, nullptr),
                        "ExpertPermutation"));

  EXPECT_TRUE(IsInvalidArgument(GatherRows(b.f, 4, 8, b.i32, 0, b.f, nullptr), "GatherRows"));
  EXPECT_TRUE(IsInvalidArgument(GatherRows(b.f, -1, 8, b.i32, 2, b.f, nullptr), "GatherRows"));
  EXPECT_TRUE(IsInvalidArgument(CombineExpertOutputs(b.f, b.i32, b.f, 2, 0, 8, b.f, nullptr),
                                "CombineExpertOutputs"));
  EXPECT_TRUE(IsInvalidArgument(CombineExpertOutputs(b.f, b.i32, b.f, 2, 2, -1, b.f, nullptr),
                                "CombineExpertOutputs"));
}

TEST(CudaKernelsArgs, AttentionRejectsBadShapes) {
  FakeBuffers b;
  EXPECT_TRUE(
      IsInvalidArgument(Attention(b.f, 1, 0, b.f, b.f, 4, 4, 257, 0, b.f, nullptr), "Attention"));
  EXPECT_TRUE(
      IsInvalidArgument(Attention(b.f, 1, 0, b.f, b.f, 4, 4, 0, 0, b.f, nullptr), "Attention"));
  EXPECT_TRUE(
      IsInvalidArgument(Attention(b.f, 1, 0, b.f, b.f, 6, 4, 64, 0, b.f, nullptr), "Attention"));
  EXPECT_TRUE(
      IsInvalidArgument(Attention(b.f, 1, -1, b.f, b.f, 4, 4, 64, 0, b.f, nullptr), "Attention"));
  EXPECT_TRUE(
      IsInvalidArgument(Attention(b.f, 1, 0, b.f, b.f, 0, 1, 64, 0, b.f, nullptr), "Attention"));
  EXPECT_TRUE(IsInvalidArgument(Attention(b.f, 1, 0, b.f, b.f, 70000, 1, 64, 0, b.f, nullptr),
                                "Attention"));
  EXPECT_TRUE(
      IsInvalidArgument(Attention(b.f, 1, 0, b.f, b.f, 4, 0, 64, 0, b.f, nullptr), "Attention"));
}

TEST(CudaKernelsArgs, EmptyProblemsAreNoOps) {
  FakeBuffers b;
  const WeightView w4{b.bytes, DType::kF32, 1, 4};
  const WeightView mat{b.bytes, DType::kBF16, 8, 4};
  EXPECT_TRUE(EmbeddingGather(mat, nullptr, 0, nullptr, nullptr).ok());
  EXPECT_TRUE(RmsNorm(nullptr, 0, 4, w4, 1e-5f, nullptr, nullptr).ok());
  EXPECT_TRUE(ApplyRope(nullptr, 0, 2, 8, nullptr, 1e4, nullptr).ok());
  EXPECT_TRUE(Swiglu(nullptr, nullptr, 0, nullptr, nullptr).ok());
  EXPECT_TRUE(TopKSoftmax(nullptr, 0, 8, 2, true, nullptr, nullptr, nullptr).ok());
  EXPECT_TRUE(
      ExpertPermutation(nullptr, 0, 2, 8, nullptr, nullptr, nullptr, nullptr, nullptr).ok());
  EXPECT_TRUE(GatherRows(nullptr, 0, 8, nullptr, 2, nullptr, nullptr).ok());
  EXPECT_TRUE(CombineExpertOutputs(nullptr, nullptr, nullptr, 0, 2, 8, nullptr, nullptr).ok());
  EXPECT_TRUE(ConvertToBf16(nullptr, 0, nullptr, nullptr).ok());
  EXPECT_TRUE(Attention(nullptr, 0, 5, nullptr, nullptr, 4, 2, 64, 0, nullptr, nullptr).ok());
  EXPECT_TRUE(Argmax(nullptr, 0, 10, nullptr, nullptr).ok());
  std::unique_ptr<Blas> blas = Blas::CreateWithoutHandleForTesting();
  EXPECT_TRUE(Linear(*blas, nullptr, 0, mat, nullptr, nullptr, 0, nullptr).ok());
  const WeightView gate{b.bytes, DType::kBF16, 6, 4};
  const WeightView down{b.bytes, DType::kBF16, 4, 6};
  EXPECT_TRUE(ExpertFfn(*blas, nullptr, 0, gate, gate, down, nullptr, nullptr, 0, nullptr).ok());
}

TEST(CudaKernelsArgs, GemmsRejectBadArguments) {
  FakeBuffers b;
  std::unique_ptr<Blas> blas = Blas::CreateWithoutHandleForTesting();
  const WeightView f32{b.bytes, DType::kF32, 5, 7};
  const WeightView bf16{b.bytes, DType::kBF16, 5, 7};
  EXPECT_EQ(LinearScratchBytes(3, bf16), 3u * 7u * 2u);
  EXPECT_EQ(LinearScratchBytes(3, f32), 0u);

  EXPECT_TRUE(IsInvalidArgument(
      Linear(*blas, b.f, 2, WeightView{b.bytes, DType::kF16, 5, 7}, b.f, b.bytes, 256, nullptr),
      "Linear"));
  EXPECT_TRUE(IsInvalidArgument(
      Linear(*blas, b.f, 3, bf16, b.f, b.bytes, LinearScratchBytes(3, bf16) - 1, nullptr),
      "Linear"));
  EXPECT_TRUE(IsInvalidArgument(
      Linear(*blas, b.f, 2, WeightView{b.bytes, DType::kF32, 0, 7}, b.f, nullptr, 0, nullptr),
      "Linear"));
  EXPECT_TRUE(IsInvalidArgument(Linear(*blas, b.f, -1, f32, b.f, nullptr, 0, nullptr), "Linear"));
  // Valid arguments reach the handle, which this Blas lacks.
  EXPECT_EQ(Linear(*blas, b.f, 2, f32, b.f, nullptr, 0, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);

  const int64_t n = 3;
  const int64_t hidden = 4;
  const int64_t inter = 6;
  const WeightView gate{b.bytes, DType::kBF16, inter, hidden};
  const WeightView down{b.bytes, DType::kBF16, hidden, inter};
  const uint64_t need = ExpertFfnScratchBytes(n, hidden, inter, DType::kBF16);
  EXPECT_GE(need, static_cast<uint64_t>(2 * n * inter * 4 + n * hidden * 2 + n * inter * 2));
  EXPECT_GE(ExpertFfnScratchBytes(n, hidden, inter, DType::kF32),
            static_cast<uint64_t>(2 * n * inter * 4));
  EXPECT_EQ(ExpertFfnScratchBytes(n, hidden, inter, DType::kF16), 0u);
  EXPECT_TRUE(IsInvalidArgument(
      ExpertFfn(*blas, b.f, n, gate, gate, gate, b.f, b.bytes, need, nullptr), "ExpertFfn"));
  EXPECT_TRUE(IsInvalidArgument(
      ExpertFfn(*blas, b.f, n, gate, WeightView{b.bytes, DType::kF32, inter, hidden}, down, b.f,
                b.bytes, need, nullptr),
      "ExpertFfn"));
  const WeightView gate16{b.bytes, DType::kF16, inter, hidden};
  const WeightView down16{b.bytes, DType::kF16, hidden, inter};
  EXPECT_TRUE(IsInvalidArgument(
      ExpertFfn(*blas, b.f, n, gate16, gate16, down16, b.f, b.bytes, need, nullptr), "ExpertFfn"));
  EXPECT_TRUE(IsInvalidArgument(
      ExpertFfn(*blas, b.f, n, gate, gate, down, b.f, b.bytes, need - 1, nullptr), "ExpertFfn"));
  EXPECT_EQ(ExpertFfn(*blas, b.f, n, gate, gate, down, b.f, b.bytes, need, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(CudaKernelsArgs, BlasCreateFailsCleanlyWithoutGpu) {
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
    GTEST_SKIP() << "a GPU is present (Blas::Create is exercised by CudaKernelsTest)";
  }
  auto blas = Blas::Create(nullptr);
  EXPECT_FALSE(blas.ok());
}

// ---- kernels against the CPU (GPU needed) ------------------------------------------------------

class CudaKernelsTest : public CudaTest {
 protected:
  std::unique_ptr<Blas> MakeBlas() {
    auto blas = Blas::Create(stream_);
    EXPECT_TRUE(blas.ok()) << blas.status();
    return blas.ok() ? std::move(blas).value() : nullptr;
  }
};

constexpr DType kAllDTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

TEST_F(CudaKernelsTest, EmbeddingGatherMatchesCpu) {
  for (DType dtype : kAllDTypes) {
    for (int64_t cols : {1, 33, 300}) {
      for (int64_t n : {1, 7}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + " cols " + std::to_string(cols) + " n " +
                     std::to_string(n));
        const int64_t rows = 37;
        DeviceWeight table(MakeWeight(dtype, rows, cols, static_cast<uint32_t>(11 + cols)));
        std::mt19937 rng(static_cast<uint32_t>(5 + n));
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (int32_t& id : ids) id = static_cast<int32_t>(rng() % rows);
        if (n > 2) {
          ids[1] = -1;  // out of range: zero rows
          ids[2] = static_cast<int32_t>(rows);
        }
        DeviceBuffer<int32_t> d_ids(ids);
        DeviceBuffer<float> d_out(static_cast<size_t>(n * cols));
        ASSERT_OK(EmbeddingGather(table.device_view(), d_ids.get(), n, d_out.get(), stream_));
        Sync();
        // The CPU gathers the valid ids (it rejects others); conversion to fp32 is exact.
        std::vector<float> want(static_cast<size_t>(n * cols), 0.0f);
        for (int64_t t = 0; t < n; ++t) {
          if (ids[t] < 0 || ids[t] >= rows) continue;
          cpu::EmbeddingGather(table.host_view(), &ids[t], 1, want.data() + t * cols);
        }
        EXPECT_EQ(d_out.Download(), want);
      }
    }
  }
}

TEST_F(CudaKernelsTest, RmsNormMatchesCpuAndRunsInPlace) {
  const float eps = 1e-5f;
  for (DType dtype : kAllDTypes) {
    for (int64_t dim : {1, 7, 256, 1000, 4099}) {
      for (int64_t n : {1, 5}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + " dim " + std::to_string(dim) + " n " +
                     std::to_string(n));
        DeviceWeight w(MakeWeight(dtype, 1, dim, static_cast<uint32_t>(21 + dim)));
        const std::vector<float> x =
            RandomVector(static_cast<size_t>(n * dim), static_cast<uint32_t>(31 + dim + n), 2.0f);
        std::vector<float> want(x.size());
        cpu::RmsNorm(x.data(), n, dim, w.host_view(), eps, want.data());
        DeviceBuffer<float> d_x(x);
        DeviceBuffer<float> d_out(x.size());
        ASSERT_OK(RmsNorm(d_x.get(), n, dim, w.device_view(), eps, d_out.get(), stream_));
        Sync();
        const std::vector<float> got = d_out.Download();
        EXPECT_TRUE(NearRel(got, want, 1e-5, 1e-6));
        // In place: the same values, bit for bit.
        ASSERT_OK(RmsNorm(d_x.get(), n, dim, w.device_view(), eps, d_x.get(), stream_));
        Sync();
        EXPECT_EQ(d_x.Download(), got);
      }
    }
  }
}

TEST_F(CudaKernelsTest, ApplyRopeMatchesCpu) {
  struct Case {
    int64_t n, num_heads, head_dim;
    double theta;
  };
  const Case cases[] = {{1, 1, 2, 1e4},   {5, 3, 64, 1e4}, {3, 8, 128, 1e6},
                        {2, 2, 256, 5e5}, {4, 2, 6, 1e4},  {6, 5, 96, 1e4}};
  const int64_t kPositions[] = {0, 1, 17, 4095, 32767, 131071};
  for (const Case& c : cases) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " heads " + std::to_string(c.num_heads) +
                 " head_dim " + std::to_string(c.head_dim));
    std::vector<int64_t> positions(static_cast<size_t>(c.n));
    for (int64_t t = 0; t < c.n; ++t) positions[t] = kPositions[(t + c.head_dim) % 6];
    const std::vector<float> x = RandomVector(static_cast<size_t>(c.n * c.num_heads * c.head_dim),
                                              static_cast<uint32_t>(c.head_dim + c.n));
    std::vector<float> want = x;
    cpu::ApplyRope(want.data(), c.n, c.num_heads, c.head_dim, positions.data(), c.theta);
    DeviceBuffer<float> d_x(x);
    DeviceBuffer<int64_t> d_pos(positions);
    ASSERT_OK(ApplyRope(d_x.get(), c.n, c.num_heads, c.head_dim, d_pos.get(), c.theta, stream_));
    Sync();
    EXPECT_TRUE(NearRel(d_x.Download(), want, 1e-5, 1e-6));
  }
}

TEST_F(CudaKernelsTest, SwigluMatchesCpuAndRunsInPlace) {
  for (int64_t count : {1, 1000, 100003}) {
    SCOPED_TRACE("count " + std::to_string(count));
    const std::vector<float> g = RandomVector(static_cast<size_t>(count), 41, 8.0f);
    const std::vector<float> u = RandomVector(static_cast<size_t>(count), 43, 2.0f);
    const std::vector<float> want = CpuSwiglu(g, u);
    DeviceBuffer<float> d_g(g);
    DeviceBuffer<float> d_u(u);
    DeviceBuffer<float> d_h(g.size());
    ASSERT_OK(Swiglu(d_g.get(), d_u.get(), count, d_h.get(), stream_));
    Sync();
    const std::vector<float> got = d_h.Download();
    EXPECT_TRUE(NearRel(got, want, 1e-5, 1e-7));
    ASSERT_OK(Swiglu(d_g.get(), d_u.get(), count, d_g.get(), stream_));  // h aliases g
    Sync();
    EXPECT_EQ(d_g.Download(), got);
  }
}

TEST_F(CudaKernelsTest, ConvertToBf16MatchesHostBitForBit) {
  std::vector<float> src = RandomVector(5000, 51, 100.0f);
  const float specials[] = {0.0f,
                            -0.0f,
                            kInf,
                            -kInf,
                            kNan,
                            -kNan,
                            std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::lowest(),
                            std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::denorm_min(),
                            1.0f + 1.0f / 256.0f,  // halfway: rounds to even (down)
                            1.0f + 3.0f / 256.0f,  // halfway: rounds to even (up)
                            -1.0f - 1.0f / 256.0f,
                            1.0f + 1.0f / 128.0f,
                            3.0e38f};
  src.insert(src.end(), std::begin(specials), std::end(specials));
  for (int i = 0; i < 1000; ++i) src.push_back(std::ldexp(src[i], -130));  // subnormals
  std::vector<uint16_t> want(src.size());
  for (size_t i = 0; i < src.size(); ++i) want[i] = F32ToBf16(src[i]);
  DeviceBuffer<float> d_src(src);
  DeviceBuffer<uint16_t> d_dst(src.size());
  ASSERT_OK(ConvertToBf16(d_src.get(), static_cast<int64_t>(src.size()), d_dst.get(), stream_));
  Sync();
  EXPECT_EQ(d_dst.Download(), want);
}

// Logits on a grid of 1/16: distinct logits differ by >= 1/16 (their probabilities by > 6%, far
// beyond rounding, so CPU and GPU rank them alike) and equal logits are exact ties, which both
// must break to the lower id.
std::vector<float> GridLogits(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-64, 64);
  std::vector<float> v(count);
  for (float& x : v) x = static_cast<float>(dist(rng)) / 16.0f;
  return v;
}

void ExpectTopKMatchesCpu(cudaStream_t stream, const std::vector<float>& logits, int64_t n,
                          int64_t num_experts, int64_t k, bool renormalize) {
  std::vector<int32_t> want_ids(static_cast<size_t>(n * k));
  std::vector<float> want_w(want_ids.size());
  cpu::TopKSoftmax(logits.data(), n, num_experts, k, renormalize, want_ids.data(), want_w.data());
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_ids(want_ids.size());
  DeviceBuffer<float> d_w(want_w.size());
  ASSERT_OK(
      TopKSoftmax(d_logits.get(), n, num_experts, k, renormalize, d_ids.get(), d_w.get(), stream));
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(d_ids.Download(), want_ids);
  EXPECT_TRUE(NearRel(d_w.Download(), want_w, 1e-5, 1e-9));
}

TEST_F(CudaKernelsTest, TopKSoftmaxMatchesCpu) {
  struct Case {
    int64_t num_experts, k;
  };
  const Case cases[] = {{1, 1}, {8, 1}, {8, 2}, {8, 8}, {60, 4}, {64, 6}, {256, 8}, {256, 256}};
  for (const Case& c : cases) {
    for (int64_t n : {1, 9, 33}) {
      for (bool renormalize : {true, false}) {
        SCOPED_TRACE("experts " + std::to_string(c.num_experts) + " k " + std::to_string(c.k) +
                     " n " + std::to_string(n) + (renormalize ? " renormalized" : ""));
        const std::vector<float> logits = GridLogits(static_cast<size_t>(n * c.num_experts),
                                                     static_cast<uint32_t>(c.num_experts + n));
        ExpectTopKMatchesCpu(stream_, logits, n, c.num_experts, c.k, renormalize);
      }
    }
  }
}

TEST_F(CudaKernelsTest, TopKSoftmaxBreaksTiesToLowerIdAndHandlesNan) {
  // Token 0: all equal -> 0, 1, 2. Token 1: three-way tie for first -> 1, 2, 4 (then 0).
  // Token 2: a NaN logit makes every probability NaN -> the CPU takes ids 0, 1, 2.
  const std::vector<float> logits = {0, 0, 0, 0, 0, 0, 1, 3, 3, 0, 3, 0, 0, 1, kNan, 2, 0, 0};
  for (bool renormalize : {true, false}) {
    ExpectTopKMatchesCpu(stream_, logits, 3, 6, 3, renormalize);
  }
  std::vector<int32_t> ids(9);
  std::vector<float> w(9);
  cpu::TopKSoftmax(logits.data(), 3, 6, 3, true, ids.data(), w.data());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2, 1, 2, 4, 0, 1, 2}));  // the CPU rule itself
}

void ExpectPermutationMatches(cudaStream_t stream, const std::vector<int32_t>& ids, int64_t n,
                              int64_t k, int64_t num_experts) {
  const HostPermutation want = Permute(ids, num_experts);
  const size_t rows = ids.size();
  DeviceBuffer<int32_t> d_ids(ids);
  DeviceBuffer<int32_t> d_counts(static_cast<size_t>(num_experts));
  DeviceBuffer<int32_t> d_offsets(static_cast<size_t>(num_experts + 1));
  DeviceBuffer<int32_t> d_sorted(rows);
  DeviceBuffer<int32_t> d_position(rows);
  ASSERT_OK(ExpertPermutation(d_ids.get(), n, k, num_experts, d_counts.get(), d_offsets.get(),
                              d_sorted.get(), d_position.get(), stream));
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const std::vector<int32_t> counts = d_counts.Download();
  const std::vector<int32_t> offsets = d_offsets.Download();
  const std::vector<int32_t> sorted = d_sorted.Download();
  const std::vector<int32_t> position = d_position.Download();
  EXPECT_EQ(counts, want.counts);
  EXPECT_EQ(offsets, want.offsets);
  EXPECT_EQ(sorted, want.sorted_rows);
  EXPECT_EQ(position, want.row_position);
  // The invariants, stated directly.
  int64_t valid = 0;
  for (int32_t e : ids) valid += (e >= 0 && e < num_experts) ? 1 : 0;
  EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), int64_t{0}), valid);
  ASSERT_EQ(offsets.size(), static_cast<size_t>(num_experts + 1));
  EXPECT_EQ(offsets[0], 0);
  EXPECT_EQ(offsets[num_experts], valid);
  for (size_t f = 0; f < rows; ++f) {
    if (position[f] < 0) continue;
    ASSERT_LT(static_cast<size_t>(position[f]), rows);
    EXPECT_EQ(sorted[position[f]], static_cast<int32_t>(f));  // inverse maps
  }
  for (int64_t e = 0; e < num_experts; ++e) {
    for (int32_t p = offsets[e]; p < offsets[e + 1]; ++p) {
      EXPECT_EQ(ids[sorted[p]], e);
      if (p > offsets[e]) {
        EXPECT_LT(sorted[p - 1], sorted[p]);  // stable: flat order
      }
    }
  }
}

TEST_F(CudaKernelsTest, ExpertPermutationIsStableAndInverse) {
  struct Case {
    int64_t n, k, num_experts;
  };
  const Case cases[] = {{1, 1, 1},      {1, 2, 8},      {3, 2, 8},      {100, 4, 60},
                        {4097, 2, 256}, {16384, 4, 64}, {1000, 8, 4096}};
  for (const Case& c : cases) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " k " + std::to_string(c.k) + " experts " +
                 std::to_string(c.num_experts));
    const std::vector<int32_t> ids =
        DistinctIds(c.n, c.k, c.num_experts, static_cast<uint32_t>(c.n + c.num_experts));
    ExpectPermutationMatches(stream_, ids, c.n, c.k, c.num_experts);
  }
  // Repeated experts within a token (not what a router emits) still group stably.
  std::mt19937 rng(61);
  std::vector<int32_t> ids(50 * 6);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 8);
  ExpectPermutationMatches(stream_, ids, 50, 6, 8);
}

TEST_F(CudaKernelsTest, ExpertPermutationSkipsOutOfRangeIds) {
  std::vector<int32_t> ids = DistinctIds(40, 2, 8, 71);
  ids[0] = -1;
  ids[5] = 8;
  ids[17] = std::numeric_limits<int32_t>::max();
  ids[79] = std::numeric_limits<int32_t>::min();
  ExpectPermutationMatches(stream_, ids, 40, 2, 8);
}

TEST_F(CudaKernelsTest, GatherRowsAndCombineMatchCpu) {
  const int64_t n = 5;
  const int64_t k = 2;
  const int64_t num_experts = 4;
  for (int64_t dim : {1, 33, 300}) {
    for (bool bad_ids : {false, true}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + (bad_ids ? " with bad ids" : ""));
      std::vector<int32_t> ids = DistinctIds(n, k, num_experts, static_cast<uint32_t>(dim));
      if (bad_ids) {
        ids[3] = -1;
        ids[6] = static_cast<int32_t>(num_experts);
      }
      const HostPermutation perm = Permute(ids, num_experts);
      const int64_t rows = n * k;
      const std::vector<float> x = RandomVector(static_cast<size_t>(n * dim), 81);
      const std::vector<float> y = RandomVector(static_cast<size_t>(rows * dim), 82);  // grouped
      const std::vector<float> weights = RandomVector(static_cast<size_t>(rows), 83);
      const std::vector<float> out0 = RandomVector(static_cast<size_t>(n * dim), 84, 3.0f);

      DeviceBuffer<float> d_x(x);
      DeviceBuffer<int32_t> d_sorted(perm.sorted_rows);
      DeviceBuffer<float> d_gathered(static_cast<size_t>(rows * dim));
      ASSERT_OK(GatherRows(d_x.get(), rows, dim, d_sorted.get(), k, d_gathered.get(), stream_));
      DeviceBuffer<float> d_y(y);
      DeviceBuffer<int32_t> d_position(perm.row_position);
      DeviceBuffer<float> d_weights(weights);
      DeviceBuffer<float> d_out(out0);
      ASSERT_OK(CombineExpertOutputs(d_y.get(), d_position.get(), d_weights.get(), n, k, dim,
                                     d_out.get(), stream_));
      Sync();

      std::vector<float> want_gathered(static_cast<size_t>(rows * dim), 0.0f);
      for (int64_t p = 0; p < rows; ++p) {
        const int32_t f = perm.sorted_rows[p];
        if (f < 0) continue;
        std::copy_n(x.begin() + (f / k) * dim, dim, want_gathered.begin() + p * dim);
      }
      EXPECT_EQ(d_gathered.Download(), want_gathered);

      // The CPU engine's combine: ScaledAdd per (token, rank) in rank order.
      std::vector<float> want = out0;
      std::vector<double> scale(want.size());
      for (size_t i = 0; i < want.size(); ++i) scale[i] = std::fabs(out0[i]);
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t r = 0; r < k; ++r) {
          const int32_t p = perm.row_position[t * k + r];
          if (p < 0) continue;
          cpu::ScaledAdd(y.data() + p * dim, &weights[t * k + r], 1, dim, want.data() + t * dim);
          for (int64_t d = 0; d < dim; ++d) {
            scale[t * dim + d] += std::fabs(double(weights[t * k + r]) * y[p * dim + d]);
          }
        }
      }
      const std::vector<float> got = d_out.Download();
      if (cpu::UsingAvx2()) {
        EXPECT_EQ(got, want);  // the same fused multiply-adds in the same order
      } else {
        EXPECT_TRUE(AllWithin(got, want, Scaled(scale, 1e-6, 0.0)));
      }
    }
  }
}

struct LinearCase {
  int64_t n, rows, cols;
};
constexpr LinearCase kLinearCases[] = {{1, 1, 1},      {3, 7, 33},    {17, 64, 300},
                                       {5, 257, 1000}, {64, 96, 128}, {1, 1024, 512}};

TEST_F(CudaKernelsTest, LinearF32MatchesCpu) {
  std::unique_ptr<Blas> blas = MakeBlas();
  ASSERT_NE(blas, nullptr);
  for (const LinearCase& c : kLinearCases) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " [" + std::to_string(c.rows) + ", " +
                 std::to_string(c.cols) + "]");
    DeviceWeight w(MakeWeight(DType::kF32, c.rows, c.cols, static_cast<uint32_t>(c.rows)));
    const std::vector<float> x =
        RandomVector(static_cast<size_t>(c.n * c.cols), static_cast<uint32_t>(c.cols));
    DeviceBuffer<float> d_x(x);
    DeviceBuffer<float> d_y(static_cast<size_t>(c.n * c.rows));
    ASSERT_EQ(LinearScratchBytes(c.n, w.device_view()), 0u);
    ASSERT_OK(Linear(*blas, d_x.get(), c.n, w.device_view(), d_y.get(), nullptr, 0, stream_));
    Sync();
    EXPECT_TRUE(AllWithin(d_y.Download(), CpuLinear(x, c.n, w.host_view()),
                          Scaled(AbsDot(x, c.n, w.host), 1e-5, 1e-7)));
  }
}

TEST_F(CudaKernelsTest, LinearBf16MatchesCpuOnRoundedInput) {
  std::unique_ptr<Blas> blas = MakeBlas();
  ASSERT_NE(blas, nullptr);
  for (const LinearCase& c : kLinearCases) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " [" + std::to_string(c.rows) + ", " +
                 std::to_string(c.cols) + "]");
    DeviceWeight w(MakeWeight(DType::kBF16, c.rows, c.cols, static_cast<uint32_t>(c.rows)));
    const std::vector<float> x =
        RandomVector(static_cast<size_t>(c.n * c.cols), static_cast<uint32_t>(c.cols));
    DeviceBuffer<float> d_x(x);
    DeviceBuffer<float> d_y(static_cast<size_t>(c.n * c.rows));
    const uint64_t scratch_bytes = LinearScratchBytes(c.n, w.device_view());
    ASSERT_EQ(scratch_bytes, static_cast<uint64_t>(c.n * c.cols * 2));
    DeviceBuffer<std::byte> d_scratch(scratch_bytes);
    ASSERT_OK(Linear(*blas, d_x.get(), c.n, w.device_view(), d_y.get(), d_scratch.get(),
                     scratch_bytes, stream_));
    Sync();
    const std::vector<float> got = d_y.Download();
    const std::vector<float> x_rounded = RoundToBf16(x);
    EXPECT_TRUE(AllWithin(got, CpuLinear(x_rounded, c.n, w.host_view()),
                          Scaled(AbsDot(x_rounded, c.n, w.host), 1e-4, 1e-7)));
    EXPECT_TRUE(AllWithin(got, CpuLinear(x, c.n, w.host_view()),
                          Scaled(AbsDot(x, c.n, w.host), 1.0 / 256.0, 1e-7)));
  }
}

TEST_F(CudaKernelsTest, ExpertFfnMatchesCpu) {
  std::unique_ptr<Blas> blas = MakeBlas();
  ASSERT_NE(blas, nullptr);
  struct Case {
    int64_t n, hidden, inter;
  };
  const Case cases[] = {{1, 32, 64}, {5, 100, 72}, {33, 64, 200}};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " n " + std::to_string(c.n) + " H " +
                   std::to_string(c.hidden) + " I " + std::to_string(c.inter));
      const uint32_t seed = static_cast<uint32_t>(c.hidden + c.inter);
      DeviceWeight gate(MakeWeight(dtype, c.inter, c.hidden, seed, 0.3f));
      DeviceWeight up(MakeWeight(dtype, c.inter, c.hidden, seed + 1, 0.3f));
      DeviceWeight down(MakeWeight(dtype, c.hidden, c.inter, seed + 2, 0.3f));
      const std::vector<float> x = RandomVector(static_cast<size_t>(c.n * c.hidden), seed + 3);
      const uint64_t scratch_bytes = ExpertFfnScratchBytes(c.n, c.hidden, c.inter, dtype);
      DeviceBuffer<std::byte> d_scratch(scratch_bytes);
      DeviceBuffer<float> d_x(x);
      DeviceBuffer<float> d_out(static_cast<size_t>(c.n * c.hidden));
      ASSERT_OK(ExpertFfn(*blas, d_x.get(), c.n, gate.device_view(), up.device_view(),
                          down.device_view(), d_out.get(), d_scratch.get(), scratch_bytes,
                          stream_));
      Sync();
      const std::vector<float> got = d_out.Download();
      if (dtype == DType::kF32) {
        std::vector<float> want(got.size());
        std::vector<float> scratch(static_cast<size_t>(2 * c.n * c.inter));
        cpu::ExpertFfn(x.data(), c.n, gate.host_view(), up.host_view(), down.host_view(),
                       want.data(), scratch.data(), nullptr);
        const std::vector<float> h =
            CpuSwiglu(CpuLinear(x, c.n, gate.host_view()), CpuLinear(x, c.n, up.host_view()));
        EXPECT_TRUE(AllWithin(got, want, Scaled(AbsDot(h, c.n, down.host), 1e-4, 1e-7)));
      } else {
        // The CPU mirror of the GPU's roundings: x and h to bf16 before their GEMMs.
        const std::vector<float> xr = RoundToBf16(x);
        const std::vector<float> hr = RoundToBf16(
            CpuSwiglu(CpuLinear(xr, c.n, gate.host_view()), CpuLinear(xr, c.n, up.host_view())));
        EXPECT_TRUE(AllWithin(got, CpuLinear(hr, c.n, down.host_view()),
                              Scaled(AbsDot(hr, c.n, down.host), 1e-3, 1e-7)));
      }
    }
  }
}

TEST_F(CudaKernelsTest, AttentionMatchesCpu) {
  struct Case {
    int64_t n, start, num_heads, num_kv_heads, head_dim, sliding_window;
  };
  const Case cases[] = {
      {1, 0, 4, 4, 64, 0},        // first token
      {1, 37, 8, 2, 128, 0},      // decode, GQA
      {7, 0, 4, 1, 32, 0},        // prefill, MQA
      {5, 20, 6, 3, 256, 8},      // window, largest head_dim
      {3, 1500, 2, 1, 64, 0},     // context over one chunk (1024 keys)
      {2, 3000, 2, 2, 72, 1500},  // window spanning chunks
      {4, 2, 3, 1, 1, 0},         // head_dim 1
      {2, 5, 2, 2, 130, 3},       // head_dim over the block size
      {9, 2100, 1, 1, 16, 2050},  // prefill, window over three chunks
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("n " + std::to_string(c.n) + " start " + std::to_string(c.start) + " heads " +
                 std::to_string(c.num_heads) + "/" + std::to_string(c.num_kv_heads) + " dim " +
                 std::to_string(c.head_dim) + " window " + std::to_string(c.sliding_window));
    const int64_t ctx = c.start + c.n;
    const uint32_t seed = static_cast<uint32_t>(c.start + c.head_dim);
    const std::vector<float> q =
        RandomVector(static_cast<size_t>(c.n * c.num_heads * c.head_dim), seed, 2.0f);
    const std::vector<float> kc =
        RandomVector(static_cast<size_t>(ctx * c.num_kv_heads * c.head_dim), seed + 1, 2.0f);
    const std::vector<float> vc =
        RandomVector(static_cast<size_t>(ctx * c.num_kv_heads * c.head_dim), seed + 2);
    std::vector<float> want(q.size());
    std::vector<float> scratch(static_cast<size_t>(ctx));
    cpu::Attention(q.data(), c.n, c.start, kc.data(), vc.data(), c.num_heads, c.num_kv_heads,
                   c.head_dim, c.sliding_window, want.data(), scratch.data(), nullptr);
    DeviceBuffer<float> d_q(q);
    DeviceBuffer<float> d_k(kc);
    DeviceBuffer<float> d_v(vc);
    DeviceBuffer<float> d_out(q.size());
    ASSERT_OK(Attention(d_q.get(), c.n, c.start, d_k.get(), d_v.get(), c.num_heads, c.num_kv_heads,
                        c.head_dim, c.sliding_window, d_out.get(), stream_));
    Sync();
    EXPECT_TRUE(NearRel(d_out.Download(), want, 1e-4, 2e-5));
  }
}

TEST_F(CudaKernelsTest, ArgmaxMatchesSampler) {
  for (int64_t vocab : {1, 5, 1000, 32000, 151936}) {
    for (int64_t n : {1, 3}) {
      SCOPED_TRACE("vocab " + std::to_string(vocab) + " n " + std::to_string(n));
      // Values on a coarse grid: the maximum is often tied, and the lowest index must win.
      std::mt19937 rng(static_cast<uint32_t>(vocab + n));
      std::uniform_int_distribution<int> dist(-50, 50);
      std::vector<float> logits(static_cast<size_t>(n * vocab));
      for (float& v : logits) v = static_cast<float>(dist(rng)) / 4.0f;
      DeviceBuffer<float> d_logits(logits);
      DeviceBuffer<int32_t> d_ids(static_cast<size_t>(n));
      ASSERT_OK(Argmax(d_logits.get(), n, vocab, d_ids.get(), stream_));
      Sync();
      std::vector<int32_t> want(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) want[t] = SamplerArgmax(logits.data() + t * vocab, vocab);
      EXPECT_EQ(d_ids.Download(), want);
    }
  }
  // NaN at 0 never loses; NaN elsewhere never wins; all -inf gives 0; a unique maximum at the
  // last index or at index 0.
  const int64_t vocab = 700;
  std::vector<std::vector<float>> rows(6, std::vector<float>(vocab, 1.0f));
  rows[0][0] = kNan;
  rows[0][10] = 5.0f;
  rows[1][3] = kNan;
  rows[1][500] = kNan;
  rows[1][600] = 2.0f;
  rows[2].assign(vocab, -kInf);
  rows[3][vocab - 1] = 1.5f;
  rows[4][0] = 1.5f;
  rows[5][699] = kInf;
  rows[5][300] = kInf;
  std::vector<float> logits;
  for (const auto& r : rows) logits.insert(logits.end(), r.begin(), r.end());
  const int64_t n = static_cast<int64_t>(rows.size());
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<int32_t> d_ids(rows.size());
  ASSERT_OK(Argmax(d_logits.get(), n, vocab, d_ids.get(), stream_));
  Sync();
  std::vector<int32_t> want;
  for (const auto& r : rows) want.push_back(SamplerArgmax(r.data(), vocab));
  EXPECT_EQ(want, (std::vector<int32_t>{0, 600, 0, 699, 0, 300}));
  EXPECT_EQ(d_ids.Download(), want);
}

// A decode-shaped MoE block on the GPU (router Linear, TopKSoftmax, permutation, GatherRows,
// ExpertFfn per expert group, Combine into the residual) against the CPU engine's path (router
// Linear, TopKSoftmax, ExpertFfn per (token, rank), ScaledAdd in rank order). The router is
// fp32 in both variants so routing is compared exactly; bf16 experts differ by the rounding of x
// and h (1e-2 of the row's largest routed contribution; fp32 experts 1e-4).
TEST_F(CudaKernelsTest, MoeBlockMatchesCpuPath) {
  std::unique_ptr<Blas> blas = MakeBlas();
  ASSERT_NE(blas, nullptr);
  const int64_t hidden = 64;
  const int64_t inter = 96;
  const int64_t num_experts = 8;
  const int64_t k = 2;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t n : {1, 4}) {
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " n " + std::to_string(n));
      DeviceWeight router(MakeWeight(DType::kF32, num_experts, hidden, 91, 0.5f));
      std::vector<DeviceWeight> gates, ups, downs;
      for (int64_t e = 0; e < num_experts; ++e) {
        const uint32_t seed = static_cast<uint32_t>(100 + 3 * e);
        gates.emplace_back(MakeWeight(dtype, inter, hidden, seed, 0.3f));
        ups.emplace_back(MakeWeight(dtype, inter, hidden, seed + 1, 0.3f));
        downs.emplace_back(MakeWeight(dtype, hidden, inter, seed + 2, 0.3f));
      }
      const std::vector<float> xn = RandomVector(static_cast<size_t>(n * hidden), 92);
      const std::vector<float> residual = RandomVector(static_cast<size_t>(n * hidden), 93);

      // CPU path.
      const std::vector<float> logits = CpuLinear(xn, n, router.host_view());
      std::vector<int32_t> ids(static_cast<size_t>(n * k));
      std::vector<float> weights(ids.size());
      cpu::TopKSoftmax(logits.data(), n, num_experts, k, true, ids.data(), weights.data());
      std::vector<float> routed(static_cast<size_t>(n * k * hidden));
      std::vector<float> ffn_scratch(static_cast<size_t>(2 * inter));
      for (int64_t f = 0; f < n * k; ++f) {
        const int32_t e = ids[f];
        cpu::ExpertFfn(xn.data() + (f / k) * hidden, 1, gates[e].host_view(), ups[e].host_view(),
                       downs[e].host_view(), routed.data() + f * hidden, ffn_scratch.data(),
                       nullptr);
      }
      std::vector<float> want = residual;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t j = 0; j < k; ++j) {
          cpu::ScaledAdd(routed.data() + (t * k + j) * hidden, &weights[t * k + j], 1, hidden,
                         want.data() + t * hidden);
        }
      }

      // GPU path.
      DeviceBuffer<float> d_xn(xn);
      DeviceBuffer<float> d_logits(static_cast<size_t>(n * num_experts));
      ASSERT_OK(
          Linear(*blas, d_xn.get(), n, router.device_view(), d_logits.get(), nullptr, 0, stream_));
      DeviceBuffer<int32_t> d_ids(ids.size());
      DeviceBuffer<float> d_weights(weights.size());
      ASSERT_OK(TopKSoftmax(d_logits.get(), n, num_experts, k, true, d_ids.get(), d_weights.get(),
                            stream_));
      DeviceBuffer<int32_t> d_counts(static_cast<size_t>(num_experts));
      DeviceBuffer<int32_t> d_offsets(static_cast<size_t>(num_experts + 1));
      DeviceBuffer<int32_t> d_sorted(ids.size());
      DeviceBuffer<int32_t> d_position(ids.size());
      ASSERT_OK(ExpertPermutation(d_ids.get(), n, k, num_experts, d_counts.get(), d_offsets.get(),
                                  d_sorted.get(), d_position.get(), stream_));
      DeviceBuffer<float> d_gathered(static_cast<size_t>(n * k * hidden));
      ASSERT_OK(
          GatherRows(d_xn.get(), n * k, hidden, d_sorted.get(), k, d_gathered.get(), stream_));
      Sync();
      const std::vector<int32_t> counts = d_counts.Download();
      const std::vector<int32_t> offsets = d_offsets.Download();
      const uint64_t scratch_bytes = ExpertFfnScratchBytes(n * k, hidden, inter, dtype);
      DeviceBuffer<std::byte> d_scratch(scratch_bytes);
      DeviceBuffer<float> d_expert_out(static_cast<size_t>(n * k * hidden));
      for (int64_t e = 0; e < num_experts; ++e) {
        if (counts[e] == 0) continue;
        ASSERT_OK(ExpertFfn(*blas, d_gathered.get() + offsets[e] * hidden, counts[e],
                            gates[e].device_view(), ups[e].device_view(), downs[e].device_view(),
                            d_expert_out.get() + offsets[e] * hidden, d_scratch.get(),
                            scratch_bytes, stream_));
      }
      DeviceBuffer<float> d_out(residual);
      ASSERT_OK(CombineExpertOutputs(d_expert_out.get(), d_position.get(), d_weights.get(), n, k,
                                     hidden, d_out.get(), stream_));
      Sync();

      ASSERT_EQ(d_ids.Download(), ids);
      EXPECT_TRUE(NearRel(d_weights.Download(), weights, 1e-5, 1e-9));
      const double rel = dtype == DType::kF32 ? 1e-4 : 1e-2;
      std::vector<double> tol(want.size());
      for (int64_t t = 0; t < n; ++t) {
        double row_max = 0.0;
        for (int64_t d = 0; d < hidden; ++d) {
          row_max = std::max(
              row_max, std::fabs(double(want[t * hidden + d]) - double(residual[t * hidden + d])));
        }
        for (int64_t d = 0; d < hidden; ++d) {
          tol[t * hidden + d] = rel * row_max + 1e-6 * std::fabs(residual[t * hidden + d]);
        }
      }
      EXPECT_TRUE(AllWithin(d_out.Download(), want, tol));
    }
  }
}

}  // namespace
}  // namespace moe::cuda
