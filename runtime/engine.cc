#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "experts/expert_store.h"
#include "kernels/cpu/cpu_kernels.h"
#include "memory/expert_set.h"
#include "predictor/gate_predictor.h"
#include "predictor/tracer.h"
#include "runtime/expert_transfers.h"
#include "runtime/forward_ops.h"
#include "runtime/logging.h"
#include "runtime/status.h"

#if MOE_CUDA_ENABLED
#include "runtime/cuda/cuda_device.h"
#include "runtime/cuda/cuda_devices.h"
#include "runtime/cuda/cuda_forward_ops.h"
#endif

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr uint64_t kAlign = 64;
uint64_t AlignUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// One token of a step: where it goes and what it is.
struct StepToken {
  int32_t sequence;
  int64_t position;
  int32_t id;
  Phase phase;
};

// Every non-expert weight of the model, in a fixed order, for copying to the device.
std::vector<WeightView*> NonExpertViews(ModelWeights& w, bool tied) {
  std::vector<WeightView*> views = {&w.embed, &w.final_norm};
  if (!tied) views.push_back(&w.lm_head);
  for (LayerWeights& l : w.layers) {
    for (WeightView* v : {&l.input_norm, &l.q, &l.k, &l.v, &l.o, &l.q_bias, &l.k_bias, &l.v_bias,
                          &l.post_attention_norm, &l.router, &l.shared_expert.gate,
                          &l.shared_expert.up, &l.shared_expert.down, &l.shared_expert_gate}) {
      if (v->present()) views.push_back(v);
    }
  }
  return views;
}

struct CpuExpertRates {
  double bytes_per_second = 0;  // weights streamed by one token's expert FFN
  double flops_per_second = 0;  // at 64 tokens, where the FFN is compute-bound
};

// Times the CPU expert FFN on a real expert in host memory (best of 5 after a warm-up): one
// token for the memory-bound rate, 64 tokens for the compute-bound one.
CpuExpertRates MeasureCpuExpertRates(const FfnWeights& w, cpu::ThreadPool* pool) {
  const int64_t H = w.gate.cols, I = w.gate.rows, rows = 64;
  std::vector<float> x(static_cast<size_t>(rows * H), 0.01f), y(x.size());
  std::vector<float> scratch(static_cast<size_t>(2 * rows * I));
  auto best_seconds = [&](int64_t n) {
    double best = 1e30;
    for (int r = 0; r < 6; ++r) {
      const auto start = Clock::now();
      cpu::ExpertFfn(x.data(), n, w.gate, w.up, w.down, y.data(), scratch.data(), pool);
      if (r > 0) best = std::min(best, SecondsSince(start));
    }
    return std::max(best, 1e-9);
  };
  const double bytes = double(w.gate.num_bytes() + w.up.num_bytes() + w.down.num_bytes());
  CpuExpertRates rates;
  rates.bytes_per_second = bytes / best_seconds(1);
  rates.flops_per_second = 6.0 * double(rows) * double(H) * double(I) / best_seconds(rows);
  return rates;
}

// options.device with "auto" resolved: cuda where this build has CUDA and a GPU is visible.
absl::StatusOr<std::string> ResolveDevice(const std::string& name) {
  if (name == "cpu" || name == "cuda" || name == "fake") return name;
  if (name == "auto") {
#if MOE_CUDA_ENABLED
    const auto gpus = cuda::ListCudaDevices();
    if (gpus.ok() && !gpus->empty()) return std::string("cuda");
#endif
    return std::string("cpu");
  }
  return InvalidArgument("unknown device '{}' (engine devices: cpu, cuda, auto, fake)", name);
}

}  // namespace

struct Engine::Impl {
  const Model* model = nullptr;
  const ModelConfig* cfg = nullptr;
  std::unique_ptr<Device> device;
  // CUDA: the pinned expert bytes of the mapped checkpoint (unpinned after the buffers are freed,
  // before the device goes). Type-erased so this struct needs no CUDA types.
  std::shared_ptr<void> host_pins;
  std::unique_ptr<cpu::ThreadPool> pool;
  ModelWeights dev;  // non-expert views point into `weights`; expert views stay on the host
  DeviceBuffer weights;
  std::unique_ptr<HostExpertStore> store;
  std::unique_ptr<ExpertCache> cache;
  DeviceBuffer slots;
  std::unique_ptr<ExpertTransfers> transfers;
  bool charge_compute = false;  // fake device: kernels' weight bytes cost device time
  double seconds_per_byte = 0;
  std::vector<uint64_t> layer_weight_bytes;  // non-expert weights read per layer
  std::vector<uint32_t> wave_order;          // scratch: wave members in expected arrival order
  // CPU fallback cost model (fake device): seconds per copy and per CPU expert.
  bool cpu_fallback = false;
  bool cpu_fallback_bypass = false;      // EngineOptions::cpu_fallback_bypass
  bool cancel_stale_prefetches = false;  // EngineOptions::cancel_stale_prefetches
  double transfer_seconds = 0, cpu_seconds_per_byte = 0, cpu_seconds_per_flop = 0;
  uint64_t expert_bytes = 0;

  // Activations, [max_step_tokens, ...] each, and the KV cache.
  int64_t max_step = 0;
  int64_t q_dim = 0, kv_dim = 0;
  DeviceBuffer activations;
  float *x, *xn, *q, *k, *v, *attn, *tmp, *router, *weights_k, *xe, *ye, *ffn_scratch, *shared_out,
      *shared_gate, *logits, *attn_scratch, *routed_out;
  // The residual stream each token left the previous MoE layer with (hidden-state predictors
  // only): x itself is overwritten by the next layer's attention.
  float* layer_out;
  // Each token's hidden state at predictor->token_state_layer() in a prefill chunk (host).
  std::vector<float> token_state;
  std::vector<float> layer_out_host;  // layer_out when activations are not host memory
  int32_t* ids;
  DeviceBuffer kv;  // [sequence][layer][k|v][max_context][kv_dim]
  std::vector<int64_t> seq_len;
  // Trace sequence of each engine sequence: a new one after every reset, so each request is its
  // own sequence in the trace.
  std::vector<int64_t> request_of;
  int64_t next_request = 0;

  // Host-side scratch for grouping tokens per expert (no allocation after the first steps).
  std::vector<int32_t> expert_count, expert_first, expert_fill;
  std::vector<int32_t> rows;  // (token, rank) pairs t * K + j, grouped per expert
  std::vector<ExpertKey> keys;
  std::vector<AcquiredExpert> wave;
  std::vector<uint32_t> pending;

