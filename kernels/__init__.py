"""qnext.kernels: pure-PyTorch reference kernels (the CPU path and the oracles for GPU kernels); the
Triton launchers live in their own modules (imported only where triton is installed)."""

from __future__ import annotations

from .attention_ref import kv_locs_ref, paged_attention_ref, store_kv_ref
from .conv_ref import causal_conv1d_update_ref, causal_conv1d_varlen_ref
from .gdn_ref import (
    chunk_gated_delta_rule_ref,
    fused_recurrent_gated_delta_rule_ref,
    gdn_gating_ref,
    l2norm_ref,
    recurrent_gated_delta_rule_ref,
)
from .moe_ref import fused_moe_ref, moe_route_ref
from .norm_ref import gated_rms_norm_ref, rms_norm_ref
from .rope_ref import apply_rope_ref, rope_cos_sin_ref
from .verify_ref import conv_verify_ref, gdn_verify_ref

__all__ = [
    "apply_rope_ref",
    "causal_conv1d_update_ref",
    "causal_conv1d_varlen_ref",
    "chunk_gated_delta_rule_ref",
    "conv_verify_ref",
    "fused_moe_ref",
    "fused_recurrent_gated_delta_rule_ref",
    "gated_rms_norm_ref",
    "gdn_gating_ref",
    "gdn_verify_ref",
    "kv_locs_ref",
    "l2norm_ref",
    "moe_route_ref",
    "paged_attention_ref",
    "recurrent_gated_delta_rule_ref",
    "rms_norm_ref",
    "rope_cos_sin_ref",
    "store_kv_ref",
]
