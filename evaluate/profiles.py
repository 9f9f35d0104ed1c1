"""Test-distribution profiles: the same predictions scored on re-sampled test sets.

A long-tailed method may win on a test set shaped like its training set and lose on a uniform or
inversely long-tailed one. Each profile is a seeded re-sampling of the test set, with replacement,
of the same size N, built class-first so that it works for multi-label videos:

1. class weights ``w_c``: ``as_is`` — the test set unchanged (no re-sampling); ``uniform`` —
   ``w_c = 1``; ``long_tailed`` — ``w_c = n_c`` (the training counts); ``inverse`` — the training
   counts in reversed rank order (the most frequent class gets the least frequent class's count,
   the same imbalance ratio mirrored).
2. N draws: a class ``c ~ w / sum(w)`` over classes with at least one test video, then a video
   uniformly among the test videos labelled ``c``; the video keeps all its labels.

The other labels of a multi-label video come along, so the realised label distribution differs
slightly from ``w``; ``label_distribution`` reports it (max/min positives per class).
"""

from __future__ import annotations

import numpy as np

from evaluate.config import TEST_PROFILES


def class_weights(profile: str, train_counts) -> np.ndarray:
    """Target class weights of a profile (not normalised)."""
    counts = np.asarray(train_counts, dtype=np.float64)
    if profile == "uniform":
        return np.ones_like(counts)
    if profile == "long_tailed":
        return counts.copy()
    if profile == "inverse":
        order = np.argsort(-counts, kind="stable")  # rank -> class, most frequent first
        weights = np.empty_like(counts)
        weights[order] = counts[order[::-1]]
        return weights
    raise ValueError(f"unknown test profile {profile!r}; use one of {TEST_PROFILES}")


def resample(targets: np.ndarray, profile: str, train_counts, seed: int) -> np.ndarray:
    """Row indices into ``targets`` (N, C) forming the profile's test set (``as_is``: all rows)."""
    n = len(targets)
    if profile == "as_is":
        return np.arange(n)
    weights = class_weights(profile, train_counts) * (targets.sum(axis=0) > 0)
    if weights.sum() <= 0:
        raise ValueError(f"profile {profile!r}: no class with both weight and test videos")
    rng = np.random.default_rng(seed)
    classes = rng.choice(len(weights), size=n, p=weights / weights.sum())
    rows_of = {c: np.flatnonzero(targets[:, c]) for c in np.unique(classes)}
    picks = rng.random(n)
    return np.array([rows_of[c][int(u * len(rows_of[c]))] for c, u in zip(classes, picks)], dtype=np.int64)


def label_distribution(targets: np.ndarray) -> dict:
    """Positives per class of a (re-sampled) test set: min, max and their ratio over present classes."""
    positives = targets.sum(axis=0)
    present = positives[positives > 0]
    return {"min_positives": int(present.min()), "max_positives": int(present.max()),
            "ratio": float(present.max() / present.min()), "classes_present": int(len(present))}
