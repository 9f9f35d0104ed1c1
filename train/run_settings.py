"""One train run's settings, resolved once: :class:`RunSettings`.

The pipeline builds it from a config (``pipeline.config.run_settings``); the train stage, the checkpoint
identity, prediction and the model bundle read it (:meth:`RunSettings.from_dict` rebuilds it from the
settings record a run leaves in its manifest). No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

from manifests.manifest import config_hash
from train import registry
from train.config import TrainConfig


@dataclass(frozen=True)
class RunSettings:
    """What one train run depends on: ``train`` (one method, its head, the run's schedule applied),
    ``sections`` (``{name: config model}`` of the method sections it reads, e.g. ``move``, ``medc``) and
    ``seed``."""

    train: TrainConfig
    sections: dict
    seed: int | None

    @property
    def method(self) -> str:
        return self.train.method

    @property
    def head(self) -> str:
        return self.train.head

    def to_dict(self) -> dict:
        """The settings record (JSON-ready): train's keys but the dispatch keys, the seed, each section."""
        settings = {**self.train.model_dump(exclude=set(self.train.DISPATCH_KEYS)), "seed": self.seed}
        settings.update({name: section.model_dump() for name, section in self.sections.items()})
        return settings

    @property
    def config_hash(self) -> str:
        """Hash of :meth:`to_dict` (the train stage's config hash)."""
        return config_hash(self.to_dict())

    def identity(self, upstream: str, num_classes: int, feature_dim: int) -> dict:
        """The run identity a checkpoint records and resuming checks: the settings and their hash, the
        hash of the upstream manifests, the method, the number of classes and the feature dim."""
        settings = self.to_dict()
        return {"config_hash": config_hash(settings), "settings": settings, "upstream": upstream,
                "method": self.method, "num_classes": num_classes, "feature_dim": feature_dim}

    @classmethod
    def from_dict(cls, settings: dict) -> RunSettings:
        """The run settings of a settings record (:meth:`to_dict`, as a manifest or a bundle holds it)."""
        train = TrainConfig.model_validate({k: v for k, v in settings.items() if k in TrainConfig.model_fields})
        models = registry.section_models()
        sections = {name: models[name](**settings[name]) for name in settings if name in models}
        return cls(train, sections, settings.get("seed"))
