// The host <-> GPU link and GPU memory, measured in one run so ratios compare like with like:
//   - pinned host -> device, one large cudaMemcpyAsync (the link's practical peak);
//   - expert copies through CudaDevice::CopyToDeviceAsync (expert_bytes each, back to back into
//     distinct slots, as the expert cache issues them), timed from first issue to last WaitCopy;
//   - pageable host -> device (what an engine gets without pinning), directly and through the
//     pinned staging ring (runtime/cuda/staging_copier.h, 4 x 16 MiB, all host threads);
//   - device -> device cudaMemcpyAsync (GPU memory bandwidth; reported as bytes read + written).
// Each figure is the median of `repeats` runs.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "runtime/cuda/cuda_device.h"

namespace moe::cuda {

struct LinkBenchOptions {
  uint64_t large_bytes = uint64_t{1} << 30;  // the one large copy
  uint64_t expert_bytes = 0;                 // one expert copy
  int32_t experts = 8;                       // expert copies per run
  int32_t repeats = 5;
};

struct LinkBenchResult {
  double pinned_gbps = 0;        // one large pinned copy, GB/s (1e9 bytes/s)
  double expert_copy_gbps = 0;   // per-expert copies through CudaDevice
  double pageable_gbps = 0;      // one large pageable copy
  double staged_gbps = 0;        // the same pageable bytes through StagingCopier
  double d2d_copy_gbps = 0;      // bytes copied per second, device to device
  double d2d_traffic_gbps = 0;   // bytes read + written per second (2x the above)
};

absl::StatusOr<LinkBenchResult> RunLinkBench(CudaDevice& device, const LinkBenchOptions& options);

}  // namespace moe::cuda
