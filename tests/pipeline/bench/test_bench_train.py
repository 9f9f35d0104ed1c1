"""bench train runs every method's step and reports parameter counts (no timing assertions)."""

from pipeline.bench.train_bench import bench_train
from train.models import NonlinearClassifier


def test_bench_train_reports_each_method():
    result = bench_train(batch=4, frames=6, dim=16, classes=5, repeats=1, method_names=("baseline", "mixup", "medc"))
    assert set(result["methods"]) == {"baseline", "mixup", "medc"}
    assert result["methods"]["medc"]["step_s_median"] > 0  # MEDC's step with its experts' batch streams
    expected = sum(p.numel() for p in NonlinearClassifier(16, 5).parameters())
    assert result["methods"]["baseline"]["parameters"] == expected == 16 * 2048 + 2048 + 2048 * 5 + 5
    assert result["methods"]["baseline"]["step_s_median"] > 0
