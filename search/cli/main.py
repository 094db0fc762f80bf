"""``python -m search run|resume|status|front|pick|train|evaluate``: the command line of the orchestrator.

Every argument, and then every endpoint and folder a command uses (:mod:`search.study.preflight`),
is checked before anything is created and before the deep-learning stack is imported, so a
typo answers in well under two seconds with one line and exit status 2, and leaves nothing
behind; ``status`` and ``front`` read the Optuna storage without importing torch or Ray.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from litv2.argparsing import StrictParser, interrupted
from litv2.files import check_writable_folder
from space.registry import SPACE_NAMES

from .bench import BENCH_HANDLERS, add_bench_commands
from ..core.budget import parse_budget
from ..core.datasets import dataset_choices
from ..core.errors import EXIT_USAGE, usage_error
from ..core.samplers import DEFAULT_SAMPLER, sampler_choices
from ..study.settings import check_study_name
from ..core.faults import DEFAULT_MAX_RETRIES
from ..study.storage import default_storage_url
from ..core.target import parse_target

if TYPE_CHECKING:
    from ..study.settings import SearchSettings
    from ..core.target import Target

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", help="study name: 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                        "or digit (run: default SPACE-DATE-TIME)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///WORKDIR/optuna.db)")
    parser.add_argument("--workdir", default=".", help="folder for the default storage, MLflow store and caches")


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(prog="python -m search", description="Hardware-aware LITv2 architecture search")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=StrictParser)
    run = commands.add_parser("run", help="start a search within a device budget")
    _common(run)
    run.add_argument("--budget", default="0.05cpu-h", help="device budget, e.g. 64gpu-h, 2cpu-h, 90gpu-min")
    run.add_argument("--space", default="tiny",
                     help=f"named space ({', '.join(SPACE_NAMES)}) or a YAML/JSON file")
    run.add_argument("--dataset", default="cluttered-digits",
                     help=dataset_choices())
    run.add_argument("--data-root", help="where cifar data live (default $LITV2_DATA)")
    run.add_argument("--target", action="append",
                     help="deployment target DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS][:RUNTIME], e.g. cpu:bs1:224 "
                          "(1 thread), cpu:bs8:224:t4, cpu:bs1:224:ort or cuda:bs64:224:fp16 (default: the local "
                          "device); repeat it for several targets: one throughput objective each, one front each")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    run.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: a local Ray instance)")
    run.add_argument("--sampler", default=DEFAULT_SAMPLER, help=sampler_choices())
    run.add_argument("--epochs", type=int, default=2, help="proxy training epochs")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--trials-per-device", type=int, default=1, help="GPU budgets: trials sharing one GPU")
    run.add_argument("--cpus-per-trial", type=int, default=1, help="CPU budgets: cores per training trial")
    run.add_argument("--max-trials", type=int, help="stop after this many trained architectures (default: budget only)")
    run.add_argument("--scheduler", help="mo-asha (successive halving) or full (default: mo-asha when "
                     "--epochs allows two rungs)")
    run.add_argument("--min-epochs", type=int, default=1, help="mo-asha: epochs of the first rung")
    run.add_argument("--eta", type=int, default=3, help="mo-asha: reduction factor between rungs")
    run.add_argument("--seeds", type=int, default=1, help="fixed-point spaces: trainings per point, one per seed")
    _constraint_options(run)
    run.add_argument("--checkpoint-dir", help="rung checkpoints, readable by every node (default WORKDIR/checkpoints)")
    run.add_argument("--keep-checkpoints", action="store_true", help="keep rung checkpoints of finished trials")
    run.add_argument("--latency-table", default=None,
                     help="a latency table (python -m space lut build) to predict throughput from (default: the "
                          "measuring node's own for the target, if it has one); a constraint a prediction settles "
                          "is not measured")
    run.add_argument("--throughput", default="measured",
                     help="what ranks candidates: measured (default) or predicted (from --latency-table alone, for a "
                          "target this cluster cannot measure: nothing is measured; 'search pick' measures the front)")
    run.add_argument("--measure-seconds", type=float,
                     help="time cap of one throughput measurement (default 6; a capped figure is flagged)")
    run.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES, help="times a trial's job is submitted again after its "
                     "worker or node was lost (a rung restarts from its last checkpoint)")
    resume = commands.add_parser("resume", help="continue an interrupted or finished study")
    _common(resume)
    resume.add_argument("--budget", help="extra budget to add, e.g. 1gpu-h")
    resume.add_argument("--tracking-uri", help="MLflow tracking URI (default: the stored one, or WORKDIR/mlflow.db)")
    sync_mlflow = commands.add_parser("sync-mlflow", help="send the MLflow records a search kept while MLflow "
                                      "was unreachable")
    _common(sync_mlflow)
    sync_mlflow.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's, or WORKDIR/mlflow.db)")
    status = commands.add_parser("status", help="trials, budget and current front of a study")
    _common(status)
    front = commands.add_parser("front", help="the Pareto front of a study")
    _common(front)
    front.add_argument("--csv", help="write the front as CSV")
    front.add_argument("--plot", help="write the front as a PNG plot")
    front.add_argument("--target", help="the front on this target, one of the study's (needed to write a file of a "
                       "study of several targets)")
    pick = commands.add_parser("pick", help="the most accurate model of a study's front that meets a target")
    _common(pick)
    pick.add_argument("--target", help="deployment target DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS] (default: the "
                      "study's); candidates not yet measured there are measured")
    _constraint_options(pick)
    pick.add_argument("--top", type=int, default=3, help="re-measure the K most accurate feasible candidates")
    pick.add_argument("--export", help="write the picked model to this new folder (timm local-dir, ONNX, model card)")
    pick.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's, or WORKDIR/mlflow.db)")
    pick.add_argument("--register", metavar="NAME", help="with --export: the MLflow registered model that gets a new "
                      "version, alias 'candidate' (default: the study's name)")
    train = commands.add_parser("train", help="train an architecture at full size with the paper's recipe")
    train.add_argument("--model", help="an export folder (search pick --export) or a registered name (litv2_s, ...)")
    train.add_argument("--dataset", help=dataset_choices())
    train.add_argument("--data-root", help="where cifar data live (default $LITV2_DATA)")
    train.add_argument("--epochs", type=int, help="epochs of the schedule (default 300)")
    train.add_argument("--batch-size", type=int, help="images per process and step (default 128)")
    train.add_argument("--img-size", type=int, help="training resolution (default: the export's, or 224)")
    train.add_argument("--warmup-epochs", type=int, help="linear warm-up (default: 20 of 300 epochs, in proportion)")
    train.add_argument("--ema-decay", type=float, help="keep an EMA of the weights with this decay (default: off)")
    train.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (default 0)")
    train.add_argument("--workers", type=int, help="data loading processes per training process (default: up to 4, "
                       "at most the cores available to each training process)")
    train.add_argument("--resume", help="continue exactly from a checkpoint (OUTPUT/last.pt)")
    train.add_argument("--stop-after-epoch", type=int, help="end after this epoch of the schedule (continue with "
                       "--resume), e.g. to fit a job's time limit")
    train.add_argument("--output", help="new folder for checkpoints and the trained model (default ./train-NAME-TIME)")
    train.add_argument("--workdir", default=".", help="folder of the default MLflow store")
    train.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///WORKDIR/mlflow.db)")
    train.add_argument("--target", help="where the trained network is measured for its card, at the training "
                       "resolution (default: the export's target, or this machine's default; 'none': not measured)")
    train.add_argument("--register", metavar="NAME", help="the MLflow registered model the trained export becomes a "
                       "version of, alias 'trained' (default: the export's study, or the model's name)")
    train.add_argument("--export-every", type=int, metavar="N", help="also export the model every N epochs "
                       "(OUTPUT/model-epochK/)")
    evaluate = commands.add_parser("evaluate", help="validation top-1 of an exported model (what its card states)")
    evaluate.add_argument("--model", required=True, help="an export folder (search train's OUTPUT/model)")
    evaluate.add_argument("--dataset", required=True, help=dataset_choices())
    evaluate.add_argument("--data-root", help="where cifar data live (default $LITV2_DATA)")
    evaluate.add_argument("--batch-size", type=int, default=128, help="images per step")
    evaluate.add_argument("--workers", type=int, help="data loading processes (default: up to 4, the cores available)")
    add_bench_commands(commands)
    return parser


def _constraint_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-throughput", help="constraint: img/s on the target, at least")
    parser.add_argument("--max-latency-ms", help="constraint: milliseconds per batch on the target, at most")
    parser.add_argument("--max-params", help="constraint: parameters, at most (e.g. 30M)")
    parser.add_argument("--max-flops", help="constraint: FLOPs at the target resolution, at most (e.g. 4G)")


def _storage(args: argparse.Namespace) -> str:
    return args.storage or default_storage_url(Path(args.workdir))


def _constraints(args: argparse.Namespace):
    from ..core.constraints import Constraints, parse_count, parse_positive

    return Constraints(
        min_throughput=parse_positive(args.min_throughput, "--min-throughput") if args.min_throughput else None,
        max_latency_ms=parse_positive(args.max_latency_ms, "--max-latency-ms") if args.max_latency_ms else None,
        max_params=parse_count(args.max_params, "--max-params") if args.max_params else None,
        max_flops=parse_count(args.max_flops, "--max-flops") if args.max_flops else None,
    )


def _run(args: argparse.Namespace) -> int:
    from ..study.settings import RunConfig, SearchConfig, SearchSettings, default_study_name

    study = args.study if args.study is not None else default_study_name(Path(args.space).stem)
    what = SearchConfig(
        study=study, space=args.space, budget=parse_budget(args.budget),
        target=parse_target(args.target[0]) if args.target else None,
        more_targets=tuple(parse_target(t) for t in (args.target or [])[1:]), dataset=args.dataset, sampler=args.sampler,
        scheduler=args.scheduler, epochs=args.epochs, min_epochs=args.min_epochs, eta=args.eta, seed=args.seed,
        seeds=args.seeds, max_trials=args.max_trials, constraints=_constraints(args),
        measure_seconds=args.measure_seconds, throughput=args.throughput)
    where = RunConfig(
        Path(args.workdir), storage=args.storage, tracking_uri=args.tracking_uri, address=args.address,
        data_root=args.data_root, trials_per_device=args.trials_per_device, cpus_per_trial=args.cpus_per_trial,
        checkpoint_dir=args.checkpoint_dir, keep_checkpoints=args.keep_checkpoints, max_retries=args.max_retries,
        latency_table=args.latency_table)
    return _search(SearchSettings(what, where), resume=False)


def _resume(args: argparse.Namespace) -> int:
    from ..study.studies import load_settings

    extra = parse_budget(args.budget) if args.budget else None
    settings = _moved(load_settings(_study(args), _storage(args)), args)
    if extra is not None:
        settings = settings.with_budget(settings.search.budget.plus(extra))
    return _search(settings, resume=True)


def _search(settings: "SearchSettings", resume: bool) -> int:
    """Check every endpoint, folder and the data, then (only then) import the stack and search."""
    from ..study.preflight import preflight_search

    for line in preflight_search(settings):
        print(line, flush=True)
    from .logs import route_library_logs
    from ..engine.driver import Search
    from ..engine.signals import EXIT_CODES, quit_on_signals

    route_library_logs(settings.run.workdir)
    code = Search(settings).run(resume=resume)
    if code in EXIT_CODES.values():  # stopped by a signal: another one while Ray shuts down at exit ends it quietly
        quit_on_signals()
    return code


def _moved(settings: "SearchSettings", args: argparse.Namespace) -> "SearchSettings":
    """A stored study's settings, run from this command's work directory and stores."""
    return settings.with_run(settings.run.moved_to(args.workdir, args.storage, args.tracking_uri))


def _study(args: argparse.Namespace) -> str:
    if args.study is None:
        raise ValueError(f"{args.command} needs --study NAME")
    return check_study_name(args.study)


def _sync_mlflow(args: argparse.Namespace) -> int:
    from ..study.studies import load_settings
    from ..engine.tracking import send_kept

    settings = _moved(load_settings(_study(args), _storage(args)), args)
    print(send_kept(settings.run.tracking_uri, settings.run.workdir, args.study))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .views import status_text

    print(status_text(_study(args), _storage(args)))
    return 0


def _front(args: argparse.Namespace) -> int:
    from .views import write_front

    study = _study(args)
    csv_path = _new_file(args.csv, "--csv", (".csv",))
    plot_path = _new_file(args.plot, "--plot", PLOT_SUFFIXES)
    target = parse_target(args.target) if args.target else None
    print(write_front(study, _storage(args), csv_path, plot_path, target))
    return 0


def _new_file(path: str | None, flag: str, suffixes: tuple[str, ...]) -> str | None:
    """An output file's name and folder, checked before anything is written."""
    if path is None:
        return None
    file = Path(path)
    if file.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path!r} is invalid: expected a {'/'.join(suffixes)} file")
    if file.is_dir():
        raise ValueError(f"{flag} {path!r} is a folder: expected a file name")
    check_writable_folder(file.resolve().parent, f"{flag} {path!r}")  # missing, a file, or refusing writes
    return path


