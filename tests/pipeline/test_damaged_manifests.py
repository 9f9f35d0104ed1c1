"""A damaged manifest certifies nothing: the stage is rebuilt (with or without --force), `status`
still shows every stage; and a stage whose upstream is out of date is not shown as done."""

import json

import pytest

from pipeline.cli import main


def args(videolt_dir, work, *extra):
    return ["--set", "dataset.format=videolt", "--set", f"dataset.root={videolt_dir}", "--work-dir", str(work), *extra]


@pytest.mark.parametrize("damage", ["{not json", json.dumps({"stage": "split", "config": {}, "config_hash": "x",
                                                              "outputs": ["videos.parquet"]})],
                         ids=["invalid-json", "outputs-a-list"])
@pytest.mark.parametrize("force", [False, True], ids=["run", "run-force"])
def test_damaged_manifest_is_rebuilt_and_status_survives(videolt_dir, tmp_path, capsys, damage, force):
    work = tmp_path / "w"
    assert main(["run", "-q", "--stage", "split", *args(videolt_dir, work)]) == 0
    (work / "split" / "manifest.json").write_text(damage)
    assert main(["status", "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "split" in out and "stale" in out and "manifest unreadable" in out and "ingest" in out
    assert main(["run", "-q", "--stage", "split", *args(videolt_dir, work), *(["--force"] if force else [])]) == 0
    assert json.loads((work / "split" / "manifest.json").read_text())["stage"] == "split"


def test_status_marks_downstream_of_a_stale_stage(videolt_dir, tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["run", "-q", "--stage", "split", *args(videolt_dir, work)]) == 0
    capsys.readouterr()
    assert main(["status", *args(videolt_dir, work, "--set", "dataset.root=" + str(tmp_path / "other"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    split = next(i for i, line in enumerate(lines) if line.split()[:1] == ["split"])
    assert lines[split].split()[1] == "stale"  # its own inputs did not change: only the upstream did
    assert lines[split + 1].strip() == "why: upstream ingest is stale"
    assert main(["status", "--work-dir", str(work)]) == 0  # against the recorded configs: all done
    out = capsys.readouterr().out
    assert "stale" not in out and "split" in out
