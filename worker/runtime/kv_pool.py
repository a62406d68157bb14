"""Paged K/V storage for the full-attention layers of one rank.

Token slot `kv_loc = page_id * page_size + offset`; every layer has K and V tensors of shape
[num_pages * page_size, Hkv_local, D]. Page 0 is reserved as the padding target, so allocators
hand out pages 1..num_pages-1. Allocation of page ids is the scheduler's job (pure Python).
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (num_layers, num_pages * page_size, num_kv_heads, head_dim)
        self.page_size = page_size
        self.num_pages = num_pages
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def kv(self, kv_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[kv_layer], self.v[kv_layer]

    @property
    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
