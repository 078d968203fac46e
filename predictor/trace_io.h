// Reading and writing routing traces.
//
// The project's own format ("moe-trace", version 1) is a safetensors file; docs/trace-format.md
// is the authoritative description. Python users read it with the `safetensors` package.
//
// Also imported: the dense folder layout of ../shared/data/routing-traces (meta.json with
// "shape" [T, L, K] and "num_routed_experts"; experts_u8.bin; sequences.tsv with token_offset
// and n_tokens columns; optional gate_probs_f32.bin).
//
// Every reader validates fully (sizes, ranges, sequence coverage) and fails with one message
// naming the file and the offending value; it never returns a partially valid trace. Codes:
// NotFound for a missing file, DataLoss for malformed content, InvalidArgument for an empty
// trace ("trace X has no tokens") or an invalid one, Unimplemented for an unknown version.
//
// Thread-safety: the functions share no state; concurrent calls on different paths are safe.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "predictor/routing_trace.h"

namespace moe {

// Writes `trace` (validated first) as a moe-trace safetensors file, replacing `path` atomically
// (write to a temporary name, then rename).
absl::Status WriteTrace(const RoutingTrace& trace, const std::string& path);

// Reads a moe-trace safetensors file.
absl::StatusOr<RoutingTrace> ReadTraceFile(const std::string& path);

// Imports a dense trace folder. Phase comes from meta.json's "phase" text ("decode..." means
// decode, anything else prefill); the model name from meta.json "model" or the folder name. The
// expert count comes from "num_routed_experts" (or "num_experts" / "num_local_experts"); without
// one the import fails rather than guess. Sequence names are "dataset/problem_id" or
// "source_dir/prompt_num" where sequences.tsv has those columns, else "seq N". Reads
// experts_u8.bin with one fread (the 24 MB DeepSeek folder imports in about 0.1 s).
absl::StatusOr<RoutingTrace> ImportDenseTrace(const std::string& dir);

// A directory is imported as a dense folder; a file is read as a moe-trace file.
absl::StatusOr<RoutingTrace> ReadTrace(const std::string& path);

}  // namespace moe
