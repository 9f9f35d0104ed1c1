"""The metric registry: metrics evaluate scores beside :func:`evaluate.metrics.compute`'s (one table).

``metrics.compute`` gives the papers' metrics (mAP, head/medium/tail mAP, Acc@1/5) in one vectorised
pass; an entry here adds one more number. The evaluate stage computes it on the same inputs (the
predictions, every test-distribution profile, each expert of an ensemble) and writes it into
``metrics.json``; ``results.md``, the stage summary and ``python -m pipeline report`` show it as a
column after the papers' ones. Adding a metric is one function and one entry in :data:`METRICS`
(docs/extending.md has a worked example). Training's checkpoint selection does not use these.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: ``name`` is its key in metrics.json, ``header`` its column title; ``compute`` is called
    as ``compute(scores, targets, train_counts, head, tail) -> float`` with (N, C) float32 scores,
    (N, C) uint8 0/1 targets, (C,) training counts and the group thresholds (head: count > head,
    tail: count <= tail). NaN is reported as null (e.g. a group without classes)."""

    name: str
    header: str
    compute: Callable


METRICS: dict[str, Metric] = {m.name: m for m in (
    # Metric("name", "Column title", function),
)}


def compute_all(scores, targets, train_counts, head: int, tail: int) -> dict:
    """``{name: value}`` of every registered metric on one score matrix."""
    return {name: float(m.compute(scores, targets, train_counts, head, tail)) for name, m in METRICS.items()}
