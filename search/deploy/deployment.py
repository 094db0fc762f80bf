"""A deployment of a picked architecture: everything its files and its model card say, gathered
once. :mod:`search.deploy.card` renders it and :mod:`search.deploy.package` writes and logs it;
both import it from here, and it imports neither."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .export import LOADING, UNTRAINED, OnnxCheck, library_versions
from .pick import Pick
from ..core.repeats import interval
from ..study.settings import SearchSettings

DEPLOY_CLASSES = 1000  # the network that was measured: ImageNet-shaped


@dataclass
class Deployment:
    """Everything the model card says, gathered once."""

    pick: Pick
    settings: SearchSettings
    command: str
    run_id: str | None
    tracking_uri: str | None
    num_classes: int = DEPLOY_CLASSES
    seed: int = 0
    onnx: OnnxCheck | None = None  # set once the graph is written and checked
    versions: dict[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    host: str = field(default_factory=lambda: f"{platform.node()} ({platform.processor() or platform.machine()}"
                                              + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
                                              + ")")

    @property
    def img_size(self) -> int:
        return self.pick.target.img_size

    def provenance(self) -> dict[str, Any]:
        c = self.pick.chosen
        return dict(study=self.pick.study, trial=c.trial, arch_id=c.arch_id, summary=c.summary, target=self.pick.target.key,
                    throughput=c.throughput, throughput_spread=c.measured.get("throughput_spread", 0.0),
                    throughput_interval=list(interval(c.measured)),
                    params=c.params, flops=c.flops, proxy_top1=c.accuracy, proxy_epochs=c.epochs,
                    dataset=self.settings.search.dataset, mlflow_run_id=self.run_id, tracking_uri=self.tracking_uri,
                    seed=self.seed, command=self.command, weights=UNTRAINED, loading=LOADING)

    def registry_tags(self) -> dict[str, Any]:
        """What a registered version says of itself: where it came from and how it measured."""
        c = self.pick.chosen
        low, high = interval(c.measured)
        return dict(study=self.pick.study, trial=c.trial, arch_id=c.arch_id, target=self.pick.target.key,
                    throughput=f"{c.throughput:.1f}", throughput_interval=f"[{low:.1f}, {high:.1f}]",
                    params=f"{c.params:.0f}", flops=f"{c.flops:.0f}", proxy_top1=f"{c.accuracy:.2f}", weights="untrained")
