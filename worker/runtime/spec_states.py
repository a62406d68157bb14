"""Per-draft-step recurrent states of speculative verify, and their commit into the pool.

A verify forward runs n draft tokens per sequence without touching the state pool: each GDN
layer writes the conv window and the delta-rule state after every draft step into these
buffers, row b for the batch's sequence b. Once acceptance is known, `commit` copies each
sequence's accepted step into its slot — the rollback of rejected steps is simply not copying
them. Memory: rows × n × (conv + ssm state of every GDN layer), i.e. n times a state slot per
running request: the memory plan reserves it (`sched.memory.reserve_spec_states`) and the
executor allocates the buffers once for the plan's running requests (`rows`: a step's view).
"""

from __future__ import annotations

import torch

from qnext.worker.runtime.state_pool import StatePool


class SpecStateBuffers:
    """[layers, rows, n, ...] conv and ssm buffers shaped like the pool's slots."""

    def __init__(self, pool: StatePool | None, rows: int, num_draft: int,
                 tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.num_draft = num_draft
        if tensors is not None:
            self.conv_all, self.ssm_all = tensors
            return
        conv, ssm = pool.conv_states, pool.ssm_states  # [layers, S, ...]
        self.conv_all = torch.zeros((conv.shape[0], rows, num_draft, *conv.shape[2:]),
                                    dtype=conv.dtype, device=conv.device)
        self.ssm_all = torch.zeros((ssm.shape[0], rows, num_draft, *ssm.shape[2:]),
                                   dtype=ssm.dtype, device=ssm.device)

    def rows(self, count: int) -> SpecStateBuffers:
        """The first `count` rows (views): one verify step's buffers."""
        return SpecStateBuffers(None, count, self.num_draft,
                                (self.conv_all[:, :count], self.ssm_all[:, :count]))

    def conv(self, state_layer: int) -> torch.Tensor:
        return self.conv_all[state_layer]

    def ssm(self, state_layer: int) -> torch.Tensor:
        return self.ssm_all[state_layer]

    def copy_out(self, pool: StatePool, slots: torch.Tensor, rows: torch.Tensor,
                 steps: torch.Tensor) -> None:
        """pool slot slots[i] <- the state after draft step steps[i] of row rows[i], every
        layer (int64 tensors on the pool's device)."""
        pool.conv_states[:, slots] = self.conv_all[:, rows, steps]
        pool.ssm_states[:, slots] = self.ssm_all[:, rows, steps]

    def commit(self, pool: StatePool, slots: torch.Tensor, steps: torch.Tensor) -> None:
        """pool slot slots[b] <- the state after draft step steps[b] of row b: each
        sequence's accepted step. slots, steps int64 [B] on the pool's device."""
        self.copy_out(pool, slots, torch.arange(slots.shape[0], device=slots.device), steps)
