"""Configuration of the evaluate stage (validated by pydantic; unknown keys are refused)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TEST_PROFILES = ("as_is", "uniform", "long_tailed", "inverse")


class EvaluateConfig(BaseModel):
    """Settings of `evaluate`: which predictions, which split, which test distributions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    predictions: str | None = Field(
        None, description="an .npz with `scores` (N, C) and `video_ids` (N,); default: the train stage's")
    split: Literal["test", "val"] = Field("test", description="which split of the split stage to score")
    test_profiles: list[Literal["as_is", "uniform", "long_tailed", "inverse"]] = Field(
        list(TEST_PROFILES), min_length=1, description="test-set class distributions to score the same predictions on")
    profile_seed: int = Field(0, description="seed of the re-sampled test sets")
