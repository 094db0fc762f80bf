"""Faults, each proved by killing or breaking a real part: a Ray node, the driver, the MLflow
server, a training. The policies behind them are tested first, without Ray."""
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

import clusters
from servers import free_port, mlflow_server, stop_server, wait_until_up

from search.engine import outbox
from search.core.faults import NON_FINITE, OUT_OF_MEMORY, WORKER_LOST, RetryPolicy, failure_reason
from search.core.record import TrialRecord
from search.engine.lease import LEASE_ATTR, Lease, LeaseHeld
from search.engine.driver import RUN_ID_ATTR, Search, budget_used
from search.engine.reaper import descendants, process_start, still_running
from flat_settings import flat_settings

TESTS = Path(__file__).parent
SPACE = str(TESTS / "faults_space.yaml")
POINTS = str(TESTS / "faults_points.yaml")
TARGET = "cpu:bs1:64"
TrialState = optuna.trial.TrialState
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ---------------------------------------------------------------------- policies
def test_only_lost_workers_are_retried_and_only_as_often_as_allowed():
    policy = RetryPolicy(max_retries=2)
    assert failure_reason("WorkerCrashedError: ...", lost=True) == WORKER_LOST
    assert failure_reason("RayTaskError(NonFiniteLoss): search.core.faults.NonFiniteLoss: ...") == NON_FINITE
    assert failure_reason("RayTaskError(OutOfMemoryError): torch.OutOfMemoryError: CUDA out of memory.") == OUT_OF_MEMORY
    assert failure_reason("RayTaskError(FileNotFoundError): no such file") == "error"
    assert [policy.retry(WORKER_LOST, n) for n in range(3)] == [True, True, False]
    assert not policy.retry(NON_FINITE, 0) and not policy.retry("error", 0)
    assert not RetryPolicy(max_retries=0).retry(WORKER_LOST, 0)
    assert policy.architecture_fault(NON_FINITE) and policy.architecture_fault(OUT_OF_MEMORY)
    assert not policy.architecture_fault(WORKER_LOST) and not policy.architecture_fault("error")


def _lease_study(path: Path, record):
    study = optuna.create_study(study_name="l", storage=f"sqlite:///{path}")
    study.set_user_attr(LEASE_ATTR, record)
    return study


def test_a_live_driver_keeps_its_lease_and_a_dead_or_silent_one_loses_it(tmp_path):
    """Two drivers on one study: the second is refused while the first lives (beats, or its
    process on this machine exists); a driver on another machine that stopped beating is
    taken over after the ttl; one on this machine whose process is gone, at once."""
    from search.engine.lease import _boot_id

    here = dict(host=socket.gethostname(), boot=_boot_id())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_start(child.pid)
    child.kill()
    child.wait()
    now = time.time()
    cases = [  # (lease on the study, taken over?)
        (dict(id="a", pid=os.getpid(), started=process_start(os.getpid()), heartbeat=now - 100, **here), False),
        (dict(id="b", host="elsewhere", boot="x", pid=1, started=1, heartbeat=now - 5), False),  # beating elsewhere
        (dict(id="c", host="elsewhere", boot="x", pid=1, started=1, heartbeat=now - 100), True),  # expired elsewhere
        (dict(id="d", pid=child.pid, started=started, heartbeat=now - 1, **here), True),  # died here a second ago
        (dict(id="e", pid=os.getpid(), started=-1, heartbeat=now - 100, **here), True),  # its pid reused since
    ]
    for number, (record, taken) in enumerate(cases):
        study = _lease_study(tmp_path / f"{number}.db", record)
        lease = Lease(study, heartbeat=60, ttl=30)
        if taken:
            with lease:
                assert lease.previous == record and study.user_attrs[LEASE_ATTR]["id"] == lease.id
            assert study.user_attrs[LEASE_ATTR] is None
        else:
            with pytest.raises(LeaseHeld, match="being run by another driver"):
                lease.acquire()
            assert study.user_attrs[LEASE_ATTR] == record


