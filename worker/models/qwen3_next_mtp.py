"""The Qwen3-Next multi-token-prediction head (`mtp.*` tensors), a one-layer draft model.

x = fc([norm_emb(embed(next_token)) | norm_hidden(h)]) -> one full-attention + MoE decoder layer
-> norm -> the target's lm_head. It reuses the target's embedding and lm_head (passed in, not
copied) and keeps K/V for its single attention layer in its own KV pool (kv_layer 0). `h` is the
target's final normed hidden state at the previous position. Legend: T = tokens, H = hidden.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from qnext.worker.config import FULL, ModelConfig
from qnext.worker.forward import ForwardBatch
from qnext.worker.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from qnext.worker.layers.linear import ReplicatedLinear
from qnext.worker.layers.norm import RMSNorm
from qnext.worker.models.qwen3_next import CHECKPOINT_RULES, make_decoder_layer


def mtp_layer_config(cfg: ModelConfig) -> ModelConfig:
    """The draft's one layer: full attention with a MoE MLP."""
    return replace(cfg, layer_types=(FULL,), moe_layers=(cfg.num_experts > 0,))


class Qwen3NextMTP(nn.Module):
    checkpoint_rules = CHECKPOINT_RULES
    checkpoint_prefix = "mtp."

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.hidden_size
        self.fc = ReplicatedLinear(2 * hidden, hidden)
        self.pre_fc_norm_embedding = RMSNorm(hidden, cfg.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(hidden, cfg.rms_norm_eps)
        self.layers = nn.ModuleList([make_decoder_layer(mtp_layer_config(cfg), 0)])
        self.norm = RMSNorm(hidden, cfg.rms_norm_eps)

    def forward(self, batch: ForwardBatch, prev_hidden: torch.Tensor,
                embed_tokens: VocabParallelEmbedding,
                lm_head: ParallelLMHead) -> tuple[torch.Tensor, torch.Tensor]:
        """prev_hidden [T, H] pairs with batch.input_ids [T]; returns (logits, hidden [T, H])."""
        emb = self.pre_fc_norm_embedding(embed_tokens(batch.input_ids))
        x = self.fc(torch.cat([emb, self.pre_fc_norm_hidden(prev_hidden)], dim=-1))
        x, residual = self.layers[0](x, None, batch)
        hidden = self.norm(x, residual, reduce=True)[0]
        return lm_head(hidden[batch.logits_indices]), hidden
