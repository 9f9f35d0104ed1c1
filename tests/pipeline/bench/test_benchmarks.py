"""`bench all` renders docs/benchmarks.md from real (small) benchmark results."""

from pipeline.bench.evaluate_bench import bench_evaluate
from pipeline.bench.extract_bench import bench_store
from pipeline.bench.benchmarks import render
from pipeline.bench.train_bench import bench_train


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
    from pipeline.bench.benchmarks import METHODS_NOTE, methods_section

    previous = "# Benchmarks\n\n## bench evaluate\n\nold numbers\n\n## Long-tailed methods\n\n| baseline | 0.425 |\n"
    kept = methods_section(previous)
    assert kept == "## Long-tailed methods\n\n| baseline | 0.425 |"
    text = render({}, kept)
    assert text.endswith("| baseline | 0.425 |\n") and "old numbers" not in text
    assert methods_section("# Benchmarks\n") == METHODS_NOTE


def test_evaluate_section_states_machine_and_load_with_every_run():
    from pipeline.bench.benchmarks import evaluate_section

    runs = [bench_evaluate(n=200, c=8, repeats=3, seed=s) for s in (0, 1)]
    for run in runs:
        m = run["machine"]
        assert m["cpu"] and m["logical_cpus"] >= 1 and m["usable_cpus"] >= 1 and m["torch_threads"] >= 1
        assert "load_avg_1m" in m and "load_avg_1m_after" in m
    text = evaluate_section(runs)
    assert text.startswith("## bench evaluate") and f"Machine: {runs[0]['machine']['cpu']}" in text
    for run in runs:
        assert f"**{run['speedup']:.1f}x**" in text
        assert f"{run['machine']['load_avg_1m']} -> {run['machine']['load_avg_1m_after']}" in text
    assert evaluate_section(runs[0]).count("\n| ") == 3  # header, separator, one run


def test_bench_all_writes_only_where_it_is_told(tmp_path, monkeypatch, capsys):
    """Without --out the report goes to stdout (nothing lands in the current directory's docs/);
    with --out it rewrites that file and keeps its measured methods section."""
    import pipeline.bench.benchmarks
    import pipeline.cli
    from pipeline.cli import main

    demo = {"first_run_s": 61.0, "cached_run_s": 3.0, "stages_s": {"ingest": 5.0}}
    monkeypatch.setattr(pipeline.cli, "IN_BENCH_ALL", ("demo",))
    monkeypatch.setattr(pipeline.bench.benchmarks, "run_benchmark", lambda name: demo)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "bench", "all"]) == 0
    out = capsys.readouterr().out
    assert "## end-to-end demo" in out and "**61.0 s**" in out
    assert list(tmp_path.iterdir()) == []

    report = tmp_path / "elsewhere" / "bench.md"
    report.parent.mkdir()
    report.write_text("# Benchmarks\n\n## Long-tailed methods\n\n| baseline | 0.425 |\n", encoding="utf-8")
    assert main(["-q", "bench", "all", "--out", str(report)]) == 0
    text = report.read_text(encoding="utf-8")
    assert "**61.0 s**" in text and text.rstrip().endswith("| baseline | 0.425 |")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]
