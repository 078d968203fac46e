// The kernels promise no allocation on their hot path (callers pass scratch). This file replaces
// the global operator new of the test binary with a counting one and checks that repeated calls
// of the main kernels, threaded or not, allocate nothing.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/kernel_test_util.h"

// Under AddressSanitizer its own operator new must stay in place; the check is skipped there.
#if defined(__SANITIZE_ADDRESS__)
#define MOE_COUNT_ALLOCATIONS 0
#else
#define MOE_COUNT_ALLOCATIONS 1
#endif

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_allocations{0};

[[maybe_unused]] void* CountedAlloc(std::size_t size, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (size == 0) size = 1;
  void* p = align <= alignof(std::max_align_t)
                ? std::malloc(size)
                : std::aligned_alloc(align, (size + align - 1) / align * align);
  if (p == nullptr) std::abort();
  return p;
}
}  // namespace

#if MOE_COUNT_ALLOCATIONS
// Every replaceable form, so that no allocation bypasses the count and every delete matches.
void* operator new(std::size_t size) { return CountedAlloc(size, 0); }
void* operator new[](std::size_t size) { return CountedAlloc(size, 0); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return CountedAlloc(size, 0);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return CountedAlloc(size, 0);
}
void* operator new(std::size_t size, std::align_val_t align) {
  return CountedAlloc(size, static_cast<std::size_t>(align));
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return CountedAlloc(size, static_cast<std::size_t>(align));
}
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return CountedAlloc(size, static_cast<std::size_t>(align));
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
  return CountedAlloc(size, static_cast<std::size_t>(align));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
#endif

namespace moe::cpu {
namespace {

using ::moe::kernel_testing::MakeWeight;
using ::moe::kernel_testing::RandomVector;
using ::moe::kernel_testing::TestWeight;

TEST(KernelAllocationTest, HotPathsDoNotAllocate) {
  if (!MOE_COUNT_ALLOCATIONS) GTEST_SKIP() << "allocation counting is off under AddressSanitizer";
  ThreadPool pool(2);
  const int64_t hidden = 64, inter = 192, n = 33;
  const TestWeight gate = MakeWeight(DType::kBF16, inter, hidden, 1);
  const TestWeight up = MakeWeight(DType::kBF16, inter, hidden, 2);
  const TestWeight down = MakeWeight(DType::kBF16, hidden, inter, 3);
  const std::vector<float> x = RandomVector(n * hidden, 4);
  std::vector<float> scratch(2 * n * inter), out(n * hidden), y(n * inter);
  const int64_t heads = 4, kv_heads = 2, dim = 64, start = 100;
  const std::vector<float> q = RandomVector(n * heads * dim, 5);
  const std::vector<float> kv = RandomVector((start + n) * kv_heads * dim, 6);
  std::vector<float> attn_scratch(2 * (start + n)), attn_out(q.size());
  std::vector<int32_t> ids(n * 2);
  std::vector<float> weights(n * 2);

  auto run = [&] {
    for (int64_t tokens : {int64_t{1}, n}) {
      Linear(x.data(), tokens, gate.view(), y.data(), &pool);
      ExpertFfn(x.data(), tokens, gate.view(), up.view(), down.view(), out.data(), scratch.data(),
                &pool);
      Attention(q.data(), tokens, start, kv.data(), kv.data(), heads, kv_heads, dim, 0,
                attn_out.data(), attn_scratch.data(), &pool);
    }
    TopKSoftmax(x.data(), n, hidden, 2, true, ids.data(), weights.data());
  };
  run();  // first use may initialise statics (CPU detection)
  g_allocations.store(0);
  g_counting.store(true);
  for (int rep = 0; rep < 3; ++rep) run();
  g_counting.store(false);
  EXPECT_EQ(g_allocations.load(), 0);
}

}  // namespace
}  // namespace moe::cpu
