"""The tabular benchmark's replay: recorded figures in, the real driver on a simulated clock.

A synthetic table of the ``bench`` space (made-up but architecture-dependent figures, no
training) stands in for the shipped one, so every test runs in seconds.
"""
import hashlib

import pytest

from search.engine.jobs import CountJob, MeasureJob, TrainJob
from search.bench.replay import ReplayingExecutor, Strategy, TableJobs, replay
from search.bench.table import BenchTable, Row

EPOCHS = 9
BUDGET = "900cpu-s"


def _unit(text: str, salt: str) -> float:
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def synthetic_table(space_name: str = "bench") -> BenchTable:
    from space import arch_id, get_space, summary

    rows = []
    for config in get_space(space_name).enumerate():
        key = arch_id(config)
        depth = sum(config.depths)
        quality = 60 + 30 * _unit(key, "q")
        accuracies = tuple(quality * (1 - 0.5 ** (e + _unit(key, "r"))) for e in range(1, EPOCHS + 1))
        rows.append(Row(arch_id=key, summary=summary(config), config=config.to_json(), params=depth * 100_000,
                        flops=depth * 10_000_000, throughput=100 + 200 * _unit(key, "t"), throughput_spread=1.0,
                        count_seconds=0.5 + _unit(key, "c"), measure_seconds=2 + _unit(key, "m"),
                        epoch_seconds=0.5 * depth + _unit(key, "e"), epoch_accuracies=accuracies))
    meta = dict(space=space_name, dataset="digits", target="cpu:bs1:224:fp32:t1", epochs=EPOCHS, seed=0,
                study="synthetic", machine=dict(device="test-cpu", cpu="test", cores=2),
                measurement_versions={"torch": "0"})
    return BenchTable(meta, tuple(rows))


@pytest.fixture(scope="module")
def table() -> BenchTable:
    return synthetic_table()


@pytest.fixture(scope="module")
def jobs(table) -> TableJobs:
    return TableJobs(table)


def _row(table: BenchTable, index: int = 7) -> Row:
    return sorted(table.rows, key=lambda r: r.arch_id)[index]


def test_replaying_executor_returns_recorded_figures_on_the_recorded_clock(table, jobs):
    from litv2 import LITConfig
    from space import get_space
    from search.engine.executor import try_submit

    row = _row(table)
    proxy = get_space("bench").proxy_of(LITConfig.from_json(row.config)).to_json()
    executor = ReplayingExecutor(jobs, workers=2)
    assert try_submit(executor, CountJob(0, row.config, 224))
    [event] = executor.wait()
    assert (event.result["params"], event.result["flops"]) == (row.params, row.flops)
    assert executor.clock == pytest.approx(row.count_seconds) == event.result["wall_seconds"]
    assert try_submit(executor, MeasureJob(0, row.config, table.meta["target"]))
    [event] = executor.wait()
    assert event.result["throughput"] == row.throughput and event.result["throughput_spread"] == row.throughput_spread
    assert executor.clock == pytest.approx(row.count_seconds + row.measure_seconds)

    def train(start: int, stop: int) -> TrainJob:
        return TrainJob(trial=0, proxy_json=proxy, dataset="digits", data_root=None, data_seed=0, img_size=32,
                        from_epoch=start, to_epoch=stop, max_epochs=EPOCHS, seed=0, use_gpu=False, threads=1,
                        checkpoint="unused")

    before = executor.clock
    assert try_submit(executor, train(0, 3))
    [event] = executor.wait()
    assert event.result["epoch_accuracies"] == list(row.epoch_accuracies[:3])
    assert executor.clock - before == pytest.approx(3 * row.epoch_seconds)
    assert try_submit(executor, train(3, EPOCHS))
    [event] = executor.wait()
    assert event.result["accuracy"] == row.epoch_accuracies[-1]
    assert executor.clock - before == pytest.approx(EPOCHS * row.epoch_seconds)
    assert executor.devices["measure"] == 2.0  # a measurement holds (and is charged) every simulated core


def test_replay_is_deterministic_for_a_fixed_seed(jobs):
    strategy = Strategy("tpe", "mo-asha")
    first, again = replay(jobs, strategy, 3, 4, "500cpu-s"), replay(jobs, strategy, 3, 4, "500cpu-s")
    assert first == again
    assert first.trained > 5 and len(first.points) > 2
    assert replay(jobs, strategy, 4, 4, "500cpu-s").points != first.points


