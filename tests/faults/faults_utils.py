"""Helpers of the fault-injection tests (imported by the test modules of tests/faults/).

The tests run the real command line, ``python -m pipeline ...``, in subprocesses so that a kill or a
Ctrl-C hits a whole process, exactly as it would on a cluster or a laptop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from machine_load import scaled

ROOT = Path(__file__).resolve().parents[2]

# Small, fast extract settings (real EfficientNet-Lite0 weights, one video per shard so that a kill
# lands between, or in the middle of, shard writes).
EXTRACT_FAST = ["--set", "extract.num_frames=8", "--set", "extract.resize=72", "--set", "extract.crop=64",
                "--set", "extract.videos_per_shard=1"]

# One method, enough epochs to be killed in the middle: the kills land in the first half, leaving 50 or
# more epochs (about 25 ms each on an idle 2-core machine, 40 ms at a load of 6 with one torch thread).
TRAIN_EPOCHS = 100
TRAIN_FAST = ["--set", "train.method=baseline", "--set", f"train.epochs={TRAIN_EPOCHS}", "--set", "train.batch_size=8",
              "--set", "train.hidden=2048", "--set", "train.eval_every=5", "--set", "train.train_frames=6",
              "--set", "train.eval_frames=10", "--set", "train.lr=0.001"]


def env() -> dict:
    """The environment of a child ``python -m pipeline``: this checkout first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("RANK", None)
    return e


def cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline *args`` to its end; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=kwargs.pop("cwd", ROOT), timeout=scaled(timeout), **kwargs)


def bounded_cli(*args, timeout=60, max_rss_mb=1500) -> subprocess.CompletedProcess:
    """``python -m pipeline *args`` that must end within ``timeout`` s (scaled with the machine) and never
    hold more than ``max_rss_mb`` MB resident, it and its children together (sampled every 20 ms);
    otherwise its process group is killed and the test fails. Output goes to files, so a child that
    prints without end cannot block on a full pipe."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], stdout=out, stderr=err,
                                text=True, env=env(), cwd=ROOT, start_new_session=True)
        deadline, peak = time.monotonic() + scaled(timeout), 0.0
        try:
            while proc.poll() is None:
                peak = max(peak, _tree_rss_mb(psutil, proc.pid))
                assert peak <= max_rss_mb, f"{' '.join(map(str, args))[:300]}: over {max_rss_mb} MB resident"
                assert time.monotonic() < deadline, f"{' '.join(map(str, args))[:300]}: still running after " \
                                                    f"{scaled(timeout):.0f} s"
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


def _tree_rss_mb(psutil, pid: int) -> float:
    """Resident MB of a process and its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc


