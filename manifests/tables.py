"""The tables and files each stage leaves beside its manifest for the next (the stage contract).

- ingest: ``videos.parquet`` (video_id, path (see ``portable_path``) or None, labels, split)
  and ``classes.parquet`` (class_index, name).
- extract: ``videos.parquet`` (video_id, status "ok"/"failed", num_frames, shard, decoder, error).
- split: ``videos.parquet`` (video_id, labels, split; one row per membership), ``classes.parquet``
  (class_index, name, train_count, group) and ``dropped.parquet`` (video_id, split, reason).
- train: ``predictions.npz`` (scores, video_ids) for evaluate; checkpoints ``best.pt`` (predict,
  bundles) and ``last.pt`` (resume).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from manifests.files import portable_path, read_table, resolve_portable, write_table

VIDEOS = "videos.parquet"
CLASSES = "classes.parquet"
DROPPED = "dropped.parquet"
PREDICTIONS = "predictions.npz"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"


def write_ingest_tables(stage_dir: Path, videos: pd.DataFrame, class_names: list) -> list:
    """Write the ingest tables (video paths made relative to ``stage_dir``); returns their names."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    recorded = [None if pd.isna(p) else portable_path(p, stage_dir) for p in videos.path]
    write_table(stage_dir / VIDEOS, videos.assign(path=pd.Series(recorded, index=videos.index, dtype=object)))
    write_table(stage_dir / CLASSES, pd.DataFrame({"class_index": range(len(class_names)),
                                                   "name": list(class_names)}))
    return [VIDEOS, CLASSES]


def read_ingest_videos(stage_dir: Path) -> pd.DataFrame:
    """The ingest video table with ``path`` made absolute again (None where there is no file)."""
    stage_dir = Path(stage_dir)
    videos = read_table(stage_dir / VIDEOS)
    videos["path"] = pd.Series([None if pd.isna(p) else str(resolve_portable(p, stage_dir)) for p in videos.path],
                               index=videos.index, dtype=object)
    videos["labels"] = _label_lists(videos.labels)
    return videos


def read_classes(stage_dir: Path) -> pd.DataFrame:
    """The per-class table of the ingest or split stage."""
    return read_table(Path(stage_dir) / CLASSES)


def read_split_videos(stage_dir: Path) -> pd.DataFrame:
    """The split membership table (video_id, labels as lists of int, split)."""
    videos = read_table(Path(stage_dir) / VIDEOS)
    videos["labels"] = _label_lists(videos.labels)
    return videos


def _label_lists(column) -> list:
    """Parquet list columns come back as arrays: plain lists of int, as the readers produce."""
    return [list(map(int, labels)) for labels in column]
