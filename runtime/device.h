// The Device seam: device memory, host-to-device copies and the device timeline. Logic above it
// (the engine, the expert cache's slot arena, the C API) sees only Device&.
//
// CpuDevice: the "device" is a separate host arena with a byte capacity, and copies are real
// memcpy's, so residency, bytes moved and peak arena use are real on a machine without a GPU.
// Its copies are synchronous: CopyToDeviceAsync has finished the copy when it returns.
// FakeDevice (runtime/fake_device.h): CPU memory with a virtual clock and a modelled copy link,
// plus fault injection, for deterministic tests of overlap, stalls and errors.
// CudaDevice (runtime/cuda/cuda_device.h) implements the same interface with cudaMalloc'd
// memory, pinned host memory, a copy stream and a compute stream (queues_compute()).
//
// Allocations are 64-byte aligned. A DeviceBuffer frees its bytes when destroyed; it must not
// outlive its Device.
//
// Copies. A device has one copy stream: asynchronous copies complete in issue order (FIFO, like
// one CUDA stream). CopyToDeviceAsync returns a CopyTicket; CopyDone polls it, WaitCopy blocks
// compute until it completed and returns the copy's status. A ticket with id 0 stands for a copy
// that was complete at issue. Every copy, failed ones included, is counted in bytes_to_device
// and copies_to_device when it is issued. The synchronous CopyToDevice is CopyToDeviceAsync +
// WaitCopy; it has no status to return, so a failed synchronous copy is logged at error level
// and counted in failed_copies (callers that must handle copy errors use the asynchronous API).
//
// Time. Now() is the device timeline in seconds: where compute is (the CPU device: a steady
// clock since the device was created; the fake device: its virtual compute clock). Devices that
// measure their kernels ignore ChargeCompute; the fake device advances its clock by it.
//
// Thread-safety: every member function may be called from any thread. Allocate/free and the
// counters are guarded by a mutex; CopyToDevice / CopyToDeviceAsync may be called concurrently
// for disjoint destinations (each call is one copy on the stream, ordered by when it is issued).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

class Device;

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }
  void Reset();

 private:
  friend class Device;
  Device* device_ = nullptr;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

// A handle to one asynchronous host -> device copy; id 0 means "no copy" (already complete).
// Ids are only meaningful to the device that issued them.
struct CopyTicket {
  uint64_t id = 0;
};

struct DeviceCounters {
  uint64_t capacity_bytes = 0;  // 0: unlimited
  uint64_t used_bytes = 0;
  uint64_t peak_bytes = 0;
  uint64_t bytes_to_device = 0;   // host -> device copies, counted at issue (failed ones too)
  uint64_t copies_to_device = 0;  // copies issued (each CopyToDevice / CopyToDeviceAsync call)
  // Copies issued but not complete at Now() (always 0 on the synchronous CPU device).
  uint64_t copies_in_flight = 0;
  // Copies complete at Now() that failed (WaitCopy returns their error; destination unwritten).
  uint64_t failed_copies = 0;
  // Seconds of device time, zero where the device does not model or measure them:
  double compute_seconds = 0;     // charged with ChargeCompute (fake device)
  double copy_stall_seconds = 0;  // compute waited in WaitCopy for a copy not yet complete
  double link_busy_seconds = 0;   // the copy link was busy (latency + transfer, every copy)
  uint64_t stalled_waits = 0;     // WaitCopy calls that had to wait (added to the stall)
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string_view name() const = 0;
  // True when kernels on this device can read host memory in place (the CPU device): the engine
  // then uses the memory-mapped non-expert weights directly instead of keeping a second copy.
  // Routed experts still go through the expert cache and its slots.
  virtual bool reads_host_memory() const { return false; }

  // `bytes` of device memory, zero-filled; `what` names the purpose in errors. ResourceExhausted
  // when the capacity would be exceeded: the message names what, the size, the used bytes and
  // the capacity.
  absl::StatusOr<DeviceBuffer> Allocate(uint64_t bytes, std::string_view what);

  // Copies host bytes into device memory and waits for the copy (CopyToDeviceAsync + WaitCopy).
  // A failed copy is logged and counted in failed_copies; see the header comment.
  void CopyToDevice(std::byte* device_dst, const std::byte* host_src, uint64_t bytes);

