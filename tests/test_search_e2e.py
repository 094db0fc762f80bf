"""End-to-end searches on a real local Ray instance, a real Optuna storage and MLflow sqlite store."""
import io
import os
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from search.cli.main import main
from search.engine.executor import ray_system_config
from search.core.objectives import OBJECTIVES, objectives, slug
from search.engine.driver import RUN_ID_ATTR, Search, SearchError, budget_used
from flat_settings import flat_settings

TrialState = optuna.trial.TrialState
SPACE = str(Path(__file__).parent / "tiny32.yaml")
MAX_PARAMS = 1.45e6  # the tiny space has architectures on both sides
pytestmark = pytest.mark.slow  # every test here starts Ray workers


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # address="local": a Ray of its own, never a cluster another test's `ray start` left named as this machine's
    ray.init(address="local", num_cpus=2, resources={"bench": 1}, include_dashboard=False, log_to_driver=False,
             _system_config=ray_system_config())  # as the tool starts its own
    yield
    ray.shutdown()


def make_settings(workdir: Path, **changes):
    options = dict(study="s", space=SPACE, budget="900cpu-s", dataset="digits", target="cpu:bs1:64", storage=None,
                   tracking_uri=None, workdir=str(workdir), sampler="random", epochs=1, seed=0, address=None,
                   data_root=None, trials_per_device=1, cpus_per_trial=1, max_trials=2,
                   measure_seconds=1.0)  # short measurements: these tests check the flow, not the figures
    options.update(changes)
    return flat_settings(**options)


def load(settings):
    return optuna.load_study(study_name=settings.search.study, storage=settings.run.storage)


def child_runs(settings, parent_id):
    client = MlflowClient(settings.run.tracking_uri)
    experiment = client.get_experiment_by_name("litv2-search")
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def jobs_of(study):
    """[start, end, node, worker pid] of every count, measurement and training of ``study``."""
    attrs = [t.user_attrs for t in study.trials]
    return ([a[key] for a in attrs for key in ("count_interval", "measure_interval") if key in a]
            + [i for a in attrs for i in a.get("train_intervals", [])])


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def three_trials(tmp_path_factory):
    """One search that trains three architectures under a constraint, read by the tests of what
    every search leaves behind (its records, the order of its jobs, infeasible trials, status
    and front): one search instead of one each."""
    from search.core.constraints import Constraints

    workdir = tmp_path_factory.mktemp("three")
    settings = make_settings(workdir, max_trials=3, constraints=Constraints(max_params=MAX_PARAMS))
    out = io.StringIO()
    assert Search(settings, out=out).run() == 0
    time.sleep(2)  # past Ray's idle-worker timeout (1 s)
    alive = {job[3] for job in jobs_of(load(settings)) if _alive(job[3])}  # now, before later searches
    return settings, out.getvalue(), alive


def test_a_search_keeps_its_trials_runs_and_artifacts(three_trials):
    settings, output, _ = three_trials
    study = load(settings)
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(trained) == 3
    for trial in trained:
        accuracy, throughput = trial.values
        assert 0 <= accuracy <= 100 and throughput > 0
        assert trial.user_attrs["params"] > 0 and trial.user_attrs["flops"] > 0
        assert trial.user_attrs["device_seconds"] > 0
    parent_id = study.user_attrs[RUN_ID_ATTR]
    client = MlflowClient(settings.run.tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.data.params["space"] == SPACE and parent.data.params["budget"] == "900cpu-s"
    assert "version.torch" in parent.data.params and parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"front.csv", "front.png"} <= artifacts
    assert [m.step for m in client.get_metric_history(parent_id, "hypervolume")] == [1, 2, 3]
    children = child_runs(settings, parent_id)
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert sorted(c.data.tags["status"] for c in children) == ["complete"] * 3 + ["infeasible"] * len(infeasible)
    complete = [c for c in children if c.data.tags["status"] == "complete"]
    assert {c.data.tags["arch_id"] for c in complete} == {t.user_attrs["arch_id"] for t in trained}
    assert all({o.name for o in OBJECTIVES} <= set(c.data.metrics) for c in complete)
    assert all(f"[trial {t.number}] top-1" in output for t in trained) and "--max-trials 3 reached" in output


