"""Bad input that is the user's to fix: stale manifests, bad configs, label lists, unwritable work dirs.

RELIABILITY.md rows: "upstream manifest changed after a downstream stage ran", "config: unknown key,
wrong type, missing required path, stage asked for without its upstream", "label lists: ...",
"disk full / permission denied on the work dir". Every user mistake is one ``error: ...`` message on
stderr (exit status 2), never a traceback; a stage that could not finish writes no manifest.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from faults_utils import (EXTRACT_FAST, cli, demo_args, demo_videos, manifest, ok, one_error, shards,
                          write_small_videolt)

pytestmark = pytest.mark.faults


def videolt_args(root, work):
    return ["--set", "dataset.format=videolt", "--set", f"dataset.root={root}", "--work-dir", str(work)]


def status(work) -> str:
    return ok(cli("status", "--work-dir", work)).stdout


def stage_line(text: str, where: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(where + " "))


# ---------------------------------------------------------------------------------- stale manifests

def test_deleted_split_output_is_stale_no_rerun_refuses_and_a_plain_rerun_rebuilds(feature_work_dir, tmp_path):
    work = tmp_path / "work"
    args = feature_work_dir(work)
    before = pd.read_parquet(work / "split" / "classes.parquet")
    (work / "split" / "classes.parquet").unlink()

    text = status(work)
    assert "stale" in stage_line(text, "split") and "why: output missing: classes.parquet" in text
    refused = cli("run", "-q", "--stage", "split", *args, "--no-rerun")
    assert refused.returncode == 2
    one_error(refused.stderr, "stage 'split'", "is stale: output missing: classes.parquet", "without --no-rerun")
    assert not (work / "split" / "classes.parquet").exists()
    # a downstream stage never builds on it, whatever the switches
    for extra in (["--no-rerun"], []):
        downstream = cli("run", "-q", "--stage", "train", *args, "--set", "train.epochs=1", *extra)
        assert downstream.returncode == 2
        one_error(downstream.stderr, "needs 'split', which is stale (output missing: classes.parquet)",
                  "run `python -m pipeline run --stage split`")
    assert not (work / "train").exists()

    ok(cli("run", "-q", "--stage", "split", *args))
    pd.testing.assert_frame_equal(pd.read_parquet(work / "split" / "classes.parquet"), before)
    assert "done" in stage_line(status(work), "split")


def test_changed_ingest_table_is_stale_and_rebuilt_from_the_label_lists(videolt_dir, tmp_path):
    work = tmp_path / "work"
    args = videolt_args(videolt_dir, work)
    ok(cli("run", "-q", "--stage", "split", *args))
    original = pd.read_parquet(work / "ingest" / "videos.parquet")
    split_summary = manifest(work / "split")["summary"]
    original.iloc[:-1].to_parquet(work / "ingest" / "videos.parquet", index=False)  # one video lost

    text = status(work)
    assert "stale" in stage_line(text, "ingest") and "output changed on disk: videos.parquet" in text
    refused = cli("run", "-q", "--stage", "split", *args, "--no-rerun")
    assert refused.returncode == 2
    one_error(refused.stderr, "stage 'ingest'", "is stale: output changed on disk: videos.parquet")

    rerun = ok(cli("run", "--stage", "split", *args))
    assert "ingest   stale (output changed on disk: videos.parquet): re-running" in rerun.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(work / "ingest" / "videos.parquet"), original)
    assert manifest(work / "split")["summary"] == {**split_summary, "seconds": manifest(work / "split")["summary"]["seconds"]}
    assert "stale" not in status(work)


def test_rebuilt_split_makes_train_and_evaluate_stale_and_no_rerun_refuses(feature_work_dir, tmp_path):
    work = tmp_path / "work"
    args = [*feature_work_dir(work), "--set", "train.method=baseline", "--set", "train.epochs=2",
            "--set", "train.hidden=32", "--no-progress"]
    from pipeline.cli import main

    assert main(["run", "-q", "--stage", "evaluate", *args]) == 2  # no predictions yet: refused
    assert main(["run", "-q", "--stage", "train", *args]) == 0
    assert main(["run", "-q", "--stage", "evaluate", *args]) == 0
    ok(cli("run", "-q", "--stage", "split", *args, "--force"))  # same content, new manifest

    text = status(work)
    assert "stale" in stage_line(text, "train/baseline") and "input 'split/manifest.json' changed" in text
    assert "stale" in stage_line(text, "evaluate/baseline")
    refused = cli("run", "-q", "--stage", "train", *args, "--no-rerun")
    assert refused.returncode == 2
    one_error(refused.stderr, "stage 'train/baseline'", "is stale: input 'split/manifest.json' changed")
    refused = cli("run", "-q", "--stage", "evaluate", *args, "--no-rerun")
    assert refused.returncode == 2
    one_error(refused.stderr, "needs 'train/baseline', which is stale")
    before = (work / "evaluate" / "baseline" / "manifest.json").read_bytes()
    refused = cli("run", "-q", "--stage", "evaluate", *args)  # evaluate never scores a stale train run
    assert refused.returncode == 2
    assert (work / "evaluate" / "baseline" / "manifest.json").read_bytes() == before


def test_same_size_edit_of_an_upstream_output_is_detected(videolt_dir, tmp_path):
    work = tmp_path / "work"
    args = videolt_args(videolt_dir, work)
    ok(cli("run", "-q", "--stage", "split", *args))
    path = work / "ingest" / "videos.parquet"
    table = pd.read_parquet(path)
    size = path.stat().st_size
    row = table.index[table.video_id == "te000"][0]
    assert list(table.at[row, "labels"]) == [0]
    table.at[row, "labels"] = [1]  # te000 relabelled: same length, same file size
    table.to_parquet(path, index=False)
    assert path.stat().st_size == size

    assert "stale" in stage_line(status(work), "ingest")
    assert cli("run", "-q", "--stage", "split", *args, "--no-rerun").returncode == 2


def test_train_after_the_split_changed_does_not_resume_the_old_model(feature_work_dir, tmp_path):
    work = tmp_path / "work"
    args = [*feature_work_dir(work), "--set", "train.method=baseline", "--set", "train.epochs=3",
            "--set", "train.batch_size=8", "--set", "train.hidden=32", "--no-progress"]
    ok(cli("run", "-q", "--stage", "train", *args))
    smaller = ["--set", "split.profile=exp", "--set", "split.imbalance=0.2", "--set", "split.max_per_class=10"]
    ok(cli("run", "-q", "--stage", "split", *args, *smaller))
    assert manifest(work / "split")["summary"]["videos"]["train"] < 45
    assert "input 'split/manifest.json' changed" in status(work)

    rerun = cli("run", "--stage", "train", *args, *smaller)
    # either a clear refusal, or a fresh run on the new split; never the old model under the new manifest
    if rerun.returncode == 2:
        one_error(rerun.stderr.splitlines()[-1], "split")
        return
    ok(rerun)
    assert "resuming" not in rerun.stderr
    assert manifest(work / "train" / "baseline")["summary"]["resumed"] is False


# -------------------------------------------------------------------------------------- bad configs

CONFIG_CASES = {
    "unknown key": (["config", "--set", "train.epoch=3"],
                    ["unknown key 'train.epoch'", "valid keys here: method, head, hidden, dropout, loss, epochs"]),
    "unknown section": (["config", "--set", "trian.epochs=3"],
                        ["unknown key 'trian'", "valid keys here: work_dir, seed, seeds, dataset, extract, split, train"]),
    "unknown key in a file": (["config", "--config", "{bad_yaml}"],
                              ["unknown key 'split.imbalanse'", "valid keys here: profile, imbalance"]),
    "wrong type": (["config", "--set", "train.epochs=many"],
                   ["train.epochs: Input should be a valid integer", "(got 'many')"]),
    "wrong type in a file": (["config", "--config", "{typed_yaml}"], ["train.lr: Input should be a valid number"]),
    "value not allowed": (["config", "--set", "extract.backbone=vgg"],
                          ["extract.backbone: unknown backbone 'vgg'; use one of efficientnet_lite0, resnet50, "
                           "resnet101, tsm_r50, or timm/<any timm model name>", "(got 'vgg')"]),
    "out of range": (["config", "--set", "split.imbalance=2"], ["split.imbalance: Input should be less than or equal to 1"]),
    "section given a value": (["config", "--set", "train=3"], ["train: Input should be a valid dictionary"]),
    "missing dataset.root": (["run", "--stage", "ingest", "--set", "dataset.format=videolt", "--work-dir", "{work}"],
                             ["dataset.root is required for dataset.format=videolt", "--set dataset.root=PATH"]),
    "dataset.root not a folder": (["run", "--stage", "ingest", "--set", "dataset.format=videolt",
                                   "--set", "dataset.root={missing}", "--work-dir", "{work}"],
                                  ["dataset.root: {missing} is not a folder with the videolt label lists"]),
    "csv file missing": (["run", "--stage", "ingest", "--set", "dataset.format=csv", "--set", "dataset.root={missing}",
                          "--work-dir", "{work}"], ["CSV file not found: {missing}"]),
    "videos folder missing": (["run", "--stage", "ingest", "--set", "dataset.format=videolt",
                               "--set", "dataset.root={labels}", "--set", "dataset.videos={missing}",
                               "--work-dir", "{work}"], ["dataset.videos: {missing} is not a directory"]),
    "weights file missing": (["run", "--stage", "extract", "--set", "dataset.format=videolt",
                              "--set", "dataset.root={labels}", "--set", "extract.weights={missing}",
                              "--work-dir", "{work}"], ["extract.weights: file not found: {missing}"]),
    "npy_dir missing": (["run", "--stage", "extract", "--set", "dataset.format=videolt", "--set", "dataset.root={labels}",
                         "--set", "extract.source=npy", "--work-dir", "{work}"], ["extract.source=npy needs extract.npy_dir"]),
    "predictions file missing": (["run", "--stage", "evaluate", "--set", "dataset.format=videolt",
                                  "--set", "dataset.root={labels}", "--set", "evaluate.predictions={missing}",
                                  "--work-dir", "{split_work}"], ["predictions file not found: {missing}"]),
    "config file missing": (["run", "--config", "{missing}"], ["config '{missing}' not found"]),
    "train without extract": (["run", "--stage", "train", "--set", "dataset.format=videolt", "--set", "dataset.root={labels}",
                               "--work-dir", "{work}"],
                              ["stage 'train' needs 'extract', which has not run in {work}",
                               "run `python -m pipeline run --stage extract` with the same config first"]),
    "evaluate without split": (["run", "--stage", "evaluate", "--set", "dataset.format=videolt",
                                "--set", "dataset.root={labels}", "--work-dir", "{work}"],
                               ["stage 'evaluate' needs 'split', which has not run"]),
}


@pytest.fixture(scope="module")
def config_places(tmp_path_factory):
    d = tmp_path_factory.mktemp("config-errors")
    (d / "bad.yaml").write_text("split:\n  imbalanse: 0.1\n")
    (d / "typed.yaml").write_text("train:\n  lr: fast\n")
    labels = write_small_videolt(d / "labels")
    split_work = d / "split-work"
    ok(cli("run", "-q", "--stage", "split", *videolt_args(labels, split_work)))
    return {"bad_yaml": d / "bad.yaml", "typed_yaml": d / "typed.yaml", "labels": labels,
            "missing": d / "does-not-exist", "split_work": split_work}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_mistakes_are_one_error_and_exit_2(case, config_places, tmp_path):
    argv, expected = CONFIG_CASES[case]
    places = {**config_places, "work": tmp_path / "work"}
    argv = [a.format(**places) for a in argv]
    if argv[0] == "run":
        argv.insert(1, "-q")
    result = cli(*argv)
    assert result.returncode == 2, result.stderr
    one_error(result.stderr, *(e.format(**places) for e in expected))
    # nothing is recorded as done by a refused stage
    stage = next((argv[i + 1] for i, a in enumerate(argv) if a == "--stage"), None)
    if stage and stage != "ingest":
        assert not (places["work"] / stage / "manifest.json").exists()


# ------------------------------------------------------------------------------------- label lists

H = "video_id,path,labels,split\n"
K = "label,youtube_id,time_start,time_end,split\n"
MK_NAMES = "label,youtube_id,time_start,time_end,split\nabseiling,a,1,11,train\nzumba,b,2,12,train\n"

LABEL_CASES = {
    # name: (format, {file: text}, file with the error, line, message)
    "csv malformed line": ("csv", {"l.csv": H + "a,,0,train\nb,,1\n"}, "l.csv", 3, "wrong number of fields"),
    "csv class out of range": ("csv", {"l.csv": H + "a,,0,train\nb,,5,test\n"}, "l.csv", 3,
                               "class index 5 out of range 0..1"),
    "csv label not a number": ("csv", {"l.csv": H + "a,,0,train\nb,,x,test\n"}, "l.csv", 3,
                               "label 'x' is not a class index"),
    "csv duplicate id": ("csv", {"l.csv": H + "a,,0,train\na,,1,train\n"}, "l.csv", 3,
                         "video id 'a' listed twice; first at {dir}/l.csv:2"),
    "csv id in two splits": ("csv", {"l.csv": H + "a,,0,train\nb,,1,train\na,,0,test\n"}, "l.csv", 4,
                             "video id 'a' in two splits (train, test); first at {dir}/l.csv:2"),
    "csv unknown split": ("csv", {"l.csv": H + "a,,0,train\nb,,1,holdout\n"}, "l.csv", 3, "unknown split 'holdout'"),
    "kinetics malformed line": ("kinetics_csv", {"k.csv": K + "a,x,0,10,train\nb,y,0,10\n"}, "k.csv", 3,
                                "wrong number of fields"),
    "kinetics times not numbers": ("kinetics_csv", {"k.csv": K + "a,x,0,10,train\nb,y,zero,10,train\n"}, "k.csv", 3,
                                   "time_start/time_end are not numbers"),
    "kinetics times infinite": ("kinetics_csv", {"k.csv": K + "a,x,0,10,train\nb,y,inf,10,train\n"}, "k.csv", 3,
                                "time_start/time_end are not numbers"),
    "kinetics unknown class": ("kinetics_csv", {"k.csv": K + "a,x,0,10,train\nzz,y,0,10,train\n"}, "k.csv", 3,
                               "unknown class name 'zz'"),
    "kinetics duplicate id": ("kinetics_csv", {"k.csv": K + "a,x,0,10,train\nb,x,0,10,train\n"}, "k.csv", 3,
                              "video id 'x_000000_000010' listed twice; first at {dir}/k.csv:2"),
    "kinetics id in two splits": ("kinetics_csv", {"k.csv": K + "a,x,0,10,train\na,x,0,10,validate\n"}, "k.csv", 3,
                                  "video id 'x_000000_000010' in two splits (train, val)"),
    "minikinetics malformed line": ("minikinetics", {"train.lst": "a_000001_000011 0\nb_000002_000012\n",
                                                     "val.lst": "c_000003_000013 1\n"}, "train.lst", 2,
                                    "expected '<video_id> <labels>' (2 fields), got 1"),
    "minikinetics class out of range": ("minikinetics", {"train.lst": "a_000001_000011 0\nb_000002_000012 0\n",
                                                         "val.lst": "c_000003_000013 1\nd_000004_000014 2\n",
                                                         "kinetics_train.csv": MK_NAMES}, "val.lst", 2,
                                        "class index 2 out of range 0..1"),
    "minikinetics negative class": ("minikinetics", {"train.lst": "a_000001_000011 -1\n", "val.lst": "c 0\n"},
                                    "train.lst", 1, "negative class index -1"),
    "minikinetics two labels": ("minikinetics", {"train.lst": "a_000001_000011 0,1\n", "val.lst": "c 0\n"},
                                "train.lst", 1, "MiniKinetics clips have one class, got [0, 1]"),
    "minikinetics duplicate id": ("minikinetics", {"train.lst": "a 0\nb 1\na 1\n", "val.lst": "c 0\n"},
                                  "train.lst", 3, "video id 'a' listed twice; first at {dir}/train.lst:1"),
    "minikinetics id in two splits": ("minikinetics", {"train.lst": "a 0\nb 1\n", "val.lst": "c 0\nb 1\n"},
                                      "val.lst", 2, "video id 'b' in two splits (train, val); first at "
                                                    "{dir}/train.lst:2"),
}


def write_label_files(d: Path, files: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "names.txt").write_text("a\nb\n")


def label_args(fmt, d: Path, work: Path) -> list:
    root = {"csv": d / "l.csv", "kinetics_csv": d / "k.csv", "minikinetics": d}[fmt]
    extra = ["--set", f"dataset.class_names={d / 'names.txt'}"] if fmt in ("csv", "kinetics_csv") else []
    return ["--set", f"dataset.format={fmt}", "--set", f"dataset.root={root}", *extra, "--work-dir", str(work)]


@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_bad_label_lists_name_file_and_line(case, tmp_path, capsys):
    from pipeline.cli import main

    fmt, files, bad_file, line, message = LABEL_CASES[case]
    d = tmp_path / "labels"
    write_label_files(d, files)
    work = tmp_path / "work"
    assert main(["run", "-q", "--stage", "split", *label_args(fmt, d, work)]) == 2
    err = capsys.readouterr().err
    one_error(err, f"error: {d / bad_file}:{line}: {message.format(dir=d)}")
    assert not (work / "ingest" / "manifest.json").exists() and not (work / "split").exists()


def test_label_list_error_from_the_command_line_has_no_traceback(tmp_path):
    d = tmp_path / "labels"
    write_label_files(d, {"l.csv": H + "a,,0,train\nb,,1\n"})
    result = cli("run", "-q", "--stage", "split", *label_args("csv", d, tmp_path / "work"))
    assert result.returncode == 2
    one_error(result.stderr, f"{d / 'l.csv'}:3: wrong number of fields")


def test_class_without_training_videos_is_a_warning_not_an_error(tmp_path):
    d = tmp_path / "labels"
    write_label_files(d, {"l.csv": H + "a,,0,train\nb,,0,train\nc,,1,test\nd,,0,val\n"})
    work = tmp_path / "work"
    result = ok(cli("run", "--stage", "split", *label_args("csv", d, work)))
    assert "warning: 1 classes have no training videos (e.g. b)" in result.stderr
    assert manifest(work / "split")["summary"]["classes_without_train_videos"] == [1]


# ---------------------------------------------------------------------- disk full, permission denied

def no_manifest_anywhere(work: Path) -> bool:
    return not list(Path(work).rglob("manifest.json")) if Path(work).exists() else True


def test_work_dir_below_a_regular_file_is_one_error_with_the_path(videolt_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    work = blocker / "work"
    result = cli("run", "-q", "--stage", "split", *videolt_args(videolt_dir, work))
    assert result.returncode == 2
    one_error(result.stderr, str(blocker))
    assert blocker.read_text() == "not a folder"


def make_read_only(folder: Path):
    """chmod 0o500, or for root (whom modes do not stop) the immutable attribute; None if impossible."""
    import shutil

    folder.chmod(0o500)
    if not os.access(folder, os.W_OK) or _cannot_create(folder):
        return lambda: folder.chmod(0o700)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        if _cannot_create(folder):
            return lambda: (subprocess.run(["chattr", "-i", str(folder)], check=True), folder.chmod(0o700))
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o700)
    return None


def _cannot_create(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.mkdir()
    except OSError:
        return True
    probe.rmdir()
    return False


def test_read_only_work_dir_is_one_error_with_the_path(videolt_dir, tmp_path):
    work = tmp_path / "work"
    args = videolt_args(videolt_dir, work)
    ok(cli("run", "-q", "--stage", "ingest", *args))
    undo = make_read_only(work)
    if undo is None:
        pytest.skip("cannot make a read-only folder here (neither chmod nor chattr stops this user)")
    try:
        result = cli("run", "-q", "--stage", "split", *args)
    finally:
        undo()
    assert result.returncode == 2, result.stderr
    one_error(result.stderr, str(work))
    assert not (work / "split" / "manifest.json").exists()


def test_unwritable_output_path_is_one_error_and_no_manifest(videolt_dir, tmp_path):
    work = tmp_path / "work"
    args = videolt_args(videolt_dir, work)
    (work / "split" / "videos.parquet").mkdir(parents=True)  # the output's name is taken by a folder
    result = cli("run", "-q", "--stage", "split", *args)
    assert result.returncode == 2
    one_error(result.stderr, f"cannot write {work / 'split' / 'videos.parquet'}")
    assert not (work / "split" / "manifest.json").exists()
    assert not [p for p in (work / "split").iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def disk_limited(limit_bytes: int):
    """preexec_fn: a process whose files cannot grow past ``limit_bytes`` (EFBIG, as a full disk)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


