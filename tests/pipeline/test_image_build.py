"""The image built and tried for real: docker/build-local.sh with buildah (about 25 minutes on 2 cores,
most of it the demo; ~7 GB of buildah storage while it runs, freed at the end but for the Debian base
image, which the first run debootstraps)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/vltr-pipeline:slow-test"
# what a developer's checkout holds besides the source: none of it may reach the image
JUNK = (".venv/lib/python3.11/site-packages/big.bin", "venv/bin/python", "runs/demo/extract/shard-0.h5",
        "work/videolt.yaml", "pipeline/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/cache/lastfailed",
        "features.npy", "extract/weights/resnet50.pth", "docker/videos/a.mp4", "train/debug.log",
        "extract/old.egg-info/PKG-INFO", ".git/HEAD")
METHODS = ("baseline", "ldam_drw", "cb_loss", "mixup", "framestack", "move", "medc", "mea")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("buildah") is None,
                       reason="buildah is not installed (apt-get install buildah debootstrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah with the vfs driver and chroot isolation needs root"),
]


def checkout_with_junk(context: Path) -> list:
    """Copy the tracked files of this repository to ``context``, add JUNK; return the tracked names."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    tracked = [name for name in tracked if (ROOT / name).is_file()]
    for name in tracked + list(JUNK):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        if name in JUNK:
            (context / name).write_bytes(b"\0" * 1024)
        else:
            shutil.copy2(ROOT / name, context / name)
    return tracked


@pytest.mark.timeout(7200)
def test_the_image_builds_and_runs_selftest_and_demo_as_uid_1000(tmp_path):
    context, out = tmp_path / "context", tmp_path / "out"
    tracked = checkout_with_junk(context)
    env = {**os.environ, "VLTR_CONTEXT": str(context), "VLTR_IMAGE": IMAGE}
    try:
        result = subprocess.run(["bash", str(ROOT / "docker" / "build-local.sh"), str(out)], env=env,
                                capture_output=True, text=True, timeout=7000)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # the source tree in the image: exactly the tracked files, none of the junk
        assert sorted((out / "image-files.txt").read_text().split()) == sorted(tracked)
        summary = (out / "summary.txt").read_text()
        assert "FAIL" not in summary and "demo finished" in summary, summary
        closing = (out / "selftest.log").read_text().strip().splitlines()[-1]
        assert re.match(r"\d+ passed", closing) and "failed" not in closing, closing
        work = out / "work"
        for method in METHODS:
            metrics = json.loads((work / "runs" / "demo" / "evaluate" / method / "metrics.json").read_text())
            assert 0.0 <= metrics["metrics"]["mAP"] <= 1.0, method
        owners = {path.stat().st_uid for path in work.rglob("*")}
        assert owners == {1000}
    finally:
        subprocess.run(["buildah", "rmi", IMAGE], capture_output=True,
                       env={**os.environ, "STORAGE_DRIVER": "vfs"})
