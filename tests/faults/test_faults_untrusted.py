"""Untrusted files and checkpoints of another run.

RELIABILITY.md rows: "untrusted files: checkpoints loaded with weights_only=True; YAML with safe loading;
no unpickling of downloaded files; video ids sanitised before they become file names or HDF5 keys"
and "checkpoint from another method/config/number of classes: refused with a message saying what
differs". Every malicious payload here would create a marker file if it were ever executed.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from faults_utils import cli, ok, one_error, write_small_videolt

pytestmark = pytest.mark.faults


class Payload:
    """Pickles to a call of os.system: unpickling it runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


FAST = ["--set", "train.method=baseline", "--set", "train.epochs=2", "--set", "train.batch_size=16",
        "--set", "train.hidden=32", "--set", "train.eval_every=1", "--set", "train.lr=0.001",
        "--set", "train.lr_steps=[]", "--no-progress"]


# ------------------------------------------------------------------------------------- checkpoints

@pytest.fixture
def evil_checkpoint(feature_work_dir, tmp_path):
    work = tmp_path / "work"
    args = [*feature_work_dir(work), *FAST]
    run_dir = work / "train" / "baseline"
    run_dir.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    torch.save({"epoch": 1, "model": Payload(marker)}, run_dir / "last.pt")
    return args, run_dir / "last.pt", marker


