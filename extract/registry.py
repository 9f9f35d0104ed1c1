"""The backbone registry: every family's table chained, lookup by name, create (no torch import).

A backbone family is a module of extract/backbones/ with its builders and a `BACKBONES` table of its
entries (extract.backbones.BackboneSpec); `FAMILIES` lists them in the order the names are shown. Besides,
``timm/<name>`` names any model timm knows (``timm.list_models()``, optionally with a pretrained tag,
e.g. ``timm/resnet50.a1_in1k``), built by extract/backbones/timm_models.py.
"""

from __future__ import annotations

import os
from collections import ChainMap
from typing import Optional

from manifests import registries
from manifests.errors import UserError

from .backbones import BackboneError, BackboneSpec, efficientnet_lite, torchvision_models, tsm
from .backbones.timm_models import TIMM_PREFIX, timm_backbone

FAMILIES = (efficientnet_lite, torchvision_models, tsm)
# one view of the family tables (ChainMap lists the last map's names first, hence reversed)
BACKBONES: ChainMap = ChainMap(*reversed([family.BACKBONES for family in FAMILIES]))


def names_message() -> str:
    """The valid names, for error messages and help texts."""
    return (f"one of {registries.names_text(BACKBONES)}, or {TIMM_PREFIX}<any timm model name> (timm.list_models(), "
            f"e.g. {TIMM_PREFIX}resnet18)")


def lookup(name: str) -> BackboneSpec:
    """The spec of a registered name or of ``timm/<timm model name>``; BackboneError otherwise."""
    if name in BACKBONES or not name.startswith(TIMM_PREFIX):
        return registries.lookup(BACKBONES, name, "backbone", f"use {names_message()}", BackboneError)
    return timm_backbone(name, names_message())


def create(name: str, weights: Optional[str] = None, pretrained: bool = True, *, download: bool = True):
    """The frame model of backbone `name` in eval mode: an nn.Module mapping normalised (N, 3, H, W)
    frames to (N, D), with .feature_dim, .weights_id and .weights_sha256. Weights come from `weights`;
    else (pretrained) from the family's package or cache, else a download (when allowed); else a
    UserError that names the file to provide. Random weights only with pretrained=False."""
    if weights is not None:
        weights = str(weights)
        if not os.path.isfile(weights):
            raise UserError(f"extract.weights: file not found: {weights}; give the path of an existing weights "
                            "file, or leave extract.weights empty to use the package/cache weights")
    try:
        spec = lookup(name)
    except BackboneError as e:
        raise UserError(f"extract.backbone: {e}") from None
    m = spec.build(weights, pretrained, download)
    m.eval()
    return m