@pytest.mark.parametrize("strategy", [Strategy("random", "full"), Strategy("nsga2", "mo-asha")])
def test_budget_curve_never_exceeds_the_budget(jobs, strategy):
    curve = replay(jobs, strategy, 0, 4, BUDGET)
    spent = [used for used, _ in curve.points]
    volumes = [hv for _, hv in curve.points]
    assert curve.budget == 900.0
    assert all(0 < s <= curve.budget for s in spent) and spent == sorted(spent)
    assert spent[-1] == curve.spent and curve.spent > 0.8 * curve.budget  # most of it was used, none beyond
    assert volumes == sorted(volumes) and volumes[-1] > 0
    assert curve.hypervolume_at(curve.budget) == volumes[-1] and curve.hypervolume_at(0.0) == 0.0
    assert curve.budget_to_reach(volumes[-1]) <= curve.spent and curve.budget_to_reach(volumes[-1] + 1) is None


def _predicted(table: BenchTable, error: float = 0.05) -> BenchTable:
    """``table`` with every prediction ``error`` off its measurement, one way or the other by architecture."""
    from search.bench.table import predict_table

    by_config = {row.config: row for row in table.rows}
    return predict_table(table, lambda config: by_config[config].throughput * (
        1 + (error if _unit(by_config[config].arch_id, "p") < 0.5 else -error)), "synthetic")


def test_a_replay_ranked_by_prediction_measures_only_the_front_it_would_stop_with(table):
    from search.core.hypervolume import hypervolume

    jobs = TableJobs(_predicted(table))
    measured = []
    jobs.measure = lambda job: measured.append(job) or {}  # must never be called
    strategy = Strategy("random", "full", "predicted")
    curve = replay(jobs, strategy, 0, 4, BUDGET)
    assert strategy.name == "random+full+predicted" and measured == [] and curve.trained > 5
    # The last point: all the search spent, plus measuring the front it stopped with (the
    # front of its last completed trial, scored the same way): at least as far, as high.
    assert curve.points[-1][1] == curve.points[-2][1] and curve.points[-1][0] >= curve.points[-2][0]
    assert curve.spent == curve.points[-1][0] > 0.8 * curve.budget
    best = hypervolume([(row.epoch_accuracies[-1], row.throughput) for row in table.rows])
    assert all(0 < hv <= best for _, hv in curve.points[:-1])


def test_the_front_measuring_recorder_scores_a_front_by_its_measured_figures(table):
    from search.bench.replay import FrontMeasuringRecorder
    from search.core.hypervolume import hypervolume

    jobs = TableJobs(table)
    first, second = table.rows[3], table.rows[11]
    recorder = FrontMeasuringRecorder(jobs, workers=4)
    recorder.log_progress(2, dict(budget_used=100.0, hypervolume=1.0, front_size=2))
    recorder.log_front(f"arch_id,accuracy\n{first.arch_id},90.0\n{second.arch_id},80.0\n", None)
    cost = 4 * (first.measure_seconds + second.measure_seconds)
    assert recorder.progress == [(100.0 + cost, hypervolume([(90.0, first.throughput), (80.0, second.throughput)]))]
    assert recorder.closing_point(150.0) == (150.0 + cost, recorder.progress[-1][1])


def test_strategies_ranked_by_prediction_need_the_tables_predictions(table, tmp_path):
    from search.bench.strategies import bench_strategies

    path = tmp_path / "table.json.gz"
    table.save(path)
    with pytest.raises(ValueError, match="needs the table's predictions: add them with 'python -m search bench-table"):
        bench_strategies(path, ["random"], ["full"], 1, 4, BUDGET, tmp_path / "out", 1,
                         throughputs=("measured", "predicted"))
    path = tmp_path / "predicted.json.gz"  # a new path: a process keeps each table it loaded
    _predicted(table).save(path)
    text = bench_strategies(path, ["random"], ["full"], 1, 4, BUDGET, tmp_path / "out", 1,
                            throughputs=("measured", "predicted"), say=lambda line: None)
    assert "| random+full | 1 |" in text and "| random+full+predicted | 1 |" in text


def test_a_table_missing_an_architecture_of_its_space_is_refused(table):
    partial = BenchTable(table.meta, table.rows[1:])
    with pytest.raises(ValueError, match=f"records {len(table.rows) - 1} of the {len(table.rows)} architectures"):
        TableJobs(partial)


def test_table_round_trip_and_bad_files(table, tmp_path):
    path = tmp_path / "t.json.gz"
    table.save(path)
    assert BenchTable.load(path) == table
    assert path.read_bytes() == (table.save(tmp_path / "u.json.gz") or (tmp_path / "u.json.gz").read_bytes())
    (tmp_path / "bad.json.gz").write_text("not gzip")
    for bad in (tmp_path / "missing.json.gz", tmp_path / "bad.json.gz"):
        with pytest.raises(ValueError, match=str(bad.name)):
            BenchTable.load(bad)


def test_kendall_tau_of_the_last_epoch_is_one(table):
    from search.bench.strategies import kendall_by_epoch

    taus = kendall_by_epoch(table)
    assert [e for e, _ in taus] == list(range(1, EPOCHS + 1))
    assert taus[-1][1] == pytest.approx(1.0) and all(-1 <= t <= 1 for _, t in taus)


