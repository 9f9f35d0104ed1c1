"""The long-tailed benchmark through the pipeline: the synthetic format imported into the store,
thresholds scaled to the profile, methods on a chosen head, one run per seed, the mean ± std table."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config, run_name, single_runs
from pipeline.synthetic_config import SyntheticSpec, group_thresholds

TINY = ["--set", "dataset.synthetic.num_classes=8", "--set", "dataset.synthetic.max_per_class=12",
        "--set", "dataset.synthetic.imbalance=6", "--set", "dataset.synthetic.dim=12",
        "--set", "dataset.synthetic.frames_min=4", "--set", "dataset.synthetic.frames_max=6",
        "--set", "train.epochs=2", "--set", "train.eval_every=1", "--set", "train.batch_size=16",
        "--set", "train.hidden=16", "--set", "train.lr_steps=[]", "--set", "move.clusters=4",
        "--set", "move.vlad_hidden=8", "--no-progress"]


def test_config_runs_every_method_per_seed():
    cfg = load_config("lt_bench")
    runs = single_runs(cfg)
    assert cfg.seeds == [1, 2, 3] and len(runs) == 3 * len(cfg.train.methods())
    names = [run_name(r) for r in runs]
    assert "baseline+aggregators-seed2" in names and "move-seed3" in names and len(set(names)) == len(names)
    agg = next(r for r in runs if run_name(r) == "baseline+aggregators-seed1")
    assert (agg.train.method, agg.train.head, agg.seed) == ("baseline", "aggregators", 1)
    assert {r.split.seed for r in runs} == {cfg.seed}  # the data does not change with the training seed


@pytest.mark.parametrize("value, message", [("[baseline+move]", "unknown method 'baseline+move'"),
                                            ("[move+aggregators]", "except for move and medc"),
                                            ("baseline+aggregators", "set train.head=aggregators")])
def test_method_head_entries_are_validated(value, message, capsys):
    assert main(["config", "--config", "lt_bench", "--set", f"train.method={value}"]) == 2
    assert message in capsys.readouterr().err


def test_synthetic_benchmark_end_to_end(tmp_path, capsys):
    work = tmp_path / "bench"
    argv = ["-q", "run", "--config", "lt_bench", "--work-dir", str(work), *TINY,
            "--set", "train.method=[baseline,baseline+aggregators]", "--set", "seeds=[1,2]"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    runs = sorted(p.name for p in (work / "evaluate").iterdir())
    assert runs == ["baseline+aggregators-seed1", "baseline+aggregators-seed2", "baseline-seed1", "baseline-seed2"]
    extract = json.loads((work / "extract" / "manifest.json").read_text())
    assert extract["config"]["source"] == "npy" and extract["summary"]["failed"] == 0
    split = json.loads((work / "split" / "manifest.json").read_text())
    spec = SyntheticSpec(num_classes=8, max_per_class=12, imbalance=6, dim=12, frames_min=4, frames_max=6)
    assert tuple(split["summary"]["thresholds"].values()) == group_thresholds(spec)
    metrics = [json.loads((work / "evaluate" / r / "metrics.json").read_text()) for r in runs]
    assert {m["run"]["features"] for m in metrics} == {"synthetic"}
    assert [m["run"]["seed"] for m in metrics] == [1, 2, 1, 2]
    assert all(m["run"]["train_seconds"] > 0 for m in metrics)
    scores = [np.load(work / "train" / r / "predictions.npz")["scores"] for r in runs[2:]]
    assert not np.array_equal(*scores)  # the seeds train different models
    report = pd.read_csv(work / "report.csv")
    assert sorted(report.method) == ["baseline", "baseline+aggregators"] and set(report.runs) == {2}
    for _, row in report.iterrows():  # mean and std over the two seeds, computed here independently
        values = [m["metrics"]["mAP"] for m, r in zip(metrics, runs) if r.rsplit("-", 1)[0] == row.method]
        assert row.mAP_mean == pytest.approx(np.mean(values)) and row.mAP_std == pytest.approx(np.std(values, ddof=1))
    assert "| baseline+aggregators | synthetic | val | 2 |" in table and "Train (s)" in table
    stamp = (work / "train" / "baseline-seed1" / "best.pt").stat().st_mtime_ns
    assert main(["-q", *argv[1:]]) == 0  # a second run reuses every stage
    assert (work / "train" / "baseline-seed1" / "best.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_lt_bench_every_method_end_to_end(tmp_path, capsys):
    """The shipped benchmark config, every method, shortened to a few epochs on a smaller class set."""
    argv = ["-q", "run", "--config", "lt_bench", "--work-dir", str(tmp_path / "bench"),
            "--set", "dataset.synthetic.num_classes=40", "--set", "train.epochs=4", "--set", "train.lr_steps=[3]",
            "--set", "train.loss.ldam_drw.drw_epoch=2", "--set", "seeds=[1,2]", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for method in load_config("lt_bench").train.methods():
        assert f"| {method} | synthetic | val | 2 |" in out
