// GEMMs through cuBLAS: the Blas handle, Linear and the SwiGLU expert FFN (cuda_kernels.h).
//
// Row-major to cuBLAS's column-major: a row-major [r, c] matrix is the column-major [c, r] one
// with leading dimension c. For y[n, rows] = x[n, cols] W^T with W [rows, cols], compute the
// column-major y'[rows, n] = W'^T x' where W' is the column-major [cols, rows] view of W (op T)
// and x' the column-major [cols, n] view of x (op N): m = rows, n = n, k = cols, lda = ldb = cols,
// ldc = rows.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <memory>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/status_util.h"
#include "runtime/status.h"

namespace moe::cuda {
namespace {

constexpr int64_t kMaxBlasDim = std::numeric_limits<int32_t>::max();
constexpr uint64_t kScratchAlign = 256;

uint64_t AlignUp(uint64_t bytes) {
  return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
}

absl::Status BlasStatus(const char* fn, const char* call, cublasStatus_t status) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return Internal("{}: {} failed: {}", fn, call, cublasGetStatusName(status));
}

// Makes `stream` the handle's stream (a host-side setting; cheap).
absl::Status BindStream(const char* fn, Blas& blas, cudaStream_t stream) {
  return BlasStatus(fn, "cublasSetStream", cublasSetStream(blas.handle(), stream));
}

// y[n, rows] = x[n, cols] W^T with W and x both of `type` (CUDA_R_16BF or CUDA_R_32F), fp32
// accumulation and fp32 y. Sizes already checked to fit int.
absl::Status GemmRowMajor(const char* fn, Blas& blas, const void* w, const void* x,
                          cudaDataType_t type, int64_t n, int64_t rows, int64_t cols, float* y) {
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const int m = static_cast<int>(rows);
  const int nn = static_cast<int>(n);
  const int k = static_cast<int>(cols);
  return BlasStatus(
      fn, "cublasGemmEx",
      cublasGemmEx(blas.handle(), CUBLAS_OP_T, CUBLAS_OP_N, m, nn, k, &alpha, w, type, k, x, type,
                   k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// F32 or BF16 (InvalidArgument otherwise), and the matching cuBLAS type.
absl::Status GemmType(const char* fn, DType dtype, cudaDataType_t* type) {
  if (dtype == DType::kF32) {
    *type = CUDA_R_32F;
    return absl::OkStatus();
  }
  if (dtype == DType::kBF16) {
    *type = CUDA_R_16BF;
    return absl::OkStatus();
  }
  return InvalidArgument("{}: unsupported weight dtype {} (F32 or BF16)", fn, DTypeName(dtype));
}

absl::Status CheckMatrix(const char* fn, const char* name, const WeightView& w) {
  if (w.rows < 1 || w.cols < 1 || w.rows > kMaxBlasDim || w.cols > kMaxBlasDim) {
    return InvalidArgument("{}: {} shape [{}, {}] not within [1, {}]", fn, name, w.rows, w.cols,
                           kMaxBlasDim);
  }
  return absl::OkStatus();
}

// Where ExpertFfn's buffers sit in its scratch: g and u [n, I] fp32; with BF16 weights also x
// [n, H] and h [n, I] in bf16. Each buffer starts on a kScratchAlign boundary.
struct FfnLayout {
  uint64_t g = 0;
  uint64_t u = 0;
  uint64_t x_bf16 = 0;
  uint64_t h_bf16 = 0;
  uint64_t total = 0;
};

FfnLayout MakeFfnLayout(int64_t n, int64_t hidden, int64_t inter, DType dtype) {
  FfnLayout layout;
  if (n <= 0 || hidden <= 0 || inter <= 0) return layout;
  if (dtype != DType::kF32 && dtype != DType::kBF16) return layout;
  const uint64_t ni = static_cast<uint64_t>(n) * static_cast<uint64_t>(inter);
  const uint64_t nh = static_cast<uint64_t>(n) * static_cast<uint64_t>(hidden);
  layout.g = 0;
  layout.u = AlignUp(ni * sizeof(float));
  layout.total = layout.u + AlignUp(ni * sizeof(float));
  if (dtype == DType::kBF16) {
    layout.x_bf16 = layout.total;
    layout.h_bf16 = layout.x_bf16 + AlignUp(nh * sizeof(uint16_t));
    layout.total = layout.h_bf16 + AlignUp(ni * sizeof(uint16_t));
  }
  return layout;
}

}  // namespace

// ---- Blas -------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Blas>> Blas::Create(cudaStream_t stream) {
  cublasHandle_t handle = nullptr;
  const cublasStatus_t status = cublasCreate(&handle);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return Internal("Blas::Create: cublasCreate failed: {}", cublasGetStatusName(status));
  }
  std::unique_ptr<Blas> blas(new Blas(handle));
  MOE_RETURN_IF_ERROR(
      BlasStatus("Blas::Create", "cublasSetStream", cublasSetStream(handle, stream)));
  return blas;
}

std::unique_ptr<Blas> Blas::CreateWithoutHandleForTesting() {
  return std::unique_ptr<Blas>(new Blas(nullptr));
}

Blas::~Blas() {
  if (handle_ != nullptr) cublasDestroy(handle_);
}

// ---- Linear -----------------------------------------------------------------------------------

uint64_t LinearScratchBytes(int64_t n, const WeightView& w) {
  if (w.dtype != DType::kBF16 || n <= 0 || w.cols <= 0) return 0;
  return static_cast<uint64_t>(n) * static_cast<uint64_t>(w.cols) * sizeof(uint16_t);
}

absl::Status Linear(Blas& blas, const float* x, int64_t n, const WeightView& w, float* y,
                    void* scratch, uint64_t scratch_bytes, cudaStream_t stream) {
  constexpr const char* kFn = "Linear";
  if (n < 0 || n > kMaxBlasDim) return InvalidArgument("{}: n = {} out of range", kFn, n);
  MOE_RETURN_IF_ERROR(CheckMatrix(kFn, "weight", w));
  cudaDataType_t type = CUDA_R_32F;
  MOE_RETURN_IF_ERROR(GemmType(kFn, w.dtype, &type));
  const uint64_t need = LinearScratchBytes(n, w);
  if (scratch_bytes < need) {
    return InvalidArgument("{}: scratch of {} bytes, {} needed", kFn, scratch_bytes, need);
  }
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"x", x}, {"weight", w.data}, {"y", y}}));
  if (need > 0) MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"scratch", scratch}}));
  if (blas.handle() == nullptr) return FailedPrecondition("{}: Blas has no cuBLAS handle", kFn);
  MOE_RETURN_IF_ERROR(BindStream(kFn, blas, stream));
  const void* x_gemm = x;
  if (w.dtype == DType::kBF16) {
    auto* x_bf16 = static_cast<uint16_t*>(scratch);
    MOE_RETURN_IF_ERROR(internal::LaunchStatus(
        kFn, "ConvertToBf16Kernel", internal::LaunchConvertToBf16(x, n * w.cols, x_bf16, stream)));
    x_gemm = x_bf16;
  }
  return GemmRowMajor(kFn, blas, w.data, x_gemm, type, n, w.rows, w.cols, y);
}