def test_bench_strategies_command_writes_the_report(table, tmp_path, capsys):
    from search.cli.main import main

    path = tmp_path / "table.json.gz"
    table.save(path)
    out = tmp_path / "report"
    assert main(["bench-strategies", "--table", str(path), "--samplers", "random,tpe", "--seeds", "1",
                 "--budget", "900cpu-s", "--processes", "1", "--out", str(out)]) == 0
    text = (out / "strategies.md").read_text()
    for name in ("random+full", "random+mo-asha", "tpe+full", "tpe+mo-asha"):
        assert f"| {name} | 1 |" in text
    # The baseline reaches its own final hypervolume exactly when its budget ends, never before it is spent.
    assert "| random+full | 1 |" in text and "1/1 |" in text.split("| random+full |")[1].splitlines()[0]
    assert (out / "strategies.png").stat().st_size > 10_000
    assert len((out / "curves.csv").read_text().splitlines()) == 1 + 4 * 101
    assert "Kendall tau" in capsys.readouterr().out


@pytest.mark.parametrize("command, argv, message", [
    ("bench-strategies", ["--samplers", "random,cmaes"], "--samplers 'cmaes' is unknown"),
    ("bench-strategies", ["--schedulers", "full,hyperband"], "--schedulers 'hyperband' is unknown"),
    ("bench-strategies", ["--seeds", "0"], "--seeds 0 is invalid"),
    ("bench-strategies", ["--samplers", "gp"], "the baseline random+full every strategy is measured against is left out"),
    ("bench-strategies", ["--budget", "1gpu-h"], "--budget '1gpu-h' is invalid"),
    ("bench-strategies", ["--table", "nowhere.json.gz"], "table 'nowhere.json.gz' does not exist"),
    ("bench-table", ["--remeasure", "nowhere.json.gz"], "table 'nowhere.json.gz' does not exist"),
    ("bench-table", ["--remeasure", "x.json.gz", "--measure-seconds", "0"], "--measure-seconds 0.0 is invalid"),
    ("bench-strategies", ["--throughputs", "measured,guessed"], "--throughputs 'guessed' is unknown"),
    ("bench-table", ["--predict", "nowhere.json.gz"], "table 'nowhere.json.gz' does not exist"),
    ("bench-table", ["--predict", "{shipped}", "--lut", "nowhere.json"], "--lut 'nowhere.json' does not exist"),
])
def test_bench_bad_input_is_one_line_and_exit_2(tmp_path, capsys, command, argv, message):
    from search.cli.main import main

    from search.bench import SHIPPED_TABLE

    out = tmp_path / "out"  # bench-strategies' report folder, bench-table's table file
    argv = [arg.replace("{shipped}", str(SHIPPED_TABLE)) for arg in argv]
    assert main([command, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_export_reads_a_recording_study_into_rows(table):
    """Rows come from what the driver stores on a completed full-fidelity trial."""
    import optuna

    from search.bench.table import export_table
    from search.core.budget import parse_budget
    from search.core.target import parse_target
    from search.study.settings import SearchConfig

    row = _row(table)
    study = optuna.create_study(directions=["maximize", "maximize"])
    trial = study.ask()
    attrs = dict(arch_id=row.arch_id, summary=row.summary, config=row.config, params=row.params, flops=row.flops,
                 throughput=row.throughput, throughput_spread=row.throughput_spread,
                 epoch_accuracies=list(row.epoch_accuracies), costs={"count": 1.25, "measure": 8.0, "train": 18.0},
                 train_intervals=[[100.0, 118.0, "node"]], measure_interval=[90.0, 94.0, "node"])
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [row.epoch_accuracies[-1], row.throughput])
    stopped = study.ask()  # a trial that never reached the last epoch is not a row
    stopped.set_user_attr("epoch_accuracies", [10.0])
    study.tell(stopped, state=optuna.trial.TrialState.PRUNED)
    config = SearchConfig(study="rec", space="bench", budget=parse_budget("1cpu-h"), target=parse_target("cpu:bs1:224"),
                          dataset="digits", sampler="random", scheduler="full", epochs=EPOCHS)
    exported = export_table(study, config, {"device_name": "cpu-x", "torch": "9"})
    [got] = exported.rows
    assert got.epoch_accuracies == row.epoch_accuracies and got.throughput == row.throughput
    assert (got.count_seconds, got.measure_seconds, got.epoch_seconds) == (1.25, 4.0, 18.0 / EPOCHS)
    assert exported.meta["machine"]["device"] == "cpu-x" and exported.meta["measurement_versions"] == {"torch": "9"}
    assert exported.meta["versions"]["optuna"] == optuna.__version__
    other = study.ask()  # measured by another study of the work directory: its seconds are unknown here
    for key, value in {**attrs, "arch_id": "b" * 12, "measure_interval": None}.items():
        other.set_user_attr(key, value)
    study.tell(other, [row.epoch_accuracies[-1], row.throughput])
    with pytest.raises(ValueError, match=f"architecture {'b' * 12} \\(trial 2\\) took its throughput from a measurement of another"):
        export_table(study, config, {"device_name": "cpu-x", "torch": "9"})


def test_bench_table_exports_the_recording_study_of_a_work_directory(table, tmp_path, capsys):
    """``search bench-table`` on a real sqlite study: a re-run of an interrupted trial took its
    throughput from the cache, so its measurement seconds are those of the trial that measured."""
    import optuna

    from search.engine.cache import CACHE_FILE, ThroughputCache
    from search.cli.main import main
    from search.engine.measuring import measuring_fingerprint
    from flat_settings import flat_settings
    from search.study.studies import SETTINGS_ATTR

    target = "cpu:bs1:224:fp32:t1"
    settings = flat_settings(study="rec", space="bench", budget="1cpu-h", dataset="digits", target=target,
                              storage=None, tracking_uri=None, workdir=str(tmp_path), sampler="random",
                              epochs=EPOCHS, seed=0, address=None, data_root=None, trials_per_device=1,
                              cpus_per_trial=1, max_trials=None)
    study = optuna.create_study(study_name="rec", storage=settings.run.storage, directions=["maximize", "maximize"])
    study.set_user_attr(SETTINGS_ATTR, settings.to_json())
    here = measuring_fingerprint(target)
    cache = ThroughputCache(tmp_path / CACHE_FILE)
    row = _row(table)
    figures = dict(arch_id=row.arch_id, summary=row.summary, config=row.config, params=row.params, flops=row.flops,
                   throughput=row.throughput, throughput_spread=row.throughput_spread, costs={"count": 1.0})
    interrupted = study.ask()
    for key, value in {**figures, "measure_interval": [50.0, 53.0, "node"], "interrupted": True}.items():
        interrupted.set_user_attr(key, value)
    study.tell(interrupted, state=optuna.trial.TrialState.FAIL)
    rerun = study.ask()
    for key, value in {**figures, "epoch_accuracies": list(row.epoch_accuracies),
                       "train_intervals": [[60.0, 78.0, "node"]], "rerun_of": interrupted.number}.items():
        rerun.set_user_attr(key, value)
    study.tell(rerun, [row.epoch_accuracies[-1], row.throughput])
    cache.put(row.arch_id, target, dict(throughput=row.throughput, throughput_spread=row.throughput_spread,
                                        measurement=dict(device_name=here["device_name"],
                                                         versions={k: v for k, v in here.items() if k != "device_name"})))
    out = tmp_path / "table.json.gz"
    assert main(["bench-table", "--study", "rec", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    assert "1 architectures of space bench" in capsys.readouterr().out
    [got] = BenchTable.load(out).rows
    assert got.arch_id == row.arch_id and got.measure_seconds == 3.0 and got.epoch_seconds == 18.0 / EPOCHS


def test_a_table_is_remeasured_with_its_accuracies_and_training_costs_kept(table):
    from search.bench.table import remeasure_table

    small = BenchTable(table.meta, table.rows[:3])
    asked, said = [], []

    def measure(config_json, target):
        asked.append((config_json, target))
        return dict(throughput=500.0 + len(asked), throughput_spread=2.5, wall_seconds=9.0, calibration_seconds=5.0)

    fingerprint = {"device_name": "today's CPU", "torch": "9.9", "measure_protocol": "3"}
    new = remeasure_table(small, measure, fingerprint, say=said.append)
    assert asked == [(row.config, "cpu:bs1:224:fp32:t1") for row in small.rows]
    assert [row.throughput for row in new.rows] == [501.0, 502.0, 503.0]
    assert {row.throughput_spread for row in new.rows} == {2.5}
    assert {row.measure_seconds for row in new.rows} == {4.0}  # the one-off calibration is not the row's cost
    for old, fresh in zip(small.rows, new.rows):
        assert (fresh.arch_id, fresh.epoch_accuracies, fresh.epoch_seconds, fresh.count_seconds, fresh.flops) == (
            old.arch_id, old.epoch_accuracies, old.epoch_seconds, old.count_seconds, old.flops)
    assert new.meta["measurement_versions"] == {"torch": "9.9", "measure_protocol": "3"}
    assert new.meta["machine"]["device"] == "today's CPU" and "remeasured" in new.meta
    assert new.meta["epochs"] == small.meta["epochs"] and len(said) == 3 and said[0].startswith("[1/3] ")
