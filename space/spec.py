"""Space files: what a YAML/JSON search-space definition may say, parsed and written back.

A space varies a *base* architecture (a ``litv2`` named config plus ``fixed`` field
overrides) along *dimensions*, or lists fixed *points* (an ablation table)::

    name: default
    description: LITv2-S's design axes
    base: litv2_s                   # litv2.NAMED_CONFIGS key
    fixed: {drop_path_rate: 0.1}    # LITConfig fields overriding the base
    deploy_img_size: 224            # where the full-size model is measured
    proxy: {img_size: 64, width_mult: 0.25}   # what is trained (see space.proxy)
    fixed_points: false             # true: evaluate every point exactly once
    dimensions:
      alpha: {low: 0.0, high: 1.0}            # shared by all HiLo stages (or alpha_per_stage)
      window_size: [null, null, [1, 2, 4], [1, 2]]
    # or, instead of dimensions:
    points:
      - {label: LITv1-S, base: lit_s}
      - {label: + ConvFFN, base: lit_s, fixed: {ffn: convffn}}

Dimension values: a value (fixed), a list of choices, or ``{low, high, step}``. Per-stage
axes take a list with one entry per stage, ``null`` keeping the base's value. Axes not
mentioned keep the base's values.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, NamedTuple

from litv2 import ATTENTION_KINDS, MERGE_KINDS, NAMED_CONFIGS, LITConfig

from litv2.target import MIN_RESOLUTION

from .dims import (Domain, between, check_keys, one_of, parse_dimension, parse_per_stage, positive, positive_int,
                   unit_interval)
from .errors import SpaceError
from .proxy import ProxySettings

# What a real search needs, checked before anything is built: larger values are typos that
# would only fail once memory or time ran out (a 99999999-px image, a stage of 100000 blocks).
MAX_IMG_SIZE = 4096
MAX_STAGES = 8
MAX_STAGE_DEPTH = 64  # LITv2-B has 18 blocks in its third stage
MAX_EMBED_DIM = 2048
MAX_FIXED_POINTS = 1000  # rows of an ablation table, each trained (x seeds): a 20480-point grid ran until killed
SPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ +-]{0,99}")  # it names files, folders and MLflow runs
# Position encodings LITv2's Table 5 moves between: (rel_pos_bias, ffn).
POS_ENCODINGS: dict[str, tuple[bool, str]] = {
    "rpe": (True, "mlp"), "convffn": (False, "convffn"), "both": (True, "convffn"), "none": (False, "mlp"),
}
# Axes drawn once per architecture, by their own name.
FLAT_AXES: dict[str, Domain] = {
    "embed_dim": Domain(int, between(1, MAX_EMBED_DIM)),
    "mlp_ratio": Domain(float, positive),
    "merge": Domain(str, one_of(MERGE_KINDS)),
    "attn_kind": Domain(str, one_of(ATTENTION_KINDS)),
    "pos_enc": Domain(str, one_of(tuple(POS_ENCODINGS))),
    "alpha": Domain(float, unit_interval),
}
# Axes with one dimension per stage (drawn as depth_s{i}, mlp_only_s{i}, ws_s{i}, alpha_s{i}).
STAGE_AXES: dict[str, Domain] = {
    "depth": Domain(int, between(1, MAX_STAGE_DEPTH)),
    "mlp_only": Domain(bool),
    "window_size": Domain(int, positive_int),
    "alpha_per_stage": Domain(float, unit_interval),
}
# ``experiment``: what an ablation recipe needs beyond its architectures (data set, seeds, plots);
# read by the ``experiments`` package, ignored by the space, so a recipe is also a space file.
# ``extends``: resolved by the file loader (space.registry) before the space is parsed.
TOP_KEYS = ("name", "description", "base", "fixed", "deploy_img_size", "proxy", "fixed_points", "dimensions", "points",
            "experiment", "extends")
PROXY_KEYS = ("img_size", "width_mult")
POINT_KEYS = ("label", "base", "fixed")
DEFAULT_BASE = "litv2_s"


class Point(NamedTuple):
    """One fixed architecture of a points space: its label, the named config it starts from, the network."""

    label: str
    base: str
    config: LITConfig


def parse_space(data: Any, default_name: str) -> dict[str, Any]:
    """Keyword arguments of :class:`~space.SearchSpace` from a space file's top-level mapping."""
    _require_mapping(data, None)
    check_keys(data, TOP_KEYS, None)
    if ("dimensions" in data) == ("points" in data):
        raise SpaceError(None, "a space needs exactly one of 'dimensions' and 'points'")
    base_name = data.get("base", DEFAULT_BASE)
    fixed = data.get("fixed", {})
    base = make_config(base_name, fixed, "base", "fixed")
    check_size(base, "fixed")
    proxy = data.get("proxy", {})
    _require_mapping(proxy, "proxy")
    check_keys(proxy, PROXY_KEYS, "proxy")
    args: dict[str, Any] = {
        "name": Domain(str, _space_name).coerce(data.get("name", default_name), "name"),
        "description": Domain(str).coerce(data.get("description", ""), "description"),
        "base_name": base_name,
        "base": base,
        "deploy_img_size": Domain(int, between(MIN_RESOLUTION, MAX_IMG_SIZE)).coerce(
            data.get("deploy_img_size", 224), "deploy_img_size"),
        "proxy": ProxySettings(
            img_size=Domain(int, between(MIN_RESOLUTION, MAX_IMG_SIZE)).coerce(
                proxy.get("img_size", ProxySettings.img_size), "proxy.img_size"),
            width_mult=Domain(float, positive).coerce(
                proxy.get("width_mult", ProxySettings.width_mult), "proxy.width_mult"),
        ),
        "fixed_points": Domain(bool).coerce(data.get("fixed_points", "points" in data), "fixed_points"),
    }
    if "points" in data:
        args["points"] = _parse_points(data["points"], base_name, fixed)
    else:
        args["axes"], args["stage_axes"] = _parse_dimensions(data["dimensions"], base.num_stages)
    return args


