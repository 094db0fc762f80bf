"""The driver's policies on an in-process executor: promotion, constraints, budget, dedupe.

Jobs run in the test process on a simulated clock with made-up figures, so each search
takes well under a second of training; the storage (sqlite) is real, and the driver reports
to an in-memory tracker (the MLflow records are the end-to-end tests' subject).
"""
import io
import json
import zlib
from pathlib import Path

import optuna
import pytest

from litv2 import LITConfig
from search.core.budget import PRIOR_COUNT_SECONDS, PRIOR_MEASURE_SECONDS, CostModel
from search.core.constraints import Constraints
from search.core.faults import NO_PREDICTION
from search.core.record import TrialRecord
from search.engine.executor import InProcessExecutor, Node, Placement
from search.engine.measuring import measuring_fingerprint
from search.engine.driver import Search, budget_used
from search.engine.endings import SearchError
from search.bench.replay import ProgressRecorder
from search.core.scheduler import MOASHA, Decision, promotion_order
from flat_settings import flat_settings

TrialState = optuna.trial.TrialState


# ---------------------------------------------------------------------- pure scheduler
def test_moasha_rungs_and_a_dominated_trial_stops():
    scheduler = MOASHA(epochs=9, min_epochs=1, eta=3)
    assert scheduler.rungs == (1, 3, 9)
    # Trial 1 dominates both others at rung 1: with 3 results and eta 3 only it goes on.
    for key, accuracy, throughput in (("a", 50.0, 100.0), ("b", 60.0, 120.0), ("c", 40.0, 90.0)):
        scheduler.report(key, ord(key), [accuracy], [throughput])
    assert scheduler.recorded(1) == 3 and scheduler.recorded(3) == 0
    assert [scheduler.decide(key, 1) for key in "bac"] == [Decision.CONTINUE, Decision.STOP, Decision.STOP]
    scheduler.report("c", 99, [40.0] * 9, [90.0])  # the same key again (a re-run) replaces its result
    assert scheduler.recorded(1) == 3 and scheduler.decide("c", 9) == Decision.COMPLETE


def test_moasha_is_asynchronous_the_first_result_continues():
    scheduler = MOASHA(epochs=9, min_epochs=1, eta=3)
    scheduler.report(("arch", 0), 7, [10.0], [5.0])
    assert scheduler.decide(("arch", 0), 1) == Decision.CONTINUE


def test_promotion_prefers_non_dominated_then_hypervolume_contribution():
    points = [(50.0, 100.0), (60.0, 80.0), (40.0, 120.0), (30.0, 50.0), (59.0, 81.0)]
    order = promotion_order(points)
    assert order[-1] == 3  # the only dominated point is last
    # (59, 81) sits between (60, 80) and (50, 100) and adds little area of its own.
    assert order.index(4) > order.index(0) and order.index(4) > order.index(2)
    # Scaling one objective does not change the order (products of gaps).
    assert promotion_order([(a, t * 1000) for a, t in points]) == order


def test_placement_blocks_only_the_measuring_node():
    placement = Placement([Node("head", 2, bench=True), Node("worker", 2, bench=False)])
    node = placement.place("measure")
    assert node == "head"
    placement.start("measure", node)
    assert placement.place("measure") is None  # one measurement per bench node
    for _ in range(2):
        node = placement.place("train")
        assert node == "worker"  # training goes on elsewhere
        placement.start("train", node)
    assert placement.place("train") is None
    placement.end("measure", "head")
    assert placement.place("train") == "head"


def test_a_count_may_take_a_free_slot_of_a_node_waiting_to_measure_a_training_may_not():
    placement = Placement([Node("local", 2, bench=True)])
    placement.start("train", placement.place("train"))
    placement.start("measure", placement.place("measure"))  # waits (in Ray) for the training's core
    assert placement.place("train") is None  # the measurement is never starved by new training
    assert placement.place("count") == "local"  # the next candidate gets ready to measure meanwhile
    placement.start("count", "local")
    assert placement.place("count") is None  # slots still bound what runs