class FlakyClient:
    """An MLflow client whose server is down for the first ``down`` calls."""

    def __init__(self, down):
        self.down, self.calls, self.runs, self.logged, self.ended = down, 0, 0, [], []

    def _call(self):
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionError("connection refused")

    def create_run(self, experiment_id, run_name, tags):
        self._call()
        self.runs += 1
        return type("Run", (), {"info": type("Info", (), {"run_id": f"run-{self.runs}"})})

    def search_runs(self, experiment_ids, filter_string):  # asked after a create that failed: it made nothing
        self._call()
        return []

    def log_batch(self, run_id, params, metrics):
        self._call()
        self.logged.append((run_id, len(params), len(metrics)))

    def set_terminated(self, run_id, status="FINISHED"):
        self._call()
        self.ended.append((run_id, status))


@pytest.mark.parametrize("damage,line", [(b"{not json\n", 2), (b'{"kind": "launch", "args": {}}\n', 2),
                                          (b"\xff\xfe\n", 2), (b'{"colour": 1}\n', 2)])
def test_damaged_kept_records_are_named_never_blamed_on_mlflow(tmp_path, damage, line):
    from search.engine.tracking import OUTBOX_DIR, send_kept

    path = outbox.pending_file(tmp_path / OUTBOX_DIR, "s")
    path.parent.mkdir()
    good = outbox.Record("terminate", dict(run_id="r", status="FINISHED"))
    path.write_bytes(json.dumps({"kind": good.kind, "args": good.args}).encode() + b"\n" + damage)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"kept MLflow records .* are damaged at line {line} .*move the file away"):
        send_kept(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "s")
    assert path.read_bytes() == before and not (tmp_path / "mlflow.db").exists()


def test_the_outbox_keeps_records_through_an_outage_and_never_doubles_a_run(tmp_path, monkeypatch):
    said = []
    client = FlakyClient(down=3)
    box = outbox.Outbox(client, tmp_path, "http://mlflow", said.append, retry_seconds=0.01)
    child = outbox.Record("child", dict(experiment_id="1", name="trial-0", tags={}, params={"a": "1"},
                                        metrics=[["m", 1.0, 0, 0]]))
    box.put(child)
    box.put(outbox.batch("parent", metrics=[("hypervolume", 0.5, 0, 1)]))
    assert box.close(flush_seconds=10) == []
    assert client.runs == 1 and child.args["run_id"] == "run-1"  # created once, through three failures
    assert client.logged == [("run-1", 1, 1), ("parent", 0, 1)] and client.ended == [("run-1", "FINISHED")]
    assert "unreachable" in said[0] and "reachable again" in said[1]
    # Down for good: what is left comes back from close, is kept in a file, and is sent from it later.
    box = outbox.Outbox(FlakyClient(down=10**6), tmp_path, "http://mlflow", said.append, retry_seconds=0.01)
    box.put(outbox.batch("parent", metrics=[("hypervolume", 0.7, 0, 2)]))
    left = box.close(flush_seconds=0.1)
    kept = outbox.pending_file(tmp_path, "s")
    outbox.save_pending(kept, left)
    back = FlakyClient(down=0)
    assert outbox.sync(back, kept) == 1 and back.logged == [("parent", 0, 1)] and not kept.exists()


