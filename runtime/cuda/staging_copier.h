// Host -> device copies from pageable memory through a ring of pinned staging buffers.
//
// A cudaMemcpyAsync from pageable memory is staged by the driver through its own small pinned
// buffers and runs at a fraction of the link (8.7 of 55 GB/s on the H100 machine, bench/
// RESULTS.md). When pinning the expert store is refused (cudaHostRegister of a large mapped
// checkpoint), the engine copies through this ring instead: each chunk is copied by host
// threads into a free pinned slot, then DMA'd to the device on the copy stream, so host copies
// of later chunks overlap the DMA of earlier ones.
//
// Copy blocks the calling thread until the last chunk is enqueued (it waits for a slot's
// previous DMA before refilling it); the copies themselves complete on `stream` in order, so a
// caller that records an event on `stream` after Copy knows when the bytes landed. The source
// may be reused once Copy returns (it was fully copied into staging by then).
//
// Thread-safety: one Copy at a time (an internal mutex serialises callers). The stream and the
// pool must outlive the copier.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct CUstream_st;
struct CUevent_st;

namespace moe::cpu {
class ThreadPool;
}

namespace moe::cuda {

class StagingCopier {
 public:
  // `slots` pinned buffers of `chunk_bytes`; `pool` (may be nullptr) splits each chunk's host
  // copy across its threads. ResourceExhausted when the pinned buffers cannot be allocated.
  static absl::StatusOr<std::unique_ptr<StagingCopier>> Create(CUstream_st* stream,
                                                               uint64_t chunk_bytes, int32_t slots,
                                                               cpu::ThreadPool* pool);
  ~StagingCopier();
  StagingCopier(const StagingCopier&) = delete;
  StagingCopier& operator=(const StagingCopier&) = delete;

  // Enqueues the copy of `bytes` from host `src` (any host memory) to device `dst` on the stream.
  // Internal naming the CUDA error when a staging step fails.
  absl::Status Copy(std::byte* dst, const std::byte* src, uint64_t bytes);

  uint64_t chunk_bytes() const { return chunk_bytes_; }

 private:
  StagingCopier(CUstream_st* stream, uint64_t chunk_bytes, cpu::ThreadPool* pool)
      : stream_(stream), chunk_bytes_(chunk_bytes), pool_(pool) {}

  CUstream_st* const stream_;
  const uint64_t chunk_bytes_;
  cpu::ThreadPool* const pool_;
  std::mutex mu_;
  std::vector<std::byte*> buffers_;  // pinned
  std::vector<CUevent_st*> events_;  // the latest DMA out of each buffer
  uint64_t next_ = 0;                // the buffer the next chunk uses (round robin)
};

}  // namespace moe::cuda
