"""The end of ``search train``: the trained network shipped as ``search pick --export`` ships
an architecture, with a card of its training.

An export folder holds timm's ``config.json`` + ``model.safetensors`` (the trained weights,
``pretrained=True`` loads them), ``model.onnx`` checked in onnxruntime against PyTorch, a plot
of the validation curve and a ``MODEL_CARD.md``: the recipe, the data set, the epochs, the
final and best validation top-1 with the curve, the throughput re-measured on the target (the
trained network itself, at the training resolution) and the trial it came from. The final
export is logged to the training's MLflow run and registered under the alias ``trained``
(:mod:`search.deploy.registry`); ``--export-every N`` leaves an export every N epochs too.

The training module hands over plain values (:class:`TrainingReport`), so this module needs
nothing of the training loop.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from litv2 import LITConfig
from litv2.flops import count_params
from litv2.measure import torch_threads
from litv2.target import Target

from .export import CARD_FILE, LOADING, ONNX_FILE, OnnxCheck, library_versions, write_atomically, write_model_files
from ..core.repeats import latency_text, throughput_text

CURVE_FILE = "training-curve.png"


@dataclass
class TrainingReport:
    """What a trained export's card and config say of its training."""

    name: str
    config: LITConfig
    dataset: str
    num_classes: int
    train_images: int
    val_images: int
    img_size: int
    recipe: dict[str, Any]
    schedule_epochs: int
    world_size: int
    precision: str
    device: str
    history: list[dict[str, float]]
    source: dict[str, Any] = field(default_factory=dict)  # the pick export it started from, if any
    run_id: str | None = None
    tracking_uri: str = ""
    command: str = ""
    metric: str = "val_top1"  # val_top1_ema for the EMA weights

    @property
    def ema(self) -> bool:
        """Whether these are the EMA weights (the metric says which weights were evaluated)."""
        return self.metric != "val_top1"

    @property
    def epoch(self) -> int:
        return int(self.history[-1]["epoch"])

    @property
    def final_top1(self) -> float:
        return float(self.history[-1][self.metric])

    @property
    def best(self) -> dict[str, float]:
        return max(self.history, key=lambda record: record[self.metric])

    def weights(self) -> str:
        ema = " (the exponential moving average of the weights)" if self.ema else ""
        return (f"trained{ema}: {self.dataset}, epoch {self.epoch} of {self.schedule_epochs}, validation top-1 "
                f"{self.final_top1:.2f} %")

    def provenance(self) -> dict[str, Any]:
        """The ``litv2_search`` section of ``config.json``: the export it came from, then this training."""
        return dict(self.source, weights=self.weights(), loading=LOADING, trained_on=self.dataset, epochs=self.epoch,
                    schedule_epochs=self.schedule_epochs, val_top1=self.final_top1,
                    best_val_top1=float(self.best[self.metric]), best_epoch=int(self.best["epoch"]),
                    seed=self.recipe.get("seed"), train_mlflow_run_id=self.run_id, command=self.command, ema=self.ema)


@dataclass
class Measurement:
    """The trained network's throughput on the target, or why this machine could not measure it."""

    target: Target | None
    figure: dict[str, Any] | None = None
    why_not: str = ""


def measure_trained(model: nn.Module, target: Target) -> Measurement:
    """Measure ``model`` (any device; a CPU copy is measured) on ``target``, with the project's
    protocol and clock. A target this machine cannot run, or a measurement that fails (out of
    memory beside the training, a runtime that refuses the graph), is reported on the card,
    not raised: the training is done and its export is worth keeping."""
    from litv2.measure import measure_target
    from litv2.runtimes import check_runtime

    try:
        check_runtime(target)
        with torch_threads():
            figure = measure_target(_cpu_copy(model), target)
    except Exception as error:  # noqa: BLE001 - whatever failed, the card says it and the export goes on
        return Measurement(target, why_not=f"not measured here: {type(error).__name__}: {str(error)[:300]}")
    return Measurement(target, figure.to_dict())


def _cpu_copy(model: nn.Module) -> nn.Module:
    """An fp32, eval-mode copy of ``model`` on the CPU (the training's model stays where it is,
    in its mode: a copy of the weights on the device for a moment, no more)."""
    return copy.deepcopy(model).cpu().float().eval()


def target_for(key: str, img_size: int) -> Target:
    """The target a trained network is measured on: ``key`` at the training resolution."""
    from litv2.target import parse_target

    return replace(parse_target(key), img_size=img_size)


def export_trained(folder: Path, model: nn.Module, report: TrainingReport, measurement: Measurement) -> OnnxCheck:
    """Write ``folder`` atomically (timm files, ONNX, curve, card); returns the ONNX graph's check."""
    model = _cpu_copy(model)
    checks = []

    def fill(tmp: Path) -> None:
        checks.append(write_model_files(tmp, model, report.config, report.img_size, report.provenance()))
        plot_curve(report, tmp / CURVE_FILE)
        (tmp / CARD_FILE).write_text(render_trained_card(report, measurement, checks[0], count_params(model)))

    write_atomically(folder, fill)
    return checks[0]


