#!/usr/bin/env bash
# Runs on a 4-GPU machine (device tool): every GPU test in one call. The single-GPU files are
# spread over the four GPUs while the TP=2 tests run twice at once — one-shot all-reduce on
# GPUs 0,1 and QNEXT_LAMPORT_ALLREDUCE=1 on GPUs 2,3 (correctness only: the GPUs are shared,
# so no timing here) — then the 4-GPU tests (all-reduce checks, TP=4 vs TP=1) in both modes.
# Usage: LIMIT=400 bash scripts/gpu_round4.sh   (call timeout ≈ LIMIT + 180)
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
bash scripts/gpu_bench_all.sh setup > /dev/null  # wheels into /tmp/site, the card into env.txt
export PYTHONPATH="/tmp/site:$PWD:$PWD/scripts" PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1
limit="${LIMIT:-400}"
pytest=(python3 -m pytest -v -p no:cacheprovider -rfE --tb=short --durations=5)
tp2() {  # $1: 0 one-shot / 1 lamport, $2: the GPU pair
  local start; start=$(date +%s)
  CUDA_VISIBLE_DEVICES=$2 QNEXT_LAMPORT_ALLREDUCE=$1 timeout "$limit" "${pytest[@]}" \
    tests/gpu/test_gpu_tp.py -k "not tp4" > "$out/tp2_lamport$1.txt" 2>&1
  echo "tp2 lamport=$1: exit $? in $(( $(date +%s) - start )) s: $(tail -1 "$out/tp2_lamport$1.txt")"
}
tp2 0 0,1 & tp2 1 2,3 &
GPUS="0 1 2 3" JOBS=12 LIMIT="$limit" bash scripts/gpu_tests.sh attention gdn_prefill moe \
  parity engine cuda_graph spec conv_prefill gdn_decode norms rope verify conv_decode lamport \
  transfer
wait
tp4() {  # $1: 0 one-shot / 1 lamport, then the test files (test_gpu_allreduce.py runs both)
  local lamport="$1" start; start=$(date +%s); shift
  QNEXT_LAMPORT_ALLREDUCE=$lamport timeout 120 "${pytest[@]}" "$@" -k "symm or tp4" \
    > "$out/tp4_lamport$lamport.txt" 2>&1
  echo "tp4 lamport=$lamport: exit $? in $(( $(date +%s) - start )) s: \
$(tail -1 "$out/tp4_lamport$lamport.txt")"
}
tp4 0 tests/gpu/test_gpu_allreduce.py tests/gpu/test_gpu_tp.py
tp4 1 tests/gpu/test_gpu_tp.py
