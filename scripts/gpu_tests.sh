#!/usr/bin/env bash
# Runs on the GPU machine: the GPU test files named (tests/gpu/test_gpu_<name>.py), each in its
# own pytest process, JOBS at once (Triton compiles on the CPU; one GPU holds them all), each
# under LIMIT seconds, so one slow or hung file shows by name and costs only its own limit.
# Prints one summary line per file; the device tool brings back only 8 files, so the verbose
# logs stay in /tmp/gpu-tests and $OUT/tests_failed.txt gathers the failing files' tails.
# GPUS (device ids, e.g. "0 1 2 3") spreads the files over several GPUs, round robin.
# name:n runs that file as n processes, each a contiguous slice of its tests
# (QNEXT_TEST_SHARD in tests/conftest.py): Triton compiles on the CPU, so a long file's
# compilations spread over n cores. Logs and summary lines then read name.i-of-n.
# Usage: JOBS=5 LIMIT=420 [GPUS="0 1"] bash scripts/gpu_tests.sh attention gdn_prefill:3 ...
set -uo pipefail
logs=/tmp/gpu-tests; mkdir -p "$logs"; rm -f "$logs"/*.rc
failed="${OUT:-gpu-out}/tests_failed.txt"; mkdir -p "$(dirname "$failed")"
jobs="${JOBS:-5}"; limit="${LIMIT:-420}"
one() {
  local gpu="$1" name="$2" shard="$3" start; start=$(date +%s)
  [ "$gpu" = - ] || export CUDA_VISIBLE_DEVICES="$gpu"
  local file="${name%%.*}"
  [ "$shard" = - ] || export QNEXT_TEST_SHARD="$shard"
  timeout "$limit" python3 -m pytest -v -p no:cacheprovider -rfE --tb=short --durations=5 \
    "tests/gpu/test_gpu_$file.py" > "$logs/$name.txt" 2>&1
  local rc=$?
  echo "$rc" > "$logs/$name.rc"
  echo "$name (gpu $gpu): exit $rc in $(( $(date +%s) - start )) s: $(tail -1 "$logs/$name.txt")"
}
export -f one; export logs limit
runs=()  # "name shard" pairs: "attention -", "gdn_prefill.0-of-3 0/3", ...
for arg in "$@"; do
  if [[ "$arg" == *:* ]]; then
    n="${arg#*:}"
    for ((k = 0; k < n; k++)); do runs+=("${arg%%:*}.$k-of-$n $k/$n"); done
  else
    runs+=("$arg -")
  fi
done
read -r -a gpus <<< "${GPUS:--}"; i=0
for run in "${runs[@]}"; do echo "${gpus[$(( i++ % ${#gpus[@]} ))]} $run"; done \
  | xargs -P "$jobs" -L1 bash -c 'one "$0" "$1" "$2"'
for run in "${runs[@]}"; do  # after all jobs: one writer
  name="${run%% *}"
  rc=$(cat "$logs/$name.rc" 2>/dev/null || echo "?")
  [ "$rc" = 0 ] || { printf '\n===== %s (exit %s)\n' "$name" "$rc"; tail -150 "$logs/$name.txt"; }
done > "$failed"
