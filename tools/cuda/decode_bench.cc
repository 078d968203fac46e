#include "tools/cuda/decode_bench.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/float16.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cuda/cuda_kernels.h"
#include "runtime/logging.h"
#include "tools/cuda/bench_util.h"
#include "tools/replay/replay.h"
#include "tools/replay/replay_schedule.h"

namespace moe::cuda {
namespace {

using Clock = std::chrono::steady_clock;

// Fills `count` bf16 values uniform in [-scale, scale] (deterministic).
void FillBf16(uint16_t* out, uint64_t count, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  // A 64K-value random block repeated: random enough for timing, fast for gigabytes.
  std::vector<uint16_t> block(uint64_t{1} << 16);
  for (uint16_t& v : block) v = F32ToBf16(dist(rng));
  for (uint64_t i = 0; i < count; i += block.size()) {
    std::memcpy(out + i, block.data(), std::min<uint64_t>(block.size(), count - i) * 2);
  }
}

// Copies `src` into each of `dst` in parallel (pinned pages are touched once, by many threads).
void ParallelReplicate(const std::byte* src, uint64_t bytes, const std::vector<std::byte*>& dst) {
  const unsigned threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = t; i < dst.size(); i += threads) std::memcpy(dst[i], src, bytes);
    });
  }
  for (std::thread& th : pool) th.join();
}

// Device-side state of the benchmark model: per-layer norm and router weights, activations and
// scratch. Expert weights live in slots (cache or resident pool).
struct GpuModel {
  DecodeBenchOptions o;
  uint64_t expert_bytes = 0;
  DeviceBuffer norms, routers, act, scratch;
  std::unique_ptr<Blas> blas;
  float *x = nullptr, *h = nullptr, *logits = nullptr, *w = nullptr, *y = nullptr;
  int32_t *ids = nullptr, *row_position = nullptr;
  int32_t* ids_host = nullptr;  // pinned, for the routing readback
  PinnedHostBuffer ids_host_buffer;
  // The hybrid mode's host side: the normed hidden state read back with the routing, the CPU
  // experts' outputs, their scratch and threads.
  PinnedHostBuffer h_host, y_host;
  std::vector<float> cpu_scratch;
  std::unique_ptr<cpu::ThreadPool> pool;
  uint64_t scratch_bytes = 0;

  WeightView Norm(int32_t l) const {
    return {norms.data() + uint64_t(l) * o.hidden * 2, DType::kBF16, 1, o.hidden};
  }
  WeightView Router(int32_t l) const {
    return {routers.data() + uint64_t(l) * o.experts * o.hidden * 2, DType::kBF16, o.experts,
            o.hidden};
  }
  // Expert views over one slot: gate [I, H], up [I, H], down [H, I] back to back.
  void ExpertViews(const std::byte* slot, WeightView* gate, WeightView* up,
                   WeightView* down) const {
    const uint64_t m = uint64_t(o.inter) * o.hidden * 2;
    *gate = {slot, DType::kBF16, o.inter, o.hidden};
    *up = {slot + m, DType::kBF16, o.inter, o.hidden};
    *down = {slot + 2 * m, DType::kBF16, o.hidden, o.inter};
  }
};

