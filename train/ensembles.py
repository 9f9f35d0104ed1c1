"""Combining experts' predictions: the probability average, and its weights chosen on labelled data
(``val``); the label-free ``agreement`` weights are evaluate/agreement.py's."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluate.agreement import simplex_grid
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


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode (BatchNorm running statistics, no updates) for the block, then back."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
