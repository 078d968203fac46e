// The host expert store: where routed experts' weights live at rest (the memory-mapped
// checkpoint: no second copy in host memory), and how one expert is laid out in a device slot.
//
// Slot layout: gate [I, H], up [I, H], down [H, I] back to back in the experts' dtype, so one
// expert is one contiguous copy of expert_bytes.
//
// Thread-safety: immutable; CopyToSlot may run concurrently for different slots.
#pragma once

#include <cstddef>
#include <cstdint>

#include <algorithm>

#include "experts/expert_id.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/device.h"
#include "runtime/model_weights.h"

namespace moe {

class HostExpertStore {
 public:
  // `weights` must outlive the store.
  HostExpertStore(const ModelWeights& weights, ExpertSpace space)
      : weights_(weights), space_(space) {}

  uint64_t expert_bytes() const { return weights_.expert_bytes; }
  ExpertSpace space() const { return space_; }
  const FfnWeights& HostWeights(ExpertKey key) const {
    const ExpertId id = space_.Id(key);
    return weights_.layers[id.layer].experts[id.expert];
  }

  // Copies expert `key` into `slot` (expert_bytes of device memory) through `device`. With a
  // pool, the copy is split into chunks copied in parallel: one thread cannot saturate the
  // memory system of a multi-core host (CPU device), and chunks let several copy engines work.
  void CopyToSlot(ExpertKey key, Device& device, std::byte* slot,
                  cpu::ThreadPool* pool = nullptr) const {
    const FfnWeights& w = HostWeights(key);
    std::byte* dst = slot;
    for (const WeightView* v : {&w.gate, &w.up, &w.down}) {
      const uint64_t bytes = v->num_bytes();
      if (pool == nullptr || bytes < 2 * kCopyChunk) {
        device.CopyToDevice(dst, v->data, bytes);
      } else {
        const auto chunks = static_cast<int64_t>((bytes + kCopyChunk - 1) / kCopyChunk);
        pool->ParallelFor(chunks, 1, [&](int64_t b, int64_t e) {
          const uint64_t begin = static_cast<uint64_t>(b) * kCopyChunk;
          const uint64_t end = std::min(bytes, static_cast<uint64_t>(e) * kCopyChunk);
          device.CopyToDevice(dst + begin, v->data + begin, end - begin);
        });
      }
      dst += bytes;
    }
  }

  // Views of the expert held in `slot`.
  FfnWeights SlotWeights(ExpertKey key, const std::byte* slot) const {
    const FfnWeights& w = HostWeights(key);
    FfnWeights out = w;
    out.gate.data = slot;
    out.up.data = slot + w.gate.num_bytes();
    out.down.data = slot + w.gate.num_bytes() + w.up.num_bytes();
    return out;
  }

 private:
  static constexpr uint64_t kCopyChunk = 1 << 20;
  const ModelWeights& weights_;
  ExpertSpace space_;
};

}  // namespace moe