def _as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C (SIGINT) back to its default. A test run started in the background
    of a script ignores SIGINT, and an ignored signal stays ignored in every process started from it, so
    a child would never see the Ctrl-C these tests send (Python installs its handler only where SIGINT is
    not ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """``python -m pipeline *args`` started in its own session (process group), output to files."""

    def __init__(self, log_dir: Path, *args):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], stdout=self._out,
                                     stderr=self._err, env=env(), cwd=ROOT, start_new_session=True,
                                     preexec_fn=_as_from_a_terminal)
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, predicate, timeout=180, what="the condition") -> None:
        """Poll ``predicate()`` every few ms while the child runs; fail if it ends or times out first."""
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.running():
                raise AssertionError(f"the child ended (exit {self.proc.returncode}) before {what}:\n"
                                     f"{self.stderr()[-4000:]}")
            time.sleep(0.003)
        self.kill_group()
        raise AssertionError(f"timed out waiting for {what}:\n{self.stderr()[-4000:]}")

    def signal(self, sig) -> None:
        os.kill(self.pid, sig)

    def signal_group(self, sig) -> None:
        """What a terminal does on Ctrl-C: the signal goes to every process of the job."""
        os.killpg(self.pid, sig)

    def wait(self, timeout=180) -> int:
        try:
            return self.proc.wait(timeout=scaled(timeout))
        finally:
            self._out.close()
            self._err.close()

    def kill_group(self) -> None:
        """Clean-up: SIGKILL whatever is left of the child's process group (ours only)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.wait(timeout=30)
        except Exception:
            pass

    def group_alive(self) -> list:
        """Pids still alive in the child's process group (the child's own workers)."""
        import psutil

        alive = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.pid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except (ProcessLookupError, psutil.Error, OSError):
                continue
        return alive

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""


def demo_videos(out_dir: Path) -> Path:
    """A small demo set of real H.264 clips (about 22 videos of 8 frames, 4 classes), csv format."""
    from pipeline.data.demo_data import DemoSpec, generate_demo

    spec = DemoSpec(num_objects=2, directions=("left", "right"), max_train_per_class=6, min_train_per_class=2,
                    val_per_class=1, test_per_class=1, frames=8, size=64, distractor_frames=1)
    return generate_demo(out_dir, seed=0, spec=spec)


def demo_args(demo: Path, work: Path) -> list:
    return ["--set", "dataset.format=csv", "--set", f"dataset.root={demo / 'labels.csv'}",
            "--set", f"dataset.class_names={demo / 'class_names.txt'}", "--work-dir", str(work)]


def shards(stage_dir: Path) -> list:
    return sorted(stage_dir.glob("shard-*.h5"))


def assert_same_store(a: Path, b: Path, expected_ids=None) -> None:
    """Two extract stage folders hold the same videos with bit-equal features and no duplicates."""
    from extract.store import FeatureStore

    sa, sb = FeatureStore(a), FeatureStore(b)
    assert not sa.duplicates and not sb.duplicates, (sa.duplicates, sb.duplicates)
    assert sorted(sa.ids()) == sorted(sb.ids())
    if expected_ids is not None:
        assert sorted(sa.ids()) == sorted(expected_ids)
    for v in sa.ids():
        fa, fb = sa.get(v), sb.get(v)
        assert fa.dtype == fb.dtype and np.array_equal(fa, fb), v
        assert sa.meta(v)["frame_indices"].tolist() == sb.meta(v)["frame_indices"].tolist(), v
    assert sa.attrs["fingerprint"] == sb.attrs["fingerprint"]
    ta = pd.read_parquet(a / "videos.parquet").sort_values("video_id").reset_index(drop=True)
    tb = pd.read_parquet(b / "videos.parquet").sort_values("video_id").reset_index(drop=True)
    assert ta.video_id.is_unique
    pd.testing.assert_frame_equal(ta.drop(columns=["shard"]), tb.drop(columns=["shard"]))


def checkpoint_epoch(path: Path):
    """The ``epoch`` of a checkpoint read safely (``weights_only=True``), or None if not readable yet."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return None


class CheckpointEpoch:
    """:func:`checkpoint_epoch` for polling: the file is read again only once its inode, size or mtime
    changed (reading a 0.5 MB checkpoint every few ms would take a CPU from the child being watched)."""

    def __init__(self, path: Path):
        self.path, self.stamp, self.epoch = Path(path), None, None

    def __call__(self):
        try:
            stat = self.path.stat()
        except OSError:
            return None
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp != self.stamp:
            epoch = checkpoint_epoch(self.path)
            if epoch is not None:  # a file that could not be read yet is read again next time
                self.stamp, self.epoch = stamp, epoch
        return self.epoch


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def same_state_dict(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def manifest(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "manifest.json").read_text())


def log_rows(path: Path) -> list:
    """log.jsonl rows without their timing field."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in path.read_text().splitlines()]


TIMING_KEYS = {"seconds", "seconds_per_epoch", "videos_per_s", "frames_per_s", "resumed"}


def without_timing(obj):
    """A manifest summary (or any JSON) with timing fields removed, recursively."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def one_error(stderr: str, *expected: str) -> str:
    """A user mistake: exactly one ``error: ...`` message (continuation lines indented), no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[0].startswith("error: "), stderr
    assert sum(line.startswith("error:") for line in lines) == 1, stderr
    assert all(line.startswith("  ") for line in lines[1:]), f"more than one message on stderr:\n{stderr}"
    for text in expected:
        assert text in stderr, f"{text!r} not in:\n{stderr}"
    return stderr


def write_small_videolt(root: Path) -> Path:
    """A tiny VideoLT label folder (3 classes) for tests that need one outside the function-scoped fixture."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "count-labels-train.lst").write_text("cat 0 4\ndog 1 2\nbird 2 1\n")
    (root / "train.lst").write_text("t0 0\nt1 0\nt2 0\nt3 0,1\nt4 1\nt5 2\n")
    (root / "validate.lst").write_text("v0 0\nv1 1\nv2 2\n")
    (root / "test.lst").write_text("e0 0\ne1 1\ne2 2\ne3 0,2\n")
    return root
