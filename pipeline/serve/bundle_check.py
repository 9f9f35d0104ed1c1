"""A model bundle's description checked before anything is sized by it (a bundle is untrusted).

:func:`check_bundle` refuses, in one line naming the key, a description that is not shaped as
:func:`pipeline.serve.bundle.bundle_from_run` writes it (:class:`BundleMeta`); holds settings a run
would refuse (validated by the run configuration's own models); sets a size beyond
:data:`PLAUSIBLE`; or does not describe the tensors it holds (the head is built on PyTorch's ``meta``
device and every parameter's shape must be the file's).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from manifests.errors import UserError

# Sizes of a run config that cost time or memory per video before the weights can contradict them
# (the published recipes use 150 frames, 256/224 px, batches of 64 frames and 128 videos).
PLAUSIBLE = {
    "extract.num_frames": 10_000, "extract.max_frames": 10_000, "extract.fps": 1_000,
    "extract.resize": 4_096, "extract.crop": 4_096, "extract.batch_size": 4_096,
    "extract.num_decode_workers": 256, "extract.num_threads": 1_024, "extract.decode_timeout_s": 86_400,
    "train.eval_frames": 10_000, "train.batch_size": 65_536,
}
MAX_TRAIN_COUNT = 2**31 - 1

Fraction = Annotated[float, Field(ge=0, le=1)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Classes(_Open):
    names: list[str] = Field(min_length=1)
    train_counts: list[Annotated[int, Field(ge=0, le=MAX_TRAIN_COUNT)]]
    groups: list[Literal["head", "medium", "tail"]]

    @model_validator(mode="after")
    def _one_entry_per_class(self):
        if not len(self.names) == len(self.train_counts) == len(self.groups):
            raise ValueError(f"names, train_counts and groups must have one entry per class (got {len(self.names)}, "
                             f"{len(self.train_counts)}, {len(self.groups)})")
        if len(set(self.names)) != len(self.names):
            raise ValueError("class names must be unique")
        return self


class _Features(_Open):
    extract: dict
    source: Literal["videos", "npy"]
    dtype: Literal["float16", "float32"]


class _Thresholds(_Open):
    values: list[Fraction] | None
    fallback: Fraction


class _Selection(_Open):
    select_on: Literal["val", "test"]
    best_epoch: int = Field(ge=0)
    mAP: Fraction


class BundleMeta(_Open):
    """The keys of a bundle's description that prediction reads (others are kept, unread)."""

    run: str
    method: str
    settings: dict
    feature_dim: int = Field(ge=1)
    classes: _Classes
    features: _Features
    thresholds: _Thresholds
    selection: _Selection

    @field_validator("method")
    @classmethod
    def _registered(cls, value):
        from train import registry

        registry.lookup(value)  # MethodError (a ValueError) lists the valid names
        return value

    @model_validator(mode="after")
    def _one_threshold_per_class(self):
        values = self.thresholds.values
        if values is not None and len(values) != len(self.classes.names):
            raise ValueError(f"thresholds.values has {len(values)} entries for {len(self.classes.names)} classes")
        return self


def check_bundle(meta: dict, state: dict, path) -> None:
    """Refuse (:class:`UserError`, one line) a bundle description that is malformed, that a run would
    refuse, that sets an implausible size, or that does not fit the tensors in ``state``."""
    try:
        BundleMeta.model_validate(meta)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"]) or "description"
        raise UserError(f"{path}: not a valid model bundle: {key}: {error['msg'].removeprefix('Value error, ')}; "
                        "export the model again with `python -m pipeline export`") from None
    cfg = run_config(meta, path)
    for key, limit in PLAUSIBLE.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value > limit:
            where = f"settings.{name}" if section == "train" else f"features.extract.{name}"
            raise UserError(f"{path}: {where} = {value} is beyond any real run (at most {limit:,}); the model's "
                            "description was edited or damaged: export the model again")
    _check_shapes(meta, state, cfg, path)


def run_config(meta: dict, path):
    """The run config (pipeline/config.py) of a description's ``settings`` and ``features.extract``,
    validated by the models a run uses; UserError (one line) when a run would refuse it."""
    from pipeline.config import validate
    from train import registry
    from train.config import TrainConfig

    settings = meta["settings"]
    data = {"train": {k: v for k, v in settings.items() if k in TrainConfig.model_fields},
            **{name: settings[name] for name in registry.section_models() if name in settings},
            "extract": meta["features"]["extract"]}
    try:
        return validate(data, source="bundle settings")
    except UserError as exc:  # "invalid ...:" then one indented line per key
        lines = [line.strip() for line in str(exc).splitlines()]
        raise UserError(f"{path}: its settings are not a valid run config: {'; '.join(lines[1:] or lines)} "
                        "(settings are the train section, features.extract the extract section); export the "
                        "model again") from None


def _check_shapes(meta: dict, state: dict, cfg, path) -> None:
    """Build the described head on the ``meta`` device and compare every parameter's shape with ``state``."""
    import torch

    from train import methods, registry

    options = {name: getattr(cfg, name) for name in registry.section_models() if name in meta["settings"]}
    classes = meta["classes"]
    described = (f"the {meta['method']} head for feature_dim {meta['feature_dim']} and {len(classes['names'])} "
                 "classes with its settings")
    try:
        with torch.device("meta"):
            model = methods.build(meta["method"], cfg.train, meta["feature_dim"], len(classes["names"]),
                                  np.asarray(classes["train_counts"], dtype=np.int64), options).model
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        raise UserError(f"{path}: {described} cannot be built ({str(exc).splitlines()[0][:150]}); the description "
                        "was edited or damaged: export the model again") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected == found:
        return
    key = next(k for k in [*expected, *found] if expected.get(k) != found.get(k))
    raise UserError(f"{path}: {described} does not fit its weights: {key} is {found.get(key, 'absent')} in the "
                    f"file but {expected.get(key, 'absent')} by the description; the description was edited or "
                    "damaged: export the model again")
