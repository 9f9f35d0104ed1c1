"""MOVE (AAAI'23): dynamic PSA + NetVLAD aggregators, Dynamic Frame Sampler, dynamic extrapolation and
calibrated interpolation, as in the published MOVE code.

:class:`Move` is the recipe of ``train.method=move`` and :class:`MoveModel` its model; the training step,
the order of the random draws and the ``train.compat=reference`` quirks are described in docs/methods.md
(MOVE), the deviations from the published code in docs/decisions.md (MOVE).
"""

from __future__ import annotations

import numpy as np
import torch

from train import augment, losses
from train.aggregators import AggregatedFeatures, aggregator_order
from train.config import MoveConfig, TrainConfig
from train.losses import count_vector
from train.methods import Recipe
from train.models import NonlinearClassifier

__all__ = [
    "dfs_bounds",
    "video_bounds",
    "calibration",
    "calibrated_targets",
    "beta22",
    "sample_counts",
    "random_subsets",
    "MoveModel",
    "Move",
]


# --------------------------------------------------------------------------- DFS constants

def dfs_bounds(class_counts, train_frames: int = 60, sigma: float = 3.0):
    """Per-class DFS lower bound ``lb_c`` (float64) and the min-max normalised frequency ``c~_c``.

    ``p_c = n_c / sum(n)``, ``c~_c = (p_c - min p) / (max p - min p)``, ``lb_c = max(c~_c * train_frames,
    sigma)`` (the published MOVE bound; computed in float64 through ``p`` like the reference). When every
    class has the same count ``c~ = 0`` (no class is a head class; the reference would divide by zero).
    """
    n = count_vector(class_counts)
    total = n.sum()
    p = n / total if total > 0 else n
    span = p.max() - p.min()
    c_tilde = (p - p.min()) / span if span > 0 else np.zeros_like(p)
    lb = np.maximum(c_tilde * float(train_frames), float(sigma))
    return lb, c_tilde


def video_bounds(lb, y) -> np.ndarray:
    """``L_i = uint32(mean of lb over the labels of video i)`` for multi-hot ``y`` (B, C).

    A video without labels gets ``uint32(min lb)`` (the floor); sampling clamps ``L`` to ``[1, T]``.
    """
    lb = np.asarray(lb, dtype=np.float64).reshape(-1)
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    labels = np.asarray(y) > 0
    if labels.ndim != 2 or labels.shape[1] != lb.size:
        raise ValueError(f"y must be (B, {lb.size}), got {labels.shape}")
    out = np.empty(labels.shape[0], dtype=np.uint32)
    for i, row in enumerate(labels):
        out[i] = np.uint32(np.mean(lb[row]) if row.any() else lb.min())
    return out


def calibration(c_tilde, gamma: float = 0.5):
    """Per-class target scale ``s_c = 1 - c~_c + gamma`` (MOVE's calibrated targets); numpy in, numpy out."""
    return 1.0 - np.asarray(c_tilde, dtype=np.float64) + float(gamma)


def calibrated_targets(y_mixed: torch.Tensor, s) -> torch.Tensor:
    """``clamp(y_mixed * s, 0, 1)`` with the per-class scale ``s`` (C,)."""
    s = torch.as_tensor(s, dtype=y_mixed.dtype, device=y_mixed.device)
    return torch.clamp(y_mixed * s, 0.0, 1.0)


# --------------------------------------------------------------------------- random draws

def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def beta22(generator: torch.Generator | None = None) -> float:
    """One Beta(2, 2) variate: the median of three Uniform(0, 1) (float64) draws."""
    u = torch.rand(3, generator=generator, device=_gen_device(generator), dtype=torch.float64)
    return float(u.median().item())


