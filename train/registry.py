"""The method registry: `train.method` name -> recipe, own config section, head (one table, no torch import).

Config validation (``train.method`` and its ``<method>+aggregators`` list entries), the config's
method sections (``move:``, ``medc:``), ``run --help``, error messages and the train stage read this
table. Adding a method that changes only the loss, the sampler or the batch is one module with a
:class:`train.methods.Recipe` subclass plus one entry here (docs/extending.md has a worked example).

Recipes and config models are named ``"module:Class"`` and imported when first needed, so that
validating a config does not import torch. A method's own config section is a pydantic model in a
torch-free module (train/config.py); a run config then takes a section named like the method, the
recipe reads it with ``self.section(name, Model)``, and it enters the train stage's config hash.
A section model with fields named like ``train.config.SCHEDULE_KEYS`` (MEDC's ``epochs``, ``lr``, ...) sets
the run's schedule where they are not null; null inherits ``train.*``.
"""

from __future__ import annotations

import dataclasses
import importlib

from manifests import registries

# the sections a head reads besides the method's own: the aggregators head is sized by move.*
HEAD_SECTIONS = {"aggregators": ("move",)}


class MethodError(ValueError):
    """An unknown method name (the message lists the valid names)."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method: ``recipe`` and ``config`` are ``"module:Class"``; ``config`` (or None) is the model of
    its own section, named like the method; ``own_head``: it builds its own model, so ``train.head`` and
    ``<name>+aggregators`` do not apply; ``reads``: other methods' sections its runs read too."""

    name: str
    recipe: str
    config: str | None = None
    own_head: bool = False
    reads: tuple = ()

    def sections(self) -> tuple:
        """The config sections its runs read: its own (if any), then ``reads``."""
        return ((self.name,) if self.config else ()) + tuple(self.reads)


METHODS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("baseline", "train.methods:Recipe"),
    MethodSpec("focal", "train.methods:Focal"),
    MethodSpec("ldam_drw", "train.methods:LdamDrw"),
    MethodSpec("eql", "train.methods:Eql"),
    MethodSpec("cb_loss", "train.methods:CbLoss"),
    MethodSpec("cbs", "train.methods:Cbs"),
    MethodSpec("srs", "train.methods:Srs"),
    MethodSpec("mixup", "train.methods:Mixup"),
    MethodSpec("framestack", "train.methods:FrameStack"),
    MethodSpec("move", "train.move:Move", config="train.config:MoveConfig", own_head=True),
    MethodSpec("medc", "train.medc:Medc", config="train.config:MedcConfig", own_head=True, reads=("move",)),
    MethodSpec("mea", "train.mea:Mea", config="train.config:MeaConfig", own_head=True, reads=("move",)),
)}


def names_message() -> str:
    """The valid names, for error messages and help texts."""
    return registries.names_text(METHODS)


def own_head_names() -> list:
    """Methods that build their own model (no ``<method>+aggregators``)."""
    return [name for name, spec in METHODS.items() if spec.own_head]


def lookup(name: str) -> MethodSpec:
    """The spec of a registered method; MethodError otherwise."""
    return registries.lookup(METHODS, name, "method", f"valid: {names_message()}", MethodError)


def load(dotted: str):
    """The object named ``"module:attribute"``."""
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)


def recipe_class(name: str) -> type:
    """The :class:`train.methods.Recipe` subclass of method ``name``."""
    return load(lookup(name).recipe)


def section_models() -> dict:
    """``{section name: pydantic model}`` of the methods with their own section, in table order."""
    return {name: load(spec.config) for name, spec in METHODS.items() if spec.config}


def run_sections(method: str, head: str) -> tuple:
    """The config sections a run of ``method`` on ``head`` reads (and its settings record), in order."""
    return tuple(dict.fromkeys(HEAD_SECTIONS.get(head, ()) + lookup(method).sections()))
