#include "predictor/trace_io.h"

#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/safetensors.h"
#include "runtime/status.h"

namespace moe {
namespace {

static_assert(std::endian::native == std::endian::little,
              "trace files are little-endian; big-endian hosts are not supported");

constexpr std::string_view kFormatName = "moe-trace";
constexpr int kFormatVersion = 1;

// Tensor and metadata names of the moe-trace format (docs/trace-format.md).
constexpr std::string_view kExpertsTensor = "experts";
constexpr std::string_view kGateWeightsTensor = "gate_weights";
constexpr std::string_view kPhaseTensor = "phase";
constexpr std::string_view kSequenceOffsetsTensor = "sequence_offsets";

// ---- small parsing helpers -------------------------------------------------------------------

template <typename Int>
bool ParseInt(std::string_view text, Int* out) {
  if (text.empty()) return false;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && ptr == end;
}

std::vector<std::string_view> Split(std::string_view text, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t pos = text.find(sep, start);
    if (pos == std::string_view::npos) {
      parts.push_back(text.substr(start));
      return parts;
    }
    parts.push_back(text.substr(start, pos - start));
    start = pos + 1;
  }
}

std::string ErrnoText(int err) { return std::strerror(err); }

absl::Status OpenError(int err, const std::string& path) {
  if (err == ENOENT) return NotFound("cannot open {}: {}", path, ErrnoText(err));
  return absl::UnavailableError(fmt::format("cannot open {}: {}", path, ErrnoText(err)));
}

// Reads a whole file with one fread. `expected_size`, when set, is checked against the file size
// before reading, so a wrong-sized binary fails without allocating for it.
absl::StatusOr<std::vector<char>> ReadWholeFile(const std::string& path,
                                                std::optional<uint64_t> expected_size,
                                                std::string_view size_rule = {}) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (f == nullptr) return OpenError(errno, path);
  struct stat st;
  if (::fstat(::fileno(f.get()), &st) != 0) {
    return absl::UnavailableError(fmt::format("cannot stat {}: {}", path, ErrnoText(errno)));
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgument("{} is not a regular file", path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (expected_size.has_value() && size != *expected_size) {
    return DataLoss("{} is {} bytes, expected {} ({})", path, size, *expected_size, size_rule);
  }
  std::vector<char> data(size);
  if (size > 0 && std::fread(data.data(), 1, size, f.get()) != size) {
    return DataLoss("{}: short read ({} bytes expected)", path, size);
  }
  return data;
}

std::string JoinPath(const std::string& dir, std::string_view name) {
  if (!dir.empty() && dir.back() == '/') return dir + std::string(name);
  return dir + "/" + std::string(name);
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---- moe-trace file --------------------------------------------------------------------------

template <typename T>
std::span<const std::byte> Bytes(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

// Parses a required integer metadata field into [min, max].
template <typename Int>
absl::Status MetadataInt(const SafetensorsFile& file, const std::string& key, Int min, Int max,
                         Int* out) {
  auto it = file.metadata().find(key);
  if (it == file.metadata().end()) return DataLoss("metadata field {} is missing", key);
  if (!ParseInt(it->second, out)) {
    return DataLoss("metadata field {} is \"{}\", expected an integer", key, it->second);
  }
  if (*out < min || *out > max) {
    return DataLoss("metadata field {} is {}, expected a value in [{}, {}]", key, *out, min, max);
  }
  return absl::OkStatus();
}

absl::Status ParseLayerIds(std::string_view text, std::vector<int32_t>* ids) {
  ids->clear();
  if (text.empty()) return absl::OkStatus();
  for (std::string_view part : Split(text, ',')) {
    int32_t id = 0;
    if (!ParseInt(part, &id)) {
      return DataLoss("metadata field moe_layer_ids: \"{}\" is not an integer", part);
    }
    ids->push_back(id);
  }
  return absl::OkStatus();
}

// Reads the tensors of a moe-trace file into `trace`; errors carry no file name.
absl::Status ReadTraceContents(const SafetensorsFile& file, RoutingTrace* trace) {
  const auto& meta = file.metadata();
  auto format = meta.find("format");
  if (format == meta.end()) {
    return DataLoss("not a moe-trace file (metadata field format is missing)");
  }
  if (format->second != kFormatName) {
    return DataLoss("not a moe-trace file (metadata field format is \"{}\", expected \"{}\")",
                    format->second, kFormatName);
  }
  int version = 0;
  MOE_RETURN_IF_ERROR(MetadataInt(file, "version", 0, std::numeric_limits<int>::max(), &version));
  if (version != kFormatVersion) {
    return absl::UnimplementedError(
        fmt::format("moe-trace version {} is not supported (this reader knows version {})", version,
                    kFormatVersion));
  }

  TraceHeader& h = trace->header;
  auto model = meta.find("model");
  h.model = model == meta.end() ? "" : model->second;
  MOE_RETURN_IF_ERROR(
      MetadataInt(file, "num_layers", 1, std::numeric_limits<int32_t>::max(), &h.num_layers));
  MOE_RETURN_IF_ERROR(MetadataInt(file, "num_experts", 1, 65536, &h.num_experts));
  MOE_RETURN_IF_ERROR(MetadataInt(file, "top_k", 1, h.num_experts, &h.top_k));
  MOE_RETURN_IF_ERROR(MetadataInt(file, "expert_bytes", uint64_t{0},
                                  std::numeric_limits<uint64_t>::max(), &h.expert_bytes));
  if (auto ids = meta.find("moe_layer_ids"); ids != meta.end()) {
    MOE_RETURN_IF_ERROR(ParseLayerIds(ids->second, &h.moe_layer_ids));
  }

  // experts [T, L, K], U8 or U16.
  const TensorInfo* experts = file.Find(kExpertsTensor);
  if (experts == nullptr) return DataLoss("tensor {} is missing", kExpertsTensor);
  if (experts->dtype != DType::kU8 && experts->dtype != DType::kU16) {
    return DataLoss("tensor {} has dtype {}, expected U8 or U16", kExpertsTensor,
                    DTypeName(experts->dtype));
  }
  if (experts->shape.size() != 3 || experts->shape[1] != h.num_layers ||
      experts->shape[2] != h.top_k) {
    return DataLoss("tensor {} has shape [{}], expected [tokens, {}, {}] (num_layers, top_k)",
                    kExpertsTensor, fmt::join(experts->shape, ", "), h.num_layers, h.top_k);
  }
  const int64_t num_tokens = experts->shape[0];
  if (num_tokens == 0) return InvalidArgument("trace has no tokens");
  const size_t num_entries = static_cast<size_t>(experts->num_elements());
  trace->experts.resize(num_entries);
  std::span<const std::byte> expert_bytes = file.Data(*experts);
  if (experts->dtype == DType::kU8) {
    const auto* src = reinterpret_cast<const uint8_t*>(expert_bytes.data());
    for (size_t i = 0; i < num_entries; ++i) trace->experts[i] = src[i];
  } else {
    std::memcpy(trace->experts.data(), expert_bytes.data(), expert_bytes.size());
  }

  // gate_weights [T, L, K] F32, optional.
  const std::vector<int64_t> full_shape = experts->shape;
  trace->gate_weights.clear();
  if (file.Find(kGateWeightsTensor) != nullptr) {
    MOE_ASSIGN_OR_RETURN(const TensorInfo* gates,
                         file.Expect(kGateWeightsTensor, DType::kF32, full_shape));
    std::span<const std::byte> bytes = file.Data(*gates);
    trace->gate_weights.resize(num_entries);
    std::memcpy(trace->gate_weights.data(), bytes.data(), bytes.size());
  }

  // phase [T] U8.
  const int64_t phase_shape[] = {num_tokens};
  MOE_ASSIGN_OR_RETURN(const TensorInfo* phase, file.Expect(kPhaseTensor, DType::kU8, phase_shape));
  std::span<const std::byte> phase_bytes = file.Data(*phase);
  trace->phases.resize(num_tokens);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const auto p = static_cast<uint8_t>(phase_bytes[t]);
    if (p > 1) return DataLoss("tensor phase: token {} has phase {}, expected 0 or 1", t, p);
    trace->phases[t] = static_cast<Phase>(p);
  }

  // sequence_offsets [S + 1] I64.
  const TensorInfo* offsets = file.Find(kSequenceOffsetsTensor);
  if (offsets == nullptr) return DataLoss("tensor {} is missing", kSequenceOffsetsTensor);
  if (offsets->dtype != DType::kI64 || offsets->shape.size() != 1) {
    return DataLoss("tensor {} is {} [{}], expected I64 [num_sequences + 1]",
                    kSequenceOffsetsTensor, DTypeName(offsets->dtype),
                    fmt::join(offsets->shape, ", "));
  }
  const int64_t num_offsets = offsets->shape[0];
  if (num_offsets < 2) return InvalidArgument("trace has no sequences");
  std::vector<int64_t> offset_values(num_offsets);
  std::memcpy(offset_values.data(), file.Data(*offsets).data(), num_offsets * sizeof(int64_t));
  if (offset_values.front() != 0 || offset_values.back() != num_tokens) {
    return DataLoss("tensor {} runs from {} to {}, expected 0 to {} (the token count)",
                    kSequenceOffsetsTensor, offset_values.front(), offset_values.back(),
                    num_tokens);
  }
  for (int64_t i = 1; i < num_offsets; ++i) {
    if (offset_values[i] <= offset_values[i - 1]) {
      return DataLoss("tensor {}: offset {} ({}) is not above offset {} ({})",
                      kSequenceOffsetsTensor, i, offset_values[i], i - 1, offset_values[i - 1]);
    }
  }
  const int64_t num_sequences = num_offsets - 1;
  trace->sequences.resize(num_sequences);
  for (int64_t s = 0; s < num_sequences; ++s) {
    trace->sequences[s].token_offset = offset_values[s];
    trace->sequences[s].num_tokens = offset_values[s + 1] - offset_values[s];
  }
  if (auto names = meta.find("sequence_names"); names != meta.end()) {
    nlohmann::json json = nlohmann::json::parse(names->second, nullptr, false);
    if (json.is_discarded() || !json.is_array()) {
      return DataLoss("metadata field sequence_names is not a JSON array");
    }
    if (static_cast<int64_t>(json.size()) != num_sequences) {
      return DataLoss("metadata field sequence_names has {} names, expected {} (sequences)",
                      json.size(), num_sequences);
    }
    for (int64_t s = 0; s < num_sequences; ++s) {
      if (!json[s].is_string()) {
        return DataLoss("metadata field sequence_names: entry {} is a JSON {}, expected a string",
                        s, json[s].type_name());
      }
      trace->sequences[s].name = json[s].get<std::string>();
    }
  }
  return trace->Validate();
}

// ---- dense folder import ---------------------------------------------------------------------

// Reads an optional integer field of meta.json; absent (or null) leaves *out untouched.
absl::Status MetaInt(const nlohmann::json& meta, std::string_view key, int64_t min, int64_t max,
                     int64_t* out, bool* present = nullptr) {
  auto it = meta.find(key);
  if (present != nullptr) *present = false;
  if (it == meta.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) {
    return DataLoss("field \"{}\" is {}, expected an integer", key, it->dump());
  }
  const int64_t v = it->is_number_unsigned()
                        ? static_cast<int64_t>(std::min<uint64_t>(
                              it->get<uint64_t>(), std::numeric_limits<int64_t>::max()))
                        : it->get<int64_t>();
  if (v < min || v > max) {
    return DataLoss("field \"{}\" is {}, expected a value in [{}, {}]", key, v, min, max);
  }
  *out = v;
  if (present != nullptr) *present = true;
  return absl::OkStatus();
}

struct DenseMeta {
  int64_t num_tokens = 0, num_layers = 0, top_k = 0, num_experts = 0;
  Phase phase = Phase::kPrefill;
  std::string model;
  uint64_t expert_bytes = 0;
  std::vector<int32_t> moe_layer_ids;
  std::optional<int64_t> num_sequences;  // consistency check against sequences.tsv
};

absl::Status ParseDenseMeta(const std::vector<char>& text, DenseMeta* m) {
  nlohmann::json meta = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (meta.is_discarded()) return DataLoss("not valid JSON");
  if (!meta.is_object()) return DataLoss("is a JSON {}, expected an object", meta.type_name());

  auto shape = meta.find("shape");
  if (shape == meta.end() || !shape->is_array() || shape->size() != 3) {
    return DataLoss("field \"shape\" must be [tokens, layers, top_k], got {}",
                    shape == meta.end() ? std::string("nothing") : shape->dump());
  }
  int64_t dims[3];
  for (int i = 0; i < 3; ++i) {
    const auto& d = (*shape)[i];
    if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) {
      return DataLoss("field \"shape\" must hold three non-negative integers, got {}",
                      shape->dump());
    }
    dims[i] = static_cast<int64_t>(d.get<uint64_t>());
  }
  m->num_tokens = dims[0];
  m->num_layers = dims[1];
  m->top_k = dims[2];
  if (m->num_layers <= 0 || m->num_layers > std::numeric_limits<int32_t>::max() || m->top_k <= 0) {
    return DataLoss("field \"shape\" {} has no layers or no experts per token", shape->dump());
  }

  // Consistency of the redundant fields, where present.
  int64_t v = 0;
  bool present = false;
  MOE_RETURN_IF_ERROR(MetaInt(meta, "top_k", 0, std::numeric_limits<int64_t>::max(), &v, &present));
  if (present && v != m->top_k) {
    return DataLoss("field \"top_k\" is {}, but \"shape\" says {}", v, m->top_k);
  }
  MOE_RETURN_IF_ERROR(
      MetaInt(meta, "num_tokens", 0, std::numeric_limits<int64_t>::max(), &v, &present));
  if (present && v != m->num_tokens) {
    return DataLoss("field \"num_tokens\" is {}, but \"shape\" says {}", v, m->num_tokens);
  }
  MOE_RETURN_IF_ERROR(
      MetaInt(meta, "num_moe_layers", 0, std::numeric_limits<int64_t>::max(), &v, &present));
  if (present && v != m->num_layers) {
    return DataLoss("field \"num_moe_layers\" is {}, but \"shape\" says {}", v, m->num_layers);
  }
  MOE_RETURN_IF_ERROR(
      MetaInt(meta, "num_sequences", 0, std::numeric_limits<int64_t>::max(), &v, &present));
  if (present) m->num_sequences = v;
  for (std::string_view key : {"dtype", "experts_dtype"}) {
    auto it = meta.find(key);
    if (it != meta.end() && !(it->is_string() && it->get<std::string>() == "uint8")) {
      return DataLoss("field \"{}\" is {}, expected \"uint8\"", key, it->dump());
    }
  }

  // The routed-expert count has no safe default (the largest id seen may not be the largest id
  // that exists), so it must be stated under one of the names in use.
  bool found = false;
  for (std::string_view key : {"num_routed_experts", "num_experts", "num_local_experts"}) {
    MOE_RETURN_IF_ERROR(MetaInt(meta, key, 1, 65536, &m->num_experts, &found));
    if (found) break;
  }
  if (!found) {
    return DataLoss(
        "field \"num_routed_experts\" is missing (also looked for \"num_experts\" "
        "and \"num_local_experts\")");
  }

  if (m->top_k > m->num_experts) {
    return DataLoss("top_k {} exceeds num_experts {}", m->top_k, m->num_experts);
  }

  if (auto phase = meta.find("phase"); phase != meta.end()) {
    if (!phase->is_string()) return DataLoss("field \"phase\" is {}, expected text", phase->dump());
    m->phase = phase->get<std::string>().starts_with("decode") ? Phase::kDecode : Phase::kPrefill;
  }
  if (auto model = meta.find("model"); model != meta.end()) {
    if (!model->is_string()) return DataLoss("field \"model\" is {}, expected text", model->dump());
    m->model = model->get<std::string>();
  }
  int64_t expert_bytes = 0;
  MOE_RETURN_IF_ERROR(
      MetaInt(meta, "expert_bytes", 0, std::numeric_limits<int64_t>::max(), &expert_bytes));
  m->expert_bytes = static_cast<uint64_t>(expert_bytes);
  if (auto ids = meta.find("moe_layer_ids"); ids != meta.end() && !ids->is_null()) {
    if (!ids->is_array()) return DataLoss("field \"moe_layer_ids\" is not an array");
    for (const auto& id : *ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return DataLoss("field \"moe_layer_ids\" holds {}, expected non-negative integers",
                        id.dump());
      }
      m->moe_layer_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  }
  return absl::OkStatus();
}

// Parses sequences.tsv: a header row naming the columns, then one row per sequence. Sequences
// must be contiguous, in order, and cover exactly `num_tokens` rows.
absl::Status ParseSequencesTsv(const std::string& path, const std::vector<char>& data,
                               int64_t num_tokens, std::vector<TraceSequence>* sequences) {
  std::string_view text(data.data(), data.size());
  std::vector<std::string_view> lines = Split(text, '\n');
  for (auto& line : lines) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  }
  if (lines.empty() || lines[0].empty()) return DataLoss("{}: missing header row", path);
  const std::vector<std::string_view> columns = Split(lines[0], '\t');
  auto column = [&columns](std::string_view name) -> int {
    auto it = std::find(columns.begin(), columns.end(), name);
    return it == columns.end() ? -1 : static_cast<int>(it - columns.begin());
  };
  const int offset_col = column("token_offset");
  int count_col = column("n_tokens");
  if (count_col < 0) count_col = column("num_tokens");
  if (offset_col < 0 || count_col < 0) {
    return DataLoss("{}: header row must name token_offset and n_tokens columns, got \"{}\"", path,
                    lines[0]);
  }
  int group_col = column("dataset");
  if (group_col < 0) group_col = column("source_dir");
  int id_col = column("problem_id");
  if (id_col < 0) id_col = column("prompt_num");
  const int seq_col = column("seq");

  int64_t expected = 0;
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t line_no = i + 1;
    if (lines[i].empty()) continue;  // trailing newline, blank lines
    const std::vector<std::string_view> fields = Split(lines[i], '\t');
    if (fields.size() != columns.size()) {
      return DataLoss("{} line {}: {} fields, expected {} (as in the header row)", path, line_no,
                      fields.size(), columns.size());
    }
    TraceSequence seq;
    if (!ParseInt(fields[offset_col], &seq.token_offset)) {
      return DataLoss("{} line {}: token_offset \"{}\" is not an integer", path, line_no,
                      fields[offset_col]);
    }
    if (!ParseInt(fields[count_col], &seq.num_tokens)) {
      return DataLoss("{} line {}: {} \"{}\" is not an integer", path, line_no, columns[count_col],
                      fields[count_col]);
    }
    if (seq.num_tokens <= 0) {
      return DataLoss("{} line {}: {} is {}, must be positive", path, line_no, columns[count_col],
                      seq.num_tokens);
    }
    if (seq.token_offset != expected) {
      return DataLoss(
          "{} line {}: token_offset {}, expected {} (sequences must be contiguous and "
          "in order)",
          path, line_no, seq.token_offset, expected);
    }
    if (seq.num_tokens > num_tokens - seq.token_offset) {
      return DataLoss("{} line {}: tokens [{}, {}) run past the {} tokens of the trace", path,
                      line_no, seq.token_offset, seq.token_offset + seq.num_tokens, num_tokens);
    }
    expected = seq.token_offset + seq.num_tokens;
    if (group_col >= 0 && id_col >= 0) {
      seq.name = fmt::format("{}/{}", fields[group_col], fields[id_col]);
    } else if (id_col >= 0 || group_col >= 0) {
      seq.name = std::string(fields[id_col >= 0 ? id_col : group_col]);
    } else {
      seq.name = seq_col >= 0 ? fmt::format("seq {}", fields[seq_col])
                              : fmt::format("seq {}", sequences->size());
    }
    sequences->push_back(std::move(seq));
  }
  if (sequences->empty()) return InvalidArgument("{}: no sequences", path);
  if (expected != num_tokens) {
    return DataLoss("{}: sequences cover {} tokens, but the trace has {}", path, expected,
                    num_tokens);
  }
  return absl::OkStatus();
}

