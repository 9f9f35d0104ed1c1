"""How many CPUs this process may use, and the thread and worker counts derived from it.

The CPU budget is ``VLTR_CPUS`` when set, else the smaller of the CPU affinity
(``os.sched_getaffinity``) and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``; the tightest over the process's cgroup and its ancestors), a fractional quota
rounded up, at least 1. Torch threads per process are the budget divided among the processes one
launcher starts on a node (``LOCAL_WORLD_SIZE``); without ``VLTR_CPUS`` an ``OMP_NUM_THREADS``
already set caps them. docs/cluster.md ("CPUs, threads and workers") has the why;
``python -m manifests.resources`` prints the budget.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional

from manifests.errors import UserError

ENV_VAR = "VLTR_CPUS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def quota_cpus(quota: int, period: int) -> Optional[int]:
    """CPUs granted by a CFS quota of ``quota`` µs per ``period`` µs: rounded up, at least 1;
    None when there is no quota (negative quota or a non-positive period)."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (all of them where affinity is not supported)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _cgroup_dirs(root: Path, self_cgroup: Path) -> Iterator[Path]:
    """The cgroup folders that may hold this process's CPU quota: its own cgroup and every ancestor,
    under the v2 root and the v1 ``cpu`` hierarchy. In a container the recorded path may be the
    host's; the walk up still reaches the folder mounted as the container's own."""
    entries = [("", "/"), ("cpu", "/")]
    try:
        for line in self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "" or "cpu" in controllers.split(","):
                entries.append((controllers, path))
    except (OSError, ValueError):
        pass
    for controllers, path in entries:
        base = root / controllers if controllers else root
        own = base / path.lstrip("/")
        for directory in (own, *own.parents):
            if directory == base or base in directory.parents:
                yield directory


def _read_quota(directory: Path) -> Optional[int]:
    """The CPU limit set in one cgroup folder (v2 or v1 files), or None."""
    try:
        fields = (directory / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return quota_cpus(int(fields[0]), int(fields[1]))
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return quota_cpus(quota, period)
    except (OSError, ValueError):
        return None


def cgroup_cpus(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> Optional[int]:
    """The tightest cgroup CPU quota over this process's cgroups, in whole CPUs; None when unlimited."""
    limits = {_read_quota(d) for d in _cgroup_dirs(Path(root), Path(self_cgroup))} - {None}
    return min(limits) if limits else None


def _positive_int(value: Optional[str]) -> Optional[int]:
    """``value`` as an int >= 1, or None when it is unset or not such a number."""
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number >= 1 else None


def cpus_override(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """``VLTR_CPUS`` as a number, None when unset; a value that is not a positive integer is an error."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR)
    if raw is None or not raw.strip():
        return None
    number = _positive_int(raw)
    if number is None:
        raise UserError(f"{ENV_VAR}={raw!r}: expected a whole number of CPUs >= 1, e.g. {ENV_VAR}=4")
    return number


def cpu_budget(environ: Optional[Mapping[str, str]] = None, root: Path = CGROUP_ROOT,
               self_cgroup: Path = SELF_CGROUP) -> tuple:
    """``(cpus, source)``: the CPU budget and where it came from (``VLTR_CPUS``, ``cgroup quota``, ``affinity``)."""
    override = cpus_override(environ)
    if override is not None:
        return override, ENV_VAR
    affinity, quota = affinity_cpus(), cgroup_cpus(root, self_cgroup)
    if quota is not None and quota < affinity:
        return quota, "cgroup quota"
    return affinity, "affinity"


def available_cpus(environ: Optional[Mapping[str, str]] = None, root: Path = CGROUP_ROOT,
                   self_cgroup: Path = SELF_CGROUP) -> int:
    """The CPU budget of this process (see the module docstring)."""
    return cpu_budget(environ, root, self_cgroup)[0]


def local_processes(environ: Optional[Mapping[str, str]] = None) -> int:
    """Processes sharing this node's budget: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    env = os.environ if environ is None else environ
    return _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1


def cpus_per_process(environ: Optional[Mapping[str, str]] = None, **where) -> int:
    """This process's share of the node's budget (at least 1)."""
    return max(1, available_cpus(environ, **where) // local_processes(environ))


def torch_threads(requested: Optional[int] = None, environ: Optional[Mapping[str, str]] = None, **where) -> int:
    """Torch intra-op threads: ``requested`` when given, else this process's CPU share, capped by an
    ``OMP_NUM_THREADS`` set in the environment unless ``VLTR_CPUS`` is set."""
    if requested:
        return int(requested)
    env = os.environ if environ is None else environ
    threads = cpus_per_process(env, **where)
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp is not None and cpus_override(env) is None:
        threads = min(threads, omp)
    return threads


def decode_workers(requested: Optional[int], on_gpu: bool, environ: Optional[Mapping[str, str]] = None,
                   **where) -> int:
    """Decode processes beside the process running the model: ``requested`` when given; else 1 on
    CPU (the model is the bottleneck and uses the CPUs) and every CPU but one on a GPU (decoding is)."""
    if requested:
        return int(requested)
    if not on_gpu:
        return 1
    return max(1, cpus_per_process(environ, **where) - 1)


def main() -> None:
    """Print the CPU budget (used by docker/entrypoint.sh for ``ray start --num-cpus``)."""
    try:
        print(available_cpus())
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
