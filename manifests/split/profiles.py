"""Split builders: which videos train, validate and test, and the imbalance profile used.

- ``given``: the dataset's own lists as they are (VideoLT).
- ``minikinetics``: Imbalanced-MiniKinetics200, reproduced exactly (the reference's class ranking,
  exponential profile, first N videos of each class in file order; val = the balanced val list,
  which is also the test set since the benchmark has no other).
- ``exp`` / ``step``: a seeded long-tailed subset of any dataset's training list.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from manifests.datasets import label_counts

# Original MiniKinetics200 class index by rank 0..199: numpy 1.19's unstable argsort of the
# available per-class counts, reversed. Its tie order is not what a stable sort or newer numpy
# gives, so it is fixed here rather than recomputed.
MINIKINETICS_RANK_ORDER = (
    7, 57, 1, 33, 160, 68, 26, 42, 165, 14, 83, 95, 39, 41, 65, 147, 79, 62, 16, 3, 67, 143, 63, 168,
    72, 64, 23, 11, 18, 25, 61, 13, 52, 28, 34, 77, 6, 9, 58, 19, 55, 150, 31, 88, 85, 51, 70, 164,
    22, 45, 20, 48, 24, 12, 43, 66, 75, 69, 74, 17, 38, 71, 40, 2, 0, 4, 151, 47, 37, 50, 82, 159,
    152, 59, 29, 149, 78, 10, 81, 53, 5, 8, 154, 32, 30, 27, 49, 46, 54, 21, 157, 148, 44, 96, 90,
    36, 35, 91, 158, 145, 84, 60, 98, 15, 140, 76, 146, 156, 56, 144, 99, 97, 94, 179, 167, 73, 153,
    87, 86, 170, 80, 166, 92, 100, 93, 176, 155, 125, 101, 126, 174, 121, 169, 180, 112, 192, 102,
    106, 107, 133, 89, 103, 113, 193, 104, 136, 114, 163, 127, 115, 124, 118, 188, 134, 123, 173,
    105, 138, 132, 122, 110, 116, 117, 111, 177, 137, 162, 120, 178, 189, 109, 141, 108, 172, 135,
    129, 187, 171, 130, 161, 181, 175, 139, 131, 119, 194, 183, 128, 190, 142, 184, 195, 191, 182,
    186, 199, 198, 197, 196, 185,
)
PROFILES = ("given", "minikinetics", "exp", "step")


def exp_profile(n_max: int, imbalance: float, num_classes: int) -> np.ndarray:
    """Videos per rank ``int(n_max * imbalance ** (r / (C - 1)))`` (Python float, truncation)."""
    if num_classes == 1:
        return np.array([n_max])
    return np.array([int(n_max * imbalance ** (r / (num_classes - 1))) for r in range(num_classes)])


def step_profile(n_max: int, imbalance: float, num_classes: int) -> np.ndarray:
    """The first ``C // 2`` ranks get ``n_max``, the rest ``int(n_max * imbalance)``."""
    half = num_classes // 2
    return np.array([n_max] * half + [int(n_max * imbalance)] * (num_classes - half))


def rank_classes(counts: np.ndarray) -> tuple:
    """Class indices by rank (most videos first) and whether the MiniKinetics list was used.

    For the 200 MiniKinetics classes the reference's fixed order is used whenever it is consistent
    with the counts (non-increasing along it); otherwise a stable descending sort (ties: lower
    class index first).
    """
    counts = np.asarray(counts)
    if len(counts) == len(MINIKINETICS_RANK_ORDER):
        ordered = counts[list(MINIKINETICS_RANK_ORDER)]
        if np.all(ordered[:-1] >= ordered[1:]):
            return np.array(MINIKINETICS_RANK_ORDER), True
    return np.argsort(-counts, kind="stable"), False


def primary_label(videos: pd.DataFrame) -> np.ndarray:
    """The first listed label of each video (the class it is selected under)."""
    return np.array([labels[0] for labels in videos.labels], dtype=np.int64)


def minikinetics_train(train: pd.DataFrame, num_classes: int, imbalance: float) -> tuple:
    """Imbalanced-MiniKinetics200 training subset: rows kept (file order) and the rank order.

    Rank classes by available videos, ``N_r = int(n_max * imbalance^(r/(C-1)))``, keep the first
    ``min(N_r, available)`` videos of the rank-r class in file order.
    """
    primary = primary_label(train)
    available = np.bincount(primary, minlength=num_classes)
    order, _ = rank_classes(available)
    quota = np.zeros(num_classes, dtype=np.int64)
    quota[order] = exp_profile(int(available.max()), imbalance, num_classes)
    position_in_class = train.groupby(primary).cumcount().to_numpy()
    keep = position_in_class < quota[primary]
    return train[keep], order


def profile_train(train: pd.DataFrame, num_classes: int, profile: str, imbalance: float,
                  max_per_class: int | None, seed: int) -> pd.DataFrame:
    """A seeded ``exp``/``step`` long-tailed subset of any training list (rows keep file order).

    Classes are ranked by available videos (stable); each video is selected under its first label;
    ``n_max`` is ``max_per_class`` or the largest class.
    """
    primary = primary_label(train)
    available = np.bincount(primary, minlength=num_classes)
    order = np.argsort(-available, kind="stable")
    n_max = int(max_per_class) if max_per_class else int(available.max())
    build = exp_profile if profile == "exp" else step_profile
    quota = np.zeros(num_classes, dtype=np.int64)
    quota[order] = build(n_max, imbalance, num_classes)
    rng = np.random.default_rng(seed)
    # A random priority per video; within each class the quota lowest priorities are kept.
    priority = rng.permutation(len(train))
    rank_in_class = (pd.Series(priority).groupby(primary).rank(method="first").to_numpy() - 1)
    return train[rank_in_class < quota[primary]]


def build_split(videos: pd.DataFrame, num_classes: int, profile: str, imbalance: float = 1.0,
                max_per_class: int | None = None, seed: int = 0) -> tuple:
    """Apply a split profile to a canonical video table.

    Returns ``(table, info)``: ``table`` has one row per (video, split) membership with columns
    ``video_id, labels, split`` (a MiniKinetics val clip appears as both val and test), ``info``
    describes what was done (for the manifest summary).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown split profile {profile!r}; use one of {PROFILES}")
    train = videos[videos.split == "train"]
    others = videos[videos.split != "train"]
    info = {"profile": profile}
    if profile == "minikinetics":
        train, order = minikinetics_train(train, num_classes, imbalance)
        info.update(imbalance=imbalance, rank_order=[int(c) for c in order],
                    test_is_val=True)
        val = others[others.split == "val"]
        others = pd.concat([val, val.assign(split="test")])
    elif profile in ("exp", "step"):
        train = profile_train(train, num_classes, profile, imbalance, max_per_class, seed)
        info.update(imbalance=imbalance, max_per_class=max_per_class, seed=seed)
    info["unselected_train"] = int((videos.split == "train").sum() - len(train))
    table = pd.concat([train, others])[["video_id", "labels", "split"]].reset_index(drop=True)
    return table, info


def train_counts(table: pd.DataFrame, num_classes: int) -> np.ndarray:
    """Per-class training label-instance counts of a split table."""
    return label_counts(table[table.split == "train"].labels, num_classes)
