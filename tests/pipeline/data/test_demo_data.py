"""Tests of the seeded long-tailed demo video generator (pipeline.data.demo_data)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from pipeline.data import demo_data
from pipeline.data.demo_data import DemoSpec, DemoSpecError, class_names, generate_demo, train_profile

SMALL = DemoSpec(num_objects=3, directions=("left", "right"), max_train_per_class=6, min_train_per_class=2,
                 imbalance=0.3, val_per_class=1, test_per_class=1, multi_label_fraction=0.25,
                 frames=10, fps=5, size=64, distractor_frames=2)
TINY = DemoSpec(num_objects=2, directions=("up", "down"), max_train_per_class=2, min_train_per_class=1,
                imbalance=0.5, val_per_class=1, test_per_class=0, multi_label_fraction=0.0,
                frames=6, fps=4, size=48, distractor_frames=1)


# ----------------------------------------------------------------------------- helpers

def read_labels(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["video_id", "path", "labels", "split"]
        rows = list(reader)
    for row in rows:
        row["labels"] = [int(x) for x in row["labels"].split(";")]
    return rows


def read_annotations(root: Path) -> dict[str, dict]:
    with open(root / "annotations.jsonl", encoding="utf-8") as handle:
        return {a["video_id"]: a for a in map(json.loads, handle)}


def decode_decord(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def decode_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def centroids(frames: np.ndarray, colour) -> np.ndarray:
    """(x, y) centroid per frame of the pixels close to ``colour`` (nan where none)."""
    dist = np.linalg.norm(frames.astype(np.float32) - np.asarray(colour, np.float32), axis=-1)
    mask = dist < 90
    ys, xs = np.mgrid[0:frames.shape[1], 0:frames.shape[2]]
    n = mask.sum(axis=(1, 2)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xs).sum(axis=(1, 2)) / n
        cy = (mask * ys).sum(axis=(1, 2)) / n
    return np.stack([cx, cy], axis=1), n


def check_motion(root: Path, annotation: dict, spec: DemoSpec) -> None:
    frames = decode_decord(root / "videos" / f"{annotation['video_id']}.mp4")
    start, stop = annotation["motion_frames"]
    assert stop - start == spec.frames - spec.distractor_frames
    obj = annotation["objects"][0]
    xy, n = centroids(frames[start:stop], obj["colour"])
    assert (n > 20).all(), f"object not found in every motion frame of {annotation['video_id']}"
    axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[obj["direction"]]
    along = sign * xy[:, axis]
    assert (np.diff(along) > 0).all(), (annotation["video_id"], obj["direction"], xy)
    assert along[-1] - along[0] > 0.25 * spec.size          # travels a good part of the frame
    across = xy[:, 1 - axis]
    assert np.ptp(across) < 3.0                              # and only along its direction


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("small") / "demo", seed=1, spec=SMALL)


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "demo"
    start = time.perf_counter()
    root = generate_demo(out, seed=0)
    return root, time.perf_counter() - start


# ----------------------------------------------------------------------------- small set

def test_files_exist_and_every_video_decodes(small_set):
    root = small_set
    for name in ("labels.csv", "class_names.txt", "demo.json", "annotations.jsonl"):
        assert (root / name).is_file()
    rows = read_labels(root)
    names = (root / "class_names.txt").read_text(encoding="utf-8").splitlines()
    assert names == class_names(SMALL)
    assert len(names) == SMALL.num_objects * len(SMALL.directions) == 6
    assert names[0] == "red_circle_moving_left" and names[1] == "red_circle_moving_right"
    assert len({r["video_id"] for r in rows}) == len(rows)
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(f"{r['video_id']}.mp4" for r in rows)
    for row in rows:
        assert row["path"] == f"videos/{row['video_id']}.mp4"
        assert row["split"] in {"train", "val", "test"}
        assert all(0 <= label < len(names) for label in row["labels"])
        assert len(set(row["labels"])) == len(row["labels"])
        path = root / row["path"]
        a = decode_decord(path)
        b = decode_pyav(path)
        assert a.shape == b.shape == (SMALL.frames, SMALL.size, SMALL.size, 3)
    with av.open(str(root / rows[0]["path"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == SMALL.fps
    assert decord.VideoReader(str(root / rows[0]["path"])).get_avg_fps() == pytest.approx(SMALL.fps)


def test_small_set_counts_and_metadata(small_set):
    rows = read_labels(small_set)
    meta = json.loads((small_set / "demo.json").read_text(encoding="utf-8"))
    assert meta["seed"] == 1 and meta["spec"] == SMALL.to_dict()
    assert DemoSpec.from_dict(meta["spec"]) == SMALL
    assert meta["counts"]["videos"]["total"] == len(rows)
    for split in ("train", "val", "test"):
        split_rows = [r for r in rows if r["split"] == split]
        assert meta["counts"]["videos"][split] == len(split_rows)
        primary = np.bincount([r["labels"][0] for r in split_rows], minlength=6).tolist()
        assert meta["counts"]["primary_per_class"][split] == primary
        n_multi = sum(len(r["labels"]) == 2 for r in split_rows)
        assert n_multi == meta["counts"]["multi_label_videos"][split] == round(0.25 * len(split_rows))
    targets = [c["train_target"] for c in meta["classes"]]
    assert meta["counts"]["primary_per_class"]["train"] == targets
    assert sorted(targets, reverse=True) == train_profile(SMALL)


def test_multi_label_videos_have_two_different_objects(small_set):
    annotations = read_annotations(small_set)
    multi = [a for a in annotations.values() if len(a["labels"]) == 2]
    assert multi
    n_dir = len(SMALL.directions)
    for a in multi:
        first, second = a["labels"]
        assert first // n_dir != second // n_dir
        assert [o["label"] for o in a["objects"]] == a["labels"]


def test_objects_move_in_their_direction(small_set):
    annotations = read_annotations(small_set)
    single = [a for a in annotations.values() if len(a["labels"]) == 1]
    seen = set()
    for a in single:
        check_motion(small_set, a, SMALL)
        seen.add(a["objects"][0]["direction"])
    assert seen == {"left", "right"}


def test_same_object_left_and_right_differ_in_appearance(small_set):
    """'left' and 'right' show the same object with another surface pattern, visible in one frame."""
    annotations = read_annotations(small_set)
    by_class = {}
    for a in annotations.values():
        if len(a["labels"]) == 1:
            by_class.setdefault(a["labels"][0], a)
    left, right = by_class[0], by_class[1]              # red circle moving left / right
    assert left["objects"][0]["object"] == right["objects"][0]["object"]
    assert left["objects"][0]["colour"] == right["objects"][0]["colour"]
    assert (left["objects"][0]["pattern"], right["objects"][0]["pattern"]) == ("plain", "bands")
    spread = []
    for a in (left, right):  # brightness spread inside the object in its first motion frame
        frame = decode_decord(small_set / "videos" / f"{a['video_id']}.mp4")[a["motion_frames"][0]].astype(float)
        (x, y), r = a["objects"][0]["start_xy"], a["objects"][0]["radius"]
        inner = frame[int(y - r / 3):int(y + r / 3), int(x - r / 3):int(x + r / 3)].sum(axis=2)
        spread.append(inner.std())
    assert spread[1] > 2 * spread[0]  # the bands are visible, the plain surface is not


def test_distractor_frames_hold_no_labelled_object(small_set):
    annotations = read_annotations(small_set)
    a = next(a for a in annotations.values() if len(a["labels"]) == 1)
    frames = decode_decord(small_set / "videos" / f"{a['video_id']}.mp4")
    start, stop = a["motion_frames"]
    assert (stop - start) + (SMALL.frames - stop) + start == SMALL.frames
    other = [i for i in range(SMALL.frames) if not start <= i < stop]
    assert len(other) == SMALL.distractor_frames
    # the distractor frames have another background than the motion frames
    bg_motion = np.median(frames[start:stop].reshape(-1, 3), axis=0)
    bg_other = np.median(frames[other].reshape(-1, 3), axis=0)
    assert np.abs(bg_motion - bg_other).max() > 3


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_set_different_seed_different(tmp_path):
    a = generate_demo(tmp_path / "a", seed=7, spec=TINY)
    b = generate_demo(tmp_path / "b", seed=7, spec=TINY)
    c = generate_demo(tmp_path / "c", seed=8, spec=TINY)
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert (a / "annotations.jsonl").read_bytes() == (b / "annotations.jsonl").read_bytes()
    for row in read_labels(a):
        assert (a / row["path"]).read_bytes() == (b / row["path"]).read_bytes()  # the same bytes, not only pixels
    first = read_labels(a)[0]["path"]
    differs = ((a / "labels.csv").read_bytes() != (c / "labels.csv").read_bytes()
               or not np.array_equal(decode_pyav(a / first), decode_pyav(c / first)))
    assert differs
    assert not np.array_equal(decode_pyav(a / first), decode_pyav(c / first))


def test_the_encoder_runs_without_the_settings_that_vary_between_runs(tmp_path):
    """x264 writes its settings into the stream (an SEI text): one thread and no macroblock-tree rate
    control, which made a few of the default set's videos differ in bytes between two concurrent runs."""
    root = generate_demo(tmp_path / "a", seed=7, spec=TINY)
    data = (root / read_labels(root)[0]["path"]).read_bytes()
    settings = data[data.index(b"x264 - core"):].split(b"\x00")[0].decode()
    options = dict(item.split("=", 1) for item in settings.split(" - options: ")[1].split() if "=" in item)
    assert options["threads"] == "1" and options["lookahead_threads"] == "1" and options["mbtree"] == "0"
    assert options["bframes"] == "0"