def test_a_child_run_whose_creation_answer_was_lost_is_not_made_twice(tmp_path):
    """The server made the run but the client timed out: the retry finds that run (a real
    sqlite MLflow store) and completes it, instead of making a second one."""
    class LostAnswer(MlflowClient):
        lost = 0

        def create_run(self, *args, **kwargs):
            run = super().create_run(*args, **kwargs)
            if self.lost:
                self.lost -= 1
                raise TimeoutError("read timed out")
            return run

    client = LostAnswer(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e")
    parent = client.create_run(experiment).info.run_id
    client.lost = 1
    child = outbox.Record("child", dict(experiment_id=experiment, name="trial-0",
                                        tags={"mlflow.parentRunId": parent, "trial": "0", "summary": "a0.9 ws[2,-]"},
                                        params={"a": "1"}, metrics=[["m", 1.0, 0, 0]]))
    said = []
    box = outbox.Outbox(client, tmp_path, "sqlite", said.append, retry_seconds=0.01)
    box.put(child)
    assert box.close(flush_seconds=10) == [] and "TimeoutError" in said[0]
    [run] = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert run.info.run_id == child.args["run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics == {"m": 1.0} and run.data.params == {"a": "1"}


# ---------------------------------------------------------------------- the driver, killed (before the
# module's cluster starts: this test's driver starts a Ray of its own)
def _search_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "search", *args, "--workdir", str(workdir)]


def _mid_job(study: optuna.Study) -> bool:
    """A trial finished, and a job of another still running that started before the driver's
    last heartbeat: a kill now leaves work to charge and to re-run."""
    lease = study.user_attrs.get(LEASE_ATTR)
    trials = study.get_trials(deepcopy=False)
    started = [TrialRecord.of(t).job["started"] for t in trials
               if t.state == TrialState.RUNNING and TrialRecord.of(t).job]
    return (lease is not None and any(t.state == TrialState.COMPLETE for t in trials)
            and any(start < lease["heartbeat"] - 0.5 for start in started))


@pytest.mark.slow
def test_a_killed_driver_is_resumed_with_nothing_lost_or_trained_twice(tmp_path):
    # The kill waits, by polling the study, for a job that started before a heartbeat (every 5 s), not
    # for a printed line: a training of 3 epochs takes 3 s here, and a beat need not fall inside it.
    budget = 170
    # The tool starts its own Ray (and must take it down): never a cluster an earlier test left in the environment.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        _search_command(tmp_path, "run", "--study", "k", "--space", SPACE, "--dataset", "digits", "--target",
                        "cpu:bs1:64", "--budget", f"{budget}cpu-s", "--sampler", "random", "--epochs", "3",
                            "--scheduler", "full"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(driver.stdout), daemon=True).start()
    storage, deadline = f"sqlite:///{tmp_path / 'optuna.db'}", time.monotonic() + 300
    while driver.poll() is None and time.monotonic() < deadline:
        if "top-1" in "".join(seen) and _mid_job(optuna.load_study(study_name="k", storage=storage)):
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the search ended before it could be killed:\n" + "".join(seen)
    ray_processes = descendants([driver.pid])
    assert len(ray_processes) > 3  # GCS, raylet, workers, agents, the reaper
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 30
    while still_running(ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert still_running(ray_processes) == []  # no Ray process outlives the driver that started it

    settings = make_settings(tmp_path, "small_train", study="k")
    study = load(settings)
    parent_id = study.user_attrs[RUN_ID_ATTR]
    finished_before = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
    running = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    assert finished_before and running
    resumed = subprocess.run(_search_command(tmp_path, "resume", "--study", "k"), capture_output=True, text=True,
                             env=env, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "the budget is spent" in resumed.stdout
    study = load(settings)
    assert study.user_attrs[RUN_ID_ATTR] == parent_id
    assert MlflowClient(settings.run.tracking_uri).get_run(parent_id).info.status == "FINISHED"
    assert {n: study.trials[n].values for n in finished_before} == finished_before  # finished trials kept
    for number in running:  # the dead driver's trials: charged up to its last heartbeat, re-run once
        assert study.trials[number].user_attrs["interrupted"] and study.trials[number].state == TrialState.FAIL
        assert len([t for t in study.trials if t.user_attrs.get("rerun_of") == number]) == 1
    lost = sum(t.user_attrs.get("costs", {}).get("lost", 0.0) for t in study.trials)
    assert lost > 0
    assert budget_used(study) <= budget * 1.05
    queued = queued_reruns(study)
    assert not queued or f"{len(queued)} re-runs of interrupted trials stay queued" in resumed.stdout
    assert_every_trial_accounted_for(study, settings.run.tracking_uri)


# ---------------------------------------------------------------------- a two-node cluster
@pytest.fixture(scope="module")
def cluster():
    """A head node that measures (``bench``) and a worker node, one CPU each; their workers
    import ``fault_trainers`` from this folder."""
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), path) if p)
    with clusters.two_nodes() as nodes:
        yield nodes
    if path is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Params, FLOPs and throughput of the fault points, measured here once
    with a short protocol and copied into each test's work directory: the tests are about
    faults, and the search takes cached figures as it would on a resume."""
    from search.engine.cache import CACHE_FILE, ThroughputCache
    from search.engine.measuring import count_architecture, measure_architecture
    from search.core.target import parse_target
    from space import arch_id, get_space

    path = tmp_path_factory.mktemp("measured") / CACHE_FILE
    cache, target = ThroughputCache(path), parse_target(TARGET)
    for config in get_space(POINTS).enumerate():
            arch = arch_id(config)
            cache.put_figures(arch, target.img_size, count_architecture(config.to_json(), target.img_size))
            cache.put(arch, target.key, measure_architecture(config.to_json(), target.key, max_seconds=0.5,
                                                             min_warmup_seconds=0.1, min_samples=3))
    return path


def make_settings(workdir: Path, trainer: str, measured: Path | None = None, **changes):
    """Settings of a fault test's search; ``measured``: a throughput cache to start from."""
    if measured is not None:
        shutil.copyfile(measured, workdir / measured.name)
    options = dict(study="f", space=SPACE, budget="100000cpu-s", dataset="digits", target=TARGET, storage=None,
                   tracking_uri=None, workdir=str(workdir), sampler="random", epochs=1, seed=0, address=None,
                   data_root=None, trials_per_device=1, cpus_per_trial=1, max_trials=2)
    options.update(changes)
    return flat_settings(**options, trainer=f"fault_trainers:{trainer}")


