"""The synthetic long-tailed feature benchmark: frequency profiles, split sizes, multi-label share,
co-occurrence, thresholds that scale with the profile, the feature model, determinism, and the files
the pipeline imports."""

import json
import math

import numpy as np
import pytest

from manifests.ingest.readers import read_generic_csv
from manifests.errors import UserError
from pipeline.data.synthetic_data import ClassModel, generate_synthetic, plan_videos, video_features
from pipeline.synthetic_config import SyntheticSpec, group_thresholds, train_profile

SMALL = dict(num_classes=12, max_per_class=20, imbalance=10, dim=16, frames_min=6, frames_max=10)


def test_exp_profile_is_the_geometric_curve():
    spec = SyntheticSpec(num_classes=5, max_per_class=16, imbalance=16)
    assert train_profile(spec).tolist() == [16, 8, 4, 2, 1]
    spec = SyntheticSpec(num_classes=200, max_per_class=84, imbalance=42)
    counts = train_profile(spec)
    expected = [round(84 * 42 ** (-r / 199)) for r in range(200)]
    assert counts.tolist() == expected and counts[0] == 84 and counts[-1] == 2


def test_step_profile():
    spec = SyntheticSpec(num_classes=4, max_per_class=30, imbalance=10, profile="step")
    assert train_profile(spec).tolist() == [30, 30, 3, 3]
    spec = SyntheticSpec(num_classes=10, max_per_class=30, imbalance=10, profile="step", step_head_share=0.3)
    assert train_profile(spec).tolist() == [30] * 3 + [3] * 7


def test_group_thresholds_scale_to_videolt_shares():
    spec = SyntheticSpec(num_classes=100, max_per_class=100, imbalance=100)
    expected_head = round(100 * 0.01 ** (round(100 * 47 / 1004) / 99))  # rank 5
    expected_tail = round(100 * 0.01 ** ((100 - round(100 * 340 / 1004)) / 99))  # rank 66
    assert group_thresholds(spec) == (expected_head, expected_tail) == (79, 5)
    for classes in (200, 1004):  # the shares hold whatever the size (up to ties in rounded counts)
        spec = SyntheticSpec(num_classes=classes)
        counts = train_profile(spec)
        head, tail = group_thresholds(spec)
        assert abs((counts > head).mean() - 47 / 1004) < 0.03
        assert abs((counts <= tail).mean() - 340 / 1004) < 0.05


def test_split_sizes_and_profile_in_the_plan():
    spec = SyntheticSpec(**SMALL, min_val=3, min_test=5, val_fraction=0.2, test_fraction=0.5)
    videos, train_counts = plan_videos(spec)
    assert sorted(train_counts.tolist(), reverse=True) == train_profile(spec).tolist()
    for split, low, fraction in (("val", 3, 0.2), ("test", 5, 0.5)):
        primary = np.bincount([v["labels"][0] for v in videos if v["split"] == split], minlength=12)
        assert primary.tolist() == [max(low, round(fraction * n)) for n in train_counts]
    primary = np.bincount([v["labels"][0] for v in videos if v["split"] == "train"], minlength=12)
    assert primary.tolist() == train_counts.tolist()
    assert len({v["video_id"] for v in videos}) == len(videos)


