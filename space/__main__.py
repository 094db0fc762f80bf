"""Command line: ``python -m space show NAME|FILE``, ``validate FILE``, ``lut build|check``
and ``runtimes``.

``show`` prints a space's dimensions, its size and a few architectures with their
full-size parameters and FLOPs (FLOP counting builds and runs each model once, so only a
few are shown). ``lut`` builds and checks a space's latency table (:mod:`space.lut`),
``runtimes`` measures draws of a space in several runtimes (:mod:`litv2.runtime_order`):
commands about a space live here because ``litv2`` does not know spaces. An invalid space
or argument is reported on one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
import warnings
from typing import TYPE_CHECKING

from litv2.argparsing import StrictParser, interrupted
from litv2.bench import add_runtime_targets, runtime_protocol, runtime_targets

from .errors import SpaceError
from .identity import arch_id, summary
from .registry import get_space

if TYPE_CHECKING:
    from litv2 import LITConfig

    from .search_space import SearchSpace

EXIT_INVALID = 2
MAX_SEED = 2**32 - 1  # numpy's seed range (the random draws)
ENUMERATE_UP_TO = 5000  # a finite space this small has its latency table built for every architecture


def main(argv: list[str] | None = None) -> int:
    parser = StrictParser(prog="python -m space", description="Inspect and check LITv2 search spaces.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=StrictParser)
    show = commands.add_parser("show", help="dimensions, size and a few architectures of a space")
    show.add_argument("space", help="a named space or a .yaml/.yml/.json file")
    show.add_argument("-n", "--samples", type=int, default=3, help="architectures to show (default 3)")
    show.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    validate = commands.add_parser("validate", help="check a space file; exit 2 if it is invalid")
    validate.add_argument("space", help="a .yaml/.yml/.json file (or a named space)")
    lut = commands.add_parser("lut", help="a latency table of the space's parts (litv2.latency), and its accuracy")
    lut_commands = lut.add_subparsers(dest="lut_command", required=True, parser_class=StrictParser)
    for name, text in (("build", "measure every part of the space's architectures on a target (resumable)"),
                       ("check", "predict and measure N random architectures: errors and a scatter plot")):
        command = lut_commands.add_parser(name, help=text)
        command.add_argument("--space", required=True, help="a named space or a .yaml/.yml/.json file")
        command.add_argument("--target", default="cpu:bs1:224", help="DEVICE:bsBATCH:RES[:PRECISION][:tTHREADS]")
        command.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
        if name == "build":
            command.add_argument("--lut", type=Path, default=None, help="table file (default: the node's, in its cache)")
        else:
            command.add_argument("--lut", type=Path, action="append", default=None,
                                 help="table file (default: the node's, in its cache); again to compare tables on "
                                      "the same measurements")
    lut_commands.choices["build"].add_argument(
        "--samples", type=int, default=2000,
        help=f"random architectures whose parts the table covers, for a space larger than this and than "
             f"{ENUMERATE_UP_TO} (default 2000: drawing is cheap, and only parts are measured)")
    lut_commands.choices["build"].add_argument(
        "--every-part", action="store_true",
        help="measure every distinct part instead of interpolating along hidden width and Lo-Fi heads")
    lut_commands.choices["check"].add_argument("-n", "--n", type=int, default=30, help="architectures (default 30)")
    lut_commands.choices["check"].add_argument("--plot", type=Path, default=None, help="scatter plot (PNG)")
    runtimes = commands.add_parser("runtimes", help="N random architectures measured in several runtimes: speed-ups, "
                                                    "Kendall tau and the pairs whose order flips")
    runtimes.add_argument("--space", required=True, help="a named space or a .yaml/.yml/.json file")
    runtimes.add_argument("-n", "--n", type=int, default=20, help="architectures (default 20)")
    runtimes.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    add_runtime_targets(runtimes)
    args = parser.parse_args(argv)
    try:
        if args.command == "show" and args.samples < 0:
            raise SpaceError(None, f"-n {args.samples} is invalid: expected 0 or more architectures")
        if args.command in ("show", "lut", "runtimes") and not 0 <= args.seed <= MAX_SEED:
            raise SpaceError(None, f"--seed {args.seed} is invalid: expected an integer from 0 to {MAX_SEED}")
        space = get_space(args.space)
        if args.command == "lut":
            return _lut(args, space)
        if args.command == "runtimes":
            return _runtimes(args, space)
        if args.command == "validate":
            print(f"{args.space}: ok (space {space.name!r}, size {_size(space)})")
        else:
            show_space(space, args.samples, args.seed)
    except (SpaceError, ValueError) as err:
        print(f"space: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return interrupted("space")
    return 0


def _lut(args: argparse.Namespace, space: "SearchSpace") -> int:
    """``lut build`` / ``lut check``: every argument checked before anything is measured."""
    from litv2.target import parse_target

    target = parse_target(args.target)
    count = args.samples if args.lut_command == "build" else args.n
    if count < 1:
        raise ValueError(f"{'--samples' if args.lut_command == 'build' else '-n'} {count} is invalid: expected a "
                         "positive number of architectures")
    for path in args.lut if args.lut_command == "check" and args.lut else [args.lut]:
        if path is not None and not path.resolve().parent.is_dir():
            raise ValueError(f"--lut {str(path)!r} is invalid: its folder does not exist")
    if args.lut_command == "check" and args.plot is not None and not args.plot.resolve().parent.is_dir():
        raise ValueError(f"--plot {str(args.plot)!r} is invalid: its folder does not exist")
    from . import lut

    if args.lut_command == "build":
        configs = space.enumerate() if space.size() <= max(count, ENUMERATE_UP_TO) else examples(space, count, args.seed)
        lut.build(space, target, args.lut, configs, interpolate=not args.every_part)
        return 0
    from litv2.latency import open_table
    from litv2.measure import device_fingerprint

    fingerprint = device_fingerprint(target.device)
    tables = dict(open_table(target, fingerprint, path) for path in args.lut or [None])
    lut.check(space, target, {str(path): table for path, table in tables.items()}, examples(space, count, args.seed),
              args.plot)
    return 0


def _runtimes(args: argparse.Namespace, space: "SearchSpace") -> int:
    """``runtimes``: ``-n`` draws of the space measured on every target (litv2.runtime_order)."""
    if args.n < 2:
        raise ValueError(f"-n {args.n} is invalid: expected 2 or more architectures to order")
    targets = runtime_targets(args)
    from litv2.runtime_order import compare_runtimes, write_report

    configs = {arch_id(config): config for config in examples(space, args.n, args.seed)}
    print(f"{len(configs)} architectures of {space.name!r} (seed {args.seed})", flush=True)
    write_report(compare_runtimes(configs, targets, runtime_protocol(args)), args.out)
    return 0


def show_space(space: "SearchSpace", samples: int = 3, seed: int = 0) -> None:
    """Print the dimensions, the size and ``samples`` architectures measured at full size."""
    # fvcore (imported by litv2's FLOP counter) calls torch.jit.script at import, which recent
    # torch deprecates; keep that notice out of the table.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import torch
    from litv2 import build_zeroed_model, count_flops, count_params

    kind = "fixed points" if space.fixed_points else "search"
    print(f"space {space.name!r} ({kind}): {space.description}")
    print(f"  base {space.base_name}; deployed at {space.deploy_img_size} px; "
          f"proxy {space.proxy.img_size} px at width x{space.proxy.width_mult:g}")
    print("dimensions (Optuna parameter, values, drawn when):")
    for name, dim, when in space.dimensions():
        print(f"  {name:<16}{str(dim):<40}{when}".rstrip())
    print(f"size: {_size(space)}" + (" (a dimension is continuous)" if space.size() == math.inf else " architectures"))
    configs = examples(space, samples, seed)
    img = space.deploy_img_size
    print(f"{len(configs)} architectures at full size ({img} px):")
    print(f"  {'id':<14}{'params':>8}{'GFLOPs':>8}  summary")
    # One batch-1 forward per model: one thread is as fast, while several OpenMP threads on a
    # small shared machine can be ten times slower waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for config in configs:
            model = build_zeroed_model(config, img_size=img)  # params and FLOPs need shapes only
            flops = count_flops(model, (3, img, img))
            print(f"  {arch_id(config):<14}{count_params(model) / 1e6:>7.2f}M{flops / 1e9:>8.2f}  {summary(config)}")
    finally:
        torch.set_num_threads(threads)


def examples(space: "SearchSpace", count: int, seed: int = 0) -> list["LITConfig"]:
    """The first ``count`` points of a fixed-point space, else ``count`` distinct random draws."""
    import optuna

    if space.fixed_points:
        return space.enumerate()[:count]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found: dict[str, LITConfig] = {}
    for _ in range(50 * count):
        if len(found) == count:
            break
        config = space.sample(study.ask())
        found.setdefault(arch_id(config), config)
    return list(found.values())


def _size(space: "SearchSpace") -> str:
    size = space.size()
    return "infinite" if size == math.inf else str(size)


if __name__ == "__main__":
    sys.exit(main())
