"""Benchmarks: ``bench`` and its report (benchmarks), the per-stage measurements (extract_bench,
train_bench, evaluate_bench), ``bench scale`` (scale_bench) and ``bench gpu`` (gpu_check)."""
