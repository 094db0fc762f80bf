"""Swin-style relative position bias, usable at any map size up to the one it was built for.

LITv1 adds a learned bias per (relative offset, head) to the attention logits instead of an
absolute position embedding. The table covers offsets up to ``max_size - 1`` along each axis,
so any smaller map (a proxy resolution, a cropped detection input) indexes it directly.
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn


class RelativePositionBias(nn.Module):
    """Learned bias ``(heads, Hq*Wq, Hk*Wk)`` for queries and keys on grids of equal extent.

    Args:
        max_size: largest (height, width) of the token grid this bias must serve.
        num_heads: heads that each get their own table column.
    """

    def __init__(self, max_size: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.max_size = (int(max_size[0]), int(max_size[1]))
        mh, mw = self.max_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * mh - 1) * (2 * mw - 1), num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._index_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _index(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, str(device))
        if key not in self._index_cache:
            coords = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")).flatten(1)
            rel = coords[:, :, None] - coords[:, None, :]
            mh, mw = self.max_size
            index = (rel[0] + mh - 1) * (2 * mw - 1) + (rel[1] + mw - 1)
            self._index_cache[key] = index.to(device)
        return self._index_cache[key]

    def forward(self, height: int, width: int) -> torch.Tensor:
        if height > self.max_size[0] or width > self.max_size[1]:
            raise ValueError(
                f"relative position bias built for maps up to {self.max_size}, got a {height}x{width} map; "
                "build the model with a larger img_size"
            )
        index = self._index(height, width, self.relative_position_bias_table.device)
        bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.reshape(height * width, height * width, -1).permute(2, 0, 1)