  std::unique_ptr<RoutingTracer> tracer;
  EngineStats stats;
  // Prediction (null without a predictor). `scores` exist before the cache (the "predictive"
  // policy reads them).
  std::unique_ptr<ExpertScores> scores;
  std::unique_ptr<Predictor> predictor;
  std::unique_ptr<PrefetchPlanner> planner;
  std::vector<float> predicted;          // [E] scratch
  std::vector<int32_t> predicted_order;  // [E] scratch
  std::vector<uint16_t> token_experts;   // [K] scratch
  std::vector<ExpertKey> stale_keys;     // CancelStalePrefetches scratch
  std::vector<int64_t> step_requests;    // request (predictor / trace sequence) of each token
  std::vector<Phase> step_phases;
  std::vector<int32_t> token_ids;  // of the step's tokens
  std::vector<int64_t> positions;
  HostRouting route;                   // the current MoE layer's routing, on the host
  const int32_t* layer_ids = nullptr;  // the experts the current MoE layer runs [n, K] (host)
  // Benchmark mode (EngineOptions::forced_routing): the trace, the trace token of each of the
  // step's tokens, and one layer's forced ids [n, K].
  std::shared_ptr<const RoutingTrace> forced;
  int64_t forced_next = 0;  // trace token of the next token processed (before the modulo)
  std::vector<int64_t> forced_tokens;
  std::vector<int32_t> forced_ids;
  const int32_t* ForcedIds(int32_t layer, int64_t n) {
    const int32_t trace_layer = layer % forced->header.num_layers;
    const int64_t K = cfg->top_k;
    for (int64_t t = 0; t < n; ++t) {
      const std::span<const uint16_t> e = forced->Experts(forced_tokens[t], trace_layer);
      for (int64_t j = 0; j < K; ++j) forced_ids[t * K + j] = e[j];
    }
    return forced_ids.data();
  }

  // The math of the forward on this device (declared last: destroyed first, while the device and
  // the buffers it works on still exist), and the device memory it needs beyond the activations.
  DeviceBuffer workspace;
  std::unique_ptr<ForwardOps> ops;

  // Token t's experts at the current MoE layer (layer_ids), as the predictor and planner take
  // them; valid until the next call.
  std::span<const uint16_t> TokenExperts(int64_t t) {
    const int64_t K = cfg->top_k;
    for (int64_t j = 0; j < K; ++j) token_experts[j] = static_cast<uint16_t>(layer_ids[t * K + j]);
    return token_experts;
  }

  std::span<const float> TokenState(int64_t t) const {
    const auto H = static_cast<size_t>(cfg->hidden_size);
    return {token_state.data() + static_cast<size_t>(t) * H, H};
  }

  float* KvAt(int32_t seq, int64_t layer, int which, int64_t max_context) {
    const int64_t per_layer = 2 * max_context * kv_dim;
    return kv.as<float>() + (int64_t{seq} * cfg->num_layers + layer) * per_layer +
           which * max_context * kv_dim;
  }

  absl::Status RunStep(std::span<const StepToken> tokens, bool all_logits, int64_t max_context,
                       float* logits_out, PhaseStats& phase_stats);
  absl::Status MoeBlock(int32_t layer, int64_t n);
  absl::Status CreatePredictor(const EngineOptions& options, const ExpertSpace& space);
  void MeasureRecall(int32_t layer, int64_t n);
  // One wave of a layer's experts (memory/expert_set.h): queue their copies, then run each in
  // the scheduler's order, on the device after its copy or on the CPU when cheaper.
  absl::Status RunWave(std::span<const AcquiredExpert> acquired, PhaseStats& phase);
  // The CPU fallback's cost model for a missed expert with `tokens` rows; charges the CPU time
  // when it says yes.
  bool PreferCpu(ExpertKey key, int32_t tokens);
  // The same for an expert whose copy would complete after `copies_ahead` copies.
  bool PreferCpuOver(int64_t copies_ahead, int32_t tokens);
  // cpu_fallback_bypass: runs the layer's missing experts the cost model gives the CPU from host
  // memory and drops them from `keys`, before the cache sees them.
  absl::Status RunMissesOnHost();
  // The expert's rows through its FFN (weights in its slot, or in host memory on the CPU).
  absl::Status RunExpert(const AcquiredExpert& a, bool on_cpu);
  // Observes each token's routing (and hidden state) and queues the predicted prefetches.
  absl::Status PlanPrefetches(int32_t layer, int64_t n, PhaseStats& phase);
  // Cancels the queued prefetches of `layer` that its new prediction (`wanted`) dropped.
  void CancelStalePrefetches(int32_t layer, std::span<const ExpertKey> wanted);
};

absl::Status Engine::Impl::CreatePredictor(const EngineOptions& options, const ExpertSpace& space) {
  if (options.predictor == "none") return absl::OkStatus();
  PredictorOptions po;
  po.space = space;
  po.top_k = static_cast<int32_t>(cfg->top_k);
  if (options.prefetch.depth < 0 || options.prefetch.budget < 0 ||
      options.prefetch.budget > space.num_experts) {
    return InvalidArgument("prefetch depth {} and budget {} must be >= 0 (budget <= {} experts)",
                           options.prefetch.depth, options.prefetch.budget, space.num_experts);
  }
  if (options.predictor == "gate") {
    std::vector<GateLayerWeights> layers;
    for (const LayerWeights& l : model->weights.layers) {
      layers.push_back(GateLayerWeights{l.post_attention_norm, l.router});
    }
    predictor = std::make_unique<GatePredictor>(po, std::move(layers), cfg->hidden_size,
                                                static_cast<float>(cfg->rms_norm_eps));
  } else {
    auto made = MakePredictor(options.predictor, po);
    if (!made.ok()) {  // the names MakePredictor lists, and the engine's own
      return Annotate(made.status(), "predictor (the engine also has \"gate\")");
    }
    predictor = *std::move(made);
  }
  if (options.predictor == "learned" && options.predictor_file.empty()) {
    return InvalidArgument(
        "predictor \"learned\" needs its weights: a predictor file (e.g. "
        "models/pydoc-moe/learned_predictor.safetensors, made by "
        "scripts/train/train_learned_predictor.py)");
  }
  if (!options.predictor_file.empty()) {
    MOE_RETURN_IF_ERROR_CTX(predictor->Load(options.predictor_file),
                            "predictor file " + options.predictor_file);
  }
  if (predictor->uses_hidden_states() && predictor->hidden_size() != 0 &&
      predictor->hidden_size() != cfg->hidden_size) {
    return InvalidArgument(
        "predictor \"{}\"{} reads hidden states of {} values; the model's are {}",
        options.predictor, options.predictor_file.empty() ? "" : " from " + options.predictor_file,
        predictor->hidden_size(), cfg->hidden_size);
  }
  const int32_t L = space.num_layers;
  stats.recall.budget = options.prefetch.budget > 0 ? options.prefetch.budget : po.top_k;
  stats.recall.found.assign(static_cast<size_t>(L), 0);
  stats.recall.chosen.assign(static_cast<size_t>(L), 0);
  predicted.resize(static_cast<size_t>(space.num_experts));
  predicted_order.resize(static_cast<size_t>(space.num_experts));
  token_experts.resize(static_cast<size_t>(po.top_k));
  return absl::OkStatus();
}

