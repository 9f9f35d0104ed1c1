"""The split stage: the ingest stage's videos (those with features, when extract ran) -> the split's
``videos.parquet``, ``classes.parquet`` (train counts, groups) and ``dropped.parquet``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from manifests import tables
from manifests.datasets import SPLITS
from manifests.files import read_table, write_table
from manifests.groups import GROUPS, assign_groups
from manifests.split import profiles

log = logging.getLogger("pipeline")


def split_settings(profile: str, head: int, tail: int, imbalance: float, max_per_class: int | None,
                   seed: int) -> dict:
    """What the split's outputs depend on: the profile and group thresholds, the imbalance of every
    profile but ``given``, and n_max and seed of ``exp`` / ``step``."""
    settings = {"profile": profile, "head": head, "tail": tail}
    if profile != "given":
        settings["imbalance"] = imbalance
    if profile in ("exp", "step"):
        settings["max_per_class"] = max_per_class
        settings["seed"] = seed
    return settings


def videos_with_features(extract_dir: Path) -> pd.DataFrame | None:
    """The extract stage's per-video status table, or None when nothing was extracted."""
    if not (extract_dir / "manifest.json").exists():
        return None
    return read_table(extract_dir / tables.VIDEOS)


def _drop_unextracted(videos: pd.DataFrame, extract_dir: Path) -> tuple:
    """``(videos with features, dropped table)``: when extract ran, the videos it did not embed are
    dropped with the reason (its error, or "not extracted")."""
    dropped = pd.DataFrame({"video_id": pd.Series(dtype=str), "split": pd.Series(dtype=str),
                            "reason": pd.Series(dtype=str)})
    extracted = videos_with_features(extract_dir)
    if extracted is None:
        return videos, dropped
    status = extracted.set_index("video_id")
    ok = videos.video_id.map(status.status).eq("ok")
    missing = videos[~ok]
    reasons = [f"extract failed: {status.error.get(v)}" if v in status.index else "not extracted"
               for v in missing.video_id]
    return videos[ok], pd.DataFrame({"video_id": missing.video_id, "split": missing.split, "reason": reasons})


def run_split(settings: dict, ingest_dir: Path, extract_dir: Path, stage_dir: Path) -> tuple:
    """Build the split of :func:`split_settings` ``settings`` from the ingest stage's tables and write
    its three tables into ``stage_dir``; returns ``(summary, outputs)``."""
    classes = tables.read_classes(ingest_dir)
    num_classes = len(classes)
    videos, dropped = _drop_unextracted(tables.read_ingest_videos(ingest_dir), extract_dir)
    table, info = profiles.build_split(videos, num_classes, settings["profile"], settings.get("imbalance", 1.0),
                                       settings.get("max_per_class"), settings.get("seed", 0))
    counts = profiles.train_counts(table, num_classes)
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
        "videos": {s: int((table.split == s).sum()) for s in SPLITS},
        "groups": {g: int((groups == g).sum()) for g in GROUPS},
        "thresholds": {"head": settings["head"], "tail": settings["tail"]},
        "train_label_instances": int(counts.sum()),
        "imbalance_ratio": float(counts.max() / counts[counts > 0].min()) if counts.any() else None,
        "dropped_without_features": len(dropped),
        "classes_without_train_videos": empty,
        **info,
    }
    return summary, [tables.VIDEOS, tables.CLASSES, tables.DROPPED]