def test_disk_full_while_writing_a_table_is_one_error_with_the_path(videolt_dir, tmp_path):
    work = tmp_path / "work"
    result = cli("run", "-q", "--stage", "split", *videolt_args(videolt_dir, work), preexec_fn=disk_limited(4096))
    assert result.returncode == 2, result.stderr
    one_error(result.stderr, f"cannot write {work / 'ingest' / 'videos.parquet'}", "free disk space")
    assert no_manifest_anywhere(work)
    assert not [p for p in (work / "ingest").iterdir() if p.name.endswith(".tmp")]
    ok(cli("run", "-q", "--stage", "split", *videolt_args(videolt_dir, work)))  # space is back: it completes


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return demo_videos(tmp_path_factory.mktemp("disk-demo") / "demo")


def test_disk_full_during_extract_is_an_error_with_the_path_and_resumes(small_demo, tmp_path):
    work = tmp_path / "work"
    args = ("run", "-q", "--no-progress", "--stage", "extract", *demo_args(small_demo, work), *EXTRACT_FAST)
    full = cli(*args, preexec_fn=disk_limited(16 * 1024))  # the tables fit, a shard (20 KiB) does not
    assert full.returncode != 0
    assert "Traceback" not in full.stderr
    assert str(work / "extract") in full.stderr and ("File too large" in full.stderr or "disk" in full.stderr)
    assert not (work / "extract" / "manifest.json").exists()
    assert not shards(work / "extract")
    ok(cli(*args))  # space is back: the same command finishes every video
    summary = manifest(work / "extract")["summary"]
    assert summary["failed"] == 0 and summary["ok"] == len(pd.read_csv(small_demo / "labels.csv"))