def load(settings):
    return optuna.load_study(study_name=settings.search.study, storage=settings.run.storage)


def child_runs(tracking_uri, parent_id):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("litv2-search")
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def queued_reruns(study):
    """Re-runs of interrupted trials still WAITING: the budget could not pay for them."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if "rerun_of" in t.user_attrs]


def assert_every_trial_accounted_for(study, tracking_uri):
    """Every trial ended (complete, stopped, infeasible, duplicate, left untrained for budget or
    failed with its reason), none left running; each architecture evaluated once; each
    evaluated trial has its child run.
    Re-runs of interrupted trials that the budget could not pay for stay queued for a later resume."""
    queued = {t.number: t for t in queued_reruns(study)}
    assert all(study.trials[t.user_attrs["rerun_of"]].user_attrs.get("interrupted") for t in queued.values())
    trials = [t for t in study.get_trials(deepcopy=False) if t.number not in queued]
    assert all(t.state in ENDED for t in trials), [(t.number, t.state) for t in trials]
    assert all("error" in t.user_attrs and "failure" in t.user_attrs
               for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))
    assert all(t.state == TrialState.PRUNED for t in trials if "not_trained" in t.user_attrs)  # no failures
    evaluated = [t for t in trials if "duplicate_of" not in t.user_attrs and not t.user_attrs.get("interrupted")]
    arches = [t.user_attrs["arch_id"] for t in evaluated]
    assert len(arches) == len(set(arches))
    children = child_runs(tracking_uri, study.user_attrs[RUN_ID_ATTR])
    runs = sorted(int(c.data.tags["trial"]) for c in children)
    assert runs == sorted(t.number for t in trials if "duplicate_of" not in t.user_attrs)


class Watch(io.StringIO):
    """The driver's output, calling ``action`` once, when a line containing ``needle`` is printed."""

    def __init__(self, needle, action):
        super().__init__()
        self.needle, self.action, self.done = needle, action, False

    def write(self, text):
        written = super().write(text)
        if not self.done and self.needle in text:
            self.done = True
            self.action()
        return written


@pytest.mark.slow
def test_a_diverging_or_out_of_memory_trial_fails_with_its_reason_and_the_search_goes_on(tmp_path, cluster, measured):
    """Three points in this order: the first diverges, the second runs out of memory, the third trains."""
    settings = make_settings(tmp_path, "faulty_train", measured, space=POINTS, max_trials=None)
    out = io.StringIO()
    assert Search(settings, out=out).run() == 0
    study = load(settings)
    failed = {t.user_attrs["failure"]: t for t in study.trials if t.state == TrialState.FAIL}
    assert set(failed) == {NON_FINITE, OUT_OF_MEMORY}
    assert "non-finite loss in epoch 1" in failed[NON_FINITE].user_attrs["error"]
    assert "CUDA out of memory" in failed[OUT_OF_MEMORY].user_attrs["error"]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "FAILED during train: non-finite loss" in out.getvalue()
    assert "every point was run" in out.getvalue()
    assert_every_trial_accounted_for(study, settings.run.tracking_uri)
    tags = {c.data.tags["trial"]: c.data.tags for c in child_runs(settings.run.tracking_uri, study.user_attrs[RUN_ID_ATTR])}
    assert tags[str(failed[NON_FINITE].number)]["failure"] == NON_FINITE


