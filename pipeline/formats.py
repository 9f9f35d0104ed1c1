"""The dataset-format registry: `dataset.format` name -> reader, default group thresholds, and for
generated data its generator and fixed extract settings (one table; docs/extending.md adds a format).

Config validation, ``run --help``, the ingest stage's input (:func:`read_dataset`), the extract
settings in force, the default ``split.head`` / ``split.tail`` and ``split.profile=auto`` read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from manifests import datasets, registries
from manifests.errors import UserError
from manifests.ingest import readers

FALLBACK_THRESHOLDS = (500, 100)  # VideoLT's (head, tail)


@dataclasses.dataclass(frozen=True)
class DatasetFormat:
    """One format: ``read(cfg, progress) -> Dataset`` with the whole run config (``cfg.dataset`` holds
    ``root``, ``videos``, ``class_names``, ...); ``thresholds`` the default (head, tail) of its class
    groups, or a function of the run config; ``root`` what ``dataset.root`` is ("folder", "file", or
    None: optional, generated data); ``split_profile`` what ``split.profile=auto`` means for it;
    ``generate(cfg, progress)`` makes the data ``read`` reads (demo, synthetic); ``extract(cfg)`` the
    extract settings when the format fixes them (the synthetic benchmark imports its .npy features)."""

    name: str
    read: Callable
    thresholds: tuple | Callable = FALLBACK_THRESHOLDS
    root: str | None = "file"
    split_profile: str = "given"
    generate: Callable | None = None
    extract: Callable | None = None

    def default_thresholds(self, cfg) -> tuple:
        """(head, tail) when split.head / split.tail are not set."""
        return self.thresholds(cfg) if callable(self.thresholds) else tuple(self.thresholds)

    def extract_config(self, cfg):
        """The extract settings in force: ``extract.*``, unless the format fixes them."""
        return self.extract(cfg) if self.extract is not None else cfg.extract


def demo_root(cfg) -> Path:
    """Where a generated dataset lives: dataset.root, else <work_dir>/<format>-data (demo-data, synthetic-data)."""
    if cfg.dataset.root:
        return Path(cfg.dataset.root)
    return Path(cfg.work_dir) / f"{cfg.dataset.format}-data"


def _generate_demo(cfg, progress: bool) -> None:
    """The demo's videos and labels in :func:`demo_root` (kept when complete for this seed)."""
    from pipeline.data.demo_data import generate_demo

    generate_demo(demo_root(cfg), seed=cfg.dataset.demo_seed, progress=progress)


def _generate_synthetic(cfg, progress: bool) -> None:
    """The synthetic benchmark in :func:`demo_root` (kept when complete for this spec)."""
    from pipeline.data.synthetic_data import generate_synthetic

    generate_synthetic(demo_root(cfg), cfg.dataset.synthetic, progress=progress)


def _read_generated(cfg, progress: bool) -> datasets.Dataset:
    """The label CSV and class names a generator wrote into :func:`demo_root`."""
    root = demo_root(cfg).absolute()
    return readers.read_generic_csv(root / "labels.csv", root / "class_names.txt")


def _synthetic_thresholds(cfg) -> tuple:
    """(head, tail) giving VideoLT's group shares on the synthetic profile."""
    from pipeline.synthetic_config import group_thresholds

    return group_thresholds(cfg.dataset.synthetic)


def _synthetic_extract(cfg):
    """The synthetic benchmark's features are imported from its generated .npy files."""
    return cfg.extract.model_copy(update={"source": "npy", "npy_dir": str(demo_root(cfg).absolute() / "features"),
                                          "npy_dim": cfg.dataset.synthetic.dim})


FORMATS: dict[str, DatasetFormat] = {f.name: f for f in (
    DatasetFormat("demo", _read_generated, thresholds=(15, 5), root=None, generate=_generate_demo),
    DatasetFormat("synthetic", _read_generated, thresholds=_synthetic_thresholds, root=None,
                  generate=_generate_synthetic, extract=_synthetic_extract),
    DatasetFormat("videolt", lambda cfg, _: readers.read_videolt(cfg.dataset.root, cfg.dataset.videos),
                  root="folder"),
    DatasetFormat("minikinetics", lambda cfg, _: readers.read_minikinetics(cfg.dataset.root, cfg.dataset.videos),
                  thresholds=(300, 40), root="folder", split_profile="minikinetics"),
    DatasetFormat("kinetics_csv", lambda cfg, _: readers.read_kinetics_csv(
        cfg.dataset.root, cfg.dataset.class_names, cfg.dataset.videos)),
    DatasetFormat("csv", lambda cfg, _: readers.read_generic_csv(cfg.dataset.root, cfg.dataset.class_names)),
)}


def names_message() -> str:
    """The valid names as pydantic words a Literal (``'a', 'b' or 'c'``), for errors and help texts."""
    return registries.names_text(FORMATS, quoted=True)


def lookup(name: str) -> DatasetFormat:
    """The registered format ``name``; UserError otherwise."""
    return registries.lookup(FORMATS, name, "format", f"use {names_message()}",
                             lambda message: UserError(f"dataset.format: {message}"))


def extract_config(cfg):
    """The extract settings in force for ``cfg`` (:meth:`DatasetFormat.extract_config`)."""
    return lookup(cfg.dataset.format).extract_config(cfg)


def read_dataset(cfg, progress: bool = False) -> datasets.Dataset:
    """The dataset the ingest stage reads: ``dataset.root`` checked as the format wants it, the data
    generated first when the format generates it (demo, synthetic), then read by the format's reader."""
    fmt = lookup(cfg.dataset.format)
    if fmt.root is not None:
        if cfg.dataset.root is None:
            raise UserError(f"dataset.root is required for dataset.format={fmt.name}: set it in the config "
                            f"or with --set dataset.root=PATH")
        if fmt.root == "folder" and not Path(cfg.dataset.root).is_dir():
            raise UserError(f"dataset.root: {cfg.dataset.root} is not a folder with the {fmt.name} label lists")
    if fmt.generate is not None:
        fmt.generate(cfg, progress)
    return fmt.read(cfg, progress)