# ---------------------------------------------------------------------- the driver, in process
def _figures(config: LITConfig) -> tuple[float, float, float]:
    """Made-up but architecture-dependent (params, flops, throughput)."""
    depth = sum(config.depths)
    attention = sum(1 for a in config.attention if a)
    flops = 1e8 * depth * (1 + attention)
    return 1e6 * depth, flops, 4000.0 / (1 + attention) / depth


class FakeJobs:
    """Count, measure and train runners with known answers; records what ran."""

    def __init__(self, epoch_seconds: float = 10.0) -> None:
        self.trained: list[tuple[str, int, int]] = []
        self.measured: list[str] = []
        self.epoch_seconds = epoch_seconds

    def runners(self):
        return {"count": self.count, "measure": self.measure, "train": self.train}

    def count(self, job):
        params, flops, _ = _figures(LITConfig.from_json(job.config_json))
        return dict(params=params, flops=flops, wall_seconds=0.1)

    def measure(self, job):
        self.measured.append(job.config_json)
        here = measuring_fingerprint(job.target_key)
        record = dict(device_name=here["device_name"], versions={k: v for k, v in here.items() if k != "device_name"})
        return dict(throughput=_figures(LITConfig.from_json(job.config_json))[2], throughput_spread=0.1,
                    wall_seconds=2.0, measurement=record)

    def train(self, job):
        config = LITConfig.from_json(job.proxy_json)
        self.trained.append((job.proxy_json, job.from_epoch, job.to_epoch))
        quality = (zlib.crc32(job.proxy_json.encode()) % 1000) / 20.0  # stable across interpreters, unlike hash()
        accuracies = [quality + 2 * e for e in range(1, job.to_epoch + 1)]
        return dict(accuracy=accuracies[-1], epoch_accuracies=accuracies, train_seconds=1.0,
                    wall_seconds=self.epoch_seconds * (job.to_epoch - job.from_epoch) * sum(config.depths) / 5)


def run_in_process(tmp_path: Path, jobs: FakeJobs, slots: int = 2, measures_anew: bool = True,
                   tracker: ProgressRecorder | None = None, **changes) -> optuna.Study:
    options = dict(study="s", space="tiny", budget="20000cpu-s", dataset="digits", target="cpu:bs1:64", storage=None,
                   tracking_uri=None, workdir=str(tmp_path), sampler="random", epochs=9, seed=0, address=None,
                   data_root=None, trials_per_device=1, cpus_per_trial=1, max_trials=None)
    options.update(changes)
    settings = flat_settings(**options)

    def executor(search):
        built = InProcessExecutor([Node("local", slots, bench=True)], jobs.runners(),
                                  devices=dict(count=1.0, measure=2.0, train=1.0))
        built.measures_anew = measures_anew
        return built

    # The policies are the subject here, not the records: MLflow's runs are the end-to-end tests' job.
    assert Search(settings, executor=executor, tracker=tracker or ProgressRecorder()).run() == 0
    return optuna.load_study(study_name=settings.search.study, storage=settings.run.storage)


def test_mo_asha_stops_trials_at_each_rung_and_keeps_them_off_the_front(tmp_path):
    jobs = FakeJobs()
    study = run_in_process(tmp_path, jobs, scheduler="mo-asha", max_trials=18)
    own = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    stopped = [t for t in own if "stopped_at" in t.user_attrs]
    complete = [t for t in own if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["stopped_at"] for t in stopped} == {1, 3}
    assert all(t.state == TrialState.PRUNED and t.values is None for t in stopped)
    assert complete and all(t.user_attrs["epochs_done"] == 9 and len(t.user_attrs["epoch_accuracies"]) == 9
                            for t in complete)
    assert {t.number for t in study.best_trials} <= {t.number for t in complete}
    # A stopped trial keeps its fidelity: the curve up to the rung it reached.
    assert all(len(t.user_attrs["epoch_accuracies"]) == t.user_attrs["stopped_at"] for t in stopped)
    # Rung-wise jobs: each continuation resumes where the last rung ended.
    spans = {}
    for proxy, start, end in jobs.trained:
        spans.setdefault(proxy, []).append((start, end))
    assert all(s[0][0] == 0 and all(a[1] == b[0] for a, b in zip(s, s[1:])) for s in spans.values())
    assert any(len(s) == 3 for s in spans.values())