Engine::Engine(std::shared_ptr<const Model> model, const EngineOptions& options)
    : model_(std::move(model)), options_(options), impl_(std::make_unique<Impl>()) {}
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::shared_ptr<const Model> model,
                                                       const EngineOptions& options) {
  if (model == nullptr) return InvalidArgument("engine: no model");
  const ModelConfig& cfg = model->config;
  if (options.prefill_chunk < 1) {
    return InvalidArgument("prefill chunk {} must be >= 1", options.prefill_chunk);
  }
  if (options.max_sequences < 1) {
    return InvalidArgument("max sequences {} must be >= 1", options.max_sequences);
  }
  if (options.max_context < 0) {
    return InvalidArgument("max context {} must be >= 0", options.max_context);
  }
  if (options.cpu_fallback_bypass && !options.cpu_fallback) {
    return InvalidArgument("cpu_fallback_bypass needs cpu_fallback");
  }
  std::unique_ptr<Engine> engine(new Engine(model, options));
  Impl& m = *engine->impl_;
  m.model = model.get();
  m.cfg = &model->config;
  engine->max_context_ = options.max_context > 0
                             ? options.max_context
                             : std::min<int64_t>(cfg.max_position_embeddings, 4096);
  const int64_t max_context = engine->max_context_;

  // --- expert cache: slots from the budget ---
  const ExpertSpace space{static_cast<int32_t>(cfg.num_layers),
                          static_cast<int32_t>(cfg.num_experts)};
  m.expert_bytes = model->weights.expert_bytes;
  const uint64_t all_experts = m.expert_bytes * static_cast<uint64_t>(space.size());
  const uint64_t budget = options.expert_budget_bytes == 0
                              ? all_experts
                              : std::min(options.expert_budget_bytes, all_experts);
  const uint64_t partitions = options.scope == CacheScope::kLayer ? cfg.num_layers : 1;
  const uint64_t per_partition = budget / m.expert_bytes / partitions;
  if (per_partition < static_cast<uint64_t>(cfg.top_k)) {
    return ResourceExhausted(
        "expert budget {} bytes is smaller than one token's experts: it holds {} experts of {} "
        "bytes per {} but top-k is {} (need at least {} bytes)",
        budget, per_partition, m.expert_bytes,
        options.scope == CacheScope::kLayer ? "layer" : "cache", cfg.top_k,
        m.expert_bytes * cfg.top_k * partitions);
  }
  CacheOptions cache_options;
  cache_options.space = space;
  cache_options.expert_bytes = m.expert_bytes;
  cache_options.budget_bytes = budget;
  cache_options.scope = options.scope;
  cache_options.policy = options.policy;
  if (options.policy == "predictive" && options.predictor == "none") {
    return InvalidArgument(
        "eviction policy 'predictive' ranks experts by a predictor's guesses: choose a predictor "
        "(gate, frequency, transition, recency or combined)");
  }
  if (options.forced_routing != nullptr) {
    const RoutingTrace& t = *options.forced_routing;
    if (t.num_tokens() == 0 || t.header.num_layers < 1) {
      return InvalidArgument("forced routing: the trace has no tokens or no layers");
    }
    if (t.header.top_k != cfg.top_k) {
      return InvalidArgument("forced routing: the trace has top-k {}, the model {}", t.header.top_k,
                             cfg.top_k);
    }
    if (t.header.num_experts > cfg.num_experts) {
      return InvalidArgument("forced routing: the trace has {} experts per layer, the model {}",
                             t.header.num_experts, cfg.num_experts);
    }
    MOE_RETURN_IF_ERROR_CTX(t.Validate(), "forced routing");
    MOE_LOG(kWarning,
            "benchmark mode: routing forced from the trace '{}' ({} tokens x {} layers); outputs "
            "are meaningless",
            t.header.model, t.num_tokens(), t.header.num_layers);
    m.forced = options.forced_routing;
  }
  MOE_RETURN_IF_ERROR(m.CreatePredictor(options, space));
  if (m.predictor != nullptr && options.policy == "predictive") {
    m.scores = std::make_unique<ExpertScores>(space);
    cache_options.scores = m.scores.get();
  }
  MOE_ASSIGN_OR_RETURN(m.cache, ExpertCache::Create(cache_options));
  if (m.predictor != nullptr) {
    m.planner = std::make_unique<PrefetchPlanner>(*m.predictor, m.scores.get(), options.prefetch);
    m.cancel_stale_prefetches = options.cancel_stale_prefetches;
  }
  const uint64_t arena_bytes = static_cast<uint64_t>(m.cache->capacity_total()) * m.expert_bytes;

  // --- sizes of everything else on the device ---
  m.dev = model->weights;
  const std::vector<WeightView*> views = NonExpertViews(m.dev, cfg.tie_word_embeddings);
  // The CPU device reads the mapped checkpoint in place: one copy of the weights in host memory.
  MOE_ASSIGN_OR_RETURN(const std::string device_name, ResolveDevice(options.device));
#if MOE_CUDA_ENABLED
  cuda::CudaDevice* cuda_device = nullptr;
#endif
  // The CPU fallback serves devices that are not the CPU (checked before any device is made).
  if (options.cpu_fallback && device_name != "cpu") {
    if (!(options.cpu_bytes_per_second >= 0) || !(options.cpu_flops_per_second >= 0)) {
      return InvalidArgument("cpu fallback: {} B/s and {} flop/s must be >= 0 (0: measure)",
                             options.cpu_bytes_per_second, options.cpu_flops_per_second);
    }
    m.cpu_fallback = true;
    m.cpu_fallback_bypass = options.cpu_fallback_bypass;
  }
  if (device_name == "fake") {
    if (!(options.fake_device.link_bytes_per_second > 0) ||
        !(options.fake_compute_bytes_per_second > 0)) {
      return InvalidArgument("fake device: link {} B/s and compute {} B/s must be > 0",
                             options.fake_device.link_bytes_per_second,
                             options.fake_compute_bytes_per_second);
    }
    m.device = MakeFakeDevice(options.fake_device);
    m.charge_compute = true;
    m.seconds_per_byte = 1.0 / options.fake_compute_bytes_per_second;
    m.transfer_seconds =
        options.fake_device.link_latency_seconds +
        double(model->weights.expert_bytes) / options.fake_device.link_bytes_per_second;
  } else if (device_name == "cpu") {
    m.device = MakeCpuDevice(0);
  } else {  // cuda
#if MOE_CUDA_ENABLED
    MOE_RETURN_IF_ERROR(cuda::CudaForwardOps::CheckSupported(cfg, model->weights));
    auto created = cuda::CudaDevice::Create(cuda::CudaDeviceOptions{});
    if (!created.ok()) return Annotate(created.status(), "device 'cuda'");
    cuda_device = created->get();
    m.device = *std::move(created);
#else
    return FailedPrecondition(
        "device 'cuda': this build has no CUDA support (build where nvcc exists, with "
        "-DMOE_WITH_CUDA=ON or AUTO)");
#endif
  }
  if (options.max_unconfirmed_prefetches < 0 ||
      (options.prefetch_bytes_per_step > 0 &&
       options.prefetch_bytes_per_step < model->weights.expert_bytes)) {
    return InvalidArgument(
        "prefetch limits: {} bytes per step (0, or at least one expert of {} bytes) and a cap of "
        "{} unconfirmed prefetches (>= 0)",
        options.prefetch_bytes_per_step, model->weights.expert_bytes,
        options.max_unconfirmed_prefetches);
  }
  if (options.copy_window < 1) {
    return InvalidArgument("copy window {} must be >= 1", options.copy_window);
  }
  const bool copy_weights = !m.device->reads_host_memory();
  uint64_t weight_bytes = 0;
  if (copy_weights) {
    for (const WeightView* v : views) weight_bytes += AlignUp(v->num_bytes());
  }

  m.max_step = std::max<int64_t>(options.prefill_chunk, options.max_sequences);
  m.q_dim = cfg.num_heads * cfg.head_dim;
  m.kv_dim = cfg.num_kv_heads * cfg.head_dim;
  const int64_t T = m.max_step, H = cfg.hidden_size;
  const int64_t ffn = std::max(cfg.intermediate_size, cfg.shared_expert_intermediate_size);
  m.pool = std::make_unique<cpu::ThreadPool>(options.num_threads);
  if (m.cpu_fallback) {
    // The CPU side of the cost model: given rates, or measured now on a real expert.
    const CpuExpertRates measured =
        options.cpu_bytes_per_second > 0 && options.cpu_flops_per_second > 0
            ? CpuExpertRates{}
            : MeasureCpuExpertRates(model->weights.layers[0].experts[0], m.pool.get());
    m.stats.cpu_bytes_per_second =
        options.cpu_bytes_per_second > 0 ? options.cpu_bytes_per_second : measured.bytes_per_second;
    m.stats.cpu_flops_per_second =
        options.cpu_flops_per_second > 0 ? options.cpu_flops_per_second : measured.flops_per_second;
    m.cpu_seconds_per_byte = 1.0 / m.stats.cpu_bytes_per_second;
    m.cpu_seconds_per_flop = 1.0 / m.stats.cpu_flops_per_second;
  }
  const int64_t threads = m.pool->num_threads();
  // Offsets (in floats, each aligned) of the activation buffers inside one allocation.
  const int64_t sizes[] = {T * H,
                           T * H,
                           T * m.q_dim,
                           T * m.kv_dim,
                           T * m.kv_dim,
                           T * m.q_dim,
                           T * H,
                           T * cfg.num_experts,
                           T * cfg.top_k,
                           T * H,
                           T * H,
                           2 * T * ffn,
                           T * H,
                           T,
                           T * cfg.vocab_size,
                           threads * max_context,
                           T * cfg.top_k,
                           T * cfg.top_k * H,
                           T * H};
  uint64_t activation_bytes = 0;
  for (int64_t s : sizes) activation_bytes += AlignUp(static_cast<uint64_t>(s) * 4);
  const uint64_t kv_bytes = static_cast<uint64_t>(options.max_sequences) * cfg.num_layers * 2 *
                            max_context * m.kv_dim * sizeof(float);

  // Device memory the ops need beyond the activations (the CUDA ops' workspace; 0 elsewhere).
  uint64_t workspace_bytes = 0;
#if MOE_CUDA_ENABLED
  if (cuda_device != nullptr) {
    workspace_bytes = cuda::CudaForwardOps::WorkspaceBytes(cfg, model->weights, T);
  }
#endif

  // The device holds exactly these; a larger peak would be an allocation error, not a surprise.
  m.device->SetCapacity(weight_bytes + arena_bytes + activation_bytes + kv_bytes + workspace_bytes);
  MOE_ASSIGN_OR_RETURN(m.weights, m.device->Allocate(weight_bytes, "non-expert weights"));
  MOE_ASSIGN_OR_RETURN(m.slots, m.device->Allocate(arena_bytes, "expert slots"));
  MOE_ASSIGN_OR_RETURN(m.activations, m.device->Allocate(activation_bytes, "activations"));
  MOE_ASSIGN_OR_RETURN(m.kv, m.device->Allocate(kv_bytes, "kv cache"));
  if (workspace_bytes > 0) {
    MOE_ASSIGN_OR_RETURN(m.workspace, m.device->Allocate(workspace_bytes, "forward workspace"));
  }
#if MOE_CUDA_ENABLED
  if (cuda_device != nullptr) {
    // Before the weights are copied: Create also waits for the buffers' zero fill.
    MOE_ASSIGN_OR_RETURN(auto ops, cuda::CudaForwardOps::Create(*cuda_device, cfg, model->weights,
                                                                T, m.workspace.data()));
    if (m.cpu_fallback) {
      MOE_RETURN_IF_ERROR(ops->EnableHostExperts(m.pool.get(), cfg.intermediate_size));
    }
    m.ops = std::move(ops);
    // Expert copies from pinned memory are asynchronous and faster; refused pinning only costs
    // speed (pageable copies are correct).
    auto pins = std::make_shared<cuda::PinnedCheckpoint>();
    if (options.pin_host_experts && model->checkpoint != nullptr) {
      const absl::Status pinned = pins->Pin(*cuda_device, *model->checkpoint);
      if (!pinned.ok()) {
        MOE_LOG(kWarning,
                "expert copies go through a pinned staging ring (slower than pinned): pinning the "
                "checkpoint was refused: {}",
                std::string(pinned.message()));
      }
    }
    m.stats.pinned_host_bytes = pins->bytes();
    m.host_pins = std::move(pins);
  }
#endif

  if (copy_weights) {
    std::byte* dst = m.weights.data();
    for (WeightView* v : views) {
      m.device->CopyToDevice(dst, v->data, v->num_bytes());
      v->data = dst;
      dst += AlignUp(v->num_bytes());
    }
    if (cfg.tie_word_embeddings) m.dev.lm_head = m.dev.embed;
  }
  m.stats.non_expert_bytes = weight_bytes;

  std::byte* a = m.activations.data();
  constexpr int kBuffers = static_cast<int>(std::size(sizes));
  float* bufs[kBuffers];
  for (int i = 0; i < kBuffers; ++i) {
    bufs[i] = reinterpret_cast<float*>(a);
    a += AlignUp(static_cast<uint64_t>(sizes[i]) * 4);
  }
  m.x = bufs[0], m.xn = bufs[1], m.q = bufs[2], m.k = bufs[3], m.v = bufs[4], m.attn = bufs[5];
  m.tmp = bufs[6], m.router = bufs[7], m.weights_k = bufs[8], m.xe = bufs[9], m.ye = bufs[10];
  m.ffn_scratch = bufs[11], m.shared_out = bufs[12], m.shared_gate = bufs[13];
  m.logits = bufs[14], m.attn_scratch = bufs[15];
  m.ids = reinterpret_cast<int32_t*>(bufs[16]);
  m.routed_out = bufs[17];
  m.layer_out = bufs[18];
  if (m.ops == nullptr) {
    m.ops = MakeCpuForwardOps(m.pool.get(), H,
                              CpuForwardScratch{m.xe, m.ye, m.ffn_scratch, m.attn_scratch});
  }
  if (!m.ops->host_memory()) {
    // The engine's host logic (hidden-state predictors) keeps this copy of the residual stream.
    m.layer_out_host.assign(static_cast<size_t>(T * H), 0.0f);
    m.layer_out = m.layer_out_host.data();
  }

  m.store = std::make_unique<HostExpertStore>(model->weights, space);
  // Synchronous copies (the CPU device) are split over the pool; the fake device models each
  // copy call, and the CUDA device needs each copy's ticket, so an expert is three calls there.
  m.transfers = std::make_unique<ExpertTransfers>(
      *m.device, *m.store, *m.cache, m.slots.data(), options.copy_window,
      device_name == "cpu" ? m.pool.get() : nullptr, options.prefetch_bytes_per_step,
      options.max_unconfirmed_prefetches);
  m.cache->SetEvictionListener(
      [t = m.transfers.get()](ExpertKey key, int32_t) { t->OnEvicted(key); });
  if (m.cpu_fallback && device_name == "cuda") {
    // The link's side of the cost model, measured: one expert into slot 0 (still unused), the
    // faster of two copies (the first also warms the path up).
    m.transfer_seconds = INFINITY;
    for (int i = 0; i < 2; ++i) {
      const auto start = Clock::now();
      m.store->CopyToSlot(space.Key(0, 0), *m.device, m.slots.data());
      m.transfer_seconds = std::min(m.transfer_seconds, SecondsSince(start));
    }
    MOE_LOG(kInfo, "cpu fallback: one expert takes {:.3f} ms over the link",
            m.transfer_seconds * 1e3);
  }
  for (const LayerWeights& l : m.dev.layers) {
    uint64_t bytes = 0;
    for (const WeightView* v : {&l.q, &l.k, &l.v, &l.o, &l.router, &l.shared_expert.gate,
                                &l.shared_expert.up, &l.shared_expert.down}) {
      if (v->present()) bytes += v->num_bytes();
    }
    m.layer_weight_bytes.push_back(bytes);
  }
  m.seq_len.assign(static_cast<size_t>(options.max_sequences), 0);
  for (int32_t i = 0; i < options.max_sequences; ++i) m.request_of.push_back(m.next_request++);
  m.stats.setup_bytes_to_device = m.device->counters().bytes_to_device;
  m.expert_count.assign(static_cast<size_t>(cfg.num_experts), 0);
  m.expert_first.assign(static_cast<size_t>(cfg.num_experts), 0);
  m.expert_fill.assign(static_cast<size_t>(cfg.num_experts), 0);
  m.stats.expert_arena_bytes = arena_bytes;
  m.stats.activation_bytes = activation_bytes + kv_bytes + workspace_bytes;
  m.stats.expert_slots = m.cache->capacity_total();
  MOE_LOG(kInfo,
          "engine: {} device, {} expert slots ({:.1f} MB of {:.1f} MB experts, policy {}, {} "
          "scope), {:.1f} MB weights, {:.1f} MB activations + kv, {} threads",
          m.device->name(), m.cache->capacity_total(), arena_bytes / 1e6, all_experts / 1e6,
          options.policy, CacheScopeName(options.scope), weight_bytes / 1e6,
          (activation_bytes + kv_bytes + workspace_bytes) / 1e6, threads);
  return engine;
}

