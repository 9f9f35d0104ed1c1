"""Helpers of the extract tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pandas as pd


def make_video(path, width=96, height=64, frames=20, fps=25, seed=0, codec="libx264", pix_fmt="yuv420p",
               vfr=False):
    """A real encoded video whose frames differ (moving random texture + a frame-number ramp)."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = width, height, pix_fmt
    if vfr:
        s.codec_context.time_base = fractions.Fraction(1, 1000)
        s.time_base = fractions.Fraction(1, 1000)
    t = 0
    for i in range(frames):
        img = np.roll(base, 3 * i, axis=1).copy()
        img[: max(1, height // 8)] = (i * 11) % 256
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        if vfr:
            f.pts = t
            f.time_base = fractions.Fraction(1, 1000)
            t += 20 if i % 2 else 70
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return str(path)


def make_audio_only(path):
    import av

    c = av.open(str(path), "w")
    s = c.add_stream("aac", rate=16000)
    fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    fr.sample_rate = 16000
    for i in range(10):
        fr.pts = i * 1024
        for p in s.encode(fr):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return str(path)


def table(video_dir: Path, names) -> pd.DataFrame:
    rows = []
    for n in names:
        if n is None:
            continue
        stem = n.split(".")[0]
        rows.append({"video_id": stem, "path": str(video_dir / n), "labels": [0], "split": "train"})
    return pd.DataFrame(rows)
