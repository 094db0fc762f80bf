"""Exports in MLflow: the folder as run artifacts, its ONNX graph as a logged model, and that
model as a version of a *registered* model under an alias.

A logged model has an id and nothing else to deploy from; the registry gives it a name, a
version per export and a moving alias, so a serving job can load
``models:/NAME@trained`` (or ``@candidate`` for a picked, untrained architecture) without
knowing which run or trial produced it. Both ``search pick --export`` and ``search train``
come through here, so the two kinds of export are tagged and logged alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .export import ONNX_FILE

ALIAS_CANDIDATE = "candidate"  # a picked architecture, seeded initial weights
ALIAS_TRAINED = "trained"  # an architecture trained by ``search train``
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str, flag: str = "--register") -> str:
    """A registered-model name that MLflow and a ``models:/NAME@alias`` URI both take, or a
    one-line ValueError (``/`` and ``@`` would split the URI)."""
    if not _NAME.fullmatch(name or ""):
        raise ValueError(f"{flag} {name!r} is invalid: expected a model name of letters, digits, '_', '.' and '-' "
                         "(at most 128, starting with a letter or digit)")
    return name


def model_name_from(text: str) -> str:
    """A default registered-model name made from a study or model name (other characters become '-')."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")[:128]
    return name or "litv2-model"


@dataclass(frozen=True)
class Registration:
    """Where an export went: the logged model's URI and the registered version serving it."""

    model_uri: str
    name: str
    version: str
    alias: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def log_and_register(tracking_uri: str, run_id: str, folder: Path, *, artifact_path: str, model_name: str,
                     name: str, alias: str, num_classes: int, tags: dict[str, Any]) -> Registration:
    """Log ``folder`` to run ``run_id`` under ``artifact_path``, its ``model.onnx`` as the
    logged model ``model_name`` (the pyfunc flavour serves it with onnxruntime), register that
    as a new version of ``name`` with ``tags`` and point ``alias`` at it."""
    import mlflow
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    from litv2.runtimes import ONNX_INPUT, ONNX_OUTPUT

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
    graph = onnx.load(str(folder / ONNX_FILE))
    shape = [dim.dim_value or -1 for dim in graph.graph.input[0].type.tensor_type.shape.dim]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), tuple(shape), ONNX_INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), ONNX_OUTPUT)]),
    )
    texts = {key: str(value) for key, value in tags.items() if value is not None}
    info = mlflow.onnx.log_model(graph, name=model_name, run_id=run_id, signature=signature,
                                 save_as_external_data=False, tags=texts)
    version = mlflow.register_model(info.model_uri, name, tags=texts).version
    client.set_registered_model_alias(name, alias, version)
    return Registration(info.model_uri, name, str(version), alias)