absl::Status Engine::Impl::MoeBlock(int32_t layer, int64_t n) {
  const ModelConfig& c = *cfg;
  const LayerWeights& lw = dev.layers[layer];
  const int64_t E = c.num_experts, K = c.top_k;
  MOE_RETURN_IF_ERROR(ops->Linear(xn, n, lw.router, router));
  // The routing comes back to the host: the cache, tracer and predictor work there.
  MOE_RETURN_IF_ERROR(ops->Route(router, n, E, K, c.norm_topk_prob, ids, weights_k, &route));
  // The experts the layer runs: the router's, or the trace's in benchmark mode. The cache, the
  // tracer, the predictor and the recall all see these.
  layer_ids = forced != nullptr ? ForcedIds(layer, n) : route.ids;
  const int32_t* const host_ids = layer_ids;
  if (tracer != nullptr) {
    tracer->RecordLayer(layer, {host_ids, static_cast<size_t>(n * K)},
                        {route.weights, static_cast<size_t>(n * K)});
  }

  // Group the (token, rank) pairs per expert; keys in order of first use.
  std::fill(expert_count.begin(), expert_count.end(), 0);
  keys.clear();
  const ExpertSpace space = store->space();
  for (int64_t i = 0; i < n * K; ++i) {
    if (expert_count[host_ids[i]]++ == 0) keys.push_back(space.Key(layer, host_ids[i]));
  }
  int32_t offset = 0;
  for (int64_t e = 0; e < E; ++e) {
    expert_first[e] = expert_fill[e] = offset;
    offset += expert_count[e];
  }
  rows.resize(static_cast<size_t>(n * K));
  for (int64_t i = 0; i < n * K; ++i) rows[expert_fill[host_ids[i]]++] = static_cast<int32_t>(i);
  MOE_RETURN_IF_ERROR(ops->BeginExperts(xn, n, K, rows));

  if (predictor != nullptr) MeasureRecall(layer, n);
  if (scores != nullptr) {  // the "predictive" policy's scores: the next visit, given this one
    for (int64_t t = 0; t < n; ++t)
      planner->BeforeAcquire(step_requests[t], layer, TokenExperts(t));
  }
  PhaseStats& phase = n > 1 ? stats.prefill : stats.decode;
  if (cpu_fallback_bypass) MOE_RETURN_IF_ERROR(RunMissesOnHost());
  MOE_RETURN_IF_ERROR(AcquireInWaves(
      *cache, keys, {}, wave, pending,
      [&](std::span<const AcquiredExpert> acquired) { return RunWave(acquired, phase); }));

  // Combine in rank order, whatever order the experts ran in (resident first, waves, prefetched
  // ones): the result never depends on the cache's state, budget or predictor.
  MOE_RETURN_IF_ERROR(ops->CombineExperts(routed_out, weights_k, x));

  if (lw.shared_expert.gate.present()) {
    MOE_RETURN_IF_ERROR(ops->SharedExpert(xn, n, lw.shared_expert, lw.shared_expert_gate,
                                          shared_out, shared_gate, x));
  }

  if (planner != nullptr) MOE_RETURN_IF_ERROR(PlanPrefetches(layer, n, phase));
  return absl::OkStatus();
}

