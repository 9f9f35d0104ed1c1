"""The stage graph: what each stage needs, which config it depends on, and how it runs.

Stages talk only through the manifests and tables they leave in ``<work_dir>/<stage>/``.
Heavy imports (torch, decoders) happen inside the stage that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from manifests import tables
from manifests.errors import UserError
from manifests.files import sha256_file
from manifests.ingest import stage as ingest
from manifests.manifest import config_hash, read_manifest
from manifests.split import stage as split
from pipeline import formats
from pipeline.config import Config, group_thresholds, run_name, run_settings, split_profile, split_seed
from train.config import SCHEDULE_KEYS


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
    """One stage of the graph: its name, what it does, the config its outputs depend on, its runner
    and the upstream stages it reads."""

    name: str
    description: str
    settings: Callable[[Config], dict]  # the config its outputs depend on
    run: Callable  # (cfg, stage_dir, work_dir, options) -> StageResult
    needs: tuple = ()  # upstream stages whose manifests are required inputs
    uses: tuple = ()  # upstream stages whose manifests are inputs when they exist
    per_run: bool = False  # one folder per method run: <work_dir>/<stage>/<run>/


# ---------------------------------------------------------------------------------------- ingest

def run_ingest_stage(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    """Ingest (manifests/ingest/): the configured dataset, generated first for the demo and synthetic
    formats (:func:`pipeline.formats.read_dataset`), into the canonical tables."""
    dataset = formats.read_dataset(cfg, progress=options.progress)
    summary, outputs = ingest.run_ingest(dataset, stage_dir, cfg.dataset.format,
                                         decode_videos=formats.extract_config(cfg).source == "videos")
    return StageResult(outputs, summary, external_inputs=dataset.label_files)


# ----------------------------------------------------------------------------------------- split

def split_settings(cfg: Config) -> dict:
    """The split stage's settings: split.* with ``auto``, the group thresholds and the seed resolved."""
    head, tail = group_thresholds(cfg)
    return split.split_settings(split_profile(cfg), head, tail, cfg.split.imbalance, cfg.split.max_per_class,
                                split_seed(cfg))


def run_split_stage(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    """Split (manifests/split/): the ingest stage's videos with features -> membership, counts, groups."""
    summary, outputs = split.run_split(split_settings(cfg), work_dir / "ingest", work_dir / "extract", stage_dir)
    return StageResult(outputs, summary)


# --------------------------------------------------------------------------------------- extract

def run_extract_stage(cfg: Config, stage_dir: Path, work_dir: Path, options: RunOptions) -> StageResult:
    """Extract (extract/): the ingest stage's videos -> per-frame features, with the settings in force
    (:func:`pipeline.formats.extract_config`); a changed .h5 output is verified on a rebuild."""
    from extract.stage import run_extract

    videos = tables.read_ingest_videos(work_dir / "ingest")
    summary = run_extract(formats.extract_config(cfg), videos, stage_dir, retry_failed=options.retry_failed,
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
    """Evaluate (evaluate/): the run's predictions (or ``evaluate.predictions``) scored on the split."""
    from evaluate.stage import run_evaluate

    given = cfg.evaluate.predictions
    predictions = Path(given) if given else work_dir / "train" / run_name(cfg) / tables.PREDICTIONS
    if not given and not predictions.exists():
        raise UserError(f"no predictions to evaluate: {predictions} does not exist; run the train stage "
                        "or set evaluate.predictions=FILE.npz (arrays `scores` (N, C) and `video_ids` (N,))")
    summary, outputs = run_evaluate(cfg.evaluate, work_dir / "split", predictions, stage_dir,
                                    run_info(work_dir, cfg))
    return StageResult(outputs, summary, external_inputs={"predictions": predictions} if given else {})


STAGES = {
    "ingest": Stage("ingest", "read the dataset's label lists into one video table",
                    settings=lambda cfg: cfg.dataset.model_dump(), run=run_ingest_stage),
    "extract": Stage("extract", "decode videos and store per-frame CNN features (HDF5)", needs=("ingest",),
                     settings=lambda cfg: formats.extract_config(cfg).model_dump(), run=run_extract_stage),
    "split": Stage("split", "build train/val/test membership, class counts and head/medium/tail groups",
                   needs=("ingest",), uses=("extract",), settings=split_settings, run=run_split_stage),
    "train": Stage("train", "train long-tailed methods on the features", needs=("extract", "split"),
                   settings=train_settings, run=run_train_stage, per_run=True),
    "evaluate": Stage("evaluate", "mAP (overall/head/medium/tail), Acc@1/5, test profiles, tables, plots",
                      needs=("split",), uses=("train",), settings=lambda cfg: cfg.evaluate.model_dump(),
                      run=run_evaluate_stage, per_run=True),
}
ORDER = tuple(STAGES)
