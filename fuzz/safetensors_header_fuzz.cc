// Fuzzes SafetensorsFile::Open with arbitrary file contents: it must return a Status for every
// input (no crash, no out-of-bounds read), and every tensor it accepts must lie inside the file.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_util.h"
#include "runtime/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static moe::fuzz::MemFile* file = new moe::fuzz::MemFile("safetensors_fuzz");
  file->Set(data, size);
  auto st = moe::SafetensorsFile::Open(file->path());
  if (!st.ok()) return 0;
  const moe::SafetensorsFile& f = **st;
  uint64_t sum = 0;
  for (const moe::TensorInfo& t : f.tensors()) {
    const auto bytes = f.Data(t);
    if (bytes.size() != t.num_bytes()) __builtin_trap();
    if (bytes.size() > size) __builtin_trap();
    // Touch the first and last byte: ASan reports a span outside the mapping.
    if (!bytes.empty())
      sum += static_cast<uint8_t>(bytes.front()) + static_cast<uint8_t>(bytes.back());
    if (f.Find(t.name) == nullptr) __builtin_trap();
    (void)f.Expect(t.name, t.dtype, t.shape);
  }
  return static_cast<int>(sum & 0);
}
