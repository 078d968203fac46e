// The fake device: exact virtual times for copies on a FIFO link, overlap with charged compute,
// stall accounting, counters, and deterministic fault injection. Nothing here sleeps or reads a
// wall clock.
//
// Times use a link of 2^20 bytes/s and a latency of 2^-10 s, and sizes that are multiples of
// 1024 bytes, so every modelled time is a multiple of kMs = 2^-10 s and exactly representable:
// the expected values are exact, not approximate.
#include "runtime/fake_device.h"

#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

constexpr double kMs = 1.0 / 1024;  // "about a millisecond", exact in binary
constexpr uint64_t kKiB = 1024;     // one kMs of transfer on the test link

FakeDeviceOptions TestOptions() {
  FakeDeviceOptions o;
  o.link_bytes_per_second = 1 << 20;  // 1024 bytes per kMs
  o.link_latency_seconds = kMs;
  return o;
}

std::vector<std::byte> Pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed * 17 + 7) & 0xFF);
  return v;
}

bool Equal(const std::byte* a, const std::byte* b, size_t n) { return std::equal(a, a + n, b); }

TEST(FakeDevice, CopiesCompleteInIssueOrderAtExactVirtualTimes) {
  auto device = MakeFakeDevice(TestOptions());
  EXPECT_EQ(device->name(), "fake");
  EXPECT_TRUE(device->reads_host_memory());
  auto buf = device->Allocate(8 * kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(8 * kKiB, 1);

  // 1 KiB: latency 1 + transfer 1; 2 KiB queued behind it: 1 + 2; an empty copy: latency only.
  const CopyTicket t1 = device->CopyToDeviceAsync(buf->data(), host.data(), kKiB);
  const CopyTicket t2 = device->CopyToDeviceAsync(buf->data() + kKiB, host.data() + kKiB, 2 * kKiB);
  const CopyTicket t3 = device->CopyToDeviceAsync(buf->data() + 3 * kKiB, host.data(), 0);
  EXPECT_EQ(t1.id, 1u);
  EXPECT_EQ(t2.id, 2u);
  EXPECT_EQ(t3.id, 3u);

  const std::vector<FakeCopyRecord> log = device->copy_log();
  ASSERT_EQ(log.size(), 3u);
  const double want_start[] = {0, 2 * kMs, 5 * kMs};
  const double want_end[] = {2 * kMs, 5 * kMs, 6 * kMs};
  const uint64_t want_bytes[] = {kKiB, 2 * kKiB, 0};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(log[i].id, i + 1);
    EXPECT_EQ(log[i].bytes, want_bytes[i]);
    EXPECT_EQ(log[i].issue_seconds, 0.0);
    EXPECT_EQ(log[i].start_seconds, want_start[i]);
    EXPECT_EQ(log[i].end_seconds, want_end[i]);
    EXPECT_FALSE(log[i].failed);
    EXPECT_EQ(log[i].buffer_bytes, 8 * kKiB);
  }
  EXPECT_EQ(log[1].buffer_offset, kKiB);
  EXPECT_EQ(device->copy_record(t2).end_seconds, 5 * kMs);
  EXPECT_EQ(device->link_free_seconds(), 6 * kMs);
  // Nothing has completed at time 0, but the bytes are already real (copied at issue).
  EXPECT_FALSE(device->CopyDone(t1));
  EXPECT_EQ(device->Now(), 0.0);
  EXPECT_TRUE(Equal(buf->data(), host.data(), 3 * kKiB));
}

