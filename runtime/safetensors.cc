#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "nlohmann/json.hpp"
#include "runtime/status.h"

namespace moe {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; big-endian hosts are not supported");

// The reference implementation refuses headers above 100 MB; so do we, so a corrupt length can
// never make us parse (or trust) a huge region.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DTypeEntry, 13> kDTypes = {{
    {DType::kBool, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kU16, "U16", 2},
    {DType::kI16, "I16", 2},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kU32, "U32", 4},
    {DType::kI32, "I32", 4},
    {DType::kF32, "F32", 4},
    {DType::kU64, "U64", 8},
    {DType::kI64, "I64", 8},
    {DType::kF64, "F64", 8},
}};

std::string ShapeString(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

absl::Status ErrnoStatus(int err, std::string_view what, const std::string& path) {
  std::string msg = fmt::format("{} {}: {}", what, path, std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::UnavailableError(msg);
}

// Number of elements of `shape` and its byte size, or an error on negative dims or overflow.
absl::Status CheckedSizes(std::span<const int64_t> shape, DType dtype, uint64_t* elements,
                          uint64_t* bytes) {
  uint64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return InvalidArgument("negative dimension in shape {}", ShapeString(shape));
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(dim), &n)) {
      return InvalidArgument("shape {} overflows 64-bit element count", ShapeString(shape));
    }
  }
  uint64_t b = 0;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(DTypeSize(dtype)), &b)) {
    return InvalidArgument("shape {} of {} overflows 64-bit byte count", ShapeString(shape),
                           DTypeName(dtype));
  }
  *elements = n;
  *bytes = b;
  return absl::OkStatus();
}

// Parses one tensor entry of the header. Errors carry no file name (the caller adds it).
absl::Status ParseTensorEntry(const std::string& name, const nlohmann::json& entry,
                              uint64_t data_size, TensorInfo* info) {
  if (!entry.is_object()) {
    return DataLoss("tensor {}: entry is {}, expected an object", name, entry.type_name());
  }
  info->name = name;
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return DataLoss("tensor {}: missing or non-string \"dtype\"", name);
  }
  const std::string dtype_name = dtype_it->get<std::string>();
  auto dtype = ParseDType(dtype_name);
  if (!dtype.ok()) return DataLoss("tensor {}: unknown dtype \"{}\"", name, dtype_name);
  info->dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return DataLoss("tensor {}: missing or non-array \"shape\"", name);
  }
  info->shape.clear();
  for (const auto& dim : *shape_it) {
    if (!dim.is_number_integer()) {
      return DataLoss("tensor {}: shape {} holds a non-integer", name, shape_it->dump());
    }
    if (dim.is_number_unsigned()) {
      const uint64_t v = dim.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return DataLoss("tensor {}: dimension {} too large", name, v);
      }
      info->shape.push_back(static_cast<int64_t>(v));
    } else {
      const int64_t v = dim.get<int64_t>();
      if (v < 0) return DataLoss("tensor {}: negative dimension {} in shape", name, v);
      info->shape.push_back(v);
    }
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return DataLoss("tensor {}: \"data_offsets\" must be two non-negative integers, got {}", name,
                    offsets_it == entry.end() ? std::string("nothing") : offsets_it->dump());
  }
  info->begin = (*offsets_it)[0].get<uint64_t>();
  info->end = (*offsets_it)[1].get<uint64_t>();
  if (info->begin > info->end) {
    return DataLoss("tensor {}: data_offsets [{}, {}] are reversed", name, info->begin, info->end);
  }
  if (info->end > data_size) {
    return DataLoss("tensor {}: data_offsets [{}, {}] outside the {}-byte data section", name,
                    info->begin, info->end, data_size);
  }
  uint64_t elements = 0, bytes = 0;
  absl::Status sizes = CheckedSizes(info->shape, info->dtype, &elements, &bytes);
  if (!sizes.ok()) return DataLoss("tensor {}: {}", name, std::string(sizes.message()));
  if (info->end - info->begin != bytes) {
    return DataLoss("tensor {}: data_offsets [{}, {}] span {} bytes, but {} {} needs {}", name,
                    info->begin, info->end, info->end - info->begin, DTypeName(info->dtype),
                    ShapeString(info->shape), bytes);
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.name;
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) return e.dtype;
  }
  return InvalidArgument("unknown safetensors dtype \"{}\"", name);
}

size_t DTypeSize(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) return e.size;
  }
  return 0;
}

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

