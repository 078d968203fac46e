// moe-decode-bench: decode speed of the CPU backend against the memory-bandwidth bound, in one
// run: it measures the machine's read bandwidth, then decodes with every expert resident and
// with smaller expert budgets, and prints tokens/s beside the bound
// (bytes of weights read per token / bandwidth).
//   moe-decode-bench --model DIR [--tokens 32] [--budgets 100,50] [--repeats 3]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <vector>

#include "fmt/format.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/engine.h"
#include "runtime/model.h"
#include "runtime/status.h"
#include "tools/common/cli_flags.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Read bandwidth (GB/s) of a buffer far larger than the caches, summed by every pool thread.
double MeasureReadBandwidth(cpu::ThreadPool& pool, uint64_t bytes, int repeats) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> buf(n);
  pool.ParallelFor(static_cast<int64_t>(n), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[i] = static_cast<float>(i & 7);
  });
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) {
    std::vector<double> partial(64, 0.0);
    const auto start = Clock::now();
    pool.ParallelFor(static_cast<int64_t>(n), 1 << 20, [&](int64_t b, int64_t e) {
      // Eight independent accumulators keep the loads, not the adds, the bottleneck.
      float acc[8] = {};
      int64_t i = b;
      for (; i + 8 <= e; i += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += buf[i + j];
      }
      for (; i < e; ++i) acc[0] += buf[i];
      partial[(b / (1 << 20)) % 64] +=
          acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7];
    });
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (std::accumulate(partial.begin(), partial.end(), 0.0) == -1) std::cout << "";
    rates.push_back(static_cast<double>(n * sizeof(float)) / s / 1e9);
  }
  return Median(rates);
}

// Resident memory of this process by kind, in bytes, from /proc/self/status (0 when absent).
uint64_t ProcStatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10) * 1024;
    }
  }
  return 0;
}

struct Row {
  std::string budget;
  double tokens_per_s = 0;
  double hit_rate = 0;
  double bytes_per_token = 0;  // weights read
  double copy_bytes_per_token = 0;
  uint64_t anon_rss = 0;  // after the run: device arena + activations + process
  uint64_t file_rss = 0;  // the mapped checkpoint pages
  uint64_t arena = 0;     // device capacity
};

