"""One comparison, one schedule: method sections inherit train.*, differing schedules are never silent."""

import json

import pandas as pd
import pytest

from evaluate.report import aggregate, collect, report_markdown
from pipeline.config import read_config, run_schedule, schedule_mismatch, single_runs

# MEDC small enough for the 4-class fixture; no schedule key of its own
MEDC_SMALL = ["--set", "medc.trunk_dim=32", "--set", "medc.expert_dim=16", "--set", "move.vlad_hidden=16",
              "--set", "move.clusters=4", "--set", "train.train_frames=6", "--set", "train.eval_frames=10",
              "--set", "train.hidden=32", "--no-progress", "-q"]
PAPER_CONFIGS = ["videolt_r50", "videolt_r101", "videolt_tsm", "minik200_r50", "minik200_r101"]
BENCH_CONFIGS = ["demo", "lt_bench", "lt_bench_diverse", "lt_bench_videolt"]


def _train_and_evaluate(main, args, *extra):
    common = [*args, "--set", "train.method=[baseline,medc]", *MEDC_SMALL, *extra]
    assert main(["run", "--stage", "train", *common]) == 0
    assert main(["run", "--stage", "evaluate", *common]) == 0


def test_one_set_of_epochs_trains_every_method_alike(tmp_path, feature_work_dir, caplog):
    """The miniature of the bug: `--set train.epochs=2` for [baseline, medc] trained MEDC on its own 120."""
    from pipeline.cli import main

    run = tmp_path / "run"
    args = feature_work_dir(run)
    _train_and_evaluate(main, args, "--set", "train.epochs=2", "--set", "train.lr=0.002", "--set",
                        "train.batch_size=16", "--set", "train.lr_steps=[1]")
    for method in ("baseline", "medc"):
        folder = run / "train" / method
        config = json.loads((folder / "manifest.json").read_text())["config"]
        assert (config["epochs"], config["lr"], config["batch_size"], config["lr_steps"]) == (2, 0.002, 16, [1])
        assert len((folder / "log.jsonl").read_text().splitlines()) == 2
    for method in ("baseline", "medc"):
        recorded = json.loads((run / "evaluate" / method / "metrics.json").read_text())["run"]["schedule"]
        assert recorded == {"epochs": 2, "lr": 0.002, "lr_steps": [1], "batch_size": 16}
    assert not [r for r in caplog.records if "different schedules" in r.getMessage()]
    report = (run / "report.md").read_text()
    assert "Every row trained with epochs 2, lr 0.002, lr_steps [1], batch_size 16." in report
    assert "Schedule" not in report
    table = pd.read_csv(run / "report.csv")
    assert list(table.schedule) == ["epochs 2, lr 0.002, lr_steps [1], batch_size 16"] * 2


def test_a_method_with_its_own_schedule_is_flagged_in_the_run_and_the_report(tmp_path, feature_work_dir, caplog):
    from pipeline.cli import main

    run = tmp_path / "run"
    args = feature_work_dir(run)
    _train_and_evaluate(main, args, "--set", "train.epochs=2", "--set", "train.batch_size=16",
                        "--set", "train.lr=0.002", "--set", "train.lr_steps=[1]", "--set", "medc.epochs=3")
    flagged = [r.getMessage() for r in caplog.records if "train with different schedules" in r.getMessage()]
    assert len(flagged) == 2  # once per command (train, evaluate), not once per run
    assert "baseline: epochs 2," in flagged[0] and "medc: epochs 3," in flagged[0]
    report = (run / "report.md").read_text()
    assert "**Warning: these rows were trained with different schedules**" in report
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    assert rows["baseline"].rstrip(" |").endswith("epochs 2, lr 0.002, lr_steps [1], batch_size 16")
    assert rows["medc"].rstrip(" |").endswith("epochs 3, lr 0.002, lr_steps [1], batch_size 16")


