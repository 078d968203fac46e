// The Device seam: device memory and host-to-device copies. Logic above it (the engine, the
// expert cache's slot arena, the C API) sees only Device&.
//
// CpuDevice: the "device" is a separate host arena with a byte capacity, and copies are real
// memcpy's, so residency, bytes moved and peak arena use are real on a machine without a GPU.
// The CUDA device (a later backend) implements the same interface with cudaMalloc'd memory,
// pinned host memory and a copy stream.
//
// Allocations are 64-byte aligned. A DeviceBuffer frees its bytes when destroyed; it must not
// outlive its Device.
//
// Thread-safety: Allocate/free and the counters are guarded by a mutex; CopyToDevice may be
// called concurrently for disjoint destinations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

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

struct DeviceCounters {
  uint64_t capacity_bytes = 0;  // 0: unlimited
  uint64_t used_bytes = 0;
  uint64_t peak_bytes = 0;
  uint64_t bytes_to_device = 0;  // host -> device copies
  uint64_t copies_to_device = 0;
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

  // Copies host bytes into device memory (synchronous on the CPU device) and counts them.
  void CopyToDevice(std::byte* device_dst, const std::byte* host_src, uint64_t bytes);

  DeviceCounters counters() const;
  // Sets the byte capacity (0: unlimited) for later allocations.
  void SetCapacity(uint64_t capacity_bytes);

 protected:
  explicit Device(uint64_t capacity_bytes) { counters_.capacity_bytes = capacity_bytes; }
  virtual std::byte* RawAllocate(uint64_t bytes) = 0;  // nullptr on failure
  virtual void RawFree(std::byte* ptr) = 0;
  virtual void RawCopyToDevice(std::byte* dst, const std::byte* src, uint64_t bytes) = 0;

 private:
  friend class DeviceBuffer;
  void Release(std::byte* ptr, uint64_t bytes);

  mutable std::mutex mu_;
  DeviceCounters counters_;
};

// capacity_bytes 0: unlimited.
std::unique_ptr<Device> MakeCpuDevice(uint64_t capacity_bytes);

}  // namespace moe
