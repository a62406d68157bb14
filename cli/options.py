"""Engine flags shared by the `qnext` commands (SGLang names), as typer option types, and the one
function that turns them into the frozen `Config`. Each option maps to one config field."""

from __future__ import annotations

import functools
import inspect
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from qnext.worker.config import (
    CacheConfig,
    Config,
    LoadConfig,
    ModelConfig,
    ParallelConfig,
    SchedConfig,
    SpecConfig,
)


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class SsmDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class SpecAlgorithm(str, Enum):
    NEXTN = "NEXTN"
    EAGLE = "EAGLE"


class RadixStrategy(str, Enum):
    auto = "auto"
    no_buffer = "no_buffer"
    extra_buffer = "extra_buffer"


class LoadFormat(str, Enum):
    auto = "auto"
    safetensors = "safetensors"
    dummy = "dummy"


ModelPath = Annotated[Optional[Path], typer.Option(
    help="Hugging Face checkpoint directory (default: the embedded tiny model).")]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="Weight and activation dtype.")]
Device = Annotated[str, typer.Option(help="cpu or cuda[:N].")]
LoadFormatOpt = Annotated[LoadFormat, typer.Option(help="dummy: random weights, no files read.")]
Tp = Annotated[int, typer.Option("--tp", help="Tensor-parallel size.")]
Nnodes = Annotated[int, typer.Option(help="Machines the TP ranks are spread over.")]
NodeRank = Annotated[int, typer.Option(help="This machine's index (0 runs the engine).")]
DistInitAddr = Annotated[Optional[str], typer.Option(
    help="host:port of node 0 where the TP ranks meet (needed with --nnodes > 1).")]
NoCustomAllReduce = Annotated[bool, typer.Option(
    help="NCCL for every TP all-reduce (no symmetric-memory path for small messages).")]
PageSize = Annotated[int, typer.Option(help="Tokens per KV page.")]
MemFraction = Annotated[float, typer.Option(help="Share of device memory for weights + pools.")]
MaxRunning = Annotated[Optional[int], typer.Option(help="Cap on concurrently running requests.")]
MaxQueued = Annotated[Optional[int], typer.Option(
    help="Cap on waiting requests; new ones beyond it get RESOURCE_EXHAUSTED.")]
MaxTotalTokens = Annotated[Optional[int], typer.Option(help="Cap on KV-pool tokens.")]
ChunkedPrefill = Annotated[int, typer.Option(help="Longest prefill chunk; -1 disables chunking.")]
MaxPrefill = Annotated[int, typer.Option(help="Prefill tokens per step, all requests together.")]
SsmDtypeOpt = Annotated[SsmDtype, typer.Option(help="Dtype of the recurrent (SSM) state.")]
MambaRatio = Annotated[float, typer.Option(help="State : KV memory ratio r (states get r/(1+r)).")]
MaxMamba = Annotated[Optional[int], typer.Option(help="Fixed number of state slots.")]
NoOverlap = Annotated[bool, typer.Option(help="Use the normal loop instead of the overlap loop.")]
NoGraph = Annotated[bool, typer.Option(help="Run decode steps eagerly (no CUDA graphs).")]
GraphMaxBs = Annotated[int, typer.Option(help="Largest decode batch captured in a CUDA graph.")]
SkipWarmup = Annotated[bool, typer.Option(
    help="Skip the start-up warm-up forwards that compile the GPU kernels before requests.")]
SpecAlgo = Annotated[Optional[SpecAlgorithm], typer.Option(
    help="Speculative decoding: NEXTN (the checkpoint's MTP head) or EAGLE (a draft model).")]
SpecDraft = Annotated[Optional[str], typer.Option(help="EAGLE: the draft checkpoint.")]
SpecSteps = Annotated[Optional[int], typer.Option(help="Draft forward steps (default 3).")]
SpecTopk = Annotated[Optional[int], typer.Option(help="Branching per draft step (default 1).")]
SpecTokens = Annotated[Optional[int], typer.Option(
    help="Tokens verified per step, root included (topk 1: steps + 1).")]
