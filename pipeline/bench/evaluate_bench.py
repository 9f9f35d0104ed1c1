"""``bench evaluate``: the vectorised metrics against the reference's per-class sorting loop."""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import torch

from evaluate.metrics import compute

# Labels per video on VideoLT test.lst (1..5 labels; counted from the released label file).
_LABELS_PER_VIDEO = np.array([46973, 3697, 481, 80, 8], dtype=np.float64)


def reference_ap_loop(scores, targets) -> np.ndarray:
    """Per-class AP the way the reference APMeter computes it, one column at a time.

    ``torch.sort(descending=True, stable=True)`` of each column, cumulative true positives,
    precision at every positive, sum / max(#positives, 1). float64 accumulation.
    """
    s = torch.as_tensor(scores)
    t = torch.as_tensor(targets)
    n, c = s.shape
    position = torch.arange(1, n + 1, dtype=torch.float64)
    ap = np.zeros(c, np.float64)
    for k in range(c):
        _, order = torch.sort(s[:, k], descending=True, stable=True)
        truth = t[:, k][order].to(torch.float64)
        precision = torch.cumsum(truth, 0) / position
        npos = float(truth.sum())
        ap[k] = float((precision * truth).sum()) / max(npos, 1.0)
    return ap


def make_data(n: int, c: int, seed: int = 0):
    """Random float32 scores, VideoLT-like sparse multi-label targets (uint8) and train counts.

    Class frequencies are long-tailed (most / least frequent ~ 74, as on VideoLT test), about
    1.1 labels per video, and every class has at least one positive.
    """
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c), dtype=np.float32)
    freq = np.exp(np.linspace(0.0, np.log(74.0), c))[rng.permutation(c)]
    freq /= freq.sum()
    k = rng.choice(len(_LABELS_PER_VIDEO), size=n, p=_LABELS_PER_VIDEO / _LABELS_PER_VIDEO.sum()) + 1
    targets = np.zeros((n, c), np.uint8)
    for labels in range(1, int(k.max()) + 1):
        vids = np.flatnonzero(k >= labels)
        targets[vids, rng.choice(c, size=vids.size, p=freq)] = 1
    empty = np.flatnonzero(targets.sum(axis=0) == 0)
    targets[rng.integers(0, n, size=empty.size), empty] = 1
    train_counts = np.round(targets.sum(axis=0) * 3.5).astype(np.int64)
    return scores, targets, train_counts


def machine() -> dict:
    """The machine a ratio was measured on: CPU model, logical / usable CPUs, torch threads, load."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "torch_threads": torch.get_num_threads(), "load_avg_1m": _load()}


def _load() -> float | None:
    """1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def bench_evaluate(n: int = 51239, c: int = 1004, repeats: int = 3, seed: int = 0) -> dict:
    """Time ``compute`` against :func:`reference_ap_loop` on the same data; JSON-ready dict.

    The two are timed alternately (product, loop, product, ...) so that load from other processes
    falls on both; the machine and the load average before and after come with the result.
    """
    repeats = max(3, int(repeats))
    scores, targets, train_counts = make_data(n, c, seed)
    host = machine()
    product_t, loop_t = [], []
    for _ in range(repeats):
        seconds, metrics = _timed(lambda: compute(scores, targets, train_counts))
        product_t.append(seconds)
        seconds, loop_ap = _timed(lambda: reference_ap_loop(scores, targets))
        loop_t.append(seconds)
    product_med, loop_med = statistics.median(product_t), statistics.median(loop_t)
    return {
        "bench": "evaluate",
        "n": n,
        "c": c,
        "labels_per_video": float(targets.sum() / n),
        "product_s_min": min(product_t),
        "product_s_median": product_med,
        "loop_s_min": min(loop_t),
        "loop_s_median": loop_med,
        "speedup": loop_med / product_med,
        "speedup_of_minima": min(loop_t) / min(product_t),
        "max_abs_diff": float(np.max(np.abs(metrics["per_class_ap"] - loop_ap))),
        "machine": {**host, "load_avg_1m_after": _load()},
    }
