// Helpers of the CUDA kernel tests: a fixture that skips without a GPU and owns a stream, device
// buffers filled from and read back into host vectors, device copies of test weights, and
// element-wise closeness checks with a tolerance per element.
#pragma once

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/weight_view.h"
#include "tests/kernels/kernel_test_util.h"

namespace moe::cuda_testing {

// A device array of T (cudaMalloc'd; freed on destruction). Allocation failures are test failures
// and leave the pointer null (kernels then answer InvalidArgument, failing the test again).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count == 0) return;
    const cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T));
    if (err != cudaSuccess) {
      ADD_FAILURE() << "cudaMalloc of " << count * sizeof(T)
                    << " bytes: " << cudaGetErrorString(err);
      ptr_ = nullptr;
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), count_(other.count_) {
    other.ptr_ = nullptr;
    other.count_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      if (ptr_ != nullptr) cudaFree(ptr_);
      ptr_ = other.ptr_;
      count_ = other.count_;
      other.ptr_ = nullptr;
      other.count_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return count_; }

  // Synchronous copies (cudaMemcpy waits for the legacy default stream, and the tests' streams
  // are blocking streams; the tests also synchronize their stream before reading back).
  void Upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), count_);
    if (count_ == 0 || ptr_ == nullptr) return;
    const cudaError_t err =
        cudaMemcpy(ptr_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice);
    ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  }
  std::vector<T> Download() const {
    std::vector<T> host(count_);
    if (count_ == 0 || ptr_ == nullptr) return host;
    const cudaError_t err =
        cudaMemcpy(host.data(), ptr_, count_ * sizeof(T), cudaMemcpyDeviceToHost);
    EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// A test weight (host bytes and exact values, kernel_test_util.h) with a device copy of its bytes.
struct DeviceWeight {
  kernel_testing::TestWeight host;
  DeviceBuffer<std::byte> bytes;

  explicit DeviceWeight(kernel_testing::TestWeight w) : host(std::move(w)), bytes(host.bytes) {}
  WeightView device_view() const {
    return WeightView{bytes.get(), host.dtype, host.rows, host.cols};
  }
  WeightView host_view() const { return host.view(); }
};

// Skips (with the CUDA runtime's reason) where no GPU is usable; otherwise owns a stream.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      GTEST_SKIP() << "no GPU: cudaGetDeviceCount: "
                   << (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    }
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  void Sync() {
    const cudaError_t err = cudaStreamSynchronize(stream_);
    ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  }

  cudaStream_t stream_ = nullptr;
};

// Checks |got[i] - want[i]| <= tol[i] for every i; reports the count and the worst offender.
inline ::testing::AssertionResult AllWithin(const std::vector<float>& got,
                                            const std::vector<float>& want,
                                            const std::vector<double>& tol) {
  if (got.size() != want.size() || tol.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "sizes " << got.size() << ", " << want.size() << ", " << tol.size();
  }
  size_t bad = 0;
  size_t worst = 0;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i]));
    const bool ok = err <= tol[i] || (std::isnan(got[i]) && std::isnan(want[i]));
    if (!ok) {
      const double ratio = std::isnan(err) ? INFINITY : err / tol[i];
      if (bad == 0 || ratio > worst_ratio) {
        worst_ratio = ratio;
        worst = i;
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << want.size() << " elements out of tolerance; worst at " << worst
         << ": got " << got[worst] << ", want " << want[worst] << ", tolerance " << tol[worst];
}

// Element-wise relative tolerance: |got - want| <= rel * |want| + abs.
inline ::testing::AssertionResult NearRel(const std::vector<float>& got,
                                          const std::vector<float>& want, double rel, double abs) {
  std::vector<double> tol(want.size());
  for (size_t i = 0; i < want.size(); ++i) tol[i] = rel * std::fabs(double(want[i])) + abs;
  return AllWithin(got, want, tol);
}

}  // namespace moe::cuda_testing
