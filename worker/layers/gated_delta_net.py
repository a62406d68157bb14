"""Gated DeltaNet (linear attention) with its recurrent state in the state pool.

in_proj_qkvz / in_proj_ba (interleaved per key-head group in the checkpoint) load as one
regrouped GEMM (`layers/gdn_proj.py`); its [q | k | v] columns go through a causal depthwise
conv1d + SiLU whose last K-1 pre-conv inputs are the conv state; q, k are L2-normalised
inside the delta rule; gates are beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias).
TP splits whole key-head groups, so a rank's conv and recurrent state hold only its heads.
On CUDA the Triton kernels run: conv (`kernels/conv_decode.py`, `kernels/conv_prefill.py`)
and the delta rule (`kernels/gdn_decode.py`, `kernels/gdn_prefill.py`), gates and q/k norm
fused; at decode the output norm goes into the delta-rule kernel's epilogue, or, for rows the
output projection's GEMV takes (one by default), into that GEMV (`kernels/gemv.py`); at one
decode row the conv also runs inside the input projection's GEMV; speculative verify in
`layers/gdn_verify.py`.
Legend: T = new tokens, hk / hv = local key / value heads, r = hv / hk, dk / dv = head dims.
"""

from __future__ import annotations

import torch
from torch import nn

from qnext.kernels import (
    causal_conv1d_update_ref,
    causal_conv1d_varlen_ref,
    chunk_gated_delta_rule_ref,
    fused_recurrent_gated_delta_rule_ref,
    gdn_gating_ref,
)
from qnext.worker.forward import ForwardBatch
from qnext.worker.layers.backend import use_triton
from qnext.worker.layers.gdn_proj import GroupedInProj
from qnext.worker.layers.gdn_verify import verify_conv, verify_delta_rule
from qnext.worker.layers.linear import (
    RowParallelLinear,
    dense_takes_conv,
    dense_takes_norm,
    load_blocks,
    load_rows,
    set_loader,
)
from qnext.worker.layers.norm import GatedRMSNorm
from qnext.worker.layers.parallel import get_tp_info


class Conv1dWeight(nn.Module):
    """The depthwise conv weight, stored [C_local, K]; channels split per q / k / v block."""

    def __init__(self, blocks: tuple[int, int, int], kernel_size: int) -> None:
        super().__init__()
        local = sum(blocks) // get_tp_info().size
        self.weight = set_loader(nn.Parameter(torch.empty(local, kernel_size)),
                                 lambda p, t: load_blocks(p, t.reshape(t.shape[0], -1), blocks))


