#include "tools/cuda/link_bench.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "runtime/cuda/staging_copier.h"
#include "tools/cuda/bench_util.h"

namespace moe::cuda {
namespace {

// Median seconds of one copy of `bytes` on `stream`, timed with events.
absl::StatusOr<double> TimeCopies(void* dst, const void* src, uint64_t bytes, cudaMemcpyKind kind,
                                  cudaStream_t stream, int32_t repeats) {
  std::vector<double> seconds;
  EventTimer timer;
  for (int32_t r = 0; r <= repeats; ++r) {  // run 0 warms up
    timer.Start(stream);
    MOE_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(dst, src, bytes, kind, stream), "copy"));
    timer.Stop(stream);
    MOE_ASSIGN_OR_RETURN(const double s, timer.Seconds());
    if (r > 0) seconds.push_back(s);
  }
  return Median(seconds);
}

}  // namespace

absl::StatusOr<LinkBenchResult> RunLinkBench(CudaDevice& device, const LinkBenchOptions& o) {
  if (o.large_bytes == 0 || o.expert_bytes == 0 || o.experts < 1 || o.repeats < 1) {
    return InvalidArgument("link bench: sizes, expert count and repeats must be positive");
  }
  LinkBenchResult r;
  MOE_ASSIGN_OR_RETURN(PinnedHostBuffer pinned, PinnedHostBuffer::Allocate(o.large_bytes, "link bench source"));
  std::memset(pinned.data(), 1, o.large_bytes);
  MOE_ASSIGN_OR_RETURN(DeviceBuffer dst, device.Allocate(o.large_bytes, "link bench destination"));
  MOE_ASSIGN_OR_RETURN(double s, TimeCopies(dst.data(), pinned.data(), o.large_bytes,
                                            cudaMemcpyHostToDevice, device.copy_stream(), o.repeats));
  r.pinned_gbps = o.large_bytes / s / 1e9;

  std::vector<std::byte> pageable(o.large_bytes, std::byte{2});
  MOE_ASSIGN_OR_RETURN(s, TimeCopies(dst.data(), pageable.data(), o.large_bytes,
                                     cudaMemcpyHostToDevice, device.copy_stream(), o.repeats));
  r.pageable_gbps = o.large_bytes / s / 1e9;
  {
    cpu::ThreadPool pool(0);
    MOE_ASSIGN_OR_RETURN(auto staging,
                         StagingCopier::Create(device.copy_stream(), 16 << 20, 4, &pool));
    std::vector<double> staged;
    for (int32_t rep = 0; rep <= o.repeats; ++rep) {
      const auto start = std::chrono::steady_clock::now();
      MOE_RETURN_IF_ERROR(staging->Copy(dst.data(), pageable.data(), o.large_bytes));
      MOE_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(device.copy_stream()), "staged copy"));
      const double sec =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (rep > 0) staged.push_back(sec);
    }
    r.staged_gbps = o.large_bytes / Median(staged) / 1e9;
  }

  MOE_ASSIGN_OR_RETURN(DeviceBuffer dst2, device.Allocate(o.large_bytes, "link bench d2d"));
  MOE_ASSIGN_OR_RETURN(s, TimeCopies(dst2.data(), dst.data(), o.large_bytes,
                                     cudaMemcpyDeviceToDevice, device.compute_stream(), o.repeats));
  r.d2d_copy_gbps = o.large_bytes / s / 1e9;
  r.d2d_traffic_gbps = 2 * r.d2d_copy_gbps;
  dst2.Reset();
  dst.Reset();

  // Expert copies: each from its own pinned source into its own slot, as cache misses are.
  const uint64_t total = o.expert_bytes * static_cast<uint64_t>(o.experts);
  MOE_ASSIGN_OR_RETURN(PinnedHostBuffer sources, PinnedHostBuffer::Allocate(total, "expert sources"));
  std::memset(sources.data(), 3, total);
  MOE_ASSIGN_OR_RETURN(DeviceBuffer slots, device.Allocate(total, "expert slots"));
  std::vector<double> seconds;
  for (int32_t rep = 0; rep <= o.repeats; ++rep) {
    std::vector<CopyTicket> tickets;
    const auto start = std::chrono::steady_clock::now();
    for (int32_t e = 0; e < o.experts; ++e) {
      const uint64_t off = o.expert_bytes * static_cast<uint64_t>(e);
      tickets.push_back(device.CopyToDeviceAsync(slots.data() + off, sources.data() + off,
                                                 o.expert_bytes));
    }
    for (CopyTicket t : tickets) MOE_RETURN_IF_ERROR(device.WaitCopy(t));
    const double sec =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rep > 0) seconds.push_back(sec);
  }
  r.expert_copy_gbps = total / Median(seconds) / 1e9;
  return r;
}

}  // namespace moe::cuda
