"""The benchmark suite: variants x methods x seeds, one table per variant, ranks checked by hand."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.bench.lt_suite import rank_summary, summary_markdown

TINY = ["--set", "dataset.synthetic.num_classes=8", "--set", "dataset.synthetic.max_per_class=12",
        "--set", "dataset.synthetic.dim=12", "--set", "dataset.synthetic.frames_min=4",
        "--set", "dataset.synthetic.frames_max=6", "--set", "train.epochs=2", "--set", "train.eval_every=1",
        "--set", "train.batch_size=16", "--set", "train.hidden=16", "--set", "train.lr_steps=[]",
        "--set", "move.clusters=4", "--set", "move.vlad_hidden=8", "--no-progress"]


def _table(rows):
    return pd.DataFrame(rows, columns=["method", "mAP_mean", "mAP_std"])


def test_ranks_and_the_one_std_band_by_hand():
    tables = {"v1": _table([("a", 0.50, 0.01), ("b", 0.60, 0.05), ("c", 0.56, 0.02)]),
              "v2": _table([("a", 0.70, 0.02), ("b", 0.40, 0.01), ("c", 0.69, 0.00)])}
    summary = rank_summary(tables, "mAP")
    # v1: b best (std 0.05): c 0.56 >= 0.55 is within, a is not; v2: a best (std 0.02): c within, b not
    assert summary.loc["a", "v1"] == (0.50, 3, False) and summary.loc["b", "v1"] == (0.60, 1, True)
    assert summary.loc["c", "v1"] == (0.56, 2, True) and summary.loc["c", "v2"] == (0.69, 2, True)
    assert summary.loc["b", "v2"] == (0.40, 3, False)
    assert dict(summary["mean_rank"]) == {"a": 2.0, "b": 2.0, "c": 2.0}
    text = summary_markdown(summary, "overall")
    assert "| b | **0.600 (1)** | 0.400 (3) | 2.0 |" in text


def test_a_method_missing_from_a_variant_is_shown_as_a_dash():
    tables = {"v1": _table([("a", 0.5, 0.0), ("b", 0.6, 0.0)]), "v2": _table([("a", 0.7, 0.0)])}
    summary = rank_summary(tables, "mAP")
    assert summary.loc["b", "mean_rank"] == 1.0 and summary.loc["a", "mean_rank"] == 1.5
    assert "| b | **0.600 (1)** | – | 1.0 |" in summary_markdown(summary, "overall")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_suite_runs_every_variant_and_ranks_from_the_runs(tmp_path, capsys):
    work = tmp_path / "suite"
    argv = ["-q", "suite", "--variants", "lt_bench,lt_bench_step10", "--methods", "baseline,mea", "--seeds", "1,2",
            "--work-dir", str(work), *TINY]
    assert main(argv) == 0
    text = (work / "suite.md").read_text()
    assert capsys.readouterr().out == text
    for variant in ("lt_bench", "lt_bench_step10"):
        runs = sorted(p.name for p in (work / variant / "evaluate").iterdir())
        assert runs == ["baseline-seed1", "baseline-seed2", "mea-seed1", "mea-seed2"]
        # the summary's cells, recomputed from the metrics files
        means = {m: np.mean([json.loads((work / variant / "evaluate" / f"{m}-seed{s}" / "metrics.json").read_text())
                             ["metrics"]["mAP"] for s in (1, 2)]) for m in ("baseline", "mea")}
        best = max(means, key=means.get)
        overall = text.split("## Rank summary: tail mAP")[0]
        column = ["lt_bench", "lt_bench_step10"].index(variant)
        for method, value in means.items():
            row = re.search(rf"^\| {method} \| (.*)$", overall, re.M).group(1).split(" | ")
            assert f"{value:.3f} ({1 if method == best else 2})" in row[column]
        assert f"## {variant}\n" in text
    # a second call finds every run finished and only rewrites the report
    assert main([*argv, "--report-only"]) == 0
    assert (work / "suite.md").read_text() == text