absl::Status Engine::Impl::RunWave(std::span<const AcquiredExpert> acquired, PhaseStats& phase) {
  // Misses queue demand copies; hits on prefetches still on their way become demand.
  auto start = Clock::now();
  for (const AcquiredExpert& a : acquired) {
    if (a.loaded) {
      transfers->Demand(a.key);
    } else {
      transfers->Use(a.key);
    }
  }
  transfers->Pump();
  phase.load_seconds += SecondsSince(start);
  // The scheduler's order: experts already in their slots first, then by expected arrival, so
  // compute runs while the remaining copies are on the link.
  wave_order.clear();
  for (uint32_t i = 0; i < acquired.size(); ++i) wave_order.push_back(i);
  std::stable_sort(wave_order.begin(), wave_order.end(), [&](uint32_t x, uint32_t y) {
    return transfers->ExpectedOrder(acquired[x].key) < transfers->ExpectedOrder(acquired[y].key);
  });
  for (uint32_t i : wave_order) {
    const AcquiredExpert& a = acquired[i];
    const int32_t e = store->space().Id(a.key).expert;
    const bool on_cpu = cpu_fallback && PreferCpu(a.key, expert_count[e]);
    if (!on_cpu) {
      start = Clock::now();
      MOE_RETURN_IF_ERROR(transfers->WaitReady(a.key));
      phase.load_seconds += SecondsSince(start);
    }
    MOE_RETURN_IF_ERROR(RunExpert(a, on_cpu));
    transfers->Pump();
  }
  return absl::OkStatus();
}