TEST(FakeDevice, CopyDoneFollowsChargedCompute) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(4 * kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(4 * kKiB, 2);
  const CopyTicket t1 = device->CopyToDeviceAsync(buf->data(), host.data(), kKiB);      // ends 2
  const CopyTicket t2 = device->CopyToDeviceAsync(buf->data(), host.data(), 2 * kKiB);  // ends 5
  EXPECT_TRUE(device->CopyDone(CopyTicket{}));
  EXPECT_EQ(device->counters().copies_in_flight, 2u);

  device->ChargeCompute(kMs);
  EXPECT_FALSE(device->CopyDone(t1));
  device->ChargeCompute(kMs);  // Now == end of t1: complete exactly at its end
  EXPECT_EQ(device->Now(), 2 * kMs);
  EXPECT_TRUE(device->CopyDone(t1));
  EXPECT_FALSE(device->CopyDone(t2));
  EXPECT_EQ(device->counters().copies_in_flight, 1u);
  device->ChargeCompute(3 * kMs);
  EXPECT_TRUE(device->CopyDone(t2));
  EXPECT_EQ(device->counters().copies_in_flight, 0u);
  // Polling never moves the clock or stalls.
  EXPECT_EQ(device->Now(), 5 * kMs);
  EXPECT_EQ(device->counters().copy_stall_seconds, 0.0);
}

TEST(FakeDevice, WaitCopyStallsComputeUntilTheCopyEnds) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(6 * kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(6 * kKiB, 3);
  std::vector<CopyTicket> t;
  for (uint64_t i = 0; i < 3; ++i) {  // 1, 2 and 3 KiB: end at 2, 5 and 9 kMs
    t.push_back(device->CopyToDeviceAsync(buf->data(), host.data(), (i + 1) * kKiB));
  }
  device->ChargeCompute(kMs);
  const double end3 = device->copy_record(t[2]).end_seconds;
  EXPECT_EQ(end3, 9 * kMs);
  ASSERT_TRUE(device->WaitCopy(t[2]).ok());
  DeviceCounters c = device->counters();
  EXPECT_EQ(c.copy_stall_seconds, end3 - kMs);
  EXPECT_EQ(c.stalled_waits, 1u);
  EXPECT_EQ(device->Now(), end3);
  EXPECT_EQ(device->Now(), c.compute_seconds + c.copy_stall_seconds);
  // FIFO: the earlier copies completed before the third, so waiting for them is free.
  EXPECT_TRUE(device->CopyDone(t[0]));
  ASSERT_TRUE(device->WaitCopy(t[0]).ok());
  ASSERT_TRUE(device->WaitCopy(t[1]).ok());
  ASSERT_TRUE(device->WaitCopy(t[2]).ok());  // again: same status, no cost
  c = device->counters();
  EXPECT_EQ(c.copy_stall_seconds, end3 - kMs);
  EXPECT_EQ(c.stalled_waits, 1u);
  EXPECT_EQ(c.copies_in_flight, 0u);
}

TEST(FakeDevice, CopiesIssuedBeforeComputeOverlapWithIt) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(4 * kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(4 * kKiB, 4);
  // Prefetch 5 kMs of link work, then compute for 10 kMs: the copies finish under the compute.
  const CopyTicket a = device->CopyToDeviceAsync(buf->data(), host.data(), kKiB);
  const CopyTicket b = device->CopyToDeviceAsync(buf->data() + kKiB, host.data(), 2 * kKiB);
  device->ChargeCompute(10 * kMs);
  ASSERT_TRUE(device->WaitCopy(a).ok());
  ASSERT_TRUE(device->WaitCopy(b).ok());
  EXPECT_EQ(device->Now(), 10 * kMs);
  EXPECT_EQ(device->counters().copy_stall_seconds, 0.0);

  // The link went idle at 5 kMs: a copy issued now starts at once, not behind idle time.
  const CopyTicket c = device->CopyToDeviceAsync(buf->data(), host.data(), kKiB);
  EXPECT_EQ(device->copy_record(c).issue_seconds, 10 * kMs);
  EXPECT_EQ(device->copy_record(c).start_seconds, 10 * kMs);
  EXPECT_EQ(device->copy_record(c).end_seconds, 12 * kMs);
  // Issued with no compute to hide it: the whole copy is stall.
  ASSERT_TRUE(device->WaitCopy(c).ok());
  const DeviceCounters counters = device->counters();
  EXPECT_EQ(counters.copy_stall_seconds, 2 * kMs);
  EXPECT_EQ(counters.link_busy_seconds, 7 * kMs);
  EXPECT_EQ(counters.compute_seconds, 10 * kMs);
  EXPECT_EQ(device->Now(), 12 * kMs);
}

