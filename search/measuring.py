"""TEMPORARY stand-in until the measurement protocol branch lands (issue 10)."""
from __future__ import annotations

from typing import Any


def count_architecture(config_json: str, img_size: int) -> dict[str, Any]:
    from litv2 import LITConfig, build_model, count_flops, count_params

    model = build_model(LITConfig.from_json(config_json), num_classes=1000, img_size=img_size)
    return dict(params=count_params(model), flops=count_flops(model, (3, img_size, img_size)))


def measure_architecture(config_json: str, target_key: str) -> dict[str, Any]:
    import torch

    from litv2 import LITConfig, build_model
    from litv2.throughput import measure_throughput
    from search.target import parse_target

    target = parse_target(target_key)
    torch.set_num_threads(target.threads or 1)
    model = build_model(LITConfig.from_json(config_json), num_classes=1000, img_size=target.img_size)
    measured = measure_throughput(model, batch_size=target.batch_size, img_size=target.img_size, device=target.device,
                                  precision=target.precision, warmup=3, repeats=3)
    return dict(throughput=measured.median, throughput_spread=measured.spread, samples=list(measured.samples),
                peak_memory_mb=measured.peak_memory_mb)
