"""The model side of extraction: uint8 frames -> features, on CPU or GPU.

Normalisation (the backbone's mean/std, from extract.registry) happens on the device; channels_last,
inference mode and autocast (bf16/fp16, GPU only) are applied here. A video's frames are cut into forward batches of
`batch_size` frames counted from the video's first frame, so the batches - and therefore the
features - do not depend on which other videos are processed in the same run or runner.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from manifests import resources
from manifests.errors import UserError

from . import backbones
from .registry import lookup


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"extract.device={device}: no CUDA GPU is visible here; use extract.device=cpu or auto")
        d = torch.device(device)
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise UserError(f"extract.device={device}: only {torch.cuda.device_count()} GPU(s) visible")
        return d
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def tsm_order(t: int, n_segment: int, grouping: str) -> np.ndarray:
    """Slot order over the video padded to a multiple of n_segment (slot j >= t is a copy of the
    last frame) such that each consecutive run of n_segment slots is one TSM clip.

    interleaved: G = padded/n_segment clips, clip g = slots {g, g+G, ..., g+(n_segment-1)G}
    (each clip spans the whole video, like TSN test sampling); consecutive: {8k, ..., 8k+7}."""
    p = -(-t // n_segment) * n_segment
    if grouping == "consecutive":
        return np.arange(p)
    g = p // n_segment
    return np.arange(p).reshape(n_segment, g).T.reshape(-1)


def encoder_from_config(cfg, **overrides) -> "FrameEncoder":
    """The FrameEncoder an ExtractConfig describes (the in-process runner, the Ray actors and
    `predict` all build it here); `overrides` replace single arguments, e.g. num_threads."""
    kwargs = dict(weights=cfg.weights, pretrained=cfg.pretrained, device=cfg.device, amp=cfg.amp,
                  batch_size=cfg.batch_size, tsm_grouping=cfg.tsm_grouping, download=cfg.download,
                  num_threads=cfg.num_threads)
    return FrameEncoder(cfg.backbone, **{**kwargs, **overrides})


class FrameEncoder:
    """uint8 frames -> (N, D) features of one backbone (see the module doc)."""

    def __init__(self, backbone: str = "efficientnet_lite0", weights: Optional[str] = None,
                 pretrained: bool = True, *, device: str = "auto", amp: str = "auto", batch_size: int = 64,
                 tsm_grouping: str = "interleaved", download: bool = True, num_threads: Optional[int] = None):
        torch.set_num_threads(resources.torch_threads(num_threads))  # never the host's core count
        self.device = resolve_device(device)
        self.amp_dtype = resolve_amp(amp, self.device)
        self.model = backbones.create(backbone, weights, pretrained, download=download)
        self.model.to(self.device).eval()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.feature_dim = int(self.model.feature_dim)
        self.n_segment = getattr(self.model, "n_segment", None)
        self.tsm_grouping = tsm_grouping
        bs = int(batch_size)
        if self.n_segment:
            bs = max(self.n_segment, bs // self.n_segment * self.n_segment)
        self.batch_size = bs
        pre = lookup(backbone).preprocessing
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
        return bool(self.n_segment)

    def describe(self) -> dict:
        d = {"backbone": self.backbone, "feature_dim": self.feature_dim, "weights": self.model.weights_id,
             "weights_sha256": self.model.weights_sha256, "precision": self.precision,
             "device": str(self.device)}
        if self.n_segment:
            d["tsm"] = {"n_segment": self.n_segment, "fold_div": getattr(self.model, "fold_div", 8),
                        "grouping": self.tsm_grouping, "pad": "repeat last frame",
                        "shift_place": "blockres (conv1 input of every bottleneck)"}
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
        """All frames of one video (uint8 (T, H, W, 3)) -> float32 (T, D)."""
        t = len(frames)
        if not self.n_segment:
            outs = [self.embed_batch(frames[s:s + self.batch_size]) for s in range(0, t, self.batch_size)]
            return np.concatenate(outs) if outs else np.zeros((0, self.feature_dim), np.float32)
        slots = tsm_order(t, self.n_segment, self.tsm_grouping)
        frame_of = np.minimum(slots, t - 1)
        feats = np.zeros((t, self.feature_dim), np.float32)
        for s in range(0, len(slots), self.batch_size):
            out = self.embed_batch(frames[frame_of[s:s + self.batch_size]])
            sl = slots[s:s + self.batch_size]
            real = sl < t  # padded slots are dropped
            feats[sl[real]] = out[real]
        return feats
