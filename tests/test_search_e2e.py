"""End-to-end searches on a real local Ray instance, a real Optuna storage and MLflow sqlite store."""
from pathlib import Path

import mlflow
import optuna
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from search.cli import main
from search.orchestrator import RUN_ID_ATTR, Search, budget_used
from search.settings import build_settings

TrialState = optuna.trial.TrialState


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, resources={"bench": 1}, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_settings(workdir: Path, **changes):
    options = dict(study="s", space="tiny", budget="900cpu-s", dataset="digits", target="cpu:bs1:64", storage=None,
                   tracking_uri=None, workdir=str(workdir), sampler="random", epochs=1, seed=0, address=None,
                   data_root=None, trials_per_device=1, cpus_per_trial=1, measure_repeats=2, max_trials=2)
    options.update(changes)
    return build_settings(**options)


def load(settings):
    return optuna.load_study(study_name=settings.study, storage=settings.storage)


def child_runs(settings, parent_id):
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("litv2-search")
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_two_trial_search_end_to_end(tmp_path, capsys):
    settings = make_settings(tmp_path)
    assert Search(settings).run() == 0
    study = load(settings)
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(trained) == 2
    for trial in trained:
        accuracy, throughput = trial.values
        assert 0 <= accuracy <= 100 and throughput > 0
        assert trial.user_attrs["params"] > 0 and trial.user_attrs["flops"] > 0
        assert trial.user_attrs["device_seconds"] > 0
    parent_id = study.user_attrs[RUN_ID_ATTR]
    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.data.params["space"] == "tiny" and parent.data.params["budget"] == "900cpu-s"
    assert "version.torch" in parent.data.params and parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"front.csv", "front.png"} <= artifacts
    assert [m.step for m in client.get_metric_history(parent_id, "hypervolume")] == [1, 2]
    children = child_runs(settings, parent_id)
    assert len(children) == 2
    assert {c.data.tags["arch_id"] for c in children} == {t.user_attrs["arch_id"] for t in trained}
    assert all("accuracy" in c.data.metrics and "throughput" in c.data.metrics for c in children)
    output = capsys.readouterr().out
    assert "[trial 1] top-1" in output and "--max-trials 2 reached" in output


def test_measurements_run_alone(tmp_path):
    """After the first trial, two proxies may train at once on the two cores; each measurement
    runs with no training and no other measurement beside it."""
    settings = make_settings(tmp_path, max_trials=3)
    assert Search(settings).run() == 0
    trained = [t for t in load(settings).trials if t.user_attrs.get("measure_interval")]
    assert len(trained) == 3
    trains = [t.user_attrs["train_interval"] for t in trained]
    measures = [t.user_attrs["measure_interval"] for t in trained]
    overlaps = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
    assert not any(overlaps(a, b) for i, a in enumerate(measures) for b in measures[i + 1:])
    assert not any(overlaps(m, t) for m in measures for t in trains)


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
    trained = [t for t in study.trials if "train_seconds" in t.user_attrs]
    assert sorted(t.user_attrs["arch_id"] for t in trained) == sorted({t.user_attrs["arch_id"] for t in trained})
    assert len(trained) == 2
    duplicates = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert duplicates, "the sampler proposed a known architecture at least once"
    for trial in duplicates:
        if trial.state == TrialState.COMPLETE:
            original = study.trials[trial.user_attrs["duplicate_of"]]
            assert trial.values == original.values


def test_budget_stops_the_search(tmp_path, capsys):
    settings = make_settings(tmp_path, budget="20cpu-s", max_trials=None)
    assert Search(settings).run() == 0
    study = load(settings)
    costs = [t.user_attrs["device_seconds"] for t in study.trials if "device_seconds" in t.user_attrs]
    used = budget_used(study)
    assert used == pytest.approx(sum(costs))
    # The first trial is the cost estimate; none starts once the estimate says it would overrun.
    assert used - costs[-1] <= 20
    assert "the budget is spent" in capsys.readouterr().out


