"""Patch embedding and token merging between stages.

DTM (deformable token merging, LITv1) is a 2x2 stride-2 deformable conv whose sampling
offsets come from an ordinary 2x2 stride-2 conv initialised to zero (so it starts as a plain
strided conv), followed by BatchNorm and GELU. Plain Swin patch merging is the alternative.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d


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


class DeformConv2d(nn.Module):
    """Deformable conv with its own offset predictor (``conv_offset``), mmcv's layout."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, stride=stride)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride)


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