def _pick(args: argparse.Namespace) -> int:
    from ..study.preflight import check_tracking_endpoint
    from ..study.studies import RUN_ID_ATTR, open_study, settings_of

    name = _study(args)
    constraints = _constraints(args)
    target = parse_target(args.target) if args.target else None
    if args.top < 1:
        raise ValueError(f"--top {args.top} is invalid: expected a positive integer")
    folder = None
    if args.register and not args.export:
        raise ValueError(f"--register {args.register!r} needs --export: only an exported model is registered")
    if args.export:
        from ..deploy.export import check_new_folder, require_export_extra
        from ..deploy.registry import check_model_name

        require_export_extra()
        folder = check_new_folder(args.export, "--export")
        if args.register is not None:
            check_model_name(args.register)
    study = open_study(_storage(args), name)
    settings = _moved(settings_of(study), args)
    if folder is not None and study.user_attrs.get(RUN_ID_ATTR):
        check_tracking_endpoint(settings.run.tracking_uri)  # before anything is measured or written
    target = target or settings.search.only_target("pick from")
    _check_device(target)
    from ..engine.cache import CACHE_FILE, ThroughputCache
    from ..deploy.package import Deployment, export_deployment, log_deployment
    from ..deploy.pick import NoFeasibleModel, pick_model, pick_summary, pick_table

    try:
        pick = pick_model(study, settings, target, constraints, args.top,
                          ThroughputCache(settings.run.workdir / CACHE_FILE))
    except NoFeasibleModel as failure:
        print(failure.table)  # how close every candidate came; the error line follows on stderr
        raise
    print(pick_table(pick))
    print(pick_summary(pick))
    if folder is not None:
        deployment = Deployment(pick, settings, args.command_line, study.user_attrs.get(RUN_ID_ATTR),
                                settings.run.tracking_uri)
        export_deployment(deployment, folder)
        print(f"exported to {folder}: timm folder, {folder.name}/model.onnx (onnxruntime matches PyTorch to "
              f"{deployment.onnx.difference:.1e}; it accepts {deployment.onnx.sides}), {folder.name}/MODEL_CARD.md")
        if deployment.run_id:
            from ..deploy.registry import model_name_from

            registration = log_deployment(deployment, folder, args.register or model_name_from(study.study_name))
            print(f"logged to MLflow run {deployment.run_id} (deploy/{pick.chosen.arch_id}/) as model "
                  f"{registration.model_uri}, registered as {registration.name} version {registration.version}: "
                  f"{registration.uri}")
        else:
            print("not registered in MLflow: the study has no MLflow run (it was run without tracking)")
    return 0


