"""``python -m search.bench.gpu_acceptance OUT [--dry-run]``: every CUDA path of the project, run
for real in one command, with a verdict a step and every figure in ``OUT/acceptance.json`` and
``OUT/acceptance.md``.

GPU machines come to this project now and then, for minutes at a time, so what must run on
one is prepared here and run there once: the CUDA tests of the suite, the layer and model
benchmarks in fp16 and bf16 (beside the official protocol, the paper's), a short search that
trains two trials on one GPU and measures on it, a pick with its ONNX export checked in
onnxruntime (the CUDA provider where it is installed), and one epoch of full training under
``torchrun`` (DDP, AMP). Each step is a child process with its own time cap, so one that
hangs or crashes costs its cap and no more, and the steps after it still run.

``--dry-run`` (and any machine without CUDA) runs the same steps on the CPU at the smallest
sizes: it checks the plumbing, and it is a test of the suite.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from litv2.files import atomic_write_text

Figures = Callable[[Path], dict]
STUDY = "acceptance"
PASSED, FAILED, TIMED_OUT = "passed", "FAILED", "TIMED OUT"


@dataclass(frozen=True)
class Sizes:
    """What the steps run at: a GPU's figures, or the CPU's smallest plumbing check."""

    device: str
    precisions: tuple[str, ...]  # the layer table's
    models: tuple[str, ...]
    model_target: str
    official_target: str  # the paper's condition: fp32 (TF32 on, as the official code ran)
    layer_flags: tuple[str, ...]
    model_seconds: str  # the time cap of one whole-model measurement
    search_target: str
    search_flags: tuple[str, ...]
    train_flags: tuple[str, ...]
    cap_scale: float  # the CPU is slower at everything the caps were sized for


GPU = Sizes(
    device="cuda", precisions=("fp16", "bf16"), models=("litv2_s", "litv2_m", "litv2_b"),
    model_target="cuda:bs64:224:fp16", official_target="cuda:bs64:224:fp32",
    layer_flags=("--repeats", "6", "--block-seconds", "0.05"), model_seconds="4",
    search_target="cuda:bs64:224:fp16",
    search_flags=("--space", "tiny", "--dataset", "cluttered-digits", "--budget", "0.02gpu-h", "--epochs", "3",
                  "--scheduler", "mo-asha", "--trials-per-device", "2", "--sampler", "random"),
    train_flags=("--dataset", "cluttered-digits", "--epochs", "1", "--batch-size", "128"),
    cap_scale=1.0,
)
CPU = Sizes(
    device="cpu", precisions=("bf16",), models=("litv2_s",), model_target="cpu:bs1:64", official_target="cpu:bs1:64",
    layer_flags=("--repeats", "6", "--block-seconds", "0.02", "--quick", "--layer-batch", "2", "--threads", "1"),
    model_seconds="1",
    search_target="cpu:bs1:64",
    search_flags=("--space", "tiny", "--dataset", "digits", "--budget", "120cpu-s", "--epochs", "1",
                  "--scheduler", "full", "--sampler", "random", "--max-trials", "2", "--measure-seconds", "1"),
    train_flags=("--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--img-size", "32"),
    cap_scale=2.0,
)


@dataclass
class Step:
    """A child process or two, what they prove, their time cap, and how their figures are read back."""

    name: str
    proves: str
    cap_seconds: float
    commands: list[list[str]]
    figures: Figures = lambda out: {}


@dataclass
class Verdict:
    """One line of the report: passed, FAILED or TIMED OUT, with the cause or what was proved."""

    step: str
    verdict: str
    seconds: float
    detail: str
    figures: dict = field(default_factory=dict)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _log_lines(out: Path, step: str) -> list[str]:
    path = out / f"{step}.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def _pytest_figures(out: Path) -> dict:
    counts = {}
    for line in _log_lines(out, "cuda-tests")[-3:]:
        counts.update({word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", line)})
    return counts


def _table_figures(precision: str) -> Figures:
    def read(out: Path) -> dict:
        data = json.loads((out / f"layers-{precision}.json").read_text())
        rows = [dict(name=r["name"], input=r["input"], img_s=round(r["img_s"], 1), spread=round(r["spread"], 1),
                     peak_mb=_rounded(r["peak_mb"])) for r in data["rows"]]
        ratios = [line for line in _log_lines(out, f"layers-{precision}") if "HiLo / naive HiLo" in line]
        return dict(device=data["device"], rows=rows, speedups=ratios, versions=data["versions"])
    return read


def _models_figures(out: Path) -> dict:
    rows = []
    for kind in ("models", "models-fp32"):
        if not (out / f"{kind}.json").exists():  # the CPU's one target serves both
            continue
        for record in json.loads((out / f"{kind}.json").read_text()):
            rows.append(dict(model=record["config"], target=record["target"], ours_img_s=round(record["median"], 1),
                             ours_ci=[round(record["ci_low"], 1), round(record["ci_high"], 1)],
                             official_img_s=round(record["official"]["img_s"], 1),
                             peak_memory_mb=_rounded(record["peak_memory_mb"]), clock=record["clock"]))
    return dict(rows=rows)


def _search_figures(out: Path) -> dict:
    import optuna

    from ..core.record import TrialRecord
    from ..study.front import pareto_front
    from ..study.storage import default_storage_url
    from ..study.studies import budget_used, settings_of

    study = optuna.load_study(study_name=STUDY, storage=default_storage_url(out / "work"))
    records = [TrialRecord.of(t) for t in study.trials]
    statuses = [r.status or ("not trained" if r.not_trained else "unfinished") for r in records]
    if "complete" not in statuses:
        raise ValueError(f"no trial was trained to the end (trials by status: {statuses})")
    costs: dict[str, float] = {}
    for record in records:
        for kind, seconds in record.costs.items():
            costs[kind] = round(costs.get(kind, 0.0) + seconds, 1)
    return dict(trials=len(records), by_status={s: statuses.count(s) for s in sorted(set(statuses))},
                device_seconds=round(budget_used(study), 1), budget=str(settings_of(study).search.budget),
                device_seconds_by_job=costs,
                front=[dict(trial=p.trial, top1=round(p.accuracy, 2), img_s=round(p.throughput, 1), summary=p.summary)
                       for p in pareto_front(study)])


def _pick_figures(out: Path) -> dict:
    summary = [line for line in _log_lines(out, "pick") if line.startswith("picked trial")]
    check = json.loads((out / "onnx-check.json").read_text())
    return dict(picked=summary[0] if summary else None, **check)


def _train_figures(out: Path) -> dict:
    lines = _log_lines(out, "ddp-train")
    started = next((line for line in lines if line.startswith("training ")), "")
    epochs = [found[0] for line in lines if (found := re.search(r"epoch \d+/\d+: train loss .*", line))]
    setup = re.search(r"(\d+) process\(es\) x batch (\d+), lr \S+, (\w+) on (\S+);", started)
    return dict(processes=int(setup[1]), batch=int(setup[2]), precision=setup[3], device=setup[4],
                epochs=epochs) if setup else dict(epochs=epochs)


def plan(out: Path, sizes: Sizes) -> list[Step]:
    """The steps in the order they run; later ones use what earlier ones wrote (the study, the pick)."""
    work, pick = out / "work", out / "pick"
    steps = [Step("cuda-tests", "the suite's CUDA tests (-m cuda; they skip where no GPU is)", 150,
                  [_python("-m", "pytest", "-q", "-n", "0", "-m", "cuda", "-p", "no:cacheprovider", "tests")],
                  _pytest_figures)]
    for precision in sizes.precisions:
        steps.append(Step(f"layers-{precision}", f"attention layers and models under {precision} autocast", 120, [
            _python("-m", "litv2.bench", "table", "--device", sizes.device, "--precision", precision,
                    *sizes.layer_flags, "--json", str(out / f"layers-{precision}.json"))], _table_figures(precision)))
    configs = [flag for name in sizes.models for flag in ("--config", name)]
    targets = [(sizes.model_target, "models")]
    if sizes.official_target != sizes.model_target:  # the CPU's one target serves both
        targets.append((sizes.official_target, "models-fp32"))
    steps += [
        Step("models", "whole models by our protocol and by the official one (the paper's)", 150, [
            _python("-m", "litv2.bench", "measure", *configs, "--target", target, "--official",
                    "--max-seconds", sizes.model_seconds, "--json", str(out / f"{name}.json"))
            for target, name in targets], _models_figures),
        Step("search", "a short search: MO-ASHA, trials sharing the device, measured on it", 240, [
            _python("-m", "search", "run", "--study", STUDY, *sizes.search_flags, "--target", sizes.search_target,
                    "--workdir", str(work))], _search_figures),
        Step("pick", "the front's best pick, exported, and its ONNX run in onnxruntime", 120, [
            _python("-m", "search", "pick", "--study", STUDY, "--workdir", str(work), "--export", str(pick)),
            _python("-m", "search.bench.gpu_acceptance", "--check-onnx", str(pick), str(out / "onnx-check.json"))],
            _pick_figures),
        Step("ddp-train", "one epoch of full training under torchrun (DDP; AMP on a GPU)", 150, [
            _python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "search", "train",
                    "--model", str(pick), *sizes.train_flags, "--output", str(out / "trained"),
                    "--workdir", str(work))], _train_figures),
    ]
    return steps


def run_step(step: Step, out: Path, cap_scale: float = 1.0) -> Verdict:
    """The step's commands in turn, their output in ``OUT/STEP.log``, within its time cap."""
    began = time.perf_counter()
    deadline = began + step.cap_seconds * cap_scale
    env = os.environ | {"PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(out / f"{step.name}.log", "w") as log:
        for command in step.commands:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            try:
                finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          timeout=max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                return Verdict(step.name, TIMED_OUT, time.perf_counter() - began,
                               f"over its cap of {step.cap_seconds * cap_scale:.0f} s in: {' '.join(command[1:4])} ...")
            if finished.returncode != 0:
                said = [line for line in _log_lines(out, step.name) if re.search(r"\w", line)][-1:] or [""]
                return Verdict(step.name, FAILED, time.perf_counter() - began,
                               f"exit {finished.returncode} from {' '.join(command[1:4])} ...: {said[0][:200]}")
    try:
        figures = step.figures(out)
    except Exception as error:  # noqa: BLE001 - a verdict, not a crash: the other steps still run
        return Verdict(step.name, FAILED, time.perf_counter() - began, f"its figures could not be read: {error!r}")
    return Verdict(step.name, PASSED, time.perf_counter() - began, step.proves, figures)


def check_onnx(folder: Path, into: Path) -> dict:
    """The exported ONNX against PyTorch in onnxruntime, on the CUDA provider where onnxruntime has it."""
    import onnxruntime
    import timm

    from ..deploy.export import ONNX_FILE, onnx_max_difference, read_export

    export = read_export(folder)
    provider = ("CUDAExecutionProvider" if "CUDAExecutionProvider" in onnxruntime.get_available_providers()
                else "CPUExecutionProvider")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    difference = onnx_max_difference(model, folder / ONNX_FILE, export.img_size, provider=provider)
    result = dict(provider=provider, onnxruntime=onnxruntime.__version__, max_abs_difference=difference,
                  providers_available=onnxruntime.get_available_providers())
    atomic_write_text(into, json.dumps(result, indent=2))
    return result


def machine() -> dict:
    """The card, driver and torch build the figures came from."""
    import torch

    facts = dict(torch=torch.__version__, cuda=torch.version.cuda, python=sys.version.split()[0])
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
        try:
            facts["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                             capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            facts["driver"] = None
    return facts


def markdown(verdicts: list[Verdict], facts: dict, sizes: Sizes) -> str:
    """The verdicts, then each step's figures as tables."""
    lines = [f"# GPU acceptance on {facts.get('gpu', 'the CPU (dry run)')}", "",
             f"torch {facts['torch']} (CUDA {facts['cuda']}), driver {facts.get('driver', '-')}, "
             f"Python {facts['python']}", "", "| step | verdict | seconds | what it proves / why it failed |",
             "|---|---|---|---|"]
    lines += [f"| {v.step} | {v.verdict} | {v.seconds:.0f} | {v.detail} |" for v in verdicts]
    by_step = {v.step: v.figures for v in verdicts if v.figures}
    for precision in sizes.precisions:
        table = by_step.get(f"layers-{precision}")
        if table:
            lines += ["", f"## Layers and models, {precision} (img/s, median +- half 95% interval)", "",
                      "| layer / model | input | img/s | peak MB |", "|---|---|---|---|"]
            lines += [f"| {r['name']} | {r['input']} | {r['img_s']} +- {r['spread']} | {r['peak_mb']} |"
                      for r in table["rows"]]
            lines += ["", *table["speedups"]]
    if "models" in by_step:
        lines += ["", "## Whole models (img/s)", "", "| model | target | ours [95% interval] | official protocol | "
                  "peak MB (ours) |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['target']} | {r['ours_img_s']} {r['ours_ci']} | {r['official_img_s']} | "
                  f"{r['peak_memory_mb']} |" for r in by_step["models"]["rows"]]
    for name in ("search", "pick", "ddp-train", "cuda-tests"):
        if name in by_step:
            lines += ["", f"## {name}", "", "```", json.dumps(by_step[name], indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.bench.gpu_acceptance", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="new or empty folder for the logs, acceptance.json and acceptance.md")
    parser.add_argument("--dry-run", action="store_true", help="the CPU at the smallest sizes (plumbing only)")
    parser.add_argument("--only", action="append", default=None, metavar="STEP", help="run only this step (repeat)")
    parser.add_argument("--check-onnx", nargs=2, metavar=("EXPORT", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_onnx:
        print(check_onnx(Path(args.check_onnx[0]), Path(args.check_onnx[1])))
        return 0
    if args.out is None:
        parser.error("the folder OUT is required")
    import torch

    out = Path(args.out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"gpu_acceptance: error: OUT {args.out!r} is invalid: expected a new or empty folder", file=sys.stderr)
        return 2
    sizes = GPU if torch.cuda.is_available() and not args.dry_run else CPU
    steps = plan(out, sizes)
    names = [step.name for step in steps]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        print(f"gpu_acceptance: error: --only {unknown[0]!r} is unknown; expected one of {', '.join(names)}",
              file=sys.stderr)
        return 2
    (out / "work").mkdir(parents=True, exist_ok=True)
    facts = machine()
    print(f"gpu acceptance on {facts.get('gpu', 'the CPU (dry run)')}: {len(steps)} steps into {out}", flush=True)
    verdicts = []
    for step in steps:
        if args.only and step.name not in args.only:
            continue
        verdicts.append(run_step(step, out, sizes.cap_scale))
        v = verdicts[-1]
        print(f"{v.step:<12} {v.verdict:<9} {v.seconds:6.0f} s  {v.detail}", flush=True)
        atomic_write_text(out / "acceptance.json", json.dumps(dict(machine=facts, steps=[asdict(v) for v in verdicts]),
                                                              indent=2))
    atomic_write_text(out / "acceptance.md", markdown(verdicts, facts, sizes))
    failed = [v.step for v in verdicts if v.verdict != PASSED]
    print(f"{len(verdicts) - len(failed)} of {len(verdicts)} steps passed" + (f"; not: {', '.join(failed)}" if failed
                                                                             else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
