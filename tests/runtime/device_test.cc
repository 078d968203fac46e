// The CPU device: budgeted allocations with clear errors, counters, and copies that are exact
// for every size and alignment (large copies take the streaming-store path).
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/device.h"

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
        if (dst_off > 0) ASSERT_EQ(buf->data()[dst_off - 1], std::byte{0xAB});
        ASSERT_EQ(buf->data()[dst_off + size], std::byte{0xAB});
      }
    }
  }
  EXPECT_EQ(device->counters().bytes_to_device, copied);
}

}  // namespace
}  // namespace moe
