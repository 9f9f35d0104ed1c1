"""Shared fixtures: small hand-made label lists in each supported format."""

from pathlib import Path

import pytest

# A tiny VideoLT: class names in the file's own (not sorted) order, counts written as floats.
VIDEOLT_CLASSES = [("river", 501), ("beach", 500), ("zebra", 101), ("soccerJuggling", 100), ("apple", 3)]


def write_videolt(root: Path, classes=VIDEOLT_CLASSES) -> Path:
    """Write a VideoLT-format label folder whose train counts equal the declared ones.

    Every video has one label except that the first 3 train videos of class 0 also carry class 4,
    so class 4's count is 3 = 3 multi-label videos, and class 0 keeps its declared count.
    """
    root.mkdir(parents=True, exist_ok=True)
    lines = [f"{name} {i} {float(count)}" for i, (name, count) in enumerate(classes)]
    (root / "count-labels-train.lst").write_text("\n".join(lines) + "\n")
    train, n = [], 0
    for i, (_, count) in enumerate(classes):
        if i == 4:
            continue  # class 4 appears only as a second label
        for k in range(count):
            labels = f"{i},4" if (i == 0 and k < 3) else f"{i}"
            train.append(f"tr{n:05d} {labels}")
            n += 1
    (root / "train.lst").write_text("\n".join(train) + "\n")
    (root / "validate.lst").write_text("".join(f"va{i:03d} {i % len(classes)}\n" for i in range(7)))
    (root / "test.lst").write_text("".join(f"te{i:03d} {i % len(classes)}\n" for i in range(11))
                                   + "te900 0,2\n")
    return root


@pytest.fixture
def videolt_dir(tmp_path) -> Path:
    return write_videolt(tmp_path / "videolt")