def test_an_infeasible_architecture_is_never_trained(tmp_path):
    jobs = FakeJobs()
    limit = 700.0  # img/s: the fake throughput is 4000 / (1 + attention stages) / depth
    study = run_in_process(tmp_path, jobs, scheduler="full", epochs=1, max_trials=4,
                           constraints=Constraints(min_throughput=limit))
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    feasible = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert infeasible and feasible
    trained = {LITConfig.from_json(proxy) for proxy, _, _ in jobs.trained}
    space_proxy = lambda t: LITConfig.from_json(t.user_attrs["config"])  # noqa: E731
    for trial in infeasible:
        assert trial.state == TrialState.PRUNED and trial.user_attrs["infeasible"] == ["min_throughput"]
        assert trial.constraints["min_throughput"] > 0 and trial.user_attrs["throughput"] < limit
        assert trial.user_attrs.get("epochs_done", 0) == 0
        assert not any(_figures(space_proxy(trial)) == _figures(c) for c in trained if c.depths == space_proxy(trial).depths
                       and c.attention == space_proxy(trial).attention)
    assert all(t.user_attrs["throughput"] >= limit for t in feasible)
    assert {t.number for t in study.best_trials} <= {t.number for t in feasible}


def _points_space(tmp_path: Path, depths: list[list[int]]) -> str:
    points = [{"label": f"d{i}", "fixed": {"depths": d}} for i, d in enumerate(depths)]
    space = {"name": "budgeted", "base": "litv2_s", "fixed_points": True, "deploy_img_size": 224,
             "fixed": {"embed_dim": 32, "num_heads": [2, 4, 8, 16], "drop_path_rate": 0.0},
             "proxy": {"img_size": 64, "width_mult": 1.0}, "points": points}
    path = tmp_path / "budgeted.json"
    path.write_text(json.dumps(space))
    return str(path)


def test_a_budget_that_fits_two_cheap_trials_but_not_one_expensive_starts_the_cheap_ones(tmp_path):
    jobs = FakeJobs()
    space = _points_space(tmp_path, [[2, 2, 30, 2], [1, 1, 1, 1], [1, 1, 2, 1]])
    # Prior before any training: 1000 s per (proxy GFLOP x 1000 images) per epoch.
    study = run_in_process(tmp_path, jobs, space=space, budget="5000cpu-s", epochs=1, slots=1)
    by_label = {t.params["point"]: t for t in study.trials}
    assert "not_trained" in by_label["d0"].user_attrs and by_label["d0"].user_attrs.get("epochs_done", 0) == 0
    assert by_label["d1"].state == TrialState.COMPLETE and by_label["d2"].state == TrialState.COMPLETE
    assert len(jobs.trained) == 2
    assert budget_used(study) <= 5000


def test_fixed_points_times_seeds_run_exactly_once_each(tmp_path, capsys):
    jobs = FakeJobs()
    study = run_in_process(tmp_path, jobs, space="table5", seeds=2, epochs=1, budget="1000000cpu-s")
    assert len(study.trials) == 8  # 4 rows x 2 seeds, and nothing asked of the sampler
    pairs = [(t.params["point"], t.user_attrs["seed"]) for t in study.trials]
    assert len(set(pairs)) == 8 and {s for _, s in pairs} == {0, 1}
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(jobs.trained) == 8
    assert len(jobs.measured) == 4  # one measurement per architecture, shared by its seeds
    assert "every point was run" in capsys.readouterr().out


def test_a_budget_that_cannot_pay_one_trial_is_refused_before_the_study_exists(tmp_path):
    # The priors: a count of 20 cpu-s on 1 core and a measurement of 30 s holding the 2 cores of
    # run_in_process's measuring node: 80 cpu-s before anything is measured.
    jobs = FakeJobs()
    with pytest.raises(ValueError, match=r"--budget 79cpu-s \(79 cpu-s\) cannot pay one trial's count and "
                                         r"measurement .* expected at least 80cpu-s"):
        run_in_process(tmp_path, jobs, budget="79cpu-s", epochs=1)
    assert not jobs.measured and optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}") == []


