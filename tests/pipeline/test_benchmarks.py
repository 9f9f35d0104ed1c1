"""`bench all` renders docs/benchmarks.md from real (small) benchmark results."""

from evaluate.bench import bench_evaluate
from extract.bench import bench_store
from pipeline.benchmarks import render
from train.bench import bench_train


def test_render_reports_every_benchmark_it_was_given(tmp_path):
    results = {
        "evaluate": bench_evaluate(n=300, c=12, repeats=3),
        "store": bench_store(str(tmp_path), num_videos=6, frames=10, dim=8, batch_videos=4, sample_frames=5),
        "train": bench_train(batch=4, frames=6, dim=16, classes=5, repeats=1, method_names=("baseline",)),
        "demo": {"first_run_s": 61.0, "cached_run_s": 3.0, "stages_s": {"ingest": 5.0, "train/baseline": 1.5}},
    }
    text = render(results)
    assert results["evaluate"]["max_abs_diff"] <= 1e-6
    for heading in ("## bench evaluate", "## bench store", "## bench train", "## end-to-end demo"):
        assert heading in text
    assert "## bench extract" not in text
    assert f"**{results['evaluate']['speedup']:.1f}x**" in text
    assert "| baseline |" in text and "| train/baseline | 1.5 |" in text and "**61.0 s**" in text


def test_rewriting_the_report_keeps_the_measured_methods_section():
    from pipeline.benchmarks import METHODS_NOTE, methods_section

    previous = "# Benchmarks\n\n## bench evaluate\n\nold numbers\n\n## Long-tailed methods\n\n| baseline | 0.425 |\n"
    kept = methods_section(previous)
    assert kept == "## Long-tailed methods\n\n| baseline | 0.425 |"
    text = render({}, kept)
    assert text.endswith("| baseline | 0.425 |\n") and "old numbers" not in text
    assert methods_section("# Benchmarks\n") == METHODS_NOTE
