"""Qwen3-Next assembled from layers: a pre-norm decoder whose mixer is Gated DeltaNet or gated
full attention (per `ModelConfig.layer_types`) and whose MLP is sparse MoE or dense SwiGLU.

Parameter names follow the Hugging Face checkpoint; `CHECKPOINT_RULES` maps the per-expert
checkpoint tensors onto the stacked expert parameters, and the attention and GDN input
projections onto their one fused weight each. Legend: T = new tokens, H = hidden.
"""

from __future__ import annotations

import torch
from torch import nn

from qnext.worker.config import FULL, ModelConfig
from qnext.worker.forward import ForwardBatch
from qnext.worker.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from qnext.worker.layers.full_attention import GatedAttention
from qnext.worker.layers.gated_delta_net import GatedDeltaNet
from qnext.worker.layers.moe import MLP, SparseMoE
from qnext.worker.layers.norm import RMSNorm

# (checkpoint-name regex, parameter-name template): named groups other than `prefix` become
# keyword arguments of the parameter's weight loader.
CHECKPOINT_RULES = (
    (r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<shard>gate|up)_proj\.weight$",
     r"\g<prefix>.w13"),
    (r"^(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.down_proj\.weight$", r"\g<prefix>.w2"),
    # a shared expert fused into the stacked experts (layers/moe.py), and its gate in the router
    (r"^(?P<prefix>.+\.mlp)\.shared_expert\.(?P<shard>gate|up)_proj\.weight$",
     r"\g<prefix>.experts.w13"),
    (r"^(?P<prefix>.+\.mlp)\.shared_expert\.down_proj\.weight$", r"\g<prefix>.experts.w2"),
    (r"^(?P<prefix>.+\.mlp)\.(?P<row>shared)_expert_gate\.weight$", r"\g<prefix>.gate.weight"),
    # the attention projections as one GEMM (layers/full_attention.py)
    (r"^(?P<prefix>.+\.self_attn)\.(?P<part>q|k|v)_proj\.weight$", r"\g<prefix>.qkv_proj.weight"),
    # the GDN input projections, regrouped into one GEMM (layers/gdn_proj.py)
    (r"^(?P<prefix>.+\.linear_attn)\.in_proj_(?P<part>qkvz|ba)\.weight$",
     r"\g<prefix>.in_proj.weight"),
)


def make_mixer(cfg: ModelConfig, layer_id: int) -> nn.Module:
    """The token mixer of a layer: the one place that reads `layer_types`. Its output is a
    partial sum over the TP ranks (the decoder layer's next norm reduces it)."""
    if cfg.layer_types[layer_id] == FULL:
        return GatedAttention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.rotary_dim, cfg.rope_theta, cfg.rms_norm_eps,
            kv_layer=cfg.full_layer_ids.index(layer_id), reduce_results=False)
    return GatedDeltaNet(
        cfg.hidden_size, cfg.linear_num_key_heads, cfg.linear_num_value_heads,
        cfg.linear_key_head_dim, cfg.linear_value_head_dim, cfg.linear_conv_kernel_dim,
        cfg.rms_norm_eps, state_layer=cfg.linear_layer_ids.index(layer_id),
        reduce_results=False)


def make_mlp(cfg: ModelConfig, is_moe: bool) -> nn.Module:
    """The MLP of a layer; its output too is a partial sum over the TP ranks."""
    if is_moe:
        return SparseMoE(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok,
                         cfg.moe_intermediate_size, cfg.shared_expert_intermediate_size,
                         cfg.norm_topk_prob, reduce_results=False)
    return MLP(cfg.hidden_size, cfg.intermediate_size, reduce_results=False)


class DecoderLayer(nn.Module):
    """h = x + Mixer(Norm(x)); out = h + MLP(Norm(h)), with the residual add fused in the norm.

    Under TP the mixer and the MLP return partial sums; the norm after each all-reduces them,
    in one kernel with the add and the norm where the communicator has one
    (`RMSNorm(reduce=True)`). So `forward` takes and returns x as a partial sum (except the
    first layer's x, the embedding, with no residual yet) and the caller's final norm reduces."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module, hidden_size: int, eps: float,
                 mixer_name: str) -> None:
        super().__init__()
        self.mixer_name = mixer_name
        self.add_module(mixer_name, mixer)
        self.mlp = mlp
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual, reduce=True)
        x = getattr(self, self.mixer_name)(x, batch)
        x, residual = self.post_attention_layernorm(x, residual, reduce=True)
        return self.mlp(x), residual


def make_decoder_layer(cfg: ModelConfig, layer_id: int) -> DecoderLayer:
    name = "self_attn" if cfg.layer_types[layer_id] == FULL else "linear_attn"
    return DecoderLayer(make_mixer(cfg, layer_id), make_mlp(cfg, cfg.moe_layers[layer_id]),
                        cfg.hidden_size, cfg.rms_norm_eps, name)


class Qwen3NextModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(make_decoder_layer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        x, residual = self.embed_tokens(batch.input_ids), None  # [T, H]
        for layer in self.layers:
            x, residual = layer(x, residual, batch)
        return self.norm(x, residual, reduce=True)[0]


class Qwen3NextForCausalLM(nn.Module):
    """The target model. `forward` returns (logits of `batch.logits_indices`, final hidden [T, H])
    — the normed hidden states are what the MTP draft head consumes."""

    checkpoint_rules = CHECKPOINT_RULES
    skip_prefixes = ("mtp.",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=true is not supported (Qwen3-Next unties them)")
        self.config = cfg
        self.model = Qwen3NextModel(cfg)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)

    def forward(self, batch: ForwardBatch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(batch)
        return self.lm_head(hidden[batch.logits_indices]), hidden
