"""Head / medium / tail class groups by training count (the reference code's rule)."""

from __future__ import annotations

import numpy as np

GROUPS = ("head", "medium", "tail")


def assign_groups(train_counts, head: int, tail: int) -> np.ndarray:
    """Return one of "head"/"medium"/"tail" per class.

    The rule of the published code: tail ``n <= tail``, medium ``tail < n <= head``,
    head ``n > head`` (so a class with exactly ``tail`` training instances is tail).
    """
    if tail > head:
        raise ValueError(f"tail threshold ({tail}) must not exceed head threshold ({head})")
    counts = np.asarray(train_counts)
    groups = np.full(counts.shape, "medium", dtype=object)
    groups[counts > head] = "head"
    groups[counts <= tail] = "tail"
    return groups


def group_indices(train_counts, head: int, tail: int) -> dict[str, np.ndarray]:
    """Class indices of each group, as ``{"head": idx, "medium": idx, "tail": idx}``."""
    groups = assign_groups(train_counts, head, tail)
    return {name: np.flatnonzero(groups == name) for name in GROUPS}
