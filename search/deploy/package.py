"""``search pick --export``: the picked architecture as a deployable folder, logged to MLflow.

The folder holds the full-size network (ImageNet-shaped: 1,000 classes, 3 channels, the
target's resolution: what was measured) with seeded initial weights - the search trained
proxies only, so a deployable model is trained next with ``search train --model DIR`` -
in timm's local-dir layout, as ONNX, and with a ``MODEL_CARD.md`` that records how it was
chosen. The same files go to the study's MLflow parent run (``deploy/ARCH_ID/``), and the
ONNX graph is logged there as an MLflow model, so ``mlflow models`` tooling can serve it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from litv2.runtimes import ONNX_INPUT, ONNX_OUTPUT, export_onnx

from .card import render_card
from .deployment import Deployment
from .export import CARD_FILE, ONNX_FILE, create_lit_model, onnx_max_difference, save_timm_folder, write_atomically

__all__ = ["Deployment", "ONNX_TOLERANCE", "export_deployment", "log_deployment"]

ONNX_TOLERANCE = 1e-4


def export_deployment(deployment: Deployment, folder: Path) -> Path:
    """Write ``folder`` (timm files, ONNX, model card) atomically; raises if ONNX disagrees with PyTorch."""
    config = deployment.pick.chosen.config
    torch.manual_seed(deployment.seed)
    model = create_lit_model(config, deployment.num_classes, deployment.img_size).eval()

    def fill(tmp: Path) -> None:
        save_timm_folder(model, config, tmp, deployment.img_size, deployment.provenance())
        export_onnx(model, tmp / ONNX_FILE, deployment.img_size)
        deployment.onnx_difference = onnx_max_difference(model, tmp / ONNX_FILE, deployment.img_size)
        if not deployment.onnx_difference <= ONNX_TOLERANCE:
            raise RuntimeError(f"the ONNX graph differs from PyTorch by {deployment.onnx_difference:.2e} "
                               f"(more than {ONNX_TOLERANCE:g}); nothing was exported")
        (tmp / CARD_FILE).write_text(render_card(deployment))

    return write_atomically(folder, fill)


def log_deployment(deployment: Deployment, folder: Path) -> str:
    """Log ``folder`` to the study's parent run and its ONNX graph as an MLflow model; returns the model URI."""
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    arch = deployment.pick.chosen.arch_id
    client = MlflowClient(deployment.tracking_uri)
    mlflow.set_tracking_uri(deployment.tracking_uri)
    mlflow.set_experiment(experiment_id=client.get_run(deployment.run_id).info.experiment_id)  # the study's
    client.log_artifacts(deployment.run_id, str(folder), artifact_path=f"deploy/{arch}")
    size = deployment.img_size
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), ONNX_INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, deployment.num_classes), ONNX_OUTPUT)]),
    )
    info = mlflow.onnx.log_model(onnx.load(str(folder / ONNX_FILE)), name=f"deploy-{arch}", run_id=deployment.run_id,
                                 signature=signature, save_as_external_data=False,
                                 tags={"arch_id": arch, "target": deployment.pick.target.key})
    client.set_tag(deployment.run_id, "deployed_arch_id", arch)
    return info.model_uri