absl::StatusOr<std::unique_ptr<GpuModel>> MakeGpuModel(CudaDevice& device,
                                                       const DecodeBenchOptions& o) {
  auto m = std::make_unique<GpuModel>();
  m->o = o;
  m->expert_bytes = 3 * uint64_t(o.inter) * o.hidden * 2;
  const uint64_t norm_bytes = uint64_t(o.layers) * o.hidden * 2;
  const uint64_t router_bytes = uint64_t(o.layers) * o.experts * o.hidden * 2;
  MOE_ASSIGN_OR_RETURN(m->norms, device.Allocate(norm_bytes, "norm weights"));
  MOE_ASSIGN_OR_RETURN(m->routers, device.Allocate(router_bytes, "router weights"));
  {
    std::vector<uint16_t> host(std::max(norm_bytes, router_bytes) / 2);
    FillBf16(host.data(), norm_bytes / 2, 0.0f, 1);
    for (uint64_t i = 0; i < norm_bytes / 2; ++i) host[i] = F32ToBf16(1.0f);
    device.CopyToDevice(m->norms.data(), reinterpret_cast<std::byte*>(host.data()), norm_bytes);
    FillBf16(host.data(), router_bytes / 2, 0.05f, 2);
    device.CopyToDevice(m->routers.data(), reinterpret_cast<std::byte*>(host.data()), router_bytes);
  }
  const uint64_t H = o.hidden, E = o.experts, K = o.top_k;
  const uint64_t floats = 2 * H + E + K + K * H;
  MOE_ASSIGN_OR_RETURN(m->act, device.Allocate(floats * 4 + 2 * K * 4 + 256, "activations"));
  auto* f = m->act.as<float>();
  m->x = f;
  m->h = f + H;
  m->logits = f + 2 * H;
  m->w = m->logits + E;
  m->y = m->w + K;
  m->ids = reinterpret_cast<int32_t*>(m->y + K * H);
  m->row_position = m->ids + K;
  std::vector<int32_t> identity(K);
  for (uint64_t r = 0; r < K; ++r) identity[r] = static_cast<int32_t>(r);
  device.CopyToDevice(reinterpret_cast<std::byte*>(m->row_position),
                      reinterpret_cast<const std::byte*>(identity.data()), K * 4);
  std::vector<float> x0(H);
  for (uint64_t i = 0; i < H; ++i) x0[i] = 0.01f * float((i * 7919) % 200) - 1.0f;
  device.CopyToDevice(reinterpret_cast<std::byte*>(m->x),
                      reinterpret_cast<const std::byte*>(x0.data()), H * 4);
  m->scratch_bytes = std::max(ExpertFfnScratchBytes(1, o.hidden, o.inter, DType::kBF16),
                              LinearScratchBytes(1, m->Router(0)));
  MOE_ASSIGN_OR_RETURN(m->scratch, device.Allocate(m->scratch_bytes, "scratch"));
  MOE_ASSIGN_OR_RETURN(m->ids_host_buffer, PinnedHostBuffer::Allocate(K * 4, "routing readback"));
  m->ids_host = reinterpret_cast<int32_t*>(m->ids_host_buffer.data());
  MOE_ASSIGN_OR_RETURN(m->blas, Blas::Create(device.compute_stream()));
  MOE_ASSIGN_OR_RETURN(m->h_host, PinnedHostBuffer::Allocate(H * 4, "hidden readback"));
  MOE_ASSIGN_OR_RETURN(m->y_host, PinnedHostBuffer::Allocate(K * H * 4, "CPU expert outputs"));
  m->cpu_scratch.resize(2 * o.inter);
  m->pool = std::make_unique<cpu::ThreadPool>(
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  return m;
}

absl::Status RunExpert(CudaDevice& device, GpuModel& m, const std::byte* slot, int32_t rank);
absl::Status RouteLayer(CudaDevice& device, GpuModel& m, int32_t l, bool read_hidden);

// Runs each kernel once (cuBLAS picks and loads its kernels lazily; the first call of each shape
// costs milliseconds that are not decode time). Restores the residual afterwards.
absl::Status WarmUp(CudaDevice& device, GpuModel& m) {
  MOE_ASSIGN_OR_RETURN(DeviceBuffer slot, device.Allocate(m.expert_bytes, "warm-up expert"));
  MOE_RETURN_IF_ERROR(RouteLayer(device, m, 0, true));
  for (int32_t k = 0; k < m.o.top_k; ++k) MOE_RETURN_IF_ERROR(RunExpert(device, m, slot.data(), k));
  return device.SynchronizeCompute();
}

// Norm, router, top-k and the routing readback of layer l (the host then knows the routing);
// with `read_hidden` also the normed hidden state (the CPU experts' input).
absl::Status RouteLayer(CudaDevice& device, GpuModel& m, int32_t l, bool read_hidden) {
  cudaStream_t s = device.compute_stream();
  MOE_RETURN_IF_ERROR(RmsNorm(m.x, 1, m.o.hidden, m.Norm(l), 1e-5f, m.h, s));
  MOE_RETURN_IF_ERROR(
      Linear(*m.blas, m.h, 1, m.Router(l), m.logits, m.scratch.data(), m.scratch_bytes, s));
  MOE_RETURN_IF_ERROR(TopKSoftmax(m.logits, 1, m.o.experts, m.o.top_k, true, m.ids, m.w, s));
  MOE_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(m.ids_host, m.ids, m.o.top_k * 4, cudaMemcpyDeviceToHost, s), "readback"));
  if (read_hidden) {
    MOE_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(m.h_host.data(), m.h, m.o.hidden * 4, cudaMemcpyDeviceToHost, s),
                   "hidden readback"));
  }
  return CudaStatus(cudaStreamSynchronize(s), "routing readback");
}