absl::Status Engine::Impl::RunMissesOnHost() {
  // Decided before the cache sees the misses, so a miss the CPU serves takes no slot and no
  // copy. While the link idles a miss is loaded anyway (RunWave may still compute it on the CPU
  // while its copy runs): the copy is free then, and a later token may hit it.
  size_t kept = 0;
  for (const ExpertKey key : keys) {
    const int32_t e = store->space().Id(key).expert;
    if (cache->Contains(key) || transfers->LinkIdle() ||
        !PreferCpuOver(transfers->CopiesAheadOfNewDemand(), expert_count[e])) {
      keys[kept++] = key;
      continue;
    }
    ++stats.cpu_uncached;
    MOE_RETURN_IF_ERROR(RunExpert(AcquiredExpert{key}, /*on_cpu=*/true));
  }
  keys.resize(kept);
  return absl::OkStatus();
}

bool Engine::Impl::PreferCpu(ExpertKey key, int32_t tokens) {
  if (transfers->Ready(key)) return false;
  return PreferCpuOver(transfers->CopiesAhead(key), tokens);
}

bool Engine::Impl::PreferCpuOver(int64_t copies_ahead, int32_t tokens) {
  // Wait for the copy and compute on the device, or compute on the CPU from host memory now.
  const double device_s =
      double(copies_ahead) * transfer_seconds + double(expert_bytes) * seconds_per_byte;
  const double cpu_s = std::max(double(expert_bytes) * cpu_seconds_per_byte,
                                6.0 * tokens * double(cfg->hidden_size) *
                                    double(cfg->intermediate_size) * cpu_seconds_per_flop);
  if (cpu_s >= device_s) return false;
  ++stats.cpu_fallbacks;
  stats.cpu_fallback_seconds += cpu_s;
  device->ChargeCompute(cpu_s);
  return true;
}

absl::Status Engine::Impl::RunExpert(const AcquiredExpert& a, bool on_cpu) {
  const int32_t e = store->space().Id(a.key).expert;
  if (on_cpu) {
    return ops->RunExpertOnHost(expert_first[e], expert_count[e], store->HostWeights(a.key),
                                routed_out);
  }
  const FfnWeights w = store->SlotWeights(a.key, slots.data() + uint64_t(a.slot) * expert_bytes);
  MOE_RETURN_IF_ERROR(ops->RunExpert(expert_first[e], expert_count[e], w, routed_out));
  if (charge_compute) device->ChargeCompute(double(expert_bytes) * seconds_per_byte);
  return absl::OkStatus();
}

absl::Status Engine::Impl::PlanPrefetches(int32_t layer, int64_t n, PhaseStats& phase) {
  // The same order as replay: the step's experts were acquired, now each token's routing is
  // observed and its predicted experts prefetched.
  const int64_t H = cfg->hidden_size;
  const bool hidden = predictor->uses_hidden_states();
  // The residual stream after this layer, on the host (copied back only for hidden-state
  // predictors, and only where activations are not host memory).
  const float* hx = nullptr;
  if (hidden) {
    MOE_ASSIGN_OR_RETURN(hx, ops->HostView(x, n * H));
  }
  // Predictors that keep one state per token (learned) get each chunk token's own state back.
  const int32_t state_layer = hidden && n > 1 ? predictor->token_state_layer() : -1;
  if (state_layer == layer) {
    token_state.assign(hx, hx + n * H);
  }
  // Only a single-token step's prediction supersedes earlier ones for the same layer visit.
  const bool cancel_stale = cancel_stale_prefetches && n == 1;
  for (int64_t t = 0; t < n; ++t) {
    planner->AfterRouting(
        *cache, step_requests[t], layer, TokenExperts(t),
        hidden ? std::span<const float>(hx + t * H, static_cast<size_t>(H))
               : std::span<const float>(),
        [&](int32_t) { return transfers->AdmitPrefetch(); },
        [&](ExpertKey key, int32_t distance) {
          transfers->Prefetch(
              key, distance == 1 ? TransferPriority::kNextLayer : TransferPriority::kLookahead);
        },
        state_layer >= 0 && state_layer < layer ? TokenState(t) : std::span<const float>(),
        [&](int32_t target, std::span<const ExpertKey> wanted) {
          if (cancel_stale) CancelStalePrefetches(target, wanted);
        });
  }
  if (hidden && n > 1) std::memcpy(layer_out, hx, static_cast<size_t>(n * H) * sizeof(float));
  const auto start = Clock::now();
  transfers->Pump();
  phase.load_seconds += SecondsSince(start);
  return absl::OkStatus();
}

