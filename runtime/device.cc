#include "runtime/device.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe {
namespace {

constexpr uint64_t kAlignment = 64;

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(uint64_t capacity) : Device(capacity) {}
  std::string_view name() const override { return "cpu"; }
  bool reads_host_memory() const override { return true; }

 protected:
  std::byte* RawAllocate(uint64_t bytes) override {
    const uint64_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
    if (p != nullptr) std::memset(p, 0, rounded);
    return static_cast<std::byte*>(p);
  }
  void RawFree(std::byte* ptr) override { std::free(ptr); }
  void RawCopyToDevice(std::byte* dst, const std::byte* src, uint64_t bytes) override {
#if defined(__SSE2__)
    // Large expert copies: non-temporal stores skip reading the destination lines into the
    // cache first (a plain memcpy moves each byte three times through memory, this twice), and
    // keep the copy from evicting the weights the kernels are streaming.
    if (bytes >= kStreamingCopyMin) {
      const auto misalign = reinterpret_cast<uintptr_t>(dst) % 16;
      const uint64_t head = misalign == 0 ? 0 : std::min<uint64_t>(16 - misalign, bytes);
      std::memcpy(dst, src, head);
      uint64_t i = head;
      for (; i + 64 <= bytes; i += 64) {
        const auto* s = reinterpret_cast<const __m128i*>(src + i);
        auto* d = reinterpret_cast<__m128i*>(dst + i);
        const __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
        const __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
        _mm_stream_si128(d, a);
        _mm_stream_si128(d + 1, b);
        _mm_stream_si128(d + 2, c);
        _mm_stream_si128(d + 3, e);
      }
      std::memcpy(dst + i, src + i, bytes - i);
      _mm_sfence();  // the stores are visible before anyone reads the slot
      return;
    }
#endif
    std::memcpy(dst, src, bytes);
  }
  static constexpr uint64_t kStreamingCopyMin = 256 * 1024;
};

}  // namespace

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    device_ = other.device_;
    data_ = other.data_;
    size_ = other.size_;
    other.device_ = nullptr;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void DeviceBuffer::Reset() {
  if (device_ != nullptr) device_->Release(data_, size_);
  device_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

absl::StatusOr<DeviceBuffer> Device::Allocate(uint64_t bytes, std::string_view what) {
  MOE_RETURN_IF_ERROR(CheckAllocate(bytes, what));
  {
    std::lock_guard lock(mu_);
    const DeviceCounters& c = counters_;
    if (c.capacity_bytes != 0 && c.used_bytes + bytes > c.capacity_bytes) {
      return ResourceExhausted(
          "{} device: allocating {} for {} exceeds the device capacity ({} of {} bytes in use)",
          name(), bytes, what, c.used_bytes, c.capacity_bytes);
    }
    counters_.used_bytes += bytes;
    counters_.peak_bytes = std::max(counters_.peak_bytes, counters_.used_bytes);
  }
  std::byte* p = RawAllocate(bytes);
  if (p == nullptr) {
    std::lock_guard lock(mu_);
    counters_.used_bytes -= bytes;
    return ResourceExhausted("{} device: out of memory allocating {} bytes for {}", name(), bytes,
                             what);
  }
  DeviceBuffer buffer;
  buffer.device_ = this;
  buffer.data_ = p;
  buffer.size_ = bytes;
  return buffer;
}

void Device::CopyToDevice(std::byte* device_dst, const std::byte* host_src, uint64_t bytes) {
  const CopyTicket ticket = CopyToDeviceAsync(device_dst, host_src, bytes);
  if (ticket.id == 0) return;  // synchronous device: done, nothing to wait for
  // The existing callers (weight upload, CopyToSlot) have no way to handle an error; a device
  // that can fail copies is used with the asynchronous API by code that can.
  const absl::Status status = WaitCopy(ticket);
  if (!status.ok()) {
    // Device errors name the device already ("fake device: injected copy failure: ...").
    MOE_LOG(kError, "synchronous copy failed: {}", std::string(status.message()));
  }
}

CopyTicket Device::CopyToDeviceAsync(std::byte* device_dst, const std::byte* host_src,
                                     uint64_t bytes) {
  {
    std::lock_guard lock(mu_);
    counters_.bytes_to_device += bytes;
    ++counters_.copies_to_device;
  }
  return StartCopy(device_dst, host_src, bytes);
}

bool Device::CopyDone(CopyTicket ticket) const { return ticket.id == 0 || IsCopyDone(ticket); }

absl::Status Device::WaitCopy(CopyTicket ticket) {
  if (ticket.id == 0) return absl::OkStatus();
  return FinishCopy(ticket);
}

absl::Status Device::ComputeWaitFor(CopyTicket ticket) { return WaitCopy(ticket); }

absl::Status Device::CopyWaitForCompute() { return absl::OkStatus(); }

void Device::ChargeCompute(double /*seconds*/) {}

double Device::Now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - created_).count();
}

absl::Status Device::CheckAllocate(uint64_t /*bytes*/, std::string_view /*what*/) {
  return absl::OkStatus();
}

CopyTicket Device::StartCopy(std::byte* dst, const std::byte* src, uint64_t bytes) {
  RawCopyToDevice(dst, src, bytes);
  return CopyTicket{};
}

bool Device::IsCopyDone(CopyTicket /*ticket*/) const { return true; }

absl::Status Device::FinishCopy(CopyTicket /*ticket*/) { return absl::OkStatus(); }

void Device::FillCopyCounters(DeviceCounters& /*counters*/) const {}

void Device::SetCapacity(uint64_t capacity_bytes) {
  std::lock_guard lock(mu_);
  counters_.capacity_bytes = capacity_bytes;
}

DeviceCounters Device::counters() const {
  DeviceCounters c;
  {
    std::lock_guard lock(mu_);
    c = counters_;
  }
  // Outside mu_: the hook takes the derived device's own lock, and a derived device never calls
  // into the base while holding it, so the two locks are never nested.
  FillCopyCounters(c);
  return c;
}

void Device::Release(std::byte* ptr, uint64_t bytes) {
  RawFree(ptr);
  std::lock_guard lock(mu_);
  counters_.used_bytes -= bytes;
}

std::unique_ptr<Device> MakeCpuDevice(uint64_t capacity_bytes) {
  return std::make_unique<CpuDevice>(capacity_bytes);
}

}  // namespace moe