TEST(FakeDevice, SynchronousCopyIsAsyncCopyPlusWait) {
  auto sync = MakeFakeDevice(TestOptions());
  auto async = MakeFakeDevice(TestOptions());
  auto sbuf = sync->Allocate(8 * kKiB, "slots");
  auto abuf = async->Allocate(8 * kKiB, "slots");
  ASSERT_TRUE(sbuf.ok() && abuf.ok());
  const auto host = Pattern(8 * kKiB, 5);
  const uint64_t sizes[] = {kKiB, 3 * kKiB, 0, 4 * kKiB};
  uint64_t offset = 0;
  for (uint64_t size : sizes) {
    sync->ChargeCompute(kMs);
    async->ChargeCompute(kMs);
    sync->CopyToDevice(sbuf->data() + offset, host.data() + offset, size);
    ASSERT_TRUE(
        async->WaitCopy(async->CopyToDeviceAsync(abuf->data() + offset, host.data() + offset, size))
            .ok());
    offset += size;
  }
  EXPECT_TRUE(Equal(sbuf->data(), host.data(), offset));
  EXPECT_TRUE(Equal(abuf->data(), host.data(), offset));
  const DeviceCounters s = sync->counters(), a = async->counters();
  EXPECT_EQ(s.bytes_to_device, a.bytes_to_device);
  EXPECT_EQ(s.bytes_to_device, 8 * kKiB);
  EXPECT_EQ(s.copies_to_device, 4u);
  EXPECT_EQ(s.copy_stall_seconds, a.copy_stall_seconds);
  EXPECT_EQ(s.link_busy_seconds, a.link_busy_seconds);
  EXPECT_EQ(s.stalled_waits, 4u);
  EXPECT_EQ(sync->Now(), async->Now());
  // 4 computes of 1 + (2 + 4 + 1 + 5) of copies, each fully exposed.
  EXPECT_EQ(sync->Now(), 16 * kMs);
  EXPECT_EQ(s.copy_stall_seconds, 12 * kMs);
  const auto slog = sync->copy_log(), alog = async->copy_log();
  ASSERT_EQ(slog.size(), alog.size());
  for (size_t i = 0; i < slog.size(); ++i) {
    EXPECT_EQ(slog[i].start_seconds, alog[i].start_seconds) << i;
    EXPECT_EQ(slog[i].end_seconds, alog[i].end_seconds) << i;
  }
}

TEST(FakeDevice, CountersAccountBytesCopiesStallAndLinkBusy) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(16 * kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(16 * kKiB, 6);
  DeviceCounters c = device->counters();
  EXPECT_EQ(c.bytes_to_device, 0u);
  EXPECT_EQ(c.link_busy_seconds, 0.0);
  std::vector<CopyTicket> tickets;
  for (uint64_t i = 0; i < 4; ++i) {
    tickets.push_back(device->CopyToDeviceAsync(buf->data() + 4 * i * kKiB, host.data(), 4 * kKiB));
  }
  c = device->counters();
  EXPECT_EQ(c.bytes_to_device, 16 * kKiB);  // counted at issue
  EXPECT_EQ(c.copies_to_device, 4u);
  EXPECT_EQ(c.copies_in_flight, 4u);
  EXPECT_EQ(c.link_busy_seconds, 20 * kMs);  // 4 x (1 latency + 4 transfer)
  device->ChargeCompute(12 * kMs);
  for (CopyTicket t : tickets) ASSERT_TRUE(device->WaitCopy(t).ok());
  c = device->counters();
  EXPECT_EQ(c.copies_in_flight, 0u);
  EXPECT_EQ(c.compute_seconds, 12 * kMs);
  EXPECT_EQ(c.copy_stall_seconds, 8 * kMs);
  EXPECT_EQ(c.stalled_waits, 2u);  // copies 3 (ends 15) and 4 (ends 20); 1 and 2 ended in compute
  EXPECT_EQ(c.failed_copies, 0u);
  EXPECT_EQ(device->Now(), c.compute_seconds + c.copy_stall_seconds);
}

