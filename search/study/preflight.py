"""Every endpoint and folder a command will use, checked before it creates anything.

An Optuna storage on a database server, an MLflow tracking server and a Ray cluster are each
asked, with a short timeout, whether they answer; folders whether they can be written; a
database URL whether its driver is installed. Each failure is one ValueError naming the URL
or folder and what failed, so a typo or an outage costs seconds and leaves no study, run or
file behind (without these checks an unreachable MLflow server made a search hang for
minutes and then left an empty study whose name blocked the next ``run``).

Only the standard library is imported: this runs before the deep-learning stack.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from litv2.files import check_writable_folder

from .storage import check_storage_file, storage_file

if TYPE_CHECKING:
    from .settings import SearchSettings

CONNECT_TIMEOUT_S = 3.0
# Database schemes -> (the module SQLAlchemy 2.1 imports for them, what installs it). A bare
# postgresql:// loads psycopg 3, not psycopg2: checking for psycopg2 passed and the storage
# then failed to open ("Failed to import DB access module").
DB_DRIVERS = {
    "postgresql": ("psycopg", "'litv2-search[postgres]'"), "postgresql+psycopg": ("psycopg", "'litv2-search[postgres]'"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "mysql": ("pymysql", "'litv2-search[mysql]'"), "mysql+pymysql": ("pymysql", "'litv2-search[mysql]'"),
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "http": 80, "https": 443}
RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def check_database_driver(url: str, what: str) -> None:
    """A database URL whose driver is missing: name what installs it."""
    scheme = url.split("://", 1)[0]
    if scheme in DB_DRIVERS:
        module, package = DB_DRIVERS[scheme]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"{what} {_hide_password(url)!r} needs the {module} driver: pip install {package}")


def check_storage_endpoint(url: str) -> None:
    """A file storage's folder must be writable; a database server must be installed-for and answer."""
    path = storage_file(url)
    if path is not None:
        check_storage_file(url)
        check_writable_folder(path.parent, f"storage {url!r}")
        if path.exists() and not os.access(path, os.W_OK):
            raise ValueError(f"storage {url!r}: the file {str(path)!r} is not writable")
        return
    check_database_driver(url, "storage")
    _check_connects(url, "storage")


def check_tracking_endpoint(uri: str) -> None:
    """The MLflow store answers: a server within the timeout, a sqlite file's folder is writable."""
    if uri.startswith("sqlite:///"):
        check_writable_folder(Path(uri[len("sqlite:///"):]).parent, f"tracking URI {uri!r}")
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # it answered: a server is there (a proxy's 404 shows up at the first request)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ValueError(f"tracking URI {uri!r} does not answer within {CONNECT_TIMEOUT_S:g} s: {reason}") from None
    elif "://" in uri and uri.split("://", 1)[0] in DB_DRIVERS:
        check_database_driver(uri, "tracking URI")
        _check_connects(uri, "tracking URI")


def check_ray_address(address: str | None) -> None:
    """``--address`` names a Ray cluster that answers (None: a local instance is started)."""
    if address is None:
        return
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS") or (
            RAY_CURRENT_CLUSTER.read_text().strip() if RAY_CURRENT_CLUSTER.is_file() else "")
        if not target:
            raise ValueError("--address auto found no Ray cluster on this machine: start one with "
                             "'ray start --head', or give HOST:PORT")
    else:
        target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r} is invalid: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    _connect(host, int(port), f"--address {address!r}")


def check_checkpoint_folder(folder: Path) -> None:
    """Rung checkpoints go to ``folder``, made if missing: it must not be a file, and the
    nearest folder that exists must take files."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--checkpoint-dir {str(folder)!r} is a file: expected a folder (made if missing)")
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"--checkpoint-dir {str(folder)!r} is under the file {str(existing)!r}: expected a folder")
    check_writable_folder(existing, "--checkpoint-dir")


def check_cpus_per_trial(cpus_per_trial: int, address: str | None) -> None:
    """A local Ray instance has this machine's cores; a trial cannot have more (a joined
    cluster's nodes are checked once Ray answers, before the study exists)."""
    cores = os.cpu_count() or 1
    if address is None and cpus_per_trial > cores:
        raise ValueError(f"--cpus-per-trial {cpus_per_trial} is more than the {cores} CPU cores of this machine "
                         "(the local Ray cluster)")


def check_target_threads(settings: "SearchSettings") -> None:
    """A CPU target measured by a local Ray instance cannot use more threads than this machine
    has cores (a joined cluster's measuring node is checked once Ray answers): said before
    Ray starts, not 14 s later."""
    cores = os.cpu_count() or 1
    for target in settings.search.targets:
        if settings.run.address is None and target.device == "cpu" and target.threads > cores:
            raise ValueError(f"target {target} uses {target.threads} threads but this machine (the local Ray "
                             f"cluster's measuring node) has {cores} CPU cores; lower the target's :tTHREADS")


def _check_connects(url: str, what: str) -> None:
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0])
    if not parts.hostname or port is None:
        return  # a socket path or a driver default: the driver reports it on connection
    _connect(parts.hostname, port, f"{what} {_hide_password(url)!r}")


def _connect(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except socket.timeout:
        raise ValueError(f"{what}: {host}:{port} does not answer within {CONNECT_TIMEOUT_S:g} s") from None
    except OSError as error:
        raise ValueError(f"{what}: cannot connect to {host}:{port} ({error.strerror or error})") from None


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def check_latency_table(settings: "SearchSettings") -> None:
    """A search ranked by prediction alone has a table to rank by (a replay brings its own predictor)."""
    from ..core.prediction import PREDICTED

    if settings.search.throughput == PREDICTED and settings.run.latency_table is None:
        raise ValueError("--throughput predicted ranks by a latency table measured on the target: pass it with "
                         "--latency-table FILE (python -m space lut build --space S --target T --lut FILE, run "
                         "on the target's machine)")


def preflight_search(settings: "SearchSettings") -> list[str]:
    """Everything a ``run`` or ``resume`` will touch, in the order a user fixes them; returns
    warning lines (image files that will be skipped)."""
    from ..core.datasets import check_dataset

    check_latency_table(settings)
    check_writable_folder(settings.run.workdir, "--workdir")
    check_checkpoint_folder(settings.run.checkpoints)
    check_storage_endpoint(settings.run.storage)
    check_tracking_endpoint(settings.run.tracking_uri)
    check_ray_address(settings.run.address)
    check_cpus_per_trial(settings.run.cpus_per_trial, settings.run.address)
    check_target_threads(settings)
    return check_dataset(settings.search.dataset, settings.run.data_root)
