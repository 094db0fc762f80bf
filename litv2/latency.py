"""Predicted throughput of LIT-family networks from a table of their parts (as nn-Meter and
Once-for-All predict latency from per-operator tables), measured once per target and node.

A LIT network is a chain: the patch embedding (stem), the two residual halves of each block
(attention, then FFN; an MLP-only block is its FFN half alone), the token merging between
stages, and the head (final norm, pooling, classifier). A part's cost depends only on what
builds it and on the map it runs on, so a :class:`Part` is that: its kind and the canonical
arguments of its constructor (an argument that the part ignores - a HiLo alpha of a stage
whose attention is MSA, a window of SRA - is left out, so two architectures that build the
same part share its entry). :func:`parts_of` lists a network's parts, :func:`build_table`
measures what the table needs with the project's protocol and clock (:mod:`litv2.measure`,
against the node's calibrated reference), plus what the sum of parts misses in a whole
forward, and :func:`predict` adds them up.

Blocks are measured as halves because a block's attention and FFN vary apart: an FFN half
is the same part whatever attention precedes it, which cuts the default space's distinct
parts by half. And a part's cost is close to linear in one number of it - an FFN half's
hidden width, a HiLo half's number of Lo-Fi heads (between its ends: with no Hi-Fi or no
Lo-Fi head a whole branch and its fixed costs vanish) - so along that *axis* a table
measures the least, the greatest and the middle value a space uses and interpolates the
rest (:data:`AXES`); :meth:`LatencyTable.interpolation_errors` says how far each middle
value lies from the line through its neighbours. README, "Latency tables", has what each
refinement bought.

What the sum misses is a *factor*, fitted on a few whole networks spread over the space's
sizes (:func:`spread_by_size`): measured over the sum of their parts, the median. On the
project's CPU VM (``cpu:bs1:224``) that ratio was 1.12-1.15 for three tiny-space networks
of 6-7 ms and 1.07-1.11 for LITv2-S/M/B (100-340 ms), while the missing *seconds* ran from
0.7 to 24 ms: a constant overhead fitted on the three named models put LITv2-S 9 % low, the
factor 0 % (README, "Latency tables").
"""
from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .config import LITConfig, lofi_heads
from .files import atomic_write_text
from .layers import FFNBlock, PatchEmbed, build_attention, build_ffn, build_merge
from .measure import MeasureProtocol, device_fingerprint, measure_config, measure_throughput
from .reference import cache_dir
from .target import Target

TABLE_VERSION = 2  # 1: whole blocks, no axes
PART_KINDS = ("stem", "attention", "ffn", "merge", "head")
AXES = {"ffn": "hidden", "attention": "lofi"}
"""The number of a part of each kind that its cost is interpolated along."""
NUM_CLASSES = 1000
PART_PROTOCOL = MeasureProtocol(min_warmup_seconds=0.15, max_warmup_seconds=0.5, block_seconds=0.05,
                                min_samples=6, max_seconds=0.8)
"""A part is small and many are measured: short warm-up, blocks and cap (the whole networks
that fit the overhead get the default protocol)."""