TEST(FakeDevice, CapacityErrorsNameTheSizeUsedAndCapacity) {
  FakeDeviceOptions o = TestOptions();
  o.capacity_bytes = 1000;
  auto device = MakeFakeDevice(o);
  auto a = device->Allocate(600, "slots");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 64, 0u);
  for (uint64_t i = 0; i < a->size(); ++i) ASSERT_EQ(a->data()[i], std::byte{0});
  auto b = device->Allocate(500, "kv cache");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(b.status().message());
  EXPECT_THAT(message, HasSubstr("fake device"));
  EXPECT_THAT(message, HasSubstr("allocating 500 for kv cache"));
  EXPECT_THAT(message, HasSubstr("600 of 1000"));
  EXPECT_EQ(device->counters().used_bytes, 600u);
  a->Reset();
  EXPECT_EQ(device->counters().used_bytes, 0u);
  EXPECT_EQ(device->counters().peak_bytes, 600u);
  device->SetCapacity(0);
  EXPECT_TRUE(device->Allocate(5000, "kv cache").ok());
}

TEST(FakeDevice, NthAllocationFailsWithAClearMessageAndTheNextSucceeds) {
  auto device = MakeFakeDevice(TestOptions());
  ASSERT_TRUE(device->Allocate(64, "weights").ok());
  device->FailAllocations(2);  // the second from now: allocation #3 overall
  auto first = device->Allocate(64, "activations");
  ASSERT_TRUE(first.ok());
  auto failed = device->Allocate(4096, "expert slots");
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(failed.status().message()),
              HasSubstr("injected allocation failure: allocation #3 of 4096 bytes for expert "
                        "slots"));
  EXPECT_EQ(device->counters().used_bytes, 64u);  // the failure charged nothing
  auto next = device->Allocate(4096, "expert slots");
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(device->allocations(), 4u);
  EXPECT_EQ(device->injected_allocation_failures(), 1u);

  // Armed at creation through the options; a window of two; cleared.
  FakeDeviceOptions o = TestOptions();
  o.fail_nth_allocation = 1;
  auto fresh = MakeFakeDevice(o);
  EXPECT_FALSE(fresh->Allocate(8, "x").ok());
  EXPECT_TRUE(fresh->Allocate(8, "x").ok());
  fresh->FailAllocations(1, 2);
  EXPECT_FALSE(fresh->Allocate(8, "x").ok());
  EXPECT_FALSE(fresh->Allocate(8, "x").ok());
  EXPECT_TRUE(fresh->Allocate(8, "x").ok());
  fresh->FailAllocations(1, std::numeric_limits<uint64_t>::max());
  EXPECT_FALSE(fresh->Allocate(8, "x").ok());
  EXPECT_FALSE(fresh->Allocate(8, "x").ok());
  fresh->ClearFaults();
  EXPECT_TRUE(fresh->Allocate(8, "x").ok());
  EXPECT_EQ(fresh->injected_allocation_failures(), 5u);
}

