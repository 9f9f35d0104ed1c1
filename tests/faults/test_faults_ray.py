"""A Ray model actor dies in the middle of extract (extract.runner=ray, one local 2-CPU Ray).

RELIABILITY.md: "Ray worker dies (actor crash / node loss) | its videos are retried on another worker;
the run completes". The actor's process is SIGKILLed from a watcher thread once shards are being
written, as a crash (segfault, OOM kill) would end it; no hook in the product is used.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from faults_utils import demo_videos, shards
from machine_load import scaled

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.faults

N_VIDEOS = 8


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=150 * 1024 * 1024,
                 logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_videos(tmp_path_factory):
    demo = demo_videos(tmp_path_factory.mktemp("ray-demo") / "demo")
    labels = pd.read_csv(demo / "labels.csv").head(N_VIDEOS)
    return pd.DataFrame({"video_id": labels.video_id, "path": [str(demo / p) for p in labels.path]})


def config(**kwargs):
    from extract.config import ExtractConfig

    return ExtractConfig(num_frames=8, resize=72, crop=64, videos_per_shard=1, **kwargs)


@pytest.fixture(scope="module")
def inprocess_reference(ray_videos, tmp_path_factory):
    from extract.stage import run_extract

    out = tmp_path_factory.mktemp("ray-reference") / "extract"
    run_extract(config(), ray_videos, out, progress=False)
    return out


def model_actor_pids() -> list:
    """Pids of the Ray model actors started by this test process (its own descendants only)."""
    pids = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "_ModelActor" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


class ActorKiller(threading.Thread):
    """Once ``after_shards`` shards exist, SIGKILL the model actor; optionally SIGSTOP its replacement
    for ``stall_s`` seconds (a restart that takes that long: a big model, a busy or remote node)."""

    def __init__(self, out: Path, after_shards: int = 2, stall_s: float = 0.0):
        super().__init__(daemon=True)
        self.out, self.after_shards, self.stall_s = out, after_shards, stall_s
        self.killed, self.stalled, self.error = None, None, None

    def run(self):
        try:
            deadline = time.monotonic() + 120
            while len(shards(self.out)) < self.after_shards:
                if time.monotonic() > deadline:
                    raise TimeoutError("no shard written")
                time.sleep(0.005)
            (self.killed,) = model_actor_pids()
            os.kill(self.killed, signal.SIGKILL)
            if self.stall_s:
                while True:
                    new = [p for p in model_actor_pids() if p != self.killed]
                    if new:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("no replacement actor")
                    time.sleep(0.002)
                self.stalled = new[0]
                os.kill(self.stalled, signal.SIGSTOP)
                time.sleep(self.stall_s)
                os.kill(self.stalled, signal.SIGCONT)
        except BaseException as exc:  # reported by the test
            self.error = exc


def run_with_killer(ray_videos, out, killer, **cfg):
    from extract.stage import run_extract

    killer.start()
    try:
        return run_extract(config(runner="ray", max_failure_fraction=1.0, **cfg), ray_videos, out, progress=False)
    finally:
        killer.join(timeout=scaled(60))


def test_killed_model_actor_is_restarted_and_the_run_completes_with_identical_features(
        ray_local, ray_videos, inprocess_reference, tmp_path):
    from faults_utils import assert_same_store

    out = tmp_path / "extract"
    killer = ActorKiller(out)
    summary = run_with_killer(ray_videos, out, killer)
    assert killer.error is None and killer.killed is not None
    assert not psutil.pid_exists(killer.killed) or psutil.Process(killer.killed).status() == psutil.STATUS_ZOMBIE
    assert "model actor 0 died" in (out / "extract.log").read_text()  # the kill hit the run
    assert (summary["ok"], summary["failed"], summary["videos"]) == (N_VIDEOS, 0, N_VIDEOS)
    assert not (out / "failures.jsonl").exists() or not (out / "failures.jsonl").read_text().strip()
    assert_same_store(out, inprocess_reference, ray_videos.video_id.tolist())


def test_videos_survive_an_actor_whose_restart_is_slow(ray_local, ray_videos, inprocess_reference, tmp_path):
    from faults_utils import assert_same_store

    out = tmp_path / "extract"
    killer = ActorKiller(out, stall_s=5.0)
    summary = run_with_killer(ray_videos, out, killer)
    assert killer.error is None and killer.stalled is not None
    assert (summary["ok"], summary["failed"]) == (N_VIDEOS, 0), (out / "extract.log").read_text()
    assert_same_store(out, inprocess_reference, ray_videos.video_id.tolist())