@pytest.mark.slow
def test_an_mlflow_outage_loses_no_record(tmp_path, cluster, measured, monkeypatch, capsys):
    """The tracking server is killed once the first trial is logged and started again at once;
    the search goes on meanwhile. What MLflow could not take is sent when it is back: by the
    search itself if the server is up before the search ends, else from the kept file by
    ``sync-mlflow`` (which of the two depends on how long the server takes to start; under load
    the restarted server may also miss a request once more before it answers them all)."""
    from search.cli.main import main

    monkeypatch.setattr(outbox, "RETRY_SECONDS", 0.5)
    monkeypatch.setattr(outbox, "FLUSH_SECONDS", 1.0)
    (tmp_path / "server").mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    servers = [mlflow_server(tmp_path / "server", port)]

    def kill_and_restart():
        stop_server(servers[0])
        servers.append(mlflow_server(tmp_path / "server", port, wait=False))

    try:
        settings = make_settings(tmp_path, "small_train", measured, space=POINTS, tracking_uri=uri, max_trials=None)
        out = Watch("] top-1", kill_and_restart)
        assert Search(settings, out=out).run() == 0
        said = out.getvalue()
        assert f"MLflow at {uri} is unreachable" in said and "every point was run" in said
        kept = tmp_path / "mlflow-outbox" / "f.jsonl"
        was_kept = kept.exists()
        assert was_kept == ("sync-mlflow --study f" in said), said
        if not was_kept:  # everything was sent, so the last outage ended (a slow restart may flap)
            assert said.rindex("is reachable again") > said.rindex("is unreachable"), said
        wait_until_up(servers[-1], port)
        capsys.readouterr()
        assert main(["sync-mlflow", "--study", "f", "--workdir", str(tmp_path)]) == 0
        assert ("kept records of study 'f'" if was_kept else "nothing to send") in capsys.readouterr().out
        assert not kept.exists()
        study = load(settings)
        assert_every_trial_accounted_for(study, uri)
        client = MlflowClient(uri)
        parent = client.get_run(study.user_attrs[RUN_ID_ATTR])
        assert parent.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(parent.info.run_id, "hypervolume")] == [1, 2, 3]
        assert {"front.csv", "front.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
        front = Path(client.download_artifacts(parent.info.run_id, "front.csv", str(tmp_path))).read_text()
        assert len(front.splitlines()) - 1 == len(study.best_trials)  # the last front, not an earlier one
        for child in child_runs(uri, parent.info.run_id):
            trial = study.trials[int(child.data.tags["trial"])]
            history = client.get_metric_history(child.info.run_id, "val_top1")
            assert [m.value for m in history] == trial.user_attrs["epoch_accuracies"]
            assert child.data.metrics["throughput"] == trial.user_attrs["throughput"]
        assert not list((tmp_path / "mlflow-outbox").rglob("*.png"))  # spooled files dropped once sent
    finally:
        stop_server(servers[-1])


@pytest.mark.slow
def test_a_lost_worker_node_is_retried_elsewhere_from_the_last_rung(tmp_path, cluster):
    """The node training a trial's second rung is killed: the rung runs again on the other node,
    from the first rung's checkpoint, and the trial completes once. (Last in this module: the
    cluster has one node left.)"""
    ray_cluster, head_id, worker_id, worker = cluster
    settings = make_settings(tmp_path, "logged_train", epochs=2, scheduler="mo-asha", eta=2, max_trials=1)
    rungs = settings.run.checkpoints / "f"

    def kill_the_worker_node_once_training():
        deadline = time.monotonic() + 120
        while not any("1-2" in p.read_text() for p in rungs.glob("*.rungs")) and time.monotonic() < deadline:
            time.sleep(0.05)
        ray_cluster.remove_node(worker, allow_graceful=False)

    out = Watch("epochs 1->2", kill_the_worker_node_once_training)
    assert Search(settings, out=out).run() == 0
    study = load(settings)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["epochs_done"] == 2
    assert [r["kind"] for r in trial.user_attrs["retries"]] == ["train"]
    assert [i[2] for i in trial.user_attrs["train_intervals"]] == [worker_id, head_id]
    assert [p.read_text().split() for p in rungs.glob("*.rungs")] == [["0-1", "1-2", "1-2"]]  # from the checkpoint
    assert f"[trial 0] {WORKER_LOST} during train" in out.getvalue() and "retry 1 of 2 from epoch 1" in out.getvalue()
    assert "1 architectures trained: 1 complete" in out.getvalue()  # the retried rung is not a second one
    assert trial.user_attrs["costs"]["train"] > sum(i[1] - i[0] for i in trial.user_attrs["train_intervals"])  # lost work charged
    assert_every_trial_accounted_for(study, settings.run.tracking_uri)
