// Fuzzes model.safetensors.index.json against three fixed, valid shards: Checkpoint::Open must
// return a Status for every input, never open a file outside the checkpoint directory, and an
// accepted index must map every tensor to the shard that holds it.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz/fuzz_util.h"
#include "runtime/checkpoint.h"
#include "runtime/logging.h"
#include "runtime/model_writer.h"

namespace {

struct Fixture {
  moe::fuzz::MemFile file{"checkpoint_index_fuzz"};
  std::string dir;

  Fixture() {
    moe::SetLogLevel(moe::LogLevel::kOff);
    dir = moe::fuzz::MakeTempDir("checkpoint_index_fuzz");
    moe::SyntheticModelOptions o = moe::fuzz::TinyFuzzModelOptions();
    o.shards = 3;
    if (!moe::WriteSyntheticModel(o, dir).ok()) std::abort();
    const std::string index = dir + "/model.safetensors.index.json";
    ::unlink(index.c_str());
    if (::symlink(file.path().c_str(), index.c_str()) != 0) std::abort();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fx = new Fixture();
  fx->file.Set(data, size);
  auto ckpt = moe::Checkpoint::Open(fx->dir);
  if (!ckpt.ok()) return 0;
  const std::string prefix = fx->dir + "/model-0000";
  for (const auto& f : (*ckpt)->files()) {
    if (f->path().compare(0, prefix.size(), prefix) != 0) __builtin_trap();
  }
  for (const std::string& name : (*ckpt)->TensorNames()) {
    if ((*ckpt)->Find(name) == nullptr) __builtin_trap();
  }
  return 0;
}
