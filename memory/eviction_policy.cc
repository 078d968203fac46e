// Policy registry: names, validation of the context, construction. The policies themselves live
// one per file (lru_policy.h, lfu_policy.cc, arc_policy.cc, lrfu_policy.cc, predictive_policy.cc,
// belady_policy.cc).
#include "memory/eviction_policy.h"

#include <array>
#include <string>

#include "memory/lru_policy.h"
#include "memory/policies.h"
#include "runtime/status.h"

namespace moe {
namespace {

constexpr std::array<std::string_view, 6> kPolicyNames = {"lru",  "lfu",        "arc",
                                                          "lrfu", "predictive", "belady"};

std::string JoinedNames() {
  std::string out;
  for (std::string_view n : kPolicyNames) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

}  // namespace

std::span<const std::string_view> EvictionPolicyNames() { return kPolicyNames; }

bool PolicyNeedsFuture(std::string_view name) { return name == "belady"; }

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(std::string_view name,
                                                                   const PolicyContext& context) {
  bool known = false;
  for (std::string_view n : kPolicyNames) known |= (n == name);
  if (!known) {
    return InvalidArgument("unknown eviction policy '{}'; valid policies: {}", name, JoinedNames());
  }
  if (context.space.num_layers <= 0 || context.space.num_experts <= 0) {
    return InvalidArgument("eviction policy '{}': empty expert space ({} layers x {} experts)",
                           name, context.space.num_layers, context.space.num_experts);
  }
  if (context.space.size() > (int64_t{1} << 31)) {
    return InvalidArgument("eviction policy '{}': expert space of {} keys is too large (max 2^31)",
                           name, context.space.size());
  }
  if (context.capacity < 1) {
    return InvalidArgument("eviction policy '{}': capacity must be >= 1, got {}", name,
                           context.capacity);
  }
  if (name == "lru") return std::make_unique<internal::LruPolicy>(context);
  if (name == "lfu") return internal::MakeLfuPolicy(context);
  if (name == "arc") return internal::MakeArcPolicy(context);
  if (name == "lrfu") return internal::MakeLrfuPolicy(context);
  if (name == "predictive") {
    if (context.scores == nullptr) {
      return InvalidArgument(
          "eviction policy 'predictive' needs expert scores (PolicyContext::scores / "
          "CacheOptions::scores) from a predictor");
    }
    if (context.scores->space().num_layers != context.space.num_layers ||
        context.scores->space().num_experts != context.space.num_experts) {
      return InvalidArgument(
          "eviction policy 'predictive': scores cover {} layers x {} experts, the cache {} x {}",
          context.scores->space().num_layers, context.scores->space().num_experts,
          context.space.num_layers, context.space.num_experts);
    }
    return internal::MakePredictivePolicy(context);
  }
  return internal::MakeBeladyPolicy(context);  // "belady"
}

}  // namespace moe