  // Enqueues a copy on the device's single copy stream (FIFO: copies complete in issue order).
  // The bytes may be read from `host_src` at any time until the copy completes, so they must stay
  // valid and unchanged until then; `device_dst` must not be read by compute before CopyDone /
  // WaitCopy says the copy completed. Counted in bytes_to_device / copies_to_device at issue.
  CopyTicket CopyToDeviceAsync(std::byte* device_dst, const std::byte* host_src, uint64_t bytes);
  // Non-blocking: has the copy completed (successfully or not) by the device's current time?
  // True for id 0.
  bool CopyDone(CopyTicket ticket) const;
  // Blocks compute until the copy completed and returns its status: OK, or an error naming the
  // copy (its number, bytes and destination offset where known) when it failed. Never hangs.
  // Waiting again for the same ticket returns the same status at no cost. OK for id 0.
  absl::Status WaitCopy(CopyTicket ticket);

  // Compute that runs on a queue of its own (the CUDA device: kernels enqueued on a stream)
  // waits for copies on the device instead of blocking the host. queues_compute() says which
  // kind this device is; the defaults describe a device whose compute runs on the calling thread
  // (the CPU and fake devices), where the two hooks below are WaitCopy and a no-op.
  virtual bool queues_compute() const { return false; }
  // Makes compute enqueued from now on wait until the copy completed. Default: WaitCopy (the
  // host blocks and gets the copy's status). A device with a compute queue (CUDA) enqueues the
  // wait and returns at once: OK, or the copy's error when it is already known to have failed
  // (a failure that surfaces later is reported by the next synchronising call).
  virtual absl::Status ComputeWaitFor(CopyTicket ticket);
  // Makes copies issued from now on wait until the compute enqueued so far ran: before a copy
  // overwrites memory (an expert slot) that queued kernels may still read. Default: nothing to
  // do (compute ran when its call returned).
  virtual absl::Status CopyWaitForCompute();

  // Tells the device that compute took `seconds` (>= 0) of device time. Real devices measure
  // their kernels themselves and ignore this (the default); the fake device advances Now().
  virtual void ChargeCompute(double seconds);
  // The device timeline in seconds (the CPU device: steady clock since creation).
  virtual double Now() const;

  DeviceCounters counters() const;
  // Sets the byte capacity (0: unlimited) for later allocations.
  void SetCapacity(uint64_t capacity_bytes);

 protected:
  explicit Device(uint64_t capacity_bytes) : created_(std::chrono::steady_clock::now()) {
    counters_.capacity_bytes = capacity_bytes;
  }
  virtual std::byte* RawAllocate(uint64_t bytes) = 0;  // nullptr on failure
  virtual void RawFree(std::byte* ptr) = 0;
  virtual void RawCopyToDevice(std::byte* dst, const std::byte* src, uint64_t bytes) = 0;

  // Hooks for devices that are not synchronous or inject faults; the defaults describe a
  // synchronous device (the CPU device). Called without the Device mutex held.
  //
  // Called first by every Allocate: a non-OK status fails that allocation with it.
  virtual absl::Status CheckAllocate(uint64_t bytes, std::string_view what);
  // Issues one copy (already counted). Default: RawCopyToDevice, complete ticket (id 0).
  virtual CopyTicket StartCopy(std::byte* dst, const std::byte* src, uint64_t bytes);
  virtual bool IsCopyDone(CopyTicket ticket) const;    // default: true
  virtual absl::Status FinishCopy(CopyTicket ticket);  // default: OK
  // Fills the fields of DeviceCounters the device models (copies_in_flight, failed_copies and the
  // seconds); the base class owns the others. Default: leaves them zero.
  virtual void FillCopyCounters(DeviceCounters& counters) const;

 private:
  friend class DeviceBuffer;
  void Release(std::byte* ptr, uint64_t bytes);

  const std::chrono::steady_clock::time_point created_;
  mutable std::mutex mu_;
  DeviceCounters counters_;
};

// capacity_bytes 0: unlimited.
std::unique_ptr<Device> MakeCpuDevice(uint64_t capacity_bytes);

}  // namespace moe
