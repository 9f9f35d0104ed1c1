"""Outputs get the usual file modes under the umask (shared storage, bind mounts), not mkstemp's 0600."""

import os
import stat

import pytest

from manifests.files import write_text_atomic
from pipeline.data.synthetic_data import generate_synthetic
from pipeline.synthetic_config import SyntheticSpec


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_and_generated_folders_respect_the_umask(tmp_path, umask_022):
    write_text_atomic(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o644
    out = generate_synthetic(tmp_path / "bench", SyntheticSpec(num_classes=4, max_per_class=3, imbalance=3, dim=4))
    assert mode(out) == 0o755 and mode(out / "labels.csv") == 0o644
    os.umask(0o077)
    write_text_atomic(tmp_path / "b.txt", "x")
    assert mode(tmp_path / "b.txt") == 0o600
