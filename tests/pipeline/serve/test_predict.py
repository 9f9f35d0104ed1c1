"""`predict` and `export`: a trained demo run on real H.264 videos scored again from the raw files.

One small demo (6 classes, ~80 clips of 8 frames at 64 px) is extracted with the shipped
EfficientNet-Lite0 weights and trained (baseline and MEDC, 10 epochs) once per module; every test
predicts from its raw videos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bundle_testutils import rewrite_bundle
from manifests.errors import UserError
from pipeline.cli import main
from pipeline.data.demo_data import DemoSpec, generate_demo

SPEC = DemoSpec(num_objects=3, directions=("left", "right"), max_train_per_class=10, min_train_per_class=3,
                val_per_class=4, test_per_class=4, frames=8, size=64, distractor_frames=1)
METHODS = ("baseline", "medc")


def run_args(demo: Path, work: Path) -> list:
    return ["--no-progress", "--config", "demo", "--work-dir", str(work),
            "--set", "dataset.format=csv", "--set", f"dataset.root={demo / 'labels.csv'}",
            "--set", f"dataset.class_names={demo / 'class_names.txt'}",
            "--set", "extract.num_frames=4", "--set", "extract.resize=64", "--set", "extract.crop=64",
            "--set", "split.head=6", "--set", "split.tail=3", "--set", f"train.method=[{','.join(METHODS)}]",
            "--set", "train.epochs=10", "--set", "train.lr_steps=[]", "--set", "train.eval_every=5",
            "--set", "train.hidden=64", "--set", "train.batch_size=16", "--set", "train.train_frames=4",
            "--set", "train.eval_frames=4", "--set", "train.num_workers=0",
            "--set", "medc.trunk_dim=64", "--set", "medc.expert_dim=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    demo = generate_demo(root / "demo", seed=0, spec=SPEC)
    work = root / "work"
    assert main(["-q", "run", *run_args(demo, work)]) == 0
    labels = pd.read_csv(demo / "labels.csv", dtype=str)
    labels["path"] = [str(demo / p) for p in labels.path]
    names = (demo / "class_names.txt").read_text().split()
    return SimpleNamespace(root=root, demo=demo, work=work, labels=labels.set_index("video_id"), names=names)


def cli(capsys, *argv) -> tuple:
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluated(trained, method: str) -> tuple:
    """The test videos in the order the train stage scored them, and those scores as probabilities."""
    with np.load(trained.work / "train" / method / "predictions.npz") as data:
        ids, logits = data["video_ids"].tolist(), data["scores"]
    assert logits.dtype == np.float32 and logits.std() > 0
    return ids, 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def targets(trained, ids) -> np.ndarray:
    y = np.zeros((len(ids), len(trained.names)), dtype=bool)
    for i, vid in enumerate(ids):
        y[i, [int(c) for c in trained.labels.labels[vid].split(";")]] = True
    return y


def macro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = (predicted & truth).sum(axis=0)
    return float(np.mean(2 * tp / np.maximum(predicted.sum(axis=0) + truth.sum(axis=0), 1)))


# ------------------------------------------------------------------------------ agreement

@pytest.mark.parametrize("method", METHODS)
def test_predict_from_raw_videos_gives_the_evaluate_stage_scores(trained, method):
    from pipeline.serve.predict import Predictor

    ids, expected = evaluated(trained, method)
    predictor = Predictor.from_run(trained.work, method)
    table = predictor.predict([trained.labels.path[v] for v in ids], threshold=0.5)
    assert table.video_id.tolist() == ids and (table.status == "ok").all()
    assert predictor.class_names == trained.names == table.columns[5:].tolist()
    scores = table[trained.names].to_numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=0)
    assert [set(p) for p in table.predicted] == [{trained.names[c] for c in np.flatnonzero(row >= 0.5)}
                                               for row in scores]


def test_default_model_is_the_best_run_on_validation_and_cli_table_and_csv(trained, capsys, tmp_path):
    summaries = {m: json.loads((trained.work / "train" / m / "manifest.json").read_text())["summary"]
                 for m in METHODS}
    best = max(METHODS, key=lambda m: summaries[m]["mAP"])
    ids, expected = evaluated(trained, best)
    out = tmp_path / "preds.csv"
    code, stdout, err = cli(capsys, "predict", "--work-dir", str(trained.work), "--no-progress", "--top-k", "2",
                            "--out", str(out), *[trained.labels.path[v] for v in ids[:3]])
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].split() == ["video", "top-1", "top-2"] and len(lines) == 4
    for line, vid, row in zip(lines[1:], ids, expected):
        first, second = np.argsort(-row)[:2]
        assert line.split() == [vid, trained.names[first], f"{row[first]:.3f}", trained.names[second],
                                f"{row[second]:.3f}"]
    written = pd.read_csv(out)
    assert written.columns.tolist() == ["video_id", "path", "status", "error", "predicted", *trained.names]
    np.testing.assert_allclose(written[trained.names].to_numpy(), expected[:3], rtol=1e-6)


def test_jsonl_and_parquet_outputs_hold_every_class_score(trained, capsys, tmp_path):
    ids, expected = evaluated(trained, "baseline")
    videos = [trained.labels.path[v] for v in ids[:2]]
    for name in ("p.jsonl", "p.parquet"):
        code, _, err = cli(capsys, "predict", "--work-dir", str(trained.work), "--method", "baseline",
                           "--no-progress", "--threshold", "0", "--out", str(tmp_path / name), *videos)
        assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["video_id"] for r in rows] == ids[:2] and all(r["status"] == "ok" for r in rows)
    np.testing.assert_allclose([[r["scores"][n] for n in trained.names] for r in rows], expected[:2], rtol=1e-6)
    assert all(r["predicted"] == trained.names for r in rows)  # threshold 0: every class
    parquet = pd.read_parquet(tmp_path / "p.parquet")
    np.testing.assert_allclose(parquet[trained.names].to_numpy(), expected[:2], rtol=1e-6)
    assert parquet.predicted.tolist() == [";".join(trained.names)] * 2


def test_folder_and_csv_inputs(trained, tmp_path):
    from pipeline.serve.predict import Predictor

    ids, expected = evaluated(trained, "baseline")
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for vid in ids[:2]:
        shutil.copy(trained.labels.path[vid], folder / "sub" / f"{vid}.mp4")
    (folder / "notes.txt").write_text("not a video")
    csv = tmp_path / "list.csv"
    pd.DataFrame({"video_id": ids[2:4], "path": [f"clips/sub/{ids[0]}.mp4", ""]}).to_csv(csv, index=False)
    predictor = Predictor.from_run(trained.work, "baseline")
    table = predictor.predict([folder, csv], videos_dir=trained.demo / "videos")
    assert table.video_id.tolist() == [*ids[:2], *ids[2:4]]
    scores = table[trained.names].to_numpy()
    np.testing.assert_allclose(scores[:2], expected[:2], rtol=1e-6)
    np.testing.assert_allclose(scores[2], expected[0], rtol=1e-6)  # the CSV's path wins over its id
    np.testing.assert_allclose(scores[3], expected[3], rtol=1e-6)  # found by id under videos_dir


# ------------------------------------------------------------------------------ thresholds

def test_f1_thresholds_on_hand_made_scores():
    from pipeline.serve.bundle import f1_thresholds

    scores = np.array([[0.9, 0.6, 0.3], [0.8, 0.6, 0.2], [0.7, 0.1, 0.1], [0.2, 0.1, 0.0]], dtype=np.float32)
    truth = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    # class 0: cutting after 3 videos gives F1 2*2/(3+2) = 0.8, the best -> halfway between 0.7 and 0.2;
    # class 1: the tied 0.6 cannot be split -> keep both (F1 2/3); class 2: no positives -> the fallback
    np.testing.assert_allclose(f1_thresholds(scores, truth), [0.45, 0.35, 0.5], rtol=1e-6)


def test_val_thresholds_are_stored_and_beat_half_on_the_test_split(trained):
    from pipeline.serve.predict import Predictor

    ids, expected = evaluated(trained, "baseline")
    predictor = Predictor.from_run(trained.work, "baseline")
    tuned = predictor.predict([trained.labels.path[v] for v in ids], threshold="val")
    stored = json.loads((trained.work / "train" / "baseline" / "thresholds.json").read_text())
    values = np.array(stored["values"])
    assert stored["split"] == "val" and values.shape == (len(trained.names),) and len(set(values)) > 1
    assert [set(p) for p in tuned.predicted] == [{trained.names[c] for c in np.flatnonzero(row >= values)}
                                               for row in tuned[trained.names].to_numpy()]
    scores, truth = tuned[trained.names].to_numpy(), targets(trained, ids)
    assert macro_f1(scores >= values, truth) > macro_f1(scores >= 0.5, truth)


def test_val_thresholds_maximise_f1_on_the_validation_videos(trained):
    from pipeline.serve.predict import Predictor

    predictor = Predictor.from_run(trained.work, "medc")
    values = predictor.thresholds("val")
    val = trained.labels[trained.labels.split == "val"]
    scores = predictor.predict(val.path.tolist())[trained.names].to_numpy()
    truth = targets(trained, val.index)
    for c in range(len(trained.names)):
        f1 = [macro_f1(scores[:, [c]] >= t, truth[:, [c]]) for t in np.append(scores[:, c], np.inf)]
        assert macro_f1(scores[:, [c]] >= values[c], truth[:, [c]]) == pytest.approx(max(f1))


# ------------------------------------------------------------------------------ bundle

def test_bundle_round_trip_predicts_without_the_work_dir(trained, capsys, tmp_path):
    from safetensors import safe_open

    from pipeline.serve.predict import Predictor

    bundle = tmp_path / "medc.safetensors"
    code, _, err = cli(capsys, "export", "--work-dir", str(trained.work), "--method", "medc", "--out", str(bundle))
    assert code == 0, err
    with safe_open(str(bundle), framework="pt") as handle:
        meta = json.loads(handle.metadata()["vltr_bundle"])
        assert all(k.startswith("model.") for k in handle.keys())
    stored = json.loads((trained.work / "train" / "medc" / "thresholds.json").read_text())
    assert meta["schema_version"] == 1 and meta["method"] == "medc" and meta["classes"]["names"] == trained.names
    assert meta["thresholds"]["values"] == stored["values"]
    assert meta["group_thresholds"] == {"head": 6, "tail": 3}
    assert meta["features"]["backbone"] == "efficientnet_lite0" and len(meta["features"]["weights_sha256"]) == 64
    ids, _ = evaluated(trained, "medc")
    videos = [trained.labels.path[v] for v in ids]
    from_run = Predictor.from_run(trained.work, "medc").predict(videos, threshold="val")
    hidden = trained.work.with_name("work-hidden")
    trained.work.rename(hidden)  # the bundle alone must do
    try:
        from_bundle = Predictor.from_bundle(bundle).predict(videos, threshold="val")
    finally:
        hidden.rename(trained.work)
    pd.testing.assert_frame_equal(from_bundle, from_run)


def test_bad_bundles_and_weights_are_one_line_errors(trained, capsys, tmp_path):
    from safetensors.torch import save_file
    import torch

    video = trained.labels.path[evaluated(trained, "baseline")[0][0]]
    good = tmp_path / "good.safetensors"
    assert cli(capsys, "export", "--work-dir", str(trained.work), "--method", "baseline", "--out", str(good))[0] == 0
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    cases = {
        "garbage.safetensors": "is not a model bundle",
        "foreign.safetensors": "not a model bundle of this product",
        "missing.safetensors": "model bundle not found",
        rewrite_bundle(good, tmp_path / "future.safetensors", lambda m: m.update(schema_version=99)).name:
            "schema version 99; this version",
        rewrite_bundle(good, tmp_path / "other.safetensors",
                       lambda m: m["features"].update(weights_sha256="0" * 64)).name: "differ from those the model",
    }
    for name, message in cases.items():
        code, _, err = cli(capsys, "predict", "--bundle", str(tmp_path / name), "--no-progress", video)
        assert code == 2 and err.startswith("error: ") and message in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    code, _, err = cli(capsys, "predict", "--bundle", str(good), "--weights", str(tmp_path / "nope.pth"), video)
    assert code == 2 and "backbone weights file not found" in err and err.count("\n") == 1


def test_missing_and_corrupt_videos(trained, capsys, tmp_path):
    ids, expected = evaluated(trained, "baseline")
    good = trained.labels.path[ids[0]]
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(Path(good).read_bytes()[:300])
    args = ("predict", "--work-dir", str(trained.work), "--method", "baseline", "--no-progress")
    code, _, err = cli(capsys, *args, good, str(tmp_path / "nope.mp4"))
    assert code == 2 and err == f"error: input not found: {tmp_path / 'nope.mp4'}\n"
    out = tmp_path / "p.csv"
    code, stdout, err = cli(capsys, *args, "--out", str(out), str(corrupt), good)
    assert code == 0 and "Traceback" not in err
    line = stdout.splitlines()[1]
    assert line.startswith("broken") and "failed: " in line and "\n" not in line
    written = pd.read_csv(out)
    assert written.status.tolist() == ["failed", "ok"] and written.error[0] == line.split("failed: ", 1)[1]
    assert written.loc[0, trained.names].isna().all()
    np.testing.assert_allclose(written.loc[1, trained.names].to_numpy(float), expected[0], rtol=1e-6)
    code, _, err = cli(capsys, *args, str(corrupt))
    assert code == 1 and err.startswith("failed: no video could be predicted") and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "high"], "threshold 'high': give a score in [0, 1] or 'val'"),
    (["--top-k", "0"], "--top-k 0: give at least 1"),
    (["--method", "nope"], "no trained run 'nope'"),
    (["--out", "x.txt"], "give a file ending in .csv, .jsonl, .parquet"),
])
def test_bad_options_are_one_line_errors(trained, capsys, argv, message):
    video = trained.labels.path[evaluated(trained, "baseline")[0][0]]
    code, _, err = cli(capsys, "predict", "--work-dir", str(trained.work), "--no-progress", *argv, video)
    assert code == 2 and message in err and err.count("\n") == 1


def test_npy_files_are_refused_by_a_video_model(trained, capsys, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 1280), np.float32))
    code, _, err = cli(capsys, "predict", "--work-dir", str(trained.work), str(tmp_path / "a.npy"))
    assert code == 2 and "this model embeds videos itself" in err


# ------------------------------------------------------------------------------ imported features

def test_imported_feature_run_predicts_from_npy_files(tmp_path):
    from pipeline.serve.predict import Predictor

    rng = np.random.default_rng(0)
    features, rows = tmp_path / "features", []
    features.mkdir()
    prototypes = rng.normal(size=(3, 8)) * 2
    for c, split, count in [(c, s, n) for c in range(3) for s, n in (("train", 12 - 4 * c), ("val", 3), ("test", 3))]:
        for k in range(count):
            vid = f"{split}{c}_{k}"
            np.save(features / f"{vid}.npy", (prototypes[c] + rng.normal(size=(int(rng.integers(3, 9)), 8))
                                              ).astype(np.float32))
            rows.append((vid, "", str(c), split))
    pd.DataFrame(rows, columns=["video_id", "path", "labels", "split"]).to_csv(tmp_path / "l.csv", index=False)
    work = tmp_path / "work"
    assert main(["-q", "run", "--no-progress", "--work-dir", str(work), "--set", "dataset.format=csv",
                 "--set", f"dataset.root={tmp_path / 'l.csv'}", "--set", "extract.source=npy",
                 "--set", f"extract.npy_dir={features}", "--set", "split.head=10", "--set", "split.tail=4",
                 "--set", "train.epochs=3", "--set", "train.lr=0.001", "--set", "train.lr_steps=[]",
                 "--set", "train.hidden=16", "--set", "train.batch_size=8",
                 "--set", "train.eval_frames=5", "--set", "train.train_frames=5", "--set", "train.num_workers=0",
                 "--set", "train.eval_every=1"]) == 0
    ids, expected = evaluated(SimpleNamespace(work=work), "baseline")
    table = Predictor.from_run(work).predict([features / f"{v}.npy" for v in ids])
    np.testing.assert_allclose(table[["class_0", "class_1", "class_2"]].to_numpy(), expected, rtol=1e-6)
    whole = Predictor.from_run(work).predict(features)  # a folder of .npy files
    assert len(whole) == len(rows) and (whole.status == "ok").all()
    with pytest.raises(UserError, match="trained on imported features"):
        Predictor.from_run(work).predict(Path(__file__))


def test_a_picture_renamed_mp4_is_a_failed_row_with_its_reason(trained, tmp_path):
    from PIL import Image

    from pipeline.serve.predict import Predictor

    ids, expected = evaluated(trained, "baseline")
    still = tmp_path / "holiday.mp4"
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(still, format="PNG")
    table = Predictor.from_run(trained.work, "baseline").predict([still, trained.labels.path[ids[0]]])
    assert table.status.tolist() == ["failed", "ok"]
    assert table.error[0] == "a still image (png), not a video" and table.predicted[0] == []
    np.testing.assert_allclose(table.loc[1, trained.names].to_numpy(float), expected[0], rtol=1e-6)


def test_csv_inputs_with_times_that_are_not_finite_numbers_are_one_error(tmp_path):
    from pipeline.serve.predict import resolve_inputs

    for start in ("inf", "nan", "soon"):
        csv = tmp_path / f"{start}.csv"
        csv.write_text(f"youtube_id,time_start,time_end\nabc,{start},10\n")
        with pytest.raises(UserError, match="time_start/time_end are not numbers"):
            resolve_inputs(csv, videos_dir=tmp_path)
