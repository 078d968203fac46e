// "lrfu": recency-weighted frequency (LRFU, Lee et al., IEEE TC 2001).
//
// Each expert carries a combined recency-frequency value CRF = sum over its past accesses of
// decay^(age of the access), age counted in accesses to the partition. The victim is the
// unpinned resident expert with the smallest CRF. decay -> 1 makes it LFU, a small decay makes
// it LRU; in between it keeps experts that are popular *lately*, which is what MoE routing
// rewards: popularity is skewed but drifts from prompt to prompt. The half-life is
// kHalfLifeInCapacities x capacity accesses. On the DeepSeek-V2-Lite trace at 16 of 64 experts
// per layer any half-life from 2 to 12 capacities beats LRU by 0.024-0.034 (bench/RESULTS.md).
//
// CRFs are kept scaled by decay^-clock so an access adds one growing increment instead of
// decaying every value: value[key] += increment; increment /= decay. When the increment grows
// large every value is rescaled at once (O(keys), rare). History survives eviction, so an
// expert that comes back keeps its earned frequency (as LRFU's history option).
//
// A prefetch counts as the use it predicts: the insert adds an increment, and the first demand
// hit of a prefetched expert adds none.
//
// Victim search: one pass over the partition's resident keys (a packed array), O(capacity).
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "memory/policies.h"

namespace moe::internal {
namespace {

constexpr double kHalfLifeInCapacities = 5.0;
constexpr double kRescaleAbove = 1e150;

class LrfuPolicy final : public EvictionPolicy {
 public:
  explicit LrfuPolicy(const PolicyContext& context)
      : inverse_decay_(
            std::pow(2.0, 1.0 / (kHalfLifeInCapacities * static_cast<double>(context.capacity)))),
        value_(static_cast<size_t>(context.space.size()), 0.0),
        pos_(static_cast<size_t>(context.space.size()), kNotResident),
        prefetched_(static_cast<size_t>(context.space.size()), 0) {
    resident_.reserve(static_cast<size_t>(context.capacity));
  }

  std::string_view name() const override { return "lrfu"; }

  void OnInsert(ExpertKey key, const AccessHint&, bool prefetch) override {
    pos_[key] = static_cast<uint32_t>(resident_.size());
    resident_.push_back(key);
    prefetched_[key] = prefetch ? 1 : 0;
    Touch(key);
  }
  void OnHit(ExpertKey key, const AccessHint&) override {
    if (prefetched_[key]) {
      prefetched_[key] = 0;  // the insert already counted this use
      return;
    }
    Touch(key);
  }
  void OnRemove(ExpertKey key) override {
    const uint32_t i = pos_[key];
    pos_[key] = kNotResident;
    resident_[i] = resident_.back();
    pos_[resident_[i]] = i;
    resident_.pop_back();
  }
  ExpertKey ChooseVictim(std::span<const uint16_t> pins) override {
    ExpertKey best = kNoExpert;
    double best_value = std::numeric_limits<double>::infinity();
    for (ExpertKey key : resident_) {
      if (pins[key] == 0 && value_[key] < best_value) {
        best_value = value_[key];
        best = key;
      }
    }
    return best;
  }

 private:
  static constexpr uint32_t kNotResident = 0xFFFFFFFFu;

  void Touch(ExpertKey key) {
    value_[key] += increment_;
    increment_ *= inverse_decay_;
    if (increment_ > kRescaleAbove) {
      for (double& v : value_) v /= increment_;
      increment_ = 1.0;
    }
  }

  double inverse_decay_;
  double increment_ = 1.0;
  std::vector<double> value_;  // per key: CRF x decay^-clock
  std::vector<uint32_t> pos_;  // per key: index in resident_
  std::vector<uint8_t> prefetched_;
  std::vector<ExpertKey> resident_;
};

}  // namespace

std::unique_ptr<EvictionPolicy> MakeLrfuPolicy(const PolicyContext& context) {
  return std::make_unique<LrfuPolicy>(context);
}

}  // namespace moe::internal
