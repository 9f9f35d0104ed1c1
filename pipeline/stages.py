"""The stage graph: what each stage needs, which config it depends on, and how it runs.

Stages talk only through the manifests and tables they leave in ``<work_dir>/<stage>/``.
Heavy imports (torch, decoders) happen inside the stage that needs them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from manifests import datasets, splits, tables
from manifests.errors import UserError
from manifests.files import read_table, sha256_file, write_table
from manifests.groups import GROUPS, assign_groups
from manifests.manifest import config_hash, read_manifest
from pipeline.config import Config, group_thresholds, run_name, run_settings, split_profile, split_seed
from pipeline.formats import demo_root, read_dataset
from train.config import SCHEDULE_KEYS

log = logging.getLogger("pipeline")


@dataclass
class RunOptions:
    """Command-line switches that change how (not what) a stage runs."""

    force: bool = False
    resume: str = "auto"  # train: continue from the last checkpoint ("auto") or start over ("never")
    no_rerun: bool = False
    retry_failed: bool = False
    repair: bool = False
    progress: bool = True
    changed_outputs: tuple = ()  # outputs of the stage's last finished build that changed on disk since


@dataclass
class StageResult:
    """What a finished stage reports: its output files (relative), summary and extra inputs."""

    outputs: list
    summary: dict
    external_inputs: dict = field(default_factory=dict)  # name -> Path of files read outside the work dir


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    settings: Callable[[Config], dict]  # the config its outputs depend on
    run: Callable  # (cfg, stage_dir, work_dir, options) -> StageResult
    needs: tuple = ()  # upstream stages whose manifests are required inputs
    uses: tuple = ()  # upstream stages whose manifests are inputs when they exist
    per_run: bool = False  # one folder per method run: <work_dir>/<stage>/<run>/


# ---------------------------------------------------------------------------------------- ingest

def load_dataset(cfg: Config, progress: bool = False) -> datasets.Dataset:
    """Read the configured dataset with its format's reader (pipeline/formats.py; the demo's videos are
    generated first)."""
    return read_dataset(cfg, progress)


def run_ingest(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    dataset = load_dataset(cfg, progress=options.progress)
    has_file = dataset.videos.path.map(lambda p: isinstance(p, str) and os.path.isfile(p))
    without_file = dataset.videos[~has_file]
    # label lists without any video (released features, splits only) are fine; a partial set of files is not
    if extract_config(cfg).source == "videos" and has_file.any() and len(without_file):
        dataset.warnings.append(f"{len(without_file)} of {len(dataset.videos)} listed videos have no video file "
                                f"(e.g. {', '.join(without_file.video_id[:3])}); extract will record them as failed. "
                                "Check dataset.videos (or the CSV's path column)")
    for warning in dataset.warnings:
        log.warning("warning: %s", warning)
    outputs = tables.write_ingest_tables(stage_dir, dataset.videos, dataset.class_names)
    videos = dataset.videos
    summary = {
        "format": cfg.dataset.format,
        "num_classes": dataset.num_classes,
        "videos": {s: int((videos.split == s).sum()) for s in datasets.SPLITS},
        "with_video_file": int(videos.path.notna().sum()),
        "multi_label_videos": int((videos.labels.map(len) > 1).sum()),
        "warnings": dataset.warnings,
    }
    return StageResult(outputs, summary, external_inputs=dataset.label_files)


# ----------------------------------------------------------------------------------------- split

def split_settings(cfg: Config) -> dict:
    profile = split_profile(cfg)
    head, tail = group_thresholds(cfg)
    settings = {"profile": profile, "head": head, "tail": tail}
    if profile != "given":
        settings["imbalance"] = cfg.split.imbalance
    if profile in ("exp", "step"):
        settings["max_per_class"] = cfg.split.max_per_class
        settings["seed"] = split_seed(cfg)
    return settings


def videos_with_features(work_dir: Path) -> pd.DataFrame | None:
    """The extract stage's per-video status table, or None when nothing was extracted."""
    path = work_dir / "extract" / tables.VIDEOS
    if not (work_dir / "extract" / "manifest.json").exists():
        return None
    return read_table(path)


