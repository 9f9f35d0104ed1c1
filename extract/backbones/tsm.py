"""TSM: ResNet-50 with the residual temporal shift (official Kinetics checkpoint layout).

Its features depend on the other frames of an 8-frame clip, so `TsmSpec` embeds whole videos:
the frames are grouped into clips (interleaved or consecutive, extract.tsm_grouping), the last clip
padded with copies of the last frame.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from manifests.errors import UserError

from . import TORCHVISION_V1, BackboneSpec
from .weights import hub_files, identity, load_strict, pooled, safe_load

TSM_FILE = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
TSM_URL = "https://hanlab18.mit.edu/projects/tsm/models/" + TSM_FILE


def temporal_shift(x, n_segment: int, fold_div: int = 8):
    """TSM shift of (N*T, C, H, W): channels [0, C/8) come from frame t+1, [C/8, 2C/8) from t-1,
    zero at the clip boundaries; the rest unchanged."""
    import torch

    nt, c, h, w = x.shape
    n = nt // n_segment
    x5 = x.view(n, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x5[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


def map_tsm_checkpoint(sd: dict) -> dict:
    """Official TSM (DataParallel(TSN)) keys -> torchvision ResNet-50 keys.

    Strips ``module.`` / ``base_model.``, maps ``.conv1.net.`` (the shifted convs) to ``.conv1.`` and
    ``new_fc.*`` to ``fc.*``; the shift itself is added as a hook, so no other key changes.
    """
    out = {}
    for k, v in sd.items():
        k2 = k
        if k2.startswith("module."):
            k2 = k2[len("module."):]
        if k2.startswith("base_model."):
            k2 = k2[len("base_model."):]
        k2 = k2.replace(".conv1.net.", ".conv1.")
        if k2.startswith("new_fc."):
            k2 = "fc." + k2[len("new_fc."):]
        out[k2] = v
    return out


def _default_weights() -> str:
    """The official checkpoint in the torch hub cache; a UserError says where to get it."""
    cand = hub_files((TSM_FILE,))[0]
    if cand.is_file():
        return str(cand)
    raise UserError(
        f"no Kinetics weights for tsm_r50: download {TSM_FILE} ({TSM_URL}) and set "
        f"extract.weights=/path/to/{TSM_FILE} (or put it into {cand.parent}/); random weights: "
        "extract.pretrained=false (tests only)")


def _load_tsm_weights(m, weights: str) -> tuple[str, str]:
    """Load an official TSM checkpoint into the torchvision ResNet-50 `m`; its weights identity."""
    from torch import nn

    raw = safe_load(weights)
    n_shift_keys = sum(1 for k in raw if ".conv1.net." in k)
    sd = map_tsm_checkpoint(raw)
    if n_shift_keys and n_shift_keys != 16:
        raise UserError(f"extract.weights: {weights} has {n_shift_keys} shifted convs (.conv1.net.), "
                        "tsm_r50 expects 16 (blockres shift in every ResNet-50 bottleneck)")
    if "fc.weight" in sd:
        m.fc = nn.Linear(sd["fc.weight"].shape[1], sd["fc.weight"].shape[0])
    else:
        m.fc = nn.Identity()
    load_strict(m, sd, "tsm_r50 (ResNet-50 after the TSM key mapping)", weights)
    return identity(weights)


def build_tsm_r50(spec: "TsmSpec", weights: Optional[str], pretrained: bool, download: bool):
    """ResNet-50 with the residual temporal shift, from the official TSM checkpoint layout."""
    import torchvision
    from torch import nn

    m = torchvision.models.resnet50(weights=None)
    if weights is None and pretrained:
        weights = _default_weights()
    ident = _load_tsm_weights(m, weights) if weights is not None else None
    m.fc = nn.Identity()
    n_segment, fold_div = spec.n_segment, spec.fold_div
    # the shift acts on the input of each bottleneck's first conv (residual shift)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            blk.conv1.register_forward_pre_hook(
                lambda mod, args, _n=n_segment, _f=fold_div: (temporal_shift(args[0], _n, _f),))
    out = pooled(m, spec.feature_dim, spec.name, ident)
    out.n_segment = n_segment
    out.fold_div = fold_div
    return out


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


@dataclasses.dataclass(frozen=True)
class TsmSpec(BackboneSpec):
    """A backbone whose frames interact within clips of `n_segment` frames: whole videos, clips
    grouped by the encoder's ``tsm_grouping``."""

    n_segment: int = 8
    fold_div: int = 8

    whole_video = True

    def forward_batch(self, batch_size: int) -> int:
        """Whole clips per forward pass: `batch_size` rounded down to a multiple of n_segment (one clip at least)."""
        return max(self.n_segment, batch_size // self.n_segment * self.n_segment)

    def embed_video(self, encoder, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, D): the clips of `tsm_order`; padded slots are dropped."""
        t = len(frames)
        slots = tsm_order(t, self.n_segment, encoder.tsm_grouping)
        frame_of = np.minimum(slots, t - 1)
        feats = np.zeros((t, encoder.feature_dim), np.float32)
        bs = encoder.batch_size
        for s in range(0, len(slots), bs):
            out = encoder.embed_batch(frames[frame_of[s:s + bs]])
            sl = slots[s:s + bs]
            real = sl < t
            feats[sl[real]] = out[real]
        return feats

    def fingerprint_fields(self, cfg) -> dict:
        """The clip grouping changes the features."""
        return {"tsm_grouping": cfg.tsm_grouping}

    def describe(self, settings) -> dict:
        """The shift and the clip grouping in force."""
        return {"tsm": {"n_segment": self.n_segment, "fold_div": self.fold_div, "grouping": settings.tsm_grouping,
                        "pad": "repeat last frame", "shift_place": "blockres (conv1 input of every bottleneck)"}}


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    TsmSpec("tsm_r50", build_tsm_r50, 2048, TORCHVISION_V1),  # official TSM Kinetics checkpoint layout
)}