def test_measurements_run_alone_and_before_training(three_trials):
    """Two proxies may train at once on the two cores; each measurement runs with no training
    and no other measurement beside it, and before its own architecture trains."""
    settings, _, _ = three_trials
    trained = [t for t in load(settings).trials if t.user_attrs.get("measure_interval")]
    assert len(trained) == 3
    trains = [i for t in trained for i in t.user_attrs["train_intervals"]]
    measures = [t.user_attrs["measure_interval"] for t in trained]
    overlaps = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
    assert not any(overlaps(a, b) for i, a in enumerate(measures) for b in measures[i + 1:])
    assert not any(overlaps(m, t) for m in measures for t in trains)
    assert all(t.user_attrs["measure_interval"][1] <= t.user_attrs["train_intervals"][0][0] for t in trained)


def test_jobs_run_in_warm_workers(three_trials):
    """Ray's default keeps only as many idle workers as CPUs and kills the others after a
    second, so a 2-core search started a fresh worker (re-importing torch and timm, charged to
    the job) for most of its jobs; the search's own settings keep its workers warm."""
    settings, _, alive = three_trials
    jobs = jobs_of(load(settings))
    assert len(jobs) > 6 and all(job[3] in alive for job in jobs)


def test_status_and_front_commands(three_trials, tmp_path, capsys):
    settings, _, _ = three_trials
    workdir = str(settings.run.workdir)
    assert main(["status", "--study", "s", "--workdir", workdir]) == 0
    status = capsys.readouterr().out
    assert "3 complete" in status and "budget: used" in status and "| trial | arch id |" in status
    assert "rungs (epoch: reached / continued / stopped): 1: 3 / 0 / 0" in status
    csv_path, png_path = tmp_path / "front.csv", tmp_path / "front.png"
    assert main(["front", "--study", "s", "--workdir", workdir, "--csv", str(csv_path), "--plot", str(png_path)]) == 0
    assert csv_path.read_text().splitlines()[0] == ("trial,arch_id,accuracy,throughput,throughput_low,throughput_high,"
                                                    "measured_times,params,flops,summary")
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    assert main(["status", "--study", "nope", "--workdir", workdir]) == 2


def test_a_study_of_two_targets_has_three_objectives_two_fronts_and_a_pick_for_each(tmp_path, capsys):
    """Eager PyTorch and onnxruntime on the same node: every trained architecture measured in
    both runtimes, one front per target in MLflow, ``front`` and ``pick`` per target."""
    settings = make_settings(tmp_path, max_trials=2, more_targets=("cpu:bs1:64:ort",))
    assert Search(settings, out=io.StringIO()).run() == 0
    study, keys = load(settings), [t.key for t in settings.search.targets]
    assert study.metric_names == [o.name for o in objectives(keys)] and len(keys) == 2
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        figures = trial.user_attrs["target_figures"]
        assert set(figures) == set(keys) and trial.values[1:] == [figures[key]["throughput"] for key in keys]
    client = MlflowClient(settings.run.tracking_uri)
    parent_id = study.user_attrs[RUN_ID_ATTR]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {f"front-{slug(key)}.{suffix}" for key in keys for suffix in ("csv", "png")} <= artifacts
    for name in ["hypervolume"] + [f"hypervolume/{slug(key)}" for key in keys]:
        assert [m.step for m in client.get_metric_history(parent_id, name)] == [1, 2]
    for child in (c for c in child_runs(settings, parent_id) if c.data.tags["status"] == "complete"):
        assert {o.name for o in objectives(keys)} <= set(child.data.metrics)
    capsys.readouterr()
    workdir = str(settings.run.workdir)
    for key in keys:
        assert main(["front", "--study", "s", "--workdir", workdir, "--target", key,
                     "--csv", str(tmp_path / f"{slug(key)}.csv")]) == 0
        assert main(["pick", "--study", "s", "--workdir", workdir, "--target", key, "--top", "1"]) == 0
        out = capsys.readouterr().out
        assert f"re-measured on {key}" in out and "(cache)" in out  # the search's own figures, in its runtime
    assert main(["front", "--study", "s", "--workdir", workdir, "--csv", str(tmp_path / "both.csv")]) == 2
    assert not (tmp_path / "both.csv").exists()


