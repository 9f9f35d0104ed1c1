"""`bench scale`: VideoLT-shaped synthetic sets, per-stage measurements, growth exponents, the report."""

import math

import pytest

from pipeline.bench.benchmarks import kept_sections, with_scale_section
from pipeline.bench.scale_bench import SCALE_HEADING, bench_scale, growth_exponent, render_scale, scale_spec
from pipeline.synthetic_config import train_profile


def test_growth_exponent_against_hand_computed_examples():
    # log2 N = 0, 1, 2 and log2 t = 0, 1, 3: slope = sum(dx * dy) / sum(dx^2) = (1 * 4/3 + 1 * 5/3) / 2 = 1.5
    assert growth_exponent([1, 2, 4], [1, 2, 8]) == 1.5
    assert growth_exponent([10, 100, 1000], [3 * n ** 0.5 for n in (10, 100, 1000)]) == 0.5
    assert growth_exponent([5, 50], [7.0, 7.0]) == 0.0
    assert growth_exponent([10], [1.0]) is None and growth_exponent([10, 10], [1.0, 2.0]) is None


def test_scale_spec_has_videolt_shape_and_the_asked_size():
    spec = scale_spec(10_000)
    assert spec.num_classes == 1004 and spec.imbalance == 43 and spec.multi_label_share == 0.08
    assert math.isclose(spec.val_fraction, 25_619 / 179_334) and math.isclose(spec.test_fraction, 51_239 / 179_334)
    assert train_profile(spec).sum() >= 10_000  # the smallest head-class count that holds N videos
    assert train_profile(spec.model_copy(update={"max_per_class": spec.max_per_class - 1})).sum() < 10_000


def test_bench_scale_measures_every_stage_asked_at_every_size(tmp_path):
    stages = ("generate", "ingest", "extract", "split")  # no torch imports: a few seconds per size
    result = bench_scale(sizes=(120, 40), frames=4, dim=8, classes=10, stages=stages, root=str(tmp_path))
    runs = result["runs"]
    assert [r["n_target"] for r in runs] == [40, 120] and runs[0]["videos"]["train"] >= 40
    for run in runs:
        assert tuple(run["stages"]) == stages
        for row in run["stages"].values():
            assert row["wall_s"] > 0 and row["cpu_s"] >= 0 and row["peak_rss_mb"] > 10 and row["files"] >= 1
        assert run["stages"]["extract"]["disk_mb"] > 0
    assert set(result["exponents"]) == set(stages)
    assert set(result["exponents"]["extract"]) == {"wall_s", "cpu_s", "peak_rss_mb", "disk_mb"}
    assert not list(tmp_path.iterdir())  # each size's files are removed after it
    text = render_scale(result)
    assert text.startswith(SCALE_HEADING) and "| extract |" in text and "Extrapolation" not in text


def test_the_scale_section_is_kept_replaced_or_inserted():
    previous = "# Benchmarks\n\n## bench evaluate\n\nx\n\n## Long-tailed methods\n\nM\n"
    first = with_scale_section(previous, "## Scale\n\nold\n")
    assert first.index("## Scale") < first.index("## Long-tailed methods") and "## bench evaluate" in first
    noted = first.replace("old", "old\n\n### Notes\n\nkept")
    second = with_scale_section(noted, "## Scale\n\nnew\n")
    assert "old" not in second and "new\n\n### Notes\n\nkept\n\n## Long-tailed methods" in second
    assert kept_sections(second) == "## Scale\n\nnew\n\n### Notes\n\nkept\n\n## Long-tailed methods\n\nM"


@pytest.mark.slow
def test_bench_scale_command_writes_its_section(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n## Long-tailed methods\n\nM\n")
    done = subprocess.run([sys.executable, "-m", "pipeline", "bench", "scale", "--sizes", "1004,1100", "--out",
                           str(out), "--scale-dir", str(tmp_path / "data")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["runs"]) == 2 and "train/move" in result["exponents"] and result["probe"]["dim"] == 2048
    text = out.read_text()
    assert "## Scale" in text and "Extrapolation" in text and text.rstrip().endswith("M")
