"""Transformer blocks: attention + FFN, and FFN-only (the MLP-only early stages of LIT)."""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn


class FFNBlock(nn.Module):
    """``x + FFN(LN(x))``: LIT's early stages drop attention entirely."""

    def __init__(self, dim: int, mlp: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class AttentionBlock(FFNBlock):
    """``x + Attn(LN(x))`` then ``x + FFN(LN(x))``, any attention with ``forward(x, H, W)``."""

    def __init__(self, dim: int, attn: nn.Module, mlp: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__(dim, mlp, drop_path)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return super().forward(x, H, W)
