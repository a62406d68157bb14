"""Vocab-parallel embedding and LM head: each rank holds a contiguous slice of the vocabulary
(padded up to a multiple of tp_size); the embedding all-reduces, the head all-gathers logits.
Legend: T = tokens, V = vocab, H = hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnext.worker.layers.linear import copy_checked, dense, set_loader
from qnext.worker.layers.parallel import get_tp_info


def _vocab_range(vocab_size: int) -> tuple[int, int]:
    tp = get_tp_info()
    per_rank = -(-vocab_size // tp.size)
    return tp.rank * per_rank, (tp.rank + 1) * per_rank


def _load_vocab_rows(param: nn.Parameter, tensor: torch.Tensor, start: int) -> None:
    """Copy this rank's rows; rows past the real vocabulary (padding) are zeroed."""
    rows = tensor[start:start + param.shape[0]]
    param.data.zero_()
    copy_checked(param.data[:rows.shape[0]], rows)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.start, self.end = _vocab_range(vocab_size)
        self.comm = get_tp_info().comm
        self.weight = set_loader(nn.Parameter(torch.empty(self.end - self.start, hidden_size)),
                                 lambda p, t: _load_vocab_rows(p, t, self.start))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.comm.size == 1:
            return F.embedding(input_ids, self.weight)
        local = (input_ids >= self.start) & (input_ids < self.end)
        ids = torch.where(local, input_ids - self.start, 0)
        out = F.embedding(ids, self.weight) * local.unsqueeze(-1).to(self.weight.dtype)
        return self.comm.all_reduce(out)  # [T, H]


class ParallelLMHead(nn.Module):
    """Untied output projection; returns full-vocabulary logits on every rank."""

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.start, self.end = _vocab_range(vocab_size)
        self.comm = get_tp_info().comm
        self.weight = set_loader(nn.Parameter(torch.empty(self.end - self.start, hidden_size)),
                                 lambda p, t: _load_vocab_rows(p, t, self.start))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = dense(hidden, self.weight)  # [N, V / tp]
        return self.comm.all_gather(logits, dim=-1)[:, :self.vocab_size]