RandomSeed = Annotated[int, typer.Option(help="Seed for requests that bring none.")]
ContextLength = Annotated[Optional[int],
                         typer.Option(help="Max tokens per request (prompt incl.).")]
CpuMemory = Annotated[int, typer.Option(help="On CPU: MiB that stand in for device memory.")]
RadixStrategyOpt = Annotated[RadixStrategy, typer.Option(
    help="Prefix cache for the recurrent state: no_buffer (page size 1, normal loop) or "
         "extra_buffer (snapshots in the forward); auto: no_buffer at page size 1.")]
DisableRadix = Annotated[bool, typer.Option(help="Turn prefix caching off.")]
TrackInterval = Annotated[int, typer.Option(
    help="extra_buffer: snapshot the state every this many decoded tokens.")]
WatchdogTimeout = Annotated[float, typer.Option(
    help="Kill and restart a spawned worker that answers no heartbeat (a step boundary) "
         "for this many seconds: a stuck step or a hung process.")]


# (name, type, default) of every engine flag, in --help order; `with_engine_flags` adds them
ENGINE_FLAGS = (
    ("dtype", DtypeOpt, Dtype.float32), ("device", Device, "cpu"),
    ("load_format", LoadFormatOpt, LoadFormat.auto), ("tp", Tp, 1), ("nnodes", Nnodes, 1),
    ("node_rank", NodeRank, 0), ("dist_init_addr", DistInitAddr, None), ("page_size", PageSize, 1),
    ("disable_custom_all_reduce", NoCustomAllReduce, False),
    ("mem_fraction_static", MemFraction, 0.88), ("max_running_requests", MaxRunning, None),
    ("max_queued_requests", MaxQueued, None),
    ("max_total_tokens", MaxTotalTokens, None), ("chunked_prefill_size", ChunkedPrefill, 8192),
    ("max_prefill_tokens", MaxPrefill, 16384), ("mamba_ssm_dtype", SsmDtypeOpt, SsmDtype.float32),
    ("mamba_full_memory_ratio", MambaRatio, 0.9), ("max_mamba_cache_size", MaxMamba, None),
    ("disable_overlap_schedule", NoOverlap, False), ("disable_cuda_graph", NoGraph, False),
    ("cuda_graph_max_bs", GraphMaxBs, 256), ("random_seed", RandomSeed, 0),
    ("context_length", ContextLength, None), ("cpu_memory_mb", CpuMemory, 256),
    ("mamba_scheduler_strategy", RadixStrategyOpt, RadixStrategy.auto),
    ("speculative_algorithm", SpecAlgo, None), ("speculative_draft_model_path", SpecDraft, None),
    ("speculative_num_steps", SpecSteps, None), ("speculative_eagle_topk", SpecTopk, None),
    ("speculative_num_draft_tokens", SpecTokens, None),
    ("disable_radix_cache", DisableRadix, False), ("mamba_track_interval", TrackInterval, 256),
    ("skip_server_warmup", SkipWarmup, False),
)


def with_engine_flags(fn):
    """Give a typer command every engine flag; they reach `fn` as one dict `engine_flags`."""
    names = [name for name, _, _ in ENGINE_FLAGS]

    @functools.wraps(fn)
    def command(**kwargs):
        return fn(engine_flags={n: kwargs.pop(n) for n in names}, **kwargs)

    hints = typing.get_type_hints(fn, include_extras=True)  # fn's string annotations, resolved
    own = [p.replace(annotation=hints[p.name])
           for p in inspect.signature(fn).parameters.values() if p.name != "engine_flags"]
    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t)
             for n, t, d in ENGINE_FLAGS]
    command.__signature__ = inspect.Signature(own + extra)
    command.__annotations__ = {p.name: p.annotation for p in own + extra}
    del command.__wrapped__  # typer must read the new signature, not fn's
    return command


