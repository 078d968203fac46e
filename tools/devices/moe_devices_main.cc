// moe-devices: lists the CUDA devices the runtime can use (or why none can be used).
#include <iostream>

#include "fmt/format.h"
#include "runtime/cuda/cuda_devices.h"
#include "tools/common/cli_flags.h"

int main(int argc, char** argv) {
  moe::FlagSet flags("moe-devices", "Lists the CUDA devices the runtime can use.");
  absl::Status st = flags.Parse(argc, argv);
  if (moe::FlagSet::IsHelp(st)) {
    std::cout << flags.Usage();
    return 0;
  }
  if (!st.ok()) {
    std::cerr << "moe-devices: error: " << std::string(st.message()) << "\n";
    return 2;
  }
  std::cout << "cuda: " << moe::cuda::CudaVersionText() << "\n";
  auto devices = moe::cuda::ListCudaDevices();
  if (!devices.ok()) {
    std::cout << std::string(devices.status().message()) << "\n";
    return 1;
  }
  for (const auto& d : *devices) {
    std::cout << fmt::format("gpu {}: {} (sm_{}{}), {:.1f} GiB, {} SMs, pci bus {}\n", d.index,
                             d.name, d.compute_major, d.compute_minor,
                             d.total_memory_bytes / 1073741824.0, d.multiprocessors, d.pci_bus_id);
  }
  return 0;
}
