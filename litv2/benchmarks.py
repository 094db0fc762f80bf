"""The work behind ``python -m litv2.bench`` (its command line, :mod:`litv2.bench`, checks the
arguments first): the layer and model table, one measurement, its repeatability, and the
reference's calibration.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .files import atomic_write_text
from .flops import count_flops, count_params
from .layers import HiLo
from .layers.attention import Attention, build_attention
from .layers.windows import pad_to_multiple
from .measure import (
    BlockTimer, MeasureProtocol, allocator_policy, autocast_dtype, backend_settings, block_timer, calibrate_reference,
    device_fingerprint, device_name, library_versions, measure_config, median_ci, official_throughput, peak_memory,
    pin_allocator, resolve_device, warm_up,
)
from .model import build_model
from .named import config_from
from .target import parse_target


DIM, HEADS = 768, 12
# (map side, batch) pairs: the paper's 14x14 setting and the larger maps of early stages; the
# batches shrink with the map on the CPU (a GPU takes batch 64 at every size: ``layer_batch``).
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


def _round_robin(modules: dict[str, nn.Module], inputs: torch.Tensor, device: torch.device, rounds: int,
                 protocol: MeasureProtocol = MeasureProtocol(), precision: str = "fp32") -> dict[str, dict]:
    """Warm every module up, then time one block of each per round, ``rounds`` rounds.

    Interleaving puts every module's samples in the same stretch of time, so a background
    burst on a shared machine slows all of them alike instead of sinking whichever module
    happened to be timed during it; the speed-up ratios stay meaningful. The order is
    shuffled every round (with a fixed seed) because a module's time can also depend on its
    predecessor (what that one freed decides which memory the allocator hands back). Blocks
    are sized by the warm-up to ``protocol.block_seconds`` (hundreds of calls of a layer on a
    GPU). Autocast is entered once around everything, so each module's weights are cast
    once; on CUDA a module's peak memory is what it added to what was allocated before it
    was moved to the device (its weights included, the other modules' not).
    """
    dtype = autocast_dtype(precision)
    inputs = inputs.to(device)
    blocks: dict[str, tuple[BlockTimer, int]] = {}
    peaks: dict[str, float | None] = {}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for name, module in modules.items():
            with peak_memory(device) as added_mib:
                timer = block_timer(functools.partial(module.to(device).eval(), inputs), device)
                with torch.inference_mode():
                    blocks[name] = timer, warm_up(timer, protocol).calls_per_block
                # On the CPU the freed memory of earlier modules is reused: no per-module figure.
                peaks[name] = added_mib() if device.type == "cuda" else None
        seconds: dict[str, list[float]] = {name: [] for name in modules}
        order = list(modules)
        shuffler = random.Random(0)
        with torch.inference_mode():
            for _ in range(rounds):
                shuffler.shuffle(order)
                for name in order:
                    timer, calls = blocks[name]
                    seconds[name].append(timer(calls) / calls)
    results = {}
    for name, times in seconds.items():
        rates = [inputs.shape[0] / t for t in times]
        low, high = median_ci(rates)
        results[name] = dict(img_s=statistics.median(rates), ci=[low, high], spread=(high - low) / 2,
                             peak_mb=peaks[name], seconds=times)
    return results


def run(device: torch.device, rounds: int, model_batch: int, quick: bool = False,
        protocol: MeasureProtocol = MeasureProtocol(), precision: str = "fp32",
        layer_batch: int | None = None) -> list[dict]:
    rows = []
    names = list(LAYER_KINDS) + list(NAIVE_LAYERS)
    settings = LAYER_SETTINGS[:1] if quick else LAYER_SETTINGS
    if layer_batch is not None:
        settings = tuple((side, layer_batch) for side, _ in settings)
    time_them = functools.partial(_round_robin, device=device, rounds=rounds, protocol=protocol, precision=precision)
    for side, batch in settings:
        torch.manual_seed(0)
        layers = {name: TokenLayer(_layer(name, side), side) for name in names}
        timings = time_them(layers, torch.randn(batch, side * side, DIM))
        for name, layer in layers.items():
            row = dict(name=name, input=f"{side}x{side} b{batch}", params=count_params(layer),
                       flops=count_flops(layer, input_size=(side * side, DIM)), **timings[name])
            rows.append(row)
            print(_format_row(row), file=sys.stderr, flush=True)
    models = {name: timm.create_model(name) for name in (() if quick else MODELS)}
    timings = time_them(models, torch.randn(model_batch, 3, 224, 224)) if models else {}
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


def table(args: argparse.Namespace) -> int:
    """``table``: arguments checked by :func:`litv2.bench.check_arguments`."""
    device = resolve_device(args.device)
    if not args.default_allocator:
        pin_allocator()
    protocol = MeasureProtocol(block_seconds=args.block_seconds)
    model_batch = args.model_batch or (64 if device.type == "cuda" else 8)
    layer_batch = args.layer_batch or (64 if device.type == "cuda" else None)
    with backend_settings(device, args.threads, cudnn_benchmark=True, tf32=False):
        threads = torch.get_num_threads()
        flags = "cudnn.benchmark on, TF32 off, " if device.type == "cuda" else ""
        print(f"litv2.bench on {device_name(device)} ({device.type}, {threads} threads), torch {torch.__version__}, "
              f"{args.precision}, {flags}allocator {allocator_policy()}; dim {DIM}, {HEADS} heads; "
              f"median of {args.repeats} rounds [95% interval]")
        rows = run(device, args.repeats, model_batch, args.quick, protocol, args.precision, layer_batch)
    print("| layer / model          | input        |  params  |   FLOPs    |  img/s (median +- half 95% CI) | peak MB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_format_row(row))
    print("speed-ups, median over rounds of the paired times:")
    for line in _ratio_lines(rows):
        print(line)
    if args.json:
        record = dict(device=device_name(device), threads=threads, precision=args.precision, rows=rows,
                      versions=library_versions(device), allocator=allocator_policy())
        atomic_write_text(args.json, json.dumps(record, indent=2))
    return 0


def _measure_options(args: argparse.Namespace) -> dict:
    return dict(channels_last=args.channels_last, tf32=args.tf32,
                steady_allocator=not args.default_allocator,
                protocol=MeasureProtocol(block_seconds=args.block_seconds, max_seconds=args.max_seconds))


def _faults(record: dict) -> str:
    return "-" if record["page_faults_per_call"] is None else f"{record['page_faults_per_call']:.0f}"


def _summary(record: dict) -> str:
    return (f"{record['median']:.2f} img/s [{record['ci_low']:.2f}, {record['ci_high']:.2f}] "
            f"({record['relative_ci']:.1%} wide{', CAPPED' if record['capped'] else ''}; {record['n_samples']} blocks "
            f"of {record['calls_per_block']}), {record['seconds']:.1f} s building included, "
            f"{_faults(record)} page faults/call")


def measure(args: argparse.Namespace) -> int:
    """Each ``--config`` in turn, in this process, by the search's protocol
    (:func:`litv2.measure.measure_config`); several show what one measurement leaves to the next."""
    texts = args.config or ["litv2_s"]
    configs, target, options = [config_from(text) for text in texts], parse_target(args.target), _measure_options(args)
    records = []
    for text, config in zip(texts, configs):
        start = time.perf_counter()
        measured = measure_config(config, target, **options)
        records.append(dict(config=text, target=target.key, seconds=time.perf_counter() - start, pid=os.getpid(),
                            **measured.to_dict()))
        if args.official:
            model = build_model(config, num_classes=1000, img_size=target.img_size)
            records[-1]["official"] = official_throughput(model, target.batch_size, target.img_size, target.device,
                                                          target.precision, threads=target.threads)
        if args.json != "-":
            print(f"{text} at {target.key}: {_summary(records[-1])}", flush=True)
            if args.official:
                official = records[-1]["official"]
                print(f"{text} by the official protocol (TF32 on): {official['img_s']:.2f} img/s "
                      f"({official['timed_calls']} calls after {official['warmup_calls']})", flush=True)
    if args.json == "-":
        print(json.dumps(records))
        return 0
    first = records[0]
    runtime = " ".join(str(x) for x in (first["runtime"], first["provider"], first["versions"].get("onnxruntime")) if x)
    print(f"{first['device_name']}, {first['threads']} threads, torch {first['versions']['torch']}, runtime "
          f"{runtime}, allocator {first['allocator']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=2))
    return 0


def predict(args: argparse.Namespace) -> int:
    """Each ``--config``'s predicted throughput from the node's latency table (built first with
    ``--build``; with ``--measure``, measured too, and the prediction's error)."""
    from .latency import (build_table, default_table_path, open_table, parts_of, predict as predicted, resume_table,
                          save_table)

    texts = args.config or ["litv2_s"]
    configs, target = [config_from(text) for text in texts], parse_target(args.target)
    fingerprint = device_fingerprint(target.device)
    path = Path(args.lut) if args.lut else default_table_path(target, fingerprint)
    if args.build:
        table = resume_table(path)
        overhead = configs if table is None or not table.overhead_from else []
        build_table(configs, target, table, overhead, save=lambda t: save_table(t, path))
    path, table = open_table(target, fingerprint, path)
    guesses = []
    for text, config in zip(texts, configs):
        try:
            guesses.append(predicted(config, target, table))
        except KeyError as error:  # before anything is printed or measured: one line
            raise ValueError(f"--config {text!r}: {error.args[0]} ({path}); add them with --build") from None
    print(f"{'config':<16}{'parts':>6}{'predicted img/s':>16}{'ms':>9}" + (f"{'measured':>10}{'error':>8}" if args.measure else ""))
    for text, config, guess in zip(texts, configs, guesses):
        line = f"{text:<16}{len(parts_of(config, target.img_size, target.batch_size)):>6}{guess.img_s:>16.2f}{guess.latency_ms:>9.2f}"
        if args.measure:
            measured = measure_config(config, target).median
            line += f"{measured:>10.2f}{100 * (guess.img_s / measured - 1):>+7.1f}%"
        print(line, flush=True)
    print(f"table {path}: {len(table.parts)} parts, overhead x{table.overhead_factor:.3f} per forward")
    return 0


def _flags(args: argparse.Namespace) -> list[str]:
    """The measurement options of ``args`` as command-line flags, for a child process."""
    flags = ["--target", parse_target(args.target).key, "--block-seconds", str(args.block_seconds),
             "--max-seconds", str(args.max_seconds)]
    flags += [flag for flag, on in (("--tf32", args.tf32), ("--default-allocator", args.default_allocator)) if on]
    if args.channels_last is not None:
        flags.append("--channels-last" if args.channels_last else "--no-channels-last")
    return flags


def calibrate(args: argparse.Namespace) -> int:
    """The reference network's speed for ``--target`` on this node: stored on first use by
    every CPU measurement; shown here, or measured again with ``--again``."""
    target = parse_target(args.target)
    protocol = MeasureProtocol(block_seconds=args.block_seconds, max_seconds=args.max_seconds)
    if not args.default_allocator:
        pin_allocator()
    device = resolve_device(target.device)
    channels_last = bool(args.channels_last)
    dtype = autocast_dtype(target.precision)
    with backend_settings(device, target.threads, cudnn_benchmark=True, tf32=False), torch.inference_mode(), \
            torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        _, record = calibrate_reference(target.batch_size, target.img_size, target.precision, channels_last, protocol,
                                        again=args.again)
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["calibrated_at"]))
    print(f"{record['reference']} at {target.key} on {record['key']['host']} ({record['key']['fingerprint']['device_name']}): "
          f"{record['img_s']:.2f} img/s [{record['ci_low']:.2f}, {record['ci_high']:.2f}], {record['n_samples']} "
          f"blocks on the {record['clock']} clock, calibrated {made}")
    if args.json:
        text = json.dumps(record, indent=2)
        print(text) if args.json == "-" else atomic_write_text(args.json, text)
    return 0


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes that keep a core busy each for as long as the block runs."""
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in load:
            process.kill()
            process.wait()


def repeatability(args: argparse.Namespace) -> int:
    """``--runs`` measurements, each in a fresh process, and how far their medians spread on
    each clock: the figure (the decisive clock, scaled to the reference), the same blocks
    before scaling, and the wall clock."""
    target = parse_target(args.target)
    command = [sys.executable, "-m", "litv2.bench", "measure", "--config", args.config, "--json", "-", *_flags(args)]
    if target.device == "cpu":  # calibrate on the idle node first (stored: every run below shares it)
        done = subprocess.run([sys.executable, "-m", "litv2.bench", "calibrate", *_flags(args)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"calibration failed: {done.stderr.strip().splitlines()[-1:]}")
        print(done.stdout.strip())
    print(f"{args.config} at {target.key}, {args.runs} fresh processes, each `{' '.join(command[1:5])} ...`, "
          f"{args.load} busy processes beside:")
    print("| run | img/s | 95% interval | width | unscaled | wall clock | CPU share | reference drift | blocks "
          "| capped | measure s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    records = []
    with busy_processes(args.load):
        for run_index in range(1, args.runs + 1):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"run {run_index} failed: {done.stderr.strip().splitlines()[-1:]}")
            record = json.loads(done.stdout.strip().splitlines()[-1])[0]
            record["process_seconds"] = time.perf_counter() - start
            records.append(record)
            drift = f"{record['reference']['drift']:.3f}" if record.get("reference") else "-"
            share = f"{record['cpu_share']:.2f}" if record.get("cpu_share") is not None else "-"
            wall = f"{record['wall_median']:.2f}" if record.get("wall_median") is not None else "-"
            print(f"| {run_index} | {record['median']:.2f} | [{record['ci_low']:.2f}, {record['ci_high']:.2f}] | "
                  f"{record['relative_ci']:.1%} | {record['raw_median']:.2f} | {wall} | {share} | {drift} | "
                  f"{record['n_samples']} x {record['calls_per_block']} | {'yes' if record['capped'] else 'no'} | "
                  f"{record['seconds']:.1f} |", flush=True)
    spreads = {"figure": _spread([r["median"] for r in records]),
               "unscaled": _spread([r["raw_median"] for r in records])}
    if all(r.get("wall_median") for r in records):
        spreads["wall clock"] = _spread([r["wall_median"] for r in records])
    first = records[0]
    print("spread of the medians (max/min - 1): " + ", ".join(f"{k} {v:.1%}" for k, v in spreads.items())
          + f"; clock {first['clock']}; {first['device_name']}, {first['threads']} threads, "
            f"torch {first['versions']['torch']}, allocator {first['allocator']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(dict(spread=spreads["figure"], spreads=spreads, load=args.load,
                                                     runs=records), indent=2))
    return 0
