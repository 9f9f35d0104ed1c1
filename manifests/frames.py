"""Frame-index rules shared by extraction and training (as the published VideoLT/MOVE code samples frames)."""

from __future__ import annotations

import numpy as np


def uniform_indices(n: int, t: int) -> np.ndarray:
    """``int(linspace(0, n-1, T))``: T indices evenly spaced over n frames, truncated toward zero
    (repeats when n < T; n = 7, T = 150 gives multiplicities 25, 25, 25, 25, 25, 24, 1)."""
    if n < 1:
        raise ValueError(f"video has no frames (n={n})")
    if t < 1:
        raise ValueError(f"number of frames must be >= 1 (got {t})")
    return np.linspace(0, n - 1, t).astype(np.int32).astype(np.int64)


def random_indices(n: int, t: int, rng: np.random.Generator) -> np.ndarray:
    """Training frames: ``sort(randint(0, n, T))``, drawn with replacement."""
    return np.sort(rng.integers(0, n, t))
