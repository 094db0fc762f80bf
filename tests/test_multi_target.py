"""Several deployment targets in one study: settings, objectives, the N-objective hypervolume
and promotion, and a whole in-process search with one front per target (the real Ray
search of two targets is in test_search_e2e)."""
import itertools

import numpy as np
import optuna
import pytest

from litv2 import LITConfig
from search.cli.main import main
from search.cli.views import status_text, write_front
from search.core.constraints import Constraints
from search.core.hypervolume import hypervolume, hypervolume_contributions
from search.core.objectives import OBJECTIVES, create_objective_study, objectives
from search.core.scheduler import nondominated_ranks, promotion_order
from search.core.target import parse_target
from search.deploy.pick import front_candidates
from search.study.front import pareto_front
from search.study.settings import SearchSettings
from search.study.studies import budget_used
from flat_settings import flat_settings
from test_search_policy import FakeJobs, _figures, run_in_process
from test_vocabularies import _optuna_hypervolume

TrialState = optuna.trial.TrialState
EAGER, ORT = "cpu:bs1:64:fp32:t1", "cpu:bs1:64:fp32:t1:ort"


# ---------------------------------------------------------------------- settings and objectives
def _settings(tmp_path, **changes) -> SearchSettings:
    options = dict(study="s", space="tiny", budget="1cpu-h", dataset="digits", target="cpu:bs1:64",
                   more_targets=("cpu:bs1:64:ort",), workdir=str(tmp_path))
    options.update(changes)
    return flat_settings(**options)


def test_targets_are_stored_with_the_study_and_read_back(tmp_path):
    settings = _settings(tmp_path)
    assert [t.key for t in settings.search.targets] == [EAGER, ORT]
    again = SearchSettings.from_json(settings.to_json())
    assert again.search.targets == settings.search.targets
    assert settings.as_params()["more_targets"] == [ORT]
    single = _settings(tmp_path, more_targets=())
    assert SearchSettings.from_json(single.to_json()).search.targets == (parse_target(EAGER),)
    assert "more_targets" not in single.as_params()


@pytest.mark.parametrize("more,needle", [
    (("cpu:bs1:64",), "--target cpu:bs1:64:fp32:t1 is given twice"),
    (("cpu:bs1:96:ort",), "share a resolution; expected one of 64 px"),
    (("cuda:bs8:64:fp16",), "run on one device kind; expected only cpu targets"),
])
def test_targets_one_study_cannot_serve_are_refused(tmp_path, more, needle):
    with pytest.raises(ValueError, match=needle):
        _settings(tmp_path, more_targets=more)


def test_a_prediction_ranks_one_target_only(tmp_path):
    with pytest.raises(ValueError, match="expected a single --target"):
        _settings(tmp_path, throughput="predicted")


def test_objectives_name_each_target_and_keep_the_single_target_names():
    assert objectives([EAGER]) == OBJECTIVES
    names = [o.name for o in objectives([EAGER, ORT])]
    assert names == ["proxy_top1", "throughput/cpu_bs1_64_fp32_t1", "throughput/cpu_bs1_64_fp32_t1_ort"]
    study = create_objective_study("o", optuna.storages.InMemoryStorage(), optuna.samplers.RandomSampler(),
                                   [EAGER, ORT])
    assert len(study.directions) == 3 and study.metric_names == names