def test_disk_full_while_writing_a_checkpoint_is_one_error_with_the_path(feature_work_dir, tmp_path):
    work = tmp_path / "work"
    args = [*feature_work_dir(work), "--set", "train.method=baseline", "--set", "train.epochs=2",
            "--set", "train.hidden=2048", "--set", "train.lr=0.001", "--set", "train.lr_steps=[]", "--no-progress"]
    result = cli("run", "-q", "--stage", "train", *args, preexec_fn=disk_limited(200 * 1024))  # last.pt: ~0.5 MB
    assert result.returncode == 2, result.stderr[-3000:]
    one_error(result.stderr, str(work / "train" / "baseline" / "last.pt"))
    assert not (work / "train" / "baseline" / "manifest.json").exists()
    ok(cli("run", "-q", "--stage", "train", *args))


def test_a_failed_shard_write_never_yields_a_complete_shard_with_wrong_features(tmp_path):
    from extract.store import FeatureStore, ShardWriter

    writer = ShardWriter(tmp_path, "shard-00000.h5", 4, "float32")

    class FillsUpOnce:
        """The shard's file: the second write runs out of space half-way, later ones succeed."""

        def __init__(self, handle):
            self.handle, self.calls = handle, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 2:
                self.handle.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    writer._bin = FillsUpOnce(writer._bin)
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    writer.add("a", a, {})
    with pytest.raises(OSError):
        writer.add("b", b, {})
    try:
        writer.add("c", c, {})
        writer.close()
    except (OSError, ValueError, RuntimeError):
        assert not (tmp_path / "shard-00000.h5").exists()  # refusing the shard is fine too
        return
    store = FeatureStore(tmp_path)
    assert "b" not in store
    assert np.array_equal(store.get("a"), a) and np.array_equal(store.get("c"), c)
