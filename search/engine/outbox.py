"""MLflow writes that survive an outage of the tracking server.

The driver never waits on MLflow: each write becomes a :class:`Record` in a queue that a
background thread sends in order. When the server is unreachable the thread says so once,
keeps the records and tries again every ``retry_seconds``; the search goes on. Files (the
front's CSV and plot) are copied into a spool folder first, so what is sent later is what
was current then. When the search ends the queue is given ``flush_seconds`` to drain;
whatever is still unsent is written to ``OUTBOX/STUDY.jsonl`` (temporary name, then
renamed) with a warning, and ``python -m search sync-mlflow`` (or the study's next
``resume``) sends it.

A child run is one record (create, log, terminate): once created, its run id is kept on
the record, so a retry after a half-sent record completes that run instead of making a
second one. A ``create_run`` whose answer was lost (the server made the run, the client
timed out) is looked up by the run's name and tags before it is sent again.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from litv2.files import atomic_write_text, json_lines

RETRY_SECONDS = 2.0
FLUSH_SECONDS = 30.0
# MLflow's own HTTP retries back off for minutes; the outbox retries instead, so a request
# to a dead server fails fast (unless the user set these).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


RECORD_KINDS = ("batch", "child", "artifact", "terminate")


@dataclass
class Record:
    """One MLflow write: ``kind`` is one of :data:`RECORD_KINDS`."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)


def batch(run_id: str, params: dict[str, str] | None = None,
          metrics: list[tuple[str, float, int, int]] | None = None) -> Record:
    """Params and metrics (name, value, timestamp ms, step) of one run."""
    return Record("batch", dict(run_id=run_id, params=params or {}, metrics=[list(m) for m in metrics or []]))


def send(client: MlflowClient, record: Record) -> None:
    """Apply ``record``; raises whatever MLflow raises (the caller keeps the record)."""
    args = record.args
    if record.kind == "batch":
        _log_batch(client, args["run_id"], args["params"], args["metrics"])
    elif record.kind == "child":
        if args.get("run_id") is None and args.get("create_sent"):
            args["run_id"] = _created_before(client, args)
        if args.get("run_id") is None:
            args["create_sent"] = True  # kept with the record: a kept file remembers it too
            args["run_id"] = client.create_run(args["experiment_id"], run_name=args["name"], tags=args["tags"]).info.run_id
        _log_batch(client, args["run_id"], args["params"], args["metrics"])
        client.set_terminated(args["run_id"])
    elif record.kind == "artifact":
        client.log_artifact(args["run_id"], args["path"])
    elif record.kind == "terminate":
        client.set_terminated(args["run_id"], status=args["status"])
    else:
        raise ValueError(f"unknown MLflow record kind {record.kind!r}")


def _created_before(client: MlflowClient, args: dict[str, Any]) -> str | None:
    """The run an earlier ``create_run`` of this child made, if the server made it and only
    the answer was lost (a timeout): the run of this name under the same parent with all of
    its tags, so no second run is made."""
    clauses = [f"attributes.run_name = '{args['name']}'"]
    if "mlflow.parentRunId" in args["tags"]:
        clauses.append(f"tags.mlflow.parentRunId = '{args['tags']['mlflow.parentRunId']}'")
    for run in client.search_runs([args["experiment_id"]], filter_string=" and ".join(clauses)):
        if args["tags"].items() <= run.data.tags.items():
            return run.info.run_id
    return None


def _log_batch(client: MlflowClient, run_id: str, params: dict[str, str], metrics: list[list]) -> None:
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(name, float(value), int(ts), int(step)) for name, value, ts, step in metrics])


def fail_fast_over_http(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)


