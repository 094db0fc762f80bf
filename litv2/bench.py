"""``python -m litv2.bench``: params, FLOPs, throughput and memory of every attention and model.

``table`` (the default command): single layers at the paper's benchmark setting (dim 768, 12
heads) on 14x14, 28x28 and 56x56 token maps, whole models (LITv1-S, LITv2-S) at 224x224. Beside
our HiLo it times :class:`NaiveHiLo`, the official matmul-softmax formulation with the same
weights, so the gain of the fused-attention path is measured, not assumed.
``measure``: one architecture on a deployment target, exactly as the search measures it.
``repeatability``: the same in N fresh processes, and how far their medians spread, on an idle
node or beside ``--load N`` busy processes. ``calibrate``: the reference network's speed on
this node, which every CPU figure is scaled to (made on first use; ``--again`` replaces it).
Every figure comes from :mod:`litv2.measure`'s protocol.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argparsing import StrictParser, interrupted
from .files import check_writable_folder
from .named import config_from
from .protocol import MIN_SAMPLES_FOR_CI, MeasureProtocol
from .target import PRECISIONS, parse_target

EXIT_USAGE = 2
DEVICES = ("cpu", "cuda")
COMMANDS = ("measure", "repeatability", "calibrate", "predict", "runtimes")  # beside "table", the default


def _add_protocol_options(parser: argparse.ArgumentParser) -> None:
    defaults = MeasureProtocol()
    parser.add_argument("--block-seconds", type=float, default=defaults.block_seconds,
                        help=f"length of one timed block (default {defaults.block_seconds})")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc as it is (default: pinned, see litv2.measure.pin_allocator)")


def build_parser() -> argparse.ArgumentParser:
    parser = StrictParser(prog="python -m litv2.bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", parser_class=StrictParser)
    table = commands.add_parser("table", help="every attention layer and model, round-robin (the default command)")
    table.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    table.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    table.add_argument("--repeats", type=int, default=7,
                       help="timed rounds (one block of every layer per round, interleaved); at least 6 (default 7)")
    table.add_argument("--model-batch", type=int, default=None,
                       help="batch for whole models (default 64 on cuda, 8 on cpu)")
    table.add_argument("--layer-batch", type=int, default=None,
                       help="batch for attention layers at every map size (default: 64 on cuda; on cpu 64, 16 and 4 "
                            "at 14x14, 28x28 and 56x56)")
    table.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 (autocast; default fp32)")
    table.add_argument("--quick", action="store_true", help="14x14 layers only, no whole models")
    table.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    _add_protocol_options(table)
    for name, text in (("measure", "one architecture, measured in this process as the search measures it"),
                       ("repeatability", "one architecture measured in N fresh processes: how far the medians spread"),
                       ("calibrate", "the reference network's speed on this node, which CPU figures are scaled to")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--target", default="cpu:bs1:224",
                             help="DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS][:RUNTIME] "
                                  "(runtime: eager, compile, ort, trt)")
        command.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                             help="channels_last memory format (default: on for cuda)")
        command.add_argument("--tf32", action="store_true", help="allow TF32 on cuda (default off)")
        command.add_argument("--max-seconds", type=float, default=MeasureProtocol().max_seconds,
                             help="time cap of warm-up + sampling (default %(default)s)")
        command.add_argument("--json", default=None, metavar="FILE",
                             help="write the record(s) as JSON ('-': stdout only)")
        _add_protocol_options(command)
    commands.choices["measure"].add_argument(
        "--config", action="append", default=None,
        help="model name or LITConfig JSON file (default litv2_s); repeat it to measure several in turn")
    commands.choices["measure"].add_argument(
        "--official", action="store_true",
        help="also time each network by the official LITv2 protocol (50 warm-up forwards, 30 timed, one batch; "
             "TF32 on), the protocol of the paper's figures")
    commands.choices["repeatability"].add_argument(
        "--config", default="litv2_s", help="model name or LITConfig JSON file (default litv2_s)")
    commands.choices["repeatability"].add_argument("--runs", type=int, default=5, help="fresh processes (default 5)")
    commands.choices["repeatability"].add_argument(
        "--load", type=int, default=0, metavar="N",
        help="keep N busy processes running beside the measurements, started after the calibration and stopped "
             "at the end (default 0: an idle node)")
    commands.choices["calibrate"].add_argument("--again", action="store_true",
                                               help="measure again and replace the stored calibration")
    predict = commands.add_parser("predict", help="throughput from the node's latency table of parts (litv2.latency)")
    predict.add_argument("--config", action="append", default=None,
                         help="model name or LITConfig JSON file (default litv2_s); repeat it for several")
    predict.add_argument("--target", default="cpu:bs1:224", help="DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS]")
    predict.add_argument("--lut", default=None, metavar="FILE", help="table file (default: the node's, in its cache)")
    predict.add_argument("--build", action="store_true",
                         help="first measure the parts the table lacks (and fit its overhead on these networks "
                              "if it has none)")
    predict.add_argument("--measure", action="store_true", help="also measure each network: the prediction's error")
    runtimes = commands.add_parser("runtimes", help="the same networks measured in several runtimes: speed-ups, "
                                                    "Kendall tau and the pairs whose order flips")
    runtimes.add_argument("--config", action="append", default=None,
                          help="model name or LITConfig JSON file (default litv2_s); repeat it for several")
    add_runtime_targets(runtimes)
    return parser


DEFAULT_RUNTIME_TARGETS = "cpu:bs1:224,cpu:bs1:224:ort,cpu:bs1:224:compile"


def add_runtime_targets(parser: argparse.ArgumentParser) -> None:
    """``--targets`` and ``--out`` of a runtime comparison (``litv2.bench runtimes``, ``space runtimes``)."""
    parser.add_argument("--targets", default=DEFAULT_RUNTIME_TARGETS,
                        help=f"comma-separated targets, the first the baseline (default {DEFAULT_RUNTIME_TARGETS})")
    parser.add_argument("--out", default=None, metavar="FILE", help="also write the report (Markdown) to FILE")
    defaults = MeasureProtocol()
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                        help="time cap of each measurement's warm-up + sampling (default %(default)s)")
    parser.add_argument("--block-seconds", type=float, default=defaults.block_seconds,
                        help=f"length of one timed block (default {defaults.block_seconds})")


def runtime_targets(args: argparse.Namespace) -> list:
    """The ``--targets`` of a runtime comparison, parsed and checked against this node (one-line
    ValueErrors before anything runs), and ``--out``'s folder and the protocol's times."""
    from .runtimes import check_runtime

    for flag, value in (("--max-seconds", args.max_seconds), ("--block-seconds", args.block_seconds)):
        if value <= 0:
            raise ValueError(f"{flag} {value} is invalid: expected a positive number of seconds")

    targets = [parse_target(text) for text in args.targets.split(",") if text.strip()]
    if len(targets) < 2 or len({t.key for t in targets}) < len(targets):
        raise ValueError(f"--targets {args.targets!r} is invalid: expected two or more different targets")
    for target in targets:
        check_runtime(target)
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        raise ValueError(f"--out {args.out!r} is invalid: its folder {str(Path(args.out).parent)!r} does not exist")
    return targets


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument, before the benchmark imports torch or runs anything (a bad ``--json``
    folder used to be found after the whole table had run); one-line ValueErrors."""
    if args.command == "runtimes":
        for text in args.config or []:
            config_from(text)
        return
    if args.command == "predict":
        parse_target(args.target)
        for text in args.config or []:
            config_from(text)
        if args.lut is not None and not Path(args.lut).resolve().parent.is_dir():
            raise ValueError(f"--lut {args.lut!r} is invalid: its folder {str(Path(args.lut).parent)!r} does not exist")
        return
    if args.block_seconds <= 0:
        raise ValueError(f"--block-seconds {args.block_seconds} is invalid: expected a positive number of seconds")
    if args.json not in (None, "-"):
        if Path(args.json).is_dir():
            raise ValueError(f"--json {args.json!r} is a folder: expected a file name")
        check_writable_folder(Path(args.json).resolve().parent, f"--json {args.json!r}")
    if args.command == "table":
        if args.repeats < MIN_SAMPLES_FOR_CI:
            raise ValueError(f"--repeats {args.repeats} is invalid: expected at least {MIN_SAMPLES_FOR_CI} "
                             f"(a 95% interval of the median needs {MIN_SAMPLES_FOR_CI} rounds)")
        for flag, value in (("--threads", args.threads), ("--model-batch", args.model_batch),
                            ("--layer-batch", args.layer_batch)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} {value} is invalid: expected a positive integer")
        if args.precision not in PRECISIONS:
            raise ValueError(f"--precision {args.precision!r} is unknown; expected one of {', '.join(PRECISIONS)}")
        if args.device not in (None, *DEVICES):
            raise ValueError(f"--device {args.device!r} is unknown; expected one of {', '.join(DEVICES)}")
        return
    parse_target(args.target)
    if args.max_seconds <= 0:
        raise ValueError(f"--max-seconds {args.max_seconds} is invalid: expected a positive number of seconds")
    configs = {"measure": lambda: args.config or [], "repeatability": lambda: [args.config]}
    for text in configs.get(args.command, list)():
        config_from(text)
    if args.command == "repeatability" and args.runs < 2:
        raise ValueError(f"--runs {args.runs} is invalid: expected at least 2")
    if args.command == "repeatability" and args.load < 0:
        raise ValueError(f"--load {args.load} is invalid: expected a number of busy processes >= 0")
    if args.command == "calibrate" and not args.target.startswith("cpu:"):
        raise ValueError(f"--target {args.target!r} is invalid for calibrate: only CPU figures are scaled to the "
                         f"reference (CUDA events time the GPU alone); expected a cpu:... target")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("table", *COMMANDS, "-h", "--help"):
        argv.insert(0, "table")  # the table is the default command, as before subcommands existed
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        if args.command == "runtimes":
            return run_runtimes(args)
        if args.command != "table":
            from .runtimes import check_runtime

            check_runtime(parse_target(args.target))  # this node can run it (a GPU, onnxruntime and its provider)
        from . import benchmarks  # torch and timm: only once the arguments are known to be good

        return {"table": benchmarks.table, "measure": benchmarks.measure, "repeatability": benchmarks.repeatability,
                "calibrate": benchmarks.calibrate, "predict": benchmarks.predict}[args.command](args)
    except ValueError as error:
        print(f"litv2.bench: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return interrupted("litv2.bench")


def runtime_protocol(args: argparse.Namespace) -> MeasureProtocol:
    """The measurement protocol of a runtime comparison: the default with ``--max-seconds`` and ``--block-seconds``."""
    return MeasureProtocol(max_seconds=args.max_seconds, block_seconds=args.block_seconds)


def run_runtimes(args: argparse.Namespace) -> int:
    """``runtimes``: the named networks measured on every target, the report printed."""
    from .runtime_order import compare_runtimes, write_report

    targets = runtime_targets(args)
    texts = args.config or ["litv2_s"]
    comparison = compare_runtimes({text: config_from(text) for text in texts}, targets, runtime_protocol(args))
    write_report(comparison, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