def plot_curve(report: TrainingReport, path: Path) -> None:
    """Validation top-1 (and training loss, right axis) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in report.history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, [record[report.metric] for record in report.history], "o-", color="C0", label="validation top-1")
    best = report.best
    ax.annotate(f"best {best[report.metric]:.2f} %", (best["epoch"], best[report.metric]), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 %", color="C0")
    loss = ax.twinx()
    loss.plot(epochs, [record["train_loss"] for record in report.history], "s--", color="C1", label="training loss")
    loss.set_ylabel("training loss", color="C1")
    ax.set_title(f"{report.name} on {report.dataset} ({report.img_size} px)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _figure_lines(measurement: Measurement) -> list[str]:
    if measurement.target is None or measurement.figure is None:
        return [measurement.why_not or "not measured"]
    figure, batch = measurement.figure, measurement.target.batch_size
    record = dict(throughput=figure["median"], measurement=figure)  # a result record, as the search keeps it
    return [
        "| figure | median [95 % interval] |",
        "|---|---|",
        f"| throughput, img/s | {throughput_text(record)} |",
        f"| latency, ms per batch of {batch} | {latency_text(record, batch)} |",
        "",
        f"The trained network itself, measured by this training when it ended ({figure.get('n_samples')} samples, "
        f"{figure.get('clock')} clock, on {figure.get('device_name')}).",
    ]


def _came_from(report: TrainingReport) -> str:
    """The export it was trained from: the search's trial and figures where it was picked."""
    source = report.source
    if "study" not in source:
        return f"`{source.get('model', report.name)}`"
    trial = " ".join(part for part in (f"trial {source['trial']}" if "trial" in source else "",
                                       f"({source['arch_id']})" if "arch_id" in source else "",
                                       f"of study `{source['study']}`") if part)
    parts = [trial]
    if source.get("proxy_top1") is not None:
        parts.append(f"proxy top-1 {source['proxy_top1']:.2f} % on `{source.get('dataset')}`")
    if source.get("target"):
        parts.append(f"picked for `{source['target']}`")
    return ", ".join(parts)


def render_trained_card(report: TrainingReport, measurement: Measurement, onnx: OnnxCheck, params: int) -> str:
    """The Markdown card of a trained export."""
    best = report.best
    target = measurement.target
    came_from = _came_from(report)
    lines = [
        f"# {report.name}: a LIT-family model trained on `{report.dataset}`",
        "",
        f"> **Trained weights{' (EMA)' if report.ema else ''}**: epoch {report.epoch} of "
        f"{report.schedule_epochs} on `{report.dataset}` "
        f"({report.num_classes} classes), validation top-1 **{report.final_top1:.2f} %** (best "
        f"{best[report.metric]:.2f} % at epoch {int(best['epoch'])}). `pretrained=True` loads these weights.",
        ">",
        f"> **Loading:** {LOADING}.",
        "",
        "## Training",
        "",
        f"- from: {came_from}",
        f"- data: `{report.dataset}`, {report.train_images} training and {report.val_images} validation images, "
        f"{report.img_size} px",
        f"- {report.world_size} process(es), {report.precision} on {report.device}",
        "- recipe: " + ", ".join(f"{k} {v}" for k, v in report.recipe.items()),
        "",
        "| epoch | training loss | validation top-1 % | learning rate | seconds |",
        "|---|---|---|---|---|",
        *[f"| {int(r['epoch'])} | {r['train_loss']:.4f} | {r[report.metric]:.2f} | {r['lr']:.2e} | {r['seconds']:.1f} |"
          for r in report.history],
        "",
        f"![validation curve]({CURVE_FILE})",
        "",
        f"Reproduce the last figure: `python -m search evaluate --model DIR --dataset {report.dataset}` (the same "
        "validation split and transforms).",
        "",
        "## Measured on `" + (target.key if target else "-") + "`",
        "",
        *_figure_lines(measurement),
        "",
        "## Architecture",
        "",
        f"- parameters: {params:,} ({report.num_classes} classes)",
        "",
        "```json",
        json.dumps(report.config.to_dict(), sort_keys=True),
        "```",
        "",
        "## Files",
        "",
        "- `config.json` + `model.safetensors`: the trained weights in timm's local-dir layout.",
        f"- `{ONNX_FILE}`: {onnx.input_text(report.num_classes)}.",
        f"- `{CURVE_FILE}`: the validation curve above.",
        "",
        "## Provenance",
        "",
        f"- MLflow run `{report.run_id}` at `{report.tracking_uri}`",
        f"- command: `{report.command}`",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()),
        "",
    ]
    return "\n".join(lines)
