"""Sparse MoE block (softmax router, top-k, optional renormalisation, SwiGLU experts, a shared
expert scaled by sigmoid(shared_expert_gate(x))) and the dense SwiGLU MLP.

TP splits every expert along its intermediate dim (w13 column-, w2 row-parallel); the router is
replicated; routed and shared partial sums are added locally and reduced once (or left to the
caller: `reduce_results=False`, as in the decoder layer, whose next norm reduces). On CUDA the
router, the routing and the routed experts run the Triton kernels (`kernels/moe.py`'s
`fused_moe_from_hidden`), elsewhere the torch references (`layers/backend.py`).
When the shared expert is as wide as a routed one (Qwen3-Next: 512), it is fused: expert E of
the stacked weights, picked by every token as an extra (k+1)-th choice with weight
sigmoid(shared_expert_gate(x)), whose weight row is row E of the router and whose slot the
routing kernel writes — one grouped GEMM pair instead of three more GEMMs and a gated add
(docs/perf/moe.md: ≈ 10 µs a layer at decode). Other widths keep a dense shared MLP. The
checkpoint's `shared_expert.*` tensors load into those slots (`CHECKPOINT_RULES` in
models/qwen3_next.py).
The router's rows (E, + 1 with the fused shared gate) are padded with zero rows to a multiple of
`ROUTER_ALIGN`, and the logits sliced back: 513 rows sent cuBLAS to an unaligned split-K GEMM
and a reduce at batch 8 (≈ 10.8 µs a layer on 4 x H200, docs/perf/serving.md).
Legend: T = tokens, H = hidden, E = experts, I = local intermediate size, k = experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qnext.kernels import fused_moe_ref, moe_route_ref
from qnext.worker.layers.backend import use_triton
from qnext.worker.layers.linear import (
    ColumnParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    copy_checked,
    set_loader,
)
from qnext.worker.layers.parallel import get_tp_info, shard_range

ROUTER_ALIGN = 16


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); the reduce can be deferred to the caller."""

    def __init__(self, hidden_size: int, intermediate_size: int,
                 reduce_results: bool = True) -> None:
        super().__init__()
        self.gate_proj = ColumnParallelLinear(hidden_size, intermediate_size)
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, reduce_results)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class FusedExperts(nn.Module):
    """All experts stacked: w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I] (weights
    only: SparseMoE runs them)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        tp = get_tp_info()
        self.cols = shard_range(intermediate_size, tp.rank, tp.size)
        local = self.cols[1] - self.cols[0]
        self.w13 = set_loader(nn.Parameter(torch.empty(num_experts, 2 * local, hidden_size)),
                              self._load_w13, num_loads=2 * num_experts)
        self.w2 = set_loader(nn.Parameter(torch.empty(num_experts, hidden_size, local)),
                             self._load_w2, num_loads=num_experts)

    def _load_w13(self, param: nn.Parameter, tensor: torch.Tensor, shard: str,
                  expert: str | None = None) -> None:
        """Expert `expert`'s gate or up rows; no expert: the fused shared expert (the last)."""
        local = param.shape[1] // 2
        rows = slice(0, local) if shard == "gate" else slice(local, 2 * local)
        index = -1 if expert is None else int(expert)
        copy_checked(param.data[index, rows], tensor[self.cols[0]:self.cols[1]])

    def _load_w2(self, param: nn.Parameter, tensor: torch.Tensor,
                 expert: str | None = None) -> None:
        index = -1 if expert is None else int(expert)
        copy_checked(param.data[index], tensor[:, self.cols[0]:self.cols[1]])


class SparseMoE(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 shared_intermediate_size: int, norm_topk_prob: bool,
                 reduce_results: bool = True) -> None:
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.reduce_results = reduce_results
        self.norm_topk_prob = norm_topk_prob
        self.comm = get_tp_info().comm
        self.fused_shared = shared_intermediate_size == intermediate_size > 0
        self.router_rows = num_experts + self.fused_shared
        padded = -(-self.router_rows // ROUTER_ALIGN) * ROUTER_ALIGN
        self.gate = ReplicatedLinear(hidden_size, padded)
        # the checkpoint's router (and, fused, the shared expert's gate) fill its first rows
        set_loader(self.gate.weight, self._load_gate, num_loads=1 + self.fused_shared)
        self.experts = FusedExperts(self.router_rows, hidden_size, intermediate_size)
        self.shared_expert = self.shared_expert_gate = None
        if shared_intermediate_size and not self.fused_shared:
            self.shared_expert = MLP(hidden_size, shared_intermediate_size, reduce_results=False)
            self.shared_expert_gate = ReplicatedLinear(hidden_size, 1)

    def _load_gate(self, param: nn.Parameter, tensor: torch.Tensor, row: str | None = None) -> None:
        """The router's rows, or (row "shared") the shared expert's gate as row E."""
        E = self.num_experts
        copy_checked(param.data[E:E + 1] if row else param.data[:E], tensor)
        param.data[self.router_rows:].zero_()  # the padding

    def experts_out(self, x: torch.Tensor, combine: bool = True):
        """The routed experts' sum (and the fused shared expert's) [T, H], partial over ranks
        (combine=False, Triton only: the `ExpertRows` before the per-token sum). Routing: k
        experts per token, or k + 1 with the fused shared expert (id E, weight sigmoid of its
        gate) last."""
        w13, w2 = self.experts.w13, self.experts.w2
        routing = (self.top_k, self.norm_topk_prob, self.fused_shared)
        if use_triton(x):
            from qnext.kernels.moe import fused_moe_from_hidden

            return fused_moe_from_hidden(x, self.gate.weight, self.router_rows, w13, w2,
                                         *routing, combine=combine)
        logits = self.gate(x)[:, :self.router_rows]
        return fused_moe_ref(x, w13, w2, *moe_route_ref(logits, *routing))

    def forward(self, x: torch.Tensor):
        """[T, H]; or, when the caller reduces (reduce_results=False) and its norm can sum the
        experts' rows in its own kernel (one rank, or the fused all-reduce), the uncombined
        `ExpertRows`."""
        if not self.reduce_results and self.shared_expert is None and use_triton(x) \
                and self.comm.fuses_expert_rows:
            return self.experts_out(x, combine=False)
        out = self.experts_out(x)  # [T, H] partial over ranks
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return self.comm.all_reduce(out) if self.reduce_results else out

