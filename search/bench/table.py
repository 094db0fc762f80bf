"""The tabular benchmark: every architecture of a finite space, recorded once by a real search.

A table row holds what the search measured for one architecture: its full-size params and
FLOPs, its throughput on the recording target (median and the half-width of its 95%
interval), the wall seconds its count, its measurement and each proxy epoch took, and its
validation accuracy after every epoch up to the maximum fidelity. The table is exported from
an Optuna study that ``python -m search run --sampler random --scheduler full`` filled (and
``search resume`` extends), so it is made by the same code it later benchmarks, and replays
(:mod:`search.bench.replay`) answer every job a search asks for from it at no training cost.

It is stored as gzip-compressed JSON (a few hundred rows: tens of kB), written under a
temporary name and renamed, so an interrupted export never leaves half a table.
"""
from __future__ import annotations

import datetime
import gzip
import json
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna

from litv2.files import atomic_write

from ..core.record import TrialRecord
from ..core.versions import installed_versions
from ..study.settings import SearchConfig

TABLE_VERSION = 1
VERSIONED_PACKAGES = ("torch", "timm", "optuna", "litv2-search")


@dataclass(frozen=True)
class Row:
    """One recorded architecture (``config``: the full-size LITConfig as JSON)."""

    arch_id: str
    summary: str
    config: str
    params: int
    flops: int
    throughput: float
    throughput_spread: float
    count_seconds: float
    measure_seconds: float
    epoch_seconds: float  # mean wall seconds of one proxy epoch (one job trained them all)
    epoch_accuracies: tuple[float, ...]
    predicted_throughput: float | None = None  # from a latency table of the recording node (predict_table)


@dataclass(frozen=True)
class BenchTable:
    """Rows plus where they came from: ``meta`` names the space, data set, target, epochs,
    seed, library versions and machine of the recording."""

    meta: dict[str, Any]
    rows: tuple[Row, ...]

    @property
    def epochs(self) -> int:
        return int(self.meta["epochs"])

    def by_arch(self) -> dict[str, Row]:
        return {row.arch_id: row for row in self.rows}

    def save(self, path: Path) -> None:
        data = dict(version=TABLE_VERSION, meta=self.meta, rows=[asdict(row) for row in self.rows])

        def write(partial: Path) -> None:
            # mtime=0: the same table is the same bytes, so re-exports leave git quiet.
            with open(partial, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as stream:
                stream.write(json.dumps(data, sort_keys=True).encode())

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> "BenchTable":
        """A saved table, or a one-line ValueError naming the file."""
        try:
            with gzip.open(path, "rt") as stream:
                data = json.load(stream)
            rows = tuple(Row(**{**row, "epoch_accuracies": tuple(row["epoch_accuracies"])}) for row in data["rows"])
            return cls(data["meta"], rows)
        except FileNotFoundError:
            raise ValueError(f"table {str(path)!r} does not exist") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"table {str(path)!r} is not a benchmark table ({type(error).__name__}: {error})") from None


def export_table(study: optuna.Study, config: SearchConfig, fingerprint: dict[str, str]) -> BenchTable:
    """The table of a recording study: one row per architecture trained to its last epoch.

    ``config``: what the study searched; ``fingerprint``: the device and library versions the
    throughputs were measured under.
    """
    # A re-run of an interrupted trial takes its throughput from the cache: its measurement's
    # seconds are those of the trial that measured the architecture.
    measured = {r.arch_id: r.measure_interval[:2]
                for r in map(TrialRecord.of, study.get_trials(deepcopy=False)) if r.measure_interval}
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        record = TrialRecord.of(trial)
        accuracies = record.epoch_accuracies
        if len(accuracies) != config.epochs:
            continue  # a training reused from another recipe would not be this table's
        start, end = record.train_intervals[-1][:2]
        if record.arch_id not in measured:
            raise ValueError(f"architecture {record.arch_id} (trial {trial.number}) took its throughput from a "
                             f"measurement of another study in this work directory, so its measurement seconds are "
                             f"unknown: record a table in a work directory of its own")
        measure_start, measure_end = measured[record.arch_id]
        rows.append(Row(
            arch_id=record.arch_id, summary=record.summary, config=record.config, params=int(record.params),
            flops=int(record.flops), throughput=float(record.throughput),
            throughput_spread=float(record.throughput_spread),
            count_seconds=float(record.costs.get("count", 0.0)), measure_seconds=float(measure_end - measure_start),
            epoch_seconds=float(end - start) / len(accuracies), epoch_accuracies=tuple(float(a) for a in accuracies),
        ))
    if not rows:
        raise ValueError(f"study {study.study_name!r} has no architecture trained to its last epoch "
                         f"({config.epochs}); nothing to export")
    rows.sort(key=lambda row: row.arch_id)
    meta = dict(
        space=config.space, dataset=config.dataset, target=config.target.key, epochs=config.epochs,
        seed=config.seed, study=study.study_name, sampler=config.sampler, scheduler=config.scheduler,
        exported=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=dict(device=fingerprint.get("device_name", ""), cpu=_cpu_model(), cores=os.cpu_count(),
                     python=platform.python_version(), system=platform.platform()),
        measurement_versions={k: v for k, v in fingerprint.items() if k != "device_name"},
        versions=installed_versions(VERSIONED_PACKAGES),
    )
    return BenchTable(meta, tuple(rows))


