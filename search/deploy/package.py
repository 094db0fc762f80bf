"""``search pick --export``: the picked architecture as a deployable folder, logged to MLflow.

The folder holds the full-size network (ImageNet-shaped: 1,000 classes, 3 channels, the
target's resolution: what was measured) with seeded initial weights - the search trained
proxies only, so a deployable model is trained next with ``search train --model DIR`` -
in timm's local-dir layout, as ONNX, and with a ``MODEL_CARD.md`` that records how it was
chosen. The same files go to the study's MLflow parent run (``deploy/ARCH_ID/``), the ONNX
graph is logged there as an MLflow model and registered as a version of the study's registered
model under the alias ``candidate`` (:mod:`search.deploy.registry`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .card import render_card
from .deployment import Deployment
from .export import CARD_FILE, ONNX_TOLERANCE, create_lit_model, write_atomically, write_model_files
from .registry import ALIAS_CANDIDATE, Registration, log_and_register

__all__ = ["Deployment", "ONNX_TOLERANCE", "export_deployment", "log_deployment"]


def export_deployment(deployment: Deployment, folder: Path) -> Path:
    """Write ``folder`` (timm files, ONNX, model card) atomically; raises if ONNX disagrees with PyTorch."""
    config = deployment.pick.chosen.config
    torch.manual_seed(deployment.seed)
    model = create_lit_model(config, deployment.num_classes, deployment.img_size).eval()

    def fill(tmp: Path) -> None:
        deployment.onnx = write_model_files(tmp, model, config, deployment.img_size, deployment.provenance())
        (tmp / CARD_FILE).write_text(render_card(deployment))

    return write_atomically(folder, fill)


def log_deployment(deployment: Deployment, folder: Path, name: str) -> Registration:
    """Log ``folder`` to the study's parent run, its ONNX graph as an MLflow model, and register
    that as a version of ``name`` under the alias ``candidate`` (an untrained architecture)."""
    from mlflow.tracking import MlflowClient

    arch = deployment.pick.chosen.arch_id
    registration = log_and_register(
        deployment.tracking_uri, deployment.run_id, folder, artifact_path=f"deploy/{arch}", model_name=f"deploy-{arch}",
        name=name, alias=ALIAS_CANDIDATE, num_classes=deployment.num_classes, tags=deployment.registry_tags())
    MlflowClient(deployment.tracking_uri).set_tag(deployment.run_id, "deployed_arch_id", arch)
    return registration
