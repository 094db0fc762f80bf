"""``python -m experiments list|run|show``: ablation tables in one command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from litv2.argparsing import StrictParser, interrupted
from search.core.errors import EXIT_USAGE, usage_error

if TYPE_CHECKING:
    from .runner import Outcome


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(prog="python -m experiments", description="LITv2 ablation tables on the search engine")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=StrictParser)
    commands.add_parser("list", help="the shipped recipes and what each reproduces")
    run = commands.add_parser("run", help="run a recipe and print its table")
    run.add_argument("recipe", help="a shipped recipe (python -m experiments list) or a recipe file (.yaml/.json)")
    run.add_argument("--budget", help="device budget of the trainings, e.g. 0.5cpu-h or 2gpu-h (default: the "
                                     "recipe's)")
    run.add_argument("--dataset", help="proxy data set (default: the recipe's)")
    run.add_argument("--data-root", help="where cifar data live (default $LITV2_DATA)")
    run.add_argument("--target", help="deployment target DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS] "
                                      "(default: the local device, cpu:bs1:224 on a CPU budget)")
    run.add_argument("--seeds", type=int, help="trainings per row, one per seed (default: the recipe's)")
    run.add_argument("--epochs", type=int, help="proxy training epochs (default: the recipe's)")
    run.add_argument("--seed", type=int, default=0, help="first seed; also seeds the data set")
    run.add_argument("--out", help="folder for the table (.md, .csv, .tex) and plot (default WORKDIR/results/STUDY)")
    run.add_argument("--study", help="study name (default RECIPE-DATE-TIME)")
    run.add_argument("--workdir", default=".", help="folder of the default storage, MLflow store and caches")
    run.add_argument("--storage", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    run.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: a local Ray instance)")
    run.add_argument("--measure-seconds", type=float,
                     help="time cap of one throughput measurement (default 6; a capped figure is flagged)")
    run.add_argument("--max-memory", help="measured recipes: the memory a layer may use, e.g. 8G (default: what the "
                                          "device has free)")
    show = commands.add_parser("show", help="print the table of a finished or interrupted experiment")
    show.add_argument("--study", required=True)
    show.add_argument("--workdir", default=".")
    show.add_argument("--storage", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    show.add_argument("--out", help="folder to write the table to (default WORKDIR/results/STUDY)")
    return parser


def list_text() -> str:
    from .recipes import load_recipe, recipe_names

    lines = []
    for name in recipe_names():
        recipe = load_recipe(name)
        kind = "measured, no training" if recipe.attention else (
            f"{len(recipe.labels)} rows, {recipe.seeds} seeds, {recipe.epochs} epochs on {recipe.dataset or 'default'}, "
            f"budget {recipe.budget}")
        lines.append(f"{name:<22} {recipe.description}\n{'':<22} ({kind})")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> Outcome:
    """Check the recipe, every option, endpoint and folder; only then import the stack and run
    (the outcome's rows serve ``experiments.separability``)."""
    from search.cli.logs import route_library_logs
    from search.study.preflight import preflight_search

    from .options import RunOptions, settings_for
    from .recipes import load_recipe

    options = RunOptions(
        budget=args.budget, dataset=args.dataset, target=args.target, seeds=args.seeds, epochs=args.epochs,
        out=args.out, study=args.study, workdir=args.workdir, storage=args.storage, tracking_uri=args.tracking_uri,
        address=args.address, data_root=args.data_root, max_memory=args.max_memory, seed=args.seed,
        measure_seconds=args.measure_seconds,
    )
    recipe = load_recipe(args.recipe)
    settings = settings_for(recipe, options)
    if args.out is not None:
        _check_out(args.out)
    for line in preflight_search(settings):
        print(line, flush=True)
    from .runner import run_recipe

    route_library_logs(settings.run.workdir)
    return run_recipe(recipe, options)


def _check_out(out: str) -> None:
    """``--out`` is a folder to be (or already) there: its parent must exist, it must not be a file."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {out!r} is a file: expected a folder")
    if not folder.resolve().parent.is_dir():
        raise ValueError(f"--out {out!r} is invalid: its parent folder {str(folder.parent)!r} does not exist")


def guarded(action: Callable[[], int]) -> int:
    """Bad input -> one line and exit 2; a run that cannot go on -> one line and exit 1."""
    try:
        return action()
    except (ValueError, RuntimeError) as error:  # SpaceError (a bad recipe) is a ValueError
        print(f"experiments: error: {error}", file=sys.stderr)
        return EXIT_USAGE if usage_error(error) else 1
    except KeyboardInterrupt:
        return interrupted("experiments")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return guarded(lambda: print(list_text()) or 0)
    if args.command == "run":
        return guarded(lambda: run_command(args).code)
    return guarded(lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    from search.study.settings import check_study_name

    from search.study.storage import default_storage_url
    from search.study.studies import open_study

    check_study_name(args.study)
    if args.out is not None:
        _check_out(args.out)
    open_study(args.storage or default_storage_url(Path(args.workdir)), args.study)  # there, before the stack loads
    from .runner import show

    return show(args.study, args.workdir, args.storage, args.out).code
