#!/usr/bin/env bash
# Runs on a 4-GPU machine (device tool): the GPU tests, in parts. "single": the single-GPU
# files spread over the four GPUs; "tp2": the TP=2 tests twice at once, torch's one-shot
# all-reduce on GPUs 0,1 (QNEXT_LAMPORT_ALLREDUCE=0) and the default barrier-free one on GPUs
# 2,3 (single and tp2 run side by side: the GPUs are shared, so correctness only, no timing);
# "tp4": the 4-GPU tests (all-reduce checks of both paths, TP=4 vs TP=1 in both modes).
# Measured on 4 x H200 (2026-11-28): single ≤ 400 s (gdn_prefill:3), tp2 ≤ 220 s, tp4 ≈ 300 s:
# two calls, "single tp2" (the default) then "tp4".
# Usage: LIMIT=300 bash scripts/gpu_round4.sh [single] [tp2] [tp4]
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
parts=" ${*:-single tp2} "
bash scripts/gpu_bench_all.sh setup > /dev/null  # wheels into /tmp/site, the card into env.txt
export PYTHONPATH="/tmp/site:$PWD:$PWD/scripts" PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1
limit="${LIMIT:-300}"
pytest=(python3 -m pytest -v -p no:cacheprovider -rfE --tb=short --durations=5)
run() {  # $1: log name, $2: QNEXT_LAMPORT_ALLREDUCE, $3: GPUs, $4: limit (s), then pytest args
  local name="$1" lamport="$2" gpus="$3" cap="$4" start; start=$(date +%s); shift 4
  CUDA_VISIBLE_DEVICES=$gpus QNEXT_LAMPORT_ALLREDUCE=$lamport timeout "$cap" "${pytest[@]}" "$@" \
    > "$out/$name.txt" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - start )) s: $(tail -1 "$out/$name.txt")"
}
if [[ "$parts" == *" tp2 "* ]]; then
  run tp2_oneshot 0 0,1 "$limit" tests/gpu/test_gpu_tp.py -k "not tp4" &
  run tp2_lamport 1 2,3 "$limit" tests/gpu/test_gpu_tp.py -k "not tp4" &
fi
if [[ "$parts" == *" single "* ]]; then
  GPUS="0 1 2 3" JOBS=12 LIMIT="$limit" bash scripts/gpu_tests.sh attention gdn_prefill:3 moe \
    parity engine cuda_graph spec conv_prefill gdn_decode norms rope verify conv_decode \
    lamport transfer gemv warmup gdn_layer
fi
wait
if [[ "$parts" == *" tp4 "* ]]; then  # test_gpu_allreduce.py runs both paths itself
  run tp4_oneshot 0 0,1,2,3 300 tests/gpu/test_gpu_allreduce.py tests/gpu/test_gpu_tp.py \
    -k "symm or tp4"
  run tp4_lamport 1 0,1,2,3 90 tests/gpu/test_gpu_tp.py -k tp4
fi
