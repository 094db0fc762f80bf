"""The README's "Scaling out" recipe, run as written: a real PostgreSQL, an ``mlflow server``
on it serving artifacts, a Ray head and a second node with token authentication, and the
driver from a third process. The machines' addresses become free ports on 127.0.0.1; every
service this test starts is stopped by its PID."""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.engine.reaper import descendants, still_running
from search.study.preflight import RAY_CURRENT_CLUSTER

README = Path(__file__).resolve().parent.parent / "README.md"
RECIPE_MARK = "<!-- the recipe: tests/test_cluster_recipe.py runs the lines of the next block -->"
POSTGRES_USER = "postgres"  # initdb refuses to run as root: as root, the servers run as this user
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("initdb") is None or shutil.which("pg_ctl") is None,
                                 reason="needs PostgreSQL's initdb and pg_ctl")]


def recipe_lines() -> list[str]:
    """The commands of the README's recipe block, comments dropped."""
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index(RECIPE_MARK):], re.S).group(1)
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on a free port with the README's users and databases
    (its folder outside pytest's, which only root may enter)."""
    data, port = Path(tempfile.mkdtemp(prefix="litv2-postgres-")), _free_port()
    if os.geteuid() == 0:
        shutil.chown(data, POSTGRES_USER)
    subprocess.run(_as_postgres(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-l", str(data / "server.log"), "-w", "-o",
                                 f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        for name in ("optuna", "mlflow"):
            for statement in (f"CREATE USER {name}", f"CREATE DATABASE {name} OWNER {name}"):
                subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", statement],
                               check=True, capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


class Services:
    """Long-running commands started in sessions of their own, stopped by PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, argv: list[str], env: dict[str, str], ready: str, seconds: float = 120) -> Path:
        log = self.folder / f"service-{len(self.started)}.log"
        process = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        self.started.append((process, log))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            if ready.startswith("http://"):
                try:
                    with urllib.request.urlopen(ready, timeout=2):
                        return log
                except OSError:
                    pass
            elif ready in log.read_text():
                return log
            time.sleep(0.5)
        raise AssertionError(f"{argv[:3]} not ready within {seconds} s: {log.read_text()[-3000:]}")

    def stop(self) -> list[int]:
        """SIGTERM each service (a Ray node started with --block takes its processes down with
        it), last started first; returns the PIDs of anything of theirs still alive."""
        left = []
        for process, _ in reversed(self.started):
            family = descendants([process.pid])
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            deadline = time.monotonic() + 20
            while still_running(family) and time.monotonic() < deadline:
                time.sleep(0.2)
            left += still_running(family)
        return left


def test_the_readme_cluster_recipe_runs_as_written(postgres, tmp_path):
    lines = recipe_lines()
    assert [line.split()[:3] for line in lines] == [
        ["pip", "install", "-e"], ["export", "RAY_AUTH_MODE=token"], ["ray", "get-auth-token", "--generate"],
        ["mlflow", "server", "--backend-store-uri"], ["ray", "start", "--head"], ["ray", "start", "--address=HEAD:6379"],
        ["python", "-m", "search"]]
    ray_port, mlflow_port, workdir = _free_port(), _free_port(), tmp_path / "driver"
    workdir.mkdir()
    here = {"DB/": f"{postgres}/", "HEAD:6379": f"127.0.0.1:{ray_port}", "--port=6379": f"--port={ray_port}",
            "MLFLOW:5000": f"127.0.0.1:{mlflow_port}", "--port 5000": f"--port {mlflow_port}",
            "--host 0.0.0.0": "--host 127.0.0.1", "/srv/mlartifacts": str(tmp_path / "served"),
            "--num-cpus=8": "--num-cpus=1", "--target cpu:bs1:224": "--target cpu:bs1:64"}

    def argv(line: str) -> list[str]:
        for written, local in here.items():
            line = line.replace(written, local)
        words = shlex.split(line)
        return [sys.executable, *words[1:]] if words[0] == "python" else words

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    _, exported, token, server, head, node, driver = lines
    name, value = exported.split()[1].split("=")
    env[name] = value
    subprocess.run(argv(token), env=env, check=True, capture_output=True)
    services = Services(tmp_path)
    # `ray start --head` writes the address other Ray commands and ray.init() of this machine join by
    # default, and leaves it when stopped: later tests would join the stopped head.
    current = RAY_CURRENT_CLUSTER.read_bytes() if RAY_CURRENT_CLUSTER.is_file() else None
    try:
        services.start(argv(server), env, f"http://127.0.0.1:{mlflow_port}/health")
        services.start(argv(head), env, "Ray runtime started")
        services.start(argv(node), env, "Ray runtime started")
        run = argv(driver) + ["--study", "recipe", "--max-trials", "2", "--epochs", "1", "--measure-seconds", "1",
                              "--workdir", str(workdir)]
        # a driver without the token: one line naming what to set, nothing created
        # (Ray's 20 connection attempts, a second apart, cut to 2: the refusal is the same)
        refused = subprocess.run(run, env=env | {"RAY_AUTH_MODE": "disabled", "RAY_gcs_server_port_wait_time_s": "2"},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "refused this driver's token" in refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr + refused.stdout
        storage = f"postgresql://optuna@{postgres}/optuna"
        assert optuna.get_all_study_names(storage) == []
        done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "--max-trials 2 reached" in done.stdout
        assert "View run" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    finally:
        left = services.stop()
        if current is None:
            RAY_CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            RAY_CURRENT_CLUSTER.write_bytes(current)
    assert left == []  # every process a service started is gone with it
    study = optuna.load_study(study_name="recipe", storage=storage)  # the server's data outlive the services
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    nodes = {interval[2] for t in complete for interval in t.user_attrs["train_intervals"]}
    assert nodes  # trained on the cluster's nodes (node ids recorded per job)
    # MLflow's runs are in PostgreSQL, its artifacts in the server's store, not on the driver's disk
    served = tmp_path / "served"
    fronts = sorted(p.name for p in served.rglob("front.*"))
    assert fronts == ["front.csv", "front.png"]
    assert not (workdir / "mlartifacts").exists()
    # the tracking server is stopped: its runs are read from its database
    client = MlflowClient(f"postgresql://mlflow@{postgres}/mlflow")
    experiment = client.get_experiment_by_name("litv2-search")
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    [parent] = client.search_runs([experiment.experiment_id], "tags.kind = 'study'")
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "recipe"
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["status"] for c in children) == ["complete", "complete"]
