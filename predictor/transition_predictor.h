// "transition": ExFlow-style inter-layer expert affinity.
//
// Learned tables T_d[l][i][j] = P(expert j chosen at layer l + d | expert i chosen at layer l),
// for d = 1 .. D with D = max_distance + evidence_layers - 1, counted over a trace's tokens and
// smoothed with one pseudo-token drawn from the target layer's frequency:
//   T_d[l][i][j] = (C_d[l][i][j] + F[l+d][j]) / (N[l][i] + 1),
// where F[l][j] is the smoothed fraction of tokens choosing j at l (SmoothedFrequency).
//
// Next-token tables N[l][i][j] = P(expert j chosen at layer l by a sequence's next token | expert
// i chosen at l by this token), counted over consecutive tokens of each sequence and smoothed the
// same way: N[l][i][j] = (C'[l][i][j] + F[l][j]) / (N'[l][i] + 1).
//
// Predict(seq, target): let l be the latest layer the sequence's current token has observed and
// d = target - l. Scores are naive-Bayes log odds over the evidence available, turned into
// probabilities by a tempered softmax scaled to sum top_k, each clamped to 1:
//   p_j = min(1, top_k * softmax(score / tau)_j), score_j = log F[target][j] + evidence.
//   - Ahead (1 <= d <= max_distance): the token's experts at layers l, l-1, ...,
//     l-evidence_layers+1 (those observed for this token), each term weighted w_m = 0.7^m:
//       sum_m w_m sum_{i at layer l-m} log(T_{d+m}[l-m][i][j] / F[target][j]),
//     plus, when the previous token of the sequence was observed at `target`, its experts there
//     with weight w_p: sum_{i} w_p log(N[target][i][j] / F[target][j]). Temperature tau.
//   - Next token (target <= l, the token already passed the target): this token's experts at
//     `target`, sum_{i} log(N[target][i][j] / F[target][j]). Temperature tau_next.
//   - Otherwise (too far ahead, nothing observed yet): the learned layer frequency F[target].
// Both temperatures and w_p (in {0, 0.35, 0.7, 1}) are fit in Learn (least Brier score on
// held-out sequences), which makes the probabilities roughly calibrated. Before Learn, every table
// entry is top_k / num_experts (uniform predictions).
//
// Save/Load: tensors "transition" F32 [D, L, E, E] (T; zero where l + d >= L), "frequency"
// F32 [L, E] (F), "temperature" F32 [1], "next_token" F32 [L, E, E] (N) and "next_temperature"
// F32 [1] and "previous_token_weight" F32 [1] (w_p). Files written before the next-token tables
// have none of these three: Load then predicts without them (as this class did then). Load also
// checks max_distance and evidence_layers. Memory: about 12 bytes x (D + 1) x L x E x E (counts,
// table, log table).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "predictor/predictor.h"

namespace moe {

class TransitionPredictor final : public Predictor {
 public:
  // Temperature used when Learn had no held-out sequences to fit it on.
  static constexpr float kDefaultTemperature = 3.0f;
  // w_p used when Learn had no held-out sequences to fit it on.
  static constexpr float kDefaultPreviousWeight = 0.7f;

  // `options` must pass ValidatePredictorOptions (MOE_CHECK).
  explicit TransitionPredictor(const PredictorOptions& options);

  std::string_view name() const override { return "transition"; }
  const PredictorOptions& options() const override { return options_; }
  void BeginSequence(int64_t seq) override;
  void EndSequence(int64_t seq) override;
  void Observe(int64_t seq, int32_t layer, std::span<const uint16_t> experts) override;
  void Predict(int64_t seq, int32_t target_layer, std::span<float> probs) const override;
  // The next-token tables applied to `experts` (false without them: an older file).
  bool PredictNextVisit(int64_t seq, int32_t layer, std::span<const uint16_t> experts,
                        std::span<float> probs) const override;
  absl::Status Learn(const RoutingTrace& trace) override;
  absl::Status Save(const std::string& path) const override;
  absl::Status Load(const std::string& path) override;

  // Learn() restricted to the given sequences (indices into trace.sequences): with 10 or more,
  // counts all but every 10th, fits the temperature on every 10th, then counts those too.
  absl::Status LearnFrom(const RoutingTrace& trace, std::span<const int64_t> sequences);
  // Adds the counts of more sequences to those of the last LearnFrom and rebuilds the tables
  // (the temperature stays). FailedPrecondition after Load (counts are not saved).
  absl::Status AddSequences(const RoutingTrace& trace, std::span<const int64_t> sequences);

  // d in [1, max_distance] when Predict(seq, target_layer) uses the tables, 0 when it falls back
  // to the layer frequency.
  int32_t Distance(int64_t seq, int32_t target_layer) const;

