#!/usr/bin/env bash
# Runs on the GPU machine (device tool), one GPU: the GPU tests, then every single-GPU
# benchmark, each under its own time limit, each writing $OUT/<name>.txt — one device call
# for a whole round of checks and numbers. Wheels the GPU image lacks come from .whl/ (carry
# it); FLA anchors from .whl/anchor. Usage: bash scripts/gpu_bench_all.sh [names...]
# (default: all, in the order below). Budget the call's timeout as the sum of the limits used
# (the single-GPU tests come in two steps of one call each: together they take longer
# than one call's 10 minutes; the multi-GPU ones are tests/gpu/test_gpu_tp.py and
# test_gpu_allreduce.py, run on a 2- or 4-GPU kind).
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
python3 -m pip install -q --no-index --no-deps --target /tmp/anchor .whl/anchor/*.whl 2>/dev/null
site="/tmp/site:$PWD:$PWD/scripts"
anchored="$site:/tmp/anchor"  # FLA on the path: only for the benchmarks that time it

pytest="-m pytest -q -p no:cacheprovider -rfE --durations=10"
gpu_tests() { for name in "$@"; do printf 'tests/gpu/test_gpu_%s.py ' "$name"; done; }

# name, time limit (s), python path, command
steps=(
  "tests_kernels|560|$site|$pytest $(gpu_tests attention conv_decode conv_prefill gdn_decode \
                                            gdn_prefill moe norms rope verify)"
  "tests_model|560|$site|$pytest $(gpu_tests parity engine cuda_graph spec transfer)"
  "gdn_prefill|560|$anchored|scripts/bench_gdn_prefill.py"
  "gdn_decode|60|$anchored|scripts/bench_gdn_decode.py"
  "moe|120|$site|scripts/bench_moe.py"
  "spec|150|$site|scripts/bench_spec.py --device cuda --repeats 3"
  "spec_normal|150|$site|scripts/bench_spec.py --device cuda --repeats 3 --disable-overlap-schedule"
  "spec_eager|150|$site|scripts/bench_spec.py --device cuda --repeats 3 --disable-cuda-graph"
  "vs_hf|240|$site|scripts/bench_vs_hf.py --repeats 2 --profile"
)
wanted=" $* "
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/env.txt"
for step in "${steps[@]}"; do
  IFS="|" read -r name limit path cmd <<< "$step"
  [ $# -eq 0 ] || [[ "$wanted" == *" $name "* ]] || continue
  start=$(date +%s)
  # shellcheck disable=SC2086  # cmd is a word list on purpose
  PYTHONPATH="$path" timeout "$limit" python3 $cmd > "$out/$name.txt" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
done
