"""Test-side helpers: run sequences through a qnext ModelRunner with a trivial page/slot
allocator, and compute reference logits with transformers' Qwen3NextForCausalLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from qnext.worker.config import CacheConfig, Config, LoadConfig, ModelConfig, ParallelConfig
from qnext.worker.runtime.inputs import SeqChunk
from qnext.worker.runtime.model_runner import ModelRunner
from tests.unit.kernels.helpers import hf_fn


def make_config(path: Path, dtype: str = "float32", device: str = "cpu", page_size: int = 1,
                tp_size: int = 1, ssm_dtype: str = "float32") -> Config:
    return Config(model=ModelConfig.from_dir(path),
                  load=LoadConfig(model_path=str(path), dtype=dtype, device=device),
                  parallel=ParallelConfig(tp_size=tp_size),
                  cache=CacheConfig(page_size=page_size, mamba_ssm_dtype=ssm_dtype))


@dataclass
class Seq:
    slot: int
    pages: list[int]
    num_cached: int = 0
    tokens: list[int] = field(default_factory=list)


class Harness:
    """Hands out slots and pages in order (page 0 / slot 0 stay reserved)."""

    def __init__(self, cfg: Config, max_tokens: int = 256, max_seqs: int = 40) -> None:
        self.page_size = cfg.cache.page_size
        num_pages = 1 + max_seqs * (-(-max_tokens // self.page_size))
        self.runner = ModelRunner(cfg, num_pages=num_pages, num_slots=max_seqs + 1)
        self.max_pages = -(-max_tokens // self.page_size)
        self.next_seq = 0

    def new_seq(self) -> Seq:
        self.next_seq += 1
        first = 1 + (self.next_seq - 1) * self.max_pages
        # pages deliberately reversed: a sequence's pages need not be contiguous or ascending
        return Seq(slot=self.next_seq, pages=list(range(first + self.max_pages - 1, first - 1, -1)))

    def close(self) -> None:
        """Drop the runner's decode graphs (before a TP process leaves its group)."""
        self.runner.close()

    def step(self, work: list[tuple[Seq, list[int]]], all_logits: bool = False) -> torch.Tensor:
        """Run one forward where each (seq, new_tokens) advances its sequence."""
        chunks = [SeqChunk(toks, s.num_cached, s.slot, s.pages) for s, toks in work]
        logits, _ = self.runner.forward(chunks, all_logits=all_logits)
        for seq, toks in work:
            seq.num_cached += len(toks)
            seq.tokens += toks
        return logits if logits.dtype == torch.float64 else logits.float()


def hf_model(path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """transformers' Qwen3-Next on its own torch code (`_torch_kernels_only`)."""
    from transformers import Qwen3NextForCausalLM

    _torch_kernels_only()
    model = Qwen3NextForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def _torch_kernels_only() -> None:
    """transformers runs Qwen3-Next's delta rule and conv1d through FLA and causal-conv1d
    whenever those packages import (on a GPU machine with the benchmarks' FLA on the path, its
    bf16-dot chunk kernel moved the fp32 reference by 1e-3, docs/validation.md 2026-11-29):
    point the module's wrapped functions back at the torch code they wrap (`hf_fn`)."""
    from transformers.models.qwen3_next import modeling_qwen3_next as m

    for name, fn in list(vars(m).items()):
        if name.startswith(("torch_", "causal_conv1d")) and hasattr(fn, "__wrapped__"):
            setattr(m, name, hf_fn(name))


@torch.inference_mode()
def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    """[L, V] float32 logits of every position of one sequence."""
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)
    return model(input_ids=ids).logits[0].float()


def random_prompt(gen: torch.Generator, length: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=gen).tolist()


def _pool_tensors(runner) -> tuple[torch.Tensor, ...]:
    return (runner.kv_pool.k, runner.kv_pool.v, runner.state_pool.conv_states,
            runner.state_pool.ssm_states)


def copy_pools(runner) -> list[torch.Tensor]:
    """Copies of the runner's K, V, conv and SSM pools (in that order)."""
    return [t.clone() for t in _pool_tensors(runner)]


def restore_pools(runner, saved: list[torch.Tensor]) -> None:
    """Put `copy_pools` copies back."""
    for dst, src in zip(_pool_tensors(runner), saved):
        dst.copy_(src)