TEST(FakeDevice, NthCopyFailsNamingTheCopyAndLaterCopiesSucceed) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(3 * kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  std::fill(buf->data(), buf->data() + buf->size(), std::byte{0xAB});
  const auto host = Pattern(3 * kKiB, 7);
  device->FailCopies(2);
  const CopyTicket t1 = device->CopyToDeviceAsync(buf->data(), host.data(), kKiB);
  const CopyTicket t2 = device->CopyToDeviceAsync(buf->data() + kKiB, host.data() + kKiB, kKiB);
  const CopyTicket t3 =
      device->CopyToDeviceAsync(buf->data() + 2 * kKiB, host.data() + 2 * kKiB, kKiB);
  EXPECT_EQ(device->injected_copy_failures(), 1u);
  EXPECT_TRUE(device->copy_record(t2).failed);
  // A failed copy still takes its time on the link; it is "done" (with an error) at its end.
  EXPECT_EQ(device->copy_record(t2).end_seconds, 4 * kMs);
  EXPECT_EQ(device->copy_record(t3).end_seconds, 6 * kMs);
  EXPECT_EQ(device->counters().failed_copies, 0u);  // not complete yet

  EXPECT_TRUE(device->WaitCopy(t1).ok());
  const absl::Status status = device->WaitCopy(t2);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("injected copy failure: copy #2 of 1024 bytes to offset 1024 of a "
                        "3072-byte device buffer"));
  EXPECT_EQ(device->Now(), 4 * kMs);
  EXPECT_EQ(device->counters().failed_copies, 1u);
  EXPECT_EQ(device->WaitCopy(t2), status);  // waiting again gives the same error
  EXPECT_TRUE(device->WaitCopy(t3).ok());
  EXPECT_EQ(device->counters().failed_copies, 1u);

  EXPECT_TRUE(Equal(buf->data(), host.data(), kKiB));
  for (uint64_t i = kKiB; i < 2 * kKiB; ++i) ASSERT_EQ(buf->data()[i], std::byte{0xAB}) << i;
  EXPECT_TRUE(Equal(buf->data() + 2 * kKiB, host.data() + 2 * kKiB, kKiB));
  // Failed copies are still counted as issued.
  EXPECT_EQ(device->counters().bytes_to_device, 3 * kKiB);
  EXPECT_EQ(device->counters().copies_to_device, 3u);
}