def test_budget_is_a_hard_cap_with_priors(tmp_path, capsys):
    jobs = FakeJobs()
    study = run_in_process(tmp_path, jobs, budget="80cpu-s", epochs=1)
    assert 0 < budget_used(study) <= 80.0
    assert "the budget is spent" in capsys.readouterr().out


def test_measurements_and_counts_are_estimated_at_what_they_cost_in_device_seconds():
    """What a measurement is observed to cost is already device-seconds (wall seconds x the
    devices it held), so the next estimate is that figure, not that figure x the devices once
    more (which had budgets end early, with work left untrained). Before any, the prior's
    seconds on that many devices."""
    costs = CostModel("cpu", train_images=1437, proxy_scale=1.0)
    assert costs.measure(2.0) == 2 * PRIOR_MEASURE_SECONDS and costs.count(1.0) == PRIOR_COUNT_SECONDS
    costs.observe_measure(7.0 * 2.0)
    costs.observe_count(0.5)
    assert costs.measure(2.0) == 14.0 and costs.count(1.0) == 0.5
    costs.observe_measure(5.0 * 2.0)
    assert costs.measure(2.0) == 14.0  # the largest seen so far
    assert CostModel("gpu", 1437, 1.0).measure(0.0) == 0.0  # a CPU target's measurement costs no GPU time


def test_a_training_is_estimated_at_the_slowest_rate_seen_so_far():
    """Seconds per unit of work (GFLOP x thousand images x epochs) of the slowest finished
    training, not the mean: a DTM network or a loaded node that ran slower per FLOP must not
    let the last trainings a budget starts overrun it."""
    costs = CostModel("cpu", train_images=1000, proxy_scale=1.0)
    costs.observe_train(flops=1e9, epochs=2, device_seconds=20.0)  # 10 s per GFLOP-epoch
    costs.observe_train(flops=2e9, epochs=1, device_seconds=30.0)  # 15 s per GFLOP-epoch: the slowest
    costs.observe_train(flops=1e9, epochs=1, device_seconds=5.0)  # 5 s
    assert costs.train(flops=4e9, epochs=3, devices=1.0) == pytest.approx(15.0 * 4 * 3)


def test_candidates_the_budget_cannot_measure_end_as_not_trained(tmp_path, capsys):
    """Counts that cost far more than their prior leave nothing for the measurements: the
    search ends, and no trial is left RUNNING behind it."""
    jobs = FakeJobs()
    count = jobs.count
    jobs.count = lambda job: {**count(job), "wall_seconds": 500.0}
    study = run_in_process(tmp_path, jobs, budget="600cpu-s", epochs=1)
    assert study.trials and not jobs.trained
    assert all(t.state == TrialState.PRUNED and "not_trained" in t.user_attrs for t in study.trials)  # not failures
    assert any("the budget ran out before its measure job" in t.user_attrs["not_trained"] for t in study.trials)
    assert "not trained, the budget ran out before its measure job" in capsys.readouterr().out


class RisingLoadJobs(FakeJobs):
    """Each measurement takes three times as long as the one before (the node's load rising),
    so the longest so far never bounds the next; one past its allowed seconds stops there."""

    def measure(self, job):
        result = super().measure(job)
        wall = 2.0 * 3 ** (len(self.measured) - 1)
        if job.allowed_seconds is not None and wall > job.allowed_seconds:
            return dict(out_of_time=True, wall_seconds=job.allowed_seconds)
        return {**result, "wall_seconds": wall}


def test_a_measurement_is_stopped_where_it_would_overrun_the_budget(tmp_path, capsys):
    """Measurements of 4, 12, 36, ... cpu-s: each starts because the longest so far fits, and
    the one that would cost 8,748 cpu-s with about 4,500 left is stopped at what is left, not
    before (a measurement early in a budget runs to its end however long it takes)."""
    jobs = RisingLoadJobs()
    study = run_in_process(tmp_path, jobs, budget="9000cpu-s", epochs=1)
    cut = [t for t in study.trials if "measurement used up" in t.user_attrs.get("not_trained", "")]
    assert [t.state for t in cut] == [TrialState.PRUNED]
    assert 0.99 * 9000 <= budget_used(study) <= 9000 + 1e-6  # without the stop: about 13,000
    finished = [t.user_attrs["costs"]["measure"] for t in study.trials
                if "measure" in t.user_attrs.get("costs", {}) and t not in cut]
    assert sorted(finished) == pytest.approx([4.0 * 3 ** k for k in range(len(finished))])  # none stopped early
    assert "not trained, its measurement used up what was left of the budget" in capsys.readouterr().out


