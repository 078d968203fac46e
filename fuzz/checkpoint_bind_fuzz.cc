// Fuzzes the whole load path with an arbitrary model.safetensors against a fixed, valid tiny
// config: Checkpoint::Open then BindModelWeights must return a Status for every input, and the
// views of an accepted model must lie inside the mapped tensors.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz/fuzz_util.h"
#include "runtime/checkpoint.h"
#include "runtime/logging.h"
#include "runtime/model_config.h"
#include "runtime/model_weights.h"
#include "runtime/model_writer.h"

namespace {

struct Fixture {
  moe::fuzz::MemFile file{"checkpoint_bind_fuzz"};
  std::string dir;
  moe::ModelConfig config;

  Fixture() {
    moe::SetLogLevel(moe::LogLevel::kOff);  // unused-tensor warnings would flood the output
    dir = moe::fuzz::MakeTempDir("checkpoint_bind_fuzz");
    // The model of fuzz/corpus/checkpoint_bind_fuzz/*: see docs/checkpoints.md.
    moe::SyntheticModelOptions o = moe::fuzz::TinyFuzzModelOptions();
    if (!moe::WriteSyntheticModel(o, dir).ok()) std::abort();
    auto c = moe::ReadModelConfig(dir);
    if (!c.ok()) std::abort();
    config = *c;
    const std::string weights = dir + "/model.safetensors";
    ::unlink(weights.c_str());
    if (::symlink(file.path().c_str(), weights.c_str()) != 0) std::abort();
  }
};

void CheckInside(const moe::WeightView& w, const moe::Checkpoint& ckpt) {
  if (!w.present()) return;
  for (const auto& f : ckpt.files()) {
    for (const moe::TensorInfo& t : f->tensors()) {
      const auto d = f->Data(t);
      if (w.data >= d.data() && w.data + w.num_bytes() <= d.data() + d.size()) return;
    }
  }
  __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fx = new Fixture();
  fx->file.Set(data, size);
  auto ckpt = moe::Checkpoint::Open(fx->dir);
  if (!ckpt.ok()) return 0;
  auto w = moe::BindModelWeights(**ckpt, fx->config);
  if (!w.ok()) return 0;
  CheckInside(w->embed, **ckpt);
  CheckInside(w->lm_head, **ckpt);
  CheckInside(w->final_norm, **ckpt);
  for (const moe::LayerWeights& l : w->layers) {
    for (const moe::WeightView* v :
         {&l.input_norm, &l.q, &l.k, &l.v, &l.o, &l.router, &l.post_attention_norm}) {
      CheckInside(*v, **ckpt);
    }
    for (const moe::FfnWeights& e : l.experts) {
      CheckInside(e.gate, **ckpt);
      CheckInside(e.up, **ckpt);
      CheckInside(e.down, **ckpt);
      if (e.gate.dtype != w->expert_dtype || e.down.dtype != w->expert_dtype) __builtin_trap();
    }
  }
  return 0;
}