# ----------------------------------------------------------------------------- atomicity / idempotence

def test_second_call_reuses_the_set(tmp_path):
    out = tmp_path / "demo"
    root = generate_demo(out, seed=3, spec=TINY)
    assert root == out
    watched = [root / "demo.json", root / "labels.csv", next((root / "videos").iterdir())]
    before = [p.stat().st_mtime_ns for p in watched]
    time.sleep(0.02)
    assert generate_demo(out, seed=3, spec=TINY) == out
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]      # no temporary siblings


def test_other_seed_replaces_the_set(tmp_path):
    out = tmp_path / "demo"
    generate_demo(out, seed=3, spec=TINY)
    generate_demo(out, seed=4, spec=TINY)
    assert json.loads((out / "demo.json").read_text())["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    real_encode = demo_data._encode
    calls = []

    def failing_encode(path, pixels, fps):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        real_encode(path, pixels, fps)

    monkeypatch.setattr(demo_data, "_encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(out, seed=5, spec=TINY)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(demo_data, "_encode", real_encode)
    assert demo_data.is_complete(generate_demo(out, seed=5, spec=TINY), 5, TINY)


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DemoSpecError):
        generate_demo(tmp_path, seed=0, spec=TINY)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_progress_bar(tmp_path, capsys):
    generate_demo(tmp_path / "demo", seed=0, spec=TINY, progress=True)
    assert "demo videos" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs", [
    {"size": 63}, {"directions": ("left", "sideways")}, {"directions": ("left", "left")},
    {"min_train_per_class": 40}, {"imbalance": 0.0}, {"multi_label_fraction": 1.5},
    {"frames": 4, "distractor_frames": 3}, {"num_objects": 0}, {"num_objects": 1000},
])
def test_invalid_spec(kwargs):
    with pytest.raises(DemoSpecError):
        DemoSpec(**kwargs)


