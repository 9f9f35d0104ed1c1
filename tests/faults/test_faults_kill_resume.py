"""SIGKILL and Ctrl-C in the middle of extract, train and evaluate, then the same command again.

RELIABILITY.md: "re-running the same command resumes; final outputs identical to an uninterrupted run
(same videos, features bit-equal, no duplicates); no corrupt HDF5 taken as complete" and "Ctrl-C stops
cleanly at the next safe point, says how to resume". Every kill point is drawn from a seeded generator.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np
import pandas as pd
import pytest

from extract.store import read_shard_index
from machine_load import scaled
from faults_utils import (EXTRACT_FAST, TRAIN_EPOCHS, TRAIN_FAST, CheckpointEpoch, Child, assert_same_store,
                          checkpoint_epoch, cli,
                          demo_args, demo_videos, load_checkpoint, log_rows, manifest, ok, same_state_dict, shards,
                          without_timing)

pytestmark = pytest.mark.faults

RESUME_HINT = "interrupted: finished work is kept; run the same command again to resume"


# ------------------------------------------------------------------------------------------ extract

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_videos(tmp_path_factory.mktemp("faults-demo") / "demo")


@pytest.fixture(scope="module")
def extract_reference(demo, tmp_path_factory):
    """An uninterrupted extract of the demo set, by the same command line."""
    work = tmp_path_factory.mktemp("extract-reference") / "work"
    ok(cli("run", "-q", "--no-progress", "--stage", "extract", *demo_args(demo, work), *EXTRACT_FAST))
    ids = pd.read_csv(demo / "labels.csv").video_id.tolist()
    assert len(ids) >= 16 and len(shards(work / "extract")) == len(ids)
    return work / "extract", ids


def extract_command(demo, work):
    return ("run", "--no-progress", "--stage", "extract", *demo_args(demo, work), *EXTRACT_FAST)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_during_extract_then_rerun_gives_the_uninterrupted_store(demo, extract_reference, tmp_path, seed):
    reference, ids = extract_reference
    rng = np.random.default_rng(seed)
    after_shards, extra_delay = int(rng.integers(1, len(ids) // 2)), float(rng.uniform(0, 0.05))
    work = tmp_path / "work"
    stage = work / "extract"
    child = Child(tmp_path / "killed", *extract_command(demo, work))
    try:
        child.wait_for(lambda: len(shards(stage)) >= after_shards, what=f"{after_shards} shards")
        time.sleep(extra_delay)
        child.signal(signal.SIGKILL)  # the main process only, as the OOM killer or a pre-emption would
        assert child.wait(timeout=scaled(30)) == -signal.SIGKILL
        # the decode workers notice their parent is gone and do not linger
        deadline = time.monotonic() + 20
        while child.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not child.group_alive(), "decode workers outlived the killed extract process"
    finally:
        child.kill_group()

    # killed mid-run: no manifest, no table; what is on disk is either a complete shard or a leftover
    assert not (stage / "manifest.json").exists() and not (stage / "videos.parquet").exists()
    done = len(shards(stage))
    assert after_shards <= done < len(ids)
    status = ok(cli("status", "--work-dir", work)).stdout
    assert "extract   missing" in status  # a killed stage is never reported as done
    from extract.store import FeatureStore

    partial = FeatureStore(stage)  # every file named shard-*.h5 is complete (partials have another name)
    assert not partial.corrupt and not partial.duplicates and len(partial) == done

    rerun = ok(cli(*extract_command(demo, work)))
    assert f"{done} already done" in rerun.stderr and f"{len(ids) - done} to do" in rerun.stderr
    assert not list(stage.glob("*.partial"))
    assert_same_store(stage, reference, ids)
    summary = manifest(stage)["summary"]
    assert (summary["ok"], summary["failed"], summary["skipped_done"]) == (len(ids), 0, done)
    assert "extract   done" in ok(cli("status", "--work-dir", work)).stdout


@pytest.mark.parametrize("whole_group, sig", [(False, signal.SIGINT), (True, signal.SIGINT), (False, signal.SIGTERM)],
                         ids=["kill-INT-pid", "terminal-ctrl-c", "kill-TERM-pid"])
def test_ctrl_c_during_extract_exits_130_says_how_to_resume_and_rerun_completes(demo, extract_reference, tmp_path,
                                                                              whole_group, sig):
    reference, ids = extract_reference
    work = tmp_path / "work"
    stage = work / "extract"
    child = Child(tmp_path / "interrupted", *extract_command(demo, work))
    try:
        child.wait_for(lambda: len(shards(stage)) >= 2, what="2 shards")
        (child.signal_group if whole_group else child.signal)(sig)
        assert child.wait(timeout=scaled(120)) == 130
    finally:
        child.kill_group()
    err = child.stderr()
    assert "Traceback" not in err, err[-3000:]
    assert "re-run the same command to resume" in err and RESUME_HINT in err
    assert not list(stage.glob("*.partial"))  # the shard in flight was dropped, not left half-written
    assert not (stage / "manifest.json").exists()
    done = len(shards(stage))
    assert 2 <= done < len(ids)
    # Ctrl-C is not a video failure: nothing may be recorded as failed (a re-run would skip it)
    failures = stage / "failures.jsonl"
    assert not failures.exists() or failures.read_text().strip() == "", failures.read_text()
    ok(cli(*extract_command(demo, work)))
    assert_same_store(stage, reference, ids)


# -------------------------------------------------------------------------------------------- train

@pytest.fixture(scope="module")
def _train_cache():
    return {}


@pytest.fixture
def train_reference(feature_work_dir, tmp_path_factory, _train_cache):
    """An uninterrupted training run (subprocess, same command as the killed ones); built once."""
    if "ref" not in _train_cache:
        work = tmp_path_factory.mktemp("train-reference") / "work"
        args = feature_work_dir(work)
        ok(cli("run", "-q", "--no-progress", "--stage", "train", *args, *TRAIN_FAST))
        _train_cache["ref"] = work / "train" / "baseline"
    return _train_cache["ref"]


def assert_same_training(run_dir, reference):
    assert same_state_dict(load_checkpoint(run_dir / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"])
    assert same_state_dict(load_checkpoint(run_dir / "best.pt")["model"], load_checkpoint(reference / "best.pt")["model"])
    last, ref = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference / "last.pt")
    assert last["epoch"] == ref["epoch"] == TRAIN_EPOCHS and last["best"] == ref["best"]
    with np.load(run_dir / "predictions.npz") as a, np.load(reference / "predictions.npz") as b:
        assert np.array_equal(a["scores"], b["scores"]) and np.array_equal(a["video_ids"], b["video_ids"])
    assert log_rows(run_dir / "log.jsonl") == log_rows(reference / "log.jsonl")
    assert without_timing(manifest(run_dir)["summary"]) == without_timing(manifest(reference)["summary"])


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_during_train_then_rerun_gives_the_uninterrupted_weights(feature_work_dir, train_reference,
                                                                        tmp_path, seed):
    rng = np.random.default_rng(seed)
    kill_after_epoch, extra_delay = int(rng.integers(1, TRAIN_EPOCHS // 2)), float(rng.uniform(0, 0.05))
    work = tmp_path / "work"
    args = feature_work_dir(work)
    run_dir = work / "train" / "baseline"
    command = ("run", "--no-progress", "--stage", "train", *args, *TRAIN_FAST)
    child = Child(tmp_path / "killed", *command)
    try:
        last_epoch = CheckpointEpoch(run_dir / "last.pt")
        child.wait_for(lambda: (last_epoch() or 0) >= kill_after_epoch, what=f"last.pt at epoch {kill_after_epoch}")
        time.sleep(extra_delay)
        child.signal(signal.SIGKILL)
        assert child.wait(timeout=scaled(30)) == -signal.SIGKILL
    finally:
        child.kill_group()
    assert not (run_dir / "manifest.json").exists()  # really killed before the end
    epoch = checkpoint_epoch(run_dir / "last.pt")
    assert epoch is not None and kill_after_epoch <= epoch < TRAIN_EPOCHS  # the checkpoint on disk is whole

    rerun = ok(cli(*command))
    assert f"resuming baseline from epoch {epoch}" in rerun.stderr
    assert manifest(run_dir)["summary"]["resumed"] is True
    assert_same_training(run_dir, train_reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_train_exits_130_says_how_to_resume_and_rerun_completes(feature_work_dir, train_reference,
                                                                            tmp_path, sig):
    work = tmp_path / "work"
    args = feature_work_dir(work)
    run_dir = work / "train" / "baseline"
    command = ("run", "--no-progress", "--stage", "train", *args, *TRAIN_FAST)
    child = Child(tmp_path / "interrupted", *command)
    try:
        last_epoch = CheckpointEpoch(run_dir / "last.pt")
        child.wait_for(lambda: (last_epoch() or 0) >= 3, what="last.pt at epoch 3")
        child.signal_group(sig)  # as a terminal's Ctrl-C (or a scheduler's SIGTERM): the whole job gets it
        assert child.wait(timeout=scaled(60)) == 130
    finally:
        child.kill_group()
    err = child.stderr()
    assert RESUME_HINT in err and "Traceback" not in err, err[-3000:]
    assert not (run_dir / "manifest.json").exists()
    epoch = checkpoint_epoch(run_dir / "last.pt")
    assert epoch is not None and 3 <= epoch < TRAIN_EPOCHS
    rerun = ok(cli(*command))
    assert f"resuming baseline from epoch {epoch}" in rerun.stderr
    assert_same_training(run_dir, train_reference)


# ----------------------------------------------------------------------------------------- evaluate

EVALUATE_OUTPUTS = ["metrics.json", "per_class.csv", "results.md", "ap_vs_frequency.png"]


@pytest.fixture
def trained(feature_work_dir, tmp_path_factory, tmp_path, _train_cache):
    """A copy of a work dir with a finished (short) training run, and an uninterrupted evaluation kept
    aside; the run and the evaluation are made once per module."""
    from pipeline.cli import main

    if "evaluate" not in _train_cache:
        base = tmp_path_factory.mktemp("evaluate-base")
        work = base / "work"
        args = [*feature_work_dir(work), *TRAIN_FAST, "--set", "train.epochs=5", "--no-progress"]
        assert main(["run", "-q", "--stage", "train", *args]) == 0
        ok(cli("run", "-q", "--stage", "evaluate", *args))
        reference = base / "reference"
        shutil.copytree(work / "evaluate" / "baseline", reference)
        shutil.copy(work / "report.md", reference / "report.md")
        shutil.rmtree(work / "evaluate")
        (work / "report.md").unlink()
        _train_cache["evaluate"] = work, args, reference
    base_work, base_args, reference = _train_cache["evaluate"]
    work = tmp_path / "work"
    shutil.copytree(base_work, work)
    args = [str(work) if a == str(base_work) else a for a in base_args]  # the --work-dir value
    return work, args, reference


@pytest.mark.parametrize("kill_when", ["stage folder", "metrics.json", "manifest.json"])
def test_sigkill_during_evaluate_then_rerun_gives_the_uninterrupted_metrics(trained, tmp_path, kill_when):
    work, args, reference = trained
    stage = work / "evaluate" / "baseline"
    target = stage if kill_when == "stage folder" else stage / kill_when
    rng = np.random.default_rng(len(kill_when))
    command = ("run", "--stage", "evaluate", *args)
    child = Child(tmp_path / "killed", *command)
    try:
        child.wait_for(target.exists, what=f"{kill_when} to appear")
        time.sleep(float(rng.uniform(0, 0.02)))
        child.signal(signal.SIGKILL)
        child.wait(timeout=scaled(30))
    finally:
        child.kill_group()
    from pipeline.config import load_config
    from pipeline.run import stage_state

    overrides = tuple(args[i + 1] for i, a in enumerate(args) if a == "--set")
    cfg = load_config(None, overrides, str(work))
    state = stage_state("evaluate", cfg, work, "baseline").state
    assert state == ("fresh" if (stage / "manifest.json").exists() else "missing")
    # nothing half-written under a final name: every output present is whole or absent
    for name in EVALUATE_OUTPUTS:
        if not (stage / name).exists():
            continue
        if name == "ap_vs_frequency.png":
            from PIL import Image

            with Image.open(stage / name) as png:
                png.verify()
        else:
            assert (stage / name).read_bytes() == (reference / name).read_bytes(), name

    ok(cli(*command))
    assert manifest(stage)["outputs"].keys() == set(EVALUATE_OUTPUTS)
    for name in ["metrics.json", "per_class.csv", "results.md"]:
        assert (stage / name).read_bytes() == (reference / name).read_bytes(), name
    assert without_timing(manifest(stage)["summary"]) == without_timing(manifest(reference)["summary"])
    assert (work / "report.md").read_text() == (reference / "report.md").read_text()


# ------------------------------------------------------------------------- a shard damaged on disk

def test_truncated_shard_is_reported_by_name_and_re_extracted_by_a_rerun(extract_reference, demo, tmp_path):
    reference, ids = extract_reference
    work = tmp_path / "work"
    shutil.copytree(reference.parent, work)
    stage = work / "extract"
    victim = shards(stage)[3]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a copy cut short

    text = ok(cli("status", "--work-dir", work)).stdout
    assert f"output changed on disk: {victim.name}" in text
    downstream = cli("run", "-q", "--stage", "split", *demo_args(demo, work))
    assert downstream.returncode == 2 and "needs 'extract', which is stale" in downstream.stderr

    rerun = ok(cli(*extract_command(demo, work)))  # the manifest certified it: the damage is on disk
    assert f"moved 1 damaged shard(s) to {stage / 'corrupt'}" in rerun.stderr and victim.name in rerun.stderr
    assert [p.name.split(".h5.")[0] + ".h5" for p in (stage / "corrupt").iterdir()] == [victim.name]
    summary = manifest(stage)["summary"]
    assert (summary["ok"], summary["processed"]) == (len(ids), 1)  # only the lost video is extracted again
    assert_same_store(stage, reference, ids)
    assert not (stage / "manifest.previous.json").exists()


def test_truncated_shard_without_a_finished_manifest_needs_repair(extract_reference, demo, tmp_path):
    """A shard nobody certified (no finished run recorded it) is not moved without --repair."""
    reference, ids = extract_reference
    work = tmp_path / "work"
    shutil.copytree(reference.parent, work)
    stage = work / "extract"
    (stage / "manifest.json").unlink()  # as after a crash before the stage finished
    victim = shards(stage)[3]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    rerun = cli("run", "-q", *extract_command(demo, work)[1:])
    assert rerun.returncode == 2 and "Traceback" not in rerun.stderr
    assert f"corrupted feature shard(s): {victim.name}" in rerun.stderr and "--repair" in rerun.stderr

    repaired = ok(cli(*extract_command(demo, work), "--repair"))
    assert victim.name in repaired.stderr and list((stage / "corrupt").iterdir())
    summary = manifest(stage)["summary"]
    assert (summary["ok"], summary["processed"]) == (len(ids), 1)
    assert_same_store(stage, reference, ids)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_flipped_feature_bytes_are_never_recertified(extract_reference, demo, tmp_path, keep_mtime):
    """16 bytes flipped inside the feature data (same size): the re-run checks the shard's stored feature
    checksum before counting its video as done, and extracts that video again."""
    reference, ids = extract_reference
    work = tmp_path / "work"
    shutil.copytree(reference.parent, work)
    stage = work / "extract"
    victim = shards(stage)[5]
    index = read_shard_index(victim)
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    start = index.feat_offset + 8
    data[start:start + 16] = bytes(255 - b for b in data[start:start + 16])
    victim.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert victim.stat().st_size == before.st_size

    assert f"output changed on disk: {victim.name}" in ok(cli("status", "--work-dir", work)).stdout
    rerun = ok(cli(*extract_command(demo, work)))
    assert victim.name in rerun.stderr and "failed its checksum" in rerun.stderr
    summary = manifest(stage)["summary"]
    assert (summary["ok"], summary["processed"]) == (len(ids), 1)
    assert_same_store(stage, reference, ids)
    extract_row = next(line for line in ok(cli("status", "--work-dir", work)).stdout.splitlines()
                       if line.split()[:1] == ["extract"])
    assert extract_row.split()[1] == "done", extract_row
