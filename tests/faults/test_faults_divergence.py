"""NaN/Inf never reach training; a diverging run stops with a clear message and keeps its last good checkpoint.

RELIABILITY.md rows: "released .npy features: wrong dim, float64, NaN/Inf, empty, missing ids | clear
per-file report; NaN/Inf never reach training" and "training diverges (NaN loss) | stopped with a clear
message, last good checkpoint kept".
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from faults_utils import cli, load_checkpoint, manifest, ok, same_state_dict

pytestmark = pytest.mark.faults

TRAIN = ["--set", "train.method=baseline", "--set", "train.batch_size=8", "--set", "train.hidden=64",
         "--set", "train.eval_every=2", "--set", "train.train_frames=4", "--set", "train.eval_frames=6",
         "--set", "train.lr=0.001", "--no-progress"]


@pytest.fixture
def released_features(tmp_path):
    """Labels (csv) and released per-video .npy features, two of them poisoned with NaN / Inf."""
    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(3, 16)) * 2
    rows, n = [], 0
    for split, per_class in (("train", 8), ("val", 2), ("test", 2)):
        for c in range(3):
            for _ in range(per_class):
                rows.append((f"v{n:03d}", "", str(c), split))
                n += 1
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["video_id", "path", "labels", "split"]).to_csv(labels, index=False)
    npy = tmp_path / "npy"
    npy.mkdir()
    for video_id, _, label, _ in rows:
        frames = prototypes[int(label)] + rng.normal(size=(int(rng.integers(3, 9)), 16))
        np.save(npy / f"{video_id}.npy", frames.astype(np.float32))
    poisoned = {"v001": np.nan, "v010": np.inf}  # two training videos
    for video_id, value in poisoned.items():
        frames = np.load(npy / f"{video_id}.npy")
        frames[1, 3] = value
        np.save(npy / f"{video_id}.npy", frames)
    args = ["--set", "dataset.format=csv", "--set", f"dataset.root={labels}", "--set", "extract.source=npy",
            "--set", f"extract.npy_dir={npy}", "--set", "split.head=6", "--set", "split.tail=2",
            "--work-dir", str(tmp_path / "work")]
    return tmp_path / "work", args, sorted(poisoned)


def test_nan_and_inf_npy_features_are_reported_per_file_and_never_reach_training(released_features):
    work, args, poisoned = released_features
    args = [*args, "--set", "extract.max_failure_fraction=0.1"]
    ok(cli("run", "-q", "--no-progress", "--stage", "extract", *args))
    table = pd.read_parquet(work / "extract" / "videos.parquet").set_index("video_id")
    assert table.loc[poisoned, "status"].tolist() == ["failed", "failed"]
    assert "NaN" in table.at["v001", "error"] and "Inf" in table.at["v010", "error"]
    report = pd.read_csv(work / "extract" / "npy_report.csv", keep_default_na=False).set_index("video_id")
    assert report.loc[poisoned, "status"].tolist() == ["failed", "failed"]

    from extract.store import FeatureStore

    store = FeatureStore(work / "extract")
    assert not set(poisoned) & set(store.ids())
    assert all(np.isfinite(store.get(v).astype(np.float32)).all() for v in store.ids())

    ok(cli("run", "-q", "--stage", "split", *args))
    dropped = pd.read_parquet(work / "split" / "dropped.parquet").set_index("video_id")
    assert sorted(dropped.index) == poisoned and dropped.reason.str.startswith("extract failed:").all()
    split = pd.read_parquet(work / "split" / "videos.parquet")
    assert not set(poisoned) & set(split.video_id)

    ok(cli("run", "-q", "--stage", "train", *args, *TRAIN, "--set", "train.epochs=2"))
    log = [json.loads(line) for line in (work / "train" / "baseline" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(np.isfinite(row["loss"]) for row in log)


def test_too_many_poisoned_npy_files_fail_extract_and_training_is_refused(released_features):
    work, args, _ = released_features
    failed = cli("run", "-q", "--no-progress", "--stage", "extract", *args, "--set", "extract.max_failure_fraction=0")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "failed: extract: 2 of 36 videos failed" in failed.stderr
    assert str(work / "extract" / "videos.parquet") in failed.stderr  # where the per-file reasons are
    assert not (work / "extract" / "manifest.json").exists()
    refused = cli("run", "-q", "--stage", "train", *args, *TRAIN)
    assert refused.returncode == 2
    assert "stage 'train' needs 'extract', which has not run" in refused.stderr


@pytest.mark.parametrize("cache", ["ram", "none"])
@pytest.mark.parametrize("damaged_split", ["train", "val"])
def test_nan_in_a_damaged_shard_is_reported_with_the_video_or_shard_before_training(feature_work_dir, tmp_path, cache,
                                                                                    damaged_split):
    from extract.store import FeatureStore

    work = tmp_path / "work"
    args = feature_work_dir(work)
    store = FeatureStore(work / "extract")
    split = pd.read_parquet(work / "split" / "videos.parquet")
    video = split[split.split == damaged_split].video_id.iloc[0]
    shard = store.shards[0]
    k = shard.ids.index(video)
    first, last = shard.offsets[k], shard.offsets[k + 1]
    with open(shard.path, "r+b") as handle:  # bit rot: the video's features become NaN, the size stays
        handle.seek(shard.feat_offset + first * shard.dim * shard.dtype.itemsize)
        handle.write(np.full((last - first) * shard.dim, np.nan, shard.dtype).tobytes())
    result = cli("run", "-q", "--stage", "train", *args, *TRAIN, "--set", "train.epochs=2",
                 "--set", f"train.cache={cache}")
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert video in result.stderr or shard.path.name in result.stderr
    assert not (work / "train" / "baseline" / "manifest.json").exists()


def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(feature_work_dir, tmp_path):
    """A real divergence: the schedule multiplies the learning rate by 1e30 at epoch 3."""
    work = tmp_path / "work"
    args = [*feature_work_dir(work), *TRAIN, "--set", "train.lr_steps=[3]", "--set", "train.lr_gamma=1e30"]
    run_dir = work / "train" / "baseline"
    result = cli("run", "-q", "--stage", "train", *args, "--set", "train.epochs=8")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("failed: training diverged: the baseline loss is nan at epoch 3, batch ")
    assert f"the last good checkpoint is kept in {run_dir}" in result.stderr and "Lower train.lr" in result.stderr
    assert not (run_dir / "manifest.json").exists() and not (run_dir / "predictions.npz").exists()

    last = load_checkpoint(run_dir / "last.pt")  # whole, safely loadable, the pre-divergence epoch
    assert last["epoch"] == 3 and len(last["history"]) == 3
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] < 3
    # it is exactly the state a run that stopped after 3 epochs has
    clean = tmp_path / "clean"
    ok(cli("run", "-q", "--stage", "train", *feature_work_dir(clean), *TRAIN, "--set", "train.lr_steps=[3]",
           "--set", "train.lr_gamma=1e30", "--set", "train.epochs=3"))
    assert same_state_dict(last["model"], load_checkpoint(clean / "train" / "baseline" / "last.pt")["model"])
    assert manifest(clean / "train" / "baseline")["summary"]["epochs"] == 3

    again = cli("run", "-q", "--stage", "train", *args, "--set", "train.epochs=8")  # resumes, diverges again
    assert again.returncode == 1 and "resuming" not in again.stdout
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 3
