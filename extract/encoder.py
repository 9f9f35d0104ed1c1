"""The model side of extraction: uint8 frames -> features, on CPU or GPU.

Normalisation (the resolved preprocessing's mean/std) happens on the device; channels_last, inference
mode and autocast (bf16/fp16, GPU only) are applied here. How a video is cut into forward batches is
the backbone's (extract.backbones): frame by frame from the video's first frame, or TSM's clips, so the
features do not depend on which other videos are processed in the same run or runner.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from manifests import resources
from manifests.devices import amp_dtype, resolve_device

from .backbones import Preprocessing
from .registry import create, lookup


def encoder_from_config(cfg, **overrides) -> "FrameEncoder":
    """The FrameEncoder an ExtractConfig describes (the in-process runner, the Ray actors and
    `predict` all build it here); `overrides` replace single arguments, e.g. num_threads."""
    kwargs = dict(weights=cfg.weights, pretrained=cfg.pretrained, device=cfg.device, amp=cfg.amp,
                  batch_size=cfg.batch_size, tsm_grouping=cfg.tsm_grouping, download=cfg.download,
                  num_threads=cfg.num_threads, preprocessing=cfg.preprocessing())
    return FrameEncoder(cfg.backbone, **{**kwargs, **overrides})


class FrameEncoder:
    """uint8 frames -> (N, D) features of one backbone (see the module doc)."""

    def __init__(self, backbone: str = "efficientnet_lite0", weights: Optional[str] = None,
                 pretrained: bool = True, *, device: str = "auto", amp: str = "auto", batch_size: int = 64,
                 tsm_grouping: str = "interleaved", download: bool = True, num_threads: Optional[int] = None,
                 preprocessing: Optional[Preprocessing] = None):
        """`preprocessing`: the one resolved from the config (ExtractConfig.preprocessing); default the
        backbone's own."""
        torch.set_num_threads(resources.torch_threads(num_threads))  # never the host's core count
        self.device = resolve_device(device, named=f"extract.device={device}", fix="extract.device=cpu or auto")
        self.amp_dtype = amp_dtype(amp, self.device)
        self.model = create(backbone, weights, pretrained, download=download)
        self.spec = lookup(backbone)
        self.model.to(self.device).eval()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.feature_dim = int(self.model.feature_dim)
        self.tsm_grouping = tsm_grouping
        self.batch_size = self.spec.forward_batch(int(batch_size))
        pre = preprocessing or self.spec.preprocessing
        self.mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255.0
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    @property
    def whole_video(self) -> bool:
        """True when a frame's feature depends on other frames (TSM): embed whole videos."""
        return self.spec.whole_video

    def describe(self) -> dict:
        """The backbone, its weights, precision and device, and what the backbone adds (TSM: "tsm")."""
        d = {"backbone": self.backbone, "feature_dim": self.feature_dim, "weights": self.model.weights_id,
             "weights_sha256": self.model.weights_sha256, "precision": self.precision,
             "device": str(self.device)}
        d.update(self.spec.describe(self))
        return d

    def _to_input(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed_batch(self, frames: np.ndarray) -> np.ndarray:
        """One forward pass over uint8 (N, H, W, 3) frames -> float32 (N, D)."""
        x = self._to_input(frames)
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                y = self.model(x)
        else:
            y = self.model(x)
        return y.float().cpu().numpy()

    def embed_video(self, frames: np.ndarray) -> np.ndarray:
        """All frames of one video (uint8 (T, H, W, 3)) -> float32 (T, D), as the backbone embeds them."""
        return self.spec.embed_video(self, frames)
