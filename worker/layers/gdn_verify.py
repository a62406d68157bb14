"""The Gated DeltaNet layer in speculative verify: conv and delta rule over each sequence's n
draft tokens (a chain, or a tree following `batch.spec_parents`), reading the committed state
from the pool and writing every draft step's state to `batch.spec_states` — the pool is never
written, so rejected drafts need no rollback. Triton kernels on CUDA
(`kernels/conv_verify.py`, `kernels/gdn_verify.py`, gates fused), the references elsewhere.
Legend: B = sequences, n = draft tokens each, C = conv channels.
"""

from __future__ import annotations

import torch

from qnext.kernels import conv_verify_ref, gdn_gating_ref, gdn_verify_ref
from qnext.worker.forward import ForwardBatch
from qnext.worker.layers.backend import use_triton


def _rows(batch: ForwardBatch) -> tuple[int, int]:
    """(B, n): every sequence of a verify batch has the same number of draft tokens."""
    B = batch.num_seqs
    return B, batch.num_tokens // B


def verify_conv(layer, mixed: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
    """mixed [B * n, C] pre-conv inputs -> conv + SiLU outputs [B * n, C]."""
    B, n = _rows(batch)
    args = dict(conv_states=batch.state_cache.conv(layer.state_layer),
                state_indices=batch.state_slots,
                intermediate_states=batch.spec_states.conv(layer.state_layer)[:B],
                parents=batch.spec_parents)
    x = mixed.view(B, n, -1)
    if use_triton(mixed):
        from qnext.kernels.conv_verify import conv_verify

        return conv_verify(x, layer.conv1d.weight, **args).view(B * n, -1)
    return conv_verify_ref(x, layer.conv1d.weight, **args).view(B * n, -1)


def verify_delta_rule(layer, q, k, v, a, b, batch: ForwardBatch) -> torch.Tensor:
    """q, k [B * n, hk, dk]; v [B * n, hv, dv]; a, b [B * n, hv] raw gates -> o [B * n, hv, dv]."""
    B, n = _rows(batch)
    args = dict(ssm_states=batch.state_cache.ssm(layer.state_layer),
                state_indices=batch.state_slots,
                intermediate_states=batch.spec_states.ssm(layer.state_layer)[:B],
                parents=batch.spec_parents)
    q, k, v = (t.reshape(B, n, *t.shape[1:]) for t in (q, k, v))
    if use_triton(v):
        from qnext.kernels.gdn_verify import gdn_verify

        out = gdn_verify(q, k, v, a.reshape(B, n, -1).contiguous(),
                         b.reshape(B, n, -1).contiguous(), layer.A_log, layer.dt_bias, **args)
    else:
        g, beta = gdn_gating_ref(layer.A_log, a, b, layer.dt_bias)
        out = gdn_verify_ref(q, k, v, g.view(B, n, -1), beta.view(B, n, -1), **args)
    return out.reshape(B * n, *out.shape[2:])
