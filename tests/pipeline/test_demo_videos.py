"""The demo set: real H.264 videos, long-tailed, multi-label, temporal classes, seeded, atomic."""

import csv
import json

import av
import decord
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.demo_data import DemoSpec, class_names, generate_demo, train_profile

SMALL = DemoSpec(num_objects=2, directions=("left", "right"), max_train_per_class=6, min_train_per_class=2,
                 val_per_class=1, test_per_class=1, multi_label_fraction=0.25, frames=10, size=64,
                 distractor_frames=2)


def rows(out):
    with open(out / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("demo") / "set", seed=0)


def test_default_set_is_long_tailed_multi_label_and_complete(default_set):
    table = rows(default_set)
    names = (default_set / "class_names.txt").read_text().splitlines()
    assert names == class_names(DemoSpec()) and len(names) == 24 and "red_circle_moving_left" in names
    ids = [r["video_id"] for r in table]
    assert len(ids) == len(set(ids)) and 300 <= len(ids) <= 500
    primary = {s: np.bincount([int(r["labels"].split(";")[0]) for r in table if r["split"] == s], minlength=24)
               for s in ("train", "val", "test")}
    assert (primary["val"] == 2).all() and (primary["test"] == 3).all()
    profile = train_profile(DemoSpec())
    # exponential profile over ranks: n_r = max(3, int(30 * 0.1 ** (r / 23)))
    assert profile == [max(3, int(30 * 0.1 ** (r / 23))) for r in range(24)]
    assert sorted(primary["train"].tolist(), reverse=True) == profile
    multi = [r for r in table if ";" in r["labels"]]
    assert 0.05 < len(multi) / len(table) < 0.15
    for r in multi:
        first, second = map(int, r["labels"].split(";"))
        assert first != second and names[first].split("_moving_")[0] != names[second].split("_moving_")[0]
    meta = json.loads((default_set / "demo.json").read_text())
    assert meta["seed"] == 0 and meta["num_classes"] == 24


def test_every_video_decodes_with_decord_and_pyav(default_set):
    for r in rows(default_set)[::25]:
        path = default_set / r["path"]
        reader = decord.VideoReader(str(path))
        assert len(reader) == 16 and reader[0].shape == (96, 96, 3)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert sum(1 for _ in container.decode(stream)) == 16


def test_classes_need_temporal_order(tmp_path):
    """A 'right' video's object moves right over the labelled frames, a 'left' one moves left."""
    out = generate_demo(tmp_path / "small", seed=3, spec=SMALL)
    names = (out / "class_names.txt").read_text().splitlines()
    notes = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    checked = set()
    for note in notes:
        if len(note["labels"]) != 1:
            continue
        direction = names[note["labels"][0]].rsplit("_", 1)[1]
        frames = decord.VideoReader(str(out / "videos" / f"{note['video_id']}.mp4")).get_batch(
            list(range(*note["motion_frames"]))).asnumpy().astype(np.float32)
        colour = np.array(note["objects"][0]["colour"], dtype=np.float32)
        xs = []
        for frame in frames:  # centroid of the pixels close to the object's colour
            mask = np.abs(frame - colour).sum(axis=2) < 60
            if mask.sum() > 5:
                xs.append(np.nonzero(mask)[1].mean())
        assert len(xs) >= 4
        trend = np.polyfit(np.arange(len(xs)), xs, 1)[0]
        assert (trend > 0.5) if direction == "right" else (trend < -0.5), (note["video_id"], direction, xs)
        checked.add(direction)
    assert checked == {"left", "right"}


def test_same_seed_same_bytes_and_frames_other_seed_differs(tmp_path):
    a = generate_demo(tmp_path / "a", seed=1, spec=SMALL)
    b = generate_demo(tmp_path / "b", seed=1, spec=SMALL)
    c = generate_demo(tmp_path / "c", seed=2, spec=SMALL)
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    first = rows(a)[0]["path"]
    frames = [decord.VideoReader(str(d / first)).get_batch([0, 5, 9]).asnumpy() for d in (a, b)]
    assert np.array_equal(*frames)
    other = decord.VideoReader(str(c / rows(c)[0]["path"])).get_batch([0, 5, 9]).asnumpy()
    assert (a / "labels.csv").read_bytes() != (c / "labels.csv").read_bytes() or not np.array_equal(frames[0], other)


def test_second_call_reuses_a_complete_set(tmp_path):
    out = generate_demo(tmp_path / "set", seed=0, spec=SMALL)
    stamp = (out / "labels.csv").stat().st_mtime_ns
    assert generate_demo(tmp_path / "set", seed=0, spec=SMALL) == out
    assert (out / "labels.csv").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name != "set"]  # no temporary folders left behind


def test_demo_data_command(tmp_path):
    assert main(["demo-data", "-q", "--out", str(tmp_path / "d"), "--seed", "4"]) == 0
    assert json.loads((tmp_path / "d" / "demo.json").read_text())["seed"] == 4
    assert len(rows(tmp_path / "d")) > 300
