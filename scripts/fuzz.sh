#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang, AddressSanitizer and UndefinedBehaviorSanitizer
# in a separate build directory, then runs each target for the given number of seconds, starting
# from its seed corpus in fuzz/corpus/<target>/. Exits non-zero when any target finds a crash,
# leak, sanitizer error or timeout; the reproducer is left in <build-dir>/fuzz-artifacts/.
#
# Usage: scripts/fuzz.sh [seconds-per-target (default 30)] [build-dir (default build-fuzz)]
#   FUZZ_TARGETS="model_config_fuzz" scripts/fuzz.sh 60     # only some targets
# Reproduce a finding: <build-dir>/bin/<target> <build-dir>/fuzz-artifacts/<target>-crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
build="${2:-build-fuzz}"
targets="${FUZZ_TARGETS:-safetensors_header_fuzz model_config_fuzz checkpoint_bind_fuzz checkpoint_index_fuzz}"
jobs="$(nproc)"
[[ "$jobs" -gt 2 ]] && jobs=2

command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }

# Instrument every library for coverage and sanitizers, not only the fuzz drivers.
san="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
mkdir -p "$build"
CC=clang CXX=clang++ cmake -S . -B "$build" \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMOE_BUILD_FUZZERS=ON -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCHMARKS=OFF -DMOE_WITH_CUDA=OFF \
  -DCMAKE_C_FLAGS="$san" -DCMAKE_CXX_FLAGS="$san" >"$build/configure.log" ||
  { cat "$build/configure.log" >&2; exit 2; }
# shellcheck disable=SC2086
cmake --build "$build" -j "$jobs" --target $targets

max_len_of() {
  case "$1" in
    model_config_fuzz | checkpoint_index_fuzz) echo 8192 ;;
    *) echo 16384 ;;  # safetensors files: the seed models are about 3 KB
  esac
}
dict_of() {
  case "$1" in
    model_config_fuzz) echo fuzz/model_config.dict ;;
    *) echo fuzz/safetensors.dict ;;
  esac
}

failed=()
mkdir -p "$build/fuzz-artifacts"
for t in $targets; do
  corpus="$build/fuzz-corpus/$t"  # new inputs go here; the seeds in fuzz/corpus stay untouched
  mkdir -p "$corpus"
  echo "fuzz.sh: $t for ${secs}s"
  if ! "$build/bin/$t" "$corpus" "fuzz/corpus/$t" -max_total_time="$secs" \
      -max_len="$(max_len_of "$t")" -dict="$(dict_of "$t")" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$build/fuzz-artifacts/$t-" -print_final_stats=1 \
      >"$build/fuzz-artifacts/$t.log" 2>&1; then
    failed+=("$t")
    tail -n 60 "$build/fuzz-artifacts/$t.log" >&2
  fi
  grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" "$build/fuzz-artifacts/$t.log" || true
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (logs and reproducers in $build/fuzz-artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: all targets ran ${secs}s without findings"
