"""``python -m search run|resume|status|front``: the command line of the orchestrator."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .budget import parse_budget
from .storage import default_storage_url

EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", help="study name (run: default SPACE-DATE-TIME)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    parser.add_argument("--workdir", default=".", help="folder for the default storage, MLflow store and caches")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description="Hardware-aware LITv2 architecture search")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start a search within a device budget")
    _common(run)
    run.add_argument("--budget", default="0.05cpu-h", help="device budget, e.g. 64gpu-h, 2cpu-h, 90gpu-min")
    run.add_argument("--space", default="tiny", help="named space (default, tiny, table5, ...) or a YAML/JSON file")
    run.add_argument("--dataset", default="cluttered-digits",
                     help="digits, cluttered-digits, cifar10, cifar100 or imagefolder:PATH")
    run.add_argument("--data-root", help="where cifar data live (default $LITV2_DATA)")
    run.add_argument("--target", help="deployment target DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS], e.g. cpu:bs1:224 "
                          "(1 thread), cpu:bs8:224:t4 or cuda:bs64:224:fp16 (default: the local device)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    run.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: a local Ray instance)")
    run.add_argument("--sampler", default="tpe", help="tpe, nsga2, gp or random")
    run.add_argument("--epochs", type=int, default=2, help="proxy training epochs")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--trials-per-device", type=int, default=1, help="GPU budgets: trials sharing one GPU")
    run.add_argument("--cpus-per-trial", type=int, default=1, help="CPU budgets: cores per training trial")
    run.add_argument("--measure-repeats", type=int, default=5,
                     help="least number of timed blocks per throughput measurement (more are added until the "
                          "median's 95%% interval is under 2%% wide or the time cap)")
    run.add_argument("--max-trials", type=int, help="stop after this many trained architectures (default: budget only)")
    resume = commands.add_parser("resume", help="continue an interrupted or finished study")
    _common(resume)
    resume.add_argument("--budget", help="extra budget to add, e.g. 1gpu-h")
    status = commands.add_parser("status", help="trials, budget and current front of a study")
    _common(status)
    front = commands.add_parser("front", help="the Pareto front of a study")
    _common(front)
    front.add_argument("--csv", help="write the front as CSV")
    front.add_argument("--plot", help="write the front as a PNG plot")
    return parser


def _storage(args: argparse.Namespace) -> str:
    return args.storage or default_storage_url(Path(args.workdir))


def _run(args: argparse.Namespace) -> int:
    from .orchestrator import Search
    from .settings import build_settings

    settings = build_settings(
        study=args.study or f"{Path(args.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}", space=args.space,
        budget=args.budget, dataset=args.dataset, target=args.target, storage=args.storage,
        tracking_uri=args.tracking_uri, workdir=args.workdir, sampler=args.sampler, epochs=args.epochs,
        seed=args.seed, address=args.address, data_root=args.data_root, trials_per_device=args.trials_per_device,
        cpus_per_trial=args.cpus_per_trial, measure_repeats=args.measure_repeats, max_trials=args.max_trials,
    )
    return Search(settings).run(resume=False)


def _resume(args: argparse.Namespace) -> int:
    from .orchestrator import Search, load_settings

    if not args.study:
        raise ValueError("resume needs --study NAME")
    settings = load_settings(args.study, _storage(args))
    if args.budget:
        settings = settings.with_budget(str(parse_budget(settings.budget).plus(parse_budget(args.budget))))
    return Search(settings).run(resume=True)


def _status(args: argparse.Namespace) -> int:
    from .report import status_text

    if not args.study:
        raise ValueError("status needs --study NAME")
    print(status_text(args.study, _storage(args)))
    return 0


def _front(args: argparse.Namespace) -> int:
    from .report import write_front

    if not args.study:
        raise ValueError("front needs --study NAME")
    print(write_front(args.study, _storage(args), args.csv, args.plot))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": _run, "resume": _resume, "status": _status, "front": _front}[args.command]
    try:
        return handler(args)
    except ValueError as error:
        print(f"search: error: {error}", file=sys.stderr)
        return EXIT_USAGE
