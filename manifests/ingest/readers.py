"""Dataset readers: the label lists of each supported format -> one canonical video table
(:mod:`manifests.datasets`). Every reader validates what it reads; a bad line is a
:class:`DatasetError` naming the file and line. ``dataset.format`` names a reader through
pipeline/formats.py; a new reader builds its table with :func:`manifests.datasets.video_table`.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from manifests.datasets import Dataset, check_video_id, index_video_files, label_counts, read_text, video_table
from manifests.errors import DatasetError, UserError

# Without a class-name file the class count is 1 + the largest index: bounded, so that a typo such as
# 99999999999 is an error at its line rather than billions of classes (VideoLT has 1,004, Kinetics 700).
MAX_INFERRED_CLASSES = 10_000
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "test": "test"}


def _parse_labels(text: str, sep: str, num_classes: int | None, path, line: int) -> list:
    """The class indices of one line, each checked against ``num_classes`` (or, for a list without class
    names, against :data:`MAX_INFERRED_CLASSES`) before anything is sized by it."""
    parts = [p for p in text.strip().split(sep)]
    if parts and parts[-1] == "":  # tolerate one trailing separator (VideoLT *_videofolder.txt style)
        parts = parts[:-1]
    if not parts:
        raise DatasetError(path, line, "no labels")
    labels, seen = [], set()
    for part in parts:
        try:
            label = int(part)
        except ValueError:
            raise DatasetError(path, line, f"label {part!r} is not a class index (labels are "
                               f"{sep!r}-separated integers)") from None
        if num_classes is not None and not 0 <= label < num_classes:
            raise DatasetError(path, line, f"class index {label} out of range 0..{num_classes - 1}")
        if label < 0:
            raise DatasetError(path, line, f"negative class index {label}")
        if num_classes is None and label >= MAX_INFERRED_CLASSES:
            raise DatasetError(path, line, f"class index {label} is beyond the {MAX_INFERRED_CLASSES:,} classes a "
                               "label list may use without a class-name file (the class count is inferred from "
                               "the largest index); fix the label, or name the classes (dataset.class_names; "
                               "minikinetics: kinetics_train.csv)")
        if label in seen:
            raise DatasetError(path, line, f"class index {label} listed twice")
        labels.append(label)
        seen.add(label)
    return labels


def _read_lines(path: Path):
    """Yield (line number, stripped text) for the non-blank lines of a text file."""
    if not path.is_file():
        raise UserError(f"label file not found: {path}")
    for number, text in enumerate(read_text(path).splitlines(), start=1):
        text = text.strip()
        if text:
            yield number, text


def _read_id_label_list(path: Path, sep: str, num_classes: int | None, split: str) -> list:
    """Rows of a ``<video_id> <labels>`` list (VideoLT ``train.lst``, MOVE's ``train.lst``)."""
    rows = []
    for number, text in _read_lines(path):
        fields = text.split()
        if len(fields) != 2:
            raise DatasetError(path, number, f"expected '<video_id> <labels>' (2 fields), got {len(fields)}")
        video_id = check_video_id(fields[0], path, number)
        rows.append((video_id, _parse_labels(fields[1], sep, num_classes, path, number), split,
                     (path, number)))
    return rows


def read_videolt(root: str | Path, videos_dir=None) -> Dataset:
    """VideoLT label lists: ``count-labels-train.lst``, ``train.lst``, ``validate.lst``, ``test.lst``."""
    root = Path(root)
    counts_file = root / "count-labels-train.lst"
    names, declared = {}, {}
    for number, text in _read_lines(counts_file):
        fields = text.split()
        if len(fields) != 3:
            raise DatasetError(counts_file, number, "expected '<ClassName> <index> <count>' (3 fields), "
                               f"got {len(fields)}")
        try:
            index, count = int(fields[1]), float(fields[2])
        except ValueError:
            raise DatasetError(counts_file, number, f"index {fields[1]!r} / count {fields[2]!r} "
                               "are not numbers") from None
        if index in names:
            raise DatasetError(counts_file, number, f"class index {index} listed twice")
        names[index], declared[index] = fields[0], count
    num_classes = len(names)
    if sorted(names) != list(range(num_classes)):
        missing = sorted(set(range(num_classes)) - set(names))[:5]
        raise DatasetError(counts_file, None, f"class indices must be 0..{num_classes - 1}; missing {missing}")
    lists = {"train": root / "train.lst", "val": root / "validate.lst", "test": root / "test.lst"}
    rows = []
    for split, path in lists.items():
        rows += _read_id_label_list(path, ",", num_classes, split)
    dataset = Dataset(
        videos=video_table(rows, index_video_files(videos_dir)),
        class_names=[names[i] for i in range(num_classes)],
        label_files={"count-labels-train.lst": counts_file, **{p.name: p for p in lists.values()}},
        declared_train_counts=np.array([declared[i] for i in range(num_classes)]),
    )
    actual = label_counts(dataset.videos[dataset.videos.split == "train"].labels, num_classes)
    mismatched = np.flatnonzero(actual != dataset.declared_train_counts)
    if len(mismatched):
        dataset.warnings.append(f"{counts_file}: declared counts differ from train.lst for "
                                f"{len(mismatched)} classes (e.g. class {mismatched[0]}); using train.lst")
    return dataset


def read_minikinetics(root: str | Path, videos_dir=None) -> Dataset:
    """MOVE's Mini-Kinetics-200 lists: ``train.lst``, ``val.lst`` (``<clip_id> <class>``).

    Class names come from ``kinetics_train.csv`` when present (index = alphabetical order of the
    class names, as the reference's class_to_idx); otherwise ``class_000``, ``class_001``, ...
    """
    root = Path(root)
    lists = {"train": root / "train.lst", "val": root / "val.lst"}
    label_files = {p.name: p for p in lists.values()}
    names = None
    csv_path = root / "kinetics_train.csv"
    if csv_path.exists():
        names = sorted({row["label"] for row in _read_csv(csv_path, required=("label",))})
        label_files[csv_path.name] = csv_path
    rows = []
    for split, path in lists.items():
        rows += _read_id_label_list(path, ",", len(names) if names else None, split)
    for video_id, labels, _, where in rows:
        if len(labels) != 1:
            raise DatasetError(where[0], where[1], f"MiniKinetics clips have one class, got {labels}")
    if names is None:
        num_classes = 1 + max(r[1][0] for r in rows)
        names = [f"class_{i:03d}" for i in range(num_classes)]
    return Dataset(video_table(rows, index_video_files(videos_dir)), names, label_files)


def _read_csv(path: Path, required: tuple) -> list:
    """Rows of a CSV as dicts (with ``_line``), checking the required header columns."""
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    rows = []
    try:  # csv.Error: e.g. a field over the csv module's limit (128 KiB)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(path, 1, f"missing column(s) {missing}; the header must include {list(required)}")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DatasetError(path, reader.line_num, "wrong number of fields")
            row["_line"] = reader.line_num
            rows.append(row)
    except csv.Error as exc:  # line_num counts the lines before the one being read
        raise DatasetError(path, reader.line_num + 1, f"not readable as CSV: {exc}") from None
    if not rows:
        raise DatasetError(path, None, "lists no videos (only a header); add one row per video")
    return rows


def _read_class_names(path: str | Path | None) -> list | None:
    if path is None:
        return None
    names = [text for _, text in _read_lines(Path(path))]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DatasetError(path, None, f"class name(s) listed twice: {duplicates[:5]}")
    return names


def _split_of(value: str, path, line: int) -> str:
    split = _SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise DatasetError(path, line, f"unknown split {value!r}; use one of train, val, test")
    return split


def read_kinetics_csv(csv_path: str | Path, class_names=None, videos_dir=None) -> Dataset:
    """Kinetics CSV (``label,youtube_id,time_start,time_end,split``); id ``<ytid>_<start:06d>_<end:06d>``.

    Class index = position in ``class_names`` (a file, one name per line) or, without it, the
    alphabetical order of the labels in the CSV.
    """
    csv_path = Path(csv_path)
    records = _read_csv(csv_path, required=("label", "youtube_id", "time_start", "time_end", "split"))
    names = _read_class_names(class_names) or sorted({r["label"] for r in records})
    index = {name: i for i, name in enumerate(names)}
    rows = []
    for r in records:
        line = r["_line"]
        if r["label"] not in index:
            raise DatasetError(csv_path, line, f"unknown class name {r['label']!r} (not in {class_names})")
        try:
            start, end = int(float(r["time_start"])), int(float(r["time_end"]))
        except (ValueError, OverflowError):  # not a number, NaN, inf
            raise DatasetError(csv_path, line, "time_start/time_end are not numbers") from None
        video_id = check_video_id(f"{r['youtube_id']}_{start:06d}_{end:06d}", csv_path, line)
        rows.append((video_id, [index[r["label"]]], _split_of(r["split"], csv_path, line), (csv_path, line)))
    label_files = {csv_path.name: csv_path}
    if class_names is not None:
        label_files["class_names"] = Path(class_names)
    return Dataset(video_table(rows, index_video_files(videos_dir)), names, label_files)


def read_generic_csv(csv_path: str | Path, class_names=None) -> Dataset:
    """Generic CSV ``video_id,path,labels,split``: labels ``;``-separated class indices.

    ``path`` is relative to the CSV's folder (or absolute; empty when there is no video file).
    """
    csv_path = Path(csv_path)
    records = _read_csv(csv_path, required=("video_id", "path", "labels", "split"))
    names = _read_class_names(class_names)
    num_classes = len(names) if names else None
    rows, paths = [], {}
    for r in records:
        line = r["_line"]
        video_id = check_video_id(r["video_id"].strip(), csv_path, line)
        labels = _parse_labels(r["labels"], ";", num_classes, csv_path, line)
        rows.append((video_id, labels, _split_of(r["split"], csv_path, line), (csv_path, line)))
        if r["path"].strip():
            paths[video_id] = str((csv_path.parent / r["path"].strip()).resolve())
    if names is None:
        names = [f"class_{i}" for i in range(1 + max((max(r[1]) for r in rows), default=-1))]
    label_files = {csv_path.name: csv_path}
    if class_names is not None:
        label_files["class_names"] = Path(class_names)
    return Dataset(video_table(rows, paths), names, label_files)
