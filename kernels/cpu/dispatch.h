// Internal: choice between the portable and the AVX2/FMA kernels of cpu_kernels.h.
//
// The library picks the AVX2/FMA/F16C implementation at run time when the CPU (and OS) supports
// it, else the portable one. Both compute the same functions; results agree to fp32 rounding
// (summation orders differ), and each is deterministic on its own: a result never depends on
// the thread count or on how work was split.
//
// Not part of the public API: for tests and benchmarks.
#pragma once

namespace moe::cpu {

// With `force` true every kernel uses the portable path until called again with false. Takes
// effect for kernel calls that start afterwards (an atomic flag; calls in flight are unaffected).
void ForceScalarKernelsForTesting(bool force);

// True when this build has AVX2 kernels and the CPU can run them (whether or not forced off).
bool CpuSupportsAvx2Kernels();

}  // namespace moe::cpu
