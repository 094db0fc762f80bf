"""Window helpers shared by HiLo's Hi-Fi path and (shifted) window attention.

Maps whose sides are not multiples of the window are padded bottom/right with zeros and
cropped back afterwards, as the official LITv2 detection code does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_window(window_size: int) -> None:
    if window_size < 1:
        raise ValueError(f"window_size={window_size!r} must be an integer >= 1")


def pad_to_multiple(x: torch.Tensor, window: int) -> torch.Tensor:
    """Zero-pad a ``(B, H, W, C)`` map at the bottom/right so both sides divide ``window``."""
    _, height, width, _ = x.shape
    pad_b, pad_r = (-height) % window, (-width) % window
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` with sides divisible by ``window`` -> ``(B * nW, window * window, C)``."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window * window, C)`` -> ``(B, H, W, C)``."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)
