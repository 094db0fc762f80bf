"""``attention-resolution``: each attention kind alone against the side of the token map.

A row is the attention of one stage of its architecture - every block's attention layer of
that stage, in order, so kinds that alternate (Swin's shifted windows, Twins' local/global
pairs) are whole - applied to ``side x side`` maps, as many per forward as the recipe's
``tokens`` allow (the single-layer benchmark's 64 maps at 14x14 down to one at 112x112), or
the target's batch. Per row and side:
params, FLOPs (one multiply-add = one FLOP), throughput on the target and peak memory. Before
a layer runs, the memory its forward needs is predicted on fake tensors; a layer that would
not fit ``--max-memory`` (or that fails to allocate anyway) is reported as out of memory at
that side and at every larger one, and the table goes on.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from litv2 import LITConfig, count_flops, count_params
from litv2.layers import build_attention
from search.core.repeats import interval
from search.core.target import Target

from .measuring import is_out_of_memory, measure_forward, predicted_peak_bytes
from .recipes import Recipe


class StageAttention(nn.Module):
    """The attention layers of stage ``stage``'s blocks of ``config``, applied in turn to a
    ``(B, side * side, C)`` token map (no norms, residuals or FFNs: the attention alone)."""

    def __init__(self, config: LITConfig, stage: int, side: int) -> None:
        super().__init__()
        self.side = side
        self.layers = nn.ModuleList(
            build_attention(config.attn_kind[stage], config.stage_dims[stage], config.num_heads[stage],
                            window_size=config.window_size[stage], alpha=config.alpha[stage],
                            sr_ratio=config.sr_ratio[stage], rel_pos_bias=config.rel_pos_bias, shift=config.shift,
                            block_index=j, max_size=(side, side), qkv_bias=config.qkv_bias)
            for j in range(config.depths[stage])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, self.side, self.side)
        return x


def available_memory(device: str) -> int:
    """Bytes the device can give now: free CUDA memory, or the CPU's MemAvailable."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def attention_rows(recipe: Recipe, target: Target, max_memory: int,
                   say: Callable[[str], None] = print, measure: Callable[..., dict[str, Any]] = measure_forward
                   ) -> list[dict[str, Any]]:
    """Every (row, side) of an attention recipe, sides in the outer loop, so every kind of
    one side is timed in the same stretch of time."""
    sweep = recipe.attention
    stage = sweep.stage
    configs = list(zip(recipe.labels, recipe.space.enumerate()))
    out_of_memory: dict[str, int] = {}  # row -> first side that did not fit
    rows = []
    for side in sweep.sides:
        for label, config in configs:
            def build(config: LITConfig = config) -> StageAttention:
                return StageAttention(config, stage, side)

            torch.manual_seed(0)
            layer = build()
            batch = sweep.batch(side, target.batch_size)
            shape = (batch, side * side, config.stage_dims[stage])
            row = dict(row=f"{label}, {side}x{side}", label=label, group=side, side=side, batch=batch,
                       kind=config.attn_kind[stage],
                       params=count_params(layer),
                       flops=count_flops(layer, input_size=shape[1:]))  # per token map, as FLOPs per image
            needed = predicted_peak_bytes(build, shape)
            row["predicted_memory_mb"] = needed / 2**20
            if label in out_of_memory or needed > max_memory:
                out_of_memory.setdefault(label, side)
                row["note"] = f"out of memory: needs ~{needed / 2**20:,.0f} MB of {max_memory / 2**20:,.0f}"
            else:
                try:
                    measured = measure(layer, torch.randn(shape), target)
                except (RuntimeError, MemoryError) as error:
                    if not is_out_of_memory(error):
                        raise
                    out_of_memory[label] = side
                    row["note"] = f"out of memory: {str(error).splitlines()[0][:80]}"
                else:
                    low, high = interval(measured)
                    # CUDA's allocator peak is the layer's; on the CPU the resident set grows only past
                    # the (pinned) heap earlier layers left, which says nothing of this one: predicted.
                    peak = measured.get("peak_memory_mb") if target.device == "cuda" else None
                    row.update(throughput=measured["throughput"], throughput_spread=measured["throughput_spread"],
                               throughput_low=low, throughput_high=high,
                               peak_memory_mb=peak or row["predicted_memory_mb"])
            rows.append(row)
            figure = (f"{row['throughput']:.3g} +- {row['throughput_spread']:.2g} maps/s, "
                      f"peak {row['peak_memory_mb']:.0f} MB" if "throughput" in row else row["note"])
            say(f"[{label}] {side}x{side} tokens, batch {batch}: {row['flops'] / 1e9:.2f} GFLOPs/map, {figure}")
            del layer
    return rows


def speedup_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's throughput over the first row's, side by side (the paper's HiLo vs MSA)."""
    by_side: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_side.setdefault(row["side"], {})[row["label"]] = row
    labels = list(dict.fromkeys(row["label"] for row in rows))
    first, lines = labels[0], []
    for label in labels[1:]:
        parts = []
        for side, found in by_side.items():
            mine, base = found.get(label, {}), found.get(first, {})
            ratio = (f"{mine['throughput'] / base['throughput']:.2f}x" if "throughput" in mine and "throughput" in base
                     else "out of memory" if "throughput" not in mine else f"{first} out of memory")
            parts.append(f"{ratio} at {side}x{side}")
        lines.append(f"{label} / {first}: " + ", ".join(parts))
    return lines

