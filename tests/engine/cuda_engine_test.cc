// The engine on a GPU (EngineOptions::device "cuda") against the CPU device, on the golden tiny
// models (tests/data/golden): prefill and KV-cached decode logits, routing, greedy tokens and the
// expert cache's statistics, with an expert budget that forces misses and evictions, with and
// without the gate predictor. Also the engine's own CUDA kernels (runtime/cuda/engine_kernels.h)
// against their CPU references, and device selection and bad input, which need no GPU.
//
// Tolerances (RelativeError: max |cuda - ref| / max |ref| over a step's logits):
//   - F32 weights: cuBLAS fp32 GEMMs (no TF32) and fp32 kernels, so the GPU differs from the CPU
//     by fp32 rounding and summation order, ~1e-6; bound 1e-4, the golden tests' bound against
//     transformers, which the GPU must also meet. Routing, greedy tokens and cache statistics
//     must then be identical (the golden files' smallest routing gap is 1.8e-4).
//   - BF16 weights: every GEMM rounds its input activations to bf16 (2^-9 relative), so logits
//     differ by about 1e-3..1e-2 of their range; bound 3e-2. A rounding can flip a near-tied
//     routing choice (golden gap 3e-4), after which that token legitimately computes different
//     experts, so logits are compared only while the routing so far agrees with the CPU's, at
//     least 90% of routing choices must agree, and greedy tokens must agree wherever the CPU's
//     top-2 logit gap exceeds twice the bound's absolute error (then the bound rules out a flip).
// Tests that need a GPU skip with the reason when none is usable (cudaGetDeviceCount fails
// without a driver).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/float16.h"
#include "predictor/routing_trace.h"
#include "runtime/cuda/cuda_devices.h"
#include "runtime/cuda/cuda_forward_ops.h"
#include "runtime/cuda/engine_kernels.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"
#include "tests/engine/golden_util.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

bool HaveGpu() {
  static const bool have = [] {
    const auto gpus = cuda::ListCudaDevices();
    return gpus.ok() && !gpus->empty();
  }();
  return have;
}

#define SKIP_WITHOUT_GPU()                                                \
  do {                                                                    \
    if (!HaveGpu()) {                                                     \
      const auto gpus = cuda::ListCudaDevices();                          \
      GTEST_SKIP() << "no usable GPU: "                                   \
                   << (gpus.ok() ? std::string("none visible")            \
                                 : std::string(gpus.status().message())); \
    }                                                                     \
  } while (0)

// The golden models: in the source tree this binary was built from or, where the binary runs
// elsewhere (scripts/gpu_run.sh carries it to a GPU machine and runs it from the repository
// root), under the working directory.
std::string GoldenDir(const std::string& name) {
  const std::string built = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/";
  const std::string base = std::filesystem::exists(built) ? built : "tests/data/golden/";
  return base + name;
}

std::shared_ptr<const Model> LoadModel(const std::string& name) {
  auto m = Model::Load(GoldenDir(name));
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

using testing_golden::Read;
using testing_golden::RelativeError;

double MaxAbs(std::span<const float> v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::abs(double(x)));
  return m;
}

