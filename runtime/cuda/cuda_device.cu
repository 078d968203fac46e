#include "runtime/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include <chrono>
#include <utility>

#include "fmt/format.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/cuda/staging_copier.h"
#include "runtime/logging.h"
#include "runtime/status.h"

namespace moe::cuda {
namespace {

std::string ErrorText(cudaError_t err) {
  return fmt::format("{} ({})", cudaGetErrorString(err), cudaGetErrorName(err));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Create(const CudaDeviceOptions& options) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return FailedPrecondition("no usable CUDA device: {}", ErrorText(err));
  }
  if (options.index < 0 || options.index >= count) {
    return FailedPrecondition("CUDA device {} does not exist ({} device(s) visible)", options.index,
                              count);
  }
  if ((err = cudaSetDevice(options.index)) != cudaSuccess) {
    return FailedPrecondition("cannot use CUDA device {}: {}", options.index, ErrorText(err));
  }
  cudaDeviceProp prop{};
  if ((err = cudaGetDeviceProperties(&prop, options.index)) != cudaSuccess) {
    return FailedPrecondition("CUDA device {}: {}", options.index, ErrorText(err));
  }
  cudaStream_t compute = nullptr, copy = nullptr;
  if ((err = cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking)) != cudaSuccess ||
      (err = cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking)) != cudaSuccess) {
    if (compute != nullptr) cudaStreamDestroy(compute);
    return Internal("CUDA device {}: creating streams: {}", options.index, ErrorText(err));
  }
  auto device = std::unique_ptr<CudaDevice>(new CudaDevice(
      options.index, fmt::format("cuda:{} ({})", options.index, prop.name), compute, copy));
  device->SetCapacity(options.capacity_bytes);
  return device;
}

CudaDevice::CudaDevice(int32_t index, std::string name, CUstream_st* compute, CUstream_st* copy)
    : Device(0), index_(index), name_(std::move(name)), compute_(compute), copy_(copy) {}

CudaDevice::~CudaDevice() {
  cudaSetDevice(index_);
  cudaStreamSynchronize(copy_);
  cudaStreamSynchronize(compute_);
  staging_.reset();  // its events were recorded on copy_
  for (const InFlight& f : in_flight_) cudaEventDestroy(f.event);
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  cudaStreamDestroy(copy_);
  cudaStreamDestroy(compute_);
}

std::byte* CudaDevice::RawAllocate(uint64_t bytes) {
  cudaSetDevice(index_);
  void* p = nullptr;
  if (cudaMalloc(&p, bytes == 0 ? 1 : bytes) != cudaSuccess) {
    cudaGetLastError();  // cudaMalloc's error is not sticky; clear it for the next call
    return nullptr;
  }
  // Zero-filled before anyone can use it: on the compute stream (the legacy default stream's
  // cudaMemset would not order with the non-blocking streams), then waited for.
  if (cudaMemsetAsync(p, 0, bytes, compute_) != cudaSuccess ||
      cudaStreamSynchronize(compute_) != cudaSuccess) {
    cudaFree(p);
    return nullptr;
  }
  return static_cast<std::byte*>(p);
}

void CudaDevice::RawFree(std::byte* ptr) {
  cudaSetDevice(index_);
  // Work still queued may read the buffer: cudaFree waits for the device to be idle first.
  cudaFree(ptr);
}

void CudaDevice::RawCopyToDevice(std::byte* dst, const std::byte* src, uint64_t bytes) {
  const cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  if (err != cudaSuccess) MOE_LOG(kError, "{}: copy of {} bytes: {}", name_, bytes, ErrorText(err));
}

absl::Status CudaDevice::CheckAllocate(uint64_t bytes, std::string_view what) {
  cudaSetDevice(index_);
  size_t free_bytes = 0, total_bytes = 0;
  const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
  if (err != cudaSuccess) {
    return Internal("{}: cannot read free memory before allocating {}: {}", name_, what,
                    ErrorText(err));
  }
  if (bytes > free_bytes) {
    return ResourceExhausted(
        "{}: allocating {} bytes for {} exceeds the free GPU memory ({} of {} "
        "bytes free)",
        name_, bytes, what, free_bytes, total_bytes);
  }
  return absl::OkStatus();
}

