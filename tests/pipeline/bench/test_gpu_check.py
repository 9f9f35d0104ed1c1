"""`bench gpu` without a GPU: one line says so, every check runs on the CPU at a tiny size (dry run)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from machine_load import scaled
from pipeline.bench import gpu_check
from pipeline.bench.gpu_check import DRY, Verdict, run_gpu_check

CPU = torch.device("cpu")


def test_dry_run_runs_every_check_but_ray_through_the_product_code():
    lines = []
    verdicts = run_gpu_check(CPU, DRY, emit=lines.append, checks=("extract", "scores", "epoch", "ddp"))
    assert lines[0].startswith("no CUDA GPU visible") and "dry run" in lines[0]
    assert [v.check for v in verdicts] == ["extract", "scores", "epoch", "ddp"]
    assert [v.status for v in verdicts] == ["DRY"] * 4, lines
    assert lines[1:] == [v.line() for v in verdicts]
    extract, scores, epoch, ddp = (v.numbers for v in verdicts)
    assert extract["frames"] == DRY.extract_videos * DRY.frames_per_video and extract["extract_fps"] > 0
    for method in ("baseline", "move"):
        assert scores[method]["ranking_equal"] and scores[method]["max_diff"] == 0.0  # predict stays float32
        assert scores[method]["raw_bf16_max_diff"] > 0  # a bf16 forward (emulated on the CPU) is not
        assert epoch[method]["steps"] == DRY.train_videos // DRY.train["batch_size"]
        assert np.isfinite(epoch[method]["loss"]) and epoch[method]["peak_gib"] is None
    assert ddp["backend"] == "gloo" and ddp["collectives"] and ddp["epoch_relative_diff"] == 0.0


def test_a_failing_check_is_a_fail_line_and_exit_1(monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("NCCL error: unhandled system error")

    monkeypatch.setattr(gpu_check, "check_ddp", broken)
    (verdict,) = run_gpu_check(CPU, DRY, emit=lambda line: None, checks=("ddp",))
    assert verdict.line().split() == ["FAIL", "ddp", "RuntimeError:", "NCCL", "error:", "unhandled", "system", "error"]
    monkeypatch.setattr(gpu_check, "run_gpu_check", lambda emit: [verdict, Verdict("ray", "DRY", "ok")])
    assert gpu_check.main() == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["checks"][0]["status"] == "FAIL"


@pytest.mark.slow
def test_bench_gpu_command_passes_or_dry_runs_every_check():
    """The whole command, Ray included (a real check where a GPU is visible)."""
    done = subprocess.run([sys.executable, "-m", "pipeline", "bench", "gpu"], capture_output=True, text=True,
                          timeout=scaled(900))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    expected = "PASS" if torch.cuda.is_available() else "DRY"
    assert [line.split()[:2] for line in lines[1:6]] == [[expected, name] for name in gpu_check.CHECKS], lines
    assert [c["check"] for c in json.loads(lines[-1])["checks"]] == list(gpu_check.CHECKS)
