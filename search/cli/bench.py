"""``python -m search bench-table`` and ``bench-strategies``: the tabular benchmark's commands.

Kept beside :mod:`search.cli.main` rather than in it: they share none of a study's options and
only add two subcommands to its parser.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..bench import SHIPPED_TABLE
from ..core.prediction import THROUGHPUT_SOURCES, PredictionMargin
from ..core.samplers import SAMPLERS
from ..core.scheduler import SCHEDULERS

# The shipped table. Named here, not in search.bench.table, so that parsing imports no optuna.


def add_bench_commands(commands) -> None:
    """Add both subcommands to ``python -m search``'s subparsers."""
    table = commands.add_parser("bench-table", help="export a recording study (random sampler, full fidelity) as "
                                "a compressed benchmark table")
    source = table.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="the recording study")
    source.add_argument("--remeasure", metavar="TABLE",
                        help="an existing table whose throughputs are measured again here, on its target with "
                             "today's protocol (accuracies and training costs kept)")
    source.add_argument("--predict", metavar="TABLE",
                        help="an existing table to which every row's predicted throughput is added, from --lut "
                             "(replays of bench-strategies --throughputs predicted)")
    table.add_argument("--lut", help="with --predict: the latency table (default: this node's own for the table's "
                       "target, from 'python -m space lut build --space bench')")
    table.add_argument("--measure-seconds", type=float, default=2.0,
                       help="with --remeasure: time cap of each measurement (default %(default)s, as recorded)")
    table.add_argument("--storage", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    table.add_argument("--workdir", default=".", help="the recording's work directory (its throughput cache)")
    table.add_argument("--out", default=str(SHIPPED_TABLE), help=f"table file to write (default {SHIPPED_TABLE})")
    strategies = commands.add_parser("bench-strategies", help="replay search strategies on a benchmark table: "
                                     "hypervolume against budget, no training")
    strategies.add_argument("--table", default=str(SHIPPED_TABLE), help="benchmark table (default: the shipped one)")
    strategies.add_argument("--samplers", default="random,tpe,nsga2,gp", help="comma-separated samplers (default %(default)s)")
    strategies.add_argument("--schedulers", default="full,mo-asha", help="comma-separated schedulers (default %(default)s)")
    strategies.add_argument("--throughputs", default="measured",
                            help="comma-separated: measured (every candidate measured) and/or predicted (ranked by the "
                                 "table's predictions, the front measured at the end; default %(default)s)")
    strategies.add_argument("--seeds", type=int, default=10, help="replays per strategy (seeds 0..N-1)")
    strategies.add_argument("--workers", type=int, default=4, help="simulated CPU cores of the replayed machine")
    strategies.add_argument("--budget", help="device budget of every replay, e.g. 0.5cpu-h (default: a quarter of "
                            "what training the whole table at full fidelity costs)")
    strategies.add_argument("--processes", type=int, help="replays run at once (default: the cores here, at most 4)")
    strategies.add_argument("--out", default="bench-strategies", help="folder for strategies.md, strategies.png and "
                            "curves.csv (default ./bench-strategies)")


def _names(text: str, known: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in known:
            raise ValueError(f"{option} {name!r} is unknown; expected a comma-separated list of {', '.join(known)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{option} {text!r} is invalid: expected distinct names from {', '.join(known)}")
    return names


def _bench_table(args: argparse.Namespace) -> int:
    from ..study.storage import default_storage_url
    from ..bench.table import export_study

    out = Path(args.out)
    if not out.parent.is_dir():
        raise ValueError(f"--out {args.out!r} is invalid: its folder does not exist")
    if args.remeasure:
        return _remeasure(args, out)
    if args.predict:
        return _predict(args, out)
    storage = args.storage or default_storage_url(Path(args.workdir))
    table = export_study(args.study, storage, Path(args.workdir), out)
    print(f"wrote {out}: {len(table.rows)} architectures of space {table.meta['space']} "
          f"({out.stat().st_size / 1024:.0f} kB)")
    return 0


def _remeasure(args: argparse.Namespace, out: Path) -> int:
    from ..engine.measuring import measure_architecture, measuring_fingerprint
    from ..bench.table import BenchTable, remeasure_table

    if not args.measure_seconds > 0:
        raise ValueError(f"--measure-seconds {args.measure_seconds!r} is invalid: expected a positive number of seconds")
    table = BenchTable.load(args.remeasure)  # a missing or broken file: one line naming it
    target = table.meta["target"]  # a cuda table without a GPU here: measure's one-line refusal
    new = remeasure_table(table, lambda config, key: measure_architecture(config, key, max_seconds=args.measure_seconds),
                          measuring_fingerprint(target))
    new.save(out)
    moved = sorted(abs(n.throughput / o.throughput - 1) for n, o in zip(new.rows, table.rows))
    print(f"wrote {out}: {len(new.rows)} throughputs measured again on {target}; median change "
          f"{moved[len(moved) // 2]:.1%}, largest {moved[-1]:.1%}")
    return 0


def _predict(args: argparse.Namespace, out: Path) -> int:
    from litv2 import LITConfig
    from litv2.latency import default_table_path, open_table, predict
    from litv2.measure import device_fingerprint
    from litv2.target import parse_target

    from ..bench.table import BenchTable, predict_table

    table = BenchTable.load(args.predict)
    target = parse_target(table.meta["target"])
    fingerprint = device_fingerprint(target.device)
    path = Path(args.lut) if args.lut else default_table_path(target, fingerprint)
    if not path.is_file():
        raise ValueError(f"--lut {str(path)!r} does not exist: build it with 'python -m space lut build --space "
                         f"{table.meta['space']} --target {target.key}'")
    path, latency = open_table(target, fingerprint, path)  # the recording node's table, not another's
    source = f"latency table {path.name} ({len(latency.parts)} parts, {latency.fingerprint.get('device_name')})"
    new = predict_table(table, lambda config: predict(LITConfig.from_json(config), target, latency).img_s, source)
    new.save(out)
    pairs = PredictionMargin()
    for row in new.rows:
        pairs.observe(row.predicted_throughput, row.throughput)
    print(f"wrote {out}: {len(new.rows)} throughputs predicted from {path}; against the table's measurements: median "
          f"error {pairs.median_error():.1%}, {sum(e <= 0.10 for e in pairs.errors)}/{len(pairs.errors)} within 10 %")
    return 0


def _bench_strategies(args: argparse.Namespace) -> int:
    from ..core.budget import parse_budget
    from ..bench.strategies import bench_strategies, default_processes

    samplers = _names(args.samplers, SAMPLERS, "--samplers")
    schedulers = _names(args.schedulers, SCHEDULERS, "--schedulers")
    throughputs = _names(args.throughputs, THROUGHPUT_SOURCES, "--throughputs")
    for name, value in (("seeds", args.seeds), ("workers", args.workers), ("processes", args.processes or 1)):
        if value < 1:
            raise ValueError(f"--{name} {value} is invalid: expected a positive integer")
    if args.budget is not None and parse_budget(args.budget).kind != "cpu":
        raise ValueError(f"--budget {args.budget!r} is invalid: the table was recorded on CPUs; use cpu-h, cpu-min "
                         "or cpu-s")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is invalid: it is a file, expected a folder")
    print(bench_strategies(Path(args.table), samplers, schedulers, args.seeds, args.workers, args.budget, out,
                           args.processes or default_processes(), throughputs=throughputs))
    return 0


BENCH_HANDLERS = {"bench-table": _bench_table, "bench-strategies": _bench_strategies}
