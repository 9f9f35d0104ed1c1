"""Configuration of the train stage (validated by pydantic; unknown keys are refused).

Defaults are the published recipe (REFERENCE.md section 3.1): Adam 1e-4, steps x0.1 at epochs 30
and 60, 100 epochs, batch 128, gradient clipping 20, 60 random training frames and 150 uniform
evaluation frames, evaluation every 5 epochs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

METHODS = ("baseline", "focal", "ldam_drw", "eql", "cb_loss", "cbs", "srs", "mixup", "framestack")
Method = Literal["baseline", "focal", "ldam_drw", "eql", "cb_loss", "cbs", "srs", "mixup", "framestack"]


class TrainConfig(BaseModel):
    """Settings of `train`: method, head, schedule, data loading, selection protocol."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: Method | list[Method] = Field("baseline", description="a method, or a list run one after another")
    head: Literal["lateavg", "aggregators"] = Field("lateavg", description="late-averaged MLP or PSA+NetVLAD")
    hidden: int = Field(2048, ge=1, description="hidden width of the classifier MLP")
    loss: dict = Field(default_factory=dict, description="loss parameter overrides, e.g. {gamma: 2}")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_steps: list[int] = Field([30, 60], description="epochs at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(20.0, gt=0, description="global L2 norm clip; null = none")
    train_frames: int = Field(60, ge=1, description="random frames per training clip (with replacement, sorted)")
    eval_frames: int = Field(150, ge=1, description="uniform frames per evaluation clip")
    eval_every: int = Field(5, ge=1, description="evaluate every N epochs (and after the last)")
    select_on: Literal["val", "test"] = Field(
        "val", description="split for checkpoint selection; test = the papers' protocol (stamped on results)")
    compat: Literal["fixed", "reference"] = Field(
        "fixed", description="reference: keep the published code's quirks that change numbers")
    framestack_ratio: float = Field(0.5, gt=0, le=1, description="fraction of each batch FrameStack mixes")
    cache: Literal["auto", "none", "ram", "gpu"] = Field(
        "auto", description="features in RAM (packed float16) / on the GPU; auto: RAM when it fits")
    num_workers: int = Field(2, ge=0, description="loader processes when features are read from disk")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="autocast on GPU")

    @field_validator("method")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one method")
        return value

    def methods(self) -> list:
        """The methods this config trains, in order."""
        return list(self.method) if isinstance(self.method, list) else [self.method]

    def run_name(self) -> str:
        """Folder name of a single-method run: the method, plus the head when not the default."""
        (method,) = self.methods()
        return method if self.head == "lateavg" else f"{method}+{self.head}"