def test_multi_label_share_and_cooccurrence():
    spec = SyntheticSpec(num_classes=40, max_per_class=200, imbalance=10, multi_label_share=0.2, cooccurrence=1.0)
    videos, _ = plan_videos(spec)
    multi = [v["labels"] for v in videos if len(v["labels"]) > 1]
    n = len(videos)
    assert abs(len(multi) / n - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    assert all(a // 4 == b // 4 and a != b for a, b in multi)  # same group of 4, another class
    spec = spec.model_copy(update={"cooccurrence": 0.0})
    videos, _ = plan_videos(spec)
    pairs = [v["labels"] for v in videos if len(v["labels"]) > 1]
    same = np.mean([a // 4 == b // 4 for a, b in pairs])
    assert same < 0.2 and all(a != b for a, b in pairs)  # drawn by frequency over 39 other classes


def test_features_follow_the_model():
    spec = SyntheticSpec(**SMALL, frame_noise=0.0, video_spread=0.0, distractor_min=0.5, distractor_max=0.5)
    model = ClassModel(spec)
    for index in range(20):
        x = video_features(spec, model, index, [3])
        assert x.dtype == np.float32 and x.shape[1] == 16 and 6 <= len(x) <= 10
        is_mode = np.array([any(np.allclose(row, m, atol=1e-5) for m in model.modes[3]) for row in x])
        is_background = np.array([any(np.allclose(row, b, atol=1e-5) for b in model.backgrounds) for row in x])
        assert np.all(is_mode ^ is_background)
        signal = np.flatnonzero(is_mode)
        assert len(signal) == len(x) - round(0.5 * len(x))
        assert np.all(np.diff(signal) == 1)  # one contiguous action segment
    x = video_features(spec, model, 0, [3, 7])
    modes = [any(np.allclose(row, m, atol=1e-5) for m in model.modes[c]) for c in (3, 7) for row in x]
    assert sum(modes) == len(x) - round(0.5 * len(x))  # signal shared by both actions


def test_confusable_groups_and_separation():
    spec = SyntheticSpec(num_classes=40, dim=2048, class_separation=0.3)
    p = ClassModel(spec).prototypes
    cos = (p @ p.T) / np.outer(np.linalg.norm(p, axis=1), np.linalg.norm(p, axis=1))
    same = np.mean([cos[a, b] for a in range(40) for b in range(40) if a != b and a // 4 == b // 4])
    other = np.mean([cos[a, b] for a in range(40) for b in range(40) if a // 4 != b // 4])
    assert abs(same - 0.7) < 0.05 and abs(other) < 0.05


def test_deterministic_for_a_spec():
    spec = SyntheticSpec(**SMALL)
    assert plan_videos(spec)[0] == plan_videos(spec)[0]
    a = video_features(spec, ClassModel(spec), 5, [1])
    b = video_features(spec, ClassModel(spec), 5, [1])
    assert np.array_equal(a, b)
    other = spec.model_copy(update={"seed": 1})
    assert not np.array_equal(a, video_features(other, ClassModel(other), 5, [1]))


def test_generated_files_are_a_dataset(tmp_path):
    spec = SyntheticSpec(**SMALL)
    out = generate_synthetic(tmp_path / "bench", spec)
    dataset = read_generic_csv(out / "labels.csv", out / "class_names.txt")
    videos, _ = plan_videos(spec)
    assert dataset.num_classes == 12 and len(dataset.videos) == len(videos)
    assert dataset.videos.labels.tolist() == [v["labels"] for v in videos]
    first = dataset.videos.video_id[0]
    stored = np.load(out / "features" / f"{first}.npy")
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored, video_features(spec, ClassModel(spec), 0, videos[0]["labels"]), atol=1e-2)
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["group_thresholds"] == dict(zip(("head", "tail"), group_thresholds(spec)))
    stamp = (out / "labels.csv").stat().st_mtime_ns
    assert generate_synthetic(out, spec) == out and (out / "labels.csv").stat().st_mtime_ns == stamp  # reused
    changed = generate_synthetic(out, spec.model_copy(update={"seed": 3}))  # another spec replaces it
    assert json.loads((changed / "synthetic.json").read_text())["spec"]["seed"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        generate_synthetic(foreign, spec)


def test_spec_validation():
    with pytest.raises(ValueError, match="frames_max"):
        SyntheticSpec(frames_min=10, frames_max=5)
    with pytest.raises(ValueError, match="distractor_max"):
        SyntheticSpec(distractor_min=0.6, distractor_max=0.5)
