"""Can the proxy data set tell architectures apart?

A search ranks architectures by proxy accuracy, so the proxy data set must separate
architectures by more than seed noise. This check trains a few contrasting proxies for
several seeds and reports which pairs differ by more than twice the larger of their two
standard deviations; the default data set passes when at least one pair does.

    python -m experiments.separability [--dataset cluttered-digits] [--seeds 3] [--epochs N] [--jobs 2] [--json FILE]

The architectures are :func:`contrasting_architectures`, points of the ``tiny`` space trained
as the search trains them; :func:`score_architectures` takes any list of ``(name, LITConfig)``.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import optuna

from litv2 import LITConfig
from space import get_space
from search.data import DEFAULT_DATASET, DataBundle, load_dataset
from search.train import TrainResult, train_proxy

# Proxy recipe tuned on cluttered-digits (the whole check, 4 points x 3 seeds, takes about 17
# minutes on two CPU cores with --jobs 2): shorter runs stop on the steep part of the learning
# curve, where the seed std (2-3 points) hides architecture differences; by 20 epochs the
# proxies plateau and the std falls to about half a point (DTM) or two points (patch merging).
EPOCHS = 20
BATCH_SIZE = 64
LR = 2e-3


# Points of the ``tiny`` space (Optuna parameters as `python -m space show tiny` lists them):
# three that differ only in their attention (HiLo = global + local, local windows only, none)
# and LITv2's layout with plain patch merging instead of DTM.
CONTRASTING_POINTS = {
    "hilo-a0.9": dict(mlp_only_s2=False, mlp_only_s3=False, ws_s3=1, alpha=0.9, merge="dtm"),
    "hilo-a0.0": dict(mlp_only_s2=False, mlp_only_s3=False, ws_s3=2, alpha=0.0, merge="dtm"),
    "mlp-only": dict(mlp_only_s2=True, mlp_only_s3=True, merge="dtm"),
    "hilo-a0.9-patch": dict(mlp_only_s2=False, mlp_only_s3=False, ws_s3=1, alpha=0.9, merge="patch"),
}


def contrasting_architectures(space_name: str = "tiny") -> list[tuple[str, LITConfig]]:
    """The proxies the search itself would train for :data:`CONTRASTING_POINTS` of ``space_name``.

    In the ``tiny`` space (embed 32, depths 1-1-2-1, DTM, ConvFFN, 64x64 proxy input) stage
    3's 4x4 map is split by HiLo's 2x2 windows into four local windows, and stage 4's 2x2 map
    is a single window, so stage 4 attends globally wherever it has attention. Every point
    keeps ConvFFN, so all of them also mix neighbouring tokens through 3x3 depthwise convs.
    """
    space = get_space(space_name)
    return [(name, space.proxy_of(space.sample(optuna.trial.FixedTrial(params))))
            for name, params in CONTRASTING_POINTS.items()]


@dataclass(frozen=True)
class ArchScore:
    """Proxy accuracies (percent) and training times of one architecture over seeds."""

    name: str
    params: int
    accuracies: tuple[float, ...]
    seconds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def score_architectures(
    architectures: Sequence[tuple[str, LITConfig]],
    data: Callable[[], DataBundle],
    seeds: int,
    *,
    jobs: int = 1,
    progress: Callable[[str], None] = print,
    **train_options,
) -> list[ArchScore]:
    """Train every architecture once per seed; ``train_options`` go to :func:`train_proxy`.

    ``data`` is called in whichever process trains (e.g. ``functools.partial(load_dataset,
    "digits")``), so ``jobs`` > 1 runs that many trainings at once in spawned processes that
    each load the data once.
    """
    runs = [(name, config, seed) for name, config in architectures for seed in range(seeds)]
    results: dict[tuple[str, int], TrainResult] = {}

    def record(name: str, seed: int, result: TrainResult) -> None:
        results[name, seed] = result
        progress(f"[{len(results)}/{len(runs)}] {name} seed {seed}: top-1 {result.accuracy:.1f}% in "
                 f"{result.train_seconds:.0f}s (per epoch: {', '.join(f'{a:.1f}' for a in result.epoch_accuracies)})")

    if jobs <= 1:
        for name, config, seed in runs:
            record(name, seed, _train_one(data, config, seed, train_options))
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(_train_one, data, config, seed, train_options): (name, seed) for name, config, seed in runs
            }
            for future in as_completed(futures):
                record(*futures[future], future.result())
    return [
        ArchScore(name, results[name, 0].params, tuple(results[name, s].accuracy for s in range(seeds)),
                  tuple(results[name, s].train_seconds for s in range(seeds)))
        for name, _ in architectures
    ]


def _train_one(data: Callable[[], DataBundle], config: LITConfig, seed: int, options: dict) -> TrainResult:
    return train_proxy(config, data(), seed=seed, **options)


def separated_pairs(scores: Sequence[ArchScore]) -> list[tuple[ArchScore, ArchScore]]:
    """Pairs (better first) whose means differ by more than twice the larger of their stds."""
    pairs = []
    for a, b in itertools.combinations(scores, 2):
        if abs(a.mean - b.mean) > 2 * max(a.std, b.std):
            pairs.append((a, b) if a.mean >= b.mean else (b, a))
    return pairs


def format_report(scores: Sequence[ArchScore], pairs: Sequence[tuple[ArchScore, ArchScore]]) -> str:
    width = max(len("architecture"), *(len(s.name) for s in scores))
    lines = [f"{'architecture':<{width}}  {'params':>9}  {'top-1 % (mean +- std)':>21}  {'train s/run':>11}"]
    for s in scores:
        lines.append(f"{s.name:<{width}}  {s.params:>9,}  {f'{s.mean:.2f} +- {s.std:.2f}':>21}  "
                     f"{statistics.fmean(s.seconds):>11.1f}")
    lines.append("")
    if pairs:
        lines.append("pairs that differ by more than twice the larger std:")
        lines += [f"  {a.name} > {b.name}: {a.mean - b.mean:+.2f} points (2 x std = {2 * max(a.std, b.std):.2f})"
                  for a, b in pairs]
    else:
        lines.append("no pair differs by more than twice the larger std: the data set does not separate these proxies")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.separability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help=f"data-set spec (default {DEFAULT_DATASET})")
    parser.add_argument("--data-root", help="where cifar data live (default $LITV2_DATA)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the split and of generated images")
    parser.add_argument("--img-size", type=int, help="input side (default: the data set's, 64 for cluttered-digits)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per architecture (>= 2 for a std)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--device", help="cuda or cpu (default: the best available)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per run (default 1: on a small shared CPU, more threads "
                             "mostly wait on each other)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings run at once, each in its own process (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the scores and settings to FILE")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds} must be >= 1")

    start = time.perf_counter()
    load = functools.partial(load_dataset, args.dataset, root=args.data_root, seed=args.data_seed,
                             img_size=args.img_size)
    try:
        data = load()
    except ValueError as error:
        parser.error(str(error))
    architectures = contrasting_architectures()
    print(f"{data.name}: {len(data.train)} train / {len(data.val)} val images, {data.img_size}x{data.img_size}; "
          f"{len(architectures)} architectures x {args.seeds} seeds, {args.epochs} epochs each, {args.jobs} at a time",
          flush=True)
    scores = score_architectures(
        architectures, load, args.seeds, jobs=args.jobs, progress=lambda line: print(line, flush=True),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device, num_threads=args.threads,
    )
    pairs = separated_pairs(scores)
    wall = time.perf_counter() - start
    print()
    print(format_report(scores, pairs))
    print(f"\nwall time {wall:.0f}s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(dict(settings=vars(args), wall_seconds=wall,
                           scores=[dict(asdict(s), mean=s.mean, std=s.std) for s in scores],
                           separated=[[a.name, b.name] for a, b in pairs],
                           architectures={name: config.to_dict() for name, config in architectures}), out, indent=2)
    return 0 if pairs else 1


if __name__ == "__main__":
    sys.exit(main())