def _feasible_and_measured(tmp_path, monkeypatch, limit: float, prediction_error: float | None):
    """A whole tiny-space search under ``--min-throughput limit``; with a predictor ``prediction_error``
    off the fake measurement (None: none)."""
    if prediction_error is not None:
        monkeypatch.setattr(Search, "_predictor", lambda self, path, fingerprint: (
            lambda config: _figures(config)[2] * (1 + prediction_error)))
    jobs = FakeJobs(epoch_seconds=1.0)
    study = run_in_process(tmp_path, jobs, epochs=1, scheduler="full", constraints=Constraints(min_throughput=limit))
    feasible = {t.user_attrs["arch_id"] for t in study.trials if t.state == TrialState.COMPLETE}
    return feasible, len(jobs.measured), study


def test_a_prediction_rules_out_what_it_can_and_the_feasible_set_stays(tmp_path, monkeypatch, capsys):
    from space import get_space

    rates = sorted({_figures(config)[2] for config in get_space("tiny").enumerate()})
    limit = rates[len(rates) // 2]  # between the slowest and the fastest architecture
    (tmp_path / "plain").mkdir()
    (tmp_path / "predicted").mkdir()
    feasible, measured, _ = _feasible_and_measured(tmp_path / "plain", monkeypatch, limit, None)
    with_prediction, measured_predicted, study = _feasible_and_measured(tmp_path / "predicted", monkeypatch, limit, 0.05)
    assert feasible and with_prediction == feasible  # the same architectures meet the constraint
    assert measured_predicted < measured  # the clearly too slow ones were never measured
    ruled_out = [t for t in study.trials if t.user_attrs.get("infeasible_predicted")]
    assert ruled_out and all("throughput" not in t.user_attrs and t.user_attrs["predicted_throughput"] * 1.10 < limit
                             for t in ruled_out)
    measured_trials = [t for t in study.trials if "throughput" in t.user_attrs and not t.user_attrs["throughput_cached"]]
    assert all(t.user_attrs["predicted_throughput"] == pytest.approx(1.05 * t.user_attrs["throughput"])
               for t in measured_trials)
    assert "infeasible (min_throughput" in capsys.readouterr().out


def test_a_search_ranked_by_prediction_measures_nothing_and_says_so(tmp_path, monkeypatch):
    """``--throughput predicted``: the prediction stands for every measurement; it is never
    cached as one (``pick`` measures), and the records, the front and ``status`` say so."""
    from search.cli.views import measurement_line
    from search.engine.cache import ThroughputCache
    from search.study.front import front_table, pareto_front

    monkeypatch.setattr(Search, "_predictor", lambda self, path, fingerprint: (
        lambda config: _figures(config)[2] * 1.2))
    table = tmp_path / "table.json"
    table.write_text("{}")  # what ranks is the stand-in predictor above
    jobs = FakeJobs(epoch_seconds=1.0)
    study = run_in_process(tmp_path, jobs, epochs=1, scheduler="full", throughput="predicted", latency_table=table,
                           max_trials=6)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and jobs.measured == []
    for trial in complete:
        record = TrialRecord.of(trial)
        assert record.throughput_predicted_only and record.measured_times == 0
        assert trial.values[1] == record.throughput == record.predicted_throughput
        assert record.predicted_throughput == pytest.approx(1.2 * _figures(LITConfig.from_json(record.config))[2])
    cache = ThroughputCache(tmp_path / "throughput_cache.db")
    assert all(cache.get(t.user_attrs["arch_id"], "cpu:bs1:64:fp32:t1", {}) is None for t in complete)
    assert "predicted |" in front_table(pareto_front(study)).splitlines()[2]
    assert measurement_line(study.trials).startswith("throughput figures: predicted only (--throughput predicted), ")


def test_a_search_ranked_by_prediction_ends_when_its_table_does_not_fit_the_space(tmp_path, monkeypatch):
    monkeypatch.setattr(Search, "_predictor", lambda self, path, fingerprint: (lambda config: None))
    table = tmp_path / "table.json"
    table.write_text("{}")
    settings = flat_settings(study="s", space="tiny", budget="20000cpu-s", dataset="digits", target="cpu:bs1:64",
                             workdir=str(tmp_path), sampler="random", epochs=1, scheduler="full",
                             throughput="predicted", latency_table=table)
    jobs = FakeJobs()
    search = Search(settings, executor=lambda _: InProcessExecutor([Node("local", 2, bench=True)], jobs.runners(),
                                                                  devices=dict(count=1.0, measure=2.0, train=1.0)),
                    tracker=ProgressRecorder())
    with pytest.raises(SearchError, match="latency table lacks a part"):
        search.run()
    failed = [t for t in search.study.trials if t.user_attrs.get("failure") == NO_PREDICTION]
    assert len(failed) == 3 and all(t.state == TrialState.FAIL for t in failed)
    assert all(t.user_attrs.get("interrupted") for t in search.study.trials if t not in failed)  # in flight at the end
    assert jobs.measured == [] and jobs.trained == []


def test_a_table_from_the_targets_own_machine_ranks_by_prediction_but_is_refused_beside_measurements(tmp_path):
    """``--throughput predicted`` exists for targets the cluster cannot reach: their table was
    made on another node. Beside measurements, a prediction must come from the measuring node."""
    from litv2.latency import LatencyTable, parts_of, save_table
    from litv2.target import parse_target

    target = parse_target("cpu:bs1:64")
    config = LITConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    parts = {p.key: dict(seconds=0.001, low=0.0, high=1.0) for p in parts_of(config, 64)}
    path = tmp_path / "phone.json"
    save_table(LatencyTable(target.key, {"device_name": "the target CPU"}, parts, overhead_factor=1.0), path)
    here = {"device_name": "a cluster node"}

    def predictor(throughput: str):
        settings = flat_settings(study="s", space="tiny", budget="1cpu-h", dataset="digits", target="cpu:bs1:64",
                                 workdir=str(tmp_path), throughput=throughput, latency_table=path)
        return Search(settings, out=io.StringIO())._predictor(path, here)

    assert predictor("predicted")(config) == pytest.approx(1 / (0.001 * len(parts_of(config, 64))))
    with pytest.raises(ValueError, match="latency table was measured on 'the target CPU'.*build one here"):
        predictor("measured")


def test_an_outdated_table_of_the_node_is_set_aside_and_a_named_one_refused(tmp_path, monkeypatch):
    """A node's own table from an older format must not stop every search on the node."""
    from litv2.latency import OutdatedTable, default_table_path

    monkeypatch.setenv("LITV2_CACHE_DIR", str(tmp_path / "cache"))
    here = {"device_name": "this node"}
    settings = flat_settings(study="s", space="tiny", budget="1cpu-h", dataset="digits", target="cpu:bs1:64",
                             workdir=str(tmp_path))
    search = Search(settings, out=io.StringIO())
    own = default_table_path(search.target, here)
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps({"version": 1}))
    assert search._predictor(None, here) is None
    assert "not predicting throughput: the node's" in search.out.getvalue() and "version 1 is not 2" in search.out.getvalue()
    with pytest.raises(OutdatedTable, match="build the table again"):
        search._predictor(own, here)


