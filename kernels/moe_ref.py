"""Sparse MoE references: softmax top-k routing and the SwiGLU expert mixture; imports only torch.

Legend: T = tokens, H = hidden size, I = expert intermediate size, E = experts held locally,
k = experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qnext.kernels.precision import acc, acc_dtype


def moe_route_ref(router_logits: Tensor, top_k: int, renormalize: bool,
                  shared: bool = False) -> tuple[Tensor, Tensor]:
    """router_logits [T, E] -> (topk_weights float32 [T, k], topk_ids int64 [T, k]).

    Softmax over experts in float32, keep the top k; if renormalize, rescale them to sum to 1.
    With `shared` the last logit column is a shared expert's gate: the expert E = columns - 1
    is appended to every token's choices with weight sigmoid(that logit).
    """
    routed = router_logits[:, :-1] if shared else router_logits
    probs = torch.softmax(acc(routed), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    ids = ids.to(torch.int64)
    if not shared:
        return weights, ids
    gate = torch.sigmoid(router_logits[:, -1:].float())
    return (torch.cat([weights, gate], dim=1),
            torch.cat([ids, torch.full_like(ids[:, :1], routed.shape[1])], dim=1))


def _expert_mlp(x: Tensor, w13: Tensor, w2: Tensor) -> Tensor:
    """SwiGLU of one expert in x.dtype. x [n, H]; w13 [2I, H] (gate rows first); w2 [H, I]."""
    inter = w13.shape[0] // 2
    h = x @ w13.t()  # [n, 2I]
    act = F.silu(h[:, :inter]) * h[:, inter:]  # [n, I]
    return act @ w2.t()  # [n, H]


def fused_moe_ref(
    x: Tensor, w13: Tensor, w2: Tensor, topk_weights: Tensor, topk_ids: Tensor
) -> Tensor:
    """Routed expert mixture. x [T, H]; w13 [E, 2I, H]; w2 [E, H, I]; topk_* [T, k].

    out[t] = sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]). Expert matmuls run in
    x.dtype like an ordinary linear layer; the weighted sum accumulates in float32.
    Ids outside [0, E) are skipped (contribute nothing): under expert parallelism a rank holds
    only some experts, and the caller maps its experts to local ids [0, E) and others outside.
    Returns [T, H] in x.dtype.
    """
    num_experts = w13.shape[0]
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=acc_dtype(x), device=x.device)
    ids = topk_ids.to(torch.int64)
    valid = (ids >= 0) & (ids < num_experts)
    for e in torch.unique(ids[valid]).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)  # assignments routed to expert e
        y = _expert_mlp(x[tok], w13[e].to(x.dtype), w2[e].to(x.dtype))  # [n, H]
        out.index_add_(0, tok, acc(y) * acc(topk_weights[tok, slot])[:, None])
    return out.to(x.dtype)