void Engine::Impl::CancelStalePrefetches(int32_t layer, std::span<const ExpertKey> wanted) {
  stale_keys.clear();
  transfers->CancelStale(layer, wanted, stale_keys);
  for (const ExpertKey key : stale_keys) {
    // A queued prefetch is unpinned (demand would have confirmed it, and confirmed transfers
    // are never cancelled), so Erase cannot fail; its slot was never written.
    const absl::StatusOr<bool> erased = cache->Erase(key);
    MOE_CHECK_MSG(erased.ok() && *erased, "stale prefetch {} not erasable from the cache", key);
  }
  stats.stale_prefetches_cancelled += stale_keys.size();
}

void Engine::Impl::MeasureRecall(int32_t layer, int64_t n) {
  const int64_t K = cfg->top_k, H = cfg->hidden_size;
  PredictionRecall& r = stats.recall;
  // A step's tokens share their sequence's predictor state, which now holds the step's last
  // token. A hidden-state predictor gets each token's own state back first, so every token is
  // predicted from its own residual stream, as it would be run one at a time.
  const bool own_hidden = predictor->uses_hidden_states() && layer > 0 && n > 1;
  for (int64_t t = 0; t < n; ++t) {
    if (own_hidden) {
      predictor->ObserveHidden(step_requests[t], layer - 1,
                               {layer_out + t * H, static_cast<size_t>(H)});
      const int32_t state_layer = predictor->token_state_layer();
      if (state_layer >= 0 && state_layer < layer - 1) {
        predictor->ObserveHidden(step_requests[t], state_layer, TokenState(t));
      }
    }
    predictor->Predict(step_requests[t], layer, predicted);
    SanitizeProbabilities(predicted);  // the planner reports garbage; here it only must not rank
    const int32_t top = TopExpertIds(predicted, r.budget, predicted_order);
    for (int64_t j = 0; j < K; ++j) {
      const int32_t chosen = layer_ids[t * K + j];
      for (int32_t i = 0; i < top; ++i) {
        if (predicted_order[i] == chosen) {
          ++r.found[layer];
          break;
        }
      }
    }
    r.chosen[layer] += static_cast<uint64_t>(K);
  }
}

absl::Status Engine::Impl::RunStep(std::span<const StepToken> tokens, bool all_logits,
                                   int64_t max_context, float* logits_out,
                                   PhaseStats& phase_stats) {
  const auto start = Clock::now();
  const double device_start = device->Now();
  transfers->BeginStep();
  const ModelConfig& c = *cfg;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t H = c.hidden_size, D = c.head_dim;
  step_requests.clear();
  for (const StepToken& t : tokens) {
    step_requests.push_back(request_of[t.sequence]);
    if (predictor != nullptr && t.position == 0) predictor->BeginSequence(request_of[t.sequence]);
  }
  if (tracer != nullptr) {
    step_phases.clear();
    for (const StepToken& t : tokens) step_phases.push_back(t.phase);
    tracer->BeginStep(step_requests, step_phases);
  }
  token_ids.resize(static_cast<size_t>(n));
  positions.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    token_ids[i] = tokens[i].id;
    positions[i] = tokens[i].position;
  }
  if (forced != nullptr) {
    forced_tokens.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) forced_tokens[i] = forced_next++ % forced->num_tokens();
    forced_ids.resize(static_cast<size_t>(n * c.top_k));
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  MOE_RETURN_IF_ERROR(ops->BeginStep(token_ids, positions));
  MOE_RETURN_IF_ERROR(ops->Embed(dev.embed, x));

  for (int32_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& lw = dev.layers[l];
    MOE_RETURN_IF_ERROR(ops->RmsNorm(x, n, H, lw.input_norm, eps, xn));
    MOE_RETURN_IF_ERROR(ops->Linear(xn, n, lw.q, q));
    MOE_RETURN_IF_ERROR(ops->Linear(xn, n, lw.k, k));
    MOE_RETURN_IF_ERROR(ops->Linear(xn, n, lw.v, v));
    if (lw.q_bias.present()) {
      MOE_RETURN_IF_ERROR(ops->AddBias(q, n, lw.q_bias));
      MOE_RETURN_IF_ERROR(ops->AddBias(k, n, lw.k_bias));
      MOE_RETURN_IF_ERROR(ops->AddBias(v, n, lw.v_bias));
    }
    MOE_RETURN_IF_ERROR(ops->Rope(q, n, c.num_heads, D, c.rope_theta));
    MOE_RETURN_IF_ERROR(ops->Rope(k, n, c.num_kv_heads, D, c.rope_theta));
    // Per run of consecutive tokens of one sequence (a prompt chunk, or one token): their keys
    // and values into the KV cache (contiguous there too), then attention.
    for (int64_t i = 0; i < n;) {
      int64_t j = i + 1;
      while (j < n && tokens[j].sequence == tokens[i].sequence &&
             tokens[j].position == tokens[j - 1].position + 1) {
        ++j;
      }
      const StepToken& t = tokens[i];
      float* const k_cache = KvAt(t.sequence, l, 0, max_context);
      float* const v_cache = KvAt(t.sequence, l, 1, max_context);
      MOE_RETURN_IF_ERROR(
          ops->CopyDeviceFloats(k_cache + t.position * kv_dim, k + i * kv_dim, (j - i) * kv_dim));
      MOE_RETURN_IF_ERROR(
          ops->CopyDeviceFloats(v_cache + t.position * kv_dim, v + i * kv_dim, (j - i) * kv_dim));
      i = j;
    }
    for (int64_t i = 0; i < n;) {
      int64_t j = i + 1;
      while (j < n && tokens[j].sequence == tokens[i].sequence &&
             tokens[j].position == tokens[j - 1].position + 1) {
        ++j;
      }
      MOE_RETURN_IF_ERROR(ops->Attention(q + i * q_dim, j - i, tokens[i].position,
                                         KvAt(tokens[i].sequence, l, 0, max_context),
                                         KvAt(tokens[i].sequence, l, 1, max_context), c.num_heads,
                                         c.num_kv_heads, D, c.sliding_window, attn + i * q_dim));
      i = j;
    }
    MOE_RETURN_IF_ERROR(ops->Linear(attn, n, lw.o, tmp));
    MOE_RETURN_IF_ERROR(ops->AddInPlace(x, tmp, n * H));
    MOE_RETURN_IF_ERROR(ops->RmsNorm(x, n, H, lw.post_attention_norm, eps, xn));
    if (charge_compute) device->ChargeCompute(double(layer_weight_bytes[l]) * seconds_per_byte);
    MOE_RETURN_IF_ERROR(MoeBlock(l, n));
  }
  if (tracer != nullptr) tracer->EndStep();

  // Final norm and LM head: every token, or only the last one.
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows_out = n - first;
  MOE_RETURN_IF_ERROR(ops->RmsNorm(x + first * H, rows_out, H, dev.final_norm, eps, xn));
  MOE_RETURN_IF_ERROR(ops->Linear(xn, rows_out, dev.lm_head, logits));
  if (charge_compute) device->ChargeCompute(double(dev.lm_head.num_bytes()) * seconds_per_byte);
  MOE_RETURN_IF_ERROR(ops->CopyToHost(logits_out, logits, rows_out * c.vocab_size));

  phase_stats.tokens += static_cast<uint64_t>(n);
  phase_stats.steps += 1;
  phase_stats.seconds += SecondsSince(start);
  phase_stats.device_seconds += device->Now() - device_start;
  return absl::OkStatus();
}