def test_checkpoint_with_a_pickled_object_is_refused_and_never_executed(evil_checkpoint):
    args, path, marker = evil_checkpoint
    result = cli("run", "-q", "--stage", "train", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: checkpoint {path}: it holds objects other than tensors")
    assert "delete it or re-run with --resume never" in result.stderr
    assert not marker.exists()
    assert not (path.parent / "manifest.json").exists()
    # the way out the message gives works, and still never unpickles the file
    ok(cli("run", "-q", "--stage", "train", *args, "--resume", "never"))
    assert not marker.exists()


def test_checkpoint_refusal_is_one_clear_line_without_unsafe_advice(evil_checkpoint):
    args, path, marker = evil_checkpoint
    result = cli("run", "-q", "--stage", "train", *args)
    assert result.returncode == 2
    one_error(result.stderr, str(path))
    assert "weights_only` set to `False`" not in result.stderr and "will likely succeed" not in result.stderr


def test_truncated_checkpoint_is_refused_with_its_path(feature_work_dir, tmp_path):
    from pipeline.cli import main

    work = tmp_path / "work"
    args = [*feature_work_dir(work), *FAST]
    assert main(["run", "-q", "--stage", "train", *args]) == 0
    last = work / "train" / "baseline" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a copy cut short
    (last.parent / "manifest.json").unlink()  # as after a killed run: the next run resumes from last.pt
    result = cli("run", "-q", "--stage", "train", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: checkpoint {last}: unreadable")


@pytest.fixture
def finished_run(feature_work_dir, tmp_path):
    """A finished baseline run (4 classes, 16-d features) whose last.pt can be planted elsewhere."""
    from pipeline.cli import main

    work = tmp_path / "a"
    args = [*feature_work_dir(work), *FAST]
    assert main(["run", "-q", "--stage", "train", *args]) == 0
    return work, args


def refusal(args, capsys, *extra) -> str:
    from pipeline.cli import main

    assert main(["run", "-q", "--stage", "train", *args, *extra]) == 2
    err = capsys.readouterr().err
    one_error(err, "belongs to another run", "--resume never")
    return err


def test_checkpoint_of_another_method_is_refused_naming_the_method(finished_run, capsys):
    work, args = finished_run
    (work / "train" / "focal").mkdir()
    shutil.copy(work / "train" / "baseline" / "last.pt", work / "train" / "focal" / "last.pt")
    err = refusal(args, capsys, "--set", "train.method=focal")
    assert "method: checkpoint 'baseline' vs now 'focal'" in err


@pytest.mark.parametrize("other, difference", [
    (dict(num_classes=5, per_class=(24, 12, 6, 3, 3)), "num_classes: checkpoint 4 vs now 5"),
    (dict(dim=32), "feature_dim: checkpoint 16 vs now 32"),
])
def test_checkpoint_of_another_dataset_shape_is_refused_saying_what_differs(finished_run, feature_work_dir, tmp_path,
                                                                          capsys, other, difference):
    work, _ = finished_run
    b = tmp_path / "b"
    args_b = [*feature_work_dir(b, **other), *FAST]
    (b / "train" / "baseline").mkdir(parents=True)
    shutil.copy(work / "train" / "baseline" / "last.pt", b / "train" / "baseline" / "last.pt")
    err = refusal(args_b, capsys)
    assert difference in err
    assert "config_hash" not in err  # same config: only what really differs is named


def test_foreign_checkpoint_without_identity_is_refused(finished_run, capsys):
    work, args = finished_run
    last = work / "train" / "baseline" / "last.pt"
    torch.save(torch.load(last, weights_only=True)["model"], last)  # a bare state_dict from elsewhere
    (last.parent / "manifest.json").unlink()  # as after a killed run: the next run resumes from last.pt
    err = refusal(args, capsys)
    assert "method: checkpoint None vs now 'baseline'" in err


def test_checkpoint_of_another_config_names_the_changed_key(finished_run, capsys):
    work, args = finished_run
    (work / "train" / "baseline" / "manifest.json").unlink()  # a killed run, then the config changed
    err = refusal(args, capsys, "--set", "train.hidden=64")
    assert "config changed (hidden: 32 -> 64)" in err


def test_a_finished_run_whose_config_changed_starts_over(finished_run, capsys):
    from pipeline.cli import main

    work, args = finished_run
    assert main(["run", "--stage", "train", *args, "--set", "train.hidden=64"]) == 0
    summary = json.loads((work / "train" / "baseline" / "manifest.json").read_text())["summary"]
    assert summary["resumed"] is False


# ---------------------------------------------------------------------------------- other payloads

@pytest.mark.parametrize("tag", ['!!python/object/apply:os.system ["touch {marker}"]',
                                 '!!python/object/new:os.system ["touch {marker}"]',
                                 '!!python/name:os.system'])
def test_yaml_with_a_python_tag_is_refused_as_invalid_yaml(tmp_path, tag):
    marker = tmp_path / "PWNED"
    config = tmp_path / "evil.yaml"
    config.write_text(f"work_dir: {tmp_path / 'work'}\nseed: {tag.format(marker=marker)}\n")
    for command in (["config"], ["run", "-q", "--stage", "ingest"]):
        result = cli(*command, "--config", config)
        assert result.returncode == 2
        one_error(result.stderr, f"error: {config}: not valid YAML", "could not determine a constructor")
    assert not marker.exists() and not (tmp_path / "work").exists()


def test_python_tag_in_a_set_override_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    result = cli("config", "--set", f'seed=!!python/object/apply:os.system ["touch {marker}"]')
    assert result.returncode == 2
    one_error(result.stderr, "seed: Input should be a valid integer")
    assert not marker.exists()


def test_predictions_file_with_pickled_objects_is_refused(tmp_path):
    labels = write_small_videolt(tmp_path / "labels")
    work = tmp_path / "work"
    args = ["--set", "dataset.format=videolt", "--set", f"dataset.root={labels}", "--work-dir", str(work)]
    ok(cli("run", "-q", "--stage", "split", *args))
    marker = tmp_path / "PWNED"
    predictions = tmp_path / "pred.npz"
    np.savez(predictions, scores=np.zeros((4, 3), np.float32),
             video_ids=np.array(["e0", "e1", "e2", Payload(marker)], dtype=object))
    result = cli("run", "-q", "--stage", "evaluate", *args, "--set", f"evaluate.predictions={predictions}")
    assert result.returncode == 2
    one_error(result.stderr, f"{predictions}: not a readable .npz of plain arrays")
    assert not marker.exists() and not list((work / "evaluate").rglob("manifest.json"))


def test_extract_weights_file_with_pickled_objects_is_refused(tmp_path):
    labels = write_small_videolt(tmp_path / "labels")
    marker = tmp_path / "PWNED"
    weights = tmp_path / "weights.pth"
    torch.save({"conv_stem.weight": Payload(marker)}, weights)
    work = tmp_path / "work"
    result = cli("run", "-q", "--no-progress", "--stage", "extract", "--set", "dataset.format=videolt",
                 "--set", f"dataset.root={labels}", "--set", f"extract.weights={weights}", "--work-dir", work)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr
    one_error(error, f"extract.weights: cannot load {weights} safely", "arbitrary unpickling are refused")
    assert not marker.exists() and not (work / "extract" / "manifest.json").exists()


UNSAFE = {
    "csv": ("labels.csv", "video_id,path,labels,split\nok1,,0,train\n{vid},,0,train\n", 3),
    "kinetics_csv": ("k.csv", "label,youtube_id,time_start,time_end,split\na,ok1,0,10,train\na,{vid},0,10,train\n", 3),
    "minikinetics": ("train.lst", "ok1 0\n{vid} 0\n", 2),
    "videolt": ("train.lst", "t0 0\n{vid} 0\n", 2),
}


@pytest.mark.parametrize("vid", ["../escape", "sub/dir", "..", "a\\b"])
@pytest.mark.parametrize("fmt", list(UNSAFE))
def test_video_id_with_a_path_in_a_label_list_is_refused_with_file_and_line(tmp_path, fmt, vid):
    d = tmp_path / "labels"
    name, text, line = UNSAFE[fmt]
    if fmt == "videolt":
        write_small_videolt(d)
    d.mkdir(exist_ok=True)
    (d / name).write_text(text.format(vid=vid))
    if fmt == "minikinetics":
        (d / "val.lst").write_text("v1 0\n")
    root = d / name if fmt in ("csv", "kinetics_csv") else d
    work = tmp_path / "work"
    result = cli("run", "-q", "--stage", "split", "--set", f"dataset.format={fmt}", "--set", f"dataset.root={root}",
                 "--work-dir", work)
    assert result.returncode == 2
    one_error(result.stderr, f"error: {d / name}:{line}: unsafe video id")
    assert not (work / "ingest" / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels", "work"]  # nothing escaped the work dir
