#include "kernels/cpu/float16.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "gtest/gtest.h"

namespace moe {
namespace {

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

bool IsF16Nan(uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }
bool IsBf16Nan(uint16_t h) { return (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) != 0; }

TEST(Float16Test, F16ToF32KnownValues) {
  EXPECT_EQ(F16ToF32(0x3C00), 1.0f);
  EXPECT_EQ(F16ToF32(0xC000), -2.0f);
  EXPECT_EQ(F16ToF32(0x3555), 0x1.554p-2f);  // 0.333251953125
  EXPECT_EQ(F16ToF32(0x7BFF), 65504.0f);     // largest finite
  EXPECT_EQ(F16ToF32(0x0400), 0x1p-14f);     // smallest normal
  EXPECT_EQ(F16ToF32(0x0001), 0x1p-24f);     // smallest subnormal
  EXPECT_EQ(F16ToF32(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(F16ToF32(0x8001), -0x1p-24f);
  EXPECT_EQ(Bits(F16ToF32(0x0000)), 0u);
  EXPECT_EQ(Bits(F16ToF32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(F16ToF32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(F16ToF32(0x7E00)));
  EXPECT_TRUE(std::isnan(F16ToF32(0x7C01)));  // signalling payload still a NaN
  EXPECT_TRUE(std::isnan(F16ToF32(0xFE00)));
}

TEST(Float16Test, F16RoundTripsEveryValue) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const uint16_t back = F32ToF16(f);
    if (IsF16Nan(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(IsF16Nan(back)) << std::hex << h;
      EXPECT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h << " -> " << f;
    }
  }
}

TEST(Float16Test, F32ToF16RoundsToNearestEven) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3C00);
  EXPECT_EQ(F32ToF16(1.0f + 0x1p-11f), 0x3C00);             // halfway, 1.0 is even
  EXPECT_EQ(F32ToF16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);  // just above halfway
  EXPECT_EQ(F32ToF16(1.0f + 3 * 0x1p-11f), 0x3C02);  // halfway between 0x3C01 and even 0x3C02
  EXPECT_EQ(F32ToF16(-1.0f - 3 * 0x1p-11f), 0xBC02);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65519.0f), 0x7BFF);  // below the halfway point to 65536
  EXPECT_EQ(F32ToF16(65520.0f), 0x7C00);  // halfway, rounds to even: overflow to inf
  EXPECT_EQ(F32ToF16(1e10f), 0x7C00);
  EXPECT_EQ(F32ToF16(-1e10f), 0xFC00);
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_TRUE(IsF16Nan(F32ToF16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(IsF16Nan(F32ToF16(FromBits(0x7F800001u))));  // payload only in the low bits
  EXPECT_TRUE(IsF16Nan(F32ToF16(FromBits(0xFFC00000u))));
}

TEST(Float16Test, F32ToF16Subnormals) {
  EXPECT_EQ(F32ToF16(0x1p-24f), 0x0001);
  EXPECT_EQ(F32ToF16(0x1p-25f), 0x0000);             // halfway to 0x0001: even is 0
  EXPECT_EQ(F32ToF16(0x1p-25f + 0x1p-40f), 0x0001);  // just above halfway
  EXPECT_EQ(F32ToF16(3 * 0x1p-25f), 0x0002);         // halfway between 1 and even 2
  EXPECT_EQ(F32ToF16(5 * 0x1p-25f), 0x0002);         // halfway between even 2 and 3
  EXPECT_EQ(F32ToF16(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up into the normals
  EXPECT_EQ(F32ToF16(0x1p-14f - 0x1p-24f), 0x03FF);  // largest subnormal, exact
  EXPECT_EQ(F32ToF16(1e-10f), 0x0000);
  EXPECT_EQ(F32ToF16(-1e-10f), 0x8000);
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(FromBits(1)), 0x0000);  // fp32 subnormal
}

// For many random floats the result is the nearest half, and the even one on ties.
TEST(Float16Test, F32ToF16IsNearestEvenOnRandomInputs) {
  std::mt19937 rng(7);
  // Exponents from 2^-27 to 2^16, random mantissas and signs.
  std::uniform_int_distribution<uint32_t> exp_dist(127 - 27, 127 + 16);
  std::uniform_int_distribution<uint32_t> mant_dist(0, (1u << 23) - 1);
  for (int i = 0; i < 200000; ++i) {
    uint32_t mant = mant_dist(rng);
    if (i % 4 == 0) mant &= ~0xFFFu;  // many exact ties and near-ties
    const float f = FromBits((rng() & 0x80000000u) | (exp_dist(rng) << 23) | mant);
    const uint16_t h = F32ToF16(f);
    const double fd = std::fabs(static_cast<double>(f));
    const uint16_t mag = h & 0x7FFFu;
    if (mag == 0x7C00) {
      ASSERT_GE(fd, 65520.0) << f;
      continue;
    }
    ASSERT_EQ(h & 0x8000u, (Bits(f) >> 16) & 0x8000u) << f;
    const double err = std::fabs(fd - F16ToF32(mag));
    const double below = mag > 0 ? std::fabs(fd - F16ToF32(static_cast<uint16_t>(mag - 1))) : 1e30;
    const double above = std::fabs(fd - F16ToF32(static_cast<uint16_t>(mag + 1)));
    ASSERT_LE(err, below) << f;
    ASSERT_LE(err, above) << f;
    if (err == below || err == above) {
      ASSERT_EQ(mag & 1u, 0u) << "tie not to even: " << f;
    }
  }
}

TEST(Bfloat16Test, RoundTripsEveryValue) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = Bf16ToF32(static_cast<uint16_t>(h));
    const uint16_t back = F32ToBf16(f);
    if (IsBf16Nan(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(IsBf16Nan(back)) << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

TEST(Bfloat16Test, RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f), 0x3F80);             // halfway, even
  EXPECT_EQ(F32ToBf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // above halfway
  EXPECT_EQ(F32ToBf16(1.0f + 3 * 0x1p-8f), 0x3F82);         // halfway, to even
  EXPECT_EQ(F32ToBf16(-1.0f - 3 * 0x1p-8f), 0xBF82);
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to inf
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(F32ToBf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_TRUE(IsBf16Nan(F32ToBf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(IsBf16Nan(F32ToBf16(FromBits(0x7F800001u))));  // would truncate to inf
  EXPECT_EQ(F32ToBf16(FromBits(0x00010000u)), 0x0001);       // subnormals keep their bits
  EXPECT_EQ(F32ToBf16(FromBits(0x00018000u)), 0x0002);       // subnormal tie, to even
  EXPECT_EQ(Bf16ToF32(0x0001), FromBits(0x00010000u));
  EXPECT_EQ(Bits(Bf16ToF32(0x8000)), 0x80000000u);
}

}  // namespace
}  // namespace moe
