"""The backbone protocol: what extract needs to know of a backbone (no torch import).

A `BackboneSpec` names its builder, feature dim and preprocessing, and embeds a video frame by frame;
a subclass overrides that (`extract.backbones.tsm.TsmSpec` embeds 8-frame clips). Each family
module of this package (efficientnet_lite, torchvision_models, tsm, timm_models) holds its builders and
registers its backbones in its own `BACKBONES` table; `extract.registry` chains those tables.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
        """The preprocessing as plain values (the stage summary)."""
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}

    def transform_attrs(self) -> dict:
        """The preprocessing as recorded in every shard's ``transform`` attribute."""
        return {"resize_short_side": self.resize, "interpolation": f"{self.interpolation}, antialiased (PIL)",
                "center_crop": self.crop, "colour": "RGB", "scale": "1/255", "mean": list(self.mean),
                "std": list(self.std)}


TORCHVISION_V1 = Preprocessing(resize=256, crop=224)  # torchvision's ImageNet V1 eval transform


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone: ``builder(spec, weights, pretrained, download)`` returns the frame model (an
    nn.Module mapping normalised (N, 3, H, W) frames to (N, D) features, with .feature_dim,
    .weights_id and .weights_sha256); `feature_dim` is None for timm models (known once built)."""

    name: str
    builder: Callable[..., Any]
    feature_dim: Optional[int]
    preprocessing: Preprocessing

    whole_video = False  # True when a frame's feature depends on other frames: runners pass whole videos

    def build(self, weights: Optional[str], pretrained: bool, download: bool):
        """The frame model with its weights (see the class doc)."""
        return self.builder(self, weights, pretrained, download)

    def forward_batch(self, batch_size: int) -> int:
        """The frames per forward pass for the `batch_size` asked for."""
        return batch_size

    def embed_video(self, encoder, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, D): frame by frame, in forward batches of
        ``encoder.batch_size`` counted from the first frame."""
        bs = encoder.batch_size
        outs = [encoder.embed_batch(frames[s:s + bs]) for s in range(0, len(frames), bs)]
        return np.concatenate(outs) if outs else np.zeros((0, encoder.feature_dim), np.float32)

    def fingerprint_fields(self, cfg) -> dict:
        """Settings of the ExtractConfig `cfg` beyond the common ones that change this backbone's features."""
        return {}

    def describe(self, settings) -> dict:
        """What the shards record of this backbone beyond its name, weights and precision; `settings`
        (the FrameEncoder or the ExtractConfig) carries the backbone's options (tsm_grouping)."""
        return {}
