"""A real two-node Ray cluster on this host, formed the way users form one (docker/entrypoint.sh
ray-head and ray-worker, token authentication on by default), runs the extract stage through the
command line; its features are bit-identical to the in-process runner's. Drivers without the token,
or pointed where nothing listens, get one line naming that cause.

The nodes live in their own sessions, with their own temp dirs, ports and HOME; teardown ends
exactly those sessions' processes (never `ray stop`, which would end every Ray on the host).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from machine_load import scaled

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "docker" / "entrypoint.sh"
CLIPS = ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4", "text.mp4"]  # four good clips and one that is not a video
FAST = ["--set", "extract.num_frames=8", "--set", "extract.resize=72", "--set", "extract.crop=64",
        "--set", "extract.videos_per_shard=2", "--set", "extract.max_failure_fraction=0.5",
        "--no-progress", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(home: Path) -> dict:
    """This checkout first on the path, a private HOME (no ~/.ray/auth_token of the host's), no RAY_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VLTR_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["HOME"] = str(home)
    return env


class Node:
    """One ``docker/entrypoint.sh ray-head|ray-worker`` process in its own session, output to a file."""

    def __init__(self, log: Path, role: str, env: dict, *args: str):
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen(["sh", str(ENTRY), role, *args], stdout=self._out, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT, start_new_session=True)

    def wait_started(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Ray node did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def session(self) -> list:
        """Live processes of this node's session: ray start, GCS, raylet, agents and Ray's workers."""
        found = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                if os.getsid(p.pid) == self.proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (ProcessLookupError, PermissionError, OSError):
                continue
        return found

    def stop(self) -> None:
        """SIGTERM the session's processes, SIGKILL what is left after a grace period (as `ray stop`
        does, for this node only)."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):  # GCS and `ray start` ignore SIGTERM
            for p in self.session():
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            deadline = time.monotonic() + grace
            while self.session() and time.monotonic() < deadline:
                time.sleep(0.2)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker of 1 CPU each on 127.0.0.1, started by the entry script with nothing but a
    token path given: the head writes the token, the worker and the drivers read it."""
    tmp = tmp_path_factory.mktemp("ray-cluster")
    token = tmp / "shared" / ".ray" / "auth_token"  # as on the work directory every host mounts
    port = free_port()
    env = {**base_env(tmp / "home"), "RAY_AUTH_TOKEN_PATH": str(token), "RAY_NUM_CPUS": "1", "RAY_PORT": str(port)}
    common = ["--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats"]
    short = Path(tempfile.mkdtemp(prefix="vltr-ray-"))  # Ray's socket paths must stay under 108 bytes
    nodes = []
    try:
        nodes.append(Node(tmp / "head.log", "ray-head", env, *common, "--include-dashboard=false",
                          f"--ray-client-server-port={free_port()}", f"--temp-dir={short / 'head'}"))
        nodes[0].wait_started()
        nodes.append(Node(tmp / "worker.log", "ray-worker", {**env, "RAY_HEAD_ADDRESS": f"127.0.0.1:{port}"},
                          *common, f"--temp-dir={short / 'worker'}"))
        nodes[1].wait_started()
        yield {"address": f"127.0.0.1:{port}", "token": token, "home": tmp / "home"}
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(short, ignore_errors=True)


def driver_env(cluster, with_token: bool) -> dict:
    env = base_env(cluster["home"])
    if with_token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(cluster["token"]))
    return env


def cli(env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=scaled(timeout))


def dataset_args(video_dir: Path, tmp: Path, work: Path) -> list:
    rows = [{"video_id": n.split(".")[0], "path": str(video_dir / n), "labels": str(i % 2), "split": "train"}
            for i, n in enumerate(CLIPS)]
    pd.DataFrame(rows).to_csv(tmp / "labels.csv", index=False)
    (tmp / "class_names.txt").write_text("a\nb\n")
    return ["--set", "dataset.format=csv", "--set", f"dataset.root={tmp / 'labels.csv'}",
            "--set", f"dataset.class_names={tmp / 'class_names.txt'}", "--work-dir", str(work)]


def one_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_the_cluster_has_two_nodes_and_the_head_wrote_a_private_token(cluster):
    assert cluster["token"].stat().st_mode & 0o777 == 0o600 and len(cluster["token"].read_text().strip()) == 64
    probe = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(json.dumps([len([n for n in ray.nodes() if n['Alive']]), ray.cluster_resources()['CPU']]))")
    result = subprocess.run([sys.executable, "-c", probe % cluster["address"]], capture_output=True, text=True,
                            env=driver_env(cluster, True), timeout=scaled(120))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [2, 2.0]


def test_extract_through_the_cluster_matches_the_inprocess_runner(cluster, video_dir, tmp_path):
    from extract.store import FeatureStore

    env = driver_env(cluster, True)
    inproc = dataset_args(video_dir, tmp_path, tmp_path / "inproc")
    done = cli(env, "run", "--stage", "extract", *inproc, *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    on_cluster = dataset_args(video_dir, tmp_path, tmp_path / "ray")
    done = cli(env, "run", "--stage", "extract", *on_cluster, *FAST, "--set", "extract.runner=ray",
               "--set", f"extract.ray_address={cluster['address']}")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "ray" / "extract" / "manifest.json").read_text())
    assert manifest["summary"]["runner"] == "ray" and manifest["summary"]["ok"] == 4
    a, b = FeatureStore(tmp_path / "inproc" / "extract"), FeatureStore(tmp_path / "ray" / "extract")
    assert sorted(a.ids()) == sorted(b.ids()) == ["v0", "v1", "v2", "v3"]
    for video in a.ids():
        assert a.get(video).dtype == b.get(video).dtype and np.array_equal(a.get(video), b.get(video)), video
        assert a.meta(video)["frame_indices"].tolist() == b.meta(video)["frame_indices"].tolist()
    ta = pd.read_parquet(tmp_path / "inproc" / "extract" / "videos.parquet").sort_values("video_id")
    tb = pd.read_parquet(tmp_path / "ray" / "extract" / "videos.parquet").sort_values("video_id")
    pd.testing.assert_frame_equal(ta.drop(columns=["shard"]).reset_index(drop=True),
                                  tb.drop(columns=["shard"]).reset_index(drop=True))
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


def test_a_driver_without_the_token_is_told_it_is_authentication(cluster, video_dir, tmp_path):
    env = {**driver_env(cluster, False), "RAY_gcs_server_port_wait_time_s": "3"}  # Ray retries 20 x 1 s
    result = cli(env, "run", "--stage", "extract", *dataset_args(video_dir, tmp_path, tmp_path / "w"), *FAST,
                 "--set", "extract.runner=ray", "--set", f"extract.ray_address={cluster['address']}")
    one_error(result, f"extract.ray_address='{cluster['address']}'", "refused this process's authentication token",
              "RAY_AUTH_MODE is not set here", "RAY_AUTH_TOKEN_PATH")


def test_an_address_where_nothing_listens_fails_at_once(video_dir, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    result = cli(base_env(tmp_path / "home"), "run", "--stage", "extract",  # Ray's own wait: minutes
                 *dataset_args(video_dir, tmp_path, tmp_path / "w"), *FAST,
                 "--set", "extract.runner=ray", "--set", f"extract.ray_address={address}", timeout=120)
    one_error(result, f"extract.ray_address='{address}'", "nothing is listening there", "ray-head")
