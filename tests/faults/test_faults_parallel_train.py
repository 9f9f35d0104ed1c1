"""Train runs dispatched as Ray tasks (train.parallel=ray) are interrupted in the middle, then the
same command again: every run resumes from its last.pt and ends with the weights, predictions and
logs of the same runs done one after another without interruption (with the same thread count)."""

from __future__ import annotations

import signal

import pytest

from faults_utils import (TRAIN_EPOCHS, TRAIN_FAST, Child, checkpoint_epoch, cli, load_checkpoint, log_rows,
                          manifest, ok, same_state_dict, without_timing)
from machine_load import scaled

pytest.importorskip("ray")
pytestmark = pytest.mark.faults

RUNS = ("baseline-seed1", "baseline-seed2")
RUNS_ARGS = ("--set", "train.method=[baseline]", "--set", "seeds=[1,2]")


def test_interrupted_parallel_runs_resume_to_the_uninterrupted_sequential_results(feature_work_dir, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("VLTR_CPUS", "1")  # the reference: one run after another, 1 thread each
    reference = tmp_path / "reference"
    ok(cli("run", "-q", "--no-progress", "--stage", "train", *feature_work_dir(reference), *TRAIN_FAST, *RUNS_ARGS))

    monkeypatch.setenv("VLTR_CPUS", "2")  # 2 slots of 1 thread
    work = tmp_path / "work"
    command = ("run", "--no-progress", "--stage", "train", *feature_work_dir(work), *TRAIN_FAST, *RUNS_ARGS,
               "--set", "train.parallel=ray", "--set", "train.slots=2")
    child = Child(tmp_path / "interrupted", *command)
    try:
        child.wait_for(lambda: all((checkpoint_epoch(work / "train" / r / "last.pt") or 0) >= 3 for r in RUNS),
                       timeout=300, what="both runs at epoch 3")
        child.signal_group(signal.SIGTERM)  # a scheduler stopping the job
        assert child.wait(timeout=scaled(120)) == 130
    finally:
        child.kill_group()
    assert "run the same command again to resume" in child.stderr() and "Traceback" not in child.stderr()
    epochs = {r: checkpoint_epoch(work / "train" / r / "last.pt") for r in RUNS}
    assert all(e is not None and 3 <= e < TRAIN_EPOCHS for e in epochs.values()), epochs
    assert not any((work / "train" / r / "manifest.json").exists() for r in RUNS)

    ok(cli(*command))
    for run in RUNS:
        done, ref = work / "train" / run, reference / "train" / run
        assert manifest(done)["summary"]["resumed"] is True, run
        for name in ("last.pt", "best.pt"):
            assert same_state_dict(load_checkpoint(done / name)["model"], load_checkpoint(ref / name)["model"]), run
        assert log_rows(done / "log.jsonl") == log_rows(ref / "log.jsonl"), run
        assert without_timing(manifest(done)["summary"]) == without_timing(manifest(ref)["summary"]), run