cudaEvent_t CudaDevice::TakeEventLocked() const {
  if (!free_events_.empty()) {
    cudaEvent_t e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) return nullptr;
  return e;
}

CopyTicket CudaDevice::StartCopy(std::byte* dst, const std::byte* src, uint64_t bytes) {
  std::lock_guard lock(mu_);
  const uint64_t id = next_id_++;
  cudaError_t err = IsPageable(src)
                        ? static_cast<cudaError_t>(StagedCopyLocked(dst, src, bytes))
                        : cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_);
  cudaEvent_t event = err == cudaSuccess ? TakeEventLocked() : nullptr;
  if (err == cudaSuccess && event == nullptr) err = cudaErrorMemoryAllocation;
  if (err == cudaSuccess) err = cudaEventRecord(event, copy_);
  if (err != cudaSuccess) {
    if (event != nullptr) free_events_.push_back(event);
    // Later copies may still complete; this one is failed from issue. Keep FIFO bookkeeping by
    // recording it with no event (it counts as complete when the ones before it are).
    failed_[id] =
        fmt::format("copy #{} of {} bytes failed at issue: {}", id, bytes, ErrorText(err));
    in_flight_.push_back(InFlight{id, bytes, nullptr});
    return CopyTicket{id};
  }
  in_flight_.push_back(InFlight{id, bytes, event});
  return CopyTicket{id};
}

bool CudaDevice::IsPageable(const std::byte* src) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, src) != cudaSuccess) {
    cudaGetLastError();
    return false;  // let cudaMemcpyAsync report what is wrong with the pointer
  }
  return attributes.type == cudaMemoryTypeUnregistered;
}

int CudaDevice::StagedCopyLocked(std::byte* dst, const std::byte* src, uint64_t bytes) {
  if (staging_ == nullptr) {
    staging_pool_ = std::make_unique<cpu::ThreadPool>(0);
    auto staging =
        StagingCopier::Create(copy_, kStagingChunkBytes, kStagingSlots, staging_pool_.get());
    if (!staging.ok()) {
      MOE_LOG(kWarning, "{}: no pinned staging ring ({}); pageable copies go direct (slower)",
              name_, std::string(staging.status().message()));
      staging_failed_ = true;
    } else {
      staging_ = *std::move(staging);
      MOE_LOG(kInfo,
              "{}: copies from pageable host memory go through a pinned staging ring ({} x {} "
              "MiB)",
              name_, kStagingSlots, kStagingChunkBytes >> 20);
    }
  }
  if (staging_failed_) return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_);
  // A failed staging step leaves its CUDA error for the caller's copy record (WaitCopy reports
  // it with the copy's number and size).
  if (staging_->Copy(dst, src, bytes).ok()) return cudaSuccess;
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? cudaErrorUnknown : err;
}

void CudaDevice::RetireLocked(uint64_t block_until) const {
  while (!in_flight_.empty()) {
    InFlight& f = in_flight_.front();
    if (f.event != nullptr) {
      cudaError_t err =
          f.id <= block_until ? cudaEventSynchronize(f.event) : cudaEventQuery(f.event);
      if (err == cudaErrorNotReady) return;
      if (err != cudaSuccess) {
        failed_[f.id] =
            fmt::format("copy #{} of {} bytes failed: {}", f.id, f.bytes, ErrorText(err));
      }
      free_events_.push_back(f.event);
    }
    completed_through_ = f.id;
    in_flight_.pop_front();
  }
}

bool CudaDevice::IsCopyDone(CopyTicket ticket) const {
  std::lock_guard lock(mu_);
  if (ticket.id <= completed_through_) return true;
  RetireLocked(0);
  return ticket.id <= completed_through_;
}

absl::Status CudaDevice::StatusOfLocked(uint64_t id) const {
  const auto it = failed_.find(id);
  if (it == failed_.end()) return absl::OkStatus();
  return Internal("{}: {}", name_, it->second);
}

