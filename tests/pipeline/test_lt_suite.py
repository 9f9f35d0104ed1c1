"""The benchmark suite: variants x methods x seeds, one table per variant, ranks checked by hand."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.bench.lt_suite import rank_summary, summary_markdown, weighting_markdown, weighting_table

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


def _metrics(folder, method, seed, experts):
    folder.mkdir(parents=True)
    profile = {"as_is": {"mAP": 0.0}, "uniform": {"mAP": 0.0}}
    document = {"run": {"method": method, "seed": seed}, "metrics": {"mAP": 0.0, "tail": 0.0},
                "experts": {name: {"mAP": m, "tail": t, "profiles": {**profile, "uniform": {"mAP": u}}}
                            for name, (m, t, u) in experts.items()}}
    (folder / "metrics.json").write_text(json.dumps(document))


def test_expert_weightings_are_averaged_over_seeds_by_hand(tmp_path):
    evaluate = tmp_path / "evaluate"
    _metrics(evaluate / "mea-seed1", "mea", 1, {"lt": (0.1, 0.1, 0.1), "mix_mean": (0.50, 0.20, 0.40),
                                                  "mix_agreement": (0.60, 0.30, 0.45)})
    _metrics(evaluate / "mea-seed2", "mea", 2, {"lt": (0.1, 0.1, 0.1), "mix_mean": (0.54, 0.22, 0.44),
                                                  "mix_agreement": (0.60, 0.34, 0.55)})
    _metrics(evaluate / "medc-seed1", "medc", 1, {"lt": (0.2, 0.2, 0.2)})  # no mix: not listed
    table = weighting_table(tmp_path)
    assert table[["method", "weighting", "runs"]].values.tolist() == [["mea", "mean", 2], ["mea", "agreement", 2]]
    row = table.iloc[0]
    assert row["mAP_mean"] == pytest.approx(0.52) and row["mAP_std"] == pytest.approx(0.02 * 2 ** 0.5)
    assert table.iloc[1]["mAP[uniform]_mean"] == pytest.approx(0.50) and "mAP[as_is]_mean" not in table
    text = weighting_markdown(table)
    assert "| Method | Weighting | Runs | Overall | Tail | mAP[uniform] |" in text
    assert "| mea | agreement | 2 | 0.600 ± 0.000 | 0.320 ± 0.028 | 0.500 ± 0.071 |" in text
    assert weighting_table(tmp_path / "evaluate" / "medc-seed1").empty


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
        weightings = text.split(f"### {variant}: expert weightings")[1].split("##")[0]
        for weighting in ("mean", "val", "agreement", "agreement_per_profile"):
            assert f"| mea | {weighting} | 2 |" in weightings
    # a second call finds every run finished and only rewrites the report
    assert main([*argv, "--report-only"]) == 0
    assert (work / "suite.md").read_text() == text
