// FakeDevice: a Device with a virtual clock, a modelled host -> device link and fault injection,
// for deterministic tests of copy/compute overlap, stalls, eviction and error handling that
// never sleep (after LevelDB's Env / SpecialEnv). Nothing in it reads a wall clock.
//
// Memory is real host memory (64-byte aligned, zero-filled, budgeted like the CPU device), and
// every copy's bytes are written when it is issued, so data computed on the fake device is
// exactly what the CPU device gives. Only *when* a copy completes is virtual:
//
//   - Now() is the compute clock. ChargeCompute(s) advances it by s; WaitCopy advances it to the
//     copy's end when that is later, and adds the difference to copy_stall_seconds.
//   - The link runs one copy at a time, in issue order. A copy of B bytes issued at compute time
//     `now` starts at max(now, end of the previous copy) and ends latency + B / bandwidth later.
//     CopyDone(t) is true once its end <= Now(). Copies issued before compute overlap with it:
//     a copy that ended during charged compute costs no stall.
//   - The synchronous CopyToDevice is CopyToDeviceAsync + WaitCopy, so code written for the CPU
//     device runs unchanged and its copies cost stall time.
//   - A copy to device memory must lie inside one live buffer of this device (MOE_CHECK): an
//     out-of-bounds copy is a bug that the fake device catches.
//
// Identities (single-threaded use, up to floating-point rounding):
//   Now() == compute_seconds + copy_stall_seconds      (the clock starts at 0)
//   link_busy_seconds == sum over copies of (end - start)
//
// Fault injection is counted, never random, so it is deterministic: allocations and copies are
// numbered from 1 in the order they reach the device (the copy number is its ticket id). An
// injected allocation failure fails Allocate with ResourceExhausted ("injected allocation
// failure: allocation #N of B bytes for WHAT"), before the capacity check. An injected copy
// failure leaves the destination unwritten but still occupies the link for its modelled time; its
// WaitCopy returns Internal ("injected copy failure: copy #N of B bytes to offset O of a S-byte
// device buffer"). Nothing ever hangs.
//
// Cost: O(log copies) per copy operation; the copy log keeps one record per copy issued (tests
// read it), so memory grows with the number of copies.
//
// Thread-safety: every member function may be called from any thread; one mutex guards the
// clock, the link, the log and the faults (the bytes are copied outside it). Concurrent copies
// (CopyToSlot's chunks on pool threads) are each their own copy on the link, in the order they
// take the mutex, and each pays the per-copy latency, as one CUDA copy per chunk would. When such
// a burst is waited for, the clock ends at the last chunk's end whatever the thread interleaving,
// so totals (bytes, copies, link busy, Now, stall) are deterministic; per-copy start/end times
// depend on which thread issued first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "runtime/device.h"

namespace moe {

struct FakeDeviceOptions {
  uint64_t capacity_bytes = 0;          // 0: unlimited
  double link_bytes_per_second = 25e9;  // > 0 (about PCIe 4.0 x16)
  double link_latency_seconds = 10e-6;  // >= 0, paid by every copy
  bool reads_host_memory = true;        // as the CPU device, so the engine can use it as one
  uint64_t fail_nth_allocation = 0;     // 0: none; else as FailAllocations(n) at creation
  uint64_t fail_nth_copy = 0;           // 0: none; else as FailCopies(n) at creation
};

// One copy as the fake link ran it. Times are on the device timeline (seconds).
struct FakeCopyRecord {
  uint64_t id = 0;  // the ticket id and copy number (1 = first copy issued)
  uint64_t bytes = 0;
  double issue_seconds = 0;    // Now() when it was issued
  double start_seconds = 0;    // max(issue, previous copy's end)
  double end_seconds = 0;      // start + latency + bytes / bandwidth
  bool failed = false;         // injected failure: destination not written
  uint64_t buffer_offset = 0;  // destination offset in its device buffer
  uint64_t buffer_bytes = 0;   // that buffer's size; 0 when unknown (an empty copy outside any)
};

class FakeDevice final : public Device {
 public:
  // Options are checked with MOE_CHECK (bandwidth > 0 and finite, latency >= 0 and finite).
  explicit FakeDevice(const FakeDeviceOptions& options);
  ~FakeDevice() override = default;

  std::string_view name() const override { return "fake"; }
  bool reads_host_memory() const override { return options_.reads_host_memory; }

  // Advances the compute clock by `seconds` (>= 0 and finite, MOE_CHECK).
  void ChargeCompute(double seconds) override;
  // The virtual compute clock, starting at 0.
  double Now() const override;

  // --- fault injection: each call replaces the armed fault of its kind ---
  // Fails the `nth` Allocate counted from this call (1: the next one) and the `count - 1` after
  // it. nth >= 1 and count >= 1 (MOE_CHECK); count UINT64_MAX fails every one from then on.
  void FailAllocations(uint64_t nth, uint64_t count = 1);
  // Fails the `nth` copy issued counted from this call (1: the next one) and the `count - 1`
  // after it; same rules.
  void FailCopies(uint64_t nth, uint64_t count = 1);
  // Disarms every fault. Copies already issued keep their outcome.
  void ClearFaults();

  // --- inspection ---
  // The record of an issued copy (MOE_CHECK: id 1..copies issued).
  FakeCopyRecord copy_record(CopyTicket ticket) const;
  // Every copy issued so far, in issue order.
  std::vector<FakeCopyRecord> copy_log() const;
  // When the link finishes the last copy issued (0 before any copy).
  double link_free_seconds() const;
  uint64_t allocations() const;  // Allocate calls so far (failed ones included)
  uint64_t injected_allocation_failures() const;
  uint64_t injected_copy_failures() const;  // copies issued that were chosen to fail

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
  // A half-open window [first, last) of 1-based event numbers that fail; empty when first==last.
  struct FaultWindow {
    uint64_t first = 0;
    uint64_t last = 0;
    bool Contains(uint64_t n) const { return n >= first && n < last; }
  };
  static FaultWindow Window(uint64_t done, uint64_t nth, uint64_t count);
  const FakeCopyRecord& RecordLocked(CopyTicket ticket) const;

  const FakeDeviceOptions options_;
  mutable std::mutex mu_;
  double now_ = 0;
  double link_free_ = 0;
  double compute_seconds_ = 0;
  double stall_seconds_ = 0;
  double link_busy_seconds_ = 0;
  uint64_t stalled_waits_ = 0;
  std::vector<FakeCopyRecord> log_;   // index id - 1; end_seconds never decreases (FIFO link)
  std::vector<uint64_t> failed_ids_;  // ids of the copies that fail, increasing
  std::map<const std::byte*, uint64_t> buffers_;  // live allocations: start -> requested bytes
  uint64_t allocations_ = 0;
  uint64_t injected_allocation_failures_ = 0;
  FaultWindow allocation_faults_;
  FaultWindow copy_faults_;
};

// A fake device with `options` (see FakeDevice).
std::unique_ptr<FakeDevice> MakeFakeDevice(const FakeDeviceOptions& options);

}  // namespace moe
