"""Plots of per-class results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from manifests.files import atomic_path

GROUP_COLOURS = {"tail": "#d62728", "medium": "#ff7f0e", "head": "#1f77b4"}


def ap_vs_frequency(path: Path, train_counts, ap, groups, head: int, tail: int, title: str = "") -> None:
    """Per-class AP against training count (log x) with head/medium/tail bands and a running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(train_counts, dtype=np.float64)
    ap = np.asarray(ap, dtype=np.float64)
    groups = np.asarray(groups)
    x = np.maximum(counts, 0.5)  # a class without training videos is drawn at 0.5 on the log axis
    lo, hi = x.min() / 1.3, x.max() * 1.3
    fig, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, (left, right) in {"tail": (lo, tail + 0.5), "medium": (tail + 0.5, head + 0.5),
                                "head": (head + 0.5, hi)}.items():
        if right > left and (groups == name).any():
            axis.axvspan(max(left, lo), min(right, hi), color=GROUP_COLOURS[name], alpha=0.08)
            axis.scatter(x[groups == name], ap[groups == name], s=12, color=GROUP_COLOURS[name],
                         label=f"{name} ({(groups == name).sum()} classes, mAP {ap[groups == name].mean():.3f})")
    order = np.argsort(x, kind="stable")
    window = max(3, len(x) // 20)
    if len(x) >= window:
        running = np.convolve(ap[order], np.ones(window) / window, mode="valid")
        centre = x[order][window // 2: window // 2 + len(running)]
        axis.plot(centre, running, color="black", linewidth=1.5, label=f"running mean ({window} classes)")
    axis.set_xscale("log")
    axis.set_xlim(lo, hi)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("training instances per class (log)")
    axis.set_ylabel("average precision")
    axis.set_title(title or "Per-class AP against training frequency")
    axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