def make_config(base_name: Any, fixed: Any, base_field: str, fixed_field: str) -> LITConfig:
    """A named ``litv2`` config with ``fixed`` fields replaced, validated like any LITConfig."""
    if base_name not in NAMED_CONFIGS:
        raise SpaceError(base_field, f"unknown config {base_name!r}; expected one of {', '.join(NAMED_CONFIGS)}")
    _require_mapping(fixed, fixed_field)
    check_keys(fixed, [f.name for f in fields(LITConfig)], fixed_field)
    try:
        return LITConfig.from_dict({**NAMED_CONFIGS[base_name].to_dict(), **fixed})
    except (TypeError, ValueError) as err:
        raise SpaceError(fixed_field, str(err)) from None


def dump_space(parts: Mapping[str, Any]) -> dict[str, Any]:
    """The space-file mapping of a space given by its parts - the keyword arguments of
    :class:`~space.SearchSpace`, as :func:`parse_space` returns them (``points`` and
    ``stage_axes`` may be empty); :func:`parse_space` of the result gives equal parts back."""
    out: dict[str, Any] = {"name": parts["name"]}
    if parts.get("description"):
        out["description"] = parts["description"]
    out["base"] = parts["base_name"]
    fixed = _overrides(parts["base"], NAMED_CONFIGS[parts["base_name"]])
    if fixed:
        out["fixed"] = fixed
    proxy = parts["proxy"]
    out["deploy_img_size"] = parts["deploy_img_size"]
    out["proxy"] = {"img_size": proxy.img_size, "width_mult": proxy.width_mult}
    out["fixed_points"] = parts["fixed_points"]
    if parts.get("points"):
        out["points"] = []
        for point in parts["points"]:
            # A point is parsed as its base + the space's fixed + its own fixed.
            extra = _overrides(point.config, make_config(point.base, fixed, "base", "fixed"))
            out["points"].append({"label": point.label, "base": point.base, **({"fixed": extra} if extra else {})})
    else:
        axes, stage_axes = parts.get("axes", {}), parts.get("stage_axes", {})
        out["dimensions"] = {key: axes[key].to_spec() for key in FLAT_AXES if key in axes}
        for key in STAGE_AXES:
            if key in stage_axes:
                out["dimensions"][key] = [dim.to_spec() if dim else None for dim in stage_axes[key]]
    return out


def _overrides(config: LITConfig, reference: LITConfig) -> dict[str, Any]:
    """The ``fixed`` mapping that turns ``reference`` into ``config``."""
    before = reference.to_dict()
    return {key: value for key, value in config.to_dict().items() if value != before[key]}


def _parse_dimensions(data: Any, num_stages: int) -> tuple[dict[str, Any], dict[str, Any]]:
    _require_mapping(data, "dimensions")
    check_keys(data, (*FLAT_AXES, *STAGE_AXES), "dimensions")
    if "alpha" in data and "alpha_per_stage" in data:
        raise SpaceError("dimensions.alpha_per_stage", "give either a shared 'alpha' or 'alpha_per_stage'")
    axes = {key: parse_dimension(data[key], domain, f"dimensions.{key}")
            for key, domain in FLAT_AXES.items() if key in data}
    stage_axes = {key: parse_per_stage(data[key], domain, f"dimensions.{key}", num_stages)
                  for key, domain in STAGE_AXES.items() if key in data}
    return axes, stage_axes


def _parse_points(data: Any, base_name: str, fixed: Mapping[str, Any]) -> tuple[Point, ...]:
    if not isinstance(data, list) or not data:
        raise SpaceError("points", "expected a non-empty list of points")
    points = []
    for j, point in enumerate(data):
        field = f"points[{j}]"
        _require_mapping(point, field)
        check_keys(point, POINT_KEYS, field)
        if "label" not in point:
            raise SpaceError(field, "a point needs a 'label'")
        label = Domain(str).coerce(point["label"], f"{field}.label")
        if label in [p.label for p in points]:
            raise SpaceError(f"{field}.label", f"{label!r} is used twice")
        name = point.get("base", base_name)
        extra = point.get("fixed", {})
        _require_mapping(extra, f"{field}.fixed")
        points.append(Point(label, name, make_config(name, {**fixed, **extra}, f"{field}.base", f"{field}.fixed")))
    return tuple(points)


def check_size(config: LITConfig, field: str) -> None:
    """A network no larger than :data:`MAX_STAGES` stages of :data:`MAX_STAGE_DEPTH` blocks,
    :data:`MAX_EMBED_DIM` channels in its first."""
    if config.num_stages > MAX_STAGES:
        raise SpaceError(field, f"{config.num_stages} stages: expected at most {MAX_STAGES}")
    if max(config.depths) > MAX_STAGE_DEPTH:
        raise SpaceError(f"{field}.depths", f"{list(config.depths)}: expected at most {MAX_STAGE_DEPTH} blocks a stage")
    if config.embed_dim > MAX_EMBED_DIM:
        raise SpaceError(f"{field}.embed_dim", f"{config.embed_dim}: expected at most {MAX_EMBED_DIM}")


def _space_name(value: str) -> str | None:
    return None if SPACE_NAME.fullmatch(value) else (f"{value!r} is not 1-100 letters, digits, spaces or '._+-', "
                                                      "starting with a letter or digit")


def _require_mapping(value: Any, field: str | None) -> None:
    if not isinstance(value, Mapping):
        raise SpaceError(field, f"expected a mapping, got {type(value).__name__}")
