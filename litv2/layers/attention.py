"""The attentions LITv2 is compared against, with HiLo's ``forward(x, H, W)`` interface.

* :class:`Attention` - standard global MSA, optionally with LITv1's relative position bias.
* :class:`SpatialReductionAttention` - PVT's SRA: keys/values from a strided-conv-reduced map.
* :class:`WindowAttention` - Swin's W-MSA, optionally with shifted windows.
* Twins' T-MSA is not a layer of its own but an alternation, built by :func:`build_attention`:
  even blocks use local windows (LSA), odd blocks global sub-sampled attention (GSA).

All use ``scaled_dot_product_attention`` so measured speed reflects the best kernel the
device has, not a hand-written softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ATTENTION_KINDS
from .hilo import HiLo, check_heads
from .rel_pos import RelativePositionBias
from .windows import check_window, pad_to_multiple, window_partition, window_reverse


class _HeadsMixin(nn.Module):
    """Common head bookkeeping: head split, logit scale and attention dropout."""

    def _init_heads(self, dim: int, num_heads: int, qk_scale: float | None, attn_drop: float, proj_drop: float) -> None:
        check_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, heads, N, head_dim)``."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.dim)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(x))


class Attention(_HeadsMixin):
    """Standard multi-head self-attention over all ``H*W`` tokens.

    Args:
        rel_pos_max: when given, the largest ``(H, W)`` map; adds LITv1's relative position bias.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_max: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self._init_heads(dim, num_heads, qk_scale, attn_drop, proj_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rel_pos = RelativePositionBias(rel_pos_max, num_heads) if rel_pos_max is not None else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.rel_pos(H, W) if self.rel_pos is not None else None
        return self._project(self._attend(q, k, v, bias))


class SpatialReductionAttention(_HeadsMixin):
    """PVT's spatial-reduction attention: keys/values from a ``sr_ratio``-strided conv map."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        sr_ratio: int = 2,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio={sr_ratio!r} must be an integer >= 1")
        self._init_heads(dim, num_heads, qk_scale, attn_drop, proj_drop)
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q = self._heads(self.q(x))
        if self.sr_ratio > 1:
            # ceil_mode-like behaviour for maps smaller than the ratio: pad up to one window.
            grid = pad_to_multiple(x.reshape(batch, H, W, channels), self.sr_ratio).permute(0, 3, 1, 2)
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        return self._project(self._attend(q, k, v))


class WindowAttention(_HeadsMixin):
    """Swin's window attention; with ``shift`` the windows move by half a window (SW-MSA)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 7,
        shift: bool = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = False,
    ) -> None:
        super().__init__()
        check_window(window_size)
        self._init_heads(dim, num_heads, qk_scale, attn_drop, proj_drop)
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rel_pos = RelativePositionBias((window_size, window_size), num_heads) if rel_pos_bias else None
        self._mask_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _shift_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``(nW, T, T)`` additive mask keeping tokens of different pre-shift regions apart."""
        key = (height, width, str(device))
        if key not in self._mask_cache:
            ws, s = self.window_size, self.shift_size
            regions = torch.zeros(1, height, width, 1)
            label = 0
            for rows in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                for cols in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                    regions[:, rows, cols, :] = label
                    label += 1
            labels = window_partition(regions, ws).squeeze(-1)
            mask = (labels[:, None, :] != labels[:, :, None]).float() * -100.0
            self._mask_cache[key] = mask.to(device)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        ws = self.window_size
        grid = pad_to_multiple(x.reshape(batch, H, W, channels), ws)
        padded_h, padded_w = grid.shape[1], grid.shape[2]
        shift = self.shift_size if min(padded_h, padded_w) > ws else 0
        if shift:
            grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(grid, ws)
        qkv = self.qkv(windows).reshape(windows.shape[0], ws * ws, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_pos(ws, ws) if self.rel_pos is not None else None
        if shift:
            mask = self._shift_mask(padded_h, padded_w, x.device)
            mask = mask.unsqueeze(0).expand(batch, -1, -1, -1).reshape(-1, 1, ws * ws, ws * ws)
            bias = mask if bias is None else mask + bias
        out = window_reverse(self._attend(q, k, v, bias), ws, padded_h, padded_w)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :H, :W].reshape(batch, tokens, channels)
        return self._project(out)


def build_attention(
    kind: str,
    dim: int,
    num_heads: int,
    *,
    window_size: int = 2,
    alpha: float = 0.9,
    sr_ratio: int = 1,
    rel_pos_bias: bool = False,
    shift: bool = True,
    block_index: int = 0,
    max_size: tuple[int, int] = (14, 14),
    qkv_bias: bool = True,
    attn_drop: float = 0.0,
    lofi_valid_average: bool = False,
) -> nn.Module:
    """One attention layer of ``kind`` for the ``block_index``-th block of a stage.

    ``max_size`` is the stage's feature map at the model's nominal input size; it sizes the
    global relative position bias of ``msa``. ``block_index`` drives the alternations of
    Swin (shifted windows on odd blocks) and Twins (global sub-sampled attention on odd blocks).
    ``lofi_valid_average`` applies to HiLo only (see :class:`~litv2.layers.HiLo`).
    """
    common = dict(qkv_bias=qkv_bias, attn_drop=attn_drop)
    if kind == "hilo":
        return HiLo(dim, num_heads, window_size=window_size, alpha=alpha, rel_pos_bias=rel_pos_bias,
                    lofi_valid_average=lofi_valid_average, **common)
    if kind == "msa":
        return Attention(dim, num_heads, rel_pos_max=max_size if rel_pos_bias else None, **common)
    if kind == "sra":
        return SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, **common)
    if kind == "wmsa":
        return WindowAttention(
            dim, num_heads, window_size=window_size, shift=shift and block_index % 2 == 1,
            rel_pos_bias=rel_pos_bias, **common,
        )
    if kind == "tmsa":
        if block_index % 2 == 0:
            return WindowAttention(dim, num_heads, window_size=window_size, **common)
        return SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, **common)
    raise ValueError(f"attention kind {kind!r} is unknown; expected one of {', '.join(ATTENTION_KINDS)}")