class Outbox:
    """The queue and its sending thread (see the module docstring)."""

    def __init__(self, client: MlflowClient, spool: Path, label: str, say: Callable[[str], None],
                 retry_seconds: float | None = None) -> None:
        self.client = client
        self.spool = spool
        self.label = label  # the tracking URI, for messages
        self.say = say
        self.retry_seconds = RETRY_SECONDS if retry_seconds is None else retry_seconds
        self._queue: collections.deque[Record] = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._offline_since: float | None = None
        self._counter = 0
        self._thread = threading.Thread(target=self._drain, name="mlflow-outbox", daemon=True)
        self._thread.start()

    def put(self, record: Record) -> None:
        with self._lock:
            self._queue.append(record)
            self._lock.notify()

    def put_file(self, run_id: str, path: Path) -> None:
        """Queue a copy of ``path`` (it may be replaced before the record is sent)."""
        self._counter += 1
        folder = self.spool / "files" / f"{os.getpid()}-{self._counter}"
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / path.name
        shutil.copyfile(path, copy)
        self.put(Record("artifact", dict(run_id=run_id, path=str(copy))))

    def close(self, flush_seconds: float | None = None) -> list[Record]:
        """Wait up to ``flush_seconds`` (default :data:`FLUSH_SECONDS`) for the queue to drain;
        returns what is left unsent."""
        with self._lock:
            self._closing = True
            self._deadline = time.monotonic() + (FLUSH_SECONDS if flush_seconds is None else flush_seconds)
            self._lock.notify()
        self._thread.join()
        return list(self._queue)

    def _drain(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue or (self._closing and time.monotonic() >= self._deadline):
                    return
                record = self._queue[0]
            try:
                send(self.client, record)
            except Exception as error:  # noqa: BLE001 - any failure to reach MLflow: keep the record, retry
                self._went_offline(error)
                with self._lock:
                    self._lock.wait(min(self.retry_seconds, max(self._deadline - time.monotonic(), 0.0)))
                continue
            with self._lock:
                self._queue.popleft()
            _drop_spooled(record)
            if self._offline_since is not None:
                self.say(f"MLflow at {self.label} is reachable again after {time.time() - self._offline_since:.0f} s; "
                          f"sending the buffered records ({len(self._queue)} left)")
                self._offline_since = None

    def _went_offline(self, error: Exception) -> None:
        if self._offline_since is None:
            self._offline_since = time.time()
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.say(f"warning: MLflow at {self.label} is unreachable ({type(error).__name__}: {first[:200]}); "
                      "the search goes on and its records are kept until MLflow is back")


def _drop_spooled(record: Record) -> None:
    if record.kind == "artifact" and "/files/" in record.args["path"]:
        shutil.rmtree(Path(record.args["path"]).parent, ignore_errors=True)


def pending_file(spool: Path, study: str) -> Path:
    return spool / f"{study}.jsonl"


def save_pending(path: Path, records: list[Record]) -> None:
    """Append ``records`` to ``path`` (written whole to a temporary name, then renamed)."""
    lines = path.read_text().splitlines() if path.exists() else []
    lines += [json.dumps(asdict(r)) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def load_pending(path: Path) -> list[Record]:
    """The records kept in ``path``; a line that is not one is a one-line ValueError naming
    the file and the line (the file is ours, not MLflow's: it is never blamed on MLflow)."""
    if not path.exists():
        return []
    records = []
    for number, _, data, why in json_lines(path, skip_blank=True):
        if why is None:
            try:
                records.append(Record(**data))
                why = None if records[-1].kind in RECORD_KINDS else f"unknown kind {records[-1].kind!r}"
            except TypeError as error:  # not a record's fields
                why = f"{type(error).__name__}: {str(error)[:200]}"
        if why is not None:
            raise ValueError(f"the kept MLflow records {str(path)!r} are damaged at line {number} ({why}); "
                             f"nothing was sent: move the file away to go on without them")
    return records


def sync(client: MlflowClient, path: Path) -> int:
    """Send the records kept in ``path``, in order; the file shrinks to what is still unsent
    (removed when empty), so an interrupted sync resumes where it stopped. Returns the count sent."""
    records = load_pending(path)
    for sent, record in enumerate(records):
        try:
            send(client, record)
        except Exception:
            path.unlink()
            save_pending(path, records[sent:])
            raise
        _drop_spooled(record)
    path.unlink(missing_ok=True)
    return len(records)
