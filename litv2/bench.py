"""``python -m litv2.bench``: params, FLOPs, throughput and memory of every attention and model.

Single layers run at the paper's benchmark setting (dim 768, 12 heads) on 14x14, 28x28 and
56x56 token maps; whole models (LITv1-S, LITv2-S) at 224x224. Beside our HiLo it times
:class:`NaiveHiLo`, the official matmul-softmax formulation with the same weights, so the
gain of the fused-attention path is measured, not assumed.
"""
from __future__ import annotations

import argparse
import functools
import json
import random
import sys

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .flops import count_flops, count_params
from .layers import HiLo
from .layers.attention import Attention, build_attention
from .layers.windows import pad_to_multiple
from .throughput import resolve_device, time_callable

DIM, HEADS = 768, 12
# (map side, batch) pairs: the paper's 14x14 setting and the larger maps of early stages.
LAYER_SETTINGS = ((14, 64), (28, 16), (56, 4))
LAYER_KINDS = {
    "MSA": dict(kind="msa"),
    "MSA + RPE": dict(kind="msa", rel_pos_bias=True),
    "SRA (sr 2)": dict(kind="sra", sr_ratio=2),
    "W-MSA (ws 7)": dict(kind="wmsa", window_size=7, shift=False),
    "SW-MSA (ws 7)": dict(kind="wmsa", window_size=7, shift=True, block_index=1),
    "T-MSA GSA (sr 2)": dict(kind="tmsa", sr_ratio=2, block_index=1),
    "HiLo (ws 2, a 0.9)": dict(kind="hilo", window_size=2, alpha=0.9),
}
MODELS = ("lit_s", "litv2_s")


def matmul_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention as the official releases write it: explicit ``q @ k^T``, softmax, ``@ v``."""
    attn = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


class NaiveMSA(Attention):
    """Standard MSA in the official matmul-softmax formulation (the paper's MSA baseline)."""

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = matmul_softmax_attention(q, k, v, self.scale, bias)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.dim)


class NaiveHiLo(HiLo):
    """HiLo written as the official release does, with the same parameters and semantics as
    :class:`~litv2.layers.HiLo` (padding of non-divisible maps included), so it serves as the
    reference in equivalence tests and as the baseline in this benchmark.
    """

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return matmul_softmax_attention(q, k, v, self.scale, bias)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        ws = self.window_size
        x = pad_to_multiple(x, ws)
        hg, wg = x.shape[1] // ws, x.shape[2] // ws
        x = x.reshape(batch, hg, ws, wg, ws, channels).transpose(2, 3)
        qkv = self.h_qkv(x).reshape(batch, hg * wg, -1, 3, self.h_heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        bias = self.h_rel_pos(ws, ws) if self.h_rel_pos is not None else None
        out = self._attend(qkv[0], qkv[1], qkv[2], bias)
        out = out.transpose(2, 3).reshape(batch, hg, wg, ws, ws, self.h_dim)
        return out.transpose(2, 3).reshape(batch, hg * ws, wg * ws, self.h_dim)[:, :height, :width]

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        ws = self.window_size
        if ws > 1 and not self.lofi_valid_average:
            x = pad_to_multiple(x, ws)  # queries from every padded token, zeros in the border averages
        padded_h, padded_w = x.shape[1], x.shape[2]
        q = self.l_q(x).reshape(batch, padded_h * padded_w, self.l_heads, self.head_dim).permute(0, 2, 1, 3)
        if ws > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), ws, ceil_mode=self.lofi_valid_average)
            x = x.reshape(batch, channels, -1).permute(0, 2, 1)
        kv = self.l_kv(x).reshape(batch, -1, 2, self.l_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = self._attend(q, kv[0], kv[1]).transpose(1, 2).reshape(batch, padded_h, padded_w, self.l_dim)
        return out[:, :height, :width]

    def join(self, hifi: torch.Tensor, lofi: torch.Tensor) -> torch.Tensor:
        """The official ``torch.cat`` of the two projected paths."""
        return torch.cat((self.h_proj(hifi), self.l_proj(lofi)), dim=-1)


class TokenLayer(nn.Module):
    """Wraps an ``attn(x, H, W)`` layer as ``f(x)`` for a fixed map, for counters and timers."""

    def __init__(self, attn: nn.Module, side: int) -> None:
        super().__init__()
        self.attn, self.side = attn, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, self.side, self.side)


NAIVE_LAYERS = {
    "MSA naive (official)": lambda: NaiveMSA(DIM, HEADS),
    "HiLo naive (official)": lambda: NaiveHiLo(DIM, HEADS, window_size=2, alpha=0.9),
}


def _layer(name: str, side: int) -> nn.Module:
    if name in NAIVE_LAYERS:
        return NAIVE_LAYERS[name]()
    spec = dict(LAYER_KINDS[name])
    return build_attention(spec.pop("kind"), DIM, HEADS, max_size=(side, side), **spec)


