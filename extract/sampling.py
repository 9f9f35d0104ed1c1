"""Frame-index rules.

fixed: ``int(linspace(0, n-1, T))`` (truncation toward zero, repeats for short videos) - the
evaluation rule of the published VideoLT/MOVE code.
fps:   one frame every 1/fps seconds of video, from the decoder's frame count and average rate:
``k = 0..K-1``, ``K = ceil(duration * fps)``, index ``floor(k * rate / fps)`` (capped at n-1).
"""

from __future__ import annotations

import math

import numpy as np

from manifests.frames import uniform_indices as fixed_indices


def fps_indices(n: int, video_fps: float, fps: float, max_frames: int | None = None) -> np.ndarray:
    """One index every 1/fps seconds (variable length); at least one frame."""
    if n < 1:
        raise ValueError(f"video has no frames (n={n})")
    if not video_fps or not math.isfinite(video_fps) or video_fps <= 0:
        video_fps = 25.0  # unknown rate: documented assumption, recorded in the video's meta
    duration = n / video_fps
    k = max(1, int(math.ceil(duration * fps - 1e-9)))
    idx = np.floor(np.arange(k) * (video_fps / fps) + 1e-9).astype(np.int64)
    idx = np.minimum(idx, n - 1)
    if max_frames is not None and len(idx) > max_frames:
        idx = idx[fixed_indices(len(idx), max_frames)]
    return idx


def sample_indices(n: int, *, sampling: str, num_frames: int, video_fps: float = 0.0,
                   fps: float = 1.0, max_frames: int | None = None) -> np.ndarray:
    if sampling == "fixed":
        return fixed_indices(n, num_frames)
    if sampling == "fps":
        return fps_indices(n, video_fps, fps, max_frames)
    raise ValueError(f"unknown sampling {sampling!r}")