def test_an_architecture_is_never_trained_twice(tmp_path):
    space_file = tmp_path / "two.yaml"
    space_file.write_text(
        "name: two\nbase: litv2_s\n"
        "fixed: {embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [2, 4, 8, 16], drop_path_rate: 0.0}\n"
        "proxy: {img_size: 32, width_mult: 1.0}\n"
        "dimensions:\n  alpha: [0.9, 0.0]\n"
    )
    settings = make_settings(tmp_path, space=str(space_file), max_trials=None)
    assert Search(settings).run() == 0
    study = load(settings)
    trained = [t for t in study.trials if t.user_attrs.get("epochs_done")]
    assert sorted(t.user_attrs["arch_id"] for t in trained) == sorted({t.user_attrs["arch_id"] for t in trained})
    assert len(trained) == 2
    duplicates = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert duplicates, "the sampler proposed a known architecture at least once"
    for trial in duplicates:
        original = study.trials[trial.user_attrs["duplicate_of"]]
        assert trial.state == TrialState.PRUNED and trial.values is None
        assert original.user_attrs["arch_id"] == trial.user_attrs["arch_id"] and "duplicate_of" not in original.user_attrs
    front_ids = [t.user_attrs["arch_id"] for t in study.best_trials]
    assert len(front_ids) == len(set(front_ids))


def test_budget_stops_the_search(tmp_path, capsys):
    settings = make_settings(tmp_path, budget="100cpu-s", max_trials=None)
    assert Search(settings).run() == 0
    study = load(settings)
    costs = [t.user_attrs["device_seconds"] for t in study.trials if "device_seconds" in t.user_attrs]
    used = budget_used(study)
    assert costs and used == pytest.approx(sum(costs))
    assert used <= 100 * 1.1  # jobs start only when their (conservative) estimate fits
    assert "the budget is spent" in capsys.readouterr().out


