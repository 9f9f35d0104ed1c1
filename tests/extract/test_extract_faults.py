"""Process-level faults: SIGKILL mid-run then re-run -> identical store; Ctrl-C stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from extract.store import FeatureStore
from machine_load import scaled

N_VIDEOS = 10

SCRIPT = textwrap.dedent("""
    import sys, pandas as pd
    from pathlib import Path
    from extract.config import ExtractConfig
    from extract.stage import run_extract
    videos = pd.read_csv(sys.argv[1])
    cfg = ExtractConfig(num_frames=24, resize=72, crop=64, batch_size=8, videos_per_shard=1)
    s = run_extract(cfg, videos, Path(sys.argv[2]), progress=False)
    print("DONE", s["ok"], s["processed"])
""")


@pytest.fixture(scope="module")
def fault_setup(video_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    rows = [{"video_id": f"k{i}", "path": str(video_dir / f"v{i % 6}.mp4")} for i in range(N_VIDEOS)]
    pd.DataFrame(rows).to_csv(d / "videos.csv", index=False)
    (d / "run.py").write_text(SCRIPT)
    return d


def _env():
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _start(d, out):
    return subprocess.Popen([sys.executable, str(d / "run.py"), str(d / "videos.csv"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _run(d, out):
    p = subprocess.run([sys.executable, str(d / "run.py"), str(d / "videos.csv"), str(out)],
                       capture_output=True, text=True, env=_env(), timeout=scaled(300))
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _wait_for_first_shard(proc, out, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < scaled(timeout):
        if (out / "shard-00000.h5").exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _assert_same_store(a: Path, b: Path):
    sa, sb = FeatureStore(a), FeatureStore(b)
    assert sorted(sa.ids()) == sorted(sb.ids()) == sorted(f"k{i}" for i in range(N_VIDEOS))
    assert not sa.duplicates and not sb.duplicates
    for v in sa.ids():
        assert np.array_equal(sa.get(v), sb.get(v)), v
        assert sa.meta(v)["frame_indices"].tolist() == sb.meta(v)["frame_indices"].tolist()
    ta = pd.read_parquet(a / "videos.parquet").sort_values("video_id").reset_index(drop=True)
    tb = pd.read_parquet(b / "videos.parquet").sort_values("video_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(ta.drop(columns=["shard"]), tb.drop(columns=["shard"]))


@pytest.fixture(scope="module")
def reference_store(fault_setup):
    out = fault_setup / "reference"
    _run(fault_setup, out)
    return out


def test_sigkill_mid_run_then_rerun_gives_identical_store(fault_setup, reference_store):
    out = fault_setup / "killed"
    proc = _start(fault_setup, out)
    assert _wait_for_first_shard(proc, out), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=scaled(30))
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "videos.parquet").exists()  # it really died mid-run
    done_before = len(FeatureStore(out))
    assert 1 <= done_before < N_VIDEOS
    stdout = _run(fault_setup, out)
    assert "DONE 10" in stdout
    assert f"DONE 10 {N_VIDEOS - done_before}" in stdout  # finished videos were skipped
    assert not list(out.glob("*.partial"))
    _assert_same_store(out, reference_store)


def test_ctrl_c_stops_at_a_safe_point_and_says_how_to_resume(fault_setup, reference_store):
    out = fault_setup / "interrupted"
    proc = _start(fault_setup, out)
    assert _wait_for_first_shard(proc, out), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=scaled(120))
    assert proc.returncode != 0
    assert "re-run the same command to resume" in err
    assert "Traceback" not in err.split("KeyboardInterrupt")[0] or "KeyboardInterrupt" in err
    assert not list(out.glob("*.partial"))  # the shard in flight was dropped, not left half-written
    n = len(FeatureStore(out))
    assert n >= 1
    _run(fault_setup, out)
    _assert_same_store(out, reference_store)
