// Small helpers shared by the GPU benchmarks (tools/cuda): CUDA error -> Status, medians, and a
// CUDA-event stopwatch. Benchmarks only; not thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "runtime/status.h"

namespace moe::cuda {

// Returns Internal naming `what` when `err` is not cudaSuccess.
inline absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return Internal("{}: {} ({})", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// Times work enqueued on one stream between Start and Stop, in seconds.
class EventTimer {
 public:
  EventTimer() {
    cudaEventCreate(&start_);
    cudaEventCreate(&stop_);
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void Start(cudaStream_t s) { cudaEventRecord(start_, s); }
  void Stop(cudaStream_t s) { cudaEventRecord(stop_, s); }
  absl::StatusOr<double> Seconds() {
    MOE_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(stop_), "timing event"));
    float ms = 0;
    MOE_RETURN_IF_ERROR(CudaStatus(cudaEventElapsedTime(&ms, start_, stop_), "elapsed time"));
    return ms * 1e-3;
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace moe::cuda
