"""Classifier heads of the train stage, by name (:data:`HEADS`, :func:`build`).

Every head maps per-frame features (B, T, D) to raw logits (B, C) (``sigmoid`` for multi-label
probabilities): ``lateavg`` the published VideoLT classifier, ``aggregators`` MOVE's "Baseline + Agg"
(its PSA and NetVLAD, train/aggregators.py). docs/methods.md gives the parameter counts.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from train.aggregators import AggregatedFeatures, as_frames
from train.config import HEADS as HEAD_NAMES

__all__ = [
    "NonlinearClassifier",
    "AggregatorHead",
    "HEADS",
    "build",
    "count_parameters",
]


class NonlinearClassifier(nn.Module):
    """Late-average non-linear classifier ("lateavg").

    ``logits = mean_t project(dropout(relu(fc1(x_t))))``. State-dict keys ``fc1.*``, ``project.*``.
    Default PyTorch initialisation.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 2048, dropout: float = 0.5):
        super().__init__()
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.hidden = int(hidden)
        self.fc1 = nn.Linear(self.in_dim, self.hidden)
        self.relu = nn.ReLU()
        self.drop_layer = nn.Dropout(p=dropout)
        self.project = nn.Linear(self.hidden, self.num_classes)

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame logits (B, T, C)."""
        x = as_frames(x)
        return self.project(self.drop_layer(self.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frame_logits(x).mean(dim=1)


class AggregatorHead(AggregatedFeatures):
    """"Baseline + Agg" (of the published MOVE code): static NetVLAD + static PSA -> NonlinearClassifier.

    ``features(x) = concat([NetVLAD(x) (vlad_hidden), PSA(x) (in_dim)])``; the classifier sees it as a
    one-frame clip ``(B, 1, vlad_hidden + in_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 2048,
        clusters: int = 64,
        vlad_hidden: int = 1024,
        n_head: int = 4,
        dropout: float = 0.5,
        psa_dropout: float = 0.1,
        psa_dim: int | None = 512,
    ):
        """NetVLAD (``clusters``, ``vlad_hidden``) and PSA (``n_head``, ``psa_dim``) then the classifier."""
        super().__init__()
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.add_aggregators(self.in_dim, ("netvlad", "psa"), clusters=clusters, vlad_hidden=vlad_hidden,
                             n_head=n_head, psa_dim=psa_dim, psa_dropout=psa_dropout)
        self.classifier = NonlinearClassifier(self.feature_dim, self.num_classes, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).unsqueeze(1))


HEADS = dict(zip(HEAD_NAMES, (NonlinearClassifier, AggregatorHead), strict=True))  # train.config.HEADS, in order


def build(head: str, in_dim: int, num_classes: int, **kw) -> nn.Module:
    """Build a (B, T, D) -> logits (B, C) model by head name ("lateavg" or "aggregators")."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {sorted(HEADS)}")
    cls = HEADS[head]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "in_dim", "num_classes")]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for head {head!r}; valid: {valid}")
    return cls(in_dim, num_classes, **kw)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

