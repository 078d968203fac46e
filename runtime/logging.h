// Minimal fmt-based logging with a global level and a replaceable sink.
//
// MOE_LOG(kInfo, "loaded {} experts", n);
//
// The default sink writes "moe: <level>: <message>" lines to stderr. The C API (later) replaces
// the sink with the user's callback. SetLogLevel/SetLogSink are thread-safe; messages are
// formatted only when their level is enabled.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "fmt/format.h"

namespace moe {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

using LogSink = std::function<void(LogLevel, std::string_view message)>;

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Replaces the sink; an empty function restores the default stderr sink.
void SetLogSink(LogSink sink);
// Parses "debug", "info", "warning", "error", "off".
bool ParseLogLevel(std::string_view name, LogLevel* out);
std::string_view LogLevelName(LogLevel level);

namespace internal {
bool LogEnabled(LogLevel level);
void LogMessage(LogLevel level, std::string_view message);
}  // namespace internal

}  // namespace moe

#define MOE_LOG(level, ...)                                                            \
  do {                                                                                 \
    if (::moe::internal::LogEnabled(::moe::LogLevel::level))                           \
      ::moe::internal::LogMessage(::moe::LogLevel::level, ::fmt::format(__VA_ARGS__)); \
  } while (0)