def _check_device(target: "Target") -> None:
    """This machine can measure ``target`` in its runtime (litv2.runtimes.check_runtime: a GPU,
    onnxruntime and its provider), or one line that says where to pick instead."""
    from litv2.runtimes import check_runtime

    try:
        check_runtime(target)
    except ValueError as error:
        raise ValueError(f"{error}: pick on the deployment machine, or name a target this machine runs") from None


def _train(args: argparse.Namespace) -> int:
    from ..core.datasets import check_dataset
    check_writable_folder(Path(args.workdir), "--workdir")
    for line in check_dataset(args.dataset, args.data_root) if args.dataset else ():
        print(line, flush=True)
    from ..deploy.fulltrain import TrainRequest, train_model

    return train_model(TrainRequest(
        model=args.model, dataset=args.dataset, data_root=args.data_root, epochs=args.epochs,
        batch_size=args.batch_size, img_size=args.img_size, warmup_epochs=args.warmup_epochs,
        ema_decay=args.ema_decay, seed=args.seed, workers=args.workers, resume=args.resume,
        stop_after_epoch=args.stop_after_epoch, output=args.output, workdir=args.workdir,
        tracking_uri=args.tracking_uri, target=args.target, register=args.register, export_every=args.export_every,
        command=args.command_line,
    ))


def _evaluate(args: argparse.Namespace) -> int:
    from ..core.datasets import check_dataset

    for line in check_dataset(args.dataset, args.data_root):
        print(line, flush=True)
    from ..deploy.evaluation import evaluate_export

    result = evaluate_export(args.model, args.dataset, args.data_root, args.batch_size, args.workers)
    print(f"{args.model}: validation top-1 {result.top1:.2f} % on {result.dataset} ({result.images} images, "
          f"{result.img_size} px, split seed {result.seed})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = "python -m search " + shlex.join(sys.argv[1:] if argv is None else argv)
    handler = {"run": _run, "resume": _resume, "status": _status, "front": _front, "pick": _pick, "evaluate": _evaluate,
               "train": _train, "sync-mlflow": _sync_mlflow, **BENCH_HANDLERS}[args.command]
    try:
        return handler(args)
    except (ValueError, RuntimeError) as error:  # RuntimeError: SearchError, the services behind a search
        print(f"search: error: {error}", file=sys.stderr)
        return EXIT_USAGE if usage_error(error) else 1
    except KeyboardInterrupt:  # outside a search's loop, which stops its jobs and answers itself
        return interrupted("search")