int32_t ArgmaxOf(std::span<const float> v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Largest minus second largest.
double TopGap(std::span<const float> v) {
  float a = -INFINITY, b = -INFINITY;
  for (float x : v) {
    if (x > a) {
      b = a;
      a = x;
    } else if (x > b) {
      b = x;
    }
  }
  return double(a) - double(b);
}

// ---- device selection and bad input (no GPU needed) ----------------------------------------

TEST(CudaEngineSelection, CudaWithoutAGpuIsFailedPreconditionNotACrash) {
  if (HaveGpu()) GTEST_SKIP() << "a GPU is visible: device 'cuda' works here";
  auto model = LoadModel("mixtral-tiny-f32");
  ASSERT_NE(model, nullptr);
  EngineOptions options;
  options.device = "cuda";
  auto engine = Engine::Create(model, options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition) << engine.status();
  // CudaDevice::Create's message, with the device named.
  EXPECT_THAT(std::string(engine.status().message()), HasSubstr("device 'cuda'"));
  EXPECT_THAT(std::string(engine.status().message()), HasSubstr("CUDA device"));
}

TEST(CudaEngineSelection, AutoPicksTheGpuWhenThereIsOneElseTheCpu) {
  auto model = LoadModel("mixtral-tiny-f32");
  ASSERT_NE(model, nullptr);
  EngineOptions options;
  options.device = "auto";
  auto engine = Engine::Create(model, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::string name((*engine)->device().name());
  if (HaveGpu()) {
    EXPECT_THAT(name, ::testing::StartsWith("cuda:"));
  } else {
    EXPECT_EQ(name, "cpu");
  }
  std::vector<float> logits(1000);
  const std::vector<int32_t> prompt = {5, 6, 7};
  const SequenceTokens entry{0, prompt};
  EXPECT_TRUE((*engine)->Evaluate({&entry, 1}, false, logits).ok());
}

TEST(CudaEngineSelection, UnknownDevicesAndUnsupportedOptionsAreInvalidArgument) {
  auto model = LoadModel("mixtral-tiny-f32");
  ASSERT_NE(model, nullptr);
  for (const char* name : {"tpu", "CUDA", "gpu", ""}) {
    EngineOptions options;
    options.device = name;
    auto engine = Engine::Create(model, options);
    ASSERT_FALSE(engine.ok()) << name;
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(engine.status().message()), HasSubstr("cpu, cuda, auto"));
  }
  // Checked before any GPU is touched, so the answer is the same with or without one.
  EngineOptions options;
  options.device = "cuda";
  options.cpu_fallback = true;
  options.cpu_bytes_per_second = -1;
  auto engine = Engine::Create(model, options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(engine.status().message()),
              HasSubstr("cpu fallback: -1 B/s and 0 flop/s must be >= 0"));
}

TEST(CudaEngineSelection, ModelFeaturesTheGpuPathLacksAreNamed) {
  auto model = LoadModel("mixtral-tiny-bf16");
  ASSERT_NE(model, nullptr);
  EXPECT_TRUE(cuda::CudaForwardOps::CheckSupported(model->config, model->weights).ok());
  ModelConfig many = model->config;
  many.num_experts = 300;
  absl::Status st = cuda::CudaForwardOps::CheckSupported(many, model->weights);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("300 experts"));
  ModelWeights f16 = model->weights;
  f16.layers[1].q.dtype = DType::kF16;
  st = cuda::CudaForwardOps::CheckSupported(model->config, f16);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("layer 1 q_proj has dtype F16"));
  f16 = model->weights;
  f16.expert_dtype = DType::kF16;
  EXPECT_FALSE(cuda::CudaForwardOps::CheckSupported(model->config, f16).ok());
}

// ---- the engine's CUDA kernels against their CPU references ---------------------------------

