"""Per-rank model runner: builds the model (on the meta device, then materialised on the target
device and loaded), owns the KV and state pools, and runs one forward over a list of
`SeqChunk`s. On CUDA, decode steps replay captured graphs (`runtime/cuda_graph.py`), made
each time pools are (re)allocated; `try_graphs` also serves the speculative verify.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

import structlog
import torch
from torch import nn

from qnext.kernels import compile_log
from qnext.worker.config import Config
from qnext.worker.layers.backend import kernels_cover
from qnext.worker.layers.linear import kv_head_range
from qnext.worker.layers.parallel import get_tp_info
from qnext.worker.forward import ForwardBatch
from qnext.worker.models.registry import model_class
from qnext.worker.runtime.cuda_graph import StepGraphs
from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from qnext.worker.runtime.kv_pool import KVPool
from qnext.worker.runtime.state_pool import StatePool
from qnext.worker.runtime.weights import init_dummy_weights, iter_checkpoint, load_weights

log = structlog.get_logger(__name__)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                "float64": torch.float64}


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _to_empty_keeping_loaders(model: nn.Module, device: torch.device) -> None:
    """`to_empty` makes new Parameter objects; carry the weight-loader attributes over."""
    keep = ("weight_loader", "num_loads")
    saved = {n: {k: getattr(p, k) for k in keep if hasattr(p, k)}
             for n, p in model.named_parameters()}
    model.to_empty(device=device)
    for name, param in model.named_parameters():
        for key, value in saved[name].items():
            setattr(param, key, value)


def materialise(model: nn.Module, cfg: Config, prefix: str = "",
                skip: tuple[str, ...] = ()) -> nn.Module:
    """Move a meta-built model to the device and fill it from the checkpoint or randomly."""
    _to_empty_keeping_loaders(model, torch.device(cfg.load.device))
    if cfg.load.load_format == "dummy":
        init_dummy_weights(model, cfg.load.seed)
    else:
        if cfg.load.model_path is None:
            raise ValueError("--model-path is required unless --load-format dummy")
        load_weights(model, iter_checkpoint(cfg.load.model_path), prefix, skip)
    return model.eval().requires_grad_(False)


def build_model(cfg: Config) -> nn.Module:
    """The target model for `cfg.model.architecture`, weights loaded, on `cfg.load.device`."""
    cls = model_class(cfg.model.architecture)
    with torch.device("meta"), _default_dtype(TORCH_DTYPES[cfg.load.dtype]):
        model = cls(cfg.model)
    return materialise(model, cfg, skip=getattr(cls, "skip_prefixes", ()))


def build_mtp(cfg: Config) -> nn.Module:
    """The MTP draft head: the `mtp.*` tensors of the target checkpoint, or with
    `--speculative-algorithm EAGLE` those of the draft checkpoint (same layout; its config
    must match the target's hidden size and vocabulary)."""
    from qnext.worker.models.qwen3_next_mtp import Qwen3NextMTP

    if cfg.spec.algorithm == "EAGLE":
        cfg = draft_config(cfg)
    with torch.device("meta"), _default_dtype(TORCH_DTYPES[cfg.load.dtype]):
        model = Qwen3NextMTP(cfg.model)
    return materialise(model, cfg, prefix=Qwen3NextMTP.checkpoint_prefix)


def draft_config(cfg: Config) -> Config:
    """The target's config with the EAGLE draft checkpoint's model and path."""
    from dataclasses import replace

    from qnext.worker.config import ModelConfig
    from qnext.worker.errors import ConfigError

    path = cfg.spec.draft_model_path
    draft = ModelConfig.from_dir(path)
    if (draft.hidden_size, draft.vocab_size) != (cfg.model.hidden_size, cfg.model.vocab_size):
        raise ConfigError(f"--speculative-draft-model-path {path}: hidden size / vocabulary "
                          f"{draft.hidden_size} / {draft.vocab_size} differ from the target's "
                          f"{cfg.model.hidden_size} / {cfg.model.vocab_size}")
    return replace(cfg, model=draft, load=replace(cfg.load, model_path=str(path)))


def make_pools(cfg: Config, num_pages: int, num_slots: int,
               num_kv_layers: int | None = None) -> tuple[KVPool, StatePool]:
    """Pools holding this rank's heads; page 0 and slot 0 are the padding targets."""
    m, tp = cfg.model, get_tp_info()
    first, last = kv_head_range(m.num_key_value_heads, tp.rank, tp.size)
    dtype, device = TORCH_DTYPES[cfg.load.dtype], cfg.load.device
    # NOTE: a float64 model (numerics checks) keeps its recurrent state in float64 too
    ssm_dtype = dtype if dtype == torch.float64 else TORCH_DTYPES[cfg.cache.mamba_ssm_dtype]
    kv_layers = len(m.full_layer_ids) if num_kv_layers is None else num_kv_layers
    kv = KVPool(kv_layers, num_pages, cfg.cache.page_size, last - first, m.head_dim, dtype, device)
    state = StatePool(len(m.linear_layer_ids), num_slots, m.conv_dim // tp.size,
                      m.linear_conv_kernel_dim, m.linear_num_value_heads // tp.size,
                      m.linear_key_head_dim, m.linear_value_head_dim, dtype, ssm_dtype, device)
    return kv, state


class ModelRunner:
    """One rank's model plus pools. `forward` returns (logits [B or T, V], hidden [T, H]).

    Pools are allocated by `allocate_pools` once the memory plan is known (or directly when
    the page and slot counts are given, as tests do).
    """

    def __init__(self, cfg: Config, num_pages: int | None = None,
                 num_slots: int | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.load.device)
        self.model = build_model(cfg)
        self.kv_pool: KVPool | None = None
        self.state_pool: StatePool | None = None
        self.graphs: StepGraphs | None = None
        if num_pages is not None and num_slots is not None:
            self.allocate_pools(num_pages, num_slots)

    def allocate_pools(self, num_pages: int, num_slots: int) -> None:
        self.graphs = None  # captured over the old pools
        self.kv_pool, self.state_pool = make_pools(self.cfg, num_pages, num_slots)
        self.graphs = self.try_graphs()

    def close(self) -> None:
        """Release the decode graphs: NCCL work captured in a graph holds its communicator,
        and destroy_process_group waits (forever) until every such graph is gone."""
        self.graphs = None
        gc.collect()

    def try_graphs(self, n: int = 1, spec_states=None, max_bs: int | None = None
                   ) -> StepGraphs | None:
        """Captured graphs over the current pools (`make_graphs`), or None: not on CUDA, turned
        off, a dtype the kernels do not cover, or a failed capture (logged; runs eagerly)."""
        if self.device.type != "cuda" or self.cfg.sched.disable_cuda_graph:
            return None
        dtype = TORCH_DTYPES[self.cfg.load.dtype]
        if not kernels_cover(self.device, dtype):  # e.g. float64 numerics checks
            log.info("cuda_graph.off", reason=f"the torch references run for {dtype}")
            return None
        return capture_or_log(lambda: self.make_graphs(n=n, spec_states=spec_states,
                                                        max_bs=max_bs),
                              "decode" if n == 1 else "verify")

    def make_graphs(self, eager: bool = False, n: int = 1, spec_states=None,
                    max_bs: int | None = None) -> StepGraphs:
        """Graphs over the current pools for steps of `n` new tokens per sequence (decode, or
        with `spec_states` the verify of draft chains); `eager`: the same buffers, no capture.
        Batch sizes up to --cuda-graph-max-bs, the running-request limit, the state slots and
        `max_bs`."""
        sched, page = self.cfg.sched, self.kv_pool.page_size
        context = sched.context_length or self.cfg.model.max_position_embeddings
        max_bs = min(sched.cuda_graph_max_bs, sched.max_running_requests or 1 << 30,
                     self.state_pool.num_slots, max_bs or 1 << 30)
        max_pages = min(-(-context // page), self.kv_pool.num_pages)
        return StepGraphs(self.model, self.kv_pool, self.state_pool, self.device, max_bs,
                          max_pages, eager=eager, n=n, spec_states=spec_states)

    def run_model(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward of a built batch: a graph replay when one fits, else eager."""
        if self.graphs is not None and self.graphs.can_run(batch):
            return self.graphs.run(batch)
        return self.model(batch)

    @torch.inference_mode()
    def forward(self, chunks: list[SeqChunk],
                all_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        batch = build_forward_batch(chunks, self.kv_pool, self.state_pool, self.device,
                                    all_logits)
        return self.model(batch)


def _first_line(exc: BaseException | None) -> str | None:
    """An exception's first line (a failed capture's real error is the one it chains)."""
    return str(exc).splitlines()[0] if exc is not None and str(exc) else None


def capture_or_log(capture, what: str):
    """capture() (graphs), or None after a failed capture: logged, those steps run eagerly."""
    try:
        with compile_log.quiet():  # a capture's compiles are expected, not a missed class
            return capture()
    except RuntimeError as exc:  # a host sync in some layer: serve eagerly, loudly
        log.error("cuda_graph.capture_failed", graphs=what, error=_first_line(exc),
                  cause=_first_line(exc.__cause__ or exc.__context__),
                  hint="these steps run eagerly; --disable-cuda-graph silences this")
        return None
