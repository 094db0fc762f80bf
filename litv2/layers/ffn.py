"""Feed-forward networks: the plain MLP of LITv1 and LITv2's ConvFFN.

ConvFFN puts a 3x3 depthwise conv (zero padding) between ``fc1`` and the activation. It
enlarges early receptive fields and supplies the positional information that LITv2 gets
without any position embedding or relative position bias.
"""
from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``; ``forward(x, H, W)`` ignores the map size."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv on a token sequence (official name ``dwconv.dwconv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        grid = x.transpose(1, 2).reshape(batch, channels, H, W)
        return self.dwconv(grid).flatten(2).transpose(1, 2)


class ConvFFN(Mlp):
    """``fc1 -> 3x3 depthwise conv -> GELU -> fc2`` (LITv2's FFN)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__(dim, hidden_dim, drop)
        self.dwconv = DepthwiseConv(hidden_dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.act(self.dwconv(self.fc1(x), H, W))
        return self.drop(self.fc2(self.drop(x)))


def build_ffn(kind: str, dim: int, hidden_dim: int, drop: float = 0.0) -> nn.Module:
    if kind == "mlp":
        return Mlp(dim, hidden_dim, drop)
    if kind == "convffn":
        return ConvFFN(dim, hidden_dim, drop)
    raise ValueError(f"ffn kind {kind!r} is unknown; expected 'mlp' or 'convffn'")