@pytest.mark.parametrize("argv,needle", [
    (["--target", "cpu:bs1:64", "--target", "cpu:bs1:64"], "is given twice"),
    (["--target", "cpu:bs1:64", "--target", "cpu:bs1:96:ort"], "share a resolution"),
    (["--target", "cpu:bs1:64", "--target", "cpu:bs1:64:onnx"], "onnx"),
])
def test_bad_target_lists_exit_2_and_create_nothing(tmp_path, capsys, argv, needle):
    code = main(["run", *argv, "--workdir", str(tmp_path), "--dataset", "digits"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("search: error:") and needle in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- N objectives: volume and promotion
@pytest.mark.parametrize("seed", range(8))
def test_the_hypervolume_of_three_objectives_is_optunas(seed):
    rng = np.random.default_rng(seed)
    points = [tuple(p) for p in rng.uniform(0, 100, size=(9, 3)).tolist()]
    from optuna._hypervolume import compute_hypervolume  # private: an independent reference only

    expected = float(compute_hypervolume(-np.asarray(points), np.zeros(3)))
    assert hypervolume(points) == pytest.approx(expected, rel=1e-9)
    front = [points[i] for i, rank in enumerate(nondominated_ranks(points)) if rank == 0]
    total = hypervolume(front)
    for i, share in enumerate(hypervolume_contributions(front)):
        rest = front[:i] + front[i + 1:]
        alone = float(compute_hypervolume(-np.asarray(rest), np.zeros(3))) if rest else 0.0
        assert share == pytest.approx(total - alone, rel=1e-9, abs=1e-9)


def test_two_dimensional_volumes_are_unchanged():
    points = [(80.0, 100.0), (60.0, 300.0), (50.0, 50.0)]
    assert hypervolume(points) == pytest.approx(_optuna_hypervolume(points))


def test_promotion_sees_every_target():
    # (accuracy, eager img/s, ort img/s): trial 2 is dominated on eager alone, but fastest in onnxruntime.
    points = [(60.0, 100.0, 150.0), (59.0, 120.0, 160.0), (58.0, 90.0, 400.0), (50.0, 80.0, 100.0)]
    assert nondominated_ranks([p[:2] for p in points])[2] == 1
    ranks = nondominated_ranks(points)
    assert ranks[:3] == [0, 0, 0] and ranks[3] == 1
    order = promotion_order(points)
    assert order[-1] == 3 and order.index(2) < 3
    scaled = [(a, e * 1000, o / 7) for a, e, o in points]  # units do not change the order
    assert promotion_order(scaled) == order


# ---------------------------------------------------------------------- a whole search, in process
class TargetJobs(FakeJobs):
    """Made-up figures whose order differs between the targets: onnxruntime speeds up
    networks with attention stages (4x each), eager PyTorch does not."""

    def __init__(self) -> None:
        super().__init__()
        self.measured_on: list[tuple[str, str]] = []

    def measure(self, job):
        result = super().measure(job)
        config = LITConfig.from_json(job.config_json)
        self.measured_on.append((job.config_json, job.target_key))
        if job.target_key.endswith(":ort"):
            result["throughput"] *= 4.0 ** sum(1 for a in config.attention if a)
        return result


@pytest.fixture(scope="module")
def two_target_study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two")
    jobs = TargetJobs()
    study = run_in_process(tmp_path, jobs, scheduler="mo-asha", max_trials=14, more_targets=("cpu:bs1:64:ort",))
    return tmp_path, jobs, study


def test_every_trained_architecture_is_measured_on_every_target_the_first_first(two_target_study):
    _, jobs, study = two_target_study
    assert len(study.directions) == 3
    trained = [t for t in study.trials if t.user_attrs.get("epochs_done")]
    assert trained
    for trial in trained:
        on = [key for config, key in jobs.measured_on if config == trial.user_attrs["config"]]
        assert on == [EAGER, ORT]
        figures = trial.user_attrs["target_figures"]
        assert set(figures) == {EAGER, ORT} and figures[EAGER]["throughput"] == trial.user_attrs["throughput"]
    for trial in (t for t in study.trials if t.state == TrialState.COMPLETE):
        figures = trial.user_attrs["target_figures"]
        assert trial.values == [trial.values[0], figures[EAGER]["throughput"], figures[ORT]["throughput"]]
    stopped = [t for t in study.trials if "stopped_at" in t.user_attrs]
    assert stopped  # MO-ASHA ranked by accuracy and both throughputs


def test_each_target_has_its_own_front(two_target_study):
    _, _, study = two_target_study
    best = {t.number for t in study.best_trials}
    fronts = {key: pareto_front(study, key) for key in (EAGER, ORT)}
    assert fronts[EAGER] != fronts[ORT]
    for key, front in fronts.items():
        assert front and {p.trial for p in front} <= best
        assert nondominated_ranks([(p.accuracy, p.throughput) for p in front]) == [0] * len(front)
        assert all(p.throughput == study.trials[p.trial].user_attrs["target_figures"][key]["throughput"] for p in front)
        assert [c.trial for c in front_candidates(study, key)] == sorted(p.trial for p in front)
    assert {p.trial for p in pareto_front(study)} == {p.trial for p in fronts[EAGER]}  # None: the first target


def test_status_and_front_speak_of_every_target(two_target_study, tmp_path):
    workdir, _, _ = two_target_study
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    status = status_text("s", storage)
    assert f"target {EAGER}, {ORT}" in status
    assert f"front on {EAGER} (full fidelity only)" in status and f"front on {ORT} (full fidelity only)" in status
    both = write_front("s", storage, None, None)
    assert f"front on {EAGER}:" in both and f"front on {ORT}:" in both
    csv_path = tmp_path / "ort.csv"
    table = write_front("s", storage, str(csv_path), None, parse_target("cpu:bs1:64:ort"))
    assert table in both and csv_path.read_text().startswith("trial,arch_id,")
    with pytest.raises(ValueError, match="name the front to write with --target"):
        write_front("s", storage, str(tmp_path / "x.csv"), None)
    with pytest.raises(ValueError, match="is not a target of study 's'"):
        write_front("s", storage, None, None, parse_target("cpu:bs1:64:compile"))
    assert not (tmp_path / "x.csv").exists()


def test_pick_needs_a_target_of_a_study_of_several(two_target_study, capsys):
    workdir, _, _ = two_target_study
    assert main(["pick", "--study", "s", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "has 2 targets" in err and ORT in err


def test_a_constraint_on_the_first_target_spares_the_other_measurements(tmp_path):
    jobs = TargetJobs()
    study = run_in_process(tmp_path, jobs, scheduler="full", epochs=1, max_trials=4, more_targets=("cpu:bs1:64:ort",),
                           constraints=Constraints(min_throughput=700.0))
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert infeasible
    for trial in infeasible:
        assert [key for config, key in jobs.measured_on if config == trial.user_attrs["config"]] == [EAGER]
        assert _figures(LITConfig.from_json(trial.user_attrs["config"]))[2] < 700.0
    assert not list(itertools.chain.from_iterable(
        t.user_attrs.get("infeasible", []) for t in study.trials if t.state == TrialState.COMPLETE))


def test_a_new_architecture_of_two_targets_is_estimated_at_two_measurements(tmp_path):
    # The priors on run_in_process's node: a count of 20 cpu-s, a measurement of 30 s on 2 cores per target.
    jobs = TargetJobs()
    with pytest.raises(ValueError, match=r"expected at least 140cpu-s"):
        run_in_process(tmp_path, jobs, budget="139cpu-s", epochs=1, more_targets=("cpu:bs1:64:ort",))
    assert not jobs.measured_on
    study = run_in_process(tmp_path, jobs, budget="140cpu-s", epochs=1, more_targets=("cpu:bs1:64:ort",))
    assert [key for _, key in jobs.measured_on][:2] == [EAGER, ORT] and budget_used(study) <= 140