// Runs expert `key`'s FFN on the CPU from the host store into y_host row `rank`, then queues
// that row's copy into y on the compute stream.
absl::Status RunExpertOnCpu(CudaDevice& device, GpuModel& m, const std::byte* host_weights,
                            int32_t rank) {
  WeightView gate, up, down;
  m.ExpertViews(host_weights, &gate, &up, &down);
  float* out = reinterpret_cast<float*>(m.y_host.data()) + int64_t(rank) * m.o.hidden;
  cpu::ExpertFfn(reinterpret_cast<const float*>(m.h_host.data()), 1, gate, up, down, out,
                 m.cpu_scratch.data(), m.pool.get());
  return CudaStatus(cudaMemcpyAsync(m.y + int64_t(rank) * m.o.hidden, out, m.o.hidden * 4,
                                    cudaMemcpyHostToDevice, device.compute_stream()),
                    "CPU expert output upload");
}

absl::Status RunExpert(CudaDevice& device, GpuModel& m, const std::byte* slot, int32_t rank) {
  WeightView gate, up, down;
  m.ExpertViews(slot, &gate, &up, &down);
  return ExpertFfn(*m.blas, m.h, 1, gate, up, down, m.y + int64_t(rank) * m.o.hidden,
                   m.scratch.data(), m.scratch_bytes, device.compute_stream());
}

absl::Status CombineLayer(CudaDevice& device, GpuModel& m) {
  return CombineExpertOutputs(m.y, m.row_position, m.w, 1, m.o.top_k, m.o.hidden, m.x,
                              device.compute_stream());
}

// The host expert store: `buffers` pinned expert-sized buffers; expert key k reads k % buffers.
struct HostStore {
  std::vector<PinnedHostBuffer> buffers;
  const std::byte* Source(ExpertKey key) const { return buffers[key % buffers.size()].data(); }
};

absl::StatusOr<HostStore> MakeHostStore(const DecodeBenchOptions& o, uint64_t expert_bytes) {
  const uint64_t all = uint64_t(o.layers) * o.experts;
  const uint64_t n = std::max<uint64_t>(1, std::min(all, o.host_bytes / expert_bytes));
  HostStore store;
  const auto start = Clock::now();
  for (uint64_t i = 0; i < n; ++i) {
    MOE_ASSIGN_OR_RETURN(PinnedHostBuffer b,
                         PinnedHostBuffer::Allocate(expert_bytes, "host expert store"));
    store.buffers.push_back(std::move(b));
  }
  FillBf16(reinterpret_cast<uint16_t*>(store.buffers[0].data()), expert_bytes / 2, 0.02f, 3);
  std::vector<std::byte*> rest;
  for (uint64_t i = 1; i < n; ++i) rest.push_back(store.buffers[i].data());
  ParallelReplicate(store.buffers[0].data(), expert_bytes, rest);
  MOE_LOG(kInfo, "host expert store: {} pinned buffers of {} bytes ({} experts) in {:.1f} s", n,
          expert_bytes, all, std::chrono::duration<double>(Clock::now() - start).count());
  return store;
}

