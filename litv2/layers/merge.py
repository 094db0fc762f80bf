"""Patch embedding and token merging between stages.

DTM (deformable token merging, LITv1) is a 2x2 stride-2 deformable conv whose sampling
offsets come from an ordinary 2x2 stride-2 conv initialised to zero (so it starts as a plain
strided conv), followed by BatchNorm and GELU; the deformable conv itself lives in ``deform``.
Plain Swin patch merging is the alternative.
"""
from __future__ import annotations

import torch
from torch import nn

from .deform import DeformConv2d


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv + LayerNorm; returns tokens and the map size."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if x.shape[-2] < self.patch_size or x.shape[-1] < self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than the patch size {self.patch_size}")
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class DeformableTokenMerging(nn.Module):
    """DTM: deformable 2x2 stride-2 conv -> BatchNorm2d -> GELU, doubling the channels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.dconv = DeformConv2d(dim, out_dim)
        self.norm_layer = nn.BatchNorm2d(out_dim)
        self.act_layer = nn.GELU()

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        batch, _, channels = x.shape
        grid = x.transpose(1, 2).reshape(batch, channels, H, W)
        grid = self.act_layer(self.norm_layer(self.dconv(grid)))
        height, width = grid.shape[-2:]
        return grid.flatten(2).transpose(1, 2), height, width


class PatchMerging(nn.Module):
    """Swin patch merging: concatenate each 2x2 neighbourhood, LayerNorm, linear reduction."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        batch, _, channels = x.shape
        grid = x.reshape(batch, H, W, channels)[:, : H - H % 2, : W - W % 2]
        height, width = H // 2, W // 2
        grid = grid.reshape(batch, height, 2, width, 2, channels).permute(0, 1, 3, 4, 2, 5)
        tokens = grid.reshape(batch, height * width, 4 * channels)
        return self.reduction(self.norm(tokens)), height, width


def build_merge(kind: str, dim: int, out_dim: int) -> nn.Module:
    if kind == "dtm":
        return DeformableTokenMerging(dim, out_dim)
    if kind == "patch":
        return PatchMerging(dim, out_dim)
    raise ValueError(f"merge kind {kind!r} is unknown; expected 'dtm' or 'patch'")