class GatedDeltaNet(nn.Module):
    def __init__(self, hidden_size: int, num_k_heads: int, num_v_heads: int, head_k_dim: int,
                 head_v_dim: int, conv_kernel: int, eps: float, state_layer: int,
                 reduce_results: bool = True) -> None:
        super().__init__()
        tp_size = get_tp_info().size
        if num_k_heads % tp_size:
            raise ValueError(f"linear_num_key_heads {num_k_heads} not divisible by tp {tp_size}")
        self.hk, self.hv = num_k_heads // tp_size, num_v_heads // tp_size
        self.dk, self.dv = head_k_dim, head_v_dim
        self.state_layer = state_layer
        key_dim, value_dim = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        self.in_proj = GroupedInProj(hidden_size, num_k_heads, num_v_heads, head_k_dim,
                                     head_v_dim)
        self.conv1d = Conv1dWeight((key_dim, key_dim, value_dim), conv_kernel)
        # NOTE: the gate parameters stay float32 whatever the model dtype (g is computed in fp32)
        self.A_log = set_loader(nn.Parameter(torch.empty(self.hv, dtype=torch.float32)), load_rows)
        self.dt_bias = set_loader(nn.Parameter(torch.empty(self.hv, dtype=torch.float32)),
                                  load_rows)
        self.norm = GatedRMSNorm(head_v_dim, eps)
        self.out_proj = RowParallelLinear(value_dim, hidden_size, reduce_results)

    def _conv(self, mixed: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        conv_states = batch.state_cache.conv(self.state_layer)
        if batch.is_decode and use_triton(mixed):
            from qnext.kernels.conv_decode import conv_decode

            return conv_decode(mixed, self.conv1d.weight, conv_states=conv_states,
                               state_indices=batch.state_slots,
                               snapshot_slots=batch.snapshot_slots)
        if batch.is_decode:
            return causal_conv1d_update_ref(mixed, self.conv1d.weight, conv_states=conv_states,
                                            state_indices=batch.state_slots,
                                            snapshot_slots=batch.snapshot_slots)
        if use_triton(mixed):  # offsets were checked when the batch was built
            from qnext.kernels.conv_prefill import conv_prefill

            return conv_prefill(
                mixed, self.conv1d.weight, cu_seqlens=batch.cu_seqlens,
                conv_states=conv_states, state_indices=batch.state_slots,
                has_initial_state=batch.has_initial_state, snapshot_slots=batch.snapshot_slots,
                snapshot_offsets=batch.snapshot_offsets, check_snapshots=False)
        return causal_conv1d_varlen_ref(
            mixed, self.conv1d.weight, cu_seqlens=batch.cu_seqlens, conv_states=conv_states,
            state_indices=batch.state_slots, has_initial_state=batch.has_initial_state,
            snapshot_slots=batch.snapshot_slots, snapshot_offsets=batch.snapshot_offsets)

    def _normed_delta_rule(self, q, k, v, a, b, z, batch: ForwardBatch) -> torch.Tensor:
        """The delta rule's output through the gated norm; decode on CUDA does both in one
        kernel (gdn_decode's `norm`)."""
        if batch.is_decode and use_triton(q):
            return self._decode_kernel(q, k, v, a, b, batch,
                                       norm=(z.to(v.dtype), self.norm.weight, self.norm.eps))
        return self.norm(self._delta_rule(q, k, v, a, b, batch), z)

    def _decode_kernel(self, q, k, v, a, b, batch: ForwardBatch, norm=None) -> torch.Tensor:
        from qnext.kernels.gdn_decode import gdn_decode

        return gdn_decode(q, k, v, a, b, self.A_log, self.dt_bias,
                          ssm_states=batch.state_cache.ssm(self.state_layer),
                          state_indices=batch.state_slots, snapshot_slots=batch.snapshot_slots,
                          norm=norm)

    def _norm_in_out_proj(self, v: torch.Tensor, batch: ForwardBatch) -> bool:
        """Decode rows the output projection's GEMV takes with the norm inside: the delta
        rule then runs without its norm epilogue, over more programs (kernels/gemv.py)."""
        return batch.is_decode and dense_takes_norm(v, v.shape[0], self.hv * self.dv, self.dv)

    def _delta_rule(self, q, k, v, a, b, batch: ForwardBatch) -> torch.Tensor:
        ssm_states = batch.state_cache.ssm(self.state_layer)
        if use_triton(q):  # gates fused in the kernels
            return self._prefill_triton(q, k, v, a, b, batch, ssm_states)
        g, beta = gdn_gating_ref(self.A_log, a, b, self.dt_bias)
        if batch.is_decode:
            return fused_recurrent_gated_delta_rule_ref(
                q, k, v, g, beta, ssm_states=ssm_states, state_indices=batch.state_slots,
                snapshot_slots=batch.snapshot_slots)  # decode offsets are all 1
        return chunk_gated_delta_rule_ref(
            q, k, v, g, beta, cu_seqlens=batch.cu_seqlens, ssm_states=ssm_states,
            state_indices=batch.state_slots, has_initial_state=batch.has_initial_state,
            snapshot_slots=batch.snapshot_slots, snapshot_offsets=batch.snapshot_offsets)

    def _prefill_triton(self, q, k, v, a, b, batch: ForwardBatch, ssm_states):
        from qnext.kernels.gdn_prefill import gdn_prefill  # decode: in _normed_delta_rule

        return gdn_prefill(
            q, k, v, a, b, self.A_log, self.dt_bias, cu_seqlens=batch.cu_seqlens,
            ssm_states=ssm_states, state_indices=batch.state_slots,
            has_initial_state=batch.has_initial_state, snapshot_slots=batch.snapshot_slots,
            snapshot_offsets=batch.snapshot_offsets, check_snapshots=False)

    def _projected(self, x: torch.Tensor, batch: ForwardBatch) -> tuple[torch.Tensor, ...]:
        """in_proj and the conv: one decode row on CUDA gets both from one GEMV."""
        if batch.is_decode and dense_takes_conv(x):
            conv = (self.conv1d.weight, batch.state_cache.conv(self.state_layer),
                    batch.state_slots, batch.snapshot_slots)
            return self.in_proj(x, conv=conv)
        mixed, z, b, a = self.in_proj(x)
        mixed = verify_conv(self, mixed, batch) if batch.is_verify else self._conv(mixed, batch)
        return mixed, z, b, a

    def forward(self, x: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        num_tokens = x.shape[0]
        mixed, z, b, a = self._projected(x, batch)
        q, k, v = mixed.split([self.hk * self.dk, self.hk * self.dk, self.hv * self.dv], dim=-1)
        q = q.reshape(num_tokens, self.hk, self.dk)
        k = k.reshape(num_tokens, self.hk, self.dk)
        v = v.reshape(num_tokens, self.hv, self.dv)
        if batch.is_verify:  # every draft step's state kept apart, the pool untouched
            out = self.norm(verify_delta_rule(self, q, k, v, a, b, batch), z)
        elif self._norm_in_out_proj(v, batch):
            out = self._decode_kernel(q, k, v, a, b, batch)
            return self.out_proj(out.reshape(num_tokens, -1), norm=(
                z.flatten(1).to(v.dtype), self.norm.weight, self.norm.eps))
        else:
            out = self._normed_delta_rule(q, k, v, a, b, z, batch)  # [T, hv, dv]
        return self.out_proj(out.reshape(num_tokens, -1))