absl::StatusOr<RoutingTrace> ImportDense(const std::string& dir) {
  const std::string meta_path = JoinPath(dir, "meta.json");
  MOE_ASSIGN_OR_RETURN(std::vector<char> meta_text, ReadWholeFile(meta_path, std::nullopt));
  DenseMeta meta;
  MOE_RETURN_IF_ERROR_CTX(ParseDenseMeta(meta_text, &meta), meta_path);
  if (meta.num_tokens == 0) return InvalidArgument("trace {} has no tokens", dir);

  RoutingTrace trace;
  TraceHeader& h = trace.header;
  h.model = meta.model.empty() ? BaseName(dir) : meta.model;
  h.num_layers = static_cast<int32_t>(meta.num_layers);
  h.num_experts = static_cast<int32_t>(meta.num_experts);
  h.top_k = static_cast<int32_t>(meta.top_k);
  h.expert_bytes = meta.expert_bytes;
  h.moe_layer_ids = meta.moe_layer_ids;

  uint64_t num_entries = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(meta.num_tokens),
                             static_cast<uint64_t>(meta.num_layers * meta.top_k), &num_entries) ||
      num_entries > (uint64_t{1} << 40)) {
    return DataLoss("{}: shape [{}, {}, {}] is too large", meta_path, meta.num_tokens,
                    meta.num_layers, meta.top_k);
  }
  const std::string size_rule = fmt::format("tokens x layers x top_k = {} x {} x {}",
                                            meta.num_tokens, meta.num_layers, meta.top_k);

  // Experts: one read, then widen to uint16 while tracking the largest id (vectorizes well).
  const std::string experts_path = JoinPath(dir, "experts_u8.bin");
  MOE_ASSIGN_OR_RETURN(std::vector<char> raw, ReadWholeFile(experts_path, num_entries, size_rule));
  trace.experts.resize(num_entries);
  uint8_t max_id = 0;
  const auto* src = reinterpret_cast<const uint8_t*>(raw.data());
  for (uint64_t i = 0; i < num_entries; ++i) {
    trace.experts[i] = src[i];
    max_id = std::max(max_id, src[i]);
  }
  if (max_id >= meta.num_experts) {
    const uint64_t i =
        std::find_if(src, src + num_entries, [&](uint8_t e) { return e >= meta.num_experts; }) -
        src;
    const uint64_t per_token = meta.num_layers * meta.top_k;
    return DataLoss("{}: token {} layer {} slot {}: expert {} out of range [0, {})", experts_path,
                    i / per_token, (i / meta.top_k) % meta.num_layers, i % meta.top_k, src[i],
                    meta.num_experts);
  }
  raw = {};

  const std::string gates_path = JoinPath(dir, "gate_probs_f32.bin");
  struct stat st;
  if (::stat(gates_path.c_str(), &st) == 0) {
    MOE_ASSIGN_OR_RETURN(
        std::vector<char> gates,
        ReadWholeFile(gates_path, num_entries * sizeof(float), "4 x " + size_rule));
    trace.gate_weights.resize(num_entries);
    std::memcpy(trace.gate_weights.data(), gates.data(), gates.size());
  }

  trace.phases.assign(meta.num_tokens, meta.phase);

  const std::string tsv_path = JoinPath(dir, "sequences.tsv");
  MOE_ASSIGN_OR_RETURN(std::vector<char> tsv, ReadWholeFile(tsv_path, std::nullopt));
  MOE_RETURN_IF_ERROR(ParseSequencesTsv(tsv_path, tsv, meta.num_tokens, &trace.sequences));
  if (meta.num_sequences.has_value() &&
      *meta.num_sequences != static_cast<int64_t>(trace.sequences.size())) {
    return DataLoss("{} has {} sequences, but {} says num_sequences = {}", tsv_path,
                    trace.sequences.size(), meta_path, *meta.num_sequences);
  }
  MOE_RETURN_IF_ERROR_CTX(trace.Validate(), fmt::format("dense trace {}", dir));
  return trace;
}

}  // namespace