absl::Status Engine::Evaluate(std::span<const SequenceTokens> batch, bool all_logits,
                              std::span<float> logits_out) {
  Impl& m = *impl_;
  const ModelConfig& c = model_->config;
  if (batch.empty()) return InvalidArgument("evaluate: empty batch");
  std::vector<bool> seen(static_cast<size_t>(options_.max_sequences), false);
  size_t rows = 0;
  for (const SequenceTokens& entry : batch) {
    if (entry.sequence < 0 || entry.sequence >= options_.max_sequences) {
      return OutOfRange("sequence id {} outside [0, {})", entry.sequence, options_.max_sequences);
    }
    if (seen[entry.sequence]) {
      return InvalidArgument("sequence id {} appears twice in one batch", entry.sequence);
    }
    seen[entry.sequence] = true;
    if (entry.tokens.empty()) return InvalidArgument("sequence {}: no tokens", entry.sequence);
    for (int32_t id : entry.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return InvalidArgument("sequence {}: token id {} outside the vocabulary [0, {})",
                               entry.sequence, id, c.vocab_size);
      }
    }
    const int64_t len = m.seq_len[entry.sequence];
    if (len + static_cast<int64_t>(entry.tokens.size()) > max_context_) {
      return OutOfRange("sequence {}: {} + {} tokens exceed the context of {}", entry.sequence, len,
                        entry.tokens.size(), max_context_);
    }
    rows += all_logits ? entry.tokens.size() : 1;
  }
  if (logits_out.size() != rows * static_cast<size_t>(c.vocab_size)) {
    return InvalidArgument("logits buffer holds {} floats, expected {} ({} rows x vocab {})",
                           logits_out.size(), rows * c.vocab_size, rows, c.vocab_size);
  }

  // Where each entry's logits go.
  std::vector<size_t> out_row(batch.size());
  for (size_t i = 0, r = 0; i < batch.size(); ++i) {
    out_row[i] = r;
    r += all_logits ? batch[i].tokens.size() : 1;
  }
  const size_t V = static_cast<size_t>(c.vocab_size);
  std::vector<StepToken> step;
  // Prompts: prefill steps of up to prefill_chunk tokens.
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceTokens& entry = batch[i];
    if (entry.tokens.size() < 2) continue;
    const int64_t total = static_cast<int64_t>(entry.tokens.size());
    for (int64_t begin = 0; begin < total; begin += options_.prefill_chunk) {
      const int64_t end = std::min(total, begin + options_.prefill_chunk);
      step.clear();
      for (int64_t t = begin; t < end; ++t) {
        step.push_back(StepToken{entry.sequence, m.seq_len[entry.sequence] + t, entry.tokens[t],
                                 Phase::kPrefill});
      }
      const bool last_chunk = end == total;
      float* out = logits_out.data() + (out_row[i] + (all_logits ? begin : 0)) * V;
      if (all_logits || last_chunk) {
        MOE_RETURN_IF_ERROR(m.RunStep(step, all_logits, max_context_, out, m.stats.prefill));
      } else {
        // Intermediate chunks only fill the KV cache; their last-token logits are discarded.
        std::vector<float> discard(V);
        MOE_RETURN_IF_ERROR(m.RunStep(step, false, max_context_, discard.data(), m.stats.prefill));
      }
    }
    m.seq_len[entry.sequence] += total;
  }
  // Single tokens: one decode step over every such sequence.
  step.clear();
  std::vector<size_t> single;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].tokens.size() != 1) continue;
    const int64_t pos = m.seq_len[batch[i].sequence];
    step.push_back(StepToken{batch[i].sequence, pos, batch[i].tokens[0],
                             pos == 0 ? Phase::kPrefill : Phase::kDecode});
    single.push_back(i);
  }
  if (!step.empty()) {
    std::vector<float> out(step.size() * V);
    MOE_RETURN_IF_ERROR(m.RunStep(step, true, max_context_, out.data(), m.stats.decode));
    for (size_t s = 0; s < single.size(); ++s) {
      std::memcpy(logits_out.data() + out_row[single[s]] * V, out.data() + s * V,
                  V * sizeof(float));
      m.seq_len[batch[single[s]].sequence] += 1;
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::ResetSequence(int32_t sequence) {
  if (sequence < 0 || sequence >= options_.max_sequences) {
    return OutOfRange("sequence id {} outside [0, {})", sequence, options_.max_sequences);
  }
  if (impl_->seq_len[sequence] > 0) {
    if (impl_->predictor != nullptr) impl_->predictor->EndSequence(impl_->request_of[sequence]);
    impl_->request_of[sequence] = impl_->next_request++;
  }
  impl_->seq_len[sequence] = 0;
  return absl::OkStatus();
}

int64_t Engine::SequenceLength(int32_t sequence) const {
  if (sequence < 0 || sequence >= options_.max_sequences) return -1;
  return impl_->seq_len[sequence];
}

void Engine::StartTrace() {
  const ModelConfig& c = model_->config;
  TraceHeader header;
  header.model = model_->dir;
  header.num_layers = static_cast<int32_t>(c.num_layers);
  header.num_experts = static_cast<int32_t>(c.num_experts);
  header.top_k = static_cast<int32_t>(c.top_k);
  header.expert_bytes = impl_->expert_bytes;
  impl_->tracer = std::make_unique<RoutingTracer>(header);
}

absl::StatusOr<RoutingTrace> Engine::StopTrace() {
  if (impl_->tracer == nullptr) return FailedPrecondition("no trace is being recorded");
  std::unique_ptr<RoutingTracer> tracer = std::move(impl_->tracer);
  if (tracer->num_tokens() == 0) return FailedPrecondition("the trace recorded no tokens");
  return tracer->Build();
}

bool Engine::tracing() const { return impl_->tracer != nullptr; }

Device& Engine::device() { return *impl_->device; }

EngineStats Engine::stats() const {
  EngineStats s = impl_->stats;
  s.cache = impl_->cache->stats();
  s.device = impl_->device->counters();
  s.transfers = impl_->transfers->counters();
  s.failed_copies = impl_->transfers->failed_copies();
  s.device_seconds = impl_->device->Now();
  return s;
}

}  // namespace moe
