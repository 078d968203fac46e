#!/usr/bin/env bash
# The GPU run, end to end (DESIGN.md section 7). GPU machines have nvcc, CMake and PyTorch but no
# Abseil, fmt or GoogleTest, so the tree is built here and the binaries travel.
#
#   scripts/gpu_run.sh stage        on the development machine (has nvcc, no GPU): builds the
#                                   CUDA-enabled tree in build-gpu/ (Release, sm_90), then copies
#                                   the GPU tests, the GPU tools, the shared libraries they need
#                                   that are not part of the CUDA toolkit or libc (found with ldd),
#                                   the embedded model and the real Mixtral routing trace into
#                                   .gpu/ (ignored by git; travels with `carry`).
#   scripts/gpu_run.sh run [OUT]    on the GPU machine, from the repository root: prints the
#                                   machine, runs every CUDA test, compute-sanitizer memcheck and
#                                   racecheck on the kernel tests, then the GPU benchmarks; logs
#                                   and a results table go to OUT (default: $OUT, else
#                                   gpu-results/).
#
# With this workplace's device tool, one call does the GPU half:
#   run(command="scripts/gpu_run.sh run", carry=[".gpu"])
# Environment for `run`: MOE_GPU_SKIP_SANITIZER=1 skips compute-sanitizer, MOE_GPU_BENCH="..."
# picks moe-cuda-bench sections (default: all), MOE_GPU_BENCH_FLAGS adds flags to it,
# MOE_GPU_QUICK=1 shortens it, MOE_GPU_HF=0 skips the Hugging Face baseline and
# MOE_GPU_HF_FLAGS passes flags to it (scripts/bench/hf_offload_baseline.py --help),
# MOE_GPU_ENGINE_LAYERS=N also runs the engine (moe-run) on an N-layer Mixtral-shaped checkpoint.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
stage_dir="$root/.gpu"

