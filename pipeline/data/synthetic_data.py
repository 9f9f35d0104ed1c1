"""A synthetic long-tailed *feature* benchmark: a CPU-sized proving ground for long-tailed methods.

No pixels: per-frame feature vectors are drawn from a generative model with the properties that
make long-tailed video recognition hard, and written as ``<video_id>.npy`` files plus a generic
label CSV, which the pipeline imports into its feature store like released features
(``extract.source=npy``). Split, train and evaluate then run unchanged.

The model (every knob is a field of :class:`SyntheticSpec`):

* **Classes** come in groups of ``group_size`` confusable classes: the prototype of class c in group
  g is ``sqrt(1 - s) * G_g + sqrt(s) * U_c`` with ``s = class_separation`` (G, U standard normal, so
  every dimension has about unit variance), so classes of one group have cosine about ``1 - s``. Group membership ignores frequency: a tail
  class is usually confused with a head class.
* **Intra-class structure**: each class has ``modes`` sub-prototypes (ways the action looks),
  ``mode_spread`` away from its prototype; a video picks one mode and adds ``video_spread`` of its
  own. Tail classes see few modes in training.
* **Frequencies**: train videos per class follow ``profile`` (``exp``: ``n_max * (1/imbalance) **
  (rank / (C - 1))`` like VideoLT's curve; ``step``: ``step_head_share`` of the classes at n_max, the
  rest at ``n_max / imbalance``), classes ranked by a seeded permutation. Val/test get
  ``max(min_*, round(*_fraction * n_c))`` videos per class (every class is measurable).
* **Multi-label**: ``multi_label_share`` of the videos carry a second label, from the same group with
  probability ``cooccurrence`` (else any other class, drawn by frequency). Its signal frames are split
  between the two actions.
* **Untrimmed videos**: ``frames_min..frames_max`` frames; a share ``distractor_min..distractor_max``
  of them are background (one of ``backgrounds`` shared scene vectors), the action is one
  contiguous segment. Every frame gets isotropic ``frame_noise``.

Deterministic for a spec: the class model is drawn from ``seed``, each video from (seed, index).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from manifests.datasets import SPLITS
from manifests.errors import UserError
from manifests.files import publish_dir

GENERATOR_VERSION = 1
# VideoLT's class-group shares (47 head, 340 tail of 1004 classes), used to scale the thresholds.
VIDEOLT_HEAD_SHARE, VIDEOLT_TAIL_SHARE = 47 / 1004, 340 / 1004


class SyntheticSpec(BaseModel):
    """Knobs of the synthetic long-tailed feature benchmark (``dataset.synthetic``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_classes: int = Field(200, ge=2, description="number of classes")
    profile: Literal["exp", "step"] = Field("exp", description="train frequency profile over class ranks")
    imbalance: float = Field(42.0, ge=1, description="n_max / n_min of the train profile")
    max_per_class: int = Field(84, ge=1, description="n_max: train videos of the most frequent class")
    step_head_share: float = Field(0.5, gt=0, lt=1, description="step profile: share of classes at n_max")
    val_fraction: float = Field(0.15, ge=0, description="val videos per class = max(min_val, round(f * n_c))")
    test_fraction: float = Field(0.3, ge=0, description="test videos per class = max(min_test, round(f * n_c))")
    min_val: int = Field(4, ge=1, description="val videos of every class at least")
    min_test: int = Field(8, ge=1, description="test videos of every class at least")
    multi_label_share: float = Field(0.08, ge=0, le=1, description="share of videos with a second label")
    cooccurrence: float = Field(0.5, ge=0, le=1, description="P(second label from the first's group)")
    group_size: int = Field(4, ge=1, description="confusable classes per group")
    class_separation: float = Field(0.5, gt=0, le=1, description="s: share of a prototype that is the class's own")
    modes: int = Field(3, ge=1, description="sub-prototypes (ways an action looks) per class")
    mode_spread: float = Field(0.6, ge=0, description="distance of a mode from its class prototype")
    video_spread: float = Field(1.0, ge=0, description="per-video deviation from its mode")
    frame_noise: float = Field(2.0, ge=0, description="isotropic noise of every frame")
    frames_min: int = Field(8, ge=1, description="fewest frames of a video")
    frames_max: int = Field(16, ge=1, description="most frames of a video")
    distractor_min: float = Field(0.4, ge=0, lt=1, description="smallest share of background frames")
    distractor_max: float = Field(0.75, ge=0, lt=1, description="largest share of background frames")
    backgrounds: int = Field(256, ge=1, description="shared background (scene) vectors")
    dim: int = Field(128, ge=2, description="feature dimension")
    seed: int = Field(0, ge=0, description="seed of the whole benchmark")

    @model_validator(mode="after")
    def _check_ranges(self) -> "SyntheticSpec":
        if self.frames_max < self.frames_min:
            raise ValueError(f"frames_max ({self.frames_max}) must be >= frames_min ({self.frames_min})")
        if self.distractor_max < self.distractor_min:
            raise ValueError(f"distractor_max ({self.distractor_max}) must be >= distractor_min "
                             f"({self.distractor_min})")
        return self


# ----------------------------------------------------------------------------- frequencies

def train_profile(spec: SyntheticSpec) -> np.ndarray:
    """Train videos per class *rank* (rank 0 = most frequent), int64, non-increasing."""
    rank = np.arange(spec.num_classes)
    n_min = spec.max_per_class / spec.imbalance
    if spec.profile == "exp":
        counts = spec.max_per_class * (1 / spec.imbalance) ** (rank / (spec.num_classes - 1))
    else:
        heads = max(1, round(spec.step_head_share * spec.num_classes))
        counts = np.where(rank < heads, spec.max_per_class, n_min)
    return np.maximum(1, np.round(counts)).astype(np.int64)


def group_thresholds(spec: SyntheticSpec) -> tuple:
    """(head, tail) thresholds that give VideoLT's group shares on this profile.

    Rule: with the train profile sorted by decreasing count, ``head`` is the count of rank
    ``round(C * 47/1004)`` (classes above it are head) and ``tail`` the count of rank
    ``C - round(C * 340/1004)`` (classes at or below it are tail), as VideoLT's 500/100 split
    1004 classes into 47 head / 617 medium / 340 tail.
    """
    counts = train_profile(spec)
    c = spec.num_classes
    head_rank = min(c - 1, round(c * VIDEOLT_HEAD_SHARE))
    tail_rank = min(c - 1, max(0, c - round(c * VIDEOLT_TAIL_SHARE)))
    return int(counts[head_rank]), int(counts[tail_rank])


def _split_counts(spec: SyntheticSpec, train: np.ndarray) -> dict:
    return {"train": train,
            "val": np.maximum(spec.min_val, np.round(spec.val_fraction * train)).astype(np.int64),
            "test": np.maximum(spec.min_test, np.round(spec.test_fraction * train)).astype(np.int64)}


def plan_videos(spec: SyntheticSpec) -> tuple:
    """Every video's split and labels: ``(videos, train_count_of_class)``, deterministic in the spec."""
    rng = np.random.default_rng([spec.seed, 1])
    c = spec.num_classes
    rank_of_class = rng.permutation(c)
    per_class = _split_counts(spec, train_profile(spec)[rank_of_class])
    group = np.arange(c) // spec.group_size
    frequency = per_class["train"] / per_class["train"].sum()
    videos = []
    for split in SPLITS:
        primaries = rng.permutation(np.repeat(np.arange(c), per_class[split]))
        second = rng.random(len(primaries)) < spec.multi_label_share
        for primary, multi in zip(primaries.tolist(), second.tolist()):
            labels = [primary]
            if multi:
                labels.append(_second_label(rng, primary, group, frequency, spec.cooccurrence))
            videos.append({"split": split, "labels": labels})
    for index, video in enumerate(videos):
        video["index"], video["video_id"] = index, f"syn_{index:06d}"
    return videos, per_class["train"]


def _second_label(rng, primary: int, group: np.ndarray, frequency: np.ndarray, cooccurrence: float) -> int:
    mates = np.flatnonzero((group == group[primary]) & (np.arange(len(group)) != primary))
    if len(mates) and rng.random() < cooccurrence:
        return int(rng.choice(mates))
    weights = frequency.copy()
    weights[primary] = 0
    return int(rng.choice(len(weights), p=weights / weights.sum()))


# ----------------------------------------------------------------------------- features

class ClassModel:
    """Prototypes, modes and backgrounds of a spec (drawn once from its seed)."""

    def __init__(self, spec: SyntheticSpec):
        rng = np.random.default_rng([spec.seed, 2])
        d, c = spec.dim, spec.num_classes
        groups = -(-c // spec.group_size)
        centers = rng.standard_normal((groups, d))
        own = rng.standard_normal((c, d))
        s = spec.class_separation
        self.prototypes = np.sqrt(1 - s) * centers[np.arange(c) // spec.group_size] + np.sqrt(s) * own
        offsets = rng.standard_normal((c, spec.modes, d))
        self.modes = self.prototypes[:, None, :] + spec.mode_spread * offsets
        self.backgrounds = rng.standard_normal((spec.backgrounds, d))


def video_features(spec: SyntheticSpec, model: ClassModel, index: int, labels: list) -> np.ndarray:
    """(frames, dim) float32 features of video ``index`` with ``labels`` (deterministic)."""
    rng = np.random.default_rng([spec.seed, 3, index])
    d = spec.dim
    frames = int(rng.integers(spec.frames_min, spec.frames_max + 1))
    share = rng.uniform(spec.distractor_min, spec.distractor_max)
    signal = max(len(labels), frames - int(round(share * frames)))
    start = int(rng.integers(0, frames - signal + 1))
    x = np.repeat(model.backgrounds[rng.integers(spec.backgrounds)][None], frames, axis=0)
    segments = np.array_split(np.arange(start, start + signal), len(labels))
    for label, rows in zip(labels, segments):
        mode = model.modes[label, rng.integers(spec.modes)]
        x[rows] = mode + spec.video_spread * rng.standard_normal(d)
    x += spec.frame_noise * rng.standard_normal((frames, d))
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- writing

def _meta(spec: SyntheticSpec, videos: list, train_counts: np.ndarray) -> dict:
    head, tail = group_thresholds(spec)
    return {"format": "vltr-synthetic", "generator_version": GENERATOR_VERSION, "spec": spec.model_dump(),
            "videos": {s: sum(v["split"] == s for v in videos) for s in SPLITS},
            "multi_label_videos": sum(len(v["labels"]) > 1 for v in videos),
            "train_per_class": train_counts.tolist(), "group_thresholds": {"head": head, "tail": tail}}


def is_complete(out_dir: Path, spec: SyntheticSpec) -> bool:
    """True if ``out_dir`` holds a finished set of this generator version and spec."""
    try:
        meta = json.loads((Path(out_dir) / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("generator_version") == GENERATOR_VERSION and meta.get("spec") == spec.model_dump()


def _write_set(tmp: Path, spec: SyntheticSpec, progress: bool) -> None:
    videos, train_counts = plan_videos(spec)
    model = ClassModel(spec)
    (tmp / "features").mkdir()
    rows = ["video_id,path,labels,split"]
    from tqdm.auto import tqdm

    for video in tqdm(videos, desc="synthetic features", unit="video", disable=not progress):
        np.save(tmp / "features" / f"{video['video_id']}.npy",
                video_features(spec, model, video["index"], video["labels"]).astype(np.float16))
        rows.append(f"{video['video_id']},,{';'.join(map(str, video['labels']))},{video['split']}")
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    names = [f"g{c // spec.group_size:03d}_c{c:04d}" for c in range(spec.num_classes)]
    (tmp / "class_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (tmp / "synthetic.json").write_text(json.dumps(_meta(spec, videos, train_counts), indent=1) + "\n",
                                        encoding="utf-8")


def generate_synthetic(out_dir, spec: SyntheticSpec, progress: bool = False) -> Path:
    """Write the benchmark (``labels.csv``, ``class_names.txt``, ``features/<id>.npy``,
    ``synthetic.json``) into ``out_dir``; a finished set of the same spec is reused as it is.

    The set is written to a temporary sibling and renamed into place when complete; a folder that
    holds something else is refused.
    """
    out_dir = Path(out_dir).absolute()
    if is_complete(out_dir, spec):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "synthetic.json").exists():
        raise UserError(f"{out_dir} is not empty and holds no synthetic benchmark; set dataset.root to an "
                        "empty or new folder")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as exc:
        raise UserError(f"cannot write the synthetic benchmark next to {out_dir}: {exc.strerror}") from None
    try:
        _write_set(tmp, spec, progress)
        publish_dir(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a set of another spec
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