  int32_t num_tables() const { return num_tables_; }
  // T_d[layer][from][to]; 0 where layer + distance >= num_layers.
  float Probability(int32_t distance, int32_t layer, int32_t from, int32_t to) const;
  // F, [L * E].
  std::span<const float> layer_frequency() const { return frequency_; }
  // N[layer][from][to]: next-token table.
  float NextTokenProbability(int32_t layer, int32_t from, int32_t to) const;
  // False after loading a file that predates the next-token tables.
  bool has_next_token_tables() const { return has_next_token_; }
  float temperature() const { return temperature_; }
  float next_token_temperature() const { return next_temperature_; }
  float previous_token_weight() const { return previous_weight_; }
  void set_temperature(float temperature);

  // The tensors of Save (for files that embed this predictor, like "combined").
  absl::Status AddTensors(SafetensorsWriter& writer) const;
  absl::Status ReadTensors(const SafetensorsFile& file);

 private:
  struct SequenceState {
    int64_t token = 0;              // tokens started, minus one
    int32_t last_layer = -1;        // latest layer observed, -1 before any
    std::vector<int64_t> stamp;     // [L]: token whose experts experts[l] holds, -1 if none
    std::vector<int32_t> count;     // [L]: experts held for layer l
    std::vector<uint16_t> experts;  // [L * top_k]
  };

  int64_t TableIndex(int32_t distance, int32_t layer, int32_t from) const {
    return ((int64_t{distance - 1} * options_.space.num_layers + layer) *
                options_.space.num_experts +
            from) *
           options_.space.num_experts;
  }
  void ResetState(SequenceState& state) const;
  void ObserveInto(SequenceState& state, int32_t layer, std::span<const uint16_t> experts) const;
  int32_t DistanceFor(const SequenceState& state, int32_t target_layer) const;
  // The sequence's experts at `target_layer` on the visit before the one Predict targets (the
  // previous token's for a target ahead, this token's for a target it passed); empty if unknown.
  std::span<const uint16_t> PreviousVisit(const SequenceState& state, int32_t target_layer) const;
  int64_t NextIndex(int32_t layer, int32_t from) const {
    return (int64_t{layer} * options_.space.num_experts + from) * options_.space.num_experts;
  }
  // Adds weight x the next-token tables' log ratios of `visit` (experts chosen at `layer` on one
  // visit) to `out`: the evidence about the next visit.
  void AddNextTokenEvidence(int32_t layer, std::span<const uint16_t> visit, float weight,
                            float* out) const;
  // Adds weight x the previous visit's log ratios (next-token tables) to `out`.
  void AddPreviousVisit(const SequenceState& state, int32_t target_layer, float weight,
                        float* out) const;
  // Writes the log scores of target_layer into `out` (num_experts): the inter-layer evidence at
  // distance d (none when d == 0) plus the previous visit's, weighted `next_weight`.
  void Scores(const SequenceState& state, int32_t target_layer, int32_t d, float next_weight,
              float* out) const;
  // Turns scores into probabilities in place, with temperature `temperature`.
  void ToProbabilities(std::span<float> values, float temperature) const;
  void ResetCounts();
  void Accumulate(const RoutingTrace& trace, std::span<const int64_t> sequences);
  // Tables from counts, then the log tables.
  void BuildTables();
  void BuildLogTables();
  void FitTemperatures(const RoutingTrace& trace, std::span<const int64_t> sequences);

  PredictorOptions options_;
  int32_t num_tables_;
  std::vector<float> evidence_weight_;  // [evidence_layers]
  float temperature_ = kDefaultTemperature;
  float next_temperature_ = kDefaultTemperature;
  float previous_weight_ = kDefaultPreviousWeight;
  bool has_next_token_ = true;

  bool counts_valid_ = true;
  std::vector<uint32_t> counts_;        // C, [D * L * E * E]
  std::vector<int64_t> source_counts_;  // N, [L * E]
  int64_t tokens_ = 0;

  std::vector<float> table_;          // T, [D * L * E * E]
  std::vector<float> frequency_;      // F, [L * E]
  std::vector<float> log_ratio_;      // log(T / F[target]), [D * L * E * E]
  std::vector<float> log_frequency_;  // log F, [L * E]

  std::vector<uint32_t> next_counts_;        // C', [L * E * E]
  std::vector<int64_t> next_source_counts_;  // N', [L * E]: tokens with a successor
  std::vector<float> next_table_;            // N, [L * E * E]
  std::vector<float> next_log_ratio_;        // log(N / F[layer]), [L * E * E]

  absl::flat_hash_map<int64_t, SequenceState> states_;
  std::vector<SequenceState> free_states_;
};

}  // namespace moe