stage() {
  local build="${MOE_GPU_BUILD_DIR:-$root/build-gpu}"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_WITH_CUDA=ON \
    -DMOE_CUDA_ARCHITECTURES=90 -DMOE_BUILD_BENCHMARKS=OFF >/dev/null
  local wanted=(cuda_devices_test cuda_device_test staging_copier_test cuda_kernels_test
                cuda_engine_test moe-devices moe-cuda-bench moe-replay moe-run moe-make-model)
  local targets=()
  local known
  known="$(cmake --build "$build" --target help)"
  for t in "${wanted[@]}"; do
    if grep -qE "[.] $t( |$)" <<<"$known"; then targets+=("$t"); else echo "not built yet: $t"; fi
  done
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
  rm -rf "$stage_dir"
  mkdir -p "$stage_dir/bin" "$stage_dir/lib" "$stage_dir/data"
  for t in "${targets[@]}"; do cp "$build/bin/$t" "$stage_dir/bin/"; done
  # Shared libraries Debian ships only as .so (Abseil, fmt, SentencePiece, ...). libc, libstdc++
  # and the CUDA toolkit's libraries come from the GPU machine (its toolkit matches nvcc 13).
  local skip='linux-vdso|ld-linux|libc\.so|libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.so'
  skip+='|librt\.so|libcublas|libcudart|libcuda\.so'
  for b in "$stage_dir"/bin/*; do
    ldd "$b" | awk '/=> \//{print $3}' | grep -Ev "$skip" || true
  done | sort -u | while read -r lib; do cp -L "$lib" "$stage_dir/lib/"; done
  local trace="$root/../shared/data/routing-traces/mixtral-8x7b-humaneval-gsm8k"
  if [[ -d "$trace" ]]; then cp -r "$trace" "$stage_dir/data/mixtral-trace"; fi
  if [[ -f "$root/scripts/bench/hf_offload_baseline.py" ]]; then
    cp "$root/scripts/bench/hf_offload_baseline.py" "$stage_dir/"
  fi
  du -sh "$stage_dir"
  echo "staged into $stage_dir (carry it as .gpu)"
}

run() {
  local out="${1:-${OUT:-$root/gpu-results}}"
  mkdir -p "$out"
  [[ -d "$stage_dir/bin" ]] || { echo "gpu_run.sh: $stage_dir is missing: run 'stage' first" >&2; exit 2; }
  # The CUDA toolkit's libraries (cuBLAS): the toolkit first, else PyTorch's wheels.
  local cuda_lib=/usr/local/cuda/lib64
  if [[ ! -e "$cuda_lib/libcublas.so.13" ]]; then
    cuda_lib="$(dirname "$(find / -xdev -name 'libcublas.so.13' 2>/dev/null | head -1)")"
  fi
  export LD_LIBRARY_PATH="$stage_dir/lib:$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local bin="$stage_dir/bin"
  {
    echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
      --format=csv || true
    "$bin/moe-devices" || true
    echo "host: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB RAM; cuBLAS from $cuda_lib"
  } 2>&1 | tee "$out/machine.txt"

  local failed=0
  for t in cuda_devices_test cuda_device_test staging_copier_test cuda_kernels_test \
           cuda_engine_test; do
    [[ -x "$bin/$t" ]] || continue
    if ! "$bin/$t" --gtest_output="xml:$out/$t.xml" >"$out/$t.log" 2>&1; then failed=1; fi
    echo "$t: $(grep -E '^\[  (PASSED|FAILED)' "$out/$t.log" | tr '\n' ' ')"
    grep -E '^\[  FAILED|Failure|error' "$out/$t.log" | head -20 || true
  done
  if [[ "${MOE_GPU_SKIP_SANITIZER:-0}" != 1 && -x "$bin/cuda_kernels_test" ]]; then
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
    if [[ -n "$sanitizer" ]]; then
      for tool in memcheck racecheck; do
        if "$sanitizer" --tool "$tool" --error-exitcode 3 "$bin/cuda_kernels_test" \
             >"$out/sanitizer-$tool.log" 2>&1; then
          echo "compute-sanitizer $tool: clean ($(tail -1 "$out/sanitizer-$tool.log"))"
        else
          failed=1
          echo "compute-sanitizer $tool: FAILED"; grep -m20 -E 'ERROR|Invalid|Race|hazard' "$out/sanitizer-$tool.log" || true
        fi
      done
    else
      echo "compute-sanitizer: not found on this machine"
    fi
  fi
  # The engine end to end on the demo model, CPU beside CUDA: same prompt, budget and predictor.
  if [[ -x "$bin/moe-run" && -f "$root/models/pydoc-moe/model.safetensors" ]]; then
    for dev in cpu cuda; do
      "$bin/moe-run" --model "$root/models/pydoc-moe" --device "$dev" --expert-budget 25% \
        --predictor gate --max-tokens 64 --prompt "The interpreter reads the command line" \
        >"$out/moe-run-$dev.log" 2>&1 || failed=1
      echo "moe-run --device $dev: $(grep -E 'tokens/s' "$out/moe-run-$dev.log" | head -2 | tr '\n' ' ')"
    done
  fi
  # The engine on a Mixtral-8x7B-shaped checkpoint of MOE_GPU_ENGINE_LAYERS layers (synthetic
  # weights; routing forced from the real Mixtral trace, the engine's benchmark mode), CPU beside
  # CUDA; 27% is 24 GB of the full model's 90 GB of experts.
  local layers="${MOE_GPU_ENGINE_LAYERS:-0}"
  if [[ "$layers" -gt 0 && -x "$bin/moe-make-model" ]]; then
    local ckpt=/tmp/moe-mixtral-shaped force=()
    [[ -d "$stage_dir/data/mixtral-trace" ]] && force=(--force-routing "$stage_dir/data/mixtral-trace")
    "$bin/moe-make-model" --out "$ckpt" --hidden 4096 --intermediate 14336 --layers "$layers" \
      --heads 32 --kv-heads 8 --experts 8 --top-k 2 --dtype bf16 --vocab 32000 \
      --max-shard-size 4GB >/dev/null
    # The last two: the engine's CPU fallback on the GPU, and its hybrid rule (misses the CPU
    # serves are not loaded).
    for run in "cpu all off" "cuda all off" "cuda 27% off" "cuda 27% on" "cuda 27% hybrid"; do
      set -- $run
      local log="$out/engine-$1-${2%\%}-$3.log"
      "$bin/moe-run" --model "$ckpt" --device "$1" --expert-budget "$2" --cpu-fallback "$3" \
        --max-tokens "${MOE_GPU_ENGINE_TOKENS:-32}" --prompt-ids 1,2,3,4,5,6,7,8 "${force[@]}" \
        >"$log" 2>&1 || failed=1
      echo "engine ${layers}-layer Mixtral shape, $1, budget $2, cpu fallback $3: $(grep -E \
        '^decode|hit rate|^bytes' "$log" | tr -s ' ' | tr '\n' ' ')"
    done
    rm -rf "$ckpt"
  fi
  if [[ -x "$bin/moe-cuda-bench" ]]; then
    local quick=()
    [[ "${MOE_GPU_QUICK:-0}" == 1 ]] && quick=(--quick)
    # shellcheck disable=SC2086
    "$bin/moe-cuda-bench" --sections "${MOE_GPU_BENCH:-all}" \
      --trace "$stage_dir/data/mixtral-trace" --results "$out/bench.md" "${quick[@]}" \
      ${MOE_GPU_BENCH_FLAGS:-} 2>&1 | tee "$out/bench.log" || failed=1
  fi
  # Baseline (c): Hugging Face transformers + accelerate offloading, same shapes, same routing.
  if [[ "${MOE_GPU_HF:-1}" == 1 && -f "$stage_dir/hf_offload_baseline.py" ]]; then
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 python3 "$stage_dir/hf_offload_baseline.py" \
      --force-routing "$stage_dir/data/mixtral-trace" ${MOE_GPU_HF_FLAGS:-} --json \
      >"$out/hf_baseline.json" 2>"$out/hf_baseline.log" || { failed=1; tail -5 "$out/hf_baseline.log"; }
    echo "hf baseline: $(cat "$out/hf_baseline.json")"
  fi
  echo "results in $out"
  return "$failed"
}

case "${1:-}" in
  stage) stage ;;
  run) shift; run "$@" ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