TEST(FakeDevice, CopyFaultsCountFromTheCallAndClearFaultsDisarms) {
  FakeDeviceOptions o = TestOptions();
  o.fail_nth_copy = 1;
  auto device = MakeFakeDevice(o);
  auto buf = device->Allocate(kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(kKiB, 8);
  auto copy = [&] {
    return device->WaitCopy(device->CopyToDeviceAsync(buf->data(), host.data(), 8));
  };
  EXPECT_FALSE(copy().ok());  // #1, armed by the options
  EXPECT_TRUE(copy().ok());   // #2
  device->FailCopies(2, 2);   // #4 and #5
  EXPECT_TRUE(copy().ok());
  const absl::Status s4 = copy();
  EXPECT_THAT(std::string(s4.message()), HasSubstr("copy #4 of 8 bytes"));
  EXPECT_FALSE(copy().ok());
  EXPECT_TRUE(copy().ok());
  device->FailCopies(1, std::numeric_limits<uint64_t>::max());  // a dead link
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(copy().ok()) << i;
  device->ClearFaults();
  EXPECT_TRUE(copy().ok());
  EXPECT_EQ(device->injected_copy_failures(), 8u);
  EXPECT_EQ(device->counters().failed_copies, 8u);
}

TEST(FakeDevice, FailedSynchronousCopyLeavesTheDestinationAndIsCounted) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(kKiB, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(kKiB, 9);
  device->FailCopies(1);
  device->CopyToDevice(buf->data(), host.data(), kKiB);  // logs the error; cannot return it
  for (uint64_t i = 0; i < kKiB; ++i) ASSERT_EQ(buf->data()[i], std::byte{0}) << i;
  EXPECT_EQ(device->counters().failed_copies, 1u);
  EXPECT_EQ(device->Now(), 2 * kMs);  // it still cost its link time
  device->CopyToDevice(buf->data(), host.data(), kKiB);
  EXPECT_TRUE(Equal(buf->data(), host.data(), kKiB));
}

TEST(FakeDevice, ConcurrentCopiesFromSeveralThreadsAccountEveryByte) {
  // CopyToSlot's pattern: several pool threads copy disjoint chunks of one destination with the
  // synchronous CopyToDevice. Each chunk is its own copy; the totals do not depend on the
  // interleaving.
  auto device = MakeFakeDevice(TestOptions());
  constexpr int kThreads = 4;
  constexpr int kChunksPerThread = 25;
  constexpr uint64_t kChunk = 2 * kKiB;
  constexpr uint64_t kTotal = kThreads * kChunksPerThread * kChunk;
  auto buf = device->Allocate(kTotal, "slots");
  ASSERT_TRUE(buf.ok());
  const auto host = Pattern(kTotal, 10);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int c = 0; c < kChunksPerThread; ++c) {
        const uint64_t offset = (uint64_t(c) * kThreads + t) * kChunk;
        device->CopyToDevice(buf->data() + offset, host.data() + offset, kChunk);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_TRUE(Equal(buf->data(), host.data(), kTotal));
  const DeviceCounters c = device->counters();
  constexpr uint64_t kCopies = kThreads * kChunksPerThread;
  EXPECT_EQ(c.bytes_to_device, kTotal);
  EXPECT_EQ(c.copies_to_device, kCopies);
  EXPECT_EQ(c.copies_in_flight, 0u);
  // Every chunk pays latency (1) + transfer (2); the link never idles, the clock ends with it.
  EXPECT_EQ(c.link_busy_seconds, 3 * kMs * kCopies);
  EXPECT_EQ(device->Now(), 3 * kMs * kCopies);
  EXPECT_EQ(c.copy_stall_seconds, device->Now());
  EXPECT_EQ(device->link_free_seconds(), device->Now());
  const auto log = device->copy_log();
  ASSERT_EQ(log.size(), kCopies);
  uint64_t bytes = 0;
  for (size_t i = 0; i < log.size(); ++i) {
    EXPECT_EQ(log[i].id, i + 1);
    EXPECT_EQ(log[i].start_seconds, i == 0 ? 0.0 : log[i - 1].end_seconds) << i;
    EXPECT_EQ(log[i].end_seconds, log[i].start_seconds + 3 * kMs) << i;
    bytes += log[i].bytes;
  }
  EXPECT_EQ(bytes, kTotal);
}

TEST(FakeDevice, TicketZeroIsCompleteAndEmptyCopiesTakeTheLatency) {
  auto device = MakeFakeDevice(TestOptions());
  EXPECT_TRUE(device->CopyDone(CopyTicket{}));
  EXPECT_TRUE(device->WaitCopy(CopyTicket{}).ok());
  // An empty copy needs no destination buffer, and still pays the per-copy latency.
  std::byte host{};
  const CopyTicket t = device->CopyToDeviceAsync(nullptr, &host, 0);
  EXPECT_NE(t.id, 0u);
  EXPECT_EQ(device->copy_record(t).end_seconds, kMs);
  EXPECT_EQ(device->copy_record(t).buffer_bytes, 0u);
  EXPECT_TRUE(device->WaitCopy(t).ok());
  EXPECT_EQ(device->Now(), kMs);
}

TEST(FakeDeviceDeathTest, CopiesOutsideADeviceBufferAndBadArgumentsAreBugs) {
  auto device = MakeFakeDevice(TestOptions());
  auto buf = device->Allocate(100, "slots");
  ASSERT_TRUE(buf.ok());
  std::vector<std::byte> host(200);
  EXPECT_DEATH(device->CopyToDevice(buf->data() + 50, host.data(), 51), "not inside one live");
  EXPECT_DEATH(device->CopyToDevice(host.data(), host.data() + 100, 10), "not inside one live");
  EXPECT_DEATH((void)device->WaitCopy(CopyTicket{7}), "unknown copy ticket 7");
  EXPECT_DEATH(device->ChargeCompute(-1), "compute must take >= 0 seconds");
  FakeDeviceOptions bad = TestOptions();
  bad.link_bytes_per_second = 0;
  EXPECT_DEATH(MakeFakeDevice(bad), "link_bytes_per_second must be > 0");
}

}  // namespace
}  // namespace moe
