// StagingCopier on a real GPU: pageable host bytes arrive intact through the pinned ring, for
// sizes below, at and above the chunk and ring sizes, with and without a thread pool. Without a
// GPU the tests skip; argument errors are checked before any CUDA call.
#include "runtime/cuda/staging_copier.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/thread_pool.h"

namespace moe::cuda {
namespace {

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

TEST(StagingCopierTest, RejectsBadSizesBeforeTouchingTheGpu) {
  EXPECT_EQ(StagingCopier::Create(nullptr, 0, 4, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StagingCopier::Create(nullptr, 1 << 20, 1, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StagingCopierTest, PageableBytesArriveIntact) {
  if (!HaveGpu()) GTEST_SKIP() << "no GPU here";
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cpu::ThreadPool pool(4);
  for (cpu::ThreadPool* p : {static_cast<cpu::ThreadPool*>(nullptr), &pool}) {
    auto copier = StagingCopier::Create(stream, 1 << 20, 3, p);
    ASSERT_TRUE(copier.ok()) << copier.status();
    for (uint64_t bytes : {uint64_t{1}, uint64_t{1000}, uint64_t{1} << 20, (uint64_t{5} << 20) + 7,
                           uint64_t{37} << 20}) {
      std::vector<std::byte> src(bytes);
      for (uint64_t i = 0; i < bytes; ++i) src[i] = static_cast<std::byte>((i * 2654435761u) >> 7);
      void* dst = nullptr;
      ASSERT_EQ(cudaMalloc(&dst, bytes), cudaSuccess);
      ASSERT_TRUE((*copier)->Copy(static_cast<std::byte*>(dst), src.data(), bytes).ok());
      // The source may be reused as soon as Copy returns.
      std::fill(src.begin(), src.end(), std::byte{0});
      ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
      std::vector<std::byte> back(bytes);
      ASSERT_EQ(cudaMemcpy(back.data(), dst, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
      for (uint64_t i = 0; i < bytes; ++i) {
        ASSERT_EQ(back[i], static_cast<std::byte>((i * 2654435761u) >> 7)) << bytes << " at " << i;
      }
      cudaFree(dst);
    }
  }
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace moe::cuda
