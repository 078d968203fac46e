// Identifies one routed expert of one MoE layer.
//
// ExpertId is the readable pair (layer, expert). Hot paths (cache, replay, predictors) use the
// dense key `layer * num_experts + expert`, computed by ExpertSpace, so per-expert state lives in
// flat arrays. Layers are counted over MoE layers only (0-based), not over decoder layers.
#pragma once

#include <cstdint>
#include <functional>

#include "fmt/format.h"

namespace moe {

struct ExpertId {
  int32_t layer = 0;
  int32_t expert = 0;

  friend bool operator==(const ExpertId&, const ExpertId&) = default;
  friend auto operator<=>(const ExpertId&, const ExpertId&) = default;
};

// Dense key of an expert inside an ExpertSpace: layer * num_experts + expert.
using ExpertKey = uint32_t;
inline constexpr ExpertKey kNoExpert = 0xFFFFFFFFu;

// The shape of a model's expert population: MoE layers x routed experts per layer.
struct ExpertSpace {
  int32_t num_layers = 0;
  int32_t num_experts = 0;

  int64_t size() const { return int64_t{num_layers} * num_experts; }
  bool Contains(ExpertId id) const {
    return id.layer >= 0 && id.layer < num_layers && id.expert >= 0 && id.expert < num_experts;
  }
  ExpertKey Key(ExpertId id) const {
    return static_cast<ExpertKey>(id.layer) * static_cast<ExpertKey>(num_experts) +
           static_cast<ExpertKey>(id.expert);
  }
  ExpertKey Key(int32_t layer, int32_t expert) const { return Key(ExpertId{layer, expert}); }
  ExpertId Id(ExpertKey key) const {
    return ExpertId{static_cast<int32_t>(key / num_experts),
                    static_cast<int32_t>(key % num_experts)};
  }
  int32_t LayerOf(ExpertKey key) const { return static_cast<int32_t>(key / num_experts); }
};

}  // namespace moe

template <>
struct fmt::formatter<moe::ExpertId> : fmt::formatter<std::string_view> {
  template <typename Ctx>
  auto format(const moe::ExpertId& id, Ctx& ctx) const {
    return fmt::format_to(ctx.out(), "layer {} expert {}", id.layer, id.expert);
  }
};

template <>
struct std::hash<moe::ExpertId> {
  size_t operator()(const moe::ExpertId& id) const noexcept {
    return std::hash<uint64_t>()((uint64_t(uint32_t(id.layer)) << 32) | uint32_t(id.expert));
  }
};
