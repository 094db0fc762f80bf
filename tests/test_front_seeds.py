"""The front of a fixed-point study run with several seeds: one point per row, its seeds' mean
accuracy, so a row is on the front by its mean and not by one lucky seed (search.study.front,
published to MLflow by search.engine.endings)."""
import csv
import io
import statistics
from pathlib import Path

import matplotlib.axes
import optuna
import pytest
from mlflow.tracking import MlflowClient

from experiments.options import RunOptions
from experiments.recipes import load_recipe
from experiments.runner import run_recipe
from search.core.record import TrialRecord
from search.engine.driver import RUN_ID_ATTR
from search.study.front import Point, nondominated, pareto_front, plot_front, seed_means
from test_experiments import PAIR, _in_process  # the two-row, two-seed recipe and its in-process engine


def _trial(params: dict, arch: str, accuracy: float, throughput: float, seed: int) -> optuna.trial.FrozenTrial:
    distributions = {name: optuna.distributions.CategoricalDistribution([value]) for name, value in params.items()}
    record = TrialRecord(arch_id=arch, summary=f"{arch} s{seed}", seed=seed, params=1_000_000 + len(arch),
                         flops=2_000_000, throughput=throughput, throughput_low=throughput - 1.0,
                         throughput_high=throughput + 1.0)
    return optuna.trial.create_trial(values=[accuracy, throughput], params=params, distributions=distributions,
                                     user_attrs=record.to_user_attrs())


def _study(trials: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.add_trials(trials)
    return study


def test_seeds_are_averaged_into_one_point_per_row_and_a_lucky_seed_is_not_on_the_front():
    study = _study([
        _trial({"point": "A"}, "a", 90.0, 100.0, 0), _trial({"point": "B"}, "b", 80.0, 120.0, 0),
        _trial({"point": "C"}, "c", 60.0, 300.0, 0), _trial({"point": "A"}, "a", 50.0, 100.0, 1),
        _trial({"point": "B"}, "b", 80.0, 120.0, 1), _trial({"point": "C"}, "c", 64.0, 300.0, 1),
    ])
    assert 0 in {p.trial for p in pareto_front(study)}  # A's first seed alone is on the per-trial front
    means = seed_means(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    assert [(p.trial, p.arch_id, p.accuracy, p.throughput, p.summary) for p in means] == [
        (0, "a", 70.0, 100.0, "A (mean of 2 seeds)"), (1, "b", 80.0, 120.0, "B (mean of 2 seeds)"),
        (2, "c", 62.0, 300.0, "C (mean of 2 seeds)")]
    assert (means[0].throughput_low, means[0].throughput_high, means[0].params) == (99.0, 101.0, 1_000_001)
    assert [p.arch_id for p in nondominated(means)] == ["b", "c"]  # A's mean (70 %) is dominated by B


def test_a_swept_row_is_named_by_its_values_and_a_lone_seed_says_so():
    trials = [_trial({"alpha": 0.9}, "x", 70.0, 10.0, 0), _trial({"alpha": 0.9}, "x", 72.0, 10.0, 1),
              _trial({"alpha": 0.5}, "y", 60.0, 20.0, 0)]
    means = seed_means(_study(trials).trials)
    assert [(p.arch_id, p.accuracy, p.summary) for p in means] == [
        ("x", 71.0, "alpha=0.9 (mean of 2 seeds)"), ("y", 60.0, "alpha=0.5 (1 seed)")]


def test_a_marked_architecture_has_one_legend_entry_however_many_points_carry_it(tmp_path, monkeypatch):
    legends = []
    legend = matplotlib.axes.Axes.legend

    def recording(ax, *args, **kwargs):
        legends.append(ax.get_legend_handles_labels()[1])
        return legend(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", recording)
    seeds = [Point(trial, "s", 70.0 + trial, 100.0, 99.0, 101.0, 1, 1, 1, "") for trial in range(3)]
    plot_front(seeds, seeds[-1:], tmp_path / "front.png", "study", "cpu:bs1:32", {"s": "LITv2-S", "absent": "none"})
    assert [sorted(labels) for labels in legends] == [["LITv2-S", "Pareto front", "evaluated (95% interval of img/s)"]]
    assert (tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"


def test_the_mlflow_front_of_a_two_seed_recipe_has_one_point_per_row(tmp_path):
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(PAIR)
    outcome = run_recipe(load_recipe(str(recipe)), RunOptions(
        budget="3000cpu-s", target="cpu:bs1:32", workdir=str(tmp_path), study="pair", measure_seconds=1.0),
        out=io.StringIO(), executor=_in_process())
    assert outcome.code == 0
    study = optuna.load_study(study_name="pair", storage=f"sqlite:///{tmp_path}/optuna.db")
    accuracies: dict[str, list[float]] = {}
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        accuracies.setdefault(TrialRecord.of(trial).arch_id, []).append(trial.values[0])
    assert sorted(len(seeds) for seeds in accuracies.values()) == [2, 2]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = study.user_attrs[RUN_ID_ATTR]
    assert {"front.csv", "front.png"} <= {a.path for a in client.list_artifacts(parent)}
    rows = list(csv.DictReader(io.StringIO(
        Path(client.download_artifacts(parent, "front.csv", str(tmp_path / "artifacts"))).read_text())))
    assert rows and len({row["arch_id"] for row in rows}) == len(rows)
    for row in rows:
        assert float(row["accuracy"]) == pytest.approx(statistics.fmean(accuracies[row["arch_id"]]))
        assert row["summary"] in ("HiLo (mean of 2 seeds)", "MSA (mean of 2 seeds)")
    means = seed_means(study.trials)
    assert [row["arch_id"] for row in rows] == [p.arch_id for p in nondominated(means)]