def sample_counts(bounds: torch.Tensor, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k_i ~ U{L_i..T}`` for each video (int64, on the generator's device); ``L`` clamped to [1, T]."""
    low = bounds.to(device=_gen_device(generator), dtype=torch.float64).clamp(1, frames)
    u = torch.rand(low.shape, generator=generator, device=low.device, dtype=torch.float64)
    k = low + torch.floor(u * (frames - low + 1))
    return k.clamp(max=frames).long()


def random_subsets(k: torch.Tensor, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) bool: a uniformly random subset of ``k_i`` of the ``T`` frames for each video."""
    u = torch.rand((k.shape[0], frames), generator=generator, device=k.device)
    ranks = u.argsort(dim=1).argsort(dim=1)
    return ranks < k.to(ranks.device).unsqueeze(1)


# --------------------------------------------------------------------------- model

class MoveModel(AggregatedFeatures):
    """MOVE's aggregators and classifier. ``forward`` is the static (evaluation) path.

    ``features(x) = concat([PSA(x) (in_dim), NetVLAD(x) (vlad_hidden)])`` (either alone with
    ``aggregators=psa|netvlad``) -> ``classifier`` = ``NonlinearClassifier(feature_dim)`` on the
    one-frame clip ``(B, 1, feature_dim)``.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 2048, aggregators: str = "both",
                 clusters: int = 64, vlad_hidden: int = 1024, n_head: int = 4, dropout: float = 0.5,
                 psa_dropout: float = 0.1, psa_dim: int | None = 512):
        """The aggregators named by ``aggregators`` (PSA, then NetVLAD) then the classifier on their features."""
        super().__init__()
        self.in_dim, self.num_classes, self.aggregators = int(in_dim), int(num_classes), aggregators
        self.add_aggregators(self.in_dim, aggregator_order(aggregators), clusters=clusters, vlad_hidden=vlad_hidden,
                             n_head=n_head, psa_dim=psa_dim, psa_dropout=psa_dropout)
        self.classifier = NonlinearClassifier(self.feature_dim, self.num_classes, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).unsqueeze(1))

    # ---------------------------------------------------------------- dynamic path (training)
    def dynamic_psa(self, x: torch.Tensor, bounds: torch.Tensor, views: int = 2,
                    generator: torch.Generator | None = None, reference: bool = False, info: dict | None = None):
        """Dynamic PSA: ``views`` subset-mean queries and one shared random key mask -> (B, views, D)."""
        b, t, _ = x.shape
        masks = []
        for _ in range(views):
            k = sample_counts(bounds, t, generator)
            masks.append(random_subsets(k, t, generator))
        q_mask = torch.stack(masks, dim=1).to(device=x.device, dtype=x.dtype)  # (B, V, T)
        query = torch.matmul(q_mask, x) / q_mask.sum(dim=2, keepdim=True)  # subset means
        k_key = sample_counts(bounds, t, generator)
        sampled = random_subsets(k_key, t, generator).to(x.device)  # (B, T): the k' sampled frames
        key_mask = ~sampled if reference else sampled  # reference: the sampled frames are EXCLUDED
        out, attn = self.psa(x, query=query, key_mask=key_mask, return_attn=True)
        if info is not None:
            info.update(psa_query_mask=q_mask.bool(), psa_key_mask=key_mask, psa_attn=attn)
        return out

    def dynamic_netvlad(self, x: torch.Tensor, bounds: torch.Tensor, views: int = 2,
                        generator: torch.Generator | None = None, reference: bool = False,
                        info: dict | None = None):
        """Dynamic NetVLAD: ``views`` independently masked copies pooled as one batch -> list of (B, hidden)."""
        b, t, _ = x.shape
        xn = self.netvlad.normalise(x)
        if reference:
            xn = xn.detach()  # the reference pools a detached copy: bn1's affine parameters get no gradient
        masks = []
        for _ in range(views):
            k = sample_counts(bounds, t, generator)
            masks.append(random_subsets(k, t, generator))
        frame_mask = torch.cat(masks, dim=0).to(x.device)  # (V*B, T)
        pooled = self.netvlad.pool(xn.repeat(views, 1, 1), frame_mask)  # BN layers see V*B rows
        if info is not None:
            info.update(vlad_masks=torch.stack(masks, dim=1))
        return list(pooled.split(b, dim=0))

    def dynamic_views(self, x: torch.Tensor, bounds: torch.Tensor, views: int = 2,
                      generator: torch.Generator | None = None, reference: bool = False,
                      info: dict | None = None) -> list:
        """The ``views`` dynamic features ``F_v = [PSA_v, VLAD_v]``, each (B, feature_dim)."""
        psa = vlad = None
        if self.psa is not None:
            psa = self.dynamic_psa(x, bounds, views, generator, reference, info)
        if self.netvlad is not None:
            vlad = self.dynamic_netvlad(x, bounds, views, generator, reference, info)
        out = []
        for v in range(views):
            parts = ([psa[:, v]] if psa is not None else []) + ([vlad[v]] if vlad is not None else [])
            out.append(torch.cat(parts, dim=1))
        return out


class Move(Recipe):
    """``train.method=move``: see docs/methods.md (MOVE)."""

    loss_name = "bce"

    def __init__(self, name: str, cfg: TrainConfig, in_dim: int, num_classes: int, class_counts,
                 options: dict | None = None):
        """The model sized by the ``move`` section, the DFS bounds and the calibration of ``class_counts``."""
        self.name, self.cfg, self.options = name, cfg, options or {}
        self.move = self.section("move", MoveConfig)
        self.reference = cfg.compat == "reference"
        counts = np.asarray(class_counts)
        if counts.shape != (num_classes,):
            raise ValueError(f"class_counts has shape {counts.shape}, expected ({num_classes},)")
        self.lb, self.c_tilde = dfs_bounds(counts, cfg.train_frames, self.move.lb)
        self.scale = calibration(self.c_tilde, self.move.calib_bias)
        self.model = MoveModel(in_dim, num_classes, hidden=cfg.hidden, aggregators=self.move.aggregators,
                               clusters=self.move.clusters, vlad_hidden=self.move.vlad_hidden,
                               n_head=self.move.n_head, dropout=cfg.dropout, psa_dim=self.move.psa_dim)
        self.criterion = losses.build(self.loss_name, counts, **cfg.loss.get(self.loss_name, {}))
        self.last: dict = {}  # what the last training step did (for tests and debugging)

    def clip_parameters(self):
        """MOVE never clips gradients, as the published MOVE code (see docs/decisions.md, MOVE)."""
        return []

    def start_epoch(self, epoch: int) -> None:
        self.criterion.set_epoch(epoch)

    def training_loss(self, x, y, chosen, generator):
        """BCE of the classifier on the extrapolated, calibrated-interpolated dynamic views (docs/methods.md)."""
        model = self.model
        views = 2 if self.move.extrapolation else 1
        bounds = torch.from_numpy(video_bounds(self.lb, y).astype(np.int64))
        info: dict = {"bounds": bounds, "views": views}
        feats = model.dynamic_views(x, bounds, views, generator, self.reference, info)
        if self.move.extrapolation:
            omega = 1.0 + beta22(generator)
            e = omega * feats[0] + (1.0 - omega) * feats[1]
        else:
            omega, e = None, feats[0]
        if self.move.interpolation:
            e, y_mixed, lam = augment.mixup(e, y, generator)
            target = calibrated_targets(y_mixed, self.scale)
        else:
            lam, target = None, y
        info.update(omega=omega, lam=lam, target=target)
        self.last = info
        logits = model.classifier(e.unsqueeze(1))
        return self.criterion(logits, target)
