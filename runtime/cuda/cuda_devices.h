// Lists the CUDA devices this process can use. The header has no CUDA includes, so any target
// may call it; the implementation is compiled only where nvcc exists (MOE_CUDA_ENABLED).
//
// On a machine without a driver or GPU, ListCudaDevices() returns FailedPrecondition with the
// CUDA runtime's message (cudaGetDeviceCount returns an error there, not 0). Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::cuda {

struct CudaDeviceInfo {
  int32_t index = 0;
  std::string name;
  int32_t compute_major = 0;
  int32_t compute_minor = 0;
  uint64_t total_memory_bytes = 0;
  int32_t multiprocessors = 0;
  int32_t pci_bus_id = 0;
};

absl::StatusOr<std::vector<CudaDeviceInfo>> ListCudaDevices();

// Runtime and driver versions as "12.4 / 12.6"-style text; an error message when unavailable.
std::string CudaVersionText();

}  // namespace moe::cuda
