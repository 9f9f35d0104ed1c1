"""The canonical video table that every dataset format is read into, and the label helpers the stages
share. One row per video, in file order: ``video_id`` (str), ``path`` (absolute video path or None),
``labels`` (list of class indices), ``split`` ("train" | "val" | "test"). The readers of each format
are in manifests/ingest/readers.py; ``dataset.format`` names one through pipeline/formats.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from manifests.errors import DatasetError, UserError

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
# Video ids become file names and HDF5 keys: letters, digits, '_', '-', '.'; no path parts.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,199}$")


@dataclass
class Dataset:
    """A dataset read into the canonical form."""

    videos: pd.DataFrame
    class_names: list
    label_files: dict  # name -> Path of every file read (hashed by the ingest manifest)
    declared_train_counts: np.ndarray | None = None  # e.g. VideoLT's count-labels-train.lst
    warnings: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_video_id(video_id: str, path, line: int) -> str:
    """Return ``video_id`` if it is safe as a file name and HDF5 key, else raise."""
    if not _SAFE_ID.match(video_id) or ".." in video_id:
        raise DatasetError(path, line, f"unsafe video id {video_id!r}: ids may contain only letters, "
                           "digits, '_', '-' and '.', must not contain '..' and must be at most 200 chars")
    return video_id


def read_text(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark, as Excel writes, is dropped); other bytes are a
    :class:`DatasetError` naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as "
                           "UTF-8") from None


def video_table(rows: list, video_paths: dict) -> pd.DataFrame:
    """Canonical table from ``(id, labels, split, (file, line))`` rows (ids checked with
    :func:`check_video_id`, labels lists of class indices, split one of :data:`SPLITS`) and
    ``{id: absolute video path}``; a video id listed twice is a :class:`DatasetError`."""
    seen = {}
    for video_id, _, split, where in rows:
        if video_id in seen:
            first_split, (first_file, first_line) = seen[video_id]
            what = "listed twice" if first_split == split else f"in two splits ({first_split}, {split})"
            raise DatasetError(where[0], where[1], f"video id {video_id!r} {what}; first at "
                               f"{first_file}:{first_line}")
        seen[video_id] = (split, where)
    return pd.DataFrame({
        "video_id": [r[0] for r in rows],
        "path": pd.Series([video_paths.get(r[0]) for r in rows], dtype=object),
        "labels": [r[1] for r in rows],
        "split": [r[2] for r in rows],
    })


def index_video_files(videos_dir: str | Path | None) -> dict:
    """Map ``<id>`` to the absolute path of ``<id>.<ext>`` under ``videos_dir`` (searched recursively)."""
    if videos_dir is None:
        return {}
    root = Path(videos_dir)
    if not root.is_dir():
        raise UserError(f"dataset.videos: {root} is not a directory; point it at the folder of "
                        "<video_id>.<ext> files or leave it unset")
    found = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            if path.stem in found:
                raise UserError(f"two video files for id {path.stem!r}: {found[path.stem]} and {path}; "
                                "keep one")
            found[path.stem] = str(path.resolve())
    return found


def label_counts(labels, num_classes: int) -> np.ndarray:
    """Per-class label-instance counts (a multi-label video counts once for each of its labels)."""
    flat = [label for row in labels for label in row]
    return np.bincount(np.asarray(flat, dtype=np.int64), minlength=num_classes)


def multi_hot(labels, num_classes: int) -> np.ndarray:
    """(N, C) uint8 0/1 targets from lists of class indices, one list per video."""
    targets = np.zeros((len(labels), num_classes), dtype=np.uint8)
    for i, row in enumerate(labels):
        targets[i, list(row)] = 1
    return targets
