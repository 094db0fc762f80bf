"""``python -m search.bench.overhead``: how much of a trial's wall time the orchestration costs.

Runs a real search (Ray tasks, Optuna storage, MLflow logging, throughput measurement)
whose training is a fixed busy workload of ``--trial-seconds`` holding every core (so trials
never wait for each other's exclusive measurements), then reports per trial
the wall time from ask to tell, the time spent training or measuring, and the rest: the
overhead. Trials after the first wave run on warm (reused) Ray workers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from ..core.record import TrialRecord


@dataclass(frozen=True)
class _Result:
    accuracy: float
    epoch_accuracies: tuple[float, ...]
    train_seconds: float
    params: int = 0


def synthetic_train(config, data, *, epochs: int, seed: int, device: str, start_epoch: int = 0,
                    stop_epoch: int | None = None, checkpoint: str | None = None, num_workers: int = 0) -> _Result:
    """Busy-wait one second per epoch from ``start_epoch`` to ``stop_epoch`` (the benchmark's
    stand-in for training; also used by tests that need long, predictable trainings)."""
    stop_epoch = epochs if stop_epoch is None else stop_epoch
    start = time.perf_counter()
    while time.perf_counter() - start < stop_epoch - start_epoch:
        sum(i * i for i in range(10_000))
    accuracies = tuple(50.0 + seed % 7 + epoch for epoch in range(1, stop_epoch + 1))
    return _Result(accuracy=accuracies[-1], epoch_accuracies=accuracies, train_seconds=time.perf_counter() - start)


def _search_overhead(trial_seconds: int, trials: int, space: str) -> list[optuna.trial.FrozenTrial]:
    from ..engine.driver import Search
    from ..core.budget import parse_budget
    from ..core.target import parse_target
    from ..study.settings import RunConfig, SearchConfig, SearchSettings

    with tempfile.TemporaryDirectory() as workdir:
        cores = os.cpu_count() or 1
        settings = SearchSettings(
            SearchConfig(study="overhead", space=space, budget=parse_budget("1000000cpu-s"),
                         target=parse_target("cpu:bs1:64"), dataset="digits", sampler="random", epochs=trial_seconds,
                         max_trials=trials, scheduler="full", trainer="search.bench.overhead:synthetic_train"),
            RunConfig(Path(workdir), cpus_per_trial=cores))
        Search(settings).run()
        study = optuna.load_study(study_name="overhead", storage=settings.run.storage)
        return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if TrialRecord.of(t).trial_wall_seconds is not None]


def _checkpoint_overhead(space: str, rounds: int) -> list[tuple[float, float, float]]:
    """(rung training seconds, checkpoint save + load seconds, share) of one-epoch rungs of the
    space's first proxy, trained 0 -> 1 (saving) then 1 -> 2 (loading) of a 2-epoch schedule."""
    from space import get_space

    from ..training.data import load_dataset
    from ..training.proxy import train_proxy

    study_space = get_space(space)
    sampled = study_space.sample(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    proxy = study_space.proxy_of(sampled)
    data = load_dataset("digits", seed=0, img_size=study_space.proxy.img_size)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "rung.pt")
        for _ in range(rounds):
            first = train_proxy(proxy, data, epochs=2, stop_epoch=1, checkpoint=checkpoint, device="cpu", num_threads=1)
            second = train_proxy(proxy, data, epochs=2, start_epoch=1, checkpoint=checkpoint, device="cpu",
                                 num_threads=1)
            rung = (first.train_seconds + second.train_seconds) / 2
            io = first.checkpoint_seconds + second.checkpoint_seconds
            rows.append((rung, io, 100 * io / rung))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--trial-seconds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--checkpoint-rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = _search_overhead(args.trial_seconds, args.trials, args.space)
    print("| trial | wall s | counting+measuring+training s | overhead s | overhead % |")
    print("|---|---|---|---|---|")
    shares = []
    for trial in rows:
        record = TrialRecord.of(trial)
        wall, busy = record.trial_wall_seconds, record.busy_seconds
        shares.append(100 * (wall - busy) / wall)
        print(f"| {trial.number} | {wall:.2f} | {busy:.2f} | {wall - busy:.2f} | {shares[-1]:.1f} |")
    warm = shares[1:] or shares
    print(f"overhead on warm workers (trials after the first): median {statistics.median(warm):.1f}%, "
          f"max {max(warm):.1f}% of trial wall time")
    print()
    print(f"| round | one-epoch rung s ({args.space} proxy, digits) | checkpoint save + load s | share % |")
    print("|---|---|---|---|")
    for number, (rung, io, share) in enumerate(_checkpoint_overhead(args.space, args.checkpoint_rounds)):
        print(f"| {number} | {rung:.2f} | {io:.3f} | {share:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
