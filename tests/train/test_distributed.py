"""torchrun with 2 gloo processes on CPU follows one process on the same global batches."""

import json
import os
import shutil
import subprocess
import sys

import torch

from machine_load import scaled
from train.checkpoints import load

ARGS = ["--set", "train.epochs=3", "--set", "train.batch_size=16", "--set", "train.hidden=32",
        "--set", "train.dropout=0", "--set", "train.eval_every=3", "--set", "train.train_frames=6",
        "--set", "train.eval_frames=10", "--set", "train.lr=0.003", "--set", "train.cache=ram",
        "--no-progress", "-q"]


def test_two_gloo_processes_match_one_process(tmp_path, feature_work_dir):

    single = tmp_path / "single"
    args = feature_work_dir(single, per_class=(24, 12, 8, 4))  # 48 train videos: 3 full batches
    double = tmp_path / "double"
    shutil.copytree(single, double)
    args_double = [a.replace(str(single), str(double)) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pipeline", "run", "--stage", "train", *args, *ARGS],
                         capture_output=True, text=True, env=env, timeout=scaled(300))
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "pipeline", "run", "--stage", "train",
                          *args_double, *ARGS], capture_output=True, text=True, env=env, timeout=scaled(300))
    assert two.returncode == 0, two.stderr[-3000:]
    a = load(single / "train" / "baseline" / "last.pt")
    b = load(double / "train" / "baseline" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    # rank 0 logs the loss of its own half of each batch, so the logs differ while the weights agree
    log_one = (single / "train" / "baseline" / "log.jsonl").read_text()
    log_two = (double / "train" / "baseline" / "log.jsonl").read_text()
    assert json.loads(log_one.splitlines()[0])["loss"] != json.loads(log_two.splitlines()[0])["loss"]
    assert (double / "train" / "baseline" / "manifest.json").exists()
    assert (double / "train" / "baseline" / "predictions.npz").exists()
