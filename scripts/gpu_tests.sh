#!/usr/bin/env bash
# Runs on the GPU machine: the GPU test files named (tests/gpu/test_gpu_<name>.py), each in its
# own pytest process, JOBS at once (Triton compiles on the CPU; one GPU holds them all), each
# under LIMIT seconds, so one slow or hung file shows by name and costs only its own limit.
# Prints one summary line per file; the device tool brings back only 8 files, so the verbose
# logs stay in /tmp/gpu-tests and $OUT/tests_failed.txt gathers the failing files' tails.
# GPUS (device ids, e.g. "0 1 2 3") spreads the files over several GPUs, round robin.
# Usage: JOBS=5 LIMIT=420 [GPUS="0 1"] bash scripts/gpu_tests.sh attention moe ...
set -uo pipefail
logs=/tmp/gpu-tests; mkdir -p "$logs"; rm -f "$logs"/*.rc
failed="${OUT:-gpu-out}/tests_failed.txt"; mkdir -p "$(dirname "$failed")"
jobs="${JOBS:-5}"; limit="${LIMIT:-420}"
one() {
  local gpu="$1" name="$2" start; start=$(date +%s)
  [ "$gpu" = - ] || export CUDA_VISIBLE_DEVICES="$gpu"
  timeout "$limit" python3 -m pytest -v -p no:cacheprovider -rfE --tb=short --durations=5 \
    "tests/gpu/test_gpu_$name.py" > "$logs/$name.txt" 2>&1
  local rc=$?
  echo "$rc" > "$logs/$name.rc"
  echo "$name (gpu $gpu): exit $rc in $(( $(date +%s) - start )) s: $(tail -1 "$logs/$name.txt")"
}
export -f one; export logs limit
read -r -a gpus <<< "${GPUS:--}"; i=0
for name in "$@"; do echo "${gpus[$(( i++ % ${#gpus[@]} ))]} $name"; done \
  | xargs -P "$jobs" -L1 bash -c 'one "$0" "$1"'
for name in "$@"; do  # after all jobs: one writer
  rc=$(cat "$logs/$name.rc" 2>/dev/null || echo "?")
  [ "$rc" = 0 ] || { printf '\n===== %s (exit %s)\n' "$name" "$rc"; tail -150 "$logs/$name.txt"; }
done > "$failed"