// ---- SafetensorsFile -------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open safetensors file", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus(err, "cannot stat safetensors file", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument("safetensors file {}: not a regular file", path);
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return DataLoss("safetensors file {}: {} bytes, too short for the 8-byte header length", path,
                    file_size);
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) return ErrnoStatus(map_err, "cannot mmap safetensors file", path);

  // From here on the destructor unmaps on every error path.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = static_cast<const std::byte*>(map);
  file->map_size_ = file_size;

  uint64_t header_len = 0;
  std::memcpy(&header_len, file->map_, 8);  // little-endian (static_assert above)
  if (header_len > kMaxHeaderBytes) {
    return DataLoss("safetensors file {}: header length {} exceeds the {}-byte limit", path,
                    header_len, kMaxHeaderBytes);
  }
  if (header_len > file_size - 8) {
    return DataLoss("safetensors file {}: header length {} runs past the end of the {}-byte file",
                    path, header_len, file_size);
  }
  const char* header = reinterpret_cast<const char*>(file->map_ + 8);
  if (header_len == 0 || header[0] != '{') {
    return DataLoss("safetensors file {}: header does not start with a JSON object", path);
  }
  nlohmann::json json = nlohmann::json::parse(header, header + header_len, /*cb=*/nullptr,
                                              /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return DataLoss("safetensors file {}: header ({} bytes) is not valid JSON", path, header_len);
  }
  if (!json.is_object()) {
    return DataLoss("safetensors file {}: header is a JSON {}, expected an object", path,
                    json.type_name());
  }
  file->data_ = file->map_ + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  for (const auto& [key, value] : json.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        return DataLoss("safetensors file {}: __metadata__ is a JSON {}, expected an object", path,
                        value.type_name());
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return DataLoss(
              "safetensors file {}: __metadata__ value of \"{}\" is a JSON {}, "
              "expected a string",
              path, mkey, mvalue.type_name());
        }
        file->metadata_[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    TensorInfo info;
    MOE_RETURN_IF_ERROR_CTX(ParseTensorEntry(key, value, data_size, &info),
                            fmt::format("safetensors file {}", path));
    file->tensors_.push_back(std::move(info));
  }

  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // Empty tensors occupy no bytes and cannot overlap anything.
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : file->tensors_) {
    if (t.begin == t.end) continue;
    if (prev != nullptr && t.begin < prev->end) {
      return DataLoss("safetensors file {}: tensor {} [{}, {}] overlaps tensor {} [{}, {}]", path,
                      t.name, t.begin, t.end, prev->name, prev->begin, prev->end);
    }
    prev = &t;
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  for (const TensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::span<const std::byte> SafetensorsFile::Data(const TensorInfo& tensor) const {
  return {data_ + tensor.begin, static_cast<size_t>(tensor.end - tensor.begin)};
}

absl::StatusOr<const TensorInfo*> SafetensorsFile::Expect(std::string_view name, DType dtype,
                                                          std::span<const int64_t> shape,
                                                          bool check_shape) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr) return NotFound("safetensors file {}: no tensor {}", path_, name);
  if (t->dtype != dtype) {
    return InvalidArgument("safetensors file {}: tensor {}: dtype {}, expected {}", path_, name,
                           DTypeName(t->dtype), DTypeName(dtype));
  }
  if (check_shape && !std::equal(t->shape.begin(), t->shape.end(), shape.begin(), shape.end())) {
    return InvalidArgument("safetensors file {}: tensor {}: shape {}, expected {}", path_, name,
                           ShapeString(t->shape), ShapeString(shape));
  }
  return t;
}

// ---- SafetensorsWriter -----------------------------------------------------------------------

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

absl::Status SafetensorsWriter::AddTensor(std::string name, DType dtype, std::vector<int64_t> shape,
                                          std::span<const std::byte> data) {
  if (name == "__metadata__") return InvalidArgument("tensor name __metadata__ is reserved");
  for (const Pending& p : tensors_) {
    if (p.info.name == name) return InvalidArgument("tensor {} added twice", name);
  }
  uint64_t elements = 0, bytes = 0;
  MOE_RETURN_IF_ERROR_CTX(CheckedSizes(shape, dtype, &elements, &bytes),
                          fmt::format("tensor {}", name));
  if (bytes != data.size()) {
    return InvalidArgument("tensor {}: {} {} needs {} bytes, got {}", name, DTypeName(dtype),
                           ShapeString(shape), bytes, data.size());
  }
  Pending p;
  p.info.name = std::move(name);
  p.info.dtype = dtype;
  p.info.shape = std::move(shape);
  p.data.assign(data.begin(), data.end());
  tensors_.push_back(std::move(p));
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  // Tensors are laid out back to back (the reference reader rejects gaps), largest element size
  // first, like the reference writer: with power-of-two element sizes every tensor then starts
  // at a multiple of its own element size. The header is padded to a multiple of 8 so the data
  // section starts 8-aligned in a page-aligned mapping.
  std::vector<const Pending*> order;
  order.reserve(tensors_.size());
  for (const Pending& p : tensors_) order.push_back(&p);
  std::stable_sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) {
    const size_t sa = DTypeSize(a->info.dtype), sb = DTypeSize(b->info.dtype);
    return sa != sb ? sa > sb : a->info.name < b->info.name;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata_.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const Pending* p : order) {
    const uint64_t begin = offset;
    offset += p->data.size();
    header[p->info.name] = {{"dtype", std::string(DTypeName(p->info.dtype))},
                            {"shape", p->info.shape},
                            {"data_offsets", {begin, offset}}};
  }
  std::string header_text;
  try {
    header_text = header.dump(/*indent=*/-1, /*indent_char=*/' ', /*ensure_ascii=*/false,
                              nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument("safetensors file {}: tensor names and metadata must be UTF-8: {}", path,
                           e.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_len = header_text.size();

  // Temporary file in the same directory, so the rename is atomic.
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) return ErrnoStatus(errno, "cannot create temporary file for", path);
  ::fchmod(fd, 0644);
  FILE* out = ::fdopen(fd, "wb");
  if (out == nullptr) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoStatus(err, "cannot open temporary file", tmp);
  }
  int err = 0;
  auto note = [&err](bool ok) {
    if (!ok && err == 0) err = errno != 0 ? errno : EIO;
    return ok;
  };
  errno = 0;
  bool ok = note(std::fwrite(&header_len, 8, 1, out) == 1) &&
            note(std::fwrite(header_text.data(), 1, header_text.size(), out) == header_text.size());
  for (const Pending* p : order) {
    if (!ok) break;
    ok = note(p->data.empty() ||
              std::fwrite(p->data.data(), 1, p->data.size(), out) == p->data.size());
  }
  ok = ok && note(std::fflush(out) == 0) && note(::fsync(fd) == 0);
  ok = note(std::fclose(out) == 0) && ok;
  if (!ok) {
    ::unlink(tmp.c_str());
    return ErrnoStatus(err, "cannot write safetensors file", path);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoStatus(err, "cannot rename temporary file onto", path);
  }
  return absl::OkStatus();
}

}  // namespace moe