def remeasure_table(table: BenchTable, measure: Callable[[str, str], dict[str, Any]],
                    fingerprint: dict[str, str], say: Callable[[str], None] = print) -> BenchTable:
    """``table`` with every row's throughput measured again on its target by ``measure(config
    json, target)`` (:func:`search.engine.measuring.measure_architecture`): figure, interval and
    measurement seconds replaced, accuracies and training costs kept (they do not depend on
    how throughput is timed). For a table whose figures predate a protocol change; run it on
    the recording machine, whose ``fingerprint`` the new figures carry."""
    target, rows = table.meta["target"], []
    for index, row in enumerate(table.rows, 1):
        measured = measure(row.config, target)
        rows.append(replace(row, throughput=float(measured["throughput"]),
                            throughput_spread=float(measured["throughput_spread"]),
                            measure_seconds=float(measured["wall_seconds"] - measured.get("calibration_seconds", 0.0))))
        say(f"[{index}/{len(table.rows)}] {row.arch_id}: {row.throughput:.1f} -> {measured['throughput']:.1f} img/s")
    meta = dict(table.meta, remeasured=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                measurement_versions={k: v for k, v in fingerprint.items() if k != "device_name"})
    meta["machine"] = dict(meta["machine"], device=fingerprint.get("device_name", ""), cpu=_cpu_model(),
                           cores=os.cpu_count())
    return BenchTable(meta, tuple(rows))


def predict_table(table: BenchTable, predict: Callable[[str], float], source: str) -> BenchTable:
    """``table`` with every row's throughput predicted by ``predict(config json)`` (from a
    latency table of the recording node, named by ``source``), for replays of a search that
    ranks by prediction (``search run --throughput predicted``)."""
    rows = tuple(replace(row, predicted_throughput=float(predict(row.config))) for row in table.rows)
    return BenchTable(dict(table.meta, predicted_with=source), rows)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def export_study(study_name: str, storage_url: str, workdir: Path, out: Path) -> BenchTable:
    """``python -m search bench-table``: export a recording study of ``workdir`` to ``out``.

    Run it on the recording machine: throughputs are looked up in the work directory's cache
    under this machine's fingerprint, which is how the table knows the device and versions
    they were measured with.
    """
    from ..engine.cache import CACHE_FILE, ThroughputCache
    from ..engine.measuring import measuring_fingerprint
    from ..study.settings import SearchSettings
    from ..study.studies import SETTINGS_ATTR, open_study

    study = open_study(storage_url, study_name)
    if SETTINGS_ATTR not in study.user_attrs:
        raise ValueError(f"study {study_name!r} was not made by 'python -m search run': it has no search settings")
    settings = SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])
    fingerprint = measuring_fingerprint(settings.search.target.key)
    cache = ThroughputCache(Path(workdir) / CACHE_FILE)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        arch = TrialRecord.of(trial).arch_id
        if cache.get(arch, settings.search.target.key, fingerprint) is None:
            raise ValueError(f"architecture {arch} has no measurement in {workdir} under this "
                             f"machine's fingerprint ({fingerprint.get('device_name')}); export on the recording machine")
    table = export_table(study, settings.search, fingerprint)
    table.save(out)
    return table