def run_split(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    settings = split_settings(cfg)
    videos = tables.read_ingest_videos(work_dir / "ingest")
    classes = tables.read_classes(work_dir / "ingest")
    num_classes = len(classes)
    dropped = pd.DataFrame({"video_id": pd.Series(dtype=str), "split": pd.Series(dtype=str),
                            "reason": pd.Series(dtype=str)})
    extracted = videos_with_features(work_dir)
    if extracted is not None:
        status = extracted.set_index("video_id")
        ok = videos.video_id.map(status.status).eq("ok")
        missing = videos[~ok]
        reasons = [f"extract failed: {status.error.get(v)}" if v in status.index else "not extracted"
                   for v in missing.video_id]
        dropped = pd.DataFrame({"video_id": missing.video_id, "split": missing.split, "reason": reasons})
        videos = videos[ok]
    table, info = splits.build_split(videos, num_classes, settings["profile"], settings.get("imbalance", 1.0),
                                     settings.get("max_per_class"), settings.get("seed", 0))
    counts = splits.train_counts(table, num_classes)
    groups = assign_groups(counts, settings["head"], settings["tail"])
    class_table = pd.DataFrame({"class_index": np.arange(num_classes), "name": classes.name,
                                "train_count": counts, "group": groups.astype(str)})
    write_table(stage_dir / tables.VIDEOS, table)
    write_table(stage_dir / tables.CLASSES, class_table)
    write_table(stage_dir / tables.DROPPED, dropped)
    empty = [int(c) for c in np.flatnonzero(counts == 0)]
    if empty:
        log.warning("warning: %d classes have no training videos (e.g. %s)", len(empty),
                    ", ".join(classes.name[empty[:3]]))
    summary = {
        "num_classes": num_classes,
        "videos": {s: int((table.split == s).sum()) for s in datasets.SPLITS},
        "groups": {g: int((groups == g).sum()) for g in GROUPS},
        "thresholds": {"head": settings["head"], "tail": settings["tail"]},
        "train_label_instances": int(counts.sum()),
        "imbalance_ratio": float(counts.max() / counts[counts > 0].min()) if counts.any() else None,
        "dropped_without_features": len(dropped),
        "classes_without_train_videos": empty,
        **info,
    }
    return StageResult([tables.VIDEOS, tables.CLASSES, tables.DROPPED], summary)


# --------------------------------------------------------------------------------------- extract

def extract_config(cfg: Config):
    """The extract settings in force: the synthetic benchmark's features are imported as .npy files."""
    if cfg.dataset.format != "synthetic":
        return cfg.extract
    return cfg.extract.model_copy(update={"source": "npy", "npy_dir": str(demo_root(cfg).absolute() / "features"),
                                          "npy_dim": cfg.dataset.synthetic.dim})


def run_extract_stage(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    from extract.stage import run_extract

    videos = tables.read_ingest_videos(work_dir / "ingest")
    summary = run_extract(extract_config(cfg), videos, stage_dir, retry_failed=options.retry_failed,
                          repair=options.repair, progress=options.progress,
                          verify=[name for name in options.changed_outputs if name.endswith(".h5")])
    outputs = [tables.VIDEOS] + sorted(p.name for p in stage_dir.glob("*.h5"))
    return StageResult(outputs, summary)


# ----------------------------------------------------------------------------------------- train

def train_settings(cfg: Config) -> dict:
    """The settings record a train run depends on (its config hash): :func:`pipeline.config.run_settings`."""
    return run_settings(cfg).to_dict()


def run_train_stage(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    """Train one run (a config of :func:`pipeline.config.single_runs`) on the extract and split stages' outputs."""
    from train.stage import run_train

    upstream = {name: sha256_file(work_dir / name / "manifest.json") for name in ("extract", "split")}
    summary, outputs = run_train(run_settings(cfg), work_dir / "extract", work_dir / "split", stage_dir,
                                 upstream=config_hash(upstream), resume=options.resume == "auto" and not options.force,
                                 progress=options.progress)
    return StageResult(outputs, summary)


# -------------------------------------------------------------------------------------- evaluate

PREDICTIONS = "predictions.npz"  # what the train stage leaves for evaluate: scores, video_ids


def run_info(work_dir: Path, cfg: Config) -> dict:
    """Who made the predictions: method and selection protocol (train), features (extract), seed."""
    info = {"seed": cfg.seed}
    extract = read_manifest(work_dir / "extract")
    if extract is not None:
        info["features"] = feature_source(cfg, extract.config)
    train = read_manifest(work_dir / "train" / run_name(cfg))
    if train is not None:
        info.update({k: train.config[k] for k in ("method", "select_on") if k in train.config})
        info["config_id"] = config_hash({k: v for k, v in train.config.items() if k != "seed"})[:12]
        info["head"] = train.config.get("head")
        info["schedule"] = {k: train.config[k] for k in SCHEDULE_KEYS if k in train.config}
        info["train_seconds"] = train.summary.get("seconds")
    return info


def feature_source(cfg: Config, extract_settings: dict) -> str:
    """What the features are, for reports: the backbone, ``synthetic``, or the imported .npy folder."""
    if cfg.dataset.format == "synthetic":
        return "synthetic"
    if extract_settings.get("source") == "npy":
        return f"{Path(extract_settings.get('npy_dir') or 'npy').name} (.npy)"
    return extract_settings.get("backbone")


def run_evaluate_stage(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    from evaluate.stage import run_evaluate

    given = cfg.evaluate.predictions
    predictions = Path(given) if given else work_dir / "train" / run_name(cfg) / PREDICTIONS
    if not given and not predictions.exists():
        raise UserError(f"no predictions to evaluate: {predictions} does not exist; run the train stage "
                        "or set evaluate.predictions=FILE.npz (arrays `scores` (N, C) and `video_ids` (N,))")
    summary, outputs = run_evaluate(cfg.evaluate, work_dir / "split", predictions, stage_dir,
                                    run_info(work_dir, cfg))
    return StageResult(outputs, summary, external_inputs={"predictions": predictions} if given else {})


STAGES = {
    "ingest": Stage("ingest", "read the dataset's label lists into one video table",
                    settings=lambda cfg: cfg.dataset.model_dump(), run=run_ingest),
    "extract": Stage("extract", "decode videos and store per-frame CNN features (HDF5)", needs=("ingest",),
                     settings=lambda cfg: extract_config(cfg).model_dump(), run=run_extract_stage),
    "split": Stage("split", "build train/val/test membership, class counts and head/medium/tail groups",
                   needs=("ingest",), uses=("extract",), settings=split_settings, run=run_split),
    "train": Stage("train", "train long-tailed methods on the features", needs=("extract", "split"),
                   settings=train_settings, run=run_train_stage, per_run=True),
    "evaluate": Stage("evaluate", "mAP (overall/head/medium/tail), Acc@1/5, test profiles, tables, plots",
                      needs=("split",), uses=("train",), settings=lambda cfg: cfg.evaluate.model_dump(),
                      run=run_evaluate_stage, per_run=True),
}
ORDER = tuple(STAGES)
