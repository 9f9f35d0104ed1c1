"""Multi-label sigmoid-BCE loss family of the VideoLT baselines (as the published VideoLT code).

Every loss is an ``nn.Module`` with ``forward(logits, targets, mask=None) -> scalar`` and
``set_epoch(epoch)`` (a no-op except for LDAM-DRW). ``logits`` and ``targets`` are (B, C); targets may be
soft (mixup / FrameStack).

Reduction:

* ``mask is None``: mean over all B x C elements (the reference ``reduction="mean"``);
* ``mask`` (B, C) given (CBS/SRS re-sampling, see :func:`train.samplers.resample_mask`):
  ``mean over the batch of (sum over classes of mask * l)`` exactly as the reference ``rs_train``.

Losses (built by :func:`build`; default parameters reproduce the reference exactly):

``bce``
    plain ``BCE_with_logits``.
``focal``  (``gamma=1.0``, ``alpha=1.0``)
    ``l = BCE``, ``p_t = exp(-l)``, ``alpha * (1 - p_t)^gamma * l``.
``cb``  (``beta=0.9999``)
    per-class weight ``w_c = (1-beta)/(1-beta^n_c)`` normalised to sum C (mean 1), multiplying both the
    positive and the negative term of class c.
``ldam_drw``  (``max_m=0.5``, ``s=30``, ``drw_epoch=50``, ``beta=0.9999``, ``ldam_margin="sum"``)
    margins ``m_c ∝ n_c^-1/4`` with ``max m = max_m``; per video ``Delta_i = sum_c y_ic m_c`` (for hard
    targets: the SUM of the margins of all its positive labels, as the reference), subtracted from every
    positive logit (positive = ``y`` truncated to an integer is non-zero, the reference's uint8 cast);
    ``loss = BCE(s * z', y, weight=w_DRW)``. ``set_epoch(e)``: ``w_DRW = 1`` for ``e < drw_epoch`` and the
    CB weights with ``beta`` from ``drw_epoch`` on (``drw_epoch=0``: CB weights from the start, i.e.
    MOVE's ``--reset 0``). Before any ``set_epoch`` call the epoch-0 weights are used.
    Opt-in corrected variants (NOT the reference): ``ldam_margin="max"`` subtracts
    ``max_{c positive} m_c`` instead of the sum; ``ldam_margin="per_class"`` subtracts each positive
    class's own margin ``m_c`` from its own logit (the natural multi-label LDAM).
``eql``  (``gamma=1.76e-3``, ``max_tail_num=100``, ``generator=None``)
    rare flag ``T_c = [n_c <= max_tail_num]``; a fresh ``U[0,1)`` float32 draw per element per call,
    ``beta = [U >= 1 - gamma]``, ``w = 1 - beta * T_c * (1 - y)``, ``loss = w * BCE``. ``generator``
    (a ``torch.Generator``) makes the draws reproducible; the uniforms are drawn on the generator's
    device and moved to the logits' device.

Class counts ``n_c`` are training label-instance counts (``count-labels-train``); a class with
``n_c = 0`` (impossible on VideoLT, possible on ad-hoc subsets) is treated as ``n_c = 1`` in the CB
weights and LDAM margins instead of producing ``inf``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "cb_weights",
    "ldam_margins",
    "LOSSES",
    "build",
    "register_loss",
    "count_vector",
    "MultiLabelLoss",
    "BCELoss",
    "FocalLoss",
    "CBLoss",
    "LDAMDRWLoss",
    "EQLLoss",
]


def count_vector(counts) -> np.ndarray:
    """Per-class training counts (list, array or tensor) as a float64 vector, validated."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    arr = np.asarray(counts, dtype=np.float64).reshape(-1)
    if arr.size == 0 or np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError("class_counts must be a non-empty vector of finite, non-negative counts")
    return arr


def _counts_array(counts) -> np.ndarray:
    return np.maximum(count_vector(counts), 1.0)


