"""Frozen configuration: `ModelConfig.from_hf` normalises a Qwen3-Next config.json; `Config` is the
root object with one section per concern (speculative decoding in `worker/spec_config.py`).
Imports no torch; from qnext only the other config leaves.

Every HF oddity (`rope_parameters` vs `rope_theta`, `full_attention_interval` vs `layer_types`,
eos as int or list) is resolved here, so model code never calls `getattr(hf, ..., default)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnext.worker.errors import ConfigError
from qnext.worker.spec_config import SpecConfig

__all__ = ["CacheConfig", "Config", "ConfigError", "LoadConfig", "ModelConfig",
           "ParallelConfig", "SchedConfig", "SpecConfig"]
LINEAR = "linear_attention"
FULL = "full_attention"
DTYPES = ("float32", "bfloat16", "float16", "float64")  # float64: numerics checks only


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The architecture of a Qwen3-Next checkpoint (global sizes, never per-rank sizes)."""

    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float
    partial_rotary_factor: float
    rms_norm_eps: float
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool
    intermediate_size: int
    moe_layers: tuple[bool, ...]
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()
    num_mtp_layers: int = 1
    architecture: str = "Qwen3NextForCausalLM"

    def __post_init__(self) -> None:
        _check(all(t in (LINEAR, FULL) for t in self.layer_types), "layer_types", self.layer_types)
        _check(len(self.moe_layers) == len(self.layer_types), "moe_layers", self.moe_layers)
        _check(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
               self.num_key_value_heads)
        _check(self.linear_num_value_heads % self.linear_num_key_heads == 0,
               "linear_num_value_heads", self.linear_num_value_heads)
        _check(0 < self.num_experts_per_tok <= max(self.num_experts, 1), "num_experts_per_tok",
               self.num_experts_per_tok)

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def full_layer_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == FULL)

    @property
    def linear_layer_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == LINEAR)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv: [q | k | v] flattened."""
        return 2 * self.linear_key_dim + self.linear_value_dim

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from a config.json dict (transformers 4.x or 5.x spelling)."""
        num_layers = int(hf["num_hidden_layers"])
        rope = hf.get("rope_parameters") or {}
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            layer_types=_layer_types(hf, num_layers),
            num_attention_heads=int(hf["num_attention_heads"]),
            num_key_value_heads=int(hf["num_key_value_heads"]),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            partial_rotary_factor=float(
                rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.25))),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            linear_num_key_heads=int(hf["linear_num_key_heads"]),
            linear_num_value_heads=int(hf["linear_num_value_heads"]),
            linear_key_head_dim=int(hf["linear_key_head_dim"]),
            linear_value_head_dim=int(hf["linear_value_head_dim"]),
            linear_conv_kernel_dim=int(hf.get("linear_conv_kernel_dim", 4)),
            num_experts=int(hf.get("num_experts", 0)),
            num_experts_per_tok=int(hf.get("num_experts_per_tok", 1)),
            moe_intermediate_size=int(hf.get("moe_intermediate_size", 0)),
            shared_expert_intermediate_size=int(hf.get("shared_expert_intermediate_size", 0)),
            norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
            intermediate_size=int(hf.get("intermediate_size", 0)),
            moe_layers=_moe_layers(hf, num_layers),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            eos_token_ids=_int_tuple(hf.get("eos_token_id")),
            num_mtp_layers=int(hf.get("num_nextn_predict_layers", 1) or 1),
            architecture=(hf.get("architectures") or ["Qwen3NextForCausalLM"])[0],
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ConfigError(f"--model-path: no config.json in {path}")
        return cls.from_hf(json.loads(file.read_text()))


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"invalid model config field {name}={value!r}")


def _layer_types(hf: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])[:num_layers]
    interval = int(hf.get("full_attention_interval", 4))
    return tuple(FULL if (i + 1) % interval == 0 else LINEAR for i in range(num_layers))


