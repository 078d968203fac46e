#include "runtime/fake_device.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "runtime/status.h"

namespace moe {
namespace {

constexpr uint64_t kAlignment = 64;

}  // namespace

FakeDevice::FakeDevice(const FakeDeviceOptions& options)
    : Device(options.capacity_bytes), options_(options) {
  MOE_CHECK_MSG(std::isfinite(options.link_bytes_per_second) && options.link_bytes_per_second > 0,
                "fake device: link_bytes_per_second must be > 0, got {}",
                options.link_bytes_per_second);
  MOE_CHECK_MSG(std::isfinite(options.link_latency_seconds) && options.link_latency_seconds >= 0,
                "fake device: link_latency_seconds must be >= 0, got {}",
                options.link_latency_seconds);
  if (options.fail_nth_allocation != 0) FailAllocations(options.fail_nth_allocation);
  if (options.fail_nth_copy != 0) FailCopies(options.fail_nth_copy);
}

void FakeDevice::ChargeCompute(double seconds) {
  MOE_CHECK_MSG(std::isfinite(seconds) && seconds >= 0,
                "fake device: compute must take >= 0 seconds, got {}", seconds);
  std::lock_guard lock(mu_);
  now_ += seconds;
  compute_seconds_ += seconds;
}

double FakeDevice::Now() const {
  std::lock_guard lock(mu_);
  return now_;
}

FakeDevice::FaultWindow FakeDevice::Window(uint64_t done, uint64_t nth, uint64_t count) {
  MOE_CHECK_MSG(nth >= 1 && count >= 1, "fake device: fault needs nth >= 1 and count >= 1");
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  FaultWindow w;
  w.first = nth > kMax - done ? kMax : done + nth;
  // count UINT64_MAX ("every one from then on") saturates instead of wrapping.
  w.last = count > kMax - w.first ? kMax : w.first + count;
  return w;
}

void FakeDevice::FailAllocations(uint64_t nth, uint64_t count) {
  std::lock_guard lock(mu_);
  allocation_faults_ = Window(allocations_, nth, count);
}

void FakeDevice::FailCopies(uint64_t nth, uint64_t count) {
  std::lock_guard lock(mu_);
  copy_faults_ = Window(log_.size(), nth, count);
}

void FakeDevice::ClearFaults() {
  std::lock_guard lock(mu_);
  allocation_faults_ = {};
  copy_faults_ = {};
}

const FakeCopyRecord& FakeDevice::RecordLocked(CopyTicket ticket) const {
  MOE_CHECK_MSG(ticket.id >= 1 && ticket.id <= log_.size(),
                "fake device: unknown copy ticket {} ({} copies issued)", ticket.id, log_.size());
  return log_[ticket.id - 1];
}

FakeCopyRecord FakeDevice::copy_record(CopyTicket ticket) const {
  std::lock_guard lock(mu_);
  return RecordLocked(ticket);
}

std::vector<FakeCopyRecord> FakeDevice::copy_log() const {
  std::lock_guard lock(mu_);
  return log_;
}

double FakeDevice::link_free_seconds() const {
  std::lock_guard lock(mu_);
  return link_free_;
}

uint64_t FakeDevice::allocations() const {
  std::lock_guard lock(mu_);
  return allocations_;
}

uint64_t FakeDevice::injected_allocation_failures() const {
  std::lock_guard lock(mu_);
  return injected_allocation_failures_;
}

uint64_t FakeDevice::injected_copy_failures() const {
  std::lock_guard lock(mu_);
  return failed_ids_.size();
}

std::byte* FakeDevice::RawAllocate(uint64_t bytes) {
  // Real, zero-filled memory, like the CPU device, so results on the fake device are real.
  const uint64_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (p == nullptr) return nullptr;
  std::memset(p, 0, rounded == 0 ? kAlignment : rounded);
  auto* ptr = static_cast<std::byte*>(p);
  std::lock_guard lock(mu_);
  // The requested size, not the rounded one: a copy past the end of what was asked for is a bug.
  buffers_[ptr] = bytes;
  return ptr;
}

void FakeDevice::RawFree(std::byte* ptr) {
  {
    std::lock_guard lock(mu_);
    buffers_.erase(ptr);
  }
  std::free(ptr);
}

void FakeDevice::RawCopyToDevice(std::byte* dst, const std::byte* src, uint64_t bytes) {
  // Only StartCopy moves bytes (the base class calls RawCopyToDevice only from the default
  // StartCopy, which this device overrides).
  if (bytes != 0) std::memcpy(dst, src, bytes);
}

absl::Status FakeDevice::CheckAllocate(uint64_t bytes, std::string_view what) {
  std::lock_guard lock(mu_);
  const uint64_t n = ++allocations_;
  if (!allocation_faults_.Contains(n)) return absl::OkStatus();
  ++injected_allocation_failures_;
  return ResourceExhausted(
      "fake device: injected allocation failure: allocation #{} of {} bytes "
      "for {}",
      n, bytes, what);
}

CopyTicket FakeDevice::StartCopy(std::byte* dst, const std::byte* src, uint64_t bytes) {
  FakeCopyRecord r;
  {
    std::lock_guard lock(mu_);
    // The live buffer holding dst: the last one starting at or before it.
    auto it = buffers_.upper_bound(dst);
    if (it != buffers_.begin()) {
      --it;
      const auto offset = static_cast<uint64_t>(dst - it->first);
      if (offset <= it->second && bytes <= it->second - offset) {
        r.buffer_offset = offset;
        r.buffer_bytes = it->second;
      }
    }
    MOE_CHECK_MSG(bytes == 0 || r.buffer_bytes != 0,
                  "fake device: copy of {} bytes to {} is not inside one live device buffer", bytes,
                  static_cast<const void*>(dst));
    r.id = log_.size() + 1;
    r.bytes = bytes;
    r.issue_seconds = now_;
    r.start_seconds = std::max(now_, link_free_);
    const double duration =
        options_.link_latency_seconds + static_cast<double>(bytes) / options_.link_bytes_per_second;
    r.end_seconds = r.start_seconds + duration;
    r.failed = copy_faults_.Contains(r.id);
    link_free_ = r.end_seconds;
    link_busy_seconds_ += duration;
    if (r.failed) failed_ids_.push_back(r.id);
    log_.push_back(r);
  }
  // The bytes move at issue (outside the lock, so concurrent chunks copy in parallel): only the
  // completion time is virtual. A failed copy leaves the destination as it was.
  if (!r.failed && bytes != 0) std::memcpy(dst, src, bytes);
  return CopyTicket{r.id};
}

bool FakeDevice::IsCopyDone(CopyTicket ticket) const {
  std::lock_guard lock(mu_);
  return RecordLocked(ticket).end_seconds <= now_;
}

absl::Status FakeDevice::FinishCopy(CopyTicket ticket) {
  std::lock_guard lock(mu_);
  const FakeCopyRecord& r = RecordLocked(ticket);
  if (r.end_seconds > now_) {
    stall_seconds_ += r.end_seconds - now_;
    ++stalled_waits_;
    now_ = r.end_seconds;
  }
  if (!r.failed) return absl::OkStatus();
  return Internal(
      "fake device: injected copy failure: copy #{} of {} bytes to offset {} of a {}-"
      "byte device buffer",
      r.id, r.bytes, r.buffer_offset, r.buffer_bytes);
}

void FakeDevice::FillCopyCounters(DeviceCounters& counters) const {
  std::lock_guard lock(mu_);
  // End times never decrease along the log (one FIFO link), so the completed copies are a prefix.
  const auto done =
      std::upper_bound(log_.begin(), log_.end(), now_,
                       [](double t, const FakeCopyRecord& r) { return t < r.end_seconds; });
  const auto completed = static_cast<uint64_t>(done - log_.begin());
  counters.copies_in_flight = log_.size() - completed;
  counters.failed_copies = static_cast<uint64_t>(
      std::upper_bound(failed_ids_.begin(), failed_ids_.end(), completed) - failed_ids_.begin());
  counters.compute_seconds = compute_seconds_;
  counters.copy_stall_seconds = stall_seconds_;
  counters.link_busy_seconds = link_busy_seconds_;
  counters.stalled_waits = stalled_waits_;
}

std::unique_ptr<FakeDevice> MakeFakeDevice(const FakeDeviceOptions& options) {
  return std::make_unique<FakeDevice>(options);
}

}  // namespace moe
