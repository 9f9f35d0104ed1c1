"""Many train runs at once (train.parallel=ray): the runs of a method list x seeds as Ray tasks on a
local Ray give the same predictions, checkpoints, manifests and report as the runs one after another
with the same torch thread count (each parallel run gets CPUs / slots threads: 2 / 2 = 1 here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from manifests.errors import UserError
from pipeline.cli import main
from pipeline.config import load_config, single_runs
from pipeline.dispatch import plan, train_in_parallel
from pipeline.stages import RunOptions, train_settings

ray = pytest.importorskip("ray")

TINY = ["--config", "lt_bench", "--set", "dataset.synthetic.num_classes=8",
        "--set", "dataset.synthetic.max_per_class=12",
        "--set", "dataset.synthetic.imbalance=6", "--set", "dataset.synthetic.dim=12",
        "--set", "dataset.synthetic.frames_min=4", "--set", "dataset.synthetic.frames_max=6",
        "--set", "train.epochs=3", "--set", "train.eval_every=1", "--set", "train.batch_size=16",
        "--set", "train.hidden=16", "--set", "train.lr_steps=[2]", "--set", "move.clusters=4",
        "--set", "move.vlad_hidden=8", "--set", "train.method=[baseline,ldam_drw,baseline+aggregators]",
        "--set", "train.loss={ldam_drw: {drw_epoch: 2}}", "--set", "seeds=[1,2]", "--no-progress"]
RUNS = sorted(f"{m}-seed{s}" for m in ("baseline", "ldam_drw", "baseline+aggregators") for s in (1, 2))
TIMING = {"seconds", "seconds_per_epoch", "train_seconds", "created_at"}


def without(obj, keys=TIMING):
    """A JSON document without its timing fields, recursively."""
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    return obj


def report_without_times(work: Path) -> tuple:
    """report.csv and report.md without the train wall-time column (and the run folders' paths)."""
    csv = pd.read_csv(work / "report.csv")
    csv = csv.drop(columns=[c for c in csv.columns if c.startswith("train_s") or c == "run"])
    rows = [line.split("|") for line in (work / "report.md").read_text().splitlines()]
    table = [r for r in rows if len(r) > 2]
    drop = table[0].index(" Train (s) ") if " Train (s) " in table[0] else None
    md = ["|".join(c for i, c in enumerate(r) if i != drop) for r in table]
    return csv, md


def state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_runs_equal_the_same_runs_one_after_another(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VLTR_CPUS", "1")  # the thread count each parallel run gets (2 CPUs / 2 slots)
    assert main(["run", "--work-dir", str(tmp_path / "seq"), *TINY]) == 0
    monkeypatch.setenv("VLTR_CPUS", "2")
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert main(["run", "--work-dir", str(tmp_path / "par"), *TINY, "--set", "train.parallel=ray",
                     "--set", "train.slots=2"]) == 0
    assert "train: 6 runs as Ray tasks, 2 at once, 1 torch threads each" in caplog.text
    assert not ray.is_initialized()  # the local Ray it started is shut down
    seq, par = tmp_path / "seq", tmp_path / "par"
    assert sorted(p.name for p in (par / "train").iterdir()) == RUNS
    for run in RUNS:
        a, b = np.load(seq / "train" / run / "predictions.npz"), np.load(par / "train" / run / "predictions.npz")
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), run
        for name in ("best.pt", "last.pt"):
            sa, sb = state(seq / "train" / run / name), state(par / "train" / run / name)
            assert same_tensors(sa["model"], sb["model"]) and sa["epoch"] == sb["epoch"], (run, name)
        ma, mb = (json.loads((d / "train" / run / "manifest.json").read_text()) for d in (seq, par))
        assert ma["config"] == mb["config"] and ma["inputs"].keys() == mb["inputs"].keys(), run
        assert without(ma["summary"]) == without(mb["summary"]), run
        ea, eb = (json.loads((d / "evaluate" / run / "metrics.json").read_text()) for d in (seq, par))
        assert without(ea) == without(eb), run
    csv_a, md_a = report_without_times(seq)
    csv_b, md_b = report_without_times(par)
    pd.testing.assert_frame_equal(csv_a, csv_b)
    assert md_a == md_b and len(md_a) == 2 + 3  # header, rule, one row per method (mean over 2 seeds)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started although every run is done"))
    assert main(["run", "--work-dir", str(par), *TINY, "--set", "train.parallel=ray", "--stage", "train"]) == 0


@pytest.mark.slow
def test_one_failing_run_does_not_stop_the_others(tmp_path, capsys):
    argv = ["run", "--work-dir", str(tmp_path), *TINY, "--set", "train.parallel=ray", "--set", "seeds=[1]",
            "--set", "train.loss={ldam_drw: {drw_epoch: 2, no_such_parameter: 1}}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: train/ldam_drw-seed1: train.method=ldam_drw:" in err and "no_such_parameter" in err
    done = sorted(p.parent.name for p in (tmp_path / "train").glob("*/manifest.json"))
    assert done == ["baseline+aggregators-seed1", "baseline-seed1"]


def test_the_dispatch_keys_are_not_part_of_a_runs_identity():
    plain = single_runs(load_config("lt_bench"))
    parallel = single_runs(load_config("lt_bench", ("train.parallel=ray", "train.slots=3", "train.ray_address=auto")))
    assert [train_settings(r) for r in plain] == [train_settings(r) for r in parallel]
    assert not {"parallel", "slots", "ray_address"} & set(train_settings(parallel[0]))


def test_plan_one_run_per_gpu_else_cpu_slots():
    assert plan({"CPU": 32.0, "GPU": 4.0}, runs=30, slots=None, device="auto") == ({"num_gpus": 1, "num_cpus": 0}, 4, 8)
    assert plan({"CPU": 32.0, "GPU": 4.0}, runs=30, slots=2, device="cpu") == ({"num_cpus": 16.0}, 2, 16)
    assert plan({"CPU": 2.0}, runs=30, slots=None, device="auto") == ({"num_cpus": 1.0}, 2, 1)
    assert plan({"CPU": 8.0}, runs=3, slots=None, device="auto") == ({"num_cpus": 8 / 3}, 3, 2)
    assert plan({"CPU": 2.0}, runs=6, slots=4, device="auto") == ({"num_cpus": 0.5}, 4, 1)


def test_not_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config("lt_bench", ("train.parallel=ray",))
    with pytest.raises(UserError, match="not under torchrun"):
        train_in_parallel([cfg], Path("unused"), RunOptions(), lambda *a: "ran")
