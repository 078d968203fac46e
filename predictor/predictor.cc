#include "predictor/predictor.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <numeric>

#include "fmt/format.h"
#include "predictor/combined_predictor.h"
#include "predictor/frequency_predictor.h"
#include "predictor/learned_predictor.h"
#include "predictor/recency_predictor.h"
#include "predictor/transition_predictor.h"
#include "runtime/safetensors.h"
#include "runtime/status.h"

namespace moe {
namespace {

constexpr std::string_view kFileFormat = "moe-predictor";

constexpr std::array<std::string_view, 6> kNames = {"none",    "frequency", "transition",
                                                    "recency", "combined",  "learned"};

// Predicts nothing: every probability is zero, so no prefetch is ever issued.
class NonePredictor final : public Predictor {
 public:
  explicit NonePredictor(const PredictorOptions& options) : options_(options) {}
  std::string_view name() const override { return "none"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override {}
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override {}
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override {
    MOE_CHECK(static_cast<int64_t>(probs.size()) == options_.space.num_experts);
    std::fill(probs.begin(), probs.end(), 0.0f);
  }

 private:
  PredictorOptions options_;
};

// Reads an integer metadata value; InvalidArgument naming the file when absent or malformed.
absl::StatusOr<int64_t> MetadataInt(const SafetensorsFile& file, const std::string& key) {
  auto it = file.metadata().find(key);
  if (it == file.metadata().end()) {
    return InvalidArgument("{}: predictor file has no metadata \"{}\"", file.path(), key);
  }
  int64_t value = 0;
  const std::string& text = it->second;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    return InvalidArgument("{}: metadata \"{}\" is \"{}\", expected an integer", file.path(), key,
                           text);
  }
  return value;
}

// Budgets up to this use the insertion path of TopExpertIds.
constexpr int32_t kMaxInsertionBudget = 32;

// A key whose unsigned order is "higher probability first, then lower id": the float's bits
// mapped to an order-preserving unsigned integer (negative values flipped), then the inverted id.
// NaNs rank by their bits; predictors never produce them.
uint64_t RankKey(float probability, int32_t id) {
  if (probability == 0.0f) probability = 0.0f;  // -0 ties with +0, as in the comparator path
  uint32_t bits;
  std::memcpy(&bits, &probability, sizeof(bits));
  bits = (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
  return (uint64_t{bits} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}

}  // namespace

absl::Status Predictor::Save(const std::string& path) const {
  return absl::UnimplementedError(
      fmt::format("predictor \"{}\" has no learned state to save (to {})", name(), path));
}

absl::Status Predictor::Load(const std::string& path) {
  return absl::UnimplementedError(
      fmt::format("predictor \"{}\" has no learned state to load (from {})", name(), path));
}

absl::Status ValidatePredictorOptions(const PredictorOptions& o) {
  if (o.space.num_layers < 1) {
    return InvalidArgument("predictor options: num_layers {} must be >= 1", o.space.num_layers);
  }
  if (o.space.num_experts < 1 || o.space.num_experts > 65536) {
    return InvalidArgument("predictor options: num_experts {} outside [1, 65536]",
                           o.space.num_experts);
  }
  if (o.top_k < 1 || o.top_k > o.space.num_experts) {
    return InvalidArgument("predictor options: top_k {} outside [1, num_experts {}]", o.top_k,
                           o.space.num_experts);
  }
  if (o.max_distance < 1 || o.max_distance > 64) {
    return InvalidArgument("predictor options: max_distance {} outside [1, 64]", o.max_distance);
  }
  if (o.evidence_layers < 1 || o.evidence_layers > 16) {
    return InvalidArgument("predictor options: evidence_layers {} outside [1, 16]",
                           o.evidence_layers);
  }
  if (!(o.frequency_decay > 0.0 && o.frequency_decay <= 1.0)) {
    return InvalidArgument("predictor options: frequency_decay {} outside (0, 1]",
                           o.frequency_decay);
  }
  if (!(o.recency_decay >= 0.0 && o.recency_decay < 1.0)) {
    return InvalidArgument("predictor options: recency_decay {} outside [0, 1)", o.recency_decay);
  }
  return absl::OkStatus();
}

std::span<const std::string_view> PredictorNames() { return kNames; }

absl::StatusOr<std::unique_ptr<Predictor>> MakePredictor(std::string_view name,
                                                         const PredictorOptions& options) {
  if (std::find(kNames.begin(), kNames.end(), name) == kNames.end()) {
    return InvalidArgument("unknown predictor \"{}\"; valid names: {}", name,
                           fmt::join(kNames, ", "));
  }
  MOE_RETURN_IF_ERROR_CTX(ValidatePredictorOptions(options), fmt::format("predictor \"{}\"", name));
  if (name == "none") return std::make_unique<NonePredictor>(options);
  if (name == "frequency") return std::make_unique<FrequencyPredictor>(options);
  if (name == "transition") return std::make_unique<TransitionPredictor>(options);
  if (name == "recency") return std::make_unique<RecencyPredictor>(options);
  if (name == "learned") return std::make_unique<LearnedPredictor>(options);
  return std::make_unique<CombinedPredictor>(options);
}

int32_t SanitizeProbabilities(std::span<float> probs) {
  int32_t changed = 0;
  for (float& p : probs) {
    if (p >= 0.0f && p <= 1.0f) continue;  // false for NaN
    p = p > 1.0f ? 1.0f : 0.0f;
    ++changed;
  }
  return changed;
}

int32_t TopExpertIds(std::span<const float> probs, int32_t budget, std::span<int32_t> order) {
  const int32_t n = static_cast<int32_t>(probs.size());
  MOE_CHECK(order.size() >= probs.size());
  const int32_t count = std::clamp(budget, 0, n);
  if (count == 0) return 0;
  if (count > kMaxInsertionBudget) {
    // Higher probability first; ties (and NaNs, which compare false) by lower id.
    auto better = [&probs](int32_t a, int32_t b) {
      if (probs[a] > probs[b]) return true;
      if (probs[b] > probs[a]) return false;
      return a < b;
    };
    std::iota(order.begin(), order.begin() + n, 0);
    std::partial_sort(order.begin(), order.begin() + count, order.begin() + n, better);
    return count;
  }
  // Small budgets (the common case: 2 x top_k of 64 experts): keep the best `count` keys sorted
  // by insertion. One integer key per expert orders by probability, then by lower id, so most
  // candidates cost one comparison against the current last; about 2x faster than partial_sort.
  uint64_t top[kMaxInsertionBudget];
  int32_t size = 0;
  for (int32_t i = 0; i < n; ++i) {
    const uint64_t key = RankKey(probs[i], i);
    if (size == count && key <= top[size - 1]) continue;
    int32_t at = size < count ? size++ : size - 1;
    while (at > 0 && key > top[at - 1]) {
      top[at] = top[at - 1];
      --at;
    }
    top[at] = key;
  }
  for (int32_t i = 0; i < count; ++i)
    order[i] = static_cast<int32_t>(0xFFFFFFFFu - uint32_t(top[i]));
  return count;
}

std::vector<ScoredExpert> TopExperts(std::span<const float> probs, int32_t budget) {
  std::vector<int32_t> order(probs.size());
  const int32_t count = TopExpertIds(probs, budget, order);
  std::vector<ScoredExpert> top(count);
  for (int32_t i = 0; i < count; ++i) top[i] = ScoredExpert{order[i], probs[order[i]]};
  return top;
}

void CheckNextVisitArguments(const PredictorOptions& options, int32_t layer,
                             std::span<const uint16_t> experts, std::span<const float> probs) {
  MOE_CHECK(layer >= 0 && layer < options.space.num_layers);
  MOE_CHECK(static_cast<int32_t>(probs.size()) == options.space.num_experts);
  MOE_CHECK(static_cast<int32_t>(experts.size()) <= options.top_k);
}

absl::Status CheckTraceShape(const RoutingTrace& trace, const PredictorOptions& options) {
  const TraceHeader& h = trace.header;
  if (h.num_layers != options.space.num_layers || h.num_experts != options.space.num_experts ||
      h.top_k != options.top_k) {
    return InvalidArgument(
        "trace shape [layers {}, experts {}, top_k {}] does not match the predictor's "
        "[layers {}, experts {}, top_k {}]",
        h.num_layers, h.num_experts, h.top_k, options.space.num_layers, options.space.num_experts,
        options.top_k);
  }
  return absl::OkStatus();
}

std::vector<int64_t> AllSequences(const RoutingTrace& trace) {
  std::vector<int64_t> all(trace.sequences.size());
  std::iota(all.begin(), all.end(), int64_t{0});
  return all;
}

void SetPredictorMetadata(std::string_view name, const PredictorOptions& options,
                          SafetensorsWriter& writer) {
  writer.SetMetadata("format", std::string(kFileFormat));
  writer.SetMetadata("predictor", std::string(name));
  writer.SetMetadata("num_layers", std::to_string(options.space.num_layers));
  writer.SetMetadata("num_experts", std::to_string(options.space.num_experts));
  writer.SetMetadata("top_k", std::to_string(options.top_k));
  writer.SetMetadata("max_distance", std::to_string(options.max_distance));
  writer.SetMetadata("evidence_layers", std::to_string(options.evidence_layers));
}

absl::Status CheckPredictorFile(std::string_view name, const PredictorOptions& options,
                                bool check_distances, const SafetensorsFile& file) {
  auto format = file.metadata().find("format");
  if (format == file.metadata().end() || format->second != kFileFormat) {
    return InvalidArgument(
        "{}: not a predictor file (metadata \"format\" is \"{}\", expected \"{}\")", file.path(),
        format == file.metadata().end() ? "" : format->second, kFileFormat);
  }
  auto stored_name = file.metadata().find("predictor");
  const std::string found = stored_name == file.metadata().end() ? "" : stored_name->second;
  if (found != name) {
    return InvalidArgument("{}: file holds predictor \"{}\", expected \"{}\"", file.path(), found,
                           name);
  }
  struct Field {
    const char* key;
    int64_t expected;
    bool check;
  };
  const Field fields[] = {
      {"num_layers", options.space.num_layers, true},
      {"num_experts", options.space.num_experts, true},
      {"top_k", options.top_k, true},
      {"max_distance", options.max_distance, check_distances},
      {"evidence_layers", options.evidence_layers, check_distances},
  };
  for (const Field& field : fields) {
    if (!field.check) continue;
    MOE_ASSIGN_OR_RETURN(int64_t value, MetadataInt(file, field.key));
    if (value != field.expected) {
      return InvalidArgument("{}: {} is {} in the file, {} in the predictor options", file.path(),
                             field.key, value, field.expected);
    }
  }
  return absl::OkStatus();
}

absl::Status AddF32Tensor(SafetensorsWriter& writer, std::string name, std::vector<int64_t> shape,
                          std::span<const float> values) {
  return writer.AddTensor(std::move(name), DType::kF32, std::move(shape), AsBytes(values));
}

absl::Status ReadF32Tensor(const SafetensorsFile& file, std::string_view name,
                           std::span<const int64_t> shape, std::span<float> out) {
  MOE_ASSIGN_OR_RETURN(const TensorInfo* info, file.Expect(name, DType::kF32, shape));
  const std::span<const std::byte> data = file.Data(*info);
  MOE_CHECK(data.size() == out.size_bytes());
  std::memcpy(out.data(), data.data(), data.size());
  return absl::OkStatus();
}

}  // namespace moe
