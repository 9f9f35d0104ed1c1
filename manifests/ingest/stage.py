"""The ingest stage: a dataset read into the canonical form -> ``videos.parquet`` and ``classes.parquet``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from manifests import tables
from manifests.datasets import SPLITS, Dataset

log = logging.getLogger("pipeline")


def run_ingest(dataset: Dataset, stage_dir: Path, format_name: str, decode_videos: bool) -> tuple:
    """Write the tables of ``dataset`` (read with ``dataset.format`` ``format_name``) into ``stage_dir``
    and log its warnings; returns ``(summary, outputs)``. ``decode_videos`` (extract reads the video
    files): a list where only some videos have a file gets a warning."""
    has_file = dataset.videos.path.map(lambda p: isinstance(p, str) and os.path.isfile(p))
    without_file = dataset.videos[~has_file]
    # label lists without any video (released features, splits only) are fine; a partial set of files is not
    if decode_videos and has_file.any() and len(without_file):
        dataset.warnings.append(f"{len(without_file)} of {len(dataset.videos)} listed videos have no video file "
                                f"(e.g. {', '.join(without_file.video_id[:3])}); extract will record them as failed. "
                                "Check dataset.videos (or the CSV's path column)")
    for warning in dataset.warnings:
        log.warning("warning: %s", warning)
    outputs = tables.write_ingest_tables(stage_dir, dataset.videos, dataset.class_names)
    videos = dataset.videos
    summary = {
        "format": format_name,
        "num_classes": dataset.num_classes,
        "videos": {s: int((videos.split == s).sum()) for s in SPLITS},
        "with_video_file": int(videos.path.notna().sum()),
        "multi_label_videos": int((videos.labels.map(len) > 1).sum()),
        "warnings": dataset.warnings,
    }
    return summary, outputs