// ---- ExpertFfn --------------------------------------------------------------------------------

uint64_t ExpertFfnScratchBytes(int64_t n, int64_t hidden, int64_t inter, DType dtype) {
  return MakeFfnLayout(n, hidden, inter, dtype).total;
}

absl::Status ExpertFfn(Blas& blas, const float* x, int64_t n, const WeightView& gate,
                       const WeightView& up, const WeightView& down, float* out, void* scratch,
                       uint64_t scratch_bytes, cudaStream_t stream) {
  constexpr const char* kFn = "ExpertFfn";
  if (n < 0 || n > kMaxBlasDim) return InvalidArgument("{}: n = {} out of range", kFn, n);
  MOE_RETURN_IF_ERROR(CheckMatrix(kFn, "gate", gate));
  const int64_t inter = gate.rows;
  const int64_t hidden = gate.cols;
  if (up.rows != inter || up.cols != hidden || down.rows != hidden || down.cols != inter) {
    return InvalidArgument("{}: shapes gate [{}, {}], up [{}, {}], down [{}, {}]", kFn, gate.rows,
                           gate.cols, up.rows, up.cols, down.rows, down.cols);
  }
  if (up.dtype != gate.dtype || down.dtype != gate.dtype) {
    return InvalidArgument("{}: dtypes gate {}, up {}, down {} differ", kFn, DTypeName(gate.dtype),
                           DTypeName(up.dtype), DTypeName(down.dtype));
  }
  cudaDataType_t type = CUDA_R_32F;
  MOE_RETURN_IF_ERROR(GemmType(kFn, gate.dtype, &type));
  const FfnLayout layout = MakeFfnLayout(n, hidden, inter, gate.dtype);
  if (scratch_bytes < layout.total) {
    return InvalidArgument("{}: scratch of {} bytes, {} needed", kFn, scratch_bytes, layout.total);
  }
  if (n == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(internal::CheckNotNull(kFn, {{"x", x},
                                                   {"gate", gate.data},
                                                   {"up", up.data},
                                                   {"down", down.data},
                                                   {"out", out},
                                                   {"scratch", scratch}}));
  if (blas.handle() == nullptr) return FailedPrecondition("{}: Blas has no cuBLAS handle", kFn);
  MOE_RETURN_IF_ERROR(BindStream(kFn, blas, stream));

  auto* base = static_cast<std::byte*>(scratch);
  auto* g = reinterpret_cast<float*>(base + layout.g);
  auto* u = reinterpret_cast<float*>(base + layout.u);
  const bool bf16 = gate.dtype == DType::kBF16;
  const void* x_gemm = x;
  if (bf16) {
    auto* x_bf16 = reinterpret_cast<uint16_t*>(base + layout.x_bf16);
    MOE_RETURN_IF_ERROR(internal::LaunchStatus(
        kFn, "ConvertToBf16Kernel", internal::LaunchConvertToBf16(x, n * hidden, x_bf16, stream)));
    x_gemm = x_bf16;
  }
  MOE_RETURN_IF_ERROR(GemmRowMajor(kFn, blas, gate.data, x_gemm, type, n, inter, hidden, g));
  MOE_RETURN_IF_ERROR(GemmRowMajor(kFn, blas, up.data, x_gemm, type, n, inter, hidden, u));
  MOE_RETURN_IF_ERROR(internal::LaunchStatus(kFn, "SwigluKernel",
                                             internal::LaunchSwiglu(g, u, n * inter, g, stream)));
  const void* h_gemm = g;
  if (bf16) {
    auto* h_bf16 = reinterpret_cast<uint16_t*>(base + layout.h_bf16);
    MOE_RETURN_IF_ERROR(internal::LaunchStatus(
        kFn, "ConvertToBf16Kernel", internal::LaunchConvertToBf16(g, n * inter, h_bf16, stream)));
    h_gemm = h_bf16;
  }
  return GemmRowMajor(kFn, blas, down.data, h_gemm, type, n, hidden, inter, out);
}

}  // namespace moe::cuda
