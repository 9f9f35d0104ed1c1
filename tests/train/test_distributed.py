"""torchrun semantics (docs/cluster.md, "Training with torchrun"), checked with 2 gloo processes on CPU.

Promised: ``train.batch_size`` is the global batch, so a 2-process run takes the same optimiser steps
on the same global batches as a 1-process run; where the model draws nothing at random per row and
has no BatchNorm (late-average head, dropout 0) the weights equal the 1-process run's up to float
summation order (atol 1e-5 after 3 epochs), also with unequal per-process shares (a batch of 13);
both processes hold identical weights and BatchNorm statistics; the logged loss is the global
batch's; only rank 0 writes.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from machine_load import scaled
from train import distributed
from train.data import batch_spans
from train.loop import derived_seed

PROBE = Path(__file__).with_name("torchrun_probe.py")
TRAIN = ["run", "--stage", "train", "--set", "train.epochs=3", "--set", "train.hidden=32",
         "--set", "train.eval_every=3", "--set", "train.train_frames=6", "--set", "train.eval_frames=10",
         "--set", "train.lr=0.003", "--set", "train.cache=ram", "--no-progress", "-q"]
TRAIN_VIDEOS = 48  # per_class=(24, 12, 8, 4)


def run_probe(work_dir: Path, args: list, processes: int, out: Path) -> dict:
    """Train through the CLI under torchrun (``processes`` ranks); each rank's record by rank."""
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_DIR": str(out), "PROBE_WORK_DIR": str(work_dir)}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [sys.executable, *(launcher if processes > 1 else []), str(PROBE), *TRAIN, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=scaled(300))
    assert done.returncode == 0, done.stderr[-3000:]
    records = {}
    for rank in range(processes):
        records[rank] = torch.load(out / f"rank{rank}.pt", weights_only=False)
        records[rank]["writes"] = (out / f"writes{rank}.txt").read_text().split()
    return records


def test_two_processes_follow_one_process_on_the_global_batch(tmp_path, feature_work_dir):
    single, double = tmp_path / "single", tmp_path / "double"
    args = feature_work_dir(single, per_class=(24, 12, 8, 4))
    shutil.copytree(single, double)
    late_average = ["--set", "train.batch_size=13", "--set", "train.dropout=0"]  # shares of 7 and 6 rows
    one = run_probe(single, [*args, *late_average], 1, tmp_path / "one")[0]
    two = run_probe(double, [*(a.replace(str(single), str(double)) for a in args), *late_average], 2,
                    tmp_path / "two")

    steps = 3 * -(-TRAIN_VIDEOS // 13)  # 3 epochs of ceil(48 / 13) = 4 global batches
    assert one["steps"] == two[0]["steps"] == two[1]["steps"] == {steps}
    for key, value in two[0]["model"].items():
        assert torch.equal(value, two[1]["model"][key]), f"{key} differs between the ranks"
        assert torch.allclose(value, one["model"][key], atol=1e-5, rtol=0), f"{key} differs from 1 process"
    for row_one, row_two in zip(one["history"], two[0]["history"], strict=True):
        assert row_two["loss"] == pytest.approx(row_one["loss"], rel=1e-5)  # the global batch's loss
    scores = [np.load(work / "train" / "baseline" / "predictions.npz")["scores"] for work in (single, double)]
    assert np.allclose(*scores, atol=1e-4)
    assert two[1]["writes"] == []  # rank 1 trains and writes nothing
    written = set(two[0]["writes"])
    for name in ("last.pt", "best.pt", "log.jsonl", "predictions.npz", "manifest.json"):
        assert f"train/baseline/{name}" in written, name


@pytest.mark.slow
def test_processes_hold_identical_weights_and_batchnorm_statistics(tmp_path, feature_work_dir):
    """The aggregators head has BatchNorm (normalising each process's rows) and dropout 0.5."""
    args = feature_work_dir(tmp_path / "work", per_class=(24, 12, 8, 4))
    two = run_probe(tmp_path / "work", [*args, "--set", "train.head=aggregators", "--set", "train.batch_size=16",
                                        "--set", "move.clusters=4", "--set", "move.vlad_hidden=16",
                                        "--set", "move.psa_dim=8", "--set", "move.n_head=2"], 2, tmp_path / "two")
    running = [k for k in two[0]["model"] if k.endswith("running_mean")]
    assert running, "the aggregators head has BatchNorm layers"
    for key, value in two[0]["model"].items():
        assert torch.equal(value, two[1]["model"][key]), f"{key} differs between the ranks"


def test_each_process_draws_its_own_per_row_randomness(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.own_stream() == ()  # a 1-process run keeps its seeds
    seeds = set()
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seeds.add(derived_seed(7, 3, *distributed.own_stream()))  # the epoch's dropout stream
        seeds.update(derived_seed(7, 3, b, *distributed.own_stream()) for b in range(4))  # per-batch streams
    seeds.update(derived_seed(7, 3, b) for b in range(4))  # the 1-process run's per-batch streams
    assert len(seeds) == 2 * 5 + 4


def test_a_merged_last_batch_is_a_warning(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert len(batch_spans(51, 16)) == 4 and len(batch_spans(51, 16, 2)) == 3  # 3 videos left: fewer than 2 each
    (warning,) = distributed.batching_warnings(51, 16)
    assert "3 optimiser steps per epoch instead of a 1-process run's 4" in warning
    assert distributed.batching_warnings(52, 16) == []  # 4 videos left: 2 per process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.batching_warnings(51, 16) == []