def test_resume_reruns_interrupted_trials_and_keeps_the_run(tmp_path):
    settings = make_settings(tmp_path, max_trials=1)
    assert Search(settings).run() == 0
    study = load(settings)
    first_used, parent_id = budget_used(study), study.user_attrs[RUN_ID_ATTR]
    from space import get_space

    crashed = study.ask()  # a trial the driver had started when it died
    get_space("tiny").sample(crashed)
    assert main(["resume", "--study", "s", "--workdir", str(tmp_path)]) == 0
    study = load(settings)
    assert study.trials[crashed.number].state == TrialState.FAIL
    reruns = [t for t in study.trials if t.user_attrs.get("rerun_of") == crashed.number]
    assert len(reruns) == 1 and reruns[0].state == TrialState.COMPLETE
    assert reruns[0].params == study.trials[crashed.number].params
    assert study.user_attrs[RUN_ID_ATTR] == parent_id
    assert budget_used(study) > first_used
    assert len(child_runs(settings, parent_id)) == 2


def test_resume_measures_a_trial_trained_before_the_interruption(tmp_path):
    settings = make_settings(tmp_path, max_trials=1)
    assert Search(settings).run() == 0
    study = load(settings)
    from space import get_space

    done = study.trials[0]
    other = dict(done.params, merge="patch" if done.params["merge"] == "dtm" else "dtm")  # another network
    study.enqueue_trial(other)
    stopped = study.ask()  # trained, then Ctrl-C arrived while it waited for its measurement
    config = get_space("tiny").sample(stopped)
    training = dict(done.user_attrs["train_result"], accuracy=12.5, epoch_accuracies=[12.5])
    stopped.set_user_attr("train_result", training)
    stopped.set_user_attr("interrupted", True)
    study.tell(stopped, state=TrialState.FAIL)
    assert Search(make_settings(tmp_path, max_trials=1)).run(resume=True) == 0
    rerun = next(t for t in load(settings).trials if t.user_attrs.get("rerun_of") == stopped.number)
    assert rerun.state == TrialState.COMPLETE and rerun.values[0] == 12.5
    assert rerun.user_attrs["train_interval"] == done.user_attrs["train_interval"]  # not trained again
    assert rerun.user_attrs["measure_interval"] is not None
    assert rerun.user_attrs["config"] == config.to_json() and rerun.user_attrs["arch_id"] != done.user_attrs["arch_id"]


def test_status_and_front_commands(tmp_path, capsys):
    settings = make_settings(tmp_path, max_trials=2)
    Search(settings).run()
    capsys.readouterr()
    assert main(["status", "--study", "s", "--workdir", str(tmp_path)]) == 0
    status = capsys.readouterr().out
    assert "2 done" in status and "budget: used" in status and "| trial | arch id |" in status
    csv_path, png_path = tmp_path / "front.csv", tmp_path / "front.png"
    assert main(["front", "--study", "s", "--workdir", str(tmp_path), "--csv", str(csv_path), "--plot", str(png_path)]) == 0
    assert csv_path.read_text().splitlines()[0] == "trial,arch_id,accuracy,throughput,params,flops,summary"
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    assert main(["status", "--study", "nope", "--workdir", str(tmp_path)]) == 2


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


def test_ctrl_c_then_resume_loses_nothing(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "search", "run", "--study", "s", "--space", "tiny", "--dataset", "digits",
               "--epochs", "1", "--target", "cpu:bs1:64", "--budget", "900cpu-s", "--max-trials", "2",
               "--sampler", "random", "--workdir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if "[trial 1] started" in line:
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(seen) + rest
    assert "will re-run on 'search resume'" in rest
    settings = make_settings(tmp_path)
    study = load(settings)
    interrupted = [t.number for t in study.trials if t.user_attrs.get("interrupted")]
    assert interrupted
    assert main(["resume", "--study", "s", "--workdir", str(tmp_path)]) == 0
    study = load(settings)
    rerun = {t.user_attrs.get("rerun_of") for t in study.trials if t.state == TrialState.COMPLETE}
    assert set(interrupted) <= rerun
    assert MlflowClient(settings.tracking_uri).get_run(study.user_attrs[RUN_ID_ATTR]).info.status == "FINISHED"


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
    trained = [t for t in load(settings).trials if "train_seconds" in t.user_attrs]
    assert [t.number for t in trained] == [0, 1]
    assert len({t.user_attrs["arch_id"] for t in trained}) == 2
