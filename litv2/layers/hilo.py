"""HiLo attention (LITv2): high-frequency heads in local windows, low-frequency heads global.

``(1 - alpha)`` of the heads (Hi-Fi) attend inside non-overlapping ``window_size`` windows and
keep local detail; ``alpha`` of the heads (Lo-Fi) attend from every query to keys/values
average-pooled over each window and capture global structure at a fraction of the cost.
Parameter names follow the official release (``h_qkv``, ``h_proj``, ``l_q``, ``l_kv``,
``l_proj``) so its checkpoints load unchanged; a path with no heads has no parameters.

Maps whose sides are not multiples of the window follow the official dense-prediction code
(the detection and segmentation backbones): the ``(B, H, W, C)`` map is zero-padded at the
bottom/right to a multiple of the window *before* any projection, both paths run on the
padded map and the result is cropped back to ``H x W``. Padded tokens are zero inputs, so
inside a border window they are Hi-Fi keys/values equal to the projection biases, and a
border window's Lo-Fi average counts the zeros. Checkpoints trained that way (e.g. COCO
backbones at 800x1333) compute what they were trained to compute. ``lofi_valid_average``
instead averages a partial Lo-Fi window over its valid tokens only, for models trained from
scratch at such sizes; Hi-Fi windows are padded either way.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .rel_pos import RelativePositionBias
from .windows import check_window, pad_to_multiple
from ..config import lofi_heads


def project_side_by_side(paths: tuple[tuple[torch.Tensor, nn.Linear], ...]) -> torch.Tensor:
    """``torch.cat([proj(x) for x, proj in paths], -1)`` for biased projections, without the
    concatenation when it can.

    In eager inference each projection writes straight into its channel slice of one output
    buffer. On the CPU the concatenation is not a detail: at the paper's 14x14, batch-64
    setting it allocates and copies 38 MB, more time than all Hi-Fi attention takes. ``out=``
    has no autograd, bypasses autocast and is not what exporters and compilers expect, so
    training, mixed precision, tracing and compiling concatenate.
    """
    first = paths[0][0]
    if (torch.is_grad_enabled() or torch.is_autocast_enabled(first.device.type) or torch.jit.is_tracing()
            or torch.compiler.is_compiling()):
        return torch.cat([proj(x) for x, proj in paths], dim=-1)
    widths = [proj.out_features for _, proj in paths]
    out = first.new_empty(*first.shape[:-1], sum(widths))
    flat_out = out.view(-1, out.shape[-1])
    for (x, proj), start, width in zip(paths, itertools.accumulate([0] + widths), widths):
        torch.addmm(proj.bias, x.reshape(-1, x.shape[-1]), proj.weight.t(), out=flat_out[:, start:start + width])
    return out


def check_heads(dim: int, num_heads: int) -> None:
    if num_heads < 1 or dim % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must be a positive divisor of dim={dim}")


class HiLo(nn.Module):
    """HiLo attention on a ``(B, H*W, C)`` token sequence laid out on an ``H x W`` map.

    Args:
        dim: channels.
        num_heads: total heads, split between the Hi-Fi and Lo-Fi paths.
        window_size: Hi-Fi window side and Lo-Fi pooling size; 1 = plain global MSA.
        alpha: fraction of Lo-Fi heads in [0, 1].
        qkv_bias: bias in the query/key/value projections.
        qk_scale: logit scale; default ``head_dim ** -0.5``.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projections.
        rel_pos_bias: add a Swin-style relative position bias inside Hi-Fi windows.
        lofi_valid_average: average partial Lo-Fi windows of non-divisible maps over their
            valid tokens only, instead of over the zero-padded window as the official code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 2,
        alpha: float = 0.9,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = False,
        lofi_valid_average: bool = False,
    ) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} must be in [0, 1]")
        check_window(window_size)
        head_dim = dim // num_heads
        self.dim = dim
        self.head_dim = head_dim
        self.window_size = window_size
        self.l_heads = lofi_heads(num_heads, alpha, window_size)
        self.h_heads = num_heads - self.l_heads
        self.l_dim = self.l_heads * head_dim
        self.h_dim = self.h_heads * head_dim
        self.scale = qk_scale or head_dim**-0.5
        # Only pooled Lo-Fi heads have partial windows; elsewhere the option builds the same layer.
        self.lofi_valid_average = lofi_valid_average and self.l_heads > 0 and window_size > 1
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)
            self.h_rel_pos = RelativePositionBias((window_size, window_size), self.h_heads) if rel_pos_bias else None

    def _dropout(self) -> float:
        return self.attn_drop if self.training else 0.0

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention inside each window of a ``(B, H, W, C)`` map, before ``h_proj``.

        The map is padded before ``h_qkv``, as officially: padded tokens of a border window
        are keys/values equal to the projection biases, not masked out.
        """
        batch, height, width, _ = x.shape
        ws = self.window_size
        qkv = self.h_qkv(pad_to_multiple(x, ws))
        padded_h, padded_w = qkv.shape[1], qkv.shape[2]
        rows, cols = padded_h // ws, padded_w // ws
        # One copy straight into (3, B * windows, heads, ws * ws, head_dim), the layout SDPA
        # reads fastest; partitioning and splitting heads separately would copy twice.
        qkv = qkv.view(batch, rows, ws, cols, ws, 3, self.h_heads, self.head_dim)
        q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, -1, self.h_heads, ws * ws, self.head_dim).unbind(0)
        bias = self.h_rel_pos(ws, ws) if self.h_rel_pos is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self._dropout(), scale=self.scale)
        out = out.view(batch, rows, cols, self.h_heads, ws, ws, self.head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(batch, padded_h, padded_w, self.h_dim)[:, :height, :width]

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Every query of a ``(B, H, W, C)`` map attends to window-averaged keys/values; before ``l_proj``.

        The official code also computes queries for the padding and crops them away, so only
        the ``H x W`` queries are computed here. Keys/values come from whole windows of the
        zero-padded map (zeros count in border averages) or, with ``lofi_valid_average``,
        from ``ceil_mode`` windows averaged over the tokens they cover.
        """
        batch, height, width, channels = x.shape
        q = self.l_q(x).reshape(batch, height * width, self.l_heads, self.head_dim).transpose(1, 2)
        if self.window_size > 1:
            grid = x if self.lofi_valid_average else pad_to_multiple(x, self.window_size)
            pooled = F.avg_pool2d(grid.permute(0, 3, 1, 2), self.window_size, ceil_mode=True)
            x = pooled.flatten(2).transpose(1, 2)
        kv = self.l_kv(x).reshape(batch, -1, 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self._dropout(), scale=self.scale)
        return out.transpose(1, 2).reshape(batch, height, width, self.l_dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        if tokens != H * W:
            raise ValueError(f"x has {tokens} tokens, expected H*W = {H}*{W} = {H * W}")
        x = x.reshape(batch, H, W, channels)
        if self.h_heads == 0:
            out = self.l_proj(self.lofi(x))
        elif self.l_heads == 0:
            out = self.h_proj(self.hifi(x))
        else:
            out = self.join(self.hifi(x), self.lofi(x))
        return self.proj_drop(out.reshape(batch, tokens, channels))

    def join(self, hifi: torch.Tensor, lofi: torch.Tensor) -> torch.Tensor:
        """Both paths' output projections, concatenated as ``[Hi-Fi, Lo-Fi]`` channels."""
        return project_side_by_side(((hifi, self.h_proj), (lofi, self.l_proj)))

    def extra_repr(self) -> str:
        valid = ", lofi_valid_average=True" if self.lofi_valid_average else ""
        return (f"dim={self.dim}, window_size={self.window_size}, lofi_heads={self.l_heads}, "
                f"hifi_heads={self.h_heads}{valid}")
