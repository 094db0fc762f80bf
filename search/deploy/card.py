"""``MODEL_CARD.md`` of an exported model: what it is, how fast it measured, how it was chosen."""
from __future__ import annotations

import json
from typing import Any

from .deployment import Deployment
from .export import LOADING
from ..core.repeats import latency_text, throughput_text


def _measured(figure: dict[str, Any] | None, batch_size: int) -> tuple[str, str]:
    """Throughput and latency, each with its 95 % interval."""
    return throughput_text(figure), latency_text(figure, batch_size)


def _proxy_text(space_name: str) -> str:
    """How the space scales its proxies (a user's space file may have moved since the search)."""
    from space import get_space

    try:
        proxy = get_space(space_name).proxy
    except ValueError:
        return f"space {space_name!r} is no longer readable"
    return f"width x{proxy.width_mult:g}, {proxy.img_size} px input"


def _measurement_notes(figure: dict[str, Any]) -> list[str]:
    """Whatever the measurement recorded about itself (device, samples, protocol), as list items."""
    notes = []
    if figure.get("samples"):
        notes.append(f"samples (img/s): {', '.join(f'{s:.1f}' for s in figure['samples'])}")
    if figure.get("peak_memory_mb") is not None:
        notes.append(f"peak memory the measurement added: {figure['peak_memory_mb']:.0f} MiB")
    record = figure.get("measurement")
    if isinstance(record, dict):
        keys = ("device_name", "precision", "threads", "clock", "n_samples", "ci_low", "ci_high", "calls_per_block",
                "channels_last", "runtime", "provider", "warmup_converged", "capped", "cpu_share", "contended")
        notes.append("protocol: " + ", ".join(f"{k} {_short(record[k])}" for k in keys if record.get(k) is not None))
        if record.get("reference"):
            reference = record["reference"]
            notes.append(f"scaled to the reference {reference['name']} calibrated at "
                         f"{reference['calibrated_img_s']:.1f} img/s on the measuring node (it ran at "
                         f"{reference['observed_img_s']:.1f} during the measurement, drift {reference['drift']:.3f})")
        if record.get("versions"):
            notes.append("measured under " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    return notes


RUNTIME_TEXT = {"eager": "in eager PyTorch", "compile": "as a torch.compile module (compilation not timed)",
                "ort": "in onnxruntime, running the `model.onnx` of this folder (the same exporter)",
                "trt": "in TensorRT through onnxruntime, running the `model.onnx` of this folder (the same exporter)"}


def _runtime_text(runtime: str, figure: dict[str, Any] | None) -> str:
    """How the target's runtime ran the network, and the provider and library that did."""
    record = (figure or {}).get("measurement") or {}
    library = ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items() if k == "onnxruntime")
    detail = ", ".join(x for x in (record.get("provider"), library) if x)
    return RUNTIME_TEXT[runtime] + (f" ({detail})" if detail else "")


def _short(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


_SOURCE = {"cache": "cached", "measured now": "measured by this pick"}


def _times(measured_times: int) -> str:
    return f" (kept of {measured_times} measurements: the first two disagreed)" if measured_times > 2 else ""


def render_card(deployment: Deployment) -> str:
    """The card's Markdown text."""
    pick, settings = deployment.pick, deployment.settings
    c = pick.chosen
    target = pick.target
    cached_tp, cached_lat = _measured(c.cached, target.batch_size)
    fresh_tp, fresh_lat = _measured(c.remeasured, target.batch_size)
    constraints = pick.constraints.to_dict()
    remeasured = sum(1 for candidate in pick.candidates if candidate.remeasured is not None)
    lines = [
        f"# {c.arch_id}: a LIT-family model for `{target}`",
        "",
        f"> **Untrained weights.** This folder holds the picked architecture with a seeded initialisation (seed "
        f"{deployment.seed}), not a trained model: `pretrained=True` loads these initial weights. Train it with "
        "`python -m search train --model DIR --dataset ...`, which writes a trained export with its own card.",
        ">",
        f"> **Loading:** {LOADING}.",
        "",
        f"Picked by `search pick` from study `{pick.study}` (trial {c.trial}) on {deployment.created}: the most "
        f"accurate of the study's full-fidelity Pareto front that meets "
        + (", ".join(f"`{k}={v:g}`" for k, v in constraints.items()) or "no constraint")
        + f" on the target, after re-measuring the most accurate feasible candidates ({remeasured} of "
        f"{len(pick.candidates)}, --top {pick.top}).",
        "",
        "## Architecture",
        "",
        f"- {c.summary}",
        f"- parameters: {c.params:,.0f} ({c.params / 1e6:.2f}M), {deployment.num_classes} classes",
        f"- FLOPs at {target.img_size}x{target.img_size}: {c.flops / 1e9:.3f} G (one multiply-add = one FLOP)",
        "",
        "```json",
        json.dumps(c.config.to_dict(), indent=None, sort_keys=True),
        "```",
        "",
        f"## Measured on `{target}`",
        "",
        f"| figure | {_SOURCE.get(c.source, c.source)} | re-measured by this pick |",
        "|---|---|---|",
        f"| throughput, img/s (median [95 % interval]) | {cached_tp} | {fresh_tp}{_times(c.measured_times)} |",
        f"| latency, ms per batch of {target.batch_size} [95 % interval] | {cached_lat} | {fresh_lat} |",
        "",
        f"Measured on {deployment.host}, {_runtime_text(target.runtime, c.measured)}.",
        *[f"- {note}" for note in _measurement_notes(c.measured)],
        "",
        "## Accuracy (proxy)",
        "",
        f"Proxy top-1 {c.accuracy:.2f} % on `{settings.search.dataset}` after {c.epochs} of {settings.search.epochs} epochs "
        f"(full fidelity), trained as the search trains its proxies ({_proxy_text(settings.search.space)}), seed "
        f"{c.seed}. This ranks architectures; it is not the accuracy of this "
        f"network. The weights here are a seeded initialisation (seed {deployment.seed}): train them with "
        f"`python -m search train --model DIR --dataset ...`.",
        "",
        "## Files",
        "",
        "- `config.json` + `model.safetensors`: `timm.create_model(\"local-dir:DIR\", pretrained=True)` after "
        "`import litv2` (architecture `lit_custom`, the LITConfig in `model_args`).",
        f"- `model.onnx`: {deployment.onnx.input_text(deployment.num_classes)}.",
        "",
        "## Provenance",
        "",
        f"- study `{pick.study}` in `{settings.run.storage}`, space `{settings.search.space}`, searched on `{', '.join(settings.search.target_keys)}`",
        f"- MLflow parent run `{deployment.run_id}` at `{deployment.tracking_uri}`",
        f"- command: `{deployment.command}`",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in deployment.versions.items()),
        "",
    ]
    return "\n".join(lines)
