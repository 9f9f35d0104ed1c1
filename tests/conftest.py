"""Shared fixtures: small hand-made label lists in each supported format."""

from pathlib import Path

import pytest

# A tiny VideoLT: class names in the file's own (not sorted) order, counts written as floats.
VIDEOLT_CLASSES = [("river", 501), ("beach", 500), ("zebra", 101), ("soccerJuggling", 100), ("apple", 3)]


def write_videolt(root: Path, classes=VIDEOLT_CLASSES) -> Path:
    """Write a VideoLT-format label folder whose train counts equal the declared ones.

    Every video has one label except that the first 3 train videos of class 0 also carry class 4,
    so class 4's count is 3 = 3 multi-label videos, and class 0 keeps its declared count.
    """
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{name} {i} {float(count)}" for i, (name, count) in enumerate(classes)]
    (root / "count-labels-train.lst").write_text("\n".join(lines) + "\n")
    train, n = [], 0
    for i, (_, count) in enumerate(classes):
        if i == 4:
            continue  # class 4 appears only as a second label
        for k in range(count):
            labels = f"{i},4" if (i == 0 and k < 3) else f"{i}"
            train.append(f"tr{n:05d} {labels}")
            n += 1
    (root / "train.lst").write_text("\n".join(train) + "\n")
    (root / "validate.lst").write_text("".join(f"va{i:03d} {i % len(classes)}\n" for i in range(7)))
    (root / "test.lst").write_text("".join(f"te{i:03d} {i % len(classes)}\n" for i in range(11))
                                   + "te900 0,2\n")
    return root


@pytest.fixture
def videolt_dir(tmp_path) -> Path:
    return write_videolt(tmp_path / "videolt")


def write_feature_work_dir(work_dir: Path, num_classes=4, per_class=(24, 12, 6, 3), dim=16, seed=0):
    """A work dir as ingest + extract + split leave it, with synthetic but learnable features.

    Class c's videos have frames ``prototype_c + noise`` (3..12 frames each). Written through the
    pipeline's own stages (ingest, split) and the store's public writer (extract).
    """
    import numpy as np
    import pandas as pd

    from extract.store import ShardWriter
    from manifests.manifest import build_manifest, write_manifest
    from pipeline.cli import main

    rng = np.random.default_rng(seed)
    data = work_dir.parent / f"{work_dir.name}-labels"
    data.mkdir(parents=True, exist_ok=True)
    rows, n = [], 0
    for split, counts in (("train", per_class), ("val", (3,) * num_classes), ("test", (4,) * num_classes)):
        for c, count in enumerate(counts):
            for _ in range(count):
                rows.append((f"v{n:04d}", "", str(c), split))
                n += 1
    pd.DataFrame(rows, columns=["video_id", "path", "labels", "split"]).to_csv(data / "labels.csv", index=False)
    args = ["--set", "dataset.format=csv", "--set", f"dataset.root={data / 'labels.csv'}",
            "--set", "split.head=10", "--set", "split.tail=4", "--work-dir", str(work_dir)]
    assert main(["run", "-q", "--stage", "ingest", *args]) == 0
    prototypes = rng.normal(size=(num_classes, dim)) * 2
    extract = work_dir / "extract"
    extract.mkdir(parents=True)
    writer = ShardWriter(extract, "shard-00000.h5", dim, "float16")
    statuses = []
    for video_id, _, label, _ in rows:
        frames = int(rng.integers(3, 13))
        writer.add(video_id, prototypes[int(label)] + rng.normal(size=(frames, dim)), {})
        statuses.append((video_id, "ok", frames, "shard-00000.h5", "synthetic", None))
    writer.close()
    pd.DataFrame(statuses, columns=["video_id", "status", "num_frames", "shard", "decoder", "error"]).to_parquet(
        extract / "videos.parquet")
    from pipeline.config import load_config

    cfg = load_config(None, tuple(args[1:6:2]))
    write_manifest(extract, build_manifest("extract", extract, cfg.extract.model_dump(),
                                           {"ingest/manifest.json": work_dir / "ingest" / "manifest.json"},
                                           ["videos.parquet", "shard-00000.h5"], {}))
    assert main(["run", "-q", "--stage", "split", *args]) == 0
    return args


@pytest.fixture
def feature_work_dir():
    """:func:`write_feature_work_dir` as a fixture (test modules cannot import conftest reliably)."""
    return write_feature_work_dir


def pytest_collection_modifyitems(config, items):
    """Scale every test's pytest-timeout (its marker or the ini default) with the machine (machine_load)."""
    from machine_load import time_scale

    scale = time_scale()
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = float(marker.args[0]) if marker and marker.args else default
        if seconds:
            item.add_marker(pytest.mark.timeout(seconds * scale), append=False)
