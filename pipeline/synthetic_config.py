"""The synthetic benchmark's config section (``dataset.synthetic``) and what follows from it alone:
its train profile and the group thresholds that give VideoLT's group shares (docs/lt_benchmark.md)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        """frames_min <= frames_max and distractor_min <= distractor_max."""
        if self.frames_max < self.frames_min:
            raise ValueError(f"frames_max ({self.frames_max}) must be >= frames_min ({self.frames_min})")
        if self.distractor_max < self.distractor_min:
            raise ValueError(f"distractor_max ({self.distractor_max}) must be >= distractor_min "
                             f"({self.distractor_min})")
        return self


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
