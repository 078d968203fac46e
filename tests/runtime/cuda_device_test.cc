// CudaDevice against the Device contract, on a real GPU (real streams, events and copies). On a
// machine without a GPU, Create must fail with a readable FailedPrecondition and the GPU tests
// skip.
#include "runtime/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe::cuda {
namespace {

class CudaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto device = CudaDevice::Create({});
    if (!device.ok()) {
      EXPECT_EQ(device.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(std::string(device.status().message()).find("CUDA"), std::string::npos);
      GTEST_SKIP() << "no GPU here: " << device.status().message();
    }
    device_ = std::move(*device);
  }
  std::vector<std::byte> ReadBack(const DeviceBuffer& b) {
    std::vector<std::byte> out(b.size());
    EXPECT_EQ(cudaMemcpy(out.data(), b.data(), b.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  std::unique_ptr<CudaDevice> device_;
};

std::vector<std::byte> Pattern(uint64_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (uint64_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed) & 0xff);
  return v;
}

TEST_F(CudaDeviceTest, AllocationsAreZeroFilledAndCounted) {
  auto b = device_->Allocate(1 << 20, "test buffer");
  ASSERT_TRUE(b.ok()) << b.status();
  const auto bytes = ReadBack(*b);
  EXPECT_TRUE(
      std::all_of(bytes.begin(), bytes.end(), [](std::byte x) { return x == std::byte{0}; }));
  EXPECT_EQ(device_->counters().used_bytes, 1u << 20);
  b->Reset();
  EXPECT_EQ(device_->counters().used_bytes, 0u);
  EXPECT_EQ(device_->counters().peak_bytes, 1u << 20);
}

TEST_F(CudaDeviceTest, TooLargeAllocationIsResourceExhaustedNamingWhat) {
  auto b = device_->Allocate(uint64_t{1} << 50, "expert slots");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(b.status().message()).find("expert slots"), std::string::npos)
      << b.status();
  // The device still works afterwards.
  EXPECT_TRUE(device_->Allocate(4096, "after").ok());
}

TEST_F(CudaDeviceTest, CapacityIsEnforced) {
  device_->SetCapacity(1 << 20);
  EXPECT_TRUE(device_->Allocate(1 << 19, "half").ok());
  auto b = device_->Allocate((1 << 20) + 1, "too much");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(CudaDeviceTest, AsyncCopiesFromPinnedAndPageableMemoryLandInOrder) {
  constexpr uint64_t kBytes = 8 << 20;
  auto pinned = PinnedHostBuffer::Allocate(kBytes, "test source");
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  const auto a = Pattern(kBytes, 1), b = Pattern(kBytes, 2);
  std::memcpy(pinned->data(), a.data(), kBytes);
  auto dst1 = device_->Allocate(kBytes, "dst1");
  auto dst2 = device_->Allocate(kBytes, "dst2");
  ASSERT_TRUE(dst1.ok() && dst2.ok());
  const CopyTicket t1 = device_->CopyToDeviceAsync(dst1->data(), pinned->data(), kBytes);
  const CopyTicket t2 = device_->CopyToDeviceAsync(dst2->data(), b.data(), kBytes);
  EXPECT_GT(t1.id, 0u);
  EXPECT_GT(t2.id, t1.id);
  EXPECT_TRUE(device_->WaitCopy(t2).ok());
  EXPECT_TRUE(device_->CopyDone(t1));  // FIFO: t1 completed before t2
  EXPECT_TRUE(device_->WaitCopy(t1).ok());
  EXPECT_TRUE(device_->WaitCopy(t1).ok());  // waiting twice is fine
  EXPECT_EQ(ReadBack(*dst1), a);
  EXPECT_EQ(ReadBack(*dst2), b);
  const DeviceCounters c = device_->counters();
  EXPECT_EQ(c.bytes_to_device, 2 * kBytes);
  EXPECT_EQ(c.copies_to_device, 2u);
  EXPECT_EQ(c.copies_in_flight, 0u);
  EXPECT_EQ(c.failed_copies, 0u);
}

TEST_F(CudaDeviceTest, LargePageableCopiesGoThroughTheStagingRingIntact) {
  // 100 MiB + 3 bytes: several 16 MiB staging chunks, more than the ring holds, a ragged end.
  const uint64_t bytes = (uint64_t{100} << 20) + 3;
  const auto src = Pattern(bytes, 9);
  auto dst = device_->Allocate(bytes, "dst");
  ASSERT_TRUE(dst.ok());
  const CopyTicket t = device_->CopyToDeviceAsync(dst->data(), src.data(), bytes);
  ASSERT_TRUE(device_->WaitCopy(t).ok());
  EXPECT_EQ(ReadBack(*dst), src);
  EXPECT_EQ(device_->counters().bytes_to_device, bytes);
}

TEST_F(CudaDeviceTest, ComputeStreamWaitsForTheCopyWithoutBlockingTheHost) {
  constexpr uint64_t kBytes = 64 << 20;
  auto pinned = PinnedHostBuffer::Allocate(kBytes, "src");
  ASSERT_TRUE(pinned.ok());
  std::memset(pinned->data(), 0x5a, kBytes);
  auto dst = device_->Allocate(kBytes, "dst");
  auto out = device_->Allocate(kBytes, "out");
  ASSERT_TRUE(dst.ok() && out.ok());
  const CopyTicket t = device_->CopyToDeviceAsync(dst->data(), pinned->data(), kBytes);
  ASSERT_TRUE(device_->ComputeWaitFor(t).ok());
  // A device-to-device copy on the compute stream reads the slot only after the copy landed.
  ASSERT_EQ(cudaMemcpyAsync(out->data(), dst->data(), kBytes, cudaMemcpyDeviceToDevice,
                            device_->compute_stream()),
            cudaSuccess);
  ASSERT_TRUE(device_->SynchronizeCompute().ok());
  const auto back = ReadBack(*out);
  EXPECT_TRUE(
      std::all_of(back.begin(), back.end(), [](std::byte x) { return x == std::byte{0x5a}; }));
}

TEST_F(CudaDeviceTest, CopyIntoUnallocatedMemoryFailsItsWaitWithAClearError) {
  std::vector<std::byte> src(4096);
  // An address that is not device memory: the copy fails at issue or on the stream.
  auto* bogus = reinterpret_cast<std::byte*>(uintptr_t{0x10});
  const CopyTicket t = device_->CopyToDeviceAsync(bogus, src.data(), src.size());
  const absl::Status st = device_->WaitCopy(t);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("copy #"), std::string::npos) << st;
  EXPECT_EQ(device_->WaitCopy(t).code(), st.code());  // remembered
}

TEST_F(CudaDeviceTest, UnknownTicketIsInvalidArgument) {
  EXPECT_EQ(device_->WaitCopy(CopyTicket{999999}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(device_->WaitCopy(CopyTicket{}).ok());
}

TEST(CudaDeviceCreate, BadIndexIsFailedPrecondition) {
  auto device = CudaDevice::Create({.index = 4096});
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(device.status().message()).find("CUDA"), std::string::npos);
}

}  // namespace
}  // namespace moe::cuda