def test_ranking_by_prediction_needs_a_latency_table_and_a_known_source(tmp_path):
    from search.study.preflight import preflight_search

    unranked = flat_settings(study="s", space="tiny", budget="1cpu-h", dataset="digits", workdir=str(tmp_path),
                             throughput="predicted")
    with pytest.raises(ValueError, match="--throughput predicted ranks by a latency table measured on the target"):
        preflight_search(unranked)
    with pytest.raises(ValueError, match="--throughput 'guessed' is unknown; expected one of measured, predicted"):
        flat_settings(study="s", space="tiny", budget="1cpu-h", dataset="digits", workdir=str(tmp_path),
                      throughput="guessed")


def test_the_prediction_margin_is_learned_from_the_pairs_and_never_below_the_prior():
    from search.core.prediction import FLOOR, MIN_PAIRS, PRIOR_MARGIN, PredictionMargin

    margin = PredictionMargin()
    for _ in range(MIN_PAIRS - 1):
        margin.observe(130.0, 100.0)  # 30 % off
    assert margin.margin == PRIOR_MARGIN  # too few pairs to trust
    margin.observe(130.0, 100.0)
    assert margin.margin == pytest.approx(0.30)
    many = PredictionMargin()
    for error in [0.01] * 18 + [0.5, 0.6]:
        many.observe(100 * (1 + error), 100.0)
    assert many.margin == FLOOR and many.median_error() == pytest.approx(0.01)  # 90 % within 1 %: the floor
    limits = Constraints(min_throughput=100.0)
    assert margin.rules_out(70.0, limits, 1) and not margin.rules_out(80.0, limits, 1)  # 70 x 1.3 < 100 <= 80 x 1.3


