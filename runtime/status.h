// Status helpers shared by the whole project.
//
// Everything that can fail on input or environment returns absl::Status or absl::StatusOr<T>.
// Debian's Abseil (20220623) ships no status macros, so the project defines its own here.
// Bugs (violated invariants) are MOE_CHECK aborts, never Statuses.
//
// Messages are lower-case, carry the offending values, and gain context on the way up with
// MOE_RETURN_IF_ERROR_CTX / Annotate().
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fmt/format.h"

namespace moe {

// Note: Debian's Abseil has its own absl::string_view (not std::string_view); convert
// Status::message() with std::string(...) before formatting it.

// Returns `status` with "context: " prepended to its message (same code). OK stays OK.
absl::Status Annotate(const absl::Status& status, std::string_view context);

// fmt-formatted constructors for the common error codes.
template <typename... Args>
absl::Status InvalidArgument(fmt::format_string<Args...> f, Args&&... args) {
  return absl::InvalidArgumentError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status NotFound(fmt::format_string<Args...> f, Args&&... args) {
  return absl::NotFoundError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status DataLoss(fmt::format_string<Args...> f, Args&&... args) {
  return absl::DataLossError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status ResourceExhausted(fmt::format_string<Args...> f, Args&&... args) {
  return absl::ResourceExhaustedError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status FailedPrecondition(fmt::format_string<Args...> f, Args&&... args) {
  return absl::FailedPreconditionError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status OutOfRange(fmt::format_string<Args...> f, Args&&... args) {
  return absl::OutOfRangeError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status Internal(fmt::format_string<Args...> f, Args&&... args) {
  return absl::InternalError(fmt::format(f, std::forward<Args>(args)...));
}

namespace internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, std::string_view msg);
}  // namespace internal

}  // namespace moe

#define MOE_STATUS_CONCAT_INNER(a, b) a##b
#define MOE_STATUS_CONCAT(a, b) MOE_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define MOE_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status moe_status_ = (expr);       \
    if (!moe_status_.ok()) return moe_status_; \
  } while (0)

// Same, prepending `ctx` (anything convertible to std::string_view) to the message.
#define MOE_RETURN_IF_ERROR_CTX(expr, ctx)                             \
  do {                                                                 \
    ::absl::Status moe_status_ = (expr);                               \
    if (!moe_status_.ok()) return ::moe::Annotate(moe_status_, (ctx)); \
  } while (0)

// MOE_ASSIGN_OR_RETURN(auto x, MakeX()); declares/assigns `x` or returns the error.
#define MOE_ASSIGN_OR_RETURN(lhs, expr) \
  MOE_ASSIGN_OR_RETURN_IMPL(MOE_STATUS_CONCAT(moe_statusor_, __LINE__), lhs, expr)
#define MOE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Aborts with a message when an invariant (a bug, not bad input) is violated.
#define MOE_CHECK(cond)                                                       \
  do {                                                                        \
    if (!(cond)) ::moe::internal::CheckFailed(__FILE__, __LINE__, #cond, ""); \
  } while (0)
#define MOE_CHECK_MSG(cond, ...)                                                           \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::moe::internal::CheckFailed(__FILE__, __LINE__, #cond, ::fmt::format(__VA_ARGS__)); \
  } while (0)
