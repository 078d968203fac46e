#include "tools/common/cli_flags.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <iostream>

#include "fmt/format.h"
#include "runtime/status.h"

namespace moe {
namespace {

constexpr std::string_view kHelpMessage = "help requested";

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

absl::StatusOr<double> ParseDoubleText(std::string_view text) {
  std::string copy(Trim(text));
  if (copy.empty()) return InvalidArgument("empty number");
  char* end = nullptr;
  double v = std::strtod(copy.c_str(), &end);
  if (end != copy.c_str() + copy.size() || !std::isfinite(v)) {
    return InvalidArgument("'{}' is not a number", copy);
  }
  return v;
}

absl::StatusOr<int64_t> ParseIntText(std::string_view text) {
  text = Trim(text);
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    return InvalidArgument("'{}' is not an integer", text);
  }
  return v;
}

}  // namespace

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  std::string_view t = Trim(text);
  size_t num_end = 0;
  while (num_end < t.size() &&
         (std::isdigit(static_cast<unsigned char>(t[num_end])) || t[num_end] == '.')) {
    ++num_end;
  }
  if (num_end == 0) return InvalidArgument("'{}' is not a byte size (e.g. 512MiB, 2GB)", text);
  std::string unit(Trim(t.substr(num_end)));
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (!unit.empty() && unit.back() == 'b') unit.pop_back();
  double scale = 1;
  if (unit.empty()) {
    scale = 1;
  } else if (unit == "k") {
    scale = 1e3;
  } else if (unit == "m") {
    scale = 1e6;
  } else if (unit == "g") {
    scale = 1e9;
  } else if (unit == "t") {
    scale = 1e12;
  } else if (unit == "ki") {
    scale = 1024.0;
  } else if (unit == "mi") {
    scale = 1024.0 * 1024;
  } else if (unit == "gi") {
    scale = 1024.0 * 1024 * 1024;
  } else if (unit == "ti") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return InvalidArgument("'{}' has an unknown size unit (use k, M, G, T, KiB, MiB, GiB, TiB)",
                           text);
  }
  auto number_or = ParseDoubleText(t.substr(0, num_end));
  if (!number_or.ok()) return InvalidArgument("'{}' is not a byte size (e.g. 512MiB, 2GB)", text);
  const double number = *number_or;
  double bytes = number * scale;
  if (bytes > 1.8e19) return InvalidArgument("'{}' is too large", text);
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string FormatBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::vector<std::string> SplitList(std::string_view text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view part = Trim(text.substr(start, comma - start));
    if (!part.empty()) out.emplace_back(part);
    start = comma + 1;
  }
  return out;
}

FlagSet::FlagSet(std::string program, std::string synopsis)
    : program_(std::move(program)), synopsis_(std::move(synopsis)) {}

void FlagSet::AddString(std::string name, std::string* dest, std::string help) {
  flags_.push_back(
      {std::move(name), std::move(help), *dest, false, false, [dest](std::string_view v) {
         *dest = std::string(v);
         return absl::OkStatus();
       }});
}

void FlagSet::AddInt(std::string name, int64_t* dest, std::string help) {
  flags_.push_back({std::move(name), std::move(help), std::to_string(*dest), false, false,
                    [dest](std::string_view v) -> absl::Status {
                      MOE_ASSIGN_OR_RETURN(*dest, ParseIntText(v));
                      return absl::OkStatus();
                    }});
}

void FlagSet::AddDouble(std::string name, double* dest, std::string help) {
  flags_.push_back({std::move(name), std::move(help), fmt::format("{}", *dest), false, false,
                    [dest](std::string_view v) -> absl::Status {
                      MOE_ASSIGN_OR_RETURN(*dest, ParseDoubleText(v));
                      return absl::OkStatus();
                    }});
}

void FlagSet::AddBool(std::string name, bool* dest, std::string help) {
  flags_.push_back({std::move(name), std::move(help), *dest ? "true" : "false", true, false,
                    [dest](std::string_view v) -> absl::Status {
                      if (v == "true" || v == "1" || v == "yes") {
                        *dest = true;
                      } else if (v == "false" || v == "0" || v == "no") {
                        *dest = false;
                      } else {
                        return InvalidArgument("'{}' is not true or false", v);
                      }
                      return absl::OkStatus();
                    }});
}

void FlagSet::AddBytes(std::string name, uint64_t* dest, std::string help) {
  flags_.push_back({std::move(name), std::move(help), std::to_string(*dest), false, false,
                    [dest](std::string_view v) -> absl::Status {
                      MOE_ASSIGN_OR_RETURN(*dest, ParseByteSize(v));
                      return absl::OkStatus();
                    }});
}

FlagSet::Flag* FlagSet::Find(std::string_view name) {
  for (Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool FlagSet::WasSet(std::string_view name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return f.set;
  }
  return false;
}

bool FlagSet::IsHelp(const absl::Status& status) {
  return absl::IsCancelled(status) && std::string(status.message()) == kHelpMessage;
}

int FlagSet::Run(int argc, char** argv, const std::function<absl::Status()>& body) {
  absl::Status st = Parse(argc, argv);
  if (IsHelp(st)) {
    std::cout << Usage();
    return 0;
  }
  if (st.ok()) st = body();
  if (!st.ok()) {
    std::cerr << program_ << ": error: " << std::string(st.message()) << "\n";
    return 2;
  }
  return 0;
}

absl::Status FlagSet::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") return absl::CancelledError(std::string(kHelpMessage));
    if (arg.substr(0, 2) != "--") {
      return InvalidArgument("unexpected argument '{}' (flags start with --; see --help)", arg);
    }
    arg.remove_prefix(2);
    std::string_view name = arg;
    std::string_view value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    Flag* flag = Find(name);
    if (flag == nullptr) return InvalidArgument("unknown flag --{} (see --help)", name);
    if (!has_value) {
      if (flag->is_bool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return InvalidArgument("flag --{} needs a value", name);
      }
    }
    MOE_RETURN_IF_ERROR_CTX(flag->parse(value), fmt::format("flag --{}", name));
    flag->set = true;
  }
  return absl::OkStatus();
}

std::string FlagSet::Usage() const {
  std::string out = fmt::format("usage: {} [flags]\n\n{}\n\nflags:\n", program_, synopsis_);
  for (const Flag& f : flags_) {
    std::string head = f.is_bool ? fmt::format("  --{}", f.name) : fmt::format("  --{} V", f.name);
    out += fmt::format("{:<28} {}", head, f.help);
    if (!f.default_text.empty() && f.default_text != "0" && f.default_text != "false") {
      out += fmt::format(" (default: {})", f.default_text);
    }
    out += "\n";
  }
  out += fmt::format("  {:<26} {}\n", "--help", "print this help");
  return out;
}

}  // namespace moe
