"""FLOP and parameter counting in the papers' convention (one multiply-add = one FLOP).

fvcore's jit-trace counter does the work; it knows neither ``scaled_dot_product_attention``
(it would silently count 0) nor torchvision's ``deform_conv2d``, so both get handles here.
A deformable conv is counted like an ordinary conv of the same shape, as the official
LITv2 counter does (its offset conv is an ordinary conv and is counted by fvcore itself). On
the CPU a deformable conv runs as bilinear sampling + conv (see ``layers.deform``): the conv
is counted and the sampling is not, which gives the same figure.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _sdpa_flops(inputs: list, outputs: list) -> int:
    """``q @ k^T`` plus ``attn @ v``: batch * Lq * Lk * (E + Ev) multiply-adds."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _deform_conv_flops(inputs: list, outputs: list) -> int:
    """Every output element costs ``C_in / groups * kh * kw`` multiply-adds, like a conv."""
    weight = _shape(inputs[1])
    out = _shape(outputs[0])
    return math.prod(out) * weight[1] * weight[2] * weight[3]


def _uncounted(inputs: list, outputs: list) -> int:
    """Ops the papers' convention leaves out (fvcore counts grid sampling as elementwise work)."""
    return 0


def count_flops(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass of ``model`` on a ``(batch_size, *input_size)`` input."""
    # fvcore is imported here: at import time it triggers torch.jit deprecation warnings.
    from fvcore.nn import FlopCountAnalysis

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            sample = torch.zeros(batch_size, *input_size, device=device)
            analysis = FlopCountAnalysis(model, sample)
            analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
            analysis.set_op_handle("torchvision::deform_conv2d", _deform_conv_flops)
            analysis.set_op_handle("aten::grid_sampler", _uncounted)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        model.train(was_training)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