absl::StatusOr<DecodeModeResult> RunResident(CudaDevice& device, GpuModel& m,
                                             const RoutingTrace& forced) {
  const DecodeBenchOptions& o = m.o;
  size_t free_bytes = 0, total = 0;
  MOE_RETURN_IF_ERROR(CudaStatus(cudaMemGetInfo(&free_bytes, &total), "free memory"));
  const uint64_t layer_bytes = m.expert_bytes * o.experts;
  const auto fit = static_cast<int32_t>((free_bytes * 0.85) / layer_bytes);
  const int32_t R = std::min(o.layers, fit);
  if (R < 1)
    return ResourceExhausted("resident mode: one layer's experts ({} bytes) do not fit",
                             layer_bytes);
  MOE_ASSIGN_OR_RETURN(DeviceBuffer pool, device.Allocate(layer_bytes * R, "resident experts"));
  {
    std::vector<uint16_t> host(m.expert_bytes / 2);
    FillBf16(host.data(), host.size(), 0.02f, 3);
    for (int64_t e = 0; e < int64_t(R) * o.experts; ++e) {
      device.CopyToDevice(pool.data() + e * m.expert_bytes,
                          reinterpret_cast<std::byte*>(host.data()), m.expert_bytes);
    }
  }
  DecodeModeResult r;
  r.mode = "resident";
  r.resident_layers = R;
  std::vector<double> per_token;
  for (int64_t t = 0; t < o.tokens; ++t) {
    const auto start = Clock::now();
    for (int32_t l = 0; l < o.layers; ++l) {
      MOE_RETURN_IF_ERROR(RouteLayer(device, m, l, false));
      const auto experts = forced.Experts(t, l);
      for (int32_t k = 0; k < o.top_k; ++k) {
        const int64_t idx = int64_t(l % R) * o.experts + experts[k];
        MOE_RETURN_IF_ERROR(RunExpert(device, m, pool.data() + idx * m.expert_bytes, k));
      }
      MOE_RETURN_IF_ERROR(CombineLayer(device, m));
    }
    MOE_RETURN_IF_ERROR(device.SynchronizeCompute());
    per_token.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  for (double s : per_token) r.seconds += s;
  r.median_token_seconds = Median(per_token);
  r.tokens_per_second = o.tokens / r.seconds;
  return r;
}

// Seconds of one expert FFN for one token on the CPU threads, from pinned host memory (median of
// 5 after one warm-up): the CPU side of the hybrid mode's cost model.
double MeasureCpuExpertSeconds(CudaDevice& device, GpuModel& m, const HostStore& store) {
  std::vector<double> seconds;
  for (int i = 0; i < 6; ++i) {
    const auto start = Clock::now();
    (void)RunExpertOnCpu(device, m, store.Source(ExpertKey(i)), 0);
    if (i > 0) seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  (void)device.SynchronizeCompute();
  return Median(seconds);
}

// How one routed expert of a layer is served: from the cache, copied in and computed on the GPU,
// on the CPU only, or on the CPU while a background copy brings it into the cache.
enum class Serve : uint8_t { kResident, kCopy, kCpu, kCpuAndCopy };

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

absl::StatusOr<DecodeModeResult> RunStreaming(CudaDevice& device, GpuModel& m,
                                              const RoutingTrace& forced, const HostStore& store,
                                              const std::string& mode, const std::string& policy) {
  const DecodeBenchOptions& o = m.o;
  const bool serial = mode == "serial", hybrid = mode == "hybrid";
  CacheOptions co;
  co.space = ExpertSpace{o.layers, o.experts};
  co.expert_bytes = m.expert_bytes;
  co.budget_bytes = o.budget_bytes;
  co.scope = o.scope;
  co.policy = policy;
  MOE_ASSIGN_OR_RETURN(auto cache, ExpertCache::Create(co));
  MOE_ASSIGN_OR_RETURN(
      DeviceBuffer slots,
      device.Allocate(uint64_t(cache->capacity_total()) * m.expert_bytes, "expert slots"));
  DecodeModeResult r;
  r.mode = mode;
  r.policy = policy;
  if (hybrid) {
    r.cpu_expert_seconds = MeasureCpuExpertSeconds(device, m, store);
    r.link_expert_seconds = double(m.expert_bytes) / o.link_bytes_per_second;
    MOE_LOG(kInfo, "hybrid cost model: one expert {:.2f} ms on the CPU, {:.2f} ms over the link",
            r.cpu_expert_seconds * 1e3, r.link_expert_seconds * 1e3);
  }
  const double stall_before = device.counters().copy_stall_seconds;
  std::vector<double> per_token;
  std::vector<ExpertKey> keys(o.top_k);
  std::vector<Serve> serve(o.top_k);
  std::vector<CopyTicket> pending(co.space.size());  // the latest copy into each expert's slot
  const auto run_start = Clock::now();
  double link_free_at = 0;  // when the copies queued so far end (seconds since run_start)
  for (int64_t t = 0; t < o.tokens; ++t) {
    const auto start = Clock::now();
    for (int32_t l = 0; l < o.layers; ++l) {
      MOE_RETURN_IF_ERROR(RouteLayer(device, m, l, hybrid));
      const auto experts = forced.Experts(t, l);
      // The cost model (hybrid): each missing expert goes to whichever of the link and the CPU
      // would finish it first: the link after the copies already queued on it (this layer's and
      // earlier background copies), the CPU after the experts this layer already gave it. When
      // the CPU takes an expert while the link is idle, the link brings it into the cache anyway
      // (no one waits for that copy), so later tokens can hit it.
      double cpu_busy = 0;
      for (int32_t k = 0; k < o.top_k; ++k) {
        keys[k] = co.space.Key(l, experts[k]);
        serve[k] = cache->Contains(keys[k]) ? Serve::kResident : Serve::kCopy;
        if (!hybrid || serve[k] != Serve::kCopy) continue;
        const double now = SecondsSince(run_start);
        const double link_done = std::max(now, link_free_at) + r.link_expert_seconds;
        if (now + cpu_busy + r.cpu_expert_seconds < link_done) {
          cpu_busy += r.cpu_expert_seconds;
          ++r.cpu_experts;
          serve[k] = Serve::kCpu;
          if (link_free_at <= now) {
            serve[k] = Serve::kCpuAndCopy;
            link_free_at = now + r.link_expert_seconds;
          }
        } else {
          link_free_at = link_done;
        }
      }
      // Resident members of the set first, then the missing ones (a load never evicts a member
      // of the token's own set), exactly as the replay and the engine acquire. Experts only the
      // CPU serves do not enter the cache.
      auto copied = [&](int32_t k) {
        return serve[k] == Serve::kCopy || serve[k] == Serve::kCpuAndCopy;
      };
      for (int pass = 0; pass < 2; ++pass) {
        for (int32_t k = 0; k < o.top_k; ++k) {
          if (pass == 0 ? serve[k] != Serve::kResident : !copied(k)) continue;
          const ExpertCache::Access a = cache->Acquire(keys[k]);
          if (a.outcome == ExpertCache::Outcome::kNoRoom) {
            return Internal("no unpinned expert to evict at layer {}", l);
          }
        }
      }
      auto slot = [&](int32_t k) {
        return slots.data() + uint64_t(cache->SlotOf(keys[k])) * m.expert_bytes;
      };
      // The compute stream is idle here (the routing readback synchronised it), so no slot
      // being overwritten is still read by an earlier layer.
      if (serial) {
        for (int32_t k = 0; k < o.top_k; ++k) {
          if (serve[k] == Serve::kCopy) {
            MOE_RETURN_IF_ERROR(device.WaitCopy(
                device.CopyToDeviceAsync(slot(k), store.Source(keys[k]), m.expert_bytes)));
          }
          MOE_RETURN_IF_ERROR(RunExpert(device, m, slot(k), k));
        }
      } else {
        for (int32_t k = 0; k < o.top_k; ++k) {
          if (copied(k)) {
            pending[keys[k]] =
                device.CopyToDeviceAsync(slot(k), store.Source(keys[k]), m.expert_bytes);
          }
        }
        for (Serve pass : {Serve::kResident, Serve::kCopy}) {  // resident first, then arrivals
          for (int32_t k = 0; k < o.top_k; ++k) {
            if (serve[k] != pass) continue;
            // A resident expert may still be arriving (a background copy).
            MOE_RETURN_IF_ERROR(device.ComputeWaitFor(pending[keys[k]]));
            MOE_RETURN_IF_ERROR(RunExpert(device, m, slot(k), k));
          }
        }
        // The CPU's experts run on this thread while the GPU copies and computes the others.
        for (int32_t k = 0; k < o.top_k; ++k) {
          if (serve[k] == Serve::kCpu || serve[k] == Serve::kCpuAndCopy) {
            MOE_RETURN_IF_ERROR(RunExpertOnCpu(device, m, store.Source(keys[k]), k));
          }
        }
      }
      MOE_RETURN_IF_ERROR(CombineLayer(device, m));
      for (int32_t k = 0; k < o.top_k; ++k) {
        if (serve[k] != Serve::kCpu) cache->Release(keys[k]);
      }
    }
    MOE_RETURN_IF_ERROR(device.SynchronizeCompute());
    per_token.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  for (double s : per_token) r.seconds += s;
  r.median_token_seconds = Median(per_token);
  r.tokens_per_second = o.tokens / r.seconds;
  r.cache = cache->stats();
  r.copy_stall_seconds = device.counters().copy_stall_seconds - stall_before;
  return r;
}

absl::StatusOr<CacheStats> Replay(const RoutingTrace& forced, const DecodeBenchOptions& o,
                                  uint64_t expert_bytes, const std::string& policy) {
  ReplaySchedule schedule(forced, {}, 1);
  ReplayOptions ro;
  ro.scope = o.scope;
  ro.budget_bytes = o.budget_bytes;
  ro.expert_bytes = expert_bytes;
  ro.policy = policy;
  MOE_ASSIGN_OR_RETURN(ReplayResult result, RunReplay(forced, schedule, ro, nullptr));
  return result.stats;
}

}  // namespace

absl::StatusOr<RoutingTrace> ForcedRoutingTrace(const RoutingTrace& trace, int32_t layers,
                                                int32_t experts, int32_t top_k, int64_t tokens,
                                                uint64_t expert_bytes) {
  const TraceHeader& h = trace.header;
  if (h.top_k != top_k) {
    return InvalidArgument("forced routing: the trace has top-k {}, the model {}", h.top_k, top_k);
  }
  if (h.num_experts > experts) {
    return InvalidArgument("forced routing: the trace has {} experts per layer, the model {}",
                           h.num_experts, experts);
  }
  if (trace.num_tokens() == 0 || layers < 1 || tokens < 1) {
    return InvalidArgument("forced routing: empty trace, or no layers or tokens to run");
  }
  RoutingTrace out;
  out.header.model = h.model + " (forced routing)";
  out.header.num_layers = layers;
  out.header.num_experts = experts;
  out.header.top_k = top_k;
  out.header.expert_bytes = expert_bytes;
  for (int32_t l = 0; l < layers; ++l) out.header.moe_layer_ids.push_back(l);
  out.experts.resize(uint64_t(tokens) * layers * top_k);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int32_t l = 0; l < layers; ++l) {
      const auto src = trace.Experts(t % trace.num_tokens(), l % h.num_layers);
      std::copy(src.begin(), src.end(), out.experts.begin() + (uint64_t(t) * layers + l) * top_k);
    }
  }
  out.phases.assign(tokens, Phase::kDecode);
  out.sequences.push_back(TraceSequence{0, tokens, "forced"});
  MOE_RETURN_IF_ERROR(out.Validate());
  return out;
}

