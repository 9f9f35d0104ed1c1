"""Class-aware re-sampling for CBS / SRS (as the published VideoLT code) and MEDC's inverse expert.

Each draw first picks a class ``c*`` and then a video uniformly among the videos labelled ``c*``
(a multi-label video keeps all its labels as targets; ``c*`` only decides the draw):

* ``cbs``: ``c*`` uniform over the classes that have at least one video;
* ``srs``: ``P(c) = sqrt(n_c) / sum_c' sqrt(n_c')`` with ``n_c`` the number of videos containing c
  (the VLT version; MOVE's min-max rescaled vector is not a distribution and is not reproduced);
* ``inv``: ``P(c) ∝ resort(n)_c`` over the classes with videos: the label frequencies in reversed
  rank order (the most frequent class gets the least frequent class's count), MEDC's inversely
  long-tailed expert.

An epoch has ``num_samples`` draws (default: the number of videos, as the reference). The sampler yields
``(video_index, chosen_class)`` pairs; the loss mask for a batch is :func:`resample_mask`. Randomness is
a ``numpy.random.Generator`` seeded with ``seed + epoch`` (call :meth:`ClassAwareSampler.set_epoch`), so
every epoch has a different but reproducible stream (the reference used the global python / numpy RNGs);
:meth:`ClassAwareSampler.draw` also takes the generator to use (the training loop's extra streams).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ClassAwareSampler", "resample_mask", "resort", "MODES"]

MODES = ("cbs", "srs", "inv")


def resort(values) -> np.ndarray:
    """The vector with its order reversed: the class of rank r (descending, ties by class index) gets
    the value of rank C-1-r. ``resort([5, 1, 3]) = [1, 5, 3]``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(-v, kind="stable")  # class index by descending rank
    out = np.empty_like(v)
    out[order] = v[order[::-1]]
    return out


class ClassAwareSampler(Sampler):
    def __init__(
        self,
        video_labels: Sequence[Sequence[int]],
        num_classes: int,
        mode: str = "cbs",
        num_samples: int | None = None,
        seed: int = 0,
    ):
        mode = str(mode).lower()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {list(MODES)}")
        self.mode = mode
        self.num_classes = int(num_classes)
        self.num_videos = len(video_labels)
        per_class: list[list[int]] = [[] for _ in range(self.num_classes)]
        for v, labels in enumerate(video_labels):
            for c in sorted(set(int(c) for c in labels)):
                if not 0 <= c < self.num_classes:
                    raise ValueError(f"video {v} has label {c} outside [0, {self.num_classes})")
                per_class[c].append(v)
        self.class_counts = np.array([len(p) for p in per_class], dtype=np.int64)
        self.classes = np.flatnonzero(self.class_counts > 0)  # classes that can be drawn
        if self.classes.size == 0:
            raise ValueError("no class has any video")
        present = self.class_counts[self.classes].astype(np.float64)
        p = {"cbs": np.ones_like(present), "srs": np.sqrt(present), "inv": resort(present)}[mode]
        self.class_probs = np.zeros(self.num_classes, dtype=np.float64)
        self.class_probs[self.classes] = p / p.sum()
        # videos of all classes concatenated, with per-class offsets
        self._videos = np.array([v for p_ in per_class for v in p_], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]]).astype(np.int64)
        self.num_samples = int(num_samples) if num_samples is not None else self.num_videos
        if self.num_samples < 0:
            raise ValueError("num_samples must be >= 0")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's draws as arrays ``(video_indices, chosen_classes)``, each (num_samples,), from
        ``rng`` (default: a generator seeded with ``seed + epoch``)."""
        rng = rng if rng is not None else np.random.default_rng(self.seed + self.epoch)
        n = self.num_samples
        if self.mode == "cbs":
            classes = self.classes[rng.integers(0, self.classes.size, size=n)]
        else:
            classes = rng.choice(self.classes, size=n, p=self.class_probs[self.classes])
        counts = self.class_counts[classes]
        pick = rng.integers(0, counts)  # uniform in [0, n_c) per draw
        videos = self._videos[self._offsets[classes] + pick]
        return videos, classes.astype(np.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        videos, classes = self.draw()
        return iter(zip(videos.tolist(), classes.tolist()))


def resample_mask(targets: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Loss mask ``1 - (y - onehot(c*))``: the video's other positives get 0, ``c*`` and negatives 1."""
    chosen = torch.as_tensor(chosen, device=targets.device).long().reshape(-1)
    if targets.dim() != 2 or chosen.shape[0] != targets.shape[0]:
        raise ValueError(f"targets must be (B, C) and chosen (B,), got {tuple(targets.shape)}, {tuple(chosen.shape)}")
    onehot = torch.zeros_like(targets)
    onehot[torch.arange(targets.shape[0], device=targets.device), chosen] = 1
    return 1 - (targets - onehot)