def flags_to_args(flags: dict) -> list[str]:
    """Engine flags back to command-line arguments (to start a worker process)."""
    args = []
    for name, value in flags.items():
        opt = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(opt if value else "--no-" + opt[2:])
        elif value is not None:
            args += [opt, str(value.value if isinstance(value, Enum) else value)]
    return args


def build_config(model_path: Path, **flags) -> Config:
    """The frozen Config of a checkpoint and the engine flags (ENGINE_FLAGS' names). Raises
    ConfigError (a ValueError naming the flag) on a bad value."""
    return Config(model=ModelConfig.from_dir(model_path), **build_sections(model_path, **flags))


def build_sections(model_path: Path, *, dtype: Dtype, device: str, load_format: LoadFormat,
                   tp: int, page_size: int, mem_fraction_static: float,
                   max_running_requests: int | None, max_total_tokens: int | None,
                   chunked_prefill_size: int, max_prefill_tokens: int,
                   mamba_ssm_dtype: SsmDtype, mamba_full_memory_ratio: float,
                   max_mamba_cache_size: int | None, disable_overlap_schedule: bool,
                   random_seed: int, context_length: int | None, cpu_memory_mb: int,
                   mamba_scheduler_strategy: RadixStrategy = RadixStrategy.auto,
                   disable_radix_cache: bool = False, mamba_track_interval: int = 256,
                   nnodes: int = 1, node_rank: int = 0, dist_init_addr: str | None = None,
                   disable_custom_all_reduce: bool = False,
                   disable_cuda_graph: bool = False, cuda_graph_max_bs: int = 256,
                   max_queued_requests: int | None = None, skip_server_warmup: bool = False,
                   **spec_flags) -> dict:
    """Every Config section but the model's (so flags can be checked without a checkpoint)."""
    return dict(
        spec=_spec_section(**spec_flags),
        load=LoadConfig(model_path=str(model_path), dtype=dtype.value, device=device,
                        load_format=load_format.value, seed=random_seed),
        parallel=ParallelConfig(tp_size=tp, nnodes=nnodes, node_rank=node_rank,
                                dist_init_addr=dist_init_addr,
                                disable_custom_all_reduce=disable_custom_all_reduce),
        cache=CacheConfig(page_size=page_size, mamba_ssm_dtype=mamba_ssm_dtype.value,
                          mem_fraction_static=mem_fraction_static,
                          mamba_full_memory_ratio=mamba_full_memory_ratio,
                          max_mamba_cache_size=max_mamba_cache_size,
                          max_total_tokens=max_total_tokens,
                          cpu_memory_bytes=cpu_memory_mb << 20,
                          mamba_scheduler_strategy=mamba_scheduler_strategy.value,
                          disable_radix_cache=disable_radix_cache,
                          mamba_track_interval=mamba_track_interval),
        sched=SchedConfig(max_running_requests=max_running_requests,
                          max_queued_requests=max_queued_requests,
                          chunked_prefill_size=None if chunked_prefill_size == -1
                          else chunked_prefill_size,
                          max_prefill_tokens=max_prefill_tokens, context_length=context_length,
                          disable_overlap_schedule=disable_overlap_schedule,
                          random_seed=random_seed, disable_cuda_graph=disable_cuda_graph,
                          cuda_graph_max_bs=cuda_graph_max_bs,
                          skip_server_warmup=skip_server_warmup))


def _spec_section(speculative_algorithm: SpecAlgorithm | None = None,
                  speculative_draft_model_path: str | None = None,
                  speculative_num_steps: int | None = None,
                  speculative_eagle_topk: int | None = None,
                  speculative_num_draft_tokens: int | None = None) -> SpecConfig:
    """The checked SpecConfig (what the engine supports is checked by `Config`)."""
    return SpecConfig(None if speculative_algorithm is None else speculative_algorithm.value,
                      speculative_draft_model_path, speculative_num_steps,
                      speculative_eagle_topk, speculative_num_draft_tokens)
