#include "runtime/cuda/staging_copier.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/thread_pool.h"
#include "runtime/status.h"

namespace moe::cuda {
namespace {

absl::Status CudaError(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return Internal("staging copy: {}: {} ({})", what, cudaGetErrorString(err),
                  cudaGetErrorName(err));
}

// Host copy split into pieces of at least 1 MiB across the pool: one thread cannot saturate the
// host's memory system.
void HostCopy(std::byte* dst, const std::byte* src, uint64_t bytes, cpu::ThreadPool* pool) {
  constexpr uint64_t kPiece = 1 << 20;
  if (pool == nullptr || bytes < 2 * kPiece) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const auto pieces = static_cast<int64_t>((bytes + kPiece - 1) / kPiece);
  pool->ParallelFor(pieces, 1, [&](int64_t b, int64_t e) {
    const uint64_t begin = static_cast<uint64_t>(b) * kPiece;
    const uint64_t end = std::min(bytes, static_cast<uint64_t>(e) * kPiece);
    std::memcpy(dst + begin, src + begin, end - begin);
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<StagingCopier>> StagingCopier::Create(CUstream_st* stream,
                                                                     uint64_t chunk_bytes,
                                                                     int32_t slots,
                                                                     cpu::ThreadPool* pool) {
  if (chunk_bytes == 0 || slots < 2) {
    return InvalidArgument("staging copier: chunk of {} bytes and {} slots (need > 0 and >= 2)",
                           chunk_bytes, slots);
  }
  auto copier = std::unique_ptr<StagingCopier>(new StagingCopier(stream, chunk_bytes, pool));
  for (int32_t i = 0; i < slots; ++i) {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, chunk_bytes, cudaHostAllocPortable);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return ResourceExhausted("staging copier: {} pinned bytes for slot {} refused: {}",
                               chunk_bytes, i, cudaGetErrorString(err));
    }
    copier->buffers_.push_back(static_cast<std::byte*>(p));
    cudaEvent_t e = nullptr;
    if ((err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming)) != cudaSuccess) {
      return CudaError(err, "creating an event");
    }
    copier->events_.push_back(e);
  }
  return copier;
}

StagingCopier::~StagingCopier() {
  for (cudaEvent_t e : events_) {
    cudaEventSynchronize(e);
    cudaEventDestroy(e);
  }
  for (std::byte* b : buffers_) cudaFreeHost(b);
}

absl::Status StagingCopier::Copy(std::byte* dst, const std::byte* src, uint64_t bytes) {
  std::lock_guard lock(mu_);
  for (uint64_t offset = 0; offset < bytes; offset += chunk_bytes_) {
    const uint64_t len = std::min(chunk_bytes_, bytes - offset);
    const size_t slot = next_++ % buffers_.size();
    // The slot's previous DMA must have read it before it is refilled. Events never recorded
    // count as complete.
    MOE_RETURN_IF_ERROR(CudaError(cudaEventSynchronize(events_[slot]), "waiting for a slot"));
    HostCopy(buffers_[slot], src + offset, len, pool_);
    MOE_RETURN_IF_ERROR(CudaError(
        cudaMemcpyAsync(dst + offset, buffers_[slot], len, cudaMemcpyHostToDevice, stream_),
        "enqueueing a chunk"));
    MOE_RETURN_IF_ERROR(CudaError(cudaEventRecord(events_[slot], stream_), "recording a chunk"));
  }
  return absl::OkStatus();
}

}  // namespace moe::cuda