@dataclass(frozen=True)
class Part:
    """One part of a network: its kind and the canonical arguments that build it."""

    kind: str
    spec: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, kind: str, **spec: Any) -> "Part":
        return cls(kind, tuple(sorted(spec.items())))

    @property
    def key(self) -> str:
        return json.dumps({"kind": self.kind, **dict(self.spec)}, sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> "Part":
        data = json.loads(key)
        return cls.of(data.pop("kind"), **data)


def _attention_spec(config: LITConfig, stage: int, block: int, size: tuple[int, int]) -> dict[str, Any]:
    """What :func:`~litv2.layers.build_attention` uses of the stage's settings, for ``kind``."""
    kind, heads = config.attn_kind[stage], config.num_heads[stage]
    window, sr = config.window_size[stage], config.sr_ratio[stage]
    spec: dict[str, Any] = dict(attn_kind=kind, heads=heads, qkv_bias=config.qkv_bias)
    if kind == "hilo":
        spec.update(window=window, lofi=lofi_heads(heads, config.alpha[stage], window),
                    rel_pos_bias=config.rel_pos_bias, lofi_valid_average=config.lofi_valid_average)
    elif kind == "msa":
        spec.update(rel_pos_bias=config.rel_pos_bias, rel_pos_size=list(size) if config.rel_pos_bias else None)
    elif kind == "sra":
        spec.update(sr=sr)
    elif kind == "wmsa":
        spec.update(window=window, shifted=config.shift and block % 2 == 1, rel_pos_bias=config.rel_pos_bias)
    else:  # tmsa: windows on even blocks, sub-sampled global attention on odd ones
        spec.update(window=window) if block % 2 == 0 else spec.update(sr=sr, odd=True)
    return spec


def parts_of(config: LITConfig, img_size: int, batch_size: int = 1) -> list[Part]:
    """The parts of ``config``'s full-size network at ``img_size``, in forward order (a part
    that occurs several times is listed each time)."""
    height = width = img_size // config.patch_size
    parts = [Part.of("stem", embed_dim=config.embed_dim, patch=config.patch_size, img=img_size, batch=batch_size)]
    for stage, depth in enumerate(config.depths):
        dim = config.stage_dims[stage]
        size = [height, width]
        for block in range(depth):
            if config.attention[stage]:
                parts.append(Part.of("attention", dim=dim, size=size, batch=batch_size,
                                     **_attention_spec(config, stage, block, (height, width))))
            parts.append(Part.of("ffn", dim=dim, hidden=int(dim * config.mlp_ratio), ffn=config.ffn, size=size,
                                 batch=batch_size))
        if stage < config.num_stages - 1:
            parts.append(Part.of("merge", merge=config.merge, dim=dim, out_dim=config.stage_dims[stage + 1], size=size,
                                 batch=batch_size))
            height, width = max(height // 2, 1), max(width // 2, 1)
    parts.append(Part.of("head", dim=config.num_features, classes=NUM_CLASSES, size=[height, width], batch=batch_size))
    return parts


class _Timed(nn.Module):
    """A part with its input, as :func:`~litv2.measure.measure_throughput` times a network:
    the image it is called with is ignored (the part's own input is a buffer, moved with it)."""

    def __init__(self, module: nn.Module, inputs: torch.Tensor, call: Callable[[nn.Module, torch.Tensor], Any]) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("inputs", inputs)
        self.call = call

    def forward(self, _: torch.Tensor) -> Any:
        return self.call(self.module, self.inputs)


def build_part(part: Part) -> _Timed:
    """The module of ``part`` with a random input of its shape, ready to time."""
    spec = dict(part.spec)
    batch = spec["batch"]
    if part.kind == "stem":
        module = PatchEmbed(3, spec["embed_dim"], spec["patch"])
        return _Timed(module, torch.randn(batch, 3, spec["img"], spec["img"]), lambda m, x: m(x))
    height, width = spec["size"]
    tokens = torch.randn(batch, height * width, spec["dim"])
    if part.kind == "merge":
        return _Timed(build_merge(spec["merge"], spec["dim"], spec["out_dim"]), tokens, lambda m, x: m(x, height, width))
    if part.kind == "head":
        head = nn.ModuleDict(dict(norm=nn.LayerNorm(spec["dim"]), fc=nn.Linear(spec["dim"], spec["classes"])))
        return _Timed(head, tokens, lambda m, x: m["fc"](m["norm"](x).mean(dim=1)))
    if part.kind == "ffn":
        return _Timed(FFNBlock(spec["dim"], build_ffn(spec["ffn"], spec["dim"], spec["hidden"])), tokens,
                      lambda m, x: m(x, height, width))
    heads, lofi = spec["heads"], spec.get("lofi", 0)
    attention = build_attention(
        spec["attn_kind"], spec["dim"], heads, window_size=spec.get("window", 0) or 2,
        alpha=min(1.0, (lofi + 1e-6) / heads), sr_ratio=spec.get("sr", 1),
        rel_pos_bias=spec.get("rel_pos_bias", False), shift=spec.get("shifted", False),
        block_index=1 if spec.get("shifted") or spec.get("odd") else 0,
        max_size=tuple(spec.get("rel_pos_size") or (height, width)), qkv_bias=spec["qkv_bias"],
        lofi_valid_average=spec.get("lofi_valid_average", False))
    half = nn.ModuleDict(dict(norm=nn.LayerNorm(spec["dim"]), attn=attention))  # AttentionBlock's first residual
    return _Timed(half, tokens, lambda m, x: x + m["attn"](m["norm"](x), height, width))


class OutdatedTable(ValueError):
    """A table of an older version, whose parts this predictor does not read: a build replaces it."""


@dataclass(frozen=True)
class AxisPlace:
    """Where a part lies along its kind's axis (:data:`AXES`): the family of parts that differ
    from it in that number alone, the segment of the axis it is in, and its value. Values are
    interpolated only between two measured ones of the same family and segment."""

    family: str
    segment: int
    value: int
    ends: tuple[int, ...] = ()  # the segment's least and greatest values, where the part alone tells them


def axis_place(part: Part) -> AxisPlace | None:
    """``part``'s place on its axis; None for a part without one (a stem, an MSA half...)."""
    spec = dict(part.spec)
    value = spec.pop(AXES.get(part.kind, ""), None)
    if value is None:
        return None
    family = Part(part.kind, tuple(sorted(spec.items()))).key
    if part.kind != "attention":
        return AxisPlace(family, 0, value)
    heads = spec["heads"]  # all-Hi-Fi and all-Lo-Fi drop a branch: points of their own
    if value in (0, heads):
        return AxisPlace(family, 0 if value == 0 else 2, value)
    return AxisPlace(family, 1, value, (1, heads - 1))


@dataclass
class LatencyTable:
    """Seconds per call of each part on one target and node fingerprint, and the factor a
    whole forward takes over their sum."""

    target: str
    fingerprint: dict[str, str]
    parts: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> seconds, low, high
    overhead_factor: float = 1.0
    overhead_from: list[dict[str, Any]] = field(default_factory=list)  # the whole networks it was fitted on
    _lines_cache: dict[tuple[str, int], list[tuple[int, float]]] = field(default_factory=dict, init=False, repr=False,
                                                                         compare=False)
    _lines_of: int = field(default=-1, init=False, repr=False, compare=False)

    def _lines(self) -> dict[tuple[str, int], list[tuple[int, float]]]:
        """The measured (value, seconds) of each family and segment, by value (kept until a
        part is added: parts are only ever added)."""
        if self._lines_of != len(self.parts):
            lines: dict[tuple[str, int], list[tuple[int, float]]] = {}
            for key, figure in self.parts.items():
                place = axis_place(Part.from_key(key))
                if place is not None:
                    lines.setdefault((place.family, place.segment), []).append((place.value, figure["seconds"]))
            self._lines_cache = {line: sorted(points) for line, points in lines.items()}
            self._lines_of = len(self.parts)
        return self._lines_cache

    def seconds(self, part: Part) -> float:
        """Seconds per call of ``part``: measured, else interpolated between the two nearest
        measured values around it on its axis; a KeyError if neither."""
        figure = self.parts.get(part.key)
        if figure is not None:
            return figure["seconds"]
        place = axis_place(part)
        points = self._lines().get((place.family, place.segment), []) if place else []
        below = [(v, s) for v, s in points if v < place.value]
        above = [(v, s) for v, s in points if v > place.value]
        if not below or not above:
            raise KeyError(part.key)
        return _on_line(below[-1], above[0], place.value)

    def missing(self, parts: Iterable[Part], interpolate: bool = True) -> list[Part]:
        """What to measure so that every one of ``parts`` has a figure: each part the table
        neither has nor (``interpolate``) can interpolate; of parts on an axis, only the
        least, the greatest and the middle value of each family's segment that lacks them
        (the segment's own ends where the part tells them: a HiLo half's 1 and heads - 1
        Lo-Fi heads)."""
        todo: dict[str, Part] = {}
        along: dict[tuple[str, int], dict[int, Part]] = {}
        for part in parts:
            place = axis_place(part) if interpolate else None
            if part.key in self.parts or part.key in todo:
                continue
            if place is None:
                todo[part.key] = part
                continue
            try:
                self.seconds(part)
            except KeyError:
                by_value = along.setdefault((place.family, place.segment), {})
                by_value[place.value] = part
                for end in place.ends:  # the whole segment, not just the values asked for
                    by_value.setdefault(end, Part.from_key(json.dumps(
                        {**json.loads(place.family), AXES[part.kind]: end})))
        for by_value in along.values():
            values = sorted(by_value)
            middle = min(values, key=lambda v: abs(v - (values[0] + values[-1]) / 2))
            for value in dict.fromkeys((values[0], middle, values[-1])):
                todo[by_value[value].key] = by_value[value]
        return list(todo.values())

    def interpolation_errors(self) -> list[float]:
        """For each measured value with measured neighbours on both sides of its axis, how far
        (relative) the line through those neighbours misses it: how much interpolating costs."""
        errors = []
        for points in self._lines().values():
            for before, (value, seconds), after in zip(points, points[1:], points[2:]):
                errors.append(_on_line(before, after, value) / seconds - 1)
        return errors

    def to_json(self) -> str:
        return json.dumps(dict(version=TABLE_VERSION, target=self.target, fingerprint=self.fingerprint,
                               parts=self.parts, overhead_factor=self.overhead_factor,
                               overhead_from=self.overhead_from), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        data = json.loads(text)
        version = data.get("version")
        if version != TABLE_VERSION:
            older = isinstance(version, int) and version < TABLE_VERSION
            raise (OutdatedTable if older else ValueError)(
                f"latency table version {version!r} is not {TABLE_VERSION}, whose parts this predictor reads: "
                "build the table again")
        return cls(data["target"], data["fingerprint"], data["parts"], data["overhead_factor"], data["overhead_from"])

    def check(self, target: Target, fingerprint: dict[str, str] | None) -> None:
        """A one-line ValueError unless the table was measured for ``target`` on a node of
        ``fingerprint`` (None: on any node, as a table brought from a target's own machine)."""
        if self.target != target.key:
            raise ValueError(f"latency table is for target {self.target!r}, not {target.key!r}")
        if fingerprint is not None and self.fingerprint != fingerprint:
            raise ValueError(f"latency table was measured on {self.fingerprint.get('device_name')!r} "
                             f"({_versions(self.fingerprint)}); this node is {fingerprint.get('device_name')!r} "
                             f"({_versions(fingerprint)}): build one here")


def _on_line(first: tuple[int, float], second: tuple[int, float], value: int) -> float:
    """Seconds at ``value`` on the line through two measured (value, seconds) points."""
    (v0, s0), (v1, s1) = first, second
    return s0 + (s1 - s0) * (value - v0) / (v1 - v0)


def _versions(fingerprint: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(fingerprint.items()) if k != "device_name")


@dataclass(frozen=True)
class Prediction:
    seconds: float  # per forward of a batch
    batch_size: int
    parts_seconds: float
    overhead_factor: float

    @property
    def img_s(self) -> float:
        return self.batch_size / self.seconds

    @property
    def latency_ms(self) -> float:
        return 1000 * self.seconds


def predict(config: LITConfig, target: Target, table: LatencyTable) -> Prediction:
    """Sum of ``config``'s parts on ``target`` times the table's overhead factor; a KeyError
    names a part the table lacks (build it for that space)."""
    total, absent = 0.0, []
    for part in parts_of(config, target.img_size, target.batch_size):
        try:
            total += table.seconds(part)
        except KeyError:
            absent.append(part.key)
    if absent:
        raise KeyError(f"{len(absent)} parts are not in the latency table, nor between two of its parts, "
                       f"e.g. {absent[0]}")
    return Prediction(total * table.overhead_factor, target.batch_size, total, table.overhead_factor)


def _seconds(figure) -> dict[str, float]:
    batch = figure.batch_size
    return dict(seconds=batch / figure.median, low=batch / figure.ci_high, high=batch / figure.ci_low)


def measure_part(part: Part, target: Target, protocol: MeasureProtocol = PART_PROTOCOL) -> dict[str, float]:
    """Seconds per call of ``part`` on ``target`` (median and its 95 % interval)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        timed = build_part(part).eval()
    figure = measure_throughput(timed, target.batch_size, target.img_size, target.device, target.precision,
                                threads=target.threads, protocol=protocol, reference=target.device == "cpu",
                                in_chans=3)
    return _seconds(figure)


def build_table(configs: Iterable[LITConfig], target: Target, table: LatencyTable | None = None,
                overhead_configs: Iterable[LITConfig] = (), progress: Callable[[int, int, str], None] | None = None,
                save: Callable[[LatencyTable], None] | None = None, interpolate: bool = True,
                overhead_spread: int = 0) -> LatencyTable:
    """Measure what ``table`` (a new table if None) lacks to predict every part of
    ``configs`` (:meth:`LatencyTable.missing`; every distinct part unless ``interpolate``),
    then fit the overhead factor on ``overhead_configs`` and ``overhead_spread`` of
    ``configs`` spread over their sums of parts (:func:`spread_by_size`), measured whole:
    measured over the sum of their parts, the median. ``save`` is called after each part, so
    an interrupted build resumes where it stopped."""
    fingerprint = device_fingerprint(target.device)
    table = table or LatencyTable(target.key, fingerprint)
    table.check(target, fingerprint)
    configs = list(configs)
    overhead_configs = list(overhead_configs)  # their parts too: the fit needs their sums
    todo = table.missing((p for config in [*configs, *overhead_configs]
                          for p in parts_of(config, target.img_size, target.batch_size)), interpolate)
    for done, part in enumerate(todo, 1):
        table.parts[part.key] = measure_part(part, target)
        if progress:
            progress(done, len(todo), part.kind)
        if save:
            save(table)
    if overhead_spread:
        overhead_configs += spread_by_size(configs, target, LatencyTable(target.key, fingerprint, table.parts),
                                           overhead_spread)
    fits = []
    for config in overhead_configs:
        started = time.perf_counter()
        figure = measure_config(config, target)
        whole = target.batch_size / figure.median
        parts_sum = predict(config, target, LatencyTable(target.key, fingerprint, table.parts)).parts_seconds
        fits.append(dict(config=config.to_json(), measured_seconds=whole, parts_seconds=parts_sum,
                         wall_seconds=time.perf_counter() - started))
    if fits:
        table.overhead_factor = statistics.median(f["measured_seconds"] / f["parts_seconds"] for f in fits)
        table.overhead_from = fits
        if save:
            save(table)
    return table


def spread_by_size(configs: list[LITConfig], target: Target, table: LatencyTable, count: int) -> list[LITConfig]:
    """``count`` of ``configs`` at evenly spaced quantiles (10, 30, 50, 70, 90 % for five) of
    their sums of parts: the networks the overhead factor is fitted on.

    What the sum of parts misses is not one factor at every size: on the default space the
    largest networks (4-7 img/s) ran 7-14 % faster than a factor fitted on five random draws
    predicted, which had all landed among the fast ones (11-25 img/s), while mid-sized ones
    were within 1-6 %. Fitted on networks spread over the sizes, the factor is the space's
    middle, not one end's."""
    ranked = sorted(configs, key=lambda config: predict(config, target, table).parts_seconds)
    return [ranked[int((i + 0.5) * len(ranked) / count)] for i in range(min(count, len(ranked)))]


def default_table_path(target: Target, fingerprint: dict[str, str]) -> Path:
    """Where a node keeps its table for ``target``: beside its reference calibrations
    (:func:`litv2.reference.cache_dir`), one file per target and fingerprint."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "latency" / f"{target.key.replace(':', '_')}-{digest}.json"


def save_table(table: LatencyTable, path: str | Path) -> None:
    """Write ``table`` whole (an interrupted build keeps the last one saved)."""
    atomic_write_text(path, table.to_json())


def open_table(target: Target, fingerprint: dict[str, str] | None, path: str | Path | None = None
               ) -> tuple[Path, LatencyTable]:
    """The table at ``path`` (default: the node's own for ``target``), refused in one line
    unless it was measured for ``target`` on a node of ``fingerprint`` (None: any node; then
    ``path`` is needed); with its path."""
    path = Path(path) if path else default_table_path(target, fingerprint)
    table = load_table(path)
    table.check(target, fingerprint)
    return path, table


def resume_table(path: str | Path) -> LatencyTable | None:
    """The table at ``path`` to resume a build from; None where there is none, or where it is
    of an older version (said on stderr: the build replaces it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_table(path)
    except OutdatedTable as error:
        print(f"{path}: {error}; building it anew", file=sys.stderr)
        return None


def load_table(path: str | Path) -> LatencyTable:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"latency table {str(path)!r} does not exist")
    try:
        return LatencyTable.from_json(path.read_text())
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"latency table {str(path)!r} is not one ({type(error).__name__}: {error})") from None