def _moe_layers(hf: dict[str, Any], num_layers: int) -> tuple[bool, ...]:
    dense = set(hf.get("mlp_only_layers") or [])
    step = int(hf.get("decoder_sparse_step", 1))
    has_experts = int(hf.get("num_experts", 0)) > 0
    return tuple(has_experts and i not in dense and (i + 1) % step == 0 for i in range(num_layers))


def _int_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """Where weights come from. `load_format="dummy"` makes random weights on the device."""

    model_path: str | None = None
    dtype: str = "bfloat16"
    load_format: str = "auto"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ConfigError(f"--load-format must be auto, safetensors or dummy, got "
                              f"{self.load_format!r}")


@dataclass(frozen=True, slots=True)
class ParallelConfig:
    """Tensor parallelism: `tp_size` processes, one per device (gloo on CPU, NCCL on GPU),
    spread evenly over `nnodes` machines; node `node_rank` runs global ranks
    [node_rank * tp / nnodes, (node_rank + 1) * tp / nnodes). `dist_init_addr` (host:port of
    node 0) is where the ranks meet; None on one node: a free local port.
    `disable_custom_all_reduce`: NCCL for every all-reduce, no symmetric-memory path for small
    CUDA messages (SGLang's flag)."""

    tp_size: int = 1
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None
    disable_custom_all_reduce: bool = False

    def __post_init__(self) -> None:
        if self.tp_size < 1:
            raise ConfigError(f"--tp must be >= 1, got {self.tp_size}")
        if self.nnodes < 1 or self.tp_size % self.nnodes:
            raise ConfigError(f"--nnodes {self.nnodes} must be >= 1 and divide --tp "
                              f"{self.tp_size}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank} must be in [0, {self.nnodes})")
        if self.nnodes > 1 and self.dist_init_addr is None:
            raise ConfigError("--dist-init-addr (host:port of node 0) is needed with --nnodes > 1")
        if self.dist_init_addr is not None:
            host, _, port = self.dist_init_addr.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"--dist-init-addr {self.dist_init_addr!r} must be host:port")

    @property
    def ranks_per_node(self) -> int:
        return self.tp_size // self.nnodes

    @property
    def local_ranks(self) -> range:
        """The global ranks this node runs."""
        per = self.ranks_per_node
        return range(self.node_rank * per, (self.node_rank + 1) * per)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Pools and the memory plan (SGLang flag names). On CPU `cpu_memory_bytes` stands in for
    the device's memory."""

    page_size: int = 1
    mamba_ssm_dtype: str = "float32"
    mem_fraction_static: float = 0.88
    mamba_full_memory_ratio: float = 0.9
    max_mamba_cache_size: int | None = None
    max_total_tokens: int | None = None
    cpu_memory_bytes: int = 256 << 20
    mamba_scheduler_strategy: str = "auto"
    disable_radix_cache: bool = False
    mamba_track_interval: int = 256

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ConfigError(f"--page-size must be >= 1, got {self.page_size}")
        _check_radix(self)
        if self.mamba_ssm_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--mamba-ssm-dtype must be float32 or bfloat16, got "
                              f"{self.mamba_ssm_dtype!r}")
        if not 0 < self.mem_fraction_static <= 1:
            raise ConfigError(f"--mem-fraction-static must be in (0, 1], got "
                              f"{self.mem_fraction_static}")
        if not 0 < self.mamba_full_memory_ratio < float("inf"):
            raise ConfigError(f"--mamba-full-memory-ratio must be a finite number > 0, got "
                              f"{self.mamba_full_memory_ratio}")
        for flag, value in (("--max-mamba-cache-size", self.max_mamba_cache_size),
                            ("--max-total-tokens", self.max_total_tokens)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")


    @property
    def radix_strategy(self) -> str:
        """The prefix-cache strategy in force: "off", "no_buffer" or "extra_buffer". "auto"
        is no_buffer at page size 1 and extra_buffer above (no_buffer needs page size 1)."""
        if self.disable_radix_cache:
            return "off"
        if self.mamba_scheduler_strategy == "auto":
            return "no_buffer" if self.page_size == 1 else "extra_buffer"
        return self.mamba_scheduler_strategy

    @property
    def mamba_cache_chunk(self) -> int:
        """extra_buffer snapshot alignment: max(64, page size)."""
        return max(64, self.page_size)


def _check_radix(cache: CacheConfig) -> None:
    flag = "--mamba-scheduler-strategy"
    if cache.mamba_scheduler_strategy not in ("auto", "no_buffer", "extra_buffer"):
        raise ConfigError(f"{flag} must be auto, no_buffer or extra_buffer, got "
                          f"{cache.mamba_scheduler_strategy!r}")
    if cache.mamba_track_interval < 1:
        raise ConfigError(f"--mamba-track-interval must be >= 1, got {cache.mamba_track_interval}")
    strategy, page = cache.radix_strategy, cache.page_size
    if strategy == "no_buffer" and page != 1:
        raise ConfigError(f"{flag} no_buffer needs --page-size 1 (got {page}); use extra_buffer")
    if strategy == "extra_buffer":
        if 64 % page and page % 64:
            raise ConfigError(f"{flag} extra_buffer needs --page-size dividing 64 or a "
                              f"multiple of 64, got {page}")
        if cache.mamba_track_interval % cache.mamba_cache_chunk:
            raise ConfigError(f"--mamba-track-interval {cache.mamba_track_interval} must be a "
                              f"multiple of {cache.mamba_cache_chunk} (max(64, page size))")


@dataclass(frozen=True, slots=True)
class SchedConfig:
    """Batching limits. `chunked_prefill_size=None` prefills whole prompts in one chunk."""

    max_running_requests: int | None = None
    max_queued_requests: int | None = None  # new requests beyond it: RESOURCE_EXHAUSTED
    chunked_prefill_size: int | None = 8192
    max_prefill_tokens: int = 16384
    context_length: int | None = None
    disable_overlap_schedule: bool = False
    random_seed: int = 0
    disable_cuda_graph: bool = False  # decode steps replay CUDA graphs on GPUs unless set
    cuda_graph_max_bs: int = 256  # largest captured decode batch; larger batches run eagerly
    skip_server_warmup: bool = False  # on GPUs: no kernel warm-up forwards at start-up

    def __post_init__(self) -> None:
        for flag, value in (("--max-running-requests", self.max_running_requests),
                            ("--max-queued-requests", self.max_queued_requests),
                            ("--cuda-graph-max-bs", self.cuda_graph_max_bs),
                            ("--chunked-prefill-size", self.chunked_prefill_size),
                            ("--context-length", self.context_length)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.max_prefill_tokens < 1:
            raise ConfigError(f"--max-prefill-tokens must be >= 1, got {self.max_prefill_tokens}")


@dataclass(frozen=True, slots=True)
class Config:
    """The root configuration, built once by the CLI and never mutated."""

    model: ModelConfig
    load: LoadConfig = field(default_factory=LoadConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)

    def __post_init__(self) -> None:
        if self.spec.enabled:
            self._check_spec_support()

    def _check_spec_support(self) -> None:
        """What the engine's speculative decoding covers so far (issue 8): NEXTN / EAGLE
        chains and trees at page size 1; the rest fails here with the flag to change."""
        spec = self.spec
        if self.cache.page_size != 1:  # draft nodes take one scratch page per position
            raise ConfigError("speculative decoding needs --page-size 1 for now (with prefix "
                              "caching: --mamba-scheduler-strategy no_buffer or extra_buffer)")
        if self.cache.radix_strategy == "extra_buffer" \
                and spec.draft_tokens > self.cache.mamba_track_interval:
            raise ConfigError(f"--speculative-num-draft-tokens {spec.draft_tokens} must not "
                              f"exceed --mamba-track-interval {self.cache.mamba_track_interval}"
                              " with extra_buffer (one snapshot per verify at most)")