absl::Status CudaDevice::FinishCopy(CopyTicket ticket) {
  std::lock_guard lock(mu_);
  if (ticket.id >= next_id_) return InvalidArgument("{}: unknown copy ticket {}", name_, ticket.id);
  if (ticket.id > completed_through_) {
    const auto start = std::chrono::steady_clock::now();
    RetireLocked(ticket.id);
    stall_seconds_ +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++stalled_waits_;
  }
  return StatusOfLocked(ticket.id);
}

absl::Status CudaDevice::ComputeWaitFor(CopyTicket ticket) {
  if (ticket.id == 0) return absl::OkStatus();
  std::lock_guard lock(mu_);
  if (ticket.id >= next_id_) return InvalidArgument("{}: unknown copy ticket {}", name_, ticket.id);
  if (ticket.id <= completed_through_) return StatusOfLocked(ticket.id);
  for (const InFlight& f : in_flight_) {
    if (f.id != ticket.id) continue;
    if (f.event == nullptr) return StatusOfLocked(ticket.id);
    const cudaError_t err = cudaStreamWaitEvent(compute_, f.event, 0);
    if (err != cudaSuccess)
      return Internal("{}: compute cannot wait for copy #{}: {}", name_, ticket.id, ErrorText(err));
    return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status CudaDevice::CopyWaitForCompute() {
  std::lock_guard lock(mu_);
  cudaEvent_t e = TakeEventLocked();
  if (e == nullptr) return Internal("{}: cannot create an event", name_);
  cudaError_t err = cudaEventRecord(e, compute_);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(copy_, e, 0);
  // An event may be re-recorded once the wait is enqueued: the wait captured this record.
  free_events_.push_back(e);
  if (err != cudaSuccess)
    return Internal("{}: copy stream cannot wait for compute: {}", name_, ErrorText(err));
  return absl::OkStatus();
}

absl::Status CudaDevice::SynchronizeCompute() {
  const cudaError_t err = cudaStreamSynchronize(compute_);
  if (err != cudaSuccess) return Internal("{}: compute stream failed: {}", name_, ErrorText(err));
  return absl::OkStatus();
}

absl::Status CudaDevice::RegisterHost(const void* ptr, uint64_t bytes) {
  const cudaError_t err = cudaHostRegister(const_cast<void*>(ptr), bytes,
                                           cudaHostRegisterPortable | cudaHostRegisterReadOnly);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return FailedPrecondition("{}: pinning {} bytes of host memory refused: {}", name_, bytes,
                              ErrorText(err));
  }
  return absl::OkStatus();
}

absl::Status CudaDevice::UnregisterHost(const void* ptr) {
  const cudaError_t err = cudaHostUnregister(const_cast<void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();
    return Internal("{}: unpinning host memory: {}", name_, ErrorText(err));
  }
  return absl::OkStatus();
}

void CudaDevice::FillCopyCounters(DeviceCounters& counters) const {
  std::lock_guard lock(mu_);
  RetireLocked(0);
  counters.copies_in_flight = in_flight_.size();
  uint64_t failed = 0;
  for (const auto& [id, text] : failed_) failed += id <= completed_through_ ? 1 : 0;
  counters.failed_copies = failed;
  counters.copy_stall_seconds = stall_seconds_;
  counters.stalled_waits = stalled_waits_;
}

absl::StatusOr<PinnedHostBuffer> PinnedHostBuffer::Allocate(uint64_t bytes, std::string_view what) {
  void* p = nullptr;
  const cudaError_t err = cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return ResourceExhausted("pinned host memory: allocating {} bytes for {} refused: {}", bytes,
                             what, ErrorText(err));
  }
  PinnedHostBuffer b;
  b.data_ = static_cast<std::byte*>(p);
  b.size_ = bytes;
  return b;
}

PinnedHostBuffer::PinnedHostBuffer(PinnedHostBuffer&& other) noexcept { *this = std::move(other); }

PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

PinnedHostBuffer::~PinnedHostBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

}  // namespace moe::cuda