def test_a_second_study_reuses_trainings_of_the_same_recipe(tmp_path, capsys):
    jobs = FakeJobs()
    run_in_process(tmp_path, jobs, space="table5", epochs=1, budget="1000000cpu-s")
    assert len(jobs.trained) == 4
    again = run_in_process(tmp_path, jobs, study="t", space="table5", seeds=2, epochs=1, budget="1000000cpu-s")
    assert len(jobs.trained) == 8  # only the four seed-1 rows trained; seed 0 reused
    reused = [t for t in again.trials if t.user_attrs.get("training_reused_from") == "s"]
    assert len(reused) == 4 and all(t.user_attrs["seed"] == 0 and t.state == TrialState.COMPLETE for t in reused)
    assert "4 trainings reused from earlier studies" in capsys.readouterr().out
    third = run_in_process(tmp_path, jobs, study="u", space="table5", epochs=1, budget="1000000cpu-s")
    assert len(jobs.trained) == 8  # a reuse keeps naming the study whose training it is, not the reusing one
    assert {t.user_attrs.get("training_reused_from") for t in third.trials} == {"s"}


def test_a_proxy_of_another_width_is_trained_again(tmp_path):
    jobs = FakeJobs()
    run_in_process(tmp_path, jobs, space="table5", epochs=1, budget="1000000cpu-s")
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("extends: table5\nname: narrow\nproxy: {img_size: 64, width_mult: 0.125}\n")
    run_in_process(tmp_path, jobs, study="n", space=str(narrow), epochs=1, budget="1000000cpu-s")
    assert len(jobs.trained) == 8  # same architectures, data, epochs and seeds: a different proxy network


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_both_slots_of_a_single_node_train_while_measurements_run_alone(tmp_path):
    """Candidates are asked a slot's worth ahead: on one two-slot node, measurements run back
    to back on the drained node and then two proxies train at once (asking only for an idle
    slot trained one at a time there)."""
    import hashlib

    jobs = FakeJobs()
    train = jobs.train

    def uneven(job):  # trainings of different lengths, as real ones are
        result = train(job)
        return {**result, "wall_seconds": result["wall_seconds"] * (1 + hashlib.sha256(job.proxy_json.encode()).digest()[0] / 64)}

    jobs.train = uneven
    study = run_in_process(tmp_path, jobs, scheduler="full", epochs=3, max_trials=8)
    trained = [t for t in study.trials if t.user_attrs.get("train_intervals")]
    trains = [tuple(i[:2]) for t in trained for i in t.user_attrs["train_intervals"]]
    measures = [tuple(t.user_attrs["measure_interval"][:2]) for t in trained]
    assert len(trained) == 8
    assert all(any(_overlap(a, b) for b in trains[:i] + trains[i + 1:]) for i, a in enumerate(trains))
    assert not any(_overlap(a, b) for i, a in enumerate(measures) for b in measures[i + 1:])
    assert not any(_overlap(m, t) for m in measures for t in trains)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # PartialFixedSampler
