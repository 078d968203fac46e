// CudaDevice: the Device seam on an NVIDIA GPU (DESIGN.md section 4).
//
// Memory: Allocate is cudaMalloc + cudaMemset (zero-filled, as on every device). The engine
// allocates its expert slot arena as one buffer and carves it, so a cache miss never calls
// cudaMalloc. CheckAllocate compares the request with cudaMemGetInfo first, so running out of
// device memory is a ResourceExhausted naming what was being allocated, the size and the free
// bytes, never a crash.
//
// Streams: one non-blocking compute stream and one non-blocking host -> device copy stream.
// CopyToDeviceAsync enqueues cudaMemcpyAsync on the copy stream and records an event after it;
// copies complete in issue order (one stream), as the Device contract says. CopyDone polls the
// event. WaitCopy blocks the calling host thread until the copy completed and returns its status
// (the time blocked is counted in copy_stall_seconds); ComputeWaitFor instead makes the compute
// stream wait for the copy on the GPU, without blocking the host (what an overlapped forward
// uses: each expert's GEMMs wait only for that expert's copy).
//
// Host memory: PinnedHostBuffer (cudaHostAlloc) and RegisterHost (cudaHostRegister of an
// existing range, e.g. a mapped checkpoint) give pinned memory, which the copy engine reads
// directly. A copy from pageable memory (pinning refused, or never asked for) goes through a
// ring of pinned staging buffers (runtime/cuda/staging_copier.h, created at the first such copy
// and logged once): host threads fill the ring while the link drains it, near the pinned rate
// instead of the driver's ~15%, but CopyToDeviceAsync then returns only once the bytes are
// staged. RegisterHost failing is not fatal: it returns the CUDA error as a status.
//
// Errors: a copy whose cudaMemcpyAsync fails at issue, or whose event reports an error, fails
// its WaitCopy with Internal naming the copy number, its bytes and the CUDA error; the device
// remembers failed copies so a second wait returns the same status. Nothing hangs on a healthy
// driver (a sticky context error makes every later call fail fast).
//
// Thread-safety: every member function may be called from any thread (one mutex guards the
// ticket bookkeeping; CUDA calls on streams are thread-safe). The streams belong to the device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/device.h"

// Opaque CUDA handles, so this header does not pull in the CUDA runtime headers.
struct CUstream_st;
struct CUevent_st;

namespace moe::cpu {
class ThreadPool;
}

namespace moe::cuda {

class StagingCopier;

struct CudaDeviceOptions {
  int32_t index = 0;            // CUDA device ordinal
  uint64_t capacity_bytes = 0;  // 0: no budget beyond the GPU's own memory
};

class CudaDevice final : public Device {
 public:
  // FailedPrecondition when no usable GPU exists (no driver, index out of range) with the CUDA
  // runtime's message; Internal when stream/event creation fails.
  static absl::StatusOr<std::unique_ptr<CudaDevice>> Create(const CudaDeviceOptions& options);
  ~CudaDevice() override;

  std::string_view name() const override { return name_; }
  int32_t index() const { return index_; }
  CUstream_st* compute_stream() const { return compute_; }
  CUstream_st* copy_stream() const { return copy_; }

  // Compute is queued on compute_stream(): the Device hooks below wait on the GPU.
  bool queues_compute() const override { return true; }
  // Makes the compute stream wait (on the GPU) until the copy completed. Returns the copy's
  // status when it is already known to have failed, else OK (an error surfacing later is
  // reported by the next synchronising call). The engine's expert transfers call it through
  // Device& (runtime/expert_transfers.h).
  absl::Status ComputeWaitFor(CopyTicket ticket) override;
  // Makes the copy stream wait until everything enqueued on the compute stream so far ran
  // (before overwriting a slot that compute may still read).
  absl::Status CopyWaitForCompute() override;
  // Blocks until the compute stream has drained; returns its error, if any.
  absl::Status SynchronizeCompute();

  // Pins an existing host range for asynchronous DMA (cudaHostRegister); see the header comment.
  absl::Status RegisterHost(const void* ptr, uint64_t bytes);
  absl::Status UnregisterHost(const void* ptr);

 protected:
  std::byte* RawAllocate(uint64_t bytes) override;
  void RawFree(std::byte* ptr) override;
  void RawCopyToDevice(std::byte* dst, const std::byte* src, uint64_t bytes) override;
  absl::Status CheckAllocate(uint64_t bytes, std::string_view what) override;
  CopyTicket StartCopy(std::byte* dst, const std::byte* src, uint64_t bytes) override;
  bool IsCopyDone(CopyTicket ticket) const override;
  absl::Status FinishCopy(CopyTicket ticket) override;
  void FillCopyCounters(DeviceCounters& counters) const override;

 private:
  struct InFlight {
    uint64_t id;
    uint64_t bytes;
    CUevent_st* event;
  };
  CudaDevice(int32_t index, std::string name, CUstream_st* compute, CUstream_st* copy);
  // Retires completed copies from the front of in_flight_ (FIFO); with `block_until` > 0, first
  // waits for that copy's event. Caller holds mu_.
  void RetireLocked(uint64_t block_until) const;
  CUevent_st* TakeEventLocked() const;
  // True for pageable host memory (not registered, not from cudaHostAlloc, not device memory).
  static bool IsPageable(const std::byte* src);
  // Copies through the staging ring (created at first use); the copy stream orders it. Returns
  // the cudaError_t value (an int here: the header has no CUDA includes).
  int StagedCopyLocked(std::byte* dst, const std::byte* src, uint64_t bytes);
  absl::Status StatusOfLocked(uint64_t id) const;

  const int32_t index_;
  const std::string name_;
  CUstream_st* const compute_;
  CUstream_st* const copy_;

  static constexpr uint64_t kStagingChunkBytes = 16 << 20;
  static constexpr int32_t kStagingSlots = 4;
  std::unique_ptr<cpu::ThreadPool> staging_pool_;
  std::unique_ptr<StagingCopier> staging_;
  bool staging_failed_ = false;

  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  mutable uint64_t completed_through_ = 0;  // every copy with id <= this has completed
  mutable std::deque<InFlight> in_flight_;
  mutable std::vector<CUevent_st*> free_events_;
  mutable std::map<uint64_t, std::string> failed_;  // copy id -> error text
  double stall_seconds_ = 0;
  uint64_t stalled_waits_ = 0;
};

// Page-locked host memory from cudaHostAlloc, freed with cudaFreeHost. ResourceExhausted naming
// the size when the driver refuses it.
class PinnedHostBuffer {
 public:
  static absl::StatusOr<PinnedHostBuffer> Allocate(uint64_t bytes, std::string_view what);
  PinnedHostBuffer() = default;
  PinnedHostBuffer(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer& operator=(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;
  ~PinnedHostBuffer();

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace moe::cuda
