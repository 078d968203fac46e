#include "kernels/cpu/float16.h"

#include <cstdint>
#include <cstring>

namespace moe {
namespace {

inline uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace

float F16ToF32(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  const uint32_t exp = (v >> 10) & 0x1Fu;
  const uint32_t mant = v & 0x3FFu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float magnitude = static_cast<float>(mant) * 0x1p-24f;
    return FromBits(Bits(magnitude) | sign);
  }
  if (exp == 0x1F) return FromBits(sign | 0x7F800000u | (mant << 13));  // inf, NaN (payload kept)
  return FromBits(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

uint16_t F32ToF16(float f) {
  uint32_t bits = Bits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  bits &= 0x7FFFFFFFu;
  if (bits >= 0x7F800000u) {
    if (bits == 0x7F800000u) return sign | 0x7C00u;
    // NaN: keep the top payload bits and force the quiet bit, so it stays a NaN.
    return static_cast<uint16_t>(sign | 0x7E00u | ((bits >> 13) & 0x3FFu));
  }
  if (bits >= 0x47800000u) return sign | 0x7C00u;  // >= 65536: overflows to inf
  if (bits < 0x38800000u) {
    // Below the smallest normal half (2^-14): the result is a subnormal (or zero) whose
    // mantissa is f * 2^24. Adding 0.5 (2^-1) aligns the value so the fp32 addition itself
    // rounds at the half's last mantissa bit, to nearest even, as the FPU does in its default
    // rounding mode; the low bits of the sum are then the half's mantissa.
    const float aligned = FromBits(bits) + 0.5f;
    return static_cast<uint16_t>(sign | (Bits(aligned) - Bits(0.5f)));
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even. A carry
  // out of the mantissa correctly bumps the exponent (up to inf for [65520, 65536)).
  const uint32_t odd = (bits >> 13) & 1u;
  bits += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + odd;
  return static_cast<uint16_t>(sign | (bits >> 13));
}

}  // namespace moe
