"""Services that tests start and stop themselves: a free port, an ``mlflow server`` on sqlite."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(folder: Path, port: int, wait: bool = True) -> subprocess.Popen:
    """``mlflow server`` on a sqlite store in ``folder`` (returns once it answers, if ``wait``)."""
    with (folder / "server.log").open("a") as log:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
            # no job runner: its seven huey consumers would only slow the test down
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    if wait:
        wait_until_up(server, port)
    return server


def wait_until_up(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("mlflow server did not come up")


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # the server and its uvicorn workers
    server.wait()
