#include "runtime/cuda/cuda_devices.h"

#include <cuda_runtime.h>

#include "fmt/format.h"
#include "runtime/status.h"

namespace moe::cuda {

absl::StatusOr<std::vector<CudaDeviceInfo>> ListCudaDevices() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return FailedPrecondition("no usable CUDA device: {} ({})", cudaGetErrorString(err),
                              cudaGetErrorName(err));
  }
  std::vector<CudaDeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    err = cudaGetDeviceProperties(&prop, i);
    if (err != cudaSuccess) {
      return FailedPrecondition("cuda device {}: {}", i, cudaGetErrorString(err));
    }
    CudaDeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.total_memory_bytes = prop.totalGlobalMem;
    info.multiprocessors = prop.multiProcessorCount;
    info.pci_bus_id = prop.pciBusID;
    out.push_back(std::move(info));
  }
  return out;
}

std::string CudaVersionText() {
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaError_t err = cudaDriverGetVersion(&driver);
  if (err != cudaSuccess || driver == 0) {
    return fmt::format("runtime {}.{}, no driver", runtime / 1000, (runtime % 1000) / 10);
  }
  return fmt::format("runtime {}.{}, driver {}.{}", runtime / 1000, (runtime % 1000) / 10,
                     driver / 1000, (driver % 1000) / 10);
}

}  // namespace moe::cuda
