"""`python -m pipeline run` with no arguments: the whole demo chain, offline, on CPU; re-run is cached."""

import json
import subprocess
import sys

import pytest

from machine_load import scaled


@pytest.mark.timeout(1800)  # minutes on an idle 2-core machine; generous for a loaded one
def test_demo_runs_end_to_end_and_reruns_from_cache(tmp_path):
    work = tmp_path / "demo"
    first = subprocess.run([sys.executable, "-m", "pipeline", "run", "--work-dir", str(work), "--no-progress"],
                           capture_output=True, text=True, timeout=scaled(1500))
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("ingest", "extract", "split"):
        assert (work / stage / "manifest.json").exists()
    methods = ["baseline", "ldam_drw", "cb_loss", "mixup", "framestack", "move", "medc", "mea"]
    for method in methods:
        metrics = json.loads((work / "evaluate" / method / "metrics.json").read_text())
        assert 0.0 <= metrics["metrics"]["mAP"] <= 1.0
        assert set(metrics["profiles"]) == {"as_is", "uniform", "long_tailed", "inverse"}
        assert (work / "evaluate" / method / "ap_vs_frequency.png").stat().st_size > 10_000
    table = (work / "report.md").read_text()
    assert all(f"| {m} | efficientnet_lite0 | val | 1 |" in table for m in methods)
    assert "| Method | Features | Selected on | Runs | Overall | Head | Medium | Tail | Acc@1 | Acc@5 |" in first.stdout
    extract = json.loads((work / "extract" / "manifest.json").read_text())["summary"]
    assert extract["failed"] == 0 and extract["ok"] == extract["videos"] > 300

    second = subprocess.run([sys.executable, "-m", "pipeline", "run", "--work-dir", str(work), "--no-progress"],
                            capture_output=True, text=True, timeout=scaled(300))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "running" not in second.stderr and second.stderr.count("up to date, skipped") == 3 + 2 * len(methods)
