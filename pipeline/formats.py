"""The dataset-format registry: `dataset.format` name -> reader and default group thresholds (one table).

Config validation, ``run --help``, the ingest stage (:func:`pipeline.stages.load_dataset`), the
default ``split.head`` / ``split.tail`` and ``split.profile=auto`` read this table. Adding a format is
one entry in :data:`FORMATS` plus its reader (docs/extending.md has a worked example).

A reader is called as ``read(cfg, progress)`` with the whole run config (``cfg.dataset`` holds
``root``, ``videos``, ``class_names``, ...) and returns a :class:`manifests.datasets.Dataset`, the
canonical video table. ``dataset.root`` is checked before the reader runs: ``root="folder"`` /
``"file"`` make it required (a folder must exist), ``None`` leaves it optional (generated data).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from manifests import datasets
from manifests.errors import UserError

FALLBACK_THRESHOLDS = (500, 100)  # VideoLT's (head, tail)


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """One format: ``read(cfg, progress) -> Dataset``; ``thresholds`` the default (head, tail) of its
    class groups, or a function of the run config; ``root`` what ``dataset.root`` is ("folder",
    "file", or None: optional); ``split_profile`` what ``split.profile=auto`` means for it."""

    name: str
    read: Callable
    thresholds: tuple | Callable = FALLBACK_THRESHOLDS
    root: str | None = "file"
    split_profile: str = "given"

    def default_thresholds(self, cfg) -> tuple:
        """(head, tail) when split.head / split.tail are not set."""
        return self.thresholds(cfg) if callable(self.thresholds) else tuple(self.thresholds)


def demo_root(cfg) -> Path:
    """Where a generated dataset lives: dataset.root, else <work_dir>/demo-data (or synthetic-data)."""
    if cfg.dataset.root:
        return Path(cfg.dataset.root)
    return Path(cfg.work_dir) / ("synthetic-data" if cfg.dataset.format == "synthetic" else "demo-data")


def _demo(cfg, progress: bool) -> datasets.Dataset:
    from pipeline.data.demo_data import generate_demo

    root = generate_demo(demo_root(cfg), seed=cfg.dataset.demo_seed, progress=progress)
    return datasets.read_generic_csv(root / "labels.csv", root / "class_names.txt")


def _synthetic(cfg, progress: bool) -> datasets.Dataset:
    from pipeline.data.synthetic_data import generate_synthetic

    root = generate_synthetic(demo_root(cfg), cfg.dataset.synthetic, progress=progress)
    return datasets.read_generic_csv(root / "labels.csv", root / "class_names.txt")


def _synthetic_thresholds(cfg) -> tuple:
    from pipeline.synthetic_config import group_thresholds

    return group_thresholds(cfg.dataset.synthetic)


FORMATS: dict[str, DatasetFormat] = {f.name: f for f in (
    DatasetFormat("demo", _demo, thresholds=(15, 5), root=None),
    DatasetFormat("synthetic", _synthetic, thresholds=_synthetic_thresholds, root=None),
    DatasetFormat("videolt", lambda cfg, _: datasets.read_videolt(cfg.dataset.root, cfg.dataset.videos),
                  root="folder"),
    DatasetFormat("minikinetics", lambda cfg, _: datasets.read_minikinetics(cfg.dataset.root, cfg.dataset.videos),
                  thresholds=(300, 40), root="folder", split_profile="minikinetics"),
    DatasetFormat("kinetics_csv", lambda cfg, _: datasets.read_kinetics_csv(
        cfg.dataset.root, cfg.dataset.class_names, cfg.dataset.videos)),
    DatasetFormat("csv", lambda cfg, _: datasets.read_generic_csv(cfg.dataset.root, cfg.dataset.class_names)),
)}


def names_message() -> str:
    """The valid names as pydantic words a Literal (``'a', 'b' or 'c'``), for errors and help texts."""
    quoted = [repr(name) for name in FORMATS]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def lookup(name: str) -> DatasetFormat:
    """The registered format ``name``; UserError otherwise."""
    if name not in FORMATS:
        raise UserError(f"dataset.format: unknown format {name!r}; use {names_message()}")
    return FORMATS[name]


def read_dataset(cfg, progress: bool = False) -> datasets.Dataset:
    """Check ``dataset.root`` as the format wants it, then read the dataset with its reader."""
    fmt = lookup(cfg.dataset.format)
    if fmt.root is not None:
        if cfg.dataset.root is None:
            raise UserError(f"dataset.root is required for dataset.format={fmt.name}: set it in the config "
                            f"or with --set dataset.root=PATH")
        if fmt.root == "folder" and not Path(cfg.dataset.root).is_dir():
            raise UserError(f"dataset.root: {cfg.dataset.root} is not a folder with the {fmt.name} label lists")
    return fmt.read(cfg, progress)