def test_a_budget_that_cannot_pay_one_trial_is_refused_and_creates_no_study(tmp_path, capsys):
    # it used to start Ray, create the study and its MLflow run, and end "done ... 0 architectures trained", exit 0
    assert main(["run", "--budget", "1cpu-s", "--dataset", "digits", "--study", "s", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot pay one trial's count and measurement" in err and "expected at least" in err and "\n" not in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_resume_reruns_interrupted_trials_and_keeps_the_run(tmp_path):
    """Resumed from a copy of the work directory (moved to another disk or machine): the copy's
    storage and MLflow store carry on, the original's are never written."""
    import shutil

    from space import get_space

    original, copy = tmp_path / "a", tmp_path / "b"
    original.mkdir()
    first = make_settings(original, max_trials=1)
    assert Search(first).run() == 0
    study = load(first)
    first_used, parent_id = budget_used(study), study.user_attrs[RUN_ID_ATTR]
    # A trial the driver had started when it died: another architecture than trial 0's, which
    # the resume would rightly answer from the study instead of re-running it.
    params = study.trials[0].params
    study.enqueue_trial({**params, "merge": "patch" if params["merge"] == "dtm" else "dtm"})
    crashed = study.ask()
    get_space(SPACE).sample(crashed)
    before = (len(load(first).trials), len(child_runs(first, parent_id)))
    shutil.copytree(original, copy)
    shutil.rmtree(original / "checkpoints", ignore_errors=True)
    assert main(["resume", "--study", "s", "--workdir", str(copy)]) == 0
    assert (len(load(first).trials), len(child_runs(first, parent_id))) == before  # the original is untouched
    settings = make_settings(copy)
    study = load(settings)
    assert study.trials[crashed.number].state == TrialState.FAIL
    reruns = [t for t in study.trials if t.user_attrs.get("rerun_of") == crashed.number]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
    assert reruns[0].params == study.trials[crashed.number].params
    assert study.user_attrs[RUN_ID_ATTR] == parent_id
    assert budget_used(study) > first_used
    children = child_runs(settings, parent_id)  # the first trial, the crashed one (interrupted), its re-run
    assert sorted(c.data.tags["status"] for c in children) == ["complete", "complete", "interrupted"]
    assert next(c for c in children if c.data.tags["status"] == "interrupted").data.tags["trial"] == str(crashed.number)


@pytest.mark.parametrize("option,value,needle", [
    ("--budget", "64gpu", "budget '64gpu'"),
    ("--budget", "0cpu-h", "budget '0cpu-h'"),
    ("--target", "tpu:bs1:224", "target 'tpu:bs1:224'"),
    ("--dataset", "mnist", "dataset 'mnist'"),
    ("--dataset", "imagefolder:/nonexistent/images", "/nonexistent/images"),
    ("--storage", "redis://localhost", "storage 'redis://localhost'"),
    ("--tracking-uri", "mlflow.db", "tracking URI 'mlflow.db'"),
    ("--space", "nonexistent-space", "nonexistent-space"),
    ("--sampler", "cmaes", "sampler 'cmaes'"),
    ("--scheduler", "hyperband", "--scheduler 'hyperband'"),
    ("--eta", "1", "--eta 1"),
    ("--min-throughput", "fast", "--min-throughput 'fast'"),
    ("--max-params", "3X", "--max-params '3X'"),
    ("--max-flops", "0G", "--max-flops '0G'"),
    ("--seeds", "2", "--seeds 2"),
    ("--measure-seconds", "0", "--measure-seconds 0"),
    ("--target", "cpu:bs1:64:t100000", "100000 threads"),
    pytest.param("--target", "cuda:bs64:224:fp16", "no GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_run_options_exit_2_and_create_nothing(tmp_path, capsys, option, value, needle):
    code = main(["run", option, value, "--workdir", str(tmp_path), "--dataset", "digits"]
                if option != "--dataset" else ["run", option, value, "--workdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("search: error:") and needle in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def _start_search(tmp_path, *extra):
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "search", "run", "--study", "s", "--space", SPACE, "--dataset", "digits",
               "--target", "cpu:bs1:64", "--budget", "900cpu-s", "--sampler", "random", "--workdir", str(tmp_path),
               "--measure-seconds", "1", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _read_until(process, needle, seconds=240):
    import time

    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if needle in line or (not line and process.poll() is not None):
            break
    return "".join(seen)


def test_a_second_driver_is_refused_and_ctrl_c_after_a_rung_resumes_from_the_checkpoint(tmp_path, capsys):
    import signal

    process = _start_search(tmp_path, "--epochs", "2", "--scheduler", "mo-asha", "--eta", "2", "--max-trials", "1")
    try:
        seen = _read_until(process, "[trial 0] training")
        assert "[trial 0] training" in seen, seen
        capsys.readouterr()
        assert main(["resume", "--study", "s", "--workdir", str(tmp_path)]) == 2  # the study has a live driver
        err = capsys.readouterr().err.strip()
        assert "being run by another driver" in err and "\n" not in err
        assert not [t for t in load(make_settings(tmp_path)).trials if "rerun_of" in t.user_attrs]  # nothing touched
        seen += _read_until(process, "epochs 1->2")
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, seen + rest
    assert "will continue on 'search resume'" in rest
    settings = make_settings(tmp_path)
    study = load(settings)
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["epochs_done"] == 1
    spent_before = budget_used(study)
    assert spent_before > 0  # the cancelled rung was charged too
    capsys.readouterr()
    assert main(["resume", "--study", "s", "--workdir", str(tmp_path)]) == 0
    assert f"re-runs interrupted trial {interrupted[0].number}" in capsys.readouterr().out
    study = load(settings)
    rerun = next(t for t in study.trials if t.user_attrs.get("rerun_of") == interrupted[0].number)
    assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["epochs_done"] == 2
    assert len(rerun.user_attrs["train_intervals"]) == 1  # only epoch 1 -> 2 trained again
    assert rerun.user_attrs["epoch_accuracies"][0] == interrupted[0].user_attrs["epoch_accuracies"][0]
    assert not list((tmp_path / "checkpoints").rglob("*.pt"))  # dropped once the trial ended
    assert MlflowClient(settings.run.tracking_uri).get_run(study.user_attrs[RUN_ID_ATTR]).info.status == "FINISHED"


def test_sigterm_stops_a_search_as_ctrl_c_does_with_exit_143(tmp_path):
    """Ray's core worker catches SIGTERM itself (it aborted the driver with six '*** SIGTERM
    received' lines): the search's own handler answers it as it answers Ctrl-C."""
    import signal

    process = _start_search(tmp_path, "--epochs", "2", "--scheduler", "full", "--max-trials", "1")
    try:
        seen = _read_until(process, "[trial 0] training")
        assert "[trial 0] training" in seen, seen
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=120)
    assert process.returncode == 143, seen + rest
    assert "terminated (SIGTERM): running trials were stopped and will continue on 'search resume'" in rest
    assert "SIGTERM received" not in rest and "Traceback" not in rest
    study = load(make_settings(tmp_path))
    assert [t.user_attrs.get("interrupted") for t in study.trials] == [True]
    assert MlflowClient(make_settings(tmp_path).run.tracking_uri).get_run(
        study.user_attrs[RUN_ID_ATTR]).info.status == "KILLED"


def test_a_crashing_search_fails_its_mlflow_run(tmp_path):
    from dataclasses import replace

    settings = make_settings(tmp_path, max_trials=5, trainer="search.training.proxy:no_such_trainer")
    with pytest.raises(SearchError, match="3 trials failed in a row"):
        Search(settings).run()
    study = load(settings)
    assert MlflowClient(settings.run.tracking_uri).get_run(study.user_attrs[RUN_ID_ATTR]).info.status == "FAILED"
    own = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # duplicates are answered, PRUNED
    assert all(t.state == TrialState.FAIL for t in own)
    failed = [t for t in own if "no_such_trainer" in t.user_attrs.get("error", "")]
    assert len(failed) == 3
    assert all(t.user_attrs.get("interrupted") for t in own if t not in failed)  # re-run on resume


def test_the_cli_turns_a_failed_search_into_one_line(monkeypatch, capsys):
    import search.cli.main

    def crash(args):
        raise SearchError("3 trials failed in a row; last error: boom")

    monkeypatch.setattr(search.cli.main, "_run", crash)
    assert main(["run"]) == 1
    assert capsys.readouterr().err == "search: error: 3 trials failed in a row; last error: boom\n"


def test_mo_asha_search_stops_trials_and_fronts_only_top_rung_trials(tmp_path):
    """A trial outside the top third at rung 1 is stopped. While the machine's load falls (the
    suite's other tests ending) each new architecture measures fastest, stays on the front and
    is promoted: then the search is resumed, three trials at a time, until one is stopped."""
    from dataclasses import replace

    settings = make_settings(tmp_path, epochs=3, scheduler="mo-asha", max_trials=5)
    assert Search(settings).run() == 0
    for _ in range(3):
        if any("stopped_at" in t.user_attrs for t in load(settings).trials):
            break
        assert Search(replace(settings, search=replace(settings.search, max_trials=3))).run(resume=True) == 0
    study = load(settings)
    stopped = [t for t in study.trials if "stopped_at" in t.user_attrs]
    assert stopped and all(t.user_attrs["stopped_at"] == 1 and t.state == TrialState.PRUNED for t in stopped)
    assert study.best_trials and all(t.user_attrs["epochs_done"] == 3 for t in study.best_trials)


def test_constraints_make_architectures_infeasible_and_untrained(three_trials):
    settings, _, _ = three_trials
    study = load(settings)
    infeasible = [t for t in study.trials if t.user_attrs.get("infeasible")]
    assert infeasible, f"the tiny space has architectures above {MAX_PARAMS:.3g} params"
    for trial in infeasible:
        assert trial.user_attrs["params"] > MAX_PARAMS and trial.constraints["max_params"] > 0
        assert "train_intervals" not in trial.user_attrs and "measure_interval" not in trial.user_attrs
    assert all(t.user_attrs["params"] <= MAX_PARAMS for t in study.best_trials)


def test_fixed_point_study_evaluates_every_point_once(tmp_path):
    tiny = "embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [2, 4, 8, 16], drop_path_rate: 0.0"
    space_file = tmp_path / "pair.yaml"
    space_file.write_text(
        "name: pair\nfixed_points: true\nproxy: {img_size: 32, width_mult: 1.0}\npoints:\n"
        f"  - {{label: HiLo, base: litv2_s, fixed: {{{tiny}}}}}\n"
        f"  - {{label: MSA, base: litv2_s, fixed: {{{tiny}, attn_kind: [msa, msa, msa, msa]}}}}\n"
    )
    settings = make_settings(tmp_path, space=str(space_file), max_trials=None)
    assert Search(settings).run() == 0
    study = load(settings)
    trained = [t for t in study.trials if t.user_attrs.get("epochs_done")]
    assert [t.number for t in trained] == [0, 1] and len(study.trials) == 2
    assert len({t.user_attrs["arch_id"] for t in trained}) == 2
