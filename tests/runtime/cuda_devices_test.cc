// Runs where nvcc built the CUDA targets. On a machine without a GPU or driver the listing must
// fail with a readable message (not crash or report zero devices as success); on a GPU machine
// every device must report a name, a compute capability and memory.
#include <string>

#include "gtest/gtest.h"
#include "runtime/cuda/cuda_devices.h"

namespace moe::cuda {
namespace {

TEST(CudaDevices, ListsDevicesOrExplainsWhyNot) {
  auto devices = ListCudaDevices();
  if (!devices.ok()) {
    const std::string message(devices.status().message());
    EXPECT_NE(message.find("no usable CUDA device"), std::string::npos) << message;
    GTEST_SKIP() << "no GPU here: " << message;
  }
  ASSERT_FALSE(devices->empty());
  for (const CudaDeviceInfo& d : *devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.compute_major, 5);
    EXPECT_GT(d.total_memory_bytes, 0u);
    EXPECT_GT(d.multiprocessors, 0);
  }
}

TEST(CudaDevices, VersionTextNamesTheRuntime) {
  EXPECT_NE(CudaVersionText().find("runtime"), std::string::npos);
}

}  // namespace
}  // namespace moe::cuda