def _round_robin(modules: dict[str, nn.Module], inputs: torch.Tensor, device: torch.device, warmup: int,
                 repeats: int) -> dict[str, dict]:
    """Time every module once per round, ``repeats`` rounds, after warming each up.

    Interleaving puts every module's samples in the same stretch of time, so a background
    burst on a shared machine slows all of them alike instead of sinking whichever module
    happened to be timed during it; the speed-up ratios stay meaningful. The order is
    shuffled every round (with a fixed seed) because on the CPU a module's time also depends
    on its predecessor: what that one freed decides whether the allocator hands back warm
    memory or fresh pages that fault in (about 10 ms per 38 MB tensor here).
    """
    inputs = inputs.to(device)
    calls = {name: functools.partial(module.to(device).eval(), inputs) for name, module in modules.items()}
    seconds: dict[str, list[float]] = {name: [] for name in modules}
    peaks: dict[str, float | None] = {}
    with torch.inference_mode():
        for name, call in calls.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            time_callable(call, device, warmup, repeats=0, iters=1)  # warm-up only
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        order = list(calls)
        shuffler = random.Random(0)
        for _ in range(repeats):
            shuffler.shuffle(order)
            for name in order:
                seconds[name] += time_callable(calls[name], device, warmup=0, repeats=1, iters=1, min_warmup_seconds=0.0)
    results = {}
    for name, times in seconds.items():
        rates = sorted(inputs.shape[0] / t for t in times)
        results[name] = dict(img_s=rates[len(rates) // 2], spread=(rates[-1] - rates[0]) / 2, peak_mb=peaks[name],
                             seconds=times)
    return results


def run(device: torch.device, warmup: int, repeats: int, model_batch: int, quick: bool = False) -> list[dict]:
    rows = []
    names = list(LAYER_KINDS) + list(NAIVE_LAYERS)
    settings = LAYER_SETTINGS[:1] if quick else LAYER_SETTINGS
    for side, batch in settings:
        torch.manual_seed(0)
        layers = {name: TokenLayer(_layer(name, side), side) for name in names}
        timings = _round_robin(layers, torch.randn(batch, side * side, DIM), device, warmup, repeats)
        for name, layer in layers.items():
            row = dict(name=name, input=f"{side}x{side} b{batch}", params=count_params(layer),
                       flops=count_flops(layer, input_size=(side * side, DIM)), **timings[name])
            rows.append(row)
            print(_format_row(row), file=sys.stderr, flush=True)
    models = {name: timm.create_model(name) for name in (() if quick else MODELS)}
    timings = _round_robin(models, torch.randn(model_batch, 3, 224, 224), device, warmup, repeats) if models else {}
    for name, model in models.items():
        row = dict(name=name, input=f"224x224 b{model_batch}", params=count_params(model), flops=count_flops(model),
                   **timings[name])
        rows.append(row)
        print(_format_row(row), file=sys.stderr, flush=True)
    return rows


def _format_row(row: dict) -> str:
    peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] is not None else "-"
    return (f"| {row['name']:<22} | {row['input']:<12} | {row['params'] / 1e6:7.2f}M | {row['flops'] / 1e6:9.2f}M "
            f"| {row['img_s']:9.1f} +- {row['spread']:6.1f} | {peak:>7} |")


def _paired_speedup(rows: dict[str, dict], ours: str, other: str) -> float:
    """Median over rounds of ``other``'s time / ``ours`` in the same round (see :func:`_round_robin`)."""
    ratios = sorted(b / a for a, b in zip(rows[ours]["seconds"], rows[other]["seconds"]))
    return ratios[len(ratios) // 2]


def _ratio_lines(rows: list[dict]) -> list[str]:
    """The speed-ups the project promises: our HiLo vs the naive HiLo and vs MSA, paired per round."""
    lines = []
    for setting in dict.fromkeys(r["input"] for r in rows if r["name"].startswith("HiLo")):
        by_name = {r["name"]: r for r in rows if r["input"] == setting}
        speedup = functools.partial(_paired_speedup, by_name, "HiLo (ws 2, a 0.9)")
        lines.append(f"{setting}: HiLo / naive HiLo = {speedup('HiLo naive (official)'):.2f}x, "
                     f"HiLo / naive MSA = {speedup('MSA naive (official)'):.2f}x, "
                     f"HiLo / MSA (SDPA) = {speedup('MSA'):.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litv2.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing (default 3)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed rounds (every layer once per round, interleaved); the median is reported (default 7)")
    parser.add_argument("--model-batch", type=int, default=None, help="batch for whole models (default 64 on cuda, 8 on cpu)")
    parser.add_argument("--quick", action="store_true", help="14x14 layers only, no whole models")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    model_batch = args.model_batch or (64 if device.type == "cuda" else 8)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"litv2.bench on {label}, torch {torch.__version__}; dim {DIM}, {HEADS} heads; median of {args.repeats}")
    rows = run(device, args.warmup, args.repeats, model_batch, args.quick)
    print("| layer / model          | input        |  params  |   FLOPs    |   img/s (median +- spread)  | peak MB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_format_row(row))
    print("speed-ups, median over rounds of the paired times:")
    for line in _ratio_lines(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=label, rows=rows), handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
