"""Label-free expert weights: the simplex-grid point whose probability average agrees most between two
views of each video (SADE's test-agnostic idea, for multi-label sigmoid outputs). Pure numpy; the train
stage fits it on the whole test split, the evaluate stage again on each test-distribution profile."""

from __future__ import annotations

import itertools

import numpy as np


def simplex_grid(experts: int, step: float) -> np.ndarray:
    """Weight vectors on the simplex with entries in multiples of ``step``, nearest to uniform first."""
    k = int(round(1 / step))
    points = [p for p in itertools.product(range(k + 1), repeat=experts) if sum(p) == k]
    grid = np.array(points, dtype=np.float64) / k
    return grid[np.argsort(np.abs(grid - 1.0 / experts).sum(axis=1), kind="stable")]


def sigmoid(logits) -> np.ndarray:
    """Float64 probabilities of stacked logits (any shape)."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def centred_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine between ``a`` and ``b`` (N, C), each column's mean over the rows removed."""
    a, b = a - a.mean(axis=0, keepdims=True), b - b.mean(axis=0, keepdims=True)
    norms = np.sqrt(np.maximum((a * a).sum(axis=1) * (b * b).sum(axis=1), 1e-24))
    return float(((a * b).sum(axis=1) / norms).mean())


def view_agreement(view_a: list, view_b: list, weights) -> float:
    """Mean over videos of the cosine between two views' weighted probability averages (per-expert (N, C)
    logits), each class's mean over the videos removed first (so an expert's prior alone is not agreement)."""
    return _mix_agreement(sigmoid(np.stack(view_a)), sigmoid(np.stack(view_b)), weights)


def _mix_agreement(probs_a: np.ndarray, probs_b: np.ndarray, weights) -> float:
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1)
    return centred_cosine((w * probs_a).sum(axis=0), (w * probs_b).sum(axis=0))


def agreement_weights(view_a: list, view_b: list, step: float = 0.1) -> tuple:
    """``(weights, agreement)``: the simplex-grid point (step ``step``) whose probability average agrees most
    between the two views (:func:`view_agreement`); ties go to the point nearest uniform. Reads no labels."""
    a, b = sigmoid(np.stack(view_a)), sigmoid(np.stack(view_b))
    best, best_score = None, -np.inf
    for w in simplex_grid(len(a), step):
        score = _mix_agreement(a, b, w)
        if score > best_score + 1e-12:
            best, best_score = w, score
    return best, best_score


def mix_logits(logits: np.ndarray, weights) -> np.ndarray:
    """The logit of the weighted probability average of stacked per-expert logits (E, N, C), in float64:
    ``log(sum_e w_e sigmoid(s_e)) - log(sum_e w_e sigmoid(-s_e))``, exact where probabilities saturate."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1)
    s = np.asarray(logits, dtype=np.float64)
    return np.log((w * sigmoid(s)).sum(axis=0)) - np.log((w * sigmoid(-s)).sum(axis=0))
