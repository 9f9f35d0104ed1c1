"""CPU budget detection on fake cgroup trees and a faked affinity mask; VLTR_CPUS wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from manifests import resources
from manifests.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def cgroup_tree(tmp_path: Path, files: dict, self_cgroup: str) -> dict:
    """Write ``{relative path: content}`` under a fake /sys/fs/cgroup and a fake /proc/self/cgroup;
    returns the ``root``/``self_cgroup`` keyword arguments of the detection functions."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(self_cgroup)
    return {"root": root, "self_cgroup": proc}


@pytest.fixture
def eight_cpus(monkeypatch):
    """The process may run on CPUs 0-7."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize("quota, period, cpus", [
    (150000, 100000, 2),   # 1.5 CPUs: rounded up
    (100000, 100000, 1),
    (200000, 100000, 2),
    (250000, 50000, 5),
    (1000, 100000, 1),     # 0.01 CPU: never below 1
    (-1, 100000, None),    # v1 "no quota"
    (50000, 0, None),
])
def test_quota_is_rounded_up_and_at_least_one(quota, period, cpus):
    assert resources.quota_cpus(quota, period) == cpus


def test_cgroup_v2_quota_and_max(tmp_path):
    where = cgroup_tree(tmp_path, {"cpu.max": "150000 100000"}, "0::/\n")
    assert resources.cgroup_cpus(**where) == 2
    (where["root"] / "cpu.max").write_text("max 100000\n")
    assert resources.cgroup_cpus(**where) is None


def test_cgroup_v2_nested_takes_the_tightest_ancestor(tmp_path):
    files = {"job/cpu.max": "300000 100000", "job/step/cpu.max": "max 100000", "other/cpu.max": "50000 100000"}
    where = cgroup_tree(tmp_path, files, "0::/job/step\n")
    assert resources.cgroup_cpus(**where) == 3  # the sibling cgroup "other" is not ours
    (where["root"] / "job/step/cpu.max").write_text("120000 100000\n")
    assert resources.cgroup_cpus(**where) == 2


def test_cgroup_v1_container_view(tmp_path):
    # Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the host's path, while
    # the container's own cgroup is mounted at the hierarchy's root.
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    where = cgroup_tree(tmp_path, files, "5:cpuacct,cpu:/x\n4:cpu,cpuacct:/docker/0123abc\n3:memory:/docker/0123abc\n")
    assert resources.cgroup_cpus(**where) == 3
    (where["root"] / "cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")
    assert resources.cgroup_cpus(**where) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    where = cgroup_tree(tmp_path, {}, "")
    assert resources.cgroup_cpus(**where) is None
    where["self_cgroup"].unlink()  # not Linux, or /proc not mounted
    assert resources.cgroup_cpus(**where) is None


def test_budget_is_the_smaller_of_affinity_and_quota(tmp_path, eight_cpus):
    where = cgroup_tree(tmp_path, {"cpu.max": "150000 100000"}, "0::/\n")
    assert resources.cpu_budget({}, **where) == (2, "cgroup quota")
    (where["root"] / "cpu.max").write_text("1600000 100000\n")  # 16 CPUs of quota, 8 to run on
    assert resources.cpu_budget({}, **where) == (8, "affinity")


def test_vltr_cpus_wins_over_detection(tmp_path, eight_cpus):
    where = cgroup_tree(tmp_path, {"cpu.max": "150000 100000"}, "0::/\n")
    assert resources.cpu_budget({"VLTR_CPUS": "12"}, **where) == (12, "VLTR_CPUS")
    assert resources.available_cpus({"VLTR_CPUS": " 1 "}, **where) == 1
    assert resources.available_cpus({"VLTR_CPUS": ""}, **where) == 2  # empty: unset
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(UserError, match="VLTR_CPUS"):
            resources.available_cpus({"VLTR_CPUS": bad}, **where)


def test_torch_threads_share_the_budget_between_local_processes(tmp_path, eight_cpus):
    where = cgroup_tree(tmp_path, {}, "")
    assert resources.torch_threads(None, {}, **where) == 8
    assert resources.torch_threads(None, {"LOCAL_WORLD_SIZE": "4"}, **where) == 2
    assert resources.torch_threads(None, {"LOCAL_WORLD_SIZE": "16"}, **where) == 1
    assert resources.torch_threads(3, {"VLTR_CPUS": "1"}, **where) == 3  # extract.num_threads wins


def test_omp_num_threads_caps_only_without_vltr_cpus(tmp_path, eight_cpus):
    where = cgroup_tree(tmp_path, {}, "")
    assert resources.torch_threads(None, {"OMP_NUM_THREADS": "1"}, **where) == 1
    assert resources.torch_threads(None, {"OMP_NUM_THREADS": "32"}, **where) == 8
    assert resources.torch_threads(None, {"OMP_NUM_THREADS": "1", "VLTR_CPUS": "6"}, **where) == 6
    assert resources.torch_threads(None, {"OMP_NUM_THREADS": "junk"}, **where) == 8


def test_decode_workers(tmp_path, eight_cpus):
    where = cgroup_tree(tmp_path, {}, "")
    assert resources.decode_workers(None, on_gpu=False, environ={}, **where) == 1
    assert resources.decode_workers(None, on_gpu=True, environ={}, **where) == 7
    assert resources.decode_workers(None, on_gpu=True, environ={"VLTR_CPUS": "1"}, **where) == 1
    assert resources.decode_workers(4, on_gpu=False, environ={}, **where) == 4


def test_ray_decode_slots():
    from extract.ray_runner import decode_slots

    assert decode_slots(None, cluster_cpus=2.0, actors=1, use_gpu=False) == 1  # one CPU holds the model
    assert decode_slots(None, cluster_cpus=64.0, actors=8, use_gpu=True) == 64
    assert decode_slots(None, cluster_cpus=1.0, actors=1, use_gpu=False) == 1
    assert decode_slots(3, cluster_cpus=64.0, actors=8, use_gpu=True) == 3


def run_python(code: str, **env) -> str:
    """stdout of ``python -c code`` in this checkout with ``env`` added (VLTR_/OMP_ variables cleared)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VLTR_", "OMP_", "LOCAL_WORLD"))}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**base, **env}, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_command_prints_the_budget():
    assert run_python("from manifests.resources import main; main()", VLTR_CPUS="7") == "7"


def test_encoder_sets_torch_threads_from_the_budget():
    code = ("import torch; torch.set_num_threads(5)\n"
            "from extract.encoder import FrameEncoder\n"
            "FrameEncoder('efficientnet_lite0', pretrained=False, device='cpu', batch_size=2)\n"
            "print(torch.get_num_threads())\n"
            "FrameEncoder('efficientnet_lite0', pretrained=False, device='cpu', batch_size=2, num_threads=2)\n"
            "print(torch.get_num_threads())")
    assert run_python(code, VLTR_CPUS="1").split() == ["1", "2"]
    assert run_python(code, OMP_NUM_THREADS="1", VLTR_CPUS="3").split() == ["3", "2"]