// Device memory holding a copy of `host`, freed on destruction.
template <typename T>
class DeviceVector {
 public:
  explicit DeviceVector(const std::vector<T>& host) : size_(host.size()) {
    EXPECT_EQ(cudaMalloc(&data_, std::max<size_t>(1, size_) * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  ~DeviceVector() { cudaFree(data_); }
  T* get() { return static_cast<T*>(data_); }
  std::vector<T> ToHost() const {
    std::vector<T> out(size_);
    EXPECT_EQ(cudaMemcpy(out.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost),
              cudaSuccess);
    return out;
  }

 private:
  void* data_ = nullptr;
  size_t size_;
};

std::vector<float> Values(int64_t count, int seed) {
  std::vector<float> v(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) v[i] = std::sin(0.37f * float(i) + float(seed)) * 3.0f;
  return v;
}

TEST(CudaEngineKernels, ResidualAddBiasAndSigmoidGateMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  for (const auto& [n, dim] : {std::pair<int64_t, int64_t>{1, 1}, {7, 33}, {33, 65}, {5, 1024}}) {
    SCOPED_TRACE(fmt::format("n {} dim {}", n, dim));
    // x += y: exact.
    std::vector<float> x = Values(n * dim, 1), y = Values(n * dim, 2);
    DeviceVector<float> dx(x), dy(y);
    ASSERT_EQ(cuda::LaunchAddInPlace(dx.get(), dy.get(), n * dim, nullptr), cudaSuccess);
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    EXPECT_EQ(dx.ToHost(), x);

    // y[t] += bias in F32, BF16 and F16: exact (the conversions are exact).
    const std::vector<float> bias = Values(dim, 3);
    std::vector<uint16_t> bias_bf16(bias.size()), bias_f16(bias.size());
    for (size_t i = 0; i < bias.size(); ++i) {
      bias_bf16[i] = F32ToBf16(bias[i]);
      bias_f16[i] = F32ToF16(bias[i]);
    }
    struct Case {
      DType dtype;
      cuda::internal::ElemType type;
      const void* host;
      size_t bytes;
    };
    for (const Case& c : {Case{DType::kF32, cuda::internal::ElemType::kF32, bias.data(), 4},
                          Case{DType::kBF16, cuda::internal::ElemType::kBF16, bias_bf16.data(), 2},
                          Case{DType::kF16, cuda::internal::ElemType::kF16, bias_f16.data(), 2}}) {
      SCOPED_TRACE(DTypeName(c.dtype));
      std::vector<float> out = Values(n * dim, 4);
      DeviceVector<float> dout(out);
      std::vector<std::byte> raw(static_cast<size_t>(dim) * c.bytes);
      std::memcpy(raw.data(), c.host, raw.size());
      DeviceVector<std::byte> dbias(raw);
      ASSERT_EQ(cuda::LaunchAddBias(dout.get(), n, dim, dbias.get(), c.type, nullptr), cudaSuccess);
      cpu::AddBias(out.data(), n, WeightView{raw.data(), c.dtype, 1, dim});
      EXPECT_EQ(dout.ToHost(), out);
    }

    // x[t] += sigmoid(gate[t]) * y[t]: the CPU's sigmoid and ScaledAdd, to fp32 rounding.
    std::vector<float> gate = Values(n, 5), acc = Values(n * dim, 6);
    DeviceVector<float> dgate(gate), dacc(acc), dshared(y);
    ASSERT_EQ(cuda::LaunchSigmoidGatedAdd(dshared.get(), dgate.get(), n, dim, dacc.get(), nullptr),
              cudaSuccess);
    for (float& g : gate) g = 1.0f / (1.0f + std::exp(-g));
    cpu::ScaledAdd(y.data(), gate.data(), n, dim, acc.data());
    const std::vector<float> got = dacc.ToHost();
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], acc[i], 1e-6 * (1.0 + std::abs(acc[i]))) << i;
    }
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ---- the engine on the GPU against the CPU ---------------------------------------------------

struct ModelCase {
  std::string model;
  bool f32;  // F32 weights: fp32 tolerances and identical routing
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.model; }

std::string CaseName(const ::testing::TestParamInfo<ModelCase>& info) {
  std::string name = info.param.model;
  for (char& ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return name;
}

// One run of the golden protocol on one engine: for each golden prompt, a reset, the prompt
// with every token's logits, then the 6 golden decode tokens one step at a time; the routing is
// traced. Logits are concatenated per step in order.
struct GoldenRun {
  std::vector<std::vector<float>> steps;  // [prompt rows x V] or [V] per Evaluate call
  std::vector<RoutingTrace> traces;       // per prompt
  EngineStats stats;
};

GoldenRun RunGolden(Engine& engine, const SafetensorsFile& golden) {
  GoldenRun run;
  const size_t V = static_cast<size_t>(engine.model().config.vocab_size);
  for (int p = 0; p < 3; ++p) {
    const auto prompt = Read<int32_t>(golden, fmt::format("prompt_ids_{}", p));
    const auto decode_ids = Read<int32_t>(golden, fmt::format("decode_ids_{}", p));
    EXPECT_TRUE(engine.ResetSequence(0).ok());
    engine.StartTrace();
    std::vector<float> logits(prompt.size() * V);
    const SequenceTokens entry{0, prompt};
    const absl::Status st = engine.Evaluate({&entry, 1}, true, logits);
    EXPECT_TRUE(st.ok()) << st;
    run.steps.push_back(logits);
    for (int32_t id : decode_ids) {
      std::vector<float> step(V);
      const SequenceTokens one{0, {&id, 1}};
      const absl::Status s = engine.Evaluate({&one, 1}, false, step);
      EXPECT_TRUE(s.ok()) << s;
      run.steps.push_back(step);
    }
    auto trace = engine.StopTrace();
    EXPECT_TRUE(trace.ok()) << trace.status();
    if (trace.ok()) run.traces.push_back(*std::move(trace));
  }
  run.stats = engine.stats();
  return run;
}

EngineOptions Options(const Model& model, const char* device, const char* predictor) {
  const ModelConfig& c = model.config;
  EngineOptions options;
  options.device = device;
  // A quarter of the experts: misses and evictions at every step.
  options.expert_budget_bytes = model.weights.expert_bytes * c.num_layers * c.num_experts / 4;
  options.prefill_chunk = 4;  // several prefill steps per prompt
  options.num_threads = 2;
  options.predictor = predictor;
  options.prefetch.depth = std::string(predictor) == "none" ? 0 : 1;
  return options;
}

void ExpectSameCacheStats(const EngineStats& gpu, const EngineStats& cpu) {
  EXPECT_EQ(gpu.cache.accesses, cpu.cache.accesses);
  EXPECT_EQ(gpu.cache.hits, cpu.cache.hits);
  EXPECT_EQ(gpu.cache.misses, cpu.cache.misses);
  EXPECT_EQ(gpu.cache.evictions, cpu.cache.evictions);
  EXPECT_EQ(gpu.cache.prefetch_loads, cpu.cache.prefetch_loads);
  EXPECT_EQ(gpu.cache.prefetch_useful, cpu.cache.prefetch_useful);
  EXPECT_EQ(gpu.cache.prefetch_wasted, cpu.cache.prefetch_wasted);
  EXPECT_EQ(gpu.cache.bytes_loaded, cpu.cache.bytes_loaded);
  EXPECT_EQ(gpu.recall.found, cpu.recall.found);
  EXPECT_EQ(gpu.recall.chosen, cpu.recall.chosen);
}

// The prompt the generation tests decode from, and its 12 greedy tokens on `engine` (sequence 0).
const std::vector<int32_t> kProbePrompt = {17, 250, 3, 999, 42, 7, 7, 81};
absl::StatusOr<GenerateResult> GenerateProbe(Engine& engine) {
  GenerateOptions g;
  g.max_tokens = 12;
  return Generate(engine, 0, kProbePrompt, g);
}

class CudaEngineTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(CudaEngineTest, LogitsRoutingAndCacheStatisticsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  const ModelCase& mc = GetParam();
  auto model = LoadModel(mc.model);
  ASSERT_NE(model, nullptr);
  auto golden_or = SafetensorsFile::Open(GoldenDir(mc.model) + "/golden.safetensors");
  ASSERT_TRUE(golden_or.ok()) << golden_or.status();
  const SafetensorsFile& golden = **golden_or;
  const ModelConfig& c = model->config;
  const size_t V = static_cast<size_t>(c.vocab_size), L = static_cast<size_t>(c.num_layers);
  const size_t K = static_cast<size_t>(c.top_k);
  const double tolerance = mc.f32 ? 1e-4 : 3e-2;

  for (const char* predictor : {"none", "gate"}) {
    SCOPED_TRACE(fmt::format("predictor {}", predictor));
    auto cpu_engine = Engine::Create(model, Options(*model, "cpu", predictor));
    auto gpu_engine = Engine::Create(model, Options(*model, "cuda", predictor));
    ASSERT_TRUE(cpu_engine.ok()) << cpu_engine.status();
    ASSERT_TRUE(gpu_engine.ok()) << gpu_engine.status();
    EXPECT_THAT(std::string((*gpu_engine)->device().name()), ::testing::StartsWith("cuda:"));
    const GoldenRun cpu = RunGolden(**cpu_engine, golden);
    const GoldenRun gpu = RunGolden(**gpu_engine, golden);
    ASSERT_EQ(gpu.steps.size(), cpu.steps.size());
    ASSERT_EQ(gpu.traces.size(), 3u);
    ASSERT_EQ(cpu.traces.size(), 3u);
    EXPECT_GT(cpu.stats.cache.misses, 0u);
    EXPECT_GT(cpu.stats.cache.evictions, 0u);

    size_t step = 0, compared = 0, routing_same = 0, routing_total = 0;
    for (int p = 0; p < 3; ++p) {
      SCOPED_TRACE(fmt::format("prompt {}", p));
      const auto prompt = Read<int32_t>(golden, fmt::format("prompt_ids_{}", p));
      const auto prefill_ref = Read<float>(golden, fmt::format("prefill_logits_{}", p));
      const auto decode_ref = Read<float>(golden, fmt::format("decode_logits_{}", p));
      const auto router_ref = Read<int32_t>(golden, fmt::format("router_ids_{}", p));
      const RoutingTrace& tg = gpu.traces[p];
      const RoutingTrace& tc = cpu.traces[p];
      ASSERT_EQ(tg.experts.size(), tc.experts.size());
      // Tokens whose routing, and every earlier token's, equals the CPU's (all for F32).
      const size_t tokens = tc.experts.size() / (L * K);
      size_t agree_through = 0;
      for (size_t t = 0; t < tokens; ++t) {
        bool same = true;
        for (size_t i = t * L * K; i < (t + 1) * L * K; ++i) {
          same = same && tg.experts[i] == tc.experts[i];
          routing_same += tg.experts[i] == tc.experts[i];
          ++routing_total;
        }
        if (same && agree_through == t) agree_through = t + 1;
      }
      if (mc.f32) {
        EXPECT_EQ(tg.experts, tc.experts);
        ASSERT_EQ(tg.experts.size(), router_ref.size());
        for (size_t i = 0; i < router_ref.size(); ++i) {
          ASSERT_EQ(tg.experts[i], router_ref[i]) << "routing differs from transformers at " << i;
        }
      }
      // Prefill: every token's logits.
      const std::vector<float>& pg = gpu.steps[step];
      const std::vector<float>& pc = cpu.steps[step];
      ++step;
      for (size_t t = 0; t < prompt.size(); ++t) {
        const std::span<const float> g(pg.data() + t * V, V), r(pc.data() + t * V, V);
        if (t < agree_through) {
          EXPECT_LE(RelativeError(g, r), tolerance) << "prefill token " << t;
          ++compared;
        }
        if (mc.f32) {
          EXPECT_LE(RelativeError(g, {prefill_ref.data() + t * V, V}), 1e-4) << "vs transformers";
        }
        for (float v : g) ASSERT_TRUE(std::isfinite(v));
      }
      // Decode steps (fed the golden greedy tokens, so both engines see the same inputs).
      for (size_t s = 0; s < 6; ++s, ++step) {
        const std::span<const float> g(gpu.steps[step]), r(cpu.steps[step]);
        const size_t token = prompt.size() + s;
        if (token < agree_through) {
          EXPECT_LE(RelativeError(g, r), tolerance) << "decode step " << s;
          ++compared;
          // Greedy choice: identical wherever the CPU's margin exceeds twice the error bound.
          if (TopGap(r) > 2 * tolerance * MaxAbs(r)) {
            EXPECT_EQ(ArgmaxOf(g), ArgmaxOf(r)) << "decode step " << s;
          }
        }
        if (mc.f32) {
          EXPECT_LE(RelativeError(g, {decode_ref.data() + s * V, V}), 1e-4) << "vs transformers";
        }
        for (float v : g) ASSERT_TRUE(std::isfinite(v));
      }
    }
    std::cout << mc.model << " predictor " << predictor << ": " << compared
              << " token logits compared, routing agreement " << routing_same << "/"
              << routing_total << ", pinned host bytes " << gpu.stats.pinned_host_bytes << "\n";
    EXPECT_GE(double(routing_same), 0.9 * double(routing_total));
    if (mc.f32) {
      // The cache logic is shared and the routing identical: the same accesses, hits, misses,
      // evictions and prefetches.
      ExpectSameCacheStats(gpu.stats, cpu.stats);
    } else {
      EXPECT_GT(compared, 0u);
    }
    // The GPU arena holds exactly what the engine sized; every copy went through the device.
    const EngineStats& s = gpu.stats;
    EXPECT_EQ(s.device.capacity_bytes,
              s.non_expert_bytes + s.expert_arena_bytes + s.activation_bytes);
    EXPECT_LE(s.device.peak_bytes, s.device.capacity_bytes);
    EXPECT_GT(s.non_expert_bytes, 0u);
    EXPECT_EQ(s.device.bytes_to_device, s.transfers.bytes_started + s.setup_bytes_to_device);
    EXPECT_EQ(s.failed_copies, 0u);
    EXPECT_EQ(s.transfers.demand_issued, s.cache.misses);
  }
}

TEST_P(CudaEngineTest, UnpinnedCheckpointCopiesThroughTheStagingRingWithTheSameTokens) {
  SKIP_WITHOUT_GPU();
  const ModelCase& mc = GetParam();
  if (!mc.f32) GTEST_SKIP() << "bf16 tokens may differ from the CPU's by design";
  auto model = LoadModel(mc.model);
  ASSERT_NE(model, nullptr);
  EngineOptions unpinned = Options(*model, "cuda", "gate");
  unpinned.pin_host_experts = false;
  auto cpu_engine = Engine::Create(model, Options(*model, "cpu", "gate"));
  auto gpu_engine = Engine::Create(model, unpinned);
  ASSERT_TRUE(cpu_engine.ok()) << cpu_engine.status();
  ASSERT_TRUE(gpu_engine.ok()) << gpu_engine.status();
  auto cpu_tokens = GenerateProbe(**cpu_engine);
  auto gpu_tokens = GenerateProbe(**gpu_engine);
  ASSERT_TRUE(cpu_tokens.ok() && gpu_tokens.ok());
  EXPECT_EQ(gpu_tokens->tokens, cpu_tokens->tokens);
  EXPECT_EQ((*gpu_engine)->stats().pinned_host_bytes, 0u);
  EXPECT_EQ((*gpu_engine)->stats().failed_copies, 0u);
  EXPECT_EQ((*gpu_engine)->stats().cache.misses, (*cpu_engine)->stats().cache.misses);
}

// The CPU fallback on the GPU: misses the cost model sends to the CPU (here every one whose copy
// has not landed: the CPU's rates are given as near infinite) run from host memory, their rows
// read back and written back; with the bypass they are not even loaded. The tokens stay the CPU
// backend's.
TEST_P(CudaEngineTest, CpuFallbackGivesTheCpuBackendsTokens) {
  SKIP_WITHOUT_GPU();
  const ModelCase& mc = GetParam();
  if (!mc.f32) GTEST_SKIP() << "bf16 tokens may differ from the CPU's by design";
  auto model = LoadModel(mc.model);
  ASSERT_NE(model, nullptr);
  auto cpu_engine = Engine::Create(model, Options(*model, "cpu", "none"));
  ASSERT_TRUE(cpu_engine.ok()) << cpu_engine.status();
  auto cpu_tokens = GenerateProbe(**cpu_engine);
  ASSERT_TRUE(cpu_tokens.ok()) << cpu_tokens.status();
  for (bool bypass : {false, true}) {
    SCOPED_TRACE(bypass ? "bypass" : "copies still land");
    EngineOptions options = Options(*model, "cuda", "none");
    options.cpu_fallback = true;
    options.cpu_fallback_bypass = bypass;
    options.cpu_bytes_per_second = 1e18;
    options.cpu_flops_per_second = 1e21;
    auto gpu_engine = Engine::Create(model, options);
    ASSERT_TRUE(gpu_engine.ok()) << gpu_engine.status();
    auto gpu_tokens = GenerateProbe(**gpu_engine);
    ASSERT_TRUE(gpu_tokens.ok()) << gpu_tokens.status();
    EXPECT_EQ(gpu_tokens->tokens, cpu_tokens->tokens);
    const EngineStats& s = (*gpu_engine)->stats();
    EXPECT_GT(s.cpu_fallbacks, 0u);
    EXPECT_EQ(s.failed_copies, 0u);
    if (bypass) {
      EXPECT_GT(s.cpu_uncached, 0u);
    } else {
      EXPECT_EQ(s.cache.misses, (*cpu_engine)->stats().cache.misses);
    }
  }
}

TEST_P(CudaEngineTest, GreedyGenerationMatchesTheCpu) {
  SKIP_WITHOUT_GPU();
  const ModelCase& mc = GetParam();
  auto model = LoadModel(mc.model);
  ASSERT_NE(model, nullptr);
  auto cpu_engine = Engine::Create(model, Options(*model, "cpu", "gate"));
  auto gpu_engine = Engine::Create(model, Options(*model, "cuda", "gate"));
  ASSERT_TRUE(cpu_engine.ok()) << cpu_engine.status();
  ASSERT_TRUE(gpu_engine.ok()) << gpu_engine.status();
  const size_t V = static_cast<size_t>(model->config.vocab_size);
  const double tolerance = mc.f32 ? 1e-4 : 3e-2;
  auto cpu_tokens = GenerateProbe(**cpu_engine);
  ASSERT_TRUE(cpu_tokens.ok()) << cpu_tokens.status();
  if (mc.f32) {
    auto gpu_tokens = GenerateProbe(**gpu_engine);
    ASSERT_TRUE(gpu_tokens.ok()) << gpu_tokens.status();
    EXPECT_EQ(gpu_tokens->tokens, cpu_tokens->tokens);
    ASSERT_TRUE((*gpu_engine)->ResetSequence(0).ok());
  }
  // Teacher-forced with the CPU's tokens: the GPU's argmax agrees wherever the CPU's margin
  // exceeds twice the logits' error bound (so the bound alone rules out a flip) and the routing so
  // far agrees (always, with F32 weights).
  ASSERT_TRUE((*cpu_engine)->ResetSequence(0).ok());
  std::vector<float> lc(V), lg(V);
  std::vector<int32_t> input = kProbePrompt;
  size_t checked = 0;
  bool routing_agrees = true;
  for (int32_t next : cpu_tokens->tokens) {
    const SequenceTokens e{0, input};
    (*cpu_engine)->StartTrace();
    (*gpu_engine)->StartTrace();
    ASSERT_TRUE((*cpu_engine)->Evaluate({&e, 1}, false, lc).ok());
    ASSERT_TRUE((*gpu_engine)->Evaluate({&e, 1}, false, lg).ok());
    auto tc = (*cpu_engine)->StopTrace();
    auto tg = (*gpu_engine)->StopTrace();
    ASSERT_TRUE(tc.ok() && tg.ok());
    routing_agrees = routing_agrees && tc->experts == tg->experts;
    if (mc.f32) {
      EXPECT_TRUE(routing_agrees);
    }
    EXPECT_EQ(ArgmaxOf(lc), next);
    if (routing_agrees) {
      EXPECT_LE(RelativeError(lg, lc), tolerance);
      if (TopGap(lc) > 2 * tolerance * MaxAbs(lc)) {
        EXPECT_EQ(ArgmaxOf(lg), next);
        ++checked;
      }
    }
    input = {next};
  }
  if (mc.f32) {
    EXPECT_GT(checked, 0u);
  }
}

TEST_P(CudaEngineTest, BatchedDecodeOfSeveralSequencesMatchesTheCpu) {
  SKIP_WITHOUT_GPU();
  const ModelCase& mc = GetParam();
  if (!mc.f32) GTEST_SKIP() << "compared exactly enough only with F32 weights";
  auto model = LoadModel(mc.model);
  ASSERT_NE(model, nullptr);
  const size_t V = static_cast<size_t>(model->config.vocab_size);
  std::vector<float> results[2];
  EngineStats stats[2];
  for (int d = 0; d < 2; ++d) {
    EngineOptions options = Options(*model, d == 0 ? "cpu" : "cuda", "gate");
    options.max_sequences = 3;
    options.prefill_chunk = 5;
    auto engine = Engine::Create(model, options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    const std::vector<std::vector<int32_t>> prompts = {
        {5, 9, 300, 41, 8, 77, 2, 600, 12, 14, 15}, {100, 200}, {7, 8, 9, 10, 11, 12, 13}};
    std::vector<SequenceTokens> batch;
    for (int s = 0; s < 3; ++s) batch.push_back({s, prompts[s]});
    std::vector<float> logits(3 * V);
    ASSERT_TRUE((*engine)->Evaluate(batch, false, logits).ok());
    results[d].insert(results[d].end(), logits.begin(), logits.end());
    for (int step = 0; step < 5; ++step) {
      std::vector<int32_t> next(3);
      batch.clear();
      for (int s = 0; s < 3; ++s) {
        next[s] = 20 + 31 * step + 5 * s;
        batch.push_back({s, {&next[s], 1}});
      }
      ASSERT_TRUE((*engine)->Evaluate(batch, false, logits).ok());
      results[d].insert(results[d].end(), logits.begin(), logits.end());
    }
    stats[d] = (*engine)->stats();
  }
  for (size_t r = 0; r < results[0].size() / V; ++r) {
    EXPECT_LE(RelativeError({results[1].data() + r * V, V}, {results[0].data() + r * V, V}), 1e-4)
        << "row " << r;
  }
  ExpectSameCacheStats(stats[1], stats[0]);
}

TEST_P(CudaEngineTest, EnginesSharingAModelOnTheGpuAreIndependent) {
  SKIP_WITHOUT_GPU();
  auto model = LoadModel(GetParam().model);
  ASSERT_NE(model, nullptr);
  const size_t V = static_cast<size_t>(model->config.vocab_size);
  const std::vector<int32_t> prompt = {3, 14, 15, 92, 65};
  const SequenceTokens entry{0, prompt};
  auto first = Engine::Create(model, Options(*model, "cuda", "none"));
  auto second = Engine::Create(model, Options(*model, "cuda", "gate"));
  ASSERT_TRUE(first.ok() && second.ok());
  std::vector<float> a(V), b(V), c(V);
  ASSERT_TRUE((*first)->Evaluate({&entry, 1}, false, a).ok());
  ASSERT_TRUE((*second)->Evaluate({&entry, 1}, false, b).ok());
  EXPECT_EQ(a, b);  // same kernels, same inputs: deterministic
  // The expert bytes stay pinned for the second engine when the first goes (counted pins), and
  // its copies stay correct either way.
  EXPECT_EQ((*first)->stats().pinned_host_bytes, (*second)->stats().pinned_host_bytes);
  first->reset();
  ASSERT_TRUE((*second)->ResetSequence(0).ok());
  ASSERT_TRUE((*second)->Evaluate({&entry, 1}, false, c).ok());
  EXPECT_EQ(b, c);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaEngineTest,
                         ::testing::Values(ModelCase{"mixtral-tiny-f32", true},
                                           ModelCase{"mixtral-tiny-bf16", false},
                                           ModelCase{"qwen2moe-tiny-f32", true}),
                         CaseName);

}  // namespace
}  // namespace moe