absl::StatusOr<DecodeBenchResult> RunDecodeBench(CudaDevice& device, const RoutingTrace& trace,
                                                 const DecodeBenchOptions& o) {
  DecodeBenchResult result;
  MOE_ASSIGN_OR_RETURN(auto model, MakeGpuModel(device, o));
  MOE_RETURN_IF_ERROR(WarmUp(device, *model));
  result.expert_bytes = model->expert_bytes;
  MOE_ASSIGN_OR_RETURN(
      const RoutingTrace forced,
      ForcedRoutingTrace(trace, o.layers, o.experts, o.top_k, o.tokens, model->expert_bytes));
  MOE_ASSIGN_OR_RETURN(result.replay_belady, Replay(forced, o, model->expert_bytes, "belady"));
  result.capacity_experts = int64_t(o.budget_bytes / model->expert_bytes);
  HostStore store;
  const bool streaming = std::any_of(o.modes.begin(), o.modes.end(),
                                     [](const std::string& m) { return m != "resident"; });
  if (streaming) {
    MOE_ASSIGN_OR_RETURN(store, MakeHostStore(o, model->expert_bytes));
    result.host_buffers = store.buffers.size();
  }
  for (const std::string& spec : o.modes) {
    const size_t at = spec.find('@');
    const std::string mode = spec.substr(0, at);
    const std::string policy = at == std::string::npos ? o.policy : spec.substr(at + 1);
    MOE_LOG(kInfo, "decode bench: mode {} ({} tokens x {} layers)", spec, o.tokens, o.layers);
    if (mode == "resident") {
      MOE_ASSIGN_OR_RETURN(DecodeModeResult r, RunResident(device, *model, forced));
      result.modes.push_back(r);
    } else if (mode == "serial" || mode == "overlap" || mode == "hybrid") {
      MOE_ASSIGN_OR_RETURN(DecodeModeResult r,
                           RunStreaming(device, *model, forced, store, mode, policy));
      // The replay has no CPU: the hybrid's cache sees only the experts it copies.
      if (mode != "hybrid") {
        MOE_ASSIGN_OR_RETURN(r.replay, Replay(forced, o, model->expert_bytes, policy));
      }
      result.modes.push_back(r);
    } else {
      return InvalidArgument(
          "unknown decode mode '{}' (resident, serial, overlap, hybrid; the last three may add "
          "@policy)",
          spec);
    }
  }
  return result;
}

}  // namespace moe::cuda
