"""Named configs ship inside the package: found from any directory and present in the wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.name for p in (ROOT / "pipeline" / "configs").glob("*.yaml"))


def test_named_config_resolves_from_another_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "config", "--config", "videolt_r50"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "  format: videolt  # file " in result.stdout and "videolt_r50.yaml" in result.stdout


@pytest.mark.timeout(900)
def test_wheel_contains_every_named_config(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md", "pipeline", "extract", "manifests", "train", "evaluate"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": ignore} if (ROOT / name).is_dir() else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=800)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("vltr_pipeline-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.split("/")[-1] for n in names if n.startswith("pipeline/configs/")) == SHIPPED
    assert {"demo.yaml", "lt_bench.yaml", "videolt_r50.yaml", "minik200_r50.yaml"} <= set(SHIPPED)