def cb_weights(counts, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights ``(1-beta)/(1-beta^n_c)`` normalised to sum C (float64 tensor)."""
    n = _counts_array(counts)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    w = w / np.sum(w) * len(n)
    return torch.from_numpy(w)


def ldam_margins(counts, max_m: float = 0.5) -> torch.Tensor:
    """LDAM margins ``n_c^-1/4`` rescaled so that the largest (smallest n) equals ``max_m`` (float64)."""
    n = _counts_array(counts)
    m = 1.0 / np.sqrt(np.sqrt(n))
    m = m * (max_m / np.max(m))
    return torch.from_numpy(m)


class MultiLabelLoss(nn.Module):
    """Base class: subclasses implement ``elementwise(logits, targets) -> (B, C)``."""

    name = "base"
    requires_counts = False

    def __init__(self, class_counts=None):
        super().__init__()
        self.num_classes = None if class_counts is None else int(_counts_array(class_counts).size)

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Per-epoch hook; no-op except for LDAM-DRW."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if logits.shape != targets.shape or logits.dim() != 2:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be (B, C)")
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ValueError(f"loss built for {self.num_classes} classes, got logits with {logits.shape[1]}")
        targets = targets.to(dtype=logits.dtype)
        l = self.elementwise(logits, targets)
        if mask is None:
            return l.mean()
        if mask.shape != l.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match logits {tuple(l.shape)}")
        return (mask.to(dtype=l.dtype) * l).sum(dim=1).mean()


class BCELoss(MultiLabelLoss):
    name = "bce"

    def elementwise(self, logits, targets):
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class FocalLoss(MultiLabelLoss):
    name = "focal"

    def __init__(self, class_counts=None, gamma: float = 1.0, alpha: float = 1.0):
        super().__init__(class_counts)
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def elementwise(self, logits, targets):
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        pt = torch.exp(-bce)
        return self.alpha * (1 - pt) ** self.gamma * bce


class CBLoss(MultiLabelLoss):
    name = "cb"
    requires_counts = True

    def __init__(self, class_counts, beta: float = 0.9999):
        super().__init__(class_counts)
        self.beta = float(beta)
        self.register_buffer("weight", cb_weights(class_counts, self.beta).float())

    def elementwise(self, logits, targets):
        return F.binary_cross_entropy_with_logits(
            logits, targets, weight=self.weight.to(logits), reduction="none"
        )


class LDAMDRWLoss(MultiLabelLoss):
    name = "ldam_drw"
    requires_counts = True
    MARGIN_MODES = ("sum", "max", "per_class")

    def __init__(
        self,
        class_counts,
        max_m: float = 0.5,
        s: float = 30.0,
        drw_epoch: int = 50,
        beta: float = 0.9999,
        ldam_margin: str = "sum",
    ):
        super().__init__(class_counts)
        if ldam_margin not in self.MARGIN_MODES:
            raise ValueError(f"unknown ldam_margin {ldam_margin!r}; valid: {list(self.MARGIN_MODES)}")
        if int(drw_epoch) < 0:
            raise ValueError("drw_epoch must be >= 0")
        self.max_m = float(max_m)
        self.s = float(s)
        self.drw_epoch = int(drw_epoch)
        self.beta = float(beta)
        self.ldam_margin = ldam_margin
        self._counts = _counts_array(class_counts)
        self.register_buffer("m_list", ldam_margins(self._counts, self.max_m).float())
        self.register_buffer("weight", torch.ones(len(self._counts)))
        self.epoch = None
        self.set_epoch(0)

    def drw_beta(self, epoch: int) -> float:
        if self.drw_epoch == 0:
            return self.beta
        return [0.0, self.beta][min(int(epoch) // self.drw_epoch, 1)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        w = cb_weights(self._counts, self.drw_beta(epoch)).float()
        self.weight.copy_(w.to(self.weight.device))

    def elementwise(self, logits, targets):
        m = self.m_list.to(logits)
        positive = targets.to(torch.uint8).bool()  # the reference's uint8 cast (truncation)
        if self.ldam_margin == "sum":
            delta = torch.matmul(targets, m).unsqueeze(1)  # (B, 1)
        elif self.ldam_margin == "max":
            delta = (targets * m).amax(dim=1, keepdim=True)
        else:  # per_class
            delta = m.unsqueeze(0)
        z = torch.where(positive, logits - delta, logits)
        return F.binary_cross_entropy_with_logits(
            self.s * z, targets, weight=self.weight.to(logits), reduction="none"
        )


class EQLLoss(MultiLabelLoss):
    name = "eql"
    requires_counts = True

    def __init__(
        self,
        class_counts,
        gamma: float = 1.76e-3,
        max_tail_num: float = 100,
        generator: torch.Generator | None = None,
    ):
        super().__init__(class_counts)
        self.gamma = float(gamma)
        self.max_tail_num = max_tail_num
        self.generator = generator
        n = _counts_array(class_counts)
        # note: _counts_array clamps 0 -> 1, irrelevant for the <= threshold test
        self.register_buffer("tail_flag", torch.from_numpy((n <= max_tail_num).astype(np.float32)))

    def draw_uniform(self, shape, device) -> torch.Tensor:
        g = self.generator
        if g is None:
            return torch.rand(shape, device=device)
        return torch.rand(shape, generator=g, device=g.device).to(device)

    def elementwise(self, logits, targets):
        u = self.draw_uniform(logits.shape, logits.device)
        beta = (u >= 1 - self.gamma).to(logits.dtype)
        w = 1 - beta * self.tail_flag.to(logits) * (1 - targets)
        return w * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


LOSSES = {
    "bce": BCELoss,
    "focal": FocalLoss,
    "cb": CBLoss,
    "ldam_drw": LDAMDRWLoss,
    "eql": EQLLoss,
}


def register_loss(name: str):
    """Class decorator: make a :class:`MultiLabelLoss` subclass buildable as ``name`` (a recipe's
    ``loss_name``; its parameters are then set as ``train.loss.<name>.<parameter>``)."""
    def add(cls):
        LOSSES[name] = cls
        return cls
    return add


# the reference repositories' --loss_func names
_ALIASES = {"bceloss": "bce", "focalloss": "focal", "cbloss": "cb", "ldam": "ldam_drw", "ldam-drw": "ldam_drw"}


def _param_names(cls) -> list[str]:
    import inspect

    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "class_counts")]


def build(name: str, class_counts: Sequence[float] | np.ndarray | torch.Tensor | None = None, **params) -> MultiLabelLoss:
    """Build a loss by name (``bce``, ``focal``, ``cb``, ``ldam_drw``, ``eql``).

    ``class_counts``: per-class training counts (length C); required for ``cb``, ``ldam_drw``, ``eql``,
    optional for ``bce`` / ``focal`` (used only to check the class dimension).
    """
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {sorted(LOSSES)}")
    cls = LOSSES[key]
    valid = _param_names(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for loss {key!r}; valid: {valid}")
    if cls.requires_counts and class_counts is None:
        raise ValueError(f"loss {key!r} needs class_counts")
    return cls(class_counts, **params)