def test_a_sampler_stuck_on_known_architectures_is_handed_unseen_ones(tmp_path, monkeypatch, capsys):
    """A sampler that proposes one architecture over and over (as GP does once MO-ASHA stopped
    what it likes) still gets the whole finite space evaluated instead of an 'exhausted' search."""
    from space import get_space

    import search.engine.driver as orchestrator

    space = get_space("tiny")
    stuck = space.grid_params()[0]
    monkeypatch.setattr(orchestrator, "make_sampler", lambda name, seed: optuna.samplers.PartialFixedSampler(
        stuck, optuna.samplers.RandomSampler(seed=seed)))
    study = run_in_process(tmp_path, FakeJobs(epoch_seconds=1.0), scheduler="full", epochs=1)
    evaluated = {t.user_attrs["arch_id"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(evaluated) == space.size()
    assert sum(1 for t in study.trials if t.user_attrs.get("drawn_unseen")) == space.size() - 1
    duplicates = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert all(t.params == stuck and t.state == TrialState.PRUNED for t in duplicates)
    assert "known architectures proposed in a row: the next trial is an unseen one" in capsys.readouterr().out


class WideFirstJobs(FakeJobs):
    """Every architecture's first measurement has a wide interval (+-10 %), the next a narrow one."""

    def measure(self, job):
        result = super().measure(job)
        wide = self.measured.count(job.config_json) == 1
        median = result["throughput"] * (1.03 if wide else 1.0)
        half = median * (0.10 if wide else 0.005)
        result.update(throughput=median, throughput_spread=half)
        result["measurement"].update(ci_low=median - half, ci_high=median + half)
        return result


def test_a_wide_figure_is_measured_again_and_the_narrower_kept(tmp_path, capsys):
    jobs = WideFirstJobs()
    study = run_in_process(tmp_path, jobs, space="table5", epochs=1, budget="1000000cpu-s")
    assert len(jobs.measured) == 8 and len(set(jobs.measured)) == 4  # each of the 4 architectures twice
    for trial in study.trials:
        attrs = trial.user_attrs
        expected = _figures(LITConfig.from_json(attrs["config"]))[2]
        assert attrs["throughput"] == pytest.approx(expected) and trial.values[1] == pytest.approx(expected)
        assert attrs["measured_times"] == 2
        assert (attrs["throughput_low"], attrs["throughput_high"]) == pytest.approx((expected * 0.995, expected * 1.005))
    out = capsys.readouterr().out
    assert out.count("is too wide to rank by; measuring it again") == 4
    assert "4 throughput figures measured twice (too wide)" in out


def test_a_backend_that_holds_one_figure_per_architecture_is_not_asked_again(tmp_path, capsys):
    jobs = WideFirstJobs()  # as a replayed table: its wide figures are all there is
    study = run_in_process(tmp_path, jobs, measures_anew=False, space="table5", epochs=1, budget="1000000cpu-s")
    assert len(jobs.measured) == 4 and {t.user_attrs["measured_times"] for t in study.trials} == {1}
    assert "0 throughput figures measured twice" in capsys.readouterr().out


def test_a_narrow_figure_is_measured_once(tmp_path, capsys):
    jobs = FakeJobs()  # spread 0.1 img/s on figures of tens to hundreds: narrow
    study = run_in_process(tmp_path, jobs, space="table5", epochs=1, budget="1000000cpu-s")
    assert len(jobs.measured) == 4
    assert {t.user_attrs["measured_times"] for t in study.trials} == {1}
    assert "0 throughput figures measured twice" in capsys.readouterr().out


def test_a_budget_raised_on_resume_is_the_studys_from_then_on(tmp_path):
    from search.core.budget import parse_budget
    from search.study.studies import settings_of

    study = run_in_process(tmp_path, FakeJobs(), scheduler="full", epochs=1, max_trials=1, budget="200cpu-s")
    settings = settings_of(study)
    raised = settings.with_budget(settings.search.budget.plus(parse_budget("100cpu-s")))

    def executor(search):
        return InProcessExecutor([Node("local", 2, bench=True)], FakeJobs().runners(),
                                 devices=dict(count=1.0, measure=2.0, train=1.0))

    assert Search(raised, executor=executor, tracker=ProgressRecorder()).run(resume=True) == 0
    again = optuna.load_study(study_name="s", storage=settings.run.storage)
    assert settings_of(again).search.budget.seconds == 300  # what `status` reports the study's budget as
