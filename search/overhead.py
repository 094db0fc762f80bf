"""``python -m search.overhead``: how much of a trial's wall time the orchestration costs.

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
from dataclasses import dataclass, replace

import optuna


@dataclass(frozen=True)
class _Result:
    accuracy: float
    epoch_accuracies: tuple[float, ...]
    train_seconds: float
    params: int = 0


def synthetic_train(config, data, *, epochs: int, seed: int, device: str, start_epoch: int = 0,
                    stop_epoch: int | None = None, checkpoint: str | None = None) -> _Result:
    """Busy-wait one second per epoch from ``start_epoch`` to ``stop_epoch`` (the benchmark's
    stand-in for training; also used by tests that need long, predictable trainings)."""
    stop_epoch = epochs if stop_epoch is None else stop_epoch
    start = time.perf_counter()
    while time.perf_counter() - start < stop_epoch - start_epoch:
        sum(i * i for i in range(10_000))
    accuracies = tuple(50.0 + seed % 7 + epoch for epoch in range(1, stop_epoch + 1))
    return _Result(accuracy=accuracies[-1], epoch_accuracies=accuracies, train_seconds=time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    from .orchestrator import Search
    from .settings import build_settings

    parser = argparse.ArgumentParser(prog="python -m search.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--trial-seconds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--space", default="tiny")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        cores = os.cpu_count() or 1
        per_trial = (args.trial_seconds + 4.0) * cores  # training plus a measurement, in core-seconds
        settings = build_settings(
            study="overhead", space=args.space, budget=f"{per_trial * args.trials:.0f}cpu-s", dataset="digits",
            target="cpu:bs1:64", storage=None, tracking_uri=None, workdir=workdir, sampler="random",
            epochs=args.trial_seconds, seed=0, address=None, data_root=None, trials_per_device=1,
            cpus_per_trial=cores, measure_repeats=3,
        )
        settings = replace(settings, trainer="search.overhead:synthetic_train")
        Search(settings).run()
        study = optuna.load_study(study_name="overhead", storage=settings.storage)
        rows = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "trial_wall_seconds" in t.user_attrs]
    print("| trial | wall s | training+measuring s | overhead s | overhead % |")
    print("|---|---|---|---|---|")
    shares = []
    for trial in rows:
        wall, busy = trial.user_attrs["trial_wall_seconds"], trial.user_attrs["busy_seconds"]
        shares.append(100 * (wall - busy) / wall)
        print(f"| {trial.number} | {wall:.2f} | {busy:.2f} | {wall - busy:.2f} | {shares[-1]:.1f} |")
    warm = shares[1:] or shares
    print(f"overhead on warm workers (trials after the first): median {statistics.median(warm):.1f}%, "
          f"max {max(warm):.1f}% of trial wall time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