def _metrics(folder, method, schedule):
    folder.mkdir(parents=True)
    run = {"method": method, "features": "f", "seed": 1, "select_on": "val"}
    if schedule is not None:
        run["schedule"] = schedule
    m = {k: 0.5 for k in ("mAP", "head", "medium", "tail", "acc1", "acc5")}
    (folder / "metrics.json").write_text(json.dumps({"run": run, "metrics": m, "profiles": {}}))


def test_report_marks_rows_whose_schedule_differs_or_was_not_recorded(tmp_path):
    short = {"epochs": 30, "lr": 0.001, "lr_steps": [20], "batch_size": 128}
    _metrics(tmp_path / "a", "baseline", short)
    _metrics(tmp_path / "b", "medc", {**short, "epochs": 120})
    _metrics(tmp_path / "c", "move", None)
    text = report_markdown(aggregate(collect([tmp_path / x for x in "abc"])))
    assert "different schedules" in text and "| Schedule |" in text
    assert text.count("epochs 30, lr 0.001, lr_steps [20], batch_size 128 |") == 1
    assert "epochs 120, lr 0.001, lr_steps [20], batch_size 128 |" in text
    assert "| not recorded |" in text
    same = report_markdown(aggregate(collect([tmp_path / "a"])))
    assert "different" not in same and "Every row trained with epochs 30, lr 0.001" in same


def test_seeds_of_one_method_share_a_row_and_a_schedule(tmp_path):
    schedule = {"epochs": 30, "lr": 0.001, "lr_steps": [20], "batch_size": 128}
    _metrics(tmp_path / "a", "baseline", schedule)
    _metrics(tmp_path / "b", "baseline", schedule)
    table = aggregate(collect([tmp_path / "a", tmp_path / "b"]))
    assert len(table) == 1 and table.runs.iloc[0] == 2


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_keep_the_papers_schedules(name):
    cfg, sources = read_config(name, ("train.method=[baseline,move,medc,ldam_drw]",))
    schedules = {run.train.method: run_schedule(run) for run in single_runs(cfg)}
    recipe = {"epochs": (100, "train.epochs"), "lr": (1e-4, "train.lr"), "lr_steps": ([30, 60], "train.lr_steps"),
              "batch_size": (128, "train.batch_size")}  # the VideoLT / MOVE scripts
    assert schedules["baseline"] == schedules["move"] == schedules["ldam_drw"] == recipe
    assert schedules["medc"] == {"epochs": (120, "medc.epochs"), "lr": (1e-4, "medc.lr"),
                                 "lr_steps": ([], "medc.lr_steps"), "batch_size": (128, "medc.batch_size")}
    assert all(sources[where].startswith("file ") for _, where in schedules["medc"].values())
    assert "medc: epochs 120" in schedule_mismatch(cfg)  # a mixed table here is flagged, by design


@pytest.mark.parametrize("name", BENCH_CONFIGS)
def test_benchmark_configs_train_every_method_on_one_schedule(name):
    cfg, _ = read_config(name, ("train.method=[baseline,move,medc,framestack+aggregators]",))
    assert schedule_mismatch(cfg) is None
    assert {str(run_schedule(run)) for run in single_runs(cfg)} == {str(run_schedule(single_runs(cfg)[0]))}


def test_config_command_shows_each_runs_schedule_with_its_source(capsys, caplog):
    from pipeline.cli import main

    assert main(["config", "--config", "lt_bench", "--set", "train.method=[baseline,medc]",
                 "--set", "train.epochs=7", "--set", "medc.lr=0.01"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("#   ")]
    assert lines[0].startswith("#   baseline: epochs 7 (train.epochs: --set), lr 0.001 (train.lr: file ")
    assert lines[1].startswith("#   medc: epochs 7 (train.epochs: --set), lr 0.01 (medc.lr: --set), lr_steps [20] "
                               "(train.lr_steps: file ")
    assert any("different schedules" in r.getMessage() for r in caplog.records)
