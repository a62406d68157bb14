"""TP-aware building blocks: linear / embedding / norms / rotary / gated attention / Gated
DeltaNet / MoE, plus TP identity and collectives (`parallel`). Layers take sizes, not configs."""
