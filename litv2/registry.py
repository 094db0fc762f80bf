"""The timm registrations of the named architectures (:mod:`litv2.named`).

Importing this module (done by ``import litv2`` once timm is imported) registers ``litv2_s``,
``litv2_m``, ``litv2_b`` (official LITv2 configs) and ``lit_s``, ``lit_m``, ``lit_b`` (LITv1: MLP-only stages 1-2, plain MLP, MSA with relative
position bias, DTM, at the same widths and depths) so
``timm.create_model(name, num_classes=..., checkpoint_path=...)`` works, ``features_only``
included (NCHW maps, as detection and segmentation necks take them).
"""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from typing import TYPE_CHECKING

from .config import LITConfig
from .named import LIT_B, LIT_M, LIT_S, LITV2_B, LITV2_M, LITV2_S, NAMED_CONFIGS, get_config  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from .model import LITv2

def _cfg(**kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in NAMED_CONFIGS})
# ``lit_custom``: any architecture, its LITConfig in the model arguments (see :func:`lit_custom`).
default_cfgs.update(generate_default_cfgs({"lit_custom": _cfg()}))


def _create(variant: str, pretrained: bool = False, config: LITConfig | None = None, **kwargs) -> LITv2:
    from .model import LITv2  # here, not at the top: timm's import registers these (see litv2/__init__.py)

    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    # NCHW feature maps although the model's own output_fmt is NHWC, stated explicitly: timm
    # versions differ in whether the feature wrapper inherits the model's format.
    return build_model_with_cfg(
        LITv2, variant, pretrained, config=config or get_config(variant),
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices, output_fmt="NCHW"), **kwargs,
    )


@register_model
def litv2_s(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S: 27.8M params, 3.7 GFLOPs at 224."""
    return _create("litv2_s", pretrained, **kwargs)


@register_model
def litv2_m(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M: 48.8M params, 7.5 GFLOPs at 224."""
    return _create("litv2_m", pretrained, **kwargs)


@register_model
def litv2_b(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B: 86.5M params, 13.2 GFLOPs at 224."""
    return _create("litv2_b", pretrained, **kwargs)


@register_model
def lit_s(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv1-S, the starting point of the paper's Table 5: 27,973,720 params, as the official code."""
    return _create("lit_s", pretrained, **kwargs)


@register_model
def lit_m(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv1-M: 49,372,264 params, as the official code (the LITv1 zoo prints 48M)."""
    return _create("lit_m", pretrained, **kwargs)


@register_model
def lit_b(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv1-B: 87,292,384 params, as the official code (the LITv1 zoo prints 86M)."""
    return _create("lit_b", pretrained, **kwargs)


@register_model
def lit_custom(pretrained: bool = False, lit_config: LITConfig | dict | str | None = None, **kwargs) -> LITv2:
    """Any LIT-family architecture: ``lit_config`` is a :class:`LITConfig`, its dict or its JSON.

    Searched architectures have no name of their own, so the config travels in timm's model
    arguments: a folder written by ``timm.models.save_for_hf(model, DIR, model_args={"lit_config":
    config.to_dict()})`` (what ``python -m search pick --export`` writes) is rebuilt, weights
    included, by ``timm.create_model("local-dir:DIR", pretrained=True)``.
    """
    if lit_config is None:
        raise ValueError("lit_custom needs lit_config=LITConfig(...) (or its dict or JSON)")
    if isinstance(lit_config, str):
        lit_config = LITConfig.from_json(lit_config)
    elif not isinstance(lit_config, LITConfig):
        lit_config = LITConfig.from_dict(dict(lit_config))
    return _create("lit_custom", pretrained, config=lit_config, **kwargs)
