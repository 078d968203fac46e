// Element-wise kernels the engine's CUDA forward needs beyond kernels/cuda/cuda_kernels.h: the
// residual add, bias add and the shared expert's sigmoid-gated add. Launchers only (pointers,
// sizes, a stream in; cudaGetLastError() out; nothing allocates or synchronizes), so this header
// stays free of project headers and the .cu file compiles as C++17. Arguments are validated by
// the caller (runtime/cuda/cuda_forward_ops.cc); a count or n of zero launches nothing.
//
// Each has a CPU reference, the operation the CPU ops perform (runtime/forward_ops.cc), and a test
// comparing the two on a GPU (tests/engine/cuda_engine_test.cc).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/launch.h"

namespace moe::cuda {

// x[i] += y[i] for i < count (fp32 adds, exact as on the CPU: the attention residual).
cudaError_t LaunchAddInPlace(float* x, const float* y, int64_t count, cudaStream_t stream);

// y[t, c] += bias[c] for t < n, c < cols; bias holds `cols` elements of `type` (F32, BF16, F16),
// converted exactly to fp32. CPU reference: moe::cpu::AddBias.
cudaError_t LaunchAddBias(float* y, int64_t n, int64_t cols, const void* bias,
                          internal::ElemType type, cudaStream_t stream);

// x[t, i] += s_t * y[t, i] with s_t = 1 / (1 + exp(-gate[t])) in fp32, one fused multiply-add per
// element, for t < n, i < dim. CPU reference: the shared expert's gate in CpuForwardOps::
// SharedExpert (the same sigmoid, then moe::cpu::ScaledAdd); results differ by the exp of each
// side and where the CPU rounds the product separately.
cudaError_t LaunchSigmoidGatedAdd(const float* y, const float* gate, int64_t n, int64_t dim,
                                  float* x, cudaStream_t stream);

}  // namespace moe::cuda
