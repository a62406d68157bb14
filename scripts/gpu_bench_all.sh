#!/usr/bin/env bash
# Runs on the GPU machine (device tool), one GPU: the GPU tests, then every single-GPU
# benchmark, each under its own time limit, each writing $OUT/<name>.txt — one device call
# for a whole round of checks and numbers. Wheels the GPU image lacks come from .whl/ (carry
# it); FLA anchors from .whl/anchor. Usage: bash scripts/gpu_bench_all.sh [names...]
# (default: every single-GPU step but "tests", in the order below). Budget the call's timeout as
# the sum of the limits used. Steps named tp4_* need a 4-GPU kind and run only when
# named; a step whose name ends in _oneshot runs with QNEXT_LAMPORT_ALLREDUCE=0 (torch's
# one-shot all-reduce instead of the default barrier-free one), one ending in _grouped with
# QNEXT_MOE_GEMV=0 (the grouped MoE GEMMs at decode too), one ending in _cublas with
# QNEXT_DENSE_GEMV=0 (cuBLAS for one-row dense projections too), one ending in _nopdl with
# QNEXT_PDL=0 (no programmatic dependent launch). "setup" installs the wheels.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
python3 -m pip install -q --no-index --no-deps --target /tmp/anchor .whl/anchor/*.whl 2>/dev/null
python3 -m pip install -q --no-index --no-deps --target /tmp/serve .whl/serve/*.whl 2>/dev/null
site="/tmp/site:$PWD:$PWD/scripts"
served="/tmp/serve:$site"  # grpc / protobuf newer than the image's: only for qnext serve
anchored="$site:/tmp/anchor"  # FLA on the path: only for the benchmarks that time it

pytest="-m pytest -q -p no:cacheprovider -rfE --durations=10"

# name, time limit (s), python path, command (a .sh runs under bash, the rest under python3).
# "tests" is every single-GPU test file in one call (files in parallel, see gpu_tests.sh);
# tests_kernels / tests_model are its two halves.
steps=(
  "tests|580|$site|scripts/gpu_tests.sh attention gdn_prefill:3 moe moe_router parity engine \
                             cuda_graph spec conv_prefill gdn_decode norms rope verify \
                             conv_decode lamport transfer gemv warmup gdn_layer"
  "tests_kernels|560|$site|scripts/gpu_tests.sh attention conv_decode conv_prefill gdn_decode \
                                     gdn_prefill:3 moe moe_router norms rope verify lamport gemv \
                                     gdn_layer"
  "tests_model|560|$site|scripts/gpu_tests.sh parity engine cuda_graph spec transfer warmup"
  "gdn_prefill|560|$anchored|scripts/bench_gdn_prefill.py"
  "gdn_decode|60|$anchored|scripts/bench_gdn_decode.py"
  "gdn_decode_sweep|240|$site|scripts/bench_gdn_decode.py --sweep"
  "conv_prefill|240|$anchored|scripts/bench_conv_prefill.py"
  "moe|300|$site|scripts/bench_moe.py"
  "moe_layers|300|$site|scripts/bench_moe_layers.py"
  "moe_layers_norm|300|$site|scripts/bench_moe_layers.py --norm"
  "moe_layers_sweep|240|$site|scripts/bench_moe_layers.py --sweep"
  "moe_timeline|120|$site|scripts/probe_moe_timeline.py"
  "moe_reads|60|$site|scripts/probe_moe_timeline.py --reads"
  "gemv|120|$site|scripts/bench_gemv.py"
  "rope|90|$site|scripts/bench_rope.py"
  "attention|300|$site|scripts/bench_attention.py"
  "attention_sweep|300|$site|scripts/bench_attention.py --prefill-sweep"
  "attention_splits|240|$site|scripts/bench_attention.py --prefill-splits"
  "verify_sweep|180|$site|scripts/bench_verify.py --sweep"
  "spec|150|$site|scripts/bench_spec.py --device cuda --repeats 3"
  "spec_normal|150|$site|scripts/bench_spec.py --device cuda --repeats 3 --disable-overlap-schedule"
  "spec_eager|150|$site|scripts/bench_spec.py --device cuda --repeats 3 --disable-cuda-graph"
  "vs_hf|240|$site|scripts/bench_vs_hf.py --repeats 2 --profile"
  "tp4_tests|560|$site|$pytest tests/gpu/test_gpu_allreduce.py tests/gpu/test_gpu_tp.py"
  "tp4_tests_oneshot|400|$site|$pytest tests/gpu/test_gpu_tp.py"
  "tp4_allreduce|120|$site|scripts/bench_allreduce.py"
  "tp4_allreduce_oneshot|120|$site|scripts/bench_allreduce.py"
  "tp4_b1|120|$site|scripts/profile_decode_host.py --tp 4 --layers 48 --steps 32 --trace $out/b1"
  "tp4_b1_oneshot|120|$site|scripts/profile_decode_host.py --tp 4 --layers 48 --steps 32"
  "tp4_b1_grouped|120|$site|scripts/profile_decode_host.py --tp 4 --layers 48 --steps 32"
  "tp4_b1_cublas|120|$site|scripts/profile_decode_host.py --tp 4 --layers 48 --steps 32"
  "tp4_b1_nopdl|120|$site|scripts/profile_decode_host.py --tp 4 --layers 48 --steps 32"
  "tp4_b8|120|$site|scripts/profile_decode_host.py --tp 4 --layers 48 --batch 8 --trace $out/b8"
  "tp4_full|400|$site|scripts/bench_full_size.py --tp 4"
  "tp4_serve|500|$served|scripts/bench_serve.py --tp 4 --out $out/serve"
)
wanted=" $* "
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/env.txt"
for step in "${steps[@]}"; do
  IFS="|" read -r name limit path cmd <<< "$step"
  if [ $# -eq 0 ]; then [[ "$name" != tp4_* && "$name" != tests ]] || continue
  else [[ "$wanted" == *" $name "* ]] || continue; fi
  lamport=1; [[ "$name" != *_oneshot ]] || lamport=0
  gemv=1; [[ "$name" != *_grouped ]] || gemv=0
  dense=1; [[ "$name" != *_cublas ]] || dense=0
  pdl=1; [[ "$name" != *_nopdl ]] || pdl=0
  start=$(date +%s)
  # shellcheck disable=SC2086  # cmd is a word list on purpose
  run=(python3); [[ "$cmd" != *.sh* ]] || run=(bash)
  QNEXT_LAMPORT_ALLREDUCE=$lamport QNEXT_MOE_GEMV=$gemv QNEXT_DENSE_GEMV=$dense QNEXT_PDL=$pdl \
    PYTHONPATH="$path" \
    timeout "$limit" "${run[@]}" $cmd > "$out/$name.txt" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
done