# ----------------------------------------------------------------------------- default spec

def test_default_set_counts_and_profile(default_set):
    root, seconds = default_set
    spec = DemoSpec()
    assert seconds < 60, f"default demo took {seconds:.1f}s"
    rows = read_labels(root)
    meta = json.loads((root / "demo.json").read_text(encoding="utf-8"))
    C = 24
    assert spec.num_classes == C
    assert len((root / "class_names.txt").read_text().splitlines()) == C

    # ids unique, splits disjoint, files present
    ids = [r["video_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("demo_") and i.replace("_", "").isalnum() for i in ids)
    by_split = {s: {r["video_id"] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    assert sum(map(len, by_split.values())) == len(rows)
    assert all((root / r["path"]).is_file() for r in rows)

    # exponential long tail of the train split (primary labels), by the seeded rank
    train_primary = np.bincount([r["labels"][0] for r in rows if r["split"] == "train"], minlength=C)
    ranks = [c["train_rank"] for c in meta["classes"]]
    assert sorted(ranks) == list(range(C))
    by_rank = [int(train_primary[ranks.index(r)]) for r in range(C)]
    expected = [max(3, int(30 * 0.1 ** (r / (C - 1)))) for r in range(C)]
    assert by_rank == expected
    assert all(a >= b for a, b in zip(by_rank, by_rank[1:]))
    assert by_rank[0] == 30 and by_rank[-1] == 3 and min(by_rank) == 3
    assert ranks != list(range(C))                       # class -> rank assignment is shuffled

    # val / test are balanced over primary labels and hold every class
    for split, n in (("val", 2), ("test", 3)):
        primary = np.bincount([r["labels"][0] for r in rows if r["split"] == split], minlength=C)
        assert (primary == n).all()

    # multi-label fraction close to the setting, in every split
    for split, members in by_split.items():
        multi = sum(len(r["labels"]) == 2 for r in rows if r["video_id"] in members)
        assert abs(multi / len(members) - 0.1) <= 0.5 / len(members) + 1e-9
    # total train labels keep the long tail approximately (secondary labels drawn ~ profile)
    train_labels = np.array(meta["counts"]["labels_per_class"]["train"])
    assert (train_labels >= train_primary).all()
    head = [ranks.index(r) for r in range(6)]
    tail = [ranks.index(r) for r in range(C - 6, C)]
    assert train_labels[head].sum() > 3 * train_labels[tail].sum()


def test_default_set_videos_and_motion(default_set):
    root, _ = default_set
    spec = DemoSpec()
    annotations = read_annotations(root)
    single = [a for a in annotations.values() if len(a["labels"]) == 1]
    checked = {}
    for a in single:
        direction = a["objects"][0]["direction"]
        if checked.get(direction, 0) >= 6:
            continue
        path = root / "videos" / f"{a['video_id']}.mp4"
        assert decode_pyav(path).shape == (16, 96, 96, 3)
        check_motion(root, a, spec)
        checked[direction] = checked.get(direction, 0) + 1
    assert checked == {d: 6 for d in spec.directions}
