"""The synthetic long-tailed *feature* benchmark's generator: per-frame feature vectors drawn from
the generative model of docs/lt_benchmark.md, written as ``<video_id>.npy`` files plus a generic
label CSV, which the pipeline imports like released features (``extract.source=npy``).
Deterministic for a spec (:class:`pipeline.synthetic_config.SyntheticSpec`): the class model is
drawn from ``seed``, each video from (seed, index).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from manifests.datasets import SPLITS
from manifests.errors import UserError
from manifests.files import publish_dir
from pipeline.synthetic_config import SyntheticSpec, group_thresholds, train_profile

GENERATOR_VERSION = 1


def _split_counts(spec: SyntheticSpec, train: np.ndarray) -> dict:
    return {"train": train,
            "val": np.maximum(spec.min_val, np.round(spec.val_fraction * train)).astype(np.int64),
            "test": np.maximum(spec.min_test, np.round(spec.test_fraction * train)).astype(np.int64)}


def plan_videos(spec: SyntheticSpec) -> tuple:
    """Every video's split and labels: ``(videos, train_count_of_class)``, deterministic in the spec."""
    rng = np.random.default_rng([spec.seed, 1])
    c = spec.num_classes
    rank_of_class = rng.permutation(c)
    per_class = _split_counts(spec, train_profile(spec)[rank_of_class])
    group = np.arange(c) // spec.group_size
    frequency = per_class["train"] / per_class["train"].sum()
    videos = []
    for split in SPLITS:
        primaries = rng.permutation(np.repeat(np.arange(c), per_class[split]))
        second = rng.random(len(primaries)) < spec.multi_label_share
        for primary, multi in zip(primaries.tolist(), second.tolist()):
            labels = [primary]
            if multi:
                labels.append(_second_label(rng, primary, group, frequency, spec.cooccurrence))
            videos.append({"split": split, "labels": labels})
    for index, video in enumerate(videos):
        video["index"], video["video_id"] = index, f"syn_{index:06d}"
    return videos, per_class["train"]


def _second_label(rng, primary: int, group: np.ndarray, frequency: np.ndarray, cooccurrence: float) -> int:
    mates = np.flatnonzero((group == group[primary]) & (np.arange(len(group)) != primary))
    if len(mates) and rng.random() < cooccurrence:
        return int(rng.choice(mates))
    weights = frequency.copy()
    weights[primary] = 0
    return int(rng.choice(len(weights), p=weights / weights.sum()))


# ----------------------------------------------------------------------------- features

class ClassModel:
    """Prototypes, modes and backgrounds of a spec (drawn once from its seed)."""

    def __init__(self, spec: SyntheticSpec):
        rng = np.random.default_rng([spec.seed, 2])
        d, c = spec.dim, spec.num_classes
        groups = -(-c // spec.group_size)
        centers = rng.standard_normal((groups, d))
        own = rng.standard_normal((c, d))
        s = spec.class_separation
        self.prototypes = np.sqrt(1 - s) * centers[np.arange(c) // spec.group_size] + np.sqrt(s) * own
        offsets = rng.standard_normal((c, spec.modes, d))
        self.modes = self.prototypes[:, None, :] + spec.mode_spread * offsets
        self.backgrounds = rng.standard_normal((spec.backgrounds, d))


def video_features(spec: SyntheticSpec, model: ClassModel, index: int, labels: list) -> np.ndarray:
    """(frames, dim) float32 features of video ``index`` with ``labels`` (deterministic)."""
    rng = np.random.default_rng([spec.seed, 3, index])
    d = spec.dim
    frames = int(rng.integers(spec.frames_min, spec.frames_max + 1))
    share = rng.uniform(spec.distractor_min, spec.distractor_max)
    signal = max(len(labels), frames - int(round(share * frames)))
    start = int(rng.integers(0, frames - signal + 1))
    x = np.repeat(model.backgrounds[rng.integers(spec.backgrounds)][None], frames, axis=0)
    segments = np.array_split(np.arange(start, start + signal), len(labels))
    for label, rows in zip(labels, segments):
        mode = model.modes[label, rng.integers(spec.modes)]
        x[rows] = mode + spec.video_spread * rng.standard_normal(d)
    x += spec.frame_noise * rng.standard_normal((frames, d))
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- writing

def _meta(spec: SyntheticSpec, videos: list, train_counts: np.ndarray) -> dict:
    head, tail = group_thresholds(spec)
    return {"format": "vltr-synthetic", "generator_version": GENERATOR_VERSION, "spec": spec.model_dump(),
            "videos": {s: sum(v["split"] == s for v in videos) for s in SPLITS},
            "multi_label_videos": sum(len(v["labels"]) > 1 for v in videos),
            "train_per_class": train_counts.tolist(), "group_thresholds": {"head": head, "tail": tail}}


def is_complete(out_dir: Path, spec: SyntheticSpec) -> bool:
    """True if ``out_dir`` holds a finished set of this generator version and spec."""
    try:
        meta = json.loads((Path(out_dir) / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("generator_version") == GENERATOR_VERSION and meta.get("spec") == spec.model_dump()


def _write_set(tmp: Path, spec: SyntheticSpec, progress: bool) -> None:
    """Write the whole set into ``tmp``: features/<id>.npy, labels.csv, class_names.txt, synthetic.json."""
    videos, train_counts = plan_videos(spec)
    model = ClassModel(spec)
    (tmp / "features").mkdir()
    rows = ["video_id,path,labels,split"]
    from tqdm.auto import tqdm

    for video in tqdm(videos, desc="synthetic features", unit="video", disable=not progress):
        np.save(tmp / "features" / f"{video['video_id']}.npy",
                video_features(spec, model, video["index"], video["labels"]).astype(np.float16))
        rows.append(f"{video['video_id']},,{';'.join(map(str, video['labels']))},{video['split']}")
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    names = [f"g{c // spec.group_size:03d}_c{c:04d}" for c in range(spec.num_classes)]
    (tmp / "class_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (tmp / "synthetic.json").write_text(json.dumps(_meta(spec, videos, train_counts), indent=1) + "\n",
                                        encoding="utf-8")


def generate_synthetic(out_dir, spec: SyntheticSpec, progress: bool = False) -> Path:
    """Write the benchmark (``labels.csv``, ``class_names.txt``, ``features/<id>.npy``,
    ``synthetic.json``) into ``out_dir``; a finished set of the same spec is reused as it is.

    The set is written to a temporary sibling and renamed into place when complete; a folder that
    holds something else is refused.
    """
    out_dir = Path(out_dir).absolute()
    if is_complete(out_dir, spec):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "synthetic.json").exists():
        raise UserError(f"{out_dir} is not empty and holds no synthetic benchmark; set dataset.root to an "
                        "empty or new folder")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as exc:
        raise UserError(f"cannot write the synthetic benchmark next to {out_dir}: {exc.strerror}") from None
    try:
        _write_set(tmp, spec, progress)
        publish_dir(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a set of another spec
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
