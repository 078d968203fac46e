// Constructors of the concrete eviction policies, one per file. Internal to memory/: everyone
// else goes through MakeEvictionPolicy (eviction_policy.h), which validates the context first.
#pragma once

#include <memory>

#include "memory/eviction_policy.h"

namespace moe::internal {

std::unique_ptr<EvictionPolicy> MakeLfuPolicy(const PolicyContext& context);
std::unique_ptr<EvictionPolicy> MakeArcPolicy(const PolicyContext& context);
std::unique_ptr<EvictionPolicy> MakeLrfuPolicy(const PolicyContext& context);
std::unique_ptr<EvictionPolicy> MakePredictivePolicy(const PolicyContext& context);
std::unique_ptr<EvictionPolicy> MakeBeladyPolicy(const PolicyContext& context);

}  // namespace moe::internal
