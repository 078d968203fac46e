// A small command-line flag parser shared by the project's tools.
//
// Flags are declared with a name, a help line and a typed destination; Parse() accepts
// "--name value", "--name=value" and, for booleans, "--name" / "--name=false". Unknown flags,
// missing values and unparsable numbers are errors naming the flag and the value. "--help"
// makes Parse() return a HelpRequested status after which the caller prints Usage().
//
// Not thread-safe; used once at start-up.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

// Parses "123", "1.5GB", "2GiB", "512MiB", "64k" (k/M/G/T are decimal; Ki/Mi/Gi/Ti binary;
// a trailing "B" is optional). InvalidArgument names the text.
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);
// "1.50 GiB", "17.3 MB"-style human-readable size (binary units).
std::string FormatBytes(uint64_t bytes);

class FlagSet {
 public:
  FlagSet(std::string program, std::string synopsis);

  void AddString(std::string name, std::string* dest, std::string help);
  void AddInt(std::string name, int64_t* dest, std::string help);
  void AddDouble(std::string name, double* dest, std::string help);
  void AddBool(std::string name, bool* dest, std::string help);
  void AddBytes(std::string name, uint64_t* dest, std::string help);  // ParseByteSize

  // Parses argv[1..]; positional arguments are errors. Returns a status whose message is
  // "help requested" (code Cancelled) for --help.
  absl::Status Parse(int argc, char** argv);
  // Whether the flag appeared on the command line.
  bool WasSet(std::string_view name) const;
  std::string Usage() const;

  static bool IsHelp(const absl::Status& status);

  // The tail of a tool's main(): parses argv; --help prints the usage and returns 0; otherwise
  // runs `body` and returns 0, or prints a parse error or body's error as one line
  // "<program>: error: <message>" on stderr and returns 2.
  int Run(int argc, char** argv, const std::function<absl::Status()>& body);

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_text;
    bool is_bool = false;
    bool set = false;
    std::function<absl::Status(std::string_view)> parse;
  };
  Flag* Find(std::string_view name);
  std::string program_;
  std::string synopsis_;
  std::vector<Flag> flags_;
};

// Splits "a,b,c" into trimmed, non-empty parts.
std::vector<std::string> SplitList(std::string_view text);

}  // namespace moe