int Main(int argc, char** argv) {
  std::string model_dir, budgets_text = "100,50";
  int64_t tokens = 32, repeats = 3, threads = 0, prompt_len = 16;
  FlagSet flags("moe-decode-bench",
                "Decode tokens/s on the CPU backend against the memory-bandwidth bound.");
  flags.AddString("model", &model_dir,
                  "checkpoint directory (e.g. made by moe-make-model "
                  "--preset bench)");
  flags.AddInt("tokens", &tokens, "decode steps per repeat");
  flags.AddInt("prompt", &prompt_len, "prompt tokens before decoding");
  flags.AddInt("repeats", &repeats, "repeats per budget (the median is reported)");
  flags.AddInt("threads", &threads, "threads (0: all cores)");
  flags.AddString("budgets", &budgets_text, "expert budgets in percent of all expert bytes");
  return flags.Run(argc, argv, [&]() -> absl::Status {
    if (model_dir.empty()) return InvalidArgument("--model DIR is required");
    if (tokens < 1 || repeats < 1) return InvalidArgument("--tokens and --repeats must be >= 1");
    const auto load_start = Clock::now();
    MOE_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, Model::Load(model_dir));
    const double load_s = std::chrono::duration<double>(Clock::now() - load_start).count();
    const ModelConfig& c = model->config;
    const ModelWeights& w = model->weights;
    cpu::ThreadPool pool(static_cast<int>(threads));
    // Streaming every tensor once through the mapping: what the first use of each weight costs
    // when the checkpoint is in the page cache.
    const auto touch_start = Clock::now();
    double checksum = 0;
    for (const auto& file : model->checkpoint->files()) {
      for (const TensorInfo& t : file->tensors()) {
        const auto data = file->Data(t);
        const auto* words = reinterpret_cast<const uint64_t*>(data.data());
        const int64_t n = static_cast<int64_t>(data.size() / 8);
        std::atomic<uint64_t> folded{0};
        pool.ParallelFor(n, 1 << 16, [&](int64_t b, int64_t e) {
          uint64_t x = 0;
          for (int64_t i = b; i < e; ++i) x ^= words[i];
          folded.fetch_xor(x, std::memory_order_relaxed);
        });
        checksum += static_cast<double>(folded.load() & 0xFF);
      }
    }
    const double touch_s = std::chrono::duration<double>(Clock::now() - touch_start).count();
    const double checkpoint_gb = static_cast<double>(model->checkpoint->total_bytes()) / 1e9;
    const double bandwidth = MeasureReadBandwidth(pool, 1ull << 30, 5);

    // Bytes a decode token reads: every non-expert weight but the embedding table (one row),
    // plus top_k experts per layer.
    const double embed_bytes = static_cast<double>(w.embed.num_bytes());
    const double non_expert_read = static_cast<double>(w.non_expert_bytes) -
                                   (c.tie_word_embeddings ? 0.0 : embed_bytes) +
                                   embed_bytes / static_cast<double>(c.vocab_size);
    const double expert_read = static_cast<double>(w.expert_bytes) * c.top_k * c.num_layers;
    const double bytes_per_token = non_expert_read + expert_read;
    const double bound = bandwidth * 1e9 / bytes_per_token;

    std::vector<int32_t> prompt;
    for (int64_t i = 0; i < prompt_len; ++i) {
      prompt.push_back(static_cast<int32_t>(3 + (i * 7919) % (c.vocab_size - 3)));
    }
    std::vector<Row> rows;
    for (const std::string& b : SplitList(budgets_text)) {
      const double pct = std::strtod(b.c_str(), nullptr);
      if (!(pct > 0 && pct <= 100)) return InvalidArgument("--budgets: '{}' is not in (0, 100]", b);
      EngineOptions options;
      options.expert_budget_bytes = static_cast<uint64_t>(static_cast<double>(w.expert_bytes) *
                                                          c.num_layers * c.num_experts * pct / 100);
      options.num_threads = static_cast<int32_t>(threads);
      options.max_context = prompt_len + tokens + 1;
      MOE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, options));
      std::vector<float> logits(static_cast<size_t>(c.vocab_size));
      std::vector<double> rates;
      EngineStats before, after;
      for (int64_t r = 0; r < repeats; ++r) {
        MOE_RETURN_IF_ERROR(engine->ResetSequence(0));
        const SequenceTokens p{0, prompt};
        MOE_RETURN_IF_ERROR(engine->Evaluate({&p, 1}, false, logits));
        before = engine->stats();
        const auto start = Clock::now();
        int32_t tok = 3;
        for (int64_t i = 0; i < tokens; ++i) {
          const SequenceTokens d{0, {&tok, 1}};
          MOE_RETURN_IF_ERROR(engine->Evaluate({&d, 1}, false, logits));
          // A fixed token stream would route the same way each step; follow the model instead.
          tok =
              static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        }
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        after = engine->stats();
        rates.push_back(static_cast<double>(tokens) / s);
      }
      Row row;
      row.budget = fmt::format("{}%", b);
      row.tokens_per_s = Median(rates);
      const auto hits = after.cache.hits - before.cache.hits;
      const auto accesses = after.cache.accesses - before.cache.accesses;
      row.hit_rate = accesses ? double(hits) / double(accesses) : 0;
      row.bytes_per_token = bytes_per_token;
      row.copy_bytes_per_token =
          double(after.cache.bytes_loaded - before.cache.bytes_loaded) / double(tokens);
      row.anon_rss = ProcStatusBytes("RssAnon");
      row.file_rss = ProcStatusBytes("RssFile");
      row.arena = after.device.capacity_bytes;
      rows.push_back(row);
    }
    std::cout << fmt::format(
        "model {}: {} layers x {} experts (top-{}), expert {:.1f} MB, non-expert {:.1f} MB, "
        "{} threads\nload (map, validate, bind): {:.3f} s; streaming all {:.2f} GB of weights from "
        "the page cache: {:.3f} s = {:.2f} GB/s (checksum {})\nmemory read bandwidth (median of 5, "
        "1 GiB): {:.2f} GB/s\nweights read per "
        "decode token: {:.1f} MB -> bound {:.2f} tokens/s\n\n",
        model_dir, c.num_layers, c.num_experts, c.top_k, w.expert_bytes / 1e6,
        w.non_expert_bytes / 1e6, pool.num_threads(), load_s, checkpoint_gb, touch_s,
        checkpoint_gb / touch_s, checksum, bandwidth, bytes_per_token / 1e6, bound);
    std::cout << fmt::format("{:>8} {:>12} {:>10} {:>9} {:>16} {:>22}\n", "budget", "tokens/s",
                             "of bound", "hit rate", "copied MB/token", "of bound incl. copies");
    for (const Row& r : rows) {
      // Copies read the host store and write the slot: twice their bytes through memory.
      const double bound_with_copies =
          bandwidth * 1e9 / (r.bytes_per_token + 2 * r.copy_bytes_per_token);
      std::cout << fmt::format("{:>8} {:>12.2f} {:>9.1f}% {:>9.3f} {:>16.1f} {:>21.1f}%\n",
                               r.budget, r.tokens_per_s, 100 * r.tokens_per_s / bound, r.hit_rate,
                               r.copy_bytes_per_token / 1e6,
                               100 * r.tokens_per_s / bound_with_copies);
    }
    std::cout << fmt::format(
        "\nhost memory after each run (one copy of the weights: the mapped "
        "checkpoint; the anonymous memory is the device arena + the 1 GiB "
        "bandwidth buffer's pages, freed, + the process):\n");
    for (const Row& r : rows) {
      std::cout << fmt::format(
          "{:>8}  file-backed {:.1f} MB (checkpoint {:.1f} MB), anonymous "
          "{:.1f} MB (device arena {:.1f} MB)\n",
          r.budget, r.file_rss / 1e6, checkpoint_gb * 1e3, r.anon_rss / 1e6, r.arena / 1e6);
    }
    return absl::OkStatus();
  });
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }
