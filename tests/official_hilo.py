"""HiLo as the official dense-prediction code computes it: the reference of the equivalence tests.

Written from the official semantics with plain matmul-softmax and explicit per-window loops,
sharing nothing with ``litv2`` but the layer's weights. Our reading of the official
detection/segmentation HiLo (``forward(x, H, W)``):

1. ``x`` is reshaped to ``(B, H, W, C)`` and zero-padded at the bottom/right to a multiple
   of the window **before** ``hifi()`` and ``lofi()`` are called, so every projection
   (``h_qkv``, ``l_q``, ``l_kv``) sees the padded map: a padded token is a zero input, and its
   query/key/value are the projection biases.
2. Hi-Fi: self-attention inside each ``ws x ws`` window of the padded map, the padded tokens
   taking part as keys/values like any other (no mask).
3. Lo-Fi: queries from every token of the padded map; keys/values from ``l_kv`` of
   ``AvgPool2d(ws, ws)`` over the padded map, so the zeros count in the border windows'
   averages. A window of 1 pools nothing (and every head is Lo-Fi).
4. Both outputs go through their projections, are cropped back to ``H x W`` and are
   concatenated as ``[Hi-Fi, Lo-Fi]`` channels.

With ``valid_average`` the Lo-Fi keys/values instead average each window over the tokens of
the unpadded map it covers (``litv2``'s ``lofi_valid_average``); everything else is as above.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


def _window_means(grid: torch.Tensor, ws: int, rows: int, cols: int) -> torch.Tensor:
    """Mean of every ``ws x ws`` window of a ``(B, H, W, C)`` map, slicing clipped at its border."""
    return torch.stack([
        torch.stack([grid[:, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws].mean(dim=(1, 2)) for c in range(cols)], 1)
        for r in range(rows)
    ], 1)


def official_hilo(hilo: nn.Module, x: torch.Tensor, H: int, W: int, valid_average: bool = False) -> torch.Tensor:
    """Output of ``hilo``'s weights on ``x`` (``(B, H*W, C)``) under the official semantics."""
    batch, _, channels = x.shape
    ws, d, scale = hilo.window_size, hilo.head_dim, hilo.scale
    unpadded = x.reshape(batch, H, W, channels)
    grid = F.pad(unpadded, (0, 0, 0, -W % ws, 0, -H % ws))  # step 1: pad first, zeros
    padded_h, padded_w = grid.shape[1], grid.shape[2]
    rows, cols = padded_h // ws, padded_w // ws
    outputs = []
    if hilo.h_heads > 0:  # step 2
        qkv = F.linear(grid, hilo.h_qkv.weight, hilo.h_qkv.bias)
        out = torch.empty(batch, padded_h, padded_w, hilo.h_dim, device=x.device, dtype=qkv.dtype)
        for r in range(rows):
            for c in range(cols):
                window = qkv[:, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws].reshape(batch, ws * ws, 3, hilo.h_heads, d)
                q, k, v = window.permute(2, 0, 3, 1, 4)
                attended = _attend(q, k, v, scale).transpose(1, 2).reshape(batch, ws, ws, hilo.h_dim)
                out[:, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws] = attended
        outputs.append(F.linear(out, hilo.h_proj.weight, hilo.h_proj.bias)[:, :H, :W])
    if hilo.l_heads > 0:  # step 3
        q = F.linear(grid, hilo.l_q.weight, hilo.l_q.bias).reshape(batch, -1, hilo.l_heads, d).transpose(1, 2)
        pooled = _window_means(unpadded if valid_average else grid, ws, rows, cols) if ws > 1 else grid
        kv = F.linear(pooled.reshape(batch, -1, channels), hilo.l_kv.weight, hilo.l_kv.bias)
        k, v = kv.reshape(batch, -1, 2, hilo.l_heads, d).permute(2, 0, 3, 1, 4)
        out = _attend(q, k, v, scale).transpose(1, 2).reshape(batch, padded_h, padded_w, hilo.l_dim)
        outputs.append(F.linear(out, hilo.l_proj.weight, hilo.l_proj.bias)[:, :H, :W])
    return torch.cat(outputs, dim=-1).reshape(batch, H * W, channels)  # step 4


class OfficialHiLo(nn.Module):
    """Runs a HiLo layer's weights through :func:`official_hilo` (to swap into a whole model)."""

    def __init__(self, hilo: nn.Module) -> None:
        super().__init__()
        self.hilo = hilo

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return official_hilo(self.hilo, x, H, W, valid_average=self.hilo.lofi_valid_average)
