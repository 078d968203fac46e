// The CPU device: budgeted allocations with clear errors, counters, and copies that are exact
// for every size and alignment (large copies take the streaming-store path); its asynchronous
// copies are synchronous. The contract every device keeps (data, counters, capacity errors) is
// checked on the CPU and the fake device alike.
#include <functional>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/device.h"
#include "runtime/fake_device.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(CpuDevice, CapacityIsEnforcedAndCounted) {
  auto device = MakeCpuDevice(1000);
  auto a = device->Allocate(600, "slots");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 64, 0u);
  auto b = device->Allocate(500, "kv cache");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("kv cache"));
  EXPECT_THAT(std::string(b.status().message()), HasSubstr("600 of 1000"));
  {
    auto c = device->Allocate(400, "activations");
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(device->counters().used_bytes, 1000u);
  }
  EXPECT_EQ(device->counters().used_bytes, 600u);
  EXPECT_EQ(device->counters().peak_bytes, 1000u);
  a->Reset();
  EXPECT_EQ(device->counters().used_bytes, 0u);
}

TEST(CpuDevice, CopiesAreExactForEverySizeAndAlignment) {
  auto device = MakeCpuDevice(0);
  const size_t big = (1 << 20) + 77;
  std::vector<std::byte> host(big + 64);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>((i * 131 + 7) & 0xFF);
  auto buf = device->Allocate(big + 64, "test");
  ASSERT_TRUE(buf.ok());
  uint64_t copied = 0;
  for (size_t size : {size_t{0}, size_t{1}, size_t{15}, size_t{64}, size_t{1000},
                      size_t{256 * 1024}, size_t{256 * 1024 + 3}, big}) {
    for (size_t dst_off : {0, 1, 8, 17}) {
      for (size_t src_off : {0, 3}) {
        std::fill(buf->data(), buf->data() + buf->size(), std::byte{0xAB});
        device->CopyToDevice(buf->data() + dst_off, host.data() + src_off, size);
        copied += size;
        for (size_t i = 0; i < size; ++i) {
          ASSERT_EQ(buf->data()[dst_off + i], host[src_off + i])
              << "size " << size << " dst+" << dst_off << " src+" << src_off << " at " << i;
        }
        // Nothing outside the destination range is touched.
        if (dst_off > 0) {
          ASSERT_EQ(buf->data()[dst_off - 1], std::byte{0xAB});
        }
        ASSERT_EQ(buf->data()[dst_off + size], std::byte{0xAB});
      }
    }
  }
  EXPECT_EQ(device->counters().bytes_to_device, copied);
}

TEST(CpuDevice, AsyncCopiesAreSynchronous) {
  auto device = MakeCpuDevice(0);
  auto buf = device->Allocate(4096, "slots");
  ASSERT_TRUE(buf.ok());
  std::vector<std::byte> host(4096);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>(i * 7 + 1);
  const CopyTicket ticket = device->CopyToDeviceAsync(buf->data(), host.data(), 3000);
  // Complete at return: the bytes are there and the ticket is the "no copy" ticket.
  EXPECT_EQ(ticket.id, 0u);
  EXPECT_TRUE(device->CopyDone(ticket));
  EXPECT_TRUE(std::equal(host.begin(), host.begin() + 3000, buf->data()));
  EXPECT_EQ(buf->data()[3000], std::byte{0});
  EXPECT_TRUE(device->WaitCopy(ticket).ok());
  device->CopyToDevice(buf->data() + 3000, host.data() + 3000, 1096);
  EXPECT_TRUE(std::equal(host.begin(), host.end(), buf->data()));
  const DeviceCounters c = device->counters();
  EXPECT_EQ(c.bytes_to_device, 4096u);
  EXPECT_EQ(c.copies_to_device, 2u);
  EXPECT_EQ(c.copies_in_flight, 0u);
  EXPECT_EQ(c.failed_copies, 0u);
  EXPECT_EQ(c.copy_stall_seconds, 0.0);
  EXPECT_EQ(c.stalled_waits, 0u);
}

TEST(CpuDevice, NowIsASteadyClockAndChargeComputeIsIgnored) {
  auto device = MakeCpuDevice(0);
  const double t0 = device->Now();
  EXPECT_GE(t0, 0.0);
  device->ChargeCompute(1000.0);  // the CPU device measures; a charge does not move its clock
  const double t1 = device->Now();
  EXPECT_GE(t1, t0);
  EXPECT_LT(t1, t0 + 1000.0);
  EXPECT_EQ(device->counters().compute_seconds, 0.0);
}

// --- the contract every device keeps ---

struct DeviceCase {
  std::string name;
  std::function<std::unique_ptr<Device>(uint64_t capacity)> make;
};

void PrintTo(const DeviceCase& c, std::ostream* os) { *os << c.name; }

class DeviceContractTest : public ::testing::TestWithParam<DeviceCase> {};

TEST_P(DeviceContractTest, CapacityErrorsNameWhatSizeUsedAndCapacity) {
  auto device = GetParam().make(1000);
  auto a = device->Allocate(600, "slots");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % 64, 0u);
  auto b = device->Allocate(500, "kv cache");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(b.status().message());
  EXPECT_THAT(message, HasSubstr(std::string(device->name()) + " device"));
  EXPECT_THAT(message, HasSubstr("allocating 500 for kv cache"));
  EXPECT_THAT(message, HasSubstr("600 of 1000"));
  EXPECT_EQ(device->counters().used_bytes, 600u);
}

TEST_P(DeviceContractTest, AsyncCopiesWrittenAndWaitedForAreExactAndCounted) {
  auto device = GetParam().make(0);
  const size_t big = (1 << 20) + 77;
  std::vector<std::byte> host(big);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>((i * 131 + 7) & 0xFF);
  auto buf = device->Allocate(big + 64, "slots");
  ASSERT_TRUE(buf.ok());
  std::vector<CopyTicket> tickets;
  uint64_t offset = 0, copied = 0;
  for (size_t size : {size_t{1}, size_t{1000}, size_t{300 * 1024}, size_t{5}}) {
    tickets.push_back(device->CopyToDeviceAsync(buf->data() + offset, host.data() + offset, size));
    offset += size;
    copied += size;
  }
  EXPECT_EQ(device->counters().bytes_to_device, copied);
  EXPECT_EQ(device->counters().copies_to_device, tickets.size());
  device->ChargeCompute(1e-6);
  // FIFO: once the last is waited for, every earlier copy is done.
  ASSERT_TRUE(device->WaitCopy(tickets.back()).ok());
  for (CopyTicket t : tickets) EXPECT_TRUE(device->CopyDone(t));
  for (CopyTicket t : tickets) EXPECT_TRUE(device->WaitCopy(t).ok());
  EXPECT_EQ(device->counters().copies_in_flight, 0u);
  EXPECT_TRUE(std::equal(host.begin(), host.begin() + offset, buf->data()));
  EXPECT_EQ(buf->data()[offset], std::byte{0});
}

INSTANTIATE_TEST_SUITE_P(
    Devices, DeviceContractTest,
    ::testing::Values(DeviceCase{"cpu", [](uint64_t capacity) { return MakeCpuDevice(capacity); }},
                      DeviceCase{"fake",
                                 [](uint64_t capacity) -> std::unique_ptr<Device> {
                                   FakeDeviceOptions o;
                                   o.capacity_bytes = capacity;
                                   return MakeFakeDevice(o);
                                 }}),
    [](const ::testing::TestParamInfo<DeviceCase>& info) { return info.param.name; });

}  // namespace
}  // namespace moe
