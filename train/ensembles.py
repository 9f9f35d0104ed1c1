"""Combining experts' predictions: the probability average, and its weights chosen on labelled data
(``val``) or without labels from the agreement of two views of each video (``agreement``)."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluate.metrics import average_precision


def combine_experts(logits: list, inference: str = "probabilities", weights=None) -> torch.Tensor:
    """Combine per-expert logits (each (B, C)) into one (B, C) logit tensor: ``probabilities``
    ``logit(sum_e w_e sigmoid(s_e))``, ``logits`` ``sum_e w_e s_e``; ``weights`` (E,) sum to 1
    (default uniform). A zero weight drops its expert."""
    s = torch.stack(logits, dim=0)
    w = (torch.full((len(logits),), 1.0 / len(logits)) if weights is None
         else torch.as_tensor(weights, dtype=torch.float32)).to(device=s.device, dtype=s.dtype).view(-1, 1, 1)
    if inference == "logits":
        return (w * s).sum(dim=0)
    if inference != "probabilities":
        raise ValueError(f"inference must be probabilities or logits, got {inference!r}")
    # logit(sum_e w_e sigmoid(s_e)) = log(sum_e w_e sigmoid(s_e)) - log(sum_e w_e sigmoid(-s_e))
    log_w = torch.log(w)
    return torch.logsumexp(log_w + F.logsigmoid(s), dim=0) - torch.logsumexp(log_w + F.logsigmoid(-s), dim=0)


def simplex_grid(experts: int, step: float) -> np.ndarray:
    """Weight vectors on the simplex with entries in multiples of ``step``, nearest to uniform first."""
    k = int(round(1 / step))
    points = [p for p in itertools.product(range(k + 1), repeat=experts) if sum(p) == k]
    grid = np.array(points, dtype=np.float64) / k
    return grid[np.argsort(np.abs(grid - 1.0 / experts).sum(axis=1), kind="stable")]


def choose_expert_weights(logits: list, targets: np.ndarray, step: float = 0.1) -> tuple:
    """``(weights, mAP)``: the :func:`simplex_grid` point whose probability average has the highest mAP on
    ``targets`` (ties: nearest to uniform)."""
    s = [torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in logits]
    best, best_map = None, -1.0
    for w in simplex_grid(len(s), step):
        score = float(average_precision(combine_experts(s, "probabilities", w).numpy(), targets).mean())
        if score > best_map:
            best, best_map = w, score
    return best, best_map


def view_agreement(view_a: list, view_b: list, weights) -> float:
    """Mean over videos of the cosine between two views' weighted probability averages, each class's mean
    over the videos removed first (so an expert's prior alone does not count as agreement)."""
    w = torch.as_tensor(weights, dtype=torch.float64).view(-1, 1, 1)
    a = (w * torch.sigmoid(torch.stack(view_a).double())).sum(0)
    b = (w * torch.sigmoid(torch.stack(view_b).double())).sum(0)
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    return float(F.cosine_similarity(a, b, dim=1, eps=1e-12).mean())


def agreement_weights(view_a: list, view_b: list, step: float = 0.1) -> tuple:
    """``(weights, agreement)``: the simplex-grid point (step ``step``) whose probability average agrees most
    between the two views (:func:`view_agreement`); ties go to the point nearest uniform. Reads no labels."""
    a = [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in view_a]
    b = [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in view_b]
    best, best_score = None, -np.inf
    for w in simplex_grid(len(a), step):
        score = view_agreement(a, b, w)
        if score > best_score + 1e-12:
            best, best_score = w, score
    return best, best_score


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode (BatchNorm running statistics, no updates) for the block, then back."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