absl::Status WriteTrace(const RoutingTrace& trace, const std::string& path) {
  MOE_RETURN_IF_ERROR_CTX(trace.Validate(), fmt::format("writing trace {}", path));
  const TraceHeader& h = trace.header;
  const int64_t num_tokens = trace.num_tokens();
  std::vector<int64_t> shape = {num_tokens, h.num_layers, h.top_k};

  SafetensorsWriter writer;
  writer.SetMetadata("format", std::string(kFormatName));
  writer.SetMetadata("version", std::to_string(kFormatVersion));
  writer.SetMetadata("model", h.model);
  writer.SetMetadata("num_layers", std::to_string(h.num_layers));
  writer.SetMetadata("num_experts", std::to_string(h.num_experts));
  writer.SetMetadata("top_k", std::to_string(h.top_k));
  writer.SetMetadata("expert_bytes", std::to_string(h.expert_bytes));
  if (!h.moe_layer_ids.empty()) {
    writer.SetMetadata("moe_layer_ids", fmt::format("{}", fmt::join(h.moe_layer_ids, ",")));
  }
  const bool has_names = std::any_of(trace.sequences.begin(), trace.sequences.end(),
                                     [](const TraceSequence& s) { return !s.name.empty(); });
  if (has_names) {
    nlohmann::json names = nlohmann::json::array();
    for (const TraceSequence& s : trace.sequences) names.push_back(s.name);
    // Names are free text from importers; invalid UTF-8 is replaced rather than refused.
    writer.SetMetadata("sequence_names",
                       names.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }

  const std::string ctx = fmt::format("writing trace {}", path);
  if (h.num_experts <= 256) {
    std::vector<uint8_t> narrow(trace.experts.begin(), trace.experts.end());
    MOE_RETURN_IF_ERROR_CTX(
        writer.AddTensor(std::string(kExpertsTensor), DType::kU8, shape, Bytes(narrow)), ctx);
  } else {
    MOE_RETURN_IF_ERROR_CTX(
        writer.AddTensor(std::string(kExpertsTensor), DType::kU16, shape, Bytes(trace.experts)),
        ctx);
  }
  if (trace.has_gate_weights()) {
    MOE_RETURN_IF_ERROR_CTX(writer.AddTensor(std::string(kGateWeightsTensor), DType::kF32, shape,
                                             Bytes(trace.gate_weights)),
                            ctx);
  }
  MOE_RETURN_IF_ERROR_CTX(
      writer.AddTensor(std::string(kPhaseTensor), DType::kU8, {num_tokens}, Bytes(trace.phases)),
      ctx);
  std::vector<int64_t> offsets;
  offsets.reserve(trace.sequences.size() + 1);
  for (const TraceSequence& s : trace.sequences) offsets.push_back(s.token_offset);
  offsets.push_back(num_tokens);
  MOE_RETURN_IF_ERROR_CTX(writer.AddTensor(std::string(kSequenceOffsetsTensor), DType::kI64,
                                           {static_cast<int64_t>(offsets.size())}, Bytes(offsets)),
                          ctx);
  return writer.Write(path);
}

absl::StatusOr<RoutingTrace> ReadTraceFile(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  // Empty traces get a message of their own (ReadTraceContents re-checks the shapes).
  const TensorInfo* experts = file->Find(kExpertsTensor);
  if (experts != nullptr && !experts->shape.empty() && experts->shape[0] == 0) {
    return InvalidArgument("trace {} has no tokens", path);
  }
  const TensorInfo* offsets = file->Find(kSequenceOffsetsTensor);
  if (offsets != nullptr && offsets->shape.size() == 1 && offsets->shape[0] < 2) {
    return InvalidArgument("trace {} has no sequences", path);
  }
  RoutingTrace trace;
  MOE_RETURN_IF_ERROR_CTX(ReadTraceContents(*file, &trace), fmt::format("trace {}", path));
  return trace;
}

absl::StatusOr<RoutingTrace> ImportDenseTrace(const std::string& dir) { return ImportDense(dir); }

absl::StatusOr<RoutingTrace> ReadTrace(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return NotFound("trace {} does not exist", path);
    return absl::UnavailableError(fmt::format("cannot stat trace {}: {}", path, ErrnoText(errno)));
  }
  if (S_ISDIR(st.st_mode)) return ImportDenseTrace(path);
  return ReadTraceFile(path);
}

}  // namespace moe
